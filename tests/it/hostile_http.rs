//! Hostile clients at the front door, over raw sockets against the real
//! binary: hook bodies that are never finished cannot grow memory past the
//! in-flight body budget, and a credential that cannot be right is refused
//! before any body byte is sent; a connection flood cannot take the
//! descriptors that `/health` needs; and the answers carry the headers that
//! keep browsers from misreading or framing them.
//!
//! The flood tests connect from other loopback addresses than 127.0.0.1
//! (Linux routes all of 127.0.0.0/8 to the loopback interface), so that the
//! flood and the probes come from different client addresses, as they do in
//! production.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{TestApp, proc_status_kib};

const GITHUB_SECRET: &str = "github-webhook-secret-0123";
const GITLAB_TOKEN: &str = "gitlab-webhook-token-4567";
/// The size of each hostile body: the default `inbound.max_body_bytes`
/// (25 MiB), of which all but the last byte is sent.
const LARGE_BODY: usize = 25 * 1024 * 1024;
/// A bound on each wait, so a regression fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn addr(app: &TestApp) -> SocketAddr {
    app.address
        .trim_start_matches("http://")
        .parse()
        .expect("the app listens on an address")
}

/// A connection to the app from the loopback address `127.0.0.{last}`.
async fn connect_from(app: &TestApp, last: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            0,
        ))
        .expect("any loopback address can be bound");
    socket.connect(addr(app)).await.expect("herald accepts")
}

/// A client connecting from 127.0.0.2, a new connection for each request,
/// as a health check or a scraper does.
fn prober() -> reqwest::Client {
    actors::tls::http_client_builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client")
}

/// What the server sends until it closes the connection (a reset counts as
/// closed too).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&received).into_owned()
}

