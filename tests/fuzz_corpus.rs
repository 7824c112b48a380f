//! The fuzz corpora as ordinary tests, on stable: every seed in `fuzz/corpus/<target>/` and
//! every crash found so far in `fuzz/regressions/<target>/` goes through its target's entry
//! in `credgate::fuzzing`, so CI holds every parser to its promises without nightly.

use std::path::{Path, PathBuf};

/// A target's entry in `credgate::fuzzing`.
type Entry = fn(&[u8]);

/// Every fuzz target: its name (the corpus directory and `fuzz/fuzz_targets/<name>.rs`) and
/// its entry.
const TARGETS: &[(&str, Entry)] = &[
    ("identity", credgate::fuzzing::identity),
    ("challenge", credgate::fuzzing::challenge),
    ("token", credgate::fuzzing::token),
    ("docker_config", credgate::fuzzing::docker_config),
    ("kubelet_config", credgate::fuzzing::kubelet_config),
    ("kubelet_response", credgate::fuzzing::kubelet_response),
    ("credgate_config", credgate::fuzzing::credgate_config),
    ("containerd_files", credgate::fuzzing::containerd_files),
    ("route", credgate::fuzzing::route),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir`, sorted; an unreadable directory is a failure, a missing one is none.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `target`'s corpus and regressions through `entry`, naming each file
/// that breaks a promise. The corpus must not be empty: a target without seeds would pass
/// here while checking nothing.
fn replay(target: &str, entry: Entry) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let seeds = files_in(&corpus);
    assert!(
        !seeds.is_empty(),
        "{}: no seed corpus for fuzz target {target}; add a few realistic inputs",
        corpus.display()
    );
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));
    let mut broken = Vec::new();
    for file in seeds.iter().chain(&regressions) {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            broken.push(file.display().to_string());
        }
    }
    assert!(
        broken.is_empty(),
        "{target}: these inputs break it: {broken:#?}"
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let (target, entry) = TARGETS
                .iter()
                .find(|(target, _)| *target == stringify!($name))
                .expect("listed in TARGETS");
            replay(target, *entry);
        }
    )*};
}

replay_tests!(
    identity,
    challenge,
    token,
    docker_config,
    kubelet_config,
    kubelet_response,
    credgate_config,
    containerd_files,
    route,
);

/// The fuzz crate and this list name the same targets, so none is fuzzed but never
/// replayed, or replayed but never fuzzed.
#[test]
fn every_fuzz_target_is_replayed_here() {
    let mut fuzzed: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_string()))
        .collect();
    fuzzed.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    listed.sort();
    assert_eq!(fuzzed, listed);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &listed {
        let entry = format!("credgate::fuzzing::{name}(data)");
        let source =
            std::fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")))
                .expect("a fuzz target");
        assert!(
            source.contains(&entry),
            "fuzz_targets/{name}.rs does not call {entry}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lacks {name}"
        );
    }
}
