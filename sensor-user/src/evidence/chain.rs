//! The hash chain that links every evidence record to the one before it.
//!
//! A record is first serialised without its `integrity` member. Its hash is
//! sha256 over the previous record's hash as 64 lowercase hex digits
//! followed by those record bytes. The line written is the same bytes with
//! `,"integrity":{"prev_hash":"…","hash":"…"}` spliced in before the closing
//! brace. The suffix has a fixed length, so a verifier cuts it off, puts the
//! brace back and hashes again: no JSON canonicalisation is involved, and a
//! change to any byte of the line changes a hash.
//!
//! An OCSF record has no top-level member to spare, so its integrity member
//! goes inside its last member, the `unmapped` object ([`seal_nested`]): the
//! line then ends in one more brace, and the record is still the line
//! without `,"integrity":{…}`.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// A sha256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first record of a new chain.
pub const GENESIS: Hash = [0; 32];

const SUFFIX_HEAD: &[u8] = b",\"integrity\":{\"prev_hash\":\"";
const SUFFIX_MIDDLE: &[u8] = b"\",\"hash\":\"";
const SUFFIX_TAIL: &[u8] = b"\"}}";
const NESTED_SUFFIX_TAIL: &[u8] = b"\"}}}";

/// Length of the integrity suffix that ends every sealed line.
pub const SUFFIX_LEN: usize = SUFFIX_HEAD.len() + 64 + SUFFIX_MIDDLE.len() + 64 + SUFFIX_TAIL.len();

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChainError {
    #[error("a record must serialise to a non-empty JSON object, got {0} bytes that are not one")]
    NotAnObject(usize),
    #[error("an OCSF record must end in a non-empty object member, got {0} bytes that do not")]
    NoNestedObject(usize),
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

/// Hashes a record given without its closing braces (`closing`), the form
/// a sealed line carries, so that neither side has to copy the record.
pub fn record_hash(prev: &Hash, body_without_closing: &[u8], closing: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(to_hex(prev));
    hasher.update(body_without_closing);
    hasher.update(closing);
    hasher.finalize().into()
}

/// Seals a serialised OCSF record in place: the integrity member goes into
/// the record's last member, which must be a non-empty object (`unmapped`),
/// so the line keeps to the OCSF class's members. Returns the record's hash.
pub fn seal_nested(prev: &Hash, record: &mut Vec<u8>) -> Result<Hash, ChainError> {
    let len = record.len();
    // `{"a":{}}`: an empty last object has no member to put a comma after.
    if len < 7 || record[0] != b'{' || !record.ends_with(b"}}") || record[len - 3] == b'{' {
        return Err(ChainError::NoNestedObject(len));
    }
    record.truncate(len - 2);
    let hash = record_hash(prev, record, b"}}");
    record.reserve(SUFFIX_LEN + 1);
    record.extend_from_slice(SUFFIX_HEAD);
    record.extend_from_slice(&to_hex(prev));
    record.extend_from_slice(SUFFIX_MIDDLE);
    record.extend_from_slice(&to_hex(&hash));
    record.extend_from_slice(NESTED_SUFFIX_TAIL);
    Ok(hash)
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
    let hash = record_hash(prev, record, b"}");
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
    /// The record without its integrity member and without `closing`.
    pub body: &'a [u8],
    /// The braces that close the record after its integrity member: `}`,
    /// or `}}` when the member is nested in the last object (OCSF).
    pub closing: &'static [u8],
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl<'a> SealedLine<'a> {
    /// Splits a line (without its newline) into record and integrity
    /// member; `None` when the line does not end in a well-formed one.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        // A plain suffix ends in a hex digit and `"}}`, a nested one in
        // `"}}}`, so the two cannot be mistaken for each other.
        let (tail, closing): (&[u8], &'static [u8]) =
            if line.ends_with(NESTED_SUFFIX_TAIL) { (NESTED_SUFFIX_TAIL, b"}}") } else { (SUFFIX_TAIL, b"}") };
        let suffix_len = SUFFIX_LEN - SUFFIX_TAIL.len() + tail.len();
        let start = line.len().checked_sub(suffix_len)?;
        let (body, suffix) = line.split_at(start);
        let rest = suffix.strip_prefix(SUFFIX_HEAD)?;
        let (prev_hex, rest) = rest.split_at(64);
        let rest = rest.strip_prefix(SUFFIX_MIDDLE)?;
        let (hash_hex, rest) = rest.split_at(64);
        if rest != tail || body.first() != Some(&b'{') {
            return None;
        }
        Some(SealedLine { body, closing, prev_hash: parse_hex(prev_hex)?, hash: parse_hex(hash_hex)? })
    }

    /// True when the stated hash is the hash of the record and the stated
    /// previous hash.
    pub fn is_self_consistent(&self) -> bool {
        record_hash(&self.prev_hash, self.body, self.closing) == self.hash
    }

    /// Returns the record as hashed: the line without its integrity member.
    pub fn record(&self) -> Vec<u8> {
        let mut record = Vec::with_capacity(self.body.len() + self.closing.len());
        record.extend_from_slice(self.body);
        record.extend_from_slice(self.closing);
        record
    }

    /// Parses the record (the line without its integrity member) as `T`.
    pub fn parse_record<T: for<'de> Deserialize<'de>>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.record())
    }

    /// Parses one section of the chain's own records (`checkpoint`,
    /// `sensor`): a top-level member of a native record, or a member of an
    /// OCSF record's `unmapped`. These records are rare, so going through
    /// a `Value` costs little.
    pub fn parse_section<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, serde_json::Error> {
        let mut record: serde_json::Value = self.parse_record()?;
        let section = match record.get_mut(name) {
            Some(section) => section.take(),
            None => match record.get_mut("unmapped").and_then(|u| u.get_mut(name)) {
                Some(section) => section.take(),
                None => return Err(serde::de::Error::missing_field("checkpoint or sensor section")),
            },
        };
        serde_json::from_value(section)
    }

    /// Parses the fields every chained record has, from the top level of a
    /// native record or from `metadata` of an OCSF one.
    pub fn meta(&self) -> Result<RecordMeta, serde_json::Error> {
        let fields: MetaFields = self.parse_record()?;
        match fields {
            MetaFields { seq: Some(seq), kind: Some(kind), .. } => Ok(RecordMeta { seq, kind }),
            MetaFields { metadata: Some(OcsfMetadata { sequence, event_code }), .. } => {
                Ok(RecordMeta { seq: sequence, kind: event_code })
            }
            _ => Err(serde::de::Error::custom("the record has neither seq and kind nor metadata.sequence and event_code")),
        }
    }
}

