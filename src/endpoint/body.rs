//! The upstream body on its way to the client: streamed chunk by chunk (never buffered whole),
//! counted, and for content addressed by digest, verified as it passes.
//!
//! Failing the body makes hyper abort the connection, so the client sees a broken transfer.
//! To make that true at the very end too, a verified body holds back its latest chunk until
//! the upstream body has ended and the digest and length check out: the client can never
//! have read every byte of a body that turns out to be wrong.
//!
//! An upstream that stalls (no frame for the idle timeout while the client waits for one)
//! fails the body the same way: containerd sees a broken transfer and retries, never a hang.
//! The clock runs only while the client is waiting on the upstream, so a slow reader never
//! trips it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use super::route::Digest;
use crate::metrics::Metrics;
use crate::upstream::{BoxError, UpstreamBody};

/// Why a streamed body was cut off; the client only sees the connection abort.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body failed: {0}")]
    Upstream(BoxError),
    #[error("upstream sent {received} bytes, Content-Length said {expected}")]
    Length { expected: u64, received: u64 },
    #[error("content does not match its digest {expected}: it hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("upstream body stalled: no data for {0:?}")]
    Idle(Duration),
}

/// What a body is checked against at its end.
pub struct Expectations {
    /// The declared `Content-Length`, for a body that must have it all.
    pub length: Option<u64>,
    /// The digest of a full (200) GET of content addressed by digest.
    pub digest: Option<Digest>,
}

/// Where streamed bytes are counted, and what the log calls this transfer.
pub struct Tally {
    pub metrics: Arc<Metrics>,
    pub registry: String,
    /// `registry/v2/<name>/<kind>/<ref>`, for log lines.
    pub what: String,
}

