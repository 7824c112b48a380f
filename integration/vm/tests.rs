//! The VM suite (issue 13): credgate's .deb on a Debian guest under real systemd, with the
//! real containerd 2.1 (and 1.7 where it applies), pulling from the node's GitLab stand-in
//! (`registry.test`, tokens from `auth.test`; an anonymous pull of `group/sub` gets 403, so a
//! private pull that succeeds had credgate's credential). Each test boots its own guest
//! from the cached image. Run with `bash integration/vm/run.sh`; a test run any other way
//! fails naming it.
//!
//! Every test ends by reading `journalctl -u credgate -u containerd` for the secrets.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use credgate_integration::gitlab::{self, DEPLOY_PW};
use credgate_integration::images::{push_image, PushedImage};
use credgate_integration::registry::Registry;
use credgate_integration::token_server::TokenServer;
use credgate_integration::vm::{required_path, Vm, DEB_ENV, PREV_DEB_ENV};

const SECRET_FILE: &str = "/etc/credgate/secrets/deploy";
const HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// The GitLab stand-in and its images, on the host side of the guest.
struct Registries {
    tokens: TokenServer,
    _registry: Registry,
}

impl Registries {
    /// The one GitLab stand-in every test of this binary shares: tests run side by side (each
    /// guest is slow under TCG), and a node host serves one test at a time.
    fn start() -> &'static Mutex<Registries> {
        static SHARED: OnceLock<Mutex<Registries>> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (tokens, registry) = gitlab::start();
            Mutex::new(Registries {
                tokens,
                _registry: registry,
            })
        })
    }
}

/// A private image under `group/sub` (deploy's project).
fn private(name: &str) -> PushedImage {
    push_image(
        "registry.test",
        &format!("group/sub/{name}"),
        "v1",
        "deploy",
        DEPLOY_PW,
    )
}

/// credgate's config: deploy's token for `group/sub` from a secret file, the token realm on
/// auth.test allowed, and registry.test (a private address in the guest) allowed for
/// credentials that come from the docker config.
fn registry_config() -> String {
    format!(
        "[upstream]\nallow_realm_hosts = [\"auth.test\"]\nallow_private = [\"registry.test\"]\n\n\
         [[registry]]\nmatch = \"registry.test/group/sub\"\nusername = \"deploy\"\npassword_file = \"{SECRET_FILE}\"\n"
    )
}

/// Swaps in containerd `version`'s binaries (the image boots 2.1), writes containerd's own
/// default config with `sandbox` as the pause image, and restarts it.
fn containerd(vm: &Vm, version: &str, sandbox: &str) {
    if version != "2.1" {
        vm.ok(&format!(
            "systemctl stop containerd\ninstall -m 0755 /opt/containerd/{version}/* /usr/bin/"
        ));
    }
    vm.ok(&format!(
        "mkdir -p /etc/containerd\ncontainerd config default >/etc/containerd/config.toml\n\
         sed -i -E 's#^([[:space:]]*)(sandbox_image|sandbox) = .*#\\1\\2 = \"{sandbox}\"#' /etc/containerd/config.toml\n\
         test \"$(grep -c '{sandbox}' /etc/containerd/config.toml)\" = 1\n\
         systemctl restart containerd"
    ));
    let reported = vm.ok("ctr version | sed -n 's/^ *Version: *//p' | tail -1");
    assert!(
        reported.trim().trim_start_matches('v').starts_with(version),
        "containerd {version} expected, the guest runs {reported}"
    );
}

/// Installs `deb` (dpkg -i, as on a node image) with credgate's config `config`.
fn install_deb(vm: &Vm, deb: &std::path::Path, config: &str) {
    vm.put(deb, "/root/credgate.deb", 0o644);
    vm.ok("DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /root/credgate.deb");
    vm.write(SECRET_FILE, DEPLOY_PW.as_bytes(), 0o600);
    vm.write("/etc/credgate/config.toml", config.as_bytes(), 0o600);
    vm.ok("systemctl restart credgate\nsystemctl is-active credgate.socket credgate.service");
}

/// `credgate install` with containerd's default paths, then `systemctl restart containerd`.
fn credgate_install(vm: &Vm) {
    vm.ok("credgate install\nsystemctl restart containerd");
}

/// A fresh node: containerd `version` with `sandbox` as its pause image, the current .deb,
/// credgate's config, `credgate install`, containerd restarted.
fn fresh_node(test: &str, version: &str, sandbox: &str, config: &str) -> Vm {
    let vm = Vm::boot(test);
    containerd(&vm, version, sandbox);
    install_deb(&vm, &required_path(DEB_ENV), config);
    credgate_install(&vm);
    vm
}

