//! Whether a file may decide what credgate runs: a docker config names the credential helpers
//! credgate starts, a kubelet provider config and its bin dir the plugins, and credgate runs
//! them as root. Like ssh's StrictModes, such a file (or directory) is refused when anyone but
//! root — or the user credgate itself runs as — can write it.

use std::io;
use std::path::{Path, PathBuf};

use crate::system::{FileStamp, Files};

/// Group- or other-writable permission bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Why a file is not trusted to name programs; [`UntrustedFile::fix`] says what to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UntrustedFile {
    #[error("{} is owned by uid {uid}, not root", path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("{} is writable by group or others (mode {mode:04o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("{}: cannot check its owner and mode: {reason}", path.display())]
    Unchecked { path: PathBuf, reason: String },
}

impl UntrustedFile {
    /// The command that makes the file trusted.
    pub fn fix(&self) -> String {
        match self {
            Self::Owner { path, .. } => format!("chown root:root {}", path.display()),
            Self::Writable { path, .. } => format!("chmod go-w {}", path.display()),
            Self::Unchecked { path, .. } => format!(
                "ls -ld {} and make it root's, not writable by others",
                path.display()
            ),
        }
    }
}

/// Refuses a stamp whose file others could have written.
pub fn check_stamp(path: &Path, stamp: &FileStamp) -> Result<(), UntrustedFile> {
    if stamp.uid != 0 && stamp.uid != own_uid() {
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

/// Checks `path` through `files`; a path that does not exist has nothing to check (whoever
/// reads or runs it next reports it missing).
pub fn check(files: &dyn Files, path: &Path) -> Result<(), UntrustedFile> {
    match files.stamp(path) {
        Ok(stamp) => check_stamp(path, &stamp),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UntrustedFile::Unchecked {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
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
}
