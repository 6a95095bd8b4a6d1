//! NATS JetStream: each message published to its subject with the signed
//! headers and `Nats-Msg-Id` = its `webhook-id` (the stream drops a re-send
//! within its duplicate window), delivered once the stream acknowledged it.
//! The client connects to the address the rule admitted, and only there
//! (servers a cluster advertises are not used). `tls://` requires TLS (the
//! server's `INFO` first, then the handshake, as NATS does by default); the
//! certificate is checked against the URL's host, though the client opens
//! the connection by address (so it sends no SNI). A `nats://` server that
//! asks for TLS gets the same checks.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::{ConnectErrorKind, HeaderMap as NatsHeaders};
use entity::ErrorClass;

use super::{Address, Failure, Message, header_pairs};

/// How long a connection or an acknowledgement may take; the lane's own
/// timeout bounds both anyway.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(super) struct Connection {
    jetstream: async_nats::jetstream::Context,
}

impl Connection {
    pub(super) async fn open(address: &Address, at: SocketAddr) -> Result<Self, Failure> {
        let mut options = async_nats::ConnectOptions::new()
            .name("herald")
            .connection_timeout(WAIT)
            .request_timeout(Some(WAIT))
            .ignore_discovered_servers()
            .retain_servers_order()
            .require_tls(address.tls);
        match super::tls::server_name(&address.host).and_then(|name| super::tls::config(Some(name)))
        {
            Ok(checked) => options = options.tls_client_config(checked),
            // A `nats://` URL does not need TLS unless its server asks.
            Err(failure) if address.tls => return Err(failure),
            Err(_) => {}
        }
        options = match address.credentials() {
            (Some(user), Some(password)) => options.user_and_password(user, password),
            (Some(token), None) => options.token(token),
            _ => options,
        };
        let client = options
            .connect(format!("nats://{at}"))
            .await
            .map_err(|err| {
                super::tls::failure_in(&err).unwrap_or_else(|| match err.kind() {
                    ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                        Failure {
                            class: ErrorClass::Broker,
                            message: "the NATS server refused the credentials (authorization \
                                  violation)"
                                .to_owned(),
                            broken: true,
                        }
                    }
                    // TLS that could not start (the roots could not be
                    // loaded, the host is no TLS name).
                    ConnectErrorKind::Tls => Failure {
                        class: ErrorClass::Tls,
                        message: format!("the TLS connection to the NATS server failed ({err})"),
                        broken: true,
                    },
                    ConnectErrorKind::TimedOut => Failure {
                        class: ErrorClass::Timeout,
                        message: "the NATS server did not answer in time".to_owned(),
                        broken: true,
                    },
                    _ => Failure::connect(format!("the NATS server could not be reached ({err})")),
                })
            })?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(WAIT)
            .build(client);
        Ok(Self { jetstream })
    }

    pub(super) async fn publish(&self, message: &Message<'_>) -> Result<String, Failure> {
        let mut headers = NatsHeaders::new();
        for (name, value) in header_pairs(message.headers)? {
            headers.insert(name, value);
        }
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(message.body.clone())
            .headers(headers)
            .message_id(message.id);
        let acked = match self
            .jetstream
            .send_publish(message.target.clone(), publish)
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match acked {
            Ok(ack) => Ok(format!(
                "ack: stream {} seq {}{}",
                ack.stream,
                ack.sequence,
                if ack.duplicate { " (duplicate)" } else { "" }
            )),
            Err(err) => Err(match err.kind() {
                PublishErrorKind::MaxPayloadExceeded => Failure {
                    class: ErrorClass::Rejected,
                    message: "nack: the message is larger than the NATS server's max_payload"
                        .to_owned(),
                    broken: false,
                },
                PublishErrorKind::StreamNotFound => Failure::refused(format!(
                    "nack: no JetStream stream takes subject {}",
                    message.target
                )),
                PublishErrorKind::TimedOut | PublishErrorKind::MaxAckPending => Failure {
                    class: ErrorClass::Timeout,
                    message: "the JetStream stream did not acknowledge in time".to_owned(),
                    broken: true,
                },
                PublishErrorKind::BrokenPipe => {
                    Failure::connect("the connection to the NATS server broke")
                }
                _ => Failure::refused(format!("nack: {err}")),
            }),
        }
    }
}
