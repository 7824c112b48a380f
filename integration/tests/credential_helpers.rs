//! credgate against real docker credential helpers: Debian's `docker-credential-pass` over a
//! throwaway gpg key and password store, and shell scripts that hang or misbehave.
//!
//! Every helper runs with an environment built here; the test process's own is never
//! changed, and nothing is skipped: a missing program fails the test with the package to
//! install.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use credgate::config::{DockerConfigEntry, Location};
use credgate::identity::Target;
use credgate::sources::docker_config::DockerConfigSource;
use credgate::sources::exec_helper::{CredentialHelper, HelperRuns};
use credgate::sources::{Credential, Source};
use credgate::system::System;
use credgate_integration::pass_store::{PassStore, SYSTEM_PATH};

/// Writing an executable while another test thread forks can make its exec fail with
/// ETXTBSY, so the tests here, which all write or run programs, take turns.
static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// A helper as credgate runs it: through its own [`HelperRuns`] (no answers shared).
fn helper(name: &str, system: &System, timeout: Duration) -> CredentialHelper {
    CredentialHelper::new(
        name,
        system,
        &HelperRuns::new(system.clock.clone(), timeout),
    )
}

/// Writes a docker config as root keeps one (owned by root, not writable by others: credgate
/// refuses anything looser) and reads it as a source.
fn docker_config(dir: &Path, name: &str, json: &str, system: System) -> DockerConfigSource {
    let path = dir.join(name);
    std::fs::write(&path, json).expect("write docker config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let entry = DockerConfigEntry {
        path,
        location: Location {
            path: PathBuf::from("credential_helpers.rs"),
            line: 0,
        },
    };
    let runs = HelperRuns::new(system.clock.clone(), HELPER_TIMEOUT);
    DockerConfigSource::new(&entry, system, &runs)
}

/// The credential the source's first offer yields for `target`.
async fn lookup(source: &DockerConfigSource, target: &str) -> Option<Credential> {
    let target = Target::parse(target).expect("target");
    let offers = source.offers(&target).await.expect("offers");
    assert_eq!(offers.len(), 1, "{offers:?}");
    offers[0].fetch().await.expect("fetch")
}

#[tokio::test]
async fn pass_serves_docker_configs_through_store_and_helper() {
    let _turn = TAKE_TURNS.lock().await;
    let pass = PassStore::create();
    pass.store("git.example.com:443", "deploy", "glpat-test-secret");
    let dir = pass.dir();

    let store = docker_config(dir, "store.json", r#"{"credsStore":"pass"}"#, pass.system());
    let credential = lookup(&store, "git.example.com/group/sub/app").await;
    let credential = credential.expect("credsStore serves the :443 credential for the bare host");
    assert_eq!(credential.username, "deploy");
    assert_eq!(credential.secret.expose(), "glpat-test-secret");

    let helpers = r#"{"credHelpers":{"git.example.com:443":"pass"}}"#;
    let helpers = docker_config(dir, "helpers.json", helpers, pass.system());
    let credential = lookup(&helpers, "git.example.com/group/sub/app").await;
    assert_eq!(
        credential
            .expect("credHelpers serves the bare host")
            .secret
            .expose(),
        "glpat-test-secret"
    );

    assert!(lookup(&store, "unknown.example.com/app").await.is_none());
    let helper = helper("pass", &pass.system(), HELPER_TIMEOUT);
    assert!(helper
        .get("unknown.example.com")
        .await
        .expect("a miss")
        .is_none());
}

/// Writes an executable shell script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn plain_system() -> System {
    System::real([(OsString::from("PATH"), OsString::from(SYSTEM_PATH))])
}

/// Dead means gone from /proc, or a zombie nobody reaped (PID 1 in a container may not).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
    }
}

fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).expect("the helper wrote its pid");
    text.trim().parse().expect("a pid")
}

