//! `cargo build --release --bin credgate && cargo bench -p credgate-integration --bench credentials`
//!
//! Prints, side by side from one run on the release build:
//! - `Lookup` latency (p50, p99) and throughput over the ttrpc socket at concurrency 1 and 16,
//!   against the transport's floor: a bare ttrpc echo of the same service over the same kind
//!   of socket, answering a fixed response at once (no caller check, no keychain);
//! - `Lookup` at concurrency 1 with 10, 1,000 and 10,000 `[[registry]]` scopes in the keychain
//!   (the scope asked for last in the file);
//! - one `docker-credential-credgate get`, end to end, against `docker-credential-pass get`
//!   for the same credential and against a bare spawn of the same binary.
//!
//! Targets: Lookup p50 under 100 µs; Lookup within 2× of the echo at concurrency 1; at 10,000
//! scopes within 1.5× of 10 scopes; a helper call within 2× of a bare spawn. This prints
//! numbers, it asserts nothing: shared machines are too noisy for that.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate::api::{
    create_credentials, Credentials, CredentialsClient, LookupRequest, LookupResponse,
};
use credgate_integration::pass_store::PassStore;

const LOOKUPS: usize = 20_000;
/// Lookups per keychain size in the scaling rows.
const SCALING_LOOKUPS: usize = 5_000;
/// `[[registry]]` scopes in the scaling rows' keychains.
const SCOPES: [usize; 3] = [10, 1_000, 10_000];
const SPAWNS: usize = 100;
const SECRET: &str = "bench-secret";

