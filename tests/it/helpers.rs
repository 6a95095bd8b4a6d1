//! `TestApp`: the real binary, its data directory, its database and a client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::receiver::Receiver;

pub mod docora;
mod measure;
mod rig;

pub use crate::gitserver::noise;
pub use measure::proc_status_kib;
pub use rig::{Remotes, Rig};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// A public address literal: accepted as a webhook target without DNS.
pub const PUBLIC_BASE_URL: &str = "https://1.1.1.1/herald";

/// A database of its own for one test: SQLite (the server's default file
/// in its data directory), or a PostgreSQL database on `TEST_DATABASE_URL`
/// created now and dropped with the test.
pub use actors::test_support::TestDatabase;

pub struct TestAppBuilder {
    env: HashMap<String, String>,
    data_dir: Option<TempDir>,
    open_files: Option<u64>,
}

impl TestAppBuilder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn envs(self, settings: &[(&str, &str)]) -> Self {
        settings
            .iter()
            .fold(self, |builder, (key, value)| builder.env(key, value))
    }

    /// Git remotes and webhook receivers on 127.0.0.1 over plain http or
    /// git://, as the tests serve them.
    pub fn loopback(self) -> Self {
        self.env("HERALD__SECURITY__ALLOW_PRIVATE_TARGETS", "true")
            .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "true")
    }

    /// [`Self::loopback`], polling, delivering and retrying fast: the
    /// settings of the end-to-end tests.
    pub fn fast(self) -> Self {
        self.loopback()
            .env("HERALD__SCHEDULER__TICK", "100ms")
            .env("HERALD__SCHEDULER__RESCAN_INTERVAL", "200ms")
            .env("HERALD__DELIVERY__TICK", "100ms")
            .env("HERALD__DELIVERY__BACKOFF__POLICY", "fixed")
            .env("HERALD__DELIVERY__BACKOFF__BASE", "100ms")
            .env("HERALD__DELIVERY__BACKOFF__MAX", "200ms")
    }

    pub fn without_env(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// Starts the binary under this open-files limit, soft and hard
    /// (`prlimit`), as on a host that grants few descriptors.
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Reuses a data directory (a restart).
    pub fn data_dir(mut self, dir: TempDir) -> Self {
        self.data_dir = Some(dir);
        self
    }

    pub async fn spawn(self) -> TestApp {
        let database = TestDatabase::create().await;
        self.spawn_with(database).await
    }

    pub async fn spawn_with(self, database: TestDatabase) -> TestApp {
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("a temporary data dir"),
        };
        let mut env = self.env;
        if let Some(url) = &database.url {
            env.entry("HERALD__DATABASE__URL".to_owned())
                .or_insert_with(|| url.clone());
        }
        let args = [
            "serve".to_owned(),
            "--port".to_owned(),
            "0".to_owned(),
            "--data-dir".to_owned(),
            data_dir.path().join("data").display().to_string(),
        ];
        let (child, logs, addr) =
            start_limited(data_dir.path(), &args, &env, self.open_files).await;
        TestApp {
            address: format!("http://{addr}"),
            client: client(),
            admin_token: env.get("HERALD__ADMIN__TOKEN").cloned(),
            child: Some(child),
            logs,
            data_dir,
            database,
        }
    }
}

/// An HTTP client for a Herald under test. Herald closes a keep-alive
/// connection that stays idle for `server.header_read_timeout` (10 s); a
/// client that reuses such a connection just as it closes gets an
/// incomplete message. This client lets its idle connections go well
/// before, as any client of Herald should.
pub fn client() -> reqwest::Client {
    actors::tls::http_client_builder()
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client")
}

/// Starts the binary in `cwd` and waits for its "listening" log line.
pub async fn start(
    cwd: &Path,
    args: &[String],
    env: &HashMap<String, String>,
) -> (Child, Logs, String) {
    start_limited(cwd, args, env, None).await
}

