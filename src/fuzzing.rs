//! What each parser of untrusted input promises, checked on arbitrary bytes: one entry per
//! fuzz target (`fuzz/fuzz_targets/<name>.rs` calls `<name>(data)`, and
//! `tests/fuzz_corpus.rs` replays the corpora through them on stable). Every entry parses
//! `data` and panics only when a promise is broken: a parser panicked, a canonical form did
//! not parse back to itself, or something shown (an error, a `Debug`, an offer) carries a
//! secret from the input.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::config::{Config, DockerConfigEntry, Location};
use crate::containerd::files::{read_hosts, read_hosts_file, registry_settings};
use crate::endpoint::{ContentKind, ContentRoute, Route};
use crate::identity::{ImageReference, RegistryHost, Repository, Scope, Target};
use crate::sources::docker_config::{DockerConfigError, DockerConfigSource};
use crate::sources::exec_helper::HelperRuns;
use crate::sources::kubelet_provider::{parse_config_text, parse_response_text};
use crate::sources::{Source, SourceError};
use crate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};
use crate::system::System;
use crate::upstream::{parse_challenges, parse_rfc3339, parse_token, preferred_challenge};
use crate::upstream::{AuthScheme, Challenge};

/// Image references, bare registries, scopes and `auths` keys: every form of "which
/// registry" a caller or a file can write.
pub fn identity(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(registry) = RegistryHost::parse(input) {
        let shown = registry.to_string();
        assert_eq!(
            RegistryHost::parse(&shown).as_ref(),
            Ok(&registry),
            "{shown}"
        );
        let key = registry.docker_config_key();
        assert_eq!(RegistryHost::parse(&key).as_ref(), Ok(&registry), "{key}");
    }
    if let Ok(image) = ImageReference::parse(input) {
        let shown = image.to_string();
        if names_its_registry(&image.registry, true) {
            assert_eq!(
                ImageReference::parse(&shown).as_ref(),
                Ok(&image),
                "{shown}"
            );
        }
    }
    if let Ok(target) = Target::parse(input) {
        target_invariants(&target);
    }
    for scope in [Scope::parse(input), Scope::parse_auths_key(input)]
        .into_iter()
        .flatten()
    {
        let shown = scope.to_string();
        assert_eq!(Scope::parse(&shown).as_ref(), Ok(&scope), "{shown}");
        if let Some(registry) = scope.exact_registry() {
            let own = Target::new(registry.clone(), scope.path().cloned());
            assert!(scope.matches(&own), "{shown} does not match {own}");
        }
    }
    if let Ok(repository) = Repository::parse(input) {
        let shown = repository.to_string();
        assert_eq!(Repository::parse(&shown).as_ref(), Ok(&repository));
        assert!(
            repository.segments().all(|s| s != "." && s != ".."),
            "{shown}"
        );
    }
    // Target::parse_server_url: add `target_invariants(&Target::parse_server_url(input)?)` here.
}

/// A target is matched by a scope naming its own registry and repository, and its canonical
/// form reads back as the same target wherever docker's grammar lets it.
fn target_invariants(target: &Target) {
    let shown = target.to_string();
    assert!(
        Scope::registry(target.registry.clone()).matches(target),
        "{shown}"
    );
    if let Ok(scope) = Scope::parse(&shown) {
        assert!(scope.matches(target), "{shown}");
    }
    if names_its_registry(&target.registry, target.repository.is_some()) {
        assert_eq!(Target::parse(&shown).as_ref(), Ok(target), "{shown}");
    }
}

/// Whether the canonical text of `registry` is read back as a registry: docker's grammar
/// takes `abc/app` for Docker Hub's `abc/app` and a bare `abc:5000` for the image `abc:5000`,
/// so a dot-less host (`ABC/app`, lower-cased to `abc`) reads back only where it has a port
/// before a path, or is `localhost` or an IPv6 literal.
fn names_its_registry(registry: &RegistryHost, before_a_path: bool) -> bool {
    let host = registry.host();
    host.contains('.')
        || host == "localhost"
        || host.starts_with('[')
        || (before_a_path && registry.port().is_some())
}

