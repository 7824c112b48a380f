//! Uninstall's steps: put back what install recorded in its state, and nothing else.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::atomic_file::{parent_dir, sync_dir};

use super::files::{backup_path, mode_line, Found};
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
        if let Ok(bytes) = std::fs::read(path) {
            redactor.learn(&bytes);
        }
    }
    for path in &state.modified_files {
        let original = state.originals.get(path);
        report
            .stdout
            .push(restore(path, original, dry_run, redactor)?);
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

/// Puts the backup back, with the original's mode and owner when the state has them.
fn restore(
    path: &Path,
    original: Option<&Original>,
    dry_run: bool,
    redactor: &mut Redactor,
) -> Result<String, InstallError> {
    let backup = backup_path(path);
    let missing = || InstallError::MissingBackup {
        path: path.to_path_buf(),
        backup: backup.clone(),
    };
    let kept = Found::read(&backup)
        .map_err(|_| missing())?
        .ok_or_else(missing)?;
    let mode = original.map_or(kept.mode, |o| o.mode);
    if dry_run {
        let current = Found::read(path).ok().flatten();
        let mut shown = String::new();
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
    // The backup gets the original's owner and mode first, so renaming it back is atomic.
    if let Some(original) = original {
        if (kept.uid, kept.gid) != (original.uid, original.gid) {
            std::os::unix::fs::chown(&backup, Some(original.uid), Some(original.gid))
                .map_err(write_err)?;
        }
        // After chown, which may clear set-id bits.
        std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(original.mode))
            .map_err(write_err)?;
    }
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
        let current = std::fs::read(path).ok();
        return Ok(redactor.diff(path, current.as_deref(), None));
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
