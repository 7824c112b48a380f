//! One HTTP exchange with the registry: what crosses to it (the allow-listed client headers
//! and the `Authorization` it is handed, nothing else), the wait for its answer, and the
//! redirects followed after it by the rules of [`super::redirect`]. It sends what it is
//! given and never decides which credential that is.
//!
//! A redirect hop on the registry's own host and port goes through the registry's client
//! (the allow-lists apply); any other hop goes through a public-only client, so a registry
//! cannot point the gate at an internal host the operator allowed for something else. A token
//! realm on the registry's own origin is asked through the registry's client, any other
//! through the realm client (for a mirror: the ordinary one, so a mirror's TLS settings and
//! private-address allowance stay with the mirror).

use std::sync::Arc;
use std::time::Instant;

use http::header::{ACCEPT, AUTHORIZATION, IF_NONE_MATCH, RANGE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::identity::RegistryHost;
use crate::metrics::Metrics;

use super::client::{request_error, user_agent, HttpClient, RESPONSE_TIMEOUT};
use super::policy::check_public_literal;
use super::redirect::{hop_headers, is_redirect, location, same_origin, MAX_REDIRECTS};
use super::{UpstreamError, UpstreamRequest};

/// The client headers sent on to the registry; everything else (`X-Credgate-Secret` and the
/// client's own `Authorization` included) stays with credgate.
const FORWARDED: [HeaderName; 4] = [ACCEPT, RANGE, IF_NONE_MATCH, USER_AGENT];

/// Only the [`FORWARDED`] headers of `client`.
pub(crate) fn forwarded(client: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in FORWARDED {
        for value in client.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The headers of the request to the registry itself: the client headers the request kept
/// (filtered once, by [`UpstreamRequest::new`]), credgate's User-Agent when the client sent
/// none, and `auth` if given.
fn registry_headers(kept: &HeaderMap, auth: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = kept.clone();
    headers.entry(USER_AGENT).or_insert_with(user_agent);
    if let Some(auth) = auth {
        headers.insert(AUTHORIZATION, auth.clone());
    }
    headers
}

/// One request's way to the registry, borrowed from the [`super::Upstream`] that serves it.
pub(crate) struct Exchange<'a> {
    pub request: &'a UpstreamRequest,
    /// `https`, or `http` for a plain-http mirror.
    pub scheme: &'static str,
    /// For the registry (the policy's allow-lists apply), or the mirror's own client.
    pub client: HttpClient,
    /// For token realms off the registry's origin.
    pub realm_client: HttpClient,
    /// For redirect hops off the registry's own host and port: public addresses only.
    pub off_host: HttpClient,
    pub metrics: &'a Arc<Metrics>,
    /// The `host[:port]` dialled (Docker Hub's API is on `registry-1.docker.io`).
    pub authority: String,
    /// The registry as metrics label it.
    pub label: String,
    /// What its token and challenge cache entries are keyed by: the registry's `host[:port]`,
    /// or a mirror's `scheme://host:port` (never equal to a registry's, nor http to https).
    pub origin: String,
    /// Another host whose domain may serve token realms: the upstream's, for a mirror that is
    /// sent the upstream's credentials.
    pub realm_also_on: Option<String>,
}

impl Exchange<'_> {
    /// The request to the registry itself, with `auth` if given.
    pub async fn send_registry(
        &self,
        auth: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let headers = registry_headers(self.request.headers(), auth);
        let response = self
            .send_to(
                &self.client,
                self.request.method.clone(),
                self.registry_uri()?,
                headers,
            )
            .await?;
        tracing::debug!(registry = %self.request.registry, method = %self.request.method, path = %self.request.path, authorized = auth.is_some(), status = %response.status(), "upstream answered");
        Ok(response)
    }

    /// Refuses a redirect off the registry's host to an address spelled in its URL (an IP
    /// literal or a numeric IPv4 form) that is not public, before any connection is tried.
    fn check_off_host_literal(&self, next: &Uri) -> Result<(), UpstreamError> {
        let authority = next.authority().map_or("", |a| a.as_str());
        let host = RegistryHost::parse(authority).map_err(|_| UpstreamError::NotAllowed {
            host: authority.to_string(),
            reason: "a redirect to a host that is not host[:port]".to_string(),
        })?;
        check_public_literal(&host).map_err(|reason| UpstreamError::NotAllowed {
            host: host.to_string(),
            reason,
        })
    }

    /// Follows up to [`MAX_REDIRECTS`] hops. `auth` goes along only while every hop stays on
    /// the origin of the one before; once dropped it is never sent again. Only a hop on the
    /// registry's own origin may reach what the allow-lists allow.
    pub async fn follow_redirects(
        &self,
        mut response: Response<Incoming>,
        mut auth: Option<HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let registry = self.registry_uri()?;
        let mut current = registry.clone();
        for _ in 0..MAX_REDIRECTS {
            if !is_redirect(response.status()) {
                return Ok(response);
            }
            let next = location(&current, response.headers()).map_err(|e| self.protocol(e))?;
            if !same_origin(&current, &next) {
                auth = None;
            }
            tracing::debug!(registry = %self.request.registry, to = next.host().unwrap_or_default(), with_auth = auth.is_some(), "following a redirect");
            let headers = hop_headers(self.request.headers(), auth.as_ref());
            let client = if same_origin(&registry, &next) {
                &self.client
            } else {
                self.check_off_host_literal(&next)?;
                &self.off_host
            };
            response = self
                .send_to(client, self.request.method.clone(), next.clone(), headers)
                .await?;
            current = next;
        }
        if is_redirect(response.status()) {
            return Err(self.protocol(format!("more than {MAX_REDIRECTS} redirects")));
        }
        Ok(response)
    }

    /// The client a token request to `realm` goes through: the registry's on its own origin,
    /// else the realm client.
    pub fn client_for_realm(&self, realm: &Uri) -> Result<HttpClient, UpstreamError> {
        Ok(if same_origin(&self.registry_uri()?, realm) {
            self.client.clone()
        } else {
            self.realm_client.clone()
        })
    }

    /// The host dialled, without the port.
    pub fn authority_host(&self) -> &str {
        match self.authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => host,
            _ => &self.authority,
        }
    }

    /// The registry answered in a way credgate cannot use.
    pub fn protocol(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Protocol {
            host: self.request.registry.to_string(),
            reason: reason.into(),
        }
    }

    async fn send_to(
        &self,
        client: &HttpClient,
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
        let _in_flight = self.metrics.upstream_request();
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, client.request(request))
            .await
            .map_err(|_| UpstreamError::TimedOut { host: host.clone() })?
            .map_err(|e| request_error(&host, &e))?;
        self.metrics
            .upstream_latency(&self.label, started.elapsed());
        self.metrics
            .upstream_status(&self.label, response.status().as_u16());
        Ok(response)
    }

    fn registry_uri(&self) -> Result<Uri, UpstreamError> {
        format!("{}://{}{}", self.scheme, self.authority, self.request.path)
            .parse()
            .map_err(|_| self.protocol(format!("invalid path {:?}", self.request.path)))
    }
}

