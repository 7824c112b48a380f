//! How a mirror the operator named in hosts.toml is dialled: its transport, built from that
//! host's own settings (plain `http://`, its `ca` files, its client certificates,
//! `skip_verify`, `dial_timeout`), and the one `host:port` that may be a private address.
//! Which mirror a request may use, and with which credential, is decided in `crate::mirrors`;
//! this module only dials what it is handed.
//!
//! - **One client per transport**, so each mirror's TLS settings stay its own: a
//!   `skip_verify` verifier or a client certificate is never used for any other host. A
//!   mirror's client is used only for the mirror's own origin (its requests, same-origin
//!   redirects, a token realm on the same origin); realms elsewhere and redirects off it go
//!   through the ordinary clients ([`super::exchange`]). At most [`MIRROR_CLIENTS`] clients
//!   are kept, the least recently used dropped first; all are dropped on reload, and `ca` and
//!   `client` files are read when a client is built.
//! - **Plain `http://`** is allowed only on a mirror's client; upstream registries stay
//!   https-only.
//! - **Private addresses**: the mirror's `host:port` may resolve to anything (the operator
//!   named it); nothing else dialled for the request gains that ([`super::connector::Reach`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::HttpsConnectorBuilder;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::identity::RegistryHost;

use super::client::{add_ca_file, pooled, HttpClient};
use super::connector::{GuardedConnector, Reach};
use super::lru::Lru;
use super::policy::PolicyCell;
use super::UpstreamError;

/// Most mirror clients (connection pools) kept at once; a node names a handful of mirrors.
pub const MIRROR_CLIENTS: usize = 64;

/// Where and how to reach one mirror, as its hosts.toml entry says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MirrorDial {
    /// The mirror as logs and errors show it: its URL without user info or query.
    pub shown: String,
    /// `scheme://host:port`, the port always written: the key of its token and challenge
    /// cache entries, which plain http so never shares with https.
    pub origin: String,
    /// `host[:port]` as the URL writes it, dialled as is.
    pub authority: String,
    pub transport: MirrorTransport,
    /// With `credentials = "upstream"`: the upstream's dial host, on whose domain a token realm
    /// is allowed too (the mirror forwards the upstream's challenge).
    pub upstream_realm_host: Option<String>,
}

/// What a mirror's connections are made with; mirrors with equal transports share a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MirrorTransport {
    /// `http://` rather than `https://`.
    pub plain_http: bool,
    /// The `host:port` the operator named (port written out, 80 or 443 included): the only
    /// one the mirror's connections may reach at a non-public address.
    pub named: RegistryHost,
    /// Extra trusted CA files (PEM), beside the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Client certificates with their key files (`None`: the key is in the certificate's file).
    pub client_pairs: Vec<(PathBuf, Option<PathBuf>)>,
    /// Accept any server certificate, for this mirror only.
    pub skip_verify: bool,
    pub dial_timeout: Option<Duration>,
}

impl MirrorDial {
    pub fn scheme(&self) -> &'static str {
        if self.transport.plain_http {
            "http"
        } else {
            "https"
        }
    }
}

/// The mirrors' clients, keyed by transport.
pub(crate) struct MirrorClients {
    policy: PolicyCell,
    system_roots: Arc<RootCertStore>,
    by_transport: Mutex<Lru<MirrorTransport, HttpClient>>,
}

impl MirrorClients {
    pub(crate) fn new(policy: PolicyCell, system_roots: Arc<RootCertStore>) -> Self {
        Self {
            policy,
            system_roots,
            by_transport: Mutex::new(Lru::new(MIRROR_CLIENTS)),
        }
    }

    /// The client for `transport`, built (its files read) on first use.
    pub(crate) fn get(&self, transport: &MirrorTransport) -> Result<HttpClient, UpstreamError> {
        if let Some(client) = self.lock().get(transport) {
            return Ok(client.clone());
        }
        let client = self.build(transport)?;
        let mut clients = self.lock();
        if let Some(raced) = clients.get(transport) {
            return Ok(raced.clone());
        }
        clients.insert(transport.clone(), client.clone());
        Ok(client)
    }

