//! containerd's config.toml, edited: point the CRI registry table's `config_path` (found by
//! [`crate::containerd::files`]) at one hosts directory, keeping every comment and the
//! formatting, and refuse the tables containerd would reject beside it.
//!
//! Only the CRI's `registry.config_path` is set. The transfer service's own
//! `[plugins."io.containerd.transfer.v1.local"] config_path` (in the 1.7 and 2.x defaults) is
//! left as it is, because containerd never reads it: in 2.1.9 `plugins/transfer/plugin.go:175`
//! copies it into `local.TransferConfig.RegistryConfigPath` (`core/transfer/local/transfer.go:201`)
//! and nothing uses that field. The hosts directory of a transfer pull is the client's choice:
//! the CRI passes its own `registry.config_path` (`internal/cri/server/images/image_pull.go:311`),
//! `ctr` its `--hosts-dir` flag (`cmd/ctr/commands/images/pull.go:157`), and a client that passes
//! none gets no hosts.toml at all (`core/transfer/registry/registry.go:127`, `:359`).

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::containerd::files::{
    config_path, config_text, first_hosts_dir, parse_toml, registry_keys, registry_table,
    table_entries, toml_key_path, version, DEFAULT_HOSTS_DIR, LOCAL_PULL_TABLES, MIRRORS_TABLE,
};

use super::files::{Access, Change, Found};
use super::InstallError;

/// Mode of a containerd config that install creates (containerd's packages ship 0644).
const NEW_CONFIG_MODE: u32 = 0o644;
/// Written when there is no config: containerd merges it over its defaults, and every
/// containerd from 1.5 on reads version 2 (2.x migrates it in memory).
const MINIMAL_CONFIG: &str = "version = 2\n";

/// The planned edit of the containerd config, and the hosts directory it settles on.
#[derive(Debug, Clone)]
pub(crate) struct ConfigEdit {
    pub change: Change,
    pub hosts_dir: PathBuf,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads and edits the config at `path` (a missing file becomes a minimal version 2 config).
pub(crate) fn plan(path: &Path, hosts_dir_flag: Option<&Path>) -> Result<ConfigEdit, InstallError> {
    let before = Found::read(path)?;
    let text = match &before {
        Some(found) => config_text(path, found.bytes.clone())?,
        None => MINIMAL_CONFIG.to_string(),
    };
    let mut doc = parse_toml(path, &text)?;
    let version = version(&doc, path)?;
    let keys = registry_keys(version);
    let current = config_path(&doc, &keys, path)?;
    refuse_tables_containerd_rejects(&doc, version, &keys, path)?;
    let mut edit = ConfigEdit {
        change: Change::new(
            path,
            before,
            Vec::new(),
            Access::Kept {
                new_mode: NEW_CONFIG_MODE,
            },
        ),
        hosts_dir: PathBuf::new(),
        notes: Vec::new(),
        warnings: deprecated_table_warnings(&doc, &keys, path),
    };
    edit.hosts_dir = choose_hosts_dir(path, current.as_deref(), hosts_dir_flag, &mut edit.notes);
    let wanted = edit.hosts_dir.to_string_lossy().into_owned();
    if current.as_deref() != Some(wanted.as_str()) {
        let registry = table_at(doc.as_table_mut(), &keys, path)?;
        set_string(registry, "config_path", &wanted, path, &keys)?;
    }
    edit.change.after = doc.to_string().into_bytes();
    Ok(edit)
}

/// The hosts directory an earlier install used: `--hosts-dir`, else the one directory
/// `config_path` names, else the default.
pub(crate) fn installed_hosts_dir(path: &Path, hosts_dir_flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = hosts_dir_flag {
        return dir.to_path_buf();
    }
    let named = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<DocumentMut>().ok())
        .and_then(|doc| {
            let version = version(&doc, path).ok()?;
            config_path(&doc, &registry_keys(version), path).ok()?
        });
    match named {
        Some(dir) if !dir.contains(':') => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_HOSTS_DIR),
    }
}

