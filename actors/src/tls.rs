//! The one TLS client configuration: rustls on ring, certificates
//! checked by the platform's verifier (`rustls-platform-verifier`; on Linux
//! the system's roots, or only those `SSL_CERT_FILE` / `SSL_CERT_DIR` name
//! when either is set, read through `rustls-native-certs`). Webhooks
//! ([`crate::webhook_client`]) and git over https (`git/tls.rs`) both
//! connect with it, so an operator trusts a private authority once for both.
//!
//! ring is the tree's one crypto provider (sqlx's rustls runs on it too).
//! reqwest, built without a provider of its own, takes the process default:
//! [`install_crypto_provider`] sets it, and every place that builds a
//! reqwest client calls it first.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

/// The crypto provider of every TLS connection Herald makes.
pub fn crypto_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Makes [`crypto_provider`] the process default, which reqwest's clients
/// use; a no-op once done. [`http_client_builder`] calls it; call it before
/// building any other client that takes the default (OTLP's blocking one).
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Two threads may race here: the loser's error only says a default
        // is set, and it is the same provider.
        let _ = crypto_provider().install_default();
    }
}

/// A reqwest client builder, the crypto provider installed: where every
/// reqwest client starts (building one without a default provider panics).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A client configuration checking servers against the platform's roots
/// (and `extra_roots`, for tests), offering HTTP/1.1 by ALPN. Fails when no
/// root certificate could be loaded.
pub(crate) fn client_config(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(crypto_provider());
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
    }?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
