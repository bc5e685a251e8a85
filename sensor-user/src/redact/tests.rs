use super::*;

const KEY: [u8; 32] = [7; 32];

fn redactor() -> Redactor {
    Redactor::new(&KEY)
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| word.to_string()).collect()
}

/// Redacts `argv` and returns it with the redactions.
fn redact(words: &[&str]) -> (Vec<String>, Vec<Redaction>) {
    let mut argv = args(words);
    let redactions = redactor().redact_argv(&mut argv);
    (argv, redactions)
}

// Secrets built at run time from parts, so this file contains no string that
// a secret scanner would flag as a real key.
fn repeat(unit: &str, count: usize) -> String {
    unit.repeat(count)
}

fn openai_key() -> String {
    format!("sk-{}", repeat("aB3dE5fG7h", 5))
}

fn openai_project_key() -> String {
    format!("sk-proj-{}", repeat("Zx9Yw8Vu7T", 6))
}

fn anthropic_key() -> String {
    format!("sk-ant-api03-{}", repeat("Qr5St6Uv7W", 8))
}

fn google_key() -> String {
    format!("AIza{}", "SyD3k9Lm2Np4Qr6St8Uv0Wx1Yz5Ab7Cd9E")
}

fn aws_key_id() -> String {
    format!("AKIA{}", "IOSFODNN7EXAMPL3")
}

fn aws_temporary_key_id() -> String {
    format!("ASIA{}", "Z2XQ4RT6YU8IO0PA")
}

fn aws_secret() -> String {
    format!("wJalrXUtnFEMI/K7MDENG/{}", "bPxRfiCYEXAMPLEKEY12")
}

fn github_token(prefix: &str) -> String {
    format!("{prefix}_{}", repeat("a1B2c3D4e5F6", 3))
}

fn github_pat() -> String {
    format!("github_pat_{}", repeat("11ABCDEFG0abcdefghij", 4))
}

fn slack_token(letter: char) -> String {
    format!("xox{letter}-1234567890-0987654321-{}", repeat("AbCd", 6))
}

fn gitlab_token() -> String {
    format!("glpat-{}", "x7Yq2Rk9Zt4Wm6Pn3Lb8")
}

fn huggingface_token() -> String {
    format!("hf_{}", repeat("kLm3NoP5qR", 4))
}

fn stripe_key() -> String {
    format!("sk_live_{}", repeat("4eC39HqLyjW", 3))
}

fn jwt() -> String {
    format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.{}", "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
}

fn private_key() -> String {
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
        "QyNTUxOQAAACDx2YCqTe2fRmP7yC3fxN1XcD0ZV3x2qmcF0Z8z9nN4cQAAAJgAAAAAAAAA"
    )
}

/// One corpus entry: the command line and the secrets it carries.
struct Case {
    name: &'static str,
    argv: Vec<String>,
    secrets: Vec<String>,
    /// The kind the first redaction must have.
    kind: &'static str,
}

fn case(name: &'static str, argv: &[&str], secrets: &[&str], kind: &'static str) -> Case {
    Case { name, argv: args(argv), secrets: secrets.iter().map(|s| s.to_string()).collect(), kind }
}

