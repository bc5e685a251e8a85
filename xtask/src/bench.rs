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

/// The TLS server of the HTTPS loop (`xtask/bench/https_loop.py`), on a
/// loopback port, stopped on drop.
struct HttpsServer {
    child: Child,
    port: u16,
    ca: std::path::PathBuf,
}

impl HttpsServer {
    fn start(dir: &Path) -> Result<HttpsServer> {
        let mut command = Command::new("python3");
        command.arg(https_loop_script()).arg("serve").arg(dir);
        // The server gets a private copy of libssl that the sensor does not
        // hook, because a provider's server is on another host and its TLS
        // calls are not part of the client's cost. The sensor hooks every
        // mapped file named `libssl*`, so the copy has another name and
        // `libssl.so.3` is a symlink to it: /proc/PID/maps shows the target.
        let system_libssl = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]
            .iter()
            .map(|dir| Path::new(dir).join("libssl.so.3"))
            .find(|path| path.exists());
        match system_libssl {
            Some(path) => {
                let private = dir.join("server-lib");
                std::fs::create_dir_all(&private)?;
                let copy = private.join("server-tls.so");
                std::fs::copy(&path, &copy).context("copying libssl for the server")?;
                let link = private.join("libssl.so.3");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink("server-tls.so", &link).context("linking the server's libssl")?;
                command.env("LD_LIBRARY_PATH", &private);
            }
            None => eprintln!("libssl.so.3 not found: the HTTPS loop server's TLS calls are hooked too"),
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the HTTPS loop server (python3)")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading the server's port")?;
        let port = line.trim().parse().with_context(|| format!("the HTTPS loop server printed {line:?}, not a port"))?;
        Ok(HttpsServer { child, port, ca: dir.join("cert.pem") })
    }

    /// Time for `count` requests over one keep-alive connection, as the
    /// client measures it, so Python's start-up is not counted.
    fn loop_requests(&self, count: usize) -> Result<Duration> {
        let output = Command::new("python3")
            .arg(https_loop_script())
            .args(["client", &self.port.to_string()])
            .arg(&self.ca)
            .arg(count.to_string())
            .output()
            .context("running the HTTPS loop client")?;
        if !output.status.success() {
            bail!("the HTTPS loop client failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let seconds: f64 = text.trim().parse().with_context(|| format!("the HTTPS loop client printed {text:?}"))?;
        Ok(Duration::from_secs_f64(seconds))
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https_loop_script() -> std::path::PathBuf {
    crate::workspace_root().join("xtask/bench/https_loop.py")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub fn run(binary: &Path, rounds: usize, execs: usize, connects: usize, requests: usize, config: Option<&Path>) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("agent-sensor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let evidence = dir.join("evidence.jsonl");

    let https = HttpsServer::start(&dir)?;
    // Warm caches (page cache, dynamic loader) before the first timed round.
    exec_storm(execs.min(200))?;
    connect_storm(connects.min(200))?;
    https.loop_requests(requests.min(200))?;

    let mut exec_ratios = Vec::new();
    let mut connect_ratios = Vec::new();
    let mut https_ratios = Vec::new();
    let mut https_added_us = Vec::new();
    let mut sensor_cpu_seconds = 0.0;
    let mut peak_rss_kib = 0;
    for round in 0..rounds {
        // Each round runs "off" then "on" back to back; the sensor is
        // started after the "off" half and stopped at the end of the round.
        let exec_off = exec_storm(execs)?;
        let connect_off = connect_storm(connects)?;
        let https_off = https.loop_requests(requests)?;
        let sensor = Sensor::start(binary, &evidence, config)?;
        let (cpu_start, _) = sensor.usage();
        let exec_on = exec_storm(execs)?;
        let connect_on = connect_storm(connects)?;
        let https_on = https.loop_requests(requests)?;
        let (cpu_end, hwm) = sensor.usage();
        sensor.stop()?;
        if std::fs::read_to_string(&evidence).is_ok_and(|text| text.contains("server-tls.so")) {
            bail!("the sensor hooked the HTTPS loop server's libssl, so its TLS calls were counted as the client's cost");
        }
        eprintln!(
            "round {}: exec {:.3}s off, {:.3}s on; connect {:.3}s off, {:.3}s on; https {:.3}s off, {:.3}s on; sensor cpu {:.3}s; peak rss {} KiB",
            round + 1,
            exec_off.as_secs_f64(),
            exec_on.as_secs_f64(),
            connect_off.as_secs_f64(),
            connect_on.as_secs_f64(),
            https_off.as_secs_f64(),
            https_on.as_secs_f64(),
            cpu_end - cpu_start,
            hwm
        );
        exec_ratios.push(exec_on.as_secs_f64() / exec_off.as_secs_f64());
        connect_ratios.push(connect_on.as_secs_f64() / connect_off.as_secs_f64());
        https_ratios.push(https_on.as_secs_f64() / https_off.as_secs_f64());
        https_added_us.push((https_on.as_secs_f64() - https_off.as_secs_f64()) * 1e6 / requests.max(1) as f64);
        sensor_cpu_seconds += cpu_end - cpu_start;
        peak_rss_kib = peak_rss_kib.max(hwm);
    }

    let exec_ratio = median(&mut exec_ratios);
    let connect_ratio = median(&mut connect_ratios);
    let https_ratio = median(&mut https_ratios);
    let https_added = median(&mut https_added_us);
    println!("workload        rounds  per round        ratio (median, on/off)  target");
    println!("exec storm      {rounds:>6}  {execs:>6} execs     {exec_ratio:>8.3}                 <= 1.05 now, 1.01 goal");
    println!("connect storm   {rounds:>6}  {connects:>6} connects  {connect_ratio:>8.3}                 <= 1.02");
    println!("https loop      {rounds:>6}  {requests:>6} requests  {https_ratio:>8.3}                 <= 1.05 (TLS plaintext capture)");
    // The loop's server replies at once, so the ratio is the worst case.
    // The time each request gains is what to weigh against a model's latency.
    println!("https loop: the sensor adds about {https_added:.0} us per request (median of the rounds)");
    // Each HTTPS request is an llm.request and an llm.response, plus the
    // uprobe records of both ends.
    let events = rounds * (3 * execs + connects + 2 * requests);
    println!(
        "sensor cpu: {sensor_cpu_seconds:.3}s over {rounds} rounds (about {:.1} us per kernel event); peak resident memory: {peak_rss_kib} KiB",
        sensor_cpu_seconds * 1e6 / events.max(1) as f64
    );
    let results = serde_json::json!({
        "exec_storm": { "rounds": rounds, "execs": execs, "ratio_median": exec_ratio, "ratios": exec_ratios },
        "connect_storm": { "rounds": rounds, "connects": connects, "ratio_median": connect_ratio, "ratios": connect_ratios },
        "https_loop": { "rounds": rounds, "requests": requests, "ratio_median": https_ratio, "ratios": https_ratios, "added_us_per_request_median": https_added },
        "sensor_cpu_seconds": sensor_cpu_seconds,
        "sensor_peak_rss_kib": peak_rss_kib,
    });
    let out = crate::workspace_root().join("target/bench-results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
