//! How a keychain decision is said in the Credentials API: the `LookupResponse` the ttrpc
//! service answers with, and `credgate pull` too when it resolves in-process.

use super::Decision;
use crate::api;
use crate::sources::AuthType;

impl From<AuthType> for api::AuthType {
    fn from(auth_type: AuthType) -> Self {
        match auth_type {
            AuthType::None => api::AuthType::NONE,
            AuthType::Credentials => api::AuthType::CREDENTIALS,
            AuthType::Refresh => api::AuthType::REFRESH,
            AuthType::Header => api::AuthType::HEADER,
        }
    }
}

/// The winner's credential, source and matched scope; an empty (anonymous) answer when
/// nothing won. The secret goes only into this message, which only the caller receives.
impl From<&Decision> for api::LookupResponse {
    fn from(decision: &Decision) -> Self {
        let mut response = api::LookupResponse::default();
        if let (Some(winner), Some(candidate)) = (&decision.winner, decision.winner_candidate()) {
            response.auth_type = api::AuthType::from(winner.credential.auth_type()).into();
            response.username = winner.credential.username.clone();
            response.secret = winner.credential.transfer_secret().expose().to_string();
            response.source = candidate.describe();
            response.matched = candidate.offer.scope.to_string();
        }
        response
    }
}
