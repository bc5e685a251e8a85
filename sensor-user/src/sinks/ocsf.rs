//! Native records in, OCSF 1.8 events out, for sinks whose format is `ocsf`.
//!
//! Each record is mapped from its serialised native form, so every kind,
//! including ones added later, gets an event: kinds without a class of
//! their own become a Base Event. What a class has no attribute for goes to
//! `unmapped`, always the last member and never empty, because the hash
//! chain's integrity member is sealed into it (`chain::seal_nested`). The
//! mapping, field by field, is in `docs/ocsf.md`.
//!
//! The cost is a parse and a second serialisation per record, paid only by
//! a sink in `ocsf` format.

use serde_json::{json, Map, Value};

/// The OCSF version the events follow.
pub const OCSF_VERSION: &str = "1.8.0";

/// Profiles applied to every event: `host` brings `actor` and `device` to
/// the network classes.
const PROFILES: &[&str] = &["host"];

/// Native top-level members that the event carries elsewhere.
const HEAD_MEMBERS: &[&str] = &["id", "seq", "time", "kind", "host"];

struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const PROCESS_ACTIVITY: Class =
    Class { uid: 1007, name: "Process Activity", category_uid: 1, category_name: "System Activity" };
const FILE_ACTIVITY: Class =
    Class { uid: 1001, name: "File System Activity", category_uid: 1, category_name: "System Activity" };
const EVENT_LOG_ACTIVITY: Class =
    Class { uid: 1008, name: "Event Log Activity", category_uid: 1, category_name: "System Activity" };
const DETECTION_FINDING: Class =
    Class { uid: 2004, name: "Detection Finding", category_uid: 2, category_name: "Findings" };
const NETWORK_ACTIVITY: Class =
    Class { uid: 4001, name: "Network Activity", category_uid: 4, category_name: "Network Activity" };
const DNS_ACTIVITY: Class =
    Class { uid: 4003, name: "DNS Activity", category_uid: 4, category_name: "Network Activity" };
const HTTP_ACTIVITY: Class =
    Class { uid: 4002, name: "HTTP Activity", category_uid: 4, category_name: "Network Activity" };
const BASE_EVENT: Class = Class { uid: 0, name: "Base Event", category_uid: 0, category_name: "Uncategorized" };

/// One event under construction: the OCSF members, and the native members
/// not yet placed, which end up in `unmapped`.
struct Event {
    out: Map<String, Value>,
    rest: Map<String, Value>,
}

impl Event {
    fn set(&mut self, key: &str, value: Value) {
        self.out.insert(key.to_owned(), value);
    }

    /// Takes a native top-level member out of what goes to `unmapped`.
    fn take(&mut self, key: &str) -> Value {
        self.rest.remove(key).unwrap_or(Value::Null)
    }
}

/// Renders a serialised native record as one OCSF event, `unmapped` last,
/// into `out`, ready for `chain::seal_nested`.
pub fn render(native: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let record: Value = serde_json::from_slice(native)?;
    let (event, unmapped) = map(&record);
    serde_json::to_writer(&mut *out, &event)?;
    out.pop();
    if !event.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"unmapped\":");
    serde_json::to_writer(&mut *out, &unmapped)?;
    out.push(b'}');
    Ok(())
}

