//! A local stand-in for LLM provider APIs, and clients that reach it under
//! the providers' real host names without leaving the machine.
//!
//! [`LlmServer::start`] generates a test CA and a server certificate for
//! `api.openai.com` and `api.anthropic.com` with the `openssl` CLI. It then
//! runs `fixtures/llm_server.py` on a loopback address of its own, with
//! HTTPS on port 443 (OpenAI and Anthropic), plain HTTP on 11434 (Ollama)
//! and, when requested, DNS on 53.
//!
//! [`LlmServer::client`] wraps a client command in a private mount
//! namespace whose `/etc/hosts` maps the provider names to that address and
//! whose `/etc/resolv.conf` names only that address. A client therefore
//! never reaches the real host or the real resolver. Dropping the guard
//! kills the server and removes its files.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::{TempDir, workload_binary};

/// Host names the server's certificate is valid for.
pub const PROVIDER_HOSTS: [&str; 2] = ["api.openai.com", "api.anthropic.com"];

/// Port of the plain-HTTP Ollama API.
pub const OLLAMA_PORT: u16 = 11434;

/// Returns the `fixtures/` directory of this crate.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Returns the rustls client, built beside the workload helper.
pub fn tls_client_binary() -> PathBuf {
    workload_binary().with_file_name("tls_client")
}

