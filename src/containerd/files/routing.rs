//! Whether containerd reads the hosts directory credgate writes: what config.toml says of the
//! CRI's `config_path` (missing file, unset, a `a:b` list, another directory, or that one).
//! A pod cannot restart containerd, so `credgate install --hosts-only` and
//! `credgate serve --containerd-config` report this instead of editing config.toml.

use std::fmt;
use std::path::{Path, PathBuf};

use super::config_file::{config_path, config_text, registry_keys, toml_key_path, version};
use super::{parse_toml, read_if_present, DEFAULT_HOSTS_DIR};

/// How containerd's config routes pulls to hosts.toml files, as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsRouting {
    /// `config_path` names one directory: the hosts directory credgate writes, when one was
    /// given to compare with.
    Routed { config: PathBuf, dir: String },
    /// No config file: containerd runs on its built-in defaults.
    NoConfig { config: PathBuf, hosts_dir: String },
    /// `config_path` is absent or empty: containerd reads no hosts.toml at all.
    Unset {
        config: PathBuf,
        key: String,
        hosts_dir: String,
    },
    /// `config_path` lists several directories, which 2.1+'s transfer pulls ignore.
    List {
        config: PathBuf,
        key: String,
        list: String,
        hosts_dir: String,
    },
    /// `config_path` names one directory, not the one credgate writes.
    OtherDir {
        config: PathBuf,
        key: String,
        dir: String,
        hosts_dir: String,
    },
    /// The file could not be read or parsed as containerd would (the error names it).
    Unreadable { reason: String },
}

impl HostsRouting {
    /// Reads `config` and compares its `config_path` with `hosts_dir` (the directory credgate
    /// writes hosts.toml into; `None` accepts any one directory).
    pub fn assess(config: &Path, hosts_dir: Option<&Path>) -> HostsRouting {
        let shown_dir = hosts_dir.map_or(DEFAULT_HOSTS_DIR.to_string(), |dir| {
            dir.display().to_string()
        });
        let config_buf = config.to_path_buf();
        let read = read_if_present(config).and_then(|bytes| {
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            let text = config_text(config, bytes)?;
            let doc = parse_toml(config, &text)?;
            let keys = registry_keys(version(&doc, config)?);
            Ok(Some((
                toml_key_path(&keys),
                config_path(&doc, &keys, config)?,
            )))
        });
        match read {
            Err(error) => HostsRouting::Unreadable {
                reason: error.to_string(),
            },
            Ok(None) => HostsRouting::NoConfig {
                config: config_buf,
                hosts_dir: shown_dir,
            },
            Ok(Some((key, None))) => HostsRouting::Unset {
                config: config_buf,
                key,
                hosts_dir: shown_dir,
            },
            Ok(Some((key, Some(list)))) if list.contains(':') => HostsRouting::List {
                config: config_buf,
                key,
                list,
                hosts_dir: shown_dir,
            },
            Ok(Some((key, Some(dir)))) => match hosts_dir {
                Some(wanted) if Path::new(&dir) != wanted => HostsRouting::OtherDir {
                    config: config_buf,
                    key,
                    dir,
                    hosts_dir: shown_dir,
                },
                _ => HostsRouting::Routed {
                    config: config_buf,
                    dir,
                },
            },
        }
    }

    /// containerd's pulls reach the hosts.toml files credgate writes.
    pub fn is_routed(&self) -> bool {
        matches!(self, HostsRouting::Routed { .. })
    }

    /// The one directory `config_path` names, whether or not it is credgate's.
    pub fn named_dir(&self) -> Option<&str> {
        match self {
            HostsRouting::Routed { dir, .. } | HostsRouting::OtherDir { dir, .. } => Some(dir),
            _ => None,
        }
    }
}