/// A hook request head announcing a body of `length` bytes.
fn hook_head(path: &str, credential: Option<(&str, &str)>, length: usize) -> String {
    let (event_header, event) = if path.ends_with("gitlab") {
        ("X-Gitlab-Event", "Push Hook")
    } else {
        ("X-GitHub-Event", "push")
    };
    let credential = credential
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: herald\r\n{event_header}: {event}\r\n{credential}\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Sends the head, then `length - 1` bytes of body (the server may close
/// before: the errors are expected), and holds the connection.
async fn hold_a_body(app: &TestApp, head: String, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr(app)).await.expect("herald accepts");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("a head is sent");
    let chunk = vec![b' '; 64 * 1024];
    let mut left = length - 1;
    while left > 0 {
        let n = left.min(chunk.len());
        if stream.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        left -= n;
    }
    stream
}

#[tokio::test]
async fn hooks_without_a_plausible_credential_are_refused_before_their_body() {
    let app = TestApp::builder()
        .env("HERALD__INBOUND__GITHUB_SECRET", GITHUB_SECRET)
        .env("HERALD__INBOUND__GITLAB_TOKEN", GITLAB_TOKEN)
        .env("HERALD__INBOUND__GITEA_SECRET", GITHUB_SECRET)
        .env("HERALD__INBOUND__BITBUCKET_SECRET", GITHUB_SECRET)
        .env("HERALD__RATE_LIMIT__INBOUND_PER_MINUTE", "1000")
        .spawn()
        .await;
    let hex = "ab".repeat(32);
    let cases: Vec<(&str, Option<(&str, String)>)> = vec![
        ("/hooks/github", None),
        (
            "/hooks/github",
            Some(("X-Hub-Signature-256", String::new())),
        ),
        (
            "/hooks/github",
            Some(("X-Hub-Signature-256", "sha256=00".into())),
        ),
        ("/hooks/github", Some(("X-Hub-Signature-256", hex.clone()))),
        (
            "/hooks/github",
            Some(("X-Hub-Signature-256", format!("sha256={}zz", &hex[2..]))),
        ),
        (
            "/hooks/bitbucket",
            Some(("X-Hub-Signature", format!("sha1={hex}"))),
        ),
        (
            "/hooks/gitea",
            Some(("X-Gitea-Signature", format!("{hex}00"))),
        ),
        ("/hooks/gitlab", None),
        (
            "/hooks/gitlab",
            Some(("X-Gitlab-Token", "not-the-token".into())),
        ),
    ];
    for (path, credential) in cases {
        let mut stream = TcpStream::connect(addr(&app))
            .await
            .expect("herald accepts");
        let credential = credential
            .as_ref()
            .map(|(name, value)| (*name, value.as_str()));
        let head = hook_head(path, credential, LARGE_BODY);
        stream
            .write_all(head.as_bytes())
            .await
            .expect("a head is sent");
        // Not a byte of the body is sent: the answer comes from the head.
        let received = read_until_closed(&mut stream).await;
        assert!(
            received.starts_with("HTTP/1.1 401"),
            "{path} {credential:?}: {received:?}"
        );
        assert!(received.contains("\"unauthorized\""), "{received}");
    }
    let logs = app.logs();
    assert!(logs.contains("malformed"), "the log says why");
    assert!(
        !logs.contains("not-the-token"),
        "credentials are never logged"
    );
}

#[tokio::test]
async fn held_hook_bodies_stay_within_the_body_budget() {
    let app = TestApp::builder()
        .env("HERALD__INBOUND__GITHUB_SECRET", GITHUB_SECRET)
        .env("HERALD__INBOUND__GITLAB_TOKEN", GITLAB_TOKEN)
        .env("HERALD__RATE_LIMIT__INBOUND_PER_MINUTE", "1000")
        .env("HERALD__SERVER__BODY_READ_TIMEOUT", "5m")
        .spawn()
        .await;
    let pid = app.pid();
    let before_kib = proc_status_kib(pid, "VmRSS");

    // Forty clients at once: half send no credential, half a well-formed
    // signature that is wrong, which Herald can only tell from the body.
    let plausible = format!("sha256={}", "ab".repeat(32));
    let clients = (0..40).map(|i| {
        let head = if i % 2 == 0 {
            hook_head(
                "/hooks/github",
                Some(("X-Hub-Signature-256", &plausible)),
                LARGE_BODY,
            )
        } else if i % 4 == 1 {
            hook_head("/hooks/github", None, LARGE_BODY)
        } else {
            hook_head("/hooks/gitlab", None, LARGE_BODY)
        };
        hold_a_body(&app, head, LARGE_BODY)
    });
    let held = futures::future::join_all(clients).await;

    let after_kib = proc_status_kib(pid, "VmRSS");
    let peak_kib = proc_status_kib(pid, "VmHWM");
    let grown_mib = peak_kib.max(after_kib).saturating_sub(before_kib) / 1024;
    eprintln!("40 held hook bodies: herald grew by {grown_mib} MiB at its peak");
    assert!(
        grown_mib < 100,
        "40 held 25 MiB bodies grew herald by {grown_mib} MiB \
         (RSS {before_kib} kB before, {after_kib} kB after, peak {peak_kib} kB)"
    );
    drop(held);

    // The budget comes back: a correct hook is accepted.
    let body = br#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000001","repository":{"clone_url":"https://example.com/x.git","html_url":"https://example.com/x"}}"#;
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, body));
    let mut last = None;
    for _ in 0..50 {
        let response = app
            .client
            .post(app.url("/hooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "after-the-flood")
            .header("X-Hub-Signature-256", &signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("herald answers");
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        last = Some(status);
        break;
    }
    assert_eq!(last, Some(StatusCode::ACCEPTED));
}

#[tokio::test]
async fn bodies_past_the_budget_get_503_with_retry_after() {
    // A budget that holds one API body at a time.
    let app = TestApp::builder()
        .env("HERALD__SERVER__MAX_BODY_BYTES", "1000000")
        .env("HERALD__INBOUND__MAX_BODY_BYTES", "1000000")
        .env("HERALD__SERVER__MAX_INFLIGHT_BODY_BYTES", "1000000")
        .env("HERALD__SERVER__BODY_READ_TIMEOUT", "5m")
        .spawn()
        .await;
    let head = format!(
        "POST /admin/api/apps/onboard HTTP/1.1\r\nHost: herald\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000\r\n\r\n",
        crate::helpers::ADMIN_TOKEN
    );
    let mut first = hold_a_body(&app, head.clone(), 1_000_000).await;
    let mut second = hold_a_body(&app, head, 1_000_000).await;
    // Herald may read the two side by side: which one finds the budget
    // spent is not known, but one does and is answered.
    let received = tokio::select! {
        received = read_until_closed(&mut first) => received,
        received = read_until_closed(&mut second) => received,
    };
    assert!(received.starts_with("HTTP/1.1 503"), "{received:?}");
    let lower = received.to_ascii_lowercase();
    assert!(lower.contains("retry-after: "), "{received}");
    assert!(received.contains("\"unavailable\""), "{received}");
    assert_eq!(app.app_count().await, 0);
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_and_health_answers() {
    let app = TestApp::builder()
        .env("HERALD__SERVER__MAX_CONNECTIONS_PER_IP", "10")
        .env("HERALD__SERVER__HEADER_READ_TIMEOUT", "5m")
        .spawn()
        .await;
    // 300 half-open connections from one address.
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut stream = connect_from(&app, 1).await;
        let _ = stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: herald\r\n")
            .await;
        flood.push(stream);
    }
    // Another address's probes all get through.
    let probes = prober();
    for _ in 0..20 {
        let health = probes
            .get(app.url("/health"))
            .send()
            .await
            .expect("/health answers during the flood");
        assert_eq!(health.status(), StatusCode::OK);
    }
    // Connections are admitted in the order they came: the first ten are
    // served, every other one was closed without an answer.
    let over = flood.split_off(10);
    for mut stream in over {
        assert_eq!(read_until_closed(&mut stream).await, "");
    }
    for mut stream in flood {
        stream
            .write_all(b"\r\n")
            .await
            .expect("the head is finished");
        let mut answer = [0u8; 12];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
            .await
            .expect("an answer")
            .expect("the connection is open");
        assert_eq!(&answer, b"HTTP/1.1 200");
    }
}

#[tokio::test]
async fn over_the_global_cap_only_health_and_metrics_are_served() {
    let app = TestApp::builder()
        .env("HERALD__SERVER__MAX_CONNECTIONS", "8")
        .env("HERALD__SERVER__MAX_CONNECTIONS_PER_IP", "4")
        .env("HERALD__SERVER__HEADER_READ_TIMEOUT", "5m")
        .spawn()
        .await;
    // Four addresses at their own cap, sixteen half-open connections: the
    // eight places are taken, and so are some of the reserve's.
    let mut flood = Vec::new();
    for last in 3..=6 {
        for _ in 0..4 {
            let mut stream = connect_from(&app, last).await;
            let _ = stream.write_all(b"GET /health HTTP/1.1\r\n").await;
            flood.push(stream);
        }
    }
    let probes = prober();
    for path in ["/health", "/ready", "/metrics"] {
        for _ in 0..5 {
            let response = probes
                .get(app.url(path))
                .send()
                .await
                .unwrap_or_else(|err| panic!("{path} answers over the cap: {err}"));
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }
    let refused = probes
        .get(app.url("/version"))
        .send()
        .await
        .expect("an answer over the cap");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.expect("the JSON error shape");
    assert_eq!(body["code"], "unavailable");

    // Once the flood is gone, everything is served again.
    drop(flood);
    let mut version = None;
    for _ in 0..50 {
        let response = probes
            .get(app.url("/version"))
            .send()
            .await
            .expect("herald answers");
        if response.status() == StatusCode::OK {
            version = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(version, Some(StatusCode::OK));
}

/// Under a low open-files limit the global cap is low too, and one address
/// may hold every normal place. Reconnecting as fast as it is cut, it still
/// holds only its share of the reserve: another address's probes get
/// through.
#[tokio::test]
async fn one_address_churning_connections_cannot_hold_the_health_reserve() {
    let app = TestApp::builder()
        .open_files(256)
        .env("HERALD__SERVER__MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD__SERVER__HEADER_READ_TIMEOUT", "5m")
        .spawn()
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    // Connections of the flood the server closed.
    let cut = Arc::new(AtomicUsize::new(0));
    // 300 connections from one address, each sending half a request head
    // and replaced as soon as it is closed.
    let churn = (0..300)
        .map(|_| {
            let (stop, address, cut) = (stop.clone(), addr(&app), cut.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let socket = TcpSocket::new_v4().expect("a socket");
                    socket
                        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), 0))
                        .expect("a loopback address");
                    let Ok(mut stream) = socket.connect(address).await else {
                        continue;
                    };
                    let _ = stream.write_all(b"GET /health HTTP/1.1\r\n").await;
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = read_until_closed(&mut stream) => {
                            cut.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect::<Vec<_>>();
    // The flood holds every place it can before the probes start: the
    // server turns its next connections away (the header read timeout
    // closes none of them).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cut.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never filled its places"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes = prober();
    let mut answered = 0;
    for _ in 0..30 {
        if let Ok(health) = probes.get(app.url("/health")).send().await {
            assert_eq!(health.status(), StatusCode::OK);
            answered += 1;
        }
    }
    stop.cancel();
    for task in churn {
        task.await.expect("a churning client");
    }
    assert_eq!(answered, 30, "every probe is answered during the churn");
}

#[tokio::test]
async fn answers_are_nosniff_and_the_docs_are_never_framed() {
    let app = TestApp::spawn().await;
    for (path, expected) in [
        ("/health", StatusCode::OK),
        ("/openapi.json", StatusCode::OK),
        ("/api/repositories", StatusCode::UNAUTHORIZED),
        ("/no/such/route", StatusCode::NOT_FOUND),
        ("/docs/", StatusCode::OK),
    ] {
        let response = app
            .client
            .get(app.url(path))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), expected, "{path}");
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
    }
    for path in ["/docs/", "/docs/swagger-initializer.js"] {
        let response = app
            .client
            .get(app.url(path))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["x-frame-options"], "DENY", "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .expect("an ASCII policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(
            !csp.contains("script-src"),
            "scripts come from 'self' only: {csp}"
        );
    }
    // Nothing the page loads comes from elsewhere (the validator badge is off).
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("an answer")
        .text()
        .await
        .expect("a script");
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "{initializer}"
    );
}
