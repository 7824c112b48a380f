//! The fault matrix (issue 14): each fault applied to a real part while concurrent pulls
//! run through credgate (CRI PullImage and `ctr image pull` on real containerd 2.1, and
//! direct endpoint requests), against real registries, the project's token server and real
//! helper and plugin programs (a registry's 429s and mid-blob resets come from
//! `credgate_integration::fault_front`, a fake in front of a real registry: no real one
//! produces them on demand). For every fault: no pull reports success with wrong content
//! (every pull checks its manifest digest, and the endpoint's blobs too); pulls that can
//! succeed do; the others fail with an error naming the cause; and once the fault is gone
//! the pulls it broke succeed again. Each test prints (and appends to the file named by
//! `CREDGATE_FAULT_MATRIX`, if set) one row of the README's fault matrix: the fault, what the
//! pulls saw, and how long after the fault ended the broken pulls succeeded again (measured,
//! never asserted).
//!
//! A node test: `cargo build --bin credgate && unshare --mount --net -- cargo test -p
//! credgate-integration --test node_faults` as root (integration/test-all.sh does this).

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use credgate_integration::cri::CriClient;
use credgate_integration::fault_front::{FaultFront, FrontFault, FRONT_IP};
use credgate_integration::images::PushedImage;
use credgate_integration::process::{spawn_logged, ChildGuard, DAEMON_PATH};
use credgate_integration::soak::{other_login, HelperMode, PullKind, Rig, RigOptions};
use credgate_integration::token_server::TokenFault;

/// The longest any wait for the pulls to show something may take before the test fails.
const WAIT: Duration = Duration::from_secs(240);

/// One test at a time: each starts its own registries on the node's shared host names.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Debug)]
struct Attempt {
    stream: &'static str,
    image: String,
    began: Instant,
    ended: Instant,
    outcome: Result<(), String>,
}

/// Pullers that run one kind of pull over some images, in turn, until stopped.
struct Stream {
    name: &'static str,
    kind: PullKind,
    images: Vec<PushedImage>,
}

/// Concurrent pulls through a rig, every attempt recorded.
struct Load {
    rig: Arc<Rig>,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    threads: Vec<JoinHandle<()>>,
    pullers: usize,
}

impl Load {
    fn start(rig: &Arc<Rig>, streams: Vec<Stream>) -> Load {
        let mut load = Load {
            rig: rig.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            attempts: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
            pullers: 0,
        };
        for stream in streams {
            load.add(stream);
        }
        load
    }

