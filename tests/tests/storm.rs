//! Exec storms: every exec is recorded, or its loss is counted exactly.
//!
//! Every running sensor sees every exec on the host, so the tests here take
//! turns, and cargo runs this file's binary apart from the other test files.

use std::{collections::BTreeSet, sync::Mutex};

use integration_tests::{argv, output_number, require_sensor, run_workload, sha256_file, unique_marker, Sensor};
use serde_json::Value;

static ONE_STORM_AT_A_TIME: Mutex<()> = Mutex::new(());

const STORM: u64 = 2000;

/// What a storm left in the records of a stopped sensor.
struct Tally {
    /// Storm indices with an exec record, each at most once.
    indices: BTreeSet<u64>,
    duplicates: u64,
    exec_records: u64,
    fork_records_of_storm: u64,
    other_execs: Vec<String>,
    /// `lost` summed over sensor.loss records, per event kind.
    loss_records: std::collections::BTreeMap<String, u64>,
    stop: Value,
}

fn tally(records: &[Value], marker: &str, workload_pid: u64) -> Tally {
    let prefix = format!("{marker}-");
    let mut tally = Tally {
        indices: BTreeSet::new(),
        duplicates: 0,
        exec_records: 0,
        fork_records_of_storm: 0,
        other_execs: Vec::new(),
        loss_records: Default::default(),
        stop: Value::Null,
    };
    for record in records {
        match record["kind"].as_str().unwrap_or_default() {
            "process.exec" => {
                tally.exec_records += 1;
                let args = argv(record);
                let index = (args.len() == 2 && args[0] == "/bin/true")
                    .then(|| args[1].strip_prefix(&prefix).and_then(|i| i.parse::<u64>().ok()))
                    .flatten();
                match index {
                    Some(i) if !tally.indices.insert(i) => tally.duplicates += 1,
                    Some(_) => {}
                    None => tally.other_execs.push(format!("{:?}", args)),
                }
            }
            "process.fork" if record["process"]["ppid"] == workload_pid => tally.fork_records_of_storm += 1,
            "sensor.loss" => {
                let kind = record["sensor"]["event_kind"].as_str().unwrap_or("?").to_owned();
                *tally.loss_records.entry(kind).or_default() += record["sensor"]["lost"].as_u64().unwrap_or(0);
            }
            "sensor.stop" => tally.stop = record["sensor"].clone(),
            _ => {}
        }
    }
    tally
}

/// Runs a storm under a sensor with `config` and checks the accounting
/// that must hold whatever the ring buffer size; returns the tally.
///
/// A loss counter cannot tell whose event it dropped, and other sessions
/// exec on this host too, so a reference sensor with the default ring runs
/// around the one under test. Everything it saw besides the storm bounds the
/// unrelated events that the sensor under test may have lost.
fn storm(config: &str, tag: &str) -> Tally {
    let _turn = ONE_STORM_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let reference = Sensor::start("");
    let sensor = Sensor::start(config);
    let marker = unique_marker(tag);
    let output = run_workload(&["storm", &STORM.to_string(), &marker, "4"]);
    assert_eq!(output_number(&output, "done"), STORM, "the workload ran the whole storm");
    let workload_pid = output_number(&output, "pid");
    let records = sensor.stop();
    let reference_records = reference.stop();
    let tally = tally(&records, &marker, workload_pid);
    let seen = tally_reference(&reference_records, &marker, workload_pid);

    assert!(tally.stop.is_object(), "no sensor.stop record among {} records", records.len());
    let lost_exec = tally.stop["lost"]["exec"].as_u64().expect("sensor.stop lost.exec");
    let lost_fork = tally.stop["lost"]["fork"].as_u64().expect("sensor.stop lost.fork");
    assert_eq!(tally.duplicates, 0, "storm execs recorded twice");
    assert_eq!(
        tally.stop["received"]["exec"].as_u64(),
        Some(tally.exec_records),
        "every exec the daemon received became a record: {}",
        tally.stop
    );
    assert_eq!(
        tally.loss_records.get("exec").copied().unwrap_or(0),
        lost_exec,
        "sensor.loss records add up to the kernel's count: {:?} vs {}",
        tally.loss_records,
        tally.stop
    );
    assert_eq!(
        tally.loss_records.get("fork").copied().unwrap_or(0),
        lost_fork,
        "sensor.loss records add up to the kernel's count: {:?} vs {}",
        tally.loss_records,
        tally.stop
    );

    let recorded = tally.indices.len() as u64;
    eprintln!(
        "storm under {config:?}: {recorded} of {STORM} execs recorded, {lost_exec} execs and {lost_fork} forks lost; {} other execs on the host",
        seen.other_execs
    );
    assert!(
        recorded + lost_exec >= STORM,
        "storm execs vanished without a loss count: {recorded} recorded + {lost_exec} lost < {STORM}; stop: {}",
        tally.stop
    );
    assert!(
        lost_exec <= STORM - recorded + seen.other_execs,
        "more execs counted lost ({lost_exec}) than the storm's missing {} plus the {} other execs on the host; stop: {}",
        STORM - recorded,
        seen.other_execs,
        tally.stop
    );
    let recorded_forks = tally.fork_records_of_storm;
    assert!(
        recorded_forks + lost_fork >= STORM,
        "storm forks vanished without a loss count: {recorded_forks} recorded + {lost_fork} lost < {STORM}; stop: {}",
        tally.stop
    );
    assert!(
        lost_fork <= STORM - recorded_forks + seen.other_forks,
        "more forks counted lost ({lost_fork}) than the storm's missing {} plus the {} other forks on the host; stop: {}",
        STORM - recorded_forks,
        seen.other_forks,
        tally.stop
    );
    if seen.other_execs == 0 {
        assert_eq!(recorded + lost_exec, STORM, "with a quiet host the accounting is exact; stop: {}", tally.stop);
    }
    tally
}

