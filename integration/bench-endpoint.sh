#!/usr/bin/env bash
# The pull-through endpoint benchmark: builds the release binaries, then runs
# benches/endpoint.rs in a private mount and network namespace (TLS registries on :443 under
# real names, as in the node tests). Prints one table; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin credgate
cargo bench -p credgate-integration --locked --bench endpoint --no-run
CARGO_NET_OFFLINE=true exec unshare --mount --net -- \
  cargo bench -p credgate-integration --locked --bench endpoint
