//! The brokers' ends of the broker bench: a place of a run's own on each
//! broker (a JetStream stream, a RabbitMQ exchange and queue, a Redis
//! stream key, named after a fresh id), a consumer that records every
//! message there as it arrives, and the floor's plain publisher.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

pub const NATS: &str = "127.0.0.1:4222";
pub const AMQP: &str = "127.0.0.1:5672";
pub const REDIS: &str = "127.0.0.1:6379";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    Amqp,
    Redis,
}

impl Kind {
    pub fn parse(name: &str) -> Self {
        match name {
            "nats" => Self::Nats,
            "amqp" => Self::Amqp,
            "redis" => Self::Redis,
            other => panic!("--brokers takes nats, amqp and redis, not {other:?}"),
        }
    }

    /// The app's `delivery`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Amqp => "amqp",
            Self::Redis => "redis",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Nats => "NATS JetStream",
            Self::Amqp => "RabbitMQ",
            Self::Redis => "Redis Streams",
        }
    }
}

/// A name no other run uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// One message as the consumer got it.
#[derive(Clone)]
pub struct Held {
    /// Unix ns, when the consumer got it.
    pub at_ns: f64,
    /// Where in the place it went: the subject after the stream's prefix
    /// (NATS), the routing key (AMQP); empty for Redis.
    pub route: String,
    /// The endpoint: `create`, `update`, `delete`, …
    pub endpoint: String,
    /// `webhook-id`.
    pub id: String,
    /// The signed headers (NATS's own `Nats-*` left out), in the order
    /// the broker gave them.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Held {
    fn new(
        at_ns: f64,
        route: String,
        endpoint: String,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Self {
        let id = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("webhook-id"))
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        Self {
            at_ns,
            route,
            endpoint,
            id,
            headers,
            body,
        }
    }

    /// The headers as a webhook's, for the receiver's checks.
    pub fn header_map(&self) -> warp::http::HeaderMap {
        self.headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    warp::http::HeaderName::from_bytes(name.to_lowercase().as_bytes()).ok()?,
                    warp::http::HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect()
    }
}

/// What the consumer recorded.
#[derive(Default)]
struct Sink {
    count: AtomicUsize,
    held: Mutex<Vec<Held>>,
}

impl Sink {
    fn hold(&self, held: Held) {
        self.held.lock().expect("sink lock").push(held);
        self.count.fetch_add(1, Ordering::Release);
    }
}

/// What a place needs to be removed.
enum Owner {
    Nats(jetstream::Context),
    Amqp(lapin::Connection, lapin::Channel),
    Redis(redis::aio::MultiplexedConnection),
}

/// A place of its own on one broker, with its consumer.
pub struct Place {
    pub kind: Kind,
    /// The stream (NATS; also its subjects' prefix), the exchange (AMQP,
    /// its queue `{name}.q`), or the stream key (Redis).
    pub name: String,
    sink: Arc<Sink>,
    consumer: tokio::task::JoinHandle<()>,
    owner: Owner,
}

/// The bench needs the real servers: NATS with JetStream on 4222,
/// RabbitMQ on 5672 with guest/guest, Redis on 6379.
const NEEDS: &str = "the broker bench needs NATS with JetStream on 127.0.0.1:4222, RabbitMQ on \
                     5672 (guest/guest) and Redis on 6379";

fn now_ns() -> f64 {
    super::support::unix_ms() * 1e6
}

