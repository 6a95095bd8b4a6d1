//! An event's body rendered, and its requests signed: the first when the
//! body is made, each next chunk on a blocking worker while the one before
//! is in flight.

use std::sync::Arc;

use entity::event;

use super::batch::LaneContext;
use crate::clock::now_ms;
use crate::cloudevents::CloudEvent;
use crate::owned::joined;
use crate::payload;
use crate::signing::{Signed, Signer};

/// Bodies and files larger than this are rendered and signed on a blocking
/// worker, not on the async executor.
const BLOCKING_BYTES: usize = 1 << 20;

/// Runs CPU-heavy work on a blocking worker; its panic is the lane's.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    joined(tokio::task::spawn_blocking(work).await)
        .expect("blocking work ends unless the runtime shuts down")
}

/// What rendering an event's body gives.
pub(super) type Rendering = Result<Prepared, payload::PayloadError>;

/// An event rendered, its first request signed too: the look-ahead then
/// leaves only the send on the lane's path. A chunked event's next chunk is
/// built and signed on a blocking worker while the one before is in flight.
/// One `Prepared` is one transfer of the event (its chunks share the chunk
/// id drawn when it was rendered): the attempt that takes it drops it when
/// it ends, and the next attempt renders the event again.
pub(super) struct Prepared {
    pub(super) rendered: Arc<payload::Rendered>,
    /// Every request's CloudEvents attributes but its `ce-id` (its
    /// `webhook-id`): one event, one repository, one path and time.
    cloud_event: Arc<CloudEvent>,
    /// The request signed ahead: its index, and its signature or the
    /// worker making it.
    ahead: Option<(usize, SignedAhead)>,
}

enum SignedAhead {
    Done(Signed),
    Running(tokio::task::JoinHandle<Signed>),
}

impl Prepared {
    pub(super) fn new(rendered: payload::Rendered, event: &event::Model, signer: &Signer) -> Self {
        let cloud_event = CloudEvent::of_event(event, rendered.endpoint);
        let (webhook_id, body) = rendered.part(&event.id, 0);
        let first = signer.sign(webhook_id, body, &cloud_event);
        Self {
            rendered: Arc::new(rendered),
            cloud_event: Arc::new(cloud_event),
            ahead: Some((0, SignedAhead::Done(first))),
        }
    }

    /// Starts building and signing request `index` on a blocking worker
    /// beside the lane, below its priority.
    pub(super) fn sign_ahead(&mut self, event_id: &str, index: usize, signer: &Signer) {
        let (rendered, cloud_event, event_id, signer) = (
            self.rendered.clone(),
            self.cloud_event.clone(),
            event_id.to_owned(),
            signer.clone(),
        );
        let task = crate::background::spawn_blocking(move || {
            let (webhook_id, body) = rendered.part(&event_id, index);
            signer.sign(webhook_id, body, &cloud_event)
        });
        self.ahead = Some((index, SignedAhead::Running(task)));
    }

    /// Request `index`, signed: the one signed ahead while it is fresh,
    /// else signed now (off the executor when big).
    pub(super) async fn signed(&mut self, event_id: &str, index: usize, signer: &Signer) -> Signed {
        if let Some((ahead_index, ahead)) = self.ahead.take()
            && ahead_index == index
        {
            let signed = match ahead {
                SignedAhead::Done(signed) => Some(signed),
                SignedAhead::Running(task) => joined(task.await),
            };
            if let Some(signed) =
                signed.filter(|signed| now_ms() / 1000 - signed.timestamp <= SIGNED_AHEAD_FOR_S)
            {
                return signed;
            }
        }
        let (webhook_id, body) = self.rendered.part(event_id, index);
        if body.len() > BLOCKING_BYTES {
            let (signer, cloud_event) = (signer.clone(), self.cloud_event.clone());
            blocking(move || signer.sign(webhook_id, body, &cloud_event)).await
        } else {
            signer.sign(webhook_id, body, &self.cloud_event)
        }
    }
}

/// A body signed ahead keeps its signature this long (seconds); one that
/// waited longer behind a slow request is signed again when it leaves, so
/// its timestamp tells when it was sent.
const SIGNED_AHEAD_FOR_S: i64 = 2;

