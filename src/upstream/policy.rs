//! What the upstream client may reach: which hosts may resolve to non-public addresses,
//! which token realms are allowed off the upstream's own domain, and each registry's extra CA.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::{Config, SourceEntry};
use crate::identity::RegistryHost;

use super::address::{non_public_reason, numeric_ipv4};

/// The allow-lists of docs/design.md's security rules, built from the config.
///
/// Host entries compare as canonical [`RegistryHost`]s, so `auth.test` and `auth.test:443`
/// are the same entry and `auth.test:8443` is another.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPolicy {
    /// May resolve to loopback, link-local, private or metadata addresses.
    private_hosts: HashSet<RegistryHost>,
    /// May serve tokens for any upstream (and, being named by the operator, may be private).
    realm_hosts: HashSet<RegistryHost>,
    ca_files: HashMap<RegistryHost, PathBuf>,
}

impl UpstreamPolicy {
    /// `[upstream] allow_private` and `allow_realm_hosts`, plus every `[[registry]]` entry
    /// with an exact host (not a glob): that host may be private and gets the entry's
    /// `ca_file` (the first entry naming one wins). Entries that are not `host[:port]` are
    /// logged and skipped.
    pub fn from_config(config: &Config) -> UpstreamPolicy {
        let mut policy = UpstreamPolicy::default();
        for host in hosts(&config.upstream.allow_private, "allow_private") {
            policy.private_hosts.insert(host);
        }
        for host in hosts(&config.upstream.allow_realm_hosts, "allow_realm_hosts") {
            policy.realm_hosts.insert(host);
        }
        for entry in &config.sources {
            let SourceEntry::Registry(entry) = entry else {
                continue;
            };
            let Some(host) = entry.scope.exact_registry() else {
                continue;
            };
            policy.private_hosts.insert(host.clone());
            if let Some(ca) = &entry.ca_file {
                policy
                    .ca_files
                    .entry(host.clone())
                    .or_insert_with(|| ca.clone());
            }
        }
        policy
    }

    /// Lets `host` resolve to non-public addresses.
    pub fn allow_private(mut self, host: RegistryHost) -> Self {
        self.private_hosts.insert(host);
        self
    }

    /// Lets `host` serve tokens for any upstream.
    pub fn allow_realm_host(mut self, host: RegistryHost) -> Self {
        self.realm_hosts.insert(host);
        self
    }

    /// Trusts `ca_file` (PEM) for `registry`, beside the system roots.
    pub fn with_ca_file(mut self, registry: RegistryHost, ca_file: PathBuf) -> Self {
        self.ca_files.insert(registry, ca_file);
        self
    }

    pub fn ca_file(&self, registry: &RegistryHost) -> Option<&Path> {
        self.ca_files.get(registry).map(PathBuf::as_path)
    }

    fn may_be_private(&self, host: &RegistryHost) -> bool {
        self.private_hosts.contains(host) || self.realm_hosts.contains(host)
    }

    /// Whether `host` may be dialled at `addresses` (all of them were checked: a name that
    /// resolves to one public and one private address is refused). The error is the reason.
    pub fn check_addresses(
        &self,
        host: &RegistryHost,
        addresses: &[SocketAddr],
    ) -> Result<(), String> {
        if self.may_be_private(host) {
            return Ok(());
        }
        first_non_public(addresses).map_or(Ok(()), |(ip, why)| Err(refusal(host, ip, why)))
    }

    /// The same check for an IP-literal host, before anything is resolved or looked up. A
    /// name in one of inet_aton's numeric forms (`2130706433`, `0x7f.1`) is such a literal.
    pub fn check_literal(&self, host: &RegistryHost) -> Result<(), String> {
        match literal_ip(host.host()) {
            Some(ip) => self.check_addresses(host, &[SocketAddr::new(ip, 0)]),
            None => Ok(()),
        }
    }

    /// Whether a token realm on `realm_host` may serve tokens for the upstream dialled as
    /// `upstream_host`: listed in `allow_realm_hosts`, or on the upstream's own domain (see
    /// [`on_own_domain`]).
    pub fn realm_allowed(&self, upstream_host: &str, realm_host: &RegistryHost) -> bool {
        self.realm_hosts.contains(realm_host) || on_own_domain(upstream_host, realm_host.host())
    }
}

