//! kubelet's image matching, reimplemented to behave the same: `URLsMatch` for `matchImages`
//! and for the keys of a plugin's `auth` map, and the keyring's order among those keys.
//!
//! Patterns and images are parsed as Go's `url.Parse("https://" + s)` would (only the parts
//! that matter here: host, port, path), hosts are compared label by label with Go's
//! `filepath.Match`, ports as strings, and the pattern's path must be a string prefix of the
//! image's path (so `registry.io/team` also matches `registry.io/teamx/app`, as in kubelet).

/// The host and path of a URL as Go's `url.Parse` leaves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GoUrl {
    /// `host[:port]`, percent-decoded, brackets kept for IPv6.
    host: String,
    /// The decoded path, with its leading `/`; empty when there is none.
    path: String,
}

/// Parses a scheme-less `host[:port][/path]` as kubelet's `ParseSchemelessURL` does; the
/// error says why Go would refuse it.
pub(super) fn parse_schemeless(input: &str) -> Result<GoUrl, &'static str> {
    parse_go_url(&format!("https://{input}"))
}

/// Whether `image` matches the pattern `glob`. A pattern Go can't parse or glob never
/// matches, as kubelet ignores the error `URLsMatchStr` returns.
pub(super) fn urls_match(glob: &str, image: &str) -> bool {
    match (parse_schemeless(glob), parse_schemeless(image)) {
        (Ok(glob), Ok(image)) => go_urls_match(&glob, &image).unwrap_or(false),
        _ => false,
    }
}

/// The `auth` key kubelet's keyring tries first for `image`, or `None` when no key matches.
///
/// Keys are normalised as the keyring's `Add` does (a scheme is optional, a `/v1/` or
/// `/v2/` path prefix is dropped), sorted in reverse byte order (longer keys before their
/// prefixes, exact labels before `*`), and the first that matches wins. Docker Hub images
/// fall back to a key for `index.docker.io`, as kubelet does.
pub(super) fn first_matching_key<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    image: &str,
) -> Option<&'a str> {
    let mut index: Vec<(String, &str)> = keys
        .into_iter()
        .filter_map(|key| keyring_key(key).map(|normal| (normal, key)))
        .collect();
    // Stable, so equal normalised keys keep the caller's order.
    index.sort_by(|a, b| b.0.cmp(&a.0));
    if let Some((_, key)) = index.iter().find(|(normal, _)| urls_match(normal, image)) {
        return Some(key);
    }
    if is_default_registry_match(image) {
        return index
            .iter()
            .find(|(normal, _)| normal == "index.docker.io")
            .map(|(_, key)| *key);
    }
    None
}

/// The keyring's index key for an `auth` key, `None` when Go could not parse it.
fn keyring_key(key: &str) -> Option<String> {
    let with_scheme = if key.starts_with("https://") || key.starts_with("http://") {
        key.to_string()
    } else {
        format!("https://{key}")
    };
    let parsed = parse_go_url(&with_scheme).ok()?;
    let path = match parsed.path.get(..4) {
        Some("/v1/" | "/v2/") => &parsed.path[3..],
        _ => &parsed.path,
    };
    Some(if path.is_empty() || path == "/" {
        parsed.host
    } else {
        format!("{}{path}", parsed.host)
    })
}

/// kubelet's `isDefaultRegistryMatch`: the image is on Docker Hub by its shape.
fn is_default_registry_match(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some(("", _)) => false,
        Some(("docker.io" | "index.docker.io", _)) => true,
        Some((first, _)) => !first.contains(['.', ':']),
    }
}

fn go_urls_match(glob: &GoUrl, target: &GoUrl) -> Result<bool, BadPattern> {
    let (glob_labels, glob_port) = split_host(&glob.host);
    let (target_labels, target_port) = split_host(&target.host);
    if glob_port != target_port
        || glob_labels.len() != target_labels.len()
        || !target.path.starts_with(&glob.path)
    {
        return Ok(false);
    }
    for (pattern, label) in glob_labels.iter().zip(&target_labels) {
        if !go_glob_match(pattern, label)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The host's `.`-separated labels and its port, as kubelet's `SplitURL`: when Go's
/// `net.SplitHostPort` refuses the host, the whole host is split and the port is empty.
fn split_host(host: &str) -> (Vec<&str>, &str) {
    let (name, port) = go_split_host_port(host).unwrap_or((host, ""));
    (name.split('.').collect(), port)
}

/// `net.SplitHostPort`: `None` where Go returns an error.
fn go_split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let colon = hostport.rfind(':')?;
    // Where a stray '[' or ']' may no longer appear.
    let (host, open_from, close_from) = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        if end + 1 != colon {
            return None;
        }
        (&hostport[1..end], 1, end + 1)
    } else {
        let host = &hostport[..colon];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[open_from..].contains('[') || hostport[close_from..].contains(']') {
        return None;
    }
    Some((host, &hostport[colon + 1..]))
}

/// The parts of Go's `url.Parse` that decide what a registry URL's host and path are and
/// whether it is refused. `url` must start with `http://` or `https://`.
fn parse_go_url(url: &str) -> Result<GoUrl, &'static str> {
    if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("invalid control character in URL");
    }
    let without_fragment = url.split('#').next().unwrap_or_default();
    let rest = without_fragment
        .split_once("://")
        .map_or("", |(_, rest)| rest);
    let rest = rest.split('?').next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) if valid_userinfo(userinfo) => host,
        Some(_) => return Err("invalid userinfo"),
        None => authority,
    };
    Ok(GoUrl {
        host: parse_host(host)?,
        path: percent_decode(path, |_| true).ok_or("invalid URL escape in path")?,
    })
}