/// One line: what containerd does, and for every case but [`HostsRouting::Routed`] what the
/// operator must change on the node (a pod cannot restart containerd).
impl fmt::Display for HostsRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const RESTART: &str = "and restart containerd (on the node: a pod cannot)";
        match self {
            HostsRouting::Routed { config, dir } => write!(
                f,
                "containerd reads hosts.toml from {dir} (config_path in {})",
                config.display()
            ),
            HostsRouting::NoConfig { config, hosts_dir } => write!(
                f,
                "{} does not exist, so containerd runs on its built-in defaults, whose \
                 config_path is unset (up to 2.1) or a two-directory list (2.2+): no pull reaches \
                 credgate; write it with config_path = \"{hosts_dir}\" in the CRI registry table \
                 (plugins.\"io.containerd.grpc.v1.cri\".registry in a version 2 config, \
                 plugins.\"io.containerd.cri.v1.images\".registry in version 3) {RESTART}",
                config.display()
            ),
            HostsRouting::Unset {
                config,
                key,
                hosts_dir,
            } => write!(
                f,
                "config_path in {} is unset, so containerd reads no hosts.toml and no pull \
                 reaches credgate; set [{key}] config_path = \"{hosts_dir}\" {RESTART}",
                config.display()
            ),
            HostsRouting::List {
                config,
                key,
                list,
                hosts_dir,
            } => write!(
                f,
                "config_path in {} is a list ({list:?}); containerd 2.1+ pulls CRI images through \
                 its transfer service, which reads no hosts.toml for a list (containerd#12808), so \
                 those pulls bypass credgate; set [{key}] config_path = \"{hosts_dir}\" (one \
                 directory) {RESTART}",
                config.display()
            ),
            HostsRouting::OtherDir {
                config,
                key,
                dir,
                hosts_dir,
            } => write!(
                f,
                "config_path in {} is {dir:?}, but credgate writes hosts.toml into {hosts_dir}, \
                 which containerd does not read; point credgate at {dir:?}, or set [{key}] \
                 config_path = \"{hosts_dir}\" {RESTART}",
                config.display()
            ),
            HostsRouting::Unreadable { reason } => write!(
                f,
                "{reason}: cannot tell whether containerd reads credgate's hosts.toml"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assess(text: Option<&str>, hosts_dir: Option<&str>) -> HostsRouting {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let routing = HostsRouting::assess(&path, hosts_dir.map(Path::new));
        // Paths inside the temp dir would differ per run: compare without them.
        match routing {
            HostsRouting::Unreadable { reason } => HostsRouting::Unreadable {
                reason: reason.replace(&path.display().to_string(), "<config>"),
            },
            other => other,
        }
    }

    const V2: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n";
    const V3: &str = "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n";

    #[test]
    fn one_directory_is_routed_when_it_is_credgates() {
        let text = format!("{V3}config_path = '/etc/containerd/certs.d'\n");
        let routed = assess(Some(&text), Some("/etc/containerd/certs.d"));
        assert!(routed.is_routed(), "{routed}");
        assert_eq!(routed.named_dir(), Some("/etc/containerd/certs.d"));
        assert!(assess(Some(&text), None).is_routed());
        let other = assess(Some(&text), Some("/srv/certs.d"));
        assert!(matches!(other, HostsRouting::OtherDir { .. }), "{other}");
        assert_eq!(other.named_dir(), Some("/etc/containerd/certs.d"));
        assert!(other
            .to_string()
            .contains("credgate writes hosts.toml into /srv/certs.d"));
    }

    #[test]
    fn unset_empty_and_lists_are_not_routed_and_say_what_to_set() {
        for text in [V2.to_string(), format!("{V2}config_path = \"\"\n")] {
            let unset = assess(Some(&text), Some("/etc/containerd/certs.d"));
            assert!(matches!(unset, HostsRouting::Unset { .. }), "{unset}");
            assert_eq!(unset.named_dir(), None);
            assert!(
                unset.to_string().contains(
                    "set [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \
                     \"/etc/containerd/certs.d\" and restart containerd"
                ),
                "{unset}"
            );
        }
        let text = format!("{V3}config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n");
        let list = assess(Some(&text), None);
        assert!(matches!(list, HostsRouting::List { .. }), "{list}");
        let line = list.to_string();
        assert!(line.contains("containerd#12808"), "{line}");
        assert!(
            line.contains("[plugins.\"io.containerd.cri.v1.images\".registry] config_path"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_missing_or_broken_file_is_reported_not_an_error() {
        let missing = assess(None, None);
        assert!(
            matches!(missing, HostsRouting::NoConfig { .. }),
            "{missing}"
        );
        assert!(!missing.is_routed());
        assert_eq!(
            assess(Some("root = \"/r\"\n"), None),
            HostsRouting::Unreadable {
                reason: "<config>: no `version` key, so this is a version 1 containerd config, \
                         which credgate does not edit; migrate it to version 2 or 3 first \
                         (containerd 2.x: `containerd config migrate`)"
                    .to_string()
            }
        );
        let broken = assess(Some("version = 2\nplugins = [\n"), None);
        assert!(
            broken
                .to_string()
                .starts_with("<config>:3:1: invalid array"),
            "{broken}"
        );
    }
}
