//! Each registry the keychain names, against the real registry: resolve its credential and
//! make one authenticated `GET /v2/` through [`crate::upstream`] (the endpoint's own challenge
//! parsing, token fetch and SSRF-checked client), bounded by [`super::LIVE_TIMEOUT`].

use std::sync::Arc;

use crate::config::Config;
use crate::identity::{RegistryHost, Scope, Target};
use crate::keychain::{Attempt, Keychain};
use crate::metrics::Metrics;
use crate::upstream::{Probe, Upstream, UpstreamError, UpstreamPolicy};

use super::hosts::Chain;
use super::{Check, LIVE_TIMEOUT};

/// Every scope the keychain can name without running a helper.
pub(super) async fn registries(keychain: &Keychain) -> Vec<Scope> {
    keychain
        .list()
        .await
        .into_iter()
        .map(|(scope, _)| scope)
        .collect()
}

pub(super) async fn check(config: &Config, keychain: &Keychain, scopes: &[Scope]) -> Vec<Check> {
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
    for scope in scopes {
        let Some(registry) = scope.exact_registry() else {
            checks.push(Check::ok(format!(
                "keychain scope {scope} is a glob: no live check (name a host with `credgate lookup HOST/REPO`)"
            )));
            continue;
        };
        let target = Target::new(registry.clone(), scope.path().cloned());
        checks.push(one_scope(&upstream, keychain, &target).await);
    }
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

/// Live credential checks of the mirrors credgate fronts, one per [`super::hosts::Link::Fronted`]
/// of each chain: the seam for the check that tries the credential the keychain gives a mirror
/// (docs/design.md, "Which credential a mirror gets") against that mirror, dialled with its
/// hosts.toml settings. That credential is decided by the daemon's mirror lookup
/// (`credgate lookup --via`), which this build does not have yet, so nothing is checked here
/// and nothing is claimed: a mirror's credential shows only in pulls.
pub(super) fn mirrors(_chains: &[Chain]) -> Vec<Check> {
    Vec::new()
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
