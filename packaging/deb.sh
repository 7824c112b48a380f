#!/usr/bin/env bash
# Builds DIST/credgate_<version>_amd64.deb from a release binary: stages it and the files the
# package ships into a build tree, where dpkg-buildpackage (debhelper, packaging/debian/)
# compiles nothing, then checks the package with lintian (packaging/lintian.sh).
# Called by packaging/build.sh: packaging/deb.sh BINARY VERSION DIST
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$1 version=$2 dist=$3
: "${SOURCE_DATE_EPOCH:?packaging/build.sh sets it}"

for tool in dpkg-buildpackage:dpkg-dev dh:debhelper; do
  command -v "${tool%%:*}" >/dev/null || {
    echo "packaging/deb.sh: ${tool%%:*} is missing: apt-get install -t bookworm ${tool#*:}" >&2
    exit 1
  }
done

build=$dist/deb-build
tree=$build/credgate-$version
rm -rf "$build"
mkdir -p "$tree/staged"
cp -r packaging/debian "$tree/debian"
install -m 0755 "$binary" "$tree/staged/credgate"
cp packaging/config.toml packaging/credgate.1 README.md docs/design.md "$tree/staged/"
cp -r config-examples "$tree/staged/config-examples"
# One unit for every install: the README's (config-examples/credgate.service), with the
# package's binary path and its man page.
sed -e 's|/usr/local/bin/credgate|/usr/bin/credgate|g' \
  -e '/^Description=/a Documentation=man:credgate(1)' config-examples/credgate.service \
  >"$tree/debian/credgate.service"
grep -q '^ExecStart=/usr/bin/credgate serve$' "$tree/debian/credgate.service" || {
  echo "packaging/deb.sh: config-examples/credgate.service no longer runs /usr/local/bin/credgate serve; update this script" >&2
  exit 1
}
# The sockets systemd holds across restarts and upgrades (debian/rules: never restarted).
cp config-examples/credgate.socket "$tree/debian/credgate.socket"
cat >"$tree/debian/changelog" <<CHANGELOG
credgate ($version) unstable; urgency=medium

  * credgate $version, built from its release build.

 -- credgate developers <dev@credgate.invalid>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGELOG

(cd "$tree" && dpkg-buildpackage --build=binary --no-sign) >"$build/dpkg-buildpackage.log" 2>&1 || {
  cat "$build/dpkg-buildpackage.log" >&2
  echo "packaging/deb.sh: dpkg-buildpackage failed (log above)" >&2
  exit 1
}
mv "$build/credgate_${version}_amd64.deb" "$dist/"
rm -rf "$build"
bash packaging/lintian.sh "$dist/credgate_${version}_amd64.deb"
echo "$dist/credgate_${version}_amd64.deb"
