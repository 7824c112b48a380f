//! hosts.toml files: `_default/hosts.toml` routes every registry through the endpoint, and
//! each existing per-registry hosts.toml (which shadows `_default`) gets the endpoint as its
//! first host, since containerd tries hosts in file order.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table};

use crate::containerd::files::{
    host_entry, parse_toml, registry_dirs, DEFAULT_HOSTS_SUBDIR, SECRET_HEADER,
};

use super::files::{Access, Change, Found};
use super::InstallError;

/// The pull-through endpoint as hosts.toml names it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `http://<listen.mirror>`
    pub url: String,
    pub secret: String,
}

/// The endpoint's host table, exactly as the README shows it.
fn host_snippet(endpoint: &Endpoint) -> String {
    let secret = toml_edit::Value::from(endpoint.secret.as_str());
    let url = &endpoint.url;
    format!(
        "[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
         [host.\"{url}\".header]\n    {SECRET_HEADER} = [{secret}]\n"
    )
}

/// The change for `_default/hosts.toml` and for every existing `<registry>/hosts.toml`.
/// A registry directory without a hosts.toml also shadows `_default`; it is reported, not
/// touched (a hosts.toml there would hide its certificate files).
pub(crate) fn plan(
    hosts_dir: &Path,
    endpoint: &Endpoint,
    warnings: &mut Vec<String>,
) -> Result<Vec<Change>, InstallError> {
    let mut paths = vec![hosts_dir.join(DEFAULT_HOSTS_SUBDIR).join("hosts.toml")];
    let dirs = registry_dirs(hosts_dir).map_err(|source| InstallError::Read {
        path: hosts_dir.to_path_buf(),
        source,
    })?;
    for dir in dirs {
        let file = dir.join("hosts.toml");
        // Not `is_file`, which follows a symlink: one is refused when read, not skipped.
        let present =
            std::fs::symlink_metadata(&file).is_ok_and(|meta| meta.is_file() || meta.is_symlink());
        if present {
            paths.push(file);
        } else {
            warnings.push(format!(
                "warning: {} has no hosts.toml, so it shadows _default and pulls from that \
                 registry bypass credgate; add a hosts.toml there and run install again",
                dir.display()
            ));
        }
    }
    paths
        .iter()
        .map(|path| file_change(path, endpoint))
        .collect()
}

/// The merged file, which carries the secret: readable by root (containerd) only, whatever
/// mode the operator's file had. A symlinked or hard-linked hosts.toml is refused (see
/// [`Found::read_regular`]), so nothing it points at is shown, copied or replaced.
fn file_change(path: &Path, endpoint: &Endpoint) -> Result<Change, InstallError> {
    let before = Found::read_regular(path)?.map(|(_, found)| found);
    let bytes = before.as_ref().map(|found| found.bytes.as_slice());
    let text = String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
    let after = merge(path, &text, endpoint)?;
    Ok(Change::new(
        path,
        before,
        after.into_bytes(),
        Access::SecretHolder,
    ))
}

/// `text` with credgate's host first among its hosts (replacing an earlier credgate host),
/// everything else kept as written.
pub(crate) fn merge(path: &Path, text: &str, endpoint: &Endpoint) -> Result<String, InstallError> {
    let mut doc = parse_toml(path, text)?;
    let ours = our_host_table(endpoint);
    let root_has_values = doc.iter().any(|(_, item)| !item.is_table_like());
    let hosts = doc
        .entry("host")
        .or_insert_with(|| Item::Table(implicit_table()));
    let hosts = hosts
        .as_table_mut()
        .ok_or_else(|| InstallError::NotATable {
            path: path.to_path_buf(),
            key: "host".to_string(),
        })?;
    let rebuilt = with_ours_first(hosts, ours, &endpoint.url, root_has_values);
    *hosts = rebuilt;
    Ok(doc.to_string())
}

fn implicit_table() -> Table {
    let mut table = Table::new();
    table.set_implicit(true);
    table
}

/// credgate's host table, formatted as [`host_snippet`] writes it, with no document position
/// of its own (so it sorts where it is inserted).
fn our_host_table(endpoint: &Endpoint) -> Table {
    let snippet: DocumentMut = host_snippet(endpoint)
        .parse()
        .expect("the host snippet is valid TOML");
    let table = snippet["host"][endpoint.url.as_str()]
        .as_table()
        .expect("the snippet holds the host table");
    unpositioned(table)
}

/// A copy of `table` (and its sub-tables) without document positions.
fn unpositioned(table: &Table) -> Table {
    let mut copy = Table::new();
    *copy.decor_mut() = table.decor().clone();
    copy.set_implicit(table.is_implicit());
    for (key, _) in table.iter() {
        let (key, item) = table.get_key_value(key).expect("iterated key");
        let item = match item {
            Item::Table(sub) => Item::Table(unpositioned(sub)),
            other => other.clone(),
        };
        copy.insert_formatted(key, item);
    }
    copy
}

/// The hosts table rebuilt with credgate's host first, then the others in their order.
fn with_ours_first(hosts: &Table, mut ours: Table, url: &str, root_has_values: bool) -> Table {
    let mut rebuilt = Table::new();
    *rebuilt.decor_mut() = hosts.decor().clone();
    rebuilt.set_implicit(hosts.is_implicit());
    if let Some(position) = hosts.position() {
        rebuilt.set_position(position);
    }
    let others: Vec<(toml_edit::Key, Item)> = hosts
        .iter()
        .filter(|(key, item)| *key != url && !host_entry(key, item).is_credgate())
        .map(|(key, _)| {
            let (key, item) = hosts.get_key_value(key).expect("iterated key");
            (key.clone(), item.clone())
        })
        .collect();
    let first_other = others.iter().find_map(|(_, item)| item.as_table());
    // Sorting by position is stable: sharing the first other host's position puts ours before it.
    if let Some(position) = first_other.and_then(Table::position) {
        ours.set_position(position);
    }
    ours.decor_mut()
        .set_prefix(if root_has_values { "\n" } else { "" });
    rebuilt.insert(url, Item::Table(ours));
    for (index, (key, mut item)) in others.into_iter().enumerate() {
        if index == 0 {
            blank_line_before(&mut item);
        }
        rebuilt.insert_formatted(&key, item);
    }
    rebuilt
}

/// Makes sure a blank line separates credgate's host from the table that now follows it.
fn blank_line_before(item: &mut Item) {
    let Some(table) = item.as_table_mut() else {
        return;
    };
    let prefix = table
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string();
    if !prefix.starts_with('\n') {
        table.decor_mut().set_prefix(format!("\n{prefix}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::files::read_hosts;

    fn endpoint() -> Endpoint {
        Endpoint {
            url: "http://127.0.0.1:5008".to_string(),
            secret: "s3cret".to_string(),
        }
    }

    const OURS: &str =
        "[host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
         [host.\"http://127.0.0.1:5008\".header]\n    X-Credgate-Secret = [\"s3cret\"]\n";

    #[test]
    fn an_empty_file_gets_exactly_the_readme_snippet_and_merging_again_changes_nothing() {
        let path = Path::new("_default/hosts.toml");
        let text = merge(path, "", &endpoint()).unwrap();
        assert_eq!(text, OURS);
        assert_eq!(merge(path, &text, &endpoint()).unwrap(), text);
    }

    #[test]
    fn ours_goes_before_the_existing_hosts_and_replaces_an_old_credgate_host() {
        let path = Path::new("docker.io/hosts.toml");
        let existing = "server = \"https://registry-1.docker.io\"\n\n# the office mirror\n\
            [host.\"https://mirror.test\"]\n  capabilities = [\"pull\"]\n  ca = \"/m.pem\"\n";
        let merged = merge(path, existing, &endpoint()).unwrap();
        let expected = format!(
            "server = \"https://registry-1.docker.io\"\n\n{OURS}\n# the office mirror\n\
            [host.\"https://mirror.test\"]\n  capabilities = [\"pull\"]\n  ca = \"/m.pem\"\n"
        );
        assert_eq!(merged, expected);
        assert_eq!(merge(path, &merged, &endpoint()).unwrap(), merged);
        let rotated = Endpoint {
            secret: "new".to_string(),
            ..endpoint()
        };
        let again = merge(path, &merged, &rotated).unwrap();
        assert_eq!(again, expected.replace("s3cret", "new"));
    }

    #[test]
    fn hosts_are_read_in_file_order_with_their_secret_header() {
        let path = Path::new("r/hosts.toml");
        let merged = merge(path, "[host.\"https://a.test\"]\n", &endpoint()).unwrap();
        let hosts = read_hosts(path, &merged).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].url, "http://127.0.0.1:5008");
        assert_eq!(hosts[0].secret_values, ["s3cret"]);
        assert!(!hosts[1].is_credgate());
    }

    #[test]
    fn a_file_that_starts_with_a_host_gets_ours_first_and_a_blank_line() {
        let path = Path::new("r/hosts.toml");
        let existing = "[host.\"https://a.test\"]\n  capabilities = [\"pull\"]\n";
        let merged = merge(path, existing, &endpoint()).unwrap();
        assert_eq!(merged, format!("{OURS}\n{existing}"));
        assert_eq!(merge(path, &merged, &endpoint()).unwrap(), merged);
    }
}
