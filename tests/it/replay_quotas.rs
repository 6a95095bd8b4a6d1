//! Replay quotas (docs/limits.md): one app's replays under way, its events
//! waiting and the database bytes its replays write an hour are bounded;
//! past a bound a replay is answered 429 with `Retry-After` (422 when it
//! alone is larger than the bound), never 500, and nothing of it is
//! written; and one app's flood of replays leaves other apps' pushes and
//! the API alone.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::gitserver::TestRepo;
use crate::helpers::{
    CLUSTER, Rig, TestApp, TestClient, TestDatabase, assert_error, engine_with, read,
};
use crate::receiver::Reply;
use crate::replay::{SETTINGS, post_replay, push_and_scan};

/// A replay's answer: its status, body and `Retry-After`.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

async fn replay(app: &TestApp, client: &TestClient, id: &str, body: &Value) -> Answer {
    let response = post_replay(app, client, id, body).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (status, body) = read(response).await;
    Answer {
        status,
        body,
        retry_after,
    }
}

/// A refusal by quota: 429 with this code and a `Retry-After`.
fn assert_quota(answer: &Answer, codes: &[&str]) -> u64 {
    let code = assert_error(answer.status, &answer.body, StatusCode::TOO_MANY_REQUESTS);
    assert!(codes.contains(&code.as_str()), "{}", answer.body);
    let message = answer.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("nothing was written"), "{message}");
    answer.retry_after.expect("a Retry-After")
}

/// Adds `n` small files under `dir`.
fn add_files(repo: &TestRepo, dir: &str, n: usize) {
    for i in 0..n {
        repo.write(&format!("{dir}/{i:05}.md"), format!("file {i}\n"));
    }
}

/// `SETTINGS`, events kept pending however often their receiver refuses
/// them (and delivered at once when it recovers), and `extra`.
fn settings<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = SETTINGS.to_vec();
    all.push(("HERALD__DELIVERY__MAX_ATTEMPTS", "100000"));
    all.push(("HERALD__BREAKER__DELIVERY__COOLDOWN", "100ms"));
    all.extend_from_slice(extra);
    all
}

/// Events of `client`'s app waiting for delivery (pending or dead).
async fn waiting(app: &TestApp, client: &TestClient) -> i64 {
    app.stored_rows_where(
        "events",
        &format!(
            "app_id = '{}' AND status IN ('pending', 'dead')",
            client.app_id
        ),
    )
    .await
}

/// Events written by replays.
async fn replayed(app: &TestApp) -> i64 {
    app.stored_rows_where("events", "replay_id IS NOT NULL")
        .await
}

/// Replays between the two commits of a repository of `FILES` files, and
/// a receiver that took the snapshot and now refuses everything: one
/// replay's events may wait, not two.
const FILES: usize = 1500;

/// A repository whose second commit adds [`FILES`] files; its two commits.
fn many_files_repo() -> (TestRepo, String, String) {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    let first = repo.commit("first").trim().to_owned();
    add_files(&repo, "many", FILES);
    let second = repo.commit("second").trim().to_owned();
    (repo, first, second)
}

/// The settings of a flood: one replay's events may wait, not two.
fn flood_settings() -> Vec<(&'static str, &'static str)> {
    settings(&[("HERALD__REPLAY__MAX_WAITING_EVENTS_PER_APP", "2000")])
}

/// 20 replays at once of the app's subscription `id`, sent in turn to
/// each of `instances`: exactly one is written, the others are refused
/// by a quota with a `Retry-After`, and they left no row and no event.
async fn flood_gets_one(instances: &[&TestApp], client: &TestClient, id: &str, body: &Value) {
    let answers = futures::future::join_all(
        (0..20).map(|i| replay(instances[i % instances.len()], client, id, body)),
    )
    .await;
    let accepted: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(
        accepted.len(),
        1,
        "exactly one replay: {:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    assert_eq!(
        accepted[0].body["events_total"], FILES,
        "{}",
        accepted[0].body
    );
    for answer in answers.iter().filter(|a| a.status != StatusCode::ACCEPTED) {
        let retry = assert_quota(answer, &["replay_in_progress", "too_many_waiting_events"]);
        assert!(retry >= 1, "{retry}");
    }
    let app = instances[0];
    assert_eq!(app.stored_rows("replays").await, 1);
    assert_eq!(replayed(app).await, i64::try_from(FILES).expect("fits"));
}

