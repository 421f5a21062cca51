//! MessagePack as HashiCorp's `go-msgpack` speaks it on the wire.
//!
//! memberlist and Serf encode every message as a msgpack map keyed by the Go
//! field names, with `[]byte` written in the *raw* (`str`) family because their
//! codec runs without `WriteExt`. Decoders there accept `str` or `bin` for bytes,
//! any integer width for any integer field, and `nil` for empty values. This
//! module gives the same tolerance: a small encoder, a zero-copy [`Reader`], the
//! [`Wire`] trait implemented by every field type, and the [`wire_struct!`] macro
//! that turns a Rust struct into a Go-compatible msgpack map.
//!
//! Markers are classified with [`rmp::Marker`]; everything else is a few lines of
//! byte arithmetic that can never panic on hostile input.

use std::collections::BTreeMap;

use rmp::Marker;

/// Nesting deeper than this is refused (a hostile packet cannot blow the stack).
const MAX_DEPTH: usize = 32;

/// Why a msgpack value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("truncated msgpack value")]
    Truncated,
    /// A value of the wrong msgpack type was found.
    #[error("expected {expected}, found msgpack marker 0x{found:02x}")]
    UnexpectedType {
        /// What the decoder wanted.
        expected: &'static str,
        /// The marker byte it found.
        found: u8,
    },
    /// An integer did not fit the field it was decoded into.
    #[error("integer {0} out of range for its field")]
    OutOfRange(i128),
    /// Values were nested deeper than [`MAX_DEPTH`].
    #[error("msgpack nesting too deep")]
    TooDeep,
    /// A container claimed more elements than the input could possibly hold.
    #[error("msgpack container length {0} exceeds the input")]
    TooLong(u32),
}

// ---------------------------------------------------------------- encoding

/// Appends `nil`.
pub fn put_nil(buf: &mut Vec<u8>) {
    buf.push(0xc0);
}

/// Appends a boolean.
pub fn put_bool(buf: &mut Vec<u8>, v: bool) {
    buf.push(if v { 0xc3 } else { 0xc2 });
}

