//! Real distribution registries (`docker-registry serve`, Debian's 2.8) on the node: TLS on
//! `<host>:443` with a certificate from the test CA, filesystem storage in a temp dir, and
//! the access log in a file the test reads.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::node::{node, HostLease};
use crate::process::{read_lossy, ChildGuard, DAEMON_PATH};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Who the registry lets in.
#[derive(Clone, Debug)]
pub enum RegistryAuth {
    /// Anyone may pull and push.
    Anonymous,
    /// HTTP Basic against an htpasswd file (bcrypt) of these users and passwords.
    Basic { users: Vec<(String, String)> },
    /// Bearer tokens from a token server ([`crate::token_server::TokenServer::registry_auth`]).
    Token(TokenAuth),
}

impl RegistryAuth {
    /// `Basic` with `(user, password)` pairs.
    pub fn basic(users: &[(&str, &str)]) -> RegistryAuth {
        RegistryAuth::Basic {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        }
    }
}

/// distribution's `auth.token` settings.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// The token signing certificate (PEM), written as `rootcertbundle`.
    pub root_cert_pem: String,
}

/// A running registry; dropping it kills it and frees its host.
pub struct Registry {
    host: String,
    ip: Ipv4Addr,
    dir: TempDir,
    child: ChildGuard,
    _lease: HostLease,
}

impl Registry {
    /// Starts `docker-registry serve` on `host:443` (a node host) and waits until `/v2/`
    /// answers over TLS.
    pub fn start(auth: RegistryAuth, host: &str) -> Registry {
        let node = node();
        let lease = node.lease(host);
        let ip = node.ip(host);
        let dir = tempfile::tempdir().expect("registry temp dir");
        let files = node.ca().issue(&node.names(host)).write(dir.path(), "tls");
        let auth_config = write_auth(dir.path(), &auth);
        let mut config = json!({
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": false}},
            "storage": {
                "filesystem": {"rootdirectory": dir.path().join("storage")},
                "delete": {"enabled": true},
                "maintenance": {"uploadpurging": {"enabled": false}},
            },
            "http": {
                "addr": format!("{ip}:443"),
                "secret": format!("credgate-test-{}", std::process::id()),
                "tls": {"certificate": files.cert, "key": files.key},
            },
        });
        if let Some(auth) = auth_config {
            config["auth"] = auth;
        }
        let config_path = dir.path().join("config.yml");
        let yaml = serde_yaml_ng::to_string(&config).expect("registry config YAML");
        std::fs::write(&config_path, yaml).expect("write config.yml");
        let program = crate::require_program("docker-registry", "docker-registry");
        let child = Command::new(program)
            .arg("serve")
            .arg(&config_path)
            .env_clear()
            .env("PATH", DAEMON_PATH)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("access.log")).expect("access.log"))
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("registry.log"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
        let mut registry = Registry {
            host: host.to_string(),
            ip,
            child: ChildGuard::new(child, &format!("docker-registry on {host}")),
            dir,
            _lease: lease,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait() {
                panic!(
                    "docker-registry on {} exited ({status}) before it was ready:\n{}",
                    self.host,
                    self.log()
                );
            }
            match crate::https::get(&self.host, "/v2/", &[]) {
                Ok(response) if matches!(response.status.as_u16(), 200 | 401) => return,
                Ok(response) => last = format!("status {}", response.status),
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry on {} not ready after {READY_TIMEOUT:?} (last: {last}):\n{}",
            self.host,
            self.log()
        );
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `<host>/<repository_and_tag>`, e.g. `registry.test/group/sub/app:v1`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host)
    }

    /// The registry's temp dir (config.yml, tls.crt, storage/, the logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The access log so far (combined log format, one request a line).
    pub fn access_log(&self) -> String {
        read_lossy(&self.dir.path().join("access.log"))
    }

    /// The access log so far, parsed.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.access_log()
            .lines()
            .filter_map(AccessLogEntry::parse)
            .collect()
    }

    /// Whether the registry answered `method path` (path without the query) with `status`.
    pub fn served(&self, method: &str, path: &str, status: u16) -> bool {
        self.requests()
            .iter()
            .any(|r| r.method == method && r.path_without_query() == path && r.status == status)
    }

    /// The registry's own log so far (startup, errors, auth failures).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("registry.log"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }
}

/// One line of the access log (combined log format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// As requested, query included.
    pub path: String,
    pub status: u16,
    pub user_agent: String,
}

impl AccessLogEntry {
    /// `IP - USER [DATE] "METHOD PATH PROTO" STATUS SIZE "REFERER" "AGENT"`.
    pub fn parse(line: &str) -> Option<AccessLogEntry> {
        let quoted: Vec<&str> = line.split('"').collect();
        let mut request = quoted.get(1)?.split(' ');
        let method = request.next()?.to_string();
        let path = request.next()?.to_string();
        let status = quoted.get(2)?.split_whitespace().next()?.parse().ok()?;
        Some(AccessLogEntry {
            method,
            path,
            status,
            user_agent: quoted.get(5).unwrap_or(&"").to_string(),
        })
    }

    pub fn path_without_query(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(&self.path, |(path, _)| path)
    }
}

/// The `auth` section of config.yml, writing the files it names into `dir`.
fn write_auth(dir: &Path, auth: &RegistryAuth) -> Option<serde_json::Value> {
    Some(match auth {
        RegistryAuth::Anonymous => return None,
        RegistryAuth::Basic { users } => {
            let path = dir.join("htpasswd");
            std::fs::write(&path, htpasswd(users)).expect("write htpasswd");
            json!({"htpasswd": {"realm": "credgate-test", "path": path}})
        }
        RegistryAuth::Token(token) => {
            let path = dir.join("token-signing.pem");
            std::fs::write(&path, &token.root_cert_pem).expect("write rootcertbundle");
            json!({"token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": path,
            }})
        }
    })
}

/// htpasswd lines with bcrypt hashes (`$2y$`, as `htpasswd -B` writes them).
fn htpasswd(users: &[(String, String)]) -> String {
    users
        .iter()
        .map(|(user, password)| {
            let hash = bcrypt::hash_with_result(password, 5)
                .expect("bcrypt")
                .format_for_version(bcrypt::Version::TwoY);
            format!("{user}:{hash}\n")
        })
        .collect()
}
