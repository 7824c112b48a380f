//! What registry and repository is this? Every front door asks here, so all answer alike.

mod reference;
mod registry;
mod scope;

pub(crate) use reference::validate_tag;
pub use reference::{ImageReference, Repository, Target};
pub use registry::{RegistryHost, DOCKER_HUB};
pub use scope::{Scope, Specificity};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("invalid registry {input:?}: {reason}")]
    Registry { input: String, reason: &'static str },
    #[error("invalid image reference {input:?}: {reason}")]
    Reference { input: String, reason: &'static str },
    #[error("invalid repository {input:?}: {reason}")]
    Repository { input: String, reason: &'static str },
    #[error("invalid scope {input:?}: {reason}")]
    Scope { input: String, reason: &'static str },
    #[error("invalid server URL {input:?}: {reason}")]
    ServerUrl { input: String, reason: &'static str },
}
