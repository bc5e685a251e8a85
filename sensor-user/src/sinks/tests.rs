//! Tests of the chained evidence file, and helpers that write real logs
//! for the tamper tests in `evidence`.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use super::*;
use crate::evidence::{
    checkpoint::PublicKey,
    verify::{verify_paths, End, ProblemKind, Report},
    Host,
};

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Scratch {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("agent-sensor-sinks-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a fixed signing key (as a raw seed) and its public key into
/// `dir`; returns the private key path and the public key.
pub(crate) fn test_keys(dir: &Path) -> (PathBuf, PublicKey) {
    let seed = [42u8; 32];
    let private = dir.join("signing.key");
    std::fs::write(&private, seed).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = dir.join("signing.pub");
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    std::fs::write(&public, key.verifying_key().to_bytes()).unwrap();
    (private, PublicKey::load(&public).unwrap())
}

pub(crate) fn test_stamper() -> Stamper {
    Stamper::new(Host::new("test-host", "0123456789abcdef"), Clock::from_system())
}

pub(crate) fn settings(key: Option<&Path>) -> EvidenceConfig {
    EvidenceConfig {
        checkpoint_every_records: 50,
        checkpoint_interval_secs: 3600,
        signing_key_path: key.map(Path::to_owned).unwrap_or_default(),
        rotate_size_bytes: 0,
        rotate_age_secs: 0,
        fsync: FsyncPolicy::Never,
    }
}

pub(crate) fn open(path: &Path, settings: &EvidenceConfig, stamper: &Stamper) -> Sinks {
    let output = OutputConfig { stdout: false, evidence_path: path.to_owned(), ..OutputConfig::default() };
    Sinks::open(&output, settings, stamper.clone()).unwrap()
}

#[derive(Serialize)]
struct TestRecord<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    payload: &'a str,
}

/// Writes one record the way the pipeline does: stamp, then write.
pub(crate) fn write_record(sinks: &mut Sinks, stamper: &mut Stamper, payload: &str) {
    let head = stamper.head("test.record", Clock::boot_now_ns());
    sinks.write(&TestRecord { head, payload }).unwrap();
}

/// Lists the rotated files, oldest first, then the active file.
pub(crate) fn evidence_files(active: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = recovery::rotated_files(active).unwrap().into_iter().map(|(_, p)| p).collect();
    if active.exists() {
        files.push(active.to_owned());
    }
    files
}

fn verify(active: &Path, key: Option<&PublicKey>) -> Report {
    verify_paths(&evidence_files(active), key).unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn evidence_file_is_private_and_chained() {
    let dir = Scratch::new("private");
    let path = dir.path().join("nested/evidence.jsonl");
    let (key, public) = test_keys(dir.path());
    let mut stamper = test_stamper();
    for payload in ["first run", "second run"] {
        let mut sinks = open(&path, &settings(Some(&key)), &stamper);
        write_record(&mut sinks, &mut stamper, payload);
        sinks.close().unwrap();
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let records = lines(&path);
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["test.record", "evidence.checkpoint", "test.record", "evidence.checkpoint"]);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2, 3], "the second run continues the first one's sequence");
    assert_eq!(records[2]["integrity"]["prev_hash"], records[1]["integrity"]["hash"]);
    assert_eq!(records[0]["integrity"]["prev_hash"], "0".repeat(64));
    assert_eq!(records[3]["checkpoint"]["from_seq"], 1);
    assert_eq!(records[3]["checkpoint"]["to_seq"], 2);
    let report = verify(&path, Some(&public));
    assert_eq!(report.exit_code, 0, "{report:#?}");
    assert_eq!(report.end, Some(End::Shutdown));
    assert_eq!(report.checkpoints.verified, 2);
}

#[test]
fn unsigned_checkpoints_say_why_and_warn() {
    let dir = Scratch::new("unsigned");
    let path = dir.path().join("evidence.jsonl");
    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(None), &stamper);
    write_record(&mut sinks, &mut stamper, "x");
    sinks.close().unwrap();
    let checkpoint = &lines(&path)[1];
    assert_eq!(checkpoint["checkpoint"]["signature"], serde_json::Value::Null);
    assert!(checkpoint["checkpoint"]["unknown"]["signature"].as_str().unwrap().contains("signing_key_path"));
    let report = verify(&path, None);
    assert_eq!(report.exit_code, 4);
    let kinds: Vec<ProblemKind> = report.warnings.iter().map(|w| w.kind).collect();
    assert!(kinds.contains(&ProblemKind::Unsigned), "{kinds:?}");
    assert!(kinds.contains(&ProblemKind::Uncovered), "{kinds:?}");
}