fn corpus() -> Vec<Case> {
    let openai = openai_key();
    let project = openai_project_key();
    let anthropic = anthropic_key();
    let google = google_key();
    let aws_id = aws_key_id();
    let aws_temporary = aws_temporary_key_id();
    let aws_secret = aws_secret();
    let ghp = github_token("ghp");
    let gho = github_token("gho");
    let ghs = github_token("ghs");
    let pat = github_pat();
    let slack_bot = slack_token('b');
    let slack_user = slack_token('p');
    let gitlab = gitlab_token();
    let hf = huggingface_token();
    let stripe = stripe_key();
    let jwt = jwt();
    let pem = private_key();
    let password = "c0rrect-h0rse-Battery";
    vec![
        // Provider key formats as bare arguments.
        case("openai key", &["python3", "agent.py", &openai], &[&openai], "openai_api_key"),
        case("openai project key", &["node", "run.js", &project], &[&project], "openai_api_key"),
        case("anthropic key", &["claude", &anthropic], &[&anthropic], "anthropic_api_key"),
        case("google key", &["gcloud", "x", &google], &[&google], "google_api_key"),
        case("aws key id", &["tool", &aws_id], &[&aws_id], "aws_access_key_id"),
        case("aws temporary key id", &["tool", &aws_temporary], &[&aws_temporary], "aws_access_key_id"),
        case("github ghp", &["gh", &ghp], &[&ghp], "github_token"),
        case("github gho", &["gh", &gho], &[&gho], "github_token"),
        case("github ghs", &["gh", &ghs], &[&ghs], "github_token"),
        case("github fine-grained pat", &["gh", &pat], &[&pat], "github_token"),
        case("slack bot token", &["slack", &slack_bot], &[&slack_bot], "slack_token"),
        case("slack user token", &["slack", &slack_user], &[&slack_user], "slack_token"),
        case("gitlab token", &["glab", &gitlab], &[&gitlab], "gitlab_token"),
        case("hugging face token", &["huggingface-cli", "login", &hf], &[&hf], "huggingface_token"),
        case("stripe live key", &["stripe", &stripe], &[&stripe], "stripe_secret_key"),
        case("jwt", &["tool", &jwt], &[&jwt], "jwt"),
        case("private key block", &["tool", "--key", &pem], &[&pem[40..90]], "private_key"),

        // Environment-style arguments.
        case("env openai", &["env", &format!("OPENAI_API_KEY={openai}"), "python3"], &[&openai], "openai_api_key"),
        case("env token", &["env", "FOO_TOKEN=plainvalue123", "run"], &["plainvalue123"], "secret_assignment"),
        case("env password", &["env", "DB_PASSWORD=hunter2hunter2", "run"], &["hunter2hunter2"], "secret_assignment"),
        case("env underscore pwd", &["env", "MYSQL_PWD=s3cr3tpw", "mysql"], &["s3cr3tpw"], "secret_assignment"),
        case("env secret", &["env", "CLIENT_SECRET=abc.def.ghi", "x"], &["abc.def.ghi"], "secret_assignment"),
        case(
            "aws secret assignment",
            &["env", &format!("AWS_SECRET_ACCESS_KEY={aws_secret}"), "aws"],
            &[&aws_secret],
            "aws_secret_access_key",
        ),

        // Flags.
        case("api key flag equals", &["agent", &format!("--api-key={project}")], &[&project], "openai_api_key"),
        case("api key flag plain", &["agent", "--api-key=notaprovidervalue"], &["notaprovidervalue"], "secret_assignment"),
        case("password flag next", &["tool", "--password", password], &[password], "password"),
        case("token flag next", &["kubeadm", "join", "--token", "abcdef.0123456789abcdef"], &["abcdef.0123456789abcdef"], "secret_flag_value"),
        case("keytool storepass", &["keytool", "-list", "-storepass", "changeit99"], &["changeit99"], "password"),
        case("aws configure set", &["aws", "configure", "set", "aws_secret_access_key", &aws_secret], &[&aws_secret], "aws_secret_access_key"),
        case("mysql glued password", &["mysql", "-u", "root", "-pS3cretPass", "db"], &["S3cretPass"], "password"),
        case("sshpass password", &["sshpass", "-p", "Pa55word!", "ssh", "host"], &["Pa55word!"], "password"),
        case("curl user password", &["curl", "-u", "alice:Wonder1and", "https://x"], &["Wonder1and"], "password"),
        case("openssl pass", &["openssl", "rsa", "-passin", "pass:Op3nSsl!"], &["Op3nSsl!"], "password"),

        // Headers.
        case("curl bearer", &["curl", "-H", &format!("Authorization: Bearer {openai}"), "https://api"], &[&openai], "openai_api_key"),
        case("curl bearer opaque", &["curl", "-H", "Authorization: Bearer opaqueTokenValue42", "u"], &["opaqueTokenValue42"], "bearer_token"),
        case("curl basic", &["curl", "-H", "Authorization: Basic YWxpY2U6c2VjcmV0", "u"], &["YWxpY2U6c2VjcmV0"], "authorization_header"),
        case("curl x-api-key", &["curl", "-H", &format!("x-api-key: {anthropic}"), "u"], &[&anthropic], "anthropic_api_key"),
        case("curl cookie", &["curl", "-H", "Cookie: session=abc123def", "u"], &["session=abc123def"], "header_credential"),

        // URLs.
        case("url password", &["git", "clone", "https://user:Gh0stPass@github.example/r.git"], &["Gh0stPass"], "url_password"),
        case("url password postgres", &["psql", "postgres://app:pgS3cret@db:5432/app"], &["pgS3cret"], "url_password"),
        case("url key query", &["curl", &format!("https://generativelanguage.example/v1?key={google}")], &[&google], "google_api_key"),
        case("url key query opaque", &["curl", "https://h/x?alt=json&key=opaqueKey123"], &["opaqueKey123"], "url_query_secret"),
        case("url token query", &["curl", "https://h/x?token=tok3nValue&x=1"], &["tok3nValue"], "url_query_secret"),
        case("url access token", &["xdg-open", "https://app/cb#access_token=at0kenValue&state=1"], &["at0kenValue"], "url_query_secret"),
        case("url signature", &["curl", "https://bucket/o?X-Amz-Signature=0a1b2c3d4e5f&X-Amz-Expires=60"], &["0a1b2c3d4e5f"], "url_query_secret"),

        // Shell scripts carry several forms in one argument.
        case(
            "shell script",
            &[
                "sh",
                "-c",
                &format!("export GITHUB_TOKEN={ghp}; curl -H 'Authorization: Bearer {jwt}' --password 'pw with space' https://u:p4ss@h/"),
            ],
            &[&ghp, &jwt, "pw with space", "p4ss"],
            "github_token",
        ),
        case("shell mysql", &["bash", "-c", "mysql -u root -pSh3llPass db < dump.sql"], &["Sh3llPass"], "password"),
        case("shell quoted assignment", &["sh", "-c", "API_KEY=\"quoted value 1\" ./run"], &["quoted value 1"], "secret_assignment"),
    ]
}

