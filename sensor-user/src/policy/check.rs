//! Checks of one record against the rules of its agent, each with the
//! values compared, and the verdict and finding that follow from them.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use serde_json::{json, Value};

use super::{references::Subject, Action, AgentEntry, Policy, Rules, Selector};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Pass,
    Fail,
    NotApplicable,
}

/// One check as written in a record's `policy.checks`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub rule: String,
    pub result: CheckResult,
    pub action: Action,
    pub observed: Value,
    /// The rule's entries as written; `null` when the rule is not set.
    pub allowed: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip)]
    pub subject: Subject,
}

/// The facts the inventory's selectors are matched against.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Identity {
    pub exe: Option<String>,
    pub exe_sha256: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

impl Identity {
    /// Takes the workload facts from a record's `workload` section.
    pub fn add_workload(&mut self, workload: &Value) {
        let text = |key: &str| workload.get(key).and_then(Value::as_str).map(str::to_owned);
        self.user = text("user");
        self.unit = text("unit");
        self.namespace = text("namespace");
        self.pod = text("pod");
        self.service_account = text("service_account");
        self.image = text("image");
        self.labels = workload.get("labels").and_then(Value::as_object).map(|labels| {
            labels.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect()
        });
        if self.cgroup.is_none() {
            self.cgroup = text("cgroup");
        }
    }
}

impl Selector {
    pub fn matches(&self, identity: &Identity) -> bool {
        let text_matches = |pattern: &Option<super::Wildcard>, value: &Option<String>| {
            pattern.as_ref().is_none_or(|p| value.as_deref().is_some_and(|v| p.matches(v)))
        };
        let equals = |expected: &Option<String>, value: &Option<String>| expected.as_ref().is_none_or(|e| value.as_ref() == Some(e));
        let cgroup = self.cgroup.as_ref().is_none_or(|prefix| {
            identity.cgroup.as_deref().is_some_and(|path| {
                let prefix = prefix.trim_end_matches('/');
                path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/')) || prefix.is_empty()
            })
        });
        let pod = self.pod.as_ref().is_none_or(|pod| {
            text_matches(&pod.namespace, &identity.namespace)
                && equals(&pod.service_account, &identity.service_account)
                && text_matches(&pod.image, &identity.image)
                && pod.labels.iter().all(|(k, v)| identity.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        });
        text_matches(&self.exe, &identity.exe)
            && self.exe_sha256.as_ref().is_none_or(|h| identity.exe_sha256.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(h)))
            && equals(&self.user, &identity.user)
            && self.uid.is_none_or(|uid| identity.uid == Some(uid))
            && cgroup
            && text_matches(&self.unit, &identity.unit)
            && pod
    }
}

/// Checks and verdict of one record, and the finding they call for.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The agent entry whose rules applied; `None` for `defaults`.
    pub entry: Option<String>,
    pub checks: Vec<Check>,
}

impl Outcome {
    /// `alert` when a check with the `alert` action failed, `record` when
    /// only `record` checks failed, `allow` otherwise.
    pub fn verdict(&self) -> &'static str {
        let failed = self.checks.iter().filter(|c| c.result == CheckResult::Fail);
        let mut verdict = "allow";
        for check in failed {
            match check.action {
                Action::Alert => return "alert",
                Action::Record => verdict = "record",
            }
        }
        verdict
    }

    /// Builds the `policy` section.
    pub fn to_json(&self) -> Value {
        json!({ "entry": self.entry, "verdict": self.verdict(), "checks": self.checks })
    }

    /// Returns the failed checks whose action is `alert`.
    pub fn alerts(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.result == CheckResult::Fail && c.action == Action::Alert).collect()
    }
}

impl Policy {
    /// Returns the first agent entry whose selectors all match.
    pub fn match_agent(&self, identity: &Identity) -> Option<&AgentEntry> {
        self.agents.iter().find(|entry| entry.selector.matches(identity))
    }

    /// Returns the rules of `entry`, or `defaults` when it is `None` or no
    /// longer in the policy, with the label used in rule ids.
    fn rules_for(&self, entry: Option<&str>) -> (Option<&str>, &Rules) {
        match entry.and_then(|name| self.agents.iter().find(|a| a.name == name)) {
            Some(agent) => (Some(agent.name.as_str()), &agent.rules),
            None => (None, &self.defaults),
        }
    }

