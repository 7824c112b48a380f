#!/usr/bin/env bash
# Builds the VM harness's Debian bookworm guest once and prints the directory that holds it:
#   vmlinuz, initrd.img   Debian's linux-image-cloud-amd64, booted with qemu -kernel/-initrd
#   rootfs.ext4           the root filesystem, made with mkfs.ext4 -d (no loop mount)
#   id_ed25519            the throwaway ssh key root's authorized_keys accepts
# The directory is $VM_CACHE/<key>, the key hashing this script, mmdebstrap's version and the
# containerd binaries copied in, so a later run only boots. Run as root:
#   bash integration/vm/image.sh            (integration/vm/run.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOL_CACHE=${TOOL_CACHE:-/var/cache/credgate-test}
VM_CACHE=$TOOL_CACHE/vm
CONTAINERD=$TOOL_CACHE/containerd
# The guest's packages: systemd as init, ssh as the command channel, runc under containerd,
# pass and gpg behind docker-credential-pass (the hardening scenario).
PACKAGES=systemd,systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,runc,ca-certificates,iproute2,pass,gnupg,golang-docker-credential-helpers,kmod,procps

for minor in 1.7 2.1; do
  [[ -x $CONTAINERD/$minor/usr/bin/containerd ]] || {
    echo "integration/vm/image.sh: containerd $minor missing under $CONTAINERD/$minor; run integration/test-all.sh once (it fetches it)" >&2
    exit 1
  }
done
key=$({
  sha256sum integration/vm/image.sh
  mmdebstrap --version
  echo "$PACKAGES"
  sha256sum "$CONTAINERD"/{1.7,2.1}/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
} | sha256sum | cut -c1-16)
out=$VM_CACHE/$key
if [[ -f $out/done ]]; then
  echo "$out"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || {
  echo "integration/vm/image.sh: building the guest image needs root" >&2
  exit 1
}
started=$SECONDS
# Earlier keys' images are dropped: only the current recipe is kept (disk is limited).
rm -rf "$VM_CACHE"
mkdir -p "$out"
work=$out/build
tree=$work/tree
mkdir -p "$work"
ssh-keygen -q -t ed25519 -N '' -C credgate-vm -f "$out/id_ed25519"

echo "==> mmdebstrap bookworm ($PACKAGES)" >&2
mmdebstrap --quiet --variant=apt --include="$PACKAGES" \
  --customize-hook='echo credgate-vm >"$1/etc/hostname"' \
  bookworm "$tree" http://deb.debian.org/debian

# containerd 2.1 is the guest's containerd; 1.7 waits under /opt for the scenarios that swap it in.
for minor in 1.7 2.1; do
  install -d "$tree/opt/containerd/$minor"
  install -m 0755 "$CONTAINERD/$minor"/usr/bin/{containerd,ctr,containerd-shim-runc-v2} "$tree/opt/containerd/$minor/"
done
install -m 0755 "$tree"/opt/containerd/2.1/* "$tree/usr/bin/"
install -m 0644 "$CONTAINERD/2.1/usr/lib/systemd/system/containerd.service" "$tree/etc/systemd/system/containerd.service"
ln -sf /etc/systemd/system/containerd.service "$tree/etc/systemd/system/multi-user.target.wants/containerd.service"

# Root logs in with the throwaway key only; the serial console gets a root shell for debugging.
install -d -m 0700 "$tree/root/.ssh"
install -m 0600 "$out/id_ed25519.pub" "$tree/root/.ssh/authorized_keys"
cat >"$tree/etc/ssh/sshd_config.d/credgate-vm.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD
# slirp's DHCP on the one virtio NIC.
cat >"$tree/etc/systemd/network/10-slirp.network" <<'NET'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
NET
ln -sf /lib/systemd/system/systemd-networkd.service "$tree/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
echo '/dev/vda / ext4 rw,relatime 0 1' >"$tree/etc/fstab"
# No waiting for a network that never reports online, no apt timers, no console getty noise.
ln -sf /dev/null "$tree/etc/systemd/system/systemd-networkd-wait-online.service"
ln -sf /dev/null "$tree/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$tree/etc/systemd/system/apt-daily-upgrade.timer"
# The journal persists across the reboot scenario's reboot.
install -d "$tree/var/log/journal"

cp "$tree"/boot/vmlinuz-* "$out/vmlinuz"
cp "$tree"/boot/initrd.img-* "$out/initrd.img"
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
echo "==> mkfs.ext4 -d (no loop mount)" >&2
mkfs.ext4 -q -F -L credgate-vm -d "$tree" "$out/rootfs.ext4" 3G
rm -rf "$work"
touch "$out/done"
echo "==> guest image built in $((SECONDS - started)) s: $out" >&2
echo "$out"
