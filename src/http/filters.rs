//! Reusable warp filters: state injection, bounded JSON bodies (each within
//! its size and time, all of them within one in-flight byte budget), bearer
//! authentication of apps and of the admin, and rate limits.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};

use bytes::{Buf, BytesMut};
use entity::app;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::SemaphorePermit;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::budget::BodyLimit;
use super::error::ApiError;
use super::ratelimit::Budget;
use super::server::ClientAddr;
use super::state::AppState;

pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// A group of routes: the first of `routes` that takes the request, tried
/// in order. Each route is boxed on its own and the choice made between
/// boxes, so no route's filter type nests another's: a chain of `.or`
/// nests every route's type (and its handler's future) in the next, and
/// compiling those types was most of the `herald` crate's build time.
pub fn first_of(
    routes: impl IntoIterator<Item = BoxedFilter<(Response,)>>,
) -> BoxedFilter<(Response,)> {
    routes
        .into_iter()
        .reduce(|tried, next| tried.or(next).unify().boxed())
        .expect("a route group has routes")
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
    authorization().and(client_ip()).and_then(move |header: Option<HeaderValue>, ip: IpAddr| {
        let state = state.clone();
        async move {
            let token = bearer(header.as_ref()).map_err(warp::reject::custom)?;
            // A token of Docora's shape may cost bcrypt checks (imported apps
            // that have not used theirs yet): an address that sends wrong ones
            // is locked out of trying, as console sign-ins are.
            let legacy = actors::docora::is_token(token);
            if legacy {
                state.limits.check_legacy_token(ip).map_err(warp::reject::custom)?;
            }
            let found = state
                .store
                .authenticate_app(token)
                .await
                .map_err(|err| warp::reject::custom(ApiError::from(err)))?;
            let Some(app) = found else {
                if legacy && state.limits.legacy_token_failed(ip) {
                    tracing::warn!(%ip, "an address sent too many wrong Docora tokens; locked out");
                }
                return Err(warp::reject::custom(ApiError::Unauthorized("Invalid token")));
            };
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

/// A request body read in full, holding its bytes of the
/// [`BodyBudget`](super::budget::BodyBudget)
/// until it is dropped.
pub struct BudgetedBody {
    bytes: BytesMut,
    _held: SemaphorePermit<'static>,
}

impl std::ops::Deref for BudgetedBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
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
                declared => Ok(declared),
            }
        })
        .and(warp::body::stream())
        .and_then(move |declared: Option<u64>, body| async move {
            let bytes = read_limited(body, limit, declared)
                .await
                .map_err(warp::reject::custom)?;
            parse_json::<T>(&bytes).map_err(warp::reject::custom)
        })
}

/// How much of an oversized body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a whole body within `limit` (413 above its size, 408 past its time,
/// 503 when the in-flight budget stays spent). A body of a `declared` length
/// (its Content-Length) is read into one buffer of that length, at most the
/// limit, made once: grown by doubling as its bytes came, it left each
/// buffer it outgrew behind in malloc's arenas, up to its own size again. A
/// buffer is only address space until the bytes written to it arrive.
pub async fn read_limited<S, B>(
    body: S,
    limit: BodyLimit,
    declared: Option<u64>,
) -> Result<BudgetedBody, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    tokio::time::timeout(limit.timeout, read_at_most(body, limit, declared))
        .await
        .unwrap_or(Err(ApiError::RequestTimeout))
}

