//! `bash integration/bench-pull.sh` (it builds the release binaries and runs this in a private
//! mount and network namespace, the "node" the node tests use).
//!
//! End to end on real containerd 2.1: one image pulled into a fresh containerd root, directly
//! from the registry with the bench user's credential (`ctr image pull --user`, CRI
//! `PullImage` with auth) against through credgate (`credgate install`'s hosts.toml and
//! `config_path`, no credential in the pull), for two images (1 GiB + 10 × 4 MiB, and 40
//! small layers), cold (credgate just started) and warm (its token cached). credgate runs
//! twice: hashing every blob (`verify_digests = "always"`) and leaving containerd's blobs to
//! containerd's own check (`"unless-containerd"`, the default). Runs alternate between the three ways in rotating
//! order; the table shows medians. Next to it: credgate's CPU seconds per GiB streamed (from
//! `/proc/<pid>/stat`) and the floor measured in this run with the same crates (TLS record
//! decryption, plus one SHA-256 when hashing). Prints figures; asserts nothing about them.
//!
//! `CREDGATE_BENCH_RUNS` sets the runs per cell (default 3).

mod support;

use std::time::{Duration, Instant};

use credgate_integration::containerd::Containerd;
use credgate_integration::cri::{basic_auth, CriClient};
use credgate_integration::daemon::{CredgateDaemon, MIRROR_SECRET};
use credgate_integration::mirror;
use credgate_integration::node::node;
use support::{cpu_time, median, peak_rss_kib, push_image, BenchImage, BenchRegistry};

const CONTAINERD: &str = "2.1";
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Clone, Copy, PartialEq)]
enum Client {
    Ctr,
    Cri,
}

#[derive(Clone, Copy, PartialEq)]
enum Token {
    Cold,
    Warm,
}

/// How the pull reaches the registry: directly, or through credgate daemon `n`.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Direct,
    Gate(usize),
}

/// One pull's time, and credgate's CPU time during it.
#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    cpu: Vec<Duration>,
}

