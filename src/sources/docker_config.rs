//! docker `config.json` and containers `auth.json`: `auths`, `credHelpers`, `credsStore`.
//!
//! Inside one file the precedence is docker/cli's: a `credHelpers` entry for the registry
//! replaces that registry's `auths` and `credsStore`; otherwise an inline `auths` secret;
//! the `credsStore` only when `auths` holds no inline secret for the registry. Path-scoped
//! `auths` keys (containers auth.json) always come out as their own, more specific offers,
//! and the keychain ranks them by specificity.
//!
//! Keys are matched by canonical registry identity, so a credential saved as `host:443`
//! serves `host` and the reverse, which docker/cli and buildkit do not do.
//!
//! The file names programs credgate runs as root, so it is refused when anyone but root can
//! write it ([`trusted_file`]), and a `credsStore` or `credHelpers` value must be a plain
//! helper name, never a path ([`check_helper_name`]); a refused name is an error for the
//! registries it would serve, and nothing is run.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;

use super::exec_helper::{check_helper_name, CredentialHelper, HelperRuns};
use super::file_cache::FileCache;
use super::trusted_file::{self, UntrustedFile};
use super::{Credential, Fetch, Listed, Offer, Source, SourceError};
use crate::config::DockerConfigEntry;
use crate::identity::{RegistryHost, Scope, Target};
use crate::parser_message::without_values;
use crate::system::System;

#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("{}: cannot read docker config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}:{column}: not a valid docker config: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: auths[{key:?}]: \"auth\" {reason}", path.display())]
    BadAuth {
        path: PathBuf,
        key: String,
        reason: &'static str,
    },
    #[error("docker config not read, since credgate runs the helpers it names as root: {source}; run: {}", source.fix())]
    Untrusted {
        #[source]
        source: UntrustedFile,
    },
    #[error("{}: {key} {reason}; nothing was run (docker runs docker-credential-NAME from PATH)", path.display())]
    UnsafeHelperName {
        path: PathBuf,
        /// `credsStore` or `credHelpers["host"]`; the value itself is not repeated.
        key: String,
        reason: &'static str,
    },
}

pub struct DockerConfigSource {
    entry: DockerConfigEntry,
    system: System,
    helper_runs: Arc<HelperRuns>,
    cache: FileCache<ConfigFile>,
}

impl DockerConfigSource {
    /// Never fails: the file is read (and re-read when it changes) at lookup time. Its
    /// helpers run through `helper_runs`, shared with the keychain's other sources.
    pub fn new(entry: &DockerConfigEntry, system: System, helper_runs: &Arc<HelperRuns>) -> Self {
        Self {
            entry: entry.clone(),
            system,
            helper_runs: Arc::clone(helper_runs),
            cache: FileCache::new(entry.path.clone()),
        }
    }

    /// The parsed file, `None` when it does not exist; refused when others can write it.
    fn load(&self) -> Result<Option<Arc<ConfigFile>>, DockerConfigError> {
        let path = self.entry.path.as_path();
        self.cache.get(
            self.system.files.as_ref(),
            |stamp, location| {
                trusted_file::check_opened(self.system.files.as_ref(), path, stamp, location)
                    .map_err(|source| DockerConfigError::Untrusted { source })
            },
            |bytes| ConfigFile::parse(path, bytes),
            |source| DockerConfigError::Read {
                path: path.to_path_buf(),
                source,
            },
        )
    }

    fn offers_from(
        &self,
        file: &ConfigFile,
        target: &Target,
    ) -> Result<Vec<Offer>, DockerConfigError> {
        let mut offers = self.registry_offers(file, target)?;
        offers.extend(self.auths_offers(file, target, AuthsLevel::Path)?);
        Ok(offers)
    }

    /// The offers covering the whole registry, by docker/cli's precedence.
    fn registry_offers(
        &self,
        file: &ConfigFile,
        target: &Target,
    ) -> Result<Vec<Offer>, DockerConfigError> {
        let helpers = file.cred_helpers_for(&target.registry);
        if !helpers.is_empty() {
            let named = helpers
                .iter()
                .filter(|entry| !entry.helper.is_empty())
                .map(|entry| self.cred_helper_offer(entry, target))
                .collect::<Result<Vec<Offer>, _>>()?;
            if !named.is_empty() {
                return Ok(named);
            }
            // An empty credHelpers value pins the registry to the file's own auths, as in
            // docker/cli, so the credsStore is not asked.
            return self.auths_offers(file, target, AuthsLevel::Registry);
        }
        let inline = self.auths_offers(file, target, AuthsLevel::Registry)?;
        if !inline.is_empty() {
            return Ok(inline);
        }
        Ok(self.creds_store_offer(file, target)?.into_iter().collect())
    }

