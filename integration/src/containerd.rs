//! Real containerd (1.6, 1.7 and 2.1) as a node test runs it: its own root, state, socket,
//! config and hosts directory in a temp dir, its log in a file, and the process group (plus
//! any shim it started) killed on drop.
//!
//! The config is containerd's own format for the version (version 2 for 1.x, version 3 for
//! 2.x) with only what a test node needs changed: paths under the temp dir (the default
//! overlayfs snapshotter, as on a real node), NRI off, the sandbox (pause) image the test names,
//! and a default CRI runtime whose shim does not exist, so a pod sandbox fails after its image
//! is pulled and no shim ever writes under the host's `/run/containerd`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::daemon::CredgateDaemon;
use crate::process::{
    read_lossy, run_bounded, spawn_logged, ChildGuard, CommandOutput, DAEMON_PATH,
};

/// Where integration/test-all.sh unpacks each containerd release: `<dir>/<version>/usr/bin`.
pub const CONTAINERD_CACHE: &str = "/var/cache/credgate-test/containerd";

/// Every containerd release the node tests run against, oldest first.
pub const VERSIONS: [&str; 3] = ["1.6", "1.7", "2.1"];

/// The containerd namespace `ctr` pulls into (the CRI uses `k8s.io`).
pub const CTR_NAMESPACE: &str = "default";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// How long install, uninstall and doctor may take (doctor's live checks are bounded at 10 s).
const CREDGATE_CLI_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 60;

/// A containerd config, its directories and (once started) the daemon.
pub struct Containerd {
    version: &'static str,
    dir: TempDir,
    child: Option<ChildGuard>,
}

/// The path of `program` in the unpacked `version`; panics, naming the path and the script
/// that fetches it, when it is missing.
pub fn binary(version: &str, program: &str) -> PathBuf {
    let path = bin_dir(version).join(program);
    assert!(
        path.is_file(),
        "{} is missing: the containerd {version} tests need it; run `bash integration/test-all.sh` \
         as root once, which fetches containerd {version} into {CONTAINERD_CACHE}",
        path.display()
    );
    path
}

fn bin_dir(version: &str) -> PathBuf {
    Path::new(CONTAINERD_CACHE).join(version).join("usr/bin")
}

impl Containerd {
    /// Writes the config for `version` (one of [`VERSIONS`]) with `sandbox_image` as the pause
    /// image, and an empty hosts dir that the config does not name yet (`credgate install`
    /// points `config_path` at it). Nothing runs until [`Containerd::start`].
    pub fn configure(version: &'static str, sandbox_image: &str) -> Containerd {
        Self::configure_naming(version, sandbox_image, false)
    }

    /// Like [`Containerd::configure`], with the CRI's registry `config_path` already naming
    /// the hosts dir, as on a node that pulls through mirrors before credgate comes.
    pub fn configure_with_hosts_dir(version: &'static str, sandbox_image: &str) -> Containerd {
        Self::configure_naming(version, sandbox_image, true)
    }

    fn configure_naming(
        version: &'static str,
        sandbox_image: &str,
        name_hosts_dir: bool,
    ) -> Containerd {
        for program in ["containerd", "ctr", "containerd-shim-runc-v2"] {
            binary(version, program);
        }
        crate::node::node();
        let dir = tempfile::tempdir().expect("containerd temp dir");
        let containerd = Containerd {
            version,
            dir,
            child: None,
        };
        std::fs::create_dir_all(containerd.hosts_dir()).expect("mkdir hosts dir");
        let hosts_dir = name_hosts_dir.then(|| containerd.hosts_dir());
        let config = config_text(
            version,
            containerd.dir.path(),
            sandbox_image,
            hosts_dir.as_deref(),
        );
        std::fs::write(containerd.config_path(), config).expect("write containerd config");
        containerd
    }

