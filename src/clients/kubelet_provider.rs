//! `credgate kubelet-provider`: a kubelet credential provider plugin
//! (`credentialprovider.kubelet.k8s.io/v1`) answered from the daemon, so kubelet sends CRI
//! the same credentials every other pull path on the node uses.
//!
//! The response uses `cacheKeyType: Image` with a one-minute `cacheDuration`: per image,
//! because credgate's answer can depend on the repository path, and short, because
//! credgate already caches and sees rotated secrets itself. The `auth` keys are the image
//! as kubelet wrote it and its canonical form (`docker.io/library/busybox`), so kubelet's
//! own matching finds the credential whichever spelling it compares. kubelet's provider API
//! carries only usernames and passwords: an identity or registry token is not passed on
//! (the pull falls back to credgate's pull-through endpoint, which can use it).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::daemon_socket;
use crate::api::AuthType;
use crate::identity::Target;

const CACHE_DURATION: &str = "1m0s";
const API_VERSIONS: &[&str] = &[
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("stdin is not a CredentialProviderRequest: {0}")]
    BadRequest(String),
    #[error("unsupported apiVersion {0:?} (expected credentialprovider.kubelet.k8s.io/v1)")]
    ApiVersion(String),
    #[error(transparent)]
    Image(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Daemon(#[from] super::ClientError),
}

impl ProviderError {
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Daemon(_))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    api_version: String,
    kind: String,
    image: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: String,
    kind: &'static str,
    cache_key_type: &'static str,
    cache_duration: &'static str,
    auth: BTreeMap<String, AuthConfig>,
}

#[derive(Serialize)]
struct AuthConfig {
    username: String,
    password: String,
}

/// Answers one request read from stdin; returns the JSON for stdout.
pub async fn run(
    input: &str,
    vars: &[(OsString, OsString)],
    config: Option<&Path>,
) -> Result<String, ProviderError> {
    let request: Request =
        serde_json::from_str(input).map_err(|e| ProviderError::BadRequest(e.to_string()))?;
    if request.kind != "CredentialProviderRequest" {
        return Err(ProviderError::BadRequest(format!(
            "kind is {:?}",
            request.kind
        )));
    }
    if !API_VERSIONS.contains(&request.api_version.as_str()) {
        return Err(ProviderError::ApiVersion(request.api_version));
    }
    let target = Target::parse(&request.image)?;
    let client = daemon_socket(vars, config).connect().await?;
    let answer = client.lookup(&target).await?;
    let mut auth = BTreeMap::new();
    match answer.auth_type.enum_value_or_default() {
        AuthType::CREDENTIALS => {
            for key in auth_keys(&request.image, &target) {
                let config = AuthConfig {
                    username: answer.username.clone(),
                    password: answer.secret.clone(),
                };
                auth.insert(key, config);
            }
        }
        AuthType::NONE => {}
        other => {
            tracing::warn!(image = %request.image, auth_type = ?other, "kubelet's provider API carries only username and password; not passing this credential")
        }
    }
    let response = Response {
        api_version: request.api_version,
        kind: "CredentialProviderResponse",
        cache_key_type: "Image",
        cache_duration: CACHE_DURATION,
        auth,
    };
    Ok(serde_json::to_string(&response).expect("response serializes"))
}

/// The image without tag or digest, as written and in canonical form.
fn auth_keys(image: &str, target: &Target) -> Vec<String> {
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let name = match name[last_slash..].find(':') {
        Some(colon) => &name[..last_slash + colon],
        None => name,
    };
    let mut keys = vec![target.to_string()];
    if name != keys[0] {
        keys.push(name.to_string());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_keys_cover_the_written_and_canonical_spellings() {
        let keys = |image: &str| auth_keys(image, &Target::parse(image).unwrap());
        assert_eq!(
            keys("busybox:1.36"),
            ["docker.io/library/busybox", "busybox"]
        );
        assert_eq!(
            keys("docker.io/library/busybox"),
            ["docker.io/library/busybox"]
        );
        assert_eq!(
            keys("git.example.com:443/group/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            ["git.example.com/group/app", "git.example.com:443/group/app"]
        );
        assert_eq!(keys("localhost:5000/app:v1"), ["localhost:5000/app"]);
    }
}
