//! Mirrors through the gate (issue 11; docs/design.md, "Mirrors through the gate") on real
//! containerd 2.1 and 1.7: `registry.test/hosts.toml` lists a mirror ahead of the upstream,
//! as nodes behind a Harbor, Artifactory or ECR pull-through cache do.
//!
//! - The mirror is a second real distribution registry in `proxy` mode on `mirror.test`
//!   with its own htpasswd user ([`MIRROR_USER`]), fetching from the GitLab stand-in as
//!   [`CACHE_USER`] ([`credgate_integration::pull_through`]). Its own log names the user of
//!   every request it let in; the upstream's log and the token server's record name who
//!   fetched from `registry.test`, so a test tells "through the mirror" (only `cache`) from
//!   "from the upstream" (`deploy`, credgate's credential for it).
//! - Without credgate, containerd cannot log in to the mirror and falls back to the upstream
//!   anonymously, which GitLab refuses with 403: the control.
//! - With `credgate install`, a CRI pull and the sandbox image's pull go through credgate to
//!   the mirror with the mirror's own credential; a stopped or refusing mirror hands over to
//!   the upstream, counted in `credgate_mirror_handovers_total`; a plain-HTTP mirror and one
//!   whose CA only hosts.toml names are reached; uninstall restores every file byte for byte.
//!
//! A node test (integration/test-all.sh runs it in a namespace). Each pull scenario gets a
//! fresh containerd, so every pull fetches its content again.
//!
//! The same by hand on a node, as root (Harbor's proxy cache `harbor.example.com` in front of
//! `registry.example.com`, with a robot account for Harbor):
//!
//! ```sh
//! cat /etc/containerd/certs.d/registry.example.com/hosts.toml
//! #   server = "https://registry.example.com"
//! #   [host."https://harbor.example.com"]
//! #     capabilities = ["pull", "resolve"]
//! cat >>/etc/credgate/config.toml <<'EOF'
//! [containerd]
//! hosts_dir = "/etc/containerd/certs.d"
//!
//! [[registry]]
//! match = "harbor.example.com"
//! username = "robot$puller"
//! password_file = "/etc/credgate/secrets/harbor"
//! EOF
//! kill -HUP "$(pidof credgate)"   # credgate serve reads its config again
//! credgate install && systemctl restart containerd
//! crictl pull registry.example.com/group/sub/app:v1   # Harbor's log: robot$puller
//! curl -s 127.0.0.1:9108/metrics | grep credgate_mirror_
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use credgate_integration::clients::{Client, ClientEnv, DockerConfig};
use credgate_integration::containerd::Containerd;
use credgate_integration::cri::CriClient;
use credgate_integration::daemon::{CredgateDaemon, MetricLabels, MIRROR_SECRET};
use credgate_integration::gitlab::{self, AUTH_HOST, CACHE_USER, DEPLOY_PW, REGISTRY_HOST};
use credgate_integration::images::{push_image, PushedImage};
use credgate_integration::pull_through::{
    hosts_toml, Mirror, CA_MIRROR_HOST, MIRROR_HOST, MIRROR_PW, MIRROR_USER,
};
use credgate_integration::registry::Registry;
use credgate_integration::token_server::{Grant, TokenServer};

/// The versions the issue names; 1.6 pulls the same way as 1.7 (docs/design.md, section 4).
const VERSIONS: [&str; 2] = ["2.1", "1.7"];
const APP_REPOSITORY: &str = "group/sub/app";
const PAUSE_REPOSITORY: &str = "group/sub/pause";
/// A password the mirror does not accept.
const WRONG_MIRROR_PW: &str = "not-the-puller-pw-61e";
/// Where the own-CA mirror's CA goes, relative to `registry.test/hosts.toml` as written.
const CA_FILE: &str = "ca-mirror.pem";

const HANDOVERS: &str = "credgate_mirror_handovers_total";
const MIRROR_REQUESTS: &str = "credgate_mirror_requests_total";

/// The GitLab stand-in with a private app and a private sandbox (pause) image under
/// `group/sub`, which only `deploy` and `cache` may pull.
struct Upstream {
    tokens: TokenServer,
    registry: Registry,
    app: PushedImage,
    pause: PushedImage,
}