/// [`start`], under an open-files limit when one is given (`prlimit` sets
/// it and then executes the binary in its place).
async fn start_limited(
    cwd: &Path,
    args: &[String],
    env: &HashMap<String, String>,
    open_files: Option<u64>,
) -> (Child, Logs, String) {
    let mut command = match open_files {
        None => Command::new(env!("CARGO_BIN_EXE_herald")),
        Some(limit) => {
            let mut prlimit = Command::new("prlimit");
            prlimit
                .arg(format!("--nofile={limit}:{limit}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_herald"));
            prlimit
        }
    };
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD") || key.starts_with("OTEL_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.envs(env);
    let mut child = command.spawn().expect("the herald binary starts");
    let text = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let readers = vec![
        collect(child.stdout.take().expect("piped"), text.clone(), None),
        collect(
            child.stderr.take().expect("piped"),
            text.clone(),
            Some(addr_tx),
        ),
    ];
    let logs = Logs { text, readers };
    let addr = tokio::time::timeout(Duration::from_secs(60), addr_rx)
        .await
        .ok()
        .and_then(Result::ok);
    let Some(addr) = addr else {
        let status = child.try_wait().ok().flatten();
        panic!(
            "herald did not start (exit: {status:?}); output:\n{}",
            logs.text()
        );
    };
    (child, logs, addr)
}

/// What the server printed, collected by reader tasks.
pub struct Logs {
    text: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Logs {
    pub fn text(&self) -> String {
        self.text.lock().expect("log lock").clone()
    }

    /// Waits until the server's output is read to its end (after it exited).
    async fn drained(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
    }
}

/// How much of the server's log a failing test shows.
const LOG_LINES_SHOWN: usize = 300;

impl Drop for Logs {
    /// A test that fails shows the end of its server's log, so a failure
    /// seen once (on a busy CI machine, say) can be understood afterwards.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = self
            .text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let lines: Vec<&str> = text.lines().collect();
        let shown = &lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..];
        eprintln!(
            "--- the last {} of {} lines of a server's log ---\n{}\n--- end of the server's log ---",
            shown.len(),
            lines.len(),
            shown.join("\n")
        );
    }
}

fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    logs: Arc<Mutex<String>>,
    mut listening: Option<tokio::sync::oneshot::Sender<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && entry["message"] == "listening"
                && let Some(tx) = listening.take()
            {
                let addr = entry["addr"].as_str().unwrap_or_default().to_owned();
                let _ = tx.send(addr);
            }
            let mut logs = logs.lock().expect("log lock");
            logs.push_str(&line);
            logs.push('\n');
        }
    })
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub admin_token: Option<String>,
    child: Option<Child>,
    logs: Logs,
    pub data_dir: TempDir,
    pub database: TestDatabase,
}

/// An onboarded app as the tests use it.
#[derive(Debug, Clone)]
pub struct TestClient {
    pub app_id: String,
    pub token: String,
    pub client_auth_key: String,
    pub webhook_secret: String,
}

