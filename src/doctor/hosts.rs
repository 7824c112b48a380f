//! The hosts directory: `_default/hosts.toml` and every per-registry hosts.toml (each shadows
//! `_default` for its registry) must send pulls through credgate's endpoint as install fronts
//! them: a fronted host for each of the operator's pull hosts, in order, then credgate's
//! upstream host, then the operator's own hosts; each with the secret from
//! `listen.mirror_secret_file`, and every file that carries a secret header readable by root
//! alone. Each file's chain (the hosts containerd tries, in order) is listed, and a file
//! rewritten since install so that its fronting is lost is a warning. Then, for each registry
//! the keychain knows, are its pulls covered? Secrets are compared in constant time and never
//! printed.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::Listen;
use crate::containerd::files::{
    carries_secret, parse_toml, registry_dirs, DEFAULT_HOSTS_SUBDIR as DEFAULT_DIR,
};
use crate::identity::Scope;
use crate::install::fronting::{
    fronted, Capability, FrontingError, HostsListing, ListedHost, Role,
};
use crate::secret::{MirrorSecret, SecretError};
use crate::system::{Files, System};

use super::Check;

/// Hosts a chain line names, and fronting warnings a file gets, before the rest are counted:
/// a file with thousands of hosts must not flood the report.
const MAX_LISTED: usize = 32;

/// The shared fix for every hosts.toml problem: install rewrites them.
fn install_fix(hosts_dir: &Path) -> String {
    format!("credgate install --hosts-dir {}", hosts_dir.display())
}

/// The hosts containerd tries for the registries one hosts.toml decides, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub file: PathBuf,
    /// The registry directory's name; `None` for `_default` (every registry without one).
    pub registry: Option<String>,
    pub links: Vec<Link>,
}

/// One host of a [`Chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// A fronted host: containerd reaches the endpoint, which dials `mirror` (the operator's
    /// host key; `None` when the entry names no single one, which the endpoint refuses).
    Fronted {
        n: usize,
        key: String,
        mirror: Option<String>,
        capabilities: Vec<Capability>,
    },
    /// credgate's upstream host: the endpoint dials the registry itself.
    Upstream,
    /// credgate's secret header sent to another address.
    Stale { key: String },
    /// One of the operator's hosts, reached without credgate.
    Direct {
        key: String,
        capabilities: Vec<Capability>,
    },
    /// containerd's last host: `server`, or the registry itself.
    Server { server: Option<String> },
}

impl Chain {
    fn from_file(file: &Path, registry: Option<&str>, hosts: &HostsListing) -> Self {
        let mut links = Vec::new();
        let mut n = 0;
        for host in &hosts.hosts {
            let pulls = fronted(host.capabilities.as_deref().unwrap_or_default());
            links.push(match &host.role {
                Role::Fronted { mirrors } => {
                    n += 1;
                    Link::Fronted {
                        n,
                        key: host.key.clone(),
                        mirror: single(mirrors).map(str::to_string),
                        capabilities: pulls,
                    }
                }
                Role::Upstream => Link::Upstream,
                Role::Stale => Link::Stale {
                    key: host.key.clone(),
                },
                // Not tried for pulls.
                Role::Operator if pulls.is_empty() => continue,
                Role::Operator => Link::Direct {
                    key: host.key.clone(),
                    capabilities: pulls,
                },
            });
        }
        links.push(Link::Server {
            server: hosts.server.clone(),
        });
        Self {
            file: file.to_path_buf(),
            registry: registry.map(str::to_string),
            links,
        }
    }

