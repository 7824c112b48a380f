//! What `/healthz` says beyond "ok": whether containerd on this node routes its pulls to
//! credgate at all (`credgate serve --containerd-config PATH`). A DaemonSet's pod cannot
//! restart containerd, so when config.toml's `config_path` is unset or a list it can only say
//! so, loudly: in the log whenever the finding changes, and on every `/healthz`. "Routed"
//! means `config_path` names the daemon's own `[containerd] hosts_dir`, the directory whose
//! hosts.toml files send pulls here. The answer stays 200 either way, since restarting
//! credgate would not fix the node.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::containerd::files::{HostsRouting, DEFAULT_HOSTS_DIR};

/// The config is re-read at most this often, however often `/healthz` is asked.
const RECHECK: Duration = Duration::from_secs(10);

/// The node facts `/healthz` reports; without a containerd config to watch, just "ok".
pub struct Health {
    containerd_config: Option<PathBuf>,
    /// The daemon's `[containerd] hosts_dir`: the one directory `config_path` must name.
    hosts_dir: Mutex<PathBuf>,
    last: Mutex<Option<(Instant, HostsRouting)>>,
}

impl Health {
    /// Reports nothing but "ok".
    pub fn plain() -> Health {
        Health::watching(None, Path::new(DEFAULT_HOSTS_DIR))
    }

    /// Reports whether the containerd config at `containerd_config` (when given) routes pulls
    /// to `hosts_dir`, the daemon's `[containerd] hosts_dir`.
    pub fn watching(containerd_config: Option<PathBuf>, hosts_dir: &Path) -> Health {
        Health {
            containerd_config,
            hosts_dir: Mutex::new(hosts_dir.to_path_buf()),
            last: Mutex::new(None),
        }
    }

    /// A reloaded config's `[containerd] hosts_dir`, compared from the next check on.
    pub fn follow_hosts_dir(&self, hosts_dir: &Path) {
        *self.hosts_dir.lock().unwrap_or_else(|e| e.into_inner()) = hosts_dir.to_path_buf();
    }

    /// Reads the config now (at start, and on SIGHUP), logging the finding if it changed.
    pub fn check(&self) {
        let Some(config) = &self.containerd_config else {
            return;
        };
        let hosts_dir = self
            .hosts_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let routing = HostsRouting::assess(config, Some(&hosts_dir));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let changed = last.as_ref().map_or(true, |(_, seen)| *seen != routing);
        if changed {
            if routing.is_routed() {
                tracing::info!("{routing}");
            } else {
                tracing::error!("pulls do not go through credgate: {routing}");
            }
        }
        *last = Some((Instant::now(), routing));
    }

    /// The `/healthz` body: "ok", then one line about containerd when watching it.
    pub fn page(&self) -> String {
        if self.containerd_config.is_none() {
            return "ok\n".to_string();
        }
        let stale = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(true, |(at, _)| at.elapsed() >= RECHECK);
        if stale {
            self.check();
        }
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_ref().map(|(_, routing)| routing) {
            Some(routing) if routing.is_routed() => format!("ok\n{routing}\n"),
            Some(routing) => format!("ok\nWARNING: pulls do not go through credgate: {routing}\n"),
            None => "ok\n".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_health_is_ok_alone() {
        assert_eq!(Health::plain().page(), "ok\n");
    }

    #[test]
    fn the_page_says_how_containerd_routes_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let health = Health::watching(Some(config.clone()), Path::new("/h"));
        let page = health.page();
        assert!(
            page.starts_with("ok\nWARNING: pulls do not go through credgate: "),
            "{page}"
        );
        assert!(page.contains("does not exist"), "{page}");
        std::fs::write(
            &config,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/h\"\n",
        )
        .unwrap();
        // Within RECHECK the page is the last finding; a check (SIGHUP) reads the file again.
        assert!(health.page().contains("does not exist"));
        health.check();
        assert_eq!(
            health.page(),
            format!(
                "ok\ncontainerd reads hosts.toml from /h (config_path in {})\n",
                config.display()
            )
        );
    }

    #[test]
    fn a_config_path_naming_another_directory_is_not_routed() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/docker/certs.d\"\n",
        )
        .unwrap();
        let health = Health::watching(Some(config), Path::new("/etc/containerd/certs.d"));
        let page = health.page();
        assert!(
            page.starts_with("ok\nWARNING: pulls do not go through credgate: "),
            "{page}"
        );
        assert!(
            page.contains(
                "is \"/etc/docker/certs.d\", but credgate writes hosts.toml into \
                 /etc/containerd/certs.d"
            ),
            "{page}"
        );
        // A reload that points credgate at containerd's directory routes it.
        health.follow_hosts_dir(Path::new("/etc/docker/certs.d"));
        health.check();
        assert!(
            health
                .page()
                .starts_with("ok\ncontainerd reads hosts.toml from /etc/docker/certs.d "),
            "{}",
            health.page()
        );
    }
}
