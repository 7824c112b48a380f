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
//!   not one of credgate's own (they carry `X-Credgate-Secret`), and one that serves pulls.
//!   The request never widens that set: a host named only for another registry, a host
//!   spelled differently, or a file credgate cannot vouch for (a symlink, a hard link, not a
//!   regular file, over 1 MiB, not what containerd would parse) is refused ([`MirrorError`]).
//! - **Dialled as containerd would dial it** ([`named`]): its URL, path and `override_path`,
//!   `ca`, `client`, `skip_verify` and `dial_timeout`, through `crate::upstream`'s mirror
//!   client, which lets exactly that `host:port` be a private address.
//! - **Credentials**: the keychain's for the mirror's own host and the repository it serves,
//!   unless a `[[mirror]]` entry for its `host[:port]` says `credentials = "upstream"`.
//! - **Cheap per request**: files are kept parsed ([`hosts_files`]), bounded.
//!
//! For `credgate doctor` (another front end of the same decision), two crate-level calls:
//! [`Mirrors::chain`] lists the hosts containerd tries for a registry, in order, each with its
//! settings and whether credgate fronts it or may dial it as a mirror; [`probe`] tries one
//! mirror live with the credential it would get, as `Upstream::probe` does for a registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, MirrorCredentials, MirrorEntry};
use crate::containerd::files::{
    host_dir_for, shown_key, ContainerdFileError, HostScheme, HostSettings, HostsFile,
};
use crate::identity::{RegistryHost, Repository};
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
}

/// The hosts dir the daemon reads, the `[[mirror]]` entries, and the files read so far.
pub struct Mirrors {
    hosts_dir: PathBuf,
    entries: Vec<MirrorEntry>,
    files: hosts_files::HostsFiles,
}

impl Mirrors {
    pub fn new(hosts_dir: impl Into<PathBuf>, entries: Vec<MirrorEntry>) -> Self {
        Self {
            hosts_dir: hosts_dir.into(),
            entries,
            files: hosts_files::HostsFiles::default(),
        }
    }

    /// `[containerd] hosts_dir` and the `[[mirror]]` entries of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self::new(config.containerd.hosts_dir.clone(), config.mirrors.clone())
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
            .filter(|host| !host.is_credgate && host.serves_pulls())
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

    /// The hosts containerd tries for `ns`, in its order, the server (or containerd's
    /// default host for `ns`) last; for `credgate doctor`.
    pub(crate) fn chain(&self, ns: &str) -> Result<Chain, MirrorError> {
        let found = match self.hosts_file(ns) {
            Ok(found) => Some(found),
            Err(MirrorError::NoHostsFile { .. }) => None,
            Err(other) => return Err(other),
        };
        let mut hosts = Vec::new();
        let (file, server) = match &found {
            Some((file, parsed)) => {
                for settings in &parsed.hosts {
                    let role = if settings.is_credgate {
                        if settings.mirror_values.is_empty() {
                            HostRole::CredgateUpstream
                        } else {
                            HostRole::Fronted {
                                stands_for: settings
                                    .mirror_values
                                    .iter()
                                    .map(|v| shown_key(v))
                                    .collect(),
                            }
                        }
                    } else if settings.serves_pulls() {
                        match self.named(settings, file) {
                            Ok(named) => HostRole::Mirror(named),
                            Err(_) => HostRole::Operator,
                        }
                    } else {
                        HostRole::Operator
                    };
                    hosts.push(ChainHost {
                        settings: settings.clone(),
                        role,
                    });
                }
                (Some(file.clone()), parsed.server.clone())
            }
            None => (None, None),
        };
        hosts.push(ChainHost {
            settings: server.unwrap_or_else(|| default_server(ns)),
            role: HostRole::Server,
        });
        Ok(Chain { file, hosts })
    }

    fn named(&self, host: &HostSettings, file: &Path) -> Result<Arc<NamedMirror>, MirrorError> {
        let mirror = || host.shown();
        if host.is_credgate {
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
        let written = written_registry(host);
        let credentials = self
            .entries
            .iter()
            .find(|entry| Some(&entry.host) == written.as_ref())
            .map_or(MirrorCredentials::Own, |entry| entry.credentials);
        // The parser checked the host, so this always holds.
        let registry = named::mirror_registry(host).ok_or_else(|| MirrorError::NotNamed {
            mirror: mirror(),
            file: file.to_path_buf(),
            ns: String::new(),
        })?;
        Ok(Arc::new(NamedMirror {
            settings: host.clone(),
            file: file.to_path_buf(),
            registry,
            credentials,
        }))
    }

    /// The hosts.toml containerd reads for `ns`, parsed.
    fn hosts_file(&self, ns: &str) -> Result<(PathBuf, Arc<HostsFile>), MirrorError> {
        let no_file = || MirrorError::NoHostsFile {
            ns: ns.to_string(),
            hosts_dir: self.hosts_dir.clone(),
        };
        let dir = host_dir_for(&self.hosts_dir, ns)?.ok_or_else(no_file)?;
        let file = dir.join("hosts.toml");
        let parsed = self.files.read(&file)?.ok_or_else(no_file)?;
        Ok((file, parsed))
    }
}

/// The hosts containerd tries for one registry, in order.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    /// The hosts.toml that decides; `None` when containerd has none for the registry.
    pub file: Option<PathBuf>,
    pub hosts: Vec<ChainHost>,
}

#[derive(Debug, Clone)]
pub(crate) struct ChainHost {
    pub settings: HostSettings,
    pub role: HostRole,
}

/// What a host of the chain is to credgate.
#[derive(Debug, Clone)]
pub(crate) enum HostRole {
    /// credgate's host standing for these operator hosts (its `X-Credgate-Mirror` values).
    Fronted { stands_for: Vec<String> },
    /// credgate's own host for the upstream (`X-Credgate-Secret`, no `X-Credgate-Mirror`).
    CredgateUpstream,
    /// The operator's host that credgate dials when a fronted host names it.
    Mirror(Arc<NamedMirror>),
    /// The operator's host that credgate would not dial (not for pulls, or unusable).
    Operator,
    /// `server`, or containerd's default host for the registry: tried last.
    Server,
}

/// What one mirror made of the credential it would get.
#[derive(Debug)]
#[allow(dead_code)] // `credgate doctor`'s chain check calls it (src/doctor/).
pub(crate) struct MirrorProbe {
    /// Whose credential the mirror gets, and the keychain's decision for it.
    pub decision: Decision,
    /// `GET <prefix>/` with the winning credential (anonymous without one).
    pub outcome: Result<Probe, UpstreamError>,
}

/// Tries `mirror` live for `upstream` (and `repository`, when one is known) with the
/// credential it would get, through the same client and boundary as the endpoint.
#[allow(dead_code)] // `credgate doctor`'s chain check calls it (src/doctor/).
pub(crate) async fn probe(
    upstream_client: &Upstream,
    keychain: &Keychain,
    mirror: &Arc<NamedMirror>,
    upstream: &RegistryHost,
    repository: Option<&Repository>,
) -> Result<MirrorProbe, MirrorError> {
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

/// `host[:port]` as the host's URL writes it, canonical (`:443` or not alike): what a
/// `[[mirror]]` entry and a bare `--via` name compare with.
fn written_registry(host: &HostSettings) -> Option<RegistryHost> {
    RegistryHost::parse_authority(&host.authority).ok()
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
        capabilities: crate::containerd::files::Capabilities {
            pull: true,
            resolve: true,
            push: true,
            referrers: true,
        },
        ca: Vec::new(),
        client: Vec::new(),
        skip_verify: None,
        dial_timeout: None,
        is_credgate: false,
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
