//! Embeds the kernel programs' object file when `cargo xtask build` has made
//! it, so that a plain `cargo build` or `cargo test` of the daemon still works
//! on a machine without the eBPF tool chain; the daemon then reports at start
//! that the object is missing and how to build it.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = env::var_os("AGENT_SENSOR_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        manifest.join("../sensor-ebpf/target/bpfel-unknown-none/release/sensor-ebpf")
    });
    println!("cargo::rerun-if-env-changed=AGENT_SENSOR_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    println!("cargo::rustc-check-cfg=cfg(ebpf_object)");

    let target = out.join("sensor-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => {
            fs::write(&target, bytes).expect("write the embedded eBPF object to OUT_DIR");
            println!("cargo::rustc-cfg=ebpf_object");
        }
        Err(_) => fs::write(&target, []).expect("write an empty placeholder object to OUT_DIR"),
    }
}
