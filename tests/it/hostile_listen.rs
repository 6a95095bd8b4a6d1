//! `herald listen --pull` against a server that is not what it should be:
//! a stand-in for Herald on loopback (HTTP/1.1 written by hand on a tokio
//! socket, so the test decides every byte) that answers `GET /api/app` as
//! Herald does and then misbehaves on the stream, local receivers that
//! redirect, and targets that count every request that reaches them. The
//! listener is the real binary; what it prints and how it exits is what is
//! asserted, never how long anything took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::listen_pull::PullListener;

const TOKEN: &str = "herald_0123456789abcdef_stand-in-token";
const APP_ID: &str = "app_01STANDIN";

fn secret() -> String {
    format!(
        "whsec_{}",
        STANDARD.encode("hostile-listen-test-key-0123456789")
    )
}

/// How a scripted server answers one request (its method and path).
enum Answer {
    /// A status and a JSON body.
    Json(u16, String),
    /// A redirect to a URL.
    Redirect(u16, String),
    /// An event stream: these bytes, then a heartbeat now and then until
    /// the client goes.
    Events(String),
    /// An event stream whose first line never ends: `a` after `a` until the
    /// client goes.
    Endless,
}

/// A scripted HTTP/1.1 server on 127.0.0.1: one request per connection,
/// each counted before it is answered.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(answer: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        let requests = Arc::new(AtomicUsize::new(0));
        let (counted, answer) = (requests.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (counted, answer) = (counted.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut socket = socket;
                    let Some((method, path)) = read_request(&mut socket).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    respond(&mut socket, answer(&method, &path)).await;
                });
            }
        });
        Scripted { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A stand-in Herald: the app in pull mode, acknowledgements taken, and
/// `stream` for `GET /api/stream`.
async fn stand_in(stream: impl Fn() -> Answer + Send + Sync + 'static) -> Scripted {
    Scripted::start(move |method, path| match (method, path) {
        ("GET", "/api/app") => Answer::Json(
            200,
            json!({"app_id": APP_ID, "delivery": "pull"}).to_string(),
        ),
        ("GET", "/api/stream") => stream(),
        ("POST", "/api/stream/ack") => Answer::Json(204, String::new()),
        _ => Answer::Json(
            404,
            json!({"error": "Not found", "code": "not_found"}).to_string(),
        ),
    })
    .await
}

/// A target that must get nothing: it counts and answers 200.
async fn counter() -> Scripted {
    Scripted::start(|_, _| Answer::Json(200, "{}".to_owned())).await
}

/// The request line's method and path, the head and any body read.
async fn read_request(socket: &mut TcpStream) -> Option<(String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buffer.len() - (end + 4);
    while body < length {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body += read;
    }
    let mut request_line = head.lines().next()?.split(' ');
    Some((
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    ))
}

async fn respond(socket: &mut TcpStream, answer: Answer) {
    const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                 cache-control: no-cache\r\nconnection: close\r\n\r\n";
    match answer {
        Answer::Json(status, body) => {
            let response = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
        Answer::Redirect(status, location) => {
            let response = format!(
                "HTTP/1.1 {status} Redirect\r\nlocation: {location}\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
        Answer::Events(events) => {
            if socket.write_all(STREAM_HEAD).await.is_err()
                || socket.write_all(events.as_bytes()).await.is_err()
            {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if socket.write_all(b":keep-alive\n\n").await.is_err() {
                    return;
                }
            }
        }
        Answer::Endless => {
            if socket.write_all(STREAM_HEAD).await.is_err()
                || socket.write_all(b"data: ").await.is_err()
            {
                return;
            }
            let run = vec![b'a'; 64 * 1024];
            while socket.write_all(&run).await.is_ok() {}
        }
    }
}

/// `herald listen --pull` against `herald`, forwarding to `forward_to`,
/// with `extra` arguments.
fn listen(herald: &Scripted, forward_to: &str, extra: &[&str]) -> PullListener {
    let mut args = vec!["--forward-to", forward_to, "--max-retry-delay", "200ms"];
    args.extend_from_slice(extra);
    PullListener::start(&herald.url(), TOKEN, &secret(), &args)
}

#[tokio::test]
async fn a_stream_line_that_never_ends_stops_listen_naming_the_limit() {
    let herald = stand_in(|| Answer::Endless).await;
    let target = counter().await;

    // The bound given, then the default one.
    for (extra, limit) in [
        (
            &["--allow-private-url", "--max-message-bytes", "1048576"][..],
            "1048576",
        ),
        (&["--allow-private-url"][..], "134217728"),
    ] {
        let (status, output) = listen(&herald, &target.url(), extra).exit().await;
        assert_eq!(status.code(), Some(3), "{output}");
        assert!(
            output.contains(&format!("a line of more than {limit} bytes"))
                && output.contains("--max-message-bytes"),
            "{output}"
        );
    }
    assert_eq!(target.requests(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn a_redirected_stream_is_never_followed() {
    for status in [302, 307] {
        let elsewhere = counter().await;
        let location = format!("{}/api/stream", elsewhere.url());
        let herald = stand_in(move || Answer::Redirect(status, location.clone())).await;
        let target = counter().await;

        let (exit, output) = listen(&herald, &target.url(), &["--allow-private-url"])
            .exit()
            .await;
        assert_eq!(exit.code(), Some(3), "{output}");
        assert!(
            output.contains(&format!(
                "with a redirect (HTTP {status} to {}/api/stream)",
                elsewhere.url()
            )) && output.contains("not followed"),
            "{output}"
        );
        assert_eq!(elsewhere.requests(), 0, "the redirect was followed");
        assert_eq!(target.requests(), 0, "nothing was forwarded");
    }
}

#[tokio::test]
async fn a_receiver_that_redirects_gets_the_event_and_its_target_nothing() {
    let event = json!({"event_id": "evt_1", "file": {"path": "a.txt", "content": "secret"}});
    let herald =
        stand_in(move || Answer::Events(format!("id: cur_1\nevent: create\ndata: {event}\n\n")))
            .await;
    let elsewhere = counter().await;
    let location = elsewhere.url();
    let receiver =
        Scripted::start(move |_, path| Answer::Redirect(307, format!("{location}{path}"))).await;

    let listener = listen(
        &herald,
        &format!("{}/hooks", receiver.url()),
        &["--allow-private-url"],
    );
    let refused = format!("HTTP 307, a redirect to {}/hooks/create", elsewhere.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !listener.output().contains(&refused) && elsewhere.requests() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refused forward; output:\n{}",
            listener.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = listener.stop().await;
    assert!(output.contains("not followed"), "{output}");
    assert_eq!(elsewhere.requests(), 0, "the signed event was posted again");
    assert!(receiver.requests() >= 1, "{output}");
    assert_eq!(
        herald.requests(),
        2,
        "GET /api/app and one stream, no acknowledgement: {output}"
    );
}

#[tokio::test]
async fn a_herald_on_a_private_address_is_reached_only_with_the_flag() {
    let herald = stand_in(|| Answer::Events(String::new())).await;
    let target = counter().await;
    let by_name = format!("http://localhost:{}", herald.addr.port());
    for url in [herald.url(), by_name] {
        let listener =
            PullListener::start(&url, TOKEN, &secret(), &["--forward-to", &target.url()]);
        let (status, output) = listener.exit().await;
        assert_eq!(status.code(), Some(3), "{url}: {output}");
        assert!(
            output.contains("is not at a public address") && output.contains("--allow-private-url"),
            "{url}: {output}"
        );
    }
    assert_eq!(
        herald.requests(),
        0,
        "a request reached the private address"
    );

    // With it (the user's own Herald), the stream is read.
    let listener = listen(&herald, &target.url(), &["--allow-private-url"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while herald.requests() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream was not opened; output:\n{}",
            listener.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listener.stop().await;
}
