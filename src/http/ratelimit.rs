//! Rate limits (GCRA, through `governor`): per client address on every route,
//! a tighter per-address budget on onboarding, a per-app budget on the
//! client API, a per-address budget of its own for inbound push webhooks,
//! and for the console's sign-in a per-address budget plus a lockout after
//! repeated failures; the same lockout, kept apart, for wrong tokens of
//! Docora's shape (each costs bcrypt checks until every imported app has
//! used its token once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::task::JoinHandle;

use super::error::ApiError;
use crate::config::RateLimitSettings;

#[derive(Debug, Clone, Copy)]
pub enum Budget {
    PerIp,
    Onboarding,
    Inbound,
    SignIn,
}

/// A keyed limiter that tells how much budget is left after a check.
type CountingLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

pub struct RateLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    onboarding: DefaultKeyedRateLimiter<IpAddr>,
    inbound: DefaultKeyedRateLimiter<IpAddr>,
    per_app: DefaultKeyedRateLimiter<String>,
    /// Every console sign-in attempt of an address.
    sign_in: DefaultKeyedRateLimiter<IpAddr>,
    sign_in_lockout: Lockout,
    /// Wrong Docora-shaped tokens of an address, apart from sign-ins.
    legacy_token_lockout: Lockout,
    clock: DefaultClock,
}

/// An address's failures: `rate_limit.sign_in_failures` of them within
/// `rate_limit.sign_in_lockout` lock it out for that long; even the right
/// token is refused then, so guessing cannot go on at the pace of a budget.
struct Lockout {
    failures: CountingLimiter,
    locked_out: Mutex<HashMap<IpAddr, Instant>>,
    lockout: Duration,
}

impl Lockout {
    fn new(settings: &RateLimitSettings) -> Self {
        Self {
            failures: RateLimiter::keyed(failures_within(
                settings.sign_in_failures,
                settings.sign_in_lockout,
            ))
            .with_middleware::<StateInformationMiddleware>(),
            locked_out: Mutex::new(HashMap::new()),
            lockout: settings.sign_in_lockout,
        }
    }

    /// How long `ip` is still locked out, if it is.
    fn left(&self, ip: IpAddr) -> Option<Duration> {
        let until = self.locked_out().get(&ip).copied()?;
        Some(until.saturating_duration_since(Instant::now())).filter(|left| !left.is_zero())
    }

    /// Counts a failure of `ip`; whether it is now locked out.
    fn failed(&self, ip: IpAddr) -> bool {
        let spent = match self.failures.check_key(&ip) {
            Ok(left) => left.remaining_burst_capacity() == 0,
            Err(_) => true,
        };
        if spent {
            self.locked_out().insert(ip, Instant::now() + self.lockout);
        }
        spent
    }

    fn locked_out(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // A map of deadlines is whole after any panic: reuse it.
        self.locked_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn prune(&self) {
        self.failures.retain_recent();
        let now = Instant::now();
        self.locked_out().retain(|_, until| *until > now);
    }
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// `failures` within `window`: a burst of that many, one more allowed every
/// `window / failures`.
fn failures_within(failures: u32, window: Duration) -> Quota {
    let failures = NonZeroU32::new(failures).unwrap_or(NonZeroU32::MIN);
    let period = (window / failures.get()).max(Duration::from_millis(1));
    Quota::with_period(period)
        .expect("the period is at least a millisecond")
        .allow_burst(failures)
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            per_ip: RateLimiter::keyed(per_minute(settings.per_ip_per_minute)),
            onboarding: RateLimiter::keyed(per_minute(settings.onboarding_per_minute)),
            inbound: RateLimiter::keyed(per_minute(settings.inbound_per_minute)),
            per_app: RateLimiter::keyed(per_minute(settings.per_app_per_minute)),
            sign_in: RateLimiter::keyed(per_minute(settings.sign_in_per_minute)),
            sign_in_lockout: Lockout::new(settings),
            legacy_token_lockout: Lockout::new(settings),
            clock: DefaultClock::default(),
        }
    }

    /// Whether `ip` may attempt a console sign-in now: not locked out, and
    /// within its sign-in budget (every attempt counts).
    pub fn check_sign_in(&self, ip: IpAddr) -> Result<(), ApiError> {
        if let Some(left) = self.sign_in_lockout.left(ip) {
            return Err(self.limited(left));
        }
        self.check_ip(Budget::SignIn, ip)
    }

    /// Counts a failed sign-in of `ip`; the one that spends its failure
    /// budget locks the address out for `rate_limit.sign_in_lockout`.
    /// Whether the address is now locked out.
    pub fn sign_in_failed(&self, ip: IpAddr) -> bool {
        self.sign_in_lockout.failed(ip)
    }

    /// Whether `ip` may present a Docora-shaped token now: not locked out
    /// by earlier wrong ones.
    pub fn check_legacy_token(&self, ip: IpAddr) -> Result<(), ApiError> {
        match self.legacy_token_lockout.left(ip) {
            Some(left) => Err(self.limited(left)),
            None => Ok(()),
        }
    }

    /// Counts a wrong Docora-shaped token of `ip`, as a failed sign-in
    /// counts (`rate_limit.sign_in_failures` within
    /// `rate_limit.sign_in_lockout`), apart from sign-ins.
    pub fn legacy_token_failed(&self, ip: IpAddr) -> bool {
        self.legacy_token_lockout.failed(ip)
    }

    pub fn check_ip(&self, budget: Budget, ip: IpAddr) -> Result<(), ApiError> {
        let limiter = match budget {
            Budget::PerIp => &self.per_ip,
            Budget::Onboarding => &self.onboarding,
            Budget::Inbound => &self.inbound,
            Budget::SignIn => &self.sign_in,
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
        self.sign_in.retain_recent();
        self.sign_in_lockout.prune();
        self.legacy_token_lockout.prune();
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
