//! Prometheus metrics of the pull-through endpoint, served as text on `listen.metrics`.
//! Labels carry registries, statuses and source names; never a secret.
//!
//! Decides which label values may exist. Anyone who can name an image chooses `ns`, so a
//! registry keeps its own label only when the keychain knows it (a scope names that host, or
//! a glob scope covers it: the glob is the label); every other registry counts under
//! [`OTHER_REGISTRY`] and requests that named none (or whose `ns` was refused) under
//! [`NO_REGISTRY`]. The number of series therefore follows the config, never the callers.
//! Mirrors (hosts.toml hosts the endpoint fronts) are labelled by their origin,
//! `scheme://host:port` and never the path, but only once the endpoint found them named there,
//! and only the first [`MAX_MIRROR_LABELS`]; later ones count under [`OTHER_MIRROR`] and a
//! mirror nobody named under [`NO_REGISTRY`]. A label value holds only what a
//! `scheme://host:port` can (prometheus-client does not escape label values); anything else
//! counts under [`OTHER_MIRROR`] too. Hand-over reasons are a fixed set
//! ([`Handover`]). Sizes owned elsewhere (caches, running helpers, open connections, tasks)
//! are read on each scrape through [`Metrics::watch`], and so are totals kept elsewhere
//! (helper timeouts) through [`Metrics::watch_total`].
//!
//! Also decides what an operator alerts on (config-examples/alerts.yml): upstream 5xx and
//! pulls refused for want of a credential, by registry label; helper timeouts; upstream
//! requests in flight.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::identity::{RegistryHost, Scope, Target};

/// The label of requests that named no registry (`/v2/`), or whose `ns` was invalid or
/// refused: a caller without the secret, or with a refused `ns`, never creates a label value.
pub const NO_REGISTRY: &str = "-";
/// The one label shared by every registry the keychain does not know.
pub const OTHER_REGISTRY: &str = "other";
/// Most registries with a label of their own; a config naming more (a docker config with
/// thousands of `auths`) counts the rest under [`OTHER_REGISTRY`], so the page stays small.
pub const MAX_REGISTRY_LABELS: usize = 256;

/// Most mirrors with a label of their own.
pub const MAX_MIRROR_LABELS: usize = 32;
/// The label shared by mirrors beyond [`MAX_MIRROR_LABELS`].
pub const OTHER_MIRROR: &str = "other";

/// Why a mirror handed a request over to containerd's next host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Not named in the hosts.toml for that registry (or credgate's own, or not for pulls).
    NotNamed,
    /// The SSRF or token-realm boundary refused it.
    NotAllowed,
    /// No connection, TLS failure, or an answer credgate cannot use (502).
    Unreachable,
    /// No answer in time (504).
    TimedOut,
    /// 401 or 403, after every credential.
    Refused,
    NotFound,
    /// 429 that outlasted credgate's patience.
    Throttled,
    /// 5xx.
    ServerError,
    /// Any other status of 400 or more.
    OtherStatus,
}

impl Handover {
    pub fn as_str(self) -> &'static str {
        match self {
            Handover::NotNamed => "not_named",
            Handover::NotAllowed => "not_allowed",
            Handover::Unreachable => "unreachable",
            Handover::TimedOut => "timeout",
            Handover::Refused => "refused",
            Handover::NotFound => "not_found",
            Handover::Throttled => "throttled",
            Handover::ServerError => "server_error",
            Handover::OtherStatus => "other_status",
        }
    }

    /// The reason for a status the mirror (or credgate for it) answered; `None` below 400,
    /// when nothing is handed over.
    pub fn for_status(status: u16) -> Option<Handover> {
        Some(match status {
            0..=399 => return None,
            401 | 403 => Handover::Refused,
            404 => Handover::NotFound,
            429 => Handover::Throttled,
            500..=599 => Handover::ServerError,
            _ => Handover::OtherStatus,
        })
    }
}