/// Appends an unsigned integer in its smallest encoding.
pub fn put_uint(buf: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        buf.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        buf.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        buf.push(0xcd);
        buf.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        buf.push(0xce);
        buf.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        buf.push(0xcf);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a signed integer in its smallest encoding (non-negative values as unsigned, as Go does).
pub fn put_int(buf: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_uint(buf, v as u64);
    } else if v >= -32 {
        buf.push(v as i8 as u8);
    } else if v >= i64::from(i8::MIN) {
        buf.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i64::from(i16::MIN) {
        buf.push(0xd1);
        buf.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        buf.push(0xd2);
        buf.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        buf.push(0xd3);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends bytes in the raw (`str`) family, exactly as go-msgpack writes `[]byte` and `string`.
pub fn put_raw(buf: &mut Vec<u8>, v: &[u8]) {
    let n = v.len();
    if n < 32 {
        buf.push(0xa0 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        buf.push(0xda);
        buf.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        buf.push(0xdb);
        buf.extend_from_slice(&(n as u32).to_be_bytes());
    }
    buf.extend_from_slice(v);
}

/// Appends a string.
pub fn put_str(buf: &mut Vec<u8>, v: &str) {
    put_raw(buf, v.as_bytes());
}

/// Appends an array header.
pub fn put_array_len(buf: &mut Vec<u8>, n: usize) {
    put_container_len(buf, n, 0x90, 0xdc, 0xdd);
}

/// Appends a map header.
pub fn put_map_len(buf: &mut Vec<u8>, n: usize) {
    put_container_len(buf, n, 0x80, 0xde, 0xdf);
}

fn put_container_len(buf: &mut Vec<u8>, n: usize, fix: u8, m16: u8, m32: u8) {
    if n < 16 {
        buf.push(fix | n as u8);
    } else if n <= usize::from(u16::MAX) {
        buf.push(m16);
        buf.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        buf.push(m32);
        buf.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

// ---------------------------------------------------------------- decoding

/// A cursor over msgpack bytes; every read checks bounds and types.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf.get(self.pos).copied().ok_or(DecodeError::Truncated)
    }

    /// Consumes a `nil` if one is next; tells whether it did.
    pub fn eat_nil(&mut self) -> Result<bool, DecodeError> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Reads any integer as `i128` (wide enough for every msgpack integer).
    pub fn read_integer(&mut self) -> Result<i128, DecodeError> {
        let b = self.byte()?;
        Ok(match Marker::from_u8(b) {
            Marker::FixPos(v) => i128::from(v),
            Marker::FixNeg(v) => i128::from(v),
            Marker::U8 => i128::from(self.byte()?),
            Marker::U16 => i128::from(u16::from_be_bytes(self.be()?)),
            Marker::U32 => i128::from(u32::from_be_bytes(self.be()?)),
            Marker::U64 => i128::from(u64::from_be_bytes(self.be()?)),
            Marker::I8 => i128::from(self.byte()? as i8),
            Marker::I16 => i128::from(i16::from_be_bytes(self.be()?)),
            Marker::I32 => i128::from(i32::from_be_bytes(self.be()?)),
            Marker::I64 => i128::from(i64::from_be_bytes(self.be()?)),
            Marker::Null => 0,
            _ => return Err(DecodeError::UnexpectedType { expected: "integer", found: b }),
        })
    }

    /// Reads a boolean; like Go, fixints 0 and 1 and `nil` are accepted too.
    pub fn read_bool(&mut self) -> Result<bool, DecodeError> {
        let b = self.byte()?;
        match b {
            0xc2 | 0x00 | 0xc0 => Ok(false),
            0xc3 | 0x01 => Ok(true),
            _ => Err(DecodeError::UnexpectedType { expected: "bool", found: b }),
        }
    }

    /// Reads a `str` or `bin` value (or `nil`, as empty) without copying.
    pub fn read_raw(&mut self) -> Result<&'a [u8], DecodeError> {
        let b = self.byte()?;
        let len = match Marker::from_u8(b) {
            Marker::Null => 0,
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 | Marker::Bin8 => usize::from(self.byte()?),
            Marker::Str16 | Marker::Bin16 => usize::from(u16::from_be_bytes(self.be()?)),
            Marker::Str32 | Marker::Bin32 => u32::from_be_bytes(self.be()?) as usize,
            _ => return Err(DecodeError::UnexpectedType { expected: "bytes", found: b }),
        };
        self.take(len)
    }

    /// Reads a string; invalid UTF-8 is replaced, never fatal (Go strings are bytes).
    pub fn read_string(&mut self) -> Result<String, DecodeError> {
        Ok(String::from_utf8_lossy(self.read_raw()?).into_owned())
    }

    /// Reads an array header; `nil` reads as an empty array.
    pub fn read_array_len(&mut self) -> Result<usize, DecodeError> {
        let b = self.byte()?;
        let n = match Marker::from_u8(b) {
            Marker::Null => 0,
            Marker::FixArray(n) => u32::from(n),
            Marker::Array16 => u32::from(u16::from_be_bytes(self.be()?)),
            Marker::Array32 => u32::from_be_bytes(self.be()?),
            _ => return Err(DecodeError::UnexpectedType { expected: "array", found: b }),
        };
        self.check_len(n, 1)
    }

    /// Reads a map header; `nil` reads as an empty map.
    pub fn read_map_len(&mut self) -> Result<usize, DecodeError> {
        let b = self.byte()?;
        let n = match Marker::from_u8(b) {
            Marker::Null => 0,
            Marker::FixMap(n) => u32::from(n),
            Marker::Map16 => u32::from(u16::from_be_bytes(self.be()?)),
            Marker::Map32 => u32::from_be_bytes(self.be()?),
            _ => return Err(DecodeError::UnexpectedType { expected: "map", found: b }),
        };
        self.check_len(n, 2)
    }

    /// Every element takes at least one byte: a length beyond the input is a lie.
    fn check_len(&self, n: u32, bytes_per_elem: usize) -> Result<usize, DecodeError> {
        let n_usize = n as usize;
        if n_usize.saturating_mul(bytes_per_elem) > self.buf.len() - self.pos {
            return Err(DecodeError::TooLong(n));
        }
        Ok(n_usize)
    }

    /// Skips one complete value of any type.
    pub fn skip(&mut self) -> Result<(), DecodeError> {
        self.skip_depth(0)
    }

    fn skip_depth(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let b = self.peek()?;
        let (items, skip_bytes) = match Marker::from_u8(b) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => (0, 1),
            Marker::U8 | Marker::I8 => (0, 2),
            Marker::U16 | Marker::I16 => (0, 3),
            Marker::U32 | Marker::I32 | Marker::F32 => (0, 5),
            Marker::U64 | Marker::I64 | Marker::F64 => (0, 9),
            Marker::FixStr(_)
            | Marker::Str8
            | Marker::Str16
            | Marker::Str32
            | Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32 => {
                self.read_raw()?;
                return Ok(());
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => (self.read_array_len()?, 0),
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => (self.read_map_len()? * 2, 0),
            Marker::FixExt1 => (0, 3),
            Marker::FixExt2 => (0, 4),
            Marker::FixExt4 => (0, 6),
            Marker::FixExt8 => (0, 10),
            Marker::FixExt16 => (0, 18),
            Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
                self.byte()?;
                let len = match Marker::from_u8(b) {
                    Marker::Ext8 => usize::from(self.byte()?),
                    Marker::Ext16 => usize::from(u16::from_be_bytes(self.be()?)),
                    _ => u32::from_be_bytes(self.be()?) as usize,
                };
                (0, len.saturating_add(1))
            }
            Marker::Reserved => {
                return Err(DecodeError::UnexpectedType { expected: "a value", found: b });
            }
        };
        self.take(skip_bytes)?;
        for _ in 0..items {
            self.skip_depth(depth + 1)?;
        }
        Ok(())
    }
}

/// Skips msgpack values in a buffer that grows between calls, resuming where it stopped, so
/// that framing a stream looks at each byte once however it is cut into reads.
///
/// msgpack announces every container's element count up front, so the state is just a
/// position and the number of values still to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipper {
    pos: usize,
    pending: u64,
}

impl Skipper {
    /// Skips `values` values starting at `pos`.
    pub fn new(pos: usize, values: u64) -> Skipper {
        Skipper { pos, pending: values }
    }

    /// Advances over every value that `buf` holds in full: `Some(end)` once all are skipped,
    /// `None` while `buf` ends first. Errors on bytes that are no msgpack, or on counts that
    /// could not fit in `max` bytes.
    pub fn advance(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
        while self.pending > 0 {
            let Some(&b) = buf.get(self.pos) else { return Ok(None) };
            let be = |n: usize| -> Option<u64> {
                let bytes = buf.get(self.pos + 1..self.pos + 1 + n)?;
                Some(bytes.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
            };
            // (header bytes, payload bytes, child values)
            let (header, payload, children): (usize, u64, u64) = match b {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
                0x80..=0x8f => (1, 0, 2 * u64::from(b & 0x0f)),
                0x90..=0x9f => (1, 0, u64::from(b & 0x0f)),
                0xa0..=0xbf => (1, u64::from(b & 0x1f), 0),
                0xc4 | 0xd9 => match be(1) {
                    Some(n) => (2, n, 0),
                    None => return Ok(None),
                },
                0xc5 | 0xda => match be(2) {
                    Some(n) => (3, n, 0),
                    None => return Ok(None),
                },
                0xc6 | 0xdb => match be(4) {
                    Some(n) => (5, n, 0),
                    None => return Ok(None),
                },
                0xc7 => match be(1) {
                    Some(n) => (3, n, 0),
                    None => return Ok(None),
                },
                0xc8 => match be(2) {
                    Some(n) => (4, n, 0),
                    None => return Ok(None),
                },
                0xc9 => match be(4) {
                    Some(n) => (6, n, 0),
                    None => return Ok(None),
                },
                0xcc | 0xd0 => (2, 0, 0),
                0xcd | 0xd1 => (3, 0, 0),
                0xca | 0xce | 0xd2 => (5, 0, 0),
                0xcb | 0xcf | 0xd3 => (9, 0, 0),
                0xd4 => (3, 0, 0),
                0xd5 => (4, 0, 0),
                0xd6 => (6, 0, 0),
                0xd7 => (10, 0, 0),
                0xd8 => (18, 0, 0),
                0xdc => match be(2) {
                    Some(n) => (3, 0, n),
                    None => return Ok(None),
                },
                0xdd => match be(4) {
                    Some(n) => (5, 0, n),
                    None => return Ok(None),
                },
                0xde => match be(2) {
                    Some(n) => (3, 0, 2 * n),
                    None => return Ok(None),
                },
                0xdf => match be(4) {
                    Some(n) => (5, 0, 2 * n),
                    None => return Ok(None),
                },
                0xc1 => return Err(DecodeError::UnexpectedType { expected: "a value", found: b }),
            };
            let end = (self.pos + header) as u64 + payload;
            // Every value takes at least one byte: counts beyond what `max` can hold are lies.
            if end > max as u64 || self.pending - 1 + children > max as u64 {
                return Err(DecodeError::TooLong(u32::try_from(end).unwrap_or(u32::MAX)));
            }
            if (buf.len() as u64) < end {
                return Ok(None);
            }
            self.pos = end as usize;
            self.pending = self.pending - 1 + children;
        }
        Ok(Some(self.pos))
    }
}

/// How many bytes the first complete msgpack value in `buf` spans, or `None`
/// if `buf` ends before the value does (used to frame TCP streams).
pub fn value_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let mut r = Reader::new(buf);
    match r.skip() {
        Ok(()) => Ok(Some(r.position())),
        Err(DecodeError::Truncated | DecodeError::TooLong(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------- Wire

/// A type that knows its go-msgpack encoding.
pub trait Wire: Sized {
    /// Appends the encoding of `self`.
    fn put(&self, buf: &mut Vec<u8>);
    /// Decodes one value.
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Whether Go's `omitempty` would leave this value out.
    fn is_empty_value(&self) -> bool {
        false
    }
}

/// Element types that may appear inside a msgpack array (`Vec<T>`).
///
/// `u8` is deliberately not one: `Vec<u8>` is a byte string, as in Go.
pub trait Elem: Wire {}

macro_rules! wire_uint {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn put(&self, buf: &mut Vec<u8>) {
                put_uint(buf, u64::from(*self));
            }
            fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let v = r.read_integer()?;
                <$t>::try_from(v).map_err(|_| DecodeError::OutOfRange(v))
            }
            fn is_empty_value(&self) -> bool {
                *self == 0
            }
        }
    )*};
}
wire_uint!(u8, u16, u32, u64);

impl Wire for i64 {
    fn put(&self, buf: &mut Vec<u8>) {
        put_int(buf, *self);
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let v = r.read_integer()?;
        i64::try_from(v).map_err(|_| DecodeError::OutOfRange(v))
    }
    fn is_empty_value(&self) -> bool {
        *self == 0
    }
}

impl Wire for f64 {
    fn put(&self, buf: &mut Vec<u8>) {
        buf.push(0xcb);
        buf.extend_from_slice(&self.to_bits().to_be_bytes());
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.peek()? {
            0xcb => {
                r.pos += 1;
                Ok(f64::from_bits(u64::from_be_bytes(r.be()?)))
            }
            0xca => {
                r.pos += 1;
                Ok(f64::from(f32::from_bits(u32::from_be_bytes(r.be()?))))
            }
            _ => Ok(r.read_integer()? as f64),
        }
    }
    fn is_empty_value(&self) -> bool {
        *self == 0.0
    }
}
impl Elem for f64 {}

impl Wire for bool {
    fn put(&self, buf: &mut Vec<u8>) {
        put_bool(buf, *self);
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.read_bool()
    }
    fn is_empty_value(&self) -> bool {
        !*self
    }
}

impl Wire for String {
    fn put(&self, buf: &mut Vec<u8>) {
        put_str(buf, self);
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.read_string()
    }
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}
impl Elem for String {}

impl Wire for Vec<u8> {
    fn put(&self, buf: &mut Vec<u8>) {
        put_raw(buf, self);
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(r.read_raw()?.to_vec())
    }
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}
impl Elem for Vec<u8> {}

impl<T: Elem> Wire for Vec<T> {
    fn put(&self, buf: &mut Vec<u8>) {
        put_array_len(buf, self.len());
        for v in self {
            v.put(buf);
        }
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.read_array_len()?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(T::take(r)?);
        }
        Ok(out)
    }
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, buf: &mut Vec<u8>) {
        match self {
            Some(v) => v.put(buf),
            None => put_nil(buf),
        }
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.eat_nil()? { Ok(None) } else { Ok(Some(T::take(r)?)) }
    }
    fn is_empty_value(&self) -> bool {
        self.is_none()
    }
}
impl<T: Wire> Elem for Option<T> {}

