//! credgate's pull-through endpoint against real parts, driven exactly as containerd drives
//! a hosts.toml mirror: `GET /v2/<name>/{manifests|blobs}/<ref>?ns=<registry>` over plain
//! HTTP on loopback with the install's `X-Credgate-Secret`. Upstream is the real
//! distribution registry with the GitLab-like token server; the in-process HTTPS servers
//! here only play a blob CDN and a registry with a foreign token realm. A node test.

use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use credgate_integration::daemon::{CredgateDaemon, MIRROR_SECRET};
use credgate_integration::https::{response, HttpsServer};
use credgate_integration::images::push_image;
use credgate_integration::mirror::{self, MirrorResponse};
use credgate_integration::registry::Registry;
use credgate_integration::token_server::{Grant, TokenServer};
use http::StatusCode;

const DEPLOY_PW: &str = "deploy-pw-e41";
const OTHER_PW: &str = "other-pw-17b";

fn gitlab() -> (TokenServer, Registry) {
    credgate_integration::token_server::gitlab(DEPLOY_PW, OTHER_PW)
}

/// credgate for registry.test, whose realm (auth.test) is another domain and so is allowed
/// explicitly, as an operator would.
fn credgate(registries: &str) -> CredgateDaemon {
    CredgateDaemon::start(&format!(
        "[upstream]\nallow_realm_hosts = [\"auth.test\"]\n\n{registries}"
    ))
}

fn entry(scope: &str, user: &str, password: &str) -> String {
    format!(
        "[[registry]]\nmatch = \"{scope}\"\nusername = \"{user}\"\npassword = \"{password}\"\n\n"
    )
}

fn manifest(daemon: &CredgateDaemon, repo: &str, reference: &str, ns: &str) -> MirrorResponse {
    mirror::get(
        daemon.mirror,
        MIRROR_SECRET,
        &format!("/v2/{repo}/manifests/{reference}?ns={ns}"),
    )
}

fn blob(daemon: &CredgateDaemon, repo: &str, digest: &str, ns: &str) -> MirrorResponse {
    mirror::get(
        daemon.mirror,
        MIRROR_SECRET,
        &format!("/v2/{repo}/blobs/{digest}?ns={ns}"),
    )
}

