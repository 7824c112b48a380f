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
    let env = ClientEnv::new(&DockerConfig::new().auth(host, username, password));
    let layer = env.scratch().join("layer.tar");
    write_layer(&layer, repository);
    let reference = format!("{host}/{repository}:{tag}");
    let layer_arg = layer.to_string_lossy().into_owned();
    env.run(
        Client::Crane,
        &["append", "-f", &layer_arg, "-t", &reference],
    )
    .assert_success();
    let output = env.run(Client::Crane, &["digest", &reference]);
    output.assert_success();
    let digest = output.stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:"),
        "crane digest printed {digest:?}"
    );
    PushedImage { reference, digest }
}

fn write_layer(path: &std::path::Path, repository: &str) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    write_layer_with(path, &format!("credgate test image {repository} {nanos}\n"));
}

/// A one-file layer tarball holding `content`.
pub fn write_layer_with(path: &std::path::Path, content: &str) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).expect("create layer.tar"));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, "credgate-test.txt", content.as_bytes())
        .expect("append to layer");
    builder.finish().expect("finish layer.tar");
}
