//! Herald's configuration (docs/configuration.md), layered with the `config`
//! crate: embedded defaults (`config/default.toml`, compiled in) →
//! `./config/default.toml` → `./config/{HERALD_ENV}.toml` →
//! `HERALD__SECTION__KEY` environment variables → command-line flags. The
//! result is parsed into typed, validated [`Settings`]; a bad value stops the
//! start with a message naming its key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

mod checks;

const EMBEDDED_DEFAULTS: &str = include_str!("../config/default.toml");

/// Command-line values that override every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    /// Folder holding `default.toml` and `{HERALD_ENV}.toml`.
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub admin: AdminSettings,
    pub security: SecuritySettings,
    pub git: GitSettings,
    pub scheduler: SchedulerSettings,
    pub delivery: DeliverySettings,
    pub replay: ReplaySettings,
    pub breaker: BreakerSettings,
    pub inbound: InboundSettings,
    pub rate_limit: RateLimitSettings,
    pub telemetry: TelemetrySettings,
    pub cluster: ClusterSettings,
}

/// How instances sharing one PostgreSQL database divide the work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// How long a scan or delivery lease lasts unless renewed: a dead
    /// instance's work passes to another after this long. `None` in the
    /// file: three times `delivery.timeout` (filled in by `finish`).
    #[serde(deserialize_with = "optional_duration")]
    pub lease_ttl: Option<Duration>,
    /// How often each instance writes its heartbeat row.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
}

