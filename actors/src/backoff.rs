//! Retry delays (docs/webhooks.md, Retries and backoff): the five policies of a
//! well-known queue, with `base` and `cap`, `n` being the number of failed
//! attempts so far minus one (the first retry waits `base`-ish). Jitter draws
//! from the thread's CSPRNG, seeded by the operating system.

use std::time::Duration;

use rand::RngExt;

/// The five policies, stored as an app's `backoff_policy`.
pub use entity::BackoffPolicy as Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub policy: Policy,
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The backoff of an app: its own settings where it has them, else
    /// `default` (the server's configuration).
    pub fn of_app(app: &entity::app::Model, default: Backoff) -> Backoff {
        let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Backoff {
            policy: app.backoff_policy.unwrap_or(default.policy),
            base: app.backoff_base_ms.map_or(default.base, millis),
            cap: app.backoff_max_ms.map_or(default.cap, millis),
        }
    }

    /// The wait before retry number `n` (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, |upper| {
            if upper.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rand::rng().random_range(0..=upper_nanos(upper)))
            }
        })
    }

    /// `delay` with the random draw supplied (`draw(upper)` returns a value
    /// in `[0, upper]`), for tests.
    pub fn delay_with(&self, n: u32, draw: impl FnOnce(Duration) -> Duration) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(n.min(31)))
            .min(self.cap);
        match self.policy {
            Policy::Fixed => self.base.min(self.cap),
            Policy::Linear => self.base.saturating_mul(n.max(1)).min(self.cap),
            Policy::Exponential => exponential,
            Policy::ExpFullJitter => draw(exponential).min(exponential),
            Policy::ExpEqualJitter => {
                let half = exponential / 2;
                half + draw(half).min(half)
            }
        }
    }
}

fn upper_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(policy: Policy) -> Backoff {
        Backoff {
            policy,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn deterministic_policies_follow_their_formulas() {
        let secs = |p: Policy, n: u32| backoff(p).delay(n).as_secs();
        assert_eq!([0, 1, 5].map(|n| secs(Policy::Fixed, n)), [1, 1, 1]);
        assert_eq!(
            [0, 1, 5, 100].map(|n| secs(Policy::Linear, n)),
            [1, 1, 5, 60]
        );
        assert_eq!(
            [0, 1, 5, 6, 40].map(|n| secs(Policy::Exponential, n)),
            [1, 2, 32, 60, 60]
        );
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let full = backoff(Policy::ExpFullJitter);
        assert_eq!(full.delay_with(3, |_| Duration::ZERO), Duration::ZERO);
        assert_eq!(full.delay_with(3, |upper| upper), Duration::from_secs(8));
        let equal = backoff(Policy::ExpEqualJitter);
        assert_eq!(
            equal.delay_with(3, |_| Duration::ZERO),
            Duration::from_secs(4)
        );
        assert_eq!(equal.delay_with(3, |upper| upper), Duration::from_secs(8));
        for n in 0..10 {
            let d = full.delay(n);
            assert!(d <= Duration::from_secs(60));
            let e = equal.delay(n);
            let c = backoff(Policy::Exponential).delay(n);
            assert!(e >= c / 2 && e <= c, "{e:?} within [{:?}, {c:?}]", c / 2);
        }
    }
}
