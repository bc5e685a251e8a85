//! Attaches the TLS plaintext probes to every OpenSSL-compatible library or
//! executable that processes map, found through `/proc/PID/maps`.
//!
//! Uprobes attach to an inode, so one attachment covers every process that
//! maps the same file, now or later. Paths are opened through
//! `/proc/PID/root`, so a library inside a container's mount namespace is
//! hooked at its own inode. Files are checked once per device and inode.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};

use super::error_chain;

use crate::idmap::{IdMap, IdSet};

/// (program, symbol) pairs attached for each hooked file.
const ATTACHMENTS: &[(&str, &str)] = &[
    ("ssl_call_enter", "SSL_write"),
    ("ssl_call_enter", "SSL_read"),
    ("ssl_call_ex_enter", "SSL_write_ex"),
    ("ssl_call_ex_enter", "SSL_read_ex"),
    ("ssl_write_exit", "SSL_write"),
    ("ssl_write_exit", "SSL_write_ex"),
    ("ssl_read_exit", "SSL_read"),
    ("ssl_read_exit", "SSL_read_ex"),
];

type FileId = (u64, u64);

/// Outcome of checking one mapped file, for records and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hooked {
    pub path: String,
    pub inode: u64,
    pub symbols: Vec<&'static str>,
    /// Entry points whose calls are caught at the function they forward to
    /// (see [`Redirect`]), with that function's file offset.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probed_at_callee: Vec<CalleeProbe>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// Exported functions whose calls are caught at the internal function they
/// all call, and where that function is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CalleeProbe {
    pub symbols: Vec<&'static str>,
    pub file_offset: u64,
}

#[derive(Default)]
pub struct UprobeManager {
    procfs: PathBuf,
    hooked: IdSet<FileId>,
    /// Files checked and found without OpenSSL symbols, or failed.
    skipped: IdSet<FileId>,
    /// Whether each scanned process maps a hooked file, by pid.
    processes: IdMap<u32, bool>,
    enabled: bool,
    /// The reason plaintext is unavailable when `enabled` is false.
    off_reason: &'static str,
}

impl UprobeManager {
    /// Creates the manager. `loaded` is whether the uprobe programs loaded,
    /// and `capture_plaintext` is the `probes.tls_plaintext` setting.
    pub fn new(procfs: PathBuf, loaded: bool, capture_plaintext: bool) -> Self {
        let off_reason = if !capture_plaintext {
            "TLS plaintext capture is off (probes.tls_plaintext = false)"
        } else {
            "TLS plaintext probes are unavailable on this host (see sensor.degraded)"
        };
        Self { procfs, enabled: loaded && capture_plaintext, off_reason, ..Default::default() }
    }

    /// Checks every file `pid` maps and hooks the OpenSSL-compatible ones;
    /// returns the files newly hooked.
    pub fn scan_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> Vec<Hooked> {
        let mut new = Vec::new();
        if !self.enabled {
            return new;
        }
        let root = self.procfs.join(pid.to_string()).join("root");
        let maps = match std::fs::read_to_string(self.procfs.join(pid.to_string()).join("maps")) {
            Ok(maps) => maps,
            Err(_) => return new,
        };
        let mut maps_hooked = false;
        let mut seen = HashSet::new();
        for path in maps.lines().filter_map(mapped_path) {
            if !seen.insert(path) {
                continue;
            }
            // In the sensor's own mount namespace the mapped path is stable;
            // /proc/PID/root/... vanishes when the process exits, which can
            // happen between two of the attachments.
            let host_path = if same_mount_namespace(&self.procfs, pid) {
                PathBuf::from(path)
            } else {
                root.join(path.trim_start_matches('/'))
            };
            let Ok(meta) = std::fs::metadata(&host_path) else { continue };
            let id = (meta.dev(), meta.ino());
            if self.hooked.contains(&id) {
                maps_hooked = true;
                continue;
            }
            if self.skipped.contains(&id) || !may_hold_openssl(path) {
                continue;
            }
            match attach_file(ebpf, &host_path) {
                Some(hooked) if !hooked.symbols.is_empty() => {
                    log::info!("TLS plaintext probes attached to {path} (inode {})", meta.ino());
                    self.hooked.insert(id);
                    maps_hooked = true;
                    new.push(Hooked { path: path.to_owned(), inode: meta.ino(), ..hooked });
                }
                _ => {
                    self.skipped.insert(id);
                }
            }
        }
        self.processes.insert(pid, maps_hooked);
        new
    }

