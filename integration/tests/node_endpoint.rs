//! credgate's pull-through endpoint against real distribution registries (token and Basic
//! auth) and the GitLab-like token server. A node test: integration/test-all.sh runs it inside
//! a private mount and network namespace.
//!
//! Most cases drive the endpoint's upstream half (`credgate::upstream::Upstream::send`)
//! in-process, as the endpoint does: the right credential per repository; password, identity
//! and registry tokens; Basic; fallback past a refused candidate and finally the upstream's
//! own refusal; foreign realms and SSRF targets refused; one token fetch for many parallel
//! pulls; blob redirects without `Authorization` (a fake registry, since distribution's
//! filesystem storage never redirects). The endpoint's server half (secret, routes, statuses,
//! streaming and digest checks) is tested in-process against a fake upstream in
//! `tests/endpoint.rs`. One smoke test here joins the two end to end: `credgate serve` asked
//! exactly as containerd asks a hosts.toml mirror.

use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use credgate::config::Config;
use credgate::identity::{RegistryHost, Repository};
use credgate::keychain::Keychain;
use credgate::metrics::Metrics;
use credgate::system::System;
use credgate::upstream::{SendUpstream, Upstream, UpstreamError, UpstreamPolicy, UpstreamRequest};
use credgate_integration::clients::{Client, ClientEnv, DockerConfig};
use credgate_integration::daemon::{CredgateDaemon, MIRROR_SECRET};
use credgate_integration::gitlab::{self, DEPLOY_IDENTITY_TOKEN, DEPLOY_PW, OTHER_PW};
use credgate_integration::https::{self, response, HttpRequest, HttpsServer};
use credgate_integration::images::{push_image, sha256};
use credgate_integration::mirror;
use credgate_integration::registry::{Registry, RegistryAuth};
use credgate_integration::token_server::{Grant, TokenServer, TokenUser};
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT};
use hyper::{Method, StatusCode};

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";

/// `[upstream] allow_realm_hosts = ["auth.test"]` and the given `[[registry]]` tables.
fn config(registries: &str) -> Config {
    config_with("", registries)
}

/// As [`config`], with more `[upstream]` keys.
fn config_with(upstream: &str, registries: &str) -> Config {
    let text = format!("[upstream]\nallow_realm_hosts = [\"auth.test\"]\n{upstream}\n{registries}");
    Config::parse(&text, Path::new("/etc/credgate/node-endpoint.toml")).expect("config")
}

fn registry_entry(scope: &str, username: &str, password: &str) -> String {
    format!("[[registry]]\nmatch = \"{scope}\"\nusername = \"{username}\"\npassword = \"{password}\"\n\n")
}

/// What the endpoint holds: the upstream, the keychain, the metrics.
struct Gate {
    upstream: Upstream,
    keychain: Keychain,
    metrics: Arc<Metrics>,
}

impl Gate {
    fn new(config: &Config) -> Arc<Gate> {
        let metrics = Arc::new(Metrics::new());
        // As `serve` does from the keychain's scopes: registry.test keeps its own label.
        metrics.label_registries([credgate::identity::Scope::parse("registry.test").unwrap()]);
        let upstream =
            Upstream::new(UpstreamPolicy::from_config(config), metrics.clone()).expect("upstream");
        let keychain = Keychain::from_config(config, &System::real(std::env::vars_os()));
        Arc::new(Gate {
            upstream,
            keychain,
            metrics,
        })
    }

    async fn get(&self, ns: &str, repository: &str, path: &str) -> Result<Fetched, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_TYPES));
        self.request(ns, repository, path, headers).await
    }

    /// `GET /v2/<repository>/<path>` from `ns` with the client's `headers`, body read whole.
    async fn request(
        &self,
        ns: &str,
        repository: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Fetched, UpstreamError> {
        let request = UpstreamRequest::new(
            RegistryHost::parse(ns).expect("ns"),
            Some(Repository::parse(repository).expect("repository")),
            Method::GET,
            format!("/v2/{repository}/{path}"),
            &headers,
        );
        let response = self.upstream.send(&self.keychain, request).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body streams")
            .to_bytes()
            .to_vec();
        Ok(Fetched { status, body })
    }

    /// The manifest by tag and every blob it names (fetched concurrently), each checked
    /// against its digest. Returns the number of blobs.
    async fn pull(
        self: Arc<Self>,
        ns: &'static str,
        repository: &'static str,
        tag: &'static str,
    ) -> usize {
        let manifest = self.ok(ns, repository, &format!("manifests/{tag}")).await;
        let digests = blob_digests(&manifest);
        let mut blobs = tokio::task::JoinSet::new();
        for digest in digests.clone() {
            let gate = self.clone();
            blobs.spawn(async move {
                let blob = gate.ok(ns, repository, &format!("blobs/{digest}")).await;
                assert_eq!(sha256(&blob), digest, "{repository} blob");
            });
        }
        while let Some(done) = blobs.join_next().await {
            done.expect("blob fetch");
        }
        digests.len()
    }

    async fn ok(&self, ns: &str, repository: &str, path: &str) -> Vec<u8> {
        let fetched = self
            .get(ns, repository, path)
            .await
            .unwrap_or_else(|e| panic!("{ns}/{repository} {path}: {e}"));
        assert_eq!(
            fetched.status,
            StatusCode::OK,
            "{ns}/{repository} {path}: {}",
            String::from_utf8_lossy(&fetched.body)
        );
        fetched.body
    }
}

