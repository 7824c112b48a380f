//! The mirrors a node lists ahead of the GitLab stand-in ([`crate::gitlab`]) in
//! `registry.test/hosts.toml`: real distribution registries in `proxy` mode, so each holds
//! nothing until asked and fetches from `registry.test` logged in as
//! [`gitlab::CACHE_USER`](crate::gitlab::CACHE_USER), never as a client's user. Three kinds:
//!
//! - [`Mirror::pull_through_cache`]: `https://mirror.test`, HTTP Basic against its own
//!   htpasswd ([`MIRROR_USER`]), a certificate from the node's CA: a Harbor or Artifactory
//!   proxy cache;
//! - [`Mirror::plain_http`]: `http://plain-mirror.test:5000`, open to anyone;
//! - [`Mirror::own_ca`]: `https://ca-mirror.test`, HTTP Basic, its certificate from a CA of
//!   its own that the node does not trust and only hosts.toml's `ca` names.
//!
//! Its own log ([`Registry::content_requests`]) says which user each mirror served; the
//! upstream's (started by [`gitlab::start_logging_users`](crate::gitlab::start_logging_users))
//! and the token server's say who fetched from `registry.test`. The upstream must run first:
//! distribution asks it for its token realm when it starts.

use std::path::{Path, PathBuf};

use crate::gitlab::{CACHE_PW, CACHE_USER, REGISTRY_HOST};
use crate::registry::{Listener, Proxy, Registry, RegistryAuth};

/// The pull-through cache's host name in the node.
pub const MIRROR_HOST: &str = "mirror.test";
/// The plain-HTTP mirror's host name and port.
pub const PLAIN_MIRROR_HOST: &str = "plain-mirror.test";
pub const PLAIN_MIRROR_PORT: u16 = 5000;
/// The mirror with a CA of its own.
pub const CA_MIRROR_HOST: &str = "ca-mirror.test";
/// The user the mirrors with htpasswd let in (the mirror's own credential, not the
/// upstream's).
pub const MIRROR_USER: &str = "puller";
/// [`MIRROR_USER`]'s password; distinctive, so tests can search logs for it.
pub const MIRROR_PW: &str = "puller-pw-9c4";

/// A running mirror of `registry.test`; dropping it stops it (a mirror that is down).
pub struct Mirror {
    registry: Registry,
}

impl Mirror {
    /// `https://mirror.test`, letting in [`MIRROR_USER`] only.
    pub fn pull_through_cache() -> Mirror {
        Mirror::start(MIRROR_HOST, mirror_users(), Listener::Tls)
    }

    /// `http://plain-mirror.test:5000`, open to anyone.
    pub fn plain_http() -> Mirror {
        let listener = Listener::PlainHttp {
            port: PLAIN_MIRROR_PORT,
        };
        Mirror::start(PLAIN_MIRROR_HOST, RegistryAuth::Anonymous, listener)
    }

    /// `https://ca-mirror.test` with a certificate from its own CA, letting in
    /// [`MIRROR_USER`] only.
    pub fn own_ca() -> Mirror {
        Mirror::start(CA_MIRROR_HOST, mirror_users(), Listener::TlsFromOwnCa)
    }

    fn start(host: &str, auth: RegistryAuth, listener: Listener) -> Mirror {
        let registry = Registry::builder(host, auth)
            .listener(listener)
            .log_users()
            .proxy(Proxy {
                remote_url: format!("https://{REGISTRY_HOST}"),
                username: CACHE_USER.to_string(),
                password: CACHE_PW.to_string(),
            })
            .start();
        Mirror { registry }
    }

    /// The registry behind it: its logs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Its host key as hosts.toml writes it (`https://mirror.test`).
    pub fn url(&self) -> String {
        self.registry.url()
    }

    /// Writes its own CA's certificate to `dir/<file_name>` (for hosts.toml's `ca`); panics
    /// for a mirror whose certificate the node's CA issued.
    pub fn write_own_ca(&self, dir: &Path, file_name: &str) -> PathBuf {
        let pem = self
            .registry
            .own_ca_pem()
            .unwrap_or_else(|| panic!("{} has no CA of its own", self.url()));
        std::fs::create_dir_all(dir).expect("mkdir for the CA");
        let path = dir.join(file_name);
        std::fs::write(&path, pem).expect("write the mirror's CA");
        path
    }

    /// Its `[host."<url>"]` table for pulls, with `ca` when given (as written: relative
    /// paths are against the hosts.toml's directory).
    pub fn hosts_entry(&self, ca: Option<&str>) -> String {
        let mut entry = format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            self.url()
        );
        if let Some(ca) = ca {
            entry.push_str(&format!("  ca = {ca:?}\n"));
        }
        entry
    }

    /// Who it let in for content (manifests, blobs) so far, in order, one per request: the
    /// user, or `anonymous` for an open mirror.
    pub fn content_served_to(&self) -> Vec<String> {
        self.registry
            .content_requests()
            .into_iter()
            .map(|r| r.user.unwrap_or_else(|| "anonymous".to_string()))
            .collect()
    }
}

/// `registry.test/hosts.toml` as an operator writes it: `entries` (mirrors' host tables) in
/// order, then the upstream as `server`.
pub fn hosts_toml(entries: &[String]) -> String {
    let mut text =
        format!("# pull through the mirrors first\nserver = \"https://{REGISTRY_HOST}\"\n");
    for entry in entries {
        text.push('\n');
        text.push_str(entry);
    }
    text
}

fn mirror_users() -> RegistryAuth {
    RegistryAuth::basic(&[(MIRROR_USER, MIRROR_PW)])
}
