//! The CPU floor of relaying bytes from a TLS upstream: what decrypting them costs with the
//! crates credgate uses (rustls over ring, TLS 1.3 AES-128-GCM, the suite Go's registry picks
//! on a CPU with AES instructions), and one SHA-256 of them with ring. Measured in-process
//! on this thread's CPU clock, so other load on the machine barely moves it.

use std::io::{Read, Write};
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
    let per_gib = |d: Duration| d.mul_f64((1u64 << 30) as f64 / (bytes >> 20 << 20) as f64);
    Floor {
        decrypt: per_gib(decrypt),
        sha256: per_gib(sha256),
    }
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
