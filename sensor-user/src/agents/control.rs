//! The control socket behind `agent-sensor agents`: the daemon writes a
//! JSON snapshot of its agents to each client and closes the connection.
//!
//! The socket is created 0600 (0660 with `agents.control_group`), because
//! the snapshot names processes, endpoints and sessions of every user.

use std::{
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use tokio::{io::AsyncWriteExt, net::UnixListener};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {path}; is agent-sensor running, and are you root or in its control group?")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading from {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket, replacing a stale one left by a crash.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlError> {
    let error = |source| ControlError::Bind { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let listener = UnixListener::bind(path).map_err(error)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(error)?;
    }
    Ok(listener)
}

/// Sends one snapshot to an accepted client without blocking the loop.
pub fn reply(mut stream: tokio::net::UnixStream, snapshot: Vec<u8>) {
    tokio::spawn(async move {
        if let Err(error) = stream.write_all(&snapshot).await {
            log::debug!("control client went away: {error}");
        }
    });
}

/// Reads a snapshot from a running daemon, for `agent-sensor agents`.
pub fn fetch(path: &Path) -> Result<serde_json::Value, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| ControlError::Connect { path: path.to_owned(), source })?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|source| ControlError::Read { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|e| ControlError::Read { path: path.to_owned(), source: e.into() })
}

/// Formats a snapshot as a table for people.
pub fn format_table(snapshot: &serde_json::Value) -> String {
    let mut out = String::from("PID      REGISTERED  SESSION          SPAWNS  LLM  DETECTED BY                 ENDPOINTS\n");
    let agents = snapshot["agents"].as_array().cloned().unwrap_or_default();
    for agent in &agents {
        let detected: Vec<String> = agent["detected_by"]
            .as_array()
            .map(|d| d.iter().map(|x| format!("{}={}", x["signal"].as_str().unwrap_or("?"), x["value"].as_str().unwrap_or("?"))).collect())
            .unwrap_or_default();
        let endpoints: Vec<&str> =
            agent["endpoints"].as_array().map(|e| e.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
        let registered = match agent["name"].as_str() {
            Some(name) => name.to_owned(),
            None if agent["registered"] == true => "yes".to_owned(),
            None => "NO".to_owned(),
        };
        out.push_str(&format!(
            "{:<8} {:<11} {:<16} {:>6} {:>4}  {:<27} {}\n",
            agent["pid"],
            registered,
            agent["session"]["id"].as_str().unwrap_or("?"),
            agent["session"]["tool_spawns"],
            agent["session"]["llm_requests"],
            detected.join(","),
            endpoints.join(",")
        ));
    }
    if agents.is_empty() {
        out.push_str("(no agents seen)\n");
    }
    out
}
