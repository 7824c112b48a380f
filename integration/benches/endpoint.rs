//! `bash integration/bench-endpoint.sh` (it builds the release binaries and runs this in a
//! private mount and network namespace, the same "node" the node tests use).
//!
//! Prints, side by side from one run: the pull-through endpoint against fetching directly
//! from the registry with curl, for a 1 GiB blob and a 10-layer image; the latency the
//! endpoint adds to a manifest request with a warm token (p50, p99); and the daemon's peak
//! RSS while 64 blob streams run at once. Targets (from the issue): throughput ≥ 0.95 of
//! direct, added p50 < 0.5 ms, RSS < 64 MiB at 64 streams. Nothing is asserted.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use credgate_integration::daemon::{CredgateDaemon, MIRROR_SECRET};
use credgate_integration::mirror;
use credgate_integration::node::node;
use support::{median, peak_rss_kib, percentile, us, BenchRegistry};

const REPO: &str = "bench/big";
const BIG: usize = 1 << 30;
const STREAM_BLOB: usize = 64 << 20;
const MANIFEST_RUNS: usize = 500;

fn main() {
    node();
    let registry = BenchRegistry::start();
    let scratch = tempfile::tempdir().expect("scratch");
    let token = registry.token(REPO, "pull,push");
    let big = upload_random_blob(&token, scratch.path(), BIG, "big");
    let stream_blob = upload_random_blob(&token, scratch.path(), STREAM_BLOB, "stream");
    let layers: Vec<String> = (0..10)
        .map(|i| upload_random_blob(&token, scratch.path(), 4 << 20, &format!("layer{i}")))
        .collect();
    let manifest_digest = put_manifest(&token, scratch.path(), &layers);

    let daemon = CredgateDaemon::start_logging(&registry.credgate_sources(""), "warn");
    let direct = |path: &str| Fetch::Direct {
        url: format!("https://registry.test{path}"),
        token: token.clone(),
    };
    let proxied = |path: &str| Fetch::Proxied {
        url: format!("http://{}{path}?ns=registry.test", daemon.mirror),
    };
    let big_path = format!("/v2/{REPO}/blobs/{big}");

    // Warm the endpoint's token cache and both page caches, then alternate to share noise.
    proxied(&big_path).run();
    direct(&big_path).run();
    let (mut d_big, mut p_big, mut cpu_big) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        d_big.push(direct(&big_path).run());
        let before = support::cpu_time(daemon.pid());
        p_big.push(proxied(&big_path).run());
        cpu_big.push(
            (support::cpu_time(daemon.pid()) - before).as_secs_f64() * (1u64 << 30) as f64
                / BIG as f64,
        );
    }
    let cpu_per_gib = median(&mut cpu_big);
    if std::env::var_os("CREDGATE_BENCH_BLOB_ONLY").is_some() {
        let (d, p) = (median(&mut d_big), median(&mut p_big));
        println!(
            "1 GiB blob: direct {:.2} s, via credgate {:.2} s, ratio {:.3}; credgate {cpu_per_gib:.2} CPU-s/GiB (runs: {cpu_big:.2?})",
            d.as_secs_f64(),
            p.as_secs_f64(),
            d.as_secs_f64() / p.as_secs_f64()
        );
        return;
    }
    let image = |fetch: &dyn Fn(&str) -> Fetch| {
        let started = Instant::now();
        fetch(&format!("/v2/{REPO}/manifests/{manifest_digest}")).run();
        for layer in &layers {
            fetch(&format!("/v2/{REPO}/blobs/{layer}")).run();
        }
        started.elapsed()
    };
    let (mut d_img, mut p_img) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        d_img.push(image(&direct));
        p_img.push(image(&proxied));
    }
    let (d_manifest, p_manifest) = manifest_latencies(&daemon, &token, &manifest_digest);
    let rss = peak_rss_with_streams(&daemon, &stream_blob);

    let mib_s = |bytes: usize, d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let big_d = median(&mut d_big);
    let big_p = median(&mut p_big);
    let img_d = median(&mut d_img);
    let img_p = median(&mut p_img);
    let img_bytes = 10 * (4 << 20);
    println!("credgate pull-through endpoint benchmark (release build, TLS upstream in a node namespace)\n");
    println!(
        "{:<40} {:>14} {:>14} {:>10}",
        "throughput (median of runs)", "direct (curl)", "via credgate", "ratio"
    );
    println!(
        "  {:<38} {:>9.0} MiB/s {:>9.0} MiB/s {:>10.3}",
        "1 GiB blob",
        mib_s(BIG, big_d),
        mib_s(BIG, big_p),
        big_d.as_secs_f64() / big_p.as_secs_f64()
    );
    println!(
        "  {:<38} {:>9.0} MiB/s {:>9.0} MiB/s {:>10.3}",
        "10-layer image (manifest + 10×4 MiB)",
        mib_s(img_bytes, img_d),
        mib_s(img_bytes, img_p),
        img_d.as_secs_f64() / img_p.as_secs_f64()
    );
    println!(
        "\n{:<40} {:>14} {:>14} {:>10}",
        format!("manifest GET, warm token ({MANIFEST_RUNS} runs)"),
        "direct",
        "via credgate",
        "added"
    );
    for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
        let (d, v) = (percentile(&d_manifest, p), percentile(&p_manifest, p));
        println!(
            "  {:<38} {:>11.0} µs {:>11.0} µs {:>7.0} µs",
            name,
            us(d),
            us(v),
            us(v) - us(d)
        );
    }
    println!("  credgate CPU per GiB streamed (1 GiB blob, median): {cpu_per_gib:.2} s");
    println!(
        "\npeak RSS of credgate serve with 64 concurrent 64 MiB blob streams: {:.1} MiB",
        rss as f64 / 1024.0
    );
    println!("\ntargets: throughput ≥ 0.95 of direct; added p50 < 500 µs; RSS < 64 MiB");
}

