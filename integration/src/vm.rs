//! The VM harness: a Debian bookworm guest under qemu, booted from the image
//! `integration/vm/image.sh` built (Debian's cloud kernel, systemd, containerd 2.1 with 1.7
//! beside it, runc), so credgate runs under real systemd across restarts, reboots and
//! upgrades. `integration/vm/run.sh` builds what the guest needs and runs
//! `integration/vm/tests.rs` inside a node namespace ([`crate::node`]).
//!
//! - **Acceleration.** KVM when `/dev/kvm` opens read-write, else TCG; each boot says which.
//! - **Network.** qemu runs in the node namespace with user networking (slirp): it needs no
//!   device or route of its own, and the namespace already has the registries. Every node
//!   host on a loopback address gets a guest address `10.0.2.<100+i>` whose connections qemu
//!   hands to `socat` connected to the host's `127.0.0.x:443`; the guest's `/etc/hosts` gives
//!   those addresses the real names, so TLS and tokens see `registry.test` and the rest.
//! - **Commands.** ssh as root with the image's throwaway key, forwarded from a loopback port
//!   of the namespace. Each command's script and output is written under the test's artifact
//!   directory (`$CARGO_TARGET_DIR/vm-artifacts/<test>/`, or `target/` in the checkout);
//!   when the test fails the guest's journal and console log are added and the path printed.
//! - **Disk.** The cached image is opened with `snapshot=on`: every boot starts from the
//!   same image and writes go to a temporary file, kept across a guest reboot.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::node::{node, NODE_ALIASES, NODE_HOSTS};
use crate::process::{read_lossy, run_bounded, spawn_logged, ChildGuard, CommandOutput};

/// The directory `integration/vm/image.sh` printed: vmlinuz, initrd.img, rootfs.ext4,
/// id_ed25519.
pub const IMAGE_ENV: &str = "CREDGATE_VM_IMAGE";
/// The .deb the tests install (the current build).
pub const DEB_ENV: &str = "CREDGATE_VM_DEB";
/// The previous build's .deb, which the upgrade scenario starts from.
pub const PREV_DEB_ENV: &str = "CREDGATE_VM_PREV_DEB";
/// The guest's CRI client (`src/bin/vm-cri.rs`, built by run.sh).
pub const CRI_ENV: &str = "CREDGATE_VM_CRI";
/// How long a boot (or reboot) may take until ssh answers; TCG is far slower than KVM.
const BOOT_WAIT_KVM: Duration = Duration::from_secs(180);
const BOOT_WAIT_TCG: Duration = Duration::from_secs(900);
/// The most one guest command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// The guest's address for the i-th node host: slirp's network is 10.0.2.0/24.
const GUEST_HOST_BASE: u8 = 100;

/// A path from one of the environment variables run.sh sets; a clear failure naming
/// run.sh otherwise.
pub fn required_path(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the VM suite with `bash integration/vm/run.sh`")
    });
    assert!(
        path.exists(),
        "{var}={} does not exist: run `bash integration/vm/run.sh`",
        path.display()
    );
    path
}

/// Which accelerator qemu gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when /dev/kvm opens read-write (as qemu needs it) and is hardware KVM (kvm_intel
    /// or kvm_amd), else TCG. A /dev/kvm of another kind, such as PVM (`kvm_pvm`, nested
    /// virtualisation without VMX/SVM), runs only kernels built for it, never Debian's.
    pub fn detect() -> Accel {
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm");
        let hardware = ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|module| Path::new("/sys/module").join(module).exists());
        match kvm {
            Ok(_) if hardware => Accel::Kvm,
            Ok(_) => {
                eprintln!("vm: /dev/kvm is not hardware KVM (no kvm_intel or kvm_amd module; PVM runs only its own guest kernels); falling back to TCG (slow)");
                Accel::Tcg
            }
            Err(e) => {
                eprintln!("vm: /dev/kvm does not open ({e}); falling back to TCG (slow)");
                Accel::Tcg
            }
        }
    }
}

/// A running guest.
pub struct Vm {
    name: String,
    qemu: Option<ChildGuard>,
    ssh_port: u16,
    key: PathBuf,
    artifacts: PathBuf,
    scratch: tempfile::TempDir,
    step: AtomicUsize,
    boot_wait: Duration,
}

/// The guest address standing for node host `host`.
pub fn guest_ip(host: &str) -> Ipv4Addr {
    let index = NODE_HOSTS
        .iter()
        .position(|(name, _)| *name == host)
        .unwrap_or_else(|| panic!("{host} is not a node host"));
    Ipv4Addr::new(10, 0, 2, GUEST_HOST_BASE + index as u8)
}

