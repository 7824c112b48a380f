//! Which connections a listener keeps open. A listener holds at most its cap of connections,
//! so callers without the secret can't exhaust credgate's file descriptors. A connection is
//! *trusted* once one of its requests showed the secret ([`Trust::grant`]), and *answering*
//! while a request of its is being answered, body included ([`Activity::begin`]). When a new
//! connection arrives at the cap, room is made by closing, in this order:
//! 1. the oldest trusted connection that is idle between requests. Clients that open a new
//!    connection pool per pull (containerd does) leave idle kept-alive connections behind
//!    faster than the idle timeout closes them, so a busy node reaches the cap with most
//!    connections idle leftovers. Closing one costs its client at most a reconnect: HTTP
//!    clients retry a GET or HEAD whose reused connection closed before the answer (Go's
//!    transport, which containerd uses, does), and the oldest idle connection is the one a
//!    pool reuses last.
//! 2. else the oldest untrusted connection: a caller that only connected, or is still sending
//!    its first head. Idle strangers are shed before containerd's new connection, which sends
//!    its head at once and is the newest.
//!
//! A connection that is answering is never closed to make room: when every open connection
//! is, the newcomer is closed instead. Either way the accept loop accepts and moves on, so it
//! never spins and the kernel's backlog never fills with waiting strangers. What a flood of
//! strangers can do is bounded by the same rules: close idle kept-alive connections (each a
//! reconnect), never a transfer, and never hold a slot a new trusted connection needs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// How many of a connection's requests are being answered; none means the connection is
/// idle between requests, and may be closed to make room ([`ConnectionTable::admit`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Activity(Arc<AtomicUsize>);

impl Activity {
    /// A request of this connection is being answered until the returned guard is dropped,
    /// which the server does once the response's last frame was sent or the response was
    /// abandoned.
    pub(super) fn begin(&self) -> Answering {
        // A count read by the next admission; nothing else is ordered by it.
        self.0.fetch_add(1, Ordering::Relaxed);
        Answering(self.0.clone())
    }

    fn idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

/// One request being answered ([`Activity::begin`]).
#[must_use = "the request counts as answered once this is dropped"]
pub(super) struct Answering(Arc<AtomicUsize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
    activity: Activity,
    shed: oneshot::Sender<()>,
}

/// One admitted connection; dropping it frees its slot.
pub(super) struct Admitted {
    id: u64,
    table: Arc<ConnectionTable>,
    pub trust: Trust,
    pub activity: Activity,
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

    /// Admits a new connection, shedding one at the cap as the module says; `None` when every
    /// open connection is trusted and answering (the caller closes the newcomer).
    pub(super) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.connections.len() >= self.cap {
            let entries = || open.connections.iter();
            let shed = entries()
                .find(|(_, entry)| entry.trust.granted() && entry.activity.idle())
                .or_else(|| entries().find(|(_, entry)| !entry.trust.granted()))
                .map(|(id, _)| *id)?;
            if let Some(entry) = open.connections.remove(&shed) {
                // The connection's task may have ended already; then there is nothing to tell.
                let _ = entry.shed.send(());
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let trust = Trust::default();
        let activity = Activity::default();
        let (shed, shed_rx) = oneshot::channel();
        open.connections.insert(
            id,
            Entry {
                trust: trust.clone(),
                activity: activity.clone(),
                shed,
            },
        );
        Some(Admitted {
            id,
            table: self.clone(),
            trust,
            activity,
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
    fn at_the_cap_the_oldest_idle_trusted_connection_is_shed_first() {
        let table = ConnectionTable::new(4);
        let mut held: Vec<_> = (0..4).map(|_| table.admit().unwrap()).collect();
        // 0: trusted, answering; 1: untrusted; 2 and 3: trusted, idle.
        held[0].trust.grant();
        let _answering = held[0].activity.begin();
        held[2].trust.grant();
        held[3].trust.grant();
        let newcomer = table
            .admit()
            .expect("an idle trusted connection makes room");
        assert_eq!(table.len(), 4);
        let shed = |held: &mut Vec<Admitted>| -> Vec<bool> {
            held.iter_mut().map(|a| a.shed.try_recv().is_ok()).collect()
        };
        assert_eq!(shed(&mut held), [false, false, true, false]);
        let _next = table.admit().unwrap();
        assert_eq!(shed(&mut held), [false, false, false, true]);
        // No idle trusted one is left: the oldest untrusted goes, before the newer newcomer.
        let _third = table.admit().unwrap();
        assert_eq!(shed(&mut held), [false, true, false, false]);
        let mut newcomer = newcomer;
        assert!(
            newcomer.shed.try_recv().is_err(),
            "the newer newcomer is kept"
        );
        drop(held);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn when_every_connection_is_trusted_and_answering_the_newcomer_is_refused() {
        let table = ConnectionTable::new(2);
        let held: Vec<_> = (0..2).map(|_| table.admit().unwrap()).collect();
        held.iter().for_each(|a| a.trust.grant());
        let answering: Vec<_> = held.iter().map(|a| a.activity.begin()).collect();
        assert!(table.admit().is_none());
        assert_eq!(table.len(), 2);
        // Once an answer is done, its connection is idle and makes room.
        drop(answering);
        let mut held = held;
        let _newcomer = table.admit().expect("an idle connection makes room");
        assert!(held[0].shed.try_recv().is_ok());
        assert!(held[1].shed.try_recv().is_err());
        drop(held);
        assert_eq!(table.len(), 1);
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