pub struct StreamedBody {
    inner: UpstreamBody,
    tally: Tally,
    expected_length: Option<u64>,
    verifier: Option<(Digest, ring::digest::Context)>,
    received: u64,
    /// The chunk a verified body has not released yet.
    held: Option<Bytes>,
    finished: bool,
    idle_timeout: Duration,
    /// The deadline for the upstream's next frame, armed while the client waits for it.
    idle: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl StreamedBody {
    /// `idle_timeout` bounds how long the upstream may leave a waiting client without a frame.
    pub fn new(
        inner: UpstreamBody,
        tally: Tally,
        expectations: Expectations,
        idle_timeout: Duration,
    ) -> Self {
        let verifier = expectations.digest.map(|digest| {
            let context = ring::digest::Context::new(digest.algorithm.ring());
            (digest, context)
        });
        Self {
            inner,
            tally,
            expected_length: expectations.length,
            verifier,
            received: 0,
            held: None,
            finished: false,
            idle_timeout,
            idle: None,
            waiting: false,
        }
    }

    /// The upstream has nothing yet: start the idle clock if it is not running, and tell
    /// whether it ran out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.idle_timeout;
        if !self.waiting {
            self.waiting = true;
            match self.idle.as_mut() {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.idle
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    /// Takes in one upstream chunk; returns what may go to the client now.
    fn accept(&mut self, chunk: Bytes) -> Result<Option<Bytes>, BodyError> {
        self.received += chunk.len() as u64;
        if let Some(expected) = self.expected_length.filter(|&n| self.received > n) {
            return Err(BodyError::Length {
                expected,
                received: self.received,
            });
        }
        let Some((_, context)) = self.verifier.as_mut() else {
            return Ok(Some(chunk));
        };
        context.update(&chunk);
        if chunk.is_empty() {
            return Ok(None);
        }
        Ok(self.held.replace(chunk))
    }

    /// The upstream body ended: everything must check out before the last chunk goes.
    fn finish(&mut self) -> Result<Option<Bytes>, BodyError> {
        if let Some(expected) = self.expected_length.filter(|&n| self.received != n) {
            return Err(BodyError::Length {
                expected,
                received: self.received,
            });
        }
        if let Some((digest, context)) = self.verifier.take() {
            let actual = crate::hex::lower_hex(context.finish().as_ref());
            if actual != digest.hex {
                return Err(BodyError::DigestMismatch {
                    expected: digest.to_string(),
                    actual: format!("{}:{actual}", digest.algorithm.name()),
                });
            }
        }
        Ok(self.held.take())
    }

    fn release(&mut self, chunk: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.tally
            .metrics
            .bytes_streamed(&self.tally.registry, chunk.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        self.held = None;
        tracing::warn!(
            content = %self.tally.what,
            error = %error,
            "aborting the client's transfer"
        );
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(polled) => polled,
                Poll::Pending if this.stalled(cx) => {
                    return this.fail(BodyError::Idle(this.idle_timeout))
                }
                Poll::Pending => return Poll::Pending,
            };
            this.waiting = false;
            let outcome = match polled {
                // Trailers are not forwarded: registries send none.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => this.accept(chunk),
                    Err(_) => Ok(None),
                },
                Some(Err(error)) => Err(BodyError::Upstream(error)),
                None => {
                    let last = this.finish();
                    this.finished = last.is_ok();
                    last
                }
            };
            match outcome {
                Ok(Some(chunk)) => return this.release(chunk),
                Ok(None) => continue,
                Err(error) => return this.fail(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;
    use crate::endpoint::route::DigestAlgorithm;

    /// These items in order, each after one `Pending`, as a network read would.
    struct Items(VecDeque<Result<Bytes, BoxError>>, bool);

    impl Body for Items {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if !std::mem::replace(&mut self.1, true) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.1 = false;
            Poll::Ready(self.0.pop_front().map(|item| item.map(Frame::data)))
        }
    }

    fn digest_of(content: &[u8]) -> Digest {
        let hash = ring::digest::digest(&ring::digest::SHA256, content);
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: crate::hex::lower_hex(hash.as_ref()),
        }
    }

    /// Streams `chunks` through a [`StreamedBody`]; returns what the client got before the
    /// end or the error, and the error if any.
    async fn stream(
        chunks: &[&'static [u8]],
        upstream_error: bool,
        expectations: Expectations,
    ) -> (Vec<Bytes>, Option<String>, Arc<Metrics>) {
        let mut items: VecDeque<_> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        if upstream_error {
            items.push_back(Err("reset".into()));
        }
        let metrics = Arc::new(Metrics::new());
        metrics.label_registries([crate::identity::Scope::parse("r.test").unwrap()]);
        let tally = Tally {
            metrics: metrics.clone(),
            registry: "r.test".into(),
            what: "r.test/app blob".into(),
        };
        let mut body = StreamedBody::new(Items(items, false).boxed(), tally, expectations, IDLE);
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received.push(frame.into_data().unwrap()),
                Err(e) => return (received, Some(e.to_string()), metrics),
            }
        }
        (received, None, metrics)
    }

    const IDLE: Duration = Duration::from_secs(60);

    fn tally() -> Tally {
        Tally {
            metrics: Arc::new(Metrics::new()),
            registry: "r.test".into(),
            what: "r.test/app blob".into(),
        }
    }

    /// One chunk, then nothing ever again: an upstream that stalls mid-body.
    struct Stalls(Option<Bytes>);

    impl Body for Stalls {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn an_upstream_that_stalls_mid_body_is_cut_off_after_the_idle_timeout() {
        let idle = Duration::from_millis(50);
        let inner = Stalls(Some(Bytes::from_static(b"hello "))).boxed();
        let mut body = StreamedBody::new(inner, tally(), expect(Some(11), None), idle);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), &b"hello "[..]);
        let error = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stall was cut off")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(error.contains("stalled: no data for 50ms"), "{error}");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_slow_reader_does_not_count_as_a_stalled_upstream() {
        let items = [&b"hello "[..], &b"world"[..]].map(|c| Ok(Bytes::copy_from_slice(c)));
        let mut body = StreamedBody::new(
            Items(items.into_iter().collect(), false).boxed(),
            tally(),
            expect(Some(11), None),
            Duration::from_millis(20),
        );
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            got.push(frame.unwrap().into_data().unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got.concat(), b"hello world");
    }

    fn expect(length: Option<u64>, digest: Option<Digest>) -> Expectations {
        Expectations { length, digest }
    }

    #[tokio::test]
    async fn a_matching_body_passes_whole_and_is_counted() {
        let digest = digest_of(b"hello world");
        let (got, error, metrics) = stream(
            &[b"hello ", b"world"],
            false,
            expect(Some(11), Some(digest)),
        )
        .await;
        assert_eq!(error, None);
        assert_eq!(got.concat(), b"hello world");
        assert!(metrics
            .render()
            .contains(r#"credgate_bytes_streamed_total{registry="r.test"} 11"#));
    }

    #[tokio::test]
    async fn a_mismatch_fails_before_the_last_chunk_is_released() {
        let digest = digest_of(b"hello world");
        let (got, error, _) = stream(
            &[b"hello ", b"w0rld"],
            false,
            expect(Some(11), Some(digest)),
        )
        .await;
        assert_eq!(got.concat(), b"hello ");
        assert!(error.unwrap().contains("does not match its digest"));
    }

    #[tokio::test]
    async fn short_and_long_bodies_fail() {
        let (_, error, _) = stream(&[b"hello"], false, expect(Some(11), None)).await;
        assert!(error
            .unwrap()
            .contains("sent 5 bytes, Content-Length said 11"));
        let (got, error, _) = stream(&[b"hello", b" world!"], false, expect(Some(11), None)).await;
        assert_eq!(got.concat(), b"hello");
        assert!(error.unwrap().contains("sent 12 bytes"));
    }

    #[tokio::test]
    async fn an_upstream_error_is_passed_on_and_unverified_bodies_are_not_held() {
        let (got, error, _) = stream(&[b"hello "], true, expect(None, None)).await;
        assert_eq!(got.concat(), b"hello ");
        assert!(error.unwrap().contains("upstream body failed: reset"));
    }
}
