//! `docker-credential-credgate`: the docker credential helper protocol, answered from the
//! daemon. Any client that reads a docker config (docker, nerdctl, buildkit's client,
//! podman/buildah/skopeo, crane, oras) gets the keychain's answer through it.
//!
//! `get` accepts the server URL in every form clients send: `host`, `host:443`,
//! `https://host/`, `https://index.docker.io/v1/`, and `host/path/repo` (crane asks with the
//! repository first, so path-scoped credentials apply). `store` and `erase` are refused:
//! credentials are managed in credgate's config.

use std::collections::BTreeMap;
use std::ffi::OsString;

use serde::Serialize;

use super::{daemon_socket, ClientError};
use crate::api::AuthType;
use crate::identity::Target;
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
    let target = match Target::parse(server_url) {
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
        AuthType::HEADER => {
            return Reply::fail(
                format!("credgate holds a bearer registry token for {target}, which the docker credential helper protocol cannot carry"),
                1,
            )
        }
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
            let entries: BTreeMap<_, _> = response.entries.into_iter().collect();
            Reply::ok(serde_json::to_string(&entries).expect("list serializes") + "\n")
        }
        Err(e) => failure(e),
    }
}

fn failure(error: ClientError) -> Reply {
    let code = match error {
        ClientError::Invalid { .. } => 2,
        _ => 1,
    };
    Reply::fail(format!("credgate: {error}"), code)
}
