//! The verifying receiver for several apps at once, each with its key and
//! the tree it was sent (picked by `X-Docora-App-Id`), that also logs when
//! each webhook arrived: what the reference bench times its figures by.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::super::{clock_ticks_per_second, serve_hooks, stat_ticks};
use super::{State, Tree, header};

/// One webhook as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Unix ns, once its body was read.
    pub at_ns: f64,
    pub app: String,
    /// The endpoint: `create`, `update`, `delete`, …
    pub event: String,
    /// The file's path, on a file's last (or only) part and on a delete.
    pub path: Option<String>,
    pub body_len: usize,
    /// What was wrong with it, if anything.
    pub problem: Option<String>,
}

/// Requests since the last reset.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub count: usize,
    /// Unix ns of the first and the last.
    pub first_ns: f64,
    pub last_ns: f64,
}

#[derive(Default)]
struct Log {
    /// App id → what the receiver holds for it.
    apps: HashMap<String, State>,
    /// Every request since the start (a reset keeps them).
    arrivals: Vec<Arrival>,
    problems: usize,
    count: usize,
    first_ns: Option<f64>,
    last_ns: f64,
}

/// An HTTP server on loopback with a runtime of its own (threads named
/// `receiver`) that checks every webhook as [`super::VerifyingReceiver`]
/// does, for each app it knows, and answers it 204.
pub struct LoggingReceiver {
    /// `http://127.0.0.1:PORT/hooks`: every app's `base_url`.
    pub base_url: String,
    log: Arc<Mutex<Log>>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

fn now_ns() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos() as f64
}

impl LoggingReceiver {
    pub fn start() -> LoggingReceiver {
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let served = serve_hooks(
            move |tail: &warp::path::Tail, headers: &warp::http::HeaderMap, body: bytes::Bytes| {
                let at_ns = now_ns();
                let event = tail.as_str().rsplit('/').next().unwrap_or_default();
                let app = header(headers, "x-docora-app-id");
                let mut log = shared.lock().expect("receiver lock");
                let checked = match log.apps.get_mut(app) {
                    Some(state) => state.check(event, headers, &body, at_ns / 1e6),
                    None => Err(format!("no key for app {app:?}")),
                };
                let (path, problem) = match checked {
                    Ok(path) => (path, None),
                    Err(problem) => (None, Some(problem)),
                };
                log.problems += usize::from(problem.is_some());
                log.count += 1;
                log.first_ns.get_or_insert(at_ns);
                log.last_ns = at_ns;
                log.arrivals.push(Arrival {
                    at_ns,
                    app: app.to_owned(),
                    event: event.to_owned(),
                    path,
                    body_len: body.len(),
                    problem,
                });
                Duration::ZERO
            },
        );
        LoggingReceiver {
            base_url: served.base_url,
            log,
            runtime: Some(served.runtime),
            shutdown: Some(served.shutdown),
        }
    }

    /// The key an app's webhooks are signed with (known once it is
    /// onboarded).
    pub fn add_app(&self, app: &str, key: &str) {
        let state = State {
            key: key.to_owned(),
            ..State::default()
        };
        self.log
            .lock()
            .expect("receiver lock")
            .apps
            .insert(app.to_owned(), state);
    }

    /// Forgets what each app holds and the counts; the keys and the log
    /// stay.
    pub fn reset(&self) {
        let mut log = self.log.lock().expect("receiver lock");
        for state in log.apps.values_mut() {
            let key = std::mem::take(&mut state.key);
            *state = State {
                key,
                ..State::default()
            };
        }
        (log.count, log.first_ns, log.last_ns) = (0, None, 0.0);
    }

    /// Requests since the last reset.
    pub fn count(&self) -> usize {
        self.log.lock().expect("receiver lock").count
    }

    pub fn stats(&self) -> Stats {
        let log = self.log.lock().expect("receiver lock");
        Stats {
            count: log.count,
            first_ns: log.first_ns.unwrap_or_default(),
            last_ns: log.last_ns,
        }
    }

    /// How many requests the log holds.
    pub fn logged(&self) -> usize {
        self.log.lock().expect("receiver lock").arrivals.len()
    }

    /// The log from request `from` on.
    pub fn arrivals(&self, from: usize) -> Vec<Arrival> {
        let log = self.log.lock().expect("receiver lock");
        log.arrivals.get(from..).unwrap_or_default().to_vec()
    }

    /// Whether each of `apps` holds exactly `want`.
    pub fn holds(&self, apps: &[String], want: &Tree) -> bool {
        let log = self.log.lock().expect("receiver lock");
        apps.iter()
            .all(|app| log.apps.get(app).is_some_and(|state| state.tree == *want))
    }

    /// Panics, naming the first few, when a webhook failed a check.
    pub fn assert_ok(&self, what: &str) {
        let log = self.log.lock().expect("receiver lock");
        if log.problems == 0 {
            return;
        }
        let problems: Vec<&String> = log
            .arrivals
            .iter()
            .filter_map(|a| a.problem.as_ref())
            .take(5)
            .collect();
        panic!(
            "{what}: {} webhooks were wrong, the first: {problems:?}",
            log.problems
        );
    }

    /// The CPU time of this process's threads named `receiver` so far (s):
    /// this receiver's, while it is the only one running.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|task| stat_ticks(&task.path().join("stat")))
                    .filter(|(name, _, _)| name == "receiver")
                    .map(|(_, user, system)| user + system)
                    .sum()
            })
            .unwrap_or_default();
        ticks as f64 / clock_ticks_per_second()
    }

    /// Writes the log to `path`, one JSON line a request.
    pub fn write_log(&self, path: &Path) -> std::io::Result<()> {
        let log = self.log.lock().expect("receiver lock");
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for a in &log.arrivals {
            let line = json!({
                "t_ns": a.at_ns,
                "app_id": a.app,
                "event": a.event,
                "file_path": a.path,
                "body_len": a.body_len,
                "problem": a.problem,
            });
            writeln!(out, "{line}")?;
        }
        out.flush()
    }
}

impl Drop for LoggingReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
