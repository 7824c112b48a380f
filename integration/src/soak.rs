//! The soak run (`bash integration/soak.sh [--minutes N]`, issue 14): 64 concurrent pullers
//! against `credgate serve`, real containerd 2.1 and real registries for a set time, while
//! credgate's own `/metrics` page is sampled every 10 s. Decides what a pull of each kind
//! is, when it counts as done (the right content, checked by digest) and what the run's
//! verdict is: no failed pull, RSS growth under 5 % after warm-up, descriptors and tasks back
//! to their baseline once the pulls stop.
//!
//! Pulls mix every path credgate serves: CRI PullImage, the sandbox image RunPodSandbox
//! pulls, `ctr image pull` through hosts.toml (each puller in its own containerd namespace,
//! the image removed after each pull so its blobs are fetched again), `credgate pull`
//! through the transfer service (each puller in its own namespace, the image kept), crane
//! resolving a digest through `docker-credential-credgate` (for hosts with one credential:
//! the helper protocol names no repository), and direct endpoint requests (manifest and every blob,
//! digests checked). They span four registries and four credentials: a path-scoped GitLab
//! deploy token (Bearer tokens from auth.test), another user's token from a docker config
//! file, HTTP Basic, and a docker credential helper.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clients::{Client, ClientEnv, DockerConfig};
use crate::containerd::{self, Containerd};
use crate::cri::CriClient;
use crate::daemon::{metric_series, CredgateDaemon};
use crate::gitlab::{self, DEPLOY_PW, OTHER_PW};
use crate::images::{push_image, PushedImage};
use crate::process::{run_bounded, DAEMON_PATH};
use crate::registry::{Registry, RegistryAuth};

/// How many pullers run at once.
pub const PULLERS: usize = 64;
/// How often the metrics page is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The containerd release the soak runs against.
const CONTAINERD: &str = "2.1";
const ALICE_PW: &str = "soak-alice-pw-31d";
const HELPER_USER: &str = "helper-user";
const HELPER_PW: &str = "soak-helper-pw-8e2";
/// Most failure messages kept for the report; the count is kept whatever the number.
const KEPT_FAILURES: usize = 20;
/// How far apart the pullers start.
const RAMP_STEP: Duration = Duration::from_millis(100);
/// How many [`Images::cold`] images a rig pushes.
pub const COLD_IMAGES: usize = 8;
/// How long, after the pulls stop, descriptors and tasks may take to return to baseline
/// (idle pooled connections close after 90 s).
const SETTLE: Duration = Duration::from_secs(150);

/// One kind of pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullKind {
    Cri,
    Sandbox,
    Ctr,
    CredgatePull,
    HelperGet,
    Endpoint,
}

impl PullKind {
    pub const ALL: [PullKind; 6] = [
        PullKind::Cri,
        PullKind::Sandbox,
        PullKind::Ctr,
        PullKind::CredgatePull,
        PullKind::HelperGet,
        PullKind::Endpoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PullKind::Cri => "CRI PullImage",
            PullKind::Sandbox => "RunPodSandbox",
            PullKind::Ctr => "ctr image pull",
            PullKind::CredgatePull => "credgate pull",
            PullKind::HelperGet => "crane (helper get)",
            PullKind::Endpoint => "endpoint GET",
        }
    }

    /// The kind puller `index` runs: one sandbox puller (sandboxes share one pause image,
    /// removed before each run), the rest spread over the others.
    pub fn of_puller(index: usize) -> PullKind {
        if index == 1 {
            return PullKind::Sandbox;
        }
        let others = [
            PullKind::Cri,
            PullKind::Ctr,
            PullKind::CredgatePull,
            PullKind::HelperGet,
            PullKind::Endpoint,
        ];
        others[index % others.len()]
    }
}

/// One sample of credgate's metrics page and the pullers' counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub seconds: f64,
    pub rss_bytes: f64,
    pub open_fds: f64,
    pub tasks: f64,
    pub token_cache: f64,
    pub helper_cache: f64,
    pub in_flight: f64,
    pub pulls_done: u64,
    pub pulls_failed: u64,
}

impl Sample {
    /// Reads `page` (credgate's `/metrics`) at `seconds` into the run.
    pub fn read(page: &str, seconds: f64, done: u64, failed: u64) -> Sample {
        let value = |family: &str| {
            metric_series(page, family)
                .first()
                .map_or(f64::NAN, |(_, v)| *v)
        };
        Sample {
            seconds,
            rss_bytes: value("credgate_process_resident_memory_bytes"),
            open_fds: value("credgate_process_open_fds"),
            tasks: value("credgate_tasks_alive"),
            token_cache: value("credgate_token_cache_entries"),
            helper_cache: value("credgate_helper_cache_entries"),
            in_flight: value("credgate_upstream_in_flight"),
            pulls_done: done,
            pulls_failed: failed,
        }
    }
}

