//! Wall-clock time as Unix milliseconds: the unit of every stored time, so that
//! SQLite and PostgreSQL compare due times and lease expiries the same way.

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let wall = i64::try_from(nanos / 1_000_000).expect("the current time fits in i64 milliseconds");
    wall.saturating_add(advanced_ms())
}

/// How far a test moved tokio's clock ahead of the real one
/// (`tokio::time::pause`, then `advance`): the stored times follow it, so a
/// cooldown or a due time passes as the timers do, without a real wait.
/// Tokio's clock is the real one until a test moves it; outside the crate's
/// own tests it always is, and this is nothing.
#[cfg(test)]
fn advanced_ms() -> i64 {
    let tokio = tokio::time::Instant::now().into_std();
    millis(tokio.saturating_duration_since(std::time::Instant::now()))
}

#[cfg(not(test))]
const fn advanced_ms() -> i64 {
    0
}

/// A duration in milliseconds, the unit every stored time and offset uses
/// (saturating: a duration too long for `i64` is "forever").
pub fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 with millisecond precision and a `Z` suffix, as Docora prints times
/// (`2026-01-01T00:00:00.000Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format)
        .expect("a UTC date always formats with this description")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advancing_tokio_time_moves_the_clock() {
        let before = now_ms();
        tokio::time::pause();
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        tokio::time::resume();
        let after = now_ms();
        // An hour on, less the real moment tokio's clock stood still.
        assert!(after - before >= 3_599_990, "{before} -> {after}");
        assert!(after - before < 3_660_000, "{before} -> {after}");
    }

    #[test]
    fn formats_like_docora() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
    }
}
