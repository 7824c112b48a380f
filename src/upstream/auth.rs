//! One identity against the registry: authorize up front from the challenge last seen, and
//! on a 401 read the new challenge, fetch (or reuse) a token and try once more.
//!
//! - Bearer: a token for exactly `repository:<name>:pull` (or the challenge's own scope when
//!   it asks only to pull), from the realm, with the candidate's credential: a password as
//!   GET with Basic, an identity token as an OAuth2 refresh-token POST (GET with Basic where
//!   POST answers 404/405), nothing for anonymous.
//! - Basic: the username and secret directly.
//! - A registry token (`SecretKind::RegistryToken`) is sent as `Bearer <token>`, always.
//! - The realm must be https and on the upstream's own domain
//!   ([`super::policy::on_own_domain`]) or listed in `[upstream] allow_realm_hosts`; for a
//!   mirror, the mirror is the upstream (and, when it is sent the upstream registry's
//!   credentials, the upstream registry's domain is allowed too).
//!
//! An identity is *rejected* by a 401/403 from the registry after auth, or any 4xx from the
//! token endpoint (401/403 in practice; a 400 for a grant it does not know is the same
//! verdict on this credential). A token endpoint that fails otherwise (5xx, unreachable,
//! not JSON) is an error for the whole request: every candidate would meet it too.
//!
//! One retry after a 401 at most: when nothing was sent, when the token came from the cache
//! (it is dropped and fetched anew), or when the challenge changed realm or service.
//!
//! Requests go out through [`super::exchange`]; which identity comes next is for
//! [`super::call`] to decide, not this module.

use std::sync::Arc;

use http::uri::Scheme;
use http::{HeaderValue, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::identity::{RegistryHost, Repository};
use crate::keychain::Candidate;
use crate::secret::Secret;
use crate::sources::{Credential, SecretKind};

use super::challenge::{self, AuthScheme, Challenge, Challenges};
use super::exchange::Exchange;
use super::policy::UpstreamPolicy;
use super::token::{
    basic_authorization, bearer_authorization, Grant, TokenEndpoint, TokenError, TokenFetcher,
    TokenRefusal,
};
use super::token_cache::{Got, IdentityHash, TokenCache, TokenKey};
use super::UpstreamError;

/// One request's authorization: the exchange it authorizes, and what decides and remembers
/// auth across requests, borrowed from the [`super::Upstream`] that serves it.
pub(crate) struct Authorizer<'a> {
    pub exchange: Exchange<'a>,
    pub policy: Arc<UpstreamPolicy>,
    pub tokens: &'a TokenCache,
    pub challenges: &'a Challenges,
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

/// An upstream answer that rejected an identity, kept to be handed back as is.
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
}

/// Who a request is sent as.
pub(crate) enum Identity<'a> {
    Anonymous,
    Candidate {
        candidate: &'a Candidate,
        credential: &'a Credential,
    },
}

impl Identity<'_> {
    fn hash(&self) -> IdentityHash {
        match self {
            Self::Anonymous => IdentityHash::anonymous(),
            Self::Candidate {
                candidate,
                credential,
            } => IdentityHash::of(&candidate.source, credential),
        }
    }

    fn grant(&self) -> Grant {
        let Self::Candidate { credential, .. } = self else {
            return Grant::Anonymous;
        };
        let username = credential.username.clone();
        match credential.kind {
            SecretKind::IdentityToken => Grant::Refresh {
                username,
                token: credential.secret.clone(),
            },
            // Registry tokens are sent as they are and never reach a token endpoint.
            SecretKind::Password | SecretKind::RegistryToken => Grant::Basic {
                username,
                password: credential.secret.clone(),
            },
        }
    }

    fn registry_token(&self) -> Option<&Secret> {
        match self {
            Self::Candidate { credential, .. } if credential.kind == SecretKind::RegistryToken => {
                Some(&credential.secret)
            }
            _ => None,
        }
    }
}

/// The `Authorization` for one identity, or why there is none.
pub(crate) enum Auth {
    None,
    Header {
        value: HeaderValue,
        /// The bearer token behind it, when it came through the token cache.
        token: Option<CachedToken>,
    },
    /// The token endpoint refused the identity.
    Refused(TokenRefusal),
}

pub(crate) struct CachedToken {
    key: TokenKey,
    value: Secret,
    /// Reused from the cache rather than fetched (or joined) for this request.
    from_cache: bool,
}

impl Auth {
    fn header(&self) -> Option<&HeaderValue> {
        match self {
            Self::Header { value, .. } => Some(value),
            _ => None,
        }
    }

