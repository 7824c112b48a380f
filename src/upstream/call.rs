//! One request through the upstream: candidates in ranking order until the registry accepts
//! one (then anonymous), redirects followed after the accepted one, and the response handed
//! back streaming; a rejected candidate is logged without secrets and counted.

use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::keychain::{Candidate, Ranking};
use crate::sources::Credential;

use super::auth::{Authorizer, Identity, Outcome, Reply};
use super::token::TokenRefusal;
use super::{BoxError, UpstreamBody, UpstreamError};

/// Tries each candidate the keychain yields, from the best; a rejected one is logged and
/// counted and the next tried, then anonymous, whose answer is handed back as is.
pub(crate) async fn through_candidates(
    authorizer: &Authorizer<'_>,
    ranking: &Ranking,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let exchange = &authorizer.exchange;
    let mut start = 0;
    loop {
        let (winner, _attempts) = ranking.resolve_from(start).await;
        let identity = match &winner {
            Some(w) => Identity::Candidate {
                candidate: &ranking.candidates[w.rank],
                credential: &w.credential,
            },
            None => Identity::Anonymous,
        };
        let reply = match authorizer.attempt(&identity).await? {
            Outcome::Accepted { response, auth } => {
                return Ok(streaming(exchange.follow_redirects(response, auth).await?));
            }
            Outcome::Rejected(reply) => reply,
        };
        let Some(winner) = winner else {
            exchange.metrics.pull_refused(&exchange.label);
            tracing::info!(registry = %exchange.request.registry, repository = ?exchange.request.repository.as_ref().map(|r| r.as_str()), status = %reply.status(), "anonymous access refused; handing back the upstream's answer");
            return Ok(handed_back(reply));
        };
        let candidate = &ranking.candidates[winner.rank];
        rejected(authorizer, candidate, &winner.credential, reply.status());
        start = winner.rank + 1;
    }
}

fn rejected(
    authorizer: &Authorizer<'_>,
    candidate: &Candidate,
    credential: &Credential,
    status: StatusCode,
) {
    let exchange = &authorizer.exchange;
    exchange.metrics.auth_failure(&candidate.source);
    tracing::warn!(
        registry = %exchange.request.registry,
        repository = ?exchange.request.repository.as_ref().map(|r| r.as_str()),
        source = %candidate.source,
        scope = %candidate.offer.scope,
        username = %credential.username,
        auth_type = %credential.auth_type(),
        %status,
        "upstream refused the credential; trying the next candidate"
    );
}

/// The last rejection, as the upstream answered it.
fn handed_back(reply: Reply) -> Response<UpstreamBody> {
    match reply {
        Reply::Registry(response) => streaming(response),
        Reply::TokenRefused(refusal) => refusal_response(refusal),
    }
}

/// The response with its body boxed as it streams; nothing is buffered.
fn streaming(response: Response<Incoming>) -> Response<UpstreamBody> {
    response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed())
}

fn refusal_response(refusal: TokenRefusal) -> Response<UpstreamBody> {
    let mut response = Response::new(
        Full::new(refusal.body)
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = refusal.status;
    if let Some(content_type) = refusal.content_type {
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    response
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderValue;

    use super::*;

    #[tokio::test]
    async fn a_token_refusal_is_handed_back_with_its_status_and_body() {
        let refusal = TokenRefusal {
            realm: "https://auth.test/jwt/auth".into(),
            status: StatusCode::FORBIDDEN,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(br#"{"errors":[{"code":"DENIED"}]}"#),
        };
        let response = handed_back(Reply::TokenRefused(refusal));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, &br#"{"errors":[{"code":"DENIED"}]}"#[..]);
    }
}
