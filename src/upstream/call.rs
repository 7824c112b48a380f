//! One request through the upstream: candidates in ranking order until the registry accepts
//! one (then anonymous), redirects followed after the accepted one, and the response handed
//! back streaming; a rejected candidate is logged without secrets and counted. Decides what
//! a refusal says when a source failed on the way: the source and its failure, not the
//! registry's "authentication required".

use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::keychain::{Attempt, Candidate, Ranking};
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
    let mut failed_sources = Vec::new();
    loop {
        let (winner, attempts) = ranking.resolve_from(start).await;
        for (rank, attempt) in attempts {
            if let Attempt::Failed(_) = attempt {
                failed_sources.push(ranking.candidates[rank].source.to_string());
            }
        }
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
            if !failed_sources.is_empty() {
                tracing::warn!(registry = %exchange.request.registry, status = %reply.status(), "anonymous access refused after a credential source failed; answering with the source's failure");
                return Ok(source_failed(
                    &exchange.request.registry.to_string(),
                    reply.status(),
                    &failed_sources,
                ));
            }
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

/// Most failed sources named in one answer.
const MAX_FAILED_SOURCES: usize = 3;

/// The upstream refused anonymous access after a source that might have had the credential
/// failed: the refusal's status, with credgate's own error naming that source, so the pull's
/// error points at the helper (or plugin) and not at the registry. Only the source's name goes
/// into the answer, never why it failed: that text can quote a helper's or plugin's stderr,
/// and the answer reaches whoever can read the pod's events. The cause is in credgate's log
/// (`fetch_logged` logs each failure).
fn source_failed(registry: &str, status: StatusCode, failed: &[String]) -> Response<UpstreamBody> {
    let mut names: Vec<&str> = Vec::new();
    for source in failed {
        if names.len() < MAX_FAILED_SOURCES && !names.contains(&source.as_str()) {
            names.push(source);
        }
    }
    let code = if status == StatusCode::UNAUTHORIZED {
        "UNAUTHORIZED"
    } else {
        "DENIED"
    };
    let body = serde_json::json!({"errors": [{
        "code": code,
        "message": format!(
            "{registry} refused the pull without a credential, and the credential source that \
             could have one failed: {} (credgate's log says why)",
            names.join("; ")
        ),
    }]});
    let mut response = Response::new(
        Full::new(bytes::Bytes::from(body.to_string()))
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
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
    async fn a_failed_source_is_named_in_the_refusal_bounded() {
        let failed: Vec<String> = (0..5)
            .map(|i| format!("[[registry]] at c.toml:{i}"))
            .chain(std::iter::once("[[registry]] at c.toml:0".to_string()))
            .collect();
        let response = source_failed("second.test", StatusCode::UNAUTHORIZED, &failed);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("second.test refused"), "{text}");
        assert!(
            text.contains("c.toml:2") && !text.contains("c.toml:3"),
            "{text}"
        );
        assert_eq!(text.matches("c.toml:0").count(), 1, "{text}");
        assert!(text.contains("credgate's log says why"), "{text}");
    }

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