    fn reused_from_cache(&self) -> bool {
        matches!(self, Self::Header { token: Some(t), .. } if t.from_cache)
    }
}

impl Authorizer<'_> {
    /// Sends the request as `identity`: accepted, or rejected (401/403 after auth, or the
    /// token endpoint's refusal).
    pub async fn attempt(&self, identity: &Identity<'_>) -> Result<Outcome, UpstreamError> {
        let known = self.challenges.get(&self.exchange.request.registry);
        let first = self.authorize(identity, known.as_ref(), None).await?;
        if let Auth::Refused(refusal) = first {
            return Ok(Outcome::Rejected(Reply::TokenRefused(refusal)));
        }
        let header = first.header().cloned();
        let response = self.exchange.send_registry(header.as_ref()).await?;
        match response.status() {
            StatusCode::UNAUTHORIZED => {
                self.after_unauthorized(identity, known, first, response)
                    .await
            }
            StatusCode::FORBIDDEN if header.is_some() => {
                Ok(Outcome::Rejected(Reply::Registry(response)))
            }
            _ => Ok(Outcome::Accepted {
                response,
                auth: header,
            }),
        }
    }

    /// A 401: answer its challenge once, unless the same answer was just refused.
    async fn after_unauthorized(
        &self,
        identity: &Identity<'_>,
        known: Option<Challenge>,
        first: Auth,
        response: Response<Incoming>,
    ) -> Result<Outcome, UpstreamError> {
        let rejected = |response| Ok(Outcome::Rejected(Reply::Registry(response)));
        let Some(challenge) = challenge::preferred(response.headers()) else {
            return rejected(response);
        };
        self.challenges
            .remember(&self.exchange.request.registry, &challenge);
        if let Auth::Header { token: Some(t), .. } = &first {
            self.tokens.invalidate(&t.key, &t.value);
        }
        let changed = known.map_or(true, |k| !k.same_authority(&challenge));
        if first.header().is_some() && !first.reused_from_cache() && !changed {
            return rejected(response);
        }
        let header = match self
            .authorize(identity, Some(&challenge), Some(&challenge))
            .await?
        {
            Auth::Refused(refusal) => return Ok(Outcome::Rejected(Reply::TokenRefused(refusal))),
            Auth::None => return rejected(response),
            Auth::Header { value, .. } => value,
        };
        drop(response);
        let response = self.exchange.send_registry(Some(&header)).await?;
        match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => rejected(response),
            _ => Ok(Outcome::Accepted {
                response,
                auth: Some(header),
            }),
        }
    }

    /// The `Authorization` for `identity` under `challenge` (none known: none, unless a
    /// registry token, which is always sent). `scope_from` is the challenge of this very
    /// request, whose scope may be used.
    async fn authorize(
        &self,
        identity: &Identity<'_>,
        challenge: Option<&Challenge>,
        scope_from: Option<&Challenge>,
    ) -> Result<Auth, UpstreamError> {
        if let Some(token) = identity.registry_token() {
            return Ok(header(bearer_authorization(token)));
        }
        let Some(challenge) = challenge else {
            return Ok(Auth::None);
        };
        match (&challenge.scheme, identity) {
            (AuthScheme::Bearer, _) => self.bearer(identity, challenge, scope_from).await,
            (AuthScheme::Basic, Identity::Candidate { credential, .. }) => Ok(header(
                basic_authorization(&credential.username, &credential.secret),
            )),
            _ => Ok(Auth::None),
        }
    }

    async fn bearer(
        &self,
        identity: &Identity<'_>,
        challenge: &Challenge,
        scope_from: Option<&Challenge>,
    ) -> Result<Auth, UpstreamError> {
        let realm = self.checked_realm(challenge)?;
        let exchange = &self.exchange;
        let scope = token_scope(scope_from, exchange.request.repository.as_ref());
        let key = TokenKey {
            registry: exchange.label.clone(),
            scope: scope.clone().unwrap_or_default(),
            identity: identity.hash(),
        };
        let endpoint = TokenEndpoint {
            realm,
            service: challenge.param("service").map(str::to_string),
            scope,
        };
        let fetcher = TokenFetcher {
            client: exchange.client_for_realm(&endpoint.realm)?,
            metrics: exchange.metrics.clone(),
            registry: exchange.label.clone(),
        };
        let (fetched, got) = self
            .tokens
            .get_or_fetch(&key, || fetcher.fetch(endpoint, identity.grant()))
            .await;
        if got != Got::Fetched {
            exchange.metrics.token_cache_hit(&exchange.label);
        }
        match fetched {
            Ok(token) => Ok(Auth::Header {
                value: bearer_authorization(&token.value),
                token: Some(CachedToken {
                    key,
                    value: token.value,
                    from_cache: got == Got::Cached,
                }),
            }),
            Err(error) => match &*error {
                TokenError::Refused(refusal) => Ok(Auth::Refused(refusal.clone())),
                TokenError::Failed(failure) => Err(failure.clone()),
            },
        }
    }

    /// The challenge's realm, if it is https and allowed for this upstream.
    fn checked_realm(&self, challenge: &Challenge) -> Result<Uri, UpstreamError> {
        let raw = challenge
            .param("realm")
            .ok_or_else(|| self.exchange.protocol("a Bearer challenge without a realm"))?;
        let refused = |reason: String| UpstreamError::RealmNotAllowed {
            realm: shown_realm(raw),
            reason,
        };
        let realm: Uri = raw.parse().map_err(|_| refused("not a URL".into()))?;
        if realm.scheme() != Some(&Scheme::HTTPS) {
            return Err(refused("token realms must be https".into()));
        }
        let realm_host = realm
            .authority()
            .and_then(|a| RegistryHost::parse(a.as_str()).ok())
            .ok_or_else(|| refused("no valid host".into()))?;
        let upstream_host = self.exchange.authority_host();
        let also = self.exchange.realm_also_on.as_deref();
        if !self.policy.realm_allowed(upstream_host, &realm_host)
            && !also.is_some_and(|host| super::policy::on_own_domain(host, realm_host.host()))
        {
            return Err(refused(format!(
                "{realm_host} is not on the domain of {upstream_host}; list it in [upstream] \
                 allow_realm_hosts to allow it"
            )));
        }
        Ok(realm)
    }
}

