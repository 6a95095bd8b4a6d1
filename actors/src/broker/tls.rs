//! TLS to brokers (`tls://`, `amqps://`, `rediss://`): the one client
//! configuration of `crate::tls` (rustls on ring, the platform's verifier,
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` for a private authority), offering no
//! ALPN. The certificate is checked against the URL's host while the TCP
//! connection goes to the address the address rule admitted
//! ([`super::Address::resolve`]): no second lookup, as webhooks do.
//!
//! A refused certificate or a failed handshake is a [`Failure`] of class
//! `tls`, in Herald's words (never the certificate's contents): the app goes
//! through backoff and its breaker as for an endpoint that is down.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use entity::ErrorClass;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Failure;

/// A TLS failure: the connection cannot be used again.
fn tls_failure(message: String) -> Failure {
    Failure {
        class: ErrorClass::Tls,
        message,
        broken: true,
    }
}

/// The name the broker's certificate must be valid for: the URL's host (a
/// name, or an address literal).
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, Failure> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| tls_failure("the broker's host name cannot be checked by TLS".to_owned()))
}

/// The client configuration for a broker; with `name`, certificates are
/// checked against it whatever the connection was opened with.
pub(super) fn config(name: Option<ServerName<'static>>) -> Result<rustls::ClientConfig, Failure> {
    crate::tls::broker_config(name).map_err(unloaded)
}

/// The certificate authorities could not be loaded: logged, and worded
/// for the attempt log.
fn unloaded(err: rustls::Error) -> Failure {
    tracing::warn!(error = %err, "the certificate authorities for TLS to brokers could not be loaded");
    tls_failure("this server could not load its trusted certificate authorities".to_owned())
}

/// A TCP connection to `at` (`who`: the broker, for the message).
pub(super) async fn tcp(at: SocketAddr, who: &str) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(at)
        .await
        .map_err(|err| Failure::connect(format!("{who} could not be reached ({})", err.kind())))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// TLS over a TCP connection to `at`, the certificate checked for `host`.
pub(super) async fn connect(
    at: SocketAddr,
    host: &str,
    who: &str,
) -> Result<TlsStream<TcpStream>, Failure> {
    let name = server_name(host)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config(None)?));
    let stream = tcp(at, who).await?;
    connector.connect(name, stream).await.map_err(|err| {
        failure_in(&err).unwrap_or_else(|| {
            Failure::connect(format!(
                "the connection to {who} broke during the TLS handshake ({})",
                err.kind()
            ))
        })
    })
}

/// What amqprs makes TLS with for `amqps://`: Herald's client
/// configuration, the certificate checked for `host` (the URL's), and the
/// place where its verifier keeps a refusal ([`refused`]).
pub(super) fn amqp_adaptor(host: &str) -> Result<(amqprs::tls::TlsAdaptor, Refusal), Failure> {
    server_name(host)?;
    let refusal = Refusal::default();
    let config = crate::tls::broker_config_noting(Arc::clone(&refusal)).map_err(unloaded)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok((
        amqprs::tls::TlsAdaptor::new(connector, host.to_owned()),
        refusal,
    ))
}

/// Where a verifier keeps its refusal of a certificate.
pub(super) type Refusal = Arc<std::sync::Mutex<Option<rustls::Error>>>;

/// The failure a verifier noted in `refusal`, if it refused.
pub(super) fn refused(refusal: &Refusal) -> Option<Failure> {
    let refused = refusal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()?;
    Some(tls_failure(crate::tls::handshake_refusal(
        &refused,
        "the broker",
    )))
}

/// The TLS failure somewhere in `err`'s chain of sources, if there is one:
/// a client's error that wraps the handshake's.
pub(super) fn failure_in(err: &(dyn Error + 'static)) -> Option<Failure> {
    crate::tls::rustls_error_in(err)
        .map(|refused| tls_failure(crate::tls::handshake_refusal(refused, "the broker")))
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn a_certificate_refusal_found_in_a_chain_is_a_tls_failure() {
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let failure = failure_in(&refused).expect("a TLS failure");
        assert_eq!(failure.class, ErrorClass::Tls);
        assert!(
            failure.message.contains("not trusted"),
            "{}",
            failure.message
        );
        let wrong_name =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert!(
            failure_in(&wrong_name)
                .expect("a TLS failure")
                .message
                .contains("host name")
        );
        assert!(failure_in(&io::Error::from(io::ErrorKind::ConnectionReset)).is_none());
    }
}
