//! kubelet's `CredentialProviderConfig` file (`kubelet.config.k8s.io/v1`, `v1beta1`,
//! `v1alpha1`), read and validated as kubelet does: unknown fields are refused (kubelet
//! decodes strictly) and every validation problem is reported at once.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::url_match::parse_schemeless;
use super::KubeletProviderError;
use crate::duration::parse_go_duration;

const CONFIG_API_VERSIONS: &[&str] = &[
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
const CONFIG_KIND: &str = "CredentialProviderConfig";

/// The `CredentialProviderRequest`/`Response` versions a plugin may speak.
pub(super) const PLUGIN_API_VERSIONS: &[&str] = &[
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
];

/// A validated config: its providers, in file order.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProviderConfig {
    pub providers: Vec<ProviderSpec>,
}

/// One validated `providers[]` entry.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct ProviderSpec {
    /// The executable's name inside `bin_dir`.
    pub name: String,
    pub match_images: Vec<String>,
    /// Used when a response has no `cacheDuration`; zero means "don't cache".
    pub default_cache_duration: Duration,
    /// The request's `apiVersion`, which the response must repeat.
    pub api_version: String,
    pub args: Vec<String>,
    /// Appended to credgate's helper environment; a later entry wins over an earlier one.
    pub env: Vec<(String, String)>,
    /// The provider has `tokenAttributes` (service-account-token mode): credgate refuses it
    /// when asked, since it pulls outside any pod and has no token to send.
    pub wants_service_account_token: bool,
}

/// Env values may be secrets (cloud keys), so only their names are shown.
impl fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("match_images", &self.match_images)
            .field("default_cache_duration", &self.default_cache_duration)
            .field("api_version", &self.api_version)
            .field("args", &self.args.len())
            .field("env", &env_names)
            .field(
                "wants_service_account_token",
                &self.wants_service_account_token,
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    providers: Option<Vec<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProvider {
    name: Option<String>,
    match_images: Option<Vec<String>>,
    default_cache_duration: Option<String>,
    api_version: Option<String>,
    args: Option<Vec<String>>,
    env: Option<Vec<RawEnvVar>>,
    token_attributes: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvVar {
    name: String,
    value: String,
}

/// Parses and validates the config file at `path` (named in every error).
pub(super) fn parse_config(
    bytes: &[u8],
    path: &Path,
) -> Result<ProviderConfig, KubeletProviderError> {
    let raw = decode(bytes).map_err(|reason| KubeletProviderError::ConfigSyntax {
        config: path.to_path_buf(),
        reason,
    })?;
    check_type_meta(&raw).map_err(|reason| KubeletProviderError::ConfigSyntax {
        config: path.to_path_buf(),
        reason,
    })?;
    validate(raw.providers.unwrap_or_default()).map_err(|problems| {
        KubeletProviderError::ConfigInvalid {
            config: path.to_path_buf(),
            problems: problems.join("; "),
        }
    })
}

/// JSON or YAML, as kubelet's decoder accepts both; JSON goes to the JSON parser so that
/// tab-indented JSON (not valid YAML) still reads.
fn decode(bytes: &[u8]) -> Result<RawConfig, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| without_values(&e.to_string()))
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| without_values(&e.to_string()))
    }
}

fn check_type_meta(raw: &RawConfig) -> Result<(), String> {
    match raw.api_version.as_deref() {
        None | Some("") => return Err("apiVersion is missing".into()),
        Some(v) if !CONFIG_API_VERSIONS.contains(&v) => {
            return Err(format!(
                "apiVersion {v:?} is not one of {}",
                CONFIG_API_VERSIONS.join(", ")
            ))
        }
        Some(_) => {}
    }
    match raw.kind.as_deref() {
        Some(CONFIG_KIND) => Ok(()),
        None | Some("") => Err("kind is missing".into()),
        Some(kind) => Err(format!("kind is {kind:?}, expected {CONFIG_KIND}")),
    }
}

