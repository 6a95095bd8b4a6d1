//! The states and kinds Herald's tables hold, as types: stored as their
//! snake_case names (the same words the API and the webhooks use), so SQLite
//! and PostgreSQL hold plain strings and a reader of the database sees words.

use sea_orm::entity::prelude::*;

/// Implements `as_str` and `Display` with the stored name of each variant.
macro_rules! named {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The stored name, as the API and the webhooks show it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The variant stored under `name`.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// How an app receives its events: `push`, as webhooks Herald sends (the
/// default), or `pull`, from `GET /api/stream` and `GET /api/changes`, where
/// they wait for the app's consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum DeliveryMode {
    #[default]
    Push,
    Pull,
    /// Published to a NATS JetStream subject.
    Nats,
    /// Published to a RabbitMQ (AMQP 0-9-1) exchange.
    Amqp,
    /// Added to a Redis stream.
    Redis,
}

named!(DeliveryMode {
    Push => "push",
    Pull => "pull",
    Nats => "nats",
    Amqp => "amqp",
    Redis => "redis",
});

impl DeliveryMode {
    /// Whether Herald sends the app's events itself (webhooks or a broker),
    /// rather than waiting for its consumer to read them.
    pub fn is_sent(self) -> bool {
        self != Self::Pull
    }

    /// Whether the app's events go to a broker.
    pub fn is_broker(self) -> bool {
        matches!(self, Self::Nats | Self::Amqp | Self::Redis)
    }
}

/// How a repository's scan ended (`scans.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum ScanEnd {
    /// The branch moved: the changes were written to the outbox.
    Changed,
    /// The branch was where the last scan left it.
    Unchanged,
    /// No subscriber's credential could read the repository.
    NoAccess,
    /// The fetch or the diff failed.
    Failed,
}

named!(ScanEnd {
    Changed => "changed",
    Unchanged => "unchanged",
    NoAccess => "no_access",
    Failed => "failed",
});

/// Where an event is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum EventStatus {
    /// Waiting for its turn, or for its next attempt.
    Pending,
    Delivered,
    /// Given up on; its subscription waits behind it until it is retried
    /// or skipped.
    Dead,
    /// Passed over (by an operator, or a notification that could not be
    /// delivered): the subscription goes on.
    Skipped,
}

named!(EventStatus {
    Pending => "pending",
    Delivered => "delivered",
    Dead => "dead",
    Skipped => "skipped",
});

/// What an event tells its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
    SyncFailed,
    /// Opt-in per app: the snapshot's events before it were all delivered.
    Synced,
    /// Opt-in per app: a submodule's commit moved (its path, the old and new
    /// commit and its URL in `payload`).
    Submodule,
}

named!(EventKind {
    Created => "created",
    Updated => "updated",
    Deleted => "deleted",
    SyncFailed => "sync_failed",
    Synced => "synced",
    Submodule => "submodule",
});

impl EventKind {
    /// Notifications are best effort: one that cannot be delivered is
    /// skipped rather than blocking the file events behind it.
    pub const fn is_notification(self) -> bool {
        matches!(self, EventKind::SyncFailed | EventKind::Synced)
    }

    /// The webhook endpoint its body goes to (a file too large to send
    /// goes to `file_too_large` instead).
    pub const fn endpoint(self) -> &'static str {
        match self {
            EventKind::Created => "create",
            EventKind::Updated => "update",
            EventKind::Deleted => "delete",
            EventKind::SyncFailed => "sync_failed",
            EventKind::Synced => "synced",
            EventKind::Submodule => "submodule",
        }
    }

    /// A file's content travels with it.
    pub const fn carries_content(self) -> bool {
        matches!(self, EventKind::Created | EventKind::Updated)
    }
}

/// Where a subscription is (docs/change-detection.md, Subscription statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum SubscriptionStatus {
    /// Its first snapshot (the whole tree) is still to be made.
    PendingSnapshot,
    Syncing,
    Synced,
    Failed,
    /// The endpoint answered 410 Gone: nothing is sent until it is resumed.
    Paused,
}

