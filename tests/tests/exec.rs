//! Exec records against the real kernel.

use integration_tests::{argv, is_kind_for_pid, require_sensor, Sensor};

#[test]
fn python_subprocess_exec_names_parent() {
    require_sensor!();
    let sensor = Sensor::start("");
    let child = std::process::Command::new("python3")
        .args(["-c", "import subprocess, sys; p = subprocess.run(['ls', '/'], stdout=subprocess.DEVNULL); print(p.returncode)"])
        .spawn()
        .expect("start python3");
    let python_pid = child.id();
    let output = child.wait_with_output().expect("wait for python3");
    assert!(output.status.success());

    let ls = sensor.expect("ls exec", |r| {
        r["kind"] == "process.exec" && r["process"]["ppid"] == python_pid && argv(r) == ["ls", "/"]
    });
    // `python3` may be a wrapper script (pyenv) that execs the interpreter
    // in the same process, so the parent is that pid's last exec before ls.
    let python = sensor
        .records()
        .into_iter()
        .filter(|r| is_kind_for_pid(r, "process.exec", python_pid) && r["seq"].as_u64() < ls["seq"].as_u64())
        .last()
        .expect("python3's exec record");
    assert!(argv(&python).contains(&"-c".to_owned()), "{python}");
    let process = &ls["process"];
    assert_eq!(process["exe"], "/usr/bin/ls");
    assert_eq!(process["exe_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(process["parent_exec_id"], python["process"]["exec_id"]);
    assert_eq!(process["ancestry"][0], python["process"]["exec_id"]);
    assert_eq!(ls["schema"], "agent-sensor/0.1");
}
