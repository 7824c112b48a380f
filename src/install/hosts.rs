//! hosts.toml files: `_default/hosts.toml` routes every registry through the endpoint, and
//! each existing per-registry hosts.toml (which shadows `_default`) is fronted: for each of its
//! hosts that pulls or resolves, in order, a fronted host that reaches it through the endpoint;
//! then the endpoint's upstream host; then the operator's hosts as written (docs/design.md,
//! "Mirrors through the gate"). containerd tries hosts in file order, so it tries the same
//! hosts in the same order, each through credgate, and the operator's own entries after them
//! are what it reaches when credgate is down.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table};

use crate::containerd::files::{
    parse_toml, registry_dirs, DEFAULT_HOSTS_SUBDIR, MIRROR_HEADER, SECRET_HEADER,
};

use super::files::{backup_path, Access, Change, Found};
use super::fronting::{first_line, fronted_url, Capability, HostsListing};
use super::state::InstallState;
use super::InstallError;

/// The pull-through endpoint as hosts.toml names it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `http://<listen.mirror>`
    pub url: String,
    pub secret: String,
}

/// `text` as a TOML string, quoted and escaped as toml_edit writes it.
fn quoted(text: &str) -> String {
    toml_edit::Value::from(text).to_string()
}

/// `text` as a TOML key, quoted and escaped as toml_edit writes it.
fn key(text: &str) -> String {
    toml_edit::Key::new(text).to_string()
}

/// The endpoint's upstream host table, exactly as the README shows it.
fn host_snippet(endpoint: &Endpoint) -> String {
    let secret = quoted(&endpoint.secret);
    let url = key(&endpoint.url);
    format!(
        "[host.{url}]\n  capabilities = [\"pull\", \"resolve\"]\n  \
         [host.{url}.header]\n    {SECRET_HEADER} = [{secret}]\n"
    )
}

/// The `n`th fronted host's table: the mirror's host key as written, its pull capabilities.
fn fronted_snippet(endpoint: &Endpoint, n: usize, mirror: &str, caps: &[Capability]) -> String {
    let secret = quoted(&endpoint.secret);
    let mirror = quoted(mirror);
    let url = key(&fronted_url(&endpoint.url, n));
    let caps: Vec<String> = caps.iter().map(|c| quoted(c.as_str())).collect();
    let caps = caps.join(", ");
    format!(
        "[host.{url}]\n  capabilities = [{caps}]\n  \
         [host.{url}.header]\n    {SECRET_HEADER} = [{secret}]\n    {MIRROR_HEADER} = [{mirror}]\n"
    )
}

/// The change for `_default/hosts.toml` and for every existing `<registry>/hosts.toml`.
/// A registry directory without a hosts.toml also shadows `_default`; it is reported, not
/// touched (a hosts.toml there would hide its certificate files).
pub(crate) fn plan(
    hosts_dir: &Path,
    endpoint: &Endpoint,
    state: &InstallState,
    report: &mut super::Report,
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
            report.warnings.push(format!(
                "warning: {} has no hosts.toml, so it shadows _default and pulls from that \
                 registry bypass credgate; add a hosts.toml there and run install again",
                dir.display()
            ));
        }
    }
    paths
        .iter()
        .map(|path| file_change(path, endpoint, state, report))
        .collect()
}

/// The fronted file, which carries the secret: readable by root (containerd) only, whatever
/// mode the operator's file had. A symlinked or hard-linked hosts.toml is refused (see
/// [`Found::read_regular`]), so nothing it points at is shown, copied or replaced.
fn file_change(
    path: &Path,
    endpoint: &Endpoint,
    state: &InstallState,
    report: &mut super::Report,
) -> Result<Change, InstallError> {
    let before = Found::read_regular(path)?.map(|(_, found)| found);
    let bytes = before.as_ref().map(|found| found.bytes.as_slice());
    let text = String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
    let after = merge(path, &text, endpoint)?;
    let mut change = Change::new(path, before, after.into_bytes(), Access::SecretHolder);
    if change.before.is_some() && edited_since_install(path, &text, endpoint, state)? {
        if carries_credgate_host(path, &text, endpoint)? {
            let undone = if state.created(path) {
                "install created it, so uninstall removes it, edits included".to_string()
            } else {
                format!(
                    "uninstall gives back the file as it was before install ({}), without those \
                     edits",
                    backup_path(path).display()
                )
            };
            report.warnings.push(format!(
                "warning: {} was edited since install; install fronts it as it is now, but {undone}",
                path.display()
            ));
        } else {
            // Rewritten without credgate's hosts (Spegel, Dragonfly, config management): this
            // is the operator's file now, and what uninstall must give back.
            change.rewritten_since_install = true;
        }
    }
    Ok(change)
}

