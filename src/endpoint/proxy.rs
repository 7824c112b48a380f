//! One manifest or blob request forwarded upstream, and its answer relayed back: a few
//! request headers out, a few response headers and the streamed body in.
//!
//! - A request to a mirror (`/mirror/<n>` with `X-Credgate-Mirror`) goes where
//!   [`crate::mirrors`] says, with the same patience and checks; whatever fails is answered
//!   with its status (containerd then tries its next host), logged as a hand-over and
//!   counted per mirror.
//! - A 429 is waited out and retried within [`super::Patience`] before anything is relayed.
//! - Every 2xx but 206 is the whole content: for digest-addressed content it is verified as
//!   it streams, whatever the status says, unless the client is containerd and
//!   `[upstream] verify_digests` leaves the check to it. Its length is always checked. A 206 is relayed unverified only when the client
//!   asked for a range; to a request without `Range` it is a protocol error (502), never
//!   passed on as if it were whole. A 2xx without a body for a GET by digest is one too.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::header;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{Expectations, StreamedBody, Tally};
use super::error::full_body;
use super::patience::Throttled;
use super::route::{ContentRoute, Digest};
use super::{EndpointError, EndpointState};
use crate::metrics::Handover;
use crate::upstream::{UpstreamBody, UpstreamError, UpstreamRequest};

/// What the client needs back; hop-by-hop and auth headers are dropped with everything else.
const KEPT_RESPONSE_HEADERS: [&str; 8] = [
    "content-length",
    "content-type",
    "docker-content-digest",
    "etag",
    "content-range",
    "accept-ranges",
    "last-modified",
    "retry-after",
];

/// What the client asked, as far as relaying the answer is concerned.
struct Asked<'a> {
    route: &'a ContentRoute,
    method: &'a Method,
    /// The client sent `Range`: a 206 is an answer it asked for.
    ranged: bool,
    /// A whole answer is hashed on its way (see [`hashes_for`]).
    hashed: bool,
}

/// Whether whole answers to a client sending `headers` are hashed as they stream: always,
/// unless the client is containerd (its content store verifies each digest before commit, on
/// every pull path; `ctr content fetch-blob` is the exception docs/design.md names) and
/// `[upstream] verify_digests` is not `always`.
fn hashes_for(state: &EndpointState, headers: &HeaderMap) -> bool {
    let containerd = headers
        .get(header::USER_AGENT)
        .is_some_and(|agent| agent.as_bytes().starts_with(b"containerd/"));
    state.verify_every_client.load(Ordering::Relaxed) || !containerd
}

pub(super) async fn forward(
    state: &EndpointState,
    route: ContentRoute,
    request: &Request<Incoming>,
) -> Result<Response<UpstreamBody>, EndpointError> {
    let method = request.method().clone();
    // The upstream keeps only the client headers the registry may see.
    let upstream_request = UpstreamRequest::new(
        route.registry.clone(),
        Some(route.repository.clone()),
        method.clone(),
        route.upstream_path(),
        request.headers(),
    );
    let upstream = send_patiently(state, &route, upstream_request).await?;
    let asked = Asked {
        route: &route,
        method: &method,
        ranged: request.headers().contains_key(header::RANGE),
        hashed: hashes_for(state, request.headers()),
    };
    relay(state, &asked, upstream)
}

/// The request sent to the mirror `key` names instead of the upstream. Every failure is
/// answered here (not returned), so it is logged once, as a hand-over.
pub(super) async fn forward_to_mirror(
    state: &EndpointState,
    route: ContentRoute,
    key: &str,
    request: &Request<Incoming>,
) -> Result<Response<UpstreamBody>, EndpointError> {
    let mirrors = state.mirrors();
    let found = mirrors
        .find(&route.ns, key)
        .and_then(|mirror| mirror.request(&route.registry, &route.repository));
    let mirror_request = match found {
        Ok(mirror_request) => mirror_request,
        Err(error) => {
            state.metrics.mirror_handover(None, Handover::NotNamed);
            // Debug, so a hosts.toml key in the error is escaped, never a forged field.
            tracing::warn!(registry = %route.registry, repository = %route.repository, error = ?error.to_string(), status = 403, reason = %Handover::NotNamed, "mirror refused; containerd moves on to its next host");
            return Ok(EndpointError::from(error).into_response());
        }
    };
    let shown = mirror_request.mirror.shown();
    // Metrics label a mirror by its origin only, never its path (label values aren't escaped).
    let origin = mirror_request.mirror.origin();
    let method = request.method().clone();
    let upstream_request =
        mirror_request.upstream_request(method.clone(), &route.tail(), request.headers());
    let asked = Asked {
        route: &route,
        method: &method,
        ranged: request.headers().contains_key(header::RANGE),
        hashed: hashes_for(state, request.headers()),
    };
    let answered = match send_patiently(state, &route, upstream_request).await {
        Ok(upstream) => relay(state, &asked, upstream),
        Err(error) => Err(error),
    };
    let (status, handover) = match &answered {
        Ok(response) => (
            response.status(),
            Handover::for_status(response.status().as_u16()),
        ),
        Err(error) => (error.status(), Some(handover_for(error))),
    };
    state.metrics.mirror_request(Some(&origin), status.as_u16());
    if let Some(reason) = handover {
        state.metrics.mirror_handover(Some(&origin), reason);
        let error = answered.as_ref().err().map(ToString::to_string);
        tracing::warn!(mirror = ?shown, registry = %route.registry, repository = %route.repository, credentials = %mirror_request.credential_target, status = status.as_u16(), %reason, error = error.as_ref().map(tracing::field::debug), "mirror failed; containerd moves on to its next host");
    }
    Ok(answered.unwrap_or_else(EndpointError::into_response))
}

