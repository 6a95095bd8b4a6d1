//! Benchmark of the console's delivery rollups (`store/rollups.rs`): what
//! one upkeep pass and the health page's chart queries cost once the
//! database holds many attempts.
//!
//! `cargo bench --bench rollups [-- OPTIONS]`
//!
//! `--attempts` delivery attempts (by `--apps` apps, spread evenly over the
//! last 24 hours; 94 % answered 2xx, 5 % 5xx, 1 % without an answer;
//! latencies from 2 ms to about 3 s) are written straight into the
//! database, as `actors::test_support::attempts` writes them. Then, timed:
//! the first pass after a start (every minute of the 24 hours recomputed),
//! a steady pass (the last five minutes, as every minute), and the chart
//! queries of `/admin/health`: every app over 1 h and over 24 h (15-minute
//! bins), one app over 24 h, the pending lines over 24 h. Steady passes and
//! queries: the median of 5 runs.
//!
//! Options (defaults in brackets): `--attempts N` [1000000], `--apps N`
//! [10], `--db sqlite|postgres|all` [all: SQLite, and PostgreSQL when
//! `TEST_DATABASE_URL` is set]. Without `--bench` (as `cargo test
//! --benches` runs it) the sizes shrink to a smoke test. Results are
//! printed as Markdown; see BENCHMARKS.md.

mod support;

use std::time::{Duration, Instant};

use actors::clock::now_ms;
use actors::ids::AppId;
use actors::store::Store;
use actors::store::rollups::{ChartWindow, MINUTE_MS};
use actors::store::subscriptions::SubscriptionView;
use actors::test_support::{self, attempts::Made};
use support::*;

struct Options {
    attempts: usize,
    apps: usize,
    db: Option<Backend>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            attempts: 1_000_000,
            apps: 10,
            db: None,
        }
    } else {
        Options {
            attempts: 20_000,
            apps: 3,
            db: Some(Backend::Sqlite),
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--attempts" => options.attempts = args.number(&arg),
            "--apps" => options.apps = args.number(&arg),
            "--db" => options.db = args.backend(),
            other => panic!("unknown option {other:?} (see benches/rollups.rs)"),
        }
    }
    options
}

fn main() {
    let options = parse_options();
    let runtime = runtime();
    for backend in backends(options.db) {
        runtime.block_on(run(backend, &options));
    }
}

/// A deterministic spread of answers and latencies (a linear congruential
/// generator: the same attempts on every run).
struct Spread(u64);

impl Spread {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        self.0 >> 33
    }

    fn attempt(&mut self, at: i64) -> Made {
        let status = match self.next() % 100 {
            0 => None,
            1..=5 => Some(503),
            _ => Some(200),
        };
        // 2 ms · 2^(0..11): mostly fast, a long tail.
        let latency_ms = 2 << (self.next() % 12).min(self.next() % 12);
        Made {
            at,
            status,
            latency_ms,
        }
    }
}

async fn timed<T>(work: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = work.await;
    (value, started.elapsed())
}

async fn median_of_5<F, Fut, T>(mut work: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(timed(work()).await.1.as_secs_f64() * 1000.0);
    }
    Duration::from_secs_f64(median(&runs) / 1000.0)
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

async fn run(backend: Backend, options: &Options) {
    let database = BenchDatabase::create(backend).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = test_support::store(&database.url_in(dir.path(), "herald.db")).await;
    let mut subscriptions: Vec<(AppId, SubscriptionView)> = Vec::new();
    for n in 0..options.apps {
        let name = format!("app{n}");
        let app = test_support::onboard(&store, test_support::new_app(&name)).await;
        let url = format!("https://1.1.1.1/{name}/widgets");
        let (view, _) = test_support::subscribe(
            &store,
            &app,
            test_support::new_subscription(&url, &name, "widgets"),
        )
        .await;
        subscriptions.push((app, view));
    }

    let now = now_ms();
    let day = 24 * 60 * MINUTE_MS;
    let hour = ChartWindow::ending_at(now, 60, 1);
    let whole_day = ChartWindow::ending_at(now, 24 * 60, 15);
    // The attempts fill the day's chart, from its first minute to now.
    let first = whole_day.bin_start_ms(0);
    let per_app = options.attempts / options.apps.max(1);
    let mut spread = Spread(42);
    let (_, fill) = timed(async {
        for (_, view) in &subscriptions {
            let step = (now - first) / per_app.max(1) as i64;
            let attempts: Vec<Made> = (0..per_app)
                .map(|i| spread.attempt(first + i as i64 * step))
                .collect();
            test_support::attempts::record_attempts(&store, view, &attempts).await;
        }
    })
    .await;
    test_support::attempts::pending_events(&store, &subscriptions[0].1, 100, now).await;

    let (first, catch_up) = timed(store.roll_up(now - day, now)).await;
    let first = first.expect("the first pass");
    let steady = median_of_5(|| store.roll_up(now - 5 * MINUTE_MS, now)).await;

    let one_app = &subscriptions[0].0;
    let all_day = store.deliveries(whole_day, None).await.expect("read");
    let counted: u64 = all_day.overall.iter().map(|b| b.attempts).sum();
    assert_eq!(
        counted,
        (per_app * options.apps) as u64,
        "every attempt is counted once"
    );
    let q_hour = median_of_5(|| store.deliveries(hour, None)).await;
    let q_day = median_of_5(|| store.deliveries(whole_day, None)).await;
    let q_app = median_of_5(|| store.deliveries(whole_day, Some(one_app))).await;
    let q_pending = median_of_5(|| store.pending_series(whole_day, None, 8)).await;

    println!(
        "### {}: {} attempts by {} apps over 24 h\n",
        backend.name(),
        per_app * options.apps,
        options.apps
    );
    println!("| step | time |\n|---|---|");
    println!("| writing the attempts (setup) | {} |", ms(fill));
    println!(
        "| first pass: 24 h recomputed ({} app-minutes) | {} |",
        first.minutes,
        ms(catch_up)
    );
    println!(
        "| steady pass: last 5 min + pending sample | {} |",
        ms(steady)
    );
    println!("| chart query: every app, 1 h | {} |", ms(q_hour));
    println!(
        "| chart query: every app, 24 h (15-min bins) | {} |",
        ms(q_day)
    );
    println!("| chart query: one app, 24 h | {} |", ms(q_app));
    println!("| chart query: pending lines, 24 h | {} |\n", ms(q_pending));
    check_store_is_used(&store).await;
}

/// Reads the rollup table's size, so the figures above are known to come
/// from rows and not from an empty table.
async fn check_store_is_used(store: &Store) {
    let rows = rows(store, "SELECT COUNT(*) AS n FROM delivery_rollups").await;
    let n: i64 = rows[0].try_get("", "n").expect("a count");
    assert!(n > 0, "rollup rows were written");
    println!("({n} rollup rows)\n");
}
