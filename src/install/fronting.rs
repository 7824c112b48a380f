//! How a hosts.toml is fronted (docs/design.md, "Mirrors through the gate"): which of its hosts
//! are credgate's and which the operator's, in the order containerd tries them, and which
//! operator hosts get a fronted host with which capabilities. Install writes by this rule and
//! doctor checks files against it, so both read a hosts.toml here and nowhere else.
//!
//! containerd 2.x takes as hosts only `[host."…"]` table headers, ordered by the line of each
//! host's first header; 1.x also reads dotted keys and inline tables, ordered by line. Only
//! the first shape puts credgate's hosts before the operator's for every version, so an
//! operator host in another shape is refused ([`FrontingError::Shape`]).

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

use crate::containerd::files::{host_entry, MIRROR_HEADER, MIRROR_PATH_PREFIX};

/// Why a hosts.toml cannot be fronted as it is; every variant names the file and the host.
#[derive(Debug, thiserror::Error)]
pub enum FrontingError {
    #[error("{path}: `host` is not a table")]
    HostNotATable { path: PathBuf },
    #[error(
        "{path}: host {key:?} has `capabilities` other than an array of \"pull\", \"resolve\", \
         \"push\" and \"referrers\", so containerd refuses the file"
    )]
    Capabilities { path: PathBuf, key: String },
    #[error(
        "{path}: host {key:?} is written as dotted keys or an inline table, which containerd 2.x \
         does not read as a host and credgate cannot put its hosts before; write it as a \
         [host.{key:?}] table"
    )]
    Shape { path: PathBuf, key: String },
}

/// What containerd may use a host for, in the order containerd's docs spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Capability {
    Pull,
    Resolve,
    Push,
    Referrers,
}

impl Capability {
    const ALL: [Capability; 4] = [
        Capability::Pull,
        Capability::Resolve,
        Capability::Push,
        Capability::Referrers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Pull => "pull",
            Capability::Resolve => "resolve",
            Capability::Push => "push",
            Capability::Referrers => "referrers",
        }
    }

    /// containerd compares capability names case-insensitively.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(name))
    }
}

/// What a host of a hosts.toml is to credgate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// The operator's own host.
    Operator,
    /// credgate's host for the upstream: the endpoint's URL, no path.
    Upstream,
    /// A fronted host (`<endpoint>/mirror/<n>`), with the `X-Credgate-Mirror` values it
    /// sends (exactly one when install wrote it).
    Fronted { mirrors: Vec<String> },
    /// credgate's secret header sent to another address (an older `listen.mirror`).
    Stale,
}

/// One host of a hosts.toml as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedHost {
    /// The table key exactly as the file writes it.
    pub key: String,
    pub role: Role,
    /// A `[host."…"]` table, which every containerd version reads as a host.
    pub is_table: bool,
    /// `None` when containerd would refuse them.
    pub capabilities: Option<Vec<Capability>>,
    /// The string values of its `X-Credgate-Secret` header.
    pub secret_values: Vec<String>,
}

impl ListedHost {
    pub fn is_credgate(&self) -> bool {
        self.role != Role::Operator
    }

    /// The capabilities its fronted host gets: its own that are for pulls. Empty for a
    /// push-only host or one containerd would refuse.
    pub fn fronted_capabilities(&self) -> Vec<Capability> {
        fronted(self.capabilities.as_deref().unwrap_or_default())
    }

    /// An operator host as install can front it: a table with capabilities containerd reads.
    pub fn check_frontable(&self, path: &Path) -> Result<(), FrontingError> {
        if !self.is_table {
            return Err(FrontingError::Shape {
                path: path.to_path_buf(),
                key: self.key.clone(),
            });
        }
        if self.capabilities.is_none() {
            return Err(FrontingError::Capabilities {
                path: path.to_path_buf(),
                key: self.key.clone(),
            });
        }
        Ok(())
    }
}

/// The pull capabilities among `capabilities`, in containerd's order.
pub(crate) fn fronted(capabilities: &[Capability]) -> Vec<Capability> {
    [Capability::Pull, Capability::Resolve]
        .into_iter()
        .filter(|c| capabilities.contains(c))
        .collect()
}

/// The hosts of a hosts.toml, in the order containerd tries them, and its `server`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostsListing {
    pub server: Option<String>,
    pub hosts: Vec<ListedHost>,
}