/// Node hosts the guest can reach (those on the namespace's loopback).
fn forwarded_hosts() -> impl Iterator<Item = (&'static str, [u8; 4])> {
    NODE_HOSTS.iter().copied().filter(|(_, ip)| ip[0] == 127)
}

fn artifacts_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::fleet::repo_root().join("target"));
    target.join("vm-artifacts")
}

impl Vm {
    /// Boots a fresh guest for the test `name` and prepares it: the node's host names and CA,
    /// and the CRI client at /usr/local/bin/vm-cri.
    pub fn boot(name: &str) -> Vm {
        node();
        let image = required_path(IMAGE_ENV);
        let cri = required_path(CRI_ENV);
        let qemu_binary = crate::require_program("qemu-system-x86_64", "qemu-system-x86");
        let socat = crate::require_program("socat", "socat");
        crate::require_program("ssh", "openssh-client");
        let artifacts = artifacts_root().join(name);
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts).expect("artifact dir");
        let scratch = tempfile::tempdir().expect("scratch dir");
        let accel = Accel::detect();
        let ssh_port = free_port();
        let mut netdev = format!("user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
        for (host, ip) in forwarded_hosts() {
            let target = Ipv4Addr::from(ip);
            netdev.push_str(&format!(
                ",guestfwd=tcp:{}:443-cmd:{} - TCP:{target}:443",
                guest_ip(host),
                socat.display()
            ));
        }
        let mut qemu = Command::new(qemu_binary);
        qemu.args([
            "-name",
            name,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ])
        .args(["-m", "1536", "-smp", "2"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args([
            "-append",
            // no_timer_check: under TCG on a busy host the IO-APIC timer check fails and panics.
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 no_timer_check",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            image.join("rootfs.ext4").display()
        ))
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
        .args(["-device", "virtio-rng-pci"])
        .arg("-serial")
        .arg(format!("file:{}", artifacts.join("console.log").display()))
        .args(["-monitor", "none"]);
        match accel {
            Accel::Kvm => qemu.args(["-machine", "q35,accel=kvm", "-cpu", "host"]),
            Accel::Tcg => qemu.args(["-machine", "q35,accel=tcg", "-cpu", "max"]),
        };
        eprintln!(
            "vm {name}: booting with {} (artifacts in {})",
            match accel {
                Accel::Kvm => "KVM",
                Accel::Tcg => "TCG (no usable /dev/kvm)",
            },
            artifacts.display()
        );
        let started = Instant::now();
        let qemu = spawn_logged(&mut qemu, &artifacts.join("qemu.log"), "qemu");
        let mut vm = Vm {
            name: name.to_string(),
            qemu: Some(qemu),
            ssh_port,
            key: image.join("id_ed25519"),
            artifacts,
            scratch,
            step: AtomicUsize::new(0),
            boot_wait: match accel {
                Accel::Kvm => BOOT_WAIT_KVM,
                Accel::Tcg => BOOT_WAIT_TCG,
            },
        };
        vm.wait_for_ssh(None);
        eprintln!(
            "vm {name}: ssh answers after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        vm.prepare(&cri);
        vm
    }

    fn prepare(&mut self, cri: &Path) {
        let mut hosts = String::from("127.0.0.1 localhost\n127.0.1.1 credgate-vm\n");
        for (host, _) in forwarded_hosts() {
            let mut names = vec![host];
            names.extend(
                NODE_ALIASES
                    .iter()
                    .filter(|(_, of)| *of == host)
                    .map(|(alias, _)| *alias),
            );
            hosts.push_str(&format!("{} {}\n", guest_ip(host), names.join(" ")));
        }
        self.write("/etc/hosts", hosts.as_bytes(), 0o644);
        // Appended to the bundle Go and rustls read: update-ca-certificates takes minutes
        // under TCG.
        self.write(
            "/usr/local/share/ca-certificates/credgate-test.crt",
            node().ca().cert_pem().as_bytes(),
            0o644,
        );
        self.ok("cat /usr/local/share/ca-certificates/credgate-test.crt >>/etc/ssl/certs/ca-certificates.crt");
        self.put(cri, "/usr/local/bin/vm-cri", 0o755);
    }

    fn ssh_command(&self) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string()])
            .args(ssh_options())
            .args(self.multiplexing())
            .arg("root@127.0.0.1");
        ssh
    }

    /// One ssh connection for every command: a key exchange costs seconds under TCG.
    fn multiplexing(&self) -> [String; 6] {
        [
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            format!("ControlPath={}/ssh-%C", self.scratch.path().display()),
            "-o".into(),
            "ControlPersist=120".into(),
        ]
    }

