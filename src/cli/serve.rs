//! `credgate serve`: the daemon's lifecycle. It loads the config, opens the ttrpc socket, the
//! pull-through endpoint and the metrics listener, reloads on SIGHUP (a bad new config is
//! reported and the old one keeps serving) and stops cleanly on SIGTERM or SIGINT, removing
//! its socket. It also keeps the metrics' registry labels following the keychain's scopes,
//! and with `--install-hosts` writes the hosts.toml files before it serves. Under systemd's
//! socket activation it serves on the listeners `credgate.socket` passed ([`activation`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use super::{load_config, CliError};
use crate::activation::{self, ActivationError};
use crate::config::{Config, Listen};
use crate::daemon::{bump, Daemon};
use crate::endpoint::{self, EndpointState, HttpServer};
use crate::health::Health;
use crate::keychain::Keychain;
use crate::metrics::{Metrics, Size, Total};
use crate::mirrors::Mirrors;
use crate::secret::{MirrorSecret, SecretError, SecretOrigin};
use crate::service;
use crate::system::System;
use crate::upstream::{Upstream, UpstreamPolicy};

/// How often the registries with a metrics label of their own are re-read from the keychain
/// between reloads: docker configs change without one (`docker login`).
const LABEL_REFRESH: Duration = Duration::from_secs(60);

/// `credgate serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// containerd's config file: report in the log and on /healthz whether its config_path
    /// sends pulls to credgate (a DaemonSet's pod, which cannot fix it, passes this)
    #[arg(long, value_name = "PATH")]
    containerd_config: Option<PathBuf>,
    /// Before serving, write the hosts.toml files into [containerd] hosts_dir as
    /// `credgate install --hosts-only` does (a DaemonSet's container: its preStop hook took
    /// them out, and a container restart does not re-run the init step)
    #[arg(long, requires = "containerd_config")]
    install_hosts: bool,
}

pub async fn serve(
    config_path: Option<PathBuf>,
    system: System,
    args: ServeArgs,
    inherited: Result<Vec<(OwnedFd, String)>, ActivationError>,
) -> Result<(), CliError> {
    let config = load_config(config_path.as_deref())?;
    let wanted = activation::Wanted {
        socket: config.listen.socket.clone(),
        mirror: config.listen.mirror,
        metrics: config.listen.metrics,
    };
    let bad = |e: ActivationError| CliError::BadInput(e.to_string());
    let mut passed = activation::sort(inherited.map_err(bad)?, &wanted).map_err(bad)?;
    if passed.any() {
        tracing::info!(
            socket = passed.socket.is_some(),
            mirror = passed.mirror.is_some(),
            metrics = passed.metrics.is_some(),
            "socket activation: serving on the listeners systemd passed"
        );
    }
    let health = Arc::new(Health::watching(
        args.containerd_config.clone(),
        &config.containerd.hosts_dir,
    ));
    // Before /healthz answers, so a ready daemon always has hosts.toml naming it.
    let install_hosts = args
        .containerd_config
        .as_deref()
        .filter(|_| args.install_hosts);
    if let Some(containerd_config) = install_hosts {
        write_hosts_files(&config, containerd_config)?;
    }
    let socket_path = config.listen.socket.clone();
    let daemon = Arc::new(Daemon::new(
        keychain(&config, &system),
        config.listen.allowed_uids.clone(),
    ));
    let failed = |e: service::SocketError| CliError::Failed(e.to_string());
    let open_to_others = service::opens_to_others(&config.listen.allowed_uids);
    let from_systemd = passed.socket.take();
    let activated = from_systemd.is_some();
    let listener = match from_systemd {
        Some(listener) => service::adopt(listener, &socket_path, open_to_others),
        None => service::bind(&socket_path, open_to_others),
    }
    .map_err(failed)?;
    let socket = service::serve_socket(listener, &socket_path, daemon.clone())
        .await
        .map_err(failed)?;
    let socket = if activated {
        socket.keeping_file()
    } else {
        socket
    };
    // One way out once the socket is open, so it is always closed (and its file removed
    // unless it is systemd's).
    let served = serve_until_stopped(&config, config_path, system, daemon, health, passed).await;
    socket.shutdown().await;
    served?;
    tracing::info!("credgate stopped");
    Ok(())
}

