//! The rules of the settings that their types cannot express
//! ([`Settings::finish`]): bounds, relations between keys, derived values,
//! each failure naming its key.

use super::*;

impl Settings {
    /// Fills derived values and checks what types alone cannot.
    pub(super) fn finish(&mut self) -> Result<(), SettingsError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.database.url.trim().is_empty() {
            self.database.url = format!("sqlite://{}", self.data_dir.join("herald.db").display());
        }
        let url = self.database.url.trim();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        self.server.host.parse::<IpAddr>().map_err(|_| {
            invalid(
                "server.host",
                format!("`{}` is not an IP address", self.server.host),
            )
        })?;
        for (key, timeout) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
        ] {
            if timeout.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be positive"));
        }
        if self.inbound.max_body_bytes == 0 {
            return Err(invalid("inbound.max_body_bytes", "must be positive"));
        }
        // Every body must fit the budget alone, or the largest allowed
        // body could never be read.
        let largest_body = self.server.max_body_bytes.max(self.inbound.max_body_bytes);
        if self.server.max_inflight_body_bytes < largest_body {
            return Err(invalid(
                "server.max_inflight_body_bytes",
                format!(
                    "must be at least server.max_body_bytes and inbound.max_body_bytes ({largest_body})"
                ),
            ));
        }
        if self.server.max_inflight_body_bytes > tokio::sync::Semaphore::MAX_PERMITS as u64 {
            return Err(invalid(
                "server.max_inflight_body_bytes",
                format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            ));
        }
        for (key, count) in [
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_connections_per_ip",
                self.server.max_connections_per_ip,
            ),
        ] {
            if count == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some(key) = &self.security.encryption_key {
            check_key_hex("security.encryption_key", key)?;
        }
        for key in &self.security.previous_encryption_keys {
            check_key_hex("security.previous_encryption_keys", key)?;
        }
        if let Some(token) = &self.admin.token
            && token.expose_secret().len() < 16
        {
            return Err(invalid("admin.token", "must be at least 16 characters"));
        }
        if self.scheduler.tick.is_zero() {
            return Err(invalid("scheduler.tick", "must be longer than zero"));
        }
        if !(1..=15).contains(&self.git.repack_threshold) {
            return Err(invalid(
                "git.repack_threshold",
                "must be between 1 and 15 (a mirror holds at most one pack more)",
            ));
        }
        if self.git.scan_workers == 0 {
            return Err(invalid("git.scan_workers", "must be at least 1"));
        }
        if self.git.scan_workers_per_app == 0 {
            return Err(invalid("git.scan_workers_per_app", "must be at least 1"));
        }
        if self.git.fetch_timeout.is_zero() {
            return Err(invalid("git.fetch_timeout", "must be longer than zero"));
        }
        if self.git.low_speed_limit > 0 && self.git.low_speed_time.is_zero() {
            return Err(invalid(
                "git.low_speed_time",
                "must be longer than zero while git.low_speed_limit is set",
            ));
        }
        if self.security.access_recheck_interval.is_zero() {
            return Err(invalid(
                "security.access_recheck_interval",
                "must be longer than zero",
            ));
        }
        if self.delivery.max_attempts == 0 {
            return Err(invalid("delivery.max_attempts", "must be at least 1"));
        }
        if self.delivery.max_in_flight_per_app == 0 {
            return Err(invalid(
                "delivery.max_in_flight_per_app",
                "must be at least 1",
            ));
        }
        for (key, retention) in [
            ("delivery.event_retention", self.delivery.event_retention),
            (
                "delivery.attempt_retention",
                self.delivery.attempt_retention,
            ),
        ] {
            if retention < Duration::from_secs(1) {
                return Err(invalid(key, "must be at least one second"));
            }
        }
        // The charts show up to a day.
        if self.delivery.rollup_retention < Duration::from_secs(24 * 60 * 60) {
            return Err(invalid(
                "delivery.rollup_retention",
                "must be at least a day, the longest chart",
            ));
        }
        if self.delivery.tick.is_zero() {
            return Err(invalid("delivery.tick", "must be longer than zero"));
        }
        // A probe more often than every second would hammer a consumer known
        // to fail.
        if self
            .delivery
            .dead_retry_interval()
            .is_some_and(|interval| interval < Duration::from_secs(1))
        {
            return Err(invalid(
                "delivery.dead_retry_interval",
                "must be \"0\" (never) or at least one second",
            ));
        }
        for (key, value) in [
            (
                "delivery.max_streams_per_app",
                self.delivery.max_streams_per_app as u64,
            ),
            (
                "delivery.stream_buffer_bytes",
                self.delivery.stream_buffer_bytes,
            ),
            (
                "delivery.stream_content_bytes",
                self.delivery.stream_content_bytes,
            ),
            ("delivery.page_max_bytes", self.delivery.page_max_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        // The semaphores behind these count bytes as u32 permits.
        for (key, value) in [
            (
                "delivery.stream_buffer_bytes",
                self.delivery.stream_buffer_bytes,
            ),
            (
                "delivery.stream_content_bytes",
                self.delivery.stream_content_bytes,
            ),
        ] {
            if value > u64::from(u32::MAX) {
                return Err(invalid(key, "must be below 4 GiB"));
            }
        }
        if self.delivery.stream_max_age.is_zero() {
            return Err(invalid(
                "delivery.stream_max_age",
                "must be longer than zero",
            ));
        }
        // A longer pause would leave a bulk retry of a few thousand events
        // running for days.
        if self.delivery.bulk_retry_pause > Duration::from_secs(60) {
            return Err(invalid(
                "delivery.bulk_retry_pause",
                "must be at most one minute",
            ));
        }
        // A lane renews its lease between requests: one request, up to
        // delivery.timeout, must fit well inside it.
        let lease_ttl = *self
            .cluster
            .lease_ttl
            .get_or_insert(self.delivery.timeout.saturating_mul(3));
        if lease_ttl < self.delivery.timeout.saturating_mul(2) {
            return Err(invalid(
                "cluster.lease_ttl",
                "must be at least twice delivery.timeout (a request must fit inside a lease)",
            ));
        }
        if self.rate_limit.sign_in_lockout.is_zero() {
            return Err(invalid(
                "rate_limit.sign_in_lockout",
                "must be longer than zero",
            ));
        }
        if self.cluster.heartbeat_interval.is_zero() {
            return Err(invalid(
                "cluster.heartbeat_interval",
                "must be longer than zero",
            ));
        }
        if self.delivery.max_file_bytes == 0 {
            return Err(invalid("delivery.max_file_bytes", "must be positive"));
        }
        if self.delivery.chunk_size_bytes == 0 {
            return Err(invalid("delivery.chunk_size_bytes", "must be positive"));
        }
        if self.delivery.backoff.base > self.delivery.backoff.max {
            return Err(invalid(
                "delivery.backoff.base",
                "must not exceed delivery.backoff.max",
            ));
        }
        for (key, threshold) in [
            ("breaker.git.threshold", self.breaker.git.threshold),
            (
                "breaker.delivery.threshold",
                self.breaker.delivery.threshold,
            ),
        ] {
            if threshold == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        // Budgets and limits that must let something through.
        for (key, count) in [
            (
                "rate_limit.per_ip_per_minute",
                u64::from(self.rate_limit.per_ip_per_minute),
            ),
            (
                "rate_limit.onboarding_per_minute",
                u64::from(self.rate_limit.onboarding_per_minute),
            ),
            (
                "rate_limit.per_app_per_minute",
                u64::from(self.rate_limit.per_app_per_minute),
            ),
            (
                "rate_limit.inbound_per_minute",
                u64::from(self.rate_limit.inbound_per_minute),
            ),
            (
                "rate_limit.sign_in_per_minute",
                u64::from(self.rate_limit.sign_in_per_minute),
            ),
            (
                "rate_limit.sign_in_failures",
                u64::from(self.rate_limit.sign_in_failures),
            ),
            (
                "replay.max_concurrent_per_app",
                self.replay.max_concurrent_per_app,
            ),
            (
                "replay.max_waiting_events_per_app",
                self.replay.max_waiting_events_per_app,
            ),
            (
                "replay.max_bytes_per_hour_per_app",
                self.replay.max_bytes_per_hour_per_app,
            ),
        ] {
            if count == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level)
            .map_err(|err| invalid("telemetry.log_level", err.to_string()))?;
        Ok(())
    }
}

fn check_key_hex(key: &'static str, value: &SecretString) -> Result<(), SettingsError> {
    let raw = value.expose_secret();
    if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        // Never echo the value: it is a secret.
        Err(invalid(key, "must be 64 hex characters (32 bytes)"))
    }
}
