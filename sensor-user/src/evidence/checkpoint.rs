//! Signed checkpoints: ed25519 signatures over the hash chain.
//!
//! A checkpoint record at sequence number `c` commits to the hash of record
//! `c - 1`. Because each hash covers the one before it, one valid signature
//! vouches for every record from the chain's start up to `c - 1`. The
//! signature also covers the checkpoint's own reason and time, so a count
//! checkpoint cannot be relabelled as the shutdown checkpoint that marks a
//! complete log. The signed message is the ASCII text built by [`message`],
//! so anyone can check a checkpoint with standard tools.
//!
//! Keys are stored as PEM, in the forms OpenSSL uses for ed25519 (RFC 8410):
//! a PKCS#8 `PRIVATE KEY` and a SubjectPublicKeyInfo `PUBLIC KEY`. A file of
//! exactly 32 raw bytes is accepted too, as a private seed or a public key.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::chain::{hex_string, Hash};

/// The signature algorithm named in checkpoint records.
pub const ALGORITHM: &str = "ed25519";

/// DER of a PKCS#8 v1 ed25519 private key up to the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER of an ed25519 SubjectPublicKeyInfo up to the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid key file {path}: {reason}; expected an ed25519 {key_kind} in PEM (as `agent-sensor keygen` or \
         `openssl genpkey -algorithm ed25519` writes it) or exactly 32 raw bytes"
    )]
    Format { path: PathBuf, key_kind: &'static str, reason: String },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; move it away first, because overwriting a key loses it")]
    Exists { path: PathBuf },
    #[error("reading random bytes from the kernel failed")]
    Random(#[source] std::io::Error),
    #[error("{path} is not a valid ed25519 public key (not a point on the curve)")]
    BadPoint { path: PathBuf },
}

/// Reason text for an unsigned checkpoint, stored in its `unknown` object.
pub const UNSIGNED_NO_KEY: &str = "no signing key configured: set evidence.signing_key_path";

/// The key that signs checkpoints, or the reason there is none.
pub struct Signer {
    key: Option<SigningKey>,
    key_sha256: Option<String>,
}

impl Signer {
    /// Returns a signer without a key, whose checkpoints are unsigned.
    pub fn unsigned() -> Self {
        Signer { key: None, key_sha256: None }
    }

    /// Loads the private key at `path`. Warns when other users can read it.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let metadata = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        if metadata.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "signing key {} is readable by other users (mode {:o}): run chmod 600 on it",
                path.display(),
                metadata.permissions().mode() & 0o777
            );
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?);
        let seed = decode_key(path, &bytes, "PRIVATE KEY", &PKCS8_PREFIX, "private key")?;
        let key = SigningKey::from_bytes(&seed);
        let key_sha256 = Some(public_key_sha256(&key.verifying_key()));
        Ok(Signer { key: Some(key), key_sha256 })
    }

    pub fn is_signing(&self) -> bool {
        self.key.is_some()
    }

    /// sha256 of the raw public key, in hex: names the key in records.
    pub fn key_sha256(&self) -> Option<&str> {
        self.key_sha256.as_deref()
    }

    /// Signs the checkpoint message; `None` without a key.
    pub fn sign(&self, message: &[u8]) -> Option<[u8; 64]> {
        self.key.as_ref().map(|key| key.sign(message).to_bytes())
    }
}

/// The public key a verifier checks signatures with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    pub sha256: String,
}

impl PublicKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let raw = decode_key(path, &bytes, "PUBLIC KEY", &SPKI_PREFIX, "public key")?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::BadPoint { path: path.to_owned() })?;
        Ok(PublicKey { sha256: public_key_sha256(&key), key })
    }

    /// Checks a signature over `message`. Uses strict verification, which
    /// rejects the malleable signature encodings plain verification allows.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = Signature::from_bytes(signature);
        self.key.verify_strict(message, &signature).is_ok()
    }
}

fn public_key_sha256(key: &VerifyingKey) -> String {
    hex_string(&Sha256::digest(key.as_bytes()).into())
}

const SIGNATURE_KEY: &[u8] = b"\"signature\":\"";
const SIGNATURE_HEX_LEN: usize = 128;