    fn outcome(entry: Option<&str>, checks: Vec<Check>) -> Outcome {
        Outcome { entry: entry.map(str::to_owned), checks }
    }

    pub fn check_tool(&self, entry: Option<&str>, exe: Option<&str>, exec_path: Option<&str>, argv: &[String]) -> Outcome {
        let (entry, rules) = self.rules_for(entry);
        let name = exe.and_then(|e| e.rsplit('/').next());
        let args = argv.get(1..).unwrap_or_default().join(" ");
        let mut observed = json!({ "exe": exe, "name": name, "argv": argv });
        if exec_path.is_some() && exec_path != exe {
            observed["exec_path"] = json!(exec_path);
        }
        let mut check = new_check(entry, "tools", rules.action, observed, Subject::Tool);
        let Some(tools) = &rules.tools else {
            return Self::outcome(entry, vec![not_set(check)]);
        };
        check.allowed = tools.iter().map(|t| t.raw.clone()).collect();
        let found = tools.iter().position(|tool| {
            let paths = [exe, exec_path];
            let exe_matches = if tool.exe.pattern.contains('/') {
                paths.iter().flatten().any(|path| tool.exe.matches(path))
            } else {
                paths.iter().flatten().filter_map(|path| path.rsplit('/').next()).any(|name| tool.exe.matches(name))
            };
            exe_matches
                && tool.args.as_ref().is_none_or(|pattern| pattern.matches(&args))
                && tool.args_regex.as_ref().is_none_or(|regex| regex.is_match(&args))
        });
        let what = exe.or(exec_path).unwrap_or("an executable of unknown path");
        decide(&mut check, found.map(|i| (i, tools[i].raw.clone())), format!("no allowed tool matches {what} with these arguments"));
        Self::outcome(entry, vec![check])
    }

    pub fn check_egress(&self, entry: Option<&str>, address: Option<IpAddr>, port: Option<u16>, host: Option<&str>, protocol: &str) -> Outcome {
        let (entry, rules) = self.rules_for(entry);
        let observed = json!({ "address": address, "port": port, "host": host, "protocol": protocol });
        let mut check = new_check(entry, "egress", rules.action, observed, Subject::Egress);
        let Some(egress) = &rules.egress else {
            return Self::outcome(entry, vec![not_set(check)]);
        };
        check.allowed = egress.iter().map(|e| e.raw.clone()).collect();
        let Some(address) = address else {
            check.result = CheckResult::NotApplicable;
            check.reason = Some("the destination address could not be read".into());
            return Self::outcome(entry, vec![check]);
        };
        let found = egress.iter().position(|rule| {
            rule.cidr.as_ref().is_none_or(|cidr| cidr.contains(address))
                && rule.host.as_ref().is_none_or(|pattern| host.is_some_and(|h| pattern.matches(h)))
                && rule.ports.as_ref().is_none_or(|ranges| port.is_some_and(|p| ranges.iter().any(|r| r.contains(p))))
        });
        let destination = match (host, port) {
            (Some(host), Some(port)) => format!("{host} ({address}) port {port}"),
            (None, Some(port)) => format!("{address} port {port} (no host name known for the address)"),
            (_, None) => address.to_string(),
        };
        decide(&mut check, found.map(|i| (i, egress[i].raw.clone())), format!("no allowed egress entry matches {destination}"));
        Self::outcome(entry, vec![check])
    }

    pub fn check_llm(&self, entry: Option<&str>, provider: Option<&str>, model: Option<&str>) -> Outcome {
        let (entry, rules) = self.rules_for(entry);
        let observed = json!({ "provider": provider, "model": model });
        let mut providers = new_check(entry, "llm.providers", rules.action, observed.clone(), Subject::Llm);
        match &rules.llm.providers {
            None => providers = not_set(providers),
            Some(allowed) => {
                providers.allowed = json!(allowed);
                match provider {
                    None => {
                        providers.result = CheckResult::Fail;
                        providers.reason = Some("the request's provider is unknown, so it matches no allowed provider".into());
                    }
                    Some(provider) => {
                        let found = allowed.iter().position(|p| p.eq_ignore_ascii_case(provider));
                        decide(&mut providers, found.map(|i| (i, json!(allowed[i]))), format!("provider {provider} is not allowed"));
                    }
                }
            }
        }
        let mut models = new_check(entry, "llm.models", rules.action, observed, Subject::Llm);
        match &rules.llm.models {
            None => models = not_set(models),
            Some(allowed) => {
                models.allowed = allowed.iter().map(|m| json!(m.pattern)).collect();
                match model {
                    None => {
                        models.result = CheckResult::NotApplicable;
                        models.reason = Some("the request names no model".into());
                    }
                    Some(model) => {
                        let found = allowed.iter().position(|m| m.matches(model));
                        decide(&mut models, found.map(|i| (i, json!(allowed[i].pattern))), format!("model {model} is not allowed"));
                    }
                }
            }
        }
        Self::outcome(entry, vec![providers, models])
    }