    /// Starts two pullers for `stream`.
    fn add(&mut self, stream: Stream) {
        let stream = Arc::new(stream);
        for copy in 0..2 {
            let (rig, stop, attempts, stream) = (
                self.rig.clone(),
                self.stop.clone(),
                self.attempts.clone(),
                stream.clone(),
            );
            let puller = 100 + self.pullers;
            self.pullers += 1;
            self.threads.push(std::thread::spawn(move || {
                let cri = CriClient::connect(&rig.containerd.socket());
                let mut round = copy;
                while !stop.load(Ordering::Relaxed) {
                    let image = &stream.images[round % stream.images.len()];
                    let began = Instant::now();
                    let outcome = rig.pull(stream.kind, puller, &cri, image);
                    let failed = outcome.is_err();
                    attempts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Attempt {
                            stream: stream.name,
                            image: image.reference.clone(),
                            began,
                            ended: Instant::now(),
                            outcome,
                        });
                    round += 1;
                    if failed {
                        // As containerd does, back off a little before trying again.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }));
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (at most [`WAIT`]) until `done` holds for the attempts so far; panics naming
    /// `what` and the attempts otherwise.
    #[track_caller]
    fn wait_until(&self, what: &str, done: impl Fn(&[Attempt]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let attempts = self.attempts();
            if done(&attempts) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {WAIT:?} for {what}; the last attempts:\n{}\n--- credgate log tail ---\n{}",
                    summary(&attempts),
                    tail(&self.rig.daemon.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the pullers and returns every attempt; each one is checked for wrong content.
    fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a puller panicked");
        }
        let attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert_no_wrong_content(&attempts);
        attempts
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn summary(attempts: &[Attempt]) -> String {
    let start = attempts.len().saturating_sub(30);
    attempts[start..]
        .iter()
        .map(|a| {
            format!(
                "{} {} ({:.1} s): {}",
                a.stream,
                a.image,
                (a.ended - a.began).as_secs_f64(),
                match &a.outcome {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.clone(),
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_no_wrong_content(attempts: &[Attempt]) {
    let wrong: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| matches!(&a.outcome, Err(e) if e.contains("wrong content") || e.contains("wrong digest")))
        .collect();
    assert!(wrong.is_empty(), "pulls saw wrong content: {wrong:#?}");
}

/// Some attempt of `stream` that began at or after `since` succeeded.
fn succeeded_since(attempts: &[Attempt], stream: &str, since: Instant) -> bool {
    attempts
        .iter()
        .any(|a| a.stream == stream && a.began >= since && a.outcome.is_ok())
}

/// When the first attempt of `stream` that began at or after `since` succeeded.
fn first_success_since(attempts: &[Attempt], stream: &str, since: Instant) -> Option<Instant> {
    attempts
        .iter()
        .filter(|a| a.stream == stream && a.began >= since && a.outcome.is_ok())
        .map(|a| a.ended)
        .min()
}

/// The failures of `stream` among attempts that began in `[from, to)`.
fn failures_between<'a>(
    attempts: &'a [Attempt],
    stream: &str,
    from: Instant,
    to: Instant,
) -> Vec<&'a str> {
    attempts
        .iter()
        .filter(|a| a.stream == stream && a.began >= from && a.began < to)
        .filter_map(|a| a.outcome.as_ref().err().map(String::as_str))
        .collect()
}

/// Every stream in `streams` succeeded with an attempt that began at or after `since`.
fn all_succeeded_since(attempts: &[Attempt], streams: &[&str], since: Instant) -> bool {
    streams.iter().all(|s| succeeded_since(attempts, s, since))
}

/// The streams that need only the deploy token and the docker config: what keeps working
/// whatever happens to the helper, the plugin, basic.test or a new token.
fn warm_streams(rig: &Rig) -> Vec<Stream> {
    let scoped = rig.images.scoped.clone();
    vec![
        Stream {
            name: "cri",
            kind: PullKind::Cri,
            images: scoped.clone(),
        },
        Stream {
            name: "ctr",
            kind: PullKind::Ctr,
            images: scoped.clone(),
        },
        Stream {
            name: "endpoint",
            kind: PullKind::Endpoint,
            images: scoped,
        },
    ]
}

const WARM: [&str; 3] = ["cri", "ctr", "endpoint"];

/// One row of the fault matrix: printed, and appended to `$CREDGATE_FAULT_MATRIX` if set.
fn matrix_row(fault: &str, saw: &str, recovered_in: Option<Duration>) {
    let recovered = recovered_in.map_or("nothing to recover".to_string(), |d| {
        format!("{:.1} s", d.as_secs_f64())
    });
    let row = format!("| {fault} | {saw} | {recovered} |");
    println!("FAULT MATRIX {row}");
    if let Some(path) = std::env::var_os("CREDGATE_FAULT_MATRIX") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open the fault matrix file");
        writeln!(file, "{row}").expect("append to the fault matrix file");
    }
}

/// What a failure says, short: the endpoint's status and its error's message, or the
/// first 160 characters.
fn gist(failure: &str) -> String {
    let status = failure
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
    let message = failure
        .find('{')
        .and_then(|start| serde_json::from_str::<serde_json::Value>(&failure[start..]).ok())
        .and_then(|body| body["errors"][0]["message"].as_str().map(str::to_string));
    match (status, message) {
        (Some(status), Some(message)) => format!("{status} \"{message}\""),
        _ => failure.chars().take(160).collect(),
    }
}

/// A short, de-duplicated list of what failures said.
fn said(failures: &[&str]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for failure in failures {
        let short = gist(failure);
        if !seen.contains(&short) {
            seen.push(short);
        }
    }
    seen.truncate(2);
    seen.join("; ").replace('|', "/")
}

fn metric(rig: &Rig, family: &str) -> f64 {
    rig.daemon.metric_sum(family, |_| true)
}

// ---------------------------------------------------------------- the token server

#[test]
fn the_token_server_answering_500_then_hanging_fails_only_pulls_needing_a_new_token() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let mut load = Load::start(&rig, warm_streams(&rig));
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &WARM, begun)
    });

    // 500: the warm streams hold cached tokens; pulls of repositories never pulled need a
    // new one, and fail naming the token endpoint's answer.
    rig.tokens.set_fault(Some(TokenFault::Status(500)));
    let fault = Instant::now();
    load.add(Stream {
        name: "new-token",
        kind: PullKind::Endpoint,
        images: rig.images.cold[..4].to_vec(),
    });
    load.wait_until(
        "a pull needing a new token to fail, and every warm stream to pull",
        |a| {
            !failures_between(a, "new-token", fault, Instant::now()).is_empty()
                && all_succeeded_since(a, &WARM, fault)
        },
    );
    rig.tokens.set_fault(None);
    let healed = Instant::now();
    load.wait_until("pulls needing a new token to succeed again", |a| {
        succeeded_since(a, "new-token", healed)
    });
    let attempts = load.attempts();
    let failed = failures_between(&attempts, "new-token", fault, healed);
    for failure in &failed {
        assert!(
            failure.contains("502") && failure.contains("500"),
            "a pull during the token server's 500s failed without naming them: {failure}"
        );
    }
    matrix_row(
        "token server answers 500, then recovers",
        &format!(
            "pulls with a cached token went on; {} pulls needing a new token failed: {}",
            failed.len(),
            said(&failed)
        ),
        first_success_since(&attempts, "new-token", healed).map(|t| t - healed),
    );

    // Hang: the token request gets no answer; credgate gives up after its response timeout.
    rig.tokens.set_fault(Some(TokenFault::Hang));
    let fault = Instant::now();
    load.add(Stream {
        name: "hung-token",
        kind: PullKind::Endpoint,
        images: rig.images.cold[4..].to_vec(),
    });
    load.wait_until("a pull needing a token from the hung server to fail", |a| {
        !failures_between(a, "hung-token", fault, Instant::now()).is_empty()
            && all_succeeded_since(a, &WARM, fault)
    });
    rig.tokens.set_fault(None);
    let healed = Instant::now();
    load.wait_until("pulls needing a new token to succeed after the hang", |a| {
        succeeded_since(a, "hung-token", healed)
    });
    let attempts = load.stop();
    let failed = failures_between(&attempts, "hung-token", fault, healed);
    for failure in &failed {
        assert!(
            failure.contains("504") && failure.contains("auth.test"),
            "a pull during the token server's hang failed without naming it: {failure}"
        );
    }
    let warm_failures: Vec<&str> = WARM
        .iter()
        .flat_map(|s| failures_between(&attempts, s, begun, Instant::now()))
        .collect();
    assert!(
        warm_failures.is_empty(),
        "pulls with a cached token failed: {warm_failures:#?}"
    );
    matrix_row(
        "token server hangs (no answer), then recovers",
        &format!(
            "pulls with a cached token went on; {} pulls needing a new token failed after credgate's 30 s bound: {}",
            failed.len(),
            said(&failed)
        ),
        first_success_since(&attempts, "hung-token", healed).map(|t| t - healed),
    );
}

// ---------------------------------------------------------------- DNS

/// /etc/hosts in the node is a bind mount of the node's own file: writing it is what an
/// operator or a resolver change does.
fn set_hosts(text: &str) {
    std::fs::write("/etc/hosts", text).expect("write /etc/hosts");
}

#[test]
fn a_registry_name_that_stops_resolving_fails_its_pulls_naming_it_until_it_resolves_again() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let mut load = Load::start(&rig, warm_streams(&rig));
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &WARM, begun)
    });
    let hosts = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
    let without: String = hosts
        .lines()
        .filter(|l| {
            !l.split_whitespace()
                .skip(1)
                .any(|name| name == "basic.test")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, hosts, "basic.test was not in /etc/hosts");
    set_hosts(&without);
    let fault = Instant::now();
    // credgate has never connected to basic.test, so no pooled connection hides the fault.
    load.add(Stream {
        name: "basic",
        kind: PullKind::Endpoint,
        images: vec![rig.images.basic.clone()],
    });
    load.wait_until(
        "a basic.test pull to fail, and every warm stream to pull",
        |a| {
            failures_between(a, "basic", fault, Instant::now()).len() >= 2
                && all_succeeded_since(a, &WARM, fault)
        },
    );
    set_hosts(&hosts);
    let healed = Instant::now();
    load.wait_until("basic.test pulls to succeed once it resolves", |a| {
        succeeded_since(a, "basic", healed)
    });
    let attempts = load.stop();
    let failed = failures_between(&attempts, "basic", fault, healed);
    for failure in &failed {
        assert!(
            failure.contains("502") && failure.contains("basic.test"),
            "a pull while basic.test did not resolve failed without naming it: {failure}"
        );
    }
    matrix_row(
        "upstream DNS fails (name gone from /etc/hosts), then recovers",
        &format!(
            "other registries' pulls went on; {} pulls from the unresolvable one failed: {}",
            failed.len(),
            said(&failed)
        ),
        first_success_since(&attempts, "basic", healed).map(|t| t - healed),
    );
}

// ---------------------------------------------------------------- the registry throttles or resets

/// basic.test resolves to the fault front while this lives; the node's /etc/hosts comes back
/// on drop, also when the test fails.
struct FrontedName {
    hosts: String,
}

impl FrontedName {
    fn point(host: &str, ip: std::net::Ipv4Addr) -> FrontedName {
        let hosts = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        let mut fronted: String = hosts
            .lines()
            .filter(|l| !l.split_whitespace().skip(1).any(|name| name == host))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(fronted, hosts, "{host} was not in /etc/hosts");
        fronted.push_str(&format!("{ip} {host}\n"));
        set_hosts(&fronted);
        FrontedName { hosts }
    }
}

impl Drop for FrontedName {
    fn drop(&mut self) {
        set_hosts(&self.hosts);
    }
}

/// The warm streams, and endpoint pulls of basic.test (`basic`) through a fault front that
/// passes everything through until told otherwise; returns once every stream pulled once.
fn fronted_load(rig: &Arc<Rig>, front: &FaultFront, extra: Vec<Stream>) -> Load {
    let mut load = Load::start(rig, warm_streams(rig));
    load.add(Stream {
        name: "basic",
        kind: PullKind::Endpoint,
        images: vec![rig.images.basic.clone()],
    });
    let mut names: Vec<&str> = WARM.to_vec();
    names.push("basic");
    for stream in extra {
        names.push(stream.name);
        load.add(stream);
    }
    let begun = Instant::now();
    load.wait_until(
        "every stream, basic.test's through the fault front, to pull once",
        |a| all_succeeded_since(a, &names, begun),
    );
    assert_eq!(front.faulted(), 0, "the front faulted while switched off");
    load
}

#[track_caller]
fn assert_warm_streams_never_failed(attempts: &[Attempt], since: Instant) {
    let warm_failures: Vec<&str> = WARM
        .iter()
        .flat_map(|s| failures_between(attempts, s, since, Instant::now()))
        .collect();
    assert!(
        warm_failures.is_empty(),
        "pulls from the other registry failed: {warm_failures:#?}"
    );
}

#[test]
fn a_registry_answering_429_with_retry_after_is_waited_out_or_named_then_recovers() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let front = FaultFront::start(&rig.basic);
    let _fronted = FrontedName::point(rig.basic.host(), FRONT_IP);
    let load = fronted_load(&rig, &front, Vec::new());
    let begun = Instant::now();

    // Throttled for longer than credgate's 2 retries: basic.test's pulls fail naming the 429.
    front.set_fault(Some(FrontFault::TooManyRequests {
        retry_after_secs: 1,
    }));
    let fault = Instant::now();
    load.wait_until(
        "basic.test pulls to fail on the 429s, and every warm stream to pull",
        |a| {
            failures_between(a, "basic", fault, Instant::now()).len() >= 2
                && all_succeeded_since(a, &WARM, fault)
        },
    );
    front.set_fault(None);
    let healed = Instant::now();
    load.wait_until("basic.test pulls to succeed once the 429s stop", |a| {
        succeeded_since(a, "basic", healed)
    });
    let persistent = front.faulted();

    // Throttled briefly (two 429s): credgate waits them out and no pull fails.
    front.set_fault_for(
        FrontFault::TooManyRequests {
            retry_after_secs: 1,
        },
        2,
    );
    let brief = Instant::now();
    load.wait_until("both brief 429s to be answered", |_| {
        front.faulted() == persistent + 2
    });
    let waited = Instant::now();
    load.wait_until(
        "a basic.test pull begun after the brief 429s to succeed",
        |a| succeeded_since(a, "basic", waited),
    );
    let attempts = load.stop();

    let failed = failures_between(&attempts, "basic", fault, healed);
    assert!(!failed.is_empty(), "no basic.test pull failed on the 429s");
    for failure in &failed {
        assert!(
            failure.contains("429"),
            "a pull during the registry's 429s failed without naming them: {failure}"
        );
    }
    let brief_failures = failures_between(&attempts, "basic", brief, Instant::now());
    assert!(
        brief_failures.is_empty(),
        "two 429s with Retry-After: 1 were not waited out: {brief_failures:#?}"
    );
    assert_warm_streams_never_failed(&attempts, begun);
    let absorbed = attempts
        .iter()
        .filter(|a| a.stream == "basic" && a.began >= brief && a.outcome.is_ok())
        .count();
    matrix_row(
        "registry answers 429 with `Retry-After: 1` (fault front), then recovers",
        &format!(
            "other registries' pulls went on; {} basic.test pulls failed while every answer was 429: {}; \
             two 429s in a row were waited out inside credgate ({absorbed} pulls after them, none failed)",
            failed.len(),
            said(&failed)
        ),
        first_success_since(&attempts, "basic", healed).map(|t| t - healed),
    );
}

#[test]
fn a_registry_resetting_connections_mid_blob_breaks_only_those_pulls_and_never_their_content() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let front = FaultFront::start(&rig.basic);
    let _fronted = FrontedName::point(rig.basic.host(), FRONT_IP);
    // ctr fetches every blob again each round (its content is removed after each pull).
    let load = fronted_load(
        &rig,
        &front,
        vec![
            Stream {
                name: "basic-ctr",
                kind: PullKind::Ctr,
                images: vec![rig.images.basic.clone()],
            },
            Stream {
                name: "basic-2",
                kind: PullKind::Endpoint,
                images: vec![rig.images.basic.clone()],
            },
        ],
    );
    let begun = Instant::now();
    front.set_fault(Some(FrontFault::CutBlobs { after_bytes: 64 }));
    let fault = Instant::now();
    load.wait_until(
        "basic.test endpoint pulls to fail on cut blobs, a ctr pull to try, and every warm stream to pull",
        |a| {
            failures_between(a, "basic", fault, Instant::now()).len()
                + failures_between(a, "basic-2", fault, Instant::now()).len()
                >= 3
                && a.iter().any(|x| x.stream == "basic-ctr" && x.began >= fault)
                && all_succeeded_since(a, &WARM, fault)
        },
    );
    front.set_fault(None);
    let healed = Instant::now();
    let fronted = ["basic", "basic-2", "basic-ctr"];
    load.wait_until(
        "every basic.test stream to succeed once blobs are whole",
        |a| all_succeeded_since(a, &fronted, healed),
    );
    let cut = front.faulted();
    let attempts = load.stop();

    assert!(cut > 0, "the front cut no blob");
    let endpoint_failed: Vec<&str> = ["basic", "basic-2"]
        .iter()
        .flat_map(|s| failures_between(&attempts, s, fault, healed))
        .collect();
    for failure in &endpoint_failed {
        assert!(
            failure.contains("/blobs/sha256:")
                && (failure.contains("broke off") || failure.contains("502")),
            "a pull whose blob was cut failed without naming the broken blob transfer: {failure}"
        );
    }
    let ctr_failed = failures_between(&attempts, "basic-ctr", fault, healed);
    let ctr_done = attempts
        .iter()
        .filter(|a| a.stream == "basic-ctr" && a.began >= fault && a.began < healed)
        .count();
    assert_warm_streams_never_failed(&attempts, begun);
    let recovered = fronted
        .iter()
        .filter_map(|s| first_success_since(&attempts, s, healed))
        .max()
        .map(|t| t - healed);
    matrix_row(
        "registry resets connections mid-blob (fault front cuts every blob body), during concurrent pulls",
        &format!(
            "other registries' pulls went on; {cut} blob bodies cut; {} basic.test endpoint pulls failed: {}; \
             {} of {ctr_done} `ctr` pulls failed{}; none with wrong content",
            endpoint_failed.len(),
            said(&endpoint_failed),
            ctr_failed.len(),
            if ctr_failed.is_empty() {
                String::new()
            } else {
                format!(": {}", said(&ctr_failed))
            }
        ),
        recovered,
    );
}

// ---------------------------------------------------------------- helpers and plugins

/// Runs `faults` in turn on second.test's credential program while the warm streams and a
/// second.test stream pull; each fault must fail second.test's pulls with a message naming the
/// failed source (never the program's own failure, which can quote its stderr), credgate's log
/// must hold one of its needles, and its end must let them succeed again.
fn credential_program_faults(
    rig: &Arc<Rig>,
    program: &str,
    faults: &[(HelperMode, &str, &[&str])],
) -> Vec<Attempt> {
    let mut streams = warm_streams(rig);
    streams.push(Stream {
        name: "second",
        kind: PullKind::Endpoint,
        images: vec![rig.images.helper.clone()],
    });
    let load = Load::start(rig, streams);
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &["cri", "ctr", "endpoint", "second"], begun)
    });
    for (mode, fault_name, needles) in faults {
        rig.set_mode(*mode);
        let fault = Instant::now();
        load.wait_until(
            &format!("a second.test pull to fail while the {program} {fault_name}"),
            |a| {
                !failures_between(a, "second", fault, Instant::now()).is_empty()
                    && all_succeeded_since(a, &WARM, fault)
            },
        );
        rig.set_mode(HelperMode::Serve);
        let healed = Instant::now();
        load.wait_until("second.test pulls to succeed again", |a| {
            succeeded_since(a, "second", healed)
        });
        let attempts = load.attempts();
        let failed = failures_between(&attempts, "second", fault, healed);
        let first_failure = failed.iter().position(|f| !f.is_empty()).unwrap_or(0);
        for failure in &failed[first_failure..] {
            assert!(
                failure.contains("the credential source that could have one failed"),
                "a second.test pull while the {program} {fault_name} failed without naming its \
                 source: {failure}"
            );
            // Why it failed can quote the program's stderr: the log says it, the pull never.
            assert!(
                !needles.iter().any(|n| failure.contains(n)),
                "a second.test pull's error carries the {program}'s own failure: {failure}"
            );
        }
        let log = rig.daemon.log();
        assert!(
            needles.iter().any(|n| log.contains(n)),
            "credgate's log does not say why the {program} {fault_name} ({needles:?})"
        );
        matrix_row(
            &format!("the {program} for one source {fault_name}"),
            &format!(
                "the other sources' pulls went on; {} pulls of that source failed: {}",
                failed.len(),
                said(&failed)
            ),
            first_success_since(&attempts, "second", healed).map(|t| t - healed),
        );
    }
    let attempts = load.stop();
    let warm_failures: Vec<&str> = WARM
        .iter()
        .flat_map(|s| failures_between(&attempts, s, begun, Instant::now()))
        .collect();
    assert!(
        warm_failures.is_empty(),
        "pulls through the other sources failed: {warm_failures:#?}"
    );
    attempts
}