/// Opens the pull-through endpoint beside the open socket and serves until SIGTERM or
/// SIGINT, reloading on SIGHUP.
async fn serve_until_stopped(
    config: &Config,
    config_path: Option<PathBuf>,
    system: System,
    daemon: Arc<Daemon>,
    health: Arc<Health>,
    passed: activation::Listeners,
) -> Result<(), CliError> {
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::new(UpstreamPolicy::from_config(config), metrics.clone())
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let upstream = Arc::new(upstream);
    let streaming = streaming_runtime()?;
    let runtimes = [tokio::runtime::Handle::current(), streaming.handle()];
    metrics.watch(Size::Tasks, move || {
        runtimes.iter().map(|r| r.metrics().num_alive_tasks()).sum()
    });
    let open = PullThrough::open(
        config.listen.clone(),
        Mirrors::from_config(config),
        daemon.clone(),
        upstream.clone(),
        metrics.clone(),
        health.clone(),
        passed,
    );
    let pull_through = streaming.spawn(open).await.unwrap_or_else(|e| {
        Err(CliError::Failed(format!(
            "the endpoint failed to start: {e}"
        )))
    })?;
    pull_through
        .state
        .set_digest_verification(config.upstream.verify_digests);
    let signal_err =
        |e: std::io::Error| CliError::Failed(format!("cannot install signal handlers: {e}"));
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let socket_path = config.listen.socket.clone();
    tracing::info!(socket = %socket_path.display(), "credgate is up; serving the Credentials API");
    health.check();
    let running = Running {
        config_path,
        system,
        daemon,
        socket_path,
        pull_through,
        upstream,
        metrics,
        health,
    };
    // The first tick is at once: the labels of the config just loaded.
    let mut relabel = tokio::time::interval(LABEL_REFRESH);
    relabel.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                running.reload();
                running.label_registries().await;
            }
            _ = relabel.tick() => running.label_registries().await,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let _ = streaming.spawn(running.pull_through.shutdown()).await;
    Ok(())
}

