//! Attacks on what credgate runs as root, through the real binary and real processes: a
//! docker config whose `credsStore` / `credHelpers` is a path, and a docker config or kubelet
//! provider config (or plugin dir) that someone other than root can write. Each attack's
//! helper or plugin would touch a marker file; the marker must never appear. A positive
//! control shows the same program does run once the file is made safe.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Writing an executable while another test thread forks can make its exec fail with
/// ETXTBSY, so the tests here take turns.
static TAKE_TURNS: Mutex<()> = Mutex::new(());

/// A uid that is not root (and not the test runner): `nobody`.
const NOBODY: u32 = 65534;

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn marker(&self) -> PathBuf {
        self.path("ran")
    }

    /// An executable that leaves the marker and answers as a helper would.
    fn evil_program(&self, path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body = format!(
            "#!/bin/sh\ntouch {}\necho '{{\"Username\":\"u\",\"Secret\":\"s\"}}'\n",
            self.marker().display()
        );
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn write(&self, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// `credgate lookup REF` with `config`, and the node's `bin` first on PATH.
    fn lookup(&self, config: &Path, reference: &str) -> Output {
        let path = format!("{}:/usr/bin:/bin", self.path("bin").display());
        Command::new(env!("CARGO_BIN_EXE_credgate"))
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(config)
            .args(["lookup", reference])
            .env_clear()
            .env("PATH", path)
            .env("CREDGATE_LOG", "warn")
            .output()
            .unwrap()
    }

    fn docker_source(&self, docker_config: &Path) -> PathBuf {
        self.write(
            "config.toml",
            &format!(
                "[[docker_config]]\npath = \"{}\"\n",
                docker_config.display()
            ),
            0o600,
        )
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_creds_store_or_cred_helper_that_is_a_path_never_runs() {
    let _turn = TAKE_TURNS.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    let evil = node.path("drop/evil");
    node.evil_program(&evil);
    node.evil_program(&node.path("bin/docker-credential-ok"));
    std::fs::remove_file(node.marker()).ok();
    let dir_name = node
        .dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Absolute, and relative to credgate's working directory (the node's dir).
    let names = [
        evil.display().to_string(),
        "drop/evil".to_string(),
        "./drop/evil".to_string(),
        format!("../{dir_name}/drop/evil"),
    ];
    for name in &names {
        for (json, key) in [
            (
                serde_json::json!({ "credsStore": name }),
                "credsStore".to_string(),
            ),
            (
                serde_json::json!({ "credHelpers": { "r.test": name } }),
                r#"credHelpers["r.test"]"#.to_string(),
            ),
        ] {
            let docker = node.write("docker.json", &json.to_string(), 0o600);
            let out = node.lookup(&node.docker_source(&docker), "r.test/app");
            assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
            let text = stderr(&out);
            assert!(
                text.contains(&format!("{}: {key} is not a helper name", docker.display())),
                "{name}: {text}"
            );
            assert!(!node.marker().exists(), "{name} ran as {key}");
        }
    }
    // The control: a plain name on PATH does run.
    let docker = node.write("docker.json", r#"{"credsStore":"ok"}"#, 0o600);
    let out = node.lookup(&node.docker_source(&docker), "r.test/app");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.marker().exists(), "the control helper did not run");
}

#[test]
fn a_docker_config_others_can_write_never_runs_its_helper() {
    let _turn = TAKE_TURNS.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    node.evil_program(&node.path("bin/docker-credential-planted"));
    std::fs::remove_file(node.marker()).ok();
    let json = r#"{"credsStore":"planted"}"#;
    for mode in [0o666, 0o620, 0o602] {
        let docker = node.write("docker.json", json, mode);
        let out = node.lookup(&node.docker_source(&docker), "r.test/app");
        assert_eq!(out.status.code(), Some(1), "{mode:o}");
        let text = stderr(&out);
        assert!(text.contains("writable by group or others"), "{text}");
        assert!(
            text.contains(&format!("chmod go-w {}", docker.display())),
            "{text}"
        );
        assert!(!node.marker().exists(), "ran from a {mode:o} docker config");
    }
    let docker = node.write("docker.json", json, 0o600);
    std::os::unix::fs::chown(&docker, Some(NOBODY), None).unwrap();
    let out = node.lookup(&node.docker_source(&docker), "r.test/app");
    let text = stderr(&out);
    assert!(
        text.contains(&format!("owned by uid {NOBODY}, not root")),
        "{text}"
    );
    assert!(
        !node.marker().exists(),
        "ran from a docker config owned by nobody"
    );
    // The control.
    std::os::unix::fs::chown(&docker, Some(0), None).unwrap();
    let out = node.lookup(&node.docker_source(&docker), "r.test/app");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.marker().exists(), "the control helper did not run");
}

#[test]
fn a_kubelet_provider_config_or_plugin_dir_others_can_write_never_runs_a_plugin() {
    let _turn = TAKE_TURNS.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    let bin_dir = node.path("plugins");
    node.evil_program(&bin_dir.join("provider"));
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(node.marker()).ok();
    let provider = node.write(
        "provider.yaml",
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: provider\n    matchImages: [r.test]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
        0o666,
    );
    let config = node.write(
        "config.toml",
        &format!(
            "[[kubelet_provider]]\nconfig = \"{}\"\nbin_dir = \"{}\"\n",
            provider.display(),
            bin_dir.display()
        ),
        0o600,
    );
    let out = node.lookup(&config, "r.test/app");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("writable by group or others"),
        "{}",
        stderr(&out)
    );
    assert!(!node.marker().exists(), "ran from a 0666 provider config");

    std::fs::set_permissions(&provider, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = node.lookup(&config, "r.test/app");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("plugin not run"), "{}", stderr(&out));
    assert!(!node.marker().exists(), "ran from a 0777 bin_dir");

    // The control: the plugin runs (and its answer, not a provider response, is an error).
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    node.lookup(&config, "r.test/app");
    assert!(node.marker().exists(), "the control plugin did not run");
}