/// `WWW-Authenticate` values: every challenge renders back to the same challenges, and the
/// preferred one is Bearer whenever one is offered.
pub fn challenge(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let challenges = parse_challenges(input);
    for challenge in &challenges {
        assert!(!scheme_name(&challenge.scheme).is_empty(), "{challenge:?}");
        for (name, _) in &challenge.params {
            assert!(!name.is_empty(), "{challenge:?}");
            assert_eq!(*name, name.to_ascii_lowercase(), "{challenge:?}");
        }
    }
    let rendered = challenges
        .iter()
        .map(render_challenge)
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(parse_challenges(&rendered), challenges, "{rendered}");
    // Only visible ASCII: `preferred` skips a value with other bytes, as `to_str` refuses it.
    if let Some(value) = HeaderValue::from_str(input)
        .ok()
        .filter(|v| v.to_str().is_ok())
    {
        let mut headers = HeaderMap::new();
        headers.append(http::header::WWW_AUTHENTICATE, value);
        let offered = |scheme: AuthScheme| challenges.iter().find(|c| c.scheme == scheme);
        let expected = offered(AuthScheme::Bearer).or_else(|| offered(AuthScheme::Basic));
        assert_eq!(preferred_challenge(&headers).as_ref(), expected);
    }
}

fn scheme_name(scheme: &AuthScheme) -> &str {
    match scheme {
        AuthScheme::Basic => "Basic",
        AuthScheme::Bearer => "Bearer",
        AuthScheme::Other(name) => name,
    }
}

