//! `cargo xtask bench --scenario agent-load`: the sensor's steady CPU and
//! memory while an agent talks to a model at a fixed rate and runs a tool
//! after every answer.
//!
//! A plain-HTTP server on loopback answers Ollama's `POST /api/chat` with a
//! tool call; the agent is a separate process (this binary's hidden
//! `agent-client` task) that opens one connection per request, as Python's
//! urllib does, and spawns `true` after each response. The sensor runs with
//! `--no-stdout`. After a warm-up, its CPU time (utime + stime from
//! `/proc/PID/stat`) is sampled at the start and end of the steady window;
//! resident memory (`VmRSS`, `VmHWM`) is read at its end.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench::Sensor;

/// The targets: at most half a percent of one core and 40 MB resident.
const CPU_TARGET_PERCENT: f64 = 0.5;
const RSS_TARGET_MIB: f64 = 40.0;
const WARM_UP: Duration = Duration::from_secs(5);
const MODEL: &str = "bench-model";

/// Binds the Ollama port on the first free loopback address, so the
/// sensor's provider catalog matches the destination.
fn bind_server() -> Result<TcpListener> {
    for last in 1..32u8 {
        if let Ok(listener) = TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, last), 11434)) {
            return Ok(listener);
        }
    }
    bail!("port 11434 is in use on 127.0.0.1 to 127.0.0.31; stop the local model server and run the bench again")
}

fn serve(listener: TcpListener) {
    let reply = serde_json::json!({
        "model": MODEL,
        "created_at": "2026-01-01T00:00:00Z",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{ "function": { "name": "run_shell", "arguments": { "command": "true" } } }],
        },
        "done_reason": "stop",
        "done": true,
        "prompt_eval_count": 27,
        "eval_count": 13,
    })
    .to_string();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let reply = reply.clone();
        std::thread::spawn(move || {
            let _ = answer(stream, &reply);
        });
    }
}

fn answer(stream: TcpStream, reply: &str) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    writer.write_all(response.as_bytes())
}

/// Runs the agent: `count` requests at `rate` per second, each followed by
/// a tool spawn. Runs as its own process (`cargo xtask agent-client`).
pub fn client(address: &str, rate: f64, count: usize) -> Result<()> {
    let body = serde_json::json!({
        "model": MODEL,
        "stream": false,
        "messages": [{ "role": "user", "content": "list the files in this directory" }],
        "tools": [{ "type": "function", "function": { "name": "run_shell", "parameters": { "type": "object" } } }],
    })
    .to_string();
    let start = Instant::now();
    let mut late = 0;
    for index in 0..count {
        let due = start + Duration::from_secs_f64(index as f64 / rate);
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => late += 1,
        }
        let mut stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        // One write, as HTTP clients send a small request: the sensor reads
        // a stream's first write.
        let request = format!(
            "POST /api/chat HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        if !response.starts_with(b"HTTP/1.1 200") {
            bail!("request {index}: unexpected response {:?}", String::from_utf8_lossy(&response));
        }
        let status = Command::new("true").status().context("running the tool `true`")?;
        if !status.success() {
            bail!("the tool `true` failed: {status}");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("requests {count} seconds {elapsed:.2} late {late}");
    Ok(())
}

/// Evidence records written so far, rotated files included.
fn count_lines(dir: &Path) -> usize {
    evidence_files(dir).iter().map(|path| std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())).sum()
}

fn evidence_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.to_string_lossy().contains("evidence")).collect()
}

