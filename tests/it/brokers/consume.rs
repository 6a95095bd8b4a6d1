//! The brokers of the broker tests, as a consumer sees them: each test
//! makes its own stream, exchange and queue, or stream key (named after a
//! fresh id), reads back every message Herald published there as a
//! [`Received`] (the endpoint, the headers, the exact body), and removes
//! what it made when dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::receiver::Received;

pub const NATS: &str = "127.0.0.1:4222";
pub const AMQP: &str = "127.0.0.1:5672";
pub const REDIS: &str = "127.0.0.1:6379";

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// Fails with a clear message when a broker does not answer: these tests
/// need the real servers.
pub async fn answers(address: &str) {
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    assert!(
        matches!(connected, Ok(Ok(_))),
        "the broker tests need a server at {address} (NATS with JetStream on 4222, \
         RabbitMQ on 5672 with guest/guest, Redis on 6379); none answers"
    );
}

fn message(endpoint: &str, headers: HashMap<String, String>, body: Vec<u8>) -> Received {
    let now = Instant::now();
    Received {
        endpoint: endpoint.to_owned(),
        headers,
        body,
        status: 200,
        arrived: now,
        answered: now,
    }
}

/// A JetStream stream taking `{prefix}.>`.
pub struct NatsStream {
    pub prefix: String,
    pub name: String,
    context: jetstream::Context,
}

impl NatsStream {
    /// A stream with a duplicate window of two minutes; `limit` sets
    /// `max_msgs` with `discard: new` (a stream that refuses when full).
    pub async fn new(limit: Option<i64>) -> Self {
        answers(NATS).await;
        Self::on(
            async_nats::connect(NATS).await.expect("NATS answers"),
            limit,
        )
        .await
    }

    /// [`Self::new`] on the server `client` is connected to.
    pub async fn on(client: async_nats::Client, limit: Option<i64>) -> Self {
        let context = jetstream::new(client);
        let name = unique("herald_test_");
        let prefix = name.clone();
        let mut config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        if let Some(limit) = limit {
            config.max_messages = limit;
            config.discard = jetstream::stream::DiscardPolicy::New;
        }
        context.create_stream(config).await.expect("stream made");
        Self {
            prefix,
            name,
            context,
        }
    }

    /// The destination of an app publishing here.
    pub fn destination(&self, url: &str) -> Value {
        json!({"url": url, "subject": format!("{}.{{repository}}.{{event}}", self.prefix)})
    }

    /// Raises the stream's message limit.
    pub async fn allow(&self, limit: i64) {
        let mut stream = self.context.get_stream(&self.name).await.expect("stream");
        let mut config = stream.info().await.expect("info").config.clone();
        config.max_messages = limit;
        self.context.update_stream(config).await.expect("updated");
    }

    /// How many messages the stream holds.
    pub async fn count(&self) -> u64 {
        let mut stream = self.context.get_stream(&self.name).await.expect("stream");
        stream.info().await.expect("info").state.messages
    }

    /// Every message in the stream, in order, with its subject.
    pub async fn messages(&self) -> Vec<(String, Received)> {
        let mut stream = self.context.get_stream(&self.name).await.expect("stream");
        let last = stream.info().await.expect("info").state.last_sequence;
        let mut out = Vec::new();
        for sequence in 1..=last {
            let Ok(raw) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let headers = raw
                .headers
                .iter()
                .filter_map(|(name, values)| {
                    Some((name.to_string().to_lowercase(), values.first()?.to_string()))
                })
                .collect();
            let subject = raw.subject.to_string();
            let endpoint = subject.rsplit('.').next().unwrap_or_default().to_owned();
            out.push((subject, message(&endpoint, headers, raw.payload.to_vec())));
        }
        out
    }

    pub async fn remove(&self) {
        let _ = self.context.delete_stream(&self.name).await;
    }
}

/// A NATS server of a test's own, with JetStream, that takes only user
/// `herald` with password `right`: the shared server takes anyone.
pub struct GuardedNats {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl GuardedNats {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--user",
                "herald",
            ])
            .args(["--pass", "right", "-js", "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (the NATS tests need it on PATH)");
        let server = Self {
            port,
            child,
            _dir: dir,
        };
        let _listening = eventually(
            "nats-server to listen",
            || tokio::net::TcpStream::connect(("127.0.0.1", port)),
            Result::is_ok,
        )
        .await;
        server
    }

    /// A client signed in as `herald`.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password("herald".into(), "right".into())
            .connect(format!("127.0.0.1:{}", self.port))
            .await
            .expect("signed in")
    }
}

impl Drop for GuardedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A topic exchange and, unless left out, a queue bound to it with `#`.
pub struct AmqpExchange {
    pub exchange: String,
    pub queue: String,
    channel: lapin::Channel,
    _connection: lapin::Connection,
}