fn valid_userinfo(userinfo: &str) -> bool {
    userinfo
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b))
}

/// Go's `parseHost`: checks the port and the characters a host may hold, then decodes.
fn parse_host(host: &str) -> Result<String, &'static str> {
    let port_part = if host.starts_with('[') {
        let end = host.rfind(']').ok_or("missing ']' in host")?;
        &host[end + 1..]
    } else {
        host.rfind(':').map_or("", |i| &host[i..])
    };
    if !valid_optional_port(port_part) {
        return Err("invalid port after host");
    }
    if host
        .bytes()
        .any(|b| b.is_ascii() && b != b'%' && !host_byte_allowed(b))
    {
        return Err("invalid character in host name");
    }
    // Hosts may only escape non-ASCII bytes (and `%25`, the zone separator).
    percent_decode(host, |decoded| decoded >= 0x80 || decoded == b'%')
        .ok_or("invalid URL escape in host")
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    }
}

/// ASCII bytes Go lets through in a host unescaped (RFC 3986 sub-delims, `:`, brackets and
/// a few more Go tolerates); `*`, `?`, `[`, `]` make glob patterns possible in hosts.
fn host_byte_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"".contains(&b)
}

/// Decodes `%XX` escapes; `None` on a malformed escape or one `allowed` refuses.
fn percent_decode(input: &str, allowed: impl Fn(u8) -> bool) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let decoded = u8::from_str_radix(hex, 16).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !allowed(decoded) {
                return None;
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A malformed glob (`[` unclosed, trailing `\`), which Go reports as `ErrBadPattern`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadPattern;

/// One element of a Go `filepath.Match` pattern.
#[derive(Debug)]
enum GlobToken {
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`.
    AnyRun,
    /// `[...]` / `[^...]`: inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Go's `filepath.Match` on Unix. Since Go 1.16 the whole pattern is checked for syntax,
/// so parsing it up front gives the same errors; `glob::Pattern` differs (`[!...]`, `**`).
pub(super) fn go_glob_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let tokens = parse_glob(pattern)?;
    let name: Vec<char> = name.chars().collect();
    Ok(match_tokens(&tokens, &name))
}

fn parse_glob(pattern: &str) -> Result<Vec<GlobToken>, BadPattern> {
    let mut chars = pattern.chars().peekable();
    let mut tokens = Vec::new();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => GlobToken::AnyRun,
            '?' => GlobToken::AnyChar,
            '\\' => GlobToken::Literal(chars.next().ok_or(BadPattern)?),
            '[' => parse_class(&mut chars)?,
            other => GlobToken::Literal(other),
        });
    }
    Ok(tokens)
}

fn parse_class(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<GlobToken, BadPattern> {
    let negated = chars.next_if_eq(&'^').is_some();
    let mut ranges = Vec::new();
    loop {
        if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
            return Ok(GlobToken::Class { negated, ranges });
        }
        let lo = class_char(chars)?;
        let hi = if chars.next_if_eq(&'-').is_some() {
            class_char(chars)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) character inside `[...]`; like Go's `getEsc`, an unescaped `-` or
/// `]` here, or the pattern ending right after it, is malformed.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, BadPattern> {
    let c = match chars.next().ok_or(BadPattern)? {
        '-' | ']' => return Err(BadPattern),
        '\\' => chars.next().ok_or(BadPattern)?,
        c => c,
    };
    chars.peek().ok_or(BadPattern)?;
    Ok(c)
}

fn match_tokens(tokens: &[GlobToken], name: &[char]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return name.is_empty();
    };
    match token {
        GlobToken::AnyRun => (0..=name.len())
            .take_while(|&skip| skip == 0 || name[skip - 1] != '/')
            .any(|skip| match_tokens(rest, &name[skip..])),
        _ => match name.split_first() {
            Some((&c, name_rest)) => token_matches(token, c) && match_tokens(rest, name_rest),
            None => false,
        },
    }
}

