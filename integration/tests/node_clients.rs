//! Real clients get credgate's answer through `docker-credential-credgate`: crane, oras and
//! skopeo pull a private image under a sub-path from a GitLab-like token registry with only
//! `credHelpers` pointing at credgate, under both `host/…` and `host:443/…`; the same client
//! with an empty docker config fails against the same image, so the credential can only
//! have come from credgate. A node test (integration/test-all.sh runs it in a namespace).

use credgate_integration::clients::{Client, ClientEnv, DockerConfig};
use credgate_integration::daemon::CredgateDaemon;
use credgate_integration::gitlab::{self, DEPLOY_PW};
use credgate_integration::images::push_image;
use credgate_integration::registry::{Registry, RegistryAuth};
use credgate_integration::token_server::Grant;

const REPO: &str = "group/sub/app";

/// credgate holds only a path-scoped deploy token, as a GitLab operator would configure it.
fn credgate() -> CredgateDaemon {
    CredgateDaemon::start(&format!(
        "[[registry]]\nmatch = \"registry.test/group/sub\"\nusername = \"deploy\"\npassword = \"{DEPLOY_PW}\"\n"
    ))
}

fn only_cred_helpers(host: &str) -> DockerConfig {
    DockerConfig::new()
        .cred_helper(host, "credgate")
        .cred_helper(&format!("{host}:443"), "credgate")
}

#[test]
fn crane_oras_and_skopeo_pull_through_credgate_and_fail_without_it() {
    let (tokens, registry) = gitlab::start();
    let image = push_image("registry.test", REPO, "v1", "deploy", DEPLOY_PW);
    let daemon = credgate();
    let with_credgate = daemon.client_env(&only_cred_helpers("registry.test"));
    let without = ClientEnv::new(&DockerConfig::new());
    let spellings = [
        image.reference.clone(),
        image
            .reference
            .replace("registry.test/", "registry.test:443/"),
    ];
    for client in Client::ALL {
        for reference in &spellings {
            tokens.clear_requests();
            with_credgate.pull(client, reference).assert_success();
            let asked = tokens.requests();
            assert!(
                asked.iter().any(|r| r.grant == Grant::Basic
                    && r.user.as_deref() == Some("deploy")
                    && r.status == 200),
                "{client:?} {reference} did not authenticate as deploy: {asked:#?}"
            );

            tokens.clear_requests();
            let refused = without.pull(client, reference);
            refused.assert_failure();
            let asked = tokens.requests();
            assert!(
                asked
                    .iter()
                    .any(|r| r.grant == Grant::Anonymous && r.status == 403),
                "{client:?} {reference} without credgate: {refused}\n{asked:#?}"
            );
        }
    }
    let manifest = format!("/v2/{REPO}/manifests/v1");
    assert!(
        registry.served("GET", &manifest, 200),
        "{}",
        registry.access_log()
    );
    let log = daemon.log();
    assert!(log.contains("the path-scoped one is used"), "{log}");
    assert!(
        !log.contains(DEPLOY_PW),
        "the daemon logged the secret:\n{log}"
    );
}

#[test]
fn a_basic_auth_registry_is_served_through_credgate_too() {
    let _registry = Registry::start(
        RegistryAuth::basic(&[("alice", "alice-pw-77")]),
        "basic.test",
    );
    let image = push_image("basic.test", "team/app", "v1", "alice", "alice-pw-77");
    let daemon = CredgateDaemon::start(
        "[[registry]]\nmatch = \"basic.test\"\nusername = \"alice\"\npassword = \"alice-pw-77\"\n",
    );
    let env = daemon.client_env(&only_cred_helpers("basic.test"));
    for client in Client::ALL {
        env.pull(client, &image.reference).assert_success();
    }
    ClientEnv::new(&DockerConfig::new())
        .pull(Client::Crane, &image.reference)
        .assert_failure();
}