impl ClusterSettings {
    /// The lease time in effect (after `Settings::finish`).
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl.unwrap_or(Duration::from_secs(90))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    #[serde(deserialize_with = "whole_number")]
    pub port: u16,
    #[serde(deserialize_with = "whole_number")]
    pub max_body_bytes: u64,
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Closes connections that do not finish their request head in time
    /// (half-open and idle keep-alive ones), so slow clients cannot hold
    /// every descriptor.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Answers 408 to a request whose body does not arrive in time.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// The bytes of request bodies (hooks and the JSON API) held at once:
    /// many large bodies held open cannot grow memory past it (503 and
    /// `Retry-After` when spent).
    #[serde(deserialize_with = "whole_number")]
    pub max_inflight_body_bytes: u64,
    /// Open connections at once, so a flood cannot take every descriptor;
    /// lowered at start to half the open-files limit.
    #[serde(deserialize_with = "whole_number")]
    pub max_connections: usize,
    /// Open connections of one client address, so one client cannot take
    /// every place (behind a reverse proxy every client has its address).
    #[serde(deserialize_with = "whole_number")]
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Filled in from `data_dir` when left empty.
    pub url: String,
    pub auto_migrate: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    #[serde(deserialize_with = "optional_secret")]
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    #[serde(deserialize_with = "optional_secret")]
    pub encryption_key: Option<SecretString>,
    pub previous_encryption_keys: Vec<SecretString>,
    pub allow_private_targets: bool,
    pub allow_http_targets: bool,
    /// How long an app's previous signing key keeps signing after
    /// `POST /api/app/rotate-key`.
    #[serde(deserialize_with = "duration")]
    pub key_rotation_grace: Duration,
    /// How often each subscriber's git credential is checked again against
    /// the remote (also at registration and on every token change).
    #[serde(deserialize_with = "duration")]
    pub access_recheck_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSettings {
    /// A mirror holding more pack files than this is compacted into one
    /// after its next fetch.
    #[serde(deserialize_with = "whole_number")]
    pub repack_threshold: usize,
    pub allow_local_repos: bool,
    /// How many scans (fetch, diff, hashing) may run at once.
    #[serde(deserialize_with = "whole_number")]
    pub scan_workers: usize,
    /// One app's repositories hold at most this many scan workers at once,
    /// so one tenant's slow remotes cannot hold every worker (more than
    /// `scan_workers`: no bound).
    #[serde(deserialize_with = "whole_number")]
    pub scan_workers_per_app: usize,
    /// Bounds a whole git operation: connecting, the head check, the
    /// negotiation and the pack.
    #[serde(deserialize_with = "duration")]
    pub fetch_timeout: Duration,
    /// git's `http.lowSpeedLimit`: a connection to a remote moving fewer
    /// bytes a second than this for `low_speed_time` is cut (0: never).
    #[serde(deserialize_with = "whole_number")]
    pub low_speed_limit: u64,
    #[serde(deserialize_with = "duration")]
    pub low_speed_time: Duration,
    /// Files stored in Git LFS are delivered with their real content,
    /// fetched from the LFS server; off, the pointer file is sent.
    pub lfs: bool,
    /// The most the LFS object cache (`{data_dir}/lfs`) holds; upkeep
    /// removes the least recently used objects past it.
    #[serde(deserialize_with = "whole_number")]
    pub lfs_cache_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    #[serde(deserialize_with = "duration")]
    pub tick: Duration,
    #[serde(deserialize_with = "duration")]
    pub rescan_interval: Duration,
    /// An app's `POST /api/repositories/{id}/scan` within this long of the
    /// repository's last scan is answered 429 (`"0"`: never).
    #[serde(deserialize_with = "duration")]
    pub scan_request_cooldown: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSettings {
    #[serde(deserialize_with = "backoff_policy")]
    pub policy: actors::backoff::Policy,
    #[serde(deserialize_with = "duration")]
    pub base: Duration,
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
}

impl BackoffSettings {
    /// The engine's form of the default backoff.
    pub fn backoff(&self) -> actors::backoff::Backoff {
        actors::backoff::Backoff {
            policy: self.policy,
            base: self.base,
            cap: self.max,
        }
    }
}

/// A backoff policy by its stored name (`exp_full_jitter`, …).
fn backoff_policy<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<actors::backoff::Policy, D::Error> {
    let name = String::deserialize(deserializer)?;
    actors::backoff::Policy::parse(&name).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown backoff policy {name:?}: expected fixed, linear, exponential, \
             exp_full_jitter or exp_equal_jitter"
        ))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "whole_number")]
    pub max_attempts: u32,
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    #[serde(deserialize_with = "whole_number")]
    pub chunk_threshold_bytes: u64,
    /// Created or updated files larger than this go as `file_too_large`
    /// notices, without their content.
    #[serde(deserialize_with = "whole_number")]
    pub max_file_bytes: u64,
    #[serde(deserialize_with = "whole_number")]
    pub chunk_size_bytes: u64,
    pub backoff: BackoffSettings,
    /// Subscriptions of one app delivered at the same time.
    #[serde(deserialize_with = "whole_number")]
    pub max_in_flight_per_app: usize,
    /// The longest wait a `Retry-After` header may impose.
    #[serde(deserialize_with = "duration")]
    pub retry_after_max: Duration,
    /// How long delivery attempts are kept.
    #[serde(deserialize_with = "duration")]
    pub attempt_retention: Duration,
    /// How long delivered and skipped events are kept.
    #[serde(deserialize_with = "duration")]
    pub event_retention: Duration,
    /// How long the per-minute delivery rollups behind the console's
    /// charts are kept.
    #[serde(deserialize_with = "duration")]
    pub rollup_retention: Duration,
    /// How often due retries are looked for.
    #[serde(deserialize_with = "duration")]
    pub tick: Duration,
    /// How long after its last attempt a dead event is probed again
    /// (zero: never), so a consumer that recovers resumes by itself.
    #[serde(deserialize_with = "duration")]
    pub dead_retry_interval: Duration,
    /// A pause after each event a bulk retry queues again (zero: none).
    #[serde(deserialize_with = "duration")]
    pub bulk_retry_pause: Duration,
    /// A pull stream (or long poll) is answered for at most this long; its
    /// consumer then reconnects where it was.
    #[serde(deserialize_with = "duration")]
    pub stream_max_age: Duration,
    /// Streams and long polls one app may hold open on this instance.
    #[serde(deserialize_with = "whole_number")]
    pub max_streams_per_app: usize,
    /// Bytes of messages made for one app's consumers and not yet taken by
    /// them (queued in its streams and pages), on this instance.
    #[serde(deserialize_with = "whole_number")]
    pub stream_buffer_bytes: u64,
    /// Bytes of file content one app's streams hold to send chunked files,
    /// on this instance; a larger file is held alone.
    #[serde(deserialize_with = "whole_number")]
    pub stream_content_bytes: u64,
    /// A page of `GET /api/changes` ends once its messages reach this many
    /// bytes (it holds at least one).
    #[serde(deserialize_with = "whole_number")]
    pub page_max_bytes: u64,
}

