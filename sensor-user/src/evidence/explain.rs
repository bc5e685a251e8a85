//! `agent-sensor explain ID`: the chain of records around one record.
//!
//! Takes native evidence files, rotated parts in any order, and an id: a
//! record's `seq`, its `id`, or a process's `exec_id`. Records are put back
//! in `seq` order. The output has the record's agent session
//! (`agent.detected` and `agent.session_end`) and the LLM exchange before
//! it in that session. It has the tool spawn the record belongs to and what
//! that tool and its descendants did after the spawn: execs, connects, TLS,
//! file operations, LLM calls and exits. It has the findings about any of
//! these, and each record's policy verdict and checks. It is printed as an
//! indented tree or as one JSON object.
//!
//! It does not check the hash chain (`verify` does). It does not read OCSF
//! files either, because their OCSF members hold only part of the native
//! fields, so an OCSF line is reported as an error.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

/// Exit code when the record was found and explained.
pub const EXIT_OK: u8 = 0;
/// Exit code for invalid arguments or unreadable input.
pub const EXIT_INVALID: u8 = 2;
/// Exit code when no record has the given id.
pub const EXIT_NOT_FOUND: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot read evidence file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} line {line} is an OCSF event; explain reads native records, so point it at an evidence file \
         written with output.evidence_format = \"native\""
    )]
    Ocsf { path: PathBuf, line: usize },
    #[error("no record in the {records} records read has seq, id or exec_id {id}")]
    NotFound { id: String, records: usize },
    #[error("no evidence files given and none found at {0}")]
    NoFiles(PathBuf),
}

/// The records of a set of evidence files, in `seq` order.
pub struct Evidence {
    records: Vec<Value>,
    /// Lines that were not JSON objects with a `seq` (torn tails, garbage).
    pub skipped_lines: usize,
}