#[cfg(test)]
mod tests {
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
        client.insert(USER_AGENT, "containerd/2.1".parse().unwrap());
        client.insert("x-credgate-secret", "s3cret".parse().unwrap());
        client.insert(AUTHORIZATION, "Basic Y2xpZW50".parse().unwrap());
        client.insert(http::header::COOKIE, "a=b".parse().unwrap());
        let sent = forwarded(&client);
        assert_eq!(sent.get_all(ACCEPT).iter().count(), 2);
        assert_eq!(sent[USER_AGENT], "containerd/2.1");
        assert_eq!(sent.len(), 3, "{sent:?}");
    }

    #[test]
    fn the_registry_gets_credgates_user_agent_and_only_the_given_auth() {
        let mut client = HeaderMap::new();
        client.insert(ACCEPT, "application/octet-stream".parse().unwrap());
        client.insert("x-credgate-secret", "s3cret".parse().unwrap());
        client.insert(AUTHORIZATION, "Basic Y2xpZW50".parse().unwrap());
        // As a request holds them: filtered once, by UpstreamRequest::new.
        let client = forwarded(&client);
        let anonymous = registry_headers(&client, None);
        assert_eq!(anonymous[USER_AGENT], user_agent());
        assert!(anonymous.get(AUTHORIZATION).is_none(), "{anonymous:?}");
        assert_eq!(anonymous.len(), 2, "{anonymous:?}");
        let ours = HeaderValue::from_static("Bearer ours");
        let authorized = registry_headers(&client, Some(&ours));
        assert_eq!(authorized[AUTHORIZATION], "Bearer ours");
        assert_eq!(authorized.len(), 3, "{authorized:?}");
    }
}
