//! `credgate doctor`: flags, one line per check on stdout, and the exit code (0 when nothing
//! failed, 1 when a check failed, 2 when the input could not be read).

use std::path::{Path, PathBuf};

use crate::doctor::{self, DoctorError};
use crate::system::System;

use super::{load_config, CliError};

/// The flags of `credgate doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// containerd's config file (read for config_path when containerd's CRI does not report it)
    #[arg(long, value_name = "PATH", default_value = crate::containerd::files::DEFAULT_CONTAINERD_CONFIG)]
    containerd_config: PathBuf,
    /// Hosts directory to check [default: the one containerd's config_path names]
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// containerd's socket
    #[arg(
        long,
        visible_alias = "address",
        value_name = "CONTAINERD_SOCK",
        env = "CONTAINERD_ADDRESS",
        default_value = crate::containerd::DEFAULT_SOCKET
    )]
    containerd_address: PathBuf,
    /// Skip the checks that contact registries
    #[arg(long)]
    offline: bool,
}

pub async fn doctor(
    config_path: Option<&Path>,
    system: &System,
    args: DoctorArgs,
) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    let options = doctor::Options {
        containerd_config: args.containerd_config,
        hosts_dir: args.hosts_dir,
        containerd_socket: args.containerd_address,
        offline: args.offline,
    };
    let report = doctor::run(&config, system, &options)
        .await
        .map_err(|e| match e {
            DoctorError::ContainerdConfig(e) => CliError::BadInput(e.to_string()),
        })?;
    for check in &report.checks {
        println!("{check}");
    }
    match report.failures() {
        0 => Ok(()),
        1 => Err(CliError::Failed("doctor: 1 check failed".to_string())),
        n => Err(CliError::Failed(format!("doctor: {n} checks failed"))),
    }
}
