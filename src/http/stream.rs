//! Pull delivery (app token): a pull app's events for a consumer that
//! cannot take webhooks.
//!
//! - `GET /api/stream`: Server-Sent Events, one message per webhook the
//!   event would have been (`id`: a cursor, `event`: the endpoint, `data`:
//!   the body), a comment every [`HEARTBEAT`].
//! - `GET /api/changes?after=&limit=&wait=`: the same messages as JSON
//!   pages, with a long poll.
//! - `POST /api/stream/ack`: the consumer's cursor sent back.
//!
//! A cursor passed back (`Last-Event-ID`, `?after=`, an ack) marks
//! everything up to it consumed. The order and the places are the store's
//! (`store/stream.rs`); the bodies are rendered by the engine
//! (`delivery/pull.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actors::ids::AppId;
use actors::store::stream::{Consumed, StreamCursor};
use bytes::Bytes;
use entity::app;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::{Reply, Response};

mod feed;
pub(super) mod hub;
mod share;

use feed::{Feed, Next, Part};
use hub::Listening;
pub use hub::StreamHub;
pub use share::StreamLimits;
use share::{AppShare, reserved};

use super::error::{ApiError, respond};
use super::filters::{app_auth, first_of, json_body, query, with_state};
use super::state::AppState;
use crate::domain::Invalid;

/// A comment goes down an idle stream this often, so proxies keep it open
/// and the consumer knows it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long a stream waits before asking again for content the remote
/// could not give.
const STALLED_WAIT: Duration = Duration::from_secs(5);

/// How long a page of `GET /api/changes` waits for room among its app's
/// other pages and streams before it is answered busy.
const ROOM_WAIT: Duration = Duration::from_secs(30);

/// Room reserved beyond a message's body for its framing (cursor, endpoint,
/// SSE field names or the page's JSON around it).
const FRAMING_BYTES: usize = 256;

/// The longest long poll of `GET /api/changes`, in seconds.
const MAX_WAIT_S: u64 = 60;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body_limit = state.body_limit();
    let stream = warp::path!("api" / "stream")
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(query::<StreamQuery>())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_state(state.clone()))
        .then(stream)
        .map(respond);
    let changes = warp::path!("api" / "changes")
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(query::<ChangesQuery>())
        .and(with_state(state.clone()))
        .then(changes)
        .map(respond);
    let ack = warp::path!("api" / "stream" / "ack")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(json_body::<AckRequest>(body_limit))
        .and(with_state(state))
        .then(ack)
        .map(respond);
    first_of([stream.boxed(), changes.boxed(), ack.boxed()])
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Resume strictly after this cursor (the `id` of a message), as
    /// `Last-Event-ID` does; everything up to it is consumed.
    pub after: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Resume strictly after this cursor (`next` of the previous page);
    /// everything up to it is consumed. Absent: from the first event not
    /// consumed.
    pub after: Option<String>,
    /// Messages per page, 1 to 1000 (default 100); a page also ends once its
    /// messages reach `delivery.page_max_bytes` (it holds at least one).
    pub limit: Option<u64>,
    /// Seconds to wait for a message when there is none yet, 0 to 60
    /// (default 0: answer at once).
    pub wait: Option<u64>,
}

/// `POST /api/stream/ack`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The `id` of the last message the consumer handled.
    pub cursor: String,
}

/// One message: one webhook the event would have been.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeView {
    /// The cursor of this message.
    pub id: String,
    /// The webhook endpoint: `create`, `update`, `delete`,
    /// `file_too_large`, `sync_failed` or `synced`.
    pub event: &'static str,
    /// The `webhook-id` the webhook would have carried.
    pub webhook_id: String,
    /// The exact body the webhook would have carried.
    #[schema(value_type = Object)]
    pub body: Box<RawValue>,
}

/// One event of `GET /api/stream`, as Server-Sent Events carry it (its
/// fields are the SSE fields; comments between them are heartbeats).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation only: the stream is written by warp's SSE.
pub struct StreamEvent {
    /// The cursor of this message (send it back as `Last-Event-ID`).
    id: String,
    /// The webhook endpoint: `create`, `update`, `delete`, `file_too_large`,
    /// `sync_failed` or `synced`.
    event: String,
    /// The exact JSON body the webhook would have carried, on one line.
    data: String,
}