/// Resolves, once, the real Python interpreter behind `python3`. A pyenv
/// shim is a shell script, and tests need the path the kernel reports.
pub fn python_binary() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = Command::new("python3")
            .args([
                "-c",
                "import os, sys; print(os.path.realpath(sys.executable))",
            ])
            .output()
            .expect("run python3");
        assert!(
            output.status.success(),
            "python3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// Returns a loopback address that no other test of this process uses.
/// The third octet comes from the pid and the fourth from a counter, so
/// test binaries left running by an earlier run are unlikely to hold it.
pub fn unique_loopback() -> Ipv4Addr {
    static COUNTER: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(n < 250, "ran out of per-test loopback addresses");
    let address = Ipv4Addr::new(127, 86, (std::process::id() % 256) as u8, n + 2);
    assert!(address.is_loopback(), "{address} is not a loopback address");
    address
}

/// OpenSSL configuration for the test CA and the server certificate.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = agent-sensor test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:api.openai.com,DNS:api.anthropic.com
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting openssl {args:?}: {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`: P-256 keys,
/// valid for two days.
fn generate_certificates(dir: &Path) {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).expect("write openssl.cnf");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-config",
        "openssl.cnf",
        "-extensions",
        "ca_ext",
        "-days",
        "2",
    ];
    ca.extend(ec);
    ca.extend([
        "-subj",
        "/CN=agent-sensor test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(dir, &ca);
    let mut request = vec!["req", "-new", "-config", "openssl.cnf"];
    request.extend(ec);
    request.extend([
        "-subj",
        "/CN=api.openai.com",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(dir, &request);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "server_ext",
            "-out",
            "server.pem",
        ],
    );
}

/// The running `llm_server.py` and its files.
pub struct LlmServer {
    child: Child,
    pub address: Ipv4Addr,
    /// Text the server puts in every reply, for tests that check the
    /// sensor never writes response text.
    pub response_marker: String,
    stderr: Arc<Mutex<String>>,
    dir: TempDir,
}

impl LlmServer {
    /// Starts the server on a fresh loopback address. With `dns_names`, it
    /// also answers DNS A queries for those names with that address.
    pub fn start(dns_names: &[&str]) -> LlmServer {
        let dir = TempDir::new("llm-server");
        generate_certificates(dir.path());
        let address = unique_loopback();
        let response_marker = crate::unique_marker("response-text-marker");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write a namespace file")
        };
        write(
            "hosts",
            format!(
                "127.0.0.1 localhost\n::1 localhost\n{address} {}\n",
                PROVIDER_HOSTS.join(" ")
            ),
        );
        write(
            "hosts-dns-only",
            "127.0.0.1 localhost\n::1 localhost\n".to_owned(),
        );
        // The only name server is this test's server, tried once, so a
        // lookup that the hosts file does not settle never reaches the
        // machine's real resolver.
        write(
            "resolv.conf",
            format!("nameserver {address}\noptions attempts:1 timeout:2\n"),
        );

        let mut command = Command::new("python3");
        command
            .arg(fixtures_dir().join("llm_server.py"))
            .arg("--address")
            .arg(address.to_string())
            .arg("--cert")
            .arg(dir.path().join("server.pem"))
            .arg("--key")
            .arg(dir.path().join("server.key"))
            .env("LLM_RESPONSE_MARKER", &response_marker);
        for name in dns_names {
            command.arg("--dns-name").arg(name);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llm_server.py");

        let stderr: Arc<Mutex<String>> = Arc::default();
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("server stderr pipe");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("server stdout pipe");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_sender.send(());
                }
            }
        });

        let server = LlmServer {
            child,
            address,
            response_marker,
            stderr,
            dir,
        };
        if ready.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!(
                "llm_server.py did not start listening on {address}; its stderr:\n{}",
                server.stderr()
            );
        }
        server
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Returns the path of the test CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Returns a directory for the test's own files, removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Builds a command that runs `program` in a private mount namespace
    /// where the provider host names resolve, through `/etc/hosts`, to this
    /// server.
    pub fn client(&self, program: impl AsRef<OsStr>) -> Command {
        self.namespaced(program, "hosts")
    }

    /// Like [`LlmServer::client`], but the hosts file leaves the provider
    /// names out, so they are resolved by DNS, through this server.
    pub fn client_resolving_by_dns(&self, program: impl AsRef<OsStr>) -> Command {
        self.namespaced(program, "hosts-dns-only")
    }

    fn namespaced(&self, program: impl AsRef<OsStr>, hosts: &str) -> Command {
        assert!(
            self.address.is_loopback(),
            "the provider names must map to loopback, not {}",
            self.address
        );
        // `unshare` without --fork and `sh -c exec` keep one pid from here
        // to the client, so the spawned child's pid is the client's. A
        // failed bind mount stops the chain before the client runs.
        const SCRIPT: &str = r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@""#;
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                SCRIPT,
                "sh",
            ])
            .arg(self.dir.path().join(hosts))
            .arg(self.dir.path().join("resolv.conf"))
            .arg(program);
        for proxy in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            command.env_remove(proxy);
        }
        command.env("NO_PROXY", "*");
        command
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client run printed, and its pid.
#[derive(Debug)]
pub struct ClientRun {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A client started in the background, killed on drop when still running,
/// so a failed test leaves no process behind.
pub struct RunningClient {
    child: Child,
    pub pid: u32,
    description: String,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl RunningClient {
    /// Starts `command` with its standard input open for [`RunningClient::send`].
    pub fn spawn(command: &mut Command) -> RunningClient {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let read_all = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = read_all(Box::new(child.stdout.take().expect("client stdout pipe")));
        let stderr = read_all(Box::new(child.stderr.take().expect("client stderr pipe")));
        let pid = child.id();
        RunningClient {
            child,
            pid,
            description: format!("{command:?}"),
            stdout,
            stderr,
        }
    }

    /// Writes `input` to the client's standard input, then closes it.
    pub fn send(&mut self, input: &[u8]) {
        use std::io::Write;
        let mut stdin = self
            .child
            .stdin
            .take()
            .expect("client stdin already closed");
        stdin
            .write_all(input)
            .unwrap_or_else(|e| panic!("writing to {}: {e}", self.description));
    }

    /// Waits up to `timeout` for the client to exit, whatever its status.
    pub fn wait(mut self, timeout: Duration) -> ClientRun {
        self.child.stdin.take();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the client") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (stdout, stderr) = self.output();
                panic!(
                    "client {} (pid {}) timed out after {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    self.description, self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, stderr) = self.output();
        ClientRun {
            pid: self.pid,
            status,
            stdout,
            stderr,
        }
    }

    /// Collects what the exited client printed: its pipes are closed, so
    /// the reader threads finish.
    fn output(&mut self) -> (String, String) {
        let stdout = std::mem::replace(&mut self.stdout, std::thread::spawn(String::new));
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        )
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a client to its end (at most `timeout`), with empty standard
/// input, and fails the test when it fails, with its output.
pub fn run_client(command: &mut Command, timeout: Duration) -> ClientRun {
    let run = RunningClient::spawn(command).wait(timeout);
    assert!(
        run.status.success(),
        "client {command:?} (pid {}) failed with {}\nstdout:\n{}\nstderr:\n{}",
        run.pid,
        run.status,
        run.stdout,
        run.stderr
    );
    run
}