/// Whether a redirect off the registry's own host may go to `addresses`: public ones only,
/// whatever the allow-lists say (a registry must not steer the gate to an internal host the
/// operator allowed for itself). The error is the reason.
pub fn check_public(host: &RegistryHost, addresses: &[SocketAddr]) -> Result<(), String> {
    match first_non_public(addresses) {
        Some((ip, why)) => Err(format!(
            "{host} resolves to {ip}, a {why} address; a redirect off the registry's own host \
             (host and port) may reach public addresses only, whatever the allow-lists say"
        )),
        None => Ok(()),
    }
}

/// [`check_public`] for a redirect target's host as written, before anything is resolved: an IP
/// literal, or a name in one of inet_aton's numeric forms, that is not public.
pub fn check_public_literal(host: &RegistryHost) -> Result<(), String> {
    match literal_ip(host.host()) {
        Some(ip) => check_public(host, &[SocketAddr::new(ip, 0)]),
        None => Ok(()),
    }
}

/// The address a host spells: `[v6]`, dotted IPv4, or a legacy numeric IPv4 form.
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .ok()
        .or_else(|| numeric_ipv4(bare).map(IpAddr::V4))
}

fn first_non_public(addresses: &[SocketAddr]) -> Option<(IpAddr, &'static str)> {
    addresses
        .iter()
        .find_map(|a| non_public_reason(a.ip()).map(|why| (a.ip(), why)))
}

fn refusal(host: &RegistryHost, ip: IpAddr, why: &str) -> String {
    format!(
        "{host} resolves to {ip}, a {why} address; add it to [upstream] allow_private or name \
         it in a [[registry]] entry to allow it"
    )
}

fn hosts<'a>(entries: &'a [String], key: &'a str) -> impl Iterator<Item = RegistryHost> + 'a {
    entries
        .iter()
        .filter_map(move |entry| match RegistryHost::parse(entry) {
            Ok(host) => Some(host),
            Err(e) => {
                tracing::warn!(key, entry = %entry, error = %e, "ignoring [upstream] entry that is not host[:port]");
                None
            }
        })
}

/// A token realm is on the upstream's *own domain* when its host (ports aside, compared
/// case-insensitively) is the upstream host or under it, or is the upstream host's parent
/// domain or under that parent, provided the parent still has at least two labels:
///
/// - `registry.gitlab.example.com` → `gitlab.example.com`, `auth.gitlab.example.com`: own.
/// - `registry-1.docker.io` → `auth.docker.io`: own (parent `docker.io`).
/// - `registry.test` → `auth.test`: foreign (the parent `test` is a bare top-level domain).
/// - IP-literal upstreams have no parent: only the same address is own.
///
/// No public-suffix list is consulted, so under a two-label suffix (`registry.co.uk`) every
/// `*.co.uk` would count as own; such registries should list their realm explicitly.
pub fn on_own_domain(upstream_host: &str, realm_host: &str) -> bool {
    let upstream = upstream_host.trim_end_matches('.').to_ascii_lowercase();
    let realm = realm_host.trim_end_matches('.').to_ascii_lowercase();
    if realm == upstream || is_under(&realm, &upstream) {
        return true;
    }
    if upstream.starts_with('[') || upstream.parse::<IpAddr>().is_ok() {
        return false;
    }
    match upstream.split_once('.') {
        Some((_, parent)) if parent.split('.').count() >= 2 => {
            realm == parent || is_under(&realm, parent)
        }
        _ => false,
    }
}

/// `name` is a strict subdomain of `domain`, by whole labels.
fn is_under(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
}

/// The policy in force, swapped whole on reload; connectors read it for every new connection.
#[derive(Clone, Default)]
pub(crate) struct PolicyCell(Arc<RwLock<Arc<UpstreamPolicy>>>);

impl PolicyCell {
    pub(crate) fn new(policy: UpstreamPolicy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    pub(crate) fn get(&self) -> Arc<UpstreamPolicy> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, policy: UpstreamPolicy) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn host(s: &str) -> RegistryHost {
        RegistryHost::parse(s).unwrap()
    }

    #[test]
    fn own_domain_rule() {
        let own = [
            ("registry.gitlab.example.com", "gitlab.example.com"),
            ("registry.gitlab.example.com", "auth.gitlab.example.com"),
            ("registry.gitlab.example.com", "registry.gitlab.example.com"),
            ("registry-1.docker.io", "auth.docker.io"),
            ("Registry.Example.com", "auth.registry.example.com"),
            ("registry.test", "registry.test"),
            ("registry.test", "auth.registry.test"),
            ("10.0.0.5", "10.0.0.5"),
        ];
        for (upstream, realm) in own {
            assert!(on_own_domain(upstream, realm), "{upstream} → {realm}");
        }
        let foreign = [
            ("registry.test", "auth.test"),
            ("registry.test", "test"),
            ("registry.gitlab.example.com", "example.com"),
            ("registry.gitlab.example.com", "evilgitlab.example.com"),
            ("registry.gitlab.example.com", "gitlab.example.com.evil.io"),
            ("registry-1.docker.io", "docker.io.evil.io"),
            ("10.0.0.5", "0.5"),
            ("[::1]", "auth.test"),
            ("localhost", "auth.localhost.evil"),
        ];
        for (upstream, realm) in foreign {
            assert!(!on_own_domain(upstream, realm), "{upstream} → {realm}");
        }
    }

