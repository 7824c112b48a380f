//! Real distribution registries (`docker-registry serve`) on 127.0.0.1 ports, for tests that
//! need no node namespace: mirrors as hosts.toml names them (plain http, or TLS with a CA of
//! their own and client certificates), with htpasswd users, seeded with an image by crane.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::attack::free_port;
use crate::images::{sha256, write_layer_with};
use crate::pki::TestCa;
use crate::process::{read_lossy, ChildGuard};

const READY: Duration = Duration::from_secs(20);

/// What a registry asks of its clients.
#[derive(Default)]
pub struct RegistrySetup {
    /// htpasswd users; none: anonymous.
    pub users: Vec<(&'static str, &'static str)>,
    /// TLS certificate and key; none: plain http.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CA whose client certificates the registry requires (`http.tls.clientcas`).
    pub client_ca: Option<PathBuf>,
}

/// A `docker-registry serve` on a 127.0.0.1 port over `storage`.
pub struct LocalRegistry {
    pub addr: SocketAddr,
    dir: TempDir,
    child: Option<ChildGuard>,
}

impl LocalRegistry {
    pub fn start(storage: &Path, setup: &RegistrySetup) -> LocalRegistry {
        Self::start_at(storage, setup, free_port().port())
    }

    /// [`LocalRegistry::start`] on 127.0.0.1:`port`, for a registry whose address a test
    /// must write down before it runs (a hosts dir named after it).
    pub fn start_at(storage: &Path, setup: &RegistrySetup, port: u16) -> LocalRegistry {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().unwrap();
        let mut http = json!({
            "addr": addr.to_string(),
            "secret": format!("credgate-mirror-test-{}", std::process::id()),
        });
        if let Some((cert, key)) = &setup.tls {
            http["tls"] = json!({"certificate": cert, "key": key});
            if let Some(client_ca) = &setup.client_ca {
                http["tls"]["clientcas"] = json!([client_ca]);
            }
        }
        let mut config = json!({
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": false}},
            "storage": {
                "filesystem": {"rootdirectory": storage},
                "maintenance": {"uploadpurging": {"enabled": false}},
            },
            "http": http,
        });
        if !setup.users.is_empty() {
            let htpasswd = dir.path().join("htpasswd");
            let lines: String = setup
                .users
                .iter()
                .map(|(user, password)| {
                    let hash = bcrypt::hash_with_result(password, 5)
                        .unwrap()
                        .format_for_version(bcrypt::Version::TwoY);
                    format!("{user}:{hash}\n")
                })
                .collect();
            std::fs::write(&htpasswd, lines).unwrap();
            config["auth"] = json!({"htpasswd": {"realm": "mirror", "path": htpasswd}});
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
        let program = crate::require_program("docker-registry", "docker-registry");
        let child = Command::new(program)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("docker-registry runs");
        let mut registry = LocalRegistry {
            addr,
            child: Some(ChildGuard::new(
                child,
                &format!("docker-registry on {addr}"),
            )),
            dir,
        };
        registry.wait_ready();
        registry
    }

    /// docker-registry binds only once its config loaded, so an accepted connection is ready.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait() {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry on {} not ready:\n{}",
            self.addr,
            self.log()
        );
    }

    /// Kills it: the port then refuses connections.
    pub fn stop(&mut self) {
        self.child.take();
    }

    pub fn access_log(&self) -> String {
        read_lossy(&self.dir.path().join("access.log"))
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("registry.log"))
    }

    /// Access-log lines of requests to `repository`'s manifests and blobs.
    pub fn content_requests(&self, repository: &str) -> Vec<String> {
        let manifests = format!("/v2/{repository}/manifests/");
        let blobs = format!("/v2/{repository}/blobs/");
        self.access_log()
            .lines()
            .filter(|l| l.contains(&manifests) || l.contains(&blobs))
            .map(str::to_string)
            .collect()
    }
}

/// An image in a registry's storage: its manifest digest and its blobs' digests.
pub struct Seeded {
    pub manifest: String,
    pub blobs: Vec<String>,
}

/// Pushes a one-layer image `repository:v1` into `storage` through a throwaway anonymous
/// registry, with crane.
pub fn seed(storage: &Path, repository: &str) -> Seeded {
    let registry = LocalRegistry::start(storage, &RegistrySetup::default());
    let scratch = tempfile::tempdir().unwrap();
    let layer = scratch.path().join("layer.tar");
    write_layer_with(&layer, &format!("served by a mirror: {repository}\n"));
    let reference = format!("{}/{repository}:v1", registry.addr);
    let crane = |args: &[&str]| {
        let output = Command::new(crate::tool("crane"))
            .args(args)
            .env("HOME", scratch.path())
            .env("DOCKER_CONFIG", scratch.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "crane {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    crane(&["append", "-f", layer.to_str().unwrap(), "-t", &reference]);
    let manifest = crane(&["manifest", &reference]);
    let parsed: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let mut blobs = vec![parsed["config"]["digest"].as_str().unwrap().to_string()];
    for layer in parsed["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_string());
    }
    Seeded {
        manifest: sha256(manifest.as_bytes()),
        blobs,
    }
}

/// A CA of the mirror's own (nobody else trusts it), its server certificate for 127.0.0.1
/// and a client certificate, written as PEM files into `dir`.
pub struct MirrorPki {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

pub fn mirror_pki(dir: &Path) -> MirrorPki {
    let ca = TestCa::generate();
    let ca_path = dir.join("mirror-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let server = ca.issue(&["127.0.0.1"]).write(dir, "server");
    let client = ca.issue_client("credgate").write(dir, "client");
    MirrorPki {
        ca: ca_path,
        server: (server.cert, server.key),
        client: (client.cert, client.key),
    }
}