/// What the pullers share: counts, durations, failures.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    failed: AtomicU64,
    durations: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<String>>,
    by_kind: Mutex<Vec<(PullKind, u64, u64)>>,
}

impl Tally {
    fn record(&self, kind: PullKind, took: Duration, outcome: Result<(), String>) {
        let mut by_kind = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match by_kind.iter().position(|(k, _, _)| *k == kind) {
            Some(i) => &mut by_kind[i],
            None => {
                by_kind.push((kind, 0, 0));
                by_kind.last_mut().expect("just pushed")
            }
        };
        match outcome {
            Ok(()) => {
                entry.1 += 1;
                self.done.fetch_add(1, Ordering::Relaxed);
                self.durations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(took);
            }
            Err(message) => {
                entry.2 += 1;
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                if failures.len() < KEPT_FAILURES {
                    failures.push(format!("{}: {message}", kind.name()));
                }
            }
        }
    }
}

/// The images of the run and who may pull them.
pub struct Images {
    /// registry.test/group/sub/… (the path-scoped deploy token).
    pub scoped: Vec<PushedImage>,
    /// More of those, which the soak never pulls: a fault test pulls each for the first
    /// time while its fault lasts, so no cached token hides the fault.
    pub cold: Vec<PushedImage>,
    /// registry.test/other/app (another user's token, from a docker config file).
    pub other: PushedImage,
    /// basic.test/team/app (HTTP Basic).
    pub basic: PushedImage,
    /// second.test/helper/app (a docker credential helper).
    pub helper: PushedImage,
    /// The sandbox (pause) image.
    pub pause: PushedImage,
}

impl Images {
    /// Every image but the pause image.
    pub fn all(&self) -> Vec<&PushedImage> {
        let mut all: Vec<&PushedImage> = self.scoped.iter().collect();
        all.extend([&self.other, &self.basic, &self.helper]);
        all
    }

    /// Those whose host has one credential: what a docker credential helper, asked for a
    /// host alone, can answer for (registry.test's path-scoped deploy token is not).
    pub fn one_per_host(&self) -> Vec<&PushedImage> {
        vec![&self.other, &self.basic, &self.helper]
    }

    /// Those `credgate pull` can reach with the config alone (the helper is on the daemon's
    /// PATH only).
    pub fn without_helper(&self) -> Vec<&PushedImage> {
        let mut all: Vec<&PushedImage> = self.scoped.iter().collect();
        all.extend([&self.other, &self.basic]);
        all
    }
}

/// The registries, credgate, containerd and clients a soak (or a fault test) pulls through.
pub struct Rig {
    pub tokens: crate::token_server::TokenServer,
    pub registry: Registry,
    pub basic: Registry,
    pub second: Registry,
    pub images: Images,
    pub daemon: CredgateDaemon,
    pub containerd: Containerd,
    /// crane's environment: every registry's `credHelpers` is credgate.
    pub crane: ClientEnv,
    /// The docker config source (registry.test/other).
    pub docker_config: DockerConfigMount,
    helper_dir: tempfile::TempDir,
}

/// How a [`Rig`] is set up; [`RigOptions::default`] is the soak's.
#[derive(Clone, Debug, Default)]
pub struct RigOptions {
    /// `[helpers] timeout` (credgate's default when `None`).
    pub helper_timeout: Option<&'static str>,
    /// Seconds the token server's tokens live (its default when `None`).
    pub token_lifetime: Option<u64>,
    /// second.test's credential comes from a kubelet credential provider plugin instead of
    /// the docker credential helper.
    pub kubelet_provider: bool,
    /// More environment for `credgate serve`.
    pub daemon_env: Vec<(String, String)>,
}

/// What the helper and the plugin answer with: [`Rig::set_mode`] writes it to a file they
/// read on every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperMode {
    Serve,
    /// Sleeps for an hour.
    Hang,
    /// Kills itself with SIGSEGV.
    Crash,
    /// Prints what is not JSON.
    Garbage,
}

impl HelperMode {
    fn word(self) -> &'static str {
        match self {
            HelperMode::Serve => "serve",
            HelperMode::Hang => "hang",
            HelperMode::Crash => "crash",
            HelperMode::Garbage => "garbage",
        }
    }
}

/// The shell lines that act out the mode in `$MODE_FILE`, before a helper or plugin answers.
fn mode_prelude(mode_file: &Path) -> String {
    format!(
        "case \"$(cat {:?} 2>/dev/null)\" in\n  \
         hang) exec sleep 3600 ;;\n  crash) kill -SEGV $$ ;;\n  \
         garbage) echo 'this is not JSON {{{{'; exit 0 ;;\nesac\n",
        mode_file.display().to_string()
    )
}

