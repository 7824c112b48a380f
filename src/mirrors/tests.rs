//! Which mirror a fronted request may reach, against real files in a temp hosts dir.

use std::path::Path;

use super::*;
use crate::config::Location;

const REGISTRY_HOSTS: &str = r#"server = "https://registry.test"

[host."http://127.0.0.1:5008/mirror/1"]
  capabilities = ["pull", "resolve"]
  [host."http://127.0.0.1:5008/mirror/1".header]
    X-Credgate-Secret = ["s"]
    X-Credgate-Mirror = ["https://mirror.test"]

[host."http://127.0.0.1:5008"]
  capabilities = ["pull", "resolve"]
  [host."http://127.0.0.1:5008".header]
    X-Credgate-Secret = ["s"]

[host."https://mirror.test"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.pem"

[host."http://cache.test:5000"]

[host."https://push.test"]
  capabilities = ["push"]
"#;

const DEFAULT_HOSTS: &str = r#"[host."https://hub-mirror.test/v2/proxy"]
  override_path = true
"#;

fn hosts_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "registry.test", REGISTRY_HOSTS);
    write(dir.path(), "_default", DEFAULT_HOSTS);
    dir
}

fn write(root: &Path, registry: &str, text: &str) {
    std::fs::create_dir_all(root.join(registry)).unwrap();
    std::fs::write(root.join(registry).join("hosts.toml"), text).unwrap();
}

fn entry(host: &str, credentials: MirrorCredentials) -> MirrorEntry {
    MirrorEntry {
        host: RegistryHost::parse(host).unwrap(),
        credentials,
        location: Location {
            path: "/etc/credgate/config.toml".into(),
            line: 1,
        },
    }
}

fn repo(s: &str) -> Repository {
    Repository::parse(s).unwrap()
}

#[test]
fn a_host_named_in_the_registrys_file_is_found_with_its_settings() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let found = mirrors
        .find("registry.test", "https://mirror.test")
        .unwrap();
    assert_eq!(found.file, dir.path().join("registry.test/hosts.toml"));
    assert_eq!(found.registry.to_string(), "mirror.test");
    assert_eq!(found.credentials, MirrorCredentials::Own);
    let dial = found.dial(&RegistryHost::parse("registry.test").unwrap());
    assert_eq!(
        dial.transport.ca_files,
        [dir.path().join("registry.test/mirror-ca.pem")]
    );
    let cache = mirrors
        .find("registry.test", "http://cache.test:5000")
        .unwrap();
    assert_eq!(cache.registry.to_string(), "cache.test:5000");
    assert!(cache.dial(&found.registry).transport.plain_http);
}

#[test]
fn anything_else_is_refused_naming_the_file() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let file = dir.path().join("registry.test/hosts.toml");
    let refused = |ns: &str, key: &str| {
        let err = mirrors.find(ns, key).unwrap_err();
        (format!("{err:?}"), err.to_string())
    };
    // Not a host at all, or spelled otherwise than the file writes it.
    for key in [
        "https://evil.test",
        "https://mirror.test/",
        "https://MIRROR.test",
        "mirror.test",
        "https://mirror.test:443",
        "https://mirror.test, https://evil.test",
        "",
    ] {
        let (kind, text) = refused("registry.test", key);
        assert!(kind.starts_with("NotNamed"), "{key}: {kind}");
        assert!(text.contains(&file.display().to_string()), "{text}");
    }
    // The server is not a host key; credgate's own hosts and push-only hosts are no mirrors.
    assert!(refused("registry.test", "https://registry.test")
        .0
        .starts_with("NotNamed"));
    assert!(refused("registry.test", "http://127.0.0.1:5008")
        .0
        .starts_with("Credgate"));
    assert!(refused("registry.test", "http://127.0.0.1:5008/mirror/1")
        .0
        .starts_with("Credgate"));
    assert!(refused("registry.test", "https://push.test")
        .0
        .starts_with("NotForPulls"));
}

