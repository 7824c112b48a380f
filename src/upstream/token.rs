//! Fetching a bearer token from a registry's token endpoint (the distribution token spec, and
//! OAuth2 for identity tokens), with the candidate's credential.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::secret::Secret;

use super::client::{request_error, user_agent, HttpClient, RESPONSE_TIMEOUT};
use super::UpstreamError;

/// Used when the endpoint gives no usable `expires_in` (absent, not a number, zero or
/// negative): the token spec's default, which containerd and docker assume likewise.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The longest a token is believed to live, whatever the endpoint says. The endpoint is
/// hostile input: an `expires_in` of 1e19 would overflow `Instant + Duration`, and a day
/// would keep a revoked token in use. Registries typically issue tokens for 5 to 60
/// minutes; one claiming longer is simply fetched again after an hour.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Most of a token response credgate reads.
const TOKEN_BODY_LIMIT: usize = 1 << 20;
/// Most of a refusal kept to hand back as the upstream's answer.
const REFUSAL_BODY_LIMIT: usize = 16 << 10;
/// The OAuth2 `client_id` credgate names itself with.
const CLIENT_ID: &str = "credgate";

/// Where to ask, for what.
#[derive(Debug, Clone)]
pub struct TokenEndpoint {
    /// Checked already: https, and allowed for this upstream.
    pub realm: Uri,
    pub service: Option<String>,
    /// Space-separated scopes, e.g. `repository:group/app:pull`.
    pub scope: Option<String>,
}

/// How to authenticate to the token endpoint.
#[derive(Debug, Clone)]
pub enum Grant {
    Anonymous,
    /// GET with HTTP Basic.
    Basic {
        username: String,
        password: Secret,
    },
    /// OAuth2 POST `grant_type=refresh_token`, or GET with Basic where POST is not served.
    Refresh {
        username: String,
        token: Secret,
    },
}

/// A token as the endpoint issued it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub value: Secret,
    pub lifetime: Duration,
    /// How long ago it was issued (`issued_at`), as far as the clocks agree.
    pub age: Duration,
}

/// The token endpoint's 4xx answer, kept so it can be handed back as the upstream's answer.
#[derive(Debug, Clone)]
pub struct TokenRefusal {
    pub realm: String,
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {} refused the credential ({})", .0.realm, .0.status)]
    Refused(TokenRefusal),
    #[error(transparent)]
    Failed(UpstreamError),
}

#[cfg(test)]
impl TokenError {
    pub fn refused_for_test(status: u16) -> Self {
        Self::Refused(TokenRefusal {
            realm: "https://auth.test/jwt/auth".into(),
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            body: Bytes::new(),
        })
    }
}

/// What a fetch needs besides the request: the client to send it with, and where to count it.
#[derive(Clone)]
pub struct TokenFetcher {
    pub client: HttpClient,
    pub metrics: Arc<Metrics>,
    /// The registry label for metrics.
    pub registry: String,
}

impl TokenFetcher {
    pub async fn fetch(self, endpoint: TokenEndpoint, grant: Grant) -> Result<Issued, TokenError> {
        let response = match &grant {
            Grant::Anonymous => self.send(&endpoint, get(&endpoint, None)?).await?,
            Grant::Basic { username, password } => {
                let request = get(&endpoint, Some((username, password)))?;
                self.send(&endpoint, request).await?
            }
            Grant::Refresh { username, token } => {
                let response = self.send(&endpoint, oauth_post(&endpoint, token)?).await?;
                if !matches!(
                    response.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) {
                    response
                } else {
                    tracing::debug!(realm = %endpoint.realm, "no OAuth2 POST at the token endpoint; asking with GET and Basic");
                    let request = get(&endpoint, Some((username, token)))?;
                    self.send(&endpoint, request).await?
                }
            }
        };
        issued(&endpoint, response).await
    }

    async fn send(
        &self,
        endpoint: &TokenEndpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, TokenError> {
        self.metrics.token_fetch(&self.registry);
        let realm_host = endpoint.realm.host().unwrap_or_default().to_string();
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| UpstreamError::TimedOut {
                host: realm_host.clone(),
            })
            .and_then(|r| r.map_err(|e| request_error(&realm_host, &e)))
            .map_err(TokenError::Failed)?;
        tracing::debug!(realm = %endpoint.realm, scope = ?endpoint.scope, status = %response.status(), "token endpoint answered");
        Ok(response)
    }
}

fn failed(endpoint: &TokenEndpoint, reason: impl Into<String>) -> TokenError {
    TokenError::Failed(UpstreamError::Token {
        realm: endpoint.realm.to_string(),
        reason: reason.into(),
    })
}

