//! Fuzzes Serf RPC request decoding as the server reads untrusted client bytes: value framing,
//! the `{Command, Seq}` header, and each command's body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_rpc::protocol::decode_request;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let whole = match decode_request(rest) {
            Ok(Some(decoded)) => decoded,
            Ok(None) | Err(_) => break,
        };
        let n = whole.2;
        assert!(n > 0 && n <= rest.len(), "a request spans {n} of {} bytes", rest.len());
        // Bytes arrive in any chunks: a prefix is either incomplete or decodes the same.
        let cut = usize::from(rest[0]) % n;
        match decode_request(&rest[..cut]) {
            Ok(None) => {}
            Ok(Some(part)) => assert_eq!(part, whole, "a prefix decoded differently"),
            Err(e) => panic!("a prefix of a good request was refused: {e}"),
        }
        rest = &rest[n..];
    }
});
