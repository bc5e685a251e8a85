//! Pipeline stage 9: enriched events in, evidence records out.
//!
//! Defines the record schema documented in `docs/schema.md`: every record
//! carries the schema version, a sortable unique id, a sequence number, the
//! wall-clock time derived from the kernel's boot-time clock, and its kind.
//! Views borrow from the process table so building a record copies little.
//!
//! The tamper-evident log lives in submodules: `chain` (the hash chain each
//! line carries), `checkpoint` (signed checkpoints and keys), `recovery`
//! (resuming the chain at start-up, torn last lines) and `verify` (the
//! `agent-sensor verify` command). The sinks write what they define.

pub mod chain;
pub mod checkpoint;
pub mod explain;
pub mod recovery;
pub mod verify;
pub mod view_cache;
#[cfg(test)]
mod tamper_tests;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{
    agents::AgentView,
    net::Endpoint,
    process::{Origin, Process, ProcessTable},
    redact::{Field, Redaction},
};

/// Version of the record layout; bumped on any incompatible change.
pub const SCHEMA: &str = "agent-sensor/0.1";

/// The host every record names, serialised once: it is the same in every
/// record of a run.
#[derive(Debug, Clone)]
pub struct Host {
    json: Arc<RawValue>,
}

impl Host {
    pub fn new(name: &str, boot_id: &str) -> Host {
        #[derive(Serialize)]
        struct Fields<'a> {
            name: &'a str,
            boot_id: &'a str,
        }
        // Two strings always serialise, so the default (`null`) is never used.
        let json = serde_json::value::to_raw_value(&Fields { name, boot_id }).unwrap_or_default();
        Host { json: Arc::from(json) }
    }
}

impl Serialize for Host {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

/// Converts the kernel's boot-time clock to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock nanoseconds at boot: realtime minus boottime, sampled once.
    boot_epoch_ns: i128,
}

impl Clock {
    pub fn from_system() -> Self {
        let read = |clock| {
            // SAFETY: clock_gettime writes into the zeroed timespec.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: `ts` is a valid out pointer for the call.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let boot = read(libc::CLOCK_BOOTTIME);
        let real = read(libc::CLOCK_REALTIME);
        Self { boot_epoch_ns: real - boot }
    }

    /// Boot-time nanoseconds now, the clock the kernel stamps events with.
    pub fn boot_now_ns() -> u64 {
        // SAFETY: as in `from_system`.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a valid out pointer for the call.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        (self.boot_epoch_ns + boot_ns as i128).max(0) as u64
    }
}

/// Formats Unix nanoseconds as RFC 3339 UTC with nanoseconds, as
/// `humantime::format_rfc3339_nanos` does. Every record has two such times,
/// so they are written into a fixed buffer instead of through `Display`.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (year, month, day) = civil_date(secs / 86_400);
    let second_of_day = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut text[0..4], u64::from(year));
    put_digits(&mut text[5..7], u64::from(month));
    put_digits(&mut text[8..10], u64::from(day));
    put_digits(&mut text[11..13], second_of_day / 3600);
    put_digits(&mut text[14..16], second_of_day / 60 % 60);
    put_digits(&mut text[17..19], second_of_day % 60);
    put_digits(&mut text[20..29], unix_ns % 1_000_000_000);
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&text).unwrap_or_default().to_owned()
}

/// Returns the year, month and day of a count of days since 1970-01-01, in
/// the proleptic Gregorian calendar, computed per era of 400 years.
fn civil_date(days: u64) -> (u32, u32, u32) {
    // Shifted so that eras of 400 years start on 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    let year = (year_of_era + era * 400 + u64::from(month <= 2)) as u32;
    (year, month, day)
}

/// Writes the low decimal digits of `value` into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Builds a record id: the time in hex first, so ids sort by time, then
/// the sequence number, which makes them unique.
fn record_id(unix_ns: u64, seq: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(25);
    for shift in (0..16).rev() {
        id.push(HEX[(unix_ns >> (shift * 4)) as usize & 15] as char);
    }
    id.push('-');
    let digits = (16 - seq.leading_zeros() as usize / 4).max(8);
    for shift in (0..digits).rev() {
        id.push(HEX[(seq >> (shift * 4)) as usize & 15] as char);
    }
    id
}