#[test]
fn a_host_named_for_another_registry_only_is_refused() {
    let dir = hosts_dir();
    write(
        dir.path(),
        "other.test",
        "[host.\"https://other-mirror.test\"]\n",
    );
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    assert!(mirrors
        .find("other.test", "https://other-mirror.test")
        .is_ok());
    let err = mirrors
        .find("registry.test", "https://other-mirror.test")
        .unwrap_err();
    assert!(matches!(err, MirrorError::NotNamed { .. }), "{err}");
    // A registry with a directory of its own never falls back to _default's mirrors.
    let err = mirrors
        .find("registry.test", "https://hub-mirror.test/v2/proxy")
        .unwrap_err();
    assert!(matches!(err, MirrorError::NotNamed { .. }), "{err}");
    // Nor does `_default` lend registry.test's mirror to a registry without one.
    let err = mirrors
        .find("docker.io", "https://mirror.test")
        .unwrap_err();
    assert!(matches!(err, MirrorError::NotNamed { .. }), "{err}");
}

#[test]
fn a_registry_without_a_directory_uses_default_and_one_with_an_empty_one_has_none() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let hub = mirrors
        .find("docker.io", "https://hub-mirror.test/v2/proxy")
        .unwrap();
    assert_eq!(hub.file, dir.path().join("_default/hosts.toml"));
    let request = hub
        .request(&RegistryHost::docker_hub(), &repo("library/nginx"))
        .unwrap();
    assert_eq!(
        request.path("manifests/1"),
        "/v2/proxy/library/nginx/manifests/1"
    );
    assert_eq!(
        request.credential_target.to_string(),
        "hub-mirror.test/proxy/library/nginx"
    );
    // containerd reads `host_port_` before `host:port`.
    write(
        dir.path(),
        "r.test_5000_",
        "[host.\"https://port-mirror.test\"]\n",
    );
    assert!(mirrors
        .find("r.test:5000", "https://port-mirror.test")
        .is_ok());
    // An existing directory without hosts.toml means no hosts, not _default's.
    std::fs::create_dir(dir.path().join("empty.test")).unwrap();
    let err = mirrors
        .find("empty.test", "https://hub-mirror.test/v2/proxy")
        .unwrap_err();
    assert!(matches!(err, MirrorError::NoHostsFile { .. }), "{err}");
    let none = Mirrors::new(dir.path().join("missing"), Vec::new());
    assert!(matches!(
        none.find("docker.io", "https://hub-mirror.test/v2/proxy"),
        Err(MirrorError::NoHostsFile { .. })
    ));
}

#[test]
fn symlinked_directories_and_files_are_refused() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    std::os::unix::fs::symlink(
        dir.path().join("registry.test"),
        dir.path().join("linked.test"),
    )
    .unwrap();
    let err = mirrors
        .find("linked.test", "https://mirror.test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("symlink"), "{err}");
    std::fs::create_dir(dir.path().join("filelink.test")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("registry.test/hosts.toml"),
        dir.path().join("filelink.test/hosts.toml"),
    )
    .unwrap();
    let err = mirrors
        .find("filelink.test", "https://mirror.test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("symlink"), "{err}");
}

#[test]
fn a_broken_hosts_toml_refuses_every_mirror_naming_its_line() {
    let dir = hosts_dir();
    write(
        dir.path(),
        "bad.test",
        "[host.\"https://m.test\"]\n  ca = 5\n",
    );
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let err = mirrors
        .find("bad.test", "https://m.test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.test/hosts.toml:2:"), "{err}");
}

