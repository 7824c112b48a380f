//! `credgate serve`: the daemon's lifecycle. It loads the config, builds the keychain,
//! reloads on SIGHUP (a bad new config is reported and the old one keeps serving) and stops
//! cleanly on SIGTERM or SIGINT. The front doors (ttrpc socket, pull-through endpoint)
//! attach to the keychain held here.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::{load_config, CliError};
use crate::config::Config;
use crate::keychain::Keychain;
use crate::system::System;

pub async fn serve(config_path: Option<PathBuf>, system: System) -> Result<(), CliError> {
    let config = load_config(config_path.as_deref())?;
    let mut keychain = start(&config, &system);
    let signal_err =
        |e: std::io::Error| CliError::Failed(format!("cannot install signal handlers: {e}"));
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_err)?;
    tracing::info!(
        "credgate is up; no front door is built yet (the ttrpc socket and the pull-through endpoint come next), so lookups go through `credgate lookup`"
    );
    loop {
        tokio::select! {
            _ = hangup.recv() => match load_config(config_path.as_deref()) {
                Ok(config) => keychain = start(&config, &system),
                Err(e) => tracing::error!(error = %e, "reload failed; still serving the previous config"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    drop(keychain);
    tracing::info!("credgate stopped");
    Ok(())
}

fn start(config: &Config, system: &System) -> Arc<Keychain> {
    let keychain = Arc::new(Keychain::from_config(config, system));
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
