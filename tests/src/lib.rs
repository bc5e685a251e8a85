//! Harness for integration tests that run the real `agent-sensor` binary
//! against this kernel.
//!
//! [`Sensor::start`] launches the daemon with a private configuration and
//! evidence file, waits for its `sensor.start` record, and collects every
//! JSON line it prints on a background thread. Tests then trigger real
//! syscalls and wait for the exact record they expect. The guard stops the
//! daemon with SIGINT on drop, so each test's kernel programs are detached
//! even when it fails.

use std::{
    io::{BufRead, BufReader},
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
    if sensor_binary().is_none() {
        return Some("agent-sensor binary not found: run the tests through `cargo xtask test`".to_owned());
    }
    None
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
        let mut child = Command::new(binary)
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
    let output = Command::new(workload_binary())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting workload {args:?}: {e}"));
    assert!(
        output.status.success(),
        "workload {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
