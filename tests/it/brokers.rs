//! Broker destinations end to end (docs/brokers.md): the real binary and
//! real git publishing to the real NATS JetStream, RabbitMQ and Redis on
//! 127.0.0.1, read back by consumers that rebuild the tree from what the
//! broker holds. Each test makes its own stream, exchange or key and
//! removes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::console::Browser;
use crate::delivery::{apply, tree_of};
use crate::gitserver::TestRepo;
use crate::helpers::{ADMIN_TOKEN, Rig, TestApp, TestClient, engine_with, watch};
use crate::receiver::{Received, verify};

mod cluster;
mod consume;
mod kills;
mod replay;
mod tls;

use consume::{
    AMQP, AmqpExchange, CuttingProxy, GuardedNats, NATS, NatsStream, REDIS, RedisStream,
    eventually, eventually_within,
};

/// One broker, as a test's consumer sees it.
enum Consumer {
    Nats(NatsStream),
    /// What was taken from the queue so far (taking empties it).
    Amqp(AmqpExchange, tokio::sync::Mutex<Vec<Received>>),
    Redis(RedisStream),
}

impl Consumer {
    async fn new(mode: &str) -> Self {
        match mode {
            "nats" => Self::Nats(NatsStream::new(None).await),
            "amqp" => Self::Amqp(AmqpExchange::new(true).await, Default::default()),
            _ => Self::Redis(RedisStream::new().await),
        }
    }

    /// The broker's own address.
    fn address(&self) -> &'static str {
        match self {
            Self::Nats(_) => NATS,
            Self::Amqp(..) => AMQP,
            Self::Redis(_) => REDIS,
        }
    }

    /// The destination of an app publishing here through `address`.
    fn destination_at(&self, address: &str) -> Value {
        match self {
            Self::Nats(stream) => stream.destination(&format!("nats://{address}")),
            Self::Amqp(exchange, _) => {
                exchange.destination(&format!("amqp://guest:guest@{address}/%2f"))
            }
            Self::Redis(stream) => stream.destination(&format!("redis://{address}/0")),
        }
    }

    fn destination(&self) -> Value {
        self.destination_at(self.address())
    }

    /// Every message published so far, in the order the broker holds them.
    async fn all(&self) -> Vec<Received> {
        match self {
            Self::Nats(stream) => stream
                .messages()
                .await
                .into_iter()
                .map(|(_, m)| m)
                .collect(),
            Self::Amqp(exchange, taken) => {
                let mut taken = taken.lock().await;
                taken.extend(exchange.take().await.into_iter().map(|(_, m)| m));
                taken.clone()
            }
            Self::Redis(stream) => stream.entries().await,
        }
    }

    /// The id each message carries for its consumer to dedupe by.
    fn id_of(&self, message: &Received) -> String {
        let header = match self {
            Self::Nats(_) => "nats-msg-id",
            Self::Amqp(..) => "message-id",
            Self::Redis(_) => "webhook-id",
        };
        message.header(header).to_owned()
    }

    /// How many messages the broker holds (for AMQP, taken so far or
    /// waiting in the queue).
    async fn count(&self) -> u64 {
        match self {
            Self::Nats(stream) => stream.count().await,
            Self::Amqp(exchange, taken) => {
                taken.lock().await.len() as u64 + exchange.waiting().await
            }
            Self::Redis(stream) => stream.count().await,
        }
    }

    async fn remove(&self) {
        match self {
            Self::Nats(stream) => stream.remove().await,
            Self::Amqp(exchange, _) => exchange.remove().await,
            Self::Redis(stream) => stream.remove().await,
        }
    }
}

/// App `name` delivering to `destination` by `mode`, with `window`; its
/// base URL leads nowhere (a webhook sent by mistake would fail).
async fn onboard_broker(
    app: &TestApp,
    name: &str,
    mode: &str,
    destination: Value,
    window: u64,
) -> TestClient {
    app.onboard_with(json!({
        "app_name": name,
        "base_url": "http://127.0.0.1:9/unused",
        "email": "dev@example.com",
        "delivery": mode,
        "destination": destination,
        "window": window,
    }))
    .await
}

