//! `WWW-Authenticate` challenges (RFC 7235): what a registry wants before it answers, and
//! the last one each registry sent, in a map bounded against registries named by callers.

use std::sync::Mutex;

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;

use super::lru::Lru;

/// Most registries whose last challenge is kept. Anyone who can name an image picks the
/// registry, so the map would grow with every made-up host; a node pulls from a few dozen,
/// and one whose challenge was evicted only earns a 401 before its next token.
pub const REMEMBERED_REGISTRIES: usize = 1_024;
/// A challenge whose realm and service are longer than this together is answered but not
/// kept, so the map stays near a few MiB whatever the headers hold.
const MAX_REMEMBERED_BYTES: usize = 2 << 10;

/// One challenge: its scheme and parameters (names lower-cased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: AuthScheme,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthScheme {
    Basic,
    Bearer,
    Other(String),
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Same scheme, realm and service: a token fetched for one serves the other.
    pub fn same_authority(&self, other: &Challenge) -> bool {
        self.scheme == other.scheme
            && self.param("realm") == other.param("realm")
            && self.param("service") == other.param("service")
    }
}

/// The last Basic or Bearer challenge (scheme, realm, service) each registry sent, keyed by
/// its origin (the registry's `host[:port]`, or a mirror's `scheme://host:port`, so plain
/// http never shares an entry with https), so the next request is authorized up front
/// instead of first earning a 401. The scope is not kept: it belongs to the request that was
/// challenged. At most [`REMEMBERED_REGISTRIES`], the least recently used forgotten first.
pub struct Challenges(Mutex<Lru<String, Challenge>>);

impl Default for Challenges {
    fn default() -> Self {
        Self(Mutex::new(Lru::new(REMEMBERED_REGISTRIES)))
    }
}

impl Challenges {
    pub fn get(&self, origin: &str) -> Option<Challenge> {
        self.lock().get(origin).cloned()
    }

    pub fn remember(&self, origin: &str, challenge: &Challenge) {
        if matches!(challenge.scheme, AuthScheme::Other(_)) {
            return;
        }
        let kept = Challenge {
            scheme: challenge.scheme.clone(),
            params: challenge
                .params
                .iter()
                .filter(|(k, _)| k == "realm" || k == "service")
                .cloned()
                .collect(),
        };
        let size = kept.params.iter().fold(0usize, |n, (k, v)| {
            n.saturating_add(k.len()).saturating_add(v.len())
        });
        let mut map = self.lock();
        if size > MAX_REMEMBERED_BYTES {
            // An older, smaller one would be wrong now; without one the next request asks.
            map.remove(origin);
            return;
        }
        map.insert(origin.to_string(), kept);
    }

    /// Registries with a challenge kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<String, Challenge>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The challenge credgate answers among all `WWW-Authenticate` headers: Bearer if offered,
/// else Basic; `None` when there is neither.
pub fn preferred(headers: &HeaderMap) -> Option<Challenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse)
        .collect();
    let pick = |scheme: AuthScheme| all.iter().find(|c| c.scheme == scheme).cloned();
    pick(AuthScheme::Bearer).or_else(|| pick(AuthScheme::Basic))
}

/// Every challenge in one header value: `Basic realm="a", Bearer realm="b",service="c"`.
/// Lenient: an unquoted value runs to the next comma or space (some registries leave realm
/// URLs unquoted); a token68 is ignored.
pub fn parse(value: &str) -> Vec<Challenge> {
    let mut cursor = Cursor {
        text: value.as_bytes(),
        at: 0,
    };
    let mut challenges = Vec::new();
    loop {
        cursor.skip(|c| c == b',' || c.is_ascii_whitespace());
        if cursor.done() {
            return challenges;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            cursor.at += 1;
            continue;
        }
        let params = cursor.params();
        challenges.push(Challenge {
            scheme: scheme_of(&scheme),
            params,
        });
    }
}

