//! Broker destinations (docs/brokers.md): an app whose `delivery` is
//! `nats`, `amqp` or `redis` gets its events published to a broker instead
//! of POSTed, each the webhook's exact body with the headers it is signed
//! with, in the lanes' order, judged like a webhook's answer.
//!
//! - [`Destination`]: where, as the app set it (`PATCH /api/app`): the
//!   broker's URL (a secret: sealed at rest, shown without credentials) and
//!   the templates of its subject, exchange and routing key, or stream.
//! - [`Broker`]: one app's connection, made when its first message goes
//!   (under the address rule, at connection time), shared by its lanes, and
//!   made again after it broke or the destination changed.
//! - [`Publisher`]: a lane's handle: publishes one signed message and
//!   answers as the webhook client does ([`Answer`] for the broker's
//!   acknowledgement, [`NoAnswer`] with its reason otherwise), so backoff,
//!   breaker, dead events and the attempt log are the webhooks'.
//!
//! One module per broker: `nats` (JetStream, `Nats-Msg-Id`), `amqp`
//! (publisher confirms, `mandatory`, `message_id`), `redis_streams` (`XADD`
//! through a script that adds one entry per `webhook-id`); `tls` for the
//! TLS schemes of all three (`tls://`, `amqps://`, `rediss://`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use entity::{DeliveryMode, ErrorClass};
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::net::AddressRule;
use crate::webhook_client::{Answer, NoAnswer};

mod amqp;
mod nats;
mod redis_streams;
mod tls;

/// Redis's idempotent `XADD` and how long it remembers an id: the broker
/// bench's floor publishes with the same script.
pub use redis_streams::{ADD_ONCE as REDIS_ADD_ONCE, SENT_TTL_SECONDS as REDIS_SENT_TTL_SECONDS};

/// The longest URL or template a destination takes.
const MAX_FIELD_LEN: usize = 255;

/// Where a broker app's events go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// A NATS JetStream subject; a stream must take it.
    Nats { url: String, subject: String },
    /// A RabbitMQ exchange, with a routing key.
    Amqp {
        url: String,
        exchange: String,
        routing_key: String,
    },
    /// A Redis stream.
    Redis { url: String, stream: String },
}

/// The fields each kind takes, for one message that names them all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    url: Option<String>,
    subject: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    stream: Option<String>,
}

impl Destination {
    /// `raw` (the `destination` of `PATCH /api/app`) checked for `mode`:
    /// the URL's scheme and host, each template's placeholders. The message
    /// of an error names no credential.
    pub fn parse(mode: DeliveryMode, raw: &serde_json::Value) -> Result<Self, String> {
        let fields: Fields = serde_json::from_value(raw.clone()).map_err(|_| {
            "must be an object with url and, for nats, subject; for amqp, exchange and \
             routing_key; for redis, stream"
                .to_owned()
        })?;
        let url = fields.url.ok_or("needs a url")?;
        let example = match mode {
            DeliveryMode::Nats => "nats://[user:pass@]host:4222 or tls://[user:pass@]host:4222",
            DeliveryMode::Amqp => {
                "amqp://user:pass@host:5672/%2f or amqps://user:pass@host:5671/%2f"
            }
            DeliveryMode::Redis => "redis://[:pass@]host:6379/0 or rediss://[:pass@]host:6379/0",
            DeliveryMode::Push | DeliveryMode::Pull => {
                return Err("is only for delivery nats, amqp or redis".to_owned());
            }
        };
        Address::parse(&url, mode).map_err(|why| format!("url {why} (for example {example})"))?;
        let unused = |name: &str, field: &Option<String>| match field {
            Some(_) => Err(format!("has no {name} for delivery {mode}")),
            None => Ok(()),
        };
        let destination = match mode {
            DeliveryMode::Nats => {
                unused("exchange", &fields.exchange)?;
                unused("routing_key", &fields.routing_key)?;
                unused("stream", &fields.stream)?;
                let subject = template("subject", fields.subject)?;
                if subject
                    .chars()
                    .any(|c| c.is_whitespace() || c == '*' || c == '>')
                    || subject.split('.').any(str::is_empty)
                {
                    return Err(
                        "subject must be dot-separated tokens without spaces, * or >".to_owned(),
                    );
                }
                Self::Nats { url, subject }
            }
            DeliveryMode::Amqp => {
                unused("subject", &fields.subject)?;
                unused("stream", &fields.stream)?;
                let exchange = fields.exchange.ok_or("needs an exchange")?;
                if exchange.is_empty()
                    || exchange.len() > MAX_FIELD_LEN
                    || !exchange
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
                {
                    return Err("exchange must be 1 to 255 of A-Z a-z 0-9 - _ . :".to_owned());
                }
                let routing_key = template("routing_key", fields.routing_key)?;
                Self::Amqp {
                    url,
                    exchange,
                    routing_key,
                }
            }
            _ => {
                unused("subject", &fields.subject)?;
                unused("exchange", &fields.exchange)?;
                unused("routing_key", &fields.routing_key)?;
                let stream = template("stream", fields.stream)?;
                Self::Redis { url, stream }
            }
        };
        Ok(destination)
    }

