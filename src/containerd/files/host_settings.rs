//! One hosts.toml read as containerd reads it (`parseHostsFile` and `parseHostConfig` in
//! containerd's `core/remotes/docker/config/hosts.go`, the same in 1.6, 1.7 and 2.x): which
//! hosts it tries, in which order, and each host's URL, capabilities, TLS files, headers and
//! `override_path`, so credgate dials a host exactly where and how containerd would.
//!
//! - **Which hosts, in which order.** containerd 2.x tries the hosts written as table headers
//!   (`[host."…"]`, or a sub-table such as `[host."…".header]` alone), in the order of each
//!   host's first header ([`host_position`]); a host written only as an inline table or with
//!   dotted keys is parsed (and kept apart, [`HostsFile::untried`]) but never tried. `server`
//!   is tried last.
//! - **Whose host.** Each host keeps what marks it as credgate's (the `X-Credgate-Secret`
//!   header in any casing and shape, its values, and `X-Credgate-Mirror`), so
//!   [`HostSettings::owner`] tells credgate's hosts from the operator's the same way for
//!   install, doctor and the daemon.
//! - **The URL.** Without a leading `http`, `https://` is put in front. The path is cleaned,
//!   and `/v2` is appended unless it already ends in `/v2` or `override_path` is set (then the
//!   path is the API root as written). Query, fragment and user info are ignored, as containerd
//!   ignores them. credgate refuses a scheme other than `http`/`https`, a host that is not
//!   `host[:port]`, and percent-encoding in the path.
//! - **`ca`** is a path or a list of paths; **`client`** is a path (certificate and key in one
//!   file), or a list whose items are such paths or `[cert, key]` pairs. Relative paths are
//!   relative to the hosts.toml's directory.
//! - **Types** are checked as containerd's decoder checks them: a wrong type fails the whole
//!   file (containerd then ignores every host in it). Errors name the file, line and column,
//!   the host and the key, never a value (a header may hold a secret).
//! - **Bounds.** At most [`MAX_HOSTS`] hosts, [`MAX_LIST`] entries in any list and
//!   [`MAX_HEADERS`] header names per host; more is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

use super::credgate_hosts::{Owner, MIRROR_HEADER, SECRET_HEADER};
use super::ContainerdFileError;
use crate::duration::parse_go_duration;
use crate::identity::RegistryHost;
use crate::secret::Secret;
use crate::text_position::line_column;

/// Most hosts a hosts.toml may list (containerd has no limit; no real file comes close).
pub(crate) const MAX_HOSTS: usize = 64;
/// Most entries in a host's `ca`, `client`, `capabilities` or one header's values.
pub(crate) const MAX_LIST: usize = 16;
/// Most header names per host.
pub(crate) const MAX_HEADERS: usize = 64;

/// The scheme containerd dials a host with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum HostScheme {
    Http,
    Https,
}

impl HostScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            HostScheme::Http => "http",
            HostScheme::Https => "https",
        }
    }

    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            HostScheme::Http => 80,
            HostScheme::Https => 443,
        }
    }
}

/// What containerd may ask a host for; a host without `capabilities` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
    pub referrers: bool,
}

impl Capabilities {
    /// containerd's default, for a host without `capabilities`.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
        referrers: true,
    };

    /// The capability names, in containerd's order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.pull, "pull"),
            (self.resolve, "resolve"),
            (self.push, "push"),
            (self.referrers, "referrers"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }

    /// Only the capabilities a pull uses (`pull`, `resolve`): what a fronted host gets.
    pub fn for_pulls(self) -> Capabilities {
        Capabilities {
            pull: self.pull,
            resolve: self.resolve,
            push: false,
            referrers: false,
        }
    }
}

/// A client certificate and its key; without a key file, the key is in the certificate's file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientPair {
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
}

