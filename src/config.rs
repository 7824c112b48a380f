//! credgate's config file: what the daemon listens on, where containerd's hosts directory is
//! and how each mirror there is credentialed, and, in file order, where credentials come from.
//! Errors name the file, line and column, and never quote a value from the file.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::containerd::files::DEFAULT_HOSTS_DIR;
use crate::duration::parse_go_duration;
use crate::identity::{RegistryHost, Scope};
use crate::parser_message::without_values;
use crate::secret::Secret;
use crate::text_position::{line_column, Lines};

/// Used when neither `--config` nor `$CREDGATE_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/credgate/config.toml";

const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; `None` for the built-in default.
    pub path: Option<PathBuf>,
    pub listen: Listen,
    pub helpers: HelperSettings,
    pub upstream: UpstreamSettings,
    pub containerd: ContainerdSettings,
    /// `[[mirror]]` entries: which credential each mirror host gets (by default its own).
    pub mirrors: Vec<MirrorEntry>,
    /// Credential sources in the order the file lists them; ties in ranking go to the first.
    pub sources: Vec<SourceEntry>,
}

/// Where containerd's files are, as the daemon reads them (`[containerd]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdSettings {
    /// The hosts directory containerd reads (its registry `config_path`): the daemon reads
    /// each registry's hosts.toml there to know which mirrors it may dial.
    pub hosts_dir: PathBuf,
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        Self {
            hosts_dir: PathBuf::from(DEFAULT_HOSTS_DIR),
        }
    }
}

/// A `[[mirror]]` entry: which credential a mirror named in hosts.toml is sent.
#[derive(Debug, Clone)]
pub struct MirrorEntry {
    /// Compared with the `host[:port]` a hosts.toml host URL writes (`:443` or not alike for
    /// https; with `plain_http`, the port always written, 80 when none is).
    pub host: RegistryHost,
    pub credentials: MirrorCredentials,
    /// The entry is for the mirror's `http://` URL, and its credential may go in cleartext;
    /// without it the entry is for `https://` only, so no credential ever reaches plain http
    /// on the strength of an entry that did not say so.
    pub plain_http: bool,
    pub location: Location,
}

/// Whose credential a mirror gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorCredentials {
    /// The keychain's credential for the mirror's own host and the repository it serves.
    #[default]
    Own,
    /// The upstream registry's credential (`ns` and the repository), for mirrors that
    /// forward auth.
    Upstream,
}

impl std::fmt::Display for MirrorCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MirrorCredentials::Own => "own",
            MirrorCredentials::Upstream => "upstream",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub socket: PathBuf,
    pub mirror: SocketAddr,
    pub mirror_secret_file: PathBuf,
    pub metrics: SocketAddr,
    pub allowed_uids: Vec<u32>,
}

impl Listen {
    /// The endpoint's URL as hosts.toml names it (`install` writes it, `doctor` looks for it).
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.mirror)
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/credgate/credgate.sock"),
            mirror: SocketAddr::from(([127, 0, 0, 1], 5008)),
            mirror_secret_file: PathBuf::from("/etc/credgate/mirror-secret"),
            metrics: SocketAddr::from(([127, 0, 0, 1], 9108)),
            allowed_uids: vec![0],
        }
    }
}

/// How credential helpers are run.
#[derive(Debug, Clone)]
pub struct HelperSettings {
    /// A helper still running after this is killed, with its process group.
    pub timeout: Duration,
}

impl Default for HelperSettings {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_HELPER_TIMEOUT,
        }
    }
}

/// What the pull-through endpoint may reach beyond the defaults (see docs/design.md's security
/// rules): upstreams on loopback, link-local, private or metadata addresses are refused, and
/// token realms must be on the upstream's own domain, unless listed here. A `[[registry]]`
/// entry with an exact host also allows that host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// Hosts (`host[:port]`) the endpoint may dial even when they resolve to non-public addresses.
    pub allow_private: Vec<String>,
    /// Token realm hosts allowed although they are not on the upstream's own domain.
    pub allow_realm_hosts: Vec<String>,
    /// Whose SHA-256 checks content addressed by digest as it streams to the client.
    pub verify_digests: DigestVerification,
}

