//! HTTPS on the node: an in-process server framework (hyper 1 + rustls with ring) for fakes
//! such as the token server, and a small client that trusts only the test CA.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::oneshot;

use crate::node::{node, HostLease};
use crate::pki::CertifiedKey;

/// A request with its whole body read.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type HttpResponse = Response<Full<Bytes>>;

/// A response with a body, for handlers.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS server on `host:443` in the node, run by its own thread and runtime; dropping it
/// stops it and frees the host.
pub struct HttpsServer {
    host: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _lease: HostLease,
}

impl HttpsServer {
    /// Serves `handler` on `host:443` with a certificate from the test CA. Returns once the
    /// socket is listening.
    pub fn start<F, Fut>(host: &str, handler: F) -> HttpsServer
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        let node = node();
        let lease = node.lease(host);
        let address = SocketAddr::from((node.ip(host), 443));
        let tls = server_config(&node.ca().issue(&[host]));
        let listener = std::net::TcpListener::bind(address)
            .unwrap_or_else(|e| panic!("bind {host} ({address}): {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let (shutdown, stop) = oneshot::channel();
        let handler = Arc::new(handler);
        let thread =
            spawn_server_thread(format!("https {host}"), serve(listener, tls, handler, stop));
        HttpsServer {
            host: host.to_string(),
            shutdown: Some(shutdown),
            thread: Some(thread),
            _lease: lease,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `https://<host>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.host)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve<F, Fut>(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<F>,
    mut stop: oneshot::Receiver<()>,
) where
    F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
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
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = match body.collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    let request = HttpRequest {
                        method: parts.method,
                        uri: parts.uri,
                        headers: parts.headers,
                        body,
                    };
                    Ok::<_, Infallible>(handler(request).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A rustls server configuration (ring) presenting `cert`.
/// Runs `serving` on a thread of its own named `name`, in its own current-thread runtime, so
/// a test server keeps answering while the test's thread blocks.
pub fn spawn_server_thread(
    name: String,
    serving: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(serving);
        })
        .expect("spawn server thread")
}

pub fn server_config(cert: &CertifiedKey) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server certificate");
    Arc::new(config)
}

/// A rustls client configuration (ring) trusting only the PEM certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// What [`request`] received.
#[derive(Debug)]
pub struct ClientResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ClientResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request [`request`] sends.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    pub method: Method,
    /// `host` or `host:port` (443 when absent).
    pub authority: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl ClientRequest {
    pub fn get(authority: &str, path: &str) -> ClientRequest {
        ClientRequest {
            method: Method::GET,
            authority: authority.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A POST of `application/x-www-form-urlencoded` `fields`.
    pub fn post_form(authority: &str, path: &str, fields: &[(&str, &str)]) -> ClientRequest {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        ClientRequest {
            method: Method::POST,
            body: Bytes::from(body),
            ..ClientRequest::get(authority, path)
        }
        .header("content-type", "application/x-www-form-urlencoded")
    }

    pub fn header(mut self, name: &str, value: &str) -> ClientRequest {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// `GET https://<authority><path>` with `headers`; see [`request`].
pub fn get(
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<ClientResponse, String> {
    let request = headers
        .iter()
        .fold(ClientRequest::get(authority, path), |r, (k, v)| {
            r.header(k, v)
        });
    self::request(request)
}

/// Sends `request` over HTTPS trusting only the test CA, with a 10 s limit. The name is
/// resolved through the node's /etc/hosts. Safe to call from sync or async code (it runs on
/// a thread of its own).
pub fn request(request: ClientRequest) -> Result<ClientResponse, String> {
    request_trusting(node().ca().cert_pem(), request)
}

/// [`request`] trusting only the PEM certificates in `ca_pem` (a server whose own CA the
/// node does not trust).
pub fn request_trusting(ca_pem: &str, request: ClientRequest) -> Result<ClientResponse, String> {
    node();
    let tls = client_config(ca_pem);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let label = format!(
                "{} https://{}{}",
                request.method, request.authority, request.path
            );
            tokio::time::timeout(CLIENT_TIMEOUT, send(tls, request))
                .await
                .unwrap_or_else(|_| Err(format!("{label}: timed out")))
        })
    })
    .join()
    .expect("client thread")
}

async fn send(
    tls: Arc<rustls::ClientConfig>,
    request: ClientRequest,
) -> Result<ClientResponse, String> {
    let ClientRequest {
        method,
        authority,
        path,
        headers,
        body,
    } = request;
    let url = format!("https://{authority}{path}");
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{method} {url}: {what}: {e}");
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|e| fail("port", &e))?),
        None => (authority.as_str(), 443),
    };
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| fail("connect", &e))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| fail("server name", &e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| fail("TLS", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail("handshake", &e))?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .header("host", authority.as_str());
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| fail("request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail("send", &e))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| fail("body", &e))?
        .to_bytes();
    Ok(ClientResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A plain-HTTP `GET` on loopback (the metrics listener); the body as text.
pub fn plain_get(addr: std::net::SocketAddr, path: &str) -> String {
    let response = crate::mirror::send(addr, "GET", path, None, &[]);
    assert_eq!(response.status, 200, "GET {path} on {addr}: {response:?}");
    String::from_utf8_lossy(response.bytes()).into_owned()
}