impl AmqpExchange {
    pub async fn new(bound: bool) -> Self {
        answers(AMQP).await;
        let connection = lapin::Connection::connect(
            &format!("amqp://guest:guest@{AMQP}/%2f"),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("RabbitMQ answers");
        let channel = connection.create_channel().await.expect("channel");
        let exchange = unique("herald.test.");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange declared");
        let made = Self {
            queue: format!("{exchange}.q"),
            exchange,
            channel,
            _connection: connection,
        };
        if bound {
            made.bind().await;
        }
        made
    }

    /// Declares the queue and binds it to every routing key.
    pub async fn bind(&self) {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue declared");
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue bound");
    }

    pub fn destination(&self, url: &str) -> Value {
        json!({"url": url, "exchange": self.exchange, "routing_key": "{repository}.{event}"})
    }

    /// How many messages wait in the queue (taking none).
    pub async fn waiting(&self) -> u64 {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue");
        u64::from(queue.message_count())
    }

    /// Takes every message waiting in the queue, in order, with its
    /// routing key; `message_id` shows as the `message-id` header.
    pub async fn take(&self) -> Vec<(String, Received)> {
        let mut out = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let delivery = got.delivery;
            let properties = &delivery.properties;
            let mut headers: HashMap<String, String> = properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .filter_map(|(name, value)| match value {
                            AMQPValue::LongString(text) => {
                                Some((name.to_string(), text.to_string()))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let Some(id) = properties.message_id() {
                headers.insert("message-id".into(), id.to_string());
            }
            if let Some(mode) = properties.delivery_mode() {
                headers.insert("delivery-mode".into(), mode.to_string());
            }
            let endpoint = properties
                .kind()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            out.push((
                delivery.routing_key.to_string(),
                message(&endpoint, headers, delivery.data.clone()),
            ));
        }
        out
    }

    pub async fn remove(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// A stream entry: its id and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// A stream key of its own.
pub struct RedisStream {
    pub key: String,
    connection: redis::aio::MultiplexedConnection,
}

impl RedisStream {
    pub async fn new() -> Self {
        answers(REDIS).await;
        let client = redis::Client::open(format!("redis://{REDIS}/0")).expect("client");
        // Reading a long stream on a busy machine outlasts the client's
        // default response timeout.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("Redis answers");
        Self::on(connection)
    }

    /// [`Self::new`] on the server `connection` is to.
    pub fn on(connection: redis::aio::MultiplexedConnection) -> Self {
        Self {
            key: unique("herald:test:"),
            connection,
        }
    }

    pub fn destination(&self, url: &str) -> Value {
        json!({"url": url, "stream": self.key})
    }

    /// How many entries the stream holds.
    pub async fn count(&self) -> u64 {
        let mut connection = self.connection.clone();
        redis::cmd("XLEN")
            .arg(&self.key)
            .query_async(&mut connection)
            .await
            .expect("XLEN")
    }

    /// Makes the stream's key a plain string: every `XADD` to it is refused
    /// (`WRONGTYPE`) until [`Self::remove`] deletes it.
    pub async fn occupy(&self) {
        let mut connection = self.connection.clone();
        let _: () = redis::cmd("SET")
            .arg(&self.key)
            .arg("not a stream")
            .query_async(&mut connection)
            .await
            .expect("SET");
    }

    /// Every entry of the stream, in order.
    pub async fn entries(&self) -> Vec<Received> {
        let mut connection = self.connection.clone();
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, fields)| {
                let mut headers = HashMap::new();
                let (mut endpoint, mut body) = (String::new(), Vec::new());
                for (name, value) in fields {
                    match name.as_str() {
                        "event" => endpoint = String::from_utf8(value).expect("text"),
                        "body" => body = value,
                        _ => {
                            headers.insert(name, String::from_utf8(value).expect("text"));
                        }
                    }
                }
                message(&endpoint, headers, body)
            })
            .collect()
    }

    pub async fn remove(&self) {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.key))
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut connection)
                .await;
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that cuts every
/// connection after it carried `cut_after` bytes towards the broker (each
/// new connection gets the same allowance), while `cutting` holds.
pub struct CuttingProxy {
    pub port: u16,
    pub cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cutting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl CuttingProxy {
    pub async fn start(upstream: &'static str, cut_after: usize) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let port = listener.local_addr().expect("address").port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let cutting = Arc::new(AtomicBool::new(true));
        let (task_cuts, task_cutting) = (cuts.clone(), cutting.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (cuts, cutting) = (task_cuts.clone(), task_cutting.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let mut carried = 0usize;
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        carried += n;
                        if cutting.load(Ordering::SeqCst) && carried > cut_after {
                            // Half the bytes go: the broker sees a message
                            // cut short, Herald a connection gone.
                            let _ = server_write.write_all(&buffer[..n / 2]).await;
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if server_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    down.abort();
                });
            }
        });
        Self {
            port,
            cuts,
            cutting,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    /// Lets every connection through from now on.
    pub fn stop_cutting(&self) {
        self.cutting
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits (bounded) until `read` gives what `done` accepts; returns it.
pub async fn eventually<T, F>(what: &str, read: impl FnMut() -> F, done: impl Fn(&T) -> bool) -> T
where
    F: Future<Output = T>,
    T: std::fmt::Debug,
{
    eventually_within(what, Duration::from_secs(60), read, done).await
}

/// [`eventually`] with its own bound, for waits that include breaker
/// cooldowns (each failed probe doubles the next one).
pub async fn eventually_within<T, F>(
    what: &str,
    bound: Duration,
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: Future<Output = T>,
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + bound;
    loop {
        let got = read().await;
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
