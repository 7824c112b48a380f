//! The install state: which files and directories install created and which it modified, so
//! uninstall restores exactly what was there. Kept as `<hosts-dir>/.credgate-install.json`
//! (containerd only looks at `<hosts-dir>/<registry>/` directories).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::{parent_dir, sync_dir, write_atomically};

use super::files::{backup_path, unified_diff};
use super::{InstallError, Report};

const STATE_FILE: &str = ".credgate-install.json";
const STATE_MODE: u32 = 0o600;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstallState {
    /// The containerd config, when install changed or created it (uninstall then says to
    /// restart containerd).
    #[serde(default)]
    pub containerd_config: Option<PathBuf>,
    /// Parents before children.
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub created_files: Vec<PathBuf>,
    /// Each has its original at `<path>.credgate-backup`.
    #[serde(default)]
    pub modified_files: Vec<PathBuf>,
}

pub(crate) fn path(hosts_dir: &Path) -> PathBuf {
    hosts_dir.join(STATE_FILE)
}

impl InstallState {
    /// `None` when there is no state file (nothing installed).
    pub fn load(path: &Path) -> Result<Option<Self>, InstallError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(InstallError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| InstallError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    pub fn save(&self, path: &Path) -> Result<(), InstallError> {
        let mut text = serde_json::to_vec_pretty(self).expect("the state serializes");
        text.push(b'\n');
        write_atomically(path, &text, STATE_MODE).map_err(|source| InstallError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    fn knows(&self, path: &Path) -> bool {
        self.created_files.iter().any(|p| p == path)
            || self.modified_files.iter().any(|p| p == path)
    }

    /// A file install created stays "created" when a later install changes it again.
    pub fn record_modified(&mut self, path: &Path) {
        if !self.knows(path) {
            self.modified_files.push(path.to_path_buf());
        }
    }

    pub fn record_created_file(&mut self, path: &Path) {
        if !self.knows(path) {
            self.created_files.push(path.to_path_buf());
        }
    }

    pub fn record_created_dir(&mut self, dir: &Path) {
        if !self.created_dirs.iter().any(|d| d == dir) {
            self.created_dirs.push(dir.to_path_buf());
        }
    }
}

/// Restores modified files from their backups, removes created files, the state file and
/// created directories (children first; one that holds someone else's files is left).
pub(crate) fn undo(
    state: &InstallState,
    state_path: &Path,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), InstallError> {
    for path in &state.modified_files {
        report.stdout.push(restore(path, dry_run)?);
    }
    for path in &state.created_files {
        report.stdout.push(remove_file(path, dry_run)?);
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

fn restore(path: &Path, dry_run: bool) -> Result<String, InstallError> {
    let backup = backup_path(path);
    let original = std::fs::read(&backup).map_err(|_| InstallError::MissingBackup {
        path: path.to_path_buf(),
        backup: backup.clone(),
    })?;
    if dry_run {
        let current = std::fs::read(path).ok();
        return Ok(unified_diff(path, current.as_deref(), Some(&original)));
    }
    // The backup has the original's content and mode: renaming it back is atomic.
    let write_err = |source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::rename(&backup, path).map_err(write_err)?;
    sync_dir(parent_dir(path)).map_err(write_err)?;
    Ok(format!(
        "restored {} from {}",
        path.display(),
        backup.display()
    ))
}

fn remove_file(path: &Path, dry_run: bool) -> Result<String, InstallError> {
    if dry_run {
        let current = std::fs::read(path).ok();
        return Ok(unified_diff(path, current.as_deref(), None));
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
