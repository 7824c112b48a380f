//! `credgate lookup --via MIRROR` and `credgate explain --via MIRROR`: which credential a
//! mirror named in hosts.toml gets, offline, against a temp hosts dir; a mirror not named for
//! the REF's registry is bad input (exit 2) in one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SECRET: &str = "via-secret-K2p9";

fn credgate(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credgate"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CREDGATE_CONFIG")
        .output()
        .expect("credgate runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A hosts dir with `registry.test/hosts.toml` (as install leaves it: credgate's hosts
/// first, then the operator's) and `_default/hosts.toml`, and a config naming it.
fn setup(dir: &Path, mirror_entries: &str) -> PathBuf {
    let hosts = dir.join("certs.d");
    std::fs::create_dir_all(hosts.join("registry.test")).unwrap();
    std::fs::create_dir_all(hosts.join("_default")).unwrap();
    std::fs::write(
        hosts.join("registry.test/hosts.toml"),
        format!(
            "server = \"https://registry.test\"\n\n\
             [host.\"http://127.0.0.1:5008/mirror/1\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://127.0.0.1:5008/mirror/1\".header]\n  X-Credgate-Secret = [\"{SECRET}\"]\n  X-Credgate-Mirror = [\"https://harbor.test/v2/proxy\"]\n\n\
             [host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://127.0.0.1:5008\".header]\n  X-Credgate-Secret = [\"{SECRET}\"]\n\n\
             [host.\"https://harbor.test/v2/proxy\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n  ca = \"harbor-ca.pem\"\n\n\
             [host.\"http://cache.test:5000\"]\n  capabilities = [\"pull\"]\n\n\
             [host.\"https://twin.test/a\"]\n[host.\"https://twin.test/b\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        hosts.join("_default/hosts.toml"),
        "[host.\"https://hub-cache.test\"]\n",
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[containerd]\nhosts_dir = \"{}\"\n\n{mirror_entries}\
             [[registry]]\nmatch = \"harbor.test/proxy/group\"\nusername = \"harbor-robot\"\npassword = \"{SECRET}\"\n\n\
             [[registry]]\nmatch = \"registry.test\"\nusername = \"upstream-user\"\npassword = \"up-{SECRET}\"\n\n\
             [[registry]]\nmatch = \"cache.test:5000\"\nusername = \"cache-user\"\npassword = \"cache-{SECRET}\"\n",
            hosts.display()
        ),
    )
    .unwrap();
    config
}

fn no_secret(out: &Output) {
    for stream in [text(&out.stdout), text(&out.stderr)] {
        assert!(!stream.contains(SECRET), "secret leaked: {stream}");
    }
}

#[test]
fn lookup_via_a_mirror_shows_the_mirror_side_target_and_its_own_credential() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let out = credgate(
        &config,
        &[
            "lookup",
            "--json",
            "registry.test/group/app:v1",
            "--via",
            "https://harbor.test/v2/proxy",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_secret(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["via"], "https://harbor.test/v2/proxy");
    assert_eq!(json["mirror_url"], "https://harbor.test/v2/proxy");
    assert_eq!(json["mirror_target"], "harbor.test/proxy/group/app");
    assert_eq!(json["credentials"], "own");
    assert_eq!(json["registry"], "harbor.test");
    assert_eq!(json["repository"], "proxy/group/app");
    assert_eq!(json["username"], "harbor-robot");
    assert_eq!(json["matched"], "harbor.test/proxy/group");

    // A plain-http mirror is its host:port; the bare host[:port] names it when unambiguous.
    let out = credgate(
        &config,
        &[
            "lookup",
            "registry.test/group/app:v1",
            "--via",
            "cache.test:5000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_secret(&out);
    let shown = text(&out.stdout);
    for row in [
        "via           http://cache.test:5000\n",
        "mirror_url    http://cache.test:5000/v2\n",
        "credentials   own\n",
        "registry      cache.test:5000\n",
        "username      cache-user\n",
    ] {
        assert!(shown.contains(row), "no {row:?} in:\n{shown}");
    }

    // Without --via, the output keeps the contract shape.
    let out = credgate(&config, &["lookup", "--json", "registry.test/group/app:v1"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["username"], "upstream-user");
    assert!(json.get("via").is_none() && json.get("credentials").is_none());
}

#[test]
fn a_mirror_marked_upstream_gets_the_registrys_credential() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[[mirror]]\nhost = \"harbor.test\"\ncredentials = \"upstream\"\n\n",
    );
    let out = credgate(
        &config,
        &[
            "lookup",
            "--json",
            "registry.test/group/app",
            "--via",
            "harbor.test",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["credentials"], "upstream");
    assert_eq!(json["mirror_target"], "harbor.test/proxy/group/app");
    assert_eq!(json["registry"], "registry.test");
    assert_eq!(json["repository"], "group/app");
    assert_eq!(json["username"], "upstream-user");
}

#[test]
fn explain_via_shows_how_the_mirror_is_dialled_and_the_chain_containerd_tries() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let out = credgate(
        &config,
        &[
            "explain",
            "registry.test/group/app",
            "--via",
            "https://harbor.test/v2/proxy",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_secret(&out);
    let shown = text(&out.stdout);
    for line in [
        "via mirror https://harbor.test/v2/proxy (",
        "  dialled at https://harbor.test/v2/proxy, for pull, resolve, 1 CA file(s)\n",
        "  serves registry.test/group/app as harbor.test/proxy/group/app\n",
        "  credentials: its own (the default), so the keychain is asked for harbor.test/proxy/group/app\n",
        "  1. http://127.0.0.1:5008/mirror/1  (credgate, for https://harbor.test/v2/proxy)\n",
        "  2. http://127.0.0.1:5008  (credgate, for the upstream)\n",
        "  3. https://harbor.test/v2/proxy  (this mirror; reached directly when credgate is down)\n",
        "  6. https://twin.test/b  (a mirror",
        "  7. https://registry.test  (the registry itself, last)\n",
        "target: harbor.test/proxy/group/app (config: ",
        "* 1. harbor.test/proxy/group [2 path segment(s), exact host]",
    ] {
        assert!(shown.contains(line), "no {line:?} in:\n{shown}");
    }
}

#[test]
fn a_mirror_not_named_for_the_registry_is_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    for (args, words) in [
        (
            [
                "lookup",
                "registry.test/group/app",
                "--via",
                "https://evil.test",
            ],
            "\"https://evil.test\" is not a host of ",
        ),
        // Named for other registries only (_default does not apply: registry.test has a directory).
        (
            [
                "lookup",
                "registry.test/group/app",
                "--via",
                "https://hub-cache.test",
            ],
            "is not a host of ",
        ),
        // credgate's own host is never a mirror.
        (
            [
                "lookup",
                "registry.test/group/app",
                "--via",
                "http://127.0.0.1:5008",
            ],
            "is credgate's own host",
        ),
        (
            ["explain", "registry.test/group/app", "--via", "twin.test"],
            "names more than one host of ",
        ),
        (
            [
                "lookup",
                "docker.io/library/busybox",
                "--via",
                "https://harbor.test/v2/proxy",
            ],
            "_default/hosts.toml",
        ),
    ] {
        let out = credgate(&config, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        no_secret(&out);
    }
    // A registry without any hosts.toml.
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        "[containerd]\nhosts_dir = \"/nonexistent/certs.d\"\n",
    )
    .unwrap();
    let out = credgate(&bare, &["lookup", "r.test/app", "--via", "m.test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no hosts.toml for r.test"),
        "{}",
        text(&out.stderr)
    );
}
