//! Harness for integration tests that run the real `agent-sensor` binary
//! against this kernel.
//!
//! [`Sensor::start`] launches the daemon with a private configuration and
//! evidence file, waits for its `sensor.start` record, and collects every
//! JSON line it prints on a background thread. Tests then trigger real
//! syscalls and wait for the exact record they expect. The guard stops the
//! daemon with SIGINT on drop, so each test's kernel programs are detached
//! even when it fails.

pub mod container;
pub mod llm_server;
pub mod otlp_receiver;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Returns why integration tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: loading eBPF programs needs root; run `sudo -E cargo xtask test`".to_owned());
    }
    binary_skip_reason()
}

/// Returns why tests that only run the binary (no eBPF load) cannot run.
pub fn binary_skip_reason() -> Option<String> {
    if sensor_binary().is_none() {
        return Some("agent-sensor binary not found: run the tests through `cargo xtask test`".to_owned());
    }
    None
}

/// Skips the calling test when the agent-sensor binary is missing.
#[macro_export]
macro_rules! require_binary {
    () => {
        if let Some(reason) = $crate::binary_skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Skips the calling test, with the reason, when it cannot run here.
#[macro_export]
macro_rules! require_sensor {
    () => {
        if let Some(reason) = $crate::skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn target_release() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// The daemon under test: `AGENT_SENSOR_BIN`, else the release build.
pub fn sensor_binary() -> Option<PathBuf> {
    std::env::var_os("AGENT_SENSOR_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(target_release().join("agent-sensor")))
        .filter(|p| p.exists())
}

/// The helper program that performs the odd syscalls tests need.
pub fn workload_binary() -> PathBuf {
    std::env::var_os("AGENT_SENSOR_WORKLOAD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_release().join("workload"))
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("agent-sensor-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Collected {
    records: Vec<Value>,
    closed: bool,
}

/// A running daemon and the records it has printed so far.
pub struct Sensor {
    child: Option<Child>,
    records: Arc<(Mutex<Collected>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    pub dir: TempDir,
}

impl Sensor {
    /// Starts the daemon with default settings plus `extra_config` (TOML).
    pub fn start(extra_config: &str) -> Sensor {
        Self::try_start(extra_config).unwrap_or_else(|error| panic!("{error}"))
    }

    pub fn try_start(extra_config: &str) -> Result<Sensor, String> {
        Self::try_start_via(&[], extra_config)
    }

    /// Like [`Sensor::try_start`], but runs the daemon through `launcher`,
    /// such as a `capsh` wrapper. The launcher is a program and its
    /// arguments that end by executing the argument vector appended to them
    /// (the daemon's path, `run --config FILE`). An empty launcher runs the
    /// daemon itself.
    pub fn try_start_via(launcher: &[String], extra_config: &str) -> Result<Sensor, String> {
        let dir = TempDir::new("sensor");
        let evidence = dir.path().join("evidence.jsonl");
        let config_path = dir.path().join("config.toml");
        let config = if extra_config.contains("[output]") {
            extra_config.to_owned()
        } else {
            format!("{extra_config}\n[output]\nevidence_path = \"{}\"\n", evidence.display())
        };
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let binary = sensor_binary().ok_or("agent-sensor binary not found")?;
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&config_path)
            .env("AGENT_SENSOR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting agent-sensor: {e}"))?;
        let records: Arc<(Mutex<Collected>, Condvar)> = Arc::default();
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let sink = records.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent-sensor printed a line that is not JSON ({e}): {line}"));
                let (lock, ready) = &*sink;
                lock.lock().unwrap().records.push(value);
                ready.notify_all();
            }
            let (lock, ready) = &*sink;
            lock.lock().unwrap().closed = true;
            ready.notify_all();
        });
        let stderr_text: Arc<Mutex<String>> = Arc::default();
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let stderr_sink = stderr_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = stderr_sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let sensor = Sensor { child: Some(child), records, stderr: stderr_text, dir };
        match sensor.wait_for_within(Duration::from_secs(30), |r| r["kind"] == "sensor.start") {
            Some(_) => Ok(sensor),
            None => Err(format!("agent-sensor did not start; stderr:\n{}", sensor.stderr())),
        }
    }

    /// Returns the sensor's pid, for reading its `/proc` status.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Copies every record received so far.
    pub fn records(&self) -> Vec<Value> {
        self.records.0.lock().unwrap().records.clone()
    }

    /// Waits up to ten seconds for a record matching `predicate`.
    pub fn wait_for(&self, predicate: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_for_within(Duration::from_secs(10), predicate)
    }

    pub fn wait_for_within(&self, timeout: Duration, predicate: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, ready) = &*self.records;
        let mut collected = lock.lock().unwrap();
        let mut checked = 0;
        loop {
            if let Some(found) = collected.records[checked..].iter().find(|r| predicate(r)) {
                return Some(found.clone());
            }
            checked = collected.records.len();
            let now = Instant::now();
            if collected.closed || now >= deadline {
                return None;
            }
            collected = ready.wait_timeout(collected, deadline - now).unwrap().0;
        }
    }

    /// Like [`Sensor::wait_for`], but fails the test with the records seen.
    pub fn expect(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        match self.wait_for(predicate) {
            Some(record) => record,
            None => {
                let records = self.records();
                let tail: Vec<String> = records.iter().rev().take(30).map(|r| r.to_string()).collect();
                panic!(
                    "no record for {what} among {} records; the last ones:\n{}\nstderr:\n{}",
                    records.len(),
                    tail.join("\n"),
                    self.stderr()
                );
            }
        }
    }

    /// Stops the daemon with SIGINT, waits for it, and returns every record
    /// including the final `sensor.stop`.
    pub fn stop(mut self) -> Vec<Value> {
        self.shutdown();
        let (lock, ready) = &*self.records;
        let mut collected = lock.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !collected.closed && Instant::now() < deadline {
            collected = ready.wait_timeout(collected, Duration::from_millis(100)).unwrap().0;
        }
        collected.records.clone()
    }

    fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with the pid of our own child and a valid signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True when `record` is of `kind` and its process has pid `pid`.
pub fn is_kind_for_pid(record: &Value, kind: &str, pid: u32) -> bool {
    record["kind"] == kind && record["process"]["pid"] == pid
}

/// The record's argv as strings.
pub fn argv(record: &Value) -> Vec<String> {
    record["process"]["argv"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

/// Runs the workload helper with `args` and returns its standard output,
/// failing the test when it fails.
pub fn run_workload(args: &[&str]) -> String {
    run_workload_via(&[], args)
}

/// Runs the workload like [`run_workload`], through `launcher`: a program
/// and arguments that execute the argument vector appended to them, such
/// as `unshare --net --`.
pub fn run_workload_via(launcher: &[&str], args: &[&str]) -> String {
    let mut command = match launcher.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(workload_binary());
            command
        }
        None => Command::new(workload_binary()),
    };
    let output = command.args(args).output().unwrap_or_else(|e| panic!("starting workload {args:?}: {e}"));
    assert!(
        output.status.success(),
        "workload {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns the value of the first `key value` line in a workload's output.
pub fn output_value(output: &str, key: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("workload printed no `{key}` line; its output:\n{output}"))
        .to_owned()
}

/// Like [`output_value`], parsed as a number.
pub fn output_number(output: &str, key: &str) -> u64 {
    let value = output_value(output, key);
    value.parse().unwrap_or_else(|_| panic!("workload's `{key}` is not a number: {value:?}"))
}

/// A marker unique to this call, to find a test's own records among those
/// of tests running in parallel.
pub fn unique_marker(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{n}-{nanos:08x}", std::process::id())
}

/// Lowercase hex sha256 of a file, from coreutils' `sha256sum`.
pub fn sha256_file(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(output.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

/// The inode number of a process's pid namespace, from `/proc/PID/ns/pid`.
pub fn pid_namespace(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("read the pid namespace link");
    let text = link.to_string_lossy();
    text.trim_start_matches("pid:[").trim_end_matches(']').parse().expect("pid namespace inode")
}

/// Every record of `kind` for process `pid`.
pub fn records_for(records: &[Value], kind: &str, pid: u32) -> Vec<Value> {
    records.iter().filter(|r| is_kind_for_pid(r, kind, pid)).cloned().collect()
}

/// A workload helper running in the background. Its stdout is read line by
/// line as it comes, and its stdin stays open so it can wait for the test.
/// Dropping the guard kills it, so a failed test leaves no process behind.
pub struct Workload {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Workload {
    pub fn spawn(args: &[&str]) -> Workload {
        let mut child = Command::new(workload_binary())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting workload {args:?}: {e}"));
        let stdout = child.stdout.take().expect("workload stdout pipe");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Workload { child, stdin, lines, seen: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to ten seconds for the line `key value` and returns value.
    pub fn value(&mut self, key: &str) -> String {
        let value_of = |line: &String| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')).map(str::to_owned);
        if let Some(value) = self.seen.iter().find_map(value_of) {
            return value;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else { break };
            self.seen.push(line.clone());
            if let Some(value) = value_of(&line) {
                return value;
            }
        }
        panic!("workload printed no `{key}` line; its output so far:\n{}", self.seen.join("\n"));
    }

    pub fn number(&mut self, key: &str) -> u64 {
        let value = self.value(key);
        value.parse().unwrap_or_else(|_| panic!("workload's `{key}` is not a number: {value:?}"))
    }

    /// Sends one line to the workload, which waits for it before acting.
    pub fn resume(&mut self) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("workload stdin already closed");
        stdin.write_all(b"go\n").expect("write to the workload's stdin");
    }

    /// Closes stdin and waits up to ten seconds for the workload to exit.
    pub fn finish(mut self) -> std::process::ExitStatus {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait().expect("wait for the workload") {
                Some(status) => return status,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => panic!("workload did not exit in time; output:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port that is bound but not listening, so a connect to it
/// is refused. The port stays reserved until the guard is dropped.
pub struct ClosedPort {
    fd: i32,
    pub port: u16,
}

impl ClosedPort {
    /// Binds on 127.0.0.1 or, with `ipv6`, on ::1.
    pub fn new(ipv6: bool) -> ClosedPort {
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: socket has no memory arguments.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: an all-zero sockaddr_storage is valid and large enough for either family.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = if ipv6 {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = std::net::Ipv6Addr::LOCALHOST.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        } else {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            std::mem::size_of::<libc::sockaddr_in>()
        };
        let mut socklen = len as libc::socklen_t;
        // SAFETY: storage holds a sockaddr of `socklen` bytes.
        let ret = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), socklen) };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        // SAFETY: storage and socklen are valid out pointers of the sizes given.
        let ret = unsafe { libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut socklen) };
        assert_eq!(ret, 0, "getsockname: {}", std::io::Error::last_os_error());
        // The port field sits at the same offset in sockaddr_in and sockaddr_in6.
        // SAFETY: storage holds the sockaddr getsockname wrote.
        let port = u16::from_be(unsafe { (*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()).sin_port });
        ClosedPort { fd, port }
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Sends a GET to a loopback port and returns the status code and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the metrics endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reading the response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or_else(String::new, |(_, body)| body.to_owned());
    (status, body)
}

/// Returns the value of the sample whose name and labels are exactly `series`.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Returns a loopback port that was free when the call returned.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
