//! The node: a private mount and network namespace in which test servers listen on port 443
//! under real host names, and every client trusts the test CA through the system bundle.
//!
//! [`node`] sets it up once per test process: it bind-mounts a generated `/etc/hosts` (each
//! name in [`NODE_HOSTS`] on its own loopback address, so several servers can listen on :443)
//! and a CA bundle (the system one plus [`TestCa::shared`]) over
//! `/etc/ssl/certs/ca-certificates.crt`. Outside such a namespace it panics with the command
//! to run instead: it never touches the host's files.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pki::TestCa;
use crate::process::run_bounded;

/// Every host name a node test may use, with its loopback address. Add names here.
pub const NODE_HOSTS: &[(&str, [u8; 4])] = &[
    ("registry.test", [127, 0, 0, 10]),
    ("auth.test", [127, 0, 0, 11]),
    ("basic.test", [127, 0, 0, 12]),
    ("open.test", [127, 0, 0, 13]),
    ("second.test", [127, 0, 0, 14]),
    ("a.glob.test", [127, 0, 0, 15]),
    ("b.glob.test", [127, 0, 0, 16]),
    ("registry-1.docker.io", [127, 0, 0, 17]),
    // Mirrors of registry.test (crate::pull_through): a pull-through cache, a plain-HTTP
    // mirror and one whose certificate only its own CA vouches for.
    ("mirror.test", [127, 0, 0, 18]),
    ("plain-mirror.test", [127, 0, 0, 19]),
    ("ca-mirror.test", [127, 0, 0, 20]),
    // A blob CDN must look public to credgate: a redirect off a registry's own host may reach
    // public addresses only. This one lies outside every special-purpose range and lives on the
    // namespace's own `lo`, which has no route out of the namespace.
    ("cdn.test", [11, 7, 0, 16]),
];

/// More names for a node host: they resolve to its address and its server certificate
/// covers them. Docker Hub's names all reach the one test registry playing Docker Hub.
pub const NODE_ALIASES: &[(&str, &str)] = &[
    ("index.docker.io", "registry-1.docker.io"),
    ("docker.io", "registry-1.docker.io"),
];

/// The system CA bundle path; inside the node it also holds the test CA. Go's clients
/// (crane, oras, skopeo) read it, and so does anything using the system trust store.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const HOSTS_FILE: &str = "/etc/hosts";
/// Tests of one binary start together and take turns on a shared host (registry.test): the
/// last may wait for all the others' pulls.
const LEASE_WAIT: Duration = Duration::from_secs(300);

/// The node this test process runs in.
pub struct Node {
    leases: Mutex<HashSet<String>>,
    released: Condvar,
}

/// Sets the node up on first use (see the module docs) and returns it.
pub fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        require_private_namespaces();
        set_up();
        Node {
            leases: Mutex::new(HashSet::new()),
            released: Condvar::new(),
        }
    })
}

impl Node {
    /// The loopback address `host` resolves to; panics for a name not in [`NODE_HOSTS`].
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        host_ip(host)
    }

    /// `host` and its [`NODE_ALIASES`]: the names a server on `host:443` answers to.
    pub fn names<'a>(&self, host: &'a str) -> Vec<&'a str> {
        host_ip(host);
        let aliases = NODE_ALIASES
            .iter()
            .filter(|(_, of)| *of == host)
            .map(|(alias, _)| *alias);
        std::iter::once(host).chain(aliases).collect()
    }

    /// The CA every server in the node presents certificates from.
    pub fn ca(&self) -> &'static TestCa {
        TestCa::shared()
    }

    /// The CA bundle to hand clients as `SSL_CERT_FILE` (the system bundle, test CA included).
    pub fn ca_bundle(&self) -> &'static Path {
        Path::new(CA_BUNDLE)
    }

    /// Exclusive use of `host:443` for as long as the lease lives. Servers take one, so tests
    /// in one binary that start a server on the same host take turns instead of colliding.
    pub fn lease(&'static self, host: &str) -> HostLease {
        host_ip(host);
        let deadline = Instant::now() + LEASE_WAIT;
        let mut leased = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        while leased.contains(host) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{host}:443 stayed in use for {LEASE_WAIT:?}"
            );
            leased = self
                .released
                .wait_timeout(leased, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        leased.insert(host.to_string());
        HostLease {
            node: self,
            host: host.to_string(),
        }
    }
}

/// Exclusive use of one host name's :443 (see [`Node::lease`]).
pub struct HostLease {
    node: &'static Node,
    host: String,
}

