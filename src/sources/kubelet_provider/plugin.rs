//! One run of a provider plugin, as kubelet's `execPlugin`: `bin_dir/NAME ARGS...` with a
//! `CredentialProviderRequest` on stdin and a `CredentialProviderResponse` on stdout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::config::{ProviderSpec, PLUGIN_API_VERSIONS};
use super::KubeletProviderError;
use crate::duration::parse_go_duration;
use crate::secret::Secret;
use crate::sources::trusted_file;
use crate::system::{ProcessError, ProcessOutput, ProcessSpec, System};

const REQUEST_KIND: &str = "CredentialProviderRequest";
const RESPONSE_KIND: &str = "CredentialProviderResponse";
/// Most of a plugin's stderr an error message quotes.
const STDERR_QUOTE_CHARS: usize = 200;

/// What every plugin of one source runs with.
pub(super) struct PluginHost {
    /// The `CredentialProviderConfig` file, for messages.
    pub config: PathBuf,
    pub bin_dir: PathBuf,
    pub system: System,
    /// credgate's `[helpers] timeout`, used instead of kubelet's fixed one minute.
    pub timeout: Duration,
}

/// How a response is cached, as kubelet's `PluginCacheKeyType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// A decoded, checked response.
#[derive(Debug)]
pub(super) struct PluginResponse {
    pub cache_key_type: CacheKeyType,
    /// `None` when the response has no `cacheDuration`, so the provider's default applies.
    pub cache_duration: Option<Duration>,
    /// `auth` keys (image patterns) to their credential.
    pub auth: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Clone)]
pub(super) struct AuthEntry {
    pub username: String,
    pub password: Secret,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    api_version: &'a str,
    kind: &'static str,
    image: &'a str,
}

/// Read first, leniently, as kubelet reads the group/version before decoding the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// The response as kubelet decodes it: strictly, so an unknown field is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawResponse {
    #[serde(rename = "apiVersion")]
    _api_version: Option<IgnoredAny>,
    #[serde(rename = "kind")]
    _kind: Option<IgnoredAny>,
    cache_key_type: Option<String>,
    cache_duration: Option<String>,
    #[serde(rename = "serviceAccountTokenCacheType")]
    _service_account_token_cache_type: Option<IgnoredAny>,
    auth: Option<BTreeMap<String, RawAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    username: Option<String>,
    password: Option<String>,
}

/// Runs the plugin of `spec` for `image` and checks its answer.
pub(super) async fn run_plugin(
    host: &PluginHost,
    spec: &ProviderSpec,
    image: &str,
) -> Result<PluginResponse, KubeletProviderError> {
    let program = host.bin_dir.join(&spec.name);
    // The plugin runs as root: a bin dir or executable others can write is not run.
    for path in [host.bin_dir.as_path(), program.as_path()] {
        trusted_file::check(host.system.files.as_ref(), path).map_err(|source| {
            KubeletProviderError::PluginUntrusted {
                provider: spec.name.clone(),
                source,
            }
        })?;
    }
    let process = ProcessSpec {
        program: program.clone(),
        args: spec.args.clone(),
        env: plugin_env(&host.system.helper_env, &spec.env),
        stdin: request_json(spec, image),
        timeout: host.timeout,
    };
    let output = host
        .system
        .processes
        .run(process)
        .await
        .map_err(|e| process_error(e, spec, image, program))?;
    if !output.success() {
        return Err(KubeletProviderError::PluginFailed {
            provider: spec.name.clone(),
            image: image.to_string(),
            status: exit_status(&output),
        });
    }
    parse_response(&output.stdout, &spec.api_version).map_err(|reason| {
        KubeletProviderError::PluginResponse {
            provider: spec.name.clone(),
            image: image.to_string(),
            reason,
        }
    })
}

