//! Rate limits (GCRA, through `governor`): per client address on every route,
//! a tighter per-address budget on onboarding, a per-app budget on the
//! client API, and a per-address budget of its own for inbound push webhooks.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::task::JoinHandle;

use super::error::ApiError;
use crate::config::RateLimitSettings;

#[derive(Debug, Clone, Copy)]
pub enum Budget {
    PerIp,
    Onboarding,
    Inbound,
}

pub struct RateLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    onboarding: DefaultKeyedRateLimiter<IpAddr>,
    inbound: DefaultKeyedRateLimiter<IpAddr>,
    per_app: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            per_ip: RateLimiter::keyed(per_minute(settings.per_ip_per_minute)),
            onboarding: RateLimiter::keyed(per_minute(settings.onboarding_per_minute)),
            inbound: RateLimiter::keyed(per_minute(settings.inbound_per_minute)),
            per_app: RateLimiter::keyed(per_minute(settings.per_app_per_minute)),
            clock: DefaultClock::default(),
        }
    }

    pub fn check_ip(&self, budget: Budget, ip: IpAddr) -> Result<(), ApiError> {
        let limiter = match budget {
            Budget::PerIp => &self.per_ip,
            Budget::Onboarding => &self.onboarding,
            Budget::Inbound => &self.inbound,
        };
        limiter
            .check_key(&ip)
            .map_err(|not_until| self.limited(not_until.wait_time_from(self.clock.now())))
    }

    pub fn check_app(&self, app_id: &str) -> Result<(), ApiError> {
        self.per_app
            .check_key(&app_id.to_owned())
            .map_err(|not_until| self.limited(not_until.wait_time_from(self.clock.now())))
    }

    fn limited(&self, wait: Duration) -> ApiError {
        ApiError::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        }
    }

    /// Forgets keys whose budget is full again, so memory stays bounded.
    fn prune(&self) {
        self.per_ip.retain_recent();
        self.onboarding.retain_recent();
        self.inbound.retain_recent();
        self.per_app.retain_recent();
    }
}

/// Prunes the limiters every minute until aborted.
pub fn spawn_pruner(limits: Arc<RateLimits>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limits.prune();
        }
    })
}