#[test]
fn a_credential_helper_that_hangs_or_crashes_fails_only_its_own_sources_pulls() {
    let _serial = serial();
    let rig = Arc::new(Rig::start_with(&RigOptions {
        helper_timeout: Some("2s"),
        ..RigOptions::default()
    }));
    credential_program_faults(
        &rig,
        "docker credential helper",
        &[
            (HelperMode::Hang, "hangs", &["did not answer within 2s"]),
            (
                HelperMode::Crash,
                "crashes",
                &["docker-credential-soak", "signal"],
            ),
        ],
    );
    assert!(
        metric(&rig, "credgate_helper_timeouts_total") >= 1.0,
        "{}",
        rig.daemon.metrics_page()
    );
}

#[test]
fn a_kubelet_provider_plugin_answering_garbage_fails_only_its_own_registrys_pulls() {
    let _serial = serial();
    let rig = Arc::new(Rig::start_with(&RigOptions {
        kubelet_provider: true,
        ..RigOptions::default()
    }));
    credential_program_faults(
        &rig,
        "kubelet provider plugin",
        &[(HelperMode::Garbage, "answers garbage", &["soak-provider"])],
    );
}

// ---------------------------------------------------------------- credgate itself

/// SIGKILL to `pid` (a child this process does not reap), then waits until it is dead.
fn kill_and_wait(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL credgate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return;
        }
        assert!(Instant::now() < deadline, "credgate {pid} outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `credgate serve` again on the rig's config, as its supervisor would start it after a
/// crash; returns once the endpoint accepts connections.
fn respawn(rig: &Rig) -> ChildGuard {
    let mut command = std::process::Command::new(credgate_integration::credgate_binary());
    command
        .arg("serve")
        .arg("--config")
        .arg(rig.daemon.config_path())
        .env_clear()
        .env(
            "PATH",
            format!("{}:{DAEMON_PATH}", rig.helper_dir().display()),
        )
        .env("CREDGATE_LOG", "debug");
    let mut serve = spawn_logged(
        &mut command,
        &rig.daemon.dir().join("serve.log"),
        "credgate serve",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(rig.daemon.mirror).is_err() {
        if let Some(status) = serve.try_wait() {
            panic!(
                "credgate serve exited ({status}):\n{}",
                tail(&rig.daemon.log(), 30)
            );
        }
        assert!(
            Instant::now() < deadline,
            "credgate serve did not listen again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serve
}

#[test]
fn credgate_killed_mid_pull_ten_times_loses_no_content_and_serves_after_each_restart() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let load = Load::start(&rig, warm_streams(&rig));
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &WARM, begun)
    });
    // The pullers share the rig, so the rig's daemon handle can't be restarted in place:
    // each restart is a new `credgate serve` on the same config (same ports, same secret).
    let first = rig.daemon.pid();
    let mut restarts: Vec<ChildGuard> = Vec::new();
    let mut restarted = Instant::now();
    for round in 0..10 {
        load.wait_until(&format!("a pull after restart {round}"), |a| {
            a.iter().any(|x| x.began >= restarted && x.outcome.is_ok())
        });
        match restarts.last_mut() {
            // SIGKILL, then reaped: the next one must not find the old one still listening.
            Some(serve) => {
                serve.kill();
            }
            None => kill_and_wait(first),
        }
        restarts.push(respawn(&rig));
        restarted = Instant::now();
    }
    load.wait_until("every stream to pull after the last restart", |a| {
        all_succeeded_since(a, &WARM, restarted)
    });
    let attempts = load.stop();
    let failed: Vec<&str> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().err().map(String::as_str))
        .collect();
    let recovered = WARM
        .iter()
        .filter_map(|s| first_success_since(&attempts, s, restarted))
        .max()
        .map(|t| t - restarted);
    matrix_row(
        "credgate SIGKILLed mid-pull and restarted, 10 times in a row",
        &format!(
            "{} of {} pulls failed while credgate was down, none with wrong content: {}",
            failed.len(),
            attempts.len(),
            said(&failed)
        ),
        recovered,
    );
}

