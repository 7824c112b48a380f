//! What the benchmarks share: a token-auth registry in the node with images pushed straight
//! to it (blob uploads with curl, never through credgate), run statistics, and a process's
//! CPU time from `/proc/<pid>/stat`.

#![allow(dead_code)] // each bench uses its own part of this

pub mod floor;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use credgate_integration::registry::Registry;
use credgate_integration::token_server::{TokenServer, TokenUser};

pub const PASSWORD: &str = "bench-pw";
pub const USER: &str = "bench";

/// `registry.test:443` (distribution, token auth) and its token server on `auth.test`; the
/// user `bench` may push and pull everything under `bench/`.
pub struct BenchRegistry {
    pub tokens: TokenServer,
    pub registry: Registry,
}

impl BenchRegistry {
    pub fn start() -> BenchRegistry {
        let tokens = TokenServer::builder("auth.test")
            .user(TokenUser::new(USER, PASSWORD, &["bench"]))
            .start();
        let registry = Registry::start(tokens.registry_auth(), "registry.test");
        BenchRegistry { tokens, registry }
    }

    /// A bearer token for `repository` with `actions` (`pull,push`), fetched with curl.
    pub fn token(&self, repository: &str, actions: &str) -> String {
        let url = format!(
            "{}?service={}&scope=repository:{repository}:{actions}",
            self.tokens.realm(),
            self.tokens.service()
        );
        let out = Command::new("curl")
            .args(["-sS", "-f", "-u", &format!("{USER}:{PASSWORD}"), &url])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token JSON");
        json["token"].as_str().expect("token").to_string()
    }

    /// The credgate config that gives the endpoint the bench user's password.
    pub fn credgate_sources(&self, upstream_keys: &str) -> String {
        format!(
            "[upstream]\nallow_realm_hosts = [\"auth.test\"]\n{upstream_keys}\n\n[[registry]]\nmatch = \"registry.test/bench\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
        )
    }
}

/// A blob file of `size` random bytes.
pub fn write_random_file(path: &Path, size: usize) {
    let mut file = std::fs::File::create(path).expect("blob file");
    std::io::copy(&mut Random::new(size), &mut file).expect("write blob");
}

/// An uncompressed layer tarball holding one file of `size` random bytes: what containerd
/// unpacks as fast as the disk lets it, so the pull's cost is the transfer's.
pub fn write_random_layer(path: &Path, size: usize) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).expect("layer file"));
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, "payload", Random::new(size))
        .expect("append to layer");
    builder.finish().expect("finish layer");
}

/// `size` random bytes as a reader.
struct Random {
    left: usize,
    rng: ring::rand::SystemRandom,
}

impl Random {
    fn new(size: usize) -> Random {
        Random {
            left: size,
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl Read for Random {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left).min(1 << 20);
        ring::rand::SecureRandom::fill(&self.rng, &mut buf[..n])
            .map_err(|_| std::io::Error::other("no randomness"))?;
        self.left -= n;
        Ok(n)
    }
}

/// `sha256:<hex>` of a file, read in 1 MiB pieces.
pub fn file_digest(path: &Path) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut file = std::fs::File::open(path).expect("blob file");
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).expect("read blob");
        if n == 0 {
            break;
        }
        context.update(&chunk[..n]);
    }
    format!("sha256:{}", hex(context.finish().as_ref()))
}

/// A monolithic blob upload to `repository` (POST, then PUT with the digest); the digest.
pub fn upload(token: &str, repository: &str, path: &Path) -> String {
    let digest = file_digest(path);
    let auth = format!("Authorization: Bearer {token}");
    let start = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
        ])
        .arg(&auth)
        .arg(format!(
            "https://registry.test/v2/{repository}/blobs/uploads/"
        ))
        .output()
        .expect("curl");
    assert!(
        start.status.success(),
        "upload start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    let headers = String::from_utf8_lossy(&start.stdout);
    let location = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("upload Location");
    let location = if location.starts_with('/') {
        format!("https://registry.test{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let put = Command::new("curl")
        // -T streams the file; --data-binary would read it into memory.
        .args(["-sS", "-f", "-X", "PUT", "-H"])
        .arg(&auth)
        .args(["-H", "Content-Type: application/octet-stream", "-T"])
        .arg(path)
        .arg(format!("{location}{separator}digest={digest}"))
        .output()
        .expect("curl");
    assert!(
        put.status.success(),
        "blob upload: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    digest
}

/// Puts `body` as the manifest `reference` (a tag or digest) of `repository`; its digest.
pub fn put_manifest(token: &str, repository: &str, reference: &str, body: &[u8]) -> String {
    let digest = format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref())
    );
    let reference = if reference.is_empty() {
        digest.as_str()
    } else {
        reference
    };
    let mut put = Command::new("curl")
        .args(["-sS", "-f", "-X", "PUT", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args([
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            "@-",
        ])
        .arg(format!(
            "https://registry.test/v2/{repository}/manifests/{reference}"
        ))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    put.stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("manifest body");
    assert!(
        put.wait().expect("curl").success(),
        "manifest upload failed"
    );
    digest
}

/// An image pushed to the bench registry.
pub struct BenchImage {
    /// `registry.test/<repository>:v1`.
    pub reference: String,
    pub repository: String,
    pub manifest_digest: String,
    pub layers: Vec<String>,
    /// Manifest, config and layers: what one pull moves.
    pub bytes: u64,
}

/// Pushes a runnable-by-containerd image (linux/amd64, uncompressed tar layers) to
/// `bench/<name>:v1`, its layers written by `layer_sizes` into `scratch`.
pub fn push_image(
    registry: &BenchRegistry,
    scratch: &Path,
    name: &str,
    layer_sizes: &[usize],
) -> BenchImage {
    let repository = format!("bench/{name}");
    let token = registry.token(&repository, "pull,push");
    let mut layers = Vec::new();
    let mut bytes = 0u64;
    for (i, size) in layer_sizes.iter().enumerate() {
        let path = scratch.join(format!("{name}-layer{i}.tar"));
        write_random_layer(&path, *size);
        bytes += std::fs::metadata(&path).expect("layer size").len();
        layers.push((upload(&token, &repository, &path), path));
    }
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config JSON");
    let config_path = scratch.join(format!("{name}-config.json"));
    std::fs::write(&config_path, &config).expect("config blob");
    let config_digest = upload(&token, &repository, &config_path);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|(digest, path)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": std::fs::metadata(path).expect("layer size").len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest JSON");
    let manifest_digest = put_manifest(&token, &repository, "v1", &manifest);
    for (_, path) in &layers {
        let _ = std::fs::remove_file(path);
    }
    BenchImage {
        reference: format!("registry.test/{repository}:v1"),
        repository,
        manifest_digest,
        layers: layers.into_iter().map(|(d, _)| d).collect(),
        bytes: bytes + config.len() as u64 + manifest.len() as u64,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The median of `runs` (sorted in place).
pub fn median<T: PartialOrd + Copy>(runs: &mut [T]) -> T {
    runs.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    runs[runs.len() / 2]
}

/// The value at quantile `p` of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// User plus system CPU time `pid` has used, from `/proc/<pid>/stat` (clock ticks of 10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The command name may hold spaces; the fields after its closing parenthesis don't.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat fields")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("CLK_TCK")
    })
}

/// Peak resident set of `pid` (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Resident set of `pid` now (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
