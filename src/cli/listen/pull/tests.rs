//! The pull client against a stand-in Herald (a few lines of HTTP/1.1 on a
//! socket, so the test decides where a message is split and where the
//! stream drops) and a local receiver that checks both signatures with the
//! reference receiver's own `verify`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warp::Filter;
use warp::http::{HeaderMap, StatusCode};

use super::super::verify::{WebhookKey, verify};
use super::{PullArgs, run};
use crate::cli::client::Connection;

const TOKEN: &str = "app-token-for-the-stand-in";
const APP_ID: &str = "app_01STANDIN";
const KEY: &str = "pull-test-client-auth-key-0123456789";

fn secret() -> SecretString {
    SecretString::from(format!("whsec_{}", STANDARD.encode(KEY)))
}

/// The stream's messages: cursor, endpoint, body on one line.
fn events() -> Vec<(String, &'static str, String)> {
    let repository = json!({"repository_id": "repo_1", "github_url": "https://github.com/o/r"});
    let bodies = [
        (
            "create",
            json!({"repository": repository, "event_id": "evt_1",
                   "file": {"path": "a.txt", "sha": "0", "content": "one\ntwo"}}),
        ),
        (
            "update",
            json!({"repository": repository, "event_id": "evt_2",
                   "file": {"path": "a.txt", "sha": "1", "content": "é \"quoted\""}}),
        ),
        (
            "create",
            json!({"repository": repository, "event_id": "evt_3",
                   "file": {"path": "b.bin", "sha": "2", "content": "AAEC",
                            "content_encoding": "base64",
                            "chunk": {"id": "chk_1", "index": 0, "total": 2}}}),
        ),
        (
            "create",
            json!({"repository": repository, "event_id": "evt_3",
                   "file": {"path": "b.bin", "sha": "2", "content": "AwQF",
                            "content_encoding": "base64",
                            "chunk": {"id": "chk_1", "index": 1, "total": 2}}}),
        ),
        (
            "delete",
            json!({"repository": repository, "event_id": "evt_4", "file": {"path": "a.txt"}}),
        ),
        (
            "synced",
            json!({"repository": repository, "event_id": "evt_5", "commit_sha": "abc"}),
        ),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (endpoint, body))| (format!("cur_{}", i + 1), endpoint, body.to_string()))
        .collect()
}

/// What the stand-in Herald saw.
#[derive(Default)]
struct Seen {
    /// Each stream connection's `Last-Event-ID` (None: none sent).
    connections: Vec<Option<String>>,
    acks: Vec<String>,
}

/// Serves `GET /api/app`, `GET /api/stream` and `POST /api/stream/ack`. The
/// first stream connection drops after `drop_after` messages; later ones
/// send the rest and stay open with a heartbeat.
async fn stand_in(drop_after: usize) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(socket, shared.clone(), drop_after));
        }
    });
    (addr, seen)
}

