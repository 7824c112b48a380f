//! The pull-through endpoint's server half, driven over real HTTP exactly as containerd sends
//! mirror requests (path, `?ns=`, `Accept`, `X-Credgate-Secret`). The upstream behind it is an
//! in-process fake `SendUpstream`: it produces what a real registry can't on demand (a reset
//! mid-blob, wrong bytes for a digest, a short body) and canned content for the rest. Where
//! the real `Upstream` matters (redirects, throttling), it talks TLS to in-process registries
//! on 127.0.0.1 under a test CA, with the SSRF allow-list set by the test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use credgate::config::{Config, DigestVerification};
use credgate::daemon::Daemon;
use credgate::endpoint::{serve_endpoint, serve_metrics, EndpointState, HttpServer, Patience};
use credgate::identity::{RegistryHost, Scope};
use credgate::keychain::Keychain;
use credgate::metrics::Metrics;
use credgate::secret::MirrorSecret;
use credgate::system::System;
use credgate::upstream::{
    BoxError, SendUpstream, Upstream, UpstreamBody, UpstreamError, UpstreamPolicy, UpstreamRequest,
};
use credgate_integration::https::server_config;
use credgate_integration::images::sha256;
use credgate_integration::pki::TestCa;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const REGISTRY: &str = "registry.test";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

// ---------------------------------------------------------------- the fake upstream

/// Canned content and faults; records what it was sent and which keychain it saw.
struct FakeRegistry {
    manifest: Bytes,
    blob: Bytes,
    /// The sender feeding the last gated body, for the test to release the rest.
    gate: Mutex<Option<mpsc::Sender<Result<Bytes, BoxError>>>>,
    /// `group/throttled` answers 429 with each of these `Retry-After`s in turn (`None`: no
    /// header), then the manifest.
    throttle: Mutex<VecDeque<Option<&'static str>>>,
    seen: Mutex<Vec<Seen>>,
}

struct Seen {
    request: UpstreamRequest,
    keychain_sources: usize,
}

impl FakeRegistry {
    fn new() -> Self {
        Self {
            manifest: Bytes::from(format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","layers":[]}}"#
            )),
            blob: Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
            gate: Mutex::new(None),
            throttle: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn asked(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last_seen(&self) -> (UpstreamRequest, usize) {
        let seen = self.seen.lock().unwrap();
        let last = seen.last().expect("the fake was asked");
        (last.request.clone(), last.keychain_sources)
    }

    fn answer(&self, request: &UpstreamRequest) -> Result<Response<UpstreamBody>, UpstreamError> {
        let host = request.registry.to_string();
        match host.as_str() {
            "forbidden.test" => {
                return Err(UpstreamError::NotAllowed {
                    host,
                    reason: "resolves to a private address".into(),
                })
            }
            "down.test" => {
                return Err(UpstreamError::Unreachable {
                    host,
                    reason: "connection refused".into(),
                })
            }
            "slow.test" => return Err(UpstreamError::TimedOut { host }),
            "realm.test" => {
                return Err(UpstreamError::RealmNotAllowed {
                    realm: "https://auth.elsewhere.test/token".into(),
                    reason: format!("auth.elsewhere.test is not on the domain of {host}"),
                })
            }
            _ => {}
        }
        let repository = request.repository.as_ref().unwrap().to_string();
        let path = request.path.as_str();
        let manifest_digest = sha256(&self.manifest);
        let blob_digest = sha256(&self.blob);
        let ok = |content: &Bytes, content_type: &str, digest: &str| {
            content_response(request, content.clone(), content_type, digest)
        };
        Ok(match (repository.as_str(), path) {
            ("group/app", "/v2/group/app/manifests/v1") => {
                ok(&self.manifest, MANIFEST_TYPE, &manifest_digest)
            }
            ("group/app", p) if p == format!("/v2/group/app/manifests/{manifest_digest}") => {
                ok(&self.manifest, MANIFEST_TYPE, &manifest_digest)
            }
            ("group/app", p) if p == format!("/v2/group/app/blobs/{blob_digest}") => {
                ok(&self.blob, "application/octet-stream", &blob_digest)
            }
            ("group/corrupt", _) => {
                // Right length, wrong bytes: only the digest can tell.
                let mut wrong = self.blob.to_vec();
                wrong[150_000] ^= 0xff;
                ok(
                    &Bytes::from(wrong),
                    "application/octet-stream",
                    &blob_digest,
                )
            }
            ("group/whole-206", _) => {
                // The whole content, wrong bytes, as a 206 nobody asked a range of.
                let mut wrong = ok(&self.blob, "application/octet-stream", &blob_digest);
                *wrong.status_mut() = StatusCode::PARTIAL_CONTENT;
                *wrong.body_mut() = chunks(vec![Ok(corrupted(&self.blob))]);
                wrong
            }
            ("group/lie-203", _) => {
                let mut wrong = ok(&self.blob, "application/octet-stream", &blob_digest);
                *wrong.status_mut() = StatusCode::NON_AUTHORITATIVE_INFORMATION;
                *wrong.body_mut() = chunks(split(&corrupted(&self.blob), 64 * 1024));
                wrong
            }
            ("group/throttled", _) => match self.throttle.lock().unwrap().pop_front() {
                Some(retry_after) => too_many_requests(retry_after),
                None => ok(&self.manifest, MANIFEST_TYPE, &manifest_digest),
            },
            ("group/reset", _) => reset_midway(&self.blob, true),
            ("group/reset-chunked", _) => reset_midway(&self.blob, false),
            ("group/short", _) => short_body(&self.manifest),
            ("group/stream", _) => self.gated(&self.blob),
            ("group/private", _) => unauthorized(),
            _ => not_found(),
        })
    }

    /// The first half of `content` now, the rest when the test sends it through the gate.
    fn gated(&self, content: &Bytes) -> Response<UpstreamBody> {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(content.slice(..content.len() / 2))).unwrap();
        *self.gate.lock().unwrap() = Some(tx);
        let mut response = Response::new(ChannelBody(rx).boxed());
        response
            .headers_mut()
            .insert("content-length", content.len().into());
        response
    }
}

#[async_trait]
impl SendUpstream for FakeRegistry {
    async fn send(
        &self,
        keychain: &Keychain,
        request: UpstreamRequest,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.seen.lock().unwrap().push(Seen {
            request: request.clone(),
            keychain_sources: keychain.source_names().len(),
        });
        self.answer(&request)
    }
}

/// A full or ranged answer with the headers a registry sends, plus some that must not pass.
fn content_response(
    request: &UpstreamRequest,
    content: Bytes,
    content_type: &str,
    digest: &str,
) -> Response<UpstreamBody> {
    let range = request
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let (status, body) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, content.slice(start..=end)),
        None => (StatusCode::OK, content.clone()),
    };
    let mut response = Response::new(chunks(split(&body, 64 * 1024)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-length", body.len().into());
    headers.insert("content-type", content_type.parse().unwrap());
    headers.insert("docker-content-digest", digest.parse().unwrap());
    headers.insert("etag", format!("\"{digest}\"").parse().unwrap());
    headers.insert("accept-ranges", "bytes".parse().unwrap());
    headers.insert(
        "last-modified",
        "Mon, 23 Nov 2026 10:00:00 GMT".parse().unwrap(),
    );
    headers.insert("connection", "keep-alive".parse().unwrap());
    headers.insert(
        "www-authenticate",
        "Bearer realm=\"https://auth.test\"".parse().unwrap(),
    );
    headers.insert("set-cookie", "upstream-session=1".parse().unwrap());
    if let Some((start, end)) = range {
        let value = format!("bytes {start}-{end}/{}", content.len());
        headers.insert("content-range", value.parse().unwrap());
    }
    response
}

/// `content` with one byte flipped: the right length, only the digest can tell.
fn corrupted(content: &Bytes) -> Bytes {
    let mut wrong = content.to_vec();
    wrong[content.len() / 2] ^= 0xff;
    Bytes::from(wrong)
}

fn too_many_requests(retry_after: Option<&str>) -> Response<UpstreamBody> {
    let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
    let mut response = Response::new(chunks(vec![Ok(Bytes::from_static(body.as_bytes()))]));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", value.parse().unwrap());
    }
    response
}

