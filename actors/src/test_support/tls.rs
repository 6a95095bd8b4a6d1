//! A private certificate authority for the TLS tests.

use std::sync::Arc;

/// A certificate authority and a server configuration with a certificate
/// it issued for `localhost`: the TLS servers of the tests of both clients
/// (webhooks, git over https) and of the end-to-end https remote.
pub fn authority_and_localhost() -> (
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
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(crate::tls::crypto_provider()))
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