/// The docker credential helper credgate runs for second.test: a real program on the
/// daemon's PATH, answering `get` as docker's helpers do.
fn write_helper(dir: &Path) {
    let script = format!(
        "#!/bin/sh\n{}read -r server\ncase \"$1:$server\" in\n  \
         get:second.test|get:https://second.test) printf '{{\"ServerURL\":\"%s\",\"Username\":\"{HELPER_USER}\",\"Secret\":\"{HELPER_PW}\"}}' \"$server\" ;;\n  \
         get:*) echo 'credentials not found in native keychain'; exit 1 ;;\n  \
         list:*) echo '{{}}' ;;\n  *) exit 1 ;;\nesac\n",
        mode_prelude(&dir.join("mode"))
    );
    crate::attack::write_file(&dir.join("docker-credential-soak"), &script, 0o755);
}

/// A kubelet credential provider plugin for second.test and its CredentialProviderConfig;
/// the `[[kubelet_provider]]` entry naming them.
fn write_kubelet_provider(dir: &Path) -> String {
    let bin = dir.join("kubelet-plugins");
    std::fs::create_dir_all(&bin).expect("mkdir plugin dir");
    let script = format!(
        "#!/bin/sh\n{}cat >/dev/null\nprintf '%s' '{{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"CredentialProviderResponse\",\"cacheKeyType\":\"Registry\",\"cacheDuration\":\"1s\",\"auth\":{{\"second.test\":{{\"username\":\"{HELPER_USER}\",\"password\":\"{HELPER_PW}\"}}}}}}'\n",
        mode_prelude(&dir.join("mode"))
    );
    crate::attack::write_file(&bin.join("soak-provider"), &script, 0o755);
    let config = dir.join("credential-provider.yaml");
    crate::attack::write_file(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  \
         - name: soak-provider\n    matchImages: [\"second.test\"]\n    defaultCacheDuration: 1s\n    \
         apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
        0o644,
    );
    format!(
        "[[kubelet_provider]]\nconfig = {:?}\nbin_dir = {:?}\n",
        config.display().to_string(),
        bin.display().to_string()
    )
}

/// The docker config credgate reads, laid out as kubelet mounts a Secret: `config.json` is
/// a link through `..data`, a link to a dated dir that [`Rig::swap_docker_config`] replaces.
pub struct DockerConfigMount {
    pub dir: PathBuf,
    swaps: AtomicU64,
}

impl DockerConfigMount {
    fn new(dir: PathBuf, config: &DockerConfig) -> DockerConfigMount {
        std::fs::create_dir_all(&dir).expect("mkdir docker config dir");
        let mount = DockerConfigMount {
            dir,
            swaps: AtomicU64::new(0),
        };
        mount.swap(config);
        std::os::unix::fs::symlink("..data/config.json", mount.path()).expect("link config.json");
        mount
    }

    /// The path credgate is given.
    pub fn path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Writes `config` into a new dated dir and points `..data` at it with one rename, as
    /// kubelet updates a Secret volume.
    pub fn swap(&self, config: &DockerConfig) {
        let n = self.swaps.fetch_add(1, Ordering::Relaxed);
        let version = format!("..v{n}");
        let version_dir = self.dir.join(&version);
        std::fs::create_dir_all(&version_dir).expect("mkdir version dir");
        crate::attack::write_file(
            &version_dir.join("config.json"),
            &config.to_json().to_string(),
            0o600,
        );
        let temporary = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(&version, &temporary).expect("link ..data_tmp");
        std::fs::rename(&temporary, self.dir.join("..data")).expect("swap ..data");
    }

    /// Rewrites the file `..data` points at in place (truncate, then write), as `docker
    /// login` on a plain file does.
    pub fn rewrite_in_place(&self, config: &DockerConfig) {
        std::fs::write(self.path(), config.to_json().to_string()).expect("rewrite config.json");
    }
}

/// The docker config the soak starts with: `other`'s login to registry.test.
pub fn other_login() -> DockerConfig {
    DockerConfig::new().auth("registry.test", "other", OTHER_PW)
}

impl Rig {
    /// [`Rig::start_with`] the soak's options.
    pub fn start() -> Rig {
        Self::start_with(&RigOptions::default())
    }

    /// Starts everything: the GitLab stand-in (registry.test and auth.test), basic.test,
    /// second.test, the images, `credgate serve` with four sources, and containerd 2.1 with
    /// credgate installed (the pause image pulled through it).
    pub fn start_with(options: &RigOptions) -> Rig {
        let mut token_server = gitlab::token_server_builder();
        if let Some(seconds) = options.token_lifetime {
            token_server = token_server.lifetime(seconds);
        }
        let tokens = token_server.start();
        let registry = Registry::start(tokens.registry_auth(), gitlab::REGISTRY_HOST);
        let basic = Registry::start(RegistryAuth::basic(&[("alice", ALICE_PW)]), "basic.test");
        let second = Registry::start(
            RegistryAuth::basic(&[(HELPER_USER, HELPER_PW)]),
            "second.test",
        );
        let scoped = ["app", "tool", "web"]
            .iter()
            .map(|name| {
                push_image(
                    "registry.test",
                    &format!("group/sub/{name}"),
                    "v1",
                    "deploy",
                    DEPLOY_PW,
                )
            })
            .collect();
        let cold = (0..COLD_IMAGES)
            .map(|i| {
                push_image(
                    "registry.test",
                    &format!("group/sub/cold{i}"),
                    "v1",
                    "deploy",
                    DEPLOY_PW,
                )
            })
            .collect();
        let images = Images {
            scoped,
            cold,
            other: push_image("registry.test", "other/app", "v1", "other", OTHER_PW),
            basic: push_image("basic.test", "team/app", "v1", "alice", ALICE_PW),
            helper: push_image("second.test", "helper/app", "v1", HELPER_USER, HELPER_PW),
            pause: push_image(
                "registry.test",
                "group/sub/pause",
                "3.10",
                "deploy",
                DEPLOY_PW,
            ),
        };
        let helper_dir = tempfile::tempdir().expect("helper dir");
        write_helper(helper_dir.path());
        let docker_config =
            DockerConfigMount::new(helper_dir.path().join("docker"), &other_login());
        let second_source = if options.kubelet_provider {
            write_kubelet_provider(helper_dir.path())
        } else {
            "[[registry]]\nmatch = \"second.test\"\nhelper = \"soak\"\n".to_string()
        };
        // A kubelet provider names no host to credgate, so the loopback test host must be
        // allowed by name.
        let allow_private = if options.kubelet_provider {
            "allow_private = [\"second.test\"]\n"
        } else {
            ""
        };
        let helpers = options
            .helper_timeout
            .map_or(String::new(), |t| format!("[helpers]\ntimeout = {t:?}\n\n"));
        let env: Vec<(&str, &str)> = options
            .daemon_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let daemon = CredgateDaemon::start_with_env(
            &format!(
                "[upstream]\nallow_realm_hosts = [\"auth.test\"]\n{allow_private}\n{helpers}\
                 [[registry]]\nmatch = \"registry.test/group/sub\"\nusername = \"deploy\"\npassword = \"{DEPLOY_PW}\"\n\n\
                 [[registry]]\nmatch = \"basic.test\"\nusername = \"alice\"\npassword = \"{ALICE_PW}\"\n\n\
                 {second_source}\n\
                 [[docker_config]]\npath = {:?}\n",
                docker_config.path().display().to_string()
            ),
            helper_dir.path(),
            &env,
        );
        let mut containerd = Containerd::configure(CONTAINERD, &images.pause.reference);
        containerd
            .install_credgate(&daemon.config_path())
            .assert_success();
        containerd.start();
        let crane_config = ["registry.test", "basic.test", "second.test"]
            .iter()
            .fold(DockerConfig::new(), |config, host| {
                config.cred_helper(host, "credgate")
            });
        let crane = daemon.client_env(&crane_config);
        Rig {
            tokens,
            registry,
            basic,
            second,
            images,
            daemon,
            containerd,
            crane,
            docker_config,
            helper_dir,
        }
    }

    /// What the helper (or plugin) for second.test does from its next run on.
    pub fn set_mode(&self, mode: HelperMode) {
        crate::attack::write_file(&self.helper_dir.path().join("mode"), mode.word(), 0o644);
    }

    /// The dir holding `docker-credential-soak` and the docker config (config.json).
    pub fn helper_dir(&self) -> &Path {
        self.helper_dir.path()
    }

    /// One pull of `image` by `kind`, as puller `puller` makes it; Ok once the content was
    /// checked against the pushed digest.
    pub fn pull(
        &self,
        kind: PullKind,
        puller: usize,
        cri: &CriClient,
        image: &PushedImage,
    ) -> Result<(), String> {
        match kind {
            PullKind::Cri => {
                cri.pull_image(&image.reference, None)
                    .map_err(|s| format!("{}: {}", image.reference, s.message()))?;
                self.check_cri(cri, image)
            }
            PullKind::Sandbox => {
                let pause = &self.images.pause;
                cri.remove_image(&pause.reference)
                    .map_err(|s| format!("RemoveImage: {}", s.message()))?;
                // The sandbox itself fails after the pull (the runtime is absent on purpose).
                let sandbox = cri.run_pod_sandbox(&format!("soak-{puller}"));
                self.check_cri(cri, pause)
                    .map_err(|e| format!("{e} (RunPodSandbox: {sandbox:?})"))
            }
            PullKind::Ctr => self.ctr_pull(puller, image),
            PullKind::CredgatePull => {
                let namespace = format!("soak-cg-{puller}");
                let mut command = self.credgate_command();
                command
                    .args([
                        "pull",
                        "--no-progress",
                        "--namespace",
                        &namespace,
                        "--address",
                    ])
                    .arg(self.containerd.socket())
                    .arg(&image.reference);
                let output = run_bounded(&mut command, self.daemon.dir(), Duration::from_secs(120));
                if !output.success() {
                    return Err(one_line(&output.combined()));
                }
                self.check_ctr_image(&namespace, image)
            }
            PullKind::HelperGet => {
                let output = self.crane.run(Client::Crane, &["digest", &image.reference]);
                match output.stdout.trim() {
                    _ if !output.success() => Err(one_line(&output.combined())),
                    digest if digest == image.digest => Ok(()),
                    digest => Err(format!("{}: wrong digest {digest}", image.reference)),
                }
            }
            PullKind::Endpoint => self.endpoint_pull(image),
        }
    }

    /// The manifest and every blob through the endpoint, as containerd asks for them, each
    /// checked against its digest; a failure says the status and what credgate answered.
    pub fn endpoint_pull(&self, image: &PushedImage) -> Result<(), String> {
        let (host, rest) = image.reference.split_once('/').expect("host/repo");
        let (repository, tag) = rest.rsplit_once(':').expect("repo:tag");
        let get = |path: String| -> Result<bytes::Bytes, String> {
            let mirror = self.daemon.mirror;
            // A refused connection is an answer too (credgate down), without a panic.
            if let Err(e) = std::net::TcpStream::connect(mirror) {
                return Err(format!("GET {path}: connect {mirror}: {e}"));
            }
            let path = format!("{path}?ns={host}");
            let response = std::panic::catch_unwind(|| {
                crate::mirror::get(mirror, crate::daemon::MIRROR_SECRET, &path)
            })
            .map_err(|panic| format!("GET {path}: {}", panic_text(panic.as_ref())))?;
            match (response.status, response.body) {
                (200, Ok(body)) => Ok(body),
                (status, Ok(body)) => Err(format!(
                    "GET {path}: {status} {}",
                    one_line(&String::from_utf8_lossy(&body))
                )),
                (status, Err(e)) => Err(format!("GET {path}: {status}, body broke off: {e}")),
            }
        };
        let manifest = get(format!("/v2/{repository}/manifests/{tag}"))?;
        if crate::images::sha256(&manifest) != image.digest {
            return Err(format!(
                "{}: wrong content (manifest digest)",
                image.reference
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| format!("{}: manifest is not JSON: {e}", image.reference))?;
        let blobs = std::iter::once(&json["config"])
            .chain(json["layers"].as_array().into_iter().flatten())
            .filter_map(|d| d["digest"].as_str());
        for digest in blobs {
            let blob = get(format!("/v2/{repository}/blobs/{digest}"))?;
            if crate::images::sha256(&blob) != digest {
                return Err(format!(
                    "{}: wrong content (blob {digest})",
                    image.reference
                ));
            }
        }
        Ok(())
    }

    /// `credgate --config <daemon config>` with the system PATH.
    fn credgate_command(&self) -> Command {
        let mut command = Command::new(crate::credgate_binary());
        command
            .arg("--config")
            .arg(self.daemon.config_path())
            .env_clear()
            .env("PATH", DAEMON_PATH);
        command
    }

    /// The image is in the CRI's store under the pushed manifest digest.
    fn check_cri(&self, cri: &CriClient, image: &PushedImage) -> Result<(), String> {
        let status = cri
            .image_status(&image.reference)
            .map_err(|s| format!("ImageStatus: {}", s.message()))?
            .ok_or_else(|| format!("{}: not in the CRI store after the pull", image.reference))?;
        if status.repo_digests.contains(&image.by_digest()) {
            Ok(())
        } else {
            Err(format!(
                "{}: wrong content, repo digests {:?}",
                image.reference, status.repo_digests
            ))
        }
    }

    fn ctr(&self, namespace: &str, args: &[&str]) -> crate::process::CommandOutput {
        let mut command = Command::new(containerd::binary(CONTAINERD, "ctr"));
        command
            .arg("--address")
            .arg(self.containerd.socket())
            .args(["--namespace", namespace])
            .args(args)
            .env_clear()
            .env("PATH", DAEMON_PATH);
        run_bounded(&mut command, self.daemon.dir(), Duration::from_secs(120))
    }

    /// `ctr image pull --hosts-dir` in the puller's own namespace, checked, then removed
    /// (`--sync`: its content is collected, so the next pull fetches the blobs again).
    fn ctr_pull(&self, puller: usize, image: &PushedImage) -> Result<(), String> {
        let namespace = format!("soak-{puller}");
        let hosts_dir = self.containerd.hosts_dir().display().to_string();
        let output = self.ctr(
            &namespace,
            &["image", "pull", "--hosts-dir", &hosts_dir, &image.reference],
        );
        if !output.success() {
            return Err(one_line(&output.combined()));
        }
        self.check_ctr_image(&namespace, image)?;
        self.ctr_remove(&namespace, image);
        Ok(())
    }

    fn check_ctr_image(&self, namespace: &str, image: &PushedImage) -> Result<(), String> {
        let filter = format!("name=={}", image.reference);
        let listed = self.ctr(namespace, &["image", "ls", &filter]);
        if listed.stdout.contains(&image.digest) {
            Ok(())
        } else {
            Err(format!(
                "{}: wrong or no content in namespace {namespace}: {}",
                image.reference,
                one_line(&listed.combined())
            ))
        }
    }

    fn ctr_remove(&self, namespace: &str, image: &PushedImage) {
        self.ctr(namespace, &["image", "rm", "--sync", &image.reference]);
    }
}

/// What a caught panic said.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no answer".to_string())
}

/// The last non-empty line of a command's output (where ctr and credgate say why).
pub fn one_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("---"))
        .unwrap_or("(no output)")
        .chars()
        .take(600)
        .collect()
}

