//! Circuit breakers: closed → open after `threshold` consecutive failures →
//! half-open (one probe) after `cooldown` → closed on success, open again on
//! failure with a doubled cooldown (at most [`MAX_COOLDOWN_FACTOR`] times the
//! configured one). The state is a database row (`breakers`), so a restart
//! does not forget an open breaker; each breaker is owned by one actor (a
//! repository's watcher; an app endpoint's [`actor::BreakerActor`]), which
//! alone changes it.

pub mod actor;

use std::time::Duration;

use entity::{BreakerKind, BreakerStatus, ErrorClass, breaker};

/// A failing probe doubles the cooldown, up to this many times the
/// configured one.
pub const MAX_COOLDOWN_FACTOR: i64 = 32;

#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub threshold: u32,
    pub cooldown: Duration,
}

/// What the owner may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go ahead.
    Proceed,
    /// The cooldown is over: one probe may go.
    Probe,
    /// Open: wait until this time (unix ms).
    WaitUntil(i64),
}

/// Whether work may proceed at `now`.
pub fn permit(row: Option<&breaker::Model>, now: i64) -> Permit {
    match row {
        None => Permit::Proceed,
        Some(row) if row.state == BreakerStatus::Closed => Permit::Proceed,
        Some(row) => match row.cooldown_until {
            Some(until) if until > now => Permit::WaitUntil(until),
            _ => Permit::Probe,
        },
    }
}

/// The row after a failure at `now`, and whether this failure opened the
/// breaker (once per opening: re-opening after a failed probe counts too).
pub fn on_failure(
    row: Option<breaker::Model>,
    kind: BreakerKind,
    subject: &str,
    policy: BreakerPolicy,
    now: i64,
    error_class: ErrorClass,
    error: &str,
) -> (breaker::Model, bool) {
    let mut row = row.unwrap_or_else(|| breaker::Model {
        kind,
        subject_id: subject.to_owned(),
        state: BreakerStatus::Closed,
        consecutive_failures: 0,
        openings: 0,
        opened_at: None,
        cooldown_until: None,
        last_error_class: None,
        last_error: None,
        updated_at: now,
        probe_until: None,
    });
    row.consecutive_failures = row.consecutive_failures.saturating_add(1);
    row.last_error_class = Some(error_class);
    row.last_error = Some(error.to_owned());
    row.updated_at = now;
    let base = crate::clock::millis(policy.cooldown);
    let threshold = i32::try_from(policy.threshold).unwrap_or(i32::MAX);
    let was_closed = row.state == BreakerStatus::Closed;
    let cooldown = match (row.state, row.opened_at, row.cooldown_until) {
        (BreakerStatus::Closed, _, _) if row.consecutive_failures >= threshold => Some(base),
        (BreakerStatus::Closed, _, _) => None,
        // The cooldown was over: a probe failed. Open again for twice as long.
        (_, Some(opened), Some(until)) if now >= until => Some(
            until
                .saturating_sub(opened)
                .saturating_mul(2)
                .clamp(base, base.saturating_mul(MAX_COOLDOWN_FACTOR)),
        ),
        // Still cooling down: a request that was in flight when the breaker
        // opened. It changes nothing.
        (_, Some(_), Some(_)) => None,
        _ => Some(base),
    };
    if let Some(cooldown) = cooldown {
        row.state = BreakerStatus::Open;
        row.opened_at = Some(now);
        row.cooldown_until = Some(now.saturating_add(cooldown));
        row.probe_until = None;
        if was_closed {
            row.openings = row.openings.saturating_add(1);
        }
    }
    (row, cooldown.is_some() && was_closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        threshold: 3,
        cooldown: Duration::from_secs(60),
    };

    fn fail(row: Option<breaker::Model>, now: i64) -> (breaker::Model, bool) {
        on_failure(
            row,
            BreakerKind::Git,
            "repo_x",
            POLICY,
            now,
            ErrorClass::Network,
            "unreachable",
        )
    }

    #[test]
    fn opens_after_the_threshold_once_then_probes_after_the_cooldown() {
        let (row, opened) = fail(None, 0);
        assert!(!opened);
        assert_eq!(permit(Some(&row), 0), Permit::Proceed);
        let (row, opened) = fail(Some(row), 1);
        assert!(!opened);
        let (row, opened) = fail(Some(row), 2);
        assert!(opened, "the third failure opens");
        assert_eq!(row.openings, 1);
        assert_eq!(permit(Some(&row), 3), Permit::WaitUntil(60_002));
        assert_eq!(permit(Some(&row), 60_002), Permit::Probe);

        // A request that was in flight when it opened changes nothing.
        let (row, opened) = fail(Some(row), 30_000);
        assert!(!opened);
        assert_eq!(permit(Some(&row), 30_001), Permit::WaitUntil(60_002));

        // A failed probe re-opens for twice as long, without counting a new
        // opening.
        let (row, opened) = fail(Some(row), 60_003);
        assert!(!opened);
        assert_eq!(row.openings, 1);
        assert_eq!(
            permit(Some(&row), 60_004),
            Permit::WaitUntil(60_003 + 120_000)
        );
    }

    #[test]
    fn the_cooldown_doubles_with_each_failed_probe_up_to_its_cap() {
        let mut row = None;
        for t in 0..3 {
            row = Some(fail(row, t).0);
        }
        let mut cooldowns = Vec::new();
        for _ in 0..8 {
            let current = row.clone().expect("open");
            let until = current.cooldown_until.expect("a cooldown");
            cooldowns.push((until - current.opened_at.expect("opened")) / 60_000);
            row = Some(fail(Some(current), until).0);
        }
        assert_eq!(cooldowns, [1, 2, 4, 8, 16, 32, 32, 32]);
    }
}
