//! Herald over months: mirrors stay compact, old events go, state heals.

use reqwest::{Method, StatusCode};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{Rig, TestApp, TestClient, engine_with, noise, onboard, proc_status_kib};
use crate::receiver::Receiver;

/// One file, `log.md`, that moves through versions `v0`, `v1`…, watched by
/// one app on an engine with `settings`.
struct Log {
    // Declared first so the daemon stops before its root is removed.
    _daemon: GitDaemon,
    served: Served,
    repo: TestRepo,
    receiver: Receiver,
    app: TestApp,
    client: TestClient,
    id: String,
}

impl Log {
    /// `v0` is observed before the log is handed over.
    async fn watched(settings: &[(&str, &str)]) -> Log {
        let repo = TestRepo::new("main");
        repo.write("log.md", "v0\n");
        let initial = repo.commit("v0");
        let rig = Rig::serve(&repo).await;
        let (app, client, id) = rig.watched("consumer", settings).await;
        let Rig {
            served,
            daemon,
            receiver,
        } = rig;
        app.wait_for_commit(&client, &id, initial.trim()).await;
        Log {
            _daemon: daemon,
            served,
            repo,
            receiver,
            app,
            client,
            id,
        }
    }

    /// Commits and pushes version `v`; its commit.
    fn push(&self, v: u32) -> String {
        self.repo.write("log.md", format!("v{v}\n"));
        let commit = self.repo.commit(&format!("v{v}"));
        self.served.push(&self.repo, "HEAD:refs/heads/main", false);
        commit.trim().to_owned()
    }

    /// Waits for version `last`, then checks that every version from `v0`
    /// arrived, each once (repeats carry the same `webhook-id`), in order.
    async fn assert_every_version_up_to(&self, last: u32) {
        let accepted = self
            .receiver
            .wait_for("the last version", |r| {
                r.iter()
                    .any(|w| w.json()["file"]["content"] == format!("v{last}\n"))
            })
            .await;
        let mut seen = std::collections::HashSet::new();
        let arrived: Vec<String> = accepted
            .iter()
            .filter(|w| seen.insert(w.header("webhook-id").to_owned()))
            .filter_map(|w| w.json()["file"]["content"].as_str().map(str::to_owned))
            .collect();
        let expected: Vec<String> = (0..=last).map(|v| format!("v{v}\n")).collect();
        assert_eq!(arrived, expected, "every version, in order");
    }
}