/// One host of a hosts.toml, with its settings resolved as containerd resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSettings {
    /// The table key exactly as the file writes it (`server`'s value for the server). A fronted
    /// host's `X-Credgate-Mirror` carries this.
    pub key: String,
    pub scheme: HostScheme,
    /// `host[:port]` as the URL writes it, lower-cased; user info dropped.
    pub authority: String,
    /// The request path prefix (containerd's `host.Path`): `/v2`, `/prefix/v2`, or with
    /// `override_path` the path as written (possibly empty).
    pub path: String,
    pub override_path: bool,
    pub capabilities: Capabilities,
    /// CA files (PEM), absolute.
    pub ca: Vec<PathBuf>,
    pub client: Vec<ClientPair>,
    pub skip_verify: Option<bool>,
    pub dial_timeout: Option<Duration>,
    /// Carries the `X-Credgate-Secret` header (in any casing, even with no value).
    pub secret_header: bool,
    /// Its `X-Credgate-Secret` values.
    pub secret_values: Vec<Secret>,
    /// The `X-Credgate-Mirror` values: the host a fronted host stands for.
    pub mirror_values: Vec<String>,
}

impl HostSettings {
    /// The host's URL as logs, errors and metrics may show it: scheme, host and the path as
    /// written, never user info, query or fragment (they could hold a credential).
    pub fn shown(&self) -> String {
        shown_key(&self.key)
    }

    /// `host[:port]` with the port always written (80 for http, 443 for https): what the
    /// operator named, as the SSRF allowance compares it.
    pub fn registry(&self) -> Option<RegistryHost> {
        let with_port = match split_port(&self.authority) {
            (_, Some(_)) => self.authority.clone(),
            (host, None) => format!("{host}:{}", self.scheme.default_port()),
        };
        RegistryHost::parse_authority(&with_port).ok()
    }

    /// The host's identity as caches and metrics key it: `scheme://host:port`, the port
    /// always written (the scheme's default when the URL gives none), so a plain-http host
    /// never shares an identity with an https one, whatever port either writes.
    pub fn origin(&self) -> String {
        let (host, port) = split_port(&self.authority);
        let port = port
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or(self.scheme.default_port());
        format!("{}://{host}:{port}", self.scheme.as_str())
    }

    /// May serve pulls (`pull` or `resolve`): the hosts install fronts.
    pub fn serves_pulls(&self) -> bool {
        self.capabilities.pull || self.capabilities.resolve
    }

    /// credgate's or the operator's, with the endpoint at `endpoint` (`http://<listen.mirror>`).
    pub fn owner(&self, endpoint: &str) -> Owner {
        Owner::of(&self.key, self.secret_header, &self.mirror_values, endpoint)
    }
}

/// A hosts.toml: the hosts containerd tries, in order, then `server` when it names one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HostsFile {
    pub hosts: Vec<HostSettings>,
    /// Hosts written only as dotted keys or inline tables, which containerd 1.x tries (by
    /// line) and 2.x never does; install refuses to front them.
    pub untried: Vec<HostSettings>,
    pub server: Option<HostSettings>,
}

impl HostsFile {
    /// Every host the file names, tried ones first.
    pub fn all_hosts(&self) -> impl Iterator<Item = &HostSettings> {
        self.hosts.iter().chain(&self.untried)
    }
}

/// `key` without user info, query or fragment, control characters escaped. User info goes
/// first, on the raw text, up to the last `@` anywhere: a password may hold `?`, `#` or `/`,
/// so no other split is safe before it (a path with `@` shows only what follows it).
pub(crate) fn shown_key(key: &str) -> String {
    let (scheme, rest) = match key.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, key),
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((_, after)) => ("…@", after),
        None => ("", rest),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let shown = match scheme {
        Some(scheme) => format!("{scheme}://{user}{rest}"),
        None => format!("{user}{rest}"),
    };
    one_line(&shown)
}