/// The record's fixed head, assigned in write order.
#[derive(Debug, Serialize)]
pub struct Head<'a> {
    pub schema: &'static str,
    pub id: String,
    pub seq: u64,
    pub time: String,
    pub time_unix_nano: u64,
    pub kind: &'static str,
    pub host: &'a Host,
    /// sha256 of the policy in force, or `none`.
    pub policy_sha256: Arc<str>,
}

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    #[serde(flatten)]
    pub head: Head<'a>,
    /// Written as `process` and, when credentials were replaced in it, the
    /// record's `redactions` array.
    #[serde(flatten, serialize_with = "serialize_process")]
    pub process: Option<ProcessView<'a>>,
    /// The workload of the record's process (identity stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::identity::WorkloadView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor: Option<serde_json::Value>,
    /// The `llm` section of `llm.request` and `llm.response`, written from
    /// the parsed call itself: an agent can make hundreds of calls a second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::llm::LlmEvent>,
    /// Sections of low-rate records (`tls`, `dns`, `llm`, `file`, `http`,
    /// `finding`), built as JSON by their stages.
    #[serde(flatten)]
    pub sections: serde_json::Map<String, serde_json::Value>,
}

fn serialize_process<S: serde::Serializer>(process: &Option<ProcessView<'_>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(None)?;
    if let Some(process) = process {
        match &process.json {
            Some(json) => map.serialize_entry("process", &**json)?,
            None => map.serialize_entry("process", process)?,
        }
        if !process.redactions.is_empty() {
            map.serialize_entry("redactions", &process.redactions)?;
        }
    }
    map.end()
}

/// One entry of a record's `redactions`: which field of which process a
/// secret was replaced in.
#[derive(Debug)]
pub struct RedactionView<'a> {
    /// `process` or `process.parent`.
    pub owner: &'static str,
    pub redaction: &'a Redaction,
}

impl Serialize for RedactionView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut entry = s.serialize_struct("Redaction", 3)?;
        entry.serialize_field("field", &format!("{}.{}", self.owner, self.redaction.field))?;
        entry.serialize_field("kind", self.redaction.kind)?;
        entry.serialize_field("hmac", &*self.redaction.hmac)?;
        entry.end()
    }
}

impl<'a> Record<'a> {
    /// Starts a record with only its head; stages fill in their sections.
    pub fn new(head: Head<'a>) -> Self {
        Record {
            head,
            process: None,
            workload: None,
            agent: None,
            network: None,
            exit: None,
            sensor: None,
            llm: None,
            sections: serde_json::Map::new(),
        }
    }

    /// Appends the record's JSON to `out`, byte for byte what its
    /// `Serialize` impl writes. Serde's map machinery escapes each of a
    /// record's twenty to thirty keys and head strings anew. Copying the
    /// fixed keys instead cut the daemon's instructions per LLM request
    /// under an agent's load by 5% (callgrind).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let head = &self.head;
        out.extend_from_slice(b"{\"schema\":");
        push_json_str(out, head.schema)?;
        out.extend_from_slice(b",\"id\":");
        push_json_str(out, &head.id)?;
        out.extend_from_slice(b",\"seq\":");
        serde_json::to_writer(&mut *out, &head.seq)?;
        out.extend_from_slice(b",\"time\":");
        push_json_str(out, &head.time)?;
        out.extend_from_slice(b",\"time_unix_nano\":");
        serde_json::to_writer(&mut *out, &head.time_unix_nano)?;
        out.extend_from_slice(b",\"kind\":");
        push_json_str(out, head.kind)?;
        out.extend_from_slice(b",\"host\":");
        serde_json::to_writer(&mut *out, head.host)?;
        out.extend_from_slice(b",\"policy_sha256\":");
        push_json_str(out, &head.policy_sha256)?;

        if let Some(process) = &self.process {
            out.extend_from_slice(b",\"process\":");
            match &process.json {
                Some(json) => out.extend_from_slice(json.get().as_bytes()),
                None => serde_json::to_writer(&mut *out, process)?,
            }
            if !process.redactions.is_empty() {
                out.extend_from_slice(b",\"redactions\":");
                serde_json::to_writer(&mut *out, &process.redactions)?;
            }
        }

