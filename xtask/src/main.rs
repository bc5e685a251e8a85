//! Developer tasks: tool chain setup, build, run, test and bench.
//!
//! `cargo xtask run` and `cargo xtask test` call `setup` themselves, so a
//! fresh Debian machine needs nothing but these commands. Every step says
//! what it installs.

mod bench;
mod bench_agent;
mod deploy_tools;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "agent-sensor developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing tool chain parts: nightly rust-src, LLVM 22, bpf-linker.
    Setup,
    /// Build the kernel programs and the daemon (release).
    Build,
    /// Build, then run the sensor on this host (needs root).
    Run {
        /// Arguments passed to `agent-sensor run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run every unit and integration test (integration tests need root).
    Test {
        /// Arguments passed to `cargo test` after `--`, such as a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the sensor's overhead on exec and connect storms (needs root).
    Bench {
        /// Rounds per workload; the median ratio is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Processes per exec-storm round.
        #[arg(long, default_value_t = 2000)]
        execs: usize,
        /// Connections per connect-storm round.
        #[arg(long, default_value_t = 5000)]
        connects: usize,
        /// Requests per HTTPS-loop round (TLS plaintext capture).
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Configuration file for the sensor under test.
        #[arg(long)]
        sensor_config: Option<PathBuf>,
        /// `storms` (exec and connect storms, the default) or `agent-load`
        /// (LLM requests with a tool spawn after each, for `--secs`).
        #[arg(long, default_value = "storms")]
        scenario: String,
        /// Steady window of the agent-load scenario, in seconds.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// LLM requests per second in the agent-load scenario.
        #[arg(long, default_value_t = 75.0)]
        rate: f64,
    },
    /// The agent of the agent-load bench (started by `bench`).
    #[command(hide = true)]
    AgentClient {
        #[arg(long)]
        address: String,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        count: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => setup::run(),
        Task::Build => build().map(drop),
        Task::Run { args } => {
            require_root("cargo xtask run")?;
            let binary = build()?;
            let status = Command::new(&binary)
                .arg("run")
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", binary.display()))?;
            if !status.success() {
                bail!("agent-sensor exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => test(&args),
        Task::Bench { rounds, execs, connects, requests, sensor_config, scenario, secs, rate } => {
            require_root("cargo xtask bench")?;
            let binary = build()?;
            match scenario.as_str() {
                "storms" => bench::run(&binary, rounds, execs, connects, requests, sensor_config.as_deref()),
                "agent-load" => bench_agent::run(&binary, secs, rate, sensor_config.as_deref()),
                other => bail!("unknown --scenario {other:?}: use storms or agent-load"),
            }
        }
        Task::AgentClient { address, rate, count } => bench_agent::client(&address, rate, count),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn require_root(task: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{task} loads eBPF programs and needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN for mounts); run `sudo -E env PATH=$PATH {task}`"
        );
    }
    Ok(())
}

/// Runs a command and fails with its name when it does not succeed.
pub fn run_command(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn ebpf_object() -> PathBuf {
    workspace_root().join("sensor-ebpf/target/bpfel-unknown-none/release/sensor-ebpf")
}

/// Builds the kernel programs, then the daemon with them embedded; returns
/// the daemon's path.
fn build() -> Result<PathBuf> {
    setup::ensure()?;
    let root = workspace_root();
    eprintln!("xtask: building the kernel programs (sensor-ebpf)");
    run_command(
        Command::new("cargo")
            .current_dir(root.join("sensor-ebpf"))
            .env("PATH", setup::path_with_tools())
            // A developer's RUSTFLAGS for the host must not leak into the
            // BPF target build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["+nightly", "build", "-Z", "build-std=core", "--target", "bpfel-unknown-none", "--release"]),
    )?;
    eprintln!("xtask: building the daemon (agent-sensor)");
    run_command(
        Command::new("cargo")
            .current_dir(&root)
            .env("AGENT_SENSOR_EBPF_OBJECT", ebpf_object())
            .args(["build", "--release", "--package", "sensor-user", "--package", "integration-tests", "--bins"]),
    )?;
    Ok(root.join("target/release/agent-sensor"))
}

fn test(args: &[String]) -> Result<()> {
    let binary = build()?;
    if !is_root() {
        eprintln!(
            "xtask: not root, so the integration tests will report themselves skipped; run `sudo -E env PATH=$PATH cargo xtask test` to load the eBPF programs"
        );
    }
    let root = workspace_root();
    let mut command = Command::new("cargo");
    command
        .current_dir(&root)
        .env("AGENT_SENSOR_EBPF_OBJECT", ebpf_object())
        .env("AGENT_SENSOR_BIN", &binary)
        .env("AGENT_SENSOR_WORKLOAD_BIN", root.join("target/release/workload"))
        // Every test binary runs even when an earlier one fails, so one run
        // shows all failures.
        .args(["test", "--release", "--workspace", "--no-fail-fast"]);
    if !args.is_empty() {
        command.arg("--").args(args);
    }
    run_command(&mut command)
}