/// Whether the file, once fronted, differs from its original fronted the same way: someone
/// other than install changed it since install last wrote it. `false` for a file install
/// never wrote.
fn edited_since_install(
    path: &Path,
    text: &str,
    endpoint: &Endpoint,
    state: &InstallState,
) -> Result<bool, InstallError> {
    let original = if state.created(path) {
        String::new()
    } else if state.backed_up(path) {
        match Found::read_regular(&backup_path(path))? {
            Some((_, found)) => String::from_utf8_lossy(&found.bytes).into_owned(),
            // Uninstall names a missing backup; install has nothing to compare with.
            None => return Ok(false),
        }
    } else {
        return Ok(false);
    };
    let Ok(original) = merge(path, &original, endpoint) else {
        return Ok(false);
    };
    Ok(merge(path, text, endpoint)? != original)
}

fn carries_credgate_host(
    path: &Path,
    text: &str,
    endpoint: &Endpoint,
) -> Result<bool, InstallError> {
    let doc = parse_toml(path, text)?;
    let file = HostsListing::read(path, &doc, &endpoint.url)?;
    Ok(file.hosts.iter().any(|h| h.is_credgate()))
}

/// `text` fronted: every credgate host dropped (whatever install wrote before), then a
/// fronted host for each operator host that pulls or resolves, credgate's upstream host, and
/// the operator's hosts; everything else kept as written.
pub(crate) fn merge(path: &Path, text: &str, endpoint: &Endpoint) -> Result<String, InstallError> {
    let mut doc = parse_toml(path, text)?;
    let file = HostsListing::read(path, &doc, &endpoint.url)?;
    for host in file.operator_hosts() {
        host.check_frontable(path)?;
    }
    let mut ours: Vec<(String, Table)> = file
        .to_front()
        .enumerate()
        .map(|(index, host)| {
            let url = fronted_url(&endpoint.url, index + 1);
            let caps = host.fronted_capabilities();
            let snippet = fronted_snippet(endpoint, index + 1, &host.key, &caps);
            let table = snippet_table(&snippet, &url);
            (url, table)
        })
        .collect();
    ours.push((
        endpoint.url.clone(),
        snippet_table(&host_snippet(endpoint), &endpoint.url),
    ));
    let operators: Vec<&str> = file.operator_hosts().map(|h| h.key.as_str()).collect();
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
    let rebuilt = fronted_first(hosts, ours, &operators, root_has_values);
    *hosts = rebuilt;
    Ok(doc.to_string())
}

fn implicit_table() -> Table {
    let mut table = Table::new();
    table.set_implicit(true);
    table
}

