//! `docker-credential-credgate`: the docker credential helper protocol, answered from the
//! daemon. Any client that reads a docker config (docker, nerdctl, buildkit's client,
//! podman/buildah/skopeo, crane, oras) gets the keychain's answer through it.
//!
//! `get` accepts the server URL in every form clients send: `host`, `host:443`,
//! `https://host/`, `https://index.docker.io/v1/`, and `host/path/repo` (crane asks with the
//! repository first, so path-scoped credentials apply). Its input is a server URL, never an
//! image reference: `kind-registry:5000` is that registry, not Docker Hub's
//! `library/kind-registry`. A credential the protocol can't carry (a bearer registry token)
//! is answered as not found, which clients read as "anonymous".
//!
//! `list` names each credential under the key docker clients look it up by
//! (`https://index.docker.io/v1/` for Docker Hub), and only those `get` can give. `store` and
//! `erase` are refused: credentials are managed in credgate's config.

use std::collections::BTreeMap;
use std::ffi::OsString;

use serde::Serialize;

use super::{daemon_socket, ClientError};
use crate::api::{self, AuthType};
use crate::identity::{Scope, Target};
use crate::system::NESTED_HELPER_VAR;

/// docker's "not found" reply; clients treat it as a miss, not an error.
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// What one invocation printed and how it ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub stdout: String,
    /// 0 ok; 1 failed or not found (docker's protocol); 2 bad usage or input.
    pub code: u8,
}

impl Reply {
    fn ok(stdout: String) -> Self {
        Self { stdout, code: 0 }
    }
    /// Helpers print errors on stdout: docker's client shows stdout in its error message.
    fn fail(message: impl Into<String>, code: u8) -> Self {
        Self {
            stdout: message.into(),
            code,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HelperCredential<'a> {
    #[serde(rename = "ServerURL")]
    server_url: &'a str,
    username: &'a str,
    secret: &'a str,
}

/// Runs one helper action with `input` (stdin) in `vars` (the environment).
pub async fn run(action: Option<&str>, input: &str, vars: &[(OsString, OsString)]) -> Reply {
    if vars.iter().any(|(k, _)| k == NESTED_HELPER_VAR) {
        return Reply::fail(NOT_FOUND, 1);
    }
    match action {
        Some("get") => get(input.trim(), vars).await,
        Some("list") => list(vars).await,
        Some(action @ ("store" | "erase")) => Reply::fail(
            format!(
                "credgate does not {action} credentials: they are managed in credgate's config \
                 (see `credgate explain`); use another credsStore for `docker login`"
            ),
            1,
        ),
        Some("version") => Reply::ok(format!(
            "docker-credential-credgate (credgate) {}\n",
            crate::VERSION
        )),
        Some(other) => Reply::fail(
            format!("unknown action {other:?}; expected get, list, store, erase or version"),
            2,
        ),
        None => Reply::fail(
            "usage: docker-credential-credgate get|list|store|erase|version",
            2,
        ),
    }
}

async fn get(server_url: &str, vars: &[(OsString, OsString)]) -> Reply {
    if server_url.is_empty() {
        return Reply::fail("no credentials server URL", 2);
    }
    let target = match Target::parse_server_url(server_url) {
        Ok(target) => target,
        Err(e) => return Reply::fail(e.to_string(), 2),
    };
    let answer = match daemon_socket(vars, None).connect().await {
        Ok(client) => client.lookup(&target).await,
        Err(e) => Err(e),
    };
    let response = match answer {
        Ok(response) => response,
        Err(e) => return failure(e),
    };
    let username = match response.auth_type.enum_value_or_default() {
        AuthType::NONE => return Reply::fail(NOT_FOUND, 1),
        AuthType::CREDENTIALS => response.username.as_str(),
        // docker's convention for an identity token.
        AuthType::REFRESH => "<token>",
        // The protocol has no field for a bearer token; docker-credential-helpers' client
        // reads only this reply as "no credential", anything else as an error.
        AuthType::HEADER => return Reply::fail(NOT_FOUND, 1),
    };
    let credential = HelperCredential {
        server_url,
        username,
        secret: &response.secret,
    };
    Reply::ok(serde_json::to_string(&credential).expect("credential serializes") + "\n")
}

async fn list(vars: &[(OsString, OsString)]) -> Reply {
    let answer = match daemon_socket(vars, None).connect().await {
        Ok(client) => client.list().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(response) => {
            let entries = server_urls(&response.listed);
            Reply::ok(serde_json::to_string(&entries).expect("list serializes") + "\n")
        }
        Err(e) => failure(e),
    }
}

/// Server URL → username of every listed scope a `get` can answer, keyed as docker clients
/// look it up; globs (which no client asks for) and registry tokens are left out.
fn server_urls(listed: &[api::Listed]) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    for entry in listed {
        if entry.auth_type.enum_value_or_default() == AuthType::HEADER {
            continue;
        }
        let key = Scope::parse(&entry.scope)
            .ok()
            .and_then(|scope| scope.docker_config_key());
        if let Some(key) = key {
            entries.entry(key).or_insert_with(|| entry.username.clone());
        }
    }
    entries
}

fn failure(error: ClientError) -> Reply {
    let code = match error {
        ClientError::Invalid { .. } => 2,
        _ => 1,
    };
    Reply::fail(format!("credgate: {error}"), code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(scope: &str, username: &str, auth_type: AuthType) -> api::Listed {
        api::Listed {
            scope: scope.to_string(),
            username: username.to_string(),
            auth_type: auth_type.into(),
            ..Default::default()
        }
    }

    #[test]
    fn list_names_docker_hub_as_docker_clients_look_it_up() {
        let entries = server_urls(&[
            listed("docker.io", "hub", AuthType::REFRESH),
            listed("git.example.com/group", "deploy", AuthType::CREDENTIALS),
            listed("kind-registry:5000", "", AuthType::NONE),
        ]);
        let expected: BTreeMap<String, String> = [
            ("https://index.docker.io/v1/", "hub"),
            ("git.example.com/group", "deploy"),
            ("kind-registry:5000", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(entries, expected);
    }

    #[test]
    fn list_never_advertises_what_get_cannot_give() {
        let entries = server_urls(&[
            listed("bearer.test", "", AuthType::HEADER),
            listed("*.example.com", "u", AuthType::CREDENTIALS),
            listed("not a scope", "u", AuthType::CREDENTIALS),
        ]);
        assert!(entries.is_empty(), "{entries:?}");
    }

    #[tokio::test]
    async fn bad_server_urls_are_refused_before_the_daemon_is_asked() {
        let vars = [(
            std::ffi::OsString::from("CREDGATE_SOCKET"),
            std::ffi::OsString::from("/nonexistent/credgate.sock"),
        )];
        let reply = run(Some("get"), "Not A Host!", &vars).await;
        assert_eq!(reply.code, 2, "{}", reply.stdout);
        assert!(
            reply.stdout.contains("invalid server URL"),
            "{}",
            reply.stdout
        );
        let reply = run(Some("get"), "kind-registry:5000", &vars).await;
        assert_eq!(reply.code, 1);
        assert!(reply.stdout.contains("not reachable"), "{}", reply.stdout);
    }
}
