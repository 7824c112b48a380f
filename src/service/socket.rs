//! The unix socket the Credentials service listens on. Callers are checked with SO_PEERCRED
//! when they connect: allowed ones reach the real service, refused ones a service that
//! answers every call with `PERMISSION_DENIED`, so a refused client gets a clear status
//! instead of a dropped connection. What a connection may cost is bounded ([`super::limits`]):
//! beyond a cap the newest connection is closed at accept, and each connection ends by the
//! rules of [`super::caller`] (a revoked uid, a refused caller answered once, an idle one).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

use super::caller::{Caller, Gate};
use super::limits::{ConnectionTable, LogLimiter, SocketLimits};
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
    #[error("{path}: systemd's socket is owned by uid {owner}, not by credgate's uid {me}; set credgate.socket's SocketUser= to credgate's user")]
    Owner { path: PathBuf, owner: u32, me: u32 },
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

/// Takes the socket systemd bound at `path` (`credgate.socket`): the file must be a socket
/// owned by credgate's own uid, and gets the mode [`bind`] would give it, so the same callers
/// can connect whichever of the two opened it.
pub fn adopt(
    listener: std::os::unix::net::UnixListener,
    path: &Path,
    open_to_others: bool,
) -> Result<UnixListener, SocketError> {
    use std::os::unix::fs::MetadataExt;
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(SocketError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(socket_mode(open_to_others)),
    )
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
    connections: ConnectionTable,
    /// systemd's socket file outlives this process: it keeps queueing connections.
    keep_file: bool,
}

impl SocketService {
    /// Leaves the socket file in place at shutdown (it is systemd's, see [`adopt`]).
    pub fn keeping_file(mut self) -> Self {
        self.keep_file = true;
        self
    }

