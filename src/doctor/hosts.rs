//! The hosts directory: `_default/hosts.toml` and every per-registry hosts.toml (each shadows
//! `_default` for its registry) must list credgate's endpoint first, with the secret from
//! `listen.mirror_secret_file`, and every one that carries a secret header must be readable by
//! root alone; then, for each registry the keychain knows, are its pulls covered? Secrets are
//! compared in constant time and never printed.

use std::io;
use std::path::Path;

use crate::config::Listen;
use crate::containerd::files::{
    carries_secret, read_hosts, registry_dirs, DEFAULT_HOSTS_SUBDIR as DEFAULT_DIR,
};
use crate::identity::Scope;
use crate::secret::{MirrorSecret, SecretError};
use crate::system::{Files, System};

use super::Check;

/// The shared fix for every hosts.toml problem: install rewrites them.
fn install_fix(hosts_dir: &Path) -> String {
    format!("credgate install --hosts-dir {}", hosts_dir.display())
}

pub(super) fn check(
    hosts_dir: &Path,
    listen: &Listen,
    system: &System,
    scopes: &[Scope],
) -> Vec<Check> {
    match registry_dir_names(hosts_dir) {
        Ok(names) => analyse(hosts_dir, &names, system.files.as_ref(), listen, scopes),
        Err(e) => vec![Check::fail(
            format!("hosts dir {}: cannot list it: {e}", hosts_dir.display()),
            install_fix(hosts_dir),
        )],
    }
}

/// Directory names in the hosts dir other than `_default`, sorted (the listing install uses).
fn registry_dir_names(hosts_dir: &Path) -> io::Result<Vec<String>> {
    let dirs = registry_dirs(hosts_dir)?;
    Ok(dirs
        .iter()
        .filter_map(|dir| dir.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect())
}

/// The checks, given the per-registry directory names; every file is read through `files`.
pub(super) fn analyse(
    hosts_dir: &Path,
    registry_dirs: &[String],
    files: &dyn Files,
    listen: &Listen,
    scopes: &[Scope],
) -> Vec<Check> {
    let mut checks = Vec::new();
    let secret = read_secret(files, &listen.mirror_secret_file, &mut checks);
    let expected = Expected {
        url: listen.mirror_url(),
        secret,
        secret_file: &listen.mirror_secret_file,
        fix: install_fix(hosts_dir),
    };
    let default_ok = hosts_file(hosts_dir, DEFAULT_DIR, files, &expected, &mut checks);
    let mut covered = Vec::new();
    for name in registry_dirs {
        let ok = hosts_file(hosts_dir, name, files, &expected, &mut checks);
        covered.push((name.as_str(), ok));
    }
    for scope in scopes {
        checks.push(coverage(
            scope,
            hosts_dir,
            default_ok,
            &covered,
            &expected.fix,
        ));
    }
    checks
}

struct Expected<'a> {
    url: String,
    secret: Option<MirrorSecret>,
    secret_file: &'a Path,
    fix: String,
}

/// The secret as the daemon reads it ([`MirrorSecret::from_file_text`]); anything it would
/// refuse is a FAIL line naming the file, never its content.
fn read_secret(files: &dyn Files, path: &Path, checks: &mut Vec<Check>) -> Option<MirrorSecret> {
    let read = files
        .read(path)
        .map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|bytes| MirrorSecret::from_file_text(path, bytes));
    match read {
        Ok(secret) => Some(secret),
        Err(SecretError::Read { source, .. }) => {
            checks.push(Check::fail(
                format!("mirror secret file {}: cannot read it: {source}", path.display()),
                "start credgate once (systemctl start credgate: it generates the secret), then credgate install",
            ));
            None
        }
        Err(e) => {
            checks.push(Check::fail(
                format!("{e}: credgate cannot start its endpoint with it"),
                format!(
                    "delete {} and restart credgate (systemctl restart credgate: it generates a new secret), then credgate install",
                    path.display()
                ),
            ));
            None
        }
    }
}