/// A challenge as RFC 7235 writes it, every value quoted.
fn render_challenge(challenge: &Challenge) -> String {
    let params = challenge
        .params
        .iter()
        .map(|(name, value)| {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{name}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(", ");
    match params.is_empty() {
        true => scheme_name(&challenge.scheme).to_string(),
        false => format!("{} {params}", scheme_name(&challenge.scheme)),
    }
}

/// A token endpoint's answer, and the RFC 3339 times in it: a token has a value and a
/// lifetime longer than its age, and neither it nor an error shows the token.
pub fn token(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let strings = json_strings(data);
    match parse_token(data, now) {
        Ok(issued) => {
            assert!(!issued.value.expose().is_empty());
            assert!(issued.lifetime > Duration::ZERO);
            assert!(issued.age.is_zero() || issued.age < issued.lifetime);
            let secret_keys = ["token", "access_token"];
            let public = strings.public_except(&secret_keys);
            let hidden = Hidden::new(
                strings.values_under(&secret_keys),
                public.iter().map(String::as_str),
            );
            hidden.assert_not_in("an issued token's Debug", &format!("{issued:?}"));
        }
        Err(message) => {
            let hidden = Hidden::new(
                quoted(&String::from_utf8_lossy(data)),
                [TOKEN_WORDS, JSON_ERROR_WORDS],
            );
            hidden.assert_not_in("a token response error", &message);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(time) = parse_rfc3339(text) {
            assert!(time >= UNIX_EPOCH, "{text}");
        }
    }
}

const TOKEN_WORDS: &str = "token response is not JSON has neither token nor access_token";

/// serde_json's own error words (a token response error repeats them, never the input).
const JSON_ERROR_WORDS: &str = "control character (\\u0000-\\u001F) found while parsing a string \
    EOF while parsing a value list object invalid escape invalid number invalid unicode code point \
    number out of range trailing characters expected value expected ident lone leading surrogate \
    in hex escape key must be a string recursion limit exceeded at line column";

/// Where the docker config lives in the fake file system the fuzzer fills.
const DOCKER_CONFIG: &str = "/root/.docker/config.json";

/// docker `config.json` / containers `auth.json`, read as a lookup reads it: every offer
/// matches the target it was made for, and no offer, listing or error shows a secret.
pub fn docker_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = Arc::new(MemoryFiles::new());
    files.write(DOCKER_CONFIG, text, 0o600);
    let clock = Arc::new(ManualClock::new());
    let system = System::fake(
        clock.clone(),
        Arc::new(ScriptedProcesses::new(|_| ScriptedProcesses::exit(1, ""))),
        files,
    );
    let helper_runs = HelperRuns::new(clock, Duration::from_secs(1));
    let entry = DockerConfigEntry {
        path: DOCKER_CONFIG.into(),
        location: Location {
            path: "/etc/credgate/config.toml".into(),
            line: 1,
        },
    };
    let source = DockerConfigSource::new(&entry, system, &helper_runs);

    let strings = json_strings(data);
    let secret_keys = ["auth", "password", "identitytoken", "registrytoken"];
    let mut secrets: Vec<String> = strings
        .values_under(&secret_keys)
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut public = strings.public_except(&secret_keys);
    public.extend([DOCKER_WORDS, DOCKER_CONFIG].map(String::from));
    // Helper names are shown by design, even under a registry spelled like a secret key
    // (`credHelpers: {"password": "pw"}`).
    public.extend(helper_names(data));
    let mut targets = vec![Target::parse("busybox").expect("a valid reference")];
    for key in &strings.keys {
        if let Ok(scope) = Scope::parse_auths_key(key) {
            public.push(scope.to_string());
            if let Some(registry) = scope.exact_registry() {
                targets.push(Target::new(registry.clone(), scope.path().cloned()));
            }
        }
    }
    for auth in strings.values_under(&["auth"]) {
        if let Some((username, password)) = decoded_auth(auth) {
            public.push(username);
            secrets.push(password);
        }
    }
    let hidden = Hidden::new(
        secrets.iter().map(String::as_str),
        public.iter().map(String::as_str),
    );
    let invalid = Hidden::new(quoted(text), [DOCKER_WORDS, DOCKER_CONFIG]);

    targets.truncate(MAX_TARGETS);
    for target in &targets {
        match futures::executor::block_on(source.offers(target)) {
            Ok(offers) => {
                for offer in &offers {
                    assert!(offer.scope.matches(target), "{offer:?} for {target}");
                    hidden.assert_not_in("an offer", &format!("{offer:?}"));
                }
            }
            Err(error) => {
                let shown = format!("{error} {error:?}");
                hidden.assert_not_in("a docker config error", &shown);
                if let SourceError::DockerConfig(DockerConfigError::Invalid { .. }) = error {
                    invalid.assert_not_in("a docker config syntax error", &shown);
                }
            }
        }
    }
    if let Ok(listed) = futures::executor::block_on(source.listing()) {
        hidden.assert_not_in("the listing", &format!("{listed:?}"));
    }
}

/// Most targets one docker config input is asked about, so a long one stays fast.
const MAX_TARGETS: usize = 16;

const DOCKER_WORDS: &str = "auths credHelpers credsStore auth username password \
    identitytoken registrytoken is not valid base64 does not decode to UTF-8 text \
    user:password decodes to an empty user name Offer scope origin Listed \
    not a valid docker config: a value has the wrong type; expected \
    a map an object a string a boolean a sequence the file ends too early EOF while parsing \
    a list an object a string a value expected ident expected value invalid escape invalid \
    number number out of range invalid unicode code point control character (\\u0000-\\u001F) \
    found while parsing a string key must be a string lone leading surrogate in hex escape \
    trailing comma trailing characters unexpected end of hex escape recursion limit exceeded";

/// `auth`'s base64 `user:password`, as docker config files hold it.
fn decoded_auth(auth: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some((username.to_string(), password.to_string()))
}

/// kubelet's `CredentialProviderConfig` (YAML or JSON): neither an error nor the parsed
/// config shows an `env` value or an argument.
pub fn kubelet_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let strings = if text.trim_start().starts_with('{') {
        json_strings(text.as_bytes())
    } else {
        yaml_strings(&text)
    };
    let secret_keys = ["value", "args"];
    let hidden = Hidden::new(
        strings.values_under(&secret_keys),
        strings
            .public_except(&secret_keys)
            .iter()
            .map(String::as_str)
            .chain([KUBELET_CONFIG_WORDS]),
    );
    match parse_config_text(data) {
        Ok(config) => hidden.assert_not_in("a provider config's Debug", &format!("{config:?}")),
        Err(error) => {
            hidden.assert_not_in("a provider config error", &format!("{error} {error:?}"))
        }
    }
}

const KUBELET_CONFIG_WORDS: &str = "apiVersion kind providers name matchImages \
    defaultCacheDuration args env value tokenAttributes unknown field expected one of \
    kubelet provider config credential-provider.yaml not a \
    CredentialProviderConfig invalid type invalid value invalid length (value not shown) \
    expected a string a sequence a map struct RawConfig RawProvider RawEnvVar unknown field \
    duplicate field missing field ProviderConfig ProviderSpec match_images \
    default_cache_duration api_version wants_service_account_token";

/// A provider plugin's `CredentialProviderResponse`: errors quote nothing of stdout, and a
/// decoded response does not show a password.
pub fn kubelet_response(data: &[u8]) {
    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";
    match parse_response_text(data, V1) {
        Ok(response) => {
            let strings = json_strings(data);
            let public = strings.public_except(&["password"]);
            let hidden = Hidden::new(
                strings.values_under(&["password"]),
                public.iter().map(String::as_str),
            );
            hidden.assert_not_in("a plugin response's Debug", &format!("{response:?}"));
        }
        Err(message) => {
            let hidden = Hidden::new(
                quoted(&String::from_utf8_lossy(data)),
                [KUBELET_RESPONSE_WORDS],
            );
            hidden.assert_not_in("a plugin response error", &message);
        }
    }
}

const KUBELET_RESPONSE_WORDS: &str = "stdout is not a JSON object apiVersion is missing \
    credentialprovider.kubelet.k8s.io/v1 credentialprovider.kubelet.k8s.io/v1alpha1 \
    credentialprovider.kubelet.k8s.io/v1beta1 not a credentialprovider.kubelet.k8s.io version \
    expected as in the request kind is not CredentialProviderResponse not a valid a field is \
    unknown or has the wrong type cacheKeyType is missing (Image, Registry or Global) \
    cacheDuration is not a Go duration (like 30s, 5m, 12h) line column";

/// credgate's own config: sources come in file order, and neither an error nor the config's
/// `Debug` shows a password or token written in it.
pub fn credgate_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let strings = toml_strings(text);
    let secret_keys = ["password", "identity_token", "registry_token"];
    let hidden = Hidden::new(
        strings.values_under(&secret_keys),
        strings
            .public_except(&secret_keys)
            .iter()
            .map(String::as_str)
            .chain([CONFIG_WORDS]),
    );
    match Config::parse(text, Path::new("/etc/credgate/config.toml")) {
        Ok(config) => {
            hidden.assert_not_in("a config's Debug", &format!("{config:?}"));
            let lines: Vec<usize> = config.sources.iter().map(source_line).collect();
            assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
        }
        Err(error) => hidden.assert_not_in("a config error", &format!("{error} {error:?}")),
    }
}

