//! Why the endpoint refused or failed a request, and the one mapping to HTTP statuses and
//! distribution error bodies (`{"errors":[{"code","message"}]}`). Messages name the input
//! that was wrong, never a secret: the presented `X-Credgate-Secret` is never echoed.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::route::ALLOWED_METHODS;
use crate::identity::IdentityError;
use crate::mirrors::MirrorError;
use crate::upstream::{UpstreamBody, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("missing or wrong X-Credgate-Secret header")]
    BadSecret,
    #[error("percent-encoding is not allowed in the path")]
    EncodedPath,
    #[error("'.' and '..' are not allowed in a repository name")]
    DotSegment,
    #[error("credgate serves only /v2/, /v2/<name>/manifests/<ref> and /v2/<name>/blobs/<digest>")]
    NotFound,
    #[error("only GET and HEAD are allowed")]
    MethodNotAllowed,
    #[error("the ns query parameter (the upstream registry) is required")]
    MissingNamespace,
    #[error("more than one ns query parameter")]
    AmbiguousNamespace,
    #[error("the ns query parameter is not valid percent-encoded UTF-8")]
    BadNamespaceEncoding,
    #[error("ns {ns:?} must be a registry host[:port], without scheme or path")]
    NamespaceNotAHost { ns: String },
    #[error("ns: {0}")]
    InvalidNamespace(IdentityError),
    #[error(transparent)]
    InvalidRepository(IdentityError),
    #[error(
        "invalid tag {tag:?} (allowed: A-Z a-z 0-9 _ . -, up to 128, not starting with . or -)"
    )]
    InvalidTag { tag: String },
    #[error("invalid or unsupported digest {digest:?} (sha256:<64 hex> or sha512:<128 hex>)")]
    InvalidDigest { digest: String },
    #[error("blobs are addressed by digest only")]
    BlobWithoutDigest,
    #[error("a /mirror/<n> path needs exactly one X-Credgate-Mirror header naming the host it stands for")]
    MirrorPrefixWithoutHeader,
    #[error("X-Credgate-Mirror is only for /mirror/<n> paths")]
    MirrorHeaderWithoutPrefix,
    #[error("more than one X-Credgate-Mirror value; a fronted host names exactly one mirror")]
    TwoMirrors,
    #[error("X-Credgate-Mirror must be a host key from hosts.toml, as visible ASCII")]
    BadMirrorHeader,
    /// The mirror named is not one credgate may dial for this registry.
    #[error("mirror refused: {0}")]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl EndpointError {
    /// The status and distribution error code: the only place either is decided.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use EndpointError::*;
        match self {
            BadSecret => (StatusCode::FORBIDDEN, "DENIED"),
            NotFound => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            EncodedPath | DotSegment | InvalidRepository(_) => {
                (StatusCode::BAD_REQUEST, "NAME_INVALID")
            }
            MissingNamespace
            | AmbiguousNamespace
            | BadNamespaceEncoding
            | NamespaceNotAHost { .. }
            | InvalidNamespace(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            InvalidTag { .. } => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            InvalidDigest { .. } | BlobWithoutDigest => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            MirrorPrefixWithoutHeader
            | MirrorHeaderWithoutPrefix
            | TwoMirrors
            | BadMirrorHeader => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            Mirror(_) => (StatusCode::FORBIDDEN, "DENIED"),
            Upstream(e) => upstream_status(e),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The error response; a 405 carries `Allow`.
    pub fn into_response(self) -> Response<UpstreamBody> {
        let (status, code) = self.status_and_code();
        let mut response = error_response(status, code, &self.to_string());
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        response
    }
}

/// containerd moves on to its next host on any status >= 400, so every upstream failure is
/// one: 403 for what the SSRF and realm boundaries refuse, 504 for a timeout, else 502.
fn upstream_status(error: &UpstreamError) -> (StatusCode, &'static str) {
    match error {
        UpstreamError::NotAllowed { .. } | UpstreamError::RealmNotAllowed { .. } => {
            (StatusCode::FORBIDDEN, "DENIED")
        }
        UpstreamError::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
        UpstreamError::Unreachable { .. }
        | UpstreamError::Protocol { .. }
        | UpstreamError::Token { .. }
        | UpstreamError::CaFile { .. }
        | UpstreamError::ClientCertificate { .. }
        | UpstreamError::Tls { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<UpstreamBody> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let mut response = Response::new(full_body(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A complete body held in memory (local answers only; upstream bodies stream).
pub fn full_body(bytes: impl Into<Bytes>) -> UpstreamBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response<UpstreamBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_use_the_distribution_shape() {
        let response = EndpointError::MissingNamespace.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(json["errors"][0]["code"], "NAME_INVALID");
        assert!(json["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ns"));
    }

    #[test]
    fn method_not_allowed_says_what_is() {
        let response = EndpointError::MethodNotAllowed.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn upstream_errors_map_to_gateway_statuses() {
        let host = || "r.test".to_string();
        let reason = || "x".to_string();
        let cases = [
            (
                UpstreamError::NotAllowed {
                    host: host(),
                    reason: reason(),
                },
                403,
            ),
            (
                UpstreamError::RealmNotAllowed {
                    realm: host(),
                    reason: reason(),
                },
                403,
            ),
            (
                UpstreamError::Unreachable {
                    host: host(),
                    reason: reason(),
                },
                502,
            ),
            (UpstreamError::TimedOut { host: host() }, 504),
            (
                UpstreamError::Protocol {
                    host: host(),
                    reason: reason(),
                },
                502,
            ),
            (
                UpstreamError::Token {
                    realm: host(),
                    reason: reason(),
                },
                502,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(EndpointError::from(error).status().as_u16(), status);
        }
    }
}
