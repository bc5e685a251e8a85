//! Credential redaction against the real kernel: secrets in a command line
//! must reach no output of the sensor in clear.

use integration_tests::{argv, is_kind_for_pid, require_sensor, Sensor, TempDir};

/// Random-looking characters unique to this run, so a secret found in the
/// output can only have come from this test's command line.
fn random_alphanumeric(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut state = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let mut text = String::with_capacity(length);
    for _ in 0..length {
        // xorshift64: enough spread for test data, not for keys.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(ALPHABET[(state % ALPHABET.len() as u64) as usize] as char);
    }
    // A digit for certain, as provider key patterns expect one.
    text.replace_range(0..1, "7");
    text
}

#[test]
fn exec_argv_redaction() {
    require_sensor!();
    // The evidence file lives outside the sensor's own directory, which
    // `Sensor::stop` removes, so it can be read after the final records.
    let scratch = TempDir::new("redaction");
    let evidence_path = scratch.path().join("evidence.jsonl");
    let sensor = Sensor::start(&format!("[output]\nevidence_path = \"{}\"\n", evidence_path.display()));
    let openai_key = format!("sk-proj-{}", random_alphanumeric(48));
    let url_password = random_alphanumeric(20);
    let github_token = format!("ghp_{}", random_alphanumeric(36));
    let bearer = random_alphanumeric(32);
    let secrets = [openai_key.clone(), url_password.clone(), github_token.clone(), bearer.clone()];

    let status = std::process::Command::new("sh")
        .args([
            "-c",
            "exit 0",
            "placeholder",
            &format!("--api-key={openai_key}"),
            &format!("https://user:{url_password}@127.0.0.1/x"),
            &format!("GH_TOKEN={github_token}"),
            &format!("Authorization: Bearer {bearer}"),
        ])
        .spawn()
        .expect("start sh");
    let pid = status.id();
    let output = status.wait_with_output().expect("wait for sh");
    assert!(output.status.success());

    let exec = sensor.expect("the exec of sh", |r| is_kind_for_pid(r, "process.exec", pid));
    let args = argv(&exec);
    assert_eq!(args[..4], ["sh", "-c", "exit 0", "placeholder"], "{exec}");
    assert!(args[4].starts_with("--api-key=[REDACTED:openai_api_key:"), "{exec}");
    assert!(args[5].starts_with("https://user:[REDACTED:url_password:"), "{exec}");
    assert!(args[5].ends_with("]@127.0.0.1/x"), "{exec}");
    assert!(args[6].starts_with("GH_TOKEN=[REDACTED:github_token:"), "{exec}");
    assert!(args[7].starts_with("Authorization: Bearer [REDACTED:bearer_token:"), "{exec}");

    let redactions = exec["redactions"].as_array().unwrap_or_else(|| panic!("no redactions array: {exec}"));
    let listed: Vec<(&str, &str)> =
        redactions.iter().map(|r| (r["field"].as_str().unwrap_or(""), r["kind"].as_str().unwrap_or(""))).collect();
    assert_eq!(
        listed,
        [
            ("process.argv[4]", "openai_api_key"),
            ("process.argv[5]", "url_password"),
            ("process.argv[6]", "github_token"),
            ("process.argv[7]", "bearer_token"),
        ],
        "{exec}"
    );
    for (index, redaction) in redactions.iter().enumerate() {
        let hmac = redaction["hmac"].as_str().unwrap_or_default();
        assert_eq!(hmac.len(), 12, "{redaction}");
        assert!(args[4 + index].contains(&format!(":{hmac}]")), "placeholder of {redaction} in {exec}");
    }

    // `stop` consumes the guard, so the log is read before it: lines logged
    // during shutdown are not checked.
    let stderr = sensor.stderr();
    let records = sensor.stop();
    assert!(records.iter().any(|r| r["kind"] == "sensor.stop"), "the sensor did not stop cleanly");
    let printed: String = records.iter().map(|r| r.to_string() + "\n").collect();
    let evidence = std::fs::read(&evidence_path).unwrap_or_default();
    assert!(!evidence.is_empty(), "no evidence file at {}", evidence_path.display());
    let evidence = String::from_utf8_lossy(&evidence);
    for secret in &secrets {
        assert!(!printed.contains(secret.as_str()), "{secret} in clear on standard output");
        assert!(!evidence.contains(secret.as_str()), "{secret} in clear in the evidence file");
        assert!(!stderr.contains(secret.as_str()), "{secret} in clear in the log");
    }
}
