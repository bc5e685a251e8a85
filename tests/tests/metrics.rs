//! The metrics endpoint of a running sensor: counters move when processes
//! run, and the health and readiness endpoints answer.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use integration_tests::{free_port, http_get as get, metric_sample as sample, require_sensor, Sensor};

#[test]
fn counters_move_and_probes_answer() {
    require_sensor!();
    let port = free_port();
    let sensor = Sensor::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    // The endpoint is bound before `sensor.start`; the loop answers once
    // the start-up scans are done.
    let mut first = get(port, "/metrics");
    for _ in 0..5 {
        if first.0 == 200 {
            break;
        }
        first = get(port, "/metrics");
    }
    let (status, before) = first;
    assert_eq!(status, 200, "{before}\nstderr:\n{}", sensor.stderr());
    let execs_before = sample(&before, "agent_sensor_events_total{kind=\"exec\"}");
    let written_before = sample(&before, "agent_sensor_records_written_total");

    const SPAWNS: usize = 30;
    for _ in 0..SPAWNS {
        Command::new("true").status().expect("running true");
    }
    // The daemon drains the ring buffer within its drain interval.
    std::thread::sleep(Duration::from_millis(500));
    let (status, after) = get(port, "/metrics");
    assert_eq!(status, 200);
    let execs_after = sample(&after, "agent_sensor_events_total{kind=\"exec\"}");
    assert!(execs_after - execs_before >= SPAWNS as f64, "exec events went from {execs_before} to {execs_after}");
    let written_after = sample(&after, "agent_sensor_records_written_total");
    assert!(written_after - written_before >= 2.0 * SPAWNS as f64, "records written went from {written_before} to {written_after}");
    assert!(sample(&after, "agent_sensor_table_entries{table=\"processes\"}") > 0.0);
    assert!(sample(&after, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&after, "process_cpu_seconds_total") > 0.0);
    assert_eq!(sample(&after, "agent_sensor_lost_total{stage=\"export\",kind=\"record\",reason=\"buffer_full\"}"), 0.0);
    // Every sample line belongs to a family announced with TYPE.
    for line in after.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(after.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line");
    }

    let (status, body) = get(port, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(port, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hooks attached"), "{body}");
    let (status, _) = get(port, "/other");
    assert_eq!(status, 404);

    let records = sensor.stop();
    let stop = records.iter().find(|r| r["kind"] == "sensor.stop").expect("sensor.stop record");
    assert!(stop["sensor"]["records_written"].as_f64().unwrap() >= written_after, "{stop}");
}

/// A long-lived client that opens a connection per request, as many HTTP
/// clients do: the sensor's tables hold its live connections, not every
/// connection it ever made.
#[test]
fn per_request_connections_stay_bounded() {
    require_sensor!();
    let port = free_port();
    let sensor = Sensor::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}\nstderr:\n{}", sensor.stderr());
    let before = sample(&body, "agent_sensor_table_entries{table=\"connections\"}");

    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    const REQUESTS: usize = 300;
    for _ in 0..REQUESTS {
        let mut client = TcpStream::connect(address).unwrap();
        // An HTTP request as the first bytes, so the sensor parses the
        // stream as plaintext too.
        client.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, after) = get(port, "/metrics");
    assert_eq!(status, 200);
    let connections = sample(&after, "agent_sensor_table_entries{table=\"connections\"}");
    assert!(connections - before < 50.0, "{connections} connections kept after {REQUESTS} closed ones (from {before})");
    let streams = sample(&after, "agent_sensor_table_entries{table=\"llm_streams\"}");
    assert!(streams < 50.0, "{streams} plaintext streams kept after {REQUESTS} closed connections");
}
