//! RabbitMQ (AMQP 0-9-1): each message published to the app's exchange
//! with its routing key, persistent (`delivery_mode` 2), `mandatory` (a
//! message no queue takes comes back: an error, not a silent drop), its
//! `message_id` the `webhook-id` and the signed headers as message
//! headers, on a channel in confirm mode: delivered once the broker
//! confirmed it. One connection and one channel per app, shared by its
//! lanes; a channel the broker closed (an exchange that does not exist,
//! permissions) is made again with the connection.
//!
//! The client is amqprs: its reader and writer are tasks on Herald's own
//! runtime, so a message and its confirm never leave the lane's thread
//! (lapin, before it, read and wrote on a thread of its own: four thread
//! crossings a message, BENCHMARKS.md "Broker destinations"). amqprs hands
//! confirms and returns to a callback, [`Confirmations`]: each publish
//! takes the channel's next delivery tag and waits for the broker's word
//! on it. A returned message is matched to its publish by `message_id`
//! (the broker returns it before it confirms it), so a `mandatory`
//! message no queue took is an error.
//!
//! amqprs connects to the address the rule admitted (given as the host),
//! and for `amqps://` makes TLS over it with Herald's client configuration,
//! the certificate checked for the URL's host (`broker/tls.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::connection::OpenConnectionArguments;
use amqprs::{
    Ack, BasicProperties, Cancel, Close, CloseChannel, FieldTable, FieldValue, Nack, Return,
};
use entity::ErrorClass;
use tokio::sync::oneshot;

use super::{Address, Failure, Message, header_pairs};

/// The longest exchange, routing key or `message_id` AMQP carries.
const MAX_SHORT_STRING: usize = 255;

#[derive(Clone)]
pub(super) struct Connection {
    shared: Arc<Shared>,
}

struct Shared {
    connection: amqprs::connection::Connection,
    channel: Channel,
    exchange: String,
    confirms: Arc<Mutex<Confirms>>,
    /// Held from taking a delivery tag to handing the message to the
    /// writer, so that tags and the wire keep one order.
    sending: tokio::sync::Mutex<()>,
}

/// The broker's word on one message.
enum Word {
    Ack,
    Nack,
    /// Returned (`mandatory`, no queue took it): reply code and text.
    Returned(u16, String),
    Failed(Failure),
}

/// One message waiting for its confirm.
struct Waiting {
    id: String,
    returned: Option<(u16, String)>,
    answer: oneshot::Sender<Word>,
}

/// The channel's publishes waiting for a confirm, by delivery tag.
#[derive(Default)]
struct Confirms {
    /// The last delivery tag given (the broker numbers a confirm-mode
    /// channel's messages 1, 2, …).
    last_tag: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Why the channel takes no more messages, once it does not.
    broken: Option<Failure>,
}

impl Confirms {
    /// Answers `tag` (and every tag before it, for `multiple`).
    fn settle(&mut self, tag: u64, multiple: bool, acked: bool) {
        let settled = if multiple {
            let after = self.waiting.split_off(&(tag + 1));
            std::mem::replace(&mut self.waiting, after)
        } else {
            self.waiting
                .remove(&tag)
                .map(|w| (tag, w))
                .into_iter()
                .collect()
        };
        for waiting in settled.into_values() {
            let word = match (waiting.returned, acked) {
                (Some((code, text)), _) => Word::Returned(code, text),
                (None, true) => Word::Ack,
                (None, false) => Word::Nack,
            };
            let _ = waiting.answer.send(word);
        }
    }

    /// Notes that the broker returned message `id` (it confirms it next).
    fn returned(&mut self, id: &str, code: u16, text: &str) {
        if let Some(waiting) = self.waiting.values_mut().find(|w| w.id == id) {
            waiting.returned = Some((code, text.to_owned()));
        }
    }

    /// Fails every waiting message with `failure`, and every later one.
    fn break_with(&mut self, failure: Failure) {
        for waiting in std::mem::take(&mut self.waiting).into_values() {
            let _ = waiting.answer.send(Word::Failed(failure.clone()));
        }
        self.broken.get_or_insert(failure);
    }
}

fn lock(confirms: &Mutex<Confirms>) -> MutexGuard<'_, Confirms> {
    confirms.lock().unwrap_or_else(PoisonError::into_inner)
}

/// amqprs's callbacks, on the connection and on the channel: confirms,
/// returns and closes reach the waiting publishes.
#[derive(Clone)]
struct Confirmations(Arc<Mutex<Confirms>>);