    /// The delivery mode this destination is for.
    pub fn mode(&self) -> DeliveryMode {
        match self {
            Self::Nats { .. } => DeliveryMode::Nats,
            Self::Amqp { .. } => DeliveryMode::Amqp,
            Self::Redis { .. } => DeliveryMode::Redis,
        }
    }

    /// The broker's URL, with its credentials.
    pub fn url(&self) -> &str {
        match self {
            Self::Nats { url, .. } | Self::Amqp { url, .. } | Self::Redis { url, .. } => url,
        }
    }

    /// Whether the URL's host is an address the rule refuses (a name is
    /// judged when the connection is made).
    pub fn check_host(&self, rule: AddressRule) -> Result<(), String> {
        // A broker URL's host is opaque to the URL parser (not a special
        // scheme): an address in it is read here.
        let host = url::Url::parse(self.url())
            .ok()
            .and_then(|url| {
                url.host_str()
                    .map(|h| h.trim_matches(['[', ']']).to_owned())
            })
            .ok_or("url has no host")?;
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) if !rule.admits(ip) => {
                Err(format!("url refused: {}", crate::net::Refused::NonPublic))
            }
            _ => Ok(()),
        }
    }

    /// The destination as `GET /api/app` shows it: its URL without
    /// credentials.
    pub fn shown(&self) -> serde_json::Value {
        let mut shown = serde_json::to_value(self).expect("a destination serialises");
        if let Some(fields) = shown.as_object_mut() {
            fields.remove("kind");
            fields.insert("url".into(), without_credentials(self.url()).into());
        }
        shown
    }

    /// The stored form, sealed by the store.
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("a destination serialises")
    }

    /// The stored form read back.
    pub fn from_stored(stored: &str) -> Option<Self> {
        serde_json::from_str(stored).ok()
    }
}

/// A template checked: 1 to 255 characters, no braces but the placeholders
/// `{app}`, `{repository}` and `{event}`.
fn template(name: &str, value: Option<String>) -> Result<String, String> {
    let value = value.ok_or_else(|| format!("needs a {name}"))?;
    let rest = value
        .replace("{app}", "")
        .replace("{repository}", "")
        .replace("{event}", "");
    if value.is_empty() || value.len() > MAX_FIELD_LEN || rest.contains(['{', '}']) {
        return Err(format!(
            "{name} must be 1 to 255 characters; its placeholders are {{app}}, {{repository}} \
             and {{event}}"
        ));
    }
    Ok(value)
}

/// `template` with its placeholders filled in.
pub fn render(template: &str, app: &str, repository: &str, event: &str) -> String {
    template
        .replace("{app}", app)
        .replace("{repository}", repository)
        .replace("{event}", event)
}

/// `url` without its user name and password.
pub fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => String::new(),
    }
}

