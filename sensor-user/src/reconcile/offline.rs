//! `agent-sensor reconcile`: the daemon's matching, run over files.
//!
//! Evidence files are the daemon's JSON-lines output (rotated parts in any
//! order; records are put back in `seq` order). Telemetry files hold one
//! JSON object a line: an OTLP JSON export request (`resourceSpans` or
//! `resourceLogs`), or an agent's JSON-lines log entry read with the field
//! map of the `ingest.jsonl` entry for that path, else the default map.
//! All evidence is read before any report, then everything is decided as
//! at the end of the input.
//!
//! The daemon decides each action after `reconcile.grace_ms`; when every
//! report reached it within that window, both give the same findings. The
//! offline run has no socket owners, so it ties reports to agents by
//! `process.pid`, `service.instance.id`, session id and file writer only.

use std::{
    io::{BufRead as _, BufReader, Write},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use super::{
    engine::{Output, Reconciler, Stats},
    report::{self, FieldMap},
    ReconcileConfig, ReconcileError,
};
use crate::{
    evidence::rfc3339,
    ingest::{otlp, JsonlSource},
};

fn read_lines(path: &Path, mut each: impl FnMut(usize, &str) -> Result<(), ReconcileError>) -> Result<(), ReconcileError> {
    let file = std::fs::File::open(path).map_err(|source| ReconcileError::Read { path: path.to_owned(), source })?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ReconcileError::Read { path: path.to_owned(), source })?;
        if !line.trim().is_empty() {
            each(index + 1, &line)?;
        }
    }
    Ok(())
}

/// Reads one telemetry line into reports.
pub fn telemetry_line(value: &Value, fields: &FieldMap, file: &str) -> Result<Vec<report::Report>, String> {
    if value.get("resourceSpans").is_some() || value.get("resource_spans").is_some() {
        let request = otlp::traces_from_json(value).map_err(|e| e.to_string())?;
        return Ok(report::from_traces(&request));
    }
    if value.get("resourceLogs").is_some() || value.get("resource_logs").is_some() {
        let request = otlp::logs_from_json(value).map_err(|e| e.to_string())?;
        return Ok(report::from_logs(&request, 0));
    }
    Ok(report::from_json_line(value, fields, file, 0).into_iter().collect())
}

/// Runs the matching over the files and writes each finding and summary
/// as one JSON line to `out`.
pub fn run(
    evidence: &[PathBuf],
    telemetry: &[PathBuf],
    config: ReconcileConfig,
    jsonl: &[JsonlSource],
    out: &mut dyn Write,
) -> Result<Stats, ReconcileError> {
    let mut records = Vec::new();
    for path in evidence {
        read_lines(path, |line, text| {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| ReconcileError::Line { path: path.clone(), line, reason: format!("not a JSON record: {e}") })?;
            records.push(value);
            Ok(())
        })?;
    }
    records.sort_by_key(|r| r.get("seq").and_then(Value::as_u64).unwrap_or(u64::MAX));
    let mut engine = Reconciler::new(config);
    let mut last_time = 0;
    for record in records {
        let time = record.get("time_unix_nano").and_then(Value::as_u64).unwrap_or(last_time);
        last_time = last_time.max(time);
        engine.observe(record, time);
    }
    for path in telemetry {
        let fields = jsonl.iter().find(|s| s.path == *path).map(|s| s.fields.clone()).unwrap_or_default();
        let file = path.display().to_string();
        read_lines(path, |line, text| {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| ReconcileError::Line { path: path.clone(), line, reason: format!("not JSON: {e}") })?;
            let reports = telemetry_line(&value, &fields, &file).map_err(|reason| ReconcileError::Line { path: path.clone(), line, reason })?;
            for report in reports {
                let received = report.end_ns;
                last_time = last_time.max(received);
                engine.report(report, received);
            }
            Ok(())
        })?;
    }
    for output in engine.finish(last_time) {
        let line = output_json(&output);
        writeln!(out, "{line}").map_err(|source| ReconcileError::Read { path: PathBuf::from("-"), source })?;
    }
    Ok(engine.stats.clone())
}

/// Formats an output as a JSON line: its kind, the decision time, its
/// sections.
pub fn output_json(output: &Output) -> Value {
    let mut value = json!({
        "kind": output.kind,
        "time": rfc3339(output.time_ns),
        "time_unix_nano": output.time_ns,
    });
    let mut sections = output.sections.clone();
    crate::pipeline::complete_reconcile_finding(output.kind, &mut sections);
    if let Some(object) = value.as_object_mut() {
        object.extend(sections);
    }
    value
}
