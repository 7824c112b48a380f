//! `credgate install` and `credgate uninstall` against the real `containerd config default`
//! output of containerd 1.6, 1.7 and 2.1 (`integration/tests/fixtures/containerd/`), in temp
//! dirs only: the exact text written, a second install that changes nothing, an uninstall that
//! restores every byte, `--dry-run`, the registry tables containerd rejects or warns about,
//! mirrors fronted through the gate (and files edited or rewritten since install), and the
//! attacks on the secret install writes: a hosts.toml any local user can read, and a secret
//! printed by a dry run.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SECRET: &str = "0123456789abcdef-test-secret";

/// The containerd versions whose `containerd config default` output is a fixture.
const VERSIONS: [&str; 3] = ["1.6", "1.7", "2.1"];

/// An operator's docker.io hosts.toml: the upstream with its own CA, and a CA-pinned mirror.
const DOCKER_IO_HOSTS: &str = "server = \"https://registry-1.docker.io\"\n\
ca = \"/etc/containerd/certs.d/docker.io/upstream-ca.pem\"\n\
\n\
# the office mirror, with its own CA\n\
[host.\"https://mirror.office.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"/etc/containerd/certs.d/docker.io/office-ca.pem\"\n";

/// [`DOCKER_IO_HOSTS`] after install: the mirror fronted, credgate's upstream host, then
/// everything else as it was.
const DOCKER_IO_HOSTS_INSTALLED: &str = "server = \"https://registry-1.docker.io\"\n\
ca = \"/etc/containerd/certs.d/docker.io/upstream-ca.pem\"\n\
\n\
[host.\"http://127.0.0.1:5008/mirror/1\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
[host.\"http://127.0.0.1:5008/mirror/1\".header]\n    X-Credgate-Secret = [\"0123456789abcdef-test-secret\"]\n    \
X-Credgate-Mirror = [\"https://mirror.office.test\"]\n\
\n\
[host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
[host.\"http://127.0.0.1:5008\".header]\n    X-Credgate-Secret = [\"0123456789abcdef-test-secret\"]\n\
\n\
# the office mirror, with its own CA\n\
[host.\"https://mirror.office.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"/etc/containerd/certs.d/docker.io/office-ca.pem\"\n";

const OURS: &str = "[host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
[host.\"http://127.0.0.1:5008\".header]\n    X-Credgate-Secret = [\"0123456789abcdef-test-secret\"]\n";

/// A node in a temp dir: credgate's config and secret, containerd's config, a hosts dir.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(containerd_config: &str) -> Self {
        let node = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let credgate = node.path("credgate");
        std::fs::create_dir(&credgate).unwrap();
        write(
            &credgate.join("mirror-secret"),
            &format!("{SECRET}\n"),
            0o600,
        );
        let config = format!(
            "[listen]\nmirror = \"127.0.0.1:5008\"\nmirror_secret_file = \"{}\"\n\n\
             [[registry]]\nmatch = \"registry.example.com/k8s\"\nusername = \"deploy\"\npassword = \"pw\"\n",
            credgate.join("mirror-secret").display()
        );
        write(&credgate.join("config.toml"), &config, 0o600);
        std::fs::create_dir(node.path("containerd")).unwrap();
        write(&node.containerd_config(), containerd_config, 0o644);
        node
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn containerd_config(&self) -> PathBuf {
        self.path("containerd/config.toml")
    }

    fn hosts_dir(&self) -> PathBuf {
        self.path("containerd/certs.d")
    }

    fn credgate(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_credgate"))
            .arg("--config")
            .arg(self.path("credgate/config.toml"))
            .args(args)
            .arg("--containerd-config")
            .arg(self.containerd_config())
            .env_remove("CREDGATE_CONFIG")
            .env_remove("CREDGATE_LOG")
            .output()
            .expect("credgate runs")
    }

    fn with_hosts_dir(&self, args: &[&str]) -> Output {
        let hosts = self.hosts_dir();
        let mut all = args.to_vec();
        all.extend(["--hosts-dir", hosts.to_str().unwrap()]);
        self.credgate(&all)
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).unwrap()
    }

    /// Every file and directory under the node: content (files) and mode.
    fn tree(&self) -> Tree {
        let mut tree = BTreeMap::new();
        walk(self.dir.path(), self.dir.path(), &mut tree);
        tree
    }
}

/// Every path under a node: its bytes (None for a directory) and its mode.
type Tree = BTreeMap<PathBuf, (Option<Vec<u8>>, u32)>;

fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        if meta.is_dir() {
            tree.insert(relative, (None, mode));
            walk(root, &path, tree);
        } else {
            tree.insert(relative, (Some(std::fs::read(&path).unwrap()), mode));
        }
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/tests/fixtures/containerd")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// `containerd config default` of a containerd version, exactly as it printed it.
fn default_config(version: &str) -> String {
    fixture(&format!("config-default-containerd-{version}.toml"))
}

/// What install makes of [`default_config`], for the hosts dir `hosts`.
fn installed_config(version: &str, hosts: &Path) -> String {
    fixture(&format!(
        "installed/config-default-containerd-{version}.toml"
    ))
    .replace("@HOSTS_DIR@", hosts.to_str().unwrap())
}

/// A version 2 config (containerd 1.7's default).
fn v2() -> String {
    default_config("1.7")
}

/// A version 3 config (containerd 2.1's default).
fn v3() -> String {
    default_config("2.1")
}

/// `text` with `from` replaced, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?}");
    text.replacen(from, to, 1)
}

