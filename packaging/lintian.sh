#!/usr/bin/env bash
# Checks a credgate .deb with lintian: any error or warning fails. Overrides, each with its
# reason, are in packaging/debian/credgate.lintian-overrides (shipped in the package, where
# lintian reads them). Usage: packaging/lintian.sh DEB
set -euo pipefail
deb=$1
overrides=$(dirname "$0")/debian/credgate.lintian-overrides
command -v lintian >/dev/null || {
  echo "packaging/lintian.sh: lintian is missing: apt-get install -t bookworm lintian" >&2
  exit 1
}
# Any error or warning fails (info tags are shown too); an overridden tag is neither, and
# its reason is in the overrides file. (--show-overrides would make lintian fail on those.)
lintian --fail-on error,warning --display-info "$deb"
echo "lintian: no error or warning in $deb ($(grep -c '^credgate: ' "$overrides") tags overridden, each with its reason in $overrides)"
