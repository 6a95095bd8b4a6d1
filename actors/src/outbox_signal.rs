//! The outbox signal: rung by whoever writes events (a watcher after its
//! snapshot, an access change), heard by the delivery dispatcher, so delivery
//! starts at once instead of at the next tick. A plain notification: the
//! events themselves are in the database.

use std::sync::Arc;

use tokio::sync::Notify;

/// Rung when events are written, so delivery starts at once.
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub fn notify(&self) {
        self.0.notify_one();
    }

    /// Waits for the next ring (or one that came while nobody listened).
    pub async fn notified(&self) {
        self.0.notified().await;
    }
}