named!(SubscriptionStatus {
    PendingSnapshot => "pending_snapshot",
    Syncing => "syncing",
    Synced => "synced",
    Failed => "failed",
    Paused => "paused",
});

/// Whether an app receives webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum AppStatus {
    Active,
    /// By an operator, or after its endpoint failed longer than
    /// `delivery.disable_after`.
    Disabled,
}

named!(AppStatus {
    Active => "active",
    Disabled => "disabled",
});

/// Whether a subscriber's credential reads its repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum AccessState {
    /// Proven at registration or at the last check.
    Granted,
    /// Refused at the last check: the subscriber gets nothing until a
    /// working credential is proven.
    Denied,
}

named!(AccessState {
    Granted => "granted",
    Denied => "denied",
});

/// Where a bulk operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum BulkStatus {
    /// Being worked through by an instance, or waiting for one to take it.
    Running,
    /// Every event it took on was handled.
    Done,
    /// Stopped by an operator before its end.
    Cancelled,
    /// Given up on; `error` says why.
    Failed,
}

named!(BulkStatus {
    Running => "running",
    Done => "done",
    Cancelled => "cancelled",
    Failed => "failed",
});

/// What a bulk operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum BulkKind {
    /// Queues dead events again (of one app, or of every app).
    RetryDead,
}

named!(BulkKind {
    RetryDead => "retry_dead",
});

/// Where a stored inbound push hook is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum HookStatus {
    /// Stored, not processed yet.
    Received,
    /// Processed: at least one watched repository was told to scan.
    Triggered,
    /// Processed: nothing to do (tag push, branch not watched, unknown
    /// repository).
    Ignored,
    /// Processed: the body is not a payload Herald can read.
    Invalid,
}

named!(HookStatus {
    Received => "received",
    Triggered => "triggered",
    Ignored => "ignored",
    Invalid => "invalid",
});

/// The git host that sent an inbound push hook (`inbound_hooks.provider`),
/// named as in its URL (`/hooks/{name}`) and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Provider {
    #[sea_orm(string_value = "github")]
    GitHub,
    #[sea_orm(string_value = "gitlab")]
    GitLab,
    /// Gitea and Forgejo (which sends Gitea's headers and its own).
    #[sea_orm(string_value = "gitea")]
    Gitea,
    /// Bitbucket Cloud.
    #[sea_orm(string_value = "bitbucket")]
    Bitbucket,
}

named!(Provider {
    GitHub => "github",
    GitLab => "gitlab",
    Gitea => "gitea",
    Bitbucket => "bitbucket",
});

/// How an app's retries are spaced (`apps.backoff_policy`; docs/webhooks.md,
/// Retries and backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum BackoffPolicy {
    Fixed,
    Linear,
    Exponential,
    ExpFullJitter,
    ExpEqualJitter,
}

named!(BackoffPolicy {
    Fixed => "fixed",
    Linear => "linear",
    Exponential => "exponential",
    ExpFullJitter => "exp_full_jitter",
    ExpEqualJitter => "exp_equal_jitter",
});

/// Where a circuit breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum BreakerStatus {
    /// Requests go.
    Closed,
    /// Requests wait until the cooldown ends; then one probe goes.
    Open,
    /// Kept for rows written by earlier versions: treated as open.
    HalfOpen,
}

named!(BreakerStatus {
    Closed => "closed",
    Open => "open",
    HalfOpen => "half_open",
});

/// What a circuit breaker guards: its row's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum BreakerKind {
    /// A repository's git remote (subject: the repository id).
    Git,
    /// An app's endpoint (subject: the app id).
    Delivery,
}

named!(BreakerKind {
    Git => "git",
    Delivery => "delivery",
});

