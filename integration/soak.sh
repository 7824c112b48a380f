#!/usr/bin/env bash
# The soak run (issue 14): 64 concurrent pullers through credgate, real containerd 2.1 and
# real registries for N minutes (default 30; CI runs --minutes 2), sampling credgate's
# /metrics every 10 s. Runs integration/examples/soak.rs inside a private mount and network
# namespace, as root, like the node tests. Prints the table and writes soak.md, soak.csv and
# soak.svg into --out (default target/soak); exits non-zero when a target was missed.
#
#   bash integration/soak.sh [--minutes N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "integration/soak.sh: needs root (unshare --mount --net), as the node tests do" >&2
  exit 2
fi
cargo build --locked --bin credgate
cargo build --locked -p credgate-integration --example soak
CARGO_NET_OFFLINE=true exec unshare --mount --net -- \
  cargo run --locked -q -p credgate-integration --example soak -- "$@"
