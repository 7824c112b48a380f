//! A mirror found named in a hosts.toml, and what one request to it is: the URL path it is
//! sent to, the transport it is dialled with, the repository the mirror serves it under, and
//! whose credential the keychain is asked for.
//!
//! - **Paths, as containerd builds them**: the host's path prefix, then the repository as the
//!   client named it, then `manifests/<ref>` or `blobs/<digest>`, joined and cleaned
//!   (`https://m.test/` is `/v2/<name>/…`, `https://harbor.test/v2/hub` with `override_path`
//!   is `/v2/hub/<name>/…`).
//! - **The mirror's repository**: with `override_path`, the path after a leading `/v2`
//!   segment prefixes the repository (`harbor.test/v2/hub` + `library/nginx` →
//!   `hub/library/nginx`), since that is the repository the mirror serves (its token scope and
//!   the credential's scope); a path without a leading `/v2`, or no `override_path`, is an
//!   API prefix and the repository is the client's.
//! - **Identity**: the mirror's [`NamedMirror::origin`], `scheme://host:port`, keys its
//!   token and challenge cache entries and its metrics label, so plain http never shares one
//!   with https. Its credential scope is its own host with the port written out for plain
//!   http (`http://m.test` is `m.test:80`), so a credential for `m.test`, an https scope, never
//!   goes to plain http; plain http on port 443 has no such scope and is refused.
//! - **Credentials**: the mirror's own host and repository; or, with `[[mirror]] credentials =
//!   "upstream"` (and `plain_http = true` for an `http://` mirror), the upstream registry and
//!   the client's repository.

use std::sync::Arc;

use crate::config::MirrorCredentials;
use crate::containerd::files::{clean_path, HostScheme, HostSettings};
use crate::identity::{RegistryHost, Repository, Target};
use crate::upstream::{dial_authority, MirrorDial, MirrorTransport, UpstreamRequest};

use super::MirrorError;

/// A host of a hosts.toml that a fronted request may go to.
#[derive(Debug, Clone)]
pub struct NamedMirror {
    pub(crate) settings: HostSettings,
    /// The hosts.toml that names it.
    pub file: std::path::PathBuf,
    /// The mirror's `host:port`, the port written unless it is https's 443.
    pub registry: RegistryHost,
    pub credentials: MirrorCredentials,
}

/// One request to a mirror.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    pub mirror: Arc<NamedMirror>,
    /// The upstream registry containerd named in `ns`.
    pub upstream: RegistryHost,
    /// The repository as the client named it.
    pub repository: Repository,
    /// The repository the mirror serves it under.
    pub mirror_repository: Repository,
    /// Whose credential the keychain is asked for.
    pub credential_target: Target,
}

impl NamedMirror {
    /// The mirror's URL as logs, metrics and errors show it.
    pub fn shown(&self) -> String {
        self.settings.shown()
    }

    /// `scheme://host:port`, the port always written: what its caches and metrics key it by.
    pub fn origin(&self) -> String {
        self.settings.origin()
    }

    /// The key exactly as the hosts.toml writes it.
    pub fn key(&self) -> &str {
        &self.settings.key
    }

    /// Its settings as the hosts.toml gives them.
    pub(crate) fn settings(&self) -> &HostSettings {
        &self.settings
    }

