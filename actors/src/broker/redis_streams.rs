//! Redis Streams: each message an entry `XADD`ed to its stream key, with
//! the fields `event` (the endpoint name), `body` (the webhook's exact
//! body) and the signed headers. A re-send after an unknown outcome (a
//! connection cut before the reply) must not add a second entry: the
//! entry is added by a script that first looks for `{stream}:sent:{id}`
//! (the id of the entry already added for this `webhook-id`) and writes it
//! with the entry, in one atomic step, kept for [`SENT_TTL_SECONDS`].
//!
//! The connection is Herald's own stream (TCP, or TLS for `rediss://`)
//! to the address the rule admitted, handed to redis-rs's multiplexed
//! connection, which signs in and selects the database. Its driver (the
//! half that writes commands and reads replies) is not a task of its own:
//! the lane that publishes polls it with its command
//! ([`polled_together`](crate::webhook_client::polled_together)), one lane
//! at a time, so a reply wakes the lane that waits for it, not a driver
//! task that then wakes the lane.

use std::net::SocketAddr;
use std::time::Duration;

use entity::ErrorClass;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::{Address, Failure, Message, header_pairs};

/// How long a `webhook-id` is remembered as added: a week, far beyond any
/// re-send of an event whose outcome was unknown.
pub const SENT_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// Adds the entry unless this `webhook-id` was added already; answers
/// `{added, entry id}`. Keys: the stream, `{stream}:sent:{id}`; arguments:
/// [`SENT_TTL_SECONDS`], then the entry's fields and values.
pub const ADD_ONCE: &str = r"
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
";

const WAIT: Duration = Duration::from_secs(30);

/// redis-rs's driver of one connection, polled by whichever lane publishes;
/// fused, so that a driver that ended (its connection closed) is never
/// polled again, and the commands sent after it fail at once.
type Driver =
    futures::future::Fuse<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

#[derive(Clone)]
pub(super) struct Connection {
    connection: MultiplexedConnection,
    driver: std::sync::Arc<tokio::sync::Mutex<Driver>>,
    script: std::sync::Arc<Script>,
}

/// A failure of redis-rs's, in words that name no credential.
fn failed(err: &redis::RedisError) -> Failure {
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        return Failure::connect(format!(
            "the connection to Redis failed ({})",
            err.kind_words()
        ));
    }
    if err.is_timeout() {
        return Failure {
            class: ErrorClass::Timeout,
            message: "Redis did not answer in time".to_owned(),
            broken: true,
        };
    }
    let words = match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => err.kind_words(),
    };
    Failure {
        class: ErrorClass::Broker,
        message: format!("Redis refused: {words}"),
        broken: err.kind() == redis::ErrorKind::AuthenticationFailed,
    }
}

/// The words of an error's kind (an error's full text may quote a URL).
trait KindWords {
    fn kind_words(&self) -> String;
}

impl KindWords for redis::RedisError {
    fn kind_words(&self) -> String {
        self.category().to_owned()
    }
}

/// redis-rs's multiplexed connection over `stream`, its driver spawned.
async fn multiplexed<C>(
    settings: &RedisConnectionInfo,
    stream: C,
    config: AsyncConnectionConfig,
) -> redis::RedisResult<(MultiplexedConnection, Driver)>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (connection, driver) =
        MultiplexedConnection::new_with_config(settings, stream, config).await?;
    let driver: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(driver);
    Ok((connection, futures::FutureExt::fuse(driver)))
}

impl Connection {
    pub(super) async fn open(address: &Address, at: SocketAddr) -> Result<Self, Failure> {
        // The database and credentials, read as redis-rs reads them (from
        // the URL with its plain scheme: the stream below is ours, TLS or
        // not, to the address the rule admitted).
        let mut url = address.url.clone();
        let _ = url.set_scheme("redis");
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|_| Failure::refused("the broker's url is not a Redis URL"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(WAIT))
            .set_response_timeout(Some(WAIT));
        let settings = info.redis_settings();
        let made = if address.tls {
            let stream = super::tls::connect(at, &address.host, "Redis").await?;
            multiplexed(settings, stream, config).await
        } else {
            let stream = super::tls::tcp(at, "Redis").await?;
            multiplexed(settings, stream, config).await
        };
        let (connection, driver) = made.map_err(|err| {
            let mut failure = failed(&err);
            if err.kind() == redis::ErrorKind::AuthenticationFailed
                || err
                    .code()
                    .is_some_and(|code| code == "WRONGPASS" || code == "NOAUTH")
            {
                failure.class = ErrorClass::Broker;
                failure.message = "Redis refused the credentials".to_owned();
            }
            failure
        })?;
        Ok(Self {
            connection,
            driver: std::sync::Arc::new(tokio::sync::Mutex::new(driver)),
            script: std::sync::Arc::new(Script::new(ADD_ONCE)),
        })
    }

    pub(super) async fn publish(&self, message: &Message<'_>) -> Result<String, Failure> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&message.target)
            .key(format!("{}:sent:{}", message.target, message.id))
            .arg(SENT_TTL_SECONDS)
            .arg("event")
            .arg(message.event)
            .arg("body")
            .arg(message.body.as_ref());
        for (name, value) in header_pairs(message.headers)? {
            invocation.arg(name).arg(value);
        }
        let mut connection = self.connection.clone();
        let invoked = invocation.invoke_async(&mut connection);
        let (added, id): (i64, String) = self.driven(invoked).await.map_err(|err| failed(&err))?;
        Ok(format!(
            "ack: stream {} entry {id}{}",
            message.target,
            if added == 1 { "" } else { " (already added)" }
        ))
    }

    /// Awaits `command`, polling the connection's driver beside it while
    /// no other lane does: the lane that holds the driver reads every
    /// reply, and a lane waiting for the driver takes it over as soon as
    /// it is free (or finds its reply already read).
    async fn driven<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        tokio::pin!(command);
        tokio::select! {
            biased;
            answered = &mut command => answered,
            mut driver = self.driver.lock() => {
                let driver = std::pin::Pin::new(&mut *driver);
                match crate::webhook_client::polled_together::drive(command.as_mut(), driver).await {
                    Some(answered) => answered,
                    // The driver ended (the connection closed): the command
                    // is answered with redis-rs's own error.
                    None => command.await,
                }
            }
        }
    }
}
