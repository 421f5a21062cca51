//! Escaping of member data (names, tags) wherever it leaves the process: log lines, admin
//! output, stats, metrics labels, terminal output.
//!
//! Membership is remote input: even once [`crate::limits`] validates it, a name is never written raw into
//! a line-based format. [`control`] makes any text one safe line: a backslash becomes `\\`,
//! `\n`, `\r` and `\t` their escapes, any other control character `\xNN` (`\u{NN}` above 0x7f),
//! and the Unicode line and paragraph separators and bidirectional overrides their `\u{…}`
//! form, so what is shown can always be told apart from what would have been injected.
//! [`field`] also escapes spaces (as `\x20`), for the space-separated formats (`show servers
//! state`, the `httplog` line), and writes an empty value as `-`. Clean text, the common case,
//! is borrowed, not copied.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` is written escaped (spaces aside).
fn special(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn write_escaped(out: &mut impl fmt::Write, s: &str, spaces: bool) -> fmt::Result {
    let mut last = 0;
    for (i, c) in s.char_indices() {
        if !(special(c) || (spaces && c == ' ')) {
            continue;
        }
        out.write_str(&s[last..i])?;
        match c {
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32)?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        last = i + c.len_utf8();
    }
    out.write_str(&s[last..])
}

fn escaped(s: &str, spaces: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| special(c) || (spaces && c == ' ')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let _ = write_escaped(&mut out, s, spaces);
    Cow::Owned(out)
}

/// `s` with control characters (and backslashes) escaped: always one line.
pub fn control(s: &str) -> Cow<'_, str> {
    escaped(s, false)
}

/// `s` as one field of a space-separated line: [`control`], spaces escaped too, `-` when empty.
pub fn field(s: &str) -> Cow<'_, str> {
    if s.is_empty() {
        return Cow::Borrowed("-");
    }
    escaped(s, true)
}

/// Displays its text through [`control`] without allocating: for tracing fields
/// (`server = %Esc(&s.name)`).
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_leave_raw() {
        assert!(matches!(control("web-1"), Cow::Borrowed("web-1")));
        assert_eq!(control("x\r\nX-Injected: yes"), "x\\r\\nX-Injected: yes");
        assert_eq!(control("a\tb\u{1b}[31mc\u{7f}"), "a\\tb\\x1b[31mc\\x7f");
        assert_eq!(control("back\\slash"), "back\\\\slash", "a literal backslash-n is not a newline");
        assert_eq!(control("a\u{85}b\u{2028}c\u{202e}d"), "a\\u{85}b\\u{2028}c\\u{202e}d");
        assert_eq!(control("héllo wörld"), "héllo wörld");
        assert_eq!(Esc("x\ny").to_string(), "x\\ny");
    }

    #[test]
    fn fields_stay_one_field() {
        assert_eq!(field("web 1\n2"), "web\\x201\\n2");
        assert_eq!(field(""), "-");
        assert!(matches!(field("web-1"), Cow::Borrowed("web-1")));
        assert_eq!(field("a b").split(' ').count(), 1);
    }
}
