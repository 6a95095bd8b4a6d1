//! The admin console's pages over a large database: how long Herald takes
//! to answer each page with `--events` events (1 million) in its outbox.
//!
//! `cargo bench --bench console [-- OPTIONS]`
//!
//! Herald is the release binary (or `HERALD_BENCH_BINARY`) on SQLite (or
//! `--db postgres`, on `TEST_DATABASE_URL`). Its database is filled as a
//! month of history would leave it: `--apps` apps (onboarded through the
//! API, then switched to pull delivery so nothing is sent), `--repositories`
//! repositories, each app watching each repository; the events spread over
//! 30 days, newest last, one commit per 500 events, 1% dead, 1% pending,
//! the rest delivered; one attempt for each of the newest 100,000 events and
//! two for each dead one. The rows are written with plain SQL, as fast as
//! the database takes them; only the pages are timed.
//!
//! Each page is fetched `--rounds` times, one request at a time over one
//! kept-alive connection, signed in as an operator; the floor is the
//! console's stylesheet from the same server (routing, the session check
//! and the HTTP exchange, no query). Times are from the request leaving
//! to the last byte of the answer, on loopback.
//!
//! Options (defaults in brackets): `--events N` [1000000], `--apps N` [5],
//! `--repositories N` [20], `--rounds N` [30], `--db sqlite|postgres`
//! [sqlite]. Without `--bench` (as `cargo test --benches` runs it) the
//! sizes shrink to a smoke run. Results are printed as Markdown; see
//! BENCHMARKS.md.

mod support;

use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;
use support::*;

struct Options {
    events: usize,
    apps: usize,
    repositories: usize,
    rounds: usize,
    backend: Backend,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let full = args.full;
    let mut options = Options {
        events: if full { 1_000_000 } else { 20_000 },
        apps: 5,
        repositories: 20,
        rounds: if full { 30 } else { 3 },
        backend: Backend::Sqlite,
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--events" => options.events = args.number(&arg),
            "--apps" => options.apps = args.number(&arg),
            "--repositories" => options.repositories = args.number(&arg),
            "--rounds" => options.rounds = args.number(&arg),
            "--db" => {
                options.backend = args
                    .backend()
                    .expect("--db names one backend: sqlite or postgres");
            }
            other => panic!("unknown option {other}"),
        }
    }
    options
}

fn main() {
    let options = parse_options();
    runtime().block_on(run(&options));
}

/// A lowercase ULID-based id with `prefix`, created at `ms`: ids sort as
/// their rows were created, as Herald's own do.
fn id_at(prefix: &str, ms: i64, n: usize) -> String {
    let ulid = ulid::Ulid::from_parts(u64::try_from(ms).unwrap_or(0), n as u128);
    format!("{prefix}{}", ulid.to_string().to_ascii_lowercase())
}

