//! `credgate serve` with its ttrpc socket, driven through the real thin clients:
//! `docker-credential-credgate` (the same binary under that name) and `credgate
//! kubelet-provider`, plus a raw ttrpc client for Status and Explain.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "daemon-secret-Xy72";
const HUB_TOKEN: &str = "hub-identity-token-Qp3";

/// A running `credgate serve` in a world-traversable temp dir (other uids must reach it).
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn start(config_body: &str) -> Self {
        Self::start_with_fd_limit(config_body, None)
    }

    /// Starts the daemon with its open-file limit set to `nofile` (as `ulimit -n`), if given.
    fn start_with_fd_limit(config_body: &str, nofile: Option<u64>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("credgate-daemon")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run/credgate.sock");
        let config = format!(
            "[listen]\nsocket = \"{}\"\n{}{config_body}",
            socket.display(),
            credgate_integration::daemon::private_listeners(dir.path())
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A copy, not a link to the build tree: other uids run it, and a checkout under a
        // private directory (`mktemp -d`, mode 0700) is not theirs to reach.
        std::fs::copy(
            credgate_integration::credgate_binary(),
            dir.path().join("docker-credential-credgate"),
        )
        .unwrap();
        let mut command = Command::new(credgate_integration::credgate_binary());
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("CREDGATE_CONFIG")
            .env("CREDGATE_LOG", "trace")
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap());
        if let Some(nofile) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    use nix::sys::resource::{setrlimit, Resource};
                    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(std::io::Error::from)
                });
            }
        }
        let child = command.spawn().unwrap();
        let daemon = Self { dir, child };
        daemon.wait_for_log("serving the Credentials API");
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/credgate.sock")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(self.dir.path().join("serve.log"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the daemon log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many files the daemon has open.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// The daemon's open files once the count has not changed for 300 ms (at most 10 s).
    fn settled_open_fds(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.open_fds();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.open_fds();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Starts `sleep` as `uid` holding `n` connections to the socket (made before it execs), or
    /// None when they are not all made within `within` (a daemon that stopped accepting).
    fn hold_connections_as(&self, uid: u32, n: usize, within: Duration) -> Option<Child> {
        let socket = self.socket();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut command = Command::new("sleep");
            command.arg("60").uid(uid).gid(uid).stdin(Stdio::null());
            // SAFETY: after fork only socket, connect and fcntl run: no allocation, no lock.
            unsafe {
                command.pre_exec(move || {
                    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
                    use std::os::fd::IntoRawFd;
                    for _ in 0..n {
                        let fd = std::os::unix::net::UnixStream::connect(&socket)?.into_raw_fd();
                        // Kept across exec, so `sleep` holds it.
                        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
                    }
                    Ok(())
                });
            }
            let _ = tx.send(command.spawn());
        });
        rx.recv_timeout(within).ok().map(|spawned| spawned.unwrap())
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Runs the helper as `docker-credential-credgate ACTION` with `input` on stdin.
    fn helper(&self, action: &str, input: &str) -> Output {
        self.helper_as(action, input, None)
    }

    fn helper_as(&self, action: &str, input: &str, uid: Option<u32>) -> Output {
        let mut command = Command::new(self.dir.path().join("docker-credential-credgate"));
        command
            .arg(action)
            .env_clear()
            .env("CREDGATE_SOCKET", self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        run_with_stdin(command, input)
    }

    fn kubelet_provider(&self, input: &str) -> Output {
        let mut command = Command::new(credgate_integration::credgate_binary());
        command
            .arg("kubelet-provider")
            .env_clear()
            .env("CREDGATE_SOCKET", self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_stdin(command, input)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_with_stdin(mut command: Command, input: &str) -> Output {
    let mut child = command.spawn().unwrap();
    let written = child.stdin.take().unwrap().write_all(input.as_bytes());
    // A process may answer without reading all of its input; its reply is what counts.
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config() -> String {
    format!(
        "allowed_uids = [0, 4242]\n\n\
         [[registry]]\nmatch = \"git.example.com\"\nusername = \"deploy\"\npassword = \"{SECRET}\"\n\n\
         [[registry]]\nmatch = \"docker.io\"\nusername = \"hub\"\nidentity_token = \"{HUB_TOKEN}\"\n\n\
         [[registry]]\nmatch = \"bearer.test\"\nregistry_token = \"bearer-{SECRET}\"\n"
    )
}

fn credential(server_url: &str, username: &str, secret: &str) -> String {
    format!(
        "{{\"ServerURL\":\"{server_url}\",\"Username\":\"{username}\",\"Secret\":\"{secret}\"}}\n"
    )
}

#[test]
fn helper_get_answers_every_form_buildkit_and_nerdctl_send() {
    let daemon = Daemon::start(&config());
    for server_url in [
        "git.example.com",
        "git.example.com:443",
        "https://git.example.com",
        "git.example.com/group/sub/app",
    ] {
        let out = daemon.helper("get", server_url);
        assert!(out.status.success(), "{server_url}: {}", stdout(&out));
        assert_eq!(
            stdout(&out),
            credential(server_url, "deploy", SECRET),
            "{server_url}"
        );
    }
    let out = daemon.helper("get", "https://index.docker.io/v1/");
    assert_eq!(
        stdout(&out),
        credential("https://index.docker.io/v1/", "<token>", HUB_TOKEN)
    );
    let out = daemon.helper("get", "other.test");
    assert_eq!(
        (stdout(&out).trim(), out.status.code()),
        ("credentials not found in native keychain", Some(1))
    );
    // A bearer token can't be carried by the protocol: docker's "not found" (anonymous), as
    // docker-credential-helpers' client reads only that reply as "no credential".
    let out = daemon.helper("get", "bearer.test");
    assert_eq!(
        (stdout(&out).trim(), out.status.code()),
        ("credentials not found in native keychain", Some(1))
    );
    // A server URL is never an image reference: `name:port` is that registry, not Docker Hub.
    for server_url in [
        "kind-registry:5000",
        "myreg:5000",
        "localhost:5000",
        "myreg",
    ] {
        let out = daemon.helper("get", server_url);
        assert_eq!(
            (stdout(&out).trim(), out.status.code()),
            ("credentials not found in native keychain", Some(1)),
            "{server_url} got another registry's credential"
        );
    }
    assert!(
        !daemon.log().contains(SECRET) && !daemon.log().contains(HUB_TOKEN),
        "secret in the daemon log"
    );
}

#[test]
fn helper_list_store_and_erase() {
    let daemon = Daemon::start(&config());
    let out = daemon.helper("list", "");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Keyed as docker clients look them up; the bearer token, which `get` can't give, is not
    // listed.
    assert_eq!(
        listed,
        serde_json::json!({"git.example.com": "deploy", "https://index.docker.io/v1/": "hub"})
    );
    for action in ["store", "erase"] {
        let out = daemon.helper(
            action,
            r#"{"ServerURL":"x.test","Username":"u","Secret":"s"}"#,
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stdout(&out).contains("managed in credgate's config"),
            "{}",
            stdout(&out)
        );
    }
    let out = daemon.helper("get", "Not A Host!");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_socket_is_0600_for_root_only_and_refuses_other_uids() {
    let daemon = Daemon::start(&config());
    let allowed = daemon.helper_as("get", "git.example.com", Some(4242));
    assert_eq!(
        stdout(&allowed),
        credential("git.example.com", "deploy", SECRET)
    );
    let refused = daemon.helper_as("get", "git.example.com", Some(4243));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stdout(&refused).contains("refused this caller"),
        "{}",
        stdout(&refused)
    );
    assert!(!stdout(&refused).contains(SECRET));
    daemon.wait_for_log("refused a caller whose uid is not in allowed_uids uid=4243");

    let root_only =
        Daemon::start("[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npassword = \"p\"\n");
    let mode = std::fs::metadata(root_only.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_broken_reload_keeps_the_old_config_serving_and_a_good_one_applies() {
    let daemon = Daemon::start(&config());
    std::fs::write(
        daemon.config_path(),
        "[[registry]]\nmatch = \"https://broken\"\n",
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("reload failed; still serving the previous config");
    let out = daemon.helper("get", "git.example.com");
    assert_eq!(
        stdout(&out),
        credential("git.example.com", "deploy", SECRET)
    );

    let socket = daemon.socket();
    let next = format!(
        "[listen]\nsocket = \"{}\"\n[[registry]]\nmatch = \"git.example.com\"\nusername = \"rotated\"\npassword = \"new\"\n",
        socket.display()
    );
    std::fs::write(daemon.config_path(), next).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("config reloaded");
    let out = daemon.helper("get", "git.example.com");
    assert_eq!(
        stdout(&out),
        credential("git.example.com", "rotated", "new")
    );
}

#[test]
fn a_stopped_daemon_makes_the_helper_fail_fast_and_say_so() {
    let mut daemon = Daemon::start(&config());
    daemon.signal("TERM");
    assert!(daemon.child.wait().unwrap().success());
    daemon.wait_for_log("credgate stopped");
    assert!(!daemon.socket().exists(), "the socket was left behind");
    let started = Instant::now();
    let out = daemon.helper("get", "git.example.com");
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("credgate daemon is not reachable") && text.contains("credgate serve"),
        "{text}"
    );
    // The issue's bound: a dead daemon must never stall a pull.
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[test]
fn a_stale_socket_is_replaced_and_a_foreign_file_is_not() {
    let first = Daemon::start(&config());
    let socket = first.socket();
    let config_path = first.config_path();
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(socket.exists(), "a killed daemon leaves its socket");
    let out = Command::new(credgate_integration::credgate_binary())
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("CREDGATE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second = Daemon {
        dir: tempfile::tempdir().unwrap(),
        child: out,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the stale socket was not replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(second);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credgate.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[listen]\nsocket = \"{}\"\n", file.display()),
    )
    .unwrap();
    let out = Command::new(credgate_integration::credgate_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
}

#[test]
fn kubelet_provider_answers_from_the_daemon() {
    let daemon = Daemon::start(&config());
    let request = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"git.example.com:443/group/sub/app:v1"}"#;
    let out = daemon.kubelet_provider(request);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["kind"], "CredentialProviderResponse");
    assert_eq!(
        response["apiVersion"],
        "credentialprovider.kubelet.k8s.io/v1"
    );
    assert_eq!(response["cacheKeyType"], "Image");
    for key in [
        "git.example.com/group/sub/app",
        "git.example.com:443/group/sub/app",
    ] {
        assert_eq!(response["auth"][key]["username"], "deploy", "{response}");
        assert_eq!(response["auth"][key]["password"], SECRET);
    }
    let out = daemon.kubelet_provider("{not json");
    assert_eq!(out.status.code(), Some(2));
    let anonymous = daemon.kubelet_provider(&request.replace("git.example.com:443", "other.test"));
    let response: serde_json::Value = serde_json::from_slice(&anonymous.stdout).unwrap();
    assert_eq!(response["auth"], serde_json::json!({}));
}

#[test]
fn status_and_explain_over_ttrpc() {
    use credgate::api::{CredentialsClient, ExplainRequest, StatusRequest};
    let daemon = Daemon::start(&config());
    daemon.helper("get", "git.example.com");
    daemon.helper("get", "other.test");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let address = format!("unix://{}", daemon.socket().display());
        let client = CredentialsClient::new(ttrpc::r#async::Client::connect(&address).await.unwrap());
        let ctx = || ttrpc::context::with_timeout(5_000_000_000);
        let status = client.status(ctx(), &StatusRequest::default()).await.unwrap();
        assert_eq!(status.version, credgate::VERSION);
        assert_eq!(status.counters["lookups"], 2);
        assert_eq!(status.counters["hits"], 1);
        assert_eq!(status.counters["anonymous"], 1);
        assert_eq!(status.sources.len(), 3);
        assert!(status.sources.iter().all(|s| s.healthy));
        let request = ExplainRequest { host: "git.example.com:443".into(), repository: "group/app".into(), ..Default::default() };
        let explained = client.explain(ctx(), &request).await.unwrap();
        assert_eq!(explained.winner, 0);
        assert_eq!(explained.candidates[0].username, "deploy");
        assert!(!format!("{explained:?}").contains(SECRET));
        let bad = ExplainRequest { host: "bad host".into(), ..Default::default() };
        let err = client.explain(ctx(), &bad).await.unwrap_err();
        assert!(matches!(err, ttrpc::Error::RpcStatus(ref s) if s.code() == ttrpc::Code::INVALID_ARGUMENT), "{err:?}");
    });
}

#[test]
fn a_refused_uid_holding_hundreds_of_connections_neither_starves_allowed_callers_nor_floods_the_log(
) {
    // The finding's node: `ulimit -n 300`, the socket open to others, uid 65534 not allowed.
    let daemon = Daemon::start_with_fd_limit(&config(), Some(300));
    let before = daemon.open_fds();
    let holder = daemon.hold_connections_as(65534, 400, Duration::from_secs(20));
    let mut holder = holder.expect("the daemon stopped accepting connections");
    let held = daemon.settled_open_fds().saturating_sub(before);
    assert!(
        held <= 40,
        "the daemon holds {held} more files for the refused uid"
    );
    for uid in [None, Some(4242)] {
        let out = daemon.helper_as("get", "git.example.com", uid);
        assert_eq!(
            stdout(&out),
            credential("git.example.com", "deploy", SECRET),
            "an allowed caller ({uid:?}) was starved"
        );
    }
    let log = daemon.log();
    let lines = log.lines().filter(|l| l.contains("uid=65534")).count();
    assert!(lines <= 2, "{lines} log lines for one refused uid:\n{log}");
    assert!(!log.contains("accept failed"), "{log}");
    let _ = holder.kill();
    let _ = holder.wait();
}

/// `serve --install-hosts` (the DaemonSet's container) writes hosts.toml as `install
/// --hosts-only` does, so it refuses what that refuses before it opens anything: a node where
/// `credgate install` itself set config_path. Without `--containerd-config` it is a usage error.
#[test]
fn serve_install_hosts_refuses_a_node_install_before_serving() {
    use credgate_integration::process::run_bounded;
    let dir = tempfile::tempdir().unwrap();
    let hosts_dir = dir.path().join("certs.d");
    let containerd_config = dir.path().join("containerd.toml");
    std::fs::write(&containerd_config, "version = 2\n").unwrap();
    let socket = dir.path().join("credgate.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nsocket = {:?}\n{}\n[containerd]\nhosts_dir = {:?}\n",
            socket.display().to_string(),
            credgate_integration::daemon::private_listeners(dir.path()),
            hosts_dir.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let credgate = |args: &[&std::ffi::OsStr]| {
        let mut command = Command::new(credgate_integration::credgate_binary());
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("CREDGATE_CONFIG");
        run_bounded(&mut command, dir.path(), Duration::from_secs(30))
    };

    let usage = credgate(&["serve".as_ref(), "--install-hosts".as_ref()]);
    assert_eq!(usage.status.code(), Some(2), "{usage}");
    assert!(usage.stderr.contains("--containerd-config"), "{usage}");

    credgate(&[
        "install".as_ref(),
        "--containerd-config".as_ref(),
        containerd_config.as_os_str(),
        "--hosts-dir".as_ref(),
        hosts_dir.as_os_str(),
    ])
    .assert_success();
    let hosts_toml = hosts_dir.join("_default/hosts.toml");
    let installed = std::fs::read(&hosts_toml).unwrap();
    let refused = credgate(&[
        "serve".as_ref(),
        "--containerd-config".as_ref(),
        containerd_config.as_os_str(),
        "--install-hosts".as_ref(),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    let error = refused
        .stderr
        .lines()
        .find(|line| line.contains("--install-hosts"))
        .unwrap_or_else(|| panic!("no --install-hosts error: {refused}"));
    assert!(
        error.contains(".credgate-install.json") && error.contains("credgate uninstall"),
        "{error}"
    );
    assert!(!socket.exists(), "serve opened its socket");
    assert_eq!(std::fs::read(&hosts_toml).unwrap(), installed);
}
