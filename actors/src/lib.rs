//! Herald's engine: the supervision tree and everything it runs on.
//!
//! - [`supervisor`]: the root actor; starts, watches and restarts the others.
//! - [`scheduler`]: decides which repositories are due and pokes their watchers.
//! - [`hook_processor`]: turns stored inbound push webhooks into scans;
//!   [`inbound`] checks and reads them.
//! - [`bulk`]: runs the operators' bulk operations, whichever instance
//!   started them, and takes over those whose runner died.
//! - [`heartbeat`]: this instance's heartbeat row (`GET /admin/api/instances`).
//! - [`upkeep`]: deletes what is past its retention (events, attempts,
//!   snapshots).
//! - [`wakeups`]: instances sharing PostgreSQL wake each other at once
//!   (`LISTEN/NOTIFY`) when they make work.
//! - [`store`]: every database query, one module per aggregate, plus leases.
//! - [`crypto`]: app tokens, the admin token, secrets at rest (AES-256-GCM).
//! - [`ids`]: prefixed, sortable identifiers (`app_…`, `repo_…`, `evt_…`).
//! - [`net`]: which IP addresses count as public (the SSRF rule).
//! - [`clock`]: wall-clock milliseconds, the unit of every stored time.
//! - `tls`: the one TLS client configuration (webhooks and git over https).
//! - [`telemetry`]: the trace context from a scan to its deliveries; the
//!   engine's Prometheus series.
//! - `test_support` (tests and benches only, feature `test-support`): a
//!   throwaway database, store fixtures, one scan driven to the outbox.
//!
//! The HTTP layer (the `herald` crate) holds a [`store::Store`] and an
//! [`supervisor::EngineHandle`]; it never runs git or sends webhooks itself.

pub mod backoff;
pub mod breaker;
pub mod bulk;
pub mod changes;
pub mod clock;
pub mod crypto;
pub mod delivery;
pub mod docora;
pub mod git;
pub mod gitconfig;
pub mod heartbeat;
pub mod hook_processor;
pub mod ids;
pub mod inbound;
pub mod lfs;
pub mod net;
pub mod owned;
pub mod payload;
pub mod repo_watcher;
pub mod restart;
pub mod scan;
pub mod scheduler;
pub mod signals;
pub mod signing;
pub mod store;
pub mod supervisor;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
mod tls;
pub mod upkeep;
pub mod wakeups;
pub mod webhook_client;
