//! Workload identity on records of real containers and host services.
//!
//! Containers run with runc from a busybox rootfs. Each test lays out the
//! bundle under a runtime root it owns, with the annotations the CRI
//! runtime would write, and puts the container's cgroup where the kubelet
//! would. The sensor is pointed at those roots. The containers share the
//! host's network namespace and connect only to the test's loopback
//! listener.

use std::{net::TcpListener, path::PathBuf, time::Duration};

use integration_tests::{
    argv,
    container::{
        containerd_annotations, crio_annotations, random_container_id, random_pod_uid, CgroupDir, Container,
        ContainerLayout,
    },
    require_containers, require_sensor, unique_marker, Sensor, TempDir,
};
use serde_json::Value;

const TEST_UID: u32 = 4711;
const TEST_USER: &str = "agent-sensor-it";

/// The scratch roots one test owns and the sensor settings that point at them.
struct Roots {
    scratch: TempDir,
}

impl Roots {
    fn new(tag: &str) -> Roots {
        let scratch = TempDir::new(tag);
        std::fs::write(
            scratch.path().join("passwd"),
            format!("root:x:0:0:root:/root:/bin/sh\n{TEST_USER}:x:{TEST_UID}:{TEST_UID}::/nonexistent:/bin/false\n"),
        )
        .expect("write the fixture passwd file");
        Roots { scratch }
    }

    fn containerd_task_root(&self) -> PathBuf {
        self.scratch.path().join("containerd/io.containerd.runtime.v2.task")
    }

    fn storage_root(&self) -> PathBuf {
        self.scratch.path().join("containers-storage")
    }

    /// Returns the sensor's `[identity]` section. The cgroup2 mount is left
    /// to detection from `/proc/self/mountinfo`.
    fn sensor_config(&self) -> String {
        format!(
            "[identity]\ncontainerd_task_roots = [\"{}\"]\ncontainers_storage_roots = [\"{}\"]\ndocker_roots = []\ncontainer_logs_root = \"\"\npod_logs_root = \"\"\npasswd_path = \"{}\"\n",
            self.containerd_task_root().display(),
            self.storage_root().display(),
            self.scratch.path().join("passwd").display(),
        )
    }

    /// Returns a containerd bundle layout in the `k8s.io` namespace.
    fn containerd_layout(&self, id: &str, cgroups_path: String) -> ContainerLayout {
        let bundle = self.containerd_task_root().join("k8s.io").join(id);
        ContainerLayout { rootfs: bundle.join("rootfs"), bundle, cgroups_path }
    }

    /// Returns a CRI-O bundle layout: config.json goes in `userdata`, and
    /// the rootfs is the overlay's merged directory elsewhere in the storage root.
    fn crio_layout(&self, id: &str, cgroups_path: String) -> ContainerLayout {
        let storage = self.storage_root();
        ContainerLayout {
            bundle: storage.join("overlay-containers").join(id).join("userdata"),
            rootfs: storage.join("overlay").join(id).join("merged"),
            cgroups_path,
        }
    }
}

/// Returns the kubelet's systemd-driver cgroup for a container of a pod.
fn systemd_pod_cgroup(qos: &str, pod_uid: &str, scope: &str) -> String {
    let uid = pod_uid.replace('-', "_");
    format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice/{scope}")
}

/// Starts a loopback listener that accepts and closes connections in the
/// background, and returns its port.
fn listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let port = listener.local_addr().expect("listener address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            drop(stream);
        }
    });
    port
}

fn exec_with_argv(sensor: &Sensor, description: &str, expected: &[&str]) -> Value {
    sensor.expect(description, |r| r["kind"] == "process.exec" && argv(r) == expected)
}

fn connect_to(sensor: &Sensor, description: &str, port: u16) -> Value {
    sensor.expect(description, |r| {
        r["kind"] == "net.connect"
            && r["network"]["destination"]["port"] == port
            && r["network"]["destination"]["address"] == "127.0.0.1"
    })
}

/// The workload a Kubernetes container's records must carry.
struct Expected<'a> {
    runtime: &'a str,
    id: &'a str,
    pod_uid: &'a str,
    pod: &'a str,
    namespace: &'a str,
    container: &'a str,
    image: &'a str,
}

