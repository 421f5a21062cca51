//! Fuzzes the membership limits: whatever a member claims, checking never panics, and a
//! claim that passes can go anywhere member data goes (one line, one field, no controls).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_gossip::escape::field;
use shoal_gossip::limits::{check_meta, check_name};

fuzz_target!(|data: &[u8]| {
    let (name, meta) = data.split_at(data.len() / 2);
    if let Ok(name) = std::str::from_utf8(name)
        && check_name(name).is_ok()
    {
        assert!(!name.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/'));
    }
    if let Ok(tags) = check_meta(meta) {
        for (k, v) in &tags {
            assert!(!k.is_empty() && !k.contains(['=', ',']) && !k.chars().any(char::is_control));
            assert!(!v.chars().any(char::is_control));
        }
        assert!(shoal_gossip::encode_tags(&tags).len() <= 512 || meta.first() != Some(&0xff));
    }
    // Escaping always yields one field of one line: no control character, no space.
    let text = String::from_utf8_lossy(data);
    assert!(!field(&text).chars().any(|c| c.is_control() || c == ' ' || c == '\u{2028}'));
});
