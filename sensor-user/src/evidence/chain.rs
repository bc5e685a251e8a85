//! The hash chain that links every evidence record to the one before it.
//!
//! A record is first serialised without its `integrity` member. Its hash is
//! sha256 over the previous record's hash as 64 lowercase hex digits
//! followed by those record bytes. The line written is the same bytes with
//! `,"integrity":{"prev_hash":"…","hash":"…"}` spliced in before the closing
//! brace. The suffix has a fixed length, so a verifier cuts it off, puts the
//! brace back and hashes again: no JSON canonicalisation is involved, and a
//! change to any byte of the line changes a hash.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// A sha256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first record of a new chain.
pub const GENESIS: Hash = [0; 32];

const SUFFIX_HEAD: &[u8] = b",\"integrity\":{\"prev_hash\":\"";
const SUFFIX_MIDDLE: &[u8] = b"\",\"hash\":\"";
const SUFFIX_TAIL: &[u8] = b"\"}}";

/// Length of the integrity suffix that ends every sealed line.
pub const SUFFIX_LEN: usize = SUFFIX_HEAD.len() + 64 + SUFFIX_MIDDLE.len() + 64 + SUFFIX_TAIL.len();

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChainError {
    #[error("a record must serialise to a non-empty JSON object, got {0} bytes that are not one")]
    NotAnObject(usize),
}

/// Encodes a digest as lowercase hex.
pub fn to_hex(hash: &Hash) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 64];
    for (i, byte) in hash.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// Returns the digest as a lowercase hex `String`.
pub fn hex_string(hash: &Hash) -> String {
    // `to_hex` yields only ASCII digits, so nothing is replaced here.
    String::from_utf8_lossy(&to_hex(hash)).into_owned()
}

/// Decodes 64 lowercase hex digits. Uppercase is rejected because the
/// writer never produces it, so accepting it would let a line change
/// without changing its meaning.
pub fn parse_hex(text: &[u8]) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Hashes a record given without its closing brace, the form a sealed line
/// carries, so that neither side has to copy the record.
pub fn record_hash(prev: &Hash, body_without_brace: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(to_hex(prev));
    hasher.update(body_without_brace);
    hasher.update(b"}");
    hasher.finalize().into()
}

/// Seals a serialised record in place: appends the integrity member and
/// returns the record's hash. No newline is added.
pub fn seal(prev: &Hash, record: &mut Vec<u8>) -> Result<Hash, ChainError> {
    let len = record.len();
    // `{}` has no member to put a comma after.
    if len < 3 || record[0] != b'{' || record[len - 1] != b'}' {
        return Err(ChainError::NotAnObject(len));
    }
    record.pop();
    let hash = record_hash(prev, record);
    record.reserve(SUFFIX_LEN);
    record.extend_from_slice(SUFFIX_HEAD);
    record.extend_from_slice(&to_hex(prev));
    record.extend_from_slice(SUFFIX_MIDDLE);
    record.extend_from_slice(&to_hex(&hash));
    record.extend_from_slice(SUFFIX_TAIL);
    Ok(hash)
}

/// A line split into its record and the hashes its integrity member states.
#[derive(Debug, Clone, Copy)]
pub struct SealedLine<'a> {
    /// The record without its integrity member and without its closing brace.
    pub body: &'a [u8],
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl<'a> SealedLine<'a> {
    /// Splits a line (without its newline) into record and integrity
    /// member; `None` when the line does not end in a well-formed one.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let start = line.len().checked_sub(SUFFIX_LEN)?;
        let (body, suffix) = line.split_at(start);
        let rest = suffix.strip_prefix(SUFFIX_HEAD)?;
        let (prev_hex, rest) = rest.split_at(64);
        let rest = rest.strip_prefix(SUFFIX_MIDDLE)?;
        let (hash_hex, rest) = rest.split_at(64);
        if rest != SUFFIX_TAIL || body.first() != Some(&b'{') {
            return None;
        }
        Some(SealedLine { body, prev_hash: parse_hex(prev_hex)?, hash: parse_hex(hash_hex)? })
    }

    /// True when the stated hash is the hash of the record and the stated
    /// previous hash.
    pub fn is_self_consistent(&self) -> bool {
        record_hash(&self.prev_hash, self.body) == self.hash
    }

    /// Parses the fields every chained record has. The body lacks its
    /// closing brace, so it is parsed with one appended.
    pub fn meta(&self) -> Result<RecordMeta, serde_json::Error> {
        parse_body(self.body)
    }
}

/// Parses a sealed line's body, which lacks its closing brace, as `T`.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, serde_json::Error> {
    let mut record = Vec::with_capacity(body.len() + 1);
    record.extend_from_slice(body);
    record.push(b'}');
    serde_json::from_slice(&record)
}

/// The fields of a record that the chain itself relies on.
#[derive(Debug, Deserialize)]
pub struct RecordMeta {
    pub seq: u64,
    pub kind: String,
}

/// The end of a chain: the last record's sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: Hash,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_parse_round_trips() {
        let prev = [7; 32];
        let mut line = br#"{"seq":1,"kind":"x"}"#.to_vec();
        let hash = seal(&prev, &mut line).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.starts_with(r#"{"seq":1,"kind":"x","integrity":{"prev_hash":"0707"#), "{text}");
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["integrity"]["hash"], hex_string(&hash));
        let sealed = SealedLine::parse(&line).unwrap();
        assert_eq!(sealed.prev_hash, prev);
        assert_eq!(sealed.hash, hash);
        assert!(sealed.is_self_consistent());
        assert_eq!(sealed.meta().unwrap().seq, 1);
    }

    #[test]
    fn hash_matches_sha256_of_hex_prev_and_record() {
        // The documented recipe, spelt out independently of `record_hash`.
        let record = br#"{"seq":0,"kind":"x"}"#;
        let mut input = vec![b'0'; 64];
        input.extend_from_slice(record);
        let expected: Hash = Sha256::digest(&input).into();
        let mut line = record.to_vec();
        assert_eq!(seal(&GENESIS, &mut line).unwrap(), expected);
    }

    #[test]
    fn every_changed_byte_breaks_the_line() {
        let mut line = br#"{"seq":3,"kind":"process.exec","argv":["a\"b"]}"#.to_vec();
        seal(&[1; 32], &mut line).unwrap();
        for index in 0..line.len() {
            let mut changed = line.clone();
            changed[index] ^= 0x01;
            let intact = SealedLine::parse(&changed).is_some_and(|s| s.is_self_consistent());
            assert!(!intact, "flipping byte {index} went unnoticed");
        }
    }

    #[test]
    fn seal_rejects_non_objects() {
        for bad in [&b"{}"[..], b"[1,2]", b"\"text\"", b""] {
            assert!(seal(&GENESIS, &mut bad.to_vec()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hex_rejects_uppercase_and_bad_length() {
        let hash = [0xab; 32];
        let hex = to_hex(&hash);
        assert_eq!(parse_hex(&hex), Some(hash));
        assert_eq!(parse_hex(&hex.to_ascii_uppercase()), None);
        assert_eq!(parse_hex(&hex[1..]), None);
    }
}