fn main() {
    // The bench runs from target/release, so this is the release build of credgate.
    let bin = credgate_integration::credgate_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = start_daemon(&bin, dir.path(), 50);
    let socket = dir.path().join("credgate.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let echo_socket = dir.path().join("echo.sock");
    start_echo(&echo_socket);
    // Alternating, so drift on a shared machine touches both alike.
    let echo_one = runtime.block_on(lookups(&echo_socket, 1, LOOKUPS));
    let one = runtime.block_on(lookups(&socket, 1, LOOKUPS));
    let echo_sixteen = runtime.block_on(lookups(&echo_socket, 16, LOOKUPS));
    let sixteen = runtime.block_on(lookups(&socket, 16, LOOKUPS));
    let scaling: Vec<(usize, Run)> = SCOPES
        .iter()
        .map(|&scopes| {
            let scaled_dir = dir.path().join(format!("scopes-{scopes}"));
            std::fs::create_dir(&scaled_dir).expect("scaling dir");
            let mut scaled = start_daemon(&bin, &scaled_dir, scopes - 1);
            let run = runtime.block_on(lookups(
                &scaled_dir.join("credgate.sock"),
                1,
                SCALING_LOOKUPS,
            ));
            let _ = scaled.kill();
            let _ = scaled.wait();
            (scopes, run)
        })
        .collect();

    let helper = dir.path().join("docker-credential-credgate");
    std::os::unix::fs::symlink(&bin, &helper).expect("helper symlink");
    let pass = PassStore::create();
    pass.store("bench.test", "deploy", SECRET);
    let credgate_env = vec![("CREDGATE_SOCKET".into(), socket.clone().into_os_string())];
    let bare = spawns(&helper, "version", "", &credgate_env);
    let via_credgate = spawns(&helper, "get", "bench.test", &credgate_env);
    let via_pass = spawns(
        Path::new("docker-credential-pass"),
        "get",
        "bench.test",
        &pass.env(),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();

    println!("credgate credentials benchmark (release build)\n");
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "Lookup over the ttrpc socket", "p50", "p99", "throughput"
    );
    for (name, run) in [
        ("echo floor, concurrency 1", &echo_one),
        ("concurrency 1", &one),
        ("echo floor, concurrency 16", &echo_sixteen),
        ("concurrency 16", &sixteen),
    ] {
        println!(
            "  {:<42} {:>10} {:>10} {:>12.0}/s",
            format!("{name} ({LOOKUPS} lookups)"),
            micros(run.p50()),
            micros(run.p99()),
            run.throughput()
        );
    }
    let echo_ratio = one.p50().as_secs_f64() / echo_one.p50().as_secs_f64();
    println!(
        "  Lookup / echo at p50: {echo_ratio:.2}× at concurrency 1, {:.2}× at 16",
        sixteen.p50().as_secs_f64() / echo_sixteen.p50().as_secs_f64()
    );
    println!(
        "\n{:<44} {:>10} {:>10} {:>14}",
        format!("Lookup by keychain size ({SCALING_LOOKUPS} each)"),
        "p50",
        "p99",
        "vs 10 scopes"
    );
    let base = scaling[0].1.p50().as_secs_f64();
    for (scopes, run) in &scaling {
        println!(
            "  {:<42} {:>10} {:>10} {:>13.2}×",
            format!("{scopes} scopes, concurrency 1"),
            micros(run.p50()),
            micros(run.p99()),
            run.p50().as_secs_f64() / base
        );
    }
    let (largest, largest_run) = scaling.last().expect("three sizes");
    let scale_ratio = largest_run.p50().as_secs_f64() / base;
    println!(
        "\n{:<44} {:>10} {:>10} {:>14}",
        format!("One helper call, end to end ({SPAWNS} runs)"),
        "p50",
        "p99",
        "vs bare spawn"
    );
    for (name, run) in [
        ("bare spawn: docker-credential-credgate version", &bare),
        ("docker-credential-credgate get", &via_credgate),
        ("docker-credential-pass get (same credential)", &via_pass),
    ] {
        let ratio = run.p50().as_secs_f64() / bare.p50().as_secs_f64();
        println!(
            "  {:<42} {:>10} {:>10} {:>13.2}×",
            name,
            micros(run.p50()),
            micros(run.p99()),
            ratio
        );
    }
    let helper_ratio = via_credgate.p50().as_secs_f64() / bare.p50().as_secs_f64();
    println!("\ntargets:");
    println!(
        "  Lookup p50 < 100 µs at concurrency 1: {} ({})",
        verdict(one.p50() < Duration::from_micros(100)),
        micros(one.p50())
    );
    println!(
        "  Lookup within 2× of the echo (c=1):    {} ({echo_ratio:.2}×)",
        verdict(echo_ratio <= 2.0)
    );
    println!(
        "  {largest} scopes within 1.5× of 10:      {} ({scale_ratio:.2}×)",
        verdict(scale_ratio <= 1.5)
    );
    println!(
        "  helper get within 2× of a bare spawn:  {} ({helper_ratio:.2}×)",
        verdict(helper_ratio <= 2.0)
    );
    println!(
        "  credgate get vs pass get:              {:.1}× faster",
        via_pass.p50().as_secs_f64() / via_credgate.p50().as_secs_f64()
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// The transport's floor: the same ttrpc service on its own thread and runtime (as credgate
/// serves its socket on its main thread), answering every `Lookup` with a fixed response.
struct Echo;

#[async_trait::async_trait]
impl Credentials for Echo {
    async fn lookup(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _request: LookupRequest,
    ) -> ttrpc::Result<LookupResponse> {
        Ok(LookupResponse {
            username: "deploy".into(),
            secret: SECRET.into(),
            ..Default::default()
        })
    }
}

fn start_echo(socket: &Path) {
    let address = format!("unix://{}", socket.display());
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("echo runtime");
        runtime.block_on(async move {
            let mut server = ttrpc::r#async::Server::new()
                .bind(&address)
                .expect("bind the echo socket")
                .register_service(create_credentials(std::sync::Arc::new(Echo)));
            server.start().await.expect("start the echo server");
            ready.send(()).expect("bench waits");
            std::future::pending::<()>().await;
        });
    });
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the echo server started");
}

/// `credgate serve` with `fillers` other `[[registry]]` scopes before `bench.test`'s.
fn start_daemon(bin: &Path, dir: &Path, fillers: usize) -> Child {
    let socket = dir.join("credgate.sock");
    let mut config = format!(
        "[listen]\nsocket = \"{}\"\n{}\n",
        socket.display(),
        credgate_integration::daemon::private_listeners(dir)
    );
    // A realistic keychain: the target among many scopes, and a docker config beside it.
    for i in 0..fillers {
        config += &format!("[[registry]]\nmatch = \"registry{i}.test/team{i}\"\nusername = \"u{i}\"\npassword = \"p{i}\"\n\n");
    }
    config += &format!(
        "[[registry]]\nmatch = \"bench.test\"\nusername = \"deploy\"\npassword = \"{SECRET}\"\n\n"
    );
    std::fs::write(
        dir.join("docker.json"),
        r#"{"auths":{"other.test":{"auth":"dTpw"}}}"#,
    )
    .expect("docker config");
    config += &format!(
        "[[docker_config]]\npath = \"{}\"\n",
        dir.join("docker.json").display()
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).expect("config");
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("CREDGATE_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start credgate serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "credgate serve did not open {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Run {
    fn from(mut latencies: Vec<Duration>, wall: Duration) -> Self {
        latencies.sort();
        Self { latencies, wall }
    }
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies[index.min(self.latencies.len() - 1)]
    }
    fn p50(&self) -> Duration {
        self.percentile(0.50)
    }
    fn p99(&self) -> Duration {
        self.percentile(0.99)
    }
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

fn micros(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

async fn lookups(socket: &Path, concurrency: usize, count: usize) -> Run {
    let address = format!("unix://{}", socket.display());
    let client = Arc::new(CredentialsClient::new(
        ttrpc::r#async::Client::connect(&address)
            .await
            .expect("connect"),
    ));
    let request = Arc::new(LookupRequest {
        host: "bench.test:443".into(),
        repository: "group/sub/app".into(),
        ..Default::default()
    });
    // Warm up connections and caches.
    for _ in 0..500 {
        let _ = client
            .lookup(ttrpc::context::with_timeout(0), &request)
            .await;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, request) = (client.clone(), request.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(count / concurrency);
                for _ in 0..count / concurrency {
                    let t = Instant::now();
                    let response = client
                        .lookup(ttrpc::context::with_timeout(0), &request)
                        .await
                        .expect("lookup");
                    latencies.push(t.elapsed());
                    assert_eq!(response.username, "deploy");
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("lookup task"));
    }
    Run::from(latencies, started.elapsed())
}

fn spawns(
    program: &Path,
    action: &str,
    input: &str,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Run {
    let mut latencies = Vec::with_capacity(SPAWNS);
    let started = Instant::now();
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let mut child = Command::new(program)
            .arg(action)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("wait");
        latencies.push(t.elapsed());
        assert!(
            out.status.success(),
            "{} {action} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Run::from(latencies, started.elapsed())
}
