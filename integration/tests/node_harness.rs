//! The node harness against real parts: distribution registries with Basic and token auth,
//! the GitLab-like token server, and crane, oras and skopeo pulling with direct credentials.
//! A node test: integration/test-all.sh runs it inside a private mount and network namespace.

use std::os::unix::fs::PermissionsExt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use credgate_integration::clients::{Client, ClientEnv, DockerConfig};
use credgate_integration::daemon::CredgateDaemon;
use credgate_integration::gitlab::{self, DEPLOY_IDENTITY_TOKEN, DEPLOY_PW, OTHER_PW};
use credgate_integration::https::{self, ClientRequest};
use credgate_integration::images::push_image;
use credgate_integration::registry::{Registry, RegistryAuth};
use credgate_integration::token_server::Grant;
use serde_json::json;

const REPO: &str = "group/sub/app";

#[test]
fn basic_registry_lets_the_right_user_push_and_pull() {
    let registry = Registry::start(RegistryAuth::basic(&[("alice", "alice-pw")]), "basic.test");
    let image = push_image("basic.test", "team/app", "v1", "alice", "alice-pw");

    let alice = ClientEnv::new(&DockerConfig::new().auth("basic.test", "alice", "alice-pw"));
    alice.pull(Client::Crane, &image.reference).assert_success();
    let manifest = alice.manifest(Client::Crane, &image.by_digest());
    manifest.assert_success();

    let wrong = ClientEnv::new(&DockerConfig::new().auth("basic.test", "alice", "nope"));
    let refused = wrong.manifest(Client::Crane, &image.reference);
    refused.assert_failure();
    assert!(
        refused.combined().contains("401") || refused.combined().contains("UNAUTHORIZED"),
        "{refused}"
    );

    let manifest = "/v2/team/app/manifests/v1";
    let log = registry.access_log();
    assert!(registry.served("GET", manifest, 200), "access log:\n{log}");
    assert!(registry.served("GET", manifest, 401), "access log:\n{log}");
}

#[test]
fn token_registry_serves_deploy_to_every_client_under_both_host_spellings() {
    let (tokens, registry) = gitlab::start();
    let image = push_image("registry.test", REPO, "v1", "deploy", DEPLOY_PW);
    let pushes = tokens.requests();
    assert!(
        pushes
            .iter()
            .any(|r| r.user.as_deref() == Some("deploy")
                && r.granted.iter().any(|g| g.contains("push"))),
        "{pushes:#?}"
    );

    let config = DockerConfig::new()
        .auth("registry.test", "deploy", DEPLOY_PW)
        .auth("registry.test:443", "deploy", DEPLOY_PW);
    let deploy = ClientEnv::new(&config);
    for client in Client::ALL {
        for reference in [
            image.reference.clone(),
            image
                .reference
                .replace("registry.test/", "registry.test:443/"),
        ] {
            tokens.clear_requests();
            deploy.pull(client, &reference).assert_success();
            let asked = tokens.requests();
            assert!(
                asked.iter().any(|r| r.grant == Grant::Basic
                    && r.user.as_deref() == Some("deploy")
                    && r.status == 200),
                "{client:?} {reference}: {asked:#?}"
            );
        }
    }
    let manifest = format!("/v2/{REPO}/manifests/v1");
    let agents: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r.path == manifest && r.status == 200)
        .map(|r| r.user_agent)
        .collect();
    for agent in ["go-containerregistry", "oras/", "skopeo/"] {
        assert!(
            agents.iter().any(|a| a.starts_with(agent)),
            "{agent} missing from {agents:?}"
        );
    }
}

#[test]
fn token_registry_accepts_identity_tokens_from_every_client() {
    let (tokens, _registry) = gitlab::start();
    let image = push_image("registry.test", REPO, "idt", "deploy", DEPLOY_PW);
    let env = ClientEnv::new(&DockerConfig::new().identity_token(
        "registry.test",
        "deploy",
        DEPLOY_IDENTITY_TOKEN,
    ));
    for client in Client::ALL {
        tokens.clear_requests();
        env.manifest(client, &image.reference).assert_success();
        let asked = tokens.requests();
        assert!(
            asked
                .iter()
                .any(|r| r.grant == Grant::RefreshToken && r.user.as_deref() == Some("deploy")),
            "{client:?}: {asked:#?}"
        );
    }
}

