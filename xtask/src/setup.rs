//! Installs the parts of the eBPF tool chain that are missing, and nothing
//! else. Each check is cheap, so every build runs it.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::run_command;

const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// `cargo xtask setup`: installs what is missing and reports what is there.
pub fn run() -> Result<()> {
    ensure()?;
    eprintln!("xtask: tool chain ready (nightly with rust-src, LLVM 22, bpf-linker)");
    Ok(())
}

/// Installs missing parts; silent when everything is present.
pub fn ensure() -> Result<()> {
    ensure_nightly()?;
    ensure_llvm()?;
    ensure_bpf_linker()?;
    ensure_python_packages()?;
    ensure_container_packages()?;
    crate::deploy_tools::ensure()
}

/// PATH with LLVM 22's tools first, as bpf-linker's build expects.
pub fn path_with_tools() -> String {
    let cargo_bin = home_cargo_bin();
    let current = std::env::var("PATH").unwrap_or_default();
    format!("{LLVM_BIN}:{}:{current}", cargo_bin.display())
}

fn home_cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn output_of(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ensure_nightly() -> Result<()> {
    let installed = output_of(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !installed.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly Rust toolchain (needed to build for bpfel-unknown-none)");
        run_command(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output_of(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .unwrap_or_default();
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly (needed by -Z build-std=core)");
        run_command(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    output_of(Command::new("dpkg-query").args(["-W", "-f", "${Status}", name]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn ensure_llvm() -> Result<()> {
    let missing: Vec<&str> = LLVM_PACKAGES.iter().copied().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages {}; install them as root: apt-get install {}", missing.join(", "), missing.join(" "));
    }
    eprintln!("xtask: installing {} (LLVM 22, which bpf-linker links against)", missing.join(", "));
    let install = |update: bool| -> Result<()> {
        if update {
            run_command(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        run_command(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )
    };
    // A fresh machine's package lists may be stale or absent.
    install(false).or_else(|_| install(true)).context("installing LLVM 22 packages")
}

fn ensure_bpf_linker() -> Result<()> {
    let linker = home_cargo_bin().join("bpf-linker");
    if output_of(Command::new(&linker).arg("--version")).is_some() {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against LLVM 22 (cargo install, a few minutes)");
    run_command(
        Command::new("cargo")
            .env("PATH", path_with_tools())
            .args(["install", "bpf-linker@0.13.0", "--no-default-features", "--features", "llvm-22"]),
    )
}

/// Python packages the tests import: the `openai` client, the
/// OpenTelemetry SDK with its OTLP/HTTP exporter, and `jsonschema`, which
/// checks OCSF output against the schemas in tests/fixtures/ocsf.
const PYTHON_PACKAGES: &[&str] =
    &["openai", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "jsonschema"];

/// Installs the tests' Python packages with pip when `openai` or
/// `jsonschema` cannot be imported; the others are installed with them.
fn ensure_python_packages() -> Result<()> {
    let imports = "import openai, jsonschema";
    if Command::new("python3").args(["-c", imports]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing the Python packages the integration tests use: {}", PYTHON_PACKAGES.join(" "));
    let install = |extra: &[&str]| -> Result<()> {
        run_command(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(extra)
                .args(PYTHON_PACKAGES),
        )
    };
    // Debian's own python3 marks its site-packages as externally managed
    // (PEP 668), so pip needs explicit permission there.
    install(&[]).or_else(|_| install(&["--break-system-packages"])).context("installing Python packages with pip")
}

/// Debian packages the identity tests run real containers with: `runc`,
/// and `busybox-static`, whose single static binary is the containers'
/// root file system.
const CONTAINER_PACKAGES: &[&str] = &["runc", "busybox-static"];

/// Installs the container test packages with apt-get when missing. Without
/// root it only says what is missing, because the tests that need them
/// skip themselves without root anyway.
fn ensure_container_packages() -> Result<()> {
    let missing: Vec<&str> = CONTAINER_PACKAGES.iter().copied().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: container tests will skip: missing Debian packages {} (apt-get install {})", missing.join(", "), missing.join(" "));
        return Ok(());
    }
    eprintln!("xtask: installing {} (real containers for the identity tests)", missing.join(", "));
    let install = |update: bool| -> Result<()> {
        if update {
            run_command(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        run_command(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )
    };
    install(false).or_else(|_| install(true)).context("installing the container test packages")
}
