//! Bearer tokens per (registry, scope, identity), kept until shortly before they expire, with
//! concurrent fetches for one key coalesced: one request goes to the token endpoint and
//! everyone asking meanwhile gets its result, refusals included.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use ring::digest::{Context, SHA256};

use crate::sources::{Credential, Secret, SecretKind};
use crate::system::Clock;

use super::token::{Issued, TokenError};

/// A token is not used in the last tenth of its life, and at most this before its end.
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// Above this many keys, expired tokens are dropped when a new one is fetched.
const PRUNE_ABOVE: usize = 256;

/// Who a token is for, as a SHA-256 of (source, username, kind, secret): the secret is
/// never a map key, and two sources with the same credential do not share a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityHash([u8; 32]);

impl IdentityHash {
    pub fn anonymous() -> Self {
        Self([0; 32])
    }

    pub fn of(source: &str, credential: &Credential) -> Self {
        let kind: &[u8] = match credential.kind {
            SecretKind::Password => b"password",
            SecretKind::IdentityToken => b"identity-token",
            SecretKind::RegistryToken => b"registry-token",
        };
        let mut context = Context::new(&SHA256);
        for part in [
            source.as_bytes(),
            credential.username.as_bytes(),
            kind,
            credential.secret.expose().as_bytes(),
        ] {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut hash = [0; 32];
        hash.copy_from_slice(context.finish().as_ref());
        Self(hash)
    }
}

impl std::fmt::Debug for IdentityHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix: String = self.0[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "IdentityHash({prefix}…)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub registry: String,
    pub scope: String,
    pub identity: IdentityHash,
}

/// A token and until when credgate uses it.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    pub fresh_until: Instant,
}

pub type Fetched = Result<Token, Arc<TokenError>>;

/// How a token was had, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// From the cache.
    Cached,
    /// From a fetch another request had already started.
    Joined,
    /// This request fetched it.
    Fetched,
}

enum Slot {
    Ready(Token),
    Fetching(Shared<BoxFuture<'static, Fetched>>),
}

pub struct TokenCache {
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<TokenKey, Slot>>,
}

impl TokenCache {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The fresh cached token for `key`, else the result of the fetch in flight for it, else
    /// the result of `fetch()` (started here, shared with whoever asks meanwhile). Failures
    /// are shared with the waiters but not cached.
    pub async fn get_or_fetch<F, Fut>(&self, key: &TokenKey, fetch: F) -> (Fetched, Got)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Issued, TokenError>> + Send + 'static,
    {
        let (shared, got) = {
            let mut slots = self.lock();
            match slots.get(key) {
                Some(Slot::Ready(token)) if self.clock.now() < token.fresh_until => {
                    return (Ok(token.clone()), Got::Cached);
                }
                Some(Slot::Fetching(shared)) => (shared.clone(), Got::Joined),
                _ => {
                    let shared = self.start(fetch());
                    self.prune(&mut slots);
                    slots.insert(key.clone(), Slot::Fetching(shared.clone()));
                    (shared, Got::Fetched)
                }
            }
        };
        let result = shared.clone().await;
        self.settle(key, &shared, &result);
        (result, got)
    }

