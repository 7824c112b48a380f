//! The pooled HTTPS clients: hyper-util's legacy client over rustls (ring), always verifying
//! against the system roots plus the registry's `ca_file`, speaking HTTP/1.1 (the TLS hello
//! offers no ALPN, so the server speaks HTTP/1.1). HTTP/1.1 is chosen by measurement: streaming a 1 GiB blob from Go's
//! registry costs credgate 0.2–0.4 CPU-s/GiB less than over HTTP/2 (h2's frames are copied
//! and their buffers allocated and freed per frame) and runs 10–30% faster on a 2-core node
//! (README, "Where credgate's CPU goes"). Every registry speaks HTTP/1.1; concurrent pulls
//! take one pooled connection each instead of sharing one, and at most
//! [`POOL_MAX_IDLE_PER_HOST`] of them stay pooled per host once the pulls end. Plain `http://` is never used for an upstream: the connector is https-only (a mirror
//! the operator named in hosts.toml gets a client of its own, `super::mirror`).
//!
//! One client (and so one connection pool) per distinct `ca_file` and [`Reach`], the
//! system-roots-only client included, built on first use and kept until the policy is
//! replaced. Separate pools per reach matter: a connection pooled under the allow-lists must
//! never be reused for a hop that may reach public addresses only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::connector::{ConnectError, GuardedConnector, Reach};
use super::policy::PolicyCell;
use super::UpstreamError;

/// Waiting for an upstream's response headers (connecting included) ends after this. A body,
/// once it streams, has no total deadline: blobs can be gigabytes on a slow link.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle pooled connections are closed after this.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host (HTTP/1.1 holds one per request in flight; after
/// a burst of parallel pulls the rest are closed rather than kept for 90 s). containerd
/// fetches 3 layers of an image at once, so 16 covers several pulls in a row.
pub(crate) const POOL_MAX_IDLE_PER_HOST: usize = 16;
/// The most hyper buffers from one upstream connection before the body takes it. Its default
/// (408 KiB) costs 0.4 MiB per stream: 50 MiB of RSS at 64 concurrent blob streams against
/// 22 MiB with 64 KiB, at no CPU cost the endpoint bench can resolve (1.83–1.88 CPU-s/GiB
/// either way; README, "Where credgate's CPU goes").
const MAX_READ_BUFFER: usize = 64 * 1024;

pub(crate) type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

type ClientKey = (Option<PathBuf>, Reach);

/// The clients, keyed by the extra CA file they trust and what they may reach.
pub(crate) struct Clients {
    system_roots: Arc<RootCertStore>,
    policy: PolicyCell,
    by_ca: Mutex<HashMap<ClientKey, HttpClient>>,
}

impl Clients {
    /// Loads the system roots once (a warning, not an error, when there are none: a
    /// registry with its own `ca_file` still works).
    pub(crate) fn new(policy: PolicyCell) -> Result<Self, UpstreamError> {
        let clients = Self {
            system_roots: Arc::new(system_roots()),
            policy,
            by_ca: Mutex::new(HashMap::new()),
        };
        clients.get(None, Reach::Policy)?;
        Ok(clients)
    }

    /// The client trusting the system roots and `ca_file`, connecting within `reach`.
    pub(crate) fn get(
        &self,
        ca_file: Option<&Path>,
        reach: Reach,
    ) -> Result<HttpClient, UpstreamError> {
        let key = (ca_file.map(Path::to_path_buf), reach.clone());
        if let Some(client) = self.lock().get(&key) {
            return Ok(client.clone());
        }
        let client = self.build(ca_file, reach)?;
        Ok(self.lock().entry(key).or_insert(client).clone())
    }

    /// The system roots every client trusts, loaded once.
    pub(crate) fn system_roots(&self) -> Arc<RootCertStore> {
        self.system_roots.clone()
    }

    /// Drops every client (and its pool), so the next request uses fresh policy and CA files.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, HttpClient>> {
        self.by_ca.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, ca_file: Option<&Path>, reach: Reach) -> Result<HttpClient, UpstreamError> {
        let mut roots = (*self.system_roots).clone();
        if let Some(path) = ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let tls = tls_config(roots)?;
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(GuardedConnector::new(self.policy.clone(), reach));
        Ok(pooled(https))
    }
}

/// The pooled client over `https`, as every upstream and mirror client is built.
pub(crate) fn pooled(https: HttpsConnector<GuardedConnector>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .http1_max_buf_size(MAX_READ_BUFFER)
        .build(https)
}

/// `credgate/<version>`, for requests credgate makes on its own behalf.
pub(crate) fn user_agent() -> http::HeaderValue {
    http::HeaderValue::from_static(concat!("credgate/", env!("CARGO_PKG_VERSION")))
}

/// A failed request as an [`UpstreamError`] naming `host`: the connector's own verdict
/// (refused, timed out) when it made one, else the error chain.
pub(crate) fn request_error(
    host: &str,
    error: &hyper_util::client::legacy::Error,
) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return connect_error(connect);
        }
        source = e.source();
    }
    UpstreamError::Unreachable {
        host: host.to_string(),
        reason: error_chain(error),
    }
}

fn connect_error(error: &ConnectError) -> UpstreamError {
    match error {
        ConnectError::NotAllowed { host, reason } => UpstreamError::NotAllowed {
            host: host.clone(),
            reason: reason.clone(),
        },
        ConnectError::TimedOut { host } => UpstreamError::TimedOut { host: host.clone() },
        other => UpstreamError::Unreachable {
            host: other.host().to_string(),
            reason: other.to_string(),
        },
    }
}

/// `outer: cause: root cause`, each message once.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

fn system_roots() -> RootCertStore {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "reading the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "system root certificates rustls cannot use");
    }
    if added == 0 {
        tracing::warn!(
            "no system root certificates: only registries with a ca_file can be verified"
        );
    }
    roots
}

pub(crate) fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), UpstreamError> {
    let error = |reason: String| UpstreamError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(error("no usable PEM certificate in it".to_string()));
    }
    Ok(())
}

fn tls_config(roots: RootCertStore) -> Result<ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::policy::UpstreamPolicy;

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        let clients = Clients::new(PolicyCell::new(UpstreamPolicy::default())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = clients
            .get(Some(&missing), Reach::Policy)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = clients
            .get(Some(&empty), Reach::PublicOnly)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no usable PEM certificate"), "{error}");
    }
}