#[test]
fn corpus_never_in_clear() {
    let redactor = redactor();
    let corpus = corpus();
    assert!(corpus.len() >= 30, "the corpus has {} cases", corpus.len());
    for case in corpus {
        let mut argv = case.argv.clone();
        let redactions = redactor.redact_argv(&mut argv);
        let joined = argv.join(" ");
        for secret in &case.secrets {
            assert!(!joined.contains(secret.as_str()), "{}: {secret:?} in clear in {joined:?}", case.name);
        }
        assert!(!redactions.is_empty(), "{}: no redaction listed", case.name);
        assert_eq!(redactions[0].kind, case.kind, "{}: kind of the first redaction in {joined:?}", case.name);
        assert!(joined.contains("[REDACTED:"), "{}: no placeholder in {joined:?}", case.name);
    }
}

#[test]
fn placeholder_format_and_field() {
    let key = openai_project_key();
    let (argv, redactions) = redact(&["agent", "--verbose", &format!("--api-key={key}")]);
    let hmac = &redactions[0].hmac;
    assert_eq!(argv[2], format!("--api-key=[REDACTED:openai_api_key:{hmac}]"));
    assert_eq!(redactions.len(), 1);
    assert_eq!(redactions[0].field, Field::Argv(2));
    assert_eq!(redactions[0].field.to_string(), "argv[2]");
    assert_eq!(hmac.len(), 12);
    assert!(hmac.bytes().all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase()), "{hmac}");
}

#[test]
fn hmac_is_prefix_of_keyed_sha256() {
    let key = openai_key();
    let (_, redactions) = redact(&["x", &key]);
    let mut mac = HmacSha256::new_from_slice(&KEY).unwrap();
    mac.update(key.as_bytes());
    let full: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(*redactions[0].hmac, full[..12]);
}

#[test]
fn same_secret_same_hmac_across_forms() {
    let key = anthropic_key();
    let (_, bare) = redact(&["x", &key]);
    let (_, assigned) = redact(&["env", &format!("ANTHROPIC_API_KEY={key}")]);
    let (_, header) = redact(&["curl", "-H", &format!("x-api-key: {key}")]);
    assert_eq!(bare[0].hmac, assigned[0].hmac);
    assert_eq!(bare[0].hmac, header[0].hmac);
}

