//! containerd's own API, over its gRPC socket: the connection `doctor` and `pull` share.
//! What containerd's files say (config.toml, the hosts directory) is read in [`files`].
//!
//! containerd's API is gRPC (tonic, from the `containerd-client` crate); the CRI is served on
//! the same socket (`k8s-cri`). Every call carries a deadline so a wedged containerd turns
//! into an error that names the socket, never a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

pub mod files;

/// containerd's default socket.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// containerd's default namespace for images pulled by `ctr` and `credgate pull`; the CRI
/// uses `k8s.io`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How long one unary call to containerd may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {socket}: {reason}")]
    Connect { socket: PathBuf, reason: String },
    #[error("containerd at {socket}: {call}: {status}")]
    Call {
        socket: PathBuf,
        call: &'static str,
        status: String,
    },
}

/// One connection to containerd's socket.
#[derive(Clone, Debug)]
pub struct Containerd {
    socket: PathBuf,
    channel: Channel,
}

/// What containerd says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub version: String,
    pub revision: String,
}

impl ContainerdVersion {
    /// The major version number (1 for 1.7.24, 2 for 2.1.9), when the version parses.
    pub fn major(&self) -> Option<u32> {
        self.version
            .trim_start_matches('v')
            .split('.')
            .next()?
            .parse()
            .ok()
    }
}

impl Containerd {
    /// Connects to containerd's socket; fails at once if nothing listens there.
    pub async fn connect(socket: &Path) -> Result<Self, ContainerdError> {
        let connect = containerd_client::connect(socket);
        let channel = match tokio::time::timeout(CALL_TIMEOUT, connect).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(err)) => {
                return Err(ContainerdError::Connect {
                    socket: socket.to_path_buf(),
                    reason: error_chain(&err),
                })
            }
            Err(_) => {
                return Err(ContainerdError::Connect {
                    socket: socket.to_path_buf(),
                    reason: format!("no answer within {CALL_TIMEOUT:?}"),
                })
            }
        };
        Ok(Self {
            socket: socket.to_path_buf(),
            channel,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The gRPC channel, for service clients (transfer, streaming, CRI).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Turns a failed call into an error naming the socket and the call.
    pub fn call_error(&self, call: &'static str, status: &tonic::Status) -> ContainerdError {
        ContainerdError::Call {
            socket: self.socket.clone(),
            call,
            status: status_text(status),
        }
    }

    /// containerd's version (the Version service).
    pub async fn version(&self) -> Result<ContainerdVersion, ContainerdError> {
        let mut client = VersionClient::new(self.channel());
        let mut request = tonic::Request::new(());
        request.set_timeout(CALL_TIMEOUT);
        let reply = client
            .version(request)
            .await
            .map_err(|status| self.call_error("version", &status))?
            .into_inner();
        Ok(ContainerdVersion {
            version: reply.version,
            revision: reply.revision,
        })
    }
}

/// A gRPC status as errors show it: `Code: message`.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // tonic and hyper often repeat their cause in their own message.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_parses_with_or_without_v() {
        let version = |v: &str| ContainerdVersion {
            version: v.into(),
            revision: String::new(),
        };
        assert_eq!(version("v1.7.24").major(), Some(1));
        assert_eq!(version("2.1.9+unknown").major(), Some(2));
        assert_eq!(version("garbage").major(), None);
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let err = Containerd::connect(&socket).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
    }
}