/// `--hosts-dir` wins; else the directory `config_path` already names (the first, when it is
/// a list); else the default.
fn choose_hosts_dir(
    path: &Path,
    current: Option<&str>,
    flag: Option<&Path>,
    notes: &mut Vec<String>,
) -> PathBuf {
    let file = path.display();
    match (flag, current) {
        (Some(dir), Some(old)) if Path::new(old) != dir => {
            notes.push(format!(
                "config_path in {file} was {old:?}; it becomes {}",
                dir.display()
            ));
            dir.to_path_buf()
        }
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(list)) if list.contains(':') => {
            let first = first_hosts_dir(list);
            notes.push(format!(
                "config_path in {file} lists several directories ({list:?}); containerd 2.1+ \
                 reads only one, so it becomes {first:?}: move any hosts.toml kept in the others there"
            ));
            PathBuf::from(first)
        }
        (None, Some(dir)) => {
            notes.push(format!(
                "using hosts dir {dir}: config_path in {file} already names it"
            ));
            PathBuf::from(dir)
        }
        (None, None) => PathBuf::from(DEFAULT_HOSTS_DIR),
    }
}

/// Refuses a config that containerd would reject once `config_path` is set, since its CRI
/// plugin would then not load at all: `mirrors` with entries (1.6, 1.7 and 2.1 all fail with
/// "`mirrors` cannot be set when `config_path` is provided"), and in a version 2 config a
/// `configs.<host>.tls` table (1.6 and 1.7: "`configs.tls` cannot be set ...").
fn refuse_tables_containerd_rejects(
    doc: &DocumentMut,
    version: i64,
    keys: &[&str],
    path: &Path,
) -> Result<(), InstallError> {
    let Some(registry) = registry_table(doc, keys) else {
        return Ok(());
    };
    let mirrors = table_entries(registry, MIRRORS_TABLE);
    if !mirrors.is_empty() {
        return Err(InstallError::RejectedWithConfigPath {
            path: path.to_path_buf(),
            key: format!("{}.mirrors", toml_key_path(keys)),
            entries: mirrors.join(", "),
            containerd: "containerd",
        });
    }
    let configs = registry.get("configs").and_then(Item::as_table_like);
    let with_tls: Vec<&str> = configs
        .into_iter()
        .flat_map(|configs| configs.iter())
        .filter(|(_, config)| config.get("tls").is_some())
        .map(|(host, _)| host)
        .collect();
    if version == 2 && !with_tls.is_empty() {
        return Err(InstallError::RejectedWithConfigPath {
            path: path.to_path_buf(),
            key: format!("{}.configs.<host>.tls", toml_key_path(keys)),
            entries: with_tls.join(", "),
            containerd: "containerd 1.x",
        });
    }
    Ok(())
}

/// One line per [`LOCAL_PULL_TABLES`] table that has entries (`mirrors` is refused before
/// this).
fn deprecated_table_warnings(doc: &DocumentMut, keys: &[&str], path: &Path) -> Vec<String> {
    let Some(registry) = registry_table(doc, keys) else {
        return Vec::new();
    };
    LOCAL_PULL_TABLES
        .into_iter()
        .filter(|name| !table_entries(registry, name).is_empty())
        .map(|name| {
            format!(
                "warning: {}: `{}.{name}` is deprecated, and while it has entries containerd \
                 2.1+ pulls CRI images with local pull instead of the transfer service (still \
                 through config_path); move it to hosts.toml files and Kubernetes pull secrets",
                path.display(),
                toml_key_path(keys)
            )
        })
        .collect()
}

/// The table at `keys`, creating missing ones (implicit, so no empty headers appear).
fn table_at<'a>(
    root: &'a mut Table,
    keys: &[&str],
    path: &Path,
) -> Result<&'a mut Table, InstallError> {
    let mut table = root;
    for (depth, key) in keys.iter().enumerate() {
        let item = table.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        table = item.as_table_mut().ok_or_else(|| InstallError::NotATable {
            path: path.to_path_buf(),
            key: keys[..=depth].join("."),
        })?;
    }
    Ok(table)
}