#[test]
fn token_registry_refuses_anonymous_with_403_and_other_users() {
    let (tokens, registry) = gitlab::start();
    let image = push_image("registry.test", REPO, "v1", "deploy", DEPLOY_PW);

    let anonymous = ClientEnv::new(&DockerConfig::new());
    for client in Client::ALL {
        tokens.clear_requests();
        let refused = anonymous.manifest(client, &image.reference);
        refused.assert_failure();
        let asked = tokens.requests();
        assert!(
            asked
                .iter()
                .any(|r| r.grant == Grant::Anonymous && r.status == 403),
            "{client:?}: {refused}\n{asked:#?}"
        );
    }

    let other = ClientEnv::new(&DockerConfig::new().auth("registry.test", "other", OTHER_PW));
    for client in Client::ALL {
        tokens.clear_requests();
        let refused = other.manifest(client, &image.reference);
        refused.assert_failure();
        let asked = tokens.requests();
        assert!(
            asked
                .iter()
                .any(|r| r.user.as_deref() == Some("other") && r.granted.is_empty()),
            "{client:?}: {refused}\n{asked:#?}"
        );
    }

    let wrong = ClientEnv::new(&DockerConfig::new().auth("registry.test", "deploy", "nope"));
    tokens.clear_requests();
    wrong
        .manifest(Client::Crane, &image.reference)
        .assert_failure();
    assert!(
        tokens.requests().iter().any(|r| r.status == 401),
        "{:#?}",
        tokens.requests()
    );
    let manifest = format!("/v2/{REPO}/manifests/v1");
    let log = registry.access_log();
    assert!(registry.served("GET", &manifest, 401), "access log:\n{log}");
    assert!(
        !registry.served("GET", &manifest, 200),
        "access log:\n{log}"
    );
}

/// A credential helper that logs what it is asked and answers with `deploy`'s password
/// (`$SPY_SECRET`).
const SPY_HELPER: &str = r#"#!/bin/sh
read -r server
echo "$1 $server" >> "$SPY_LOG"
printf '{"ServerURL":"%s","Username":"deploy","Secret":"%s"}\n' "$server" "$SPY_SECRET"
"#;

#[test]
fn credential_helpers_in_the_docker_config_run_from_the_env_bin_dir() {
    let (_tokens, _registry) = gitlab::start();
    let image = push_image("registry.test", REPO, "helper", "deploy", DEPLOY_PW);
    let config = DockerConfig::new()
        .cred_helper("registry.test", "spy")
        .cred_helper("registry.test:443", "spy");
    let mut env = ClientEnv::new(&config);
    let script = env.scratch().join("spy.sh");
    std::fs::write(&script, SPY_HELPER).expect("write helper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    env.link_credential_helper("spy", &script);
    let log = env.scratch().join("spy.log");
    env.set_env("SPY_LOG", &log);
    env.set_env("SPY_SECRET", DEPLOY_PW);

    // Each client asks the helper for the host exactly as the reference spells it.
    let port_443 = image
        .reference
        .replace("registry.test/", "registry.test:443/");
    for (reference, asked) in [
        (&image.reference, "get registry.test"),
        (&port_443, "get registry.test:443"),
    ] {
        for client in Client::ALL {
            let _ = std::fs::remove_file(&log);
            env.manifest(client, reference).assert_success();
            let calls = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                calls.lines().all(|l| l == asked) && !calls.is_empty(),
                "{client:?} {reference}: {calls}"
            );
        }
    }
}

