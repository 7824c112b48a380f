//! Each registry the keychain names, against the real registry: resolve its credential and
//! make one authenticated `GET /v2/` through [`crate::upstream`] (the endpoint's own challenge
//! parsing, token fetch and SSRF-checked client), bounded by [`super::LIVE_TIMEOUT`]. Then,
//! per hosts.toml chain, each host credgate fronts in containerd's order (mirror 1, mirror 2,
//! …, the upstream), with the credential the endpoint would send it ([`crate::mirrors::probe`]:
//! the mirror dialled with its hosts.toml settings), all at once, each bounded the same way.

use std::sync::Arc;

use futures::future::join_all;

use crate::config::{Config, MirrorCredentials};
use crate::containerd::files::CredgateHost;
use crate::identity::{RegistryHost, Scope, Target};
use crate::keychain::{Attempt, Decision, Keychain};
use crate::metrics::Metrics;
use crate::mirrors::{probe, Chain, HostRole, MirrorError, NamedMirror};
use crate::upstream::{Probe, Upstream, UpstreamError, UpstreamPolicy, UpstreamRequest};

use super::{Check, LIVE_TIMEOUT};

/// Most hosts of the chains tried live; the rest are counted in one line.
const MAX_PROBES: usize = 32;

/// Every scope the keychain can name without running a helper.
pub(super) async fn registries(keychain: &Keychain) -> Vec<Scope> {
    keychain
        .list()
        .await
        .into_iter()
        .map(|(scope, _)| scope)
        .collect()
}

pub(super) async fn check(
    config: &Config,
    keychain: &Keychain,
    scopes: &[Scope],
    chains: &[Chain],
) -> Vec<Check> {
    let upstream = match Upstream::new(
        UpstreamPolicy::from_config(config),
        Arc::new(Metrics::new()),
    ) {
        Ok(upstream) => upstream,
        Err(e) => {
            return vec![Check::fail(
                format!("live checks: cannot build the upstream client: {e}"),
                "fix the upstream TLS settings in credgate's config",
            )]
        }
    };
    let mut checks = Vec::new();
    let fronted = fronted_mirrors(chains);
    for scope in scopes {
        let Some(registry) = scope.exact_registry() else {
            checks.push(Check::ok(format!(
                "keychain scope {scope} is a glob: no live check (name a host with `credgate lookup HOST/REPO`)"
            )));
            continue;
        };
        // A mirror's credential is tried against the mirror, as the endpoint dials it.
        if let Some((file, mirror)) = fronted.iter().find(|(_, m)| m.registry == *registry) {
            checks.push(Check::ok(format!(
                "keychain scope {scope} is the credential of mirror {} ({file}): tried with its chain below",
                mirror.shown()
            )));
            continue;
        }
        let target = Target::new(registry.clone(), scope.path().cloned());
        checks.push(one_scope(&upstream, keychain, &target).await);
    }
    checks.extend(mirrors(&upstream, keychain, chains).await);
    checks
}

/// The credential the keychain picks for one scope, against its registry; a path scope's
/// token is asked for `repository:<path>:pull`.
async fn one_scope(upstream: &Upstream, keychain: &Keychain, requested: &Target) -> Check {
    let decision = keychain.lookup(requested).await;
    let target = &decision.ranking.target;
    let registry = &target.registry;
    let (Some(winner), Some(candidate)) = (&decision.winner, decision.winner_candidate()) else {
        let failures: Vec<&str> = decision
            .attempts
            .iter()
            .filter_map(|(_, a)| match a {
                Attempt::Failed(message) => Some(message.as_str()),
                _ => None,
            })
            .collect();
        return if failures.is_empty() {
            Check::warn(
                format!("registry {registry}: the keychain lists it but yields no credential (a helper had none stored)"),
                format!("store one (e.g. docker login {registry}) or remove the entry; `credgate explain {registry}` shows every source"),
            )
        } else {
            Check::fail(
                format!(
                    "registry {registry}: no credential could be fetched: {}",
                    failures.join("; ")
                ),
                format!("fix the failing source; `credgate explain {registry}` shows every source"),
            )
        };
    };
    let who = format!(
        "registry {target} as {:?} from {}",
        winner.credential.username,
        candidate.describe()
    );
    let probe = tokio::time::timeout(
        LIVE_TIMEOUT,
        upstream.probe(target, candidate, &winner.credential),
    )
    .await;
    match probe {
        Err(_) => Check::fail(
            format!("{who}: no answer within {LIVE_TIMEOUT:?}"),
            format!("check that this node reaches {registry} (DNS, proxy, firewall)"),
        ),
        Ok(Ok(Probe::Accepted { status, authorized: true })) if status.is_success() => {
            Check::ok(format!("{who}: accepted (GET /v2/ {status})"))
        }
        Ok(Ok(Probe::Accepted { status, authorized: false })) if status.is_success() => Check::ok(format!(
            "{who}: {registry} asks for no auth at /v2/ (GET /v2/ {status}), so the credential is only used where it is challenged"
        )),
        Ok(Ok(Probe::Accepted { status, .. })) => Check::warn(
            format!("{who}: GET /v2/ answered {status}"),
            format!("check that {registry} is a registry (the distribution API at https://{registry}/v2/)"),
        ),
        Ok(Ok(Probe::Rejected { status })) => Check::fail(
            format!("{who}: rejected (HTTP {status})"),
            format!("the credential for {registry} from {} was rejected; update it", candidate.describe()),
        ),
        Ok(Err(e)) => unreachable(&who, registry, &e),
    }
}

