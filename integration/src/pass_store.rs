//! A throwaway gpg key and `pass` store for the real `docker-credential-pass` (Debian's
//! golang-docker-credential-helpers), shared by the helper tests and the benchmark.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use credgate::system::System;
use tempfile::TempDir;

/// The PATH the pass programs are found on and run with.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The programs the pass tests run, with the Debian package that ships each.
const PASS_PROGRAMS: &[(&str, &str)] = &[
    ("gpg", "gnupg"),
    ("gpgconf", "gnupg"),
    ("pass", "pass"),
    ("docker-credential-pass", "golang-docker-credential-helpers"),
];

pub fn require_pass_programs() {
    let missing: Vec<String> = PASS_PROGRAMS
        .iter()
        .filter(|(program, _)| find_on_path(program).is_none())
        .map(|(program, package)| format!("{program} (Debian package {package})"))
        .collect();
    assert!(
        missing.is_empty(),
        "not on PATH ({SYSTEM_PATH}): {}; install them with \
         `apt-get install -y -t bookworm golang-docker-credential-helpers pass gnupg`",
        missing.join(", ")
    );
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(SYSTEM_PATH)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A gpg key and a `pass` store in a temporary directory, and the environment to reach them.
pub struct PassStore {
    env: Vec<(OsString, OsString)>,
    dir: TempDir,
}

impl PassStore {
    pub fn create() -> Self {
        require_pass_programs();
        let dir = tempfile::tempdir().expect("temp dir");
        let gnupg = dir.path().join("gnupg");
        let home = dir.path().join("home");
        std::fs::create_dir(&gnupg).expect("GNUPGHOME");
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::create_dir(&home).expect("HOME");
        let env = vec![
            ("PATH".into(), SYSTEM_PATH.into()),
            ("HOME".into(), home.into_os_string()),
            ("GNUPGHOME".into(), gnupg.into_os_string()),
            (
                "PASSWORD_STORE_DIR".into(),
                dir.path().join("store").into_os_string(),
            ),
        ];
        let store = Self { env, dir };
        store.init();
        store
    }

    /// A passphrase-less key (ed25519 + cv25519: instant, unlike RSA), and `pass init`.
    fn init(&self) {
        self.run(
            "gpg",
            &["--batch", "--passphrase", "", "--quick-gen-key"],
            &[
                "credgate test <test@credgate.invalid>",
                "future-default",
                "default",
                "never",
            ],
            None,
        );
        let keys = self.run(
            "gpg",
            &["--batch", "--with-colons", "--list-secret-keys"],
            &[],
            None,
        );
        let fingerprint = keys
            .lines()
            .find_map(|line| line.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').find(|field| !field.is_empty()))
            .unwrap_or_else(|| panic!("no fingerprint in gpg's key list:\n{keys}"));
        self.run("pass", &["init"], &[fingerprint], None);
    }

    /// Stores a credential with the real helper, as `docker login` would.
    pub fn store(&self, server_url: &str, username: &str, secret: &str) {
        let json = format!(
            r#"{{"ServerURL":"{server_url}","Username":"{username}","Secret":"{secret}"}}"#
        );
        self.run(
            "docker-credential-pass",
            &["store"],
            &[],
            Some(json.as_bytes()),
        );
    }

    /// The environment `docker-credential-pass` needs to reach this store.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        self.env.clone()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn system(&self) -> System {
        System::real(self.env.clone())
    }

    pub fn run(&self, program: &str, args: &[&str], more: &[&str], stdin: Option<&[u8]>) -> String {
        let mut child = Command::new(program)
            .args(args)
            .args(more)
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut input = child.stdin.take().expect("stdin is piped");
        input.write_all(stdin.unwrap_or_default()).expect("stdin");
        drop(input);
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        // gpg started an agent for this GNUPGHOME; it must not outlive the test.
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env_clear()
            .envs(self.env.iter().cloned())
            .status();
    }
}