        push_member(out, b",\"workload\":", &self.workload)?;
        push_member(out, b",\"agent\":", &self.agent)?;
        push_member(out, b",\"network\":", &self.network)?;
        push_member(out, b",\"exit\":", &self.exit)?;
        push_member(out, b",\"sensor\":", &self.sensor)?;
        push_member(out, b",\"llm\":", &self.llm)?;

        for (key, value) in &self.sections {
            out.push(b',');
            push_json_str(out, key)?;
            out.push(b':');
            serde_json::to_writer(&mut *out, value)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// Appends `"key":value` when `value` is present; `key` comes with its
/// leading comma and quotes.
fn push_member<T: Serialize>(out: &mut Vec<u8>, key: &[u8], value: &Option<T>) -> serde_json::Result<()> {
    if let Some(value) = value {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, value)?;
    }
    Ok(())
}

/// Appends `text` as a JSON string. Text with nothing to escape, which is
/// all ids, times and kinds, is copied; the rest goes through serde_json,
/// so the escapes are its own.
fn push_json_str(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return serde_json::to_writer(&mut *out, text);
    }
    out.reserve(text.len() + 2);
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Assigns sequence numbers and ids, and stamps times.
///
/// Clones share one sequence counter, so the sinks can stamp their own
/// records (checkpoints) in the same sequence as the pipeline's. Each head
/// must be written before the next one is stamped: the hash chain orders
/// records by write, and `verify` rejects a sequence out of that order.
#[derive(Clone)]
pub struct Stamper {
    pub host: Host,
    pub clock: Clock,
    next_seq: Arc<AtomicU64>,
    /// Shared like the sequence, so checkpoints carry the same policy hash
    /// as the pipeline's records.
    policy_sha256: Arc<Mutex<Arc<str>>>,
}

impl Stamper {
    pub fn new(host: Host, clock: Clock) -> Self {
        Self { host, clock, next_seq: Arc::new(AtomicU64::new(0)), policy_sha256: Arc::new(Mutex::new(Arc::from("none"))) }
    }

    /// Sets the policy hash that heads stamped from now on carry.
    pub fn set_policy_sha256(&self, sha256: &str) {
        *self.policy_sha256.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(sha256);
    }

