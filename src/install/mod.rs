//! `credgate install` and `credgate uninstall`: register the pull-through endpoint with
//! containerd. The containerd config's `config_path` names one hosts directory, and every
//! hosts.toml there sends each of its hosts, in order, through the endpoint ([`fronting`]).
//! Every write is atomic and backed up, every file that carries the secret is 0600, nothing
//! printed shows a secret, and a state file records what install created and modified so that
//! uninstall can undo exactly that.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::containerd::files::ContainerdFileError;
use crate::secret::{MirrorSecret, SecretError};

mod containerd_config;
mod files;
pub(crate) mod fronting;
mod hosts;
mod hosts_only;
mod redact;
mod state;
mod undo;

use files::Change;
pub use files::NotRegular;
pub use fronting::FrontingError;
use hosts::Endpoint;
pub use hosts_only::{install_hosts_only, HostsOnlyError};
use redact::Redactor;
use state::InstallState;

/// Why install or uninstall did not finish; every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// containerd's config or a hosts.toml as read, before any edit.
    #[error(transparent)]
    ContainerdFile(#[from] ContainerdFileError),
    #[error("{path}: `{key}` is not a table")]
    NotATable { path: PathBuf, key: String },
    /// A hosts.toml whose hosts credgate cannot front as containerd would read them.
    #[error(transparent)]
    Fronting(#[from] FrontingError),
    #[error(
        "{path}: `{key}` has entries ({entries}), and {containerd} refuses it together with \
         config_path (the CRI plugin would not load): write each as <hosts dir>/<registry>/hosts.toml \
         and delete it, then run install again"
    )]
    RejectedWithConfigPath {
        path: PathBuf,
        key: String,
        entries: String,
        containerd: &'static str,
    },
    #[error("{path}: `{key}` is not a string")]
    NotAString { path: PathBuf, key: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the install state is unreadable: {message}")]
    State { path: PathBuf, message: String },
    #[error("{path}: its backup {backup} is missing, so the original cannot be restored")]
    MissingBackup { path: PathBuf, backup: PathBuf },
    #[error(
        "{path} is {kind}: credgate neither reads nor writes through it, since whoever can \
         write its directory may have pointed it at another file; make it a regular file and \
         run again"
    )]
    NotARegularFile { path: PathBuf, kind: NotRegular },
    #[error(
        "{backup} is not the backup install made of {path} (the install state does not record \
         it, or it changed since): check it, move it away, and run again"
    )]
    UnrecordedBackup { path: PathBuf, backup: PathBuf },
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Another variant's message with the secrets in it replaced: nothing printed shows one.
    #[error("{message}")]
    Redacted { message: String, bad_input: bool },
}

impl InstallError {
    /// Bad input (exit 2) rather than a failed operation (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            InstallError::ContainerdFile(e) => e.is_bad_input(),
            InstallError::Redacted { bad_input, .. } => *bad_input,
            _ => matches!(
                self,
                InstallError::NotATable { .. }
                    | InstallError::Fronting(_)
                    | InstallError::NotAString { .. }
                    | InstallError::RejectedWithConfigPath { .. }
                    | InstallError::State { .. }
                    | InstallError::NotARegularFile { .. }
                    | InstallError::UnrecordedBackup { .. }
                    | InstallError::Secret(SecretError::Empty { .. })
                    | InstallError::Secret(SecretError::NotAHeaderValue { .. })
            ),
        }
    }
}

/// The command-line flags install and uninstall share.
#[derive(Debug, Clone)]
pub struct Options {
    pub containerd_config: PathBuf,
    /// `--hosts-dir`: wins over the directory `config_path` already names.
    pub hosts_dir: Option<PathBuf>,
    pub dry_run: bool,
}

