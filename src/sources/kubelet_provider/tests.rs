//! The source end to end over fakes: config file in memory, scripted plugin, manual clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Location;
use crate::sources::SecretKind;
use crate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};
use crate::system::{ProcessOutput, ProcessSpec};

const CONFIG_PATH: &str = "/etc/kubernetes/credential-provider.yaml";
const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

struct Fixture {
    clock: Arc<ManualClock>,
    processes: Arc<ScriptedProcesses>,
    files: Arc<MemoryFiles>,
    source: KubeletProviderSource,
}

impl Fixture {
    /// A source whose one provider `ecr` has `default` as `defaultCacheDuration` and
    /// answers every run with `response`.
    fn new(default: &str, response: String) -> Self {
        Self::scripted(&config(default), move |_| ScriptedProcesses::ok(&response))
    }

    fn scripted(
        config: &str,
        script: impl Fn(&ProcessSpec) -> Result<ProcessOutput, crate::system::ProcessError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        let clock = Arc::new(ManualClock::new());
        let processes =
            Arc::new(ScriptedProcesses::new(script).with_delay(Duration::from_millis(50)));
        let files = Arc::new(MemoryFiles::new());
        files.write(CONFIG_PATH, config, 0o644);
        let system = System::fake(clock.clone(), processes.clone(), files.clone());
        let source = KubeletProviderSource::new(&entry(), system, Duration::from_secs(5));
        Self {
            clock,
            processes,
            files,
            source,
        }
    }

    async fn offers(&self, target: &str) -> Vec<Offer> {
        let target = Target::parse(target).unwrap();
        self.source.offers(&target).await.unwrap()
    }

    async fn fetch(&self, target: &str) -> Result<Option<Credential>, SourceError> {
        let offers = self.offers(target).await;
        assert_eq!(offers.len(), 1, "{offers:?}");
        offers[0].fetch().await
    }

    async fn password(&self, target: &str) -> String {
        let credential = self.fetch(target).await.unwrap().expect("a credential");
        credential.secret.expose().to_string()
    }

    fn runs(&self) -> usize {
        self.processes.runs().len()
    }
}

fn entry() -> KubeletProviderEntry {
    KubeletProviderEntry {
        config: PathBuf::from(CONFIG_PATH),
        bin_dir: PathBuf::from("/usr/libexec/kubelet-plugins"),
        location: Location {
            path: PathBuf::from("/etc/credgate/config.toml"),
            line: 7,
        },
    }
}

fn config(default_cache_duration: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "registry.test"]
    defaultCacheDuration: "{default_cache_duration}"
    apiVersion: {V1}
    args: [get-credentials, --verbose]
    env:
      - name: AWS_PROFILE
        value: node
"#
    )
}

/// A response with `cacheKeyType`, optional `cacheDuration` and `(key, user, password)`s.
fn response(key_type: &str, duration: Option<&str>, auth: &[(&str, &str, &str)]) -> String {
    let auth: serde_json::Map<String, serde_json::Value> = auth
        .iter()
        .map(|(k, u, p)| {
            (
                k.to_string(),
                serde_json::json!({"username": u, "password": p}),
            )
        })
        .collect();
    let mut json = serde_json::json!({
        "apiVersion": V1,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": key_type,
        "auth": auth,
    });
    if let Some(d) = duration {
        json["cacheDuration"] = d.into();
    }
    json.to_string()
}

const ECR: &str = "123456789.dkr.ecr.us-east-1.amazonaws.com";

fn ecr_response(key_type: &str, duration: Option<&str>) -> String {
    response(key_type, duration, &[(ECR, "AWS", "ecr-token")])
}

#[tokio::test]
async fn offers_name_the_matching_provider_and_run_nothing() {
    let f = Fixture::new("1h", ecr_response("Image", None));
    let offers = f.offers(&format!("{ECR}/team/app:v1")).await;
    assert_eq!(offers.len(), 1);
    assert_eq!(
        offers[0].origin,
        r#"provider "ecr" matchImages "*.dkr.ecr.*.amazonaws.com""#
    );
    assert_eq!(offers[0].scope.to_string(), "*.dkr.ecr.*.amazonaws.com");
    assert!(f.offers("quay.io/app").await.is_empty());
    assert!(f.offers("docker.io/library/busybox").await.is_empty());
    assert_eq!(f.runs(), 0);
}

