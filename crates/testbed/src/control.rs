//! Control of a running testbed from another process: the `skyloom-testbed` supervisor
//! serves line-delimited JSON requests on a Unix socket in the testbed's state directory, so
//! a person or a script can cut, slow, pause or kill a member while the testbed runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::error::{TestbedError, io_err};
use crate::member::Role;
use crate::proxy::FaultState;
use crate::testbed::Testbed;

/// A request to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Describe the testbed.
    Status,
    /// Partition a member from outside callers.
    Cut {
        /// Member name.
        member: String,
    },
    /// End a partition.
    Restore {
        /// Member name.
        member: String,
    },
    /// Add latency per chunk through the member's proxy (0 removes it).
    Latency {
        /// Member name.
        member: String,
        /// Milliseconds.
        ms: u64,
    },
    /// SIGSTOP the member's apiserver.
    Pause {
        /// Member name.
        member: String,
    },
    /// SIGCONT the member's apiserver.
    Resume {
        /// Member name.
        member: String,
    },
    /// SIGKILL the member's apiserver.
    Kill {
        /// Member name.
        member: String,
    },
    /// Start a killed apiserver again.
    Restart {
        /// Member name.
        member: String,
    },
    /// Stop the testbed and the supervisor.
    Down,
}

/// The supervisor's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The testbed's description (for `status`, and after every fault call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
}

/// A description of a running testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The testbed's name.
    pub name: String,
    /// Its work directory.
    pub work_dir: PathBuf,
    /// Every cluster, hub first.
    pub members: Vec<MemberReport>,
}

/// One cluster in a [`StatusReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// Name.
    pub name: String,
    /// Hub or member.
    pub role: Role,
    /// Admin kubeconfig (through the fault proxy).
    pub kubeconfig: PathBuf,
    /// URL in that kubeconfig.
    pub server: String,
    /// The apiserver's own address.
    pub apiserver: String,
    /// Proxy faults in force.
    pub fault: FaultState,
    /// Whether the apiserver is paused.
    pub paused: bool,
    /// Whether the apiserver process runs.
    pub apiserver_running: bool,
    /// Fake Nodes declared.
    pub nodes: u32,
    /// The member's running processes: (name, pid).
    pub processes: Vec<(String, u32)>,
}

/// Describes `testbed`.
pub fn status_of(testbed: &Testbed) -> StatusReport {
    StatusReport {
        name: testbed.spec().name.clone(),
        work_dir: testbed.work_dir().to_owned(),
        members: testbed
            .all()
            .map(|m| MemberReport {
                name: m.name().to_owned(),
                role: m.role(),
                kubeconfig: m.kubeconfig_path().to_owned(),
                server: m.server_url(),
                apiserver: m.apiserver_addr().to_string(),
                fault: m.fault_state(),
                paused: m.is_paused(),
                apiserver_running: m.apiserver_running(),
                nodes: m.spec().nodes.iter().map(|g| g.count).sum(),
                processes: m.pids(),
            })
            .collect(),
    }
}

/// The state directory of the testbed called `name`:
/// `${XDG_STATE_HOME:-$HOME/.local/state}/skyloom/testbeds/<name>`.
pub fn state_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from(".skyloom-state"));
    base.join("skyloom/testbeds").join(name)
}

/// The control socket of the testbed called `name`.
pub fn socket_path(name: &str) -> PathBuf {
    state_dir(name).join("control.sock")
}

async fn handle(testbed: &Testbed, req: Request, down: &Notify) -> Response {
    let result: Result<(), TestbedError> = async {
        match &req {
            Request::Status => Ok(()),
            Request::Down => {
                down.notify_one();
                Ok(())
            }
            Request::Cut { member } => testbed.member(member).map(|m| m.cut()),
            Request::Restore { member } => testbed.member(member).map(|m| m.restore()),
            Request::Latency { member, ms } => testbed
                .member(member)
                .map(|m| m.set_latency(Duration::from_millis(*ms))),
            Request::Pause { member } => testbed.member(member)?.pause(),
            Request::Resume { member } => testbed.member(member)?.resume(),
            Request::Kill { member } => testbed.member(member).map(|m| m.kill()),
            Request::Restart { member } => testbed.member(member)?.restart().await,
        }
    }
    .await;
    match result {
        Ok(()) => Response {
            ok: true,
            error: None,
            status: Some(status_of(testbed)),
        },
        Err(e) => Response {
            ok: false,
            error: Some(e.to_string()),
            status: None,
        },
    }
}

/// Serves requests on `socket` until a `down` request arrives or `stop` is notified.
pub async fn serve(
    testbed: Arc<Testbed>,
    socket: &Path,
    stop: Arc<Notify>,
) -> Result<(), TestbedError> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    if socket.exists() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(TestbedError::Control(format!(
                "a testbed is already running with control socket {}; use another --name or `skyloom-testbed down`",
                socket.display()
            )));
        }
        let _ = std::fs::remove_file(socket);
    }
    let listener =
        UnixListener::bind(socket).map_err(io_err(format!("binding {}", socket.display())))?;
    let down = Arc::new(Notify::new());
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            _ = down.notified() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let testbed = testbed.clone();
                let down = down.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let response = match serde_json::from_str::<Request>(&line) {
                            Ok(req) => handle(&testbed, req, &down).await,
                            Err(e) => Response { ok: false, error: Some(format!("bad request: {e}")), status: None },
                        };
                        let mut text = serde_json::to_string(&response).unwrap_or_default();
                        text.push('\n');
                        if write.write_all(text.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// Sends `req` to the supervisor listening on `socket`.
pub async fn request(socket: &Path, req: &Request) -> Result<Response, TestbedError> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        TestbedError::Control(format!(
            "no testbed answers on {} ({e}); start one with `skyloom-testbed up`",
            socket.display()
        ))
    })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(req).map_err(|e| TestbedError::Control(e.to_string()))?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(io_err("writing to the control socket"))?;
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .map_err(|_| TestbedError::Control("the supervisor did not answer within 120 s".into()))?
        .map_err(io_err("reading from the control socket"))?
        .ok_or_else(|| TestbedError::Control("the supervisor closed the connection".into()))?;
    serde_json::from_str(&line).map_err(|e| TestbedError::Control(format!("bad answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let r = Request::Latency {
            member: "b".into(),
            ms: 20,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"latency","member":"b","ms":20}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"down"}"#).unwrap(),
            Request::Down
        );
    }
}