    /// `scheme://host[:port]` and the path prefix requests get, e.g. `https://m.test/v2`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}{}",
            self.settings.scheme.as_str(),
            self.settings.authority,
            self.settings.path
        )
    }

    /// A request for `repository` of `upstream` to this mirror.
    pub fn request(
        self: &Arc<Self>,
        upstream: &RegistryHost,
        repository: &Repository,
    ) -> Result<MirrorRequest, MirrorError> {
        let (credential_target, mirror_repository) =
            self.credential_target(upstream, Some(repository))?;
        Ok(MirrorRequest {
            mirror: self.clone(),
            upstream: upstream.clone(),
            repository: repository.clone(),
            mirror_repository: mirror_repository.unwrap_or_else(|| repository.clone()),
            credential_target,
        })
    }

    /// Whose credential this mirror gets for `repository` of `upstream` (none: the registry
    /// alone), and the repository the mirror serves it under.
    pub fn credential_target(
        &self,
        upstream: &RegistryHost,
        repository: Option<&Repository>,
    ) -> Result<(Target, Option<Repository>), MirrorError> {
        let mirror_repository = repository.map(|r| self.mirror_repository(r)).transpose()?;
        let target = match self.credentials {
            MirrorCredentials::Own => Target::new(self.registry.clone(), mirror_repository.clone()),
            MirrorCredentials::Upstream => Target::new(upstream.clone(), repository.cloned()),
        };
        Ok((target, mirror_repository))
    }

    /// The mirror's API root without its trailing `/`: `/v2`, `/prefix/v2`, or an
    /// `override_path` path (`/` when that is empty).
    pub fn api_root(&self) -> String {
        let root = join_clean(&[&self.settings.path]);
        if root == "/" {
            String::new()
        } else {
            root
        }
    }

    /// The repository the mirror serves `repository` under (see the module doc).
    fn mirror_repository(&self, repository: &Repository) -> Result<Repository, MirrorError> {
        let prefix = if self.settings.override_path {
            // Only what follows a leading `/v2` segment; another path is an API root.
            let path = self.settings.path.trim_start_matches('/');
            match path.strip_prefix("v2") {
                Some(rest) if rest.starts_with('/') => rest.trim_matches('/').to_string(),
                _ => String::new(),
            }
        } else {
            String::new()
        };
        if prefix.is_empty() {
            return Ok(repository.clone());
        }
        Repository::parse(&format!("{prefix}/{repository}")).map_err(|_| MirrorError::Prefix {
            mirror: self.shown(),
            file: self.file.clone(),
        })
    }

    /// How the mirror is dialled; `upstream` names the registry whose realms a mirror sent
    /// the upstream's credentials may also use.
    pub fn dial(&self, upstream: &RegistryHost) -> MirrorDial {
        let settings = &self.settings;
        MirrorDial {
            shown: self.shown(),
            origin: self.origin(),
            authority: settings.authority.clone(),
            transport: MirrorTransport {
                plain_http: settings.scheme == HostScheme::Http,
                named: settings.registry().unwrap_or_else(|| self.registry.clone()),
                ca_files: settings.ca.clone(),
                client_pairs: settings
                    .client
                    .iter()
                    .map(|pair| (pair.cert.clone(), pair.key.clone()))
                    .collect(),
                skip_verify: settings.skip_verify.unwrap_or(false),
                dial_timeout: settings.dial_timeout,
            },
            upstream_realm_host: (self.credentials == MirrorCredentials::Upstream)
                .then(|| dial_authority(upstream)),
        }
    }
}

impl MirrorRequest {
    /// The path of `tail` (`manifests/<ref>`, `blobs/<digest>`, or empty for the API root)
    /// on the mirror, as containerd joins it.
    pub fn path(&self, tail: &str) -> String {
        join_clean(&[&self.mirror.settings.path, self.repository.as_str(), tail])
    }

    /// The upstream request for `tail`, keeping of `client_headers` what any upstream may see.
    pub fn upstream_request(
        &self,
        method: http::Method,
        tail: &str,
        client_headers: &http::HeaderMap,
    ) -> UpstreamRequest {
        UpstreamRequest::new(
            self.mirror.registry.clone(),
            Some(self.mirror_repository.clone()),
            method,
            self.path(tail),
            client_headers,
        )
        .through_mirror(
            self.mirror.dial(&self.upstream),
            self.credential_target.clone(),
        )
    }
}

/// Go's `path.Join("/", parts...)`: one clean absolute path.
fn join_clean(parts: &[&str]) -> String {
    clean_path(&parts.join("/"))
}