/// `[upstream] verify_digests`: when the endpoint hashes a blob (or a manifest by digest) as it
/// streams. The check against a declared `Content-Length`, upstream resets and idle cut-offs
/// apply either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestVerification {
    /// Every whole answer is hashed, whoever asked.
    Always,
    /// Skipped when the client's `User-Agent` says containerd, which verifies every blob
    /// against its digest before it commits it; the gate caches nothing, so a client that
    /// claims to be containerd only drops its own check. The default: hashing again what
    /// containerd hashes costs about 1 CPU-s/GiB and 12–25% of a 1 GiB pull's time on a
    /// 2-core node (README "Digest verification").
    #[default]
    UnlessContainerd,
}

#[derive(Debug, Clone)]
pub enum SourceEntry {
    Registry(RegistryEntry),
    DockerConfig(DockerConfigEntry),
    KubeletProvider(KubeletProviderEntry),
}

/// Where in the config file an entry is, for `explain` (`/etc/credgate/config.toml:12`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// A `[[registry]]` entry: one scope and one way to get its secret.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    pub scope: Scope,
    pub username: String,
    pub secret: SecretSpec,
    pub ca_file: Option<PathBuf>,
    pub location: Location,
}

/// Where a `[[registry]]` entry's secret is.
#[derive(Debug, Clone)]
pub enum SecretSpec {
    Password(Secret),
    PasswordFile(PathBuf),
    IdentityToken(Secret),
    IdentityTokenFile(PathBuf),
    RegistryToken(Secret),
    RegistryTokenFile(PathBuf),
    /// A docker credential helper: a name (`pass` runs `docker-credential-pass`) or a path.
    Helper(String),
}