    /// Hooks an executable by path before any process runs it, so its first
    /// process's first request is captured too (a file first seen at exec
    /// is hooked only after the daemon reads the exec record).
    pub fn hook_path(&mut self, ebpf: &mut Ebpf, path: &Path) -> Option<Hooked> {
        if !self.enabled {
            return None;
        }
        let meta = std::fs::metadata(path).ok()?;
        let id = (meta.dev(), meta.ino());
        if self.hooked.contains(&id) || self.skipped.contains(&id) {
            return None;
        }
        match attach_file(ebpf, path) {
            Some(hooked) if !hooked.symbols.is_empty() => {
                log::info!("TLS plaintext probes attached to {} (inode {})", path.display(), meta.ino());
                self.hooked.insert(id);
                Some(Hooked { path: path.display().to_string(), inode: meta.ino(), ..hooked })
            }
            _ => {
                self.skipped.insert(id);
                None
            }
        }
    }

    /// Notes the executable `pid` runs (kernel device number `dev`, inode
    /// `inode`) and returns whether that file is hooked. A hooked file's
    /// plaintext is captured even when the process exits before the daemon
    /// reads its memory map, as short Node.js runs often do.
    pub fn note_executable(&mut self, pid: u32, dev: u32, inode: u64) -> bool {
        let id = (libc::makedev(dev >> 20, dev & 0xfffff), inode);
        let hooked = self.enabled && inode != 0 && self.hooked.contains(&id);
        if hooked {
            self.processes.insert(pid, true);
        } else {
            self.processes.remove(&pid);
        }
        hooked
    }

