//! Install's decisions about a hosts.toml read as containerd reads it
//! (`crate::containerd::files`, docs/design.md "Mirrors through the gate"): which operator
//! hosts get a fronted host, with which capabilities, and which files cannot be fronted.
//! Install writes by these rules and doctor checks files against them.
//!
//! containerd 2.x takes as hosts only `[host."…"]` table headers, ordered by the line of each
//! host's first header; 1.x also reads dotted keys and inline tables, ordered by line. Only
//! the first shape puts credgate's hosts before the operator's for every version, so an
//! operator host in another shape is refused ([`FrontingError::Shape`]).

use std::path::{Path, PathBuf};

use crate::containerd::files::{Capabilities, HostSettings, HostsFile, Owner, MAX_HOSTS};

/// Why a hosts.toml cannot be fronted as it is; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FrontingError {
    #[error(
        "{path}: host {key} is written as dotted keys or an inline table, which containerd 2.x \
         does not read as a host and credgate cannot put its hosts before; write it as a \
         [host.{key}] table"
    )]
    Shape { path: PathBuf, key: String },
    #[error(
        "{path}: fronting its {operator} hosts takes {total} hosts, more than the {MAX_HOSTS} \
         credgate reads in one hosts.toml; list fewer mirrors there"
    )]
    TooManyHosts {
        path: PathBuf,
        operator: usize,
        total: usize,
    },
}

/// A hosts.toml as install fronts it, with credgate's endpoint at `endpoint`.
pub(crate) struct Fronting<'a> {
    pub file: &'a HostsFile,
    pub endpoint: &'a str,
}

impl Fronting<'_> {
    /// The operator's hosts, tried ones first, each in order.
    pub fn operator_hosts(&self) -> impl Iterator<Item = &HostSettings> {
        self.file
            .all_hosts()
            .filter(|h| h.owner(self.endpoint) == Owner::Operator)
    }

    /// The operator hosts that get a fronted host, in the order containerd tries them: those
    /// that pull or resolve.
    pub fn to_front(&self) -> impl Iterator<Item = &HostSettings> {
        self.file
            .hosts
            .iter()
            .filter(|h| h.owner(self.endpoint) == Owner::Operator && h.serves_pulls())
    }

    /// Whether any host is credgate's (at the endpoint, or carrying its secret header).
    pub fn has_credgate_host(&self) -> bool {
        self.file
            .all_hosts()
            .any(|h| h.owner(self.endpoint).is_credgate())
    }

    /// The operator hosts containerd 2.x would not try, which install cannot front.
    pub fn unfrontable(&self, path: &Path) -> Vec<FrontingError> {
        self.file
            .untried
            .iter()
            .filter(|h| h.owner(self.endpoint) == Owner::Operator)
            .map(|h| FrontingError::Shape {
                path: path.to_path_buf(),
                key: quoted_key(&h.key),
            })
            .collect()
    }

    /// The file as install can front it: every operator host a table, and room for
    /// credgate's hosts within what credgate reads back.
    pub fn check(&self, path: &Path) -> Result<(), FrontingError> {
        if let Some(first) = self.unfrontable(path).into_iter().next() {
            return Err(first);
        }
        let operator = self.operator_hosts().count();
        let total = operator + self.to_front().count() + 1;
        if total > MAX_HOSTS {
            return Err(FrontingError::TooManyHosts {
                path: path.to_path_buf(),
                operator,
                total,
            });
        }
        Ok(())
    }
}

/// The capabilities a host's fronted host gets: its own that are for pulls.
pub(crate) fn fronted_capabilities(host: &HostSettings) -> Capabilities {
    host.capabilities.for_pulls()
}

/// A host key quoted, its quotes and control characters escaped, so it stays one line.
fn quoted_key(key: &str) -> String {
    format!("{key:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::files::read_hosts_file;

    const URL: &str = "http://127.0.0.1:5008";

    fn read(text: &str) -> HostsFile {
        read_hosts_file(Path::new("r/hosts.toml"), text).unwrap()
    }

    fn front(file: &HostsFile) -> Fronting<'_> {
        Fronting {
            file,
            endpoint: URL,
        }
    }

    #[test]
    fn pull_hosts_of_the_operator_are_fronted_with_their_pull_capabilities() {
        let file = read(
            "[host.\"https://a\"]\n\
             [host.\"https://b\"]\n  capabilities = []\n\
             [host.\"https://c\"]\n  capabilities = [\"RESOLVE\", \"pull\", \"pull\"]\n\
             [host.\"https://d\"]\n  capabilities = [\"push\"]\n\
             [host.\"https://g\"]\n  capabilities = [\"resolve\", \"referrers\"]\n\
             [host.\"http://127.0.0.1:5008\"]\n\
             [host.\"http://127.0.0.1:6000\".header]\n  X-Credgate-Secret = \"old\"\n",
        );
        let fronting = front(&file);
        let fronted: Vec<(&str, Vec<&str>)> = fronting
            .to_front()
            .map(|h| (h.key.as_str(), fronted_capabilities(h).names()))
            .collect();
        assert_eq!(
            fronted,
            [
                ("https://a", vec!["pull", "resolve"]),
                ("https://b", vec!["pull", "resolve"]),
                ("https://c", vec!["pull", "resolve"]),
                ("https://g", vec!["resolve"]),
            ]
        );
        assert_eq!(fronting.operator_hosts().count(), 5);
        assert!(fronting.has_credgate_host());
        assert!(fronting.check(Path::new("r/hosts.toml")).is_ok());
    }

    #[test]
    fn dotted_and_inline_hosts_are_not_frontable_and_say_how_to_write_them() {
        let path = Path::new("r/hosts.toml");
        let file = read(
            "host.\"https://dotted\".capabilities = [\"pull\"]\n\
             [host.\"https://table\"]\n",
        );
        let fronting = front(&file);
        assert_eq!(
            fronting.check(path).unwrap_err().to_string(),
            "r/hosts.toml: host \"https://dotted\" is written as dotted keys or an inline \
             table, which containerd 2.x does not read as a host and credgate cannot put its \
             hosts before; write it as a [host.\"https://dotted\"] table"
        );
        let file = read("[host]\n\"https://inline\" = { capabilities = [\"pull\"] }\n");
        let fronting = front(&file);
        assert_eq!(fronting.unfrontable(path).len(), 1);
        // credgate's own host in such a shape is dropped, not refused.
        let file = read("host.\"http://old:1\".header.X-Credgate-Secret = \"old\"\n");
        let fronting = front(&file);
        assert!(fronting.check(path).is_ok());
        assert!(fronting.has_credgate_host());
    }

    #[test]
    fn a_file_whose_fronting_would_not_fit_is_refused_naming_the_counts() {
        let hosts: String = (0..32)
            .map(|i| format!("[host.\"https://m{i}.test\"]\n"))
            .collect();
        let file = read(&hosts);
        let fronting = front(&file);
        let err = fronting.check(Path::new("r/hosts.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r/hosts.toml: fronting its 32 hosts takes 65 hosts, more than the 64 credgate \
             reads in one hosts.toml; list fewer mirrors there"
        );
        let fits: String = (0..31)
            .map(|i| format!("[host.\"https://m{i}.test\"]\n"))
            .collect();
        let file = read(&fits);
        let fronting = front(&file);
        assert!(fronting.check(Path::new("r/hosts.toml")).is_ok());
    }
}