/// Checks the pod fields every Kubernetes container record must carry.
fn assert_pod_workload(record: &Value, expected: &Expected<'_>) {
    let workload = &record["workload"];
    assert_eq!(workload["kind"], "container", "{record}");
    assert_eq!(workload["runtime"], expected.runtime, "{record}");
    assert_eq!(workload["container_id"], expected.id, "{record}");
    assert_eq!(workload["pod"], expected.pod, "{record}");
    assert_eq!(workload["namespace"], expected.namespace, "{record}");
    assert_eq!(workload["pod_uid"], expected.pod_uid, "{record}");
    assert_eq!(workload["container"], expected.container, "{record}");
    assert_eq!(workload["image"], expected.image, "{record}");
    // Without the Kubernetes API the service account is explicitly unknown.
    assert_eq!(workload["service_account"], Value::Null, "{record}");
    assert_eq!(workload["unknown"]["service_account"], "kube_api_disabled", "{record}");
}

/// Runs a container that execs a marked `/bin/true` and connects to a
/// loopback listener, and checks the workload on both records.
fn check_pod_container(roots: &Roots, layout: ContainerLayout, annotations: Value, expected: &Expected<'_>) {
    let id = expected.id;
    let sensor = Sensor::start(&roots.sensor_config());
    let port = listener();
    let marker = unique_marker("ctr");
    let script = format!("/bin/true {marker}; nc -w 2 127.0.0.1 {port} </dev/null; sleep 0.2");
    let scratch = TempDir::new("runc");
    let mut running = Container::run(scratch, id, &layout, annotations, &["/bin/sh", "-c", &script]);
    running.wait(Duration::from_secs(20));

    let exec = exec_with_argv(&sensor, "the container's marked exec", &["/bin/true", &marker]);
    assert_pod_workload(&exec, expected);
    let process = &exec["process"];
    assert_ne!(process["ns_pid"], process["pid"], "the container has its own pid namespace: {exec}");

    let connect = connect_to(&sensor, "the container's connect", port);
    assert_pod_workload(&connect, expected);
}

#[test]
fn identity_containerd_systemd_pod() {
    require_sensor!();
    require_containers!();
    let roots = Roots::new("id-containerd");
    let id = random_container_id();
    let pod_uid = random_pod_uid();
    let cgroup = systemd_pod_cgroup("besteffort", &pod_uid, &format!("cri-containerd-{id}.scope"));
    let layout = roots.containerd_layout(&id, cgroup);
    let annotations = containerd_annotations("web-7d4b9c-x2k8p", "shop", &pod_uid, "agent", "registry.example/agent:1.2");
    let expected = Expected {
        runtime: "containerd",
        id: &id,
        pod_uid: &pod_uid,
        pod: "web-7d4b9c-x2k8p",
        namespace: "shop",
        container: "agent",
        image: "registry.example/agent:1.2",
    };
    check_pod_container(&roots, layout, annotations, &expected);
}

#[test]
fn identity_containerd_cgroupfs_pod() {
    require_sensor!();
    require_containers!();
    let roots = Roots::new("id-cgroupfs");
    let id = random_container_id();
    let pod_uid = random_pod_uid();
    let layout = roots.containerd_layout(&id, format!("/kubepods/besteffort/pod{pod_uid}/{id}"));
    let annotations = containerd_annotations("batch-28401-abcde", "jobs", &pod_uid, "worker", "registry.example/worker:3");
    let expected = Expected {
        runtime: "containerd",
        id: &id,
        pod_uid: &pod_uid,
        pod: "batch-28401-abcde",
        namespace: "jobs",
        container: "worker",
        image: "registry.example/worker:3",
    };
    check_pod_container(&roots, layout, annotations, &expected);
}

#[test]
fn identity_crio_systemd_pod() {
    require_sensor!();
    require_containers!();
    let roots = Roots::new("id-crio");
    let id = random_container_id();
    let pod_uid = random_pod_uid();
    let cgroup = systemd_pod_cgroup("burstable", &pod_uid, &format!("crio-{id}.scope"));
    let layout = roots.crio_layout(&id, cgroup);
    let annotations = crio_annotations("db-0", "data", &pod_uid, "postgres", "docker.io/library/postgres:16");
    let expected = Expected {
        runtime: "cri-o",
        id: &id,
        pod_uid: &pod_uid,
        pod: "db-0",
        namespace: "data",
        container: "postgres",
        image: "docker.io/library/postgres:16",
    };
    check_pod_container(&roots, layout, annotations, &expected);
}

