//! Mirrors through the gate (docs/design.md, "Mirrors through the gate"): which mirror a
//! fronted request may go to, how it is dialled, and whose credential it gets.
//!
//! `credgate install` fronts every host of a hosts.toml with one of credgate's own, which
//! sends `X-Credgate-Mirror = ["<the host's key>"]`. This module decides what that header may
//! reach:
//!
//! - **Only what the operator named, for that registry.** The daemon reads the hosts.toml
//!   containerd uses for `ns` itself (`<hosts_dir>/<ns>/hosts.toml`, with containerd's
//!   `host_port_` spelling first, when that directory exists, else `_default/hosts.toml`) and
//!   accepts the header only when it is exactly the key of one of the operator's hosts there:
//!   not one of credgate's own (they carry `X-Credgate-Secret` or sit at the endpoint's own
//!   address, as `containerd::files` tells them apart for install and doctor too), and one
//!   that serves pulls.
//!   The request never widens that set: a host named only for another registry, a host
//!   spelled differently, or a file credgate cannot vouch for (a symlink, a hard link, not a
//!   regular file, over 1 MiB, not what containerd would parse) is refused ([`MirrorError`]).
//! - **One file for both spellings.** containerd picks the file by `ns` as sent
//!   (`Registry.Test`, `registry.test:443`), while credentials go by the canonical registry
//!   (`registry.test`). A request whose two spellings pick different files is refused, so a
//!   reference spelled to miss `registry.test/` can't reach `_default`'s mirrors with
//!   `registry.test`'s credential. `lookup --via` asks with the REF's registry as containerd
//!   would send it ([`containerd_ns`]), so it answers as the endpoint does.
//! - **Dialled as containerd would dial it** ([`named`]): its URL, path and `override_path`,
//!   `ca`, `client`, `skip_verify` and `dial_timeout`, through `crate::upstream`'s mirror
//!   client, which lets exactly that `host:port` be a private address.
//! - **Credentials**: the keychain's for the mirror's own host and the repository it serves,
//!   unless a `[[mirror]]` entry for its `host[:port]` says `credentials = "upstream"`. An
//!   entry applies to an `http://` mirror only with `plain_http = true`, so an upstream's
//!   credential never goes over plain http unless the operator said so for that mirror.
//! - **Cheap per request**: files are kept parsed ([`hosts_files`]), bounded.
//!
//! For `credgate doctor` and `lookup --via` (other front ends of the same decision):
//! [`Chain`] is the one list of the hosts containerd tries for a registry, in order, each
//! with its settings and whether it is credgate's or a mirror credgate may dial
//! ([`Mirrors::chain`] for a registry, [`Mirrors::chain_of`] for a hosts.toml already read);
//! [`probe`] tries one mirror live with the credential it would get, as `Upstream::probe`
//! does for a registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, MirrorCredentials, MirrorEntry};
use crate::containerd::files::{
    host_dir_for, shown_key, Capabilities, ContainerdFileError, CredgateHost, HostScheme,
    HostSettings, HostsFile, Owner,
};
use crate::identity::{RegistryHost, Repository, Target};
use crate::keychain::{Decision, Keychain};
use crate::upstream::{Probe, Upstream, UpstreamError, UpstreamRequest};

mod hosts_files;
mod named;

pub use named::{MirrorRequest, NamedMirror};

/// Longest part of a caller's `X-Credgate-Mirror` value an error repeats.
const SHOWN_NAME_CHARS: usize = 120;

/// Why a fronted request, `lookup --via` or doctor cannot use a mirror; each names the
/// hosts.toml or directory, and shows a host without user info or query.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    File(#[from] ContainerdFileError),
    #[error(
        "no hosts.toml for {ns} under {hosts_dir} (neither a directory of its own nor \
         _default has one), so containerd tries no mirror for it"
    )]
    NoHostsFile { ns: String, hosts_dir: PathBuf },
    #[error(
        "{mirror} is not a host of {file}; credgate dials only the hosts named there for {ns}"
    )]
    NotNamed {
        mirror: String,
        file: PathBuf,
        ns: String,
    },
    #[error(
        "{mirror} in {file} is credgate's own host (it carries X-Credgate-Secret), not a mirror"
    )]
    Credgate { mirror: String, file: PathBuf },
    #[error("{mirror} in {file} serves neither pull nor resolve")]
    NotForPulls { mirror: String, file: PathBuf },
    #[error(
        "{mirror} in {file}: with override_path, the URL path must be /v2/<repository prefix> \
         (lower-case repository segments) to prefix the repositories it serves"
    )]
    Prefix { mirror: String, file: PathBuf },
    #[error("{name} names more than one host of {file} ({keys}); give the host key exactly as the file writes it")]
    Ambiguous {
        name: String,
        file: PathBuf,
        keys: String,
    },
    #[error(
        "ns {ns:?} picks {picked}, but its registry {registry} picks {canonical}; credgate \
         dials a mirror only when both spellings pick the same hosts.toml (write the \
         reference as {registry}/...)"
    )]
    Spelling {
        ns: String,
        registry: String,
        picked: String,
        canonical: String,
    },
    #[error("ns {ns:?} is not a registry host[:port]")]
    NotARegistry { ns: String },
    #[error(
        "{mirror} in {file} is plain http on port 443, which names the https registry's \
         credentials; write https:// or the port it listens on"
    )]
    PlainHttpOnHttpsPort { mirror: String, file: PathBuf },
    #[error(
        "{mirror} in {file} is sent the credential of the registry pulled through it \
         ([[mirror]] credentials = \"upstream\"), and this file serves every registry without \
         a directory of its own: name the registry"
    )]
    NoUpstream { mirror: String, file: PathBuf },
}

