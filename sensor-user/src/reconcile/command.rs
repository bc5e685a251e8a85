//! Comparison of a reported shell command with an observed command line.
//!
//! Agents report the command a shell tool ran as one string (`ls -la /tmp`,
//! `cd src && make`), while the kernel records an argv: usually `bash -c
//! CMD`, or the words of the command for tools that exec directly. Both sides are
//! brought to a comparable form: the `-c` string of a shell, or the argv
//! against the reported command split into words as a POSIX shell would
//! split a simple command (quotes and backslashes; no expansions).

/// Shells whose `-c` argument is the command they run.
const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ash", "ksh", "mksh", "fish", "busybox"];

/// Degree of agreement between an observed argv and a reported command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Agreement {
    /// Only the program (first word) is the same.
    Program,
    /// The command line is the same, up to whitespace and quoting.
    Command,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Returns the string a shell was asked to run with `-c`, when `argv` is a
/// shell invocation (`bash -c CMD`, `sh -ec CMD`, `bash -lc CMD`).
pub fn shell_script(argv: &[String]) -> Option<&str> {
    let program = basename(argv.first()?);
    if !SHELLS.contains(&program) {
        return None;
    }
    // busybox runs the applet named by its first argument: `busybox sh -c`.
    let skip = if program == "busybox" { 2 } else { 1 };
    let mut words = argv.iter().skip(skip);
    while let Some(word) = words.next() {
        if word == "--" || !word.starts_with('-') {
            return None;
        }
        if !word.starts_with("--") && word.contains('c') {
            return words.next().map(String::as_str);
        }
    }
    None
}

/// Collapses runs of whitespace into one space and trims the ends.
pub fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Splits a simple command into words the way a POSIX shell does for
/// quotes and backslashes. Returns `None` for unbalanced quotes.
pub fn split_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        other => word.push(other),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            escaped @ ('"' | '\\' | '$' | '`') => word.push(escaped),
                            '\n' => {}
                            other => {
                                word.push('\\');
                                word.push(other);
                            }
                        },
                        other => word.push(other),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(other) => word.push(other),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// Compares a reported command with an observed argv.
pub fn compare(reported: &str, argv: &[String]) -> Option<Agreement> {
    let reported_normal = normalize(reported);
    if reported_normal.is_empty() || argv.is_empty() {
        return None;
    }
    if let Some(script) = shell_script(argv) {
        if normalize(script) == reported_normal {
            return Some(Agreement::Command);
        }
        // The agent may report the whole invocation: `bash -c "ls /"`.
        if split_words(reported).is_some_and(|words| words == argv) {
            return Some(Agreement::Command);
        }
        // A shell is the program of any command it runs, so only its
        // script can agree.
        let script_words = split_words(script).unwrap_or_default();
        let reported_words = split_words(reported).unwrap_or_default();
        return match (script_words.first(), reported_words.first()) {
            (Some(a), Some(b)) if basename(a) == basename(b) => Some(Agreement::Program),
            _ => None,
        };
    }
    if let Some(words) = split_words(reported) {
        if words == argv {
            return Some(Agreement::Command);
        }
        let joined = normalize(&argv.join(" "));
        if joined == reported_normal {
            return Some(Agreement::Command);
        }
        if let (Some(first), Some(program)) = (words.first(), argv.first())
            && basename(first) == basename(program)
        {
            return Some(Agreement::Program);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn bash_c_script_equals_command() {
        assert_eq!(compare("ls -la  /tmp", &argv(&["/bin/bash", "-c", "ls -la /tmp"])), Some(Agreement::Command));
        assert_eq!(compare("make", &argv(&["sh", "-ec", "make"])), Some(Agreement::Command));
        assert_eq!(compare("echo hi", &argv(&["bash", "-lc", "echo hi"])), Some(Agreement::Command));
    }

    #[test]
    fn whole_invocation_reported() {
        assert_eq!(compare("bash -c 'ls /'", &argv(&["bash", "-c", "ls /"])), Some(Agreement::Command));
    }

    #[test]
    fn direct_exec_compares_words() {
        assert_eq!(compare("grep -r 'a b' src", &argv(&["grep", "-r", "a b", "src"])), Some(Agreement::Command));
        assert_eq!(compare("/usr/bin/ls /", &argv(&["ls", "/"])), Some(Agreement::Program));
    }

    #[test]
    fn different_commands_disagree() {
        assert_eq!(compare("ls /tmp", &argv(&["bash", "-c", "rm -rf /tmp/x"])), None);
        assert_eq!(compare("ls /tmp", &argv(&["curl", "http://x"])), None);
        assert_eq!(compare("ls /tmp", &argv(&["bash", "-c", "ls /etc"])), Some(Agreement::Program));
    }

    #[test]
    fn shell_without_c_is_no_script() {
        assert_eq!(shell_script(&argv(&["bash", "script.sh"])), None);
        assert_eq!(shell_script(&argv(&["bash", "--norc", "-c", "x"])), Some("x"));
        assert_eq!(shell_script(&argv(&["busybox", "sh", "-c", "x"])), Some("x"));
        assert_eq!(shell_script(&argv(&["python3", "-c", "x"])), None);
    }

    #[test]
    fn split_handles_quotes_and_escapes() {
        assert_eq!(split_words(r#"echo "a \"b\"" 'c d' e\ f"#).unwrap(), argv(&["echo", "a \"b\"", "c d", "e f"]));
        assert_eq!(split_words("echo 'open"), None);
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
    }
}