impl DeliverySettings {
    /// `delivery.dead_retry_interval`, `None` when dead events are never
    /// probed.
    pub fn dead_retry_interval(&self) -> Option<Duration> {
        Some(self.dead_retry_interval).filter(|interval| !interval.is_zero())
    }
}

/// What one app's replays may take (docs/limits.md, Replay quotas): their
/// own section, as they are an API an app calls, apart from delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySettings {
    /// Replays of one app under way at once, across instances.
    #[serde(deserialize_with = "whole_number")]
    pub max_concurrent_per_app: u64,
    /// Events of one app waiting for delivery that a replay may bring the
    /// count to.
    #[serde(deserialize_with = "whole_number")]
    pub max_waiting_events_per_app: u64,
    /// Database bytes one app's replays may write within an hour.
    #[serde(deserialize_with = "whole_number")]
    pub max_bytes_per_hour_per_app: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    #[serde(deserialize_with = "whole_number")]
    pub threshold: u32,
    #[serde(deserialize_with = "duration")]
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    pub git: BreakerPolicy,
    pub delivery: BreakerPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSettings {
    #[serde(deserialize_with = "optional_secret")]
    pub github_secret: Option<SecretString>,
    #[serde(deserialize_with = "optional_secret")]
    pub gitlab_token: Option<SecretString>,
    #[serde(deserialize_with = "optional_secret")]
    pub gitea_secret: Option<SecretString>,
    #[serde(deserialize_with = "optional_secret")]
    pub bitbucket_secret: Option<SecretString>,
    /// Largest hook body accepted (413 above it); push payloads list commits
    /// and files (GitHub sends up to 25 MB), so this is far larger than
    /// `server.max_body_bytes`.
    #[serde(deserialize_with = "whole_number")]
    pub max_body_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    #[serde(deserialize_with = "whole_number")]
    pub per_ip_per_minute: u32,
    #[serde(deserialize_with = "whole_number")]
    pub onboarding_per_minute: u32,
    #[serde(deserialize_with = "whole_number")]
    pub per_app_per_minute: u32,
    /// Inbound push webhooks per client address (their own budget: a git
    /// host's few addresses send the hooks of all its tenants).
    #[serde(deserialize_with = "whole_number")]
    pub inbound_per_minute: u32,
    /// Console sign-in attempts per client address (the admin token is the
    /// one secret that opens everything).
    #[serde(deserialize_with = "whole_number")]
    pub sign_in_per_minute: u32,
    /// Failed sign-ins of one address within `sign_in_lockout` that lock it
    /// out of sign-in.
    #[serde(deserialize_with = "whole_number")]
    pub sign_in_failures: u32,
    /// How long such an address is locked out (even the right token is
    /// refused), and the window its failures are counted in.
    #[serde(deserialize_with = "duration")]
    pub sign_in_lockout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
}

/// A count or a size: a whole number, refused (naming the key) rather than
/// rounded when it has a fraction ("1.5", "1e3" read as a float) and when
/// it does not fit the setting.
fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct Whole;

    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("`{v}` is negative")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            Err(E::custom(format!("`{v}` is not a whole number")))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim()
                .parse()
                .map_err(|_| E::custom(format!("`{v}` is not a whole number")))
        }
    }

    let value = deserializer.deserialize_any(Whole)?;
    T::try_from(value)
        .map_err(|_| serde::de::Error::custom(format!("`{value}` is too large for this setting")))
}

