//! kubelet credential provider plugins (`credentialprovider.kubelet.k8s.io/v1`, `v1beta1`,
//! `v1alpha1`), run with kubelet's own semantics so a node's existing
//! `CredentialProviderConfig` and plugins (ecr-, gcp-, acr-credential-provider) work as is.
//!
//! What credgate does the way kubelet does:
//! - `matchImages` and the keys of a response's `auth` map match by kubelet's `URLsMatch`
//!   (label-wise Go globs, equal port strings, path as a string prefix); among matching
//!   `auth` keys the one kubelet's keyring tries first wins (reverse byte order of the
//!   normalised keys, then the `index.docker.io` fallback for Docker Hub images).
//! - Responses are cached per provider under the `cacheKeyType` key (image, registry =
//!   text before the first `/`, or global) for `cacheDuration`, else `defaultCacheDuration`;
//!   zero means "don't cache". Lookups try the image, registry, then global key.
//! - Concurrent lookups of one image share one plugin run (kubelet's singleflight).
//!
//! Where credgate differs, and why:
//! - The image a plugin sees and `matchImages` are matched against is the lookup target in
//!   credgate's canonical form, `registry/repository` without tag or digest
//!   (`docker.io/library/busybox`, `git.example.com:5000/group/app`), or just the registry
//!   for a bare-registry lookup. `:443` is dropped and Docker Hub aliases fold into
//!   `docker.io`, so a `matchImages` entry with `:443` never matches.
//! - A plugin is given credgate's `[helpers] timeout`, not kubelet's fixed one minute.
//! - Its environment is credgate's helper environment (not all of credgate's), then the
//!   provider's `env` entries, a later one winning.
//! - A provider with `tokenAttributes` (service-account-token mode) is refused when a lookup
//!   reaches it: credgate pulls outside any pod and has no token to send. Other providers in
//!   the file keep working.
//! - A plugin that fails is an error (kubelet logs it and pulls anonymously); the keychain
//!   decides what to try next. A missing config file is an error too: it was configured.
//! - The config must be one file; kubelet's newer directory form is not read.
//! - The config, `bin_dir` and each plugin are refused when anyone but root can write them
//!   (credgate runs the plugins as root), as ssh's StrictModes refuses loose files.
//! - The file is re-read when it changes; a provider whose entry is unchanged keeps its cache.
//! - Each matching provider is one offer, in file order (kubelet tries an earlier provider's
//!   overlapping keys first). Its scope, used only for ranking and `explain`, is the matching
//!   `matchImages` entry when credgate's scope syntax means the same for this target, else
//!   the target's registry; the credential itself is chosen by kubelet's rules above.
//! - An `auth` entry with an empty username and password is a miss, not anonymous access.
//! - Plugin runs are spawned as Tokio tasks, so fetching needs a Tokio runtime.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::file_cache::FileCache;
use super::trusted_file::{self, UntrustedFile};
use super::{Credential, Fetch, Offer, Source, SourceError};
use crate::config::KubeletProviderEntry;
use crate::identity::{Scope, Target};
use crate::system::System;

mod config;
mod plugin;
mod provider;
mod url_match;

use config::{parse_config, ProviderConfig};
use plugin::PluginHost;
use provider::Provider;
use url_match::urls_match;

/// The config parser on text, without a file: for `crate::fuzzing`.
#[doc(hidden)]
pub fn parse_config_text(bytes: &[u8]) -> Result<impl std::fmt::Debug, KubeletProviderError> {
    parse_config(bytes, std::path::Path::new("credential-provider.yaml"))
}

/// The response parser on a plugin's stdout, without running it: for `crate::fuzzing`.
#[doc(hidden)]
pub fn parse_response_text(
    stdout: &[u8],
    api_version: &str,
) -> Result<impl std::fmt::Debug, String> {
    plugin::parse_response(stdout, api_version)
}

/// Why a kubelet provider could not answer. Errors name the config file or the provider,
/// and never quote a plugin's stdout or a config's env values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeletProviderError {
    #[error("kubelet provider config {config} (named at {location}) does not exist")]
    ConfigMissing { config: PathBuf, location: String },
    #[error("kubelet provider config {config}: cannot read: {reason}")]
    ConfigUnreadable { config: PathBuf, reason: String },
    #[error("kubelet provider config not read, since credgate runs the plugins it names as root: {source}; run: {}", source.fix())]
    ConfigUntrusted {
        #[source]
        source: UntrustedFile,
    },
    #[error("kubelet provider {provider:?}: plugin not run, since it would run as root: {source}; run: {}", source.fix())]
    PluginUntrusted {
        provider: String,
        #[source]
        source: UntrustedFile,
    },
    #[error("kubelet provider config {config}: not a CredentialProviderConfig: {reason}")]
    ConfigSyntax { config: PathBuf, reason: String },
    #[error("kubelet provider config {config}: {problems}")]
    ConfigInvalid { config: PathBuf, problems: String },
    #[error(
        "kubelet provider config {config}: provider {provider:?} has tokenAttributes; credgate \
         does not run service-account-token plugins (it pulls outside any pod, so it has no \
         token to send)"
    )]
    ServiceAccountTokenPlugin { config: PathBuf, provider: String },
    #[error("kubelet provider {provider:?}: plugin {program} does not exist")]
    PluginMissing { provider: String, program: PathBuf },
    #[error("kubelet provider {provider:?} for {image}: no answer within {timeout:?}; killed")]
    PluginTimedOut {
        provider: String,
        image: String,
        timeout: Duration,
    },
    #[error("kubelet provider {provider:?} for {image}: {reason}")]
    PluginRun {
        provider: String,
        image: String,
        reason: String,
    },
    #[error("kubelet provider {provider:?} for {image}: plugin {status}")]
    PluginFailed {
        provider: String,
        image: String,
        status: String,
    },
    #[error("kubelet provider {provider:?} for {image}: bad response: {reason}")]
    PluginResponse {
        provider: String,
        image: String,
        reason: String,
    },
    #[error("kubelet provider {provider:?}: plugin run aborted: {reason}")]
    PluginTask { provider: String, reason: String },
}

