//! containerd's hosts directory, read: one directory per registry (`_default` for every
//! registry without one), each with a hosts.toml listing the hosts containerd tries in file
//! order; a host that sends the `X-Credgate-Secret` header is credgate's.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, TableLike};

use super::{parse_toml, ContainerdFileError};

/// The hosts dir's directory for every registry without one of its own.
pub(crate) const DEFAULT_HOSTS_SUBDIR: &str = "_default";

/// The header the endpoint checks, as hosts.toml names it; a host table carrying it is
/// credgate's.
pub(crate) const SECRET_HEADER: &str = "X-Credgate-Secret";

/// The header of a fronted host: the operator's host key it stands for, exactly as the
/// hosts.toml writes it (docs/design.md, "Mirrors through the gate").
pub(crate) const MIRROR_HEADER: &str = "X-Credgate-Mirror";

/// The URL path prefix of the `n`th fronted host: `/mirror/<n>`. It only keeps hosts.toml's
/// table keys distinct; the target is [`MIRROR_HEADER`].
pub(crate) const MIRROR_PATH_PREFIX: &str = "/mirror/";

/// Directories in the hosts dir other than `_default`, sorted; none when it is missing.
/// Each shadows `_default` for its registry (install merges into them, doctor checks them).
pub(crate) fn registry_dirs(hosts_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(hosts_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != DEFAULT_HOSTS_SUBDIR
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The directories containerd looks in for registry `ns` (its `hostPaths`), in its order:
/// `host_port_` for `host:port`, then `ns` as sent, then `_default`. `ns` is the registry as
/// containerd names it in requests (`docker.io`, `registry.test:5000`), not canonicalised:
/// `registry.test:443` has directories of its own.
pub(crate) fn host_dir_candidates(hosts_dir: &Path, ns: &str) -> Vec<PathBuf> {
    let mut candidates = Vec::with_capacity(3);
    if let Some(at) = ns.rfind(':').filter(|at| *at > 0) {
        candidates.push(hosts_dir.join(format!("{}_{}_", &ns[..at], &ns[at + 1..])));
    }
    candidates.push(hosts_dir.join(ns));
    candidates.push(hosts_dir.join(DEFAULT_HOSTS_SUBDIR));
    candidates
}

/// The directory containerd reads for `ns`: the first of [`host_dir_candidates`] that exists,
/// or `None` (containerd then uses the registry itself). A name that exists but is a symlink
/// or not a directory is refused: containerd would follow or fail on it, and credgate does
/// not widen the hosts it dials on the strength of a file it cannot vouch for.
pub(crate) fn host_dir_for(
    hosts_dir: &Path,
    ns: &str,
) -> Result<Option<PathBuf>, ContainerdFileError> {
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." || ns == DEFAULT_HOSTS_SUBDIR {
        return Err(ContainerdFileError::Refused {
            path: hosts_dir.to_path_buf(),
            reason: "a registry name that is no directory name",
        });
    }
    for candidate in host_dir_candidates(hosts_dir, ns) {
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ContainerdFileError::Read {
                    path: candidate,
                    source,
                })
            }
        };
        if meta.file_type().is_symlink() {
            return Err(ContainerdFileError::Refused {
                path: candidate,
                reason: "a symlink; replace it with the directory itself",
            });
        }
        if !meta.is_dir() {
            return Err(ContainerdFileError::Refused {
                path: candidate,
                reason: "not a directory",
            });
        }
        return Ok(Some(candidate));
    }
    Ok(None)
}

/// One `[host."url"]` of a hosts.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    pub url: String,
    /// Whether its `[header]` table has an `X-Credgate-Secret` key, whatever its value.
    pub has_secret_header: bool,
    /// The string values of that header (a string or an array of them).
    pub secret_values: Vec<String>,
}

impl HostEntry {
    /// Carries the endpoint's secret header (even an empty or malformed one), so it is
    /// credgate's, perhaps from an older install: install replaces it, doctor names it.
    pub fn is_credgate(&self) -> bool {
        self.has_secret_header
    }
}

