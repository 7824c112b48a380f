//! One provider at lookup time, as kubelet's `pluginProvider`: its response cache (image,
//! then registry, then global key) and one plugin run per image at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::config::ProviderSpec;
use super::plugin::{run_plugin, CacheKeyType, PluginHost, PluginResponse};
use super::url_match::first_matching_key;
use super::KubeletProviderError;
use crate::sources::Credential;

/// kubelet's cache key for `Global` responses.
const GLOBAL_CACHE_KEY: &str = "global";
/// Longer cache durations are cut to this, so that `Instant` arithmetic can't overflow.
const MAX_CACHE_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

type FlightResult = Result<Arc<PluginResponse>, KubeletProviderError>;
/// A plugin run other lookups of the same image wait on (kubelet's singleflight).
type Flight = Shared<BoxFuture<'static, FlightResult>>;

pub(super) struct Provider {
    pub spec: ProviderSpec,
    host: Arc<PluginHost>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Cache key (image, registry or "global") to a response and when it expires.
    cache: HashMap<String, (Instant, Arc<PluginResponse>)>,
    /// Image to the plugin run under way for it.
    flights: HashMap<String, Flight>,
}

impl Provider {
    pub fn new(spec: ProviderSpec, host: Arc<PluginHost>) -> Arc<Self> {
        Arc::new(Self {
            spec,
            host,
            state: Mutex::new(State::default()),
        })
    }

    /// The credential this provider gives `image`: from the cache or a plugin run, then the
    /// `auth` entry kubelet's keyring would try first. An empty username and password is
    /// a miss.
    pub async fn credential(
        self: &Arc<Self>,
        image: &str,
    ) -> Result<Option<Credential>, KubeletProviderError> {
        if self.spec.wants_service_account_token {
            return Err(KubeletProviderError::ServiceAccountTokenPlugin {
                config: self.host.config.clone(),
                provider: self.spec.name.clone(),
            });
        }
        let started = Instant::now();
        let (response, how) = self.response(image).await?;
        let credential = select_credential(&response, image);
        tracing::debug!(
            provider = %self.spec.name,
            image,
            cache = how,
            found = credential.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kubelet provider lookup"
        );
        Ok(credential)
    }

    /// The response for `image` and how it was had: `hit`, `miss` (this call ran the
    /// plugin) or `joined` (it waited on a run already under way).
    async fn response(
        self: &Arc<Self>,
        image: &str,
    ) -> Result<(Arc<PluginResponse>, &'static str), KubeletProviderError> {
        let (flight, how) = {
            let mut state = self.lock();
            // Checked under the same lock a finished run stores under, so no run is repeated.
            if let Some(hit) = state.cached(image, self.host.system.clock.now()) {
                return Ok((hit, "hit"));
            }
            match state.flights.get(image) {
                Some(flight) => (flight.clone(), "joined"),
                None => {
                    let flight = self.start_flight(image);
                    state.flights.insert(image.to_string(), flight.clone());
                    (flight, "miss")
                }
            }
        };
        Ok((flight.await?, how))
    }

    /// Runs the plugin in its own task, so a caller that gives up does not kill the run
    /// the others wait on.
    fn start_flight(self: &Arc<Self>, image: &str) -> Flight {
        let provider = Arc::clone(self);
        let image = image.to_string();
        let name = self.spec.name.clone();
        let task = tokio::spawn(async move { provider.run_and_cache(image).await });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(KubeletProviderError::PluginTask {
                    provider: name,
                    reason: e.to_string(),
                })
            })
        }
        .boxed()
        .shared()
    }

    async fn run_and_cache(self: Arc<Self>, image: String) -> FlightResult {
        // Ends the flight however the run ends, a panic included.
        let _landing = Landing {
            provider: &self,
            image: &image,
        };
        let started = Instant::now();
        let result = run_plugin(&self.host, &self.spec, &image)
            .await
            .map(Arc::new);
        tracing::debug!(
            provider = %self.spec.name,
            image,
            ok = result.is_ok(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kubelet provider plugin ran"
        );
        if let Ok(response) = &result {
            self.store(&image, response);
        }
        result
    }

    /// kubelet's rule: `cacheDuration` 0 → not cached; absent → `defaultCacheDuration`,
    /// and not cached when that is 0; else kept until now + duration.
    fn store(&self, image: &str, response: &Arc<PluginResponse>) {
        let duration = response
            .cache_duration
            .unwrap_or(self.spec.default_cache_duration);
        if duration.is_zero() {
            return;
        }
        let key = match response.cache_key_type {
            CacheKeyType::Image => image,
            CacheKeyType::Registry => registry_of(image),
            CacheKeyType::Global => GLOBAL_CACHE_KEY,
        };
        let now = self.host.system.clock.now();
        let expires = now + duration.min(MAX_CACHE_DURATION);
        let mut state = self.lock();
        state.cache.retain(|_, (at, _)| !expired(now, *at));
        state
            .cache
            .insert(key.to_string(), (expires, Arc::clone(response)));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a flight from the table when its run ends.
struct Landing<'a> {
    provider: &'a Provider,
    image: &'a str,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.provider.lock().flights.remove(self.image);
    }
}

impl State {
    /// kubelet's lookup order: the image, its registry, then the global key.
    fn cached(&mut self, image: &str, now: Instant) -> Option<Arc<PluginResponse>> {
        [image, registry_of(image), GLOBAL_CACHE_KEY]
            .into_iter()
            .find_map(|key| self.live_entry(key, now))
    }

    fn live_entry(&mut self, key: &str, now: Instant) -> Option<Arc<PluginResponse>> {
        let (expires, response) = self.cache.get(key)?;
        if expired(now, *expires) {
            self.cache.remove(key);
            return None;
        }
        Some(Arc::clone(response))
    }
}

/// As kubelet's expiration policy: an entry is still good at its expiry instant.
fn expired(now: Instant, expires: Instant) -> bool {
    now > expires
}

/// kubelet's `parseRegistry`: everything before the first `/`.
fn registry_of(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

fn select_credential(response: &PluginResponse, image: &str) -> Option<Credential> {
    let key = first_matching_key(response.auth.keys().map(String::as_str), image)?;
    let entry = response.auth.get(key)?;
    if entry.username.is_empty() && entry.password.is_empty() {
        return None;
    }
    Some(Credential::password(
        entry.username.clone(),
        entry.password.expose(),
    ))
}
