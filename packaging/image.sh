#!/usr/bin/env bash
# Builds DIST/credgate-image.tar, an OCI image layout archive, with no Docker daemon and no
# base image: one layer holding the release binary and what it needs from Debian bookworm
# (libc6, libgcc-s1, ca-certificates), unpacked with dpkg-deb, never installed. crane writes
# the image (to an in-memory registry of its own on loopback, then as an OCI layout).
# Called by packaging/build.sh: packaging/image.sh BINARY VERSION DIST
#
# The image runs as root (the DaemonSet writes host paths), has no shell, and carries its
# version, revision and Debian package versions in its labels.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
binary=$1 version=$2 dist=$3
: "${SOURCE_DATE_EPOCH:?packaging/build.sh sets it}"
crane=${CRANE:-$(command -v crane || echo /var/cache/credgate-test/root/usr/bin/crane)}
[[ -x $crane ]] || {
  echo "packaging/image.sh: crane is missing; bash integration/test-all.sh (as root) unpacks it into /var/cache/credgate-test/root/usr/bin, or set CRANE=/path/to/crane" >&2
  exit 1
}
# Debian packages whose files the binary needs: the C library and its loader (libc6), the
# unwinder Rust's std links (libgcc-s1), and the CA certificates for TLS to registries.
packages=(libc6 libgcc-s1 ca-certificates)

work=$dist/image-build
rm -rf "$work"
mkdir -p "$work/debs" "$work/rootfs"

# Debian bookworm through a private apt configuration (the system's sources are never
# touched), the same layout integration/test-all.sh keeps under /var/cache/credgate-test.
apt_dir=${CREDGATE_APT_DIR:-$dist/apt/bookworm}
if [[ ! -f $apt_dir/sources.list ]]; then
  mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    >"$apt_dir/sources.list"
fi
apt_dir=$(realpath "$apt_dir")
private_apt() {
  apt-get -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" \
    -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root "$@"
}
private_apt update -qq
(cd "$work/debs" && private_apt download -qq "${packages[@]}")
debian_versions=()
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/rootfs"
  debian_versions+=("$(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version)")
done

rootfs=$work/rootfs
# What ca-certificates' postinst (update-ca-certificates, which needs a shell and openssl)
# would write: every certificate the package ships, in name order, as one bundle.
mkdir -p "$rootfs/etc/ssl/certs"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z |
  xargs -0 cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
install -D -m 0755 "$binary" "$rootfs/usr/bin/credgate"
strip --strip-unneeded "$rootfs/usr/bin/credgate"
# root for getpwuid and $HOME, files before DNS for host names (glibc's default without an
# nsswitch.conf asks DNS first), and the loader's cache of the unpacked libraries.
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
install -d -m 0700 "$rootfs/root"
install -d -m 1777 "$rootfs/tmp"
ldconfig -r "$rootfs"
if [[ -e $rootfs/bin/sh || -e $rootfs/usr/bin/sh ]]; then
  echo "packaging/image.sh: a shell got into the image; it needs none" >&2
  exit 1
fi
if [[ $(id -u) -eq 0 ]]; then
  chroot "$rootfs" /usr/bin/credgate --version >/dev/null || {
    echo "packaging/image.sh: /usr/bin/credgate does not run in the image's root filesystem" >&2
    exit 1
  }
fi

# One layer, the same bytes for the same inputs: names sorted, root-owned, one timestamp.
(cd "$rootfs" && tar --create --file "$(realpath ../layer.tar)" --format=gnu --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" -- *)

# crane's own registry, in memory on a loopback port, for the few seconds of the build.
# The log exists before the poll reads it: the background job opens it only once it runs.
: >"$work/registry.log"
"$crane" registry serve --address 127.0.0.1:0 >>"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n ${port:-} ]] || {
  cat "$work/registry.log" >&2
  echo "packaging/image.sh: crane's registry did not start" >&2
  exit 1
}
ref=127.0.0.1:$port/credgate:$version
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
"$crane" append --oci-empty-base -f "$work/layer.tar" -t "$ref" >/dev/null
"$crane" mutate "$ref" -t "$ref" --set-platform linux/amd64 \
  --entrypoint /usr/bin/credgate --cmd serve --user 0:0 \
  -e PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  -l org.opencontainers.image.title=credgate \
  -l "org.opencontainers.image.description=One registry credential lookup for every image pull on a containerd node" \
  -l "org.opencontainers.image.version=$version" \
  -l "org.opencontainers.image.revision=$revision" \
  -l "org.opencontainers.image.created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)" \
  -l org.opencontainers.image.licenses=Apache-2.0 \
  -l "dev.credgate.debian-packages=${debian_versions[*]}" \
  -a "org.opencontainers.image.version=$version" >/dev/null
"$crane" validate --remote "$ref" >/dev/null
"$crane" pull --format=oci --annotate-ref "$ref" "$work/layout"
# The layout names the image by its tag, as the OCI layout convention has it, not by the
# throwaway registry it came from.
sed -i "s|\"$ref\"|\"$version\"|" "$work/layout/index.json"
grep -q "\"org.opencontainers.image.ref.name\": *\"$version\"" "$work/layout/index.json" || {
  echo "packaging/image.sh: $work/layout/index.json does not name the image $version" >&2
  exit 1
}
find "$work/layout" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
(cd "$work/layout" && tar --create --file "$(realpath ../../credgate-image.tar)" --format=gnu \
  --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" -- *)
kill "$registry_pid" 2>/dev/null || true
trap - EXIT
rm -rf "$work"
echo "$dist/credgate-image.tar"
