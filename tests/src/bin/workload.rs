//! Helper program for the integration tests: makes the syscalls a test wants
//! the sensor to observe, and prints what the test needs to match records
//! (pids, tids, fds, ports, errno values) as `key value` lines on stdout.
//!
//! Each subcommand prints `pid` first. Children created with fork or clone3
//! only call async-signal-safe functions, raw syscalls and exec, because the
//! test must see exactly the syscalls it asked for.

use std::{
    ffi::{CString, OsString},
    io::{BufRead, Read},
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd, unix::ffi::OsStringExt},
    ptr,
    time::Duration,
};

use libc::{c_char, c_int};

const USAGE: &str = "usage: workload SUBCOMMAND ARGS...
  storm COUNT MARKER PARALLEL     fork and exec `/bin/true MARKER-I` COUNT times, PARALLEL at once
  thread-exec MARKER              exec `/bin/true MARKER` from a thread that is not the leader
  execveat-fd PATH ARGV...        execveat(fd of PATH, \"\", AT_EMPTY_PATH) with ARGV
  memfd-exec PATH ARGV...         copy PATH into a memfd and exec it with ARGV
  thread-connect ADDR PORT        connect to ADDR:PORT from a worker thread
  fork-connect ADDR PORT          fork a child that connects to ADDR:PORT without exec
  connect PROTO MODE ADDR PORT [ADDRLEN]
                                  connect a tcp or udp socket, MODE block or nonblock,
                                  passing ADDRLEN as the sockaddr length when given
  connect-later [interrupt|restart|sndtimeo|sndtimeo-restart]
                                  non-blocking connect whose handshake ends after the syscall;
                                  with `interrupt`, a blocking one that SIGALRM interrupts;
                                  with `restart`, a blocking one that SIGALRM (SA_RESTART) does not;
                                  with `sndtimeo`, a blocking one that SO_SNDTIMEO ends early,
                                  followed by a SIGALRM while the thread sleeps;
                                  with `sndtimeo-restart`, a blocking one with a 5 s SO_SNDTIMEO
                                  that SIGALRM (SA_RESTART) interrupts all the same
  dns-exchange MODE ADDR NAME      answer one A query for NAME on ADDR port 53 from a thread and
                                  ask it, MODE connected (connect, send, recv) or sendto
                                  (sendto, recvfrom); run it in a network namespace of its own
  fork-connect-killed             fork a child that blocks in connect to a full listener, and
                                  kill it with SIGKILL before the handshake ends
  fastopen ADDR PORT              connect with TCP Fast Open: sendto(MSG_FASTOPEN) of an HTTP
                                  request on a new socket, no connect call
  ports-exhausted MODE            with one local port (set by the caller), connect to a listener
                                  twice; the second connect, MODE block or nonblock, fails
                                  with EADDRNOTAVAIL after the socket entered SYN_SENT
  udp-reconnect ADDR PORT1 PORT2  connect a udp socket to PORT1 and send, then to PORT2 and send
  thread-connects COUNT           COUNT threads block in connect to a full listener; SIGUSR1
                                  (no SA_RESTART) interrupts the odd ones, SIGUSR2 (SA_RESTART)
                                  the even ones
  pidns MARKER                    run `/bin/true MARKER-init` as pid 1 of a new pid namespace,
                                  after its child ran `/bin/true MARKER-inner`
  pid-reuse MARKER MODE PORT      give a new process the pid of an exited one with clone3,
                                  MODE later or same-tick (both started in the same clock tick)
  wait-fork-exec MARKER           wait for a line on stdin, then fork and exec `/bin/true MARKER`
  wait-connect ADDR PORT          wait for a line on stdin, then connect to ADDR:PORT
  exit-code CODE                  exit with CODE
  exit-signal SIGNAL              kill itself with SIGNAL
  leader-exits-first CODE         end the main thread first, then exit_group(CODE) from a worker";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        fail(USAGE);
    };
    match command.as_str() {
        "storm" => storm(rest),
        "thread-exec" => thread_exec(rest),
        "execveat-fd" => execveat_fd(rest),
        "memfd-exec" => memfd_exec(rest),
        "thread-connect" => thread_connect(rest),
        "fork-connect" => fork_connect(rest),
        "connect" => connect(rest),
        "connect-later" => connect_later(rest),
        "udp-reconnect" => udp_reconnect(rest),
        "ports-exhausted" => ports_exhausted(rest),
        "fastopen" => fastopen(rest),
        "fork-connect-killed" => fork_connect_killed(),
        "dns-exchange" => dns_exchange(rest),
        "thread-connects" => thread_connects(rest),
        "pidns" => pidns(rest),
        "pid-reuse" => pid_reuse(rest),
        "wait-fork-exec" => wait_fork_exec(rest),
        "wait-connect" => wait_connect(rest),
        "exit-code" => exit_code(rest),
        "exit-signal" => exit_signal(rest),
        "leader-exits-first" => leader_exits_first(rest),
        _ => fail(&format!("unknown subcommand {command:?}\n{USAGE}")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("workload: {message}");
    std::process::exit(1);
}

/// Prints one `key value` line. Rust's stdout is line-buffered, so the line
/// is written before the next syscall.
fn say(key: &str, value: impl std::fmt::Display) {
    println!("{key} {value}");
}

fn arg<'a>(args: &'a [String], index: usize, name: &str) -> &'a str {
    args.get(index).map(String::as_str).unwrap_or_else(|| fail(&format!("missing argument {name}\n{USAGE}")))
}

