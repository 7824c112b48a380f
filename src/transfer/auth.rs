//! Answering containerd's auth stream from credgate's keychain.
//!
//! containerd's transfer service asks the client for credentials over a stream
//! (core/transfer/registry/registry.go, `credCallback`): it sends
//! `AuthRequest{host, reference}` and blocks until one `AuthResponse` comes back, so every
//! request gets an answer, anonymous when the lookup fails. Each answer has a deadline
//! ([`ANSWER_DEADLINE`]): a stuck lookup turns into an anonymous answer and a warning, never
//! a pull that hangs.
//!
//! Where answers come from: the daemon's `Credentials.Lookup`, as every other thin client
//! asks. When no daemon listens on its socket (`credgate serve` not running: a fresh node,
//! or a pull run while debugging the daemon), the keychain is built from the config and
//! asked in-process, exactly as `credgate lookup` resolves offline. A daemon that is there
//! but fails or times out is *not* bypassed: its answer (or its silence) is the node's
//! policy, so the pull goes anonymous with a warning instead.

use std::path::PathBuf;
use std::time::Duration;

use containerd_client::types::transfer::{AuthRequest, AuthResponse, AuthType as WireAuthType};

use crate::api;
use crate::clients::{ClientError, DaemonClient, DAEMON_DEADLINE};
use crate::config::Config;
use crate::identity::{ImageReference, RegistryHost, Target};
use crate::keychain::{Decision, Keychain};
use crate::secret::Secret;
use crate::sources::AuthType;
use crate::system::System;

/// Longest one answer may take: the daemon's own deadline plus slack for connecting.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(DAEMON_DEADLINE.as_secs() + 5);

/// What the keychain said for one target, from the daemon or resolved in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeychainAnswer {
    pub auth_type: AuthType,
    pub username: String,
    pub secret: Secret,
    /// Unix seconds; 0 when unknown.
    pub expire_at: i64,
    /// Which source and scope won, for the log line (never the secret).
    pub source: String,
}

impl KeychainAnswer {
    pub fn anonymous() -> Self {
        Self {
            auth_type: AuthType::None,
            username: String::new(),
            secret: Secret::new(""),
            expire_at: 0,
            source: String::new(),
        }
    }

    pub fn from_daemon(response: &api::LookupResponse) -> Self {
        let auth_type = match response.auth_type.enum_value_or_default() {
            api::AuthType::NONE => AuthType::None,
            api::AuthType::CREDENTIALS => AuthType::Credentials,
            api::AuthType::REFRESH => AuthType::Refresh,
            api::AuthType::HEADER => AuthType::Header,
        };
        Self {
            auth_type,
            username: response.username.clone(),
            secret: Secret::new(response.secret.clone()),
            expire_at: response.expire_at,
            source: response.source.clone(),
        }
    }

    /// The daemon's answer for a decision made in-process: one conversion for both paths.
    pub fn from_decision(decision: &Decision) -> Self {
        Self::from_daemon(&api::LookupResponse::from(decision))
    }
}

/// The lookup target for one `AuthRequest`: the registry is the host containerd is talking
/// to (a mirror from hosts.toml gets its own credentials, as ctr's `--user` does), the
/// repository comes from the image reference. `registry-1.docker.io` folds into
/// `docker.io` like every other Docker Hub alias. A reference that doesn't parse still
/// allows a registry-wide lookup.
pub fn lookup_target(request: &AuthRequest) -> Result<Target, crate::identity::IdentityError> {
    let registry = RegistryHost::parse(&request.host)?;
    let repository = ImageReference::parse(&request.reference)
        .ok()
        .map(|image| image.repository);
    Ok(Target::new(registry, repository))
}

