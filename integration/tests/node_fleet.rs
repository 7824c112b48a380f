//! The fleet artifacts for real (issue 12): the image `bash packaging/build.sh` wrote is
//! pushed to the node's registry, pulled by containerd 2.1 and run with `ctr run` (runc from
//! Debian) exactly as the DaemonSet of `deploy/kubernetes` runs it: each container's command,
//! host network, mounts, read-only root, capabilities and limits are read from the manifest
//! (`credgate_integration::fleet`). Then, as the issue asks:
//!
//! - the init step writes `_default/hosts.toml`, and never config.toml: when `config_path` is
//!   unset or a list it says so in its output, in the daemon's log and on `/healthz`;
//! - a CRI pull of a private image succeeds through the running container with the
//!   credential of a mounted `dockerconfigjson` file;
//! - swapping that file as kubelet does (`..data` symlink) changes the credential the next
//!   pull uses, with no restart;
//! - stopping the container (preStop then SIGTERM, or a SIGKILL) leaves public pulls working;
//! - the container started again without the init step (a liveness-probe restart: kubelet
//!   runs preStop, then starts the container alone) writes `_default/hosts.toml` again, and a
//!   private pull goes through it.
//!
//! And the Debian package installs, upgrades, is removed and purged in a throwaway Debian root
//! (`dpkg --root`, a bookworm root integration/test-all.sh makes with mmdebstrap).
//!
//! A node test: `bash packaging/build.sh && cargo build --bin credgate && unshare --mount
//! --net -- cargo test -p credgate-integration --test node_fleet` (integration/test-all.sh).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use credgate_integration::clients::{Client, ClientEnv, DockerConfig};
use credgate_integration::containerd::Containerd;
use credgate_integration::cri::CriClient;
use credgate_integration::fleet::{
    bind_mount, deb, image_archive, private_node_root, BindMount, KubeletVolume, Manifests, Pod,
};
use credgate_integration::images::push_image;
use credgate_integration::node::{node, CA_BUNDLE};
use credgate_integration::process::{run_bounded, CommandOutput, DAEMON_PATH};
use credgate_integration::registry::{Registry, RegistryAuth};
use credgate_integration::token_server::{TokenServer, TokenUser};

const ALICE_PW: &str = "alice-fleet-pw-5c1";
const BOB_PW: &str = "bob-fleet-pw-9e2";
/// The one node path the pod's hostPath volumes and containerd agree on.
const HOSTS_DIR: &str = "/etc/containerd/certs.d";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Where integration/test-all.sh keeps the throwaway Debian root for the package test.
const DEBIAN_ROOT: &str = "/var/cache/credgate-test/debian-root/bookworm-essential.tar";

/// The tests that run the pod share the node's /etc/containerd, /run/credgate and the
/// ports in the ConfigMap's config: one at a time.
static POD_ON_THE_NODE: Mutex<()> = Mutex::new(());

/// What a test node adds to the ConfigMap's config.toml: its registries live on loopback
/// addresses, which credgate refuses to dial unless told, and GitLab-like token servers sit
/// on a domain of their own. A real cluster's registries need neither.
const TEST_NODE_UPSTREAM: &str = "\n[upstream]\nallow_private = [\"registry.test\", \"auth.test\", \"open.test\"]\nallow_realm_hosts = [\"auth.test\"]\n";

/// A `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson` for one login.
fn dockerconfigjson(registry: &str, user: &str, password: &str) -> Vec<u8> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({"auths": {registry: {"auth": auth}}})
        .to_string()
        .into_bytes()
}

/// The node's registries: `registry.test` (tokens from `auth.test`, where alice may pull
/// `team/one` and bob `team/two`), and `open.test`, anonymous, with the credgate image and a
/// public image.
struct Registries {
    tokens: TokenServer,
    _private: Registry,
    _open: Registry,
    credgate_image: String,
    one: String,
    two: String,
    /// A tag of `team/two` no pull has resolved before the restart.
    two_later: String,
    public: String,
    public_later: String,
}