impl Upstream {
    fn start() -> Upstream {
        let (tokens, registry) = gitlab::start_logging_users();
        let app = push_image(REGISTRY_HOST, APP_REPOSITORY, "v1", "deploy", DEPLOY_PW);
        let pause = push_image(REGISTRY_HOST, PAUSE_REPOSITORY, "3.10", "deploy", DEPLOY_PW);
        Upstream {
            tokens,
            registry,
            app,
            pause,
        }
    }

    /// Forgets who asked so far: what [`Upstream::seen`] reports starts now.
    fn mark(&self) -> usize {
        self.tokens.clear_requests();
        self.registry.content_requests().len()
    }

    /// Who fetched content (manifests, blobs) from `registry.test` since `mark`, one user per
    /// request, and who the token server answered: `(user or "anonymous", status)`.
    fn seen(&self, mark: usize) -> (Vec<String>, Vec<(String, u16)>) {
        let content = self.registry.content_requests()[mark..]
            .iter()
            .map(|r| r.user.clone().unwrap_or_default())
            .collect();
        let tokens = self
            .tokens
            .requests()
            .into_iter()
            .map(|r| {
                let who = match r.grant {
                    Grant::Anonymous => "anonymous".to_string(),
                    _ => r.claimed_user.unwrap_or_default(),
                };
                (who, r.status)
            })
            .collect();
        (content, tokens)
    }

    /// Panics unless, since `mark`, content and tokens went to `user` only, at least once.
    #[track_caller]
    fn assert_only(&self, mark: usize, user: &str, context: &str) {
        let (content, tokens) = self.seen(mark);
        assert!(
            !content.is_empty() && content.iter().all(|u| u == user),
            "{context}: registry.test should have served content to {user} only; it served \
             {content:?}\n{}",
            self.registry.access_log()
        );
        assert!(
            !tokens.is_empty()
                && tokens
                    .iter()
                    .all(|(who, status)| who == user && *status == 200),
            "{context}: auth.test should have answered {user} only; it answered {tokens:?}"
        );
    }
}

/// credgate's config for a node whose hosts dir is `hosts_dir`: the mirror's credential
/// (`mirror_pw` for [`MIRROR_USER`]) for mirror.test and ca-mirror.test, `deploy`'s for
/// registry.test, nothing for the plain-HTTP mirror.
fn credgate_config(hosts_dir: &Path, mirror_pw: &str) -> String {
    format!(
        "[upstream]\nallow_realm_hosts = [\"{AUTH_HOST}\"]\n\n\
         [containerd]\nhosts_dir = {:?}\n\n\
         [[mirror]]\nhost = \"{MIRROR_HOST}\"\ncredentials = \"own\"\n\n\
         [[registry]]\nmatch = \"{MIRROR_HOST}\"\nusername = \"{MIRROR_USER}\"\npassword = \"{mirror_pw}\"\n\n\
         [[registry]]\nmatch = \"{CA_MIRROR_HOST}\"\nusername = \"{MIRROR_USER}\"\npassword = \"{mirror_pw}\"\n\n\
         [[registry]]\nmatch = \"{REGISTRY_HOST}/group/sub\"\nusername = \"deploy\"\npassword = \"{DEPLOY_PW}\"\n",
        hosts_dir.display().to_string()
    )
}

/// containerd `version` whose config already names its hosts dir, with
/// `registry.test/hosts.toml` listing `mirrors` (their host tables) ahead of the upstream.
fn node_pulling_through(version: &'static str, up: &Upstream, mirrors: &[String]) -> Containerd {
    let containerd = Containerd::configure_with_hosts_dir(version, &up.pause.reference);
    containerd.write_hosts_toml(REGISTRY_HOST, &hosts_toml(mirrors));
    containerd
}

/// [`node_pulling_through`] with credgate serving `credgate_config(…, mirror_pw)`,
/// installed by the real CLI, then containerd started.
fn installed(
    version: &'static str,
    up: &Upstream,
    mirrors: &[String],
    mirror_pw: &str,
) -> (Containerd, CredgateDaemon) {
    let mut containerd = node_pulling_through(version, up, mirrors);
    let daemon = CredgateDaemon::start(&credgate_config(&containerd.hosts_dir(), mirror_pw));
    containerd
        .install_credgate(&daemon.config_path())
        .assert_success();
    containerd.start();
    (containerd, daemon)
}

