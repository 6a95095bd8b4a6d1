//! The one TLS client configuration: rustls on aws-lc-rs, certificates
//! checked by the platform's verifier (`rustls-platform-verifier`; on Linux
//! the system's roots, or only those `SSL_CERT_FILE` / `SSL_CERT_DIR` name
//! when either is set, read through `rustls-native-certs`). Webhooks
//! ([`crate::webhook_client`]) and git over https (`git/tls.rs`) both
//! connect with it, so an operator trusts a private authority once for both.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// A client configuration checking servers against the platform's roots
/// (and `extra_roots`, for tests), offering HTTP/1.1 by ALPN. Fails when no
/// root certificate could be loaded.
pub(crate) fn client_config(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
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