/// The `q` quantile (0..=1) of `durations`, nearest rank; zero for none.
pub fn quantile(durations: &[Duration], q: f64) -> Duration {
    if durations.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = durations.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What a soak run found.
pub struct Report {
    pub minutes: f64,
    pub samples: Vec<Sample>,
    /// The sample warm-up ends with (RSS growth is measured from it).
    pub warm: Sample,
    /// Before any pull, and after the pulls stopped and the settle wait.
    pub baseline: Sample,
    pub end: Sample,
    pub p50: Duration,
    pub p99: Duration,
    pub by_kind: Vec<(PullKind, u64, u64)>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn done(&self) -> u64 {
        self.by_kind.iter().map(|(_, ok, _)| ok).sum()
    }

    pub fn failed(&self) -> u64 {
        self.by_kind.iter().map(|(_, _, failed)| failed).sum()
    }

    pub fn peak_rss(&self) -> f64 {
        self.samples.iter().map(|s| s.rss_bytes).fold(0.0, f64::max)
    }

    /// RSS at the last sample under load against the end of warm-up, in percent.
    pub fn rss_growth_percent(&self) -> f64 {
        let last = self
            .samples
            .iter()
            .rev()
            .find(|s| s.seconds <= self.minutes * 60.0)
            .unwrap_or(&self.warm);
        (last.rss_bytes - self.warm.rss_bytes) / self.warm.rss_bytes * 100.0
    }

    /// Why the run missed its targets; empty when it met them all.
    pub fn missed(&self) -> Vec<String> {
        let mut missed = Vec::new();
        if self.failed() > 0 {
            missed.push(format!("{} pulls failed (target 0)", self.failed()));
        }
        if self.done() == 0 {
            missed.push("no pull was done".to_string());
        }
        if self.rss_growth_percent() >= 5.0 {
            missed.push(format!(
                "RSS grew {:.1} % after warm-up (target < 5 %)",
                self.rss_growth_percent()
            ));
        }
        if self.end.open_fds > self.baseline.open_fds {
            missed.push(format!(
                "{} fds at the end, {} at the start",
                self.end.open_fds, self.baseline.open_fds
            ));
        }
        if self.end.tasks > self.baseline.tasks {
            missed.push(format!(
                "{} tasks at the end, {} at the start",
                self.end.tasks, self.baseline.tasks
            ));
        }
        missed
    }

    /// The table the soak prints and the README shows (Markdown).
    pub fn table(&self) -> String {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "| soak ({} min, {PULLERS} pullers) | figure | target |",
            self.minutes
        );
        let _ = writeln!(text, "| --- | --- | --- |");
        let _ = writeln!(text, "| pulls done | {} | |", self.done());
        let _ = writeln!(text, "| pulls failed | {} | 0 |", self.failed());
        let _ = writeln!(
            text,
            "| pull time p50 / p99 | {:.2} s / {:.2} s | |",
            self.p50.as_secs_f64(),
            self.p99.as_secs_f64()
        );
        let _ = writeln!(
            text,
            "| RSS start / after warm-up / peak / end | {:.1} / {:.1} / {:.1} / {:.1} MiB | growth after warm-up < 5 % (was {:.1} %) |",
            mib(self.baseline.rss_bytes),
            mib(self.warm.rss_bytes),
            mib(self.peak_rss()),
            mib(self.end.rss_bytes),
            self.rss_growth_percent()
        );
        let _ = writeln!(
            text,
            "| open fds start / peak / end | {} / {} / {} | end ≤ start |",
            self.baseline.open_fds,
            self.samples.iter().map(|s| s.open_fds).fold(0.0, f64::max),
            self.end.open_fds
        );
        let _ = writeln!(
            text,
            "| tokio tasks start / peak / end | {} / {} / {} | end ≤ start |",
            self.baseline.tasks,
            self.samples.iter().map(|s| s.tasks).fold(0.0, f64::max),
            self.end.tasks
        );
        let _ = writeln!(
            text,
            "| token cache / helper cache at end | {} / {} | bounded |",
            self.end.token_cache, self.end.helper_cache
        );
        for (kind, ok, failed) in &self.by_kind {
            let _ = writeln!(text, "| {} | {ok} done, {failed} failed | |", kind.name());
        }
        text
    }

    /// The samples as CSV.
    pub fn csv(&self) -> String {
        let mut text = String::from(
            "seconds,rss_bytes,open_fds,tasks,token_cache,helper_cache,in_flight,pulls_done,pulls_failed\n",
        );
        for s in &self.samples {
            let _ = writeln!(
                text,
                "{:.0},{},{},{},{},{},{},{},{}",
                s.seconds,
                s.rss_bytes,
                s.open_fds,
                s.tasks,
                s.token_cache,
                s.helper_cache,
                s.in_flight,
                s.pulls_done,
                s.pulls_failed
            );
        }
        text
    }
}

