//! Credential scopes: `host[:port][/path prefix]`, matched by whole labels and whole segments.

use std::fmt;

use super::reference::{Repository, Target};
use super::registry::{has_scheme, is_valid_host, strip_scheme, RegistryHost};
use super::IdentityError;

/// Which registries and repositories one credential is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    host: HostPattern,
    path: Option<Repository>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPattern {
    Exact(RegistryHost),
    /// Labels where `*` stands for exactly one DNS label; port must be equal.
    Glob {
        labels: Vec<String>,
        port: Option<u16>,
    },
}

/// How specific a scope is; greater wins. The derived order is the rule: path depth first
/// (fields compare in declaration order), then an exact host over a glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    pub path_segments: usize,
    pub exact_host: bool,
}

impl Scope {
    /// Parses a `match` value from credgate's config or a containers auth.json key:
    /// `registry.example.com/group/sub`, `*.example.com`, `localhost:5000`.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let err = |reason: &'static str| IdentityError::Scope {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim().trim_end_matches('/');
        if has_scheme(trimmed) {
            return Err(err("a scope has no scheme; write host[:port][/path]"));
        }
        let (authority, path) = match trimmed.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (trimmed, None),
        };
        let host = HostPattern::parse(authority).map_err(err)?;
        let path = match path {
            Some(p) => Some(Repository::parse(p).map_err(|_| err("invalid repository path"))?),
            None => None,
        };
        Ok(Self { host, path })
    }

    /// Parses a docker config `auths` key. With a scheme (`https://index.docker.io/v1/`,
    /// `https://host/`) the path is not a scope, as in docker/cli; without one a path is a
    /// repository prefix, as in containers auth.json.
    pub fn parse_auths_key(key: &str) -> Result<Self, IdentityError> {
        if has_scheme(key.trim()) {
            let registry = RegistryHost::parse(strip_scheme(key.trim()))?;
            return Ok(Self::registry(registry));
        }
        Self::parse(key)
    }

    /// A scope covering a whole registry.
    pub fn registry(registry: RegistryHost) -> Self {
        Self {
            host: HostPattern::Exact(registry),
            path: None,
        }
    }

    /// The registry when the host is exact (not a glob).
    pub fn exact_registry(&self) -> Option<&RegistryHost> {
        match &self.host {
            HostPattern::Exact(host) => Some(host),
            HostPattern::Glob { .. } => None,
        }
    }

    /// The repository prefix, if the scope has one.
    pub fn path(&self) -> Option<&Repository> {
        self.path.as_ref()
    }

    /// The key docker clients look this scope up by: docker/cli's `https://index.docker.io/v1/`
    /// for Docker Hub, else `host[:port]`, with `/path` for a path scope (containers
    /// auth.json's form). `None` for a glob, which no client asks for.
    pub fn docker_config_key(&self) -> Option<String> {
        let host = self.exact_registry()?;
        Some(match &self.path {
            None => host.docker_config_key(),
            Some(path) => format!("{host}/{path}"),
        })
    }

    pub fn matches(&self, target: &Target) -> bool {
        self.host.matches(&target.registry) && self.path_matches(target.repository.as_ref())
    }

    fn path_matches(&self, repository: Option<&Repository>) -> bool {
        match (&self.path, repository) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(prefix), Some(repo)) => {
                let mut repo_segments = repo.segments();
                prefix.segments().all(|p| repo_segments.next() == Some(p))
            }
        }
    }

    pub fn specificity(&self) -> Specificity {
        Specificity {
            path_segments: self.path.as_ref().map_or(0, |p| p.segments().count()),
            exact_host: matches!(self.host, HostPattern::Exact(_)),
        }
    }
}

