#!/usr/bin/env bash
# Runs every credgate test on a fresh Debian bookworm machine, installing what the tests
# need first. `.ci/run` calls this; so can you: `bash integration/test-all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real parts the tests drive: docker-credential-pass (with pass and gpg behind it), the
# distribution registry and skopeo (bookworm), and mount/unshare/ip for the node tests.
need_packages=()
command -v docker-credential-pass >/dev/null || need_packages+=(golang-docker-credential-helpers)
command -v pass >/dev/null || need_packages+=(pass)
command -v gpg >/dev/null || need_packages+=(gnupg)
command -v docker-registry >/dev/null || need_packages+=(docker-registry)
command -v skopeo >/dev/null || need_packages+=(skopeo)
command -v unshare >/dev/null || need_packages+=(util-linux)
command -v ip >/dev/null || need_packages+=(iproute2)
if ((${#need_packages[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "integration/test-all.sh: missing ${need_packages[*]}; run as root or install them: apt-get install -t bookworm ${need_packages[*]}" >&2
    exit 1
  fi
  echo "==> installing ${need_packages[*]} from bookworm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -t bookworm --no-install-recommends "${need_packages[@]}" >/dev/null
fi
# docker-registry's postinst may start a system registry on :5000; the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# crane and oras are packaged only after bookworm (crane in sid, oras in trixie and sid). They
# are fetched with a private apt configuration that never touches /etc/apt and unpacked into
# $TOOL_CACHE/root; their Go binaries need only libc. The Rust harness looks there
# (credgate_integration::tool).
TOOL_CACHE=/var/cache/credgate-test
fetch_sid_tools() {
  local root=$TOOL_CACHE/root tools=(crane oras) missing=()
  local tool
  for tool in "${tools[@]}"; do
    [[ -x $root/usr/bin/$tool ]] || missing+=("$tool")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "integration/test-all.sh: ${missing[*]} missing from $root/usr/bin; run as root to fetch them" >&2
    exit 1
  fi
  echo "==> fetching ${missing[*]} from Debian sid into $TOOL_CACHE (private apt config)"
  mkdir -p "$TOOL_CACHE"/{lists/partial,cache/archives/partial,debs,root}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    >"$TOOL_CACHE/sources.list"
  local apt_opts=(
    -o "Dir::Etc::sourcelist=$TOOL_CACHE/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$TOOL_CACHE/lists" -o "Dir::Cache=$TOOL_CACHE/cache"
    -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root
  )
  apt-get "${apt_opts[@]}" update -qq
  (cd "$TOOL_CACHE/debs" && apt-get "${apt_opts[@]}" download "${missing[@]}")
  local deb
  for deb in "$TOOL_CACHE"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  for tool in "${missing[@]}"; do
    "$root/usr/bin/$tool" version >/dev/null || {
      echo "integration/test-all.sh: $root/usr/bin/$tool does not run" >&2
      exit 1
    }
  done
}
fetch_sid_tools

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked

# Node tests (integration/tests/node_*.rs) listen on :443 under test host names and bind-mount
# over /etc/hosts and the CA bundle, so each runs inside a private mount and network namespace.
# Each is declared `test = false` in integration/Cargo.toml: the plain run above neither builds
# nor runs them; here every one of them is built, then run inside the namespace.
declared_node_test() {
  awk -v name="$1" '
    function close_block() { if (named && off) found = 1; named = 0; off = 0 }
    /^\[/ { close_block(); in_test = ($0 ~ /^\[\[test\]\]/); next }
    in_test && $0 ~ "^name *= *\"" name "\"" { named = 1 }
    in_test && /^test *= *false/ { off = 1 }
    END { close_block(); exit !found }
  ' integration/Cargo.toml
}
node_tests=()
for file in integration/tests/node_*.rs; do
  [[ -e $file ]] || continue
  name=$(basename "$file" .rs)
  if ! declared_node_test "$name"; then
    echo "integration/test-all.sh: $file needs [[test]] name = \"$name\" with test = false in integration/Cargo.toml" >&2
    exit 1
  fi
  node_tests+=(--test "$name")
done
if ((${#node_tests[@]})); then
  echo "==> cargo clippy (node tests: --all-targets skips test = false targets)"
  cargo clippy -p credgate-integration --locked "${node_tests[@]}" -- -D warnings
  if [[ $(id -u) -ne 0 ]]; then
    echo "integration/test-all.sh: node tests need root (unshare --mount --net)" >&2
    exit 1
  fi
  echo "==> cargo test (node tests, in a private mount and network namespace)"
  cargo build --locked --bin credgate
  cargo test -p credgate-integration --locked --no-run "${node_tests[@]}"
  # One fresh namespace per test binary: each sets up its own /etc/hosts and CA bundle
  # with bind mounts over files the previous binary's mounts would still shadow.
  for ((i = 1; i < ${#node_tests[@]}; i += 2)); do
    CARGO_NET_OFFLINE=true unshare --mount --net -- \
      cargo test -p credgate-integration --locked --test "${node_tests[i]}"
  done
fi