/// Signs a serialised checkpoint record in place. The record was written
/// with 128 zeros as its signature; the signature covers exactly those
/// bytes and then replaces the zeros. Returns false without a key or
/// without the placeholder.
pub fn sign_record(record: &mut [u8], signer: &Signer) -> bool {
    let Some(start) = signature_position(record) else { return false };
    let Some(signature) = signer.sign(record) else { return false };
    let hex = hex_encode(&signature);
    record[start..start + SIGNATURE_HEX_LEN].copy_from_slice(hex.as_bytes());
    true
}

/// Splits a signed checkpoint record into the message its signature covers
/// and the signature. The message is the record with 128 zeros in place of
/// the signature. Returns `None` unless the record has exactly one
/// signature member.
pub fn signed_message(record: &[u8]) -> Option<(Vec<u8>, [u8; 64])> {
    let start = signature_position(record)?;
    let hex = std::str::from_utf8(&record[start..start + SIGNATURE_HEX_LEN]).ok()?;
    let signature = hex_decode_64(hex)?;
    let mut message = record.to_vec();
    message[start..start + SIGNATURE_HEX_LEN].fill(b'0');
    Some((message, signature))
}

/// Finds the offset of the signature's hex digits: exactly one
/// `"signature":"` followed by 128 characters and a quote.
fn signature_position(record: &[u8]) -> Option<usize> {
    let mut found = None;
    for (index, window) in record.windows(SIGNATURE_KEY.len()).enumerate() {
        if window == SIGNATURE_KEY {
            if found.is_some() {
                return None;
            }
            found = Some(index + SIGNATURE_KEY.len());
        }
    }
    let start = found?;
    (record.get(start + SIGNATURE_HEX_LEN) == Some(&b'"')).then_some(start)
}

/// The event that triggered a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `evidence.checkpoint_every_records` records since the last one.
    Count,
    /// `evidence.checkpoint_interval_secs` passed with records uncovered.
    Interval,
    /// The last record of a file before it is rotated.
    Rotation,
    /// The last record of a run that stopped cleanly.
    Shutdown,
}

/// The `checkpoint` section of an `evidence.checkpoint` record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointView {
    pub reason: Reason,
    /// First record newly covered: the previous checkpoint, or the chain's
    /// first record.
    pub from_seq: u64,
    /// Last record covered: the one just before this checkpoint.
    pub to_seq: u64,
    /// Hash of record `to_seq`, hex.
    pub hash: String,
    pub algorithm: String,
    pub public_key_sha256: Option<String>,
    /// 64-byte ed25519 signature over the record itself, hex: see
    /// [`sign_record`].
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub unknown: std::collections::BTreeMap<String, String>,
}

impl CheckpointView {
    /// Builds the section with a placeholder signature for
    /// [`sign_record`] to replace, or none without a key.
    pub fn new(reason: Reason, from_seq: u64, to_seq: u64, hash: &Hash, signer: &Signer) -> Self {
        let signature = signer.is_signing().then(|| "0".repeat(SIGNATURE_HEX_LEN));
        let mut unknown = std::collections::BTreeMap::new();
        if signature.is_none() {
            unknown.insert("signature".to_owned(), UNSIGNED_NO_KEY.to_owned());
        }
        CheckpointView {
            reason,
            from_seq,
            to_seq,
            hash: hex_string(hash),
            algorithm: ALGORITHM.to_owned(),
            public_key_sha256: signer.key_sha256().map(str::to_owned),
            signature,
            unknown,
        }
    }
}

/// Writes a new key pair: the private key 0600, the public key 0644. Never
/// overwrites an existing file.
pub fn keygen(private: &Path, public: &Path) -> Result<String, KeyError> {
    for path in [private, public] {
        if path.exists() {
            return Err(KeyError::Exists { path: path.to_owned() });
        }
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    fill_random(seed.as_mut())?;
    let key = SigningKey::from_bytes(&seed);
    let mut der = Zeroizing::new(PKCS8_PREFIX.to_vec());
    der.extend_from_slice(key.as_bytes());
    let private_pem = Zeroizing::new(pem("PRIVATE KEY", &der));
    write_new(private, private_pem.as_bytes(), 0o600)?;
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(key.verifying_key().as_bytes());
    write_new(public, pem("PUBLIC KEY", &spki).as_bytes(), 0o644)?;
    Ok(public_key_sha256(&key.verifying_key()))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let error = |source| KeyError::Write { path: path.to_owned(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)
}

fn fill_random(buffer: &mut [u8]) -> Result<(), KeyError> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(KeyError::Random(error));
        }
        filled += n as usize;
    }
    Ok(())
}

