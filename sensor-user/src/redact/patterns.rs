//! The credential forms the redactor looks for inside one string.
//!
//! Order is priority: when matches of several patterns overlap, their spans
//! are merged and the kind of the earliest pattern in this list names the
//! result. Provider formats therefore come before the generic forms that
//! also catch them (`OPENAI_API_KEY=sk-...` is an `openai_api_key`).

/// One credential form.
pub(super) struct Pattern {
    /// The name written in the placeholder and in `redactions[].kind`.
    pub kind: &'static str,
    /// The secret is the first capture group that took part in the match,
    /// or the whole match when the pattern has no group.
    pub regex: &'static str,
    /// Rejects a match whose secret has no ASCII digit. Random keys of 30
    /// or more characters almost always contain one, and words and package
    /// names that happen to share a provider's prefix usually do not.
    pub needs_digit: bool,
}

const fn pattern(kind: &'static str, regex: &'static str) -> Pattern {
    Pattern { kind, regex, needs_digit: false }
}

const fn random_pattern(kind: &'static str, regex: &'static str) -> Pattern {
    Pattern { kind, regex, needs_digit: true }
}

/// A quoted or bare value after `=` or a flag. A bare value ends at white
/// space, a quote, or a shell or query-string separator.
macro_rules! value {
    () => {
        r#"(?:"([^"]*)"|'([^']*)'|([^\s"'&;|<>]+))"#
    };
}

pub(super) const PATTERNS: &[Pattern] = &[
    // PEM private keys, whole block. A block cut by argv truncation has no
    // END line, so it runs to the end of the string.
    pattern("private_key", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)"),
    // Anthropic before OpenAI: `sk-ant-` also fits the OpenAI form.
    pattern("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    random_pattern("openai_api_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    pattern("stripe_secret_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    pattern("google_api_key", r"\bAIza[0-9A-Za-z_-]{30,}"),
    // Long-term (AKIA), temporary (ASIA) and other IAM access key ids.
    pattern("aws_access_key_id", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    pattern("aws_secret_access_key", r#"(?i)\baws_?secret_?access_?key["']?\s*[=:]\s*["']?([A-Za-z0-9/+=]{40})"#),
    pattern("github_token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}"),
    pattern("github_token", r"\bgithub_pat_[A-Za-z0-9_]{30,}"),
    pattern("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}"),
    pattern("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    random_pattern("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}"),
    // Header and payload are base64url JSON objects, so both start `eyJ`;
    // the signature is empty for `alg: none`.
    pattern("jwt", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"),
    pattern("bearer_token", r#"(?i)\bbearer\s+([^\s"']{8,})"#),
    pattern("authorization_header", r#"(?i)\b(?:proxy-)?authorization\s*:\s*(?:basic|token|digest)\s+([^\s"']+)"#),
    pattern(
        "header_credential",
        r#"(?i)\b(?:x-api-key|api-key|x-goog-api-key|x-auth-token|private-token|x-vault-token|cookie)\s*:\s*([^"'\r\n]+)"#,
    ),
    // `scheme://user:password@host`: only the password is secret.
    pattern("url_password", r#"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@"']*:([^/\s@"']+)@"#),
    // Query and fragment parameters that carry keys, tokens or signatures
    // (Gemini's `?key=`, OAuth's `#access_token=`, S3 and Azure SAS URLs).
    pattern(
        "url_query_secret",
        r#"[?&#](?i:key|api_?key|api-key|token|access_token|refresh_token|id_token|auth|auth_token|password|passwd|pwd|secret|client_secret|sig|signature|x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature|x-goog-credential)=([^&#\s"']+)"#,
    ),
    // OpenSSL's `-passin pass:SECRET` and `-passout pass:SECRET`.
    pattern("password", r#"\bpass:([^\s"']+)"#),
    // MySQL clients take the password glued to `-p`. A bare `-p` prompts,
    // and the next word is then the database name, so it is left alone.
    pattern(
        "password",
        r#"(?:^|[\s/])(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mariadb|mariadb-dump)\b[^;|&\n]*?\s-p([^\s"';|&]+)"#,
    ),
    pattern("password", r#"(?:^|[\s/])sshpass\s+-p\s*([^\s"';|&]+)"#),
    // `NAME=value` and `--name=value` where the name says it is a secret.
    // `PWD` and `OLDPWD` are directories, so `pwd` and `pass` count only
    // after an underscore; `tokens` is left out for `--max-tokens=N`.
    pattern(
        "secret_assignment",
        concat!(
            r"(?i)\b[A-Za-z0-9_.-]*?(?:token|secret|passw(?:or)?d|passphrase|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?|_pwd|_pass)\s*=\s*",
            value!()
        ),
    ),
    // `--password VALUE` inside one string, as in a `sh -c` script. Flags
    // and their values in separate arguments are handled per argv.
    pattern(
        "secret_flag_value",
        concat!(
            r"(?i)(?:^|\s)--?(?:password|passwd|token|api-key|api_key|apikey|api-token|access-token|auth-token|client-secret|storepass|keypass)\s+",
            r#"(?:"([^"]*)"|'([^']*)'|([^\s"'\-][^\s"';|&]*))"#
        ),
    ),
];

/// Flags whose next argument is a secret, compared in lowercase.
pub(super) const SECRET_FLAGS: &[&str] = &[
    "--password",
    "-password",
    "--passwd",
    "--pass",
    "--token",
    "-token",
    "--api-key",
    "--api_key",
    "--apikey",
    "--api-token",
    "--access-token",
    "--auth-token",
    "--client-secret",
    "--secret-key",
    "--secret-access-key",
    "--aws-secret-access-key",
    // Java keytool and jarsigner.
    "-storepass",
    "-keypass",
    "-srcstorepass",
    "-deststorepass",
    // `aws configure set aws_secret_access_key VALUE`.
    "aws_secret_access_key",
    "aws_session_token",
];

/// Programs that take a password glued to `-p` (`-pSECRET`), or, for
/// `sshpass`, also as the next argument.
pub(super) const GLUED_P_PASSWORD: &[&str] =
    &["mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlcheck", "mysqlshow", "mariadb", "mariadb-dump", "sshpass"];

/// Programs whose `-u USER:PASSWORD` or `--user USER:PASSWORD` carries a
/// password after the first colon.
pub(super) const USER_COLON_PASSWORD: &[&str] = &["curl"];
