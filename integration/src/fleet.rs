//! The fleet artifacts on a node: `dist/` as `bash packaging/build.sh` leaves it, and the
//! DaemonSet of `deploy/kubernetes` run the way kubelet would run it, but with `ctr run` on a
//! real containerd: every container's command, host network, mounts, root filesystem mode,
//! capabilities and limits come from the manifest ([`PodSpec`]), never written a second time
//! here. ConfigMap and Secret volumes are directories laid out as kubelet's atomic writer lays
//! them out, `..data` symlink swap included ([`KubeletVolume`]).
//!
//! The pod's hostPath volumes name the node's own paths (`/etc/containerd`, `/run/credgate`),
//! so [`private_node_root`] gives the node namespace an `/etc` and a `/run` of its own (an
//! overlay over the host's `/etc`, a tmpfs on `/run`): the test's containerd config lives at
//! `/etc/containerd/config.toml` exactly as on a node, and nothing reaches the host's files.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

use crate::containerd::Containerd;
use crate::process::{read_lossy, run_bounded, CommandOutput, DAEMON_PATH};

/// The capabilities containerd gives a container when nothing is dropped (`defaultUnixCaps`,
/// containerd 2.1.9 `pkg/oci/spec.go:118`); a pod's `drop: ["ALL"]` drops each of them.
const CONTAINERD_DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository's root (this crate is `integration/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// `dist/<name>` as `bash packaging/build.sh` writes it; panics naming the command if absent.
pub fn artifact(name: &str) -> PathBuf {
    let path = repo_root().join("dist").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `bash packaging/build.sh` (integration/test-all.sh \
         does, before the node tests)",
        path.display()
    );
    path
}

/// The Debian package of this version.
pub fn deb() -> PathBuf {
    artifact(&format!("credgate_{}_amd64.deb", credgate::VERSION))
}

/// The image, an OCI image layout archive.
pub fn image_archive() -> PathBuf {
    artifact("credgate-image.tar")
}

// ---------------------------------------------------------------------------------------
// The manifests
// ---------------------------------------------------------------------------------------

/// `deploy/kubernetes`, read as kustomize reads it: the DaemonSet's pod template and the
/// files of the ConfigMaps its `configMapGenerator` makes.
pub struct Manifests {
    pub pod: PodSpec,
    /// ConfigMap name -> file name -> content.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// The `newTag` kustomize gives the image named `credgate`.
    pub image_tag: String,
}

#[derive(Debug, Deserialize)]
struct Kustomization {
    #[serde(rename = "configMapGenerator", default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    images: Vec<ImageOverride>,
}

