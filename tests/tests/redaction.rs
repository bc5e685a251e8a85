//! Credential redaction against the real kernel: secrets in a command line
//! must reach no output of the sensor in clear.

use std::os::unix::process::CommandExt as _;

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

/// Credential forms that must not survive a real exec, as (command line,
/// secret); the first word becomes the process's argv[0]. Values are random
/// per run, so a match can only be a leak.
fn credential_forms() -> Vec<(Vec<String>, String)> {
    let random = random_alphanumeric;
    let mut forms: Vec<(Vec<String>, String)> = Vec::new();
    let mut add = |args: &[&str], secret: &str| forms.push((args.iter().map(|a| a.to_string()).collect(), secret.to_owned()));
    let openai = format!("sk-proj-{}", random(48));

    // Provider and platform keys as bare arguments.
    add(&["python3", &openai], &openai);
    let legacy = format!("sk-{}T3BlbkFJ{}", random(20), random(20));
    add(&["agent", "--key", &legacy], &legacy);
    let anthropic = format!("sk-ant-api03-{}-{}AA", random(40), random(40));
    add(&["claude", &anthropic], &anthropic);
    let google = format!("AIza{}", random(35));
    add(&["gcloud", &google], &google);
    let aws_id = format!("AKIA{}", random(16).to_uppercase());
    add(&["aws", &aws_id], &aws_id);
    let aws_secret = format!("{}/{}+{}", random(20), random(9), random(9));
    add(&["env", &format!("AWS_SECRET_ACCESS_KEY={aws_secret}")], &aws_secret);
    for prefix in ["ghp", "gho", "ghs", "ghu"] {
        let token = format!("{prefix}_{}", random(36));
        add(&["gh", &token], &token);
    }
    let pat = format!("github_pat_{}_{}", random(22), random(59));
    add(&["gh", &pat], &pat);
    let slack = format!("xoxb-{}-{}-{}", random(11).to_lowercase().replace(|c: char| !c.is_ascii_digit(), "1"), "123456789012", random(24));
    add(&["slack", &slack], &slack);
    let gitlab = format!("glpat-{}", random(20));
    add(&["glab", &gitlab], &gitlab);
    let hf = format!("hf_{}", random(34));
    add(&["huggingface-cli", &hf], &hf);
    let stripe = format!("sk_live_{}", random(24));
    add(&["stripe", &stripe], &stripe);
    let jwt_payload = random(40);
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.eyJ{jwt_payload}.{}", random(43));
    add(&["tool", &jwt], &jwt_payload);

    // Flags and programs whose next or glued argument is a secret.
    let opaque = random(24);
    add(&["agent", &format!("--api-key={opaque}")], &opaque);
    let password = random(16);
    add(&["tool", "--password", &password], &password);
    let token = random(22);
    add(&["kubeadm", "--token", &token], &token);
    let glued = random(14);
    add(&["mysql", "-u", "root", &format!("-p{glued}")], &glued);
    let sshpass = random(12);
    add(&["sshpass", "-p", &sshpass, "ssh"], &sshpass);
    let basic = random(18);
    add(&["curl", "-u", &format!("alice:{basic}")], &basic);

    // Headers.
    let bearer = random(30);
    add(&["curl", "-H", &format!("Authorization: Bearer {bearer}")], &bearer);
    let x_api_key = random(30);
    add(&["curl", "-H", &format!("x-api-key: {x_api_key}")], &x_api_key);

    // URLs.
    let url_password = random(16);
    add(&["git", &format!("https://user:{url_password}@127.0.0.1/repo.git")], &url_password);
    let postgres = random(16);
    add(&["psql", &format!("postgres://app:{postgres}@127.0.0.1:5432/db")], &postgres);
    let query_key = random(20);
    add(&["curl", &format!("https://127.0.0.1/v1?alt=json&key={query_key}")], &query_key);
    let query_token = random(20);
    add(&["curl", &format!("https://127.0.0.1/x?token={query_token}&a=1")], &query_token);
    let fragment = random(20);
    add(&["xdg-open", &format!("https://127.0.0.1/cb#access_token={fragment}&state=1")], &fragment);

    // Assignments and shell scripts.
    let db_password = random(16);
    add(&["env", &format!("DB_PASSWORD={db_password}")], &db_password);
    let client_secret = random(16);
    add(&["env", &format!("CLIENT_SECRET={client_secret}")], &client_secret);
    let script = random(18);
    add(&["sh", "-c", &format!("export GITHUB_TOKEN=x; curl --password '{script}' https://127.0.0.1/")], &script);
    forms
}

#[test]
fn credential_corpus_through_real_execs() {
    require_sensor!();
    let scratch = TempDir::new("redaction-corpus");
    let evidence_path = scratch.path().join("evidence.jsonl");
    let sensor = Sensor::start(&format!("[output]\nevidence_path = \"{}\"\n", evidence_path.display()));
    let forms = credential_forms();
    assert!(forms.len() >= 30, "the corpus has {} forms", forms.len());

    // Each form is the command line of a real process. The same secrets
    // also sit in the process's environment, which the sensor never reads
    // into a record.
    let mut pids = Vec::new();
    for (index, (args, secret)) in forms.iter().enumerate() {
        let mut child = std::process::Command::new("/bin/true")
            .arg0(&args[0])
            .args(&args[1..])
            .env(format!("AGENT_SENSOR_TEST_SECRET_{index}"), secret)
            .env("OPENAI_API_KEY", secret)
            .spawn()
            .expect("start /bin/true");
        pids.push(child.id());
        assert!(child.wait().expect("wait for /bin/true").success());
    }
    for pid in &pids {
        sensor.expect("the exec of /bin/true", |r| is_kind_for_pid(r, "process.exec", *pid));
    }

    let stderr = sensor.stderr();
    let records = sensor.stop();
    let printed: String = records.iter().map(|r| r.to_string() + "\n").collect();
    let evidence = String::from_utf8_lossy(&std::fs::read(&evidence_path).unwrap_or_default()).into_owned();
    assert!(!evidence.is_empty(), "no evidence file at {}", evidence_path.display());
    for (args, secret) in &forms {
        assert!(!printed.contains(secret.as_str()), "{secret} of {args:?} in clear on standard output");
        assert!(!evidence.contains(secret.as_str()), "{secret} of {args:?} in clear in the evidence file");
        assert!(!stderr.contains(secret.as_str()), "{secret} of {args:?} in clear in the log");
    }
}
