//! How the engine's parts wake each other without knowing each other:
//!
//! - [`OutboxSignal`]: rung by whoever writes events (a watcher after its
//!   snapshot, an access change), heard by the delivery dispatcher, so
//!   delivery starts at once instead of at the next tick, and by every pull
//!   consumer waiting for news (a watch, which costs nothing while idle);
//! - [`ScanRequests`]: how an actor that learns a repository moved (the hook
//!   processor, another instance) asks for a scan now;
//! - [`ClusterBell`]: this instance's rings for the other instances sharing
//!   the database, published by [`crate::wakeups`].
//!
//! Plain notifications: the work itself is always in the database.

use std::sync::Arc;

use tokio::sync::{Mutex, Notify, mpsc, watch};

use crate::ids::RepoId;

/// Rung when events are written, so delivery starts at once.
#[derive(Debug, Clone)]
pub struct OutboxSignal {
    local: Arc<Notify>,
    /// Counts the rings, for pull consumers.
    rings: Arc<watch::Sender<u64>>,
    cluster: ClusterBell,
}

impl Default for OutboxSignal {
    fn default() -> Self {
        Self {
            local: Arc::default(),
            rings: Arc::new(watch::Sender::new(0)),
            cluster: ClusterBell::default(),
        }
    }
}

impl OutboxSignal {
    /// The same signal, also ringing the other instances.
    pub fn with_cluster(self, cluster: ClusterBell) -> Self {
        Self { cluster, ..self }
    }

    /// Events were written here: this instance's dispatcher and the others'.
    pub fn notify(&self) {
        self.notify_local();
        self.cluster.ring(Wake::Outbox);
    }

    /// Another instance wrote events: this instance's dispatcher and pull
    /// consumers only.
    pub fn notify_local(&self) {
        self.local.notify_one();
        self.rings
            .send_modify(|rings| *rings = rings.wrapping_add(1));
    }

    /// A watch that changes at every ring from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rings.subscribe()
    }

    /// Waits for the next ring (or one that came while nobody listened).
    pub async fn notified(&self) {
        self.local.notified().await;
    }
}

/// A way to ask for scans now, for actors that find out a repository moved
/// (the hook processor) without knowing who runs the scheduler: the root
/// supervisor forwards the request to whichever scheduler runs. A request
/// lost while the scheduler restarts costs nothing: the repository is due
/// in the database, and the next tick finds it.
#[derive(Clone)]
pub struct ScanRequests(Arc<dyn Fn(RepoId) + Send + Sync>);

impl ScanRequests {
    pub fn new(forward: impl Fn(RepoId) + Send + Sync + 'static) -> Self {
        Self(Arc::new(forward))
    }

    pub fn scan_now(&self, repository: RepoId) {
        (self.0)(repository);
    }
}

impl std::fmt::Debug for ScanRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScanRequests")
    }
}

/// What there is to wake up for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wake {
    /// Events were written or made due: deliver.
    Outbox,
    /// A push hook was stored: process it.
    Hooks,
    /// A repository is due for a scan now.
    Scan(RepoId),
}

impl Wake {
    /// `{instance}|outbox`, `{instance}|hooks`, `{instance}|scan|{repo}`.
    pub(crate) fn encode(&self, instance: &str) -> String {
        match self {
            Wake::Outbox => format!("{instance}|outbox"),
            Wake::Hooks => format!("{instance}|hooks"),
            Wake::Scan(repo) => format!("{instance}|scan|{repo}"),
        }
    }

    /// The sender and the wake-up; `None` for a payload of another shape.
    pub(crate) fn decode(payload: &str) -> Option<(&str, Wake)> {
        let mut parts = payload.splitn(3, '|');
        let sender = parts.next()?;
        let wake = match (parts.next()?, parts.next()) {
            ("outbox", None) => Wake::Outbox,
            ("hooks", None) => Wake::Hooks,
            ("scan", Some(repo)) => Wake::Scan(RepoId::parse(repo)?),
            _ => return None,
        };
        Some((sender, wake))
    }
}

/// The sending side: rung by this instance's writers. Cheap to clone; a
/// bell with no cluster behind it (SQLite, tools, tests) rings nothing.
#[derive(Debug, Clone, Default)]
pub struct ClusterBell(Option<mpsc::UnboundedSender<Wake>>);

impl ClusterBell {
    /// A bell and the queue its rings wait in until the wake-ups actor
    /// publishes them.
    pub fn new() -> (Self, Rings) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(Some(tx)), Rings(Arc::new(Mutex::new(rx))))
    }

    pub fn ring(&self, wake: Wake) {
        if let Some(tx) = &self.0 {
            // Closed only once the engine has stopped.
            let _ = tx.send(wake);
        }
    }
}

/// The rings waiting to be published, kept across restarts of the
/// publishing actor.
#[derive(Debug, Clone)]
pub struct Rings(Arc<Mutex<mpsc::UnboundedReceiver<Wake>>>);

impl Rings {
    /// Waits for the queue, held by one publisher at a time.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, mpsc::UnboundedReceiver<Wake>> {
        self.0.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_survive_the_round_trip_and_odd_payloads_are_ignored() {
        let repo = RepoId::generate();
        for wake in [Wake::Outbox, Wake::Hooks, Wake::Scan(repo)] {
            let payload = wake.encode("herald-1");
            assert_eq!(Wake::decode(&payload), Some(("herald-1", wake)));
        }
        for odd in [
            "",
            "a",
            "a|",
            "a|scan",
            "a|scan|not-an-id",
            "a|outbox|x",
            "a|jump",
        ] {
            assert_eq!(Wake::decode(odd), None, "{odd}");
        }
    }
}
