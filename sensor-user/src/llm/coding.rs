//! Content codings of captured HTTP bodies: gzip and deflate, decoded with
//! a bound on the output so that a small compressed body cannot expand
//! into unbounded memory.

use std::io::Read;

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// A Content-Encoding the parser can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's `deflate` is the zlib format, but some servers send raw
    /// deflate data; both are accepted.
    Deflate,
}

/// Decoded bytes, and whether the output bound or the end of the captured
/// input cut them.
#[derive(Debug)]
pub struct Decoded {
    pub bytes: Vec<u8>,
    pub cut: bool,
}

impl Coding {
    /// Parses a Content-Encoding value. Stacked codings (`gzip, br`) and
    /// others (`br`, `zstd`) are not decoded.
    pub fn parse(value: &str) -> Option<Coding> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if value.eq_ignore_ascii_case("deflate") {
            Some(Coding::Deflate)
        } else {
            None
        }
    }

    /// Decodes `data` into at most `limit` bytes. A stream that ends early
    /// (a body cut by the capture bound) gives the bytes decoded so far,
    /// marked cut. Data that is not in the coding's format is an error.
    pub fn decode(self, data: &[u8], limit: usize) -> Result<Decoded, String> {
        match self {
            Coding::Gzip => read_bounded(GzDecoder::new(data), limit).map_err(|e| format!("invalid gzip body: {e}")),
            Coding::Deflate => read_bounded(ZlibDecoder::new(data), limit)
                .or_else(|_| read_bounded(DeflateDecoder::new(data), limit))
                .map_err(|e| format!("invalid deflate body: {e}")),
        }
    }
}

fn read_bounded(mut reader: impl Read, limit: usize) -> std::io::Result<Decoded> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(Decoded { bytes, cut: false }),
            Ok(n) => {
                let room = limit - bytes.len();
                if n > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    return Ok(Decoded { bytes, cut: true });
                }
                bytes.extend_from_slice(&chunk[..n]);
            }
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {
                return Ok(Decoded { bytes, cut: true });
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{write::GzEncoder, write::ZlibEncoder, Compression};

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_round_trip() {
        let decoded = Coding::Gzip.decode(&gzip(b"{\"model\":\"m\"}"), 1024).unwrap();
        assert_eq!(decoded.bytes, b"{\"model\":\"m\"}");
        assert!(!decoded.cut);
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(b"abc").unwrap();
        assert_eq!(Coding::Deflate.decode(&zlib.finish().unwrap(), 16).unwrap().bytes, b"abc");

        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(b"abc").unwrap();
        assert_eq!(Coding::Deflate.decode(&raw.finish().unwrap(), 16).unwrap().bytes, b"abc");
    }

    #[test]
    fn expansion_bounded() {
        // A megabyte of zeros compresses to about a kilobyte (an estimate).
        let bomb = gzip(&vec![0u8; 1 << 20]);
        let decoded = Coding::Gzip.decode(&bomb, 4096).unwrap();
        assert_eq!(decoded.bytes.len(), 4096);
        assert!(decoded.cut);
    }

    #[test]
    fn cut_stream_gives_prefix() {
        let text: Vec<u8> = (0..20_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let compressed = gzip(&text);
        let decoded = Coding::Gzip.decode(&compressed[..compressed.len() / 2], 1 << 20).unwrap();
        assert!(decoded.cut);
        assert!(!decoded.bytes.is_empty());
        assert_eq!(decoded.bytes[..], text[..decoded.bytes.len()]);
    }

    #[test]
    fn garbage_rejected() {
        let error = Coding::Gzip.decode(b"\x1f\x8b\x08\x00not really deflate", 1024).unwrap_err();
        assert!(error.starts_with("invalid gzip body"), "{error}");
        assert!(Coding::Deflate.decode(b"plain text", 1024).is_err());
    }

    #[test]
    fn coding_names() {
        assert_eq!(Coding::parse("GZIP"), Some(Coding::Gzip));
        assert_eq!(Coding::parse(" deflate "), Some(Coding::Deflate));
        assert_eq!(Coding::parse("br"), None);
        assert_eq!(Coding::parse("gzip, br"), None);
    }
}
