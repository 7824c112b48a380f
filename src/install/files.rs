//! One planned file change: its unified diff for `--dry-run`, and applying it safely (a
//! backup of the original first, then an atomic replace).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::atomic_file::{parent_dir, write_atomically};

use super::state::InstallState;
use super::InstallError;

/// Suffix of the copy of a file as it was before credgate first changed it.
pub(crate) const BACKUP_SUFFIX: &str = ".credgate-backup";

/// A file's content before (`None`: it does not exist) and after install.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub after: Vec<u8>,
    /// Mode for a file install creates.
    pub new_mode: u32,
}

impl Change {
    pub fn new(path: &Path, before: Option<Vec<u8>>, after: Vec<u8>, new_mode: u32) -> Self {
        Self {
            path: path.to_path_buf(),
            before,
            after,
            new_mode,
        }
    }

    pub fn changes_anything(&self) -> bool {
        self.before.as_deref() != Some(self.after.as_slice())
    }

    pub fn diff(&self) -> String {
        unified_diff(&self.path, self.before.as_deref(), Some(&self.after))
    }

    /// Backs up (a modified file) or creates parent directories (a new file), writes the new
    /// content atomically, and records which it was in `state`. Returns a line for the report.
    pub fn apply(&self, state: &mut InstallState) -> Result<String, InstallError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| InstallError::Write { path, source }
        };
        match &self.before {
            Some(_) => {
                let mode = mode_of(&self.path).map_err(write_err(&self.path))?;
                let backup = back_up(&self.path).map_err(write_err(&backup_path(&self.path)))?;
                write_atomically(&self.path, &self.after, mode).map_err(write_err(&self.path))?;
                state.record_modified(&self.path);
                Ok(format!(
                    "updated {} (original kept as {})",
                    self.path.display(),
                    backup.display()
                ))
            }
            None => {
                let dir = parent_dir(&self.path);
                create_dirs(dir, state).map_err(write_err(dir))?;
                write_atomically(&self.path, &self.after, self.new_mode)
                    .map_err(write_err(&self.path))?;
                state.record_created_file(&self.path);
                Ok(format!("created {}", self.path.display()))
            }
        }
    }
}

/// A unified diff from `before` to `after`; `None` on either side is /dev/null.
pub(crate) fn unified_diff(path: &Path, before: Option<&[u8]>, after: Option<&[u8]>) -> String {
    let old = String::from_utf8_lossy(before.unwrap_or_default());
    let new = String::from_utf8_lossy(after.unwrap_or_default());
    let name = path.display().to_string();
    let old_name = if before.is_some() {
        name.as_str()
    } else {
        "/dev/null"
    };
    let new_name = if after.is_some() {
        name.as_str()
    } else {
        "/dev/null"
    };
    similar::TextDiff::from_lines(old.as_ref(), new.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

pub(crate) fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Copies `path` to its backup unless one exists (so re-running keeps the pristine original).
fn back_up(path: &Path) -> std::io::Result<PathBuf> {
    let backup = backup_path(path);
    if !backup.exists() {
        let original = std::fs::read(path)?;
        write_atomically(&backup, &original, mode_of(path)?)?;
    }
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