/// The two pulls the issue names: CRI PullImage of the app with no credentials (as kubelet
/// sends it for a pod without a pull secret) and RunPodSandbox's pull of the private sandbox
/// image. Each outcome, `Ok` once the image is stored.
fn pull_app_and_sandbox(
    containerd: &Containerd,
    up: &Upstream,
) -> [(&'static str, Result<String, String>); 2] {
    let cri = CriClient::connect(&containerd.socket());
    let app = cri
        .pull_image(&up.app.reference, None)
        .map_err(|status| format!("{status:?}"));
    // The sandbox itself fails after the pull (no runtime shim in the test node).
    let sandbox = cri.run_pod_sandbox("mirror-pod");
    let pause = match cri.image_status(&up.pause.reference) {
        Ok(Some(image)) => Ok(image.id),
        Ok(None) => Err(format!("no sandbox image after RunPodSandbox: {sandbox:?}")),
        Err(status) => Err(format!("ImageStatus: {status:?}")),
    };
    [("CRI pull", app), ("sandbox image pull", pause)]
}

/// Panics, with every log that tells why, unless both pulls stored their image.
#[track_caller]
fn assert_pulled(containerd: &Containerd, daemon: &CredgateDaemon, up: &Upstream, context: &str) {
    for (what, outcome) in pull_app_and_sandbox(containerd, up) {
        if let Err(error) = outcome {
            panic!(
                "containerd {}: {context}: {what} failed: {error}\n--- credgate log ---\n{}\n{}",
                containerd.version(),
                daemon.log(),
                containerd.log_tail()
            );
        }
    }
}

/// Whether a metric's `mirror` label names `mirror`: its origin, `scheme://host:port` with
/// the port always written (the endpoint never labels by path).
fn names_mirror(labels: &MetricLabels, mirror: &Mirror) -> bool {
    labels_origin(labels, &mirror.url())
}

/// Whether a metric's `mirror` label is the origin of the mirror at `url`.
fn labels_origin(labels: &MetricLabels, url: &str) -> bool {
    let (scheme, authority) = url.split_once("://").expect("a mirror URL has a scheme");
    let authority = authority.split('/').next().unwrap_or_default();
    let origin = if authority.contains(':') {
        format!("{scheme}://{authority}")
    } else {
        let port = if scheme == "http" { 80 } else { 443 };
        format!("{scheme}://{authority}:{port}")
    };
    labels.get("mirror").is_some_and(|label| *label == origin)
}

/// `credgate_mirror_handovers_total` for `mirror` and `reason` (every reason when `None`).
fn handovers(daemon: &CredgateDaemon, mirror: &Mirror, reason: Option<&str>) -> f64 {
    daemon.metric_sum(HANDOVERS, |labels| {
        let reason_matches = match reason {
            None => true,
            Some(reason) => labels.get("reason").is_some_and(|l| l == reason),
        };
        names_mirror(labels, mirror) && reason_matches
    })
}

/// `credgate_mirror_requests_total` for `mirror` answered 200.
fn served_by(daemon: &CredgateDaemon, mirror: &Mirror) -> f64 {
    daemon.metric_sum(MIRROR_REQUESTS, |labels| {
        names_mirror(labels, mirror) && labels.get("status").is_some_and(|s| s == "200")
    })
}

/// Whether the mirror's access log shows `status` for a manifest of `repository`.
fn mirror_answered(mirror: &Mirror, repository: &str, status: u16) -> bool {
    let prefix = format!("/v2/{repository}/manifests/");
    mirror
        .registry()
        .requests()
        .iter()
        .any(|r| r.path_without_query().starts_with(&prefix) && r.status == status)
}

/// No secret of the test reached credgate's or containerd's logs.
#[track_caller]
fn assert_no_secret_logged(containerd: &Containerd, daemon: &CredgateDaemon) {
    for secret in [MIRROR_PW, WRONG_MIRROR_PW, DEPLOY_PW, MIRROR_SECRET] {
        for (who, log) in [("credgate", daemon.log()), ("containerd", containerd.log())] {
            if secret == MIRROR_SECRET && who == "containerd" {
                // containerd logs the headers hosts.toml gives it at debug level: its own
                // business, and the file already holds the secret.
                continue;
            }
            assert!(
                !log.contains(secret),
                "containerd {}: {who} logged a secret",
                containerd.version()
            );
        }
    }
}

/// The mirrors work as mirrors before anything else is tested on them: each serves
/// registry.test's private image to a real client (crane) holding the mirror's credential,
/// fetching it from the upstream as `cache`; the own-CA mirror is trusted through its CA
/// only; a wrong mirror password gets 401.
#[test]
fn each_mirror_serves_the_upstreams_private_image_fetched_as_the_cache_user() {
    let up = Upstream::start();
    let reference = |mirror: &Mirror| {
        let authority = mirror.url().split_once("://").unwrap().1.to_string();
        format!("{authority}/{APP_REPOSITORY}:v1")
    };
    let puller = DockerConfig::new().auth(MIRROR_HOST, MIRROR_USER, MIRROR_PW);

    let cache = Mirror::pull_through_cache();
    let mark = up.mark();
    let manifest = ClientEnv::new(&puller).manifest(Client::Crane, &reference(&cache));
    manifest.assert_success();
    assert!(manifest.stdout.contains("layers"), "{manifest}");
    assert_eq!(
        cache.content_served_to(),
        [MIRROR_USER],
        "{}",
        cache.registry().access_log()
    );
    up.assert_only(mark, CACHE_USER, "crane through mirror.test");
    let wrong = DockerConfig::new().auth(MIRROR_HOST, MIRROR_USER, WRONG_MIRROR_PW);
    ClientEnv::new(&wrong)
        .manifest(Client::Crane, &reference(&cache))
        .assert_failure();
    assert!(mirror_answered(&cache, APP_REPOSITORY, 401));
    drop(cache);

    let plain = Mirror::plain_http();
    let mark = up.mark();
    let env = ClientEnv::new(&DockerConfig::new());
    env.run(
        Client::Crane,
        &["manifest", "--insecure", &reference(&plain)],
    )
    .assert_success();
    assert!(mirror_answered(&plain, APP_REPOSITORY, 200));
    up.assert_only(mark, CACHE_USER, "crane through plain-mirror.test");
    drop(plain);

    let own_ca = Mirror::own_ca();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = own_ca.write_own_ca(ca_dir.path(), CA_FILE);
    let config = DockerConfig::new().auth(CA_MIRROR_HOST, MIRROR_USER, MIRROR_PW);
    let untrusting = ClientEnv::new(&config).manifest(Client::Crane, &reference(&own_ca));
    untrusting.assert_failure();
    assert!(
        untrusting.stderr.contains("certificate"),
        "the node's CA bundle must not vouch for ca-mirror.test: {untrusting}"
    );
    let mark = up.mark();
    let mut trusting = ClientEnv::new(&config);
    trusting.set_env("SSL_CERT_FILE", &ca);
    trusting
        .manifest(Client::Crane, &reference(&own_ca))
        .assert_success();
    assert_eq!(own_ca.content_served_to(), [MIRROR_USER]);
    up.assert_only(mark, CACHE_USER, "crane through ca-mirror.test");
}

/// Test 1, the control: without credgate, containerd tries the authenticated mirror with no
/// credential (it has none to give, and hosts.toml holds none), is refused, falls back to
/// the upstream anonymously, and GitLab answers 403. Both pulls fail.
#[test]
fn without_credgate_the_mirror_refuses_containerd_and_the_upstream_gives_it_403() {
    let up = Upstream::start();
    for version in VERSIONS {
        let mirror = Mirror::pull_through_cache();
        let mut containerd = node_pulling_through(version, &up, &[mirror.hosts_entry(None)]);
        containerd.start();
        let mark = up.mark();
        for (what, outcome) in pull_app_and_sandbox(&containerd, &up) {
            assert!(
                outcome.is_err(),
                "containerd {version}: {what} succeeded without credgate: {outcome:?}"
            );
        }
        for repository in [APP_REPOSITORY, PAUSE_REPOSITORY] {
            assert!(
                mirror_answered(&mirror, repository, 401),
                "containerd {version}: mirror.test never refused {repository}:\n{}\n{}",
                mirror.registry().access_log(),
                containerd.log_tail()
            );
        }
        assert_eq!(
            mirror.content_served_to(),
            Vec::<String>::new(),
            "containerd {version}"
        );
        let (content, tokens) = up.seen(mark);
        assert!(content.is_empty(), "containerd {version}: {content:?}");
        assert!(
            tokens.contains(&("anonymous".to_string(), 403)),
            "containerd {version}: the upstream saw no anonymous attempt refused with 403: \
             {tokens:?}"
        );
        assert!(
            tokens.iter().all(|(who, _)| who == "anonymous"),
            "containerd {version}: {tokens:?}"
        );
    }
}

/// Test 2: after `credgate install`, the CRI pull and the sandbox image's pull go through
/// credgate to the mirror, which serves them to the mirror's own user (only credgate holds
/// that credential); credgate's metrics count the mirror's answers and no hand-over; the
/// upstream saw requests from the mirror (`cache`) only.
#[test]
fn installed_credgate_pulls_through_the_mirror_with_the_mirrors_own_credential() {
    let up = Upstream::start();
    for version in VERSIONS {
        let mirror = Mirror::pull_through_cache();
        let (containerd, daemon) = installed(version, &up, &[mirror.hosts_entry(None)], MIRROR_PW);
        let mark = up.mark();
        assert_pulled(&containerd, &daemon, &up, "through mirror.test");

        let served_to = mirror.content_served_to();
        assert!(
            !served_to.is_empty() && served_to.iter().all(|user| user == MIRROR_USER),
            "containerd {version}: mirror.test should have served {MIRROR_USER} only: \
             {served_to:?}\n{}",
            mirror.registry().access_log()
        );
        for repository in [APP_REPOSITORY, PAUSE_REPOSITORY] {
            assert!(
                mirror_answered(&mirror, repository, 200),
                "containerd {version}: mirror.test served no manifest of {repository}:\n{}",
                mirror.registry().access_log()
            );
        }
        assert!(
            served_by(&daemon, &mirror) > 0.0,
            "containerd {version}: no {MIRROR_REQUESTS} for mirror.test with status 200:\n{}",
            daemon.metrics_page()
        );
        assert_eq!(
            handovers(&daemon, &mirror, None),
            0.0,
            "containerd {version}: a hand-over from a mirror that served:\n{}",
            daemon.metrics_page()
        );
        up.assert_only(
            mark,
            CACHE_USER,
            &format!("containerd {version} through mirror.test"),
        );
        assert_no_secret_logged(&containerd, &daemon);
    }
}

/// Test 3: a mirror that is down, or that refuses credgate's credential, hands over: the same
/// pulls succeed through credgate from the upstream with the upstream's credential
/// (`deploy`), and each hand-over is counted with its reason.
#[test]
fn a_stopped_or_refusing_mirror_hands_over_to_the_upstream_with_its_credential() {
    let up = Upstream::start();
    for version in VERSIONS {
        // Stopped: it ran when credgate was installed, then went down; nothing listens on
        // mirror.test:443.
        let mirror = Mirror::pull_through_cache();
        let entry = mirror.hosts_entry(None);
        let (containerd, daemon) = installed(version, &up, std::slice::from_ref(&entry), MIRROR_PW);
        let stopped = mirror.url();
        drop(mirror);
        let before = daemon.served_ok(REGISTRY_HOST);
        let mark = up.mark();
        assert_pulled(&containerd, &daemon, &up, "with mirror.test stopped");
        assert!(
            daemon.served_ok(REGISTRY_HOST) > before,
            "containerd {version}"
        );
        up.assert_only(
            mark,
            "deploy",
            &format!("containerd {version}, mirror.test stopped"),
        );
        let unreachable = daemon.metric_sum(HANDOVERS, |labels| {
            labels_origin(labels, &stopped)
                && labels.get("reason").is_some_and(|r| r == "unreachable")
        });
        assert!(
            unreachable >= 2.0,
            "containerd {version}: a hand-over per pull from the stopped mirror, reason \
             unreachable:\n{}",
            daemon.metrics_page()
        );
        assert_no_secret_logged(&containerd, &daemon);
        drop((containerd, daemon));

        // Refusing: credgate's credential for it is wrong, so it answers 401.
        let mirror = Mirror::pull_through_cache();
        let (containerd, daemon) = installed(version, &up, &[entry], WRONG_MIRROR_PW);
        let mark = up.mark();
        assert_pulled(&containerd, &daemon, &up, "with mirror.test refusing");
        assert!(
            mirror_answered(&mirror, APP_REPOSITORY, 401),
            "containerd {version}: credgate never tried mirror.test:\n{}",
            mirror.registry().access_log()
        );
        assert_eq!(mirror.content_served_to(), Vec::<String>::new());
        up.assert_only(
            mark,
            "deploy",
            &format!("containerd {version}, mirror.test refusing"),
        );
        assert!(
            handovers(&daemon, &mirror, Some("refused")) >= 2.0,
            "containerd {version}: a hand-over per pull from the refusing mirror, reason \
             refused:\n{}",
            daemon.metrics_page()
        );
        assert_no_secret_logged(&containerd, &daemon);
    }
}

/// Test 4: credgate honours the mirror's own settings when it dials it: a plain `http://`
/// mirror (open: tried anonymously) and a mirror whose certificate only the CA hosts.toml
/// names (`ca`, relative to the file) both serve the pulls, as their logs show.
#[test]
fn a_plain_http_mirror_and_a_mirror_with_its_own_ca_serve_pulls_through_credgate() {
    let up = Upstream::start();
    for version in VERSIONS {
        let plain = Mirror::plain_http();
        let (containerd, daemon) = installed(version, &up, &[plain.hosts_entry(None)], MIRROR_PW);
        let mark = up.mark();
        assert_pulled(&containerd, &daemon, &up, "through plain-mirror.test");
        for repository in [APP_REPOSITORY, PAUSE_REPOSITORY] {
            assert!(
                mirror_answered(&plain, repository, 200),
                "containerd {version}: plain-mirror.test served no manifest of {repository}:\n{}",
                plain.registry().access_log()
            );
        }
        assert!(
            served_by(&daemon, &plain) > 0.0 && handovers(&daemon, &plain, None) == 0.0,
            "containerd {version}:\n{}",
            daemon.metrics_page()
        );
        up.assert_only(
            mark,
            CACHE_USER,
            &format!("containerd {version} through plain-mirror.test"),
        );
        drop((containerd, daemon, plain));

        let own_ca = Mirror::own_ca();
        let mut containerd =
            node_pulling_through(version, &up, &[own_ca.hosts_entry(Some(CA_FILE))]);
        own_ca.write_own_ca(&containerd.hosts_dir().join(REGISTRY_HOST), CA_FILE);
        let daemon = CredgateDaemon::start(&credgate_config(&containerd.hosts_dir(), MIRROR_PW));
        containerd
            .install_credgate(&daemon.config_path())
            .assert_success();
        containerd.start();
        let mark = up.mark();
        assert_pulled(&containerd, &daemon, &up, "through ca-mirror.test");
        let served_to = own_ca.content_served_to();
        assert!(
            !served_to.is_empty() && served_to.iter().all(|user| user == MIRROR_USER),
            "containerd {version}: ca-mirror.test should have served {MIRROR_USER} only: \
             {served_to:?}\n{}",
            own_ca.registry().access_log()
        );
        assert!(
            served_by(&daemon, &own_ca) > 0.0 && handovers(&daemon, &own_ca, None) == 0.0,
            "containerd {version}:\n{}",
            daemon.metrics_page()
        );
        up.assert_only(
            mark,
            CACHE_USER,
            &format!("containerd {version} through ca-mirror.test"),
        );
        assert_no_secret_logged(&containerd, &daemon);
    }
}

/// One file or directory under the hosts dir, as uninstall must give it back.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
}

