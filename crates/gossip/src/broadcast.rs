//! The transmit-limited broadcast queue: what gets piggy-backed on outgoing packets.
//!
//! Each queued message is sent at most `retransmit_mult * ceil(log10(n + 1))`
//! times. Fresh messages go first (fewest transmissions), larger ones first
//! among equals, newest first among those, so a packet fills up with the news
//! that most needs spreading. A message about a named member replaces any older
//! message about the same member (a newer `alive` makes an older `suspect` moot).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A token reported back when a broadcast is done (sent enough times, replaced or pruned).
pub type NotifyToken = u64;

type Key = (u32, Reverse<usize>, Reverse<u64>);

#[derive(Debug)]
struct Entry {
    msg: Arc<[u8]>,
    name: Option<Arc<str>>,
    notify: Option<NotifyToken>,
}

/// A priority queue of messages to piggy-back, each with a retransmit budget.
#[derive(Debug, Default)]
pub struct BroadcastQueue {
    items: BTreeMap<Key, Entry>,
    by_name: HashMap<Arc<str>, Key>,
    next_id: u64,
}

/// `retransmit_mult * ceil(log10(n + 1))`: how often one message is sent in a cluster of `n`.
pub fn retransmit_limit(retransmit_mult: usize, n: usize) -> u32 {
    let scale = ((n as f64) + 1.0).log10().ceil() as usize;
    (retransmit_mult * scale) as u32
}

impl BroadcastQueue {
    /// Queues `msg`. A `name` makes it replace any queued message with the same name.
    /// Tokens of messages finished by the replacement are pushed to `finished`.
    pub fn push(
        &mut self,
        msg: Arc<[u8]>,
        name: Option<Arc<str>>,
        notify: Option<NotifyToken>,
        finished: &mut Vec<NotifyToken>,
    ) {
        if let Some(old_key) = name.as_ref().and_then(|n| self.by_name.remove(n))
            && let Some(old) = self.items.remove(&old_key)
        {
            finished.extend(old.notify);
        }
        self.next_id += 1;
        let key = (0, Reverse(msg.len()), Reverse(self.next_id));
        if let Some(n) = &name {
            self.by_name.insert(n.clone(), key);
        }
        self.items.insert(key, Entry { msg, name, notify });
    }

    /// Takes messages that fit in `limit` bytes (each costing `overhead` extra),
    /// counting one transmission for each.
    pub fn take(
        &mut self,
        overhead: usize,
        limit: usize,
        transmit_limit: u32,
        out: &mut Vec<Arc<[u8]>>,
        finished: &mut Vec<NotifyToken>,
    ) -> usize {
        let mut used = 0usize;
        let mut reinsert = Vec::new();
        let Some(max_transmits) = self.items.last_key_value().map(|(k, _)| k.0) else {
            return 0;
        };
        let mut transmits = self.items.first_key_value().map_or(0, |(k, _)| k.0);
        while transmits <= max_transmits {
            let free = limit.saturating_sub(used + overhead);
            if free == 0 {
                break;
            }
            // Entries with this transmit count are ordered by length, longest first:
            // start at the longest one that still fits.
            let from = (transmits, Reverse(free), Reverse(u64::MAX));
            let to = (transmits + 1, Reverse(usize::MAX), Reverse(u64::MAX));
            let Some(key) = self.items.range(from..to).next().map(|(k, _)| *k) else {
                transmits += 1;
                continue;
            };
            let Some(entry) = self.items.remove(&key) else { break };
            used += overhead + entry.msg.len();
            out.push(entry.msg.clone());
            if key.0 + 1 >= transmit_limit {
                if let Some(n) = &entry.name {
                    self.by_name.remove(n);
                }
                finished.extend(entry.notify);
            } else {
                reinsert.push(((key.0 + 1, key.1, key.2), entry));
            }
        }
        for (key, entry) in reinsert {
            if let Some(n) = &entry.name {
                self.by_name.insert(n.clone(), key);
            }
            self.items.insert(key, entry);
        }
        used
    }

    /// Drops the most-transmitted messages until at most `max` remain.
    pub fn prune(&mut self, max: usize, finished: &mut Vec<NotifyToken>) {
        while self.items.len() > max {
            let Some((_, entry)) = self.items.pop_last() else { break };
            if let Some(n) = &entry.name {
                self.by_name.remove(n);
            }
            finished.extend(entry.notify);
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(bytes: &[u8]) -> Arc<[u8]> {
        Arc::from(bytes)
    }

    #[test]
    fn limit_grows_with_log_n() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 1000), 16);
    }

    #[test]
    fn fresh_and_large_first_and_retired_after_limit() {
        let mut q = BroadcastQueue::default();
        let mut fin = Vec::new();
        q.push(msg(b"aa"), None, Some(1), &mut fin);
        q.push(msg(b"bbbb"), None, Some(2), &mut fin);
        let mut out = Vec::new();
        q.take(2, 100, 2, &mut out, &mut fin);
        assert_eq!(out, vec![msg(b"bbbb"), msg(b"aa")]);
        assert!(fin.is_empty());
        out.clear();
        q.take(2, 100, 2, &mut out, &mut fin);
        assert_eq!(out.len(), 2);
        assert_eq!(fin, vec![2, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn respects_byte_budget() {
        let mut q = BroadcastQueue::default();
        let mut fin = Vec::new();
        q.push(msg(&[0; 50]), None, None, &mut fin);
        q.push(msg(&[1; 10]), None, None, &mut fin);
        let mut out = Vec::new();
        let used = q.take(2, 30, 10, &mut out, &mut fin);
        assert_eq!(out, vec![msg(&[1; 10])]);
        assert_eq!(used, 12);
    }

    #[test]
    fn named_messages_replace_older_ones() {
        let mut q = BroadcastQueue::default();
        let mut fin = Vec::new();
        let name: Arc<str> = Arc::from("web-1");
        q.push(msg(b"suspect"), Some(name.clone()), Some(7), &mut fin);
        q.push(msg(b"alive"), Some(name), None, &mut fin);
        assert_eq!(fin, vec![7]);
        assert_eq!(q.len(), 1);
        let mut out = Vec::new();
        q.take(0, 100, 5, &mut out, &mut fin);
        assert_eq!(out, vec![msg(b"alive")]);
    }

    #[test]
    fn prune_drops_oldest_news() {
        let mut q = BroadcastQueue::default();
        let mut fin = Vec::new();
        for i in 0..5u64 {
            q.push(msg(&[i as u8]), None, Some(i), &mut fin);
        }
        let mut out = Vec::new();
        q.take(0, 2, 10, &mut out, &mut fin); // two messages now have 1 transmission
        q.prune(3, &mut fin);
        assert_eq!(q.len(), 3);
        assert_eq!(fin.len(), 2);
    }
}
