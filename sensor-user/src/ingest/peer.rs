//! The process behind a loopback TCP client, for attributing OTLP requests.
//!
//! TCP has no `SO_PEERCRED`. The client's socket is found instead in
//! `/proc/net/tcp` (or `tcp6`): the line whose local address is the
//! client's address and port and whose remote address is the receiver's
//! gives the socket's inode. The owner is the process with a
//! `/proc/PID/fd` link to `socket:[INODE]`. The pid the telemetry claims
//! (`process.pid`) is checked first, at the cost of one directory read.
//! Only when that fails are other processes searched, up to a bound.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    path::Path,
};

/// Formats an address and port the way `/proc/net/tcp{,6}` prints them:
/// each 32-bit word of the address in host byte order, in hex.
fn proc_net_address(address: &SocketAddr) -> String {
    match address.ip() {
        IpAddr::V4(ip) => format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), address.port()),
        IpAddr::V6(ip) => {
            let octets = ip.octets();
            let mut text = String::with_capacity(38);
            for chunk in octets.chunks_exact(4) {
                text.push_str(&format!("{:08X}", u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])));
            }
            text.push_str(&format!(":{:04X}", address.port()));
            text
        }
    }
}

/// Finds the inode of the client socket of the connection `peer` to
/// `local`, as seen from the client's side.
pub fn socket_inode(procfs: &Path, peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let table = if peer.is_ipv4() { "tcp" } else { "tcp6" };
    let file = std::fs::File::open(procfs.join("net").join(table)).ok()?;
    let want_local = proc_net_address(&peer);
    let want_remote = proc_net_address(&local);
    for line in BufReader::new(file).lines().skip(1) {
        let line = line.ok()?;
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local_field), Some(remote_field)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if local_field == want_local && remote_field == want_remote {
            // Fields after the addresses: st, tx:rx queues, tr:when,
            // retransmits, uid, timeout, inode.
            return fields.nth(6).and_then(|inode| inode.parse().ok()).filter(|inode| *inode != 0);
        }
    }
    None
}

/// Returns whether process `pid` has `socket:[inode]` open.
fn owns(procfs: &Path, pid: u32, target: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(procfs.join(pid.to_string()).join("fd")) else { return false };
    entries.flatten().any(|entry| std::fs::read_link(entry.path()).is_ok_and(|link| link.as_os_str() == target))
}

/// Finds the process that owns socket `inode`: the claimed pids first,
/// then at most `max_processes` others. Returns `None` when none does.
pub fn owner(procfs: &Path, inode: u64, claimed: &[u32], max_processes: usize) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    if let Some(pid) = claimed.iter().copied().find(|pid| owns(procfs, *pid, &target)) {
        return Some(pid);
    }
    let own = std::process::id();
    std::fs::read_dir(procfs)
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own && !claimed.contains(pid))
        .take(max_processes)
        .find(|pid| owns(procfs, *pid, &target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_format_matches_kernel() {
        // 127.0.0.1:4318 as the kernel prints it on a little-endian host.
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_address(&"127.0.0.1:4318".parse().unwrap()), "0100007F:10DE");
            assert_eq!(proc_net_address(&"[::1]:80".parse().unwrap()), "00000000000000000000000001000000:0050");
        }
    }

    #[test]
    fn own_connection_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let procfs = Path::new("/proc");
        let Some(inode) = socket_inode(procfs, peer, listener.local_addr().unwrap()) else {
            eprintln!("skipped: /proc/net/tcp does not show this connection (another network namespace)");
            return;
        };
        let me = std::process::id();
        assert_eq!(owner(procfs, inode, &[me], 0), Some(me));
        assert_eq!(owner(procfs, inode, &[1], 0), None, "pid 1 does not own the socket and no scan was allowed");
        drop(client);
    }
}
