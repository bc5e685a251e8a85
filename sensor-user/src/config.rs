//! The daemon's configuration file (TOML), one section per pipeline stage.
//!
//! Unknown keys are rejected so a misspelt setting never silently keeps its
//! default. Syntax and type errors carry the line and column the TOML parser
//! reports; range checks run after parsing and report every bad value at
//! once, each with its key and line.

use std::{fmt, path::{Path, PathBuf}};

use serde::{Deserialize, Serialize};

pub mod env;
#[cfg(test)]
mod reference;

/// Largest argv copy the kernel programs support.
pub const ARGV_MAX_BYTES_LIMIT: u32 = sensor_common::ARGV_CAPACITY as u32 - 1;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub probes: ProbesConfig,
    pub catalog: crate::net::catalog::CatalogConfig,
    pub agents: crate::agents::AgentsConfig,
    pub llm: LlmSettings,
    pub process: ProcessConfig,
    pub identity: IdentityConfig,
    pub output: OutputConfig,
    pub evidence: EvidenceConfig,
    pub ingest: crate::ingest::IngestConfig,
    pub reconcile: crate::reconcile::ReconcileConfig,
    pub policy: crate::policy::PolicyConfig,
    pub export: crate::export::ExportConfig,
    pub metrics: crate::metrics::MetricsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Size of the kernel-to-daemon ring buffer in bytes: a power of two and
    /// a multiple of the page size. A larger buffer absorbs longer bursts.
    pub ring_buffer_bytes: u32,
    /// Bytes of each command line copied at exec; longer ones are cut and
    /// marked truncated. At most 8191.
    pub argv_max_bytes: u32,
    /// Executables that carry their own OpenSSL (Node.js) hooked at start,
    /// so their first process's first request is captured; others are
    /// hooked when a process maps them. Missing paths are skipped.
    pub tls_executables: Vec<PathBuf>,
    /// Directories whose OpenSSL-compatible libraries (`libssl*`) are hooked
    /// at start, so a process that loads one is captured from its first
    /// request. Libraries elsewhere, in containers for example, are hooked
    /// when a process maps them. Missing directories are skipped.
    pub tls_library_dirs: Vec<PathBuf>,
    /// Capture TLS plaintext with uprobes on OpenSSL-compatible libraries.
    /// Off, LLM calls over TLS are known by their ClientHello only, and no
    /// application data is read.
    pub tls_plaintext: bool,
    /// Bytes of TLS plaintext copied per `SSL_read`/`SSL_write` call; longer
    /// calls are cut and marked truncated. At most 16383.
    pub tls_max_bytes: u32,
    /// Also report new threads, not only new processes.
    pub report_threads: bool,
    /// Unread bytes in the ring buffer at which the kernel wakes the daemon.
    /// Below it the daemon reads on its `drain_interval_ms` timer, which
    /// saves a wakeup per event. At most half of `ring_buffer_bytes`.
    pub wakeup_bytes: u32,
    /// How often the daemon drains the ring buffer without a wakeup, in
    /// milliseconds. Each drain costs a wakeup whose cost does not shrink
    /// with the batch, so a longer interval costs less CPU under load.
    /// Records wait for the output flush (`output.flush_interval_ms`)
    /// anyway.
    pub drain_interval_ms: u64,
    /// Maximum wait between reads of the ring buffer while reads find
    /// nothing. The wait doubles from `drain_interval_ms` up to this, so an
    /// idle host costs a few wakeups a second.
    pub drain_idle_interval_ms: u64,
    /// How often the kernel loss counters are read, in milliseconds.
    pub loss_check_interval_ms: u64,
    /// Program names not to attach (see `sensor.start` for the names), for
    /// operators who accept the lost visibility; each is reported degraded.
    pub disabled_hooks: Vec<String>,
    /// Hooks for connects, first writes and DNS. `tracepoints` are socket
    /// tracepoints, with the syscall hooks as the fallback on kernels
    /// without them. `syscalls` slow every syscall on the host but also
    /// record connects that fail before a packet is sent.
    pub socket_hooks: SocketHooks,
    /// When the file-operation hooks of agent trees run: `agents` (only
    /// while an agent is being followed, since they are syscall tracepoints
    /// that slow every syscall on the host) or `always`.
    pub file_hooks: FileHooks,
    /// Raw BTF of the running kernel, the source of struct offsets.
    pub btf_path: PathBuf,
    /// Mount point of tracefs, where it is mounted when absent.
    pub tracefs_path: PathBuf,
    /// Mount point of bpffs, where it is mounted when absent.
    pub bpffs_path: PathBuf,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 4 << 20,
            argv_max_bytes: 4095,
            tls_max_bytes: 16383,
            tls_executables: ["/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"].into_iter().map(PathBuf::from).collect(),
            tls_plaintext: true,
            tls_library_dirs: [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/lib",
                "/usr/local/lib64",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            report_threads: false,
            wakeup_bytes: 256 << 10,
            // On the development VM, 200 ms instead of 100 cut the daemon's
            // CPU under an agent's load by about 30% (docs/benchmarks.md).
            drain_interval_ms: 200,
            drain_idle_interval_ms: 320,
            loss_check_interval_ms: 1000,
            disabled_hooks: Vec::new(),
            socket_hooks: SocketHooks::Tracepoints,
            file_hooks: FileHooks::Agents,
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            tracefs_path: PathBuf::from("/sys/kernel/tracing"),
            bpffs_path: PathBuf::from("/sys/fs/bpf"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// Key for credential fingerprints (HMAC-SHA256), created with 32
    /// random bytes on first start.
    pub fingerprint_key_path: PathBuf,
    /// Bytes of plaintext buffered per TLS stream and direction while a
    /// request or response is parsed; beyond it the message is marked
    /// truncated.
    pub max_buffer_bytes: usize,
    /// TLS streams followed at once; the least recently used go first.
    pub max_streams: usize,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            fingerprint_key_path: PathBuf::from("/var/lib/agent-sensor/fingerprint.key"),
            max_buffer_bytes: 1 << 20,
            max_streams: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// The proc file system to scan at start and to read exe links from.
    pub procfs_path: PathBuf,
    /// How long an exited process stays in the table, in seconds, so that
    /// records arriving after its exit still find its identity.
    pub exited_retention_secs: u64,
    /// Upper bound on processes kept in the table; exited ones go first.
    pub max_processes: usize,
    /// Executables larger than this many bytes are not hashed, and their
    /// `exe_sha256` is reported unknown with the reason.
    pub max_hash_bytes: u64,
    /// Upper bound on ancestors listed per record.
    pub max_ancestry: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            procfs_path: PathBuf::from("/proc"),
            exited_retention_secs: 60,
            max_processes: 65536,
            max_hash_bytes: 512 << 20,
            max_ancestry: 16,
        }
    }
}