impl Registries {
    fn start() -> Registries {
        let tokens = TokenServer::builder("auth.test")
            .user(TokenUser::new("alice", ALICE_PW, &["team/one"]))
            .user(TokenUser::new("bob", BOB_PW, &["team/two"]))
            .start();
        let private = Registry::start(tokens.registry_auth(), "registry.test");
        let open = Registry::start(RegistryAuth::Anonymous, "open.test");
        let one = push_image("registry.test", "team/one", "v1", "alice", ALICE_PW).reference;
        let two = push_image("registry.test", "team/two", "v1", "bob", BOB_PW).reference;
        let two_later = push_image("registry.test", "team/two", "v2", "bob", BOB_PW).reference;
        let public = push_image("open.test", "public/app", "v1", "anyone", "x").reference;
        let public_later = push_image("open.test", "public/app", "v2", "anyone", "x").reference;
        let credgate_image = format!("open.test/credgate/credgate:{}", credgate::VERSION);
        let archive = image_archive();
        ClientEnv::new(&DockerConfig::new())
            .run(
                Client::Skopeo,
                &[
                    "--insecure-policy",
                    "copy",
                    &format!("oci-archive:{}", archive.display()),
                    &format!("docker://{credgate_image}"),
                ],
            )
            .assert_success();
        tokens.clear_requests();
        Registries {
            tokens,
            _private: private,
            _open: open,
            credgate_image,
            one,
            two,
            two_later,
            public,
            public_later,
        }
    }
}

/// containerd 2.1 whose directory is the node's `/etc/containerd` for as long as it lives.
struct NodeContainerd {
    containerd: Containerd,
    _at_etc: BindMount,
}

impl std::ops::Deref for NodeContainerd {
    type Target = Containerd;
    fn deref(&self) -> &Containerd {
        &self.containerd
    }
}

/// containerd 2.1 whose directory is the node's `/etc/containerd` (config.toml, certs.d),
/// with `config_path` as given (a TOML value, or absent), started, and the credgate image
/// pulled into it by `ctr` (straight from the registry: no hosts.toml is involved).
fn node_containerd(config_path: Option<&str>, image: &str) -> NodeContainerd {
    private_node_root();
    let mut containerd = Containerd::configure("2.1", "registry.invalid/pause:never-pulled");
    let dir = containerd
        .config_path()
        .parent()
        .expect("config dir")
        .to_path_buf();
    std::fs::create_dir_all("/etc/containerd").expect("mkdir /etc/containerd");
    let at_etc = bind_mount(&dir, Path::new("/etc/containerd"));
    if let Some(value) = config_path {
        let mut config = std::fs::read_to_string(CONTAINERD_CONFIG).expect("read config.toml");
        config.push_str(&format!(
            "\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = {value}\n"
        ));
        std::fs::write(CONTAINERD_CONFIG, config).expect("write config.toml");
    }
    containerd.start();
    containerd.ctr(&["image", "pull", image]).assert_success();
    NodeContainerd {
        containerd,
        _at_etc: at_etc,
    }
}

/// The pod from the manifest, its ConfigMap from the manifest's generator (plus
/// [`TEST_NODE_UPSTREAM`]) and its pull Secret holding `secret`, both as kubelet lays them
/// out, and the node's CA bundle (the test registries' CA) over the image's.
struct PodVolumes {
    config: KubeletVolume,
    secret: KubeletVolume,
    /// The config the pod runs with, parsed: where its listeners are.
    parsed: credgate::config::Config,
}

fn pod_volumes(manifests: &Manifests, secret: &[u8]) -> PodVolumes {
    let pod = &manifests.pod;
    let config_volume = pod
        .volumes
        .iter()
        .find_map(|v| v.config_map.as_ref())
        .expect("a ConfigMap volume");
    let files = manifests
        .config_maps
        .get(&config_volume.name)
        .unwrap_or_else(|| panic!("kustomization.yaml generates no {}", config_volume.name));
    let text = format!("{}{TEST_NODE_UPSTREAM}", files["config.toml"]);
    let parsed = credgate::config::Config::parse(&text, Path::new("config.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml: {e}"));
    let config = KubeletVolume::new(
        &[("config.toml", text.as_bytes())],
        config_volume.default_mode.unwrap_or(0o644),
    );
    let secret_volume = pod
        .volumes
        .iter()
        .find_map(|v| v.secret.as_ref())
        .expect("a Secret volume");
    let secret = KubeletVolume::new(
        &[(".dockerconfigjson", secret)],
        secret_volume.default_mode.unwrap_or(0o644),
    );
    PodVolumes {
        config,
        secret,
        parsed,
    }
}