    /// Clients kept now (at most [`MIRROR_CLIENTS`]).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn clear(&self) {
        *self.lock() = Lru::new(MIRROR_CLIENTS);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<MirrorTransport, HttpClient>> {
        self.by_transport.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, transport: &MirrorTransport) -> Result<HttpClient, UpstreamError> {
        let tls = self.tls_config(transport)?;
        let mut connector =
            GuardedConnector::new(self.policy.clone(), Reach::Mirror(transport.named.clone()));
        if let Some(timeout) = transport.dial_timeout {
            connector = connector.with_connect_timeout(timeout);
        }
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if transport.plain_http {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        // HTTP/1.1 only, as for registries (`super::client` says why).
        let https = builder.enable_http1().wrap_connector(connector);
        Ok(pooled(https))
    }

    /// System roots plus the `ca` files (read even with `skip_verify`, as containerd reads
    /// them), the verifier, and the client certificates.
    fn tls_config(&self, transport: &MirrorTransport) -> Result<ClientConfig, UpstreamError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = (*self.system_roots).clone();
        for ca in &transport.ca_files {
            add_ca_file(&mut roots, ca)?;
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Tls {
                reason: e.to_string(),
            })?;
        let builder = if transport.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
        } else {
            builder.with_root_certificates(roots)
        };
        if transport.client_pairs.is_empty() {
            return Ok(builder.with_no_client_auth());
        }
        let certificates = ClientCertificates::load(&transport.client_pairs, &provider)?;
        Ok(builder.with_client_cert_resolver(Arc::new(certificates)))
    }
}

/// `skip_verify = true`: any server certificate is accepted (the handshake's signatures are
/// still checked against it). Only ever in a mirror's own client.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A mirror's client certificates; the first whose key can sign with a scheme the server
/// offers is presented, as Go's TLS client picks from containerd's list.
#[derive(Debug)]
struct ClientCertificates(Vec<Arc<CertifiedKey>>);

impl ClientCertificates {
    fn load(
        pairs: &[(PathBuf, Option<PathBuf>)],
        provider: &CryptoProvider,
    ) -> Result<Self, UpstreamError> {
        pairs
            .iter()
            .map(|(cert, key)| {
                let fail = |path: &PathBuf, reason: String| UpstreamError::ClientCertificate {
                    path: path.clone(),
                    reason,
                };
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| fail(cert, e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(fail(cert, "no PEM certificate in it".into()));
                }
                let key_path = key.as_ref().unwrap_or(cert);
                // The key's own parse errors are not quoted: they could echo key material.
                let key_der = PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|_| fail(key_path, "no usable PEM private key in it".into()))?;
                let signing = provider
                    .key_provider
                    .load_private_key(key_der)
                    .map_err(|_| fail(key_path, "a private key rustls cannot use".into()))?;
                Ok(Arc::new(CertifiedKey::new(chain, signing)))
            })
            .collect::<Result<_, _>>()
            .map(ClientCertificates)
    }
}

impl ResolvesClientCert for ClientCertificates {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .iter()
            .find(|key| key.key.choose_scheme(sigschemes).is_some())
            .cloned()
    }

    fn has_certs(&self) -> bool {
        !self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::policy::UpstreamPolicy;

    fn transport(named: &str) -> MirrorTransport {
        MirrorTransport {
            plain_http: false,
            named: RegistryHost::parse(named).unwrap(),
            ca_files: Vec::new(),
            client_pairs: Vec::new(),
            skip_verify: false,
            dial_timeout: None,
        }
    }

    fn clients() -> MirrorClients {
        MirrorClients::new(
            PolicyCell::new(UpstreamPolicy::default()),
            Arc::new(RootCertStore::empty()),
        )
    }

    #[test]
    fn clients_are_bounded_and_shared_by_equal_transports() {
        let clients = clients();
        for i in 0..(MIRROR_CLIENTS * 2) {
            clients.get(&transport(&format!("m{i}.test"))).unwrap();
        }
        assert!(clients.len() <= MIRROR_CLIENTS, "{}", clients.len());
        clients.clear();
        clients.get(&transport("m.test")).unwrap();
        clients.get(&transport("m.test")).unwrap();
        assert_eq!(clients.len(), 1);
    }

    #[test]
    fn unusable_files_are_errors_naming_them_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let clients = clients();
        let mut with_ca = transport("m.test");
        with_ca.ca_files = vec![dir.path().join("missing-ca.pem")];
        let error = clients.get(&with_ca).unwrap_err().to_string();
        assert!(error.contains("missing-ca.pem"), "{error}");

        let key = dir.path().join("client.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let mut with_client = transport("m.test");
        with_client.client_pairs = vec![(cert, Some(key))];
        let error = clients.get(&with_client).unwrap_err().to_string();
        assert!(error.contains("client.crt"), "{error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }
}
