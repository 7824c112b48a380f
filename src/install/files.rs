//! One planned file change: what it shows for `--dry-run` (a redacted unified diff, and the
//! change of mode or owner), and applying it safely (a backup of the original first, then an
//! atomic replace with the mode the file must have).
//!
//! hosts.toml files and backups may sit in a registry directory another user owns, so that
//! user can put a symlink or a hard link at either name. They are read only as a regular file
//! with no other name, opened with `O_NOFOLLOW` ([`Found::read_regular`]); anything else is
//! refused, never read through. A symlinked hosts.toml is refused rather than followed even
//! when root made it (config management): install would replace the link with a file anyway,
//! which the manager then overwrites, so the operator has to decide where credgate's host goes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::atomic_file::{parent_dir, write_atomically};
use crate::containerd::files::carries_secret;

use super::redact::Redactor;
use super::state::{InstallState, Original};
use super::InstallError;

/// Suffix of the copy of a file as it was before credgate first changed it.
pub(crate) const BACKUP_SUFFIX: &str = ".credgate-backup";
/// Mode of every file that carries the endpoint's secret: readable by root (containerd) only.
pub(crate) const SECRET_FILE_MODE: u32 = 0o600;

/// A file as it was found: its bytes, permission bits and owner.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub bytes: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Found {
    /// The file at `path`; `None` when there is none. Content and metadata come from one open
    /// file, so they describe the same file.
    pub fn read(path: &Path) -> Result<Option<Self>, InstallError> {
        let read_err = |source| InstallError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(read_err(source)),
        };
        Self::read_open(path, file).map(Some)
    }

    /// Like [`Found::read`], but only a regular file with no other name: a symlink is not
    /// followed and, like a hard link, a FIFO or a device, is refused
    /// ([`InstallError::NotARegularFile`]). Returns the open file too, so that owner and mode
    /// can be set on exactly the file that was checked.
    pub fn read_regular(path: &Path) -> Result<Option<(File, Self)>, InstallError> {
        let read_err = |source| InstallError::Read {
            path: path.to_path_buf(),
            source,
        };
        let refused = |kind| InstallError::NotARegularFile {
            path: path.to_path_buf(),
            kind,
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused.
            .custom_flags(
                nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits(),
            )
            .open(path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // O_NOFOLLOW's answer when the last component is a symlink.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
                return Err(refused(NotRegular::Symlink))
            }
            Err(source) => return Err(read_err(source)),
        };
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(refused(NotRegular::Other));
        }
        if meta.nlink() != 1 {
            return Err(refused(NotRegular::HardLink));
        }
        let found = Self::read_open(path, file.try_clone().map_err(read_err)?)?;
        Ok(Some((file, found)))
    }

    /// Content and metadata from one open file, so they describe the same file.
    fn read_open(path: &Path, mut file: File) -> Result<Self, InstallError> {
        let read_err = |source| InstallError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_err)?;
        Ok(Self {
            bytes,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    fn original(&self) -> Original {
        Original {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            backup_sha256: Some(fingerprint(&self.bytes)),
        }
    }
}

/// Why a name that must be a regular file is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRegular {
    Symlink,
    HardLink,
    Other,
}

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotRegular::Symlink => "a symlink",
            NotRegular::HardLink => "a hard link (the file has other names)",
            NotRegular::Other => "not a regular file",
        })
    }
}

/// The SHA-256 of a backup's content, as the install state records it: uninstall gives an
/// owner and mode only to the backup install wrote, not to a file put under its name.
pub(crate) fn fingerprint(bytes: &[u8]) -> String {
    crate::hex::lower_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Who may read a file once install has written it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The mode it had (`new_mode` when install creates it): it holds no secret.
    Kept { new_mode: u32 },
    /// [`SECRET_FILE_MODE`], owned by the user install runs as (root): it carries the
    /// endpoint's secret.
    SecretHolder,
}

