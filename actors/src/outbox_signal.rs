//! The outbox signal: rung by whoever writes events (a watcher after its
//! snapshot, an access change), heard by the delivery dispatcher, so delivery
//! starts at once instead of at the next tick. A plain notification: the
//! events themselves are in the database. When instances share a database,
//! a ring also wakes the others (see [`crate::wakeups`]).

use std::sync::Arc;

use tokio::sync::Notify;

use crate::wakeups::{ClusterBell, Wake};

/// Rung when events are written, so delivery starts at once.
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal {
    local: Arc<Notify>,
    cluster: ClusterBell,
}

impl OutboxSignal {
    /// The same signal, also ringing the other instances.
    pub fn with_cluster(self, cluster: ClusterBell) -> Self {
        Self { cluster, ..self }
    }

    /// Events were written here: this instance's dispatcher and the others'.
    pub fn notify(&self) {
        self.local.notify_one();
        self.cluster.ring(Wake::Outbox);
    }

    /// Another instance wrote events: this instance's dispatcher only.
    pub fn notify_local(&self) {
        self.local.notify_one();
    }

    /// Waits for the next ring (or one that came while nobody listened).
    pub async fn notified(&self) {
        self.local.notified().await;
    }
}
