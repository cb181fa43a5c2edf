//! Child processes: how they are started (no passwords inherited, English messages), how a
//! tool's output reaches our log, and reaping as PID 1.
//!
//! As PID 1 (or a child subreaper on a host) the manager inherits every orphan in the container,
//! for example `pg_basebackup`'s WAL streamer or backends of a crashed postmaster, and must reap
//! them or they stay zombies. Its own children are reaped by tokio, which waits on their exact
//! pid; a blanket `waitpid(-1)` would steal their exit status. So the reaper only reaps zombies
//! whose parent is this process and whose pid is not one we spawned, and spawning and reaping
//! take the same lock, so a child that exits at once cannot be mistaken for an orphan.

use std::{
    collections::{HashSet, VecDeque},
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use nix::{
    sys::wait::{WaitPidFlag, waitpid},
    unistd::Pid,
};
use scaled_contract::instance::{
    ENV_APP_PASSWORD, ENV_REPLICATION_PASSWORD, ENV_SUPERUSER_PASSWORD,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Lines of a tool's output kept for its error message.
const KEPT_LINES: usize = 8;

fn spawned() -> &'static Mutex<HashSet<i32>> {
    static SPAWNED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    SPAWNED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A command for a Postgres tool or the server: the Secret's variables removed (children get
/// only the password they need, explicitly), messages in English (we parse some), the locale
/// neutral.
pub fn command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for variable in [
        ENV_SUPERUSER_PASSWORD,
        ENV_REPLICATION_PASSWORD,
        ENV_APP_PASSWORD,
        "PGPASSWORD",
        "PGPASSFILE",
    ] {
        command.env_remove(variable);
    }
    command
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE")
        .stdin(Stdio::null());
    command
}

/// A child we spawned; its pid is never reaped by the orphan reaper while this exists.
#[derive(Debug)]
pub struct Tracked {
    child: Child,
    pid: i32,
}

impl Tracked {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The child itself.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // After this the reaper may collect it if tokio's orphan queue has not.
        spawned()
            .lock()
            .expect("the spawn registry is never poisoned")
            .remove(&self.pid);
    }
}

/// Spawns `command`, registering its pid before the reaper can see it.
pub fn spawn(command: &mut Command) -> std::io::Result<Tracked> {
    let mut registry = spawned()
        .lock()
        .expect("the spawn registry is never poisoned");
    let child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .expect("a just-spawned child has a pid");
    registry.insert(pid);
    Ok(Tracked { child, pid })
}

/// Runs `command` to completion and collects its output, like `Command::output`, but spawned
/// through [`spawn`] so the orphan reaper cannot take its exit status.
pub async fn output(command: &mut Command) -> std::io::Result<std::process::Output> {
    use tokio::io::AsyncReadExt;
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut tracked = spawn(command)?;
    let mut stdout = tracked.child().stdout.take();
    let mut stderr = tracked.child().stderr.take();
    let read_stdout = async {
        let mut buffer = Vec::new();
        if let Some(stream) = stdout.as_mut() {
            stream.read_to_end(&mut buffer).await?;
        }
        Ok::<_, std::io::Error>(buffer)
    };
    let read_stderr = async {
        let mut buffer = Vec::new();
        if let Some(stream) = stderr.as_mut() {
            stream.read_to_end(&mut buffer).await?;
        }
        Ok::<_, std::io::Error>(buffer)
    };
    let (stdout, stderr) = tokio::try_join!(read_stdout, read_stderr)?;
    let status = tracked.wait().await?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// The result of running a tool to completion.
#[derive(Debug)]
pub struct ToolRun {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its last lines of output (stdout and stderr), for error messages.
    pub tail: String,
}

/// Runs a tool to completion, logging each line it prints under `tool`, killing it if this
/// future is dropped (a SIGTERM during a clone).
pub async fn run_tool(tool: &'static str, command: &mut Command) -> std::io::Result<ToolRun> {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut tracked = spawn(command)?;
    let stdout = tracked.child().stdout.take();
    let stderr = tracked.child().stderr.take();
    let tail = std::sync::Arc::new(Mutex::new(VecDeque::new()));
    let mut readers = Vec::new();
    if let Some(stdout) = stdout {
        readers.push(tokio::spawn(log_lines(tool, stdout, tail.clone())));
    }
    if let Some(stderr) = stderr {
        readers.push(tokio::spawn(log_lines(tool, stderr, tail.clone())));
    }
    let status = tracked.wait().await?;
    for reader in readers {
        let _ = reader.await;
    }
    let tail = tail
        .lock()
        .expect("the tail lock is never poisoned")
        .iter()
        .cloned()
        .collect::<Vec<String>>()
        .join("; ");
    Ok(ToolRun { status, tail })
}

async fn log_lines(
    tool: &'static str,
    stream: impl tokio::io::AsyncRead + Unpin,
    tail: std::sync::Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!(tool, "{line}");
        let mut kept = tail.lock().expect("the tail lock is never poisoned");
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// Makes this process the reaper of its descendants' orphans when it is not PID 1 (on a host),
/// so tests exercise the same reaping as a container.
pub fn become_subreaper() {
    if std::process::id() != 1
        && let Err(error) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!(%error, "failed to become a child subreaper; orphans go to init");
    }
}

/// Reaps orphaned zombies whenever a child exits, and every few seconds as a backstop.
pub async fn reap_orphans_forever() {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "failed to listen for SIGCHLD; reaping on a timer only");
            None
        }
    };
    loop {
        match sigchld.as_mut() {
            Some(signal) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), signal.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_secs(5)).await,
        }
        let reaped = tokio::task::spawn_blocking(reap_orphans).await.unwrap_or(0);
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned processes");
        }
    }
}

/// Reaps zombie children of this process that it did not spawn; returns how many.
pub fn reap_orphans() -> usize {
    let registry = spawned()
        .lock()
        .expect("the spawn registry is never poisoned");
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if registry.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, parent)) = parse_stat(&stat)
            && state == 'Z'
            && parent == own
            && waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    reaped
}

/// State and parent pid from `/proc/<pid>/stat` (`pid (comm) S ppid ...`; comm may hold spaces
/// and parentheses, so parse after the last `)`).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_give_state_and_parent_even_with_odd_names() {
        assert_eq!(
            parse_stat("123 (postgres: walwriter ) S 1 123 123 0 -1"),
            Some(('S', 1))
        );
        assert_eq!(parse_stat("7 (a) b) Z 42 7 7"), Some(('Z', 42)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[tokio::test]
    async fn a_tools_output_is_kept_for_its_error_message() {
        let run = run_tool(
            "sh",
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
        )
        .await
        .expect("sh runs");
        assert_eq!(run.status.code(), Some(3));
        assert!(
            run.tail.contains("one") && run.tail.contains("two"),
            "{}",
            run.tail
        );
    }
}
