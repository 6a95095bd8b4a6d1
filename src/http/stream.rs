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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use actors::delivery::pull::{Pulled, PulledEvent, Sources};
use actors::ids::AppId;
use actors::store::stream::{Consumed, StreamCursor};
use entity::{app, event};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};
use warp::sse::Event;

mod hub;

use hub::Listening;
pub use hub::StreamHub;

use super::AppState;
use super::error::{ApiError, respond};
use super::filters::{app_auth, json_body, query, with_state};
use crate::domain::Invalid;

/// A comment goes down an idle stream this often, so proxies keep it open
/// and the consumer knows it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long a stream waits before asking again for content the remote
/// could not give.
const STALLED_WAIT: Duration = Duration::from_secs(5);

/// Events read from the store at a time.
const PAGE: u64 = 64;

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
    stream.or(changes).unify().or(ack).unify().boxed()
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
    /// Messages per page, 1 to 1000 (default 100).
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
        (status = 422, description = "Invalid or unknown cursor", body = super::error::ErrorBody)))]
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
    let feed = Feed::open(&app, cursor, &state).await?;
    // The feed runs as a task of its own, one message ahead of the
    // connection, and ends with it (or when Herald stops).
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let listening = listen(&state, &app);
    let until = tokio::time::Instant::now() + state.settings.delivery.stream_max_age;
    tokio::spawn(feed_stream(
        feed,
        listening,
        sender,
        state.closing.clone(),
        until,
    ));
    let messages = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok::<_, Infallible>(event), receiver))
    });
    let keep_alive = warp::sse::keep_alive()
        .interval(HEARTBEAT)
        .text("keep-alive");
    Ok(warp::sse::reply(keep_alive.stream(messages)).into_response())
}

/// Sends the feed's messages as Server-Sent Events until the consumer
/// goes, the app leaves pull mode, Herald stops or `until`
/// (`delivery.stream_max_age`).
async fn feed_stream(
    mut feed: Feed,
    mut listening: Listening,
    sender: mpsc::Sender<Event>,
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
    let news = &mut listening.news;
    loop {
        news.borrow_and_update();
        let wait = match feed.next().await {
            Ok(Next::Message(message)) => {
                let event = Event::default()
                    .id(message.cursor.to_string())
                    .event(message.endpoint)
                    .data(String::from_utf8_lossy(&message.body));
                tokio::select! {
                    () = &mut ends => return,
                    sent = sender.send(event) => match sent {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                }
            }
            Ok(Next::CaughtUp) => None,
            Ok(Next::Stalled) => Some(STALLED_WAIT),
            Ok(Next::Closed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "a pull stream failed; its consumer reconnects");
                return;
            }
        };
        tokio::select! {
            () = &mut ends => return,
            () = sender.closed() => return,
            _ = news.changed() => {}
            () = sleep_for(wait) => {}
        }
        feed.woken();
    }
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
        (status = 422, description = "Invalid cursor, limit or wait", body = super::error::ErrorBody)))]
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
    let mut feed = Feed::open(&app, after, &state).await?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(wait).min(state.settings.delivery.stream_max_age);
    let mut listening = listen(&state, &app);
    let news = &mut listening.news;
    let mut data = Vec::new();
    loop {
        news.borrow_and_update();
        let next = loop {
            match feed.next().await? {
                Next::Message(message) => {
                    data.push(ChangeView {
                        id: message.cursor.to_string(),
                        event: message.endpoint,
                        webhook_id: message.webhook_id,
                        body: RawValue::from_string(
                            String::from_utf8_lossy(&message.body).into_owned(),
                        )
                        .map_err(|err| ApiError::Internal(err.into()))?,
                    });
                    if data.len() as u64 >= limit {
                        break Next::CaughtUp;
                    }
                }
                other => break other,
            }
        };
        if !data.is_empty() || matches!(next, Next::Closed) {
            break;
        }
        tokio::select! {
            () = state.closing.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            _ = news.changed() => {}
            () = sleep_for(matches!(next, Next::Stalled).then_some(STALLED_WAIT)) => {}
        }
        feed.woken();
    }
    let next = data
        .last()
        .map(|last| last.id.clone())
        .or_else(|| after.map(|cursor| cursor.to_string()));
    Ok(warp::reply::json(&ChangesPage { data, next }).into_response())
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

