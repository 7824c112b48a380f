//! Real distribution registries (`docker-registry serve`, Debian's 2.8) on the node: TLS on
//! `<host>:443` with a certificate from the test CA (or from a CA of their own, or plain HTTP
//! on a port), filesystem storage in a temp dir, optionally in distribution's `proxy` mode (a
//! pull-through cache of another registry), and the access log and the registry's own log
//! (which names the user of every authorized request) in files the test reads.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::https::ClientRequest;
use crate::node::{node, HostLease};
use crate::pki::TestCa;
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

/// How clients reach a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// TLS on `<host>:443`, the certificate from the node's CA (every client trusts it).
    Tls,
    /// TLS on `<host>:443`, the certificate from a CA of the registry's own that the node
    /// does not trust ([`Registry::own_ca_pem`]).
    TlsFromOwnCa,
    /// Plain HTTP on `<host>:<port>`.
    PlainHttp { port: u16 },
}

/// distribution's `proxy` section: the registry is a read-only pull-through cache of
/// `remote_url`, logging in there as `username`.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub remote_url: String,
    pub username: String,
    pub password: String,
}

/// Builds a [`Registry`]: [`Registry::start`] for the usual one.
pub struct RegistryBuilder {
    host: String,
    auth: RegistryAuth,
    listener: Listener,
    proxy: Option<Proxy>,
    log_users: bool,
}

impl RegistryBuilder {
    /// How clients reach it (default [`Listener::Tls`]).
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listener = listener;
        self
    }

    /// A pull-through cache of `proxy.remote_url` (which must answer when it starts:
    /// distribution asks it for its token realm then).
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Logs at debug level, where distribution names the user of every manifest and blob
    /// request ([`Registry::content_requests`]); off by default, since it costs the registry
    /// time on every request (benchmarks measure through it).
    pub fn log_users(mut self) -> Self {
        self.log_users = true;
        self
    }

    /// Starts `docker-registry serve` and waits until `/v2/` answers.
    pub fn start(self) -> Registry {
        let RegistryBuilder {
            host,
            auth,
            listener,
            proxy,
            log_users,
        } = self;
        let log_level = if log_users { "debug" } else { "info" };
        let host = host.as_str();
        let node = node();
        let lease = node.lease(host);
        let ip = node.ip(host);
        let dir = tempfile::tempdir().expect("registry temp dir");
        let own_ca = (listener == Listener::TlsFromOwnCa).then(TestCa::generate);
        let auth_config = write_auth(dir.path(), &auth);
        let mut config = json!({
            "version": 0.1,
            "log": {"level": log_level, "formatter": "text", "accesslog": {"disabled": false}},
            "storage": {
                "filesystem": {"rootdirectory": dir.path().join("storage")},
                "delete": {"enabled": true},
                "maintenance": {"uploadpurging": {"enabled": false}},
            },
            "http": {
                "addr": format!("{ip}:{}", listener.port()),
                "secret": format!("credgate-test-{}", std::process::id()),
            },
        });
        if !matches!(listener, Listener::PlainHttp { .. }) {
            let ca = own_ca.as_ref().unwrap_or_else(|| node.ca());
            let files = ca.issue(&node.names(host)).write(dir.path(), "tls");
            config["http"]["tls"] = json!({"certificate": files.cert, "key": files.key});
        }
        if let Some(auth) = auth_config {
            config["auth"] = auth;
        }
        if let Some(proxy) = proxy {
            config["proxy"] = json!({
                "remoteurl": proxy.remote_url,
                "username": proxy.username,
                "password": proxy.password,
            });
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
            listener,
            own_ca,
            log_users,
            child: ChildGuard::new(child, &format!("docker-registry on {host}")),
            dir,
            _lease: lease,
        };
        registry.wait_ready();
        registry
    }
}

impl Listener {
    fn port(self) -> u16 {
        match self {
            Listener::Tls | Listener::TlsFromOwnCa => 443,
            Listener::PlainHttp { port } => port,
        }
    }
}

/// A running registry; dropping it kills it and frees its host.
pub struct Registry {
    host: String,
    ip: Ipv4Addr,
    listener: Listener,
    own_ca: Option<TestCa>,
    log_users: bool,
    dir: TempDir,
    child: ChildGuard,
    _lease: HostLease,
}

impl Registry {
    /// Starts `docker-registry serve` on `host:443` (a node host) and waits until `/v2/`
    /// answers over TLS.
    pub fn start(auth: RegistryAuth, host: &str) -> Registry {
        Registry::builder(host, auth).start()
    }