#[test]
fn count_checkpoints_cover_consecutive_ranges() {
    let dir = Scratch::new("count");
    let path = dir.path().join("evidence.jsonl");
    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(None), &stamper);
    for i in 0..120 {
        write_record(&mut sinks, &mut stamper, &format!("record {i}"));
    }
    sinks.close().unwrap();
    let ranges: Vec<(u64, u64, u64, String)> = lines(&path)
        .iter()
        .filter(|r| r["kind"] == "evidence.checkpoint")
        .map(|r| {
            let c = &r["checkpoint"];
            let reason = c["reason"].as_str().unwrap().to_owned();
            (r["seq"].as_u64().unwrap(), c["from_seq"].as_u64().unwrap(), c["to_seq"].as_u64().unwrap(), reason)
        })
        .collect();
    // Every 50 records, counting the checkpoints themselves, then shutdown.
    assert_eq!(
        ranges,
        [
            (50, 0, 49, "count".to_owned()),
            (101, 50, 100, "count".to_owned()),
            (122, 101, 121, "shutdown".to_owned())
        ]
    );
}

#[test]
fn interval_checkpoint_only_when_records_wait() {
    let dir = Scratch::new("interval");
    let path = dir.path().join("evidence.jsonl");
    let mut stamper = test_stamper();
    let mut config = settings(None);
    config.checkpoint_interval_secs = 0;
    let mut sinks = open(&path, &config, &stamper);
    sinks.tick().unwrap();
    assert_eq!(sinks.records_written, 0, "no checkpoint over nothing");
    write_record(&mut sinks, &mut stamper, "x");
    sinks.tick().unwrap();
    sinks.tick().unwrap();
    assert_eq!(sinks.records_written, 2, "one checkpoint, not one per tick");
    let records = lines(&path);
    assert_eq!(records[1]["checkpoint"]["reason"], "interval");
}