/// Workload identity: where cgroups, runtime metadata and user names are
/// read. Every path is configurable because a DaemonSet mounts the host's
/// directories wherever its manifest says.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Look up workload identities; when false, records carry no `workload`.
    pub enabled: bool,
    /// The cgroup2 mount. Empty: the first cgroup2 mount in `mountinfo_path`
    /// (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
    /// hybrid ones).
    pub cgroup_root: PathBuf,
    /// The mount table searched when `cgroup_root` is empty.
    pub mountinfo_path: PathBuf,
    /// Upper bound on cgroups whose path and workload are cached.
    pub max_cgroups: usize,
    /// How long a removed cgroup's workload stays cached, in seconds, for
    /// records about its processes that arrive after it is gone.
    pub removed_retention_secs: u64,
    /// containerd task directories, each holding `NAMESPACE/ID/config.json`.
    pub containerd_task_roots: Vec<PathBuf>,
    /// containers/storage roots of CRI-O and Podman, each holding
    /// `overlay-containers/ID/userdata/config.json`.
    pub containers_storage_roots: Vec<PathBuf>,
    /// Docker data roots, each holding `containers/ID/config.v2.json`.
    pub docker_roots: Vec<PathBuf>,
    /// The kubelet's container log links (`POD_NAMESPACE_CONTAINER-ID.log`),
    /// a fallback for pod and container names; empty to skip.
    pub container_logs_root: PathBuf,
    /// The kubelet's pod log directories (`NAMESPACE_POD_UID`), a fallback
    /// for pod names; empty to skip.
    pub pod_logs_root: PathBuf,
    /// The passwd file user names are read from (NSS is never called).
    pub passwd_path: PathBuf,
    /// Watch this node's pods in the Kubernetes API for service accounts and
    /// labels. Needs a build with the `kube-api` feature.
    pub kube_api: bool,
    /// API server URL. Empty: in-cluster, from `KUBERNETES_SERVICE_HOST`
    /// and `KUBERNETES_SERVICE_PORT`.
    pub kube_api_url: String,
    /// Bearer token file for the API.
    pub kube_token_path: PathBuf,
    /// CA bundle (PEM) that signs the API server's certificate.
    pub kube_ca_path: PathBuf,
    /// This node's name, for the `spec.nodeName` field selector. Empty: the
    /// `NODE_NAME` environment variable, else the host name.
    pub kube_node_name: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cgroup_root: PathBuf::new(),
            mountinfo_path: PathBuf::from("/proc/self/mountinfo"),
            max_cgroups: 8192,
            removed_retention_secs: 120,
            containerd_task_roots: vec![
                PathBuf::from("/run/containerd/io.containerd.runtime.v2.task"),
                PathBuf::from("/run/docker/containerd/daemon/io.containerd.runtime.v2.task"),
            ],
            containers_storage_roots: vec![
                PathBuf::from("/run/containers/storage"),
                PathBuf::from("/var/lib/containers/storage"),
            ],
            docker_roots: vec![PathBuf::from("/var/lib/docker")],
            container_logs_root: PathBuf::from("/var/log/containers"),
            pod_logs_root: PathBuf::from("/var/log/pods"),
            passwd_path: PathBuf::from("/etc/passwd"),
            kube_api: false,
            kube_api_url: String::new(),
            kube_token_path: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            kube_ca_path: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
            kube_node_name: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Write records as JSON lines to standard output.
    pub stdout: bool,
    /// Append records as JSON lines to this file; an empty string disables
    /// the file.
    pub evidence_path: PathBuf,
    /// Flush buffered records at least this often, in milliseconds.
    pub flush_interval_ms: u64,
    /// Record format on standard output: `native` (the agent-sensor
    /// schema) or `ocsf` (OCSF 1.8 events, see docs/ocsf.md).
    pub stdout_format: OutputFormat,
    /// Record format in the evidence file: `native` or `ocsf`. Either way
    /// each line is sealed into the hash chain and `verify` checks it.
    pub evidence_format: OutputFormat,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            stdout: true,
            evidence_path: PathBuf::from("/var/lib/agent-sensor/evidence.jsonl"),
            flush_interval_ms: 200,
            stdout_format: OutputFormat::Native,
            evidence_format: OutputFormat::Native,
        }
    }
}

