//! The `credgate` binary as scripts see it: output shapes, exit codes, and no secret on
//! stdout or stderr unless `--show-secret` is asked for.

use std::path::Path;
use std::process::{Command, Output};

const SECRET: &str = "cli-secret-Zq81";

fn credgate(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credgate"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CREDGATE_CONFIG")
        .env("CREDGATE_LOG", "trace")
        .output()
        .expect("credgate runs")
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn layered(dir: &Path) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[[registry]]\nmatch = \"git.example.com/group/sub\"\nusername = \"deploy\"\npassword = \"{SECRET}\"\n\n\
             [[registry]]\nmatch = \"git.example.com\"\nusername = \"wide\"\npassword = \"other-{SECRET}\"\n"
        ),
    )
}

#[test]
fn lookup_json_has_the_contract_shape_and_hides_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = layered(dir.path());
    let out = credgate(
        &config,
        &["lookup", "--json", "git.example.com:443/group/sub/app:v1"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["registry"], "git.example.com");
    assert_eq!(json["repository"], "group/sub/app");
    assert_eq!(json["auth_type"], "credentials");
    assert_eq!(json["username"], "deploy");
    assert_eq!(json["matched"], "git.example.com/group/sub");
    assert!(json["source"].as_str().unwrap().contains("config.toml:1"));
    assert!(json.get("secret").is_none());
    for stream in [text(&out.stdout), text(&out.stderr)] {
        assert!(!stream.contains(SECRET), "secret leaked: {stream}");
    }
}

#[test]
fn show_secret_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = layered(dir.path());
    let out = credgate(
        &config,
        &[
            "lookup",
            "--json",
            "--show-secret",
            "git.example.com/group/sub/app",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["secret"], SECRET);
    assert!(!text(&out.stderr).contains(SECRET));
}

#[test]
fn explain_ranks_and_never_shows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = layered(dir.path());
    let out = credgate(&config, &["explain", "git.example.com/group/sub/app"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let first = stdout
        .find("* 1. git.example.com/group/sub")
        .expect(&stdout);
    let second = stdout.find("2. git.example.com [0 path").expect(&stdout);
    assert!(first < second);
    assert!(
        stdout.contains("winner: #1 because its scope is more specific"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET) && !text(&out.stderr).contains(SECRET));
}

#[test]
fn anonymous_is_a_decision_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = layered(dir.path());
    let out = credgate(&config, &["lookup", "--json", "other.test/app"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["auth_type"], "none");
    assert_eq!(json["username"], "");
}

#[test]
fn bad_input_exits_2_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = layered(dir.path());
    let out = credgate(&config, &["lookup", "Bad//Ref"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("\"Bad//Ref\""), "{stderr}");

    let broken = write_config(
        dir.path(),
        "[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npasword = \"x\"\n",
    );
    let out = credgate(&broken, &["lookup", "r.test/app"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    // The key is not repeated (it could be a pasted secret); the position and the keys
    // allowed there are.
    let expected = format!(
        "{}:4:1: unknown field `…`, expected one of `match`, `username`, `password`",
        broken.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let out = credgate(&dir.path().join("missing.toml"), &["lookup", "r.test/app"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.toml"));
}

#[test]
fn a_secret_in_the_wrong_type_is_not_echoed_by_lookup_serve_or_doctor() {
    let dir = tempfile::tempdir().unwrap();
    for value in [
        "31415926",
        "3141.5926",
        "[\"31415926\"]",
        "{ x = \"31415926\" }",
    ] {
        let config = write_config(
            dir.path(),
            &format!("[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npassword = {value}\n"),
        );
        for args in [
            &["lookup", "r.test/app"][..],
            &["serve"][..],
            &["doctor", "--offline"][..],
        ] {
            let out = credgate(&config, args);
            assert_eq!(out.status.code(), Some(2), "{args:?} {value}");
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("config.toml:4:12: invalid type"),
                "{args:?}: {stderr}"
            );
            for stream in [text(&out.stdout), stderr] {
                assert!(!stream.contains("31415926"), "{args:?} {value}: {stream}");
            }
        }
    }
}

#[test]
fn a_failed_source_with_no_winner_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npassword_file = \"/nonexistent/credgate-secret\"\n",
    );
    let out = credgate(&config, &["lookup", "r.test/app"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/nonexistent/credgate-secret"), "{stderr}");
}

#[test]
fn serve_survives_a_broken_reload_and_stops_on_sigterm() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("credgate.sock");
    let config = write_config(
        dir.path(),
        &format!(
            "[listen]\nsocket = \"{}\"\nmirror = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n\
             mirror_secret_file = \"{}\"\n\n\
             [[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npassword = \"{SECRET}\"\n",
            socket.display(),
            dir.path().join("mirror-secret").display()
        ),
    );
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("CREDGATE_CONFIG")
        .env("CREDGATE_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut text = String::new();
            std::fs::File::open(&log)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("credgate is up");
    std::fs::write(&config, "[[registry]]\nmatch = \"https://bad\"\n").unwrap();
    let pid = child.id().to_string();
    let signal = |name: &str| {
        let ok = Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("HUP");
    let text = wait_for("reload failed; still serving the previous config");
    assert!(text.contains("config.toml:2:9"), "{text}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve died on a bad reload"
    );
    signal("TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!wait_for("credgate stopped").contains(SECRET));
}

#[test]
fn the_shipped_example_config_parses() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config-examples/config.toml");
    let out = credgate(&example, &["explain", "git.example.com/group/sub/app"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("git.example.com/group/sub"));
}

#[test]
fn the_shipped_kubelet_provider_config_is_valid_and_runs_credgate() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config-examples/kubelet-credential-provider.yaml");
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_credgate"), bin_dir.join("credgate")).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[kubelet_provider]]\nconfig = \"{}\"\nbin_dir = \"{}\"\n",
            example.display(),
            bin_dir.display()
        ),
    );
    let out = credgate(&config, &["explain", "git.example.com/group/app"]);
    let stdout = text(&out.stdout);
    // The example's provider matched and credgate ran as the plugin; with no daemon on the
    // example's socket it says exactly that.
    assert!(stdout.contains(r#"provider "credgate""#), "{stdout}");
    assert!(stdout.contains("/run/credgate/credgate.sock"), "{stdout}");
}
