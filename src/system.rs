//! The seams through which sources reach the operating system: the clock, child processes
//! and files. Real implementations live here; [`fake`] has recording stand-ins so the
//! keychain can be tested without processes or a real clock.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod fake;

/// Most a credential helper or provider plugin may print; more is an error, not a crash.
pub const OUTPUT_LIMIT: u64 = 1 << 20;

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// One run of a helper or plugin: program, arguments, the whole environment, stdin, deadline.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment; nothing is inherited.
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ProcessOutput {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ProcessOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program}: not found")]
    NotFound { program: PathBuf },
    #[error("{program}: could not start: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{program}: no answer within {timeout:?}; killed")]
    TimedOut { program: PathBuf, timeout: Duration },
    #[error("{program}: printed more than {OUTPUT_LIMIT} bytes")]
    OutputTooLarge { program: PathBuf },
    #[error("{program}: {source}")]
    Io { program: PathBuf, source: io::Error },
}

#[async_trait]
pub trait ProcessRunner: Send + Sync {
    async fn run(&self, spec: ProcessSpec) -> Result<ProcessOutput, ProcessError>;
}

/// Runs processes for real, each in its own process group so a timeout kills the helper
/// and anything it started (`pass` starts `gpg`, which may hang on a pinentry).
pub struct SystemProcesses;

#[async_trait]
impl ProcessRunner for SystemProcesses {
    async fn run(&self, spec: ProcessSpec) -> Result<ProcessOutput, ProcessError> {
        let program = spec.program.clone();
        let mut child = tokio::process::Command::new(&spec.program)
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => ProcessError::NotFound {
                    program: program.clone(),
                },
                _ => ProcessError::Spawn {
                    program: program.clone(),
                    source,
                },
            })?;
        let pid = child.id();
        let exchange = exchange(&mut child, spec.stdin, &program);
        match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let group = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.kill().await;
                Err(ProcessError::TimedOut {
                    program,
                    timeout: spec.timeout,
                })
            }
        }
    }
}

async fn exchange(
    child: &mut tokio::process::Child,
    stdin: Vec<u8>,
    program: &Path,
) -> Result<ProcessOutput, ProcessError> {
    let io_err = |source| ProcessError::Io {
        program: program.to_path_buf(),
        source,
    };
    let mut input = child.stdin.take().expect("stdin is piped");
    let mut stdout = child
        .stdout
        .take()
        .expect("stdout is piped")
        .take(OUTPUT_LIMIT + 1);
    let mut stderr = child
        .stderr
        .take()
        .expect("stderr is piped")
        .take(OUTPUT_LIMIT + 1);
    let write = async move {
        // A helper that exits without reading its stdin is not an error.
        let _ = input.write_all(&stdin).await;
        drop(input);
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let read_out = stdout.read_to_end(&mut out);
    let read_err = stderr.read_to_end(&mut err);
    let ((), read_out, read_err) = tokio::join!(write, read_out, read_err);
    read_out.map_err(io_err)?;
    read_err.map_err(io_err)?;
    if out.len() as u64 > OUTPUT_LIMIT {
        return Err(ProcessError::OutputTooLarge {
            program: program.to_path_buf(),
        });
    }
    let status = child.wait().await.map_err(io_err)?;
    Ok(ProcessOutput {
        code: status.code(),
        stdout: out,
        stderr: err,
    })
}

/// What identifies one version of a file: a change to any field means "read it again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub modified: SystemTime,
    pub len: u64,
    pub inode: u64,
    /// Permission bits (`0o600`).
    pub mode: u32,
    /// The owner: a file that decides what runs as root must be root's.
    pub uid: u32,
}

pub trait Files: Send + Sync {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn stamp(&self, path: &Path) -> io::Result<FileStamp>;
    /// Opens `path` once, so that what is checked (its stamp, where it is) and what is read
    /// are the same file even if the path is pointed elsewhere meanwhile.
    fn open(&self, path: &Path) -> io::Result<Box<dyn OpenFile + '_>>;
}

/// One opened file: every answer comes from the same open file, not from its path again.
pub trait OpenFile {
    /// The open file's own stamp (`fstat`).
    fn stamp(&self) -> io::Result<FileStamp>;
    /// Where the open file is, every symlink resolved: the directories that could replace it.
    fn location(&self) -> io::Result<PathBuf>;
    /// All its bytes, from the start.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
}

fn stamp_of(meta: &std::fs::Metadata) -> io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    Ok(FileStamp {
        modified: meta.modified()?,
        len: meta.len(),
        inode: meta.ino(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
    })
}

pub struct SystemFiles;

impl Files for SystemFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn stamp(&self, path: &Path) -> io::Result<FileStamp> {
        stamp_of(&std::fs::metadata(path)?)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn OpenFile + '_>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking, so a FIFO put where a config was expected cannot hang the open.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)?;
        Ok(Box::new(SystemOpenFile { file }))
    }
}

struct SystemOpenFile {
    file: std::fs::File,
}

impl OpenFile for SystemOpenFile {
    fn stamp(&self) -> io::Result<FileStamp> {
        stamp_of(&self.file.metadata()?)
    }

    fn location(&self) -> io::Result<PathBuf> {
        use std::os::fd::AsRawFd;
        // The kernel's own name for the descriptor: where this file is, not where the path
        // points now.
        std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek};
        self.file.rewind()?;
        let mut bytes = Vec::new();
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// Everything a source needs from outside the process, passed in rather than read deep
/// inside the library (the environment is captured once, at the binary's edge).
#[derive(Clone)]
pub struct System {
    pub clock: Arc<dyn Clock>,
    pub processes: Arc<dyn ProcessRunner>,
    pub files: Arc<dyn Files>,
    /// The environment helpers and plugins start with, before their own `env`.
    pub helper_env: Vec<(OsString, OsString)>,
    /// Where `docker-credential-NAME` helpers are looked for.
    pub helper_path: Vec<PathBuf>,
}

/// Variables a credential helper may need from credgate's own environment; everything else
/// is withheld so that a helper sees the same world under systemd as in a shell.
pub const HELPER_ENV_PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "GNUPGHOME",
    "PASSWORD_STORE_DIR",
    "DOCKER_CONFIG",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// Set in every helper's environment, so that `docker-credential-credgate`, run by credgate
/// itself because a docker config names it, answers "not found" instead of calling back.
pub const NESTED_HELPER_VAR: &str = "CREDGATE_NESTED";

impl System {
    /// The real system, with the helper environment taken from `vars` (pass
    /// `std::env::vars_os()` at the edge).
    pub fn real(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut helper_env: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| HELPER_ENV_PASSTHROUGH.iter().any(|p| k == p))
            .collect();
        helper_env.push((NESTED_HELPER_VAR.into(), "1".into()));
        let helper_path = helper_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| std::env::split_paths(v).collect())
            .unwrap_or_else(|| {
                [
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
                .iter()
                .map(PathBuf::from)
                .collect()
            });
        Self {
            clock: Arc::new(SystemClock),
            processes: Arc::new(SystemProcesses),
            files: Arc::new(SystemFiles),
            helper_env,
            helper_path,
        }
    }

    /// Finds `name` on the helper path, as a shell would; a name with a `/` is used as is.
    pub fn find_program(&self, name: &str) -> PathBuf {
        if name.contains('/') {
            return PathBuf::from(name);
        }
        self.helper_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }
}
