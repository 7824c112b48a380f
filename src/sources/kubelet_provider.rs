//! kubelet credential provider plugins (`credentialprovider.kubelet.k8s.io/v1`).
//!
//! INTERFACE PINNED (body to be written).

use std::time::Duration;

use async_trait::async_trait;

use super::{Offer, Source, SourceError};
use crate::config::KubeletProviderEntry;
use crate::identity::Target;
use crate::system::System;

#[derive(Debug, thiserror::Error)]
pub enum KubeletProviderError {
    #[error("kubelet provider: todo")]
    Todo,
}

/// All providers of one kubelet `CredentialProviderConfig` file.
pub struct KubeletProviderSource {
    entry: KubeletProviderEntry,
    system: System,
    timeout: Duration,
}

impl KubeletProviderSource {
    /// Never fails: the config is read (and re-read when it changes) at lookup time.
    pub fn new(entry: &KubeletProviderEntry, system: System, timeout: Duration) -> Self {
        Self {
            entry: entry.clone(),
            system,
            timeout,
        }
    }
}

#[async_trait]
impl Source for KubeletProviderSource {
    fn name(&self) -> String {
        format!("kubelet provider config {}", self.entry.config.display())
    }

    async fn offers(&self, _target: &Target) -> Result<Vec<Offer>, SourceError> {
        let _ = (&self.system, self.timeout);
        Err(KubeletProviderError::Todo.into())
    }
}