const CONFIG_WORDS: &str = "/etc/credgate/config.toml password_file identity_token_file \
    registry_token_file needs one of password, password_file, identity_token(_file), \
    registry_token(_file) or helper choose one has a password but no username invalid type \
    expected a string unknown field duplicate key Secret(<redacted>)";

fn source_line(source: &crate::config::SourceEntry) -> usize {
    use crate::config::SourceEntry;
    match source {
        SourceEntry::Registry(entry) => entry.location.line,
        SourceEntry::DockerConfig(entry) => entry.location.line,
        SourceEntry::KubeletProvider(entry) => entry.location.line,
    }
}

/// containerd's files as credgate reads them: a hosts.toml's hosts (each marked credgate's
/// exactly when it carries the secret header) and config.toml's registry settings.
pub fn containerd_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/containerd/certs.d/_default/hosts.toml");
    if let Ok(hosts) = read_hosts(path, text) {
        for host in &hosts {
            assert!(
                host.secret_values.is_empty() || host.is_credgate(),
                "{host:?}"
            );
        }
        assert_eq!(read_hosts(path, text).ok(), Some(hosts));
    }
    // Every host's settings as containerd reads them: bounded, with a path containerd can use.
    match read_hosts_file(path, text) {
        Ok(file) => {
            assert!(file.hosts.len() <= 64, "{}", file.hosts.len());
            for host in file.hosts.iter().chain(&file.server) {
                assert!(host.ca.len() <= 16 && host.client.len() <= 16, "{host:?}");
                assert!(
                    host.path.is_empty() || host.path.starts_with('/'),
                    "{host:?}"
                );
            }
        }
        Err(error) => assert!(error.to_string().starts_with(&path.display().to_string())),
    }
    let path = Path::new("/etc/containerd/config.toml");
    match registry_settings(path, text) {
        Ok(settings) => {
            assert_ne!(settings.config_path.as_deref(), Some(""));
            assert!(settings.table.starts_with("plugins."), "{settings:?}");
        }
        Err(error) => assert!(error.to_string().starts_with("/etc/containerd/config.toml")),
    }
}

