//! SeaORM entities of Herald's database: one module per table, data only.
//!
//! Conventions: primary keys are prefixed, sortable string ids (`app_…`,
//! `repo_…`); every time is stored as Unix milliseconds (`i64`) so that SQLite
//! and PostgreSQL compare them the same way; secrets are stored only as
//! ciphertext (`*_ciphertext`) or as a hash (`token_hash`).

pub mod app;
pub mod breaker;
pub mod bulk_operation;
pub mod console_session;
pub mod delivery_attempt;
pub mod delivery_rollup;
pub mod event;
pub mod held_file;
pub mod inbound_hook;
pub mod instance;
pub mod manifest_entry;
pub mod pending_sample;
pub mod replay;
pub mod repository;
pub mod scan;
pub mod snapshot;
pub mod status;
pub mod subscription;

pub use status::{
    AccessState, AppStatus, BreakerKind, BreakerStatus, BulkKind, BulkStatus, DeliveryMode,
    DeliveryOutcome, ErrorClass, EventKind, EventStatus, HookStatus, ScanEnd, SubscriptionStatus,
};

pub mod prelude {
    pub use super::app::Entity as App;
    pub use super::breaker::Entity as Breaker;
    pub use super::bulk_operation::Entity as BulkOperation;
    pub use super::console_session::Entity as ConsoleSession;
    pub use super::delivery_attempt::Entity as DeliveryAttempt;
    pub use super::delivery_rollup::Entity as DeliveryRollup;
    pub use super::event::Entity as Event;
    pub use super::inbound_hook::Entity as InboundHook;
    pub use super::instance::Entity as Instance;
    pub use super::manifest_entry::Entity as ManifestEntry;
    pub use super::pending_sample::Entity as PendingSample;
    pub use super::replay::Entity as Replay;
    pub use super::repository::Entity as Repository;
    pub use super::scan::Entity as Scan;
    pub use super::snapshot::Entity as Snapshot;
    pub use super::subscription::Entity as Subscription;
}
