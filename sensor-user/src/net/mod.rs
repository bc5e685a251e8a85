//! Pipeline stage 4: network events in, destinations and outcomes out.
//!
//! Parses the socket addresses copied at `connect`, names errno results, and
//! keeps the connects whose TCP handshake was still running when the syscall
//! returned, so the later outcome record can repeat their destination. A
//! pending connect whose outcome never arrives is reported as unknown after a
//! timeout rather than dropped.

pub mod catalog;
pub mod dns;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sensor_common::{AF_INET, AF_INET6};
use serde::Serialize;

use crate::idmap::IdMap;

/// A destination as passed to `connect`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    /// `ipv4` or `ipv6`: the socket's family, which for an IPv4-mapped IPv6
    /// address is `ipv6` while the peer is an IPv4 host.
    pub family: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub v4_mapped: bool,
}

/// Parses a `sockaddr_in` or `sockaddr_in6` in the kernel's byte layout.
pub fn parse_sockaddr(family: u16, bytes: &[u8]) -> Option<Endpoint> {
    match family {
        AF_INET if bytes.len() >= 8 => {
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let address = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Some(Endpoint { address: IpAddr::V4(address), port, family: "ipv4", v4_mapped: false })
        }
        AF_INET6 if bytes.len() >= 24 => {
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
            let address = Ipv6Addr::from(octets);
            let v4_mapped = address.to_ipv4_mapped().is_some();
            Some(Endpoint { address: IpAddr::V6(address), port, family: "ipv6", v4_mapped })
        }
        _ => None,
    }
}

/// Returns the transport for a socket type, `unknown` when unreadable.
pub fn protocol_name(sock_type: u16) -> &'static str {
    match sock_type {
        1 => "tcp",
        2 => "udp",
        3 => "raw",
        5 => "seqpacket",
        _ => "unknown",
    }
}

/// Returns the symbolic name of an errno value seen from connect.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        9 => "EBADF",
        11 => "EAGAIN",
        13 => "EACCES",
        22 => "EINVAL",
        88 => "ENOTSOCK",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        106 => "EISCONN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        114 => "EALREADY",
        115 => "EINPROGRESS",
        // Kernel-internal restart codes (ERESTARTSYS and its kin) that a
        // syscall exit tracepoint sees when a signal interrupts the call:
        // the process sees EINTR, or the call restarts under SA_RESTART.
        512..=516 => "EINTR",
        _ => "unknown_errno",
    }
}

/// Describes a syscall or handshake result: `ok` or the errno's name.
pub fn result_name(result: i32) -> &'static str {
    if result == 0 { "ok" } else { errno_name(-result) }
}

/// Returns the errno the process saw for a result: kernel-internal restart
/// codes become EINTR (4).
pub fn user_errno(result: i32) -> i32 {
    match -result {
        512..=516 => 4,
        errno => errno,
    }
}

/// A connect whose handshake outcome is still to come.
#[derive(Debug, Clone)]
pub struct PendingConnect {
    /// The connect syscall's own return value, a negative errno.
    pub syscall_result: i32,
    pub pid: u32,
    pub start_time_ns: u64,
    pub destination: Option<Endpoint>,
    pub protocol: &'static str,
    pub since_ns: u64,
}

/// Connects waiting for their handshake outcome, bounded in size.
#[derive(Debug, Default)]
pub struct PendingConnects {
    by_id: IdMap<(u32, u64), PendingConnect>,
}

/// Upper bound on pending connects kept; the oldest are reported unknown.
const MAX_PENDING: usize = 16384;

impl PendingConnects {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn insert(&mut self, connect_id: u64, pending: PendingConnect) -> Vec<PendingConnect> {
        let mut evicted = Vec::new();
        if self.by_id.len() >= MAX_PENDING {
            evicted = self.expire(u64::MAX);
        }
        self.by_id.insert((pending.pid, connect_id), pending);
        evicted
    }

    pub fn take(&mut self, pid: u32, connect_id: u64) -> Option<PendingConnect> {
        self.by_id.remove(&(pid, connect_id))
    }

    /// Removes and returns the connects pending since before `before_ns`.
    pub fn expire(&mut self, before_ns: u64) -> Vec<PendingConnect> {
        let expired: Vec<_> =
            self.by_id.iter().filter(|(_, p)| p.since_ns < before_ns).map(|(k, _)| *k).collect();
        expired.into_iter().filter_map(|k| self.by_id.remove(&k)).collect()
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_sockaddr() {
        let bytes = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let endpoint = parse_sockaddr(AF_INET, &bytes).unwrap();
        assert_eq!(endpoint.address.to_string(), "127.0.0.1");
        assert_eq!(endpoint.port, 8080);
        assert_eq!(endpoint.family, "ipv4");
    }

    #[test]
    fn ipv6_and_mapped_sockaddr() {
        let mut bytes = [0u8; 28];
        bytes[0] = 10;
        bytes[2..4].copy_from_slice(&443u16.to_be_bytes());
        bytes[23] = 1;
        let endpoint = parse_sockaddr(AF_INET6, &bytes).unwrap();
        assert_eq!(endpoint.address.to_string(), "::1");
        assert!(!endpoint.v4_mapped);

        bytes[8..24].copy_from_slice(&Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets());
        let endpoint = parse_sockaddr(AF_INET6, &bytes).unwrap();
        assert_eq!(endpoint.address.to_string(), "::ffff:127.0.0.1");
        assert!(endpoint.v4_mapped);
    }

    #[test]
    fn short_or_foreign_sockaddr_rejected() {
        assert_eq!(parse_sockaddr(AF_INET6, &[10, 0, 1, 1]), None);
        assert_eq!(parse_sockaddr(1, &[1, 0, b'/', b'x']), None);
    }

    #[test]
    fn result_names() {
        assert_eq!(result_name(0), "ok");
        assert_eq!(result_name(-111), "ECONNREFUSED");
        assert_eq!(result_name(-115), "EINPROGRESS");
        assert_eq!(result_name(-4095), "unknown_errno");
    }

    #[test]
    fn pending_expiry() {
        let mut pending = PendingConnects::default();
        let entry = |since_ns| PendingConnect { syscall_result: -115, pid: 1, start_time_ns: 0, destination: None, protocol: "tcp", since_ns };
        pending.insert(10, entry(100));
        pending.insert(11, entry(300));
        assert_eq!(pending.expire(200).len(), 1);
        assert!(pending.take(1, 11).is_some());
        assert!(pending.take(1, 10).is_none(), "expired entries are gone");
    }
}
