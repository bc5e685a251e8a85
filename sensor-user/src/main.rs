//! agent-sensor: an eBPF sensor that records what processes, and the AI
//! agents among them, really do on a Linux host, as evidence records.

mod agents;
mod config;
mod daemon;
mod evidence;
mod identity;
mod net;
mod probes;
mod process;
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
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Evidence file path, overriding `output.evidence_path`.
        #[arg(long)]
        evidence: Option<PathBuf>,
        /// Do not write records to standard output.
        #[arg(long)]
        no_stdout: bool,
    },
    /// Validate a configuration file and print every problem found.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("AGENT_SENSOR_LOG", "info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run { config: None, evidence: None, no_stdout: false });
    match command {
        Command::CheckConfig { file } => match config::Config::load(&file) {
            Ok(_) => {
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, evidence, no_stdout } => {
            let mut config = match config.map(|path| config::Config::load(&path)).transpose() {
                Ok(config) => config.unwrap_or_default(),
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
                    // `{:#}` prints the whole cause chain on one line.
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