#[derive(Deserialize)]
struct MetaFields {
    seq: Option<u64>,
    kind: Option<String>,
    metadata: Option<OcsfMetadata>,
}

#[derive(Deserialize)]
struct OcsfMetadata {
    sequence: u64,
    event_code: String,
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
    fn nested_seal_round_trips_and_breaks_on_any_byte() {
        let record = br#"{"metadata":{"sequence":4,"event_code":"x"},"unmapped":{"schema":"s"}}"#;
        let mut line = record.to_vec();
        let hash = seal_nested(&[3; 32], &mut line).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.starts_with(r#"{"metadata":{"sequence":4,"event_code":"x"},"unmapped":{"schema":"s","integrity":{"#), "{text}");
        let sealed = SealedLine::parse(&line).unwrap();
        assert_eq!(sealed.closing, b"}}");
        assert_eq!(sealed.hash, hash);
        assert_eq!(sealed.record(), record);
        assert_eq!(sealed.meta().unwrap().seq, 4);
        let mut input = hex_string(&[3; 32]).into_bytes();
        input.extend_from_slice(record);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&input)), "the hash covers the record without its seal");
        for index in 0..line.len() {
            let mut changed = line.clone();
            changed[index] ^= 0x01;
            let intact = SealedLine::parse(&changed).is_some_and(|s| s.is_self_consistent());
            assert!(!intact, "flipping byte {index} went unnoticed");
        }
    }

    #[test]
    fn nested_seal_needs_a_last_object() {
        for bad in [&br#"{"a":1}"#[..], br#"{"a":{}}"#, b"{}", b"[{}]"] {
            assert!(seal_nested(&GENESIS, &mut bad.to_vec()).is_err(), "{:?}", String::from_utf8_lossy(bad));
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