fn request_json(spec: &ProviderSpec, image: &str) -> Vec<u8> {
    let request = Request {
        api_version: &spec.api_version,
        kind: REQUEST_KIND,
        image,
    };
    // Serialising three strings can't fail; the newline is what kubelet's encoder ends with.
    let mut json = serde_json::to_vec(&request).unwrap_or_default();
    json.push(b'\n');
    json
}

/// credgate's helper environment with the provider's `env` appended, as kubelet appends
/// them to its own; a name set twice keeps its last value, as Go's exec does.
fn plugin_env(
    base: &[(OsString, OsString)],
    extra: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env = base.to_vec();
    for (name, value) in extra {
        env.retain(|(k, _)| k.as_os_str() != name.as_str());
        env.push((name.into(), value.into()));
    }
    env
}

fn process_error(
    error: ProcessError,
    spec: &ProviderSpec,
    image: &str,
    program: PathBuf,
) -> KubeletProviderError {
    let provider = spec.name.clone();
    let image = image.to_string();
    match error {
        ProcessError::NotFound { .. } => KubeletProviderError::PluginMissing { provider, program },
        ProcessError::TimedOut { timeout, .. } => KubeletProviderError::PluginTimedOut {
            provider,
            image,
            timeout,
        },
        other => KubeletProviderError::PluginRun {
            provider,
            image,
            reason: other.to_string(),
        },
    }
}

/// `exited with code 1: <first stderr line>`, quoting at most 200 characters of stderr.
fn exit_status(output: &ProcessOutput) -> String {
    let status = match output.code {
        Some(code) => format!("exited with code {code}"),
        None => "killed by a signal".to_string(),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first_line: String = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(STDERR_QUOTE_CHARS)
        .collect();
    if first_line.is_empty() {
        status
    } else {
        format!("{status}: {first_line}")
    }
}

/// Checks and decodes stdout. Errors say what is wrong and where, never what stdout holds:
/// it may carry a password.
pub(super) fn parse_response(
    stdout: &[u8],
    expected_api_version: &str,
) -> Result<PluginResponse, String> {
    let meta: TypeMeta = serde_json::from_slice(stdout)
        .map_err(|e| format!("stdout is not a JSON object ({})", position(&e)))?;
    let api_version = meta.api_version.unwrap_or_default();
    if api_version != expected_api_version {
        return Err(format!(
            "apiVersion is {}, expected {expected_api_version} as in the request",
            describe_api_version(&api_version)
        ));
    }
    if meta.kind.as_deref() != Some(RESPONSE_KIND) {
        return Err(format!("kind is not {RESPONSE_KIND}"));
    }
    let raw: RawResponse = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "not a valid {RESPONSE_KIND}: a field is unknown or has the wrong type ({})",
            position(&e)
        )
    })?;
    Ok(PluginResponse {
        cache_key_type: cache_key_type(raw.cache_key_type.as_deref())?,
        cache_duration: raw
            .cache_duration
            .as_deref()
            .map(response_duration)
            .transpose()?,
        auth: raw
            .auth
            .unwrap_or_default()
            .into_iter()
            .map(|(key, auth)| {
                let entry = AuthEntry {
                    username: auth.username.unwrap_or_default(),
                    password: Secret::new(auth.password.unwrap_or_default()),
                };
                (key, entry)
            })
            .collect(),
    })
}

fn position(error: &serde_json::Error) -> String {
    format!("line {} column {}", error.line(), error.column())
}

/// Names a known version a plugin answered with by mistake; anything else stays unquoted.
fn describe_api_version(found: &str) -> String {
    match found {
        "" => "missing".to_string(),
        v if PLUGIN_API_VERSIONS.contains(&v) => v.to_string(),
        _ => "not a credentialprovider.kubelet.k8s.io version".to_string(),
    }
}

