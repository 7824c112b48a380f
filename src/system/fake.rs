//! Recording stand-ins for the [`super`] seams, for tests that must not start processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    Clock, FileStamp, Files, ProcessError, ProcessOutput, ProcessRunner, ProcessSpec, System,
};

/// A clock that moves only when told to.
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            now: Mutex::new(Instant::now()),
        }
    }

    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap()
    }
}

type Script = dyn Fn(&ProcessSpec) -> Result<ProcessOutput, ProcessError> + Send + Sync;

/// Answers process runs from a script and records every run it was asked for.
pub struct ScriptedProcesses {
    script: Box<Script>,
    delay: Duration,
    runs: Mutex<Vec<ProcessSpec>>,
}

impl ScriptedProcesses {
    pub fn new(
        script: impl Fn(&ProcessSpec) -> Result<ProcessOutput, ProcessError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            script: Box::new(script),
            delay: Duration::ZERO,
            runs: Mutex::new(Vec::new()),
        }
    }

    /// Each run takes this long (on tokio's clock), so concurrent callers overlap.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn runs(&self) -> Vec<ProcessSpec> {
        self.runs.lock().unwrap().clone()
    }

    /// A successful run that printed `stdout`.
    pub fn ok(stdout: &str) -> Result<ProcessOutput, ProcessError> {
        Ok(ProcessOutput {
            code: Some(0),
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }

    /// A run that exited with `code` after printing `stdout`.
    pub fn exit(code: i32, stdout: &str) -> Result<ProcessOutput, ProcessError> {
        Ok(ProcessOutput {
            code: Some(code),
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }
}

#[async_trait]
impl ProcessRunner for ScriptedProcesses {
    async fn run(&self, spec: ProcessSpec) -> Result<ProcessOutput, ProcessError> {
        self.runs.lock().unwrap().push(spec.clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        (self.script)(&spec)
    }
}

/// Files held in memory, owned by root unless [`MemoryFiles::chown`] says otherwise; `write`
/// changes the stamp as a real rewrite would.
#[derive(Default)]
pub struct MemoryFiles {
    files: Mutex<HashMap<PathBuf, (Vec<u8>, FileStamp)>>,
    reads: Mutex<Vec<PathBuf>>,
}

impl MemoryFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&self, path: impl Into<PathBuf>, contents: &str, mode: u32) {
        let mut files = self.files.lock().unwrap();
        // Every write is a new file, as an atomic rewrite (rename) would make it.
        let inode = files.values().map(|f| f.1.inode).max().unwrap_or(1000) + 1;
        let stamp = FileStamp {
            modified: SystemTime::now(),
            len: contents.len() as u64,
            inode,
            mode,
            uid: 0,
        };
        files.insert(path.into(), (contents.as_bytes().to_vec(), stamp));
    }

    /// Gives an existing file another owner, as `chown` would.
    pub fn chown(&self, path: impl AsRef<Path>, uid: u32) {
        if let Some((_, stamp)) = self.files.lock().unwrap().get_mut(path.as_ref()) {
            stamp.uid = uid;
        }
    }

    pub fn reads(&self) -> Vec<PathBuf> {
        self.reads.lock().unwrap().clone()
    }
}

impl Files for MemoryFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.reads.lock().unwrap().push(path.to_path_buf());
        let files = self.files.lock().unwrap();
        files
            .get(path)
            .map(|(data, _)| data.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn stamp(&self, path: &Path) -> io::Result<FileStamp> {
        let files = self.files.lock().unwrap();
        files
            .get(path)
            .map(|(_, stamp)| *stamp)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl System {
    /// A system made only of fakes: nothing here touches the OS.
    pub fn fake(
        clock: Arc<ManualClock>,
        processes: Arc<ScriptedProcesses>,
        files: Arc<MemoryFiles>,
    ) -> Self {
        Self {
            clock,
            processes,
            files,
            helper_env: vec![(OsString::from("PATH"), OsString::from("/usr/bin"))],
            helper_path: Vec::new(),
        }
    }
}