/// The token server's contract, asked directly: what distribution and the clients rely on.
#[test]
fn token_server_answers_as_gitlab_does() {
    let tokens = gitlab::token_server();
    let realm = "/jwt/auth?service=container_registry";
    let basic = |user: &str, password: &str| {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    };
    let ask = |scope: &str, authorization: Option<String>| {
        let path = format!(
            "{realm}&scope={}",
            scope.replace('/', "%2F").replace(':', "%3A")
        );
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        https::get("auth.test", &path, &headers).expect("token request")
    };
    let pull_push = "repository:group/sub/app:pull,push";

    let granted = ask(pull_push, Some(basic("deploy", DEPLOY_PW)));
    assert_eq!(granted.status, 200, "{}", granted.text());
    let claims = token_claims(&granted.text());
    assert_eq!(claims["aud"], json!("container_registry"));
    assert_eq!(claims["sub"], json!("deploy"));
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "group/sub/app", "actions": ["pull", "push"]}])
    );

    assert_eq!(ask(pull_push, Some(basic("deploy", "nope"))).status, 401);
    assert_eq!(ask(pull_push, None).status, 403);
    let sibling = ask(
        "repository:group/subway/app:pull",
        Some(basic("deploy", DEPLOY_PW)),
    );
    assert_eq!(token_claims(&sibling.text())["access"], json!([]));
    let other = ask(pull_push, Some(basic("other", OTHER_PW)));
    assert_eq!(token_claims(&other.text())["access"], json!([]));

    let post = |fields: &[(&str, &str)]| {
        https::request(ClientRequest::post_form("auth.test", "/jwt/auth", fields)).expect("POST")
    };
    let common = [
        ("service", "container_registry"),
        ("scope", "repository:group/sub/app:pull"),
    ];
    let refreshed = post(
        &[
            &common[..],
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", DEPLOY_IDENTITY_TOKEN),
            ],
        ]
        .concat(),
    );
    assert_eq!(token_claims(&refreshed.text())["sub"], json!("deploy"));
    let password = post(
        &[
            &common[..],
            &[
                ("grant_type", "password"),
                ("username", "deploy"),
                ("password", DEPLOY_PW),
            ],
        ]
        .concat(),
    );
    assert_eq!(token_claims(&password.text())["sub"], json!("deploy"));
    assert_eq!(
        post(
            &[
                &common[..],
                &[("grant_type", "refresh_token"), ("refresh_token", "stale")]
            ]
            .concat()
        )
        .status,
        401
    );

    let grants: Vec<(Grant, u16)> = tokens
        .requests()
        .into_iter()
        .map(|r| (r.grant, r.status))
        .collect();
    assert_eq!(
        grants,
        [
            (Grant::Basic, 200),
            (Grant::Basic, 401),
            (Grant::Anonymous, 403),
            (Grant::Basic, 200),
            (Grant::Basic, 200),
            (Grant::RefreshToken, 200),
            (Grant::Password, 200),
            (Grant::RefreshToken, 401),
        ]
    );
}

/// Checks a token response's shape and the JWT's header and signature form; returns its claims.
fn token_claims(response: &str) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(response).expect("token JSON");
    assert_eq!(body["token"], body["access_token"], "{body}");
    assert!(body["expires_in"].is_u64(), "{body}");
    humantime::parse_rfc3339(body["issued_at"].as_str().expect("issued_at")).expect("RFC 3339");
    let token = body["token"].as_str().expect("token");
    let parts: Vec<Vec<u8>> = token
        .split('.')
        .map(|p| URL_SAFE_NO_PAD.decode(p).expect("base64url"))
        .collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value = serde_json::from_slice(&parts[0]).expect("header");
    assert_eq!(header["alg"], json!("ES256"));
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));
    assert_eq!(parts[2].len(), 64, "ES256 signatures are r||s, 64 bytes");
    serde_json::from_slice(&parts[1]).expect("claims")
}

#[test]
fn open_registries_and_public_repositories_need_no_credentials() {
    let open = Registry::start(RegistryAuth::Anonymous, "open.test");
    let image = push_image("open.test", "library/app", "v1", "anyone", "anything");
    let anonymous = ClientEnv::new(&DockerConfig::new());
    for client in Client::ALL {
        anonymous.pull(client, &image.reference).assert_success();
    }
    assert!(open.served("GET", "/v2/library/app/manifests/v1", 200));

    let (tokens, _registry) = gitlab::start();
    let public = push_image("registry.test", "public/app", "v1", "deploy", DEPLOY_PW);
    for client in Client::ALL {
        tokens.clear_requests();
        anonymous.pull(client, &public.reference).assert_success();
        let asked = tokens.requests();
        assert!(
            asked
                .iter()
                .all(|r| r.grant == Grant::Anonymous && r.status == 200),
            "{client:?}: {asked:#?}"
        );
    }
}

/// The plumbing the credgate tests stand on: a daemon, and clients that reach it through
/// `docker-credential-credgate` named in their docker config.
#[test]
fn clients_reach_a_credgate_daemon_through_its_credential_helper() {
    let (tokens, _registry) = gitlab::start();
    let image = push_image("registry.test", REPO, "credgate", "deploy", DEPLOY_PW);
    let daemon = CredgateDaemon::start(&format!(
        "[[registry]]\nmatch = \"registry.test\"\nusername = \"deploy\"\npassword = \"{DEPLOY_PW}\"\n",
    ));
    let env = daemon.client_env(&DockerConfig::new().cred_helper("registry.test", "credgate"));
    for client in Client::ALL {
        tokens.clear_requests();
        let pulled = env.manifest(client, &image.reference);
        assert!(pulled.success(), "{pulled}\ndaemon log:\n{}", daemon.log());
        let asked = tokens.requests();
        assert!(
            asked
                .iter()
                .any(|r| r.user.as_deref() == Some("deploy") && r.status == 200),
            "{client:?}: {asked:#?}"
        );
    }
}
