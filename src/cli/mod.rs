//! The command line: argument definitions, config resolution, and the one place errors
//! become exit codes (0 ok, 1 operation failed, 2 bad usage or input).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::activation::ActivationError;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::identity::IdentityError;

mod doctor;
mod lookup;
mod pull;
mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "credgate",
    version,
    about = "One registry credential lookup for every image pull on a containerd node"
)]
pub struct Cli {
    /// Config file [default: $CREDGATE_CONFIG, else /etc/credgate/config.toml if it exists,
    /// else built-in defaults]
    #[arg(long, global = true, env = "CREDGATE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon
    Serve(serve::ServeArgs),
    /// Resolve REF offline from the config and print the decision
    Lookup {
        /// An image reference (busybox, registry.test:443/group/app:v1) or a bare registry
        #[arg(value_name = "REF")]
        reference: String,
        /// Print JSON: {registry, repository, auth_type, username, secret?, source, matched}
        #[arg(long)]
        json: bool,
        /// Include the secret in the output
        #[arg(long)]
        show_secret: bool,
        /// The decision for a mirror of REF's registry instead: a host key of its hosts.toml
        /// (in `[containerd] hosts_dir`), or a bare host[:port] naming exactly one host there
        #[arg(long, value_name = "MIRROR")]
        via: Option<String>,
    },
    /// Show every candidate from every source, which one won and why
    Explain {
        #[arg(value_name = "REF")]
        reference: String,
        /// Explain what a mirror of REF's registry gets (see `lookup --via`)
        #[arg(long, value_name = "MIRROR")]
        via: Option<String>,
    },
    /// kubelet credential provider plugin: CredentialProviderRequest on stdin, response on stdout
    KubeletProvider,
    /// Route containerd's pulls through credgate: config.toml's config_path and hosts.toml
    Install(InstallArgs),
    /// Undo `credgate install`: restore modified files, remove created ones
    Uninstall(ContainerdFiles),
    /// Pull an image through containerd's transfer service with credentials from credgate
    Pull(pull::PullArgs),
    /// Check that every pull goes through credgate and its credentials work; each problem with its fix
    Doctor(doctor::DoctorArgs),
}

/// `credgate install` flags.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    files: ContainerdFiles,
    /// Write hosts.toml files only, never containerd's config (a pod's init step: it cannot
    /// restart containerd); say loudly when config_path does not send pulls to them
    #[arg(long)]
    hosts_only: bool,
}

/// The containerd files `install` and `uninstall` work on.
#[derive(Debug, clap::Args)]
pub struct ContainerdFiles {
    /// containerd's config file
    #[arg(long, value_name = "PATH", default_value = crate::containerd::files::DEFAULT_CONTAINERD_CONFIG)]
    containerd_config: PathBuf,
    /// Hosts directory [default: the one config_path names, else /etc/containerd/certs.d]
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// Print a unified diff of every change and write nothing
    #[arg(long)]
    dry_run: bool,
}

impl From<ContainerdFiles> for crate::install::Options {
    fn from(files: ContainerdFiles) -> Self {
        Self {
            containerd_config: files.containerd_config,
            hosts_dir: files.hosts_dir,
            dry_run: files.dry_run,
        }
    }
}

impl Command {
    /// The log level used when `CREDGATE_LOG` is not set: the daemon narrates, one-shot
    /// commands only warn.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

/// Why a command did not succeed; [`CliError::exit_code`] is the only mapping to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Reference(#[from] IdentityError),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::Reference(_) | CliError::BadInput(_) => {
                ExitCode::from(2)
            }
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