fn parse_range(value: &str) -> Option<(usize, usize)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

/// 200 with the full length declared (or chunked), a third of the bytes, then an error.
fn reset_midway(content: &Bytes, declare_length: bool) -> Response<UpstreamBody> {
    let third = content.len() / 3;
    let body = chunks(vec![
        Ok(content.slice(..third / 2)),
        Ok(content.slice(third / 2..third)),
        Err("connection reset by peer".into()),
    ]);
    let mut response = Response::new(body);
    if declare_length {
        response
            .headers_mut()
            .insert("content-length", content.len().into());
    }
    response
}

/// 200 that ends cleanly before its declared length.
fn short_body(content: &Bytes) -> Response<UpstreamBody> {
    let mut response = Response::new(chunks(vec![Ok(content.slice(..content.len() - 10))]));
    response
        .headers_mut()
        .insert("content-length", content.len().into());
    response
}

fn unauthorized() -> Response<UpstreamBody> {
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    let mut response = Response::new(chunks(vec![Ok(Bytes::from_static(body.as_bytes()))]));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        "www-authenticate",
        "Bearer realm=\"https://auth.test/token\",service=\"registry.test\""
            .parse()
            .unwrap(),
    );
    response
}

fn not_found() -> Response<UpstreamBody> {
    let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
    let mut response = Response::new(chunks(vec![Ok(Bytes::from_static(body.as_bytes()))]));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn split(content: &Bytes, size: usize) -> Vec<Result<Bytes, BoxError>> {
    (0..content.len())
        .step_by(size)
        .map(|start| Ok(content.slice(start..(start + size).min(content.len()))))
        .collect()
}

/// A body that yields these items in order, each after a pause as a network read would,
/// so the endpoint sends what it has (headers first) before the next item.
fn chunks(items: Vec<Result<Bytes, BoxError>>) -> UpstreamBody {
    ListBody {
        items: items.into(),
        paused: false,
    }
    .boxed()
}

struct ListBody {
    items: VecDeque<Result<Bytes, BoxError>>,
    paused: bool,
}

impl Body for ListBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !std::mem::replace(&mut self.paused, true) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.paused = false;
        Poll::Ready(self.items.pop_front().map(|item| item.map(Frame::data)))
    }
}

/// A body fed through a channel, so a test decides when the rest arrives.
struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|item| item.map(Frame::data)))
    }
}

// ---------------------------------------------------------------- the endpoint under test

struct Endpoint {
    fake: Arc<FakeRegistry>,
    daemon: Arc<Daemon>,
    state: Arc<EndpointState>,
    server: HttpServer,
    metrics: HttpServer,
}

impl Endpoint {
    async fn start() -> Endpoint {
        Self::start_with(Patience::default()).await
    }

