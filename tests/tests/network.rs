//! Connect records against the real kernel: who connected, to where, and
//! with what outcome. Every peer is on loopback and owned by the test.

use std::net::TcpListener;

use integration_tests::{
    argv, output_number, require_sensor, run_workload, run_workload_via, workload_binary, ClosedPort, Sensor,
};
use serde_json::{json, Value};

/// Waits for the net.connect record from process `pid` to `port`.
fn connect_record(sensor: &Sensor, pid: u64, port: u16) -> Value {
    sensor.expect(&format!("connect from pid {pid} to port {port}"), |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["destination"]["port"] == port
    })
}

/// Waits for the workload's own exec record.
fn workload_exec(sensor: &Sensor, pid: u64) -> Value {
    sensor.expect(&format!("the workload's exec (pid {pid})"), |r| {
        r["kind"] == "process.exec"
            && r["process"]["pid"] == pid
            && argv(r).first().is_some_and(|a| a.ends_with("/workload"))
    })
}

fn workload_exe() -> String {
    std::fs::canonicalize(workload_binary()).expect("canonicalize the workload").to_string_lossy().into_owned()
}

fn listener(address: &str) -> (TcpListener, u16) {
    let listener = TcpListener::bind(address).unwrap_or_else(|e| panic!("listen on {address}: {e}"));
    let port = listener.local_addr().expect("listener address").port();
    (listener, port)
}

/// Checks the handshake outcome of a non-blocking connect, found either in
/// the connect record itself or in a later net.connect_result with its id.
fn assert_async_outcome(sensor: &Sensor, record: &Value, outcome: &str) {
    let network = &record["network"];
    assert_eq!(network["result"], "EINPROGRESS", "{record}");
    assert_eq!(network["errno"], 115, "{record}");
    let connect_id = network["connect_id"].clone();
    assert!(connect_id.is_u64(), "a non-blocking connect carries a connect_id: {record}");
    if network["outcome"] == outcome {
        return;
    }
    assert_eq!(network["outcome"], "pending", "outcome is {outcome} or pending: {record}");
    let result = sensor.expect("net.connect_result", |r| {
        r["kind"] == "net.connect_result" && r["network"]["connect_id"] == connect_id
    });
    assert_eq!(result["network"]["outcome"], outcome, "{result}");
    assert_eq!(result["process"]["pid"], record["process"]["pid"], "{result}");
    assert_eq!(result["network"]["destination"], network["destination"], "{result}");
}

#[test]
fn worker_thread_connect_names_program() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("127.0.0.1:0");
    let output = run_workload(&["thread-connect", "127.0.0.1", &port.to_string()]);
    let pid = output_number(&output, "pid");
    let tid = output_number(&output, "tid");
    assert_ne!(pid, tid, "the connect must come from a worker thread");

    let record = connect_record(&sensor, pid, port);
    let exec = workload_exec(&sensor, pid);
    let process = &record["process"];
    assert_eq!(process["pid"], pid, "pid is the thread group: {record}");
    assert_eq!(process["thread"]["tid"], tid, "{record}");
    assert_eq!(process["exe"], workload_exe().as_str(), "{record}");
    assert_eq!(argv(&record), argv(&exec), "the program's argv: {record}");
    assert_eq!(argv(&record)[1], "thread-connect", "{record}");
    assert_eq!(process["comm"], "workload", "the program's comm, not the thread's name: {record}");
    assert_eq!(process["exec_id"], exec["process"]["exec_id"], "{record}");
    assert_eq!(process["origin"], "exec", "{record}");
    assert_eq!(record["network"]["result"], "ok", "{record}");
}