impl TestApp {
    /// Herald as shipped (strict network rules), with a known admin token.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: HashMap::from([
                ("HERALD__ADMIN__TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
                (
                    "HERALD__TELEMETRY__LOG_FORMAT".to_owned(),
                    "json".to_owned(),
                ),
                // Tests poll the API faster than a client would.
                (
                    "HERALD__RATE_LIMIT__PER_IP_PER_MINUTE".to_owned(),
                    "1000000".to_owned(),
                ),
                (
                    "HERALD__RATE_LIMIT__PER_APP_PER_MINUTE".to_owned(),
                    "1000000".to_owned(),
                ),
            ]),
            data_dir: None,
            open_files: None,
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn data_path(&self) -> PathBuf {
        self.data_dir.path().join("data")
    }

    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// The id this instance keeps in its data dir (`instance.id`).
    pub fn instance_id(&self) -> String {
        std::fs::read_to_string(self.data_path().join("instance.id"))
            .expect("the instance id file")
            .trim()
            .to_owned()
    }

    /// Sends a request with an optional bearer token and JSON body; returns the
    /// status and the parsed body (`Value::Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("herald answers");
        read(response).await
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let token = self
            .admin_token
            .clone()
            .expect("an admin token is configured");
        self.call(method, path, Some(&token), body).await
    }

    pub async fn onboard(&self, name: &str) -> TestClient {
        self.onboard_with(json!({
            "app_name": name,
            "base_url": PUBLIC_BASE_URL,
            "email": "dev@example.com",
        }))
        .await
    }

    pub async fn onboard_with(&self, body: Value) -> TestClient {
        let (status, body) = self
            .admin(Method::POST, "/admin/api/apps/onboard", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "onboarding failed: {body}");
        let data = &body["data"];
        TestClient {
            app_id: data["app_id"].as_str().expect("app_id").to_owned(),
            token: data["token"].as_str().expect("token").to_owned(),
            client_auth_key: data["client_auth_key"].as_str().expect("key").to_owned(),
            webhook_secret: data["webhook_secret"].as_str().expect("secret").to_owned(),
        }
    }

    pub async fn register(&self, client: &TestClient, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/repositories",
            Some(&client.token),
            Some(body),
        )
        .await
    }

    pub async fn repositories(&self, client: &TestClient) -> Vec<Value> {
        let (status, body) = self
            .call(
                Method::GET,
                "/api/repositories?limit=200",
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().expect("a list").clone()
    }

    pub async fn app_count(&self) -> u64 {
        let (status, body) = self.admin(Method::GET, "/admin/api/apps", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["pagination"]["total"]
            .as_u64()
            .expect("a total")
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("herald is running")
    }

    /// Sends SIGTERM and waits for the exit code.
    /// Waits (bounded) for Herald to exit by itself; its exit code.
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("herald is running");
        let status = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "herald did not exit within {within:?}; logs:\n{}",
                    self.logs()
                )
            })
            .expect("exit status");
        self.logs.drained().await;
        status.code()
    }

    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.pid();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        let mut child = self.child.take().expect("herald is running");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("herald stops within 30 s")
            .expect("exit status");
        self.logs.drained().await;
        status.code()
    }

    /// Kills the server (SIGKILL: no shutdown at all) and hands back its data
    /// directory and database, for a restart.
    pub async fn kill(mut self) -> (TempDir, TestDatabase) {
        let mut child = self.child.take().expect("herald is running");
        child.kill().await.expect("SIGKILL delivered");
        let TestApp {
            data_dir, database, ..
        } = self;
        (data_dir, database)
    }

    /// Stops the server and hands back its data directory and database, for a
    /// restart.
    pub async fn stop(mut self) -> (TempDir, TestDatabase) {
        self.terminate().await;
        self.into_parts()
    }

    /// The data directory and database of a server that has exited, for a
    /// restart.
    pub fn into_parts(self) -> (TempDir, TestDatabase) {
        assert!(self.child.is_none(), "the server has exited");
        let TestApp {
            data_dir, database, ..
        } = self;
        (data_dir, database)
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Asserts the one JSON error shape and returns its code.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) -> String {
    assert_eq!(status, expected, "unexpected answer: {body}");
    assert!(body["error"].is_string(), "no error message in {body}");
    body["code"].as_str().expect("an error code").to_owned()
}

/// One row of the outbox, as the change-engine tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub subscription_id: String,
    pub seq: i64,
    pub kind: String,
    pub path: Option<String>,
    pub sha256: Option<String>,
    pub previous_sha256: Option<String>,
    pub size: Option<i64>,
    pub binary: bool,
    pub commit_sha: Option<String>,
    pub payload: Option<String>,
}

/// The URL of the database of a server whose data directory is `dir` (as
/// [`TestApp::stop`] and [`TestApp::kill`] hand it back), to open it beside
/// the server or between two of its runs.
pub fn database_url(dir: &Path, database: &TestDatabase) -> String {
    database.url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rw",
            dir.join("data").join("herald.db").display()
        )
    })
}

impl TestApp {
    /// The database the server uses, opened beside it.
    pub async fn database(&self) -> sea_orm::DatabaseConnection {
        Database::connect(database_url(self.data_dir.path(), &self.database))
            .await
            .expect("the test opens the server's database")
    }

