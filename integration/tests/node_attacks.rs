//! The standing attack suite (issue 10, "the trust boundary"): every hole the adversarial
//! review found, as an attack on the real daemon (`credgate serve`), real distribution
//! registries, the GitLab-like token server, real containerd 2.1 and real clients. Each test
//! is named after its attack, asserts on what matters (the secret never given out, the
//! internal host never dialled, the pull still served), appends its row to the attack report
//! (`credgate_integration::attack::report_path`, a markdown table for the README) and checks
//! that no configured secret reached the daemon's log.
//!
//! A node test: `cargo build --bin credgate && unshare --mount --net -- cargo test -p
//! credgate-integration --test node_attacks` as root (integration/test-all.sh does this).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use credgate_integration::attack::{
    self, assert_alive, credential_helper, credgate_cli, mode_of, pull_through, resolver, series,
    vm_rss_kib, write_docker_config, write_file, Attack, ConnectedCaller, DialRecorder,
    HostileTokens, IdleConnections, RawServe,
};
use credgate_integration::clients::DockerConfig;
use credgate_integration::containerd::Containerd;
use credgate_integration::cri::CriClient;
use credgate_integration::daemon::{CredgateDaemon, MIRROR_SECRET};
use credgate_integration::https::{self, response, HttpRequest, HttpsServer};
use credgate_integration::images::push_image;
use credgate_integration::mirror::{self, MirrorResponse};
use credgate_integration::process::CommandOutput;
use credgate_integration::registry::{Registry, RegistryAuth};
use credgate_integration::token_server::{TokenServer, TokenUser};
use http::StatusCode;

use credgate_integration::gitlab::DEPLOY_PW;
use credgate_integration::images::sha256;
const HUB_PW: &str = "hub-pw-att-4e3";
const ALICE_PW: &str = "alice-pw-att-4e4";
const INTERNAL_PW: &str = "internal-pw-att-4e5";
const REGISTRY_TOKEN: &str = "registry-token-att-4e6";
/// docker's "not found" reply, which clients read as "anonymous".
const NOT_FOUND: &str = "credentials not found in native keychain";
/// A uid no other part of the node uses, for a non-root caller of the socket.
const CALLER_UID: u32 = 4242;

/// The name of the test function it is used in.
macro_rules! this_test {
    () => {{
        fn here() {}
        let name = std::any::type_name_of_val(&here);
        let name = name.strip_suffix("::here").unwrap_or(name);
        name.rsplit("::").next().unwrap_or(name)
    }};
}

/// A program's exit code as the report shows it.
fn exit_code(output: &CommandOutput) -> String {
    output
        .status
        .code()
        .map_or_else(|| output.status.to_string(), |code| code.to_string())
}

fn entry(scope: &str, user: &str, password: &str) -> String {
    format!(
        "[[registry]]\nmatch = \"{scope}\"\nusername = \"{user}\"\npassword = \"{password}\"\n\n"
    )
}

/// registry.test with tokens from auth.test (`deploy` owns group/sub), and credgate holding
/// deploy's password for group/sub, auth.test allowed as its realm.
fn gitlab_daemon() -> CredgateDaemon {
    CredgateDaemon::start(&format!(
        "[upstream]\nallow_realm_hosts = [\"auth.test\"]\n\n{}",
        entry("registry.test/group/sub", "deploy", DEPLOY_PW)
    ))
}

fn manifest(daemon: &CredgateDaemon, repository: &str, ns: &str) -> MirrorResponse {
    mirror::get(
        daemon.mirror,
        MIRROR_SECRET,
        &format!("/v2/{repository}/manifests/v1?ns={ns}"),
    )
}

fn blob(daemon: &CredgateDaemon, repository: &str, digest: &str, ns: &str) -> MirrorResponse {
    mirror::get(
        daemon.mirror,
        MIRROR_SECRET,
        &format!("/v2/{repository}/blobs/{digest}?ns={ns}"),
    )
}

/// How a response reads in the report: the status, and the body's size or why it broke off.
fn summary(response: &MirrorResponse) -> String {
    match &response.body {
        Ok(body) => format!("{} ({} bytes)", response.status, body.len()),
        Err(error) => format!("{} then the body broke off ({error})", response.status),
    }
}

/// A docker config holding Docker Hub's credential as `docker login` writes it, and credgate
/// reading it.
fn docker_hub_daemon(dir: &Path) -> CredgateDaemon {
    let login = DockerConfig::new().auth("https://index.docker.io/v1/", "hubuser", HUB_PW);
    let path = write_docker_config(dir, &login);
    CredgateDaemon::start(&format!(
        "[[docker_config]]\npath = {:?}\n",
        path.display().to_string()
    ))
}

// ---------------------------------------------------------------------------------------
// 1-3: the docker credential helper
// ---------------------------------------------------------------------------------------

#[test]
fn helper_get_for_kind_registry_5000_never_gets_docker_hubs_credential() {
    let mut attack = Attack::begin(this_test!());
    let dir = tempfile::tempdir().unwrap();
    let daemon = docker_hub_daemon(dir.path());
    // Docker Hub's own names get its credential: the helper works, and holds the secret.
    for hub in ["https://index.docker.io/v1/", "docker.io"] {
        let got = credential_helper(&daemon, "get", hub);
        got.assert_success();
        assert!(got.stdout.contains(HUB_PW), "{hub}: {}", got.stdout.len());
    }
    for server in ["kind-registry:5000", "myreg:5000"] {
        let got = credential_helper(&daemon, "get", server);
        attack.answered(format!(
            "`get {server}`: exit {}, {:?}",
            exit_code(&got),
            got.stdout.trim().replace(HUB_PW, "<Docker Hub's secret>")
        ));
        assert!(
            !got.combined().contains(HUB_PW),
            "{server} was answered with Docker Hub's credential"
        );
        assert_eq!(got.status.code(), Some(1), "{server}: {got}");
        assert!(got.stdout.contains(NOT_FOUND), "{server}: {got}");
    }
    attack.kept("Docker Hub's secret only for Docker Hub's names");
    attack.assert_log_clean(&daemon, &[HUB_PW]);
}

#[test]
fn helper_list_names_docker_hub_as_index_docker_io_v1() {
    let mut attack = Attack::begin(this_test!());
    let dir = tempfile::tempdir().unwrap();
    let daemon = docker_hub_daemon(dir.path());
    let listed = credential_helper(&daemon, "list", "");
    listed.assert_success();
    attack.answered(format!("`list`: {}", listed.stdout.trim()));
    attack.assert_text_clean("the list output", &listed.combined(), &[HUB_PW]);
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&listed.stdout).expect("list prints a JSON object");
    assert_eq!(
        entries.get("https://index.docker.io/v1/"),
        Some(&serde_json::json!("hubuser")),
        "docker and moby look Docker Hub up as https://index.docker.io/v1/: {entries:?}"
    );
    assert!(
        !entries.contains_key("docker.io"),
        "a key no client asks for: {entries:?}"
    );
    attack.kept("the username only, under the key docker asks for");
    attack.assert_log_clean(&daemon, &[HUB_PW]);
}