/// The CRI registry table header of a default config, with its `config_path = ""` line.
fn registry_table(version: &str) -> &'static str {
    match version {
        "2.1" => "    [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''\n",
        _ => "    [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      config_path = \"\"\n",
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// A node whose hosts dir already configures docker.io (server and a CA-pinned mirror).
/// A repeated install succeeded, said `already installed`, and left the tree as `installed`.
#[track_caller]
fn assert_changes_nothing(out: &Output, node: &Node, installed: &Tree) {
    assert_ok(out);
    assert!(stdout(out).contains("already installed"), "{}", stdout(out));
    assert_eq!(&node.tree(), installed);
}

fn node_with_docker_io(config: &str) -> Node {
    let node = Node::new(config);
    std::fs::create_dir_all(node.hosts_dir().join("docker.io")).unwrap();
    write(
        &node.hosts_dir().join("docker.io/hosts.toml"),
        DOCKER_IO_HOSTS,
        0o644,
    );
    node
}

/// Install on a real default (with or without an operator's docker.io hosts.toml): the exact
/// text of every file, a second install that changes nothing, and an uninstall that restores
/// every byte and mode and removes what install created.
fn round_trip(version: &str, with_docker_io: bool) {
    let config = default_config(version);
    let node = if with_docker_io {
        node_with_docker_io(&config)
    } else {
        Node::new(&config)
    };
    let before = node.tree();

    let out = node.with_hosts_dir(&["install"]);
    assert_ok(&out);
    assert_eq!(stderr(&out), "", "a default config warrants no warning");
    assert!(
        stdout(&out).contains("restart containerd"),
        "{}",
        stdout(&out)
    );
    let hosts = node.hosts_dir();
    assert_eq!(
        node.read("containerd/config.toml"),
        installed_config(version, &hosts)
    );
    assert_eq!(node.read("containerd/certs.d/_default/hosts.toml"), OURS);
    let mut expected_names = vec![".credgate-install.json", "_default"];
    if with_docker_io {
        assert_eq!(
            node.read("containerd/certs.d/docker.io/hosts.toml"),
            DOCKER_IO_HOSTS_INSTALLED
        );
        expected_names.push("docker.io");
    }
    // No directory for registry.example.com (credgate's own registry), or any other.
    let mut names: Vec<_> = std::fs::read_dir(&hosts)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, expected_names);
    let installed = node.tree();

    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);

    // Uninstall finds the hosts dir through the config_path install wrote.
    let out = node.credgate(&["uninstall"]);
    assert_ok(&out);
    assert_eq!(node.tree(), before, "{}", stdout(&out));
}

#[test]
fn round_trip_on_the_containerd_1_6_default() {
    round_trip("1.6", false);
}

#[test]
fn round_trip_on_the_containerd_1_6_default_with_a_registry_hosts_toml() {
    round_trip("1.6", true);
}

#[test]
fn round_trip_on_the_containerd_1_7_default() {
    round_trip("1.7", false);
}

#[test]
fn round_trip_on_the_containerd_1_7_default_with_a_registry_hosts_toml() {
    round_trip("1.7", true);
}

#[test]
fn round_trip_on_the_containerd_2_1_default() {
    round_trip("2.1", false);
}

#[test]
fn round_trip_on_the_containerd_2_1_default_with_a_registry_hosts_toml() {
    round_trip("2.1", true);
}

#[test]
fn an_operators_comments_and_quoting_are_kept() {
    let commented = replace_once(
        &v2(),
        registry_table("1.7"),
        "    # hosts.toml files live in certs.d\n    [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      \
         config_path = \"\"   # set by credgate install\n",
    );
    let node = Node::new(&commented);
    assert_ok(&node.with_hosts_dir(&["install"]));
    let expected = replace_once(
        &commented,
        "config_path = \"\"   #",
        &format!("config_path = \"{}\"   #", node.hosts_dir().display()),
    );
    assert_eq!(node.read("containerd/config.toml"), expected);
}

#[test]
fn a_second_install_changes_nothing_and_says_already_installed() {
    for version in VERSIONS {
        let node = node_with_docker_io(&default_config(version));
        assert_ok(&node.with_hosts_dir(&["install"]));
        let first = node.tree();
        assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &first);
        // Without --hosts-dir it finds the same directory through config_path.
        assert_changes_nothing(&node.credgate(&["install"]), &node, &first);
    }
}

#[test]
fn uninstall_restores_every_byte_and_mode_and_removes_what_install_created() {
    for version in VERSIONS {
        let node = node_with_docker_io(&default_config(version));
        let before = node.tree();
        assert_ok(&node.with_hosts_dir(&["install"]));
        assert_ok(&node.with_hosts_dir(&["install"]));
        assert_ne!(node.tree(), before);
        // Uninstall finds the hosts dir through the config_path install wrote.
        let out = node.credgate(&["uninstall"]);
        assert_ok(&out);
        assert_eq!(node.tree(), before, "{}", stdout(&out));
        assert!(
            stdout(&out).contains("restart containerd"),
            "{}",
            stdout(&out)
        );
        let again = node.credgate(&["uninstall"]);
        assert_ok(&again);
        assert!(
            stdout(&again).contains("not installed"),
            "{}",
            stdout(&again)
        );
    }
}

#[test]
fn uninstall_removes_a_hosts_dir_install_created() {
    let node = Node::new(&v3());
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install"]));
    assert!(node.hosts_dir().join("_default/hosts.toml").is_file());
    let mode = std::fs::metadata(node.hosts_dir().join("_default/hosts.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "hosts.toml holds the secret");
    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before);
}

#[test]
fn dry_run_prints_a_unified_diff_and_writes_nothing() {
    let node = node_with_docker_io(&v2());
    let before = node.tree();
    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_ok(&out);
    assert_eq!(node.tree(), before);
    let diff = stdout(&out);
    let config = node.containerd_config();
    let hosts = node.hosts_dir();
    for line in [
        format!("--- {}", config.display()),
        format!("+++ {}", config.display()),
        "-      config_path = \"\"".to_string(),
        format!("+      config_path = \"{}\"", hosts.display()),
        "--- /dev/null".to_string(),
        format!("+++ {}", hosts.join("_default/hosts.toml").display()),
        format!("+++ {}", hosts.join("docker.io/hosts.toml").display()),
        format!(
            "+    X-Credgate-Secret = [\"<redacted: contents of {}>\"]",
            node.path("credgate/mirror-secret").display()
        ),
        "dry run: nothing was written".to_string(),
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "missing {line:?} in:\n{diff}"
        );
    }

    assert_ok(&node.with_hosts_dir(&["install"]));
    let installed = node.tree();
    let out = node.credgate(&["uninstall", "--dry-run"]);
    assert_ok(&out);
    assert_eq!(node.tree(), installed);
    assert!(stdout(&out).contains("+++ /dev/null"), "{}", stdout(&out));
}

