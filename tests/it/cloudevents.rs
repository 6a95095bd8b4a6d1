//! CloudEvents on real webhooks, read by the official CloudEvents SDK of
//! another language: a Python receiver (fixtures/cloudevents/receiver.py)
//! parses every request Herald sends with the `cloudevents` package's HTTP
//! binding, the attributes it reads are checked against the bodies, and the
//! bodies against the AsyncAPI document's schemas. The document itself
//! (`/asyncapi.json`) is checked with the official AsyncAPI parser.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{engine_with, watch};

/// The Python that has the CloudEvents SDK and jsonschema: `HERALD_PYTHON`
/// (`.ci/run` sets it to the virtualenv it installs them in), else
/// `python3`. `None` (after a note) outside CI when it lacks them; in CI
/// (`HERALD_CI`) their absence fails the test.
fn python_with_sdk() -> Option<String> {
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = std::process::Command::new(&python)
        .args(["-c", "import cloudevents.core.bindings.http, jsonschema"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some(python);
    }
    assert!(
        std::env::var_os("HERALD_CI").is_none(),
        "{python} lacks the CloudEvents SDK or jsonschema (pip install cloudevents jsonschema); .ci/run installs them"
    );
    eprintln!(
        "note: skipping a CloudEvents test: {python} lacks the SDK or jsonschema (pip install cloudevents jsonschema)"
    );
    None
}

/// The Python receiver, and what it printed: one line per request.
struct PythonReceiver {
    base_url: String,
    lines: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
}

impl PythonReceiver {
    /// Started with the AsyncAPI document at `asyncapi` to check bodies by.
    async fn start(python: &str, asyncapi: &std::path::Path) -> PythonReceiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/fixtures/cloudevents/receiver.py"
        );
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(asyncapi)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the Python receiver starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the receiver says its port")
            .expect("its output")
            .expect("a first line");
        let port = first.strip_prefix("port ").expect("`port <n>`");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let value: Value = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().expect("lines").push(value);
            }
        });
        PythonReceiver {
            base_url: format!("http://127.0.0.1:{port}/hooks"),
            lines,
            _child: child,
        }
    }

    /// The lines printed once `done` holds of them (at most a minute).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let lines = self.lines.lock().expect("lines").clone();
            if done(&lines) {
                return lines;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited for {what}; the receiver read {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `time` (RFC 3339) in Unix milliseconds.
fn unix_ms(time: &str) -> i128 {
    let at = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|err| panic!("{time}: {err}"));
    at.unix_timestamp_nanos() / 1_000_000
}

/// Checks one request as the SDK read it: its attributes against its
/// body and its `webhook-id`; returns its endpoint and subject.
fn check(line: &Value, repository_id: &str) -> (String, Option<String>) {
    assert!(line["error"].is_null(), "the SDK refused a request: {line}");
    assert_eq!(
        line["schema_errors"],
        json!([]),
        "the body matches its AsyncAPI schema: {line}"
    );
    let (event, data) = (&line["event"], &line["event"]["data"]);
    let endpoint = line["endpoint"].as_str().expect("an endpoint").to_owned();
    assert_eq!(event["specversion"], "1.0", "{line}");
    assert_eq!(
        event["id"], line["webhook_id"],
        "ce-id is the webhook-id: {line}"
    );
    assert_eq!(
        event["source"],
        format!("/repositories/{repository_id}"),
        "{line}"
    );
    assert_eq!(data["repository"]["repository_id"], repository_id);
    let expected_type = match endpoint.as_str() {
        "create" => "dev.herald.file.created",
        "update" => "dev.herald.file.updated",
        "delete" => "dev.herald.file.deleted",
        "file_too_large" => "dev.herald.file.too_large",
        "synced" => "dev.herald.synced",
        other => panic!("an endpoint this test does not make: {other}"),
    };
    assert_eq!(event["type"], expected_type, "{line}");
    assert_eq!(event["datacontenttype"], "application/json", "{line}");
    // The body is the event's data, unchanged: Docora's fields.
    let id = data["event_id"].as_str().expect("the body's event_id");
    let webhook_id = line["webhook_id"].as_str().expect("a webhook-id");
    assert!(webhook_id.starts_with(id), "{webhook_id} is of {id}");
    let subject = event["subject"].as_str().map(str::to_owned);
    if endpoint == "synced" {
        assert_eq!(subject, None, "a notification names no file: {line}");
        assert!(event["time_ms"].is_i64(), "{line}");
    } else {
        assert_eq!(
            subject.as_deref(),
            data["file"]["path"].as_str(),
            "ce-subject is the file's path: {line}"
        );
        let timestamp = data["timestamp"].as_str().expect("a timestamp");
        assert_eq!(
            i128::from(event["time_ms"].as_i64().expect("a ce-time")),
            unix_ms(timestamp),
            "ce-time is the event's time: {line}"
        );
    }
    (endpoint, subject)
}

#[tokio::test]
async fn the_cloudevents_sdk_reads_every_webhook_herald_sends() {
    let Some(python) = python_with_sdk() else {
        return;
    };
    // A path that needs percent-encoding in a header (non-ASCII, a space,
    // a percent sign), a binary file sent in chunks, and one too large.
    let text = "docs/ünï côde 100%.md";
    let repo = TestRepo::new("main");
    repo.write(text, "hello\n");
    let binary: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
    repo.write("big.bin", &binary);
    repo.write("huge.txt", "x".repeat(5_000));
    repo.commit("first");
    let served = Served::new(&repo, "r.git");
    let daemon = GitDaemon::serve(served.root());

    let app = engine_with(&[
        ("HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES", "1000"),
        ("HERALD__DELIVERY__CHUNK_SIZE_BYTES", "1000"),
        ("HERALD__DELIVERY__MAX_FILE_BYTES", "4096"),
    ])
    .await;
    let document = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(document.path(), asyncapi(&app).await.to_string()).expect("written");
    let receiver = PythonReceiver::start(&python, document.path()).await;
    let client = app
        .onboard_with(json!({
            "app_name": "acme",
            "base_url": receiver.base_url,
            "email": "dev@example.com",
        }))
        .await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(json!({"notify_synced": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = watch(&app, &client, &daemon.url("r.git")).await;

    let synced = |n: usize| {
        move |lines: &[Value]| lines.iter().filter(|l| l["endpoint"] == "synced").count() >= n
    };
    let first = receiver.wait_for("the first snapshot", synced(1)).await;
    let seen: Vec<(String, Option<String>)> = first.iter().map(|l| check(l, &id)).collect();
    let chunks: Vec<&Value> = first
        .iter()
        .filter(|l| l["event"]["subject"] == "big.bin")
        .collect();
    assert_eq!(
        chunks.len(),
        4,
        "3,000 bytes in chunks of 1,000 base64 characters"
    );
    for (index, chunk) in chunks.iter().enumerate() {
        let event_id = chunk["event"]["data"]["event_id"].as_str().expect("an id");
        assert_eq!(
            chunk["event"]["id"],
            format!("{event_id}_{index}"),
            "each chunk's ce-id is its own webhook-id"
        );
    }
    let mut files: Vec<_> = seen
        .iter()
        .filter(|(endpoint, _)| endpoint != "synced")
        .collect();
    files.dedup();
    let mut expected = [
        ("create".to_owned(), Some("big.bin".to_owned())),
        ("create".to_owned(), Some(text.to_owned())),
        ("file_too_large".to_owned(), Some("huge.txt".to_owned())),
    ];
    expected.sort();
    files.sort();
    assert_eq!(files, expected.iter().collect::<Vec<_>>());

    repo.write(text, "hello again\n");
    repo.remove("big.bin");
    repo.commit("second");
    served.push(&repo, "HEAD:refs/heads/main", false);
    let all = receiver.wait_for("the second snapshot", synced(2)).await;
    let second: Vec<(String, Option<String>)> =
        all[first.len()..].iter().map(|l| check(l, &id)).collect();
    let mut changed: Vec<_> = second.iter().filter(|(e, _)| e != "synced").collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            &("delete".to_owned(), Some("big.bin".to_owned())),
            &("update".to_owned(), Some(text.to_owned())),
        ]
    );
}

/// `GET /asyncapi.json`, public.
async fn asyncapi(app: &crate::helpers::TestApp) -> Value {
    let (status, document) = app.call(Method::GET, "/asyncapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "{document}");
    document
}

/// Where `.ci/run` installed `@asyncapi/parser` (`HERALD_ASYNCAPI_PARSER`,
/// a `node_modules` folder); `None` (after a note) outside CI when unset.
fn asyncapi_parser() -> Option<String> {
    if let Ok(modules) = std::env::var("HERALD_ASYNCAPI_PARSER") {
        return Some(modules);
    }
    assert!(
        std::env::var_os("HERALD_CI").is_none(),
        "HERALD_ASYNCAPI_PARSER is unset; .ci/run installs @asyncapi/parser and sets it"
    );
    eprintln!(
        "note: not running the AsyncAPI parser: set HERALD_ASYNCAPI_PARSER to a node_modules holding @asyncapi/parser"
    );
    None
}

#[tokio::test]
async fn the_asyncapi_document_describes_every_channel_and_parses() {
    let app = engine_with(&[]).await;
    let document = asyncapi(&app).await;
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let channels = document["channels"].as_object().expect("channels");
    let headers = &document["components"]["schemas"]["SignedHeaders"];
    let required = headers["required"].as_array().expect("required headers");
    for name in [
        "webhook-id",
        "webhook-signature",
        "x-docora-signature",
        "ce-specversion",
        "ce-id",
        "ce-type",
        "ce-source",
        "ce-time",
    ] {
        assert!(required.contains(&json!(name)), "{name}");
    }
    assert!(headers["properties"]["ce-subject"].is_object(), "{headers}");
    for endpoint in [
        "create",
        "update",
        "delete",
        "file_too_large",
        "sync_failed",
        "synced",
        "submodule",
    ] {
        let channel = &channels[&format!("webhook_{endpoint}")];
        assert_eq!(channel["address"], format!("/{endpoint}"), "{channel}");
        let message = &document["components"]["messages"][endpoint];
        assert!(message["payload"]["$ref"].is_string(), "{message}");
        for other in ["stream", "nats", "amqp", "redis"] {
            assert!(
                channels[other]["messages"][endpoint].is_object(),
                "{other}: {endpoint}"
            );
        }
    }
    assert_eq!(channels["stream"]["address"], "/api/stream");
    for broker in ["nats", "amqp", "redis"] {
        assert_eq!(document["servers"][broker]["protocol"], broker);
        assert!(
            channels[broker]["address"]
                .as_str()
                .is_some_and(|address| address.contains('{')),
            "{broker}: an address template"
        );
    }

    let Some(modules) = asyncapi_parser() else {
        return;
    };
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), document.to_string()).expect("written");
    let output = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.ci/asyncapi/validate.cjs"
        ))
        .arg(file.path())
        .env("NODE_PATH", modules)
        .output()
        .await
        .expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the AsyncAPI parser refused the document:\n{said}"
    );
    assert!(said.contains("valid AsyncAPI 3.0.0"), "{said}");
}
