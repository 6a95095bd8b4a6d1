//! `herald listen --pull --forward-to URL` end to end: the real binary as
//! the server (the app in pull mode, a real git remote) and as the pull
//! client, forwarding to the tests' own receiver, which checks both
//! signatures independently of Herald's signer.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, TestClient, engine_with, onboard, watch};
use crate::receiver::{Received, Receiver, Reply, verify};

/// A running `herald listen --pull`, its output kept for failure messages.
pub struct PullListener {
    child: Child,
    output: Arc<Mutex<String>>,
    /// The tasks copying stdout and stderr into `output`: done once the
    /// process has exited and its last lines are in.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl PullListener {
    /// Forwarding `app`'s stream (on loopback, hence `--allow-private-url`,
    /// as a user running their own Herald passes it) to `forward_to`.
    fn spawn(app: &TestApp, client: &TestClient, forward_to: &str) -> Self {
        Self::start(
            &app.address,
            &client.token,
            &client.webhook_secret,
            &[
                "--forward-to",
                forward_to,
                "--max-retry-delay",
                "300ms",
                "--allow-private-url",
            ],
        )
    }

    /// `herald listen --pull ARGS` against the server at `url`, with the
    /// app's `token` and webhook `secret` in the environment.
    pub fn start(url: &str, token: &str, secret: &str, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD") {
                command.env_remove(key);
            }
        }
        command
            .args(["listen", "--pull"])
            .args(args)
            .env("HERALD_URL", url)
            .env("HERALD_TOKEN", token)
            .env("HERALD_WEBHOOK_SECRET", secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("herald listen starts");
        let output = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped"), output.clone()),
            collect(child.stderr.take().expect("piped"), output.clone()),
        ];
        Self {
            child,
            output,
            readers,
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// SIGTERM (Ctrl-C): the forward in flight finishes and is acknowledged.
    pub async fn stop(self) -> String {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        let (status, output) = self.exit().await;
        assert!(
            status.success(),
            "listen exited {status}; output:\n{output}"
        );
        output
    }

    /// Waits for the process to end by itself (bounded, so a regression
    /// fails rather than hangs): its exit status and all it printed.
    pub async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => status.expect("an exit status"),
            Err(_) => panic!(
                "listen did not exit within 60 s; output:\n{}",
                self.output()
            ),
        };
        for reader in self.readers.drain(..) {
            reader.await.expect("the output reader ends");
        }
        (status, self.output())
    }
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut output = output.lock().expect("output lock");
            output.push_str(&line);
            output.push('\n');
        }
    })
}

/// An app in pull mode, onboarded with `base_url` pointing at the rig's
/// receiver (which must then get nothing), watching the rig's repository.
async fn pull_app(rig: &Rig) -> (TestApp, TestClient, String) {
    let app = engine_with(&[]).await;
    let client = onboard(&app, &rig.receiver, "puller").await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(json!({"delivery": "pull"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "switching to pull mode: {body}");
    assert_eq!(body["delivery"], "pull", "{body}");
    let repository_id = watch(&app, &client, &rig.url()).await;
    (app, client, repository_id)
}

/// The subscription's events in `seq` order: (id, path).
async fn event_ids(app: &TestApp, client: &TestClient) -> Vec<(String, Option<String>)> {
    let db = app.database().await;
    let backend = db.get_database_backend();
    let placeholder = match backend {
        sea_orm::DbBackend::Postgres => "$1",
        _ => "?",
    };
    let rows = db
        .query_all_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT e.id, e.path FROM events e JOIN subscriptions s \
                 ON s.id = e.subscription_id WHERE s.app_id = {placeholder} ORDER BY e.seq"
            ),
            [client.app_id.clone().into()],
        ))
        .await
        .expect("the events");
    db.close().await.ok();
    rows.iter()
        .map(|row| {
            (
                row.try_get("", "id").expect("id"),
                row.try_get("", "path").expect("path"),
            )
        })
        .collect()
}

/// Waits until the receiver accepted `count` distinct webhook-ids.
async fn accepted_ids(receiver: &Receiver, count: usize, listener: &PullListener) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let distinct: HashSet<String> = receiver
            .accepted()
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        if distinct.len() >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {count} forwarded events, have {}; listen output:\n{}",
            distinct.len(),
            listener.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event forwarded exactly once (by webhook-id), in `seq` order
