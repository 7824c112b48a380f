//! Real registry clients (crane, oras, skopeo) run against the node with a docker config the
//! test writes, in an environment built here (never the test process's own).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use tempfile::TempDir;

use crate::node::node;
use crate::process::{run_bounded, CommandOutput};

use crate::pass_store::SYSTEM_PATH;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A registry client the tests drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Crane,
    Oras,
    Skopeo,
}

impl Client {
    pub const ALL: [Client; 3] = [Client::Crane, Client::Oras, Client::Skopeo];

    pub fn program(self) -> PathBuf {
        crate::tool(match self {
            Client::Crane => "crane",
            Client::Oras => "oras",
            Client::Skopeo => "skopeo",
        })
    }
}

/// A docker `config.json`, built up entry by entry.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    auths: Map<String, Value>,
    cred_helpers: Map<String, Value>,
    creds_store: Option<String>,
}

impl DockerConfig {
    pub fn new() -> DockerConfig {
        DockerConfig::default()
    }

    /// `auths.<key>.auth` = base64 `user:password` (the key as written: `host`, `host:443`, ...).
    pub fn auth(mut self, key: &str, username: &str, password: &str) -> Self {
        let auth = STANDARD.encode(format!("{username}:{password}"));
        self.auths.insert(key.to_string(), json!({ "auth": auth }));
        self
    }

    /// `auths.<key>.identitytoken` (with the user name docker stores beside it).
    pub fn identity_token(mut self, key: &str, username: &str, token: &str) -> Self {
        let auth = STANDARD.encode(format!("{username}:"));
        self.auths.insert(
            key.to_string(),
            json!({ "auth": auth, "identitytoken": token }),
        );
        self
    }

    /// `credHelpers.<key>` = `helper` (the client runs `docker-credential-<helper>`).
    pub fn cred_helper(mut self, key: &str, helper: &str) -> Self {
        self.cred_helpers.insert(key.to_string(), json!(helper));
        self
    }

    /// `credsStore` = `helper`.
    pub fn creds_store(mut self, helper: &str) -> Self {
        self.creds_store = Some(helper.to_string());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut config = Map::new();
        config.insert("auths".into(), Value::Object(self.auths.clone()));
        if !self.cred_helpers.is_empty() {
            config.insert(
                "credHelpers".into(),
                Value::Object(self.cred_helpers.clone()),
            );
        }
        if let Some(store) = &self.creds_store {
            config.insert("credsStore".into(), json!(store));
        }
        Value::Object(config)
    }
}

/// A client's world: HOME, `$HOME/.docker/config.json` (also `DOCKER_CONFIG`), a bin dir in
/// front of PATH for credential helpers, the node's CA bundle as `SSL_CERT_FILE`, and an empty
/// `XDG_RUNTIME_DIR` (so skopeo finds no stray auth.json).
pub struct ClientEnv {
    dir: TempDir,
    path: Vec<PathBuf>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl ClientEnv {
    pub fn new(config: &DockerConfig) -> ClientEnv {
        node();
        let dir = tempfile::tempdir().expect("client temp dir");
        for sub in ["home/.docker", "bin", "run", "out"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("client dirs");
        }
        let env = ClientEnv {
            path: vec![dir.path().join("bin")],
            dir,
            env: Vec::new(),
            timeout: CLIENT_TIMEOUT,
        };
        env.write_docker_config(config);
        env
    }

    /// Replaces config.json.
    pub fn write_docker_config(&self, config: &DockerConfig) {
        let text = serde_json::to_string_pretty(&config.to_json()).expect("config JSON");
        std::fs::write(self.docker_config_path(), text).expect("write config.json");
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The `DOCKER_CONFIG` directory.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.home().join(".docker")
    }

    pub fn docker_config_path(&self) -> PathBuf {
        self.docker_config_dir().join("config.json")
    }

    /// The directory first on PATH, for `docker-credential-*` programs.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Makes `docker-credential-<name>` (in [`Self::bin_dir`]) a symlink to `program`, e.g.
    /// `link_credential_helper("credgate", <path of the credgate binary>)`.
    pub fn link_credential_helper(&self, name: &str, program: &Path) -> &Self {
        let link = self.bin_dir().join(format!("docker-credential-{name}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(program, &link).expect("symlink credential helper");
        self
    }

    /// Puts `dir` on PATH after the bin dir and before the system directories.
    pub fn add_path(&mut self, dir: &Path) -> &mut Self {
        self.path.push(dir.to_path_buf());
        self
    }

    /// Sets one more environment variable for every client run.
    pub fn set_env(&mut self, key: &str, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn set_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// A scratch directory kept as long as the env.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The client's program with this environment and nothing else.
    pub fn command(&self, client: Client) -> Command {
        let mut command = Command::new(client.program());
        let mut path = self.path.clone();
        path.extend(std::env::split_paths(SYSTEM_PATH));
        command
            .env_clear()
            .env("PATH", std::env::join_paths(path).expect("PATH"))
            .env("HOME", self.home())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env("SSL_CERT_FILE", node().ca_bundle())
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
        command
    }

    /// Runs `client` with `args`, bounded by the env's timeout.
    pub fn run(&self, client: Client, args: &[&str]) -> CommandOutput {
        let mut command = self.command(client);
        command.args(args);
        run_bounded(&mut command, &self.scratch(), self.timeout)
    }

    /// Fetches the manifest of `reference` (`host/repo:tag`): `crane manifest`,
    /// `oras manifest fetch`, `skopeo inspect --raw`.
    pub fn manifest(&self, client: Client, reference: &str) -> CommandOutput {
        let docker = format!("docker://{reference}");
        match client {
            Client::Crane => self.run(client, &["manifest", reference]),
            Client::Oras => self.run(client, &["manifest", "fetch", reference]),
            Client::Skopeo => self.run(client, &["inspect", "--raw", &docker]),
        }
    }

    /// Pulls manifest and blobs of `reference` into a fresh directory under the scratch dir:
    /// `crane pull` (tarball), `oras copy` to an OCI layout (oras pull skips layers without
    /// a title), `skopeo copy` to `dir:`.
    pub fn pull(&self, client: Client, reference: &str) -> CommandOutput {
        let out = self
            .scratch()
            .join(format!("pull-{}", crate::process::unique()));
        let out = out.to_string_lossy().into_owned();
        match client {
            Client::Crane => self.run(client, &["pull", reference, &format!("{out}.tar")]),
            Client::Oras => self.run(
                client,
                &[
                    "copy",
                    "--to-oci-layout",
                    reference,
                    &format!("{out}:pulled"),
                ],
            ),
            Client::Skopeo => self.run(
                client,
                &[
                    "--insecure-policy",
                    "copy",
                    &format!("docker://{reference}"),
                    &format!("dir:{out}"),
                ],
            ),
        }
    }

    /// Copies `source` to `destination` (both `host/repo:tag`) registry to registry.
    pub fn copy(&self, client: Client, source: &str, destination: &str) -> CommandOutput {
        match client {
            Client::Crane => self.run(client, &["copy", source, destination]),
            Client::Oras => self.run(client, &["copy", source, destination]),
            Client::Skopeo => self.run(
                client,
                &[
                    "--insecure-policy",
                    "copy",
                    &format!("docker://{source}"),
                    &format!("docker://{destination}"),
                ],
            ),
        }
    }
}