#[test]
fn helper_for_a_scope_holding_only_a_registry_token_says_not_found_and_lists_nothing() {
    let mut attack = Attack::begin(this_test!());
    let daemon = CredgateDaemon::start(&format!(
        "[[registry]]\nmatch = \"tokenonly.test\"\nregistry_token = \"{REGISTRY_TOKEN}\"\n\n{}",
        entry("registry.test", "deploy", DEPLOY_PW)
    ));
    let got = credential_helper(&daemon, "get", "tokenonly.test");
    attack.answered(format!(
        "`get tokenonly.test`: exit {}, {:?}",
        exit_code(&got),
        got.stdout.trim()
    ));
    attack.assert_text_clean("the get output", &got.combined(), &[REGISTRY_TOKEN]);
    assert_eq!(got.status.code(), Some(1), "{got}");
    assert_eq!(
        got.stdout.trim(),
        NOT_FOUND,
        "docker-credential-helpers' client.Get reads anything else as an error, not as anonymous"
    );
    let listed = credential_helper(&daemon, "list", "");
    listed.assert_success();
    attack.answered(format!("`list`: {}", listed.stdout.trim()));
    attack.assert_text_clean(
        "the list output",
        &listed.combined(),
        &[REGISTRY_TOKEN, DEPLOY_PW],
    );
    assert!(
        listed.stdout.contains("registry.test"),
        "the password scope is listed: {}",
        listed.stdout
    );
    assert!(
        !listed.stdout.contains("tokenonly.test"),
        "list advertises a credential get cannot give: {}",
        listed.stdout
    );
    attack.assert_log_clean(&daemon, &[REGISTRY_TOKEN, DEPLOY_PW]);
}

// ---------------------------------------------------------------------------------------
// 4-5: install and uninstall
// ---------------------------------------------------------------------------------------

const REGISTRY_HOSTS_TOML: &str = "server = \"https://registry.test\"\n\n\
[host.\"https://mirror.registry.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n";

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn carrying_the_secret(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
                .contains(MIRROR_SECRET)
        })
        .collect()
}

#[test]
fn install_over_a_0644_registry_hosts_toml_leaves_every_secret_file_0600_and_uninstall_restores_it()
{
    let mut attack = Attack::begin(this_test!());
    let daemon = CredgateDaemon::start("");
    let containerd = Containerd::configure("2.1", "registry.test/group/sub/pause:3.10");
    let registry_hosts = containerd.hosts_dir().join("registry.test/hosts.toml");
    write_file(&registry_hosts, REGISTRY_HOSTS_TOML, 0o644);
    let config_before = std::fs::read(containerd.config_path()).unwrap();

    let install = containerd.install_credgate(&daemon.config_path());
    install.assert_success();
    attack.assert_text_clean("install's output", &install.combined(), &[]);
    let carrying = carrying_the_secret(&containerd.hosts_dir());
    let modes: Vec<String> = carrying
        .iter()
        .map(|path| {
            let relative = path.strip_prefix(containerd.hosts_dir()).unwrap_or(path);
            format!("{} {:o}", relative.display(), mode_of(path))
        })
        .collect();
    attack.answered(format!(
        "install: files carrying the secret: {}",
        modes.join(", ")
    ));
    assert!(
        carrying.contains(&registry_hosts),
        "the endpoint was not merged into registry.test/hosts.toml: {modes:?}"
    );
    for path in &carrying {
        assert!(
            mode_of(path) == 0o600,
            "{} carries the secret and is readable by others: {modes:?}",
            path.display()
        );
    }

    let uninstall = containerd.uninstall_credgate();
    uninstall.assert_success();
    attack.assert_text_clean("uninstall's output", &uninstall.combined(), &[]);
    let restored = std::fs::read_to_string(&registry_hosts).unwrap();
    attack.answered(format!(
        "uninstall: registry.test/hosts.toml back as {:o}, {}",
        mode_of(&registry_hosts),
        if restored == REGISTRY_HOSTS_TOML {
            "byte-identical"
        } else {
            "CHANGED"
        }
    ));
    assert_eq!(restored, REGISTRY_HOSTS_TOML, "uninstall changed the file");
    assert!(
        mode_of(&registry_hosts) == 0o644,
        "uninstall left mode {:o}, not the original 644",
        mode_of(&registry_hosts)
    );
    assert_eq!(
        std::fs::read(containerd.config_path()).unwrap(),
        config_before
    );
    assert_eq!(
        carrying_the_secret(&containerd.hosts_dir()),
        Vec::<PathBuf>::new(),
        "the secret is still on disk after uninstall"
    );
    attack.kept("no file with the secret readable by others; the original back byte and mode for byte and mode");
    attack.assert_log_clean(&daemon, &[]);
}

#[test]
fn install_and_uninstall_dry_runs_never_print_the_secret() {
    let mut attack = Attack::begin(this_test!());
    let daemon = CredgateDaemon::start("");
    let containerd = Containerd::configure("2.1", "registry.test/group/sub/pause:3.10");
    write_file(
        &containerd.hosts_dir().join("registry.test/hosts.toml"),
        REGISTRY_HOSTS_TOML,
        0o644,
    );
    let files = |verb: &str| -> Vec<String> {
        vec![
            verb.to_string(),
            "--dry-run".to_string(),
            "--containerd-config".to_string(),
            containerd.config_path().display().to_string(),
            "--hosts-dir".to_string(),
            containerd.hosts_dir().display().to_string(),
        ]
    };
    let run = |verb: &str| {
        let args = files(verb);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        credgate_cli(&daemon.config_path(), &args)
    };
    let default_hosts = containerd.hosts_dir().join("_default/hosts.toml");

    let install = run("install");
    install.assert_success();
    attack.answered(format!(
        "`install --dry-run`: a diff of {} lines{}",
        install.stdout.lines().count(),
        if install.stdout.contains("X-Credgate-Secret") {
            " setting X-Credgate-Secret"
        } else {
            ""
        }
    ));
    assert!(!default_hosts.exists(), "a dry run wrote hosts.toml");
    attack.assert_text_clean("`install --dry-run`'s output", &install.combined(), &[]);
    assert!(
        install.stdout.contains("X-Credgate-Secret"),
        "the diff does not show the header is set: {install}"
    );

    containerd
        .install_credgate(&daemon.config_path())
        .assert_success();
    let uninstall = run("uninstall");
    uninstall.assert_success();
    attack.answered(format!(
        "`uninstall --dry-run`: a diff of {} lines",
        uninstall.stdout.lines().count()
    ));
    assert!(default_hosts.exists(), "a dry run removed hosts.toml");
    attack.assert_text_clean("`uninstall --dry-run`'s output", &uninstall.combined(), &[]);
    assert!(
        uninstall.stdout.contains("X-Credgate-Secret"),
        "the diff does not show the header goes: {uninstall}"
    );
    attack.assert_log_clean(&daemon, &[]);
}

