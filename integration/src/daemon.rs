//! `credgate serve` as a test runs it: its own config and socket in a temp dir, its log in a
//! file, killed and reaped on drop; and client environments that reach it through
//! `docker-credential-credgate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::clients::{ClientEnv, DockerConfig};
use crate::process::{read_lossy, spawn_logged, ChildGuard, DAEMON_PATH};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `X-Credgate-Secret` every test daemon expects.
pub const MIRROR_SECRET: &str = "test-mirror-secret-3f9a";

/// A loopback port nothing listens on now, so parallel daemons don't collide.
fn free_loopback_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// `[listen]` keys that keep a test daemon's pull-through endpoint and metrics listener to
/// itself: ephemeral loopback ports and a mirror secret generated in `dir`.
pub fn private_listeners(dir: &Path) -> String {
    format!(
        "mirror = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nmirror_secret_file = {:?}\n",
        dir.join("mirror-secret").display().to_string()
    )
}

/// A running `credgate serve`.
pub struct CredgateDaemon {
    /// The pull-through endpoint's address (`listen.mirror`).
    pub mirror: SocketAddr,
    /// The metrics listener's address (`listen.metrics`).
    pub metrics: SocketAddr,
    level: String,
    /// The daemon's PATH (where it finds `docker-credential-*` helpers).
    path: String,
    /// More environment for the daemon (kept across restarts).
    env: Vec<(String, String)>,
    dir: TempDir,
    /// None between [`CredgateDaemon::kill`] and [`CredgateDaemon::restart`].
    child: Option<ChildGuard>,
}

impl CredgateDaemon {
    /// Writes `<dir>/config.toml` (0600) as a `[listen]` table with `socket = <dir>/credgate.sock`
    /// and [`private_listeners`], followed by `sources` (the rest of a credgate config, without `[listen]`), starts
    /// `credgate serve --config` on it and waits until the socket exists.
    pub fn start(sources: &str) -> CredgateDaemon {
        Self::start_logging(sources, "debug")
    }

    /// Like [`CredgateDaemon::start`] with `CREDGATE_LOG` set to `level` (benchmarks run
    /// at `warn`, since debug logging is on every request's path).
    pub fn start_logging(sources: &str, level: &str) -> CredgateDaemon {
        Self::start_with(sources, level, DAEMON_PATH)
    }

    /// Like [`CredgateDaemon::start`] with `helper_dir` first on the daemon's PATH, so a
    /// docker config can name a test's own `docker-credential-*` program.
    pub fn start_with_helper_dir(sources: &str, helper_dir: &Path) -> CredgateDaemon {
        let path = format!("{}:{DAEMON_PATH}", helper_dir.display());
        Self::start_with(sources, "debug", &path)
    }

    /// Like [`CredgateDaemon::start_with_helper_dir`] with `env` added to the daemon's
    /// environment (`LD_PRELOAD` of a fault, say), at every start.
    pub fn start_with_env(
        sources: &str,
        helper_dir: &Path,
        env: &[(&str, &str)],
    ) -> CredgateDaemon {
        let path = format!("{}:{DAEMON_PATH}", helper_dir.display());
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_with_all(sources, "debug", &path, env)
    }

    fn start_with(sources: &str, level: &str, path: &str) -> CredgateDaemon {
        Self::start_with_all(sources, level, path, Vec::new())
    }

    fn start_with_all(
        sources: &str,
        level: &str,
        path: &str,
        env: Vec<(String, String)>,
    ) -> CredgateDaemon {
        let dir = tempfile::tempdir().expect("daemon temp dir");
        let socket = dir.path().join("credgate.sock");
        let secret_file = dir.path().join("mirror-secret");
        std::fs::write(&secret_file, MIRROR_SECRET).expect("write mirror-secret");
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod mirror-secret");
        let (mirror, metrics) = (free_loopback_port(), free_loopback_port());
        let config = format!(
            "[listen]\nsocket = {:?}\nmirror = \"{mirror}\"\nmetrics = \"{metrics}\"\nmirror_secret_file = {:?}\n\n{sources}",
            socket.display().to_string(),
            secret_file.display().to_string()
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config.toml");
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod config.toml");
        let child = spawn(
            &config_path,
            &dir.path().join("serve.log"),
            level,
            path,
            &env,
        );
        let mut daemon = CredgateDaemon {
            mirror,
            metrics,
            level: level.to_string(),
            path: path.to_string(),
            env,
            dir,
            child: Some(child),
        };
        daemon.wait_for_socket();
        daemon
    }

    /// Kills the daemon (SIGKILL, no clean stop), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts `credgate serve` again on the same config (so the same listeners and secret
    /// that hosts.toml names) after [`CredgateDaemon::kill`]; its log continues the old one.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "credgate serve still runs");
        self.child = Some(spawn(
            &self.config_path(),
            &self.dir.path().join("serve.log"),
            &self.level,
            &self.path,
            &self.env,
        ));
        self.wait_for_socket();
    }

