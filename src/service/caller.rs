//! One accepted connection as ttrpc sees it, and when it ends. Reads end (EOF, so ttrpc closes
//! the connection) when:
//! - an allowed caller's uid is no longer in the daemon's `allowed_uids` (checked before every
//!   read), so after a reload that drops it its next call is never answered;
//! - a refused caller has been answered once (its `PERMISSION_DENIED`);
//! - no call has been in flight for the idle timeout (bytes of a call not yet whole do not count).
//!
//! Calls are followed by counting whole ttrpc frames: requests read, responses written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};

use super::limits::Slot;
use crate::daemon::{bump, Daemon};

/// A ttrpc frame header: payload length (u32, big endian), stream id (u32), type, flags.
const FRAME_HEADER: usize = 10;
const FRAME_TYPE: usize = 8;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

/// Follows the ttrpc frames of one direction of a connection to count the whole frames of one
/// type. ttrpc reads (or discards) every payload in full, so the count never loses step.
#[derive(Default)]
struct Frames {
    header: [u8; FRAME_HEADER],
    have: usize,
    payload_left: usize,
}

impl Frames {
    /// Takes `bytes` that went through; returns how many frames of type `kind` they completed.
    fn feed(&mut self, mut bytes: &[u8], kind: u8) -> u32 {
        let mut completed = 0u32;
        while !bytes.is_empty() {
            if self.have < FRAME_HEADER {
                let take = (FRAME_HEADER - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < FRAME_HEADER {
                    break;
                }
                let [a, b, c, d, ..] = self.header;
                self.payload_left =
                    usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
            } else {
                let take = self.payload_left.min(bytes.len());
                self.payload_left -= take;
                bytes = &bytes[take..];
            }
            if self.payload_left == 0 {
                completed += u32::from(self.header[FRAME_TYPE] == kind);
                self.have = 0;
            }
        }
        completed
    }
}

/// Whose connection it is.
pub enum Gate {
    /// Allowed when it connected; re-checked against this daemon before every read.
    Allowed(Arc<Daemon>),
    /// Not allowed: served by `RefusedCaller`, closed once answered.
    Refused,
}

/// An accepted connection, wrapped so it ends on the rules in this module's doc.
pub struct Caller {
    stream: UnixStream,
    uid: u32,
    gate: Gate,
    /// Set once the connection is to end: every later read is EOF.
    ended: bool,
    requests: Frames,
    responses: Frames,
    in_flight: u32,
    idle_timeout: Duration,
    /// Runs while no call is in flight; restarts when the last call in flight is answered.
    idle: Pin<Box<Sleep>>,
    /// The read side's task, woken when a write changes whether reads should end.
    reader: Option<Waker>,
    _slot: Slot,
}

impl Caller {
    pub fn new(
        stream: UnixStream,
        uid: u32,
        gate: Gate,
        slot: Slot,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            stream,
            uid,
            gate,
            ended: false,
            requests: Frames::default(),
            responses: Frames::default(),
            in_flight: 0,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            reader: None,
            _slot: slot,
        }
    }

    fn still_allowed(&mut self) -> bool {
        let Gate::Allowed(daemon) = &self.gate else {
            return true;
        };
        if daemon.allows(self.uid) {
            return true;
        }
        bump(&daemon.counters.refused_callers);
        tracing::warn!(
            uid = self.uid,
            "closing a connection whose uid is no longer in allowed_uids"
        );
        false
    }

    /// Whether the idle timeout has run out with no call in flight (registering the wake-up
    /// otherwise).
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.in_flight == 0 && self.idle.as_mut().poll(cx).is_ready()
    }

    fn remember_reader(&mut self, cx: &Context<'_>) {
        if !self
            .reader
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.reader = Some(cx.waker().clone());
        }
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }
}

impl AsyncRead for Caller {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ended || !this.still_allowed() || this.idled_out(cx) {
            this.ended = true;
            // Nothing read: end of stream.
            return Poll::Ready(Ok(()));
        }
        this.remember_reader(cx);
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let calls = this.requests.feed(&buf.filled()[before..], REQUEST);
            this.in_flight = this.in_flight.saturating_add(calls);
        }
        polled
    }
}

impl AsyncWrite for Caller {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            let answered = this
                .responses
                .feed(&buf[..written.min(buf.len())], RESPONSE);
            if answered > 0 {
                this.in_flight = this.in_flight.saturating_sub(answered);
                if matches!(this.gate, Gate::Refused) {
                    // Its one answer is in the socket's buffer: the client still reads it.
                    this.ended = true;
                }
                if this.in_flight == 0 {
                    let deadline = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                }
                // The reader must re-arm the idle clock, or see the end.
                this.wake_reader();
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&[kind, 0]);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frames_are_counted_whole_however_the_bytes_are_split() {
        let mut wire = frame(REQUEST, b"first call");
        wire.extend(frame(3, b"data"));
        wire.extend(frame(REQUEST, b""));
        wire.extend(frame(REQUEST, &[7; 300]));
        for chunk in [1, 3, 10, 11, 64, wire.len()] {
            let mut frames = Frames::default();
            let counted: u32 = wire.chunks(chunk).map(|c| frames.feed(c, REQUEST)).sum();
            assert_eq!(counted, 3, "chunks of {chunk}");
        }
        let mut frames = Frames::default();
        assert_eq!(frames.feed(&wire[..wire.len() - 1], REQUEST), 2);
        assert_eq!(frames.feed(&wire[wire.len() - 1..], REQUEST), 1);
    }
}