/// `version`'s default with `lines` added under its (empty) registry sub-table `table`.
fn with_registry_entries(version: &str, table: &str, lines: &str) -> String {
    let header = match version {
        "2.1" => format!("[plugins.'io.containerd.cri.v1.images'.registry.{table}]"),
        _ => format!("[plugins.\"io.containerd.grpc.v1.cri\".registry.{table}]"),
    };
    let config = default_config(version);
    if config.contains(&header) {
        replace_once(
            &config,
            &format!("{header}\n"),
            &format!("{header}\n{lines}"),
        )
    } else {
        // containerd 2.1's default has no empty deprecated tables.
        format!("{config}\n{header}\n{lines}")
    }
}

/// Install refused `config`: exit 2, one line naming the file and `naming`, nothing written.
fn assert_refused(config: &str, naming: &[&str]) {
    let node = Node::new(config);
    let before = node.tree();
    let out = node.with_hosts_dir(&["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(node.containerd_config().to_str().unwrap()),
        "{err}"
    );
    for word in naming {
        assert!(err.contains(word), "{word:?} missing from {err}");
    }
    assert_eq!(node.tree(), before);
}

#[test]
fn mirrors_with_entries_are_refused_since_containerd_rejects_them_with_config_path() {
    for version in VERSIONS {
        let config = with_registry_entries(
            version,
            "mirrors",
            "        [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n          \
             endpoint = [\"https://mirror.office.test\"]\n"
                .replace(
                    "\"io.containerd.grpc.v1.cri\"",
                    if version == "2.1" {
                        "'io.containerd.cri.v1.images'"
                    } else {
                        "\"io.containerd.grpc.v1.cri\""
                    },
                )
                .as_str(),
        );
        assert_refused(&config, &["registry.mirrors", "(docker.io)", "config_path"]);
    }
}

#[test]
fn configs_tls_in_a_v2_config_is_refused_since_containerd_1_x_rejects_it() {
    for version in ["1.6", "1.7"] {
        let config = with_registry_entries(
            version,
            "configs",
            "        [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"reg.test\".tls]\n          \
             ca_file = \"/etc/ssl/reg.pem\"\n",
        );
        assert_refused(
            &config,
            &["configs.<host>.tls", "(reg.test)", "containerd 1.x"],
        );
    }
}

#[test]
fn configs_and_auths_with_entries_warn_one_line_each_and_install_goes_on() {
    let auth = "        [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"reg.test\".auth]\n          \
                username = \"u\"\n";
    let config = with_registry_entries("1.7", "configs", auth);
    let config = replace_once(
        &config,
        "      [plugins.\"io.containerd.grpc.v1.cri\".registry.auths]\n",
        "      [plugins.\"io.containerd.grpc.v1.cri\".registry.auths]\n        \
         [plugins.\"io.containerd.grpc.v1.cri\".registry.auths.\"https://reg.test\"]\n          \
         username = \"u\"\n",
    );
    let node = Node::new(&config);
    let out = node.with_hosts_dir(&["install"]);
    assert_ok(&out);
    let warnings: Vec<_> = stderr(&out).lines().map(str::to_string).collect();
    assert_eq!(warnings.len(), 2, "{}", stderr(&out));
    assert!(
        warnings[0].contains("registry.configs` is deprecated"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("registry.auths` is deprecated"),
        "{}",
        warnings[1]
    );
    assert!(
        warnings.iter().all(|w| w.contains("local pull")),
        "{warnings:?}"
    );

    let v3 = with_registry_entries(
        "2.1",
        "configs",
        "  [plugins.'io.containerd.cri.v1.images'.registry.configs.'reg.test'.auth]\n    username = 'u'\n",
    );
    let out = Node::new(&v3).with_hosts_dir(&["install"]);
    assert_ok(&out);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("io.containerd.cri.v1.images\".registry.configs"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_version_1_config_is_refused_with_exit_2_naming_the_file() {
    assert_refused(
        "[plugins.cri]\n  sandbox_image = \"registry.k8s.io/pause:3.2\"\n",
        &["version 1"],
    );
}

#[test]
fn a_config_path_list_becomes_one_directory_with_a_note() {
    let a = "/var/lib/certs-a";
    let b = "/var/lib/certs-b";
    let node = Node::new(&replace_once(
        &v3(),
        "      config_path = ''\n",
        &format!("      config_path = '{a}:{b}'\n"),
    ));
    let hosts = node.hosts_dir();
    let out = node.with_hosts_dir(&["install"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("was \"/var/lib/certs-a:/var/lib/certs-b\""),
        "{}",
        stdout(&out)
    );
    let config = node.read("containerd/config.toml");
    assert!(config.contains(&format!("      config_path = '{}'\n", hosts.display())));

    // Without --hosts-dir, the first listed directory is kept.
    let first = node.path("first");
    let list = Node::new(&replace_once(
        &v3(),
        "      config_path = ''\n",
        &format!("      config_path = '{}:{b}'\n", first.display()),
    ));
    let out = list.credgate(&["install"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("reads only one"), "{}", stdout(&out));
    let config = list.read("containerd/config.toml");
    assert!(config.contains(&format!("      config_path = '{}'\n", first.display())));
    assert!(first.join("_default/hosts.toml").is_file());
}

#[test]
fn a_single_directory_already_named_is_used_and_said() {
    let node = Node::new("version = 2\n");
    let elsewhere = node.path("elsewhere");
    write(
        &node.containerd_config(),
        &format!(
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
             config_path = \"{}\" # ours\n",
            elsewhere.display()
        ),
        0o644,
    );
    let before = std::fs::read(node.containerd_config()).unwrap();
    let out = node.credgate(&["install"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("already names it"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read(node.containerd_config()).unwrap(), before);
    assert_eq!(node.read("elsewhere/_default/hosts.toml"), OURS);
    assert!(stdout(&out).contains("no containerd restart needed"));
}

#[test]
fn a_malformed_config_is_exit_2_with_file_line_column_and_nothing_written() {
    let node = Node::new("version = 2\n\n[plugins\n  x = 1\n");
    let before = node.tree();
    let out = node.with_hosts_dir(&["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    let at = format!("{}:3:", node.containerd_config().display());
    assert!(err.contains(&at), "{err}");
    assert_eq!(node.tree(), before);
}

#[test]
fn a_missing_secret_is_generated_and_outlives_uninstall() {
    let node = Node::new(&v3());
    std::fs::remove_file(node.path("credgate/mirror-secret")).unwrap();
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install", "--dry-run"]));
    assert_eq!(node.tree(), before);
    assert_ok(&node.with_hosts_dir(&["install"]));
    let secret = node.read("credgate/mirror-secret");
    let hosts = node.read("containerd/certs.d/_default/hosts.toml");
    assert!(
        hosts.contains(&format!("[\"{}\"]", secret.trim_end())),
        "{hosts}"
    );
    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.read("credgate/mirror-secret"), secret);
}

#[test]
fn a_malformed_registry_hosts_toml_is_exit_2_naming_it_and_nothing_written() {
    let node = node_with_docker_io(&v3());
    let ghcr = node.hosts_dir().join("ghcr.io");
    std::fs::create_dir(&ghcr).unwrap();
    write(
        &ghcr.join("hosts.toml"),
        "server = \"https://ghcr.io\"\n[host.\n",
        0o644,
    );
    let before = node.tree();
    let out = node.with_hosts_dir(&["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let at = format!("{}:2:", ghcr.join("hosts.toml").display());
    assert!(stderr(&out).contains(&at), "{}", stderr(&out));
    assert_eq!(node.tree(), before);
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn uid_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().uid()
}

/// The user install runs as, who must own every file that carries the secret.
fn our_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Every hosts.toml install wrote the secret into is 0600 and ours.
#[track_caller]
fn assert_secret_holders_private(files: &[PathBuf]) {
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains(SECRET), "{} lacks the secret", file.display());
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
        assert_eq!(uid_of(file), our_uid(), "{}", file.display());
    }
}

#[test]
fn attack_a_local_user_reads_the_secret_from_a_merged_hosts_toml_that_was_0644() {
    let node = node_with_docker_io(&v3());
    let hosts = node.hosts_dir();
    // The operator's own _default (0644) and a group-readable ghcr.io (0640).
    std::fs::create_dir(hosts.join("_default")).unwrap();
    let default = "[host.\"https://mirror.office.test\"]\n  capabilities = [\"pull\"]\n";
    write(&hosts.join("_default/hosts.toml"), default, 0o644);
    std::fs::create_dir(hosts.join("ghcr.io")).unwrap();
    let ghcr = "server = \"https://ghcr.io\"\n";
    write(&hosts.join("ghcr.io/hosts.toml"), ghcr, 0o640);
    let before = node.tree();

    assert_ok(&node.with_hosts_dir(&["install"]));
    let files = ["_default", "docker.io", "ghcr.io"].map(|d| hosts.join(d).join("hosts.toml"));
    assert_secret_holders_private(&files);
    // The backups hold no secret and keep the originals' bytes and modes.
    for (dir, text, mode) in [
        ("_default", default, 0o644),
        ("docker.io", DOCKER_IO_HOSTS, 0o644),
        ("ghcr.io", ghcr, 0o640),
    ] {
        let backup = hosts.join(dir).join("hosts.toml.credgate-backup");
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), text);
        assert_eq!(mode_of(&backup), mode, "{}", backup.display());
    }
    let installed = node.tree();
    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);

    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before, "byte- and mode-identical round trip");
}

#[test]
fn attack_a_hosts_toml_loosened_after_install_is_tightened_again_and_the_dry_run_says_so() {
    let node = node_with_docker_io(&v2());
    let hosts = node.hosts_dir();
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install"]));
    let installed = node.tree();
    // Loosened by hand (or by an earlier credgate that kept the operator's mode).
    let docker_io = hosts.join("docker.io/hosts.toml");
    let default = hosts.join("_default/hosts.toml");
    std::fs::set_permissions(&docker_io, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o666)).unwrap();

    let loosened = node.tree();
    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_ok(&out);
    assert_eq!(node.tree(), loosened);
    for line in [
        format!(
            "mode of {}: 0644 -> 0600 (it carries the endpoint's secret)",
            docker_io.display()
        ),
        format!(
            "mode of {}: 0666 -> 0600 (it carries the endpoint's secret)",
            default.display()
        ),
    ] {
        assert!(
            stdout(&out).lines().any(|l| l == line),
            "{line:?} missing: {}",
            stdout(&out)
        );
    }
    assert!(!stdout(&out).contains("already installed"));

    assert_ok(&node.with_hosts_dir(&["install"]));
    assert_eq!(node.tree(), installed, "only the modes changed back");
    // The file install created got no backup: it has no original, only credgate's secret.
    assert!(!hosts.join("_default/hosts.toml.credgate-backup").exists());
    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);

    let out = node.credgate(&["uninstall", "--dry-run"]);
    let line = format!("mode of {}: 0600 -> 0644", docker_io.display());
    assert!(stdout(&out).lines().any(|l| l == line), "{}", stdout(&out));
    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before);
}

#[test]
fn attack_a_hosts_toml_owned_by_another_user_keeps_the_secret_readable_to_them() {
    require_root();
    let node = node_with_docker_io(&v3());
    let docker_io = node.hosts_dir().join("docker.io/hosts.toml");
    std::os::unix::fs::chown(&docker_io, Some(4242), Some(4343)).unwrap();
    std::fs::set_permissions(&docker_io, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = node.tree();

    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    let line = format!(
        "owner of {}: uid 4242 -> uid 0 (it carries the endpoint's secret)",
        docker_io.display()
    );
    assert!(stdout(&out).lines().any(|l| l == line), "{}", stdout(&out));
    assert_ok(&node.with_hosts_dir(&["install"]));
    assert_secret_holders_private(std::slice::from_ref(&docker_io));

    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before);
    let meta = std::fs::metadata(&docker_io).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (4242, 4343),
        "the owner is given back"
    );
}

#[test]
fn attack_an_operators_hand_written_credgate_host_leaks_through_its_backup() {
    // The README's snippet, copied by hand into a world-readable file before install.
    let node = Node::new(&v3());
    let docker_io = node.hosts_dir().join("docker.io");
    std::fs::create_dir_all(&docker_io).unwrap();
    let by_hand = format!("server = \"https://registry-1.docker.io\"\n\n{OURS}");
    write(&docker_io.join("hosts.toml"), &by_hand, 0o644);
    let before = node.tree();

    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    assert!(!stdout(&out).contains(SECRET), "{}", stdout(&out));
    assert_ok(&node.with_hosts_dir(&["install"]));
    assert_secret_holders_private(&[docker_io.join("hosts.toml")]);
    let backup = docker_io.join("hosts.toml.credgate-backup");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), by_hand);
    assert_eq!(mode_of(&backup), 0o600, "the backup carries the secret too");

    // Uninstall gives back exactly what was there, mode included.
    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before);
}

