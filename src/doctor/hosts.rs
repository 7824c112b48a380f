//! The hosts directory: `_default/hosts.toml` and every per-registry hosts.toml (each shadows
//! `_default` for its registry) must send pulls through credgate's endpoint as install fronts
//! them: a fronted host for each of the operator's pull hosts, in order, then credgate's
//! upstream host, then the operator's own hosts; each with the secret from
//! `listen.mirror_secret_file`, and every file that carries a secret header readable by root
//! alone. Each file is read as containerd reads it (`crate::containerd::files`, the reader
//! install and the daemon use), its chain (the hosts containerd tries, in order,
//! `crate::mirrors::Chain`) is listed, and a file rewritten since install so that its
//! fronting is lost is a warning. The daemon must look for mirrors in this same directory.
//! Then, for each registry the keychain knows, are its pulls covered? Secrets are compared in
//! constant time and never printed.

use std::io;
use std::path::Path;

use crate::config::{Config, Listen};
use crate::containerd::files::{
    carries_secret, read_hosts_file, registry_dirs, registry_of_dir, shown_key, Capabilities,
    CredgateHost, HostsFile, DEFAULT_HOSTS_SUBDIR as DEFAULT_DIR,
};
use crate::identity::Scope;
use crate::install::fronting::{fronted_capabilities, Fronting};
use crate::mirrors::{Chain, ChainHost, HostRole, Mirrors};
use crate::secret::{MirrorSecret, SecretError};
use crate::system::{Files, System};

use super::Check;

/// Hosts a chain line names, and fronting warnings a file gets, before the rest are counted:
/// a file with many hosts must not flood the report.
const MAX_LISTED: usize = 32;

/// The shared fix for every hosts.toml problem: install rewrites them.
fn install_fix(hosts_dir: &Path) -> String {
    format!("credgate install --hosts-dir {}", hosts_dir.display())
}

/// The chain as one line: `<file>: containerd tries A, then B, …`, each host marked.
fn describe(file: &Path, chain: &Chain) -> String {
    let registry = chain.registry.as_deref().unwrap_or("the registry");
    let mut links = Vec::new();
    let mut n = 0;
    for host in &chain.hosts {
        let key = host.settings.shown();
        let pulls = host.settings.capabilities;
        links.push(match &host.role {
            HostRole::Credgate(fronted @ CredgateHost::Fronted { .. }) => {
                n += 1;
                match fronted.mirror() {
                    Some(mirror) => marked(
                        format!("{} through credgate (mirror {n}", shown_key(mirror)),
                        pulls,
                    ),
                    None => format!("{key} (credgate's, naming no single mirror)"),
                }
            }
            HostRole::Credgate(CredgateHost::Upstream) => {
                format!("{registry} through credgate (upstream)")
            }
            HostRole::Credgate(CredgateHost::Stale) => format!("{key} (an old credgate host)"),
            HostRole::Mirror(_) => match only(pulls) {
                Some(one) => format!("{key} directly ({one} only)"),
                None => format!("{key} directly"),
            },
            // Not tried for pulls.
            HostRole::Operator => continue,
        });
    }
    links.push(match (&chain.server, &chain.registry) {
        (Some(server), _) => format!("{} directly (server)", server.shown()),
        (None, Some(registry)) => format!("{registry} itself directly (server)"),
        (None, None) => "the registry itself directly (server)".to_string(),
    });
    let more = links.len().saturating_sub(MAX_LISTED);
    links.truncate(MAX_LISTED);
    if more > 0 {
        links.push(format!("{more} more"));
    }
    format!(
        "{}: containerd tries {}",
        file.display(),
        links.join(", then ")
    )
}

/// `start` closed, with the one pull capability a host has when it lacks the other.
fn marked(start: String, capabilities: Capabilities) -> String {
    match only(capabilities) {
        Some(one) => format!("{start}, {one} only)"),
        None => format!("{start})"),
    }
}