/// Registers a stream (or long poll) of `app` with the hub that wakes it.
fn listen(state: &AppState, app: &app::Model) -> Listening {
    state
        .streams
        .listen(&app.id, || state.engine.outbox_changes(), &state.closing)
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

/// One message of the stream.
struct Message {
    cursor: StreamCursor,
    endpoint: &'static str,
    webhook_id: String,
    body: bytes::Bytes,
}

enum Next {
    Message(Message),
    /// Nothing more for now.
    CaughtUp,
    /// The next event's content must be fetched again and the remote could
    /// not be asked: it is asked again later, nothing after it goes first.
    Stalled,
    /// The app left pull mode, was disabled or deleted: the stream ends.
    Closed,
}

/// A consumer's way through its app's stream: the events read ahead, the
/// one being sent (a chunked file, message by message) and the cursor of
/// the last message.
struct Feed {
    state: AppState,
    app: AppId,
    cursor: StreamCursor,
    read: VecDeque<event::Model>,
    /// The last read found everything there was: nothing to read again
    /// until [`Feed::woken`].
    exhausted: bool,
    sources: Sources,
    current: Option<(i64, PulledEvent, usize)>,
}

impl Feed {
    /// A feed from `cursor` (or the first event not consumed), after
    /// marking everything up to `cursor` consumed.
    async fn open(
        app: &app::Model,
        cursor: Option<StreamCursor>,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        pulling(app)?;
        if let Some(cursor) = cursor {
            consume(state, app, cursor, "after").await?;
        }
        Ok(Self {
            state: state.clone(),
            app: AppId::stored(app.id.as_str()),
            cursor: cursor.unwrap_or(StreamCursor::START),
            read: VecDeque::new(),
            exhausted: false,
            sources: Sources::default(),
            current: None,
        })
    }

    async fn next(&mut self) -> Result<Next, ApiError> {
        loop {
            if let Some((place, pulled, index)) = &mut self.current {
                if *index < pulled.len() {
                    let (webhook_id, body) = pulled.part(*index);
                    let message = Message {
                        cursor: StreamCursor::of_part(*place, *index, pulled.len()),
                        endpoint: pulled.endpoint(),
                        webhook_id,
                        body,
                    };
                    *index += 1;
                    self.cursor = message.cursor;
                    return Ok(Next::Message(message));
                }
                self.current = None;
            }
            if self.read.is_empty() {
                if self.exhausted {
                    return Ok(Next::CaughtUp);
                }
                if !self.read_more().await? {
                    return Ok(if self.open_still().await? {
                        Next::CaughtUp
                    } else {
                        Next::Closed
                    });
                }
            }
            let Some(event) = self.read.pop_front() else {
                continue;
            };
            let place = event.stream_pos.unwrap_or_default();
            match self
                .state
                .engine
                .pull()
                .render(&event, &mut self.sources)
                .await?
            {
                Pulled::Ready(pulled) => {
                    let from = if place == self.cursor.place {
                        self.cursor.resume_chunk().unwrap_or(pulled.len())
                    } else {
                        0
                    };
                    self.current = Some((place, pulled, from));
                }
                Pulled::GaveUp => {}
                Pulled::Unavailable(why) => {
                    tracing::warn!(event = %event.id, %why, "a pulled event's content is unavailable; waiting");
                    self.read.push_front(event);
                    return Ok(Next::Stalled);
                }
            }
        }
    }

    /// There may be news: the next read asks the store again.
    fn woken(&mut self) {
        self.exhausted = false;
    }

    /// Reads the next page of events after the cursor; whether any came.
    async fn read_more(&mut self) -> Result<bool, ApiError> {
        let from = match self.cursor.chunk {
            Some(_) => self.cursor.place,
            None => self.cursor.place + 1,
        };
        let events = self
            .state
            .store
            .stream_events(&self.app, from, PAGE)
            .await?;
        // Credentials and repositories are read again for each page.
        self.sources = Sources::default();
        self.read.extend(events);
        Ok(!self.read.is_empty())
    }

    /// Whether the app still consumes a stream.
    async fn open_still(&self) -> Result<bool, ApiError> {
        Ok(self
            .state
            .store
            .app(&self.app)
            .await?
            .is_some_and(|app| pulling(&app).is_ok()))
    }
}