    /// Every event of `client`'s subscription to `repository_id`, by sequence.
    pub async fn outbox(&self, client: &TestClient, repository_id: &str) -> Vec<OutboxEvent> {
        let db = self.database().await;
        let backend = db.get_database_backend();
        let placeholder = |n: usize| match backend {
            sea_orm::DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        let sql = format!(
            "SELECT e.subscription_id, e.seq, e.kind, e.path, e.sha256, e.previous_sha256, e.size, \
             e.binary, e.commit_sha, e.payload FROM events e JOIN subscriptions s ON s.id = e.subscription_id \
             WHERE s.app_id = {} AND s.repository_id = {} ORDER BY e.seq",
            placeholder(1),
            placeholder(2)
        );
        let rows = db
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                sql,
                [
                    client.app_id.clone().into(),
                    repository_id.to_owned().into(),
                ],
            ))
            .await
            .expect("events");
        let events = rows
            .into_iter()
            .map(|row| OutboxEvent {
                subscription_id: row.try_get("", "subscription_id").expect("column"),
                seq: row.try_get("", "seq").expect("column"),
                kind: row.try_get("", "kind").expect("column"),
                path: row.try_get("", "path").expect("column"),
                sha256: row.try_get("", "sha256").expect("column"),
                previous_sha256: row.try_get("", "previous_sha256").expect("column"),
                size: row.try_get("", "size").expect("column"),
                binary: row.try_get("", "binary").expect("column"),
                commit_sha: row.try_get("", "commit_sha").expect("column"),
                payload: row.try_get("", "payload").expect("column"),
            })
            .collect();
        db.close().await.ok();
        events
    }

    /// One repository of `client`, through the API.
    pub async fn repository(&self, client: &TestClient, repository_id: &str) -> Value {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/repositories/{repository_id}"),
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// One event of `client`, with its attempts, through the API.
    pub async fn event(&self, client: &TestClient, event_id: &str) -> Value {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/events/{event_id}"),
                Some(&client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits (bounded) until the repository view satisfies `done`; returns it.
    pub async fn wait_for(
        &self,
        client: &TestClient,
        repository_id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let view = self.repository(client, repository_id).await;
            if done(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; last view: {view}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until `client`'s events listed by
    /// `/api/events?{query}` satisfy `done`; returns them. Successes are
    /// written a batch at a time, so a delivered event shows a moment after
    /// the receiver got it.
    pub async fn wait_for_events(
        &self,
        client: &TestClient,
        query: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self
                .call(
                    Method::GET,
                    &format!("/api/events?{query}"),
                    Some(&client.token),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let events = body["data"].as_array().expect("a list of events");
            if done(events) {
                return events.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; last events: {body}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the app's subscription has observed `commit`.
    pub async fn wait_for_commit(
        &self,
        client: &TestClient,
        repository_id: &str,
        commit: &str,
    ) -> Value {
        self.wait_for(client, repository_id, &format!("commit {commit}"), |view| {
            view["last_synced_commit"] == commit
        })
        .await
    }
}

/// What instances sharing one database need in tests: the same encryption
/// key (each opens what the others sealed), a short lease time and a fast
/// heartbeat.
pub const CLUSTER: [(&str, &str); 4] = [
    (
        "HERALD__SECURITY__ENCRYPTION_KEY",
        "5f1c0b3a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a19080",
    ),
    ("HERALD__DELIVERY__TIMEOUT", "1s"),
    ("HERALD__CLUSTER__LEASE_TTL", "2s"),
    ("HERALD__CLUSTER__HEARTBEAT_INTERVAL", "200ms"),
];

/// A [`TestAppBuilder::fast`] server with `extra` settings on top.
pub async fn engine_with(extra: &[(&str, &str)]) -> TestApp {
    TestApp::builder().fast().envs(extra).spawn().await
}

/// Onboards an app whose webhooks go to `receiver`.
pub async fn onboard(app: &TestApp, receiver: &Receiver, name: &str) -> TestClient {
    app.onboard_with(
        json!({"app_name": name, "base_url": receiver.base_url, "email": "dev@example.com"}),
    )
    .await
}

/// Registers `url` for the app; returns the repository id.
pub async fn watch(app: &TestApp, client: &TestClient, url: &str) -> String {
    let (status, body) = app.register(client, json!({"url": url})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["repository_id"].as_str().expect("id").to_owned()
}

impl TestApp {
    /// How many rows `table` holds in the server's database: proves that a
    /// refused request wrote nothing.
    pub async fn stored_rows(&self, table: &str) -> i64 {
        self.stored_rows_where(table, "1 = 1").await
    }

    /// How many rows of `table` meet `condition` (SQL the test writes).
    pub async fn stored_rows_where(&self, table: &str, condition: &str) -> i64 {
        let db = self.database().await;
        let backend = db.get_database_backend();
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                backend,
                format!("SELECT COUNT(*) AS n FROM {table} WHERE {condition}"),
            ))
            .await
            .expect("the count query runs")
            .expect("a count");
        let count: i64 = row.try_get("", "n").expect("column");
        db.close().await.ok();
        count
    }

    /// The mirrors in the data directory (none before a repository is
    /// scanned).
    pub fn mirror_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.data_path().join("mirrors")) {
            Ok(entries) => entries
                .map(|entry| entry.expect("a mirror entry").path())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