#[tokio::test]
async fn a_mirror_stays_compact_over_many_fetches_and_every_version_arrives() {
    // Scans come from the pushes' triggers only.
    let log = Log::watched(&[
        ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
        ("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0"),
    ])
    .await;
    let (app, client, id) = (&log.app, &log.client, &log.id);
    let versions = 120;
    for v in 1..=versions {
        let commit = log.push(v);
        let (status, body) = app
            .call(
                Method::POST,
                &format!("/api/repositories/{id}/scan"),
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        app.wait_for_commit(client, id, &commit).await;
    }
    let packs = app
        .mirror_dirs()
        .iter()
        .map(|mirror| {
            std::fs::read_dir(mirror.join("objects").join("pack"))
                .expect("the mirror's packs")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        (1..=16).contains(&packs),
        "{packs} pack files after {versions} fetches"
    );
    log.assert_every_version_up_to(versions).await;
}

#[tokio::test]
async fn delivered_events_go_after_their_retention_and_new_ones_still_arrive_in_order() {
    let log = Log::watched(&[
        ("HERALD__DELIVERY__EVENT_RETENTION", "1s"),
        ("HERALD__DELIVERY__ATTEMPT_RETENTION", "1s"),
    ])
    .await;
    let (app, client, id, receiver) = (&log.app, &log.client, &log.id, &log.receiver);
    let versions = 20;
    let mut most = 0;
    for v in 1..=versions {
        let commit = log.push(v);
        app.wait_for_commit(client, id, &commit).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        most = most.max(app.stored_rows("events").await);
    }
    log.assert_every_version_up_to(versions).await;
    assert!(
        most < i64::from(versions),
        "the events table kept growing: {most} rows for {versions} versions"
    );

    // Once past the retention, nothing delivered is left to list.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = app
            .call(
                Method::GET,
                "/api/events?status=delivered",
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["data"].as_array().is_some_and(Vec::is_empty)
            && app.stored_rows("delivery_attempts").await == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered events are still listed: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // What is kept still accepts new events, in order after the last one.
    log.push(versions + 1);
    receiver
        .wait_for("the version after retention", |r| {
            r.iter()
                .any(|w| w.json()["file"]["content"] == format!("v{}\n", versions + 1))
        })
        .await;
    let view = app.repository(client, id).await;
    assert_eq!(view["failed_events"], 0, "{view}");
}

#[tokio::test]
async fn a_successful_scan_clears_the_errors_git_left_even_when_nothing_moved() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("a");
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[]).await;
    let client = onboard(&app, &rig.receiver, "consumer").await;
    let (status, body) = app
        .register(
            &client,
            serde_json::json!({"url": rig.url(), "branch": "main"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["repository_id"].as_str().expect("id").to_owned();
    app.wait_for(&client, &id, "the first sync", |v| v["status"] == "synced")
        .await;

    // The watched branch disappears (the remote's default moves away first,
    // as a host would require): scans fail and say so.
    rig.served.push(&repo, "HEAD:refs/heads/other", false);
    rig.served.set_head("other");
    rig.served.push(&repo, ":refs/heads/main", false);
    app.wait_for(&client, &id, "the failure recorded", |v| {
        v["retry_count"].as_i64().unwrap_or(0) > 0 && !v["last_error"].is_null()
    })
    .await;
    // It comes back at the same commit: nothing moved, and the state heals.
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let healed = app
        .wait_for(&client, &id, "the errors cleared", |v| {
            v["retry_count"] == 0 && v["last_error"].is_null()
        })
        .await;
    assert_eq!(healed["status"], "synced", "{healed}");
}

#[tokio::test]
async fn a_50_mib_binary_is_sent_in_chunks_within_three_times_its_size_of_memory() {
    const SIZE: usize = 50 << 20;
    let content = noise(SIZE, 0x9e37_79b9_7f4a_7c15);
    let repo = TestRepo::new("main");
    repo.write("big.bin", &content);
    repo.commit("big");
    let rig = Rig::serve(&repo).await;
    // The first attempt is told to come back in an hour: then the process
    // idles, and the measured sending starts when the test says so.
    rig.receiver.script([crate::receiver::Reply {
        status: 503,
        retry_after: Some(3600),
        delay: std::time::Duration::ZERO,
    }]);
    let (app, client, _) = rig.watched("consumer", &[]).await;
    // The first attempt is recorded (a 503 is not counted, but leaves its
    // error): the lane waits for the hour.
    let pending = app
        .wait_for_events(
            &client,
            "status=pending",
            "the first attempt recorded",
            |e| e.first().is_some_and(|e| e["last_error"].is_string()),
        )
        .await;
    let event = pending[0]["event_id"]
        .as_str()
        .expect("the event")
        .to_owned();

    // From here on, only the sending: its peak is measured from now.
    let pid = app.pid();
    let before = proc_status_kib(pid, "VmRSS");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("the peak can be reset");
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/events/{event}/retry"),
            Some(&client.token),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let accepted = rig
        .receiver
        .wait_for_within("the whole file", std::time::Duration::from_secs(300), |r| {
            crate::delivery::apply(r)
                .get("big.bin")
                .is_some_and(|b| b.len() == SIZE)
        })
        .await;
    assert_eq!(crate::delivery::apply(&accepted)["big.bin"], content);
    let chunks = accepted
        .iter()
        .filter(|r| !r.json()["file"]["chunk"].is_null())
        .count();
    assert!(chunks > 1, "sent in chunks: {chunks}");
    let peak = proc_status_kib(pid, "VmHWM");
    let grew = peak.saturating_sub(before) * 1024;
    assert!(
        grew <= 3 * SIZE as u64,
        "sending took {} MiB more than before ({} MiB file)",
        grew >> 20,
        SIZE >> 20
    );
}

#[tokio::test]
async fn a_600_mb_file_that_packs_to_a_megabyte_costs_its_pieces_not_its_size() {
    // 600 MB of zeros: git stores it whole (over core.bigFileThreshold) in
    // well under a megabyte of pack.
    const SIZE: u64 = 600_000_000;
    let repo = TestRepo::new("main");
    repo.write("a.md", "small\n");
    let mut expected = <sha2::Sha256 as sha2::Digest>::new();
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(repo.path().join("zeros.bin")).expect("create");
        let piece = vec![0u8; 1 << 20];
        let mut left = SIZE;
        while left > 0 {
            let n = usize::try_from(left.min(piece.len() as u64)).expect("small");
            file.write_all(&piece[..n]).expect("write");
            sha2::Digest::update(&mut expected, &piece[..n]);
            left -= n as u64;
        }
    }
    let expected = hex::encode(sha2::Digest::finalize(expected));
    repo.commit("zeros");
    let rig = Rig::serve(&repo).await;
    let (app, _, _) = rig.watched("consumer", &[]).await;
    let accepted = rig
        .receiver
        .wait_for_within("both webhooks", std::time::Duration::from_secs(300), |r| {
            r.len() == 2
        })
        .await;
    let endpoints: Vec<&str> = accepted.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["create", "file_too_large"]);
    let notice = accepted[1].json();
    assert_eq!(notice["file"]["path"], "zeros.bin");
    assert_eq!(notice["file"]["size"], SIZE);
    assert_eq!(notice["file"]["sha"], expected.as_str());
    let peak = proc_status_kib(app.pid(), "VmHWM");
    assert!(
        peak < 200 << 10,
        "Herald's peak RSS was {} MiB for a {} MB file",
        peak >> 10,
        SIZE / 1_000_000
    );
}

#[tokio::test]
async fn a_file_over_max_file_bytes_is_announced_in_its_place_without_its_content() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "small\n");
    repo.write("b.bin", noise(4096, 0x9e37_79b9_7f4a_7c15));
    repo.write("c.md", "small too\n");
    repo.commit("three");
    let rig = Rig::serve(&repo).await;
    let (_app, client, id) = rig
        .watched("consumer", &[("HERALD__DELIVERY__MAX_FILE_BYTES", "1024")])
        .await;
    let accepted = rig
        .receiver
        .wait_for("three webhooks", |r| r.len() == 3)
        .await;
    let endpoints: Vec<&str> = accepted.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["create", "file_too_large", "create"]);
    let notice = accepted[1].json();
    assert_eq!(notice["repository"]["repository_id"], id.as_str());
    assert_eq!(notice["file"]["path"], "b.bin");
    assert_eq!(notice["file"]["size"], 4096);
    assert_eq!(
        notice["file"]["sha"],
        crate::delivery::sha(&noise(4096, 0x9e37_79b9_7f4a_7c15)).as_str()
    );
    assert!(notice["file"].get("content").is_none(), "{notice}");
    crate::receiver::verify(
        &accepted[1],
        &client.client_auth_key,
        &client.webhook_secret,
    );
}