fn layer_digests(manifest: &MirrorResponse) -> Vec<String> {
    let json = manifest.json();
    let mut digests = vec![json["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string()];
    for layer in json["layers"].as_array().expect("layers") {
        digests.push(layer["digest"].as_str().expect("layer digest").to_string());
    }
    digests
}

fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[test]
fn a_private_image_under_a_sub_path_is_pulled_with_the_right_credential() {
    let (tokens, _registry) = gitlab();
    let image = push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    let daemon = credgate(&entry("registry.test/group/sub", "deploy", DEPLOY_PW));
    tokens.clear_requests();
    let m = manifest(&daemon, "group/sub/app", "v1", "registry.test");
    assert_eq!(m.status, 200, "{m:?}\n{}", daemon.log());
    assert_eq!(
        m.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    assert_eq!(sha256(m.bytes()), image.digest);
    for digest in layer_digests(&m) {
        let b = blob(&daemon, "group/sub/app", &digest, "registry.test");
        assert_eq!(b.status, 200);
        assert_eq!(sha256(b.bytes()), digest);
        assert_eq!(
            b.header("content-length"),
            Some(b.bytes().len().to_string().as_str())
        );
    }
    let head = mirror::send(
        daemon.mirror,
        "HEAD",
        "/v2/group/sub/app/manifests/v1?ns=registry.test",
        Some(MIRROR_SECRET),
        &[("accept", mirror::MANIFEST_ACCEPT)],
    );
    assert_eq!(head.status, 200);
    assert!(
        tokens
            .requests()
            .iter()
            .all(|r| r.user.as_deref() == Some("deploy")),
        "{:#?}",
        tokens.requests()
    );
    let log = daemon.log();
    assert!(
        !log.contains(DEPLOY_PW) && !log.contains(MIRROR_SECRET),
        "secret in the log:\n{log}"
    );
}

#[test]
fn path_scoped_credentials_pick_the_right_user_per_repository() {
    let (tokens, _registry) = gitlab();
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    push_image("registry.test", "other/app", "v1", "other", OTHER_PW);
    let daemon = credgate(
        &(entry("registry.test/group/sub", "deploy", DEPLOY_PW)
            + &entry("registry.test/other", "other", OTHER_PW)),
    );
    for (repo, user) in [("group/sub/app", "deploy"), ("other/app", "other")] {
        tokens.clear_requests();
        let m = manifest(&daemon, repo, "v1", "registry.test");
        assert_eq!(m.status, 200, "{repo}: {m:?}");
        let asked = tokens.requests();
        assert!(
            asked
                .iter()
                .any(|r| r.user.as_deref() == Some(user) && r.status == 200),
            "{repo}: {asked:#?}"
        );
        assert!(
            asked.iter().all(|r| r.user.as_deref() == Some(user)),
            "{repo} used another user: {asked:#?}"
        );
    }
}

#[test]
fn a_refused_first_candidate_falls_through_to_the_second() {
    let (tokens, _registry) = gitlab();
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    // The more specific entry has a stale password; the registry-wide one is right.
    let daemon = credgate(
        &(entry("registry.test/group/sub", "deploy", "stale-password")
            + &entry("registry.test", "deploy", DEPLOY_PW)),
    );
    tokens.clear_requests();
    let m = manifest(&daemon, "group/sub/app", "v1", "registry.test");
    assert_eq!(m.status, 200, "{m:?}\n{}", daemon.log());
    let asked = tokens.requests();
    assert!(
        asked.iter().any(|r| r.status == 401),
        "the stale password was never tried: {asked:#?}"
    );
    assert!(
        asked
            .iter()
            .any(|r| r.grant == Grant::Basic && r.status == 200),
        "{asked:#?}"
    );
    let metrics = credgate_integration::https::plain_get(daemon.metrics, "/metrics");
    assert!(
        metrics.contains("credgate_auth_failures_total"),
        "{metrics}"
    );
    assert!(!daemon.log().contains("stale-password"));
}

#[test]
fn requests_without_the_install_secret_are_refused() {
    let (_tokens, _registry) = gitlab();
    let daemon = credgate(&entry("registry.test", "deploy", DEPLOY_PW));
    let path = "/v2/group/sub/app/manifests/v1?ns=registry.test";
    for secret in [None, Some("wrong-secret"), Some("")] {
        let r = mirror::send(
            daemon.mirror,
            "GET",
            path,
            secret,
            &[("accept", mirror::MANIFEST_ACCEPT)],
        );
        assert_eq!(r.status, 403, "secret {secret:?}: {r:?}");
    }
}

#[test]
fn ns_pointing_at_internal_addresses_is_refused() {
    let (_tokens, _registry) = gitlab();
    // second.test resolves to a loopback address in the node and is not named anywhere.
    let daemon = credgate(&entry("registry.test", "deploy", DEPLOY_PW));
    for ns in [
        "127.0.0.1",
        "localhost:5000",
        "169.254.169.254",
        "10.1.2.3",
        "[::1]",
        "second.test",
    ] {
        let r = manifest(&daemon, "group/sub/app", "v1", ns);
        assert_eq!(r.status, 403, "ns={ns}: {r:?}");
    }
}

/// A registry at open.test that wants Basic and redirects blobs to a CDN at second.test,
/// which records the headers it receives.
fn redirecting_registry(
    seen_by_cdn: Arc<Mutex<Vec<http::HeaderMap>>>,
) -> (HttpsServer, HttpsServer) {
    let cdn = HttpsServer::start("second.test", move |request| {
        let seen = seen_by_cdn.clone();
        async move {
            seen.lock().unwrap().push(request.headers.clone());
            response(
                StatusCode::OK,
                "application/octet-stream",
                Bytes::from_static(b"cdn-bytes"),
            )
        }
    });
    let registry = HttpsServer::start("open.test", |request| async move {
        if request.headers.get("authorization").is_none() {
            let mut r = response(
                StatusCode::UNAUTHORIZED,
                "application/json",
                Bytes::from_static(b"{}"),
            );
            r.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"open.test\"".parse().unwrap(),
            );
            return r;
        }
        let mut r = response(StatusCode::TEMPORARY_REDIRECT, "text/plain", Bytes::new());
        r.headers_mut().insert(
            "location",
            "https://second.test/cdn/blob?sig=abc".parse().unwrap(),
        );
        r
    });
    (registry, cdn)
}

#[test]
fn a_blob_redirect_to_another_host_carries_no_authorization() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (_registry, _cdn) = redirecting_registry(seen.clone());
    let daemon = CredgateDaemon::start(&format!(
        "[upstream]\nallow_private = [\"second.test\"]\n\n{}",
        entry("open.test", "carol", "carol-pw-5")
    ));
    let digest = sha256(b"cdn-bytes");
    let b = blob(&daemon, "team/app", &digest, "open.test");
    assert_eq!(b.status, 200, "{b:?}\n{}", daemon.log());
    assert_eq!(b.bytes().as_ref(), b"cdn-bytes");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "the CDN was asked {} times", seen.len());
    for name in ["authorization", "x-credgate-secret", "cookie"] {
        assert!(
            seen[0].get(name).is_none(),
            "the CDN received {name}: {:?}",
            seen[0]
        );
    }
}

