//! The one TLS client configuration: rustls on ring, certificates
//! checked by the platform's verifier (`rustls-platform-verifier`; on Linux
//! the system's roots, or only those `SSL_CERT_FILE` / `SSL_CERT_DIR` name
//! when either is set, read through `rustls-native-certs`). Webhooks
//! ([`crate::webhook_client`]), git over https (`git/tls.rs`) and brokers
//! (`broker/tls.rs`: `tls://`, `amqps://`, `rediss://`) all connect with
//! it, so an operator trusts a private authority once for all of them.
//!
//! ring is the tree's one crypto provider (sqlx's rustls runs on it too).
//! reqwest, built without a provider of its own, takes the process default:
//! [`install_crypto_provider`] sets it, and every place that builds a
//! reqwest client calls it first.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

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
    let mut config = checking(extra_roots, None)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The configuration of a connection to a broker: the same verifier and
/// roots as [`client_config`], no ALPN (a broker speaks its own protocol,
/// not HTTP). With `name`, the certificate is checked against that name
/// whatever name the connection is opened with: a client that connects to
/// the address the address rule admitted (NATS's) still checks the URL's
/// host.
pub(crate) fn broker_config(
    name: Option<ServerName<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    checking(Vec::new(), name)
}

/// [`broker_config`] for a client that reports a failed handshake only in
/// words (amqprs): its verifier keeps the certificate's refusal in
/// `refusal`, for Herald to word it.
pub(crate) fn broker_config_noting(
    refusal: Arc<std::sync::Mutex<Option<rustls::Error>>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    configured(Checked {
        inner: verifier(Vec::new())?,
        name: None,
        refusal: Some(refusal),
    })
}

/// A configuration offering no ALPN, checking with the platform's verifier
/// (and `extra_roots`), against `name` when given.
fn checking(
    extra_roots: Vec<CertificateDer<'static>>,
    name: Option<ServerName<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = verifier(extra_roots)?;
    match name {
        Some(name) => configured(Checked {
            inner: verifier,
            name: Some(name),
            refusal: None,
        }),
        None => configured(verifier),
    }
}

/// The platform's verifier, with `extra_roots` beside its roots.
fn verifier(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<rustls_platform_verifier::Verifier, rustls::Error> {
    let provider = Arc::new(crypto_provider());
    if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider)
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)
    }
}

/// A client configuration on [`crypto_provider`] checking with `verifier`.
fn configured(
    verifier: impl ServerCertVerifier + 'static,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    )
}

/// The platform's verifier, checking the certificate against `name` when
/// given (not the name the connection was opened with), and keeping its
/// refusal in `refusal` when given.
#[derive(Debug)]
struct Checked {
    inner: rustls_platform_verifier::Verifier,
    name: Option<ServerName<'static>>,
    refusal: Option<Arc<std::sync::Mutex<Option<rustls::Error>>>>,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        opened_with: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(opened_with);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            .inspect_err(|refused| {
                if let Some(refusal) = &self.refusal {
                    *refusal
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(refused.clone());
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a server's certificate was refused, in words that quote nothing of
/// it: "is not trusted: …", "is not valid for its host name", …
pub(crate) fn certificate_refusal(err: &CertificateError) -> &'static str {
    match err {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "is not trusted: it was not issued by a certificate authority this server trusts"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "is not valid for its host name"
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => "has expired or is not valid yet",
        CertificateError::Revoked => "has been revoked",
        _ => "was not accepted",
    }
}

/// The TLS error somewhere in `err`'s chain of sources: the error itself,
/// or a client's error (an `io::Error` first of all) wrapping the
/// handshake's.
pub(crate) fn rustls_error_in<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(error) = current {
        if let Some(rustls) = error.downcast_ref::<rustls::Error>() {
            return Some(rustls);
        }
        if let Some(rustls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(rustls);
        }
        current = error.source();
    }
    None
}

/// Why the TLS handshake with `peer` ("the broker", "the endpoint")
/// failed, in words that quote nothing the peer sent: its certificate's
/// refusal ("the endpoint's TLS certificate is not trusted: …"), or the
/// protocol's reason.
pub(crate) fn handshake_refusal(err: &rustls::Error, peer: &str) -> String {
    match err {
        rustls::Error::InvalidCertificate(refused) => {
            format!("{peer}'s TLS certificate {}", certificate_refusal(refused))
        }
        // These name only protocol values, never the peer's data.
        rustls::Error::AlertReceived(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::NoApplicationProtocol => {
            format!("the TLS handshake with {peer} failed: {err}")
        }
        _ => format!("the TLS handshake with {peer} failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS handshake with a server whose certificate the test authority
    /// issued for `localhost`, opened by address; the client checks `name`.
    async fn handshake(name: &str) -> std::io::Result<Vec<Vec<u8>>> {
        let (root, server) = crate::test_support::tls::authority_and_localhost();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let at = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let checked = ServerName::try_from(name.to_owned()).expect("a name");
        let config = checking(vec![root], Some(checked)).expect("a configuration");
        let offered = config.alpn_protocols.clone();
        let tcp = tokio::net::TcpStream::connect(at).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(at.ip().into()), tcp)
            .await?;
        Ok(offered)
    }

    #[tokio::test]
    async fn a_broker_connection_checks_the_urls_host_and_offers_no_alpn() {
        let offered = handshake("localhost")
            .await
            .expect("the URL's host is checked");
        assert!(offered.is_empty(), "no ALPN to brokers: {offered:?}");
        let refused = handshake("broker.example")
            .await
            .expect_err("a certificate for another host");
        let inner = refused
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .expect("a rustls error");
        assert!(
            matches!(inner, rustls::Error::InvalidCertificate(e) if certificate_refusal(e).contains("host name")),
            "{inner:?}"
        );
        let webhooks = client_config(Vec::new()).expect("a configuration");
        assert_eq!(webhooks.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