    /// Inline `auths` offers at one level that match `target`; a matching entry whose `auth`
    /// cannot be decoded is an error, as docker/cli refuses the whole file for it.
    fn auths_offers(
        &self,
        file: &ConfigFile,
        target: &Target,
        level: AuthsLevel,
    ) -> Result<Vec<Offer>, DockerConfigError> {
        let mut offers = Vec::new();
        for entry in file.auths_for(target, level) {
            let credential = entry
                .credential
                .clone()
                .map_err(|reason| self.bad_auth(entry, reason))?;
            if let Some(credential) = credential {
                let origin = format!("auths[{:?}]", entry.key);
                offers.push(Offer::ready(entry.scope.clone(), origin, credential));
            }
        }
        Ok(offers)
    }

    fn bad_auth(&self, entry: &AuthsEntry, reason: &'static str) -> DockerConfigError {
        DockerConfigError::BadAuth {
            path: self.entry.path.clone(),
            key: entry.key.clone(),
            reason,
        }
    }

    /// The helper is asked with the key as written, which is how it stored the credential.
    fn cred_helper_offer(
        &self,
        entry: &CredHelperEntry,
        target: &Target,
    ) -> Result<Offer, DockerConfigError> {
        let key = format!("credHelpers[{:?}]", entry.key);
        let helper = self.helper(&entry.helper, &key)?;
        let origin = format!("{key} → {}", helper.name());
        let fetch = helper.fetch_for(entry.key.clone());
        Ok(Offer::new(
            Scope::registry(target.registry.clone()),
            origin,
            fetch,
        ))
    }

    fn creds_store_offer(
        &self,
        file: &ConfigFile,
        target: &Target,
    ) -> Result<Option<Offer>, DockerConfigError> {
        let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let fetch = Arc::new(StoreFetch {
            helper: self.helper(store, "credsStore")?,
            registry: target.registry.clone(),
        });
        let origin = format!("credsStore {store:?}");
        Ok(Some(Offer::new(
            Scope::registry(target.registry.clone()),
            origin,
            fetch,
        )))
    }

    /// The helper a docker config names under `key`; a name that is not a plain helper name
    /// is refused before anything could run it.
    fn helper(&self, name: &str, key: &str) -> Result<Arc<CredentialHelper>, DockerConfigError> {
        CredentialHelper::named(name, &self.system, &self.helper_runs)
            .map(Arc::new)
            .map_err(|reason| DockerConfigError::UnsafeHelperName {
                path: self.entry.path.clone(),
                key: key.to_string(),
                reason,
            })
    }
}

/// The `credsStore` and `credHelpers` keys of a docker config whose helper name would be
/// refused, with why (for `credgate doctor`); nothing is run.
pub fn refused_helper_names(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<(String, &'static str)>, DockerConfigError> {
    let file = ConfigFile::parse(path, bytes)?;
    let store = file
        .creds_store
        .iter()
        .filter(|name| !name.is_empty())
        .map(|name| ("credsStore".to_string(), name.as_str()));
    let helpers = file
        .cred_helpers
        .iter()
        .filter(|entry| !entry.helper.is_empty())
        .map(|entry| {
            (
                format!("credHelpers[{:?}]", entry.key),
                entry.helper.as_str(),
            )
        });
    Ok(store
        .chain(helpers)
        .filter_map(|(key, name)| check_helper_name(name).err().map(|reason| (key, reason)))
        .collect())
}

#[async_trait]
impl Source for DockerConfigSource {
    fn name(&self) -> String {
        format!("docker config {}", self.entry.path.display())
    }

    async fn offers(&self, target: &Target) -> Result<Vec<Offer>, SourceError> {
        let Some(file) = self.load()? else {
            return Ok(Vec::new());
        };
        Ok(self.offers_from(&file, target)?)
    }

    /// `auths` keys with their usernames and secret kinds, and `credHelpers` keys (whose
    /// usernames only the helper knows) whose helper name would be run. A `credsStore` is
    /// not listed: asking it would run a helper.
    async fn listing(&self) -> Result<Vec<Listed>, SourceError> {
        let Some(file) = self.load()? else {
            return Ok(Vec::new());
        };
        let auths = file.auths.iter().filter_map(|entry| {
            let credential = entry.credential.as_ref().ok()?.as_ref()?;
            Some(Listed {
                scope: entry.scope.clone(),
                username: credential.username.clone(),
                kind: Some(credential.kind),
            })
        });
        let helpers = file
            .cred_helpers
            .iter()
            .filter(|entry| check_helper_name(&entry.helper).is_ok())
            .map(|entry| Listed {
                scope: Scope::registry(entry.registry.clone()),
                username: String::new(),
                kind: None,
            });
        Ok(auths.chain(helpers).collect())
    }
}

/// Fetches a registry's credential from the `credsStore`.
///
/// A store holds each credential under the string `docker login` was given (`host`,
/// `host:443`, `https://host/`), and docker's own lookup asks only for its one spelling, so a
/// credential saved under another spelling of the same registry is missed (buildkit asks
/// for `host` and misses `host:443`). credgate therefore calls `list` and asks `get` for
/// each stored key whose canonical registry is the target's, docker's exact spelling
/// (`RegistryHost::docker_config_key`) first. When `list` fails (some helpers don't
/// implement it), is empty or names no such key, it falls back to a `get` with docker's
/// spelling, which is exactly what docker itself would have asked.
struct StoreFetch {
    helper: Arc<CredentialHelper>,
    registry: RegistryHost,
}

impl StoreFetch {
    async fn stored_keys(&self) -> Vec<String> {
        let docker_key = self.registry.docker_config_key();
        let listed = match self.helper.list().await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::debug!(%error, "credsStore list failed; asking for {docker_key:?}");
                BTreeMap::new()
            }
        };
        let mut keys: Vec<String> = listed
            .into_keys()
            .filter(|key| RegistryHost::parse(key).is_ok_and(|r| r == self.registry))
            .collect();
        if keys.is_empty() {
            return vec![docker_key];
        }
        // Stable sort: the exact docker spelling first, the rest in the list's order.
        keys.sort_by_key(|key| *key != docker_key);
        keys
    }
}