    /// Starts containerd on its config and waits until `ctr version` answers on the socket.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "containerd {} already runs",
            self.version
        );
        let path = format!("{}:{DAEMON_PATH}", bin_dir(self.version).display());
        let mut command = Command::new(binary(self.version, "containerd"));
        command
            .arg("--config")
            .arg(self.config_path())
            .env_clear()
            .env("PATH", path);
        let label = format!("containerd {}", self.version);
        self.child = Some(spawn_logged(&mut command, &self.log_path(), &label));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::try_wait) {
                panic!(
                    "containerd {} exited ({status}) while starting:\n{}",
                    self.version,
                    self.log_tail()
                );
            }
            if self.socket().exists() && self.ctr(&["version"]).success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd {} did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.version,
                self.socket().display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd (its process group and its shims); root and state stay for a restart.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        self.kill_shims();
        let _ = std::fs::remove_file(self.socket());
    }

    /// [`Containerd::stop`] then [`Containerd::start`]: containerd reads `config_path` only
    /// when it starts.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Shims detach into their own process groups; they name our socket in `-address`.
    fn kill_shims(&self) {
        let socket = self.socket().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_our_shim = args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args.contains(&socket);
            if is_our_shim {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The containerd config file (`credgate install --containerd-config`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The hosts directory (`credgate install --hosts-dir`, `ctr --hosts-dir`).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// containerd's gRPC socket (CRI included).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// Everything containerd logged so far (debug level), across restarts.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- containerd {} log (last {} lines of {}) ---\n{}",
            self.version,
            lines.len() - start,
            self.log_path().display(),
            lines[start..].join("\n")
        )
    }

    /// Runs `ctr --address <socket> --namespace default <args>`.
    pub fn ctr(&self, args: &[&str]) -> CommandOutput {
        self.ctr_in(CTR_NAMESPACE, args)
    }

    /// [`Containerd::ctr`] in containerd namespace `namespace`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> CommandOutput {
        let mut command = Command::new(binary(self.version, "ctr"));
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .env_clear()
            .env("PATH", DAEMON_PATH);
        run_bounded(&mut command, self.dir.path(), CTR_TIMEOUT)
    }

    /// `ctr image pull --hosts-dir <hosts dir> <reference>` with no credentials (2.x pulls
    /// through the transfer service, 1.x in the client); on failure, what ctr printed.
    pub fn ctr_pull(&self, reference: &str) -> Result<(), String> {
        let hosts_dir = self.hosts_dir().to_string_lossy().into_owned();
        let output = self.ctr(&["image", "pull", "--hosts-dir", &hosts_dir, reference]);
        if output.success() {
            Ok(())
        } else {
            Err(output.to_string())
        }
    }

    /// `credgate --config <credgate_config> pull --address <socket> --no-progress <reference>`:
    /// a pull through containerd's transfer service whose auth stream credgate answers (no
    /// hosts dir, so the endpoint is not involved).
    pub fn credgate_pull(&self, credgate_config: &Path, reference: &str) -> CommandOutput {
        self.credgate_pull_in(CTR_NAMESPACE, credgate_config, reference)
    }

    /// [`Containerd::credgate_pull`] into containerd namespace `namespace`.
    pub fn credgate_pull_in(
        &self,
        namespace: &str,
        credgate_config: &Path,
        reference: &str,
    ) -> CommandOutput {
        let mut command = self.credgate_pull_command(namespace, credgate_config, reference);
        run_bounded(&mut command, self.dir.path(), CTR_TIMEOUT)
    }

    /// The `credgate pull` of [`Containerd::credgate_pull_in`], to start as the caller needs.
    pub fn credgate_pull_command(
        &self,
        namespace: &str,
        credgate_config: &Path,
        reference: &str,
    ) -> Command {
        let mut command = credgate_command(credgate_config);
        command
            .args([
                "pull",
                "--no-progress",
                "--namespace",
                namespace,
                "--address",
            ])
            .arg(self.socket())
            .arg(reference);
        command
    }

    /// `credgate --config <credgate_config> doctor --containerd-address <socket>` on this
    /// containerd's config and hosts dir.
    pub fn credgate_doctor(&self, credgate_config: &Path) -> CommandOutput {
        let mut command = credgate_command(credgate_config);
        command
            .args(["doctor", "--containerd-address"])
            .arg(self.socket());
        self.run_on_files(command)
    }

    /// `credgate --config <credgate_config> install` on this containerd's config and hosts dir
    /// (the real CLI). containerd reads `config_path` when it starts: install before
    /// [`Containerd::start`], or [`Containerd::restart`] after.
    pub fn install_credgate(&self, credgate_config: &Path) -> CommandOutput {
        let mut command = credgate_command(credgate_config);
        command.arg("install");
        self.run_on_files(command)
    }

    /// `credgate uninstall` on this containerd's config and hosts dir (then restart).
    pub fn uninstall_credgate(&self) -> CommandOutput {
        let mut command = Command::new(crate::credgate_binary());
        command
            .arg("uninstall")
            .env_clear()
            .env("PATH", DAEMON_PATH);
        self.run_on_files(command)
    }

    /// Runs a credgate subcommand with `--containerd-config <config> --hosts-dir <hosts dir>`.
    fn run_on_files(&self, mut command: Command) -> CommandOutput {
        command
            .arg("--containerd-config")
            .arg(self.config_path())
            .arg("--hosts-dir")
            .arg(self.hosts_dir());
        run_bounded(&mut command, self.dir.path(), CREDGATE_CLI_TIMEOUT)
    }

    /// Runs `pull` and panics, with containerd's log tail, unless it succeeded and credgate's
    /// endpoint answered `registry`'s requests (200) while it ran: the content came through
    /// credgate. `what` names the pull in the message.
    #[track_caller]
    pub fn assert_through_credgate<T: std::fmt::Debug, E: std::fmt::Debug>(
        &self,
        daemon: &CredgateDaemon,
        registry: &str,
        what: &str,
        pull: impl FnOnce() -> Result<T, E>,
    ) -> T {
        let before = daemon.served_ok(registry);
        let outcome = pull();
        let served = daemon.served_ok(registry) - before;
        match outcome {
            Ok(value) if served > 0 => value,
            outcome => panic!(
                "containerd {}: {what}: {outcome:?}, credgate served {served} requests for {registry}\n{}",
                self.version,
                self.log_tail()
            ),
        }
    }

    /// Writes `<hosts dir>/<registry>/hosts.toml` (mode 0644, as an operator's files are)
    /// and returns its path.
    pub fn write_hosts_toml(&self, registry: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.hosts_dir().join(registry);
        std::fs::create_dir_all(&dir).expect("mkdir registry hosts dir");
        let path = dir.join("hosts.toml");
        std::fs::write(&path, text).expect("write hosts.toml");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .expect("chmod hosts.toml");
        path
    }

    /// The hosts.toml install wrote for every registry (`<hosts dir>/_default/hosts.toml`).
    pub fn default_hosts_toml(&self) -> String {
        std::fs::read_to_string(self.hosts_dir().join("_default/hosts.toml")).unwrap_or_default()
    }
}

