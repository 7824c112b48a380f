//! docker `config.json` and containers `auth.json`: `auths`, `credHelpers`, `credsStore`.
//!
//! INTERFACE PINNED (body to be written).

use std::time::Duration;

use async_trait::async_trait;

use super::{Offer, Source, SourceError};
use crate::config::DockerConfigEntry;
use crate::identity::Target;
use crate::system::System;

#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("docker config: todo")]
    Todo,
}

pub struct DockerConfigSource {
    entry: DockerConfigEntry,
    system: System,
    helper_timeout: Duration,
}

impl DockerConfigSource {
    /// Never fails: the file is read (and re-read when it changes) at lookup time.
    pub fn new(entry: &DockerConfigEntry, system: System, helper_timeout: Duration) -> Self {
        Self {
            entry: entry.clone(),
            system,
            helper_timeout,
        }
    }
}

#[async_trait]
impl Source for DockerConfigSource {
    fn name(&self) -> String {
        format!("docker config {}", self.entry.path.display())
    }

    async fn offers(&self, _target: &Target) -> Result<Vec<Offer>, SourceError> {
        let _ = (&self.system, self.helper_timeout);
        Err(DockerConfigError::Todo.into())
    }
}