/// Checks one `<dir>/hosts.toml`; true when it sends pulls to credgate first with its secret.
fn hosts_file(
    hosts_dir: &Path,
    dir: &str,
    files: &dyn Files,
    expected: &Expected<'_>,
    checks: &mut Vec<Check>,
) -> bool {
    let path = hosts_dir.join(dir).join("hosts.toml");
    let shown = path.display();
    let shadow = if dir == DEFAULT_DIR {
        "registries without their own directory".to_string()
    } else {
        format!("{dir} (this directory shadows _default)")
    };
    let text = match files.read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let fix = if dir == DEFAULT_DIR {
                expected.fix.clone()
            } else {
                format!(
                    "add {shown} with `server = \"https://{dir}\"`, then {}",
                    expected.fix
                )
            };
            checks.push(Check::fail(
                format!("{shown} is missing: pulls from {shadow} bypass credgate"),
                fix,
            ));
            return false;
        }
        Err(e) => {
            checks.push(Check::fail(
                format!("{shown}: cannot read it: {e}"),
                "run doctor as root",
            ));
            return false;
        }
    };
    let ok = listing(&path, &text, &shadow, expected, checks);
    // Whatever the listing says: a stale or misplaced secret header is a secret too.
    if carries_secret(&text) {
        if let Ok(stamp) = files.stamp(&path) {
            if stamp.mode & 0o077 != 0 {
                checks.push(Check::fail(
                    format!(
                        "{shown} carries the endpoint's secret and has mode {:04o}: users other \
                         than root can read it and pull through credgate with the node's credentials",
                        stamp.mode
                    ),
                    format!("chmod 600 {shown}"),
                ));
            }
        }
    }
    ok
}

/// Checks the hosts a hosts.toml lists; true when credgate's endpoint is first with its secret.
fn listing(
    path: &Path,
    text: &str,
    shadow: &str,
    expected: &Expected<'_>,
    checks: &mut Vec<Check>,
) -> bool {
    let shown = path.display();
    let hosts = match read_hosts(path, text) {
        Ok(hosts) => hosts,
        Err(e) => {
            checks.push(Check::fail(
                format!("{e}"),
                format!("correct the TOML, then {}", expected.fix),
            ));
            return false;
        }
    };
    let Some(ours) = hosts.iter().position(|h| h.url == expected.url) else {
        let stale = hosts.iter().find(|h| h.is_credgate());
        let what = match stale {
            Some(old) => format!("{shown} sends credgate's secret header to {}, not to listen.mirror {}: pulls from {shadow} bypass credgate", old.url, expected.url),
            None => format!("{shown} does not list credgate's endpoint {}: pulls from {shadow} bypass credgate", expected.url),
        };
        checks.push(Check::fail(what, expected.fix.clone()));
        return false;
    };
    let mut ok = true;
    if ours == 0 {
        checks.push(Check::ok(format!(
            "{shown} lists credgate's endpoint {} first",
            expected.url
        )));
    } else {
        checks.push(Check::warn(
            format!("{shown} lists {} before credgate's endpoint: containerd tries it first, so those pulls skip credgate while it answers", hosts[0].url),
            expected.fix.clone(),
        ));
        ok = false;
    }
    if let Some(secret) = &expected.secret {
        let values = &hosts[ours].secret_values;
        if values.iter().any(|v| secret.matches(v.as_bytes())) {
            checks.push(Check::ok(format!(
                "{shown}: the X-Credgate-Secret header matches {}",
                expected.secret_file.display()
            )));
        } else {
            let what = if values.is_empty() {
                format!("{shown}: credgate's host sends no X-Credgate-Secret header, so the endpoint answers 403 and pulls fall back to the registry without credgate")
            } else {
                format!("{shown}: the X-Credgate-Secret header differs from {}, so the endpoint answers 403 and pulls fall back to the registry without credgate", expected.secret_file.display())
            };
            checks.push(Check::fail(what, expected.fix.clone()));
            ok = false;
        }
    }
    ok
}