#[tokio::test]
async fn ranking_scope_falls_back_to_the_registry() {
    let target = Target::parse("registry.test/teamx/app").unwrap();
    assert_eq!(
        ranking_scope("registry.test/team", &target).to_string(),
        "registry.test"
    );
    assert_eq!(
        ranking_scope("reg*.test", &target).to_string(),
        "registry.test"
    );
    assert_eq!(
        ranking_scope("registry.test/teamx", &target).to_string(),
        "registry.test/teamx"
    );
}

#[tokio::test]
async fn fetch_runs_the_plugin_as_kubelet_does() {
    let f = Fixture::new("1h", ecr_response("Image", None));
    let credential = f
        .fetch(&format!("{ECR}/team/app@sha256:{}", "a".repeat(64)))
        .await;
    let credential = credential.unwrap().unwrap();
    assert_eq!(credential.username, "AWS");
    assert_eq!(credential.kind, SecretKind::Password);
    let run = &f.processes.runs()[0];
    assert_eq!(
        run.program,
        PathBuf::from("/usr/libexec/kubelet-plugins/ecr")
    );
    assert_eq!(run.args, ["get-credentials", "--verbose"]);
    assert_eq!(run.timeout, Duration::from_secs(5));
    let request: serde_json::Value = serde_json::from_slice(&run.stdin).unwrap();
    assert_eq!(
        request,
        serde_json::json!({"apiVersion": V1, "kind": "CredentialProviderRequest",
            "image": format!("{ECR}/team/app")})
    );
    let env: Vec<_> = run
        .env
        .iter()
        .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
        .collect();
    assert_eq!(env, [("PATH", "/usr/bin"), ("AWS_PROFILE", "node")]);
}