#[test]
fn identity_short_lived_processes() {
    require_sensor!();
    require_containers!();
    let roots = Roots::new("id-short");
    let sensor = Sensor::start(&roots.sensor_config());
    let id = random_container_id();
    let pod_uid = random_pod_uid();
    let cgroup = systemd_pod_cgroup("besteffort", &pod_uid, &format!("cri-containerd-{id}.scope"));
    let layout = roots.containerd_layout(&id, cgroup);
    let annotations = containerd_annotations("burst-0", "shop", &pod_uid, "burst", "registry.example/burst:1");
    // Each `true` exits within a millisecond of its exec, long before the
    // sensor reads the event, so only the kernel's cgroup id names it. The
    // container itself lives on a little, so this checks the lookup by id;
    // `identity_container_gone_before_read` covers a container that is gone.
    let marker = unique_marker("short");
    let mut script: String = (0..20).map(|n| format!("/bin/true {marker}-{n}; ")).collect();
    script.push_str("sleep 0.5");
    let mut running = Container::run(TempDir::new("runc"), &id, &layout, annotations, &["/bin/sh", "-c", &script]);
    running.wait(Duration::from_secs(20));

    for n in 0..20 {
        let tag = format!("{marker}-{n}");
        let exec = exec_with_argv(&sensor, "a short-lived exec", &["/bin/true", &tag]);
        assert_eq!(exec["workload"]["container_id"], id, "{exec}");
        assert_eq!(exec["workload"]["pod"], "burst-0", "{exec}");
        assert_eq!(exec["workload"]["container"], "burst", "{exec}");
    }
    // The exit records arrive after the processes are gone.
    let exits: Vec<Value> = sensor
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "process.exit" && r["workload"]["container_id"] == id.as_str())
        .collect();
    assert!(!exits.is_empty(), "exit records carry the container id too");
}

#[test]
fn identity_host_unit_and_user() {
    require_sensor!();
    require_containers!();
    let roots = Roots::new("id-host");
    let sensor = Sensor::start(&roots.sensor_config());
    let n = std::process::id();

    // A transient service, as `systemd-run` creates it.
    let service = CgroupDir::create(&format!("/system.slice/run-u{n}.service"));
    let marker = unique_marker("unit");
    let script = format!(": {marker}");
    let status = service.spawn_as(TEST_UID, TEST_UID, "/bin/sh", &["-c", &script]).wait().expect("wait for sh");
    assert!(status.success());
    let exec = exec_with_argv(&sensor, "the service's exec", &["/bin/sh", "-c", &script]);
    let workload = &exec["workload"];
    assert_eq!(workload["kind"], "host", "{exec}");
    assert_eq!(workload["unit"], format!("run-u{n}.service"), "{exec}");
    assert_eq!(workload["slice"], "system.slice", "{exec}");
    assert_eq!(workload["user"], TEST_USER, "{exec}");
    assert_eq!(exec["process"]["uid"], TEST_UID, "{exec}");
    assert_eq!(workload["identity_complete"], true, "{exec}");

    // A login session scope.
    let session = CgroupDir::create(&format!("/user.slice/user-{TEST_UID}.slice/session-{n}.scope"));
    let marker = unique_marker("session");
    let script = format!(": {marker}");
    let status = session.spawn_as(TEST_UID, TEST_UID, "/bin/sh", &["-c", &script]).wait().expect("wait for sh");
    assert!(status.success());
    let exec = exec_with_argv(&sensor, "the session's exec", &["/bin/sh", "-c", &script]);
    let workload = &exec["workload"];
    assert_eq!(workload["unit"], format!("session-{n}.scope"), "{exec}");
    assert_eq!(workload["session"], n.to_string(), "{exec}");
    assert_eq!(workload["slice"], format!("user-{TEST_UID}.slice"), "{exec}");
    assert_eq!(workload["user"], TEST_USER, "{exec}");
}