/// Extracts the 32 key bytes from PEM with the given label and DER prefix,
/// or from a raw 32-byte file.
fn decode_key(
    path: &Path,
    bytes: &[u8],
    label: &str,
    prefix: &[u8],
    key_kind: &'static str,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let invalid = |reason: String| KeyError::Format { path: path.to_owned(), key_kind, reason };
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
        return Ok(out);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("neither PEM text nor 32 bytes".to_owned()))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| invalid(format!("no `{begin}` line")))? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(|| invalid(format!("no `{end}` line")))? + start;
    let body: String = text[start..stop].split_whitespace().collect();
    let der = Zeroizing::new(base64_decode(&body).ok_or_else(|| invalid("the PEM body is not valid base64".to_owned()))?);
    match der.strip_prefix(prefix) {
        Some(key) if key.len() == 32 => {
            out.copy_from_slice(key);
            Ok(out)
        }
        _ => Err(invalid(format!("not an ed25519 {key_kind} of the RFC 8410 form ({} DER bytes)", der.len()))),
    }
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode_64(text: &str) -> Option<[u8; 64]> {
    let bytes = text.as_bytes();
    if bytes.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        // from_str_radix accepts a leading `+`, which is not a hex digit.
        if !pair.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return None;
        }
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| BASE64.iter().position(|&d| d == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index == bytes.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - padding] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * padding as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_pem(seed: [u8; 32]) -> String {
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        pem("PRIVATE KEY", &der)
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agent-sensor-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn base64_round_trips() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let encoded = base64_encode(&data);
            assert_eq!(base64_decode(&encoded).as_deref(), Some(&data[..]), "{encoded}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm=8"), None);
        assert_eq!(base64_decode("Zm8"), None);
    }

    #[test]
    fn keygen_writes_private_0600_and_signs() {
        let dir = scratch("gen");
        let (private, public) = (dir.join("key"), dir.join("key.pub"));
        let id = keygen(&private, &public).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let signer = Signer::load(&private).unwrap();
        let verifier = PublicKey::load(&public).unwrap();
        assert_eq!(signer.key_sha256(), Some(id.as_str()));
        assert_eq!(verifier.sha256, id);
        let view = CheckpointView::new(Reason::Count, 0, 9, &[3; 32], &signer);
        let mut record = serde_json::to_vec(&serde_json::json!({ "seq": 10, "checkpoint": view })).unwrap();
        assert!(sign_record(&mut record, &signer));
        let (message, signature) = signed_message(&record).unwrap();
        assert!(verifier.verify(&message, &signature));
        for index in 0..message.len() {
            let mut changed = message.clone();
            changed[index] ^= 1;
            assert!(!verifier.verify(&changed, &signature), "byte {index} is not covered");
        }
        let twice = [&record[..], &record[..]].concat();
        assert!(signed_message(&twice).is_none(), "two signature members are ambiguous");
        assert!(matches!(keygen(&private, &dir.join("other.pub")), Err(KeyError::Exists { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn openssl_pem_layout_is_accepted() {
        // The PKCS#8 layout of RFC 8410 section 10.3, with its example seed.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let dir = scratch("pem");
        let path = dir.join("key");
        std::fs::write(&path, pem).unwrap();
        let signer = Signer::load(&path).unwrap();
        assert!(signer.is_signing());
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let error = Signer::load(&path).err().unwrap().to_string();
        assert!(error.contains("RFC 8410"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn raw_seed_file_matches_pem() {
        let dir = scratch("raw");
        let (raw, pem_path) = (dir.join("raw"), dir.join("pem"));
        std::fs::write(&raw, [9u8; 32]).unwrap();
        std::fs::write(&pem_path, private_pem([9; 32])).unwrap();
        let a = Signer::load(&raw).unwrap();
        let b = Signer::load(&pem_path).unwrap();
        assert_eq!(a.key_sha256(), b.key_sha256());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn signature_hex_round_trips() {
        let bytes = [0x5a; 64];
        assert_eq!(hex_decode_64(&hex_encode(&bytes)), Some(bytes));
        assert_eq!(hex_decode_64(&"+a".repeat(64)), None);
    }
}
