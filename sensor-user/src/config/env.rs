//! Environment overrides: `AGENT_SENSOR__SECTION__KEY=value` sets one key
//! on top of the configuration file, so a DaemonSet can change a setting
//! per node or per release without a new ConfigMap.
//!
//! Double underscores separate the path (`AGENT_SENSOR__EXPORT__OTLP__ENDPOINT`
//! sets `export.otlp.endpoint`) and the name is matched in lower case. The
//! value is read as the type the key has in the file or in the defaults: a
//! string as it is, a number or boolean parsed, and a list as a TOML array
//! such as `["/usr/bin/node"]`. The merged configuration then goes through
//! the same parsing and validation as a file, and every problem caused by an
//! override names its variable.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use super::{find_key_line, Config, ConfigError, ConfigProblem};

/// Prefix of the variables that override configuration keys. Variables
/// with one underscore after `AGENT_SENSOR` (`AGENT_SENSOR_LOG`) are not
/// overrides.
pub const PREFIX: &str = "AGENT_SENSOR__";

/// One `AGENT_SENSOR__...` variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub variable: String,
    /// The key's path, such as `["probes", "ring_buffer_bytes"]`.
    pub path: Vec<String>,
    pub value: String,
}

impl Override {
    fn dotted(&self) -> String {
        self.path.join(".")
    }

    fn problem(&self, message: String) -> ConfigProblem {
        ConfigProblem { key: format!("{} (from {})", self.dotted(), self.variable), line: None, message }
    }
}

/// Collects the overrides among `variables`, sorted by name so that the
/// result does not depend on the environment's order. A name with an empty
/// segment or a value that is not UTF-8 is a problem.
pub fn overrides_from(variables: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Vec<Override>, Vec<ConfigProblem>> {
    let mut overrides = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in variables {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            problems.push(ConfigProblem {
                key: name.to_owned(),
                line: None,
                message: format!("invalid override name: expected {PREFIX}SECTION__KEY, such as {PREFIX}OUTPUT__STDOUT"),
            });
            continue;
        }
        match value.into_string() {
            Ok(value) => overrides.push(Override { variable: name.to_owned(), path, value }),
            Err(_) => problems.push(ConfigProblem {
                key: name.to_owned(),
                line: None,
                message: "the value is not valid UTF-8".to_owned(),
            }),
        }
    }
    overrides.sort_by(|a, b| a.variable.cmp(&b.variable));
    if problems.is_empty() { Ok(overrides) } else { Err(problems) }
}

/// Reads the configuration file (built-in defaults when `path` is `None`),
/// applies `overrides` and validates the result.
pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
    let (text, source) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            (text, path.to_owned())
        }
        None => (String::new(), PathBuf::from("(built-in defaults)")),
    };
    apply(&text, overrides).map_err(|problems| ConfigError::Invalid { path: source, problems })
}

/// Parses configuration text with `overrides` applied, returning every
/// problem found. Lines refer to `text`; a problem with an overridden key
/// has no line and names the variable instead.
pub fn apply(text: &str, overrides: &[Override]) -> Result<Config, Vec<ConfigProblem>> {
    if overrides.is_empty() {
        return Config::parse(text);
    }
    // A file that is not TOML gets the file parser's message and line.
    let Ok(mut table) = toml::from_str::<Table>(text) else {
        return Config::parse(text);
    };
    let defaults = Table::try_from(Config::default()).unwrap_or_default();
    let problems: Vec<ConfigProblem> = overrides
        .iter()
        .filter_map(|item| set(&mut table, &defaults, item).err().map(|message| item.problem(message)))
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let merged = toml::to_string(&table).map_err(|error| {
        vec![ConfigProblem { key: "(environment)".to_owned(), line: None, message: error.to_string() }]
    })?;
    Config::parse(&merged).map_err(|problems| problems.into_iter().map(|p| relabel(p, text, overrides)).collect())
}

