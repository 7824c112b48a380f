//! The parts of the harness that need no node: the clients and the registry are installed and
//! run, the test CA's certificates pass (and fail) real TLS verification, and the files the
//! harness writes and reads have the shapes the real programs use.

use std::process::Command;

use credgate_integration::clients::{Client, DockerConfig};
use credgate_integration::https::{client_config, server_config};
use credgate_integration::pki::TestCa;
use credgate_integration::registry::AccessLogEntry;
use rustls::pki_types::ServerName;
use serde_json::json;

#[test]
fn the_clients_and_the_registry_are_installed_and_run() {
    let registry = credgate_integration::tool("docker-registry");
    let checks = [
        (Client::Crane.program(), "version"),
        (Client::Oras.program(), "version"),
        (Client::Skopeo.program(), "--version"),
        (registry, "--version"),
    ];
    for (program, arg) in checks {
        let output = Command::new(&program).arg(arg).output().expect("run");
        assert!(
            output.status.success(),
            "{} {arg}: {output:?}",
            program.display()
        );
    }
}

/// A TLS handshake over an in-memory pipe: the server presents a certificate from `issuer`
/// for `certified_for`; the client trusts only `trusted` and dials `dialled`.
async fn handshake(
    issuer: &TestCa,
    certified_for: &str,
    trusted: &TestCa,
    dialled: &str,
) -> Result<(), String> {
    let server = tokio_rustls::TlsAcceptor::from(server_config(&issuer.issue(&[certified_for])));
    let client = tokio_rustls::TlsConnector::from(client_config(trusted.cert_pem()));
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(dialled.to_string()).expect("name");
    let server = tokio::spawn(async move { server.accept(server_io).await.map(drop) });
    let result = client.connect(name, client_io).await.map(drop);
    let _ = server.await;
    result.map_err(|e| e.to_string())
}

#[tokio::test]
async fn leaf_certificates_verify_for_their_names_under_their_ca_only() {
    let ca = TestCa::generate();
    handshake(&ca, "registry.test", &ca, "registry.test")
        .await
        .expect("valid name");
    let wrong_name = handshake(&ca, "registry.test", &ca, "auth.test").await;
    assert!(
        wrong_name.is_err(),
        "a certificate for another name was accepted"
    );
    let stranger = TestCa::generate();
    let wrong_ca = handshake(&stranger, "registry.test", &ca, "registry.test").await;
    assert!(
        wrong_ca.is_err(),
        "a certificate from another CA was accepted"
    );
}

#[test]
fn docker_config_has_the_shape_docker_writes() {
    let config = DockerConfig::new()
        .auth("registry.test", "deploy", "pw")
        .identity_token("registry.test:443", "deploy", "idt")
        .cred_helper("registry.test", "credgate")
        .creds_store("pass");
    assert_eq!(
        config.to_json(),
        json!({
            "auths": {
                "registry.test": {"auth": "ZGVwbG95OnB3"},
                "registry.test:443": {"auth": "ZGVwbG95Og==", "identitytoken": "idt"},
            },
            "credHelpers": {"registry.test": "credgate"},
            "credsStore": "pass",
        })
    );
}

#[test]
fn access_log_lines_parse() {
    let line = r#"127.0.0.1 - - [23/Nov/2026:16:41:37 +0000] "HEAD /v2/group/sub/app/blobs/uploads/x?_state=a%3D HTTP/2.0" 202 0 "" "go-containerregistry""#;
    let entry = AccessLogEntry::parse(line).expect("parses");
    assert_eq!(entry.method, "HEAD");
    assert_eq!(
        entry.path_without_query(),
        "/v2/group/sub/app/blobs/uploads/x"
    );
    assert_eq!(entry.status, 202);
    assert_eq!(entry.user_agent, "go-containerregistry");
}