impl HostPattern {
    fn parse(authority: &str) -> Result<Self, &'static str> {
        if !authority.contains('*') {
            return RegistryHost::parse_authority(authority).map(Self::Exact);
        }
        let glob_host = authority.to_ascii_lowercase();
        let (host, port) = match glob_host.rsplit_once(':') {
            Some((host, port)) => (
                host.to_string(),
                Some(port.parse::<u16>().map_err(|_| "port is not a number")?),
            ),
            None => (glob_host, None),
        };
        if !is_valid_host(&host) {
            return Err("'*' must be a whole DNS label, as in *.example.com");
        }
        Ok(Self::Glob {
            labels: host.split('.').map(str::to_string).collect(),
            port: port.filter(|&p| p != 443),
        })
    }

    fn matches(&self, registry: &RegistryHost) -> bool {
        match self {
            Self::Exact(host) => host == registry,
            Self::Glob { labels, port } => {
                let target: Vec<&str> = registry.host().split('.').collect();
                *port == registry.port()
                    && labels.len() == target.len()
                    && labels.iter().zip(&target).all(|(l, t)| l == "*" || l == t)
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(host) => write!(f, "{host}")?,
            HostPattern::Glob { labels, port } => {
                f.write_str(&labels.join("."))?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
            }
        }
        if let Some(path) = &self.path {
            write!(f, "/{path}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(scope: &str, target: &str) -> bool {
        Scope::parse(scope)
            .unwrap()
            .matches(&Target::parse(target).unwrap())
    }

    #[test]
    fn paths_match_by_whole_segments() {
        assert!(matches("registry.test/a/b", "registry.test/a/b"));
        assert!(matches("registry.test/a/b", "registry.test/a/b/c:v1"));
        assert!(!matches("registry.test/a/b", "registry.test/a/bc"));
        assert!(!matches("registry.test/a/b", "registry.test/a"));
        assert!(!matches("registry.test/a/b", "registry.test"));
        assert!(matches("registry.test", "registry.test"));
        assert!(matches("registry.test", "registry.test/x/y"));
    }

    #[test]
    fn hosts_match_by_canonical_identity() {
        assert!(matches(
            "git.example.com:443/group",
            "git.example.com/group/sub/app"
        ));
        assert!(matches(
            "git.example.com/group",
            "git.example.com:443/group/sub/app"
        ));
        assert!(!matches(
            "git.example.com",
            "git.example.com:5000/group/app"
        ));
        assert!(matches("docker.io/library", "busybox"));
        assert!(matches("index.docker.io", "user/app"));
    }

    #[test]
    fn glob_labels_match_exactly_one_label() {
        assert!(matches("*.example.com", "a.example.com/x"));
        assert!(!matches("*.example.com", "a.b.example.com/x"));
        assert!(!matches("*.example.com", "example.com/x"));
        assert!(matches("*.example.com:5000", "a.example.com:5000/x"));
        assert!(!matches("*.example.com:5000", "a.example.com/x"));
        assert!(matches("*.example.com:443", "a.example.com/x"));
        assert!(matches("a.*.com/team", "a.example.com/team/app"));
    }

    #[test]
    fn partial_label_globs_are_refused() {
        assert!(Scope::parse("foo*.example.com").is_err());
        assert!(Scope::parse("https://registry.test/a").is_err());
        assert!(Scope::parse("registry.test/A").is_err());
    }

    #[test]
    fn specificity_orders_path_depth_then_exact_host() {
        let s = |x: &str| Scope::parse(x).unwrap().specificity();
        assert!(s("r.test/a/b") > s("r.test/a"));
        assert!(s("*.test/a/b") > s("r.test/a"));
        assert!(s("r.test/a") > s("*.test/a"));
        assert!(s("r.test") > s("*.test"));
    }

    #[test]
    fn docker_config_keys_are_what_docker_clients_look_up() {
        let key = |x: &str| Scope::parse(x).unwrap().docker_config_key();
        assert_eq!(
            key("docker.io").as_deref(),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(
            key("index.docker.io:443").as_deref(),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(key("myreg:5000").as_deref(), Some("myreg:5000"));
        assert_eq!(
            key("git.example.com:443").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(
            key("git.example.com/group/sub").as_deref(),
            Some("git.example.com/group/sub")
        );
        assert_eq!(
            key("docker.io/library").as_deref(),
            Some("docker.io/library")
        );
        assert_eq!(key("*.example.com"), None);
    }

    #[test]
    fn auths_keys_with_a_scheme_are_hosts_only() {
        let k = |x: &str| Scope::parse_auths_key(x).unwrap().to_string();
        assert_eq!(k("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(k("https://git.example.com:443/"), "git.example.com");
        assert_eq!(k("http://git.example.com/some/path"), "git.example.com");
        assert_eq!(k("git.example.com/group/sub"), "git.example.com/group/sub");
        assert_eq!(k("git.example.com:443"), "git.example.com");
    }
}
