//! containerd's files, read-only: what its config.toml says about the CRI's registry
//! ([`config_file`]), what the hosts directory holds ([`hosts_dir`]), what one hosts.toml
//! tells containerd about each host ([`host_settings`]) and which of those hosts are
//! credgate's ([`credgate_hosts`]). `credgate install` plans its edits on top of this reading,
//! `credgate doctor` checks it, and the daemon's mirror resolution (`crate::mirrors`) learns
//! from it which hosts it may dial and how; none of them reads these files any other way.

use std::path::{Path, PathBuf};

use toml_edit::DocumentMut;

use crate::text_position::line_column;

mod config_file;
mod credgate_hosts;
mod host_settings;
mod hosts_dir;
mod routing;

pub(crate) use config_file::{
    config_path, config_text, first_hosts_dir, read_registry_settings, registry_keys,
    registry_settings, registry_table, table_entries, toml_key_path, version, RegistrySettings,
    LOCAL_PULL_TABLES, MIRRORS_TABLE,
};
pub use config_file::{DEFAULT_CONTAINERD_CONFIG, DEFAULT_HOSTS_DIR};
pub(crate) use credgate_hosts::{
    carries_secret, fronted_url, visit_secret_headers, CredgateHost, Owner, MIRROR_HEADER,
    MIRROR_PATH_PREFIX, SECRET_HEADER,
};
pub(crate) use host_settings::{
    clean_path, host_position, read_hosts_file, shown_key, Capabilities, HostScheme, HostSettings,
    HostsFile, MAX_HOSTS,
};
pub(crate) use hosts_dir::{host_dir_for, registry_dirs, registry_of_dir, DEFAULT_HOSTS_SUBDIR};
pub use routing::HostsRouting;

/// Why one of containerd's files could not be read as containerd would; every variant names
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{path}: no `version` key, so this is a version 1 containerd config, which credgate \
         does not edit; migrate it to version 2 or 3 first (containerd 2.x: `containerd config migrate`)"
    )]
    Version1 { path: PathBuf },
    #[error("{path}: containerd config version {version} is not one credgate edits (2 or 3)")]
    UnsupportedVersion { path: PathBuf, version: String },
    #[error("{path}: `{key}` is not a string")]
    NotAString { path: PathBuf, key: String },
    #[error("{path}: refused: {reason}")]
    Refused { path: PathBuf, reason: &'static str },
}

impl ContainerdFileError {
    /// The file's content is wrong (the user's to fix), rather than the file unreadable.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Read { .. })
    }
}

/// The file's bytes; `None` when it does not exist.
pub(crate) fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, ContainerdFileError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContainerdFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses TOML with toml_edit, naming the file, line and column on failure.
pub(crate) fn parse_toml(path: &Path, text: &str) -> Result<DocumentMut, ContainerdFileError> {
    text.parse()
        .map_err(|e: toml_edit::TomlError| parse_error(path, text, &e))
}

/// `error` in `text` as the one-line error naming the file, line and column.
pub(crate) fn parse_error(
    path: &Path,
    text: &str,
    error: &toml_edit::TomlError,
) -> ContainerdFileError {
    let (line, column) = line_column(text, error.span().map_or(0, |s| s.start));
    ContainerdFileError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        // One line: toml_edit puts its expectations on a second one.
        message: error.message().trim_end().replace('\n', "; "),
    }
}
