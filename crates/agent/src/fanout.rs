//! A broadcast channel whose ring is allocated when its first subscriber arrives.
//!
//! tokio's broadcast channel allocates and writes every slot of its ring when it is created.
//! The agent's event channels hold 4 096 events of about 190 bytes each: 772 KiB of resident
//! memory apiece, in every agent, although most agents never have a subscriber (an RPC
//! `stream`, an embedding program, a test). A receiver only sees what is sent after it
//! subscribed, so creating the channel at the first [`Fanout::subscribe`] changes nothing a
//! subscriber can observe; until then [`Fanout::send`] drops the value, as a channel without
//! receivers does.

use std::sync::OnceLock;

use tokio::sync::broadcast;

/// A lazily created [`broadcast`] channel of `capacity` values.
#[derive(Debug)]
pub struct Fanout<T> {
    tx: OnceLock<broadcast::Sender<T>>,
    capacity: usize,
}

impl<T: Clone> Fanout<T> {
    /// A channel that will hold up to `capacity` values per lagging subscriber once it exists.
    pub fn new(capacity: usize) -> Self {
        Fanout { tx: OnceLock::new(), capacity }
    }

    /// Values sent from now on (creates the ring on the first call).
    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.tx.get_or_init(|| broadcast::channel(self.capacity).0).subscribe()
    }

    /// Sends to every current subscriber; without any, the value is dropped.
    pub fn send(&self, value: T) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(value);
        }
    }

    /// Whether anyone is subscribed now.
    pub fn has_subscribers(&self) -> bool {
        self.tx.get().is_some_and(|tx| tx.receiver_count() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_see_what_is_sent_after_they_subscribe() {
        let fanout = Fanout::new(4);
        fanout.send(1);
        assert!(!fanout.has_subscribers());
        let mut early = fanout.subscribe();
        fanout.send(2);
        let mut late = fanout.subscribe();
        fanout.send(3);
        assert_eq!((early.try_recv(), early.try_recv()), (Ok(2), Ok(3)));
        assert_eq!(late.try_recv(), Ok(3));
        assert!(late.try_recv().is_err());
        assert!(fanout.has_subscribers());
        drop((early, late));
        assert!(!fanout.has_subscribers());
    }

    #[test]
    fn a_lagging_subscriber_is_told_how_much_it_missed() {
        let fanout = Fanout::new(2);
        let mut rx = fanout.subscribe();
        for i in 0..5 {
            fanout.send(i);
        }
        assert_eq!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(3)));
        assert_eq!((rx.try_recv(), rx.try_recv()), (Ok(3), Ok(4)));
    }
}