/// kubelet's `validateCredentialProviderConfig`, plus: a provider needs a name. Returns
/// every problem, each naming its provider.
fn validate(raw: Vec<RawProvider>) -> Result<ProviderConfig, Vec<String>> {
    let mut problems = Vec::new();
    if raw.is_empty() {
        problems.push("at least 1 item in providers is required".to_string());
    }
    let mut seen = std::collections::HashSet::new();
    let mut providers = Vec::with_capacity(raw.len());
    for (index, provider) in raw.into_iter().enumerate() {
        let name = provider.name.clone().unwrap_or_default();
        let label = if name.is_empty() {
            format!("providers[{index}]")
        } else {
            format!("provider {name:?}")
        };
        let mut own = Vec::new();
        if !name.is_empty() && !seen.insert(name.clone()) {
            own.push("duplicate name".to_string());
        }
        match validate_provider(provider, &mut own) {
            Some(spec) if own.is_empty() => providers.push(spec),
            _ => problems.extend(own.into_iter().map(|p| format!("{label}: {p}"))),
        }
    }
    if problems.is_empty() {
        Ok(ProviderConfig { providers })
    } else {
        Err(problems)
    }
}

/// Validates one provider, pushing each problem; `None` when one makes it unusable.
fn validate_provider(raw: RawProvider, problems: &mut Vec<String>) -> Option<ProviderSpec> {
    let name = raw.name.unwrap_or_default();
    problems.extend(name_problem(&name));
    let api_version = raw.api_version.unwrap_or_default();
    if api_version.is_empty() {
        problems.push("apiVersion is required".into());
    } else if !PLUGIN_API_VERSIONS.contains(&api_version.as_str()) {
        problems.push(format!(
            "apiVersion {api_version:?} is not supported (one of {})",
            PLUGIN_API_VERSIONS.join(", ")
        ));
    }
    let match_images = raw.match_images.unwrap_or_default();
    if match_images.is_empty() {
        problems.push("at least 1 item in matchImages is required".into());
    }
    for image in &match_images {
        if let Err(reason) = parse_schemeless(image) {
            problems.push(format!("matchImages entry {image:?} is invalid: {reason}"));
        }
    }
    let default_cache_duration = match raw.default_cache_duration.as_deref() {
        None => {
            problems.push("defaultCacheDuration is required".into());
            None
        }
        Some(d) if d.starts_with('-') => {
            problems.push("defaultCacheDuration must be greater than or equal to 0".into());
            None
        }
        Some(d) => parse_go_duration(d)
            .map_err(|e| problems.push(format!("defaultCacheDuration: {e}")))
            .ok(),
    }?;
    Some(ProviderSpec {
        name,
        match_images,
        default_cache_duration,
        api_version,
        args: raw.args.unwrap_or_default(),
        env: raw
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect(),
        wants_service_account_token: raw.token_attributes.is_some(),
    })
}

/// The name is joined to `bin_dir`, so it must stay a plain file name there.
fn name_problem(name: &str) -> Option<String> {
    let problem = match name {
        "" => "name is required",
        "." | ".." => "name cannot be '.' or '..'",
        n if n.contains('/') => "name cannot contain '/'",
        n if n.contains(' ') => "name cannot contain spaces",
        n if n.contains('\0') => "name cannot contain NUL",
        _ => return None,
    };
    Some(problem.to_string())
}