/// An old secret in the shapes containerd accepts: inline table, lower-case name, string.
const STALE: &str = "stale-secret-R4t7";

#[test]
fn attack_the_secret_is_read_off_a_terminal_or_ci_log_of_install_or_uninstall() {
    let node = node_with_docker_io(&v2());
    let hosts = node.hosts_dir();
    write(
        &hosts.join("docker.io/hosts.toml"),
        &format!(
            "{DOCKER_IO_HOSTS}\n[host.\"http://old:5008\"]\n  header = {{ x-credgate-secret = \"{STALE}\" }}\n"
        ),
        0o644,
    );
    std::fs::create_dir(hosts.join("ghcr.io")).unwrap();
    write(
        &hosts.join("ghcr.io/hosts.toml"),
        &format!("server = \"https://ghcr.io\"\n[header]\n  X-Credgate-Secret = [\"{STALE}\"]\n"),
        0o600,
    );
    let secret_file = node.path("credgate/mirror-secret");
    let ours = format!(
        "    X-Credgate-Secret = [\"<redacted: contents of {}>\"]",
        secret_file.display()
    );
    let assert_no_secret = |what: &str, out: &Output| {
        for stream in [stdout(out), stderr(out)] {
            for secret in [SECRET, STALE] {
                assert!(
                    !stream.contains(secret),
                    "{what} printed {secret}:\n{stream}"
                );
            }
        }
    };

    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_ok(&out);
    assert_no_secret("install --dry-run", &out);
    let diff = stdout(&out);
    // The header lines are still there: set (ours), and the stale one that goes.
    assert!(diff.lines().any(|l| l == format!("+{ours}")), "{diff}");
    assert!(
        diff.lines()
            .any(|l| l == "-  header = { x-credgate-secret = \"<redacted: value 1>\" }"),
        "{diff}"
    );
    assert!(
        diff.lines().any(|l| l == " [header]")
            && diff
                .lines()
                .any(|l| l == "   X-Credgate-Secret = [\"<redacted: value 1>\"]"),
        "{diff}"
    );

    for (what, args) in [
        ("install", &["install"][..]),
        ("install again", &["install"][..]),
        ("uninstall --dry-run", &["uninstall", "--dry-run"][..]),
    ] {
        let out = node.with_hosts_dir(args);
        assert_ok(&out);
        assert_no_secret(what, &out);
        if what == "uninstall --dry-run" {
            let undone = stdout(&out);
            assert!(
                undone
                    .lines()
                    .any(|l| l.starts_with("-    X-Credgate-Secret = [\"<redacted")),
                "{undone}"
            );
        }
    }
    let out = node.with_hosts_dir(&["uninstall"]);
    assert_ok(&out);
    assert_no_secret("uninstall", &out);

    // A dry run whose secret file does not exist yet shows the header, not a made-up value.
    std::fs::remove_file(&secret_file).unwrap();
    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_ok(&out);
    assert!(
        stdout(&out).lines().any(|l| l == format!("+{ours}")),
        "{}",
        stdout(&out)
    );

    // And a hosts.toml that is not TOML fails without quoting the secret on its bad line.
    write(&secret_file, &format!("{SECRET}\n"), 0o600);
    write(
        &hosts.join("ghcr.io/hosts.toml"),
        &format!("[header]\n  X-Credgate-Secret = [\"{SECRET}\", \"{STALE}\"\n"),
        0o600,
    );
    let out = node.with_hosts_dir(&["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_no_secret("a failed install", &out);
}

/// The local user who owns a registry directory (install supports non-root owners).
const DIR_OWNER: u32 = 1000;
/// A root-only file elsewhere on the node, as `/etc/shadow` would be; valid TOML, so that
/// install would get as far as showing it.
const VICTIM: &str = "server = \"https://victim.test\"\n# victim-only-root-may-read-this\n";
const VICTIM_MARK: &str = "victim-only-root-may-read-this";

/// A node whose docker.io directory and hosts.toml belong to [`DIR_OWNER`], and a root-owned
/// 0600 victim file.
fn node_with_a_users_registry_dir() -> (Node, PathBuf) {
    require_root();
    let node = node_with_docker_io(&v3());
    let docker_io = node.hosts_dir().join("docker.io");
    for path in [&docker_io, &docker_io.join("hosts.toml")] {
        std::os::unix::fs::chown(path, Some(DIR_OWNER), Some(DIR_OWNER)).unwrap();
    }
    let victim = node.path("victim");
    write(&victim, VICTIM, 0o600);
    (node, victim)
}

/// The victim is still root's, 0600, unchanged, and nothing printed shows it.
#[track_caller]
fn assert_victim_untouched(victim: &Path, outputs: &[&Output]) {
    let meta = std::fs::metadata(victim).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the victim's owner");
    assert_eq!(meta.mode() & 0o7777, 0o600, "the victim's mode");
    assert_eq!(std::fs::read_to_string(victim).unwrap(), VICTIM);
    for out in outputs {
        for stream in [stdout(out), stderr(out)] {
            assert!(
                !stream.contains(VICTIM_MARK),
                "the victim was shown:\n{stream}"
            );
        }
    }
}

#[track_caller]
fn assert_refused_naming(out: &Output, path: &Path) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert!(
        stderr(out).contains(&path.display().to_string()),
        "{}",
        stderr(out)
    );
}

#[test]
fn attack_uninstall_gives_a_root_file_to_the_user_who_swapped_the_backup() {
    // The backup replaced by a symlink to the victim, by a hard link of it, or by the
    // installed hosts.toml itself (root's, 0600, with the endpoint's secret).
    for swap in ["symlink", "hard link", "installed hosts.toml"] {
        let (node, victim) = node_with_a_users_registry_dir();
        let docker_io = node.hosts_dir().join("docker.io/hosts.toml");
        let backup = node
            .hosts_dir()
            .join("docker.io/hosts.toml.credgate-backup");
        assert_ok(&node.with_hosts_dir(&["install"]));
        std::fs::remove_file(&backup).unwrap();
        match swap {
            "symlink" => std::os::unix::fs::symlink(&victim, &backup).unwrap(),
            "hard link" => std::fs::hard_link(&victim, &backup).unwrap(),
            _ => std::fs::rename(&docker_io, &backup).unwrap(),
        }

        let dry_run = node.credgate(&["uninstall", "--dry-run"]);
        assert_refused_naming(&dry_run, &backup);
        let out = node.credgate(&["uninstall"]);
        assert_refused_naming(&out, &backup);
        assert_victim_untouched(&victim, &[&dry_run, &out]);
        // Followed: for the symlink, the victim's mode and owner.
        let meta = std::fs::metadata(&backup).unwrap();
        assert_eq!(
            meta.uid(),
            0,
            "{swap}: the backup's name leads to root's file"
        );
        assert_eq!(meta.mode() & 0o077, 0, "{swap}: {:o}", meta.mode());
        for out in [&dry_run, &out] {
            assert!(!stdout(out).contains(SECRET) && !stderr(out).contains(SECRET));
        }
    }
}

#[test]
fn attack_uninstall_dry_run_prints_the_file_a_symlinked_hosts_toml_points_at() {
    let (node, victim) = node_with_a_users_registry_dir();
    let docker_io = node.hosts_dir().join("docker.io/hosts.toml");
    assert_ok(&node.with_hosts_dir(&["install"]));
    std::fs::remove_file(&docker_io).unwrap();
    std::os::unix::fs::symlink(&victim, &docker_io).unwrap();

    let dry_run = node.credgate(&["uninstall", "--dry-run"]);
    assert_ok(&dry_run);
    let line = format!(
        "{} is a symlink: not read, uninstall replaces it",
        docker_io.display()
    );
    assert!(
        stdout(&dry_run).lines().any(|l| l == line),
        "{}",
        stdout(&dry_run)
    );
    let out = node.credgate(&["uninstall"]);
    assert_ok(&out);
    assert_victim_untouched(&victim, &[&dry_run, &out]);
    // The link is replaced by the original, given back to its owner.
    assert_eq!(
        std::fs::read_to_string(&docker_io).unwrap(),
        DOCKER_IO_HOSTS
    );
    let meta = std::fs::symlink_metadata(&docker_io).unwrap();
    assert!(meta.is_file());
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (DIR_OWNER, 0o644));
}

