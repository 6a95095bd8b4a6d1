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

/// A certificate authority and a server configuration with a certificate
/// it issued for `localhost`, for the tests of both TLS clients.
#[cfg(test)]
pub(crate) fn authority_and_localhost() -> (
    rustls::pki_types::CertificateDer<'static>,
    Arc<rustls::ServerConfig>,
) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut params = CertificateParams::new(Vec::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("a key");
    let ca = params.self_signed(&ca_key).expect("a CA");
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("a key");
    let leaf = CertificateParams::new(vec!["localhost".into()])
        .expect("a name")
        .signed_by(&key, &issuer)
        .expect("a certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("a server config");
    (ca.der().clone(), Arc::new(config))
}
