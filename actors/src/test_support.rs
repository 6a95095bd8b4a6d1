//! What the engine's tests, the integration tests and the benches set up
//! alike: a throwaway database, a store with apps subscribed to
//! repositories, and one scan driven through the engine's own code.
//!
//! Compiled for the crate's own tests and, through the `test-support`
//! feature, for the workspace's tests and benches (a dev-dependency only:
//! the shipped binary does not carry it).

pub mod attempts;
pub mod database;
pub mod fixtures;
pub mod scan;
pub mod tls;

pub use database::TestDatabase;
pub use fixtures::{connect, new_app, new_subscription, onboard, sqlite_url, store, subscribe};
pub use scan::{Advanced, Scanned, loopback_remote, scan, scan_and_advance};
