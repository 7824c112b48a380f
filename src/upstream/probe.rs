//! One credential against one registry or mirror, for `credgate doctor`: `GET /v2/` answered
//! with the candidate alone (no fallback to the next or to anonymous), so a rejection is
//! reported rather than hidden.

use http::StatusCode;

use crate::identity::Target;
use crate::keychain::Candidate;
use crate::sources::Credential;

use super::auth::{Identity, Outcome};
use super::send::Upstream;
use super::{UpstreamError, UpstreamRequest};

/// What the registry made of one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/v2/` answered `status`; `authorized` is false when the registry asked for no auth,
    /// so the credential was never exercised.
    Accepted {
        status: StatusCode,
        authorized: bool,
    },
    /// 401/403 from the registry after auth, or a 4xx from its token endpoint.
    Rejected { status: StatusCode },
}

impl Upstream {
    /// Challenge, token (for `repository:<target's repository>:pull` when it names one, else
    /// registry-wide) and `GET /v2/` with `candidate`'s credential, through the same
    /// SSRF-checked client and realm policy the endpoint uses.
    pub async fn probe(
        &self,
        target: &Target,
        candidate: &Candidate,
        credential: &Credential,
    ) -> Result<Probe, UpstreamError> {
        let request = UpstreamRequest::new(
            target.registry.clone(),
            target.repository.clone(),
            http::Method::GET,
            "/v2/".to_string(),
            &http::HeaderMap::new(),
        );
        self.probe_request(&request, Some((candidate, credential)))
            .await
    }

    /// [`Upstream::probe`] for a request made elsewhere (a mirror's API root, through
    /// [`UpstreamRequest::through_mirror`]), as `credential` or, without one, anonymously.
    pub async fn probe_request(
        &self,
        request: &UpstreamRequest,
        credential: Option<(&Candidate, &Credential)>,
    ) -> Result<Probe, UpstreamError> {
        let authorizer = self.authorizer(request)?;
        let identity = match credential {
            Some((candidate, credential)) => Identity::Candidate {
                candidate,
                credential,
            },
            None => Identity::Anonymous,
        };
        Ok(match authorizer.attempt(&identity).await? {
            Outcome::Accepted { response, auth } => Probe::Accepted {
                status: response.status(),
                authorized: auth.is_some(),
            },
            Outcome::Rejected(reply) => Probe::Rejected {
                status: reply.status(),
            },
        })
    }
}
