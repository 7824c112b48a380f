//! Loopback HTTP/1.1 listeners (the endpoint and the metrics page): bounded request heads,
//! a bounded number of connections ([`super::connections`]), one task per connection, and a
//! graceful stop that lets running transfers finish for a while.
//!
//! Timeouts: a request head must arrive within [`Limits::head_timeout`] of the connection
//! opening, and, on a kept-alive connection, of the previous response finishing (hyper
//! restarts its header-read timer whenever a connection goes idle), so an idle connection is
//! closed after that long. A response being streamed is never cut by it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::connections::{Admitted, Answering, ConnectionTable, Shed};
use crate::upstream::{BoxError, UpstreamBody};

/// Most headers a request may carry; more is 431.
pub const MAX_HEADERS: usize = 64;
/// Largest request head (request line and headers); more is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client that has not sent its request head by then is dropped; also how long a
/// kept-alive connection may sit idle.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections the endpoint keeps. containerd opens a few per pull (3 concurrent layer
/// downloads per image by default), so 512 serves well over a hundred parallel pulls. Each
/// request being answered holds at most one upstream connection (HTTP/1.1) and idle upstream
/// connections are capped per host (`upstream::client`), so at the cap credgate holds about
/// a thousand sockets: far below the fd limit the unit sets (`LimitNOFILE=65536`); under the
/// usual default of 1024, fewer parallel pulls fit.
pub const MAX_ENDPOINT_CONNECTIONS: usize = 512;
/// Open connections the metrics listener keeps: a scraper or two and a person with curl.
pub const MAX_METRICS_CONNECTIONS: usize = 8;
/// How long a stop waits for running transfers before cutting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a trusted connection shed to make room may take to flush the rest of its last
/// answer (a client that reads it is done in far less). Only connections that showed the
/// secret get it, each once and only when idle, so what lingers beside the cap is bounded by
/// how many connections the node's own clients open in that time.
const SHED_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// A pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{key} = {addr} is not a loopback address; credgate listens on loopback only (127.0.0.1 or [::1])")]
    NotLoopback { key: &'static str, addr: SocketAddr },
    #[error("cannot take systemd's socket for {key}: {source}")]
    Adopt {
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` (the config key `key`, for errors), which must be a loopback address.
pub async fn bind_loopback(
    key: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, ListenError> {
    if !addr.ip().is_loopback() {
        return Err(ListenError::NotLoopback { key, addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { key, addr, source })
}

/// Takes a listener systemd bound for `key` (socket activation); like [`bind_loopback`], it
/// must be on a loopback address. Call it inside the runtime that will serve it.
pub fn adopt_loopback(
    key: &'static str,
    listener: std::net::TcpListener,
) -> Result<TcpListener, ListenError> {
    let adopt_err = |source| ListenError::Adopt { key, source };
    let addr = listener.local_addr().map_err(adopt_err)?;
    if !addr.ip().is_loopback() {
        return Err(ListenError::NotLoopback { key, addr });
    }
    listener.set_nonblocking(true).map_err(adopt_err)?;
    TcpListener::from_std(listener).map_err(adopt_err)
}

/// How many connections a listener keeps, and how long a request head may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// At least one; see [`super::connections`] for who is closed at the cap.
    pub max_connections: usize,
    pub head_timeout: Duration,
}

impl Limits {
    pub const ENDPOINT: Limits = Limits {
        max_connections: MAX_ENDPOINT_CONNECTIONS,
        head_timeout: HEADER_READ_TIMEOUT,
    };
    pub const METRICS: Limits = Limits {
        max_connections: MAX_METRICS_CONNECTIONS,
        head_timeout: HEADER_READ_TIMEOUT,
    };
}

/// A running listener.
pub struct HttpServer {
    local_addr: SocketAddr,
    connections: Arc<ConnectionTable>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// The bound address (useful when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads how many connections are open, for a gauge; it outlives the server (then 0).
    pub fn open_connections(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let connections = self.connections.clone();
        move || connections.len()
    }

    /// Stops accepting, lets open connections finish their current response for up to
    /// [`DRAIN_TIMEOUT`], then closes whatever is left.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
    }
}

/// Serves `handle` on `listener`, one task per connection. Each request carries its
/// connection's [`super::Trust`] in its extensions.
pub(super) fn spawn<H, F>(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    handle: H,
) -> HttpServer
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let local_addr = listener
        .local_addr()
        .expect("a bound TCP listener has an address");
    let (stop, stopped) = watch::channel(false);
    let connections = ConnectionTable::new(limits.max_connections);
    let listening = Listening {
        name,
        connections: connections.clone(),
        head_timeout: limits.head_timeout,
    };
    let accept = tokio::spawn(accept_loop(listener, listening, handle, stopped));
    HttpServer {
        local_addr,
        connections,
        stop,
        accept,
    }
}

/// How often the accept loop logs that it closed newcomers at the cap: a flood of connections
/// can't turn into a flood of log lines (journald's rate limit would drop credgate's others).
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Newcomers closed at the cap: logged once per [`REFUSAL_LOG_WINDOW`] with the count.
#[derive(Default)]
struct RefusalLog {
    logged_at: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, listener: &'static str) {
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_WINDOW)
        {
            return;
        }
        tracing::warn!(
            listener,
            closed = self.unlogged,
            "connection limit reached with every connection being answered; closing new connections"
        );
        self.logged_at = Some(now);
        self.unlogged = 0;
    }
}

/// What the accept loop needs besides the socket and the handler.
struct Listening {
    name: &'static str,
    connections: Arc<ConnectionTable>,
    head_timeout: Duration,
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    listening: Listening,
    handle: H,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let name = listening.name;
    let mut connections = JoinSet::new();
    let mut refusals = RefusalLog::default();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(admitted) = listening.connections.admit() else {
                        // Every open connection is being answered: this one waits its turn by
                        // reconnecting, rather than taking a descriptor now.
                        refusals.refused(name);
                        drop(stream);
                        continue;
                    };
                    // Small answers (manifests, errors) go out in more than one write; without
                    // this, Nagle and the client's delayed ACK add ~40 ms to each.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(
                        stream,
                        admitted,
                        listening.head_timeout,
                        handle.clone(),
                        stopped.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            open = connections.len(),
            "closing connections still open after the drain timeout"
        );
    }
}

async fn serve_connection<H, F>(
    stream: TcpStream,
    mut admitted: Admitted,
    head_timeout: Duration,
    handle: H,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let trust = admitted.trust.clone();
    let activity = admitted.activity.clone();
    let requests = activity.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(trust.clone());
        let answering = requests.begin();
        let response = handle(request);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(response.map(|body| answered_with(body, answering)))
        }
    });
    let connection = http1_settings(head_timeout).serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        shed = &mut admitted.shed => match shed {
            // A trusted connection, idle: flush what hyper buffered of its last answer,
            // then close (at once when nothing is buffered).
            Ok(Shed::Gracefully) => {
                connection.as_mut().graceful_shutdown();
                loop {
                    match tokio::time::timeout(SHED_FLUSH_TIMEOUT, connection.as_mut()).await {
                        // A client that stopped reading the tail: it is cut.
                        Err(_) if activity.idle() => return,
                        // A request began as the connection was chosen: hyper answers it in
                        // full (keep-alive is off now), then closes.
                        Err(_) => continue,
                        Ok(_) => return,
                    }
                }
            }
            // A stranger's: dropping the connection closes the socket.
            Ok(Shed::Now) | Err(_) => return,
        },
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    // A client that went away, or a transfer aborted on purpose (see `body`).
    if let Err(error) = outcome {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// `body`, keeping its connection counted as answering until hyper has taken its last frame
/// or dropped it (a transfer is never closed to make room for a newcomer).
fn answered_with(body: UpstreamBody, answering: Answering) -> UpstreamBody {
    UpstreamBody::new(Answered {
        body,
        _answering: answering,
    })
}

/// A response body and the guard that is dropped with it; everything else is the body's own
/// (its size hint included, so a known length stays `Content-Length`).
struct Answered {
    body: UpstreamBody,
    _answering: Answering,
}

impl Body for Answered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn http1_settings(head_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES);
    builder
}
