//! SIGKILLs of the real `herald` process while it publishes to a broker,
//! restarted each time on the same data directory and database: nothing is
//! lost, and nothing is published twice under its id where the broker
//! dedupes (NATS by `Nats-Msg-Id`, Redis by the script's `webhook-id` key).
//! RabbitMQ keeps every copy it confirmed: every event arrives, and a
//! re-send carries the `message_id` of the first time, by which consumers
//! dedupe (docs/brokers.md). Each path's events arrive in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::cluster::{tree_of_repository, version};
use crate::delivery::{engine_restart, tree_of};
use crate::faults::{Flow, endpoint, overview};
use crate::helpers::{TestApp, TestClient, engine_with, watch};
use crate::receiver::Received;

use serde_json::Value;

use super::{Consumer, event_detail, events, eventually_within, onboard_broker, published_twice};

/// Files of the initial sync.
const FILES: usize = 200;
/// SIGKILLs, each once a message more reached the broker since the last
/// start; a new version of the files goes before each but the first.
const KILLS: usize = 4;

/// What `consumer` holds of `client`'s subscriptions to `repositories`,
/// checked against their outboxes: every message names its event by the
/// same id everywhere, each change came under one id (a re-send carries
/// the first time's), every event arrived, and each path's events (or,
/// with `whole_order`, each subscription's) arrived first in the outbox's
/// order, no older content after newer. The number of repeats.
pub(super) async fn assert_every_event_arrived_once_by_id(
    app: &TestApp,
    consumer: &Consumer,
    messages: &[Received],
    client: &TestClient,
    repositories: &[String],
    whole_order: bool,
) -> usize {
    let mut ids_of_change: HashMap<String, HashSet<String>> = HashMap::new();
    for message in messages {
        let body = message.json();
        let id = consumer.id_of(message);
        assert_eq!(id, message.header("webhook-id"), "the broker's id");
        assert_eq!(body["event_id"], id.as_str(), "the event's id");
        let change = format!(
            "{} {} {} {} {}",
            body["repository"]["repository_id"],
            message.endpoint,
            body["file"]["path"],
            body["file"]["sha"],
            body["commit_sha"]
        );
        ids_of_change.entry(change).or_default().insert(id);
    }
    for (change, ids) in &ids_of_change {
        assert_eq!(ids.len(), 1, "{change} came with several ids: {ids:?}");
    }
    let mut seen = HashSet::new();
    let firsts: Vec<&Received> = messages
        .iter()
        .filter(|m| seen.insert(consumer.id_of(m)))
        .collect();
    let mut events = 0;
    for repository in repositories {
        let outbox: Vec<(String, String)> = app
            .outbox(client, repository)
            .await
            .into_iter()
            .map(|e| (endpoint(&e.kind).to_owned(), e.path.unwrap_or_default()))
            .collect();
        events += outbox.len();
        let mine: Vec<&Received> = firsts
            .iter()
            .copied()
            .filter(|m| m.json()["repository"]["repository_id"] == repository.as_str())
            .collect();
        let arrived = crate::replay::changes(&mine);
        assert_eq!(arrived.len(), outbox.len(), "{repository}: every event");
        if whole_order {
            assert!(arrived == outbox, "{repository}: the outbox's order");
        }
        let by_path = |list: &[(String, String)]| {
            let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (endpoint, path) in list {
                paths
                    .entry(path.clone())
                    .or_default()
                    .push(endpoint.clone());
            }
            paths
        };
        assert!(
            by_path(&arrived) == by_path(&outbox),
            "{repository}: each path's events in the outbox's order"
        );
        let mut latest: HashMap<String, u32> = HashMap::new();
        for message in &mine {
            let file = message.json()["file"].clone();
            let (Some(path), Some(content)) = (file["path"].as_str(), file["content"].as_str())
            else {
                continue;
            };
            let v = version(content);
            let before = latest.insert(path.to_owned(), v).unwrap_or(0);
            assert!(v >= before, "{path}: v{v} arrived after v{before}");
        }
    }
    assert_eq!(seen.len(), events, "no message of another event");
    messages.len() - seen.len()
}