#[test]
fn a_sighup_with_a_broken_config_keeps_the_old_one_and_a_good_one_then_applies() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let load = Load::start(&rig, warm_streams(&rig));
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &WARM, begun)
    });
    let config = rig.daemon.config_path();
    let good = std::fs::read_to_string(&config).expect("read config");
    credgate_integration::attack::write_file(
        &config,
        &format!("{good}\n[[registry]\nbroken"),
        0o600,
    );
    rig.daemon.reload_expecting("reload failed");
    let broken = Instant::now();
    load.wait_until("every stream to pull under the old config", |a| {
        all_succeeded_since(a, &WARM, broken)
    });
    credgate_integration::attack::write_file(&config, &good, 0o600);
    rig.daemon.reload_expecting("config reloaded");
    let fixed = Instant::now();
    load.wait_until("every stream to pull after the good reload", |a| {
        all_succeeded_since(a, &WARM, fixed)
    });
    let attempts = load.stop();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "pulls failed across the reloads: {failed:#?}"
    );
    let log = rig.daemon.log();
    let reason = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .expect("the failed reload is logged");
    assert!(reason.contains("config.toml"), "{reason}");
    matrix_row(
        "SIGHUP with a broken config, then a good one",
        &format!(
            "all {} pulls succeeded; the broken reload was refused and logged naming the file",
            attempts.len()
        ),
        None,
    );
}