    /// In front of the fake, waiting on it as `patience` says.
    async fn start_with(patience: Patience) -> Endpoint {
        let fake = Arc::new(FakeRegistry::new());
        Self::start_before(fake.clone(), fake, patience).await
    }

    /// In front of `upstream`; `fake` is only there to be looked at.
    async fn start_before(
        fake: Arc<FakeRegistry>,
        upstream: Arc<dyn SendUpstream>,
        patience: Patience,
    ) -> Endpoint {
        let daemon = Arc::new(Daemon::new(Keychain::new(Vec::new()), vec![0]));
        let metrics = Arc::new(Metrics::new());
        // Registries the keychain would know keep their own metrics label.
        metrics.label_registries(
            ["registry.test", "registry.test:5000"].map(|s| Scope::parse(s).unwrap()),
        );
        let state = Arc::new(
            EndpointState::new(
                daemon.clone(),
                upstream,
                MirrorSecret::new(SECRET),
                metrics.clone(),
            )
            .with_patience(patience),
        );
        let server = serve_endpoint(loopback().await, state.clone());
        let metrics = serve_metrics(loopback().await, metrics);
        Endpoint {
            fake,
            daemon,
            state,
            server,
            metrics,
        }
    }

    /// A request as containerd sends it to a mirror.
    fn request(&self, method: Method, path_and_query: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", self.server.local_addr().to_string())
            .header("accept", ACCEPT)
            .header("user-agent", "containerd/v2.1.0")
            .header("x-credgate-secret", SECRET)
    }

    async fn send(&self, request: hyper::http::request::Builder) -> Response<Incoming> {
        send_to(self.server.local_addr(), request).await
    }

    async fn get(&self, path_and_query: &str) -> Response<Incoming> {
        self.send(self.request(Method::GET, path_and_query)).await
    }

    async fn metrics_page(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let request = Request::get(path).header("host", "localhost");
        let response = send_to(self.metrics.local_addr(), request).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }
}

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// One request on a fresh connection with hyper's client.
async fn send_to(
    addr: std::net::SocketAddr,
    request: hyper::http::request::Builder,
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the endpoint answered in time")
        .expect("a response")
}

async fn body_of(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

async fn error_code(response: Response<Incoming>) -> String {
    let body = body_of(response).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["errors"][0]["code"].as_str().unwrap().to_string()
}

/// Reads the body to its end, or to the error that cut it off.
async fn read_to_end(response: Response<Incoming>) -> Result<usize, hyper::Error> {
    let mut body = response.into_body();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            read += data.len();
        }
    }
    Ok(read)
}

fn header<'a>(response: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

// ---------------------------------------------------------------- pass-through

#[tokio::test]
async fn a_manifest_passes_through_with_its_headers_and_only_safe_headers_go_upstream() {
    let endpoint = Endpoint::start().await;
    let response = endpoint
        .get("/v2/group/app/manifests/v1?ns=registry.test")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let digest = sha256(&endpoint.fake.manifest);
    assert_eq!(header(&response, "content-type"), Some(MANIFEST_TYPE));
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        header(&response, "etag"),
        Some(format!("\"{digest}\"").as_str())
    );
    assert_eq!(
        header(&response, "content-length"),
        Some(endpoint.fake.manifest.len().to_string().as_str())
    );
    assert_eq!(
        header(&response, "last-modified"),
        Some("Mon, 23 Nov 2026 10:00:00 GMT")
    );
    for dropped in ["www-authenticate", "set-cookie"] {
        assert!(
            response.headers().get(dropped).is_none(),
            "{dropped} passed through"
        );
    }
    assert_eq!(body_of(response).await, endpoint.fake.manifest);

    let (sent, _) = endpoint.fake.last_seen();
    assert_eq!(sent.registry.to_string(), REGISTRY);
    assert_eq!(sent.repository.as_ref().unwrap().as_str(), "group/app");
    assert_eq!(sent.method, Method::GET);
    assert_eq!(sent.path, "/v2/group/app/manifests/v1");
    let mut names: Vec<_> = sent
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["accept", "user-agent"]);
    assert_eq!(sent.headers()["accept"], ACCEPT);
}