/// Points a problem found in the merged text back at its source: the
/// variable that set the key, or the key's line in the file.
fn relabel(problem: ConfigProblem, text: &str, overrides: &[Override]) -> ConfigProblem {
    if let Some(item) = overrides.iter().find(|o| o.dotted() == problem.key) {
        return item.problem(problem.message);
    }
    let line = problem.key.split_once('.').and_then(|(section, key)| find_key_line(text, section, key));
    ConfigProblem { line, ..problem }
}

/// Stores the override's value in `table`, typed after the value the key
/// has in `table` or else in `defaults`.
fn set(table: &mut Table, defaults: &Table, item: &Override) -> Result<(), String> {
    let (key, sections) = item.path.split_last().ok_or("empty key")?;
    let mut current = table;
    let mut default_section = Some(defaults);
    for section in sections {
        let default_value = default_section.and_then(|d| d.get(section));
        if default_value.is_some_and(|value| !value.is_table()) {
            return Err(format!("{section} is a value, not a section"));
        }
        default_section = default_value.and_then(Value::as_table);
        let entry = current.entry(section.clone()).or_insert_with(|| Value::Table(Table::new()));
        current = entry.as_table_mut().ok_or_else(|| format!("{section} is a value, not a section"))?;
    }
    let reference = current.get(key).or_else(|| default_section.and_then(|d| d.get(key)));
    let value = typed_value(&item.value, reference)?;
    current.insert(key.clone(), value);
    Ok(())
}

fn typed_value(raw: &str, reference: Option<&Value>) -> Result<Value, String> {
    match reference {
        Some(Value::String(_)) => Ok(Value::String(raw.to_owned())),
        Some(Value::Integer(_)) => {
            raw.trim().parse::<i64>().map(Value::Integer).map_err(|_| format!("{raw:?} is not an integer"))
        }
        Some(Value::Float(_)) => raw.trim().parse::<f64>().map(Value::Float).map_err(|_| format!("{raw:?} is not a number")),
        Some(Value::Boolean(_)) => match raw.trim() {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not true or false")),
        },
        Some(Value::Array(_)) => match literal(raw) {
            Some(array @ Value::Array(_)) => Ok(array),
            _ => Err(format!("{raw:?} is not a TOML array such as [\"a\", \"b\"]")),
        },
        Some(Value::Table(_)) => Err("this is a section; set its keys one by one".to_owned()),
        Some(Value::Datetime(_)) => Err("date-time keys cannot be set from the environment".to_owned()),
        // A key with no default (an optional one, or one this build does not
        // know): a TOML literal when the value is one, else a string. Parsing
        // the merged file then decides whether the key exists.
        None => Ok(literal(raw).unwrap_or_else(|| Value::String(raw.to_owned()))),
    }
}