/// What a running daemon reloads.
struct Running {
    config_path: Option<PathBuf>,
    system: System,
    daemon: Arc<Daemon>,
    socket_path: PathBuf,
    pull_through: PullThrough,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Running {
    /// Registries the keychain's scopes name keep their own metrics label; every other
    /// registry a caller names counts under one shared label.
    async fn label_registries(&self) {
        let listed = self.daemon.keychain().list().await;
        self.metrics
            .label_registries(listed.into_iter().map(|(scope, _)| scope));
    }

    fn reload(&self) {
        let config = match load_config(self.config_path.as_deref()) {
            Ok(config) => config,
            Err(e) => {
                self.health.check();
                bump(&self.daemon.counters.failed_reloads);
                tracing::error!(error = %e, "reload failed; still serving the previous config");
                return;
            }
        };
        self.health.follow_hosts_dir(&config.containerd.hosts_dir);
        self.health.check();
        if config.listen.socket != self.socket_path {
            tracing::warn!(
                new = %config.listen.socket.display(),
                current = %self.socket_path.display(),
                "listen.socket changed; restart credgate to move the socket"
            );
        }
        self.pull_through.reload(&config.listen);
        self.pull_through
            .state
            .replace_mirrors(Mirrors::from_config(&config));
        self.pull_through
            .state
            .set_digest_verification(config.upstream.verify_digests);
        self.upstream
            .set_policy(UpstreamPolicy::from_config(&config));
        self.daemon.reload(
            keychain(&config, &self.system),
            config.listen.allowed_uids.clone(),
        );
        tracing::info!("config reloaded");
    }
}

/// The sizes of what hostile input can grow, read at each scrape: the token and challenge
/// caches, and the credential helpers' answer cache and running processes (from the keychain
/// in force, which a reload replaces).
fn watch_caches(metrics: &Metrics, daemon: &Arc<Daemon>, upstream: &Arc<Upstream>) {
    let tokens = upstream.clone();
    metrics.watch(Size::TokenCache, move || tokens.cached_tokens());
    let challenges = upstream.clone();
    metrics.watch(Size::Challenges, move || challenges.remembered_challenges());
    let mirror_clients = upstream.clone();
    metrics.watch(Size::MirrorClients, move || mirror_clients.mirror_clients());
    let helpers = daemon.clone();
    metrics.watch(Size::HelperCache, move || {
        helpers.keychain().helper_stats().cached_answers
    });
    let running = daemon.clone();
    metrics.watch(Size::RunningHelpers, move || {
        running.keychain().helper_stats().running
    });
    let timeouts = daemon.clone();
    metrics.watch_total(Total::HelperTimeouts, move || {
        timeouts.keychain().helper_stats().timeouts
    });
}

/// The pull-through endpoint and the metrics listener, and what they were opened with.
struct PullThrough {
    state: Arc<EndpointState>,
    endpoint: HttpServer,
    metrics: HttpServer,
    listen: Listen,
}

impl PullThrough {
    /// Reads (or, at first start, generates) the mirror secret and binds both loopback
    /// listeners; any failure stops `serve` with one line.
    async fn open(
        listen: Listen,
        mirrors: Mirrors,
        daemon: Arc<Daemon>,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        passed: activation::Listeners,
    ) -> Result<PullThrough, CliError> {
        let failed = |e: &dyn std::fmt::Display| CliError::Failed(e.to_string());
        let secret = start_secret(&listen.mirror_secret_file).map_err(|e| failed(&e))?;
        let mirror = listener("listen.mirror", listen.mirror, passed.mirror)
            .await
            .map_err(|e| failed(&e))?;
        let metrics_listener = listener("listen.metrics", listen.metrics, passed.metrics)
            .await
            .map_err(|e| failed(&e))?;
        watch_caches(&metrics, &daemon, &upstream);
        let state = Arc::new(
            EndpointState::new(daemon, upstream, secret, metrics.clone()).with_mirrors(mirrors),
        );
        let files = state.clone();
        metrics.watch(Size::HostsFiles, move || files.mirrors().cached_files());
        let endpoint = endpoint::serve_endpoint(mirror, state.clone());
        let page = endpoint::serve_metrics_reporting(
            metrics_listener,
            metrics.clone(),
            health,
            endpoint::Limits::METRICS,
        );
        metrics.watch(Size::EndpointConnections, endpoint.open_connections());
        metrics.watch(Size::MetricsConnections, page.open_connections());
        tracing::info!(address = %endpoint.local_addr(), "pull-through endpoint listening");
        tracing::info!(address = %page.local_addr(), "metrics listening");
        Ok(PullThrough {
            state,
            endpoint,
            metrics: page,
            listen: listen.clone(),
        })
    }

    /// Re-reads the secret (never generates one: a file that vanished keeps the old secret
    /// serving); listener addresses need a restart.
    fn reload(&self, listen: &Listen) {
        for (key, current, new) in [
            ("listen.mirror", self.listen.mirror, listen.mirror),
            ("listen.metrics", self.listen.metrics, listen.metrics),
        ] {
            if current != new {
                tracing::warn!(key, %new, %current, "listener address changed; restart credgate to move it");
            }
        }
        match MirrorSecret::read(&listen.mirror_secret_file) {
            Ok(secret) => self.state.replace_secret(secret),
            Err(error) => {
                tracing::error!(%error, "mirror secret not reloaded; still using the previous one")
            }
        }
    }

