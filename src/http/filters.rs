//! Reusable warp filters: state injection, bounded JSON bodies, bearer
//! authentication of apps and of the admin, and rate limits.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use entity::app;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::HeaderValue;
use warp::{Filter, Rejection};

use super::AppState;
use super::error::ApiError;
use super::ratelimit::Budget;
use super::server::ClientAddr;

pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The client's address (behind a reverse proxy this is the proxy's).
pub fn client_ip() -> impl Filter<Extract = (IpAddr,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<ClientAddr>().map(|addr: Option<ClientAddr>| {
        addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ClientAddr(a)| a.ip())
    })
}

/// Counts the request against its client address's budget (every route).
pub fn per_ip_limit(state: AppState) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    limit_by_ip(state, Budget::PerIp)
}

/// Counts the request against the tighter onboarding budget of its address.
pub fn onboarding_limit(state: AppState) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    limit_by_ip(state, Budget::Onboarding)
}

fn limit_by_ip(
    state: AppState,
    budget: Budget,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    client_ip()
        .and_then(move |ip: IpAddr| {
            let state = state.clone();
            async move {
                state
                    .limits
                    .check_ip(budget, ip)
                    .map_err(warp::reject::custom)
            }
        })
        .untuple_one()
}

/// The raw `Authorization` header, if any. Read as bytes rather than as a
/// `String`: warp rejects a header that is not visible ASCII, and that
/// rejection would fall through to the other routes instead of being a 401.
fn authorization() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("authorization")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// Parses `Authorization: Bearer <token>`; anything else (missing, another
/// scheme, bytes that are not visible ASCII) is a 401.
fn bearer(header: Option<&HeaderValue>) -> Result<&str, ApiError> {
    header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized(
            "Missing or invalid Authorization header",
        ))
}

/// The app whose token the request carries; also counts the request against
/// that app's rate budget.
pub fn app_auth(
    state: AppState,
) -> impl Filter<Extract = (app::Model,), Error = Rejection> + Clone {
    authorization().and_then(move |header: Option<HeaderValue>| {
        let state = state.clone();
        async move {
            let token = bearer(header.as_ref()).map_err(warp::reject::custom)?;
            let app = state
                .store
                .authenticate_app(token)
                .await
                .map_err(|err| warp::reject::custom(ApiError::from(err)))?
                .ok_or_else(|| warp::reject::custom(ApiError::Unauthorized("Invalid token")))?;
            state
                .limits
                .check_app(&app.id)
                .map_err(warp::reject::custom)?;
            Ok::<_, Rejection>(app)
        }
    })
}

/// Passes only requests that carry the admin token.
pub fn admin_auth(state: AppState) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    authorization()
        .and_then(move |header: Option<HeaderValue>| {
            let state = state.clone();
            async move {
                let token = bearer(header.as_ref()).map_err(warp::reject::custom)?;
                if actors::crypto::tokens_match(token, &state.admin_token) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::Unauthorized(
                        "Invalid token",
                    )))
                }
            }
        })
        .untuple_one()
}

/// A query string deserialised into `T`; a malformed one (a value of the
/// wrong type, an unknown encoding) is a 400 here, rather than a rejection
/// that later routes would turn into a 404 or 405.
pub fn query<T: DeserializeOwned + Send + 'static>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            serde_urlencoded::from_str::<T>(&raw).map_err(|err| {
                warp::reject::custom(ApiError::BadRequest(format!("invalid query string: {err}")))
            })
        })
}

/// How much of a request body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Larger bodies are answered 413.
    pub bytes: u64,
    /// A body that has not arrived in full by then is answered 408, so a
    /// client cannot hold a connection by trickling its body.
    pub timeout: Duration,
}

/// A JSON body of at most `limit.bytes` bytes, whether or not the client sent
/// a Content-Length: 413 above the limit, 408 when it does not arrive within
/// `limit.timeout`, 400 when it is not JSON, 422 when it is JSON of the wrong
/// shape (a missing field, a wrong type).
pub fn json_body<T: DeserializeOwned + Send>(
    limit: BodyLimit,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |length: Option<u64>| async move {
            match length {
                Some(length) if length > limit.bytes => {
                    Err(warp::reject::custom(ApiError::PayloadTooLarge {
                        limit: limit.bytes,
                    }))
                }
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |body| async move {
            let bytes = read_limited(body, limit)
                .await
                .map_err(warp::reject::custom)?;
            parse_json::<T>(&bytes).map_err(warp::reject::custom)
        })
}

/// How much of an oversized body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a whole body within `limit` (413 above its size, 408 past its time).
pub async fn read_limited<S, B>(body: S, limit: BodyLimit) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    tokio::time::timeout(limit.timeout, read_at_most(body, limit.bytes))
        .await
        .unwrap_or(Err(ApiError::RequestTimeout))
}

async fn read_at_most<S, B>(body: S, limit: u64) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        if collected.len() as u64 + chunk.remaining() as u64 > limit {
            // Read (and drop) a bounded rest of the body before answering, so
            // that the client, still sending, gets the 413 rather than a reset
            // connection (a "lingering close").
            let drain = async {
                let mut drained = 0usize;
                while let Some(Ok(chunk)) = body.next().await {
                    drained += chunk.remaining();
                    if drained > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            return Err(ApiError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let len = part.len();
            chunk.advance(len);
        }
    }
    Ok(collected)
}

/// Deserialises a body, telling syntax errors (400) from shape errors (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the request body is empty".into()));
    }
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => ApiError::Invalid(crate::domain::Invalid {
                field: "body",
                message: strip_position(&err.to_string()),
            }),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(strip_position(&err.to_string()))
            }
        }
    })
}

/// serde_json ends its messages with " at line 1 column 12"; keep the message.
fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}