    pub fn policy_sha256(&self) -> Arc<str> {
        self.policy_sha256.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The sequence number the next head gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Continues an existing chain: the next head gets `seq`.
    pub fn resume_at(&self, seq: u64) {
        self.next_seq.store(seq, Ordering::Relaxed);
    }

    /// Builds the head of the next record for an event at boot-time `boot_ns`.
    pub fn head(&mut self, kind: &'static str, boot_ns: u64) -> Head<'_> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let unix_ns = self.clock.wall_ns(boot_ns);
        Head {
            schema: SCHEMA,
            id: record_id(unix_ns, seq),
            seq,
            time: rfc3339(unix_ns),
            time_unix_nano: unix_ns,
            kind,
            host: &self.host,
            policy_sha256: self.policy_sha256(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ThreadView {
    pub tid: u32,
}

/// The parent's identity, including its command line, so a forked child's
/// record shows whose code it runs without claiming that argv as its own.
#[derive(Debug, Serialize)]
pub struct ParentView<'a> {
    pub pid: u32,
    pub exec_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<&'a [String]>,
}

#[derive(Debug, Serialize)]
pub struct ProcessView<'a> {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u32>,
    pub ppid: u32,
    pub exec_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_exec_id: Option<&'a str>,
    pub origin: Origin,
    pub start_time: String,
    pub exe: Option<&'a str>,
    /// The executable's file name when its path is unknown, such as
    /// `memfd:NAME` for a fileless program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_name: Option<&'a str>,
    pub exe_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_path: Option<&'a str>,
    /// Absent for a forked child that has not exec'd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv_bytes: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fileless: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<ThreadView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentView<'a>>,
    pub ancestry: Vec<Arc<str>>,
    /// Field name to the reason it is unknown.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "serialize_unknown")]
    pub unknown: Vec<(&'static str, &'a str)>,
    /// Credentials replaced in this process's and its parent's fields,
    /// written at the record's top level by `Record`.
    #[serde(skip)]
    pub redactions: Vec<RedactionView<'a>>,
    /// This view already serialised, which the record writes instead.
    #[serde(skip)]
    pub json: Option<Arc<serde_json::value::RawValue>>,
}

fn serialize_unknown<S: serde::Serializer>(items: &[(&'static str, &str)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(items.len()))?;
    for (field, reason) in items {
        map.serialize_entry(field, reason)?;
    }
    map.end()
}

impl<'a> ProcessView<'a> {
    /// Builds the view of `process`; `tid` is the acting thread when it is
    /// not the thread-group leader.
    pub fn new(table: &'a ProcessTable, process: &'a Process, tid: Option<u32>, clock: &Clock, start_ns: u64) -> Self {
        let parent_process = process.parent.and_then(|key| table.get(&key));
        let parent = parent_process.map(|parent| ParentView {
            pid: parent.key.pid,
            exec_id: &parent.exec_id,
            exe: parent.exe.path.as_deref(),
            argv: parent.argv.as_deref(),
        });
        let mut unknown: Vec<(&'static str, &'a str)> =
            process.unknown.iter().map(|(field, reason)| (*field, reason.as_str())).collect();
        if let Some(reason) = &process.exe.path_unknown {
            unknown.push(("exe", reason));
        }
        if let Some(reason) = &process.exe.sha256_unknown {
            unknown.push(("exe_sha256", reason));
        }
        let mut redactions: Vec<RedactionView<'a>> =
            process.redactions.iter().map(|redaction| RedactionView { owner: "process", redaction }).collect();
        if let Some(parent) = parent_process {
            // The parent view shows only `exe` and `argv`.
            let parent_fields = parent.redactions.iter().filter(|r| matches!(r.field, Field::Argv(_) | Field::Exe));
            redactions.extend(parent_fields.map(|redaction| RedactionView { owner: "process.parent", redaction }));
        }
        ProcessView {
            pid: process.key.pid,
            ns_pid: process.ns_pid,
            pid_ns: process.pid_ns,
            ppid: process.ppid,
            exec_id: &process.exec_id,
            parent_exec_id: process.parent_exec_id.as_deref(),
            origin: process.origin,
            start_time: rfc3339(clock.wall_ns(start_ns)),
            exe: process.exe.path.as_deref(),
            exe_name: process.exe_name.as_deref().filter(|_| process.exe.path.is_none() || process.fileless),
            exe_sha256: process.exe.sha256.as_deref(),
            exec_path: process.exec_path.as_deref(),
            argv: process.argv.as_deref(),
            argv_truncated: process.argv_truncated,
            argv_bytes: process.argv_bytes,
            uid: process.uid,
            gid: process.gid,
            comm: &process.comm,
            cgroup_id: process.cgroup_id,
            cgroup: process.cgroup_path.as_deref(),
            fileless: process.fileless,
            thread: tid.filter(|&tid| tid != process.key.pid).map(|tid| ThreadView { tid }),
            parent,
            ancestry: table.ancestry(process.key),
            unknown,
            redactions,
            json: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NetworkView {
    pub protocol: &'static str,
    pub destination: Option<Endpoint>,
    /// The connect syscall's return: `ok` or an errno name.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// For a non-blocking connect: `established`, `pending` (a
    /// `net.connect_result` record follows), an errno name, or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// `first_send` for a datagram socket whose connect was seen at its
    /// first send, because the socket tracepoints have no hook in a
    /// datagram connect. Absent when the connect call itself was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ExitView {
    /// Exit status when the process exited normally.
    pub code: Option<u32>,
    /// Terminating signal number when it was killed.
    pub signal: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub core_dumped: bool,
}

impl ExitView {
    /// Decodes a kernel wait status.
    pub fn from_status(status: u32) -> Self {
        let signal = status & 0x7f;
        if signal == 0 {
            ExitView { code: Some((status >> 8) & 0xff), signal: None, core_dumped: false }
        } else {
            ExitView { code: None, signal: Some(signal), core_dumped: status & 0x80 != 0 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_writer_matches_serde() {
        use crate::{
            agents::Detection,
            config::ProcessConfig,
            identity::{UserName, Workload, WorkloadView},
            process::{procfs::ProcEntry, ProcessTable},
            redact::Redactor,
        };
        let config = ProcessConfig { procfs_path: "/nonexistent-procfs".into(), ..Default::default() };
        let mut table = ProcessTable::new(config, "boot".to_owned(), Redactor::new(&[7; 32]));
        let secret = format!("--api-key=sk-proj-{}", "Zx9Yw8Vu7T".repeat(6));
        let argv = ["agent", "say \"hi\"\n\ttab\\", "\u{1}", "naïve", secret.as_str()];
        let entry = ProcEntry { pid: 10, ppid: 1, start_ticks: 5, argv: argv.iter().map(|a| a.to_string()).collect(), ..Default::default() };
        let key = table.seed(vec![entry])[0];
        let process = table.get(&key).unwrap();

        let clock = Clock::from_system();
        let mut stamper = Stamper::new(Host::new("host \"one\"", "b"), clock);
        stamper.set_policy_sha256("pol\"icy");
        let detections = vec![Detection { signal: "sni", value: "api.openai.com".into(), provider: None }];
        let mut cache = view_cache::ViewCache::default();

        for cached in [false, true] {
            let mut record = Record::new(stamper.head("tool.spawn", 5));
            let mut view = ProcessView::new(&table, process, None, &clock, key.start_ns);
            if cached {
                cache.attach(&table, process, &mut view);
                assert!(view.json.is_some());
            }
            assert!(!view.redactions.is_empty(), "the argv secret is redacted");
            record.process = Some(view);
            let workload = Arc::new(Workload::unknown("no_cgroup"));
            record.workload = Some(WorkloadView { workload, user: UserName::Unknown("uid_unknown"), json: None });
            record.agent = Some(AgentView { agent_id: "a", session_id: "s", registered: false, name: Some("n\"m"), detected_by: &detections, json: None });
            record.network = Some(NetworkView { protocol: "tcp", destination: None, result: "ok", errno: None, outcome: Some("pending"), connect_id: Some(3), fd: Some(4), seen_at: None });
            record.exit = Some(ExitView::from_status(9));
            record.sensor = Some(serde_json::json!({ "note": "x" }));
            record.sections.insert("file".into(), serde_json::json!({ "path": "/tmp/a\"b" }));
            record.sections.insert("we\"ird".into(), serde_json::json!([1, null]));

            let mut written = Vec::new();
            record.write_json(&mut written).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&record).unwrap());
        }

        let bare = Record::new(stamper.head("sensor.stop", 6));
        let mut written = Vec::new();
        bare.write_json(&mut written).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&bare).unwrap());
    }

    #[test]
    fn times_and_ids_match_the_library_formats() {
        let format = |ns: u64| {
            humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
        };
        let day = 86_400_000_000_000u64;
        let mut samples = vec![0, 1, 999_999_999, 1_000_000_000, 951_782_400_000_000_000, 4_107_542_399_999_999_999, u64::MAX];
        // Every day of four centuries, which covers each leap rule, each at
        // another time of day.
        samples.extend((0..146_097).map(|d| d * day + (d % 86_400) * 1_000_000_007));
        for ns in samples {
            assert_eq!(rfc3339(ns), format(ns), "{ns}");
        }
        for (ns, seq) in [(0, 0), (1_796_487_646_831_777_877, 15), (u64::MAX, u64::MAX), (255, 0x1_0000_0000)] {
            assert_eq!(record_id(ns, seq), format!("{ns:016x}-{seq:08x}"));
        }
    }

    #[test]
    fn exit_status_decoding() {
        let normal = ExitView::from_status(3 << 8);
        assert_eq!((normal.code, normal.signal), (Some(3), None));
        let killed = ExitView::from_status(9);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        assert!(ExitView::from_status(11 | 0x80).core_dumped);
    }

    #[test]
    fn ids_sort_by_time_then_seq() {
        let host = Host::new("h", "b");
        let mut stamper = Stamper::new(host, Clock { boot_epoch_ns: 1_000_000_000 });
        let first = stamper.head("x", 5).id;
        let second = stamper.head("x", 5).id;
        let later = stamper.head("x", 6).id;
        assert!(first < second && second < later, "{first} {second} {later}");
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
    }
}