#[tokio::test]
async fn a_blob_and_a_manifest_by_digest_stream_through_verified() {
    let endpoint = Endpoint::start().await;
    let blob_digest = sha256(&endpoint.fake.blob);
    let response = endpoint
        .get(&format!(
            "/v2/group/app/blobs/{blob_digest}?ns=registry.test"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(blob_digest.as_str())
    );
    assert_eq!(header(&response, "accept-ranges"), Some("bytes"));
    assert_eq!(body_of(response).await, endpoint.fake.blob);

    let manifest_digest = sha256(&endpoint.fake.manifest);
    let response = endpoint
        .get(&format!(
            "/v2/group/app/manifests/{manifest_digest}?ns=registry.test"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, endpoint.fake.manifest);
}

#[tokio::test]
async fn head_answers_with_headers_and_no_body() {
    let endpoint = Endpoint::start().await;
    let response = endpoint
        .send(endpoint.request(Method::HEAD, "/v2/group/app/manifests/v1?ns=registry.test"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-length"),
        Some(endpoint.fake.manifest.len().to_string().as_str())
    );
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(sha256(&endpoint.fake.manifest).as_str())
    );
    assert!(body_of(response).await.is_empty());
    assert_eq!(endpoint.fake.last_seen().0.method, Method::HEAD);
}

#[tokio::test]
async fn a_range_is_forwarded_and_206_passes_through_with_content_range() {
    let endpoint = Endpoint::start().await;
    let digest = sha256(&endpoint.fake.blob);
    let request = endpoint
        .request(
            Method::GET,
            &format!("/v2/group/app/blobs/{digest}?ns=registry.test"),
        )
        .header("range", "bytes=1000-1999");
    let response = endpoint.send(request).await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let total = endpoint.fake.blob.len();
    assert_eq!(
        header(&response, "content-range"),
        Some(format!("bytes 1000-1999/{total}").as_str())
    );
    assert_eq!(header(&response, "content-length"), Some("1000"));
    assert_eq!(
        body_of(response).await,
        endpoint.fake.blob.slice(1000..2000)
    );
    assert_eq!(
        endpoint.fake.last_seen().0.headers()["range"],
        "bytes=1000-1999"
    );
}

#[tokio::test]
async fn bodies_stream_instead_of_being_buffered() {
    let endpoint = Endpoint::start().await;
    // `verify_digests = "always"`: this containerd request is hashed too.
    endpoint
        .state
        .set_digest_verification(DigestVerification::Always);
    let digest = sha256(&endpoint.fake.blob);
    let response = endpoint
        .get(&format!("/v2/group/stream/blobs/{digest}?ns=registry.test"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let sender = endpoint.fake.gate.lock().unwrap().take().unwrap();
    let half = endpoint.fake.blob.len() / 2;
    // A verified body holds back its latest chunk, so the first half reaches the client as
    // soon as the next upstream chunk arrives, long before the upstream body ends.
    sender
        .send(Ok(endpoint.fake.blob.slice(half..half + 1000)))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut first = Vec::new();
    while first.len() < half {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first half arrived while upstream was still sending")
            .unwrap()
            .unwrap();
        first.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(
        first.len(),
        half,
        "the held-back chunk was sent before its successor"
    );
    assert_eq!(first, endpoint.fake.blob.slice(..half));
    sender
        .send(Ok(endpoint.fake.blob.slice(half + 1000..)))
        .await
        .unwrap();
    drop(sender);
    let rest = body.collect().await.unwrap().to_bytes();
    first.extend_from_slice(&rest);
    assert_eq!(first, endpoint.fake.blob);
}

#[tokio::test]
async fn upstream_statuses_pass_through_but_a_final_401_becomes_403() {
    let endpoint = Endpoint::start().await;
    let response = endpoint
        .get("/v2/group/private/manifests/v1?ns=registry.test")
        .await;
    // Never a 401: containerd would answer it with its own credentials.
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get("www-authenticate").is_none());
    let response = endpoint
        .get("/v2/group/missing/manifests/v1?ns=registry.test")
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn api_version_check_is_answered_locally() {
    let endpoint = Endpoint::start().await;
    let before = endpoint.fake.seen.lock().unwrap().len();
    for method in [Method::GET, Method::HEAD] {
        let response = endpoint
            .send(endpoint.request(method.clone(), "/v2/?ns=registry.test"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        let body = body_of(response).await;
        if method == Method::GET {
            assert_eq!(body, "{}");
        }
    }
    assert_eq!(endpoint.fake.seen.lock().unwrap().len(), before);
}

// ---------------------------------------------------------------- the access boundary

#[tokio::test]
async fn a_missing_or_wrong_secret_is_403() {
    let endpoint = Endpoint::start().await;
    let path = "/v2/group/app/manifests/v1?ns=registry.test";
    let missing = Request::get(path)
        .header("host", "localhost")
        .header("accept", ACCEPT);
    let response = endpoint.send(missing).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(response).await, "DENIED");

    let mut wrong_secret = SECRET.to_string();
    wrong_secret.replace_range(63.., "1");
    for wrong in [wrong_secret.as_str(), &SECRET[..63], "", "x"] {
        let request = Request::get(path)
            .header("host", "localhost")
            .header("x-credgate-secret", wrong);
        let response = endpoint.send(request).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{wrong:?}");
        let body = body_of(response).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(SECRET) && (wrong.is_empty() || !text.contains(wrong)),
            "{text}"
        );
    }
    // Twice is not once.
    let twice = endpoint
        .request(Method::GET, path)
        .header("x-credgate-secret", SECRET);
    assert_eq!(endpoint.send(twice).await.status(), StatusCode::FORBIDDEN);
    // The secret guards every path, even unknown ones.
    let unknown = Request::get("/v2/_catalog").header("host", "localhost");
    assert_eq!(endpoint.send(unknown).await.status(), StatusCode::FORBIDDEN);
    assert!(
        endpoint.fake.seen.lock().unwrap().is_empty(),
        "refused requests went upstream"
    );
}

#[tokio::test]
async fn a_reloaded_secret_applies_to_the_next_request() {
    let endpoint = Endpoint::start().await;
    endpoint
        .state
        .replace_secret(MirrorSecret::new("rotated-secret"));
    let path = "/v2/group/app/manifests/v1?ns=registry.test";
    assert_eq!(endpoint.get(path).await.status(), StatusCode::FORBIDDEN);
    let request = Request::get(path)
        .header("host", "localhost")
        .header("x-credgate-secret", "rotated-secret");
    assert_eq!(endpoint.send(request).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_goes_upstream() {
    let endpoint = Endpoint::start().await;
    let cases = [
        ("/v2/group/app/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/group/app/manifests/v1?other=1", 400, "NAME_INVALID"),
        (
            "/v2/group/app/manifests/v1?ns=https%3A%2F%2Fregistry.test%2F",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/group/../app/manifests/v1?ns=registry.test",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/group%2Fapp/manifests/v1?ns=registry.test",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/group%2fapp/manifests/v1?ns=registry.test",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/group/%61pp/manifests/v1?ns=registry.test",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/Group/app/manifests/v1?ns=registry.test",
            400,
            "NAME_INVALID",
        ),
        (
            "/v2/group/app/manifests/.v1?ns=registry.test",
            400,
            "TAG_INVALID",
        ),
        (
            "/v2/group/app/blobs/latest?ns=registry.test",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/group/app/blobs/sha256:1234?ns=registry.test",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/group/app/tags/list?ns=registry.test",
            404,
            "UNSUPPORTED",
        ),
        ("/v2/_catalog", 404, "UNSUPPORTED"),
        ("/v1/search", 404, "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let response = endpoint.get(path).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(error_code(response).await, code, "{path}");
    }
    assert!(
        endpoint.fake.seen.lock().unwrap().is_empty(),
        "a bad request went upstream"
    );
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let endpoint = Endpoint::start().await;
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = endpoint
            .send(endpoint.request(
                method.clone(),
                "/v2/group/app/manifests/v1?ns=registry.test",
            ))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(header(&response, "allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn oversize_request_heads_are_431() {
    let endpoint = Endpoint::start().await;
    let path = "/v2/group/app/manifests/v1?ns=registry.test";
    let mut many = endpoint.request(Method::GET, path);
    for i in 0..80 {
        many = many.header(format!("x-extra-{i}"), "1");
    }
    assert_eq!(
        endpoint.send(many).await.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let big = endpoint
        .request(Method::GET, path)
        .header("x-big", "a".repeat(20 * 1024));
    assert_eq!(
        endpoint.send(big).await.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test]
async fn upstream_failures_map_to_statuses() {
    let endpoint = Endpoint::start().await;
    for (ns, status) in [
        ("forbidden.test", StatusCode::FORBIDDEN),
        ("realm.test", StatusCode::FORBIDDEN),
        ("down.test", StatusCode::BAD_GATEWAY),
        ("slow.test", StatusCode::GATEWAY_TIMEOUT),
    ] {
        let response = endpoint
            .get(&format!("/v2/group/app/manifests/v1?ns={ns}"))
            .await;
        assert_eq!(response.status(), status, "{ns}");
        let body = body_of(response).await;
        assert!(String::from_utf8_lossy(&body).contains(ns), "{ns}");
    }
}

#[tokio::test]
async fn the_keychain_is_taken_live_from_the_daemon() {
    let endpoint = Endpoint::start().await;
    let path = "/v2/group/app/manifests/v1?ns=registry.test";
    endpoint.get(path).await;
    assert_eq!(endpoint.fake.last_seen().1, 0);
    let config = Config::parse(
        "[[registry]]\nmatch = \"registry.test\"\nusername = \"u\"\npassword = \"p\"\n",
        std::path::Path::new("/test/config.toml"),
    )
    .unwrap();
    let keychain = Keychain::from_config(&config, &System::real(Vec::new()));
    endpoint.daemon.reload(keychain, vec![0]);
    endpoint.get(path).await;
    assert_eq!(endpoint.fake.last_seen().1, 1);
}

// ---------------------------------------------------------------- integrity

#[tokio::test]
async fn an_upstream_reset_mid_blob_breaks_the_clients_transfer() {
    let endpoint = Endpoint::start().await;
    let digest = sha256(&endpoint.fake.blob);
    for repository in ["group/reset", "group/reset-chunked"] {
        let response = endpoint
            .get(&format!("/v2/{repository}/blobs/{digest}?ns=registry.test"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let outcome = read_to_end(response).await;
        assert!(
            outcome.is_err(),
            "{repository}: a complete 200 of {outcome:?} bytes"
        );
    }
}

#[tokio::test]
async fn a_digest_mismatch_breaks_the_clients_transfer() {
    let endpoint = Endpoint::start().await;
    // `verify_digests = "always"`: this containerd request is hashed too.
    endpoint
        .state
        .set_digest_verification(DigestVerification::Always);
    let digest = sha256(&endpoint.fake.blob);
    let response = endpoint
        .get(&format!(
            "/v2/group/corrupt/blobs/{digest}?ns=registry.test"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-length"),
        Some(endpoint.fake.blob.len().to_string().as_str())
    );
    let outcome = read_to_end(response).await;
    assert!(
        outcome.is_err(),
        "a complete 200 of {outcome:?} corrupt bytes"
    );

    let response = endpoint
        .get(&format!(
            "/v2/group/corrupt/manifests/{digest}?ns=registry.test"
        ))
        .await;
    assert!(
        read_to_end(response).await.is_err(),
        "a corrupt manifest by digest"
    );
}

#[tokio::test]
async fn a_short_body_breaks_the_clients_transfer() {
    let endpoint = Endpoint::start().await;
    let response = endpoint
        .get("/v2/group/short/manifests/v1?ns=registry.test")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(read_to_end(response).await.is_err());
}

/// `verify_digests = "unless-containerd"`: containerd's blobs are not hashed (containerd checks
/// them before commit; `node_containerd` shows a corrupt one is never committed), anyone
/// else's still are, and for everyone a short or reset body still breaks the transfer.
#[tokio::test]
async fn leaving_digests_to_containerd_still_breaks_short_and_reset_bodies() {
    let endpoint = Endpoint::start().await;
    endpoint
        .state
        .set_digest_verification(DigestVerification::UnlessContainerd);
    let digest = sha256(&endpoint.fake.blob);
    for repository in ["group/reset", "group/reset-chunked"] {
        let response = endpoint
            .get(&format!("/v2/{repository}/blobs/{digest}?ns=registry.test"))
            .await;
        let outcome = read_to_end(response).await;
        assert!(
            outcome.is_err(),
            "{repository}: a complete 200 of {outcome:?} bytes"
        );
    }
    let response = endpoint
        .get("/v2/group/short/manifests/v1?ns=registry.test")
        .await;
    assert!(read_to_end(response).await.is_err(), "a short body");

    let corrupt = format!("/v2/group/corrupt/blobs/{digest}?ns=registry.test");
    let to_containerd = read_to_end(endpoint.get(&corrupt).await).await;
    assert_eq!(
        to_containerd.ok(),
        Some(endpoint.fake.blob.len()),
        "containerd's blob is passed whole, for containerd to check"
    );
    let other = Request::builder()
        .method(Method::GET)
        .uri(&corrupt)
        .header("host", endpoint.server.local_addr().to_string())
        .header("user-agent", "skopeo/1.9")
        .header("x-credgate-secret", SECRET);
    let to_other = read_to_end(endpoint.send(other).await).await;
    assert!(
        to_other.is_err(),
        "a corrupt blob reached another client whole"
    );
}

#[tokio::test]
async fn a_partial_answer_is_not_verified() {
    let endpoint = Endpoint::start().await;
    let digest = sha256(&endpoint.fake.blob);
    let request = endpoint
        .request(
            Method::GET,
            &format!("/v2/group/app/blobs/{digest}?ns=registry.test"),
        )
        .header("range", "bytes=0-99");
    let response = endpoint.send(request).await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(read_to_end(response).await.unwrap(), 100);
}

#[tokio::test]
async fn an_upstream_206_to_a_request_without_range_is_refused_not_streamed_unchecked() {
    let endpoint = Endpoint::start().await;
    let digest = sha256(&endpoint.fake.blob);
    let path = format!("/v2/group/whole-206/blobs/{digest}?ns=registry.test");
    let response = endpoint.get(&path).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = String::from_utf8(body_of(response).await.to_vec()).unwrap();
    assert!(
        body.contains("206 (partial content) to a request without Range"),
        "{body}"
    );
    let response = endpoint.send(endpoint.request(Method::HEAD, &path)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn an_upstream_203_with_wrong_bytes_breaks_the_clients_transfer() {
    let endpoint = Endpoint::start().await;
    // `verify_digests = "always"`: this containerd request is hashed too.
    endpoint
        .state
        .set_digest_verification(DigestVerification::Always);
    let digest = sha256(&endpoint.fake.blob);
    let response = endpoint
        .get(&format!(
            "/v2/group/lie-203/blobs/{digest}?ns=registry.test"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
    let outcome = read_to_end(response).await;
    assert!(
        outcome.is_err(),
        "a complete 203 of {outcome:?} corrupt bytes"
    );
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_aborts_the_clients_transfer() {
    let endpoint = Endpoint::start_with(Patience {
        body_idle: Duration::from_millis(300),
        ..Patience::default()
    })
    .await;
    let digest = sha256(&endpoint.fake.blob);
    let response = endpoint
        .get(&format!("/v2/group/stream/blobs/{digest}?ns=registry.test"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // The gate's sender stays with the fake: the upstream never sends the rest nor ends. No
    // timing is asserted (tests stay free of timing): cut off with an error, not left hanging.
    let outcome = tokio::time::timeout(Duration::from_secs(10), read_to_end(response))
        .await
        .expect("the stalled transfer was cut off, not left hanging");
    assert!(outcome.is_err(), "a complete 200 of {outcome:?} bytes");
}

// ---------------------------------------------------------------- throttling (429)

fn quick_throttle() -> Patience {
    Patience {
        throttle_default_wait: Duration::from_millis(50),
        ..Patience::default()
    }
}

#[tokio::test]
async fn a_429_is_waited_out_and_retried_inside_the_gate() {
    let endpoint = Endpoint::start_with(quick_throttle()).await;
    endpoint
        .fake
        .throttle
        .lock()
        .unwrap()
        .extend([Some("1"), Some("garbage")]);
    let started = Instant::now();
    let response = endpoint
        .get("/v2/group/throttled/manifests/v1?ns=registry.test")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, endpoint.fake.manifest);
    assert_eq!(endpoint.fake.asked(), 3);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1050), "{waited:?}");
}

#[tokio::test]
async fn a_429_that_persists_is_passed_on_with_its_retry_after_after_two_retries() {
    let endpoint = Endpoint::start_with(quick_throttle()).await;
    endpoint
        .fake
        .throttle
        .lock()
        .unwrap()
        .extend([Some("0"), None, Some("-3"), Some("0")]);
    let response = endpoint
        .get("/v2/group/throttled/manifests/v1?ns=registry.test")
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), Some("-3"));
    assert_eq!(error_code(response).await, "TOOMANYREQUESTS");
    assert_eq!(endpoint.fake.asked(), 3);
}

#[tokio::test]
async fn a_hostile_retry_after_never_holds_the_request() {
    for hostile in [
        "99999999999999999999999999999",
        "3600",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        let endpoint = Endpoint::start().await;
        endpoint
            .fake
            .throttle
            .lock()
            .unwrap()
            .push_back(Some(hostile));
        let started = Instant::now();
        let response = endpoint
            .get("/v2/group/throttled/manifests/v1?ns=registry.test")
            .await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{hostile}"
        );
        assert_eq!(header(&response, "retry-after"), Some(hostile));
        assert!(started.elapsed() < Duration::from_secs(2), "{hostile}");
        assert_eq!(endpoint.fake.asked(), 1, "{hostile}");
    }
}

// ---------------------------------------------------------------- the real upstream over TLS

/// An HTTPS registry on a 127.0.0.1 port with a certificate from `ca` for `127.0.0.1` and
/// `localhost`; records the path of every request it answers.
struct TlsRegistry {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsRegistry {
    async fn start<F>(ca: &TestCa, answer: F) -> TlsRegistry
    where
        F: Fn(&str) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        let listener = loopback().await;
        let addr = listener.local_addr().unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config(&ca.issue(&["127.0.0.1", "localhost"])));
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let answer = Arc::new(answer);
        let recorded = paths.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, answer, recorded) =
                    (acceptor.clone(), answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let path = request.uri().path().to_string();
                        recorded.lock().unwrap().push(path.clone());
                        let response = answer(&path);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsRegistry { addr, paths, task }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn host(&self) -> RegistryHost {
        RegistryHost::parse(&self.addr.to_string()).unwrap()
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response
}

fn redirect_to(location: &str) -> Response<Full<Bytes>> {
    let mut response = answer(StatusCode::TEMPORARY_REDIRECT, b"");
    response
        .headers_mut()
        .insert("location", location.parse().unwrap());
    response
}

/// The endpoint in front of the real `Upstream`, whose policy trusts `ca` for `registry` and
/// lets every host in `private` resolve to loopback (as `[[registry]]` entries do).
async fn real_endpoint(
    dir: &tempfile::TempDir,
    ca: &TestCa,
    registry: &TlsRegistry,
    private: &[RegistryHost],
) -> Endpoint {
    let mut policy =
        UpstreamPolicy::default().with_ca_file(registry.host(), ca.write_pem(dir.path()));
    for host in private {
        policy = policy.allow_private(host.clone());
    }
    let upstream = Upstream::new(policy, Arc::new(Metrics::new())).expect("upstream");
    Endpoint::start_before(
        Arc::new(FakeRegistry::new()),
        Arc::new(upstream),
        quick_throttle(),
    )
    .await
}

const BLOB: &[u8] = b"layer bytes";

fn blob_path(registry: &TlsRegistry) -> String {
    format!(
        "/v2/group/app/blobs/{}?ns=127.0.0.1%3A{}",
        sha256(BLOB),
        registry.port()
    )
}

#[tokio::test]
async fn a_redirect_to_another_operator_allowed_private_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let internal = TlsRegistry::start(&ca, |_| answer(StatusCode::OK, b"internal secrets")).await;
    let internal_port = internal.port();
    let target = Arc::new(Mutex::new(String::new()));
    let location = target.clone();
    let registry = TlsRegistry::start(&ca, move |_| redirect_to(&location.lock().unwrap())).await;
    // Both are allowed to be private, as exact [[registry]] hosts are.
    let endpoint = real_endpoint(&dir, &ca, &registry, &[registry.host(), internal.host()]).await;
    for to in [
        // Another allowed host (same address, another port).
        format!("https://127.0.0.1:{internal_port}/admin/keys?x=1"),
        // The registry's own port under another name.
        format!("https://localhost:{}/v2/", registry.port()),
    ] {
        *target.lock().unwrap() = to.clone();
        // By tag: no digest would have caught the internal answer.
        let path = format!(
            "/v2/group/app/manifests/v1?ns=127.0.0.1%3A{}",
            registry.port()
        );
        let response = endpoint.get(&path).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{to}");
        let body = String::from_utf8(body_of(response).await.to_vec()).unwrap();
        assert!(body.contains("public addresses only"), "{to}: {body}");
    }
    assert!(internal.paths().is_empty(), "{:?}", internal.paths());
}

#[tokio::test]
async fn a_redirect_on_the_registrys_own_host_and_port_may_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let registry = TlsRegistry::start(&ca, |path| match path {
        "/storage/layer" => answer(StatusCode::OK, BLOB),
        _ => redirect_to("/storage/layer"),
    })
    .await;
    let endpoint = real_endpoint(&dir, &ca, &registry, &[registry.host()]).await;
    let response = endpoint.get(&blob_path(&registry)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, BLOB);
    assert_eq!(registry.paths().len(), 2, "{:?}", registry.paths());
}

#[tokio::test]
async fn a_registry_answering_429_then_200_is_served_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let registry = TlsRegistry::start(&ca, move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut response = answer(StatusCode::TOO_MANY_REQUESTS, b"{}");
            response
                .headers_mut()
                .insert("retry-after", "1".parse().unwrap());
            response
        } else {
            answer(StatusCode::OK, BLOB)
        }
    })
    .await;
    let endpoint = real_endpoint(&dir, &ca, &registry, &[registry.host()]).await;
    let started = Instant::now();
    let response = endpoint.get(&blob_path(&registry)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, BLOB);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_secs(1));
}

// ---------------------------------------------------------------- metrics

#[tokio::test]
async fn metrics_count_requests_and_bytes_by_registry() {
    let endpoint = Endpoint::start().await;
    let digest = sha256(&endpoint.fake.blob);
    let response = endpoint
        .get(&format!("/v2/group/app/blobs/{digest}?ns=registry.test"))
        .await;
    body_of(response).await;
    let response = endpoint
        .get("/v2/group/missing/manifests/v1?ns=registry.test%3A5000")
        .await;
    body_of(response).await;
    let no_secret = Request::get("/v2/group/app/manifests/v1?ns=evil.test").header("host", "x");
    endpoint.send(no_secret).await;

    let (status, headers, text) = endpoint.metrics_page("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let blob_len = endpoint.fake.blob.len();
    for line in [
        r#"credgate_endpoint_requests_total{registry="registry.test",status="200"} 1"#.to_string(),
        r#"credgate_endpoint_requests_total{registry="registry.test:5000",status="404"} 1"#
            .to_string(),
        r#"credgate_endpoint_requests_total{registry="-",status="403"} 1"#.to_string(),
        format!(r#"credgate_bytes_streamed_total{{registry="registry.test"}} {blob_len}"#),
    ] {
        assert!(text.contains(&line), "no {line} in:\n{text}");
    }
    assert!(!text.contains("evil.test"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    let (status, _, text) = endpoint.metrics_page("/healthz").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _, _) = endpoint.metrics_page("/other").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let endpoint = Endpoint::start().await;
    let addr = endpoint.server.local_addr();
    endpoint.server.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------- `credgate serve`

/// `credgate serve` with ephemeral loopback listeners and its secret file in a temp dir.
struct Serve {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Serve {
    fn start(listen: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[listen]\nsocket = \"{}\"\nmirror_secret_file = \"{}\"\n{listen}",
            dir.path().join("credgate.sock").display(),
            dir.path().join("secret/mirror-secret").display()
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let child = std::process::Command::new(credgate_integration::credgate_binary())
            .args(["serve", "--config"])
            .arg(dir.path().join("config.toml"))
            .env_remove("CREDGATE_CONFIG")
            .env("CREDGATE_LOG", "debug")
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        Serve { dir, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle:?} in:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address a listener reported at start (`<what> listening address=...`).
    async fn address(&self, what: &str) -> std::net::SocketAddr {
        let needle = format!("{what} listening address=");
        let log = self.wait_for_log(&needle).await;
        let rest = &log[log.find(&needle).unwrap() + needle.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn secret(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("secret/mirror-secret")).unwrap();
        text.trim_end().to_string()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PRIVATE_LISTENERS: &str = "mirror = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n";

async fn probe(addr: std::net::SocketAddr, secret: Option<&str>) -> StatusCode {
    let mut request = Request::get("/v2/").header("host", addr.to_string());
    if let Some(secret) = secret {
        request = request.header("x-credgate-secret", secret);
    }
    send_to(addr, request).await.status()
}

#[tokio::test]
async fn serve_generates_its_secret_opens_both_listeners_and_stops_on_sigterm() {
    let mut serve = Serve::start(PRIVATE_LISTENERS);
    let mirror = serve.address("pull-through endpoint").await;
    let metrics = serve.address("metrics").await;
    assert!(mirror.ip().is_loopback() && metrics.ip().is_loopback());
    serve.wait_for_log("credgate is up").await;

    use std::os::unix::fs::PermissionsExt;
    let secret_path = serve.dir.path().join("secret/mirror-secret");
    let mode = std::fs::metadata(&secret_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let secret = serve.secret();
    assert_eq!(secret.len(), 64);
    assert!(serve.log().contains("generated a new mirror secret"));

    assert_eq!(probe(mirror, Some(&secret)).await, StatusCode::OK);
    assert_eq!(probe(mirror, None).await, StatusCode::FORBIDDEN);
    let response = send_to(metrics, Request::get("/healthz").header("host", "x")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = send_to(metrics, Request::get("/metrics").header("host", "x")).await;
    let text = String::from_utf8(body_of(response).await.to_vec()).unwrap();
    assert!(
        text.contains(r#"credgate_endpoint_requests_total{registry="-",status="200"} 1"#),
        "{text}"
    );

    serve.signal("TERM");
    let status = serve.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = serve.wait_for_log("credgate stopped").await;
    assert!(!log.contains(&secret), "the secret was logged:\n{log}");
    assert!(TcpStream::connect(mirror).await.is_err());
}

#[tokio::test]
async fn serve_rereads_the_secret_on_sighup() {
    let serve = Serve::start(PRIVATE_LISTENERS);
    let mirror = serve.address("pull-through endpoint").await;
    serve.wait_for_log("credgate is up").await;
    let old = serve.secret();
    std::fs::write(
        serve.dir.path().join("secret/mirror-secret"),
        "rotated-mirror-secret\n",
    )
    .unwrap();
    serve.signal("HUP");
    serve.wait_for_log("config reloaded").await;
    assert_eq!(
        probe(mirror, Some("rotated-mirror-secret")).await,
        StatusCode::OK
    );
    assert_eq!(probe(mirror, Some(&old)).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn serve_refuses_listeners_off_loopback() {
    for listen in [
        "mirror = \"0.0.0.0:0\"\nmetrics = \"127.0.0.1:0\"\n",
        "mirror = \"127.0.0.1:0\"\nmetrics = \"0.0.0.0:0\"\n",
    ] {
        let mut serve = Serve::start(listen);
        let status = serve.child.wait().unwrap();
        assert_eq!(status.code(), Some(1), "{listen}");
        let log = serve.log();
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("credgate: listen.m") && last.contains("is not a loopback address"),
            "{log}"
        );
        assert!(
            !serve.dir.path().join("credgate.sock").exists(),
            "the socket was left behind"
        );
    }
}
