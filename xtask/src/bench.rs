//! `cargo xtask bench`: the sensor's overhead as a ratio of wall time with
//! and without it, measured in the same run.
//!
//! Rounds alternate between "off" and "on" so that drift on a shared machine
//! (other tenants, frequency changes) hits both sides alike; the reported
//! ratio is the median of the per-round ratios. The sensor's CPU time and
//! peak resident memory are read from /proc before it stops.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub(crate) struct Sensor {
    child: Child,
}

impl Sensor {
    pub(crate) fn start(binary: &Path, evidence: &Path, config: Option<&Path>) -> Result<Sensor> {
        let mut command = Command::new(binary);
        command.args(["run", "--no-stdout", "--evidence"]).arg(evidence);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("AGENT_SENSOR_LOG", "info")
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("sensor stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("agent-sensor started") => break,
                Some(Ok(_)) => {}
                other => bail!("the sensor did not start: {other:?}"),
            }
        }
        // Keep draining stderr so the sensor never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Sensor { child })
    }

    /// CPU seconds (user + system) and peak resident KiB so far.
    pub(crate) fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / ticks);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (cpu, hwm)
    }

    /// Resident KiB now (VmRSS) and at its peak (VmHWM).
    pub(crate) fn resident(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    pub(crate) fn stop(mut self) -> Result<()> {
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().context("waiting for the sensor")?;
        Ok(())
    }
}

fn exec_storm(count: usize) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        let status = Command::new("/bin/true").status().context("running /bin/true")?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
    }
    Ok(start.elapsed())
}

fn connect_storm(count: usize) -> Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let address = listener.local_addr()?;
    let start = Instant::now();
    for _ in 0..count {
        let stream = TcpStream::connect(address).context("connecting on loopback")?;
        // Accepting in the same thread keeps the accept queue at one entry;
        // an acceptor thread that falls behind overflows it, and the
        // dropped SYNs add one-second retransmits to the timing.
        let (accepted, _) = listener.accept().context("accepting on loopback")?;
        reset_on_close(&stream);
        drop(accepted);
    }
    Ok(start.elapsed())
}

/// Closes with a reset instead of a FIN, so thousands of connects leave no
/// TIME_WAIT sockets behind to collide with later rounds' port choices.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the fd is open for the call, and the option value is a valid
    // `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub fn run(binary: &Path, rounds: usize, execs: usize, connects: usize, config: Option<&Path>) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("agent-sensor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let evidence = dir.join("evidence.jsonl");

    // Warm caches (page cache, dynamic loader) before the first timed round.
    exec_storm(execs.min(200))?;
    connect_storm(connects.min(200))?;

    let mut exec_ratios = Vec::new();
    let mut connect_ratios = Vec::new();
    let mut sensor_cpu_seconds = 0.0;
    let mut peak_rss_kib = 0;
    for round in 0..rounds {
        // Each round runs "off" then "on" back to back; the sensor is
        // started after the "off" half and stopped at the end of the round.
        let exec_off = exec_storm(execs)?;
        let connect_off = connect_storm(connects)?;
        let sensor = Sensor::start(binary, &evidence, config)?;
        let (cpu_start, _) = sensor.usage();
        let exec_on = exec_storm(execs)?;
        let connect_on = connect_storm(connects)?;
        let (cpu_end, hwm) = sensor.usage();
        sensor.stop()?;
        eprintln!(
            "round {}: exec {:.3}s off, {:.3}s on; connect {:.3}s off, {:.3}s on; sensor cpu {:.3}s; peak rss {} KiB",
            round + 1,
            exec_off.as_secs_f64(),
            exec_on.as_secs_f64(),
            connect_off.as_secs_f64(),
            connect_on.as_secs_f64(),
            cpu_end - cpu_start,
            hwm
        );
        exec_ratios.push(exec_on.as_secs_f64() / exec_off.as_secs_f64());
        connect_ratios.push(connect_on.as_secs_f64() / connect_off.as_secs_f64());
        sensor_cpu_seconds += cpu_end - cpu_start;
        peak_rss_kib = peak_rss_kib.max(hwm);
    }

    let exec_ratio = median(&mut exec_ratios);
    let connect_ratio = median(&mut connect_ratios);
    println!("workload        rounds  per round        ratio (median, on/off)  target");
    println!("exec storm      {rounds:>6}  {execs:>6} execs     {exec_ratio:>8.3}                 <= 1.05 now, 1.01 goal");
    println!("connect storm   {rounds:>6}  {connects:>6} connects  {connect_ratio:>8.3}                 <= 1.02");
    let events = rounds * (3 * execs + connects);
    println!(
        "sensor cpu: {sensor_cpu_seconds:.3}s over {rounds} rounds (about {:.1} us per kernel event); peak resident memory: {peak_rss_kib} KiB",
        sensor_cpu_seconds * 1e6 / events.max(1) as f64
    );
    let results = serde_json::json!({
        "exec_storm": { "rounds": rounds, "execs": execs, "ratio_median": exec_ratio, "ratios": exec_ratios },
        "connect_storm": { "rounds": rounds, "connects": connects, "ratio_median": connect_ratio, "ratios": connect_ratios },
        "sensor_cpu_seconds": sensor_cpu_seconds,
        "sensor_peak_rss_kib": peak_rss_kib,
    });
    let out = crate::workspace_root().join("target/bench-results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