#[test]
fn identity_unknown_container_explicit() {
    require_sensor!();
    require_containers!();
    // A container whose runtime left no metadata where the sensor looks.
    let roots = Roots::new("id-nometa");
    let sensor = Sensor::start(&roots.sensor_config());
    let id = random_container_id();
    let elsewhere = TempDir::new("id-elsewhere");
    let bundle = elsewhere.path().join(&id);
    let layout = ContainerLayout {
        rootfs: bundle.join("rootfs"),
        bundle,
        cgroups_path: format!("/system.slice/docker-{id}.scope"),
    };
    let marker = unique_marker("nometa");
    let script = format!("/bin/true {marker}; sleep 0.3");
    let mut running = Container::run(TempDir::new("runc"), &id, &layout, Value::Object(Default::default()), &["/bin/sh", "-c", &script]);
    running.wait(Duration::from_secs(20));
    let exec = exec_with_argv(&sensor, "the container's exec", &["/bin/true", &marker]);
    let workload = &exec["workload"];
    assert_eq!(workload["kind"], "container", "{exec}");
    assert_eq!(workload["runtime"], "docker", "{exec}");
    assert_eq!(workload["container_id"], id, "{exec}");
    assert_eq!(workload["container"], Value::Null, "{exec}");
    assert_eq!(workload["unknown"]["container"], "no_runtime_metadata", "{exec}");
    assert_eq!(workload["identity_complete"], false, "{exec}");
    drop(elsewhere);
}

#[test]
fn identity_container_gone_before_read() {
    require_sensor!();
    require_containers!();
    // A container whose only process exits at once: runc removes its cgroup
    // within milliseconds, usually before the sensor reads the exec, so the
    // sensor must have seen the cgroup being created.
    let roots = Roots::new("id-removed");
    let sensor = Sensor::start(&roots.sensor_config());
    let id = random_container_id();
    let pod_uid = random_pod_uid();
    let cgroup = systemd_pod_cgroup("besteffort", &pod_uid, &format!("cri-containerd-{id}.scope"));
    let layout = roots.containerd_layout(&id, cgroup);
    let annotations = containerd_annotations("once-0", "jobs", &pod_uid, "once", "registry.example/once:1");
    let marker = unique_marker("once");
    let mut running = Container::run(TempDir::new("runc"), &id, &layout, annotations, &["/bin/true", &marker]);
    running.wait(Duration::from_secs(20));

    let exec = exec_with_argv(&sensor, "the container's only exec", &["/bin/true", &marker]);
    let workload = &exec["workload"];
    assert_eq!(workload["kind"], "container", "{exec}");
    assert_eq!(workload["container_id"], id, "{exec}");
    assert_eq!(workload["pod"], "once-0", "{exec}");
    assert_eq!(workload["container"], "once", "{exec}");
}