async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Seen>>, drop_after: usize) {
    let (head, body) = read_request(&mut socket).await;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        let body = r#"{"error":"Invalid token","code":"unauthorized"}"#;
        return respond(&mut socket, "401 Unauthorized", body).await;
    }
    match request_line.split(' ').take(2).collect::<Vec<_>>()[..] {
        ["GET", "/api/app"] => {
            let body = json!({"app_id": APP_ID, "delivery": "pull"}).to_string();
            respond(&mut socket, "200 OK", &body).await;
        }
        ["POST", "/api/stream/ack"] => {
            let body: Value = serde_json::from_slice(&body).expect("an ack is JSON");
            let cursor = body["cursor"].as_str().expect("a cursor").to_owned();
            seen.lock().expect("lock").acks.push(cursor);
            let _ = socket
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await;
        }
        ["GET", "/api/stream"] => {
            let after = headers.get("last-event-id").cloned();
            let first = {
                let mut seen = seen.lock().expect("lock");
                seen.connections.push(after.clone());
                seen.connections.len() == 1
            };
            let _ = socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      cache-control: no-cache\r\nconnection: close\r\n\r\n: hello\n\n",
                )
                .await;
            let events = events();
            let start = after.map_or(0, |cursor| {
                events
                    .iter()
                    .position(|e| e.0 == cursor)
                    .expect("a known cursor")
                    + 1
            });
            let end = if first { drop_after } else { events.len() };
            for (cursor, endpoint, body) in &events[start..end] {
                let message = format!("id: {cursor}\nevent: {endpoint}\ndata: {body}\n\n");
                // Split mid-line: the decoder must join the reads.
                let (head, tail) = message.split_at(message.len() / 2);
                for part in [head, tail] {
                    if socket.write_all(part.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = socket.flush().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            if first {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if socket.write_all(b": keep-alive\n\n").await.is_err() {
                    return;
                }
            }
        }
        _ => {
            respond(
                &mut socket,
                "404 Not Found",
                r#"{"error":"Not found","code":"not_found"}"#,
            )
            .await
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = buffer[end + 4..].to_vec();
            while body.len() < length {
                let read = socket.read(&mut chunk).await.expect("the body");
                assert!(read > 0, "the body ended early");
                body.extend_from_slice(&chunk[..read]);
            }
            return (head, body);
        }
        let read = socket.read(&mut chunk).await.expect("the head");
        assert!(read > 0, "the connection closed before a request");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn respond(socket: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
}

/// One forwarded request as the local receiver saw it.
#[derive(Debug, Clone)]
struct Forwarded {
    path: String,
    webhook_id: String,
    app_id: String,
    body: Vec<u8>,
    status: u16,
}

/// A local receiver on 127.0.0.1:0: answers 500 to the first `failing`
/// requests, then 204 to those whose signatures hold (401 otherwise).
async fn receiver(failing: usize) -> (String, Arc<Mutex<Vec<Forwarded>>>) {
    let key = WebhookKey::parse(&secret()).expect("a valid secret");
    let record = Arc::new(Mutex::new(Vec::<Forwarded>::new()));
    let shared = record.clone();
    let route = warp::post()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(
            move |path: warp::path::FullPath, headers: HeaderMap, body: bytes::Bytes| {
                let mut record = shared.lock().expect("lock");
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs();
                let verified =
                    verify(&key, &headers, &body, i64::try_from(now).expect("fits")).is_ok();
                let status = if record.len() < failing {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else if verified {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::UNAUTHORIZED
                };
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                record.push(Forwarded {
                    path: path.as_str().to_owned(),
                    webhook_id: header("webhook-id"),
                    app_id: header("x-docora-app-id"),
                    body: body.to_vec(),
                    status: status.as_u16(),
                });
                warp::reply::with_status(warp::reply(), status)
            },
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/hooks/"), record)
}

fn args(herald: SocketAddr, forward_to: &str) -> PullArgs {
    PullArgs {
        pull: true,
        forward_to: Some(forward_to.parse().expect("a URL")),
        max_retry_delay: Duration::from_millis(20),
        // The stand-in runs on loopback.
        allow_private_url: true,
        max_message_bytes: super::DEFAULT_MAX_MESSAGE_BYTES,
        connection: Connection {
            url: format!("http://{herald}").parse().expect("a URL"),
            token: Some(SecretString::from(TOKEN)),
            json: false,
        },
    }
}

/// Waits (bounded) until `done` holds for what the receiver saw.
async fn until(record: &Mutex<Vec<Forwarded>>, done: impl Fn(&[Forwarded]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&record.lock().expect("lock")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up; received {:#?}",
            record.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the client against a stand-in whose first stream drops after
/// `drop_after` messages and a receiver failing its first `failing`
/// requests, until `done` holds for what the receiver saw; then stops it.
async fn run_until(
    drop_after: usize,
    failing: usize,
    done: impl Fn(&[Forwarded]) -> bool,
) -> (Vec<Forwarded>, Arc<Mutex<Seen>>) {
    let (herald, seen) = stand_in(drop_after).await;
    let (forward_to, record) = receiver(failing).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let args = args(herald, &forward_to);
    let secret = secret();
    let running = run(&args, &secret, async move { stopped.notified().await });
    let watch = async {
        until(&record, done).await;
        stop.notify_one();
    };
    let (result, ()) = tokio::join!(running, watch);
    result.expect("the client stops cleanly");
    let record = record.lock().expect("lock").clone();
    (record, seen)
}

#[tokio::test]
async fn every_message_is_forwarded_signed_once_in_order_and_acked_after_its_2xx() {
    let events = events();
    let (record, seen) = run_until(2, 3, |r| {
        r.iter().filter(|f| f.status == 204).count() == events.len()
    })
    .await;

    let (failed, accepted): (Vec<_>, Vec<_>) = record.iter().partition(|f| f.status == 500);
    assert_eq!(failed.len(), 3);
    assert!(
        failed.iter().all(|f| f.webhook_id == "evt_1"),
        "{failed:#?}"
    );
    assert!(
        accepted.iter().all(|f| f.status == 204),
        "a signature failed: {accepted:#?}"
    );
    let expected_ids = ["evt_1", "evt_2", "evt_3_0", "evt_3_1", "evt_4", "evt_5"];
    assert_eq!(
        accepted
            .iter()
            .map(|f| f.webhook_id.as_str())
            .collect::<Vec<_>>(),
        expected_ids
    );
    for (forwarded, (_, endpoint, body)) in accepted.iter().zip(&events) {
        assert_eq!(forwarded.path, format!("/hooks/{endpoint}"));
        assert_eq!(forwarded.body, body.as_bytes(), "the exact body");
        assert_eq!(forwarded.app_id, APP_ID);
    }

    let seen = seen.lock().expect("lock");
    let cursors: Vec<String> = events.iter().map(|e| e.0.clone()).collect();
    assert_eq!(
        seen.acks, cursors,
        "each acked once, after its 2xx, in order"
    );
    assert_eq!(
        seen.connections,
        [None, Some("cur_2".to_owned())],
        "the dropped stream resumed after the last forwarded message"
    );
}

#[tokio::test]
async fn a_stop_during_retries_acks_nothing_unforwarded() {
    let (record, seen) = run_until(6, usize::MAX, |r| r.len() >= 4).await;
    assert!(
        record.iter().all(|f| f.webhook_id == "evt_1"),
        "never skipped"
    );
    assert!(seen.lock().expect("lock").acks.is_empty());
}

#[tokio::test]
async fn a_refused_token_ends_the_command() {
    let (herald, _) = stand_in(6).await;
    let (forward_to, _) = receiver(0).await;
    let mut args = args(herald, &forward_to);
    args.connection.token = Some(SecretString::from("wrong"));
    let err = run(&args, &secret(), std::future::pending())
        .await
        .expect_err("a 401 is not retried");
    assert_eq!(err.exit_code(), 4, "{err}");
}
