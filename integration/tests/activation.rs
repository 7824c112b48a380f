//! `credgate serve` under systemd's socket-activation protocol, driven by systemd's own
//! `systemd-socket-activate` (package systemd): it binds the sockets, waits for the first
//! connection, then starts credgate with them (LISTEN_FDS). A connection made before credgate
//! runs is answered, the socket file is systemd's to keep, and a socket the config does not
//! name stops serve with a one-line error (exit 2). The same under real systemd, with the
//! shipped credgate.socket: integration/vm/tests.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use credgate_integration::process::{read_lossy, spawn_logged, ChildGuard};
use credgate_integration::{credgate_binary, require_program};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// Writes a config with `socket` and `mirror` in `dir`.
fn config(dir: &Path, mirror: SocketAddr) -> std::path::PathBuf {
    let text = format!(
        "[listen]\nsocket = {:?}\nmirror = \"{mirror}\"\nmetrics = \"127.0.0.1:0\"\nmirror_secret_file = {:?}\n",
        dir.join("credgate.sock").display().to_string(),
        dir.join("mirror-secret").display().to_string()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `systemd-socket-activate -l <each> credgate --config CONFIG serve`, once the sockets exist.
fn activate(dir: &Path, listen: &[String], config: &Path) -> ChildGuard {
    let activate = require_program("systemd-socket-activate", "systemd");
    let mut command = Command::new(activate);
    for address in listen {
        command.args(["-l", address]);
    }
    command
        .args(["-E", "CREDGATE_LOG=info", "--"])
        .arg(credgate_binary())
        .arg("--config")
        .arg(config)
        .arg("serve");
    let child = spawn_logged(
        &mut command,
        &dir.join("serve.log"),
        "systemd-socket-activate",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_lossy(&dir.join("serve.log")).contains("Listening on") {
        assert!(
            Instant::now() < deadline,
            "{}",
            read_lossy(&dir.join("serve.log"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// An HTTP request on a fresh connection, and the status line of the answer.
fn status_line(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_connection_made_before_credgate_runs_is_served_on_systemds_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = free_port();
    let config = config(dir.path(), mirror);
    let socket = dir.path().join("credgate.sock");
    let mut child = activate(
        dir.path(),
        &[socket.display().to_string(), mirror.to_string()],
        &config,
    );
    // credgate is not running yet: this connection starts it and waits for its answer.
    let answer = status_line(mirror);
    assert!(
        answer.starts_with("HTTP/1.1 "),
        "{answer:?}\n{}",
        read_lossy(&dir.path().join("serve.log"))
    );
    let log = read_lossy(&dir.path().join("serve.log"));
    assert!(
        log.contains("socket activation")
            && log.contains("socket=true")
            && log.contains("mirror=true"),
        "{log}"
    );

    // The Credentials API answers on systemd's unix socket, whose mode credgate set.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{log}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use credgate::api::{CredentialsClient, StatusRequest};
        let address = format!("unix://{}", socket.display());
        let client =
            CredentialsClient::new(ttrpc::r#async::Client::connect(&address).await.unwrap());
        let ctx = ttrpc::context::with_timeout(5_000_000_000);
        let status = client.status(ctx, &StatusRequest::default()).await.unwrap();
        assert_eq!(status.version, credgate::VERSION);
    });

    // A clean stop leaves systemd's socket file in place for the next start.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (status, timed_out) = child.wait_until(Instant::now() + Duration::from_secs(30));
    assert!(
        !timed_out && status.success(),
        "{status:?}\n{}",
        read_lossy(&dir.path().join("serve.log"))
    );
    let kept = std::fs::symlink_metadata(&socket).unwrap();
    assert!(kept.file_type().is_socket());
}

#[test]
fn a_socket_the_config_does_not_name_stops_serve_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let configured = free_port();
    let passed = free_port();
    let config = config(dir.path(), configured);
    let mut child = activate(dir.path(), &[passed.to_string()], &config);
    // The connection starts credgate, which refuses the socket and exits; it is never answered.
    let answer = status_line(passed);
    assert_eq!(answer, "", "answered on a socket the config does not name");
    let (status, timed_out) = child.wait_until(Instant::now() + Duration::from_secs(30));
    let log = read_lossy(&dir.path().join("serve.log"));
    assert!(!timed_out, "{log}");
    assert_eq!(status.code(), Some(2), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("credgate: "))
        .unwrap_or_else(|| panic!("no error line: {log}"));
    assert!(
        line.contains(&passed.to_string())
            && line.contains(&format!("listen.mirror = {configured}")),
        "{line}"
    );
}