struct Fetched {
    status: StatusCode,
    body: Vec<u8>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The config and layer digests of a schema 2 / OCI manifest.
fn blob_digests(manifest: &[u8]) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(manifest).expect("manifest JSON");
    let config = json["config"]["digest"].as_str().expect("config digest");
    let layers = json["layers"].as_array().expect("layers");
    std::iter::once(config)
        .chain(
            layers
                .iter()
                .map(|l| l["digest"].as_str().expect("layer digest")),
        )
        .map(str::to_string)
        .collect()
}

#[test]
fn a_private_image_under_a_sub_path_is_fetched_with_the_right_credential() {
    let (tokens, registry) = gitlab::start();
    let image = push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    let gate = Gate::new(&config(&registry_entry(
        "registry.test/group/sub",
        "deploy",
        DEPLOY_PW,
    )));
    tokens.clear_requests();
    let blobs = runtime().block_on(async {
        let manifest = gate
            .ok("registry.test", "group/sub/app", "manifests/v1")
            .await;
        assert_eq!(sha256(&manifest), image.digest);
        gate.clone()
            .pull("registry.test", "group/sub/app", "v1")
            .await
    });
    assert_eq!(blobs, 2, "config and one layer");
    let asked = tokens.requests();
    assert!(!asked.is_empty());
    for request in &asked {
        assert_eq!(request.grant, Grant::Basic, "{asked:#?}");
        assert_eq!(request.user.as_deref(), Some("deploy"), "{asked:#?}");
        assert_eq!(
            request.scopes,
            ["repository:group/sub/app:pull"],
            "{asked:#?}"
        );
        assert_eq!(request.service.as_deref(), Some(tokens.service()));
    }
    // HTTP/1.1 (src/upstream/client.rs says why): credgate offers no ALPN, though Go's
    // registry would take h2.
    let log = registry.access_log();
    assert!(
        log.lines()
            .any(|l| l.contains("GET /v2/group/sub/app/manifests/v1 HTTP/1.1\" 200")),
        "{log}"
    );
}

#[test]
fn identity_tokens_are_exchanged_and_registry_tokens_sent_as_they_are() {
    let (tokens, _registry) = gitlab::start();
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);

    let gate = Gate::new(&config(&format!(
        "[[registry]]\nmatch = \"registry.test/group/sub\"\nusername = \"deploy\"\nidentity_token = \"{DEPLOY_IDENTITY_TOKEN}\"\n"
    )));
    tokens.clear_requests();
    runtime().block_on(gate.clone().pull("registry.test", "group/sub/app", "v1"));
    let asked = tokens.requests();
    assert!(
        asked.iter().all(|r| r.method == Method::POST
            && r.grant == Grant::RefreshToken
            && r.user.as_deref() == Some("deploy")
            && r.scopes == ["repository:group/sub/app:pull"]),
        "{asked:#?}"
    );

    let issued = https::get(
        "auth.test",
        "/jwt/auth?service=container_registry&scope=repository:group/sub/app:pull",
        &[(
            "authorization",
            &format!("Basic {}", STANDARD.encode(format!("deploy:{DEPLOY_PW}"))),
        )],
    )
    .expect("token");
    let json: serde_json::Value = serde_json::from_slice(&issued.body).expect("token JSON");
    let token = json["token"].as_str().expect("token");
    let gate = Gate::new(&config(&format!(
        "[[registry]]\nmatch = \"registry.test/group/sub\"\nregistry_token = \"{token}\"\n"
    )));
    tokens.clear_requests();
    runtime().block_on(gate.clone().pull("registry.test", "group/sub/app", "v1"));
    assert_eq!(
        tokens.request_count(),
        0,
        "the registry token went straight to the registry"
    );
}

