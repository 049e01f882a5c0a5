//! HTTPS for `ds-rm serve`.
//!
//! Clients reach a hub over the public internet, so the operator normally terminates TLS in
//! the hub itself rather than depending on a proxy. This module turns the `tls_cert` /
//! `tls_key` settings into a rustls server config (ring provider, TLS 1.3 and 1.2);
//! [`crate::listener`] serves the router over it.

use crate::config::Config;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS settings could not be turned into a server config. Each variant names the
/// setting or file at fault so an operator can fix the config without reading code.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls_cert` is set without `tls_key`; serving plain HTTP instead would silently downgrade.
    #[error("tls_cert is set but tls_key is missing: set both to serve HTTPS, or neither for HTTP")]
    MissingKey,
    /// `tls_key` is set without `tls_cert`; serving plain HTTP instead would silently downgrade.
    #[error("tls_key is set but tls_cert is missing: set both to serve HTTPS, or neither for HTTP")]
    MissingCert,
    /// A certificate or key file could not be read.
    #[error("reading {what} {path}: {source}")]
    Read {
        /// Which setting the file belongs to (`tls_cert` or `tls_key`).
        what: &'static str,
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// A certificate or key file is not valid PEM of the expected kind.
    #[error("parsing {what} {path}: {source}")]
    Pem {
        /// Which setting the file belongs to (`tls_cert` or `tls_key`).
        what: &'static str,
        /// File path.
        path: PathBuf,
        /// PEM parser error.
        source: rustls_pki_types::pem::Error,
    },
    /// The key file holds no private-key block.
    #[error("tls_key {0} contains no PEM private key")]
    NoKey(PathBuf),
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("tls_cert {0} contains no PEM certificate")]
    NoCertificate(PathBuf),
    /// rustls rejected the chain/key pair (e.g. the key does not match the certificate).
    #[error("building the TLS server config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server config for `cfg`: `None` for plain HTTP (neither setting), an error if only one
/// of `tls_cert` / `tls_key` is set or the files are unusable. Checked before the hub opens
/// its store so a bad TLS setup fails fast.
pub fn server_config(cfg: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(TlsError::MissingKey),
        (None, Some(_)) => Err(TlsError::MissingCert),
        (Some(cert), Some(key)) => load_server_config(cert, key).map(Some),
    }
}

/// Builds a rustls server config from a PEM certificate chain (leaf first) and a PEM private
/// key (PKCS#8, PKCS#1 or SEC1), with the ring provider, TLS 1.3/1.2 and HTTP/1.1 ALPN.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_chain(cert)?;
    let key = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The hub speaks HTTP/1.1 only; advertising it lets ALPN-aware clients settle quickly.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read("tls_cert", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "tls_cert",
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("tls_key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_owned()),
        source => TlsError::Pem {
            what: "tls_key",
            path: path.to_owned(),
            source,
        },
    })
}
