//! Delivery end to end: the real binary, a real git server, real receivers.

use std::collections::BTreeMap;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{Remotes, Rig, TestApp, TestClient, engine_with, onboard, watch};
use crate::receiver::{Receiver, Reply, verify};

pub(crate) fn sha(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies accepted webhooks (deduplicated by `webhook-id`, and a chunk by
/// its `webhook-id` within its transfer, chunks reassembled per `chunk.id`)
/// to a map path → content.
pub(crate) fn apply(accepted: &[crate::receiver::Received]) -> BTreeMap<String, Vec<u8>> {
    let mut tree = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut partial: BTreeMap<String, String> = BTreeMap::new();
    for request in accepted {
        let body = request.json();
        let transfer = body["file"]["chunk"]["id"].as_str().unwrap_or_default();
        if !seen.insert((request.header("webhook-id").to_owned(), transfer.to_owned())) {
            continue;
        }
        let file = &body["file"];
        let path = file["path"].as_str().unwrap_or_default().to_owned();
        match request.endpoint.as_str() {
            "create" | "update" => {
                let content = file["content"].as_str().expect("content");
                let bytes = if let Some(chunk) = file.get("chunk") {
                    let id = chunk["id"].as_str().expect("chunk id").to_owned();
                    let slot = partial.entry(id.clone()).or_default();
                    slot.push_str(content);
                    if chunk["index"].as_u64() != Some(chunk["total"].as_u64().expect("total") - 1)
                    {
                        continue;
                    }
                    let encoded = partial.remove(&id).expect("collected");
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
                assert_eq!(sha(&bytes), file["sha"].as_str().expect("sha"), "{path}");
                tree.insert(path, bytes);
            }
            "delete" => {
                tree.remove(&path);
            }
            _ => {}
        }
    }
    tree
}

pub(crate) fn tree_of(repo: &TestRepo) -> BTreeMap<String, Vec<u8>> {
    repo.git(&["ls-files", "-z"])
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(|p| {
            (
                p.to_owned(),
                std::fs::read(repo.path().join(p)).expect("file"),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_change_arrives_signed_both_ways_in_order() {
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "alpha\n");
    repo.write("docs/gone.md", "bye\n");
    repo.write("img.bin", [0u8, 1, 2, 3, 255]);
    let first = repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let (app, client, id) = rig.watched("acme", &[]).await;

    rig.receiver
        .wait_for("the initial snapshot", |r| r.len() == 3)
        .await;
    repo.write("docs/a.md", "alpha two\n");
    repo.remove("docs/gone.md");
    repo.write("docs/new.md", "ünïcode\n");
    let second = repo.commit("second");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let accepted = rig
        .receiver
        .wait_for("the second snapshot", |r| r.len() == 6)
        .await;

    for request in &accepted {
        verify(request, &client.client_auth_key, &client.webhook_secret);
        assert_eq!(request.header("content-type"), "application/json");
        assert!(request.header("user-agent").starts_with("Herald/"));
        assert_eq!(request.header("x-docora-app-id"), client.app_id);
        assert_eq!(request.header("webhook-id"), request.json()["event_id"]);
        let traceparent = request.header("traceparent");
        assert_eq!(traceparent.len(), 55, "{traceparent}");
    }
    let endpoints: Vec<(&str, String)> = accepted
        .iter()
        .map(|r| {
            (
                r.endpoint.as_str(),
                r.json()["file"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            ("create", "docs/a.md".to_owned()),
            ("create", "docs/gone.md".to_owned()),
            ("create", "img.bin".to_owned()),
            ("delete", "docs/gone.md".to_owned()),
            ("create", "docs/new.md".to_owned()),
            ("update", "docs/a.md".to_owned()),
        ]
    );
    let update = accepted[5].json();
    assert_eq!(update["previous_sha"], sha(b"alpha\n"));
    assert_eq!(update["commit_sha"], second.as_str());
    assert_eq!(update["repository"]["repository_id"], id.as_str());
    let binary = accepted[2].json();
    assert_eq!(binary["file"]["content_encoding"], "base64");
    assert_eq!(accepted[0].json()["commit_sha"], first.as_str());
    // Field order is Docora's.
    let raw = String::from_utf8(accepted[5].body.clone()).expect("utf-8");
    let order = [
        "\"repository\"",
        "\"file\"",
        "\"previous_sha\"",
        "\"commit_sha\"",
        "\"timestamp\"",
        "\"event_id\"",
    ];
    let positions: Vec<usize> = order.iter().map(|k| raw.find(k).expect(k)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");
    let created = String::from_utf8(accepted[4].body.clone()).expect("utf-8");
    assert!(
        created.contains("ünïcode"),
        "non-ASCII is not escaped: {created}"
    );
    assert_eq!(apply(&accepted), tree_of(&repo));

    let view = app
        .wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;
    assert_eq!(view["pending_events"], 0);
}

#[tokio::test]
async fn a_chunk_retry_is_a_new_transfer_that_reassembles_to_the_file() {
    let repo = TestRepo::new("main");
    let content: Vec<u8> = (0..40_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    repo.write("big.bin", &content);
    repo.commit("big");
    let rig = Rig::serve(&repo).await;
    // Chunk 2 of 4 fails once.
    rig.receiver
        .script([Reply::status(200), Reply::status(200), Reply::status(500)]);
    let (app, client, _) = rig
        .watched(
            "acme",
            &[
                ("HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES", "10000"),
                ("HERALD__DELIVERY__CHUNK_SIZE_BYTES", "16000"),
            ],
        )
        .await;
    rig.receiver
        .wait_for("the last chunk", |r| {
            r.iter().any(|q| q.json()["file"]["chunk"]["index"] == 3)
        })
        .await;
    let received = rig.receiver.received();
    let failure = received
        .iter()
        .position(|r| r.status == 500)
        .expect("chunk 2 failed once");
    let (first_try, retry) = (&received[..=failure], &received[failure + 1..]);
    let chunk = |r: &crate::receiver::Received| r.json()["file"]["chunk"].clone();
    let indexes = |requests: &[crate::receiver::Received]| {
        requests
            .iter()
            .map(|r| chunk(r)["index"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(indexes(first_try), [0, 1, 2]);
    assert_eq!(
        indexes(retry),
        [0, 1, 2, 3],
        "the retry began again at chunk 0"
    );
    for request in &received {
        verify(request, &client.client_auth_key, &client.webhook_secret);
        assert_eq!(chunk(request)["total"], 4);
        assert_eq!(request.json()["file"]["size"], 40_000);
    }

    // Each attempt is a transfer of its own: one chunk id for all its
    // chunks, another for the next attempt's.
    let transfer = |requests: &[crate::receiver::Received]| {
        let ids: std::collections::BTreeSet<String> = requests
            .iter()
            .map(|r| chunk(r)["id"].as_str().expect("a chunk id").to_owned())
            .collect();
        assert_eq!(ids.len(), 1, "one chunk id within a transfer: {ids:?}");
        ids.into_iter().next().expect("one id")
    };
    let (first_id, second_id) = (transfer(first_try), transfer(retry));
    assert_ne!(first_id, second_id, "a new transfer, a new chunk id");
    for (before, again) in first_try.iter().zip(retry) {
        assert_eq!(
            before.header("webhook-id"),
            again.header("webhook-id"),
            "a chunk keeps its webhook-id across attempts"
        );
    }

    // A receiver that reassembles by chunk id, as Docora's clients do,
    // collecting every chunk it accepted: the completed transfer is the file,
    // byte for byte; the abandoned one never completes.
    let mut by_transfer: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for request in received.iter().filter(|r| r.status == 200) {
        let body = request.json();
        by_transfer
            .entry(chunk(request)["id"].as_str().expect("id").to_owned())
            .or_default()
            .push((
                chunk(request)["index"].as_u64().expect("index"),
                body["file"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned(),
            ));
    }
    assert_eq!(by_transfer[&first_id].len(), 2, "chunks 0 and 1 only");
    let completed = &by_transfer[&second_id];
    assert_eq!(
        completed
            .iter()
            .map(|(index, _)| *index)
            .collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let encoded: String = completed.iter().map(|(_, part)| part.as_str()).collect();
    let reassembled = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    assert!(reassembled == content, "the file, byte for byte");
    assert!(apply(&rig.receiver.accepted())["big.bin"] == content);

    // Every chunk's attempt is in the event's history, in order, the
    // successful ones written with the deliveries.
    let is_file = |e: &Value| e["path"] == "big.bin";
    let delivered = app
        .wait_for_events(&client, "status=delivered", "big.bin delivered", |e| {
            e.iter().any(is_file)
        })
        .await;
    let id = delivered.iter().find(|e| is_file(e)).expect("the file")["event_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let detail = app.event(&client, &id).await;
    let history: Vec<(Value, Value)> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["chunk_index"].clone(), a["status_code"].clone()))
        .collect();
    assert_eq!(
        history,
        [
            (0, 200),
            (1, 200),
            (2, 500),
            (0, 200),
            (1, 200),
            (2, 200),
            (3, 200)
        ]
        .map(|(index, status)| (Value::from(index), Value::from(status))),
    );
}

/// Docora's binary rule calls Latin-1 and UTF-16 files text, and looks at
/// the first 512 bytes only; such text goes as Docora sends it, decoded as
/// UTF-8 with U+FFFD where it is not.
#[tokio::test]
async fn text_by_docoras_rule_arrives_as_docora_sends_it() {
    let repo = TestRepo::new("main");
    let mut latin1 = b"# Menu\n\nUne cr\xe8me br\xfbl\xe9e, ".to_vec();
    latin1.extend_from_slice(b"a dessert of custard under a layer of hard caramel.\n");
    let utf16: Vec<u8> = std::iter::once(0xfeff_u16)
        .chain("# Notes\n".encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    let late_nul = [&b"plain text\n".repeat(60)[..], b"\0 after 512 bytes\n"].concat();
    repo.write("latin1.md", &latin1);
    repo.write("utf16.txt", &utf16);
    repo.write("late-nul.txt", &late_nul);
    repo.commit("text");
    let rig = Rig::serve(&repo).await;
    let _watched = rig.watched("acme", &[]).await;
    let accepted = rig
        .receiver
        .wait_for("the three files", |r| r.len() == 3)
        .await;
    for (path, bytes) in [
        ("latin1.md", &latin1),
        ("utf16.txt", &utf16),
        ("late-nul.txt", &late_nul),
    ] {
        let body = accepted
            .iter()
            .map(|r| r.json())
            .find(|body| body["file"]["path"] == path)
            .expect("delivered");
        let file = &body["file"];
        assert!(file.get("content_encoding").is_none(), "{path} is text");
        assert_eq!(file["sha"], sha(bytes), "{path}: the raw bytes' sha");
        assert_eq!(file["size"], bytes.len());
        assert_eq!(
            file["content"].as_str().expect("content"),
            String::from_utf8_lossy(bytes),
            "{path}"
        );
    }
    let raw = String::from_utf8(accepted[0].body.clone()).expect("a UTF-8 body");
    assert!(raw.contains("\\u0000 after 512 bytes"), "{raw}");
}

#[tokio::test]
async fn failing_receivers_get_everything_in_order_with_stable_ids() {
    let repo = TestRepo::new("main");
    for i in 0..5 {
        repo.write(&format!("f{i}.md"), format!("{i}\n"));
    }
    repo.commit("five");
    let rig = Rig::serve(&repo).await;
    rig.receiver.script([
        Reply::status(500),
        Reply::status(502),
        Reply::status(200),
        Reply {
            status: 429,
            retry_after: Some(1),
            delay: std::time::Duration::ZERO,
        },
        Reply::status(404),
        Reply::status(301),
    ]);
    let (_app, _, _) = rig.watched("acme", &[]).await;
    let accepted = rig.receiver.wait_for("five files", |r| r.len() == 5).await;
    let paths: Vec<String> = accepted
        .iter()
        .map(|r| r.json()["file"]["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(
        paths,
        ["f0.md", "f1.md", "f2.md", "f3.md", "f4.md"],
        "strictly in order"
    );
    let all = rig.receiver.received();
    let first_id = all[0].header("webhook-id").to_owned();
    assert!(
        all[..3].iter().all(|r| r.header("webhook-id") == first_id),
        "retries keep the webhook-id"
    );
    assert_ne!(
        all[0].header("webhook-timestamp"),
        "",
        "fresh timestamps per attempt"
    );
}

#[tokio::test]
async fn an_app_that_is_down_waits_without_slowing_the_others_and_gets_everything_back() {
    let repo = TestRepo::new("main");
    for i in 0..3 {
        repo.write(&format!("f{i}.md"), format!("{i}\n"));
    }
    repo.commit("three");
    let rig = Rig::serve(&repo).await;
    let down = &rig.receiver;
    down.fallback(Some(Reply::status(503)));
    let healthy = Receiver::start().await;
    let app = engine_with(&[
        ("HERALD__BREAKER__DELIVERY__THRESHOLD", "2"),
        ("HERALD__BREAKER__DELIVERY__COOLDOWN", "500ms"),
        ("HERALD__DELIVERY__MAX_ATTEMPTS", "3"),
    ])
    .await;
    let down_client = onboard(&app, down, "down").await;
    let healthy_client = onboard(&app, &healthy, "healthy").await;
    let id = watch(&app, &down_client, &rig.url()).await;
    watch(&app, &healthy_client, &rig.url()).await;
    healthy
        .wait_for("the healthy app's events", |r| r.len() == 3)
        .await;

    // More requests than max_attempts later, the down app's first event has
    // not used up its attempts: once two failures opened the breaker, only
    // its probes go, which count none, and nothing is dead.
    let first = app
        .wait_for_events(&down_client, "", "the down app's events", |e| {
            e.iter().any(|e| e["path"] == "f0.md")
        })
        .await
        .into_iter()
        .find(|e| e["path"] == "f0.md")
        .expect("f0.md's event");
    let first = first["event_id"].as_str().expect("id").to_owned();
    let detail = wait_for_attempts(&app, &down_client, &first, 4).await;
    assert_eq!(detail["status"], "pending", "{detail}");
    assert_eq!(
        detail["attempt_count"], 2,
        "probes are not counted: {detail}"
    );
    let view = app.repository(&down_client, &id).await;
    assert_ne!(view["status"], "failed", "{view}");
    assert_eq!(view["failed_events"], 0);
    // A probe per cooldown, not a storm: each request after the opening
    // waits a cooldown (500 ms; the retry backoff is 100 ms) after the
    // answer to the one before.
    let tried = down.received();
    for pair in tried[1..4].windows(2) {
        let gap = pair[1].arrived - pair[0].answered;
        assert!(
            gap >= std::time::Duration::from_millis(450),
            "a request within the breaker's cooldown: {gap:?}"
        );
    }

    down.fallback(None);
    let accepted = down
        .wait_for("everything, once the app is back", |r| r.len() == 3)
        .await;
    let paths: Vec<String> = accepted
        .iter()
        .map(|r| r.json()["file"]["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(paths, ["f0.md", "f1.md", "f2.md"]);
}

#[tokio::test]
async fn a_poison_event_fails_its_subscription_and_later_events_wait() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("b.md", "b\n");
    repo.commit("two");
    let rig = Rig::serve(&repo).await;
    // The endpoint works (it answers) but refuses the first event: 422.
    rig.receiver
        .script([Reply::status(422), Reply::status(422), Reply::status(422)]);
    let (app, client, id) = rig
        .watched("acme", &[("HERALD__DELIVERY__MAX_ATTEMPTS", "3")])
        .await;
    let view = app
        .wait_for(&client, &id, "failed", |v| v["status"] == "failed")
        .await;
    assert_eq!(view["failed_events"], 1);
    assert_eq!(
        view["pending_events"], 1,
        "b.md waits behind the dead event"
    );
    assert!(rig.receiver.accepted().is_empty());
    assert_eq!(
        rig.receiver.received().len(),
        3,
        "exactly max_attempts attempts"
    );

    // The dead event shows in the API with its attempts.
    let (status, dead) = app
        .call(
            Method::GET,
            "/api/events?status=dead",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dead}");
    let dead = dead["data"].as_array().expect("list").clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["path"], "a.md");
    assert_eq!(dead[0]["attempt_count"], 3);
    let event_id = dead[0]["event_id"].as_str().expect("id").to_owned();
    let (_, detail) = app
        .call(
            Method::GET,
            &format!("/api/events/{event_id}"),
            Some(&client.token),
            None,
        )
        .await;
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a["status_code"] == 422 && a["response_excerpt"] == "ok")
    );

    // Another app sees none of it and cannot touch it.
    let intruder = app.onboard("intruder").await;
    let (_, theirs) = app
        .call(Method::GET, "/api/events", Some(&intruder.token), None)
        .await;
    assert_eq!(theirs["data"], json!([]));
    for (method, path) in [
        (Method::GET, format!("/api/events/{event_id}")),
        (Method::POST, format!("/api/events/{event_id}/retry")),
        (Method::POST, format!("/api/events/{event_id}/skip")),
        (Method::POST, format!("/api/repositories/{id}/resync")),
    ] {
        let (status, body) = app.call(method, &path, Some(&intruder.token), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // Retried, it resumes the subscription in order.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/events/{event_id}/retry"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let accepted = rig
        .receiver
        .wait_for("both files after the retry", |r| r.len() == 2)
        .await;
    let paths: Vec<String> = accepted
        .iter()
        .filter_map(|r| r.json()["file"]["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(paths, ["a.md", "b.md"]);
    let view = app
        .wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;
    assert_eq!(view["failed_events"], 0);
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/events/{event_id}/retry"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a delivered event is not retried"
    );

    // A resync delivers the whole tree again.
    resync(&app, &client, &id).await;
    let accepted = rig
        .receiver
        .wait_for("the tree again", |r| r.len() == 4)
        .await;
    assert_eq!(apply(&accepted[2..]), tree_of(&repo));
}

#[tokio::test]
async fn gone_pauses_the_subscription() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("one");
    let rig = Rig::serve(&repo).await;
    rig.receiver.script([Reply::status(410)]);
    let (app, client, id) = rig.watched("acme", &[]).await;
    let view = app
        .wait_for(&client, &id, "paused", |v| v["status"] == "paused")
        .await;
    assert_eq!(view["pending_events"], 1);
    // The app's next delivery, of a repository it watches from now on,
    // comes after its dispatcher looked again at what is due: the paused
    // event, due again a backoff (100 ms) after its 410, is not sent.
    let witness = Remotes::serve(&["witness.git"]);
    watch(&app, &client, &witness.url("witness.git")).await;
    rig.receiver
        .wait_for("the other repository's file", |r| !r.is_empty())
        .await;
    let to_paused: Vec<_> = paths(&rig.receiver.received())
        .into_iter()
        .filter(|path| path == "a.md")
        .collect();
    assert_eq!(
        to_paused.len(),
        1,
        "nothing more is sent to a paused subscription"
    );
    let view = app.repository(&client, &id).await;
    assert_eq!(view["status"], "paused", "{view}");
}

#[tokio::test]
async fn a_sigkill_in_the_middle_of_a_delivery_loses_and_reorders_nothing() {
    let repo = TestRepo::new("main");
    for i in 0..120 {
        repo.write(&format!("files/{i:03}.md"), format!("file {i}\n"));
    }
    repo.commit("many");
    let rig = Rig::serve(&repo).await;
    rig.receiver.fallback(Some(Reply {
        status: 200,
        retry_after: None,
        delay: std::time::Duration::from_millis(15),
    }));
    let settings: [(&str, &str); 0] = [];
    let (app, _, _) = rig.watched("acme", &settings).await;
    rig.receiver
        .wait_for("a part of the delivery", |r| r.len() >= 30)
        .await;

    let (dir, database) = app.kill().await;
    let before = rig.receiver.received().len();
    assert!(before < 120, "killed in the middle ({before} delivered)");

    let restarted = engine_restart(dir, database).await;
    let accepted = rig
        .receiver
        .wait_for("everything after the restart", |r| {
            r.iter()
                .map(|q| q.header("webhook-id").to_owned())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 120
        })
        .await;
    // First sightings are in order; repeats carry an id already seen.
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for request in &accepted {
        let id = request.header("webhook-id").to_owned();
        if seen.insert(id) {
            order.push(
                request.json()["file"]["path"]
                    .as_str()
                    .expect("path")
                    .to_owned(),
            );
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "nothing reordered");
    assert_eq!(apply(&accepted), tree_of(&repo), "nothing lost");
    drop(restarted);
}

pub(crate) async fn engine_restart(
    dir: tempfile::TempDir,
    database: crate::helpers::TestDatabase,
) -> TestApp {
    TestApp::builder()
        .fast()
        .data_dir(dir)
        .spawn_with(database)
        .await
}

/// The `sync_failed` webhooks among what a receiver got.
fn sync_failures(received: &[crate::receiver::Received]) -> Vec<crate::receiver::Received> {
    received
        .iter()
        .filter(|r| r.endpoint == "sync_failed")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_failing_remote_sends_one_sync_failed_per_opening_while_it_is_down() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("a");
    let rig = Rig::serve(&repo).await;
    let (app, client, id) = rig
        .watched(
            "acme",
            &[
                ("HERALD__BREAKER__GIT__THRESHOLD", "2"),
                ("HERALD__BREAKER__GIT__COOLDOWN", "1h"),
            ],
        )
        .await;
    rig.receiver
        .wait_for("the initial snapshot", |r| {
            r.iter().any(|r| r.endpoint == "create")
        })
        .await;

    // The remote goes down: scans fail until the breaker opens, and with
    // an hour's cooldown no scan follows. Once the view counts the opening
    // failure (its retry_count is written with any sync_failed), every
    // failure and what it wrote is stored: one sync_failed, of the opening,
    // not one per failure.
    drop(rig.daemon);
    let accepted = sync_failures(
        &rig.receiver
            .wait_for("a sync_failed", |r| !sync_failures(r).is_empty())
            .await,
    );
    app.wait_for(&client, &id, "the opening failure", |v| {
        v["circuit_breaker"]["status"] == "open" && v["retry_count"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    let stored: Vec<_> = app
        .outbox(&client, &id)
        .await
        .into_iter()
        .filter(|e| e.kind == "sync_failed")
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "one per opening, not per failure: {stored:#?}"
    );
    let accepted_later = sync_failures(&rig.receiver.accepted());
    assert_eq!(accepted_later.len(), 1, "one per opening, not per failure");
    let created: Vec<String> = rig
        .receiver
        .accepted()
        .iter()
        .filter(|r| r.endpoint != "sync_failed")
        .map(|r| format!("{} {}", r.endpoint, r.json()["file"]["path"]))
        .collect();
    assert_eq!(created, ["create \"a.md\""], "nothing else was sent");
    let request = &accepted[0];
    verify(request, &client.client_auth_key, &client.webhook_secret);
    assert_eq!(request.endpoint, "sync_failed");
    let body = request.json();
    assert_eq!(body["event"], "sync_failed");
    assert_eq!(body["repository"]["repository_id"], id.as_str());
    assert_eq!(body["error"]["type"], "git_failure");
    assert_eq!(
        body["error"]["message"],
        "the git remote could not be reached"
    );
    assert_eq!(body["circuit_breaker"]["status"], "open");
    assert_eq!(body["circuit_breaker"]["threshold"], 2);
    assert_eq!(body["circuit_breaker"]["consecutive_failures"], 2);
    assert!(body["circuit_breaker"]["cooldown_until"].is_string());
    let raw = String::from_utf8(request.body.clone()).expect("utf-8");
    let order = [
        "\"event\"",
        "\"repository\"",
        "\"error\"",
        "\"circuit_breaker\"",
        "\"retry_count\"",
        "\"timestamp\"",
        "\"event_id\"",
    ];
    let positions: Vec<usize> = order.iter().map(|k| raw.find(k).expect(k)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");
}

#[tokio::test]
async fn slow_answers_time_out_and_refused_connections_are_retried() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("b.md", "b\n");
    repo.commit("two");
    let served = Served::new(&repo, "r.git");
    let daemon = GitDaemon::serve(served.root());
    // Nothing listens on this port yet: connections are refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("address").port()
    };
    let app = engine_with(&[
        ("HERALD__DELIVERY__TIMEOUT", "500ms"),
        ("HERALD__BREAKER__DELIVERY__COOLDOWN", "300ms"),
    ])
    .await;
    let client = app
        .onboard_with(json!({"app_name": "acme", "base_url": format!("http://127.0.0.1:{port}/hooks"), "email": "a@b.co"}))
        .await;
    watch(&app, &client, &daemon.url("r.git")).await;
    let events = app
        .wait_for_events(&client, "", "a failed attempt recorded", |e| {
            e.first()
                .is_some_and(|event| event["attempt_count"].as_i64().unwrap_or(0) >= 1)
        })
        .await;
    let event_id = events[0]["event_id"].as_str().expect("id").to_owned();

    // The receiver comes up, but answers its first request too slowly.
    let receiver = Receiver::start_on(port).await;
    receiver.script([Reply {
        status: 200,
        retry_after: None,
        delay: std::time::Duration::from_secs(2),
    }]);
    let accepted = receiver.wait_for("both files", |r| r.len() >= 2).await;
    let paths: Vec<String> = accepted
        .iter()
        .filter_map(|r| r.json()["file"]["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(&paths[paths.len() - 2..], ["a.md", "b.md"]);
    // Successes are written a batch at a time, just after they are sent.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let detail = loop {
        let (_, detail) = app
            .call(
                Method::GET,
                &format!("/api/events/{event_id}"),
                Some(&client.token),
                None,
            )
            .await;
        if detail["status"] == "delivered" || tokio::time::Instant::now() > deadline {
            break detail;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let classes: Vec<&str> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["error_class"].as_str())
        .collect();
    assert!(classes.contains(&"connect"), "{detail}");
    assert!(classes.contains(&"timeout"), "{detail}");
    assert_eq!(detail["status"], "delivered");
}

#[tokio::test]
async fn sigterm_during_a_delivery_drains_it_exits_zero_and_loses_nothing() {
    let repo = TestRepo::new("main");
    for i in 0..5 {
        repo.write(&format!("f{i}.md"), format!("file {i}\n"));
    }
    repo.commit("five");
    let rig = Rig::serve(&repo).await;
    // The first webhook is answered at once, every later one after 1.5 s.
    rig.receiver.script([Reply::status(200)]);
    rig.receiver.fallback(Some(Reply {
        status: 200,
        retry_after: None,
        delay: std::time::Duration::from_millis(1500),
    }));
    let (mut app, client, id) = rig.watched("acme", &[]).await;
    rig.receiver
        .wait_for("the first webhook", |r| r.len() == 1)
        .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while rig.receiver.arrivals() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{}", app.logs());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The second webhook is in flight now: the receiver holds it for 1.5 s.

    assert_eq!(app.terminate().await, Some(0), "{}", app.logs());
    assert_eq!(
        rig.receiver.accepted().len(),
        2,
        "the in-flight webhook was answered before the exit, and no new one started"
    );

    rig.receiver.fallback(None);
    let (dir, database) = app.into_parts();
    let restarted = engine_restart(dir, database).await;
    let accepted = rig
        .receiver
        .wait_for("the rest after the restart", |r| r.len() >= 5)
        .await;
    // Once every event is recorded delivered, nothing is left to send.
    restarted
        .wait_for(&client, &id, "every event recorded", |v| {
            v["pending_events"] == 0
        })
        .await;
    let accepted_later = rig.receiver.accepted();
    assert_eq!(
        accepted_later.len(),
        5,
        "the drained deliveries were recorded: none is sent twice"
    );
    assert_eq!(apply(&accepted), tree_of(&repo), "nothing lost");
    drop(restarted);
}

/// Waits (bounded) until event `id` of `client` shows `count` attempts
/// (probes included), or is dead; its detail. An attempt is written with
/// the event's new state, so the detail shows what the attempt decided.
async fn wait_for_attempts(app: &TestApp, client: &TestClient, id: &str, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let detail = app.event(client, id).await;
        if detail["attempts"].as_array().map_or(0, Vec::len) >= count || detail["status"] == "dead"
        {
            return detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {count} attempts: {detail}\nlogs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The paths of the requests, in order.
fn paths(requests: &[crate::receiver::Received]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| r.json()["file"]["path"].as_str().map(str::to_owned))
        .collect()
}

/// A subscription whose first event died: three files, a receiver that
/// answers 404 for longer than two attempts allow.
struct DeadSubscription {
    repo: TestRepo,
    receiver: Receiver,
    app: TestApp,
    client: TestClient,
    id: String,
    _served: (Served, GitDaemon),
}

async fn a_dead_subscription(dead_retry_interval: &str) -> DeadSubscription {
    let repo = TestRepo::new("main");
    for name in ["a.md", "b.md", "c.md"] {
        repo.write(name, format!("{name}\n"));
    }
    repo.commit("three");
    let rig = Rig::serve(&repo).await;
    rig.receiver.fallback(Some(Reply::status(404)));
    let settings = [
        ("HERALD__DELIVERY__MAX_ATTEMPTS", "2"),
        ("HERALD__DELIVERY__DEAD_RETRY_INTERVAL", dead_retry_interval),
    ];
    let (app, client, id) = rig.watched("acme", &settings).await;
    let Rig {
        served,
        daemon,
        receiver,
    } = rig;
    app.wait_for(&client, &id, "failed", |v| v["status"] == "failed")
        .await;
    DeadSubscription {
        repo,
        receiver,
        app,
        client,
        id,
        _served: (served, daemon),
    }
}

#[tokio::test]
async fn a_dead_event_is_probed_again_and_a_recovered_receiver_gets_everything_in_order() {
    let DeadSubscription {
        repo,
        receiver,
        app,
        client,
        id,
        _served,
    } = a_dead_subscription("1s").await;

    // Dead, it is still probed: one request per interval, never b.md
    // before it (order is the contract).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while receiver.received().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no probes came");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tried = receiver.received();
    assert!(
        paths(&tried).iter().all(|p| p == "a.md"),
        "{:?}",
        paths(&tried)
    );
    for pair in tried[1..].windows(2) {
        let gap = pair[1].arrived - pair[0].answered;
        assert!(
            gap >= std::time::Duration::from_millis(900),
            "one probe per dead_retry_interval, not a flood: {gap:?}"
        );
    }
    let view = app.repository(&client, &id).await;
    assert_eq!(view["status"], "failed", "a failed probe leaves it dead");
    assert_eq!(view["failed_events"], 1);

    // The consumer recovers: with no API call, it gets everything in order.
    receiver.fallback(None);
    let accepted = receiver
        .wait_for("every file after the probe", |r| r.len() == 3)
        .await;
    assert_eq!(paths(&accepted), ["a.md", "b.md", "c.md"]);
    for request in &accepted {
        verify(request, &client.client_auth_key, &client.webhook_secret);
    }
    assert_eq!(
        accepted[0].header("webhook-id"),
        tried[0].header("webhook-id"),
        "the probe is the same event"
    );
    assert_eq!(apply(&accepted), tree_of(&repo));
    let view = app
        .wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;
    assert_eq!(view["failed_events"], 0);
    assert_eq!(view["pending_events"], 0);
}

#[tokio::test]
async fn with_dead_retry_interval_zero_a_dead_event_stays_dead() {
    let DeadSubscription {
        receiver,
        app,
        client,
        id,
        repo: _repo,
        _served,
    } = a_dead_subscription("0").await;
    receiver.fallback(None);

    // The app's next delivery, of a repository it watches from now on, is
    // sent and recorded after its dispatcher looked again at what is due
    // (a probe would be due at once were 0 an interval): nothing more went
    // to the dead event, which is still dead.
    let witness = Remotes::serve(&["witness.git"]);
    let witness_id = watch(&app, &client, &witness.url("witness.git")).await;
    app.wait_for(
        &client,
        &witness_id,
        "the other repository delivered",
        |v| v["status"] == "synced" && v["pending_events"] == 0,
    )
    .await;
    let tried = paths(&receiver.received());
    assert_eq!(
        tried.iter().filter(|path| *path == "a.md").count(),
        2,
        "exactly max_attempts attempts: {tried:?}"
    );
    assert_eq!(paths(&receiver.accepted()), ["README.md"]);
    let view = app.repository(&client, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["failed_events"], 1);
    assert_eq!(view["pending_events"], 2, "b.md and c.md wait behind it");
}

#[tokio::test]
async fn registering_again_returns_the_same_id_and_sends_the_whole_tree_again() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("docs/b.md", "b\n");
    repo.commit("two");
    let rig = Rig::serve(&repo).await;
    let (app, client, id) = rig.watched("acme", &[]).await;
    let (receiver, url) = (&rig.receiver, rig.url());
    let first = receiver.wait_for("the tree", |r| r.len() == 2).await;
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;

    // The consumer lost its store and registers again, as Docora's do.
    let (status, again) = app.register(&client, json!({"github_url": url})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["repository_id"], id.as_str(), "the same id");
    let accepted = receiver
        .wait_for("the whole tree again", |r| r.len() == 4)
        .await;
    let resent = &accepted[2..];
    assert!(
        resent.iter().all(|r| r.endpoint == "create"),
        "every file as create"
    );
    for request in resent {
        verify(request, &client.client_auth_key, &client.webhook_secret);
        assert!(
            first
                .iter()
                .all(|f| f.header("webhook-id") != request.header("webhook-id")),
            "new events, not repeats a receiver would drop"
        );
    }
    assert_eq!(apply(resent), tree_of(&repo), "the whole current tree");
    app.wait_for(&client, &id, "synced", |v| v["status"] == "synced")
        .await;
    assert_eq!(app.repositories(&client).await.len(), 1);
}

/// Asks for a resync of `id` as `client`; accepted.
pub(crate) async fn resync(app: &TestApp, client: &TestClient, id: &str) {
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{id}/resync"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}
