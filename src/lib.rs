//! Herald watches git repositories and tells the apps that subscribed what
//! changed, file by file, as signed webhooks.
//!
//! This crate is the `herald` binary and its library:
//!
//! - [`config`]: layered configuration parsed into validated [`config::Settings`].
//! - [`telemetry`]: logs (JSON or pretty, never a secret), traces and metrics.
//! - [`startup`]: data directory secrets, database, actor tree, HTTP server,
//!   graceful shutdown.
//! - [`http`]: the warp front door (public, admin and client APIs), its
//!   handlers holding one [`http::AppState`].
//! - [`domain`]: validated input types (URLs with the SSRF rule, names, keys).
//! - [`cli`]: the command line (`serve`, `migrate`, `check-config`, `listen`,
//!   and the client commands `app`, `repo`, `events` over the HTTP API).
//!
//! The engine (actors, persistence, secrets) is the `actors` crate; the
//! database schema is `entity` and `migration`.

pub mod cli;
pub mod config;
pub mod docora;
pub mod domain;
pub mod http;
pub mod startup;
pub mod telemetry;

/// Cases per property test: `PROPTEST_CASES`, or a CI-sized default (see
/// CONTRIBUTING.md, "Property and contract tests", for a long run).
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