fn pod<'a>(
    manifests: &Manifests,
    containerd: &'a Containerd,
    image: &str,
    volumes: &PodVolumes,
) -> Pod<'a> {
    let mut pod = Pod::new(manifests.pod.clone(), containerd, image);
    let names: Vec<(String, bool)> = manifests
        .pod
        .volumes
        .iter()
        .filter(|v| v.host_path.is_none())
        .map(|v| (v.name.clone(), v.config_map.is_some()))
        .collect();
    for (name, is_config) in names {
        let dir = if is_config {
            volumes.config.path()
        } else {
            volumes.secret.path()
        };
        pod.provide_volume(&name, dir);
    }
    pod.add_test_mount(Path::new(CA_BUNDLE), CA_BUNDLE);
    pod
}

/// How many requests for `registry` credgate's endpoint answered 200, from its metrics.
fn served_ok(volumes: &PodVolumes, registry: &str) -> u64 {
    let metrics = credgate_integration::https::plain_get(volumes.parsed.listen.metrics, "/metrics");
    let series =
        format!("credgate_endpoint_requests_total{{registry=\"{registry}\",status=\"200\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.trim().parse().expect("a counter value"))
}

/// The pid `ctr task ls` shows for task `id`.
fn task_pid(containerd: &Containerd, id: &str) -> String {
    let tasks = containerd.ctr(&["task", "ls"]);
    tasks
        .stdout
        .lines()
        .find(|line| line.starts_with(id))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no task {id}: {tasks}"))
        .to_string()
}

/// The scopes the token server granted `user` since it was last cleared.
fn scopes_issued_to(tokens: &TokenServer, user: &str) -> Vec<String> {
    tokens
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(user) && r.status == 200)
        .flat_map(|r| r.scopes)
        .collect()
}

/// The pushed image's config carries the version, and its file system has the binary, the CA
/// bundle and no shell (`crane config`, `crane export`).
fn assert_image_is_labelled_and_has_no_shell(image: &str) {
    let env = ClientEnv::new(&DockerConfig::new());
    let config = env.run(Client::Crane, &["config", image]);
    let config: serde_json::Value =
        serde_json::from_str(&config.assert_success().stdout).expect("image config JSON");
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        credgate::VERSION
    );
    assert!(
        labels["dev.credgate.debian-packages"]
            .as_str()
            .is_some_and(|p| p.contains("libc6=")),
        "{labels}"
    );
    assert_eq!(config["config"]["User"], "0:0");
    let exported = env.scratch().join("rootfs.tar");
    env.run(
        Client::Crane,
        &["export", image, &exported.to_string_lossy()],
    )
    .assert_success();
    let mut archive = tar::Archive::new(std::fs::File::open(&exported).expect("rootfs.tar"));
    let files: Vec<String> = archive
        .entries()
        .expect("tar entries")
        .map(|entry| {
            let entry = entry.expect("tar entry");
            let path = entry.path().expect("entry path").display().to_string();
            path.trim_start_matches("./").to_string()
        })
        .collect();
    for present in ["usr/bin/credgate", "etc/ssl/certs/ca-certificates.crt"] {
        assert!(
            files.iter().any(|f| f == present),
            "no {present} in the image"
        );
    }
    for shell in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "bin/dash",
    ] {
        assert!(!files.iter().any(|f| f == shell), "{shell} in the image");
    }
}