/// A mirror's `host:port` in canonical form, its credential scope; for plain http the port
/// is always written, so `http://m.test` is `m.test:80`, never the https registry `m.test`.
/// `None` for plain http on port 443, which canonical form would make that https registry.
pub(crate) fn mirror_registry(settings: &HostSettings) -> Option<RegistryHost> {
    match settings.scheme {
        HostScheme::Http => settings.registry().filter(|r| r.port().is_some()),
        HostScheme::Https => RegistryHost::parse_authority(&settings.authority).ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::containerd::files::read_hosts_file;

    fn mirror(table: &str, credentials: MirrorCredentials) -> Arc<NamedMirror> {
        let file = Path::new("/etc/containerd/certs.d/docker.io/hosts.toml");
        let mut read = read_hosts_file(file, table).unwrap();
        let settings = read.hosts.remove(0);
        Arc::new(NamedMirror {
            registry: mirror_registry(&settings).unwrap(),
            settings,
            file: file.to_path_buf(),
            credentials,
        })
    }

    fn repo(s: &str) -> Repository {
        Repository::parse(s).unwrap()
    }

    #[test]
    fn paths_and_mirror_repositories_follow_containerd() {
        let hub = RegistryHost::docker_hub();
        let nginx = repo("library/nginx");
        // (host table, path of manifests/v1, mirror's repository, base URL)
        let cases = [
            (
                "[host.\"https://m.test\"]\n",
                "/v2/library/nginx/manifests/v1",
                "library/nginx",
                "https://m.test/v2",
            ),
            (
                "[host.\"https://m.test/\"]\n",
                "/v2/library/nginx/manifests/v1",
                "library/nginx",
                "https://m.test//v2",
            ),
            (
                "[host.\"https://m.test/api/proxy\"]\n",
                "/api/proxy/v2/library/nginx/manifests/v1",
                "library/nginx",
                "https://m.test/api/proxy/v2",
            ),
            (
                "[host.\"https://harbor.test/v2/hub-proxy\"]\n  override_path = true\n",
                "/v2/hub-proxy/library/nginx/manifests/v1",
                "hub-proxy/library/nginx",
                "https://harbor.test/v2/hub-proxy",
            ),
            (
                "[host.\"https://a.test/artifactory/api/docker/hub\"]\n  override_path = true\n",
                "/artifactory/api/docker/hub/library/nginx/manifests/v1",
                "library/nginx",
                "https://a.test/artifactory/api/docker/hub",
            ),
            (
                "[host.\"https://m.test/v2\"]\n  override_path = true\n",
                "/v2/library/nginx/manifests/v1",
                "library/nginx",
                "https://m.test/v2",
            ),
            (
                "[host.\"https://m.test\"]\n  override_path = true\n",
                "/library/nginx/manifests/v1",
                "library/nginx",
                "https://m.test",
            ),
        ];
        for (table, path, mirror_repository, base) in cases {
            let mirror = mirror(table, MirrorCredentials::Own);
            let request = mirror.request(&hub, &nginx).unwrap();
            assert_eq!(request.path("manifests/v1"), path, "{table}");
            assert_eq!(
                request.mirror_repository.as_str(),
                mirror_repository,
                "{table}"
            );
            assert_eq!(mirror.base_url(), base, "{table}");
            assert_eq!(
                request.credential_target.to_string(),
                format!("{}/{mirror_repository}", mirror.registry),
                "{table}"
            );
        }
    }

    #[test]
    fn a_prefix_that_is_no_repository_is_refused_naming_the_mirror() {
        let mirror = mirror(
            "[host.\"https://m.test/v2/Hub_Proxy\"]\n  override_path = true\n",
            MirrorCredentials::Own,
        );
        let err = mirror
            .request(&RegistryHost::docker_hub(), &repo("library/nginx"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://m.test/v2/Hub_Proxy"), "{err}");
        assert!(err.contains("override_path"), "{err}");
    }

    #[test]
    fn credentials_are_the_mirrors_own_or_the_upstreams() {
        let upstream = RegistryHost::parse("registry.test").unwrap();
        let app = repo("group/app");
        let own = mirror("[host.\"http://cache.test\"]\n", MirrorCredentials::Own);
        let request = own.request(&upstream, &app).unwrap();
        assert_eq!(
            request.credential_target.to_string(),
            "cache.test:80/group/app"
        );
        let dial = own.dial(&upstream);
        assert!(dial.transport.plain_http);
        assert_eq!(dial.transport.named.to_string(), "cache.test:80");
        assert_eq!(dial.upstream_realm_host, None);

        let forwarding = mirror(
            "[host.\"https://cache.test:5000\"]\n  skip_verify = true\n",
            MirrorCredentials::Upstream,
        );
        let request = forwarding.request(&upstream, &app).unwrap();
        assert_eq!(
            request.credential_target.to_string(),
            "registry.test/group/app"
        );
        let dial = forwarding.dial(&RegistryHost::docker_hub());
        assert!(dial.transport.skip_verify && !dial.transport.plain_http);
        assert_eq!(
            dial.upstream_realm_host.as_deref(),
            Some("registry-1.docker.io")
        );
        let sent =
            request.upstream_request(http::Method::GET, "manifests/v1", &http::HeaderMap::new());
        assert_eq!(sent.registry.to_string(), "cache.test:5000");
        assert_eq!(sent.path, "/v2/group/app/manifests/v1");
        assert_eq!(
            sent.credential_target().to_string(),
            "registry.test/group/app"
        );
    }
}
