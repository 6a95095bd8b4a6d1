//! Replay, resync and the attempt log for broker apps: a replay
//! (`POST /api/repositories/{id}/replay`) and a resync reach the broker as
//! new events (new ids; a replay's carry its marker), and each attempt of
//! an event records the broker's answer in its words, as a webhook's
//! records its HTTP status: the acknowledgement (`ack: stream … seq …`,
//! `ack: exchange … routing key …`, `ack: stream … entry …`) or the
//! refusal (no stream for the subject, `NO_ROUTE`, `WRONGTYPE`).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::delivery::{apply, resync, tree_of};
use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, TestClient, engine_with, read, watch};
use crate::receiver::{Received, verify};
use crate::replay::{changes, post_replay, push_and_scan};

use super::consume::{AmqpExchange, NatsStream, RedisStream};
use super::{
    Consumer, event_detail, events, eventually, eventually_within, onboard_broker, published_twice,
    refusal_on_record,
};

/// Scans only when asked; a refusing broker opens the breaker, which
/// probes again a second later, the events waiting unspent.
const SETTINGS: [(&str, &str); 4] = [
    ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
    ("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0"),
    ("HERALD__DELIVERY__MAX_ATTEMPTS", "1000"),
    ("HERALD__BREAKER__DELIVERY__COOLDOWN", "1s"),
];

/// A broker that refuses until fixed, and the words of its answers.
struct Refusing {
    consumer: Consumer,
    /// Where the app publishes while the broker refuses.
    destination: Value,
    /// What the attempt log shows of the refusal.
    refusal: &'static str,
}

impl Refusing {
    async fn new(mode: &str) -> Self {
        match mode {
            "nats" => {
                let stream = NatsStream::new(None).await;
                // A subject no stream takes.
                let destination = json!({"url": format!("nats://{}", super::NATS),
                    "subject": format!("{}x.{{repository}}.{{event}}", stream.prefix)});
                Self {
                    consumer: Consumer::Nats(stream),
                    destination,
                    refusal: "nack: no JetStream stream takes subject",
                }
            }
            "amqp" => {
                let consumer = Consumer::Amqp(AmqpExchange::new(false).await, Default::default());
                Self {
                    destination: consumer.destination(),
                    consumer,
                    refusal: "returned: 312 NO_ROUTE",
                }
            }
            _ => {
                let stream = RedisStream::new().await;
                stream.occupy().await;
                let consumer = Consumer::Redis(stream);
                Self {
                    destination: consumer.destination(),
                    consumer,
                    refusal: "Redis refused: WRONGTYPE",
                }
            }
        }
    }

    /// The broker takes the app's messages from now on.
    async fn fix(&self, app: &TestApp, client: &TestClient) {
        match &self.consumer {
            Consumer::Nats(_) => {
                let (status, body) = app
                    .call(
                        Method::PATCH,
                        "/api/app",
                        Some(&client.token),
                        Some(json!({"destination": self.consumer.destination()})),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            Consumer::Amqp(exchange, _) => exchange.bind().await,
            Consumer::Redis(stream) => stream.remove().await,
        }
    }

    /// How an acknowledgement of a message about `repository` starts.
    fn ack(&self, repository: &str) -> String {
        match &self.consumer {
            Consumer::Nats(stream) => format!("ack: stream {} seq ", stream.name),
            Consumer::Amqp(exchange, _) => format!(
                "ack: exchange {} routing key {repository}.",
                exchange.exchange
            ),
            Consumer::Redis(stream) => format!("ack: stream {} entry ", stream.key),
        }
    }
}

/// Waits (bounded) until `count` events of the app are listed, every one
/// delivered; returns them.
async fn all_delivered(app: &TestApp, client: &TestClient, count: usize) -> Vec<Value> {
    eventually(
        &format!("{count} events delivered"),
        || events(app, client),
        |events| events.len() == count && events.iter().all(|e| e["status"] == "delivered"),
    )
    .await
}

/// The last attempt of event `id` records the broker's acknowledgement,
/// starting with `ack`, and no HTTP status.
async fn assert_acked(app: &TestApp, client: &TestClient, id: &str, ack: &str) {
    let detail = event_detail(app, client, id).await;
    let attempts = detail["attempts"].as_array().expect("attempts");
    let last = attempts.last().expect("an attempt");
    assert!(
        last["response_excerpt"]
            .as_str()
            .is_some_and(|words| words.starts_with(ack)),
        "{ack}…: {detail}"
    );
    assert_eq!(last["status_code"], Value::Null, "{detail}");
    assert_eq!(last["error_class"], Value::Null, "{detail}");
}

/// The messages of `messages` that carry replay `id`'s marker.
fn of_replay<'a>(messages: &'a [Received], id: &str) -> Vec<&'a Received> {
    messages
        .iter()
        .filter(|m| m.json()["replay"]["id"] == id)
        .collect()
}

