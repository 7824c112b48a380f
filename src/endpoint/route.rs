//! What a request asks for, as containerd sends it to a mirror:
//! `GET|HEAD /v2/<name>/{manifests|blobs}/<ref>?ns=<registry>`, or, from a host install fronts
//! (docs/design.md, "Mirrors through the gate"), the same under `/mirror/<n>` with exactly one
//! `X-Credgate-Mirror` header naming the operator's host. Everything is validated here, before
//! anything is sent upstream; `<n>` is checked for shape and trusted for nothing.

use http::{HeaderMap, Method, Uri};

use super::EndpointError;
use crate::containerd::files::MIRROR_PATH_PREFIX;
use crate::identity::{RegistryHost, Repository};

/// The header a fronted host sends: the operator's host key it stands for (names compare
/// case-insensitively).
use crate::containerd::files::MIRROR_HEADER;

/// Most digits of `<n>` in a fronted host's `/mirror/<n>`.
const MAX_FRONTED_DIGITS: usize = 4;

/// A request the endpoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check, answered locally; `fronted` when under `/mirror/<n>`.
    ApiVersion {
        fronted: bool,
    },
    Content(ContentRoute),
}

/// A manifest or blob of one repository on one upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRoute {
    pub registry: RegistryHost,
    /// `ns` as containerd sent it (decoded, not canonicalised): the hosts dir is searched by
    /// this spelling, as containerd searches it.
    pub ns: String,
    pub repository: Repository,
    pub kind: ContentKind,
    pub reference: Reference,
    /// Under `/mirror/<n>`: a fronted host's request, for the mirror `X-Credgate-Mirror` names.
    pub fronted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Manifest,
    Blob,
}

/// A tag or a digest, as it appears in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// `algorithm:hex` for the algorithms credgate can verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: DigestAlgorithm,
    pub hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

pub const ALLOWED_METHODS: &str = "GET, HEAD";

impl Route {
    /// Parses the path and `ns` query; the method is checked once the path is known, so an
    /// unknown path is 404 whatever the method.
    pub fn parse(method: &Method, uri: &Uri) -> Result<Route, EndpointError> {
        let path = uri.path();
        if path.contains('%') {
            return Err(EndpointError::EncodedPath);
        }
        let (fronted, path) = split_fronted(path)?;
        if path == "/v2/" {
            check_method(method)?;
            return Ok(Route::ApiVersion { fronted });
        }
        let (name, kind, reference) = split_content_path(path)?;
        check_method(method)?;
        if name
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
        {
            return Err(EndpointError::DotSegment);
        }
        let (ns, registry) = namespace(uri.query())?;
        let repository = Repository::parse(name).map_err(EndpointError::InvalidRepository)?;
        let reference = Reference::parse(reference)?;
        if kind == ContentKind::Blob && !matches!(reference, Reference::Digest(_)) {
            return Err(EndpointError::BlobWithoutDigest);
        }
        Ok(Route::Content(ContentRoute {
            registry,
            ns,
            repository,
            kind,
            reference,
            fronted,
        }))
    }

    /// Whether the request came through a fronted host (`/mirror/<n>`).
    pub fn fronted(&self) -> bool {
        match self {
            Route::ApiVersion { fronted } => *fronted,
            Route::Content(route) => route.fronted,
        }
    }
}

/// The mirror a request names: exactly one `X-Credgate-Mirror` value, and only under
/// `/mirror/<n>`; without the prefix, no such header at all. A value with a comma is two
/// values (HTTP's list syntax), and refused like two headers.
pub fn requested_mirror(
    route: &Route,
    headers: &HeaderMap,
) -> Result<Option<String>, EndpointError> {
    let mut values = headers.get_all(MIRROR_HEADER).iter();
    let (first, second) = (values.next(), values.next());
    match (route.fronted(), first, second) {
        (false, None, _) => Ok(None),
        (false, Some(_), _) => Err(EndpointError::MirrorHeaderWithoutPrefix),
        (true, None, _) => Err(EndpointError::MirrorPrefixWithoutHeader),
        (true, Some(_), Some(_)) => Err(EndpointError::TwoMirrors),
        (true, Some(value), None) => {
            let value = value
                .to_str()
                .map_err(|_| EndpointError::BadMirrorHeader)?
                .trim();
            if value.contains(',') {
                return Err(EndpointError::TwoMirrors);
            }
            if value.is_empty() {
                return Err(EndpointError::BadMirrorHeader);
            }
            Ok(Some(value.to_string()))
        }
    }
}