#[test]
fn the_image_runs_the_daemonset_pod_on_containerd_2_1_and_serves_a_rotating_secret() {
    let _node = POD_ON_THE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let manifests = Manifests::load();
    assert_eq!(
        manifests.image_tag,
        credgate::VERSION,
        "kustomization.yaml's image tag is not the crate's version"
    );
    let registries = Registries::start();
    assert_image_is_labelled_and_has_no_shell(&registries.credgate_image);
    let containerd = node_containerd(Some(&format!("'{HOSTS_DIR}'")), &registries.credgate_image);
    let config_before = std::fs::read(CONTAINERD_CONFIG).unwrap();
    let mut volumes = pod_volumes(
        &manifests,
        &dockerconfigjson("registry.test", "alice", ALICE_PW),
    );
    let pod = pod(
        &manifests,
        &containerd,
        &registries.credgate_image,
        &volumes,
    );

    // The init step: _default/hosts.toml, and config.toml only read.
    let init = pod.run_init(&manifests.pod.init_containers[0].name);
    init.assert_success();
    assert!(
        init.combined()
            .contains(&format!("containerd reads hosts.toml from {HOSTS_DIR}")),
        "{init}"
    );
    let default_hosts = Path::new(HOSTS_DIR).join("_default/hosts.toml");
    let hosts_toml = std::fs::read_to_string(&default_hosts).unwrap_or_default();
    assert!(
        hosts_toml.contains(&format!(
            "[host.\"{}\"]",
            volumes.parsed.listen.mirror_url()
        )) && hosts_toml.contains("X-Credgate-Secret"),
        "{}: {hosts_toml}",
        default_hosts.display()
    );
    assert_eq!(std::fs::read(CONTAINERD_CONFIG).unwrap(), config_before);

    let mut serve = pod.start(&manifests.pod.containers[0].name);
    let health = serve.wait_ready();
    assert_eq!(
        health,
        format!("ok\ncontainerd reads hosts.toml from {HOSTS_DIR} (config_path in {CONTAINERD_CONFIG})\n")
    );
    let pid = task_pid(&containerd, &serve.id);

    // A CRI pull with no credentials in the request, as kubelet sends it for a pod without
    // imagePullSecrets: the mounted Secret's credential, through the running container.
    let cri = CriClient::connect(&containerd.socket());
    let before = served_ok(&volumes, "registry.test");
    cri.pull_image(&registries.one, None)
        .unwrap_or_else(|e| panic!("CRI pull of {}: {e:?}\n{}", registries.one, serve.log()));
    assert!(served_ok(&volumes, "registry.test") > before);
    assert_eq!(
        scopes_issued_to(&registries.tokens, "alice"),
        ["repository:team/one:pull"]
    );
    // alice's credential does not reach team/two.
    assert!(cri.pull_image(&registries.two, None).is_err());

    // kubelet updates the Secret's volume: the next pull uses bob's credential, and the
    // daemon is the same process.
    registries.tokens.clear_requests();
    volumes.secret.swap(&[(
        ".dockerconfigjson",
        &dockerconfigjson("registry.test", "bob", BOB_PW),
    )]);
    cri.pull_image(&registries.two, None).unwrap_or_else(|e| {
        panic!(
            "CRI pull of {} after the swap: {e:?}\n{}",
            registries.two,
            serve.log()
        )
    });
    assert_eq!(
        scopes_issued_to(&registries.tokens, "bob"),
        ["repository:team/two:pull"]
    );
    assert!(scopes_issued_to(&registries.tokens, "alice").is_empty());
    assert_eq!(
        task_pid(&containerd, &serve.id),
        pid,
        "credgate was restarted"
    );
    let log = serve.log();
    for secret in [ALICE_PW, BOB_PW] {
        assert!(!log.contains(secret), "a password in the log:\n{log}");
    }

    // Stopped as kubelet stops it: preStop takes the hosts.toml files out, then SIGTERM.
    serve.run_pre_stop().assert_success();
    assert!(
        !default_hosts.exists(),
        "preStop left {}",
        default_hosts.display()
    );
    serve.stop("SIGTERM");
    cri.pull_image(&registries.public, None)
        .unwrap_or_else(|e| panic!("public pull with credgate stopped: {e:?}"));

    // Restarted as kubelet restarts a container that failed its liveness probe: preStop
    // (above) took hosts.toml out, and the init step does not run again. The container's own
    // command writes it back, and pulls go through credgate again.
    let mut restarted = pod.start(&manifests.pod.containers[0].name);
    let health = restarted.wait_ready();
    assert!(
        health.starts_with(&format!(
            "ok\ncontainerd reads hosts.toml from {HOSTS_DIR} "
        )),
        "{health}"
    );
    let hosts_toml = std::fs::read_to_string(&default_hosts).unwrap_or_else(|e| {
        panic!(
            "{} after a restart without the init step: {e}\n{}",
            default_hosts.display(),
            restarted.log()
        )
    });
    assert!(
        hosts_toml.contains(&format!(
            "[host.\"{}\"]",
            volumes.parsed.listen.mirror_url()
        )),
        "{hosts_toml}"
    );
    registries.tokens.clear_requests();
    cri.pull_image(&registries.two_later, None)
        .unwrap_or_else(|e| {
            panic!(
                "CRI pull of {} after the restart: {e:?}\n{}",
                registries.two_later,
                restarted.log()
            )
        });
    assert!(served_ok(&volumes, "registry.test") > 0);
    assert_eq!(
        scopes_issued_to(&registries.tokens, "bob"),
        ["repository:team/two:pull"]
    );
    let mirror_secret = std::fs::read_to_string(&volumes.parsed.listen.mirror_secret_file)
        .expect("the mirror secret on the node");
    let log = restarted.log();
    for secret in [ALICE_PW, BOB_PW, mirror_secret.trim()] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }

    // Crashed, or the DaemonSet deleted without its hook: hosts.toml still names the dead
    // endpoint, and containerd falls back to the registry itself.
    restarted.stop("SIGKILL");
    assert!(default_hosts.exists());
    cri.pull_image(&registries.public_later, None)
        .unwrap_or_else(|e| panic!("public pull with credgate killed: {e:?}"));
    assert_eq!(std::fs::read(CONTAINERD_CONFIG).unwrap(), config_before);
}

