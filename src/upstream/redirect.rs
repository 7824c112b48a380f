//! Redirects (blob CDNs, presigned URLs), followed upstream-side. A hop to another origin
//! carries only `Accept` and `Range`: never `Authorization`, never the client's other
//! headers. A location's query may itself be a credential (a presigned signature), so only
//! its host is ever logged.

use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE};
use http::uri::{Parts, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};

/// Most hops followed for one request.
pub const MAX_REDIRECTS: usize = 5;

pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect from `base` points: absolute, or resolved against `base`. Only https,
/// except a hop that stays on a plain-http mirror's own origin.
pub fn location(base: &Uri, headers: &HeaderMap) -> Result<Uri, String> {
    let raw = headers
        .get(LOCATION)
        .ok_or("a redirect without Location")?
        .to_str()
        .map_err(|_| "a Location that is not text")?;
    let target = resolve(base, raw)?;
    if target.scheme() != Some(&Scheme::HTTPS) && !same_origin(base, &target) {
        return Err(format!(
            "a redirect to {} over {}; only https is followed",
            target.host().unwrap_or("?"),
            target.scheme_str().unwrap_or("no scheme")
        ));
    }
    Ok(target)
}

fn resolve(base: &Uri, raw: &str) -> Result<Uri, String> {
    let invalid = || "a Location that is not a URL".to_string();
    if raw.contains("://") {
        return raw.parse().map_err(|_| invalid());
    }
    if let Some(rest) = raw.strip_prefix("//") {
        return format!("https://{rest}").parse().map_err(|_| invalid());
    }
    let path = if raw.starts_with('/') {
        raw.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{dir}/{raw}")
    };
    let mut parts = Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = Some(PathAndQuery::try_from(path).map_err(|_| invalid())?);
    Uri::from_parts(parts).map_err(|_| invalid())
}

/// Same scheme, host and port (443 when https gives none).
pub fn same_origin(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| u.port_u16().unwrap_or(443);
    a.scheme() == b.scheme()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
}

/// The headers of one hop: `Accept` and `Range` from the client, and `auth` only if given
/// (the caller passes it only while the hops stay on the registry's origin).
pub fn hop_headers(client: &HeaderMap, auth: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [ACCEPT, RANGE] {
        for value in client.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(auth) = auth {
        headers.insert(AUTHORIZATION, auth.clone());
    }
    headers
}

#[cfg(test)]
mod tests {
    use http::header::USER_AGENT;

    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn located(base: &str, to: &str) -> Result<Uri, String> {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, to.parse().unwrap());
        location(&uri(base), &headers)
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = "https://registry.test/v2/a/blobs/sha256:1";
        assert_eq!(
            located(base, "https://cdn.test/x?sig=s").unwrap(),
            uri("https://cdn.test/x?sig=s")
        );
        assert_eq!(
            located(base, "/storage/1?x").unwrap(),
            uri("https://registry.test/storage/1?x")
        );
        assert_eq!(
            located(base, "sha256:2").unwrap(),
            uri("https://registry.test/v2/a/blobs/sha256:2")
        );
        assert_eq!(
            located(base, "//cdn.test/y").unwrap(),
            uri("https://cdn.test/y")
        );
        let plain = located(base, "http://cdn.test/x?sig=secret").unwrap_err();
        assert!(plain.contains("only https"), "{plain}");
        assert!(!plain.contains("secret"), "{plain}");
        // A plain-http mirror may move within its own origin, and nowhere else over http.
        let mirror = "http://mirror.test:5000/v2/a/blobs/sha256:1";
        assert_eq!(
            located(mirror, "/storage/1").unwrap(),
            uri("http://mirror.test:5000/storage/1")
        );
        assert!(located(mirror, "http://mirror.test:5001/x").is_err());
        assert!(located(mirror, "http://cdn.test/x").is_err());
        assert!(located(base, "http://registry.test/x").is_err());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let registry = uri("https://registry.test/v2/");
        assert!(same_origin(&registry, &uri("https://REGISTRY.test:443/x")));
        assert!(!same_origin(
            &registry,
            &uri("https://registry.test:5000/x")
        ));
        assert!(!same_origin(&registry, &uri("https://cdn.registry.test/x")));
        assert!(!same_origin(&registry, &uri("http://registry.test/x")));
    }

    #[test]
    fn hops_carry_only_accept_range_and_the_given_auth() {
        let mut client = HeaderMap::new();
        client.insert(ACCEPT, "application/octet-stream".parse().unwrap());
        client.insert(RANGE, "bytes=0-9".parse().unwrap());
        client.insert(USER_AGENT, "containerd/2.1".parse().unwrap());
        client.insert("x-credgate-secret", "s3cret".parse().unwrap());
        client.insert(AUTHORIZATION, "Bearer client".parse().unwrap());
        let foreign = hop_headers(&client, None);
        assert_eq!(foreign.len(), 2, "{foreign:?}");
        assert_eq!(foreign[RANGE], "bytes=0-9");
        let own = hop_headers(&client, Some(&HeaderValue::from_static("Bearer ours")));
        assert_eq!(own[AUTHORIZATION], "Bearer ours");
        assert_eq!(own.len(), 3);
    }
}
