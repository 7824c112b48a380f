//! Canonical registry identity: the one answer to "is this the same registry?".

use std::fmt;

use super::IdentityError;

/// The canonical name of Docker Hub; every alias folds into it.
pub const DOCKER_HUB: &str = "docker.io";

/// Host names Docker Hub is reached or saved under.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A registry host in canonical form: lower-case, no scheme, no path, and `:443` dropped
/// because it names the same TLS endpoint as the bare host. Any other port stays distinct.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost {
    host: String,
    port: Option<u16>,
}

impl RegistryHost {
    /// Parses a registry as users and tools write it: `host`, `host:port`, `[::1]:5000`,
    /// `https://host/`, `https://index.docker.io/v1/`. A path after the host is ignored,
    /// as docker/cli does for `auths` keys with a scheme.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let trimmed = input.trim();
        let without_scheme = strip_scheme(trimmed);
        let authority = without_scheme.split('/').next().unwrap_or_default();
        Self::parse_authority(authority).map_err(|reason| IdentityError::Registry {
            input: input.to_string(),
            reason,
        })
    }

    /// Parses `host[:port]` with nothing around it.
    pub(crate) fn parse_authority(authority: &str) -> Result<Self, &'static str> {
        if authority.is_empty() {
            return Err("no host");
        }
        let (host, port) = split_host_port(authority)?;
        let host = host.to_ascii_lowercase();
        if !is_valid_host(&host) {
            return Err("not a valid host name or IP address");
        }
        // Else `https://*.example.com` would be one registry that prints as the glob scope.
        if host.contains('*') {
            return Err("'*' belongs in scopes; a registry is one host");
        }
        let port = match port {
            Some(443) => None,
            other => other,
        };
        let host = if DOCKER_HUB_ALIASES.contains(&host.as_str()) && port.is_none() {
            DOCKER_HUB.to_string()
        } else {
            host
        };
        Ok(Self { host, port })
    }

    pub fn docker_hub() -> Self {
        Self {
            host: DOCKER_HUB.to_string(),
            port: None,
        }
    }

    pub fn is_docker_hub(&self) -> bool {
        self.host == DOCKER_HUB && self.port.is_none()
    }

    /// The host without the port (IPv6 literals keep their brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, unless it is the default 443.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The key docker/cli saves Docker Hub under; other registries are saved as `host[:port]`.
    pub fn docker_config_key(&self) -> String {
        if self.is_docker_hub() {
            "https://index.docker.io/v1/".to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl std::str::FromStr for RegistryHost {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

pub(crate) fn strip_scheme(input: &str) -> &str {
    for scheme in ["https://", "http://"] {
        // `get`, not slicing: the input may have a multi-byte character where the scheme ends.
        if input
            .get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
        {
            return &input[scheme.len()..];
        }
    }
    input
}

pub(crate) fn has_scheme(input: &str) -> bool {
    strip_scheme(input).len() != input.len()
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or("unterminated IPv6 literal")?;
        let host = &authority[..end + 2];
        match &rest[end + 1..] {
            "" => (host, None),
            tail => (
                host,
                Some(tail.strip_prefix(':').ok_or("junk after IPv6 literal")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| "port out of range")?)
        }
        Some(_) => return Err("port is not a number"),
    };
    Ok((host, port))
}

/// A DNS name of `[a-z0-9-]` labels, an IPv4 address or a bracketed IPv6 literal.
/// `*` is accepted as a whole label here so that scopes can reuse the parser.
pub(crate) fn is_valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    host.split('.').all(|label| {
        label == "*"
            || (!label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(input: &str) -> String {
        RegistryHost::parse(input).unwrap().to_string()
    }

    #[test]
    fn docker_hub_aliases_fold_into_docker_io() {
        for input in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
            "docker.io:443",
            "https://registry-1.docker.io",
            "INDEX.DOCKER.IO",
        ] {
            assert_eq!(canon(input), "docker.io", "{input}");
        }
    }

    #[test]
    fn host_names_are_case_insensitive() {
        assert_eq!(canon("Registry.Example.COM"), "registry.example.com");
    }

    #[test]
    fn port_443_and_scheme_and_slash_are_the_bare_host() {
        assert_eq!(canon("registry.example.com:443"), "registry.example.com");
        assert_eq!(
            canon("https://registry.example.com:443/"),
            "registry.example.com"
        );
        assert_eq!(
            canon("https://registry.example.com"),
            "registry.example.com"
        );
    }

    #[test]
    fn other_ports_stay_distinct_from_the_bare_host() {
        for input in ["registry.example.com:80", "registry.example.com:5000"] {
            assert_eq!(canon(input), input);
            assert_ne!(
                RegistryHost::parse(input).unwrap(),
                RegistryHost::parse("registry.example.com").unwrap()
            );
        }
        assert_eq!(canon("docker.io:5000"), "docker.io:5000");
    }

    #[test]
    fn loopback_forms_stay_themselves() {
        for input in ["[::1]:5000", "localhost:5000", "127.0.0.1:5000"] {
            assert_eq!(canon(input), input);
        }
        assert_eq!(canon("[::1]"), "[::1]");
        assert_eq!(canon("[::1]:443"), "[::1]");
    }

    #[test]
    fn bad_registries_name_the_input() {
        for input in [
            "",
            "host:port",
            "[::1",
            "bad_host",
            "-x.example.com",
            "h:99999",
            "*.example.com",
            "https://*",
        ] {
            let err = RegistryHost::parse(input).unwrap_err().to_string();
            assert!(err.contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn docker_hub_is_saved_under_the_legacy_key() {
        assert_eq!(
            RegistryHost::docker_hub().docker_config_key(),
            "https://index.docker.io/v1/"
        );
        assert_eq!(canon("git.example.com:443"), "git.example.com");
    }
}
