//! The `credgate` binary: parse arguments, set up logging, run, map the outcome to an exit
//! code. Everything else lives in the library.

use std::io::IsTerminal;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use clap::Parser;
use credgate::activation::{self, PassedFds};
use credgate::cli::{run, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// Invoked under this name (a symlink), the binary is a docker credential helper.
const DOCKER_HELPER_NAME: &str = "docker-credential-credgate";

fn main() -> ExitCode {
    // First, before anything opens a descriptor: systemd's listening sockets, and the
    // variables naming them out of the environment so no helper inherits them.
    let vars: Vec<_> = std::env::vars_os().collect();
    let inherited = activation::passed_fds(&vars, std::process::id()).map(adopt);
    for name in activation::VARIABLES {
        std::env::remove_var(name);
    }
    let vars = activation::without_variables(vars);
    let mut args = std::env::args_os();
    let invoked_as = args.next().map(std::path::PathBuf::from);
    if invoked_as.as_deref().and_then(|p| p.file_name()) == Some(DOCKER_HELPER_NAME.as_ref()) {
        init_logging(LogFormat::Text, "warn");
        let action = args.next().map(|a| a.to_string_lossy().into_owned());
        return credgate::cli::docker_helper(action, std::env::vars_os().collect());
    }
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.command.default_log_level());
    match run(cli, vars, inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credgate: {e}");
            e.exit_code()
        }
    }
}

/// Takes ownership of the descriptors systemd passed (the sd_listen_fds protocol).
fn adopt(passed: PassedFds) -> Vec<(OwnedFd, String)> {
    passed
        .fds
        .into_iter()
        // SAFETY: LISTEN_PID names this process, so systemd opened descriptors 3..3+LISTEN_FDS
        // for it alone (at most activation::MAX_FDS), and this runs first in main, before
        // anything else in the process could open, close or own them.
        .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
        .collect()
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("CREDGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