/// Runs a parsed command line; `vars` is the process environment, captured by `main`, and
/// `inherited` the listening sockets systemd passed (only `serve` uses them).
pub fn run(
    cli: Cli,
    vars: Vec<(OsString, OsString)>,
    inherited: Result<Vec<(OwnedFd, String)>, ActivationError>,
) -> Result<(), CliError> {
    let system = crate::system::System::real(vars.clone());
    // One thread: a lookup is microseconds of work, and hand-offs between worker threads
    // dominated its latency (the credentials benchmark: Lookup p50 105 → 91 µs, throughput
    // at concurrency 16 ×1.8). Helpers and plugins run as child processes either way.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    let config_path = cli.config.clone();
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(config_path, system, args, inherited).await,
            Command::Lookup {
                reference,
                json,
                show_secret,
                via,
            } => {
                let config = load_config(config_path.as_deref())?;
                let via = via.as_deref();
                lookup::lookup(&config, &system, &reference, via, json, show_secret).await
            }
            Command::Explain { reference, via } => {
                let config = load_config(config_path.as_deref())?;
                lookup::explain(&config, &system, &reference, via.as_deref()).await
            }
            Command::KubeletProvider => kubelet_provider(config_path.as_deref(), &vars).await,
            Command::Install(args) => {
                let config = load_config(config_path.as_deref())?;
                if args.hosts_only {
                    return install_hosts_only(&config, args.files);
                }
                report_install(crate::install::install(&config, &args.files.into()))
            }
            Command::Uninstall(files) => report_install(crate::install::uninstall(&files.into())),
            Command::Pull(args) => pull::pull(args, config_path.as_deref(), system, &vars).await,
            Command::Doctor(args) => doctor::doctor(config_path.as_deref(), &system, args).await,
        }
    })
}

async fn kubelet_provider(
    config: Option<&Path>,
    vars: &[(OsString, OsString)],
) -> Result<(), CliError> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .map_err(|e| CliError::Failed(format!("cannot read the request from stdin: {e}")))?;
    match crate::clients::kubelet_provider::run(&input, vars, config).await {
        Ok(response) => {
            println!("{response}");
            Ok(())
        }
        Err(e) if e.is_bad_input() => Err(CliError::BadInput(e.to_string())),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// `credgate install --hosts-only`, reported as install is.
fn install_hosts_only(config: &Config, files: ContainerdFiles) -> Result<(), CliError> {
    match crate::install::install_hosts_only(config, &files.into()) {
        Ok(report) => report_install(Ok(report)),
        Err(e) if e.is_bad_input() => Err(CliError::BadInput(e.to_string())),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// Prints an install or uninstall report: warnings on stderr, the rest on stdout.
fn report_install(
    outcome: Result<crate::install::Report, crate::install::InstallError>,
) -> Result<(), CliError> {
    match outcome {
        Ok(report) => {
            for warning in &report.warnings {
                eprintln!("credgate: {warning}");
            }
            for line in &report.stdout {
                println!("{}", line.trim_end());
            }
            Ok(())
        }
        Err(e) if e.is_bad_input() => Err(CliError::BadInput(e.to_string())),
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// `docker-credential-credgate ACTION`: the credential helper protocol on stdin/stdout.
pub fn docker_helper(action: Option<String>, vars: Vec<(OsString, OsString)>) -> ExitCode {
    let mut input = String::new();
    // store and erase are refused, but their input is read first so the client's write
    // doesn't fail with a broken pipe before it sees the reason.
    if matches!(action.as_deref(), Some("get" | "store" | "erase")) {
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
            println!("cannot read stdin: {e}");
            return ExitCode::from(1);
        }
    }
    // One thread: a lookup is microseconds of work, and hand-offs between worker threads
    // dominated its latency (the credentials benchmark: Lookup p50 105 → 91 µs, throughput
    // at concurrency 16 ×1.8). Helpers and plugins run as child processes either way.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        println!("cannot start the async runtime");
        return ExitCode::from(1);
    };
    let reply = runtime.block_on(crate::clients::docker_helper::run(
        action.as_deref(),
        &input,
        &vars,
    ));
    // Errors go to stdout too, one line as docker's helpers print them (`fmt.Fprintln`):
    // docker's helper client shows stdout in its error message.
    print!("{}", reply.stdout);
    if reply.code != 0 && !reply.stdout.ends_with('\n') {
        println!();
    }
    ExitCode::from(reply.code)
}

/// An explicit path must exist; without one, the default path is used if present, else the
/// built-in config (so `credgate serve` works on a fresh machine).
pub fn load_config(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    match explicit {
        Some(path) => Config::load(path),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Ok(Config::builtin()),
    }
}