/// The systemd properties `names` of `unit`.
fn unit(vm: &Vm, unit: &str, names: &[&str]) -> BTreeMap<String, String> {
    let text = vm.ok(&format!("systemctl show {unit} -p {}", names.join(",")));
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// credgate and containerd logged in this guest, and none of it is a secret.
fn assert_no_secret_in_journal(vm: &Vm) {
    let journal = vm.ok("journalctl --no-pager -u credgate -u containerd");
    assert!(
        journal.contains("credgate is up"),
        "the journal has no credgate start: the check would prove nothing:\n{journal}"
    );
    assert!(
        !journal.contains(DEPLOY_PW),
        "a secret is in journalctl -u credgate -u containerd (see {})",
        vm.artifacts().display()
    );
    let secret = vm.ok("cat /etc/credgate/mirror-secret");
    assert!(!secret.trim().is_empty());
    assert!(
        !journal.contains(secret.trim()),
        "the mirror secret is in the journal (see {})",
        vm.artifacts().display()
    );
}

fn fresh_node_pulls_every_way(version: &str) {
    let registries = Registries::start();
    let app = private("app");
    let other = private("other");
    let pause = push_image(
        "registry.test",
        "group/sub/pause",
        "3.10",
        "deploy",
        DEPLOY_PW,
    );
    let vm = fresh_node(
        &format!("fresh_node_{}", version.replace('.', "_")),
        version,
        &pause.reference,
        &registry_config(),
    );

    vm.ok(&format!("vm-cri pull {}", app.reference));
    // The pause image has no command: the sandbox fails after its pull, which is the point.
    let sandbox = vm.run("vm-cri runp fresh-node");
    vm.ok(&format!("vm-cri inspecti {}", pause.reference));
    eprintln!("RunPodSandbox after the pull: {sandbox}");
    vm.ok(&format!(
        "ctr image pull --hosts-dir {HOSTS_DIR} {}",
        other.reference
    ));
    let doctor = vm.run("credgate doctor");
    assert!(doctor.success(), "credgate doctor: {doctor}");
    assert!(
        doctor.stdout.lines().all(|l| !l.starts_with("FAIL")),
        "{doctor}"
    );
    assert!(doctor.stdout.contains("accepted"), "{doctor}");
    assert!(registries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tokens
        .issued_to("deploy"));
    assert_no_secret_in_journal(&vm);
}

#[test]
fn fresh_node_on_containerd_2_1() {
    fresh_node_pulls_every_way("2.1");
}

#[test]
fn fresh_node_on_containerd_1_7() {
    fresh_node_pulls_every_way("1.7");
}

fn crash(version: &str) {
    let _registries = Registries::start();
    let during_restart = private("during-restart");
    let activated = private("activated");
    let vm = fresh_node(
        &format!("crash_{}", version.replace('.', "_")),
        version,
        "registry.k8s.io/pause:3.10",
        &registry_config(),
    );
    let before = unit(&vm, "credgate", &["MainPID", "NRestarts"]);

    // The pull starts while systemd waits RestartSec before bringing credgate back: its
    // connection waits in credgate.socket's queue.
    let outage = vm.ok(&format!(
        "systemctl kill -s KILL credgate\n\
         echo \"state at pull: $(systemctl show credgate -p SubState --value)\"\n\
         vm-cri pull {}",
        during_restart.reference
    ));
    assert!(
        outage.contains("state at pull: auto-restart") || outage.contains("state at pull: dead"),
        "the pull did not start during the outage: {outage}"
    );
    let after = unit(&vm, "credgate", &["MainPID", "NRestarts"]);
    assert_ne!(
        before["MainPID"], after["MainPID"],
        "credgate was not restarted"
    );
    assert_eq!(after["NRestarts"], "1", "{after:?}");

    // Stopped, with its socket still listening: the next pull starts it.
    vm.ok("systemctl stop credgate.service\ntest \"$(systemctl is-active credgate.service)\" = inactive");
    vm.ok(&format!("vm-cri pull {}", activated.reference));
    vm.ok("systemctl is-active credgate.service");
    assert_no_secret_in_journal(&vm);
}

#[test]
fn crash_on_containerd_2_1() {
    crash("2.1");
}

#[test]
fn crash_on_containerd_1_7() {
    crash("1.7");
}

#[test]
fn reboot_credgate_is_up_before_containerd_serves_the_cri() {
    let _registries = Registries::start();
    let first = private("first-after-boot");
    let vm = fresh_node(
        "reboot",
        "2.1",
        "registry.k8s.io/pause:3.10",
        &registry_config(),
    );
    vm.reboot();
    // The first pull after boot, as soon as containerd reports itself ready (Type=notify).
    vm.ok(&format!(
        "for _ in $(seq 600); do systemctl is-active -q containerd && break; sleep 0.1; done\nvm-cri pull {}",
        first.reference
    ));
    let stamp = |name: &str| -> u64 {
        let props = unit(&vm, name, &["ActiveEnterTimestampMonotonic", "ActiveState"]);
        assert_eq!(props["ActiveState"], "active", "{name}: {props:?}");
        props["ActiveEnterTimestampMonotonic"].parse().unwrap()
    };
    let socket = stamp("credgate.socket");
    let service = stamp("credgate.service");
    let containerd = stamp("containerd.service");
    assert!(
        socket < containerd && service <= containerd,
        "credgate.socket up at {socket} µs, credgate.service at {service} µs, containerd (notify: serving) at {containerd} µs"
    );
    assert_no_secret_in_journal(&vm);
}

#[test]
fn upgrade_under_load_loses_no_pull() {
    let _registries = Registries::start();
    let image = private("under-load");
    let vm = Vm::boot("upgrade_under_load");
    containerd(&vm, "2.1", "registry.k8s.io/pause:3.10");
    install_deb(&vm, &required_path(PREV_DEB_ENV), &registry_config());
    credgate_install(&vm);
    let old_version = vm.ok("dpkg-query -W -f '${Version}' credgate");
    vm.put(&required_path(DEB_ENV), "/root/credgate-new.deb", 0o644);

    // Pull, remove, pull again, until told to stop; each pull's start and end are logged.
    let reference = &image.reference;
    vm.write(
        "/root/pull-loop.sh",
        format!(
            "i=0\nwhile [ ! -e /root/stop-loop ]; do\n  i=$((i+1)); start=$(date +%s%N)\n  \
             if out=$(vm-cri pull {reference} 2>&1); then r=ok; else r=FAIL; fi\n  \
             echo \"$r $i $start $(date +%s%N) $out\"\n  \
             ctr -n k8s.io images rm {reference} >/dev/null 2>&1 || true\ndone\necho done\n"
        )
        .as_bytes(),
        0o755,
    );
    vm.ok("systemd-run --unit=pull-loop --collect --property=StandardOutput=file:/root/pull-loop.log bash /root/pull-loop.sh");
    let ok_pulls = |at_least: usize| {
        vm.ok(&format!(
            "for _ in $(seq 600); do [ \"$(grep -c '^ok' /root/pull-loop.log)\" -ge {at_least} ] && exit 0; grep -q '^FAIL' /root/pull-loop.log && break; sleep 0.2; done; cat /root/pull-loop.log; exit 1"
        ))
    };
    ok_pulls(3);
    let before = unit(&vm, "credgate", &["MainPID"]);
    let window = vm.ok("echo start $(date +%s%N)\n\
         DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /root/credgate-new.deb >&2\n\
         echo end $(date +%s%N)");
    let after = unit(&vm, "credgate", &["MainPID"]);
    let done_so_far = vm
        .ok("grep -c '^ok' /root/pull-loop.log")
        .trim()
        .parse::<usize>()
        .unwrap();
    ok_pulls(done_so_far + 3);
    vm.ok("touch /root/stop-loop\nfor _ in $(seq 600); do grep -q '^done' /root/pull-loop.log && exit 0; sleep 0.2; done; exit 1");
    let log = vm.ok("cat /root/pull-loop.log");

    let new_version = vm.ok("dpkg-query -W -f '${Version}' credgate");
    assert_ne!(
        old_version, new_version,
        "the upgrade did not change the version"
    );
    assert_ne!(
        before["MainPID"], after["MainPID"],
        "the upgrade did not restart credgate"
    );
    // NAccepted counts only Accept=yes sockets; the new daemon's own log says it took them.
    let new_pid = &after["MainPID"];
    let adopted = vm.ok(&format!("journalctl --no-pager -u credgate _PID={new_pid}"));
    assert!(
        adopted.contains("socket activation: serving on the listeners systemd passed"),
        "the upgraded credgate did not take credgate.socket's listeners over:\n{adopted}"
    );
    let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed.is_empty(),
        "pulls failed during the upgrade:\n{}",
        failed.join("\n")
    );
    let stamp = |word: &str| -> u128 {
        window
            .lines()
            .find_map(|l| l.strip_prefix(word))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {word} in {window}"))
    };
    let (start, end) = (stamp("start "), stamp("end "));
    let overlapping = log
        .lines()
        .filter(|l| l.starts_with("ok"))
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(2);
            Some((
                words.next()?.parse::<u128>().ok()?,
                words.next()?.parse::<u128>().ok()?,
            ))
        })
        .filter(|(pull_start, pull_end)| *pull_start < end && *pull_end > start)
        .count();
    assert!(
        overlapping > 0,
        "no pull ran while the package was upgraded; the loop proves nothing:\n{log}"
    );
    eprintln!(
        "upgrade {old_version} -> {new_version}: {overlapping} pulls overlapped it, 0 failed"
    );
    assert_no_secret_in_journal(&vm);
}