/// Sets `key` to a string, keeping the decoration (spacing, trailing comment) and the quoting
/// (`'literal'`, as containerd 2.x writes its defaults, or `"basic"`) of the old value.
fn set_string(
    table: &mut Table,
    key: &str,
    value: &str,
    path: &Path,
    keys: &[&str],
) -> Result<(), InstallError> {
    match table.get_mut(key) {
        None => {
            table.insert(key, toml_edit::value(value));
            Ok(())
        }
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            let literal = match &*old {
                Value::String(string) => string
                    .as_repr()
                    .and_then(|repr| repr.as_raw().as_str())
                    .is_some_and(|raw| raw.starts_with('\'')),
                _ => false,
            };
            *old = string_value(value, literal);
            *old.decor_mut() = decor;
            Ok(())
        }
        Some(_) => Err(InstallError::NotAString {
            path: path.to_path_buf(),
            key: format!("{}.{key}", keys.join(".")),
        }),
    }
}

/// A string value, as a literal string when asked and possible (no `'` or newline in it).
fn string_value(value: &str, literal: bool) -> Value {
    let as_literal = || format!("'{value}'").parse::<Value>().ok();
    literal
        .then(as_literal)
        .flatten()
        .filter(|parsed| parsed.as_str() == Some(value))
        .unwrap_or_else(|| Value::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::files::ContainerdFileError;

    fn planned(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let edit = plan(&path, Some(Path::new("/hosts"))).unwrap();
        String::from_utf8(edit.change.after).unwrap()
    }

    #[test]
    fn a_missing_registry_table_is_added_after_its_plugin_and_the_rest_is_kept() {
        let text = "# minimal\nversion = 3\n\n[plugins.\"io.containerd.cri.v1.images\"]\n  \
                    snapshotter = \"overlayfs\" # fast\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  x = 1\n";
        let expected = "# minimal\nversion = 3\n\n[plugins.\"io.containerd.cri.v1.images\"]\n  \
                        snapshotter = \"overlayfs\" # fast\n\n\
                        [plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/hosts\"\n\n\
                        [plugins.\"io.containerd.grpc.v1.cri\"]\n  x = 1\n";
        assert_eq!(planned(text), expected);
        assert_eq!(planned(expected), expected);
    }

    #[test]
    fn an_old_value_keeps_its_trailing_comment() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
                    config_path = \"\" # set by credgate\n";
        assert_eq!(
            planned(text),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
             config_path = \"/hosts\" # set by credgate\n"
        );
    }

    #[test]
    fn a_literal_string_stays_literal() {
        let text =
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = ''\n";
        assert_eq!(
            planned(text),
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/hosts'\n"
        );
        assert_eq!(string_value("/it's", true).to_string(), "\"/it's\"");
    }

    fn plan_text(text: &str) -> Result<ConfigEdit, InstallError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        plan(&path, Some(Path::new("/hosts")))
    }

    #[test]
    fn empty_deprecated_tables_are_unset_and_entries_are_refused_or_warned_about() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n\
                  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs]\n\
                  [plugins.\"io.containerd.grpc.v1.cri\".registry.auths]\n";
        assert!(plan_text(v2).unwrap().warnings.is_empty());
        let mirror =
            format!("{v2}[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"a.test\"]\n");
        assert!(matches!(
            plan_text(&mirror),
            Err(InstallError::RejectedWithConfigPath { entries, .. }) if entries == "a.test"
        ));
        let tls = "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"b.test\".tls]\n";
        assert!(matches!(
            plan_text(&format!("{v2}{tls}")),
            Err(InstallError::RejectedWithConfigPath { entries, .. }) if entries == "b.test"
        ));
        // containerd 2.x has no `configs.tls` any more: only the deprecation warning.
        let v3 = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry.configs.\"b.test\".tls]\n";
        assert_eq!(plan_text(v3).unwrap().warnings.len(), 1);
    }

    #[test]
    fn other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "version = 4\n").unwrap();
        assert!(matches!(
            plan(&path, None),
            Err(InstallError::ContainerdFile(
                ContainerdFileError::UnsupportedVersion { .. }
            ))
        ));
        std::fs::write(&path, "root = \"/var/lib/containerd\"\n").unwrap();
        assert!(matches!(
            plan(&path, None),
            Err(InstallError::ContainerdFile(
                ContainerdFileError::Version1 { .. }
            ))
        ));
    }
}