/// Everything under `dir` (symlinks are not followed; the test writes none).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read hosts dir") {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let mode = meta.permissions().mode() & 0o7777;
            let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
            if meta.is_dir() {
                pending.push(path);
                found.insert(relative, Entry::Dir { mode });
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                found.insert(relative, Entry::File { mode, bytes });
            }
        }
    }
    found
}

/// A hosts.toml's hosts in file order: each key, its capabilities and its
/// `X-Credgate-Mirror` values, each list joined by commas.
fn hosts_in_order(text: &str) -> Vec<(String, String, String)> {
    let document: toml_edit::DocumentMut = text.parse().expect("installed hosts.toml parses");
    let Some(hosts) = document.get("host").and_then(|h| h.as_table_like()) else {
        return Vec::new();
    };
    let joined = |item: Option<&toml_edit::Item>| {
        item.and_then(|v| v.as_array())
            .map(|values| {
                let strings: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
                strings.join(",")
            })
            .unwrap_or_default()
    };
    hosts
        .iter()
        .map(|(key, host)| {
            let capabilities = joined(host.get("capabilities"));
            let mirror = joined(host.get("header").and_then(|h| h.get("X-Credgate-Mirror")));
            (key.to_string(), capabilities, mirror)
        })
        .collect()
}

/// `(key, capabilities, X-Credgate-Mirror)` as [`hosts_in_order`] lists a host.
fn host(key: &str, capabilities: &str, mirror: &str) -> (String, String, String) {
    (
        key.to_string(),
        capabilities.to_string(),
        mirror.to_string(),
    )
}