    /// Forgets `token` for `key` (the registry refused it), unless a newer one replaced it.
    pub fn invalidate(&self, key: &TokenKey, token: &Secret) {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::Ready(t)) if &t.value == token) {
            slots.remove(key);
        }
    }

    fn start<Fut>(&self, fetch: Fut) -> Shared<BoxFuture<'static, Fetched>>
    where
        Fut: Future<Output = Result<Issued, TokenError>> + Send + 'static,
    {
        let clock = self.clock.clone();
        async move {
            let issued = fetch.await.map_err(Arc::new)?;
            let fresh_until = clock.now() + fresh_for(issued.lifetime, issued.age);
            Ok(Token {
                value: issued.value,
                fresh_until,
            })
        }
        .boxed()
        .shared()
    }

    /// The first waiter to finish replaces the in-flight slot: a token, or nothing.
    fn settle(
        &self,
        key: &TokenKey,
        shared: &Shared<BoxFuture<'static, Fetched>>,
        result: &Fetched,
    ) {
        let mut slots = self.lock();
        let ours = matches!(slots.get(key), Some(Slot::Fetching(s)) if s.ptr_eq(shared));
        if !ours {
            return;
        }
        match result {
            Ok(token) => slots.insert(key.clone(), Slot::Ready(token.clone())),
            Err(_) => slots.remove(key),
        };
    }

    fn prune(&self, slots: &mut HashMap<TokenKey, Slot>) {
        if slots.len() > PRUNE_ABOVE {
            let now = self.clock.now();
            slots.retain(|_, slot| match slot {
                Slot::Ready(token) => now < token.fresh_until,
                Slot::Fetching(_) => true,
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a token `age` old with `lifetime` is used: until a tenth of its lifetime (at
/// most 30 s) before it expires.
pub fn fresh_for(lifetime: Duration, age: Duration) -> Duration {
    let margin = (lifetime / 10).min(MAX_MARGIN);
    lifetime.saturating_sub(age).saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::join_all;

    use super::*;
    use crate::system::fake::ManualClock;

    fn key(scope: &str) -> TokenKey {
        TokenKey {
            registry: "registry.test".into(),
            scope: scope.into(),
            identity: IdentityHash::anonymous(),
        }
    }

    fn issued(value: &str, lifetime: u64) -> Issued {
        Issued {
            value: Secret::new(value),
            lifetime: Duration::from_secs(lifetime),
            age: Duration::ZERO,
        }
    }

    #[test]
    fn margin_is_a_tenth_of_the_lifetime_at_most_thirty_seconds() {
        let s = Duration::from_secs;
        assert_eq!(fresh_for(s(60), s(0)), s(54));
        assert_eq!(fresh_for(s(300), s(0)), s(270));
        assert_eq!(fresh_for(s(3600), s(0)), s(3570));
        assert_eq!(fresh_for(s(300), s(100)), s(170));
        assert_eq!(fresh_for(s(60), s(120)), s(0));
    }

    #[test]
    fn identities_hash_every_part_and_never_equal_anonymous() {
        let a = IdentityHash::of("src", &Credential::password("u", "p"));
        assert_eq!(a, IdentityHash::of("src", &Credential::password("u", "p")));
        assert_ne!(a, IdentityHash::of("src2", &Credential::password("u", "p")));
        assert_ne!(a, IdentityHash::of("src", &Credential::password("u", "p2")));
        assert_ne!(
            a,
            IdentityHash::of("src", &Credential::identity_token("u", "p"))
        );
        assert_ne!(a, IdentityHash::anonymous());
        assert!(!format!("{a:?}").contains('p'));
    }

    #[tokio::test]
    async fn tokens_are_cached_until_shortly_before_expiry() {
        let clock = Arc::new(ManualClock::new());
        let cache = TokenCache::new(clock.clone());
        let fetches = AtomicUsize::new(0);
        let get = || async {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            let (token, got) = cache
                .get_or_fetch(&key("repository:a:pull"), || async move {
                    Ok(issued(&format!("t{n}"), 300))
                })
                .await;
            (token.unwrap().value.expose().to_string(), got)
        };
        assert_eq!(get().await, ("t0".into(), Got::Fetched));
        clock.advance(Duration::from_secs(269));
        assert_eq!(get().await, ("t0".into(), Got::Cached));
        clock.advance(Duration::from_secs(1));
        assert_eq!(get().await, ("t2".into(), Got::Fetched));
    }

    #[tokio::test]
    async fn concurrent_fetches_for_one_key_are_coalesced_failures_too() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let fetch = |outcome: Result<&'static str, ()>| {
            let started = started.clone();
            let mut released = released.clone();
            move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                match outcome {
                    Ok(value) => Ok(issued(value, 60)),
                    Err(()) => Err(TokenError::refused_for_test(401)),
                }
            }
        };
        let key = key("repository:b:pull");
        let waiters = join_all((0..5).map(|_| cache.get_or_fetch(&key, fetch(Err(())))));
        let releaser = async {
            tokio::task::yield_now().await;
            release.send(true).unwrap();
        };
        let (results, ()) = tokio::join!(waiters, releaser);
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|(r, _)| r.is_err()));
        assert_eq!(
            results.iter().filter(|(_, g)| *g == Got::Fetched).count(),
            1
        );

        // The refusal was not cached: the next request fetches again, and succeeds.
        let results = join_all((0..5).map(|_| cache.get_or_fetch(&key, fetch(Ok("good"))))).await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert!(results
            .iter()
            .all(|(r, _)| r.as_ref().unwrap().value.expose() == "good"));
        let (_, got) = cache.get_or_fetch(&key, fetch(Ok("new"))).await;
        assert_eq!(got, Got::Cached);
    }

    #[tokio::test]
    async fn invalidate_drops_only_the_refused_token() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let k = key("s");
        let (first, _) = cache
            .get_or_fetch(&k, || async { Ok(issued("a", 60)) })
            .await;
        cache.invalidate(&k, &Secret::new("other"));
        let (_, got) = cache
            .get_or_fetch(&k, || async { Ok(issued("b", 60)) })
            .await;
        assert_eq!(got, Got::Cached);
        cache.invalidate(&k, &first.unwrap().value);
        let (again, got) = cache
            .get_or_fetch(&k, || async { Ok(issued("b", 60)) })
            .await;
        assert_eq!((again.unwrap().value.expose(), got), ("b", Got::Fetched));
    }
}