/// Durations as humantime strings: "30s", "5m", "1h 30m", "5d".
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(deserializer)?;
    humantime::parse_duration(raw.trim()).map_err(|err| {
        serde::de::Error::custom(format!(
            "`{raw}` is not a duration ({err}); write e.g. \"30s\", \"5m\" or \"1h\""
        ))
    })
}

/// A duration, or an empty string for "not set".
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    if raw.trim().is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(raw.trim())
        .map(Some)
        .map_err(|err| {
            serde::de::Error::custom(format!(
                "`{raw}` is not a duration ({err}); write e.g. \"30s\", \"5m\" or \"1h\""
            ))
        })
}

/// An empty string means "not set".
fn optional_secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretString>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    Ok((!raw.trim().is_empty()).then(|| SecretString::from(raw.trim().to_owned())))
}

impl Settings {
    /// Loads every layer, from the process environment and `overrides`.
    pub fn load(overrides: &Overrides) -> Result<Self, SettingsError> {
        Self::load_from(overrides, std::env::var("HERALD_ENV").ok(), None)
    }

    /// Loads every layer, with `HERALD_ENV` and the `HERALD__…` variables
    /// given rather than read from the process (`environment: None` reads
    /// the process's), so tests can try any value without touching it.
    pub fn load_from(
        overrides: &Overrides,
        herald_env: Option<String>,
        environment: Option<config::Map<String, String>>,
    ) -> Result<Self, SettingsError> {
        let config_dir = overrides
            .config_dir
            .clone()
            .or_else(|| std::env::var_os("HERALD_CONFIG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"));
        let mut builder = Config::builder()
            .add_source(File::from_str(EMBEDDED_DEFAULTS, FileFormat::Toml))
            .add_source(File::from(config_dir.join("default.toml")).required(false));
        if let Some(env) = herald_env {
            builder = builder
                .add_source(File::from(config_dir.join(format!("{env}.toml"))).required(false));
        }
        builder = builder.add_source(
            Environment::with_prefix("HERALD")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("security.previous_encryption_keys")
                .try_parsing(true)
                .source(environment),
        );
        if let Some(host) = &overrides.host {
            builder = builder.set_override("server.host", host.as_str())?;
        }
        if let Some(port) = overrides.port {
            builder = builder.set_override("server.port", i64::from(port))?;
        }
        if let Some(dir) = &overrides.data_dir {
            builder = builder.set_override("data_dir", dir.to_string_lossy().as_ref())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.finish()?;
        Ok(settings)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// Property tests: whatever a configuration layer holds, loading gives
/// typed settings or an error that names the key, and never panics.
#[cfg(test)]
mod properties {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    /// Every leaf key of the configuration.
    const KEYS: [&str; 75] = [
        "data_dir",
        "server.host",
        "server.port",
        "server.max_body_bytes",
        "server.shutdown_timeout",
        "server.header_read_timeout",
        "server.body_read_timeout",
        "server.max_inflight_body_bytes",
        "server.max_connections",
        "server.max_connections_per_ip",
        "database.url",
        "database.auto_migrate",
        "admin.token",
        "security.encryption_key",
        "security.previous_encryption_keys",
        "security.allow_private_targets",
        "security.allow_http_targets",
        "security.key_rotation_grace",
        "security.access_recheck_interval",
        "git.repack_threshold",
        "git.allow_local_repos",
        "git.scan_workers",
        "git.scan_workers_per_app",
        "git.fetch_timeout",
        "git.low_speed_limit",
        "git.low_speed_time",
        "git.lfs",
        "git.lfs_cache_bytes",
        "scheduler.tick",
        "scheduler.rescan_interval",
        "scheduler.scan_request_cooldown",
        "delivery.timeout",
        "delivery.max_attempts",
        "delivery.disable_after",
        "delivery.chunk_threshold_bytes",
        "delivery.max_file_bytes",
        "delivery.chunk_size_bytes",
        "delivery.backoff.policy",
        "delivery.backoff.base",
        "delivery.backoff.max",
        "delivery.max_in_flight_per_app",
        "delivery.retry_after_max",
        "delivery.attempt_retention",
        "delivery.event_retention",
        "delivery.rollup_retention",
        "delivery.tick",
        "delivery.dead_retry_interval",
        "delivery.stream_max_age",
        "delivery.max_streams_per_app",
        "delivery.stream_buffer_bytes",
        "delivery.stream_content_bytes",
        "delivery.page_max_bytes",
        "replay.max_concurrent_per_app",
        "replay.max_waiting_events_per_app",
        "replay.max_bytes_per_hour_per_app",
        "breaker.git.threshold",
        "breaker.git.cooldown",
        "breaker.delivery.threshold",
        "breaker.delivery.cooldown",
        "inbound.github_secret",
        "inbound.gitlab_token",
        "inbound.gitea_secret",
        "inbound.bitbucket_secret",
        "inbound.max_body_bytes",
        "rate_limit.per_ip_per_minute",
        "rate_limit.onboarding_per_minute",
        "rate_limit.per_app_per_minute",
        "rate_limit.inbound_per_minute",
        "rate_limit.sign_in_per_minute",
        "rate_limit.sign_in_failures",
        "rate_limit.sign_in_lockout",
        "telemetry.log_format",
        "telemetry.log_level",
        "cluster.lease_ttl",
        "cluster.heartbeat_interval",
    ];

    /// Keys holding secrets: their values never appear in an error.
    const SECRETS: [&str; 6] = [
        "admin.token",
        "security.encryption_key",
        "inbound.github_secret",
        "inbound.gitlab_token",
        "inbound.gitea_secret",
        "inbound.bitbucket_secret",
    ];

    /// Duration keys whose only rule is the type: any duration is valid.
    const FREE_DURATIONS: [&str; 8] = [
        "server.shutdown_timeout",
        "security.key_rotation_grace",
        "scheduler.rescan_interval",
        "scheduler.scan_request_cooldown",
        "delivery.disable_after",
        "delivery.retry_after_max",
        "breaker.git.cooldown",
        "breaker.delivery.cooldown",
    ];

    /// Size keys (bytes) and whether zero is refused.
    const SIZES: [(&str, bool); 6] = [
        ("server.max_body_bytes", true),
        ("inbound.max_body_bytes", true),
        ("delivery.chunk_threshold_bytes", false),
        ("delivery.max_file_bytes", true),
        ("delivery.chunk_size_bytes", true),
        ("replay.max_bytes_per_hour_per_app", true),
    ];

    /// `server.max_inflight_body_bytes` in the embedded defaults.
    const DEFAULT_BODY_BUDGET: u64 = 64 << 20;

    /// A consumer that recovers resumes within about a minute, as Docora's
    /// clients, retried on every 60 s scan, expect; "0" still turns probes
    /// off.
    #[test]
    fn dead_events_are_probed_every_minute_by_default() {
        let settings = load(&[]).expect("the defaults load");
        assert_eq!(
            settings.delivery.dead_retry_interval(),
            Some(Duration::from_secs(60))
        );
        let never = load(&[("delivery.dead_retry_interval", "0")]).expect("0 loads");
        assert_eq!(never.delivery.dead_retry_interval(), None);
    }

    /// The in-flight budget holds the largest body a limit allows, or the
    /// start is refused naming both keys.
    #[test]
    fn the_body_budget_holds_the_largest_body() {
        let settings = load(&[]).expect("the defaults load");
        assert_eq!(settings.server.max_inflight_body_bytes, DEFAULT_BODY_BUDGET);
        for (key, value) in [
            ("inbound.max_body_bytes", "67108865"),
            ("server.max_body_bytes", "67108865"),
        ] {
            let err = load(&[(key, value)]).expect_err(key).to_string();
            assert!(
                err.contains("server.max_inflight_body_bytes") && err.contains(key),
                "{err}"
            );
        }
        let err = load(&[("server.max_inflight_body_bytes", "1048576")])
            .expect_err("a budget below the hook body limit")
            .to_string();
        assert!(err.contains("server.max_inflight_body_bytes"), "{err}");
        let settings = load(&[
            ("inbound.max_body_bytes", "100000000"),
            ("server.max_inflight_body_bytes", "100000000"),
        ])
        .expect("a larger budget holds a larger limit");
        assert_eq!(settings.server.max_inflight_body_bytes, 100_000_000);
        for key in ["server.max_connections", "server.max_connections_per_ip"] {
            let err = load(&[(key, "0")]).expect_err(key).to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    fn env_name(key: &str) -> String {
        format!("HERALD__{}", key.replace('.', "__").to_uppercase())
    }

    /// Loads the embedded defaults plus `values` as `HERALD__…` variables,
    /// with no configuration folder and no process environment.
    fn load(values: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let overrides = Overrides {
            config_dir: Some(PathBuf::from("/nonexistent/herald-config")),
            ..Overrides::default()
        };
        let environment = values
            .iter()
            .map(|(key, value)| (env_name(key), (*value).to_owned()))
            .collect();
        Settings::load_from(&overrides, None, Some(environment))
    }

    fn duration_of(settings: &Settings, key: &str) -> Duration {
        match key {
            "server.shutdown_timeout" => settings.server.shutdown_timeout,
            "security.key_rotation_grace" => settings.security.key_rotation_grace,
            "scheduler.rescan_interval" => settings.scheduler.rescan_interval,
            "scheduler.scan_request_cooldown" => settings.scheduler.scan_request_cooldown,
            "delivery.disable_after" => settings.delivery.disable_after,
            "delivery.retry_after_max" => settings.delivery.retry_after_max,
            "breaker.git.cooldown" => settings.breaker.git.cooldown,
            "breaker.delivery.cooldown" => settings.breaker.delivery.cooldown,
            _ => unreachable!("not a free duration key: {key}"),
        }
    }

    fn size_of(settings: &Settings, key: &str) -> u64 {
        match key {
            "server.max_body_bytes" => settings.server.max_body_bytes,
            "inbound.max_body_bytes" => settings.inbound.max_body_bytes,
            "delivery.chunk_threshold_bytes" => settings.delivery.chunk_threshold_bytes,
            "delivery.max_file_bytes" => settings.delivery.max_file_bytes,
            "delivery.chunk_size_bytes" => settings.delivery.chunk_size_bytes,
            "replay.max_bytes_per_hour_per_app" => settings.replay.max_bytes_per_hour_per_app,
            _ => unreachable!("not a size key: {key}"),
        }
    }

    /// A duration as written by people ("1h 30m", "500ms", "2days") and
    /// the value it stands for.
    fn written_duration() -> impl Strategy<Value = (String, Duration)> {
        const UNITS: [(&str, u64); 9] = [
            ("ms", 1),
            ("s", 1_000),
            ("sec", 1_000),
            ("m", 60_000),
            ("min", 60_000),
            ("h", 3_600_000),
            ("hours", 3_600_000),
            ("d", 86_400_000),
            ("days", 86_400_000),
        ];
        prop::collection::vec((0u64..100_000, 0..UNITS.len()), 1..4).prop_map(|parts| {
            let text: Vec<String> = parts
                .iter()
                .map(|&(n, unit)| format!("{n}{}", UNITS[unit].0))
                .collect();
            let millis = parts.iter().map(|&(n, unit)| n * UNITS[unit].1).sum();
            (text.join(" "), Duration::from_millis(millis))
        })
    }

    /// Values people (and typos) put in a configuration.
    fn any_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            "[0-9]{1,25}",
            "-[0-9]{1,20}",
            "[0-9]{1,6}(\\.[0-9]{1,3})?(ms|s|m|h|d|w|y|KiB|MB|x| )?",
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("0".to_owned()),
            Just(String::new()),
            Just("18446744073709551616".to_owned()),
            Just("9223372036854775808".to_owned()),
            Just("99999999999999999999d".to_owned()),
            Just("a,b,c".to_owned()),
            Just("[1, 2]".to_owned()),
        ]
    }

    /// Counts are whole numbers too: a fraction is refused, not rounded, and
    /// so is a number the setting cannot hold.
    #[test]
    fn counts_are_whole_numbers() {
        for (key, value) in [
            ("delivery.max_attempts", "2.5"),
            ("breaker.git.threshold", "0.6"),
            ("rate_limit.per_ip_per_minute", "1e3"),
            ("git.scan_workers", "-1"),
            ("server.port", "70000"),
        ] {
            let err = load(&[(key, value)]).expect_err(value).to_string();
            assert!(err.contains(key), "{key} = {value}: {err}");
        }
        let settings = load(&[("delivery.max_attempts", "7"), ("server.port", "8081")])
            .expect("whole numbers load");
        assert_eq!(settings.delivery.max_attempts, 7);
        assert_eq!(settings.server.port, 8081);
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// A duration written any way humantime reads is the value loaded.
        #[test]
        fn durations_load_as_written(
            key in prop::sample::select(FREE_DURATIONS.to_vec()),
            (text, expected) in written_duration(),
        ) {
            let settings = load(&[(key, &text)]).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(duration_of(&settings, key), expected, "{} = {:?}", key, text);
        }

        /// A size in bytes loads as that number; zero only where allowed;
        /// a unit, a sign or a fraction is refused naming the key.
        #[test]
        fn sizes_load_as_numbers_of_bytes(
            (key, zero_refused) in prop::sample::select(SIZES.to_vec()),
            bytes in prop_oneof![Just(0u64), 1u64..=u64::from(u32::MAX), any::<u64>()],
            suffix in prop_oneof![Just(""), Just("KiB"), Just("MB"), Just(".5"), Just(" bytes")],
            negative in any::<bool>(),
        ) {
            let text = format!("{}{bytes}{suffix}", if negative { "-" } else { "" });
            let result = load(&[(key, &text)]);
            let plain = suffix.is_empty() && (!negative || bytes == 0);
            match result {
                Ok(settings) => {
                    prop_assert!(plain, "{} = {:?} must be refused", key, text);
                    prop_assert_eq!(size_of(&settings, key), bytes, "{} = {:?}", key, text);
                    prop_assert!(bytes > 0 || !zero_refused, "{} = 0 must be refused", key);
                }
                Err(err) => {
                    let message = err.to_string();
                    prop_assert!(message.contains(key), "{} = {:?}: {}", key, text, message);
                    // A body limit must also fit the in-flight budget.
                    let over_budget = key.ends_with(".max_body_bytes") && bytes > DEFAULT_BODY_BUDGET;
                    prop_assert!(!plain || (bytes == 0 && zero_refused) || over_budget || bytes > i64::MAX as u64,
                        "{} = {:?} refused: {}", key, text, message);
                }
            }
        }

        /// Whatever values the keys hold, loading gives settings or an error
        /// naming one of the keys that was set, never a panic, and never
        /// echoes a secret.
        #[test]
        fn any_values_load_or_name_their_key(
            values in prop::collection::vec(
                (prop::sample::select(KEYS.to_vec()), any_value()), 1..4),
        ) {
            let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if let Err(err) = load(&pairs) {
                let message = err.to_string();
                prop_assert!(
                    values.iter().any(|(key, _)| message.contains(key)),
                    "{:?}: {}", values, message
                );
                for (key, value) in &values {
                    // (Unless another key holds the same text and may show it.)
                    let shared = values.iter().any(|(k, v)| !SECRETS.contains(k) && v == value);
                    if SECRETS.contains(key) && value.trim().len() >= 8 && !shared {
                        prop_assert!(!message.contains(value.trim()), "{} echoed: {}", key, message);
                    }
                }
            }
        }
    }
}