impl HostLease {
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Drop for HostLease {
    fn drop(&mut self) {
        let mut leased = self.node.leases.lock().unwrap_or_else(|e| e.into_inner());
        leased.remove(&self.host);
        self.node.released.notify_all();
    }
}

fn host_ip(host: &str) -> Ipv4Addr {
    NODE_HOSTS
        .iter()
        .find(|(name, _)| *name == host)
        .map(|(_, ip)| Ipv4Addr::from(*ip))
        .unwrap_or_else(|| {
            panic!("{host} is not a node host; add it to credgate_integration::node::NODE_HOSTS")
        })
}

/// The command that runs this test binary inside a private node.
fn node_command() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Cargo names test binaries `<target>-<hash>`.
    let target = stem
        .rsplit_once('-')
        .map_or(stem.as_str(), |(name, _)| name);
    format!(
        "cargo build --bin credgate && unshare --mount --net -- cargo test -p \
         credgate-integration --test {target} (as root; or bash integration/test-all.sh, which \
         runs every tests/node_*.rs that way)"
    )
}

/// Panics unless this process has its own network and mount namespaces, with private mount
/// propagation for the files the node replaces.
fn require_private_namespaces() {
    for kind in ["net", "mnt"] {
        let mine =
            namespace("self", kind).unwrap_or_else(|| panic!("cannot read /proc/self/ns/{kind}"));
        let private = ancestors()
            .filter_map(|pid| namespace(&pid.to_string(), kind))
            .any(|theirs| theirs != mine);
        assert!(
            private,
            "node tests need a private {kind} namespace (they listen on :443 and bind-mount over \
             {HOSTS_FILE} and {CA_BUNDLE}); run: {}",
            node_command()
        );
    }
    for target in [HOSTS_FILE, CA_BUNDLE] {
        assert!(
            !mount_is_shared(Path::new(target)),
            "the mount holding {target} propagates to other namespaces (shared); \
             run with private propagation: {}",
            node_command()
        );
    }
}

fn namespace(pid: &str, kind: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// The parent, its parent, ... and pid 1 (which may be unreadable: then the ancestors decide).
fn ancestors() -> impl Iterator<Item = u32> {
    let mut chain = Vec::new();
    let mut pid = std::process::id();
    while let Some(parent) = parent_of(pid) {
        if parent == 0 || chain.contains(&parent) {
            break;
        }
        chain.push(parent);
        pid = parent;
    }
    if !chain.contains(&1) {
        chain.push(1);
    }
    chain.into_iter()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the mount that holds `path` has shared propagation (`shared:N` in mountinfo).
fn mount_is_shared(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = *fields.get(4)?;
            let optional_end = fields.iter().position(|f| *f == "-")?;
            let shared = fields[6..optional_end]
                .iter()
                .any(|f| f.starts_with("shared:"));
            path.starts_with(mount_point)
                .then_some((mount_point.len(), shared))
        })
        // The last of the longest matches is the mount on top.
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, shared)| shared)
}

fn set_up() {
    let scratch = tempfile::tempdir().expect("temp dir");
    run(
        Command::new(crate::require_program("ip", "iproute2")).args(["link", "set", "lo", "up"]),
        scratch.path(),
    );
    for (_, ip) in NODE_HOSTS.iter().filter(|(_, ip)| ip[0] != 127) {
        let address = format!("{}/32", Ipv4Addr::from(*ip));
        run(
            Command::new(crate::require_program("ip", "iproute2"))
                .args(["addr", "add", &address, "dev", "lo"]),
            scratch.path(),
        );
    }

    let hosts = scratch.path().join("hosts");
    std::fs::write(&hosts, hosts_file()).expect("write hosts");
    let bundle = scratch.path().join("ca-certificates.crt");
    let mut pem = std::fs::read_to_string(CA_BUNDLE).unwrap_or_default();
    if !pem.is_empty() && !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(TestCa::shared().cert_pem());
    std::fs::write(&bundle, pem).expect("write CA bundle");

    let mount = crate::require_program("mount", "mount");
    for (source, target) in [(&hosts, HOSTS_FILE), (&bundle, CA_BUNDLE)] {
        if !Path::new(target).exists() {
            std::fs::create_dir_all(Path::new(target).parent().expect("parent")).expect("mkdir");
            std::fs::write(target, "").expect("create mount point");
        }
        run(
            Command::new(&mount).arg("--bind").arg(source).arg(target),
            scratch.path(),
        );
    }
    // The mounts keep the files alive; the scratch directory goes with `scratch`.
}

fn hosts_file() -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in NODE_HOSTS {
        text.push_str(&format!("{}\t{name}\n", Ipv4Addr::from(*ip)));
    }
    for (alias, host) in NODE_ALIASES {
        text.push_str(&format!("{}\t{alias}\n", host_ip(host)));
    }
    text
}

fn run(command: &mut Command, scratch: &Path) {
    run_bounded(command, scratch, Duration::from_secs(10)).assert_success();
}
