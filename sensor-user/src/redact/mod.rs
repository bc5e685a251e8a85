//! Credential redaction for command lines and paths.
//!
//! The process table calls [`Redactor`] once when a process enters it: at
//! exec, at the start-up scan, or when inferred from `/proc`. It stores
//! only the redacted argv, exec path and executable path, together with the
//! list of what was replaced. Records then copy the stored strings, so no
//! record carries the original and redaction costs nothing per record.
//!
//! Each secret becomes `[REDACTED:<kind>:<hmac>]`, where `<hmac>` is the
//! first 12 hex digits of HMAC-SHA256 over the secret, keyed with the
//! daemon's credential fingerprint key. Analysts can match the same secret
//! across records, and against the `llm` stage's credential fingerprints
//! (the same HMAC, cut longer), without seeing it. The forms found inside
//! one string are in `patterns.rs`. Rules that need the previous argument
//! (`--password VALUE`) or the program name (`mysql -pVALUE`) are here.

mod patterns;
#[cfg(test)]
mod tests;

use std::{borrow::Cow, fmt};

use hmac::{Hmac, Mac};
use regex::{Regex, RegexSet};
use sha2::Sha256;

use patterns::{Pattern, GLUED_P_PASSWORD, PATTERNS, SECRET_FLAGS, USER_COLON_PASSWORD};

type HmacSha256 = Hmac<Sha256>;

/// Hex digits of the HMAC shown in a placeholder: 48 bits, enough to tell
/// secrets apart in one deployment and too few to confirm a guess offline
/// with confidence once many secrets are in play.
const HMAC_HEX_DIGITS: usize = 12;

/// The process field a redaction was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Argv(usize),
    ExecPath,
    Exe,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Argv(index) => write!(f, "argv[{index}]"),
            Field::ExecPath => f.write_str("exec_path"),
            Field::Exe => f.write_str("exe"),
        }
    }
}

/// One replaced secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    pub field: Field,
    pub kind: &'static str,
    /// The HMAC prefix written in the placeholder.
    pub hmac: Box<str>,
}

/// A secret's byte range in a string and the pattern priority that named it.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: &'static str,
    priority: usize,
}

/// Finds and replaces credentials. Build it once: it compiles every pattern.
pub struct Redactor {
    mac: HmacSha256,
    /// All patterns in one automaton, so a string without any candidate is
    /// rejected in a single pass.
    set: RegexSet,
    regexes: Vec<Regex>,
}

impl Redactor {
    /// Compiles the patterns and keys the HMAC with `key`. The caller keeps
    /// custody of the key: only the keyed HMAC state is stored here.
    pub fn new(key: &[u8; 32]) -> Self {
        // HMAC (RFC 2104) takes keys of any length: `new_from_slice` in the
        // hmac 0.12 crate never returns an error for it.
        let mac = HmacSha256::new_from_slice(key).expect("HMAC-SHA256 accepts a 32-byte key");
        let sources = PATTERNS.iter().map(|pattern| pattern.regex);
        // The patterns are constants, so a compile error is a bug that every
        // test run catches.
        let set = RegexSet::new(sources).expect("the redaction patterns compile");
        let regexes = PATTERNS.iter().map(|pattern| Regex::new(pattern.regex).expect("a redaction pattern compiles")).collect();
        Redactor { mac, set, regexes }
    }

