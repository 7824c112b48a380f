//! The standing attack suite's tools (`tests/node_attacks.rs`): what an attacker on or near a
//! node can do that the other harness modules never need, and the report the suite writes.
//!
//! - [`Attack`] records one row of the attack report (attack | what credgate answered |
//!   nothing leaked, nothing lost) when its test ends, pass or fail, and checks that no
//!   configured secret reached the daemon's log.
//! - [`add_address`], [`DialRecorder`] and [`resolver`] make the node's network hostile:
//!   extra loopback addresses (10.x, 192.0.0.8, NAT64 and 6to4 forms) with listeners that
//!   count every connection credgate makes to them, and a DNS server whose answers the test
//!   chooses, changing between queries for DNS rebinding.
//! - [`HostileTokens`] sits in front of a real token server and rewrites fields of its
//!   answers (`expires_in: 1e20`, a broken `issued_at`).
//! - [`IdleConnections`], [`RawServe`] and [`ConnectedCaller`] are the local attackers:
//!   thousands of idle connections, a second `credgate serve`, a caller that stays connected
//!   across a reload.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tempfile::TempDir;

use crate::clients::DockerConfig;
use crate::daemon::{CredgateDaemon, MIRROR_SECRET};
use crate::https::{self, response, ClientRequest, HttpRequest, HttpsServer};
use crate::images::sha256;
use crate::mirror;
use crate::node::node;
use crate::process::{
    read_lossy, run_bounded, spawn_logged, ChildGuard, CommandOutput, DAEMON_PATH,
};
use crate::registry::RegistryAuth;
use crate::token_server::TokenServer;

/// Where the report goes when set; else `$CARGO_TARGET_DIR/attack-report.md`, else
/// `attack-report.md` in the target dir holding this test binary.
pub const REPORT_VAR: &str = "CREDGATE_ATTACK_REPORT";
const REPORT_HEADER: &str = "| attack | what credgate answered | nothing leaked, nothing lost |";
const REPORT_RULE: &str = "|---|---|---|";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

/// One attack's row in the report, written when the value is dropped: at the end of a test
/// that passed, or while a failed one unwinds (then marked FAILED, with what was seen so far).
pub struct Attack {
    name: String,
    answered: Vec<String>,
    kept: Vec<String>,
}