// ---------------------------------------------------------------- the docker config

#[test]
fn a_docker_config_rewritten_or_swapped_mid_run_is_followed_without_a_broken_pull() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let mut streams = warm_streams(&rig);
    streams.push(Stream {
        name: "docker-config",
        kind: PullKind::Endpoint,
        images: vec![rig.images.other.clone()],
    });
    let load = Load::start(&rig, streams);
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &["cri", "ctr", "endpoint", "docker-config"], begun)
    });
    let logged_out = credgate_integration::clients::DockerConfig::new();
    let mount = &rig.docker_config;

    // `docker logout`, then `docker login`: docker writes a temp file and renames it.
    let write_atomically = |config: &credgate_integration::clients::DockerConfig| {
        let target = std::fs::canonicalize(mount.path()).expect("config.json target");
        let temporary = target.with_extension("tmp");
        credgate_integration::attack::write_file(&temporary, &config.to_json().to_string(), 0o600);
        std::fs::rename(&temporary, &target).expect("rename into config.json");
    };
    write_atomically(&logged_out);
    let out = Instant::now();
    load.wait_until("a pull to fail once the login is gone", |a| {
        !failures_between(a, "docker-config", out, Instant::now()).is_empty()
    });
    write_atomically(&other_login());
    let login = Instant::now();
    load.wait_until("pulls to succeed after docker login", |a| {
        succeeded_since(a, "docker-config", login)
    });
    let attempts = load.attempts();
    let logged_out_failures = failures_between(&attempts, "docker-config", out, login);
    matrix_row(
        "docker config rewritten mid-run (docker logout, then docker login)",
        &format!(
            "other sources' pulls went on; {} pulls needing the login failed while it was gone: {}",
            logged_out_failures.len(),
            said(&logged_out_failures)
        ),
        first_success_since(&attempts, "docker-config", login).map(|t| t - login),
    );

    // Kubelet's Secret update: a new dated dir, `..data` swapped by one rename.
    mount.swap(&logged_out);
    let out = Instant::now();
    load.wait_until(
        "a pull to fail once the swapped-in config lacks the login",
        |a| !failures_between(a, "docker-config", out, Instant::now()).is_empty(),
    );
    mount.swap(&other_login());
    let swapped = Instant::now();
    load.wait_until("pulls to succeed after the swap back", |a| {
        succeeded_since(a, "docker-config", swapped)
    });
    let attempts = load.stop();
    let swap_failures = failures_between(&attempts, "docker-config", out, swapped);
    for failure in logged_out_failures.iter().chain(&swap_failures) {
        assert!(
            failure.contains("403") || failure.contains("401"),
            "a pull without the login failed for another reason than the refusal: {failure}"
        );
    }
    let warm_failures: Vec<&str> = WARM
        .iter()
        .flat_map(|s| failures_between(&attempts, s, begun, Instant::now()))
        .collect();
    assert!(warm_failures.is_empty(), "{warm_failures:#?}");
    matrix_row(
        "docker config replaced by an atomic symlink swap (kubelet Secret style)",
        &format!(
            "other sources' pulls went on; {} pulls failed while the swapped-in config lacked the login: {}",
            swap_failures.len(),
            said(&swap_failures)
        ),
        first_success_since(&attempts, "docker-config", swapped).map(|t| t - swapped),
    );
}

