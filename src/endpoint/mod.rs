//! The pull-through endpoint: the loopback HTTP mirror containerd reaches through hosts.toml.
//!
//! containerd sends `GET|HEAD /v2/<name>/{manifests|blobs}/<ref>?ns=<registry>` with the
//! hosts.toml `[header]` values; credgate checks the access boundary, fetches from the
//! upstream in `ns` with the keychain's credentials (through [`SendUpstream`]) and streams
//! the answer back. Decisions:
//!
//! - **Access.** Every request, whatever its path, must carry `X-Credgate-Secret` equal to the
//!   install's secret ([`MirrorSecret`], compared in constant time); otherwise 403. Requests
//!   are checked in this order: secret (403), path (404), method (405 with `Allow`), `ns`
//!   and names (400).
//! - **`/v2/`** is answered locally with 200 `{}` once the secret checks out, with or without
//!   `ns`: it is an API version probe and says nothing about any upstream.
//! - **`ns`** is required (400 without it: the endpoint never guesses an upstream), must be
//!   exactly one bare `host[:port]`, and is a lookup key: whether it may be dialled is the
//!   upstream half's allow-list (`UpstreamError::NotAllowed`, mapped to 403).
//! - **Paths** are validated before anything goes upstream: any percent-encoding, `.`/`..`
//!   segments, names outside the distribution grammar, bad tags, and digests other than
//!   `sha256`/`sha512` get 400; blobs must be addressed by digest.
//! - **Upstream answers** pass through with their status, so containerd moves on to its next
//!   host on anything >= 400 — except a final 401, which becomes 403: credgate has tried every
//!   credential it has, and a 401 would make containerd retry with its own. Only `Content-Length`, `Content-Type`, `Docker-Content-Digest`,
//!   `ETag`, `Content-Range`, `Accept-Ranges`, `Last-Modified` and `Retry-After` are kept (no hop-by-hop or
//!   auth headers such as `Www-Authenticate`); only `Accept`, `Range`, `If-None-Match` and
//!   `User-Agent` are forwarded.
//! - **Integrity.** A whole answer (any 2xx but 206) to a GET of a blob, or of a manifest by
//!   digest, is verified as it streams, except for containerd (by `User-Agent`), which checks
//!   every digest itself before commit, unless `[upstream] verify_digests = "always"`. A
//!   mismatch, a short or long body, an upstream failure or an upstream idle for
//!   [`Patience::body_idle`] aborts the client's connection ([`body`]).
//!   A 206 is passed through unverified only when the client sent `Range` (a range cannot be
//!   checked against a whole-content digest; the client verifies the assembled content); to a
//!   request without `Range` it is refused (502) ([`proxy`]).
//! - **Throttling.** An upstream 429 is waited out and retried within [`Patience`] before it
//!   is passed on.
//! - **Metrics** label requests with the canonical registry from `ns` when the keychain knows
//!   it, else `other` ([`crate::metrics`]); requests that name none (`/v2/`, refusals before
//!   a valid `ns` was read, and an `ns` the upstream boundary refused) count under `-`, so
//!   callers cannot create label values.
//! - **Mirrors** ([`crate::mirrors`]): a request under `/mirror/<n>` comes from a host
//!   install fronts and must carry exactly one `X-Credgate-Mirror` (checked after `ns`;
//!   prefix without header, header without prefix, two values: 400). It goes to that mirror
//!   only if the hosts.toml containerd uses for `ns` names it as one of the operator's hosts
//!   (else 403), with the mirror's own settings and the credential it gets, and with
//!   everything else above (patience, integrity, statuses) as for an upstream. A failure is
//!   relayed so containerd moves on to its next host, logged and counted as a hand-over
//!   (`credgate_mirror_handovers_total{mirror,reason}`; requests per mirror in
//!   `credgate_mirror_requests_total`).
//! - **Transport.** HTTP/1.1 only (containerd speaks HTTP/1.1 to `http://` mirrors); request
//!   heads are bounded to [`MAX_HEADERS`] headers and [`MAX_HEADER_BYTES`] bytes (431 beyond).
//! - **Connections.** At most [`MAX_ENDPOINT_CONNECTIONS`] are open; at the cap a stranger's
//!   connection or an idle kept-alive one is closed for the newcomer, never one being
//!   answered ([`connections`] has the order). A request without the right secret is
//!   answered `Connection: close`, so a stranger's connection lives for one head at most
//!   (10 s to send it); a trusted one is closed after 10 s idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::{DigestVerification, Listen};
use crate::containerd::files::DEFAULT_HOSTS_DIR;
use crate::daemon::Daemon;
use crate::identity::RegistryHost;
use crate::metrics::{Metrics, NO_REGISTRY};
use crate::mirrors::Mirrors;
use crate::secret::MirrorSecret;
use crate::upstream::{SendUpstream, UpstreamBody, UpstreamError};

