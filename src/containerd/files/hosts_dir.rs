//! containerd's hosts directory, read: one directory per registry (`_default` for every
//! registry without one), each with a hosts.toml; which directory containerd reads for a
//! registry, and which registry a directory is for.

use std::path::{Path, PathBuf};

use super::ContainerdFileError;

/// The hosts dir's directory for every registry without one of its own.
pub(crate) const DEFAULT_HOSTS_SUBDIR: &str = "_default";

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

/// The registry (as containerd names it in `ns`) whose directory is called `name`: the
/// inverse of containerd's `host_port_` spelling (`registry.test_5000_` is
/// `registry.test:5000`), else the name itself.
pub(crate) fn registry_of_dir(name: &str) -> String {
    let spelled = name
        .strip_suffix('_')
        .and_then(|rest| rest.rsplit_once('_'))
        .filter(|(host, port)| {
            !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        });
    match spelled {
        Some((host, port)) => format!("{host}:{port}"),
        None => name.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_directory_names_its_registry_with_containerds_port_spelling_undone() {
        for (name, registry) in [
            ("registry.test", "registry.test"),
            ("registry.test_5000_", "registry.test:5000"),
            ("registry.test:5000", "registry.test:5000"),
            ("[::1]_5000_", "[::1]:5000"),
            ("my_registry.test", "my_registry.test"),
            ("odd_x_", "odd_x_"),
            ("_5000_", "_5000_"),
        ] {
            assert_eq!(registry_of_dir(name), registry, "{name}");
        }
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