#[test]
fn attack_install_reads_and_copies_the_file_a_symlinked_hosts_toml_points_at() {
    let (node, victim) = node_with_a_users_registry_dir();
    let docker_io = node.hosts_dir().join("docker.io/hosts.toml");
    std::fs::remove_file(&docker_io).unwrap();
    std::os::unix::fs::symlink(&victim, &docker_io).unwrap();
    let before = node.tree();

    let dry_run = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_refused_naming(&dry_run, &docker_io);
    assert!(
        stderr(&dry_run).contains("is a symlink"),
        "{}",
        stderr(&dry_run)
    );
    let out = node.with_hosts_dir(&["install"]);
    assert_refused_naming(&out, &docker_io);
    assert_victim_untouched(&victim, &[&dry_run, &out]);
    assert_eq!(node.tree(), before, "nothing written");
    assert!(std::fs::symlink_metadata(&docker_io).unwrap().is_symlink());
}

#[test]
fn attack_install_keeps_a_backup_planted_before_it_ran() {
    let (node, victim) = node_with_a_users_registry_dir();
    let backup = node
        .hosts_dir()
        .join("docker.io/hosts.toml.credgate-backup");
    std::os::unix::fs::symlink(&victim, &backup).unwrap();
    let before = node.tree();

    let out = node.with_hosts_dir(&["install"]);
    assert_refused_naming(&out, &backup);
    assert!(
        stderr(&out).contains("is not the backup install made"),
        "{}",
        stderr(&out)
    );
    assert_eq!(node.tree(), before, "nothing written");
    let uninstall = node.credgate(&["uninstall"]);
    assert_victim_untouched(&victim, &[&out, &uninstall]);
}