#[test]
fn mirror_entries_choose_the_upstreams_credentials() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(
        dir.path(),
        vec![entry("mirror.test:443", MirrorCredentials::Upstream)],
    );
    let upstream = RegistryHost::parse("registry.test").unwrap();
    let found = mirrors
        .find("registry.test", "https://mirror.test")
        .unwrap();
    assert_eq!(found.credentials, MirrorCredentials::Upstream);
    let request = found.request(&upstream, &repo("group/app")).unwrap();
    assert_eq!(
        request.credential_target.to_string(),
        "registry.test/group/app"
    );
    assert_eq!(
        found.dial(&upstream).upstream_realm_host.as_deref(),
        Some("registry.test")
    );
    // The entry names mirror.test; the cache on another host stays on its own credentials.
    let cache = mirrors
        .find("registry.test", "http://cache.test:5000")
        .unwrap();
    assert_eq!(cache.credentials, MirrorCredentials::Own);
}

#[test]
fn a_person_may_name_a_mirror_by_host_when_that_is_unambiguous() {
    let dir = hosts_dir();
    write(
        dir.path(),
        "two.test",
        "[host.\"https://m.test/a\"]\n[host.\"https://m.test/b\"]\n[host.\"https://n.test:5000\"]\n",
    );
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let by_host = mirrors
        .find_by_name("registry.test", "mirror.test")
        .unwrap();
    assert_eq!(by_host.key(), "https://mirror.test");
    let by_key = mirrors
        .find_by_name("two.test", "https://m.test/b")
        .unwrap();
    assert_eq!(by_key.key(), "https://m.test/b");
    assert_eq!(
        mirrors
            .find_by_name("two.test", "n.test:5000")
            .unwrap()
            .key(),
        "https://n.test:5000"
    );
    let err = mirrors.find_by_name("two.test", "m.test").unwrap_err();
    assert!(matches!(err, MirrorError::Ambiguous { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("https://m.test/a, https://m.test/b"),
        "{err}"
    );
    assert!(matches!(
        mirrors.find_by_name("two.test", "n.test"),
        Err(MirrorError::NotNamed { .. })
    ));
    // credgate's own host is never a mirror, by any name.
    assert!(mirrors
        .find_by_name("registry.test", "127.0.0.1:5008")
        .is_err());
}

#[test]
fn the_chain_lists_every_host_in_containerds_order_with_the_server_last() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let chain = mirrors.chain("registry.test").unwrap();
    assert_eq!(
        chain.file,
        Some(dir.path().join("registry.test/hosts.toml"))
    );
    let roles: Vec<String> = chain
        .hosts
        .iter()
        .map(|host| match &host.role {
            HostRole::Fronted { stands_for } => format!("fronted {}", stands_for.join(",")),
            HostRole::CredgateUpstream => "credgate".to_string(),
            HostRole::Mirror(named) => format!("mirror {}", named.key()),
            HostRole::Operator => format!("operator {}", host.settings.key),
            HostRole::Server => format!("server {}", host.settings.key),
        })
        .collect();
    assert_eq!(
        roles,
        [
            "fronted https://mirror.test",
            "credgate",
            "mirror https://mirror.test",
            "mirror http://cache.test:5000",
            "operator https://push.test",
            "server https://registry.test",
        ]
    );
    let hub = mirrors.chain("docker.io").unwrap();
    assert_eq!(hub.hosts.len(), 2);
    assert_eq!(hub.hosts[1].settings.key, "https://registry-1.docker.io");
    let bare = Mirrors::new(dir.path().join("missing"), Vec::new())
        .chain("r.test")
        .unwrap();
    assert_eq!(bare.file, None);
    assert_eq!(bare.hosts[0].settings.key, "https://r.test");
}

#[test]
fn a_callers_mirror_name_is_shown_short_and_without_user_info() {
    let dir = hosts_dir();
    let mirrors = Mirrors::new(dir.path(), Vec::new());
    let long = format!("https://user:pa55@evil.test/{}", "a".repeat(1000));
    let err = mirrors
        .find("registry.test", &long)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("pa55"), "{err}");
    assert!(err.len() < 400, "{err}");
}
