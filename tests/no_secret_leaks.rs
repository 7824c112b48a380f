//! No secret reaches a log line, an error message or a Debug rendering, from any source:
//! `[[registry]]` (inline, file, helper), docker config (`auths`, `credHelpers`,
//! `credsStore`), credential helpers (hits and garbage) and kubelet provider plugins (hits
//! and malformed responses). Logs are captured at TRACE, the most verbose level.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use credgate::config::Config;
use credgate::identity::Target;
use credgate::keychain::Keychain;
use credgate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};
use credgate::system::{ProcessSpec, System};

const SECRETS: &[&str] = &[
    "inline-pw-A1",
    "file-token-B2",
    "helper-secret-C3",
    "auths-pw-D4",
    "identity-token-E5",
    "registry-token-F6",
    "cred-helper-G7",
    "store-secret-H8",
    "garbage-secret-I9",
    "kubelet-pw-J0",
    "kubelet-garbage-K1",
];

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn helper_answer(
    spec: &ProcessSpec,
) -> Result<credgate::system::ProcessOutput, credgate::system::ProcessError> {
    let program = spec.program.to_string_lossy().into_owned();
    let action = spec.args.first().map(String::as_str).unwrap_or_default();
    let url = String::from_utf8_lossy(&spec.stdin).into_owned();
    let credential = |secret: &str| {
        ScriptedProcesses::ok(&format!(
            r#"{{"ServerURL":"{url}","Username":"u","Secret":"{secret}"}}"#
        ))
    };
    match (program.rsplit('/').next().unwrap_or_default(), action) {
        ("docker-credential-static", "get") => credential("helper-secret-C3"),
        ("docker-credential-ghelper", "get") => credential("cred-helper-G7"),
        ("docker-credential-store", "list") => ScriptedProcesses::ok(r#"{"store.test:443":"u"}"#),
        ("docker-credential-store", "get") if url == "store.test:443" => {
            credential("store-secret-H8")
        }
        ("docker-credential-garbage", _) => {
            ScriptedProcesses::ok("Username: u Secret: garbage-secret-I9 {")
        }
        ("provider", _) => ScriptedProcesses::ok(
            r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","auth":{"kube.test":{"username":"ku","password":"kubelet-pw-J0"}}}"#,
        ),
        ("broken-provider", _) => {
            ScriptedProcesses::ok(r#"{"auth":{"kube2.test":{"password":"kubelet-garbage-K1""#)
        }
        _ => ScriptedProcesses::exit(1, "credentials not found in native keychain"),
    }
}

fn fixture() -> (Keychain, Config) {
    let files = Arc::new(MemoryFiles::new());
    files.write("/s/token", "file-token-B2\n", 0o644);
    let docker = format!(
        r#"{{"auths": {{
            "auths.test": {{"auth": "{}"}},
            "identity.test": {{"auth": "{}", "identitytoken": "identity-token-E5"}},
            "regtoken.test": {{"registrytoken": "registry-token-F6"}}
        }},
        "credHelpers": {{"helper.test": "ghelper", "garbage.test": "garbage"}},
        "credsStore": "store"}}"#,
        b64("u:auths-pw-D4"),
        b64("u:")
    );
    files.write("/d/config.json", &docker, 0o600);
    let kubelet = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: provider
    matchImages: ["kube.test"]
    defaultCacheDuration: "1m"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
  - name: broken-provider
    matchImages: ["kube2.test"]
    defaultCacheDuration: "0s"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
"#;
    files.write("/k/config.yaml", kubelet, 0o600);
    let toml = r#"
[[registry]]
match = "inline.test"
username = "u"
password = "inline-pw-A1"

[[registry]]
match = "file.test"
registry_token_file = "/s/token"

[[registry]]
match = "static-helper.test"
helper = "static"

[[docker_config]]
path = "/d/config.json"

[[kubelet_provider]]
config = "/k/config.yaml"
bin_dir = "/k/bin"
"#;
    let config = Config::parse(toml, Path::new("/etc/credgate/config.toml")).unwrap();
    let processes = Arc::new(ScriptedProcesses::new(helper_answer));
    let system = System::fake(Arc::new(ManualClock::new()), processes, files);
    (Keychain::from_config(&config, &system), config)
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_source_leaks_a_secret_into_logs_errors_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (keychain, config) = fixture();
    let mut seen = format!("{config:?}\n");
    let mut hits = Vec::new();
    for target in [
        "inline.test/app",
        "file.test/app",
        "static-helper.test/app",
        "auths.test/app",
        "identity.test/app",
        "regtoken.test/app",
        "helper.test/app",
        "store.test/app",
        "garbage.test/app",
        "kube.test/app",
        "kube2.test/app",
    ] {
        let target = Target::parse(target).unwrap();
        let decision = keychain.lookup(&target).await;
        let explanation = keychain.explain(&target).await;
        seen += &format!("{decision:?}\n{explanation:?}\n");
        if std::env::var_os("LEAK_DEBUG").is_some() {
            eprintln!(
                "{target}: {:?} {:?}",
                explanation.ranking.sources, explanation.candidates
            );
        }
        if let Some(w) = &decision.winner {
            hits.push((target.to_string(), w.credential.secret.expose().to_string()));
        }
    }
    // The fixture really produces secrets: otherwise the test could not fail.
    let found: Vec<&str> = hits.iter().map(|(_, s)| s.as_str()).collect();
    // Every secret but the ones inside malformed output is a credential some source serves.
    for expected in SECRETS.iter().filter(|s| !s.contains("garbage")) {
        assert!(
            found.contains(expected),
            "fixture did not yield {expected}: {hits:?}\n{seen}"
        );
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("garbage.test"),
        "garbage helper failure was not logged:\n{logs}"
    );
    assert!(
        logs.contains("kube2.test") || logs.contains("broken-provider"),
        "{logs}"
    );
    for secret in SECRETS {
        assert!(!logs.contains(secret), "log leaked {secret}:\n{logs}");
        assert!(
            !seen.contains(secret),
            "debug/error output leaked {secret}:\n{seen}"
        );
    }
}