fn sha_of(n: usize) -> String {
    format!(
        "{:040x}",
        (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// Everything the pages are asked about: one of each kind of thing.
struct Filled {
    app: String,
    repository: String,
    dead_event: String,
    commit: String,
    /// A day two weeks back, as the log's `from` and `to`.
    day: (String, String),
}

async fn fill(herald: &Herald, store: &actors::store::Store, options: &Options) -> Filled {
    let now = unix_ms() as i64;
    let mut apps = Vec::new();
    for n in 0..options.apps {
        let (id, token, _) = herald
            .onboard_app(&format!("bench-{n}"), "http://127.0.0.1:9/hooks")
            .await;
        let (status, body) = herald
            .request(
                reqwest::Method::PATCH,
                "/api/app",
                &token,
                Some(json!({"delivery": "pull"})),
            )
            .await;
        assert!(status.is_success(), "{body}");
        apps.push(id);
    }
    let mut repositories = Vec::new();
    let mut statements = Vec::new();
    for n in 0..options.repositories {
        let id = id_at("repo_", now - 40 * 86_400_000, n);
        statements.push(format!(
            "INSERT INTO repositories (id, url, fetch_url, owner, name, branch, next_scan_at, \
             created_at, updated_at, is_private) VALUES ('{id}', 'https://git.example/o/r{n}.git', \
             'https://git.example/o/r{n}.git', 'o', 'r{n}', 'main', {}, {now}, {now}, false)",
            now + 86_400_000
        ));
        repositories.push(id);
    }
    let mut subscriptions = Vec::new();
    for (a, app) in apps.iter().enumerate() {
        for (r, repository) in repositories.iter().enumerate() {
            let id = id_at("sub_", now - 40 * 86_400_000, a * 1_000 + r);
            statements.push(format!(
                "INSERT INTO subscriptions (id, app_id, repository_id, status, include, exclude, \
                 retry_count, next_seq, created_at, updated_at, access) VALUES ('{id}', '{app}', \
                 '{repository}', 'synced', '[]', '[]', 0, 1, {now}, {now}, 'granted')"
            ));
            subscriptions.push((id, app.clone(), repository.clone()));
        }
    }
    for statement in statements {
        execute(store, &statement).await;
    }

    let span = 30 * 86_400_000_i64;
    let start = now - span;
    let step = span / options.events.max(1) as i64;
    let attempts_from = options.events.saturating_sub(100_000);
    let mut dead_event = String::new();
    let mut rows = Vec::with_capacity(500);
    let mut attempts = Vec::with_capacity(500);
    let flush = async |rows: &mut Vec<String>, attempts: &mut Vec<String>| {
        if !rows.is_empty() {
            execute(
                store,
                &format!(
                    "INSERT INTO events (id, subscription_id, app_id, repository_id, seq, kind, \
                     path, sha256, size, \"binary\", commit_sha, status, attempts, next_attempt_at, \
                     created_at, delivered_at) VALUES {}",
                    rows.join(",")
                ),
            )
            .await;
            rows.clear();
        }
        if !attempts.is_empty() {
            execute(
                store,
                &format!(
                    "INSERT INTO delivery_attempts (id, event_id, attempted_at, status_code, \
                     latency_ms, response_excerpt) VALUES {}",
                    attempts.join(",")
                ),
            )
            .await;
            attempts.clear();
        }
    };
    for n in 0..options.events {
        let at = start + step * n as i64;
        let id = id_at("evt_", at, n);
        let (sub, app, repository) = &subscriptions[n % subscriptions.len()];
        let seq = n / subscriptions.len() + 1;
        let (status, tries) = match n % 100 {
            0 => ("dead", 2),
            1 => ("pending", 0),
            _ => ("delivered", usize::from(n >= attempts_from)),
        };
        if status == "dead" {
            dead_event.clone_from(&id);
        }
        let delivered = if status == "delivered" {
            at.to_string()
        } else {
            "NULL".to_owned()
        };
        let kind = ["created", "updated", "deleted"][n % 3];
        rows.push(format!(
            "('{id}', '{sub}', '{app}', '{repository}', {seq}, '{kind}', 'src/d{}/f{n}.rs', \
             '{}', {}, false, '{}', '{status}', {tries}, {}, {at}, {delivered})",
            n % 100,
            sha_of(n),
            n % 4096,
            sha_of(n / 500),
            at + 86_400_000,
        ));
        for attempt in 0..tries {
            let code = if status == "dead" { 500 } else { 200 };
            attempts.push(format!(
                "('{}', '{id}', {}, {code}, {}, 'ok')",
                id_at("att_", at, n * 2 + attempt),
                at + attempt as i64,
                20 + n % 200
            ));
        }
        if rows.len() == 500 {
            flush(&mut rows, &mut attempts).await;
        }
    }
    flush(&mut rows, &mut attempts).await;
    let day = now - 14 * 86_400_000;
    let minute = |ms: i64| actors::clock::rfc3339_ms(ms)[..16].to_owned();
    Filled {
        app: apps[0].clone(),
        repository: repositories[0].clone(),
        dead_event,
        commit: sha_of(options.events / 1_000)[..12].to_owned(),
        day: (minute(day), minute(day + 86_400_000)),
    }
}

async fn execute(store: &actors::store::Store, sql: &str) {
    use sea_orm::ConnectionTrait;
    store
        .db()
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|err| panic!("{err}: {}", &sql[..sql.len().min(300)]));
}

/// Signs in as an operator: the session cookie to send back.
async fn sign_in(herald: &Herald, http: &reqwest::Client) -> String {
    let form = http
        .get(format!("{}/admin/login", herald.base))
        .send()
        .await
        .expect("the sign-in form");
    let login_cookie = form.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("a cookie")
        .to_owned();
    let page = form.text().await.expect("a page");
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a CSRF field") + marker.len();
    let csrf = page[start..].split('"').next().expect("a token");
    let signed_in = http
        .post(format!("{}/admin/login", herald.base))
        .header(COOKIE, login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("csrf", csrf), ("token", ADMIN_TOKEN)]).expect("a form"),
        )
        .send()
        .await
        .expect("signed in");
    signed_in
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("herald_console="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

async fn run(options: &Options) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database = BenchDatabase::create(options.backend).await;
    let herald = Herald::start(dir.path(), &database, &[]).await;
    let store = connect(&database.bench_url(&herald.data_dir)).await;
    let started = Instant::now();
    let filled = fill(&herald, &store, options).await;
    let fill_secs = started.elapsed().as_secs_f64();
    let http = actors::tls::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let cookie = sign_in(&herald, &http).await;
    let Filled {
        app,
        repository,
        dead_event,
        commit,
        day,
    } = &filled;
    let pages: Vec<(&str, String)> = vec![
        (
            "floor: the stylesheet",
            "/admin/assets/console.css".to_owned(),
        ),
        ("overview", "/admin/overview".to_owned()),
        ("event log", "/admin/log".to_owned()),
        ("log: one app", format!("/admin/log?app={app}")),
        (
            "log: one repository",
            format!("/admin/log?repository={repository}"),
        ),
        ("log: dead", "/admin/log?status=dead".to_owned()),
        (
            "log: one path",
            "/admin/log?path=src/d7/f1007.rs".to_owned(),
        ),
        ("log: glob, rare", "/admin/log?path=**/f99*.rs".to_owned()),
        ("log: one commit", format!("/admin/log?commit={commit}")),
        (
            "log: one day",
            format!("/admin/log?from={}&to={}", day.0, day.1),
        ),
        ("event", format!("/admin/events/{dead_event}")),
        ("repository", format!("/admin/repositories/{repository}")),
        ("app", format!("/admin/apps/{app}")),
        ("dead events", "/admin/events".to_owned()),
        ("repositories", "/admin/repositories".to_owned()),
        ("delivery health, 1 h", "/admin/health".to_owned()),
        (
            "delivery health, 24 h",
            "/admin/health?window=24h".to_owned(),
        ),
    ];
    println!(
        "\n{} events, {} apps × {} repositories, {} ({:.0} s to fill); {} rounds each\n",
        options.events,
        options.apps,
        options.repositories,
        options.backend.name(),
        fill_secs,
        options.rounds
    );
    println!("| page | median | p95 | × floor | under 50 ms |");
    println!("|---|---|---|---|---|");
    let mut floor = 0.0;
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(options.rounds);
        for _ in 0..options.rounds + 1 {
            let sent = Instant::now();
            let response = http
                .get(format!("{}{path}", herald.base))
                .header(COOKIE, &cookie)
                .send()
                .await
                .expect("herald answers");
            let status = response.status();
            let body = response.text().await.expect("a body");
            let ms = sent.elapsed().as_secs_f64() * 1_000.0;
            assert_eq!(status, reqwest::StatusCode::OK, "{path}: {body}");
            assert!(!body.contains("Sign in to Herald"), "{path}: signed out");
            times.push(ms);
        }
        // The first request warms the page's caches; it is not counted.
        times.remove(0);
        let (mid, p95) = (median(&times), percentile(&times, 95.0));
        if floor == 0.0 {
            floor = mid;
        }
        println!(
            "| {name} | {mid:.1} ms | {p95:.1} ms | {:.1} | {} |",
            mid / floor,
            met(p95 < 50.0)
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
