//! Recording stand-ins for the [`super`] seams, for tests that must not start processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    Clock, FileStamp, Files, OpenFile, ProcessError, ProcessOutput, ProcessRunner, ProcessSpec,
    System,
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
/// changes the stamp as a real rewrite would. Every directory above a file exists, root's and
/// mode 0755, unless [`MemoryFiles::dir`] says otherwise; [`MemoryFiles::symlink`] makes links.
#[derive(Default)]
pub struct MemoryFiles {
    files: Mutex<HashMap<PathBuf, (Vec<u8>, FileStamp)>>,
    dirs: Mutex<HashMap<PathBuf, FileStamp>>,
    links: Mutex<HashMap<PathBuf, PathBuf>>,
    reads: Mutex<Vec<PathBuf>>,
    swap: Mutex<Option<Swap>>,
}

/// A rewrite that happens right after the next stamp or open of `path`: an attacker's
/// timing, between a check and a read.
struct Swap {
    path: PathBuf,
    contents: String,
    uid: u32,
}

/// How many links one path may go through, as the kernel's ELOOP limit.
const MAX_LINKS: usize = 40;

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

    /// Makes `path` a directory with this mode and owner.
    pub fn dir(&self, path: impl Into<PathBuf>, mode: u32, uid: u32) {
        let stamp = FileStamp {
            mode,
            uid,
            ..implied_dir()
        };
        self.dirs.lock().unwrap().insert(path.into(), stamp);
    }

    /// Makes (or repoints) `link` a symlink to `target`, which is relative to `link`'s
    /// directory unless absolute.
    pub fn symlink(&self, link: impl Into<PathBuf>, target: impl Into<PathBuf>) {
        self.links
            .lock()
            .unwrap()
            .insert(link.into(), target.into());
    }

    /// Right after `path` is next stamped or opened, rewrites it with `contents`, owned by
    /// `uid`, as someone racing credgate's check would.
    pub fn swap_after_next_check(&self, path: impl Into<PathBuf>, contents: &str, uid: u32) {
        *self.swap.lock().unwrap() = Some(Swap {
            path: path.into(),
            contents: contents.to_string(),
            uid,
        });
    }

    fn swap_if_due(&self, path: &Path) {
        let due = {
            let mut swap = self.swap.lock().unwrap();
            match swap.as_ref() {
                Some(s) if s.path == path => swap.take(),
                _ => None,
            }
        };
        if let Some(swap) = due {
            self.write(&swap.path, &swap.contents, 0o600);
            self.chown(&swap.path, swap.uid);
        }
    }

    pub fn reads(&self) -> Vec<PathBuf> {
        self.reads.lock().unwrap().clone()
    }

    /// `path` with every link followed, as the kernel resolves it.
    fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let links = self.links.lock().unwrap();
        let mut current = normalize(path);
        for _ in 0..MAX_LINKS {
            // Outermost link first, as the kernel walks a path from the root.
            let prefixes: Vec<&Path> = current.ancestors().collect();
            let hop = prefixes.into_iter().rev().find_map(|prefix| {
                let target = links.get(prefix)?;
                let rest = current.strip_prefix(prefix).ok()?;
                let base = prefix.parent().unwrap_or(Path::new("/"));
                Some(normalize(&base.join(target).join(rest)))
            });
            match hop {
                Some(next) => current = next,
                None => return Ok(current),
            }
        }
        Err(io::Error::from_raw_os_error(
            nix::errno::Errno::ELOOP as i32,
        ))
    }

    fn stamp_resolved(&self, path: &Path) -> io::Result<FileStamp> {
        if let Some((_, stamp)) = self.files.lock().unwrap().get(path) {
            return Ok(*stamp);
        }
        if let Some(stamp) = self.dirs.lock().unwrap().get(path) {
            return Ok(*stamp);
        }
        let above = |p: &PathBuf| p.starts_with(path) && p != path;
        let implied = self.files.lock().unwrap().keys().any(above)
            || self.dirs.lock().unwrap().keys().any(above)
            || self.links.lock().unwrap().keys().any(above);
        if implied {
            return Ok(implied_dir());
        }
        Err(io::Error::from(io::ErrorKind::NotFound))
    }
}

/// A directory nobody declared: root's, mode 0755.
fn implied_dir() -> FileStamp {
    FileStamp {
        modified: SystemTime::UNIX_EPOCH,
        len: 0,
        inode: 1,
        mode: 0o755,
        uid: 0,
    }
}

/// `path` without `.` and `..`, as an absolute path.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Files for MemoryFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.reads.lock().unwrap().push(path.to_path_buf());
        let path = self.resolve(path)?;
        let files = self.files.lock().unwrap();
        files
            .get(&path)
            .map(|(data, _)| data.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn stamp(&self, path: &Path) -> io::Result<FileStamp> {
        let stamp = self.stamp_resolved(&self.resolve(path)?);
        self.swap_if_due(path);
        stamp
    }

    /// Takes the file as it is now: later writes, chowns and relinks do not reach it.
    fn open(&self, path: &Path) -> io::Result<Box<dyn OpenFile + '_>> {
        let location = self.resolve(path)?;
        let stamp = self.stamp_resolved(&location)?;
        let data = self
            .files
            .lock()
            .unwrap()
            .get(&location)
            .map(|(data, _)| data.clone());
        self.swap_if_due(path);
        Ok(Box::new(MemoryOpenFile {
            files: self,
            path: path.to_path_buf(),
            location,
            stamp,
            data,
        }))
    }
}

/// One opened [`MemoryFiles`] entry; `data` is `None` for a directory.
struct MemoryOpenFile<'a> {
    files: &'a MemoryFiles,
    path: PathBuf,
    location: PathBuf,
    stamp: FileStamp,
    data: Option<Vec<u8>>,
}

impl OpenFile for MemoryOpenFile<'_> {
    fn stamp(&self) -> io::Result<FileStamp> {
        Ok(self.stamp)
    }

    fn location(&self) -> io::Result<PathBuf> {
        Ok(self.location.clone())
    }

    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.files.reads.lock().unwrap().push(self.path.clone());
        self.data
            .clone()
            .ok_or_else(|| io::Error::from_raw_os_error(nix::errno::Errno::EISDIR as i32))
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
