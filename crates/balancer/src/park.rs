//! Idle keep-alive connections parked outside the async runtime: a socket, a deadline and a
//! few words of context in a table watched by one epoll set.
//!
//! A task, its timer and its registration with tokio's reactor cost an idle connection about
//! 1.4 KiB; parked, it costs its table slot (~150 bytes). A plain HTTP/1.1 connection idle for
//! [`PARK_AFTER`] leaves its task and its socket moves to the lot's epoll set. When the client
//! sends again (or hangs up) the lot hands the socket back to the runtime with its context, as
//! a new task; when its keep-alive deadline passes or the balancer stops, the lot closes it.
//! A busy connection never parks, so the request path pays nothing; one coming back from the
//! lot pays four `epoll_ctl` and a spawn, once per idle second or more. The allocator keeps
//! what the parked connections' tasks freed for later tasks; after a thousand have parked the
//! lot hands it back to the system (`malloc_trim`, at most once a second), so a burst of
//! connections that then idle does not hold its peak memory for good.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::conn::Stop;

/// How long a connection stays idle in its task before it parks.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);
/// How often parked connections' deadlines are checked (how late a keep-alive timeout of a
/// parked connection can fire).
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Readiness events taken from the epoll set per call.
const EVENTS: usize = 256;
/// Connections parked (each leaving ~1.2 KiB of task memory free) before the heap is trimmed.
const TRIM_AFTER: usize = 1024;
/// The least time between two trims of the heap.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// A connection handed to the lot.
#[derive(Debug)]
pub(crate) struct Parked<T> {
    /// Its socket, out of tokio's reactor.
    pub(crate) stream: std::net::TcpStream,
    /// When it is closed if the client stays silent.
    pub(crate) deadline: Instant,
    /// What the connection needs to carry on (given back with the socket).
    pub(crate) conn: T,
}

/// Where idle connections wait. Dropping every handle (or the stop signal) closes the
/// connections parked there.
#[derive(Debug)]
pub(crate) struct Lot<T> {
    // Unbounded, yet bounded by the connection cap: each entry is an open connection.
    tx: mpsc::UnboundedSender<Parked<T>>,
    parked: Arc<AtomicUsize>,
}

impl<T: Send + 'static> Lot<T> {
    /// Starts the lot's watcher on the current runtime; `resume` gets each connection whose
    /// client spoke, back in the runtime.
    pub(crate) fn start(
        stop: Arc<Stop>,
        resume: impl Fn(tokio::net::TcpStream, T) + Send + 'static,
    ) -> std::io::Result<Lot<T>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // SAFETY: `EpollSet` owns the epoll descriptor (an `OwnedFd` it never replaces or
        // closes) and lives inside the `AsyncFd` for the whole registration.
        #[allow(unsafe_code)]
        let epoll = unsafe { AsyncFd::register_with_interest(EpollSet(epoll), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let parked = Arc::new(AtomicUsize::new(0));
        let table = Table {
            slots: Vec::new(),
            free: Vec::new(),
            len: parked.clone(),
            parked_since_trim: 0,
            trimmed: None,
        };
        tokio::spawn(watch(epoll, rx, table, stop, resume));
        Ok(Lot { tx, parked })
    }

    /// Parks a connection (closed at once if the lot has stopped).
    pub(crate) fn park(&self, conn: Parked<T>) {
        let _ = self.tx.send(conn);
    }

    /// Connections parked now.
    pub(crate) fn len(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
}

/// An epoll instance, for tokio's reactor to watch.
struct EpollSet(Epoll);

impl AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

/// The parked connections, each under the key its epoll registration carries.
struct Table<T> {
    slots: Vec<Option<Parked<T>>>,
    free: Vec<usize>,
    len: Arc<AtomicUsize>,
    /// Connections parked since the heap was last trimmed, and when that was.
    parked_since_trim: usize,
    trimmed: Option<Instant>,
}

impl<T> Table<T> {
    /// Registers `conn` for one readiness report (closing it if that fails).
    fn insert(&mut self, epoll: &Epoll, conn: Parked<T>) {
        let key = self.free.pop().unwrap_or(self.slots.len());
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        if let Err(e) = epoll.add(&conn.stream, EpollEvent::new(flags, key as u64)) {
            tracing::debug!(error = %e, "cannot park an idle connection: closing it");
            if key < self.slots.len() {
                self.free.push(key);
            }
            return;
        }
        if key == self.slots.len() {
            self.slots.push(Some(conn));
        } else {
            self.slots[key] = Some(conn);
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        self.parked_since_trim += 1;
    }

    /// Takes the connection under `key` out of the table and the epoll set.
    fn remove(&mut self, epoll: &Epoll, key: usize) -> Option<Parked<T>> {
        let conn = self.slots.get_mut(key)?.take()?;
        let _ = epoll.delete(&conn.stream);
        self.free.push(key);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(conn)
    }

    /// Closes the connections whose deadline has passed.
    fn expire(&mut self, epoll: &Epoll, now: Instant) {
        for key in 0..self.slots.len() {
            if self.slots[key].as_ref().is_some_and(|c| c.deadline <= now) {
                drop(self.remove(epoll, key));
            }
        }
    }

    /// Gives the memory of the tasks that parked connections left back to the system, once
    /// [`TRIM_AFTER`] connections have parked since the last time (and at most once a second):
    /// the allocator keeps freed memory between live blocks, so without this a burst of
    /// connections that then idle would hold their peak for good.
    fn return_memory(&mut self, now: Instant) {
        if self.parked_since_trim < TRIM_AFTER || self.trimmed.is_some_and(|t| now < t + TRIM_EVERY) {
            return;
        }
        self.parked_since_trim = 0;
        self.trimmed = Some(now);
        trim_heap();
        tracing::debug!(took = ?now.elapsed(), parked = self.len.load(Ordering::Relaxed), "heap trimmed");
    }

    fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }
}

impl<T> Drop for Table<T> {
    fn drop(&mut self) {
        self.len.fetch_sub(self.slots.iter().flatten().count(), Ordering::Relaxed);
    }
}

/// The lot's task: parks what arrives, gives back what wakes, closes what expires; on stop
/// (or when every handle is gone) it ends, closing every parked connection.
async fn watch<T>(
    epoll: AsyncFd<EpollSet>,
    mut arrivals: mpsc::UnboundedReceiver<Parked<T>>,
    mut table: Table<T>,
    stop: Arc<Stop>,
    resume: impl Fn(tokio::net::TcpStream, T),
) {
    let mut events = vec![EpollEvent::empty(); EVENTS];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => return,
            conn = arrivals.recv() => match conn {
                Some(conn) => table.insert(&epoll.get_ref().0, conn),
                None => return,
            },
            ready = epoll.readable() => {
                let Ok(mut ready) = ready else { return };
                let set = &epoll.get_ref().0;
                let n = set.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
                for event in &events[..n] {
                    let Some(conn) = table.remove(set, event.data() as usize) else { continue };
                    // Hung up without a byte: closed here. Bytes (maybe then a hang-up): the
                    // connection's task reads them.
                    if !has_bytes(&conn.stream, event.events()) {
                        continue;
                    }
                    match tokio::net::TcpStream::from_std(conn.stream) {
                        Ok(stream) => resume(stream, conn.conn),
                        Err(e) => tracing::debug!(error = %e, "cannot resume a parked connection"),
                    }
                }
                if n < events.len() {
                    ready.clear_ready();
                }
            }
            _ = sweep.tick(), if !table.is_empty() => {
                let now = Instant::now();
                table.expire(&epoll.get_ref().0, now);
                table.return_memory(now);
            }
        }
    }
}