#[test]
fn hardening_holds_for_docker_credential_pass() {
    let _registries = Registries::start();
    let image = private("from-pass");
    let config =
        "[upstream]\nallow_realm_hosts = [\"auth.test\"]\nallow_private = [\"registry.test\"]\n\n\
                  [[docker_config]]\npath = \"/root/.docker/config.json\"\n";
    let vm = Vm::boot("hardening_pass");
    containerd(&vm, "2.1", "registry.k8s.io/pause:3.10");
    vm.ok(&format!(
        "gpg --batch --pinentry-mode loopback --passphrase '' --quick-gen-key credgate-vm@credgate.invalid default default never 2>/dev/null\n\
         fpr=$(gpg --list-keys --with-colons | awk -F: '/^fpr/ {{print $10; exit}}')\n\
         pass init \"$fpr\" >/dev/null\n\
         printf '%s' '{{\"ServerURL\":\"registry.test\",\"Username\":\"deploy\",\"Secret\":\"{DEPLOY_PW}\"}}' | docker-credential-pass store\n\
         mkdir -p /root/.docker\n\
         printf '%s' '{{\"credsStore\":\"pass\"}}' >/root/.docker/config.json"
    ));
    install_deb(&vm, &required_path(DEB_ENV), config);
    credgate_install(&vm);
    // The shipped unit, unchanged: no drop-in, no override.
    let props = unit(
        &vm,
        "credgate",
        &[
            "FragmentPath",
            "DropInPaths",
            "ProtectSystem",
            "NoNewPrivileges",
        ],
    );
    assert_eq!(
        props["FragmentPath"], "/lib/systemd/system/credgate.service",
        "{props:?}"
    );
    assert_eq!(props["DropInPaths"], "", "{props:?}");
    assert_eq!(props["ProtectSystem"], "full", "{props:?}");
    vm.ok(&format!("vm-cri pull {}", image.reference));
    // The credential came from the pass store through docker-credential-pass.
    let lookup = vm.ok(&format!("credgate lookup {}", image.reference));
    assert!(lookup.contains("credsStore \"pass\""), "{lookup}");
    assert_no_secret_in_journal(&vm);
}