/// Events besides the storm that the reference sensor saw.
struct Reference {
    other_execs: u64,
    other_forks: u64,
}

fn tally_reference(records: &[Value], marker: &str, workload_pid: u64) -> Reference {
    let reference = tally(records, marker, workload_pid);
    assert_eq!(reference.stop["lost"]["exec"], 0, "the reference sensor lost execs: {}", reference.stop);
    assert_eq!(reference.stop["lost"]["fork"], 0, "the reference sensor lost forks: {}", reference.stop);
    assert_eq!(reference.indices.len() as u64, STORM, "the reference sensor saw the whole storm");
    let forks = records.iter().filter(|r| r["kind"] == "process.fork").count() as u64;
    Reference {
        other_execs: reference.other_execs.len() as u64,
        other_forks: forks - reference.fork_records_of_storm,
    }
}

#[test]
fn storm_default_ring_loses_nothing() {
    require_sensor!();
    let tally = storm("", "storm");
    assert_eq!(tally.stop["lost"]["exec"], 0, "a 4 MiB ring holds a 2,000-exec storm: {}", tally.stop);
    assert_eq!(tally.indices.len() as u64, STORM, "every storm exec recorded");
}

#[test]
fn storm_tiny_ring_counts_losses() {
    require_sensor!();
    let config = "[probes]\nring_buffer_bytes = 4096\nwakeup_bytes = 2048\ndrain_interval_ms = 1000\n";
    let tally = storm(config, "storm-tiny");
    let lost = tally.stop["lost"]["exec"].as_u64().unwrap_or(0);
    assert!(lost > 0, "a 4 KiB ring must overflow during the storm: {}", tally.stop);
    assert!(!tally.indices.is_empty(), "some storm execs still got through: {}", tally.stop);
}

#[test]
fn storm_records_name_the_binary() {
    require_sensor!();
    let _turn = ONE_STORM_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let sensor = Sensor::start("");
    let marker = unique_marker("storm-exe");
    run_workload(&["storm", "200", &marker, "4"]);
    let records = sensor.stop();
    let true_path = std::fs::canonicalize("/bin/true").expect("canonicalize /bin/true");
    let true_sha = sha256_file(&true_path);
    let storm_records: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "process.exec" && argv(r).get(1).is_some_and(|a| a.starts_with(&marker)))
        .collect();
    assert_eq!(storm_records.len(), 200, "every exec recorded");
    for record in storm_records {
        let process = &record["process"];
        assert_eq!(process["exe_sha256"], true_sha.as_str(), "{record}");
        // exec_exiting_at_once_has_exe checks the exact path; under load it
        // is enough that every record names the file.
        let exe = process["exe"].as_str().and_then(|exe| std::fs::canonicalize(exe).ok());
        assert_eq!(exe.as_deref(), Some(true_path.as_path()), "exe names the executed file: {record}");
    }
}