#[tokio::test]
async fn a_flood_of_replays_gets_the_allowed_one_and_429s_and_writes_nothing_more() {
    let (repo, first, second) = many_files_repo();
    let rig = Rig::serve(&repo).await;
    let (app, client, id) = rig.watched("flooder", &flood_settings()).await;
    app.wait_for_commit(&client, &id, &second).await;
    rig.receiver
        .wait_for("the snapshot", |r| r.len() > FILES)
        .await;
    // From now on the app's events wait.
    rig.receiver.fallback(Some(Reply::status(503)));
    flood_gets_one(&[&app], &client, &id, &json!({"from": first, "to": second})).await;
}

/// The places under way are counted in the database: instances sharing it
/// (PostgreSQL) give one app one place between them.
#[tokio::test]
async fn instances_sharing_a_database_count_an_apps_replays_together() {
    let database = TestDatabase::create().await;
    if !database.is_shared_server() {
        // Several instances need PostgreSQL; SQLite is single-instance.
        return;
    }
    let (repo, first, second) = many_files_repo();
    let rig = Rig::serve(&repo).await;
    let settings = flood_settings();
    let start = |database: TestDatabase| {
        TestApp::builder()
            .fast()
            .envs(&CLUSTER)
            .envs(&settings)
            .spawn_with(database)
    };
    let a = start(database.shared()).await;
    let b = start(database.shared()).await;
    let (client, id) = rig.subscribe(&a, &rig.receiver, "flooder").await;
    a.wait_for_commit(&client, &id, &second).await;
    rig.receiver
        .wait_for("the snapshot", |r| r.len() > FILES)
        .await;
    rig.receiver.fallback(Some(Reply::status(503)));
    flood_gets_one(
        &[&a, &b],
        &client,
        &id,
        &json!({"from": first, "to": second}),
    )
    .await;
}

#[tokio::test]
async fn a_replay_that_would_pass_the_waiting_events_cap_is_refused_until_they_are_delivered() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("b.md", "b\n");
    let first = repo.commit("first").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    let (app, client, id) = rig
        .watched(
            "patient",
            &settings(&[("HERALD__REPLAY__MAX_WAITING_EVENTS_PER_APP", "3")]),
        )
        .await;
    app.wait_for_commit(&client, &id, &first).await;
    rig.receiver
        .wait_for("the snapshot", |r| r.len() >= 2)
        .await;
    rig.receiver.fallback(Some(Reply::status(503)));
    repo.write("a.md", "a, again\n");
    repo.write("b.md", "b, again\n");
    repo.commit("second");
    let second = push_and_scan(&rig, &repo, &app, &client, &id).await;
    assert_eq!(waiting(&app, &client).await, 2, "the scan's updates wait");

    // 2 waiting + its 2 > 3.
    let body = json!({"from": first, "to": second});
    let refused = replay(&app, &client, &id, &body).await;
    assert_eq!(
        assert_quota(&refused, &["too_many_waiting_events"]),
        30,
        "{}",
        refused.body
    );
    let message = refused.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("2 events") && message.contains("add 2") && message.contains("at most 3"),
        "{message}"
    );
    assert_eq!(app.stored_rows("replays").await, 0);
    assert_eq!(replayed(&app).await, 0);

    // A replay of 4 events can never fit under 3: 422, whatever waits.
    for i in 0..4 {
        repo.write(&format!("new/{i}.md"), "new\n");
    }
    let third = repo.commit("third").trim().to_owned();
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let too_large = replay(&app, &client, &id, &json!({"from": second, "to": third})).await;
    let code = assert_error(
        too_large.status,
        &too_large.body,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(code, "replay_too_large", "{}", too_large.body);
    assert_eq!(app.stored_rows("replays").await, 0);
    assert_eq!(replayed(&app).await, 0);

    // Once the waiting events are delivered, the same replay is written.
    rig.receiver.fallback(None);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while waiting(&app, &client).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "{}", app.logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let written = replay(&app, &client, &id, &body).await;
    assert_eq!(written.status, StatusCode::ACCEPTED, "{}", written.body);
    assert_eq!(written.body["events_total"], 2);
}