#[derive(Debug, Deserialize)]
struct Generator {
    name: String,
    files: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageOverride {
    name: String,
    new_tag: String,
}

#[derive(Debug, Deserialize)]
struct DaemonSet {
    spec: DaemonSetSpec,
}

#[derive(Debug, Deserialize)]
struct DaemonSetSpec {
    template: PodTemplate,
}

#[derive(Debug, Deserialize)]
struct PodTemplate {
    spec: PodSpec,
}

/// The parts of a pod spec that decide how its containers run on the node.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub init_containers: Vec<ContainerSpec>,
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    pub security_context: Option<SecurityContext>,
    pub resources: Option<Resources>,
    pub lifecycle: Option<Lifecycle>,
    pub readiness_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<u32>,
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub pre_stop: Option<Handler>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Handler {
    pub exec: Option<ExecAction>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub http_get: Option<HttpGet>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpGet {
    pub host: Option<String>,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub host_path: Option<HostPathVolume>,
    pub config_map: Option<ConfigMapVolume>,
    pub secret: Option<SecretVolume>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostPathVolume {
    pub path: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolume {
    pub name: String,
    pub default_mode: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    pub secret_name: String,
    pub default_mode: Option<u32>,
    #[serde(default)]
    pub optional: bool,
}

impl Manifests {
    /// Reads `deploy/kubernetes/{kustomization.yaml, daemonset.yaml}` and the generator files.
    pub fn load() -> Manifests {
        let dir = repo_root().join("deploy/kubernetes");
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        };
        let kustomization: Kustomization = serde_yaml_ng::from_str(&read("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("deploy/kubernetes/kustomization.yaml: {e}"));
        let daemonset: DaemonSet = serde_yaml_ng::from_str(&read("daemonset.yaml"))
            .unwrap_or_else(|e| panic!("deploy/kubernetes/daemonset.yaml: {e}"));
        let config_maps = kustomization
            .config_map_generator
            .iter()
            .map(|generator| {
                let files = generator
                    .files
                    .iter()
                    .map(|file| (file.clone(), read(file)))
                    .collect();
                (generator.name.clone(), files)
            })
            .collect();
        let image_tag = kustomization
            .images
            .iter()
            .find(|image| image.name == "credgate")
            .map(|image| image.new_tag.clone())
            .expect("kustomization.yaml sets the tag of the image `credgate`");
        Manifests {
            pod: daemonset.spec.template.spec,
            config_maps,
            image_tag,
        }
    }
}

impl PodSpec {
    pub fn volume(&self, name: &str) -> &VolumeSpec {
        self.volumes
            .iter()
            .find(|volume| volume.name == name)
            .unwrap_or_else(|| panic!("the pod spec has no volume {name:?}"))
    }

    /// The one container named `name` (init containers included).
    pub fn container(&self, name: &str) -> &ContainerSpec {
        self.init_containers
            .iter()
            .chain(&self.containers)
            .find(|container| container.name == name)
            .unwrap_or_else(|| panic!("the pod spec has no container {name:?}"))
    }
}

impl ContainerSpec {
    /// What the container runs: `command` then `args`, as kubelet asks the runtime.
    pub fn process(&self) -> Vec<String> {
        assert!(
            !self.command.is_empty(),
            "container {}: no command; the image's entrypoint would run",
            self.name
        );
        self.command.iter().chain(&self.args).cloned().collect()
    }

    /// The preStop exec hook's command.
    pub fn pre_stop(&self) -> Vec<String> {
        self.lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
            .map(|exec| exec.command.clone())
            .unwrap_or_else(|| panic!("container {}: no preStop exec hook", self.name))
    }

    /// Where the readiness probe asks: `(host, port, path)`.
    pub fn readiness(&self) -> (String, u16, String) {
        let get = self
            .readiness_probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .unwrap_or_else(|| panic!("container {}: no httpGet readiness probe", self.name));
        let host = get.host.clone().unwrap_or_else(|| {
            panic!(
                "container {}: the probe has no host, so kubelet asks the pod IP, where credgate \
                 does not listen",
                self.name
            )
        });
        (host, get.port, get.path.clone())
    }
}

/// A Kubernetes quantity of bytes (`128Mi`, `1Gi`, `64M`, `1000`).
pub fn bytes_quantity(quantity: &str) -> u64 {
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((quantity, 1));
    number
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("not a byte quantity: {quantity:?}"))
        * factor
}

/// A Kubernetes CPU quantity (`1`, `500m`) as `ctr run --cpus` takes it.
pub fn cpu_quantity(quantity: &str) -> String {
    match quantity.strip_suffix('m') {
        Some(milli) => {
            let milli: u32 = milli
                .parse()
                .unwrap_or_else(|_| panic!("not a CPU quantity: {quantity:?}"));
            format!("{}.{:03}", milli / 1000, milli % 1000)
        }
        None => quantity.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The node's /etc and /run
// ---------------------------------------------------------------------------------------

/// Gives this node namespace its own `/etc` (an overlay: the host's files below, writes kept
/// in a temp dir) and `/run` (a tmpfs), once per process, after [`crate::node::node`] set the
/// node up. The node's `/etc/hosts` and CA bundle are carried over into the new `/etc`.
pub fn private_node_root() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        crate::node::node();
        let hosts = std::fs::read("/etc/hosts").expect("read the node's /etc/hosts");
        let bundle = std::fs::read(crate::node::CA_BUNDLE).expect("read the node's CA bundle");
        // Kept for the life of the process: the overlay's upper and work dirs live there.
        let scratch = Box::leak(Box::new(tempfile::tempdir().expect("node root temp dir")));
        let (upper, work) = (scratch.path().join("upper"), scratch.path().join("work"));
        std::fs::create_dir_all(&upper).expect("mkdir upper");
        std::fs::create_dir_all(&work).expect("mkdir work");
        let options = format!(
            "lowerdir=/etc,upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        mount(&["-t", "overlay", "overlay", "-o", &options, "/etc"]);
        mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"]);
        std::fs::write("/etc/hosts", hosts).expect("write /etc/hosts");
        std::fs::write(crate::node::CA_BUNDLE, bundle).expect("write the CA bundle");
    });
}

/// A bind mount in the node namespace, taken away (lazily) when dropped.
pub struct BindMount {
    target: PathBuf,
}

/// Bind-mounts `source` over `target` (a directory that exists) in the node namespace.
pub fn bind_mount(source: &Path, target: &Path) -> BindMount {
    mount(&[
        "--bind",
        &source.to_string_lossy(),
        &target.to_string_lossy(),
    ]);
    BindMount {
        target: target.to_path_buf(),
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let mut command = Command::new(crate::require_program("umount", "mount"));
        command
            .arg("--lazy")
            .arg(&self.target)
            .env_clear()
            .env("PATH", DAEMON_PATH);
        let _ = run_bounded(&mut command, &std::env::temp_dir(), Duration::from_secs(10));
    }
}

fn mount(args: &[&str]) {
    let scratch = std::env::temp_dir();
    let mut command = Command::new(crate::require_program("mount", "mount"));
    command.args(args).env_clear().env("PATH", DAEMON_PATH);
    run_bounded(&mut command, &scratch, Duration::from_secs(10)).assert_success();
}

// ---------------------------------------------------------------------------------------
// kubelet's volumes
// ---------------------------------------------------------------------------------------

/// A ConfigMap or Secret volume as kubelet writes it (its `AtomicWriter`): the files in a
/// timestamped directory `..<time>`, a symlink `..data` to it, and each file name a symlink
/// into `..data`. The root is root's, world-writable and sticky, as kubelet's tmpfs is.
pub struct KubeletVolume {
    dir: TempDir,
    mode: u32,
    generation: u32,
}

impl KubeletVolume {
    /// A volume holding `files`, each with `mode` (the volume's `defaultMode`).
    pub fn new(files: &[(&str, &[u8])], mode: u32) -> KubeletVolume {
        let dir = tempfile::tempdir().expect("volume temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod volume root");
        let mut volume = KubeletVolume {
            dir,
            mode,
            generation: 0,
        };
        volume.swap(files);
        volume
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the volume's content exactly as kubelet does when the object changes: a new
    /// `..<time>` directory, a `..data_tmp` symlink to it renamed over `..data` (the atomic
    /// step), the user-visible symlinks for new names, and the old directory removed.
    pub fn swap(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let root = self.dir.path();
        let old = std::fs::read_link(root.join("..data")).ok();
        let name = format!("..2026_11_29_12_00_{:02}.{:09}", self.generation, 1);
        let timestamped = root.join(&name);
        std::fs::create_dir(&timestamped).expect("mkdir timestamped dir");
        std::fs::set_permissions(&timestamped, std::fs::Permissions::from_mode(0o755))
            .expect("chmod timestamped dir");
        for (file, content) in files {
            let path = timestamped.join(file);
            std::fs::write(&path, content).expect("write volume file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(self.mode))
                .expect("chmod volume file");
        }
        symlink(&name, root.join("..data_tmp")).expect("symlink ..data_tmp");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("rename ..data");
        for (file, _) in files {
            let visible = root.join(file);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new("..data").join(file), &visible).expect("symlink file");
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).expect("remove the old timestamped dir");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The pod on containerd
// ---------------------------------------------------------------------------------------

/// The DaemonSet's pod on a real containerd: each container of [`PodSpec`] run with
/// `ctr run` from `image`, its volumes found on the node (hostPath) or given by the test
/// (ConfigMap and Secret volumes, by volume name).
pub struct Pod<'a> {
    pub spec: PodSpec,
    containerd: &'a Containerd,
    image: String,
    volumes: BTreeMap<String, PathBuf>,
    /// Mounts a test node needs that a real node does not, as `(source, destination)`.
    extra_mounts: Vec<(PathBuf, String)>,
    logs: TempDir,
}

/// A container of the pod started in the background (`ctr run --detach`).
pub struct RunningContainer<'a> {
    pod: &'a Pod<'a>,
    pub id: String,
    pub spec: ContainerSpec,
    log: PathBuf,
    stopped: bool,
}

impl<'a> Pod<'a> {
    pub fn new(spec: PodSpec, containerd: &'a Containerd, image: &str) -> Pod<'a> {
        assert!(
            spec.host_network,
            "the DaemonSet's pod must use the host network"
        );
        Pod {
            spec,
            containerd,
            image: image.to_string(),
            volumes: BTreeMap::new(),
            extra_mounts: Vec::new(),
            logs: tempfile::tempdir().expect("pod logs dir"),
        }
    }

    /// The directory a ConfigMap or Secret volume is served from.
    pub fn provide_volume(&mut self, name: &str, dir: &Path) {
        let volume = self.spec.volume(name);
        assert!(
            volume.config_map.is_some() || volume.secret.is_some(),
            "volume {name} is not a ConfigMap or a Secret"
        );
        self.volumes.insert(name.to_string(), dir.to_path_buf());
    }

    /// A read-only bind mount the manifest does not have (a test node's CA bundle).
    pub fn add_test_mount(&mut self, source: &Path, destination: &str) {
        self.extra_mounts
            .push((source.to_path_buf(), destination.to_string()));
    }

    /// `ctr run` arguments for `container` as `id`, everything but `--rm`/`--detach`.
    pub fn run_args(&self, container: &ContainerSpec, id: &str) -> Vec<String> {
        let mut args = Vec::new();
        args.push("--net-host".to_string());
        if let Some(security) = &container.security_context {
            if security.read_only_root_filesystem {
                args.push("--read-only".to_string());
            }
            if let Some(uid) = security.run_as_user {
                args.extend(["--user".to_string(), uid.to_string()]);
            }
            assert_ne!(
                security.allow_privilege_escalation,
                Some(true),
                "ctr sets no_new_privileges; the manifest asks otherwise"
            );
            if let Some(caps) = &security.capabilities {
                args.extend(capability_args(caps));
            }
        }
        if let Some(resources) = &container.resources {
            if let Some(memory) = resources.limits.get("memory") {
                args.push(format!("--memory-limit={}", bytes_quantity(memory)));
            }
            if let Some(cpu) = resources.limits.get("cpu") {
                args.push(format!("--cpus={}", cpu_quantity(cpu)));
            }
        }
        let mut mounts: Vec<(PathBuf, String, bool)> = container
            .volume_mounts
            .iter()
            .map(|mount| {
                (
                    self.volume_source(&mount.name),
                    mount.mount_path.clone(),
                    mount.read_only,
                )
            })
            .collect();
        mounts.extend(
            self.extra_mounts
                .iter()
                .map(|(source, dst)| (source.clone(), dst.clone(), true)),
        );
        // As containerd's CRI orders them: fewer path components first, so a mount inside
        // another (/etc/containerd/certs.d in /etc/containerd) is not hidden by it.
        mounts.sort_by_key(|(_, dst, _)| Path::new(dst).components().count());
        for (source, dst, read_only) in mounts {
            let mode = if read_only { "ro" } else { "rw" };
            args.push("--mount".to_string());
            args.push(format!(
                "type=bind,src={},dst={dst},options=rbind:{mode}",
                source.display()
            ));
        }
        args.push(self.image.clone());
        args.push(id.to_string());
        args.extend(container.process());
        args
    }

    /// Where a volume's content is on the node; a hostPath `DirectoryOrCreate` is created
    /// when missing, as kubelet does.
    fn volume_source(&self, name: &str) -> PathBuf {
        let volume = self.spec.volume(name);
        if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            match host.kind.as_str() {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).expect("mkdir hostPath"),
                "Directory" => assert!(path.is_dir(), "hostPath {} is missing", path.display()),
                other => panic!("hostPath type {other:?} is not one the harness knows"),
            }
            return path;
        }
        self.volumes
            .get(name)
            .unwrap_or_else(|| panic!("the test provides no directory for volume {name}"))
            .clone()
    }

    /// Runs init container `name` to its end (`ctr run --rm`): what it printed and its status.
    pub fn run_init(&self, name: &str) -> CommandOutput {
        let container = self
            .spec
            .init_containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no init container {name}"));
        let id = format!("{name}-{}", crate::process::unique());
        let mut args = vec!["run".to_string(), "--rm".to_string()];
        args.extend(self.run_args(container, &id));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.containerd.ctr(&args)
    }

    /// Starts container `name` in the background, its output in a log file.
    pub fn start(&'a self, name: &str) -> RunningContainer<'a> {
        let container = self
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
            .clone();
        let id = format!("{name}-{}", crate::process::unique());
        let log = self.logs.path().join(format!("{id}.log"));
        let mut args = vec![
            "run".to_string(),
            "--detach".to_string(),
            format!("--log-uri=file://{}", log.display()),
        ];
        args.extend(self.run_args(&container, &id));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.containerd.ctr(&args).assert_success();
        RunningContainer {
            pod: self,
            id,
            spec: container,
            log,
            stopped: false,
        }
    }
}

/// `--cap-drop`/`--cap-add` that give the container what the pod asks: with `drop: ["ALL"]`,
/// every containerd default the pod does not add back is dropped.
fn capability_args(caps: &Capabilities) -> Vec<String> {
    let prefixed = |cap: &str| format!("CAP_{}", cap.trim_start_matches("CAP_"));
    let added: Vec<String> = caps.add.iter().map(|c| prefixed(c)).collect();
    let dropped: Vec<String> = if caps.drop.iter().any(|c| c == "ALL") {
        CONTAINERD_DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !added.contains(c))
            .collect()
    } else {
        caps.drop.iter().map(|c| prefixed(c)).collect()
    };
    let mut args = Vec::new();
    for cap in &added {
        args.push(format!("--cap-add={cap}"));
    }
    for cap in &dropped {
        args.push(format!("--cap-drop={cap}"));
    }
    args
}

impl RunningContainer<'_> {
    /// Everything the container printed so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Waits until the readiness probe's URL answers 200 (bounded), panicking with the log.
    pub fn wait_ready(&self) -> String {
        let (host, port, path) = self.spec.readiness();
        let addr: std::net::SocketAddr = format!("{host}:{port}").parse().expect("probe address");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                let response = crate::mirror::send(addr, "GET", &path, None, &[]);
                if response.status == 200 {
                    return String::from_utf8_lossy(response.bytes()).into_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered its readiness probe {path} on {addr}:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the preStop hook in the container (`ctr task exec`), as kubelet does before it
    /// stops the container.
    pub fn run_pre_stop(&self) -> CommandOutput {
        let exec_id = format!("prestop-{}", crate::process::unique());
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, &self.id];
        let hook = self.spec.pre_stop();
        args.extend(hook.iter().map(String::as_str));
        self.pod.containerd.ctr(&args)
    }

    /// SIGTERM (kubelet's stop, after preStop) or SIGKILL (a crash, an OOM kill), then waits
    /// for the task to end and removes it.
    pub fn stop(&mut self, signal: &str) {
        self.pod
            .containerd
            .ctr(&["task", "kill", "--signal", signal, &self.id])
            .assert_success();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let tasks = self.pod.containerd.ctr(&["task", "ls"]);
            let running = tasks
                .stdout
                .lines()
                .any(|line| line.starts_with(&self.id) && !line.contains("STOPPED"));
            if !running {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after {signal} within {STOP_TIMEOUT:?}:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.remove();
    }

    fn remove(&mut self) {
        let _ = self.pod.containerd.ctr(&["task", "delete", &self.id]);
        let _ = self.pod.containerd.ctr(&["container", "delete", &self.id]);
        self.stopped = true;
    }
}

impl Drop for RunningContainer<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self
                .pod
                .containerd
                .ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
            std::thread::sleep(Duration::from_millis(200));
            let _ = self
                .pod
                .containerd
                .ctr(&["task", "delete", "--force", &self.id]);
            let _ = self.pod.containerd.ctr(&["container", "delete", &self.id]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_reads_them() {
        assert_eq!(bytes_quantity("128Mi"), 128 << 20);
        assert_eq!(bytes_quantity("1Gi"), 1 << 30);
        assert_eq!(bytes_quantity("64M"), 64_000_000);
        assert_eq!(bytes_quantity("1000"), 1000);
        assert_eq!(cpu_quantity("1"), "1");
        assert_eq!(cpu_quantity("500m"), "0.500");
        assert_eq!(cpu_quantity("1500m"), "1.500");
    }

    #[test]
    fn dropping_all_keeps_only_what_is_added_back() {
        let caps = Capabilities {
            add: vec!["CHOWN".into(), "FOWNER".into()],
            drop: vec!["ALL".into()],
        };
        let args = capability_args(&caps);
        assert!(args.contains(&"--cap-add=CAP_CHOWN".to_string()));
        assert!(args.contains(&"--cap-drop=CAP_NET_RAW".to_string()));
        assert!(!args.contains(&"--cap-drop=CAP_CHOWN".to_string()));
        assert_eq!(args.len(), 2 + CONTAINERD_DEFAULT_CAPS.len() - 2);
    }

    #[test]
    fn a_kubelet_swap_repoints_data_and_removes_the_old_generation() {
        let mut volume = KubeletVolume::new(&[("a.json", b"one")], 0o400);
        let root = volume.path().to_path_buf();
        let first = std::fs::read_link(root.join("..data")).unwrap();
        assert_eq!(std::fs::read(root.join("a.json")).unwrap(), b"one");
        volume.swap(&[("a.json", b"two")]);
        let second = std::fs::read_link(root.join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(!root.join(&first).exists());
        assert!(!root.join("..data_tmp").exists());
        assert_eq!(std::fs::read(root.join("a.json")).unwrap(), b"two");
        assert_eq!(
            std::fs::read_link(root.join("a.json")).unwrap(),
            Path::new("..data/a.json")
        );
    }
}
