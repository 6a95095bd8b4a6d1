//! RabbitMQ (AMQP 0-9-1): each message published to the app's exchange
//! with its routing key, persistent (`delivery_mode` 2), `mandatory` (a
//! message no queue takes comes back: an error, not a silent drop), its
//! `message_id` the `webhook-id` and the signed headers as message
//! headers, on a channel in confirm mode: delivered once the broker
//! confirmed it. One connection and one channel per app; a channel the
//! broker closed (an exchange that does not exist, permissions) is made
//! again with the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use entity::ErrorClass;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, ConnectionProperties};

use super::{Address, Failure, Message, header_pairs};

#[derive(Clone)]
pub(super) struct Connection {
    connection: Arc<lapin::Connection>,
    channel: lapin::Channel,
    exchange: ShortString,
}

/// A failure of lapin's, in words that name no credential.
fn failed(err: &lapin::Error) -> Failure {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Failure {
            class: ErrorClass::Broker,
            message: format!("the AMQP broker refused: {amqp}"),
            broken: true,
        },
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::InvalidChannelState(..) => {
            Failure::connect(format!("the connection to the AMQP broker failed ({err})"))
        }
        _ => Failure {
            class: ErrorClass::Broker,
            message: format!("the AMQP broker failed: {err}"),
            broken: true,
        },
    }
}

impl Connection {
    pub(super) async fn open(
        address: &Address,
        at: SocketAddr,
        exchange: &str,
    ) -> Result<Self, Failure> {
        let mut uri: lapin::uri::AMQPUri = address
            .url
            .as_str()
            .parse()
            .map_err(|_| Failure::refused("the broker's url is not an AMQP URI"))?;
        uri.authority.host = at.ip().to_string();
        uri.authority.port = at.port();
        let (user, password) = address.credentials();
        if let Some(user) = user {
            uri.authority.userinfo.username = user;
        }
        if let Some(password) = password {
            uri.authority.userinfo.password = password;
        }
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("herald"));
        let connection = lapin::Connection::connect_uri(uri, properties)
            .await
            .map_err(|err| {
                let mut failure = failed(&err);
                if matches!(err.kind(), lapin::ErrorKind::ProtocolError(_)) {
                    failure.message = format!("the AMQP broker refused the connection: {err}");
                }
                failure
            })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|err| failed(&err))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|err| failed(&err))?;
        Ok(Self {
            connection: Arc::new(connection),
            channel,
            exchange: ShortString::from(exchange),
        })
    }

    pub(super) async fn publish(&self, message: &Message<'_>) -> Result<String, Failure> {
        let mut headers = FieldTable::default();
        for (name, value) in header_pairs(message.headers) {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(message.id))
            .with_type(ShortString::from(message.event))
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.clone(),
                ShortString::from(message.target.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                message.body,
                properties,
            )
            .await
            .map_err(|err| failed(&err))?;
        match confirm.await.map_err(|err| failed(&err))? {
            Confirmation::Ack(None) => Ok(format!(
                "ack: exchange {} routing key {}",
                self.exchange, message.target
            )),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(Failure::refused(format!(
                    "returned: {} {} (exchange {}, routing key {}: no queue takes it)",
                    returned.reply_code, returned.reply_text, self.exchange, message.target
                )))
            }
            Confirmation::Nack(None) => Err(Failure::refused(format!(
                "nack: the broker did not take the message (exchange {})",
                self.exchange
            ))),
            Confirmation::NotRequested => Err(Failure {
                class: ErrorClass::Broker,
                message: "the channel is not in confirm mode".to_owned(),
                broken: true,
            }),
        }
    }

    /// Closes the connection, in the background.
    pub(super) fn close(self) {
        tokio::spawn(async move {
            let _ = self
                .connection
                .close(200, ShortString::from("herald closes"))
                .await;
        });
    }
}
