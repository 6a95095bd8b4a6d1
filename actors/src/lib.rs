//! Herald's engine: the supervision tree and everything it runs on.
//!
//! Supervision and scanning:
//!
//! - [`supervisor`]: the root actor and [`supervisor::EngineHandle`]; starts,
//!   watches and restarts the others.
//! - [`restart`]: the one restart policy (backoff, intensity limit).
//! - [`owned`]: tasks an actor owns, aborted with its state.
//! - [`scheduler`]: decides which repositories are due and starts their scans.
//! - [`repo_watcher`]: one actor per scan under way (breaker, lease, outbox).
//! - [`scan`]: the blocking scan, the worker pools, a replay's git work.
//! - [`git`]: bare mirrors, remotes under the address rule, git over rustls.
//! - [`gitconfig`]: the git config syntax of `.gitmodules` and `.lfsconfig`.
//! - [`changes`]: what changed between two commits: files, hashes, the
//!   binary rule, ignore rules, submodules; and what one subscription sees
//!   of it, in the order of its events (pure, shared by the store's outbox
//!   and replays).
//! - [`lfs`]: Git LFS objects fetched through the batch API, and their cache.
//!
//! Delivery:
//!
//! - [`delivery`]: the dispatcher, one actor per app, one lane per
//!   subscription; pull delivery's rendering.
//! - [`payload`]: webhook bodies in Docora's field order, and chunks.
//! - [`signing`]: Docora and Standard Webhooks signatures.
//! - [`cloudevents`]: the CloudEvents attributes of every message.
//! - [`backoff`]: the five retry policies.
//! - [`webhook_client`]: the one outbound HTTP client for webhooks.
//! - [`broker`]: broker destinations (NATS JetStream, RabbitMQ, Redis
//!   Streams): where, one connection per app, one signed message published.
//! - [`breaker`]: circuit breakers (git remotes, app endpoints) and their actor.
//!
//! Inbound hooks, instances and upkeep:
//!
//! - [`hook_processor`]: turns stored inbound push webhooks into scans;
//!   [`inbound`] checks and reads them, one module per git host.
//! - [`bulk`]: runs the operators' bulk operations, whichever instance
//!   started them, and takes over those whose runner died.
//! - [`heartbeat`]: this instance's heartbeat row (`GET /admin/api/instances`).
//! - [`signals`]: how the engine's parts wake each other.
//! - [`wakeups`]: instances sharing PostgreSQL wake each other at once
//!   (`LISTEN/NOTIFY`) when they make work.
//! - [`upkeep`]: deletes what is past its retention (events, attempts,
//!   snapshots) and computes the delivery rollups.
//!
//! Storage and shared parts:
//!
//! - [`store`]: every database query, one module per aggregate, plus leases.
//! - [`crypto`]: app tokens, the admin token, secrets at rest (AES-256-GCM).
//! - [`net`]: which IP addresses count as public (the SSRF rule).
//! - [`tls`]: the one TLS client configuration (webhooks and git over https)
//!   and the one crypto provider (ring), installed for reqwest's clients.
//! - [`telemetry`]: the trace context from a scan to its deliveries; the
//!   engine's Prometheus series.
//! - [`ids`]: prefixed, sortable identifiers (`app_…`, `repo_…`, `evt_…`).
//! - [`clock`]: wall-clock milliseconds, the unit of every stored time (in
//!   the crate's tests, moved on by `tokio::time::advance`).
//! - `test_support` (tests and benches only, feature `test-support`): a
//!   throwaway database, store fixtures, one scan driven to the outbox.
//!
//! The HTTP layer (the `herald` crate) holds a [`store::Store`] and an
//! [`supervisor::EngineHandle`]; it never runs git or sends webhooks itself.

pub mod background;
pub mod backoff;
pub mod breaker;
pub mod broker;
pub mod bulk;
pub mod changes;
pub mod clock;
pub mod cloudevents;
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
pub mod tls;
pub mod upkeep;
pub mod wakeups;
pub mod webhook_client;