/// With credgate and its socket stopped, containerd falls back to the registry itself, which
/// refuses the anonymous pull of a private image (403). containerd 2.1 reports the first
/// host's error (connection refused at credgate's endpoint), not the registry's 403, so the
/// 403 is read where it happened: the token server refused the anonymous request.
#[test]
fn credgate_stopped_public_pulls_work_private_ones_get_403() {
    let registries = Registries::start();
    let public = push_image("registry.test", "public/app", "v1", "deploy", DEPLOY_PW);
    let image = private("while-stopped");
    let vm = fresh_node(
        "credgate_stopped",
        "2.1",
        "registry.k8s.io/pause:3.10",
        &registry_config(),
    );
    vm.ok("systemctl stop credgate.socket credgate.service\n\
           test \"$(systemctl is-active credgate.socket)\" = inactive\n\
           test \"$(systemctl is-active credgate.service)\" = inactive");
    vm.ok(&format!("vm-cri pull {}", public.reference));
    let refused = vm.run(&format!("vm-cri pull {}", image.reference));
    assert!(
        !refused.success(),
        "a private pull worked with credgate stopped: {refused}"
    );
    let reported = refused.stderr.contains("403 Forbidden")
        || (refused.stderr.contains("127.0.0.1:5008")
            && refused.stderr.contains("connection refused"));
    assert!(reported, "{refused}");
    let repository = "group/sub/while-stopped";
    let anonymous: Vec<_> = registries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tokens
        .requests()
        .into_iter()
        .filter(|r| r.user.is_none() && r.scopes.iter().any(|s| s.contains(repository)))
        .collect();
    assert!(
        !anonymous.is_empty() && anonymous.iter().all(|r| !r.granted.iter().any(|g| g.contains(repository))),
        "containerd did not fall back to an anonymous, refused token request for {repository}: {anonymous:?}"
    );
    eprintln!(
        "credgate stopped: containerd reported: {}",
        refused.stderr.trim()
    );
    assert_no_secret_in_journal(&vm);
}