    /// Returns the placeholder's HMAC prefix for `secret`.
    fn hmac_prefix(&self, secret: &str) -> Box<str> {
        let mut mac = self.mac.clone();
        mac.update(secret.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hex = String::with_capacity(HMAC_HEX_DIGITS);
        for byte in &digest[..HMAC_HEX_DIGITS / 2] {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex.into_boxed_str()
    }

    fn placeholder(&self, kind: &'static str, secret: &str, field: Field, redactions: &mut Vec<Redaction>) -> String {
        let hmac = self.hmac_prefix(secret);
        let text = format!("[REDACTED:{kind}:{hmac}]");
        redactions.push(Redaction { field, kind, hmac });
        text
    }

    /// Replaces every credential found inside `text`, appending one entry
    /// per secret to `redactions`. Borrows `text` when nothing matched.
    pub fn redact_text<'a>(&self, text: &'a str, field: Field, redactions: &mut Vec<Redaction>) -> Cow<'a, str> {
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return Cow::Borrowed(text);
        }
        let mut spans = Vec::new();
        for priority in matched.iter() {
            find_spans(&PATTERNS[priority], &self.regexes[priority], priority, text, &mut spans);
        }
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let spans = merge(spans);
        let mut output = String::with_capacity(text.len());
        let mut copied = 0;
        for span in spans {
            output.push_str(&text[copied..span.start]);
            output.push_str(&self.placeholder(span.kind, &text[span.start..span.end], field, redactions));
            copied = span.end;
        }
        output.push_str(&text[copied..]);
        Cow::Owned(output)
    }

    /// Redacts a command line in place and returns what was replaced.
    /// Allocates only for arguments that hold a secret.
    pub fn redact_argv(&self, argv: &mut [String]) -> Vec<Redaction> {
        let mut redactions = Vec::new();
        let program = argv.first().map_or("", |arg0| context_program(basename(arg0)));
        for index in 0..argv.len() {
            let (before, rest) = argv.split_at_mut(index);
            let arg = &mut rest[0];
            let flag = before.last().map(String::as_str);
            let field = Field::Argv(index);
            if let Some(replacement) = self.redact_by_context(program, flag, arg, field, &mut redactions) {
                *arg = replacement;
                continue;
            }
            if let Cow::Owned(redacted) = self.redact_text(arg, field, &mut redactions) {
                *arg = redacted;
            }
        }
        redactions
    }

    /// Applies the rules that need the previous argument (`flag`) or the
    /// program name: the value after a secret flag, curl's
    /// `-u USER:PASSWORD`, and the password after or glued to `-p`.
    /// Returns the replacement argument.
    fn redact_by_context(
        &self,
        program: &str,
        flag: Option<&str>,
        arg: &str,
        field: Field,
        redactions: &mut Vec<Redaction>,
    ) -> Option<String> {
        if arg.is_empty() {
            return None;
        }
        if let Some(flag) = flag {
            if let Some(flag) = SECRET_FLAGS.iter().find(|known| known.eq_ignore_ascii_case(flag)) {
                let kind = if flag.contains("secret_access_key") || flag.contains("secret-access-key") {
                    "aws_secret_access_key"
                } else if flag.contains("pass") {
                    "password"
                } else {
                    "secret_flag_value"
                };
                return Some(self.placeholder(kind, arg, field, redactions));
            }
            if USER_COLON_PASSWORD.contains(&program) && (flag == "-u" || flag == "--user") {
                let (user, password) = arg.split_once(':')?;
                if password.is_empty() {
                    return None;
                }
                return Some(format!("{user}:{}", self.placeholder("password", password, field, redactions)));
            }
            // The MySQL clients' bare `-p` prompts, and the next word is
            // then the database name, so only sshpass takes a value there.
            if program == "sshpass" && flag == "-p" {
                return Some(self.placeholder("password", arg, field, redactions));
            }
        }
        if GLUED_P_PASSWORD.contains(&program) {
            let password = arg.strip_prefix("-p").filter(|rest| !rest.is_empty() && !rest.starts_with('-'))?;
            return Some(format!("-p{}", self.placeholder("password", password, field, redactions)));
        }
        None
    }
}

/// Returns the table's name for `program` when a per-program rule applies
/// to it, else an empty string.
fn context_program(program: &str) -> &'static str {
    GLUED_P_PASSWORD.iter().chain(USER_COLON_PASSWORD).find(|known| **known == program).copied().unwrap_or("")
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Collects the secret spans of `pattern` in `text`.
fn find_spans(pattern: &Pattern, regex: &Regex, priority: usize, text: &str, spans: &mut Vec<Span>) {
    for captures in regex.captures_iter(text) {
        // The first group that took part holds the secret, as documented
        // on `Pattern::regex`; patterns without groups mean the whole match.
        let secret = captures.iter().skip(1).flatten().next().or_else(|| captures.get(0));
        let Some(secret) = secret else { continue };
        let value = secret.as_str();
        if value.is_empty() || is_variable_reference(value) {
            continue;
        }
        if pattern.needs_digit && !value.bytes().any(|byte| byte.is_ascii_digit()) {
            continue;
        }
        spans.push(Span { start: secret.start(), end: secret.end(), kind: pattern.kind, priority });
    }
}

/// `$TOKEN` or `${TOKEN}` in a script names a variable, not its value.
fn is_variable_reference(value: &str) -> bool {
    let Some(name) = value.strip_prefix('$') else { return false };
    let name = name.strip_prefix('{').and_then(|inner| inner.strip_suffix('}')).unwrap_or(name);
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// Sorts spans and merges overlapping ones, so no part of a secret that two
/// patterns saw differently stays in clear. A merged span takes the kind of
/// its highest-priority pattern.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|span| (span.start, span.priority));
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start < last.end => {
                last.end = last.end.max(span.end);
                if span.priority < last.priority {
                    last.priority = span.priority;
                    last.kind = span.kind;
                }
            }
            _ => merged.push(span),
        }
    }
    merged
}
