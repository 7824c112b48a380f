#!/usr/bin/env bash
# Checks a credgate .deb with lintian: any error or warning fails. Overrides, each with its
# reason, are in packaging/debian/credgate.lintian-overrides (shipped in the package, where
# lintian reads them). Usage: packaging/lintian.sh DEB
set -euo pipefail
deb=$1
command -v lintian >/dev/null || {
  echo "packaging/lintian.sh: lintian is missing: apt-get install -t bookworm lintian" >&2
  exit 1
}
# --fail-on error,warning: the package is clean of both, or says why (the overrides).
lintian --fail-on error,warning --display-info --show-overrides "$deb"