/// `path` without a `/mirror/<n>` prefix, and whether it had one.
fn split_fronted(path: &str) -> Result<(bool, &str), EndpointError> {
    let Some(rest) = path.strip_prefix(MIRROR_PATH_PREFIX) else {
        return Ok((false, path));
    };
    let digits = rest.find('/').ok_or(EndpointError::NotFound)?;
    let (number, rest) = rest.split_at(digits);
    if number.is_empty()
        || number.len() > MAX_FRONTED_DIGITS
        || !number.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(EndpointError::NotFound);
    }
    Ok((true, rest))
}

impl ContentRoute {
    /// The distribution API path upstream, without `ns`.
    pub fn upstream_path(&self) -> String {
        format!("/v2/{}/{}", self.repository, self.tail())
    }

    /// What follows the repository: `manifests/<ref>` or `blobs/<digest>`.
    pub fn tail(&self) -> String {
        let kind = match self.kind {
            ContentKind::Manifest => "manifests",
            ContentKind::Blob => "blobs",
        };
        format!("{kind}/{}", self.reference)
    }

    /// The digest a full body must hash to: content addressed by digest.
    pub fn expected_digest(&self) -> Option<&Digest> {
        match &self.reference {
            Reference::Digest(digest) => Some(digest),
            Reference::Tag(_) => None,
        }
    }
}

fn check_method(method: &Method) -> Result<(), EndpointError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(EndpointError::MethodNotAllowed)
    }
}

/// `/v2/<name>/<kind>/<ref>`; the name may itself contain `manifests` or `blobs` segments,
/// so the kind is the second segment from the end.
fn split_content_path(path: &str) -> Result<(&str, ContentKind, &str), EndpointError> {
    let rest = path.strip_prefix("/v2/").ok_or(EndpointError::NotFound)?;
    let mut parts = rest.rsplitn(3, '/');
    let (Some(reference), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(EndpointError::NotFound);
    };
    let kind = match kind {
        "manifests" => ContentKind::Manifest,
        "blobs" => ContentKind::Blob,
        _ => return Err(EndpointError::NotFound),
    };
    if name.is_empty() || reference.is_empty() {
        return Err(EndpointError::NotFound);
    }
    Ok((name, kind, reference))
}

/// The upstream registry from exactly one `ns` parameter, as sent (decoded) and canonical.
/// containerd encodes it with Go's `url.Values`, so `registry.test:5000` arrives as
/// `registry.test%3A5000`. Only a bare `host[:port]` is accepted: no scheme, no path.
fn namespace(query: Option<&str>) -> Result<(String, RegistryHost), EndpointError> {
    let mut values = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ns="));
    let raw = values.next().ok_or(EndpointError::MissingNamespace)?;
    if values.next().is_some() {
        return Err(EndpointError::AmbiguousNamespace);
    }
    let ns = percent_decode(raw).ok_or(EndpointError::BadNamespaceEncoding)?;
    if ns.is_empty() {
        return Err(EndpointError::MissingNamespace);
    }
    // Whitespace too: the registry parser trims it, but the hosts dir is searched by `ns`
    // as sent, and ` r.test` would find `_default` instead of `r.test`'s own file.
    if ns.contains('/') || ns.chars().any(char::is_whitespace) {
        return Err(EndpointError::NamespaceNotAHost { ns });
    }
    let registry = RegistryHost::parse(&ns).map_err(EndpointError::InvalidNamespace)?;
    Ok((ns, registry))
}

/// Decodes `%XX` (and `+` as space, as in a form); `None` for a broken escape or non-UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let high = (bytes.next()? as char).to_digit(16)?;
                let low = (bytes.next()? as char).to_digit(16)?;
                (high * 16 + low) as u8
            }
            b'+' => b' ',
            other => other,
        });
    }
    String::from_utf8(out).ok()
}

impl Reference {
    fn parse(input: &str) -> Result<Reference, EndpointError> {
        if input.contains(':') {
            return Digest::parse(input).map(Reference::Digest);
        }
        if crate::identity::validate_tag(input).is_ok() {
            Ok(Reference::Tag(input.to_string()))
        } else {
            Err(EndpointError::InvalidTag {
                tag: input.to_string(),
            })
        }
    }
}