/// Attacks by another file owner need root to set that owner up; such a test fails (never
/// skips) without it. `bash integration/test-all.sh` runs every test as root.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test changes a file's owner and needs root: run it as root (bash integration/test-all.sh)"
    );
}

// Mirrors through the gate (docs/design.md section 5): every host that pulls or resolves is
// fronted, in order, before credgate's upstream host and the operator's own hosts.

/// The `n`th fronted host for `mirror` with `caps`, exactly as install writes it.
fn fronted(n: usize, mirror: &str, caps: &str) -> String {
    format!(
        "[host.\"http://127.0.0.1:5008/mirror/{n}\"]\n  capabilities = [{caps}]\n  \
         [host.\"http://127.0.0.1:5008/mirror/{n}\".header]\n    \
         X-Credgate-Secret = [\"{SECRET}\"]\n    X-Credgate-Mirror = [\"{mirror}\"]\n"
    )
}

const PULL_RESOLVE: &str = "\"pull\", \"resolve\"";

/// The operator's hosts of [`REGISTRY_MIRRORS`], as written: a pull-through cache with its own
/// CA and client certificate, a Harbor proxy project (`override_path`) with a CA list and a
/// client pair, a push-only host, a plain-http mirror and a resolve-only P2P mirror that skips
/// verification.
const REGISTRY_MIRROR_HOSTS: &str = "# the pull-through cache, with its own CA and client cert\n\
[host.\"https://mirror.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"mirror-ca.pem\"\n  \
client = \"/etc/containerd/certs.d/registry.test/client.pem\"\n\n\
[host.\"https://harbor.test/v2/hub-proxy\"]\n  capabilities = [\"resolve\", \"pull\"]\n  override_path = true\n  \
ca = [\"/etc/ssl/harbor-root.pem\", \"harbor-intermediate.pem\"]\n  client = [[\"h.crt\", \"h.key\"]]\n\n\
[host.\"https://push.test\"]\n  capabilities = [\"push\"]\n\n\
[host.\"http://plain.test:5000\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n\n\
[host.\"spegel.test:30020\"]\n  capabilities = [\"resolve\"]\n  skip_verify = true\n  \
[host.\"spegel.test:30020\".header]\n    X-Spegel = [\"1\"]\n";

