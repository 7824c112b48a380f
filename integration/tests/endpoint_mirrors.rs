//! Mirrors through the gate, against real distribution registries (`docker-registry serve`) on
//! 127.0.0.1 ports, so no node namespace is needed: credgate's endpoint (in-process, with the
//! real `Upstream` and its SSRF boundary as configured) receives requests exactly as containerd
//! sends them to a fronted host — `GET /mirror/<n>/v2/<name>/…?ns=<registry>` with
//! `X-Credgate-Secret` and `X-Credgate-Mirror` — and must dial the mirror the hosts.toml names,
//! with that host's own settings and the credential it gets, or hand over.
//!
//! No `[[registry]]` entry names a mirror's host unless the test is about its credential, so
//! a mirror on 127.0.0.1 is reachable only because hosts.toml names it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate::config::Config;
use credgate::daemon::Daemon;
use credgate::endpoint::{serve_endpoint, EndpointState, HttpServer};
use credgate::keychain::Keychain;
use credgate::metrics::Metrics;
use credgate::mirrors::Mirrors;
use credgate::secret::MirrorSecret;
use credgate::system::System;
use credgate::upstream::{Upstream, UpstreamPolicy};
use credgate_integration::clients::DockerConfig;
use credgate_integration::images::{sha256, write_layer_with};
use credgate_integration::mirror::{send, MirrorResponse, MANIFEST_ACCEPT};
use credgate_integration::process::{read_lossy, ChildGuard};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tempfile::TempDir;

const SECRET: &str = "7a7e9a7e7a7e9a7e7a7e9a7e7a7e9a7e7a7e9a7e7a7e9a7e7a7e9a7e7a7e9a7e";
/// The upstream registry in `ns`. It does not exist: every byte a test sees came from a mirror.
const UPSTREAM: &str = "registry.test";
const READY: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ real registries

/// What a registry asks of its clients.
#[derive(Default)]
struct RegistrySetup {
    /// htpasswd users; none: anonymous.
    users: Vec<(&'static str, &'static str)>,
    /// TLS certificate and key; none: plain http.
    tls: Option<(PathBuf, PathBuf)>,
    /// CA whose client certificates the registry requires (`http.tls.clientcas`).
    client_ca: Option<PathBuf>,
}

/// A `docker-registry serve` on a 127.0.0.1 port over `storage`.
struct LocalRegistry {
    addr: SocketAddr,
    dir: TempDir,
    child: Option<ChildGuard>,
}