impl Place {
    /// A new place on `kind`'s broker, its name starting with `prefix`,
    /// and its consumer started.
    pub async fn new(kind: Kind, prefix: &str) -> Self {
        let sink = Arc::new(Sink::default());
        let into = sink.clone();
        match kind {
            Kind::Nats => {
                let name = unique(&format!("herald_bench_{prefix}_"));
                let context = jetstream::new(async_nats::connect(NATS).await.expect(NEEDS));
                let stream = context
                    .create_stream(jetstream::stream::Config {
                        name: name.clone(),
                        subjects: vec![format!("{name}.>")],
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await
                    .expect("stream made");
                let mut messages = stream
                    .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
                    .await
                    .expect("consumer made")
                    .messages()
                    .await
                    .expect("messages");
                let skip = name.len() + 1;
                let consumer = tokio::spawn(async move {
                    while let Some(Ok(message)) = messages.next().await {
                        let at = now_ns();
                        let message = &message.message;
                        let headers = message
                            .headers
                            .iter()
                            .flat_map(|headers| headers.iter())
                            .filter(|(name, _)| !name.to_string().starts_with("Nats-"))
                            .filter_map(|(name, values)| {
                                Some((name.to_string(), values.first()?.to_string()))
                            })
                            .collect();
                        let subject = message.subject.as_str();
                        let route = subject.get(skip..).unwrap_or_default().to_owned();
                        let endpoint = subject.rsplit('.').next().unwrap_or_default().to_owned();
                        into.hold(Held::new(
                            at,
                            route,
                            endpoint,
                            headers,
                            message.payload.clone(),
                        ));
                    }
                });
                Self {
                    kind,
                    name,
                    sink,
                    consumer,
                    owner: Owner::Nats(context),
                }
            }
            Kind::Amqp => {
                let name = unique(&format!("herald.bench.{prefix}."));
                let connection = amqp_connection().await;
                let channel = connection.create_channel().await.expect("channel");
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        lapin::ExchangeKind::Topic,
                        ExchangeDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("exchange declared");
                let queue = format!("{name}.q");
                channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("queue declared");
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        name.as_str().into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("queue bound");
                let mut deliveries = channel
                    .basic_consume(
                        queue.as_str().into(),
                        "bench".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("consuming");
                let consumer = tokio::spawn(async move {
                    while let Some(Ok(delivery)) = deliveries.next().await {
                        let at = now_ns();
                        let (endpoint, headers) = amqp_fields(&delivery.properties);
                        into.hold(Held::new(
                            at,
                            delivery.routing_key.to_string(),
                            endpoint,
                            headers,
                            Bytes::from(delivery.data),
                        ));
                    }
                });
                Self {
                    kind,
                    name,
                    sink,
                    consumer,
                    owner: Owner::Amqp(connection, channel),
                }
            }
            Kind::Redis => {
                let name = unique(&format!("herald:bench:{prefix}:"));
                let client = redis::Client::open(format!("redis://{REDIS}/0")).expect("client");
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                let mut reader = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect(NEEDS);
                let owner = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect(NEEDS);
                let key = name.clone();
                let consumer = tokio::spawn(async move {
                    let mut last = "0-0".to_owned();
                    loop {
                        let read: redis::RedisResult<Option<Vec<StreamRead>>> = redis::cmd("XREAD")
                            .arg("COUNT")
                            .arg(1000)
                            .arg("BLOCK")
                            .arg(1000)
                            .arg("STREAMS")
                            .arg(&key)
                            .arg(&last)
                            .query_async(&mut reader)
                            .await;
                        let Ok(read) = read else { return };
                        let at = now_ns();
                        for (_, entries) in read.unwrap_or_default() {
                            for (id, fields) in entries {
                                let (mut endpoint, mut body) = (String::new(), Bytes::new());
                                let mut headers = Vec::new();
                                for (field, value) in fields {
                                    match field.as_str() {
                                        "event" => {
                                            endpoint = String::from_utf8_lossy(&value).into_owned()
                                        }
                                        "body" => body = Bytes::from(value),
                                        _ => headers.push((
                                            field,
                                            String::from_utf8_lossy(&value).into_owned(),
                                        )),
                                    }
                                }
                                into.hold(Held::new(at, String::new(), endpoint, headers, body));
                                last = id;
                            }
                        }
                    }
                });
                Self {
                    kind,
                    name,
                    sink,
                    consumer,
                    owner: Owner::Redis(owner),
                }
            }
        }
    }

    /// The `destination` of an app publishing here.
    pub fn destination(&self) -> Value {
        match self.kind {
            Kind::Nats => json!({
                "url": format!("nats://{NATS}"),
                "subject": format!("{}.{{repository}}.{{event}}", self.name),
            }),
            Kind::Amqp => json!({
                "url": format!("amqp://guest:guest@{AMQP}/%2f"),
                "exchange": self.name,
                "routing_key": "{repository}.{event}",
            }),
            Kind::Redis => json!({"url": format!("redis://{REDIS}/0"), "stream": self.name}),
        }
    }

    /// How many messages the consumer got so far.
    pub fn count(&self) -> usize {
        self.sink.count.load(Ordering::Acquire)
    }

    /// The messages the consumer got from the `from`-th on, in order.
    pub fn held(&self, from: usize) -> Vec<Held> {
        let held = self.sink.held.lock().expect("sink lock");
        held.get(from..).unwrap_or_default().to_vec()
    }

    /// Stops the consumer and removes what the place made.
    pub async fn remove(self) {
        self.consumer.abort();
        match self.owner {
            Owner::Nats(context) => {
                let _ = context.delete_stream(&self.name).await;
            }
            Owner::Amqp(connection, channel) => {
                let queue = format!("{}.q", self.name);
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel
                    .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = connection.close(200, "done".into()).await;
            }
            Owner::Redis(mut connection) => {
                let mut keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:sent:*", self.name))
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                keys.push(self.name.clone());
                let _: redis::RedisResult<i64> = redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut connection)
                    .await;
            }
        }
    }
}

/// A stream entry: its id and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// What `XREAD` gives for one stream: its key and its new entries.
type StreamRead = (String, Vec<Entry>);

/// A delivery's endpoint (its `type`) and its headers: Herald sends each
/// as a long string.
fn amqp_fields(properties: &BasicProperties) -> (String, Vec<(String, String)>) {
    let mut headers = Vec::new();
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            if let AMQPValue::LongString(text) = value {
                headers.push((name.to_string(), text.to_string()));
            }
        }
    }
    let endpoint = properties
        .kind()
        .as_ref()
        .map_or_else(String::new, |kind| kind.to_string());
    (endpoint, headers)
}

