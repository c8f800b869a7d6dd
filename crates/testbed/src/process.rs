//! Child processes of a testbed, all in one process group, with a janitor that kills the
//! group and removes the work directory when the owning process goes away — also when it dies
//! without running destructors (a panic in a shared fixture, `kill -9`, the end of a test
//! binary whose testbed lives in a `static`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{TestbedError, io_err};

/// Shell program run as the janitor. Reads the process group id on its first line, waits for
/// end of input (its parent is gone or dropped the pipe), then kills the group, keeps the logs
/// when asked to, and removes the work directory.
const JANITOR: &str = r#"
trap '' INT TERM HUP
dir="$1"; keep="$2"
read -r pg || pg=""
while read -r _line; do :; done
if [ -n "$pg" ]; then
  kill -TERM "-$pg" 2>/dev/null
  sleep 1
  kill -KILL "-$pg" 2>/dev/null
fi
if [ -e "$dir/.keep-logs" ] && [ -d "$dir/logs" ]; then
  mkdir -p "$keep" && cp -r "$dir/logs/." "$keep/"
fi
rm -rf "$dir"
"#;

/// Owns the testbed's process group and its janitor.
pub struct ProcessGroup {
    work_dir: PathBuf,
    janitor: Mutex<Option<(Child, Option<ChildStdin>)>>,
    pgid: Mutex<Option<i32>>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("work_dir", &self.work_dir)
            .finish()
    }
}

impl ProcessGroup {
    /// Starts the janitor for `work_dir`; logs are copied to `keep_logs_dir` if the testbed is
    /// marked failed.
    pub fn new(work_dir: &Path, keep_logs_dir: &Path) -> Result<Self, TestbedError> {
        let janitor = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("skyloom-testbed-janitor")
            .arg(work_dir)
            .arg(keep_logs_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_err("starting the testbed janitor (sh)"))?;
        let mut janitor = janitor;
        let stdin = janitor.stdin.take();
        Ok(Self {
            work_dir: work_dir.to_owned(),
            janitor: Mutex::new(Some((janitor, stdin))),
            pgid: Mutex::new(None),
        })
    }

    /// Spawns `cmd` into the group with stdout and stderr appended to `log`.
    pub fn spawn(&self, mut cmd: Command, log: &Path) -> Result<Child, TestbedError> {
        let out = open_log(log)?;
        let err = out
            .try_clone()
            .map_err(io_err("duplicating a log handle"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut pgid = self.pgid.lock().unwrap_or_else(|p| p.into_inner());
        cmd.process_group(pgid.unwrap_or(0));
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(io_err(format!("starting {program}")))?;
        if pgid.is_none() {
            let id = i32::try_from(child.id()).unwrap_or(i32::MAX);
            *pgid = Some(id);
            let mut janitor = self.janitor.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, Some(stdin))) = janitor.as_mut() {
                // If the janitor is gone there is nothing better to do than go on.
                let _ = writeln!(stdin, "{id}");
                let _ = stdin.flush();
            }
        }
        Ok(child)
    }

    /// Marks the testbed as failed: the janitor keeps its logs.
    pub fn mark_failed(&self) {
        let _ = File::create(self.work_dir.join(".keep-logs"));
    }

    /// Lets the janitor finish (its input ends) and waits for it.
    pub fn finish(&self) {
        let taken = self
            .janitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.finish();
    }
}

fn open_log(path: &Path) -> Result<File, TestbedError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(format!("opening log {}", path.display())))
}

/// One long-running component (etcd, an apiserver, ...), restartable with the same arguments.
pub struct ManagedProcess {
    /// Human name, e.g. `aws-us-east-1/kube-apiserver`.
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for ManagedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProcess")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ManagedProcess {
    /// Starts `program args...` in `group`, logging to `log`.
    pub fn start(
        group: &ProcessGroup,
        name: String,
        program: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> Result<Self, TestbedError> {
        let proc = Self {
            name,
            program: program.to_owned(),
            args,
            log,
            child: Mutex::new(None),
        };
        proc.spawn(group)?;
        Ok(proc)
    }

    fn spawn(&self, group: &ProcessGroup) -> Result<(), TestbedError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        let child = group.spawn(cmd, &self.log)?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Whether the process is running (not exited; a stopped process counts as running).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<(), TestbedError> {
        let pid = self
            .pid()
            .ok_or_else(|| TestbedError::Control(format!("{} is not running", self.name)))?;
        let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        kill(pid, signal).map_err(|e| TestbedError::Io {
            context: format!("sending {signal} to {}", self.name),
            source: e.into(),
        })
    }

    /// Kills the process (SIGKILL; a stopped process is continued first) and reaps it.
    pub fn kill_and_wait(&self) {
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same arguments; kills it first if it still runs.
    pub fn restart(&self, group: &ProcessGroup) -> Result<(), TestbedError> {
        self.kill_and_wait();
        self.spawn(group)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

/// The last `n` lines of a file, or a note that it could not be read.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn janitor_kills_group_and_removes_dir_when_input_ends() {
        let base = tempfile::tempdir().unwrap();
        let work = base.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let group = ProcessGroup::new(&work, &base.path().join("kept")).unwrap();
        let sleeper = ManagedProcess::start(
            &group,
            "sleeper".into(),
            Path::new("sleep"),
            vec!["300".into()],
            work.join("logs/sleeper.log"),
        )
        .unwrap();
        let pid = sleeper.pid().unwrap();
        group.mark_failed();
        group.finish();
        // The janitor has killed the group; reap our child to be sure it is gone.
        sleeper.kill_and_wait();
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || proc_is_zombie(pid));
        assert!(!work.exists(), "work dir removed");
        assert!(
            base.path().join("kept/sleeper.log").exists(),
            "logs kept when marked failed"
        );
    }

    fn proc_is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    }

    #[test]
    fn log_tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&p, 2), "b\nc");
        assert!(log_tail(&dir.path().join("missing"), 2).contains("unreadable"));
    }
}
