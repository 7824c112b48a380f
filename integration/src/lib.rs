//! Shared harness for credgate's tests against real parts. A real part that is missing is a
//! test failure that says which package to install, never a skip.

use std::path::PathBuf;

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
