//! What one caller may cost the daemon on the socket: how many connections may be open (in all,
//! for refused uids together, and per uid), how long a connection may sit with no call in
//! flight, and how often one uid may put the same warning in the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Open connections on the socket in all; beyond it the newest connection is closed at accept,
/// so the daemon keeps descriptors for the endpoint and its upstream connections.
pub const MAX_CONNECTIONS: usize = 256;

/// Open connections of all refused uids together: they only ever get one `PERMISSION_DENIED`,
/// and must not take the room allowed callers need.
pub const MAX_REFUSED_CONNECTIONS: usize = 32;

/// Open connections of one uid other than root (root could stop the daemon anyway, and a burst
/// of root's one-call-per-connection clients must not be turned away).
pub const MAX_CONNECTIONS_PER_UID: usize = 32;

/// A connection with no call in flight is closed after this long; the thin clients open one
/// connection per call, so only a caller that holds connections open ever meets it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One uid gets at most one line per warning in this window; the next line counts the ones
/// left out.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Uids a [`LogLimiter`] remembers before it forgets those whose window has passed.
const LOG_LIMITER_UIDS: usize = 1024;

/// The socket's limits; [`SocketLimits::default`] is what the daemon runs with.
#[derive(Clone, Copy, Debug)]
pub struct SocketLimits {
    pub connections: usize,
    pub refused_connections: usize,
    pub per_uid: usize,
    pub idle_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            connections: MAX_CONNECTIONS,
            refused_connections: MAX_REFUSED_CONNECTIONS,
            per_uid: MAX_CONNECTIONS_PER_UID,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    refused: usize,
    by_uid: HashMap<u32, usize>,
}

/// The connections open on the socket, counted against [`SocketLimits`].
#[derive(Clone)]
pub struct ConnectionTable {
    limits: SocketLimits,
    open: Arc<Mutex<Open>>,
}

impl ConnectionTable {
    pub fn new(limits: SocketLimits) -> Self {
        Self {
            limits,
            open: Arc::default(),
        }
    }

    pub fn limits(&self) -> SocketLimits {
        self.limits
    }

    /// A slot for a new connection of `uid`, or `None` when it would pass a cap.
    pub fn admit(&self, uid: u32, refused: bool) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let of_uid = open.by_uid.get(&uid).copied().unwrap_or(0);
        if open.total >= self.limits.connections
            || (refused && open.refused >= self.limits.refused_connections)
            || (uid != 0 && of_uid >= self.limits.per_uid)
        {
            return None;
        }
        open.total += 1;
        open.refused += usize::from(refused);
        open.by_uid.insert(uid, of_uid + 1);
        Some(Slot {
            open: self.open.clone(),
            uid,
            refused,
        })
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// One open connection's place in the [`ConnectionTable`], given back when dropped.
pub struct Slot {
    open: Arc<Mutex<Open>>,
    uid: u32,
    refused: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if self.refused {
            open.refused = open.refused.saturating_sub(1);
        }
        if let Some(n) = open.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Lets one warning through per uid per [`LOG_WINDOW`], counting the ones it holds back.
#[derive(Default)]
pub struct LogLimiter {
    /// By uid: when its last line was written, and how many were held back since.
    last: HashMap<u32, (Instant, u64)>,
}

impl LogLimiter {
    /// `Some(held_back)` when a line for `uid` may be written at `now` (with how many were
    /// held back since the last one), `None` when it is held back.
    pub fn admit(&mut self, uid: u32, now: Instant) -> Option<u64> {
        if let Some((since, held_back)) = self.last.get_mut(&uid) {
            if now.saturating_duration_since(*since) < LOG_WINDOW {
                *held_back += 1;
                return None;
            }
            let counted = *held_back;
            *since = now;
            *held_back = 0;
            return Some(counted);
        }
        if self.last.len() >= LOG_LIMITER_UIDS {
            // Bounded whatever uids connect: forget the ones whose window has passed.
            self.last
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < LOG_WINDOW);
        }
        self.last.insert(uid, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, refused: usize, per_uid: usize) -> SocketLimits {
        SocketLimits {
            connections,
            refused_connections: refused,
            per_uid,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    #[test]
    fn a_uid_flooding_the_socket_is_held_to_its_own_cap_and_frees_it_on_close() {
        let table = ConnectionTable::new(limits(10, 10, 3));
        let held: Vec<_> = (0..3).map(|_| table.admit(1000, false).unwrap()).collect();
        assert!(
            table.admit(1000, false).is_none(),
            "the newest beyond the cap"
        );
        assert!(
            table.admit(1001, false).is_some(),
            "another uid still gets in"
        );
        assert!(
            (0..5).all(|_| table.admit(0, false).is_some()),
            "root has no own cap"
        );
        drop(held);
        assert!(table.admit(1000, false).is_some());
    }

    #[test]
    fn refused_uids_together_cannot_take_the_room_of_allowed_callers() {
        let table = ConnectionTable::new(limits(10, 2, 5));
        let _held = [table.admit(7, true).unwrap(), table.admit(8, true).unwrap()];
        assert!(table.admit(9, true).is_none());
        let allowed = table.admit(1000, false);
        assert!(allowed.is_some());
        assert_eq!(table.open(), 3);
    }

    #[test]
    fn a_flood_of_refusals_from_one_uid_logs_one_line_per_window_with_a_count() {
        let mut log = LogLimiter::default();
        let start = Instant::now();
        assert_eq!(log.admit(65534, start), Some(0));
        let written = (1..400)
            .filter(|i| {
                log.admit(65534, start + Duration::from_millis(*i))
                    .is_some()
            })
            .count();
        assert_eq!(written, 0);
        assert_eq!(
            log.admit(4242, start),
            Some(0),
            "another uid has its own line"
        );
        assert_eq!(log.admit(65534, start + LOG_WINDOW), Some(399));
    }

    #[test]
    fn the_log_limiter_stays_bounded_whatever_uids_connect() {
        let mut log = LogLimiter::default();
        let start = Instant::now();
        for uid in 0..5000 {
            log.admit(uid, start + LOG_WINDOW * (uid / 1000));
        }
        assert!(
            log.last.len() <= LOG_LIMITER_UIDS + 1000,
            "{}",
            log.last.len()
        );
    }
}
