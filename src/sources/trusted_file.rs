//! Whether a file may decide what credgate runs: a docker config names the credential helpers
//! credgate starts, a kubelet provider config and its bin dir the plugins, and credgate runs
//! them as root. Like ssh's StrictModes, such a file is refused when anyone but root — or the
//! user credgate itself runs as — can write it, or can replace it: every directory above it
//! must be as trusted as the file. The file is checked through one open descriptor, the
//! same one it is then read from, so the path cannot be pointed elsewhere in between.

use std::io;
use std::path::{Path, PathBuf};

use crate::system::{FileStamp, Files};

/// Group- or other-writable permission bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
/// The sticky bit: in such a directory only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Why a file is not trusted to name programs; [`UntrustedFile::fix`] says what to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UntrustedFile {
    #[error("{} is owned by uid {uid}, not root", path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("{} is writable by group or others (mode {mode:04o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("{} is in directory {}, owned by uid {uid}, not root, who can replace it", path.display(), dir.display())]
    DirectoryOwner {
        path: PathBuf,
        dir: PathBuf,
        uid: u32,
    },
    #[error("{} is in directory {}, writable by group or others (mode {mode:04o}), who can replace it", path.display(), dir.display())]
    DirectoryWritable {
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },
    #[error("{}: cannot check its owner and mode: {reason}", path.display())]
    Unchecked { path: PathBuf, reason: String },
}

impl UntrustedFile {
    /// The command that makes the file trusted.
    pub fn fix(&self) -> String {
        match self {
            Self::Owner { path, .. } => format!("chown root:root {}", path.display()),
            Self::Writable { path, .. } => format!("chmod go-w {}", path.display()),
            Self::DirectoryOwner { path, dir, .. } => format!(
                "chown root:root {}, or move {} to a directory only root can write",
                dir.display(),
                path.display()
            ),
            Self::DirectoryWritable { path, dir, .. } => format!(
                "chmod go-w {}, or move {} to a directory only root can write",
                dir.display(),
                path.display()
            ),
            Self::Unchecked { path, .. } => format!(
                "ls -ld {} and make it root's, not writable by others",
                path.display()
            ),
        }
    }
}

/// Refuses a stamp whose file others could have written.
pub fn check_stamp(path: &Path, stamp: &FileStamp) -> Result<(), UntrustedFile> {
    if !trusted_owner(stamp.uid) {
        return Err(UntrustedFile::Owner {
            path: path.to_path_buf(),
            uid: stamp.uid,
        });
    }
    if stamp.mode & WRITABLE_BY_OTHERS != 0 {
        return Err(UntrustedFile::Writable {
            path: path.to_path_buf(),
            mode: stamp.mode,
        });
    }
    Ok(())
}

/// Refuses an opened file (configured as `path`) that others could have written or put
/// there: its own stamp, taken from the open descriptor, and every directory above `path`
/// and above its `location` (where it really is, symlinks resolved — a kubelet Secret's
/// `config.json -> ..data/config.json` is checked where `..data` points now).
pub fn check_opened(
    files: &dyn Files,
    path: &Path,
    stamp: &FileStamp,
    location: &Path,
) -> Result<(), UntrustedFile> {
    check_stamp(path, stamp)?;
    check_directories(files, path, path)?;
    check_directories(files, path, location)
}

/// Checks `path` through `files`: opened once, then as [`check_opened`]. A path that does
/// not exist has nothing to check (whoever reads or runs it next reports it missing).
pub fn check(files: &dyn Files, path: &Path) -> Result<(), UntrustedFile> {
    let unchecked = |e: io::Error| UntrustedFile::Unchecked {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = match files.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unchecked(e)),
    };
    let stamp = file.stamp().map_err(unchecked)?;
    let location = file.location().map_err(unchecked)?;
    check_opened(files, path, &stamp, &location)
}