/// A serde message without the offending value: a config's env values may be secrets, and
/// "invalid type: string \"...\"" would print one.
fn without_values(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            // The last one: a quoted value may itself hold ", expected".
            let tail = rest.rfind(", expected").map_or("", |i| &rest[i..]);
            return format!("{}{marker}(value not shown){tail}", &message[..start]);
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProviderConfig, KubeletProviderError> {
        parse_config(text.as_bytes(), Path::new("/etc/kubernetes/cp.yaml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const ECR_YAML: &str = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages:
      - "*.dkr.ecr.*.amazonaws.com"
      - "*.dkr.ecr.*.amazonaws.com.cn"
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - name: AWS_PROFILE
        value: node
"#;

    #[test]
    fn reads_yaml_as_kubelet_writes_it() {
        let config = parse(ECR_YAML).unwrap();
        let p = &config.providers[0];
        assert_eq!(p.name, "ecr-credential-provider");
        assert_eq!(p.match_images.len(), 2);
        assert_eq!(p.default_cache_duration, Duration::from_secs(12 * 3600));
        assert_eq!(p.api_version, "credentialprovider.kubelet.k8s.io/v1");
        assert_eq!(p.args, ["get-credentials"]);
        assert_eq!(p.env, [("AWS_PROFILE".to_string(), "node".to_string())]);
        assert!(!p.wants_service_account_token);
    }

    #[test]
    fn reads_json_and_older_versions() {
        let json = "{\n\t\"apiVersion\": \"kubelet.config.k8s.io/v1beta1\",\n\t\"kind\": \"CredentialProviderConfig\",\n\t\"providers\": [{\"name\": \"gcp\", \"matchImages\": [\"gcr.io\"], \"defaultCacheDuration\": \"0s\", \"apiVersion\": \"credentialprovider.kubelet.k8s.io/v1alpha1\", \"args\": null}]}";
        let config = parse(json).unwrap();
        assert_eq!(config.providers[0].default_cache_duration, Duration::ZERO);
        assert!(config.providers[0].args.is_empty());
    }

    #[test]
    fn refuses_wrong_type_meta_and_unknown_fields() {
        let e = error("apiVersion: v1\nkind: CredentialProviderConfig\nproviders: []");
        assert!(
            e.contains("/etc/kubernetes/cp.yaml") && e.contains("apiVersion"),
            "{e}"
        );
        let e = error("apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration");
        assert!(e.contains("kind"), "{e}");
        let e = error(&ECR_YAML.replace("matchImages", "matchImage"));
        assert!(e.contains("matchImage"), "{e}");
    }

    #[test]
    fn validation_names_file_and_provider() {
        let bad = ECR_YAML
            .replace("ecr-credential-provider", "../ecr")
            .replace("\"12h\"", "\"-1s\"")
            .replace("credentialprovider.kubelet.k8s.io/v1", "v2");
        let e = error(&bad);
        assert!(
            e.starts_with("kubelet provider config /etc/kubernetes/cp.yaml"),
            "{e}"
        );
        for part in [
            "provider \"../ecr\": name cannot contain '/'",
            "greater than or equal to 0",
            "apiVersion \"v2\" is not supported",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
    }

    #[test]
    fn validation_follows_kubelet_rules() {
        let cases = [
            (
                "name: ecr-credential-provider",
                "name: \"..\"",
                "cannot be '.' or '..'",
            ),
            ("name: ecr-credential-provider", "name: \"a b\"", "spaces"),
            (
                "    defaultCacheDuration: \"12h\"\n",
                "",
                "defaultCacheDuration is required",
            ),
            (
                "\"*.dkr.ecr.*.amazonaws.com\"",
                "\"bad host\"",
                "is invalid",
            ),
            ("\"12h\"", "\"12\"", "defaultCacheDuration"),
        ];
        for (from, to, expected) in cases {
            let e = error(&ECR_YAML.replace(from, to));
            assert!(e.contains(expected), "{expected} in {e}");
        }
        let e = error(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []",
        );
        assert!(e.contains("at least 1 item in providers"), "{e}");
        let twice = format!(
            "{ECR_YAML}{}",
            &ECR_YAML[ECR_YAML.find("  - name").unwrap()..]
        );
        assert!(error(&twice).contains("duplicate name"));
        let no_images = ECR_YAML.replace(
            "\n      - \"*.dkr.ecr.*.amazonaws.com\"\n      - \"*.dkr.ecr.*.amazonaws.com.cn\"",
            " []",
        );
        assert!(error(&no_images).contains("at least 1 item in matchImages"));
    }

    #[test]
    fn token_attributes_mark_the_provider_refused() {
        let text = ECR_YAML.replace(
            "    args:",
            "    tokenAttributes:\n      serviceAccountTokenAudience: sts\n      requireServiceAccount: true\n    args:",
        );
        assert!(parse(&text).unwrap().providers[0].wants_service_account_token);
    }

    #[test]
    fn syntax_errors_never_echo_values() {
        let text = ECR_YAML.replace("args: [get-credentials]", "args: hunter2-secret");
        let e = error(&text);
        assert!(!e.contains("hunter2-secret"), "{e}");
        assert!(e.contains("expected a sequence"), "{e}");
        let spec = format!("{:?}", parse(&ECR_YAML.replace("node", "s3cr3t")).unwrap());
        assert!(
            !spec.contains("s3cr3t") && spec.contains("AWS_PROFILE"),
            "{spec}"
        );
    }
}