#[test]
fn rotation_by_size_continues_chain() {
    let dir = Scratch::new("rotate");
    let path = dir.path().join("evidence.jsonl");
    let (key, public) = test_keys(dir.path());
    let mut stamper = test_stamper();
    let mut config = settings(Some(&key));
    config.rotate_size_bytes = 8 << 10;
    let mut sinks = open(&path, &config, &stamper);
    for i in 0..200 {
        write_record(&mut sinks, &mut stamper, &format!("record {i} {}", "x".repeat(100)));
    }
    sinks.close().unwrap();
    let files = evidence_files(&path);
    assert!(files.len() > 3, "{files:?}");
    for file in &files {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    for rotated in &files[..files.len() - 1] {
        let records = lines(rotated);
        let last = records.last().unwrap();
        assert_eq!(last["checkpoint"]["reason"], "rotation", "{}", rotated.display());
        let name = rotated.file_name().unwrap().to_str().unwrap();
        let first_seq = records[0]["seq"].as_u64().unwrap();
        assert!(name.ends_with(&format!("-{first_seq:020}.jsonl")), "{name}");
    }
    let mut shuffled = files.clone();
    shuffled.reverse();
    let report = verify_paths(&shuffled, Some(&public)).unwrap();
    assert_eq!(report.exit_code, 0, "{report:#?}");
    assert_eq!(report.files.len(), files.len());
    let without_active = verify_paths(&files[..files.len() - 1], Some(&public)).unwrap();
    assert_eq!(without_active.exit_code, 0, "{without_active:#?}");
    assert_eq!(without_active.end, Some(End::Rotation));
}

#[test]
fn rotation_by_age_on_tick() {
    let dir = Scratch::new("age");
    let path = dir.path().join("evidence.jsonl");
    let mut stamper = test_stamper();
    let mut config = settings(None);
    config.rotate_age_secs = 1;
    let mut sinks = open(&path, &config, &stamper);
    write_record(&mut sinks, &mut stamper, "x");
    sinks.tick().unwrap();
    assert_eq!(evidence_files(&path).len(), 1, "too young to rotate");
    std::thread::sleep(Duration::from_millis(1100));
    sinks.tick().unwrap();
    assert_eq!(evidence_files(&path).len(), 2);
    sinks.tick().unwrap();
    assert_eq!(evidence_files(&path).len(), 2, "an empty file is not rotated");
}

#[test]
fn torn_tail_recovered_and_verifies() {
    let dir = Scratch::new("torn");
    let path = dir.path().join("evidence.jsonl");
    let (key, public) = test_keys(dir.path());
    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(Some(&key)), &stamper);
    for i in 0..10 {
        write_record(&mut sinks, &mut stamper, &format!("record {i}"));
    }
    sinks.flush().unwrap();
    // A crash: the sinks vanish without their shutdown checkpoint, and the
    // last line is cut.
    sinks.crash();
    let intact_len = std::fs::metadata(&path).unwrap().len();
    let torn = b"{\"schema\":\"agent-sensor/0.1\",\"id\":\"17";
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(torn).unwrap();

    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(Some(&key)), &stamper);
    assert_eq!(stamper.next_seq(), 11, "resumes after seq 9 and the recovery record");
    write_record(&mut sinks, &mut stamper, "after restart");
    sinks.close().unwrap();

    let text = std::fs::read(&path).unwrap();
    let recovery_line = text[intact_len as usize..].splitn(3, |&b| b == b'\n').nth(1).unwrap();
    let recovery: serde_json::Value = serde_json::from_slice(recovery_line).unwrap();
    assert_eq!(recovery["kind"], "sensor.chain_recovered");
    assert_eq!(recovery["seq"], 10);
    let sensor = &recovery["sensor"];
    assert_eq!(sensor["reason"], "torn_tail");
    assert_eq!(sensor["resumed_after_seq"], 9);
    assert_eq!(sensor["torn"]["offset"], intact_len);
    assert_eq!(sensor["torn"]["length"], torn.len());
    assert_eq!(sensor["torn"]["newline_added"], true);
    let sha = <sha2::Sha256 as sha2::Digest>::digest(torn);
    assert_eq!(sensor["torn"]["sha256"], chain::hex_string(&sha.into()));

    let report = verify(&path, Some(&public));
    assert_eq!(report.exit_code, 0, "{report:#?}");
    assert_eq!(report.recoveries.len(), 1);
    assert_eq!(report.recoveries[0].torn_length, Some(torn.len() as u64));
}

#[test]
fn unclean_stop_without_torn_bytes_is_recorded() {
    let dir = Scratch::new("unclean");
    let path = dir.path().join("evidence.jsonl");
    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(None), &stamper);
    write_record(&mut sinks, &mut stamper, "x");
    sinks.flush().unwrap();
    sinks.crash();
    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(None), &stamper);
    write_record(&mut sinks, &mut stamper, "y");
    sinks.close().unwrap();
    let records = lines(&path);
    assert_eq!(records[1]["kind"], "sensor.chain_recovered");
    assert_eq!(records[1]["sensor"]["reason"], "unclean_stop");
    assert!(records[1]["sensor"].get("torn").is_none());
    // The checkpoint after the restart covers the records before it too.
    assert_eq!(records[3]["checkpoint"]["from_seq"], 0);
}

#[test]
fn whole_active_file_torn_resumes_from_rotated() {
    let dir = Scratch::new("garbage");
    let path = dir.path().join("evidence.jsonl");
    let (key, public) = test_keys(dir.path());
    let mut stamper = test_stamper();
    let mut config = settings(Some(&key));
    config.rotate_size_bytes = 4 << 10;
    let mut sinks = open(&path, &config, &stamper);
    for i in 0..40 {
        write_record(&mut sinks, &mut stamper, &format!("record {i} {}", "y".repeat(80)));
    }
    sinks.close().unwrap();
    drop(sinks);
    // A power loss leaves zeros in place of the active file's records.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::write(&path, vec![0u8; len as usize]).unwrap();
    let rotated_last_seq = lines(evidence_files(&path).iter().rev().nth(1).unwrap()).last().unwrap()["seq"].clone();

    let mut stamper = test_stamper();
    let mut sinks = open(&path, &config, &stamper);
    write_record(&mut sinks, &mut stamper, "after");
    sinks.close().unwrap();
    let records = lines(&path);
    assert_eq!(records[0]["kind"], "sensor.chain_recovered");
    assert_eq!(records[0]["sensor"]["resumed_after_seq"], rotated_last_seq);
    assert_eq!(records[0]["sensor"]["torn"]["offset"], 0);
    assert_eq!(records[0]["sensor"]["torn"]["length"], len);
    let report = verify(&path, Some(&public));
    // The zeroed records were covered by the rotation's checkpoints only
    // up to the rotation; their loss shows as a recovery, not tampering.
    assert_eq!(report.exit_code, 0, "{report:#?}");
}

