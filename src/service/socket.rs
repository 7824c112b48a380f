//! The unix socket the Credentials service listens on. Callers are checked with SO_PEERCRED
//! when they connect: allowed ones reach the real service, refused ones a service that
//! answers every call with `PERMISSION_DENIED`, so a refused client gets a clear status
//! instead of a dropped connection. An allowed caller's uid is checked again against the
//! daemon's current `allowed_uids` before every read from its connection
//! ([`AllowedCaller`]), so after a reload that drops the uid its next call finds the
//! connection closed.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

fn channel_listener<S>(rx: mpsc::Receiver<S>) -> Listener
where
    S: AsyncRead + AsyncWrite + Send + Sync + 'static,
{
    Listener::new(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok::<_, io::Error>(conn), rx))
    }))
}

/// The connection of a caller that was allowed when it connected. Before each read its uid
/// is checked against the daemon's current `allowed_uids`; once a reload has dropped it,
/// reads end (EOF) and ttrpc closes the connection, so the call that was being sent is never
/// answered. Writes pass through: an answer to a call admitted before the reload still goes
/// out.
struct AllowedCaller {
    stream: UnixStream,
    uid: u32,
    daemon: Arc<Daemon>,
    revoked: bool,
}

impl AllowedCaller {
    fn still_allowed(&mut self) -> bool {
        if self.revoked {
            return false;
        }
        if self.daemon.allows(self.uid) {
            return true;
        }
        self.revoked = true;
        bump(&self.daemon.counters.refused_callers);
        tracing::warn!(
            uid = self.uid,
            "closing a connection whose uid is no longer in allowed_uids"
        );
        false
    }
}

impl AsyncRead for AllowedCaller {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.still_allowed() {
            // Nothing read: end of stream.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AllowedCaller {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn accept_loop(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    served: mpsc::Sender<AllowedCaller>,
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
        let sent = match conn.peer_cred() {
            Ok(cred) if daemon.allows(cred.uid()) => {
                let caller = AllowedCaller {
                    stream: conn,
                    uid: cred.uid(),
                    daemon: daemon.clone(),
                    revoked: false,
                };
                served.send(caller).await.is_ok()
            }
            Ok(cred) => {
                bump(&daemon.counters.refused_callers);
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a caller whose uid is not in allowed_uids");
                refused.send(conn).await.is_ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the caller's credentials; dropping the connection");
                continue;
            }
        };
        if !sent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialsClient, StatusRequest};
    use crate::keychain::Keychain;

    struct Served {
        _dir: tempfile::TempDir,
        path: PathBuf,
        daemon: Arc<Daemon>,
        service: SocketService,
    }

    async fn serve(allowed_uids: Vec<u32>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credgate.sock");
        let daemon = Arc::new(Daemon::new(Keychain::new(Vec::new()), allowed_uids));
        let listener = bind(&path, false).unwrap();
        let service = serve_socket(listener, &path, daemon.clone()).await.unwrap();
        Served {
            _dir: dir,
            path,
            daemon,
            service,
        }
    }

    async fn client(path: &Path) -> CredentialsClient {
        let address = format!("unix://{}", path.display());
        CredentialsClient::new(ttrpc::r#async::Client::connect(&address).await.unwrap())
    }

    async fn status(client: &CredentialsClient) -> ttrpc::Result<crate::api::StatusResponse> {
        let ctx = ttrpc::context::with_timeout(10_000_000_000);
        client.status(ctx, &StatusRequest::default()).await
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn someone_else() -> u32 {
        me().wrapping_add(1)
    }

    #[tokio::test]
    async fn a_reload_that_drops_a_uid_cuts_off_its_open_connection_at_the_next_call() {
        let served = serve(vec![me()]).await;
        let connected = client(&served.path).await;
        assert!(status(&connected).await.is_ok());

        served
            .daemon
            .reload(Keychain::new(Vec::new()), vec![someone_else()]);
        let after = status(&connected).await;
        assert!(after.is_err(), "{after:?}");
        assert!(
            !matches!(after, Err(ttrpc::Error::Others(ref m)) if m.contains("timeout")),
            "refused at once, not left to time out: {after:?}"
        );
        assert_eq!(served.daemon.counters.snapshot()["refused_callers"], 1);
        assert!(status(&connected).await.is_err(), "still refused");

        // A new connection of the same uid gets the refusal as a status.
        let fresh = client(&served.path).await;
        let refused = status(&fresh).await.unwrap_err();
        assert!(
            matches!(refused, ttrpc::Error::RpcStatus(ref s) if s.code() == ttrpc::Code::PERMISSION_DENIED),
            "{refused:?}"
        );
        served.service.shutdown().await;
    }

    #[tokio::test]
    async fn a_reload_that_keeps_the_uid_keeps_its_connection() {
        let served = serve(vec![me()]).await;
        let connected = client(&served.path).await;
        assert!(status(&connected).await.is_ok());
        served
            .daemon
            .reload(Keychain::new(Vec::new()), vec![someone_else(), me()]);
        assert!(status(&connected).await.is_ok());
        assert!(status(&connected).await.is_ok());
        assert_eq!(served.daemon.counters.snapshot()["refused_callers"], 0);
        served.service.shutdown().await;
    }
}