/// `GET /api/changes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangesPage {
    pub data: Vec<ChangeView>,
    /// The cursor to pass as `after` next time (the last message's, or the
    /// one passed when nothing came); null before any message.
    pub next: Option<String>,
}

/// The calling app's events as Server-Sent Events, from the first not
/// consumed or strictly after `Last-Event-ID` (or `?after=`), then live.
#[utoipa::path(get, path = "/api/stream", tag = "client",
    params(StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume strictly after this cursor")),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "An endless `text/event-stream`: per message `id` (cursor), `event` (endpoint) and `data` (the webhook's JSON body); a comment every 15 s", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "Malformed Last-Event-ID", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 409, description = "The app receives webhooks (`delivery` is `push`) or is disabled", body = super::error::ErrorBody),
        (status = 422, description = "Invalid or unknown cursor", body = super::error::ErrorBody),
        (status = 429, description = "The app holds `delivery.max_streams_per_app` streams and long polls here (`too_many_streams`); `Retry-After` says when to try again", body = super::error::ErrorBody)))]
pub(crate) async fn stream(
    app: app::Model,
    query: StreamQuery,
    last_event_id: Option<String>,
    state: AppState,
) -> Result<Response, ApiError> {
    let cursor = match (last_event_id, query.after) {
        (Some(header), _) => Some(header.trim().parse().map_err(|_| {
            ApiError::BadRequest("Last-Event-ID is not a stream cursor".to_owned())
        })?),
        (None, Some(after)) => Some(cursor("after", &after)?),
        (None, None) => None,
    };
    let listening = listen(&state, &app)?;
    let feed = Feed::open(&app, cursor, &state, Arc::clone(&listening.share)).await?;
    // The feed runs as a task of its own, one message ahead of the
    // connection, and ends with it (or when Herald stops).
    let (sender, mut receiver) = mpsc::channel(1);
    let until = tokio::time::Instant::now() + state.settings.delivery.stream_max_age;
    tokio::spawn(feed_stream(
        feed,
        listening,
        sender,
        state.closing.clone(),
        until,
    ));
    let messages = futures::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|message| message.map(Ok::<_, Infallible>))
    });
    let mut response = warp::reply::stream(messages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// A comment, sent when nothing else was for [`HEARTBEAT`].
const HEARTBEAT_COMMENT: &[u8] = b":keep-alive\n\n";

/// Sends the feed's messages as Server-Sent Events until the consumer
/// goes, the app leaves pull mode, Herald stops or `until`
/// (`delivery.stream_max_age`). Each message is made once the app's share
/// has room for it, and gives the room back when the connection has
/// written it.
async fn feed_stream(
    mut feed: Feed,
    mut listening: Listening,
    sender: mpsc::Sender<Bytes>,
    closing: CancellationToken,
    until: tokio::time::Instant,
) {
    let ends = async move {
        tokio::select! {
            () = closing.cancelled() => {}
            () = tokio::time::sleep_until(until) => {}
        }
    };
    tokio::pin!(ends);
    let share = Arc::clone(&listening.share);
    let news = &mut listening.news;
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        news.borrow_and_update();
        let wait = match feed.next().await {
            Ok(Next::Message(part)) => {
                let event = sse_event(&share, &part);
                tokio::pin!(event);
                let event = loop {
                    tokio::select! {
                        () = &mut ends => return,
                        () = sender.closed() => return,
                        event = &mut event => break event,
                        // Waiting for room among the app's other streams.
                        _ = heartbeat.tick() => {
                            let _ = sender.try_send(Bytes::from_static(HEARTBEAT_COMMENT));
                        }
                    }
                };
                tokio::select! {
                    () = &mut ends => return,
                    sent = sender.send(event) => if sent.is_err() { return },
                }
                heartbeat.reset();
                continue;
            }
            Ok(Next::CaughtUp) => None,
            Ok(Next::Stalled) => Some(STALLED_WAIT),
            Ok(Next::Closed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "a pull stream failed; its consumer reconnects");
                return;
            }
        };
        loop {
            tokio::select! {
                () = &mut ends => return,
                () = sender.closed() => return,
                _ = news.changed() => break,
                () = sleep_for(wait) => break,
                _ = heartbeat.tick() => {
                    let _ = sender.try_send(Bytes::from_static(HEARTBEAT_COMMENT));
                }
            }
        }
    }
}