async fn replay_and_resync_reach_the_broker_in_its_words(mode: &str) {
    let broker = Refusing::new(mode).await;
    let consumer = &broker.consumer;
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.write("b.md", "beta\n");
    repo.write("c.md", "gamma\n");
    let first = repo.commit("first").trim().to_owned();
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&SETTINGS).await;
    let client = onboard_broker(&app, "acme", mode, broker.destination.clone(), 1).await;
    let id = watch(&app, &client, &rig.url()).await;
    let ack = broker.ack(&id);

    // Refused: the attempt log keeps the broker's words, as it keeps a
    // webhook's status and response.
    let listed = refusal_on_record(&app, &client, &[broker.refusal]).await;
    let refused = listed
        .iter()
        .find(|e| {
            e["last_error"]
                .as_str()
                .is_some_and(|l| l.contains(broker.refusal))
        })
        .expect("the refused event");
    let detail = event_detail(&app, &client, refused["event_id"].as_str().expect("id")).await;
    let attempt = &detail["attempts"][0];
    assert!(
        attempt["response_excerpt"]
            .as_str()
            .is_some_and(|words| words.contains(broker.refusal)),
        "{mode}: {detail}"
    );
    assert_eq!(attempt["error_class"], "broker", "{detail}");
    assert_eq!(attempt["status_code"], Value::Null, "{detail}");
    assert_eq!(detail["status"], "pending", "it waits, unspent: {detail}");

    // Taken once fixed: acknowledged, in the broker's words.
    broker.fix(&app, &client).await;
    eventually_within(
        &format!("{mode}: the first tree"),
        Duration::from_secs(60),
        || consumer.all(),
        |messages| apply(messages) == tree_of(&repo),
    )
    .await;
    for event in all_delivered(&app, &client, 3).await {
        assert_acked(&app, &client, event["event_id"].as_str().expect("id"), &ack).await;
    }

    repo.write("a.md", "alpha, again\n");
    repo.remove("b.md");
    repo.write("d.md", "delta\n");
    let second = repo.commit("second").trim().to_owned();
    push_and_scan(&rig, &repo, &app, &client, &id).await;
    let before: Vec<Received> = eventually(
        &format!("{mode}: the second tree"),
        || consumer.all(),
        |messages| apply(messages) == tree_of(&repo),
    )
    .await;
    let earlier: HashSet<String> = before.iter().map(|m| consumer.id_of(m)).collect();
    all_delivered(&app, &client, 6).await;

    // A replay reaches the broker: the diff again, new ids, its marker.
    let response = post_replay(&app, &client, &id, &json!({"from": first, "to": second})).await;
    let (status, started) = read(response).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let replay_id = started["id"].as_str().expect("a replay id").to_owned();
    let messages = eventually(
        &format!("{mode}: the replayed events"),
        || consumer.all(),
        |messages| of_replay(messages, &replay_id).len() >= 3,
    )
    .await;
    let replayed = of_replay(&messages, &replay_id);
    assert_eq!(
        changes(&replayed),
        [
            ("delete".to_owned(), "b.md".to_owned()),
            ("create".to_owned(), "d.md".to_owned()),
            ("update".to_owned(), "a.md".to_owned()),
        ],
        "{mode}"
    );
    for message in &replayed {
        let body = message.json();
        assert_eq!(
            body["replay"],
            json!({"id": replay_id, "from": first, "to": second}),
            "{body}"
        );
        let id_now = consumer.id_of(message);
        assert_eq!(id_now, message.header("webhook-id"));
        assert!(!earlier.contains(&id_now), "a new id: {body}");
        verify(message, &client.client_auth_key, &client.webhook_secret);
    }
    all_delivered(&app, &client, 9).await;
    for message in &replayed {
        assert_acked(&app, &client, &consumer.id_of(message), &ack).await;
    }

    // A resync reaches it too: the whole tree again, under new ids.
    resync(&app, &client, &id).await;
    let so_far = messages.len();
    let messages = eventually(
        &format!("{mode}: the tree again"),
        || consumer.all(),
        |messages| messages.len() > so_far && apply(&messages[so_far..]) == tree_of(&repo),
    )
    .await;
    let seen: HashSet<String> = messages[..so_far]
        .iter()
        .map(|m| consumer.id_of(m))
        .collect();
    for message in &messages[so_far..] {
        let id_now = consumer.id_of(message);
        assert!(!seen.contains(&id_now), "a new id: {}", message.json());
        verify(message, &client.client_auth_key, &client.webhook_secret);
    }
    let listed = all_delivered(&app, &client, 9 + messages.len() - so_far).await;
    let resent = consumer.id_of(messages.last().expect("a message"));
    assert!(listed.iter().any(|e| e["event_id"] == resent.as_str()));
    assert_acked(&app, &client, &resent, &ack).await;
    assert_eq!(published_twice(consumer, &messages), Vec::<String>::new());
    consumer.remove().await;
}

#[tokio::test]
async fn nats_replay_and_resync_reach_the_stream_and_attempts_show_its_answers() {
    replay_and_resync_reach_the_broker_in_its_words("nats").await;
}

#[tokio::test]
async fn rabbitmq_replay_and_resync_reach_the_exchange_and_attempts_show_its_answers() {
    replay_and_resync_reach_the_broker_in_its_words("amqp").await;
}

#[tokio::test]
async fn redis_replay_and_resync_reach_the_stream_and_attempts_show_its_answers() {
    replay_and_resync_reach_the_broker_in_its_words("redis").await;
}
