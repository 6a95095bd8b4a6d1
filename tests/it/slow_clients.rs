//! Slow clients cannot hold connections: a request head that does not arrive
//! in time closes the connection, a body that does not arrive is a 408, and
//! the server keeps answering others meanwhile.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_TOKEN, TestApp};

/// How many stalled request heads the test opens.
const STALLED_HEADS: usize = 50;
/// A bound on each wait, so a regression fails instead of hanging; the
/// deadlines under test are far shorter.
const PATIENCE: Duration = Duration::from_secs(30);

async fn deadlines() -> TestApp {
    TestApp::builder()
        .env("HERALD__SERVER__HEADER_READ_TIMEOUT", "1s")
        .env("HERALD__SERVER__BODY_READ_TIMEOUT", "1s")
        .spawn()
        .await
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("herald accepts")
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .expect("the connection is readable");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn stalled_request_heads_are_closed_and_health_keeps_answering() {
    let app = deadlines().await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED_HEADS {
        let mut stream = connect(&app).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: herald\r\nX-Slow: ")
            .await
            .expect("a partial head is sent");
        stalled.push(stream);
    }

    let health = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("herald answers while heads stall");
    assert_eq!(health.status(), StatusCode::OK);

    for mut stream in stalled {
        let received = read_until_closed(&mut stream).await;
        assert!(
            received.is_empty() || received.starts_with("HTTP/1.1 408"),
            "a stalled head gets at most a 408: {received:?}"
        );
    }
    // A new connection: the first request's keep-alive connection has been
    // idle longer than the header deadline, so the server closed it too.
    let fresh = actors::tls::http_client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");
    let health = fresh
        .get(app.url("/health"))
        .send()
        .await
        .expect("herald still answers");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let app = deadlines().await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await
        .expect("a request is sent");
    // The answer, then nothing more: the connection stays idle until the
    // server closes it.
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received:?}");
    assert_eq!(received.matches("HTTP/1.1").count(), 1, "{received:?}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_408() {
    let app = deadlines().await;
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /admin/api/apps/onboard HTTP/1.1\r\nHost: herald\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: 200\r\n\r\n{{\"app_name\": "
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("the head and part of the body are sent");

    let received = read_until_closed(&mut stream).await;
    assert!(
        received.starts_with("HTTP/1.1 408"),
        "a stalled body gets 408: {received:?}"
    );
    let body = received
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .expect("a body follows the head");
    let error: serde_json::Value = serde_json::from_str(body).expect("a JSON error");
    assert_eq!(error["code"], "request_timeout");
    assert!(error["error"].is_string(), "{error}");
    assert_eq!(app.app_count().await, 0);
}

#[tokio::test]
async fn a_stalled_hook_body_is_answered_408() {
    let app = TestApp::builder()
        .env("HERALD__SERVER__BODY_READ_TIMEOUT", "1s")
        .env("HERALD__INBOUND__GITHUB_SECRET", "hook-secret-0123456789")
        .spawn()
        .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /hooks/github HTTP/1.1\r\nHost: herald\r\nX-GitHub-Event: push\r\n\
              X-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: sha256=0000000000000000000000000000000000000000000000000000000000000000\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .expect("the head and part of the body are sent");
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 408"), "{received:?}");
    assert!(received.contains("request_timeout"), "{received:?}");
}