#[test]
fn legacy_file_without_chain_starts_new_chain() {
    let dir = Scratch::new("legacy");
    let path = dir.path().join("evidence.jsonl");
    std::fs::write(&path, "{\"seq\":0,\"kind\":\"sensor.start\"}\n").unwrap();
    let mut stamper = test_stamper();
    let mut sinks = open(&path, &settings(None), &stamper);
    write_record(&mut sinks, &mut stamper, "x");
    sinks.close().unwrap();
    let records = lines(&path);
    assert_eq!(records[1]["kind"], "sensor.chain_recovered");
    assert_eq!(records[1]["seq"], 0);
    assert_eq!(records[1]["sensor"]["resumed_after_seq"], serde_json::Value::Null);
    let report = verify(&path, None);
    assert_eq!(report.first_bad.map(|p| p.message), None);
}

#[test]
fn second_writer_rejected_while_first_open() {
    let dir = Scratch::new("lock");
    let path = dir.path().join("evidence.jsonl");
    let stamper = test_stamper();
    let first = open(&path, &settings(None), &stamper);
    let output = OutputConfig { stdout: false, evidence_path: path.clone(), ..OutputConfig::default() };
    let second = Sinks::open(&output, &settings(None), stamper.clone());
    assert!(matches!(second, Err(SinkError::Locked { .. })), "a second writer must not start");
    drop(first);
    assert!(Sinks::open(&output, &settings(None), stamper).is_ok(), "the lock goes with the first writer");
}

#[test]
fn non_object_record_rejected() {
    let dir = Scratch::new("object");
    let path = dir.path().join("evidence.jsonl");
    let mut sinks = open(&path, &settings(None), &test_stamper());
    assert!(matches!(sinks.write(&[1, 2, 3]), Err(SinkError::Chain(_))));
}

/// Measures the chained sink's throughput with records of a typical exec
/// record's size. Run with `--ignored --nocapture` in a release build.
#[test]
#[ignore = "benchmark; run explicitly"]
fn chained_sink_throughput() {
    let dir = Scratch::new("bench");
    let path = dir.path().join("evidence.jsonl");
    let (key, _) = test_keys(dir.path());
    let mut stamper = test_stamper();
    let mut config = settings(Some(&key));
    config.checkpoint_every_records = 10_000;
    config.rotate_size_bytes = 64 << 20;
    let mut sinks = open(&path, &config, &stamper);
    let payload = "p".repeat(700);
    let count = 300_000;
    let start = Instant::now();
    for _ in 0..count {
        write_record(&mut sinks, &mut stamper, &payload);
    }
    sinks.close().unwrap();
    let elapsed = start.elapsed();
    let written = evidence_files(&path).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>();
    println!(
        "{count} records of {} bytes in {elapsed:?}: {:.0} records/s",
        written / count,
        count as f64 / elapsed.as_secs_f64()
    );
    // The same records serialised and written without the chain, for the
    // chain's share of the cost.
    let plain = dir.path().join("plain.jsonl");
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&plain).unwrap());
    let mut line = Vec::new();
    let start = Instant::now();
    for _ in 0..count {
        let head = stamper.head("test.record", Clock::boot_now_ns());
        line.clear();
        serde_json::to_writer(&mut line, &TestRecord { head, payload: &payload }).unwrap();
        line.push(b'\n');
        writer.write_all(&line).unwrap();
    }
    writer.flush().unwrap();
    let elapsed = start.elapsed();
    println!("without the chain: {:.0} records/s", count as f64 / elapsed.as_secs_f64());

    let signer = Signer::load(&key).unwrap();
    let message = [b'x'; 600];
    let start = Instant::now();
    for _ in 0..200 {
        signer.sign(&message);
    }
    println!("one checkpoint signature: {:?}", start.elapsed() / 200);

    let start = Instant::now();
    let report = verify_paths(&evidence_files(&path), None).unwrap();
    let elapsed = start.elapsed();
    println!("verified {} records in {elapsed:?}: {:.0} records/s", report.verified.unwrap().records, report.verified.unwrap().records as f64 / elapsed.as_secs_f64());
}