/// Maps a native record to the OCSF event's members and its `unmapped`
/// object. `unmapped` always contains at least the native `schema`.
pub fn map(record: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let mut rest = record.as_object().cloned().unwrap_or_default();
    for member in HEAD_MEMBERS {
        rest.remove(*member);
    }
    let mut event = Event { out: Map::new(), rest };
    let kind = record["kind"].as_str().unwrap_or("");

    let (class, activity_id, activity_name) = classify(kind, record);
    let time_ms = record["time_unix_nano"].as_u64().map(|ns| ns / 1_000_000);
    event.set("class_uid", json!(class.uid));
    event.set("class_name", json!(class.name));
    event.set("category_uid", json!(class.category_uid));
    event.set("category_name", json!(class.category_name));
    event.set("activity_id", json!(activity_id));
    event.set("activity_name", json!(activity_name));
    event.set("type_uid", json!(u64::from(class.uid) * 100 + u64::from(activity_id)));
    event.set("type_name", json!(format!("{}: {activity_name}", class.name)));
    event.set("time", json!(time_ms.unwrap_or(0)));
    event.set("metadata", metadata(record, kind));
    event.set("device", device(&record["host"]));

    let severity = match class.uid {
        2004 => severity_id(record["finding"]["severity"].as_str()),
        _ => sensor_severity(kind),
    };
    event.set("severity_id", json!(severity.0));
    event.set("severity", json!(severity.1));

    match class.uid {
        1007 => process_activity(&mut event, record, kind),
        1001 => file_activity(&mut event, record),
        4001 => network_activity(&mut event, record),
        4002 => http_activity(&mut event, record),
        4003 => dns_activity(&mut event, record),
        2004 => detection_finding(&mut event, record),
        1008 => {
            event.set("log_name", json!("agent-sensor evidence"));
            event.set("log_provider", json!("agent-sensor"));
        }
        _ => {}
    }
    // Process Activity has its own `process`, and a finding puts the
    // process in its evidence.
    if class.uid != 1007
        && class.uid != 2004
        && let Some(process) = process(record)
    {
        event.set("actor", json!({ "process": process }));
        strip_process(&mut event, record);
    }
    policy(&mut event, record);
    observables(&mut event);

    let Event { out, mut rest } = event;
    let mut unmapped = Map::new();
    unmapped.insert("schema".to_owned(), rest.remove("schema").unwrap_or(json!(crate::evidence::SCHEMA)));
    unmapped.extend(rest);
    (out, unmapped)
}

/// Picks the class and activity (id and name) of a native kind.
fn classify(kind: &str, record: &Value) -> (Class, u32, String) {
    let named = |class, id, name: &str| (class, id, name.to_owned());
    match kind {
        "process.exec" | "process.fork" | "tool.spawn" => named(PROCESS_ACTIVITY, 1, "Launch"),
        "process.exit" => named(PROCESS_ACTIVITY, 2, "Terminate"),
        "process.snapshot" => named(PROCESS_ACTIVITY, 99, "Running at start-up"),
        "net.connect" | "net.connect_result" => {
            let network = &record["network"];
            let outcome = network["outcome"].as_str().or(network["result"].as_str()).unwrap_or("unknown");
            match outcome {
                "ok" | "established" | "EINPROGRESS" | "pending" => named(NETWORK_ACTIVITY, 1, "Open"),
                "ECONNREFUSED" => named(NETWORK_ACTIVITY, 5, "Refuse"),
                "unknown" => named(NETWORK_ACTIVITY, 0, "Unknown"),
                _ => named(NETWORK_ACTIVITY, 4, "Fail"),
            }
        }
        "tls.hello" => named(NETWORK_ACTIVITY, 6, "Traffic"),
        "net.dns" => named(DNS_ACTIVITY, 2, "Response"),
        "file.open" => named(FILE_ACTIVITY, 14, "Open"),
        "file.unlink" => named(FILE_ACTIVITY, 4, "Delete"),
        "file.rename" => named(FILE_ACTIVITY, 5, "Rename"),
        "llm.request" | "llm.response" => {
            let method = record["llm"]["method"].as_str().unwrap_or("");
            let (id, name) = match method.to_ascii_uppercase().as_str() {
                "CONNECT" => (1, "Connect"),
                "DELETE" => (2, "Delete"),
                "GET" => (3, "Get"),
                "HEAD" => (4, "Head"),
                "OPTIONS" => (5, "Options"),
                "POST" => (6, "Post"),
                "PUT" => (7, "Put"),
                "TRACE" => (8, "Trace"),
                "PATCH" => (9, "Patch"),
                _ => (0, "Unknown"),
            };
            named(HTTP_ACTIVITY, id, name)
        }
        "sensor.start" => named(EVENT_LOG_ACTIVITY, 6, "Start"),
        "sensor.stop" => named(EVENT_LOG_ACTIVITY, 7, "Stop"),
        "evidence.checkpoint" if record["checkpoint"]["reason"] == "rotation" => {
            named(EVENT_LOG_ACTIVITY, 5, "Rotate")
        }
        _ if kind.starts_with("finding.") => named(DETECTION_FINDING, 1, "Create"),
        _ if kind.starts_with("sensor.") || kind.starts_with("evidence.") || kind.starts_with("policy.") => {
            (EVENT_LOG_ACTIVITY, 99, kind.to_owned())
        }
        _ => (BASE_EVENT, 99, kind.to_owned()),
    }
}