impl Evidence {
    /// Reads every file. A line that is not a record is counted and
    /// skipped, because a torn last line after a crash is expected.
    ///
    /// NOTE: every record is kept in memory as parsed JSON, several times
    /// its size on disk, so a very large evidence set needs that much.
    pub fn read(paths: &[PathBuf]) -> Result<Evidence, ExplainError> {
        let mut by_seq = BTreeMap::new();
        let mut skipped_lines = 0;
        for path in paths {
            let error = |source| ExplainError::Read { path: path.clone(), source };
            let file = std::fs::File::open(path).map_err(error)?;
            for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
                let line = line.map_err(error)?;
                let Ok(record) = serde_json::from_slice::<Value>(&line) else {
                    skipped_lines += usize::from(!line.iter().all(u8::is_ascii_whitespace));
                    continue;
                };
                if record.get("class_uid").is_some() && record["metadata"]["event_code"].is_string() {
                    return Err(ExplainError::Ocsf { path: path.clone(), line: index + 1 });
                }
                match record["seq"].as_u64() {
                    Some(seq) => {
                        by_seq.insert(seq, record);
                    }
                    None => skipped_lines += 1,
                }
            }
        }
        Ok(Evidence { records: by_seq.into_values().collect(), skipped_lines })
    }

    #[cfg(test)]
    pub fn from_records(mut records: Vec<Value>) -> Evidence {
        records.sort_by_key(|r| r["seq"].as_u64());
        Evidence { records, skipped_lines: 0 }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Finds the record `id` names: a seq, a record id, or an exec id (the
    /// process's `tool.spawn`, else its `process.exec`, else its first
    /// record).
    fn find(&self, id: &str) -> Option<usize> {
        if let Ok(seq) = id.parse::<u64>()
            && let Some(index) = self.records.iter().position(|r| r["seq"] == seq)
        {
            return Some(index);
        }
        if let Some(index) = self.records.iter().position(|r| r["id"] == id) {
            return Some(index);
        }
        let of_process: Vec<usize> =
            (0..self.records.len()).filter(|&i| self.records[i]["process"]["exec_id"] == id).collect();
        ["tool.spawn", "process.exec"]
            .iter()
            .find_map(|kind| of_process.iter().copied().find(|&i| self.records[i]["kind"] == *kind))
            .or(of_process.first().copied())
    }
}

fn exec_id(record: &Value) -> Option<&str> {
    record["process"]["exec_id"].as_str()
}

fn session_id(record: &Value) -> Option<&str> {
    record["agent"]["session_id"].as_str()
}

/// True when the record's process is `exec_id` or descends from it.
fn in_tree(record: &Value, root: &str) -> bool {
    exec_id(record) == Some(root)
        || record["process"]["ancestry"].as_array().is_some_and(|a| a.iter().any(|e| e == root))
        || record["process"]["parent_exec_id"] == root
}

/// Kinds listed after the tool spawn: what the tool's processes did.
fn is_action(kind: &str) -> bool {
    kind == "process.exec"
        || kind == "process.exit"
        || kind == "tool.spawn"
        || kind.starts_with("net.")
        || kind.starts_with("tls.")
        || kind.starts_with("file.")
        || kind.starts_with("llm.")
}

/// Builds the explanation of the record that `id` names, as JSON. Each
/// member contains whole records, so no recorded fact is lost.
pub fn explain(evidence: &Evidence, id: &str) -> Result<Value, ExplainError> {
    let records = &evidence.records;
    let index = evidence
        .find(id)
        .ok_or_else(|| ExplainError::NotFound { id: id.to_owned(), records: records.len() })?;
    let target = &records[index];
    let target_seq = target["seq"].as_u64().unwrap_or(0);

    // The tool spawn the record belongs to: itself, or the nearest spawn
    // whose process is the record's process or one of its ancestors.
    let spawn_index = if target["kind"] == "tool.spawn" {
        Some(index)
    } else {
        records[..=index]
            .iter()
            .rposition(|r| r["kind"] == "tool.spawn" && exec_id(r).is_some_and(|root| in_tree(target, root)))
    };
    let spawn = spawn_index.map(|i| &records[i]);
    let session = session_id(target).or_else(|| spawn.and_then(session_id));
    let anchor_seq = spawn.and_then(|s| s["seq"].as_u64()).unwrap_or(target_seq);

    let of_session = |r: &&Value| session.is_some() && session_id(r) == session;
    let detected = records.iter().filter(of_session).find(|r| r["kind"] == "agent.detected");
    let ended = records.iter().filter(of_session).find(|r| r["kind"] == "agent.session_end");
    let summary = records.iter().filter(of_session).find(|r| r["kind"] == "reconcile.summary");

    // The LLM exchange that preceded the spawn in the same session: the
    // last response before it, and the last request before that response.
    let before: Vec<&Value> = records.iter().filter(of_session).filter(|r| r["seq"].as_u64() < Some(anchor_seq)).collect();
    let response = before.iter().rev().find(|r| r["kind"] == "llm.response").copied();
    let request_limit = response.and_then(|r| r["seq"].as_u64()).unwrap_or(anchor_seq);
    let request = before
        .iter()
        .rev()
        .find(|r| r["kind"] == "llm.request" && r["seq"].as_u64() < Some(request_limit))
        .copied();

    let mut after = Vec::new();
    let mut related_ids: HashSet<String> = HashSet::new();
    let mut related_execs: HashSet<String> = HashSet::new();
    if let Some(root) = spawn.and_then(exec_id) {
        related_execs.insert(root.to_owned());
        for record in records.iter().filter(|r| r["seq"].as_u64() > Some(anchor_seq)) {
            let kind = record["kind"].as_str().unwrap_or("");
            if is_action(kind) && in_tree(record, root) {
                if let Some(exec) = exec_id(record) {
                    related_execs.insert(exec.to_owned());
                }
                if let Some(id) = record["id"].as_str() {
                    related_ids.insert(id.to_owned());
                }
                after.push(record.clone());
            }
        }
    }
    for record in [Some(target), spawn, request, response].into_iter().flatten() {
        if let Some(id) = record["id"].as_str() {
            related_ids.insert(id.to_owned());
        }
    }
    for record in [Some(target), detected].into_iter().flatten() {
        if let Some(exec) = exec_id(record) {
            related_execs.insert(exec.to_owned());
        }
    }

    // Findings about any record above: named as its cause, or about one of
    // the tool's processes.
    let findings: Vec<Value> = records
        .iter()
        .filter(|r| r["kind"].as_str().is_some_and(|k| k.starts_with("finding.")))
        .filter(|r| {
            let cause = &r["finding"]["cause"]["record_id"];
            let observed = &r["finding"]["evidence"]["observed"]["record_id"];
            cause.as_str().is_some_and(|c| related_ids.contains(c))
                || observed.as_str().is_some_and(|c| related_ids.contains(c))
                || exec_id(r).is_some_and(|e| related_execs.contains(e))
                || r["id"].as_str().is_some_and(|id| related_ids.contains(id))
        })
        .cloned()
        .collect();

    Ok(json!({
        "id": id,
        "target": target,
        "session": {
            "session_id": session,
            "agent_id": target["agent"]["agent_id"].as_str().or_else(|| spawn.and_then(|s| s["agent"]["agent_id"].as_str())),
            "detected": detected,
            "ended": ended,
            "reconcile_summary": summary,
        },
        "llm_before": { "request": request, "response": response },
        "tool_spawn": spawn,
        "after": after,
        "findings": findings,
    }))
}

/// Describes a record in one line: seq, time, kind, process and what it is about.
fn describe(record: &Value) -> String {
    let mut line = format!(
        "seq {} {} {}",
        record["seq"],
        record["time"].as_str().unwrap_or("?"),
        record["kind"].as_str().unwrap_or("?")
    );
    let process = &record["process"];
    if let Some(pid) = process["pid"].as_u64() {
        let program = process["exe"].as_str().or(process["exe_name"].as_str()).unwrap_or("?");
        let _ = write!(line, " pid {pid} {program}");
    }
    let kind = record["kind"].as_str().unwrap_or("");
    let detail = match kind {
        "process.exec" | "tool.spawn" => process["argv"].as_array().map(|argv| {
            let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            format!("argv {:?}", words.join(" "))
        }),
        _ if kind.starts_with("net.") || kind.starts_with("tls.") => {
            let network = &record["network"];
            let destination = &network["destination"];
            let mut text = format!(
                "-> {}:{} {}",
                destination["address"].as_str().unwrap_or("?"),
                destination["port"],
                network["outcome"].as_str().or(network["result"].as_str()).unwrap_or("")
            );
            if let Some(sni) = record["tls"]["sni"].as_str().or(record["dns_name"].as_str()) {
                let _ = write!(text, " ({sni})");
            }
            Some(text)
        }
        _ if kind.starts_with("file.") => {
            let file = &record["file"];
            let mut text = format!("{} {}", file["path"].as_str().unwrap_or("?"), file["access"].as_str().unwrap_or(""));
            if let Some(new_path) = file["new_path"].as_str() {
                let _ = write!(text, " -> {new_path}");
            }
            let _ = write!(text, " {}", file["result"].as_str().unwrap_or(""));
            Some(text)
        }
        _ if kind.starts_with("llm.") => {
            let llm = &record["llm"];
            Some(match llm["status"].as_u64() {
                Some(status) => format!("status {status} model {}", llm["model"].as_str().unwrap_or("?")),
                None => format!(
                    "{} {}{} model {}",
                    llm["method"].as_str().unwrap_or("?"),
                    llm["host"].as_str().unwrap_or(""),
                    llm["path"].as_str().unwrap_or(""),
                    llm["model"].as_str().unwrap_or("?")
                ),
            })
        }
        "process.exit" => Some(format!("exit code {} signal {}", record["exit"]["code"], record["exit"]["signal"])),
        _ if kind.starts_with("finding.") => Some(format!(
            "[{}] {}",
            record["finding"]["severity"].as_str().unwrap_or("?"),
            record["finding"]["title"].as_str().unwrap_or("")
        )),
        _ => None,
    };
    if let Some(detail) = detail {
        line.push_str(": ");
        line.push_str(detail.trim_end());
    }
    line
}

/// Writes a record's line and, under it, its policy verdict and checks.
fn write_node(out: &mut String, indent: &str, label: &str, record: &Value) {
    let _ = writeln!(out, "{indent}{label}{}", describe(record));
    let policy = &record["policy"];
    if let Some(verdict) = policy["verdict"].as_str() {
        let entry = policy["entry"].as_str().unwrap_or("defaults");
        let _ = writeln!(out, "{indent}    policy {entry}: verdict {verdict}");
    }
    for check in policy["checks"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "{indent}    check {} {}",
            check["rule"].as_str().unwrap_or("?"),
            check["result"].as_str().unwrap_or("?")
        );
        if let Some(reason) = check["reason"].as_str() {
            let _ = write!(out, ": {reason}");
        }
        let _ = writeln!(out);
    }
}

