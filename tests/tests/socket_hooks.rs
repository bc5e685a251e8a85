//! The socket tracepoints (the default `probes.socket_hooks`) against odd
//! but legal uses of connect and send: reconnected datagram sockets,
//! restarted and timed-out connects, signals and many threads at once.
//! Each record is compared with what the workload's own syscalls returned.
//! Every peer is on loopback or in a network namespace the test creates.

use std::net::UdpSocket;

use integration_tests::{output_number, output_value, require_sensor, run_workload, run_workload_via, Sensor};
use serde_json::Value;

/// Every net.connect record so far from `pid` on descriptor `fd`.
fn connects_on_fd(sensor: &Sensor, pid: u64, fd: u64) -> Vec<Value> {
    sensor
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd)
        .collect()
}

/// Waits for the net.connect_result that carries `record`'s connect_id.
fn outcome_of(sensor: &Sensor, record: &Value) -> Value {
    let connect_id = record["network"]["connect_id"].clone();
    assert!(connect_id.is_u64(), "the record carries a connect_id for its outcome: {record}");
    if record["network"]["outcome"] != "pending" {
        return record.clone();
    }
    sensor.expect("net.connect_result", |r| {
        r["kind"] == "net.connect_result" && r["network"]["connect_id"] == connect_id
    })
}

/// Launches a command in a new network namespace whose loopback is up and
/// whose 10.9.9.0/24 is routed to loopback, where no address answers and
/// forwarding is off, so every packet to it vanishes. One SYN
/// retransmission makes a connect there time out after about three seconds.
const BLACKHOLE_NAMESPACE: &[&str] = &[
    "unshare",
    "--net",
    "--",
    "sh",
    "-ec",
    "ip link set lo up
     ip route add 10.9.9.0/24 dev lo
     echo 1 > /proc/sys/net/ipv4/tcp_syn_retries
     exec \"$0\" \"$@\"",
];

/// A connected UDP socket connected again elsewhere sends to the new
/// destination, which must be reported like the first.
#[test]
fn udp_reconnect_reports_new_destination() {
    require_sensor!();
    let sensor = Sensor::start("");
    let first = UdpSocket::bind("127.0.0.1:0").expect("bind the first receiver");
    let second = UdpSocket::bind("127.0.0.1:0").expect("bind the second receiver");
    let first_port = first.local_addr().expect("first address").port();
    let second_port = second.local_addr().expect("second address").port();
    let output = run_workload(&["udp-reconnect", "127.0.0.1", &first_port.to_string(), &second_port.to_string()]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "first_sent"), 1, "{output}");
    assert_eq!(output_number(&output, "second_sent"), 1, "{output}");

    for port in [first_port, second_port] {
        let record = sensor.expect(&format!("udp connect to port {port}"), |r| {
            r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["destination"]["port"] == port
        });
        assert_eq!(record["network"]["protocol"], "udp", "{record}");
        assert_eq!(record["network"]["fd"], fd, "{record}");
        assert_eq!(record["network"]["seen_at"], "first_send", "{record}");
    }
    let records = connects_on_fd(&sensor, pid, fd);
    assert_eq!(records.len(), 2, "one record per destination: {records:?}");
}