    /// A registry on `host` (a node host) letting in `auth`, to be configured further.
    pub fn builder(host: &str, auth: RegistryAuth) -> RegistryBuilder {
        RegistryBuilder {
            host: host.to_string(),
            auth,
            listener: Listener::Tls,
            proxy: None,
            log_users: false,
        }
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
            match self.ping() {
                Ok(200 | 401) => return,
                Ok(status) => last = format!("status {status}"),
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

    /// `GET /v2/` the way a client that trusts the registry's CA would send it: the status.
    fn ping(&self) -> Result<u16, String> {
        let get = ClientRequest::get(&self.host, "/v2/");
        let response = match (self.listener, &self.own_ca) {
            (Listener::PlainHttp { port }, _) => {
                let address = std::net::SocketAddr::from((self.ip, port));
                // Connected means listening; `mirror::send` then answers or panics.
                std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
                return Ok(crate::mirror::send(address, "GET", "/v2/", None, &[]).status);
            }
            (_, Some(ca)) => crate::https::request_trusting(ca.cert_pem(), get),
            (_, None) => crate::https::request(get),
        };
        response.map(|response| response.status.as_u16())
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The registry's URL as a hosts.toml names it: `https://<host>`, or
    /// `http://<host>:<port>` for plain HTTP.
    pub fn url(&self) -> String {
        match self.listener {
            Listener::PlainHttp { port } => format!("http://{}:{port}", self.host),
            Listener::Tls | Listener::TlsFromOwnCa => format!("https://{}", self.host),
        }
    }

    /// The PEM certificate of the registry's own CA ([`Listener::TlsFromOwnCa`]).
    pub fn own_ca_pem(&self) -> Option<&str> {
        self.own_ca.as_ref().map(TestCa::cert_pem)
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

    /// Every manifest and blob request the registry let in so far, with the user it
    /// authenticated (see [`ContentRequest`]). Panics unless it was started with
    /// [`RegistryBuilder::log_users`]: without it the answer would always be empty.
    pub fn content_requests(&self) -> Vec<ContentRequest> {
        assert!(
            self.log_users,
            "docker-registry on {} logs no users: start it with RegistryBuilder::log_users",
            self.host
        );
        self.log()
            .lines()
            .filter_map(ContentRequest::parse)
            .collect()
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

/// One request for a manifest or a blob the registry let in, as its own log records it at
/// debug level (`msg=GetImageManifest` or `msg=GetBlob`, written before the answer: the
/// access log has the status), with the user it authenticated: the access log names none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentRequest {
    /// `auth.user.name`: the htpasswd user or a token's subject; None when the registry
    /// has no `auth`.
    pub user: Option<String>,
    pub method: String,
    /// As requested, query included.
    pub uri: String,
    pub user_agent: String,
}

impl ContentRequest {
    /// A logrus text line: `time="…" level=debug msg=GetBlob key=value …`, values quoted
    /// (with `\"` and `\\` escapes) when they hold spaces or quotes.
    pub fn parse(line: &str) -> Option<ContentRequest> {
        let fields = logfmt(line);
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        if !matches!(field("msg")?.as_str(), "GetImageManifest" | "GetBlob") {
            return None;
        }
        Some(ContentRequest {
            user: field("auth.user.name"),
            method: field("http.request.method")?,
            uri: field("http.request.uri")?,
            user_agent: field("http.request.useragent").unwrap_or_default(),
        })
    }
}

/// The `key=value` pairs of a logrus text line, quoted values unescaped.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ' ')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return fields;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ' ')));
        }
        fields.push((key, value));
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

#[cfg(test)]
mod tests {
    use super::ContentRequest;

    #[test]
    fn content_requests_are_read_from_distributions_debug_log() {
        let line = r#"time="2025-01-02T03:04:05.6Z" level=debug msg=GetImageManifest auth.user.name=puller go.version=go1.19.8 http.request.host=mirror.test http.request.id=4a2 http.request.method=GET http.request.remoteaddr="127.0.0.1:40022" http.request.uri="/v2/group/sub/app/manifests/v1?x=\"y\"" http.request.useragent="containerd/v1.7.24 (go)" vars.name="group/sub/app" vars.reference=v1"#;
        assert_eq!(
            ContentRequest::parse(line),
            Some(ContentRequest {
                user: Some("puller".into()),
                method: "GET".into(),
                uri: r#"/v2/group/sub/app/manifests/v1?x="y""#.into(),
                user_agent: "containerd/v1.7.24 (go)".into(),
            })
        );
        let blob = r#"level=debug msg=GetBlob http.request.method=HEAD http.request.uri="/v2/a/blobs/sha256:0" http.request.useragent=Go-http-client/2.0"#;
        assert_eq!(ContentRequest::parse(blob).unwrap().user, None);
        let other = line.replace("msg=GetImageManifest", "msg=\"authorized request\"");
        assert_eq!(ContentRequest::parse(&other), None);
        assert_eq!(ContentRequest::parse("garbage = \"unterminated"), None);
    }
}
