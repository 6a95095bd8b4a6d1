//! Pull consumers that do not read (docs/limits.md, "Pull streams"): a
//! slow consumer costs its app a bounded amount whatever the file size,
//! pages are bounded by bytes as well as by count, and an app holds at most
//! `delivery.max_streams_per_app` streams and long polls. The real binary,
//! real git, raw sockets that never read.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, client, noise, proc_status_kib, watch};
use crate::pull::onboard_pull;

fn addr(app: &TestApp) -> SocketAddr {
    app.address
        .trim_start_matches("http://")
        .parse()
        .expect("the app listens on an address")
}

/// A consumer that asks for `path` and then never reads: its receive
/// buffer is kept small so that Herald's side fills at once.
async fn never_reading(app: &TestApp, token: &str, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stream = socket.connect(addr(app)).await.expect("herald accepts");
    let head =
        format!("GET {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("sent");
    stream
}

/// One page of `GET /api/changes` after `after`.
async fn page(app: &TestApp, token: &str, after: Option<&str>, limit: u32) -> Value {
    let mut url = format!("/api/changes?limit={limit}");
    if let Some(after) = after {
        url.push_str(&format!("&after={after}"));
    }
    let response = client()
        .get(app.url(&url))
        .bearer_auth(token)
        .send()
        .await
        .expect("herald answers");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a page")
}

/// Reads the app's pages until the file `path` has come whole (its first
/// message waited for); its bytes, and the most messages one page held.
async fn read_file_by_pages(
    app: &TestApp,
    token: &str,
    path: &str,
    limit: u32,
) -> (Vec<u8>, usize) {
    let (mut encoded, mut after, mut widest) = (String::new(), None::<String>, 0);
    for _ in 0..2000 {
        let page = page(app, token, after.as_deref(), limit).await;
        let data = page["data"].as_array().expect("data");
        widest = widest.max(data.len());
        for message in data {
            let file = &message["body"]["file"];
            if file["path"] != path {
                continue;
            }
            encoded.push_str(file["content"].as_str().expect("content"));
            let chunk = &file["chunk"];
            if chunk.is_null() || chunk["index"].as_u64() == chunk["total"].as_u64().map(|t| t - 1)
            {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&encoded)
                    .expect("base64");
                return (bytes, widest);
            }
        }
        if let Some(next) = page["next"].as_str() {
            after = Some(next.to_owned());
        }
        if data.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("{path} never came whole");
}

#[tokio::test]
async fn slow_consumers_of_a_90_mb_file_keep_herald_within_its_budget() {
    const SIZE: usize = 90 << 20;
    let content = noise(SIZE, 0x5eed);
    let repo = TestRepo::new("main");
    repo.write("big.bin", &content);
    repo.write("small.md", "# small\n");
    repo.commit("a large file");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder()
        .fast()
        .loopback()
        .env("HERALD__SERVER__MAX_CONNECTIONS_PER_IP", "400")
        .env("HERALD__DELIVERY__MAX_STREAMS_PER_APP", "300")
        .open_files(4096)
        .spawn()
        .await;
    let pull = onboard_pull(&app, "slow").await;
    watch(&app, &pull, &rig.url()).await;
    // The file is in the stream once its first chunk can be read.
    for _ in 0..600 {
        let first = page(&app, &pull.token, None, 1).await;
        if first["data"]
            .as_array()
            .is_some_and(|data| !data.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = app.pid();
    let before_kib = proc_status_kib(pid, "VmRSS");

    // 246 streams and 10 pages of up to 1000 messages, none ever read.
    let mut slow = Vec::new();
    for i in 0..256 {
        let path = if i % 25 == 0 {
            "/api/changes?limit=1000"
        } else {
            "/api/stream"
        };
        slow.push(never_reading(&app, &pull.token, path).await);
    }
    let mut most_kib = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        most_kib = most_kib.max(proc_status_kib(pid, "VmRSS"));
    }
    eprintln!(
        "256 slow consumers of a 90 MiB file: RSS {before_kib} kB before, at most {most_kib} kB \
         while they held on (peak of the whole run {} kB)",
        proc_status_kib(pid, "VmHWM")
    );
    assert!(
        most_kib < 300 * 1024,
        "256 consumers that do not read took herald to {} MiB",
        most_kib / 1024
    );

    // Nothing is lost: once they go, a consumer that reads gets the file
    // whole.
    drop(slow);
    let (got, _) = read_file_by_pages(&app, &pull.token, "big.bin", 1000).await;
    assert!(
        got.len() == content.len() && Sha256::digest(&got) == Sha256::digest(&content),
        "the file came whole ({} of {} bytes)",
        got.len(),
        content.len()
    );
}

#[tokio::test]
async fn a_page_of_changes_ends_at_its_byte_bound_and_the_pages_chain() {
    let content = noise(64 << 10, 0xba5e);
    let repo = TestRepo::new("main");
    repo.write("blob.bin", &content);
    repo.commit("a chunked file");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder()
        .fast()
        .loopback()
        .envs(&[
            ("HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES", "4096"),
            ("HERALD__DELIVERY__CHUNK_SIZE_BYTES", "4096"),
            ("HERALD__DELIVERY__PAGE_MAX_BYTES", "16384"),
        ])
        .spawn()
        .await;
    let pull = onboard_pull(&app, "paged").await;
    watch(&app, &pull, &rig.url()).await;
    let (got, widest) = read_file_by_pages(&app, &pull.token, "blob.bin", 1000).await;
    assert_eq!(got, content, "the pages chain into the whole file");
    // 22 chunks of about 4.4 KB: a 16 KiB page holds 3 of them, not 1000.
    assert!(
        (1..=4).contains(&widest),
        "a page held {widest} messages of about 4.4 KB under a 16 KiB bound"
    );
}

#[tokio::test]
async fn streams_past_the_apps_cap_are_refused_and_other_apps_are_not() {
    let app = TestApp::builder()
        .fast()
        .loopback()
        .env("HERALD__DELIVERY__MAX_STREAMS_PER_APP", "2")
        .spawn()
        .await;
    let greedy = onboard_pull(&app, "greedy").await;
    let other = onboard_pull(&app, "other").await;
    let open = |token: String| {
        let url = app.url("/api/stream");
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("herald answers")
        }
    };
    let first = open(greedy.token.clone()).await;
    let second = open(greedy.token.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);

    let third = open(greedy.token.clone()).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.expect("an error body");
    assert_eq!(body["code"], "too_many_streams", "{body}");
    let poll = client()
        .get(app.url("/api/changes?wait=1"))
        .bearer_auth(&greedy.token)
        .send()
        .await
        .expect("herald answers");
    assert_eq!(
        poll.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a long poll counts"
    );

    // Another app's consumers are not counted against it.
    let theirs = open(other.token.clone()).await;
    assert_eq!(theirs.status(), StatusCode::OK);

    // A stream that goes gives its place back.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let response = open(greedy.token.clone()).await;
        if response.status() == StatusCode::OK {
            again = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a place came back");
}
