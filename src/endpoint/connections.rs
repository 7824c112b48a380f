//! Which connections a listener keeps open. A listener holds at most its cap of connections,
//! so callers without the secret can't exhaust credgate's file descriptors. A connection is
//! *trusted* once one of its requests showed the secret ([`Trust::grant`]), and *answering*
//! while a request of its is being answered, body included ([`Activity::begin`]). When a new
//! connection arrives at the cap, room is made by closing, in this order:
//! 1. the oldest untrusted connection open longer than [`GRACE`]: a stranger that only
//!    connected, or is sending its first head slowly. containerd's connection sends its head
//!    at once, so it is trusted long before that.
//! 2. the trusted connection idle between requests for longest. Clients that open a new
//!    connection pool per pull (containerd does) leave idle kept-alive connections behind
//!    faster than the idle timeout closes them, so a busy node reaches the cap with most
//!    connections idle leftovers. It is closed gracefully ([`Shed::Gracefully`]): whatever
//!    of its last answer hyper still buffers is flushed first (for at most
//!    [`super::server`]'s bound), and a request that began as it was chosen is answered in
//!    full before the close. Closing one costs its client a reconnect at most: HTTP
//!    clients retry a GET or HEAD whose reused connection closed before the answer (Go's
//!    transport, which containerd uses, does).
//! 3. the oldest untrusted connection younger than [`GRACE`], so a flood of new strangers
//!    can't make room only among containerd's connections.
//!
//! A connection that is answering is never closed to make room: when every open connection
//! is, the newcomer is closed instead. Either way the accept loop accepts and moves on, so it
//! never spins and the kernel's backlog never fills with waiting strangers. A flood of
//! strangers can cost containerd idle kept-alive connections (reconnects), never a transfer,
//! and never a slot a new trusted connection needs (rules 1 and 3 shed the strangers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a new connection counts as on its way to showing the secret (rule 1 above).
pub(super) const GRACE: Duration = Duration::from_secs(1);

/// A request's connection, found in the request's extensions; the endpoint grants trust
/// once the request carried the secret.
#[derive(Clone, Debug, Default)]
pub struct Trust(Arc<AtomicBool>);

impl Trust {
    /// This connection showed the secret: it is no longer shed to make room.
    pub fn grant(&self) {
        // Release: an admission that sees the trust also sees the request counted as
        // answering (`Activity::begin` ran before this), so it never takes it for idle.
        self.0.store(true, Ordering::Release);
    }

    pub(super) fn granted(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How many of a connection's requests are being answered, and when the last answer ended
/// (a tick of its table's clock); with none answering the connection is idle between
/// requests and may be closed to make room ([`ConnectionTable::admit`]).
#[derive(Clone, Debug)]
pub(super) struct Activity(Arc<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    answering: AtomicUsize,
    idle_since: AtomicU64,
    clock: Arc<AtomicU64>,
}

impl Activity {
    /// A request of this connection is being answered until the returned guard is dropped,
    /// which happens when hyper has taken the response's last frame (it may still be in
    /// hyper's write buffer: a graceful shed flushes it) or abandoned the response.
    pub(super) fn begin(&self) -> Answering {
        self.0.answering.fetch_add(1, Ordering::Relaxed);
        Answering(self.0.clone())
    }

    /// No request of this connection is being answered. Acquire: pairs with the release
    /// in [`Answering`]'s drop, so `idle_since` read after this is the tick that drop stored.
    pub(super) fn idle(&self) -> bool {
        self.0.answering.load(Ordering::Acquire) == 0
    }

    fn idle_since(&self) -> u64 {
        self.0.idle_since.load(Ordering::Relaxed)
    }
}

/// One request being answered ([`Activity::begin`]).
#[must_use = "the request counts as answered once this is dropped"]
pub(super) struct Answering(Arc<ActivityState>);

impl Drop for Answering {
    fn drop(&mut self) {
        let tick = self.0.clock.fetch_add(1, Ordering::Relaxed);
        self.0.idle_since.store(tick, Ordering::Relaxed);
        self.0.answering.fetch_sub(1, Ordering::Release);
    }
}

/// How a shed connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shed {
    /// At once: a stranger's connection.
    Now,
    /// After flushing what hyper buffered of the last answer: a trusted idle connection.
    Gracefully,
}

/// The open connections of one listener.
pub(super) struct ConnectionTable {
    cap: usize,
    open: Mutex<Open>,
    /// Ticks on every answer's end, ordering idle connections by how long they have been.
    clock: Arc<AtomicU64>,
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
    admitted_at: Instant,
    shed: oneshot::Sender<Shed>,
}

/// One admitted connection; dropping it frees its slot.
pub(super) struct Admitted {
    id: u64,
    table: Arc<ConnectionTable>,
    pub trust: Trust,
    pub activity: Activity,
    /// Resolves when the table sheds this connection to make room for a newer one.
    pub shed: oneshot::Receiver<Shed>,
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
            clock: Arc::new(AtomicU64::new(0)),
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
        self.admit_at(Instant::now())
    }