fn number<T: std::str::FromStr>(args: &[String], index: usize, name: &str) -> T {
    let text = arg(args, index, name);
    text.parse().unwrap_or_else(|_| fail(&format!("{name} must be a number, got {text:?}")))
}

/// Fails with the errno when a libc call returned a negative value.
fn check<T: PartialOrd + Default + Copy>(ret: T, what: &str) -> T {
    if ret < T::default() {
        fail(&format!("{what} failed: {}", std::io::Error::last_os_error()));
    }
    ret
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn cstring(text: &str) -> CString {
    CString::new(text).unwrap_or_else(|_| fail(&format!("argument {text:?} contains a NUL byte")))
}

/// A NUL-terminated pointer array over owned C strings, as execve expects.
struct CArray {
    _strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

impl CArray {
    fn new(strings: Vec<CString>) -> CArray {
        let mut pointers: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(ptr::null());
        CArray { _strings: strings, pointers }
    }

    fn of(items: &[&str]) -> CArray {
        CArray::new(items.iter().map(|s| cstring(s)).collect())
    }

    fn environment() -> CArray {
        let strings = std::env::vars_os()
            .filter_map(|(key, value)| {
                let mut entry: OsString = key;
                entry.push("=");
                entry.push(value);
                CString::new(entry.into_vec()).ok()
            })
            .collect();
        CArray::new(strings)
    }

    fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }
}

/// Replaces the process image. On failure it exits with 127, as a shell
/// does, so a child never returns into the caller's code.
fn exec(path: &CString, argv: &CArray) -> ! {
    // SAFETY: path and argv are NUL-terminated and outlive the call.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(127) }
}

fn fork() -> i32 {
    // SAFETY: this program is single-threaded wherever it forks, so the
    // child may use any function.
    check(unsafe { libc::fork() }, "fork")
}

/// Waits for `pid` and returns its wait status.
fn wait_for(pid: i32) -> c_int {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    check(unsafe { libc::waitpid(pid, &mut status, 0) }, "waitpid");
    status
}

fn wait_success(pid: i32, what: &str) {
    let status = wait_for(pid);
    if status != 0 {
        fail(&format!("{what} (pid {pid}) ended with wait status {status:#x}"));
    }
}

/// Reads the start time of `pid` in clock ticks, field 22 of /proc/PID/stat,
/// which a zombie still has.
fn start_ticks(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| fail(&format!("reading /proc/{pid}/stat: {e}")));
    let after_comm = &text[text.rfind(')').unwrap_or_else(|| fail("malformed stat")) + 1..];
    after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| fail(&format!("no start time in /proc/{pid}/stat")))
}

fn storm(args: &[String]) {
    let count: usize = number(args, 0, "COUNT");
    let marker = arg(args, 1, "MARKER");
    let parallel: usize = number(args, 2, "PARALLEL");
    say("pid", getpid());
    let path = cstring("/bin/true");
    // Built before the loop so each child does no work between fork and exec.
    let argvs: Vec<CArray> = (0..count).map(|i| CArray::of(&["/bin/true", &format!("{marker}-{i}")])).collect();

    let mut running = 0;
    let mut failed = 0;
    let mut reap_one = || {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        check(unsafe { libc::waitpid(-1, &mut status, 0) }, "waitpid");
        if status != 0 {
            failed += 1;
        }
    };

    for argv in &argvs {
        if running >= parallel.max(1) {
            reap_one();
            running -= 1;
        }
        if fork() == 0 {
            exec(&path, argv);
        }
        running += 1;
    }
    for _ in 0..running {
        reap_one();
    }

    say("done", count);
    if failed > 0 {
        fail(&format!("{failed} of {count} children failed"));
    }
}

