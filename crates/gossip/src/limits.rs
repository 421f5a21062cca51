//! What a member may claim: the documented limits every node name, tag and address must meet,
//! checked once where they enter the core (from the wire, and from the local configuration).
//!
//! Member data flows from here into config files, HTTP headers, cookies, log lines, snapshot
//! files and handler scripts' stdin, so the core refuses what could become code there:
//!
//! | what | limit |
//! |---|---|
//! | node name | 1–[`NAME_MAX_LEN`] bytes of UTF-8; no control characters, no whitespace, no `/` or `\`; not `.` or `..` |
//! | tag key | 1–[`TAG_KEY_MAX_LEN`] bytes; no control characters, whitespace, `=` or `,` |
//! | tag value | no control characters (tab and newline included) |
//! | metadata (encoded tags) | at most [`META_MAX_SIZE`] bytes (Serf's own limit), and well-formed |
//! | address | not unspecified, multicast or broadcast |
//! | Lamport time | at most [`LTIME_MAX`]; a message's no more than [`LTIME_HORIZON`] ahead of ours |
//!
//! Serf itself accepts names with newlines and leaves tags unchecked: a Serf member that breaks
//! these rules is simply not admitted to a Shoal agent's view (counted and logged once), and the
//! rest of the cluster is unaffected.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::event::Tags;

/// Longest node name, in bytes (a DNS name's 253 characters fit).
pub const NAME_MAX_LEN: usize = 255;
/// Longest tag key, in bytes.
pub const TAG_KEY_MAX_LEN: usize = 128;
/// Largest encoded metadata (tags) a member may carry: Serf's and memberlist's limit.
pub const META_MAX_SIZE: usize = 512;
/// Largest Lamport time accepted from anyone: half the clock's range, so that no clock can be
/// pushed to wrap around.
pub const LTIME_MAX: u64 = u64::MAX / 2;
/// How far ahead of our own clock a gossiped intent, event or query may be stamped. A cluster
/// ticks its clocks once per membership change, event or query; a jump of more than this is a
/// forgery meant to win every later comparison. A push/pull exchange our own join started may
/// move the clock further (a fresh node learning the cluster's time).
pub const LTIME_HORIZON: u64 = 1 << 24;

/// Why a member's claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The node name is empty.
    #[error("the node name is empty")]
    EmptyName,
    /// The node name is too long.
    #[error("the node name is {0} bytes; the limit is {NAME_MAX_LEN}")]
    NameTooLong(usize),
    /// The node name holds a character that is not allowed.
    #[error(
        "the node name holds {0:?}, which names may not contain (control characters, whitespace, '/', '\\')"
    )]
    NameChar(char),
    /// The node name is `.` or `..`.
    #[error("the node name may not be {0:?}")]
    NamePath(&'static str),
    /// A tag key is empty or too long.
    #[error("tag key {key:?} is {len} bytes; keys are 1 to {TAG_KEY_MAX_LEN}")]
    TagKeyLength {
        /// The key (escaped when shown).
        key: String,
        /// Its length.
        len: usize,
    },
    /// A tag key holds a character that is not allowed.
    #[error(
        "tag key {key:?} holds {ch:?}, which keys may not contain (control characters, whitespace, '=', ',')"
    )]
    TagKeyChar {
        /// The key.
        key: String,
        /// The character.
        ch: char,
    },
    /// A tag value holds a control character.
    #[error("the value of tag {key:?} holds the control character {ch:?}")]
    TagValueChar {
        /// The key.
        key: String,
        /// The character.
        ch: char,
    },
    /// The encoded metadata is too large.
    #[error("encoded tags are {0} bytes; the limit is {META_MAX_SIZE}")]
    MetaTooLarge(usize),
    /// The metadata is not a well-formed tag map.
    #[error("the metadata is not a well-formed tag map")]
    MetaMalformed,
    /// The address cannot be a member's.
    #[error("{0} cannot be a member's address")]
    Address(IpAddr),
}

fn is_control(c: char) -> bool {
    c.is_control()
}

/// Checks a node name against the rules above.
pub fn check_name(name: &str) -> Result<(), Violation> {
    if name.is_empty() {
        return Err(Violation::EmptyName);
    }
    if name.len() > NAME_MAX_LEN {
        return Err(Violation::NameTooLong(name.len()));
    }
    if let Some(c) = name.chars().find(|&c| is_control(c) || c.is_whitespace() || c == '/' || c == '\\') {
        return Err(Violation::NameChar(c));
    }
    match name {
        "." => Err(Violation::NamePath(".")),
        ".." => Err(Violation::NamePath("..")),
        _ => Ok(()),
    }
}

