//! RabbitMQ (AMQP 0-9-1): each message published to the app's exchange
//! with its routing key, persistent (`delivery_mode` 2), `mandatory` (a
//! message no queue takes comes back: an error, not a silent drop), its
//! `message_id` the `webhook-id` and the signed headers as message
//! headers, on a channel in confirm mode: delivered once the broker
//! confirmed it. One connection and one channel per app; a channel the
//! broker closed (an exchange that does not exist, permissions) is made
//! again with the connection.
//!
//! lapin connects through Herald's own stream: TCP to the address the rule
//! admitted, and for `amqps://` TLS over it (`broker/tls.rs`), bridged to
//! lapin through a local socket pair ([`bridged`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use async_compat::Compat;
use lapin::tcp::AsyncTcpStream;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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
        let runtime = lapin::runtime::default_runtime().map_err(|err| failed(&err))?;
        let tls = address.tls.then(|| address.host.clone());
        // Why the stream could not be made, in Herald's words.
        let why = Arc::new(Mutex::new(None));
        let noted = Arc::clone(&why);
        let connection = lapin::Connection::connector(
            uri,
            runtime,
            // lapin connects through this (again, should it retry): TCP to
            // the address the rule admitted, TLS over it for `amqps://`.
            async move |_, _| -> lapin::Result<AsyncTcpStream<Compat<TcpStream>>> {
                match stream(at, tls.as_deref()).await {
                    Ok(stream) => Ok(AsyncTcpStream::Plain(Compat::new(stream))),
                    Err(failure) => {
                        let error = io::Error::other(failure.message.clone());
                        *noted.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure);
                        Err(error.into())
                    }
                }
            },
            properties,
        )
        .await
        .map_err(|err| {
            if let Some(failure) = why.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return failure;
            }
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
    ///
    /// (The TLS stream's copying ends with it: see [`bridged`].)
    pub(super) fn close(self) {
        tokio::spawn(async move {
            let _ = self
                .connection
                .close(200, ShortString::from("herald closes"))
                .await;
        });
    }
}

/// The stream lapin speaks over: TCP to `at`, with TLS over it checked for
/// `tls` (the URL's host) when given.
async fn stream(at: SocketAddr, tls: Option<&str>) -> Result<TcpStream, Failure> {
    const WHO: &str = "the AMQP broker";
    match tls {
        Some(host) => bridged(super::tls::connect(at, host, WHO).await?).map_err(|err| {
            Failure::connect(format!(
                "{WHO}'s TLS stream could not be set up ({})",
                err.kind()
            ))
        }),
        None => super::tls::tcp(at, WHO).await,
    }
}

/// `tls` as the one stream type lapin takes from a tokio runtime, a
/// `TcpStream`: one end of a local socket pair, whose other end a task
/// copies to and from the TLS stream until either side closes. (lapin's
/// own TLS would bring a second rustls setup; its connector takes only its
/// runtime's stream type.)
fn bridged(tls: TlsStream<TcpStream>) -> io::Result<TcpStream> {
    let (ours, lapins) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    lapins.set_nonblocking(true)?;
    let mut ours = tokio::net::UnixStream::from_std(ours)?;
    // A stream socket is read and written alike whatever its family.
    let lapins = TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(lapins)))?;
    tokio::spawn(async move {
        let mut tls = tls;
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut ours).await;
    });
    Ok(lapins)
}
