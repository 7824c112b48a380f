#!/usr/bin/env bash
# Renders the kustomize base deploy/kubernetes and validates every object it renders against
# the Kubernetes API schemas of the current and the two previous minor releases, strictly
# (an unknown field fails too), with kubernetes-validate from PyPI. integration/test-all.sh
# runs it; so can you: bash deploy/validate.sh
#
# kustomize comes from Debian (trixie's package, unpacked by integration/test-all.sh into
# /var/cache/credgate-test/root); kubernetes-validate is installed into a venv under
# /var/cache/credgate-test keyed by its version, whose newest schemas name the current release.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL_CACHE=/var/cache/credgate-test
KUBERNETES_VALIDATE_VERSION=1.37.0
# kubernetes-validate 1.37.0 ships schemas up to Kubernetes 1.37: that release and the two before.
KUBERNETES_VERSIONS=(1.35.0 1.36.0 1.37.0)

kustomize=${KUSTOMIZE:-$TOOL_CACHE/root/usr/bin/kustomize}
[[ -x $kustomize ]] || {
  echo "deploy/validate.sh: $kustomize is missing; bash integration/test-all.sh (as root) unpacks Debian's kustomize there, or set KUSTOMIZE" >&2
  exit 1
}
venv=$TOOL_CACHE/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
validate=$venv/bin/kubernetes-validate
if [[ ! -x $validate ]]; then
  echo "==> installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$kustomize" build deploy/kubernetes >"$scratch/rendered.yaml"
kinds=$(grep -c '^kind: ' "$scratch/rendered.yaml")
for version in "${KUBERNETES_VERSIONS[@]}"; do
  "$validate" --strict --quiet -k "$version" "$scratch/rendered.yaml" || {
    echo "deploy/validate.sh: the rendered manifests fail Kubernetes $version's schemas (above)" >&2
    exit 1
  }
done
# The check must be able to fail: a field no schema knows is refused.
sed 's/^      hostNetwork: true$/      hostNetwrk: true/' "$scratch/rendered.yaml" >"$scratch/broken.yaml"
if cmp -s "$scratch/rendered.yaml" "$scratch/broken.yaml" ||
  "$validate" --strict --quiet -k "${KUBERNETES_VERSIONS[-1]}" "$scratch/broken.yaml" >/dev/null 2>&1; then
  echo "deploy/validate.sh: kubernetes-validate accepted a DaemonSet with an unknown field; the check proves nothing" >&2
  exit 1
fi
echo "deploy/kubernetes: $kinds objects valid against Kubernetes ${KUBERNETES_VERSIONS[*]} (strict)"