/// registry.test/hosts.toml as an operator writes it: the upstream with its CA and a header,
/// then the mirrors.
fn registry_mirrors() -> String {
    format!(
        "# registry.test through its mirrors\nserver = \"https://registry.test\"\n\
         ca = \"/etc/containerd/certs.d/registry.test/upstream.pem\"\n\n\
         [header]\n  X-Team = \"kept\"\n\n{REGISTRY_MIRROR_HOSTS}"
    )
}

/// [`registry_mirrors`] after install.
fn registry_mirrors_installed() -> String {
    format!(
        "# registry.test through its mirrors\nserver = \"https://registry.test\"\n\
         ca = \"/etc/containerd/certs.d/registry.test/upstream.pem\"\n\n\
         [header]\n  X-Team = \"kept\"\n\n{}\n{}\n{}\n{}\n{OURS}\n{REGISTRY_MIRROR_HOSTS}",
        fronted(1, "https://mirror.test", PULL_RESOLVE),
        fronted(2, "https://harbor.test/v2/hub-proxy", PULL_RESOLVE),
        fronted(3, "http://plain.test:5000", PULL_RESOLVE),
        fronted(4, "spegel.test:30020", "\"resolve\""),
    )
}

fn node_with_registry_mirrors() -> Node {
    let node = Node::new(&v3());
    let dir = node.hosts_dir().join("registry.test");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir.join("hosts.toml"), &registry_mirrors(), 0o644);
    node
}

#[test]
fn mirrors_are_fronted_in_order_with_their_settings_kept_and_uninstall_restores_every_byte() {
    let node = node_with_registry_mirrors();
    let before = node.tree();
    let out = node.with_hosts_dir(&["install"]);
    assert_ok(&out);
    assert_eq!(stderr(&out), "", "nothing to warn about");
    let file = node.hosts_dir().join("registry.test/hosts.toml");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        registry_mirrors_installed()
    );
    assert_secret_holders_private(std::slice::from_ref(&file));
    let installed = node.tree();
    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);

    let out = node.credgate(&["uninstall"]);
    assert_ok(&out);
    assert_eq!(node.tree(), before, "{}", stdout(&out));
}

#[test]
fn default_hosts_toml_with_mirrors_is_fronted_and_restored() {
    let node = Node::new(&v2());
    let default = node.hosts_dir().join("_default");
    std::fs::create_dir_all(&default).unwrap();
    let mirrors =
        "[host.\"https://hub-mirror.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n\
                   [host.\"https://second.test\"]\n  capabilities = [\"pull\"]\n";
    write(&default.join("hosts.toml"), mirrors, 0o644);
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install"]));
    assert_eq!(
        node.read("containerd/certs.d/_default/hosts.toml"),
        format!(
            "{}\n{}\n{OURS}\n{mirrors}",
            fronted(1, "https://hub-mirror.test", PULL_RESOLVE),
            fronted(2, "https://second.test", "\"pull\"")
        )
    );
    let installed = node.tree();
    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);
    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before);
}

#[test]
fn a_file_with_only_server_gets_credgates_upstream_host_alone_as_before() {
    let node = Node::new(&v3());
    let quay = node.hosts_dir().join("quay.io");
    std::fs::create_dir_all(&quay).unwrap();
    let server = "server = \"https://quay.io\"\n";
    write(&quay.join("hosts.toml"), server, 0o644);
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install"]));
    assert_eq!(
        node.read("containerd/certs.d/quay.io/hosts.toml"),
        format!("{server}\n{OURS}")
    );
    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(node.tree(), before);
}

#[test]
fn a_push_only_host_is_not_fronted() {
    let node = Node::new(&v3());
    let dir = node.hosts_dir().join("registry.test");
    std::fs::create_dir_all(&dir).unwrap();
    let push = "[host.\"https://push.test\"]\n  capabilities = [\"push\"]\n";
    write(&dir.join("hosts.toml"), push, 0o600);
    assert_ok(&node.with_hosts_dir(&["install"]));
    assert_eq!(
        node.read("containerd/certs.d/registry.test/hosts.toml"),
        format!("{OURS}\n{push}")
    );
}

#[test]
fn a_host_containerd_2_would_not_read_as_a_host_is_refused_with_exit_2_and_nothing_written() {
    let node = Node::new(&v3());
    let dir = node.hosts_dir().join("registry.test");
    std::fs::create_dir_all(&dir).unwrap();
    write(
        &dir.join("hosts.toml"),
        "server = \"https://registry.test\"\nhost.\"https://mirror.test\".capabilities = [\"pull\"]\n",
        0o644,
    );
    let before = node.tree();
    let out = node.with_hosts_dir(&["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: host \"https://mirror.test\" is written as dotted keys or an inline table",
            dir.join("hosts.toml").display()
        )),
        "{err}"
    );
    assert_eq!(node.tree(), before);
}