fn thread_exec(args: &[String]) {
    let marker = arg(args, 0, "MARKER").to_owned();
    say("pid", getpid());
    let worker = std::thread::spawn(move || {
        let path = cstring("/bin/true");
        let argv = CArray::of(&["/bin/true", &marker]);
        say("tid", gettid());
        exec(&path, &argv);
    });
    // The exec in the worker ends this thread; joining only keeps it waiting.
    let _ = worker.join();
    fail("the worker thread's exec returned");
}

/// Calls execveat(fd, "", argv, environ, AT_EMPTY_PATH), the fexecve path.
fn exec_fd(fd: c_int, argv: &[String]) -> ! {
    let argv = CArray::new(argv.iter().map(|s| cstring(s)).collect());
    let environment = CArray::environment();
    let empty = cstring("");
    say("fd", fd);
    // SAFETY: every pointer is NUL-terminated and outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            argv.as_ptr(),
            environment.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    fail(&format!("execveat failed: {}", std::io::Error::last_os_error()));
}

fn execveat_fd(args: &[String]) {
    let path = arg(args, 0, "PATH");
    let argv = &args[1..];
    say("pid", getpid());
    let file = std::fs::File::open(path).unwrap_or_else(|e| fail(&format!("opening {path}: {e}")));
    // Rust opens files with O_CLOEXEC. Clearing it keeps the descriptor open
    // across the exec, so the kernel names the program /dev/fd/N.
    let fd = file.as_raw_fd();
    // SAFETY: fd is open; clearing FD_CLOEXEC has no other effect.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, "fcntl(F_SETFD)");
    std::mem::forget(file);
    exec_fd(fd, argv);
}

fn memfd_exec(args: &[String]) {
    let path = arg(args, 0, "PATH");
    let argv = &args[1..];
    say("pid", getpid());
    let image = std::fs::read(path).unwrap_or_else(|e| fail(&format!("reading {path}: {e}")));
    let name = cstring("workload-memfd");
    // SAFETY: name is NUL-terminated.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) }, "memfd_create");
    let mut written = 0;
    while written < image.len() {
        // SAFETY: the range is inside `image`.
        let n = unsafe { libc::write(fd, image[written..].as_ptr().cast(), image.len() - written) };
        written += check(n, "write to the memfd") as usize;
    }
    exec_fd(fd, argv);
}

fn socket_address(address: &str, port: &str) -> SocketAddr {
    let ip: IpAddr = address.parse().unwrap_or_else(|_| fail(&format!("{address:?} is not an IP address")));
    let port: u16 = port.parse().unwrap_or_else(|_| fail(&format!("{port:?} is not a port")));
    SocketAddr::new(ip, port)
}

/// Encodes `address` as the sockaddr connect expects.
fn raw_sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Opens a socket for `address`; an IPv6 one accepts IPv4-mapped addresses.
fn open_socket(address: SocketAddr, socket_type: c_int) -> c_int {
    let family = if address.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket has no memory arguments.
    let fd = check(unsafe { libc::socket(family, socket_type, 0) }, "socket");
    if address.is_ipv6() {
        let off: c_int = 0;
        // SAFETY: the option value is a c_int of the size passed.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&off as *const c_int).cast(),
                std::mem::size_of::<c_int>() as libc::socklen_t,
            )
        };
        check(ret, "setsockopt(IPV6_V6ONLY)");
    }
    fd
}

/// Calls connect and returns 0 or the errno.
fn raw_connect(fd: c_int, address: SocketAddr) -> c_int {
    let (_, len) = raw_sockaddr(address);
    raw_connect_with_length(fd, address, len)
}

/// Calls connect with `len` as the sockaddr length and returns 0 or the errno.
fn raw_connect_with_length(fd: c_int, address: SocketAddr, len: libc::socklen_t) -> c_int {
    let (storage, _) = raw_sockaddr(address);
    // SAFETY: storage contains a sockaddr of `len` bytes.
    let ret = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if ret == 0 { 0 } else { errno() }
}

/// Waits until a non-blocking connect finishes and returns SO_ERROR.
fn await_connect(fd: c_int, timeout: Duration) -> c_int {
    let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll reads and writes one pollfd.
    let ready = check(unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as c_int) }, "poll");
    if ready == 0 {
        fail("the non-blocking connect did not finish in time");
    }
    let mut error: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: error and len are valid out pointers of the sizes given.
    let ret = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut error as *mut c_int).cast(), &mut len) };
    check(ret, "getsockopt(SO_ERROR)");
    error
}

