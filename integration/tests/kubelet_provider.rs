//! kubelet provider plugins run for real: a `/bin/sh` plugin written into a temporary
//! `bin_dir`, started by credgate's real process runner with a controlled environment.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credgate::config::{KubeletProviderEntry, Location};
use credgate::identity::Target;
use credgate::sources::kubelet_provider::KubeletProviderSource;
use credgate::sources::{Credential, Source};
use credgate::system::System;

const PLUGIN: &str = include_str!("fixtures/kubelet/recording-provider.sh");
const PLUGIN_NAME: &str = "recording-provider";

/// One test at a time: a plugin file being written while another test forks could be
/// inherited open for writing, and exec would then fail with "text file busy".
/// An async lock, as the guard is held across the test's awaits.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A temporary node: `bin/` with the plugin, `state/` where it records its calls, and the
/// `CredentialProviderConfig`.
struct Node {
    dir: tempfile::TempDir,
    source: KubeletProviderSource,
}

impl Node {
    fn new(cache_key_type: &str, cache_duration: &str, sleep: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let state = dir.path().join("state");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&state).unwrap();
        let plugin = bin.join(PLUGIN_NAME);
        fs::write(&plugin, PLUGIN).unwrap();
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("credential-provider.yaml");
        let env = [
            ("STATE_DIR", state.to_str().unwrap()),
            ("PLUGIN_SLEEP", sleep),
            ("CACHE_KEY_TYPE", cache_key_type),
            ("CACHE_DURATION", cache_duration),
            ("GREETING", "hello from the config"),
        ];
        fs::write(&config, config_yaml(&env)).unwrap();
        let entry = KubeletProviderEntry {
            config,
            bin_dir: bin,
            location: Location {
                path: PathBuf::from("/etc/credgate/config.toml"),
                line: 1,
            },
        };
        let system = System::real(environment(dir.path()));
        let source = KubeletProviderSource::new(&entry, system, Duration::from_secs(5));
        Self { dir, source }
    }

    async fn lookup(&self, reference: &str) -> Option<Credential> {
        let target = Target::parse(reference).unwrap();
        let offers = self.source.offers(&target).await.unwrap();
        assert_eq!(offers.len(), 1, "{offers:?}");
        offers[0].fetch().await.unwrap()
    }

    fn state(&self, file: &str) -> String {
        fs::read_to_string(self.dir.path().join("state").join(file)).unwrap_or_default()
    }

    fn calls(&self) -> usize {
        self.state("calls").lines().count()
    }
}

fn config_yaml(env: &[(&str, &str)]) -> String {
    let env: String = env
        .iter()
        .map(|(name, value)| format!("      - name: {name}\n        value: \"{value}\"\n"))
        .collect();
    format!(
        "apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: {PLUGIN_NAME}
    matchImages: [\"registry.test\", \"*.registry.test\"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
{env}"
    )
}

/// What credgate's binary would pass from its own environment; `NOT_FOR_PLUGINS` is not on
/// the helper pass-through list and must not reach the plugin.
fn environment(home: &Path) -> Vec<(OsString, OsString)> {
    [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", home.to_str().unwrap()),
        ("NOT_FOR_PLUGINS", "withheld"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect()
}

#[tokio::test]
async fn serves_the_plugins_credential_for_the_most_specific_key() {
    let _serial = SERIAL.lock().await;
    let node = Node::new("Image", "0s", "0");
    let credential = node.lookup("registry.test/team/app:v1").await.unwrap();
    assert_eq!(credential.username, "deploy");
    assert_eq!(credential.secret.expose(), "s3cret-from-plugin");
    let private = node.lookup("registry.test/private/app").await.unwrap();
    assert_eq!(private.username, "private");
    assert!(
        node.lookup("a.registry.test/app").await.is_none(),
        "no auth key for it"
    );
}

#[tokio::test]
async fn the_plugin_gets_the_request_on_stdin_and_the_config_env() {
    let _serial = SERIAL.lock().await;
    let node = Node::new("Image", "0s", "0");
    node.lookup("registry.test/group/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").await;
    let request: serde_json::Value = serde_json::from_str(&node.state("request.json")).unwrap();
    assert_eq!(
        request,
        serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": "registry.test/group/app",
        })
    );
    let env = node.state("env.txt");
    assert!(env.contains("GREETING=hello from the config"), "{env}");
    assert!(env.contains("PATH=/usr/bin:/bin"), "{env}");
    assert!(!env.contains("NOT_FOR_PLUGINS"), "{env}");
}

#[tokio::test]
async fn registry_cache_key_serves_two_images_with_one_call() {
    let _serial = SERIAL.lock().await;
    let node = Node::new("Registry", "5m", "0");
    node.lookup("registry.test/a").await.unwrap();
    node.lookup("registry.test/b/c").await.unwrap();
    assert_eq!(node.calls(), 1);
}

#[tokio::test]
async fn uncached_responses_run_the_plugin_each_time() {
    let _serial = SERIAL.lock().await;
    let node = Node::new("Registry", "0s", "0");
    node.lookup("registry.test/a").await.unwrap();
    node.lookup("registry.test/a").await.unwrap();
    assert_eq!(node.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_image_run_the_plugin_once() {
    let _serial = SERIAL.lock().await;
    // No caching at all: only coalescing can keep this to one call.
    let node = std::sync::Arc::new(Node::new("Image", "0s", "0.3"));
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.lookup("registry.test/team/app").await })
        })
        .collect();
    for lookup in lookups {
        assert!(lookup.await.unwrap().is_some());
    }
    assert_eq!(node.calls(), 1);
}