async fn amqp_connection() -> lapin::Connection {
    lapin::Connection::connect(
        &format!("amqp://guest:guest@{AMQP}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect(NEEDS)
}

/// The floor: a plain client on one connection publishing each message
/// with the acknowledgement Herald waits for, one after the other, with
/// the client Herald publishes with.
pub enum Publisher {
    /// JetStream's ack awaited, `Nats-Msg-Id` set.
    Nats(jetstream::Context),
    /// Publisher confirms, `mandatory`, persistent: amqprs, its confirms
    /// and returns handed over by its channel callback.
    Amqp(
        amqprs::connection::Connection,
        amqprs::channel::Channel,
        tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Confirm>>,
    ),
    /// Herald's idempotent `XADD` script.
    Redis(redis::aio::MultiplexedConnection, redis::Script),
}

/// What the broker said of a floor's message.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirm {
    Ack(u64),
    Nack(u64),
    Returned,
}

/// The floor's channel callback: hands each confirm over.
struct Confirms(tokio::sync::mpsc::UnboundedSender<Confirm>);

type AmqpResult<T> = Result<T, amqprs::error::Error>;

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _: &amqprs::channel::Channel,
        close: amqprs::CloseChannel,
    ) -> AmqpResult<()> {
        panic!("the broker closed the floor's channel: {close}");
    }
    async fn cancel(&mut self, _: &amqprs::channel::Channel, _: amqprs::Cancel) -> AmqpResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &amqprs::channel::Channel, active: bool) -> AmqpResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &amqprs::channel::Channel, ack: amqprs::Ack) {
        let _ = self.0.send(Confirm::Ack(ack.delivery_tag()));
    }
    async fn publish_nack(&mut self, _: &amqprs::channel::Channel, nack: amqprs::Nack) {
        let _ = self.0.send(Confirm::Nack(nack.delivery_tag()));
    }
    async fn publish_return(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
        let _ = self.0.send(Confirm::Returned);
    }
}

