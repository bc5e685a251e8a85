//! Checks that docs/configuration.md documents every configuration key.

use std::collections::BTreeSet;

use toml::{Table, Value};

use super::Config;

static REFERENCE: &str = include_str!("../../../docs/configuration.md");

/// Collects the dotted key of every value in `table`; keys inside arrays
/// of tables are written `section.list[].key`.
fn keys(table: &Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (name, value) in table {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match value {
            Value::Table(inner) => keys(inner, &path, out),
            Value::Array(items) if items.iter().all(Value::is_table) && !items.is_empty() => {
                for item in items.iter().filter_map(Value::as_table) {
                    keys(item, &format!("{path}[]"), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// Builds the default configuration with one entry in every list of tables and
/// every optional key set, so that their keys serialise too.
fn populated() -> Config {
    let text = r#"
        [agents]
        control_group = 0
        [[agents.registered]]
        name = "a"
        exe = "/a"
        exe_sha256 = "00"
        uid = 0
        cgroup = "/a"
        [[catalog.providers]]
        name = "p"
        hosts = ["h"]
        cidrs = ["10.0.0.0/8"]
        ports = [443]
        [[ingest.jsonl]]
        path = "/a.jsonl"
    "#;
    Config::parse(text).expect("the populated sample configuration is valid")
}

#[test]
fn every_key_documented() {
    let table = Table::try_from(populated()).expect("the configuration serialises to TOML");
    let mut all = BTreeSet::new();
    keys(&table, "", &mut all);
    assert!(all.contains("probes.ring_buffer_bytes"), "the walk found the keys: {all:?}");
    assert!(all.contains("ingest.jsonl[].fields.session_id"), "the walk entered lists of tables: {all:?}");
    let missing: Vec<&String> = all.iter().filter(|key| !REFERENCE.contains(&format!("`{key}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not document {missing:?}");
}

/// Finds the value of a dotted key.
fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let (sections, name) = key.rsplit_once('.')?;
    let section = sections.split('.').try_fold(table, |current, part| current.get(part)?.as_table())?;
    section.get(name)
}

/// Finds the reference table row of `key`.
fn row_of(key: &str) -> Option<&'static str> {
    let cell = format!("| `{key}` |");
    REFERENCE.lines().find(|line| line.starts_with(&cell))
}

#[test]
fn documented_defaults_match() {
    let table = Table::try_from(Config::default()).expect("the configuration serialises to TOML");
    let mut all = BTreeSet::new();
    keys(&table, "", &mut all);
    let mut wrong = Vec::new();
    for key in &all {
        let Some(leaf) = lookup(&table, key) else { continue };
        // Lists are described in words; single values are quoted exactly.
        if leaf.is_array() {
            continue;
        }
        let expected = format!("`{leaf}`");
        match row_of(key) {
            Some(row) if row.contains(&expected) => {}
            Some(row) => wrong.push(format!("{key}: expected default {expected} in: {row}")),
            None => wrong.push(format!("{key}: no table row starting with | `{key}` |")),
        }
    }
    assert!(wrong.is_empty(), "docs/configuration.md:\n{}", wrong.join("\n"));
}
