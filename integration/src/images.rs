//! Small real images, pushed with crane using direct credentials (never credgate).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::clients::{Client, ClientEnv, DockerConfig};

/// An image in a registry.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `host/repository:tag`.
    pub reference: String,
    /// `sha256:…` of the manifest.
    pub digest: String,
}

impl PushedImage {
    /// `host/repository@sha256:…`.
    pub fn by_digest(&self) -> String {
        let name = self
            .reference
            .rsplit_once(':')
            .map_or(self.reference.as_str(), |(n, _)| n);
        format!("{name}@{}", self.digest)
    }
}

/// The OCI digest of `content`, `sha256:<lower-case hex>`, as registries name blobs and
/// manifests.
pub fn sha256(content: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, content);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Builds a one-layer image (one small file, unique per call) and pushes it as
/// `<host>/<repository>:<tag>` with `crane append` from scratch, logged in as
/// `username`/`password` under the config key `host`.
pub fn push_image(
    host: &str,
    repository: &str,
    tag: &str,
    username: &str,
    password: &str,
) -> PushedImage {
    push_layers(host, repository, tag, (username, password), |env| {
        let layer = env.scratch().join("layer.tar");
        write_layer(&layer, repository);
        vec![layer]
    })
}

/// Like [`push_image`] with `layers` layers of `layer_size` random (incompressible) bytes
/// each: an image whose pull takes a while.
pub fn push_large_image(
    host: &str,
    repository: &str,
    tag: &str,
    credential: (&str, &str),
    layers: usize,
    layer_size: usize,
) -> PushedImage {
    push_layers(host, repository, tag, credential, |env| {
        (0..layers)
            .map(|i| {
                let layer = env.scratch().join(format!("layer-{i}.tar"));
                write_random_layer(&layer, layer_size);
                layer
            })
            .collect()
    })
}

/// Pushes the layers `make_layers` writes (into the pushing env's scratch dir) with
/// `crane append`, then reads the manifest digest back.
fn push_layers(
    host: &str,
    repository: &str,
    tag: &str,
    (username, password): (&str, &str),
    make_layers: impl FnOnce(&ClientEnv) -> Vec<std::path::PathBuf>,
) -> PushedImage {
    let env = ClientEnv::new(&DockerConfig::new().auth(host, username, password));
    let reference = format!("{host}/{repository}:{tag}");
    let mut args = vec!["append".to_string()];
    for layer in make_layers(&env) {
        args.extend(["-f".to_string(), layer.to_string_lossy().into_owned()]);
    }
    args.extend(["-t".to_string(), reference.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(Client::Crane, &args).assert_success();
    let output = env.run(Client::Crane, &["digest", &reference]);
    output.assert_success();
    let digest = output.stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:"),
        "crane digest printed {digest:?}"
    );
    PushedImage { reference, digest }
}

/// A one-file layer of `size` random bytes.
fn write_random_layer(path: &std::path::Path, size: usize) {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut content = vec![0u8; size];
    SystemRandom::new().fill(&mut content).expect("random");
    write_layer_bytes(path, &content);
}

fn write_layer(path: &std::path::Path, repository: &str) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    write_layer_with(path, &format!("credgate test image {repository} {nanos}\n"));
}

/// A one-file layer tarball holding `content`.
pub fn write_layer_with(path: &std::path::Path, content: &str) {
    write_layer_bytes(path, content.as_bytes());
}

fn write_layer_bytes(path: &std::path::Path, content: &[u8]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).expect("create layer.tar"));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, "credgate-test.txt", content)
        .expect("append to layer");
    builder.finish().expect("finish layer.tar");
}