/// One host of a chain that credgate fronts, to try live.
enum Fronted {
    /// The `n`th fronted host, and the mirror it names.
    Mirror { n: usize, mirror: Arc<NamedMirror> },
    /// credgate's upstream host: the registry itself.
    Upstream,
}

/// The live check of every host credgate fronts, chain by chain in containerd's order.
async fn mirrors(upstream: &Upstream, keychain: &Keychain, chains: &[Chain]) -> Vec<Check> {
    let mut tries = Vec::new();
    for chain in chains {
        let Some(file) = chain.file.as_deref() else {
            continue;
        };
        let registry = chain
            .registry
            .as_deref()
            .and_then(|ns| RegistryHost::parse(ns).ok());
        let mut n = 0;
        for host in &chain.hosts {
            let fronted = match &host.role {
                HostRole::Credgate(fronted @ CredgateHost::Fronted { .. }) => {
                    n += 1;
                    // A fronted host naming no mirror of the file is a fronting warning already.
                    let Some(mirror) = fronted.mirror().and_then(|key| named(chain, key)) else {
                        continue;
                    };
                    Fronted::Mirror { n, mirror }
                }
                // `_default`'s upstream is every registry: the keychain's checks above.
                HostRole::Credgate(CredgateHost::Upstream) if registry.is_some() => {
                    Fronted::Upstream
                }
                _ => continue,
            };
            tries.push((file.display().to_string(), registry.clone(), fronted));
        }
    }
    let more = tries.len().saturating_sub(MAX_PROBES);
    tries.truncate(MAX_PROBES);
    let mut checks = join_all(tries.iter().map(|(file, registry, fronted)| {
        one_host(upstream, keychain, file, registry.as_ref(), fronted)
    }))
    .await;
    if more > 0 {
        checks.push(Check::ok(format!(
            "{more} more of credgate's fronted hosts not tried live (doctor tries {MAX_PROBES})"
        )));
    }
    checks
}