/// `GET realm?service=…&scope=…` (one `scope` per scope), with Basic when given.
fn get(
    endpoint: &TokenEndpoint,
    basic: Option<(&String, &Secret)>,
) -> Result<Request<Full<Bytes>>, TokenError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(service) = &endpoint.service {
        query.append_pair("service", service);
    }
    for scope in endpoint.scope.iter().flat_map(|s| s.split(' ')) {
        query.append_pair("scope", scope);
    }
    let query = query.finish();
    let realm = endpoint.realm.to_string();
    let separator = if realm.contains('?') { '&' } else { '?' };
    let uri = if query.is_empty() {
        realm
    } else {
        format!("{realm}{separator}{query}")
    };
    let mut builder = base_request(Method::GET, &uri);
    if let Some((username, secret)) = basic {
        builder = builder.header(AUTHORIZATION, basic_authorization(username, secret));
    }
    builder
        .body(Full::default())
        .map_err(|e| failed(endpoint, e.to_string()))
}

/// OAuth2 `grant_type=refresh_token` as a form POST.
fn oauth_post(
    endpoint: &TokenEndpoint,
    token: &Secret,
) -> Result<Request<Full<Bytes>>, TokenError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "refresh_token");
    form.append_pair("refresh_token", token.expose());
    form.append_pair("client_id", CLIENT_ID);
    if let Some(service) = &endpoint.service {
        form.append_pair("service", service);
    }
    if let Some(scope) = &endpoint.scope {
        form.append_pair("scope", scope);
    }
    base_request(Method::POST, &endpoint.realm.to_string())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .body(Full::new(Bytes::from(form.finish())))
        .map_err(|e| failed(endpoint, e.to_string()))
}

fn base_request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, user_agent())
}

/// `Basic base64(username:secret)`, marked sensitive (never logged, never HPACK-indexed).
pub fn basic_authorization(username: &str, secret: &Secret) -> HeaderValue {
    let encoded = STANDARD.encode(format!("{username}:{}", secret.expose()));
    sensitive(&format!("Basic {encoded}"))
}

/// `Bearer <token>`, marked sensitive.
pub fn bearer_authorization(token: &Secret) -> HeaderValue {
    sensitive(&format!("Bearer {}", token.expose()))
}

fn sensitive(value: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(value)
        .unwrap_or_else(|_| HeaderValue::from_static("Invalid credential"));
    value.set_sensitive(true);
    value
}

/// 200 → the token; 4xx → a refusal (the candidate is rejected); anything else fails.
async fn issued(
    endpoint: &TokenEndpoint,
    response: http::Response<Incoming>,
) -> Result<Issued, TokenError> {
    let status = response.status();
    if status.is_client_error() {
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = read_limited(response.into_body(), REFUSAL_BODY_LIMIT)
            .await
            .unwrap_or_default();
        return Err(TokenError::Refused(TokenRefusal {
            realm: endpoint.realm.to_string(),
            status,
            content_type,
            body,
        }));
    }
    if status != StatusCode::OK {
        return Err(failed(endpoint, format!("answered {status}")));
    }
    let body = read_limited(response.into_body(), TOKEN_BODY_LIMIT)
        .await
        .map_err(|e| failed(endpoint, e))?;
    parse_token(&body, SystemTime::now()).map_err(|e| failed(endpoint, e))
}

async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes, String> {
    let collected = tokio::time::timeout(RESPONSE_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| format!("body not read within {RESPONSE_TIMEOUT:?}"))?
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(collected.to_bytes())
}

/// `{"token" | "access_token", "expires_in"?, "issued_at"?}`. The error never quotes the body.
pub fn parse_token(body: &[u8], now: SystemTime) -> Result<Issued, String> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    let text = |name: &str| {
        json.get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let value = text("token")
        .or_else(|| text("access_token"))
        .ok_or("token response has neither token nor access_token")?;
    let lifetime = lifetime_of(json.get("expires_in"));
    let age = text("issued_at")
        .and_then(parse_rfc3339)
        .and_then(|issued| now.duration_since(issued).ok())
        // An age past the lifetime means the clocks disagree; trust expires_in alone then.
        .filter(|age| *age < lifetime)
        .unwrap_or_default();
    Ok(Issued {
        value: Secret::new(value),
        lifetime,
        age,
    })
}

/// `expires_in` as a lifetime: whole seconds, at most [`MAX_LIFETIME`]; anything not a
/// positive number (a string, `null`, `0`, `-5`, `0.5`) is [`DEFAULT_LIFETIME`]. JSON
/// numbers of any size arrive here as finite `f64`s (or `u64`/`i64`), so no cast can panic.
fn lifetime_of(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = expires_in
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    if seconds.is_nan() || seconds < 1.0 {
        return DEFAULT_LIFETIME;
    }
    // The float comparison caps 1e308 and infinity alike before the (saturating) cast.
    Duration::from_secs(seconds.min(MAX_LIFETIME.as_secs_f64()) as u64)
}

