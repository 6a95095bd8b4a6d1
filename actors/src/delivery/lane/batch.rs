//! The lane's reads: its events a batch at a time, each batch with the
//! context it is delivered in (the app's keys and base URL, the
//! repository, its mirror), read again per batch; the next batch read
//! beside the sends before the current one runs out.

use std::sync::Arc;

use entity::event;
use secrecy::ExposeSecret;

use super::super::DeliveryConfig;
use super::super::content::{Content, MirrorReader};
use super::Pipeline;
use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::ids::{AppId, SubscriptionId};
use crate::owned::Pending;
use crate::payload::RepositoryRef;
use crate::scan::ScanPool;
use crate::signing::Signer;
use crate::store::apps::DeliveryWindow;
use crate::store::{Store, StoreError};

/// Everything a lane needs, loaded once per batch.
pub(super) struct LaneContext {
    pub(super) base_url: String,
    /// A broker app's way to its broker: its events are published there,
    /// not POSTed to `base_url`.
    pub(super) publisher: Option<crate::broker::Publisher>,
    pub(super) signer: Signer,
    /// Shared with the renderings made ahead on blocking workers.
    pub(super) repository: Arc<RepositoryRef>,
    pub(super) content: Content,
    /// The mirror's reader for look-aheads on blocking workers.
    pub(super) mirror_ahead: MirrorReader,
    pub(super) backoff: Backoff,
    /// Up to this many of the subscription's webhooks may be in flight at
    /// once: the app's `delivery_window`, within 1 to 64.
    pub(super) window: usize,
    /// The scans' traces its requests continue, each parsed once.
    pub(super) traces: crate::telemetry::PersistedTraces,
}

/// What reading a lane's next batch needs, shared with the task that reads
/// it.
pub(super) struct BatchReads {
    pub(super) app_id: AppId,
    pub(super) subscription: SubscriptionId,
    pub(super) store: Store,
    pub(super) config: DeliveryConfig,
    pub(super) pool: ScanPool,
    /// The app's broker connection, for a broker app.
    pub(super) broker: crate::broker::Broker,
    /// The mirror's reader, kept for the lane's life (a subscription's
    /// repository never changes): libgit2's cache of delta bases outlives a
    /// batch.
    pub(super) mirror: std::sync::OnceLock<MirrorReader>,
    /// A second opening of the mirror, for the runs that read ahead: a
    /// reader is one lock, held while a file is rendered, and a file the
    /// lane reads in turn (the first of a batch, one too big to read ahead)
    /// must not wait behind the run's reading of later files.
    pub(super) mirror_ahead: std::sync::OnceLock<MirrorReader>,
}

/// A batch of events and the context they are delivered in.
pub(super) struct Batch {
    pub(super) context: LaneContext,
    /// Shared with the renderings made ahead (see `ahead.rs`).
    pub(super) events: Vec<Arc<event::Model>>,
}

/// The batch after `after_seq`, being read ahead.
pub(super) struct NextBatch {
    after_seq: i64,
    read: Pending<Result<Option<Batch>, StoreError>>,
}

/// A full batch's next batch is read once this many of its events are left.
pub(super) const READ_NEXT_AT: usize = BATCH as usize / 4;

/// Events read per batch. Each batch costs its reads (the app, the
/// subscription, the repository, the events) and a written flush, on the
/// lane's one-at-a-time path (BENCHMARKS.md, "Tunings of the delivery
/// path").
pub(super) const BATCH: u64 = 256;

impl BatchReads {
    async fn context(&self) -> Result<Option<LaneContext>, StoreError> {
        let Some(app) = self.store.app(&self.app_id).await? else {
            return Ok(None);
        };
        // Disabled, or now pulling its events: the lane stops.
        if app.status != entity::AppStatus::Active || !app.delivery_mode.is_sent() {
            return Ok(None);
        }
        let publisher = if app.delivery_mode.is_broker() {
            match self.store.destination(&app)? {
                Some(destination) if destination.mode() == app.delivery_mode => {
                    Some(self.broker.publisher(&app.id, destination))
                }
                // Not written by the API, which sets both at once.
                _ => {
                    tracing::warn!(app = %app.id, "broker app without a destination; its lanes wait");
                    return Ok(None);
                }
            }
        } else {
            None
        };
        let Some((subscription, repository)) = self
            .store
            .subscription_and_repository(&self.subscription)
            .await?
        else {
            return Ok(None);
        };
        // During a key rotation both keys sign; the Docora header, which
        // holds one signature, uses the current key.
        let signer = Signer::new(
            self.app_id.clone(),
            self.store
                .signing_keys(&app, now_ms())?
                .iter()
                .map(|key| key.expose_secret().as_bytes().to_vec())
                .collect::<Vec<_>>()
                .into(),
        );
        let backoff = Backoff::of_app(&app, self.config.backoff);
        let window = DeliveryWindow::of_app(&app).get();
        let mirror_path = self.config.mirror_path(&repository);
        Ok(Some(LaneContext {
            base_url: app.base_url.clone(),
            publisher,
            signer,
            repository: Arc::new(RepositoryRef::of(&repository)),
            mirror_ahead: self
                .mirror_ahead
                .get_or_init(|| MirrorReader::new(mirror_path.clone()))
                .clone(),
            content: Content::of_subscription(
                &self.store,
                &self.config,
                &self.pool,
                &subscription,
                &repository,
                self.mirror
                    .get_or_init(|| MirrorReader::new(mirror_path))
                    .clone(),
            )?,
            backoff,
            window,
            traces: Default::default(),
        }))
    }

    /// The events after `after_seq` and the context they are delivered in;
    /// `None` when the app is gone or disabled, or the subscription gone.
    async fn read_batch(&self, after_seq: i64) -> Result<Option<Batch>, StoreError> {
        let Some(context) = self.context().await? else {
            return Ok(None);
        };
        let events = self
            .store
            .next_events(&self.subscription, after_seq, BATCH)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(Some(Batch { context, events }))
    }
}

impl Pipeline {
    /// Whether the batch being read ahead is there to take.
    pub(super) fn batch_ready(&self) -> bool {
        self.reading
            .as_ref()
            .is_some_and(|next| next.read.is_finished())
    }

    /// Starts reading the batch after `after_seq` beside the lane, on a
    /// blocking thread (decoding a batch's rows would hold a runtime worker
    /// for milliseconds), unless a read is under way.
    pub(super) fn read_next(&mut self, after_seq: i64) {
        if self.reading.is_none() {
            let reads = self.reads.clone();
            self.reading = Some(NextBatch {
                after_seq,
                read: Pending::spawn_on_blocking_thread(async move {
                    reads.read_batch(after_seq).await
                }),
            });
        }
    }

    /// The batch after `after_seq`: the one read ahead when it is that one,
    /// else read now.
    pub(super) async fn batch_after(
        &mut self,
        after_seq: i64,
    ) -> Result<Option<Batch>, StoreError> {
        if let Some(next) = self.reading.take()
            && next.after_seq == after_seq
            && let Some(read) = next.read.wait().await
        {
            return read;
        }
        self.reads.read_batch(after_seq).await
    }
}