#[async_trait::async_trait]
impl ChannelCallback for Confirmations {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        lock(&self.0).break_with(Failure {
            class: ErrorClass::Broker,
            message: format!(
                "the AMQP broker closed the channel: {} {}",
                close.reply_code(),
                close.reply_text()
            ),
            broken: true,
        });
        Ok(())
    }

    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        lock(&self.0).settle(ack.delivery_tag(), ack.mutiple(), true);
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        lock(&self.0).settle(nack.delivery_tag(), nack.multiple(), false);
    }

    async fn publish_return(
        &mut self,
        _: &Channel,
        returned: Return,
        properties: BasicProperties,
        _: Vec<u8>,
    ) {
        if let Some(id) = properties.message_id() {
            lock(&self.0).returned(id, returned.reply_code(), returned.reply_text());
        }
    }
}

#[async_trait::async_trait]
impl ConnectionCallback for Confirmations {
    async fn close(
        &mut self,
        _: &amqprs::connection::Connection,
        close: Close,
    ) -> Result<(), amqprs::error::Error> {
        lock(&self.0).break_with(Failure::connect(format!(
            "the AMQP broker closed the connection: {} {}",
            close.reply_code(),
            close.reply_text()
        )));
        Ok(())
    }

    async fn blocked(&mut self, _: &amqprs::connection::Connection, reason: String) {
        tracing::warn!(%reason, "the AMQP broker blocks publishing");
    }

    async fn unblocked(&mut self, _: &amqprs::connection::Connection) {
        tracing::info!("the AMQP broker takes messages again");
    }

    async fn secret_updated(&mut self, _: &amqprs::connection::Connection) {}
}

/// A failure of amqprs's, in words that name no credential (its errors
/// quote frames and I/O errors, never the URL).
fn failed(err: &amqprs::error::Error) -> Failure {
    use amqprs::error::Error;
    match err {
        Error::ConnectionOpenError(why) => Failure {
            class: ErrorClass::Broker,
            message: format!("the AMQP broker refused the connection: {why}"),
            broken: true,
        },
        Error::ChannelOpenError(why) | Error::ChannelUseError(why) => Failure {
            class: ErrorClass::Broker,
            message: format!("the AMQP broker refused: {why}"),
            broken: true,
        },
        _ => Failure::connect(format!("the connection to the AMQP broker failed ({err})")),
    }
}

/// Why a connection could not be opened. A broker that accepted the TCP
/// connection and then hung up in the middle of the handshake (an EOF or a
/// reset) most likely refused the credentials: RabbitMQ closes the socket
/// on a failed login, after a delay, to a client that (as amqprs) does not
/// ask for a `connection.close` instead. amqprs words its network errors
/// only as text, hence the match on it.
fn not_opened(err: &amqprs::error::Error) -> Failure {
    match err {
        amqprs::error::Error::NetworkError(why)
            if why.contains("peer shutdown") || why.contains("reset by peer") =>
        {
            Failure {
                class: ErrorClass::Broker,
                message: "the AMQP broker hung up during the handshake, as it does when it \
                          refused the credentials"
                    .to_owned(),
                broken: true,
            }
        }
        _ => failed(err),
    }
}

