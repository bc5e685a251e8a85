//! DNS messages copied from port 53 sockets: the question name and the
//! addresses in the answer, so later connections to those addresses can be
//! named. Only what attribution needs is decoded (A, AAAA and CNAME).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
/// Compression pointers followed per name before giving up, against loops.
const MAX_POINTERS: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct DnsMessage {
    pub id: u16,
    pub is_response: bool,
    pub rcode: u8,
    pub question: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub cnames: Vec<String>,
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Reads a possibly compressed name; returns it and the offset after it.
fn read_name(message: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *message.get(at)? as usize;
        if len == 0 {
            end.get_or_insert(at + 1);
            break;
        }
        if len & 0xc0 == 0xc0 {
            pointers += 1;
            if pointers > MAX_POINTERS {
                return None;
            }
            let target = (read_u16(message, at)? & 0x3fff) as usize;
            end.get_or_insert(at + 2);
            at = target;
            continue;
        }
        let label = message.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    Some((labels.join("."), end?))
}

/// Parses a DNS message over UDP; `None` for anything malformed.
pub fn parse(message: &[u8]) -> Option<DnsMessage> {
    let id = read_u16(message, 0)?;
    let flags = read_u16(message, 2)?;
    let questions = read_u16(message, 4)?;
    let answers = read_u16(message, 6)?;
    let mut at = 12;
    let mut question = None;
    for _ in 0..questions {
        let (name, next) = read_name(message, at)?;
        question.get_or_insert(name);
        at = next + 4;
    }
    let mut result = DnsMessage {
        id,
        is_response: flags & 0x8000 != 0,
        rcode: (flags & 0xf) as u8,
        question,
        addresses: Vec::new(),
        cnames: Vec::new(),
    };
    for _ in 0..answers {
        let (_, next) = read_name(message, at)?;
        let kind = read_u16(message, next)?;
        let len = read_u16(message, next + 8)? as usize;
        let data_at = next + 10;
        let data = message.get(data_at..data_at + len)?;
        match (kind, len) {
            (TYPE_A, 4) => result.addresses.push(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]))),
            (TYPE_AAAA, 16) => {
                let octets: [u8; 16] = data.try_into().ok()?;
                result.addresses.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            (TYPE_CNAME, _) => {
                if let Some((name, _)) = read_name(message, data_at) {
                    result.cnames.push(name);
                }
            }
            _ => {}
        }
        at = data_at + len;
    }
    Some(result)
}

/// Names learnt from DNS answers, by address, bounded in size.
///
/// Names by network namespace and address. Namespaces are kept apart because
/// the same private address can belong to different services in two pods.
/// Namespace 0 stands for "unknown" on kernels whose BTF lacks the fields,
/// where every process shares one cache.
#[derive(Debug, Default)]
pub struct DnsCache {
    names: HashMap<(u32, IpAddr), (String, u64)>,
}

const MAX_NAMES: usize = 65536;

impl DnsCache {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn insert(&mut self, netns: u32, address: IpAddr, name: String, time_ns: u64) {
        let key = (netns, address);
        if self.names.len() >= MAX_NAMES && !self.names.contains_key(&key) {
            let oldest = self.names.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.names.remove(&oldest);
            }
        }
        self.names.insert(key, (name, time_ns));
    }

    pub fn name_of(&self, netns: u32, address: &IpAddr) -> Option<&str> {
        let mapped = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.names
            .get(&(netns, *address))
            .or_else(|| mapped.and_then(|v4| self.names.get(&(netns, v4))))
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        for label in ["api", "openai", "com"] {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        // CNAME pointing at a compressed name, then an A record.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 16]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 9]);
        m
    }

    #[test]
    fn answer_with_cname_and_a() {
        let message = parse(&answer()).unwrap();
        assert!(message.is_response);
        assert_eq!(message.question.as_deref(), Some("api.openai.com"));
        assert_eq!(message.addresses, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))]);
        assert_eq!(message.cnames, vec!["openai.com"]);
    }

    #[test]
    fn truncated_and_looping_messages_rejected() {
        let bytes = answer();
        for cut in 0..bytes.len() - 1 {
            let _ = parse(&bytes[..cut]);
        }
        let looping = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(parse(&looping), None);
    }

    #[test]
    fn cache_finds_v4_mapped() {
        let mut cache = DnsCache::default();
        cache.insert(7, "127.0.0.9".parse().unwrap(), "api.openai.com".into(), 1);
        assert_eq!(cache.name_of(7, &"::ffff:127.0.0.9".parse().unwrap()), Some("api.openai.com"));
        assert_eq!(cache.name_of(8, &"127.0.0.9".parse().unwrap()), None, "another network namespace");
    }
}
