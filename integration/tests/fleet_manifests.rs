//! The fleet's files agree with each other and with credgate (no node needed): the
//! DaemonSet's paths, ports and probes against the ConfigMap's config.toml, the image tag
//! against the crate's version, and the Debian package's config against credgate's built-in
//! defaults, and what kustomize renders grants no API access. `deploy/validate.sh` checks the
//! same manifests against the Kubernetes API schemas; `node_fleet.rs` runs them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use credgate::config::{Config, SourceEntry};
use credgate_integration::fleet::{repo_root, ContainerSpec, Manifests, PodSpec};
use credgate_integration::process::run_bounded;
use credgate_integration::tool;
use serde::Deserialize;

fn config_map_config(manifests: &Manifests) -> Config {
    let volume = manifests
        .pod
        .volumes
        .iter()
        .find_map(|v| v.config_map.as_ref())
        .expect("a ConfigMap volume");
    let text = &manifests.config_maps[&volume.name]["config.toml"];
    Config::parse(text, Path::new("deploy/kubernetes/config.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The mount path of volume `name` in `container`.
fn mount_of<'a>(container: &'a ContainerSpec, name: &str) -> &'a str {
    container
        .volume_mounts
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.mount_path.as_str())
        .unwrap_or_else(|| panic!("{} does not mount {name}", container.name))
}

/// The value after `flag` in a command line.
fn flag<'a>(process: &'a [String], flag: &str) -> &'a str {
    process
        .iter()
        .position(|a| a == flag)
        .and_then(|at| process.get(at + 1))
        .unwrap_or_else(|| panic!("no {flag} in {process:?}"))
}

/// The name of the volume whose hostPath is `path`.
fn host_volume<'a>(pod: &'a PodSpec, path: &str) -> &'a str {
    pod.volumes
        .iter()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == path))
        .map(|v| v.name.as_str())
        .unwrap_or_else(|| panic!("no hostPath volume {path}"))
}

#[test]
fn the_image_tag_is_the_crate_version() {
    assert_eq!(Manifests::load().image_tag, credgate::VERSION);
}

#[test]
fn host_paths_are_mounted_where_the_node_has_them() {
    let manifests = Manifests::load();
    for container in manifests
        .pod
        .init_containers
        .iter()
        .chain(&manifests.pod.containers)
    {
        for mount in &container.volume_mounts {
            let volume = manifests.pod.volume(&mount.name);
            if let Some(host) = &volume.host_path {
                // containerd's config_path and credgate's hosts dir name the same directory
                // only when the pod sees it under the node's own path.
                assert_eq!(mount.mount_path, host.path, "{}", container.name);
            }
        }
    }
}

#[test]
fn the_init_step_and_the_pre_stop_hook_work_on_the_mounted_hosts_dir_only() {
    let manifests = Manifests::load();
    let pod = &manifests.pod;
    assert_eq!(pod.init_containers.len(), 1);
    let init = &pod.init_containers[0];
    let init_process = init.process();
    assert_eq!(init_process[1..3], ["install", "--hosts-only"]);
    let hosts_dir = flag(&init_process, "--hosts-dir");
    let containerd_config = flag(&init_process, "--containerd-config");
    let serve = &pod.containers[0];
    let serve_process = serve.process();
    assert_eq!(serve_process[1], "serve");
    // The preStop hook runs before every container restart too, which the init step does not.
    assert!(
        serve_process.iter().any(|a| a == "--install-hosts"),
        "serve does not rewrite hosts.toml when it starts: {serve_process:?}"
    );
    assert_eq!(
        flag(&serve_process, "--containerd-config"),
        containerd_config
    );
    let pre_stop = serve.pre_stop();
    assert_eq!(pre_stop[1], "uninstall");
    assert_eq!(flag(&pre_stop, "--hosts-dir"), hosts_dir);
    // The daemon reads the mirrors it may dial from the hosts.toml the init step wrote.
    assert_eq!(
        config_map_config(&manifests).containerd.hosts_dir,
        Path::new(hosts_dir)
    );
    for container in [init, serve] {
        let hosts = container
            .volume_mounts
            .iter()
            .find(|m| m.mount_path == hosts_dir)
            .unwrap_or_else(|| panic!("{} does not mount {hosts_dir}", container.name));
        assert!(!hosts.read_only);
        let config_dir = Path::new(containerd_config).parent().unwrap();
        let config = container
            .volume_mounts
            .iter()
            .find(|m| Path::new(&m.mount_path) == config_dir)
            .unwrap_or_else(|| {
                panic!("{} does not mount {}", container.name, config_dir.display())
            });
        assert!(
            config.read_only,
            "containerd's config must be read-only to the pod"
        );
        assert_eq!(
            config.name,
            host_volume(pod, &config_dir.display().to_string())
        );
    }
}