impl LocalRegistry {
    fn start(storage: &Path, setup: &RegistrySetup) -> LocalRegistry {
        let addr = free_port();
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
        let program = credgate_integration::require_program("docker-registry", "docker-registry");
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
    fn stop(&mut self) {
        self.child.take();
    }

    fn access_log(&self) -> String {
        read_lossy(&self.dir.path().join("access.log"))
    }

    fn log(&self) -> String {
        read_lossy(&self.dir.path().join("registry.log"))
    }

    /// Access-log lines of requests to `repository`'s manifests and blobs.
    fn content_requests(&self, repository: &str) -> Vec<String> {
        let manifests = format!("/v2/{repository}/manifests/");
        let blobs = format!("/v2/{repository}/blobs/");
        self.access_log()
            .lines()
            .filter(|l| l.contains(&manifests) || l.contains(&blobs))
            .map(str::to_string)
            .collect()
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// An image in a registry's storage: its manifest digest and its blobs' digests.
struct Seeded {
    manifest: String,
    blobs: Vec<String>,
}

/// Pushes a one-layer image `repository:v1` into `storage` through a throwaway anonymous
/// registry, with crane.
fn seed(storage: &Path, repository: &str) -> Seeded {
    let registry = LocalRegistry::start(storage, &RegistrySetup::default());
    let scratch = tempfile::tempdir().unwrap();
    let layer = scratch.path().join("layer.tar");
    write_layer_with(&layer, &format!("served by a mirror: {repository}\n"));
    let reference = format!("{}/{repository}:v1", registry.addr);
    let crane = |args: &[&str]| {
        let output = Command::new(credgate_integration::tool("crane"))
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

// ------------------------------------------------------------------ TLS material

/// A CA of the mirror's own (nobody else trusts it), its server certificate for 127.0.0.1
/// and a client certificate, written as PEM files into `dir`.
struct MirrorPki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn mirror_pki(dir: &Path) -> MirrorPki {
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mirror's own CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let ca = dir.join("mirror-ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    MirrorPki {
        ca,
        server: leaf(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        ),
        client: leaf(
            vec!["credgate".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        ),
    }
}

// ------------------------------------------------------------------ credgate's endpoint

/// credgate's endpoint in front of the real upstream, configured by `config` (its
/// `[containerd] hosts_dir` is the test's).
struct Gate {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _server: HttpServer,
    runtime: tokio::runtime::Runtime,
}

impl Gate {
    fn start(config: &str, dir: &Path) -> Gate {
        let config_path = dir.join("credgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let config = Config::load(&config_path).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let server = runtime.block_on(async {
            let keychain = Keychain::from_config(&config, &System::real(Vec::new()));
            let daemon = Arc::new(Daemon::new(keychain, vec![0]));
            let upstream =
                Upstream::new(UpstreamPolicy::from_config(&config), metrics.clone()).unwrap();
            let state = EndpointState::new(
                daemon,
                Arc::new(upstream),
                MirrorSecret::new(SECRET),
                metrics.clone(),
            )
            .with_mirrors(Mirrors::from_config(&config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            serve_endpoint(listener, Arc::new(state))
        });
        Gate {
            addr: server.local_addr(),
            metrics,
            _server: server,
            runtime,
        }
    }

    /// `GET` as containerd sends it to a fronted host standing for `mirror`.
    fn get_via(&self, mirror: &str, path: &str) -> MirrorResponse {
        send(
            self.addr,
            "GET",
            &format!("/mirror/1{path}?ns={UPSTREAM}"),
            Some(SECRET),
            &[("accept", MANIFEST_ACCEPT), ("x-credgate-mirror", mirror)],
        )
    }

    /// A metric line's value, 0 when the series does not exist.
    fn metric(&self, series: &str) -> u64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |value| value.trim().parse().unwrap())
    }
}

/// A hosts dir whose `registry.test/hosts.toml` is what install writes in front of
/// `operator_hosts` (credgate's fronted hosts first, then the operator's own, unchanged).
fn hosts_dir(root: &Path, operator_hosts: &str) -> PathBuf {
    let dir = root.join("certs.d");
    std::fs::create_dir_all(dir.join(UPSTREAM)).unwrap();
    let fronted = format!(
        "server = \"https://{UPSTREAM}\"\n\n\
         [host.\"http://127.0.0.1:5008/mirror/1\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
         [host.\"http://127.0.0.1:5008/mirror/1\".header]\n  X-Credgate-Secret = [\"{SECRET}\"]\n\n"
    );
    std::fs::write(
        dir.join(UPSTREAM).join("hosts.toml"),
        format!("{fronted}{operator_hosts}"),
    )
    .unwrap();
    dir
}

/// credgate's config: the test's hosts dir, then `rest`.
fn config(hosts_dir: &Path, rest: &str) -> String {
    format!(
        "[containerd]\nhosts_dir = \"{}\"\n\n{rest}",
        hosts_dir.display()
    )
}

/// A `[[docker_config]]` source holding `auths` (key, user, password): a credential source
/// that, unlike a `[[registry]]` entry, allows no private address.
fn docker_config(dir: &Path, auths: &[(&str, &str, &str)]) -> String {
    let config = auths
        .iter()
        .fold(DockerConfig::new(), |config, (key, user, password)| {
            config.auth(key, user, password)
        });
    let path = dir.join("docker-config.json");
    std::fs::write(&path, config.to_json().to_string()).unwrap();
    format!("[[docker_config]]\npath = \"{}\"\n\n", path.display())
}

fn assert_pulls(gate: &Gate, mirror: &str, repository: &str, image: &Seeded) {
    let manifest = gate.get_via(mirror, &format!("/v2/{repository}/manifests/v1"));
    assert_eq!(manifest.status, 200, "{:?}", manifest.body);
    assert_eq!(sha256(manifest.bytes()), image.manifest);
    for blob in &image.blobs {
        let got = gate.get_via(mirror, &format!("/v2/{repository}/blobs/{blob}"));
        assert_eq!(got.status, 200, "{blob}: {:?}", got.body);
        assert_eq!(&sha256(got.bytes()), blob);
    }
}

// ------------------------------------------------------------------ the tests

#[test]
fn a_plain_http_mirror_gets_its_own_credential_and_nothing_else_gains_its_address() {
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    let image = seed(&storage, "group/app");
    let mirror = LocalRegistry::start(
        &storage,
        &RegistrySetup {
            users: vec![("cache-user", "cache-pw")],
            ..Default::default()
        },
    );
    let key = format!("http://{}", mirror.addr);
    let hosts = hosts_dir(
        root.path(),
        &format!("[host.\"{key}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    );
    // The mirror's credential is saved for its plain-http host:port; the upstream's is never
    // what the mirror gets by default.
    let mirror_addr = mirror.addr.to_string();
    let sources = docker_config(
        root.path(),
        &[
            (&mirror_addr, "cache-user", "cache-pw"),
            (UPSTREAM, "upstream-user", "upstream-pw"),
        ],
    );
    let gate = Gate::start(&config(&hosts, &sources), root.path());
    assert_pulls(&gate, &key, "group/app", &image);
    // The mirror's htpasswd knows only cache-user, and it served the pull: the credential it
    // got was the mirror's own (the upstream's, or none, would have been refused).
    let served = mirror.content_requests("group/app");
    assert!(
        served
            .iter()
            .any(|l| l.contains("/manifests/v1 ") && l.contains(" 200 ")),
        "{served:?}"
    );
    assert!(
        gate.metric(&format!(
            "credgate_mirror_requests_total{{mirror=\"{key}\",status=\"200\"}}"
        )) >= 3
    );

    // The same address without the fronted path is an upstream `ns`: the SSRF boundary
    // refuses it as before, and nothing reaches the mirror.
    let before = mirror.content_requests("group/app").len();
    let direct = send(
        gate.addr,
        "GET",
        &format!("/v2/group/app/manifests/v1?ns={}", mirror.addr),
        Some(SECRET),
        &[("accept", MANIFEST_ACCEPT)],
    );
    assert_eq!(direct.status, 403, "{:?}", direct.body);
    // Header tricks: no prefix, no header, two values, a comma list, another spelling.
    for (path, headers, status) in [
        (
            "/v2/group/app/manifests/v1".to_string(),
            vec![("x-credgate-mirror", key.as_str())],
            400,
        ),
        (
            "/mirror/1/v2/group/app/manifests/v1".to_string(),
            vec![],
            400,
        ),
        (
            "/mirror/1/v2/group/app/manifests/v1".to_string(),
            vec![
                ("x-credgate-mirror", key.as_str()),
                ("X-Credgate-Mirror", key.as_str()),
            ],
            400,
        ),
        (
            "/mirror/1/v2/group/app/manifests/v1".to_string(),
            vec![("x-credgate-mirror", &format!("{key},{key}") as &str)],
            400,
        ),
        (
            "/mirror/1/v2/group/app/manifests/v1".to_string(),
            vec![("x-credgate-mirror", &format!("{key}/") as &str)],
            403,
        ),
        (
            "/mirror/1/v2/group/app/manifests/v1".to_string(),
            vec![("x-credgate-mirror", "http://169.254.169.254")],
            403,
        ),
    ] {
        let mut all = vec![("accept", MANIFEST_ACCEPT)];
        all.extend(headers.iter().copied());
        let response = send(
            gate.addr,
            "GET",
            &format!("{path}?ns={UPSTREAM}"),
            Some(SECRET),
            &all,
        );
        assert_eq!(
            response.status, status,
            "{path} {headers:?}: {:?}",
            response.body
        );
    }
    // Without the secret, a fronted request is refused before anything else.
    let stranger = send(
        gate.addr,
        "GET",
        &format!("/mirror/1/v2/group/app/manifests/v1?ns={UPSTREAM}"),
        None,
        &[("x-credgate-mirror", key.as_str())],
    );
    assert_eq!(stranger.status, 403);
    assert_eq!(mirror.content_requests("group/app").len(), before);
    assert_eq!(
        gate.metric("credgate_mirror_handovers_total{mirror=\"-\",reason=\"not_named\"}"),
        2
    );
}

#[test]
fn a_mirror_named_for_another_registry_only_is_never_dialled() {
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    seed(&storage, "group/app");
    let mirror = LocalRegistry::start(&storage, &RegistrySetup::default());
    let key = format!("http://{}", mirror.addr);
    let hosts = hosts_dir(root.path(), "");
    std::fs::create_dir_all(hosts.join("other.test")).unwrap();
    std::fs::write(
        hosts.join("other.test/hosts.toml"),
        format!("[host.\"{key}\"]\n"),
    )
    .unwrap();
    let gate = Gate::start(&config(&hosts, ""), root.path());
    let refused = gate.get_via(&key, "/v2/group/app/manifests/v1");
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert!(
        String::from_utf8_lossy(refused.bytes()).contains("is not a host of"),
        "{:?}",
        refused.body
    );
    let for_other = send(
        gate.addr,
        "GET",
        "/mirror/1/v2/group/app/manifests/v1?ns=other.test",
        Some(SECRET),
        &[("accept", MANIFEST_ACCEPT), ("x-credgate-mirror", &key)],
    );
    assert_eq!(for_other.status, 200, "{:?}", for_other.body);
    assert_eq!(mirror.content_requests("group/app").len(), 1);
}

#[test]
fn a_mirror_with_its_own_ca_and_a_client_certificate_is_dialled_with_them() {
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    let image = seed(&storage, "team/tool");
    let hosts_root = root.path().join("certs.d");
    std::fs::create_dir_all(hosts_root.join(UPSTREAM)).unwrap();
    // The PKI sits beside hosts.toml, named relative to it as operators do.
    let pki = mirror_pki(&hosts_root.join(UPSTREAM));
    let mirror = LocalRegistry::start(
        &storage,
        &RegistrySetup {
            tls: Some(pki.server.clone()),
            client_ca: Some(pki.ca.clone()),
            ..Default::default()
        },
    );
    let port = mirror.addr.port();
    let with_all = format!("https://127.0.0.1:{port}");
    let no_client = format!("https://127.0.0.1:{port}/no-client");
    let no_ca = format!("https://127.0.0.1:{port}/no-ca");
    let skipping = format!("https://127.0.0.1:{port}/skipping");
    // One registry, four host keys (a path of their own tells them apart): all settings,
    // no client certificate, no CA, and skip_verify.
    let hosts = hosts_dir(
        root.path(),
        &format!(
            "[host.\"{with_all}\"]\n  ca = \"mirror-ca.pem\"\n  client = [[\"client.crt\", \"client.key\"]]\n\n\
             [host.\"{no_client}\"]\n  ca = \"mirror-ca.pem\"\n\n\
             [host.\"{no_ca}\"]\n  client = [[\"client.crt\", \"client.key\"]]\n\n\
             [host.\"{skipping}\"]\n  skip_verify = true\n  client = [\"{}\"]\n",
            combined_client_pem(&pki).display()
        ),
    );
    assert_eq!(hosts, hosts_root);
    let gate = Gate::start(&config(&hosts, ""), root.path());
    assert_pulls(&gate, &with_all, "team/tool", &image);

    let path = "/v2/team/tool/manifests/v1";
    // Its CA but no client certificate: the registry ends the handshake.
    let refused = gate.get_via(&no_client, path);
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    // Its client certificate but only the system roots: credgate refuses the server.
    let unknown = gate.get_via(&no_ca, path);
    assert_eq!(unknown.status, 502, "{:?}", unknown.body);
    assert_eq!(
        gate.metric(&format!(
            "credgate_mirror_handovers_total{{mirror=\"{no_ca}\",reason=\"unreachable\"}}"
        )),
        1
    );
    // skip_verify accepts the unknown CA, for this host only; the API prefix is /skipping/v2,
    // where the registry has nothing: a 404, relayed.
    let skipped = gate.get_via(&skipping, path);
    assert_eq!(skipped.status, 404, "{:?}", skipped.body);
    assert!(
        mirror
            .access_log()
            .contains("\"GET /skipping/v2/team/tool/manifests/v1"),
        "{}",
        mirror.access_log()
    );
    assert_eq!(
        gate.metric(&format!(
            "credgate_mirror_handovers_total{{mirror=\"{skipping}\",reason=\"not_found\"}}"
        )),
        1
    );
}

/// The client certificate and its key in one PEM file (containerd's one-path `client`).
fn combined_client_pem(pki: &MirrorPki) -> PathBuf {
    let path = pki.client.0.with_file_name("client-and-key.pem");
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&pki.client.0).unwrap(),
        std::fs::read_to_string(&pki.client.1).unwrap()
    );
    std::fs::write(&path, both).unwrap();
    path
}

#[test]
fn a_mirror_that_is_down_refuses_or_lacks_the_image_hands_over_and_is_counted() {
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    seed(&storage, "group/app");
    let refusing = LocalRegistry::start(
        &storage,
        &RegistrySetup {
            users: vec![("cache-user", "cache-pw")],
            ..Default::default()
        },
    );
    let mut open = LocalRegistry::start(&storage, &RegistrySetup::default());
    let refusing_key = format!("http://{}", refusing.addr);
    let open_key = format!("http://{}", open.addr);
    let down_key = format!("http://{}", free_port());
    let hosts = hosts_dir(
        root.path(),
        &format!("[host.\"{refusing_key}\"]\n[host.\"{open_key}\"]\n[host.\"{down_key}\"]\n"),
    );
    let refusing_addr = refusing.addr.to_string();
    let sources = docker_config(root.path(), &[(&refusing_addr, "cache-user", "wrong-pw")]);
    let gate = Gate::start(&config(&hosts, &sources), root.path());
    let handovers = |key: &str, reason: &str| {
        gate.metric(&format!(
            "credgate_mirror_handovers_total{{mirror=\"{key}\",reason=\"{reason}\"}}"
        ))
    };
    let manifest = "/v2/group/app/manifests/v1";

    // Refusing: the wrong credential, then anonymous; containerd gets 403, never a 401.
    let refused = gate.get_via(&refusing_key, manifest);
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(handovers(&refusing_key, "refused"), 1);
    // The wrong password, then anonymous: every attempt refused.
    let lines = refusing.content_requests("group/app");
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains(" 401 ")), "{lines:?}");
    assert!(
        refusing.log().contains("invalid authorization credential"),
        "{}",
        refusing.log()
    );

    // Lacking the image: the mirror's 404, as it answered.
    let missing = gate.get_via(&open_key, "/v2/group/app/manifests/v2");
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    assert_eq!(handovers(&open_key, "not_found"), 1);
    // The same mirror serves what it has; no hand-over for that.
    assert_eq!(gate.get_via(&open_key, manifest).status, 200);

    // Down: nothing listens where hosts.toml points, or the mirror stopped.
    let down = gate.get_via(&down_key, manifest);
    assert_eq!(down.status, 502, "{:?}", down.body);
    assert_eq!(handovers(&down_key, "unreachable"), 1);
    open.stop();
    let stopped = gate.get_via(&open_key, manifest);
    assert_eq!(stopped.status, 502, "{:?}", stopped.body);
    assert_eq!(handovers(&open_key, "unreachable"), 1);
    assert_eq!(
        gate.metric(&format!(
            "credgate_mirror_requests_total{{mirror=\"{open_key}\",status=\"200\"}}"
        )),
        1
    );
}

#[test]
fn a_mirror_marked_upstream_gets_the_upstream_registrys_credential() {
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    let image = seed(&storage, "group/app");
    // A mirror that forwards auth: it accepts the upstream's users.
    let mirror = LocalRegistry::start(
        &storage,
        &RegistrySetup {
            users: vec![("upstream-user", "upstream-pw")],
            ..Default::default()
        },
    );
    let key = format!("http://{}", mirror.addr);
    let hosts = hosts_dir(root.path(), &format!("[host.\"{key}\"]\n"));
    let mirror_addr = mirror.addr.to_string();
    let sources = docker_config(
        root.path(),
        &[
            (UPSTREAM, "upstream-user", "upstream-pw"),
            (&mirror_addr, "mirror-user", "mirror-pw"),
        ],
    );
    let gate = Gate::start(
        &config(
            &hosts,
            &format!(
                "[[mirror]]\nhost = \"{mirror_addr}\"\ncredentials = \"upstream\"\n\n{sources}"
            ),
        ),
        root.path(),
    );
    // Only upstream-user is in the mirror's htpasswd: the pull proves which credential it got.
    assert_pulls(&gate, &key, "group/app", &image);
    // One 401: the first request's challenge; no credential was refused on the way.
    let refusals = mirror
        .content_requests("group/app")
        .iter()
        .filter(|l| l.contains(" 401 "))
        .count();
    assert_eq!(refusals, 1, "{}", mirror.access_log());
}

/// A plain-http mirror that only redirects: what a real registry can't be made to do on
/// demand. `/v2/group/app/manifests/<tag>` answers 302 to where `redirects` says, or 200.
fn redirecting_mirror(gate: &Gate, redirects: Vec<(&'static str, String)>) -> SocketAddr {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    let listener = gate
        .runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let redirects = Arc::new(redirects);
    gate.runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let redirects = redirects.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let path = request.uri().path().to_string();
                    let to = redirects
                        .iter()
                        .find(|(tag, _)| path.ends_with(&format!("/manifests/{tag}")))
                        .map(|(_, to)| to.clone());
                    async move {
                        let response = match to {
                            Some(location) => Response::builder()
                                .status(302)
                                .header("location", location)
                                .body(Full::new(Bytes::new())),
                            None => Response::builder()
                                .header(
                                    "content-type",
                                    "application/vnd.oci.image.manifest.v1+json",
                                )
                                .body(Full::new(Bytes::from_static(b"{\"schemaVersion\":2}"))),
                        };
                        Ok::<_, std::convert::Infallible>(response.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[test]
fn a_redirect_off_a_private_mirror_reaches_public_addresses_only() {
    let root = tempfile::tempdir().unwrap();
    // Where a hostile mirror would send credgate: a private address nobody named.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let hosts = hosts_dir(root.path(), "");
    let gate = Gate::start(&config(&hosts, ""), root.path());
    let mirror = redirecting_mirror(
        &gate,
        vec![
            ("to-private", format!("https://{trap_addr}/v2/internal")),
            ("to-private-http", format!("http://{trap_addr}/v2/internal")),
            ("same-origin", "/v2/group/app/manifests/v1".to_string()),
        ],
    );
    let key = format!("http://{mirror}");
    std::fs::write(
        hosts.join(UPSTREAM).join("hosts.toml"),
        format!("[host.\"{key}\"]\n"),
    )
    .unwrap();
    let handovers = |reason: &str| {
        gate.metric(&format!(
            "credgate_mirror_handovers_total{{mirror=\"{key}\",reason=\"{reason}\"}}"
        ))
    };

    let private = gate.get_via(&key, "/v2/group/app/manifests/to-private");
    assert_eq!(private.status, 403, "{:?}", private.body);
    assert_eq!(handovers("not_allowed"), 1);
    let plain = gate.get_via(&key, "/v2/group/app/manifests/to-private-http");
    assert_eq!(plain.status, 502, "{:?}", plain.body);
    assert_eq!(handovers("unreachable"), 1);
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "credgate connected to the private address a redirect named"
    );
    // A redirect that stays on the mirror's own origin is followed, over plain http too.
    let same = gate.get_via(&key, "/v2/group/app/manifests/same-origin");
    assert_eq!(same.status, 200, "{:?}", same.body);
    assert_eq!(same.bytes().as_ref(), b"{\"schemaVersion\":2}");
}
