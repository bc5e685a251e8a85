//! OTLP export against a receiver the test runs: every evidence record
//! arrives once and in seq order across a collector outage, the buffer
//! carries records across a sensor restart, and a full buffer's loss is
//! counted and recorded in the evidence file.

use std::{
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use integration_tests::{otlp_receiver::OtlpReceiver, require_sensor, ClosedPort, Sensor, TempDir};
use serde_json::Value;

/// Each sensor records every process on the host, so the tests take
/// turns to keep one test's workload out of another's counts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Spawns `true` every `pause` until dropped, so records keep coming.
struct Spawner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Spawner {
    fn start(pause: Duration) -> Spawner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut spawned = 0;
            while !flag.load(Ordering::Relaxed) {
                Command::new("true").status().expect("running true");
                spawned += 1;
                std::thread::sleep(pause);
            }
            spawned
        });
        Spawner { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn config(evidence: &Path, endpoint: &str, buffer: &Path, extra: &str) -> String {
    format!(
        "[output]\nevidence_path = \"{}\"\n\n[metrics]\nenabled = false\n\n[export.otlp]\nendpoint = \"{endpoint}\"\n\
         buffer_dir = \"{}\"\nflush_interval_ms = 200\nretry_initial_ms = 200\nretry_max_ms = 1000\nbatch_max_records = 128\n{extra}",
        evidence.display(),
        buffer.display()
    )
}

fn evidence_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("reading the evidence file").lines().map(str::to_owned).collect()
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Asserts that `received` is exactly the evidence lines, in order, with
/// matching seq and hash attributes.
fn assert_same_records(received: &[integration_tests::otlp_receiver::Received], lines: &[String]) {
    for (index, (got, line)) in received.iter().zip(lines).enumerate() {
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(&got.body, line, "record {index} differs from the evidence line");
        assert_eq!(got.seq, record["seq"].as_i64(), "seq attribute of record {index}");
        assert_eq!(got.hash.as_deref(), record["integrity"]["hash"].as_str(), "hash attribute of record {index}");
    }
    let seqs: Vec<i64> = received.iter().filter_map(|r| r.seq).collect();
    let duplicates = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(duplicates, 0, "records arrived twice or out of order");
    assert_eq!(
        received.len(),
        lines.len(),
        "the receiver got {} records, the evidence file has {}",
        received.len(),
        lines.len()
    );
}

#[test]
fn every_record_arrives_once_in_order_across_an_outage() {
    require_sensor!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("export-outage");
    let evidence = dir.path().join("evidence.jsonl");
    let mut receiver = OtlpReceiver::start();
    let sensor = Sensor::start(&config(&evidence, &receiver.endpoint(), &dir.path().join("buffer"), ""));
    let spawner = Spawner::start(Duration::from_millis(50));
    assert!(wait_until(Duration::from_secs(20), || receiver.records().len() > 50), "nothing exported; stderr:\n{}", sensor.stderr());

    receiver.stop();
    let before_outage = receiver.records().len();
    std::thread::sleep(Duration::from_secs(30));
    let during_outage = receiver.records().len();
    assert_eq!(before_outage, during_outage, "records arrived while the receiver was down");
    let checkpoints_during = evidence_lines(&evidence)[before_outage..].iter().filter(|l| l.contains("\"kind\":\"evidence.checkpoint\"")).count();
    receiver.restart();
    std::thread::sleep(Duration::from_secs(3));
    let spawned = spawner.finish();
    let stderr = sensor.stderr();
    sensor.stop();

    let lines = evidence_lines(&evidence);
    let received = receiver.records();
    assert!(receiver.errors().is_empty(), "bad requests: {:?}", receiver.errors());
    assert!(spawned > 500, "the workload spawned only {spawned} processes");
    assert!(checkpoints_during > 0, "no checkpoint was written during the outage, so none was exported after it");
    assert!(lines.len() > before_outage + 1000, "few records during the outage: {} after {before_outage}", lines.len());
    assert!(lines.last().unwrap().contains("\"kind\":\"evidence.checkpoint\""), "the shutdown checkpoint is missing");
    assert!(!lines.iter().any(|l| l.contains("\"kind\":\"sensor.loss\"")), "export lost records: {stderr}");
    assert_same_records(&received, &lines);

    // What the receiver got is a chain `verify` accepts on its own.
    let exported = dir.path().join("exported.jsonl");
    let bodies: String = received.iter().map(|r| format!("{}\n", r.body)).collect();
    std::fs::write(&exported, bodies).unwrap();
    let verify = Command::new(integration_tests::sensor_binary().unwrap()).arg("verify").arg(&exported).output().unwrap();
    // 0 is clean and 4 is warnings only: the test's checkpoints are unsigned.
    assert!(
        matches!(verify.status.code(), Some(0 | 4)),
        "verify rejected the exported records ({}): {}{}",
        verify.status,
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn buffered_records_are_sent_after_a_sensor_restart() {
    require_sensor!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("export-restart");
    let evidence = dir.path().join("evidence.jsonl");
    let buffer = dir.path().join("buffer");
    let closed = ClosedPort::new(false);
    let endpoint = format!("http://127.0.0.1:{}/v1/logs", closed.port);
    // The first run never reaches the collector: everything stays buffered.
    let sensor = Sensor::start(&config(&evidence, &endpoint, &buffer, ""));
    let spawner = Spawner::start(Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));
    spawner.finish();
    sensor.stop();
    let first_run = evidence_lines(&evidence).len();
    drop(closed);

    let receiver = OtlpReceiver::start();
    let sensor = Sensor::start(&config(&evidence, &receiver.endpoint(), &buffer, ""));
    assert!(
        wait_until(Duration::from_secs(20), || receiver.records().len() > first_run),
        "the first run's records did not arrive: {} of {first_run}; stderr:\n{}",
        receiver.records().len(),
        sensor.stderr()
    );
    sensor.stop();
    let lines = evidence_lines(&evidence);
    assert_same_records(&receiver.records(), &lines);
}

#[test]
fn full_buffer_loss_is_counted_and_recorded() {
    require_sensor!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("export-full");
    let evidence = dir.path().join("evidence.jsonl");
    let buffer = dir.path().join("buffer");
    let closed = ClosedPort::new(false);
    let endpoint = format!("http://127.0.0.1:{}/v1/logs", closed.port);
    let limit = 16384;
    let sensor = Sensor::start(&config(&evidence, &endpoint, &buffer, &format!("buffer_max_bytes = {limit}\n")));
    let spawner = Spawner::start(Duration::from_millis(10));
    let loss = sensor.expect("an export loss record", |r| {
        r["kind"] == "sensor.loss" && r["sensor"]["stage"] == "export" && r["sensor"]["reason"] == "buffer_full"
    });
    assert!(loss["sensor"]["lost"].as_u64().unwrap() > 0, "{loss}");
    spawner.finish();
    // Another loss report or two after the workload ends.
    std::thread::sleep(Duration::from_secs(2));
    let records = sensor.stop();

    let lines = evidence_lines(&evidence);
    let losses: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "sensor.loss" && r["sensor"]["stage"] == "export")
        .collect();
    assert!(!losses.is_empty(), "the evidence file has no export loss record");
    let last_total = losses.last().unwrap()["sensor"]["lost_total"].as_u64().unwrap();
    let summed: u64 = losses.iter().map(|r| r["sensor"]["lost"].as_u64().unwrap()).sum();
    assert_eq!(summed, last_total, "lost and lost_total disagree");

    // Every record before a loss report is either in the buffer or
    // counted lost. Records the export task had not taken from its channel
    // when the last report ran make the lower bound the previous report.
    let last_seq = losses.last().unwrap()["seq"].as_u64().unwrap();
    let previous_seq = losses.iter().rev().nth(1).map_or(0, |r| r["seq"].as_u64().unwrap());
    let first_seq = serde_json::from_str::<Value>(&lines[0]).unwrap()["seq"].as_u64().unwrap();
    let mut buffered_before_last = 0;
    let mut buffered_bytes = 0;
    for entry in std::fs::read_dir(&buffer).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            let text = std::fs::read_to_string(&path).unwrap();
            buffered_bytes += text.len() as u64;
            let seqs = text.lines().map(|l| l.split_once(' ').expect("a frame is SEQ LINE").0.parse::<u64>().unwrap());
            buffered_before_last += seqs.filter(|&seq| seq < last_seq).count() as u64;
        }
    }
    assert!(buffered_bytes <= limit, "the buffer holds {buffered_bytes} bytes over its {limit} limit");
    assert!(buffered_before_last > 0, "nothing was buffered");
    let accounted = buffered_before_last + last_total;
    assert!(
        accounted <= last_seq - first_seq,
        "{buffered_before_last} buffered + {last_total} lost exceeds the {} records before the last loss record",
        last_seq - first_seq
    );
    assert!(
        accounted >= previous_seq - first_seq,
        "only {buffered_before_last} buffered + {last_total} counted lost of the {} records before the previous loss record",
        previous_seq - first_seq
    );
    let total = lines.len() as u64;
    assert_eq!(records.len() as u64, total, "stdout and the evidence file differ");
}