impl fmt::Display for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorRequestLabels {
    mirror: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandoverLabels {
    mirror: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    status: String,
}

/// Statuses that keep their own label; any other (an upstream may answer 100–999) is counted
/// under its class (`1xx` … `9xx`), so an upstream can't create label values either.
const LABELLED_STATUSES: &[u16] = &[
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409,
    410, 413, 416, 429, 431, 500, 501, 502, 503, 504,
];

fn status_label(status: u16) -> String {
    if LABELLED_STATUSES.contains(&status) {
        status.to_string()
    } else {
        format!("{}xx", (status / 100).min(9))
    }
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

/// A size read on every scrape from the part of credgate that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Size {
    /// Upstream tokens cached (bounded by the token cache's cap).
    TokenCache,
    /// Registries whose last auth challenge is remembered.
    Challenges,
    /// Credential helper answers cached.
    HelperCache,
    /// Credential helper processes running now.
    RunningHelpers,
    /// Open connections to the pull-through endpoint.
    EndpointConnections,
    /// Open connections to the metrics listener.
    MetricsConnections,
    /// The daemon's resident memory, from `/proc/self/status`.
    ResidentMemory,
    /// The daemon's open file descriptors, from `/proc/self/fd`.
    OpenFds,
    /// Mirror clients (connection pools) kept.
    MirrorClients,
    /// hosts.toml files kept parsed for mirror lookups.
    HostsFiles,
    /// Tokio tasks alive in the daemon's runtimes (a leak shows as growth at rest).
    Tasks,
}

impl Size {
    fn name(self) -> &'static str {
        match self {
            Size::TokenCache => "token_cache_entries",
            Size::Challenges => "challenge_entries",
            Size::HelperCache => "helper_cache_entries",
            Size::RunningHelpers => "helpers_running",
            Size::EndpointConnections => "endpoint_connections",
            Size::MetricsConnections => "metrics_connections",
            Size::ResidentMemory => "process_resident_memory_bytes",
            Size::OpenFds => "process_open_fds",
            Size::MirrorClients => "mirror_clients",
            Size::HostsFiles => "hosts_files_cached",
            Size::Tasks => "tasks_alive",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Size::TokenCache => "Upstream tokens cached",
            Size::Challenges => "Registries whose last auth challenge is remembered",
            Size::HelperCache => "Credential helper answers cached",
            Size::RunningHelpers => "Credential helper processes running",
            Size::EndpointConnections => "Open connections to the pull-through endpoint",
            Size::MetricsConnections => "Open connections to the metrics listener",
            Size::ResidentMemory => "Resident memory of the credgate process",
            Size::OpenFds => "Open file descriptors of the credgate process",
            Size::MirrorClients => "Mirror clients (connection pools) kept",
            Size::HostsFiles => "hosts.toml files kept parsed for mirror lookups",
            Size::Tasks => "Tokio tasks alive in the daemon's runtimes",
        }
    }
}

/// A total counted where it happens, outside the metrics (read on every scrape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Total {
    /// Credential helper runs killed at the helper timeout (since the keychain in force was
    /// built: a reload starts it anew, which Prometheus reads as a counter reset).
    HelperTimeouts,
}

impl Total {
    fn name(self) -> &'static str {
        match self {
            Total::HelperTimeouts => "helper_timeouts",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Total::HelperTimeouts => "Credential helper runs killed at the helper timeout",
        }
    }
}

type ReadSize = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// The watched totals, encoded as counters on each scrape.
#[derive(Clone, Default)]
struct Totals(Arc<RwLock<BTreeMap<Total, ReadSize>>>);

impl fmt::Debug for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched = self.0.read().expect("totals lock");
        f.debug_list().entries(watched.keys()).finish()
    }
}

