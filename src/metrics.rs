//! Prometheus metrics of the pull-through endpoint, served as text on `listen.metrics`.
//! Labels carry registries, statuses and source names; never a secret.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabel {
    registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<RegistryLabel, Histogram, fn() -> Histogram>,
    token_fetches: Family<RegistryLabel, Counter>,
    token_cache_hits: Family<RegistryLabel, Counter>,
    bytes_streamed: Family<RegistryLabel, Counter>,
    auth_failures: Family<SourceLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("credgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_latency =
            Family::<RegistryLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let token_fetches = Family::<RegistryLabel, Counter>::default();
        let token_cache_hits = Family::<RegistryLabel, Counter>::default();
        let bytes_streamed = Family::<RegistryLabel, Counter>::default();
        let auth_failures = Family::<SourceLabel, Counter>::default();
        registry.register(
            "endpoint_requests",
            "Requests to the pull-through endpoint, by registry and status",
            requests.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time to the upstream's response headers",
            upstream_latency.clone(),
        );
        registry.register(
            "token_fetches",
            "Tokens fetched from upstream token endpoints",
            token_fetches.clone(),
        );
        registry.register(
            "token_cache_hits",
            "Requests served with a cached token",
            token_cache_hits.clone(),
        );
        registry.register(
            "bytes_streamed",
            "Body bytes streamed to clients",
            bytes_streamed.clone(),
        );
        registry.register(
            "auth_failures",
            "Credentials an upstream rejected, by source",
            auth_failures.clone(),
        );
        Self {
            registry,
            requests,
            upstream_latency,
            token_fetches,
            token_cache_hits,
            bytes_streamed,
            auth_failures,
        }
    }

    pub fn request(&self, registry: &str, status: u16) {
        let labels = RequestLabels {
            registry: registry.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
    }

    pub fn upstream_latency(&self, registry: &str, latency: Duration) {
        self.upstream_latency
            .get_or_create(&label(registry))
            .observe(latency.as_secs_f64());
    }

    pub fn token_fetch(&self, registry: &str) {
        self.token_fetches.get_or_create(&label(registry)).inc();
    }

    pub fn token_cache_hit(&self, registry: &str) {
        self.token_cache_hits.get_or_create(&label(registry)).inc();
    }

    pub fn bytes_streamed(&self, registry: &str, bytes: u64) {
        self.bytes_streamed
            .get_or_create(&label(registry))
            .inc_by(bytes);
    }

    pub fn auth_failure(&self, source: &str) {
        let labels = SourceLabel {
            source: source.to_string(),
        };
        self.auth_failures.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn label(registry: &str) -> RegistryLabel {
    RegistryLabel {
        registry: registry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let m = Metrics::new();
        m.request("registry.test", 200);
        m.token_fetch("registry.test");
        m.bytes_streamed("registry.test", 42);
        m.auth_failure("[[registry]] at /etc/credgate/config.toml:3");
        let text = m.render();
        assert!(
            text.contains(
                r#"credgate_endpoint_requests_total{registry="registry.test",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"credgate_bytes_streamed_total{registry="registry.test"} 42"#),
            "{text}"
        );
        assert!(text.contains("credgate_token_fetches_total"), "{text}");
    }
}
