//! One manifest or blob request forwarded upstream, and its answer relayed back: a few
//! request headers out, a few response headers and the streamed body in.

use http::header;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{Expectations, StreamedBody, Tally};
use super::error::full_body;
use super::route::{ContentRoute, Digest};
use super::{EndpointError, EndpointState};
use crate::upstream::{UpstreamBody, UpstreamError, UpstreamRequest};

/// What the client needs back; hop-by-hop and auth headers are dropped with everything else.
const KEPT_RESPONSE_HEADERS: [&str; 7] = [
    "content-length",
    "content-type",
    "docker-content-digest",
    "etag",
    "content-range",
    "accept-ranges",
    "last-modified",
];

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
    let keychain = state.daemon.keychain();
    let upstream = state.upstream.send(&keychain, upstream_request).await?;
    relay(state, &route, &method, upstream)
}

/// The upstream answer with its status as is, kept headers, and a streamed body.
fn relay(
    state: &EndpointState,
    route: &ContentRoute,
    method: &Method,
    upstream: Response<UpstreamBody>,
) -> Result<Response<UpstreamBody>, EndpointError> {
    let (parts, upstream_body) = upstream.into_parts();
    let mut response = Response::new(full_body(bytes::Bytes::new()));
    *response.status_mut() = gate_status(parts.status);
    for name in KEPT_RESPONSE_HEADERS {
        for value in parts.headers.get_all(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    if *method == Method::HEAD || !has_body(parts.status) {
        return Ok(response);
    }
    let expectations = expectations(route, parts.status, &parts.headers);
    refuse_empty_mismatch(route, &expectations)?;
    let tally = Tally {
        metrics: state.metrics.clone(),
        registry: route.registry.to_string(),
        what: format!("{}{}", route.registry, route.upstream_path()),
    };
    let body = StreamedBody::new(upstream_body, tally, expectations);
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

/// The declared length always; the digest only for a full GET of digest-addressed content.
fn expectations(route: &ContentRoute, status: StatusCode, headers: &HeaderMap) -> Expectations {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let digest = match status {
        StatusCode::OK => route.expected_digest().cloned(),
        _ => None,
    };
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