/// True for a read-only open that failed: the dynamic loader's and
/// shells' path searches, which would bury the tool's real work.
fn is_failed_read(record: &Value) -> bool {
    record["kind"] == "file.open" && record["file"]["access"] == "read" && record["file"]["result"] != "ok"
}

/// Renders the explanation as an indented tree.
pub fn human(explanation: &Value) -> String {
    let mut out = String::new();
    let target = &explanation["target"];
    let _ = writeln!(out, "explain {}: {}", explanation["id"].as_str().unwrap_or("?"), describe(target));

    let session = &explanation["session"];
    match session["session_id"].as_str() {
        Some(id) => {
            let _ = writeln!(out, "agent {} session {id}", session["agent_id"].as_str().unwrap_or("?"));
        }
        None => {
            let _ = writeln!(out, "no agent session: the record's process belongs to no detected agent");
        }
    }
    if session["detected"].is_object() {
        write_node(&mut out, "  ", "detected  ", &session["detected"]);
    }

    let llm = &explanation["llm_before"];
    if llm["request"].is_object() {
        write_node(&mut out, "  ", "llm call  ", &llm["request"]);
    }
    if llm["response"].is_object() {
        write_node(&mut out, "  ", "reply     ", &llm["response"]);
    }
    if session["session_id"].is_string() && !llm["request"].is_object() && !llm["response"].is_object() {
        let _ = writeln!(out, "  (no LLM call recorded before it in this session)");
    }

    // `*` marks the requested record.
    let spawn = &explanation["tool_spawn"];
    if spawn.is_object() {
        let label = if spawn["seq"] == target["seq"] { "tool    * " } else { "tool      " };
        write_node(&mut out, "  ", label, spawn);
        let mut failed_reads = 0;
        for record in explanation["after"].as_array().into_iter().flatten() {
            if is_failed_read(record) && record["seq"] != target["seq"] {
                failed_reads += 1;
                continue;
            }
            let label = if record["seq"] == target["seq"] { "* " } else { "- " };
            write_node(&mut out, "      ", label, record);
        }
        if failed_reads > 0 {
            let _ = writeln!(
                out,
                "      ({failed_reads} failed read-only opens not shown, such as library lookups; --json lists them)"
            );
        }
    } else {
        let _ = writeln!(out, "  (no tool spawn: the record is not in the process tree of an agent's tool)");
        write_node(&mut out, "  ", "record  * ", target);
    }

    for finding in explanation["findings"].as_array().into_iter().flatten() {
        write_node(&mut out, "  ", "finding   ", finding);
    }
    if session["ended"].is_object() {
        write_node(&mut out, "  ", "ended     ", &session["ended"]);
    }
    out
}

/// Lists the evidence file at `active` and its rotated parts.
pub fn files_of(active: &Path) -> Result<Vec<PathBuf>, ExplainError> {
    let mut files: Vec<PathBuf> = super::recovery::rotated_files(active)
        .map_err(|source| ExplainError::Read { path: active.to_owned(), source })?
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    if active.exists() {
        files.push(active.to_owned());
    }
    if files.is_empty() {
        return Err(ExplainError::NoFiles(active.to_owned()));
    }
    Ok(files)
}

/// Runs the command and returns its exit code.
pub fn run(id: &str, files: &[PathBuf], json_output: bool) -> u8 {
    let evidence = match Evidence::read(files) {
        Ok(evidence) => evidence,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_INVALID;
        }
    };
    if evidence.skipped_lines > 0 {
        eprintln!("warning: skipped {} lines that are not evidence records", evidence.skipped_lines);
    }
    match explain(&evidence, id) {
        Ok(explanation) if json_output => {
            println!("{explanation}");
            EXIT_OK
        }
        Ok(explanation) => {
            print!("{}", human(&explanation));
            EXIT_OK
        }
        Err(error) => {
            eprintln!("error: {error}");
            EXIT_NOT_FOUND
        }
    }
}

#[cfg(test)]
mod tests;
