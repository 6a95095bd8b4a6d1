//! Herald's schema migrations, applied at start-up when `database.auto_migrate`
//! is on and by `herald migrate`.
//!
//! In order (each module's doc says why):
//!
//! - `m20261121_000001_create_tables`: the initial schema.
//! - `m20261121_000002_add_events_trace_parent`: each event's trace context.
//! - `m20261122_000003_subscription_access`: access proven per subscriber.
//! - `m20261122_000004_breaker_probe`: a breaker's probe claimed in the row.
//! - `m20261122_000010_create_bulk_operations`: bulk operations as rows.
//! - `m20261122_000011_create_instances`: each instance's heartbeat row.
//! - `m20261122_000012_event_retention_indexes`: indexes for retention.
//! - `m20261122_000020_create_console_sessions`: the console's sessions.
//! - `m20261125_000030_bind_console_sessions`: sessions bound to the admin
//!   token.
//! - `m20261125_000030_repository_git_suffix`: `.git` kept off the hosts
//!   known to ignore it.
//! - `m20261126_000040_add_app_delivery_window`: an app's delivery window.
//! - `m20261126_000050_pull_delivery`: push or pull, and stream places.
//! - `m20261126_000051_replays`: replays and their events.
//! - `m20261126_000060_console_event_log`: the event log's indexes,
//!   attempts' headers, recent scans.
//! - `m20261126_000061_delivery_rollups`: per-minute delivery figures.
//! - `m20261126_000070_git_content`: LFS objects, `submodule` events.
//! - `m20261126_000080_app_resolve_lfs`: LFS resolution per app.
//! - `m20261126_000090_expand_submodules`: repositories with submodules
//!   expanded.
//! - `m20261127_000100_replay_quotas`: replays' quotas and leases.
//! - `m20261127_000110_held_files`: files held back by a receiver.
//! - `m20261127_000120_broker_destinations`: an app's broker destination.
//! - `m20261128_000130_partial_replay_index`: the replay index holds
//!   replays' events only.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_create_tables;
mod m20261121_000002_add_events_trace_parent;
mod m20261122_000003_subscription_access;
mod m20261122_000004_breaker_probe;
mod m20261122_000010_create_bulk_operations;
mod m20261122_000011_create_instances;
mod m20261122_000012_event_retention_indexes;
mod m20261122_000020_create_console_sessions;
mod m20261125_000030_bind_console_sessions;
mod m20261125_000030_repository_git_suffix;
mod m20261126_000040_add_app_delivery_window;
mod m20261126_000050_pull_delivery;
mod m20261126_000051_replays;
mod m20261126_000060_console_event_log;
mod m20261126_000061_delivery_rollups;
mod m20261126_000070_git_content;
mod m20261126_000080_app_resolve_lfs;
mod m20261126_000090_expand_submodules;
mod m20261127_000100_replay_quotas;
mod m20261127_000110_held_files;
mod m20261127_000120_broker_destinations;
mod m20261128_000130_partial_replay_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_tables::Migration),
            Box::new(m20261121_000002_add_events_trace_parent::Migration),
            Box::new(m20261122_000003_subscription_access::Migration),
            Box::new(m20261122_000004_breaker_probe::Migration),
            Box::new(m20261122_000010_create_bulk_operations::Migration),
            Box::new(m20261122_000011_create_instances::Migration),
            Box::new(m20261122_000012_event_retention_indexes::Migration),
            Box::new(m20261122_000020_create_console_sessions::Migration),
            Box::new(m20261125_000030_bind_console_sessions::Migration),
            Box::new(m20261125_000030_repository_git_suffix::Migration),
            Box::new(m20261126_000040_add_app_delivery_window::Migration),
            Box::new(m20261126_000050_pull_delivery::Migration),
            Box::new(m20261126_000051_replays::Migration),
            Box::new(m20261126_000060_console_event_log::Migration),
            Box::new(m20261126_000061_delivery_rollups::Migration),
            Box::new(m20261126_000070_git_content::Migration),
            Box::new(m20261126_000080_app_resolve_lfs::Migration),
            Box::new(m20261126_000090_expand_submodules::Migration),
            Box::new(m20261127_000100_replay_quotas::Migration),
            Box::new(m20261127_000110_held_files::Migration),
            Box::new(m20261127_000120_broker_destinations::Migration),
            Box::new(m20261128_000130_partial_replay_index::Migration),
        ]
    }
}