/// SIGALRM with SA_RESTART during a blocking connect restarts the connect,
/// which the caller sees succeed: the record must not say EINTR.
#[test]
fn restarted_connect_not_interrupted() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload(&["connect-later", "restart"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 0, "the restarted connect succeeded: {output}");

    let record = sensor.expect("the restarted connect", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    assert_eq!(record["network"]["result"], "ok", "{record}");
    assert!(record["network"].get("errno").is_none(), "{record}");
    // The record of a blocking connect comes at its end, so nothing more
    // is expected after the workload's exit.
    let records = connects_on_fd(&sensor, pid, fd);
    assert_eq!(records.len(), 1, "exactly one record: {records:?}");
}

/// SO_SNDTIMEO bounds a blocking connect: it returns EINPROGRESS while the
/// handshake goes on. A signal that interrupts a later sleep of the same
/// thread has nothing to do with the connect.
#[test]
fn send_timeout_connect_in_progress() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload(&["connect-later", "sndtimeo"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 115, "SO_SNDTIMEO ended the connect: {output}");
    assert_eq!(output_number(&output, "sleep_errno"), 4, "the signal interrupted the sleep: {output}");
    assert_eq!(output_number(&output, "so_error"), 0, "the handshake succeeded: {output}");

    let record = sensor.expect("the connect with a send timeout", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    assert_ne!(record["network"]["result"], "EINTR", "the signal came after the connect returned: {record}");
    assert_eq!(record["network"]["result"], "EINPROGRESS", "{record}");
    assert_eq!(outcome_of(&sensor, &record)["network"]["outcome"], "established", "{record}");
}

/// With a send timeout, the kernel ends a connect that a signal interrupts
/// with EINTR even when the handler has SA_RESTART.
#[test]
fn send_timeout_connect_interrupted_despite_restart() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload(&["connect-later", "sndtimeo-restart"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 4, "EINTR despite SA_RESTART: {output}");
    assert_eq!(output_number(&output, "so_error"), 0, "the handshake succeeded: {output}");

    let record = sensor.expect("the interrupted connect", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    assert_eq!(record["network"]["result"], "EINTR", "{record}");
    assert_eq!(outcome_of(&sensor, &record)["network"]["outcome"], "established", "{record}");
}

/// Many threads blocked in connect at once, half of them interrupted: each
/// connect gets exactly one record, with its own thread, descriptor and
/// result, and each interrupted one its outcome.
#[test]
fn thread_connects_one_record_each() {
    require_sensor!();
    const THREADS: usize = 16;
    let sensor = Sensor::start("");
    let output = run_workload(&["thread-connects", &THREADS.to_string()]);
    let pid = output_number(&output, "pid");
    let port = output_number(&output, "port");
    let connects: Vec<(u64, u64, i32)> = output
        .lines()
        .filter_map(|line| line.strip_prefix("connect "))
        .map(|fields| {
            let numbers: Vec<i64> = fields.split(' ').map(|f| f.parse().expect("a number")).collect();
            assert_eq!(numbers[3], 0, "every handshake succeeded: {output}");
            (numbers[0] as u64, numbers[1] as u64, numbers[2] as i32)
        })
        .collect();
    assert_eq!(connects.len(), THREADS, "{output}");
    assert!(connects.iter().any(|c| c.2 == 4), "some connects were interrupted: {output}");
    assert!(connects.iter().any(|c| c.2 == 0), "some connects were restarted: {output}");

    for (tid, fd, errno) in &connects {
        let record = sensor.expect(&format!("connect of thread {tid}"), |r| {
            r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["process"]["thread"]["tid"] == *tid
        });
        assert_eq!(record["network"]["fd"], *fd, "{record}");
        assert_eq!(record["network"]["destination"]["port"], port, "{record}");
        let expected = if *errno == 4 { "EINTR" } else { "ok" };
        assert_eq!(record["network"]["result"], expected, "thread {tid} saw errno {errno}: {record}");
        if *errno == 4 {
            assert_eq!(outcome_of(&sensor, &record)["network"]["outcome"], "established", "{record}");
        }
    }
    let all: Vec<Value> = sensor
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "net.connect" && r["process"]["pid"] == pid)
        .collect();
    // The workload's main thread made one more connect, to fill the
    // listener's queue.
    assert_eq!(all.len(), THREADS + 1, "no connect reported twice: {all:#?}");
}

/// A SYN that no host answers: the blocking connect fails with ETIMEDOUT
/// after the retransmissions, and so does its record.
#[test]
fn unanswered_syn_times_out() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload_via(BLACKHOLE_NAMESPACE, &["connect", "tcp", "block", "10.9.9.2", "80"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 110, "ETIMEDOUT: {output}");

    let record = sensor.expect("the timed-out connect", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    assert_eq!(record["network"]["result"], "ETIMEDOUT", "{record}");
    assert_eq!(record["network"]["errno"], 110, "{record}");
    assert_eq!(record["network"]["destination"]["address"], "10.9.9.2", "{record}");
}

/// The non-blocking variant: EINPROGRESS, then the outcome ETIMEDOUT.
#[test]
fn unanswered_syn_times_out_nonblocking() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload_via(BLACKHOLE_NAMESPACE, &["connect", "tcp", "nonblock", "10.9.9.2", "80"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 115, "{output}");
    assert_eq!(output_value(&output, "so_error"), "110", "ETIMEDOUT: {output}");

    let record = sensor.expect("the timed-out connect", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    assert_eq!(record["network"]["result"], "EINPROGRESS", "{record}");
    assert_eq!(outcome_of(&sensor, &record)["network"]["outcome"], "ETIMEDOUT", "{record}");
}