/// A stand-in for the Kubernetes API server on 127.0.0.1: Python's HTTP
/// server over TLS with a certificate from a CA made for the test. It
/// serves the pod list from `pods.json` and, on a watch, streams an ADDED
/// event for each pod appended to `watch.jsonl`. It checks the bearer
/// token and logs each request's path and query to `requests.log`.
mod kube_api {
    use std::{
        io::Write as _,
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    use integration_tests::TempDir;
    use serde_json::{json, Value};

    const SERVER: &str = r#"
import http.server, json, os, ssl, sys, time, urllib.parse

directory, token = sys.argv[1], sys.argv[2]

def log(line):
    with open(os.path.join(directory, "requests.log"), "a") as f:
        f.write(line + "\n")

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        log(self.path)
        if self.headers.get("Authorization") != "Bearer " + token:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path != "/api/v1/pods":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if query.get("watch", [""])[0] in ("true", "1"):
            self.watch()
            return
        with open(os.path.join(directory, "pods.json")) as f:
            pods = json.load(f)
        body = json.dumps({"apiVersion": "v1", "kind": "PodList",
                           "metadata": {"resourceVersion": "100"}, "items": pods}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def watch(self):
        # HTTP/1.0 without a length: the body is the stream, ended by close.
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        sent = 0
        deadline = time.time() + 60
        while time.time() < deadline:
            path = os.path.join(directory, "watch.jsonl")
            lines = open(path).read().splitlines() if os.path.exists(path) else []
            for line in lines[sent:]:
                pod = json.loads(line)
                event = json.dumps({"type": "ADDED", "object": pod}) + "\n"
                self.wfile.write(event.encode())
                self.wfile.flush()
                log("sent " + pod["metadata"]["uid"])
            sent = len(lines)
            time.sleep(0.05)

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(os.path.join(directory, "server.crt"), os.path.join(directory, "server.key"))
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(os.path.join(directory, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(directory, "port.tmp"), os.path.join(directory, "port"))
server.serve_forever()
"#;

    pub const TOKEN: &str = "agent-sensor-test-token";

    /// A running fake API server; killed on drop.
    pub struct Server {
        child: Option<Child>,
        pub port: u16,
        pub dir: TempDir,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let output = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
        assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Makes a CA and a server certificate for IP 127.0.0.1 signed by it;
    /// rustls rejects a self-signed CA certificate used as the server's.
    fn make_certificates(dir: &Path) {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=agent-sensor test CA", "-days", "1"]);
        openssl(dir, &ca);
        let mut request = vec!["req"];
        request.extend(ec);
        request.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        openssl(dir, &request);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the certificate extensions");
        openssl(
            dir,
            &[
                "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
                "server.crt", "-days", "1", "-extfile", "server.ext",
            ],
        );
    }

    impl Server {
        pub fn start(pods: &[Value]) -> Server {
            let dir = TempDir::new("kube-api");
            make_certificates(dir.path());
            std::fs::write(dir.path().join("token"), TOKEN).expect("write the token file");
            std::fs::write(dir.path().join("pods.json"), serde_json::to_vec(pods).unwrap()).expect("write pods.json");
            std::fs::write(dir.path().join("server.py"), SERVER).expect("write the server script");
            let child = Command::new("python3")
                .arg(dir.path().join("server.py"))
                .arg(dir.path())
                .arg(TOKEN)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the fake API server");
            let mut server = Server { child: Some(child), port: 0, dir };
            let port_file = server.dir.path().join("port");
            let deadline = Instant::now() + Duration::from_secs(20);
            while !port_file.exists() {
                if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                    panic!("the fake API server exited with {status}");
                }
                assert!(Instant::now() < deadline, "the fake API server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            server.port = std::fs::read_to_string(&port_file).unwrap().trim().parse().expect("the server's port");
            server
        }

        pub fn ca_path(&self) -> PathBuf {
            self.dir.path().join("ca.crt")
        }

        pub fn token_path(&self) -> PathBuf {
            self.dir.path().join("token")
        }

        pub fn requests(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("requests.log"))
                .map(|text| text.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        }

        /// Waits until a request log line satisfies `predicate`.
        pub fn wait_for_request(&self, what: &str, predicate: impl Fn(&str) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.requests().iter().any(|line| predicate(line)) {
                assert!(Instant::now() < deadline, "the API server saw no {what}; requests: {:?}", self.requests());
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Streams `pod` to running watches as an ADDED event.
        pub fn add_watched_pod(&self, pod: &Value) {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("watch.jsonl"))
                .expect("open watch.jsonl");
            writeln!(file, "{pod}").expect("append to watch.jsonl");
        }

        /// Kills the server, as an API outage would.
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A Pod object as the API returns it.
    pub fn pod(name: &str, namespace: &str, uid: &str, node: &str, service_account: &str, app: &str, image: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "101",
                         "labels": {"app": app, "team": "identity-tests"}},
            "spec": {"nodeName": node, "serviceAccountName": service_account,
                     "containers": [{"name": "agent", "image": image}]},
            "status": {"phase": "Running"}
        })
    }
}

/// Runs a short container of a pod and returns its marked exec record.
fn run_pod_container(roots: &Roots, sensor: &Sensor, pod: &str, pod_uid: &str) -> (String, Value) {
    let id = random_container_id();
    let cgroup = systemd_pod_cgroup("besteffort", pod_uid, &format!("cri-containerd-{id}.scope"));
    let layout = roots.containerd_layout(&id, cgroup);
    let annotations = containerd_annotations(pod, "shop", pod_uid, "agent", "registry.example/agent:1.2");
    let marker = unique_marker("kube");
    let script = format!("/bin/true {marker}; sleep 0.3");
    let mut running = Container::run(TempDir::new("runc"), &id, &layout, annotations, &["/bin/sh", "-c", &script]);
    running.wait(Duration::from_secs(20));
    let exec = exec_with_argv(sensor, "the pod container's exec", &["/bin/true", &marker]);
    (id, exec)
}

#[test]
fn identity_kube_api_watch_and_outage() {
    require_sensor!();
    require_containers!();
    let node = "identity-test-node";
    let listed_uid = random_pod_uid();
    let listed = kube_api::pod("web-0", "shop", &listed_uid, node, "web-sa", "web", "registry.example/agent:1.2");
    let mut server = kube_api::Server::start(&[listed]);
    let roots = Roots::new("id-kube");
    let config = format!(
        "{}kube_api = true\nkube_api_url = \"https://127.0.0.1:{}\"\nkube_token_path = \"{}\"\nkube_ca_path = \"{}\"\nkube_node_name = \"{node}\"\n",
        roots.sensor_config(),
        server.port,
        server.token_path().display(),
        server.ca_path().display(),
    );
    let sensor = match Sensor::try_start(&config) {
        Ok(sensor) => sensor,
        Err(error) if error.contains("no Kubernetes API support") => {
            eprintln!("skipped: agent-sensor was built without the kube-api feature");
            return;
        }
        Err(error) => panic!("{error}"),
    };

    // The list, then the watch, both for this node's pods only.
    server.wait_for_request("watch of this node's pods", |line| line.contains("watch=") && line.contains("spec.nodeName%3Didentity-test-node"));
    assert!(
        server.requests().iter().filter(|l| !l.starts_with("sent ")).all(|l| l.contains("fieldSelector=spec.nodeName%3Didentity-test-node")),
        "every request selects this node: {:?}",
        server.requests()
    );

    // A pod from the list: service account and labels from the API.
    let (listed_id, exec) = run_pod_container(&roots, &sensor, "web-0", &listed_uid);
    let workload = &exec["workload"];
    assert_eq!(workload["container_id"], listed_id, "{exec}");
    assert_eq!(workload["service_account"], "web-sa", "{exec}");
    assert_eq!(workload["labels"]["app"], "web", "{exec}");
    assert_eq!(workload["identity_complete"], true, "{exec}");
    assert!(workload["sources"].as_array().unwrap().contains(&"kube_api".into()), "{exec}");

    // A pod that arrives through the watch.
    let watched_uid = random_pod_uid();
    server.add_watched_pod(&kube_api::pod("api-1", "shop", &watched_uid, node, "api-sa", "api", "registry.example/agent:1.2"));
    server.wait_for_request("watch event", |line| line == format!("sent {watched_uid}"));
    // The event is on the wire; give the sensor a moment to apply it.
    std::thread::sleep(Duration::from_millis(300));
    let (_, exec) = run_pod_container(&roots, &sensor, "api-1", &watched_uid);
    assert_eq!(exec["workload"]["service_account"], "api-sa", "{exec}");
    assert_eq!(exec["workload"]["labels"]["app"], "api", "{exec}");

    // The API goes away: the sensor keeps recording, local facts stay, and
    // the fields only the API provides are marked unreachable.
    server.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sensor.stderr().contains("Kubernetes API unreachable") {
        assert!(std::time::Instant::now() < deadline, "the sensor did not notice the outage; stderr:\n{}", sensor.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let unlisted_uid = random_pod_uid();
    let (unlisted_id, exec) = run_pod_container(&roots, &sensor, "late-2", &unlisted_uid);
    let workload = &exec["workload"];
    assert_eq!(workload["container_id"], unlisted_id, "{exec}");
    assert_eq!(workload["pod"], "late-2", "{exec}");
    assert_eq!(workload["container"], "agent", "{exec}");
    assert_eq!(workload["service_account"], Value::Null, "{exec}");
    assert_eq!(workload["unknown"]["service_account"], "api_unreachable", "{exec}");
    assert_eq!(workload["unknown"]["labels"], "api_unreachable", "{exec}");
    assert_eq!(workload["identity_complete"], false, "{exec}");

    // A pod listed before the outage keeps the API's facts.
    let (_, exec) = run_pod_container(&roots, &sensor, "web-0", &listed_uid);
    assert_eq!(exec["workload"]["service_account"], "web-sa", "{exec}");
    let records = sensor.stop();
    assert!(records.iter().any(|r| r["kind"] == "sensor.stop"), "the sensor stopped cleanly after the outage");
}