/// The hosts dir the daemon reads, the endpoint's URL, the `[[mirror]]` entries, and the
/// files read so far.
pub struct Mirrors {
    hosts_dir: PathBuf,
    /// `http://<listen.mirror>`: hosts there are credgate's, never mirrors.
    endpoint: String,
    entries: Vec<MirrorEntry>,
    files: hosts_files::HostsFiles,
}

impl Mirrors {
    pub fn new(
        hosts_dir: impl Into<PathBuf>,
        endpoint: impl Into<String>,
        entries: Vec<MirrorEntry>,
    ) -> Self {
        Self {
            hosts_dir: hosts_dir.into(),
            endpoint: endpoint.into(),
            entries,
            files: hosts_files::HostsFiles::default(),
        }
    }

    /// `[containerd] hosts_dir`, `listen.mirror` and the `[[mirror]]` entries of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self::new(
            config.containerd.hosts_dir.clone(),
            config.listen.mirror_url(),
            config.mirrors.clone(),
        )
    }

    pub fn hosts_dir(&self) -> &Path {
        &self.hosts_dir
    }

    /// hosts.toml files kept parsed now, for the metrics page.
    pub fn cached_files(&self) -> usize {
        self.files.len()
    }

    /// The mirror a fronted request names: `key` must be exactly the key of one of the
    /// operator's own hosts serving pulls in the hosts.toml containerd uses for `ns` (the
    /// registry as containerd sent it).
    pub fn find(&self, ns: &str, key: &str) -> Result<Arc<NamedMirror>, MirrorError> {
        let (file, hosts) = self.hosts_file(ns)?;
        match hosts.hosts.iter().find(|host| host.key == key) {
            Some(host) => self.named(host, &file),
            None => Err(MirrorError::NotNamed {
                mirror: shown_name(key),
                file,
                ns: ns.to_string(),
            }),
        }
    }

    /// [`Mirrors::find`] for a person: the key as the file writes it, or a bare
    /// `host[:port]` that names exactly one of the operator's hosts serving pulls.
    pub fn find_by_name(&self, ns: &str, name: &str) -> Result<Arc<NamedMirror>, MirrorError> {
        let (file, hosts) = self.hosts_file(ns)?;
        if let Some(host) = hosts.hosts.iter().find(|host| host.key == name) {
            return self.named(host, &file);
        }
        let wanted = RegistryHost::parse_authority(name).ok();
        let matching: Vec<&HostSettings> = hosts
            .hosts
            .iter()
            .filter(|host| host.owner(&self.endpoint) == Owner::Operator && host.serves_pulls())
            .filter(|host| wanted.is_some() && written_registry(host) == wanted)
            .collect();
        match matching[..] {
            [host] => self.named(host, &file),
            [] => Err(MirrorError::NotNamed {
                mirror: shown_name(name),
                file,
                ns: ns.to_string(),
            }),
            _ => Err(MirrorError::Ambiguous {
                name: shown_name(name),
                file,
                keys: matching
                    .iter()
                    .map(|h| h.shown())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The hosts containerd tries for `ns` (the registry as containerd sends it), in its
    /// order; for `lookup --via`.
    pub(crate) fn chain(&self, ns: &str) -> Result<Chain, MirrorError> {
        match self.hosts_file(ns) {
            Ok((file, parsed)) => Ok(self.chain_of(&file, &parsed, Some(ns))),
            Err(MirrorError::NoHostsFile { .. }) => Ok(Chain {
                file: None,
                registry: Some(ns.to_string()),
                hosts: Vec::new(),
                server: None,
            }),
            Err(other) => Err(other),
        }
    }

    /// The chain of `parsed`, the hosts.toml at `file`, which containerd reads for
    /// `registry` (`None`: `_default`'s, for every registry without a directory); for
    /// `credgate doctor`, which reads each file itself.
    pub(crate) fn chain_of(
        &self,
        file: &Path,
        parsed: &HostsFile,
        registry: Option<&str>,
    ) -> Chain {
        let hosts = parsed
            .hosts
            .iter()
            .map(|settings| {
                let role = match settings.owner(&self.endpoint) {
                    Owner::Credgate(host) => HostRole::Credgate(host),
                    Owner::Operator => match self.named(settings, file) {
                        Ok(named) => HostRole::Mirror(named),
                        Err(_) => HostRole::Operator,
                    },
                };
                ChainHost {
                    settings: settings.clone(),
                    role,
                }
            })
            .collect();
        Chain {
            file: Some(file.to_path_buf()),
            registry: registry.map(str::to_string),
            hosts,
            server: parsed.server.clone(),
        }
    }

    fn named(&self, host: &HostSettings, file: &Path) -> Result<Arc<NamedMirror>, MirrorError> {
        let mirror = || host.shown();
        if host.owner(&self.endpoint).is_credgate() {
            return Err(MirrorError::Credgate {
                mirror: mirror(),
                file: file.to_path_buf(),
            });
        }
        if !host.serves_pulls() {
            return Err(MirrorError::NotForPulls {
                mirror: mirror(),
                file: file.to_path_buf(),
            });
        }
        // The parser checked the host, so only plain http on 443 has no registry.
        let registry =
            named::mirror_registry(host).ok_or_else(|| MirrorError::PlainHttpOnHttpsPort {
                mirror: mirror(),
                file: file.to_path_buf(),
            })?;
        // An entry names one scheme: plain http only when it says `plain_http = true`.
        let plain_http = host.scheme == HostScheme::Http;
        let credentials = self
            .entries
            .iter()
            .find(|entry| entry.plain_http == plain_http && entry.host == registry)
            .map_or(MirrorCredentials::Own, |entry| entry.credentials);
        Ok(Arc::new(NamedMirror {
            settings: host.clone(),
            file: file.to_path_buf(),
            registry,
            credentials,
        }))
    }

    /// The hosts.toml containerd reads for `ns`, parsed; refused when the canonical registry
    /// of `ns`, whose credentials a mirror may be sent, would pick another file.
    fn hosts_file(&self, ns: &str) -> Result<(PathBuf, Arc<HostsFile>), MirrorError> {
        let no_file = || MirrorError::NoHostsFile {
            ns: ns.to_string(),
            hosts_dir: self.hosts_dir.clone(),
        };
        let dir = host_dir_for(&self.hosts_dir, ns)?;
        let registry = RegistryHost::parse(ns)
            .map_err(|_| MirrorError::NotARegistry { ns: ns.to_string() })?
            .to_string();
        if registry != ns {
            let canonical = host_dir_for(&self.hosts_dir, &registry)?;
            if canonical != dir {
                let shown = |dir: Option<PathBuf>| {
                    dir.map_or("no hosts.toml".to_string(), |d| {
                        d.join("hosts.toml").display().to_string()
                    })
                };
                return Err(MirrorError::Spelling {
                    ns: ns.to_string(),
                    registry,
                    picked: shown(dir),
                    canonical: shown(canonical),
                });
            }
        }
        let dir = dir.ok_or_else(no_file)?;
        let file = dir.join("hosts.toml");
        let parsed = self.files.read(&file)?.ok_or_else(no_file)?;
        Ok((file, parsed))
    }
}

/// The hosts containerd tries for one registry, in order: the one chain doctor's listing and
/// live checks and `lookup --via` show.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    /// The hosts.toml that decides; `None` when containerd has none for the registry.
    pub file: Option<PathBuf>,
    /// The registry as containerd names it in `ns`; `None` for `_default/hosts.toml`, which
    /// serves every registry without a directory of its own.
    pub registry: Option<String>,
    /// The hosts tried before the server, in order.
    pub hosts: Vec<ChainHost>,
    /// `server` as the file writes it; `None`: the registry itself (containerd's default).
    pub server: Option<HostSettings>,
}

impl Chain {
    /// The host containerd tries last: `server`, else its default host for the registry.
    pub fn last_host(&self) -> Option<HostSettings> {
        self.server
            .clone()
            .or_else(|| self.registry.as_deref().map(default_server))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ChainHost {
    pub settings: HostSettings,
    pub role: HostRole,
}

/// What a host of the chain is to credgate.
#[derive(Debug, Clone)]
pub(crate) enum HostRole {
    /// One of credgate's own hosts: fronting a mirror, for the upstream, or stale.
    Credgate(CredgateHost),
    /// The operator's host that credgate dials when a fronted host names it.
    Mirror(Arc<NamedMirror>),
    /// The operator's host that serves neither pull nor resolve: never tried for a pull.
    Operator,
}

/// What one mirror made of the credential it would get.
#[derive(Debug)]
pub(crate) struct MirrorProbe {
    /// Whose credential the mirror gets, and the keychain's decision for it.
    pub decision: Decision,
    /// `GET <prefix>/` with the winning credential (anonymous without one).
    pub outcome: Result<Probe, UpstreamError>,
}

/// Tries `mirror` live for `upstream` (and `repository`, when one is known) with the
/// credential it would get, through the same client and boundary as the endpoint. Without
/// an upstream (a `_default` mirror serves every registry), only a mirror that gets its own
/// credential can be tried.
pub(crate) async fn probe(
    upstream_client: &Upstream,
    keychain: &Keychain,
    mirror: &Arc<NamedMirror>,
    upstream: Option<&RegistryHost>,
    repository: Option<&Repository>,
) -> Result<MirrorProbe, MirrorError> {
    let upstream = match (upstream, mirror.credentials) {
        (Some(upstream), _) => upstream,
        // Its own credential and transport do not depend on the registry pulled.
        (None, MirrorCredentials::Own) => &mirror.registry,
        (None, MirrorCredentials::Upstream) => {
            return Err(MirrorError::NoUpstream {
                mirror: mirror.shown(),
                file: mirror.file.clone(),
            })
        }
    };
    let (target, mirror_repository) = mirror.credential_target(upstream, repository)?;
    let decision = keychain.lookup(&target).await;
    let request = UpstreamRequest::new(
        mirror.registry.clone(),
        mirror_repository,
        http::Method::GET,
        format!("{}/", mirror.api_root()),
        &http::HeaderMap::new(),
    )
    .through_mirror(mirror.dial(upstream), target);
    let credential = decision.winner.as_ref().map(|winner| {
        (
            &decision.ranking.candidates[winner.rank],
            &winner.credential,
        )
    });
    let outcome = upstream_client.probe_request(&request, credential).await;
    Ok(MirrorProbe { decision, outcome })
}

/// `host[:port]` as the host's URL writes it, canonical (`:443` or not alike): what a bare
/// `--via` name compares with.
fn written_registry(host: &HostSettings) -> Option<RegistryHost> {
    RegistryHost::parse_authority(&host.authority).ok()
}

/// The `ns` containerd sends for `reference` (a REF as `credgate lookup` takes it, parsed as
/// `target`): its registry exactly as written, since containerd's reference normalisation
/// only turns a missing registry or `index.docker.io` into `docker.io`.
pub fn containerd_ns(reference: &str, target: &Target) -> String {
    let text = reference.trim();
    let written = if target.repository.is_none() {
        // A bare registry, perhaps with a scheme and a path (`https://index.docker.io/v1/`).
        let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
        rest.split('/').next().unwrap_or(rest)
    } else {
        match text.split_once('/') {
            // docker's rule for whether the first component names a registry.
            Some((first, _))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                first
            }
            _ => crate::identity::DOCKER_HUB,
        }
    };
    if written == "index.docker.io" {
        crate::identity::DOCKER_HUB.to_string()
    } else {
        written.to_string()
    }
}

/// containerd's host for `ns` when hosts.toml names no server: Docker Hub's API host, else
/// `https://<ns>`.
fn default_server(ns: &str) -> HostSettings {
    let authority = if ns == crate::identity::DOCKER_HUB {
        "registry-1.docker.io".to_string()
    } else {
        ns.to_ascii_lowercase()
    };
    HostSettings {
        key: format!("https://{authority}"),
        scheme: HostScheme::Https,
        authority,
        path: "/v2".to_string(),
        override_path: false,
        capabilities: Capabilities::ALL,
        ca: Vec::new(),
        client: Vec::new(),
        skip_verify: None,
        dial_timeout: None,
        secret_header: false,
        secret_values: Vec::new(),
        mirror_values: Vec::new(),
    }
}

/// A caller's mirror name as errors repeat it: no user info or query, and short.
fn shown_name(name: &str) -> String {
    let shown = shown_key(name);
    let mut short: String = shown.chars().take(SHOWN_NAME_CHARS).collect();
    if short.len() < shown.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests;