#[tokio::test]
async fn a_hanging_helper_is_killed_with_its_children() {
    let _turn = TAKE_TURNS.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let shell_pid = dir.path().join("shell.pid");
    let child_pid = dir.path().join("child.pid");
    let body = format!(
        "echo $$ > {}\nsleep 600 &\necho $! > {}\nsleep 600\n",
        shell_pid.display(),
        child_pid.display()
    );
    let program = script(dir.path(), "docker-credential-hang", &body);
    let timeout = Duration::from_secs(1);
    let helper = helper(program.to_str().expect("utf-8"), &plain_system(), timeout);

    let started = Instant::now();
    let error = helper
        .get("r.test")
        .await
        .expect_err("a timeout")
        .to_string();
    let elapsed = started.elapsed();

    assert!(
        elapsed < timeout + Duration::from_secs(2),
        "took {elapsed:?}"
    );
    assert_eq!(
        error,
        format!(
            "{} did not answer within 1s and was killed",
            program.display()
        )
    );
    let pids = [read_pid(&shell_pid), read_pid(&child_pid)];
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.iter().all(|&pid| is_dead(pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in pids {
        assert!(
            is_dead(pid),
            "pid {pid} of the helper's process group still runs"
        );
    }
}

#[tokio::test]
async fn garbage_from_a_helper_is_not_echoed() {
    let _turn = TAKE_TURNS.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = "Username: deploy Secret: hunter2-garbage-secret";
    let program = script(
        dir.path(),
        "docker-credential-garbage",
        &format!("printf '%s' '{garbage}'\n"),
    );
    let helper = helper(
        program.to_str().expect("utf-8"),
        &plain_system(),
        HELPER_TIMEOUT,
    );

    let error = helper
        .get("r.test")
        .await
        .expect_err("not JSON")
        .to_string();

    assert_eq!(
        error,
        format!(
            "{} get printed {} bytes that are not credential JSON",
            program.display(),
            garbage.len()
        )
    );
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn helper_failures_tell_the_exit_code_and_the_size_of_stdout_only() {
    let _turn = TAKE_TURNS.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let program = script(
        dir.path(),
        "docker-credential-locked",
        "echo 'store is locked'\nexit 4\n",
    );
    let helper = helper(
        program.to_str().expect("utf-8"),
        &plain_system(),
        HELPER_TIMEOUT,
    );

    let error = helper.list().await.expect_err("a failure").to_string();

    assert_eq!(
        error,
        format!(
            "{} list failed with exit code 4 and printed 16 bytes on stdout, not JSON \
             (not shown: it may hold a secret)",
            program.display()
        )
    );
}

#[tokio::test]
async fn a_failing_helper_that_prints_its_credential_does_not_leak_it() {
    let _turn = TAKE_TURNS.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let reply = r#"{"ServerURL":"r.test","Username":"u","Secret":"s3cret"}"#;
    let program = script(
        dir.path(),
        "docker-credential-leaky",
        &format!("echo '{reply}'\nexit 1\n"),
    );
    let helper = helper(
        program.to_str().expect("utf-8"),
        &plain_system(),
        HELPER_TIMEOUT,
    );

    let error = helper
        .get("r.test")
        .await
        .expect_err("a failure")
        .to_string();

    assert_eq!(
        error,
        format!(
            "{} get failed with exit code 1 and printed {} bytes of JSON on stdout \
             (not shown: it may hold a secret)",
            program.display(),
            reply.len() + 1
        )
    );
    assert!(!error.contains("s3cret"), "{error}");
}

#[tokio::test]
async fn helpers_see_only_the_environment_they_are_given() {
    let _turn = TAKE_TURNS.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let seen = dir.path().join("env");
    let body = format!(
        "env > {}\necho '{{\"Username\":\"u\",\"Secret\":\"s\"}}'\n",
        seen.display()
    );
    let program = script(dir.path(), "docker-credential-env", &body);
    let system = System::real([
        (OsString::from("PATH"), OsString::from(SYSTEM_PATH)),
        (OsString::from("HOME"), dir.path().as_os_str().to_owned()),
        (OsString::from("CREDGATE_NOT_PASSED"), OsString::from("x")),
    ]);
    let helper = helper(program.to_str().expect("utf-8"), &system, HELPER_TIMEOUT);

    assert!(helper.get("r.test").await.expect("a hit").is_some());

    let env = std::fs::read_to_string(&seen).expect("the helper wrote its env");
    assert!(
        env.contains(&format!("HOME={}\n", dir.path().display())),
        "{env}"
    );
    // Cargo gives this test process CARGO_* variables; none may reach the helper.
    for unexpected in ["CARGO", "CREDGATE_NOT_PASSED"] {
        assert!(!env.contains(unexpected), "{unexpected} leaked:\n{env}");
    }
}

#[tokio::test]
async fn a_missing_helper_names_the_path_searched() {
    let _turn = TAKE_TURNS.lock().await;
    let helper = helper("credgate-test-absent", &plain_system(), HELPER_TIMEOUT);

    let error = helper
        .get("r.test")
        .await
        .expect_err("not found")
        .to_string();

    assert_eq!(
        error,
        format!("docker-credential-credgate-test-absent not found on PATH ({SYSTEM_PATH})")
    );
}
