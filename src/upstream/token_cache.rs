//! Bearer tokens per (registry, scope, identity), kept until shortly before they expire, with
//! concurrent fetches for one key coalesced: one request goes to the token endpoint and
//! everyone asking meanwhile gets its result, refusals included.
//!
//! Keys come from hostile input (whoever names an image picks the registry and repository,
//! the registry picks the scope and the token), so the cache is bounded: at most
//! [`CAPACITY`] keys, least recently used evicted first, expired tokens swept, oversized
//! tokens used but not kept. A fetch that fails, panics or is abandoned by every waiter
//! leaves no slot behind, so no scope is ever stuck behind a dead fetch.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use ring::digest::{Context, SHA256};

use crate::secret::Secret;
use crate::sources::{Credential, SecretKind};
use crate::system::Clock;

use super::lru::Lru;
use super::token::{Issued, TokenError, MAX_LIFETIME};
use super::UpstreamError;

/// A token is not used in the last tenth of its life, and at most this before its end.
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// Most keys kept (tokens and fetches in flight). A node pulls from far fewer scopes within
/// a token's life; the bound is against a caller naming endless repositories, and with
/// [`MAX_KEPT_BYTES`] it caps the cache near 80 MiB.
pub const CAPACITY: usize = 10_000;
/// Registry, scope and token together longer than this are used but not kept: real tokens
/// are 1 to 4 KiB, and a hostile endpoint may send up to the 1 MiB body limit.
const MAX_KEPT_BYTES: usize = 8 << 10;
/// Expired tokens are swept once per this many new keys, besides whenever the cache is full.
const SWEEP_EVERY: u64 = 1_024;

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
    /// The registry's `host[:port]`, or a mirror's `scheme://host:port`.
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

type SharedFetch = Shared<BoxFuture<'static, Fetched>>;

enum Slot {
    Ready(Token),
    Fetching {
        fetch: SharedFetch,
        /// Requests awaiting it; when the last is cancelled, the fetch is dropped with it.
        waiters: usize,
    },
}

struct Slots {
    map: Lru<TokenKey, Slot>,
    /// New keys so far, to time the sweeps of expired tokens.
    added: u64,
}

pub struct TokenCache {
    clock: Arc<dyn Clock>,
    slots: Mutex<Slots>,
}