/// All providers of one kubelet `CredentialProviderConfig` file.
pub struct KubeletProviderSource {
    entry: KubeletProviderEntry,
    host: Arc<PluginHost>,
    file: FileCache<ProviderConfig>,
    loaded: Mutex<Loaded>,
}

/// The providers built from the config last read, kept so their caches survive lookups.
#[derive(Default)]
struct Loaded {
    config: Option<Arc<ProviderConfig>>,
    providers: Vec<Arc<Provider>>,
}

impl KubeletProviderSource {
    /// Never fails: the config is read (and re-read when it changes) at lookup time.
    /// `timeout` bounds each plugin run (credgate's `[helpers] timeout`).
    pub fn new(entry: &KubeletProviderEntry, system: System, timeout: Duration) -> Self {
        Self {
            entry: entry.clone(),
            host: Arc::new(PluginHost {
                config: entry.config.clone(),
                bin_dir: entry.bin_dir.clone(),
                system,
                timeout,
            }),
            file: FileCache::new(entry.config.clone()),
            loaded: Mutex::new(Loaded::default()),
        }
    }

    /// The providers of the current config, rebuilt only when the file changed.
    fn providers(&self) -> Result<Vec<Arc<Provider>>, KubeletProviderError> {
        let config = self
            .file
            .get(
                self.host.system.files.as_ref(),
                |stamp, location| {
                    let files = self.host.system.files.as_ref();
                    trusted_file::check_opened(files, &self.entry.config, stamp, location)
                        .map_err(|source| KubeletProviderError::ConfigUntrusted { source })
                },
                |bytes| parse_config(bytes, &self.entry.config),
                |e| self.unreadable(e),
            )?
            .ok_or_else(|| KubeletProviderError::ConfigMissing {
                config: self.entry.config.clone(),
                location: self.entry.location.to_string(),
            })?;
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if !loaded
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &config))
        {
            loaded.providers = self.rebuild(&config, &loaded.providers);
            loaded.config = Some(config);
        }
        Ok(loaded.providers.clone())
    }

    /// Reuses a provider whose entry did not change, so its cache is kept.
    fn rebuild(&self, config: &ProviderConfig, old: &[Arc<Provider>]) -> Vec<Arc<Provider>> {
        config
            .providers
            .iter()
            .map(|spec| match old.iter().find(|p| p.spec == *spec) {
                Some(same) => Arc::clone(same),
                None => Provider::new(spec.clone(), Arc::clone(&self.host)),
            })
            .collect()
    }

    fn unreadable(&self, error: io::Error) -> KubeletProviderError {
        let reason = if error.raw_os_error() == Some(nix::errno::Errno::EISDIR as i32) {
            "it is a directory; credgate reads one CredentialProviderConfig file".to_string()
        } else {
            error.to_string()
        };
        KubeletProviderError::ConfigUnreadable {
            config: self.entry.config.clone(),
            reason,
        }
    }
}

#[async_trait]
impl Source for KubeletProviderSource {
    fn name(&self) -> String {
        format!("kubelet provider config {}", self.entry.config.display())
    }

    /// One offer per provider whose `matchImages` matches; no plugin runs here.
    async fn offers(&self, target: &Target) -> Result<Vec<Offer>, SourceError> {
        let image = target.to_string();
        let offers = self
            .providers()?
            .into_iter()
            .filter_map(|provider| offer_for(provider, target, &image))
            .collect();
        Ok(offers)
    }
}

fn offer_for(provider: Arc<Provider>, target: &Target, image: &str) -> Option<Offer> {
    let pattern = provider
        .spec
        .match_images
        .iter()
        .find(|pattern| urls_match(pattern, image))?;
    let origin = format!("provider {:?} matchImages {pattern:?}", provider.spec.name);
    let scope = ranking_scope(pattern, target);
    let fetch = Arc::new(ProviderFetch {
        provider,
        image: image.to_string(),
    });
    Some(Offer::new(scope, origin, fetch))
}

/// The scope an offer is ranked by: the `matchImages` pattern when credgate's scope syntax
/// can say it and agrees that it covers the target (kubelet's string-prefix paths and
/// partial-label globs may not), else the target's whole registry.
fn ranking_scope(pattern: &str, target: &Target) -> Scope {
    Scope::parse(pattern)
        .ok()
        .filter(|scope| scope.matches(target))
        .unwrap_or_else(|| Scope::registry(target.registry.clone()))
}

struct ProviderFetch {
    provider: Arc<Provider>,
    image: String,
}

#[async_trait]
impl Fetch for ProviderFetch {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        Ok(self.provider.credential(&self.image).await?)
    }
}

#[cfg(test)]
mod tests;