fn token_matches(token: &GlobToken, c: char) -> bool {
    match token {
        GlobToken::Literal(l) => *l == c,
        GlobToken::AnyChar => c != '/',
        GlobToken::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        GlobToken::AnyRun => unreachable!("handled by match_tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_glob_matches_as_filepath_match() {
        let m = |p, n| go_glob_match(p, n).unwrap();
        assert!(m("*", "abc"));
        assert!(m("*", ""));
        assert!(m("app*", "app-prod"));
        assert!(!m("app*", "ap"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(m("*a*b", "aab"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("[\\]]", "]"));
        for bad in ["[", "a[", "[]", "[a-", "\\", "[-a]", "[a"] {
            assert_eq!(go_glob_match(bad, "a"), Err(BadPattern), "{bad}");
        }
    }

    #[test]
    fn urls_match_partial_label_globs() {
        let ecr = "*.dkr.ecr.*.amazonaws.com";
        assert!(urls_match(
            ecr,
            "123456789.dkr.ecr.us-east-1.amazonaws.com/app"
        ));
        assert!(urls_match(ecr, "123456789.dkr.ecr.us-east-1.amazonaws.com"));
        assert!(!urls_match(ecr, "123.dkr.ecr.amazonaws.com/app"));
        assert!(!urls_match(ecr, "a.123.dkr.ecr.eu.amazonaws.com/app"));
        assert!(urls_match("app*.k8s.io", "app-prod.k8s.io/x"));
        assert!(!urls_match("app*.k8s.io", "web.k8s.io/x"));
        assert!(urls_match("k8s.*", "k8s.io/x"));
        assert!(!urls_match("*.io", "registry.k8s.io/x"));
    }

    #[test]
    fn urls_match_ports_as_strings() {
        assert!(urls_match(
            "registry.io:8080/path",
            "registry.io:8080/path/app"
        ));
        assert!(!urls_match("registry.io:8080", "registry.io/app"));
        assert!(!urls_match("registry.io", "registry.io:8080/app"));
        assert!(!urls_match("registry.io:443", "registry.io/app"));
        assert!(urls_match("*.io:5000", "registry.io:5000/app"));
    }

    #[test]
    fn urls_match_paths_by_string_prefix() {
        assert!(urls_match("registry.io/team", "registry.io/team/app"));
        assert!(urls_match("registry.io/team", "registry.io/teamx/app"));
        assert!(!urls_match("registry.io/team", "registry.io/other/app"));
        assert!(!urls_match("registry.io/team", "registry.io"));
        assert!(urls_match("registry.io", "registry.io"));
        assert!(!urls_match("registry.io/", "registry.io"));
    }

    #[test]
    fn schemeless_parse_refuses_what_go_refuses() {
        let refused = [
            "registry.io:port",
            "bad host.io",
            "a.io/%zz",
            "t\t.io",
            "[::1",
            "[a-z].io",
        ];
        for bad in refused {
            assert!(parse_schemeless(bad).is_err(), "{bad}");
        }
        for good in [
            "*.io",
            "[::1]:5000/a",
            "registry.io:",
            "a[a-z].io",
            "a.io?x#y",
        ] {
            assert!(parse_schemeless(good).is_ok(), "{good}");
        }
        let url = parse_schemeless("user@registry.io:5000/a%2Fb?q").unwrap();
        assert_eq!(url.host, "registry.io:5000");
        assert_eq!(url.path, "/a/b");
    }

    #[test]
    fn split_host_follows_net_split_host_port() {
        assert_eq!(split_host("a.b:5000"), (vec!["a", "b"], "5000"));
        assert_eq!(split_host("a.b"), (vec!["a", "b"], ""));
        assert_eq!(split_host("a.b:"), (vec!["a", "b"], ""));
        assert_eq!(split_host("[::1]:5000"), (vec!["::1"], "5000"));
        assert_eq!(split_host("[::1]"), (vec!["[::1]"], ""));
    }

    #[test]
    fn keyring_prefers_longer_then_exact_keys() {
        let image = "a.example.com/team/app";
        let keys = ["a.example.com", "a.example.com/team", "*.example.com/team"];
        assert_eq!(first_matching_key(keys, image), Some("a.example.com/team"));
        // Reverse byte order, as kubelet: an exact host beats a glob even with a longer path.
        let keys = ["*.example.com/team/app", "a.example.com/team"];
        assert_eq!(first_matching_key(keys, image), Some("a.example.com/team"));
        let keys = ["https://a.example.com/v2/team", "other.io"];
        assert_eq!(
            first_matching_key(keys, image),
            Some("https://a.example.com/v2/team")
        );
        assert_eq!(first_matching_key(["other.io"], image), None);
    }

    #[test]
    fn docker_hub_images_fall_back_to_index_docker_io() {
        let keys = ["https://index.docker.io/v1/"];
        assert_eq!(
            first_matching_key(keys, "docker.io/library/busybox"),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(first_matching_key(keys, "quay.io/app"), None);
    }
}