    /// Checks a file operation against the sensitive paths: the policy's
    /// own and those of the agent's rules. A match fails the check.
    pub fn check_path(&self, entry: Option<&str>, path: &str, new_path: Option<&str>, known_homes: &[String]) -> Outcome {
        let (entry, rules) = self.rules_for(entry);
        let mut homes = super::matchers::homes_for(path, known_homes);
        if let Some(new_path) = new_path {
            homes.extend(super::matchers::homes_for(new_path, known_homes));
            homes.sort();
            homes.dedup();
        }
        let mut observed = json!({ "path": path, "home": homes });
        if let Some(new_path) = new_path {
            observed["new_path"] = json!(new_path);
        }
        let all: Vec<_> = self.sensitive_paths.iter().chain(&rules.sensitive_paths).collect();
        let mut check = new_check(entry, "sensitive_paths", Action::Alert, observed, Subject::SensitiveAccess);
        if all.is_empty() {
            return Self::outcome(entry, vec![not_set(check)]);
        }
        check.allowed = all.iter().map(|p| p.raw.clone()).collect();
        let hit = all.iter().enumerate().find(|(_, sensitive)| {
            sensitive.pattern.matches(path, &homes) || new_path.is_some_and(|p| sensitive.pattern.matches(p, &homes))
        });
        match hit {
            Some((index, sensitive)) => {
                check.result = CheckResult::Fail;
                check.action = sensitive.action;
                check.matched = Some(json!({ "index": index, "entry": sensitive.raw }));
                check.reason = Some(format!("the path matches the sensitive path {}", sensitive.pattern.pattern));
            }
            None => check.result = CheckResult::Pass,
        }
        Self::outcome(entry, vec![check])
    }

    /// Builds the check behind a shadow-agent finding: the agent's identity
    /// matched no entry of the inventory.
    pub fn check_inventory(&self, identity: &Identity, registered_in_config: &[String]) -> Outcome {
        let mut allowed: Vec<Value> = self.agents.iter().map(|a| json!({ "name": a.name })).collect();
        allowed.extend(registered_in_config.iter().map(|name| json!({ "name": name, "source": "agents.registered" })));
        let check = Check {
            rule: "policy/inventory".into(),
            result: CheckResult::Fail,
            action: Action::Alert,
            observed: json!(identity),
            allowed: Value::Array(allowed),
            matched: None,
            reason: Some("the agent matches no entry of the policy's agents nor of agents.registered".into()),
            subject: Subject::ShadowAgent,
        };
        Self::outcome(None, vec![check])
    }
}

fn new_check(entry: Option<&str>, rule: &str, action: Action, observed: Value, subject: Subject) -> Check {
    Check {
        rule: format!("{}/{rule}", entry.unwrap_or("defaults")),
        result: CheckResult::NotApplicable,
        action,
        observed,
        allowed: Value::Null,
        matched: None,
        reason: None,
        subject,
    }
}

fn not_set(mut check: Check) -> Check {
    check.result = CheckResult::NotApplicable;
    let (entry, rule) = check.rule.split_once('/').unwrap_or(("", ""));
    check.reason = Some(format!("the policy sets no {rule} rule for {entry}"));
    check
}

fn decide(check: &mut Check, found: Option<(usize, Value)>, failure: String) {
    match found {
        Some((index, entry)) => {
            check.result = CheckResult::Pass;
            check.matched = Some(json!({ "index": index, "entry": entry }));
        }
        None => {
            check.result = CheckResult::Fail;
            check.reason = Some(failure);
        }
    }
}
