//! How a keychain decision is said in the Credentials API: the `LookupResponse` the ttrpc
//! service answers with, and `credgate pull` too when it resolves in-process; and the
//! `ListResponse` of what the keychain can name.

use super::Decision;
use crate::api;
use crate::sources::{AuthType, Listed};

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

/// Every listed scope, with its username and, where known, its kind of secret (never one).
impl From<&[Listed]> for api::ListResponse {
    fn from(listed: &[Listed]) -> Self {
        let mut response = api::ListResponse::default();
        for entry in listed {
            let scope = entry.scope.to_string();
            let auth_type = entry.kind.map_or(AuthType::None, |kind| kind.auth_type());
            response
                .entries
                .insert(scope.clone(), entry.username.clone());
            response.listed.push(api::Listed {
                scope,
                username: entry.username.clone(),
                auth_type: api::AuthType::from(auth_type).into(),
                ..Default::default()
            });
        }
        response
    }
}