    async fn shutdown(self) {
        tokio::join!(self.endpoint.shutdown(), self.metrics.shutdown());
    }
}

/// systemd's listener for `key` when it passed one, else a fresh bind of `addr`.
async fn listener(
    key: &'static str,
    addr: std::net::SocketAddr,
    from_systemd: Option<std::net::TcpListener>,
) -> Result<tokio::net::TcpListener, endpoint::ListenError> {
    match from_systemd {
        Some(listener) => endpoint::adopt_loopback(key, listener),
        None => endpoint::bind_loopback(key, addr).await,
    }
}

/// The pull-through endpoint gets its own runtime, so streaming a blob never delays a
/// `Lookup`, which stays on the main thread where it is fastest.
fn streaming_runtime() -> Result<StreamingRuntime, CliError> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(streaming_workers(cpus))
        .thread_name("credgate-endpoint")
        .enable_all()
        .build()
        .map(|runtime| StreamingRuntime(Some(runtime)))
        .map_err(|e| CliError::Failed(format!("cannot start the endpoint's runtime: {e}")))
}

/// The endpoint runtime's worker threads on a node with `cpus` CPUs: one per two, at least
/// one and at most four. On the 2-core bench node one worker costs 0.3–0.5 CPU-s/GiB less
/// than two and streams faster (README, "Where credgate's CPU goes"): the second worker
/// mostly wakes, steals and parks, and containerd, which hashes and unpacks the same bytes,
/// needs that core. Larger nodes (not measured) keep the earlier two workers from 4 CPUs, and
/// more from 6, since they run more pulls at once and one worker streams about 550 MB/s.
fn streaming_workers(cpus: usize) -> usize {
    (cpus / 2).clamp(1, 4)
}

/// A runtime can't be dropped inside async code, so this one always stops in the background,
/// on every path out of `serve`.
struct StreamingRuntime(Option<tokio::runtime::Runtime>);

impl StreamingRuntime {
    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .as_ref()
            .expect("running until dropped")
            .spawn(future)
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }
}

impl Drop for StreamingRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// `credgate install --hosts-only` into the daemon's own `[containerd] hosts_dir` (where the
/// endpoint reads its mirrors), reported in the log; a failure stops `serve`, since a daemon
/// that answers /healthz while no hosts.toml names it hides the fault.
fn write_hosts_files(config: &Config, containerd_config: &Path) -> Result<(), CliError> {
    let options = crate::install::Options {
        containerd_config: containerd_config.to_path_buf(),
        hosts_dir: Some(config.containerd.hosts_dir.clone()),
        dry_run: false,
    };
    match crate::install::install_hosts_only(config, &options) {
        Ok(report) => {
            for warning in &report.warnings {
                tracing::warn!("{warning}");
            }
            for line in &report.stdout {
                tracing::info!("{}", line.trim_end());
            }
            Ok(())
        }
        Err(e) => {
            let message = format!("--install-hosts: {e}");
            Err(if e.is_bad_input() {
                CliError::BadInput(message)
            } else {
                CliError::Failed(message)
            })
        }
    }
}

fn start_secret(path: &Path) -> Result<MirrorSecret, SecretError> {
    let (secret, origin) = MirrorSecret::read_or_generate(path)?;
    if origin == SecretOrigin::Generated {
        tracing::info!(
            path = %path.display(),
            "generated a new mirror secret (mode 0600); hosts.toml must send it as X-Credgate-Secret"
        );
    }
    Ok(secret)
}

fn keychain(config: &Config, system: &System) -> Keychain {
    let keychain = Keychain::from_config(config, system);
    let path = config
        .path
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    tracing::info!(config = %path, sources = keychain.source_names().len(), "keychain loaded");
    for name in keychain.source_names() {
        tracing::info!(source = %name, "credential source");
    }
    keychain
}