    /// How many requests for `registry` (canonical name) the pull-through endpoint answered
    /// 200 so far, from `credgate_endpoint_requests_total` on the metrics listener.
    pub fn served_ok(&self, registry: &str) -> u64 {
        let metrics = crate::https::plain_get(self.metrics, "/metrics");
        let series =
            format!("credgate_endpoint_requests_total{{registry=\"{registry}\",status=\"200\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |count| count.trim().parse().expect("a counter value"))
    }

    /// The metrics listener's `/metrics` page now.
    pub fn metrics_page(&self) -> String {
        crate::https::plain_get(self.metrics, "/metrics")
    }

    /// The sum of the `family` series (a counter such as `credgate_mirror_handovers_total`)
    /// whose labels `keep` accepts, on the page now.
    pub fn metric_sum(&self, family: &str, keep: impl Fn(&MetricLabels) -> bool) -> f64 {
        metric_series(&self.metrics_page(), family)
            .iter()
            .filter(|(labels, _)| keep(labels))
            .map(|(_, value)| value)
            .sum()
    }

    /// Sends SIGHUP and waits until the log says `outcome` once more than before
    /// (`"config reloaded"`, or `"reload failed"` for a bad config).
    pub fn reload_expecting(&self, outcome: &str) {
        let seen = self.log().matches(outcome).count();
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP credgate");
        let deadline = Instant::now() + START_TIMEOUT;
        while self.log().matches(outcome).count() <= seen {
            assert!(
                Instant::now() < deadline,
                "credgate serve did not log {outcome:?} after SIGHUP:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ready means the ttrpc socket exists and the endpoint accepts connections.
    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.socket().exists() || std::net::TcpStream::connect(self.mirror).is_err() {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::try_wait) {
                panic!("credgate serve exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "credgate serve made no socket in {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid (for SIGHUP, and reading its memory use from /proc). Panics when it
    /// was killed and not restarted: a pid of 0 would signal the test's own process group.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(ChildGuard::id)
            .expect("credgate serve is not running (killed, not restarted)")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("credgate.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the daemon logged so far (stdout and stderr, `CREDGATE_LOG=debug`).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("serve.log"))
    }

    /// A [`ClientEnv`] with `config`, `docker-credential-credgate` linked into its bin dir and
    /// `CREDGATE_SOCKET` pointing at this daemon (clients pass their environment to helpers).
    pub fn client_env(&self, config: &DockerConfig) -> ClientEnv {
        let mut env = ClientEnv::new(config);
        env.link_credential_helper("credgate", &crate::credgate_binary());
        env.set_env("CREDGATE_SOCKET", self.socket());
        env
    }
}

/// One series' labels, name to (unescaped) value.
pub type MetricLabels = BTreeMap<String, String>;

/// Every series of `family` on a Prometheus text page: `family{k="v",…} value` (or without
/// labels), with its labels and value. Lines it cannot read are skipped.
pub fn metric_series(page: &str, family: &str) -> Vec<(MetricLabels, f64)> {
    page.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let (labels, rest) = split_labels(rest)?;
                    (labels, rest)
                }
                None => (MetricLabels::new(), rest),
            };
            let value = value.strip_prefix(' ')?.split(' ').next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// `k="v",…}` and what follows the `}`.
fn split_labels(text: &str) -> Option<(MetricLabels, &str)> {
    let mut labels = MetricLabels::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
}

/// `credgate serve --config <config>` logging to `log` (appended) at `level`, with `path`
/// and `env`.
fn spawn(
    config: &Path,
    log: &Path,
    level: &str,
    path: &str,
    env: &[(String, String)],
) -> ChildGuard {
    let mut command = Command::new(crate::credgate_binary());
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", path)
        .env("CREDGATE_LOG", level)
        .envs(env.iter().map(|(k, v)| (k, v)));
    spawn_logged(&mut command, log, "credgate serve")
}

#[cfg(test)]
mod tests {
    use super::metric_series;

    #[test]
    fn series_of_one_family_are_read_with_their_labels() {
        let page = "# HELP credgate_mirror_handovers_total Hand-overs.\n\
            credgate_mirror_handovers_total{mirror=\"https://mirror.test\",reason=\"unreachable\"} 3\n\
            credgate_mirror_handovers_total{mirror=\"a \\\"q\\\"\",reason=\"refused\"} 1\n\
            credgate_mirror_handovers_totally{mirror=\"x\"} 9\n\
            credgate_endpoint_connections 2\n";
        let series = metric_series(page, "credgate_mirror_handovers_total");
        assert_eq!(series.len(), 2, "{series:?}");
        assert_eq!(series[0].0["mirror"], "https://mirror.test");
        assert_eq!(series[0].0["reason"], "unreachable");
        assert_eq!(series[0].1, 3.0);
        assert_eq!(series[1].0["mirror"], "a \"q\"");
        let gauge = metric_series(page, "credgate_endpoint_connections");
        assert_eq!(gauge, vec![(Default::default(), 2.0)]);
    }
}