/// (so in order per path), both signatures valid. `accepted` is read once
/// the listener exited: nothing is forwarded after.
async fn assert_forwarded_once(app: &TestApp, client: &TestClient, accepted: &[Received]) {
    let events = event_ids(app, client).await;
    let forwarded: Vec<&str> = accepted.iter().map(|r| r.header("webhook-id")).collect();
    let expected: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(forwarded, expected, "each event once, in stream order");
    let paths: HashMap<&str, &Option<String>> = events
        .iter()
        .map(|(id, path)| (id.as_str(), path))
        .collect();
    for request in accepted {
        verify(request, &client.client_auth_key, &client.webhook_secret);
        let body = request.json();
        assert_eq!(body["event_id"], request.header("webhook-id"));
        assert_eq!(
            body["file"]["path"].as_str(),
            paths[request.header("webhook-id")].as_deref()
        );
        assert_eq!(request.header("x-docora-app-id"), client.app_id);
        // The CloudEvents attributes push delivery sends, read from the body.
        assert_eq!(request.header("ce-id"), request.header("webhook-id"));
        assert_eq!(
            request.header("ce-source"),
            format!(
                "/repositories/{}",
                body["repository"]["repository_id"].as_str().expect("an id")
            )
        );
        assert!(request.header("ce-type").starts_with("dev.herald."));
        if let Some(timestamp) = body["timestamp"].as_str() {
            assert_eq!(request.header("ce-time"), timestamp);
        }
    }
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_every_change_once_in_order() {
    let repo = TestRepo::new("main");
    repo.write("a.txt", "a1\n");
    repo.write("b.txt", "b1\n");
    repo.write("docs/c.md", "# c\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let (app, client, _) = pull_app(&rig).await;

    let local = Receiver::start().await;
    local.fallback(Some(Reply::status(500)));
    let listener = PullListener::spawn(&app, &client, &local.base_url);
    // Failing for a while: the first event is tried again and again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while local.arrivals() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retries; listen output:\n{}",
            listener.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed = local.received();
    let first = failed[0].header("webhook-id").to_owned();
    assert!(
        failed.iter().all(|r| r.header("webhook-id") == first),
        "nothing is skipped past a failing event"
    );
    local.fallback(None);
    accepted_ids(&local, 3, &listener).await;

    // Changes made while the stream is open come through it too.
    repo.write("a.txt", "a2\n");
    repo.remove("b.txt");
    repo.write("d.txt", "d1\n");
    repo.commit("second");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    accepted_ids(&local, 6, &listener).await;
    repo.write("a.txt", "a3\n");
    repo.commit("third");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    accepted_ids(&local, 7, &listener).await;

    let output = listener.stop().await;
    assert_forwarded_once(&app, &client, &local.accepted()).await;
    assert_eq!(event_ids(&app, &client).await.len(), 7, "{output}");
    assert_eq!(rig.receiver.arrivals(), 0, "pull mode sends no webhook");
}

#[tokio::test]
async fn a_restarted_listener_resumes_without_loss_or_repeat() {
    let repo = TestRepo::new("main");
    for i in 0..20 {
        repo.write(&format!("f{i:02}.txt"), format!("{i}\n"));
    }
    repo.commit("twenty files");
    let rig = Rig::serve(&repo).await;
    let (app, client, _) = pull_app(&rig).await;

    // A slow receiver, so the stop lands in the middle of the stream.
    let local = Receiver::start().await;
    local.answer_by(|_| Reply {
        status: 204,
        retry_after: None,
        delay: Duration::from_millis(50),
    });
    let listener = PullListener::spawn(&app, &client, &local.base_url);
    accepted_ids(&local, 5, &listener).await;
    listener.stop().await;
    let before = local.accepted().len();
    assert!(before < 20, "the stop came before the end of the stream");

    // Changes while nobody listens wait on the stream.
    repo.write("f00.txt", "changed\n");
    repo.remove("f01.txt");
    repo.commit("while away");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);

    let listener = PullListener::spawn(&app, &client, &local.base_url);
    accepted_ids(&local, 22, &listener).await;
    listener.stop().await;
    assert_forwarded_once(&app, &client, &local.accepted()).await;
    assert_eq!(rig.receiver.arrivals(), 0, "pull mode sends no webhook");
}

#[tokio::test]
async fn an_app_in_push_mode_is_told_to_switch() {
    let repo = TestRepo::new("main");
    repo.write("a.txt", "a\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[]).await;
    let client = onboard(&app, &rig.receiver, "pusher").await;
    let listener = PullListener::spawn(&app, &client, &rig.receiver.base_url);
    let (status, output) = listener.exit().await;
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("\"delivery\": \"pull\""), "{output}");
}