fn thread_connect(args: &[String]) {
    let address = socket_address(arg(args, 0, "ADDR"), arg(args, 1, "PORT"));
    say("pid", getpid());
    // Named like a tokio worker, whose comm differs from the program's.
    let worker = std::thread::Builder::new()
        .name("tokio-runtime-w".to_owned())
        .spawn(move || {
            say("tid", gettid());
            let stream = std::net::TcpStream::connect(address);
            stream.map(drop).unwrap_or_else(|e| fail(&format!("connect from the worker: {e}")));
        })
        .unwrap_or_else(|e| fail(&format!("spawning the worker: {e}")));
    worker.join().unwrap_or_else(|_| fail("the worker panicked"));
}

fn fork_connect(args: &[String]) {
    let address = socket_address(arg(args, 0, "ADDR"), arg(args, 1, "PORT"));
    say("pid", getpid());
    let child = fork();
    if child == 0 {
        let fd = open_socket(address, libc::SOCK_STREAM);
        let result = raw_connect(fd, address);
        // SAFETY: _exit has no preconditions; it skips the parent's atexit work.
        unsafe { libc::_exit(result) };
    }
    say("child", child);
    wait_success(child, "the forked child's connect");
}

fn connect(args: &[String]) {
    let socket_type = match arg(args, 0, "PROTO") {
        "tcp" => libc::SOCK_STREAM,
        "udp" => libc::SOCK_DGRAM,
        other => fail(&format!("PROTO must be tcp or udp, got {other:?}")),
    };
    let nonblocking = match arg(args, 1, "MODE") {
        "block" => false,
        "nonblock" => true,
        other => fail(&format!("MODE must be block or nonblock, got {other:?}")),
    };
    let address = socket_address(arg(args, 2, "ADDR"), arg(args, 3, "PORT"));
    let (_, default_len) = raw_sockaddr(address);
    let len = if args.len() > 4 { number(args, 4, "ADDRLEN") } else { default_len };
    say("pid", getpid());
    let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let fd = open_socket(address, socket_type | flags);
    say("fd", fd);
    let result = raw_connect_with_length(fd, address, len);
    say("errno", result);
    if socket_type == libc::SOCK_DGRAM && result == 0 {
        // The sensor records a datagram socket's connect at its first send.
        // SAFETY: sends one byte from a local.
        let sent = unsafe { libc::send(fd, b"x".as_ptr().cast(), 1, 0) };
        say("sent", sent);
    }
    if nonblocking && result == libc::EINPROGRESS {
        say("so_error", await_connect(fd, Duration::from_secs(10)));
    }
}

extern "C" fn ignore_signal(_: c_int) {}

/// Makes SIGALRM interrupt a blocking syscall after `delay`: the handler is
/// installed without SA_RESTART, so the syscall fails with EINTR.
fn interrupt_after(delay: Duration) {
    handle_signal(libc::SIGALRM, false);
    alarm_after(delay);
}

/// How `connect-later` makes its second connect.
#[derive(Clone, Copy, PartialEq)]
enum LaterMode {
    Nonblocking,
    Interrupt,
    Restart,
    SendTimeout,
    SendTimeoutRestart,
}

/// Installs a handler that does nothing for `signal`, with SA_RESTART
/// when `restart`.
fn handle_signal(signal: c_int, restart: bool) {
    // SAFETY: an all-zero sigaction is valid; the fields set below complete it.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
    action.sa_flags = if restart { libc::SA_RESTART } else { 0 };
    // SAFETY: action is a valid sigaction and the old one is not requested.
    check(unsafe { libc::sigaction(signal, &action, ptr::null_mut()) }, "sigaction");
}

/// Binds a TCP listener on 127.0.0.1 with a backlog of 0 and fills its
/// accept queue with one connection. While that one waits, the listener
/// drops further SYNs, so the next client's handshake ends only at its SYN
/// retransmission, about a second later. Returns the listener and address.
fn full_listener() -> (c_int, SocketAddr) {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| fail("bad loopback address"));
    let listener = open_socket(loopback, libc::SOCK_STREAM);
    let (storage, len) = raw_sockaddr(loopback);
    // SAFETY: storage contains a sockaddr of `len` bytes.
    check(unsafe { libc::bind(listener, (&storage as *const libc::sockaddr_storage).cast(), len) }, "bind");
    // SAFETY: listen has no memory arguments.
    check(unsafe { libc::listen(listener, 0) }, "listen");
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut bound: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut bound_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: bound and bound_len are valid out pointers of the sizes given.
    check(unsafe { libc::getsockname(listener, (&mut bound as *mut libc::sockaddr_in).cast(), &mut bound_len) }, "getsockname");
    let address = SocketAddr::new(loopback.ip(), u16::from_be(bound.sin_port));
    let first = open_socket(address, libc::SOCK_STREAM);
    if raw_connect(first, address) != 0 {
        fail("the first connect to the backlog-0 listener failed");
    }
    (listener, address)
}