#[test]
fn a_token_realm_on_a_foreign_domain_is_refused() {
    let (tokens, _registry) = gitlab();
    // A registry on a.glob.test whose challenge sends clients to auth.test, which this
    // credgate does not allow: the credential must not be sent there.
    let _foreign = HttpsServer::start("a.glob.test", |_request| async move {
        let mut r = response(
            StatusCode::UNAUTHORIZED,
            "application/json",
            Bytes::from_static(b"{}"),
        );
        let challenge = "Bearer realm=\"https://auth.test/jwt/auth\",service=\"registry\",scope=\"repository:team/app:pull\"";
        r.headers_mut()
            .insert("www-authenticate", challenge.parse().unwrap());
        r
    });
    let daemon = CredgateDaemon::start(&entry("a.glob.test", "deploy", DEPLOY_PW));
    tokens.clear_requests();
    let r = manifest(&daemon, "team/app", "v1", "a.glob.test");
    assert_eq!(r.status, 403, "{r:?}\n{}", daemon.log());
    assert_eq!(
        tokens.request_count(),
        0,
        "the credential went to the foreign realm: {:#?}",
        tokens.requests()
    );
}

#[test]
fn ten_layers_pulled_five_times_in_parallel_cost_one_token_fetch() {
    let (tokens, _registry) = gitlab();
    let mut digests = Vec::new();
    for i in 0..10 {
        let image = push_image(
            "registry.test",
            "group/sub/app",
            &format!("layer{i}"),
            "deploy",
            DEPLOY_PW,
        );
        digests.push(image.digest);
    }
    let daemon = credgate(&entry("registry.test/group/sub", "deploy", DEPLOY_PW));
    let first = manifest(&daemon, "group/sub/app", "layer9", "registry.test");
    let mut blobs: Vec<String> = Vec::new();
    for tag in 0..10 {
        let m = manifest(
            &daemon,
            "group/sub/app",
            &format!("layer{tag}"),
            "registry.test",
        );
        blobs.extend(layer_digests(&m).into_iter().skip(1));
    }
    blobs.sort();
    blobs.dedup();
    assert!(blobs.len() >= 10, "{blobs:?}");
    drop(first);
    // Fresh daemon: its token cache is cold, so the count below is all of it.
    let daemon = credgate(&entry("registry.test/group/sub", "deploy", DEPLOY_PW));
    tokens.clear_requests();
    let blobs = Arc::new(blobs);
    let pulls: Vec<_> = (0..5)
        .map(|_| {
            let (blobs, mirror) = (blobs.clone(), daemon.mirror);
            thread::spawn(move || {
                let m = mirror::get(
                    mirror,
                    MIRROR_SECRET,
                    "/v2/group/sub/app/manifests/layer9?ns=registry.test",
                );
                assert_eq!(m.status, 200);
                let fetches: Vec<_> = blobs
                    .iter()
                    .map(|digest| {
                        let path = format!("/v2/group/sub/app/blobs/{digest}?ns=registry.test");
                        thread::spawn(move || mirror::get(mirror, MIRROR_SECRET, &path).status)
                    })
                    .collect();
                fetches
                    .into_iter()
                    .map(|f| f.join().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for pull in pulls {
        assert!(pull.join().unwrap().iter().all(|&s| s == 200));
    }
    assert_eq!(tokens.request_count(), 1, "{:#?}", tokens.requests());
}