/// `part` as one Server-Sent Event, made once there is room for it.
async fn sse_event(share: &AppShare, part: &Part) -> Bytes {
    let room = share.reserve_message(part.body_len() + FRAMING_BYTES).await;
    let (_, body) = part.make();
    let cursor = part.cursor.to_string();
    let mut event = Vec::with_capacity(body.len() + FRAMING_BYTES);
    for field in [
        b"id: ".as_slice(),
        cursor.as_bytes(),
        b"\nevent: ",
        part.endpoint().as_bytes(),
        b"\ndata: ",
        // The body is JSON on one line: a newline inside it is escaped.
        &body,
        b"\n\n",
    ] {
        event.extend_from_slice(field);
    }
    drop(body);
    reserved(event, vec![room])
}

/// The calling app's events as JSON pages, from the first not consumed or
/// strictly after `after`, waiting up to `wait` seconds for one.
#[utoipa::path(get, path = "/api/changes", tag = "client",
    params(ChangesQuery),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "A page of messages", body = ChangesPage),
        (status = 400, description = "Malformed query string", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 409, description = "The app receives webhooks (`delivery` is `push`) or is disabled", body = super::error::ErrorBody),
        (status = 422, description = "Invalid cursor, limit or wait", body = super::error::ErrorBody),
        (status = 429, description = "The app holds `delivery.max_streams_per_app` streams and long polls here (`too_many_streams`); `Retry-After` says when to try again", body = super::error::ErrorBody),
        (status = 503, description = "The app's other consumers hold all the room for messages not yet taken (`delivery.stream_buffer_bytes`) for 30 s; `Retry-After` says when to try again", body = super::error::ErrorBody)))]
pub(crate) async fn changes(
    app: app::Model,
    query: ChangesQuery,
    state: AppState,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit", "must be 1 to 1000"));
    }
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_S {
        return Err(invalid(
            "wait",
            format!("must be 0 to {MAX_WAIT_S} seconds"),
        ));
    }
    let after = query
        .after
        .as_deref()
        .map(|raw| cursor("after", raw))
        .transpose()?;
    let mut listening = listen(&state, &app)?;
    let share = Arc::clone(&listening.share);
    let mut feed = Feed::open(&app, after, &state, Arc::clone(&share)).await?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(wait).min(state.settings.delivery.stream_max_age);
    let page_max = usize::try_from(state.settings.delivery.page_max_bytes).unwrap_or(usize::MAX);
    let news = &mut listening.news;
    let mut page = Page::default();
    loop {
        news.borrow_and_update();
        let next = loop {
            match feed.next().await? {
                Next::Message(part) => {
                    let room = part.body_len() + FRAMING_BYTES;
                    let reserved = if page.data.is_empty() {
                        first_room(&state, &share, room).await?
                    } else if page.bytes + room > page_max {
                        break Next::CaughtUp;
                    } else {
                        match share.try_reserve_message(room) {
                            Some(reserved) => reserved,
                            // The app's other consumers hold the room:
                            // this page ends here.
                            None => break Next::CaughtUp,
                        }
                    };
                    page.push(&part, reserved, room)?;
                    if page.data.len() as u64 >= limit || page.bytes >= page_max {
                        break Next::CaughtUp;
                    }
                }
                other => break other,
            }
        };
        if !page.data.is_empty() || matches!(next, Next::Closed) {
            break;
        }
        tokio::select! {
            () = state.closing.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            _ = news.changed() => {}
            () = sleep_for(matches!(next, Next::Stalled).then_some(STALLED_WAIT)) => {}
        }
    }
    let next = page
        .data
        .last()
        .map(|last| last.id.clone())
        .or_else(|| after.map(|cursor| cursor.to_string()));
    let json = serde_json::to_vec(&ChangesPage {
        data: page.data,
        next,
    })
    .map_err(ApiError::internal)?;
    let mut response = Response::new(reserved(json, page.room).into());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A page of `GET /api/changes` being made, and the room its messages