fn open_ocsf(path: &Path, settings: &EvidenceConfig, stamper: &Stamper) -> Sinks {
    let output = OutputConfig {
        stdout: false,
        evidence_path: path.to_owned(),
        evidence_format: OutputFormat::Ocsf,
        ..OutputConfig::default()
    };
    Sinks::open(&output, settings, stamper.clone()).unwrap()
}

/// An OCSF evidence file with signed checkpoints, rotations and a crash in
/// the middle verifies clean, and a changed byte in it is found.
#[test]
fn ocsf_file_verifies_across_rotation_and_crash() {
    let dir = Scratch::new("ocsf");
    let path = dir.path().join("evidence.jsonl");
    let (key, public) = test_keys(dir.path());
    let mut stamper = test_stamper();
    let mut config = settings(Some(&key));
    config.rotate_size_bytes = 16 << 10;
    let mut sinks = open_ocsf(&path, &config, &stamper);
    for i in 0..120 {
        write_record(&mut sinks, &mut stamper, &format!("first run {i} {}", "x".repeat(60)));
    }
    sinks.flush().unwrap();
    sinks.crash();
    let mut sinks = open_ocsf(&path, &config, &stamper);
    for i in 0..40 {
        write_record(&mut sinks, &mut stamper, &format!("second run {i}"));
    }
    sinks.close().unwrap();

    let files = evidence_files(&path);
    assert!(files.len() > 2, "{files:?}");
    let records: Vec<serde_json::Value> = files.iter().flat_map(|f| lines(f)).collect();
    assert!(records.len() > 160, "{}", records.len());
    for record in &records {
        assert!(record.get("integrity").is_none(), "the seal sits in unmapped: {record}");
        assert!(record["unmapped"]["integrity"]["hash"].is_string(), "{record}");
        assert!(record["class_uid"].is_u64(), "{record}");
    }
    let codes: Vec<&str> = records.iter().map(|r| r["metadata"]["event_code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"sensor.chain_recovered"), "the crash is recorded: {codes:?}");
    assert!(records.iter().any(|r| r["unmapped"]["checkpoint"]["signature"].is_string()));

    let mut shuffled = files.clone();
    shuffled.reverse();
    let report = verify_paths(&shuffled, Some(&public)).unwrap();
    assert_eq!(report.exit_code, 0, "{report:#?}");
    assert!(report.checkpoints.verified > 2, "{report:#?}");

    let active = std::fs::read(&path).unwrap();
    let at = active.iter().position(|&b| b == b'x').unwrap_or(active.len() / 2);
    let mut changed = active.clone();
    changed[at + 40] ^= 0x01;
    std::fs::write(&path, changed).unwrap();
    let report = verify_paths(&files, Some(&public)).unwrap();
    assert_eq!(report.exit_code, 1, "{report:#?}");
}

#[test]
fn chains_per_format() {
    let mut output = OutputConfig::default();
    let layout = |output: &OutputConfig, file| {
        chains_for(output, file, GENESIS).iter().map(|c| (c.format, c.to_file, c.to_stdout)).collect::<Vec<_>>()
    };
    assert_eq!(layout(&output, true), [(OutputFormat::Native, true, true)]);
    output.evidence_format = OutputFormat::Ocsf;
    assert_eq!(layout(&output, true), [(OutputFormat::Ocsf, true, false), (OutputFormat::Native, false, true)]);
    assert_eq!(layout(&output, false), [(OutputFormat::Native, false, true)]);
    output.stdout = false;
    assert_eq!(layout(&output, true), [(OutputFormat::Ocsf, true, false)]);
}