/// Each broker's plain scheme and its TLS scheme, with their default
/// ports.
fn schemes(mode: DeliveryMode) -> [(&'static str, u16); 2] {
    match mode {
        DeliveryMode::Nats => [("nats", 4222), ("tls", 4222)],
        DeliveryMode::Amqp => [("amqp", 5672), ("amqps", 5671)],
        _ => [("redis", 6379), ("rediss", 6379)],
    }
}

/// A broker URL taken apart: where to connect, as whom, and whether over
/// TLS (`broker/tls.rs`).
#[derive(Clone)]
struct Address {
    url: url::Url,
    host: String,
    port: u16,
    tls: bool,
}

impl Address {
    fn parse(raw: &str, mode: DeliveryMode) -> Result<Self, String> {
        if raw.len() > MAX_FIELD_LEN * 4 {
            return Err("is too long".to_owned());
        }
        let url = url::Url::parse(raw).map_err(|_| "is not a URL".to_owned())?;
        let [(plain, plain_port), (secure, secure_port)] = schemes(mode);
        let (tls, default_port) = match url.scheme() {
            scheme if scheme == plain => (false, plain_port),
            scheme if scheme == secure => (true, secure_port),
            _ => {
                return Err(format!(
                    "must start with {plain}:// or, for TLS, {secure}://"
                ));
            }
        };
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.trim_matches(['[', ']']).to_owned(),
            _ => return Err("has no host".to_owned()),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err("takes no query or fragment".to_owned());
        }
        let port = url.port().unwrap_or(default_port);
        Ok(Self {
            url,
            host,
            port,
            tls,
        })
    }

    /// The user name and password, decoded.
    fn credentials(&self) -> (Option<String>, Option<String>) {
        let user = Some(self.url.username())
            .filter(|u| !u.is_empty())
            .map(percent_decoded);
        let password = self.url.password().map(percent_decoded);
        (user, password)
    }

    /// The address to connect to, resolved now under the rule.
    async fn resolve(&self, rule: AddressRule) -> Result<SocketAddr, Failure> {
        // A literal address comes back as itself, judged by the same rule.
        let addresses = rule
            .resolve(&self.host, self.port)
            .await
            .map_err(|refused| Failure {
                class: ErrorClass::Ssrf,
                message: format!("the broker's address was refused: {refused}"),
                broken: true,
            })?;
        Ok(addresses[0])
    }
}

/// `text` with its `%XX` escapes decoded (a `+` stays a `+`).
fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Why a publish got no acknowledgement.
#[derive(Debug, Clone)]
struct Failure {
    class: ErrorClass,
    message: String,
    /// The connection cannot be used again: the next message makes one.
    broken: bool,
}

impl Failure {
    fn connect(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Connect,
            message: message.into(),
            broken: true,
        }
    }

    fn refused(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Broker,
            message: message.into(),
            broken: false,
        }
    }
}

/// One message to publish.
struct Message<'a> {
    /// The subject, routing key or stream key, its template filled in.
    target: String,
    /// The event's `webhook-id` (a chunk's, for a chunk).
    id: &'a str,
    /// The endpoint name: `create`, `update`, …
    event: &'a str,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

/// A connection to one broker.
#[derive(Clone)]
enum Connection {
    Nats(nats::Connection),
    Amqp(amqp::Connection),
    Redis(redis_streams::Connection),
}

impl Connection {
    async fn open(destination: &Destination, rule: AddressRule) -> Result<Self, Failure> {
        let address = Address::parse(destination.url(), destination.mode())
            .map_err(|why| Failure::refused(format!("the broker's url {why}")))?;
        let at = address.resolve(rule).await?;
        Ok(match destination {
            Destination::Nats { .. } => Self::Nats(nats::Connection::open(&address, at).await?),
            Destination::Amqp { exchange, .. } => {
                Self::Amqp(amqp::Connection::open(&address, at, exchange).await?)
            }
            Destination::Redis { .. } => {
                Self::Redis(redis_streams::Connection::open(&address, at).await?)
            }
        })
    }

    /// Publishes `message`; `Ok` carries the acknowledgement's words.
    async fn publish(&self, message: &Message<'_>) -> Result<String, Failure> {
        match self {
            Self::Nats(connection) => connection.publish(message).await,
            Self::Amqp(connection) => connection.publish(message).await,
            Self::Redis(connection) => connection.publish(message).await,
        }
    }

    fn close(self) {
        if let Self::Amqp(connection) = self {
            connection.close();
        }
    }
}

/// The connection in use, and the destination it was made for.
struct Link {
    destination: Arc<Destination>,
    connection: Connection,
    /// Counts connections made: a failure forgets only the one it broke.
    generation: u64,
}

/// One app's broker connection, shared by its lanes (made when the first
/// message goes, again after one broke).
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    rule: AddressRule,
    timeout: Duration,
    link: tokio::sync::Mutex<Option<Link>>,
    made: std::sync::atomic::AtomicU64,
}

