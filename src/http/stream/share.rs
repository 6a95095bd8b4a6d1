//! What one app's pull streams and pages share on this instance, so that a
//! consumer that does not read costs a bounded amount whatever the files:
//!
//! - **room for messages** (`delivery.stream_buffer_bytes`): a message is
//!   made only once room for it is reserved, and the room comes back when
//!   the connection has written it (the permit travels inside the bytes
//!   handed to hyper). A consumer that stops reading holds what it was
//!   sent; the app's other streams wait for room rather than grow.
//! - **room for content** (`delivery.stream_content_bytes`): a file's
//!   content, which a chunked file's messages are made from, is held once
//!   room for it is reserved (a file larger than the room takes all of it).
//! - **renderings**: streams sending the same event share one rendering,
//!   held while any of them still sends it.
//!
//! A stream never waits for room while it holds messages' room, and holds
//! content only while it sends it, so the two kinds of room cannot wait on
//! each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use actors::delivery::pull::PulledEvent;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The per-app limits of pull streams on one instance.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Streams and long polls open at once.
    pub max_streams: usize,
    /// Bytes of messages made and not yet taken by the consumers.
    pub buffer_bytes: u32,
    /// Bytes of file content held to send chunked files.
    pub content_bytes: u32,
}

/// One app's share (see the module's documentation).
pub struct AppShare {
    buffer: Room,
    content: Room,
    renderings: Mutex<HashMap<String, Weak<Rendering>>>,
}

/// One event's rendering, made by the first of the app's streams that
/// needs it and shared with the others while any holds it.
#[derive(Default)]
pub struct Rendering {
    pub slot: tokio::sync::Mutex<Option<Rendered>>,
}

/// A rendering and the room its content takes.
pub struct Rendered {
    pub event: Arc<PulledEvent>,
    _content: Option<OwnedSemaphorePermit>,
}

impl Rendered {
    pub fn new(event: PulledEvent, content: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            event: Arc::new(event),
            _content: content,
        }
    }
}

/// Bytes counted by a semaphore; a reservation larger than all of it takes
/// all of it (and so waits until nothing else holds any).
struct Room {
    bytes: Arc<Semaphore>,
    size: u32,
}

impl Room {
    fn new(size: u32) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(size as usize)),
            size,
        }
    }

    fn permits(&self, bytes: usize) -> u32 {
        u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.size)
    }

    async fn reserve(&self, bytes: usize) -> OwnedSemaphorePermit {
        Arc::clone(&self.bytes)
            .acquire_many_owned(self.permits(bytes))
            .await
            .expect("the room's semaphore is never closed")
    }

    fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.permits(bytes))
            .ok()
    }
}

/// Renderings no stream holds are forgotten once the map grows past this.
const PRUNE_PAST: usize = 64;

impl AppShare {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            buffer: Room::new(limits.buffer_bytes),
            content: Room::new(limits.content_bytes),
            renderings: Mutex::default(),
        }
    }

    /// Room for a message of `bytes`, waiting for it.
    pub async fn reserve_message(&self, bytes: usize) -> OwnedSemaphorePermit {
        self.buffer.reserve(bytes).await
    }

    /// Room for a message of `bytes` if there is some now.
    pub fn try_reserve_message(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.buffer.try_reserve(bytes)
    }

    /// Room for `bytes` of file content, waiting for it.
    pub async fn reserve_content(&self, bytes: usize) -> OwnedSemaphorePermit {
        self.content.reserve(bytes).await
    }

    /// The rendering of `event_id` the app's streams share.
    pub fn rendering(&self, event_id: &str) -> Arc<Rendering> {
        let mut renderings = self
            .renderings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = renderings.get(event_id).and_then(Weak::upgrade) {
            return shared;
        }
        if renderings.len() >= PRUNE_PAST {
            renderings.retain(|_, rendering| rendering.strong_count() > 0);
        }
        let rendering = Arc::new(Rendering::default());
        renderings.insert(event_id.to_owned(), Arc::downgrade(&rendering));
        rendering
    }
}

/// `bytes` to hand to hyper, holding `room` until hyper drops them, once
/// written.
pub fn reserved(bytes: Vec<u8>, room: Vec<OwnedSemaphorePermit>) -> bytes::Bytes {
    bytes::Bytes::from_owner(Reserved { bytes, _room: room })
}

struct Reserved {
    bytes: Vec<u8>,
    _room: Vec<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Reserved {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(buffer: u32, content: u32) -> AppShare {
        AppShare::new(StreamLimits {
            max_streams: 4,
            buffer_bytes: buffer,
            content_bytes: content,
        })
    }

    #[tokio::test]
    async fn room_comes_back_when_the_bytes_holding_it_are_dropped() {
        let share = share(100, 100);
        let sent = reserved(vec![b'x'; 60], vec![share.reserve_message(60).await]);
        assert!(share.try_reserve_message(60).is_none(), "40 bytes are left");
        let clone = sent.clone();
        drop(sent);
        assert!(
            share.try_reserve_message(60).is_none(),
            "hyper still holds a handle"
        );
        drop(clone);
        assert!(share.try_reserve_message(60).is_some());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_room_takes_all_of_it() {
        let share = share(100, 100);
        let small = share.reserve_message(1).await;
        assert!(
            share.try_reserve_message(1 << 30).is_none(),
            "one byte is held"
        );
        drop(small);
        let whole = share.try_reserve_message(1 << 30).expect("all the room");
        assert!(share.try_reserve_message(1).is_none());
        drop(whole);
    }

    #[tokio::test]
    async fn streams_share_a_rendering_while_one_holds_it() {
        let share = share(100, 100);
        let first = share.rendering("evt_1");
        let second = share.rendering("evt_1");
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&first, &share.rendering("evt_2")));
        drop((first, second));
        // Forgotten: a new one is made, and dead entries are pruned.
        for i in 0..(PRUNE_PAST * 2) {
            drop(share.rendering(&format!("evt_{i}")));
        }
        let renderings = share.renderings.lock().expect("not poisoned");
        assert!(renderings.len() <= PRUNE_PAST, "{}", renderings.len());
    }
}
