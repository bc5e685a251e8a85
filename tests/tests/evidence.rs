//! The evidence file of real daemon runs: chained across a restart, the
//! same lines as standard output, verified clean by `agent-sensor verify`,
//! and a one-byte edit caught on its line.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use integration_tests::{require_sensor, sensor_binary, Sensor, TempDir};
use serde_json::Value;

/// Runs the binary; returns its exit code and standard output.
fn agent_sensor(args: &[&str]) -> (i32, String) {
    let binary = sensor_binary().expect("agent-sensor binary");
    let output = Command::new(binary).args(args).output().expect("run agent-sensor");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

fn file_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read the evidence file");
    text.lines().map(|line| serde_json::from_str(line).expect("an evidence line is JSON")).collect()
}

fn hashes(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["integrity"]["hash"].as_str().unwrap_or("(none)").to_owned()).collect()
}

#[test]
fn daemon_evidence_verifies_and_edit_detected() {
    require_sensor!();
    let dir = TempDir::new("evidence");
    let private = dir.path().join("signing.key");
    let public = dir.path().join("signing.pub");
    let evidence = dir.path().join("log/evidence.jsonl");
    let (private_s, public_s, evidence_s) =
        (private.to_str().unwrap(), public.to_str().unwrap(), evidence.to_str().unwrap());

    let (code, output) = agent_sensor(&["keygen", "--private", private_s, "--public", public_s]);
    assert_eq!(code, 0, "{output}");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key mode");

    let config = format!(
        "[output]\nevidence_path = \"{evidence_s}\"\n[evidence]\nsigning_key_path = \"{private_s}\"\n\
         checkpoint_every_records = 25\n"
    );
    let mut printed = Vec::new();
    for run in 0..2 {
        let sensor = Sensor::start(&config);
        let mut pids = Vec::new();
        for _ in 0..20 {
            let mut child = Command::new("/bin/true").spawn().expect("run /bin/true");
            pids.push(child.id());
            child.wait().expect("wait for /bin/true");
        }
        // Kernel events are read only once the daemon's main loop runs, with
        // its signal handlers installed, so the stop below is a clean one.
        // Fork, exec or exit will do, whichever hooks load on this kernel.
        sensor.expect("a record of a /bin/true run", |r| {
            r["kind"] != "process.snapshot" && r["process"]["pid"].as_u64().is_some_and(|pid| pids.contains(&(pid as u32)))
        });
        let records = sensor.stop();
        let tail: Vec<&Value> = records.iter().rev().take(3).map(|r| &r["kind"]).collect();
        let last_reason = records.last().map(|r| r["checkpoint"]["reason"].clone());
        assert_eq!(last_reason, Some("shutdown".into()), "run {run} ends with the shutdown checkpoint: {tail:?}");
        printed.extend(records);
    }

    let written = file_records(&evidence);
    assert_eq!(hashes(&printed), hashes(&written), "standard output and the file carry the same chain");
    let starts: Vec<&Value> = written.iter().filter(|r| r["kind"] == "sensor.start").collect();
    assert_eq!(starts.len(), 2);
    let second_start = written.iter().position(|r| r["kind"] == "sensor.start" && r["seq"] != 0).unwrap();
    assert_eq!(
        written[second_start]["integrity"]["prev_hash"],
        written[second_start - 1]["integrity"]["hash"],
        "the second run continues the first run's chain"
    );
    let mode = std::fs::metadata(&evidence).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "evidence file mode");

    let (code, output) = agent_sensor(&["verify", "--public-key", public_s, evidence_s]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("result: clean"), "{output}");
    let (code, output) = agent_sensor(&["verify", "--json", "--public-key", public_s, evidence_s]);
    assert_eq!(code, 0, "{output}");
    let report: Value = serde_json::from_str(&output).expect("--json prints JSON");
    assert_eq!(report["verified"]["last_seq"], written.last().unwrap()["seq"]);
    assert_eq!(report["end"], "shutdown");
    let (code, output) = agent_sensor(&["verify", evidence_s]);
    assert_eq!(code, 4, "without the public key the signatures are unchecked: {output}");

    // Change one byte inside the kind of a record in the middle.
    let mut bytes = std::fs::read(&evidence).unwrap();
    let line_starts: Vec<usize> =
        std::iter::once(0).chain(bytes.iter().enumerate().filter(|&(_, &b)| b == b'\n').map(|(i, _)| i + 1)).collect();
    let middle = written.len() / 2;
    let start = line_starts[middle];
    let line = &bytes[start..line_starts[middle + 1]];
    let kind_at = line.windows(8).position(|w| w == b"\"kind\":\"").expect("a kind field") + 8;
    bytes[start + kind_at] = if bytes[start + kind_at] == b'X' { b'Y' } else { b'X' };
    std::fs::write(&evidence, &bytes).unwrap();

    let line_number = middle + 1;
    let (code, output) = agent_sensor(&["verify", "--public-key", public_s, evidence_s]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains(&format!("line {line_number},")), "names line {line_number}: {output}");
    let (_, output) = agent_sensor(&["verify", "--json", "--public-key", public_s, evidence_s]);
    let report: Value = serde_json::from_str(&output).expect("--json prints JSON");
    assert_eq!(report["first_bad"]["line"], line_number, "{output}");
    assert_eq!(report["first_bad"]["seq"], written[middle]["seq"], "{output}");
    assert_eq!(report["verified"]["last_seq"], written[middle - 1]["seq"], "{output}");
}