impl Collector for Totals {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let watched = self.0.read().expect("totals lock");
        for (total, read) in watched.iter() {
            let Some(value) = read() else { continue };
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(
                total.name(),
                total.help(),
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// One upstream request awaiting its answer's headers; dropping it ends it.
#[must_use = "the request counts as in flight while this lives"]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The watched sizes, encoded on each scrape (a collector, so nothing is stored between).
#[derive(Clone, Default)]
struct Sizes(Arc<RwLock<BTreeMap<Size, ReadSize>>>);

impl fmt::Debug for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched = self.0.read().expect("sizes lock");
        f.debug_list().entries(watched.keys()).finish()
    }
}

impl Collector for Sizes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let watched = self.0.read().expect("sizes lock");
        for (size, read) in watched.iter() {
            // A size that can't be read now (no /proc) is left off the page, not shown as 0.
            let Some(value) = read() else { continue };
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric =
                encoder.encode_descriptor(size.name(), size.help(), None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Which registries keep their own label.
#[derive(Default)]
struct RegistryLabels {
    /// Canonical `host[:port]` of every exact scope.
    exact: HashSet<String>,
    /// Glob scopes, each with its host pattern as the label, in listing order.
    globs: Vec<(Scope, String)>,
}

impl RegistryLabels {
    fn from_scopes(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut labels = Self::default();
        for scope in scopes {
            if labels.exact.len() + labels.globs.len() >= MAX_REGISTRY_LABELS {
                break;
            }
            match scope.exact_registry() {
                Some(registry) => {
                    labels.exact.insert(registry.to_string());
                }
                None => {
                    let written = scope.to_string();
                    let pattern = written.split('/').next().unwrap_or_default().to_string();
                    if !labels.globs.iter().any(|(_, p)| *p == pattern) {
                        labels.globs.push((scope, pattern));
                    }
                }
            }
        }
        labels
    }

    fn label(&self, registry: &str) -> String {
        if self.exact.contains(registry) {
            return registry.to_string();
        }
        if self.globs.is_empty() {
            return OTHER_REGISTRY.to_string();
        }
        let Ok(host) = RegistryHost::parse(registry) else {
            return OTHER_REGISTRY.to_string();
        };
        self.globs
            .iter()
            // The scope's own path as the repository, so only the host decides.
            .find(|(scope, _)| scope.matches(&Target::new(host.clone(), scope.path().cloned())))
            .map_or_else(
                || OTHER_REGISTRY.to_string(),
                |(_, pattern)| pattern.clone(),
            )
    }
}

pub struct Metrics {
    registry: Registry,
    labels: RwLock<RegistryLabels>,
    sizes: Sizes,
    totals: Totals,
    requests: Family<RequestLabels, Counter>,
    upstream_in_flight: Gauge,
    upstream_server_errors: Family<RegistryLabel, Counter>,
    pulls_refused: Family<RegistryLabel, Counter>,
    upstream_latency: Family<RegistryLabel, Histogram, fn() -> Histogram>,
    token_fetches: Family<RegistryLabel, Counter>,
    token_cache_hits: Family<RegistryLabel, Counter>,
    bytes_streamed: Family<RegistryLabel, Counter>,
    auth_failures: Family<SourceLabel, Counter>,
    /// Mirrors with a label of their own: the first [`MAX_MIRROR_LABELS`] seen.
    mirror_labels: Mutex<BTreeSet<String>>,
    mirror_requests: Family<MirrorRequestLabels, Counter>,
    mirror_handovers: Family<HandoverLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// No registry has a label of its own until [`Metrics::label_registries`].
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
        let mirror_requests = Family::<MirrorRequestLabels, Counter>::default();
        let mirror_handovers = Family::<HandoverLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Requests the endpoint sent to a mirror named in hosts.toml, by mirror and status",
            mirror_requests.clone(),
        );
        registry.register(
            "mirror_handovers",
            "Mirror requests answered with a failure, so containerd moved on to its next host",
            mirror_handovers.clone(),
        );
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
        let upstream_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "Requests to registries and mirrors awaiting the upstream's response headers now",
            upstream_in_flight.clone(),
        );
        let upstream_server_errors = Family::<RegistryLabel, Counter>::default();
        registry.register(
            "upstream_server_errors",
            "Upstream answers with a 5xx status, by registry",
            upstream_server_errors.clone(),
        );
        let pulls_refused = Family::<RegistryLabel, Counter>::default();
        registry.register(
            "pulls_refused",
            "Requests the upstream refused (401/403) after every credential and anonymous: \
             pulls that lack a credential, by registry",
            pulls_refused.clone(),
        );
        let sizes = Sizes::default();
        registry.register_collector(Box::new(sizes.clone()));
        let totals = Totals::default();
        registry.register_collector(Box::new(totals.clone()));
        let metrics = Self {
            registry,
            labels: RwLock::new(RegistryLabels::default()),
            sizes,
            totals,
            upstream_in_flight,
            upstream_server_errors,
            pulls_refused,
            requests,
            upstream_latency,
            token_fetches,
            token_cache_hits,
            bytes_streamed,
            auth_failures,
            mirror_labels: Mutex::new(BTreeSet::new()),
            mirror_requests,
            mirror_handovers,
        };
        metrics.watch_optional(Size::ResidentMemory, resident_memory);
        metrics.watch_optional(Size::OpenFds, open_fds);
        metrics
    }

