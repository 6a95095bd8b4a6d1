//! Pull delivery (docs/api.md, "Pull delivery"): a pull app's events on `GET
//! /api/stream` and `GET /api/changes`, resumed by cursor, consumed when
//! the cursor comes back. The real binary, real git, a consumer that
//! misbehaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use rand::{RngExt, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::delivery::tree_of;
use crate::gitserver::{Served, TestRepo};
use crate::helpers::{CLUSTER, Rig, TestApp, TestClient, TestDatabase, client, watch};

/// Small chunks, so that a binary file of a few KiB is many messages.
const CHUNKED: [(&str, &str); 2] = [
    ("HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES", "4096"),
    ("HERALD__DELIVERY__CHUNK_SIZE_BYTES", "1024"),
];

/// One Server-Sent Event as a consumer reads it.
#[derive(Debug, Clone)]
struct Message {
    id: String,
    event: String,
    data: Value,
}

impl Message {
    /// The webhook-id this message stands for (the body's `event_id`, and
    /// the chunk's index for a chunk).
    fn webhook_id(&self) -> String {
        let event_id = self.data["event_id"].as_str().expect("event_id");
        match self.data["file"]["chunk"]["index"].as_u64() {
            Some(index) => format!("{event_id}_{index}"),
            None => event_id.to_owned(),
        }
    }
}

/// What one connection to the stream gave before it was dropped.
struct Read {
    messages: Vec<Message>,
}

/// Connects to `/api/stream` (resuming after `last`), reads up to `take`
/// messages, and drops the connection; stops early when nothing comes for
/// `idle`.
async fn read_stream(
    app: &TestApp,
    token: &str,
    last: Option<&str>,
    take: usize,
    idle: Duration,
) -> Read {
    let mut request = client().get(app.url("/api/stream")).bearer_auth(token);
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    let mut response = request.send().await.expect("herald answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("ascii"),
        "text/event-stream"
    );
    let mut read = Read {
        messages: Vec::new(),
    };
    let mut buffer = String::new();
    while read.messages.len() < take {
        let Ok(chunk) = tokio::time::timeout(idle, response.chunk()).await else {
            break;
        };
        let Some(chunk) = chunk.expect("the stream reads") else {
            break;
        };
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some((field, value)) = line.split_once(':') {
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "id" => id = Some(value),
                        "event" => event = Some(value),
                        "data" => data = Some(value),
                        _ => {}
                    }
                }
            }
            if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                read.messages.push(Message {
                    id,
                    event,
                    data: serde_json::from_str(&data).expect("data is the webhook's JSON"),
                });
                if read.messages.len() == take {
                    break;
                }
            }
        }
    }
    read
}

/// A file's content in these tests: its path and version.
fn content(path: &str, version: u32) -> String {
    format!("{path} v{version}\n")
}

/// A binary file of a few KiB (many chunks), made of its version.
fn binary(version: u32) -> Vec<u8> {
    (0..6000u32)
        .map(|i| u8::try_from((i * 7 + version * 13) % 251).unwrap_or(0))
        .chain([0u8])
        .collect()
}

/// The tree the consumer ends with: the messages applied in order, chunks
/// reassembled per transfer (`chunk.id`), each transfer complete.
fn apply(messages: &[Message]) -> BTreeMap<String, Vec<u8>> {
    let mut tree = BTreeMap::new();
    let mut partial: HashMap<String, (String, u64)> = HashMap::new();
    for message in messages {
        let file = &message.data["file"];
        let path = file["path"].as_str().unwrap_or_default().to_owned();
        match message.event.as_str() {
            "create" | "update" => {
                let content = file["content"].as_str().expect("content");
                let bytes = if let Some(chunk) = file.get("chunk") {
                    let id = chunk["id"].as_str().expect("chunk id").to_owned();
                    let (index, total) = (chunk["index"].as_u64(), chunk["total"].as_u64());
                    let slot = partial.entry(id.clone()).or_default();
                    assert_eq!(index, Some(slot.1), "chunks of {id} come in order, once");
                    slot.0.push_str(content);
                    slot.1 += 1;
                    if index.map(|i| i + 1) != total {
                        continue;
                    }
                    let (encoded, _) = partial.remove(&id).expect("collected");
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .expect("base64")
                } else if file["content_encoding"] == "base64" {
                    base64::engine::general_purpose::STANDARD
                        .decode(content)
                        .expect("base64")
                } else {
                    content.as_bytes().to_vec()
                };
                tree.insert(path, bytes);
            }
            "delete" => {
                tree.remove(&path);
            }
            _ => {}
        }
    }
    assert!(
        partial.is_empty(),
        "unfinished transfers: {:?}",
        partial.keys()
    );
    tree
}

