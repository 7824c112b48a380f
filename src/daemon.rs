//! The state of a running daemon that every front door shares — the ttrpc service, the
//! pull-through endpoint — and that a reload swaps: the keychain, the callers allowed on the
//! socket, each source's last health, and the counters `Status` reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::keychain::{Keychain, SourceOutcome, SourceReport};

/// Counters reported by `Status`.
#[derive(Default)]
pub struct Counters {
    pub lookups: AtomicU64,
    pub hits: AtomicU64,
    pub anonymous: AtomicU64,
    pub invalid_requests: AtomicU64,
    pub refused_callers: AtomicU64,
    pub reloads: AtomicU64,
    pub failed_reloads: AtomicU64,
}

impl Counters {
    /// Every counter by the name `Status` reports it under.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        [
            ("lookups", &self.lookups),
            ("hits", &self.hits),
            ("anonymous", &self.anonymous),
            ("invalid_requests", &self.invalid_requests),
            ("refused_callers", &self.refused_callers),
            ("reloads", &self.reloads),
            ("failed_reloads", &self.failed_reloads),
        ]
        .into_iter()
        .map(|(name, counter)| (name.to_string(), counter.load(Ordering::Relaxed)))
        .collect()
    }
}

/// Adds one to a counter; counters are independent tallies, so no ordering is needed.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The state of a running daemon, shared by every front door and swapped on reload.
pub struct Daemon {
    keychain: RwLock<Arc<Keychain>>,
    allowed_uids: RwLock<Vec<u32>>,
    /// Each source's last outcome, by name: `None` healthy, `Some(reason)` failed.
    health: Mutex<BTreeMap<String, Option<String>>>,
    started: Instant,
    pub counters: Counters,
}

/// Every source of `keychain`, healthy until a lookup says otherwise.
fn unknown_health(keychain: &Keychain) -> BTreeMap<String, Option<String>> {
    keychain
        .source_names()
        .into_iter()
        .map(|n| (n, None))
        .collect()
}

impl Daemon {
    pub fn new(keychain: Keychain, allowed_uids: Vec<u32>) -> Self {
        let health = Mutex::new(unknown_health(&keychain));
        Self {
            keychain: RwLock::new(Arc::new(keychain)),
            allowed_uids: RwLock::new(allowed_uids),
            health,
            started: Instant::now(),
            counters: Counters::default(),
        }
    }

    pub fn keychain(&self) -> Arc<Keychain> {
        self.keychain.read().expect("keychain lock").clone()
    }

    /// Swaps in a new keychain and caller list; requests already running finish on the old.
    pub fn reload(&self, keychain: Keychain, allowed_uids: Vec<u32>) {
        *self.health.lock().expect("health lock") = unknown_health(&keychain);
        *self.keychain.write().expect("keychain lock") = Arc::new(keychain);
        *self.allowed_uids.write().expect("uid lock") = allowed_uids;
        bump(&self.counters.reloads);
    }

    pub fn allows(&self, uid: u32) -> bool {
        self.allowed_uids.read().expect("uid lock").contains(&uid)
    }

    /// Records each source's outcome; the map is only written when a source's health
    /// changed, because this runs on every lookup.
    pub fn record_sources(&self, reports: &[SourceReport]) {
        let mut health = self.health.lock().expect("health lock");
        for report in reports {
            let failure = match &report.outcome {
                SourceOutcome::Failed(reason) => Some(reason),
                _ => None,
            };
            if health.get(&*report.source).map(Option::as_ref) != Some(failure) {
                health.insert(report.source.to_string(), failure.cloned());
            }
        }
    }

    /// Each source's last outcome, by name: `None` healthy, `Some(reason)` failed.
    pub fn health(&self) -> BTreeMap<String, Option<String>> {
        self.health.lock().expect("health lock").clone()
    }

    /// How long this daemon has been running (reloads do not restart the clock).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}