    fn admit_at(self: &Arc<Self>, now: Instant) -> Option<Admitted> {
        let mut open = self.lock();
        if open.connections.len() >= self.cap {
            let (id, how) = Self::to_shed(&open, now)?;
            if let Some(entry) = open.connections.remove(&id) {
                // The connection's task may have ended already; then there is nothing to tell.
                let _ = entry.shed.send(how);
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let trust = Trust::default();
        let activity = Activity(Arc::new(ActivityState {
            answering: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.clock.load(Ordering::Relaxed)),
            clock: self.clock.clone(),
        }));
        let (shed, shed_rx) = oneshot::channel();
        open.connections.insert(
            id,
            Entry {
                trust: trust.clone(),
                activity: activity.clone(),
                admitted_at: now,
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

    /// The connection to close for a newcomer (the module's rules), and how.
    fn to_shed(open: &Open, now: Instant) -> Option<(u64, Shed)> {
        let untrusted = || {
            open.connections
                .iter()
                .filter(|(_, entry)| !entry.trust.granted())
        };
        let lingering =
            untrusted().find(|(_, entry)| now.saturating_duration_since(entry.admitted_at) > GRACE);
        if let Some((id, _)) = lingering {
            return Some((*id, Shed::Now));
        }
        let idle_longest = open
            .connections
            .iter()
            .filter(|(_, entry)| entry.trust.granted() && entry.activity.idle())
            .min_by_key(|(_, entry)| entry.activity.idle_since());
        if let Some((id, _)) = idle_longest {
            return Some((*id, Shed::Gracefully));
        }
        untrusted().next().map(|(id, _)| (*id, Shed::Now))
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
    fn at_the_cap_lingering_strangers_go_first_then_the_longest_idle_then_young_strangers() {
        let table = ConnectionTable::new(5);
        let start = Instant::now();
        let mut held: Vec<_> = (0..5).map(|_| table.admit_at(start).unwrap()).collect();
        // 0: trusted, answering; 1: untrusted; 2, 3, 4: trusted, their answers ended in the
        // order 3, 2, 4.
        for a in [&held[0], &held[2], &held[3], &held[4]] {
            a.trust.grant();
        }
        let _answering = held[0].activity.begin();
        for i in [3, 2, 4] {
            drop(held[i].activity.begin());
        }
        let later = start + GRACE * 2;
        let shed = |held: &mut Vec<Admitted>| -> Vec<Option<Shed>> {
            held.iter_mut().map(|a| a.shed.try_recv().ok()).collect()
        };
        let mut newcomers = vec![table.admit_at(later).unwrap()];
        assert_eq!(shed(&mut held), [None, Some(Shed::Now), None, None, None]);
        for expected in [3, 2, 4] {
            newcomers.push(table.admit_at(later).unwrap());
            let mut want = vec![None; 5];
            want[expected] = Some(Shed::Gracefully);
            assert_eq!(shed(&mut held), want, "idle longest first");
        }
        assert_eq!(table.len(), 5);
        // Only the answering one and the young newcomers are left: the oldest newcomer goes.
        let _last = table.admit_at(later).unwrap();
        assert_eq!(shed(&mut held), [None; 5]);
        assert_eq!(newcomers[0].shed.try_recv().ok(), Some(Shed::Now));
        assert!(newcomers[1..]
            .iter_mut()
            .all(|a| a.shed.try_recv().is_err()));
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
        assert_eq!(held[0].shed.try_recv().ok(), Some(Shed::Gracefully));
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
