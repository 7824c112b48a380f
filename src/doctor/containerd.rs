//! containerd: reachable, which version, its CRI plugin loaded, and the hosts directory its
//! pulls read (`config_path`), asked of containerd itself where it says, else read from its
//! config file.
//!
//! Where `config_path` is, checked against the real binaries: containerd 1.6 and 1.7 report
//! it in the CRI's `Status{verbose}` as `info["config"]` → `registry.configPath`; 2.1 reports
//! only the runtime config there (no `registry` key), so for 2.x it comes from config.toml
//! (`plugins."io.containerd.cri.v1.images".registry.config_path`).

use std::path::{Path, PathBuf};

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use crate::containerd::files::{
    first_hosts_dir, read_registry_settings, RegistrySettings, DEFAULT_HOSTS_DIR,
    LOCAL_PULL_TABLES, MIRRORS_TABLE,
};
use crate::containerd::{Containerd, CALL_TIMEOUT};

use super::{Check, DoctorError, Options};

const RESTART: &str = "systemctl restart containerd";

/// What doctor learnt about containerd's registry settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContainerdView {
    /// `config_path` as containerd's CRI reports it (containerd 1.x).
    pub reported_config_path: Option<String>,
    /// Deprecated registry tables containerd's CRI reports with entries.
    pub reported_deprecated: Vec<String>,
    /// What containerd's config file says, when it exists.
    pub file: Option<RegistrySettings>,
}

impl ContainerdView {
    /// The `config_path` in force: containerd's word first, the file's second.
    pub fn config_path(&self) -> Option<&str> {
        self.reported_config_path
            .as_deref()
            .or_else(|| self.file.as_ref().and_then(|f| f.config_path.as_deref()))
            .filter(|p| !p.is_empty())
    }

    /// The hosts directory pulls read: the one `config_path` names (the first of a list),
    /// else containerd's packaged default.
    pub fn hosts_dir(&self) -> PathBuf {
        PathBuf::from(
            self.config_path()
                .map_or(DEFAULT_HOSTS_DIR, first_hosts_dir),
        )
    }
}

pub(super) async fn check(
    options: &Options,
    checks: &mut Vec<Check>,
) -> Result<ContainerdView, DoctorError> {
    let mut view = ContainerdView {
        file: read_registry_settings(&options.containerd_config)
            .map_err(DoctorError::ContainerdConfig)?,
        ..ContainerdView::default()
    };
    let socket = &options.containerd_socket;
    match Containerd::connect(socket).await {
        Ok(containerd) => ask(&containerd, &options.containerd_config, &mut view, checks).await,
        Err(e) => checks.push(Check::fail(
            format!("containerd: {e}"),
            format!(
                "start containerd (systemctl start containerd) or name its socket with --containerd-address; \
                 config_path below is read from {}",
                options.containerd_config.display()
            ),
        )),
    }
    checks.extend(config_path_checks(&view, &options.containerd_config));
    Ok(view)
}

/// Version, plugin load errors, the CRI's registry config and deprecation warnings.
async fn ask(
    containerd: &Containerd,
    file: &Path,
    view: &mut ContainerdView,
    checks: &mut Vec<Check>,
) {
    let socket = containerd.socket().display().to_string();
    match containerd.version().await {
        Ok(v) => checks.push(Check::ok(format!("containerd {} at {socket}", v.version))),
        Err(e) => checks.push(Check::fail(
            format!("{e}"),
            format!("restart containerd: {RESTART}"),
        )),
    }
    let failures = plugin_failures(containerd, file).await;
    let cri_failed = !failures.is_empty();
    checks.extend(failures);
    match cri_config(containerd).await {
        Ok(Some(config)) => {
            let (path, deprecated) = registry_from_cri(&config);
            view.reported_config_path = path;
            view.reported_deprecated = deprecated;
        }
        Ok(None) => {}
        // A CRI plugin that failed to load is already reported, with its reason.
        Err(status) if status.code() == tonic::Code::Unimplemented && cri_failed => {}
        Err(status) if status.code() == tonic::Code::Unimplemented => checks.push(Check::warn(
            format!("containerd at {socket} serves no CRI: kubelet pulls are not made here"),
            "nothing to do unless this node runs kubelet; then enable the CRI plugin \
             (remove \"io.containerd.grpc.v1.cri\" or \"cri\" from disabled_plugins in containerd's config) and restart containerd",
        )),
        Err(status) => checks.push(Check::warn(
            format!(
                "containerd's CRI Status failed: {:?}: {}",
                status.code(),
                status.message()
            ),
            format!("see containerd's log (journalctl -u containerd); {RESTART}"),
        )),
    }
    checks.extend(deprecations(containerd).await);
}