/// `credgate --config <credgate_config>` with only the system PATH, ready for a subcommand.
fn credgate_command(credgate_config: &Path) -> Command {
    let mut command = Command::new(crate::credgate_binary());
    command
        .arg("--config")
        .arg(credgate_config)
        .env_clear()
        .env("PATH", DAEMON_PATH);
    command
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config for `version`, everything under `dir`; the CRI's registry `config_path` is
/// `hosts_dir` when given.
fn config_text(version: &str, dir: &Path, sandbox_image: &str, hosts_dir: Option<&Path>) -> String {
    let path = |name: &str| format!("{:?}", dir.join(name).display().to_string());
    let (root, state, socket, opt) = (
        path("root"),
        path("state"),
        path("containerd.sock"),
        path("opt"),
    );
    let common = format!(
        "root = {root}\nstate = {state}\n\n[grpc]\n  address = {socket}\n\n[debug]\n  level = \"debug\"\n"
    );
    // The CRI's runtime named "absent" needs `containerd-shim-credgate-absent-v1`, which
    // nobody has: RunPodSandbox pulls the pause image, then fails before any shim starts.
    const ABSENT_RUNTIME: &str = "io.containerd.credgate-absent.v1";
    let registry = hosts_dir.map_or(String::new(), |hosts_dir| {
        let table = if version.starts_with("1.") {
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]"
        } else {
            "[plugins.'io.containerd.cri.v1.images'.registry]"
        };
        let config_path = format!("{:?}", hosts_dir.display().to_string());
        format!("  {table}\n    config_path = {config_path}\n")
    });
    if version.starts_with("1.") {
        format!(
            "version = 2\n{common}\n\
             [plugins]\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20   sandbox_image = {sandbox_image:?}\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20     default_runtime_name = \"absent\"\n\
             \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.absent]\n\
             \x20       runtime_type = \"{ABSENT_RUNTIME}\"\n\
             \x20 [plugins.\"io.containerd.internal.v1.opt\"]\n\
             \x20   path = {opt}\n\
             \x20 [plugins.\"io.containerd.nri.v1.nri\"]\n\
             \x20   disable = true\n{registry}"
        )
    } else {
        format!(
            "version = 3\n{common}\n\
             [plugins]\n\
             \x20 [plugins.'io.containerd.cri.v1.images'.pinned_images]\n\
             \x20   sandbox = {sandbox_image:?}\n\
             \x20 [plugins.'io.containerd.cri.v1.runtime'.containerd]\n\
             \x20   default_runtime_name = 'absent'\n\
             \x20   [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.absent]\n\
             \x20     runtime_type = '{ABSENT_RUNTIME}'\n\
             \x20 [plugins.'io.containerd.internal.v1.opt']\n\
             \x20   path = {opt}\n\
             \x20 [plugins.'io.containerd.nri.v1.nri']\n\
             \x20   disable = true\n{registry}"
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[should_panic(expected = "run `bash integration/test-all.sh`")]
    fn a_missing_release_fails_naming_the_script_that_fetches_it() {
        super::binary("0.0-not-fetched", "containerd");
    }
}
