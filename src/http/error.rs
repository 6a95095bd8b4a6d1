//! The one JSON error shape, `{"error": "<message>", "code": "<machine code>"}`,
//! produced in one place: [`ApiError::into_response`]. Handlers return
//! `ApiError`s; [`recover`] turns warp's own rejections into the same shape.
//! A 500 tells the caller nothing; its cause goes to the log.

use std::convert::Infallible;

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{HeaderValue, StatusCode};
use warp::reject::Rejection;
use warp::reply::{Reply, Response};

use crate::domain::Invalid;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A message for people.
    #[schema(example = "Invalid token")]
    pub error: String,
    /// A stable code for programs.
    #[schema(example = "unauthorized")]
    pub code: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("HTTP method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("a content-length header is required")]
    LengthRequired,
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(&'static str),
    /// Herald holds as many request bytes as it may (bodies, connections):
    /// the client tries again later.
    #[error("the server is busy; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    /// The git remote has no such repository (or branch).
    #[error("{0}")]
    RepositoryNotFound(String),
    /// The caller's own git credential cannot read the repository.
    #[error("{0}")]
    RepositoryAccessDenied(String),
    /// The git remote could not be reached to check access.
    #[error("{0}")]
    RepositoryUnreachable(String),
    /// A commit named in the request is in neither Herald's mirror nor the
    /// remote (or, abbreviated, not in the mirror).
    #[error("{0}")]
    CommitNotFound(String),
    /// A replay would write more events than one replay may.
    #[error("{0}")]
    ReplayTooLarge(String),
    /// One of the app's quotas (replays, open streams) is spent for now
    /// (docs/limits.md): `code` says which; nothing was written.
    #[error("{message}")]
    QuotaExceeded {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// The database did not answer in time (its pool, or its write lock,
    /// stayed taken): nothing was done, the same request may succeed later.
    #[error("the database is busy; retry in {retry_after_secs} s")]
    DatabaseBusy { retry_after_secs: u64 },
    /// The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) | ApiError::Busy { .. } | ApiError::DatabaseBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RepositoryNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RepositoryAccessDenied(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RepositoryUnreachable(_) => StatusCode::BAD_GATEWAY,
            ApiError::CommitNotFound(_) | ApiError::ReplayTooLarge(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::LengthRequired => "length_required",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Invalid(_) => "validation_failed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) | ApiError::Busy { .. } => "unavailable",
            ApiError::RepositoryNotFound(_) => "repository_not_found",
            ApiError::RepositoryAccessDenied(_) => "repository_access_denied",
            ApiError::RepositoryUnreachable(_) => "repository_unreachable",
            ApiError::CommitNotFound(_) => "commit_not_found",
            ApiError::ReplayTooLarge(_) => "replay_too_large",
            ApiError::QuotaExceeded { code, .. } => code,
            ApiError::DatabaseBusy { .. } => "database_busy",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }

    pub fn into_response(self) -> Response {
        self.to_response()
    }

    pub fn to_response(&self) -> Response {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code: self.code(),
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            // The unread rest of the body makes the connection unusable:
            // tell the client not to send another request on it.
            ApiError::PayloadTooLarge { .. }
            | ApiError::LengthRequired
            | ApiError::RequestTimeout => {
                headers.insert("connection", HeaderValue::from_static("close"));
            }
            ApiError::RateLimited { retry_after_secs }
            | ApiError::QuotaExceeded {
                retry_after_secs, ..
            }
            | ApiError::DatabaseBusy { retry_after_secs } => {
                headers.insert("retry-after", HeaderValue::from(*retry_after_secs));
            }
            ApiError::Busy { retry_after_secs } => {
                headers.insert("retry-after", HeaderValue::from(*retry_after_secs));
                headers.insert("connection", HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<actors::store::StoreError> for ApiError {
    /// A database too busy to answer is the caller's to retry (503), never
    /// a 500; any other store failure is internal.
    fn from(err: actors::store::StoreError) -> Self {
        if err.is_busy() {
            let cause = std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::warn!(error = %err, %cause, "the database was busy; answered 503");
            return ApiError::DatabaseBusy {
                retry_after_secs: DATABASE_BUSY_RETRY_SECS,
            };
        }
        ApiError::internal(err)
    }
}

/// The `Retry-After` of a `database_busy` answer: a write lock or a pooled
/// connection is usually free again within a second or two.
pub const DATABASE_BUSY_RETRY_SECS: u64 = 2;

/// Replies with the handler's response or its error in the one shape.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Turns every rejection, ours and warp's, into the JSON error shape.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    if let Some(err) = rejection.find::<ApiError>() {
        return Ok(err.to_response());
    }
    let error = if rejection.is_not_found() {
        ApiError::NotFound("Not found".to_owned())
    } else if let Some(err) = rejection.find::<warp::reject::InvalidQuery>() {
        // Before the 405: a route whose query did not parse is combined with
        // the later routes' method mismatches.
        ApiError::BadRequest(err.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge { limit: 0 }
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if let Some(err) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest(err.to_string())
    } else if let Some(err) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::BadRequest(err.to_string())
    } else {
        ApiError::internal(anyhow::anyhow!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database too busy to answer is a 503 to retry, never a 500.
    #[test]
    fn a_busy_database_is_a_503_with_retry_after() {
        let busy = actors::store::StoreError::Db(sea_orm::DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout,
        ));
        let response = ApiError::from(busy).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get("retry-after"),
            Some(&HeaderValue::from(DATABASE_BUSY_RETRY_SECS))
        );
        let other = actors::store::StoreError::Fenced("test");
        assert_eq!(
            ApiError::from(other).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