#[test]
fn different_key_different_hmac() {
    let secret = openai_key();
    let mut first = args(&["x", &secret]);
    let mut second = first.clone();
    let a = Redactor::new(&[1; 32]).redact_argv(&mut first);
    let b = Redactor::new(&[2; 32]).redact_argv(&mut second);
    assert_ne!(a[0].hmac, b[0].hmac);
}

#[test]
fn several_secrets_in_one_argument() {
    let (argv, redactions) = redact(&["sh", "-c", &format!("A_TOKEN=one111 B_TOKEN=two222 {}", github_pat())]);
    assert_eq!(redactions.len(), 3, "{argv:?}");
    assert!(redactions.iter().all(|r| r.field == Field::Argv(2)));
    assert!(!argv[2].contains("one111") && !argv[2].contains("two222"), "{argv:?}");
}

#[test]
fn paths_are_redacted() {
    let redactor = redactor();
    let mut redactions = Vec::new();
    let path = format!("/tmp/{}/run.sh", github_token("ghp"));
    let redacted = redactor.redact_text(&path, Field::ExecPath, &mut redactions);
    assert!(redacted.starts_with("/tmp/[REDACTED:github_token:"), "{redacted}");
    assert!(redacted.ends_with("]/run.sh"), "{redacted}");
    assert_eq!(redactions[0].field.to_string(), "exec_path");
}

#[test]
fn truncated_private_key_runs_to_end() {
    let pem = private_key();
    let cut = &pem[..80];
    let (argv, redactions) = redact(&["x", &format!("--key={cut}")]);
    assert_eq!(redactions[0].kind, "private_key");
    assert!(!argv[1].contains("b3BlbnNz"), "{argv:?}");
}

