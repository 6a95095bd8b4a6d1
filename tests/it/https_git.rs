//! Git over https end to end: the real binary reads a remote behind TLS
//! (tokio-rustls in front of `git http-backend`) whose certificate a private
//! authority issued, trusted the way an operator trusts one: `SSL_CERT_FILE`
//! naming a bundle that holds it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};

use crate::delivery::{apply, tree_of};
use crate::gitserver::{HttpGitServer, Served, TestRepo};
use crate::helpers::{TestApp, assert_error, onboard, watch};
use crate::receiver::Receiver;

/// A certificate authority (as PEM) and a TLS acceptor with a certificate
/// it issued for `localhost`.
pub(crate) fn authority_and_localhost() -> (String, tokio_rustls::TlsAcceptor) {
    let (authority, config) = actors::test_support::tls::authority_and_localhost();
    (
        pem("CERTIFICATE", &authority),
        tokio_rustls::TlsAcceptor::from(config),
    )
}

/// `der` in PEM under `label` (`CERTIFICATE`, as a CA bundle holds one;
/// `PRIVATE KEY`, a PKCS #8 key).
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A fast Herald trusting `authority` alone (`SSL_CERT_FILE`), its breaker
/// opening on the second failure and probing every second, so that events
/// an endpoint or broker refuses keep attempts in hand while a test changes
/// the destination. The bundle's directory lives as long as the server.
pub(crate) async fn herald_trusting(
    authority: &rustls::pki_types::CertificateDer<'static>,
) -> (TestApp, TempDir) {
    let (dir, trusted) = bundle(&pem("CERTIFICATE", authority));
    let app = TestApp::builder()
        .fast()
        .env("SSL_CERT_FILE", &trusted.display().to_string())
        .envs(&[
            ("HERALD__DELIVERY__MAX_ATTEMPTS", "10"),
            ("HERALD__BREAKER__DELIVERY__THRESHOLD", "2"),
            ("HERALD__BREAKER__DELIVERY__COOLDOWN", "1s"),
        ])
        .spawn()
        .await;
    (app, dir)
}

/// A bundle file holding `pem`, for `SSL_CERT_FILE`.
pub(crate) fn bundle(pem: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a directory for the bundle");
    let path = dir.path().join("ca-bundle.pem");
    std::fs::write(&path, pem).expect("the bundle is written");
    (dir, path)
}

/// Terminates TLS on a loopback port and relays each connection to
/// `backend` in plain HTTP; returns the port. Counts the handshakes that
/// succeeded.
pub(crate) async fn tls_front(
    acceptor: tokio_rustls::TlsAcceptor,
    backend: u16,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = listener.local_addr().expect("bound").port();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                // A client refusing the certificate ends it here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let address = SocketAddr::from(([127, 0, 0, 1], backend));
                let Ok(mut plain) = TcpStream::connect(address).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, handshakes)
}

#[tokio::test]
async fn an_https_remote_is_read_when_ssl_cert_file_trusts_its_authority() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.write("docs/b.md", "beta\n");
    let commit = repo.commit("two");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let (authority, acceptor) = authority_and_localhost();
    let (port, handshakes) = tls_front(acceptor, server.port()).await;
    let (_dir, trusted) = bundle(&authority);

    let receiver = Receiver::start().await;
    let app = TestApp::builder()
        .fast()
        .env("SSL_CERT_FILE", &trusted.display().to_string())
        .spawn()
        .await;
    let client = onboard(&app, &receiver, "acme").await;
    let id = watch(&app, &client, &format!("https://localhost:{port}/r.git")).await;

    let accepted = receiver.wait_for("the tree", |r| r.len() == 2).await;
    assert_eq!(apply(&accepted), tree_of(&repo));
    app.wait_for_commit(&client, &id, &commit).await;
    assert!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the head check and the fetch went over TLS"
    );
    assert!(server.requests() >= 2, "{:?}", server.request_log());
}

#[tokio::test]
async fn an_https_remote_from_an_untrusted_authority_is_refused_and_not_registered() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.commit("one");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let (_, acceptor) = authority_and_localhost();
    let (stranger, _) = authority_and_localhost();
    let (port, handshakes) = tls_front(acceptor, server.port()).await;
    // The bundle trusts another authority, not the remote's.
    let (_dir, other) = bundle(&stranger);

    let receiver = Receiver::start().await;
    let app = TestApp::builder()
        .fast()
        .env("SSL_CERT_FILE", &other.display().to_string())
        .spawn()
        .await;
    let client = onboard(&app, &receiver, "acme").await;
    let (status, body) = app
        .register(
            &client,
            json!({"url": format!("https://localhost:{port}/r.git")}),
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::BAD_GATEWAY),
        "repository_unreachable"
    );
    let message = body["error"].as_str().expect("a message");
    assert!(
        message.contains("TLS certificate is not trusted"),
        "{message}"
    );
    assert!(!message.contains("could not be reached"), "{message}");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(server.requests(), 0, "nothing reached the git server");
    assert!(app.repositories(&client).await.is_empty());
    assert_eq!(app.stored_rows("repositories").await, 0);
    assert!(receiver.received().is_empty());
}