enum Fetch {
    Direct { url: String, token: String },
    Proxied { url: String },
}

impl Fetch {
    /// One curl download to /dev/null; its total time.
    fn run(&self) -> Duration {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}"]);
        match self {
            Fetch::Direct { url, token } => curl
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg(url),
            Fetch::Proxied { url } => curl
                .arg("-H")
                .arg(format!("X-Credgate-Secret: {MIRROR_SECRET}"))
                .arg(url),
        };
        curl.args(["-H", &format!("Accept: {}", mirror::MANIFEST_ACCEPT)]);
        let out = curl.output().expect("curl");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seconds: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("time_total");
        Duration::from_secs_f64(seconds)
    }
}

fn upload_random_blob(token: &str, dir: &Path, size: usize, name: &str) -> String {
    let path = dir.join(name);
    support::write_random_file(&path, size);
    support::upload(token, REPO, &path)
}

fn put_manifest(token: &str, dir: &Path, layers: &[String]) -> String {
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, b"{}").expect("config blob");
    let config = support::upload(token, REPO, &config_path);
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|d| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 4 << 20}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": layers,
    });
    let body = serde_json::to_vec(&manifest).expect("manifest");
    // An empty reference puts it by its digest.
    support::put_manifest(token, REPO, "", &body)
}

/// Manifest GETs on one kept-alive connection each way, as containerd's client keeps them.
fn manifest_latencies(
    daemon: &CredgateDaemon,
    token: &str,
    digest: &str,
) -> (Vec<Duration>, Vec<Duration>) {
    let path = format!("/v2/{REPO}/manifests/{digest}");
    let auth = format!("Authorization: Bearer {token}");
    let secret = format!("X-Credgate-Secret: {MIRROR_SECRET}");
    let direct_url = format!("https://registry.test{path}");
    let proxied_url = format!("http://{}{path}?ns=registry.test", daemon.mirror);
    (
        curl_keepalive(&direct_url, &auth),
        curl_keepalive(&proxied_url, &secret),
    )
}

/// `MANIFEST_RUNS` requests to one URL in a single curl (connection reuse), timed per request.
fn curl_keepalive(url: &str, header: &str) -> Vec<Duration> {
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "-f",
        "-H",
        header,
        "-H",
        &format!("Accept: {}", mirror::MANIFEST_ACCEPT),
        "-w",
        "%{time_total}\\n",
    ]);
    for _ in 0..MANIFEST_RUNS {
        curl.args(["-o", "/dev/null", url]);
    }
    let out = curl.output().expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut times: Vec<Duration> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1) // the first request opens the connection
        .map(|l| Duration::from_secs_f64(l.trim().parse().expect("time")))
        .collect();
    times.sort();
    times
}

fn peak_rss_with_streams(daemon: &CredgateDaemon, digest: &str) -> u64 {
    let url = format!(
        "http://{}/v2/{REPO}/blobs/{digest}?ns=registry.test",
        daemon.mirror
    );
    let streams: Vec<_> = (0..64)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-f",
                    "-o",
                    "/dev/null",
                    "--limit-rate",
                    "64M",
                    "-H",
                    &format!("X-Credgate-Secret: {MIRROR_SECRET}"),
                    &url,
                ])
                .spawn()
                .expect("curl")
        })
        .collect();
    for mut stream in streams {
        assert!(
            stream.wait().expect("curl").success(),
            "a blob stream failed"
        );
    }
    peak_rss_kib(daemon.pid())
}
