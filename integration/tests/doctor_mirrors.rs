//! `credgate doctor`'s live check of each host a hosts.toml chain fronts, against real
//! distribution registries (`docker-registry serve`) on 127.0.0.1 ports, so no node namespace
//! is needed: `credgate install` fronts the operator's file, then doctor tries, in
//! containerd's order, every mirror with the credential the endpoint would send it (dialled
//! with the host's own hosts.toml settings), then the upstream registry; what each made of it
//! is one line, and no line holds a secret.

use std::path::Path;

use credgate_integration::attack::{credgate_cli, free_port, write_file};
use credgate_integration::clients::DockerConfig;
use credgate_integration::local_registry::{mirror_pki, LocalRegistry, RegistrySetup};
use credgate_integration::process::CommandOutput;

const SECRETS: &[&str] = &[
    "cache-pw-Qz81",
    "wrong-pw-Lm42",
    "right-pw-Lm42",
    "upstream-pw-Hd07",
    "mirror-secret-Tn55",
];

fn assert_no_secret(out: &CommandOutput) {
    for stream in [&out.stdout, &out.stderr] {
        for secret in SECRETS {
            assert!(!stream.contains(secret), "{secret} leaked: {stream}");
        }
    }
}

/// Whether `registry`'s access log has a `GET /v2/` it answered with `status`.
fn api_root_answered(registry: &LocalRegistry, status: u16) -> bool {
    registry
        .access_log()
        .lines()
        .any(|l| l.contains("\"GET /v2/ HTTP/") && l.contains(&format!("\" {status} ")))
}

/// The one line of `stdout` that starts with `start`.
fn line<'a>(stdout: &'a str, start: &str) -> &'a str {
    let found: Vec<&str> = stdout.lines().filter(|l| l.starts_with(start)).collect();
    assert_eq!(found.len(), 1, "{start}\n{stdout}");
    found[0]
}

#[test]
fn doctor_tries_each_fronted_mirror_then_the_upstream_with_the_credential_each_gets() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let hosts_dir = dir.join("certs.d");
    // The registry's directory holds the PKI of its mirror and upstream, named relative to
    // hosts.toml as operators do.
    let upstream_port = free_port().port();
    let registry = format!("127.0.0.1:{upstream_port}");
    let registry_dir = hosts_dir.join(&registry);
    std::fs::create_dir_all(&registry_dir).unwrap();
    let pki = mirror_pki(&registry_dir);

    // One htpasswd user, over TLS with the CA above when `tls`.
    let setup = |user: &'static str, password: &'static str, tls: bool| RegistrySetup {
        users: vec![(user, password)],
        tls: tls.then(|| pki.server.clone()),
        ..Default::default()
    };
    // Mirror 1: plain http, its own user, whose credential the keychain holds.
    let cache = LocalRegistry::start(&storage, &setup("cache-user", SECRETS[0], false));
    // Mirror 2: TLS with a CA of its own (hosts.toml's `ca`), and a stale password.
    let tls = LocalRegistry::start(&storage, &setup("tls-user", SECRETS[2], true));
    // Mirror 3: nothing listens there. Mirror 4: open to anyone, no credential needed.
    let down = free_port();
    let open = LocalRegistry::start(&storage, &RegistrySetup::default());
    // The upstream: TLS with the same CA, named by a [[registry]] entry with its ca_file.
    let upstream =
        LocalRegistry::start_at(&storage, &setup("up-user", SECRETS[3], true), upstream_port);
    assert_eq!(upstream.addr.to_string(), registry);

    let (cache_key, tls_key, down_key, open_key) = (
        format!("http://{}", cache.addr),
        format!("https://{}", tls.addr),
        format!("http://{down}"),
        format!("http://{}", open.addr),
    );
    let hosts_toml = registry_dir.join("hosts.toml");
    std::fs::write(
        &hosts_toml,
        format!(
            "server = \"https://{registry}\"\n\n\
             [host.\"{cache_key}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n\
             [host.\"{tls_key}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"mirror-ca.pem\"\n\n\
             [host.\"{down_key}\"]\n\n\
             [host.\"{open_key}\"]\n  capabilities = [\"pull\"]\n"
        ),
    )
    .unwrap();
    let docker_config = dir.join("docker-config.json");
    let auths = DockerConfig::new()
        .auth(&cache.addr.to_string(), "cache-user", SECRETS[0])
        .auth(&tls.addr.to_string(), "tls-user", SECRETS[1]);
    write_file(&docker_config, &auths.to_json().to_string(), 0o600);
    let config = dir.join("config.toml");
    write_file(
        &config,
        &format!(
            "[listen]\nsocket = \"{d}/credgate.sock\"\nmirror_secret_file = \"{d}/mirror-secret\"\n\n\
             [containerd]\nhosts_dir = \"{h}\"\n\n\
             [[registry]]\nmatch = \"{registry}\"\nusername = \"up-user\"\npassword = \"{pw}\"\n\
             ca_file = \"{ca}\"\n\n\
             [[docker_config]]\npath = \"{dc}\"\n",
            d = dir.display(),
            h = hosts_dir.display(),
            pw = SECRETS[3],
            ca = pki.ca.display(),
            dc = docker_config.display(),
        ),
        0o600,
    );
    write_file(&dir.join("mirror-secret"), SECRETS[4], 0o600);
    let containerd_config = dir.join("containerd.toml");
    std::fs::write(&containerd_config, "version = 2\n").unwrap();
    let hosts_arg = hosts_dir.display().to_string();
    let containerd_arg = containerd_config.display().to_string();
    let installed = credgate_cli(
        &config,
        &[
            "install",
            "--containerd-config",
            &containerd_arg,
            "--hosts-dir",
            &hosts_arg,
        ],
    );
    assert!(installed.success(), "{}", installed.combined());
    assert_no_secret(&installed);

    let socket = dir.join("containerd.sock").display().to_string();
    let out = credgate_cli(
        &config,
        &[
            "doctor",
            "--containerd-address",
            &socket,
            "--containerd-config",
            &containerd_arg,
            "--hosts-dir",
            &hosts_arg,
        ],
    );
    assert!(!out.timed_out, "{}", out.combined());
    assert_no_secret(&out);
    let stdout = &out.stdout;
    let file = hosts_toml.display();

    // The chain, in containerd's order, as install fronted it.
    let chain = line(stdout, &format!("ok    {file}: containerd tries"));
    assert!(
        chain.contains(&format!(
            "tries {cache_key} through credgate (mirror 1), then {tls_key} through credgate \
             (mirror 2), then {down_key} through credgate (mirror 3), then {open_key} through \
             credgate (mirror 4, pull only), then {registry} through credgate (upstream)"
        )),
        "{chain}"
    );
    assert!(
        stdout.contains(&format!(
            "ok    credgate's [containerd] hosts_dir is {hosts_arg}, the hosts dir containerd reads"
        )),
        "{stdout}"
    );
    // Each fronted host, tried with what the endpoint would send it; mirror 2 is dialled with
    // its own CA, so the stale password is what fails, not TLS.
    for (start, parts) in [
        (
            format!("ok    {file}: mirror 1 {cache_key} "),
            vec![
                "as \"cache-user\" from docker config ".to_string(),
                ": accepted (GET /v2/ 200 OK)".to_string(),
            ],
        ),
        (
            format!("FAIL  {file}: mirror 2 {tls_key} "),
            vec![
                "as \"tls-user\" from docker config ".to_string(),
                ": rejected (HTTP 401 Unauthorized) — fix: the credential for ".to_string(),
                "was rejected; update it".to_string(),
            ],
        ),
        (
            format!("warn  {file}: mirror 3 {down_key} "),
            vec![
                format!("anonymously (the keychain has no credential for {down}): unreachable: "),
                "containerd hands its pulls to the next host".to_string(),
            ],
        ),
        (
            format!("ok    {file}: mirror 4 {open_key} "),
            vec![": it asks for no auth at /v2/ (GET /v2/ 200 OK)".to_string()],
        ),
        (
            format!("ok    {file}: upstream {registry} "),
            vec![
                "as \"up-user\" from [[registry]]".to_string(),
                ": accepted (GET /v2/ 200 OK)".to_string(),
            ],
        ),
    ] {
        let found = line(stdout, &start);
        for part in parts {
            assert!(found.contains(&part), "{part}\n{found}");
        }
    }
    // The mirrors' own scopes are tried as mirrors, not as registries of their own.
    let scope = line(
        stdout,
        &format!(
            "ok    keychain scope {} is the credential of mirror",
            cache.addr
        ),
    );
    assert!(scope.contains(&cache_key), "{scope}");

    // The registries really were asked: each saw `GET /v2/`, the stale password refused, the
    // right ones answered.
    assert!(api_root_answered(&cache, 200), "{}", cache.access_log());
    assert!(api_root_answered(&tls, 401), "{}", tls.access_log());
    assert!(!api_root_answered(&tls, 200), "{}", tls.access_log());
    assert!(api_root_answered(&open, 200), "{}", open.access_log());
    assert!(
        api_root_answered(&upstream, 200),
        "{}",
        upstream.access_log()
    );
    // A file with no other problem: only the missing daemon and containerd fail.
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .filter(|l| !l.contains("daemon socket") && !l.contains("containerd:"))
        .collect();
    assert_eq!(failures.len(), 1, "{stdout}");
    assert!(
        failures[0].contains(&format!(": mirror 2 {tls_key} ")),
        "{stdout}"
    );
    assert!(Path::new(&hosts_toml).is_file());
}