/// `info["config"]` of the CRI's verbose Status, parsed; `None` when it has none.
async fn cri_config(containerd: &Containerd) -> Result<Option<serde_json::Value>, tonic::Status> {
    let mut client = RuntimeServiceClient::new(containerd.channel());
    let mut request = tonic::Request::new(k8s_cri::v1::StatusRequest { verbose: true });
    request.set_timeout(CALL_TIMEOUT);
    let reply = client.status(request).await?.into_inner();
    Ok(reply
        .info
        .get("config")
        .and_then(|text| serde_json::from_str(text).ok()))
}

/// `registry.configPath` and the deprecated tables with entries, from the CRI's config JSON
/// (containerd 1.6/1.7; 2.x has no `registry` there). Only key names are read: `configs`
/// holds passwords.
pub(super) fn registry_from_cri(config: &serde_json::Value) -> (Option<String>, Vec<String>) {
    let Some(registry) = config.get("registry") else {
        return (None, Vec::new());
    };
    let path = registry
        .get("configPath")
        .and_then(|p| p.as_str())
        .map(str::to_string);
    let deprecated = LOCAL_PULL_TABLES
        .into_iter()
        .chain([MIRRORS_TABLE])
        .filter(|name| {
            registry
                .get(name)
                .and_then(|t| t.as_object())
                .is_some_and(|t| !t.is_empty())
        })
        .map(str::to_string)
        .collect();
    // An empty configPath is still containerd's answer: hosts.toml is not read.
    (path.or(Some(String::new())), deprecated)
}