/// hold until the connection has written it.
#[derive(Default)]
struct Page {
    data: Vec<ChangeView>,
    room: Vec<tokio::sync::OwnedSemaphorePermit>,
    bytes: usize,
}

impl Page {
    fn push(
        &mut self,
        part: &Part,
        room: tokio::sync::OwnedSemaphorePermit,
        bytes: usize,
    ) -> Result<(), ApiError> {
        let (webhook_id, body) = part.make();
        let body = String::from_utf8(body.to_vec()).map_err(ApiError::internal)?;
        self.data.push(ChangeView {
            id: part.cursor.to_string(),
            event: part.endpoint(),
            webhook_id,
            body: RawValue::from_string(body).map_err(ApiError::internal)?,
        });
        self.room.push(room);
        self.bytes += bytes;
        Ok(())
    }
}

/// Room for a page's first message: waited for, as long as [`ROOM_WAIT`]
/// (the app's other consumers hold it all meanwhile), then answered busy.
async fn first_room(
    state: &AppState,
    share: &AppShare,
    bytes: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let busy = ApiError::Busy {
        retry_after_secs: 5,
    };
    tokio::select! {
        reserved = share.reserve_message(bytes) => Ok(reserved),
        () = tokio::time::sleep(ROOM_WAIT) => Err(busy),
        () = state.closing.cancelled() => Err(busy),
    }
}

/// Marks everything up to the cursor consumed.
#[utoipa::path(post, path = "/api/stream/ack", tag = "client",
    request_body = AckRequest,
    security(("app_token" = [])),
    responses(
        (status = 204, description = "Consumed up to the cursor"),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 409, description = "The app receives webhooks (`delivery` is `push`) or is disabled", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 422, description = "Invalid or unknown cursor", body = super::error::ErrorBody)))]
pub(crate) async fn ack(
    app: app::Model,
    request: AckRequest,
    state: AppState,
) -> Result<Response, ApiError> {
    let cursor = cursor("cursor", &request.cursor)?;
    pulling(&app)?;
    consume(&state, &app, cursor, "cursor").await?;
    Ok(warp::http::StatusCode::NO_CONTENT.into_response())
}

/// Registers a stream (or long poll) of `app` with the hub that wakes it,
/// unless the app holds as many as it may here.
fn listen(state: &AppState, app: &app::Model) -> Result<Listening, ApiError> {
    state
        .streams
        .listen(&app.id, || state.engine.outbox_changes(), &state.closing)
        .map_err(|full| ApiError::QuotaExceeded {
            code: "too_many_streams",
            message: format!(
                "this app already holds {} open streams and long polls here (delivery.max_streams_per_app); close one and retry",
                full.limit
            ),
            retry_after_secs: 5,
        })
}

/// Sleeps for `wait`, or forever.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    Invalid {
        field,
        message: message.into(),
    }
    .into()
}

fn cursor(field: &'static str, raw: &str) -> Result<StreamCursor, ApiError> {
    raw.parse()
        .map_err(|_| invalid(field, "is not a stream cursor (the id of a message)"))
}

/// Only an active app in pull mode has a stream.
fn pulling(app: &app::Model) -> Result<(), ApiError> {
    if app.delivery_mode != entity::DeliveryMode::Pull {
        return Err(ApiError::Conflict(
            "the app receives webhooks; PATCH /api/app {\"delivery\": \"pull\"} to consume a stream"
                .to_owned(),
        ));
    }
    if app.status != entity::AppStatus::Active {
        return Err(ApiError::Conflict("the app is disabled".to_owned()));
    }
    Ok(())
}

async fn consume(
    state: &AppState,
    app: &app::Model,
    cursor: StreamCursor,
    field: &'static str,
) -> Result<(), ApiError> {
    match state
        .store
        .consume(&AppId::stored(app.id.as_str()), cursor)
        .await?
    {
        Consumed::Events(_) => Ok(()),
        Consumed::Ahead => Err(invalid(
            field,
            "is ahead of the stream: it is not the id of a message it sent",
        )),
    }
}
