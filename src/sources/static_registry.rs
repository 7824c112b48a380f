//! `[[registry]]` entries from credgate's own config: one scope, one secret each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::exec_helper::{CredentialHelper, HelperRuns};
use super::{Credential, Fetch, Listed, Offer, SecretKind, Source, SourceError};
use crate::config::{RegistryEntry, SecretSpec};
use crate::identity::{Scope, Target};
use crate::system::{Files, System};

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("secret file {path} for [[registry]] {scope:?}: {source}")]
    SecretFile {
        path: PathBuf,
        scope: String,
        source: std::io::Error,
    },
    #[error("secret file {path} for [[registry]] {scope:?} is empty")]
    EmptySecretFile { path: PathBuf, scope: String },
}

pub struct StaticRegistrySource {
    entry: RegistryEntry,
    system: System,
    helper: Option<Arc<CredentialHelper>>,
}

impl StaticRegistrySource {
    /// Warns (once, here) about secret files others can read and about missing ones; a
    /// missing file is not fatal because it may be provisioned after credgate starts.
    pub fn new(entry: &RegistryEntry, system: System, helper_runs: &Arc<HelperRuns>) -> Self {
        let helper = match &entry.secret {
            SecretSpec::Helper(name) => {
                Some(Arc::new(CredentialHelper::new(name, &system, helper_runs)))
            }
            _ => None,
        };
        let source = Self {
            entry: entry.clone(),
            system,
            helper,
        };
        source.warn_about_exposure();
        source
    }

    fn warn_about_exposure(&self) {
        let files = self.system.files.as_ref();
        let scope = self.entry.scope.to_string();
        match secret_file(&self.entry.secret) {
            Some((path, _)) => warn_if_exposed(files, path, &scope, "secret file"),
            None if is_inline(&self.entry.secret) => warn_if_exposed(
                files,
                &self.entry.location.path,
                &scope,
                "config file with an inline secret",
            ),
            None => {}
        }
    }
}

fn is_inline(spec: &SecretSpec) -> bool {
    matches!(
        spec,
        SecretSpec::Password(_) | SecretSpec::IdentityToken(_) | SecretSpec::RegistryToken(_)
    )
}

/// The kind of secret an entry holds; `None` when only its helper knows.
fn secret_kind(spec: &SecretSpec) -> Option<SecretKind> {
    match spec {
        SecretSpec::Password(_) | SecretSpec::PasswordFile(_) => Some(SecretKind::Password),
        SecretSpec::IdentityToken(_) | SecretSpec::IdentityTokenFile(_) => {
            Some(SecretKind::IdentityToken)
        }
        SecretSpec::RegistryToken(_) | SecretSpec::RegistryTokenFile(_) => {
            Some(SecretKind::RegistryToken)
        }
        SecretSpec::Helper(_) => None,
    }
}

fn secret_file(spec: &SecretSpec) -> Option<(&Path, SecretKind)> {
    match spec {
        SecretSpec::PasswordFile(p) => Some((p, SecretKind::Password)),
        SecretSpec::IdentityTokenFile(p) => Some((p, SecretKind::IdentityToken)),
        SecretSpec::RegistryTokenFile(p) => Some((p, SecretKind::RegistryToken)),
        _ => None,
    }
}

fn warn_if_exposed(files: &dyn Files, path: &Path, scope: &str, what: &str) {
    match files.stamp(path) {
        Ok(stamp) if stamp.mode & 0o077 != 0 => tracing::warn!(
            path = %path.display(),
            scope,
            mode = format_args!("{:04o}", stamp.mode),
            "{what} is readable by group or others; run: chmod 600 {}",
            path.display()
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), scope, error = %e, "{what} cannot be read")
        }
    }
}

#[async_trait]
impl Source for StaticRegistrySource {
    fn name(&self) -> String {
        format!("[[registry]] at {}", self.entry.location)
    }

    fn fixed_scope(&self) -> Option<&Scope> {
        Some(&self.entry.scope)
    }

    async fn listing(&self) -> Result<Vec<Listed>, SourceError> {
        Ok(vec![Listed {
            scope: self.entry.scope.clone(),
            username: self.entry.username.clone(),
            kind: secret_kind(&self.entry.secret),
        }])
    }

    async fn offers(&self, target: &Target) -> Result<Vec<Offer>, SourceError> {
        if !self.entry.scope.matches(target) {
            return Ok(Vec::new());
        }
        let scope = self.entry.scope.clone();
        let username = self.entry.username.clone();
        let offer = match &self.entry.secret {
            SecretSpec::Password(s) => Offer::ready(
                scope,
                "password",
                Credential::new(username, s.expose(), SecretKind::Password),
            ),
            SecretSpec::IdentityToken(s) => Offer::ready(
                scope,
                "identity_token",
                Credential::new(username, s.expose(), SecretKind::IdentityToken),
            ),
            SecretSpec::RegistryToken(s) => Offer::ready(
                scope,
                "registry_token",
                Credential::new(username, s.expose(), SecretKind::RegistryToken),
            ),
            SecretSpec::Helper(_) => {
                let helper = self.helper.as_ref().expect("helper entries build a helper");
                let origin = format!("helper {}", helper.name());
                Offer::new(
                    scope,
                    origin,
                    helper.fetch_for(target.registry.docker_config_key()),
                )
            }
            SecretSpec::PasswordFile(path)
            | SecretSpec::IdentityTokenFile(path)
            | SecretSpec::RegistryTokenFile(path) => {
                let (_, kind) = secret_file(&self.entry.secret).expect("file specs have a kind");
                let origin = format!("secret file {}", path.display());
                let fetch = SecretFileFetch {
                    path: path.clone(),
                    scope: self.entry.scope.to_string(),
                    username,
                    kind,
                    system: self.system.clone(),
                };
                Offer::new(scope, origin, Arc::new(fetch))
            }
        };
        Ok(vec![offer])
    }
}

