//! Which hosts of a hosts.toml are credgate's, by the marks `credgate install` writes
//! (docs/design.md, "Mirrors through the gate"): the `X-Credgate-Secret` header, in any
//! casing and any TOML shape, and the endpoint's own address. install, doctor and the daemon
//! all ask [`Owner::of`], so they agree on which hosts are credgate's and which the operator's.

use toml_edit::{DocumentMut, Item, TableLike};

/// The header the endpoint checks, as hosts.toml names it; a host table carrying it is
/// credgate's.
pub(crate) const SECRET_HEADER: &str = "X-Credgate-Secret";

/// The header of a fronted host: the operator's host key it stands for, exactly as the
/// hosts.toml writes it.
pub(crate) const MIRROR_HEADER: &str = "X-Credgate-Mirror";

/// The URL path prefix of the `n`th fronted host: `/mirror/<n>`. It only keeps hosts.toml's
/// table keys distinct; the target is [`MIRROR_HEADER`].
pub(crate) const MIRROR_PATH_PREFIX: &str = "/mirror/";

/// Whose a host of a hosts.toml is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The operator's own host.
    Operator,
    Credgate(CredgateHost),
}

/// What one of credgate's hosts does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredgateHost {
    /// The endpoint's URL, no path: credgate fetches from the registry in `ns` itself.
    Upstream,
    /// `<endpoint>/mirror/<n>`, with the `X-Credgate-Mirror` values it sends (exactly one
    /// when install wrote it).
    Fronted { mirrors: Vec<String> },
    /// The secret header sent to another address (an older `listen.mirror`).
    Stale,
}

impl Owner {
    /// The owner of the host `key` that does or does not send [`SECRET_HEADER`]
    /// (`mirror_values`: its [`MIRROR_HEADER`] values), when the endpoint is at `endpoint`
    /// (`http://<listen.mirror>`). A host at the endpoint's address is credgate's even
    /// without the header, so no operator host ever makes credgate dial itself.
    pub fn of(key: &str, secret_header: bool, mirror_values: &[String], endpoint: &str) -> Owner {
        let fronted = key
            .strip_prefix(endpoint)
            .is_some_and(|rest| rest.starts_with(MIRROR_PATH_PREFIX));
        if key == endpoint {
            Owner::Credgate(CredgateHost::Upstream)
        } else if fronted {
            Owner::Credgate(CredgateHost::Fronted {
                mirrors: mirror_values.to_vec(),
            })
        } else if secret_header {
            Owner::Credgate(CredgateHost::Stale)
        } else {
            Owner::Operator
        }
    }

    pub fn is_credgate(&self) -> bool {
        matches!(self, Owner::Credgate(_))
    }
}

impl CredgateHost {
    /// At the endpoint (for the upstream or fronting a mirror), as opposed to stale.
    pub fn at_endpoint(&self) -> bool {
        !matches!(self, CredgateHost::Stale)
    }