impl Options {
    /// The same options with absolute paths, so the install state means the same files
    /// whatever directory uninstall runs in.
    fn absolute(&self) -> Result<Self, InstallError> {
        let absolute = |path: &Path| {
            std::path::absolute(path).map_err(|source| InstallError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Self {
            containerd_config: absolute(&self.containerd_config)?,
            hosts_dir: self.hosts_dir.as_deref().map(absolute).transpose()?,
            dry_run: self.dry_run,
        })
    }
}

/// What a run says: lines for stdout, and one-line warnings for stderr.
#[derive(Debug, Default)]
pub struct Report {
    pub stdout: Vec<String>,
    pub warnings: Vec<String>,
}

/// `credgate install`.
pub fn install(config: &Config, options: &Options) -> Result<Report, InstallError> {
    let mut redactor = Redactor::default();
    let outcome = install_files(config, options, &mut redactor);
    redactor.outcome(outcome)
}

fn install_files(
    config: &Config,
    options: &Options,
    redactor: &mut Redactor,
) -> Result<Report, InstallError> {
    let options = &options.absolute()?;
    let mut report = Report::default();
    let edit = containerd_config::plan(&options.containerd_config, options.hosts_dir.as_deref())?;
    report.stdout.extend(edit.notes.iter().cloned());
    report.warnings.extend(edit.warnings.iter().cloned());
    let endpoint = endpoint(config, options.dry_run, &mut report, redactor)?;
    let state_path = state::path(&edit.hosts_dir);
    let state = InstallState::load(&state_path)?.unwrap_or_default();
    let mut changes = vec![edit.change.clone()];
    changes.extend(hosts::plan(
        &edit.hosts_dir,
        &endpoint,
        &state,
        &mut report,
    )?);
    let already_installed = format!(
        "already installed: {} and the hosts.toml files in {} need no change",
        options.containerd_config.display(),
        edit.hosts_dir.display()
    );
    let plan = Plan {
        hosts_dir: &edit.hosts_dir,
        containerd_config: Some(&edit.change.path),
        changes,
        state,
        already_installed,
    };
    plan.carry_out(options.dry_run, redactor, &mut report)?;
    Ok(report)
}

/// `credgate uninstall`.
pub fn uninstall(options: &Options) -> Result<Report, InstallError> {
    let mut redactor = Redactor::default();
    let outcome = uninstall_files(options, &mut redactor);
    redactor.outcome(outcome)
}

fn uninstall_files(options: &Options, redactor: &mut Redactor) -> Result<Report, InstallError> {
    let options = &options.absolute()?;
    let mut report = Report::default();
    let hosts_dir = containerd_config::installed_hosts_dir(
        &options.containerd_config,
        options.hosts_dir.as_deref(),
    );
    let state_path = state::path(&hosts_dir);
    let Some(state) = InstallState::load(&state_path)? else {
        report.stdout.push(format!(
            "not installed: no install state at {}, nothing to undo",
            state_path.display()
        ));
        return Ok(report);
    };
    undo::undo(&state, &state_path, options.dry_run, &mut report, redactor)?;
    Ok(report)
}

/// The endpoint's URL and secret, which `redactor` then shows as the secret file's contents.
/// A dry run never generates the secret (that would write).
fn endpoint(
    config: &Config,
    dry_run: bool,
    report: &mut Report,
    redactor: &mut Redactor,
) -> Result<Endpoint, InstallError> {
    let url = config.listen.mirror_url();
    let path = &config.listen.mirror_secret_file;
    let secret = match (dry_run, MirrorSecret::read(path)) {
        (_, Ok(secret)) => String::from_utf8_lossy(secret.reveal()).into_owned(),
        (true, Err(SecretError::Read { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            report.stdout.push(format!(
                "dry run: {} does not exist; install will generate it",
                path.display()
            ));
            "<generated by install>".to_string()
        }
        (false, _) => {
            let (secret, _) = MirrorSecret::read_or_generate(path)?;
            String::from_utf8_lossy(secret.reveal()).into_owned()
        }
        (true, Err(e)) => return Err(e.into()),
    };
    redactor.endpoint_secret(&secret, path);
    Ok(Endpoint { url, secret })
}

fn show_dry_run(changes: &[Change], report: &mut Report, redactor: &mut Redactor) {
    for change in changes {
        report.stdout.push(change.diff(redactor));
    }
    report
        .stdout
        .push("dry run: nothing was written".to_string());
}

/// Backs up and writes every change, recording each in the install state.
/// What install (or `--hosts-only`) found to change, and how to carry it out: the common end
/// of both, so they learn the secret's context, skip no-ops, check backups, show a dry run and
/// write (saving the state after each file) the same way.
pub(super) struct Plan<'a> {
    pub hosts_dir: &'a Path,
    /// containerd's config.toml when this run may edit it (`--hosts-only` never does).
    pub containerd_config: Option<&'a Path>,
    pub changes: Vec<Change>,
    pub state: InstallState,
    /// The line when nothing needs changing.
    pub already_installed: String,
}

impl Plan<'_> {
    pub(super) fn carry_out(
        mut self,
        dry_run: bool,
        redactor: &mut Redactor,
        report: &mut Report,
    ) -> Result<(), InstallError> {
        for found in self.changes.iter().filter_map(|c| c.before.as_ref()) {
            redactor.learn(&found.bytes);
        }
        self.changes.retain(Change::changes_anything);
        if self.changes.is_empty() {
            report.stdout.push(self.already_installed);
            return Ok(());
        }
        for change in &self.changes {
            change.check_backup(&self.state)?;
        }
        if dry_run {
            show_dry_run(&self.changes, report, redactor);
            return Ok(());
        }
        self.apply(report)
    }

    fn apply(mut self, report: &mut Report) -> Result<(), InstallError> {
        let state_path = state::path(self.hosts_dir);
        files::create_dirs(self.hosts_dir, &mut self.state).map_err(|source| {
            InstallError::Write {
                path: self.hosts_dir.to_path_buf(),
                source,
            }
        })?;
        let is_config = |change: &Change| Some(change.path.as_path()) == self.containerd_config;
        for change in &self.changes {
            let line = change.apply(&mut self.state)?;
            if is_config(change) {
                self.state.containerd_config = Some(change.path.clone());
            }
            report.stdout.push(line);
            // Saved after each file, so a failure midway still leaves uninstall a full record.
            self.state.save(&state_path)?;
        }
        match self.changes.iter().find(|c| is_config(c)) {
            Some(config) => report.stdout.push(format!(
                "restart containerd (systemctl restart containerd): it reads {} only at start; \
                 hosts.toml files are read at each pull",
                config.path.display()
            )),
            None => report.stdout.push(
                "hosts.toml files are read at each pull: no containerd restart needed".to_string(),
            ),
        }
        Ok(())
    }
}