/// Reads the secret file at fetch time, so a rotated secret is used without a reload.
struct SecretFileFetch {
    path: PathBuf,
    scope: String,
    username: String,
    kind: SecretKind,
    system: System,
}

#[async_trait]
impl Fetch for SecretFileFetch {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        let bytes =
            self.system
                .files
                .read(&self.path)
                .map_err(|source| StaticError::SecretFile {
                    path: self.path.clone(),
                    scope: self.scope.clone(),
                    source,
                })?;
        let text = String::from_utf8_lossy(&bytes);
        // Files written by `echo` end in a newline that is not part of the secret.
        let secret = text
            .strip_suffix('\n')
            .map(|s| s.strip_suffix('\r').unwrap_or(s))
            .unwrap_or(&text);
        if secret.is_empty() {
            return Err(StaticError::EmptySecretFile {
                path: self.path.clone(),
                scope: self.scope.clone(),
            }
            .into());
        }
        Ok(Some(Credential::new(
            self.username.clone(),
            secret,
            self.kind,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, SourceEntry};
    use crate::sources::AuthType;
    use crate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};

    fn source(toml: &str, files: Arc<MemoryFiles>) -> StaticRegistrySource {
        let config = Config::parse(toml, Path::new("/etc/credgate/config.toml")).unwrap();
        let SourceEntry::Registry(entry) = &config.sources[0] else {
            panic!("not a registry")
        };
        let processes = Arc::new(ScriptedProcesses::new(|_| {
            ScriptedProcesses::exit(1, "credentials not found in native keychain")
        }));
        let system = System::fake(Arc::new(ManualClock::new()), processes, files);
        let runs = HelperRuns::new(system.clock.clone(), Duration::from_secs(1));
        StaticRegistrySource::new(entry, system, &runs)
    }

    async fn first(source: &StaticRegistrySource, target: &str) -> Option<Credential> {
        let offers = source
            .offers(&Target::parse(target).unwrap())
            .await
            .unwrap();
        match offers.first() {
            Some(offer) => offer.fetch().await.unwrap(),
            None => None,
        }
    }

    #[tokio::test]
    async fn inline_password_serves_its_scope_only() {
        let s = source("[[registry]]\nmatch = \"git.example.com/group\"\nusername = \"deploy\"\npassword = \"pw\"\n", Arc::default());
        let c = first(&s, "git.example.com:443/group/sub/app")
            .await
            .unwrap();
        assert_eq!((c.username.as_str(), c.secret.expose()), ("deploy", "pw"));
        assert!(first(&s, "git.example.com/groupie/app").await.is_none());
    }

    #[tokio::test]
    async fn secret_files_are_read_at_fetch_time_without_the_newline() {
        let files = Arc::new(MemoryFiles::new());
        files.write("/s/token", "tok-1\n", 0o600);
        let s = source(
            "[[registry]]\nmatch = \"r.test\"\nidentity_token_file = \"/s/token\"\n",
            files.clone(),
        );
        let c = first(&s, "r.test/a").await.unwrap();
        assert_eq!(
            (c.secret.expose(), c.auth_type()),
            ("tok-1", AuthType::Refresh)
        );
        files.write("/s/token", "tok-2\r\n", 0o600);
        assert_eq!(
            first(&s, "r.test/a").await.unwrap().secret.expose(),
            "tok-2"
        );
    }

    #[tokio::test]
    async fn a_missing_or_empty_secret_file_is_an_error_naming_it() {
        let files = Arc::new(MemoryFiles::new());
        let s = source(
            "[[registry]]\nmatch = \"r.test\"\nregistry_token_file = \"/s/missing\"\n",
            files.clone(),
        );
        let offers = s.offers(&Target::parse("r.test/a").unwrap()).await.unwrap();
        let err = offers[0].fetch().await.unwrap_err().to_string();
        assert!(
            err.contains("/s/missing") && err.contains("r.test"),
            "{err}"
        );
        files.write("/s/missing", "\n", 0o600);
        let err = offers[0].fetch().await.unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[tokio::test]
    async fn helper_entries_ask_for_the_registry_as_docker_saves_it() {
        let processes = Arc::new(ScriptedProcesses::new(|_| {
            ScriptedProcesses::exit(1, "credentials not found in native keychain")
        }));
        let config = Config::parse(
            "[[registry]]\nmatch = \"docker.io\"\nhelper = \"pass\"\n",
            Path::new("/c.toml"),
        )
        .unwrap();
        let SourceEntry::Registry(entry) = &config.sources[0] else {
            panic!()
        };
        let system = System::fake(
            Arc::new(ManualClock::new()),
            processes.clone(),
            Arc::default(),
        );
        let runs = HelperRuns::new(system.clock.clone(), Duration::from_secs(1));
        let s = StaticRegistrySource::new(entry, system, &runs);
        let offers = s.offers(&Target::parse("busybox").unwrap()).await.unwrap();
        assert_eq!(offers[0].origin, "helper docker-credential-pass");
        let _ = offers[0].fetch().await;
        let runs = processes.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].stdin, b"https://index.docker.io/v1/");
    }
}