    /// Runs `script` with bash in the guest (`set -e`), recording it and its output.
    pub fn run(&self, script: &str) -> CommandOutput {
        let step = self.step.fetch_add(1, Ordering::Relaxed);
        let encoded = base64_encode(script.as_bytes());
        let mut ssh = self.ssh_command();
        ssh.arg(format!(
            "echo {encoded} | base64 -d >/run/vm-step-{step}.sh && bash -e /run/vm-step-{step}.sh"
        ));
        let output = run_bounded(&mut ssh, self.scratch.path(), COMMAND_TIMEOUT);
        let label: String = script
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join("-")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let record = format!(
            "$ {script}\n--- exit: {} ---\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            output.status, output.stdout, output.stderr
        );
        let _ = std::fs::write(
            self.artifacts.join(format!("{step:03}-{label}.txt")),
            record,
        );
        output
    }

    /// Runs `script` and panics with its output unless it succeeded; its stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let output = self.run(script);
        assert!(
            output.success(),
            "vm {}: guest command failed: {output}",
            self.name
        );
        output.stdout
    }

    /// Copies `local` to `remote` in the guest with mode `mode`, making its directory.
    #[track_caller]
    pub fn put(&self, local: &Path, remote: &str, mode: u32) {
        let staged = format!("/run/vm-put-{}", self.step.load(Ordering::Relaxed));
        let mut scp = Command::new("scp");
        scp.arg("-i")
            .arg(&self.key)
            .args(["-P", &self.ssh_port.to_string()])
            .args(ssh_options())
            .args(self.multiplexing())
            .arg(local)
            .arg(format!("root@127.0.0.1:{staged}"));
        run_bounded(&mut scp, self.scratch.path(), COMMAND_TIMEOUT).assert_success();
        self.ok(&format!(
            "mkdir -p \"$(dirname {remote})\"\ninstall -m {mode:o} {staged} {remote}\nrm -f {staged}"
        ));
    }

    /// Writes `contents` to `remote` in the guest with mode `mode`.
    #[track_caller]
    pub fn write(&self, remote: &str, contents: &[u8], mode: u32) {
        let local = self
            .scratch
            .path()
            .join(format!("put-{}", self.step.load(Ordering::Relaxed)));
        std::fs::write(&local, contents).expect("write scratch file");
        self.put(&local, remote, mode);
        let _ = std::fs::remove_file(local);
    }

    /// The guest's boot id: it changes with every boot.
    pub fn boot_id(&self) -> String {
        self.ok("cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_string()
    }

    /// Reboots the guest (`systemctl reboot`) and waits until the new boot answers ssh.
    pub fn reboot(&self) {
        let before = self.boot_id();
        // The connection may drop before ssh reports anything: its outcome says nothing.
        let _ = self.run("systemctl reboot");
        self.wait_for_ssh(Some(&before));
    }

    /// Waits until ssh answers (in a boot other than `old_boot`, when given), failing with the
    /// console's tail if qemu exits or the boot takes longer than the accelerator allows.
    fn wait_for_ssh(&self, old_boot: Option<&str>) {
        let deadline = Instant::now() + self.boot_wait;
        loop {
            let mut probe = self.ssh_command();
            probe.args([
                "-o",
                "ConnectTimeout=3",
                "cat /proc/sys/kernel/random/boot_id",
            ]);
            let output = run_bounded(&mut probe, self.scratch.path(), Duration::from_secs(20));
            if output.success() && Some(output.stdout.trim()) != old_boot {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vm {}: no ssh within {:?}; console tail:\n{}",
                self.name,
                self.boot_wait,
                tail(&read_lossy(&self.artifacts.join("console.log")), 40)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Where this test's artifacts are.
    pub fn artifacts(&self) -> &Path {
        &self.artifacts
    }

    /// Saves the guest's journal of this boot and the previous ones.
    fn save_journal(&self) {
        let mut ssh = self.ssh_command();
        ssh.arg("journalctl --no-pager -o short-monotonic --boot=all 2>/dev/null || journalctl --no-pager");
        let output = run_bounded(&mut ssh, self.scratch.path(), Duration::from_secs(60));
        let _ = std::fs::write(self.artifacts.join("journal.txt"), output.stdout);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.save_journal();
            eprintln!(
                "vm {}: FAILED; every guest command's output, the guest journal and the console log are in {}",
                self.name,
                self.artifacts.display()
            );
        }
        if let Some(mut qemu) = self.qemu.take() {
            qemu.kill();
        }
    }
}

fn ssh_options() -> [&'static str; 14] {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        // A TCG guest on a loaded host can stall for tens of seconds; 15 s of silence
        // (ssh's default 3 missed probes) dropped a command's connection (exit 255).
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=24",
        "-o",
        "ConnectTimeout=10",
    ]
}

/// A loopback port nothing listens on now (qemu binds it for ssh right after).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