#[async_trait]
impl Fetch for StoreFetch {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        for key in self.stored_keys().await {
            if let Some(credential) = self.helper.get(&key).await? {
                return Ok(Some(credential));
            }
        }
        Ok(None)
    }
}

/// Which `auths` entries: those covering a whole registry, or those scoped to a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthsLevel {
    Registry,
    Path,
}

/// One parsed config file. Keys that name no registry were dropped (with a warning) when
/// it was read; the maps' key order keeps offers deterministic.
#[derive(Default)]
struct ConfigFile {
    auths: Vec<AuthsEntry>,
    cred_helpers: Vec<CredHelperEntry>,
    creds_store: Option<String>,
}

struct AuthsEntry {
    key: String,
    scope: Scope,
    /// `None` when the entry holds no secret (docker writes `{}` when a store has it);
    /// `Err` says why `auth` could not be decoded, without its value.
    credential: Result<Option<Credential>, &'static str>,
}

struct CredHelperEntry {
    key: String,
    registry: RegistryHost,
    /// Empty when the file pins the registry to its own `auths`.
    helper: String,
}

/// The file as serde reads it; `null` anywhere is taken as absent, as Go's decoder does.
#[derive(Deserialize)]
struct RawConfigFile {
    auths: Option<BTreeMap<String, Option<RawAuth>>>,
    #[serde(rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, Option<String>>>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl ConfigFile {
    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, DockerConfigError> {
        // docker/cli reads an empty file as an empty config.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let raw: RawConfigFile = serde_json::from_slice(bytes).map_err(|e| invalid(path, &e))?;
        Ok(Self {
            auths: parse_auths(path, raw.auths.unwrap_or_default()),
            cred_helpers: parse_cred_helpers(path, raw.cred_helpers.unwrap_or_default()),
            creds_store: raw.creds_store,
        })
    }

    /// The `credHelpers` entries for `registry`, the one written as docker spells it first.
    fn cred_helpers_for(&self, registry: &RegistryHost) -> Vec<&CredHelperEntry> {
        let docker_key = registry.docker_config_key();
        let mut entries: Vec<&CredHelperEntry> = self
            .cred_helpers
            .iter()
            .filter(|entry| entry.registry == *registry)
            .collect();
        entries.sort_by_key(|entry| entry.key != docker_key);
        entries
    }

    /// Matching `auths` entries at one level: registry-wide ones with docker's own spelling
    /// of the key first (docker/cli tries that key before any other), path ones most
    /// specific first; ties keep key order.
    fn auths_for(&self, target: &Target, level: AuthsLevel) -> Vec<&AuthsEntry> {
        let docker_key = target.registry.docker_config_key();
        let mut entries: Vec<&AuthsEntry> = self
            .auths
            .iter()
            .filter(|entry| entry.level() == level && entry.scope.matches(target))
            .collect();
        match level {
            AuthsLevel::Registry => entries.sort_by_key(|entry| entry.key != docker_key),
            AuthsLevel::Path => {
                entries.sort_by_key(|entry| std::cmp::Reverse(entry.scope.specificity()))
            }
        }
        entries
    }
}

impl AuthsEntry {
    fn level(&self) -> AuthsLevel {
        if self.scope.specificity().path_segments == 0 {
            AuthsLevel::Registry
        } else {
            AuthsLevel::Path
        }
    }
}

fn parse_auths(path: &Path, raw: BTreeMap<String, Option<RawAuth>>) -> Vec<AuthsEntry> {
    raw.into_iter()
        .filter_map(|(key, value)| {
            let scope = match Scope::parse_auths_key(&key) {
                Ok(scope) => scope,
                Err(error) => {
                    skip_key(path, "auths", &key, &error);
                    return None;
                }
            };
            let credential = inline_credential(&value.unwrap_or_default());
            Some(AuthsEntry {
                key,
                scope,
                credential,
            })
        })
        .collect()
}