// ---------------------------------------------------------------- disk full

/// A 64 KiB tmpfs at `dir`, filled up but for nothing.
fn full_tmpfs(dir: &Path) {
    let mount = credgate_integration::require_program("mount", "mount");
    let status = std::process::Command::new(mount)
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(dir)
        .status()
        .expect("mount tmpfs");
    assert!(status.success(), "mount tmpfs on {}", dir.display());
}

fn fill(dir: &Path) {
    let mut filler = std::fs::File::create(dir.join("filler")).expect("create filler");
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();
}

fn unmount(dir: &Path) {
    let umount = credgate_integration::require_program("umount", "mount");
    let _ = std::process::Command::new(umount).arg(dir).status();
}

/// Every file under `dir` but the filler, with its contents.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n != "filler") {
                found.push((
                    path.display().to_string(),
                    std::fs::read(&path).unwrap_or_default(),
                ));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn a_full_disk_fails_install_and_the_mirror_secret_clearly_and_leaves_no_half_written_file() {
    let _serial = serial();
    let rig = Arc::new(Rig::start());
    let load = Load::start(&rig, warm_streams(&rig));
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &WARM, begun)
    });
    let scratch = tempfile::tempdir().expect("scratch");
    let disk = scratch.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mkdir disk");
    full_tmpfs(&disk);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // install: containerd's config and the hosts dir on the full disk.
        let containerd_config = disk.join("config.toml");
        std::fs::copy(rig.containerd.config_path(), &containerd_config).expect("copy config");
        let hosts_dir = disk.join("certs.d");
        std::fs::create_dir_all(&hosts_dir).expect("mkdir certs.d");
        fill(&disk);
        let before = files_under(&disk);
        let install = credgate_integration::attack::credgate_cli(
            &rig.daemon.config_path(),
            &[
                "install",
                "--containerd-config",
                containerd_config.to_str().expect("utf-8"),
                "--hosts-dir",
                hosts_dir.to_str().expect("utf-8"),
            ],
        );
        install.assert_failure();
        let stderr = install.stderr.trim();
        assert!(
            stderr.contains("No space left on device") && stderr.contains(&*disk.to_string_lossy()),
            "install on a full disk: {install}"
        );
        assert_eq!(
            files_under(&disk),
            before,
            "install on a full disk left a changed or half-written file"
        );

        // serve: the mirror secret it would generate on the full disk.
        let secret = disk.join("mirror-secret");
        let config = scratch.path().join("config.toml");
        credgate_integration::attack::write_file(
            &config,
            &format!(
                "[listen]\nsocket = {:?}\nmirror = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nmirror_secret_file = {:?}\n",
                scratch.path().join("s.sock").display().to_string(),
                secret.display().to_string()
            ),
            0o600,
        );
        let serve = credgate_integration::attack::credgate_cli(&config, &["serve"]);
        serve.assert_failure();
        assert!(
            serve.stderr.contains("No space left on device")
                && serve.stderr.contains("mirror-secret"),
            "serve on a full disk: {serve}"
        );
        assert!(!secret.exists(), "a half-written mirror secret was left");
        assert_eq!(files_under(&disk), before);
        (one_line_of(&install.stderr), one_line_of(&serve.stderr))
    }));
    unmount(&disk);
    let (install_error, serve_error) = result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    let attempts = load.stop();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    assert!(failed.is_empty(), "pulls failed meanwhile: {failed:#?}");
    matrix_row(
        "disk full when install writes hosts.toml and its state, and when serve writes the mirror secret",
        &format!(
            "all {} pulls went on; install: `{}`; serve: `{}`; no file changed or half-written",
            attempts.len(),
            install_error.replace('|', "/"),
            serve_error.replace('|', "/")
        ),
        None,
    );
}