#[test]
fn without_a_single_config_path_the_pod_leaves_config_toml_alone_and_says_so() {
    let _node = POD_ON_THE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let manifests = Manifests::load();
    let registries = Registries::start();
    for (config_path, says) in [
        (None, "is unset"),
        (
            Some("'/etc/containerd/certs.d:/etc/docker/certs.d'"),
            "is a list",
        ),
    ] {
        let containerd = node_containerd(config_path, &registries.credgate_image);
        let config = Path::new(CONTAINERD_CONFIG);
        let (bytes, mode) = (
            std::fs::read(config).unwrap(),
            std::fs::metadata(config).unwrap().permissions().mode(),
        );
        let volumes = pod_volumes(
            &manifests,
            &dockerconfigjson("registry.test", "alice", ALICE_PW),
        );
        let pod = pod(
            &manifests,
            &containerd,
            &registries.credgate_image,
            &volumes,
        );
        let init = pod.run_init(&manifests.pod.init_containers[0].name);
        init.assert_success();
        let warning = format!(
            "WARNING: pulls do not go through credgate: config_path in {CONTAINERD_CONFIG} {says}"
        );
        assert!(init.combined().contains(&warning), "{init}");
        assert!(
            init.combined()
                .contains("restart containerd (on the node: a pod cannot)"),
            "{init}"
        );
        assert!(Path::new(HOSTS_DIR).join("_default/hosts.toml").is_file());

        let mut serve = pod.start(&manifests.pod.containers[0].name);
        let health = serve.wait_ready();
        assert!(health.starts_with(&format!("ok\n{warning}")), "{health}");
        assert!(
            serve.log().contains("pulls do not go through credgate"),
            "{}",
            serve.log()
        );
        serve.run_pre_stop().assert_success();
        serve.stop("SIGTERM");
        assert_eq!(std::fs::read(config).unwrap(), bytes, "config.toml changed");
        assert_eq!(
            std::fs::metadata(config).unwrap().permissions().mode(),
            mode
        );
        assert!(!Path::new(HOSTS_DIR).join("_default").exists());
    }
}

// ---------------------------------------------------------------------------------------
// The Debian package
// ---------------------------------------------------------------------------------------