/// Every mirror a fronted host names that gets its own credential, with its file.
fn fronted_mirrors(chains: &[Chain]) -> Vec<(String, Arc<NamedMirror>)> {
    chains
        .iter()
        .flat_map(|chain| {
            let file = chain
                .file
                .as_deref()
                .map_or(String::new(), |f| f.display().to_string());
            chain
                .hosts
                .iter()
                .filter_map(|host| match &host.role {
                    HostRole::Credgate(fronted) => fronted.mirror(),
                    _ => None,
                })
                .filter_map(|key| named(chain, key))
                .filter(|mirror| mirror.credentials == MirrorCredentials::Own)
                .map(move |mirror| (file.clone(), mirror))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The chain's mirror whose host key is exactly `key`.
fn named(chain: &Chain, key: &str) -> Option<Arc<NamedMirror>> {
    chain.hosts.iter().find_map(|host| match &host.role {
        HostRole::Mirror(mirror) if mirror.key() == key => Some(mirror.clone()),
        _ => None,
    })
}

async fn one_host(
    upstream: &Upstream,
    keychain: &Keychain,
    file: &str,
    registry: Option<&RegistryHost>,
    fronted: &Fronted,
) -> Check {
    match fronted {
        Fronted::Mirror { n, mirror } => {
            let tried = tokio::time::timeout(
                LIVE_TIMEOUT,
                probe(upstream, keychain, mirror, registry, None),
            )
            .await;
            let place = format!("{file}: mirror {n} {}", mirror.shown());
            match tried {
                Err(_) => timed_out(&place, &mirror.shown()),
                Ok(Err(MirrorError::NoUpstream { .. })) => Check::ok(format!(
                    "{place} gets the credential of each registry pulled through it \
                     ([[mirror]] credentials = \"upstream\"): no live check for this file"
                )),
                Ok(Err(e)) => Check::warn(
                    format!("{place}: {e}"),
                    format!("correct that host in {file}, then credgate install"),
                ),
                Ok(Ok(tried)) => {
                    let whose = match mirror.credentials {
                        MirrorCredentials::Own => "",
                        MirrorCredentials::Upstream => " ([[mirror]] credentials = \"upstream\")",
                    };
                    let who = format!("{place} {}{whose}", identity(&tried.decision));
                    let at = format!("{}/", mirror.api_root());
                    let reaches = format!(
                        "that this node reaches {} with the settings {file} gives it (ca, client, \
                         skip_verify); meanwhile containerd hands its pulls to the next host",
                        mirror.base_url()
                    );
                    verdict(&who, &at, &tried.decision, tried.outcome, &reaches)
                }
            }
        }
        Fronted::Upstream => {
            let Some(registry) = registry else {
                return Check::ok(format!("{file}: no registry to try"));
            };
            let place = format!("{file}: upstream {registry}");
            let tried =
                tokio::time::timeout(LIVE_TIMEOUT, try_registry(upstream, keychain, registry))
                    .await;
            match tried {
                Err(_) => timed_out(&place, &registry.to_string()),
                Ok((decision, outcome)) => {
                    let who = format!("{place} {}", identity(&decision));
                    let reaches = format!(
                        "that this node reaches https://{registry} (DNS, proxy, firewall, TLS)"
                    );
                    verdict(&who, "/v2/", &decision, outcome, &reaches)
                }
            }
        }
    }
}

/// The registry-wide credential the endpoint would send `registry`, against it.
async fn try_registry(
    upstream: &Upstream,
    keychain: &Keychain,
    registry: &RegistryHost,
) -> (Decision, Result<Probe, UpstreamError>) {
    let decision = keychain.lookup(&Target::new(registry.clone(), None)).await;
    let request = UpstreamRequest::new(
        decision.ranking.target.registry.clone(),
        decision.ranking.target.repository.clone(),
        http::Method::GET,
        "/v2/".to_string(),
        &http::HeaderMap::new(),
    );
    let credential = decision.winner.as_ref().map(|winner| {
        (
            &decision.ranking.candidates[winner.rank],
            &winner.credential,
        )
    });
    let outcome = upstream.probe_request(&request, credential).await;
    (decision, outcome)
}

/// `as "<user>" from <source>`, or that the keychain has no credential: never a secret.
fn identity(decision: &Decision) -> String {
    match (&decision.winner, decision.winner_candidate()) {
        (Some(winner), Some(candidate)) => format!(
            "as {:?} from {}",
            winner.credential.username,
            candidate.describe()
        ),
        _ => format!(
            "anonymously (the keychain has no credential for {})",
            decision.ranking.target
        ),
    }
}

fn timed_out(place: &str, host: &str) -> Check {
    Check::warn(
        format!("{place}: no answer within {LIVE_TIMEOUT:?}"),
        format!("check that this node reaches {host} (DNS, proxy, firewall)"),
    )
}

/// What one fronted host made of the credential it gets (`who`, from `decision`), `GET at`.
/// A host that is down or refuses only costs its pulls a hand-over to the next host, so that
/// is a warning; a credential credgate holds being rejected is a failure, as for a registry.
fn verdict(
    who: &str,
    at: &str,
    decision: &Decision,
    outcome: Result<Probe, UpstreamError>,
    reaches: &str,
) -> Check {
    let target = &decision.ranking.target;
    match outcome {
        Ok(Probe::Accepted {
            status,
            authorized: true,
        }) if status.is_success() => Check::ok(format!("{who}: accepted (GET {at} {status})")),
        Ok(Probe::Accepted {
            status,
            authorized: false,
        }) if status.is_success() => Check::ok(format!(
            "{who}: it asks for no auth at {at} (GET {at} {status})"
        )),
        Ok(Probe::Accepted { status, .. }) => Check::warn(
            format!("{who}: GET {at} answered {status}"),
            format!("check {reaches}"),
        ),
        Ok(Probe::Rejected { status }) => match decision.winner_candidate() {
            Some(candidate) => Check::fail(
                format!("{who}: rejected (HTTP {status})"),
                format!(
                    "the credential for {target} from {} was rejected; update it",
                    candidate.describe()
                ),
            ),
            None => Check::warn(
                format!("{who}: refused (HTTP {status}), so its pulls go to the next host"),
                format!(
                    "give the keychain a credential for {target} (e.g. a [[registry]] entry with match = \"{target}\")"
                ),
            ),
        },
        Err(e) => Check::warn(format!("{who}: unreachable: {e}"), format!("check {reaches}")),
    }
}

fn unreachable(who: &str, registry: &RegistryHost, error: &UpstreamError) -> Check {
    let fix = match error {
        UpstreamError::NotAllowed { .. } => format!(
            "if {registry} really is on a private address, name it in a [[registry]] entry or [upstream] allow_private"
        ),
        UpstreamError::RealmNotAllowed { .. } => {
            "list the token realm's host in [upstream] allow_realm_hosts if it is legitimate".to_string()
        }
        UpstreamError::CaFile { .. } | UpstreamError::Tls { .. } => {
            format!("give the [[registry]] entry for {registry} a readable ca_file")
        }
        _ => format!("check that this node reaches https://{registry} (DNS, proxy, firewall, TLS)"),
    };
    Check::fail(format!("{who}: unreachable: {error}"), fix)
}