fn parse_cred_helpers(path: &Path, raw: BTreeMap<String, Option<String>>) -> Vec<CredHelperEntry> {
    raw.into_iter()
        .filter_map(|(key, helper)| match RegistryHost::parse(&key) {
            Ok(registry) => Some(CredHelperEntry {
                key,
                registry,
                helper: helper.unwrap_or_default(),
            }),
            Err(error) => {
                skip_key(path, "credHelpers", &key, &error);
                None
            }
        })
        .collect()
}

/// A key naming no registry is one bad line in a file that may serve many; skip it.
fn skip_key(path: &Path, table: &str, key: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(
        file = %path.display(),
        "skipping {table}[{key:?}]: {error}"
    );
}

/// The credential an `auths` entry holds, in the order a registry client uses it:
/// a registry token, then an identity token, then username and password.
fn inline_credential(raw: &RawAuth) -> Result<Option<Credential>, &'static str> {
    let (username, password) = match non_empty(&raw.auth) {
        Some(auth) => decode_auth(auth)?,
        None => (
            non_empty(&raw.username).unwrap_or_default().to_string(),
            non_empty(&raw.password).unwrap_or_default().to_string(),
        ),
    };
    if let Some(token) = non_empty(&raw.registrytoken) {
        return Ok(Some(Credential::registry_token(token)));
    }
    if let Some(token) = non_empty(&raw.identitytoken) {
        return Ok(Some(Credential::identity_token(username, token)));
    }
    if username.is_empty() || password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credential::password(username, password)))
}

