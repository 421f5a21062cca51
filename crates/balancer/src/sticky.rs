//! Sticky sessions: the opaque cookie value each server is known by, and reading cookies.
//!
//! Like HAProxy's per-server `cookie` value, the sticky cookie never carries the member's name
//! (remote input that could split a header): it carries [`token`], 16 hex digits of SipHash-2-4
//! over the name under fixed keys. Every balancer computes the same token for the same member,
//! so a client keeps its server whichever balancer of the cluster it reaches. The token is made
//! once per server when it joins a pool; the request path only compares it.

use std::fmt::Write as _;

/// SipHash keys: fixed (not secret) so that every balancer agrees on every token.
const KEYS: (u64, u64) = (0x7368_6f61_6c2d_7374, 0x6963_6b79_2d76_3031); // "shoal-st", "icky-v01"

/// Hex digits in a token.
pub const TOKEN_LEN: usize = 16;

/// SipHash-2-4 of `data` under `(k0, k1)`, as specified by Aumasson and Bernstein.
pub fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let compress = |m: u64, v: &mut [u64; 4]| {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    };
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        compress(u64::from_le_bytes(word), &mut v);
    }
    let mut last = [0u8; 8];
    let tail = chunks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[7] = data.len() as u8;
    compress(u64::from_le_bytes(last), &mut v);
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The number behind server `name`'s token (also the seed of its hash-ring points).
pub fn token_value(name: &str) -> u64 {
    siphash24(KEYS.0, KEYS.1, name.as_bytes())
}

/// The sticky cookie value for server `name`: 16 lower-case hex digits, the same on every balancer.
pub fn token(name: &str) -> String {
    let mut s = String::with_capacity(TOKEN_LEN);
    let _ = write!(s, "{:016x}", token_value(name));
    s
}

/// The number a cookie value stands for, when it is a token (16 hex digits).
pub fn parse_token(value: &str) -> Option<u64> {
    if value.len() != TOKEN_LEN || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(value, 16).ok()
}

/// The value of cookie `name` among Cookie header values.
pub(crate) fn cookie_in<'a>(values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    values
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The cookies of Cookie header values, all but `name` (the server never sees the balancer's).
pub(crate) fn cookies_without<'a>(
    values: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(move |c| !c.is_empty() && c.split_once('=').is_none_or(|(k, _)| k != name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The paper's key 00..0f; messages 00, 00 01, …: the first and the 15-byte outputs.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
        let msg: Vec<u8> = (0..8).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn tokens_are_opaque_stable_and_parse_back() {
        let t = token("x\r\nX-Injected: yes");
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{t}");
        assert_eq!(t, token("x\r\nX-Injected: yes"), "the same on every call (and every balancer)");
        assert_ne!(t, token("web-1"));
        assert_eq!(parse_token(&t), Some(token_value("x\r\nX-Injected: yes")));
        for bad in ["web-1", "", "0123456789abcdeg", "0123456789abcdef0"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }
}
