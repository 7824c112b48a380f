//! Running real programs with a deadline: every child gets its own process group, so a
//! timeout or a drop kills it and whatever it started, and is then reaped.

use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// What a finished (or killed) program printed.
#[derive(Debug)]
pub struct CommandOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// True when the deadline passed and the program was killed.
    pub timed_out: bool,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// stdout and stderr together, for searching a message wherever the program put it.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the program succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// Panics with the whole output unless the program failed.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success() && !self.timed_out,
            "command should have failed: {self}"
        );
        self
    }
}

impl fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = if self.timed_out {
            "killed after its deadline".to_string()
        } else {
            self.status.to_string()
        };
        write!(
            f,
            "`{}`: {ending}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// The PATH that daemons and tools the harness starts get: the system's own directories.
pub const DAEMON_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A file's text, decoded lossily; empty when it can't be read (a log not written yet).
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Starts a long-running `command` in its own process group with stdin empty and stdout and
/// stderr appended to `log` (kept across restarts); `label` names it in messages.
pub fn spawn_logged(command: &mut Command, log: &Path, label: &str) -> ChildGuard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
    ChildGuard::new(child, label)
}

/// Runs `command` to completion or until `timeout`, output captured through files in `scratch`
/// (so a chatty program can never block on a full pipe). Stdin is empty.
pub fn run_bounded(command: &mut Command, scratch: &Path, timeout: Duration) -> CommandOutput {
    let label = describe(command);
    let out_path = scratch.join(format!("out-{}", unique()));
    let err_path = scratch.join(format!("err-{}", unique()));
    let stdout = std::fs::File::create(&out_path).expect("create stdout file");
    let stderr = std::fs::File::create(&err_path).expect("create stderr file");
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
    let mut guard = ChildGuard::new(child, &label);
    let (status, timed_out) = guard.wait_until(Instant::now() + timeout);
    let read = |path: &Path| {
        let text = read_lossy(path);
        let _ = std::fs::remove_file(path);
        text
    };
    CommandOutput {
        command: label,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        timed_out,
    }
}

/// A running child in its own process group; dropping it kills the group and reaps the child.
pub struct ChildGuard {
    child: Option<Child>,
    label: String,
}

impl ChildGuard {
    /// Wraps a child spawned with `process_group(0)`.
    pub fn new(child: Child, label: &str) -> ChildGuard {
        ChildGuard {
            child: Some(child),
            label: label.to_string(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` once the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.label))
    }

    /// Waits until the child exits or `deadline`; past it the group is killed. Returns the exit
    /// status and whether the deadline passed.
    pub fn wait_until(&mut self, deadline: Instant) -> (ExitStatus, bool) {
        loop {
            if let Some(status) = self.try_wait() {
                return (status, false);
            }
            if Instant::now() >= deadline {
                return (self.kill(), true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the whole process group and reaps the child.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("child already reaped");
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.label))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Whether it already exited or not, the group may hold stragglers.
            self.kill();
        }
    }
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// A process-unique number for file names.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