/// The render stage's work on a created or updated file's bytes, run on the
/// blocking thread that reads them: the body, and its signature when it is
/// one request.
pub(super) fn preparer(
    event: Arc<event::Model>,
    context: &LaneContext,
    chunking: payload::Chunking,
) -> impl Fn(&[u8]) -> Rendering + Send + Sync + 'static {
    let (repository, signer) = (context.repository.clone(), context.signer.clone());
    move |content: &[u8]| {
        payload::render(&event, &repository, Some(content), chunking)
            .map(|rendered| Prepared::new(rendered, &event, &signer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AppId;
    use crate::signing;

    /// The one key of [`test_signer`].
    const KEY: &[u8] = b"current-key-0123456789";

    /// An app's signer with one key.
    fn test_signer() -> Signer {
        Signer::new(AppId::stored("app_1"), vec![KEY.to_vec()].into())
    }

    /// The first request of `prepared`, as it was signed ahead.
    fn signed_ahead(prepared: &mut Prepared) -> &mut Signed {
        match &mut prepared.ahead {
            Some((0, SignedAhead::Done(signed))) => signed,
            _ => panic!("the first request is signed ahead"),
        }
    }

    #[tokio::test]
    async fn each_chunk_is_signed_ahead_over_its_own_body() {
        let signer = test_signer();
        let event = payload::tests::event(entity::EventKind::Created, true);
        let repository = payload::tests::repository();
        let chunking = payload::Chunking {
            threshold_bytes: 1_000,
            chunk_chars: 1_000,
        };
        let content: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        let rendered = payload::render(&event, &repository, Some(&content), chunking)
            .expect("a binary file renders");
        let expected: Vec<_> = (0..rendered.len())
            .map(|index| rendered.part(&event.id, index))
            .collect();
        assert_eq!(
            expected.len(),
            4,
            "4,000 base64 characters in chunks of 1,000"
        );

        let mut prepared = Prepared::new(rendered, &event, &signer);
        for (index, (webhook_id, body)) in expected.iter().enumerate() {
            let sent = prepared.signed(&event.id, index, &signer).await;
            if index + 1 < expected.len() {
                prepared.sign_ahead(&event.id, index + 1, &signer);
                assert!(
                    matches!(prepared.ahead, Some((next, _)) if next == index + 1),
                    "chunk {} is signed while chunk {index} is in flight",
                    index + 1
                );
            }
            assert_eq!(&sent.body, body, "chunk {index}");
            assert_eq!(sent.headers["webhook-id"], webhook_id.as_str());
            // Every chunk carries the event's attributes, its own id.
            assert_eq!(sent.headers["ce-id"], webhook_id.as_str());
            assert_eq!(sent.headers["ce-type"], "dev.herald.file.created");
            assert_eq!(sent.headers["ce-source"], "/repositories/repo_1");
            assert_eq!(sent.headers["ce-subject"], "docs/%C3%A4.md");
            let data: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
            assert_eq!(
                sent.headers["ce-time"],
                data["timestamp"].as_str().expect("a time")
            );
            assert_eq!(
                sent.headers["webhook-signature"].to_str().expect("ascii"),
                signing::standard(&[KEY], webhook_id, sent.timestamp, body)
            );
        }
    }

    #[tokio::test]
    async fn a_body_signed_ahead_is_signed_again_when_it_waited_too_long() {
        let signer = test_signer();
        let event = payload::tests::event(entity::EventKind::Deleted, false);
        let repository = payload::tests::repository();
        let chunking = payload::Chunking {
            threshold_bytes: 1 << 20,
            chunk_chars: 1 << 20,
        };
        let prepare = || {
            let rendered =
                payload::render(&event, &repository, None, chunking).expect("a delete renders");
            Prepared::new(rendered, &event, &signer)
        };
        let signature = |signed: &Signed| signed.headers["webhook-signature"].clone();

        // Fresh, even at the limit: the request leaves exactly as it was
        // signed ahead (signed now, it would carry another timestamp).
        let mut fresh = prepare();
        let first = signed_ahead(&mut fresh);
        first.timestamp -= SIGNED_AHEAD_FOR_S;
        let (timestamp, ahead) = (first.timestamp, signature(first));
        let sent = fresh.signed(&event.id, 0, &signer).await;
        assert_eq!(sent.timestamp, timestamp);
        assert_eq!(signature(&sent), ahead);

        // Stale: signed again, with the time it leaves and over the same body.
        let mut stale = prepare();
        let first = signed_ahead(&mut stale);
        first.timestamp -= SIGNED_AHEAD_FOR_S + 1;
        let body = first.body.clone();
        let sent = stale.signed(&event.id, 0, &signer).await;
        assert!(now_ms() / 1000 - sent.timestamp <= 1, "{}", sent.timestamp);
        assert_eq!(sent.body, body);
        assert_eq!(
            sent.headers["webhook-signature"].to_str().expect("ascii"),
            signing::standard(&[KEY], &event.id, sent.timestamp, &body)
        );
        assert_eq!(
            sent.headers["webhook-timestamp"].to_str().expect("ascii"),
            sent.timestamp.to_string()
        );
    }
}
