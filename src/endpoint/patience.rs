//! How long the gate waits on an upstream before it answers or gives up: how long a streamed
//! body may stall, and what an upstream 429 earns.
//!
//! A 429 passed straight on makes containerd retry at once, several times over, which only
//! deepens the throttling. So the gate honours `Retry-After` itself, within a small budget
//! per request (at most [`Patience::throttle_retries`] retries and
//! [`Patience::throttle_budget`] of waiting), and passes the 429 on, with its `Retry-After`,
//! when the budget is spent or cannot cover the wait asked for. The header is the upstream's
//! word and hostile like the rest: a wait it asks for is never slept beyond the budget, and a
//! value that is not delta-seconds or an HTTP-date (garbage, negative, a date already past)
//! gets [`Patience::throttle_default_wait`].

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::HeaderMap;

/// The gate's waits on an upstream; [`Patience::default`] in production, shorter in tests.
#[derive(Debug, Clone)]
pub struct Patience {
    /// A streamed body that brings no data for this long, while the client waits for it, is
    /// cut off (the client's connection aborts, so containerd retries).
    pub body_idle: Duration,
    /// Most retries after a 429, per request.
    pub throttle_retries: u32,
    /// Most time spent waiting on 429s, per request.
    pub throttle_budget: Duration,
    /// The wait when a 429's `Retry-After` is missing or unusable.
    pub throttle_default_wait: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self {
            body_idle: Duration::from_secs(60),
            throttle_retries: 2,
            throttle_budget: Duration::from_secs(10),
            throttle_default_wait: Duration::from_secs(1),
        }
    }
}

/// What a 429 has cost one request so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttled {
    pub retries: u32,
    pub waited: Duration,
}

impl Patience {
    /// How long to wait before retrying after a 429 with `headers`, or `None` to pass the
    /// 429 on now: the retries are spent, or the wait asked for does not fit in what is left
    /// of the budget (waiting less than asked would only earn another 429).
    pub fn wait_before_retry(
        &self,
        headers: &HeaderMap,
        so_far: Throttled,
        now: SystemTime,
    ) -> Option<Duration> {
        if so_far.retries >= self.throttle_retries {
            return None;
        }
        let wait = retry_after(headers, now).unwrap_or(self.throttle_default_wait);
        let left = self.throttle_budget.saturating_sub(so_far.waited);
        (wait <= left).then_some(wait)
    }
}

/// The wait one `Retry-After` asks for: delta-seconds, or an HTTP-date still to come.
/// `None` when there is none to honour (missing, repeated, garbage, negative, past).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut values = headers.get_all(RETRY_AFTER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is as good as forever: no retry fits it.
        return Some(text.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    at.duration_since(now).ok().filter(|wait| !wait.is_zero())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn asked(values: &[&str]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        }
        retry_after(&headers, now())
    }

    #[test]
    fn retry_after_is_delta_seconds_or_an_http_date() {
        assert_eq!(asked(&["3"]), Some(Duration::from_secs(3)));
        assert_eq!(asked(&[" 0 "]), Some(Duration::ZERO));
        assert_eq!(
            asked(&["Sun, 06 Nov 1994 08:49:42 GMT"]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            asked(&["Sunday, 06-Nov-94 08:49:39 GMT"]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(asked(&["99999999999999999999999999"]), Some(Duration::MAX));
    }

    #[test]
    fn unusable_retry_after_values_are_none() {
        for values in [
            &[][..],
            &["-5"],
            &["1.5"],
            &["soon"],
            &[""],
            &["+3"],
            &["Sun, 06 Nov 1994 08:49:37 GMT"],
            &["Sat, 05 Nov 1994 08:49:37 GMT"],
            &["1", "2"],
        ] {
            assert_eq!(asked(values), None, "{values:?}");
        }
    }

    fn throttled(retry_after: &str, retries: u32, waited: u64) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        let so_far = Throttled {
            retries,
            waited: Duration::from_secs(waited),
        };
        Patience::default().wait_before_retry(&headers, so_far, now())
    }

    #[test]
    fn a_hostile_retry_after_never_buys_more_than_the_budget() {
        assert_eq!(throttled("4", 0, 0), Some(Duration::from_secs(4)));
        assert_eq!(throttled("4", 1, 6), Some(Duration::from_secs(4)));
        // Past the budget, past the retries, or asking for too long: pass the 429 on.
        assert_eq!(throttled("4", 1, 7), None);
        assert_eq!(throttled("1", 2, 0), None);
        assert_eq!(throttled("11", 0, 0), None);
        assert_eq!(throttled("18446744073709551615", 0, 0), None);
        assert_eq!(throttled("99999999999999999999999", 0, 0), None);
        assert_eq!(throttled("Fri, 31 Dec 9999 23:59:59 GMT", 0, 0), None);
        // Garbage and negatives get the default small wait.
        assert_eq!(throttled("-100", 0, 0), Some(Duration::from_secs(1)));
        assert_eq!(throttled("garbage", 0, 0), Some(Duration::from_secs(1)));
        assert_eq!(throttled("garbage", 0, 10), None);
    }
}
