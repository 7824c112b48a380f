//! Writing a file atomically: readers see the old content or the new (or, for a file that
//! must be created exactly once, no file or all of it), never half of it, and a new file
//! never exists with looser permissions than asked for.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temp names are taken per write, so threads of one process never share one.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
/// Names tried before giving up on a directory full of leftovers from crashed runs.
const TEMP_ATTEMPTS: u32 = 16;

/// Writes `contents` to a temp file in the same directory with `mode`, syncs it, renames it
/// over `path` and syncs the directory. The directory must exist; on error the temp file is
/// removed and `path` is untouched.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let temp = write_temp(path, contents, mode)?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(parent_dir(path))
}

/// Whether [`create_atomically`] made the file or found one there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    Created,
    AlreadyThere,
}

/// Creates `path` with `contents` and `mode` unless it exists: the content is written and
/// synced in a temp file first, then hard-linked to `path`, which fails if `path` exists. So
/// of several processes creating the same file at once exactly one wins, and nobody ever
/// sees it empty or half-written. The directory must exist; no temp file is left.
pub fn create_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<Creation> {
    let temp = write_temp(path, contents, mode)?;
    let linked = std::fs::hard_link(&temp, path);
    // Best effort: the file is complete under its final name either way.
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_dir(parent_dir(path))?;
            Ok(Creation::Created)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Creation::AlreadyThere),
        Err(e) => Err(e),
    }
}

/// A new temp file beside `path` holding `contents` with exactly `mode`, synced; removed
/// again on error.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let dir = parent_dir(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut attempt = 0;
    let (temp, mut file) = loop {
        let temp = dir.join(format!(
            ".{name}.credgate-tmp.{}.{}",
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp);
        match opened {
            Ok(file) => break (temp, file),
            // A leftover of a crashed run with the same process id: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < TEMP_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    // The umask may have narrowed the mode given at open.
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    match written {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_new_file_gets_its_content_and_exactly_its_mode_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        write_atomically(&path, b"one\n", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
        assert_eq!(mode(&path), 0o640);
        write_atomically(&path, b"two\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["hosts.toml"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "kept").unwrap();
        // Renaming a file over a non-empty directory fails.
        assert!(write_atomically(&path, b"new", 0o600).is_err());
        assert_eq!(names(dir.path()), ["target"]);
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
    }

    #[test]
    fn create_makes_a_new_file_once_and_leaves_an_existing_one_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror-secret");
        assert_eq!(
            create_atomically(&path, b"first\n", 0o600).unwrap(),
            Creation::Created
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            create_atomically(&path, b"second\n", 0o644).unwrap(),
            Creation::AlreadyThere
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["mirror-secret"]);
    }

    #[test]
    fn threads_replacing_one_file_at_once_never_share_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        std::thread::scope(|scope| {
            for n in 0..16 {
                let path = &path;
                scope.spawn(move || {
                    write_atomically(path, format!("{n:02}\n").as_bytes(), 0o600).unwrap()
                });
            }
        });
        assert_eq!(std::fs::read(&path).unwrap().len(), 3);
        assert_eq!(names(dir.path()), ["hosts.toml"]);
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("state.json")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/h/state.json")), Path::new("/h"));
    }
}