/// The kernel hooks that see sockets (`probes.socket_hooks`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SocketHooks {
    Tracepoints,
    Syscalls,
}

/// When the file-operation hooks run (`probes.file_hooks`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileHooks {
    Agents,
    Always,
}

/// The form of the records a sink writes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The agent-sensor record schema (docs/schema.md).
    Native,
    /// OCSF 1.8 events (docs/ocsf.md).
    Ocsf,
}

impl OutputConfig {
    /// Returns the evidence file, `None` when disabled.
    pub fn evidence_file(&self) -> Option<&Path> {
        (!self.evidence_path.as_os_str().is_empty()).then_some(self.evidence_path.as_path())
    }
}

/// The tamper-evident evidence file: checkpoints, rotation and syncing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Write a checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// Longest time in seconds a record waits for a checkpoint to cover
    /// it; the daemon checks once a second.
    pub checkpoint_interval_secs: u64,
    /// ed25519 private key that signs checkpoints: PKCS#8 PEM or a file of
    /// 32 raw bytes. Empty: checkpoints are written unsigned.
    pub signing_key_path: PathBuf,
    /// Rotate the evidence file after the record that makes it this many
    /// bytes long; 0 disables rotation by size.
    pub rotate_size_bytes: u64,
    /// Rotate the evidence file once it is this many seconds old; 0
    /// disables rotation by age.
    pub rotate_age_secs: u64,
    /// When the evidence file is forced to disk: `never` (only at
    /// shutdown), `checkpoint` (at each checkpoint and rotation) or
    /// `batch` (after every batch of records is written).
    pub fsync: FsyncPolicy,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            checkpoint_every_records: 10_000,
            checkpoint_interval_secs: 10,
            signing_key_path: PathBuf::new(),
            rotate_size_bytes: 64 << 20,
            rotate_age_secs: 86_400,
            fsync: FsyncPolicy::Checkpoint,
        }
    }
}

