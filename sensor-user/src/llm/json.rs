//! Walks the top level of JSON text that may be cut short.
//!
//! A request or response body that lost bytes to the capture bound is no
//! longer valid JSON, but the members before the cut still are. These
//! functions find where each complete top-level member or array element
//! ends without building a tree, so callers deserialise only the few
//! members they need. They never recurse, so deep nesting cannot overflow
//! the stack, and they do not validate the values they skip: `serde_json`
//! does that when a caller parses one.

use std::borrow::Cow;

/// The outcome of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// The closing bracket of the top-level value was reached.
    Complete,
    /// The text ended inside the top-level value.
    Incomplete,
    /// A byte appeared where JSON does not allow it.
    Invalid,
}

/// Calls `visit` with the key and raw value text of each member of the
/// top-level object, in order. The member whose value the text cuts off is
/// visited last, with None.
pub(super) fn for_each_member<'a>(text: &'a [u8], mut visit: impl FnMut(&str, Option<&'a [u8]>)) -> ScanEnd {
    let mut i = skip_whitespace(text, 0);
    match text.get(i) {
        None => return ScanEnd::Incomplete,
        Some(b'{') => i += 1,
        Some(_) => return ScanEnd::Invalid,
    }
    loop {
        i = skip_whitespace(text, i);
        match text.get(i) {
            None => return ScanEnd::Incomplete,
            Some(b'}') => return ScanEnd::Complete,
            // Commas are not checked for position: the members are what matters.
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            Some(_) => return ScanEnd::Invalid,
        }
        let key_start = i;
        let key_end = match string_end(text, key_start) {
            Ok(end) => end,
            Err(end) => return end,
        };
        i = skip_whitespace(text, key_end);
        match text.get(i) {
            None => return ScanEnd::Incomplete,
            Some(b':') => i += 1,
            Some(_) => return ScanEnd::Invalid,
        }
        let key = decode_key(&text[key_start..key_end]);
        let value_start = skip_whitespace(text, i);
        let value_end = match value_end(text, value_start) {
            Ok(end) => end,
            Err(end) => {
                if let (Some(key), ScanEnd::Incomplete) = (key, end) {
                    visit(&key, None);
                }
                return end;
            }
        };
        if let Some(key) = key {
            visit(&key, Some(&text[value_start..value_end]));
        }
        i = value_end;
    }
}

