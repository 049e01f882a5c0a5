//! A throwaway certificate authority for HTTPS tests.
//!
//! End-to-end tests must exercise the hub's real TLS path without touching the system trust
//! store or the network, so each test mints its own CA and leaf certificates into a temporary
//! directory and hands the CA to exactly the clients that should trust it.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Why the test CA could not be created; separate variants so a failing test says whether
/// certificate generation or the file system is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    /// rcgen could not generate a key or certificate (e.g. a domain that is not a DNS name).
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
}

/// Paths of one leaf certificate and its key, in the form a hub's `tls_cert` / `tls_key`
/// settings take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFiles {
    /// PEM certificate chain: the leaf followed by the CA certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the leaf.
    pub key: PathBuf,
}

/// What [`generate_test_ca`] wrote: the CA to trust and one leaf per requested domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCa {
    /// PEM certificate of the CA (the root clients must trust).
    pub ca_cert: PathBuf,
    /// The CA certificate's PEM text, ready for `Transport::with_root_ca` and friends.
    pub ca_pem: Vec<u8>,
    /// Leaf files by domain.
    pub leaves: BTreeMap<String, LeafFiles>,
}

impl TestCa {
    /// The leaf files for `domain`, if it was requested.
    pub fn leaf(&self, domain: &str) -> Option<&LeafFiles> {
        self.leaves.get(domain)
    }
}

/// Generates a fresh CA in `dir` (`ca.pem`) and, for each domain, a leaf certificate signed by
/// it (`<domain>.crt.pem`, `<domain>.key.pem`) valid for that DNS name, `localhost` and
/// `127.0.0.1`, so tests can reach a hub by loopback address while the certificate still
/// names its domain. The CA key is never written: nothing else can be signed later.
pub fn generate_test_ca(dir: &Path, domains: &[&str]) -> Result<TestCa, TestCaError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mimi-rm throwaway test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let ca_pem = ca.pem();
    let ca_cert = dir.join("ca.pem");
    write(&ca_cert, &ca_pem)?;

    let mut leaves = BTreeMap::new();
    for &domain in domains {
        let mut params = CertificateParams::new(vec![domain.to_owned(), "localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, domain);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let files = LeafFiles {
            cert: dir.join(format!("{domain}.crt.pem")),
            key: dir.join(format!("{domain}.key.pem")),
        };
        write(&files.cert, &format!("{}{}", cert.pem(), ca_pem))?;
        write(&files.key, &key.serialize_pem())?;
        leaves.insert(domain.to_owned(), files);
    }
    Ok(TestCa {
        ca_cert,
        ca_pem: ca_pem.into_bytes(),
        leaves,
    })
}

fn write(path: &Path, text: &str) -> Result<(), TestCaError> {
    std::fs::write(path, text).map_err(|source| TestCaError::Write {
        path: path.to_owned(),
        source,
    })
}
