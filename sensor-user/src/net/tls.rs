//! TLS ClientHello metadata from the first bytes written on a connection:
//! server name (SNI), ALPN protocols, and whether Encrypted ClientHello is
//! offered. Parsing uses the `tls-parser` crate; this file only reassembles
//! a hello split across writes and decides when it is complete.

use serde::Serialize;
use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, TlsExtension, TlsMessage, TlsMessageHandshake,
};

/// Extension type of Encrypted ClientHello (draft-ietf-tls-esni, 0xfe0d).
const ECH_EXTENSION: u16 = 0xfe0d;
/// A TLS record's header: content type, version, length.
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 0x16;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientHello {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ech: bool,
    /// The hello arrived in more than one write.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reassembled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HelloParse {
    Complete(ClientHello),
    /// A TLS handshake record whose end has not been seen yet.
    NeedMore,
    /// The bytes are not a TLS handshake record.
    NotTls,
    /// A handshake record that did not parse as a ClientHello.
    Malformed(String),
}

/// Returns whether `bytes` start like a TLS handshake record.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == CONTENT_HANDSHAKE && bytes[1] == 3 && bytes[2] <= 4
}

/// Parses a ClientHello from the start of a connection's byte stream.
pub fn parse_client_hello(bytes: &[u8]) -> HelloParse {
    if bytes.len() < RECORD_HEADER {
        return if bytes.is_empty() || bytes[0] == CONTENT_HANDSHAKE { HelloParse::NeedMore } else { HelloParse::NotTls };
    }
    if !looks_like_tls(bytes) {
        return HelloParse::NotTls;
    }
    let record_len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    if bytes.len() < RECORD_HEADER + record_len {
        return HelloParse::NeedMore;
    }
    let record = &bytes[..RECORD_HEADER + record_len];
    let plaintext = match parse_tls_plaintext(record) {
        Ok((_, plaintext)) => plaintext,
        // A hello fragmented over several records parses as incomplete.
        Err(tls_parser::nom::Err::Incomplete(_)) => return HelloParse::NeedMore,
        Err(error) => return HelloParse::Malformed(format!("{error:?}")),
    };
    for message in plaintext.msg {
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = message else { continue };
        let mut result = ClientHello::default();
        let Some(extensions) = hello.ext else { return HelloParse::Complete(result) };
        let extensions = match parse_tls_extensions(extensions) {
            Ok((_, extensions)) => extensions,
            Err(error) => return HelloParse::Malformed(format!("extensions: {error:?}")),
        };
        for extension in extensions {
            match extension {
                TlsExtension::SNI(names) => {
                    result.sni = names.first().map(|(_, name)| String::from_utf8_lossy(name).into_owned());
                }
                TlsExtension::ALPN(protocols) => {
                    result.alpn = protocols.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
                }
                TlsExtension::Unknown(kind, _) if kind.0 == ECH_EXTENSION => result.ech = true,
                _ => {}
            }
        }
        return HelloParse::Complete(result);
    }
    HelloParse::Malformed("handshake record holds no ClientHello".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal TLS 1.2-framed ClientHello with the given SNI, ALPN
    /// and optionally an ECH extension.
    pub(crate) fn client_hello(sni: &str, alpn: &[&str], ech: bool) -> Vec<u8> {
        let mut extensions = Vec::new();
        let name = sni.as_bytes();
        let mut sni_ext = Vec::new();
        sni_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name);
        extensions.extend_from_slice(&0u16.to_be_bytes());
        extensions.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        extensions.extend_from_slice(&sni_ext);
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for protocol in alpn {
                list.push(protocol.len() as u8);
                list.extend_from_slice(protocol.as_bytes());
            }
            extensions.extend_from_slice(&16u16.to_be_bytes());
            extensions.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
            extensions.extend_from_slice(&(list.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&list);
        }
        if ech {
            extensions.extend_from_slice(&ECH_EXTENSION.to_be_bytes());
            extensions.extend_from_slice(&4u16.to_be_bytes());
            extensions.extend_from_slice(&[0, 1, 2, 3]);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&[3, 3]);
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(&[0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![CONTENT_HANDSHAKE, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn hello_with_sni_alpn_ech() {
        let bytes = client_hello("api.openai.com", &["h2", "http/1.1"], true);
        let HelloParse::Complete(hello) = parse_client_hello(&bytes) else { panic!("not parsed") };
        assert_eq!(hello.sni.as_deref(), Some("api.openai.com"));
        assert_eq!(hello.alpn, vec!["h2", "http/1.1"]);
        assert!(hello.ech);
    }

    #[test]
    fn split_hello_needs_more() {
        let bytes = client_hello("api.anthropic.com", &[], false);
        for cut in 0..bytes.len() {
            assert_eq!(parse_client_hello(&bytes[..cut]), HelloParse::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn http_is_not_tls() {
        assert_eq!(parse_client_hello(b"POST /api/chat HTTP/1.1\r\n"), HelloParse::NotTls);
    }

    #[test]
    fn garbage_never_panics() {
        let mut bytes = client_hello("x.example", &["h2"], false);
        for i in 5..bytes.len() {
            let original = bytes[i];
            bytes[i] = 0xff;
            let _ = parse_client_hello(&bytes);
            bytes[i] = original;
        }
    }
}