/// The host table `url` of a snippet, with no document position of its own (so it sorts
/// where it is inserted).
fn snippet_table(snippet: &str, url: &str) -> Table {
    let snippet: DocumentMut = snippet.parse().expect("a host snippet is valid TOML");
    let table = snippet["host"][url]
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

/// The hosts table rebuilt with credgate's hosts (`ours`, in order) first, then the
/// operator's (`operators`) as they were.
fn fronted_first(
    hosts: &Table,
    ours: Vec<(String, Table)>,
    operators: &[&str],
    root_has_values: bool,
) -> Table {
    let mut rebuilt = Table::new();
    *rebuilt.decor_mut() = hosts.decor().clone();
    rebuilt.set_implicit(hosts.is_implicit());
    if let Some(position) = hosts.position() {
        rebuilt.set_position(position);
    }
    let mut others: Vec<(toml_edit::Key, Item)> = hosts
        .iter()
        .filter(|(key, _)| operators.contains(key))
        .map(|(key, _)| {
            let (key, item) = hosts.get_key_value(key).expect("iterated key");
            (key.clone(), item.clone())
        })
        .collect();
    let first_other = others
        .iter_mut()
        .filter_map(|(_, item)| first_line(item).map(|line| (line, item)))
        .min_by_key(|(line, _)| *line);
    // Rendering sorts tables by position, stably: sharing the first other host's position
    // puts ours, inserted before it, right before it.
    let position = first_other.as_ref().map(|(line, _)| *line);
    if let Some((line, item)) = first_other {
        blank_line_before(item, line);
    }
    for (index, (url, mut table)) in ours.into_iter().enumerate() {
        if let Some(position) = position {
            table.set_position(position);
        }
        let blank = index > 0 || root_has_values;
        table.decor_mut().set_prefix(if blank { "\n" } else { "" });
        rebuilt.insert(&url, Item::Table(table));
    }
    for (key, item) in others {
        rebuilt.insert_formatted(&key, item);
    }
    rebuilt
}

/// Makes sure a blank line separates credgate's hosts from the table (of `item`, or its
/// first sub-table) that starts at `line` and now follows them.
fn blank_line_before(item: &mut Item, line: usize) {
    let Some(table) = item.as_table_mut() else {
        return;
    };
    if table.position() != Some(line) {
        for (_, sub) in table.iter_mut() {
            if first_line(sub) == Some(line) {
                blank_line_before(sub, line);
                return;
            }
        }
        return;
    }
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

    /// The `n`th fronted host for `mirror`, as install writes it.
    fn fronted(n: usize, mirror: &str, caps: &str) -> String {
        format!(
            "[host.\"http://127.0.0.1:5008/mirror/{n}\"]\n  capabilities = [{caps}]\n  \
             [host.\"http://127.0.0.1:5008/mirror/{n}\".header]\n    \
             X-Credgate-Secret = [\"s3cret\"]\n    X-Credgate-Mirror = [\"{mirror}\"]\n"
        )
    }

    const BOTH: &str = "\"pull\", \"resolve\"";

    /// `merge`, checked to be idempotent.
    #[track_caller]
    fn fronted_file(path: &str, text: &str) -> String {
        let path = Path::new(path);
        let merged = merge(path, text, &endpoint()).unwrap();
        assert_eq!(merge(path, &merged, &endpoint()).unwrap(), merged, "again");
        merged
    }

    #[test]
    fn an_empty_file_gets_exactly_the_readme_snippet_and_merging_again_changes_nothing() {
        assert_eq!(fronted_file("_default/hosts.toml", ""), OURS);
    }

    #[test]
    fn a_file_with_only_server_gets_the_upstream_host_alone() {
        let existing = "server = \"https://registry.test\"\nca = \"/etc/r.pem\"\n";
        assert_eq!(
            fronted_file("registry.test/hosts.toml", existing),
            format!("{existing}\n{OURS}")
        );
    }

    #[test]
    fn a_mirror_is_fronted_then_credgates_upstream_host_then_the_mirror_as_written() {
        let path = Path::new("docker.io/hosts.toml");
        let existing = "server = \"https://registry-1.docker.io\"\n\n# the office mirror\n\
            [host.\"https://mirror.test\"]\n  capabilities = [\"pull\"]\n  ca = \"/m.pem\"\n";
        let merged = fronted_file("docker.io/hosts.toml", existing);
        let expected = format!(
            "server = \"https://registry-1.docker.io\"\n\n{}\n{OURS}\n# the office mirror\n\
            [host.\"https://mirror.test\"]\n  capabilities = [\"pull\"]\n  ca = \"/m.pem\"\n",
            fronted(1, "https://mirror.test", "\"pull\"")
        );
        assert_eq!(merged, expected);
        let rotated = Endpoint {
            secret: "new".to_string(),
            ..endpoint()
        };
        let again = merge(path, &merged, &rotated).unwrap();
        assert_eq!(again, expected.replace("s3cret", "new"));
    }

    #[test]
    fn several_mirrors_keep_their_order_and_settings_and_push_only_hosts_are_not_fronted() {
        let existing = "server = \"https://registry.test\"\n\
            [header]\n  X-Upstream = \"kept\"\n\n\
            [host.\"https://harbor.test/v2/hub-proxy\"]\n  capabilities = [\"resolve\", \"PULL\"]\n  \
            override_path = true\n  client = [[\"/c.pem\", \"/k.pem\"]]\n\n\
            [host.\"https://push.test\"]\n  capabilities = [\"push\"]\n\n\
            [host.\"http://plain.test:5000\"]\n\n\
            [host.\"spegel.test:30020\"]\n  capabilities = [\"resolve\"]\n  skip_verify = true\n  \
            ca = [\"a.pem\", \"b.pem\"]\n  [host.\"spegel.test:30020\".header]\n    X-Other = [\"v\"]\n";
        let merged = fronted_file("registry.test/hosts.toml", existing);
        let expected = format!(
            "server = \"https://registry.test\"\n[header]\n  X-Upstream = \"kept\"\n\n\
             {}\n{}\n{}\n{OURS}\n\
             [host.\"https://harbor.test/v2/hub-proxy\"]\n  capabilities = [\"resolve\", \"PULL\"]\n  \
             override_path = true\n  client = [[\"/c.pem\", \"/k.pem\"]]\n\n\
             [host.\"https://push.test\"]\n  capabilities = [\"push\"]\n\n\
             [host.\"http://plain.test:5000\"]\n\n\
             [host.\"spegel.test:30020\"]\n  capabilities = [\"resolve\"]\n  skip_verify = true\n  \
             ca = [\"a.pem\", \"b.pem\"]\n  [host.\"spegel.test:30020\".header]\n    X-Other = [\"v\"]\n",
            fronted(1, "https://harbor.test/v2/hub-proxy", BOTH),
            fronted(2, "http://plain.test:5000", BOTH),
            fronted(3, "spegel.test:30020", "\"resolve\""),
        );
        assert_eq!(merged, expected);
        // containerd's order: the fronted hosts, credgate's, then the operator's.
        let path = Path::new("registry.test/hosts.toml");
        let order: Vec<String> = read_hosts(path, &merged)
            .unwrap()
            .into_iter()
            .map(|h| h.url)
            .collect();
        assert_eq!(
            order,
            [
                "http://127.0.0.1:5008/mirror/1",
                "http://127.0.0.1:5008/mirror/2",
                "http://127.0.0.1:5008/mirror/3",
                "http://127.0.0.1:5008",
                "https://harbor.test/v2/hub-proxy",
                "https://push.test",
                "http://plain.test:5000",
                "spegel.test:30020",
            ]
        );
    }

    #[test]
    fn a_file_that_starts_with_a_host_gets_credgates_hosts_first_and_a_blank_line() {
        let existing = "[host.\"https://a.test\"]\n  capabilities = [\"pull\"]\n";
        let merged = fronted_file("r/hosts.toml", existing);
        assert_eq!(
            merged,
            format!(
                "{}\n{OURS}\n{existing}",
                fronted(1, "https://a.test", "\"pull\"")
            )
        );
    }

    #[test]
    fn an_earlier_credgate_first_install_is_refronted_as_a_fresh_one() {
        let original = "server = \"https://r.test\"\n\n[host.\"https://m.test\"]\n";
        let credgate_first =
            format!("server = \"https://r.test\"\n\n{OURS}\n[host.\"https://m.test\"]\n");
        let stale = "[host.\"http://old:6000\"]\n  header = { x-credgate-secret = \"old\" }\n\n\
            [host.\"http://127.0.0.1:5008/mirror/7\"]\n  capabilities = [\"pull\"]\n\n";
        let with_stale =
            format!("server = \"https://r.test\"\n\n{stale}[host.\"https://m.test\"]\n");
        let fresh = fronted_file("r/hosts.toml", original);
        assert_eq!(fronted_file("r/hosts.toml", &credgate_first), fresh);
        assert_eq!(fronted_file("r/hosts.toml", &with_stale), fresh);
    }

    #[test]
    fn an_edit_after_install_is_fronted_as_if_made_to_the_original() {
        let original = "server = \"https://r.test\"\n\n[host.\"https://a.test\"]\n";
        let installed = fronted_file("r/hosts.toml", original);
        // A mirror added at the end and another before credgate's hosts (Spegel's way).
        let edited = format!(
            "[host.\"https://first.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n{installed}\n\
             [host.\"https://last.test\"]\n"
        );
        let merged = fronted_file("r/hosts.toml", &edited);
        let order: Vec<String> = read_hosts(Path::new("r/hosts.toml"), &merged)
            .unwrap()
            .into_iter()
            .map(|h| h.url)
            .collect();
        assert_eq!(
            order,
            [
                "http://127.0.0.1:5008/mirror/1",
                "http://127.0.0.1:5008/mirror/2",
                "http://127.0.0.1:5008/mirror/3",
                "http://127.0.0.1:5008",
                "https://first.test",
                "https://a.test",
                "https://last.test",
            ]
        );
        assert!(
            merged.contains(&fronted(2, "https://a.test", BOTH)),
            "{merged}"
        );
        assert!(
            merged.starts_with(&fronted(1, "https://first.test", BOTH)),
            "{merged}"
        );
    }

    #[test]
    fn a_host_written_only_through_its_header_table_is_fronted_in_place() {
        let existing = "[host.\"https://h.test\".header]\n  X-Other = \"v\"\n";
        let merged = fronted_file("r/hosts.toml", existing);
        assert_eq!(
            merged,
            format!("{}\n{OURS}\n{existing}", fronted(1, "https://h.test", BOTH))
        );
    }

    #[test]
    fn a_mirror_key_is_written_back_exactly_escaped_as_toml() {
        let existing = "[host.'https://m.test/a\"b']\n";
        let merged = fronted_file("r/hosts.toml", existing);
        assert!(
            merged.contains("X-Credgate-Mirror = ['https://m.test/a\"b']"),
            "{merged}"
        );
        let doc: DocumentMut = merged.parse().unwrap();
        let file = HostsListing::read(Path::new("r"), &doc, &endpoint().url).unwrap();
        assert_eq!(
            file.hosts[0].role,
            super::super::fronting::Role::Fronted {
                mirrors: vec!["https://m.test/a\"b".to_string()]
            }
        );
    }

    #[test]
    fn hostile_host_keys_are_fronted_as_written_and_never_break_the_file() {
        for key in [
            "",
            "'",
            "\\\"",
            "a\nb",
            "\u{7f}\u{0}",
            "https://m.test/\u{e9}",
            "http://127.0.0.1:5008/mirrors",
            "]",
        ] {
            let existing = format!("[host.{}]\n", super::key(key));
            let merged = fronted_file("r/hosts.toml", &existing);
            let doc: DocumentMut = merged.parse().unwrap();
            let file = HostsListing::read(Path::new("r"), &doc, &endpoint().url).unwrap();
            let keys: Vec<&str> = file.hosts.iter().map(|h| h.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "http://127.0.0.1:5008/mirror/1",
                    "http://127.0.0.1:5008",
                    key
                ],
                "{merged}"
            );
            assert_eq!(
                file.hosts[0].role,
                super::super::fronting::Role::Fronted {
                    mirrors: vec![key.to_string()]
                }
            );
        }
    }

    #[test]
    fn hosts_containerd_would_not_read_as_hosts_are_refused_naming_them() {
        for (text, says) in [
            (
                "host.\"https://dotted.test\".capabilities = [\"pull\"]\n",
                "host \"https://dotted.test\" is written as dotted keys or an inline table",
            ),
            (
                "[host]\n\"https://inline.test\" = { capabilities = [\"pull\"] }\n",
                "host \"https://inline.test\" is written as dotted keys",
            ),
            (
                "[host.\"https://bad.test\"]\n  capabilities = [\"fetch\"]\n",
                "host \"https://bad.test\" has `capabilities` other than",
            ),
            (
                "[host.\"https://push.test\"]\n  capabilities = \"push\"\n",
                "host \"https://push.test\" has `capabilities` other than",
            ),
        ] {
            let err = merge(Path::new("r/hosts.toml"), text, &endpoint()).unwrap_err();
            assert!(err.is_bad_input(), "{err}");
            let shown = err.to_string();
            assert!(shown.starts_with("r/hosts.toml: "), "{shown}");
            assert!(shown.contains(says), "{shown}");
        }
        // A credgate host in such a shape is dropped, not refused.
        let dotted_ours = "host.\"http://old:1\".header.X-Credgate-Secret = \"old\"\n";
        assert_eq!(fronted_file("r/hosts.toml", dotted_ours), OURS);
    }
}
