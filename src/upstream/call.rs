//! One request through the upstream: candidates in ranking order until the registry accepts
//! one (then anonymous), redirects followed, and the response handed back streaming.

use std::sync::Arc;
use std::time::Instant;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, IF_NONE_MATCH, RANGE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::keychain::{Candidate, Ranking};
use crate::metrics::Metrics;
use crate::sources::Credential;

use super::auth::Identity;
use super::challenge::Challenges;
use super::client::{request_error, user_agent, HttpClient, RESPONSE_TIMEOUT};
use super::policy::UpstreamPolicy;
use super::redirect::{hop_headers, is_redirect, location, same_origin, MAX_REDIRECTS};
use super::token::TokenRefusal;
use super::token_cache::TokenCache;
use super::{BoxError, UpstreamBody, UpstreamError, UpstreamRequest};

/// The client headers sent on to the registry; everything else (the install secret
/// included) stays with credgate.
const FORWARDED: [http::HeaderName; 4] = [ACCEPT, RANGE, IF_NONE_MATCH, USER_AGENT];

/// Everything one request needs, borrowed from the [`super::Upstream`] that serves it.
pub(crate) struct Call<'a> {
    pub request: &'a UpstreamRequest,
    pub client: HttpClient,
    pub policy: Arc<UpstreamPolicy>,
    pub tokens: &'a TokenCache,
    pub challenges: &'a Challenges,
    pub metrics: &'a Arc<Metrics>,
    /// The `host[:port]` dialled (Docker Hub's API is on `registry-1.docker.io`).
    pub authority: String,
    /// The registry as metrics label it.
    pub label: String,
}

/// What the registry made of one identity.
pub(crate) enum Outcome {
    Accepted {
        response: Response<Incoming>,
        /// The `Authorization` that was accepted, for redirects on the same origin.
        auth: Option<HeaderValue>,
    },
    /// 401/403 from the registry, or a 4xx from its token endpoint.
    Rejected(Reply),
}

/// An upstream answer handed back as is.
pub(crate) enum Reply {
    Registry(Response<Incoming>),
    TokenRefused(TokenRefusal),
}

impl Reply {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::Registry(response) => response.status(),
            Self::TokenRefused(refusal) => refusal.status,
        }
    }

    fn into_response(self) -> Response<UpstreamBody> {
        match self {
            Self::Registry(response) => streaming(response),
            Self::TokenRefused(refusal) => refusal_response(refusal),
        }
    }
}