/// Every event of the app, as `GET /api/events` lists them.
async fn events(app: &TestApp, client: &TestClient) -> Vec<Value> {
    let (status, body) = app
        .call(
            Method::GET,
            "/api/events?limit=100",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().expect("events").clone()
}

async fn event_detail(app: &TestApp, client: &TestClient, id: &str) -> Value {
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/api/events/{id}"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The messages each `webhook-id` was published as, more than once.
fn published_twice(consumer: &Consumer, messages: &[Received]) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for message in messages {
        *count.entry(consumer.id_of(message)).or_default() += 1;
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

/// A binary file of `len` bytes that no text rule mistakes for text.
fn binary(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + usize::from(seed)) % 251).unwrap_or(0) | 0x80)
        .chain([0u8])
        .collect()
}

async fn the_tree_is_rebuilt_from_the_broker(mode: &str) {
    let consumer = Consumer::new(mode).await;
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "alpha\n");
    repo.write("docs/gone.md", "bye\n");
    repo.write("img.bin", binary(40, 1));
    // Chunked: 30 KB of base64 in slices of 16,000 characters.
    repo.write("big.bin", binary(30_000, 2));
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[
        ("HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES", "10000"),
        ("HERALD__DELIVERY__CHUNK_SIZE_BYTES", "16000"),
    ])
    .await;
    let client = onboard_broker(&app, "acme", mode, consumer.destination(), 1).await;
    let _id = watch(&app, &client, &rig.url()).await;
    eventually(
        "the first tree",
        || consumer.all(),
        |messages| apply(messages) == tree_of(&repo),
    )
    .await;

    repo.write("docs/a.md", "alpha two\n");
    repo.remove("docs/gone.md");
    repo.write("docs/new.md", "ünïcode\n");
    repo.write("big.bin", binary(30_000, 3));
    repo.commit("second");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let messages = eventually(
        "the second tree",
        || consumer.all(),
        |messages| apply(messages) == tree_of(&repo),
    )
    .await;

    // Each message: the exact body, signed both ways, its id where the
    // broker and its consumers look for it, published once.
    for message in &messages {
        verify(message, &client.client_auth_key, &client.webhook_secret);
        assert_eq!(message.header("x-docora-app-id"), client.app_id);
        assert!(message.header("webhook-id").starts_with("evt_"));
        assert_eq!(consumer.id_of(message), message.header("webhook-id"));
        if mode == "amqp" {
            assert_eq!(message.header("delivery-mode"), "2", "persistent");
        }
    }
    assert_eq!(published_twice(&consumer, &messages), Vec::<String>::new());
    let chunks = messages
        .iter()
        .filter(|m| m.json()["file"]["chunk"].is_object())
        .count();
    assert_eq!(chunks, 6, "big.bin twice, in three chunks each");
    // The attempt log shows the broker's acknowledgement, with no status.
    let listed = eventually(
        "every event delivered",
        || events(&app, &client),
        |events| events.len() == 8 && events.iter().all(|e| e["status"] == "delivered"),
    )
    .await;
    let detail = event_detail(&app, &client, listed[0]["event_id"].as_str().expect("id")).await;
    let attempt = &detail["attempts"][0];
    assert!(
        attempt["response_excerpt"]
            .as_str()
            .is_some_and(|words| words.starts_with("ack: ")),
        "{detail}"
    );
    assert_eq!(attempt["status_code"], Value::Null, "{detail}");
    assert!(!app.logs().contains("guest:guest"), "no credential logged");
    consumer.remove().await;
}

#[tokio::test]
async fn nats_jetstream_gets_every_change_and_the_tree_is_rebuilt_from_it() {
    the_tree_is_rebuilt_from_the_broker("nats").await;
}

#[tokio::test]
async fn rabbitmq_gets_every_change_and_the_tree_is_rebuilt_from_it() {
    the_tree_is_rebuilt_from_the_broker("amqp").await;
}

#[tokio::test]
async fn a_redis_stream_gets_every_change_and_the_tree_is_rebuilt_from_it() {
    the_tree_is_rebuilt_from_the_broker("redis").await;
}

