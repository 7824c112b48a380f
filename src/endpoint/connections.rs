//! Which connections a listener keeps open. A listener holds at most its cap of connections,
//! so callers without the secret can't exhaust credgate's file descriptors. A connection is
//! *trusted* once one of its requests showed the secret ([`Trust::grant`]). When a new
//! connection arrives at the cap, the oldest untrusted one (a caller that only connected, or
//! is still sending its first head) is closed to make room: idle strangers are shed, never
//! containerd, whose connection sends its head at once. When every open connection is
//! trusted the newcomer is closed instead. Either way the accept loop accepts and moves on,
//! so it never spins and the kernel's backlog never fills with waiting strangers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A request's connection, found in the request's extensions; the endpoint grants trust
/// once the request carried the secret.
#[derive(Clone, Debug, Default)]
pub struct Trust(Arc<AtomicBool>);

impl Trust {
    /// This connection showed the secret: it is no longer shed to make room.
    pub fn grant(&self) {
        // A flag read by the next admission; nothing else is ordered by it.
        self.0.store(true, Ordering::Relaxed);
    }

    fn granted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The open connections of one listener.
pub(super) struct ConnectionTable {
    cap: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By id, so the first entry is the oldest.
    connections: BTreeMap<u64, Entry>,
}

struct Entry {
    trust: Trust,
    shed: oneshot::Sender<()>,
}

/// One admitted connection; dropping it frees its slot.
pub(super) struct Admitted {
    id: u64,
    table: Arc<ConnectionTable>,
    pub trust: Trust,
    /// Resolves when the table sheds this connection to make room for a newer one.
    pub shed: oneshot::Receiver<()>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.lock().connections.remove(&self.id);
    }
}

impl ConnectionTable {
    /// `cap` is at least one.
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The table holds no invariant a panic elsewhere could break half-way.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a new connection, shedding the oldest untrusted one at the cap; `None` when
    /// every open connection is trusted (the caller closes the newcomer).
    pub(super) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.connections.len() >= self.cap {
            let oldest_untrusted = open
                .connections
                .iter()
                .find(|(_, entry)| !entry.trust.granted())
                .map(|(id, _)| *id)?;
            if let Some(entry) = open.connections.remove(&oldest_untrusted) {
                // The connection's task may have ended already; then there is nothing to tell.
                let _ = entry.shed.send(());
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let trust = Trust::default();
        let (shed, shed_rx) = oneshot::channel();
        open.connections.insert(
            id,
            Entry {
                trust: trust.clone(),
                shed,
            },
        );
        Some(Admitted {
            id,
            table: self.clone(),
            trust,
            shed: shed_rx,
        })
    }

    /// Connections open now (shed ones no longer count).
    pub(super) fn len(&self) -> usize {
        self.lock().connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_untrusted_connection_is_shed() {
        let table = ConnectionTable::new(3);
        let mut first = table.admit().unwrap();
        let mut second = table.admit().unwrap();
        let mut third = table.admit().unwrap();
        first.trust.grant();
        let fourth = table.admit().unwrap();
        assert_eq!(table.len(), 3);
        assert!(
            first.shed.try_recv().is_err(),
            "a trusted connection is kept"
        );
        assert!(
            second.shed.try_recv().is_ok(),
            "the oldest untrusted one is shed"
        );
        assert!(third.shed.try_recv().is_err());
        drop(second);
        assert_eq!(
            table.len(),
            3,
            "a shed connection's slot was already given away"
        );
        drop(fourth);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn when_every_connection_is_trusted_the_newcomer_is_refused() {
        let table = ConnectionTable::new(2);
        let held: Vec<_> = (0..2).map(|_| table.admit().unwrap()).collect();
        held.iter().for_each(|a| a.trust.grant());
        assert!(table.admit().is_none());
        assert_eq!(table.len(), 2);
        drop(held);
        assert_eq!(table.len(), 0);
        assert!(table.admit().is_some());
    }

    #[test]
    fn ten_thousand_strangers_never_hold_more_than_the_cap() {
        let table = ConnectionTable::new(16);
        let mut held = Vec::new();
        for _ in 0..10_000 {
            held.push(table.admit().unwrap());
            assert!(table.len() <= 16);
        }
        let shed = held
            .iter_mut()
            .filter_map(|a| a.shed.try_recv().ok())
            .count();
        assert_eq!(shed, 10_000 - 16);
    }
}
