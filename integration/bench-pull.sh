#!/usr/bin/env bash
# The end-to-end pull benchmark: builds the release binaries, then runs benches/pull.rs in a
# private mount and network namespace (a TLS registry on registry.test:443, containerd 2.1
# from /var/cache/credgate-test, as in the node tests). Prints one table; asserts nothing.
# CREDGATE_BENCH_RUNS sets the runs per cell (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin credgate
cargo bench -p credgate-integration --locked --bench pull --no-run
CARGO_NET_OFFLINE=true exec unshare --mount --net -- \
  cargo bench -p credgate-integration --locked --bench pull
