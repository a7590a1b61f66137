//! Trust for `https://` and `wss://`: certificates are always verified
//! (rustls), against the bundled web roots, the operating system's trust
//! store (where a company adds its proxy's CA; `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` override where it is read on Linux), the PEM file named by
//! `NODE_EXTRA_CA_CERTS` (as Node itself honours it), and any CA the user
//! passes as PEM — for a private or self-signed server. One client config serves
//! HTTP, event streams and WebSockets alike. A failed verification is
//! `ERR_SYNC_TLS`.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};

/// The certificates of a PEM text (one or more `CERTIFICATE` blocks).
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::InvalidArg(format!("ca is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidArg("ca holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The user's CAs, checked: a bad one is a bad argument at once, not a
/// failed connection later.
pub fn check_ca(ca: &str) -> Result<()> {
    certificates(ca).map(drop)
}

/// The roots every connection trusts: the web roots, the system's store and
/// `NODE_EXTRA_CA_CERTS`. Read once per process, as Node reads its own:
/// certificates rustls cannot use are skipped, and a store or file that
/// cannot be read leaves the others in force.
fn ambient_roots() -> &'static rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let system = rustls_native_certs::load_native_certs();
        if !system.errors.is_empty() {
            tracing::debug!(errors = ?system.errors, "parts of the system's certificate store could not be read");
        }
        let (added, skipped) = roots.add_parsable_certificates(system.certs);
        tracing::debug!(added, skipped, "certificates trusted from the system's store");
        if let Some(path) = std::env::var_os("NODE_EXTRA_CA_CERTS").filter(|p| !p.is_empty()) {
            let read = std::fs::read_to_string(&path).map_err(|e| e.to_string());
            match read.and_then(|pem| certificates(&pem).map_err(|e| e.to_string())) {
                Ok(certs) => {
                    let (added, skipped) = roots.add_parsable_certificates(certs);
                    tracing::debug!(added, skipped, "certificates trusted from NODE_EXTRA_CA_CERTS");
                }
                // as Node does: warned of, and ignored
                Err(e) => tracing::warn!(path = %path.to_string_lossy(), error = %e, "ignoring NODE_EXTRA_CA_CERTS"),
            }
        }
        roots
    })
}

/// A rustls client config trusting the ambient roots and the user's CAs.
pub fn client_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = ambient_roots().clone();
    if let Some(pem) = ca {
        for cert in certificates(pem)? {
            roots.add(cert).map_err(|e| Error::InvalidArg(format!("ca: {e}")))?;
        }
    }
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

/// A TLS verification failure somewhere in an error's chain, as `Error::Tls`.
pub fn failure(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(Error::Tls(r.to_string()));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return Some(Error::Tls(r.to_string()));
            }
        }
        // some layers wrap the rustls error in their own types: its text is stable
        let text = err.to_string();
        if let Some(at) = text.find("invalid peer certificate") {
            return Some(Error::Tls(text[at..].to_string()));
        }
        next = err.source();
    }
    None
}