fn metadata(record: &Value, kind: &str) -> Value {
    let mut metadata = json!({
        "product": {
            "name": "agent-sensor",
            "vendor_name": "agent-sensor",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "version": OCSF_VERSION,
        "profiles": PROFILES,
        "event_code": kind,
        "log_name": "agent-sensor evidence",
    });
    if let Some(seq) = record["seq"].as_u64() {
        metadata["sequence"] = json!(seq);
    }
    if let Some(id) = record["id"].as_str() {
        metadata["uid"] = json!(id);
    }
    if let Some(time) = record["time"].as_str() {
        metadata["original_time"] = json!(time);
    }
    metadata
}

fn device(host: &Value) -> Value {
    let mut device = json!({ "type_id": 0, "type": "Unknown" });
    device["hostname"] = host["name"].as_str().map_or(json!("unknown"), |name| json!(name));
    if let Some(boot_id) = host["boot_id"].as_str() {
        device["boot_uid"] = json!(boot_id);
    }
    device
}

/// Severity of records that are not findings: lost events and degraded
/// hooks are what an operator must look at.
fn sensor_severity(kind: &str) -> (u32, &'static str) {
    match kind {
        "sensor.loss" | "sensor.chain_recovered" => (3, "Medium"),
        "sensor.degraded" => (2, "Low"),
        _ => (1, "Informational"),
    }
}

fn severity_id(severity: Option<&str>) -> (u32, &'static str) {
    match severity {
        Some("info") => (1, "Informational"),
        Some("low") => (2, "Low"),
        Some("medium") => (3, "Medium"),
        Some("high") => (4, "High"),
        Some("critical") => (5, "Critical"),
        _ => (0, "Unknown"),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().filter(|name| !name.is_empty()).unwrap_or(path)
}

fn cmd_line(argv: &Value) -> Option<String> {
    let words: Vec<&str> = argv.as_array()?.iter().filter_map(Value::as_str).collect();
    (!words.is_empty()).then(|| words.join(" "))
}

fn rfc3339_ms(text: &Value) -> Option<u64> {
    let time = humantime::parse_rfc3339(text.as_str()?).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// The native members of `process` that the OCSF process object carries;
/// the others stay in `unmapped.process`.
const PROCESS_MAPPED: &[&str] = &["pid", "ppid", "exec_id", "parent_exec_id", "exe", "exe_sha256", "start_time", "uid"];

/// Builds the OCSF process object of a native record's `process`.
fn process(record: &Value) -> Option<Value> {
    let native = record.get("process")?;
    let mut process = Map::new();

    if let Some(pid) = native["pid"].as_u64() {
        process.insert("pid".into(), json!(pid));
    }
    if let Some(exec_id) = native["exec_id"].as_str() {
        process.insert("uid".into(), json!(exec_id));
    }

    let exe = native["exe"].as_str();
    let name = exe.map(file_name).or(native["exe_name"].as_str()).or(native["comm"].as_str());
    if let Some(name) = name {
        process.insert("name".into(), json!(name));
    }
    if let Some(cmd_line) = cmd_line(&native["argv"]) {
        process.insert("cmd_line".into(), json!(cmd_line));
    }
    if let Some(exe) = exe {
        process.insert("path".into(), json!(exe));
        let mut file = json!({ "name": file_name(exe), "path": exe, "type_id": 1, "type": "Regular File" });
        if let Some(sha256) = native["exe_sha256"].as_str() {
            file["hashes"] = json!([{ "algorithm_id": 3, "algorithm": "SHA-256", "value": sha256 }]);
        }
        process.insert("file".into(), file);
    }

    if let Some(tid) = native["thread"]["tid"].as_u64() {
        process.insert("tid".into(), json!(tid));
    }
    if let Some(created) = rfc3339_ms(&native["start_time"]) {
        process.insert("created_time".into(), json!(created));
    }
    if let Some(uid) = native["uid"].as_u64() {
        let mut user = json!({ "uid": uid.to_string() });
        if let Some(name) = record["workload"]["user"].as_str() {
            user["name"] = json!(name);
        }
        process.insert("user".into(), user);
    }

    if let Some(ancestry) = native["ancestry"].as_array() {
        let entities: Vec<Value> = ancestry.iter().filter_map(Value::as_str).map(|uid| json!({ "uid": uid })).collect();
        if !entities.is_empty() {
            process.insert("ancestry".into(), json!(entities));
        }
    }
    if let Some(parent) = parent_process(native) {
        process.insert("parent_process".into(), parent);
    }
    (!process.is_empty()).then_some(Value::Object(process))
}

fn parent_process(native: &Value) -> Option<Value> {
    let mut parent = Map::new();
    if let Some(ppid) = native["ppid"].as_u64().or(native["parent"]["pid"].as_u64()) {
        parent.insert("pid".into(), json!(ppid));
    }
    if let Some(uid) = native["parent_exec_id"].as_str().or(native["parent"]["exec_id"].as_str()) {
        parent.insert("uid".into(), json!(uid));
    }
    if parent.is_empty() {
        return None;
    }
    if let Some(exe) = native["parent"]["exe"].as_str() {
        parent.insert("path".into(), json!(exe));
        parent.insert("name".into(), json!(file_name(exe)));
    }
    if let Some(cmd_line) = cmd_line(&native["parent"]["argv"]) {
        parent.insert("cmd_line".into(), json!(cmd_line));
    }
    Some(Value::Object(parent))
}

/// Leaves in `unmapped.process` only what the process object lacks.
fn strip_process(event: &mut Event, record: &Value) {
    let Some(mut native) = record.get("process").and_then(Value::as_object).cloned() else { return };
    for key in PROCESS_MAPPED {
        native.remove(*key);
    }
    if let Some(parent) = native.get_mut("parent").and_then(Value::as_object_mut) {
        parent.remove("pid");
        parent.remove("exec_id");
        parent.remove("exe");
    }
    event.take("process");
    event.rest.insert("process".into(), Value::Object(native));
}

fn process_activity(event: &mut Event, record: &Value, kind: &str) {
    // Every process record has a `process` section, but the schema
    // requires a process object in any case.
    let process = process(record).unwrap_or_else(|| json!({ "uid": "unknown" }));
    // The actor of a launch is the parent that made it. An exit or a
    // process found running has no other actor than itself.
    let actor = match (kind, process.get("parent_process")) {
        ("process.exec" | "process.fork" | "tool.spawn", Some(parent)) => parent.clone(),
        _ => process.clone(),
    };
    event.set("actor", json!({ "process": actor }));
    event.set("process", process);
    strip_process(event, record);
    if let Some(code) = record["exit"]["code"].as_i64() {
        event.set("exit_code", json!(code));
    }
}

fn status(event: &mut Event, result: Option<&str>) {
    match result {
        Some("ok") => {
            event.set("status_id", json!(1));
            event.set("status", json!("Success"));
        }
        Some(errno) => {
            event.set("status_id", json!(2));
            event.set("status", json!("Failure"));
            event.set("status_code", json!(errno));
        }
        None => {}
    }
}

fn file_activity(event: &mut Event, record: &Value) {
    let mut native = record["file"].as_object().cloned().unwrap_or_default();
    let path = native.remove("path").and_then(|p| p.as_str().map(str::to_owned)).unwrap_or_default();
    event.set("file", json!({ "name": file_name(&path), "path": path, "type_id": 0, "type": "Unknown" }));
    if let Some(new_path) = native.remove("new_path").and_then(|p| p.as_str().map(str::to_owned)) {
        event.set("file_result", json!({ "name": file_name(&new_path), "path": new_path, "type_id": 0, "type": "Unknown" }));
    }
    let result = native.remove("result");
    status(event, result.as_ref().and_then(Value::as_str));
    event.take("file");
    if !native.is_empty() {
        event.rest.insert("file".into(), Value::Object(native));
    }
}

fn endpoint(destination: &Value, host: Option<&str>) -> Option<Value> {
    let address = destination["address"].as_str()?;
    let mut endpoint = json!({ "ip": address });
    if let Some(port) = destination["port"].as_u64() {
        endpoint["port"] = json!(port);
    }
    if let Some(host) = host {
        endpoint["hostname"] = json!(host);
    }
    Some(endpoint)
}

fn protocol_num(protocol: &str) -> Option<u32> {
    match protocol {
        "tcp" => Some(6),
        "udp" => Some(17),
        _ => None,
    }
}

fn network_activity(event: &mut Event, record: &Value) {
    let mut native = record["network"].as_object().cloned().unwrap_or_default();
    let host = record["tls"]["sni"].as_str().or(record["dns_name"].as_str());
    let destination = native.remove("destination").unwrap_or(Value::Null);
    // The schema requires a source or a destination. A socket that could
    // not be read has neither, so the host is named as the source.
    match endpoint(&destination, host) {
        Some(endpoint) => event.set("dst_endpoint", endpoint),
        None => {
            if !destination.is_null() {
                native.insert("destination".into(), destination);
            }
            event.set("src_endpoint", json!({ "hostname": record["host"]["name"].as_str().unwrap_or("unknown") }));
        }
    }
    let protocol = native.get("protocol").and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let mut connection = json!({ "direction_id": 2, "direction": "Outbound", "protocol_name": protocol });
    if let Some(number) = protocol_num(&protocol) {
        connection["protocol_num"] = json!(number);
    }
    if let Some(id) = native.get("connect_id").and_then(Value::as_u64) {
        connection["uid"] = json!(id.to_string());
    }
    event.set("connection_info", connection);
    native.remove("protocol");
    // A non-blocking connect's status is its handshake's outcome, when
    // one was seen.
    let result = native.get("result").and_then(Value::as_str);
    let outcome = native.get("outcome").and_then(Value::as_str);
    let settled = match (result, outcome) {
        (Some("EINPROGRESS"), Some("established")) => Some("ok"),
        (Some("EINPROGRESS"), Some("pending" | "unknown") | None) => None,
        (Some("EINPROGRESS"), Some(errno)) => Some(errno),
        (result, _) => result,
    };
    status(event, settled.map(str::to_owned).as_deref());
    if let Some(outcome) = native.get("outcome").and_then(Value::as_str) {
        event.set("status_detail", json!(outcome));
    }
    event.take("network");
    event.rest.insert("network".into(), Value::Object(native));
}

fn http_activity(event: &mut Event, record: &Value) {
    let llm = &record["llm"];
    let connection = &record["connection"];
    let host = llm["host"].as_str().or(connection["sni"].as_str()).or(connection["dns_name"].as_str());
    if record["kind"] == "llm.request" {
        let mut url = json!({ "path": llm["path"].as_str().unwrap_or("/") });
        if let Some(host) = host {
            url["hostname"] = json!(host);
        }
        let mut request = json!({ "url": url });
        if let Some(method) = llm["method"].as_str() {
            request["http_method"] = json!(method);
        }
        event.set("http_request", request);
    } else {
        let code = llm["status"].as_u64().unwrap_or(0);
        event.set("http_response", json!({ "code": code }));
        event.set("http_status", json!(code));
    }
    if let Some(endpoint) = endpoint(&connection["destination"], host) {
        event.set("dst_endpoint", endpoint);
    }
}

/// Maps a DNS answer the host received. The record does not name the
/// server, so the endpoint is the host the answer was delivered to.
fn dns_activity(event: &mut Event, record: &Value) {
    let dns = &record["dns"];
    event.set("dst_endpoint", json!({ "hostname": record["host"]["name"].as_str().unwrap_or("unknown") }));
    if let Some(query) = dns["query"].as_str() {
        event.set("query", json!({ "hostname": query }));
    }
    let mut answers = Vec::new();
    for address in dns["answers"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let kind = if address.contains(':') { "AAAA" } else { "A" };
        answers.push(json!({ "rdata": address, "type": kind }));
    }
    for name in dns["cnames"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        answers.push(json!({ "rdata": name, "type": "CNAME" }));
    }
    event.set("answers", json!(answers));
    if let Some(rcode) = dns["rcode"].as_u64() {
        // OCSF 1.8 lists the DNS response codes 0 to 11; 12 to 15 are
        // unassigned and become Other.
        const NAMES: [&str; 12] = [
            "NoError", "FormError", "ServError", "NXDomain", "NotImp", "Refused", "YXDomain", "YXRRSet", "NXRRSet",
            "NotAuth", "NotZone", "DSOTYPENI",
        ];
        match usize::try_from(rcode).ok().and_then(|index| NAMES.get(index)) {
            Some(name) => {
                event.set("rcode_id", json!(rcode));
                event.set("rcode", json!(name));
            }
            None => {
                event.set("rcode_id", json!(99));
                event.set("rcode", json!(format!("rcode {rcode}")));
            }
        }
    }
    event.take("dns");
}

/// The `finding` members that `finding_info` carries.
const FINDING_MAPPED: &[&str] = &["severity", "title", "description", "references", "cause"];

fn detection_finding(event: &mut Event, record: &Value) {
    let finding = &record["finding"];
    let kind = record["kind"].as_str().unwrap_or("finding");
    let mut info = json!({
        "uid": record["id"].as_str().unwrap_or(kind),
        "title": finding["title"].as_str().unwrap_or(kind),
        "types": [kind],
    });
    if let Some(description) = finding["description"].as_str() {
        info["desc"] = json!(description);
    }
    if let Some(time) = record["time_unix_nano"].as_u64() {
        info["created_time"] = json!(time / 1_000_000);
    }
    let cause = &finding["cause"];
    if let Some(uid) = cause["record_id"].as_str() {
        let mut related = json!({ "uid": uid });
        if let Some(kind) = cause["kind"].as_str() {
            related["type"] = json!(kind);
        }
        info["related_events"] = json!([related]);
    }
    if let Some(references) = finding["references"].as_array() {
        let tags: Vec<Value> = references
            .iter()
            .filter_map(|reference| {
                let framework = reference["framework"].as_str()?;
                let id = reference["id"].as_str()?;
                let value = match reference["name"].as_str() {
                    Some(name) => format!("{id} {name}"),
                    None => id.to_owned(),
                };
                Some(json!({ "name": framework, "value": value }))
            })
            .collect();
        if !tags.is_empty() {
            info["tags"] = json!(tags);
        }
    }
    event.set("finding_info", info);
    event.set("is_alert", json!(record["policy"]["verdict"] == "alert" || finding["severity"] == "high" || finding["severity"] == "critical"));

    let mut evidences = Vec::new();
    let mut observed = json!({ "name": "observed", "data": finding["evidence"] });
    if let Some(process) = process(record) {
        observed["process"] = process;
    }
    evidences.push(observed);
    for check in record["policy"]["checks"].as_array().into_iter().flatten() {
        let mut evidence = json!({ "name": check["rule"].as_str().unwrap_or("check"), "data": check });
        if let Some(result) = check["result"].as_str() {
            evidence["verdict"] = json!(result);
        }
        evidences.push(evidence);
    }
    event.set("evidences", json!(evidences));
    event.take("process");

    let mut rest = finding.as_object().cloned().unwrap_or_default();
    for key in FINDING_MAPPED {
        rest.remove(*key);
    }
    rest.remove("evidence");
    event.take("finding");
    if !rest.is_empty() {
        event.rest.insert("finding".into(), Value::Object(rest));
    }
}

/// Puts the policy's checks and verdict into `enrichments`, one entry per
/// check with the check itself as its data, and the verdict as the last.
fn policy(event: &mut Event, record: &Value) {
    let policy = &record["policy"];
    if !policy.is_object() {
        return;
    }
    let mut enrichments = Vec::new();
    for check in policy["checks"].as_array().into_iter().flatten() {
        enrichments.push(json!({
            "name": check["rule"].as_str().unwrap_or("check"),
            "value": check["result"].as_str().unwrap_or("unknown"),
            "type": "policy_check",
            "data": check,
        }));
    }
    if let Some(verdict) = policy["verdict"].as_str() {
        let mut data = json!({ "verdict": verdict, "entry": policy["entry"] });
        if let Some(finding) = policy["finding_id"].as_str() {
            data["finding_id"] = json!(finding);
        }
        if let Some(sha256) = record["policy_sha256"].as_str() {
            data["policy_sha256"] = json!(sha256);
        }
        enrichments.push(json!({ "name": "policy.verdict", "value": verdict, "type": "policy_verdict", "data": data }));
    }
    if !enrichments.is_empty() {
        event.set("enrichments", json!(enrichments));
    }
    event.take("policy");
}

/// Lists the event's values that analysts pivot on, each named by its path
/// in the event.
fn observables(event: &mut Event) {
    let mut found = Vec::new();
    let mut add = |name: &str, type_id: u32, value: &Value| {
        if let Some(text) = value.as_str() {
            found.push(json!({ "name": name, "type_id": type_id, "value": text }));
        }
    };
    let out = &event.out;
    add("device.hostname", 1, &out["device"]["hostname"]);
    add("process.name", 9, &out.get("process").map_or(Value::Null, |p| p["name"].clone()));
    add("actor.process.name", 9, &out.get("actor").map_or(Value::Null, |a| a["process"]["name"].clone()));
    add("dst_endpoint.ip", 2, &out.get("dst_endpoint").map_or(Value::Null, |e| e["ip"].clone()));
    add("dst_endpoint.hostname", 1, &out.get("dst_endpoint").map_or(Value::Null, |e| e["hostname"].clone()));
    add("file.path", 45, &out.get("file").map_or(Value::Null, |f| f["path"].clone()));
    event.set("observables", json!(found));
}

#[cfg(test)]
mod tests;
