//! Credential fingerprints and content hashes.
//!
//! A credential is reduced to a keyed HMAC at the moment its header is
//! parsed, so only the fingerprint outlives the parse. The same secret gives
//! the same fingerprint for as long as the sensor keeps its key. Without the
//! key, a fingerprint cannot be tested against guessed secrets.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::Credential;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC output kept in a fingerprint: enough to tell a host's
/// credentials apart.
const FINGERPRINT_BYTES: usize = 16;

/// A keyed HMAC-SHA256 for credential fingerprints.
#[derive(Clone)]
pub(super) struct Fingerprinter {
    mac: HmacSha256,
}

impl Fingerprinter {
    pub(super) fn new(key: &[u8; 32]) -> Self {
        // HMAC (RFC 2104) takes keys of any length: `new_from_slice` in the
        // hmac 0.12 crate never returns an error for it.
        let mac = HmacSha256::new_from_slice(key).expect("HMAC-SHA256 accepts a 32-byte key");
        Fingerprinter { mac }
    }

    /// Returns the hex HMAC of `secret`, cut to 16 bytes.
    pub(super) fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        hex(&digest[..FINGERPRINT_BYTES])
    }

    /// Finds the credential a request carries and fingerprints it.
    ///
    /// Headers are tried in this order: `Authorization: Bearer`,
    /// `x-api-key` (Anthropic), `x-goog-api-key` (Gemini), `api-key` (Azure
    /// OpenAI), then a `key` parameter in the query string (Gemini).
    /// Other `Authorization` schemes are ignored: AWS SigV4 puts a
    /// per-request signature there, which would give every request its own
    /// fingerprint.
    pub(super) fn credential(&self, headers: &[httparse::Header<'_>], query: Option<&[u8]>) -> Option<Credential> {
        if let Some(token) = header(headers, "authorization").and_then(bearer_token) {
            return Some(self.credential_of("authorization_bearer", token));
        }
        for (name, kind) in [("x-api-key", "x-api-key"), ("x-goog-api-key", "x-goog-api-key"), ("api-key", "api-key")] {
            if let Some(value) = header(headers, name).map(trim).filter(|value| !value.is_empty()) {
                return Some(self.credential_of(kind, value));
            }
        }
        let key =
            query?.split(|&byte| byte == b'&').find_map(|pair| pair.strip_prefix(b"key=")).filter(|value| !value.is_empty())?;
        Some(self.credential_of("query_key", key))
    }

    fn credential_of(&self, kind: &'static str, secret: &[u8]) -> Credential {
        Credential { kind, fingerprint: self.fingerprint(secret) }
    }
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|header| header.name.eq_ignore_ascii_case(name)).map(|header| header.value)
}

/// Returns the token of a `Bearer` credential, whose scheme name is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first().is_some_and(|byte| *byte == b' ' || *byte == b'\t') {
        return None;
    }
    Some(trim(rest)).filter(|token| !token.is_empty())
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|byte| !byte.is_ascii_whitespace()).unwrap_or(value.len());
    let end = value.iter().rposition(|byte| !byte.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &value[start..end.max(start)]
}

/// Returns the lowercase hex SHA-256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Returns the lowercase hex of a finished incremental hash.
pub(super) fn finish_hex(hasher: Sha256) -> String {
    hex(&hasher.finalize())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &[(&'a str, &'a [u8])]) -> Vec<httparse::Header<'a>> {
        pairs.iter().map(|(name, value)| httparse::Header { name, value }).collect()
    }

    #[test]
    fn fingerprint_is_keyed() {
        let a = Fingerprinter::new(&[1; 32]);
        let b = Fingerprinter::new(&[2; 32]);
        assert_eq!(a.fingerprint(b"sk-one"), a.fingerprint(b"sk-one"));
        assert_ne!(a.fingerprint(b"sk-one"), a.fingerprint(b"sk-two"));
        assert_ne!(a.fingerprint(b"sk-one"), b.fingerprint(b"sk-one"));
        assert_eq!(a.fingerprint(b"sk-one").len(), 32);
    }

    #[test]
    fn credential_kinds() {
        let fingerprinter = Fingerprinter::new(&[7; 32]);
        let expected = fingerprinter.fingerprint(b"secret-value");
        type Case<'a> = (&'a [(&'a str, &'a [u8])], Option<&'a [u8]>, &'a str);
        let cases: [Case<'_>; 6] = [
            (&[("Authorization", b"Bearer secret-value")], None, "authorization_bearer"),
            (&[("authorization", b"  bearer \tsecret-value ")], None, "authorization_bearer"),
            (&[("X-Api-Key", b"secret-value")], None, "x-api-key"),
            (&[("x-goog-api-key", b"secret-value")], None, "x-goog-api-key"),
            (&[("api-key", b"secret-value")], None, "api-key"),
            (&[("Host", b"example")], Some(b"alt=sse&key=secret-value"), "query_key"),
        ];
        for (pairs, query, kind) in cases {
            let credential = fingerprinter.credential(&headers(pairs), query);
            assert_eq!(credential, Some(Credential { kind, fingerprint: expected.clone() }), "{kind}");
        }
    }

    #[test]
    fn no_credential() {
        let fingerprinter = Fingerprinter::new(&[7; 32]);
        let pairs: [(&str, &[u8]); 2] = [("Authorization", b"Basic dXNlcjpwYXNz"), ("x-api-key", b"  ")];
        assert_eq!(fingerprinter.credential(&headers(&pairs), Some(b"monkey=1&key=")), None);
        assert_eq!(fingerprinter.credential(&headers(&[("authorization", b"Bearer")]), None), None);
        assert_eq!(fingerprinter.credential(&headers(&[("authorization", b"Bearerx token")]), None), None);
    }

    #[test]
    fn trim_edges() {
        assert_eq!(trim(b""), b"");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim(b" a b "), b"a b");
    }
}
