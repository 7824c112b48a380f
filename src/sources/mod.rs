//! Where credentials come from. Each kind of source sits behind [`Source`], so the keychain
//! never knows whether a credential came from credgate's config, a docker config file, a
//! credential helper or a kubelet provider plugin.
//!
//! A source answers in two steps. [`Source::offers`] is cheap: it says which scopes it has
//! for a target. [`Offer::fetch`] may be costly (it can run a helper) and is only called
//! by the keychain in ranking order, until one offer yields a credential.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::identity::{Scope, Target};

pub mod answer_cache;
mod credential;
pub mod docker_config;
pub mod exec_helper;
pub mod file_cache;
pub mod kubelet_provider;
pub mod static_registry;
pub mod trusted_file;

pub use credential::{AuthType, Credential, SecretKind};
// Re-exported for `upstream` and `transfer`, which still import it from here.

/// A source of registry credentials.
#[async_trait]
pub trait Source: Send + Sync {
    /// Names the source for `explain` and logs, e.g. `docker config /root/.docker/config.json`.
    fn name(&self) -> String;

    /// The scopes this source has for `target`, each with a way to fetch its credential.
    async fn offers(&self, target: &Target) -> Result<Vec<Offer>, SourceError>;

    /// The scopes this source can name without running anything, for the docker helper's
    /// `list`. Sources that only know scopes once a plugin has run list nothing.
    async fn listing(&self) -> Result<Vec<Listed>, SourceError> {
        Ok(Vec::new())
    }

    /// The one scope this source can ever offer, when the config fixes it (a `[[registry]]`
    /// entry). The keychain indexes such sources by registry, so a lookup asks only the ones
    /// for its host: 10,000 entries cost a lookup what 10 do. `None`: ask on every lookup.
    fn fixed_scope(&self) -> Option<&Scope> {
        None
    }
}

/// One scope a source knows, with the username and the kind of secret when they are known
/// without a helper run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub scope: Scope,
    pub username: String,
    /// `None` when only a helper knows; a helper's answer is a password or an identity token.
    pub kind: Option<SecretKind>,
}

/// Produces the credential behind an offer. `Ok(None)` is a miss (a helper that has no
/// credential for the host), not an error.
#[async_trait]
pub trait Fetch: Send + Sync {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError>;
}

/// A credential already in hand fetches itself.
#[async_trait]
impl Fetch for Credential {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        Ok(Some(self.clone()))
    }
}

/// One scope a source can serve, and how to get its credential.
#[derive(Clone)]
pub struct Offer {
    pub scope: Scope,
    /// Where inside the source the offer comes from, e.g. `auths["git.example.com:443"]`.
    pub origin: String,
    fetch: Arc<dyn Fetch>,
}

impl Offer {
    pub fn new(scope: Scope, origin: impl Into<String>, fetch: Arc<dyn Fetch>) -> Self {
        Self {
            scope,
            origin: origin.into(),
            fetch,
        }
    }

    /// An offer whose credential is already known.
    pub fn ready(scope: Scope, origin: impl Into<String>, credential: Credential) -> Self {
        Self::new(scope, origin, Arc::new(credential))
    }

    pub async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        self.fetch.fetch().await
    }
}

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("scope", &self.scope.to_string())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Why a source could not answer. Every variant names its input and none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Static(#[from] static_registry::StaticError),
    #[error(transparent)]
    DockerConfig(#[from] docker_config::DockerConfigError),
    #[error(transparent)]
    Helper(#[from] exec_helper::HelperError),
    #[error(transparent)]
    KubeletProvider(#[from] kubelet_provider::KubeletProviderError),
}
