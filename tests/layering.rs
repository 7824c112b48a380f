//! The module layering, checked from the source text: no import circle between the crate's
//! top-level modules, nor between the files of one module directory. `cargo modules` would show
//! the same graph, but it is a heavy tool to install for one question; this reads every
//! `crate::<module>` and `super::<sibling>` path outside comments and unit-test modules and
//! fails naming the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests` block (tests
/// may reach anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with("//")
        })
        .map(|line| line.split(" // ").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every identifier that follows `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .filter(|(at, _)| {
            // `crate::` only at a path start, not inside `credgate::crate_name::`.
            code[..*at]
                .chars()
                .last()
                .map_or(true, |c| !c.is_alphanumeric() && c != '_' && c != ':')
        })
        .map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// One circle in `graph`, if there is any, as the path that closes it.
fn find_circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(graph, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

/// (top-level graph, one graph per module directory).
fn import_graphs() -> (Graph, BTreeMap<String, Graph>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut top = Graph::new();
    let mut inner: BTreeMap<String, Graph> = BTreeMap::new();
    for file in files {
        let relative: Vec<String> = file
            .strip_prefix(&src)
            .expect("under src")
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let module = relative[0].clone();
        if module == "lib" || module == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("read source"));
        let uses = top.entry(module.clone()).or_default();
        for used in paths_after(&code, "crate::") {
            if used != module {
                uses.insert(used.to_string());
            }
        }
        // Siblings: src/<module>/<file>.rs naming super::<other file of the same directory>.
        if relative.len() == 2 && relative[1] != "mod" {
            let dir = src.join(&module);
            let me = relative[1].clone();
            let siblings = inner.entry(module).or_default();
            let uses = siblings.entry(me.clone()).or_default();
            for used in paths_after(&code, "super::") {
                let is_sibling =
                    dir.join(format!("{used}.rs")).is_file() || dir.join(used).is_dir();
                if is_sibling && used != me {
                    uses.insert(used.to_string());
                }
            }
        }
    }
    (top, inner)
}

#[test]
fn top_level_modules_import_without_circles() {
    let (top, _) = import_graphs();
    assert!(top.len() > 10, "found too few modules: {top:?}");
    if let Some(circle) = find_circle(&top) {
        panic!("import circle between modules: {}", circle.join(" -> "));
    }
}

#[test]
fn the_files_of_each_module_import_without_circles() {
    let (_, inner) = import_graphs();
    for (module, graph) in &inner {
        if let Some(circle) = find_circle(graph) {
            panic!(
                "import circle inside src/{module}/: {}",
                circle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g
        });
    let circle = find_circle(&graph).expect("a circle");
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4);
    let acyclic: Graph =
        [("a", "b"), ("b", "c"), ("a", "c")]
            .into_iter()
            .fold(Graph::new(), |mut g, (from, to)| {
                g.entry(from.to_string())
                    .or_default()
                    .insert(to.to_string());
                g
            });
    assert_eq!(find_circle(&acyclic), None);
}
