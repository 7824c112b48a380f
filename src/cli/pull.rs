//! `credgate pull REF`: pull through containerd's transfer service, answering its auth
//! stream from the keychain (see [`crate::transfer`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{load_config, CliError};
use crate::containerd::Containerd;
use crate::system::System;
use crate::transfer::auth::AuthAnswerer;
use crate::transfer::progress::ProgressView;
use crate::transfer::{self, PullRequest, TransferError};

/// `credgate pull`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image to pull (busybox, registry.test:5000/group/app:v1, …@sha256:…)
    #[arg(value_name = "REF")]
    reference: String,
    /// containerd's socket
    #[arg(long, visible_alias = "socket", env = "CONTAINERD_ADDRESS", value_name = "CONTAINERD_SOCK",
          default_value = crate::containerd::DEFAULT_SOCKET)]
    address: PathBuf,
    /// containerd namespace to store the image in
    #[arg(long, short = 'n', env = "CONTAINERD_NAMESPACE", default_value = crate::containerd::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Hosts directory (hosts.toml) containerd resolves this pull's registry with (containerd >= 2.0)
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// Platform to pull and unpack, os/arch[/variant] [default: this host's]
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Use plain HTTP for registries without a hosts.toml entry (containerd >= 2.0)
    #[arg(long)]
    plain_http: bool,
    /// Show no progress
    #[arg(long)]
    no_progress: bool,
}

pub async fn pull(
    args: PullArgs,
    config_path: Option<&Path>,
    system: System,
    vars: &[(OsString, OsString)],
) -> Result<(), CliError> {
    let request = PullRequest::new(
        &args.reference,
        &args.namespace,
        args.hosts_dir.as_deref(),
        args.platform.as_deref(),
        args.plain_http,
    )
    .map_err(cli_error)?;
    let config = load_config(config_path)?;
    let daemon_socket = crate::clients::socket_for(vars, &config);
    let mut answerer = AuthAnswerer::new(daemon_socket, config, system);
    let containerd = Containerd::connect(&args.address)
        .await
        .map_err(|e| cli_error(e.into()))?;
    let view = ProgressView::for_stderr(!args.no_progress);
    transfer::pull(&containerd, &request, &mut answerer, &view)
        .await
        .map_err(cli_error)?;
    println!("{}", request.image);
    Ok(())
}

fn cli_error(error: TransferError) -> CliError {
    match error {
        TransferError::Reference(e) => CliError::Reference(e),
        e if e.is_bad_input() => CliError::BadInput(e.to_string()),
        e => CliError::Failed(e.to_string()),
    }
}