mod body;
mod connections;
mod error;
mod metrics_listener;
mod patience;
mod proxy;
mod route;
mod server;

pub use body::BodyError;
pub use connections::Trust;
pub use error::EndpointError;
pub use metrics_listener::{serve_metrics, serve_metrics_reporting, serve_metrics_with};
pub use patience::Patience;
pub use route::{
    requested_mirror, ContentKind, ContentRoute, Digest, DigestAlgorithm, Reference, Route,
};
pub use server::{
    adopt_loopback, bind_loopback, HttpServer, Limits, ListenError, MAX_ENDPOINT_CONNECTIONS,
    MAX_HEADERS, MAX_HEADER_BYTES, MAX_METRICS_CONNECTIONS,
};

/// The header hosts.toml sends with the install's secret.
pub const SECRET_HEADER: &str = "x-credgate-secret";

/// Everything a request needs, shared by every connection.
pub struct EndpointState {
    daemon: Arc<Daemon>,
    upstream: Arc<dyn SendUpstream>,
    secret: RwLock<MirrorSecret>,
    /// The hosts dir and `[[mirror]]` entries in force, swapped on reload.
    mirrors: RwLock<Arc<Mirrors>>,
    metrics: Arc<Metrics>,
    patience: Patience,
    /// `[upstream] verify_digests` in force: true while every client's content is hashed.
    verify_every_client: AtomicBool,
    /// Wrong-secret refusals logged: one line per [`BAD_SECRET_LOG_WINDOW`], so a local
    /// user without the secret cannot flood the log.
    bad_secret_log: Mutex<BadSecretLog>,
}

/// How often a wrong-secret refusal is logged at most; the others are counted into the next
/// line.
const BAD_SECRET_LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct BadSecretLog {
    last: Option<Instant>,
    held_back: u64,
}