pub fn run(binary: &Path, secs: u64, rate: f64, config: Option<&Path>) -> Result<()> {
    if secs == 0 || rate <= 0.0 {
        bail!("--secs and --rate must be positive");
    }
    let dir = std::env::temp_dir().join(format!("agent-sensor-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let evidence = dir.join("evidence.jsonl");
    let listener = bind_server()?;
    let address = listener.local_addr()?.to_string();
    std::thread::spawn(move || serve(listener));

    let sensor = Sensor::start(binary, &evidence, config)?;
    // The sensor records the whole host: its CPU with no agent running,
    // over a window as long, is what other tenants cost it.
    std::thread::sleep(Duration::from_secs(2));
    let (idle_start, _) = sensor.usage();
    let idle_records_start = count_lines(&dir);
    let idle_began = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (idle_end, _) = sensor.usage();
    let idle_window = idle_began.elapsed().as_secs_f64();
    let idle_records = count_lines(&dir).saturating_sub(idle_records_start);
    let idle_percent = (idle_end - idle_start) / idle_window * 100.0;

    let total = WARM_UP + Duration::from_secs(secs) + Duration::from_secs(1);
    let count = (total.as_secs_f64() * rate) as usize;
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let agent = Command::new(xtask)
        .args(["agent-client", "--address", &address, "--rate", &rate.to_string(), "--count", &count.to_string()])
        // `cargo xtask` puts the tool chain's library directories in
        // LD_LIBRARY_PATH; inherited, each tool spawn's loader would probe
        // them all, and the sensor would record every failed open.
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the agent client")?;

    std::thread::sleep(WARM_UP);
    let (cpu_start, _) = sensor.usage();
    let records_start = count_lines(&dir);
    let window_start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu_end, _) = sensor.usage();
    let (rss_kib, hwm_kib) = sensor.resident();
    let window = window_start.elapsed().as_secs_f64();
    let records_end = count_lines(&dir);

    let output = agent.wait_with_output().context("waiting for the agent client")?;
    let client_report = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        sensor.stop()?;
        bail!("the agent client failed: {}", output.status);
    }
    let summary = kinds(&dir);
    sensor.stop()?;

    let cpu_percent = (cpu_end - cpu_start) / window * 100.0;
    let rss_mib = rss_kib as f64 / 1024.0;
    let hwm_mib = hwm_kib as f64 / 1024.0;
    let records = records_end.saturating_sub(records_start);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("agent load: {rate} LLM requests/s over plain HTTP, a `true` tool spawn after each; steady window {window:.1} s");
    println!("agent client: {client_report}");
    println!("records written in the window: {records} ({:.0}/s)", records as f64 / window);
    println!(
        "sensor cpu: {cpu_percent:.2}% of one core (target <= {CPU_TARGET_PERCENT}%: {})",
        verdict(cpu_percent <= CPU_TARGET_PERCENT)
    );
    println!(
        "sensor memory: VmRSS {rss_mib:.1} MiB, VmHWM {hwm_mib:.1} MiB (target <= {RSS_TARGET_MIB} MB resident: {})",
        verdict(rss_mib <= RSS_TARGET_MIB)
    );
    println!(
        "sensor cpu with no agent running (other tenants of this host): {idle_percent:.2}% of one core, {idle_records} records in {idle_window:.1} s"
    );
    println!("sensor cpu attributable to the agent load: {:.2}% of one core", (cpu_percent - idle_percent).max(0.0));
    if records > 0 {
        println!("cpu per record: {:.1} us", (cpu_end - cpu_start) * 1e6 / records as f64);
    }
    println!("records by kind over the whole run (count, bytes): {summary}");
    let results = serde_json::json!({
        "scenario": "agent-load",
        "rate_per_second": rate,
        "window_seconds": window,
        "records_in_window": records,
        "sensor_cpu_percent_of_one_core": cpu_percent,
        "sensor_cpu_percent_idle_host": idle_percent,
        "records_in_idle_window": idle_records,
        "sensor_vm_rss_kib": rss_kib,
        "sensor_vm_hwm_kib": hwm_kib,
        "client": client_report,
        "records_by_kind": summary,
    });
    let out = crate::workspace_root().join("target/bench-agent-load.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", out.display());
    if std::env::var_os("BENCH_KEEP_EVIDENCE").is_some() {
        println!("evidence kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Counts the evidence records by kind, and their bytes, to show what the
/// load made.
fn kinds(dir: &Path) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for path in evidence_files(dir) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(line) {
                let entry = counts.entry(record["kind"].as_str().unwrap_or("?").to_owned()).or_default();
                entry.0 += 1;
                entry.1 += line.len() as u64 + 1;
            }
        }
    }
    counts.into_iter().map(|(kind, (records, bytes))| (kind, serde_json::json!({ "records": records, "bytes": bytes }))).collect()
}
