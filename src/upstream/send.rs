//! [`Upstream`], the real [`SendUpstream`]: what outlives one request (policy, clients, token
//! cache, challenges seen) and, per request, the candidate loop ([`super::call`]) handed an
//! authorizer ([`super::auth`]) over one exchange with the registry ([`super::exchange`]).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;

use crate::identity::RegistryHost;
use crate::keychain::Keychain;
use crate::metrics::Metrics;
use crate::system::{Clock, SystemClock};

use super::auth::Authorizer;
use super::call::through_candidates;
use super::challenge::Challenges;
use super::client::Clients;
use super::connector::Reach;
use super::exchange::Exchange;
use super::mirror::MirrorClients;
use super::policy::{PolicyCell, UpstreamPolicy};
use super::token_cache::TokenCache;
use super::{SendUpstream, UpstreamBody, UpstreamError, UpstreamRequest};

/// Where Docker Hub's registry API is served; `docker.io` itself is not it.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Sends requests to real registries with the keychain's credentials.
///
/// - **Transport**: https only (a registry served over plain http, as containerd's own
///   `http://` hosts entries allow, is out of scope), TLS verified against the system roots plus the registry's
///   `ca_file`, HTTP/1.1 (measured cheaper than HTTP/2 for blobs: `super::client`), pooled
///   connections (one pool per
///   `ca_file`). Connecting (resolving included) times out after
///   [`super::CONNECT_TIMEOUT`], response headers after [`super::RESPONSE_TIMEOUT`]; a body
///   has no total deadline once it streams (blobs are big; the endpoint bounds its idle
///   time).
/// - **SSRF boundary**: every connection resolves the host once and is refused
///   ([`UpstreamError::NotAllowed`]) if any address is not public (see `address.rs`),
///   unless the policy allows that host; it then connects only to the addresses checked.
///   IP-literal (and numeric-spelled) registries are checked before anything else happens.
///   Token realms go through the same check; a redirect off the registry's host and port may
///   reach public addresses only, whatever the policy allows.
/// - **Auth**: see [`super::auth`]; tokens are cached per (origin, scope, identity) and
///   concurrent fetches coalesced; a mirror's origin is its `scheme://host:port`. Rejected candidates are logged without secrets and
///   counted in `auth_failures`, then the next is tried, then anonymous; when all fail the
///   last upstream answer is returned as is: the registry's 401/403, or the token
///   endpoint's 4xx (status, `Content-Type` and body) when that is where it ended; but when a
///   source failed on the way (a helper that timed out, a plugin that answered garbage), the
///   refusal's status comes with credgate's own error naming that source and its failure.
/// - **Headers**: of the client's, only `Accept`, `Range`, `If-None-Match` and `User-Agent`
///   reach the registry (credgate's User-Agent when the client sent none), whatever the
///   [`UpstreamRequest`] carries.
/// - **Redirects** are followed upstream-side (at most 5); `Authorization` is kept only while
///   hops stay on the same scheme, host and port, and other hops carry only `Accept` and
///   `Range`. A hop off the registry's own host and port must resolve to public addresses
///   only, whatever the allow-lists say, and is made from a pool of its own.
/// - **Mirrors** ([`UpstreamRequest::through_mirror`]): dialled with their hosts.toml
///   settings over a client of their own ([`super::mirror`]), which may reach the mirror's own
///   `host:port` whatever its address and nothing else privately; the keychain is asked for
///   the request's credential target; token realms follow the same rules with the mirror as
///   the registry (and, for a mirror sent the upstream's credentials, the upstream's domain).
pub struct Upstream {
    policy: PolicyCell,
    clients: Clients,
    mirrors: MirrorClients,
    tokens: TokenCache,
    challenges: Challenges,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(policy: UpstreamPolicy, metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        Self::with_clock(policy, metrics, Arc::new(SystemClock))
    }

    /// As [`Upstream::new`], with the clock token expiry is measured by.
    pub fn with_clock(
        policy: UpstreamPolicy,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, UpstreamError> {
        let policy = PolicyCell::new(policy);
        let clients = Clients::new(policy.clone())?;
        Ok(Self {
            mirrors: MirrorClients::new(policy.clone(), clients.system_roots()),
            clients,
            policy,
            tokens: TokenCache::new(clock),
            challenges: Challenges::default(),
            metrics,
        })
    }

    /// Replaces the policy (on SIGHUP). Pooled connections and TLS configs are dropped so
    /// that new allow-lists and CA files apply to the next request; tokens stay cached.
    pub fn set_policy(&self, policy: UpstreamPolicy) {
        self.policy.set(policy);
        self.clients.clear();
        self.mirrors.clear();
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<UpstreamPolicy> {
        self.policy.get()
    }

    /// Tokens cached now (bounded by the token cache's cap), for the metrics page.
    pub fn cached_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Mirror clients (connection pools) kept now, for the metrics page.
    pub fn mirror_clients(&self) -> usize {
        self.mirrors.len()
    }

    /// Registries whose auth challenge is remembered now, for the metrics page.
    pub fn remembered_challenges(&self) -> usize {
        self.challenges.len()
    }

    /// What `request` is sent and authorized with: the client for its registry's CA, under
    /// the policy in force, once the registry passed the literal-address check.
    pub(super) fn authorizer<'a>(
        &'a self,
        request: &'a UpstreamRequest,
    ) -> Result<Authorizer<'a>, UpstreamError> {
        let policy = self.policy.get();
        if let Some(via) = request.via() {
            let mirror = &via.mirror;
            return Ok(Authorizer {
                exchange: Exchange {
                    request,
                    scheme: mirror.scheme(),
                    client: self.mirrors.get(&mirror.transport)?,
                    off_host: self.clients.get(None, Reach::PublicOnly)?,
                    realm_client: self.clients.get(None, Reach::Policy)?,
                    metrics: &self.metrics,
                    authority: mirror.authority.clone(),
                    label: request.registry.to_string(),
                    origin: mirror.origin.clone(),
                    realm_also_on: mirror.upstream_realm_host.clone(),
                },
                policy,
                tokens: &self.tokens,
                challenges: &self.challenges,
            });
        }
        policy
            .check_literal(&request.registry)
            .map_err(|reason| UpstreamError::NotAllowed {
                host: request.registry.to_string(),
                reason,
            })?;
        let ca_file = policy.ca_file(&request.registry);
        let client = self.clients.get(ca_file, Reach::Policy)?;
        let off_host = self.clients.get(ca_file, Reach::PublicOnly)?;
        Ok(Authorizer {
            exchange: Exchange {
                request,
                scheme: "https",
                realm_client: client.clone(),
                client,
                off_host,
                metrics: &self.metrics,
                authority: dial_authority(&request.registry),
                label: request.registry.to_string(),
                origin: request.registry.to_string(),
                realm_also_on: None,
            },
            policy,
            tokens: &self.tokens,
            challenges: &self.challenges,
        })
    }
}

#[async_trait]
impl SendUpstream for Upstream {
    async fn send(
        &self,
        keychain: &Keychain,
        request: UpstreamRequest,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let authorizer = self.authorizer(&request)?;
        let ranking = keychain.rank(&request.credential_target()).await;
        through_candidates(&authorizer, &ranking).await
    }
}

/// `host[:port]` to connect to for `registry`; a mirror sent the upstream's credentials
/// accepts token realms on this host's domain too.
pub(crate) fn dial_authority(registry: &RegistryHost) -> String {
    if registry.is_docker_hub() {
        DOCKER_HUB_API.to_string()
    } else {
        registry.to_string()
    }
}