fn cache_key_type(value: Option<&str>) -> Result<CacheKeyType, String> {
    match value {
        Some("Image") => Ok(CacheKeyType::Image),
        Some("Registry") => Ok(CacheKeyType::Registry),
        Some("Global") => Ok(CacheKeyType::Global),
        None | Some("") => Err("cacheKeyType is missing (Image, Registry or Global)".into()),
        Some(_) => Err("cacheKeyType is not Image, Registry or Global".into()),
    }
}

/// A negative duration is valid Go and leaves an entry expired at once, so it is zero here.
fn response_duration(value: &str) -> Result<Duration, String> {
    let duration = match value.strip_prefix('-') {
        Some(magnitude) => parse_go_duration(magnitude).map(|_| Duration::ZERO),
        None => parse_go_duration(value),
    };
    duration.map_err(|_| "cacheDuration is not a Go duration (like 30s, 5m, 12h)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    fn parse(json: &str) -> Result<PluginResponse, String> {
        parse_response(json.as_bytes(), V1)
    }

    #[test]
    fn decodes_a_kubelet_response() {
        let r = parse(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"5m","auth":{"*.io":{"username":"u","password":"p"},"x.io":{}}}"#).unwrap();
        assert_eq!(r.cache_key_type, CacheKeyType::Registry);
        assert_eq!(r.cache_duration, Some(Duration::from_secs(300)));
        assert_eq!(r.auth["*.io"].password.expose(), "p");
        assert_eq!(r.auth["x.io"].username, "");
        let none = parse(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Global","cacheDuration":"-1s"}"#).unwrap();
        assert_eq!(none.cache_duration, Some(Duration::ZERO));
        assert!(none.auth.is_empty());
    }

    #[test]
    fn refuses_what_kubelet_refuses_without_quoting_stdout() {
        let base = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"r.io":{"username":"u","password":"hunter2-secret"}}}"#;
        let cases = [
            (
                base.replace("/v1\"", "/v1beta1\""),
                "apiVersion is credentialprovider.kubelet.k8s.io/v1beta1",
            ),
            (base.replace("Response\"", "Request\""), "kind is not"),
            (
                base.replace("\"Image\"", "\"hunter2-secret\""),
                "cacheKeyType is not",
            ),
            (
                base.replace(",\"cacheKeyType\":\"Image\"", ""),
                "cacheKeyType is missing",
            ),
            (
                base.replace("\"username\"", "\"email\""),
                "field is unknown",
            ),
            (
                base.replace(
                    "\"Image\"",
                    "\"Image\",\"cacheDuration\":\"hunter2-secret\"",
                ),
                "cacheDuration",
            ),
            (base.replace("\"hunter2-secret\"", "12345"), "wrong type"),
            (base.replace("}}}", "}}"), "not a JSON object"),
            ("hunter2-secret".to_string(), "not a JSON object"),
        ];
        for (json, expected) in cases {
            let e = parse(&json).unwrap_err();
            assert!(e.contains(expected), "{expected} in {e}");
            assert!(!e.contains("hunter2") && !e.contains("12345"), "{e}");
        }
    }

    #[test]
    fn config_env_follows_the_helper_env_and_wins() {
        let base = vec![
            (OsString::from("PATH"), OsString::from("/usr/bin")),
            (OsString::from("AWS_PROFILE"), OsString::from("default")),
        ];
        let extra = [("AWS_PROFILE".to_string(), "node".to_string())];
        let env = plugin_env(&base, &extra);
        assert_eq!(env.len(), 2);
        assert_eq!(env[1], ("AWS_PROFILE".into(), "node".into()));
    }

    #[test]
    fn exit_status_quotes_one_short_stderr_line() {
        let output = ProcessOutput {
            code: Some(3),
            stdout: Vec::new(),
            stderr: format!("\n{}\nsecond line", "x".repeat(500)).into_bytes(),
        };
        let status = exit_status(&output);
        assert!(status.starts_with("exited with code 3: xxx"), "{status}");
        assert_eq!(status.len(), "exited with code 3: ".len() + 200);
    }
}