#[tokio::test]
async fn the_destination_is_a_secret_and_is_checked() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let patch = |body: Value| {
        let (app, token) = (&app, client.token.clone());
        async move {
            app.call(Method::PATCH, "/api/app", Some(&token), Some(body))
                .await
        }
    };
    // Without its destination, a broker delivery is refused.
    let (status, body) = patch(json!({"delivery": "nats"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A private address is refused by a server that keeps to public ones.
    let (status, body) = patch(json!({"delivery": "redis", "destination":
        {"url": "redis://:s3cret@127.0.0.1:6379/0", "stream": "s"}}))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!body.to_string().contains("s3cret"), "{body}");
    let (status, body) = patch(json!({"delivery": "amqp", "destination":
        {"url": "amqp://user:s3cret@broker.example.com:5672/%2f", "exchange": "herald",
         "routing_key": "{repository}.{event}"}}))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivery"], "amqp");
    assert_eq!(
        body["destination"],
        json!({"url": "amqp://broker.example.com:5672/%2f", "exchange": "herald",
               "routing_key": "{repository}.{event}"})
    );
    let (_, shown) = app
        .call(Method::GET, "/api/app", Some(&client.token), None)
        .await;
    assert_eq!(shown["destination"], body["destination"]);
    assert!(!shown.to_string().contains("s3cret"));
    // The console shows it as the API does, without its credentials.
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    let page = browser
        .page(&format!("/admin/apps/{}", client.app_id))
        .await;
    assert!(
        page.contains("amqp://broker.example.com:5672/%2f")
            && page.contains("{repository}.{event}"),
        "{page}"
    );
    assert!(!page.contains("s3cret"), "{page}");
    // Sealed at rest.
    assert_eq!(
        app.stored_rows_where("apps", "destination_ciphertext LIKE '%s3cret%'")
            .await,
        0
    );
    assert_eq!(
        app.stored_rows_where("apps", "destination_ciphertext IS NOT NULL")
            .await,
        1
    );
    // Back to webhooks: no destination shown.
    let (status, body) = patch(json!({"delivery": "push"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("destination").is_none(), "{body}");
    let (status, body) = patch(json!({"destination": {"url": "nats://h", "subject": "a"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!app.logs().contains("s3cret"));
}

/// A file's content in the order test: its path and version.
fn versioned(path: &str, version: u32) -> String {
    format!("{path} v{version}\n")
}

#[tokio::test]
async fn a_window_of_16_keeps_the_order_of_each_path_in_the_stream() {
    let consumer = Consumer::new("nats").await;
    let repo = TestRepo::new("main");
    let files: Vec<String> = (0..40).map(|i| format!("f/{i:02}.md")).collect();
    for path in &files {
        repo.write(path, versioned(path, 0));
    }
    repo.commit("v0");
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[]).await;
    let client = onboard_broker(&app, "acme", "nats", consumer.destination(), 16).await;
    let _id = watch(&app, &client, &rig.url()).await;
    for version in 1..=4 {
        for path in files.iter().step_by(usize::try_from(version).unwrap_or(1)) {
            repo.write(path, versioned(path, version));
        }
        repo.commit(&format!("v{version}"));
        rig.served.push(&repo, "HEAD:refs/heads/main", false);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let messages = eventually(
        "the last versions",
        || consumer.all(),
        |messages| apply(messages) == tree_of(&repo),
    )
    .await;
    let mut latest: BTreeMap<String, u32> = BTreeMap::new();
    for message in &messages {
        let body = message.json();
        let (Some(path), Some(content)) = (
            body["file"]["path"].as_str(),
            body["file"]["content"].as_str(),
        ) else {
            continue;
        };
        let version: u32 = content
            .trim_end()
            .rsplit_once(" v")
            .and_then(|(_, v)| v.parse().ok())
            .expect("a version");
        let before = latest.insert(path.to_owned(), version).unwrap_or(0);
        assert!(version >= before, "{path}: v{version} after v{before}");
    }
    assert_eq!(published_twice(&consumer, &messages), Vec::<String>::new());
    consumer.remove().await;
}

#[tokio::test]
async fn wrong_credentials_hold_the_events_with_a_clear_reason_until_they_are_fixed() {
    // The shared NATS server takes anyone: this one wants a password.
    let guarded = GuardedNats::start().await;
    for mode in ["amqp", "nats", "redis"] {
        let consumer = match mode {
            "nats" => Consumer::Nats(NatsStream::on(guarded.client().await, None).await),
            _ => Consumer::new(mode).await,
        };
        let right = match mode {
            "nats" => consumer.destination_at(&format!("herald:right@127.0.0.1:{}", guarded.port)),
            _ => consumer.destination(),
        };
        let repo = TestRepo::new("main");
        repo.write("a.md", "a\n");
        repo.write("b.md", "b\n");
        repo.commit("first");
        let rig = Rig::serve(&repo).await;
        // The breaker opens on the second refusal, before an event could
        // die, and probes every second: the events wait, unspent.
        let app = engine_with(&[
            ("HERALD__DELIVERY__MAX_ATTEMPTS", "10"),
            ("HERALD__BREAKER__DELIVERY__THRESHOLD", "2"),
            ("HERALD__BREAKER__DELIVERY__COOLDOWN", "1s"),
        ])
        .await;
        let mut wrong = right.clone();
        wrong["url"] = match mode {
            "amqp" => format!("amqp://guest:wrong@{AMQP}/%2f"),
            "nats" => format!("nats://herald:wrong@127.0.0.1:{}", guarded.port),
            _ => format!("redis://nobody:wrong@{REDIS}/0"),
        }
        .into();
        let client = onboard_broker(&app, "acme", mode, wrong, 1).await;
        let _id = watch(&app, &client, &rig.url()).await;
        let waiting = eventually(
            "a refusal on record",
            || events(&app, &client),
            |events| {
                events.len() == 2
                    && events.iter().any(|e| {
                        e["last_error"]
                            .as_str()
                            .is_some_and(|l| l.contains("refused"))
                    })
            },
        )
        .await;
        assert!(
            waiting.iter().all(|e| e["status"] == "pending"),
            "{mode}: {waiting:?}"
        );
        assert!(
            !app.logs().contains("wrong@"),
            "{mode}: no credential logged"
        );
        // The app's breaker holds its events: they wait, not spent.
        let (status, body) = app
            .call(
                Method::PATCH,
                "/api/app",
                Some(&client.token),
                Some(json!({"destination": right})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let messages = loop {
            let messages = consumer.all().await;
            if apply(&messages) == tree_of(&repo) {
                break messages;
            }
            if tokio::time::Instant::now() > deadline {
                let logs = app.logs();
                panic!(
                    "{mode}: not delivered once fixed: {:?}\n{}",
                    events(&app, &client).await,
                    &logs[logs.len().saturating_sub(4000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(messages.len(), 2, "{mode}");
        consumer.remove().await;
    }
}

#[tokio::test]
async fn an_exchange_no_queue_takes_from_is_an_error_not_a_silent_drop() {
    let exchange = AmqpExchange::new(false).await;
    let repo = TestRepo::new("main");
    repo.write("a.md", "a\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[]).await;
    let client = onboard_broker(
        &app,
        "acme",
        "amqp",
        exchange.destination(&format!("amqp://guest:guest@{AMQP}/%2f")),
        1,
    )
    .await;
    let _id = watch(&app, &client, &rig.url()).await;
    let listed = refusal_on_record(&app, &client, &["NO_ROUTE", "no queue"]).await;
    let id = listed[0]["event_id"].as_str().expect("id");
    let detail = event_detail(&app, &client, id).await;
    assert_eq!(detail["attempts"][0]["error_class"], "broker", "{detail}");
    // A queue bound now gets it: nothing was lost meanwhile.
    exchange.bind().await;
    let taken = eventually(
        "the message, routed",
        || exchange.take(),
        |taken| !taken.is_empty(),
    )
    .await;
    assert_eq!(taken[0].1.json()["file"]["path"], "a.md");
    exchange.remove().await;
}

#[tokio::test]
async fn a_full_stream_that_discards_new_messages_refuses_and_the_rest_follows_later() {
    let stream = NatsStream::new(Some(2)).await;
    let repo = TestRepo::new("main");
    for name in ["a", "b", "c", "d"] {
        repo.write(&format!("{name}.md"), format!("{name}\n"));
    }
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[]).await;
    let client = onboard_broker(
        &app,
        "acme",
        "nats",
        stream.destination(&format!("nats://{NATS}")),
        1,
    )
    .await;
    let _id = watch(&app, &client, &rig.url()).await;
    let listed = refusal_on_record(&app, &client, &["maximum messages"]).await;
    assert_eq!(
        listed.iter().filter(|e| e["status"] == "delivered").count(),
        2,
        "{listed:?}"
    );
    assert_eq!(stream.messages().await.len(), 2);
    stream.allow(100).await;
    let messages = eventually(
        "all four",
        || stream.messages(),
        |messages| messages.len() == 4,
    )
    .await;
    let received: Vec<Received> = messages.into_iter().map(|(_, m)| m).collect();
    assert_eq!(apply(&received), tree_of(&repo));
    stream.remove().await;
}

#[tokio::test]
async fn connections_cut_mid_sync_lose_nothing_and_publish_nothing_twice_by_id() {
    for mode in ["redis", "nats", "amqp"] {
        let consumer = Consumer::new(mode).await;
        let proxy = CuttingProxy::start(consumer.address(), 6_000).await;
        let repo = TestRepo::new("main");
        for i in 0..30 {
            repo.write(&format!("f/{i:02}.md"), format!("file {i}\n").repeat(40));
        }
        repo.commit("first");
        let rig = Rig::serve(&repo).await;
        let app = engine_with(&[
            ("HERALD__DELIVERY__MAX_ATTEMPTS", "1000"),
            ("HERALD__BREAKER__DELIVERY__COOLDOWN", "1s"),
        ])
        .await;
        let client = onboard_broker(
            &app,
            "acme",
            mode,
            consumer.destination_at(&format!("127.0.0.1:{}", proxy.port)),
            4,
        )
        .await;
        let _id = watch(&app, &client, &rig.url()).await;
        // Let the proxy cut a few times, then let everything through.
        // A few cuts, or fewer when everything got through between them
        // (each cut a failed attempt: the breaker's cooldowns grow).
        let cuts = eventually_within(
            &format!("{mode}: a few cuts"),
            Duration::from_secs(180),
            || async {
                let done = events(&app, &client)
                    .await
                    .iter()
                    .filter(|e| e["status"] == "delivered")
                    .count();
                (proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), done)
            },
            |(cuts, done)| *cuts >= 3 || *done == 30,
        )
        .await;
        assert!(cuts.0 >= 1, "{mode}: the proxy cut connections: {cuts:?}");
        proxy.stop_cutting();
        let messages = eventually_within(
            "everything",
            Duration::from_secs(180),
            || consumer.all(),
            |messages| apply(messages) == tree_of(&repo),
        )
        .await;
        let ids: HashSet<String> = messages.iter().map(|m| consumer.id_of(m)).collect();
        assert_eq!(ids.len(), 30, "{mode}: every event, by id");
        if mode != "amqp" {
            // The stream dedupes by Nats-Msg-Id, the script by webhook-id;
            // an AMQP consumer dedupes by message_id.
            assert_eq!(
                published_twice(&consumer, &messages),
                Vec::<String>::new(),
                "{mode}"
            );
        }
        eventually(
            "every event delivered",
            || events(&app, &client),
            |events| events.len() == 30 && events.iter().all(|e| e["status"] == "delivered"),
        )
        .await;
        consumer.remove().await;
    }
}

/// The app's events once one of them failed with an error naming any of
/// `words` (the broker's refusal, as the attempt log keeps it).
async fn refusal_on_record(app: &TestApp, client: &TestClient, words: &[&str]) -> Vec<Value> {
    eventually(
        &format!("a refusal naming {words:?} on record"),
        || events(app, client),
        |events| {
            events.iter().any(|e| {
                e["last_error"]
                    .as_str()
                    .is_some_and(|l| words.iter().any(|w| l.contains(w)))
            })
        },
    )
    .await
}