/// A request line (`GET /v2/…?ns=…`) as the endpoint routes it: what is routed names a valid
/// repository, its upstream path holds nothing that could change where it goes, and that
/// path with the registry as `ns` routes back to the same place.
pub fn route(data: &[u8]) {
    let (method, target) = match data.iter().position(|&b| b == b' ') {
        Some(space) => (&data[..space], &data[space + 1..]),
        None => (&b"GET"[..], data),
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method), Uri::try_from(target)) else {
        return;
    };
    match Route::parse(&method, &uri) {
        Ok(Route::ApiVersion { fronted }) => {
            assert!(uri.path().ends_with("/v2/"), "{uri}");
            assert_eq!(fronted, uri.path() != "/v2/", "{uri}");
        }
        Ok(Route::Content(route)) => {
            let path = route.upstream_path();
            assert!(path.starts_with("/v2/"), "{path}");
            assert!(!path.contains(['%', '?', '#', '\\']), "{path}");
            assert!(path.split('/').all(|s| s != "." && s != ".."), "{path}");
            if route.kind == ContentKind::Blob {
                assert!(route.expected_digest().is_some(), "{path}");
            }
            let ns = route
                .registry
                .to_string()
                .replace(':', "%3A")
                .replace('[', "%5B")
                .replace(']', "%5D");
            let again: Uri = format!("{path}?ns={ns}")
                .parse()
                .expect("a routed path with ns is a URI");
            // Routed again unfronted and with the canonical `ns`, it is the same request.
            let canonical = ContentRoute {
                ns: route.registry.to_string(),
                fronted: false,
                ..route
            };
            assert_eq!(
                Route::parse(&method, &again).ok(),
                Some(Route::Content(canonical))
            );
        }
        Err(error) => {
            let _ = (error.to_string(), error.status());
        }
    }
}

/// Secret input text that must not be shown. It is checked by fragments, runs of letters,
/// digits or `+=_-` (so that canonical forms, which only lower-case or drop whole labels and
/// segments, cannot join two public pieces into one) that look like a secret, and only where
/// a fragment is not also public text: a key, a name or the parser's own wording.
struct Hidden {
    fragments: Vec<String>,
}

/// Shorter runs turn up in any text by chance.
const MIN_FRAGMENT: usize = 6;