impl HostsListing {
    /// Reads `doc`, telling credgate's hosts (a secret header, or the endpoint's address
    /// `endpoint`) from the operator's.
    pub fn read(path: &Path, doc: &DocumentMut, endpoint: &str) -> Result<Self, FrontingError> {
        let server = doc.get("server").and_then(Item::as_str).map(str::to_string);
        let Some(hosts) = doc.get("host") else {
            return Ok(Self {
                server,
                hosts: Vec::new(),
            });
        };
        let hosts = hosts
            .as_table_like()
            .ok_or_else(|| FrontingError::HostNotATable {
                path: path.to_path_buf(),
            })?;
        let mut listed: Vec<(Option<usize>, ListedHost)> = hosts
            .iter()
            .map(|(key, item)| (first_line(item), listed_host(key, item, endpoint)))
            .collect();
        // Stable: hosts without a position of their own keep the order they were read in.
        listed.sort_by_key(|(position, _)| *position);
        Ok(Self {
            server,
            hosts: listed.into_iter().map(|(_, host)| host).collect(),
        })
    }

    /// The operator's hosts, in order.
    pub fn operator_hosts(&self) -> impl Iterator<Item = &ListedHost> {
        self.hosts.iter().filter(|h| !h.is_credgate())
    }

    /// The operator hosts that get a fronted host, in order: those that pull or resolve.
    pub fn to_front(&self) -> impl Iterator<Item = &ListedHost> {
        self.operator_hosts()
            .filter(|h| !h.fronted_capabilities().is_empty())
    }
}

/// The URL of the `n`th fronted host (from 1).
pub(crate) fn fronted_url(endpoint: &str, n: usize) -> String {
    format!("{endpoint}{MIRROR_PATH_PREFIX}{n}")
}

fn listed_host(key: &str, item: &Item, endpoint: &str) -> ListedHost {
    let entry = host_entry(key, item);
    let fronted_prefix = format!("{endpoint}{MIRROR_PATH_PREFIX}");
    let role = if key == endpoint {
        Role::Upstream
    } else if key.starts_with(&fronted_prefix) {
        Role::Fronted {
            mirrors: mirror_values(item),
        }
    } else if entry.is_credgate() {
        Role::Stale
    } else {
        Role::Operator
    };
    ListedHost {
        key: key.to_string(),
        role,
        is_table: item.as_table().is_some_and(|t| !t.is_dotted()),
        capabilities: capabilities(item),
        secret_values: entry.secret_values,
    }
}

/// The capabilities a host's `capabilities` gives it; containerd's default (all four) when
/// absent or empty, `None` when containerd refuses them.
fn capabilities(item: &Item) -> Option<Vec<Capability>> {
    let Some(value) = item.get("capabilities") else {
        return Some(Capability::ALL.to_vec());
    };
    let array = value.as_array()?;
    if array.is_empty() {
        return Some(Capability::ALL.to_vec());
    }
    let mut found = Vec::new();
    for element in array.iter() {
        let capability = Capability::parse(element.as_str()?)?;
        if !found.contains(&capability) {
            found.push(capability);
        }
    }
    found.sort();
    Some(found)
}

/// Every `X-Credgate-Mirror` value of a host's `[header]` (the name in any case; a string
/// or an array of them).
fn mirror_values(item: &Item) -> Vec<String> {
    let Some(headers) = item.get("header").and_then(Item::as_table_like) else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(MIRROR_HEADER))
        .flat_map(|(_, value)| match value.as_value() {
            Some(toml_edit::Value::String(s)) => vec![s.value().clone()],
            Some(toml_edit::Value::Array(values)) => values
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
            _ => vec![String::new()],
        })
        .collect()
}

/// Where a host starts in the file: its table header, or for a host written only through
/// sub-tables (`[host."h".header]`), the first of those. `None` for other shapes.
pub(crate) fn first_line(item: &Item) -> Option<usize> {
    item.as_table().and_then(table_start)
}