/// Why a request the mirror never answered usefully was handed over.
fn handover_for(error: &EndpointError) -> Handover {
    match error {
        EndpointError::Upstream(
            UpstreamError::NotAllowed { .. } | UpstreamError::RealmNotAllowed { .. },
        ) => Handover::NotAllowed,
        EndpointError::Upstream(UpstreamError::TimedOut { .. }) => Handover::TimedOut,
        EndpointError::Mirror(_) => Handover::NotNamed,
        _ => Handover::Unreachable,
    }
}

/// The upstream's answer, a 429 first waited out and retried as [`super::Patience`] allows.
async fn send_patiently(
    state: &EndpointState,
    route: &ContentRoute,
    request: UpstreamRequest,
) -> Result<Response<UpstreamBody>, EndpointError> {
    let keychain = state.daemon.keychain();
    let mut throttled = Throttled::default();
    loop {
        let upstream = state.upstream.send(&keychain, request.clone()).await?;
        if upstream.status() != StatusCode::TOO_MANY_REQUESTS {
            return Ok(upstream);
        }
        let now = SystemTime::now();
        let Some(wait) = state
            .patience
            .wait_before_retry(upstream.headers(), throttled, now)
        else {
            return Ok(upstream);
        };
        // Its body is not wanted, and holding it would hold its connection.
        drop(upstream);
        tracing::info!(registry = %route.registry, path = %route.upstream_path(), wait = ?wait, retry = throttled.retries + 1, "upstream answered 429; waiting before retrying");
        tokio::time::sleep(wait).await;
        throttled.retries += 1;
        throttled.waited += wait;
    }
}

/// The upstream answer with its status as is, kept headers, and a streamed body.
fn relay(
    state: &EndpointState,
    asked: &Asked<'_>,
    upstream: Response<UpstreamBody>,
) -> Result<Response<UpstreamBody>, EndpointError> {
    let (parts, upstream_body) = upstream.into_parts();
    refuse_impossible_status(asked, parts.status)?;
    let route = asked.route;
    let mut response = Response::new(full_body(bytes::Bytes::new()));
    *response.status_mut() = gate_status(parts.status);
    for name in KEPT_RESPONSE_HEADERS {
        for value in parts.headers.get_all(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    if *asked.method == Method::HEAD || !has_body(parts.status) {
        return Ok(response);
    }
    let mut expectations = expectations(route, parts.status, &parts.headers);
    // Free, so checked for every client: an empty body can't match a non-empty digest.
    refuse_empty_mismatch(route, &expectations)?;
    if !asked.hashed {
        expectations.digest = None;
    }
    let tally = Tally {
        metrics: state.metrics.clone(),
        registry: route.registry.to_string(),
        what: format!("{}{}", route.registry, route.upstream_path()),
    };
    let body = StreamedBody::new(upstream_body, tally, expectations, state.patience.body_idle);
    *response.body_mut() = http_body_util::BodyExt::boxed(body);
    Ok(response)
}

/// credgate has already tried every credential it has when a 401 comes back; passed on, it
/// would make containerd retry this host with its own (possibly missing) credentials, so
/// the gate answers 403 and containerd moves on to its next host.
fn gate_status(upstream: StatusCode) -> StatusCode {
    match upstream {
        StatusCode::UNAUTHORIZED => StatusCode::FORBIDDEN,
        other => other,
    }
}

fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Answers that cannot be right for what was asked, refused before anything is relayed: a
/// 206 the client never asked for (relayed, a part would pass for the whole, unverified),
/// and a 2xx with no content at all for a GET by digest.
fn refuse_impossible_status(asked: &Asked<'_>, status: StatusCode) -> Result<(), EndpointError> {
    let reason = if status == StatusCode::PARTIAL_CONTENT && !asked.ranged {
        "a 206 (partial content) to a request without Range".to_string()
    } else if let Some(digest) = asked
        .route
        .expected_digest()
        .filter(|_| *asked.method == Method::GET && status.is_success() && !has_body(status))
    {
        format!("a {status} without content for {digest}")
    } else {
        return Ok(());
    };
    Err(UpstreamError::Protocol {
        host: asked.route.registry.to_string(),
        reason,
    }
    .into())
}

/// The declared length always; the digest for every whole answer (any 2xx but 206) of
/// digest-addressed content.
fn expectations(route: &ContentRoute, status: StatusCode, headers: &HeaderMap) -> Expectations {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let whole = status.is_success() && status != StatusCode::PARTIAL_CONTENT;
    let digest = route.expected_digest().filter(|_| whole).cloned();
    Expectations { length, digest }
}

/// A verified body declared empty would be complete the moment its headers are sent, before
/// it could be failed; an empty body can only match the digest of nothing, so check now.
fn refuse_empty_mismatch(
    route: &ContentRoute,
    expectations: &Expectations,
) -> Result<(), EndpointError> {
    let Some(digest) = &expectations.digest else {
        return Ok(());
    };
    if expectations.length != Some(0) || is_digest_of_nothing(digest) {
        return Ok(());
    }
    Err(UpstreamError::Protocol {
        host: route.registry.to_string(),
        reason: format!("an empty body for {digest}"),
    }
    .into())
}

fn is_digest_of_nothing(digest: &Digest) -> bool {
    let empty = ring::digest::digest(digest.algorithm.ring(), b"");
    crate::hex::lower_hex(empty.as_ref()) == digest.hex
}