    #[test]
    fn realm_hosts_listed_are_allowed_anywhere() {
        let policy = UpstreamPolicy::default().allow_realm_host(host("auth.test"));
        assert!(policy.realm_allowed("registry.test", &host("auth.test")));
        assert!(policy.realm_allowed("registry.test", &host("auth.test:443")));
        assert!(!policy.realm_allowed("registry.test", &host("auth.test:8443")));
        assert!(!policy.realm_allowed("registry.test", &host("other.test")));
    }

    #[test]
    fn private_addresses_need_the_host_allowed() {
        let loopback: SocketAddr = "127.0.0.10:443".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let policy = UpstreamPolicy::default().allow_private(host("registry.test"));
        assert!(policy
            .check_addresses(&host("registry.test"), &[loopback])
            .is_ok());
        let refused = policy
            .check_addresses(&host("open.test"), &[public, loopback])
            .unwrap_err();
        assert!(
            refused.contains("open.test resolves to 127.0.0.10, a loopback"),
            "{refused}"
        );
        assert!(policy
            .check_addresses(&host("open.test"), &[public])
            .is_ok());
        // Another port is another host.
        assert!(policy
            .check_addresses(&host("registry.test:5000"), &[loopback])
            .is_err());
    }

    #[test]
    fn redirect_targets_off_the_registry_must_be_public_whatever_is_allowed() {
        let internal: SocketAddr = "10.0.0.7:443".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let policy = UpstreamPolicy::default().allow_private(host("internal.test"));
        assert!(policy
            .check_addresses(&host("internal.test"), &[internal])
            .is_ok());
        let refused = check_public(&host("internal.test"), &[internal]).unwrap_err();
        assert!(
            refused.contains("internal.test resolves to 10.0.0.7, a private address"),
            "{refused}"
        );
        assert!(check_public(&host("cdn.test"), &[public, internal]).is_err());
        assert!(check_public(&host("cdn.test"), &[public]).is_ok());
    }

    #[test]
    fn literals_are_checked_without_resolving() {
        let policy = UpstreamPolicy::default().allow_private(host("10.1.2.3"));
        assert!(policy.check_literal(&host("10.1.2.3")).is_ok());
        let metadata = policy.check_literal(&host("169.254.169.254")).unwrap_err();
        assert!(metadata.contains("cloud metadata"), "{metadata}");
        assert!(policy.check_literal(&host("[::1]:5000")).is_err());
        assert!(policy.check_literal(&host("registry.test")).is_ok());
        for disguised in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.1",
            "0x7f000001",
        ] {
            let refused = policy.check_literal(&host(disguised)).unwrap_err();
            assert!(refused.contains("127.0.0.1"), "{disguised}: {refused}");
            assert!(
                check_public_literal(&host(disguised)).is_err(),
                "{disguised}"
            );
        }
        assert!(check_public_literal(&host("10.1")).is_err());
        assert!(check_public_literal(&host("registry.test")).is_ok());
    }

    #[test]
    fn from_config_allows_exact_registry_hosts_with_their_ca() {
        let text = r#"
[upstream]
allow_private = ["mirror.internal:5000", "not a host"]
allow_realm_hosts = ["auth.test"]

[[registry]]
match = "registry.test/group"
username = "u"
password = "p"
ca_file = "/etc/credgate/ca.pem"

[[registry]]
match = "*.glob.test"
username = "u"
password = "p"
"#;
        let config = Config::parse(text, Path::new("/etc/credgate/config.toml")).unwrap();
        let policy = UpstreamPolicy::from_config(&config);
        assert!(policy.may_be_private(&host("registry.test")));
        assert!(policy.may_be_private(&host("mirror.internal:5000")));
        assert!(policy.may_be_private(&host("auth.test")));
        assert!(!policy.may_be_private(&host("a.glob.test")));
        assert_eq!(
            policy.ca_file(&host("registry.test")),
            Some(Path::new("/etc/credgate/ca.pem"))
        );
        assert_eq!(policy.ca_file(&host("a.glob.test")), None);
    }
}