    /// The registries that keep their own label from now on: the hosts of the keychain's
    /// scopes (at most [`MAX_REGISTRY_LABELS`]). Series already created stay.
    pub fn label_registries(&self, scopes: impl IntoIterator<Item = Scope>) {
        *self.labels.write().expect("labels lock") = RegistryLabels::from_scopes(scopes);
    }

    /// Reports `read()` as the gauge `size` on every scrape; watching a size again replaces
    /// the reader. `read` runs on the scrape, so it must be cheap and must not block.
    pub fn watch(&self, size: Size, read: impl Fn() -> usize + Send + Sync + 'static) {
        self.watch_optional(size, move || u64::try_from(read()).ok());
    }

    /// Reports `read()` as the counter `total` on every scrape (it must only grow, save
    /// across a reload); watching it again replaces the reader.
    pub fn watch_total(&self, total: Total, read: impl Fn() -> u64 + Send + Sync + 'static) {
        self.totals
            .0
            .write()
            .expect("totals lock")
            .insert(total, Box::new(move || Some(read())));
    }

    /// Counts one upstream request as in flight until the guard drops.
    pub fn upstream_request(&self) -> InFlight {
        self.upstream_in_flight.inc();
        InFlight(self.upstream_in_flight.clone())
    }

    /// The upstream answered `status`; a 5xx is counted against `registry`.
    pub fn upstream_status(&self, registry: &str, status: u16) {
        if (500..=599).contains(&status) {
            self.upstream_server_errors
                .get_or_create(&self.registry_label(registry))
                .inc();
        }
    }

    /// Every credential, and anonymous, was refused for `registry`.
    pub fn pull_refused(&self, registry: &str) {
        self.pulls_refused
            .get_or_create(&self.registry_label(registry))
            .inc();
    }

    fn watch_optional(&self, size: Size, read: impl Fn() -> Option<u64> + Send + Sync + 'static) {
        self.sizes
            .0
            .write()
            .expect("sizes lock")
            .insert(size, Box::new(read));
    }

    /// The label `registry` (canonical `host[:port]`) is counted under.
    fn registry_label(&self, registry: &str) -> RegistryLabel {
        RegistryLabel {
            registry: self.labels.read().expect("labels lock").label(registry),
        }
    }

    /// One endpoint request; `registry` is `None` when the request named no valid, allowed one.
    pub fn request(&self, registry: Option<&str>, status: u16) {
        let registry = match registry {
            Some(registry) => self.registry_label(registry).registry,
            None => NO_REGISTRY.to_string(),
        };
        let labels = RequestLabels {
            registry,
            status: status_label(status),
        };
        self.requests.get_or_create(&labels).inc();
    }

    pub fn upstream_latency(&self, registry: &str, latency: Duration) {
        self.upstream_latency
            .get_or_create(&self.registry_label(registry))
            .observe(latency.as_secs_f64());
    }