/// With `probes.report_threads`, a new thread gets a `process.thread`
/// record and leaves its process as it was: the later connect still names
/// the process's real parent and exec.
#[test]
fn reported_thread_keeps_process() {
    require_sensor!();
    let sensor = Sensor::start("[probes]\nreport_threads = true\n");
    let (_listener, port) = listener("127.0.0.1:0");
    let output = run_workload(&["thread-connect", "127.0.0.1", &port.to_string()]);
    let pid = output_number(&output, "pid");
    let tid = output_number(&output, "tid");

    let thread = sensor.expect("process.thread of the worker", |r| {
        r["kind"] == "process.thread" && r["process"]["pid"] == pid && r["process"]["thread"]["tid"] == tid
    });
    let exec = workload_exec(&sensor, pid);
    assert_eq!(thread["process"]["exec_id"], exec["process"]["exec_id"], "{thread}");
    let record = connect_record(&sensor, pid, port);
    assert_eq!(record["process"]["ppid"], exec["process"]["ppid"], "{record}");
    assert_eq!(record["process"]["exec_id"], exec["process"]["exec_id"], "{record}");
    assert_eq!(record["process"]["origin"], "exec", "{record}");
    // The workload's own fork from this test is its only one.
    let forks: Vec<Value> =
        sensor.records().into_iter().filter(|r| r["kind"] == "process.fork" && r["process"]["pid"] == pid).collect();
    assert!(forks.len() <= 1, "{forks:#?}");
    assert!(forks.iter().all(|fork| fork["process"]["ppid"] != pid), "the thread is not a fork of its own process: {forks:#?}");
}

#[test]
fn forked_child_connect_without_exec() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("127.0.0.1:0");
    let output = run_workload(&["fork-connect", "127.0.0.1", &port.to_string()]);
    let parent = output_number(&output, "pid");
    let child = output_number(&output, "child");

    let record = connect_record(&sensor, child, port);
    let exec = workload_exec(&sensor, parent);
    let process = &record["process"];
    assert_eq!(process["pid"], child, "{record}");
    assert_eq!(process["origin"], "fork", "{record}");
    assert!(process.get("argv").is_none(), "a forked child has no argv of its own: {record}");
    assert_eq!(process["parent"]["argv"], exec["process"]["argv"], "the parent's argv: {record}");
    assert_eq!(process["parent"]["pid"], parent, "{record}");
    assert_eq!(process["ppid"], parent, "{record}");
    assert_eq!(process["parent_exec_id"], exec["process"]["exec_id"], "{record}");
    assert_ne!(process["exec_id"], exec["process"]["exec_id"], "the child has its own id: {record}");
    assert_eq!(process["exe"], workload_exe().as_str(), "the child runs its parent's image: {record}");
    assert!(process.get("thread").is_none(), "{record}");
    assert_eq!(record["network"]["result"], "ok", "{record}");
}

#[test]
fn ipv4_blocking_connect_ok() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("127.0.0.1:0");
    let output = run_workload(&["connect", "tcp", "block", "127.0.0.1", &port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 0, "the connect succeeded");

    let record = connect_record(&sensor, pid, port);
    let expected = json!({
        "protocol": "tcp",
        "destination": {"address": "127.0.0.1", "port": port, "family": "ipv4"},
        "result": "ok",
        "fd": output_number(&output, "fd"),
    });
    assert_eq!(record["network"], expected, "{record}");
}

#[test]
fn ipv6_loopback_connect() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("[::1]:0");
    let output = run_workload(&["connect", "tcp", "block", "::1", &port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 0, "the connect succeeded");

    let record = connect_record(&sensor, pid, port);
    let expected = json!({
        "protocol": "tcp",
        "destination": {"address": "::1", "port": port, "family": "ipv6"},
        "result": "ok",
        "fd": output_number(&output, "fd"),
    });
    assert_eq!(record["network"], expected, "{record}");
}

#[test]
fn ipv4_mapped_connect() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("127.0.0.1:0");
    let output = run_workload(&["connect", "tcp", "block", "::ffff:127.0.0.1", &port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 0, "the connect succeeded");

    let record = connect_record(&sensor, pid, port);
    let expected = json!({
        "protocol": "tcp",
        "destination": {"address": "::ffff:127.0.0.1", "port": port, "family": "ipv6", "v4_mapped": true},
        "result": "ok",
        "fd": output_number(&output, "fd"),
    });
    assert_eq!(record["network"], expected, "{record}");
}

