//! Reusable byte buffers, a few per worker thread: a connection that goes idle gives its
//! buffer back and the next request takes one, so busy connections do not allocate (and
//! fault in fresh pages for) a buffer per request, while idle ones hold none.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per thread.
const KEPT: usize = 32;
/// A buffer larger than this is freed rather than kept.
const LARGEST_KEPT: usize = 256 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_BYTES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer, with room from an earlier use when one is spare.
pub(crate) fn take() -> Vec<u8> {
    SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Gives a buffer back for a later [`take`] (its contents are dropped).
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < KEPT {
            spare.push(buf);
        }
    });
}

/// An empty shareable buffer (for reading a server's answer), with room when one is spare.
pub(crate) fn take_bytes() -> BytesMut {
    SPARE_BYTES.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Gives a shareable buffer back for a later [`take_bytes`], unless some of it was handed out.
pub(crate) fn give_bytes(mut buf: BytesMut) {
    buf.clear();
    // `try_reclaim` succeeds only when no frozen part of the buffer is still alive.
    if buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT || !buf.try_reclaim(buf.capacity()) {
        return;
    }
    SPARE_BYTES.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < KEPT {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_their_room_and_the_pool_is_bounded() {
        let mut b = take();
        b.extend_from_slice(&[7; 1000]);
        let cap = b.capacity();
        give(b);
        let again = take();
        assert!(again.is_empty() && again.capacity() == cap, "reused, emptied");
        for _ in 0..KEPT * 2 {
            give(Vec::with_capacity(64));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), KEPT, "no more than KEPT are kept");
        give(Vec::with_capacity(LARGEST_KEPT + 1));
        assert_eq!(SPARE.with(|s| s.borrow().len()), KEPT);
    }
}