impl EvidenceConfig {
    /// Returns the signing key file, `None` when checkpoints are unsigned.
    pub fn signing_key(&self) -> Option<&Path> {
        (!self.signing_key_path.as_os_str().is_empty()).then_some(self.signing_key_path.as_path())
    }
}

/// Smallest `evidence.rotate_size_bytes`: a few large records.
pub const ROTATE_SIZE_MIN: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Never,
    Checkpoint,
    Batch,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub key: String,
    /// 1-based line, when the key appears in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {}", format_problems(.problems))]
    Invalid { path: PathBuf, problems: Vec<ConfigProblem> },
}

fn format_problems(problems: &[ConfigProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates configuration text, returning every problem found.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        let config: Config = toml::from_str(text).map_err(|error| vec![parse_problem(text, &error)])?;
        let problems = config.validate(text);
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    fn validate(&self, text: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut check = |section: &str, key: &str, ok: bool, message: String| {
            if !ok {
                problems.push(ConfigProblem {
                    key: format!("{section}.{key}"),
                    line: find_key_line(text, section, key),
                    message,
                });
            }
        };
        let ring = self.probes.ring_buffer_bytes;
        check(
            "probes",
            "ring_buffer_bytes",
            ring.is_power_of_two() && ring >= 4096,
            format!("{ring} is not a power of two of at least 4096"),
        );
        let argv = self.probes.argv_max_bytes;
        check(
            "probes",
            "argv_max_bytes",
            argv <= ARGV_MAX_BYTES_LIMIT,
            format!("{argv} exceeds the kernel capture limit of {ARGV_MAX_BYTES_LIMIT}"),
        );
        let tls = self.probes.tls_max_bytes;
        check(
            "probes",
            "tls_max_bytes",
            tls < sensor_common::TLS_CAPACITY as u32,
            format!("{tls} exceeds the kernel capture limit of {}", sensor_common::TLS_CAPACITY - 1),
        );
        check(
            "probes",
            "wakeup_bytes",
            self.probes.wakeup_bytes <= ring / 2,
            format!("{} is more than half of probes.ring_buffer_bytes ({ring})", self.probes.wakeup_bytes),
        );
        check(
            "probes",
            "drain_interval_ms",
            (1..=1000).contains(&self.probes.drain_interval_ms),
            format!("{} is outside 1..=1000", self.probes.drain_interval_ms),
        );
        check(
            "probes",
            "drain_idle_interval_ms",
            (1..=10_000).contains(&self.probes.drain_idle_interval_ms),
            format!("{} is outside 1..=10000", self.probes.drain_idle_interval_ms),
        );
        check(
            "probes",
            "loss_check_interval_ms",
            self.probes.loss_check_interval_ms > 0,
            "must be greater than 0".to_owned(),
        );
        check(
            "process",
            "max_processes",
            self.process.max_processes >= 1024,
            format!("{} is below the minimum of 1024", self.process.max_processes),
        );
        check(
            "output",
            "flush_interval_ms",
            self.output.flush_interval_ms > 0,
            "must be greater than 0".to_owned(),
        );
        check(
            "output",
            "evidence_path",
            self.output.stdout || self.output.evidence_file().is_some(),
            "no output: set evidence_path or enable stdout".to_owned(),
        );
        check(
            "evidence",
            "checkpoint_every_records",
            self.evidence.checkpoint_every_records > 0,
            "must be greater than 0".to_owned(),
        );
        check(
            "evidence",
            "checkpoint_interval_secs",
            (1..=86_400).contains(&self.evidence.checkpoint_interval_secs),
            format!("{} is outside 1..=86400", self.evidence.checkpoint_interval_secs),
        );
        let rotate = self.evidence.rotate_size_bytes;
        check(
            "evidence",
            "rotate_size_bytes",
            rotate == 0 || rotate >= ROTATE_SIZE_MIN,
            format!("{rotate} is below the minimum of {ROTATE_SIZE_MIN}; use 0 to disable rotation by size"),
        );
        check(
            "identity",
            "max_cgroups",
            self.identity.max_cgroups >= 64,
            format!("{} is below the minimum of 64", self.identity.max_cgroups),
        );
        let url = &self.identity.kube_api_url;
        check(
            "identity",
            "kube_api_url",
            url.is_empty() || url.starts_with("https://"),
            format!("{url:?} is not an https:// URL; the API is only reached over TLS"),
        );
        check(
            "identity",
            "kube_api",
            !self.identity.kube_api || cfg!(feature = "kube-api"),
            "this build has no Kubernetes API support; rebuild with `--features kube-api`".to_owned(),
        );
        crate::ingest::validate(&self.ingest, &mut check);
        crate::reconcile::validate(&self.reconcile, &mut check);
        crate::export::validate(&self.export, &mut check);
        crate::metrics::validate(&self.metrics, &mut check);
        problems
    }
}

fn parse_problem(text: &str, error: &toml::de::Error) -> ConfigProblem {
    let offset = error.span().map(|span| span.start);
    let line = offset.map(|offset| line_of_offset(text, offset));
    // The parser's message repeats the position and a source excerpt; the
    // last line is the reason itself.
    let message = error.message().lines().last().unwrap_or("invalid TOML").trim().to_owned();
    let key = line.and_then(|line| key_on_line(text, line)).unwrap_or_else(|| "(document)".to_owned());
    ConfigProblem { key, line, message }
}

/// Names the key written on 1-based `line` with its section, such as
/// `output.stdout`, or the table a section header opens.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let current = lines.get(line.checked_sub(1)?)?.trim();
    if let Some(header) = current.strip_prefix('[') {
        return Some(header.trim_start_matches('[').trim_end_matches(']').trim().to_owned());
    }
    let name = current.split_once('=').map_or(current, |(name, _)| name).trim();
    if name.is_empty() {
        return None;
    }
    let section = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[').map(|h| h.trim_start_matches('[').trim_end_matches(']').trim().to_owned())
    });
    Some(match section {
        Some(section) => format!("{section}.{name}"),
        None => name.to_owned(),
    })
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}

