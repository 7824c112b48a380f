//! `credgate serve`: the daemon's lifecycle. It loads the config, opens the ttrpc socket,
//! reloads on SIGHUP (a bad new config is reported and the old one keeps serving) and stops
//! cleanly on SIGTERM or SIGINT, removing its socket.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::{load_config, CliError};
use crate::config::Config;
use crate::keychain::Keychain;
use crate::service::{self, Daemon};
use crate::system::System;

pub async fn serve(config_path: Option<PathBuf>, system: System) -> Result<(), CliError> {
    let config = load_config(config_path.as_deref())?;
    let socket_path = config.listen.socket.clone();
    let daemon = Arc::new(Daemon::new(
        keychain(&config, &system),
        config.listen.allowed_uids.clone(),
    ));
    let failed = |e: service::SocketError| CliError::Failed(e.to_string());
    let listener = service::bind(&socket_path, opens_to_others(&config)).map_err(failed)?;
    let socket = service::serve_socket(listener, &socket_path, daemon.clone())
        .await
        .map_err(failed)?;
    let signal_err =
        |e: std::io::Error| CliError::Failed(format!("cannot install signal handlers: {e}"));
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_err)?;
    tracing::info!(socket = %socket_path.display(), "credgate is up; serving the Credentials API");
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(config_path.as_deref(), &system, &daemon, &socket_path),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    socket.shutdown().await;
    tracing::info!("credgate stopped");
    Ok(())
}

fn reload(
    config_path: Option<&std::path::Path>,
    system: &System,
    daemon: &Daemon,
    socket_path: &std::path::Path,
) {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(e) => {
            daemon
                .counters
                .failed_reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "reload failed; still serving the previous config");
            return;
        }
    };
    if config.listen.socket != socket_path {
        tracing::warn!(
            new = %config.listen.socket.display(),
            current = %socket_path.display(),
            "listen.socket changed; restart credgate to move the socket"
        );
    }
    daemon.reload(
        keychain(&config, system),
        config.listen.allowed_uids.clone(),
    );
    tracing::info!("config reloaded");
}

/// When any allowed uid is not root, the socket must be connectable by others and
/// SO_PEERCRED becomes the only gate.
fn opens_to_others(config: &Config) -> bool {
    config.listen.allowed_uids.iter().any(|&uid| uid != 0)
}

fn keychain(config: &Config, system: &System) -> Keychain {
    let keychain = Keychain::from_config(config, system);
    let path = config
        .path
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    tracing::info!(config = %path, sources = keychain.source_names().len(), "keychain loaded");
    for name in keychain.source_names() {
        tracing::info!(source = %name, "credential source");
    }
    keychain
}