/// `text` with control characters escaped, so it can't break the log line or error it is
/// shown in.
fn one_line(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Reads a hosts.toml's text; `path` names it in errors and its directory anchors relative
/// `ca` and `client` paths.
pub(crate) fn read_hosts_file(path: &Path, text: &str) -> Result<HostsFile, ContainerdFileError> {
    let doc = ImDocument::parse(text).map_err(|e| super::parse_error(path, text, &e))?;
    let reader = Reader {
        path,
        text,
        base: path.parent().unwrap_or(Path::new("/")),
    };
    let root: &Table = doc.as_table();
    let mut hosts = Vec::new();
    let mut untried = Vec::new();
    if let Some(item) = root.get("host") {
        let table = item
            .as_table_like()
            .ok_or_else(|| reader.error(item, "`host` must be a table of hosts"))?;
        if table.len() > MAX_HOSTS {
            return Err(reader.error(item, &format!("more than {MAX_HOSTS} hosts")));
        }
        for (key, host) in table.iter() {
            let settings = reader.host(key, host)?;
            match host_position(host) {
                Some(position) => hosts.push((position, settings)),
                None => untried.push(settings),
            }
        }
    }
    hosts.sort_by_key(|(position, _)| *position);
    let server = match root.get("server") {
        None => None,
        Some(item) => {
            let url = item
                .as_str()
                .ok_or_else(|| reader.error(item, "`server` must be a string"))?;
            // An empty server is containerd's default host; the caller knows which that is.
            (!url.is_empty())
                .then(|| reader.settings(url, "server", root, item))
                .transpose()?
        }
    };
    Ok(HostsFile {
        hosts: hosts.into_iter().map(|(_, settings)| settings).collect(),
        untried,
        server,
    })
}

/// Where a host's first table header is, when it has one: an explicit `[host."…"]`, or the
/// first of its sub-table headers (containerd 2.x takes every `[host."…"…]` header as that
/// host). `None` for a host written only as dotted keys or an inline table, never tried.
pub(crate) fn host_position(item: &Item) -> Option<usize> {
    let table = item.as_table()?;
    let own = (!table.is_implicit() && !table.is_dotted())
        .then(|| table.position())
        .flatten();
    let children = table.iter().filter_map(|(_, child)| host_position(child));
    own.into_iter().chain(children).min()
}

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
}