/// A file's state before (`None`: it does not exist) and its content after install.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub path: PathBuf,
    pub before: Option<Found>,
    pub after: Vec<u8>,
    pub access: Access,
    /// The file found was rewritten without credgate's hosts since install wrote it (by
    /// Spegel, Dragonfly, config management): it is the original uninstall must give back now.
    pub rewritten_since_install: bool,
}

impl Change {
    pub fn new(path: &Path, before: Option<Found>, after: Vec<u8>, access: Access) -> Self {
        Self {
            path: path.to_path_buf(),
            before,
            after,
            access,
            rewritten_since_install: false,
        }
    }

    /// The mode the file has once the change is applied.
    fn mode(&self) -> u32 {
        match (self.access, &self.before) {
            (Access::SecretHolder, _) => SECRET_FILE_MODE,
            (Access::Kept { .. }, Some(found)) => found.mode,
            (Access::Kept { new_mode }, None) => new_mode,
        }
    }

    /// The owner a secret holder must get, when it has another one now.
    fn owner_change(&self) -> Option<(u32, u32)> {
        let found = self.before.as_ref()?;
        let us = process_uid();
        (self.access == Access::SecretHolder && found.uid != us).then_some((found.uid, us))
    }

    /// True when the content, the mode or the owner changes.
    pub fn changes_anything(&self) -> bool {
        match &self.before {
            None => true,
            Some(found) => {
                found.bytes != self.after
                    || found.mode != self.mode()
                    || self.owner_change().is_some()
            }
        }
    }

    /// What `--dry-run` shows: a line for a mode or owner change, then the unified diff, with
    /// every secret redacted.
    pub fn diff(&self, redactor: &mut Redactor) -> String {
        let mut shown = String::new();
        if self.rewritten_since_install {
            shown.push_str(&format!(
                "{} was rewritten since install without credgate's hosts: install keeps this \
                 version as {}, and uninstall gives it back\n",
                self.path.display(),
                backup_path(&self.path).display()
            ));
        }
        if let Some(found) = &self.before {
            if found.mode != self.mode() {
                shown.push_str(&mode_line(&self.path, found.mode, self.mode(), self.why()));
            }
        }
        if let Some((from, to)) = self.owner_change() {
            shown.push_str(&format!(
                "owner of {}: uid {from} -> uid {to}{}\n",
                self.path.display(),
                self.why()
            ));
        }
        let before = self.before.as_ref().map(|found| found.bytes.as_slice());
        shown.push_str(&redactor.diff(&self.path, before, Some(&self.after)));
        shown
    }

    fn why(&self) -> &'static str {
        match self.access {
            Access::SecretHolder => " (it carries the endpoint's secret)",
            Access::Kept { .. } => "",
        }
    }

    /// Refuses a backup name already taken by a file install did not make (see [`back_up`]),
    /// before anything is written.
    pub fn check_backup(&self, state: &InstallState) -> Result<(), InstallError> {
        if self.before.is_none() || state.backed_up(&self.path) {
            return Ok(());
        }
        if state.created(&self.path) && !self.rewritten_since_install {
            return Ok(());
        }
        let backup = backup_path(&self.path);
        match std::fs::symlink_metadata(&backup) {
            Ok(_) => Err(InstallError::UnrecordedBackup {
                path: self.path.clone(),
                backup,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(InstallError::Read {
                path: backup,
                source,
            }),
        }
    }

    /// Backs up the original (a file install did not create), or creates parent directories
    /// (a new file), writes the new content atomically with its mode, and records which it
    /// was in `state`. Returns a line for the report.
    pub fn apply(&self, state: &mut InstallState) -> Result<String, InstallError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| InstallError::Write { path, source }
        };
        let path = &self.path;
        match &self.before {
            Some(found) if self.rewritten_since_install => {
                write_atomically(path, &self.after, self.mode()).map_err(write_err(path))?;
                // After the write: should this fail, uninstall still has the older original.
                let backup = replace_backup(path, found, state)?;
                Ok(format!(
                    "updated {} (rewritten since install without credgate's hosts: that version \
                     is kept as {}, and uninstall gives it back)",
                    path.display(),
                    backup.display()
                ))
            }
            Some(found) => {
                // A file install created has no original to keep, only its own earlier content.
                let backup = if state.created(path) {
                    None
                } else {
                    Some(back_up(path, found, state)?)
                };
                if let Err(source) = write_atomically(path, &self.after, self.mode()) {
                    // A backup this run made is not in any saved state yet: left, it would
                    // be refused as not credgate's by the next install.
                    if let Some((backup, Backup::Made)) = &backup {
                        let _ = std::fs::remove_file(backup);
                    }
                    return Err(write_err(path)(source));
                }
                state.record_modified(path);
                Ok(match backup {
                    Some((backup, _)) => format!(
                        "updated {} (original kept as {})",
                        path.display(),
                        backup.display()
                    ),
                    None => format!("updated {}", path.display()),
                })
            }
            None => {
                let dir = parent_dir(path);
                create_dirs(dir, state).map_err(write_err(dir))?;
                write_atomically(path, &self.after, self.mode()).map_err(write_err(path))?;
                state.record_created_file(path);
                Ok(format!("created {}", path.display()))
            }
        }
    }
}