fn connect_later(args: &[String]) {
    let mode = match args.first().map(String::as_str) {
        None => LaterMode::Nonblocking,
        Some("interrupt") => LaterMode::Interrupt,
        Some("restart") => LaterMode::Restart,
        Some("sndtimeo") => LaterMode::SendTimeout,
        Some("sndtimeo-restart") => LaterMode::SendTimeoutRestart,
        Some(other) => fail(&format!(
            "connect-later takes no argument, `interrupt`, `restart`, `sndtimeo` or `sndtimeo-restart`, got {other:?}"
        )),
    };
    let (listener, address) = full_listener();
    say("pid", getpid());
    say("port", address.port());
    let flags = if mode == LaterMode::Nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let second = open_socket(address, libc::SOCK_STREAM | flags);
    say("fd", second);
    match mode {
        LaterMode::Interrupt => interrupt_after(Duration::from_millis(100)),
        LaterMode::Restart => {
            handle_signal(libc::SIGALRM, true);
            alarm_after(Duration::from_millis(100));
            // The restarted connect blocks again, so no accept can come
            // from this thread: a larger backlog lets the SYN's
            // retransmission in instead.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                // SAFETY: listen has no memory arguments.
                unsafe { libc::listen(listener, 16) };
            });
        }
        LaterMode::SendTimeout => set_send_timeout(second, libc::timeval { tv_sec: 0, tv_usec: 100_000 }),
        LaterMode::SendTimeoutRestart => {
            set_send_timeout(second, libc::timeval { tv_sec: 5, tv_usec: 0 });
            handle_signal(libc::SIGALRM, true);
            alarm_after(Duration::from_millis(100));
        }
        LaterMode::Nonblocking => {}
    }
    let result = raw_connect(second, address);
    say("errno", result);
    if mode == LaterMode::SendTimeout {
        // The connect has returned while its handshake goes on. A signal
        // now interrupts the sleep, not the connect.
        interrupt_after(Duration::from_millis(20));
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        // SAFETY: pause is a valid timespec and the remainder is not requested.
        let slept = unsafe { libc::nanosleep(&pause, ptr::null_mut()) };
        say("sleep_errno", if slept == 0 { 0 } else { errno() });
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: accept with null address pointers is allowed.
    check(unsafe { libc::accept(listener, ptr::null_mut(), ptr::null_mut()) }, "accept");
    say("so_error", await_connect(second, Duration::from_secs(10)));
}

fn set_send_timeout(fd: c_int, timeout: libc::timeval) {
    // SAFETY: the option value is a timeval of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    check(ret, "setsockopt(SO_SNDTIMEO)");
}

/// Arms a one-shot ITIMER_REAL, which sends SIGALRM after `delay`.
fn alarm_after(delay: Duration) {
    let timer = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval { tv_sec: delay.as_secs() as libc::time_t, tv_usec: delay.subsec_micros() as libc::suseconds_t },
    };
    // SAFETY: timer is valid and the old value is not requested.
    check(unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, ptr::null_mut()) }, "setitimer");
}

fn udp_reconnect(args: &[String]) {
    let first = socket_address(arg(args, 0, "ADDR"), arg(args, 1, "PORT1"));
    let second = socket_address(arg(args, 0, "ADDR"), arg(args, 2, "PORT2"));
    say("pid", getpid());
    let fd = open_socket(first, libc::SOCK_DGRAM);
    say("fd", fd);
    for (key, address) in [("first", first), ("second", second)] {
        let result = raw_connect(fd, address);
        if result != 0 {
            fail(&format!("connect to {address}: {}", std::io::Error::from_raw_os_error(result)));
        }
        // SAFETY: sends one byte from a static.
        let sent = unsafe { libc::send(fd, b"x".as_ptr().cast(), 1, 0) };
        say(&format!("{key}_sent"), sent);
    }
}