impl BadSecretLog {
    /// `Some(held back since the last line)` when a line may be written at `now`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < BAD_SECRET_LOG_WINDOW)
        {
            self.held_back = self.held_back.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

impl EndpointState {
    /// The keychain is taken from `daemon` on every request, so a SIGHUP reload applies to
    /// the next one. Mirrors are looked up in the default hosts dir, for the default
    /// `listen.mirror`, with no `[[mirror]]` entries until [`EndpointState::with_mirrors`].
    pub fn new(
        daemon: Arc<Daemon>,
        upstream: Arc<dyn SendUpstream>,
        secret: MirrorSecret,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            daemon,
            upstream,
            secret: RwLock::new(secret),
            mirrors: RwLock::new(Arc::new(Mirrors::new(
                DEFAULT_HOSTS_DIR,
                Listen::default().mirror_url(),
                Vec::new(),
            ))),
            metrics,
            patience: Patience::default(),
            verify_every_client: AtomicBool::new(
                DigestVerification::default() == DigestVerification::Always,
            ),
            bad_secret_log: Mutex::default(),
        }
    }

    /// Other waits on the upstream than [`Patience::default`] (tests use short ones).
    pub fn with_patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// Where fronted requests find their mirrors (`[containerd] hosts_dir`, `[[mirror]]`).
    pub fn with_mirrors(self, mirrors: Mirrors) -> Self {
        self.replace_mirrors(mirrors);
        self
    }

    /// Swaps in new mirror settings (reload); requests already admitted are not affected.
    pub fn replace_mirrors(&self, mirrors: Mirrors) {
        *self.mirrors.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(mirrors);
    }

    /// The mirror settings in force.
    pub fn mirrors(&self) -> Arc<Mirrors> {
        self.mirrors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets whose content is hashed as it streams (start and reload); see [`body`].
    pub fn set_digest_verification(&self, verification: DigestVerification) {
        let always = verification == DigestVerification::Always;
        self.verify_every_client.store(always, Ordering::Relaxed);
    }

    /// Swaps in a new secret (reload); requests already admitted are not affected.
    pub fn replace_secret(&self, secret: MirrorSecret) {
        *self.secret.write().expect("secret lock") = secret;
    }

    /// Exactly one `X-Credgate-Secret`, equal to the secret.
    fn check_secret(&self, headers: &HeaderMap) -> Result<(), EndpointError> {
        let mut presented = headers.get_all(SECRET_HEADER).iter();
        let (Some(value), None) = (presented.next(), presented.next()) else {
            return Err(EndpointError::BadSecret);
        };
        let secret = self.secret.read().expect("secret lock");
        if secret.matches(value.as_bytes()) {
            Ok(())
        } else {
            Err(EndpointError::BadSecret)
        }
    }
}

/// Serves the endpoint on `listener` until [`HttpServer::shutdown`], with
/// [`Limits::ENDPOINT`].
pub fn serve_endpoint(listener: tokio::net::TcpListener, state: Arc<EndpointState>) -> HttpServer {
    serve_endpoint_with(listener, state, Limits::ENDPOINT)
}

/// [`serve_endpoint`] with other limits (tests use small ones).
pub fn serve_endpoint_with(
    listener: tokio::net::TcpListener,
    state: Arc<EndpointState>,
    limits: Limits,
) -> HttpServer {
    server::spawn(listener, "pull-through endpoint", limits, move |request| {
        respond(state.clone(), request)
    })
}

/// Answers one request; every outcome is counted and none escapes as an error.
async fn respond(state: Arc<EndpointState>, request: Request<Incoming>) -> Response<UpstreamBody> {
    let mut registry = None;
    let response = match answer(&state, &request, &mut registry).await {
        Ok(response) => response,
        Err(error) => {
            log_refusal(&state, &request, &error);
            if matches!(
                error,
                EndpointError::Upstream(UpstreamError::NotAllowed { .. })
            ) {
                // A refused `ns` is counted as naming none: it never gets a label.
                registry = None;
            }
            let stranger = matches!(error, EndpointError::BadSecret);
            let mut response = error.into_response();
            if stranger {
                // A caller without the secret gets no kept-alive connection to sit on.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    let label = registry.as_ref().map(RegistryHost::to_string);
    let status = response.status();
    state.metrics.request(label.as_deref(), status.as_u16());
    tracing::debug!(
        method = %request.method(),
        path = request.uri().path(),
        registry = label.as_deref().unwrap_or(NO_REGISTRY),
        status = status.as_u16(),
        "pull-through request"
    );
    response
}

/// `registry` is set as soon as the request names a valid one, for the metrics label.
async fn answer(
    state: &EndpointState,
    request: &Request<Incoming>,
    registry: &mut Option<RegistryHost>,
) -> Result<Response<UpstreamBody>, EndpointError> {
    state.check_secret(request.headers())?;
    if let Some(trust) = request.extensions().get::<Trust>() {
        trust.grant();
    }
    let route = Route::parse(request.method(), request.uri())?;
    let mirror = route::requested_mirror(&route, request.headers())?;
    match route {
        Route::ApiVersion { .. } => Ok(api_version()),
        Route::Content(route) => {
            *registry = Some(route.registry.clone());
            match mirror {
                None => proxy::forward(state, route, request).await,
                Some(key) => proxy::forward_to_mirror(state, route, &key, request).await,
            }
        }
    }
}

/// The answer to containerd's `/v2/` probe.
fn api_version() -> Response<UpstreamBody> {
    let mut response = Response::new(error::full_body(Bytes::from_static(b"{}")));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

/// Refusals at the boundary and upstream failures are warnings; malformed requests from an
/// authenticated caller are debug noise.
fn log_refusal(state: &EndpointState, request: &Request<Incoming>, error: &EndpointError) {
    let method = request.method();
    let path = request.uri().path();
    match error {
        EndpointError::BadSecret => {
            let admitted = state
                .bad_secret_log
                .lock()
                .map(|mut log| log.admit(Instant::now()))
                .unwrap_or(None);
            if let Some(held_back) = admitted {
                tracing::warn!(%method, path, status = error.status().as_u16(), %error, held_back, "pull-through request refused (more of these within 10 s are counted, not logged)")
            }
        }
        EndpointError::Upstream(_) => {
            tracing::warn!(%method, path, status = error.status().as_u16(), %error, "pull-through request refused")
        }
        // Logged as a hand-over where it happened.
        EndpointError::Mirror(_) => {}
        _ => {
            tracing::debug!(%method, path, status = error.status().as_u16(), %error, "pull-through request refused")
        }
    }
}

#[cfg(test)]
mod tests;