/// Every directory above `below` must be root's (or credgate's own user's) and not writable
/// by group or others: whoever can write a directory can replace any entry in it, root's
/// too. The exception is a sticky directory (like `/tmp`, root's and mode 1777), where only
/// an entry's owner can rename or remove it, so others cannot replace root's file.
fn check_directories(files: &dyn Files, path: &Path, below: &Path) -> Result<(), UntrustedFile> {
    for dir in below
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        let stamp = files.stamp(dir).map_err(|e| UntrustedFile::Unchecked {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !trusted_owner(stamp.uid) {
            return Err(UntrustedFile::DirectoryOwner {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                uid: stamp.uid,
            });
        }
        if stamp.mode & WRITABLE_BY_OTHERS != 0 && stamp.mode & STICKY == 0 {
            return Err(UntrustedFile::DirectoryWritable {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                mode: stamp.mode,
            });
        }
    }
    Ok(())
}

/// Root, or the user credgate runs as.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == own_uid()
}

/// The effective uid: a file owned by credgate's own user is as trusted as credgate itself.
fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::fake::MemoryFiles;

    /// A uid no test runs as.
    const OTHER_UID: u32 = 4242;

    #[test]
    fn root_owned_files_not_writable_by_others_are_trusted() {
        let files = MemoryFiles::new();
        for mode in [0o600, 0o644, 0o755, 0o400] {
            files.write("/c.json", "{}", mode);
            assert_eq!(check(&files, Path::new("/c.json")), Ok(()), "{mode:o}");
        }
        assert_eq!(check(&files, Path::new("/missing")), Ok(()));
    }

    #[test]
    fn a_file_others_can_write_is_refused_with_the_fix() {
        let files = MemoryFiles::new();
        for mode in [0o620, 0o602, 0o666, 0o777] {
            files.write("/c.json", "{}", mode);
            let err = check(&files, Path::new("/c.json")).unwrap_err();
            assert!(matches!(err, UntrustedFile::Writable { .. }), "{mode:o}");
            assert_eq!(err.fix(), "chmod go-w /c.json");
        }
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused_with_the_fix() {
        let files = MemoryFiles::new();
        files.write("/c.json", "{}", 0o600);
        files.chown("/c.json", OTHER_UID);
        let err = check(&files, Path::new("/c.json")).unwrap_err();
        assert_eq!(err.to_string(), "/c.json is owned by uid 4242, not root");
        assert_eq!(err.fix(), "chown root:root /c.json");
    }

    #[test]
    fn a_root_config_in_a_directory_another_user_owns_is_refused() {
        let files = MemoryFiles::new();
        files.write("/home/alice/.docker/config.json", "{}", 0o600);
        files.dir("/home/alice", 0o755, OTHER_UID);
        let path = Path::new("/home/alice/.docker/config.json");
        let err = check(&files, path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/home/alice/.docker/config.json is in directory /home/alice, owned by uid 4242, \
             not root, who can replace it"
        );
        assert_eq!(
            err.fix(),
            "chown root:root /home/alice, or move /home/alice/.docker/config.json to a \
             directory only root can write"
        );
    }

    #[test]
    fn a_root_config_in_a_directory_others_can_write_is_refused() {
        let files = MemoryFiles::new();
        files.write("/srv/shared/config.json", "{}", 0o600);
        for mode in [0o775, 0o757, 0o777] {
            files.dir("/srv/shared", mode, 0);
            let err = check(&files, Path::new("/srv/shared/config.json")).unwrap_err();
            assert!(
                matches!(&err, UntrustedFile::DirectoryWritable { dir, .. } if dir == Path::new("/srv/shared")),
                "{mode:o}: {err}"
            );
            assert!(err.fix().starts_with("chmod go-w /srv/shared, "), "{err:?}");
        }
    }

    #[test]
    fn a_root_sticky_directory_like_tmp_cannot_replace_roots_file() {
        let files = MemoryFiles::new();
        files.write("/tmp/config.json", "{}", 0o600);
        files.dir("/tmp", 0o1777, 0);
        assert_eq!(check(&files, Path::new("/tmp/config.json")), Ok(()));
        files.dir("/tmp", 0o1777, OTHER_UID);
        let err = check(&files, Path::new("/tmp/config.json")).unwrap_err();
        assert!(matches!(err, UntrustedFile::DirectoryOwner { .. }), "{err}");
    }

    #[test]
    fn a_root_config_symlinked_from_a_user_owned_directory_is_refused() {
        let files = MemoryFiles::new();
        files.write("/home/alice/c.json", "{}", 0o600);
        files.dir("/home/alice", 0o755, OTHER_UID);
        files.symlink("/etc/credgate/docker.json", "/home/alice/c.json");
        let err = check(&files, Path::new("/etc/credgate/docker.json")).unwrap_err();
        assert!(
            matches!(&err, UntrustedFile::DirectoryOwner { dir, .. } if dir == Path::new("/home/alice")),
            "{err}"
        );
        // And a link kept in her directory, to root's file elsewhere, is hers to repoint.
        files.write("/etc/c.json", "{}", 0o600);
        files.symlink("/home/alice/link.json", "/etc/c.json");
        let err = check(&files, Path::new("/home/alice/link.json")).unwrap_err();
        assert!(matches!(err, UntrustedFile::DirectoryOwner { .. }), "{err}");
    }

    /// On the real file system, in a directory of its own under `/tmp`, as root's files are.
    mod on_disk {
        use std::os::unix::fs::{symlink, PermissionsExt};

        use super::*;
        use crate::sources::file_cache::FileCache;
        use crate::system::SystemFiles;

        fn config(dir: &Path, name: &str, contents: &str) -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        }

        fn cached_read(cache: &FileCache<String>) -> Result<Option<String>, String> {
            let value = cache.get(
                &SystemFiles,
                |stamp, at| {
                    check_opened(&SystemFiles, cache.path(), stamp, at).map_err(|e| e.to_string())
                },
                |b| Ok(String::from_utf8_lossy(b).into_owned()),
                |e| e.to_string(),
            )?;
            Ok(value.map(|v| (*v).clone()))
        }

        #[test]
        fn a_root_config_in_a_user_owned_directory_is_refused() {
            let temp = tempfile::tempdir().unwrap();
            let home = temp.path().join("alice");
            std::fs::create_dir(&home).unwrap();
            let path = config(&home, "config.json", "{}");
            assert_eq!(check(&SystemFiles, &path), Ok(()));
            std::os::unix::fs::chown(&home, Some(OTHER_UID), None).unwrap();
            let err = check(&SystemFiles, &path).unwrap_err();
            assert_eq!(
                err,
                UntrustedFile::DirectoryOwner {
                    path: path.clone(),
                    dir: home,
                    uid: OTHER_UID
                }
            );
        }

        #[test]
        fn a_root_config_in_a_group_writable_directory_is_refused() {
            let temp = tempfile::tempdir().unwrap();
            let path = config(temp.path(), "config.json", "{}");
            std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
            let cache = FileCache::new(&path);
            let err = cached_read(&cache).unwrap_err();
            assert!(
                err.contains("writable by group or others (mode 0770)"),
                "{err}"
            );
            std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            assert_eq!(cached_read(&cache).unwrap().as_deref(), Some("{}"));
        }

        #[test]
        fn a_root_config_symlinked_into_a_user_owned_directory_is_refused() {
            let temp = tempfile::tempdir().unwrap();
            let home = temp.path().join("alice");
            std::fs::create_dir(&home).unwrap();
            let target = config(&home, "c.json", "{}");
            std::os::unix::fs::chown(&home, Some(OTHER_UID), None).unwrap();
            let link = temp.path().join("docker.json");
            symlink(&target, &link).unwrap();
            let err = cached_read(&FileCache::new(&link)).unwrap_err();
            assert!(
                err.contains(&format!("in directory {},", home.display())),
                "{err}"
            );
        }

        #[test]
        fn kubelet_secret_symlinks_keep_working_when_data_is_swapped() {
            let temp = tempfile::tempdir().unwrap();
            let dir = temp.path();
            std::fs::create_dir(dir.join("..2024_1")).unwrap();
            config(&dir.join("..2024_1"), "config.json", "one");
            symlink("..2024_1", dir.join("..data")).unwrap();
            symlink("..data/config.json", dir.join("config.json")).unwrap();
            let cache = FileCache::new(dir.join("config.json"));
            assert_eq!(cached_read(&cache).unwrap().as_deref(), Some("one"));
            // As kubelet's atomic writer: a new timestamped dir, then `..data` renamed onto.
            std::fs::create_dir(dir.join("..2024_2")).unwrap();
            config(&dir.join("..2024_2"), "config.json", "two");
            symlink("..2024_2", dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            assert_eq!(cached_read(&cache).unwrap().as_deref(), Some("two"));
        }
    }
}