#[test]
fn the_config_map_points_at_the_mounted_secret_and_the_host_run_dir() {
    let manifests = Manifests::load();
    let config = config_map_config(&manifests);
    let serve = &manifests.pod.containers[0];
    let secret_volume = manifests
        .pod
        .volumes
        .iter()
        .find(|v| v.secret.is_some())
        .expect("a Secret volume");
    let secret_dir = Path::new(mount_of(serve, &secret_volume.name));
    let docker_configs: Vec<&Path> = config
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceEntry::DockerConfig(entry) => Some(entry.path.as_path()),
            _ => None,
        })
        .collect();
    // A dockerconfigjson Secret's one key.
    assert_eq!(docker_configs, [secret_dir.join(".dockerconfigjson")]);
    let run = Path::new(mount_of(
        serve,
        host_volume(&manifests.pod, "/run/credgate"),
    ));
    assert!(config.listen.socket.starts_with(run));
    assert!(config.listen.mirror_secret_file.starts_with(run));
    assert!(config.listen.mirror.ip().is_loopback());
    for probe in [&serve.readiness_probe, &serve.liveness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an httpGet probe");
        assert_eq!(
            format!("{}:{}", get.host.as_deref().unwrap_or("<pod IP>"), get.port),
            config.listen.metrics.to_string()
        );
        assert_eq!(get.path, "/healthz");
    }
}

#[test]
fn the_packaged_config_does_what_no_config_does() {
    let path = repo_root().join("packaging/config.toml");
    let packaged = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let builtin = Config::builtin();
    assert_eq!(
        format!("{:?}", packaged.listen),
        format!("{:?}", builtin.listen)
    );
    let paths = |config: &Config| -> Vec<String> {
        config
            .sources
            .iter()
            .map(|s| match s {
                SourceEntry::DockerConfig(entry) => entry.path.display().to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(paths(&packaged), paths(&builtin));
}

/// `kustomize build deploy/kubernetes` (the kustomize integration/test-all.sh unpacks), one
/// value per object.
fn rendered_objects() -> Vec<serde_yaml_ng::Value> {
    let scratch = tempfile::tempdir().unwrap();
    let rendered = run_bounded(
        Command::new(tool("kustomize"))
            .arg("build")
            .arg(repo_root().join("deploy/kubernetes")),
        scratch.path(),
        Duration::from_secs(60),
    );
    rendered.assert_success();
    serde_yaml_ng::Deserializer::from_str(&rendered.stdout)
        .map(|document| {
            serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("kustomize's output: {e}"))
        })
        .filter(|object| !object.is_null())
        .collect()
}

#[test]
fn the_rendered_manifests_grant_no_api_access() {
    let objects = rendered_objects();
    let kind = |object: &serde_yaml_ng::Value| object["kind"].as_str().unwrap_or("").to_string();
    let kinds: Vec<String> = objects.iter().map(kind).collect();
    assert!(kinds.iter().any(|k| k == "DaemonSet"), "{kinds:?}");
    for rbac in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(
            !kinds.iter().any(|k| k == rbac),
            "a {rbac} is rendered: {kinds:?}"
        );
    }
    let accounts: Vec<&serde_yaml_ng::Value> = objects
        .iter()
        .filter(|o| kind(o) == "ServiceAccount")
        .collect();
    assert_eq!(accounts.len(), 1, "{kinds:?}");
    // Absent means true: the field must be there and false.
    assert_eq!(
        accounts[0]["automountServiceAccountToken"].as_bool(),
        Some(false),
        "the ServiceAccount automounts a token"
    );
    let daemonset = objects.iter().find(|o| kind(o) == "DaemonSet").unwrap();
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], accounts[0]["metadata"]["name"]);
    assert_ne!(pod["automountServiceAccountToken"].as_bool(), Some(true));
}