#[test]
fn nonblocking_connect_established() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("127.0.0.1:0");
    let output = run_workload(&["connect", "tcp", "nonblock", "127.0.0.1", &port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 115, "the connect returned EINPROGRESS");
    assert_eq!(output_number(&output, "so_error"), 0, "the handshake succeeded");

    let record = connect_record(&sensor, pid, port);
    assert_eq!(record["network"]["protocol"], "tcp", "{record}");
    assert_async_outcome(&sensor, &record, "established");
}

#[test]
fn nonblocking_connect_established_later() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload(&["connect-later"]);
    let pid = output_number(&output, "pid");
    let port = output_number(&output, "port") as u16;
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 115, "the connect returned EINPROGRESS");
    assert_eq!(output_number(&output, "so_error"), 0, "the handshake succeeded");

    let record = sensor.expect("the pending connect", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    let network = &record["network"];
    assert_eq!(network["result"], "EINPROGRESS", "{record}");
    assert_eq!(network["outcome"], "pending", "the listener dropped the first SYN: {record}");
    let connect_id = network["connect_id"].clone();
    assert!(connect_id.is_u64(), "{record}");

    let result = sensor.expect("net.connect_result", |r| {
        r["kind"] == "net.connect_result" && r["network"]["connect_id"] == connect_id
    });
    let expected = json!({
        "protocol": "tcp",
        "destination": {"address": "127.0.0.1", "port": port, "family": "ipv4"},
        "result": "EINPROGRESS",
        "errno": 115,
        "outcome": "established",
        "connect_id": connect_id,
    });
    assert_eq!(result["network"], expected, "{result}");
    assert_eq!(result["process"]["pid"], pid, "{result}");
    assert_eq!(result["process"]["exec_id"], record["process"]["exec_id"], "{result}");
}

#[test]
fn refused_blocking_connect() {
    require_sensor!();
    let sensor = Sensor::start("");
    let closed = ClosedPort::new(false);
    let output = run_workload(&["connect", "tcp", "block", "127.0.0.1", &closed.port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 111, "the connect was refused");

    let record = connect_record(&sensor, pid, closed.port);
    let expected = json!({
        "protocol": "tcp",
        "destination": {"address": "127.0.0.1", "port": closed.port, "family": "ipv4"},
        "result": "ECONNREFUSED",
        "errno": 111,
        "fd": output_number(&output, "fd"),
    });
    assert_eq!(record["network"], expected, "{record}");
}

#[test]
fn refused_blocking_connect_ipv6() {
    require_sensor!();
    let sensor = Sensor::start("");
    let closed = ClosedPort::new(true);
    let output = run_workload(&["connect", "tcp", "block", "::1", &closed.port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 111, "the connect was refused");

    let record = connect_record(&sensor, pid, closed.port);
    assert_eq!(record["network"]["result"], "ECONNREFUSED", "{record}");
    assert_eq!(record["network"]["errno"], 111, "{record}");
    assert_eq!(record["network"]["destination"]["address"], "::1", "{record}");
    assert!(record["network"].get("outcome").is_none(), "a blocking connect has no separate outcome: {record}");
}

#[test]
fn refused_nonblocking_connect() {
    require_sensor!();
    let sensor = Sensor::start("");
    let closed = ClosedPort::new(false);
    let output = run_workload(&["connect", "tcp", "nonblock", "127.0.0.1", &closed.port.to_string()]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 115, "the connect returned EINPROGRESS");
    assert_eq!(output_number(&output, "so_error"), 111, "the handshake was refused");

    let record = connect_record(&sensor, pid, closed.port);
    assert_eq!(record["network"]["protocol"], "tcp", "{record}");
    assert_async_outcome(&sensor, &record, "ECONNREFUSED");
}

#[test]
fn udp_connect() {
    require_sensor!();
    let sensor = Sensor::start("");
    // The workload sends one datagram after the connect, where the socket
    // tracepoints see it; nothing needs to listen on the port.
    let output = run_workload(&["connect", "udp", "block", "127.0.0.1", "9"]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 0, "the connect succeeded");
    assert_eq!(output_number(&output, "sent"), 1, "the datagram went out");

    let record = connect_record(&sensor, pid, 9);
    let expected = json!({
        "protocol": "udp",
        "destination": {"address": "127.0.0.1", "port": 9, "family": "ipv4"},
        "result": "ok",
        "fd": output_number(&output, "fd"),
        "seen_at": "first_send",
    });
    assert_eq!(record["network"], expected, "{record}");
}

#[test]
fn ipv6_short_sockaddr_connect() {
    require_sensor!();
    let sensor = Sensor::start("");
    let (_listener, port) = listener("[::1]:0");
    // The kernel accepts a sockaddr_in6 without its scope id field: 24 bytes
    // (SIN6_LEN_RFC2133) instead of 28.
    let output = run_workload(&["connect", "tcp", "block", "::1", &port.to_string(), "24"]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 0, "the kernel accepted the 24-byte sockaddr");

    let record = connect_record(&sensor, pid, port);
    assert_eq!(record["network"]["destination"]["address"], "::1", "{record}");
    assert_eq!(record["network"]["result"], "ok", "{record}");
}

#[test]
fn interrupted_connect_outcome() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = run_workload(&["connect-later", "interrupt"]);
    let pid = output_number(&output, "pid");
    let port = output_number(&output, "port") as u16;
    let fd = output_number(&output, "fd");
    assert_eq!(output_number(&output, "errno"), 4, "SIGALRM interrupted the blocking connect");
    assert_eq!(output_number(&output, "so_error"), 0, "the handshake went on and succeeded");

    let record = sensor.expect("the interrupted connect", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["fd"] == fd
    });
    let network = &record["network"];
    assert_eq!(network["result"], "EINTR", "{record}");
    assert_eq!(network["errno"], 4, "{record}");
    assert_eq!(network["destination"]["port"], port, "{record}");
    // After EINTR the kernel keeps the handshake going, as after
    // EINPROGRESS, so the connection's real outcome is still to be reported.
    let connect_id = network["connect_id"].clone();
    assert!(connect_id.is_u64(), "an interrupted connect carries a connect_id for its outcome: {record}");
    let result = sensor.expect("net.connect_result", |r| {
        r["kind"] == "net.connect_result" && r["network"]["connect_id"] == connect_id
    });
    assert_eq!(result["network"]["outcome"], "established", "{result}");
}