fn main() {
    node();
    let runs: usize = std::env::var("CREDGATE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let registry = BenchRegistry::start();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut big_layers = vec![1usize << 30];
    big_layers.extend([4usize << 20; 10]);
    let images = [
        (
            "1 GiB + 10×4 MiB",
            push_image(&registry, scratch.path(), "big", &big_layers),
        ),
        (
            "40 layers × 256 KiB",
            push_image(&registry, scratch.path(), "small", &[256 << 10; 40]),
        ),
    ];
    let mut daemons = [("always"), ("unless-containerd")].map(|mode| {
        CredgateDaemon::start_logging(
            &registry.credgate_sources(&format!("verify_digests = \"{mode}\"")),
            "warn",
        )
    });
    let ways = [Way::Direct, Way::Gate(0), Way::Gate(1)];
    let cells: Vec<(usize, Client, Token)> = (0..images.len())
        .flat_map(|i| {
            [Client::Ctr, Client::Cri]
                .into_iter()
                .flat_map(move |c| [Token::Cold, Token::Warm].map(|t| (i, c, t)))
        })
        .collect();
    let mut samples: Vec<[Samples; 3]> = cells.iter().map(|_| Default::default()).collect();
    for run in 0..runs {
        for (cell, &(image, client, token)) in cells.iter().enumerate() {
            for k in 0..ways.len() {
                let w = (k + run + cell) % ways.len();
                let (time, cpu) = pull(&mut daemons, ways[w], &images[image].1, client, token);
                samples[cell][w].times.push(time);
                samples[cell][w].cpu.push(cpu);
            }
        }
        eprintln!("run {}/{runs} done", run + 1);
    }
    let floor = support::floor::measure(1 << 30);

    println!(
        "credgate pull benchmark: containerd {CONTAINERD} into a fresh root per pull, median of {runs} alternating runs\n"
    );
    println!(
        "{:<44} {:>9} {:>10} {:>7} {:>10} {:>7}",
        "image, client, token", "direct", "hashing", "ratio", "trusting", "ratio"
    );
    for (cell, &(image, client, token)) in cells.iter().enumerate() {
        let [direct, hashing, trusting] = &mut samples[cell];
        let d = median(&mut direct.times).as_secs_f64();
        let h = median(&mut hashing.times).as_secs_f64();
        let t = median(&mut trusting.times).as_secs_f64();
        let name = format!(
            "{}, {}, {}",
            images[image].0,
            match client {
                Client::Ctr => "ctr image pull",
                Client::Cri => "CRI PullImage",
            },
            match token {
                Token::Cold => "cold",
                Token::Warm => "warm",
            }
        );
        println!(
            "  {name:<42} {d:>7.2} s {h:>8.2} s {:>7.3} {t:>8.2} s {:>7.3}",
            h / d,
            t / d
        );
    }
    println!("  (hashing: verify_digests = \"always\"; trusting: \"unless-containerd\", containerd verifies)");

    let per_gib = |way: usize| {
        let bytes = images[0].1.bytes as f64;
        let mut all: Vec<f64> = (0..cells.len())
            .filter(|&c| cells[c].0 == 0)
            .flat_map(|c| {
                samples[c][way]
                    .cpu
                    .iter()
                    .map(|d| d.as_secs_f64() * GIB / bytes)
            })
            .collect();
        median(&mut all)
    };
    println!(
        "\ncredgate CPU per GiB streamed (1 GiB image, median of its pulls), against the floor"
    );
    floor.print_against(per_gib(1), Some(per_gib(2)));
    for (name, daemon) in ["hashing", "trusting"].iter().zip(&daemons) {
        println!(
            "peak RSS of credgate serve ({name}): {:.1} MiB",
            peak_rss_kib(daemon.pid()) as f64 / 1024.0
        );
    }
    println!("\ntargets: pull through credgate ≤ 1.03× direct; CPU ≤ 1.3× the floor");
}

/// One pull of `image` into a fresh containerd root; its wall time and credgate's CPU time.
fn pull(
    daemons: &mut [CredgateDaemon],
    way: Way,
    image: &BenchImage,
    client: Client,
    token: Token,
) -> (Duration, Duration) {
    let mut containerd = Containerd::configure(CONTAINERD, "registry.test/bench/pause:absent");
    if let Way::Gate(n) = way {
        containerd
            .install_credgate(&daemons[n].config_path())
            .assert_success();
    }
    containerd.start();
    let daemon = match way {
        Way::Direct => None,
        Way::Gate(n) => {
            let daemon = &mut daemons[n];
            match token {
                Token::Cold => {
                    daemon.kill();
                    daemon.restart();
                }
                Token::Warm => warm(daemon, image),
            }
            Some(&*daemon)
        }
    };
    let cri = (client == Client::Cri).then(|| CriClient::connect(&containerd.socket()));
    let cpu_before = daemon.map(|d| cpu_time(d.pid()));
    let served_before = daemon.map(|d| d.served_ok("registry.test"));
    let started = Instant::now();
    let outcome = match (client, daemon) {
        (Client::Ctr, None) => {
            let user = format!("{}:{}", support::USER, support::PASSWORD);
            let out = containerd.ctr(&["image", "pull", "--user", &user, &image.reference]);
            if out.success() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        }
        (Client::Ctr, Some(_)) => containerd.ctr_pull(&image.reference),
        (Client::Cri, _) => {
            let auth = daemon
                .is_none()
                .then(|| basic_auth(support::USER, support::PASSWORD));
            cri.as_ref()
                .expect("CRI client")
                .pull_image(&image.reference, auth)
                .map(drop)
                .map_err(|status| status.to_string())
        }
    };
    let elapsed = started.elapsed();
    if let Err(error) = outcome {
        panic!(
            "pull of {} failed: {error}\n{}",
            image.reference,
            containerd.log_tail()
        );
    }
    let cpu = match (daemon, cpu_before) {
        (Some(d), Some(before)) => cpu_time(d.pid()) - before,
        _ => Duration::ZERO,
    };
    // A pull that fell back to the registry (hosts.toml's second host) measured nothing.
    if let (Some(d), Some(before)) = (daemon, served_before) {
        let served = d.served_ok("registry.test") - before;
        assert!(
            served as usize > image.layers.len(),
            "the pull through credgate was answered {served} times by it, not for every blob"
        );
    }
    (elapsed, cpu)
}

/// A manifest request through the endpoint, so the token for the image's repository is cached.
fn warm(daemon: &CredgateDaemon, image: &BenchImage) {
    let url = format!(
        "http://{}/v2/{}/manifests/v1?ns=registry.test",
        daemon.mirror, image.repository
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", "-o", "/dev/null", "-H"])
        .arg(format!("X-Credgate-Secret: {MIRROR_SECRET}"))
        .arg("-H")
        .arg(format!("Accept: {}", mirror::MANIFEST_ACCEPT))
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "warming credgate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