/// `auth` is base64 of `user:password`, split at the first `:` (passwords may hold more),
/// with NULs trimmed from the password as docker/cli does.
fn decode_auth(auth: &str) -> Result<(String, String), &'static str> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| "is not valid base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "does not decode to UTF-8 text")?;
    let (username, password) = text
        .split_once(':')
        .ok_or("does not decode to user:password")?;
    if username.is_empty() {
        return Err("decodes to an empty user name");
    }
    Ok((
        username.to_string(),
        password.trim_matches('\0').to_string(),
    ))
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// serde_json's message for a wrong value type quotes the value, which may be a secret
/// written in the wrong place, so only its "expected ..." part is kept.
fn invalid(path: &Path, error: &serde_json::Error) -> DockerConfigError {
    let message = match error.classify() {
        serde_json::error::Category::Data => {
            let text = error.to_string();
            // The last one: a quoted value may itself hold ", expected ".
            match text.rsplit_once(", expected ") {
                Some((_, expected)) => {
                    let expected = expected.split(" at line ").next().unwrap_or(expected);
                    // Our own struct names mean nothing to whoever wrote the file.
                    let expected = if expected.starts_with("struct ") {
                        "an object"
                    } else {
                        expected
                    };
                    format!("a value has the wrong type; expected {expected}")
                }
                None => "a value has the wrong type".to_string(),
            }
        }
        serde_json::error::Category::Eof => "the file ends too early".to_string(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            let text = error.to_string();
            without_values(text.split(" at line ").next().unwrap_or(&text))
        }
    };
    DockerConfigError::Invalid {
        path: path.to_path_buf(),
        line: error.line(),
        column: error.column(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Location;
    use crate::sources::SecretKind;
    use crate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};
    use crate::system::{ProcessError, ProcessOutput, ProcessSpec};

    const CONFIG: &str = "/root/.docker/config.json";

    struct Fixture {
        files: Arc<MemoryFiles>,
        processes: Arc<ScriptedProcesses>,
        source: DockerConfigSource,
    }

    fn fixture_with(
        json: &str,
        helpers: impl Fn(&ProcessSpec) -> Result<ProcessOutput, ProcessError> + Send + Sync + 'static,
    ) -> Fixture {
        let files = Arc::new(MemoryFiles::new());
        files.write(CONFIG, json, 0o600);
        let processes = Arc::new(ScriptedProcesses::new(helpers));
        let system = System::fake(
            Arc::new(ManualClock::new()),
            processes.clone(),
            files.clone(),
        );
        let entry = DockerConfigEntry {
            path: PathBuf::from(CONFIG),
            location: Location {
                path: PathBuf::from("/etc/credgate/config.toml"),
                line: 1,
            },
        };
        let runs = HelperRuns::new(system.clock.clone(), Duration::from_secs(10));
        let source = DockerConfigSource::new(&entry, system, &runs);
        Fixture {
            files,
            processes,
            source,
        }
    }

    fn fixture(json: &str) -> Fixture {
        fixture_with(json, |spec| panic!("no helper expected, ran {spec:?}"))
    }

    /// A helper whose store holds `stored` (server URL → user, secret `pw-<user>`).
    fn store(
        stored: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&ProcessSpec) -> Result<ProcessOutput, ProcessError> + Send + Sync + 'static {
        move |spec| match spec.args[0].as_str() {
            "list" => {
                let map: BTreeMap<_, _> = stored.iter().copied().collect();
                ScriptedProcesses::ok(&serde_json::to_string(&map).unwrap())
            }
            _ => {
                let url = String::from_utf8(spec.stdin.clone()).unwrap();
                match stored.iter().find(|(key, _)| *key == url) {
                    Some((_, user)) => ScriptedProcesses::ok(&format!(
                        r#"{{"ServerURL":"{url}","Username":"{user}","Secret":"pw-{user}"}}"#
                    )),
                    None => ScriptedProcesses::exit(1, "credentials not found in native keychain"),
                }
            }
        }
    }

    fn auth(user_pass: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    }

    impl Fixture {
        async fn offers(&self, target: &str) -> Vec<Offer> {
            let target = Target::parse(target).unwrap();
            self.source.offers(&target).await.unwrap()
        }

        async fn error(&self, target: &str) -> String {
            let target = Target::parse(target).unwrap();
            self.source.offers(&target).await.unwrap_err().to_string()
        }

        /// `scope origin` of each offer, in order.
        async fn described(&self, target: &str) -> Vec<String> {
            let offers = self.offers(target).await;
            offers
                .iter()
                .map(|o| format!("{} {}", o.scope, o.origin))
                .collect()
        }

        /// The first offer's credential as `user:secret`.
        async fn first(&self, target: &str) -> Option<String> {
            let offers = self.offers(target).await;
            let credential = offers.first()?.fetch().await.unwrap()?;
            Some(format!(
                "{}:{}",
                credential.username,
                credential.secret.expose()
            ))
        }

        fn helper_stdin(&self) -> Vec<String> {
            let runs = self.processes.runs();
            runs.iter()
                .map(|r| format!("{} {}", r.args[0], String::from_utf8_lossy(&r.stdin)))
                .collect()
        }
    }

    #[tokio::test]
    async fn every_auths_key_form_serves_its_registry() {
        let cases = [
            ("https://index.docker.io/v1/", "busybox", "docker.io"),
            ("docker.io", "user/app", "docker.io"),
            ("https://host.test", "host.test/a/b", "host.test"),
            ("host.test:443", "host.test/a", "host.test"),
            ("host.test", "host.test:443/a", "host.test"),
            ("http://host.test/v2/", "host.test/x", "host.test"),
            ("host.test/group", "host.test/group/app", "host.test/group"),
        ];
        for (key, target, scope) in cases {
            let json = format!(r#"{{"auths":{{"{key}":{{"auth":"{}"}}}}}}"#, auth("u:p"));
            let f = fixture(&json);
            let origin = format!("{scope} auths[{key:?}]");
            assert_eq!(f.described(target).await, [origin], "{key}");
            assert_eq!(f.first(target).await.as_deref(), Some("u:p"), "{key}");
        }
    }

    #[tokio::test]
    async fn path_keys_match_whole_segments_only() {
        let f = fixture(&format!(
            r#"{{"auths":{{"host.test/group":{{"auth":"{}"}}}}}}"#,
            auth("u:p")
        ));
        assert!(f.offers("host.test/groupie/app").await.is_empty());
        assert!(f.offers("host.test/other/app").await.is_empty());
        assert!(f.offers("host.test").await.is_empty());
    }

    #[tokio::test]
    async fn the_field_cases_port_443_and_bare_host_serve_each_other() {
        let only_443 = fixture(&format!(
            r#"{{"auths":{{"git.example.com:443":{{"auth":"{}"}}}}}}"#,
            auth("deploy:gl-token")
        ));
        assert_eq!(
            only_443
                .first("git.example.com/group/sub/app")
                .await
                .as_deref(),
            Some("deploy:gl-token")
        );
        let only_bare = fixture(&format!(
            r#"{{"auths":{{"git.example.com":{{"auth":"{}"}}}}}}"#,
            auth("deploy:gl-token")
        ));
        assert_eq!(
            only_bare
                .first("git.example.com:443/group/sub/app")
                .await
                .as_deref(),
            Some("deploy:gl-token")
        );
    }

    #[tokio::test]
    async fn auth_splits_at_the_first_colon() {
        let f = fixture(&format!(
            r#"{{"auths":{{"r.test":{{"auth":"{}","username":"ignored"}}}}}}"#,
            auth("user:pa:ss\0")
        ));
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("user:pa:ss"));
        let f = fixture(r#"{"auths":{"r.test":{"username":"u","password":"p"}}}"#);
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("u:p"));
    }

    #[tokio::test]
    async fn bad_auth_names_file_and_key_but_not_the_value() {
        let f = fixture(r#"{"auths":{"r.test":{"auth":"hunter2!!"},"ok.test":{}}}"#);
        let err = f.error("r.test/a").await;
        assert_eq!(
            err,
            r#"/root/.docker/config.json: auths["r.test"]: "auth" is not valid base64"#
        );
        let f = fixture(&format!(
            r#"{{"auths":{{"r.test":{{"auth":"{}"}}}}}}"#,
            auth("hunter2-no-colon")
        ));
        let err = f.error("r.test/a").await;
        assert!(err.ends_with("does not decode to user:password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        // Other registries in the same file still work.
        assert!(f.offers("other.test/a").await.is_empty());
    }

    #[tokio::test]
    async fn tokens_become_their_own_kinds() {
        let f = fixture(&format!(
            r#"{{"auths":{{"id.test":{{"auth":"{}","identitytoken":"refresh"}},
                "reg.test":{{"registrytoken":"bearer"}},
                "user.test":{{"username":"u","identitytoken":"refresh2"}}}}}}"#,
            auth("me:unused")
        ));
        let fetch = |target: &'static str| {
            let f = &f;
            async move { f.offers(target).await[0].fetch().await.unwrap().unwrap() }
        };
        let id = fetch("id.test/a").await;
        assert_eq!(
            (id.kind, id.username.as_str()),
            (SecretKind::IdentityToken, "me")
        );
        assert_eq!(id.secret.expose(), "refresh");
        let reg = fetch("reg.test/a").await;
        assert_eq!(reg.kind, SecretKind::RegistryToken);
        assert_eq!(reg.secret.expose(), "bearer");
        let user = fetch("user.test/a").await;
        assert_eq!(
            (user.kind, user.username.as_str()),
            (SecretKind::IdentityToken, "u")
        );
    }

    #[tokio::test]
    async fn empty_entries_offer_nothing() {
        let f = fixture(r#"{"auths":{"r.test":{},"s.test":null,"t.test":{"username":"u"}}}"#);
        for target in ["r.test/a", "s.test/a", "t.test/a"] {
            assert!(f.offers(target).await.is_empty(), "{target}");
        }
    }

    #[tokio::test]
    async fn keys_that_name_no_registry_are_skipped() {
        let (logs, _guard) = crate::sources::exec_helper::log_capture::start();
        let f = fixture(&format!(
            r#"{{"auths":{{"not a host":{{"auth":"{a}"}},"r.test":{{"auth":"{a}"}}}},
                "credHelpers":{{"bad_host":"pass"}}}}"#,
            a = auth("u:p")
        ));
        assert_eq!(f.described("r.test/x").await, [r#"r.test auths["r.test"]"#]);
        assert_eq!(f.described("r.test/y").await, [r#"r.test auths["r.test"]"#]);
        let text = logs.text();
        for skipped in [r#"auths["not a host"]"#, r#"credHelpers["bad_host"]"#] {
            assert!(text.contains(skipped), "{skipped} in {text}");
        }
        assert!(text.contains("file=/root/.docker/config.json"), "{text}");
        assert_eq!(
            text.lines().count(),
            2,
            "warned once per file version: {text}"
        );
    }

    #[tokio::test]
    async fn cred_helpers_match_by_canonical_registry_and_get_the_key_as_written() {
        let f = fixture_with(
            r#"{"credHelpers":{"git.example.com:443":"pass","r.test":"ecr-login"}}"#,
            store(&[("git.example.com:443", "deploy")]),
        );
        assert_eq!(
            f.described("git.example.com/group/sub/app").await,
            [r#"git.example.com credHelpers["git.example.com:443"] → docker-credential-pass"#]
        );
        assert_eq!(
            f.first("git.example.com/group/sub/app").await.as_deref(),
            Some("deploy:pw-deploy")
        );
        assert_eq!(f.helper_stdin(), ["get git.example.com:443"]);
        assert_eq!(
            f.processes.runs()[0].program,
            PathBuf::from("docker-credential-pass")
        );
        assert_eq!(
            f.described("r.test").await,
            [r#"r.test credHelpers["r.test"] → docker-credential-ecr-login"#]
        );
        assert!(f.offers("other.test/a").await.is_empty());
    }

    #[tokio::test]
    async fn creds_store_gets_the_listed_key_of_the_same_registry() {
        let f = fixture_with(
            r#"{"credsStore":"pass"}"#,
            store(&[
                ("https://git.example.com:443", "deploy"),
                ("r.test:5000", "x"),
            ]),
        );
        assert_eq!(
            f.described("git.example.com/group/sub/app").await,
            [r#"git.example.com credsStore "pass""#]
        );
        assert_eq!(
            f.first("git.example.com/group/sub/app").await.as_deref(),
            Some("deploy:pw-deploy")
        );
        assert_eq!(
            f.helper_stdin(),
            ["list unused", "get https://git.example.com:443"]
        );
    }

    #[tokio::test]
    async fn creds_store_prefers_docker_spelling_and_falls_back_to_it() {
        let f = fixture_with(
            r#"{"credsStore":"pass"}"#,
            store(&[("r.test:443", "port"), ("r.test", "bare")]),
        );
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("bare:pw-bare"));
        let f = fixture_with(r#"{"credsStore":"pass"}"#, |spec| {
            match spec.args[0].as_str() {
                "list" => ScriptedProcesses::exit(1, "list is not implemented"),
                _ => ScriptedProcesses::ok(r#"{"Username":"hub","Secret":"s"}"#),
            }
        });
        assert_eq!(f.first("busybox").await.as_deref(), Some("hub:s"));
        assert_eq!(
            f.helper_stdin(),
            ["list unused", "get https://index.docker.io/v1/"]
        );
        let f = fixture_with(r#"{"credsStore":"pass"}"#, store(&[]));
        assert_eq!(f.first("unknown.test/a").await, None);
        assert_eq!(f.helper_stdin(), ["list unused", "get unknown.test"]);
    }

    #[tokio::test]
    async fn precedence_inside_one_file_is_docker_clis() {
        let a = auth("inline:secret");
        let both = format!(
            r#"{{"auths":{{"r.test":{{"auth":"{a}"}},"r.test/team":{{"auth":"{a}"}},"s.test":{{}}}},
                "credHelpers":{{"r.test":"pass"}},"credsStore":"desktop"}}"#
        );
        let f = fixture(&both);
        assert_eq!(
            f.described("r.test/team/app").await,
            [
                r#"r.test credHelpers["r.test"] → docker-credential-pass"#,
                r#"r.test/team auths["r.test/team"]"#,
            ]
        );
        // A `{}` entry holds no secret, so the store is asked.
        assert_eq!(
            f.described("s.test/a").await,
            [r#"s.test credsStore "desktop""#]
        );
        let inline_and_store =
            format!(r#"{{"auths":{{"r.test":{{"auth":"{a}"}}}},"credsStore":"desktop"}}"#);
        let f = fixture(&inline_and_store);
        assert_eq!(f.described("r.test/a").await, [r#"r.test auths["r.test"]"#]);
        let pinned = format!(
            r#"{{"auths":{{"r.test":{{"auth":"{a}"}}}},"credHelpers":{{"r.test":""}},"credsStore":"desktop"}}"#
        );
        let f = fixture(&pinned);
        assert_eq!(f.described("r.test/a").await, [r#"r.test auths["r.test"]"#]);
    }

    #[tokio::test]
    async fn offers_come_in_a_deterministic_order() {
        let a = auth("u:p");
        let f = fixture(&format!(
            r#"{{"auths":{{"r.test/a":{{"auth":"{a}"}},"https://r.test":{{"auth":"{a}"}},
                "r.test/a/b":{{"auth":"{a}"}},"r.test":{{"auth":"{a}"}}}}}}"#
        ));
        assert_eq!(
            f.described("r.test/a/b/c").await,
            [
                r#"r.test auths["r.test"]"#,
                r#"r.test auths["https://r.test"]"#,
                r#"r.test/a/b auths["r.test/a/b"]"#,
                r#"r.test/a auths["r.test/a"]"#,
            ]
        );
    }

    #[tokio::test]
    async fn a_changed_file_is_read_again() {
        let f = fixture(&format!(
            r#"{{"auths":{{"r.test":{{"auth":"{}"}}}}}}"#,
            auth("old:one")
        ));
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("old:one"));
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("old:one"));
        assert_eq!(f.files.reads().len(), 1);
        f.files.write(
            CONFIG,
            &format!(
                r#"{{"auths":{{"r.test":{{"auth":"{}"}}}}}}"#,
                auth("new:two")
            ),
            0o600,
        );
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("new:two"));
    }

    #[tokio::test]
    async fn a_missing_or_empty_file_offers_nothing() {
        let f = fixture("");
        assert!(f.offers("r.test/a").await.is_empty());
        let files = Arc::new(MemoryFiles::new());
        let processes = Arc::new(ScriptedProcesses::new(|_| ScriptedProcesses::ok("")));
        let system = System::fake(Arc::new(ManualClock::new()), processes, files);
        let entry = DockerConfigEntry {
            path: PathBuf::from("/nonexistent/config.json"),
            location: Location {
                path: PathBuf::from("/etc/credgate/config.toml"),
                line: 1,
            },
        };
        let runs = HelperRuns::new(system.clock.clone(), Duration::from_secs(1));
        let source = DockerConfigSource::new(&entry, system, &runs);
        let target = Target::parse("r.test/a").unwrap();
        assert!(source.offers(&target).await.unwrap().is_empty());
        assert_eq!(source.name(), "docker config /nonexistent/config.json");
    }

    #[tokio::test]
    async fn a_malformed_file_names_file_line_and_column() {
        let f = fixture("{\n  \"auths\": {\n    \"r.test\": {\"auth\": \"x\",}\n  }\n}\n");
        let err = f.error("r.test/a").await;
        assert!(err.starts_with("/root/.docker/config.json:3:"), "{err}");
        assert_eq!(
            err,
            "/root/.docker/config.json:3:28: not a valid docker config: trailing comma"
        );
        // A secret written where an object belongs is not quoted back.
        let f = fixture("{\"auths\": {\"r.test\": \"hunter2-secret\"}}");
        let err = f.error("r.test/a").await;
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.starts_with("/root/.docker/config.json:1:"), "{err}");
        assert!(err.ends_with("wrong type; expected an object"), "{err}");
    }

    #[tokio::test]
    async fn a_secret_in_the_wrong_type_is_never_echoed() {
        for value in [
            "31415926",
            "3141.5926",
            "true",
            "[\"31415926\"]",
            "{\"x\":\"31415926\"}",
            "31415926x",
            "\"31415926",
        ] {
            for json in [
                format!(r#"{{"auths":{{"r.test":{{"auth":{value}}}}}}}"#),
                format!(r#"{{"auths":{{"r.test":{{"password":{value},"username":"u"}}}}}}"#),
                format!(r#"{{"credsStore":{value}}}"#),
                format!(r#"{{"credHelpers":{{"r.test":{value}}}}}"#),
            ] {
                let err = fixture(&json).error("r.test/a").await;
                assert!(!err.contains("31415926"), "{json}: {err}");
                assert!(err.starts_with("/root/.docker/config.json:1:"), "{err}");
            }
        }
    }

    #[tokio::test]
    async fn a_helper_name_that_is_a_path_is_refused_and_nothing_runs() {
        // `fixture` panics if any helper is run.
        for name in [
            "../../tmp/evil",
            "/usr/local/bin/evil",
            "x/y",
            ".",
            "..",
            "a b",
            "$(id)",
        ] {
            let json = serde_json::json!({ "credsStore": name }).to_string();
            let err = fixture(&json).error("r.test/a").await;
            assert!(
                err.starts_with("/root/.docker/config.json: credsStore ")
                    && err.ends_with(
                        "nothing was run (docker runs docker-credential-NAME from PATH)"
                    ),
                "{name}: {err}"
            );
            let json = serde_json::json!({ "credHelpers": { "r.test": name } }).to_string();
            let f = fixture(&json);
            let err = f.error("r.test/a").await;
            assert!(
                err.starts_with(r#"/root/.docker/config.json: credHelpers["r.test"] "#),
                "{name}: {err}"
            );
            // Other registries of the file are not affected, and nothing is listed for it.
            assert!(f.offers("other.test/a").await.is_empty());
            assert!(f.source.listing().await.unwrap().is_empty());
        }
        let json = r#"{"credsStore":"../evil","credHelpers":{"r.test":"/bin/x","s.test":"pass"}}"#;
        let refused = refused_helper_names(Path::new(CONFIG), json.as_bytes()).unwrap();
        let keys: Vec<&str> = refused.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["credsStore", r#"credHelpers["r.test"]"#]);
    }

    #[tokio::test]
    async fn a_docker_config_others_can_write_is_refused_and_nothing_runs() {
        let json = r#"{"credsStore":"pass","auths":{"r.test":{"auth":"dTpw"}}}"#;
        let f = fixture(json);
        f.files.write(CONFIG, json, 0o666);
        let err = f.error("r.test/a").await;
        assert_eq!(
            err,
            "docker config not read, since credgate runs the helpers it names as root: \
             /root/.docker/config.json is writable by group or others (mode 0666); \
             run: chmod go-w /root/.docker/config.json"
        );
        assert!(f.source.listing().await.is_err());
        f.files.write(CONFIG, json, 0o600);
        f.files.chown(CONFIG, 4242);
        let err = f.error("other.test/a").await;
        assert!(
            err.contains("owned by uid 4242, not root; run: chown root:root"),
            "{err}"
        );
        f.files.chown(CONFIG, 0);
        assert_eq!(f.first("r.test/a").await.as_deref(), Some("u:p"));
    }

    #[tokio::test]
    async fn listings_say_what_kind_of_secret_each_scope_holds() {
        let f = fixture(&format!(
            r#"{{"auths":{{"pw.test":{{"auth":"{}"}},"id.test":{{"identitytoken":"t"}},"reg.test":{{"registrytoken":"b"}}}},
                "credHelpers":{{"helper.test":"pass","pinned.test":""}}}}"#,
            auth("u:p")
        ));
        let listed: Vec<(String, Option<SecretKind>)> = f
            .source
            .listing()
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.scope.to_string(), l.kind))
            .collect();
        assert_eq!(
            listed,
            [
                ("id.test".to_string(), Some(SecretKind::IdentityToken)),
                ("pw.test".to_string(), Some(SecretKind::Password)),
                ("reg.test".to_string(), Some(SecretKind::RegistryToken)),
                ("helper.test".to_string(), None),
            ]
        );
    }
}