/// Finds the line of `key` inside `[section]`, for messages about values
/// that parsed but are out of range.
pub(crate) fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            current = header.trim().to_owned();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else { continue };
        let name = name.trim();
        let dotted = format!("{section}.{key}");
        if (current == section && name == key) || (current.is_empty() && name == dotted) {
            return Some(index + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let problems = Config::parse("[probes]\nargv_max_bytes = 100\nring_bufer_bytes = 4096\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(3));
        assert_eq!(problems[0].key, "probes.ring_bufer_bytes");
        assert!(problems[0].message.contains("unknown field"), "{}", problems[0].message);
    }

    #[test]
    fn wrong_type_names_line() {
        let problems = Config::parse("[output]\n\nstdout = \"yes\"\n").unwrap_err();
        assert_eq!(problems[0].line, Some(3));
        assert_eq!(problems[0].key, "output.stdout");
        assert!(problems[0].message.contains("bool"), "{}", problems[0].message);
    }

    #[test]
    fn missing_value_names_key() {
        let problems = Config::parse("[probes]\nargv_max_bytes =\n").unwrap_err();
        assert_eq!(problems[0].key, "probes.argv_max_bytes");
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn range_problems_reported_together() {
        let text = "[probes]\nring_buffer_bytes = 5000\nargv_max_bytes = 9000\n";
        let problems = Config::parse(text).unwrap_err();
        let find = |key: &str| problems.iter().find(|p| p.key == key).unwrap_or_else(|| panic!("no problem for {key}: {problems:?}"));
        assert_eq!(find("probes.ring_buffer_bytes").line, Some(2));
        assert_eq!(find("probes.argv_max_bytes").line, Some(3));
        assert!(find("probes.wakeup_bytes").message.contains("half"), "the default wakeup no longer fits the smaller ring");
    }

    #[test]
    fn evidence_problems_name_key_and_line() {
        let text = "[evidence]\ncheckpoint_every_records = 0\nrotate_size_bytes = 100\nfsync = \"batch\"\n";
        let problems = Config::parse(text).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].key, "evidence.checkpoint_every_records");
        assert_eq!(problems[0].line, Some(2));
        assert_eq!(problems[1].key, "evidence.rotate_size_bytes");
        assert_eq!(problems[1].line, Some(3));
        let problems = Config::parse("[evidence]\nfsync = \"always\"\n").unwrap_err();
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.contains("never"), "{}", problems[0].message);
    }

    #[test]
    fn no_output_rejected() {
        let problems = Config::parse("[output]\nstdout = false\nevidence_path = \"\"\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "output.evidence_path");
        assert_eq!(problems[0].line, Some(3));
    }
}
