//! `credgate doctor`: is every pull on this node going through credgate, and would its
//! credentials work? Each check is one line, `ok`, `warn` or `FAIL`, and every line that is not
//! `ok` carries the exact fix. No line ever holds a secret.
//!
//! The checks follow a pull's path: the daemon's socket ([`daemon`]), containerd and the hosts
//! directory it reads ([`containerd`]), the hosts.toml files that send pulls to the endpoint and
//! the secret they carry, and the chain of hosts each of them makes containerd try ([`hosts`]),
//! and each registry's credential against the real registry ([`live`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::containerd::files::ContainerdFileError;
use crate::system::System;

mod containerd;
mod daemon;
mod hosts;
mod live;
mod sources;

/// How long one live check (a registry round trip) may take.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why doctor could not run its checks at all: bad input, exit 2. A failed check is not an
/// error; it is a `FAIL` line.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("{0}")]
    ContainerdConfig(ContainerdFileError),
}

/// `ok`, `warn` or `FAIL`; only `FAIL` makes doctor exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome: what was checked, and for anything not ok, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    pub what: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(what: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Ok,
            what: what.into(),
            fix: None,
        }
    }

    pub fn warn(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{label:<4}  {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every check, in the order run.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count()
    }
}

/// The command-line flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub containerd_config: PathBuf,
    /// `--hosts-dir`: wins over the directory containerd reports.
    pub hosts_dir: Option<PathBuf>,
    pub containerd_socket: PathBuf,
    /// Skip the checks that reach registries.
    pub offline: bool,
}

/// Runs every check. Only unreadable input (containerd's config file) is an error.
pub async fn run(
    config: &Config,
    system: &System,
    options: &Options,
) -> Result<Report, DoctorError> {
    let mut report = Report::default();
    report.checks.extend(daemon::check(&config.listen).await);
    let view = containerd::check(options, &mut report.checks).await?;
    let hosts_dir = options
        .hosts_dir
        .clone()
        .unwrap_or_else(|| view.hosts_dir());
    let keychain = crate::keychain::Keychain::from_config(config, system);
    let registries = live::registries(&keychain).await;
    let hosts = hosts::check(&hosts_dir, &config.listen, system, &registries);
    report.checks.extend(hosts.checks);
    report
        .checks
        .extend(sources::check(config, system.files.as_ref()));
    if options.offline {
        report.checks.push(Check::ok(
            "live credential checks skipped (--offline)".to_string(),
        ));
    } else {
        report
            .checks
            .extend(live::check(config, &keychain, &registries).await);
        report.checks.extend(live::mirrors(&hosts.chains));
    }
    Ok(report)
}
