//! containerd's config.toml, read: its version, where the CRI's registry table is for that
//! version, the `config_path` it names, and which deprecated registry tables have entries.

use std::path::Path;

use toml_edit::{DocumentMut, Item, TableLike};

use super::{parse_toml, read_if_present, ContainerdFileError};

/// `--containerd-config` when it is not given.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The hosts directory when neither `--hosts-dir` nor the config names one.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// The deprecated CRI registry tables that, with entries, move containerd 2.1+'s CRI to local
/// pull (`CheckLocalImagePullConfigs`, `internal/cri/config/config.go:535`).
pub(crate) const LOCAL_PULL_TABLES: [&str; 2] = ["configs", "auths"];

/// The deprecated `mirrors` table: containerd refuses it beside `config_path`.
pub(crate) const MIRRORS_TABLE: &str = "mirrors";

/// What containerd's config file says about the CRI's registry settings (`credgate doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistrySettings {
    /// The dotted key of the registry table for this version.
    pub table: String,
    /// `config_path` as written; `None` when absent or empty.
    pub config_path: Option<String>,
    /// The deprecated tables ([`LOCAL_PULL_TABLES`] and `mirrors`) that have entries.
    pub deprecated: Vec<&'static str>,
}

/// Reads the registry settings of the config at `path`; `None` when the file is missing.
pub(crate) fn read_registry_settings(
    path: &Path,
) -> Result<Option<RegistrySettings>, ContainerdFileError> {
    let Some(bytes) = read_if_present(path)? else {
        return Ok(None);
    };
    registry_settings(path, &String::from_utf8_lossy(&bytes)).map(Some)
}

/// The registry settings config text holds; `path` only names the file in errors.
pub(crate) fn registry_settings(
    path: &Path,
    text: &str,
) -> Result<RegistrySettings, ContainerdFileError> {
    let doc = parse_toml(path, text)?;
    let version = version(&doc, path)?;
    let keys = registry_keys(version);
    let deprecated = registry_table(&doc, &keys).map_or_else(Vec::new, |registry| {
        LOCAL_PULL_TABLES
            .into_iter()
            .chain([MIRRORS_TABLE])
            .filter(|name| !table_entries(registry, name).is_empty())
            .collect()
    });
    Ok(RegistrySettings {
        table: keys.join("."),
        config_path: config_path(&doc, &keys, path)?,
        deprecated,
    })
}

/// A config file's bytes as text; containerd's TOML parser takes nothing but UTF-8.
pub(crate) fn config_text(path: &Path, bytes: Vec<u8>) -> Result<String, ContainerdFileError> {
    String::from_utf8(bytes).map_err(|_| ContainerdFileError::Parse {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: "not UTF-8 text".to_string(),
    })
}

/// The config's version: 2 or 3 (the versions credgate reads and edits).
pub(crate) fn version(doc: &DocumentMut, path: &Path) -> Result<i64, ContainerdFileError> {
    let Some(item) = doc.get("version") else {
        return Err(ContainerdFileError::Version1 {
            path: path.to_path_buf(),
        });
    };
    match item.as_integer() {
        Some(version @ (2 | 3)) => Ok(version),
        _ => Err(ContainerdFileError::UnsupportedVersion {
            path: path.to_path_buf(),
            version: item.to_string().trim().to_string(),
        }),
    }
}

/// The CRI registry table's path for a config version.
pub(crate) fn registry_keys(version: i64) -> [&'static str; 3] {
    match version {
        2 => ["plugins", "io.containerd.grpc.v1.cri", "registry"],
        _ => ["plugins", "io.containerd.cri.v1.images", "registry"],
    }
}

/// The registry table, read-only; `None` when some table on the way is missing.
pub(crate) fn registry_table<'a>(doc: &'a DocumentMut, keys: &[&str]) -> Option<&'a dyn TableLike> {
    let mut table: &dyn TableLike = doc.as_table();
    for key in keys {
        table = table.get(key)?.as_table_like()?;
    }
    Some(table)
}

/// `config_path` as written; `None` when absent or empty.
pub(crate) fn config_path(
    doc: &DocumentMut,
    keys: &[&str],
    path: &Path,
) -> Result<Option<String>, ContainerdFileError> {
    let Some(item) = registry_table(doc, keys).and_then(|t| t.get("config_path")) else {
        return Ok(None);
    };
    let value = item
        .as_str()
        .ok_or_else(|| ContainerdFileError::NotAString {
            path: path.to_path_buf(),
            key: format!("{}.config_path", keys.join(".")),
        })?;
    Ok(Some(value.to_string()).filter(|v| !v.is_empty()))
}

/// The directory a `config_path` list stands for once it must be one: its first, else the
/// default (install writes it; doctor checks it).
pub(crate) fn first_hosts_dir(list: &str) -> &str {
    list.split(':')
        .find(|d| !d.is_empty())
        .unwrap_or(DEFAULT_HOSTS_DIR)
}

/// `keys` as a TOML key path, quoting the keys that hold dots (`plugins."io.containerd…".registry`).
pub(crate) fn toml_key_path(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| {
            if key.contains('.') {
                format!("\"{key}\"")
            } else {
                key.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The names of the entries in the registry's sub-table `name` (none when it is absent or
/// empty: an empty table decodes to an empty map, which containerd treats as unset).
pub(crate) fn table_entries<'a>(registry: &'a dyn TableLike, name: &str) -> Vec<&'a str> {
    registry
        .get(name)
        .and_then(Item::as_table_like)
        .map(|table| table.iter().map(|(key, _)| key).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Option<RegistrySettings>, ContainerdFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        read_registry_settings(&path)
    }

    #[test]
    fn the_registry_table_and_config_path_follow_the_version() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
                  config_path = \"/etc/containerd/certs.d\"\n\
                  [plugins.\"io.containerd.grpc.v1.cri\".registry.auths.\"a.test\"]\n";
        let read = settings(v2).unwrap().unwrap();
        assert_eq!(read.table, "plugins.io.containerd.grpc.v1.cri.registry");
        assert_eq!(read.config_path.as_deref(), Some("/etc/containerd/certs.d"));
        assert_eq!(read.deprecated, ["auths"]);
        let v3 =
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = ''\n";
        let read = settings(v3).unwrap().unwrap();
        assert_eq!(read.table, "plugins.io.containerd.cri.v1.images.registry");
        assert_eq!(read.config_path, None);
    }

    #[test]
    fn a_missing_file_is_none_and_bad_ones_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_registry_settings(&dir.path().join("none.toml"))
            .unwrap()
            .is_none());
        let err = settings("root = \"/r\"\n").unwrap_err();
        assert!(matches!(err, ContainerdFileError::Version1 { .. }));
        assert!(err.is_bad_input());
        let err = settings("version = 2\nplugins = [\n").unwrap_err();
        assert!(matches!(err, ContainerdFileError::Parse { .. }), "{err}");
        let err = settings(
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = 1\n",
        )
        .unwrap_err();
        assert!(
            matches!(err, ContainerdFileError::NotAString { .. }),
            "{err}"
        );
        let err = read_registry_settings(dir.path()).unwrap_err();
        assert!(!err.is_bad_input(), "{err}");
    }

    #[test]
    fn a_config_path_list_stands_for_its_first_directory() {
        assert_eq!(first_hosts_dir("/a:/b"), "/a");
        assert_eq!(first_hosts_dir(":/b"), "/b");
        assert_eq!(first_hosts_dir(":"), DEFAULT_HOSTS_DIR);
    }
}
