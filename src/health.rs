//! What `/healthz` says beyond "ok": whether containerd on this node routes its pulls to
//! credgate at all (`credgate serve --containerd-config PATH`). A DaemonSet's pod cannot
//! restart containerd, so when config.toml's `config_path` is unset or a list it can only say
//! so, loudly: in the log whenever the finding changes, and on every `/healthz`. The answer
//! stays 200 either way, since restarting credgate would not fix the node.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::containerd::files::HostsRouting;

/// The config is re-read at most this often, however often `/healthz` is asked.
const RECHECK: Duration = Duration::from_secs(10);

/// The node facts `/healthz` reports; without a containerd config to watch, just "ok".
pub struct Health {
    containerd_config: Option<PathBuf>,
    last: Mutex<Option<(Instant, HostsRouting)>>,
}

impl Health {
    /// Reports nothing but "ok".
    pub fn plain() -> Health {
        Health::watching(None)
    }

    /// Reports how the containerd config at `containerd_config` routes pulls.
    pub fn watching(containerd_config: Option<PathBuf>) -> Health {
        Health {
            containerd_config,
            last: Mutex::new(None),
        }
    }

    /// Reads the config now (at start, and on SIGHUP), logging the finding if it changed.
    pub fn check(&self) {
        let Some(config) = &self.containerd_config else {
            return;
        };
        let routing = HostsRouting::assess(config, None);
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
        let health = Health::watching(Some(config.clone()));
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
}