/// `2026-11-23T10:00:00Z`, `…T10:00:00.123+01:00`: the RFC 3339 timestamps token endpoints
/// send (`date-time` of section 5.6: a four-digit year, two-digit fields, any number of
/// fraction digits, ignored). Every field is range-checked, days against their month, so
/// no input can overflow; a leap second (`:60`) counts as `:59`. `None` when not RFC 3339
/// or before 1970.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let separator = |at: usize, allowed: &[u8]| b.get(at).filter(|c| allowed.contains(c));
    separator(4, b"-")?;
    separator(7, b"-")?;
    separator(10, b"Tt ")?;
    separator(13, b":")?;
    separator(16, b":")?;
    let (year, month, day) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
    let (hour, minute, second) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    let mut rest = b.get(19..)?;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let count = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 {
            return None;
        }
        rest = fraction.get(count..)?;
    }
    let offset = zone_offset(rest)?;
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return None;
    }
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset;
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// `count` ASCII digits at `at` as a number; `None` if any is not a digit or missing.
fn digits(b: &[u8], at: usize, count: usize) -> Option<i64> {
    let field = b.get(at..at.checked_add(count)?)?;
    field.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

/// Seconds east of UTC of the whole rest of the timestamp: `Z` is 0, `+01:00` is 3600.
fn zone_offset(zone: &[u8]) -> Option<i64> {
    let sign = match zone {
        b"Z" | b"z" => return Some(0),
        [b'+', _, _, b':', _, _] => 1,
        [b'-', _, _, b':', _, _] => -1,
        _ => return None,
    };
    let (hours, minutes) = (digits(zone, 1, 2)?, digits(zone, 4, 2)?);
    (hours <= 23 && minutes <= 59).then_some(sign * (hours * 3600 + minutes * 60))
}

/// Days in `month` of `year`, February 29 only in Gregorian leap years.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm), for
/// the four-digit years and valid months [`parse_rfc3339`] passes.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::super::hostile::Noise;
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(at(0)));
        assert_eq!(
            parse_rfc3339("2026-11-23T10:00:00Z"),
            Some(at(1_795_428_000))
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T11:00:00.123456789+01:00"),
            Some(at(1_795_428_000))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00-00:30"),
            Some(at(951_784_200))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("2026-11-23t10:00:00z"),
            Some(at(1_795_428_000))
        );
        assert_eq!(
            parse_rfc3339("2026-11-23 10:00:00Z"),
            Some(at(1_795_428_000))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(at(1_709_164_800))
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T10:00:00+23:59"),
            Some(at(1_795_428_000 - 86_340))
        );
    }

    #[test]
    fn out_of_range_timestamps_are_refused_without_overflow() {
        let long_fraction = format!("2026-11-23T10:00:00.{}Z", "9".repeat(100_000));
        assert_eq!(parse_rfc3339(&long_fraction), Some(at(1_795_428_000)));
        // A leap second counts as the second before it.
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z"),
            parse_rfc3339("2016-12-31T23:59:59Z")
        );
        for hostile in [
            "9999999999-99-99T99:99:99Z",
            "99999999999999999999-01-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T23:60:00Z",
            "2026-11-23T23:59:61Z",
            "2026-11-23T10:00:00+24:00",
            "2026-11-23T10:00:00+01:60",
            "2026-11-23T10:00:00+0100",
            "2026-11-23T10:00:00+01",
            "2026-11-23T10:00:00+99999999999:00",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00.5",
            "2026-11-23T10:00:00ZZ",
            "2026-11-23T10:00:00Z ",
            "+2026-11-23T10:00:00Z",
            "2026-+1-23T10:00:00Z",
            "2026-11-23T-1:00:00Z",
            "2026-1-23T10:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "0000-01-01T00:00:00Z",
            "２０２６-11-23T10:00:00Z",
            "2026-11-23T10:00:00\u{e9}",
            "2026-11-23T",
            "",
        ] {
            assert_eq!(parse_rfc3339(hostile), None, "{hostile}");
        }
        let latest = parse_rfc3339("9999-12-31T23:59:60.999-23:59").unwrap();
        assert!(latest > at(253_402_300_799));
    }

    #[test]
    fn huge_or_hostile_expires_in_is_clamped() {
        let now = at(1_795_428_100);
        let lifetime_of = |expires_in: &str| {
            let body = format!(r#"{{"token":"a","expires_in":{expires_in}}}"#);
            parse_token(body.as_bytes(), now).map(|t| t.lifetime)
        };
        for huge in [
            "1e19",
            "1e20",
            "1.7976931348623157e308",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999999",
            "86400",
            "3600.5",
        ] {
            assert_eq!(lifetime_of(huge), Ok(MAX_LIFETIME), "{huge}");
        }
        for unusable in [
            "-1", "-1e19", "0", "-0", "0.5", "1e-300", "null", "true", r#""300""#, "[]", "{}",
        ] {
            assert_eq!(lifetime_of(unusable), Ok(DEFAULT_LIFETIME), "{unusable}");
        }
        assert_eq!(lifetime_of("300.9"), Ok(Duration::from_secs(300)));
        assert_eq!(lifetime_of("1"), Ok(Duration::from_secs(1)));
        // Beyond f64 the JSON parser refuses the body: an error, not a panic.
        assert!(lifetime_of("1e400").is_err());
    }

    #[test]
    fn random_token_responses_never_panic_the_parser() {
        let fragments = [
            r#"{"token":"#,
            r#"{"access_token":"#,
            r#""expires_in":"#,
            r#""issued_at":"#,
            r#""2026-11-23T10:00:00Z""#,
            r#""9999999999-99-99T99:99:99.999999Z""#,
            "1e19",
            "-1e400",
            "18446744073709551615",
            "NaN",
            "\\u0000",
            "\\ud800",
            r#""x""#,
            ",",
            ":",
            "}",
            "[",
            "-",
            "T",
            "+23:59",
            "0",
            ".",
        ];
        let now = at(1_795_428_100);
        let mut noise = Noise::new(0x5eed_70c3);
        for _ in 0..20_000 {
            let body = noise.input(12, &fragments);
            if let Ok(issued) = parse_token(&body, now) {
                assert!(issued.lifetime <= MAX_LIFETIME);
                assert!(issued.age < issued.lifetime || issued.age.is_zero());
            }
            let _ = parse_rfc3339(&String::from_utf8_lossy(&body));
        }
        let mut noise = Noise::new(0x7153_3339);
        let pieces = ["0", "1", "2", "9", "99", "-", ":", "T", ".", "Z", "+", "60"];
        for _ in 0..20_000 {
            let _ = parse_rfc3339(&String::from_utf8_lossy(&noise.input(24, &pieces)));
        }
    }

    #[test]
    fn token_responses() {
        let now = at(1_795_428_100);
        let t = parse_token(
            br#"{"token":"abc","expires_in":300,"issued_at":"2026-11-23T10:00:00Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.value.expose(), "abc");
        assert_eq!(t.lifetime, Duration::from_secs(300));
        assert_eq!(t.age, Duration::from_secs(100));

        let t = parse_token(br#"{"token":"","access_token":"xyz"}"#, now).unwrap();
        assert_eq!(t.value.expose(), "xyz");
        assert_eq!(t.lifetime, DEFAULT_LIFETIME);
        assert_eq!(t.age, Duration::ZERO);

        // issued_at in the future or long ago (clock skew) is ignored.
        for issued in ["2026-11-23T11:00:00Z", "2020-01-01T00:00:00Z"] {
            let body = format!(r#"{{"token":"a","expires_in":300,"issued_at":"{issued}"}}"#);
            assert_eq!(
                parse_token(body.as_bytes(), now).unwrap().age,
                Duration::ZERO
            );
        }

        let error = parse_token(br#"{"secret-looking":"hunter2"}"#, now).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(parse_token(b"hunter2", now)
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn get_requests_carry_service_and_each_scope() {
        let endpoint = TokenEndpoint {
            realm: "https://auth.test/jwt/auth?x=1".parse().unwrap(),
            service: Some("container registry".into()),
            scope: Some("repository:a/b:pull repository:c:pull".into()),
        };
        let request = get(&endpoint, Some((&"deploy".into(), &Secret::new("pw")))).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "https://auth.test/jwt/auth?x=1&service=container+registry&scope=repository%3Aa%2Fb%3Apull&scope=repository%3Ac%3Apull"
        );
        let auth = request.headers().get(AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth, &format!("Basic {}", STANDARD.encode("deploy:pw")));
        assert!(!format!("{auth:?}").contains(&STANDARD.encode("deploy:pw")));
    }

    #[tokio::test]
    async fn oauth_posts_are_forms_with_client_id() {
        let endpoint = TokenEndpoint {
            realm: "https://auth.test/jwt/auth".parse().unwrap(),
            service: Some("reg".into()),
            scope: Some("repository:a:pull".into()),
        };
        let request = oauth_post(&endpoint, &Secret::new("idt")).unwrap();
        assert_eq!(request.method(), Method::POST);
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=idt&client_id=credgate&service=reg&scope=repository%3Aa%3Apull"
        );
    }
}