fn table_start(table: &Table) -> Option<usize> {
    table.position().or_else(|| {
        table
            .iter()
            .filter_map(|(_, item)| item.as_table().and_then(table_start))
            .min()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:5008";

    fn read(text: &str) -> HostsListing {
        let doc: DocumentMut = text.parse().unwrap();
        HostsListing::read(Path::new("r/hosts.toml"), &doc, URL).unwrap()
    }

    fn caps(names: &[&str]) -> Option<Vec<Capability>> {
        Some(
            names
                .iter()
                .map(|n| Capability::parse(n).unwrap())
                .collect(),
        )
    }

    #[test]
    fn capabilities_default_to_all_four_and_are_read_case_insensitively() {
        let file = read(
            "[host.\"https://a\"]\n\
             [host.\"https://b\"]\n  capabilities = []\n\
             [host.\"https://c\"]\n  capabilities = [\"RESOLVE\", \"pull\", \"pull\"]\n\
             [host.\"https://d\"]\n  capabilities = [\"push\"]\n\
             [host.\"https://e\"]\n  capabilities = [\"pull\", \"fetch\"]\n\
             [host.\"https://f\"]\n  capabilities = \"pull\"\n\
             [host.\"https://g\"]\n  capabilities = [\"resolve\", \"referrers\"]\n",
        );
        let all = caps(&["pull", "resolve", "push", "referrers"]);
        let read: Vec<_> = file.hosts.iter().map(|h| h.capabilities.clone()).collect();
        assert_eq!(
            read,
            [
                all.clone(),
                all,
                caps(&["pull", "resolve"]),
                caps(&["push"]),
                None,
                None,
                caps(&["resolve", "referrers"]),
            ]
        );
        let fronted: Vec<Vec<&str>> = file
            .hosts
            .iter()
            .map(|h| {
                h.fronted_capabilities()
                    .iter()
                    .map(|c| c.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(
            fronted,
            [
                vec!["pull", "resolve"],
                vec!["pull", "resolve"],
                vec!["pull", "resolve"],
                vec![],
                vec![],
                vec![],
                vec!["resolve"],
            ]
        );
        let to_front: Vec<&str> = file.to_front().map(|h| h.key.as_str()).collect();
        assert_eq!(
            to_front,
            ["https://a", "https://b", "https://c", "https://g"]
        );
    }

    #[test]
    fn roles_come_from_the_endpoint_address_and_the_secret_header() {
        let file = read(
            "[host.\"http://127.0.0.1:5008/mirror/1\"]\n  [host.\"http://127.0.0.1:5008/mirror/1\".header]\n    \
             X-Credgate-Secret = [\"s\"]\n    x-credgate-mirror = [\"https://m\"]\n\
             [host.\"http://127.0.0.1:5008\"]\n  header = { X-Credgate-Secret = \"s\" }\n\
             [host.\"http://127.0.0.1:6000\".header]\n  X-Credgate-Secret = \"old\"\n\
             [host.\"https://m\"]\n",
        );
        let roles: Vec<&Role> = file.hosts.iter().map(|h| &h.role).collect();
        assert_eq!(
            roles,
            [
                &Role::Fronted {
                    mirrors: vec!["https://m".to_string()]
                },
                &Role::Upstream,
                &Role::Stale,
                &Role::Operator,
            ]
        );
        assert_eq!(file.hosts[1].secret_values, ["s"]);
        assert_eq!(fronted_url(URL, 2), "http://127.0.0.1:5008/mirror/2");
    }

    #[test]
    fn hosts_are_in_the_order_of_their_first_table_header() {
        let file = read(
            "server = \"https://r\"\n\
             [host.\"https://b\".header]\n  X-Other = \"v\"\n\
             [host.\"https://a\"]\n\
             [host.\"https://b\".extra]\n",
        );
        let keys: Vec<&str> = file.hosts.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["https://b", "https://a"]);
        assert_eq!(file.server.as_deref(), Some("https://r"));
        assert!(file.hosts.iter().all(|h| h.is_table));
    }

    #[test]
    fn dotted_and_inline_hosts_are_not_frontable_and_say_how_to_write_them() {
        let file = read(
            "host.\"https://dotted\".capabilities = [\"pull\"]\n\
             [host.\"https://table\"]\n",
        );
        let path = Path::new("r/hosts.toml");
        let dotted = file
            .hosts
            .iter()
            .find(|h| h.key == "https://dotted")
            .unwrap();
        let err = dotted.check_frontable(path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r/hosts.toml: host \"https://dotted\" is written as dotted keys or an inline \
             table, which containerd 2.x does not read as a host and credgate cannot put its \
             hosts before; write it as a [host.\"https://dotted\"] table"
        );
        let file = read("[host]\n\"https://inline\" = { capabilities = [\"pull\"] }\n");
        assert!(file.hosts[0].check_frontable(path).is_err());
        let file = read("[host.\"https://bad\"]\n  capabilities = [1]\n");
        assert!(matches!(
            file.hosts[0].check_frontable(path),
            Err(FrontingError::Capabilities { .. })
        ));
        let doc: DocumentMut = "host = 1\n".parse().unwrap();
        assert!(HostsListing::read(path, &doc, URL).is_err());
    }
}
