//! Validation of the policy's YAML tree into [`Policy`]. Every problem is
//! collected, with its key path and line, before the result is decided, so
//! an operator sees all of them in one run.

use std::collections::{BTreeMap, HashSet};

use regex::Regex;

use super::{
    matchers::{Cidr, HostPattern, PathPattern, PortRange, Wildcard},
    yaml::{self, Node, Value},
    Action, AgentEntry, EgressRule, LlmRules, PodSelector, Policy, Problem, Rules, Selector, SensitivePath, ToolRule,
};

/// Parses and validates a policy file's text.
pub fn parse(text: &str) -> Result<Policy, Vec<Problem>> {
    let root = yaml::parse(text).map_err(|problem| vec![problem])?;
    let mut validator = Validator::default();
    let policy = validator.policy(&root);
    if validator.problems.is_empty() {
        Ok(policy)
    } else {
        validator.problems.sort_by_key(|p| p.line.unwrap_or(0));
        Err(validator.problems)
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Validator {
    fn problem(&mut self, key: &str, line: usize, message: impl Into<String>) {
        self.problems.push(Problem { key: key.to_owned(), line: Some(line), message: message.into() });
    }

    /// Returns a mapping's entries, reporting unknown and repeated keys.
    fn mapping<'n>(&mut self, node: &'n Node, path: &str, known: &[&str]) -> Vec<(&'n str, &'n Node)> {
        let Value::Mapping(entries) = &node.value else {
            if node.is_null() {
                return Vec::new();
            }
            self.problem(path, node.line, format!("expected a mapping, found {}", node.type_name()));
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut kept = Vec::new();
        for (key, line, value) in entries {
            let key_path = join(path, key);
            if !known.contains(&key.as_str()) {
                self.problem(&key_path, *line, format!("unknown key; expected one of: {}", known.join(", ")));
            } else if !seen.insert(key.as_str()) {
                self.problem(&key_path, *line, "key given twice");
            } else {
                kept.push((key.as_str(), value));
            }
        }
        kept
    }

    fn sequence<'n>(&mut self, node: &'n Node, path: &str) -> &'n [Node] {
        match &node.value {
            Value::Sequence(items) => items,
            _ if node.is_null() => &[],
            _ => {
                self.problem(path, node.line, format!("expected a list, found {}", node.type_name()));
                &[]
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            _ => {
                self.problem(path, node.line, format!("expected a string, found {}", node.type_name()));
                None
            }
        }
    }

    fn integer<T: TryFrom<i64>>(&mut self, node: &Node, path: &str, range: &str) -> Option<T> {
        let value = match &node.value {
            Value::Scalar { text, quoted: false } => text.parse::<i64>().ok(),
            _ => None,
        };
        match value.and_then(|v| T::try_from(v).ok()) {
            Some(value) => Some(value),
            None => {
                self.problem(path, node.line, format!("expected an integer {range}, found {}", describe(node)));
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, path: &str) -> Vec<(String, usize, String)> {
        let mut out = Vec::new();
        for (index, item) in self.sequence(node, path).iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            if let Some(text) = self.string(item, &item_path) {
                out.push((text, item.line, item_path));
            }
        }
        out
    }

    fn policy(&mut self, root: &Node) -> Policy {
        let mut policy = Policy::default();
        for (key, node) in self.mapping(root, "", &["version", "defaults", "agents", "sensitive_paths"]) {
            match key {
                "version" => {
                    let version = self.integer::<u32>(node, "version", "(1)");
                    if let Some(version) = version.filter(|&v| v != 1) {
                        self.problem("version", node.line, format!("unsupported version {version}; this sensor reads version 1"));
                    }
                }
                "defaults" => policy.defaults = self.rules(node, "defaults", &[]),
                "agents" => policy.agents = self.agents(node),
                "sensitive_paths" => policy.sensitive_paths = self.sensitive_paths(node, "sensitive_paths"),
                _ => {}
            }
        }
        policy
    }

    fn agents(&mut self, node: &Node) -> Vec<AgentEntry> {
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut agents = Vec::new();
        for (index, item) in self.sequence(node, "agents").iter().enumerate() {
            let path = format!("agents[{index}]");
            let entries = self.mapping(item, &path, &["name", "description", "match", "action", "tools", "egress", "llm", "sensitive_paths"]);
            let mut name = None;
            let mut selector = None;
            for (key, value) in &entries {
                match *key {
                    "name" => name = self.name(value, &join(&path, "name"), &mut names),
                    "match" => selector = self.selector(value, &join(&path, "match")),
                    "description" => {
                        self.string(value, &join(&path, "description"));
                    }
                    _ => {}
                }
            }
            if name.is_none() && !entries.iter().any(|(k, _)| *k == "name") {
                self.problem(&path, item.line, "missing key `name`");
            }
            if selector.is_none() && !entries.iter().any(|(k, _)| *k == "match") {
                self.problem(&path, item.line, "missing key `match`: the selectors that identify this agent");
            }
            let rules = self.rules(item, &path, &["name", "description", "match"]);
            if let (Some(name), Some(selector)) = (name, selector) {
                agents.push(AgentEntry { name, selector, rules });
            }
        }
        agents
    }

    fn name(&mut self, node: &Node, path: &str, names: &mut BTreeMap<String, usize>) -> Option<String> {
        let name = self.string(node, path)?;
        let valid = !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            self.problem(path, node.line, format!("invalid name {name:?}: use 1 to 128 letters, digits, `-`, `_` or `.`"));
            return None;
        }
        if name == "defaults" || name == "policy" {
            self.problem(path, node.line, format!("the name {name:?} is reserved for rule ids"));
            return None;
        }
        if let Some(first) = names.insert(name.clone(), node.line) {
            self.problem(path, node.line, format!("name {name:?} is already used on line {first}"));
            return None;
        }
        Some(name)
    }

    fn selector(&mut self, node: &Node, path: &str) -> Option<Selector> {
        let mut selector = Selector::default();
        let entries = self.mapping(node, path, &["exe", "exe_sha256", "user", "uid", "cgroup", "unit", "pod"]);
        for (key, value) in &entries {
            let key_path = join(path, key);
            match *key {
                "exe" => selector.exe = self.wildcard(value, &key_path, false),
                "exe_sha256" => {
                    if let Some(hash) = self.string(value, &key_path) {
                        if hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
                            selector.exe_sha256 = Some(hash.to_ascii_lowercase());
                        } else {
                            self.problem(&key_path, value.line, "expected 64 hex digits");
                        }
                    }
                }
                "user" => selector.user = self.string(value, &key_path),
                "uid" => selector.uid = self.integer::<u32>(value, &key_path, "(a user id)"),
                "cgroup" => {
                    if let Some(cgroup) = self.string(value, &key_path) {
                        if cgroup.starts_with('/') {
                            selector.cgroup = Some(cgroup);
                        } else {
                            self.problem(&key_path, value.line, "expected a cgroup v2 path starting with `/`, such as /system.slice/agent.service");
                        }
                    }
                }
                "unit" => selector.unit = self.wildcard(value, &key_path, false),
                "pod" => selector.pod = Some(self.pod(value, &key_path)),
                _ => {}
            }
        }
        if entries.is_empty() {
            self.problem(path, node.line, "no selectors: give at least one of exe, exe_sha256, user, uid, cgroup, unit, pod");
            return None;
        }
        Some(selector)
    }

    fn pod(&mut self, node: &Node, path: &str) -> PodSelector {
        let mut pod = PodSelector::default();
        let entries = self.mapping(node, path, &["namespace", "labels", "service_account", "image"]);
        if entries.is_empty() {
            self.problem(path, node.line, "no pod selectors: give at least one of namespace, labels, service_account, image");
        }
        for (key, value) in entries {
            let key_path = join(path, key);
            match key {
                "namespace" => pod.namespace = self.wildcard(value, &key_path, false),
                "service_account" => pod.service_account = self.string(value, &key_path),
                "image" => pod.image = self.wildcard(value, &key_path, false),
                "labels" => {
                    if let Value::Mapping(labels) = &value.value {
                        for (label, line, label_value) in labels {
                            let label_path = join(&key_path, label);
                            match &label_value.value {
                                Value::Scalar { text, .. } => {
                                    pod.labels.insert(label.clone(), text.clone());
                                }
                                _ => self.problem(&label_path, *line, format!("expected a label value, found {}", label_value.type_name())),
                            }
                        }
                    } else {
                        self.problem(&key_path, value.line, format!("expected a mapping of label names to values, found {}", value.type_name()));
                    }
                }
                _ => {}
            }
        }
        pod
    }

    fn wildcard(&mut self, node: &Node, path: &str, case_insensitive: bool) -> Option<Wildcard> {
        let text = self.string(node, path)?;
        match Wildcard::new(&text, case_insensitive) {
            Ok(pattern) => Some(pattern),
            Err(message) => {
                self.problem(path, node.line, message);
                None
            }
        }
    }

    /// Reads the rule keys of an agent entry or of `defaults`; `other` are
    /// the keys the caller reads itself.
    fn rules(&mut self, node: &Node, path: &str, other: &[&str]) -> Rules {
        let mut rules = Rules::default();
        let own = ["action", "tools", "egress", "llm", "sensitive_paths"];
        let entries: Vec<(&str, &Node)> = if other.is_empty() {
            self.mapping(node, path, &own)
        } else {
            // The caller already reported unknown keys of an agent entry.
            match &node.value {
                Value::Mapping(entries) => entries.iter().map(|(k, _, v)| (k.as_str(), v)).filter(|(k, _)| own.contains(k)).collect(),
                _ => Vec::new(),
            }
        };
        for (key, value) in entries {
            let key_path = join(path, key);
            match key {
                "action" => {
                    if let Some(action) = self.action(value, &key_path) {
                        rules.action = action;
                    }
                }
                "tools" => rules.tools = Some(self.tools(value, &key_path)),
                "egress" => rules.egress = Some(self.egress(value, &key_path)),
                "llm" => rules.llm = self.llm(value, &key_path),
                "sensitive_paths" => rules.sensitive_paths = self.sensitive_paths(value, &key_path),
                _ => {}
            }
        }
        rules
    }

    fn action(&mut self, node: &Node, path: &str) -> Option<Action> {
        match self.string(node, path)?.as_str() {
            "alert" => Some(Action::Alert),
            "record" => Some(Action::Record),
            other => {
                self.problem(path, node.line, format!("invalid action {other:?}: expected `alert` (a finding) or `record` (the checks only)"));
                None
            }
        }
    }

    fn tools(&mut self, node: &Node, path: &str) -> Vec<ToolRule> {
        let mut tools = Vec::new();
        for (index, item) in self.sequence(node, path).iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            if let Value::Scalar { .. } = item.value {
                if let Some(exe) = self.wildcard(item, &item_path, false) {
                    tools.push(ToolRule { exe, args: None, args_regex: None, raw: item.to_json() });
                }
                continue;
            }
            let entries = self.mapping(item, &item_path, &["exe", "args", "args_regex"]);
            let mut rule = (None, None, None);
            for (key, value) in &entries {
                let key_path = join(&item_path, key);
                match *key {
                    "exe" => rule.0 = self.wildcard(value, &key_path, false),
                    "args" => rule.1 = self.wildcard(value, &key_path, false),
                    "args_regex" => {
                        if let Some(text) = self.string(value, &key_path) {
                            match Regex::new(&text) {
                                Ok(regex) => rule.2 = Some(regex),
                                Err(error) => self.problem(&key_path, value.line, format!("invalid regular expression: {error}")),
                            }
                        }
                    }
                    _ => {}
                }
            }
            match rule {
                (Some(exe), args, args_regex) => tools.push(ToolRule { exe, args, args_regex, raw: item.to_json() }),
                (None, ..) if !entries.iter().any(|(k, _)| *k == "exe") && !matches!(item.value, Value::Sequence(_)) => {
                    self.problem(&item_path, item.line, "missing key `exe`: an executable path or file name")
                }
                _ => {}
            }
        }
        tools
    }

    fn egress(&mut self, node: &Node, path: &str) -> Vec<EgressRule> {
        let mut egress = Vec::new();
        for (index, item) in self.sequence(node, path).iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            let entries = self.mapping(item, &item_path, &["host", "cidr", "port", "ports"]);
            let mut rule = EgressRule { host: None, cidr: None, ports: None, raw: item.to_json() };
            let mut valid = true;
            for (key, value) in &entries {
                let key_path = join(&item_path, key);
                match *key {
                    "host" => match self.string(value, &key_path).map(|h| HostPattern::new(&h)) {
                        Some(Ok(host)) => rule.host = Some(host),
                        Some(Err(message)) => {
                            self.problem(&key_path, value.line, message);
                            valid = false;
                        }
                        None => valid = false,
                    },
                    "cidr" => match self.string(value, &key_path).map(|c| Cidr::parse(&c)) {
                        Some(Ok(cidr)) => rule.cidr = Some(cidr),
                        Some(Err(message)) => {
                            self.problem(&key_path, value.line, message);
                            valid = false;
                        }
                        None => valid = false,
                    },
                    "port" | "ports" => {
                        if rule.ports.is_some() {
                            self.problem(&key_path, value.line, "give `port` or `ports`, not both");
                            valid = false;
                            continue;
                        }
                        let items: Vec<&Node> = match &value.value {
                            Value::Sequence(items) if *key == "ports" => items.iter().collect(),
                            _ => vec![value],
                        };
                        let mut ranges = Vec::new();
                        for (port_index, port) in items.into_iter().enumerate() {
                            let port_path = if *key == "ports" { format!("{key_path}[{port_index}]") } else { key_path.clone() };
                            let text = match &port.value {
                                Value::Scalar { text, .. } if !port.is_null() => text.clone(),
                                _ => {
                                    self.problem(&port_path, port.line, format!("expected a port or a range such as 8000-8100, found {}", port.type_name()));
                                    valid = false;
                                    continue;
                                }
                            };
                            match PortRange::parse(&text) {
                                Ok(range) => ranges.push(range),
                                Err(message) => {
                                    self.problem(&port_path, port.line, message);
                                    valid = false;
                                }
                            }
                        }
                        rule.ports = Some(ranges);
                    }
                    _ => {}
                }
            }
            if matches!(item.value, Value::Mapping(_)) && rule.host.is_none() && rule.cidr.is_none() && rule.ports.is_none() && valid {
                self.problem(&item_path, item.line, "an egress entry needs at least one of host, cidr, port, ports");
                valid = false;
            }
            if valid && matches!(item.value, Value::Mapping(_)) {
                egress.push(rule);
            }
        }
        egress
    }

    fn llm(&mut self, node: &Node, path: &str) -> LlmRules {
        let mut llm = LlmRules::default();
        for (key, value) in self.mapping(node, path, &["providers", "models"]) {
            let key_path = join(path, key);
            let items = self.strings(value, &key_path);
            match key {
                "providers" => llm.providers = Some(items.into_iter().map(|(text, _, _)| text.to_ascii_lowercase()).collect()),
                "models" => {
                    let mut models = Vec::new();
                    for (text, line, item_path) in items {
                        match Wildcard::new(&text, true) {
                            Ok(model) => models.push(model),
                            Err(message) => self.problem(&item_path, line, message),
                        }
                    }
                    llm.models = Some(models);
                }
                _ => {}
            }
        }
        llm
    }

    fn sensitive_paths(&mut self, node: &Node, path: &str) -> Vec<SensitivePath> {
        let mut paths = Vec::new();
        for (index, item) in self.sequence(node, path).iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            let (pattern_node, action) = match &item.value {
                Value::Scalar { .. } => (Some(item), Action::Alert),
                Value::Mapping(_) => {
                    let entries = self.mapping(item, &item_path, &["path", "action"]);
                    let mut action = Action::Alert;
                    let mut pattern_node = None;
                    for (key, value) in &entries {
                        match *key {
                            "path" => pattern_node = Some(*value),
                            "action" => action = self.action(value, &join(&item_path, "action")).unwrap_or(Action::Alert),
                            _ => {}
                        }
                    }
                    if pattern_node.is_none() {
                        self.problem(&item_path, item.line, "missing key `path`");
                    }
                    (pattern_node, action)
                }
                _ => {
                    self.problem(&item_path, item.line, format!("expected a path pattern or a mapping with `path` and `action`, found {}", item.type_name()));
                    (None, Action::Alert)
                }
            };
            let Some(pattern_node) = pattern_node else { continue };
            let key_path = if matches!(item.value, Value::Mapping(_)) { join(&item_path, "path") } else { item_path.clone() };
            let Some(text) = self.string(pattern_node, &key_path) else { continue };
            match PathPattern::new(&text) {
                Ok(pattern) => paths.push(SensitivePath { pattern, action, raw: item.to_json() }),
                Err(message) => self.problem(&key_path, pattern_node.line, message),
            }
        }
        paths
    }
}

fn describe(node: &Node) -> String {
    match &node.value {
        Value::Scalar { text, .. } if !node.is_null() => format!("{text:?}"),
        _ => node.type_name().to_owned(),
    }
}
