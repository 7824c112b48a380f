//! The sources that make credgate run programs as root: each docker config and kubelet
//! provider config (and its plugin bin dir) must be root's and not writable by others, and a
//! docker config's `credsStore` / `credHelpers` must name helpers, never paths. Lookups
//! already refuse each of these; doctor says so ahead of time, with the fix.

use std::path::Path;

use crate::config::{Config, SourceEntry};
use crate::sources::docker_config::refused_helper_names;
use crate::sources::trusted_file;
use crate::system::Files;

use super::Check;

pub(super) fn check(config: &Config, files: &dyn Files) -> Vec<Check> {
    let mut checks = Vec::new();
    for source in &config.sources {
        match source {
            SourceEntry::Registry(_) => {}
            SourceEntry::DockerConfig(entry) => docker_config(&entry.path, files, &mut checks),
            SourceEntry::KubeletProvider(entry) => {
                let before = checks.len();
                for (what, path) in [
                    ("kubelet provider config", entry.config.as_path()),
                    ("kubelet provider bin_dir", entry.bin_dir.as_path()),
                ] {
                    checks.extend(loose(what, path, files, "the plugins it names"));
                }
                if checks.len() == before {
                    checks.push(Check::ok(format!(
                        "kubelet provider config {} and bin_dir {}: root's, not writable by others",
                        entry.config.display(),
                        entry.bin_dir.display()
                    )));
                }
            }
        }
    }
    checks
}

fn docker_config(path: &Path, files: &dyn Files, checks: &mut Vec<Check>) {
    if let Some(check) = loose("docker config", path, files, "the helpers it names") {
        checks.push(check);
        return;
    }
    // A missing or malformed file is the lookup's to report; here only the names matter.
    let Ok(bytes) = files.read(path) else {
        return;
    };
    let refused = refused_helper_names(path, &bytes).unwrap_or_default();
    if refused.is_empty() {
        checks.push(Check::ok(format!(
            "docker config {}: root's, not writable by others, names only plain helpers",
            path.display()
        )));
    }
    for (key, reason) in refused {
        checks.push(Check::warn(
            format!(
                "docker config {}: {key} {reason}; credgate refuses it and runs nothing",
                path.display()
            ),
            format!(
                "set {key} to a helper name found on PATH as docker-credential-NAME (e.g. \"pass\"), or remove it"
            ),
        ));
    }
}

/// A warning when others could write `path`, which credgate would then refuse.
fn loose(what: &str, path: &Path, files: &dyn Files, runs: &str) -> Option<Check> {
    let problem = trusted_file::check(files, path).err()?;
    Some(Check::warn(
        format!("{what} {problem}: credgate does not use it, since it runs {runs} as root"),
        problem.fix(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::fake::MemoryFiles;

    const CONFIG: &str = r#"
[[docker_config]]
path = "/root/.docker/config.json"

[[registry]]
match = "r.test"
helper = "/usr/local/bin/not-checked-here"

[[kubelet_provider]]
config = "/etc/kubernetes/cp.yaml"
bin_dir = "/usr/libexec/kubelet"
"#;

    fn run(files: &MemoryFiles) -> Vec<String> {
        let config = Config::parse(CONFIG, Path::new("/etc/credgate/config.toml")).unwrap();
        check(&config, files)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn healthy() -> MemoryFiles {
        let files = MemoryFiles::new();
        files.write(
            "/root/.docker/config.json",
            r#"{"credsStore":"pass"}"#,
            0o600,
        );
        files.write("/etc/kubernetes/cp.yaml", "", 0o644);
        files.write("/usr/libexec/kubelet", "", 0o755);
        files
    }

    #[test]
    fn root_owned_sources_with_plain_helper_names_are_ok() {
        let lines = run(&healthy());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
    }

    #[test]
    fn loose_configs_and_bin_dirs_are_warned_about_with_the_fix() {
        let files = healthy();
        files.write("/root/.docker/config.json", "{}", 0o666);
        files.chown("/etc/kubernetes/cp.yaml", 4242);
        files.write("/usr/libexec/kubelet", "", 0o777);
        let lines = run(&files);
        assert_eq!(
            lines,
            [
                "warn  docker config /root/.docker/config.json is writable by group or others (mode 0666): credgate does not use it, since it runs the helpers it names as root — fix: chmod go-w /root/.docker/config.json",
                "warn  kubelet provider config /etc/kubernetes/cp.yaml is owned by uid 4242, not root: credgate does not use it, since it runs the plugins it names as root — fix: chown root:root /etc/kubernetes/cp.yaml",
                "warn  kubelet provider bin_dir /usr/libexec/kubelet is writable by group or others (mode 0777): credgate does not use it, since it runs the plugins it names as root — fix: chmod go-w /usr/libexec/kubelet",
            ]
        );
    }

    #[test]
    fn a_config_in_a_directory_another_user_owns_is_warned_about_with_the_fix() {
        let files = healthy();
        files.dir("/root/.docker", 0o700, 4242);
        let lines = run(&files);
        assert_eq!(
            lines[0],
            "warn  docker config /root/.docker/config.json is in directory /root/.docker, owned by uid 4242, not root, who can replace it: credgate does not use it, since it runs the helpers it names as root — fix: chown root:root /root/.docker, or move /root/.docker/config.json to a directory only root can write"
        );
    }

    #[test]
    fn helper_names_outside_dockers_form_are_warned_about() {
        let files = healthy();
        files.write(
            "/root/.docker/config.json",
            r#"{"credsStore":"../../tmp/x","credHelpers":{"r.test":"pass","s.test":"/bin/sh"}}"#,
            0o600,
        );
        let lines = run(&files);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "warn  docker config /root/.docker/config.json: credsStore is not a helper name"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#"credHelpers["s.test"] is not a helper name"#),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("fix: set credHelpers[\"s.test\"] to a helper name"),
            "{}",
            lines[1]
        );
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("/bin/sh") && !l.contains("tmp/x")),
            "{lines:?}"
        );
    }
}
