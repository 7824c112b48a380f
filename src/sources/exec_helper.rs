//! docker credential helpers: `docker-credential-NAME get|list`, run with a timeout and a
//! controlled environment.
//!
//! INTERFACE PINNED (bodies to be written): see the doc comments for the contract.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Credential, Fetch, SourceError};
use crate::system::System;

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("credential helper {helper}: todo")]
    Todo { helper: String },
}

/// One docker credential helper program.
pub struct CredentialHelper {
    name: String,
    program: PathBuf,
    system: System,
    timeout: Duration,
}

impl CredentialHelper {
    /// `name` is what docker configs hold (`pass` runs `docker-credential-pass`, found on the
    /// helper path) or a path containing `/`, run as is.
    pub fn new(name: &str, system: &System, timeout: Duration) -> Self {
        let program_name = if name.contains('/') {
            name.to_string()
        } else {
            format!("docker-credential-{name}")
        };
        Self {
            name: program_name.clone(),
            program: system.find_program(&program_name),
            system: system.clone(),
            timeout,
        }
    }

    /// The program name, e.g. `docker-credential-pass`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `get`: the credential stored for `server_url`, `None` on "credentials not found".
    pub async fn get(&self, server_url: &str) -> Result<Option<Credential>, HelperError> {
        let _ = (server_url, &self.program, &self.system, self.timeout);
        Err(HelperError::Todo {
            helper: self.name.clone(),
        })
    }

    /// `list`: server URL → username of everything the helper stores.
    pub async fn list(&self) -> Result<BTreeMap<String, String>, HelperError> {
        Err(HelperError::Todo {
            helper: self.name.clone(),
        })
    }

    /// An offer's fetch that asks this helper for `server_url`.
    pub fn fetch_for(self: &Arc<Self>, server_url: impl Into<String>) -> Arc<dyn Fetch> {
        Arc::new(HelperFetch {
            helper: self.clone(),
            server_url: server_url.into(),
        })
    }
}

struct HelperFetch {
    helper: Arc<CredentialHelper>,
    server_url: String,
}

#[async_trait]
impl Fetch for HelperFetch {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        Ok(self.helper.get(&self.server_url).await?)
    }
}
