//! `credgate install --hosts-only`: what a pod may do to a node. It writes the hosts.toml
//! files (with backups and the install state, so `credgate uninstall` undoes them) and never
//! containerd's config.toml, which only takes effect when containerd restarts, and a pod
//! cannot restart containerd. Whether config.toml's `config_path` makes containerd read those
//! files is reported instead ([`HostsRouting`]), loudly when it does not.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::containerd::files::{HostsRouting, DEFAULT_HOSTS_DIR};

use super::redact::Redactor;
use super::state::{self, InstallState};
use super::{endpoint, hosts, InstallError, Options, Plan, Report};

/// Why `install --hosts-only` did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HostsOnlyError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(
        "{state}: `credgate install` on this node also set config_path in {config}; \
         `--hosts-only` (the DaemonSet's init step) would share its record, and uninstalling \
         from a pod cannot restore config.toml: run `credgate uninstall` on the node first, \
         or keep the node's own install and no DaemonSet"
    )]
    NodeInstall { state: PathBuf, config: PathBuf },
}

impl HostsOnlyError {
    /// Bad input (exit 2) rather than a failed operation (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            HostsOnlyError::Install(e) => e.is_bad_input(),
            HostsOnlyError::NodeInstall { .. } => true,
        }
    }
}

/// `credgate install --hosts-only`: hosts.toml in `--hosts-dir` (else the one directory
/// `config_path` names, else the default); containerd's config is only read.
pub fn install_hosts_only(config: &Config, options: &Options) -> Result<Report, HostsOnlyError> {
    let mut redactor = Redactor::default();
    let outcome = write_hosts(config, options, &mut redactor);
    // Errors go through the redactor like install's, so none can show the secret.
    match outcome {
        Ok(report) => redactor.outcome(Ok(report)).map_err(HostsOnlyError::from),
        Err(HostsOnlyError::Install(e)) => redactor.outcome(Err(e)).map_err(HostsOnlyError::from),
        Err(other) => Err(other),
    }
}

fn write_hosts(
    config: &Config,
    options: &Options,
    redactor: &mut Redactor,
) -> Result<Report, HostsOnlyError> {
    let options = &options.absolute()?;
    let mut report = Report::default();
    let hosts_dir = hosts_dir(options);
    let routing = HostsRouting::assess(&options.containerd_config, Some(&hosts_dir));
    report_routing(&routing, &options.containerd_config, &mut report);
    let state_path = state::path(&hosts_dir);
    let state = InstallState::load(&state_path)?.unwrap_or_default();
    if let Some(config) = &state.containerd_config {
        return Err(HostsOnlyError::NodeInstall {
            state: state_path,
            config: config.clone(),
        });
    }
    let endpoint = endpoint(config, options.dry_run, &mut report, redactor)?;
    let changes = hosts::plan(&hosts_dir, &endpoint, &state, &mut report)?;
    let plan = Plan {
        hosts_dir: &hosts_dir,
        containerd_config: None,
        changes,
        state,
        already_installed: format!(
            "already installed: the hosts.toml files in {} need no change",
            hosts_dir.display()
        ),
    };
    plan.carry_out(options.dry_run, redactor, &mut report)?;
    Ok(report)
}

/// `--hosts-dir`; else the one directory `config_path` names; else the default.
fn hosts_dir(options: &Options) -> PathBuf {
    if let Some(dir) = &options.hosts_dir {
        return dir.clone();
    }
    let named = HostsRouting::assess(&options.containerd_config, None);
    PathBuf::from(named.named_dir().unwrap_or(DEFAULT_HOSTS_DIR))
}

/// A routed config is a note; anything else is a warning that says what to set on the node.
fn report_routing(routing: &HostsRouting, config: &Path, report: &mut Report) {
    if routing.is_routed() {
        report.stdout.push(routing.to_string());
    } else {
        report.warnings.push(format!(
            "WARNING: pulls do not go through credgate: {routing}. \
             --hosts-only leaves {} untouched and writes the hosts.toml files anyway, so \
             pulls reach credgate once containerd reads them",
            config.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, hosts_dir: Option<&Path>, dry_run: bool) -> Options {
        Options {
            containerd_config: dir.join("config.toml"),
            hosts_dir: hosts_dir.map(Path::to_path_buf),
            dry_run,
        }
    }

    fn config_with_secret(dir: &Path) -> Config {
        let secret = dir.join("mirror-secret");
        std::fs::write(&secret, "s3cr3t-hosts-only").unwrap();
        let text = format!(
            "[listen]\nmirror_secret_file = {:?}\n",
            secret.display().to_string()
        );
        let path = dir.join("credgate.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    #[test]
    fn writes_hosts_toml_and_never_the_containerd_config_whatever_its_config_path() {
        for containerd in [
            None,
            Some("version = 2\n"),
            Some("version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/a:/b'\n"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = config_with_secret(dir.path());
            if let Some(text) = containerd {
                std::fs::write(dir.path().join("config.toml"), text).unwrap();
            }
            let hosts = dir.path().join("certs.d");
            let report =
                install_hosts_only(&config, &options(dir.path(), Some(&hosts), false)).unwrap();
            let warning = report.warnings.join("\n");
            assert!(warning.contains("WARNING: pulls do not go through credgate"), "{warning}");
            assert!(!warning.contains("s3cr3t"), "{warning}");
            let written = std::fs::read_to_string(hosts.join("_default/hosts.toml")).unwrap();
            assert!(written.contains("s3cr3t-hosts-only"), "{written}");
            let after = std::fs::read_to_string(dir.path().join("config.toml")).ok();
            assert_eq!(after.as_deref(), containerd, "config.toml was touched");
        }
    }

    #[test]
    fn a_routed_config_is_a_note_and_a_second_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_secret(dir.path());
        let hosts = dir.path().join("certs.d");
        let text = format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = {:?}\n",
            hosts.display().to_string()
        );
        std::fs::write(dir.path().join("config.toml"), &text).unwrap();
        // No --hosts-dir: the directory config_path names.
        let report = install_hosts_only(&config, &options(dir.path(), None, false)).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(report.stdout[0].starts_with("containerd reads hosts.toml from"));
        assert!(hosts.join("_default/hosts.toml").is_file());
        let again = install_hosts_only(&config, &options(dir.path(), None, false)).unwrap();
        assert!(again
            .stdout
            .last()
            .unwrap()
            .starts_with("already installed"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.toml")).unwrap(),
            text
        );
    }

    #[test]
    fn a_dry_run_shows_the_hosts_toml_without_its_secret_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_secret(dir.path());
        let hosts = dir.path().join("certs.d");
        let report = install_hosts_only(&config, &options(dir.path(), Some(&hosts), true)).unwrap();
        let shown = report.stdout.join("\n");
        assert!(
            shown.contains("+[host.\"http://127.0.0.1:5008\"]"),
            "{shown}"
        );
        assert!(shown.ends_with("dry run: nothing was written"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!hosts.exists());
    }

    #[test]
    fn a_node_install_that_set_config_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_secret(dir.path());
        let hosts = dir.path().join("certs.d");
        std::fs::create_dir_all(&hosts).unwrap();
        let node_state = InstallState {
            containerd_config: Some(dir.path().join("config.toml")),
            ..InstallState::default()
        };
        node_state.save(&state::path(&hosts)).unwrap();
        let err =
            install_hosts_only(&config, &options(dir.path(), Some(&hosts), false)).unwrap_err();
        assert!(matches!(err, HostsOnlyError::NodeInstall { .. }), "{err}");
        assert!(err.is_bad_input());
        assert!(!hosts.join("_default").exists());
    }
}