/// The one pull capability of a host that does not do both.
fn only(capabilities: Capabilities) -> Option<&'static str> {
    match capabilities.for_pulls().names()[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// What the hosts directory's checks found: the lines, and each readable file's chain.
#[derive(Debug, Default)]
pub(crate) struct HostsReport {
    pub checks: Vec<Check>,
    pub chains: Vec<Chain>,
}

/// The checks of `hosts_dir`, the directory containerd reads, whose files `mirrors` (built
/// for that directory from credgate's config) turns into chains.
pub(super) fn check(
    hosts_dir: &Path,
    listen: &Listen,
    mirrors: &Mirrors,
    system: &System,
    scopes: &[Scope],
) -> HostsReport {
    match registry_dir_names(hosts_dir) {
        Ok(names) => analyse(
            hosts_dir,
            &names,
            system.files.as_ref(),
            listen,
            mirrors,
            scopes,
        ),
        Err(e) => HostsReport {
            checks: vec![Check::fail(
                format!("hosts dir {}: cannot list it: {e}", hosts_dir.display()),
                install_fix(hosts_dir),
            )],
            chains: Vec::new(),
        },
    }
}

/// Whether the daemon looks for mirrors (`[containerd] hosts_dir`) where containerd reads
/// hosts.toml: otherwise the endpoint refuses every fronted host's request (403) and pulls
/// skip the mirrors credgate fronts.
pub(super) fn daemon_hosts_dir(config: &Config, hosts_dir: &Path) -> Check {
    let configured = &config.containerd.hosts_dir;
    // The same directory through a symlink is the same files.
    let same = configured == hosts_dir
        || matches!(
            (configured.canonicalize(), hosts_dir.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        return Check::ok(format!(
            "credgate's [containerd] hosts_dir is {}, the hosts dir containerd reads",
            hosts_dir.display()
        ));
    }
    let (file, reload) = match &config.path {
        Some(path) => (path.display().to_string(), "systemctl reload credgate"),
        None => (
            "/etc/credgate/config.toml (credgate runs on built-in defaults)".to_string(),
            "systemctl restart credgate",
        ),
    };
    Check::warn(
        format!(
            "credgate's [containerd] hosts_dir is {}, but containerd reads {}: the endpoint \
             looks for mirrors in the wrong place and refuses (403) every request of a fronted \
             host, so pulls skip the mirrors",
            configured.display(),
            hosts_dir.display()
        ),
        format!(
            "set hosts_dir = \"{}\" under [containerd] in {file}, then {reload}",
            hosts_dir.display()
        ),
    )
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
    mirrors: &Mirrors,
    scopes: &[Scope],
) -> HostsReport {
    let mut report = HostsReport::default();
    let secret = read_secret(files, &listen.mirror_secret_file, &mut report.checks);
    let expected = Expected {
        url: listen.mirror_url(),
        secret,
        secret_file: &listen.mirror_secret_file,
        fix: install_fix(hosts_dir),
        mirrors,
    };
    let default_ok = hosts_file(hosts_dir, DEFAULT_DIR, files, &expected, &mut report);
    let mut covered = Vec::new();
    for name in registry_dirs {
        let ok = hosts_file(hosts_dir, name, files, &expected, &mut report);
        covered.push((name.as_str(), ok));
    }
    for scope in scopes {
        report.checks.push(coverage(
            scope,
            hosts_dir,
            default_ok,
            &covered,
            &expected.fix,
        ));
    }
    report
}

struct Expected<'a> {
    url: String,
    secret: Option<MirrorSecret>,
    secret_file: &'a Path,
    fix: String,
    mirrors: &'a Mirrors,
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

/// Checks one `<dir>/hosts.toml`; true when its pulls reach credgate's upstream host first
/// with its secret.
fn hosts_file(
    hosts_dir: &Path,
    dir: &str,
    files: &dyn Files,
    expected: &Expected<'_>,
    report: &mut HostsReport,
) -> bool {
    let checks = &mut report.checks;
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
    let registry = (dir != DEFAULT_DIR).then(|| registry_of_dir(dir));
    let ok = match read_hosts_file(&path, &text) {
        Ok(file) => {
            let chain = expected.mirrors.chain_of(&path, &file, registry.as_deref());
            checks.push(Check::ok(describe(&path, &chain)));
            let ok = listing(&path, &chain, &file, &shadow, expected, checks);
            report.chains.push(chain);
            ok
        }
        // containerd reads none of a file it refuses, and neither does credgate's endpoint.
        Err(e) => {
            checks.push(Check::fail(
                format!("{e} (containerd refuses the whole file)"),
                format!("correct it, then {}", expected.fix),
            ));
            false
        }
    };
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

/// Checks the hosts containerd tries (`chain`, of `file` at `path`); true when credgate's
/// hosts come first, its upstream host among them, with its secret.
fn listing(
    path: &Path,
    chain: &Chain,
    file: &HostsFile,
    shadow: &str,
    expected: &Expected<'_>,
    checks: &mut Vec<Check>,
) -> bool {
    let shown = path.display();
    let hosts = &chain.hosts;
    let at_endpoint =
        |h: &ChainHost| matches!(&h.role, HostRole::Credgate(ours) if ours.at_endpoint());
    let Some(last_ours) = hosts.iter().rposition(at_endpoint) else {
        let stale = hosts
            .iter()
            .find(|h| matches!(h.role, HostRole::Credgate(CredgateHost::Stale)));
        let what = match stale {
            Some(old) => format!("{shown} sends credgate's secret header to {}, not to listen.mirror {}: pulls from {shadow} bypass credgate", old.settings.shown(), expected.url),
            None => format!("{shown} does not list credgate's endpoint {}: pulls from {shadow} bypass credgate", expected.url),
        };
        checks.push(Check::fail(what, expected.fix.clone()));
        return false;
    };
    let mut ok = true;
    // A push-only host is never tried for a pull, wherever it is.
    match hosts
        .iter()
        .position(|h| matches!(h.role, HostRole::Mirror(_)))
    {
        Some(first) if first < last_ours => {
            checks.push(Check::warn(
                format!("{shown} lists {} before credgate's endpoint: containerd tries it first, so those pulls skip credgate while it answers", hosts[first].settings.shown()),
                expected.fix.clone(),
            ));
            ok = false;
        }
        _ => checks.push(Check::ok(format!(
            "{shown} lists credgate's endpoint {} first",
            expected.url
        ))),
    }
    let upstream = hosts
        .iter()
        .position(|h| matches!(h.role, HostRole::Credgate(CredgateHost::Upstream)));
    if upstream.is_none() {
        checks.push(Check::warn(
            format!("{shown} has credgate's fronted hosts but not its upstream host {}: once the mirrors fail, pulls from {shadow} reach the registry without credgate (rewritten since install?)", expected.url),
            expected.fix.clone(),
        ));
        ok = false;
    }
    let mut warnings = fronting(path, chain, file, upstream, expected);
    if warnings.len() > MAX_LISTED {
        let more = warnings.len() - MAX_LISTED;
        warnings.truncate(MAX_LISTED);
        warnings.push(Check::warn(
            format!("{shown}: {more} more problems with credgate's fronting like the ones above"),
            expected.fix.clone(),
        ));
    }
    checks.extend(warnings);
    if let Some(secret) = &expected.secret {
        ok &= secrets(path, hosts, secret, expected, checks);
    }
    ok
}

/// Where the file's fronting differs from what install writes for its hosts as they are now:
/// a host rewritten in, out or around since install (by hand, Spegel, Dragonfly or config
/// management). Each is a warning whose fix is install, which re-fronts the file.
fn fronting(
    path: &Path,
    chain: &Chain,
    file: &HostsFile,
    upstream: Option<usize>,
    expected: &Expected<'_>,
) -> Vec<Check> {
    let shown = path.display();
    let fix = &expected.fix;
    let install = Fronting {
        file,
        endpoint: &expected.url,
    };
    let mut checks: Vec<Check> = install
        .unfrontable(path)
        .into_iter()
        .map(|e| Check::warn(e.to_string(), format!("rewrite it so, then {fix}")))
        .collect();
    let wanted: Vec<_> = install.to_front().collect();
    let mut named: Vec<&str> = Vec::new();
    for (index, host) in chain.hosts.iter().enumerate() {
        let HostRole::Credgate(fronted @ CredgateHost::Fronted { mirrors }) = &host.role else {
            continue;
        };
        let key = host.settings.shown();
        let Some(mirror) = fronted.mirror() else {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host {key} names {} mirrors instead of one, so the endpoint refuses it", mirrors.len()),
                fix.clone(),
            ));
            continue;
        };
        let mirror_shown = shown_key(mirror);
        let Some(target) = wanted.iter().find(|h| h.key == mirror) else {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host {key} names {mirror_shown}, which the file no longer lists as a host to pull from (rewritten since install?)"),
                fix.clone(),
            ));
            continue;
        };
        if upstream.is_some_and(|upstream| index > upstream) {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host for {mirror_shown} comes after its upstream host, so containerd tries the registry before that mirror"),
                fix.clone(),
            ));
        }
        let should = fronted_capabilities(target);
        let has = host.settings.capabilities.for_pulls();
        if has != should {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host for {mirror_shown} has capabilities [{}], but that host's are [{}] (edited since install?)", has.names().join(", "), should.names().join(", ")),
                fix.clone(),
            ));
        }
        named.push(mirror);
    }
    for host in &wanted {
        if !named.contains(&host.key.as_str()) {
            checks.push(Check::warn(
                format!("{shown}: {} has no fronted host, so containerd reaches it only directly, without a credential (rewritten since install?)", host.shown()),
                fix.clone(),
            ));
        }
    }
    let expected_order: Vec<&str> = wanted
        .iter()
        .map(|h| h.key.as_str())
        .filter(|key| named.contains(key))
        .collect();
    if named != expected_order {
        let list = |keys: &[&str]| {
            keys.iter()
                .map(|k| shown_key(k))
                .collect::<Vec<_>>()
                .join(", ")
        };
        checks.push(Check::warn(
            format!(
                "{shown}: credgate's fronted hosts try {}, but the file lists those mirrors as {}, so containerd no longer tries them in the operator's order",
                list(&named),
                list(&expected_order)
            ),
            fix.clone(),
        ));
    }
    checks
}