// ---------------------------------------------------------------------------------------
// 6 and 13a: a hostile token server
// ---------------------------------------------------------------------------------------

/// A token realm at b.glob.test that rewrites auth.test's answers for registry.test, where
/// deploy has pushed group/sub/app:v1; credgate is started per case by the test.
fn hostile_gitlab() -> (TokenServer, HostileTokens, Registry) {
    let tokens = TokenServer::builder("auth.test")
        .user(TokenUser::new("deploy", DEPLOY_PW, &["group/sub"]))
        .start();
    let hostile = HostileTokens::start("b.glob.test", &tokens);
    let registry = Registry::start(hostile.registry_auth(&tokens), "registry.test");
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    (tokens, hostile, registry)
}

/// For each hostile `field` value: a fresh credgate pulls group/sub/app:v1 twice through
/// the hostile realm; both pulls must work and the daemon stay up.
fn pulls_survive_hostile_token_field(attack: &mut Attack, field: &str, values: &[&str]) {
    let (_tokens, hostile, _registry) = hostile_gitlab();
    let config = format!(
        "[upstream]\nallow_realm_hosts = [\"{}\"]\n\n{}",
        hostile.host(),
        entry("registry.test/group/sub", "deploy", DEPLOY_PW)
    );
    for value in values {
        hostile.set(field, value);
        let daemon = CredgateDaemon::start(&config);
        let rewritten = hostile.rewritten();
        let first = pull_through(&daemon, "registry.test", "group/sub/app", "v1");
        assert!(
            hostile.rewritten() > rewritten,
            "{field} {value}: the hostile realm was never asked"
        );
        assert_alive(&daemon);
        let second = pull_through(&daemon, "registry.test", "group/sub/app", "v1");
        assert_alive(&daemon);
        let shown: String = value.chars().take(40).collect();
        attack.answered(format!(
            "`{field}: {shown}`: first pull {}, next pull {}",
            outcome(&first),
            outcome(&second)
        ));
        assert!(
            first.is_ok(),
            "{field} {value}: first pull: {first:?}\n{}",
            daemon.log()
        );
        assert!(
            second.is_ok(),
            "{field} {value}: the next pull of the scope: {second:?}\n{}",
            daemon.log()
        );
        attack.assert_log_clean(&daemon, &[DEPLOY_PW]);
    }
    attack.kept("the daemon stayed up; the next pull of the scope still worked");
}

fn outcome(pulled: &Result<usize, String>) -> String {
    match pulled {
        Ok(blobs) => format!("ok ({blobs} blobs)"),
        Err(why) => format!("failed ({why})"),
    }
}

#[test]
fn a_token_server_answering_expires_in_1e20_poisons_no_later_pull() {
    let mut attack = Attack::begin(this_test!());
    pulls_survive_hostile_token_field(&mut attack, "expires_in", &["1e20", "1e19", "-1"]);
}