/// The `AuthResponse` carrying one keychain answer; the secret goes only into this message.
///
/// `refresh` leaves the username empty, as containerd's own client does: containerd's
/// resolver treats an empty username with a secret as an identity token.
pub fn auth_response(answer: &KeychainAnswer) -> AuthResponse {
    let (auth_type, username) = match answer.auth_type {
        AuthType::None => return AuthResponse::default(),
        AuthType::Credentials => (WireAuthType::Credentials, answer.username.clone()),
        AuthType::Refresh => (WireAuthType::Refresh, String::new()),
        AuthType::Header => (WireAuthType::Header, String::new()),
    };
    AuthResponse {
        auth_type: auth_type.into(),
        secret: answer.secret.expose().to_string(),
        username,
        expire_at: (answer.expire_at > 0).then_some(prost_types::Timestamp {
            seconds: answer.expire_at,
            nanos: 0,
        }),
    }
}

/// Where answers come from, decided at the first request.
enum Keyring {
    Undecided,
    Daemon(DaemonClient),
    InProcess(Keychain),
}

impl Keyring {
    fn name(&self) -> &'static str {
        match self {
            Keyring::Undecided => "nothing",
            Keyring::Daemon(_) => "daemon",
            Keyring::InProcess(_) => "config",
        }
    }
}

/// Answers a pull's auth requests; collects warnings for the pull's error message.
pub struct AuthAnswerer {
    daemon_socket: PathBuf,
    config: Config,
    system: System,
    keyring: Keyring,
    warnings: Vec<String>,
}

impl AuthAnswerer {
    pub fn new(daemon_socket: PathBuf, config: Config, system: System) -> Self {
        Self {
            daemon_socket,
            config,
            system,
            keyring: Keyring::Undecided,
            warnings: Vec::new(),
        }
    }