/// containerd's CRI plugins that failed to load (a bad registry section makes them fail).
async fn plugin_failures(containerd: &Containerd, file: &Path) -> Vec<Check> {
    let mut client = IntrospectionClient::new(containerd.channel());
    let mut request =
        tonic::Request::new(containerd_client::services::v1::PluginsRequest::default());
    request.set_timeout(CALL_TIMEOUT);
    let Ok(reply) = client.plugins(request).await else {
        return Vec::new();
    };
    reply
        .into_inner()
        .plugins
        .into_iter()
        .filter(|p| is_cri_plugin(&p.r#type, &p.id))
        .filter_map(|p| {
            let err = p.init_err?;
            Some(Check::fail(
                format!(
                    "containerd's plugin {}.{} failed to load: {}",
                    p.r#type, p.id, err.message
                ),
                plugin_fix(&err.message, file),
            ))
        })
        .collect()
}

/// The fix for a CRI plugin's load error; containerd refuses `mirrors` beside `config_path`.
fn plugin_fix(message: &str, file: &Path) -> String {
    let file = file.display();
    if message.contains("`mirrors` cannot be set when `config_path` is provided") {
        format!("move each registry.mirrors entry of {file} to a hosts.toml in the hosts dir, delete registry.mirrors, then {RESTART}")
    } else {
        format!(
            "correct that in {file} (containerd's log: journalctl -u containerd), then {RESTART}"
        )
    }
}

fn is_cri_plugin(kind: &str, id: &str) -> bool {
    (kind == "io.containerd.grpc.v1" && id == "cri") || kind == "io.containerd.cri.v1"
}

/// containerd 2.x's own deprecation warnings (introspection `Server`).
async fn deprecations(containerd: &Containerd) -> Vec<Check> {
    let mut client = IntrospectionClient::new(containerd.channel());
    let mut request = tonic::Request::new(());
    request.set_timeout(CALL_TIMEOUT);
    let Ok(reply) = client.server(request).await else {
        return Vec::new();
    };
    reply
        .into_inner()
        .deprecations
        .into_iter()
        .map(|d| {
            Check::warn(
                format!("containerd reports a deprecation: {} ({})", d.message, d.id),
                "move off the deprecated setting before the next containerd upgrade removes it",
            )
        })
        .collect()
}

/// `config_path` must name exactly one directory; the deprecated tables are warned about.
pub(super) fn config_path_checks(view: &ContainerdView, file: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let install = format!(
        "credgate install --containerd-config {}, then {RESTART}",
        file.display()
    );
    let from = if view.reported_config_path.is_some() {
        "as containerd's CRI reports it".to_string()
    } else {
        format!("read from {}", file.display())
    };
    match view.config_path() {
        None => checks.push(Check::fail(
            format!("containerd's registry config_path is not set ({from}): containerd reads no hosts.toml, so pulls bypass credgate"),
            install,
        )),
        Some(list) if list.contains(':') => checks.push(Check::fail(
            format!("containerd's registry config_path is the list {list:?} ({from}): containerd 2.1+ CRI pulls (transfer service) ignore a list"),
            install,
        )),
        Some(dir) => checks.push(Check::ok(format!("containerd's registry config_path is {dir} ({from})"))),
    }
    let written = view
        .file
        .as_ref()
        .and_then(|f| f.config_path.clone())
        .unwrap_or_default();
    if let Some(reported) = &view.reported_config_path {
        if view.file.is_some() && *reported != written {
            checks.push(Check::warn(
                format!(
                    "{} sets config_path {written:?} but the running containerd uses {reported:?}",
                    file.display()
                ),
                format!("restart containerd so it reads its config: {RESTART}"),
            ));
        }
    }
    let mut deprecated: Vec<String> = view.reported_deprecated.clone();
    if let Some(f) = &view.file {
        deprecated.extend(f.deprecated.iter().map(|d| d.to_string()));
    }
    deprecated.sort();
    deprecated.dedup();
    let table = view.file.as_ref().map_or_else(
        || "the CRI registry table".to_string(),
        |f| format!("`{}`", f.table),
    );
    for name in deprecated {
        let effect = if name == MIRRORS_TABLE {
            "containerd refuses it beside config_path, so `credgate install` does too"
        } else {
            "in containerd 2.1+ it switches CRI pulls to local pull, and its credentials bypass credgate"
        };
        checks.push(Check::warn(
            format!("containerd's config has the deprecated registry.{name} in {table}: {effect}"),
            format!("move each entry to a hosts.toml in the hosts dir, delete registry.{name} from {}, then {RESTART}", file.display()),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    /// The `registry` part of containerd 1.7.24's CRI `info["config"]`, as observed.
    const CRI_17: &str = r#"{"registry":{"auths":null,"configPath":"/tmp/dr/1.7/certs.d","configs":{"reg.example":{"auth":{"auth":"","identitytoken":"","password":"pw-secret","username":"u"},"tls":null}},"headers":null,"mirrors":null}}"#;

    #[test]
    fn the_deprecated_tables_are_the_ones_install_warns_of_plus_mirrors() {
        let json = serde_json::json!({"registry": {
            "auths": {"a.test": {"username": "u"}},
            "configs": {},
            "mirrors": {"b.test": {"endpoint": []}},
        }});
        assert_eq!(registry_from_cri(&json).1, ["auths", "mirrors"]);
    }

    #[test]
    fn containerd_1x_reports_config_path_and_deprecated_tables_without_secrets() {
        let json: serde_json::Value = serde_json::from_str(CRI_17).unwrap();
        let (path, deprecated) = registry_from_cri(&json);
        assert_eq!(path.as_deref(), Some("/tmp/dr/1.7/certs.d"));
        assert_eq!(deprecated, ["configs"]);
        let view = ContainerdView {
            reported_config_path: path,
            reported_deprecated: deprecated,
            file: None,
        };
        let checks = config_path_checks(&view, Path::new("/etc/containerd/config.toml"));
        let verdicts: Vec<_> = checks.iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [Verdict::Ok, Verdict::Warn]);
        assert!(checks.iter().all(|c| !c.to_string().contains("pw-secret")));
    }

    #[test]
    fn containerd_2x_has_no_registry_in_the_cri_config() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"cni":{},"containerdRootDir":"/r"}"#).unwrap();
        assert_eq!(registry_from_cri(&json), (None, Vec::new()));
    }

    fn file_view(config_path: Option<&str>) -> ContainerdView {
        ContainerdView {
            file: Some(RegistrySettings {
                table: "plugins.io.containerd.cri.v1.images.registry".into(),
                config_path: config_path.map(str::to_string),
                deprecated: Vec::new(),
            }),
            ..ContainerdView::default()
        }
    }

    #[test]
    fn an_empty_or_listed_config_path_fails_and_one_directory_passes() {
        let file = Path::new("/etc/containerd/config.toml");
        let verdict = |view: &ContainerdView| config_path_checks(view, file)[0].verdict;
        assert_eq!(verdict(&file_view(None)), Verdict::Fail);
        assert_eq!(verdict(&file_view(Some("/a:/b"))), Verdict::Fail);
        assert_eq!(
            verdict(&file_view(Some("/etc/containerd/certs.d"))),
            Verdict::Ok
        );
        assert_eq!(file_view(Some("/a:/b")).hosts_dir(), Path::new("/a"));
        assert_eq!(file_view(None).hosts_dir(), Path::new(DEFAULT_HOSTS_DIR));
    }

    #[test]
    fn mirrors_beside_config_path_gets_its_own_fix() {
        // containerd 2.1.9's init error, as observed.
        let message =
            "invalid cri image config: `mirrors` cannot be set when `config_path` is provided";
        let fix = plugin_fix(message, Path::new("/etc/containerd/config.toml"));
        assert!(
            fix.starts_with("move each registry.mirrors entry of /etc/containerd/config.toml"),
            "{fix}"
        );
        assert!(is_cri_plugin("io.containerd.cri.v1", "images"));
        assert!(is_cri_plugin("io.containerd.grpc.v1", "cri"));
        assert!(!is_cri_plugin("io.containerd.grpc.v1", "version"));
    }

    #[test]
    fn a_config_changed_since_containerd_started_is_a_warning() {
        let mut view = file_view(Some("/new"));
        view.reported_config_path = Some("/old".into());
        let checks = config_path_checks(&view, Path::new("/c.toml"));
        assert_eq!(
            checks[0].what,
            "containerd's registry config_path is /old (as containerd's CRI reports it)"
        );
        assert_eq!(checks[1].verdict, Verdict::Warn);
    }
}
