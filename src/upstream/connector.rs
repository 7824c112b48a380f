//! The TCP side of every upstream connection: resolve the host once, check every address
//! against the policy, and connect only to the addresses checked. Because nothing resolves
//! the name a second time, a DNS answer that changes between check and connect (rebinding)
//! cannot slip a private address through.
//!
//! A connector serves one [`Reach`]: the registry's own connections get the policy's
//! allow-lists, redirect hops off the registry's host get public addresses only, and a mirror
//! the operator named in hosts.toml may be private at exactly its own host and port.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::identity::RegistryHost;

use super::policy::{check_public, PolicyCell};

/// Resolving and connecting together may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no connection was made; each names the host.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream {host} is not allowed: {reason}")]
    NotAllowed { host: String, reason: String },
    /// The URL is not named: a redirect's query may be a presigned credential.
    #[error("a URL without a host")]
    NoHost,
    #[error("{host}: cannot resolve: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host}: no address to connect to")]
    NoAddress { host: String },
    #[error("{host}: cannot connect to {addresses}: {source}")]
    Connect {
        host: String,
        addresses: String,
        source: std::io::Error,
    },
    #[error("{host}: connecting took longer than {CONNECT_TIMEOUT:?}")]
    TimedOut { host: String },
}

impl ConnectError {
    /// The host (`host:port`) or URI the error is about.
    pub fn host(&self) -> &str {
        match self {
            Self::NotAllowed { host, .. }
            | Self::Resolve { host, .. }
            | Self::NoAddress { host }
            | Self::Connect { host, .. }
            | Self::TimedOut { host } => host,
            Self::NoHost => "",
        }
    }
}

/// Which addresses a connection may reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Reach {
    /// The policy in force: the allow-listed hosts may be private (registries, token realms).
    Policy,
    /// Public addresses only, whatever the allow-lists say: a redirect off the registry's
    /// own host is chosen by the registry, and must not turn the gate against the node's
    /// own network (an internal registry the operator allowed included).
    PublicOnly,
    /// A mirror named in hosts.toml: this `host:port` (port always compared, 443 and 80
    /// included) may resolve to any address, since the operator named it; any other host gets
    /// the policy, as for [`Reach::Policy`].
    Mirror(RegistryHost),
}

/// A hyper-util connector (a `tower::Service<Uri>`) that applies the policy in force when
/// each connection is made.
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    policy: PolicyCell,
    reach: Reach,
    /// Resolving and connecting together, at most [`CONNECT_TIMEOUT`].
    connect_timeout: Duration,
}

impl GuardedConnector {
    pub(crate) fn new(policy: PolicyCell, reach: Reach) -> Self {
        Self {
            policy,
            reach,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// A shorter bound on resolving and connecting (a hosts.toml `dial_timeout`); a longer
    /// one is cut to [`CONNECT_TIMEOUT`].
    pub(crate) fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.min(CONNECT_TIMEOUT);
        self
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        let reach = self.reach.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            let name = display_name(&host, port);
            let connected = tokio::time::timeout(timeout, connect(policy, reach, &host, port));
            match connected.await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(ConnectError::TimedOut { host: name }),
            }
        })
    }
}

async fn connect(
    policy: PolicyCell,
    reach: Reach,
    host: &str,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    let name = display_name(host, port);
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: name.clone(),
            source,
        })?
        .collect();
    if addresses.is_empty() {
        return Err(ConnectError::NoAddress { host: name });
    }
    let registry = RegistryHost::parse(&name).map_err(|e| ConnectError::NotAllowed {
        host: name.clone(),
        reason: e.to_string(),
    })?;
    let checked = match reach {
        Reach::Policy => policy.get().check_addresses(&registry, &addresses),
        Reach::PublicOnly => check_public(&registry, &addresses),
        Reach::Mirror(named) if named == registry => Ok(()),
        Reach::Mirror(_) => policy.get().check_addresses(&registry, &addresses),
    };
    checked.map_err(|reason| ConnectError::NotAllowed {
        host: name.clone(),
        reason,
    })?;
    connect_first(&name, &addresses).await
}