impl<V: Wire> Wire for BTreeMap<String, V> {
    fn put(&self, buf: &mut Vec<u8>) {
        put_map_len(buf, self.len());
        for (k, v) in self {
            put_str(buf, k);
            v.put(buf);
        }
    }
    fn take(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.read_map_len()?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let k = r.read_string()?;
            let v = V::take(r)?;
            out.insert(k, v);
        }
        Ok(out)
    }
    fn is_empty_value(&self) -> bool {
        self.is_empty()
    }
}

/// Declares a struct encoded as a Go-style msgpack map.
///
/// Each field names its Go key; `[omitempty]` mirrors Go's `codec:",omitempty"`.
/// Unknown keys are skipped on decode and missing ones keep their default,
/// exactly as go-msgpack does, so newer and older peers interoperate.
#[macro_export]
#[doc(hidden)]
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $key:literal $([$omit:ident])? => $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        $vis struct $name {
            $(
                $(#[$fmeta])*
                #[doc = concat!("Go field `", $key, "`.")]
                $fvis $field: $ty,
            )*
        }

        impl $crate::mp::Wire for $name {
            fn put(&self, buf: &mut Vec<u8>) {
                let mut n = 0usize;
                $(
                    let present = $crate::wire_struct!(@present self.$field $(, $omit)?);
                    if present { n += 1; }
                )*
                $crate::mp::put_map_len(buf, n);
                $(
                    if $crate::wire_struct!(@present self.$field $(, $omit)?) {
                        $crate::mp::put_str(buf, $key);
                        $crate::mp::Wire::put(&self.$field, buf);
                    }
                )*
            }

            fn take(r: &mut $crate::mp::Reader<'_>) -> Result<Self, $crate::mp::DecodeError> {
                let mut out = Self::default();
                let n = r.read_map_len()?;
                for _ in 0..n {
                    let key = r.read_raw()?;
                    match key {
                        $( k if k == $key.as_bytes() => {
                            out.$field = $crate::mp::Wire::take(r)?;
                        } )*
                        _ => r.skip()?,
                    }
                }
                Ok(out)
            }
        }

        impl $crate::mp::Elem for $name {}
    };
    (@present $value:expr) => { true };
    (@present $value:expr, omitempty) => { !$crate::mp::Wire::is_empty_value(&$value) };
}