impl Digest {
    fn parse(input: &str) -> Result<Digest, EndpointError> {
        let invalid = || EndpointError::InvalidDigest {
            digest: input.to_string(),
        };
        let (algorithm, hex) = input.split_once(':').ok_or_else(invalid)?;
        let algorithm = match algorithm {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return Err(invalid()),
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex.len() != 2 * algorithm.output_len() || !hex.bytes().all(lower_hex) {
            return Err(invalid());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl DigestAlgorithm {
    /// Length of the digest in bytes.
    pub fn output_len(self) -> usize {
        self.ring().output_len()
    }

    pub fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            DigestAlgorithm::Sha256 => &ring::digest::SHA256,
            DigestAlgorithm::Sha512 => &ring::digest::SHA512,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(method: Method, uri: &str) -> Result<Route, EndpointError> {
        Route::parse(&method, &uri.parse().unwrap())
    }

    fn content(uri: &str) -> ContentRoute {
        match parse(Method::GET, uri).unwrap() {
            Route::Content(route) => route,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn containerd_mirror_requests_parse() {
        let route = content("/v2/group/sub/app/manifests/v1?ns=registry.test");
        assert_eq!(route.registry.to_string(), "registry.test");
        assert_eq!(route.repository.as_str(), "group/sub/app");
        assert_eq!(route.kind, ContentKind::Manifest);
        assert_eq!(route.reference, Reference::Tag("v1".into()));
        assert_eq!(route.upstream_path(), "/v2/group/sub/app/manifests/v1");
        assert!(route.expected_digest().is_none());

        let route = content(&format!("/v2/library/busybox/blobs/{SHA}?ns=docker.io"));
        assert_eq!(route.kind, ContentKind::Blob);
        assert_eq!(route.expected_digest().unwrap().to_string(), SHA);
        assert_eq!(
            route.upstream_path(),
            format!("/v2/library/busybox/blobs/{SHA}")
        );
    }

    #[test]
    fn ns_is_percent_decoded_and_canonical() {
        let route = content("/v2/app/manifests/v1?ns=registry.test%3A5000");
        assert_eq!(route.registry.to_string(), "registry.test:5000");
        let route = content("/v2/app/manifests/v1?other=1&ns=Registry.Test%3A443");
        assert_eq!(route.registry.to_string(), "registry.test");
    }

    #[test]
    fn repositories_may_contain_kind_names() {
        let route = content("/v2/a/manifests/b/blobs/manifests/v1?ns=r.test");
        assert_eq!(route.repository.as_str(), "a/manifests/b/blobs");
        assert_eq!(route.kind, ContentKind::Manifest);
    }

    #[test]
    fn api_version_needs_no_ns() {
        assert_eq!(
            parse(Method::HEAD, "/v2/").unwrap(),
            Route::ApiVersion { fronted: false }
        );
        assert_eq!(
            parse(Method::GET, "/mirror/7/v2/").unwrap(),
            Route::ApiVersion { fronted: true }
        );
    }

    #[test]
    fn fronted_requests_parse_under_their_prefix_with_ns_as_sent() {
        let route = content("/mirror/12/v2/library/busybox/manifests/v1?ns=Registry.Test%3A443");
        assert!(route.fronted);
        assert_eq!(route.ns, "Registry.Test:443");
        assert_eq!(route.registry.to_string(), "registry.test");
        assert_eq!(route.repository.as_str(), "library/busybox");
        assert_eq!(route.tail(), "manifests/v1");
        let plain = content("/v2/a/manifests/v1?ns=r.test");
        assert!(!plain.fronted);
        for uri in [
            "/mirror/v2/a/manifests/v1?ns=r.test",
            "/mirror//v2/a/manifests/v1?ns=r.test",
            "/mirror/x1/v2/a/manifests/v1?ns=r.test",
            "/mirror/12345/v2/a/manifests/v1?ns=r.test",
            "/mirror/1",
            "/mirror/1/mirror/2/v2/a/manifests/v1?ns=r.test",
            "/mirror/-1/v2/a/manifests/v1?ns=r.test",
            "/v2/mirror/1/a/manifests",
        ] {
            let err = parse(Method::GET, uri).expect_err(uri);
            assert!(matches!(err, EndpointError::NotFound), "{uri}: {err:?}");
        }
        let err = parse(Method::GET, "/mirror/1/v2/a/../b/manifests/v1?ns=r.test").unwrap_err();
        assert!(matches!(err, EndpointError::DotSegment), "{err:?}");
    }

    #[test]
    fn the_mirror_header_must_match_the_prefix_and_carry_one_value() {
        let fronted = parse(Method::GET, "/mirror/1/v2/a/manifests/v1?ns=r.test").unwrap();
        let plain = parse(Method::GET, "/v2/a/manifests/v1?ns=r.test").unwrap();
        let headers = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(MIRROR_HEADER, http::HeaderValue::from_bytes(value).unwrap());
            }
            headers
        };
        assert_eq!(
            requested_mirror(&fronted, &headers(&[b"https://m.test"])).unwrap(),
            Some("https://m.test".to_string())
        );
        assert_eq!(requested_mirror(&plain, &headers(&[])).unwrap(), None);
        let cases: &[(&Route, &[&[u8]], &str)] = &[
            (&fronted, &[], "MirrorPrefixWithoutHeader"),
            (&plain, &[b"https://m.test"], "MirrorHeaderWithoutPrefix"),
            (&plain, &[b""], "MirrorHeaderWithoutPrefix"),
            (
                &fronted,
                &[b"https://m.test", b"https://m.test"],
                "TwoMirrors",
            ),
            (
                &fronted,
                &[b"https://m.test,https://evil.test"],
                "TwoMirrors",
            ),
            (&fronted, &[b"https://m.test, "], "TwoMirrors"),
            (&fronted, &[b""], "BadMirrorHeader"),
            (&fronted, &[b"  "], "BadMirrorHeader"),
            (&fronted, &[b"https://m.test/\xff"], "BadMirrorHeader"),
        ];
        for (route, values, expected) in cases {
            let err = requested_mirror(route, &headers(values)).expect_err(expected);
            assert!(
                format!("{err:?}").starts_with(expected),
                "{values:?}: {err:?}"
            );
        }
        // Header names are case-insensitive on the wire: two spellings are two values.
        let mut mixed = HeaderMap::new();
        mixed.append("X-Credgate-Mirror", "https://m.test".parse().unwrap());
        mixed.append("x-CREDGATE-mirror", "https://evil.test".parse().unwrap());
        assert!(matches!(
            requested_mirror(&fronted, &mixed),
            Err(EndpointError::TwoMirrors)
        ));
    }

    #[test]
    fn refusals() {
        let cases: &[(Method, &str, &str)] = &[
            (Method::GET, "/v2/app/manifests/v1", "MissingNamespace"),
            (Method::GET, "/v2/app/manifests/v1?ns=", "MissingNamespace"),
            (
                Method::GET,
                "/v2/app/manifests/v1?ns=a.test&ns=b.test",
                "AmbiguousNamespace",
            ),
            (
                Method::GET,
                "/v2/app/manifests/v1?ns=https://a.test/",
                "NamespaceNotAHost",
            ),
            (
                Method::GET,
                "/v2/app/manifests/v1?ns=%zz",
                "BadNamespaceEncoding",
            ),
            (
                Method::GET,
                "/v2/app/manifests/v1?ns=%20r.test",
                "NamespaceNotAHost",
            ),
            (
                Method::GET,
                "/v2/app/manifests/v1?ns=r.test+",
                "NamespaceNotAHost",
            ),
            (
                Method::GET,
                "/v2/app/manifests/v1?ns=a_b!",
                "InvalidNamespace",
            ),
            (
                Method::POST,
                "/v2/app/manifests/v1?ns=r.test",
                "MethodNotAllowed",
            ),
            (Method::DELETE, "/v2/", "MethodNotAllowed"),
            (
                Method::GET,
                "/v2/a/../b/manifests/v1?ns=r.test",
                "DotSegment",
            ),
            (
                Method::GET,
                "/v2/a%2Fb/manifests/v1?ns=r.test",
                "EncodedPath",
            ),
            (
                Method::GET,
                "/v2/a%2fb/manifests/v1?ns=r.test",
                "EncodedPath",
            ),
            (
                Method::GET,
                "/v2/a%41/manifests/v1?ns=r.test",
                "EncodedPath",
            ),
            (
                Method::GET,
                "/v2/A/manifests/v1?ns=r.test",
                "InvalidRepository",
            ),
            (
                Method::GET,
                "/v2/a//b/manifests/v1?ns=r.test",
                "InvalidRepository",
            ),
            (Method::GET, "/v2/a/manifests/-v1?ns=r.test", "InvalidTag"),
            (
                Method::GET,
                "/v2/a/manifests/sha256:abc?ns=r.test",
                "InvalidDigest",
            ),
            (
                Method::GET,
                "/v2/a/manifests/md5:abc?ns=r.test",
                "InvalidDigest",
            ),
            (
                Method::GET,
                "/v2/a/blobs/latest?ns=r.test",
                "BlobWithoutDigest",
            ),
            (Method::GET, "/v2/a/tags/list?ns=r.test", "NotFound"),
            (Method::GET, "/v2/_catalog", "NotFound"),
            (Method::GET, "/v2/a/blobs/uploads/", "NotFound"),
            (Method::GET, "/v2", "NotFound"),
            (Method::GET, "/metrics", "NotFound"),
        ];
        for (method, uri, expected) in cases {
            let err = parse(method.clone(), uri).expect_err(uri);
            let name = format!("{err:?}");
            assert!(name.starts_with(expected), "{method} {uri}: {name}");
        }
    }
}