#[test]
fn a_basic_registry_gets_basic_credentials_directly() {
    let registry = Registry::start(RegistryAuth::basic(&[("alice", "alice-pw")]), "basic.test");
    push_image("basic.test", "team/app", "v1", "alice", "alice-pw");
    let gate = Gate::new(&config(&registry_entry("basic.test", "alice", "alice-pw")));
    let blobs = runtime().block_on(gate.clone().pull("basic.test", "team/app", "v1"));
    assert_eq!(blobs, 2);
    assert!(registry.served("GET", "/v2/team/app/manifests/v1", 200));
}

#[test]
fn path_scoped_credentials_pick_the_right_user_for_each_repository() {
    let (tokens, _registry) = gitlab::start();
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    push_image("registry.test", "other/app", "v1", "other", OTHER_PW);
    let gate = Gate::new(&config(&format!(
        "{}{}",
        registry_entry("registry.test/group/sub", "deploy", DEPLOY_PW),
        registry_entry("registry.test/other", "other", OTHER_PW),
    )));
    tokens.clear_requests();
    runtime().block_on(async {
        gate.clone()
            .pull("registry.test", "group/sub/app", "v1")
            .await;
        gate.clone().pull("registry.test", "other/app", "v1").await;
    });
    let users: Vec<(Option<String>, Vec<String>)> = tokens
        .requests()
        .into_iter()
        .map(|r| (r.user, r.scopes))
        .collect();
    assert_eq!(
        users,
        [
            (
                Some("deploy".to_string()),
                vec!["repository:group/sub/app:pull".to_string()]
            ),
            (
                Some("other".to_string()),
                vec!["repository:other/app:pull".to_string()]
            ),
        ]
    );
}

#[test]
fn a_refused_first_candidate_falls_through_to_the_second() {
    let (tokens, _registry) = gitlab::start();
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    // The more specific scope ranks first and has the wrong password.
    let gate = Gate::new(&config(&format!(
        "{}{}",
        registry_entry("registry.test/group/sub", "deploy", DEPLOY_PW),
        registry_entry("registry.test/group/sub/app", "deploy", "stale-password"),
    )));
    tokens.clear_requests();
    runtime().block_on(gate.clone().pull("registry.test", "group/sub/app", "v1"));
    let asked = tokens.requests();
    let statuses: Vec<(Option<&str>, u16)> = asked
        .iter()
        .map(|r| (r.claimed_user.as_deref(), r.status))
        .collect();
    assert_eq!(
        statuses[..2],
        [(Some("deploy"), 401), (Some("deploy"), 200)],
        "{asked:#?}"
    );
    let metrics = gate.metrics.render();
    assert!(
        metrics.contains("credgate_auth_failures_total{source=\"[[registry]] at /etc/credgate/node-endpoint.toml:"),
        "{metrics}"
    );
    assert!(!metrics.contains("stale-password"));

    // With only the stale password, anonymous is tried last and its refusal handed back.
    let stale = Gate::new(&config(&registry_entry(
        "registry.test/group/sub",
        "deploy",
        "stale-password",
    )));
    tokens.clear_requests();
    let fetched = runtime()
        .block_on(stale.get("registry.test", "group/sub/app", "manifests/v1"))
        .expect("an upstream answer");
    assert_eq!(fetched.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&fetched.body).contains("DENIED"));
    let grants: Vec<(Grant, u16)> = tokens
        .requests()
        .into_iter()
        .map(|r| (r.grant, r.status))
        .collect();
    assert_eq!(grants, [(Grant::Basic, 401), (Grant::Anonymous, 403)]);
}

#[test]
fn a_token_realm_on_a_foreign_domain_is_refused() {
    // open.test's tokens come from second.test: not its domain, and not allowed.
    let tokens = TokenServer::builder("second.test")
        .user(TokenUser::new("deploy", DEPLOY_PW, &["group"]))
        .start();
    let _registry = Registry::start(tokens.registry_auth(), "open.test");
    let gate = Gate::new(&config(&registry_entry("open.test", "deploy", DEPLOY_PW)));
    let error = runtime()
        .block_on(gate.get("open.test", "group/app", "manifests/v1"))
        .err()
        .expect("refused");
    match &error {
        UpstreamError::RealmNotAllowed { realm, reason } => {
            assert_eq!(realm, &tokens.realm());
            assert!(reason.contains("allow_realm_hosts"), "{reason}");
        }
        other => panic!("expected RealmNotAllowed, got {other}"),
    }
    assert_eq!(
        tokens.request_count(),
        0,
        "no credential went to second.test"
    );
}

