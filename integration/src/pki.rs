//! A throwaway certificate authority for the node: leaf certificates for the test host names,
//! and the self-signed ES256 key a token server signs registry tokens with.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA every node test trusts (the node bundles it into the system trust store).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, both PEM.
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`CertifiedKey::write`] put the PEM files.
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// The process-wide CA; the node trusts it, so every server in a node test uses it.
    pub fn shared() -> &'static TestCa {
        static CA: OnceLock<TestCa> = OnceLock::new();
        CA.get_or_init(TestCa::generate)
    }

    /// A fresh CA, trusted by nobody until its PEM is handed out.
    pub fn generate() -> TestCa {
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "credgate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `dir/ca.pem` (for a `ca_file` setting) and returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write ca.pem");
        path
    }

    /// A TLS server certificate for `dns_names` (the first is also the common name).
    pub fn issue(&self, dns_names: &[&str]) -> CertifiedKey {
        self.issue_for(dns_names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A TLS client certificate for `name` (a server that requires client certificates
    /// from this CA lets it in).
    pub fn issue_client(&self, name: &str) -> CertifiedKey {
        self.issue_for(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue_for(&self, dns_names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertifiedKey {
        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid DNS names");
        params.distinguished_name.push(
            DnType::CommonName,
            dns_names.first().copied().unwrap_or("test"),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl CertifiedKey {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key` (the key 0600).
    pub fn write(&self, dir: &Path, stem: &str) -> PemFiles {
        use std::os::unix::fs::PermissionsExt;
        let files = PemFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, &self.cert_pem).expect("write cert");
        std::fs::write(&files.key, &self.key_pem).expect("write key");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        files
    }
}

/// A self-signed P-256 certificate and key that signs registry tokens. distribution trusts
/// it through `auth.token.rootcertbundle` and finds it in each token's `x5c` header.
pub struct TokenSigningKey {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER, as ring's `EcdsaKeyPair::from_pkcs8` takes it.
    pub pkcs8_der: Vec<u8>,
}

impl TokenSigningKey {
    pub fn generate(common_name: &str) -> TokenSigningKey {
        let mut params = CertificateParams::new(Vec::new()).expect("signing cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let cert = params.self_signed(&key).expect("self-sign signing cert");
        TokenSigningKey {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            pkcs8_der: key.serialize_der(),
        }
    }
}
