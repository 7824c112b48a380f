//! Shared harness for credgate's tests against real parts. A real part that is missing is a
//! test failure that says which package to install, never a skip.
//!
//! Where a test belongs:
//!
//! - **The repository's root `tests/`**: the `credgate` CLI and library against nothing but
//!   temp dirs, fixtures and the built binary (its own `serve` included, on ephemeral
//!   loopback ports): output shapes, exit codes, config errors, install's file edits, secrets
//!   kept out of logs. No other program and no root; they run anywhere `cargo test` runs.
//! - **`integration/tests/`** (this crate): credgate beside real parts: credential helpers and
//!   provider plugins it runs, `credgate serve` and its listeners over real sockets, the
//!   clients that reach it, registries, containerd. Those that need nothing of the machine
//!   but the installed programs run under plain `cargo test --workspace`.
//! - **`integration/tests/node_*.rs`**: those that need a node: real TLS registries under
//!   real host names on port 443, containerd with its own root. Each runs inside its own
//!   `unshare --mount --net` namespace (integration/test-all.sh does this; see [`node`]),
//!   is `test = false` in Cargo.toml so plain `cargo test` skips it, and fails with the
//!   command to use when run outside one.
//!
//! In a node, [`registry::Registry`] starts real distribution registries on `<host>:443`,
//! [`token_server::TokenServer`] answers their token requests as GitLab does ([`gitlab`] is
//! the one such registry most tests share), [`images::push_image`] pushes a small image with
//! crane, and [`clients::ClientEnv`] runs crane, oras and skopeo with a docker config the test
//! writes; [`daemon::CredgateDaemon`] runs `credgate serve` and gives clients
//! `docker-credential-credgate` pointed at it; [`containerd::Containerd`] runs a real
//! containerd (1.6, 1.7, 2.1) with its own config and hosts dir, and [`cri::CriClient`] asks
//! it for pulls and pod sandboxes as kubelet would; [`fleet`] runs the DaemonSet's pod from
//! `deploy/kubernetes` on it with `ctr run`, from the image `packaging/build.sh` built.
//! [`pull_through::Mirror`] runs the mirrors (pull-through caches) a hosts.toml lists ahead
//! of the GitLab stand-in. [`vm::Vm`] boots a Debian guest under qemu where credgate runs
//! under real systemd (`integration/vm/`, run by `integration/vm/run.sh`).
//! [`soak`] runs all of it at once, 64 pullers for minutes
//! (`bash integration/soak.sh`), and integration/tests/node_faults.rs breaks one part at a
//! time while pulls run.

#![forbid(unsafe_code)]

pub mod attack;
pub mod clients;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod fault_front;
pub mod fleet;
pub mod gitlab;
pub mod https;
pub mod images;
pub mod local_registry;
pub mod mirror;
pub mod node;
pub mod pass_store;
pub mod pki;
pub mod process;
pub mod pull_through;
pub mod registry;
pub mod soak;
pub mod token_server;
pub mod vm;

use std::path::{Path, PathBuf};

/// Where integration/test-all.sh unpacks clients Debian packages only after bookworm
/// (crane, oras).
pub const TOOL_DIR: &str = "/var/cache/credgate-test/root/usr/bin";

/// The absolute path of `program` on `PATH`; panics naming the Debian package if absent.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed; the tests need the real one: \
                 apt-get install -t bookworm {package} (integration/test-all.sh does this)"
            )
        })
}

/// A client program the tests drive: crane and oras from [`TOOL_DIR`], others (skopeo,
/// docker-registry) from the system. Panics, naming the script that installs it, if absent.
pub fn tool(name: &str) -> PathBuf {
    [TOOL_DIR, "/usr/local/bin", "/usr/bin", "/usr/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (looked in {TOOL_DIR} and the system bin dirs); \
                 run `bash integration/test-all.sh` as root once: it installs docker-registry \
                 and skopeo from bookworm and unpacks crane and oras from Debian sid into \
                 /var/cache/credgate-test"
            )
        })
}

/// The `credgate` binary of this build (`target/<profile>/credgate`, beside the `deps/` dir
/// holding this test binary). A test crate can't depend on another package's binary, so it is
/// built by `cargo build --bin credgate` (or `cargo test --workspace`; test-all.sh does both).
/// Link it as `docker-credential-credgate` with [`clients::ClientEnv::link_credential_helper`].
pub fn credgate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let binary = profile_dir.join("credgate");
    assert!(
        binary.is_file(),
        "{} is missing; build it first: cargo build --bin credgate",
        binary.display()
    );
    binary
}