fn header(value: HeaderValue) -> Auth {
    Auth::Header { value, token: None }
}

/// The scope a token is asked for: the challenge's, when it asks only to pull; else
/// `repository:<name>:pull` for this request's repository (none for `/v2/`). Never push.
fn token_scope(challenge: Option<&Challenge>, repository: Option<&Repository>) -> Option<String> {
    let theirs = challenge.and_then(|c| c.param("scope"));
    match theirs {
        Some(scope)
            if !scope.is_empty()
                && scope
                    .split(' ')
                    .all(|s| s.starts_with("repository:") && s.ends_with(":pull")) =>
        {
            Some(scope.to_string())
        }
        _ => repository.map(|r| format!("repository:{r}:pull")),
    }
}

/// Longest part of an upstream-chosen realm an error repeats.
const SHOWN_REALM_CHARS: usize = 120;

/// The realm as errors and logs show it: at most [`SHOWN_REALM_CHARS`] characters, without its
/// query (the upstream chose every byte of it, and a query can carry anything).
fn shown_realm(raw: &str) -> String {
    let without_query = raw.split(['?', '#']).next().unwrap_or_default();
    let mut shown: String = without_query.chars().take(SHOWN_REALM_CHARS).collect();
    if shown.len() < without_query.len() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_realm_is_shown_short_and_without_its_query() {
        let long = format!("https://evil.test/{}?token=x", "a".repeat(10_000));
        let shown = shown_realm(&long);
        assert!(shown.chars().count() <= SHOWN_REALM_CHARS + 1, "{shown}");
        assert!(shown.ends_with('…'));
        assert_eq!(
            shown_realm("https://auth.test/token?x=y"),
            "https://auth.test/token"
        );
    }

    fn challenge(scope: &str) -> Challenge {
        Challenge {
            scheme: AuthScheme::Bearer,
            params: vec![("scope".into(), scope.into())],
        }
    }

    #[test]
    fn tokens_are_asked_for_pull_only() {
        let repo = Repository::parse("group/sub/app").unwrap();
        assert_eq!(
            token_scope(None, Some(&repo)).as_deref(),
            Some("repository:group/sub/app:pull")
        );
        assert_eq!(
            token_scope(Some(&challenge("repository:library/app:pull")), Some(&repo)).as_deref(),
            Some("repository:library/app:pull")
        );
        assert_eq!(
            token_scope(
                Some(&challenge("repository:group/sub/app:pull,push")),
                Some(&repo)
            )
            .as_deref(),
            Some("repository:group/sub/app:pull")
        );
        assert_eq!(token_scope(Some(&challenge("")), None), None);
        assert_eq!(token_scope(None, None), None);
    }
}
