//! The metrics listener on `listen.metrics` (loopback, no secret: it shows registry names and
//! counts, never credentials): `GET /metrics` in the OpenMetrics text format, `GET /healthz`.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::full_body;
use super::server::{self, HttpServer, Limits};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::upstream::UpstreamBody;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Serves `/metrics` and `/healthz` on `listener` until [`HttpServer::shutdown`], with
/// [`Limits::METRICS`]: nobody shows a secret here, so at the cap the oldest connection is
/// closed for the newcomer.
pub fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> HttpServer {
    serve_metrics_with(listener, metrics, Limits::METRICS)
}

/// [`serve_metrics`] with other limits (tests use small ones).
pub fn serve_metrics_with(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> HttpServer {
    serve_metrics_reporting(listener, metrics, Arc::new(Health::plain()), limits)
}

/// [`serve_metrics`] whose `/healthz` also reports what `health` knows of the node.
pub fn serve_metrics_reporting(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: Limits,
) -> HttpServer {
    server::spawn(listener, "metrics", limits, move |request| {
        let response = page(&metrics, &health, &request);
        async move { response }
    })
}

fn page(metrics: &Metrics, health: &Health, request: &Request<Incoming>) -> Response<UpstreamBody> {
    let found = match request.uri().path() {
        "/metrics" => Some((OPENMETRICS, metrics.render())),
        "/healthz" => Some((TEXT, health.page())),
        _ => None,
    };
    let method_ok = matches!(*request.method(), Method::GET | Method::HEAD);
    match (found, method_ok) {
        (Some((content_type, body)), true) => text(StatusCode::OK, content_type, body),
        (Some(_), false) => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET or HEAD\n".into());
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        (None, _) => text(StatusCode::NOT_FOUND, TEXT, "/metrics or /healthz\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<UpstreamBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