/// The line that says why (the one naming the full disk), else the last one.
fn one_line_of(text: &str) -> String {
    text.lines()
        .find(|l| l.contains("No space left"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect()
}

// ---------------------------------------------------------------- the clock

/// libfaketime (Debian's `faketime`): preloaded into credgate, it makes every clock credgate
/// reads, the monotonic one its token cache measures by included, run at the rate
/// [`CREDGATE_CLOCK`] sets. Its clocks never go back (tokio's timers need that), they only
/// fall behind the world's, as a suspended node's monotonic clock falls behind the wall
/// clock: from the registry's side, time jumps forward past the expiry of every token
/// credgate holds.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// credgate's clocks run at 1/20 of the world's speed.
const CREDGATE_CLOCK: &str = "+0 x0.05";

#[test]
fn when_the_registry_clock_runs_past_token_expiry_a_refused_cached_token_is_fetched_anew() {
    let _serial = serial();
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: apt-get install -t bookworm faketime \
         (integration/test-all.sh does this)"
    );
    // Tokens live 5 s: to credgate, 100 s of the world's time.
    let rig = Arc::new(Rig::start_with(&RigOptions {
        token_lifetime: Some(5),
        daemon_env: vec![
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            ("FAKETIME".into(), CREDGATE_CLOCK.into()),
            // libfaketime re-reads its spec every 10 s by default and a rate's clock can leap
            // at that refresh: a leap past the endpoint's 10 s header-read timeout closed every
            // kept-alive connection at once (CI, 2026-11-30). Computed on every call, it can't.
            ("FAKETIME_NO_CACHE".into(), "1".into()),
        ],
        ..RigOptions::default()
    }));
    let load = Load::start(&rig, warm_streams(&rig));
    let begun = Instant::now();
    load.wait_until("every stream to pull once", |a| {
        all_succeeded_since(a, &WARM, begun)
    });
    let credgate_401s = || {
        rig.registry
            .requests()
            .iter()
            // Once warm, credgate authorizes up front: a 401 is a token the registry refused.
            .filter(|r| r.status == 401)
            .count()
    };
    let before = credgate_401s();
    let fetched_before = rig.tokens.request_count();
    let jumped = Instant::now();
    let deadline = Instant::now() + WAIT;
    while credgate_401s() == before {
        assert!(
            Instant::now() < deadline,
            "the registry never refused a token credgate held after the jump:\n{}",
            tail(&rig.registry.access_log(), 20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let refused = Instant::now();
    load.wait_until(
        "every stream to pull after the registry refused a stale token",
        |a| all_succeeded_since(a, &WARM, refused),
    );
    assert!(
        rig.tokens.request_count() > fetched_before,
        "no token was fetched anew after the registry refused the stale one"
    );
    let attempts = load.stop();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "pulls failed across the clock jump: {failed:#?}\ncredgate's log:\n{}",
        tail(&rig.daemon.log(), 40)
    );
    let recovered = WARM
        .iter()
        .filter_map(|s| first_success_since(&attempts, s, refused))
        .max()
        .map(|t| t - refused);
    matrix_row(
        "the clock jumps forward past token expiry (credgate's clocks run at 1/20 speed under libfaketime)",
        &format!(
            "the registry refused a token credgate still held as fresh {:.0} s in; credgate fetched a new one and all {} pulls succeeded",
            (refused - jumped).as_secs_f64(),
            attempts.len()
        ),
        recovered,
    );
}
