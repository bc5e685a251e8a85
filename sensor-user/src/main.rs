//! agent-sensor: an eBPF sensor that records what processes, and the AI
//! agents among them, really do on a Linux host, as evidence records.

mod agents;
mod config;
mod daemon;
mod evidence;
mod export;
mod idmap;
mod llm;
mod metrics;
mod identity;
mod ingest;
mod net;
mod pipeline;
mod policy;
mod probes;
mod process;
mod reconcile;
mod redact;
mod sinks;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agent-sensor", version, about = "Records what AI agents and other processes do on this host")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and stream evidence records (the default).
    Run {
        /// Configuration file (TOML); built-in defaults when absent.
        /// AGENT_SENSOR__SECTION__KEY environment variables override its keys.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Evidence file path, overriding `output.evidence_path`.
        #[arg(long)]
        evidence: Option<PathBuf>,
        /// Do not write records to standard output.
        #[arg(long)]
        no_stdout: bool,
        /// Policy file (YAML), overriding `policy.path`.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// List the agents a running daemon has seen, with their sessions.
    Agents {
        /// The daemon's control socket.
        #[arg(long, default_value = "/run/agent-sensor/control.sock")]
        socket: PathBuf,
        /// Print the daemon's JSON snapshot instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file, with the AGENT_SENSOR__SECTION__KEY
    /// environment overrides applied, and print every problem found.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Validate a policy file and print every problem found, with its key
    /// and line. Exit codes: 0 valid, 2 invalid or unreadable.
    CheckPolicy {
        /// Policy file (YAML).
        file: PathBuf,
    },
    /// Verify the hash chain and signed checkpoints of evidence files.
    ///
    /// Exit codes: 0 clean, 1 tampered, 2 invalid arguments, 3 bad
    /// signature, 4 warnings only (unsigned, uncovered or open tail), 5
    /// unreadable input.
    Verify {
        /// Public key (PEM or 32 raw bytes) to check checkpoint signatures with.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Evidence files of one chain, in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Match agents' telemetry against evidence files, as the daemon does.
    ///
    /// Prints each `finding.unreported_action`, `finding.unobserved_claim`
    /// and `reconcile.summary` as a JSON line. Exit codes: 0 no findings,
    /// 1 findings, 2 invalid arguments or input.
    Reconcile {
        /// Evidence files written by the daemon (rotated parts in any order).
        #[arg(long, required = true, num_args = 1..)]
        evidence: Vec<PathBuf>,
        /// Telemetry files: OTLP JSON export requests or agents' JSON-lines
        /// logs, one object a line.
        #[arg(long, required = true, num_args = 1..)]
        telemetry: Vec<PathBuf>,
        /// Configuration file whose `[reconcile]` windows and `ingest.jsonl`
        /// field maps are used; built-in defaults when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the records around one record: its agent session, the LLM call
    /// before it, its tool spawn, what the tool did after, and the policy
    /// checks and verdicts on each.
    ///
    /// Exit codes: 0 explained, 2 invalid arguments or unreadable input, 3
    /// no record has the id.
    Explain {
        /// A record's seq, its id, or a process's exec_id.
        id: String,
        /// Print the explanation as one JSON object with the whole records.
        #[arg(long)]
        json: bool,
        /// Configuration file whose `output.evidence_path` (and its rotated
        /// parts) is read when no files are given.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Evidence files in native format (rotated parts in any order).
        files: Vec<PathBuf>,
    },
    /// Generate an ed25519 key pair for signing evidence checkpoints.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        private: PathBuf,
        /// Where to write the public key (PEM), for `verify --public-key`.
        #[arg(long)]
        public: PathBuf,
    },
}

/// Joins an error's cause chain on one line, leaving out a cause whose text
/// its parent already repeats (some library errors print their source).
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Prints a policy error and each of its problems on its own line.
fn print_policy_error(error: &policy::PolicyError) {
    match std::error::Error::source(error) {
        Some(source) => eprintln!("error: {error}: {source}"),
        None => eprintln!("error: {error}"),
    }
    if let policy::PolicyError::Invalid { problems, .. } = error {
        for problem in problems {
            eprintln!("  {problem}");
        }
    }
}

/// Collects the `AGENT_SENSOR__SECTION__KEY` variables of this process.
fn env_overrides() -> Result<Vec<config::env::Override>, String> {
    config::env::overrides_from(std::env::vars_os()).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("invalid configuration override in the environment: {}", text.join("; "))
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("AGENT_SENSOR_LOG", "info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run { config: None, evidence: None, no_stdout: false, policy: None });
    match command {
        Command::Agents { socket, json } => match agents::control::fetch(&socket) {
            Ok(snapshot) if json => {
                println!("{snapshot}");
                ExitCode::SUCCESS
            }
            Ok(snapshot) => {
                print!("{}", agents::control::format_table(&snapshot));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => {
            let loaded = env_overrides().and_then(|overrides| {
                config::env::load(Some(&file), &overrides).map(|_| overrides).map_err(|error| error.to_string())
            });
            match loaded {
                Ok(overrides) if overrides.is_empty() => {
                    println!("{}: valid", file.display());
                    ExitCode::SUCCESS
                }
                Ok(overrides) => {
                    let names: Vec<&str> = overrides.iter().map(|o| o.variable.as_str()).collect();
                    println!("{}: valid with environment overrides {}", file.display(), names.join(", "));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::CheckPolicy { file } => match policy::load(&file) {
            Ok(loaded) => {
                println!(
                    "{}: valid: {} agents, {} rules, sha256 {}",
                    file.display(),
                    loaded.policy.agents.len(),
                    loaded.policy.rule_count(),
                    loaded.sha256
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                print_policy_error(&error);
                ExitCode::from(2)
            }
        },
        Command::Verify { public_key, json, files } => {
            ExitCode::from(evidence::verify::run(&files, public_key.as_deref(), json))
        }
        Command::Reconcile { evidence, telemetry, config } => {
            let config = match config.map(|path| config::Config::load(&path)).transpose() {
                Ok(config) => config.unwrap_or_default(),
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let mut stdout = std::io::stdout().lock();
            match reconcile::offline::run(&evidence, &telemetry, config.reconcile, &config.ingest.jsonl, &mut stdout) {
                Ok(stats) => {
                    eprintln!("{}", serde_json::json!({ "reconcile": stats }));
                    ExitCode::from(u8::from(stats.unreported_actions + stats.unobserved_claims > 0))
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Explain { id, json, config, files } => {
            let files = if files.is_empty() {
                let config = match config.map(|path| config::Config::load(&path)).transpose() {
                    Ok(config) => config.unwrap_or_default(),
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::from(evidence::explain::EXIT_INVALID);
                    }
                };
                match evidence::explain::files_of(&config.output.evidence_path) {
                    Ok(files) => files,
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::from(evidence::explain::EXIT_INVALID);
                    }
                }
            } else {
                files
            };
            ExitCode::from(evidence::explain::run(&id, &files, json))
        }
        Command::Keygen { private, public } => match evidence::checkpoint::keygen(&private, &public) {
            Ok(key_sha256) => {
                println!("wrote {} (private, 0600) and {}; public key sha256 {key_sha256}", private.display(), public.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, evidence, no_stdout, policy } => {
            let loaded = env_overrides()
                .and_then(|overrides| config::env::load(config.as_deref(), &overrides).map_err(|error| error.to_string()));
            let mut config = match loaded {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            if let Some(path) = evidence {
                config.output.evidence_path = path;
            }
            if no_stdout {
                config.output.stdout = false;
            }
            if let Some(path) = policy {
                config.policy.path = Some(path);
            }
            // Checked here so every problem is printed on its own line; the
            // daemon loads the file again when it starts.
            if let Some(Err(error)) = config.policy.path.as_deref().map(policy::load) {
                print_policy_error(&error);
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {}", one_line(&error));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