impl TokenCache {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            slots: Mutex::new(Slots {
                map: Lru::new(CAPACITY),
                added: 0,
            }),
        }
    }

    /// Keys held: tokens and fetches in flight.
    pub fn len(&self) -> usize {
        self.lock().map.len()
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
            let now = self.clock.now();
            match slots.map.get(key) {
                Some(Slot::Ready(token)) if now < token.fresh_until => {
                    return (Ok(token.clone()), Got::Cached);
                }
                Some(Slot::Fetching { fetch, waiters }) => {
                    *waiters = waiters.saturating_add(1);
                    (fetch.clone(), Got::Joined)
                }
                _ => {
                    let shared = self.start(key, fetch());
                    let slot = Slot::Fetching {
                        fetch: shared.clone(),
                        waiters: 1,
                    };
                    self.add(&mut slots, key.clone(), slot);
                    (shared, Got::Fetched)
                }
            }
        };
        // Whatever ends this wait (an answer, cancellation, a panic), the guard settles it.
        let waiter = Waiter {
            cache: self,
            key,
            fetch: &shared,
        };
        let result = shared.clone().await;
        waiter.settle(&result);
        (result, got)
    }

    /// Forgets `token` for `key` (the registry refused it), unless a newer one replaced it.
    pub fn invalidate(&self, key: &TokenKey, token: &Secret) {
        let mut slots = self.lock();
        if matches!(slots.map.peek(key), Some(Slot::Ready(t)) if &t.value == token) {
            slots.map.remove(key);
        }
    }

    /// The fetch as a shareable future that cannot panic: a panic inside becomes an error
    /// every waiter gets, and a lifetime that would overflow the clock is not kept.
    fn start<Fut>(&self, key: &TokenKey, fetch: Fut) -> SharedFetch
    where
        Fut: Future<Output = Result<Issued, TokenError>> + Send + 'static,
    {
        let clock = self.clock.clone();
        let registry = key.registry.clone();
        let fetched = async move {
            let issued = fetch.await.map_err(Arc::new)?;
            let now = clock.now();
            let fresh_until = now
                .checked_add(fresh_for(issued.lifetime, issued.age))
                .unwrap_or(now);
            Ok(Token {
                value: issued.value,
                fresh_until,
            })
        };
        AssertUnwindSafe(fetched)
            .catch_unwind()
            .map(move |outcome| outcome.unwrap_or_else(|_| Err(Arc::new(panicked(registry)))))
            .boxed()
            .shared()
    }

    /// Puts a new key in, sweeping expired tokens first when due or when the cache is full
    /// (the map itself then evicts the least recently used).
    fn add(&self, slots: &mut Slots, key: TokenKey, slot: Slot) {
        slots.added = slots.added.wrapping_add(1);
        if slots.map.len() >= CAPACITY || slots.added % SWEEP_EVERY == 0 {
            let now = self.clock.now();
            slots.map.retain(|_, slot| match slot {
                Slot::Ready(token) => now < token.fresh_until,
                Slot::Fetching { .. } => true,
            });
        }
        slots.map.insert(key, slot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's wait on a fetch. The first to get the answer replaces the slot (a token,
/// or nothing); one dropped before that (cancelled, or unwinding) leaves, and the last to
/// leave takes the slot with it.
struct Waiter<'a> {
    cache: &'a TokenCache,
    key: &'a TokenKey,
    fetch: &'a SharedFetch,
}

impl Waiter<'_> {
    fn settle(self, result: &Fetched) {
        let mut slots = self.cache.lock();
        if !self.is_ours(&slots) {
            return;
        }
        match result {
            Ok(token) if kept_size(self.key, token) <= MAX_KEPT_BYTES => {
                slots
                    .map
                    .insert(self.key.clone(), Slot::Ready(token.clone()));
            }
            _ => {
                slots.map.remove(self.key);
            }
        }
        // The slot is no longer ours, so the guard's drop does nothing.
    }

    fn is_ours(&self, slots: &Slots) -> bool {
        match slots.map.peek(self.key) {
            Some(Slot::Fetching { fetch, .. }) => fetch.ptr_eq(self.fetch),
            _ => false,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut slots = self.cache.lock();
        if !self.is_ours(&slots) {
            return;
        }
        let last = match slots.map.peek_mut(self.key) {
            Some(Slot::Fetching { waiters, .. }) => {
                *waiters = waiters.saturating_sub(1);
                *waiters == 0
            }
            _ => false,
        };
        // Unwinding through a wait means the shared fetch may be poisoned: never reuse it.
        if last || std::thread::panicking() {
            slots.map.remove(self.key);
        }
    }
}

/// The error every waiter gets when the fetch panicked; no secret can be in it.
fn panicked(registry: String) -> TokenError {
    TokenError::Failed(UpstreamError::Token {
        realm: registry,
        reason: "the token fetch panicked; nothing was cached".into(),
    })
}

/// The bytes a kept token costs beyond the fixed size of an entry.
fn kept_size(key: &TokenKey, token: &Token) -> usize {
    key.registry
        .len()
        .saturating_add(key.scope.len())
        .saturating_add(token.value.expose().len())
}

/// How long a token `age` old with `lifetime` is used: until a tenth of its lifetime (at
/// most 30 s) before it expires, and never beyond [`MAX_LIFETIME`] whatever it claims.
pub fn fresh_for(lifetime: Duration, age: Duration) -> Duration {
    let lifetime = lifetime.min(MAX_LIFETIME);
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

    #[tokio::test]
    async fn huge_expires_in_cannot_overflow_the_clock() {
        let clock = Arc::new(ManualClock::new());
        let cache = TokenCache::new(clock.clone());
        let k = key("repository:a:pull");
        let forever = || async {
            Ok(Issued {
                value: Secret::new("forever"),
                lifetime: Duration::MAX,
                age: Duration::ZERO,
            })
        };
        let (token, got) = cache.get_or_fetch(&k, forever).await;
        assert_eq!(
            (token.unwrap().value.expose(), got),
            ("forever", Got::Fetched)
        );
        // Kept no longer than MAX_LIFETIME, not for 584 billion years.
        clock.advance(MAX_LIFETIME);
        let (_, got) = cache.get_or_fetch(&k, forever).await;
        assert_eq!(got, Got::Fetched);
        assert_eq!(
            fresh_for(Duration::MAX, Duration::ZERO),
            Duration::from_secs(3570)
        );
    }

    #[tokio::test]
    async fn panicking_fetch_leaves_no_poisoned_slot() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let k = key("repository:a:pull");
        let (release, released) = tokio::sync::watch::channel(false);
        let exploding = || {
            let mut released = released.clone();
            || async move {
                let _ = released.wait_for(|r| *r).await;
                panic!("overflow when adding duration to instant");
            }
        };
        let waiters = join_all((0..3).map(|_| cache.get_or_fetch(&k, exploding())));
        let releaser = async {
            tokio::task::yield_now().await;
            release.send(true).unwrap();
        };
        let (results, ()) = tokio::join!(waiters, releaser);
        for (result, _) in &results {
            let error = result.as_ref().unwrap_err();
            assert!(error.to_string().contains("panicked"), "{error}");
        }
        assert_eq!(cache.len(), 0);
        // The scope is not stuck: the next pull fetches afresh and succeeds.
        let (token, got) = cache
            .get_or_fetch(&k, || async { Ok(issued("good", 60)) })
            .await;
        assert_eq!((token.unwrap().value.expose(), got), ("good", Got::Fetched));
    }

    #[tokio::test]
    async fn abandoned_fetch_slot_is_cleaned_up() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let k = key("repository:a:pull");
        let never = || futures::future::pending::<Result<Issued, TokenError>>();
        let mut first = Box::pin(cache.get_or_fetch(&k, never));
        let mut second = Box::pin(cache.get_or_fetch(&k, never));
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        drop(first);
        assert_eq!(cache.len(), 1, "one waiter is left");
        drop(second);
        assert_eq!(cache.len(), 0, "every waiter left: the slot goes");
        let (_, got) = cache
            .get_or_fetch(&k, || async { Ok(issued("a", 60)) })
            .await;
        assert_eq!(got, Got::Fetched);
    }

    #[tokio::test]
    async fn a_waiter_cancelled_midway_does_not_cancel_the_others() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let k = key("repository:a:pull");
        let (release, released) = tokio::sync::watch::channel(false);
        let fetch = || {
            let mut released = released.clone();
            || async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(issued("shared", 60))
            }
        };
        let mut first = Box::pin(cache.get_or_fetch(&k, fetch()));
        let mut second = Box::pin(cache.get_or_fetch(&k, fetch()));
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        drop(first);
        release.send(true).unwrap();
        let (token, got) = second.await;
        assert_eq!(
            (token.unwrap().value.expose(), got),
            ("shared", Got::Joined)
        );
        let (_, got) = cache.get_or_fetch(&k, fetch()).await;
        assert_eq!(got, Got::Cached);
    }

    #[tokio::test]
    async fn twenty_thousand_scopes_stay_within_the_cap_and_recent_ones_survive() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let scope = |n: usize| key(&format!("repository:attacker/{n}:pull"));
        let warm = key("repository:library/busybox:pull");
        let fresh = || async { Ok(issued("t", 300)) };
        assert!(cache.get_or_fetch(&warm, fresh).await.0.is_ok());
        for n in 0..20_000 {
            assert!(cache.get_or_fetch(&scope(n), fresh).await.0.is_ok());
            assert!(cache.len() <= CAPACITY, "{} keys at {n}", cache.len());
            if n % 100 == 0 {
                let (_, got) = cache.get_or_fetch(&warm, fresh).await;
                assert_eq!(got, Got::Cached, "the image in use was evicted at {n}");
            }
        }
        assert!(cache.len() > CAPACITY * 9 / 10);
        for n in 19_000..20_000 {
            let (_, got) = cache.get_or_fetch(&scope(n), fresh).await;
            assert_eq!(got, Got::Cached, "{n}");
        }
        let (_, got) = cache.get_or_fetch(&scope(0), fresh).await;
        assert_eq!(got, Got::Fetched);
    }

    #[tokio::test]
    async fn expired_tokens_are_swept_before_the_cap() {
        let clock = Arc::new(ManualClock::new());
        let cache = TokenCache::new(clock.clone());
        for n in 0..SWEEP_EVERY - 1 {
            let k = key(&format!("repository:r{n}:pull"));
            let (token, _) = cache
                .get_or_fetch(&k, || async { Ok(issued("t", 60)) })
                .await;
            assert!(token.is_ok());
        }
        assert_eq!(cache.len() as u64, SWEEP_EVERY - 1);
        clock.advance(Duration::from_secs(60));
        let (token, _) = cache
            .get_or_fetch(&key("repository:new:pull"), || async {
                Ok(issued("t", 60))
            })
            .await;
        assert!(token.is_ok());
        assert_eq!(cache.len(), 1, "the expired tokens were swept");
    }

    #[tokio::test]
    async fn oversized_tokens_are_used_but_not_kept() {
        let cache = TokenCache::new(Arc::new(ManualClock::new()));
        let k = key("repository:a:pull");
        let huge = "x".repeat(MAX_KEPT_BYTES);
        let fetch = || {
            let huge = huge.clone();
            || async move { Ok(issued(&huge, 300)) }
        };
        let (token, got) = cache.get_or_fetch(&k, fetch()).await;
        assert_eq!(
            (token.unwrap().value.expose().len(), got),
            (huge.len(), Got::Fetched)
        );
        assert_eq!(cache.len(), 0);
        let (_, got) = cache.get_or_fetch(&k, fetch()).await;
        assert_eq!(got, Got::Fetched);
    }
}