    pub fn token_fetch(&self, registry: &str) {
        self.token_fetches
            .get_or_create(&self.registry_label(registry))
            .inc();
    }

    pub fn token_cache_hit(&self, registry: &str) {
        self.token_cache_hits
            .get_or_create(&self.registry_label(registry))
            .inc();
    }

    pub fn bytes_streamed(&self, registry: &str, bytes: u64) {
        self.bytes_streamed
            .get_or_create(&self.registry_label(registry))
            .inc_by(bytes);
    }

    /// `source` is a source's name from the config, so these labels follow the config too.
    pub fn auth_failure(&self, source: &str) {
        let labels = SourceLabel {
            source: source.to_string(),
        };
        self.auth_failures.get_or_create(&labels).inc();
    }

    /// The label of a mirror found named in hosts.toml (`origin`: its `scheme://host:port`);
    /// `None` for one that was not.
    fn mirror_label(&self, origin: Option<&str>) -> String {
        let Some(origin) = origin else {
            return NO_REGISTRY.to_string();
        };
        if !is_origin_label(origin) {
            return OTHER_MIRROR.to_string();
        }
        let mut labels = self.mirror_labels.lock().unwrap_or_else(|e| e.into_inner());
        if labels.contains(origin) {
            return origin.to_string();
        }
        if labels.len() < MAX_MIRROR_LABELS {
            labels.insert(origin.to_string());
            return origin.to_string();
        }
        OTHER_MIRROR.to_string()
    }

    /// One request relayed from a mirror (or answered for it), with its final status.
    pub fn mirror_request(&self, mirror: Option<&str>, status: u16) {
        let labels = MirrorRequestLabels {
            mirror: self.mirror_label(mirror),
            status: status_label(status),
        };
        self.mirror_requests.get_or_create(&labels).inc();
    }

