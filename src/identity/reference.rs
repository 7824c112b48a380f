//! Image references as the OCI distribution spec and docker's reference grammar define them.

use std::fmt;

use super::registry::{has_scheme, strip_scheme, RegistryHost};
use super::IdentityError;

/// Longest repository name the distribution spec allows (with the registry).
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A repository path inside a registry, e.g. `group/sub/app`, already validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        validate_path(input).map_err(|reason| IdentityError::Repository {
            input: input.to_string(),
            reason,
        })?;
        Ok(Self(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whole path segments, so `a/b` is a prefix of `a/b/c` but never of `a/bc`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    pub registry: RegistryHost,
    pub repository: Repository,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageReference {
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        parse_reference(input).map_err(|reason| IdentityError::Reference {
            input: input.to_string(),
            reason,
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What a lookup is about: a registry, and the repository when a whole image was named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub registry: RegistryHost,
    pub repository: Option<Repository>,
}

impl Target {
    /// Parses a REF as the CLI and the helper protocol accept it: an image reference, or a
    /// bare registry (`registry.test`, `localhost:5000`, `https://index.docker.io/v1/`).
    /// A lone name without `.`, `:` or `localhost` (`busybox`) is a Docker Hub image.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let trimmed = input.trim();
        if has_scheme(trimmed) || looks_like_bare_registry(trimmed) {
            return Ok(Self {
                registry: RegistryHost::parse(trimmed)?,
                repository: None,
            });
        }
        let image = ImageReference::parse(trimmed)?;
        Ok(Self {
            registry: image.registry,
            repository: Some(image.repository),
        })
    }

    /// Parses what a docker credential helper is asked for: a server URL, never an image
    /// reference, so `myreg:5000` is a registry and not `docker.io/library/myreg:5000`. The
    /// scheme is optional; the first segment is always the registry host, even with one label
    /// (`myreg`, `localhost`); a path after it is a repository (crane asks `host/group/app`),
    /// except a lone `v1` or `v2`, docker's API path (`https://index.docker.io/v1/`).
    pub fn parse_server_url(input: &str) -> Result<Self, IdentityError> {
        let err = |reason| IdentityError::ServerUrl {
            input: input.to_string(),
            reason,
        };
        let without_scheme = strip_scheme(input.trim());
        let (authority, path) = match without_scheme.split_once('/') {
            Some((authority, path)) => (authority, path.strip_suffix('/').unwrap_or(path)),
            None => (without_scheme, ""),
        };
        let registry = RegistryHost::parse_authority(authority).map_err(err)?;
        let repository = match path {
            "" | "v1" | "v2" => None,
            path if registry.is_docker_hub() && !path.contains('/') => Some(
                Repository::parse(&format!("library/{path}"))
                    .map_err(|_| err("invalid repository path"))?,
            ),
            path => Some(Repository::parse(path).map_err(|_| err("invalid repository path"))?),
        };
        Ok(Self {
            registry,
            repository,
        })
    }

    pub fn new(registry: RegistryHost, repository: Option<Repository>) -> Self {
        Self {
            registry,
            repository,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repository {
            Some(repo) => write!(f, "{}/{repo}", self.registry),
            None => write!(f, "{}", self.registry),
        }
    }
}

/// `registry.test`, `registry.test:5000`, `localhost:5000`, `[::1]:5000`; but `busybox:1.36`
/// and `myhost:5000` are images with tags, as docker parses them.
fn looks_like_bare_registry(input: &str) -> bool {
    if input.contains(['/', '@']) {
        return false;
    }
    if input.starts_with('[') {
        return true;
    }
    let host = match input.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return false,
        None => input,
    };
    host.contains('.') || host == "localhost"
}

/// docker's rule: the first component names a registry when it has a `.` or `:`, is
/// `localhost`, or has upper-case letters (which a repository may not have).
fn is_registry_component(component: &str) -> bool {
    component.contains(['.', ':'])
        || component == "localhost"
        || component.bytes().any(|b| b.is_ascii_uppercase())
}

fn parse_reference(input: &str) -> Result<ImageReference, &'static str> {
    if input.is_empty() {
        return Err("empty reference");
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(validate_digest(digest)?.to_string())),
        None => (input, None),
    };
    // A tag's ':' comes after the last '/', so it can't be confused with a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            (
                &rest[..last_slash + i],
                Some(validate_tag(tag)?.to_string()),
            )
        }
        None => (rest, None),
    };
    if name.len() > NAME_MAX {
        return Err("repository name longer than 255 characters");
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if is_registry_component(first) => (
            RegistryHost::parse_authority(first).map_err(|_| "invalid registry host")?,
            path.to_string(),
        ),
        _ => (RegistryHost::docker_hub(), name.to_string()),
    };
    let path = if registry.is_docker_hub() && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    validate_path(&path)?;
    // The limit is on the qualified name (`docker.io/library/…`), as docker checks it, so the
    // canonical form always parses back.
    if registry.to_string().len() + 1 + path.len() > NAME_MAX {
        return Err("repository name longer than 255 characters");
    }
    Ok(ImageReference {
        registry,
        repository: Repository(path),
        tag,
        digest,
    })
}