impl Reader<'_> {
    fn error(&self, item: &Item, message: &str) -> ContainerdFileError {
        let (line, column) = line_column(self.text, item.span().map_or(0, |s| s.start));
        ContainerdFileError::Parse {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.to_string(),
        }
    }

    fn host(&self, key: &str, item: &Item) -> Result<HostSettings, ContainerdFileError> {
        let table = item.as_table_like().ok_or_else(|| {
            self.error(item, &format!("host {}: must be a table", shown_key(key)))
        })?;
        self.settings(key, key, table, item)
    }

    /// The settings in `table` for the host `url` (`name` is how errors call it).
    fn settings(
        &self,
        url: &str,
        name: &str,
        table: &dyn TableLike,
        at: &Item,
    ) -> Result<HostSettings, ContainerdFileError> {
        let shown = if name == "server" {
            "server".to_string()
        } else {
            format!("host {}", shown_key(name))
        };
        let fail = |item: &Item, setting: &str, message: &str| {
            self.error(item, &format!("{shown}: `{setting}` {message}"))
        };
        let override_path = match table.get("override_path") {
            None => false,
            Some(item) => item
                .as_bool()
                .ok_or_else(|| fail(item, "override_path", "must be true or false"))?,
        };
        let url_error = |message: &str| fail(at, "url", message);
        let (scheme, authority, path) = parse_url(url, override_path).map_err(url_error)?;
        let skip_verify = match table.get("skip_verify") {
            None => None,
            Some(item) => Some(
                item.as_bool()
                    .ok_or_else(|| fail(item, "skip_verify", "must be true or false"))?,
            ),
        };
        let capabilities = match table.get("capabilities") {
            None => Capabilities::ALL,
            Some(item) => capabilities(item).map_err(|m| fail(item, "capabilities", m))?,
        };
        let ca = match table.get("ca") {
            None => Vec::new(),
            Some(item) => self.ca(item).map_err(|m| fail(item, "ca", m))?,
        };
        let client = match table.get("client") {
            None => Vec::new(),
            Some(item) => self.client(item).map_err(|m| fail(item, "client", m))?,
        };
        let dial_timeout = match table.get("dial_timeout") {
            None => None,
            Some(item) => {
                let text = item
                    .as_str()
                    .ok_or_else(|| fail(item, "dial_timeout", "must be a string"))?;
                match text {
                    "" => None,
                    text => Some(parse_go_duration(text).map_err(|_| {
                        fail(item, "dial_timeout", "is not a duration such as \"5s\"")
                    })?),
                }
            }
        };
        let headers = match table.get("header") {
            None => Vec::new(),
            Some(item) => headers(item).map_err(|m| fail(item, "header", &m))?,
        };
        let named = |name: &'static str| {
            headers
                .iter()
                .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
        };
        let values = |name| -> Vec<String> {
            named(name)
                .flat_map(|(_, values)| values.iter().cloned())
                .collect()
        };
        Ok(HostSettings {
            key: url.to_string(),
            scheme,
            authority,
            path,
            override_path,
            capabilities,
            ca,
            client,
            skip_verify,
            dial_timeout,
            secret_header: named(SECRET_HEADER).next().is_some(),
            secret_values: values(SECRET_HEADER).into_iter().map(Secret::new).collect(),
            mirror_values: values(MIRROR_HEADER),
        })
    }

    fn absolute(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn ca(&self, item: &Item) -> Result<Vec<PathBuf>, &'static str> {
        const SHAPE: &str = "must be a path or a list of paths";
        match item.as_value() {
            Some(Value::String(path)) => Ok(vec![self.absolute(path.value())]),
            Some(Value::Array(paths)) => {
                bounded(paths.len())?;
                paths
                    .iter()
                    .map(|p| p.as_str().map(|p| self.absolute(p)).ok_or(SHAPE))
                    .collect()
            }
            _ => Err(SHAPE),
        }
    }

    fn client(&self, item: &Item) -> Result<Vec<ClientPair>, &'static str> {
        const SHAPE: &str = "must be a path, or a list of paths and [certificate, key] pairs";
        let single = |path: &str| ClientPair {
            cert: self.absolute(path),
            key: None,
        };
        match item.as_value() {
            Some(Value::String(path)) => Ok(vec![single(path.value())]),
            Some(Value::Array(entries)) => {
                bounded(entries.len())?;
                entries
                    .iter()
                    .map(|entry| match entry {
                        Value::String(path) => Ok(single(path.value())),
                        Value::Array(pair) => {
                            let paths: Vec<&str> = pair
                                .iter()
                                .map(|p| p.as_str().ok_or(SHAPE))
                                .collect::<Result<_, _>>()?;
                            match paths[..] {
                                [cert, key] => Ok(ClientPair {
                                    cert: self.absolute(cert),
                                    key: Some(self.absolute(key)),
                                }),
                                _ => Err("pairs must be exactly [certificate, key]"),
                            }
                        }
                        _ => Err(SHAPE),
                    })
                    .collect()
            }
            _ => Err(SHAPE),
        }
    }
}

fn bounded(len: usize) -> Result<(), &'static str> {
    if len > MAX_LIST {
        Err("has more than 16 entries")
    } else {
        Ok(())
    }
}

fn capabilities(item: &Item) -> Result<Capabilities, &'static str> {
    let names = item
        .as_array()
        .ok_or("must be a list of pull, resolve, push or referrers")?;
    bounded(names.len())?;
    // An empty list is no list: containerd then allows everything.
    if names.is_empty() {
        return Ok(Capabilities::ALL);
    }
    let mut capabilities = Capabilities::default();
    for name in names.iter() {
        let name = name
            .as_str()
            .ok_or("must be a list of pull, resolve, push or referrers")?;
        match name.to_ascii_lowercase().as_str() {
            "pull" => capabilities.pull = true,
            "resolve" => capabilities.resolve = true,
            "push" => capabilities.push = true,
            "referrers" => capabilities.referrers = true,
            _ => return Err("names an unknown capability (pull, resolve, push or referrers)"),
        }
    }
    Ok(capabilities)
}

