#!/usr/bin/env bash
# Runs every credgate test on a fresh Debian bookworm machine, installing what the tests
# need first. `.ci/run` calls this; so can you: `bash integration/test-all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real parts the tests drive: docker-credential-pass (with pass and gpg behind it).
need_packages=()
command -v docker-credential-pass >/dev/null || need_packages+=(golang-docker-credential-helpers)
command -v pass >/dev/null || need_packages+=(pass)
command -v gpg >/dev/null || need_packages+=(gnupg)
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

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked
