//! Starting with nothing, public endpoints, generated secrets, graceful shutdown.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{self, TestApp, assert_error};

#[tokio::test]
async fn starts_in_an_empty_directory_with_no_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Only the port is chosen, so that tests can run side by side.
    let args = vec!["--port".to_owned(), "0".to_owned()];
    let (mut child, logs, addr) = helpers::start(dir.path(), &args, &HashMap::new()).await;

    let health: serde_json::Value = actors::tls::http_client_builder()
        .build()
        .expect("an HTTP client")
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert!(health["timestamp"].is_string());
    assert!(health["uptime"].is_number());

    let data = dir.path().join("data");
    assert!(data.join("herald.db").is_file(), "SQLite under ./data");
    for secret in ["admin.token", "encryption.key"] {
        let mode = std::fs::metadata(data.join(secret))
            .expect("generated on first start")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} is private to its owner");
    }

    // The first run explains itself: the migrations as one line, and a last
    // line that says where Herald serves, its console, its API docs and
    // where the admin token is.
    let lines: Vec<serde_json::Value> = logs
        .text()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let migrated: Vec<_> = lines
        .iter()
        .filter(|line| line["message"] == "database schema migrated")
        .collect();
    assert_eq!(migrated.len(), 1, "{lines:#?}");
    assert!(
        migrated[0]["applied"].as_u64() > Some(10),
        "{}",
        migrated[0]
    );
    assert!(
        !lines.iter().any(|line| line["target"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sea_orm")),
        "no line per migration: {lines:#?}"
    );
    let at = lines
        .iter()
        .position(|line| line["message"] == "listening")
        .expect("a listening line");
    let last = &lines[at];
    assert!(
        !lines[at + 1..]
            .iter()
            .any(|line| line["target"] == "herald::startup"),
        "the listening line ends the start-up: {lines:#?}"
    );
    assert_eq!(last["console"], format!("http://{addr}/admin"));
    assert_eq!(last["api_docs"], format!("http://{addr}/docs"));
    assert_eq!(last["admin_token"], "./data/admin.token");
    child.kill().await.ok();
}

#[tokio::test]
async fn a_generated_admin_token_is_kept_and_works_after_a_restart() {
    let app = TestApp::builder()
        .without_env("HERALD__ADMIN__TOKEN")
        .spawn()
        .await;
    let token = std::fs::read_to_string(app.data_path().join("admin.token"))
        .expect("token file")
        .trim()
        .to_owned();
    // stderr is a pipe here: the token stays in its file (secrets.rs).
    assert!(!app.logs().contains(&token), "not in the log stream");

    let (status, _) = app
        .call(
            Method::POST,
            "/admin/api/apps/onboard",
            Some(&token),
            Some(json!({"app_name": "first", "base_url": helpers::PUBLIC_BASE_URL, "email": "a@b.co"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (dir, database) = app.stop().await;
    let again = TestApp::builder()
        .without_env("HERALD__ADMIN__TOKEN")
        .data_dir(dir)
        .spawn_with(database)
        .await;
    assert!(!again.logs().contains(&token), "not in the log stream");
    let (status, body) = again
        .call(Method::GET, "/admin/api/apps", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "same token after a restart");
    assert_eq!(
        body["data"]["pagination"]["total"], 1,
        "data survives a restart"
    );
}

#[tokio::test]
async fn public_endpoints_answer() {
    let app = TestApp::spawn().await;
    let (status, ready) = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ready,
        json!({"status": "ready", "database": true, "actors": true})
    );

    let (status, version) = app.call(Method::GET, "/version", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));

    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/admin/api/apps/onboard",
        "/api/repositories",
        "/api/repositories/{id}",
        "/api/repositories/{id}/token",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }

    let docs = app
        .client
        .get(app.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.expect("html").contains("swagger"));
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/nope", None, None).await;
    assert_eq!(
        assert_error(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (status, body) = app.call(Method::PUT, "/health", None, None).await;
    assert_eq!(
        assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_code_zero() {
    let mut app = TestApp::spawn().await;
    app.onboard("before-shutdown").await;
    assert_eq!(app.terminate().await, Some(0));
    assert!(app.logs().contains("\"stopped\""), "{}", app.logs());
}

/// A worker count that is not a positive number stops Herald before it
/// touches anything, with a message naming the variable and the value.
#[tokio::test]
async fn a_bad_worker_thread_count_stops_herald_at_start_naming_it() {
    for bad in ["0", "many"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .current_dir(dir.path())
            .env("TOKIO_WORKER_THREADS", bad)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("herald stops at once instead of serving")
            .expect("herald runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS") && stderr.contains(&format!("{bad:?}")),
            "{stderr}"
        );
        let written: Vec<_> = std::fs::read_dir(dir.path()).expect("listed").collect();
        assert!(written.is_empty(), "{written:?}");
    }
}

/// `herald migrate` in `dir`, on `url` (or the data directory's SQLite).
fn migrate_command(dir: &std::path::Path, url: Option<&str>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.arg("migrate").current_dir(dir);
    if let Some(url) = url {
        command.env("HERALD__DATABASE__URL", url);
    }
    command
}

#[track_caller]
fn assert_migrated(output: std::io::Result<std::process::Output>) {
    let output = output.expect("migrate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("database schema current"), "{stderr}");
}

/// The server's database URL when it is PostgreSQL, which instances share;
/// `None` (the test is skipped) on SQLite.
fn shared_database(database: &helpers::TestDatabase) -> Option<String> {
    if database.url.is_none() {
        eprintln!("skipped: instances share a database on PostgreSQL only (TEST_DATABASE_URL)");
    }
    database.url.clone()
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = helpers::TestDatabase::create().await;
    assert_migrated(
        migrate_command(dir.path(), database.url.as_deref())
            .output()
            .await,
    );

    // A server on the same database starts without migrating again.
    let app = TestApp::builder()
        .env("HERALD__DATABASE__AUTO_MIGRATE", "false")
        .data_dir(dir)
        .spawn_with(database)
        .await;
    app.onboard("after-migrate").await;
}

#[tokio::test]
async fn instances_started_together_on_a_new_database_all_migrate_it() {
    let database = helpers::TestDatabase::create().await;
    let Some(url) = shared_database(&database) else {
        return;
    };
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let outputs = futures::future::join_all(
        dirs.iter()
            .map(|dir| migrate_command(dir.path(), Some(&url)).output()),
    )
    .await;
    outputs.into_iter().for_each(assert_migrated);

    // The schema is whole: a server starts on it without migrating.
    let app = TestApp::builder()
        .env("HERALD__DATABASE__AUTO_MIGRATE", "false")
        .spawn_with(database)
        .await;
    app.onboard("after-concurrent-migrations").await;
}

#[tokio::test]
async fn migrate_waits_its_turn_and_goes_on_when_the_holder_is_gone() {
    use sea_orm::sqlx::Connection;

    let database = helpers::TestDatabase::create().await;
    let Some(url) = shared_database(&database) else {
        return;
    };
    // Another instance holds the turn (and then dies: its session ends).
    let mut holder = sea_orm::sqlx::PgConnection::connect(&url)
        .await
        .expect("connects");
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(actors::store::MIGRATION_LOCK)
        .execute(&mut holder)
        .await
        .expect("takes the turn");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut migrate = migrate_command(dir.path(), Some(&url))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("migrate starts");
    // It asks for the turn and waits: PostgreSQL shows its request pending.
    let waiting = async {
        loop {
            let pending: i64 = sea_orm::sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&mut holder)
            .await
            .expect("pg_locks");
            if pending > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), waiting)
        .await
        .expect("migrate asks for the turn");
    assert!(
        migrate.try_wait().expect("status").is_none(),
        "migrate went on without the turn"
    );

    holder.close().await.expect("the holder's session ends");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        migrate.wait_with_output(),
    )
    .await
    .expect("migrate goes on once the turn is free");
    let stderr = output
        .as_ref()
        .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
        .unwrap_or_default();
    assert!(stderr.contains("waiting for its turn"), "{stderr}");
    assert_migrated(output);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = TestApp::builder()
        .env("HERALD__RATE_LIMIT__ONBOARDING_PER_MINUTE", "2")
        .spawn()
        .await;
    app.onboard("one").await;
    app.onboard("two").await;
    let response = app
        .client
        .post(app.url("/admin/api/apps/onboard"))
        .bearer_auth(helpers::ADMIN_TOKEN)
        .json(
            &json!({"app_name": "three", "base_url": helpers::PUBLIC_BASE_URL, "email": "a@b.co"}),
        )
        .send()
        .await
        .expect("answers");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let (status, body) = helpers::read(response).await;
    assert_eq!(
        assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS),
        "rate_limited"
    );
    assert_eq!(
        app.app_count().await,
        2,
        "the limited request wrote nothing"
    );
}

/// When a supervised part keeps failing past its restart budget, the root
/// supervisor gives up and the process ends with a non-zero code, so that
/// its service manager restarts it: it must not go on answering HTTP while
/// delivering nothing.
#[tokio::test]
async fn a_tree_that_gives_up_ends_the_process_with_a_non_zero_code() {
    use crate::helpers::{Remotes, onboard, watch};
    use crate::receiver::{Receiver, Reply};
    use sea_orm::ConnectionTrait;

    let remotes = Remotes::serve(&["acme/widgets.git"]);
    let receiver = Receiver::start().await;
    receiver.fallback(Some(Reply::status(500)));
    let app = helpers::engine_with(&[]).await;
    let client = onboard(&app, &receiver, "acme").await;
    watch(&app, &client, &remotes.url("acme/widgets.git")).await;
    // An event waits for delivery (the endpoint fails).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while receiver.arrivals() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery was tried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (dir, database) = app.stop().await;

    // Break the storage every app's delivery actor needs to start (its
    // endpoint breaker): each start fails, and the delivery side with it.
    let db = sea_orm::Database::connect(helpers::database_url(dir.path(), &database))
        .await
        .expect("the database opens");
    db.execute_unprepared("DROP TABLE breakers")
        .await
        .expect("the table is dropped");
    db.close().await.ok();

    let mut app = TestApp::builder()
        .fast()
        .data_dir(dir)
        .spawn_with(database)
        .await;
    let code = app.exited(std::time::Duration::from_secs(180)).await;
    assert_eq!(code, Some(1), "logs:\n{}", app.logs());
    assert!(
        app.logs().contains("the actor tree gave up"),
        "{}",
        app.logs()
    );
}