/// Why an attempt (a webhook or a git operation) failed, as stored in an
/// attempt's and a breaker's `error_class` and shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(
    rs_type = "String",
    db_type = "String(StringLen::None)",
    rename_all = "snake_case"
)]
pub enum ErrorClass {
    /// No answer (or no git reply) in time.
    Timeout,
    /// The endpoint could not be reached.
    Connect,
    /// The endpoint resolved to an address webhooks may not reach.
    Ssrf,
    /// The request failed on the way (reset, malformed answer).
    Request,
    /// The server's configuration forbids the endpoint's URL: nothing was
    /// sent, and the endpoint is not to blame.
    Policy,
    /// The endpoint answered with a redirect, which is never followed.
    Redirect,
    /// The endpoint answered with a status that is not a success.
    HttpStatus,
    /// Nothing was sent: the file's content is gone from the mirror, or its
    /// LFS server lacks or refuses its object, or sent other bytes.
    ContentMissing,
    /// Nothing was sent yet: the file's content could not be read now (its
    /// commit is being fetched again, or its LFS server could not be
    /// asked); the event is retried.
    ContentUnavailable,
    /// Nothing was sent: the webhook's body could not be made.
    Payload,
    /// The git remote refused the credential.
    Auth,
    /// The git remote or its branch does not exist.
    NotFound,
    /// The git remote's network failed.
    Network,
    /// A git connection broke the address rule.
    Refused,
    /// Any other git failure.
    Other,
    /// The broker refused the message as it refuses any (its credentials,
    /// permissions, a full stream, no route, a negative acknowledgement):
    /// counted against the app's breaker as an endpoint that is down.
    Broker,
    /// The broker refused this message only (it is larger than the broker
    /// takes): the destination works, the event fails.
    Rejected,
    /// The TLS connection to a broker or a webhook endpoint failed: its
    /// certificate was refused (not trusted, another host's, out of date)
    /// or the handshake was. Counted against the app's breaker as an
    /// endpoint that is down.
    Tls,
}

named!(ErrorClass {
    Timeout => "timeout",
    Connect => "connect",
    Ssrf => "ssrf",
    Request => "request",
    Policy => "policy",
    Redirect => "redirect",
    HttpStatus => "http_status",
    ContentMissing => "content_missing",
    ContentUnavailable => "content_unavailable",
    Payload => "payload",
    Auth => "auth",
    NotFound => "not_found",
    Network => "network",
    Refused => "refused",
    Other => "other",
    Broker => "broker",
    Rejected => "rejected",
    Tls => "tls",
});

/// What one delivery attempt came to: the `outcome` label of Herald's
/// delivery metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter)]
pub enum DeliveryOutcome {
    /// A 2xx.
    Delivered,
    /// Any failure that will be retried.
    Failed,
    /// 429 or 503 with `Retry-After`.
    RateLimited,
    /// 410: the subscription is paused.
    Gone,
    /// The event failed for the last time (or cannot be sent at all).
    Dead,
}

named!(DeliveryOutcome {
    Delivered => "delivered",
    Failed => "failed",
    RateLimited => "rate_limited",
    Gone => "gone",
    Dead => "dead",
});

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, Iterable};

    use super::*;

    /// The stored value and the name the API shows are the same word, and
    /// each name reads back as its variant.
    #[test]
    fn stored_values_are_the_names() {
        macro_rules! round_trip {
            ($($ty:ident),+) => {$(
                for value in $ty::iter() {
                    assert_eq!(value.to_value(), value.as_str());
                    assert_eq!($ty::parse(value.as_str()), Some(value));
                }
            )+};
        }
        round_trip!(
            EventStatus,
            EventKind,
            SubscriptionStatus,
            AppStatus,
            AccessState,
            BreakerStatus,
            HookStatus,
            BulkStatus,
            BulkKind,
            BreakerKind,
            Provider,
            ErrorClass,
            BackoffPolicy
        );
        for outcome in DeliveryOutcome::iter() {
            assert_eq!(DeliveryOutcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(EventStatus::parse("Pending"), None);
    }
}