impl Attack {
    /// `name` is the test's name (the attack).
    pub fn begin(name: &str) -> Attack {
        node();
        Attack {
            name: name.to_string(),
            answered: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Adds to "what credgate answered".
    pub fn answered(&mut self, what: impl Into<String>) {
        self.answered.push(what.into());
    }

    /// Adds to "nothing leaked, nothing lost".
    pub fn kept(&mut self, what: impl Into<String>) {
        self.kept.push(what.into());
    }

    /// Panics if the daemon's log holds the mirror secret or any of `secrets`.
    #[track_caller]
    pub fn assert_log_clean(&mut self, daemon: &CredgateDaemon, secrets: &[&str]) {
        self.assert_text_clean("the daemon log", &daemon.log(), secrets);
    }

    /// Panics if `text` holds the mirror secret or any of `secrets`; `what` names the text.
    #[track_caller]
    pub fn assert_text_clean(&mut self, what: &str, text: &str, secrets: &[&str]) {
        for secret in secrets.iter().chain([&MIRROR_SECRET]) {
            assert!(
                secret.is_empty() || !text.contains(secret),
                "{}: a configured secret appeared in {what}",
                self.name
            );
        }
        let line = format!("no secret in {what}");
        if !self.kept.contains(&line) {
            self.kept.push(line);
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let mut answered = self.answered.join("; ");
        let mut kept = self.kept.join("; ");
        if failed {
            answered = format!("**FAILED** (see the test output) — {answered}");
            kept = format!("not shown: {kept}");
        }
        let row = format!(
            "| `{}` | {} | {} |",
            self.name,
            cell(&answered),
            cell(&kept)
        );
        write_row(&self.name, &row);
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The report file (see [`REPORT_VAR`]).
pub fn report_path() -> PathBuf {
    if let Some(path) = std::env::var_os(REPORT_VAR) {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&dir).join("attack-report.md");
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("current exe");
    let target = exe.ancestors().nth(3).unwrap_or(Path::new("."));
    target.join("attack-report.md")
}

/// Replaces `name`'s row (rows from earlier runs stay) and rewrites the file sorted.
fn write_row(name: &str, row: &str) {
    static WRITING: Mutex<()> = Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let path = report_path();
    let prefix = format!("| `{name}` |");
    let mut rows: Vec<String> = read_lossy(&path)
        .lines()
        .filter(|line| line.starts_with("| `") && !line.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    rows.push(row.to_string());
    rows.sort();
    let text = format!("{REPORT_HEADER}\n{REPORT_RULE}\n{}\n", rows.join("\n"));
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let temp = path.with_extension(format!("md.{}", std::process::id()));
    if std::fs::write(&temp, text).is_ok() {
        let _ = std::fs::rename(&temp, &path);
    }
}

/// The report as it stands, rows sorted (for printing at the end of a run).
pub fn report() -> String {
    read_lossy(&report_path())
}

// ---------------------------------------------------------------------------------------
// Running programs
// ---------------------------------------------------------------------------------------

fn unique() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

/// Runs `command` with `input` on stdin, bounded by `timeout`, output through files in
/// `scratch` (as [`run_bounded`], which gives programs an empty stdin).
pub fn run_with_stdin(
    command: &mut Command,
    input: &[u8],
    scratch: &Path,
    timeout: Duration,
) -> CommandOutput {
    let n = unique();
    let (in_path, out_path, err_path) = (
        scratch.join(format!("attack-in-{n}")),
        scratch.join(format!("attack-out-{n}")),
        scratch.join(format!("attack-err-{n}")),
    );
    std::fs::write(&in_path, input).expect("write stdin file");
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    let label = words.join(" ");
    command
        .stdin(std::fs::File::open(&in_path).expect("open stdin file"))
        .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
        .process_group(0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
    let (status, timed_out) = ChildGuard::new(child, &label).wait_until(Instant::now() + timeout);
    let output = CommandOutput {
        command: label,
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
        timed_out,
    };
    for path in [in_path, out_path, err_path] {
        let _ = std::fs::remove_file(path);
    }
    output
}

/// `printf <input> | docker-credential-credgate <action>` against `daemon`, as a client
/// runs it: the credgate binary under the helper's name, `CREDGATE_SOCKET` set, nothing else.
pub fn credential_helper(daemon: &CredgateDaemon, action: &str, input: &str) -> CommandOutput {
    let env = daemon.client_env(&DockerConfig::new());
    let mut command = Command::new(env.bin_dir().join("docker-credential-credgate"));
    command
        .arg(action)
        .env_clear()
        .env("PATH", DAEMON_PATH)
        .env("CREDGATE_SOCKET", daemon.socket());
    run_with_stdin(
        &mut command,
        input.as_bytes(),
        &env.scratch(),
        COMMAND_TIMEOUT,
    )
}

/// `credgate --config <config> <args>` with only the system PATH.
pub fn credgate_cli(config: &Path, args: &[&str]) -> CommandOutput {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut command = Command::new(crate::credgate_binary());
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_clear()
        .env("PATH", DAEMON_PATH);
    run_bounded(&mut command, scratch.path(), COMMAND_TIMEOUT)
}

/// Writes `text` to `path` with `mode` (root-owned, as the tests run as root).
pub fn write_file(path: &Path, text: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A file's permission bits.
pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A docker config at `<dir>/config.json`, mode 0600, root-owned: as `docker login` leaves it.
pub fn write_docker_config(dir: &Path, config: &DockerConfig) -> PathBuf {
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config.to_json()).expect("config JSON");
    write_file(&path, &text, 0o600);
    path
}

// ---------------------------------------------------------------------------------------
// The daemon as an attacker sees it
// ---------------------------------------------------------------------------------------

/// `GET path` on the endpoint with the secret; a connection that closes without an answer
/// (a panic in the daemon, say) is an error here, not a panic of the test.
fn endpoint_get(daemon: &CredgateDaemon, path: &str) -> Result<mirror::MirrorResponse, String> {
    let mirror = daemon.mirror;
    std::panic::catch_unwind(|| mirror::get(mirror, MIRROR_SECRET, path))
        .map_err(|_| format!("GET {path}: the connection closed without an answer"))
}

/// Fetches `repository:tag` and every blob it names through `daemon`'s endpoint from `ns`,
/// checking each digest; the number of blobs, or what went wrong.
pub fn pull_through(
    daemon: &CredgateDaemon,
    ns: &str,
    repository: &str,
    tag: &str,
) -> Result<usize, String> {
    let path = format!("/v2/{repository}/manifests/{tag}?ns={ns}");
    let manifest = endpoint_get(daemon, &path)?;
    let bytes = match (&manifest.body, manifest.status) {
        (Ok(bytes), 200) => bytes.clone(),
        (body, status) => {
            return Err(format!(
                "manifest {status}: {:?}",
                body.as_ref().map(|b| b.len())
            ))
        }
    };
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let mut digests = vec![json["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string()];
    for layer in json["layers"].as_array().into_iter().flatten() {
        digests.push(layer["digest"].as_str().unwrap_or_default().to_string());
    }
    for digest in &digests {
        let path = format!("/v2/{repository}/blobs/{digest}?ns={ns}");
        let blob = endpoint_get(daemon, &path)?;
        match (&blob.body, blob.status) {
            (Ok(bytes), 200) if sha256(bytes) == *digest => {}
            (Ok(_), 200) => return Err(format!("blob {digest}: wrong bytes")),
            (body, status) => {
                return Err(format!(
                    "blob {digest}: {status} {:?}",
                    body.as_ref().map(|b| b.len())
                ))
            }
        }
    }
    Ok(digests.len())
}

/// Panics unless the daemon's process is running (not a zombie) and `/healthz` answers 200.
#[track_caller]
pub fn assert_alive(daemon: &CredgateDaemon) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("gone");
    assert!(
        !matches!(state, "Z" | "X" | "gone"),
        "credgate serve is not running (state {state}):\n{}",
        daemon.log()
    );
    let health = mirror::send(daemon.metrics, "GET", "/healthz", None, &[]);
    assert_eq!(health.status, 200, "/healthz: {health:?}");
}

/// The sample lines of a metrics page: one per series.
pub fn series(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.rsplit_once(' ')
                .map_or(line, |(series, _)| series)
                .to_string()
        })
        .collect()
}

/// `VmRSS` of `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Sets `pid`'s soft limit on open files (`prlimit`), keeping its hard limit.
pub fn limit_open_files(pid: u32, soft: u64) {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let program = crate::require_program("prlimit", "util-linux");
    run_bounded(
        Command::new(program)
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={soft}:")),
        scratch.path(),
        COMMAND_TIMEOUT,
    )
    .assert_success();
}

/// Raises this process's soft (and if needed hard) limit on open files to at least `want`.
pub fn raise_own_open_files(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).expect("setrlimit NOFILE");
    }
}

// ---------------------------------------------------------------------------------------
// A hostile network
// ---------------------------------------------------------------------------------------

/// Tests that listen on the shared attack addresses take turns.
pub fn exclusive_addresses() -> MutexGuard<'static, ()> {
    static ADDRESSES: Mutex<()> = Mutex::new(());
    ADDRESSES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `ip` to the node's loopback interface (nothing outside the node's namespace sees it).
pub fn add_address(ip: IpAddr) {
    node();
    if ip.is_loopback() {
        return;
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut command = Command::new(crate::require_program("ip", "iproute2"));
    match ip {
        IpAddr::V4(_) => command.args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]),
        IpAddr::V6(_) => command.args([
            "-6",
            "addr",
            "add",
            &format!("{ip}/128"),
            "dev",
            "lo",
            "nodad",
        ]),
    };
    let output = run_bounded(&mut command, scratch.path(), COMMAND_TIMEOUT);
    assert!(
        output.success()
            || output.stderr.contains("exists")
            || output.stderr.contains("already assigned"),
        "cannot add {ip} to lo: {output}"
    );
}

/// Plain TCP listeners that count every connection made to them and close it at once: a
/// dial credgate must never make shows up here.
pub struct DialRecorder {
    listeners: Vec<(SocketAddr, Arc<AtomicUsize>)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DialRecorder {
    /// Listens on each of `addresses` (adding their IPs to lo first).
    pub fn listen(addresses: &[SocketAddr]) -> DialRecorder {
        for address in addresses {
            add_address(address.ip());
        }
        // Every socket is bound before any thread starts, so a failure leaks no listener.
        let bound: Vec<(SocketAddr, TcpListener)> = addresses
            .iter()
            .map(|&address| {
                let listener = TcpListener::bind(address)
                    .unwrap_or_else(|e| panic!("listen on {address}: {e}"));
                (address, listener)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut listeners = Vec::new();
        let mut threads = Vec::new();
        for (address, listener) in bound {
            let count = Arc::new(AtomicUsize::new(0));
            let (seen, stopping) = (count.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if stream.is_ok() {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
            listeners.push((address, count));
        }
        DialRecorder {
            listeners,
            stop,
            threads,
        }
    }

    /// Every address that received a connection, with how many.
    pub fn dialled(&self) -> Vec<(SocketAddr, usize)> {
        self.listeners
            .iter()
            .map(|(address, count)| (*address, count.load(Ordering::SeqCst)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn total(&self) -> usize {
        self.dialled().iter().map(|(_, n)| n).sum()
    }
}

impl Drop for DialRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (address, _) in &self.listeners {
            let _ = std::net::TcpStream::connect_timeout(address, Duration::from_secs(1));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The node's DNS server: names the tests map answer with the addresses given (TTL 0), in
/// turn when a sequence was given; every other name is NXDOMAIN. Set up once per process:
/// a UDP server on 127.0.0.1:53 and a resolv.conf naming it, bind-mounted over the node's.
pub struct Resolver {
    answers: Mutex<HashMap<String, Answers>>,
    queries: Mutex<HashMap<String, usize>>,
}

/// A name's answers in turn, and the index of the next one.
type Answers = (Vec<Vec<IpAddr>>, usize);

/// The node's [`Resolver`], started on first use. /etc/hosts still wins for its names.
pub fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<&'static Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        node();
        let resolver: &'static Resolver = Box::leak(Box::new(Resolver {
            answers: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
        }));
        let socket = UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53");
        std::thread::Builder::new()
            .name("attack dns".into())
            .spawn(move || resolver.serve(socket))
            .expect("spawn DNS thread");
        let dir = tempfile::tempdir().expect("resolv.conf dir").keep();
        let conf = dir.join("resolv.conf");
        std::fs::write(
            &conf,
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .expect("write resolv.conf");
        let scratch = tempfile::tempdir().expect("scratch dir");
        run_bounded(
            Command::new(crate::require_program("mount", "mount"))
                .arg("--bind")
                .arg(&conf)
                .arg("/etc/resolv.conf"),
            scratch.path(),
            COMMAND_TIMEOUT,
        )
        .assert_success();
        resolver
    })
}

impl Resolver {
    /// `name` resolves to `ips` from now on.
    pub fn answer(&self, name: &str, ips: &[IpAddr]) {
        self.answer_in_turn(name, vec![ips.to_vec()]);
    }

    /// Each A query for `name` gets the next of `sequence`; the last one repeats.
    pub fn answer_in_turn(&self, name: &str, sequence: Vec<Vec<IpAddr>>) {
        assert!(!sequence.is_empty());
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.insert(name.to_ascii_lowercase(), (sequence, 0));
    }

    /// How many A queries `name` got so far.
    pub fn queries(&self, name: &str) -> usize {
        let queries = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        queries
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    fn serve(&self, socket: UdpSocket) {
        let mut buffer = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buffer) else {
                continue;
            };
            if let Some(reply) = self.reply(&buffer[..n]) {
                let _ = socket.send_to(&reply, peer);
            }
        }
    }

    /// The answer to one query packet; `None` for anything that is not a plain question.
    fn reply(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let header = packet.get(..12)?;
        let mut position = 12;
        let mut labels = Vec::new();
        loop {
            let length = usize::from(*packet.get(position)?);
            position += 1;
            if length == 0 {
                break;
            }
            if length & 0xc0 != 0 {
                return None;
            }
            labels.push(
                String::from_utf8_lossy(packet.get(position..position + length)?)
                    .to_ascii_lowercase(),
            );
            position += length;
        }
        let qtype = u16::from_be_bytes([*packet.get(position)?, *packet.get(position + 1)?]);
        let question = packet.get(12..position + 4)?;
        let name = labels.join(".");
        let (found, ips) = self.lookup(&name, qtype);
        let mut reply = Vec::with_capacity(512);
        reply.extend_from_slice(&header[..2]);
        let recursion_desired = u16::from_be_bytes([header[2], header[3]]) & 0x0100;
        let rcode = if found { 0 } else { 3 };
        let flags: u16 = 0x8000 | 0x0400 | recursion_desired | 0x0080 | rcode;
        reply.extend_from_slice(&flags.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&(ips.len() as u16).to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]);
        reply.extend_from_slice(question);
        for ip in ips {
            reply.extend_from_slice(&[0xc0, 0x0c]);
            let (kind, data) = match ip {
                IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
                IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
            };
            reply.extend_from_slice(&kind.to_be_bytes());
            reply.extend_from_slice(&1u16.to_be_bytes());
            reply.extend_from_slice(&0u32.to_be_bytes());
            reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
            reply.extend_from_slice(&data);
        }
        Some(reply)
    }

    /// Whether the name is known, and its addresses of the asked type (A advances a sequence).
    fn lookup(&self, name: &str, qtype: u16) -> (bool, Vec<IpAddr>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let Some((sequence, next)) = answers.get_mut(name) else {
            return (false, Vec::new());
        };
        let current = sequence[(*next).min(sequence.len() - 1)].clone();
        if qtype == 1 {
            *next += 1;
            let mut queries = self.queries.lock().unwrap_or_else(|e| e.into_inner());
            *queries.entry(name.to_string()).or_default() += 1;
        }
        let wanted = current
            .into_iter()
            .filter(|ip| match qtype {
                1 => ip.is_ipv4(),
                28 => ip.is_ipv6(),
                _ => false,
            })
            .collect();
        (true, wanted)
    }
}

// ---------------------------------------------------------------------------------------
// A hostile token server
// ---------------------------------------------------------------------------------------

/// A token realm on `host:443` that forwards every request to a real [`TokenServer`] and
/// rewrites fields of its 200 answers with raw JSON the test sets (`"expires_in": 1e20`).
pub struct HostileTokens {
    server: HttpsServer,
    overrides: Arc<Mutex<Vec<(String, String)>>>,
    rewritten: Arc<AtomicUsize>,
}

impl HostileTokens {
    pub fn start(host: &str, upstream: &TokenServer) -> HostileTokens {
        let overrides: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let rewritten = Arc::new(AtomicUsize::new(0));
        let (fields, count) = (overrides.clone(), rewritten.clone());
        let upstream_host = upstream.host().to_string();
        let server = HttpsServer::start(host, move |request: HttpRequest| {
            let fields = fields.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let answer = forward(&upstream_host, request, &fields);
            if answer.0 == StatusCode::OK && !fields.is_empty() {
                count.fetch_add(1, Ordering::SeqCst);
            }
            async move { response(answer.0, "application/json", answer.1) }
        });
        HostileTokens {
            server,
            overrides,
            rewritten,
        }
    }

    /// From now on the field `name` of every token answer is `raw_json`.
    pub fn set(&self, name: &str, raw_json: &str) {
        let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        overrides.retain(|(field, _)| field != name);
        overrides.push((name.to_string(), raw_json.to_string()));
    }

    /// How many token answers were rewritten so far.
    pub fn rewritten(&self) -> usize {
        self.rewritten.load(Ordering::SeqCst)
    }

    pub fn host(&self) -> &str {
        self.server.host()
    }

    /// The `auth` of a registry whose challenge names this realm but which trusts `upstream`'s
    /// signatures.
    pub fn registry_auth(&self, upstream: &TokenServer) -> RegistryAuth {
        match upstream.registry_auth() {
            RegistryAuth::Token(mut token) => {
                token.realm = format!("{}/jwt/auth", self.server.url());
                RegistryAuth::Token(token)
            }
            other => other,
        }
    }
}

fn forward(
    upstream: &str,
    request: HttpRequest,
    overrides: &[(String, String)],
) -> (StatusCode, Bytes) {
    let path = request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut forwarded = ClientRequest {
        method: request.method.clone(),
        authority: upstream.to_string(),
        path,
        headers: Vec::new(),
        body: request.body.clone(),
    };
    for name in ["authorization", "content-type"] {
        if let Some(value) = request.headers.get(name).and_then(|v| v.to_str().ok()) {
            forwarded = forwarded.header(name, value);
        }
    }
    let Ok(answer) = https::request(forwarded) else {
        return (StatusCode::BAD_GATEWAY, Bytes::new());
    };
    if answer.status != StatusCode::OK || overrides.is_empty() {
        return (answer.status, answer.body);
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(&answer.body) else {
        return (answer.status, answer.body);
    };
    for (name, _) in overrides {
        fields.remove(name);
    }
    let kept = serde_json::Value::Object(fields).to_string();
    let mut text = kept.trim_end_matches('}').to_string();
    for (name, raw) in overrides {
        if !text.ends_with('{') {
            text.push(',');
        }
        text.push_str(&format!("{}:{raw}", serde_json::Value::from(name.as_str())));
    }
    text.push('}');
    (StatusCode::OK, Bytes::from(text))
}

// ---------------------------------------------------------------------------------------
// Local attackers
// ---------------------------------------------------------------------------------------

/// `count` idle connections to an address, each reopened a tenth of a second after the other side
/// drops it: an attacker holding them open, never sending a byte.
pub struct IdleConnections {
    runtime: Option<tokio::runtime::Runtime>,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
}

impl IdleConnections {
    pub fn hold(address: SocketAddr, count: usize) -> IdleConnections {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let open = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        for _ in 0..count {
            let (open, opened) = (open.clone(), opened.clone());
            runtime.spawn(async move {
                use tokio::io::AsyncReadExt;
                loop {
                    let connecting = tokio::net::TcpStream::connect(address);
                    if let Ok(Ok(mut stream)) =
                        tokio::time::timeout(Duration::from_secs(10), connecting).await
                    {
                        open.fetch_add(1, Ordering::SeqCst);
                        opened.fetch_add(1, Ordering::SeqCst);
                        let mut byte = [0u8; 1];
                        let _ = stream.read(&mut byte).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        IdleConnections {
            runtime: Some(runtime),
            open,
            opened,
        }
    }

    /// Waits (at most `limit`) until `count` are open at once; how many are open then.
    pub fn wait_open(&self, count: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        while self.open() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.open()
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections made in all, reopened ones included.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A `credgate serve` this module starts itself (the harness's daemon writes the mirror
/// secret before it starts; this one lets serve generate it).
pub struct RawServe {
    pub mirror: SocketAddr,
    socket: PathBuf,
    log: PathBuf,
    child: ChildGuard,
}

impl RawServe {
    /// Writes `<dir>/<name>.toml` naming `secret_file` and starts serve on it, without waiting.
    pub fn spawn(dir: &Path, name: &str, secret_file: &Path) -> RawServe {
        let (mirror, metrics) = (free_port(), free_port());
        let socket = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        write_file(
            &config,
            &format!(
                "[listen]\nsocket = {:?}\nmirror = \"{mirror}\"\nmetrics = \"{metrics}\"\nmirror_secret_file = {:?}\n",
                socket.display().to_string(),
                secret_file.display().to_string()
            ),
            0o600,
        );
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(crate::credgate_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", DAEMON_PATH)
            .env("CREDGATE_LOG", "debug");
        let child = spawn_logged(&mut command, &log, name);
        RawServe {
            mirror,
            socket,
            log,
            child,
        }
    }

    /// Waits until the socket exists and the endpoint accepts connections.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() || std::net::TcpStream::connect(self.mirror).is_err() {
            if let Some(status) = self.child.try_wait() {
                panic!("credgate serve exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "credgate serve not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

/// The environment variable that makes the suite's caller test act (see [`ConnectedCaller`]).
pub const CALLER_DIR_VAR: &str = "CREDGATE_ATTACK_CALLER_DIR";

/// A caller of the daemon's socket running as another uid that connects once, asks, waits
/// for the test's go-ahead and asks again on the same connection. It is this test binary
/// again, running only the (ignored) test that calls [`run_connected_caller`].
pub struct ConnectedCaller {
    dir: TempDir,
    child: ChildGuard,
}

impl ConnectedCaller {
    /// Starts `test` (the caller test's name) as `uid`, asking `socket` about `reference`.
    pub fn start(test: &str, uid: u32, socket: &Path, reference: &str) -> ConnectedCaller {
        let dir = tempfile::tempdir().expect("caller dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod caller dir");
        let exe = runnable_by_others(&std::env::current_exe().expect("current exe"), dir.path());
        let log = std::fs::File::create(dir.path().join("output")).expect("caller output");
        let child = Command::new(exe)
            .args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("PATH", DAEMON_PATH)
            .env(CALLER_DIR_VAR, dir.path())
            .env("CREDGATE_ATTACK_SOCKET", socket)
            .env("CREDGATE_ATTACK_REFERENCE", reference)
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the caller");
        ConnectedCaller {
            child: ChildGuard::new(child, "connected caller"),
            dir,
        }
    }

    /// The first answer (connected as the caller's uid).
    pub fn first_answer(&mut self) -> String {
        self.wait_for("first")
    }

    /// Lets the caller ask again on its connection; the answer.
    pub fn second_answer(&mut self) -> String {
        std::fs::write(self.dir.path().join("go"), "go").expect("write go");
        self.wait_for("second")
    }

    fn wait_for(&mut self, name: &str) -> String {
        let path = self.dir.path().join(name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            if let Some(status) = self.child.try_wait() {
                if !path.exists() {
                    panic!(
                        "the caller exited ({status}) before its {name} answer:\n{}",
                        read_lossy(&self.dir.path().join("output"))
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {name} answer from the caller"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        read_lossy(&path)
    }
}

/// `exe` when every other user may run it (each directory above it searchable, the file
/// readable and executable); else a copy in `dir` (a target dir under /root is not).
fn runnable_by_others(exe: &Path, dir: &Path) -> PathBuf {
    let open_to_others = |path: &Path, bits: u32| {
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & bits == bits)
    };
    let reachable = exe.ancestors().skip(1).all(|d| open_to_others(d, 0o001));
    if reachable && open_to_others(exe, 0o005) {
        return exe.to_path_buf();
    }
    let copy = dir.join("caller");
    std::fs::copy(exe, &copy).expect("copy the test binary for the caller");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// The caller's side of [`ConnectedCaller`]: does nothing unless [`CALLER_DIR_VAR`] is set.
/// Answers are written without their secret.
pub fn run_connected_caller() {
    let Some(dir) = std::env::var_os(CALLER_DIR_VAR).map(PathBuf::from) else {
        return;
    };
    let var = |name: &str| std::env::var_os(name).unwrap_or_default();
    let socket = PathBuf::from(var("CREDGATE_ATTACK_SOCKET"));
    let reference = var("CREDGATE_ATTACK_REFERENCE")
        .to_string_lossy()
        .into_owned();
    let target = credgate::identity::Target::parse(&reference).expect("a reference");
    let write = |name: &str, text: &str| {
        let temp = dir.join(format!("{name}.tmp"));
        let mut file = std::fs::File::create(&temp).expect("answer file");
        file.write_all(text.as_bytes()).expect("write answer");
        std::fs::rename(&temp, dir.join(name)).expect("rename answer");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = match credgate::clients::DaemonClient::connect(&socket).await {
            Ok(client) => client,
            Err(e) => {
                write("first", &format!("cannot connect: {e}"));
                return;
            }
        };
        let describe = |answer: Result<
            credgate::api::LookupResponse,
            credgate::clients::ClientError,
        >| match answer {
            Ok(r) => format!(
                "answered {:?} as {:?}",
                r.auth_type.enum_value_or_default(),
                r.username
            ),
            Err(e) => format!("refused: {e}"),
        };
        write("first", &describe(client.lookup(&target).await));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("go").exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        write("second", &describe(client.lookup(&target).await));
    });
}

// ---------------------------------------------------------------------------------------
// Images served from memory
// ---------------------------------------------------------------------------------------

/// An image's manifest and blobs, read from a real registry, to be served by a fake one.
#[derive(Clone, Debug)]
pub struct ImageContent {
    pub manifest: Bytes,
    pub media_type: String,
    pub digest: String,
    /// digest → bytes
    pub blobs: HashMap<String, Bytes>,
}

/// Reads `repository:tag` (manifest and blobs) from `host` anonymously over HTTPS.
pub fn read_image(host: &str, repository: &str, tag: &str) -> ImageContent {
    let accept = mirror::MANIFEST_ACCEPT;
    let manifest = https::get(
        host,
        &format!("/v2/{repository}/manifests/{tag}"),
        &[("accept", accept)],
    )
    .expect("manifest");
    assert_eq!(manifest.status, StatusCode::OK, "{}", manifest.text());
    let media_type = manifest
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    let json: serde_json::Value = serde_json::from_slice(&manifest.body).expect("manifest JSON");
    let mut digests = vec![json["config"]["digest"]
        .as_str()
        .expect("config")
        .to_string()];
    for layer in json["layers"].as_array().expect("layers") {
        digests.push(layer["digest"].as_str().expect("layer digest").to_string());
    }
    let blobs = digests
        .into_iter()
        .map(|digest| {
            let blob =
                https::get(host, &format!("/v2/{repository}/blobs/{digest}"), &[]).expect("blob");
            assert_eq!(blob.status, StatusCode::OK);
            (digest, blob.body)
        })
        .collect();
    ImageContent {
        digest: sha256(&manifest.body),
        manifest: manifest.body,
        media_type,
        blobs,
    }
}

/// Answers `/v2/`, and `repository`'s manifest (by `tag` or digest) and blobs from `image`
/// (GET and HEAD); `None` for any other path, for the caller to answer.
pub fn serve_image(
    image: &ImageContent,
    repository: &str,
    tag: &str,
    request: &HttpRequest,
) -> Option<https::HttpResponse> {
    let path = request.uri.path();
    let head = request.method == http::Method::HEAD;
    let with_body = |content_type: &str, body: Bytes, digest: &str| {
        let length = body.len();
        let mut r = response(
            StatusCode::OK,
            content_type,
            if head { Bytes::new() } else { body },
        );
        let headers = r.headers_mut();
        headers.insert(
            "docker-content-digest",
            digest.parse().expect("digest header"),
        );
        headers.insert(
            "content-length",
            length.to_string().parse().expect("length header"),
        );
        r
    };
    if path == "/v2/" {
        return Some(response(StatusCode::OK, "application/json", "{}"));
    }
    let manifests = format!("/v2/{repository}/manifests/");
    if let Some(reference) = path.strip_prefix(&manifests) {
        if reference == tag || reference == image.digest {
            return Some(with_body(
                &image.media_type,
                image.manifest.clone(),
                &image.digest,
            ));
        }
        return Some(response(StatusCode::NOT_FOUND, "application/json", "{}"));
    }
    let blobs = format!("/v2/{repository}/blobs/");
    if let Some(digest) = path.strip_prefix(&blobs) {
        return Some(match image.blobs.get(digest) {
            Some(bytes) => with_body("application/octet-stream", bytes.clone(), digest),
            None => response(StatusCode::NOT_FOUND, "application/json", "{}"),
        });
    }
    None
}