    /// The chain as one line: `<file>: containerd tries A, then B, …`, each host marked.
    fn describe(&self) -> String {
        let registry = self.registry.as_deref().unwrap_or("the registry");
        let mut links: Vec<String> = self
            .links
            .iter()
            .take(MAX_LISTED)
            .map(|link| match link {
                Link::Fronted {
                    n,
                    mirror: Some(mirror),
                    capabilities,
                    ..
                } => match only(capabilities) {
                    Some(one) => format!("{mirror} through credgate (mirror {n}, {one} only)"),
                    None => format!("{mirror} through credgate (mirror {n})"),
                },
                Link::Fronted {
                    key, mirror: None, ..
                } => format!("{key} (credgate's, naming no single mirror)"),
                Link::Upstream => format!("{registry} through credgate (upstream)"),
                Link::Stale { key } => format!("{key} (an old credgate host)"),
                Link::Direct { key, capabilities } => match only(capabilities) {
                    Some(one) => format!("{key} directly ({one} only)"),
                    None => format!("{key} directly"),
                },
                Link::Server {
                    server: Some(server),
                } => format!("{server} directly (server)"),
                Link::Server { server: None } => {
                    let itself = match &self.registry {
                        Some(registry) => format!("{registry} itself"),
                        None => "the registry itself".to_string(),
                    };
                    format!("{itself} directly (server)")
                }
            })
            .collect();
        if self.links.len() > MAX_LISTED {
            links.push(format!("{} more", self.links.len() - MAX_LISTED));
        }
        format!(
            "{}: containerd tries {}",
            self.file.display(),
            links.join(", then ")
        )
    }
}

/// The one pull capability of a host that does not do both.
fn only(capabilities: &[Capability]) -> Option<&'static str> {
    match capabilities {
        [one] => Some(one.as_str()),
        _ => None,
    }
}

/// The one value of a list, if it has exactly one.
fn single(values: &[String]) -> Option<&str> {
    match values {
        [one] if !one.is_empty() => Some(one.as_str()),
        _ => None,
    }
}

/// What the hosts directory's checks found: the lines, and each readable file's chain.
#[derive(Debug, Default)]
pub(crate) struct HostsReport {
    pub checks: Vec<Check>,
    pub chains: Vec<Chain>,
}