impl Publisher {
    pub async fn connect(kind: Kind) -> Self {
        match kind {
            Kind::Nats => Self::Nats(jetstream::new(
                async_nats::connect(NATS).await.expect(NEEDS),
            )),
            Kind::Amqp => {
                let (host, port) = AMQP.split_once(':').expect("host:port");
                let arguments = amqprs::connection::OpenConnectionArguments::new(
                    host,
                    port.parse().expect("a port"),
                    "guest",
                    "guest",
                );
                let connection = amqprs::connection::Connection::open(&arguments)
                    .await
                    .expect(NEEDS);
                let channel = connection.open_channel(None).await.expect("channel");
                let (confirms, confirmed) = tokio::sync::mpsc::unbounded_channel();
                channel
                    .register_callback(Confirms(confirms))
                    .await
                    .expect("callback");
                channel
                    .confirm_select(amqprs::channel::ConfirmSelectArguments::new(false))
                    .await
                    .expect("confirm mode");
                Self::Amqp(connection, channel, tokio::sync::Mutex::new(confirmed))
            }
            Kind::Redis => Self::Redis(
                redis::Client::open(format!("redis://{REDIS}/0"))
                    .expect("client")
                    .get_multiplexed_async_connection()
                    .await
                    .expect(NEEDS),
                redis::Script::new(actors::broker::REDIS_ADD_ONCE),
            ),
        }
    }

    /// Publishes `message` to `place` as Herald did (the same body, headers,
    /// id and target), and waits for the broker's acknowledgement.
    pub async fn publish(&self, place: &Place, message: &Held) {
        match self {
            Self::Nats(context) => {
                let mut headers = async_nats::HeaderMap::new();
                for (name, value) in &message.headers {
                    headers.insert(name.as_str(), value.as_str());
                }
                let publish = jetstream::message::PublishMessage::build()
                    .payload(message.body.clone())
                    .headers(headers)
                    .message_id(&message.id);
                let ack = context
                    .send_publish(format!("{}.{}", place.name, message.route), publish)
                    .await
                    .expect("published")
                    .await
                    .expect("acknowledged");
                assert!(!ack.duplicate, "{} was taken for a duplicate", message.id);
            }
            Self::Amqp(_, channel, confirmed) => {
                let mut headers = amqprs::FieldTable::new();
                for (name, value) in &message.headers {
                    headers.insert(
                        name.as_str().try_into().expect("a short name"),
                        amqprs::FieldValue::S(value.as_str().try_into().expect("a value")),
                    );
                }
                let properties = amqprs::BasicProperties::default()
                    .with_persistence(true)
                    .with_content_type("application/json")
                    .with_message_id(&message.id)
                    .with_message_type(&message.endpoint)
                    .with_headers(headers)
                    .finish();
                let mut arguments =
                    amqprs::channel::BasicPublishArguments::new(&place.name, &message.route);
                arguments.mandatory(true);
                let mut confirmed = confirmed.lock().await;
                channel
                    .basic_publish(properties, message.body.to_vec(), arguments)
                    .await
                    .expect("published");
                let confirm = confirmed.recv().await.expect("confirmed");
                assert!(
                    matches!(confirm, Confirm::Ack(_)),
                    "the broker did not take {}: {confirm:?}",
                    message.id
                );
            }
            Self::Redis(connection, script) => {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&place.name)
                    .key(format!("{}:sent:{}", place.name, message.id))
                    .arg(actors::broker::REDIS_SENT_TTL_SECONDS)
                    .arg("event")
                    .arg(&message.endpoint)
                    .arg("body")
                    .arg(message.body.as_ref());
                for (name, value) in &message.headers {
                    invocation.arg(name).arg(value);
                }
                let mut connection = connection.clone();
                let (added, _): (i64, String) = invocation
                    .invoke_async(&mut connection)
                    .await
                    .expect("added");
                assert_eq!(added, 1, "{} was added already", message.id);
            }
        }
    }

    pub async fn close(self) {
        if let Self::Amqp(connection, channel, _) = self {
            let _ = channel.close().await;
            let _ = connection.close().await;
        }
    }
}