impl Hidden {
    fn new<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
        public: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let public = public
            .into_iter()
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        let mut fragments: Vec<String> = secrets
            .into_iter()
            .flat_map(|secret| secret.split(|c: char| !is_fragment_char(c)))
            .filter(|fragment| is_secret_like(fragment))
            .map(str::to_lowercase)
            .filter(|fragment| !public.contains(fragment.as_str()))
            .collect();
        fragments.sort();
        fragments.dedup();
        Self { fragments }
    }

    fn assert_not_in(&self, what: &str, shown: &str) {
        let shown_lower = shown.to_lowercase();
        for fragment in &self.fragments {
            assert!(
                !shown_lower.contains(fragment.as_str()),
                "{what} shows {fragment:?} of a secret: {shown}"
            );
        }
    }
}

fn is_fragment_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '+' | '=' | '_' | '-')
}

/// Long enough, with a letter and a digit, as passwords and tokens are: a word (a field
/// name, the parser's wording) or a number (a uid, a port) turns up in what is shown for
/// reasons of its own, and so does a number with a unit (a duration's `Debug`, `86400s`).
fn is_secret_like(fragment: &str) -> bool {
    let number_with_unit = fragment
        .trim_end_matches(|c: char| c.is_alphabetic())
        .chars()
        .all(|c| c.is_ascii_digit());
    fragment.chars().count() >= MIN_FRAGMENT
        && fragment.chars().any(|c| c.is_ascii_digit())
        && fragment.chars().any(char::is_alphabetic)
        && !number_with_unit
}

/// The strings of a structured document: every key, and every string value with the key it
/// is under (an array's items are under the array's key).
#[derive(Default)]
struct Strings {
    keys: Vec<String>,
    values: Vec<(String, String)>,
}

impl Strings {
    fn of(value: &serde_json::Value) -> Self {
        let mut strings = Self::default();
        strings.walk(value, "");
        strings
    }

    fn walk(&mut self, value: &serde_json::Value, key: &str) {
        match value {
            serde_json::Value::String(s) => self.values.push((key.to_string(), s.clone())),
            serde_json::Value::Array(items) => items.iter().for_each(|item| self.walk(item, key)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    self.keys.push(k.clone());
                    self.walk(v, k);
                }
            }
            _ => {}
        }
    }

    fn values_under(&self, keys: &[&str]) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(key, _)| keys.contains(&key.as_str()))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// Every key, and the values not under `secret_keys`.
    fn public_except(&self, secret_keys: &[&str]) -> Vec<String> {
        let values = self
            .values
            .iter()
            .filter(|(key, _)| !secret_keys.contains(&key.as_str()))
            .map(|(_, value)| value.clone());
        self.keys.iter().cloned().chain(values).collect()
    }
}

/// The helper names a docker config gives: `credsStore` and every `credHelpers` value.
fn helper_names(data: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Vec::new();
    };
    let store = value.get("credsStore").and_then(|v| v.as_str());
    let helpers = value
        .get("credHelpers")
        .and_then(|v| v.as_object())
        .into_iter()
        .flat_map(|map| map.values().filter_map(|v| v.as_str()));
    store.into_iter().chain(helpers).map(String::from).collect()
}

/// The strings of a JSON document; none when it is not JSON.
fn json_strings(data: &[u8]) -> Strings {
    serde_json::from_slice(data)
        .map(|value| Strings::of(&value))
        .unwrap_or_default()
}

/// The strings of a YAML document (with string keys); none when it is not one.
fn yaml_strings(text: &str) -> Strings {
    serde_yaml_ng::from_str(text)
        .map(|value| Strings::of(&value))
        .unwrap_or_default()
}

/// The strings of a TOML document; none when it is not TOML.
fn toml_strings(text: &str) -> Strings {
    toml::from_str(text)
        .map(|value| Strings::of(&value))
        .unwrap_or_default()
}

/// The text between each pair of `"`, escapes as written: what an error could quote, found
/// even in text that does not parse.
fn quoted(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let mut escaped = false;
        let end = after.char_indices().find(|&(_, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes
        });
        match end {
            Some((end, _)) => {
                found.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => {
                found.push(after);
                break;
            }
        }
    }
    found
}
