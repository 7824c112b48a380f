//! Short-lived answers of costly calls (a credential helper run): an answer is reused for as
//! long as the call said it may be, identical calls in flight share one run, and the number of
//! answers kept is bounded, the oldest going first.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::system::Clock;

pub struct AnswerCache<K, V> {
    clock: Arc<dyn Clock>,
    capacity: usize,
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

/// One call: in flight until its answer is set, then reusable until `done + reuse`.
struct Slot<V> {
    created: Instant,
    answer: OnceCell<Answered<V>>,
}

struct Answered<V> {
    value: V,
    done: Instant,
    reuse: Duration,
}

impl<V> Slot<V> {
    /// In flight (joinable) or answered recently enough to reuse.
    fn is_live(&self, now: Instant) -> bool {
        self.answer
            .get()
            .map_or(true, |a| now.saturating_duration_since(a.done) < a.reuse)
    }
}

impl<K: Eq + Hash + Clone, V: Clone> AnswerCache<K, V> {
    /// At most `capacity` answers (at least one) are kept.
    pub fn new(clock: Arc<dyn Clock>, capacity: usize) -> Self {
        Self {
            clock,
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`: a live one, the one of an identical call in flight, or what
    /// `run` gives, with how long it may be reused (zero: only by calls already waiting).
    /// `run` is only polled when no live answer exists; if the caller running it is dropped,
    /// a waiting caller runs its own.
    pub async fn answer(&self, key: K, run: impl Future<Output = (V, Duration)>) -> V {
        let slot = self.slot(key);
        let answered = slot
            .answer
            .get_or_init(|| async {
                let (value, reuse) = run.await;
                Answered {
                    value,
                    done: self.clock.now(),
                    reuse,
                }
            })
            .await;
        answered.value.clone()
    }

    /// How many answers (live, in flight or expired but not yet dropped) are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: K) -> Arc<Slot<V>> {
        let now = self.clock.now();
        let mut slots = self.lock();
        if let Some(slot) = slots.get(&key).filter(|slot| slot.is_live(now)) {
            return Arc::clone(slot);
        }
        slots.remove(&key);
        if slots.len() >= self.capacity {
            slots.retain(|_, slot| slot.is_live(now));
        }
        if slots.len() >= self.capacity {
            let oldest = slots
                .iter()
                .min_by_key(|(_, slot)| slot.created)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                slots.remove(&oldest);
            }
        }
        let slot = Arc::new(Slot {
            created: now,
            answer: OnceCell::new(),
        });
        slots.insert(key, Arc::clone(&slot));
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Slot<V>>>> {
        // The map is consistent after every statement, so a panic elsewhere leaves it usable.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::system::fake::ManualClock;

    const REUSE: Duration = Duration::from_secs(30);

    fn cache(capacity: usize) -> (Arc<ManualClock>, AnswerCache<&'static str, usize>) {
        let clock = Arc::new(ManualClock::new());
        (clock.clone(), AnswerCache::new(clock, capacity))
    }

    /// A call that takes a moment, counts its runs and answers with the count.
    async fn counted(runs: &AtomicUsize, reuse: Duration) -> (usize, Duration) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        (runs.fetch_add(1, Ordering::SeqCst) + 1, reuse)
    }

    #[tokio::test]
    async fn an_answer_is_reused_until_it_expires() {
        let (clock, cache) = cache(8);
        let runs = AtomicUsize::new(0);
        assert_eq!(cache.answer("k", counted(&runs, REUSE)).await, 1);
        assert_eq!(cache.answer("k", counted(&runs, REUSE)).await, 1);
        clock.advance(REUSE - Duration::from_millis(1));
        assert_eq!(cache.answer("k", counted(&runs, REUSE)).await, 1);
        clock.advance(Duration::from_millis(1));
        assert_eq!(cache.answer("k", counted(&runs, REUSE)).await, 2);
        assert_eq!(cache.answer("other", counted(&runs, REUSE)).await, 3);
    }

    #[tokio::test]
    async fn identical_calls_in_flight_share_one_run_even_with_zero_reuse() {
        let (_, cache) = cache(8);
        let runs = AtomicUsize::new(0);
        let calls = (0..5).map(|_| cache.answer("k", counted(&runs, Duration::ZERO)));
        let answers = futures::future::join_all(calls).await;
        assert_eq!(answers, [1; 5]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(cache.answer("k", counted(&runs, Duration::ZERO)).await, 2);
    }

    #[tokio::test]
    async fn a_dropped_runner_hands_over_to_a_waiting_caller() {
        let (_, cache) = cache(8);
        let runs = AtomicUsize::new(0);
        let first = cache.answer("k", counted(&runs, REUSE));
        let dropped = tokio::time::timeout(Duration::from_millis(1), first).await;
        assert!(dropped.is_err());
        assert_eq!(cache.answer("k", counted(&runs, REUSE)).await, 1);
    }

    #[tokio::test]
    async fn the_number_of_answers_is_bounded_oldest_first() {
        let (clock, cache) = cache(3);
        let runs = AtomicUsize::new(0);
        for key in ["a", "b", "c"] {
            cache.answer(key, counted(&runs, REUSE)).await;
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(cache.len(), 3);
        cache.answer("d", counted(&runs, REUSE)).await;
        assert_eq!(cache.len(), 3);
        // "a" went; "b" is still answered from the cache.
        assert_eq!(cache.answer("b", counted(&runs, REUSE)).await, 2);
        assert_eq!(cache.answer("a", counted(&runs, REUSE)).await, 5);
        // Expired answers go before live ones.
        clock.advance(REUSE);
        cache.answer("e", counted(&runs, REUSE)).await;
        assert_eq!(cache.len(), 1);
    }
}
