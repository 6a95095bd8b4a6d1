//! How supervisors restart a failed child: exponential backoff and a
//! restart-intensity limit, one policy type and one tracker used by every
//! supervisor in the tree (the root, the scheduler for its watchers, the
//! dispatcher for its app actors). A child that fails more often than the
//! policy allows is given up on, and the failure escalates.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a supervisor restarts a failed child.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// More restarts than this within `window` and the supervisor gives up
    /// (the failure is escalated: the engine stops and readiness says so).
    pub max_restarts: usize,
    pub window: Duration,
    /// Delay before the first restart; doubled for each recent restart.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            window: Duration::from_secs(60),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// How a child ended, from a supervision event: `None` for events that are
/// not an ending (a child started, a group changed).
#[derive(Debug)]
pub struct Ended {
    pub child: ractor::ActorCell,
    /// Failed (an error or a panic), not stopped.
    pub failed: bool,
    /// The error, or the reason it was stopped with.
    pub reason: String,
}

impl Ended {
    pub fn of(event: ractor::SupervisionEvent) -> Option<Self> {
        match event {
            ractor::SupervisionEvent::ActorFailed(child, err) => Some(Self {
                child,
                failed: true,
                reason: err.to_string(),
            }),
            ractor::SupervisionEvent::ActorTerminated(child, _, reason) => Some(Self {
                child,
                failed: false,
                reason: reason.unwrap_or_else(|| "stopped".to_owned()),
            }),
            _ => None,
        }
    }
}

/// The restart history of one child.
#[derive(Debug, Default)]
pub struct RestartTracker {
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// Records a failure at `now`; the delay before restarting, or `None` when
    /// the child failed too often within the window.
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= policy.max_restarts {
            return None;
        }
        let exponent = u32::try_from(self.recent.len()).unwrap_or(u32::MAX).min(16);
        self.recent.push_back(now);
        Some(
            policy
                .base_backoff
                .saturating_mul(2u32.saturating_pow(exponent))
                .min(policy.max_backoff),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_intensity_limits_restarts() {
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        assert_eq!(
            tracker.on_failure(&policy(), t0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            tracker.on_failure(&policy(), t0),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            tracker.on_failure(&policy(), t0),
            Some(Duration::from_millis(250))
        );
        assert_eq!(tracker.on_failure(&policy(), t0), None);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            tracker.on_failure(&policy(), t0);
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            tracker.on_failure(&policy(), later),
            Some(Duration::from_millis(100))
        );
    }
}
