//! Git failures in words safe to show to apps: libgit2's errors classified
//! ([`GitError::classify`]), never quoted, and the system's trouble told
//! apart from a damaged mirror ([`is_transient`]).

use git2::{ErrorClass, ErrorCode};

use super::socket::Cut;

/// Why a git operation failed, in words safe to show to apps
/// (docs/webhooks.md, sync_failed: `error.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitFailure {
    Auth,
    NotFound,
    Timeout,
    Network,
    /// The connection broke the address rule (a non-public address, another
    /// host, a local repository inside the data directory).
    Refused,
    Other,
}

impl GitFailure {
    /// The `error.type` of a `sync_failed` webhook.
    pub fn webhook_type(self) -> &'static str {
        match self {
            GitFailure::Auth => "auth_failure",
            GitFailure::NotFound => "not_found",
            GitFailure::Timeout => "timeout",
            GitFailure::Network | GitFailure::Refused | GitFailure::Other => "git_failure",
        }
    }

    /// The class a failed fetch leaves on the repository's breaker.
    pub fn class(self) -> entity::ErrorClass {
        use entity::ErrorClass;
        match self {
            GitFailure::Auth => ErrorClass::Auth,
            GitFailure::NotFound => ErrorClass::NotFound,
            GitFailure::Timeout => ErrorClass::Timeout,
            GitFailure::Network => ErrorClass::Network,
            GitFailure::Refused => ErrorClass::Refused,
            GitFailure::Other => ErrorClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GitFailure::Auth => "auth",
            GitFailure::NotFound => "not_found",
            GitFailure::Timeout => "timeout",
            GitFailure::Network => "network",
            GitFailure::Refused => "refused",
            GitFailure::Other => "other",
        }
    }
}

/// A classified git error with a message that carries no secret and no raw
/// transport output.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GitError {
    pub failure: GitFailure,
    pub message: String,
    /// The local mirror, not the remote, is at fault: rebuilding it may help.
    pub damaged_mirror: bool,
}

impl GitError {
    pub(crate) fn new(failure: GitFailure, message: impl Into<String>) -> Self {
        Self {
            failure,
            message: message.into(),
            damaged_mirror: false,
        }
    }

    /// A failure of Herald's own, not of the remote (a worker lost).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(GitFailure::Other, message)
    }

    /// Classifies a libgit2 error. The message is Herald's own summary, never
    /// libgit2's text, which can quote server responses.
    pub(super) fn classify(err: &git2::Error, cut: Option<Cut>) -> Self {
        // libgit2's own words stay at debug level: they can quote the server.
        tracing::debug!(code = ?err.code(), class = ?err.class(), detail = err.message(), "git operation failed");
        if let Some(cut) = cut {
            return Self::new(GitFailure::Timeout, cut.message());
        }
        let text = err.message().to_ascii_lowercase();
        if matches!(
            err.class(),
            ErrorClass::Odb
                | ErrorClass::Object
                | ErrorClass::Zlib
                | ErrorClass::Repository
                | ErrorClass::Index
        ) {
            return Self {
                damaged_mirror: true,
                ..Self::new(GitFailure::Other, "the local mirror is damaged")
            };
        }
        match (err.code(), err.class()) {
            (ErrorCode::Auth, _) | (_, ErrorClass::Ssh) => {
                Self::new(GitFailure::Auth, "the git remote refused the credentials")
            }
            // libgit2's words when a redirect would leave the host, or
            // comes where none is followed.
            _ if text.contains("cannot redirect") || text.contains("unexpected redirect") => {
                Self::new(
                    GitFailure::Refused,
                    "the git remote redirected to another address; redirects are not followed",
                )
            }
            // Refused by Herald's TLS stream (`git/tls.rs`): its words.
            (ErrorCode::Certificate, _) => Self::new(
                GitFailure::Network,
                super::tls::CertificateRefusal::of(err).message(),
            ),
            (ErrorCode::NotFound, _) => Self::new(
                GitFailure::NotFound,
                "the repository or branch was not found",
            ),
            _ if text.contains("401")
                || text.contains("403")
                || text.contains("authentication") =>
            {
                Self::new(GitFailure::Auth, "the git remote refused the credentials")
            }
            _ if text.contains("404")
                || text.contains("not found")
                || text.contains("no such file")
                || text.contains("no such repository")
                || text.contains("failed to resolve path")
                || text.contains("does not appear to be a git repository") =>
            {
                Self::new(GitFailure::NotFound, "the repository was not found")
            }
            _ if text.contains("timed out") || text.contains("timeout") => {
                Self::new(GitFailure::Timeout, "the git remote did not answer in time")
            }
            (_, ErrorClass::Net | ErrorClass::Http | ErrorClass::Os | ErrorClass::Ssl) => {
                Self::new(GitFailure::Network, "the git remote could not be reached")
            }
            _ => Self::new(GitFailure::Other, "the git operation failed"),
        }
    }
}

/// Whether a failure to open a mirror is the system's (it will pass) rather
/// than the mirror's.
pub(super) fn is_transient(err: &git2::Error) -> bool {
    let text = err.message().to_ascii_lowercase();
    err.class() == ErrorClass::NoMemory
        || [
            "too many open files",
            "permission denied",
            "resource temporarily unavailable",
            "out of memory",
        ]
        .iter()
        .any(|needle| text.contains(needle))
}
