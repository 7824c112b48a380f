//! A map bounded in entries that drops the least recently used first: the shape of every
//! cache whose keys come from hostile input (whoever names an image picks the registry and
//! repository), so that input can churn the cache but never grow it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` entries. Each use stamps an entry with a counter; going over the
/// capacity evicts the oldest stamps in one batch (a sixteenth of the capacity), so the
/// linear scan that finds them is paid once per many insertions, not on each.
pub struct Lru<K, V> {
    entries: HashMap<K, Stamped<V>>,
    capacity: usize,
    /// The stamp of the latest use.
    uses: u64,
}

struct Stamped<V> {
    value: V,
    used: u64,
}

impl<K: Eq + Hash, V> Lru<K, V> {
    /// A map of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            uses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The value for `key`, marked as used now.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let stamp = self.next_use();
        let entry = self.entries.get_mut(key)?;
        entry.used = stamp;
        Some(&mut entry.value)
    }

    /// The value for `key`, without marking it used.
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.get(key).map(|e| &e.value)
    }

    /// As [`Lru::peek`], mutably.
    pub fn peek_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Puts `value` under `key` as the most recently used entry, evicting the least recently
    /// used ones when that goes over the capacity. Never evicts the entry just inserted.
    pub fn insert(&mut self, key: K, value: V) {
        let used = self.next_use();
        self.entries.insert(key, Stamped { value, used });
        if self.entries.len() > self.capacity {
            self.evict();
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.remove(key).map(|e| e.value)
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain(|k, e| keep(k, &mut e.value));
    }

    fn next_use(&mut self) -> u64 {
        // 2^64 uses never happen; wrapping only keeps the arithmetic panic-free.
        self.uses = self.uses.wrapping_add(1);
        self.uses
    }

    /// Drops the least recently used entries until a sixteenth of the capacity is free.
    fn evict(&mut self) {
        let target = self.capacity - self.capacity / 16;
        let excess = self.entries.len().saturating_sub(target);
        let Some(last) = excess.checked_sub(1) else {
            return;
        };
        let mut stamps: Vec<u64> = self.entries.values().map(|e| e.used).collect();
        if last >= stamps.len() {
            return;
        }
        // Stamps are unique, so exactly `excess` entries are at or below the threshold.
        let (_, threshold, _) = stamps.select_nth_unstable(last);
        let threshold = *threshold;
        self.entries.retain(|_, e| e.used > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_thousand_keys_stay_within_the_capacity_and_recent_ones_survive() {
        let mut lru = Lru::new(1_000);
        lru.insert(0u32, "kept warm");
        for key in 1..20_000u32 {
            lru.insert(key, "x");
            assert!(lru.len() <= 1_000);
            // A key used all along is never the least recently used one.
            assert!(lru.get(&0).is_some(), "evicted at {key}");
        }
        assert!(lru.len() > 900, "{}", lru.len());
        for key in 19_900..20_000 {
            assert!(lru.peek(&key).is_some(), "{key}");
        }
        assert!(lru.peek(&1).is_none());
    }

    #[test]
    fn a_capacity_of_one_keeps_the_newest() {
        let mut lru = Lru::new(0);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!((lru.len(), lru.peek("b")), (1, Some(&2)));
    }

    #[test]
    fn peek_does_not_count_as_use() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.peek("a"), Some(&1));
        lru.insert("c", 3);
        assert_eq!(lru.peek("a"), None);
        assert_eq!(lru.get("b"), Some(&mut 2));
        lru.insert("d", 4);
        assert_eq!((lru.peek("b"), lru.peek("c")), (Some(&2), None));
        assert_eq!(lru.remove("b"), Some(2));
        lru.retain(|_, v| *v != 4);
        assert_eq!(lru.len(), 0);
    }
}