async fn read_at_most<S, B>(
    body: S,
    limit: BodyLimit,
    declared: Option<u64>,
) -> Result<BudgetedBody, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let expected = declared.unwrap_or(0).min(limit.bytes);
    let mut collected = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut held = limit.budget.nothing();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        let refused = if collected.len() as u64 + chunk.remaining() as u64 > limit.bytes {
            Some(ApiError::PayloadTooLarge { limit: limit.bytes })
        } else {
            limit.budget.take(&mut held, chunk.remaining()).await.err()
        };
        if let Some(refused) = refused {
            // What was read goes back to the budget now, not once answered.
            drop((collected, held));
            // Read (and drop) a bounded rest of the body before answering, so
            // that the client, still sending, gets the answer rather than a
            // reset connection (a "lingering close").
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
            return Err(refused);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let len = part.len();
            chunk.advance(len);
        }
    }
    Ok(BudgetedBody {
        bytes: collected,
        _held: held,
    })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::http::budget::{BUDGET_WAIT, BodyBudget};

    /// A budget of `bytes` whose bodies wait `wait` for it.
    fn budget(bytes: u64, wait: Duration) -> &'static BodyBudget {
        Box::leak(Box::new(BodyBudget::waiting(bytes, wait)))
    }

    fn limit(budget: &'static BodyBudget) -> BodyLimit {
        BodyLimit {
            bytes: 1_000,
            timeout: Duration::from_secs(60),
            budget,
        }
    }

    fn body(chunks: &[usize]) -> impl Stream<Item = Result<Bytes, warp::Error>> + use<> {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|&n| Ok(Bytes::from(vec![b'x'; n])))
            .collect();
        futures::stream::iter(chunks)
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_until_dropped() {
        let budget = budget(1_000, BUDGET_WAIT);
        let read = read_limited(body(&[300, 300]), limit(budget), None)
            .await
            .expect("the body fits");
        assert_eq!(read.len(), 600);
        assert_eq!(budget.available(), 400);
        drop(read);
        assert_eq!(budget.available(), 1_000);
    }

    #[tokio::test]
    async fn a_declared_body_is_read_into_one_buffer_of_its_length_at_most_the_limit() {
        let budget = budget(1_000, BUDGET_WAIT);
        let read = read_limited(body(&[100; 6]), limit(budget), Some(600))
            .await
            .expect("the body fits");
        assert_eq!((read.len(), read.bytes.capacity()), (600, 600));
        drop(read);
        // A length past the limit reserves the limit, and is refused as
        // its bytes pass it.
        let refused = read_limited(body(&[600, 600]), limit(budget), Some(u64::MAX)).await;
        assert!(matches!(refused, Err(ApiError::PayloadTooLarge { .. })));
        // A body shorter than it said is what came.
        let short = read_limited(body(&[100]), limit(budget), Some(300))
            .await
            .expect("the body fits");
        assert_eq!(&*short, &[b'x'; 100][..]);
    }

    #[tokio::test]
    async fn a_body_past_the_budget_waits_then_is_refused_and_gives_back_its_bytes() {
        let budget = budget(1_000, Duration::from_millis(20));
        let held = read_limited(body(&[700]), limit(budget), None)
            .await
            .expect("the first body fits");
        let refused = read_limited(body(&[200, 200]), limit(budget), None).await;
        assert!(
            matches!(refused, Err(ApiError::Busy { retry_after_secs }) if retry_after_secs > 0),
            "{:?}",
            refused.err()
        );
        // The 200 bytes it had read went back.
        assert_eq!(budget.available(), 300);
        drop(held);
        let read = read_limited(body(&[200, 200]), limit(budget), None)
            .await
            .expect("the budget came back");
        assert_eq!(read.len(), 400);
    }

    #[tokio::test]
    async fn a_body_waiting_for_the_budget_gets_it_when_another_is_dropped() {
        // Longer than the test can take: the body must not time out.
        let budget = budget(1_000, Duration::from_secs(600));
        let held = read_limited(body(&[900]), limit(budget), None)
            .await
            .expect("the first body fits");
        let waiting = tokio::spawn(read_limited(body(&[500]), limit(budget), None));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "it waits while the budget is spent");
        drop(held);
        let read = waiting
            .await
            .expect("the task ends")
            .expect("the budget came back in time");
        assert_eq!(read.len(), 500);
    }
}