/// With the defaults, no syscall tracepoint is attached: each one would
/// send every syscall on the host through the kernel's slow path.
#[test]
fn default_hooks_leave_syscalls_alone() {
    require_sensor!();
    let sensor = Sensor::start("");
    let start = sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
    let hooks = &start["sensor"]["hooks"];
    assert_eq!(hooks["socket_hooks"], "tracepoints", "{start}");
    let attached: Vec<&str> = hooks["attached"].as_array().expect("attached hooks").iter().filter_map(Value::as_str).collect();
    assert!(attached.contains(&"tcp_state_change:raw_tp/inet_sock_set_state"), "{start}");
    assert!(attached.contains(&"sock_send_length:raw_tp/sock_send_length"), "{start}");
    assert!(!attached.iter().any(|hook| hook.contains(":syscalls/")), "no syscall tracepoint: {start}");
    let deferred = hooks["deferred"].to_string();
    assert!(deferred.contains("sys_enter_file"), "the file hooks wait for an agent: {start}");
}

/// `probes.socket_hooks = "syscalls"` keeps the syscall hooks, which also
/// see a connect that fails before any packet is sent: here, to a network
/// namespace whose loopback is down.
#[test]
fn syscall_hooks_see_connect_failing_before_syn() {
    require_sensor!();
    let sensor = Sensor::start("[probes]\nsocket_hooks = \"syscalls\"\n");
    let output = run_workload_via(&["unshare", "--net", "--"], &["connect", "tcp", "block", "127.0.0.1", "443"]);
    let pid = output_number(&output, "pid");
    assert_eq!(output_number(&output, "errno"), 101, "ENETUNREACH with loopback down");

    let record = connect_record(&sensor, pid, 443);
    assert_eq!(record["network"]["result"], "ENETUNREACH", "{record}");
    let start = sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
    assert_eq!(start["sensor"]["hooks"]["socket_hooks"], "syscalls", "{start}");
    let attached = start["sensor"]["hooks"]["attached"].to_string();
    assert!(attached.contains("sys_enter_connect:syscalls/sys_enter_connect"), "{start}");
}
