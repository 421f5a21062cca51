//! The layers around a message: label header, encryption, CRC, compound and compression.
//!
//! A UDP packet on the wire is, outermost first:
//! `[244][len][label]?` → AES-GCM envelope (if a keyring is set, label as AAD) →
//! `[12][crc32 BE]?` → one message `[type][msgpack]`, where the message may be a
//! compound (`[7][count][len u16 BE]*[parts]`) or LZW-compressed (`[9]{Algo,Buf}`).
//! A TCP stream carries one message per direction, with the same label header
//! and, when encrypted, `[10][len u32 BE][envelope]` (AAD: those five bytes + label).
//!
//! [`open_packet`] and [`open_stream`] undo the layers and report precisely why a
//! buffer was refused; [`seal_packet`] and [`seal_stream`] apply them.
//! [`stream_frame_len`] tells how long the message at the head of a TCP buffer is,
//! so a driver can read exactly one message without a length prefix.

use rand::RngCore;

use crate::keyring::Keyring;
use crate::messages::{Compress, PushPullHeader, UserMsgHeader, kind};
use crate::mp::{self, DecodeError};

/// Why an inbound packet or stream was dropped. Every variant is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    /// Empty or cut short.
    #[error("truncated")]
    Truncated,
    /// Label header missing, malformed or for another cluster.
    #[error("label mismatch")]
    Label,
    /// Encrypted with no matching key, or plaintext while encryption is required.
    #[error("decryption failed")]
    Decrypt,
    /// CRC did not match.
    #[error("bad checksum")]
    Checksum,
    /// A message body did not decode.
    #[error("malformed message")]
    Malformed,
    /// Unknown message type.
    #[error("unknown message type")]
    UnknownType,
    /// Larger than we accept.
    #[error("oversized")]
    Oversized,
    /// Compressed data that does not decompress.
    #[error("bad compression")]
    Compression,
    /// A ping meant for another node name.
    #[error("addressed to another node")]
    WrongNode,
    /// Compound or compression nested too deep.
    #[error("nested too deep")]
    TooDeep,
    /// A member claim (name, tags, address) that breaks [`crate::limits`].
    #[error("member refused")]
    Refused,
    /// A message no honest member sends: a Lamport time far ahead of ours.
    #[error("forged clock")]
    Forged,
    /// More costly work (new query filters) than the core's budget allows right now.
    #[error("throttled")]
    Throttled,
    /// A network coordinate in an ack that is not Serf's version, dimensionality or range
    /// (the ack itself still counts).
    #[error("coordinate refused")]
    Coordinate,
}

impl DropReason {
    /// Every reason, for metrics.
    pub const ALL: [DropReason; 14] = [
        DropReason::Truncated,
        DropReason::Label,
        DropReason::Decrypt,
        DropReason::Checksum,
        DropReason::Malformed,
        DropReason::UnknownType,
        DropReason::Oversized,
        DropReason::Compression,
        DropReason::WrongNode,
        DropReason::TooDeep,
        DropReason::Refused,
        DropReason::Forged,
        DropReason::Throttled,
        DropReason::Coordinate,
    ];

    /// A short snake_case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Label => "label",
            DropReason::Decrypt => "decrypt",
            DropReason::Checksum => "checksum",
            DropReason::Malformed => "malformed",
            DropReason::UnknownType => "unknown_type",
            DropReason::Oversized => "oversized",
            DropReason::Compression => "compression",
            DropReason::WrongNode => "wrong_node",
            DropReason::TooDeep => "too_deep",
            DropReason::Refused => "refused",
            DropReason::Forged => "forged",
            DropReason::Throttled => "throttled",
            DropReason::Coordinate => "coordinate",
        }
    }
}

impl From<DecodeError> for DropReason {
    fn from(_: DecodeError) -> Self {
        DropReason::Malformed
    }
}

/// Security settings shared by the packet and stream layers.
#[derive(Debug)]
pub struct Envelope {
    /// Installed keys; empty means no encryption.
    pub keyring: Keyring,
    /// Cluster label, if any.
    pub label: Option<String>,
    /// Refuse plaintext when keys are installed.
    pub verify_incoming: bool,
    /// Encrypt outgoing traffic when keys are installed.
    pub verify_outgoing: bool,
    /// Largest decompressed or streamed message accepted.
    pub max_message: usize,
}

