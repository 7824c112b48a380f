//! Loopback HTTP/1.1 listeners (the endpoint and the metrics page): bounded request heads,
//! one task per connection, and a graceful stop that lets running transfers finish for a
//! while.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::upstream::UpstreamBody;

/// Most headers a request may carry; more is 431.
pub const MAX_HEADERS: usize = 64;
/// Largest request head (request line and headers); more is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client that has not sent its request head by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for running transfers before cutting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{key} = {addr} is not a loopback address; credgate listens on loopback only (127.0.0.1 or [::1])")]
    NotLoopback { key: &'static str, addr: SocketAddr },
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

/// A running listener.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// The bound address (useful when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open connections finish their current response for up to
    /// [`DRAIN_TIMEOUT`], then closes whatever is left.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
    }
}

/// Serves `handle` on `listener`, one task per connection.
pub(super) fn spawn<H, F>(listener: TcpListener, name: &'static str, handle: H) -> HttpServer
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let local_addr = listener
        .local_addr()
        .expect("a bound TCP listener has an address");
    let (stop, stopped) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, name, handle, stopped));
    HttpServer {
        local_addr,
        stop,
        accept,
    }
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    name: &'static str,
    handle: H,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small answers (manifests, errors) go out in more than one write; without
                    // this, Nagle and the client's delayed ACK add ~40 ms to each.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, handle.clone(), stopped.clone()));
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

async fn serve_connection<H, F>(stream: TcpStream, handle: H, mut stopped: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = handle(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = http1_settings().serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
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

fn http1_settings() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES);
    builder
}
