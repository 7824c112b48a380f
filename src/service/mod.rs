//! The ttrpc `Credentials` service: the API every client outside containerd's own resolver
//! uses (the docker credential helper, the kubelet provider, `credgate pull`).

use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::r#async::TtrpcContext;

use crate::api;
use crate::daemon::{bump, Daemon};
use crate::identity::{IdentityError, RegistryHost, Repository, Target};
use crate::keychain::{Attempt, Explanation};
use crate::sources::AuthType;

mod caller;
mod limits;
mod socket;

pub use socket::{adopt, bind, opens_to_others, serve_socket, socket_mode, SocketError};

/// Why a request could not be answered; [`to_status`] is the only mapping to ttrpc codes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidRequest(#[from] IdentityError),
    #[error("this caller's uid is not in credgate's allowed_uids")]
    PermissionDenied,
}

fn to_status(error: ServiceError) -> ttrpc::Error {
    let code = match &error {
        ServiceError::InvalidRequest(_) => ttrpc::Code::INVALID_ARGUMENT,
        ServiceError::PermissionDenied => ttrpc::Code::PERMISSION_DENIED,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, error.to_string()))
}

/// The real service.
pub struct CredentialsService {
    daemon: Arc<Daemon>,
}

impl CredentialsService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }

    fn target(&self, host: &str, repository: &str) -> Result<Target, ttrpc::Error> {
        parse_target(host, repository).map_err(|e| {
            bump(&self.daemon.counters.invalid_requests);
            to_status(e.into())
        })
    }
}

/// `host` in any form a client sends (`host`, `host:443`, `https://index.docker.io/v1/`);
/// an empty `repository` asks for the registry as a whole.
pub fn parse_target(host: &str, repository: &str) -> Result<Target, IdentityError> {
    let registry = RegistryHost::parse(host)?;
    let repository = match repository {
        "" => None,
        repo => Some(Repository::parse(repo)?),
    };
    Ok(Target::new(registry, repository))
}

#[async_trait]
impl api::Credentials for CredentialsService {
    async fn lookup(
        &self,
        _ctx: &TtrpcContext,
        req: api::LookupRequest,
    ) -> ttrpc::Result<api::LookupResponse> {
        let target = self.target(&req.host, &req.repository)?;
        let decision = self.daemon.keychain().lookup(&target).await;
        self.daemon.record_sources(&decision.ranking.sources);
        bump(&self.daemon.counters.lookups);
        bump(match decision.winner {
            Some(_) => &self.daemon.counters.hits,
            None => &self.daemon.counters.anonymous,
        });
        let response = api::LookupResponse::from(&decision);
        tracing::debug!(%target, auth_type = ?response.auth_type, source = %response.source, matched = %response.matched, "lookup");
        Ok(response)
    }

    async fn explain(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExplainRequest,
    ) -> ttrpc::Result<api::ExplainResponse> {
        let target = self.target(&req.host, &req.repository)?;
        let explanation = self.daemon.keychain().explain(&target).await;
        self.daemon.record_sources(&explanation.ranking.sources);
        Ok(explain_response(&explanation))
    }

    async fn status(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatusRequest,
    ) -> ttrpc::Result<api::StatusResponse> {
        Ok(api::StatusResponse {
            version: crate::VERSION.to_string(),
            uptime_seconds: self.daemon.uptime().as_secs(),
            sources: self
                .daemon
                .health()
                .into_iter()
                .map(|(name, failure)| api::SourceHealth {
                    name,
                    healthy: failure.is_none(),
                    detail: failure.unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            counters: self.daemon.counters.snapshot().into_iter().collect(),
            ..Default::default()
        })
    }

    async fn list(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ListRequest,
    ) -> ttrpc::Result<api::ListResponse> {
        let listed = self.daemon.keychain().listing().await;
        Ok(api::ListResponse::from(listed.as_slice()))
    }
}

/// Served to callers whose uid is not allowed: a call answers `PERMISSION_DENIED`, and the
/// connection closes once it is answered. (The refusal, with uid and pid, is logged when the
/// connection is accepted, at most once per uid per `limits::LOG_WINDOW`.)
pub struct RefusedCaller;

#[async_trait]
impl api::Credentials for RefusedCaller {
    async fn lookup(
        &self,
        _: &TtrpcContext,
        _: api::LookupRequest,
    ) -> ttrpc::Result<api::LookupResponse> {
        Err(self.refuse())
    }
    async fn explain(
        &self,
        _: &TtrpcContext,
        _: api::ExplainRequest,
    ) -> ttrpc::Result<api::ExplainResponse> {
        Err(self.refuse())
    }
    async fn status(
        &self,
        _: &TtrpcContext,
        _: api::StatusRequest,
    ) -> ttrpc::Result<api::StatusResponse> {
        Err(self.refuse())
    }
    async fn list(
        &self,
        _: &TtrpcContext,
        _: api::ListRequest,
    ) -> ttrpc::Result<api::ListResponse> {
        Err(self.refuse())
    }
}

impl RefusedCaller {
    fn refuse(&self) -> ttrpc::Error {
        to_status(ServiceError::PermissionDenied)
    }
}

fn explain_response(e: &Explanation) -> api::ExplainResponse {
    let candidates = e
        .ranking
        .candidates
        .iter()
        .zip(&e.candidates)
        .map(|(candidate, explained)| {
            let specificity = candidate.specificity();
            api::Candidate {
                scope: candidate.offer.scope.to_string(),
                source: candidate.source.to_string(),
                origin: candidate.offer.origin.clone(),
                path_segments: u32::try_from(specificity.path_segments).unwrap_or(u32::MAX),
                exact_host: specificity.exact_host,
                outcome: match &explained.attempt {
                    Attempt::Hit => "hit".to_string(),
                    Attempt::Miss => "miss".to_string(),
                    Attempt::Failed(reason) => format!("failed: {reason}"),
                },
                username: explained.username.clone().unwrap_or_default(),
                auth_type: api::AuthType::from(explained.auth_type.unwrap_or(AuthType::None))
                    .into(),
                ..Default::default()
            }
        })
        .collect();
    api::ExplainResponse {
        candidates,
        winner: e.winner.and_then(|w| i32::try_from(w).ok()).unwrap_or(-1),
        reason: e
            .reason
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        ..Default::default()
    }
}