fn ports_exhausted(args: &[String]) {
    let flags = match arg(args, 0, "MODE") {
        "block" => 0,
        "nonblock" => libc::SOCK_NONBLOCK,
        other => fail(&format!("MODE must be block or nonblock, got {other:?}")),
    };
    say("pid", getpid());
    // A fixed port, so the listener leaves the one local port to connects;
    // the caller's namespace is private, so it is free.
    let listener = std::net::TcpListener::bind("127.0.0.1:5555").unwrap_or_else(|e| fail(&format!("listen: {e}")));
    let address = listener.local_addr().unwrap_or_else(|e| fail(&format!("listener address: {e}")));
    say("port", address.port());
    let first = open_socket(address, libc::SOCK_STREAM);
    if raw_connect(first, address) != 0 {
        fail("the first connect failed");
    }
    let second = open_socket(address, libc::SOCK_STREAM | flags);
    say("fd", second);
    say("errno", raw_connect(second, address));
}

fn fastopen(args: &[String]) {
    let address = socket_address(arg(args, 0, "ADDR"), arg(args, 1, "PORT"));
    say("pid", getpid());
    let fd = open_socket(address, libc::SOCK_STREAM);
    say("fd", fd);
    let request = b"GET /fastopen HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (storage, len) = raw_sockaddr(address);
    // SAFETY: sends `request` to the sockaddr in `storage`, `len` bytes.
    let sent = unsafe {
        libc::sendto(fd, request.as_ptr().cast(), request.len(), libc::MSG_FASTOPEN, (&storage as *const libc::sockaddr_storage).cast(), len)
    };
    say("sent", check(sent, "sendto(MSG_FASTOPEN)"));
}

fn fork_connect_killed() {
    let (_listener, address) = full_listener();
    say("pid", getpid());
    say("port", address.port());
    let child = fork();
    if child == 0 {
        let fd = open_socket(address, libc::SOCK_STREAM);
        raw_connect(fd, address);
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) };
    }
    say("child", child);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill with the pid of our own child.
    check(unsafe { libc::kill(child, libc::SIGKILL) }, "kill");
    let status = wait_for(child);
    say("killed", i32::from(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL));
}

/// The address every answer of `dns-exchange` carries.
const DNS_ANSWER: [u8; 4] = [10, 1, 2, 3];

/// Encodes a DNS query for the A record of `name`, with id 0x1234.
fn dns_query(name: &str) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// Turns `query` into its answer: one A record, pointing back at the
/// question's name, with [`DNS_ANSWER`].
fn dns_answer(query: &[u8]) -> Vec<u8> {
    let mut answer = query.to_vec();
    answer[2] = 0x81;
    answer[3] = 0x80;
    answer[7] = 1;
    answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    answer.extend_from_slice(&DNS_ANSWER);
    answer
}

fn dns_exchange(args: &[String]) {
    let connected = match arg(args, 0, "MODE") {
        "connected" => true,
        "sendto" => false,
        other => fail(&format!("MODE must be connected or sendto, got {other:?}")),
    };
    let server_address = socket_address(arg(args, 1, "ADDR"), "53");
    let name = arg(args, 2, "NAME");
    say("pid", getpid());
    let server = std::net::UdpSocket::bind(server_address).unwrap_or_else(|e| fail(&format!("bind {server_address}: {e}")));
    let responder = std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        let (len, peer) = server.recv_from(&mut buffer).unwrap_or_else(|e| fail(&format!("receive the query: {e}")));
        server.send_to(&dns_answer(&buffer[..len]), peer).unwrap_or_else(|e| fail(&format!("send the answer: {e}")));
    });

    let fd = open_socket(server_address, libc::SOCK_DGRAM);
    say("fd", fd);
    let query = dns_query(name);
    let (storage, len) = raw_sockaddr(server_address);
    let sent = if connected {
        let result = raw_connect(fd, server_address);
        if result != 0 {
            fail(&format!("connect to {server_address}: {}", std::io::Error::from_raw_os_error(result)));
        }
        // SAFETY: sends `query` from a live buffer of that length.
        unsafe { libc::send(fd, query.as_ptr().cast(), query.len(), 0) }
    } else {
        // SAFETY: sends `query` to the sockaddr in `storage`, `len` bytes.
        unsafe { libc::sendto(fd, query.as_ptr().cast(), query.len(), 0, (&storage as *const libc::sockaddr_storage).cast(), len) }
    };
    check(sent, "send the query");
    let mut buffer = [0u8; 512];
    let received = if connected {
        // SAFETY: receives into a local buffer of the length passed.
        unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) }
    } else {
        // SAFETY: receives into a local buffer of the length passed; the
        // sender's address is not requested.
        unsafe { libc::recvfrom(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0, ptr::null_mut(), ptr::null_mut()) }
    };
    say("received", check(received, "receive the answer"));
    responder.join().unwrap_or_else(|_| fail("the responder panicked"));
}