impl Broker {
    /// No connection yet; each made under `rule`, each publish (connection
    /// included) within `timeout`.
    pub fn new(rule: AddressRule, timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                rule,
                timeout,
                link: tokio::sync::Mutex::new(None),
                made: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The connection for `destination`: the one in use, or a new one.
    async fn connection(
        &self,
        destination: &Arc<Destination>,
    ) -> Result<(Connection, u64), Failure> {
        let mut link = self.shared.link.lock().await;
        if let Some(current) = link.as_ref()
            && current.destination == *destination
        {
            return Ok((current.connection.clone(), current.generation));
        }
        if let Some(old) = link.take() {
            old.connection.close();
        }
        // Boxed: connecting is rare, and its future (handshakes, TLS)
        // would otherwise make every publish's future that much bigger.
        let connection = Box::pin(Connection::open(destination, self.shared.rule)).await?;
        let generation = self
            .shared
            .made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *link = Some(Link {
            destination: destination.clone(),
            connection: connection.clone(),
            generation,
        });
        Ok((connection, generation))
    }

    /// Lets go of connection `generation` (broken): the next message makes
    /// a new one.
    async fn forget(&self, generation: u64) {
        let mut link = self.shared.link.lock().await;
        if link.as_ref().is_some_and(|l| l.generation == generation)
            && let Some(old) = link.take()
        {
            old.connection.close();
        }
    }

    /// A lane's handle for `destination`, publishing as `app`.
    pub fn publisher(&self, app: &str, destination: Destination) -> Publisher {
        Publisher {
            broker: self.clone(),
            destination: Arc::new(destination),
            app: app.to_owned(),
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// A lane's way to its app's broker.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    destination: Arc<Destination>,
    app: String,
}

impl Publisher {
    /// Publishes one signed message (`event`: the endpoint name) of
    /// `repository`, within the delivery timeout: the broker's
    /// acknowledgement as an [`Answer`] (no HTTP status; its words as the
    /// excerpt), anything else as a [`NoAnswer`] with its reason.
    pub async fn publish(
        &self,
        repository: &str,
        event: &'static str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, NoAnswer> {
        let started = Instant::now();
        let target = match &*self.destination {
            Destination::Nats { subject, .. } => render(subject, &self.app, repository, event),
            Destination::Amqp { routing_key, .. } => {
                render(routing_key, &self.app, repository, event)
            }
            Destination::Redis { stream, .. } => render(stream, &self.app, repository, event),
        };
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let message = Message {
            target,
            id: &id,
            event,
            headers: &headers,
            body: &body,
        };
        let attempt = async {
            let (connection, generation) = self.broker.connection(&self.destination).await?;
            let acked = connection.publish(&message).await;
            if let Err(failure) = &acked
                && failure.broken
            {
                self.broker.forget(generation).await;
            }
            acked
        };
        let outcome = match tokio::time::timeout(self.broker.shared.timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // A connection that did not answer in time is not trusted
                // with the next message.
                let link = self.broker.shared.link.lock().await.take();
                if let Some(old) = link {
                    old.connection.close();
                }
                Err(Failure {
                    class: ErrorClass::Timeout,
                    message: "the broker did not acknowledge in time".to_owned(),
                    broken: true,
                })
            }
        };
        match outcome {
            Ok(words) => Ok(Answer {
                status: 200,
                retry_after: None,
                excerpt: words,
                latency: started.elapsed(),
                from_broker: true,
            }),
            Err(failure) => Err(NoAnswer {
                class: failure.class,
                message: failure.message,
                latency: started.elapsed(),
            }),
        }
    }
}

/// The signed headers as name and text pairs, in a stable order. A header
/// whose value is not visible ASCII is refused, never dropped: every
/// header is signed, and a message without one would not verify.
fn header_pairs(headers: &HeaderMap) -> Result<Vec<(&str, &str)>, Failure> {
    headers
        .iter()
        .map(|(name, value)| match value.to_str() {
            Ok(text) => Ok((name.as_str(), text)),
            Err(_) => Err(Failure::refused(format!(
                "the header {name} is not visible ASCII, which a broker message carries"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_that_is_not_ascii_text_is_refused_not_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().expect("a value"));
        assert_eq!(
            header_pairs(&headers).expect("ASCII headers are carried"),
            [("webhook-id", "evt_1")]
        );
        headers.insert(
            "ce-subject",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a value"),
        );
        let refused = header_pairs(&headers).expect_err("a header must not be dropped");
        assert_eq!(refused.class, ErrorClass::Broker);
        assert!(
            refused.message.contains("ce-subject"),
            "{}",
            refused.message
        );
    }

    fn parse(mode: DeliveryMode, raw: serde_json::Value) -> Result<Destination, String> {
        Destination::parse(mode, &raw)
    }

    #[test]
    fn destinations_are_checked_for_their_kind() {
        let nats = parse(
            DeliveryMode::Nats,
            serde_json::json!({"url": "nats://u:p%40ss@broker.example:4222", "subject": "herald.{repository}.{event}"}),
        )
        .expect("a NATS destination");
        assert_eq!(nats.mode(), DeliveryMode::Nats);
        assert_eq!(
            nats.shown(),
            serde_json::json!({"url": "nats://broker.example:4222", "subject": "herald.{repository}.{event}"}),
            "shown without credentials"
        );
        assert_eq!(Destination::from_stored(&nats.to_stored()), Some(nats));
        for (mode, raw, why) in [
            (
                DeliveryMode::Nats,
                serde_json::json!({"url": "amqp://h", "subject": "a"}),
                "nats://",
            ),
            (
                DeliveryMode::Nats,
                serde_json::json!({"url": "nats://h", "subject": "a.*"}),
                "subject",
            ),
            (
                DeliveryMode::Nats,
                serde_json::json!({"url": "nats://h", "subject": "a.{who}"}),
                "placeholders",
            ),
            (
                DeliveryMode::Nats,
                serde_json::json!({"url": "nats://h"}),
                "needs a subject",
            ),
            (
                DeliveryMode::Nats,
                serde_json::json!({"url": "nats://h", "subject": "a", "stream": "s"}),
                "no stream",
            ),
            (
                DeliveryMode::Amqp,
                serde_json::json!({"url": "amqp://h", "routing_key": "k"}),
                "exchange",
            ),
            (
                DeliveryMode::Amqp,
                serde_json::json!({"url": "https://h", "exchange": "e", "routing_key": "k"}),
                "for TLS, amqps://",
            ),
            (
                DeliveryMode::Redis,
                serde_json::json!({"url": "rediss://h/0#insecure", "stream": "s"}),
                "fragment",
            ),
            (
                DeliveryMode::Redis,
                serde_json::json!({"url": "redis://", "stream": "s"}),
                "host",
            ),
            (
                DeliveryMode::Redis,
                serde_json::json!({"url": "redis://h", "stream": "s", "extra": 1}),
                "object",
            ),
            (
                DeliveryMode::Push,
                serde_json::json!({"url": "redis://h", "stream": "s"}),
                "only for",
            ),
        ] {
            let error = parse(mode, raw.clone()).expect_err(&raw.to_string());
            assert!(error.contains(why), "{raw}: {error}");
            assert!(!error.contains("p%40ss"), "no credential in {error}");
        }
    }

    #[test]
    fn each_broker_takes_its_tls_scheme_with_its_default_port() {
        for (mode, url, port) in [
            (DeliveryMode::Nats, "tls://u:p@broker.example", 4222),
            (DeliveryMode::Amqp, "amqps://u:p@broker.example/%2f", 5671),
            (DeliveryMode::Redis, "rediss://:p@broker.example/0", 6379),
            (DeliveryMode::Amqp, "amqps://broker.example:6000", 6000),
        ] {
            let address = Address::parse(url, mode).expect(url);
            assert_eq!((address.port, address.tls), (port, true), "{url}");
            assert_eq!(address.host, "broker.example");
        }
        let refused = Address::parse("tls://broker.example", DeliveryMode::Redis)
            .err()
            .expect("another broker's scheme");
        assert!(
            refused.contains("redis:// or, for TLS, rediss://"),
            "{refused}"
        );
    }

    #[test]
    fn templates_take_the_app_the_repository_and_the_event() {
        assert_eq!(
            render(
                "herald.{app}.{repository}.{event}",
                "app_1",
                "repo_2",
                "create"
            ),
            "herald.app_1.repo_2.create"
        );
    }

    #[test]
    fn credentials_are_decoded_and_a_literal_address_is_judged() {
        let address = Address::parse("amqp://gu%3Aest:p%40ss@10.0.0.1/%2f", DeliveryMode::Amqp)
            .expect("a URL");
        assert_eq!(
            address.credentials(),
            (Some("gu:est".to_owned()), Some("p@ss".to_owned()))
        );
        assert_eq!((address.port, address.tls), (5672, false));
        let strict = AddressRule {
            allow_private: false,
            allow_http: false,
        };
        let destination = Destination::Amqp {
            url: "amqp://10.0.0.1".into(),
            exchange: "e".into(),
            routing_key: "k".into(),
        };
        assert!(destination.check_host(strict).is_err());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let refused = runtime
            .block_on(address.resolve(strict))
            .expect_err("a private address is refused");
        assert_eq!(refused.class, ErrorClass::Ssrf);
    }
}