#[test]
fn ssrf_targets_are_refused() {
    credgate_integration::node::node();
    // Credentials exist for every target, so only the address check stands in the way.
    let gate = Gate::new(&config(&registry_entry("*.test", "deploy", DEPLOY_PW)));
    let cases = [
        ("open.test", "127.0.0.13, a loopback"),
        ("127.0.0.1", "loopback"),
        ("localhost:5000", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("10.1.2.3", "private"),
        ("[::1]:5000", "loopback"),
    ];
    let rt = runtime();
    for (ns, why) in cases {
        match rt.block_on(gate.get(ns, "group/app", "manifests/v1")) {
            Err(UpstreamError::NotAllowed { host, reason }) => {
                assert!(host.contains(ns.trim_end_matches(":5000")), "{host}");
                assert!(reason.contains(why), "{ns}: {reason}");
            }
            Err(other) => panic!("{ns}: expected NotAllowed, got {other}"),
            Ok(fetched) => panic!("{ns}: answered {}", fetched.status),
        }
    }
}

#[test]
fn parallel_pulls_of_a_ten_layer_image_cost_one_token_fetch() {
    let (tokens, _registry) = gitlab::start();
    push_layers("registry.test/group/sub/big:v1", 10);
    let gate = Gate::new(&config(&registry_entry(
        "registry.test/group/sub",
        "deploy",
        DEPLOY_PW,
    )));
    tokens.clear_requests();
    let started = std::time::Instant::now();
    let blobs = runtime().block_on(async {
        let mut pulls = tokio::task::JoinSet::new();
        for _ in 0..5 {
            pulls.spawn(gate.clone().pull("registry.test", "group/sub/big", "v1"));
        }
        let mut blobs = Vec::new();
        while let Some(done) = pulls.join_next().await {
            blobs.push(done.expect("pull"));
        }
        blobs
    });
    assert_eq!(blobs, [11; 5], "config and ten layers, five times");
    assert_eq!(tokens.request_count(), 1, "{:#?}", tokens.requests());
    let metrics = gate.metrics.render();
    assert!(
        metrics.contains("credgate_token_fetches_total{registry=\"registry.test\"} 1"),
        "{metrics}"
    );
    eprintln!("5 × (manifest + 11 blobs) in {:?}", started.elapsed());
}

/// Pushes an image of `layers` distinct one-file layers with crane, as `deploy`.
fn push_layers(reference: &str, layers: usize) {
    let env = ClientEnv::new(&DockerConfig::new().auth("registry.test", "deploy", DEPLOY_PW));
    let mut args = vec!["append".to_string()];
    for n in 0..layers {
        let path = env.scratch().join(format!("layer-{n}.tar"));
        credgate_integration::images::write_layer_with(
            &path,
            &format!("layer {n} of {reference}\n"),
        );
        args.extend(["-f".to_string(), path.to_string_lossy().into_owned()]);
    }
    args.extend(["-t".to_string(), reference.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(Client::Crane, &args).assert_success();
}

/// distribution's filesystem storage never redirects, so a fake registry on `a.glob.test`
/// (Basic auth) redirects blobs: one to a "CDN" on `b.glob.test` that records what it got,
/// one to storage on its own origin.
#[test]
fn blob_redirects_carry_no_authorization_to_another_host() {
    let _registry = HttpsServer::start("a.glob.test", |request: HttpRequest| async move {
        let basic = format!("Basic {}", STANDARD.encode("alice:alice-pw"));
        let authorized = request
            .headers
            .get("authorization")
            .is_some_and(|v| v == basic.as_str());
        let redirect = |to: &str| {
            let mut r = response(StatusCode::TEMPORARY_REDIRECT, "text/plain", "");
            r.headers_mut().insert("location", to.parse().unwrap());
            r
        };
        match (authorized, request.uri.path()) {
            (false, _) => {
                let mut r = response(StatusCode::UNAUTHORIZED, "application/json", "{}");
                let challenge = HeaderValue::from_static("Basic realm=\"fake\"");
                r.headers_mut().insert("www-authenticate", challenge);
                r
            }
            (true, "/v2/app/blobs/sha256:cdn") => redirect("https://cdn.test/blob?sig=presigned"),
            (true, "/v2/app/blobs/sha256:own") => redirect("/storage/own"),
            (true, "/storage/own") => response(StatusCode::OK, "application/octet-stream", "own"),
            _ => response(StatusCode::NOT_FOUND, "text/plain", ""),
        }
    });
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let recorded = seen.clone();
    let _cdn = HttpsServer::start("cdn.test", move |request: HttpRequest| {
        recorded.lock().unwrap().push(request.headers);
        async { response(StatusCode::OK, "application/octet-stream", "from the cdn") }
    });
    // The CDN is on a public address in the node (see NODE_HOSTS), as a real one is.
    let gate = Gate::new(&config_with(
        "",
        &registry_entry("a.glob.test", "alice", "alice-pw"),
    ));
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/octet-stream"));
    headers.insert("range", HeaderValue::from_static("bytes=0-"));
    headers.insert("user-agent", HeaderValue::from_static("containerd/2.1"));
    headers.insert(
        "x-credgate-secret",
        HeaderValue::from_static("install-secret"),
    );
    let rt = runtime();
    for (digest, body) in [("sha256:cdn", "from the cdn"), ("sha256:own", "own")] {
        let fetched = rt
            .block_on(gate.request(
                "a.glob.test",
                "app",
                &format!("blobs/{digest}"),
                headers.clone(),
            ))
            .expect("blob");
        assert_eq!(
            (fetched.status, fetched.body.as_slice()),
            (StatusCode::OK, body.as_bytes())
        );
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let names: Vec<&str> = seen[0].keys().map(|k| k.as_str()).collect();
    assert!(!names.contains(&"authorization"), "{names:?}");
    assert!(!names.contains(&"x-credgate-secret"), "{names:?}");
    assert!(!names.contains(&"user-agent"), "{names:?}");
    assert_eq!(seen[0]["range"], "bytes=0-");
    assert_eq!(seen[0]["accept"], "application/octet-stream");
}

/// The end-to-end smoke test: `credgate serve` asked exactly as containerd asks a hosts.toml
/// mirror (`GET|HEAD /v2/<name>/{manifests|blobs}/<ref>?ns=<registry>` with the install's
/// `X-Credgate-Secret`), with a stale path-scoped password ranked before the right
/// registry-wide one. The image comes back byte for byte, the stale password was tried,
/// refused and counted, and neither password nor the mirror secret reaches the daemon's log.
#[test]
fn credgate_serve_answers_containerds_mirror_requests_end_to_end() {
    let (tokens, _registry) = gitlab::start();
    let image = push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    let daemon = CredgateDaemon::start(&format!(
        "[upstream]\nallow_realm_hosts = [\"auth.test\"]\n\n{}{}",
        registry_entry("registry.test/group/sub", "deploy", "stale-password"),
        registry_entry("registry.test", "deploy", DEPLOY_PW),
    ));
    let manifest_path = "/v2/group/sub/app/manifests/v1?ns=registry.test";

    let refused = mirror::send(daemon.mirror, "GET", manifest_path, None, &[]);
    assert_eq!(refused.status, 403, "no secret: {refused:?}");

    tokens.clear_requests();
    let manifest = mirror::get(daemon.mirror, MIRROR_SECRET, manifest_path);
    assert_eq!(manifest.status, 200, "{manifest:?}\n{}", daemon.log());
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    assert_eq!(sha256(manifest.bytes()), image.digest);
    for digest in blob_digests(manifest.bytes()) {
        let path = format!("/v2/group/sub/app/blobs/{digest}?ns=registry.test");
        let blob = mirror::get(daemon.mirror, MIRROR_SECRET, &path);
        assert_eq!(blob.status, 200, "{digest}: {blob:?}");
        assert_eq!(sha256(blob.bytes()), digest);
        assert_eq!(
            blob.header("content-length"),
            Some(blob.bytes().len().to_string().as_str())
        );
    }
    let head = mirror::send(
        daemon.mirror,
        "HEAD",
        manifest_path,
        Some(MIRROR_SECRET),
        &[("accept", mirror::MANIFEST_ACCEPT)],
    );
    assert_eq!(head.status, 200, "{head:?}");

    let asked = tokens.requests();
    assert!(
        asked
            .iter()
            .any(|r| r.claimed_user.as_deref() == Some("deploy") && r.status == 401),
        "the stale password was never tried: {asked:#?}"
    );
    assert!(
        asked.iter().any(|r| r.grant == Grant::Basic
            && r.user.as_deref() == Some("deploy")
            && r.status == 200),
        "{asked:#?}"
    );
    let metrics = https::plain_get(daemon.metrics, "/metrics");
    assert!(
        metrics.contains("credgate_auth_failures_total"),
        "{metrics}"
    );
    assert_eq!(daemon.served_ok("registry.test"), 4, "{metrics}");
    let log = daemon.log();
    for secret in [DEPLOY_PW, "stale-password", MIRROR_SECRET] {
        assert!(!log.contains(secret), "{secret} in the daemon log:\n{log}");
    }
}