/// Nesting allowed for compound-in-compressed-in-compound messages.
const MAX_NESTING: usize = 4;

impl Envelope {
    fn label_bytes(&self) -> &[u8] {
        self.label.as_deref().map_or(&[][..], str::as_bytes)
    }

    /// Strips and checks the label header.
    fn strip_label<'a>(&self, buf: &'a [u8]) -> Result<&'a [u8], DropReason> {
        let (label, rest) = split_label(buf)?;
        if label != self.label_bytes() {
            return Err(DropReason::Label);
        }
        Ok(rest)
    }

    fn push_label(&self, out: &mut Vec<u8>) {
        if let Some(label) = self.label.as_deref().filter(|l| !l.is_empty()) {
            out.push(kind::HAS_LABEL);
            out.push(label.len().min(255) as u8);
            out.extend_from_slice(&label.as_bytes()[..label.len().min(255)]);
        }
    }

    /// Bytes the envelope adds to each outgoing packet beyond the message itself.
    pub fn packet_overhead(&self) -> usize {
        let label = self.label.as_deref().map_or(0, |l| if l.is_empty() { 0 } else { 2 + l.len() });
        let enc = if self.keyring.is_enabled() && self.verify_outgoing {
            crate::keyring::ENCRYPT_OVERHEAD
        } else {
            0
        };
        label + enc
    }

    /// Undoes label, encryption and CRC; returns the plaintext message.
    pub fn open_packet(&self, buf: &[u8]) -> Result<Vec<u8>, DropReason> {
        if buf.is_empty() {
            return Err(DropReason::Truncated);
        }
        let body = self.strip_label(buf)?;
        let plain = if self.keyring.is_enabled() {
            match self.keyring.open(body, self.label_bytes()) {
                Ok(p) => p,
                Err(_) if !self.verify_incoming => body.to_vec(),
                Err(_) => return Err(DropReason::Decrypt),
            }
        } else {
            body.to_vec()
        };
        if plain.len() >= 5 && plain[0] == kind::HAS_CRC {
            let expected = u32::from_be_bytes([plain[1], plain[2], plain[3], plain[4]]);
            if crc32fast::hash(&plain[5..]) != expected {
                return Err(DropReason::Checksum);
            }
            return Ok(plain[5..].to_vec());
        }
        if plain.is_empty() {
            return Err(DropReason::Truncated);
        }
        Ok(plain)
    }

    /// Applies CRC (when the peer understands it), encryption and label to a message.
    pub fn seal_packet(&self, rng: &mut impl RngCore, msg: &[u8], with_crc: bool) -> Vec<u8> {
        let mut plain;
        let msg = if with_crc {
            plain = Vec::with_capacity(msg.len() + 5);
            plain.push(kind::HAS_CRC);
            plain.extend_from_slice(&crc32fast::hash(msg).to_be_bytes());
            plain.extend_from_slice(msg);
            &plain[..]
        } else {
            msg
        };
        let mut out = Vec::with_capacity(msg.len() + self.packet_overhead());
        self.push_label(&mut out);
        if !(self.keyring.is_enabled()
            && self.verify_outgoing
            && self.keyring.seal_into(rng, msg, self.label_bytes(), &mut out))
        {
            out.extend_from_slice(msg);
        }
        out
    }

    /// Wraps one stream message (`[type][...]`) in label and encryption.
    pub fn seal_stream(&self, rng: &mut impl RngCore, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        self.push_label(&mut out);
        if self.keyring.is_enabled() && self.verify_outgoing {
            let len = Keyring::sealed_len(msg.len()) as u32;
            let mut aad = Vec::with_capacity(5 + self.label_bytes().len());
            aad.push(kind::ENCRYPT);
            aad.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&aad);
            aad.extend_from_slice(self.label_bytes());
            self.keyring.seal_into(rng, msg, &aad, &mut out);
        } else {
            out.extend_from_slice(msg);
        }
        out
    }

    /// Undoes label, encryption and compression of one framed stream message.
    pub fn open_stream(&self, buf: &[u8]) -> Result<Vec<u8>, DropReason> {
        let body = self.strip_label(buf)?;
        let Some(&first) = body.first() else { return Err(DropReason::Truncated) };
        let plain = if first == kind::ENCRYPT {
            if !self.keyring.is_enabled() {
                return Err(DropReason::Decrypt);
            }
            if body.len() < 5 {
                return Err(DropReason::Truncated);
            }
            let mut aad = body[..5].to_vec();
            aad.extend_from_slice(self.label_bytes());
            self.keyring.open(&body[5..], &aad).map_err(|_| DropReason::Decrypt)?
        } else if self.keyring.is_enabled() && self.verify_incoming {
            return Err(DropReason::Decrypt);
        } else {
            body.to_vec()
        };
        match plain.first() {
            Some(&kind::COMPRESS) => {
                let c: Compress = mp::decode(&plain[1..])?;
                decompress(&c, self.max_message)
            }
            Some(_) => Ok(plain),
            None => Err(DropReason::Truncated),
        }
    }

    /// Splits a (decrypted) packet message into its parts, expanding compounds
    /// and compressed messages. Each part starts with its type byte.
    pub fn split_messages<'a>(&self, msg: &'a [u8], parts: &mut Vec<Part<'a>>) -> Result<(), DropReason> {
        self.split_depth(msg, parts, 0)
    }

    fn split_depth<'a>(
        &self,
        msg: &'a [u8],
        parts: &mut Vec<Part<'a>>,
        depth: usize,
    ) -> Result<(), DropReason> {
        if depth > MAX_NESTING {
            return Err(DropReason::TooDeep);
        }
        match msg.first() {
            None => Err(DropReason::Truncated),
            Some(&kind::COMPOUND) => {
                let (pieces, truncated) = split_compound(&msg[1..])?;
                for p in pieces {
                    // A broken part does not spoil its siblings.
                    if let Err(e) = self.split_depth(p, parts, depth + 1) {
                        parts.push(Part::Broken(e));
                    }
                }
                if truncated > 0 {
                    parts.push(Part::Broken(DropReason::Truncated));
                }
                Ok(())
            }
            Some(&kind::COMPRESS) => {
                let c: Compress = mp::decode(&msg[1..])?;
                let plain = decompress(&c, self.max_message)?;
                let mut owned = Vec::new();
                self.split_owned(plain, &mut owned, depth + 1)?;
                parts.extend(owned.into_iter().map(Part::Owned));
                Ok(())
            }
            Some(_) => {
                parts.push(Part::Borrowed(msg));
                Ok(())
            }
        }
    }

    fn split_owned(&self, msg: Vec<u8>, out: &mut Vec<Vec<u8>>, depth: usize) -> Result<(), DropReason> {
        let mut parts = Vec::new();
        self.split_depth(&msg, &mut parts, depth)?;
        for p in parts {
            match p {
                Part::Borrowed(b) => out.push(b.to_vec()),
                Part::Owned(o) => out.push(o),
                Part::Broken(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One message found in a packet.
#[derive(Debug)]
pub enum Part<'a> {
    /// A slice of the packet.
    Borrowed(&'a [u8]),
    /// Decompressed bytes.
    Owned(Vec<u8>),
    /// A part that could not be unpacked (its siblings are still handled).
    Broken(DropReason),
}

/// Splits the label header off a buffer: `(label, rest)`; no header gives an empty label.
fn split_label(buf: &[u8]) -> Result<(&[u8], &[u8]), DropReason> {
    if buf.first() != Some(&kind::HAS_LABEL) {
        return Ok((&[], buf));
    }
    let len = usize::from(*buf.get(1).ok_or(DropReason::Label)?);
    if len == 0 || buf.len() < 2 + len {
        return Err(DropReason::Label);
    }
    Ok((&buf[2..2 + len], &buf[2 + len..]))
}

/// Builds a compound message out of complete messages (at most 255).
pub fn make_compound(msgs: &[&[u8]]) -> Vec<u8> {
    let msgs = &msgs[..msgs.len().min(255)];
    let total: usize = msgs.iter().map(|m| m.len() + 2).sum();
    let mut out = Vec::with_capacity(2 + total);
    out.push(kind::COMPOUND);
    out.push(msgs.len() as u8);
    for m in msgs {
        out.extend_from_slice(&(m.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    }
    for m in msgs {
        out.extend_from_slice(m);
    }
    out
}

/// Splits a compound body into its parts; also returns how many parts were truncated.
fn split_compound(buf: &[u8]) -> Result<(Vec<&[u8]>, usize), DropReason> {
    let n = usize::from(*buf.first().ok_or(DropReason::Truncated)?);
    let lens = buf.get(1..1 + 2 * n).ok_or(DropReason::Truncated)?;
    let mut rest = &buf[1 + 2 * n..];
    let mut parts = Vec::with_capacity(n);
    for (i, len) in lens.chunks_exact(2).enumerate() {
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if rest.len() < len {
            return Ok((parts, n - i));
        }
        parts.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok((parts, 0))
}

/// Go's `compress/lzw` with LSB order and 8-bit literals, capped at `max` bytes.
/// Inflates a memberlist compress message's body (`[Compress]` without its type byte), as
/// found in a peer's packets (for tools and tests that read them).
pub fn decompress_message(body: &[u8], max: usize) -> Result<Vec<u8>, DropReason> {
    decompress(&mp::decode::<Compress>(body)?, max)
}

fn decompress(c: &Compress, max: usize) -> Result<Vec<u8>, DropReason> {
    if c.algo != 0 {
        return Err(DropReason::Compression);
    }
    let mut decoder = weezl::decode::Decoder::new(weezl::BitOrder::Lsb, 8);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut input = &c.buf[..];
    loop {
        let r = decoder.decode_bytes(input, &mut chunk);
        input = &input[r.consumed_in..];
        out.extend_from_slice(&chunk[..r.consumed_out]);
        if out.len() > max {
            return Err(DropReason::Oversized);
        }
        match r.status {
            Ok(weezl::LzwStatus::Done) => break,
            Ok(weezl::LzwStatus::Ok) => {}
            Ok(weezl::LzwStatus::NoProgress) => {
                // Go's writer ends with an EOF code; a stream that merely stops is also accepted.
                if input.is_empty() {
                    break;
                }
                return Err(DropReason::Compression);
            }
            Err(_) => return Err(DropReason::Compression),
        }
    }
    if out.is_empty() {
        return Err(DropReason::Compression);
    }
    Ok(out)
}

/// Compresses a message the way memberlist does (for tests and peers that want it).
pub fn compress(msg: &[u8]) -> Vec<u8> {
    let mut encoder = weezl::encode::Encoder::new(weezl::BitOrder::Lsb, 8);
    let buf = encoder.encode(msg).unwrap_or_default();
    mp::encode_with_type(kind::COMPRESS, &Compress { algo: 0, buf })
}

/// Outcome of [`stream_frame_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The first message spans this many bytes.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
}

/// How many bytes the stream message at the head of `buf` takes (a one-shot [`StreamFramer`]).
///
/// Works without keys: encrypted messages carry their length, the others are
/// framed by their msgpack structure. Refuses messages larger than `max`.
pub fn stream_frame_len(buf: &[u8], max: usize) -> Result<Frame, DropReason> {
    StreamFramer::new(max).frame(buf)
}

/// Largest header (of a user or push/pull message) before its length is known.
const STREAM_HEADER_MAX: usize = 4096;

/// Frames one stream message as its bytes arrive, resuming where the last call stopped: the
/// work over a whole message is proportional to its size however it is cut into reads (a
/// peer trickling a large message byte by byte costs no more than sending it at once).
#[derive(Debug, Clone)]
pub struct StreamFramer {
    max: usize,
    stage: Stage,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Nothing decided yet.
    Start,
    /// Skipping msgpack values; what their end means comes next.
    Skipping(mp::Skipper, AfterSkip),
    /// The message spans this many bytes.
    Known(usize),
}

#[derive(Debug, Clone, Copy)]
enum AfterSkip {
    /// The value's end is the message's end.
    End,
    /// The user-message header starting here was skipped: decode it for the body's length.
    UserHeader(usize),
    /// The push/pull header starting here was skipped: decode it for the node count.
    PushPullHeader(usize),
    /// The node states were skipped: the user state of this many bytes follows.
    UserState(usize),
}

impl StreamFramer {
    /// A framer for messages of at most `max` bytes.
    pub fn new(max: usize) -> StreamFramer {
        StreamFramer { max, stage: Stage::Start }
    }

    /// Looks at `buf` (the stream's bytes so far, earlier calls' bytes unchanged at its head).
    pub fn frame(&mut self, buf: &[u8]) -> Result<Frame, DropReason> {
        loop {
            match self.stage {
                Stage::Start => {
                    let mut off = 0;
                    if buf.first() == Some(&kind::HAS_LABEL) {
                        let Some(&len) = buf.get(1) else { return Ok(Frame::Incomplete) };
                        if len == 0 {
                            return Err(DropReason::Label);
                        }
                        off = 2 + usize::from(len);
                    }
                    let Some(&ty) = buf.get(off) else { return Ok(Frame::Incomplete) };
                    let body = off + 1;
                    self.stage = match ty {
                        kind::ENCRYPT => {
                            let Some(len) = buf.get(body..body + 4) else { return Ok(Frame::Incomplete) };
                            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                            Stage::Known(body + 4 + len)
                        }
                        kind::PUSH_PULL => {
                            Stage::Skipping(mp::Skipper::new(body, 1), AfterSkip::PushPullHeader(body))
                        }
                        kind::USER => Stage::Skipping(mp::Skipper::new(body, 1), AfterSkip::UserHeader(body)),
                        kind::PING | kind::ACK | kind::ERR | kind::COMPRESS => {
                            Stage::Skipping(mp::Skipper::new(body, 1), AfterSkip::End)
                        }
                        _ => return Err(DropReason::UnknownType),
                    };
                }
                Stage::Skipping(mut skipper, after) => {
                    let step = skipper.advance(buf, self.max);
                    self.stage = Stage::Skipping(skipper, after);
                    let end = match step {
                        Ok(Some(end)) => end,
                        Ok(None) => {
                            let header_start = match after {
                                AfterSkip::UserHeader(h) | AfterSkip::PushPullHeader(h) => Some(h),
                                _ => None,
                            };
                            if header_start.is_some_and(|h| buf.len() - h > STREAM_HEADER_MAX) {
                                return Err(DropReason::Malformed);
                            }
                            if buf.len() > self.max {
                                return Err(DropReason::Oversized);
                            }
                            return Ok(Frame::Incomplete);
                        }
                        Err(mp::DecodeError::TooLong(_)) => return Err(DropReason::Oversized),
                        Err(e) => return Err(e.into()),
                    };
                    self.stage = match after {
                        AfterSkip::End => Stage::Known(end),
                        AfterSkip::UserHeader(h) => {
                            let header: UserMsgHeader = mp::decode(&buf[h..end])?;
                            Stage::Known(end + header.user_msg_len as usize)
                        }
                        AfterSkip::PushPullHeader(h) => {
                            let header: PushPullHeader = mp::decode(&buf[h..end])?;
                            Stage::Skipping(
                                mp::Skipper::new(end, u64::from(header.nodes)),
                                AfterSkip::UserState(header.user_state_len as usize),
                            )
                        }
                        AfterSkip::UserState(len) => Stage::Known(end + len),
                    };
                }
                Stage::Known(total) if total > self.max => return Err(DropReason::Oversized),
                Stage::Known(total) if buf.len() >= total => return Ok(Frame::Complete(total)),
                Stage::Known(_) => return Ok(Frame::Incomplete),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Ping;
    use crate::mp::Wire;
    use rand::SeedableRng;

    fn env(keys: &[Vec<u8>], label: Option<&str>) -> Envelope {
        let keyring = match keys.split_first() {
            Some((p, rest)) => Keyring::new(p, rest).unwrap(),
            None => Keyring::default(),
        };
        Envelope {
            keyring,
            label: label.map(str::to_string),
            verify_incoming: true,
            verify_outgoing: true,
            max_message: 1 << 20,
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    fn ping() -> Vec<u8> {
        mp::encode_with_type(kind::PING, &Ping { seq_no: 9, node: "n".into(), ..Default::default() })
    }

    #[test]
    fn packet_layers_round_trip() {
        for (keys, label) in [
            (vec![], None),
            (vec![vec![1u8; 16]], None),
            (vec![vec![1u8; 32]], Some("prod")),
            (vec![], Some("prod")),
        ] {
            let e = env(&keys, label);
            for crc in [false, true] {
                let sealed = e.seal_packet(&mut rng(), &ping(), crc);
                assert_eq!(e.open_packet(&sealed).unwrap(), ping());
            }
        }
    }

    #[test]
    fn wrong_label_key_or_crc_is_dropped() {
        let sealed = env(&[vec![1; 16]], Some("a")).seal_packet(&mut rng(), &ping(), true);
        assert_eq!(env(&[vec![1; 16]], Some("b")).open_packet(&sealed), Err(DropReason::Label));
        assert_eq!(env(&[vec![1; 16]], None).open_packet(&sealed), Err(DropReason::Label));
        assert_eq!(env(&[vec![2; 16]], Some("a")).open_packet(&sealed), Err(DropReason::Decrypt));
        let plain = env(&[], None).seal_packet(&mut rng(), &ping(), false);
        assert_eq!(env(&[vec![2; 16]], None).open_packet(&plain), Err(DropReason::Decrypt));
        let mut crc = env(&[], None).seal_packet(&mut rng(), &ping(), true);
        *crc.last_mut().unwrap() ^= 1;
        assert_eq!(env(&[], None).open_packet(&crc), Err(DropReason::Checksum));
    }

    #[test]
    fn compound_and_compressed_messages_split() {
        let e = env(&[], None);
        let a = ping();
        let b = mp::encode_with_type(kind::ACK, &crate::messages::Ack { seq_no: 1, payload: vec![] });
        let inner = make_compound(&[&a, &b]);
        let packed = compress(&inner);
        let outer = make_compound(&[&packed, &a]);
        let mut parts = Vec::new();
        e.split_messages(&outer, &mut parts).unwrap();
        let bytes: Vec<Vec<u8>> = parts
            .into_iter()
            .map(|p| match p {
                Part::Borrowed(b) => b.to_vec(),
                Part::Owned(o) => o,
                Part::Broken(r) => panic!("{r}"),
            })
            .collect();
        assert_eq!(bytes, vec![a.clone(), b, a]);
    }

    #[test]
    fn truncated_compound_keeps_whole_parts() {
        let a = ping();
        let mut c = make_compound(&[&a, &a]);
        c.truncate(c.len() - 3);
        let mut parts = Vec::new();
        env(&[], None).split_messages(&c, &mut parts).unwrap();
        assert!(matches!(parts[0], Part::Borrowed(_)));
        assert!(matches!(parts[1], Part::Broken(DropReason::Truncated)));
    }

    #[test]
    fn streams_frame_without_length_prefix() {
        let e = env(&[], Some("x"));
        let mut msg = vec![kind::PUSH_PULL];
        PushPullHeader { nodes: 1, user_state_len: 3, join: true }.put(&mut msg);
        crate::messages::PushNodeState { name: "a".into(), ..Default::default() }.put(&mut msg);
        msg.extend_from_slice(b"abc");
        let sealed = e.seal_stream(&mut rng(), &msg);
        let mut buf = sealed.clone();
        buf.extend_from_slice(b"next");
        assert_eq!(stream_frame_len(&buf, 1 << 20).unwrap(), Frame::Complete(sealed.len()));
        for cut in 0..sealed.len() {
            assert_eq!(stream_frame_len(&sealed[..cut], 1 << 20).unwrap(), Frame::Incomplete, "cut {cut}");
        }
        assert_eq!(e.open_stream(&sealed).unwrap(), msg);
        assert_eq!(stream_frame_len(&sealed, 10), Err(DropReason::Oversized));

        let enc = env(&[vec![5; 24]], None);
        let sealed = enc.seal_stream(&mut rng(), &msg);
        assert_eq!(sealed[0], kind::ENCRYPT);
        assert_eq!(stream_frame_len(&sealed, 1 << 20).unwrap(), Frame::Complete(sealed.len()));
        assert_eq!(enc.open_stream(&sealed).unwrap(), msg);
        assert_eq!(env(&[vec![6; 24]], None).open_stream(&sealed), Err(DropReason::Decrypt));
        assert_eq!(enc.open_stream(&msg), Err(DropReason::Decrypt));
    }

    /// Feeds `msg` to one framer in pieces of `step` bytes, as reads from a socket would.
    fn frame_in_steps(msg: &[u8], step: usize, max: usize) -> Result<Frame, DropReason> {
        let mut framer = StreamFramer::new(max);
        let mut last = Ok(Frame::Incomplete);
        for end in (step..msg.len() + step).step_by(step) {
            last = framer.frame(&msg[..end.min(msg.len())]);
            if last != Ok(Frame::Incomplete) {
                break;
            }
        }
        last
    }

    #[test]
    fn the_incremental_framer_agrees_with_one_look_at_every_cut() {
        let mut pp = vec![kind::PUSH_PULL];
        PushPullHeader { nodes: 40, user_state_len: 7, join: false }.put(&mut pp);
        for i in 0..40 {
            let meta = crate::serf::encode_tags(&[("role".to_string(), format!("backend-{i}"))].into());
            crate::messages::PushNodeState { name: format!("n{i}"), meta, ..Default::default() }.put(&mut pp);
        }
        pp.extend_from_slice(b"serf!!!");
        let ping = mp::encode_with_type(
            kind::PING,
            &crate::messages::Ping { seq_no: 3, node: "x".into(), ..Default::default() },
        );
        for msg in [pp, ping] {
            for step in [1, 2, 3, 7, 64, 1000] {
                assert_eq!(
                    frame_in_steps(&msg, step, 1 << 20),
                    Ok(Frame::Complete(msg.len())),
                    "step {step}"
                );
            }
            let mut more = msg.clone();
            more.extend_from_slice(&[kind::PING; 9]);
            assert_eq!(frame_in_steps(&more, 5, 1 << 20), Ok(Frame::Complete(msg.len())));
        }
    }

    #[test]
    fn the_framer_refuses_lies_and_giants_early() {
        // An array claiming four billion elements cannot fit in 1 MiB.
        let lie = [kind::PING, 0xdd, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(stream_frame_len(&lie, 1 << 20), Err(DropReason::Oversized));
        // A string longer than the limit is refused from its header alone.
        let big = [kind::COMPRESS, 0xdb, 0x10, 0, 0, 0];
        assert_eq!(stream_frame_len(&big, 1 << 20), Err(DropReason::Oversized));
        // A header that never ends is malformed once it passes 4 KiB.
        let mut endless = vec![kind::USER, 0xdc, 0xff, 0xff];
        endless.extend(std::iter::repeat_n(0x90, 5000));
        assert_eq!(frame_in_steps(&endless, 100, 1 << 20), Err(DropReason::Malformed));
        assert_eq!(stream_frame_len(&[kind::PING, 0xc1], 1 << 20), Err(DropReason::Malformed));
        assert_eq!(stream_frame_len(&[0x77], 1 << 20), Err(DropReason::UnknownType));
    }

    #[test]
    fn lzw_round_trips_and_rejects_garbage() {
        let text = b"memberlist memberlist memberlist push pull state".repeat(20);
        let packed = compress(&text);
        let c: Compress = mp::decode(&packed[1..]).unwrap();
        assert!(c.buf.len() < text.len());
        assert_eq!(decompress(&c, 1 << 20).unwrap(), text);
        assert_eq!(decompress(&c, 100), Err(DropReason::Oversized));
        let bad = Compress { algo: 1, buf: c.buf.clone() };
        assert_eq!(decompress(&bad, 1 << 20), Err(DropReason::Compression));
    }
}