/// `systemctl` in the throwaway root: it records each call, and answers `is-enabled` from the
/// links deb-systemd-helper made, as systemd would (deb-systemd-invoke starts only enabled
/// units).
const SYSTEMCTL_RECORDER: &str = r#"#!/bin/sh
echo "systemctl $*" >>/var/log/systemctl-calls
case " $* " in
*" is-enabled "*)
	for unit; do :; done
	if ls /etc/systemd/system/*.wants/"$unit" >/dev/null 2>&1; then
		echo enabled
	else
		echo disabled
		exit 1
	fi
	;;
esac
exit 0
"#;

/// A throwaway Debian bookworm root (the essential packages, as mmdebstrap makes it), where
/// `dpkg --root` installs and runs maintainer scripts chrooted. `systemctl` there is a
/// recorder: systemd cannot run in a test, and the package's scripts only ask it things.
struct DebianRoot {
    dir: tempfile::TempDir,
}

impl DebianRoot {
    fn new() -> DebianRoot {
        assert!(
            Path::new(DEBIAN_ROOT).is_file(),
            "{DEBIAN_ROOT} is missing: bash integration/test-all.sh (as root) makes it with mmdebstrap"
        );
        let dir = tempfile::tempdir().expect("debian root dir");
        let root = DebianRoot { dir };
        root.host(
            Command::new("tar")
                .arg("-xf")
                .arg(DEBIAN_ROOT)
                .arg("-C")
                .arg(root.path()),
        )
        .assert_success();
        // deb-systemd-invoke acts only when systemd runs (/run/systemd/system exists).
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        // In /usr/sbin, on the scripts' PATH, where deb-systemd-helper does not look for
        // systemctl: it then makes the unit's links itself, as without systemd.
        let recorder = root.path().join("usr/sbin/systemctl");
        std::fs::create_dir_all(recorder.parent().unwrap()).unwrap();
        std::fs::write(&recorder, SYSTEMCTL_RECORDER).unwrap();
        std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn host(&self, command: &mut Command) -> CommandOutput {
        command.env_clear().env("PATH", DAEMON_PATH);
        run_bounded(command, self.path(), Duration::from_secs(120))
    }

    /// `dpkg --root <root> ARGS`.
    fn dpkg(&self, args: &[&str]) -> CommandOutput {
        let mut command = Command::new("dpkg");
        command
            .arg(format!("--root={}", self.path().display()))
            .args(args);
        self.host(&mut command)
    }

    /// A program run inside the root.
    fn chroot(&self, args: &[&str]) -> CommandOutput {
        let mut command = Command::new("chroot");
        command.arg(self.path()).args(args);
        self.host(&mut command)
    }

    fn file(&self, path: &str) -> PathBuf {
        self.path().join(path.trim_start_matches('/'))
    }

    /// The systemctl calls the maintainer scripts made since the last look.
    fn systemctl_calls(&self) -> String {
        let log = self.file("/var/log/systemctl-calls");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        calls
    }

    /// `dpkg -s credgate`'s Status and Version lines.
    fn status(&self) -> String {
        let output = self.dpkg(&["-s", "credgate"]);
        output
            .stdout
            .lines()
            .filter(|l| l.starts_with("Status:") || l.starts_with("Version:"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The package again with `version`: unpacked, its control file's Version bumped, rebuilt.
fn bumped_package(deb: &Path, version: &str, scratch: &Path) -> PathBuf {
    let tree = scratch.join("tree");
    let run = |command: &mut Command| {
        command.env_clear().env("PATH", DAEMON_PATH);
        run_bounded(command, scratch, Duration::from_secs(60)).assert_success();
    };
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let bumped: String = text
        .lines()
        .map(|line| match line.strip_prefix("Version: ") {
            Some(_) => format!("Version: {version}\n"),
            None => format!("{line}\n"),
        })
        .collect();
    assert_ne!(text, bumped, "no Version line in {}", control.display());
    std::fs::write(&control, bumped).unwrap();
    let out = scratch.join(format!("credgate_{version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg("-b")
        .arg(&tree)
        .arg(&out));
    out
}

#[test]
fn the_deb_installs_upgrades_and_purges_cleanly_in_a_throwaway_root() {
    node();
    let deb = deb();
    let root = DebianRoot::new();
    let scratch = tempfile::tempdir().unwrap();
    let version = credgate::VERSION;
    let upgrade = format!("{version}+fleettest1");
    let upgraded = bumped_package(&deb, &upgrade, scratch.path());

    // A node where `credgate install` ran: containerd's files are not the package's.
    let hosts = root.file("/etc/containerd/certs.d/_default/hosts.toml");
    std::fs::create_dir_all(hosts.parent().unwrap()).unwrap();
    std::fs::write(&hosts, "[host.\"http://127.0.0.1:5008\"]\n").unwrap();
    let state = root.file("/etc/containerd/certs.d/.credgate-install.json");
    std::fs::write(&state, "{}").unwrap();

    // Install: the binary and its helper name, the unit enabled and started, the conffile.
    root.dpkg(&["-i", &deb.to_string_lossy()]).assert_success();
    assert_eq!(
        root.status(),
        format!("Status: install ok installed\nVersion: {version}")
    );
    let printed = root.chroot(&["/usr/bin/credgate", "--version"]);
    assert_eq!(
        printed.assert_success().stdout.trim(),
        format!("credgate {version}")
    );
    assert_eq!(
        std::fs::read_link(root.file("/usr/bin/docker-credential-credgate")).unwrap(),
        Path::new("credgate")
    );
    root.chroot(&["/usr/bin/credgate", "lookup", "registry.test/team/one"])
        .assert_success();
    let config = root.file("/etc/credgate/config.toml");
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let conffiles = std::fs::read_to_string(root.file("/var/lib/dpkg/info/credgate.conffiles"))
        .unwrap_or_default();
    assert_eq!(conffiles.trim(), "/etc/credgate/config.toml");
    assert!(root.file("/lib/systemd/system/credgate.service").is_file());
    for wants in ["multi-user.target.wants", "containerd.service.wants"] {
        let link = root.file(&format!("/etc/systemd/system/{wants}/credgate.service"));
        assert!(link.is_symlink(), "{} is not enabled", link.display());
    }
    let calls = root.systemctl_calls();
    assert!(calls.contains("start credgate.service"), "{calls}");
    assert!(!calls.contains("containerd"), "{calls}");

    // What the running daemon and the operator would leave: a generated secret, a socket
    // directory and a local edit of the conffile.
    std::fs::write(root.file("/etc/credgate/mirror-secret"), "generated").unwrap();
    std::fs::create_dir_all(root.file("/run/credgate")).unwrap();
    let mut edited = std::fs::read_to_string(&config).unwrap();
    edited.push_str("# the operator's line\n");
    std::fs::write(&config, &edited).unwrap();

    // Upgrade: restarted, the operator's conffile and the secret kept.
    root.dpkg(&["-i", &upgraded.to_string_lossy()])
        .assert_success();
    assert_eq!(
        root.status(),
        format!("Status: install ok installed\nVersion: {upgrade}")
    );
    let calls = root.systemctl_calls();
    assert!(calls.contains("restart credgate.service"), "{calls}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(root.file("/etc/credgate/mirror-secret").is_file());

    // Remove: stopped, the binary gone, the config kept; containerd's files untouched, and
    // the operator told to run `credgate uninstall`.
    let removed = root.dpkg(&["-r", "credgate"]);
    removed.assert_success();
    assert!(
        removed.stderr.contains("Run 'credgate uninstall' first"),
        "{removed}"
    );
    assert!(root.systemctl_calls().contains("stop credgate.service"));
    assert!(!root.file("/usr/bin/credgate").exists());
    assert!(config.is_file());

    // Purge: credgate's state gone, the unit's links gone, containerd's files still there.
    root.dpkg(&["-P", "credgate"]).assert_success();
    assert_eq!(root.status(), "");
    for gone in [
        "/etc/credgate",
        "/run/credgate",
        "/etc/systemd/system/multi-user.target.wants/credgate.service",
        "/etc/systemd/system/containerd.service.wants/credgate.service",
    ] {
        assert!(
            std::fs::symlink_metadata(root.file(gone)).is_err(),
            "{gone} survived purge"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "[host.\"http://127.0.0.1:5008\"]\n"
    );
    assert!(state.is_file());
}