impl Call<'_> {
    /// Tries each candidate the keychain yields, from the best; a rejected one is logged and
    /// counted and the next tried, then anonymous, whose answer is handed back as is.
    pub async fn through_candidates(
        &self,
        ranking: &Ranking,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
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
            let reply = match self.attempt(&identity).await? {
                Outcome::Accepted { response, auth } => {
                    return Ok(streaming(self.follow_redirects(response, auth).await?));
                }
                Outcome::Rejected(reply) => reply,
            };
            let Some(winner) = winner else {
                tracing::info!(registry = %self.request.registry, repository = ?self.request.repository.as_ref().map(|r| r.as_str()), status = %reply.status(), "anonymous access refused; handing back the upstream's answer");
                return Ok(reply.into_response());
            };
            let candidate = &ranking.candidates[winner.rank];
            self.rejected(candidate, &winner.credential, reply.status());
            start = winner.rank + 1;
        }
    }

    fn rejected(&self, candidate: &Candidate, credential: &Credential, status: StatusCode) {
        self.metrics.auth_failure(&candidate.source);
        tracing::warn!(
            registry = %self.request.registry,
            repository = ?self.request.repository.as_ref().map(|r| r.as_str()),
            source = %candidate.source,
            scope = %candidate.offer.scope,
            username = %credential.username,
            auth_type = %credential.auth_type(),
            %status,
            "upstream refused the credential; trying the next candidate"
        );
    }

    /// The request to the registry itself, with `auth` if given.
    pub async fn send_registry(
        &self,
        auth: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut headers = forwarded(&self.request.headers);
        if let Some(auth) = auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let response = self
            .send_to(self.request.method.clone(), self.registry_uri()?, headers)
            .await?;
        tracing::debug!(registry = %self.request.registry, method = %self.request.method, path = %self.request.path, authorized = auth.is_some(), status = %response.status(), "upstream answered");
        Ok(response)
    }

    async fn send_to(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let host = uri.host().unwrap_or_default().to_string();
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::default())
            .map_err(|e| self.protocol(e.to_string()))?;
        *request.headers_mut() = headers;
        let started = Instant::now();
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| UpstreamError::TimedOut { host: host.clone() })?
            .map_err(|e| request_error(&host, &e))?;
        self.metrics
            .upstream_latency(&self.label, started.elapsed());
        Ok(response)
    }

    /// Follows up to [`MAX_REDIRECTS`] hops. `auth` goes along only while every hop stays on
    /// the origin of the one before; once dropped it is never sent again.
    async fn follow_redirects(
        &self,
        mut response: Response<Incoming>,
        mut auth: Option<HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut current = self.registry_uri()?;
        for _ in 0..MAX_REDIRECTS {
            if !is_redirect(response.status()) {
                return Ok(response);
            }
            let next = location(&current, response.headers()).map_err(|e| self.protocol(e))?;
            if !same_origin(&current, &next) {
                auth = None;
            }
            tracing::debug!(registry = %self.request.registry, to = next.host().unwrap_or_default(), with_auth = auth.is_some(), "following a redirect");
            let headers = hop_headers(&self.request.headers, auth.as_ref());
            response = self
                .send_to(self.request.method.clone(), next.clone(), headers)
                .await?;
            current = next;
        }
        if is_redirect(response.status()) {
            return Err(self.protocol(format!("more than {MAX_REDIRECTS} redirects")));
        }
        Ok(response)
    }

    fn registry_uri(&self) -> Result<Uri, UpstreamError> {
        format!("https://{}{}", self.authority, self.request.path)
            .parse()
            .map_err(|_| self.protocol(format!("invalid path {:?}", self.request.path)))
    }

    pub fn protocol(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Protocol {
            host: self.request.registry.to_string(),
            reason: reason.into(),
        }
    }
}

/// The forwardable client headers, with credgate's User-Agent when the client sent none.
fn forwarded(client: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in FORWARDED {
        for value in client.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.entry(USER_AGENT).or_insert_with(user_agent);
    headers
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

/// The same error again: a coalesced token fetch's failure reaches every waiter.
pub(crate) fn duplicate(error: &UpstreamError) -> UpstreamError {
    use UpstreamError::*;
    match error {
        NotAllowed { host, reason } => NotAllowed {
            host: host.clone(),
            reason: reason.clone(),
        },
        RealmNotAllowed { realm, reason } => RealmNotAllowed {
            realm: realm.clone(),
            reason: reason.clone(),
        },
        Unreachable { host, reason } => Unreachable {
            host: host.clone(),
            reason: reason.clone(),
        },
        TimedOut { host } => TimedOut { host: host.clone() },
        Protocol { host, reason } => Protocol {
            host: host.clone(),
            reason: reason.clone(),
        },
        Token { realm, reason } => Token {
            realm: realm.clone(),
            reason: reason.clone(),
        },
        CaFile { path, reason } => CaFile {
            path: path.clone(),
            reason: reason.clone(),
        },
        Tls { reason } => Tls {
            reason: reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn only_safe_client_headers_are_forwarded() {
        let mut client = HeaderMap::new();
        client.insert(
            ACCEPT,
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        );
        client.append(
            ACCEPT,
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        client.insert("x-credgate-secret", "s3cret".parse().unwrap());
        client.insert(AUTHORIZATION, "Basic Y2xpZW50".parse().unwrap());
        client.insert(http::header::COOKIE, "a=b".parse().unwrap());
        let sent = forwarded(&client);
        assert_eq!(sent.get_all(ACCEPT).iter().count(), 2);
        assert_eq!(sent[USER_AGENT], user_agent());
        assert_eq!(sent.len(), 3, "{sent:?}");
    }

    #[tokio::test]
    async fn a_token_refusal_is_handed_back_with_its_status_and_body() {
        let refusal = TokenRefusal {
            realm: "https://auth.test/jwt/auth".into(),
            status: StatusCode::FORBIDDEN,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(br#"{"errors":[{"code":"DENIED"}]}"#),
        };
        let response = Reply::TokenRefused(refusal).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, &br#"{"errors":[{"code":"DENIED"}]}"#[..]);
    }
}