#[test]
fn a_token_server_answering_a_hostile_issued_at_breaks_no_pull() {
    let mut attack = Attack::begin(this_test!());
    let long_fraction = format!("\"2024-01-01T00:00:00.{}Z\"", "9".repeat(5000));
    pulls_survive_hostile_token_field(
        &mut attack,
        "issued_at",
        &[
            "\"9999999999-99-99T99:99:99Z\"",
            "\"9223372036854775807-12-31T23:59:59Z\"",
            "\"2024-01-01T00:00:9223372036854775807Z\"",
            "\"2024-01-01T00:00:00+9223372036854775807:00\"",
            "\"0000-00-00T00:00:60+99:99\"",
            &long_fraction,
            "18446744073709551615",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// 7: state keyed by attacker-chosen input
// ---------------------------------------------------------------------------------------

#[test]
fn two_thousand_distinct_ns_values_grow_neither_memory_nor_metric_series() {
    let mut attack = Attack::begin(this_test!());
    // Names under unknown.attack.test get NXDOMAIN from the node's resolver at once.
    resolver();
    let (_tokens, _registry) = credgate_integration::gitlab::start();
    push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    let daemon = gitlab_daemon();
    // Every kind of request once, so each label value a fixed credgate would use exists.
    pull_through(&daemon, "registry.test", "group/sub/app", "v1").expect("a pull");
    manifest(&daemon, "team/app", "10.255.255.1");
    manifest(&daemon, "team/app", "warm.unknown.attack.test");
    let metrics_before = https::plain_get(daemon.metrics, "/metrics");
    let rss_before = vm_rss_kib(daemon.pid());

    let statuses = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (mirror, statuses) = (daemon.mirror, statuses.clone());
            std::thread::spawn(move || {
                for i in (worker..2000).step_by(8) {
                    let ns = if i % 2 == 0 {
                        format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
                    } else {
                        format!("n{i}.unknown.attack.test")
                    };
                    let path = format!("/v2/team/app{i}/manifests/v1?ns={ns}");
                    let r = mirror::get(mirror, MIRROR_SECRET, &path);
                    statuses.lock().unwrap().push((i % 2 == 0, r.status));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let statuses = statuses.lock().unwrap().clone();
    let metrics_after = https::plain_get(daemon.metrics, "/metrics");
    let rss_after = vm_rss_kib(daemon.pid());
    let (before, after) = (series(&metrics_before), series(&metrics_after));
    let before_set: HashSet<&String> = before.iter().collect();
    let new_series: Vec<&String> = after.iter().filter(|s| !before_set.contains(s)).collect();
    let grown_kib = rss_after.saturating_sub(rss_before);
    let refused = statuses
        .iter()
        .filter(|(private, s)| *private && *s == 403)
        .count();
    let served = statuses.iter().filter(|(_, s)| *s < 400).count();
    attack.answered(format!(
        "1,000 private `ns`: {refused} answered 403; 1,000 unknown names: answered {:?}; \
         metric series {} → {}; RSS {} → {} KiB",
        statuses
            .iter()
            .filter(|(private, _)| !private)
            .map(|(_, s)| *s)
            .collect::<HashSet<_>>(),
        before.len(),
        after.len(),
        rss_before,
        rss_after
    ));
    assert_eq!(refused, 1000, "every private ns is refused");
    assert_eq!(served, 0, "an attacker's ns was served");
    assert!(
        new_series.is_empty(),
        "{} new metric series, e.g. {:?}",
        new_series.len(),
        new_series.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        grown_kib < 32 * 1024,
        "the daemon's RSS grew by {grown_kib} KiB over 2,000 attacker ns values"
    );
    assert_alive(&daemon);
    pull_through(&daemon, "registry.test", "group/sub/app", "v1").expect("a pull afterwards");
    attack.kept("the series count and RSS stayed flat; a real pull still served");
    attack.assert_log_clean(&daemon, &[DEPLOY_PW]);
}

// ---------------------------------------------------------------------------------------
// 8: docker configs and their credential helpers
// ---------------------------------------------------------------------------------------

/// `path` spelled relative to this process's working directory (which the daemon and the
/// CLI inherit), climbing to `/` first: `../../../tmp/…/evil`.
fn relative_to_cwd(path: &Path) -> String {
    let cwd = std::env::current_dir().expect("cwd");
    let up = cwd.components().count().saturating_sub(1);
    let relative = path.strip_prefix("/").unwrap_or(path);
    format!("{}{}", "../".repeat(up), relative.display())
}

#[test]
fn a_docker_config_naming_its_helper_by_path_never_runs_it() {
    let mut attack = Attack::begin(this_test!());
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("the-helper-ran");
    let evil = dir.path().join("evil");
    write_file(
        &evil,
        &format!(
            "#!/bin/sh\necho \"$0 $*\" >>{}\n\
             echo '{{\"ServerURL\":\"registry.test\",\"Username\":\"evil\",\"Secret\":\"evil-secret\"}}'\n",
            marker.display()
        ),
        0o755,
    );
    let absolute = evil.display().to_string();
    let relative = relative_to_cwd(&evil);
    assert!(
        Path::new(&relative).is_file(),
        "{relative} reaches the program"
    );
    let cases = [
        (
            "credsStore",
            absolute.clone(),
            DockerConfig::new().creds_store(&absolute),
        ),
        (
            "credsStore",
            relative.clone(),
            DockerConfig::new().creds_store(&relative),
        ),
        (
            "credHelpers",
            absolute.clone(),
            DockerConfig::new().cred_helper("registry.test", &absolute),
        ),
        (
            "credHelpers",
            relative.clone(),
            DockerConfig::new().cred_helper("registry.test", &relative),
        ),
    ];
    let mut sources = String::new();
    let mut wrong = Vec::new();
    for (n, (key, name, config)) in cases.iter().enumerate() {
        let case_dir = dir.path().join(format!("case{n}"));
        let docker_config = write_docker_config(&case_dir, config);
        let credgate_config = case_dir.join("credgate.toml");
        let source = format!(
            "[[docker_config]]\npath = {:?}\n\n",
            docker_config.display().to_string()
        );
        write_file(&credgate_config, &source, 0o600);
        sources.push_str(&source);
        let lookup = credgate_cli(&credgate_config, &["lookup", "registry.test/group/app:v1"]);
        let shown = if name.starts_with('/') {
            "/…/evil"
        } else {
            "../…/evil"
        };
        let ran = marker.exists();
        attack.answered(format!(
            "{key} {shown:?}: `credgate lookup` exit {}{}, {:?}",
            exit_code(&lookup),
            if ran { ", THE PROGRAM RAN" } else { "" },
            lookup.stderr.lines().last().unwrap_or_default()
        ));
        let _ = std::fs::remove_file(&marker);
        if ran {
            wrong.push(format!("{key} = {name:?} ran the program"));
        }
        if lookup.combined().contains("evil-secret") {
            wrong.push(format!("{key} = {name:?}: its answer was used: {lookup}"));
        }
        if lookup.success() {
            wrong.push(format!("{key} = {name:?} is not an error: {lookup}"));
        } else if !lookup
            .combined()
            .contains(&docker_config.display().to_string())
        {
            wrong.push(format!(
                "{key} = {name:?}: the error does not name the file: {lookup}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The daemon holds all four; a client's lookup through it runs none either.
    let daemon = CredgateDaemon::start(&sources);
    let got = credential_helper(&daemon, "get", "registry.test");
    attack.answered(format!(
        "through the daemon: `get registry.test` exit {}",
        exit_code(&got)
    ));
    assert!(!marker.exists(), "the daemon ran the program");
    assert!(!got.combined().contains("evil-secret"), "{got}");
    attack.kept("the program never ran (its marker file never appeared)");
    attack.assert_log_clean(&daemon, &["evil-secret"]);
}

#[test]
fn a_docker_config_writable_by_group_or_others_is_refused() {
    let mut attack = Attack::begin(this_test!());
    let dir = tempfile::tempdir().unwrap();
    let docker_config = write_docker_config(
        dir.path(),
        &DockerConfig::new().auth("registry.test", "deploy", DEPLOY_PW),
    );
    let credgate_config = dir.path().join("credgate.toml");
    write_file(
        &credgate_config,
        &format!(
            "[[docker_config]]\npath = {:?}\n",
            docker_config.display().to_string()
        ),
        0o600,
    );
    let lookup = || {
        credgate_cli(
            &credgate_config,
            &["lookup", "--json", "registry.test/group/app"],
        )
    };
    // 0600 and 0644 are what docker leaves: read as usual.
    for mode in [0o600, 0o644] {
        std::fs::set_permissions(
            &docker_config,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        let ok = lookup();
        ok.assert_success();
        assert!(ok.stdout.contains("\"credentials\""), "mode {mode:o}: {ok}");
    }
    let mut wrong = Vec::new();
    for mode in [0o666, 0o620, 0o602] {
        std::fs::set_permissions(
            &docker_config,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        let refused = lookup();
        attack.answered(format!(
            "mode {mode:o}: `credgate lookup` exit {}, {:?}",
            exit_code(&refused),
            refused.stderr.lines().last().unwrap_or_default()
        ));
        attack.assert_text_clean("lookup's output", &refused.combined(), &[DEPLOY_PW]);
        let text = refused.combined();
        if refused.success() || refused.stdout.contains("\"credentials\"") {
            wrong.push(format!(
                "mode {mode:o}: a config others can rewrite was used: {refused}"
            ));
        } else if !(text.contains(&docker_config.display().to_string())
            && (text.contains("writable") || text.contains(&format!("{mode:o}"))))
        {
            wrong.push(format!(
                "mode {mode:o}: the error does not name the file and its mode: {refused}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The daemon refuses it too.
    let daemon = CredgateDaemon::start(&std::fs::read_to_string(&credgate_config).unwrap());
    let got = credential_helper(&daemon, "get", "registry.test");
    attack.answered(format!(
        "through the daemon (mode 602): `get registry.test` exit {}",
        exit_code(&got)
    ));
    assert!(
        !got.stdout.contains(DEPLOY_PW),
        "the daemon used the loose config"
    );
    attack.kept("the credential in a loose config was never used");
    attack.assert_log_clean(&daemon, &[DEPLOY_PW]);
}

#[test]
fn parallel_blob_requests_through_a_creds_store_spawn_a_bounded_number_of_helpers() {
    let mut attack = Attack::begin(this_test!());
    let _registry = Registry::start(RegistryAuth::basic(&[("alice", ALICE_PW)]), "basic.test");
    let image = push_image("basic.test", "team/app", "v1", "alice", ALICE_PW);
    let dir = tempfile::tempdir().unwrap();
    let spawns = dir.path().join("spawns.log");
    let bin = dir.path().join("bin");
    write_file(
        &bin.join("docker-credential-counting"),
        &format!(
            "#!/bin/sh\n\
             echo \"start $1 $$\" >>{log}\n\
             input=$(cat)\n\
             sleep 0.2\n\
             case \"$1\" in\n\
             list) echo '{{\"basic.test\":\"alice\"}}' ;;\n\
             get) if [ \"$input\" = basic.test ]; then\n\
               echo '{{\"ServerURL\":\"basic.test\",\"Username\":\"alice\",\"Secret\":\"{ALICE_PW}\"}}'\n\
             else echo '{NOT_FOUND}'; echo \"end $1 $$\" >>{log}; exit 1; fi ;;\n\
             *) exit 1 ;;\n\
             esac\n\
             echo \"end $1 $$\" >>{log}\n",
            log = spawns.display()
        ),
        0o755,
    );
    let docker_config =
        write_docker_config(dir.path(), &DockerConfig::new().creds_store("counting"));
    let daemon = CredgateDaemon::start_with_helper_dir(
        &format!(
            "[upstream]\nallow_private = [\"basic.test\"]\n\n[[docker_config]]\npath = {:?}\n",
            docker_config.display().to_string()
        ),
        &bin,
    );
    // The blobs to ask for, read directly (so credgate's caches start cold).
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("alice:{ALICE_PW}")
        )
    );
    let direct = https::get(
        "basic.test",
        "/v2/team/app/manifests/v1",
        &[
            ("authorization", &basic),
            ("accept", mirror::MANIFEST_ACCEPT),
        ],
    )
    .expect("manifest");
    let json: serde_json::Value = serde_json::from_slice(&direct.body).expect("manifest JSON");
    let mut digests = vec![json["config"]["digest"].as_str().unwrap().to_string()];
    digests.push(json["layers"][0]["digest"].as_str().unwrap().to_string());
    assert_eq!(sha256(&direct.body), image.digest);

    const REQUESTS: usize = 64;
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (mirror, digest) = (daemon.mirror, digests[i % digests.len()].clone());
            std::thread::spawn(move || {
                let path = format!("/v2/team/app/blobs/{digest}?ns=basic.test");
                mirror::get(mirror, MIRROR_SECRET, &path).status
            })
        })
        .collect();
    let statuses: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    let log = std::fs::read_to_string(&spawns).unwrap_or_default();
    let spawned = log.lines().filter(|l| l.starts_with("start")).count();
    let (mut running, mut most) = (0usize, 0usize);
    for line in log.lines() {
        if line.starts_with("start") {
            running += 1;
            most = most.max(running);
        } else if line.starts_with("end") {
            running = running.saturating_sub(1);
        }
    }
    attack.answered(format!(
        "{REQUESTS} parallel blob requests: {} served 200; {spawned} helper processes, at most {most} at once",
        statuses.iter().filter(|s| **s == 200).count()
    ));
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the blobs were not all served: {statuses:?}\n{log}\n{}",
        daemon.log()
    );
    assert!(
        spawned <= 8,
        "{REQUESTS} blob requests spawned {spawned} helper processes (at most {most} at once)"
    );
    attack.kept("every blob served; the helper's answer reused");
    attack.assert_log_clean(&daemon, &[ALICE_PW]);
}

// ---------------------------------------------------------------------------------------
// 9: idle connections
// ---------------------------------------------------------------------------------------

/// containerd 2.1 with credgate installed for `daemon` by the real CLI, started.
fn containerd_21(daemon: &CredgateDaemon, sandbox_image: &str) -> Containerd {
    let mut containerd = Containerd::configure("2.1", sandbox_image);
    containerd
        .install_credgate(&daemon.config_path())
        .assert_success();
    containerd.start();
    containerd
}

#[test]
fn two_thousand_idle_connections_do_not_starve_a_containerd_pull() {
    let mut attack = Attack::begin(this_test!());
    attack::raise_own_open_files(8192);
    let (_tokens, _registry) = credgate_integration::gitlab::start();
    let app = push_image("registry.test", "group/sub/app", "v1", "deploy", DEPLOY_PW);
    let daemon = gitlab_daemon();
    // A service without LimitNOFILE gets systemd's default soft limit.
    attack::limit_open_files(daemon.pid(), 1024);
    let containerd = containerd_21(&daemon, &app.reference);
    let served_before = daemon.served_ok("registry.test");

    let idle = IdleConnections::hold(daemon.mirror, 2000);
    let open = idle.wait_open(1950, Duration::from_secs(20));
    let cri = CriClient::connect(&containerd.socket());
    let pulled = cri.pull_image(&app.reference, None);
    let (still_open, opened) = (idle.open(), idle.opened());
    drop(idle);
    let served = daemon.served_ok("registry.test") - served_before;
    attack.answered(format!(
        "{open} idle connections open when the CRI pull began ({opened} made in all, {still_open} open at its end); \
         the pull: {}; credgate served {served} requests for it",
        match &pulled {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("failed ({:?})", status.message()),
        }
    ));
    assert!(
        pulled.is_ok(),
        "containerd 2.1's pull failed while 2,000 idle connections were held: {pulled:?}\n{}",
        containerd.log_tail()
    );
    assert!(served > 0, "the pull did not go through credgate");
    assert_alive(&daemon);
    attack.kept("the private image pulled through credgate");
    attack.assert_log_clean(&daemon, &[DEPLOY_PW]);
}

// ---------------------------------------------------------------------------------------
// 10-11: hostile upstream answers
// ---------------------------------------------------------------------------------------

fn redirect(to: &str) -> https::HttpResponse {
    let mut r = response(StatusCode::FOUND, "text/plain", "");
    r.headers_mut()
        .insert("location", to.parse().expect("a Location value"));
    r
}

#[test]
fn a_redirect_from_an_allowed_registry_to_an_operator_allowed_private_host_is_refused() {
    let mut attack = Attack::begin(this_test!());
    let node = credgate_integration::node::node();
    let internal_bytes: &[u8] = b"the internal registry's private blob";
    let digest = sha256(internal_bytes);
    let internal_hits = Arc::new(AtomicUsize::new(0));
    let hits = internal_hits.clone();
    let _internal = HttpsServer::start("second.test", move |_request| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            response(
                StatusCode::OK,
                "application/octet-stream",
                Bytes::from_static(b"the internal registry's private blob"),
            )
        }
    });
    let other_ports = DialRecorder::listen(&[
        SocketAddr::new(IpAddr::V4(node.ip("second.test")), 8443),
        SocketAddr::new(IpAddr::V4(node.ip("open.test")), 8443),
    ]);
    let targets = [
        (
            "r1",
            format!("https://second.test/v2/internal/blobs/{digest}"),
        ),
        (
            "r2",
            "https://second.test/internal/path?token=1".to_string(),
        ),
        (
            "r3",
            format!("https://second.test:8443/v2/internal/blobs/{digest}"),
        ),
        (
            "r4",
            format!("https://open.test:8443/v2/internal/blobs/{digest}"),
        ),
    ];
    let locations: Arc<Vec<(String, String)>> = Arc::new(
        targets
            .iter()
            .map(|(repo, to)| (format!("/v2/{repo}/blobs/{digest}"), to.clone()))
            .collect(),
    );
    let own_bytes: &'static [u8] = b"served from the registry's own host";
    let own_digest = sha256(own_bytes);
    let own_path = format!("/v2/own/blobs/{own_digest}");
    let _public = HttpsServer::start("open.test", move |request: HttpRequest| {
        let path = request.uri.path().to_string();
        let answer = if let Some((_, to)) = locations.iter().find(|(p, _)| *p == path) {
            redirect(to)
        } else if path == own_path {
            redirect("/storage/own")
        } else if path == "/storage/own" {
            response(StatusCode::OK, "application/octet-stream", own_bytes)
        } else {
            response(StatusCode::NOT_FOUND, "application/json", "{}")
        };
        async move { answer }
    });
    // open.test stands in for a public registry; second.test is the operator's internal one.
    let daemon = CredgateDaemon::start(&format!(
        "[upstream]\nallow_private = [\"open.test\"]\n\n{}",
        entry("second.test", "internal", INTERNAL_PW)
    ));
    let own = blob(&daemon, "own", &own_digest, "open.test");
    assert_eq!(
        own.status, 200,
        "a redirect on the registry's own host: {own:?}"
    );
    for (repo, to) in &targets {
        let fetched = blob(&daemon, repo, &digest, "open.test");
        attack.answered(format!("302 to {to}: {}", summary(&fetched)));
        let leaked = fetched
            .body
            .as_ref()
            .is_ok_and(|b| b.as_ref() == internal_bytes);
        assert!(
            fetched.status >= 400 && !leaked,
            "the redirect to {to} was followed: {fetched:?}"
        );
    }
    let reached = internal_hits.load(Ordering::SeqCst);
    assert_eq!(
        reached, 0,
        "the internal registry received {reached} requests"
    );
    assert_eq!(
        other_ports.dialled(),
        Vec::new(),
        "another port on a private host was dialled"
    );
    attack.kept("the internal host never received a request (nor another port a connection)");
    attack.assert_log_clean(&daemon, &[INTERNAL_PW]);
}

#[test]
fn an_upstream_206_without_range_never_reaches_the_client_as_complete_content() {
    let mut attack = Attack::begin(this_test!());
    let good: &'static [u8] = b"the layer the manifest names, byte for byte";
    let corrupt: &'static [u8] = b"THE LAYER AN ATTACKER SWAPPED IN, same size";
    assert_eq!(good.len(), corrupt.len());
    let digest = sha256(good);
    let _upstream = HttpsServer::start("open.test", move |request: HttpRequest| {
        let path = request.uri.path().to_string();
        let answer = |status: StatusCode, body: &'static [u8]| {
            let mut r = response(status, "application/octet-stream", body);
            if status == StatusCode::PARTIAL_CONTENT {
                let range = format!("bytes 0-{}/{}", body.len() - 1, body.len());
                r.headers_mut()
                    .insert("content-range", range.parse().unwrap());
            }
            r
        };
        let reply = match path.split('/').nth(2) {
            Some("p206") => answer(StatusCode::PARTIAL_CONTENT, corrupt),
            Some("p203") => answer(StatusCode::NON_AUTHORITATIVE_INFORMATION, corrupt),
            Some("p200") => answer(StatusCode::OK, good),
            _ => response(StatusCode::NOT_FOUND, "application/json", "{}"),
        };
        async move { reply }
    });
    // The gate's own check, which `verify_digests = "always"` gives containerd's requests too
    // (`blob` speaks as containerd). By default containerd gets such a 203 unhashed and its
    // own check refuses the bytes: node_containerd's corrupt-blob test shows it.
    let daemon = CredgateDaemon::start(
        "[upstream]\nallow_private = [\"open.test\"]\nverify_digests = \"always\"\n",
    );
    let fine = blob(&daemon, "p200", &digest, "open.test");
    assert_eq!(fine.status, 200);
    assert_eq!(fine.bytes().as_ref(), good);
    for (repo, upstream) in [("p206", 206), ("p203", 203)] {
        let fetched = blob(&daemon, repo, &digest, "open.test");
        attack.answered(format!(
            "upstream {upstream} with wrong bytes: {}",
            summary(&fetched)
        ));
        let complete = fetched.body.as_ref().is_ok_and(|b| b.as_ref() == corrupt);
        assert!(
            !((200..300).contains(&fetched.status) && complete),
            "upstream {upstream}: the client got the wrong bytes as complete content: {}",
            summary(&fetched)
        );
    }
    attack.kept("the swapped bytes never reached the client as complete content");
    attack.assert_log_clean(&daemon, &[]);
}

// ---------------------------------------------------------------------------------------
// 12: SSRF spellings, DNS and rebinding
// ---------------------------------------------------------------------------------------

/// Every address an SSRF spelling below can reach in the node, with a listener on it.
fn ssrf_listeners() -> DialRecorder {
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().expect("an IP"), port);
    DialRecorder::listen(&[
        at("127.0.0.1", 443),
        at("127.0.0.1", 80),
        at("127.0.0.1", 5000),
        at("::1", 443),
        at("10.0.0.1", 443),
        at("192.0.0.8", 443),
        at("::127.0.0.1", 443),
        at("64:ff9b::7f00:1", 443),
        at("64:ff9b:1::a00:1", 443),
        at("2002:7f00:1::", 443),
        at("11.7.0.17", 443),
    ])
}

/// The addresses `listeners` were dialled at since `before` was taken.
fn newly_dialled(before: &[(SocketAddr, usize)], listeners: &DialRecorder) -> Vec<SocketAddr> {
    listeners
        .dialled()
        .into_iter()
        .filter(|dialled| !before.contains(dialled))
        .map(|(address, _)| address)
        .collect()
}

/// Names the node's resolver maps to private addresses (and one to a public and a private).
fn private_names() {
    let dns = resolver();
    let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
    dns.answer("private.attack.test", &[ip("10.0.0.1")]);
    dns.answer("loopback.attack.test", &[ip("127.0.0.1")]);
    dns.answer("mixed.attack.test", &[ip("11.7.0.17"), ip("10.0.0.1")]);
    dns.answer("v6.attack.test", &[ip("::127.0.0.1")]);
}

/// Each SSRF spelling of a host, as an attacker writes it into `ns` (raw in the query).
const NS_SPELLINGS: [&str; 23] = [
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "127.1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::a00:1]",
    "[2002:7f00:1::]",
    "192.0.0.8",
    "localhost",
    "127.0.0.1:5000",
    "localhost:443",
    "[::1]:443",
    "127%2e0%2e0%2e1",
    "%31%32%37.0.0.1",
    "private.attack.test",
    "loopback.attack.test",
    "mixed.attack.test",
    "v6.attack.test",
    // In the node's /etc/hosts (127.0.0.14) and named nowhere in this daemon's config.
    "second.test",
];

/// Spellings outside credgate's `host[:port]` grammar (userinfo, a trailing dot): refused as
/// bad input (400) before any lookup, which is a refusal too; 403 is as good.
const NS_NOT_A_HOST: [&str; 4] = [
    "user@127.0.0.1",
    "user%40127.0.0.1",
    "localhost.",
    "private.attack.test.",
];

#[test]
fn ns_in_every_ssrf_spelling_is_refused_and_never_dialled() {
    let mut attack = Attack::begin(this_test!());
    let _addresses = attack::exclusive_addresses();
    private_names();
    let listeners = ssrf_listeners();
    let daemon = CredgateDaemon::start(&entry("registry.test", "deploy", DEPLOY_PW));
    let mut wrong = Vec::new();
    let mut answers = Vec::new();
    for (ns, not_a_host) in NS_SPELLINGS
        .iter()
        .map(|ns| (*ns, false))
        .chain(NS_NOT_A_HOST.iter().map(|ns| (*ns, true)))
    {
        let dialled_before = listeners.dialled();
        let r = manifest(&daemon, "team/app", ns);
        answers.push(format!("`{ns}` {}", r.status));
        let refused = r.status == 403 || (not_a_host && r.status == 400);
        if !refused {
            wrong.push(format!("ns={ns}: answered {} instead of 403", summary(&r)));
        }
        let dialled = newly_dialled(&dialled_before, &listeners);
        if !dialled.is_empty() {
            wrong.push(format!("ns={ns}: dialled {dialled:?}"));
        }
    }
    attack.answered(answers.join(", "));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    attack.kept("no listener on any of those addresses was ever dialled");
    attack.assert_log_clean(&daemon, &[DEPLOY_PW]);
}

/// Each SSRF spelling as a redirect target an allowed upstream sends credgate to.
const REDIRECT_SPELLINGS: [&str; 17] = [
    "https://2130706433/x",
    "https://0177.0.0.1/x",
    "https://0x7f.0.0.1/x",
    "https://127.1/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://[::127.0.0.1]/x",
    "https://[64:ff9b::7f00:1]/x",
    "https://[64:ff9b:1::a00:1]/x",
    "https://[2002:7f00:1::]/x",
    "https://192.0.0.8/x",
    "https://user@127.0.0.1/x",
    "https://127.0.0.1:5000/x",
    "https://[::1]/x",
    "https://private.attack.test/x",
    "https://loopback.attack.test/x",
    "https://mixed.attack.test/x",
    "https://v6.attack.test/x",
];

/// Redirect targets that are not a valid `https://host[:port]` for credgate (a percent-encoded
/// host, a trailing dot, plain http): a bad upstream answer (502) is a refusal too.
const REDIRECT_NOT_A_HOST: [&str; 4] = [
    "https://127%2e0%2e0%2e1/x",
    "https://localhost./x",
    "https://private.attack.test./x",
    "http://127.0.0.1/x",
];

#[test]
fn redirects_to_every_ssrf_spelling_are_refused_and_never_dialled() {
    let mut attack = Attack::begin(this_test!());
    let _addresses = attack::exclusive_addresses();
    private_names();
    let listeners = ssrf_listeners();
    let digest = sha256(b"anything");
    let cases: Vec<(&str, bool)> = REDIRECT_SPELLINGS
        .iter()
        .map(|to| (*to, false))
        .chain(REDIRECT_NOT_A_HOST.iter().map(|to| (*to, true)))
        .collect();
    let locations: Vec<(String, &'static str)> = cases
        .iter()
        .enumerate()
        .map(|(n, (to, _))| (format!("/v2/r{n}/blobs/{digest}"), *to))
        .collect();
    let _upstream = HttpsServer::start("open.test", move |request: HttpRequest| {
        let path = request.uri.path().to_string();
        let answer = match locations.iter().find(|(p, _)| *p == path) {
            Some((_, to)) => redirect(to),
            None => response(StatusCode::NOT_FOUND, "application/json", "{}"),
        };
        async move { answer }
    });
    let daemon = CredgateDaemon::start("[upstream]\nallow_private = [\"open.test\"]\n");
    let mut wrong = Vec::new();
    let mut answers = Vec::new();
    for (n, (to, not_a_host)) in cases.iter().enumerate() {
        let dialled_before = listeners.dialled();
        let r = blob(&daemon, &format!("r{n}"), &digest, "open.test");
        answers.push(format!("`{to}` {}", r.status));
        let refused = r.status == 403 || (*not_a_host && r.status == 502);
        if !refused {
            wrong.push(format!(
                "302 to {to}: answered {} instead of 403",
                summary(&r)
            ));
        }
        let dialled = newly_dialled(&dialled_before, &listeners);
        if !dialled.is_empty() {
            wrong.push(format!("302 to {to}: dialled {dialled:?}"));
        }
    }
    attack.answered(answers.join(", "));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    attack.kept("no listener on any of those addresses was ever dialled");
    attack.assert_log_clean(&daemon, &[]);
}

#[test]
fn dns_rebinding_between_check_and_dial_never_reaches_a_private_address() {
    let mut attack = Attack::begin(this_test!());
    let _addresses = attack::exclusive_addresses();
    let private = DialRecorder::listen(&[
        "127.0.0.1:443".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    ]);
    let public = DialRecorder::listen(&["11.7.0.17:443".parse().unwrap()]);
    let dns = resolver();
    // The first answer is public and passes the check; every later one is private, so a
    // second resolution for the dial would reach the node itself.
    // A public-looking address on the namespace's own `lo` (see NODE_HOSTS): nothing leaves the node.
    let public_ip = IpAddr::V4(Ipv4Addr::new(11, 7, 0, 17));
    dns.answer_in_turn(
        "rebind.attack.test",
        vec![
            vec![public_ip],
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
        ],
    );
    let daemon = CredgateDaemon::start("");
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = manifest(&daemon, "team/app", "rebind.attack.test");
        answers.push(r.status.to_string());
    }
    attack.answered(format!(
        "three requests: {}; {} resolutions; dialled {:?}",
        answers.join(", "),
        dns.queries("rebind.attack.test"),
        public
            .dialled()
            .iter()
            .chain(private.dialled().iter())
            .map(|(a, n)| format!("{a} ×{n}"))
            .collect::<Vec<_>>()
    ));
    assert_eq!(
        private.dialled(),
        Vec::new(),
        "a private address was dialled after the check passed on a public one"
    );
    assert!(
        public.total() >= 1,
        "the address that passed the check was never the one dialled (resolved {} times)",
        dns.queries("rebind.attack.test")
    );
    assert!(
        answers[1..].iter().all(|s| s == "403"),
        "the private answers were not refused: {answers:?}"
    );
    attack.kept("only the checked public address was ever dialled");
    attack.assert_log_clean(&daemon, &[]);
}

// ---------------------------------------------------------------------------------------
// 13: reload, the mirror secret, 429
// ---------------------------------------------------------------------------------------

/// Not an attack: the non-root caller [`ConnectedCaller`] runs this (as uid 4242) for
/// `a_reload_removing_a_uid_refuses_its_already_connected_caller`.
#[test]
#[ignore = "the connected caller of a_reload_removing_a_uid_refuses_its_already_connected_caller; run by it"]
fn attack_tool_connected_caller() {
    attack::run_connected_caller();
}

#[test]
fn a_reload_removing_a_uid_refuses_its_already_connected_caller() {
    let mut attack = Attack::begin(this_test!());
    let daemon = CredgateDaemon::start(&format!(
        "allowed_uids = [0, {CALLER_UID}]\n\n{}",
        entry("registry.test/group/sub", "deploy", DEPLOY_PW)
    ));
    // The socket's directory is the harness's 0700 temp dir; the caller must reach it.
    std::fs::set_permissions(
        daemon.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut caller = ConnectedCaller::start(
        "attack_tool_connected_caller",
        CALLER_UID,
        &daemon.socket(),
        "registry.test/group/sub/app",
    );
    let first = caller.first_answer();
    assert!(
        first.starts_with("answered CREDENTIALS"),
        "uid {CALLER_UID} is allowed, yet: {first}"
    );
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    let without = config.replace(
        &format!("allowed_uids = [0, {CALLER_UID}]"),
        "allowed_uids = [0]",
    );
    assert_ne!(config, without);
    std::fs::write(daemon.config_path(), without).unwrap();
    daemon.reload_expecting("config reloaded");
    let second = caller.second_answer();
    attack.answered(format!(
        "before the reload: {first}; after it, on the same connection: {second}"
    ));
    attack.assert_text_clean(
        "the caller's answers",
        &format!("{first}\n{second}"),
        &[DEPLOY_PW],
    );
    assert!(
        !second.starts_with("answered"),
        "uid {CALLER_UID} was removed from allowed_uids and still got: {second}"
    );
    attack.kept("the removed uid got nothing after the reload");
    attack.assert_log_clean(&daemon, &[DEPLOY_PW]);
}

#[test]
fn two_serves_racing_to_generate_the_mirror_secret_agree() {
    let mut attack = Attack::begin(this_test!());
    const ROUNDS: usize = 10;
    let mut agreed = 0;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("mirror-secret");
        let mut a = RawServe::spawn(dir.path(), "a", &secret_file);
        let mut b = RawServe::spawn(dir.path(), "b", &secret_file);
        a.wait_ready();
        b.wait_ready();
        let written = std::fs::read_to_string(&secret_file).expect("the secret file");
        let secret = written.trim_end_matches('\n');
        let mode = mode_of(&secret_file);
        assert!(
            mode == 0o600,
            "round {round}: the secret file has mode {mode:o}"
        );
        assert!(
            secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
            "round {round}: the secret file holds {} bytes, not 64 hex digits",
            secret.len()
        );
        let probe = |serve: &RawServe| mirror::send(serve.mirror, "GET", "/v2/", Some(secret), &[]);
        let (answer_a, answer_b) = (probe(&a).status, probe(&b).status);
        if (answer_a, answer_b) != (200, 200) {
            attack.answered(format!(
                "round {round}: the file's secret got {answer_a} from one serve, {answer_b} from the other"
            ));
        }
        assert_eq!(
            (answer_a, answer_b),
            (200, 200),
            "round {round}: a serve holds another secret than the file's"
        );
        for (name, serve) in [("a", &a), ("b", &b)] {
            attack.assert_text_clean(&format!("serve {name}'s log"), &serve.log(), &[secret]);
        }
        agreed += 1;
    }
    attack.answered(format!(
        "{agreed} of {ROUNDS} rounds: both serves accept the secret in the file (0600, 64 hex digits)"
    ));
    attack.kept("one secret per file; never logged");
}

#[test]
fn an_upstream_429_with_retry_after_1_then_200_is_absorbed_before_containerd() {
    let mut attack = Attack::begin(this_test!());
    let image = {
        let source = Registry::start(RegistryAuth::Anonymous, "basic.test");
        push_image(source.host(), "team/app", "v1", "anyone", "anything");
        attack::read_image(source.host(), "team/app", "v1")
    };
    let throttled = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let count = throttled.clone();
    let _upstream = HttpsServer::start("open.test", move |request: HttpRequest| {
        let key = format!("{} {}", request.method, request.uri.path());
        let first = request.uri.path() != "/v2/" && seen.lock().unwrap().insert(key);
        let answer = if first {
            count.fetch_add(1, Ordering::SeqCst);
            let mut r = response(StatusCode::TOO_MANY_REQUESTS, "application/json", "{}");
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            r
        } else {
            attack::serve_image(&image, "team/app", "v1", &request)
                .unwrap_or_else(|| response(StatusCode::NOT_FOUND, "application/json", "{}"))
        };
        async move { answer }
    });
    let daemon = CredgateDaemon::start("[upstream]\nallow_private = [\"open.test\"]\n");
    let reference = "open.test/team/app:v1";
    let containerd = containerd_21(&daemon, reference);
    // open.test is no keychain scope, so its requests are labelled `other` (bounded labels).
    let before = daemon.served_ok("other");
    let pulled = CriClient::connect(&containerd.socket()).pull_image(reference, None);
    let served = daemon.served_ok("other") - before;
    let metrics = https::plain_get(daemon.metrics, "/metrics");
    let answered_429: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("credgate_endpoint_requests_total") && l.contains("status=\"429\"")
        })
        .collect();
    attack.answered(format!(
        "the upstream answered 429 {} times; the CRI pull: {}; credgate served {served} requests, answered 429 {:?}",
        throttled.load(Ordering::SeqCst),
        match &pulled {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("failed ({:?})", status.message()),
        },
        answered_429
    ));
    assert!(
        throttled.load(Ordering::SeqCst) > 0,
        "the upstream never throttled"
    );
    assert!(pulled.is_ok(), "{pulled:?}\n{}", containerd.log_tail());
    assert!(served > 0, "the pull did not go through credgate");
    assert!(
        answered_429.is_empty(),
        "containerd was answered 429: {answered_429:?}"
    );
    attack.kept("containerd never saw the 429; the pull completed through credgate");
    attack.assert_log_clean(&daemon, &[]);
}

/// Prints the report so far (every test appends its row as it ends); run it last, or read
/// the file: `cargo test ... --test node_attacks -- --ignored print_the_attack_report`.
#[test]
#[ignore = "prints the attack report; run after the suite"]
fn print_the_attack_report() {
    println!("{}\n{}", attack::report_path().display(), attack::report());
}