/// The checked addresses in resolver order; the first that accepts wins.
async fn connect_first(name: &str, addresses: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectError::Connect {
        host: name.to_string(),
        addresses: addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// The host without IPv6 brackets (as the resolver wants it) and the port (443 by default,
/// 80 for a plain `http://` mirror).
fn host_port(uri: &Uri) -> Result<(String, u16), ConnectError> {
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(ConnectError::NoHost)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let default_port = if uri.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    Ok((bare.to_string(), uri.port_u16().unwrap_or(default_port)))
}

/// `host:port`, brackets restored for IPv6, as [`RegistryHost::parse`] reads it.
fn display_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use tower_service::Service;

    use super::super::policy::UpstreamPolicy;
    use super::*;

    #[tokio::test]
    async fn refuses_loopback_unless_allowed_and_connects_when_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri: Uri = format!("https://127.0.0.1:{port}/v2/").parse().unwrap();

        let mut refused =
            GuardedConnector::new(PolicyCell::new(UpstreamPolicy::default()), Reach::Policy);
        let error = refused.call(uri.clone()).await.unwrap_err();
        assert!(
            matches!(&error, ConnectError::NotAllowed { reason, .. } if reason.contains("loopback")),
            "{error}"
        );

        let host = RegistryHost::parse(&format!("127.0.0.1:{port}")).unwrap();
        let policy = UpstreamPolicy::default().allow_private(host);
        let mut allowed = GuardedConnector::new(PolicyCell::new(policy), Reach::Policy);
        allowed
            .call(uri)
            .await
            .expect("connects to the allowed host");
    }

    #[tokio::test]
    async fn public_only_refuses_an_allowed_private_host() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let host = RegistryHost::parse(&format!("127.0.0.1:{port}")).unwrap();
        let policy = PolicyCell::new(UpstreamPolicy::default().allow_private(host));
        let uri: Uri = format!("https://127.0.0.1:{port}/internal")
            .parse()
            .unwrap();
        let mut public_only = GuardedConnector::new(policy, Reach::PublicOnly);
        let error = public_only.call(uri).await.unwrap_err();
        assert!(
            matches!(&error, ConnectError::NotAllowed { reason, .. } if reason.contains("public addresses only")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_mirror_may_be_private_at_its_own_host_and_port_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let named = RegistryHost::parse(&format!("127.0.0.1:{port}")).unwrap();
        let policy = PolicyCell::new(UpstreamPolicy::default());
        let mut mirror = GuardedConnector::new(policy, Reach::Mirror(named));
        let uri: Uri = format!("http://127.0.0.1:{port}/v2/").parse().unwrap();
        mirror.call(uri).await.expect("the named mirror connects");
        let other_port: Uri = format!("http://127.0.0.1:{}/v2/", port.wrapping_add(1).max(1))
            .parse()
            .unwrap();
        let error = mirror.call(other_port).await.unwrap_err();
        assert!(matches!(&error, ConnectError::NotAllowed { .. }), "{error}");
        // Plain http without a port is port 80, not 443: not the named host:port either.
        let named = RegistryHost::parse("127.0.0.1").unwrap();
        let mut mirror = GuardedConnector::new(
            PolicyCell::new(UpstreamPolicy::default()),
            Reach::Mirror(named),
        );
        let error = mirror
            .call("http://127.0.0.1/v2/".parse().unwrap())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("127.0.0.1:80"), "{error}");
    }

    #[tokio::test]
    async fn names_are_resolved_and_checked() {
        let mut connector =
            GuardedConnector::new(PolicyCell::new(UpstreamPolicy::default()), Reach::Policy);
        let uri: Uri = "https://localhost:1/v2/".parse().unwrap();
        let error = connector.call(uri).await.unwrap_err();
        assert!(
            error.to_string().contains("localhost:1 is not allowed"),
            "{error}"
        );
    }
}