/// `path-component ("/" path-component)*` where a component is
/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`.
fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty repository name");
    }
    if path.len() > NAME_MAX {
        return Err("repository name longer than 255 characters");
    }
    path.split('/').try_for_each(validate_component)
}

fn validate_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty path component");
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("path components must start and end with a lower-case letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return Err("invalid characters in repository name (allowed: a-z 0-9 . _ __ -)");
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`, the distribution spec's tag grammar.
pub(crate) fn validate_tag(tag: &str) -> Result<&str, &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    if bytes.is_empty() || bytes.len() > TAG_MAX {
        return Err("tag must be 1 to 128 characters");
    }
    if !word(bytes[0]) || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err("invalid tag (allowed: A-Z a-z 0-9 _ . -, not starting with . or -)");
    }
    Ok(tag)
}

/// `algorithm ":" encoded`; registered algorithms have a fixed lower-hex length.
fn validate_digest(digest: &str) -> Result<&str, &'static str> {
    let (algorithm, encoded) = digest.split_once(':').ok_or("digest without algorithm")?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if !algorithm_ok {
        return Err("invalid digest algorithm");
    }
    let lower_hex = |len: usize| {
        encoded.len() == len
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = match algorithm {
        "sha256" => lower_hex(64),
        "sha512" => lower_hex(128),
        _ => {
            !encoded.is_empty()
                && encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        }
    };
    if !ok {
        return Err("invalid digest (sha256 needs 64 lower-case hex characters)");
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn image(input: &str) -> (String, String) {
        let r = ImageReference::parse(input).unwrap();
        (r.registry.to_string(), r.repository.to_string())
    }

    #[test]
    fn docker_hub_short_names_get_library() {
        assert_eq!(
            image("busybox"),
            ("docker.io".into(), "library/busybox".into())
        );
        assert_eq!(image("user/app"), ("docker.io".into(), "user/app".into()));
        assert_eq!(
            image("index.docker.io/library/busybox"),
            ("docker.io".into(), "library/busybox".into())
        );
        assert_eq!(
            image("docker.io/busybox"),
            ("docker.io".into(), "library/busybox".into())
        );
    }

    #[test]
    fn first_component_is_a_registry_only_with_dot_colon_or_localhost() {
        assert_eq!(image("localhost/app"), ("localhost".into(), "app".into()));
        assert_eq!(
            image("localhost:5000/app"),
            ("localhost:5000".into(), "app".into())
        );
        assert_eq!(
            image("registry/app"),
            ("docker.io".into(), "registry/app".into())
        );
        assert_eq!(
            image("[::1]:5000/app:v1"),
            ("[::1]:5000".into(), "app".into())
        );
    }

    #[test]
    fn port_443_image_equals_bare_host_image() {
        assert_eq!(
            image("registry.test:443/group/sub/app:v1"),
            ("registry.test".into(), "group/sub/app".into())
        );
    }

    #[test]
    fn tags_and_digests() {
        let r = ImageReference::parse(&format!("registry.test:5000/a/b:v1.2@{SHA}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_deref(), Some(SHA));
        assert_eq!(r.registry.to_string(), "registry.test:5000");
        let r = ImageReference::parse(&format!("busybox@{SHA}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{SHA}"));
    }

    #[test]
    fn invalid_references_are_refused_with_the_input_named() {
        for input in [
            "",
            "Busybox",
            "app:",
            "app:-bad",
            "a//b",
            "a/b/",
            "a..b",
            "a/-b",
            "app@sha256:short",
            "app@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.test/a/B",
        ] {
            let err = ImageReference::parse(input).unwrap_err().to_string();
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
        }
        let long = format!("a:{}", "t".repeat(129));
        assert!(ImageReference::parse(&long).is_err());
        let long_name = format!("registry.test/{}", "a".repeat(250));
        assert!(ImageReference::parse(&long_name).is_err());
        // 238 + "docker.io/library/" is 256 once qualified.
        assert!(ImageReference::parse(&"a".repeat(237)).is_ok());
        assert!(ImageReference::parse(&"a".repeat(238)).is_err());
    }

    #[test]
    fn separators_follow_the_grammar() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a/b.c_d__e-f"] {
            assert!(Repository::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["a___b", "a._b", "_a", "a.", "a/.b", "a%2fb", ".."] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
    }

    fn server_url(input: &str) -> (String, Option<String>) {
        let t = Target::parse_server_url(input).unwrap();
        (t.registry.to_string(), t.repository.map(|r| r.to_string()))
    }

    #[test]
    fn a_helper_asked_for_name_colon_port_gets_that_registry_not_docker_hub() {
        for input in [
            "kind-registry:5000",
            "myreg:5000",
            "localhost:5000",
            "myreg",
            "localhost",
            "https://myreg:5000/",
            "[::1]:5000",
        ] {
            let (registry, repository) = server_url(input);
            assert_ne!(registry, "docker.io", "{input}");
            assert_eq!(repository, None, "{input}");
        }
        assert_eq!(server_url("kind-registry:5000").0, "kind-registry:5000");
        assert_eq!(server_url("myreg").0, "myreg");
        assert_eq!(server_url("localhost:5000").0, "localhost:5000");
    }

    #[test]
    fn only_docker_hubs_own_names_are_docker_hub() {
        for host in ["index.docker.io", "docker.io", "registry-1.docker.io"] {
            for input in [
                host.to_string(),
                format!("{host}:443"),
                format!("https://{host}"),
                format!("https://{host}:443/"),
            ] {
                assert_eq!(server_url(&input), ("docker.io".into(), None), "{input}");
            }
        }
        for input in [
            "https://index.docker.io/v1/",
            "index.docker.io/v1/",
            "https://index.docker.io/v1",
        ] {
            assert_eq!(server_url(input), ("docker.io".into(), None), "{input}");
        }
        assert_eq!(server_url("docker.io:5000").0, "docker.io:5000");
        assert_eq!(server_url("hub.example.com").0, "hub.example.com");
    }

    #[test]
    fn a_server_url_path_is_a_repository() {
        assert_eq!(
            server_url("git.example.com/group/app"),
            ("git.example.com".into(), Some("group/app".into()))
        );
        assert_eq!(
            server_url("https://git.example.com:443/group/sub/app/"),
            ("git.example.com".into(), Some("group/sub/app".into()))
        );
        assert_eq!(
            server_url("myreg:5000/team/app"),
            ("myreg:5000".into(), Some("team/app".into()))
        );
        assert_eq!(
            server_url("index.docker.io/library/busybox"),
            ("docker.io".into(), Some("library/busybox".into()))
        );
        assert_eq!(
            server_url("docker.io/busybox"),
            ("docker.io".into(), Some("library/busybox".into()))
        );
        assert_eq!(server_url("https://r.test/v2/"), ("r.test".into(), None));
    }

    #[test]
    fn bad_server_urls_name_the_input() {
        for input in [
            "",
            "Not A Host!",
            "https://",
            "r.test/Group",
            "r.test//a",
            "busybox:1.36/x",
            "h:99999",
        ] {
            let err = Target::parse_server_url(input).unwrap_err().to_string();
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
        }
    }

    #[test]
    fn refs_can_be_bare_registries() {
        let t = Target::parse("registry.test").unwrap();
        assert_eq!(
            (t.registry.to_string(), t.repository),
            ("registry.test".into(), None)
        );
        let t = Target::parse("https://index.docker.io/v1/").unwrap();
        assert_eq!(t.registry.to_string(), "docker.io");
        assert_eq!(t.repository, None);
        let t = Target::parse("localhost:5000").unwrap();
        assert_eq!(t.registry.to_string(), "localhost:5000");
        assert!(Target::parse("Busybox").is_err());
        assert_eq!(
            Target::parse("busybox:1.36").unwrap().to_string(),
            "docker.io/library/busybox"
        );
        assert_eq!(
            Target::parse("myhost:5000").unwrap().to_string(),
            "docker.io/library/myhost"
        );
        assert_eq!(
            Target::parse("registry.test:5000").unwrap().repository,
            None
        );
        assert_eq!(Target::parse("[::1]:5000").unwrap().repository, None);
        assert_eq!(Target::parse("[::1]").unwrap().repository, None);
        let t = Target::parse("busybox").unwrap();
        assert_eq!(t.to_string(), "docker.io/library/busybox");
        let t = Target::parse("registry.test:443/group/sub/app:v1").unwrap();
        assert_eq!(t.to_string(), "registry.test/group/sub/app");
    }
}