/// Encodes one value into a fresh buffer prefixed by a message-type byte.
pub fn encode_with_type<T: Wire>(msg_type: u8, value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.push(msg_type);
    value.put(&mut buf);
    buf
}

/// Decodes exactly one value from the start of `buf` (trailing bytes are ignored, as in Go).
pub fn decode<T: Wire>(buf: &[u8]) -> Result<T, DecodeError> {
    T::take(&mut Reader::new(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::wire_struct! {
        struct Sample {
            "SeqNo" => seq_no: u32,
            "Node" => node: String,
            "Addr" [omitempty] => addr: Vec<u8>,
            "Names" => names: Vec<String>,
            "Tags" => tags: BTreeMap<String, String>,
        }
    }

    #[test]
    fn round_trip_and_omit_empty() {
        let s = Sample {
            seq_no: 300,
            node: "web-1".into(),
            addr: vec![],
            names: vec!["a".into(), "b".into()],
            tags: BTreeMap::from([("role".into(), "backend".into())]),
        };
        let mut buf = Vec::new();
        s.put(&mut buf);
        // map of 4 (Addr omitted because empty)
        assert_eq!(buf[0], 0x84);
        assert!(!buf.windows(4).any(|w| w == b"Addr"));
        assert_eq!(decode::<Sample>(&buf).unwrap(), s);
    }

    #[test]
    fn go_encodings_decode() {
        // {"SeqNo": uint16(300), "Node": str8("x"), "Extra": [1, nil], "Addr": bin8([1,2])}
        let mut buf = vec![0x84];
        put_str(&mut buf, "SeqNo");
        buf.extend_from_slice(&[0xcd, 0x01, 0x2c]);
        put_str(&mut buf, "Node");
        buf.extend_from_slice(&[0xd9, 0x01, b'x']);
        put_str(&mut buf, "Extra");
        buf.extend_from_slice(&[0x92, 0x01, 0xc0]);
        put_str(&mut buf, "Addr");
        buf.extend_from_slice(&[0xc4, 0x02, 1, 2]);
        let s: Sample = decode(&buf).unwrap();
        assert_eq!(s.seq_no, 300);
        assert_eq!(s.node, "x");
        assert_eq!(s.addr, vec![1, 2]);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        assert_eq!(decode::<Sample>(&[0x84]).unwrap_err(), DecodeError::TooLong(4));
        assert_eq!(
            decode::<Sample>(&[0xdf, 0xff, 0xff, 0xff, 0xff]).unwrap_err(),
            DecodeError::TooLong(u32::MAX)
        );
        assert!(decode::<Sample>(&[0x81, 0xa5]).is_err());
        let deep = vec![0x91; 100];
        assert_eq!(Reader::new(&deep).skip().unwrap_err(), DecodeError::TooDeep);
        // SeqNo out of range for u32
        let mut buf = vec![0x81];
        put_str(&mut buf, "SeqNo");
        put_uint(&mut buf, u64::MAX);
        assert!(matches!(decode::<Sample>(&buf), Err(DecodeError::OutOfRange(_))));
    }

    #[test]
    fn value_len_frames_streams() {
        let mut buf = Vec::new();
        Sample::default().put(&mut buf);
        let full = buf.len();
        buf.extend_from_slice(b"trailing");
        assert_eq!(value_len(&buf).unwrap(), Some(full));
        assert_eq!(value_len(&buf[..full - 1]).unwrap(), None);
        assert_eq!(value_len(&[]).unwrap(), None);
    }

    #[test]
    fn integers_use_go_widths() {
        for (v, len) in [(0u64, 1), (127, 1), (128, 2), (255, 2), (256, 3), (65_536, 5), (1 << 40, 9)] {
            let mut b = Vec::new();
            put_uint(&mut b, v);
            assert_eq!(b.len(), len, "{v}");
            assert_eq!(Reader::new(&b).read_integer().unwrap(), i128::from(v));
        }
        for v in [-1i64, -32, -33, -128, -129, -40_000, -3_000_000_000] {
            let mut b = Vec::new();
            put_int(&mut b, v);
            assert_eq!(Reader::new(&b).read_integer().unwrap(), i128::from(v));
        }
    }
}