/// The secret header of every credgate host at the endpoint against the secret file; true
/// when the upstream host's matches.
fn secrets(
    path: &Path,
    hosts: &[ChainHost],
    secret: &MirrorSecret,
    expected: &Expected<'_>,
    checks: &mut Vec<Check>,
) -> bool {
    let shown = path.display();
    let mut upstream_ok = true;
    let mut ours = 0;
    let before = checks.len();
    let file = expected.secret_file.display();
    for host in hosts {
        let HostRole::Credgate(role) = &host.role else {
            continue;
        };
        let (host_is, header_of, reached) = match role {
            CredgateHost::Upstream => (
                "credgate's host".to_string(),
                "the X-Credgate-Secret header".to_string(),
                "pulls fall back to the registry without credgate",
            ),
            CredgateHost::Fronted { .. } => {
                let mirror = role
                    .mirror()
                    .map_or_else(|| host.settings.shown(), shown_key);
                (
                    format!("credgate's fronted host for {mirror}"),
                    format!("the X-Credgate-Secret header of credgate's fronted host for {mirror}"),
                    "containerd reaches that mirror without credgate",
                )
            }
            CredgateHost::Stale => continue,
        };
        ours += 1;
        let values = &host.settings.secret_values;
        if values.iter().any(|v| secret.matches(v.expose().as_bytes())) {
            continue;
        }
        upstream_ok &= *role != CredgateHost::Upstream;
        let what = if values.is_empty() {
            format!("{shown}: {host_is} sends no X-Credgate-Secret header, so the endpoint answers 403 and {reached}")
        } else {
            format!("{shown}: {header_of} differs from {file}, so the endpoint answers 403 and {reached}")
        };
        checks.push(Check::fail(what, expected.fix.clone()));
    }
    if checks.len() == before {
        let all = if ours > 1 {
            format!(" (all {ours} of credgate's hosts)")
        } else {
            String::new()
        };
        checks.push(Check::ok(format!(
            "{shown}: the X-Credgate-Secret header matches {}{all}",
            file
        )));
    }
    upstream_ok
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

    /// The `n`th fronted host for `mirror`, as install writes it.
    fn fronted(n: usize, mirror: &str, secret: &str) -> String {
        format!(
            "[host.\"http://127.0.0.1:5008/mirror/{n}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             [host.\"http://127.0.0.1:5008/mirror/{n}\".header]\n    \
             X-Credgate-Secret = [\"{secret}\"]\n    X-Credgate-Mirror = [\"{mirror}\"]\n"
        )
    }

    /// registry.test/hosts.toml as install fronts two mirrors.
    fn two_mirrors() -> String {
        format!(
            "server = \"https://registry.test\"\n\n{}\n{}\n{}\n\
             [host.\"https://a.test\"]\n\n[host.\"http://b.test:5000\"]\n",
            fronted(1, "https://a.test", SECRET),
            fronted(2, "http://b.test:5000", SECRET),
            ours(SECRET)
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

    fn report(files: &MemoryFiles, dirs: &[&str], scopes: &[&str]) -> HostsReport {
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        let scopes: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).unwrap()).collect();
        let mirrors = Mirrors::new("/h", listen().mirror_url(), Vec::new());
        let report = analyse(Path::new("/h"), &dirs, files, &listen(), &mirrors, &scopes);
        for check in &report.checks {
            assert!(
                !check.to_string().contains(SECRET),
                "secret printed: {check}"
            );
        }
        report
    }

    fn run(files: &MemoryFiles, dirs: &[&str], scopes: &[&str]) -> Vec<Check> {
        report(files, dirs, scopes).checks
    }

    fn verdicts(checks: &[Check]) -> Vec<Verdict> {
        checks.iter().map(|c| c.verdict).collect()
    }

    /// The lines that are not `ok`, as printed.
    fn problems(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.verdict != Verdict::Ok)
            .map(ToString::to_string)
            .collect()
    }

    const DEFAULT_CHAIN: &str = "/h/_default/hosts.toml: containerd tries the registry through \
                                 credgate (upstream), then the registry itself directly (server)";

    #[test]
    fn an_installed_default_covers_every_registry_without_a_dir() {
        let checks = run(&files(), &[], &["git.example.com/group", "*.example.org"]);
        assert_eq!(verdicts(&checks), [Verdict::Ok; 5], "{checks:#?}");
        assert_eq!(checks[0].what, DEFAULT_CHAIN);
        assert_eq!(
            checks[1].what,
            "/h/_default/hosts.toml lists credgate's endpoint http://127.0.0.1:5008 first"
        );
        assert!(checks[3].what.contains("/h/_default/hosts.toml"));
    }

    #[test]
    fn the_chain_of_a_fronted_file_lists_mirrors_through_credgate_then_directly() {
        let files = files();
        files.write("/h/registry.test/hosts.toml", &two_mirrors(), 0o600);
        let report = report(&files, &["registry.test"], &["registry.test"]);
        assert!(problems(&report.checks).is_empty(), "{:#?}", report.checks);
        let lines: Vec<&str> = report.checks.iter().map(|c| c.what.as_str()).collect();
        assert!(
            lines.contains(
                &"/h/registry.test/hosts.toml: containerd tries https://a.test through credgate \
                  (mirror 1), then http://b.test:5000 through credgate (mirror 2), then \
                  registry.test through credgate (upstream), then https://a.test directly, then \
                  http://b.test:5000 directly, then https://registry.test directly (server)"
            ),
            "{lines:#?}"
        );
        assert!(
            lines.contains(
                &"/h/registry.test/hosts.toml: the X-Credgate-Secret header matches \
                  /etc/credgate/mirror-secret (all 3 of credgate's hosts)"
            ),
            "{lines:#?}"
        );
        // The chains, for the live checks of each mirror.
        assert_eq!(report.chains.len(), 2);
        let chain = &report.chains[1];
        assert_eq!(chain.registry.as_deref(), Some("registry.test"));
        let HostRole::Credgate(fronted) = &chain.hosts[0].role else {
            panic!("{:?}", chain.hosts[0]);
        };
        assert_eq!(fronted.mirror(), Some("https://a.test"));
        assert!(matches!(
            chain.hosts[2].role,
            HostRole::Credgate(CredgateHost::Upstream)
        ));
        let HostRole::Mirror(mirror) = &chain.hosts[3].role else {
            panic!("{:?}", chain.hosts[3]);
        };
        assert_eq!(mirror.key(), "https://a.test");
        assert_eq!(mirror.file, Path::new("/h/registry.test/hosts.toml"));
    }

    #[test]
    fn push_only_hosts_are_left_out_of_the_chain_and_single_capabilities_are_marked() {
        let files = files();
        let text = format!(
            "{}\n{}\n[host.\"https://push.test\"]\n  capabilities = [\"push\"]\n\n\
             [host.\"https://a.test\"]\n  capabilities = [\"resolve\"]\n",
            fronted(1, "https://a.test", SECRET).replace(BOTH_CAPS, "[\"resolve\"]"),
            ours(SECRET)
        );
        files.write("/h/_default/hosts.toml", &text, 0o600);
        let checks = run(&files, &[], &[]);
        assert!(problems(&checks).is_empty(), "{checks:#?}");
        assert_eq!(
            checks[0].what,
            "/h/_default/hosts.toml: containerd tries https://a.test through credgate (mirror 1, \
             resolve only), then the registry through credgate (upstream), then https://a.test \
             directly (resolve only), then the registry itself directly (server)"
        );
    }

    const BOTH_CAPS: &str = "[\"pull\", \"resolve\"]";

    #[test]
    fn a_file_with_many_hosts_gets_bounded_lines_and_one_with_thousands_one_failure() {
        let files = files();
        let mut text = format!("{}\n", ours(SECRET));
        for n in 0..60 {
            text.push_str(&format!("[host.\"https://m{n}.test\"]\n"));
        }
        files.write("/h/registry.test/hosts.toml", &text, 0o600);
        let checks = run(&files, &["registry.test"], &[]);
        assert!(checks.len() < 2 * MAX_LISTED, "{}", checks.len());
        let chain = &checks[3].what;
        assert!(chain.ends_with(", then 30 more"), "{chain}");
        let last = problems(&checks).pop().unwrap();
        assert!(
            last.contains("28 more problems with credgate's fronting"),
            "{last}"
        );
        // More hosts than credgate reads: the file is refused in one line, as the daemon
        // refuses every mirror in it.
        for n in 60..2000 {
            text.push_str(&format!("[host.\"https://m{n}.test\"]\n"));
        }
        files.write("/h/registry.test/hosts.toml", &text, 0o600);
        let problems = problems(&run(&files, &["registry.test"], &[]));
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("FAIL  /h/registry.test/hosts.toml:")
                && problems[0].contains("more than 64 hosts (containerd refuses"),
            "{}",
            problems[0]
        );
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
                Verdict::Ok,
                Verdict::Ok,
                Verdict::Fail,
                Verdict::Fail,
                Verdict::Ok
            ],
            "{lines:#?}"
        );
        assert_eq!(
            lines[3],
            "ok    /h/git.example.com/hosts.toml: containerd tries https://git.example.com directly (server)"
        );
        assert!(
            lines[4].contains("git.example.com/hosts.toml does not list credgate's endpoint"),
            "{}",
            lines[4]
        );
        assert!(
            lines[4].ends_with("fix: credgate install --hosts-dir /h"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].contains("keychain scope git.example.com/group: its pulls bypass credgate")
        );
    }

    #[test]
    fn a_registry_dir_without_hosts_toml_shadows_default() {
        let checks = run(&files(), &["certs-only.test"], &["certs-only.test"]);
        let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            verdicts(&checks),
            [
                Verdict::Ok,
                Verdict::Ok,
                Verdict::Ok,
                Verdict::Fail,
                Verdict::Fail
            ],
            "{lines:#?}"
        );
        assert!(
            lines[3].contains("/h/certs-only.test/hosts.toml is missing"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn a_fronted_registry_dir_covers_its_registry() {
        let files = files();
        files.write("/h/registry.test/hosts.toml", &two_mirrors(), 0o600);
        let checks = run(&files, &["registry.test"], &["registry.test"]);
        assert_eq!(verdicts(&checks), [Verdict::Ok; 7], "{checks:#?}");
        assert!(checks[6].what.contains("/h/registry.test/hosts.toml"));
    }

    /// The warnings for `/h/registry.test/hosts.toml` holding `text`, each ending with the fix.
    fn rewritten(text: &str) -> Vec<String> {
        let files = files();
        files.write("/h/registry.test/hosts.toml", text, 0o600);
        let checks = run(&files, &["registry.test"], &[]);
        let problems = problems(&checks);
        for line in &problems {
            assert!(
                line.starts_with("warn")
                    && line.ends_with(" — fix: credgate install --hosts-dir /h"),
                "{line}"
            );
        }
        problems
            .iter()
            .map(|l| {
                l.trim_start_matches("warn  /h/registry.test/hosts.toml")
                    .trim_end_matches(" — fix: credgate install --hosts-dir /h")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_mirror_added_since_install_without_its_fronted_host_is_a_warning() {
        let added = format!("{}\n[host.\"https://c.test\"]\n", two_mirrors());
        assert_eq!(
            rewritten(&added),
            [
                ": https://c.test has no fronted host, so containerd reaches it only directly, \
              without a credential (rewritten since install?)"
            ]
        );
        // The file of an install from before mirrors were fronted.
        let old = format!(
            "server = \"https://registry.test\"\n\n{}\n[host.\"https://a.test\"]\n",
            ours(SECRET)
        );
        assert_eq!(
            rewritten(&old),
            [
                ": https://a.test has no fronted host, so containerd reaches it only directly, \
              without a credential (rewritten since install?)"
            ]
        );
    }

    #[test]
    fn a_mirror_written_before_credgates_hosts_is_tried_first_and_warned_about() {
        // Spegel's way: its own host prepended to the file.
        let prepended = two_mirrors().replace(
            "server = \"https://registry.test\"\n",
            "server = \"https://registry.test\"\n\n[host.\"http://spegel.test:30020\"]\n",
        );
        assert_eq!(
            rewritten(&prepended),
            [
                " lists http://spegel.test:30020 before credgate's endpoint: containerd tries it \
                 first, so those pulls skip credgate while it answers",
                ": http://spegel.test:30020 has no fronted host, so containerd reaches it only \
                 directly, without a credential (rewritten since install?)",
            ]
        );
    }

    #[test]
    fn fronted_hosts_out_of_order_are_a_warning() {
        let swapped = two_mirrors().replace(
            "[host.\"https://a.test\"]\n\n[host.\"http://b.test:5000\"]\n",
            "[host.\"http://b.test:5000\"]\n\n[host.\"https://a.test\"]\n",
        );
        assert_eq!(
            rewritten(&swapped),
            [
                ": credgate's fronted hosts try https://a.test, http://b.test:5000, but the file \
              lists those mirrors as http://b.test:5000, https://a.test, so containerd no longer \
              tries them in the operator's order"
            ]
        );
        let after_upstream = format!(
            "{}\n{}\n[host.\"https://a.test\"]\n",
            ours(SECRET),
            fronted(1, "https://a.test", SECRET)
        );
        assert_eq!(
            rewritten(&after_upstream),
            [
                ": credgate's fronted host for https://a.test comes after its upstream host, so \
              containerd tries the registry before that mirror"
            ]
        );
    }

    #[test]
    fn a_missing_upstream_host_or_a_fronted_host_naming_a_dropped_mirror_is_a_warning() {
        let without_upstream = two_mirrors().replace(&format!("{}\n", ours(SECRET)), "");
        let warnings = rewritten(&without_upstream);
        assert_eq!(
            warnings,
            [
                " has credgate's fronted hosts but not its upstream host http://127.0.0.1:5008: \
              once the mirrors fail, pulls from registry.test (this directory shadows _default) \
              reach the registry without credgate (rewritten since install?)"
            ]
        );
        let dropped = two_mirrors().replace("[host.\"http://b.test:5000\"]\n", "");
        assert_eq!(
            rewritten(&dropped),
            [": credgate's fronted host http://127.0.0.1:5008/mirror/2 names http://b.test:5000, \
              which the file no longer lists as a host to pull from (rewritten since install?)"]
        );
        let push_only = two_mirrors().replace(
            "[host.\"http://b.test:5000\"]\n",
            "[host.\"http://b.test:5000\"]\n  capabilities = [\"push\"]\n",
        );
        assert_eq!(rewritten(&push_only).len(), 1);
        let narrowed = two_mirrors().replace(
            "[host.\"http://b.test:5000\"]\n",
            "[host.\"http://b.test:5000\"]\n  capabilities = [\"pull\", \"push\"]\n",
        );
        assert_eq!(
            rewritten(&narrowed),
            [": credgate's fronted host for http://b.test:5000 has capabilities [pull, resolve], \
              but that host's are [pull] (edited since install?)"]
        );
    }

    #[test]
    fn a_file_rewritten_without_credgates_hosts_fails_naming_install() {
        let files = files();
        let rewritten = "server = \"https://registry.test\"\n[host.\"https://a.test\"]\n";
        files.write("/h/registry.test/hosts.toml", rewritten, 0o644);
        let checks = run(&files, &["registry.test"], &["registry.test/app"]);
        let problems = problems(&checks);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0]
                .starts_with("FAIL  /h/registry.test/hosts.toml does not list credgate's endpoint"),
            "{}",
            problems[0]
        );
        assert!(problems[1].contains("its pulls bypass credgate"));
    }

    #[test]
    fn a_host_containerd_refuses_or_cannot_order_is_named() {
        let files = files();
        let text = format!(
            "{}\n[host.\"https://bad.test\"]\n  capabilities = [\"fetch\"]\n",
            ours(SECRET)
        );
        files.write("/h/registry.test/hosts.toml", &text, 0o600);
        let found = problems(&run(&files, &["registry.test"], &[]));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with(
                "FAIL  /h/registry.test/hosts.toml:7:18: host https://bad.test: `capabilities` \
                 names an unknown capability"
            ) && found[0].ends_with(
                "(containerd refuses the whole file) — fix: correct it, then credgate install \
                 --hosts-dir /h"
            ),
            "{}",
            found[0]
        );
        let dotted = format!(
            "host.\"https://d.test\".capabilities = [\"push\"]\n\n{}",
            ours(SECRET)
        );
        files.write("/h/registry.test/hosts.toml", &dotted, 0o600);
        let found = problems(&run(&files, &["registry.test"], &[]));
        assert_eq!(
            found,
            [
                "warn  /h/registry.test/hosts.toml: host \"https://d.test\" is written as dotted \
              keys or an inline table, which containerd 2.x does not read as a host and credgate \
              cannot put its hosts before; write it as a [host.\"https://d.test\"] table — fix: \
              rewrite it so, then credgate install --hosts-dir /h"
            ]
        );
    }

    #[test]
    fn a_secret_that_differs_fails_without_printing_either() {
        let files = files();
        files.write("/h/_default/hosts.toml", &ours("stale-secret-W2"), 0o600);
        let checks = run(&files, &[], &["git.example.com"]);
        let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            verdicts(&checks),
            [Verdict::Ok, Verdict::Ok, Verdict::Fail, Verdict::Fail],
            "{lines:#?}"
        );
        assert!(lines[2].contains("differs from /etc/credgate/mirror-secret"));
        assert!(lines.iter().all(|l| !l.contains("stale-secret-W2")));
    }

    #[test]
    fn a_fronted_host_with_another_secret_fails_and_the_registry_stays_covered() {
        let files = files();
        let text = two_mirrors().replacen(SECRET, "stale-secret-W2", 1);
        files.write("/h/registry.test/hosts.toml", &text, 0o600);
        let checks = run(&files, &["registry.test"], &["registry.test"]);
        let problems = problems(&checks);
        assert_eq!(
            problems,
            [
                "FAIL  /h/registry.test/hosts.toml: the X-Credgate-Secret header of credgate's \
              fronted host for https://a.test differs from /etc/credgate/mirror-secret, so the \
              endpoint answers 403 and containerd reaches that mirror without credgate — fix: \
              credgate install --hosts-dir /h"
            ]
        );
        assert!(checks
            .last()
            .unwrap()
            .what
            .contains("its pulls go through credgate"));
    }

    #[test]
    fn another_host_first_is_a_warning_and_a_readable_file_too() {
        let files = files();
        let text = format!(
            "[host.\"https://m.test\"]\n  capabilities = [\"pull\"]\n\n{}",
            ours(SECRET)
        );
        files.write("/h/_default/hosts.toml", &text, 0o644);
        let checks = run(&files, &[], &[]);
        assert_eq!(
            verdicts(&checks),
            [
                Verdict::Ok,
                Verdict::Warn,
                Verdict::Warn,
                Verdict::Ok,
                Verdict::Fail
            ],
            "{checks:#?}"
        );
        // Before credgate's hosts, a push-only host is never tried for a pull.
        let push_only = text.replace("[\"pull\"]", "[\"push\"]");
        files.write("/h/_default/hosts.toml", &push_only, 0o600);
        assert!(problems(&run(&files, &[], &[])).is_empty());
        assert_eq!(
            checks[4].fix.as_deref(),
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
                [Verdict::Fail, Verdict::Ok, Verdict::Ok],
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
            checks[1]
                .what
                .contains("to http://127.0.0.1:6000, not to listen.mirror"),
            "{checks:#?}"
        );
    }
}
