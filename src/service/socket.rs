//! The unix socket the Credentials service listens on. Callers are checked with SO_PEERCRED
//! when they connect: allowed ones reach the real service, refused ones a service that
//! answers every call with `PERMISSION_DENIED`, so a refused client gets a clear status
//! instead of a dropped connection.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

use super::{CredentialsService, RefusedCaller};
use crate::api::create_credentials;
use crate::daemon::{bump, Daemon};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the socket directory {path}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("{path} is in use by a running credgate; stop it first")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the ttrpc server on {path}: {message}")]
    Server { path: PathBuf, message: String },
}

/// Creates the socket at `path`, replacing a stale one, with mode 0600 — or 0666 when
/// `open_to_others` (some allowed uid is not root), since SO_PEERCRED is then the gate.
/// The socket is bound under a temporary name and renamed into place, so it is never
/// reachable with looser permissions.
/// When any allowed uid is not root, the socket must be connectable by others and
/// SO_PEERCRED becomes the only gate.
pub fn opens_to_others(allowed_uids: &[u32]) -> bool {
    allowed_uids.iter().any(|&uid| uid != 0)
}

/// The socket's mode: `0666` when it opens to others, else `0600`.
pub fn socket_mode(open_to_others: bool) -> u32 {
    if open_to_others {
        0o666
    } else {
        0o600
    }
}

pub fn bind(path: &Path, open_to_others: bool) -> Result<UnixListener, SocketError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
            .map_err(|source| SocketError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    remove_stale(path)?;
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let staging = dir.join(format!(".credgate-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging).map_err(bind_err)?;
    std::fs::set_permissions(
        &staging,
        std::fs::Permissions::from_mode(socket_mode(open_to_others)),
    )
    .and_then(|()| std::fs::rename(&staging, path))
    .and_then(|()| listener.set_nonblocking(true))
    .map_err(bind_err)?;
    UnixListener::from_std(listener).map_err(bind_err)
}

fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    tracing::info!(path = %path.display(), "replacing a stale socket");
    std::fs::remove_file(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// The running service: two ttrpc servers fed by one accept loop.
pub struct SocketService {
    served: Server,
    refused: Server,
    accept: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl SocketService {
    /// Stops accepting, closes connections, and removes the socket file.
    pub async fn shutdown(mut self) {
        // ttrpc's shutdown expects its listener stream to be alive, so the accept loop
        // (which feeds it) stops last.
        let _ = self.served.shutdown().await;
        let _ = self.refused.shutdown().await;
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts serving `daemon` on `listener` (bound at `path`).
pub async fn serve_socket(
    listener: UnixListener,
    path: &Path,
    daemon: Arc<Daemon>,
) -> Result<SocketService, SocketError> {
    let server_err = |e: ttrpc::Error| SocketError::Server {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let (served_tx, served_rx) = mpsc::channel(64);
    let (refused_tx, refused_rx) = mpsc::channel(64);
    let service = Arc::new(CredentialsService::new(daemon.clone()));
    let mut served = Server::new()
        .add_listener(channel_listener(served_rx))
        .register_service(create_credentials(service));
    let mut refused = Server::new()
        .add_listener(channel_listener(refused_rx))
        .register_service(create_credentials(Arc::new(RefusedCaller)));
    served.start().await.map_err(server_err)?;
    refused.start().await.map_err(server_err)?;
    let accept = tokio::spawn(accept_loop(listener, daemon, served_tx, refused_tx));
    Ok(SocketService {
        served,
        refused,
        accept,
        path: path.to_path_buf(),
    })
}

fn channel_listener(rx: mpsc::Receiver<UnixStream>) -> Listener {
    Listener::new(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok::<_, io::Error>(conn), rx))
    }))
}

async fn accept_loop(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    served: mpsc::Sender<UnixStream>,
    refused: mpsc::Sender<UnixStream>,
) {
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let route = match conn.peer_cred() {
            Ok(cred) if daemon.allows(cred.uid()) => &served,
            Ok(cred) => {
                bump(&daemon.counters.refused_callers);
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a caller whose uid is not in allowed_uids");
                &refused
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the caller's credentials; dropping the connection");
                continue;
            }
        };
        if route.send(conn).await.is_err() {
            return;
        }
    }
}