#[test]
fn a_mirror_added_to_an_installed_file_is_fronted_by_the_next_install_with_a_warning() {
    let node = node_with_registry_mirrors();
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install"]));
    let file = node.hosts_dir().join("registry.test/hosts.toml");
    // The operator appends a mirror to the installed file.
    let added = "\n[host.\"https://added.test\"]\n";
    let edited = format!("{}{added}", registry_mirrors_installed());
    write(&file, &edited, 0o600);

    let out = node.with_hosts_dir(&["install"]);
    assert_ok(&out);
    let refronted = std::fs::read_to_string(&file).unwrap();
    let original_plus = format!("{}{added}", registry_mirrors());
    let node2 = Node::new(&v3());
    let dir2 = node2.hosts_dir().join("registry.test");
    std::fs::create_dir_all(&dir2).unwrap();
    write(&dir2.join("hosts.toml"), &original_plus, 0o600);
    assert_ok(&node2.with_hosts_dir(&["install"]));
    assert_eq!(
        refronted,
        node2.read("containerd/certs.d/registry.test/hosts.toml"),
        "the edit is fronted as if it had been made before install"
    );
    assert!(refronted.contains(&fronted(5, "https://added.test", PULL_RESOLVE)));
    let warning = stderr(&out);
    assert!(
        warning.contains(&format!(
            "warning: {} was edited since install; install fronts it as it is now, but uninstall \
             gives back the file as it was before install ({}.credgate-backup), without those edits",
            file.display(),
            file.display()
        )),
        "{warning}"
    );
    let installed = node.tree();
    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);

    assert_ok(&node.credgate(&["uninstall"]));
    assert_eq!(
        node.tree(),
        before,
        "the original from before install, byte for byte"
    );
}

#[test]
fn a_file_rewritten_without_credgates_hosts_is_refronted_and_uninstall_gives_back_the_rewrite() {
    let node = node_with_registry_mirrors();
    let before = node.tree();
    assert_ok(&node.with_hosts_dir(&["install"]));
    let hosts = node.hosts_dir();
    // Config management (or Spegel) writes its own version, dropping credgate's hosts;
    // Spegel also writes _default/hosts.toml, which install had created.
    let file = hosts.join("registry.test/hosts.toml");
    let rewrite = "server = \"https://registry.test\"\n\n[host.\"https://new-mirror.test\"]\n";
    write(&file, rewrite, 0o640);
    let spegel = "[host.\"http://127.0.0.1:30020\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
    write(&hosts.join("_default/hosts.toml"), spegel, 0o644);
    let rewritten = node.tree();

    let dry_run = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_ok(&dry_run);
    assert_eq!(node.tree(), rewritten);
    let line = format!(
        "{} was rewritten since install without credgate's hosts: install keeps this version as \
         {}.credgate-backup, and uninstall gives it back",
        file.display(),
        file.display()
    );
    assert!(
        stdout(&dry_run).lines().any(|l| l == line),
        "{}",
        stdout(&dry_run)
    );

    let out = node.with_hosts_dir(&["install"]);
    assert_ok(&out);
    assert_eq!(stderr(&out), "");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!(
            "server = \"https://registry.test\"\n\n{}\n{OURS}\n[host.\"https://new-mirror.test\"]\n",
            fronted(1, "https://new-mirror.test", PULL_RESOLVE)
        )
    );
    assert_eq!(
        node.read("containerd/certs.d/_default/hosts.toml"),
        format!(
            "{}\n{OURS}\n{spegel}",
            fronted(1, "http://127.0.0.1:30020", PULL_RESOLVE)
        )
    );
    assert_secret_holders_private(&[file.clone(), hosts.join("_default/hosts.toml")]);
    let installed = node.tree();
    assert_changes_nothing(&node.with_hosts_dir(&["install"]), &node, &installed);

    let out = node.credgate(&["uninstall"]);
    assert_ok(&out);
    // Every hosts.toml as the rewrite left it, byte and mode, config.toml as before install,
    // and no trace of install.
    let mut expected = rewritten.clone();
    expected.retain(|path, _| {
        let name = path.to_string_lossy();
        !name.ends_with(".credgate-backup") && !name.ends_with(".credgate-install.json")
    });
    let config = PathBuf::from("containerd/config.toml");
    expected.insert(config.clone(), before[&config].clone());
    assert_eq!(node.tree(), expected, "{}", stdout(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), rewrite);
    assert_eq!(mode_of(&file), 0o640);
    assert_eq!(node.read("containerd/certs.d/_default/hosts.toml"), spegel);
    assert_eq!(mode_of(&hosts.join("_default/hosts.toml")), 0o644);
    // The directory install created stays: it holds Spegel's file now.
    let left = format!(
        "credgate: warning: left {}: ",
        hosts.join("_default").display()
    );
    assert!(stderr(&out).starts_with(&left), "{}", stderr(&out));
}

#[test]
fn attack_the_secret_is_read_off_the_diff_of_a_file_with_fronted_mirrors() {
    let node = node_with_registry_mirrors();
    let file = node.hosts_dir().join("registry.test/hosts.toml");
    // A stale install's fronted host with an old secret, in the operator's file.
    let stale = format!(
        "{}\n{}",
        registry_mirrors(),
        fronted(1, "https://mirror.test", PULL_RESOLVE).replace(SECRET, STALE)
    );
    write(&file, &stale, 0o600);
    let out = node.with_hosts_dir(&["install", "--dry-run"]);
    assert_ok(&out);
    let diff = stdout(&out);
    for stream in [stdout(&out), stderr(&out)] {
        assert!(
            !stream.contains(SECRET) && !stream.contains(STALE),
            "{stream}"
        );
    }
    let ours = format!(
        "+    X-Credgate-Secret = [\"<redacted: contents of {}>\"]",
        node.path("credgate/mirror-secret").display()
    );
    // Four fronted hosts and the upstream host each set the header, and _default's upstream
    // host; the stale one goes.
    let set = diff.lines().filter(|l| *l == ours).count();
    assert_eq!(set, 6, "{diff}");
    assert!(
        diff.lines()
            .any(|l| l == "-    X-Credgate-Secret = [\"<redacted: value 1>\"]"),
        "{diff}"
    );
    for mirror in [
        "https://mirror.test",
        "https://harbor.test/v2/hub-proxy",
        "http://plain.test:5000",
        "spegel.test:30020",
    ] {
        let line = format!("+    X-Credgate-Mirror = [\"{mirror}\"]");
        assert!(diff.lines().any(|l| l == line), "{line:?} in:\n{diff}");
    }
    for args in [
        &["install"][..],
        &["uninstall", "--dry-run"][..],
        &["uninstall"][..],
    ] {
        let out = node.with_hosts_dir(args);
        assert_ok(&out);
        for stream in [stdout(&out), stderr(&out)] {
            assert!(
                !stream.contains(SECRET) && !stream.contains(STALE),
                "{args:?}: {stream}"
            );
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stale);
}
