//! Thin clients of the Credentials API: `docker-credential-credgate` and
//! `credgate kubelet-provider`. They hold no credentials; they ask the daemon, and fail fast
//! with one line when it is not there.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use ttrpc::r#async::transport::Socket;

use crate::api::{self, CredentialsClient};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
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

/// The socket a thin client dials, and the config that did not load when the default
/// socket stands in for its `listen.socket`.
#[derive(Debug, Clone)]
pub struct DaemonSocket {
    pub path: PathBuf,
    pub unloaded_config: Option<UnloadedConfig>,
}

/// A config that was named or present but did not load. Its reason never quotes the file:
/// a parse error can echo a value, and a value can be a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnloadedConfig {
    pub path: PathBuf,
    pub reason: String,
}

impl UnloadedConfig {
    fn new(path: PathBuf, error: &ConfigError) -> Self {
        let reason = match error {
            ConfigError::Read { source, .. } => source.to_string(),
            ConfigError::Invalid { line, column, .. } => {
                format!("invalid at line {line}, column {column}")
            }
        };
        Self { path, reason }
    }
}

impl std::fmt::Display for UnloadedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "config {} did not load: {}; used the default socket",
            self.path.display(),
            self.reason
        )
    }
}

/// Where the daemon's socket is: `$CREDGATE_SOCKET`, else `listen.socket` of the config
/// (`config`, `$CREDGATE_CONFIG` or the default path when present), else the default socket
/// — also when that config does not load, which the socket then remembers.
pub fn daemon_socket(vars: &[(OsString, OsString)], config: Option<&Path>) -> DaemonSocket {
    if let Some(path) = var(vars, "CREDGATE_SOCKET") {
        return DaemonSocket {
            path,
            unloaded_config: None,
        };
    }
    let config_path = config
        .map(Path::to_path_buf)
        .or_else(|| var(vars, "CREDGATE_CONFIG"))
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()));
    let (config, unloaded_config) = match config_path.map(|p| (Config::load(&p), p)) {
        Some((Ok(config), _)) => (config, None),
        Some((Err(error), path)) => (Config::builtin(), Some(UnloadedConfig::new(path, &error))),
        None => (Config::builtin(), None),
    };
    DaemonSocket {
        path: config.listen.socket,
        unloaded_config,
    }
}

impl DaemonSocket {
    /// Connects; when the daemon is not reachable on a default socket that stood in for a
    /// config that did not load, the error says so, since that may be why.
    pub async fn connect(&self) -> Result<DaemonClient, ClientError> {
        let connected = DaemonClient::connect(&self.path).await;
        match (connected, &self.unloaded_config) {
            (Err(ClientError::Unreachable { socket, reason }), Some(config)) => {
                Err(ClientError::Unreachable {
                    socket,
                    reason: format!("{reason} ({config})"),
                })
            }
            (connected, _) => connected,
        }
    }
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
        // A blocking connect, as ttrpc's own `Client::connect` makes: on a unix socket it
        // answers at once, unless the daemon's backlog is full and it waits for a slot.
        let stream = std::os::unix::net::UnixStream::connect(socket)
            .and_then(Socket::try_from)
            .map_err(|e| ClientError::Unreachable {
                socket: socket.to_path_buf(),
                reason: unreachable_reason(&e),
            })?;
        Ok(Self {
            client: CredentialsClient::new(ttrpc::r#async::Client::new(stream)),
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
        let deadline = Instant::now() + DAEMON_DEADLINE;
        let answer = tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| self.timed_out())?;
        answer.map_err(|error| match error {
            ttrpc::Error::RpcStatus(status) => {
                let message = status.message().to_string();
                match status.code() {
                    ttrpc::Code::PERMISSION_DENIED => ClientError::Refused { message },
                    ttrpc::Code::INVALID_ARGUMENT => ClientError::Invalid { message },
                    _ => ClientError::Failed { message },
                }
            }
            // ttrpc's own deadline (the context's, started no earlier than ours) fired first.
            _ if Instant::now() >= deadline => self.timed_out(),
            // The daemon went away between connect and answer.
            _ => ClientError::Unreachable {
                socket: self.socket.clone(),
                reason: "the connection closed".to_string(),
            },
        })
    }

    fn timed_out(&self) -> ClientError {
        ClientError::TimedOut {
            socket: self.socket.clone(),
            after: DAEMON_DEADLINE,
        }
    }
}

/// Why connecting failed, in the words of the usual causes; anything else as the OS says it.
fn unreachable_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no socket there".to_string(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied on the socket".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &Path)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), v.as_os_str().to_owned()))
            .collect()
    }

    #[test]
    fn a_config_that_does_not_load_falls_back_to_the_default_socket_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let socket = daemon_socket(&vars(&[("CREDGATE_CONFIG", &missing)]), None);
        assert_eq!(socket.path, Config::builtin().listen.socket);
        let unloaded = socket.unloaded_config.expect("the failure is kept");
        assert_eq!(unloaded.path, missing);
        assert!(
            unloaded.to_string().ends_with("; used the default socket"),
            "{unloaded}"
        );
    }

    #[test]
    fn an_invalid_config_is_named_by_position_never_by_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npassword = 31415926\n",
        )
        .unwrap();
        let socket = daemon_socket(&[], Some(&config));
        let unloaded = socket.unloaded_config.expect("the failure is kept");
        assert_eq!(unloaded.reason, "invalid at line 4, column 12");
        assert!(!unloaded.to_string().contains("31415926"));
    }

    #[test]
    fn a_loaded_config_or_an_explicit_socket_has_nothing_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let wanted = dir.path().join("d.sock");
        std::fs::write(
            &config,
            format!("[listen]\nsocket = \"{}\"\n", wanted.display()),
        )
        .unwrap();
        let socket = daemon_socket(&[], Some(&config));
        assert_eq!((socket.path, socket.unloaded_config), (wanted, None));
        let explicit = dir.path().join("explicit.sock");
        let missing = dir.path().join("missing.toml");
        let env = vars(&[
            ("CREDGATE_SOCKET", &explicit),
            ("CREDGATE_CONFIG", &missing),
        ]);
        let socket = daemon_socket(&env, None);
        assert_eq!((socket.path, socket.unloaded_config), (explicit, None));
    }

    fn reason(error: ClientError) -> String {
        match error {
            ClientError::Unreachable { reason, .. } => reason,
            other => panic!("expected Unreachable, got {other}"),
        }
    }

    #[tokio::test]
    async fn connect_failures_are_named_by_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.sock");
        let error = DaemonClient::connect(&missing)
            .await
            .err()
            .expect("no socket");
        assert_eq!(reason(error), "no socket there");
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let error = DaemonClient::connect(&stale).await.err().expect("stale");
        assert_eq!(reason(error), "connection refused");
    }

    #[tokio::test]
    async fn an_unreachable_daemon_on_a_fallback_socket_names_the_config_that_did_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let socket = DaemonSocket {
            path: dir.path().join("missing.sock"),
            unloaded_config: Some(UnloadedConfig {
                path: PathBuf::from("/etc/credgate/config.toml"),
                reason: "Permission denied (os error 13)".to_string(),
            }),
        };
        let error = socket.connect().await.err().expect("no socket");
        assert_eq!(
            reason(error),
            "no socket there (config /etc/credgate/config.toml did not load: \
             Permission denied (os error 13); used the default socket)"
        );
    }
}
