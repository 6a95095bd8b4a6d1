//! Pull delivery's rendering: a pull app's events become the bodies its
//! webhooks would have carried, for `GET /api/stream` and `GET
//! /api/changes` to hand to its consumer. Content comes from the same
//! place as a lane's (the mirror, then the remote with the subscription's
//! own credential, on a scan worker); nothing is signed or sent.

use std::collections::HashMap;
use std::sync::Arc;

use entity::{ErrorClass, event};

use super::DeliveryConfig;
use super::content::{Content, Found, MirrorReader};
use crate::ids::{ChunkId, SubscriptionId};
use crate::payload::{self, RepositoryRef};
use crate::scan::ScanPool;
use crate::store::{Store, StoreError};

/// Renders pull apps' events; cheap to clone, one per engine.
#[derive(Clone)]
pub struct PullRenderer {
    store: Store,
    config: Arc<DeliveryConfig>,
    pool: ScanPool,
}

/// An event as its consumer gets it: one body, or its chunks in order.
#[derive(Debug)]
pub struct PulledEvent {
    event_id: String,
    rendered: payload::Rendered,
}

impl PulledEvent {
    /// The webhook endpoint it would have gone to (`create`, `update`, …).
    pub fn endpoint(&self) -> &'static str {
        self.rendered.endpoint
    }

    /// How many messages: 1, or its chunks.
    pub fn len(&self) -> usize {
        self.rendered.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The size of message `index`'s body, known before it is made.
    pub fn part_len(&self, index: usize) -> usize {
        self.rendered.part_len(index)
    }

    /// Message `index`: the `webhook-id` and the body push delivery would
    /// have sent as request `index`.
    pub fn part(&self, index: usize) -> (String, bytes::Bytes) {
        self.rendered.part(&self.event_id, index)
    }
}

/// What became of an event asked for.
#[derive(Debug)]
pub enum Pulled {
    Ready(PulledEvent),
    /// Its body cannot be made (the remote lost its content, or the LFS
    /// server does not give its object): it was given up on (`dead`, for
    /// operators), and the stream goes on without it.
    GaveUp,
    /// Its content must be fetched again and the remote could not be asked
    /// now: the stream waits and asks again. Says why.
    Unavailable(String),
}

/// The content sources of the subscriptions of one page of events, read
/// once per page (a credential may change between pages).
#[derive(Default)]
pub struct Sources {
    by_subscription: HashMap<String, Option<(Content, RepositoryRef)>>,
}

impl PullRenderer {
    pub(crate) fn new(store: Store, config: DeliveryConfig, pool: ScanPool) -> Self {
        Self {
            store,
            config: Arc::new(config),
            pool,
        }
    }

    /// Renders `event` as its webhook would have been rendered. A chunked
    /// file's chunks are named after the event, the same on every
    /// rendering, so a consumer that resumes inside it completes one
    /// transfer.
    pub async fn render(
        &self,
        event: &event::Model,
        sources: &mut Sources,
    ) -> Result<Pulled, StoreError> {
        let Some((content, repository)) = self.source(event, sources).await? else {
            // Its subscription or repository is gone: so is the event, at
            // the next read.
            return Ok(Pulled::GaveUp);
        };
        let chunking = self.config.chunking;
        let made = if payload::too_large(event, self.config.max_file_bytes) {
            Ok(payload::render_too_large(event, repository))
        } else if event.kind.carries_content() {
            let (rendered_event, repository) = (event.clone(), repository.clone());
            let render = move |bytes: &[u8]| {
                payload::render(&rendered_event, &repository, Some(bytes), chunking)
            };
            match content.with(event, render).await {
                Found::Made(rendered) => Ok(rendered),
                Found::Gone(error) => Err((ErrorClass::ContentMissing, error)),
                Found::Unavailable(error) => return Ok(Pulled::Unavailable(error)),
                // A stream has no attempts to count: an LFS server that
                // cannot be asked holds it, as a remote does; one that
                // answered without the object (or with other bytes) is not
                // asked again for each read of the stream.
                Found::Failed {
                    class: ErrorClass::ContentUnavailable,
                    error,
                } => return Ok(Pulled::Unavailable(error)),
                Found::Failed { class, error } => Err((class, error)),
            }
        } else {
            Ok(payload::render(event, repository, None, chunking))
        };
        let rendered = match made {
            Ok(Ok(rendered)) => rendered,
            Ok(Err(err)) => {
                return self
                    .give_up(event, ErrorClass::Payload, &err.to_string())
                    .await;
            }
            Err((class, error)) => return self.give_up(event, class, &error).await,
        };
        let transfer = ChunkId::stored(format!(
            "chk_{}",
            event.id.strip_prefix("evt_").unwrap_or(&event.id)
        ));
        Ok(Pulled::Ready(PulledEvent {
            event_id: event.id.clone(),
            rendered: rendered.as_transfer(transfer),
        }))
    }

    async fn give_up(
        &self,
        event: &event::Model,
        class: ErrorClass,
        error: &str,
    ) -> Result<Pulled, StoreError> {
        tracing::warn!(event = %event.id, %class, error, "a pulled event's body cannot be made; given up on");
        self.store.give_up_pulled(&event.id, class, error).await?;
        Ok(Pulled::GaveUp)
    }

    /// The content source and repository of `event`'s subscription.
    async fn source<'s>(
        &self,
        event: &event::Model,
        sources: &'s mut Sources,
    ) -> Result<Option<&'s (Content, RepositoryRef)>, StoreError> {
        if !sources.by_subscription.contains_key(&event.subscription_id) {
            let source = self.read_source(event).await?;
            sources
                .by_subscription
                .insert(event.subscription_id.clone(), source);
        }
        Ok(sources.by_subscription[&event.subscription_id].as_ref())
    }

    async fn read_source(
        &self,
        event: &event::Model,
    ) -> Result<Option<(Content, RepositoryRef)>, StoreError> {
        let subscription_id = SubscriptionId::stored(event.subscription_id.as_str());
        let Some((subscription, repository)) = self
            .store
            .subscription_and_repository(&subscription_id)
            .await?
        else {
            return Ok(None);
        };
        let mirror = MirrorReader::new(self.config.mirror_path(&repository));
        let content = Content::of_subscription(
            &self.store,
            &self.config,
            &self.pool,
            &subscription,
            &repository,
            mirror,
        )?;
        Ok(Some((content, RepositoryRef::of(&repository))))
    }
}