/// Parses `raw` as a TOML value, such as `42`, `true` or `["a"]`.
fn literal(raw: &str) -> Option<Value> {
    toml::from_str::<Table>(&format!("value = {raw}")).ok()?.remove("value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str)]) -> Vec<Override> {
        overrides_from(pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)))).unwrap()
    }

    #[test]
    fn scalar_keys_overridden() {
        let items = overrides(&[
            ("AGENT_SENSOR__PROBES__RING_BUFFER_BYTES", "16777216"),
            ("AGENT_SENSOR__OUTPUT__STDOUT", "false"),
            ("AGENT_SENSOR__OUTPUT__EVIDENCE_PATH", "/data/evidence.jsonl"),
        ]);
        let config = apply("[output]\nstdout = true\n", &items).unwrap();
        assert_eq!(config.probes.ring_buffer_bytes, 16 << 20);
        assert!(!config.output.stdout);
        assert_eq!(config.output.evidence_path, PathBuf::from("/data/evidence.jsonl"));
    }

    #[test]
    fn other_variables_ignored() {
        let items = overrides(&[("AGENT_SENSOR_LOG", "debug"), ("HOME", "/root"), ("AGENT_SENSOR_BIN", "x")]);
        assert!(items.is_empty());
    }

    #[test]
    fn list_parsed_as_toml_array() {
        let items = overrides(&[("AGENT_SENSOR__PROBES__TLS_EXECUTABLES", "[\"/opt/node/bin/node\"]")]);
        let config = apply("", &items).unwrap();
        assert_eq!(config.probes.tls_executables, vec![PathBuf::from("/opt/node/bin/node")]);
    }

    #[test]
    fn optional_key_parsed_as_literal() {
        let items = overrides(&[("AGENT_SENSOR__AGENTS__CONTROL_GROUP", "1000")]);
        assert_eq!(apply("", &items).unwrap().agents.control_group, Some(1000));
    }

    #[test]
    fn bad_integer_names_variable() {
        let items = overrides(&[("AGENT_SENSOR__PROBES__ARGV_MAX_BYTES", "lots")]);
        let problems = apply("", &items).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "probes.argv_max_bytes (from AGENT_SENSOR__PROBES__ARGV_MAX_BYTES)");
        assert_eq!(problems[0].line, None);
        assert!(problems[0].message.contains("not an integer"), "{}", problems[0].message);
    }

    #[test]
    fn range_check_names_variable() {
        let items = overrides(&[("AGENT_SENSOR__PROBES__ARGV_MAX_BYTES", "9000")]);
        let problems = apply("[probes]\nargv_max_bytes = 100\n", &items).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "probes.argv_max_bytes (from AGENT_SENSOR__PROBES__ARGV_MAX_BYTES)");
        assert!(problems[0].message.contains("kernel capture limit"), "{}", problems[0].message);
    }

    #[test]
    fn unknown_key_names_variable() {
        let items = overrides(&[("AGENT_SENSOR__PROBES__RING_BUFER_BYTES", "4096")]);
        let problems = apply("", &items).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "probes.ring_bufer_bytes (from AGENT_SENSOR__PROBES__RING_BUFER_BYTES)");
        assert!(problems[0].message.contains("unknown field"), "{}", problems[0].message);
    }

    #[test]
    fn file_problem_keeps_its_line() {
        let items = overrides(&[("AGENT_SENSOR__OUTPUT__STDOUT", "false")]);
        let problems = apply("[probes]\n\nargv_max_bytes = 9000\n", &items).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "probes.argv_max_bytes");
        assert_eq!(problems[0].line, Some(3));
    }

    #[test]
    fn override_replaces_bad_file_value() {
        let items = overrides(&[("AGENT_SENSOR__PROBES__ARGV_MAX_BYTES", "1024")]);
        assert_eq!(apply("[probes]\nargv_max_bytes = 9000\n", &items).unwrap().probes.argv_max_bytes, 1024);
    }

    #[test]
    fn malformed_names_rejected() {
        for name in ["AGENT_SENSOR__OUTPUT", "AGENT_SENSOR__OUTPUT____STDOUT", "AGENT_SENSOR__"] {
            let problems = overrides_from([(OsString::from(name), OsString::from("x"))]).unwrap_err();
            assert_eq!(problems[0].key, name);
            assert!(problems[0].message.contains("SECTION__KEY"), "{}", problems[0].message);
        }
    }

    #[test]
    fn section_value_rejected() {
        let items = overrides(&[("AGENT_SENSOR__OUTPUT__STDOUT__X", "1")]);
        let problems = apply("", &items).unwrap_err();
        assert!(problems[0].message.contains("not a section"), "{}", problems[0].message);
    }

    #[test]
    fn syntax_error_in_file_reported() {
        let items = overrides(&[("AGENT_SENSOR__OUTPUT__STDOUT", "false")]);
        let problems = apply("[output\n", &items).unwrap_err();
        assert_eq!(problems[0].line, Some(1));
    }
}