/// Returns free memory inside the heap (not only at its top) to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: `malloc_trim` has no preconditions; it only releases free pages of glibc's heap.
    #[allow(unsafe_code)]
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Whether a parked connection that woke with `events` has bytes to read (not only a hang-up
/// or an error).
fn has_bytes(stream: &std::net::TcpStream, events: EpollFlags) -> bool {
    let hang_up = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    if !events.intersects(hang_up) {
        return events.contains(EpollFlags::EPOLLIN);
    }
    matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A connected pair: the client end, and the server end as a parked connection would hold it.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    /// Waits, with a generous cap, for `f` to hold.
    async fn until(what: &str, f: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_with_its_context_when_the_client_speaks() {
        let stop = Arc::new(Stop::default());
        let (back_tx, mut back) = mpsc::unbounded_channel();
        let lot = Lot::start(stop, move |s, ctx: &'static str| back_tx.send((s, ctx)).unwrap()).unwrap();
        let (mut client, server) = pair();
        let far = Instant::now() + Duration::from_secs(60);
        lot.park(Parked { stream: server, deadline: far, conn: "ctx" });
        until("the connection to park", || lot.len() == 1).await;
        client.write_all(b"ping").unwrap();
        let (stream, ctx) = back.recv().await.unwrap();
        assert_eq!(ctx, "ctx");
        assert_eq!(lot.len(), 0);
        let mut got = [0u8; 4];
        stream.readable().await.unwrap();
        assert_eq!(stream.try_read(&mut got).unwrap(), 4);
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn parked_connections_close_at_their_deadline_on_hang_up_and_on_stop() {
        let stop = Arc::new(Stop::default());
        let lot = Lot::start(stop.clone(), |_, _: ()| panic!("nothing speaks")).unwrap();
        let (mut expiring, server) = pair();
        let deadline = Instant::now() + Duration::from_millis(300);
        lot.park(Parked { stream: server, deadline, conn: () });
        let (hanging_up, server) = pair();
        lot.park(Parked { stream: server, deadline: Instant::now() + Duration::from_secs(60), conn: () });
        let (mut staying, server) = pair();
        lot.park(Parked { stream: server, deadline: Instant::now() + Duration::from_secs(60), conn: () });
        until("three parked", || lot.len() == 3).await;
        // The deadline: the client reads the end of the stream, not before the deadline.
        let read = tokio::task::spawn_blocking(move || expiring.read(&mut [0u8; 8]).unwrap());
        assert_eq!(read.await.unwrap(), 0);
        assert!(Instant::now() >= deadline);
        // A hang-up frees the slot without waking anything.
        drop(hanging_up);
        until("the hung-up connection to go", || lot.len() == 1).await;
        // Stop closes the rest.
        stop.set();
        let read = tokio::task::spawn_blocking(move || staying.read(&mut [0u8; 8]).unwrap());
        assert_eq!(read.await.unwrap(), 0);
        until("the lot to empty", || lot.len() == 0).await;
    }
}