/// Ordinary command lines that must come out unchanged.
#[test]
fn ordinary_arguments_untouched() {
    let lines: &[&[&str]] = &[
        &["ls", "--help"],
        &["ls", "-la", "/usr/local/bin", "/home/user/.config"],
        &["git", "checkout", "3f2a9c1e7b4d5a6f8e9d0c1b2a3f4e5d6c7b8a9f"],
        &["git", "log", "--oneline", "-n", "20", "a1b2c3d"],
        &["docker", "run", "--name", "550e8400-e29b-41d4-a716-446655440000", "-p", "8080:80", "nginx"],
        &["python3", "-m", "pip", "install", "scikit-learn", "sk-video"],
        &["llm", "--max-tokens=4096", "--temperature=0.2", "--model", "gpt-4o"],
        &["env", "PWD=/home/user", "OLDPWD=/tmp", "TERM=xterm-256color"],
        &["docker", "login", "--password-stdin", "-u", "robot"],
        &["curl", "-u", "alice", "https://example.com/path?page=2&sort=asc"],
        &["git", "clone", "git@github.com:org/repo.git"],
        &["git", "clone", "ssh://git@host.example:22/repo.git"],
        &["mysql", "-p", "appdb"],
        &["mysql", "--port=3306", "-P", "3306"],
        &["ssh", "-i", "/home/user/.ssh/id_ed25519", "host"],
        &["kubectl", "get", "secret", "--token-file=/var/run/token"],
        &["sh", "-c", "echo $API_TOKEN | tool --token $TOKEN"],
        &["sh", "-c", "TOKEN=${GITHUB_TOKEN} make"],
        &["node", "server.js", "--port", "3000", "-v"],
        &["tar", "-xzf", "archive-2024-01-01.tar.gz", "-C", "/opt"],
        &["a", "b", "yes", "no", "-", "--", "="],
        &["sha256sum", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
        &["bash", "-c", "cd /src && cargo build --release 2>&1 | tee build.log"],
        &["nginx", "-g", "daemon off;"],
        &["java", "-Dpassword.file=/etc/app/pw", "-jar", "app.jar"],
    ];
    let redactor = redactor();
    for line in lines {
        let mut argv = args(line);
        let redactions = redactor.redact_argv(&mut argv);
        assert!(redactions.is_empty(), "{line:?} got redactions {redactions:?}");
        assert_eq!(argv, args(line));
    }
}

#[test]
fn untouched_text_is_borrowed() {
    let redactor = redactor();
    let mut redactions = Vec::new();
    let text = "/usr/bin/python3";
    assert!(matches!(redactor.redact_text(text, Field::Exe, &mut redactions), Cow::Borrowed(_)));
    assert!(redactions.is_empty());
}

#[test]
fn every_pattern_compiles_alone() {
    for pattern in PATTERNS {
        assert!(Regex::new(pattern.regex).is_ok(), "{} does not compile", pattern.kind);
    }
}

/// Seeds a parent and child whose command lines hold secrets and checks
/// the record: placeholders in `argv`, and `redactions` naming both.
#[test]
fn record_lists_process_and_parent_redactions() {
    use crate::{
        config::ProcessConfig,
        evidence::{Clock, Host, ProcessView, Record, Stamper},
        process::{procfs::ProcEntry, ProcKey, ProcessTable},
    };
    let config = ProcessConfig { procfs_path: "/nonexistent-procfs".into(), ..Default::default() };
    let mut table = ProcessTable::new(config, "boot".to_owned(), redactor());
    let parent_secret = github_pat();
    let child_secret = openai_project_key();
    let entry = |pid, ppid, argv: &[&str]| ProcEntry { pid, ppid, start_ticks: 5, argv: args(argv), comm: "x".into(), ..Default::default() };
    let keys = table.seed(vec![
        entry(10, 1, &["sh", "-c", &format!("GH_TOKEN={parent_secret} ./agent")]),
        entry(11, 10, &["agent", "--verbose", &format!("--api-key={child_secret}")]),
    ]);
    let child: ProcKey = keys[1];
    let process = table.get(&child).unwrap();
    let clock = Clock::from_system();
    let mut stamper = Stamper::new(Host::new("h", "b"), clock);
    let mut record = Record::new(stamper.head("process.snapshot", 0));
    record.process = Some(ProcessView::new(&table, process, None, &clock, child.start_ns));
    let json = serde_json::to_value(&record).unwrap();
    let text = json.to_string();

    assert!(!text.contains(&parent_secret), "{text}");
    assert!(!text.contains(&child_secret), "{text}");
    let argv2 = json["process"]["argv"][2].as_str().unwrap();
    assert!(argv2.starts_with("--api-key=[REDACTED:openai_api_key:"), "{argv2}");
    let redactions = json["redactions"].as_array().expect("a top-level redactions array");
    assert_eq!(redactions.len(), 2, "{text}");
    assert_eq!(redactions[0]["field"], "process.argv[2]");
    assert_eq!(redactions[0]["kind"], "openai_api_key");
    assert!(argv2.contains(redactions[0]["hmac"].as_str().unwrap()));
    assert_eq!(redactions[1]["field"], "process.parent.argv[2]");
    assert_eq!(redactions[1]["kind"], "github_token");
    assert!(json["process"].get("redactions").is_none(), "redactions belong at the top level");
}

#[test]
fn record_without_secrets_has_no_redactions() {
    use crate::{
        config::ProcessConfig,
        evidence::{Clock, Host, ProcessView, Record, Stamper},
        process::{procfs::ProcEntry, ProcessTable},
    };
    let config = ProcessConfig { procfs_path: "/nonexistent-procfs".into(), ..Default::default() };
    let mut table = ProcessTable::new(config, "boot".to_owned(), redactor());
    let keys = table.seed(vec![ProcEntry { pid: 10, ppid: 1, start_ticks: 5, argv: args(&["ls", "-la"]), ..Default::default() }]);
    let clock = Clock::from_system();
    let mut stamper = Stamper::new(Host::new("h", "b"), clock);
    let mut record = Record::new(stamper.head("process.snapshot", 0));
    record.process = Some(ProcessView::new(&table, table.get(&keys[0]).unwrap(), None, &clock, keys[0].start_ns));
    let json = serde_json::to_value(&record).unwrap();
    assert!(json.get("redactions").is_none(), "{json}");
    assert_eq!(json["process"]["argv"], serde_json::json!(["ls", "-la"]));
}
