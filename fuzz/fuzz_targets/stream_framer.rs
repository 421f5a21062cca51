//! Fuzzes incremental stream framing: fed in any pieces, the framer reaches the same answer
//! as one look at the whole buffer, and never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_gossip::{Frame, StreamFramer, stream_frame_len};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let max = 1 << 16;
    let whole = stream_frame_len(data, max);
    let mut framer = StreamFramer::new(max);
    let mut last = Ok(Frame::Incomplete);
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        last = framer.frame(&data[..end]);
        if last != Ok(Frame::Incomplete) {
            break;
        }
    }
    if let Ok(Frame::Complete(n)) = last {
        assert!(n <= end);
    }
    match (whole, last) {
        (Ok(Frame::Complete(a)), Ok(Frame::Complete(b))) => assert_eq!(a, b),
        (Ok(Frame::Incomplete), Ok(Frame::Incomplete)) => {}
        // Pieces may hit an error (or a complete frame) at a shorter prefix than the whole
        // buffer shows; both are answers the whole buffer's prefix would give too.
        (_, piecewise) => {
            let at_end = stream_frame_len(&data[..end], max);
            assert_eq!(at_end, piecewise, "pieces and one look at {end} bytes disagree");
        }
    }
});
