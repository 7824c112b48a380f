//! A fault front: an in-process HTTPS proxy that stands in front of one real registry and,
//! while a fault is switched on, answers 429 with `Retry-After` or cuts blob bodies short.
//! It is a fake because no real registry produces either fault on demand; everything else
//! it forwards untouched to the real docker-registry behind it. It serves the registry's own
//! name with a certificate from the node's CA on an address of its own ([`FRONT_IP`]); a test
//! points the name at it in /etc/hosts.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::sync::oneshot;

use crate::node::node;
use crate::registry::Registry;

/// The loopback address the front listens on (port 443); in no [`crate::node::NODE_HOSTS`] row.
pub const FRONT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 40);

/// What the front does to requests while it is switched on ([`FaultFront::set_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontFault {
    /// Every request is answered 429 with `Retry-After: <seconds>`, as a throttling registry.
    TooManyRequests { retry_after_secs: u64 },
    /// A 200 to a blob GET sends its headers and at most `after_bytes` (never more than half)
    /// of the body, then the connection is dropped.
    CutBlobs { after_bytes: usize },
}

type FrontBody = BoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

#[derive(Default)]
struct State {
    fault: Option<FrontFault>,
    /// How many more requests the fault applies to (`None`: until cleared).
    budget: Option<usize>,
}

struct Shared {
    state: Mutex<State>,
    upstream: SocketAddr,
    upstream_name: ServerName<'static>,
    client: tokio_rustls::TlsConnector,
    faulted: AtomicUsize,
}

/// A running front; dropping it stops it.
pub struct FaultFront {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultFront {
    /// Starts a front for `registry` (a TLS node registry) on [`FRONT_IP`]:443, passing every
    /// request through until a fault is switched on. Returns once it listens.
    pub fn start(registry: &Registry) -> FaultFront {
        let node = node();
        let host = registry.host().to_string();
        let tls = crate::https::server_config(&node.ca().issue(&node.names(&host)));
        let address = SocketAddr::from((FRONT_IP, 443));
        let listener = std::net::TcpListener::bind(address)
            .unwrap_or_else(|e| panic!("bind the fault front ({address}): {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            upstream: SocketAddr::from((registry.ip(), 443)),
            upstream_name: ServerName::try_from(host.clone()).expect("registry host name"),
            client: tokio_rustls::TlsConnector::from(crate::https::client_config(
                node.ca().cert_pem(),
            )),
            faulted: AtomicUsize::new(0),
        });
        let (shutdown, stop) = oneshot::channel();
        let serving = shared.clone();
        let thread = crate::https::spawn_server_thread(
            format!("fault front {host}"),
            serve(listener, tls, serving, stop),
        );
        FaultFront {
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Applies `fault` to every request from now on (`None`: passes everything through).
    pub fn set_fault(&self, fault: Option<FrontFault>) {
        *self.state() = State {
            fault,
            budget: None,
        };
    }

    /// Applies `fault` to the next `requests` requests it fits, then passes through again.
    pub fn set_fault_for(&self, fault: FrontFault, requests: usize) {
        *self.state() = State {
            fault: Some(fault),
            budget: Some(requests),
        };
    }

    /// How many requests a fault was applied to so far (answered 429 or cut).
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultFront {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// The fault to apply to a request for which `fits` says whether it applies, taking one
    /// from the budget if it does.
    fn take_fault(&self, fits: impl Fn(FrontFault) -> bool) -> Option<FrontFault> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fault = state.fault.filter(|f| fits(*f))?;
        match &mut state.budget {
            Some(0) => return None,
            Some(left) => *left -= 1,
            None => {}
        }
        self.faulted.fetch_add(1, Ordering::SeqCst);
        Some(fault)
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect(self.upstream)
            .await
            .map_err(|e| format!("connect {}: {e}", self.upstream))?;
        let tls = self
            .client
            .connect(self.upstream_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS to {}: {e}", self.upstream))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP to {}: {e}", self.upstream))?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {}: {e}", self.upstream))
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<FrontBody> {
        if let Some(FrontFault::TooManyRequests { retry_after_secs }) =
            self.take_fault(|f| matches!(f, FrontFault::TooManyRequests { .. }))
        {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", retry_after_secs.to_string())
                .header("content-type", "application/json")
                .body(full(
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"too many requests (fault front)"}]}"#,
                ))
                .expect("429 response");
        }
        let blob_get =
            request.method() == Method::GET && request.uri().path().contains("/blobs/sha256:");
        let response = match self.forward(request).await {
            Ok(response) => response,
            Err(e) => {
                return Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(full(format!("fault front: {e}")))
                    .expect("502 response")
            }
        };
        if !(blob_get && response.status() == StatusCode::OK) {
            return response.map(|body| body.map_err(Into::into).boxed());
        }
        let Some(FrontFault::CutBlobs { after_bytes }) =
            self.take_fault(|f| matches!(f, FrontFault::CutBlobs { .. }))
        else {
            return response.map(|body| body.map_err(Into::into).boxed());
        };
        let (parts, body) = response.into_parts();
        let whole = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(full(format!("fault front: upstream body: {e}")))
                    .expect("502 response")
            }
        };
        let keep = after_bytes.min(whole.len() / 2);
        // Content-Length stays the whole blob's, so the cut shows as a body broken off.
        Response::from_parts(parts, CutBody::new(whole.slice(..keep)).boxed())
    }
}

fn full(text: impl Into<Bytes>) -> FrontBody {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

/// A body that yields its prefix and then fails, which makes hyper drop the connection.
/// The failure waits a moment first: hyper flushes what it holds only when the body stalls,
/// so without it the headers and prefix would be dropped unsent (a cut before the head).
struct CutBody {
    prefix: Option<Bytes>,
    flush: Pin<Box<tokio::time::Sleep>>,
}

impl CutBody {
    fn new(prefix: Bytes) -> CutBody {
        CutBody {
            prefix: Some(prefix),
            flush: Box::pin(tokio::time::sleep(FLUSH_BEFORE_CUT)),
        }
    }
}

/// How long a cut body stalls after its prefix, for hyper to send it.
const FLUSH_BEFORE_CUT: std::time::Duration = std::time::Duration::from_millis(100);

impl Body for CutBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take().filter(|p| !p.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match this.flush.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err("fault front: blob body cut".into()))),
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.answer(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
