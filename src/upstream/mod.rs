//! Upstream auth: turn the keychain's ranked candidates into an authorized request to the
//! real registry, so containerd never sees a 401 from credgate that it would answer with its
//! own (possibly missing) credentials.
//!
//! The endpoint reaches the upstream only through [`SendUpstream`]; [`Upstream`] is the real
//! implementation (TLS-verified, token-caching, SSRF-checked), and tests may put an
//! in-process fake behind the seam for faults a real registry cannot produce.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;

use std::sync::Arc;

use crate::identity::{RegistryHost, Repository, Target};
use crate::keychain::Keychain;

mod address;
mod auth;
mod call;
mod challenge;
mod client;
mod connector;
mod exchange;
#[cfg(test)]
mod hostile;
mod lru;
mod mirror;
mod policy;
mod probe;
mod redirect;
mod send;
mod token;
mod token_cache;

pub use address::non_public_reason;
pub use client::RESPONSE_TIMEOUT;
pub use connector::CONNECT_TIMEOUT;
pub use mirror::{MirrorDial, MirrorTransport, MIRROR_CLIENTS};
pub use policy::{on_own_domain, UpstreamPolicy};
pub use probe::Probe;
pub(crate) use send::dial_authority;
pub use send::Upstream;
// What a registry sends, parsed, for crate::fuzzing.
pub(crate) use challenge::{parse as parse_challenges, preferred as preferred_challenge};
pub(crate) use challenge::{AuthScheme, Challenge};
pub(crate) use token::{parse_rfc3339, parse_token};

/// Any error inside a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body streamed from upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// One request as the endpoint forwards it: the upstream registry (from `ns`), the
/// repository (absent for `/v2/`), and the distribution API path without `ns`. Sent
/// [`UpstreamRequest::through_mirror`], `registry` and `repository` are the mirror's (its
/// `host:port` and the repository it serves) and `path` is the mirror's request path.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub registry: RegistryHost,
    pub repository: Option<Repository>,
    pub method: http::Method,
    /// `/v2/`, `/v2/<name>/manifests/<ref>` or `/v2/<name>/blobs/<digest>` (a mirror's may
    /// have a prefix).
    pub path: String,
    /// The client's headers worth forwarding: `Accept`, `Range`, `If-None-Match`,
    /// `User-Agent`. Private, so [`UpstreamRequest::new`]'s filter is the only way in.
    headers: http::HeaderMap,
    /// Set for a request to a mirror named in hosts.toml.
    via: Option<Arc<Via>>,
}

/// A mirror a request goes to, and whose credential the keychain is asked for.
#[derive(Debug)]
pub struct Via {
    pub mirror: MirrorDial,
    /// The mirror's own host and repository, or the upstream's (`credentials = "upstream"`).
    pub credentials: Target,
}

impl UpstreamRequest {
    /// The request for `path`, keeping of the client's headers only those the registry may
    /// see: never `X-Credgate-Secret` nor the client's own `Authorization`.
    pub fn new(
        registry: RegistryHost,
        repository: Option<Repository>,
        method: http::Method,
        path: String,
        client_headers: &http::HeaderMap,
    ) -> Self {
        Self {
            registry,
            repository,
            method,
            path,
            headers: exchange::forwarded(client_headers),
            via: None,
        }
    }

    /// The same request sent to `mirror` instead, authorized with the keychain's candidates
    /// for `credentials`.
    pub fn through_mirror(mut self, mirror: MirrorDial, credentials: Target) -> Self {
        self.via = Some(Arc::new(Via {
            mirror,
            credentials,
        }));
        self
    }

    /// The mirror this request goes to, if any.
    pub fn via(&self) -> Option<&Via> {
        self.via.as_deref()
    }

    /// Whose credentials the keychain is asked for.
    pub fn credential_target(&self) -> Target {
        match &self.via {
            Some(via) => via.credentials.clone(),
            None => Target::new(self.registry.clone(), self.repository.clone()),
        }
    }

    /// The client headers the registry may see (already filtered).
    pub fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
}

/// Why no upstream response could be had. Each variant names the host or realm and never a
/// secret; the endpoint maps them to HTTP statuses in one place. Clone, so a coalesced token
/// fetch's failure reaches every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The SSRF boundary: a loopback, link-local, private or metadata address not allowed.
    #[error("upstream {host} is not allowed: {reason}")]
    NotAllowed { host: String, reason: String },
    #[error("token realm {realm} is not allowed: {reason}")]
    RealmNotAllowed { realm: String, reason: String },
    #[error("upstream {host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("upstream {host} did not answer in time")]
    TimedOut { host: String },
    #[error("upstream {host} answered in a way credgate cannot use: {reason}")]
    Protocol { host: String, reason: String },
    #[error("token endpoint {realm} failed: {reason}")]
    Token { realm: String, reason: String },
    /// A registry's `ca_file` could not be used; that registry is unreachable until fixed.
    #[error("CA file {path} for upstream TLS: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("upstream TLS configuration: {reason}")]
    Tls { reason: String },
    /// A mirror's `client` certificate or key (hosts.toml) could not be used.
    #[error("client certificate {path} for a mirror: {reason}")]
    ClientCertificate { path: PathBuf, reason: String },
}

/// Sends one request upstream with the keychain's credentials: candidates in ranking
/// order, then anonymous; blob redirects followed without credentials.
#[async_trait]
pub trait SendUpstream: Send + Sync {
    async fn send(
        &self,
        keychain: &Keychain,
        request: UpstreamRequest,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError>;
}
