//! One stream message, and its way to the local receiver: read from the SSE
//! block, signed as push delivery signs it (`actors::signing`, both styles,
//! the same `webhook-id`, the CloudEvents attributes read from the body),
//! and posted to `{forward_to}/{endpoint}`.

use std::time::Duration;

use actors::cloudevents::CloudEvent;
use actors::ids::AppId;
use actors::signing::Signer;
use bytes::Bytes;
use serde::Deserialize;
use sse_stream::Sse;
use url::Url;

/// How long one forward may take, connecting included.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// One event of the stream, ready to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    /// Opaque; acknowledged once the forward got a 2xx, and where a new
    /// connection resumes.
    pub(super) cursor: String,
    /// The webhook endpoint: the last segment of the forward URL.
    pub(super) endpoint: String,
    /// What push delivery sends as `webhook-id`: the body's `event_id`, or
    /// `{event_id}_{chunk.index}` for one chunk of a file.
    pub(super) webhook_id: String,
    /// The exact bytes the webhook would carry (the `data:` line).
    pub(super) body: Bytes,
    /// The file it changes, for the progress line (none for `synced` and
    /// `sync_failed`).
    pub(super) path: Option<String>,
    /// Its CloudEvents attributes, as push delivery would have sent them:
    /// from the body's repository, path and `timestamp` (a `synced` body
    /// has none: the time it is forwarded).
    pub(super) cloud_event: CloudEvent,
}

/// Why a stream block cannot be forwarded: the server does not speak the
/// stream's contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum Malformed {
    #[error("a message without an id (cursor)")]
    NoId,
    #[error("message {0} names no event (endpoint)")]
    NoEvent(String),
    #[error("message {cursor} names the event {event:?}, which is no webhook endpoint")]
    BadEvent { cursor: String, event: String },
    #[error("message {cursor} carries no JSON body with an event_id: {reason}")]
    BadBody { cursor: String, reason: String },
}

/// The fields of a body that name its webhook-id, its file and its
/// CloudEvents attributes.
#[derive(Deserialize)]
struct Envelope {
    event_id: String,
    file: Option<EnvelopeFile>,
    submodule: Option<EnvelopeFile>,
    repository: Option<EnvelopeRepository>,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct EnvelopeRepository {
    repository_id: String,
}

#[derive(Deserialize)]
struct EnvelopeFile {
    path: Option<String>,
    chunk: Option<ChunkIndex>,
}

#[derive(Deserialize)]
struct ChunkIndex {
    index: u64,
}

impl Message {
    /// The message of an SSE block; `None` for a block without data (only
    /// `retry:`, say), which carries no event.
    pub(super) fn parse(block: Sse) -> Result<Option<Self>, Malformed> {
        let Some(data) = block.data else {
            return Ok(None);
        };
        let cursor = block
            .id
            .filter(|id| !id.is_empty())
            .ok_or(Malformed::NoId)?;
        let endpoint = block
            .event
            .filter(|event| !event.is_empty())
            .ok_or_else(|| Malformed::NoEvent(cursor.clone()))?;
        // It becomes a path segment of the local URL: nothing but a name.
        if endpoint.len() > 64
            || !endpoint
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(Malformed::BadEvent {
                cursor,
                event: endpoint,
            });
        }
        let envelope: Envelope = serde_json::from_str(&data).map_err(|err| Malformed::BadBody {
            cursor: cursor.clone(),
            reason: err.to_string(),
        })?;
        let (path, chunk) = match envelope.file {
            Some(file) => (file.path, file.chunk),
            None => (None, None),
        };
        let cloud_event = CloudEvent::new(
            &endpoint,
            envelope
                .repository
                .as_ref()
                .map_or("", |repository| repository.repository_id.as_str()),
            path.as_deref()
                .or(envelope.submodule.as_ref().and_then(|s| s.path.as_deref())),
            envelope
                .timestamp
                .unwrap_or_else(|| actors::clock::rfc3339_ms(actors::clock::now_ms())),
        );
        let webhook_id = match chunk {
            Some(chunk) => format!("{}_{}", envelope.event_id, chunk.index),
            None => envelope.event_id,
        };
        Ok(Some(Self {
            cursor,
            endpoint,
            webhook_id,
            body: Bytes::from(data.into_bytes()),
            path,
            cloud_event,
        }))
    }
}

/// The local receiver's answer to one forward.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: reqwest::StatusCode,
    /// Where a 3xx pointed (`Location`, credentials removed, clipped):
    /// said, never followed.
    pub(super) redirect: Option<String>,
}

/// Signs and posts messages to the local receiver.
pub(super) struct Forwarder {
    http: reqwest::Client,
    /// `--forward-to`, without a trailing slash.
    base: String,
    /// The app's id (`x-docora-app-id`) and the key behind its webhook
    /// secret.
    signer: Signer,
}