/// Test 5: install fronts every host of every hosts.toml in order (docs/design.md's
/// layout), a second install changes nothing, and uninstall gives every file and directory
/// back byte for byte, with its mode, and removes what install added.
#[test]
fn install_fronts_every_mirror_in_order_and_uninstall_restores_every_file_byte_for_byte() {
    let operators = format!(
        "# pull through the caches first\nserver = \"https://{REGISTRY_HOST}\"\n\n\
         [host.\"https://{MIRROR_HOST}\"]   # Harbor\n  capabilities = [\"pull\", \"resolve\"]\n\n\
         [host.\"http://plain-mirror.test:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
         skip_verify = false\n\n\
         [host.\"https://{CA_MIRROR_HOST}\"]\n  capabilities = [\"pull\"]\n  ca = \"{CA_FILE}\"\n\n\
         [host.\"https://push.test\"]\n  capabilities = [\"push\"]\n"
    );
    let hub = "server = \"https://registry-1.docker.io\"\n\n\
               [host.\"https://hub-cache.test/v2/hub\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
               override_path = true\n";
    for version in VERSIONS {
        let containerd = Containerd::configure_with_hosts_dir(version, "registry.test/pause:3.10");
        let registry_file = containerd.write_hosts_toml(REGISTRY_HOST, &operators);
        let hub_file = containerd.write_hosts_toml("docker.io", hub);
        std::fs::set_permissions(&hub_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(
            registry_file.with_file_name(CA_FILE),
            "not read by install\n",
        )
        .unwrap();
        let daemon = CredgateDaemon::start(&credgate_config(&containerd.hosts_dir(), MIRROR_PW));
        let before = snapshot(&containerd.hosts_dir());
        let config_before = std::fs::read(containerd.config_path()).unwrap();

        containerd
            .install_credgate(&daemon.config_path())
            .assert_success();
        let endpoint = format!("http://{}", daemon.mirror);
        let fronted = |n: usize| format!("{endpoint}/mirror/{n}");
        let installed = std::fs::read_to_string(&registry_file).unwrap();
        let (both, pull) = ("pull,resolve", "pull");
        let cache = format!("https://{MIRROR_HOST}");
        let plain = "http://plain-mirror.test:5000";
        let own_ca = format!("https://{CA_MIRROR_HOST}");
        let expected = vec![
            host(&fronted(1), both, &cache),
            host(&fronted(2), both, plain),
            host(&fronted(3), pull, &own_ca),
            host(&endpoint, both, ""),
            host(&cache, both, ""),
            host(plain, both, ""),
            host(&own_ca, pull, ""),
            host("https://push.test", "push", ""),
        ];
        assert_eq!(
            hosts_in_order(&installed),
            expected,
            "containerd {version}: registry.test/hosts.toml after install:\n{installed}"
        );
        let hub_installed = std::fs::read_to_string(&hub_file).unwrap();
        let hub_cache = "https://hub-cache.test/v2/hub";
        assert_eq!(
            hosts_in_order(&hub_installed),
            vec![
                host(&fronted(1), both, hub_cache),
                host(&endpoint, both, ""),
                host(hub_cache, both, ""),
            ],
            "containerd {version}: docker.io/hosts.toml after install:\n{hub_installed}"
        );
        for text in [&installed, &hub_installed] {
            assert!(text.contains("server = \"https://"), "{text}");
            assert_eq!(
                text.matches(MIRROR_SECRET).count(),
                hosts_in_order(text)
                    .iter()
                    .filter(|(key, _, _)| key.starts_with(&endpoint))
                    .count(),
                "containerd {version}: every credgate host carries the secret:\n{text}"
            );
        }

        let once = snapshot(&containerd.hosts_dir());
        containerd
            .install_credgate(&daemon.config_path())
            .assert_success();
        assert!(
            snapshot(&containerd.hosts_dir()) == once,
            "containerd {version}: a second install changed the hosts dir"
        );

        containerd.uninstall_credgate().assert_success();
        let after = snapshot(&containerd.hosts_dir());
        for (path, entry) in &before {
            assert_eq!(
                after.get(path),
                Some(entry),
                "containerd {version}: {} not restored",
                path.display()
            );
        }
        let added: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
        assert!(
            added.is_empty(),
            "containerd {version}: uninstall left {added:?}"
        );
        assert_eq!(
            std::fs::read(containerd.config_path()).unwrap(),
            config_before,
            "containerd {version}: config.toml not restored"
        );
    }
}