#[derive(Debug, Clone)]
pub struct DockerConfigEntry {
    pub path: PathBuf,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub struct KubeletProviderEntry {
    /// kubelet's `CredentialProviderConfig` (YAML or JSON).
    pub config: PathBuf,
    /// The directory holding the plugin executables (kubelet's `--image-credential-provider-bin-dir`).
    pub bin_dir: PathBuf,
    pub location: Location,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Listen,
    #[serde(default)]
    helpers: RawHelpers,
    #[serde(default)]
    upstream: UpstreamSettings,
    #[serde(default)]
    containerd: ContainerdSettings,
    #[serde(default)]
    mirror: Vec<Spanned<RawMirror>>,
    #[serde(default)]
    registry: Vec<Spanned<RawRegistry>>,
    #[serde(default)]
    docker_config: Vec<Spanned<RawDockerConfig>>,
    #[serde(default)]
    kubelet_provider: Vec<Spanned<RawKubeletProvider>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHelpers {
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(rename = "match")]
    scope: Spanned<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    identity_token: Option<String>,
    identity_token_file: Option<PathBuf>,
    registry_token: Option<String>,
    registry_token_file: Option<PathBuf>,
    helper: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    host: Spanned<String>,
    #[serde(default)]
    credentials: MirrorCredentials,
    #[serde(default)]
    plain_http: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDockerConfig {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubeletProvider {
    config: PathBuf,
    bin_dir: PathBuf,
}

impl Config {
    /// The config used when no file exists: default listeners and root's docker config.
    pub fn builtin() -> Self {
        Self {
            path: None,
            listen: Listen::default(),
            helpers: HelperSettings::default(),
            upstream: UpstreamSettings::default(),
            containerd: ContainerdSettings::default(),
            mirrors: Vec::new(),
            sources: vec![SourceEntry::DockerConfig(DockerConfigEntry {
                path: PathBuf::from("/root/.docker/config.json"),
                location: Location {
                    path: PathBuf::from("<built-in default>"),
                    line: 0,
                },
            })],
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let at = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        // toml's message quotes the offending value, which may be a secret in the wrong type.
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| at(e.span(), without_values(e.message())))?;
        let lines = Lines::new(text);
        let location = |span: &Range<usize>| Location {
            path: path.to_path_buf(),
            line: lines.line_of(span.start),
        };
        let helpers = match raw.helpers.timeout {
            None => HelperSettings::default(),
            Some(t) => HelperSettings {
                timeout: parse_go_duration(t.get_ref())
                    .map_err(|e| at(Some(t.span()), e.to_string()))?,
            },
        };
        let mut sources: Vec<(usize, SourceEntry)> = Vec::new();
        for entry in raw.registry {
            let span = entry.span();
            let registry = entry
                .into_inner()
                .validate(location(&span))
                .map_err(|(span, message)| at(span, message))?;
            sources.push((span.start, SourceEntry::Registry(registry)));
        }
        for entry in raw.docker_config {
            let span = entry.span();
            let path = entry.into_inner().path;
            let location = location(&span);
            sources.push((
                span.start,
                SourceEntry::DockerConfig(DockerConfigEntry { path, location }),
            ));
        }
        for entry in raw.kubelet_provider {
            let span = entry.span();
            let RawKubeletProvider { config, bin_dir } = entry.into_inner();
            let location = location(&span);
            let provider = KubeletProviderEntry {
                config,
                bin_dir,
                location,
            };
            sources.push((span.start, SourceEntry::KubeletProvider(provider)));
        }
        sources.sort_by_key(|(start, _)| *start);
        let mut mirrors: Vec<MirrorEntry> = Vec::new();
        for entry in raw.mirror {
            let location = location(&entry.span());
            let RawMirror {
                host,
                credentials,
                plain_http,
            } = entry.into_inner();
            let span = Some(host.span());
            let written = host.get_ref();
            if written.contains("://") || written.contains('/') {
                return Err(at(
                    span,
                    "[[mirror]] host must be host[:port], without scheme or path".to_string(),
                ));
            }
            let mut host = RegistryHost::parse_authority(written)
                .map_err(|reason| at(span.clone(), format!("[[mirror]] host: {reason}")))?;
            if plain_http && host.port().is_none() {
                // Plain http's identity writes its port: 80 unless another is given, never 443.
                let bare = !written
                    .trim_end_matches(|c: char| c.is_ascii_digit())
                    .ends_with(':');
                if !bare {
                    return Err(at(
                        span,
                        "[[mirror]] host: plain_http on port 443, the https port; name the \
                         port the plain-http mirror listens on"
                            .to_string(),
                    ));
                }
                host = RegistryHost::parse_authority(&format!("{written}:80"))
                    .map_err(|reason| at(span.clone(), format!("[[mirror]] host: {reason}")))?;
            }
            let scheme = if plain_http { "http" } else { "https" };
            if mirrors
                .iter()
                .any(|m| m.host == host && m.plain_http == plain_http)
            {
                return Err(at(
                    span,
                    format!("[[mirror]] {scheme}://{host} is listed twice; keep one entry"),
                ));
            }
            mirrors.push(MirrorEntry {
                host,
                credentials,
                plain_http,
                location,
            });
        }
        Ok(Self {
            path: Some(path.to_path_buf()),
            listen: raw.listen,
            helpers,
            upstream: raw.upstream,
            containerd: raw.containerd,
            mirrors,
            sources: sources.into_iter().map(|(_, s)| s).collect(),
        })
    }
}

type SpannedMessage = (Option<Range<usize>>, String);

impl RawRegistry {
    fn validate(self, location: Location) -> Result<RegistryEntry, SpannedMessage> {
        let scope_span = Some(self.scope.span());
        let scope =
            Scope::parse(self.scope.get_ref()).map_err(|e| (scope_span.clone(), e.to_string()))?;
        let mut specs = Vec::new();
        let secret = |s: String| Secret::new(s);
        if let Some(p) = self.password {
            specs.push(("password", SecretSpec::Password(secret(p))));
        }
        if let Some(p) = self.password_file {
            specs.push(("password_file", SecretSpec::PasswordFile(p)));
        }
        if let Some(t) = self.identity_token {
            specs.push(("identity_token", SecretSpec::IdentityToken(secret(t))));
        }
        if let Some(p) = self.identity_token_file {
            specs.push(("identity_token_file", SecretSpec::IdentityTokenFile(p)));
        }
        if let Some(t) = self.registry_token {
            specs.push(("registry_token", SecretSpec::RegistryToken(secret(t))));
        }
        if let Some(p) = self.registry_token_file {
            specs.push(("registry_token_file", SecretSpec::RegistryTokenFile(p)));
        }
        if let Some(h) = self.helper {
            specs.push(("helper", SecretSpec::Helper(h)));
        }
        let what = scope.to_string();
        let secret = match specs.len() {
            1 => specs.pop().expect("one spec").1,
            0 => {
                return Err((
                    scope_span,
                    format!(
                        "[[registry]] {what:?} needs one of password, password_file, identity_token(_file), registry_token(_file) or helper"
                    ),
                ))
            }
            _ => {
                let names: Vec<_> = specs.iter().map(|(n, _)| *n).collect();
                return Err((
                    scope_span,
                    format!("[[registry]] {what:?} has {}; choose one", names.join(" and ")),
                ));
            }
        };
        let needs_username = matches!(
            secret,
            SecretSpec::Password(_) | SecretSpec::PasswordFile(_)
        );
        let username = match self.username {
            Some(u) if !u.is_empty() => u,
            _ if needs_username => {
                return Err((
                    scope_span,
                    format!("[[registry]] {what:?} has a password but no username"),
                ))
            }
            _ => String::new(),
        };
        Ok(RegistryEntry {
            scope,
            username,
            secret,
            ca_file: self.ca_file,
            location,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/credgate/config.toml"))
    }

    #[test]
    fn sources_keep_file_order_across_kinds() {
        let config = parse(
            r#"
[[docker_config]]
path = "/root/.docker/config.json"

[[registry]]
match = "git.example.com/group"
username = "deploy"
password_file = "/etc/credgate/secrets/gitlab"

[[kubelet_provider]]
config = "/etc/kubernetes/credential-provider.yaml"
bin_dir = "/usr/libexec/kubernetes"

[[registry]]
match = "*.example.com"
helper = "pass"
"#,
        )
        .unwrap();
        let kinds: Vec<&str> = config
            .sources
            .iter()
            .map(|s| match s {
                SourceEntry::Registry(_) => "registry",
                SourceEntry::DockerConfig(_) => "docker_config",
                SourceEntry::KubeletProvider(_) => "kubelet_provider",
            })
            .collect();
        assert_eq!(
            kinds,
            ["docker_config", "registry", "kubelet_provider", "registry"]
        );
        let SourceEntry::Registry(entry) = &config.sources[1] else {
            panic!()
        };
        assert_eq!(entry.location.line, 5);
        assert_eq!(config.listen.allowed_uids, vec![0]);
        assert_eq!(config.helpers.timeout, DEFAULT_HELPER_TIMEOUT);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse("[listen]\nsocket = \"/run/x.sock\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/etc/credgate/config.toml:3:1: unknown field `…`, expected one of `socket`"
            ),
            "{err}"
        );

        let err = parse("[[registry]]\nmatch = \"https://x.test\"\nhelper = \"pass\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/credgate/config.toml:2:9: invalid scope"),
            "{err}"
        );

        let err = parse("[helpers]\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/credgate/config.toml:2:11: invalid duration"),
            "{err}"
        );
    }

    #[test]
    fn verify_digests_defaults_to_unless_containerd_and_names_its_choices_when_wrong() {
        let default = parse("").unwrap();
        assert_eq!(
            default.upstream.verify_digests,
            DigestVerification::UnlessContainerd
        );
        let hashing = parse("[upstream]\nverify_digests = \"always\"\n").unwrap();
        assert_eq!(hashing.upstream.verify_digests, DigestVerification::Always);
        let err = parse("[upstream]\nverify_digests = \"never\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/credgate/config.toml:2:18: unknown variant `…`, expected `always` or `unless-containerd`"),
            "{err}"
        );
    }

    #[test]
    fn containerd_hosts_dir_and_mirror_entries_are_read_and_checked() {
        let config = parse("").unwrap();
        assert_eq!(config.containerd.hosts_dir, Path::new(DEFAULT_HOSTS_DIR));
        assert!(config.mirrors.is_empty());
        let config = parse(concat!(
            "[containerd]\nhosts_dir = \"/srv/certs.d\"\n",
            "[[mirror]]\nhost = \"Harbor.Test:443\"\ncredentials = \"upstream\"\n",
            "[[mirror]]\nhost = \"cache.test:5000\"\n",
        ))
        .unwrap();
        assert_eq!(config.containerd.hosts_dir, Path::new("/srv/certs.d"));
        assert_eq!(config.mirrors[0].host.to_string(), "harbor.test");
        assert_eq!(config.mirrors[0].credentials, MirrorCredentials::Upstream);
        assert_eq!(config.mirrors[0].location.line, 3);
        assert_eq!(config.mirrors[1].credentials, MirrorCredentials::Own);
        assert!(!config.mirrors[0].plain_http);
        let config = parse(concat!(
            "[[mirror]]\nhost = \"cache.test\"\ncredentials = \"upstream\"\nplain_http = true\n",
            "[[mirror]]\nhost = \"cache.test\"\ncredentials = \"upstream\"\n",
            "[[mirror]]\nhost = \"[::1]\"\nplain_http = true\n",
            "[[mirror]]\nhost = \"cache.test:5000\"\nplain_http = true\n",
        ))
        .unwrap();
        let hosts: Vec<(String, bool)> = config
            .mirrors
            .iter()
            .map(|m| (m.host.to_string(), m.plain_http))
            .collect();
        assert_eq!(
            hosts,
            [
                ("cache.test:80".to_string(), true),
                ("cache.test".to_string(), false),
                ("[::1]:80".to_string(), true),
                ("cache.test:5000".to_string(), true),
            ]
        );
        for (text, words) in [
            (
                "[[mirror]]\nhost = \"https://m.test\"\n",
                ":2:8: [[mirror]] host must be host[:port], without scheme or path",
            ),
            (
                "[[mirror]]\nhost = \"m.test/x\"\n",
                ":2:8: [[mirror]] host must",
            ),
            (
                "[[mirror]]\nhost = \"m_test\"\n",
                ":2:8: [[mirror]] host: not a valid host",
            ),
            (
                "[[mirror]]\nhost = \"m.test\"\n[[mirror]]\nhost = \"M.test:443\"\n",
                ":4:8: [[mirror]] https://m.test is listed twice",
            ),
            (
                "[[mirror]]\nhost = \"m.test:0443\"\nplain_http = true\n",
                ":2:8: [[mirror]] host: plain_http on port 443",
            ),
            (
                "[[mirror]]\nhost = \"m.test\"\nplain_http = true\n\
                 [[mirror]]\nhost = \"m.test:80\"\nplain_http = true\n",
                ":5:8: [[mirror]] http://m.test:80 is listed twice",
            ),
            (
                "[[mirror]]\nhost = \"m.test\"\ncredentials = \"s3cr3t-word\"\n",
                ":3:15: unknown variant `…`, expected `own` or `upstream`",
            ),
            ("[[mirror]]\ncredentials = \"own\"\n", ":1:1: missing field"),
            ("[containerd]\nhosts = \"/x\"\n", ":2:1: unknown field `…`"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(words), "{text}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn registry_entries_need_exactly_one_secret() {
        let err = parse("[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs one of password"), "{err}");
        let err = parse("[[registry]]\nmatch = \"r.test\"\nusername = \"u\"\npassword = \"p-secret\"\nhelper = \"pass\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has password and helper; choose one"), "{err}");
        assert!(!err.contains("p-secret"));
        let err = parse("[[registry]]\nmatch = \"r.test\"\npassword = \"p\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no username"), "{err}");
    }