impl Connection {
    pub(super) async fn open(
        address: &Address,
        at: std::net::SocketAddr,
        exchange: &str,
    ) -> Result<Self, Failure> {
        let (user, password) = address.credentials();
        // The URL's path is the virtual host, `/` when it has none.
        let vhost = match address.url.path().strip_prefix('/').unwrap_or_default() {
            "" => "/".to_owned(),
            path => super::percent_decoded(path),
        };
        if vhost.len() > MAX_SHORT_STRING {
            return Err(Failure::refused(format!(
                "the broker's virtual host is longer than AMQP's {MAX_SHORT_STRING} bytes"
            )));
        }
        let host = match at {
            std::net::SocketAddr::V4(v4) => v4.ip().to_string(),
            std::net::SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        let mut arguments = OpenConnectionArguments::new(
            &host,
            at.port(),
            user.as_deref().unwrap_or("guest"),
            password.as_deref().unwrap_or("guest"),
        );
        arguments.virtual_host(&vhost).connection_name("herald");
        let refusal = if address.tls {
            let (adaptor, refusal) = super::tls::amqp_adaptor(&address.host)?;
            arguments.tls_adaptor(adaptor);
            Some(refusal)
        } else {
            None
        };
        let connection = amqprs::connection::Connection::open(&arguments)
            .await
            .map_err(|err| {
                refusal
                    .as_ref()
                    .and_then(super::tls::refused)
                    .unwrap_or_else(|| not_opened(&err))
            })?;
        let confirms = Arc::new(Mutex::new(Confirms::default()));
        let callbacks = Confirmations(Arc::clone(&confirms));
        connection
            .register_callback(callbacks.clone())
            .await
            .map_err(|err| failed(&err))?;
        // A connection that breaks fails what waits on it, at once.
        let watched = connection.clone();
        let on_loss = Arc::clone(&confirms);
        tokio::spawn(async move {
            let lost = watched.listen_network_io_failure().await;
            lock(&on_loss).break_with(Failure::connect(if lost {
                "the connection to the AMQP broker was lost"
            } else {
                "the connection to the AMQP broker was closed"
            }));
        });
        let channel = connection
            .open_channel(None)
            .await
            .map_err(|err| failed(&err))?;
        channel
            .register_callback(callbacks)
            .await
            .map_err(|err| failed(&err))?;
        channel
            .confirm_select(ConfirmSelectArguments::new(false))
            .await
            .map_err(|err| failed(&err))?;
        Ok(Self {
            shared: Arc::new(Shared {
                connection,
                channel,
                exchange: exchange.to_owned(),
                confirms,
                sending: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub(super) async fn publish(&self, message: &Message<'_>) -> Result<String, Failure> {
        let shared = &*self.shared;
        if message.target.len() > MAX_SHORT_STRING || message.id.len() > MAX_SHORT_STRING {
            return Err(Failure::refused(format!(
                "the routing key is longer than AMQP's {MAX_SHORT_STRING} bytes"
            )));
        }
        let headers = field_table(message.headers)?;
        let properties = BasicProperties::default()
            .with_persistence(true)
            .with_content_type("application/json")
            .with_message_id(message.id)
            .with_message_type(message.event)
            .with_headers(headers)
            .finish();
        let mut arguments = BasicPublishArguments::new(&shared.exchange, &message.target);
        arguments.mandatory(true);
        let (answer, word) = oneshot::channel();
        {
            let _turn = shared.sending.lock().await;
            {
                let mut confirms = lock(&shared.confirms);
                if let Some(failure) = &confirms.broken {
                    return Err(failure.clone());
                }
                confirms.last_tag += 1;
                let tag = confirms.last_tag;
                let id = message.id.to_owned();
                confirms.waiting.insert(
                    tag,
                    Waiting {
                        id,
                        returned: None,
                        answer,
                    },
                );
            }
            // Should this future be dropped before the writer has the
            // message, the tags would no longer be the broker's: the
            // channel is then given up.
            let mut abandoned = Abandoned(Some(&shared.confirms));
            let sent = shared
                .channel
                .basic_publish(properties, message.body.to_vec(), arguments)
                .await;
            abandoned.0 = None;
            if let Err(err) = sent {
                let failure = failed(&err);
                lock(&shared.confirms).break_with(failure.clone());
                return Err(failure);
            }
        }
        match word.await {
            Ok(Word::Ack) => Ok(format!(
                "ack: exchange {} routing key {}",
                shared.exchange, message.target
            )),
            Ok(Word::Returned(code, text)) => Err(Failure::refused(format!(
                "returned: {code} {text} (exchange {}, routing key {}: no queue takes it)",
                shared.exchange, message.target
            ))),
            Ok(Word::Nack) => Err(Failure::refused(format!(
                "nack: the broker did not take the message (exchange {})",
                shared.exchange
            ))),
            Ok(Word::Failed(failure)) => Err(failure),
            Err(_) => Err(Failure::connect(
                "the connection to the AMQP broker was closed",
            )),
        }
    }

    /// Closes the connection, in the background; what still waits on it
    /// fails.
    pub(super) fn close(self) {
        let connection = self.shared.connection.clone();
        tokio::spawn(async move {
            let _ = connection.close().await;
        });
    }
}

/// A message's headers as AMQP properties' field table. A signed header
/// AMQP cannot carry (a name over 255 bytes) is refused, never dropped.
fn field_table(headers: &reqwest::header::HeaderMap) -> Result<FieldTable, Failure> {
    let mut table = FieldTable::new();
    for (name, value) in header_pairs(headers)? {
        let (Ok(field), Ok(value)) = (name.try_into(), value.try_into()) else {
            return Err(Failure::refused(format!(
                "the header {name} is longer than AMQP carries"
            )));
        };
        table.insert(field, FieldValue::S(value));
    }
    Ok(table)
}

/// Gives the channel up when dropped: a publish abandoned between taking a
/// delivery tag and handing its message to the writer.
struct Abandoned<'a>(Option<&'a Mutex<Confirms>>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(confirms) = self.0 else { return };
        lock(confirms).break_with(Failure::connect(
            "a message to the AMQP broker was abandoned before it was sent",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `confirms` with a message waiting under each of `ids`, tags 1, 2, …
    fn waiting(confirms: &mut Confirms, ids: &[&str]) -> Vec<oneshot::Receiver<Word>> {
        ids.iter()
            .map(|id| {
                let (answer, word) = oneshot::channel();
                confirms.last_tag += 1;
                confirms.waiting.insert(
                    confirms.last_tag,
                    Waiting {
                        id: (*id).to_owned(),
                        returned: None,
                        answer,
                    },
                );
                word
            })
            .collect()
    }

    fn word(word: &mut oneshot::Receiver<Word>) -> Option<String> {
        word.try_recv().ok().map(|word| match word {
            Word::Ack => "ack".to_owned(),
            Word::Nack => "nack".to_owned(),
            Word::Returned(code, text) => format!("returned {code} {text}"),
            Word::Failed(failure) => format!("failed: {}", failure.message),
        })
    }

    #[test]
    fn a_confirm_answers_its_own_tag_and_a_multiple_one_every_tag_before_it() {
        let mut confirms = Confirms::default();
        let mut words = waiting(&mut confirms, &["a", "b", "c", "d"]);
        // Out of order, as the broker may confirm.
        confirms.settle(2, false, true);
        assert_eq!(word(&mut words[0]), None);
        assert_eq!(word(&mut words[1]).as_deref(), Some("ack"));
        confirms.settle(3, true, false);
        assert_eq!(word(&mut words[0]).as_deref(), Some("nack"));
        assert_eq!(word(&mut words[2]).as_deref(), Some("nack"));
        assert_eq!(word(&mut words[3]), None, "tag 4 was not confirmed");
        assert_eq!(confirms.waiting.len(), 1);
        // A confirm of a tag no longer waiting changes nothing.
        confirms.settle(2, false, true);
        assert_eq!(confirms.waiting.len(), 1);
    }

    #[test]
    fn a_returned_message_is_an_error_when_it_is_confirmed_even_among_others() {
        let mut confirms = Confirms::default();
        let mut words = waiting(&mut confirms, &["a", "b", "c"]);
        // The broker returns "b" (no queue takes it), then confirms it with
        // the one before it; a return of an id not waiting changes nothing.
        confirms.returned("b", 312, "NO_ROUTE");
        confirms.returned("z", 312, "NO_ROUTE");
        confirms.settle(2, true, true);
        assert_eq!(word(&mut words[0]).as_deref(), Some("ack"));
        assert_eq!(
            word(&mut words[1]).as_deref(),
            Some("returned 312 NO_ROUTE")
        );
        confirms.settle(3, false, true);
        assert_eq!(word(&mut words[2]).as_deref(), Some("ack"));
    }

    #[test]
    fn a_broken_channel_fails_what_waits_and_every_later_message() {
        let mut confirms = Confirms::default();
        let mut words = waiting(&mut confirms, &["a", "b"]);
        confirms.break_with(Failure::connect(
            "the connection to the AMQP broker was lost",
        ));
        for word_of in &mut words {
            assert_eq!(
                word(word_of).as_deref(),
                Some("failed: the connection to the AMQP broker was lost")
            );
        }
        assert!(confirms.waiting.is_empty());
        // The first reason stays: a later one does not replace it.
        confirms.break_with(Failure::connect(
            "the connection to the AMQP broker was closed",
        ));
        let broken = confirms.broken.expect("broken");
        assert_eq!(broken.message, "the connection to the AMQP broker was lost");
        assert_eq!(broken.class, ErrorClass::Connect);
    }

    #[test]
    fn a_header_amqp_cannot_carry_is_refused_not_dropped() {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        let table = field_table(&headers).expect("a short header is carried");
        let name = "webhook-id".try_into().expect("a field name");
        assert!(
            format!("{:?}", table.get(&name)).contains("msg_1"),
            "{table:?}"
        );
        let long = HeaderName::from_bytes("x".repeat(256).as_bytes()).expect("a header name");
        headers.insert(long, HeaderValue::from_static("1"));
        let refused = field_table(&headers).expect_err("a 256-byte name is refused");
        assert!(
            refused.message.contains("is longer than AMQP carries"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn a_broker_that_hangs_up_during_the_handshake_refused_the_credentials() {
        for hung_up in [
            "peer shutdown",
            "network io error: Connection reset by peer (os error 104)",
        ] {
            let failure = not_opened(&amqprs::error::Error::NetworkError(hung_up.to_owned()));
            assert!(failure.message.contains("refused"), "{}", failure.message);
            assert_eq!(failure.class, ErrorClass::Broker);
        }
        let unreachable =
            amqprs::error::Error::NetworkError("network io error: Connection refused".to_owned());
        assert_eq!(not_opened(&unreachable).class, ErrorClass::Connect);
    }
}
