//! Thin clients of the Credentials API: `docker-credential-credgate` and
//! `credgate kubelet-provider`. They hold no credentials; they ask the daemon, and fail fast
//! with one line when it is not there.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::{self, CredentialsClient};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::identity::Target;

pub mod docker_helper;
pub mod kubelet_provider;

/// How long a thin client waits for the daemon, connecting and answering together. A
/// lookup that runs a slow credential helper can take longer than a plain one, but a pull
/// must never hang on a client.
pub const DAEMON_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the credgate daemon is not reachable at {}: {reason}; is `credgate serve` running?", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
    #[error("the credgate daemon at {} did not answer within {after:?}", socket.display())]
    TimedOut { socket: PathBuf, after: Duration },
    #[error("the credgate daemon refused this caller: {message}")]
    Refused { message: String },
    #[error("the credgate daemon rejected the request: {message}")]
    Invalid { message: String },
    #[error("the credgate daemon failed: {message}")]
    Failed { message: String },
}

/// Where the daemon's socket is: `$CREDGATE_SOCKET`, else `listen.socket` of the config
/// (`$CREDGATE_CONFIG` or the default path, when present), else the default socket.
pub fn socket_path(vars: &[(OsString, OsString)], config: Option<&Path>) -> PathBuf {
    if let Some(socket) = var(vars, "CREDGATE_SOCKET") {
        return socket;
    }
    let config_path = config
        .map(Path::to_path_buf)
        .or_else(|| var(vars, "CREDGATE_CONFIG"))
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()));
    let config = config_path
        .and_then(|p| Config::load(&p).ok())
        .unwrap_or_else(Config::builtin);
    socket_for(vars, &config)
}

/// Where the daemon's socket is for a config already loaded: `$CREDGATE_SOCKET`, else its
/// `listen.socket`.
pub fn socket_for(vars: &[(OsString, OsString)], config: &Config) -> PathBuf {
    var(vars, "CREDGATE_SOCKET").unwrap_or_else(|| config.listen.socket.clone())
}

fn var(vars: &[(OsString, OsString)], name: &str) -> Option<PathBuf> {
    vars.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| PathBuf::from(v))
}

pub struct DaemonClient {
    client: CredentialsClient,
    socket: PathBuf,
}

impl DaemonClient {
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        let address = format!("unix://{}", socket.display());
        let connect = ttrpc::r#async::Client::connect(&address);
        let client = tokio::time::timeout(DAEMON_DEADLINE, connect)
            .await
            .map_err(|_| ClientError::TimedOut {
                socket: socket.to_path_buf(),
                after: DAEMON_DEADLINE,
            })?
            .map_err(|e| ClientError::Unreachable {
                socket: socket.to_path_buf(),
                reason: unreachable_reason(&e),
            })?;
        Ok(Self {
            client: CredentialsClient::new(client),
            socket: socket.to_path_buf(),
        })
    }

    pub async fn lookup(&self, target: &Target) -> Result<api::LookupResponse, ClientError> {
        let request = api::LookupRequest {
            host: target.registry.to_string(),
            repository: target
                .repository
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            ..Default::default()
        };
        let call = self.client.lookup(self.context(), &request);
        self.finish(call).await
    }

    pub async fn list(&self) -> Result<api::ListResponse, ClientError> {
        let request = api::ListRequest::default();
        let call = self.client.list(self.context(), &request);
        self.finish(call).await
    }

    /// Version, uptime and the health of each source (`credgate doctor`).
    pub async fn status(&self) -> Result<api::StatusResponse, ClientError> {
        let request = api::StatusRequest::default();
        let call = self.client.status(self.context(), &request);
        self.finish(call).await
    }

    fn context(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(i64::try_from(DAEMON_DEADLINE.as_nanos()).unwrap_or(i64::MAX))
    }

    async fn finish<T>(
        &self,
        call: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, ClientError> {
        let answer = tokio::time::timeout(DAEMON_DEADLINE, call)
            .await
            .map_err(|_| ClientError::TimedOut {
                socket: self.socket.clone(),
                after: DAEMON_DEADLINE,
            })?;
        answer.map_err(|e| self.classify(e))
    }

    fn classify(&self, error: ttrpc::Error) -> ClientError {
        match error {
            ttrpc::Error::RpcStatus(status) => {
                let message = status.message().to_string();
                match status.code() {
                    ttrpc::Code::PERMISSION_DENIED => ClientError::Refused { message },
                    ttrpc::Code::INVALID_ARGUMENT => ClientError::Invalid { message },
                    _ => ClientError::Failed { message },
                }
            }
            // ttrpc's own deadline (the context's timeout) fired before ours.
            ttrpc::Error::Others(text) if text.contains("deadline elapsed") => {
                ClientError::TimedOut {
                    socket: self.socket.clone(),
                    after: DAEMON_DEADLINE,
                }
            }
            // The daemon went away between connect and answer.
            other => ClientError::Unreachable {
                socket: self.socket.clone(),
                reason: unreachable_reason(&other),
            },
        }
    }
}

fn unreachable_reason(error: &ttrpc::Error) -> String {
    let text = error.to_string();
    for (needle, reason) in [
        ("No such file", "no socket there"),
        ("Connection refused", "connection refused"),
        ("Permission denied", "permission denied on the socket"),
    ] {
        if text.contains(needle) {
            return reason.to_string();
        }
    }
    "the connection closed".to_string()
}
