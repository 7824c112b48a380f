//! The CPU floor of relaying bytes from a TLS upstream: what decrypting them costs with the
//! crates credgate uses (rustls over ring, TLS 1.3 AES-128-GCM, the suite Go's registry picks
//! on a CPU with AES instructions), and one SHA-256 of them with ring. Measured in-process
//! on this thread's CPU clock, so other load on the machine barely moves it.
//!
//! Beside it, the kernel's share that no proxy avoids: relaying the same bytes from one
//! loopback TCP connection to another (one `recv` and one `send` of every byte, 256 KiB at a
//! time). That is not part of the issue's floor; it says how much of what is above the floor
//! is the sockets themselves.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use credgate_integration::pki::TestCa;
use nix::sys::resource::{getrusage, UsageWho};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// CPU seconds per GiB of each part of the floor.
pub struct Floor {
    /// TLS record decryption, plaintext copied out as the endpoint reads it.
    pub decrypt: Duration,
    /// One SHA-256 (ring) of the same bytes.
    pub sha256: Duration,
    /// Receiving the same bytes from one loopback TCP socket and sending them on another.
    pub relay: Duration,
}

impl Floor {
    /// Prints credgate's CPU seconds per GiB against this floor: `hashing` with
    /// `verify_digests = "always"`, `trusting` (when measured) without its own SHA-256.
    pub fn print_against(&self, hashing: f64, trusting: Option<f64>) {
        let (decrypt, sha, relay) = (
            self.decrypt.as_secs_f64(),
            self.sha256.as_secs_f64(),
            self.relay.as_secs_f64(),
        );
        println!("measured in this run (rustls/ring TLS 1.3 AES-128-GCM decryption; ring SHA-256;");
        println!("a loopback TCP relay of the same bytes, the sockets' share, {relay:.2} s/GiB):");
        println!(
            "  {:<9} {:>8} {:>28} {:>10} {:>18}",
            "", "credgate", "floor", "vs floor", "vs floor + relay"
        );
        let row = |name: &str, spent: f64, floor: f64, parts: String| {
            println!(
                "  {name:<9} {spent:>6.2} s {floor:>6.2} s {parts:<20} {:>9.2}× {:>17.2}×",
                spent / floor,
                spent / (floor + relay)
            );
        };
        row(
            "hashing",
            hashing,
            decrypt + sha,
            format!("({decrypt:.2} + {sha:.2} SHA)"),
        );
        if let Some(trusting) = trusting {
            row("trusting", trusting, decrypt, "(decrypt)".to_string());
        }
    }
}

/// Measures the floor over `bytes` bytes (rounded down to MiB).
pub fn measure(bytes: usize) -> Floor {
    let (mut server, mut client) = connected();
    // The sender queues a whole MiB of records at once.
    server.set_buffer_limit(None);
    let plaintext = vec![0x5a_u8; 1 << 20];
    let mut out = vec![0u8; 64 << 10];
    let mut wire = Vec::with_capacity((1 << 20) + (1 << 16));
    let (mut decrypt, mut sha256) = (Duration::ZERO, Duration::ZERO);
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for _ in 0..bytes >> 20 {
        server.writer().write_all(&plaintext).expect("plaintext in");
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).expect("records out");
        }
        let started = thread_cpu();
        let mut records = &wire[..];
        let mut received = 0;
        while !records.is_empty() {
            client.read_tls(&mut records).expect("records in");
            client.process_new_packets().expect("decrypt");
            loop {
                match client.reader().read(&mut out) {
                    Ok(0) => break,
                    Ok(n) => received += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("plaintext out: {e}"),
                }
            }
        }
        decrypt += thread_cpu() - started;
        assert_eq!(received, plaintext.len(), "the floor decrypted everything");
        let started = thread_cpu();
        context.update(&plaintext);
        sha256 += thread_cpu() - started;
    }
    std::hint::black_box(context.finish());
    let relay = relay(bytes >> 20 << 20);
    let per_gib = |d: Duration| d.mul_f64((1u64 << 30) as f64 / (bytes >> 20 << 20) as f64);
    Floor {
        decrypt: per_gib(decrypt),
        sha256: per_gib(sha256),
        relay: per_gib(relay),
    }
}

/// This thread's CPU time relaying `bytes` from a loopback TCP connection to another, with a
/// writer and a reader on threads of their own.
fn relay(bytes: usize) -> Duration {
    let listener =
        |what| TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{what}: {e}"));
    let (upstream, downstream) = (listener("upstream"), listener("downstream"));
    let upstream_addr = upstream.local_addr().expect("upstream address");
    let writer = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(upstream_addr).expect("connect upstream");
        let chunk = vec![0x5a_u8; 1 << 20];
        for _ in 0..bytes >> 20 {
            socket.write_all(&chunk).expect("write upstream");
        }
    });
    let downstream_addr = downstream.local_addr().expect("downstream address");
    let reader = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(downstream_addr).expect("connect downstream");
        std::io::copy(&mut socket, &mut std::io::sink()).expect("read downstream")
    });
    let (mut from, _) = upstream.accept().expect("accept upstream");
    let (mut to, _) = downstream.accept().expect("accept downstream");
    for socket in [&from, &to] {
        socket.set_nodelay(true).expect("TCP_NODELAY");
    }
    let mut buffer = vec![0u8; 256 << 10];
    let started = thread_cpu();
    loop {
        let n = from.read(&mut buffer).expect("relay read");
        if n == 0 {
            break;
        }
        to.write_all(&buffer[..n]).expect("relay write");
    }
    let spent = thread_cpu() - started;
    drop(to);
    writer.join().expect("writer");
    let relayed = reader.join().expect("reader");
    assert_eq!(relayed, bytes as u64, "the relay passed everything");
    spent
}

/// This thread's user plus system CPU time.
fn thread_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

/// A server and a client connection, handshake done, on TLS 1.3 AES-128-GCM.
fn connected() -> (ServerConnection, ClientConnection) {
    let ca = TestCa::generate();
    let cert = ca.issue(&["floor.test"]);
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::ring::default_provider()
    });
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key"),
        )
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("CA"))
        .expect("root");
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");
    let mut client = ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("floor.test").expect("name"),
    )
    .expect("client");
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client hello");
        }
        server.read_tls(&mut &wire[..]).expect("server in");
        server.process_new_packets().expect("server handshake");
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).expect("server flight");
        }
        client.read_tls(&mut &wire[..]).expect("client in");
        client.process_new_packets().expect("client handshake");
    }
    (server, client)
}