/// Header names and their values (a string or a list of strings each).
fn headers(item: &Item) -> Result<Vec<(String, Vec<String>)>, String> {
    let table = item.as_table_like().ok_or("must be a table")?;
    if table.len() > MAX_HEADERS {
        return Err(format!("has more than {MAX_HEADERS} headers"));
    }
    table
        .iter()
        .map(|(name, value)| {
            let shown = one_line(name);
            let shape = || format!("{shown}: must be a string or a list of strings");
            let values = match value.as_value() {
                Some(Value::String(s)) => vec![s.value().clone()],
                Some(Value::Array(values)) => {
                    bounded(values.len()).map_err(|m| format!("{shown}: {m}"))?;
                    values
                        .iter()
                        .map(|v| v.as_str().map(str::to_string).ok_or_else(shape))
                        .collect::<Result<_, _>>()?
                }
                _ => return Err(shape()),
            };
            Ok((name.to_string(), values))
        })
        .collect()
}

/// containerd's reading of a host URL: scheme, `host[:port]` and the request path prefix.
fn parse_url(url: &str, override_path: bool) -> Result<(HostScheme, String, String), &'static str> {
    // Go's url.Parse refuses control characters, so containerd never dials such a host.
    if url.chars().any(|c| c.is_ascii_control()) {
        return Err("has a control character, which containerd refuses");
    }
    let full = if url.starts_with("http") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let (scheme, rest) = full
        .split_once("://")
        .ok_or("is not a URL (scheme://host[:port][/path])")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => HostScheme::Https,
        "http" => HostScheme::Http,
        _ => return Err("has a scheme other than http or https"),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    RegistryHost::parse_authority(host).map_err(|_| "does not name a valid host[:port]")?;
    if path.contains('%') {
        return Err("has percent-encoding in its path, which credgate does not support");
    }
    let path = if path.is_empty() {
        if override_path {
            String::new()
        } else {
            "/v2".to_string()
        }
    } else {
        let cleaned = clean_path(path);
        if cleaned.ends_with("/v2") || override_path {
            cleaned
        } else {
            format!("{cleaned}/v2")
        }
    };
    Ok((scheme, host.to_ascii_lowercase(), path))
}

/// Go's `path.Clean` for an absolute path: no empty, `.` or `..` segments, no trailing `/`
/// (`/` stays `/`).
pub(crate) fn clean_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