/// Calls `visit` with the raw text of each complete element of the
/// top-level array, in order.
pub(super) fn for_each_element<'a>(text: &'a [u8], mut visit: impl FnMut(&'a [u8])) -> ScanEnd {
    let mut i = skip_whitespace(text, 0);
    match text.get(i) {
        None => return ScanEnd::Incomplete,
        Some(b'[') => i += 1,
        Some(_) => return ScanEnd::Invalid,
    }
    loop {
        i = skip_whitespace(text, i);
        match text.get(i) {
            None => return ScanEnd::Incomplete,
            Some(b']') => return ScanEnd::Complete,
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let end = match value_end(text, i) {
            Ok(end) => end,
            Err(end) => return end,
        };
        visit(&text[i..end]);
        i = end;
    }
}

fn skip_whitespace(text: &[u8], mut i: usize) -> usize {
    while matches!(text.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Returns the index just past the value starting at `start`.
fn value_end(text: &[u8], start: usize) -> Result<usize, ScanEnd> {
    match text.get(start) {
        None => Err(ScanEnd::Incomplete),
        Some(b'"') => string_end(text, start),
        Some(b'{' | b'[') => container_end(text, start),
        Some(b'}' | b']' | b',' | b':') => Err(ScanEnd::Invalid),
        Some(_) => {
            // A number or literal ends at the first delimiter. Reaching the
            // end of the text means it may continue in the bytes not seen.
            let mut i = start;
            while let Some(byte) = text.get(i) {
                if matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    return Ok(i);
                }
                i += 1;
            }
            Err(ScanEnd::Incomplete)
        }
    }
}

/// Returns the index just past the string whose opening quote is at `start`.
fn string_end(text: &[u8], start: usize) -> Result<usize, ScanEnd> {
    let mut i = start + 1;
    loop {
        let Some(special) = find_quote_or_backslash(text, i) else {
            return Err(ScanEnd::Incomplete);
        };
        if text[special] == b'"' {
            return Ok(special + 1);
        }
        i = special + 2;
    }
}

/// Returns the index of the first `"` or `\` at or after `from`.
///
/// Prompts make up most of a request body and sit in strings, so this
/// tests eight bytes at a time. XOR turns matching bytes into zero bytes.
/// Then `(v - 0x01..) & !v & 0x80..` sets the high bit of the first zero
/// byte of `v`. Bits above it may be set spuriously, but bits below never.
fn find_quote_or_backslash(text: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = text.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(bytes);
        let quotes = word ^ (ONES * u64::from(b'"'));
        let backslashes = word ^ (ONES * u64::from(b'\\'));
        let zero_bytes = (quotes.wrapping_sub(ONES) & !quotes) | (backslashes.wrapping_sub(ONES) & !backslashes);
        let found = zero_bytes & HIGH_BITS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let tail = text.get(i..)?;
    tail.iter().position(|&byte| byte == b'"' || byte == b'\\').map(|offset| i + offset)
}

/// Returns the index just past the object or array opening at `start`.
/// Bracket kinds are not matched against each other: a mismatch is left for
/// `serde_json` to reject when the value is parsed.
fn container_end(text: &[u8], start: usize) -> Result<usize, ScanEnd> {
    let mut depth: u64 = 0;
    let mut i = start;
    loop {
        match text.get(i) {
            None => return Err(ScanEnd::Incomplete),
            Some(b'"') => i = string_end(text, i)?,
            Some(b'{' | b'[') => {
                depth += 1;
                i += 1;
            }
            Some(b'}' | b']') => {
                depth = depth.saturating_sub(1);
                i += 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// Decodes a quoted key. Keys without escapes, nearly all of them, are
/// borrowed as they are.
fn decode_key(quoted: &[u8]) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().saturating_sub(1))?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> (Vec<(String, String)>, ScanEnd) {
        let mut found = Vec::new();
        let end = for_each_member(text.as_bytes(), |key, value| {
            let value = value.map_or("<cut>".into(), String::from_utf8_lossy);
            found.push((key.to_owned(), value.into_owned()));
        });
        (found, end)
    }

    #[test]
    fn members_of_complete_object() {
        let (found, end) = members(r#" {"model": "gpt-4o", "n": 2, "tools": [{"a": "}"}], "x\"y": null} "#);
        assert_eq!(end, ScanEnd::Complete);
        assert_eq!(found[0], ("model".to_owned(), r#""gpt-4o""#.to_owned()));
        assert_eq!(found[1], ("n".to_owned(), "2".to_owned()));
        assert_eq!(found[2], ("tools".to_owned(), r#"[{"a": "}"}]"#.to_owned()));
        assert_eq!(found[3], ("x\"y".to_owned(), "null".to_owned()));
    }

    #[test]
    fn members_before_cut() {
        let (found, end) = members(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hel"#);
        assert_eq!(end, ScanEnd::Incomplete);
        assert_eq!(found.len(), 3);
        assert_eq!(found[1], ("stream".to_owned(), "true".to_owned()));
        assert_eq!(found[2], ("messages".to_owned(), "<cut>".to_owned()));
    }

    #[test]
    fn number_at_cut_is_incomplete() {
        let (found, end) = members(r#"{"a":1,"max_tokens":12"#);
        assert_eq!(end, ScanEnd::Incomplete);
        assert_eq!(found[1], ("max_tokens".to_owned(), "<cut>".to_owned()));
    }

    #[test]
    fn non_object_is_invalid() {
        assert_eq!(members("[1]").1, ScanEnd::Invalid);
        assert_eq!(members(r#"{"a" 1}"#).1, ScanEnd::Invalid);
        assert_eq!(members("").1, ScanEnd::Incomplete);
    }

    #[test]
    fn elements_before_cut() {
        let mut found = Vec::new();
        let end = for_each_element(br#"[{"a":[1,2]}, {"b":"]"} ,{"c":"#, |value| found.push(value.to_vec()));
        assert_eq!(end, ScanEnd::Incomplete);
        assert_eq!(found, vec![br#"{"a":[1,2]}"#.to_vec(), br#"{"b":"]"}"#.to_vec()]);
    }

    #[test]
    fn quote_search_matches_bytewise_search() {
        let mut text: Vec<u8> =
            (0..200u8).map(|byte| byte.wrapping_mul(37) | 1).filter(|byte| *byte != b'"' && *byte != b'\\').collect();
        text.extend_from_slice(b"\x80\xff\x7f\x00\x01");
        for special in [b'"', b'\\'] {
            for at in 0..text.len() {
                let mut sample = text.clone();
                sample[at] = special;
                for from in [0, at.saturating_sub(3), at] {
                    assert_eq!(find_quote_or_backslash(&sample, from), Some(at), "at {at} from {from}");
                }
                assert_eq!(find_quote_or_backslash(&sample, at + 1), None);
            }
        }
        assert_eq!(find_quote_or_backslash(b"", 0), None);
        assert_eq!(find_quote_or_backslash(b"ab", 5), None);
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let text = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let (found, end) = members(&text);
        assert_eq!(end, ScanEnd::Complete);
        assert_eq!(found.len(), 1);
    }
}
