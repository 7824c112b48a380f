//! The install state: which files and directories install created and which it modified, so
//! uninstall restores exactly what was there (content, mode and owner). Kept as
//! `<hosts-dir>/.credgate-install.json` (containerd only looks at `<hosts-dir>/<registry>/`
//! directories).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomically;

use super::InstallError;

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
    /// The mode and owner of each modified file's original, given back by uninstall (its
    /// backup may be tighter). States written before this was kept have none: the backup's
    /// own mode is the original's there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub originals: BTreeMap<PathBuf, Original>,
}

/// A modified file's mode and owner before install first changed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Original {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`super::files::fingerprint`] of the backup install wrote. Uninstall gives the owner
    /// and mode only to a backup with this content; states written before it was kept get
    /// their backups back with the backup's own owner and mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_sha256: Option<String>,
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
        // A path that is not UTF-8 cannot be written to JSON: an error, not a panic.
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| InstallError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomically(path, &text, STATE_MODE).map_err(|source| InstallError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    fn knows(&self, path: &Path) -> bool {
        self.created(path) || self.modified_files.iter().any(|p| p == path)
    }

    /// Whether install created the file (so it has no original to back up).
    pub fn created(&self, path: &Path) -> bool {
        self.created_files.iter().any(|p| p == path)
    }

    /// Whether install backed up the file's original (its backup is credgate's).
    pub fn backed_up(&self, path: &Path) -> bool {
        self.originals.contains_key(path) || self.modified_files.iter().any(|p| p == path)
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

    /// Kept once, with the backup: later runs see install's own file, not the original.
    pub fn record_original(&mut self, path: &Path, original: Original) {
        self.originals.entry(path.to_path_buf()).or_insert(original);
    }

    /// `path` now has `original` as the file uninstall gives back (it was rewritten since
    /// install), whether install created it or backed up an earlier original.
    pub fn adopt(&mut self, path: &Path, original: Original) {
        self.created_files.retain(|p| p != path);
        self.record_modified(path);
        self.originals.insert(path.to_path_buf(), original);
    }

    pub fn record_created_dir(&mut self, dir: &Path) {
        if !self.created_dirs.iter().any(|d| d == dir) {
            self.created_dirs.push(dir.to_path_buf());
        }
    }
}
