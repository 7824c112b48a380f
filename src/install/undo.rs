//! Uninstall's steps: put back what install recorded in its state, and nothing else.
//!
//! A backup or hosts.toml may sit in a directory another user can write, so each is read only
//! as a regular file with one name, never through a symlink ([`Found::read_regular`]); a
//! backup gets its original's owner and mode only when its content is the one install
//! recorded, and they are set on the open file that was checked, not on a path.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::atomic_file::{parent_dir, sync_dir};

use super::files::{backup_path, fingerprint, mode_line, Found};
use super::redact::Redactor;
use super::state::{InstallState, Original};
use super::{InstallError, Report};

/// Restores modified files from their backups, removes created files, the state file and
/// created directories (children first; one that holds someone else's files is left).
pub(crate) fn undo(
    state: &InstallState,
    state_path: &Path,
    dry_run: bool,
    report: &mut Report,
    redactor: &mut Redactor,
) -> Result<(), InstallError> {
    for path in state.modified_files.iter().chain(&state.created_files) {
        // Learnt before anything is printed, so no line can show a secret they hold.
        if let Ok(Some((_, found))) = Found::read_regular(path) {
            redactor.learn(&found.bytes);
        }
    }
    for path in &state.modified_files {
        let original = state.originals.get(path);
        let line = restore(path, original, dry_run, report, redactor)?;
        report.stdout.push(line);
    }
    for path in &state.created_files {
        report.stdout.push(remove_file(path, dry_run, redactor)?);
    }
    if dry_run {
        report
            .stdout
            .push("dry run: nothing was written".to_string());
        return Ok(());
    }
    std::fs::remove_file(state_path).map_err(|source| InstallError::Write {
        path: state_path.to_path_buf(),
        source,
    })?;
    for dir in state.created_dirs.iter().rev() {
        remove_dir(dir, report);
    }
    if let Some(config) = &state.containerd_config {
        report.stdout.push(format!(
            "restart containerd (systemctl restart containerd): it reads {} only at start",
            config.display()
        ));
    }
    Ok(())
}

/// Puts the backup back, with the original's owner and mode when the state has them.
fn restore(
    path: &Path,
    original: Option<&Original>,
    dry_run: bool,
    report: &mut Report,
    redactor: &mut Redactor,
) -> Result<String, InstallError> {
    let backup = backup_path(path);
    let missing = || InstallError::MissingBackup {
        path: path.to_path_buf(),
        backup: backup.clone(),
    };
    let (file, kept) = match Found::read_regular(&backup) {
        Ok(Some(found)) => found,
        Ok(None) | Err(InstallError::Read { .. }) => return Err(missing()),
        Err(refused) => return Err(refused),
    };
    // The owner and mode to give the backup: only when install recorded its content.
    let owner_and_mode = match original {
        Some(original) => match &original.backup_sha256 {
            Some(sum) if *sum == fingerprint(&kept.bytes) => Some(original),
            Some(_) => {
                return Err(InstallError::UnrecordedBackup {
                    path: path.to_path_buf(),
                    backup,
                })
            }
            None => {
                report.warnings.push(format!(
                    "warning: {} keeps the owner and mode of {} (uid {}, {:04o}): the install \
                     state is older than backup fingerprints, so it cannot tell that file is \
                     the backup install made",
                    path.display(),
                    backup.display(),
                    kept.uid,
                    kept.mode
                ));
                None
            }
        },
        None => None,
    };
    let mode = owner_and_mode.map_or(kept.mode, |o| o.mode);
    if dry_run {
        let mut shown = String::new();
        let current = match Found::read_regular(path) {
            Ok(current) => current.map(|(_, found)| found),
            Err(InstallError::NotARegularFile { kind, .. }) => {
                shown.push_str(&format!(
                    "{} is {kind}: not read, uninstall replaces it\n",
                    path.display()
                ));
                None
            }
            Err(_) => None,
        };
        if let Some(current) = current.as_ref().filter(|c| c.mode != mode) {
            shown.push_str(&mode_line(path, current.mode, mode, ""));
        }
        let current = current.as_ref().map(|c| c.bytes.as_slice());
        shown.push_str(&redactor.diff(path, current, Some(&kept.bytes)));
        return Ok(shown);
    }
    let write_err = |source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Owner and mode go on the file checked above, so renaming it back is atomic.
    if let Some(original) = owner_and_mode {
        if (kept.uid, kept.gid) != (original.uid, original.gid) {
            std::os::unix::fs::fchown(&file, Some(original.uid), Some(original.gid))
                .map_err(write_err)?;
        }
        // After chown, which may clear set-id bits.
        file.set_permissions(std::fs::Permissions::from_mode(original.mode))
            .map_err(write_err)?;
    }
    drop(file);
    // The name is renamed, not the file: whoever can write the directory could swap it now,
    // but could as well write hosts.toml itself; no other file got an owner or mode.
    std::fs::rename(&backup, path).map_err(write_err)?;
    sync_dir(parent_dir(path)).map_err(write_err)?;
    Ok(format!(
        "restored {} from {}",
        path.display(),
        backup.display()
    ))
}

fn remove_file(
    path: &Path,
    dry_run: bool,
    redactor: &mut Redactor,
) -> Result<String, InstallError> {
    if dry_run {
        return Ok(match Found::read_regular(path) {
            Err(InstallError::NotARegularFile { kind, .. }) => {
                format!(
                    "{} is {kind}: not read, uninstall removes it",
                    path.display()
                )
            }
            current => {
                let current = current.ok().flatten().map(|(_, found)| found.bytes);
                redactor.diff(path, current.as_deref(), None)
            }
        });
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(format!("removed {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(format!("{} was already gone", path.display()))
        }
        Err(source) => Err(InstallError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_dir(dir: &Path, report: &mut Report) {
    match std::fs::remove_dir(dir) {
        Ok(()) => report.stdout.push(format!("removed {}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.warnings.push(format!(
            "warning: left {}: {e} (it holds files credgate did not create)",
            dir.display()
        )),
    }
}