#[tokio::test]
async fn the_hourly_bytes_budget_refuses_and_says_when_it_frees() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.write("b.md", "b\n");
    let first = repo.commit("first").trim().to_owned();
    repo.write("a.md", "a, again\n");
    repo.write("b.md", "b, again\n");
    let second = repo.commit("second").trim().to_owned();
    add_files(&repo, "more", 10);
    let third = repo.commit("third").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    const BUDGET: i64 = 2500;
    let budget = BUDGET.to_string();
    let (app, client, id) = rig
        .watched(
            "thrifty",
            &settings(&[("HERALD__REPLAY__MAX_BYTES_PER_HOUR_PER_APP", &budget)]),
        )
        .await;
    app.wait_for_commit(&client, &id, &third).await;

    let body = json!({"from": first, "to": second});
    let written = replay(&app, &client, &id, &body).await;
    assert_eq!(written.status, StatusCode::ACCEPTED, "{}", written.body);
    // What it recorded: more than half the budget, so a second cannot fit.
    assert_eq!(
        app.stored_rows_where(
            "replays",
            &format!("bytes > {} AND bytes <= {BUDGET}", BUDGET / 2)
        )
        .await,
        1,
        "the replay's bytes are recorded, between half the budget and all of it"
    );

    let refused = replay(&app, &client, &id, &body).await;
    let retry = assert_quota(&refused, &["replay_budget_spent"]);
    // The first replay leaves the hour's window in (almost) an hour.
    assert!((3000..=3600).contains(&retry), "Retry-After {retry}");
    let message = refused.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("frees enough in {retry} s")),
        "{message}"
    );
    assert_eq!(app.stored_rows("replays").await, 1);
    assert_eq!(replayed(&app).await, 2);

    // Twelve events are more than the whole budget: never, 422.
    let too_large = replay(&app, &client, &id, &json!({"from": first, "to": third})).await;
    let code = assert_error(
        too_large.status,
        &too_large.body,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(code, "replay_too_large", "{}", too_large.body);
    assert_eq!(app.stored_rows("replays").await, 1);
    assert_eq!(replayed(&app).await, 2);
}

#[tokio::test]
async fn a_replay_flood_by_one_app_leaves_another_apps_push_and_the_api_alone() {
    const FILES: usize = 3000;
    // App A's repository: its second commit, 3,000 files, is never scanned:
    // replays fetch it.
    let flooded = TestRepo::new("main");
    flooded.write("a.md", "a\n");
    let first = flooded.commit("first").trim().to_owned();
    let rig_a = Rig::serve(&flooded).await;
    let other = TestRepo::new("main");
    other.write("b.md", "b\n");
    let other_first = other.commit("first").trim().to_owned();
    let rig_b = Rig::serve(&other).await;

    let app = engine_with(&settings(&[])).await;
    let (client_a, id_a) = rig_a.subscribe(&app, &rig_a.receiver, "flooder").await;
    let (client_b, id_b) = rig_b.subscribe(&app, &rig_b.receiver, "bystander").await;
    app.wait_for_commit(&client_a, &id_a, &first).await;
    app.wait_for_commit(&client_b, &id_b, &other_first).await;
    rig_a
        .receiver
        .wait_for("A's snapshot", |r| !r.is_empty())
        .await;
    rig_b
        .receiver
        .wait_for("B's snapshot", |r| !r.is_empty())
        .await;
    // A's receiver refuses everything: its replayed events pile up.
    rig_a.receiver.fallback(Some(Reply::status(503)));
    add_files(&flooded, "many", FILES);
    let second = flooded.commit("second").trim().to_owned();
    rig_a.served.push(&flooded, "HEAD:refs/heads/main", false);

    let body = json!({"from": first, "to": second});
    let flood = futures::future::join_all((0..20).map(|_| replay(&app, &client_a, &id_a, &body)));
    let bystander = async {
        // Once A has events waiting, B's repository gets a push.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        while waiting(&app, &client_a).await == 0 {
            assert!(tokio::time::Instant::now() < deadline, "{}", app.logs());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        other.write("b.md", "b, pushed\n");
        other.commit("pushed");
        // The scan API answers, and B's change is delivered.
        push_and_scan(&rig_b, &other, &app, &client_b, &id_b).await;
        rig_b
            .receiver
            .wait_for("B's push", |r| {
                r.iter()
                    .any(|w| w.json()["file"]["content"] == "b, pushed\n")
            })
            .await;
        // ...while A's events still wait.
        waiting(&app, &client_a).await
    };
    let (answers, a_waiting_then) = tokio::join!(flood, bystander);
    assert!(a_waiting_then > 0, "A's events waited meanwhile");
    let accepted = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .count();
    for answer in answers.iter().filter(|a| a.status != StatusCode::ACCEPTED) {
        assert_quota(answer, &["replay_in_progress", "too_many_waiting_events"]);
    }
    // At most the default 20,000 waiting events: 6 replays of 3,000.
    assert!((1..=6).contains(&accepted), "{accepted} replays written");
    let a_waiting = waiting(&app, &client_a).await;
    assert!(a_waiting <= 20_000, "{a_waiting} events of A wait");
    assert_eq!(
        replayed(&app).await,
        i64::try_from(accepted * FILES).expect("fits")
    );
}
