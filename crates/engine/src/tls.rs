//! Trust for `https://` and `wss://`: certificates are always verified
//! (rustls, the bundled web roots), plus any CA the user passes as PEM — for a
//! private or self-signed server. A failed verification is `ERR_SYNC_TLS`.

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

/// Adds the user's CAs to an HTTP client.
pub fn trust_http(mut builder: reqwest::ClientBuilder, ca: Option<&str>) -> Result<reqwest::ClientBuilder> {
    if let Some(pem) = ca {
        for cert in certificates(pem)? {
            let cert = reqwest::Certificate::from_der(&cert).map_err(|e| Error::InvalidArg(format!("ca: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// A rustls client config with the web roots and the user's CAs (for WebSocket).
pub fn client_config(ca: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| Error::InvalidArg(format!("ca: {e}")))?;
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