fn thread_connects(args: &[String]) {
    let count: usize = number(args, 0, "COUNT");
    handle_signal(libc::SIGUSR1, false);
    handle_signal(libc::SIGUSR2, true);
    let (listener, address) = full_listener();
    say("pid", getpid());
    say("port", address.port());

    let (sender, tids) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..count)
        .map(|index| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let fd = open_socket(address, libc::SOCK_STREAM);
                let _ = sender.send((index, gettid()));
                let result = raw_connect(fd, address);
                let so_error = if result == libc::EINTR { await_connect(fd, Duration::from_secs(20)) } else { result };
                (gettid(), fd, result, so_error)
            })
        })
        .collect();
    let tids: Vec<(usize, i64)> = tids.iter().take(count).collect();

    // Every worker has sent its tid just before its connect; this gives
    // them time to block in it.
    std::thread::sleep(Duration::from_millis(300));
    for (index, tid) in &tids {
        let signal = if index % 2 == 1 { libc::SIGUSR1 } else { libc::SIGUSR2 };
        // SAFETY: tgkill with our own pid and a thread of ours.
        check(unsafe { libc::syscall(libc::SYS_tgkill, getpid(), *tid, signal) }, "tgkill");
    }

    // A larger backlog lets the retransmitted SYNs in.
    // SAFETY: listen has no memory arguments.
    check(unsafe { libc::listen(listener, 1024) }, "listen");
    let accepter = std::thread::spawn(move || {
        for _ in 0..count + 1 {
            // SAFETY: accept with null address pointers is allowed.
            let fd = unsafe { libc::accept(listener, ptr::null_mut(), ptr::null_mut()) };
            if fd < 0 {
                break;
            }
        }
    });

    for worker in workers {
        let (tid, fd, result, so_error) = worker.join().unwrap_or_else(|_| fail("a worker panicked"));
        say("connect", format!("{tid} {fd} {result} {so_error}"));
    }
    drop(accepter);
}

fn pidns(args: &[String]) {
    let marker = arg(args, 0, "MARKER");
    say("pid", getpid());
    // SAFETY: unshare has no memory arguments.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, "unshare(CLONE_NEWPID)");
    let path = cstring("/bin/true");
    let init_argv = CArray::of(&["/bin/true", &format!("{marker}-init")]);
    let inner_argv = CArray::of(&["/bin/true", &format!("{marker}-inner")]);
    let mut pipe = [0 as c_int; 2];
    // SAFETY: pipe writes two descriptors into the array.
    check(unsafe { libc::pipe(pipe.as_mut_ptr()) }, "pipe");

    let child = fork();
    if child == 0 {
        // Pid 1 of the new namespace. It waits until the parent has read
        // the namespace's inode, which is readable only while pid 1 lives.
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
        // SAFETY: single-threaded child, as in `fork`.
        let inner = unsafe { libc::fork() };
        if inner == 0 {
            exec(&path, &inner_argv);
        }
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        unsafe { libc::waitpid(inner, &mut status, 0) };
        exec(&path, &init_argv);
    }

    let link = std::fs::read_link(format!("/proc/{child}/ns/pid"))
        .unwrap_or_else(|e| fail(&format!("reading /proc/{child}/ns/pid: {e}")));
    let inode = link.to_string_lossy().trim_start_matches("pid:[").trim_end_matches(']').to_owned();
    say("pidns", inode);
    // SAFETY: writes one byte from a local.
    unsafe { libc::write(pipe[1], b"g".as_ptr().cast(), 1) };
    say("child", child);
    wait_success(child, "the namespace's init");
}

/// The kernel's `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// Forks a child with pid `pid` (clone3 with set_tid); 0 in the child.
fn fork_with_pid(pid: i32) -> i64 {
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: the struct matches the kernel's layout for the size passed, and
    // without CLONE_VM the child gets its own copy of memory, as with fork.
    unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) }
}

