//! The endpoint's resource bounds, attacked over real loopback TCP: label values chosen by
//! callers, idle connections held without the secret, kept-alive connections left idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::error::full_body;
use super::*;
use crate::identity::Scope;
use crate::keychain::Keychain;
use crate::upstream::{UpstreamError, UpstreamRequest};

const SECRET: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
/// Long enough that only the connection cap, never a timeout, can explain what a test sees.
const PATIENT: Duration = Duration::from_secs(60);
/// How long a test waits for something that must happen; a bound, not a measurement.
const DEADLINE: Duration = Duration::from_secs(20);

/// `registry.test` answers (its tag `slow` only after [`PATIENT`], its tag `endless` with a
/// body that never ends); `refused-*` is outside the upstream boundary; anything else is an
/// allowed host that can't be reached.
#[derive(Default)]
struct FakeUpstream {
    /// Requests for `slow` that reached the upstream (their connections are answering).
    slow_started: Arc<std::sync::atomic::AtomicUsize>,
}

/// A response body that never yields a frame: a transfer that is still going.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[async_trait]
impl SendUpstream for FakeUpstream {
    async fn send(
        &self,
        _keychain: &Keychain,
        request: UpstreamRequest,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let host = request.registry.to_string();
        if host == "registry.test" && request.path.ends_with("/manifests/slow") {
            self.slow_started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(PATIENT).await;
        }
        if host == "registry.test" && request.path.ends_with("/manifests/endless") {
            return Ok(Response::new(UpstreamBody::new(Endless)));
        }
        if host == "registry.test" {
            let mut response = Response::new(full_body(Bytes::from_static(b"{}")));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        if host.starts_with("refused-") {
            return Err(UpstreamError::NotAllowed {
                host,
                reason: "resolves to a private address".into(),
            });
        }
        Err(UpstreamError::Unreachable {
            host,
            reason: "no such host".into(),
        })
    }
}

struct Endpoint {
    server: HttpServer,
    metrics: Arc<Metrics>,
    slow_started: Arc<std::sync::atomic::AtomicUsize>,
}

impl Endpoint {
    async fn start(limits: Limits) -> Endpoint {
        let daemon = Arc::new(Daemon::new(Keychain::new(Vec::new()), vec![0]));
        let metrics = Arc::new(Metrics::new());
        metrics.label_registries([Scope::parse("registry.test").unwrap()]);
        let upstream = Arc::new(FakeUpstream::default());
        let slow_started = upstream.slow_started.clone();
        let state = Arc::new(EndpointState::new(
            daemon,
            upstream,
            MirrorSecret::new(SECRET),
            metrics.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = serve_endpoint_with(listener, state, limits);
        metrics.watch(
            crate::metrics::Size::EndpointConnections,
            server.open_connections(),
        );
        Endpoint {
            server,
            metrics,
            slow_started,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn open(&self) -> usize {
        (self.server.open_connections())()
    }

    /// Waits until `count` requests for `slow` reached the upstream.
    async fn slow_requests_arrived(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.slow_started.load(std::sync::atomic::Ordering::SeqCst) < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "slow requests never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn limits(max_connections: usize, head_timeout: Duration) -> Limits {
    Limits {
        max_connections,
        head_timeout,
    }
}

fn head(path_and_query: &str, secret: Option<&str>) -> String {
    let secret = secret
        .map(|s| format!("{SECRET_HEADER}: {s}\r\n"))
        .unwrap_or_default();
    format!("GET {path_and_query} HTTP/1.1\r\nhost: localhost\r\n{secret}\r\n")
}

/// Reads one response whose body is `Content-Length` long; returns the head and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                let body =
                    String::from_utf8_lossy(&received[end + 4..end + 4 + length]).to_string();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// True once the server has closed `stream` (EOF or reset), within [`DEADLINE`].
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether the server has closed `stream` already, without waiting.
async fn already_closed(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    matches!(
        tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn get(addr: SocketAddr, path_and_query: &str, secret: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(head(path_and_query, secret).as_bytes())
        .await
        .unwrap();
    read_response(&mut stream).await
}

/// Lines that carry a value (series), not `# HELP`/`# TYPE`/`# EOF`.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

/// `GET /v2/` with the secret on `stream`, answered 200 (the connection is kept alive).
async fn ask_with_the_secret(stream: &mut TcpStream) {
    stream
        .write_all(head("/v2/", Some(SECRET)).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn two_thousand_distinct_ns_leave_the_metrics_series_count_unchanged() {
    let endpoint = Endpoint::start(Limits::ENDPOINT).await;
    let manifest = |ns: &str| format!("/v2/group/app/manifests/v1?ns={ns}");
    // One of each kind first, so every series that can exist does.
    let warm = [
        (manifest("registry.test"), Some(SECRET), "200"),
        (manifest("refused-0.test"), Some(SECRET), "403"),
        (manifest("unknown-0.test"), Some(SECRET), "502"),
        (manifest("bad%20host"), Some(SECRET), "400"),
        (manifest("unknown-0.test"), None, "403"),
    ];
    for (path, secret, status) in &warm {
        let (head, _) = get(endpoint.addr(), path, *secret).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {head}"
        );
    }
    let before = endpoint.metrics.render();

    let mut stream = TcpStream::connect(endpoint.addr()).await.unwrap();
    for i in 1..=2_000 {
        let ns = match i % 3 {
            0 => format!("refused-{i}.test"),
            1 => format!("unknown-{i}.test"),
            _ => format!("bad%20host-{i}"),
        };
        stream
            .write_all(head(&manifest(&ns), Some(SECRET)).as_bytes())
            .await
            .unwrap();
        read_response(&mut stream).await;
    }
    for i in 1..=200 {
        get(
            endpoint.addr(),
            &manifest(&format!("stranger-{i}.test")),
            None,
        )
        .await;
    }

    let after = endpoint.metrics.render();
    assert_eq!(
        series(&after),
        series(&before),
        "before:\n{before}\nafter:\n{after}"
    );
    for name in ["refused-", "unknown-", "bad", "stranger-"] {
        assert!(!after.contains(name), "{name} became a label:\n{after}");
    }
    for line in [
        r#"credgate_endpoint_requests_total{registry="registry.test",status="200"} 1"#,
        r#"credgate_endpoint_requests_total{registry="other",status="502"} 668"#,
        r#"credgate_endpoint_requests_total{registry="-",status="403"} 868"#,
        r#"credgate_endpoint_requests_total{registry="-",status="400"} 668"#,
    ] {
        assert!(after.contains(line), "no {line} in:\n{after}");
    }
}

#[tokio::test]
async fn idle_strangers_beyond_the_cap_never_starve_a_request_with_the_secret() {
    let endpoint = Endpoint::start(limits(8, PATIENT)).await;
    let mut strangers = Vec::new();
    for _ in 0..50 {
        strangers.push(TcpStream::connect(endpoint.addr()).await.unwrap());
    }
    // The secret gets through at once, though every slot was taken by a silent stranger.
    let (head, body) = get(endpoint.addr(), "/v2/", Some(SECRET)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "{}");
    assert!(endpoint.open() <= 8, "{} open", endpoint.open());

    let mut shed = 0;
    for stranger in &mut strangers {
        if already_closed(stranger).await {
            shed += 1;
        }
    }
    assert!(shed >= 50 - 8, "only {shed} of 50 strangers were closed");
    let page = endpoint.metrics.render();
    let open: usize = page
        .lines()
        .find_map(|l| l.strip_prefix("credgate_endpoint_connections "))
        .expect("the gauge is on the page")
        .parse()
        .unwrap();
    assert!(open <= 8, "{page}");
}

/// A connection that showed the secret and now waits for the answer to `tag`'s manifest.
async fn answering(endpoint: &Endpoint, tag: &str) -> TcpStream {
    let mut stream = TcpStream::connect(endpoint.addr()).await.unwrap();
    ask_with_the_secret(&mut stream).await;
    let path = format!("/v2/group/app/manifests/{tag}?ns=registry.test");
    stream
        .write_all(head(&path, Some(SECRET)).as_bytes())
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn strangers_never_take_the_slot_of_a_connection_being_answered() {
    let endpoint = Endpoint::start(limits(4, PATIENT)).await;
    let mut trusted = Vec::new();
    for tag in ["slow", "endless", "slow", "endless"] {
        trusted.push(answering(&endpoint, tag).await);
    }
    // Wait until both slow requests reached the upstream and both endless bodies' heads
    // arrived: then all four are being answered.
    endpoint.slow_requests_arrived(2).await;
    for stream in trusted.iter_mut().skip(1).step_by(2) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(chunk[..n].starts_with(b"HTTP/1.1 200"));
    }
    // Every slot is being answered: newcomers are closed as they come.
    for _ in 0..20 {
        let mut stranger = TcpStream::connect(endpoint.addr()).await.unwrap();
        assert!(closed_by_server(&mut stranger).await);
    }
    assert_eq!(endpoint.open(), 4);
    for stream in &mut trusted {
        assert!(
            !already_closed(stream).await,
            "a connection being answered was closed"
        );
    }
}

/// Clients that open a new connection pool per pull (containerd does) leave kept-alive
/// connections idle faster than the idle timeout closes them: at the cap, the oldest idle
/// one makes room, so a pull is never refused for them.
#[tokio::test]
async fn at_the_cap_idle_kept_alive_connections_make_room_for_new_pulls() {
    let endpoint = Endpoint::start(limits(4, PATIENT)).await;
    let mut busy = answering(&endpoint, "slow").await;
    endpoint.slow_requests_arrived(1).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(endpoint.addr()).await.unwrap();
        ask_with_the_secret(&mut stream).await;
        idle.push(stream);
    }
    for round in 0..50 {
        let mut stream = TcpStream::connect(endpoint.addr()).await.unwrap();
        ask_with_the_secret(&mut stream).await;
        idle.push(stream);
        assert_eq!(endpoint.open(), 4, "round {round}");
    }
    assert!(
        !already_closed(&mut busy).await,
        "the connection being answered was closed"
    );
    // The newest three are the ones kept, and serve their next request.
    let kept = idle.split_off(idle.len() - 3);
    for stream in &mut idle {
        assert!(closed_by_server(stream).await);
    }
    for mut stream in kept {
        ask_with_the_secret(&mut stream).await;
    }
}

#[tokio::test]
async fn a_request_without_the_secret_gets_its_connection_closed() {
    let endpoint = Endpoint::start(limits(8, PATIENT)).await;
    for secret in [None, Some("wrong")] {
        let mut stream = TcpStream::connect(endpoint.addr()).await.unwrap();
        stream
            .write_all(head("/v2/", secret).as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert!(closed_by_server(&mut stream).await, "{secret:?}");
    }
    // With the secret, the connection is kept for the next request.
    let mut stream = TcpStream::connect(endpoint.addr()).await.unwrap();
    for _ in 0..2 {
        ask_with_the_secret(&mut stream).await;
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_head_timeout_kept_alive_or_silent() {
    let endpoint = Endpoint::start(limits(8, Duration::from_millis(300))).await;
    let mut silent = TcpStream::connect(endpoint.addr()).await.unwrap();
    let mut kept_alive = TcpStream::connect(endpoint.addr()).await.unwrap();
    ask_with_the_secret(&mut kept_alive).await;
    assert!(closed_by_server(&mut silent).await);
    assert!(closed_by_server(&mut kept_alive).await);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while endpoint.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(endpoint.open(), 0);
}

#[tokio::test]
async fn the_metrics_listener_keeps_a_few_connections_and_still_answers() {
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve_metrics_with(listener, metrics.clone(), limits(4, PATIENT));
    metrics.watch(
        crate::metrics::Size::MetricsConnections,
        server.open_connections(),
    );
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(server.local_addr()).await.unwrap());
    }
    let (head, body) = get(server.local_addr(), "/metrics", None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let open: usize = body
        .lines()
        .find_map(|l| l.strip_prefix("credgate_metrics_connections "))
        .expect("the gauge is on the page")
        .parse()
        .unwrap();
    assert!((1..=4).contains(&open), "{body}");
    server.shutdown().await;
}

#[test]
fn a_flood_of_wrong_secrets_writes_one_log_line_per_window() {
    let mut log = super::BadSecretLog::default();
    let start = std::time::Instant::now();
    assert_eq!(log.admit(start), Some(0));
    for i in 1..=1000 {
        assert_eq!(log.admit(start + Duration::from_millis(i)), None);
    }
    let later = start + super::BAD_SECRET_LOG_WINDOW;
    assert_eq!(
        log.admit(later),
        Some(1000),
        "the held-back ones are counted"
    );
    assert_eq!(log.admit(later + Duration::from_millis(1)), None);
}
