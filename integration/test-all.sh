#!/usr/bin/env bash
# Runs every credgate test on a fresh Debian bookworm machine, installing what the tests
# need first. `.ci/run` calls this; so can you: `bash integration/test-all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real parts the tests drive: docker-credential-pass (with pass and gpg behind it), the
# distribution registry and skopeo (bookworm), and mount/unshare/ip for the node tests; for
# the fleet artifacts (packaging/build.sh, node_fleet.rs): runc under containerd's `ctr run`,
# debhelper and lintian for the .deb, mmdebstrap for the throwaway root it installs into, and
# python3-venv for kubernetes-validate (deploy/validate.sh).
need_packages=()
command -v docker-credential-pass >/dev/null || need_packages+=(golang-docker-credential-helpers)
command -v pass >/dev/null || need_packages+=(pass)
command -v gpg >/dev/null || need_packages+=(gnupg)
command -v docker-registry >/dev/null || need_packages+=(docker-registry)
command -v skopeo >/dev/null || need_packages+=(skopeo)
command -v unshare >/dev/null || need_packages+=(util-linux)
command -v ip >/dev/null || need_packages+=(iproute2)
# libfaketime: node_faults.rs slows credgate's clocks with it (the clock-jump fault).
[[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || need_packages+=(faketime)
command -v runc >/dev/null || need_packages+=(runc)
command -v dpkg-buildpackage >/dev/null || need_packages+=(dpkg-dev)
command -v dh >/dev/null || need_packages+=(debhelper)
command -v lintian >/dev/null || need_packages+=(lintian)
command -v mmdebstrap >/dev/null || need_packages+=(mmdebstrap)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need_packages+=(python3-venv)
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

# Tools newer than bookworm come from later suites through a private apt configuration that
# never touches /etc/apt (one sources list and one lists dir per suite under $TOOL_CACHE); the
# packages are downloaded and unpacked with dpkg-deb, never installed. Their Go binaries need
# only libc. The Rust harness looks for them there (credgate_integration::tool and
# credgate_integration::containerd).
TOOL_CACHE=/var/cache/credgate-test
need_root_for() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "integration/test-all.sh: $1 missing under $TOOL_CACHE; run as root to fetch it" >&2
    exit 1
  fi
}
# private_apt SUITE ARGS...: apt-get against Debian SUITE only, with its own state.
private_apt() {
  local suite=$1
  shift
  local dir=$TOOL_CACHE/apt/$suite
  if [[ ! -f $dir/sources.list ]]; then
    mkdir -p "$dir"/{lists/partial,cache/archives/partial}
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
      >"$dir/sources.list"
  fi
  apt-get -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" \
    -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root "$@"
}
# fetch_unpacked SUITE PACKAGE DEST: download PACKAGE from SUITE and unpack it into DEST.
# Each suite's index is refreshed once per run that fetches from it, so a later fetch never
# asks for a .deb a months-old index names and the archive has since dropped.
declare -A apt_updated=()
fetch_unpacked() {
  local suite=$1 package=$2 dest=$3 debs=$TOOL_CACHE/debs/$1
  mkdir -p "$debs" "$dest"
  if [[ -z ${apt_updated[$suite]:-} ]]; then
    private_apt "$suite" update -qq
    apt_updated[$suite]=1
  fi
  rm -f "$debs/${package}"_*.deb
  (cd "$debs" && private_apt "$suite" download "$package")
  dpkg-deb -x "$debs/${package}"_*.deb "$dest"
}

# crane (sid) and oras (trixie and sid) for the real-client tests.
for tool in crane oras; do
  [[ -x $TOOL_CACHE/root/usr/bin/$tool ]] && continue
  need_root_for "$tool"
  echo "==> fetching $tool from Debian sid into $TOOL_CACHE/root"
  fetch_unpacked sid "$tool" "$TOOL_CACHE/root"
  "$TOOL_CACHE/root/usr/bin/$tool" version >/dev/null || {
    echo "integration/test-all.sh: $TOOL_CACHE/root/usr/bin/$tool does not run" >&2
    exit 1
  }
done

# kustomize (trixie; bookworm has none) renders deploy/kubernetes for deploy/validate.sh.
if [[ ! -x $TOOL_CACHE/root/usr/bin/kustomize ]]; then
  need_root_for kustomize
  echo "==> fetching kustomize from Debian trixie into $TOOL_CACHE/root"
  fetch_unpacked trixie kustomize "$TOOL_CACHE/root"
  "$TOOL_CACHE/root/usr/bin/kustomize" version >/dev/null || {
    echo "integration/test-all.sh: $TOOL_CACHE/root/usr/bin/kustomize does not run" >&2
    exit 1
  }
fi

# promtool checks config-examples/alerts.yml: bookworm's prometheus package, unpacked and never
# installed (installing it starts a Prometheus server).
if [[ ! -x $TOOL_CACHE/root/usr/bin/promtool ]]; then
  need_root_for promtool
  echo "==> fetching promtool (prometheus) from Debian bookworm into $TOOL_CACHE/root"
  fetch_unpacked bookworm prometheus "$TOOL_CACHE/root"
  "$TOOL_CACHE/root/usr/bin/promtool" --version >/dev/null || {
    echo "integration/test-all.sh: $TOOL_CACHE/root/usr/bin/promtool does not run" >&2
    exit 1
  }
fi
echo "==> Prometheus alerting rules (promtool check rules config-examples/alerts.yml)"
"$TOOL_CACHE/root/usr/bin/promtool" check rules config-examples/alerts.yml

# The throwaway Debian root node_fleet.rs installs the .deb into (dpkg --root): bookworm's
# essential packages, made once by mmdebstrap and kept until mmdebstrap or the recipe change.
debian_root=$TOOL_CACHE/debian-root/bookworm-essential.tar
debian_root_key="mmdebstrap $(mmdebstrap --version 2>/dev/null) --variant=essential bookworm"
if [[ ! -f $debian_root || $(cat "$debian_root.key" 2>/dev/null) != "$debian_root_key" ]]; then
  need_root_for "the Debian root $debian_root"
  echo "==> making a throwaway Debian bookworm root with mmdebstrap into $debian_root"
  mkdir -p "$(dirname "$debian_root")"
  rm -f "$debian_root" "$debian_root.key"
  mmdebstrap --quiet --variant=essential bookworm "$debian_root.new.tar" http://deb.debian.org/debian
  mv "$debian_root.new.tar" "$debian_root"
  echo "$debian_root_key" >"$debian_root.key"
fi

# containerd 1.6 (bookworm), 1.7 (trixie) and 2.1 (sid), each unpacked into its own tree:
# $TOOL_CACHE/containerd/<minor>/usr/bin/{containerd,ctr,containerd-shim-runc-v2}. The node
# tests run each of them (integration/src/containerd.rs).
for entry in 1.6:bookworm 1.7:trixie 2.1:sid; do
  minor=${entry%%:*} suite=${entry#*:} dest=$TOOL_CACHE/containerd/${entry%%:*}
  if [[ -x $dest/usr/bin/containerd ]] && "$dest/usr/bin/containerd" --version | grep -q " v\?$minor\."; then
    continue
  fi
  need_root_for "containerd $minor"
  echo "==> fetching containerd $minor from Debian $suite into $dest"
  rm -rf "$dest"
  fetch_unpacked "$suite" containerd "$dest"
  "$dest/usr/bin/containerd" --version | grep -q " v\?$minor\." || {
    echo "integration/test-all.sh: $dest/usr/bin/containerd is not containerd $minor: $("$dest/usr/bin/containerd" --version)" >&2
    exit 1
  }
done

echo "==> Kubernetes manifests (deploy/validate.sh)"
bash deploy/validate.sh

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
  # The fleet artifacts node_fleet.rs runs, from the release build: reused while nothing that
  # goes into them changed (the key hashes those files and the commit, which the image's
  # revision label and the timestamps come from), with the release build's own artifacts kept
  # under $TOOL_CACHE so a rebuild compiles credgate alone.
  fleet_key=$({
    git rev-parse HEAD
    git ls-files -z -- Cargo.toml Cargo.lock build.rs .cargo build-support src protos \
      packaging config-examples README.md docs/design.md | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16)
  fleet_cache=$TOOL_CACHE/dist/$fleet_key
  if compgen -G "$fleet_cache/credgate_*_amd64.deb" >/dev/null && [[ -f $fleet_cache/credgate-image.tar ]]; then
    echo "==> the fleet artifacts: unchanged since they were built ($fleet_cache)"
    mkdir -p dist
    cp "$fleet_cache"/credgate_*_amd64.deb "$fleet_cache/credgate-image.tar" dist/
  else
    echo "==> the fleet artifacts (bash packaging/build.sh)"
    CARGO_TARGET_DIR=$TOOL_CACHE/target-release CREDGATE_APT_DIR=$TOOL_CACHE/apt/bookworm \
      bash packaging/build.sh
    rm -rf "$TOOL_CACHE/dist"
    mkdir -p "$fleet_cache"
    cp dist/credgate_*_amd64.deb dist/credgate-image.tar "$fleet_cache/"
  fi

  echo "==> cargo test (node tests, in a private mount and network namespace)"
  cargo build --locked --bin credgate
  cargo test -p credgate-integration --locked --no-run "${node_tests[@]}"
  # One fresh namespace per test binary: each sets up its own /etc/hosts and CA bundle
  # with bind mounts over files the previous binary's mounts would still shadow.
  # node_faults.rs appends one row per fault to this file: the fault matrix of this run.
  export CREDGATE_FAULT_MATRIX=$PWD/target/fault-matrix.md
  mkdir -p target
  : >"$CREDGATE_FAULT_MATRIX"
  for ((i = 1; i < ${#node_tests[@]}; i += 2)); do
    CARGO_NET_OFFLINE=true unshare --mount --net -- \
      cargo test -p credgate-integration --locked --test "${node_tests[i]}"
  done
  echo "==> the fault matrix of this run ($CREDGATE_FAULT_MATRIX)"
  cat "$CREDGATE_FAULT_MATRIX"

  # The 2-minute soak (README, "Reliability"): 64 pullers through containerd 2.1; fails on a
  # failed pull, RSS growth of 5 % or more, or descriptors and tasks not back at baseline.
  echo "==> the soak, 2 minutes (bash integration/soak.sh --minutes 2)"
  bash integration/soak.sh --minutes 2 --out target/soak
fi

# The VM harness (README, "VM harness"): the .deb under real systemd in a qemu guest (KVM when
# /dev/kvm works, else TCG), across crashes, reboots and upgrades. Its guest image is cached
# under $TOOL_CACHE/vm, keyed by its inputs, so later runs only boot.
echo "==> the VM suite (bash integration/vm/run.sh)"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target} CREDGATE_RELEASE_TARGET=$TOOL_CACHE/target-release \
  bash integration/vm/run.sh
