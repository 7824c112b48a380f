#!/usr/bin/env bash
# The VM suite: credgate's .deb under real systemd in a Debian guest, across crashes, reboots
# and upgrades (integration/vm/tests.rs). As root, from anywhere:
#   bash integration/vm/run.sh [TEST-NAME-FILTER]
# integration/test-all.sh runs it last. It installs qemu-system-x86, socat and openssh-client
# from bookworm when missing, builds (or reuses) the guest image (integration/vm/image.sh), the
# current .deb and the previous build's, and the guest's CRI client, then runs the tests in a
# node namespace (unshare --mount --net), four guests at a time (each is slow under TCG). A failed test's guest commands,
# journal and console log are under $CARGO_TARGET_DIR/vm-artifacts/<test>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOL_CACHE=/var/cache/credgate-test
[[ $(id -u) -eq 0 ]] || {
  echo "integration/vm/run.sh: needs root (qemu with /dev/kvm, mmdebstrap, unshare)" >&2
  exit 1
}
started=$SECONDS

need_packages=()
command -v qemu-system-x86_64 >/dev/null || need_packages+=(qemu-system-x86)
command -v socat >/dev/null || need_packages+=(socat)
command -v ssh >/dev/null && command -v scp >/dev/null || need_packages+=(openssh-client)
command -v mmdebstrap >/dev/null || need_packages+=(mmdebstrap)
command -v strip >/dev/null || need_packages+=(binutils)
command -v dpkg-buildpackage >/dev/null || need_packages+=(dpkg-dev)
command -v dh >/dev/null || need_packages+=(debhelper)
command -v lintian >/dev/null || need_packages+=(lintian)
if ((${#need_packages[@]})); then
  echo "==> installing ${need_packages[*]} from bookworm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -t bookworm --no-install-recommends "${need_packages[@]}" >/dev/null
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "==> the guest image (integration/vm/image.sh)"
image_started=$SECONDS
CREDGATE_VM_IMAGE=$(bash integration/vm/image.sh)
echo "    $CREDGATE_VM_IMAGE ($((SECONDS - image_started)) s)"

# The two packages: the current build, and the "previous build" the upgrade starts from. That
# one is the same release binary packaged as <version>~prev (sorts before <version>), so the
# upgrade runs the maintainer scripts of this tree in both directions; building the previous
# commit as well would double the release build. Both are kept under $TOOL_CACHE/vm-debs,
# keyed by the binary and everything packaged with it.
release_target=${CREDGATE_RELEASE_TARGET:-$TOOL_CACHE/target-release}
echo "==> cargo build --release --bin credgate (in $release_target)"
CARGO_TARGET_DIR=$release_target cargo build --release --locked --bin credgate
binary=$release_target/release/credgate
version=$(sed -n '/^\[package\]/,/^\[/s/^version = "\([^"]*\)"$/\1/p' Cargo.toml)
debs_key=$({
  sha256sum "$binary"
  git ls-files -z -- packaging config-examples README.md docs/design.md | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
debs=$TOOL_CACHE/vm-debs/$debs_key
if [[ ! -f $debs/done ]]; then
  echo "==> the current and previous .deb ($version, $version~prev)"
  rm -rf "$TOOL_CACHE/vm-debs"
  mkdir -p "$debs"
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
  bash packaging/deb.sh "$binary" "$version" "$debs" >/dev/null
  bash packaging/deb.sh "$binary" "$version~prev" "$debs" >/dev/null
  touch "$debs/done"
fi
CREDGATE_VM_DEB=$debs/credgate_${version}_amd64.deb
CREDGATE_VM_PREV_DEB=$debs/credgate_${version}~prev_amd64.deb

# The guest's CRI client: a glibc binary, since the guest is bookworm like this machine (the
# musl target is not installed here).
echo "==> the guest's CRI client (vm-cri) and the tests"
cargo build --locked -p credgate-integration --bin vm-cri
cargo test --locked -p credgate-integration --test vm --no-run
# Stripped: the debug build is over 100 MB, copied into every guest.
CREDGATE_VM_CRI=$CARGO_TARGET_DIR/vm-cri
strip -o "$CREDGATE_VM_CRI" "$CARGO_TARGET_DIR/debug/vm-cri"
export CREDGATE_VM_IMAGE CREDGATE_VM_DEB CREDGATE_VM_PREV_DEB CREDGATE_VM_CRI

echo "==> the VM scenarios (in a node namespace)"
tests_started=$SECONDS
CARGO_NET_OFFLINE=true unshare --mount --net -- \
  cargo test --locked -p credgate-integration --test vm -- --test-threads=4 "$@"
echo "==> VM suite: $((SECONDS - tests_started)) s of scenarios, $((SECONDS - started)) s in all"
