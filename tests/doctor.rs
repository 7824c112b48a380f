//! `credgate doctor` as scripts see it: exit 2 for bad input, 1 when a check fails, one line
//! per check with its fix, and never a secret (the config's, the mirror secret, or a stale
//! one in hosts.toml). Against a real containerd it is run by hand in a node namespace (see
//! src/doctor/containerd.rs for what each version reports).

use std::path::Path;
use std::process::{Command, Output};

const SECRETS: &[&str] = &["doctor-pw-Hx31", "mirror-secret-Kq52", "stale-secret-Vb73"];

fn doctor(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credgate"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("doctor")
        .arg("--containerd-address")
        .arg(dir.join("containerd.sock"))
        .arg("--containerd-config")
        .arg(dir.join("containerd.toml"))
        .arg("--hosts-dir")
        .arg(dir.join("certs.d"))
        .args(args)
        .env_remove("CREDGATE_CONFIG")
        .env_remove("CONTAINERD_ADDRESS")
        .env("CREDGATE_LOG", "trace")
        .output()
        .expect("credgate runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A node where nothing runs: no daemon, no containerd, a stale secret in `_default`.
fn node(dir: &Path) {
    let d = dir.display();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[listen]\nsocket = \"{d}/credgate.sock\"\nmirror_secret_file = \"{d}/mirror-secret\"\n\n\
             [[registry]]\nmatch = \"127.0.0.1:1/group\"\nusername = \"deploy\"\npassword = \"{}\"\n",
            SECRETS[0]
        ),
    )
    .unwrap();
    std::fs::write(dir.join("mirror-secret"), SECRETS[1]).unwrap();
    std::fs::write(
        dir.join("containerd.toml"),
        format!("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"{d}/certs.d\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("certs.d/_default")).unwrap();
    std::fs::write(
        dir.join("certs.d/_default/hosts.toml"),
        format!(
            "[host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             [host.\"http://127.0.0.1:5008\".header]\n    X-Credgate-Secret = [\"{}\"]\n",
            SECRETS[2]
        ),
    )
    .unwrap();
}

fn assert_no_secret(out: &Output) {
    for stream in [text(&out.stdout), text(&out.stderr)] {
        for secret in SECRETS {
            assert!(!stream.contains(secret), "{secret} leaked: {stream}");
        }
    }
}

#[test]
fn failed_checks_exit_1_with_one_line_each_and_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let out = doctor(dir.path(), &["--offline"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("FAIL  daemon socket")
            && lines[0].contains("fix: start it: systemctl start credgate"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL  containerd: cannot connect")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok    containerd's registry config_path is")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("X-Credgate-Secret header differs")),
        "{stdout}"
    );
    for line in &lines {
        assert!(
            line.starts_with("ok  ") || line.contains(" — fix: "),
            "a problem without a fix: {line}"
        );
    }
    assert!(text(&out.stderr).contains("checks failed"));
    assert_no_secret(&out);
}

#[test]
fn live_checks_report_an_unreachable_registry_without_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let out = doctor(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let live = stdout
        .lines()
        .find(|l| l.contains("registry 127.0.0.1:1/group as \"deploy\""))
        .unwrap_or_else(|| panic!("no live line: {stdout}"));
    assert!(
        live.starts_with("FAIL") && live.contains("unreachable"),
        "{live}"
    );
    assert_no_secret(&out);
}