    #[test]
    fn a_bad_value_does_not_echo_a_secret_around_it() {
        const SECRET: &str = "pw-secret-K3";
        // The secret on the line before the bad value, and on the same line.
        let texts = [
            (
                format!("[[registry]]\nmatch = \"r.test\"\npassword = \"{SECRET}\"\nusername = 42\n"),
                ":4:",
            ),
            (
                format!("registry = [{{ match = \"r.test\", password = \"{SECRET}\", username = 42 }}]\n"),
                ":1:",
            ),
        ];
        for (text, position) in texts {
            let err = parse(&text).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains(position), "{shown}");
            assert!(!shown.contains(SECRET), "{shown}");
            let debug = format!("{err:?}");
            assert!(!debug.contains(SECRET), "{debug}");
        }
    }

    #[test]
    fn a_secret_in_the_wrong_type_is_never_echoed() {
        const SECRET: &str = "31415926";
        let values = [
            SECRET.to_string(),
            format!("{SECRET}.5"),
            format!("[\"{SECRET}\"]"),
            format!("{{ a = \"{SECRET}\" }}"),
            format!("\"{SECRET}"),
            format!("{SECRET}abc"),
        ];
        for value in values {
            for (key, others) in [
                ("password", "match = \"r.test\"\nusername = \"u\"\n"),
                ("username", "match = \"r.test\"\npassword = \"p\"\n"),
                ("match", "username = \"u\"\npassword = \"p\"\n"),
            ] {
                let text = format!("[[registry]]\n{others}{key} = {value}\n");
                let err = parse(&text).unwrap_err();
                let shown = format!("{err} {err:?}");
                assert!(!shown.contains(SECRET), "{key} = {value}: {shown}");
                assert!(shown.starts_with("/etc/credgate/config.toml:"), "{shown}");
            }
        }
        let err = parse(&format!("[listen]\nallowed_uids = \"{SECRET}\"\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/credgate/config.toml:2:16: invalid type: string `…`, expected a sequence"
        );
        let err = parse(&format!("[listen]\n{SECRET} = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `…`, expected one of `socket`"),
            "{err}"
        );
    }
}
