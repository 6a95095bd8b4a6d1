//! SeaORM entities of Herald's database: one module per table, data only.
//!
//! Conventions: primary keys are prefixed, sortable string ids (`app_…`,
//! `repo_…`); every time is stored as Unix milliseconds (`i64`) so that SQLite
//! and PostgreSQL compare them the same way; secrets are stored only as
//! ciphertext (`*_ciphertext`) or as a hash (`token_hash`).
//!
//! - [`app`]: an app (endpoint, sealed signing keys, token hash, settings).
//! - [`repository`]: a remote and branch, shared by its subscribers.
//! - [`subscription`]: app × repository: status, globs, sealed git token.
//! - [`snapshot`]: one observed commit of a repository.
//! - [`manifest_entry`]: a file of a repository's current snapshot.
//! - [`event`]: the outbox: one change for one subscription, with its `seq`.
//! - [`delivery_attempt`]: one HTTP attempt of an event or a chunk.
//! - [`replay`]: a replay of the changes between two commits.
//! - [`scan`]: a repository's recent scans, for the console.
//! - [`inbound_hook`]: a verified push webhook and what it did.
//! - [`breaker`]: a persisted circuit breaker (git remote or app endpoint).
//! - [`bulk_operation`]: an operator's bulk retry.
//! - [`console_session`]: an admin console session.
//! - [`delivery_rollup`]: per app and minute, the delivery figures.
//! - [`pending_sample`]: per subscription and minute, its pending events.
//! - [`instance`]: an instance's heartbeat row.
//! - [`status`]: the states and kinds the tables hold, as types.

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
    AccessState, AppStatus, BackoffPolicy, BreakerKind, BreakerStatus, BulkKind, BulkStatus,
    DeliveryMode, DeliveryOutcome, ErrorClass, EventKind, EventStatus, HookStatus, Provider,
    ScanEnd, SubscriptionStatus,
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
