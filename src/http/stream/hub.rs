//! Who wakes the pull streams: one task per process that, when events are
//! written (the outbox's ring, here or from another instance) and every
//! [`LOOK_AGAIN`] in any case, asks the database once which of the apps
//! with open streams have news, and wakes only their streams. A thousand
//! idle streams then cost one query per ring, not a thousand. The hub
//! also counts each app's streams (`delivery.max_streams_per_app`) and
//! holds what they share ([`AppShare`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use actors::store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::share::{AppShare, StreamLimits};

/// The streams' news is looked for at least this often, should a ring be
/// lost.
pub const LOOK_AGAIN: Duration = Duration::from_secs(15);

/// The open streams of each app.
pub struct StreamHub {
    store: Store,
    limits: StreamLimits,
    apps: Mutex<HashMap<String, Watched>>,
    started: Once,
}

struct Watched {
    news: watch::Sender<u64>,
    streams: usize,
    share: Arc<AppShare>,
}

/// One stream's place in the hub: its news, what it shares with the app's
/// other streams, and its leaving when dropped.
pub struct Listening {
    hub: Arc<StreamHub>,
    app: String,
    pub news: watch::Receiver<u64>,
    pub share: Arc<AppShare>,
}

/// The app already holds `delivery.max_streams_per_app` streams here.
#[derive(Debug, Clone, Copy)]
pub struct TooManyStreams {
    pub limit: usize,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut apps = self.hub.apps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watched) = apps.get_mut(&self.app) {
            watched.streams -= 1;
            if watched.streams == 0 {
                apps.remove(&self.app);
            }
        }
    }
}

impl StreamHub {
    pub fn new(store: Store, limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            store,
            limits,
            apps: Mutex::default(),
            started: Once::new(),
        })
    }

    /// Registers a stream (or a long poll) of `app`, unless the app holds
    /// as many as it may; its news changes when the app may have events to
    /// read. The first one starts the hub's task, which watches `rings`
    /// until `closing`.
    pub fn listen(
        self: &Arc<Self>,
        app: &str,
        rings: impl FnOnce() -> watch::Receiver<u64>,
        closing: &CancellationToken,
    ) -> Result<Listening, TooManyStreams> {
        self.started.call_once(|| {
            tokio::spawn(watch_outbox(Arc::clone(self), rings(), closing.clone()));
        });
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        let watched = apps.entry(app.to_owned()).or_insert_with(|| Watched {
            news: watch::Sender::new(0),
            streams: 0,
            share: Arc::new(AppShare::new(self.limits)),
        });
        if watched.streams >= self.limits.max_streams {
            return Err(TooManyStreams {
                limit: self.limits.max_streams,
            });
        }
        watched.streams += 1;
        Ok(Listening {
            hub: Arc::clone(self),
            app: app.to_owned(),
            news: watched.news.subscribe(),
            share: Arc::clone(&watched.share),
        })
    }

    /// How many apps have streams open here.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The hub's task: at each ring (bursts coalesce: the watch keeps one
/// change) and every [`LOOK_AGAIN`], wakes the streams of the apps with
/// news: events not placed in their stream yet (which it places, all apps'
/// in one transaction), or places given since the last look (by another
/// stream of the app, here or elsewhere).
async fn watch_outbox(
    hub: Arc<StreamHub>,
    mut rings: watch::Receiver<u64>,
    closing: CancellationToken,
) {
    let mut placed: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            () = closing.cancelled() => return,
            changed = rings.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(LOOK_AGAIN) => {}
        }
        rings.borrow_and_update();
        let apps: Vec<String> = hub
            .apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        placed.retain(|app, _| apps.contains(app));
        for some in apps.chunks(500) {
            let news = match hub.store.stream_news(some).await {
                Ok(news) => news,
                Err(err) => {
                    // The streams' own reads fail too, and say so.
                    tracing::warn!(error = %err, "could not look for pull streams' news");
                    continue;
                }
            };
            // New events are placed here, for every app at once, so that
            // the streams woken only read.
            let unplaced: Vec<String> = news
                .iter()
                .filter(|(_, _, unplaced)| *unplaced)
                .map(|(app, _, _)| app.clone())
                .collect();
            if !unplaced.is_empty()
                && let Err(err) = hub.store.place_for_streams(&unplaced).await
            {
                // Each stream places its own events then.
                tracing::warn!(error = %err, "could not place pull streams' events");
            }
            let watched = hub.apps.lock().unwrap_or_else(PoisonError::into_inner);
            for (app, next, unplaced) in news {
                let moved = placed.insert(app.clone(), next) != Some(next);
                if (unplaced || moved)
                    && let Some(watched) = watched.get(&app)
                {
                    watched.news.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_app_is_watched_while_one_of_its_streams_is_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            actors::test_support::store(&actors::test_support::sqlite_url(dir.path())).await;
        let hub = StreamHub::new(
            store,
            StreamLimits {
                max_streams: 2,
                buffer_bytes: 1024,
                content_bytes: 1024,
            },
        );
        let (_rings, closing) = (watch::Sender::new(0u64), CancellationToken::new());
        let listen = |app| hub.listen(app, || _rings.subscribe(), &closing);
        let first = listen("app_a").expect("a first stream");
        let second = listen("app_a").expect("a second stream");
        assert!(
            matches!(listen("app_a"), Err(TooManyStreams { limit: 2 })),
            "a third is one too many"
        );
        let other = listen("app_b").expect("another app's stream");
        assert!(Arc::ptr_eq(&first.share, &second.share));
        assert!(!Arc::ptr_eq(&first.share, &other.share));
        assert_eq!(hub.watched(), 2);
        drop(first);
        assert_eq!(hub.watched(), 2, "app_a still has a stream");
        let third = listen("app_a").expect("room again");
        drop((second, third, other));
        assert_eq!(hub.watched(), 0);
        closing.cancel();
    }
}