#[test]
fn an_unreadable_containerd_config_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    std::fs::write(
        dir.path().join("containerd.toml"),
        "version = 2\n[plugins\n",
    )
    .unwrap();
    let out = doctor(dir.path(), &["--offline"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("containerd.toml:2:"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn a_bad_flag_is_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let out = doctor(dir.path(), &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn attack_a_world_readable_hosts_toml_with_the_secret_is_a_failed_check_naming_chmod_600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let private = std::fs::Permissions::from_mode(0o600);
    let default = dir.path().join("certs.d/_default/hosts.toml");
    std::fs::set_permissions(&default, private).unwrap();
    let registry = dir.path().join("certs.d/docker.io/hosts.toml");
    std::fs::create_dir_all(registry.parent().unwrap()).unwrap();
    std::fs::write(
        &registry,
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"http://127.0.0.1:5008\".header]\n  \
             X-Credgate-Secret = [\"{}\"]\n",
            SECRETS[1]
        ),
    )
    .unwrap();
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = doctor(dir.path(), &["--offline"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let modes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("carries the endpoint's secret and has mode"))
        .collect();
    assert_eq!(modes.len(), 1, "{stdout}");
    assert!(
        modes[0].starts_with(&format!("FAIL  {} carries", registry.display()))
            && modes[0].contains("has mode 0644")
            && modes[0].ends_with(&format!("fix: chmod 600 {}", registry.display())),
        "{}",
        modes[0]
    );
    assert_no_secret(&out);
}

/// `credgate install` on the node of [`node`], run as scripts run it.
fn install(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credgate"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("install")
        .arg("--containerd-config")
        .arg(dir.join("containerd.toml"))
        .arg("--hosts-dir")
        .arg(dir.join("certs.d"))
        .env_remove("CREDGATE_CONFIG")
        .output()
        .expect("credgate runs")
}

/// The lines about hosts.toml files that are not `ok` (no daemon or containerd runs here).
fn hosts_problems(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("ok") && l.contains("/certs.d/"))
        .collect()
}

#[test]
fn each_hosts_toml_lists_its_chain_and_a_rewrite_since_install_is_a_warning_naming_install() {
    let dir = tempfile::tempdir().unwrap();
    node(dir.path());
    let registry = dir.path().join("certs.d/registry.test/hosts.toml");
    std::fs::create_dir_all(registry.parent().unwrap()).unwrap();
    std::fs::write(
        &registry,
        "server = \"https://registry.test\"\n\n[host.\"https://mirror.test\"]\n\n\
         [host.\"http://p2p.test:5000\"]\n  capabilities = [\"pull\"]\n",
    )
    .unwrap();
    let installed = install(dir.path());
    assert!(installed.status.success(), "{}", text(&installed.stderr));

    let out = doctor(dir.path(), &["--offline"]);
    let stdout = text(&out.stdout);
    let chain = format!(
        "ok    {}: containerd tries https://mirror.test through credgate (mirror 1), then \
         http://p2p.test:5000 through credgate (mirror 2, pull only), then registry.test through \
         credgate (upstream), then https://mirror.test directly, then http://p2p.test:5000 \
         directly (pull only), then https://registry.test directly (server)",
        registry.display()
    );
    assert!(stdout.lines().any(|l| l == chain), "{stdout}");
    let default_chain = format!(
        "ok    {}: containerd tries the registry through credgate (upstream), then the registry \
         itself directly (server)",
        dir.path().join("certs.d/_default/hosts.toml").display()
    );
    assert!(stdout.lines().any(|l| l == default_chain), "{stdout}");
    assert_eq!(hosts_problems(&stdout), Vec::<&str>::new(), "{stdout}");

    // A P2P mirror's installer (Spegel's way) puts its own host first, and config management
    // appends another: neither is fronted.
    let server = "server = \"https://registry.test\"\n";
    let rewritten = std::fs::read_to_string(&registry).unwrap().replace(
        server,
        &format!("{server}\n[host.\"http://spegel.test:30020\"]\n"),
    );
    std::fs::write(
        &registry,
        format!("{rewritten}\n[host.\"https://added.test\"]\n"),
    )
    .unwrap();
    let out = doctor(dir.path(), &["--offline"]);
    let stdout = text(&out.stdout);
    let fix = format!(
        " — fix: credgate install --hosts-dir {}",
        dir.path().join("certs.d").display()
    );
    let warnings = hosts_problems(&stdout);
    let shown = registry.display();
    assert_eq!(
        warnings,
        [
            format!("warn  {shown} lists http://spegel.test:30020 before credgate's endpoint: containerd tries it first, so those pulls skip credgate while it answers{fix}"),
            format!("warn  {shown}: http://spegel.test:30020 has no fronted host, so containerd reaches it only directly, without a credential (rewritten since install?){fix}"),
            format!("warn  {shown}: https://added.test has no fronted host, so containerd reaches it only directly, without a credential (rewritten since install?){fix}"),
        ],
        "{stdout}"
    );
    assert_no_secret(&out);

    // The fix fixes it.
    let installed = install(dir.path());
    assert!(installed.status.success(), "{}", text(&installed.stderr));
    let out = doctor(dir.path(), &["--offline"]);
    let stdout = text(&out.stdout);
    assert_eq!(hosts_problems(&stdout), Vec::<&str>::new(), "{stdout}");
    assert!(
        stdout.contains(": containerd tries http://spegel.test:30020 through credgate (mirror 1), then https://mirror.test through credgate (mirror 2)"),
        "{stdout}"
    );
}