fn pid_reuse(args: &[String]) {
    let marker = arg(args, 0, "MARKER");
    let same_tick = match arg(args, 1, "MODE") {
        "later" => false,
        "same-tick" => true,
        other => fail(&format!("MODE must be later or same-tick, got {other:?}")),
    };
    let target = socket_address("127.0.0.1", arg(args, 2, "PORT"));
    say("pid", getpid());
    let path = cstring("/bin/true");
    let old_argv = CArray::of(&["/bin/true", &format!("{marker}-old")]);
    let new_argv = CArray::of(&["/bin/true", &format!("{marker}-new")]);
    // A tick is 10 ms at the usual USER_HZ of 100, and the same-tick case
    // needs the exit, reap and clone3 to fit in one, so it may take retries.
    for _ in 0..100 {
        let old = fork();
        if old == 0 {
            exec(&path, &old_argv);
        }
        // SAFETY: an all-zero siginfo_t is a valid out value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // WNOWAIT leaves the zombie, so its stat still shows its start time.
        // SAFETY: info is a valid out pointer.
        check(unsafe { libc::waitid(libc::P_PID, old as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) }, "waitid");
        let old_start = start_ticks(old);
        wait_success(old, "the first process");
        if !same_tick {
            // Two ticks, so the two start times differ whatever the phase.
            std::thread::sleep(Duration::from_millis(25));
        }

        let mut pipe = [0 as c_int; 2];
        // SAFETY: pipe writes two descriptors into the array.
        check(unsafe { libc::pipe(pipe.as_mut_ptr()) }, "pipe");
        let new = fork_with_pid(old);
        if new == 0 {
            // Wait for the parent to check the start times, then act under
            // the recycled pid before and after exec.
            let mut byte = 0u8;
            // SAFETY: reads one byte into a local.
            unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
            if byte == b'k' {
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(0) };
            }
            let fd = open_socket(target, libc::SOCK_DGRAM);
            raw_connect(fd, target);
            // The sensor records a datagram socket's connect at its first send.
            // SAFETY: sends one byte from a static.
            unsafe { libc::send(fd, b"x".as_ptr().cast(), 1, 0) };
            exec(&path, &new_argv);
        }
        if new < 0 {
            // EEXIST: another process took the pid between reap and clone3.
            let error = errno();
            eprintln!("workload: clone3 with pid {old}: {}", std::io::Error::from_raw_os_error(error));
            continue;
        }
        let new = new as i32;
        let new_start = start_ticks(new);
        let matches_mode = (old_start == new_start) == same_tick;
        let command: &[u8] = if matches_mode { b"g" } else { b"k" };
        // SAFETY: writes one byte from a local slice.
        unsafe { libc::write(pipe[1], command.as_ptr().cast(), 1) };
        // SAFETY: both descriptors are ours.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        wait_success(new, "the process with the recycled pid");
        if matches_mode {
            say("old", old);
            say("new", new);
            say("old_start_ticks", old_start);
            say("new_start_ticks", new_start);
            return;
        }
    }
    fail("could not recycle a pid with the requested start times in 100 attempts");
}

fn wait_fork_exec(args: &[String]) {
    let marker = arg(args, 0, "MARKER");
    say("pid", getpid());
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap_or_else(|e| fail(&format!("reading stdin: {e}")));
    let path = cstring("/bin/true");
    let argv = CArray::of(&["/bin/true", marker]);
    let child = fork();
    if child == 0 {
        exec(&path, &argv);
    }
    say("child", child);
    wait_success(child, "the child");
    // Stays alive until stdin closes, so the test can also check records
    // that name this process after its child ended.
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
}

fn wait_connect(args: &[String]) {
    let address = socket_address(arg(args, 0, "ADDR"), arg(args, 1, "PORT"));
    say("pid", getpid());
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap_or_else(|e| fail(&format!("reading stdin: {e}")));
    let fd = open_socket(address, libc::SOCK_STREAM);
    say("errno", raw_connect(fd, address));
}

fn exit_code(args: &[String]) {
    let code: i32 = number(args, 0, "CODE");
    say("pid", getpid());
    std::process::exit(code);
}

fn exit_signal(args: &[String]) {
    let signal: c_int = number(args, 0, "SIGNAL");
    say("pid", getpid());
    // SAFETY: kill with our own pid.
    unsafe { libc::kill(libc::getpid(), signal) };
    fail("still alive after the signal");
}

fn leader_exits_first(args: &[String]) {
    let code: i32 = number(args, 0, "CODE");
    say("pid", getpid());
    std::thread::spawn(move || {
        say("tid", gettid());
        // Long enough for the leader's exit to reach the sensor first.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: exit_group ends the process; no Rust state is used after.
        unsafe { libc::syscall(libc::SYS_exit_group, code) };
    });
    // The exit syscall, not exit_group, ends only the main thread; the
    // process lives on in the worker.
    // SAFETY: the thread ends here and no destructor is skipped that owns
    // state another thread uses.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    fail("the exit syscall returned");
}