/// Asserts that every webhook came once, and that no path went back to an
/// older version.
fn assert_once_and_in_order(messages: &[Message]) {
    let mut ids = HashSet::new();
    let mut cursors = HashSet::new();
    let mut latest: HashMap<String, u32> = HashMap::new();
    for message in messages {
        assert!(
            cursors.insert(message.id.clone()),
            "cursor {} twice",
            message.id
        );
        assert!(
            ids.insert(message.webhook_id()),
            "{} came twice",
            message.webhook_id()
        );
        let file = &message.data["file"];
        let Some(version) = file["content"]
            .as_str()
            .and_then(|c| c.trim_end().rsplit_once(" v"))
            .and_then(|(_, v)| v.parse::<u32>().ok())
        else {
            continue;
        };
        let path = file["path"].as_str().expect("path").to_owned();
        let before = latest.insert(path.clone(), version).unwrap_or(0);
        assert!(version >= before, "{path}: v{version} came after v{before}");
    }
}

/// App `name` onboarded in pull mode.
pub(crate) async fn onboard_pull(app: &TestApp, name: &str) -> TestClient {
    app.onboard_with(json!({
        "app_name": name,
        "base_url": "https://1.1.1.1/unused",
        "email": "dev@example.com",
        "delivery": "pull",
    }))
    .await
}