pub(super) fn check(
    hosts_dir: &Path,
    listen: &Listen,
    system: &System,
    scopes: &[Scope],
) -> HostsReport {
    match registry_dir_names(hosts_dir) {
        Ok(names) => analyse(hosts_dir, &names, system.files.as_ref(), listen, scopes),
        Err(e) => HostsReport {
            checks: vec![Check::fail(
                format!("hosts dir {}: cannot list it: {e}", hosts_dir.display()),
                install_fix(hosts_dir),
            )],
            chains: Vec::new(),
        },
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
) -> HostsReport {
    let mut report = HostsReport::default();
    let secret = read_secret(files, &listen.mirror_secret_file, &mut report.checks);
    let expected = Expected {
        url: listen.mirror_url(),
        secret,
        secret_file: &listen.mirror_secret_file,
        fix: install_fix(hosts_dir),
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
    let registry = (dir != DEFAULT_DIR).then_some(dir);
    let ok = match read_file(&path, &text, &expected.url) {
        Ok(hosts) => {
            let chain = Chain::from_file(&path, registry, &hosts);
            checks.push(Check::ok(chain.describe()));
            report.chains.push(chain);
            listing(&path, &hosts, &shadow, expected, checks)
        }
        Err(e) => {
            checks.push(Check::fail(
                e,
                format!("correct the TOML, then {}", expected.fix),
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

/// A hosts.toml read as install reads it; a TOML error names its line.
fn read_file(path: &Path, text: &str, url: &str) -> Result<HostsListing, String> {
    let doc = parse_toml(path, text).map_err(|e| e.to_string())?;
    HostsListing::read(path, &doc, url).map_err(|e| e.to_string())
}

/// Checks the hosts a hosts.toml lists; true when credgate's hosts come first, its upstream
/// host among them, with its secret.
fn listing(
    path: &Path,
    file: &HostsListing,
    shadow: &str,
    expected: &Expected<'_>,
    checks: &mut Vec<Check>,
) -> bool {
    let shown = path.display();
    let hosts = &file.hosts;
    let at_endpoint = |h: &ListedHost| matches!(h.role, Role::Upstream | Role::Fronted { .. });
    let Some(last_ours) = hosts.iter().rposition(at_endpoint) else {
        let stale = hosts.iter().find(|h| h.role == Role::Stale);
        let what = match stale {
            Some(old) => format!("{shown} sends credgate's secret header to {}, not to listen.mirror {}: pulls from {shadow} bypass credgate", old.key, expected.url),
            None => format!("{shown} does not list credgate's endpoint {}: pulls from {shadow} bypass credgate", expected.url),
        };
        checks.push(Check::fail(what, expected.fix.clone()));
        return false;
    };
    let mut ok = true;
    // A push-only host is never tried for a pull, wherever it is.
    let pulls = |h: &ListedHost| {
        !h.is_credgate()
            && match &h.capabilities {
                Some(capabilities) => !fronted(capabilities).is_empty(),
                None => true,
            }
    };
    match hosts.iter().position(pulls) {
        Some(first) if first < last_ours => {
            checks.push(Check::warn(
                format!("{shown} lists {} before credgate's endpoint: containerd tries it first, so those pulls skip credgate while it answers", hosts[first].key),
                expected.fix.clone(),
            ));
            ok = false;
        }
        _ => checks.push(Check::ok(format!(
            "{shown} lists credgate's endpoint {} first",
            expected.url
        ))),
    }
    let upstream = hosts.iter().find(|h| h.role == Role::Upstream);
    if upstream.is_none() {
        checks.push(Check::warn(
            format!("{shown} has credgate's fronted hosts but not its upstream host {}: once the mirrors fail, pulls from {shadow} reach the registry without credgate (rewritten since install?)", expected.url),
            expected.fix.clone(),
        ));
        ok = false;
    }
    let mut warnings = fronting(path, file, &expected.fix);
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
fn fronting(path: &Path, file: &HostsListing, fix: &str) -> Vec<Check> {
    let shown = path.display();
    let mut checks = Vec::new();
    for host in file.operator_hosts() {
        if let Err(e) = host.check_frontable(path) {
            checks.push(match e {
                FrontingError::Capabilities { .. } => Check::fail(
                    e.to_string(),
                    format!("correct its capabilities, then {fix}"),
                ),
                _ => Check::warn(e.to_string(), format!("rewrite it so, then {fix}")),
            });
        }
    }
    let wanted: Vec<&ListedHost> = file.to_front().collect();
    let upstream = file.hosts.iter().position(|h| h.role == Role::Upstream);
    let mut named: Vec<&str> = Vec::new();
    for (index, host) in file.hosts.iter().enumerate() {
        let Role::Fronted { mirrors } = &host.role else {
            continue;
        };
        let Some(mirror) = single(mirrors) else {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host {} names {} mirrors instead of one, so the endpoint refuses it", host.key, mirrors.len()),
                fix.to_string(),
            ));
            continue;
        };
        let Some(target) = wanted.iter().find(|h| h.key == mirror) else {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host {} names {mirror}, which the file no longer lists as a host to pull from (rewritten since install?)", host.key),
                fix.to_string(),
            ));
            continue;
        };
        if upstream.is_some_and(|upstream| index > upstream) {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host for {mirror} comes after its upstream host, so containerd tries the registry before that mirror"),
                fix.to_string(),
            ));
        }
        let should = target.fronted_capabilities();
        let has = fronted(host.capabilities.as_deref().unwrap_or_default());
        if has != should {
            checks.push(Check::warn(
                format!("{shown}: credgate's fronted host for {mirror} has capabilities [{}], but that host's are [{}] (edited since install?)", names(&has), names(&should)),
                fix.to_string(),
            ));
        }
        named.push(mirror);
    }
    for host in &wanted {
        if !named.contains(&host.key.as_str()) {
            checks.push(Check::warn(
                format!("{shown}: {} has no fronted host, so containerd reaches it only directly, without a credential (rewritten since install?)", host.key),
                fix.to_string(),
            ));
        }
    }
    let expected_order: Vec<&str> = wanted
        .iter()
        .map(|h| h.key.as_str())
        .filter(|key| named.contains(key))
        .collect();
    if named != expected_order {
        checks.push(Check::warn(
            format!(
                "{shown}: credgate's fronted hosts try {}, but the file lists those mirrors as {}, so containerd no longer tries them in the operator's order",
                named.join(", "),
                expected_order.join(", ")
            ),
            fix.to_string(),
        ));
    }
    checks
}

fn names(capabilities: &[Capability]) -> String {
    let names: Vec<&str> = capabilities.iter().map(|c| c.as_str()).collect();
    names.join(", ")
}

/// The secret header of every credgate host at the endpoint against the secret file; true
/// when the upstream host's matches.
fn secrets(
    path: &Path,
    hosts: &[ListedHost],
    secret: &MirrorSecret,
    expected: &Expected<'_>,
    checks: &mut Vec<Check>,
) -> bool {
    let shown = path.display();
    let matches = |h: &ListedHost| h.secret_values.iter().any(|v| secret.matches(v.as_bytes()));
    let mut upstream_ok = true;
    let mut ours = 0;
    let before = checks.len();
    let file = expected.secret_file.display();
    for host in hosts {
        let (host_is, header_of, reached) = match &host.role {
            Role::Upstream => (
                "credgate's host".to_string(),
                "the X-Credgate-Secret header".to_string(),
                "pulls fall back to the registry without credgate",
            ),
            Role::Fronted { mirrors } => {
                let mirror = single(mirrors).unwrap_or(&host.key);
                (
                    format!("credgate's fronted host for {mirror}"),
                    format!("the X-Credgate-Secret header of credgate's fronted host for {mirror}"),
                    "containerd reaches that mirror without credgate",
                )
            }
            _ => continue,
        };
        ours += 1;
        if matches(host) {
            continue;
        }
        upstream_ok &= host.role != Role::Upstream;
        let what = if host.secret_values.is_empty() {
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
        let report = analyse(Path::new("/h"), &dirs, files, &listen(), &scopes);
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
        assert_eq!(
            chain.links[0],
            Link::Fronted {
                n: 1,
                key: "http://127.0.0.1:5008/mirror/1".to_string(),
                mirror: Some("https://a.test".to_string()),
                capabilities: vec![Capability::Pull, Capability::Resolve],
            }
        );
        assert_eq!(chain.links[2], Link::Upstream);
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
    fn a_file_with_thousands_of_hosts_gets_bounded_lines() {
        let files = files();
        let mut text = format!("{}\n", ours(SECRET));
        for n in 0..2000 {
            text.push_str(&format!("[host.\"https://m{n}.test\"]\n"));
        }
        files.write("/h/registry.test/hosts.toml", &text, 0o600);
        let checks = run(&files, &["registry.test"], &[]);
        assert!(checks.len() < 2 * MAX_LISTED, "{}", checks.len());
        let chain = &checks[3].what;
        assert!(chain.ends_with(", then 1970 more"), "{chain}");
        let last = problems(&checks).pop().unwrap();
        assert!(
            last.contains("1968 more problems with credgate's fronting"),
            "{last}"
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
                "FAIL  /h/registry.test/hosts.toml: host \"https://bad.test\" has `capabilities`"
            ) && found[0]
                .ends_with("fix: correct its capabilities, then credgate install --hosts-dir /h"),
            "{}",
            found[0]
        );
        let dotted = format!(
            "host.\"https://d.test\".capabilities = [\"push\"]\n\n{}",
            ours(SECRET)
        );
        files.write("/h/registry.test/hosts.toml", &dotted, 0o600);
        let found = problems(&run(&files, &["registry.test"], &[]));
        assert!(
            found
                .iter()
                .any(|p| p.contains("host \"https://d.test\" is written as dotted keys")),
            "{found:#?}"
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