fn scheme_of(name: &str) -> AuthScheme {
    match name.to_ascii_lowercase().as_str() {
        "basic" => AuthScheme::Basic,
        "bearer" => AuthScheme::Bearer,
        _ => AuthScheme::Other(name.to_string()),
    }
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.at += 1;
        }
    }

    fn skip_space(&mut self) {
        self.skip(|c| c == b' ' || c == b'\t');
    }

    /// An RFC 7230 token.
    fn token(&mut self) -> String {
        let start = self.at;
        self.skip(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        String::from_utf8_lossy(self.text.get(start..self.at).unwrap_or_default()).into_owned()
    }

    /// `name=value` pairs after a scheme, up to the next challenge or the end.
    fn params(&mut self) -> Vec<(String, String)> {
        let mut params = Vec::new();
        while let Some(name) = self.param_name() {
            let value = self.value();
            params.push((name.to_ascii_lowercase(), value));
            self.skip_space();
            if self.peek() != Some(b',') {
                break;
            }
            self.at += 1;
        }
        params
    }

    /// The next parameter's name and its `=`, or `None` (position unchanged) when what follows
    /// is a new challenge, a token68 or the end.
    fn param_name(&mut self) -> Option<String> {
        let start = self.at;
        self.skip(|c| c.is_ascii_whitespace() || c == b',');
        let name = self.token();
        self.skip_space();
        if name.is_empty() || self.peek() != Some(b'=') {
            self.at = start;
            return None;
        }
        self.at += 1;
        self.skip_space();
        Some(name)
    }

    fn value(&mut self) -> String {
        if self.peek() != Some(b'"') {
            let start = self.at;
            self.skip(|c| c != b',' && !c.is_ascii_whitespace());
            return String::from_utf8_lossy(self.text.get(start..self.at).unwrap_or_default())
                .into_owned();
        }
        self.at += 1;
        let mut value = Vec::new();
        while let Some(c) = self.peek() {
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        value.push(escaped);
                        self.at += 1;
                    }
                }
                _ => value.push(c),
            }
        }
        String::from_utf8_lossy(&value).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::hostile::Noise;
    use super::*;

    fn pairs(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_distribution_bearer_challenge() {
        let c = parse(
            r#"Bearer realm="https://auth.test/jwt/auth",service="container_registry",scope="repository:group/sub/app:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, AuthScheme::Bearer);
        assert_eq!(
            pairs(&c[0]),
            [
                ("realm", "https://auth.test/jwt/auth"),
                ("service", "container_registry"),
                ("scope", "repository:group/sub/app:pull"),
            ]
        );
    }

    #[test]
    fn commas_and_escapes_inside_quotes_stay_in_the_value() {
        let c = parse(
            r#"bearer Realm="https://a.test/token", scope="repository:a:pull,push repository:b:pull", error="say \"hi\"""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm"), Some("https://a.test/token"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:a:pull,push repository:b:pull")
        );
        assert_eq!(c[0].param("error"), Some(r#"say "hi""#));
    }

    #[test]
    fn several_challenges_in_one_header() {
        let c = parse(
            r#"Basic realm="basic, realm", Bearer realm="https://auth.test/t",service=reg , Negotiate abc=="#,
        );
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[0].scheme, AuthScheme::Basic);
        assert_eq!(c[0].param("realm"), Some("basic, realm"));
        assert_eq!(c[1].scheme, AuthScheme::Bearer);
        assert_eq!(c[1].param("service"), Some("reg"));
        assert_eq!(c[2].scheme, AuthScheme::Other("Negotiate".into()));
    }

    #[test]
    fn unquoted_realm_urls_and_bare_schemes() {
        let c = parse("Bearer realm=https://auth.test/token?x=1,service=s");
        assert_eq!(c[0].param("realm"), Some("https://auth.test/token?x=1"));
        assert_eq!(c[0].param("service"), Some("s"));
        let bare = parse("Basic");
        assert_eq!(bare.len(), 1);
        assert!(bare[0].params.is_empty());
        assert!(parse("").is_empty());
    }

    #[test]
    fn bearer_is_preferred_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append(WWW_AUTHENTICATE, r#"Basic realm="r""#.parse().unwrap());
        headers.append(
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://a.test/t""#.parse().unwrap(),
        );
        assert_eq!(preferred(&headers).unwrap().scheme, AuthScheme::Bearer);
        headers.remove(WWW_AUTHENTICATE);
        assert_eq!(preferred(&headers), None);
    }

    fn bearer(realm: &str) -> Challenge {
        Challenge {
            scheme: AuthScheme::Bearer,
            params: vec![
                ("realm".into(), realm.into()),
                ("scope".into(), "repository:a:pull".into()),
            ],
        }
    }

    #[test]
    fn twenty_thousand_registries_stay_within_the_cap_and_recent_ones_survive() {
        let challenges = Challenges::default();
        let registry = |name: &str| name.to_string();
        let warm = registry("registry.example");
        challenges.remember(&warm, &bearer("https://auth.example/token"));
        for n in 0..20_000 {
            challenges.remember(
                &registry(&format!("r{n}.attacker.test")),
                &bearer("https://a.test/t"),
            );
            assert!(challenges.len() <= REMEMBERED_REGISTRIES);
            if n % 10 == 0 {
                assert!(challenges.get(&warm).is_some(), "evicted at {n}");
            }
        }
        assert!(challenges.len() > REMEMBERED_REGISTRIES * 9 / 10);
        for n in 19_900..20_000 {
            assert!(challenges
                .get(&registry(&format!("r{n}.attacker.test")))
                .is_some());
        }
        assert!(challenges.get(&registry("r0.attacker.test")).is_none());
        // Only scheme, realm and service are kept.
        assert_eq!(
            challenges.get(&warm).unwrap().params,
            [(
                "realm".to_string(),
                "https://auth.example/token".to_string()
            )]
        );
    }

    #[test]
    fn oversized_challenges_are_not_remembered() {
        let challenges = Challenges::default();
        let host = "registry.example";
        challenges.remember(host, &bearer("https://auth.example/token"));
        let huge = format!("https://auth.example/{}", "a".repeat(MAX_REMEMBERED_BYTES));
        challenges.remember(host, &bearer(&huge));
        assert_eq!(challenges.get(host), None);
        assert_eq!(challenges.len(), 0);
    }

    #[test]
    fn random_challenge_headers_never_panic_the_parser() {
        let fragments = [
            "Bearer",
            "Basic",
            "Negotiate",
            " ",
            ",",
            "=",
            "\"",
            "\\",
            "realm",
            "service",
            "scope",
            "https://a.test/t",
            "==",
            "\t",
            "\r\n",
            "\u{e9}",
            "\u{1f600}",
        ];
        let mut noise = Noise::new(0xc4a1_1e46e);
        for _ in 0..20_000 {
            let raw = noise.input(16, &fragments);
            let challenges = parse(&String::from_utf8_lossy(&raw));
            for c in &challenges {
                assert!(c.params.iter().all(|(k, _)| !k.is_empty()));
            }
            if let Ok(value) = http::HeaderValue::from_bytes(&raw) {
                let mut headers = HeaderMap::new();
                headers.append(WWW_AUTHENTICATE, value.clone());
                headers.append(WWW_AUTHENTICATE, value);
                let _ = preferred(&headers);
            }
        }
    }
}