    /// One hand-over: the mirror failed the request, so containerd tries its next host.
    pub fn mirror_handover(&self, mirror: Option<&str>, reason: Handover) {
        let labels = HandoverLabels {
            mirror: self.mirror_label(mirror),
            reason: reason.as_str().to_string(),
        };
        self.mirror_handovers.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// `http://` or `https://` and then only what a host and port are written with: DNS labels,
/// IPv4, bracketed IPv6, `:` and digits. Nothing that could end a quoted label value.
fn is_origin_label(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 300
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `VmRSS` from `/proc/self/status`, in bytes.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The entries of `/proc/self/fd`, less the one reading the directory.
fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count();
    u64::try_from(entries.saturating_sub(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(written: &[&str]) -> Vec<Scope> {
        written.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    /// Lines that carry a value (series), not `# HELP`/`# TYPE`/`# EOF`.
    fn series(text: &str) -> usize {
        text.lines().filter(|l| !l.starts_with('#')).count()
    }

    #[test]
    fn renders_every_family_with_labels() {
        let m = Metrics::new();
        m.label_registries(scopes(&["registry.test"]));
        m.request(Some("registry.test"), 200);
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

    #[test]
    fn two_thousand_unknown_registries_share_one_label_and_the_series_count_stays_constant() {
        let m = Metrics::new();
        m.label_registries(scopes(&["registry.test", "ghcr.io/org"]));
        let touch = |m: &Metrics, registry: &str| {
            m.request(Some(registry), 502);
            m.upstream_latency(registry, Duration::from_millis(3));
            m.token_fetch(registry);
            m.token_cache_hit(registry);
            m.bytes_streamed(registry, 1);
        };
        touch(&m, "registry.test");
        touch(&m, "ghcr.io");
        touch(&m, "attacker-0.example");
        m.request(None, 403);
        let before = series(&m.render());
        for i in 1..2_000 {
            touch(&m, &format!("attacker-{i}.example"));
            m.request(None, 403);
        }
        let text = m.render();
        assert_eq!(series(&text), before, "{text}");
        assert!(!text.contains("attacker-"), "{text}");
        assert!(
            text.contains(
                r#"credgate_endpoint_requests_total{registry="other",status="502"} 2000"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"credgate_endpoint_requests_total{registry="-",status="403"} 2000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credgate_token_fetches_total{registry="ghcr.io"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_registry_is_unlabelled_until_the_keychain_knows_it_and_a_glob_labels_its_hosts() {
        let m = Metrics::new();
        m.token_fetch("registry.test");
        m.label_registries(scopes(&[
            "registry.test",
            "*.dkr.ecr.us-east-1.amazonaws.com",
            "*.example.com:5000/team",
        ]));
        m.token_fetch("registry.test");
        m.token_fetch("123.dkr.ecr.us-east-1.amazonaws.com");
        m.token_fetch("456.dkr.ecr.us-east-1.amazonaws.com");
        m.token_fetch("a.example.com:5000");
        m.token_fetch("a.example.com");
        m.token_fetch("not a host");
        let text = m.render();
        for line in [
            r#"credgate_token_fetches_total{registry="registry.test"} 1"#,
            r#"credgate_token_fetches_total{registry="other"} 3"#,
            r#"credgate_token_fetches_total{registry="*.dkr.ecr.us-east-1.amazonaws.com"} 2"#,
            r#"credgate_token_fetches_total{registry="*.example.com:5000"} 1"#,
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
    }

    #[test]
    fn a_config_with_thousands_of_scopes_labels_at_most_the_cap() {
        let written: Vec<String> = (0..1_000).map(|i| format!("r{i}.test")).collect();
        let m = Metrics::new();
        m.label_registries(written.iter().map(|s| Scope::parse(s).unwrap()));
        for registry in &written {
            m.token_fetch(registry);
        }
        let labelled = m
            .render()
            .lines()
            .filter(|l| l.starts_with("credgate_token_fetches_total{"))
            .count();
        assert_eq!(labelled, MAX_REGISTRY_LABELS + 1);
    }

    #[test]
    fn upstream_chosen_statuses_share_their_class_label() {
        let m = Metrics::new();
        for status in 100..1000 {
            m.request(None, status);
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("credgate_endpoint_requests_total{"))
            .count();
        assert_eq!(series, LABELLED_STATUSES.len() + 9, "{text}");
        assert!(!text.contains(r#"status="599""#), "{text}");
        assert!(text.contains(r#"status="5xx"} 95"#), "{text}");
        assert!(text.contains(r#"status="429"} 1"#), "{text}");
    }

    #[test]
    fn mirror_labels_are_bounded_to_the_first_named_mirrors() {
        let m = Metrics::new();
        for i in 0..100 {
            let mirror = format!("https://m{i}.test:443");
            m.mirror_request(Some(&mirror), 200);
            m.mirror_handover(Some(&mirror), Handover::NotFound);
        }
        m.mirror_handover(None, Handover::NotNamed);
        m.mirror_request(Some("https://m0.test:443"), 404);
        let text = m.render();
        let labelled = |family: &str| {
            text.lines()
                .filter(|l| l.starts_with(family))
                .map(|l| {
                    l.split("mirror=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                })
                .collect::<BTreeSet<_>>()
        };
        let mirrors = labelled("credgate_mirror_handovers_total{");
        assert_eq!(mirrors.len(), MAX_MIRROR_LABELS + 2, "{mirrors:?}");
        assert!(mirrors.contains(OTHER_MIRROR) && mirrors.contains(NO_REGISTRY));
        assert_eq!(
            labelled("credgate_mirror_requests_total{").len(),
            MAX_MIRROR_LABELS + 1
        );
        assert!(
            text.contains(
                r#"credgate_mirror_handovers_total{mirror="other",reason="not_found"} 68"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"credgate_mirror_handovers_total{mirror="-",reason="not_named"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"credgate_mirror_requests_total{mirror="https://m0.test:443",status="404"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_mirror_name_that_would_break_the_page_is_counted_as_other() {
        let m = Metrics::new();
        for hostile in [
            "http://localhost/a\"} 1 b",
            "http://localhost/a",
            "https://m.test:443\ncredgate_forged 1",
            "m.test:443",
            "ftp://m.test:21",
            "https://",
        ] {
            m.mirror_request(Some(hostile), 200);
            m.mirror_handover(Some(hostile), Handover::NotFound);
        }
        m.mirror_request(Some("http://[::1]:5000"), 200);
        let text = m.render();
        assert!(
            text.contains(r#"credgate_mirror_requests_total{mirror="other",status="200"} 6"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"credgate_mirror_requests_total{mirror="http://[::1]:5000",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("localhost") && !text.contains("forged"),
            "{text}"
        );
        // Every series line still parses: name{labels} value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert_eq!(line.matches('"').count() % 2, 0, "{line}");
        }
    }

    #[test]
    fn handover_reasons_follow_the_status() {
        assert_eq!(Handover::for_status(200), None);
        assert_eq!(Handover::for_status(304), None);
        assert_eq!(Handover::for_status(401), Some(Handover::Refused));
        assert_eq!(Handover::for_status(403), Some(Handover::Refused));
        assert_eq!(Handover::for_status(404), Some(Handover::NotFound));
        assert_eq!(Handover::for_status(429), Some(Handover::Throttled));
        assert_eq!(Handover::for_status(503), Some(Handover::ServerError));
        assert_eq!(Handover::for_status(418), Some(Handover::OtherStatus));
        assert_eq!(Handover::for_status(999), Some(Handover::OtherStatus));
    }

    #[test]
    fn watched_sizes_are_read_on_every_scrape_with_the_prefix() {
        let m = Metrics::new();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(3));
        let read = open.clone();
        m.watch(Size::EndpointConnections, move || {
            read.load(std::sync::atomic::Ordering::Relaxed)
        });
        m.watch(Size::TokenCache, || 7);
        let text = m.render();
        assert!(text.contains("credgate_endpoint_connections 3"), "{text}");
        assert!(text.contains("credgate_token_cache_entries 7"), "{text}");
        assert!(!text.contains("credgate_helpers_running"), "{text}");
        open.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render().contains("credgate_endpoint_connections 5"));
    }

    #[test]
    fn alert_counters_follow_the_registry_labels_and_in_flight_returns_to_zero() {
        let m = Metrics::new();
        m.label_registries(scopes(&["registry.test"]));
        m.upstream_status("registry.test", 503);
        m.upstream_status("registry.test", 200);
        m.upstream_status("registry.test", 429);
        for i in 0..500 {
            m.upstream_status(&format!("attacker-{i}.example"), 500);
            m.pull_refused(&format!("attacker-{i}.example"));
        }
        m.pull_refused("registry.test");
        let timeouts = Arc::new(std::sync::atomic::AtomicU64::new(2));
        let read = timeouts.clone();
        m.watch_total(Total::HelperTimeouts, move || {
            read.load(std::sync::atomic::Ordering::Relaxed)
        });
        let first = m.upstream_request();
        let second = m.upstream_request();
        let text = m.render();
        for line in [
            r#"credgate_upstream_server_errors_total{registry="registry.test"} 1"#,
            r#"credgate_upstream_server_errors_total{registry="other"} 500"#,
            r#"credgate_pulls_refused_total{registry="registry.test"} 1"#,
            r#"credgate_pulls_refused_total{registry="other"} 500"#,
            "credgate_helper_timeouts_total 2",
            "credgate_upstream_in_flight 2",
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
        assert!(!text.contains("attacker-"), "{text}");
        drop((first, second));
        timeouts.store(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("credgate_upstream_in_flight 0"), "{text}");
        assert!(text.contains("credgate_helper_timeouts_total 3"), "{text}");
        assert!(
            text.contains("# TYPE credgate_helper_timeouts counter"),
            "{text}"
        );
    }

    #[test]
    fn process_memory_and_descriptors_are_on_the_page() {
        let text = Metrics::new().render();
        let value = |name: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("credgate_process_resident_memory_bytes ") > 1024 * 1024);
        assert!(value("credgate_process_open_fds ") >= 3);
    }
}
