#!/usr/bin/env bash
# `bash packaging/build.sh`: credgate's two release artifacts, from the release build:
#
#   dist/credgate_<version>_amd64.deb   the Debian package (packaging/deb.sh, packaging/debian/),
#                                       checked with lintian
#   dist/credgate-image.tar             the container image, an OCI image layout archive
#                                       (packaging/image.sh)
#
# On Debian bookworm, as root, with debhelper and lintian installed (apt-get install -t
# bookworm debhelper lintian) and crane (integration/test-all.sh unpacks it). Timestamps come
# from the commit's time (SOURCE_DATE_EPOCH), but image.sh takes bookworm's current libc6,
# libgcc-s1 and ca-certificates: the same commit with the same Debian package versions builds
# the same bytes, and the image's dev.credgate.debian-packages label records those versions.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=dist
version=$(sed -n '/^\[package\]/,/^\[/s/^version = "\([^"]*\)"$/\1/p' Cargo.toml)
[[ -n $version ]] || {
  echo "packaging/build.sh: no version in Cargo.toml's [package]" >&2
  exit 1
}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

echo "==> cargo build --release (credgate $version)"
cargo build --release --locked --bin credgate
binary=${CARGO_TARGET_DIR:-target}/release/credgate
mkdir -p "$dist"
rm -f "$dist"/credgate_*_amd64.deb "$dist/credgate-image.tar"
echo "==> the Debian package"
bash packaging/deb.sh "$binary" "$version" "$dist"
echo "==> the container image"
bash packaging/image.sh "$binary" "$version" "$dist"