/// Checks one tag.
pub fn check_tag(key: &str, value: &str) -> Result<(), Violation> {
    if key.is_empty() || key.len() > TAG_KEY_MAX_LEN {
        return Err(Violation::TagKeyLength { key: key.to_string(), len: key.len() });
    }
    if let Some(ch) = key.chars().find(|&c| is_control(c) || c.is_whitespace() || c == '=' || c == ',') {
        return Err(Violation::TagKeyChar { key: key.to_string(), ch });
    }
    if let Some(ch) = value.chars().find(|&c| is_control(c)) {
        return Err(Violation::TagValueChar { key: key.to_string(), ch });
    }
    Ok(())
}

/// Checks every tag and the size they encode to.
pub fn check_tags(tags: &Tags) -> Result<(), Violation> {
    for (k, v) in tags {
        check_tag(k, v)?;
    }
    let size = crate::serf::encode_tags(tags).len();
    if size > META_MAX_SIZE {
        return Err(Violation::MetaTooLarge(size));
    }
    Ok(())
}

/// Decodes and checks a member's metadata: Serf's `[0xff][msgpack map]`, or a bare role.
pub fn check_meta(meta: &[u8]) -> Result<Tags, Violation> {
    if meta.len() > META_MAX_SIZE {
        return Err(Violation::MetaTooLarge(meta.len()));
    }
    let tags = match meta.split_first() {
        Some((&crate::serf::TAG_MAGIC, rest)) => {
            crate::mp::decode::<BTreeMap<String, String>>(rest).map_err(|_| Violation::MetaMalformed)?
        }
        _ => {
            let role = std::str::from_utf8(meta).map_err(|_| Violation::MetaMalformed)?;
            Tags::from([("role".to_string(), role.to_string())])
        }
    };
    for (k, v) in &tags {
        check_tag(k, v)?;
    }
    Ok(tags)
}

/// Checks that an address can be a member's.
pub fn check_addr(addr: SocketAddr) -> Result<(), Violation> {
    let ip = addr.ip();
    let bad = ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad { Err(Violation::Address(ip)) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web-1", "3f2a9c0d1e2b", "a.b.c", "ünï", "x:y_z", &"n".repeat(NAME_MAX_LEN)] {
            assert_eq!(check_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(check_name(""), Err(Violation::EmptyName));
        assert_eq!(check_name(&"n".repeat(NAME_MAX_LEN + 1)), Err(Violation::NameTooLong(256)));
        assert_eq!(check_name("x\nprogram"), Err(Violation::NameChar('\n')));
        assert_eq!(check_name("x\r\nX-Injected: yes"), Err(Violation::NameChar('\r')));
        assert_eq!(check_name("a b"), Err(Violation::NameChar(' ')));
        assert_eq!(check_name("a\u{85}b"), Err(Violation::NameChar('\u{85}')));
        assert_eq!(check_name("a\u{2028}b"), Err(Violation::NameChar('\u{2028}')));
        assert_eq!(check_name("../etc"), Err(Violation::NameChar('/')));
        assert_eq!(check_name(".."), Err(Violation::NamePath("..")));
    }

    #[test]
    fn tags_and_meta() {
        let good = Tags::from([("role".into(), "backend".into()), ("weight".into(), "10".into())]);
        assert_eq!(check_tags(&good), Ok(()));
        assert_eq!(check_meta(&crate::serf::encode_tags(&good)), Ok(good));
        assert_eq!(check_meta(b"backend").unwrap()["role"], "backend");
        let nl = Tags::from([("role".into(), "backend\n  stats socket".into())]);
        assert!(matches!(check_tags(&nl), Err(Violation::TagValueChar { ch: '\n', .. })));
        assert!(matches!(check_meta(&crate::serf::encode_tags(&nl)), Err(Violation::TagValueChar { .. })));
        let key = Tags::from([("a=b".into(), "v".into())]);
        assert!(matches!(check_tags(&key), Err(Violation::TagKeyChar { ch: '=', .. })));
        let big = Tags::from([("k".into(), "v".repeat(600))]);
        assert!(matches!(check_tags(&big), Err(Violation::MetaTooLarge(_))));
        assert_eq!(check_meta(&[0u8; 513]), Err(Violation::MetaTooLarge(513)));
        assert_eq!(check_meta(&[0xff, 0xc1]), Err(Violation::MetaMalformed));
        assert_eq!(check_meta(&[0x80, 0xff]), Err(Violation::MetaMalformed));
    }

    #[test]
    fn addresses() {
        assert!(check_addr("10.0.0.1:7946".parse().unwrap()).is_ok());
        assert!(check_addr("[fd00::1]:7946".parse().unwrap()).is_ok());
        for bad in ["0.0.0.0:7946", "255.255.255.255:1", "224.0.0.1:7946", "[::]:7946", "[ff02::1]:1"] {
            assert!(check_addr(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