#[tokio::test]
async fn image_cache_key_serves_only_that_image() {
    let f = Fixture::new("1h", ecr_response("Image", None));
    f.password(&format!("{ECR}/a:v1")).await;
    f.password(&format!("{ECR}/a:v2")).await;
    assert_eq!(f.runs(), 1);
    f.password(&format!("{ECR}/b")).await;
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn registry_cache_key_serves_the_whole_registry() {
    let f = Fixture::new("1h", ecr_response("Registry", None));
    f.password(&format!("{ECR}/a")).await;
    f.password(&format!("{ECR}/b/c")).await;
    assert_eq!(f.runs(), 1);
    let other_account = f.fetch("987654321.dkr.ecr.us-east-1.amazonaws.com/a").await;
    assert!(
        other_account.unwrap().is_none(),
        "the auth key names one account"
    );
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn global_cache_key_serves_every_image() {
    let auth = [
        ("*.dkr.ecr.*.amazonaws.com", "AWS", "t"),
        ("registry.test", "u", "p"),
    ];
    let f = Fixture::new("1h", response("Global", None, &auth));
    assert_eq!(f.password(&format!("{ECR}/a")).await, "t");
    assert_eq!(f.password("registry.test/x").await, "p");
    assert_eq!(f.runs(), 1);
}

#[tokio::test]
async fn cache_duration_zero_means_no_cache() {
    let f = Fixture::new("1h", ecr_response("Registry", Some("0s")));
    f.password(&format!("{ECR}/a")).await;
    f.password(&format!("{ECR}/a")).await;
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn absent_cache_duration_uses_the_default_or_none() {
    let with_default = Fixture::new("10m", ecr_response("Image", None));
    with_default.password(&format!("{ECR}/a")).await;
    with_default.password(&format!("{ECR}/a")).await;
    assert_eq!(with_default.runs(), 1);

    let no_default = Fixture::new("0s", ecr_response("Image", None));
    no_default.password(&format!("{ECR}/a")).await;
    no_default.password(&format!("{ECR}/a")).await;
    assert_eq!(no_default.runs(), 2);
}

#[tokio::test]
async fn entries_expire_after_their_duration() {
    let f = Fixture::new("0s", ecr_response("Image", Some("5m")));
    f.password(&format!("{ECR}/a")).await;
    f.clock.advance(Duration::from_secs(300));
    f.password(&format!("{ECR}/a")).await;
    assert_eq!(f.runs(), 1, "still good at the instant it expires");
    f.clock.advance(Duration::from_secs(1));
    f.password(&format!("{ECR}/a")).await;
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn concurrent_lookups_of_one_image_share_one_run() {
    let f = Fixture::new("0s", ecr_response("Image", None));
    let image = format!("{ECR}/a");
    let lookups = (0..8).map(|_| f.fetch(&image));
    let results = futures::future::join_all(lookups).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Some(_)))));
    assert_eq!(f.runs(), 1);
    // With no cache, the next lookup runs again: the finished flight was removed.
    f.password(&image).await;
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn concurrent_lookups_share_a_failure_too() {
    let f = Fixture::scripted(&config("1h"), |_| ScriptedProcesses::exit(1, ""));
    let image = format!("{ECR}/a");
    let results = futures::future::join_all((0..4).map(|_| f.fetch(&image))).await;
    assert!(results.iter().all(Result::is_err));
    assert_eq!(f.runs(), 1);
}

#[tokio::test]
async fn the_most_specific_auth_key_wins() {
    let auth = [
        ("registry.test", "all", "p-all"),
        ("registry.test/team", "team", "p-team"),
        ("*.test/team/app", "glob", "p-glob"),
    ];
    let f = Fixture::new("1h", response("Global", None, &auth));
    assert_eq!(f.password("registry.test/team/app").await, "p-team");
    assert_eq!(f.password("registry.test/other").await, "p-all");
}

#[tokio::test]
async fn empty_credentials_and_no_matching_key_are_misses() {
    let f = Fixture::new("1h", response("Global", None, &[("registry.test", "", "")]));
    assert!(f.fetch("registry.test/a").await.unwrap().is_none());
    let f = Fixture::new("1h", response("Global", None, &[("other.test", "u", "p")]));
    assert!(f.fetch("registry.test/a").await.unwrap().is_none());
}

#[tokio::test]
async fn malformed_responses_are_errors_without_the_secret() {
    let bad = response("Image", None, &[(ECR, "AWS", "hunter2-secret")]).replace('}', "");
    let f = Fixture::new("1h", bad);
    let e = f.fetch(&format!("{ECR}/a")).await.unwrap_err().to_string();
    assert!(e.contains("\"ecr\"") && e.contains("bad response"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let f = Fixture::new("1h", ecr_response("Image", None).replace("Image", "Pod"));
    let e = f.fetch(&format!("{ECR}/a")).await.unwrap_err().to_string();
    assert!(e.contains("cacheKeyType"), "{e}");
}

#[tokio::test]
async fn a_failing_plugin_names_itself_and_its_stderr() {
    let f = Fixture::scripted(&config("1h"), |_| {
        Ok(ProcessOutput {
            code: Some(2),
            stdout: b"hunter2-secret".to_vec(),
            stderr: b"no credentials for profile node\nmore".to_vec(),
        })
    });
    let e = f.fetch(&format!("{ECR}/a")).await.unwrap_err().to_string();
    assert!(e.contains(r#"kubelet provider "ecr""#), "{e}");
    assert!(
        e.ends_with("exited with code 2: no credentials for profile node"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[tokio::test]
async fn a_missing_plugin_or_config_is_named() {
    let f = Fixture::scripted(&config("1h"), |spec| {
        Err(crate::system::ProcessError::NotFound {
            program: spec.program.clone(),
        })
    });
    let e = f.fetch(&format!("{ECR}/a")).await.unwrap_err().to_string();
    assert!(
        e.contains("/usr/libexec/kubelet-plugins/ecr does not exist"),
        "{e}"
    );

    let clock = Arc::new(ManualClock::new());
    let processes = Arc::new(ScriptedProcesses::new(|_| ScriptedProcesses::ok("")));
    let system = System::fake(clock, processes, Arc::new(MemoryFiles::new()));
    let source = KubeletProviderSource::new(&entry(), system, Duration::from_secs(5));
    let e = source
        .offers(&Target::parse("registry.test/a").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(CONFIG_PATH) && e.contains("config.toml:7"),
        "{e}"
    );
}

#[tokio::test]
async fn invalid_config_is_an_error_naming_file_and_provider() {
    let f = Fixture::new("1h", ecr_response("Image", None));
    f.files.write(
        CONFIG_PATH,
        &config("1h").replace("name: ecr", "name: ecr/x"),
        0o644,
    );
    let target = Target::parse("registry.test/a").unwrap();
    let e = f.source.offers(&target).await.unwrap_err().to_string();
    assert!(
        e.contains(CONFIG_PATH) && e.contains("provider \"ecr/x\""),
        "{e}"
    );
}

#[tokio::test]
async fn config_edits_are_seen_and_unchanged_providers_keep_their_cache() {
    let f = Fixture::new("1h", ecr_response("Registry", None));
    f.password(&format!("{ECR}/a")).await;
    let other = "  - name: other\n    matchImages: [quay.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1beta1\n";
    f.files
        .write(CONFIG_PATH, &format!("{}{other}", config("1h")), 0o644);
    assert_eq!(f.offers("quay.io/x").await.len(), 1);
    f.password(&format!("{ECR}/b")).await;
    assert_eq!(f.runs(), 1, "the ecr provider kept its cache");
    f.files.write(CONFIG_PATH, &config("2h"), 0o644);
    f.password(&format!("{ECR}/b")).await;
    assert_eq!(f.runs(), 2, "a changed provider starts afresh");
}

#[tokio::test]
async fn service_account_token_providers_are_refused_alone() {
    let text = config("1h").replace(
        "    env:",
        "    tokenAttributes:\n      serviceAccountTokenAudience: sts.amazonaws.com\n      requireServiceAccount: false\n      cacheType: ServiceAccount\n    env:",
    );
    let f = Fixture::scripted(&text, |_| ScriptedProcesses::ok(""));
    let e = f.fetch("registry.test/a").await.unwrap_err().to_string();
    assert!(
        e.contains("service-account-token") && e.contains("\"ecr\""),
        "{e}"
    );
    assert_eq!(f.runs(), 0);
}

#[tokio::test]
async fn a_config_others_can_write_is_refused_and_no_plugin_runs() {
    let f = Fixture::new("1h", ecr_response("Image", None));
    let target = Target::parse(&format!("{ECR}/a")).unwrap();
    f.files.write(CONFIG_PATH, &config("1h"), 0o666);
    let e = f.source.offers(&target).await.unwrap_err().to_string();
    assert!(
        e.contains("writable by group or others")
            && e.ends_with(&format!("run: chmod go-w {CONFIG_PATH}")),
        "{e}"
    );
    f.files.write(CONFIG_PATH, &config("1h"), 0o644);
    f.files.chown(CONFIG_PATH, 4242);
    let e = f.source.offers(&target).await.unwrap_err().to_string();
    assert!(e.contains("owned by uid 4242"), "{e}");
    assert_eq!(f.runs(), 0);
    f.files.chown(CONFIG_PATH, 0);
    assert_eq!(f.password(&format!("{ECR}/a")).await, "ecr-token");
}

#[tokio::test]
async fn a_plugin_or_bin_dir_others_can_write_is_not_run() {
    let bin_dir = entry().bin_dir;
    let plugin = bin_dir.join("ecr");
    for (path, mode, uid) in [
        (&bin_dir, 0o777, 0),
        (&bin_dir, 0o755, 4242),
        (&plugin, 0o775, 0),
        (&plugin, 0o755, 4242),
    ] {
        let f = Fixture::new("1h", ecr_response("Image", None));
        f.files.write(&bin_dir, "", 0o755);
        f.files.write(&plugin, "", 0o755);
        f.files.write(path, "", mode);
        f.files.chown(path, uid);
        let e = f.fetch(&format!("{ECR}/a")).await.unwrap_err().to_string();
        assert!(
            e.starts_with("kubelet provider \"ecr\": plugin not run")
                && e.contains(&path.display().to_string()),
            "{e}"
        );
        assert_eq!(f.runs(), 0, "{e}");
    }
    let f = Fixture::new("1h", ecr_response("Image", None));
    f.files.write(&bin_dir, "", 0o755);
    f.files.write(&plugin, "", 0o755);
    assert_eq!(f.password(&format!("{ECR}/a")).await, "ecr-token");
}