impl Forwarder {
    pub(super) fn new(forward_to: &Url, app_id: &str, key: &[u8]) -> reqwest::Result<Self> {
        let http = actors::tls::http_client_builder()
            .timeout(FORWARD_TIMEOUT)
            // A 3xx is the receiver's answer, as for Herald's own delivery:
            // following it would post the signed event elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // The receiver sees what Herald's own requests carry.
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: forward_to.as_str().trim_end_matches('/').to_owned(),
            signer: Signer::new(AppId::stored(app_id), vec![key.to_vec()].into()),
        })
    }

    pub(super) fn url(&self, message: &Message) -> String {
        format!("{}/{}", self.base, message.endpoint)
    }

    /// One attempt, signed now (a retry carries a fresh timestamp, as
    /// Herald's do): the receiver's status, or why there was none.
    pub(super) async fn send(&self, message: &Message) -> reqwest::Result<Answer> {
        let signed = self.signer.sign(
            message.webhook_id.clone(),
            message.body.clone(),
            &message.cloud_event,
        );
        let response = self
            .http
            .post(self.url(message))
            .headers(signed.headers)
            .body(signed.body)
            .send()
            .await?;
        let status = response.status();
        let redirect = status
            .is_redirection()
            .then(|| response.headers().get(reqwest::header::LOCATION))
            .flatten()
            .and_then(|location| location.to_str().ok())
            .and_then(|location| response.url().join(location).ok())
            .map(|url| crate::cli::client::clip(&crate::cli::client::shown(&url), 200));
        // Read to the end so the connection can be used again.
        let _ = response.bytes().await;
        Ok(Answer { status, redirect })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: Option<&str>, event: Option<&str>, data: Option<&str>) -> Sse {
        Sse {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.map(str::to_owned),
            retry: None,
        }
    }

    #[test]
    fn the_webhook_id_is_the_event_id_or_its_chunk() {
        let whole = Message::parse(block(
            Some("c1"),
            Some("create"),
            Some(r#"{"event_id":"evt_1","file":{"path":"a.txt","content":"x"}}"#),
        ))
        .expect("valid")
        .expect("a message");
        assert_eq!(whole.webhook_id, "evt_1");
        assert_eq!(whole.path.as_deref(), Some("a.txt"));
        let chunk = Message::parse(block(
            Some("c2"),
            Some("update"),
            Some(r#"{"event_id":"evt_2","file":{"path":"b.bin","chunk":{"id":"chk_1","index":3,"total":5}}}"#),
        ))
        .expect("valid")
        .expect("a message");
        assert_eq!(chunk.webhook_id, "evt_2_3");
        let moved = Message::parse(block(
            Some("c4"),
            Some("submodule"),
            Some(
                r#"{"repository":{"repository_id":"repo_1"},"submodule":{"path":"vendor/x"},"timestamp":"2026-01-01T00:00:00.000Z","event_id":"evt_4"}"#,
            ),
        ))
        .expect("valid")
        .expect("a message");
        assert_eq!(
            moved.cloud_event,
            CloudEvent::new(
                "submodule",
                "repo_1",
                Some("vendor/x"),
                "2026-01-01T00:00:00.000Z".to_owned()
            )
        );
        let synced = Message::parse(block(
            Some("c3"),
            Some("synced"),
            Some(r#"{"event_id":"evt_3","commit_sha":"abc"}"#),
        ))
        .expect("valid")
        .expect("a message");
        assert_eq!((synced.webhook_id.as_str(), synced.path), ("evt_3", None));
    }

    #[test]
    fn the_body_is_forwarded_byte_for_byte() {
        let data = r#"{"event_id":"evt_1",  "file":{"path":"é.txt","content":"a\nb"}}"#;
        let message = Message::parse(block(Some("c1"), Some("create"), Some(data)))
            .expect("valid")
            .expect("a message");
        assert_eq!(message.body.as_ref(), data.as_bytes());
    }

    #[test]
    fn blocks_that_break_the_contract_are_refused() {
        let body = Some(r#"{"event_id":"evt_1"}"#);
        assert_eq!(
            Message::parse(block(Some("c1"), Some("create"), None)),
            Ok(None)
        );
        assert_eq!(
            Message::parse(block(None, Some("create"), body)),
            Err(Malformed::NoId)
        );
        assert_eq!(
            Message::parse(block(Some("c1"), None, body)),
            Err(Malformed::NoEvent("c1".into()))
        );
        for event in ["../admin", "create?x=1", "Create", "a/b"] {
            assert!(
                matches!(
                    Message::parse(block(Some("c1"), Some(event), body)),
                    Err(Malformed::BadEvent { .. })
                ),
                "{event}"
            );
        }
        assert!(matches!(
            Message::parse(block(Some("c1"), Some("create"), Some("{}"))),
            Err(Malformed::BadBody { .. })
        ));
    }
}
