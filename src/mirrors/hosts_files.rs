//! The hosts.toml files the daemon reads to learn which mirrors it may dial: opened without
//! following a symlink, refused unless a regular file with no other name (as install refuses
//! them) and at most [`MAX_HOSTS_FILE_BYTES`] long, and kept parsed, keyed by path and
//! re-parsed only when the file's device, inode, size or modification time change, so a
//! request costs one `open` and one `fstat`. At most [`CACHED_FILES`] files are kept.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::containerd::files::{read_hosts_file, ContainerdFileError, HostsFile};

/// Largest hosts.toml read; real ones are a few hundred bytes.
pub const MAX_HOSTS_FILE_BYTES: u64 = 1 << 20;
/// Most hosts.toml files kept parsed: one per registry directory, a few dozen on a node.
pub const CACHED_FILES: usize = 256;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

#[derive(Default)]
pub(crate) struct HostsFiles {
    parsed: Mutex<HashMap<PathBuf, (Stamp, Arc<HostsFile>)>>,
}

impl HostsFiles {
    /// Files kept parsed now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The file at `path` parsed, or `None` when there is none.
    pub fn read(&self, path: &Path) -> Result<Option<Arc<HostsFile>>, ContainerdFileError> {
        let Some(mut file) = open_regular(path)? else {
            self.lock().remove(path);
            return Ok(None);
        };
        let read_err = |source| ContainerdFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        if let Some((seen, parsed)) = self.lock().get(path) {
            if *seen == stamp {
                return Ok(Some(parsed.clone()));
            }
        }
        if stamp.len > MAX_HOSTS_FILE_BYTES {
            return Err(refused(path, "larger than 1 MiB"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
        (&mut file)
            .take(MAX_HOSTS_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_HOSTS_FILE_BYTES {
            return Err(refused(path, "larger than 1 MiB"));
        }
        let text = String::from_utf8(bytes).map_err(|_| refused(path, "not UTF-8 text"))?;
        let parsed = Arc::new(read_hosts_file(path, &text)?);
        let mut cache = self.lock();
        if cache.len() >= CACHED_FILES && !cache.contains_key(path) {
            // Any one goes: files are cheap to parse again, and the bound is what matters.
            if let Some(evicted) = cache.keys().next().cloned() {
                cache.remove(&evicted);
            }
        }
        cache.insert(path.to_path_buf(), (stamp, parsed.clone()));
        Ok(Some(parsed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, Arc<HostsFile>)>> {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn refused(path: &Path, reason: &'static str) -> ContainerdFileError {
    ContainerdFileError::Refused {
        path: path.to_path_buf(),
        reason,
    }
}

/// `path` opened as a regular file with one name, never through a symlink; `None` when
/// there is nothing there.
fn open_regular(path: &Path) -> Result<Option<File>, ContainerdFileError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO must not hold the request until a writer comes.
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err(refused(
                path,
                "a symlink; replace it with the file itself (credgate never reads a hosts.toml through a link)",
            ))
        }
        Err(source) => {
            return Err(ContainerdFileError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let meta = file
        .metadata()
        .map_err(|source| ContainerdFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if !meta.is_file() {
        return Err(refused(path, "not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(refused(path, "a hard link (the file has other names)"));
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_HOST: &str = "[host.\"https://m.test\"]\n";

    #[test]
    fn files_are_parsed_once_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        let files = HostsFiles::default();
        assert!(files.read(&path).unwrap().is_none());
        std::fs::write(&path, ONE_HOST).unwrap();
        let first = files.read(&path).unwrap().unwrap();
        let again = files.read(&path).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Same length, another content: the inode changes with an atomic replace, as install
        // and editors write it.
        let replacement = dir.path().join("new");
        std::fs::write(&replacement, "[host.\"https://n.test\"]\n").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        let changed = files.read(&path).unwrap().unwrap();
        assert_eq!(changed.hosts[0].key, "https://n.test");
        std::fs::remove_file(&path).unwrap();
        assert!(files.read(&path).unwrap().is_none());
        assert_eq!(files.len(), 0);
    }

    #[test]
    fn symlinks_hard_links_fifos_and_huge_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        std::fs::write(&real, ONE_HOST).unwrap();
        let files = HostsFiles::default();

        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = files.read(&link).unwrap_err().to_string();
        assert!(
            err.contains("link.toml") && err.contains("a symlink"),
            "{err}"
        );

        let hard = dir.path().join("hard.toml");
        std::fs::hard_link(&real, &hard).unwrap();
        let err = files.read(&hard).unwrap_err().to_string();
        assert!(err.contains("a hard link"), "{err}");
        std::fs::remove_file(&hard).unwrap();

        let fifo = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = files.read(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");

        let huge = dir.path().join("huge.toml");
        let file = File::create(&huge).unwrap();
        file.set_len(MAX_HOSTS_FILE_BYTES + 1).unwrap();
        let err = files.read(&huge).unwrap_err().to_string();
        assert!(err.contains("larger than 1 MiB"), "{err}");
        assert!(files.read(&real).unwrap().is_some());
    }

    #[test]
    fn the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostsFiles::default();
        for i in 0..(CACHED_FILES + 20) {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, ONE_HOST).unwrap();
            files.read(&path).unwrap();
        }
        assert_eq!(files.len(), CACHED_FILES);
    }
}