/// `host` and its port, if `authority` writes one.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') && !port.is_empty() => (host, Some(port)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/containerd/certs.d/registry.test/hosts.toml";

    fn read(text: &str) -> HostsFile {
        read_hosts_file(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn error(text: &str) -> String {
        read_hosts_file(Path::new(FILE), text)
            .expect_err(text)
            .to_string()
    }

    fn one(text: &str) -> HostSettings {
        let mut file = read(text);
        assert_eq!(file.hosts.len(), 1, "{file:?}");
        file.hosts.remove(0)
    }

    #[test]
    fn urls_resolve_as_containerd_resolves_them() {
        // (key, override_path, scheme, authority, path)
        let cases = [
            ("https://m.test", false, "https", "m.test", "/v2"),
            ("m.test", false, "https", "m.test", "/v2"),
            ("m.test:5000", false, "https", "m.test:5000", "/v2"),
            ("http://m.test:5000", false, "http", "m.test:5000", "/v2"),
            ("https://m.test/", false, "https", "m.test", "//v2"),
            ("https://m.test/v2", false, "https", "m.test", "/v2"),
            ("https://m.test/v2/", false, "https", "m.test", "/v2"),
            (
                "https://m.test/prefix",
                false,
                "https",
                "m.test",
                "/prefix/v2",
            ),
            (
                "https://m.test/a/./b/../c/",
                false,
                "https",
                "m.test",
                "/a/c/v2",
            ),
            (
                "https://m.test/v2/hub",
                false,
                "https",
                "m.test",
                "/v2/hub/v2",
            ),
            ("https://m.test/v2/hub", true, "https", "m.test", "/v2/hub"),
            ("https://m.test", true, "https", "m.test", ""),
            (
                "https://u:p@M.Test:8443/x?q=1#f",
                false,
                "https",
                "m.test:8443",
                "/x/v2",
            ),
            ("https://[::1]:5000", false, "https", "[::1]:5000", "/v2"),
        ];
        for (key, override_path, scheme, authority, path) in cases {
            let text = format!("[host.\"{key}\"]\n  override_path = {override_path}\n");
            let host = one(&text);
            assert_eq!(host.key, key);
            assert_eq!(host.scheme.as_str(), scheme, "{key}");
            assert_eq!(host.authority, authority, "{key}");
            assert_eq!(host.path, path, "{key}");
        }
    }

    #[test]
    fn a_bad_url_names_the_file_line_and_host_without_user_info() {
        for (key, words) in [
            ("httpx://m.test", "scheme other than http or https"),
            // No leading `http`: containerd reads `https://ftp://m.test`, whose host is `ftp:`.
            ("ftp://m.test", "valid host"),
            ("https://", "valid host"),
            ("https://m_test!", "valid host"),
            ("https://p4ss@:1/x", "valid host"),
            ("https://m.test/a%2fb", "percent-encoding"),
        ] {
            let text = format!("server = \"https://r.test\"\n[host.\"{key}\"]\n");
            let err = error(&text);
            assert!(err.starts_with(&format!("{FILE}:2:")), "{err}");
            assert!(err.contains(words), "{key}: {err}");
            assert!(!err.contains("p4ss"), "{err}");
        }
    }

    #[test]
    fn ca_and_client_take_every_containerd_shape_relative_to_the_file() {
        let host = one(concat!(
            "[host.\"https://m.test\"]\n",
            "  ca = \"ca.pem\"\n",
            "  client = \"/etc/certs/both.pem\"\n",
        ));
        let dir = Path::new(FILE).parent().unwrap();
        assert_eq!(host.ca, [dir.join("ca.pem")]);
        assert_eq!(
            host.client,
            [ClientPair {
                cert: "/etc/certs/both.pem".into(),
                key: None
            }]
        );
        let host = one(concat!(
            "[host.\"https://m.test\"]\n",
            "  ca = [\"/etc/a.pem\", \"b.pem\"]\n",
            "  client = [\"c.pem\", [\"d.crt\", \"/k/d.key\"]]\n",
        ));
        assert_eq!(host.ca, [PathBuf::from("/etc/a.pem"), dir.join("b.pem")]);
        assert_eq!(
            host.client,
            [
                ClientPair {
                    cert: dir.join("c.pem"),
                    key: None
                },
                ClientPair {
                    cert: dir.join("d.crt"),
                    key: Some("/k/d.key".into())
                },
            ]
        );
        let host = one("[host.\"https://m.test\"]\n  client = [[\"a.crt\", \"a.key\"]]\n");
        assert_eq!(host.client[0].key, Some(dir.join("a.key")));
    }

    #[test]
    fn wrong_shapes_are_refused_naming_host_and_key() {
        for (setting, words) in [
            ("ca = 1", "`ca` must be a path or a list of paths"),
            ("ca = [\"a\", 2]", "`ca` must be a path"),
            ("client = {a = 1}", "`client` must be a path"),
            ("client = [[\"a\"]]", "exactly [certificate, key]"),
            (
                "client = [[\"a\", \"b\", \"c\"]]",
                "exactly [certificate, key]",
            ),
            ("client = [[\"a\", 1]]", "`client` must be a path"),
            (
                "skip_verify = \"yes\"",
                "`skip_verify` must be true or false",
            ),
            ("override_path = 1", "`override_path` must be true or false"),
            ("capabilities = \"pull\"", "`capabilities` must be a list"),
            ("capabilities = [\"pull\", \"fly\"]", "unknown capability"),
            (
                "dial_timeout = \"soon\"",
                "`dial_timeout` is not a duration",
            ),
            ("header = \"x\"", "`header` must be a table"),
            ("header = { X-Token = 5 }", "X-Token: must be a string"),
        ] {
            let text = format!("[host.\"https://m.test\"]\n  {setting}\n");
            let err = error(&text);
            assert!(err.starts_with(&format!("{FILE}:2:")), "{setting}: {err}");
            assert!(err.contains("host https://m.test: "), "{err}");
            assert!(err.contains(words), "{setting}: {err}");
        }
    }

    #[test]
    fn lists_and_hosts_are_bounded() {
        let many: Vec<String> = (0..17).map(|i| format!("\"{i}.pem\"")).collect();
        let err = error(&format!(
            "[host.\"https://m.test\"]\n  ca = [{}]\n",
            many.join(", ")
        ));
        assert!(err.contains("more than 16"), "{err}");
        let hosts: String = (0..65)
            .map(|i| format!("[host.\"https://m{i}.test\"]\n"))
            .collect();
        assert!(error(&hosts).contains("more than 64 hosts"));
        let headers: String = (0..65).map(|i| format!("  X-H{i} = \"v\"\n")).collect();
        let err = error(&format!("[host.\"https://m.test\".header]\n{headers}"));
        assert!(err.contains("more than 64 headers"), "{err}");
    }

    #[test]
    fn a_header_value_is_never_quoted_in_an_error() {
        let err =
            error("[host.\"https://m.test\".header]\n  Authorization = [\"Basic c2VjcmV0\", 7]\n");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(err.contains("Authorization"), "{err}");
    }

    #[test]
    fn capabilities_skip_verify_timeout_and_headers_are_read() {
        let host = one(concat!(
            "[host.\"http://m.test:5000\"]\n",
            "  capabilities = [\"Pull\", \"resolve\"]\n",
            "  skip_verify = true\n",
            "  dial_timeout = \"3s\"\n",
            "  [host.\"http://m.test:5000\".header]\n",
            "    x-credgate-mirror = [\"https://a.test\", \"https://b.test\"]\n",
        ));
        assert_eq!(host.capabilities.names(), ["pull", "resolve"]);
        assert!(host.serves_pulls());
        assert_eq!(host.skip_verify, Some(true));
        assert_eq!(host.dial_timeout, Some(Duration::from_secs(3)));
        assert!(!host.secret_header && host.secret_values.is_empty());
        assert_eq!(host.mirror_values, ["https://a.test", "https://b.test"]);
        let host = one("[host.\"https://m.test\"]\n  capabilities = []\n");
        assert_eq!(host.capabilities, Capabilities::ALL);
        let host = one("[host.\"https://m.test\"]\n  capabilities = [\"push\"]\n");
        assert!(!host.serves_pulls());
        let host = one("[host.\"http://127.0.0.1:5008\".header]\n  X-CREDGATE-SECRET = \"s\"\n");
        assert!(host.secret_header);
        assert_eq!(host.secret_values, [Secret::new("s")]);
        assert!(!format!("{host:?}").contains("\"s\""), "{host:?}");
    }

    #[test]
    fn the_secret_header_marks_a_host_in_every_shape_even_without_a_value() {
        let file = read(concat!(
            "[host.\"http://a:1\"]\n  header = { x-credgate-secret = \"one\" }\n",
            "[host.\"http://b:1\".header]\n  X-Credgate-Secret = [\"two\", \"three\"]\n",
            "[host.\"http://c:1\".header]\n  X-Credgate-Secret = []\n",
            "[host.\"http://d:1\"]\n",
        ));
        let marks: Vec<(bool, usize)> = file
            .hosts
            .iter()
            .map(|h| (h.secret_header, h.secret_values.len()))
            .collect();
        assert_eq!(marks, [(true, 1), (true, 2), (true, 0), (false, 0)]);
        let dotted = read("host.\"http://old:1\".header.X-Credgate-Secret = \"old\"\n");
        assert!(dotted.hosts.is_empty());
        assert!(dotted.untried[0].secret_header);
    }

    #[test]
    fn only_table_headers_are_tried_in_header_order_then_the_server() {
        let file = read(concat!(
            "server = \"https://registry.test\"\n",
            "ca = \"server-ca.pem\"\n",
            "[host.\"https://b.test\".header]\n",
            "  X-A = \"1\"\n",
            "[host.\"https://a.test\"]\n",
            "  header = { X-B = \"2\" }\n",
            "[host.\"https://b.test\"]\n",
            "  capabilities = [\"pull\"]\n",
            "[host.\"https://c.test\"]\n",
            "  \"https://inline.test\" = { capabilities = [\"pull\"] }\n",
        ));
        let keys: Vec<&str> = file.hosts.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["https://b.test", "https://a.test", "https://c.test"]);
        assert!(file.hosts[0].capabilities.pull && !file.hosts[0].capabilities.resolve);
        let server = file.server.unwrap();
        assert_eq!(server.key, "https://registry.test");
        assert_eq!(server.ca.len(), 1);
        assert!(file.untried.is_empty());

        // Dotted keys and inline tables are parsed (a wrong type still fails the file) but
        // containerd 2.x never tries them.
        let file = read("host.\"https://dotted.test\".capabilities = [\"pull\"]\n");
        assert!(file.hosts.is_empty(), "{file:?}");
        assert_eq!(file.untried[0].key, "https://dotted.test");
        let file = read("host = { \"https://inline.test\" = { capabilities = [\"pull\"] } }\n");
        assert!(file.hosts.is_empty(), "{file:?}");
        assert_eq!(file.untried.len(), 1);
        // A header after dotted keys is still a header: containerd 2.x tries that host.
        let file = read(concat!(
            "host.\"https://dotted.test\".capabilities = [\"push\"]\n",
            "[host.\"https://header.test\"]\n",
        ));
        let keys: Vec<&str> = file.hosts.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["https://header.test"]);
        assert_eq!(file.untried[0].key, "https://dotted.test");
        assert!(error("host = { \"https://i.test\" = { ca = 1 } }\n").contains("`ca`"));
        assert!(read("").server.is_none());
        assert!(error("server = 1\n").contains("`server` must be a string"));
    }

    #[test]
    fn shown_keys_hide_user_info_and_queries() {
        assert_eq!(
            shown_key("https://u:pw@m.test/x?t=1#f"),
            "https://…@m.test/x"
        );
        assert_eq!(shown_key("m.test:5000"), "m.test:5000");
        assert_eq!(shown_key("https://a\nb/\u{7f}"), "https://a\\nb/\\u{7f}");
        assert_eq!(shown_key("u@m.test"), "…@m.test");
    }

    #[test]
    fn a_password_with_query_fragment_or_slash_characters_is_never_shown() {
        for (key, shown) in [
            ("https://user:p?ss@m.test", "https://…@m.test"),
            ("https://user:p#ss@m.test/x?q=1", "https://…@m.test/x"),
            (
                "https://user:p/ss@m.test:5000/v2",
                "https://…@m.test:5000/v2",
            ),
            ("user:p?ss@m.test", "…@m.test"),
        ] {
            assert_eq!(shown_key(key), shown, "{key}");
        }
        // The file's error for such a host shows it the same way.
        let err = error("[host.\"https://user:p?ss@m.test\"]\n");
        assert!(err.contains("https://…@m.test"), "{err}");
        assert!(!err.contains("user") && !err.contains("p?ss"), "{err}");
    }

    #[test]
    fn a_control_character_in_a_host_url_is_refused_as_containerd_refuses_it() {
        let err = error("[host.\"http://localhost/a\\nINFO forged line\"]\n");
        assert!(err.contains("control character"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn origins_keep_the_scheme_and_always_write_the_port() {
        for (key, origin) in [
            ("http://m.test", "http://m.test:80"),
            ("http://m.test:443", "http://m.test:443"),
            ("http://M.test:0443/x", "http://m.test:443"),
            ("https://m.test", "https://m.test:443"),
            ("https://u:p@m.test:443/v2", "https://m.test:443"),
            ("m.test:5000", "https://m.test:5000"),
            ("http://[::1]", "http://[::1]:80"),
        ] {
            let host = one(&format!("[host.\"{key}\"]\n"));
            assert_eq!(host.origin(), origin, "{key}");
        }
    }

    #[test]
    fn the_registry_always_carries_the_port_dialled() {
        let host = one("[host.\"http://m.test\"]\n");
        assert_eq!(host.registry().unwrap().to_string(), "m.test:80");
        let host = one("[host.\"https://m.test\"]\n");
        assert_eq!(host.registry().unwrap().to_string(), "m.test");
        let host = one("[host.\"https://[::1]:5000\"]\n");
        assert_eq!(host.registry().unwrap().to_string(), "[::1]:5000");
    }
}