/// The dry-run line for a file whose mode changes.
pub(crate) fn mode_line(path: &Path, from: u32, to: u32, why: &str) -> String {
    format!("mode of {}: {from:04o} -> {to:04o}{why}\n", path.display())
}

/// The user install runs as, who owns every file it writes.
fn process_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

pub(crate) fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

/// Whether [`back_up`] wrote the backup or kept the one an earlier install made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backup {
    Made,
    Kept,
}

/// Copies the original to its backup unless the state records one (so re-running keeps the
/// pristine original), and records its mode, owner and fingerprint for uninstall. The backup
/// keeps the original's mode, unless the original already carries a secret header: then it
/// is 0600. Anything else under the backup's name (even a dangling symlink) is refused: it
/// was put there by someone other than install.
fn back_up(
    path: &Path,
    found: &Found,
    state: &mut InstallState,
) -> Result<(PathBuf, Backup), InstallError> {
    let backup = backup_path(path);
    let write_err = |source| InstallError::Write {
        path: backup.clone(),
        source,
    };
    match std::fs::symlink_metadata(&backup) {
        Ok(_) if state.backed_up(path) => return Ok((backup, Backup::Kept)),
        Ok(_) => {
            return Err(InstallError::UnrecordedBackup {
                path: path.to_path_buf(),
                backup,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(write_err(source)),
    }
    let text = String::from_utf8_lossy(&found.bytes);
    let mode = if carries_secret(&text) {
        SECRET_FILE_MODE
    } else {
        found.mode
    };
    write_atomically(&backup, &found.bytes, mode).map_err(write_err)?;
    state.record_original(path, found.original());
    Ok((backup, Backup::Made))
}

/// Makes `found` the original of `path`: its backup (replacing install's earlier one, or the
/// first for a file install created), with its mode, owner and fingerprint recorded.
fn replace_backup(
    path: &Path,
    found: &Found,
    state: &mut InstallState,
) -> Result<PathBuf, InstallError> {
    let backup = backup_path(path);
    let text = String::from_utf8_lossy(&found.bytes);
    let mode = if carries_secret(&text) {
        SECRET_FILE_MODE
    } else {
        found.mode
    };
    // A rename over the name: whatever is there (ours, checked by `check_backup`) is replaced,
    // never written through.
    write_atomically(&backup, &found.bytes, mode).map_err(|source| InstallError::Write {
        path: backup.clone(),
        source,
    })?;
    state.adopt(path, found.original());
    Ok(backup)
}

/// Creates `dir` and its missing ancestors, recording each one install created.
pub(crate) fn create_dirs(dir: &Path, state: &mut InstallState) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for dir in missing.into_iter().rev() {
        std::fs::create_dir(dir)?;
        state.record_created_dir(dir);
    }
    Ok(())
}