    /// The one host key a fronted host names; `None` when it names none or several, which
    /// the endpoint refuses.
    pub fn mirror(&self) -> Option<&str> {
        match self {
            CredgateHost::Fronted { mirrors } => match &mirrors[..] {
                [one] if !one.is_empty() => Some(one.as_str()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The URL of the `n`th fronted host (from 1).
pub(crate) fn fronted_url(endpoint: &str, n: usize) -> String {
    format!("{endpoint}{MIRROR_PATH_PREFIX}{n}")
}

/// Calls `visit` with every `X-Credgate-Secret` value in a hosts.toml, whatever its shape:
/// the server's `[header]` and each host's, as a table, an inline table or dotted keys,
/// the header name in any case. `visit` may change them (install shows files redacted).
pub(crate) fn visit_secret_headers(doc: &mut DocumentMut, mut visit: impl FnMut(&mut Item)) {
    visit_header_table(doc.as_table_mut(), &mut visit);
    let Some(hosts) = doc.get_mut("host").and_then(Item::as_table_like_mut) else {
        return;
    };
    for (_, host) in hosts.iter_mut() {
        if let Some(host) = host.as_table_like_mut() {
            visit_header_table(host, &mut visit);
        }
    }
}

fn visit_header_table(owner: &mut dyn TableLike, visit: &mut dyn FnMut(&mut Item)) {
    let Some(headers) = owner.get_mut("header").and_then(Item::as_table_like_mut) else {
        return;
    };
    for (name, value) in headers.iter_mut() {
        if name.get().eq_ignore_ascii_case(SECRET_HEADER) {
            visit(value);
        }
    }
}

/// Whether a hosts.toml's text holds an `X-Credgate-Secret` header, so it must be readable by
/// root alone. Text that is not TOML counts when it names the header anywhere.
pub(crate) fn carries_secret(text: &str) -> bool {
    match text.parse::<DocumentMut>() {
        Ok(mut doc) => {
            let mut found = false;
            visit_secret_headers(&mut doc, |_| found = true);
            found
        }
        Err(_) => text
            .to_ascii_lowercase()
            .contains(&SECRET_HEADER.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "http://127.0.0.1:5008";

    fn owner(key: &str, secret_header: bool, mirrors: &[&str]) -> Owner {
        let mirrors: Vec<String> = mirrors.iter().map(|m| m.to_string()).collect();
        Owner::of(key, secret_header, &mirrors, ENDPOINT)
    }

    #[test]
    fn the_endpoints_address_and_the_secret_header_make_a_host_credgates() {
        assert_eq!(
            owner(ENDPOINT, true, &[]),
            Owner::Credgate(CredgateHost::Upstream)
        );
        // An older install's host at the endpoint, even one without the header.
        assert_eq!(
            owner(ENDPOINT, false, &[]),
            Owner::Credgate(CredgateHost::Upstream)
        );
        let fronted = owner("http://127.0.0.1:5008/mirror/1", true, &["https://m.test"]);
        let Owner::Credgate(host) = &fronted else {
            panic!("{fronted:?}")
        };
        assert!(host.at_endpoint());
        assert_eq!(host.mirror(), Some("https://m.test"));
        let without_header = owner("http://127.0.0.1:5008/mirror/7", false, &[]);
        let Owner::Credgate(host) = &without_header else {
            panic!("{without_header:?}")
        };
        assert!(host.at_endpoint());
        assert_eq!(host.mirror(), None);
        // The secret header elsewhere: an older listen.mirror.
        let stale = owner("http://127.0.0.1:6000", true, &[]);
        assert_eq!(stale, Owner::Credgate(CredgateHost::Stale));
        assert!(stale.is_credgate() && !CredgateHost::Stale.at_endpoint());
        // Anything else is the operator's, paths that merely start alike included.
        for key in [
            "https://m.test",
            "http://127.0.0.1:5008/mirrors",
            "http://127.0.0.1:50080",
            "http://127.0.0.1:5008/v2",
        ] {
            assert_eq!(owner(key, false, &[]), Owner::Operator, "{key}");
        }
        let two = owner("http://127.0.0.1:5008/mirror/1", true, &["a", "b"]);
        let Owner::Credgate(host) = &two else {
            panic!("{two:?}")
        };
        assert_eq!(host.mirror(), None);
        assert_eq!(fronted_url(ENDPOINT, 2), "http://127.0.0.1:5008/mirror/2");
    }

    #[test]
    fn the_secret_header_is_found_in_every_shape_and_only_there() {
        for text in [
            "[host.\"http://a:5008\".header]\n  X-Credgate-Secret = [\"s\"]\n",
            "[host.\"http://a:5008\"]\n  header = { x-credgate-secret = \"s\" }\n",
            "host.\"http://a:5008\".header.X-CREDGATE-SECRET = \"s\"\n",
            "server = \"https://r.test\"\n[header]\n  X-Credgate-Secret = \"s\"\n",
            "[host.\"x\"\n X-Credgate-Secret = \"s\"\n",
        ] {
            assert!(carries_secret(text), "{text}");
        }
        for text in [
            "",
            "server = \"https://r.test\"\n[host.\"https://m.test\".header]\n  X-Other = \"v\"\n",
            "# X-Credgate-Secret in a comment\n",
        ] {
            assert!(!carries_secret(text), "{text}");
        }
    }
}