/// Waits (bounded) until no event of `app` is left to send.
pub(super) async fn drained(app: &TestApp) {
    let overview = eventually_within(
        "nothing left to send",
        Duration::from_secs(120),
        || overview(app),
        |o| o["events"]["pending"] == 0 && o["in_flight"] == 0,
    )
    .await;
    assert_eq!(overview["events"]["dead"], 0, "{overview}");
    assert_eq!(overview["subscriptions"]["failed"], 0, "{overview}");
}

async fn sigkills_mid_publish_lose_nothing(mode: &str) {
    let consumer = Consumer::new(mode).await;
    let mut flow = Flow::new(FILES);
    let app = engine_with(&[]).await;
    // A window of 4: each path's order is the contract.
    let client = onboard_broker(&app, "acme", mode, consumer.destination(), 4).await;
    let repository = watch(&app, &client, &flow.url()).await;

    let mut app = Some(app);
    let mut mid_publish = 0;
    for round in 0..KILLS {
        if round > 0 {
            flow.next();
        }
        let before = consumer.count().await;
        let running = app.take().expect("herald runs");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while consumer.count().await <= before {
            if tokio::time::Instant::now() > deadline {
                let waiting = events(&running, &client).await;
                let first = waiting
                    .iter()
                    .find(|e| e["status"] == "pending")
                    .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned());
                let detail = match first {
                    Some(id) => event_detail(&running, &client, &id).await,
                    None => Value::Null,
                };
                panic!(
                    "{mode}: nothing published in round {round} (before {before}, now {}): {}\n{detail}",
                    consumer.count().await,
                    overview(&running).await
                );
            }
            // Looked at often: a round of FILES messages takes tens of
            // milliseconds, and a kill after its last one proves nothing.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if overview(&running).await["events"]["pending"] != 0 {
            mid_publish += 1;
        }
        let (dir, database) = running.kill().await;
        app = Some(engine_restart(dir, database).await);
    }
    let app = app.expect("herald runs");
    assert!(
        mid_publish > 0,
        "{mode}: no SIGKILL came while events were waiting"
    );

    let head = flow.repo.head().trim().to_owned();
    app.wait_for_commit(&client, &repository, &head).await;
    drained(&app).await;
    let messages = consumer.all().await;
    assert_eq!(
        tree_of_repository(&messages, &repository),
        tree_of(&flow.repo)
    );
    let repeats = assert_every_event_arrived_once_by_id(
        &app,
        &consumer,
        &messages,
        &client,
        std::slice::from_ref(&repository),
        false,
    )
    .await;
    if mode == "amqp" {
        assert!(repeats > 0, "{mode}: something was sent again");
        println!("{mode}: {repeats} re-sent copies, each under its first message_id");
    } else {
        assert_eq!(repeats, 0, "{mode}: deduped by id");
        assert_eq!(published_twice(&consumer, &messages), Vec::<String>::new());
        // Re-sends happened: the broker answered them as repeats.
        let deduped = app
            .stored_rows_where(
                "delivery_attempts",
                "response_excerpt LIKE '%(duplicate)' OR response_excerpt LIKE '%(already added)'",
            )
            .await;
        assert!(deduped > 0, "{mode}: no re-send was answered as a repeat");
        println!("{mode}: {deduped} re-sends answered as repeats");
    }
    println!(
        "{mode}: {KILLS} SIGKILLs ({mid_publish} with events waiting), {} messages, \
         {} versions of {FILES} files",
        messages.len(),
        KILLS - 1
    );
    consumer.remove().await;
}

#[tokio::test]
async fn nats_sigkills_mid_publish_lose_nothing_and_the_stream_holds_each_id_once() {
    sigkills_mid_publish_lose_nothing("nats").await;
}

#[tokio::test]
async fn redis_sigkills_mid_publish_lose_nothing_and_the_stream_holds_each_id_once() {
    sigkills_mid_publish_lose_nothing("redis").await;
}

#[tokio::test]
async fn rabbitmq_sigkills_mid_publish_lose_nothing_and_a_resend_keeps_its_message_id() {
    sigkills_mid_publish_lose_nothing("amqp").await;
}
