//! A private certificate authority for the TLS tests.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority, and a server certificate it issued with the
/// certificate's key (PKCS #8, DER): for the tests' own TLS servers, and for
/// servers of other kinds that read them from files (a NATS or Redis
/// server started by a test).
pub struct Issued {
    pub authority: CertificateDer<'static>,
    pub certificate: CertificateDer<'static>,
    pub key: Vec<u8>,
}

impl Issued {
    /// A fresh authority and a certificate it issued for `names` (host
    /// names, or address literals).
    pub fn for_names(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut params = CertificateParams::new(Vec::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("a key");
        let ca = params.self_signed(&ca_key).expect("a CA");
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let leaf = CertificateParams::new(names)
            .expect("names")
            .signed_by(&key, &issuer)
            .expect("a certificate");
        Self {
            authority: ca.der().clone(),
            certificate: leaf.der().clone(),
            key: key.serialize_der(),
        }
    }

    /// A TLS server configuration presenting the certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(crate::tls::crypto_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![self.certificate.clone()],
                    PrivateKeyDer::Pkcs8(self.key.clone().into()),
                )
                .expect("a server config");
        Arc::new(config)
    }
}

/// A certificate authority and a server configuration with a certificate
/// it issued for `localhost`: the TLS servers of the tests of both clients
/// (webhooks, git over https) and of the end-to-end https remote.
pub fn authority_and_localhost() -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
    let issued = Issued::for_names(&["localhost"]);
    let config = issued.server_config();
    (issued.authority, config)
}