/// The host table `item` under `url`, as read.
pub(crate) fn host_entry(url: &str, item: &Item) -> HostEntry {
    let headers = item.get("header").and_then(Item::as_table_like);
    let secret_headers: Vec<&Item> = headers
        .into_iter()
        .flat_map(|headers| headers.iter())
        .filter(|(name, _)| name.eq_ignore_ascii_case(SECRET_HEADER))
        .map(|(_, value)| value)
        .collect();
    let secret_values = secret_headers
        .iter()
        .flat_map(|value| match value.as_value() {
            Some(toml_edit::Value::String(s)) => vec![s.value().clone()],
            Some(toml_edit::Value::Array(values)) => values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    HostEntry {
        url: url.to_string(),
        has_secret_header: !secret_headers.is_empty(),
        secret_values,
    }
}

/// The hosts of a hosts.toml in file order, which is the order containerd tries them in.
pub(crate) fn read_hosts(path: &Path, text: &str) -> Result<Vec<HostEntry>, ContainerdFileError> {
    let doc = parse_toml(path, text)?;
    let Some(hosts) = doc.get("host").and_then(Item::as_table_like) else {
        return Ok(Vec::new());
    };
    let mut entries: Vec<(Option<usize>, HostEntry)> = hosts
        .iter()
        .map(|(url, item)| {
            let position = item.as_table().and_then(Table::position);
            (position, host_entry(url, item))
        })
        .collect();
    // Dotted keys and sub-tables keep their order; positioned tables sort by where they are.
    entries.sort_by_key(|(position, _)| *position);
    Ok(entries.into_iter().map(|(_, entry)| entry).collect())
}

/// Calls `visit` with every `X-Credgate-Secret` value in a hosts.toml, whatever its shape:
/// the server's `[header]` and each host's, as a table, an inline table or dotted keys,
/// the header name in any case. `visit` may change them (install shows files redacted).
pub(crate) fn visit_secret_headers(doc: &mut DocumentMut, mut visit: impl FnMut(&mut Item)) {
    visit_header_table(doc.as_table_mut(), &mut visit);
    let Some(hosts) = doc.get_mut("host").and_then(Item::as_table_like_mut) else {
        return;
    };
    for (_, host) in hosts.iter_mut() {
        if let Some(host) = host.as_table_like_mut() {
            visit_header_table(host, &mut visit);
        }
    }
}

fn visit_header_table(owner: &mut dyn TableLike, visit: &mut dyn FnMut(&mut Item)) {
    let Some(headers) = owner.get_mut("header").and_then(Item::as_table_like_mut) else {
        return;
    };
    for (name, value) in headers.iter_mut() {
        if name.get().eq_ignore_ascii_case(SECRET_HEADER) {
            visit(value);
        }
    }
}

/// Whether a hosts.toml's text holds an `X-Credgate-Secret` header, so it must be readable by
/// root alone. Text that is not TOML counts when it names the header anywhere.
pub(crate) fn carries_secret(text: &str) -> bool {
    match text.parse::<DocumentMut>() {
        Ok(mut doc) => {
            let mut found = false;
            visit_secret_headers(&mut doc, |_| found = true);
            found
        }
        Err(_) => text
            .to_ascii_lowercase()
            .contains(&SECRET_HEADER.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> Vec<HostEntry> {
        read_hosts(Path::new("r/hosts.toml"), text).unwrap()
    }

    #[test]
    fn hosts_are_read_in_file_order_with_their_secret_values() {
        let text = "[host.\"https://b.test\"]\n  capabilities = [\"pull\"]\n\
                    [host.\"http://127.0.0.1:5008\"]\n  header = { x-credgate-secret = \"one\" }\n\
                    [host.\"https://a.test\"]\n  [host.\"https://a.test\".header]\n    \
                    X-Credgate-Secret = [\"two\", \"three\", 4]\n";
        let read = hosts(text);
        let urls: Vec<&str> = read.iter().map(|h| h.url.as_str()).collect();
        assert_eq!(
            urls,
            ["https://b.test", "http://127.0.0.1:5008", "https://a.test"]
        );
        assert!(!read[0].is_credgate());
        assert_eq!(read[1].secret_values, ["one"]);
        assert_eq!(read[2].secret_values, ["two", "three"]);
        assert!(read[1].is_credgate() && read[2].is_credgate());
    }

    #[test]
    fn the_secret_header_is_found_in_every_shape_and_only_there() {
        for text in [
            "[host.\"http://a:5008\".header]\n  X-Credgate-Secret = [\"s\"]\n",
            "[host.\"http://a:5008\"]\n  header = { x-credgate-secret = \"s\" }\n",
            "host.\"http://a:5008\".header.X-CREDGATE-SECRET = \"s\"\n",
            "server = \"https://r.test\"\n[header]\n  X-Credgate-Secret = \"s\"\n",
            "[host.\"x\"\n X-Credgate-Secret = \"s\"\n",
        ] {
            assert!(carries_secret(text), "{text}");
        }
        for text in [
            "",
            "server = \"https://r.test\"\n[host.\"https://m.test\".header]\n  X-Other = \"v\"\n",
            "# X-Credgate-Secret in a comment\n",
        ] {
            assert!(!carries_secret(text), "{text}");
        }
    }

    #[test]
    fn an_empty_secret_header_still_marks_credgates_host() {
        let read = hosts("[host.\"http://old:5008\".header]\n  X-Credgate-Secret = []\n");
        assert!(read[0].is_credgate());
        assert!(read[0].secret_values.is_empty());
    }

    #[test]
    fn a_hosts_toml_without_hosts_has_none_and_bad_toml_names_its_line() {
        assert!(hosts("server = \"https://r.test\"\n").is_empty());
        let err = read_hosts(Path::new("r/hosts.toml"), "server = \"x\"\n[host\n").unwrap_err();
        assert!(err.to_string().starts_with("r/hosts.toml:2:"), "{err}");
    }

    #[test]
    fn registry_dirs_skip_default_and_files_and_a_missing_dir_has_none() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["_default", "b.test", "a.test"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join(".credgate-install.json"), "{}").unwrap();
        let names: Vec<PathBuf> = registry_dirs(dir.path()).unwrap();
        assert_eq!(
            names,
            [dir.path().join("a.test"), dir.path().join("b.test")]
        );
        assert!(registry_dirs(&dir.path().join("none")).unwrap().is_empty());
    }

    #[test]
    fn a_registry_with_a_port_looks_in_containerds_directories_in_its_order() {
        let root = Path::new("/h");
        assert_eq!(
            host_dir_candidates(root, "registry.test:5000"),
            [
                root.join("registry.test_5000_"),
                root.join("registry.test:5000"),
                root.join("_default")
            ]
        );
        assert_eq!(
            host_dir_candidates(root, "docker.io"),
            [root.join("docker.io"), root.join("_default")]
        );
        assert_eq!(
            host_dir_candidates(root, "[::1]:5000")[0],
            root.join("[::1]_5000_")
        );
    }

    #[test]
    fn the_registry_directory_shadows_default_and_odd_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(host_dir_for(root, "r.test").unwrap(), None);
        std::fs::create_dir(root.join("_default")).unwrap();
        assert_eq!(
            host_dir_for(root, "r.test").unwrap(),
            Some(root.join("_default"))
        );
        std::fs::create_dir(root.join("r.test:5000")).unwrap();
        assert_eq!(
            host_dir_for(root, "r.test:5000").unwrap(),
            Some(root.join("r.test:5000"))
        );
        std::fs::create_dir(root.join("r.test_5000_")).unwrap();
        assert_eq!(
            host_dir_for(root, "r.test:5000").unwrap(),
            Some(root.join("r.test_5000_"))
        );
        std::os::unix::fs::symlink(root.join("_default"), root.join("link.test")).unwrap();
        let err = host_dir_for(root, "link.test").unwrap_err().to_string();
        assert!(
            err.contains("link.test") && err.contains("symlink"),
            "{err}"
        );
        std::fs::write(root.join("file.test"), "").unwrap();
        let err = host_dir_for(root, "file.test").unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        for ns in ["", "..", ".", "a/b", "_default"] {
            assert!(host_dir_for(root, ns).is_err(), "{ns}");
        }
    }
}