#[tokio::test]
async fn a_consumer_dropping_its_stream_at_random_points_gets_every_change_once_and_in_order() {
    let repo = TestRepo::new("main");
    for i in 0..30 {
        let path = format!("docs/{i:02}.md");
        repo.write(&path, content(&path, 0));
    }
    repo.write("blob.bin", binary(0));
    repo.commit("v0");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder()
        .fast()
        .loopback()
        .envs(&CHUNKED)
        .spawn()
        .await;
    let pull = onboard_pull(&app, "puller").await;
    let id = watch(&app, &pull, &rig.url()).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (mut got, mut cursor, mut drops, mut version) = (Vec::new(), None::<String>, 0, 0u32);
    loop {
        let take = rng.random_range(1..=9);
        let read = read_stream(
            &app,
            &pull.token,
            cursor.as_deref(),
            take,
            Duration::from_millis(1500),
        )
        .await;
        if let Some(last) = read.messages.last() {
            cursor = Some(last.id.clone());
        }
        let caught_up = read.messages.len() < take;
        got.extend(read.messages);
        drops += 1;
        // A commit every few connections: updates, a delete, a rename and
        // a new version of the chunked file.
        if drops % 6 == 0 && version < 5 {
            version += 1;
            for i in (0..30).filter(|i| (i + version) % 3 == 0) {
                let path = format!("docs/{i:02}.md");
                repo.write(&path, content(&path, version));
            }
            match version {
                2 => repo.remove(&format!("docs/{:02}.md", 1)),
                3 => repo.rename("docs/05.md", "moved/05.md"),
                _ => repo.write("blob.bin", binary(version)),
            }
            repo.commit(&format!("v{version}"));
            rig.served.push(&repo, "HEAD:refs/heads/main", false);
        }
        if caught_up && version == 5 && drops >= 40 && apply(&got) == tree_of(&repo) {
            break;
        }
        assert!(
            drops < 400,
            "the consumer never caught up; last cursor {cursor:?}\n{}",
            app.logs()
        );
    }
    assert_once_and_in_order(&got);
    assert!(
        got.iter()
            .filter(|m| m.data["file"].get("chunk").is_some())
            .count()
            > 20,
        "the binary file came in chunks"
    );

    // Sending the last cursor back consumes everything: the events are
    // delivered and the subscription in sync.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/stream/ack",
            Some(&pull.token),
            Some(json!({"cursor": cursor.clone().expect("a cursor")})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    app.wait_for(&pull, &id, "synced", |v| v["status"] == "synced")
        .await;
    let pending = app
        .wait_for_events(&pull, "status=pending", "nothing pending", |_| true)
        .await;
    assert_eq!(pending, Vec::<Value>::new(), "every event consumed");
    let delivered = app
        .wait_for_events(&pull, "status=delivered&limit=200", "delivered", |_| true)
        .await;
    assert!(delivered.len() >= 31, "{}", delivered.len());
    // Nothing more comes, and nothing went out as a webhook.
    let after = read_stream(
        &app,
        &pull.token,
        cursor.as_deref(),
        1,
        Duration::from_millis(500),
    )
    .await;
    assert!(after.messages.is_empty());
    assert!(rig.receiver.received().is_empty());
}

#[tokio::test]
async fn change_pages_chain_by_cursor_and_a_long_poll_wakes_for_a_commit() {
    let repo = TestRepo::new("main");
    for i in 0..7 {
        let path = format!("p/{i}.md");
        repo.write(&path, content(&path, 0));
    }
    repo.commit("v0");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder().fast().loopback().spawn().await;
    let pull = onboard_pull(&app, "pages").await;
    watch(&app, &pull, &rig.url()).await;

    let page = async |after: Option<&str>, limit: u64, wait: u64| {
        let mut path = format!("/api/changes?limit={limit}&wait={wait}");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let (status, body) = app.call(Method::GET, &path, Some(&pull.token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    // The initial snapshot, three at a time.
    let (mut seen, mut next) = (Vec::new(), None::<String>);
    while seen.len() < 7 {
        let body = page(next.as_deref(), 3, 10).await;
        let data = body["data"].as_array().expect("data").clone();
        assert!(data.len() <= 3);
        for item in &data {
            assert_eq!(item["event"], "create");
            assert_eq!(
                item["webhook_id"], item["body"]["event_id"],
                "the webhook-id is the event's"
            );
            seen.push(
                item["body"]["file"]["path"]
                    .as_str()
                    .expect("path")
                    .to_owned(),
            );
        }
        next = body["next"].as_str().map(str::to_owned);
    }
    seen.sort();
    assert_eq!(seen.len(), 7);
    seen.dedup();
    assert_eq!(seen.len(), 7, "no page repeats another");

    // Nothing new: the long poll waits, and a commit wakes it.
    let waiting = page(next.as_deref(), 10, 30);
    let commit = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        repo.write("p/new.md", content("p/new.md", 1));
        repo.commit("v1");
        rig.served.push(&repo, "HEAD:refs/heads/main", false);
    };
    let started = tokio::time::Instant::now();
    let (body, ()) = tokio::join!(waiting, commit);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "woken, not timed out"
    );
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{body}");
    assert_eq!(data[0]["body"]["file"]["path"], "p/new.md");

    // A page with nothing in it keeps the cursor it was given.
    let last = body["next"].as_str().expect("next").to_owned();
    let empty = page(Some(&last), 10, 0).await;
    assert_eq!(empty["data"], json!([]));
    assert_eq!(empty["next"], json!(last));
}

/// A long poll that arrives at the instant the app's first stream connects
/// races it to place the waiting events in the stream: whichever places
/// them, the long poll answers with them, at once, not empty at its
/// deadline.
#[tokio::test]
async fn a_long_poll_racing_the_first_stream_answers_with_the_waiting_events() {
    let repo = TestRepo::new("main");
    for i in 0..3 {
        let path = format!("r/{i}.md");
        repo.write(&path, content(&path, 0));
    }
    repo.commit("v0");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder().fast().loopback().spawn().await;
    for round in 0..12 {
        let pull = onboard_pull(&app, &format!("race-{round}")).await;
        let repository = watch(&app, &pull, &rig.url()).await;
        // The snapshot's events are written, and no consumer has read them.
        for _ in 0..400 {
            if app.outbox(&pull, &repository).await.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(app.outbox(&pull, &repository).await.len(), 3);

        let stream = client()
            .get(app.url("/api/stream"))
            .bearer_auth(&pull.token)
            .send();
        let poll = app.call(
            Method::GET,
            "/api/changes?limit=10&wait=10",
            Some(&pull.token),
            None,
        );
        let (stream, (status, body)) = tokio::join!(stream, poll);
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["data"].as_array().map(Vec::len),
            Some(3),
            "round {round}: the long poll answers with the waiting events: {body}"
        );
        drop(stream);
    }
}

#[tokio::test]
async fn bad_cursors_push_apps_and_wrong_settings_are_refused_and_change_nothing() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("a");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder().fast().loopback().spawn().await;
    let pull = onboard_pull(&app, "strict").await;
    let id = watch(&app, &pull, &rig.url()).await;
    let (status, body) = app
        .call(Method::GET, "/api/app", Some(&pull.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["delivery"], "pull");

    for cursor in ["", "x", "1.2.3", "-4", "99999999999999999999"] {
        let (status, body) = app
            .call(
                Method::POST,
                "/api/stream/ack",
                Some(&pull.token),
                Some(json!({"cursor": cursor})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{cursor:?}: {body}"
        );
    }
    // A cursor ahead of the stream is not one it sent: refused, nothing
    // consumed.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/stream/ack",
            Some(&pull.token),
            Some(json!({"cursor": "1000"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let response = client()
        .get(app.url("/api/stream"))
        .bearer_auth(&pull.token)
        .header("last-event-id", "not-a-cursor")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for query in ["limit=0", "limit=1001", "wait=61", "after=abc", "limit=x"] {
        let (status, body) = app
            .call(
                Method::GET,
                &format!("/api/changes?{query}"),
                Some(&pull.token),
                None,
            )
            .await;
        assert!(status.is_client_error(), "{query}: {status} {body}");
    }
    let read = read_stream(&app, &pull.token, None, 1, Duration::from_secs(20)).await;
    assert_eq!(read.messages.len(), 1, "the event is still there");
    assert_eq!(read.messages[0].data["file"]["path"], "a.md");

    // A wrong delivery mode changes nothing.
    for wrong in [json!("poll"), json!(1), json!(null)] {
        let (status, body) = app
            .call(
                Method::PATCH,
                "/api/app",
                Some(&pull.token),
                Some(json!({"delivery": wrong, "window": 4})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{wrong}: {body}");
    }
    let (_, body) = app
        .call(Method::GET, "/api/app", Some(&pull.token), None)
        .await;
    assert_eq!(body["delivery"], "pull");
    assert_eq!(body["window"], 1);

    // Back to push: no stream, and the waiting event goes out as a webhook.
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&pull.token),
            Some(json!({"delivery": "push", "base_url": rig.receiver.base_url})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in ["/api/stream", "/api/changes"] {
        let (status, body) = app.call(Method::GET, path, Some(&pull.token), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
    }
    let received = rig
        .receiver
        .wait_for("the waiting event as a webhook", |r| !r.is_empty())
        .await;
    assert_eq!(received[0].json()["file"]["path"], "a.md");
    app.wait_for(&pull, &id, "synced", |v| v["status"] == "synced")
        .await;
    // Without a token there is no stream at all.
    let (status, _) = app.call(Method::GET, "/api/stream", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_and_ends_when_herald_stops() {
    let app = TestApp::builder().fast().loopback().spawn().await;
    let pull = onboard_pull(&app, "idle").await;
    let mut idle = client()
        .get(app.url("/api/stream"))
        .bearer_auth(&pull.token)
        .send()
        .await
        .expect("answers");
    let first = tokio::time::timeout(Duration::from_secs(20), idle.chunk())
        .await
        .expect("something within 20 s")
        .expect("the stream reads")
        .expect("a chunk");
    let first = String::from_utf8(first.to_vec()).expect("UTF-8");
    assert!(first.starts_with(':'), "a comment, no message: {first:?}");
    drop(idle);

    // An open stream does not hold up a shutdown.
    let mut open = client()
        .get(app.url("/api/stream"))
        .bearer_auth(&pull.token)
        .send()
        .await
        .expect("answers");
    let mut app = app;
    let started = tokio::time::Instant::now();
    assert_eq!(app.terminate().await, Some(0), "{}", app.logs());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped promptly, not after the shutdown timeout"
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = open.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ended");
}

#[tokio::test]
async fn two_instances_serve_one_apps_stream_woken_by_each_others_writes() {
    let database = TestDatabase::create().await;
    if !database.is_shared_server() {
        // Several instances need PostgreSQL; SQLite is single-instance.
        return;
    }
    let start = |database: TestDatabase| {
        TestApp::builder()
            .fast()
            .loopback()
            .envs(&CLUSTER)
            .spawn_with(database)
    };
    let a = start(database.shared()).await;
    let b = start(database.shared()).await;
    let repos: Vec<TestRepo> = (0..2)
        .map(|n| {
            let repo = TestRepo::new("main");
            for i in 0..10 {
                let path = format!("r{n}/{i}.md");
                repo.write(&path, content(&path, 0));
            }
            repo.commit("v0");
            repo
        })
        .collect();
    let served_one = Served::new(&repos[0], "r0.git");
    let served_two = served_one.sibling(&repos[1], "r1.git");
    let daemon = crate::gitserver::GitDaemon::serve(served_one.root());
    let pull = onboard_pull(&a, "shared").await;
    watch(&a, &pull, &daemon.url("r0.git")).await;
    watch(&b, &pull, &daemon.url("r1.git")).await;

    // The consumer alternates between the instances, resuming each time
    // where it stopped, while both repositories move.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0..30u32 {
        let via = if round % 2 == 0 { &a } else { &b };
        let read = read_stream(
            via,
            &pull.token,
            cursor.as_deref(),
            4,
            Duration::from_secs(2),
        )
        .await;
        if let Some(last) = read.messages.last() {
            cursor = Some(last.id.clone());
        }
        got.extend(read.messages);
        if round % 5 == 4 {
            let version = round / 5 + 1;
            for (n, repo) in repos.iter().enumerate() {
                let path = format!("r{n}/{}.md", version % 10);
                repo.write(&path, content(&path, version));
                repo.commit(&format!("v{version}"));
            }
            served_one.push(&repos[0], "HEAD:refs/heads/main", false);
            served_two.push(&repos[1], "HEAD:refs/heads/main", false);
        }
    }
    // Then it waits on one instance for the rest.
    loop {
        let read = read_stream(
            &a,
            &pull.token,
            cursor.as_deref(),
            50,
            Duration::from_secs(3),
        )
        .await;
        if let Some(last) = read.messages.last() {
            cursor = Some(last.id.clone());
        }
        let done = read.messages.is_empty();
        got.extend(read.messages);
        if done {
            break;
        }
    }
    assert_once_and_in_order(&got);
    let mut expected = tree_of(&repos[0]);
    expected.extend(tree_of(&repos[1]));
    assert_eq!(apply(&got), expected);
}

#[tokio::test]
async fn retention_counts_from_consumption_not_from_when_events_were_written() {
    let repo = TestRepo::new("main");
    repo.write("kept.md", "kept\n");
    repo.commit("kept");
    let rig = Rig::serve(&repo).await;
    let app = TestApp::builder()
        .fast()
        .loopback()
        .env("HERALD__DELIVERY__EVENT_RETENTION", "3s")
        .spawn()
        .await;
    let pull = onboard_pull(&app, "keeper").await;
    watch(&app, &pull, &rig.url()).await;
    // Written, then left unread well past the retention: until a copy
    // written after it, read and acknowledged at once, is pruned.
    let read = read_stream(&app, &pull.token, None, 1, Duration::from_secs(20)).await;
    assert_eq!(read.messages.len(), 1);
    let ack = async |token: &str, cursor: &str| {
        let (status, body) = app
            .call(
                Method::POST,
                "/api/stream/ack",
                Some(token),
                Some(json!({"cursor": cursor})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    };
    let witness = onboard_pull(&app, "witness").await;
    watch(&app, &witness, &rig.url()).await;
    let copy = read_stream(&app, &witness.token, None, 1, Duration::from_secs(20)).await;
    assert_eq!(copy.messages.len(), 1);
    ack(&witness.token, &copy.messages[0].id).await;
    app.wait_for_events(&witness, "", "the acknowledged copy pruned", |e| {
        e.is_empty()
    })
    .await;
    let listed = |status: &'static str| {
        let app = &app;
        let pull = &pull;
        async move {
            let (code, body) = app
                .call(
                    Method::GET,
                    &format!("/api/events?status={status}"),
                    Some(&pull.token),
                    None,
                )
                .await;
            assert_eq!(code, StatusCode::OK, "{body}");
            body["data"].as_array().expect("events").len()
        }
    };
    assert_eq!(listed("pending").await, 1, "unread: kept");
    // Consumed now: kept for the retention from now, then pruned.
    ack(&pull.token, &read.messages[0].id).await;
    assert_eq!(listed("delivered").await, 1, "consumed: kept for now");
    app.wait_for_events(
        &pull,
        "status=delivered",
        "pruned after its retention",
        |e| e.is_empty(),
    )
    .await;
}