    /// What went wrong while answering, one line each, without secrets.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The answer to one request; anonymous (with a warning) when the lookup fails.
    pub async fn answer(&mut self, request: &AuthRequest) -> AuthResponse {
        let target = match lookup_target(request) {
            Ok(target) => target,
            Err(e) => {
                self.warn(format!("containerd asked for credentials for {e}"));
                return AuthResponse::default();
            }
        };
        let answer = match tokio::time::timeout(ANSWER_DEADLINE, self.lookup(&target)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.warn(format!("no credentials for {target}: {e}"));
                KeychainAnswer::anonymous()
            }
            Err(_) => {
                self.warn(format!(
                    "no credentials for {target}: the lookup took longer than {ANSWER_DEADLINE:?}"
                ));
                KeychainAnswer::anonymous()
            }
        };
        if answer.auth_type == AuthType::Header {
            // registry.go's credCallback keeps a HEADER answer, but the resolver's
            // Credentials callback only passes username and secret on: containerd drops it.
            self.warn(format!(
                "the credential for {target} is a registry token (header); containerd's transfer service ignores those, so the pull is anonymous"
            ));
        }
        tracing::info!(
            host = %request.host,
            target = %target,
            auth_type = %answer.auth_type,
            source = %answer.source,
            via = self.keyring.name(),
            "answered containerd's auth request"
        );
        auth_response(&answer)
    }

    async fn lookup(&mut self, target: &Target) -> Result<KeychainAnswer, ClientError> {
        if matches!(self.keyring, Keyring::Undecided) {
            self.keyring = match DaemonClient::connect(&self.daemon_socket).await {
                Ok(client) => Keyring::Daemon(client),
                Err(ClientError::Unreachable { socket, reason }) => {
                    tracing::info!(socket = %socket.display(), %reason, "no credgate daemon; resolving credentials from the config");
                    Keyring::InProcess(Keychain::from_config(&self.config, &self.system))
                }
                Err(e) => return Err(e),
            };
        }
        match &self.keyring {
            Keyring::Daemon(client) => {
                Ok(KeychainAnswer::from_daemon(&client.lookup(target).await?))
            }
            Keyring::InProcess(keychain) => Ok(KeychainAnswer::from_decision(
                &keychain.lookup(target).await,
            )),
            Keyring::Undecided => unreachable!("decided above"),
        }
    }

    fn warn(&mut self, warning: String) {
        tracing::warn!("{warning}");
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, reference: &str) -> AuthRequest {
        AuthRequest {
            host: host.into(),
            reference: reference.into(),
            ..Default::default()
        }
    }

    fn answer(auth_type: AuthType, username: &str, secret: &str) -> KeychainAnswer {
        KeychainAnswer {
            auth_type,
            username: username.into(),
            secret: Secret::new(secret),
            expire_at: 0,
            source: "registry[0]".into(),
        }
    }

    #[test]
    fn docker_hub_hosts_fold_into_docker_io() {
        let target = lookup_target(&request(
            "registry-1.docker.io",
            "docker.io/library/busybox:latest",
        ))
        .unwrap();
        assert_eq!(target.to_string(), "docker.io/library/busybox");
    }

    #[test]
    fn the_host_asked_for_is_the_registry_and_the_reference_gives_the_repository() {
        let target = lookup_target(&request(
            "127.0.0.1:5000",
            "127.0.0.1:5000/group/sub/app:v1",
        ))
        .unwrap();
        assert_eq!(target.to_string(), "127.0.0.1:5000/group/sub/app");
        // A mirror from hosts.toml is asked about as itself.
        let target = lookup_target(&request(
            "mirror.test:443",
            "registry.test/group/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ))
        .unwrap();
        assert_eq!(target.to_string(), "mirror.test/group/app");
    }

    #[test]
    fn an_unparsable_reference_still_gives_a_registry_lookup() {
        let target = lookup_target(&request("registry.test", "::bad::")).unwrap();
        assert_eq!(target.to_string(), "registry.test");
        assert!(lookup_target(&request("", "registry.test/app")).is_err());
    }

    #[test]
    fn credentials_carry_username_and_secret() {
        let r = auth_response(&answer(AuthType::Credentials, "deploy", "pw"));
        assert_eq!(r.auth_type(), WireAuthType::Credentials);
        assert_eq!((r.username.as_str(), r.secret.as_str()), ("deploy", "pw"));
        assert_eq!(r.expire_at, None);
    }

    #[test]
    fn identity_tokens_are_refresh_without_a_username() {
        let r = auth_response(&answer(AuthType::Refresh, "<token>", "refresh-tok"));
        assert_eq!(r.auth_type(), WireAuthType::Refresh);
        assert_eq!(
            (r.username.as_str(), r.secret.as_str()),
            ("", "refresh-tok")
        );
    }

    #[test]
    fn registry_tokens_are_headers() {
        let r = auth_response(&answer(AuthType::Header, "", "Bearer abc"));
        assert_eq!(r.auth_type(), WireAuthType::Header);
        assert_eq!(r.secret, "Bearer abc");
    }

    #[test]
    fn anonymous_is_an_empty_response() {
        let r = auth_response(&KeychainAnswer::anonymous());
        assert_eq!(r, AuthResponse::default());
        assert_eq!(r.auth_type(), WireAuthType::None);
    }

    #[test]
    fn a_known_expiry_is_passed_on() {
        let mut a = answer(AuthType::Credentials, "u", "p");
        a.expire_at = 1_900_000_000;
        let r = auth_response(&a);
        assert_eq!(r.expire_at.map(|t| t.seconds), Some(1_900_000_000));
    }

    #[test]
    fn daemon_answers_map_one_to_one() {
        let response = api::LookupResponse {
            auth_type: api::AuthType::REFRESH.into(),
            username: "<token>".into(),
            secret: "tok".into(),
            expire_at: 5,
            source: "docker_config[0]".into(),
            ..Default::default()
        };
        let a = KeychainAnswer::from_daemon(&response);
        assert_eq!(a.auth_type, AuthType::Refresh);
        assert_eq!(a.secret.expose(), "tok");
        assert_eq!(a.expire_at, 5);
    }
}