/// Whether pulls from the registry a scope names reach credgate: through its own directory
/// when there is one, else through `_default`.
fn coverage(
    scope: &Scope,
    hosts_dir: &Path,
    default_ok: bool,
    dirs: &[(&str, bool)],
    fix: &str,
) -> Check {
    let own = scope
        .exact_registry()
        .map(ToString::to_string)
        .and_then(|registry| dirs.iter().find(|(name, _)| *name == registry).copied());
    let (file, ok) = match own {
        Some((name, ok)) => (hosts_dir.join(name).join("hosts.toml"), ok),
        None => (hosts_dir.join(DEFAULT_DIR).join("hosts.toml"), default_ok),
    };
    if ok {
        Check::ok(format!(
            "keychain scope {scope}: its pulls go through credgate ({})",
            file.display()
        ))
    } else {
        Check::fail(
            format!("keychain scope {scope}: its pulls bypass credgate ({} does not send them to the endpoint with its secret)", file.display()),
            fix.to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;
    use crate::system::fake::MemoryFiles;

    const SECRET: &str = "hosts-secret-Q7";

    fn ours(secret: &str) -> String {
        format!(
            "[host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             [host.\"http://127.0.0.1:5008\".header]\n    X-Credgate-Secret = [\"{secret}\"]\n"
        )
    }

    fn listen() -> Listen {
        Listen {
            mirror_secret_file: "/etc/credgate/mirror-secret".into(),
            ..Listen::default()
        }
    }

    fn files() -> MemoryFiles {
        let files = MemoryFiles::new();
        files.write("/etc/credgate/mirror-secret", &format!("{SECRET}\n"), 0o600);
        files.write("/h/_default/hosts.toml", &ours(SECRET), 0o600);
        files
    }

    fn run(files: &MemoryFiles, dirs: &[&str], scopes: &[&str]) -> Vec<Check> {
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        let scopes: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).unwrap()).collect();
        let checks = analyse(Path::new("/h"), &dirs, files, &listen(), &scopes);
        for check in &checks {
            assert!(
                !check.to_string().contains(SECRET),
                "secret printed: {check}"
            );
        }
        checks
    }

    fn verdicts(checks: &[Check]) -> Vec<Verdict> {
        checks.iter().map(|c| c.verdict).collect()
    }

    #[test]
    fn an_installed_default_covers_every_registry_without_a_dir() {
        let checks = run(&files(), &[], &["git.example.com/group", "*.example.org"]);
        assert_eq!(verdicts(&checks), [Verdict::Ok; 4], "{checks:#?}");
        assert!(checks[2].what.contains("/h/_default/hosts.toml"));
    }

    #[test]
    fn a_registry_dir_without_credgate_shadows_default_and_fails_its_registry() {
        let files = files();
        files.write(
            "/h/git.example.com/hosts.toml",
            "server = \"https://git.example.com\"\n",
            0o600,
        );
        let checks = run(
            &files,
            &["git.example.com"],
            &["git.example.com/group", "other.test"],
        );
        let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            verdicts(&checks),
            [
                Verdict::Ok,
                Verdict::Ok,
                Verdict::Fail,
                Verdict::Fail,
                Verdict::Ok
            ],
            "{lines:#?}"
        );
        assert!(
            lines[2].contains("git.example.com/hosts.toml does not list credgate's endpoint"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].ends_with("fix: credgate install --hosts-dir /h"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("keychain scope git.example.com/group: its pulls bypass credgate")
        );
    }

    #[test]
    fn a_registry_dir_without_hosts_toml_shadows_default() {
        let checks = run(&files(), &["certs-only.test"], &["certs-only.test"]);
        let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            verdicts(&checks),
            [Verdict::Ok, Verdict::Ok, Verdict::Fail, Verdict::Fail],
            "{lines:#?}"
        );
        assert!(
            lines[2].contains("/h/certs-only.test/hosts.toml is missing"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn a_registry_dir_with_credgate_first_covers_its_registry() {
        let files = files();
        let text = format!(
            "server = \"https://git.example.com\"\n\n{}\n[host.\"https://m.test\"]\n",
            ours(SECRET)
        );
        files.write("/h/git.example.com/hosts.toml", &text, 0o600);
        let checks = run(&files, &["git.example.com"], &["git.example.com"]);
        assert_eq!(verdicts(&checks), [Verdict::Ok; 5], "{checks:#?}");
        assert!(checks[4].what.contains("/h/git.example.com/hosts.toml"));
    }

    #[test]
    fn a_secret_that_differs_fails_without_printing_either() {
        let files = files();
        files.write("/h/_default/hosts.toml", &ours("stale-secret-W2"), 0o600);
        let checks = run(&files, &[], &["git.example.com"]);
        let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            verdicts(&checks),
            [Verdict::Ok, Verdict::Fail, Verdict::Fail],
            "{lines:#?}"
        );
        assert!(lines[1].contains("differs from /etc/credgate/mirror-secret"));
        assert!(lines.iter().all(|l| !l.contains("stale-secret-W2")));
    }

    #[test]
    fn another_host_first_is_a_warning_and_a_readable_file_too() {
        let files = files();
        let text = format!("[host.\"https://m.test\"]\n\n{}", ours(SECRET));
        files.write("/h/_default/hosts.toml", &text, 0o644);
        let checks = run(&files, &[], &[]);
        assert_eq!(
            verdicts(&checks),
            [Verdict::Warn, Verdict::Ok, Verdict::Fail],
            "{checks:#?}"
        );
        assert_eq!(
            checks[2].fix.as_deref(),
            Some("chmod 600 /h/_default/hosts.toml")
        );
    }

    /// The mode failures among `checks`, as (file named, fix).
    fn mode_failures(checks: &[Check]) -> Vec<(String, String)> {
        checks
            .iter()
            .filter(|c| {
                c.what
                    .contains("carries the endpoint's secret and has mode")
            })
            .inspect(|c| assert_eq!(c.verdict, Verdict::Fail, "{c}"))
            .map(|c| {
                let file = c.what.split(' ').next().unwrap_or_default().to_string();
                (file, c.fix.clone().unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn attack_a_readable_hosts_toml_with_the_secret_fails_for_every_registry_dir() {
        let files = files();
        // Per-registry files: credgate first, a stale credgate host only (another address),
        // a header at the server level, and broken TOML naming the header; each readable by
        // others. A file without the header may be 0644.
        let first = format!("server = \"https://a.test\"\n\n{}", ours(SECRET));
        files.write("/h/a.test/hosts.toml", &first, 0o644);
        let stale = ours("stale-secret-W2").replace("5008", "6000");
        files.write("/h/b.test/hosts.toml", &stale, 0o640);
        let server = "server = \"https://c.test\"\n[header]\n  X-Credgate-Secret = \"x\"\n";
        files.write("/h/c.test/hosts.toml", server, 0o604);
        files.write(
            "/h/d.test/hosts.toml",
            "[host\nX-Credgate-Secret = 1\n",
            0o660,
        );
        files.write(
            "/h/e.test/hosts.toml",
            "server = \"https://e.test\"\n",
            0o644,
        );
        files.write("/h/f.test/hosts.toml", &first, 0o600);
        let dirs = ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test"];
        let checks = run(&files, &dirs, &[]);
        let expected: Vec<(String, String)> = ["a.test", "b.test", "c.test", "d.test"]
            .iter()
            .map(|d| {
                let file = format!("/h/{d}/hosts.toml");
                (file.clone(), format!("chmod 600 {file}"))
            })
            .collect();
        assert_eq!(mode_failures(&checks), expected, "{checks:#?}");
        assert!(checks.iter().any(|c| c
            .to_string()
            .contains("has mode 0640: users other than root")));
    }

    #[test]
    fn a_hosts_toml_readable_by_root_alone_has_no_mode_failure() {
        let checks = run(&files(), &[], &[]);
        assert!(mode_failures(&checks).is_empty(), "{checks:#?}");
    }

    #[test]
    fn missing_default_and_secret_files_fail_with_fixes() {
        let files = MemoryFiles::new();
        let checks = run(&files, &[], &[]);
        assert_eq!(
            verdicts(&checks),
            [Verdict::Fail, Verdict::Fail],
            "{checks:#?}"
        );
        assert!(checks[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("systemctl start credgate"));
        assert!(checks[1].what.contains("_default/hosts.toml is missing"));
    }

    #[test]
    fn an_empty_or_garbage_secret_file_fails_as_the_daemon_would_refuse_it() {
        for (content, says) in [
            ("\n", "is empty"),
            ("two words\n", "is not one line of visible ASCII"),
            ("line\nline\n", "is not one line of visible ASCII"),
        ] {
            let files = files();
            files.write("/etc/credgate/mirror-secret", content, 0o600);
            let checks = run(&files, &[], &[]);
            assert_eq!(
                verdicts(&checks),
                [Verdict::Fail, Verdict::Ok],
                "{checks:#?}"
            );
            assert!(checks[0].what.contains(says), "{}", checks[0]);
            assert!(
                checks[0]
                    .what
                    .starts_with("the mirror secret /etc/credgate/mirror-secret"),
                "{}",
                checks[0]
            );
            assert!(
                !checks[0].to_string().contains("two words"),
                "{}",
                checks[0]
            );
        }
    }

    #[test]
    fn a_stale_endpoint_address_is_named() {
        let files = files();
        files.write(
            "/h/_default/hosts.toml",
            &ours(SECRET).replace("5008", "6000"),
            0o600,
        );
        let checks = run(&files, &[], &[]);
        assert!(
            checks[0]
                .what
                .contains("to http://127.0.0.1:6000, not to listen.mirror"),
            "{checks:#?}"
        );
    }
}