/// Runs the soak for `minutes` and returns what it found (nothing is asserted here).
pub fn run(minutes: f64) -> Report {
    crate::node::node();
    let rig = Arc::new(Rig::start());
    let page = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rig.daemon.metrics_page()))
            .unwrap_or_else(|_| String::from("# the metrics page did not answer\n"))
    };
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let baseline = Sample::read(&page(), 0.0, 0, 0);
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let pullers: Vec<_> = (0..PULLERS)
        .map(|index| {
            let (rig, tally, stop) = (rig.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let cri = CriClient::connect(&rig.containerd.socket());
                let kind = PullKind::of_puller(index);
                let images = match kind {
                    PullKind::CredgatePull => rig.images.without_helper(),
                    PullKind::HelperGet => rig.images.one_per_host(),
                    _ => rig.images.all(),
                };
                let mut round = index;
                // Pullers come in over 6.4 s, as a node's pulls do, not all in one instant.
                std::thread::sleep(RAMP_STEP * index as u32);
                while !stop.load(Ordering::Relaxed) {
                    let image = images[round % images.len()];
                    let began = Instant::now();
                    let outcome = rig.pull(kind, index, &cri, image);
                    tally.record(kind, began.elapsed(), outcome);
                    round += 1;
                }
            })
        })
        .collect();
    let mut samples = vec![baseline];
    let mut next = started + SAMPLE_EVERY;
    while started.elapsed() < run_for {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += SAMPLE_EVERY;
        let (done, failed) = (
            tally.done.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
        );
        let sample = Sample::read(&page(), started.elapsed().as_secs_f64(), done, failed);
        eprintln!(
            "soak {:>5.0} s: {done} pulls done, {failed} failed, RSS {:.1} MiB, {} fds, {} tasks, {} in flight",
            sample.seconds,
            sample.rss_bytes / 1048576.0,
            sample.open_fds,
            sample.tasks,
            sample.in_flight
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for puller in pullers {
        if puller.join().is_err() {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Idle connections close in their own time: wait (bounded) for the baseline.
    let settle_until = Instant::now() + SETTLE;
    let (done, failed) = (
        tally.done.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let mut end = Sample::read(&page(), started.elapsed().as_secs_f64(), done, failed);
    while (end.open_fds > baseline.open_fds || end.tasks > baseline.tasks)
        && Instant::now() < settle_until
    {
        std::thread::sleep(Duration::from_secs(2));
        end = Sample::read(&page(), started.elapsed().as_secs_f64(), done, failed);
    }
    samples.push(end);
    if end.open_fds > baseline.open_fds || end.tasks > baseline.tasks {
        eprintln!(
            "--- connections credgate still holds ---\n{}",
            held_connections(&rig)
        );
    }
    if tally.failed.load(Ordering::Relaxed) > 0 {
        // What containerd and credgate said about the failures, for whoever reads the run.
        for (name, log) in [
            ("containerd", rig.containerd.log()),
            ("credgate", rig.daemon.log()),
        ] {
            let errors: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("level=error") || l.contains(" ERROR ") || l.contains(" WARN ")
                })
                .collect();
            eprintln!(
                "--- {name}: {} error and warning lines, the first 30 ---",
                errors.len()
            );
            for line in errors.iter().take(30) {
                eprintln!("{line}");
            }
        }
    }
    let warm_up = (run_for / 4).min(Duration::from_secs(300)).as_secs_f64();
    let warm = samples
        .iter()
        .find(|s| s.seconds >= warm_up)
        .copied()
        .unwrap_or(baseline);
    let durations = tally
        .durations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut by_kind = tally
        .by_kind
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    by_kind.sort_by_key(|(kind, _, _)| PullKind::ALL.iter().position(|k| k == kind));
    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Report {
        minutes,
        samples,
        warm,
        baseline,
        end,
        p50: quantile(&durations, 0.50),
        p99: quantile(&durations, 0.99),
        by_kind,
        failures,
    }
}

/// The TCP connections `credgate serve` holds, from `ss -tanp`.
fn held_connections(rig: &Rig) -> String {
    let pid = format!("pid={},", rig.daemon.pid());
    let mut command = Command::new(crate::require_program("ss", "iproute2"));
    command.args(["-tanp"]);
    let output = run_bounded(&mut command, rig.daemon.dir(), Duration::from_secs(10));
    output
        .stdout
        .lines()
        .filter(|l| l.contains(&pid))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `soak.md` (the table), `soak.csv` and `soak.svg` into `dir`.
pub fn write_report(report: &Report, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("soak.md", report.table()),
        ("soak.csv", report.csv()),
        ("soak.svg", plot(&report.samples)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// One panel of the plot: its title, its points (seconds, value) and its colour.
type Panel = (&'static str, Vec<(f64, f64)>, &'static str);

/// An SVG of RSS, open fds and throughput (pulls per minute) over time, one panel each.
pub fn plot(samples: &[Sample]) -> String {
    const WIDTH: f64 = 760.0;
    const PANEL: f64 = 150.0;
    const LEFT: f64 = 70.0;
    const GAP: f64 = 40.0;
    let throughput: Vec<(f64, f64)> = samples
        .windows(2)
        .filter(|w| w[1].seconds > w[0].seconds)
        .map(|w| {
            let pulls = w[1].pulls_done.saturating_sub(w[0].pulls_done) as f64;
            (w[1].seconds, pulls / (w[1].seconds - w[0].seconds) * 60.0)
        })
        .collect();
    let series = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter(|s| f(s).is_finite())
            .map(|s| (s.seconds, f(s)))
            .collect()
    };
    let panels: [Panel; 3] = [
        ("RSS (MiB)", series(|s| s.rss_bytes / 1048576.0), "#1f77b4"),
        ("open fds", series(|s| s.open_fds), "#d62728"),
        ("pulls per minute", throughput, "#2ca02c"),
    ];
    let end = samples.iter().map(|s| s.seconds).fold(1.0, f64::max);
    let height = 3.0 * (PANEL + GAP) + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        WIDTH + LEFT + 20.0
    );
    for (i, (title, points, colour)) in panels.iter().enumerate() {
        let top = GAP + i as f64 * (PANEL + GAP);
        let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
        let x = |t: f64| LEFT + t / end * WIDTH;
        let y = |v: f64| top + PANEL - v / max * PANEL;
        let _ = writeln!(
            svg,
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n\
             <rect x=\"{LEFT}\" y=\"{top}\" width=\"{WIDTH}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.0}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
            top - 6.0,
            LEFT - 6.0,
            top + 12.0,
            LEFT - 6.0,
            top + PANEL
        );
        let path: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"{}\">0 s</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{end:.0} s</text>\n</svg>",
        height - 8.0,
        LEFT + WIDTH,
        height - 8.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let durations: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&durations, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&durations, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_sample_reads_the_gauges_off_the_page() {
        let page = "credgate_process_resident_memory_bytes 2097152\n\
                    credgate_process_open_fds 17\ncredgate_tasks_alive 9\n";
        let sample = Sample::read(page, 10.0, 3, 0);
        assert_eq!(sample.rss_bytes, 2097152.0);
        assert_eq!(sample.open_fds, 17.0);
        assert_eq!(sample.tasks, 9.0);
        assert!(sample.token_cache.is_nan());
    }

    #[test]
    fn every_puller_kind_is_used_and_one_puller_runs_sandboxes() {
        let kinds: Vec<PullKind> = (0..PULLERS).map(PullKind::of_puller).collect();
        for kind in PullKind::ALL {
            assert!(kinds.contains(&kind), "{kind:?}");
        }
        assert_eq!(kinds.iter().filter(|k| **k == PullKind::Sandbox).count(), 1);
    }

    fn report(failed: u64, end_fds: f64, end_rss: f64) -> Report {
        let sample = |seconds, rss, fds| Sample {
            seconds,
            rss_bytes: rss,
            open_fds: fds,
            tasks: 5.0,
            ..Sample::default()
        };
        let samples = vec![
            sample(0.0, 10.0, 20.0),
            sample(30.0, 100.0, 60.0),
            sample(120.0, end_rss, 60.0),
            sample(200.0, end_rss, end_fds),
        ];
        Report {
            minutes: 2.0,
            warm: samples[1],
            baseline: samples[0],
            end: samples[3],
            samples,
            p50: Duration::from_secs(1),
            p99: Duration::from_secs(2),
            by_kind: vec![(PullKind::Cri, 10, failed)],
            failures: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_names_each_missed_target() {
        assert!(report(0, 20.0, 104.0).missed().is_empty());
        let missed = report(2, 21.0, 106.0).missed();
        assert_eq!(missed.len(), 3, "{missed:?}");
        assert!(missed[0].contains("2 pulls failed"), "{missed:?}");
        assert!(missed[1].contains("RSS grew 6.0 %"), "{missed:?}");
        assert!(missed[2].contains("21 fds"), "{missed:?}");
    }

    #[test]
    fn the_plot_has_three_panels_and_a_line_each() {
        let svg = plot(&report(0, 20.0, 104.0).samples);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(svg.contains("RSS (MiB)") && svg.contains("pulls per minute"));
    }
}
