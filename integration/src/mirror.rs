//! Requests to credgate's pull-through endpoint exactly as containerd sends them: plain
//! HTTP to the loopback listener, `GET|HEAD /v2/<name>/{manifests|blobs}/<ref>?ns=<registry>`
//! with `Accept` and the `X-Credgate-Secret` header from hosts.toml.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// What containerd's resolver asks for when it fetches a manifest.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct MirrorResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The whole body, or why reading it broke off (a reset or an aborted stream).
    pub body: Result<Bytes, String>,
}

impl MirrorResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bytes(&self) -> &Bytes {
        self.body
            .as_ref()
            .unwrap_or_else(|e| panic!("body broke off: {e}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("JSON body")
    }
}

/// One request: `method path?ns=registry` with `headers`; the secret is sent when given.
pub fn send(
    mirror: SocketAddr,
    method: &str,
    path_and_query: &str,
    secret: Option<&str>,
    headers: &[(&str, &str)],
) -> MirrorResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(
            TIMEOUT,
            exchange(mirror, method, path_and_query, secret, headers),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path_and_query}: no answer in {TIMEOUT:?}"))
    })
}

/// `GET` with containerd's manifest `Accept` and the right secret.
pub fn get(mirror: SocketAddr, secret: &str, path_and_query: &str) -> MirrorResponse {
    send(
        mirror,
        "GET",
        path_and_query,
        Some(secret),
        &[("accept", MANIFEST_ACCEPT)],
    )
}

async fn exchange(
    mirror: SocketAddr,
    method: &str,
    path_and_query: &str,
    secret: Option<&str>,
    headers: &[(&str, &str)],
) -> MirrorResponse {
    let stream = tokio::net::TcpStream::connect(mirror)
        .await
        .unwrap_or_else(|e| panic!("connect {mirror}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", mirror.to_string())
        .header("user-agent", "containerd/test");
    if let Some(secret) = secret {
        request = request.header("x-credgate-secret", secret);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).expect("request");
    // A connection closed before any head (credgate aborts a transfer it found corrupt before
    // the head left) is status 0 with the error as the body: never a complete answer.
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => {
            return MirrorResponse {
                status: 0,
                headers: http::HeaderMap::new(),
                body: Err(format!("no response head: {e}")),
            }
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    MirrorResponse {
        status,
        headers,
        body,
    }
}