    /// Stops accepting, closes connections, and removes the socket file unless it is
    /// systemd's.
    pub async fn shutdown(mut self) {
        // ttrpc's shutdown expects its listener stream to be alive, so the accept loop
        // (which feeds it) stops last.
        let _ = self.served.shutdown().await;
        let _ = self.refused.shutdown().await;
        self.accept.abort();
        if !self.keep_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// How many connections are open on the socket now.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }
}

/// Starts serving `daemon` on `listener` (bound at `path`) within the default [`SocketLimits`].
pub async fn serve_socket(
    listener: UnixListener,
    path: &Path,
    daemon: Arc<Daemon>,
) -> Result<SocketService, SocketError> {
    serve_socket_within(listener, path, daemon, SocketLimits::default()).await
}

async fn serve_socket_within(
    listener: UnixListener,
    path: &Path,
    daemon: Arc<Daemon>,
    limits: SocketLimits,
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
    let connections = ConnectionTable::new(limits);
    let accept = tokio::spawn(accept_loop(
        listener,
        daemon,
        connections.clone(),
        served_tx,
        refused_tx,
    ));
    Ok(SocketService {
        served,
        refused,
        accept,
        path: path.to_path_buf(),
        connections,
        keep_file: false,
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

async fn accept_loop(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    connections: ConnectionTable,
    served: mpsc::Sender<Caller>,
    refused: mpsc::Sender<Caller>,
) {
    let mut refusals = LogLimiter::default();
    let mut over_cap = LogLimiter::default();
    let idle_timeout = connections.limits().idle_timeout;
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let cred = match conn.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the caller's credentials; dropping the connection");
                continue;
            }
        };
        let uid = cred.uid();
        let allowed = daemon.allows(uid);
        if !allowed {
            bump(&daemon.counters.refused_callers);
            if let Some(suppressed) = refusals.admit(uid, Instant::now()) {
                tracing::warn!(uid, pid = ?cred.pid(), suppressed, "refused a caller whose uid is not in allowed_uids");
            }
        }
        let Some(slot) = connections.admit(uid, !allowed) else {
            if let Some(suppressed) = over_cap.admit(uid, Instant::now()) {
                tracing::warn!(
                    uid,
                    open = connections.open(),
                    suppressed,
                    "socket connection cap reached; closing the newest connection"
                );
            }
            continue;
        };
        let (gate, to) = if allowed {
            (Gate::Allowed(daemon.clone()), &served)
        } else {
            (Gate::Refused, &refused)
        };
        if to
            .send(Caller::new(conn, uid, gate, slot, idle_timeout))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::UnixStream;

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
        serve_within(allowed_uids, SocketLimits::default()).await
    }

    async fn serve_within(allowed_uids: Vec<u32>, limits: SocketLimits) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credgate.sock");
        let daemon = Arc::new(Daemon::new(Keychain::new(Vec::new()), allowed_uids));
        let listener = bind(&path, false).unwrap();
        let service = serve_socket_within(listener, &path, daemon.clone(), limits)
            .await
            .unwrap();
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

    fn quick(connections: usize, idle_timeout: Duration) -> SocketLimits {
        SocketLimits {
            connections,
            idle_timeout,
            ..SocketLimits::default()
        }
    }

    fn is_permission_denied(result: &ttrpc::Result<crate::api::StatusResponse>) -> bool {
        matches!(result, Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::PERMISSION_DENIED)
    }

    /// Waits up to 5 s for `open_connections` to come down to `n`.
    async fn settles_at(service: &SocketService, n: usize) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while service.open_connections() != n {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Reads until the daemon ends the connection (true) or `within` passes (false).
    async fn closed_by_daemon(stream: &mut UnixStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn refused_callers_holding_their_connections_after_the_answer_do_not_accumulate() {
        let served = serve(vec![someone_else()]).await;
        let mut held = Vec::new();
        for _ in 0..100 {
            let refused = client(&served.path).await;
            let answer = status(&refused).await;
            assert!(is_permission_denied(&answer), "{answer:?}");
            held.push(refused);
        }
        assert!(
            settles_at(&served.service, 0).await,
            "{} refused connections still open",
            served.service.open_connections()
        );
        // The connection is gone: a second call is not answered again.
        let again = status(&held[0]).await;
        assert!(again.is_err() && !is_permission_denied(&again), "{again:?}");
        assert_eq!(served.daemon.counters.snapshot()["refused_callers"], 100);
        served.service.shutdown().await;
    }

    #[tokio::test]
    async fn a_connection_held_open_without_a_call_is_closed_after_the_idle_timeout() {
        let idle = Duration::from_millis(300);
        let served = serve_within(vec![me()], quick(256, idle)).await;
        let started = std::time::Instant::now();
        let mut silent = UnixStream::connect(&served.path).await.unwrap();
        assert!(closed_by_daemon(&mut silent, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= idle, "closed before the idle timeout");

        // A caller that keeps calling is never idle.
        let busy = client(&served.path).await;
        for _ in 0..8 {
            assert!(status(&busy).await.is_ok());
            tokio::time::sleep(idle / 3).await;
        }
        served.service.shutdown().await;
    }

    #[tokio::test]
    async fn idle_connections_filling_the_cap_lock_a_new_caller_out_only_until_they_idle_out() {
        let idle = Duration::from_millis(500);
        let served = serve_within(vec![me()], quick(4, idle)).await;
        let mut hoarded = Vec::new();
        for _ in 0..4 {
            hoarded.push(UnixStream::connect(&served.path).await.unwrap());
        }
        assert!(settles_at(&served.service, 4).await);
        let turned_away = client(&served.path).await;
        let answer = status(&turned_away).await;
        assert!(
            answer.is_err(),
            "the newest beyond the cap is closed: {answer:?}"
        );
        assert_eq!(served.service.open_connections(), 4);

        for stream in &mut hoarded {
            assert!(closed_by_daemon(stream, Duration::from_secs(5)).await);
        }
        assert!(settles_at(&served.service, 0).await);
        let later = client(&served.path).await;
        assert!(status(&later).await.is_ok());
        served.service.shutdown().await;
    }
}
