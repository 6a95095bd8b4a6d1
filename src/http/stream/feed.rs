//! A consumer's way through its app's stream: the events read ahead, the
//! one being sent (a chunked file, message by message, from a rendering
//! the app's streams share) and the cursor of the last message. A message
//! is handed out as a [`Part`], made into bytes only once its connection
//! has room for it.

use std::collections::VecDeque;
use std::sync::Arc;

use actors::delivery::pull::{Pulled, PulledEvent, Sources};
use actors::ids::AppId;
use actors::store::stream::StreamCursor;
use entity::{app, event};

use super::share::{AppShare, Rendered, Rendering};
use super::{consume, pulling};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Events read from the store at a time.
const PAGE: u64 = 64;

/// Files smaller than this are rendered without reserving room for their
/// content: a message's room covers them.
const SMALL_FILE_BYTES: i64 = 64 * 1024;

/// One message of the stream, not made yet.
pub struct Part {
    pub cursor: StreamCursor,
    event: Arc<PulledEvent>,
    index: usize,
}

impl Part {
    /// The webhook endpoint it stands for.
    pub fn endpoint(&self) -> &'static str {
        self.event.endpoint()
    }

    /// The size of its body.
    pub fn body_len(&self) -> usize {
        self.event.part_len(self.index)
    }

    /// Its `webhook-id` and body.
    pub fn make(&self) -> (String, bytes::Bytes) {
        self.event.part(self.index)
    }
}

pub enum Next {
    Message(Part),
    /// Nothing more for now.
    CaughtUp,
    /// The next event's content must be fetched again and the remote could
    /// not be asked: it is asked again later, nothing after it goes first.
    Stalled,
    /// The app left pull mode, was disabled or deleted: the stream ends.
    Closed,
}

/// What became of an event to send ([`Pulled`], shared).
enum Made {
    Ready(Arc<PulledEvent>),
    GaveUp,
    Unavailable(String),
}

/// The event being sent: its place, its shared rendering (held so the
/// app's other streams find it) and the next message's index.
struct Current {
    place: i64,
    _shared: Arc<Rendering>,
    event: Arc<PulledEvent>,
    index: usize,
}

pub struct Feed {
    state: AppState,
    app: AppId,
    share: Arc<AppShare>,
    cursor: StreamCursor,
    read: VecDeque<event::Model>,
    sources: Sources,
    current: Option<Current>,
}

impl Feed {
    /// A feed from `cursor` (or the first event not consumed), after
    /// marking everything up to `cursor` consumed.
    pub async fn open(
        app: &app::Model,
        cursor: Option<StreamCursor>,
        state: &AppState,
        share: Arc<AppShare>,
    ) -> Result<Self, ApiError> {
        pulling(app)?;
        if let Some(cursor) = cursor {
            consume(state, app, cursor, "after").await?;
        }
        Ok(Self {
            state: state.clone(),
            app: AppId::stored(app.id.as_str()),
            share,
            cursor: cursor.unwrap_or(StreamCursor::START),
            read: VecDeque::new(),
            sources: Sources::default(),
            current: None,
        })
    }

    pub async fn next(&mut self) -> Result<Next, ApiError> {
        loop {
            if let Some(current) = &mut self.current {
                if current.index < current.event.len() {
                    let part = Part {
                        cursor: StreamCursor::of_part(
                            current.place,
                            current.index,
                            current.event.len(),
                        ),
                        event: Arc::clone(&current.event),
                        index: current.index,
                    };
                    current.index += 1;
                    self.cursor = part.cursor;
                    return Ok(Next::Message(part));
                }
                // Let go of its content before holding the next one's.
                self.current = None;
            }
            if self.read.is_empty() && !self.read_more().await? {
                return Ok(if self.open_still().await? {
                    Next::CaughtUp
                } else {
                    Next::Closed
                });
            }
            let Some(event) = self.read.pop_front() else {
                continue;
            };
            let place = event.stream_pos.unwrap_or_default();
            let shared = self.share.rendering(&event.id);
            let made = match self.rendering(&event, &shared).await? {
                Made::Ready(made) => made,
                Made::GaveUp => continue,
                Made::Unavailable(why) => {
                    tracing::warn!(event = %event.id, %why, "a pulled event's content is unavailable; waiting");
                    self.read.push_front(event);
                    return Ok(Next::Stalled);
                }
            };
            let from = if place == self.cursor.place {
                self.cursor.resume_chunk().unwrap_or(made.len())
            } else {
                0
            };
            self.current = Some(Current {
                place,
                _shared: shared,
                event: made,
                index: from,
            });
        }
    }

    /// `event`'s rendering: the one another stream of the app holds, or a
    /// new one, made once room for its content is reserved.
    async fn rendering(
        &mut self,
        event: &event::Model,
        shared: &Rendering,
    ) -> Result<Made, ApiError> {
        let mut slot = shared.slot.lock().await;
        if let Some(made) = slot.as_ref() {
            return Ok(Made::Ready(Arc::clone(&made.event)));
        }
        let room = match event.size {
            Some(size) if event.kind.carries_content() && size >= SMALL_FILE_BYTES => Some(
                self.share
                    .reserve_content(usize::try_from(size).unwrap_or(usize::MAX))
                    .await,
            ),
            _ => None,
        };
        let pulled = self
            .state
            .engine
            .pull()
            .render(event, &mut self.sources)
            .await?;
        Ok(match pulled {
            Pulled::Ready(pulled) => {
                let made = Rendered::new(pulled, room);
                let event = Arc::clone(&made.event);
                *slot = Some(made);
                Made::Ready(event)
            }
            Pulled::GaveUp => Made::GaveUp,
            Pulled::Unavailable(why) => Made::Unavailable(why),
        })
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