    /// Hooks the OpenSSL-compatible libraries directly in `dir`, by name.
    /// Symbolic links to a file already hooked are skipped by inode.
    pub fn hook_library_dir(&mut self, ebpf: &mut Ebpf, dir: &Path) -> Vec<Hooked> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.to_str().is_some_and(|p| may_hold_openssl(p) && p.contains(".so")))
            .collect();
        // Sorted so the record names the same path on every start.
        paths.sort();
        paths.iter().filter_map(|path| self.hook_path(ebpf, path)).collect()
    }

    /// Returns why plaintext is unavailable for `pid`, `None` when one of its
    /// mapped files is hooked.
    pub fn plaintext_unavailable(&self, pid: u32) -> Option<&'static str> {
        if !self.enabled {
            return Some(self.off_reason);
        }
        match self.processes.get(&pid) {
            Some(true) => None,
            Some(false) => Some(
                "the process maps no OpenSSL-compatible library or executable with SSL_read/SSL_write symbols (a statically linked TLS stack such as rustls, Go crypto/tls or stripped BoringSSL)",
            ),
            None => Some("the process's memory map could not be read"),
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

/// Returns whether `pid` shares the sensor's mount namespace.
fn same_mount_namespace(procfs: &Path, pid: u32) -> bool {
    let own = std::fs::read_link(procfs.join("self/ns/mnt"));
    let theirs = std::fs::read_link(procfs.join(pid.to_string()).join("ns/mnt"));
    matches!((own, theirs), (Ok(a), Ok(b)) if a == b)
}

/// The file path of a `/proc/PID/maps` line, for file-backed mappings.
fn mapped_path(line: &str) -> Option<&str> {
    let path = line.splitn(6, ' ').nth(5)?.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Cheap filter before parsing ELF symbols: TLS libraries by name, and
/// executables that carry their own TLS stack. Other files are not checked.
fn may_hold_openssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libssl") || name.contains("boringssl") || carries_own_tls(path)
}

/// Returns whether an executable links OpenSSL statically and exports its
/// symbols (Node.js), so it is hooked at exec rather than at its first
/// connect.
pub fn carries_own_tls(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "node" || name.starts_with("node-") || name == "nodejs"
}

fn attach_file(ebpf: &mut Ebpf, path: &Path) -> Option<Hooked> {
    // Only the headers and symbol tables are read, through a cache of the
    // ranges parsed, because Node.js is about 100 MB. Unlike a mapping, reads
    // cannot fault when the file is truncated meanwhile.
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = ElfImage::read(&cache)?;
    let mut symbols = Vec::new();
    let mut failures = Vec::new();
    let redirects: Vec<Redirect> =
        [("SSL_read_ex", "SSL_read"), ("SSL_write_ex", "SSL_write")].iter().filter_map(|&(ex, plain)| Redirect::find(&elf, ex, plain)).collect();
    let mut attached_at: HashMap<(&str, u64), bool> = HashMap::new();
    for (program, symbol) in ATTACHMENTS {
        if !elf.symbols.contains_key(symbol) {
            continue;
        }
        // The offset comes from the ELF already read, so aya does not
        // re-read a large executable (Node.js is about 100 MB) per probe.
        let (program, offset) = match redirects.iter().find(|r| r.symbols.contains(symbol)) {
            // The callee takes the `_ex` arguments, the byte count's address
            // included, whichever entry point called it.
            Some(redirect) if *program == "ssl_call_enter" => ("ssl_call_ex_enter", redirect.callee_offset),
            Some(redirect) => (*program, redirect.callee_offset),
            None => match elf.symbol_offset(symbol) {
                Some(offset) => (*program, offset),
                None => {
                    failures.push(format!("{program} at {symbol}: no file offset for the symbol"));
                    continue;
                }
            },
        };
        // SSL_read and SSL_read_ex share their callee's probes.
        let attached = match attached_at.get(&(program, offset)) {
            Some(&attached) => attached,
            None => {
                let Some(prog) = ebpf.program_mut(program) else { continue };
                let result = <&mut UProbe>::try_from(prog)
                    .map_err(|e| error_chain(&e))
                    .and_then(|uprobe| uprobe.attach(offset, path, UProbeScope::AllProcesses).map_err(|e| error_chain(&e)));
                if let Err(error) = &result {
                    failures.push(format!("{program} at {symbol}: {error}"));
                }
                attached_at.insert((program, offset), result.is_ok());
                result.is_ok()
            }
        };
        if attached && !symbols.contains(symbol) {
            symbols.push(*symbol);
        }
    }
    let probed_at_callee = redirects
        .iter()
        .filter(|r| r.symbols.iter().any(|symbol| symbols.contains(symbol)))
        .map(|r| CalleeProbe { symbols: r.symbols.clone(), file_offset: r.callee_offset })
        .collect();
    Some(Hooked { path: path.display().to_string(), inode: 0, symbols, probed_at_callee, failures })
}

/// Probes moved from exported `SSL_*_ex` functions to the internal function
/// they forward to, which saves one trap per call.
///
/// A uprobe on an instruction the kernel cannot emulate runs it by
/// single-stepping, a second trap. Debian's `SSL_read_ex` and `SSL_write_ex`
/// begin with `sub $8,%rsp`, which is single-stepped. They then call an
/// internal function with their four arguments untouched, and that function
/// begins with a `push`, which is emulated. Its return value is theirs, except that
/// they turn a negative one into 0, and the probes treat both as failure.
/// `SSL_read` and `SSL_write` call the same function with a local for the
/// byte count, so when they do, their calls are caught there too and they
/// get no probes of their own.
///
/// The move is made only when the bytes are exactly that shape; any other
/// build keeps the probes on the exported symbols.
struct Redirect {
    symbols: Vec<&'static str>,
    callee_offset: u64,
}

impl Redirect {
    fn find<'data, R: object::ReadRef<'data>>(elf: &ElfImage<'data, R>, ex: &'static str, plain: &'static str) -> Option<Redirect> {
        if elf.machine != object::elf::EM_X86_64 {
            return None;
        }
        let address = *elf.symbols.get(ex)?;
        let code = elf.bytes_at(elf.address_offset(address)?, FORWARDER_LEN)?;
        let callee = forwarder_callee(address, code)?;
        let callee_offset = elf.address_offset(callee)?;
        if !is_emulated_push(elf.bytes_at(callee_offset, 2)?) {
            return None;
        }
        let mut symbols = vec![ex];
        if let Some(&plain_address) = elf.symbols.get(plain)
            && let Some(plain_offset) = elf.address_offset(plain_address)
            && let Some(code) = elf.bytes_at(plain_offset, CALL_SCAN_LEN)
            && calls(plain_address, code, callee)
        {
            symbols.push(plain);
        }
        Some(Redirect { symbols, callee_offset })
    }
}

/// `sub $imm8,%rsp; call rel32; xor %edx,%edx; test %eax,%eax;
/// cmovs %edx,%eax; add $imm8,%rsp`: the body of a function that passes
/// its arguments on and clamps a negative result to 0.
const FORWARDER_LEN: usize = 22;
/// Bytes of `SSL_read` and `SSL_write` searched for their call of the callee.
const CALL_SCAN_LEN: usize = 64;

/// Returns the address a forwarder at `address` calls.
fn forwarder_callee(address: u64, code: &[u8]) -> Option<u64> {
    let [0x48, 0x83, 0xec, _, 0xe8, d0, d1, d2, d3, rest @ ..] = code else {
        return None;
    };
    let [0x31, 0xd2, 0x85, 0xc0, 0x0f, 0x48, 0xc2, 0x48, 0x83, 0xc4, _, ..] = rest else {
        return None;
    };
    let displacement = i32::from_le_bytes([*d0, *d1, *d2, *d3]);
    Some(address.wrapping_add(9).wrapping_add_signed(i64::from(displacement)))
}

/// `push %reg` (0x50 to 0x57) and `push %r8`..`%r15` (0x41 prefix), the
/// pushes x86 uprobes emulate instead of single-stepping.
fn is_emulated_push(head: &[u8]) -> bool {
    match head {
        [0x50..=0x57, ..] => true,
        [0x41, 0x50..=0x57] => true,
        _ => false,
    }
}

/// Returns whether `code`, found at `address`, contains a `call rel32` to
/// `target`. A match by chance needs an 0xe8 byte followed by exactly that
/// displacement; a miss only keeps the function's own probes.
fn calls(address: u64, code: &[u8], target: u64) -> bool {
    code.windows(5).enumerate().any(|(at, bytes)| {
        let displacement = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        bytes[0] == 0xe8 && address.wrapping_add(at as u64 + 5).wrapping_add_signed(i64::from(displacement)) == target
    })
}

/// The functions the probes need, from a 64-bit ELF file.
///
/// The dynamic symbol table is read first, and the full one only when the
/// dynamic table lacks one of the functions. Node.js exports OpenSSL's, so
/// its full table, 10 MB of symbols and names, is never read: the tables
/// read stay in the file's cache until the file is hooked, and at start-up
/// they were the sensor's resident peak.
struct ElfImage<'data, R: object::ReadRef<'data>> {
    data: R,
    machine: u16,
    /// `(address, file size, file offset)` of each loadable segment.
    loads: Vec<(u64, u64, u64)>,
    /// Addresses of the functions in `ATTACHMENTS` that the file defines.
    symbols: HashMap<&'static str, u64>,
    _data: std::marker::PhantomData<&'data ()>,
}

impl<'data, R: object::ReadRef<'data>> ElfImage<'data, R> {
    // NOTE: 32-bit ELF files are not hooked. The programs read arguments
    // by the 64-bit calling convention, so a 32-bit process's calls could
    // not be read anyway.
    fn read(data: R) -> Option<Self> {
        use object::read::elf::{FileHeader, ProgramHeader, Sym};

        let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
        let endian = header.endian().ok()?;
        let loads = header
            .program_headers(endian, data)
            .ok()?
            .iter()
            .filter(|segment| segment.p_type(endian) == object::elf::PT_LOAD)
            .map(|segment| (segment.p_vaddr(endian), segment.p_filesz(endian), segment.p_offset(endian)))
            .collect();
        let sections = header.sections(endian, data).ok()?;
        let mut symbols = HashMap::new();
        let needed = || ATTACHMENTS.iter().map(|(_, symbol)| *symbol);
        for table in [object::elf::SHT_DYNSYM, object::elf::SHT_SYMTAB] {
            if needed().all(|symbol| symbols.contains_key(symbol)) {
                break;
            }
            let Ok(table) = sections.symbols(endian, data, table) else { continue };
            for symbol in table.iter().filter(|symbol| !symbol.is_undefined(endian) && symbol.st_value(endian) != 0) {
                let Ok(name) = symbol.name(endian, table.strings()) else { continue };
                if let Some(function) = needed().find(|function| function.as_bytes() == name) {
                    symbols.entry(function).or_insert(symbol.st_value(endian));
                }
            }
        }
        Some(ElfImage { data, machine: header.e_machine(endian), loads, symbols, _data: std::marker::PhantomData })
    }

    /// Returns the file offset of a defined function.
    fn symbol_offset(&self, symbol: &str) -> Option<u64> {
        self.address_offset(*self.symbols.get(symbol)?)
    }

    /// Translates a virtual address through the loadable segment containing it.
    fn address_offset(&self, address: u64) -> Option<u64> {
        self.loads.iter().find_map(|&(start, file_size, file_start)| {
            (address >= start && address < start.saturating_add(file_size)).then(|| address - start + file_start)
        })
    }

    fn bytes_at(&self, offset: u64, length: usize) -> Option<&'data [u8]> {
        self.data.read_bytes_at(offset, length as u64).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_line_paths() {
        let line = "7f1c2a400000-7f1c2a49a000 r--p 00000000 fe:01 1311790                    /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(mapped_path(line), Some("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert_eq!(mapped_path("7ffd-7ffe rw-p 00000000 00:00 0                          [stack]"), None);
        assert_eq!(mapped_path("7ffd-7ffe rw-p 00000000 00:00 0"), None);
        assert_eq!(mapped_path("1-2 r-xp 0 fe:01 5 /tmp/x (deleted)"), None);
    }

    #[test]
    fn openssl_candidates() {
        assert!(may_hold_openssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(may_hold_openssl("/usr/bin/node"));
        assert!(!may_hold_openssl("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }

    /// Debian's OpenSSL 3.0 `SSL_read_ex` at 0x354c0, which calls 0x35290,
    /// and one byte of padding.
    const READ_EX: [u8; 22] = [
        0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2, 0x85, 0xc0, 0x0f, 0x48, 0xc2, 0x48, 0x83, 0xc4, 0x08, 0xc3,
        0x90,
    ];

    #[test]
    fn forwarders_and_their_callee() {
        assert_eq!(forwarder_callee(0x354c0, &READ_EX), Some(0x35290));
        // Anything else at the entry, or after the call, is not moved.
        let mut other = READ_EX;
        other[0] = 0x55;
        assert_eq!(forwarder_callee(0x354c0, &other), None);
        let mut other = READ_EX;
        other[13] = 0x90;
        assert_eq!(forwarder_callee(0x354c0, &other), None);
        assert_eq!(forwarder_callee(0x354c0, &READ_EX[..12]), None);

        assert!(is_emulated_push(&[0x41, 0x55]));
        assert!(is_emulated_push(&[0x53, 0x48]));
        assert!(!is_emulated_push(&[0x48, 0x83]));
        assert!(!is_emulated_push(&[0xf3, 0x0f]), "endbr64 is single-stepped");
        assert!(!is_emulated_push(&[0x41, 0x89]));

        // `SSL_read`'s `call 0x35290` sits at 0x3544e.
        let mut plain = [0x90u8; 64];
        plain[0x1e..0x23].copy_from_slice(&[0xe8, 0x3d, 0xfe, 0xff, 0xff]);
        assert!(calls(0x35430, &plain, 0x35290));
        assert!(!calls(0x35430, &plain, 0x35291));
        assert!(!calls(0x35430, &[0x90; 64], 0x35290));
    }
}
