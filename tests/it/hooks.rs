//! Inbound push webhooks end to end: the real binary, a real git server
//! (`git http-backend`), a real receiver. Payloads are the providers'
//! documented push, ping and tag events (tests/it/fixtures/hooks), pointed at
//! the local repository and signed here, independently of Herald's code.
//!
//! The poll interval and the scheduler tick are an hour: whatever arrives
//! during a test arrived because of a hook.
//!
//! [`hosts`]: the other shapes real hosts send (form content types, GitLab
//! system hooks, Gitea deletions, Bitbucket Cloud), large payloads, invalid
//! hooks as operators see them, and scans asked for through the API.

mod hosts;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::gitserver::{HttpGitServer, Served, TestRepo};
use crate::helpers::{
    TestApp, TestAppBuilder, TestClient, assert_error, database_url, onboard, read, watch,
};
use crate::receiver::Receiver;

const GITHUB_SECRET: &str = "github-webhook-secret-0123";
const GITLAB_TOKEN: &str = "gitlab-webhook-token-4567";
const GITEA_SECRET: &str = "gitea-webhook-secret-89ab";
const BITBUCKET_SECRET: &str = "bitbucket-webhook-secret-cdef";

fn fixture(name: &str) -> Value {
    let text = match name {
        "github_push" => include_str!("fixtures/hooks/github_push.json"),
        "github_ping" => include_str!("fixtures/hooks/github_ping.json"),
        "gitlab_push" => include_str!("fixtures/hooks/gitlab_push.json"),
        "gitlab_tag_push" => include_str!("fixtures/hooks/gitlab_tag_push.json"),
        "gitea_push" => include_str!("fixtures/hooks/gitea_push.json"),
        "gitea_delete" => include_str!("fixtures/hooks/gitea_delete.json"),
        "gitlab_repository_update" => include_str!("fixtures/hooks/gitlab_repository_update.json"),
        "bitbucket_push" => include_str!("fixtures/hooks/bitbucket_push.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).expect("fixtures are JSON")
}

/// Hex HMAC-SHA256, as GitHub and Gitea compute it.
fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    GitHub,
    GitLab,
    Gitea,
}

#[derive(Debug, Clone, Copy)]
enum Signature {
    Valid,
    /// Signed with another secret (GitLab: another token).
    Wrong,
    Missing,
}

/// Posts a hook to `path` with these headers (a JSON body unless a
/// content type is among them).
async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = app.client.post(app.url(path)).body(body);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    read(request.send().await.expect("herald answers")).await
}

/// Sends a JSON hook the way the provider does.
async fn send(
    app: &TestApp,
    provider: Provider,
    event: &str,
    delivery: Option<&str>,
    body: &[u8],
    signature: Signature,
) -> (StatusCode, Value) {
    let (path, event_header, delivery_header) = match provider {
        Provider::GitHub => ("/hooks/github", "X-GitHub-Event", "X-GitHub-Delivery"),
        Provider::GitLab => ("/hooks/gitlab", "X-Gitlab-Event", "X-Gitlab-Event-UUID"),
        Provider::Gitea => ("/hooks/gitea", "X-Gitea-Event", "X-Gitea-Delivery"),
    };
    let mut headers = vec![(event_header, event.to_owned())];
    if let Some(delivery) = delivery {
        headers.push((delivery_header, delivery.to_owned()));
    }
    let secret = |good: &'static str| match signature {
        Signature::Valid => Some(good),
        Signature::Wrong => Some("not-the-configured-secret"),
        Signature::Missing => None,
    };
    match provider {
        Provider::GitHub => {
            if let Some(secret) = secret(GITHUB_SECRET) {
                let value = format!("sha256={}", hmac_hex(secret, body));
                headers.push(("X-Hub-Signature-256", value));
            }
        }
        Provider::GitLab => {
            if let Some(token) = secret(GITLAB_TOKEN) {
                headers.push(("X-Gitlab-Token", token.to_owned()));
            }
        }
        Provider::Gitea => {
            if let Some(secret) = secret(GITEA_SECRET) {
                headers.push(("X-Gitea-Signature", hmac_hex(secret, body)));
            }
        }
    }
    post(app, path, &headers, body.to_vec()).await
}

fn hook_env(builder: TestAppBuilder) -> TestAppBuilder {
    builder
        .loopback()
        .env("HERALD__SCHEDULER__TICK", "1h")
        .env("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h")
        .env("HERALD__DELIVERY__TICK", "100ms")
        .env("HERALD__INBOUND__GITHUB_SECRET", GITHUB_SECRET)
        .env("HERALD__INBOUND__GITLAB_TOKEN", GITLAB_TOKEN)
        .env("HERALD__INBOUND__GITEA_SECRET", GITEA_SECRET)
        .env("HERALD__INBOUND__BITBUCKET_SECRET", BITBUCKET_SECRET)
}

/// One stored hook, as the database holds it.
#[derive(Debug, Clone)]
struct HookRow {
    id: String,
    provider: String,
    delivery_id: String,
    status: String,
    result: Option<String>,
}

async fn hooks(app: &TestApp) -> Vec<HookRow> {
    let db = app.database().await;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT id, provider, delivery_id, status, result FROM inbound_hooks ORDER BY id",
        ))
        .await
        .expect("inbound hooks");
    db.close().await.ok();
    rows.into_iter()
        .map(|row| HookRow {
            id: row.try_get("", "id").expect("column"),
            provider: row.try_get("", "provider").expect("column"),
            delivery_id: row.try_get("", "delivery_id").expect("column"),
            status: row.try_get("", "status").expect("column"),
            result: row.try_get("", "result").expect("column"),
        })
        .collect()
}

/// Waits (bounded) until the hook was processed; returns its row.
async fn processed(app: &TestApp, hook_id: &str) -> HookRow {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(row) = hooks(app)
            .await
            .into_iter()
            .find(|h| h.id == hook_id && h.status != "received")
        {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hook {hook_id} was not processed; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends a properly signed JSON hook and waits until it was processed.
async fn deliver(
    app: &TestApp,
    provider: Provider,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> HookRow {
    let (status, reply) = send(app, provider, event, Some(delivery), body, Signature::Valid).await;
    processed(app, &accepted(status, &reply)).await
}

fn accepted(status: StatusCode, body: &Value) -> String {
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    body["hook_id"].as_str().expect("a hook id").to_owned()
}

/// A watched repository served over `git http-backend`, an app subscribed
/// to it, its initial snapshot delivered.
struct World {
    app: TestApp,
    receiver: Receiver,
    repo: TestRepo,
    served: Served,
    server: HttpGitServer,
    client: TestClient,
    repository_id: String,
}

impl World {
    async fn start(builder: TestAppBuilder) -> World {
        let repo = TestRepo::new("main");
        repo.write("README.md", "hello\n");
        repo.commit("initial");
        let served = Served::new(&repo, "widgets.git");
        let server = HttpGitServer::serve(served.root(), None);
        let app = hook_env(builder).spawn().await;
        let receiver = Receiver::start().await;
        let client = onboard(&app, &receiver, "hooked").await;
        let repository_id = watch(&app, &client, &server.url("widgets.git")).await;
        receiver
            .wait_for("the initial snapshot", |r| has_file(r, "README.md"))
            .await;
        World {
            app,
            receiver,
            repo,
            served,
            server,
            client,
            repository_id,
        }
    }

    /// Commits a new file and pushes it to the served repository.
    fn push_file(&self, path: &str) -> String {
        self.repo.write(path, format!("{path}\n"));
        let commit = self.repo.commit(path);
        self.served.push(&self.repo, "HEAD:refs/heads/main", false);
        commit
    }

    /// How the server sees the repository in the URL forms of a host:
    /// (https clone URL, ssh URL, web URL), in another case and with `.git`.
    fn urls(&self) -> (String, String, String) {
        let port = self.server.port();
        (
            format!("http://127.0.0.1:{port}/Widgets.git"),
            "git@127.0.0.1:Widgets.git".to_owned(),
            format!("http://127.0.0.1:{port}/widgets/"),
        )
    }

    fn github_push(&self, reference: &str, after: &str) -> Vec<u8> {
        let (clone, ssh, web) = self.urls();
        let mut body = fixture("github_push");
        body["ref"] = json!(reference);
        body["after"] = json!(after);
        body["deleted"] = json!(after.bytes().all(|b| b == b'0'));
        body["repository"]["clone_url"] = json!(clone);
        body["repository"]["ssh_url"] = json!(ssh);
        body["repository"]["html_url"] = json!(web);
        serde_json::to_vec(&body).expect("JSON")
    }
}

fn has_file(received: &[crate::receiver::Received], path: &str) -> bool {
    received
        .iter()
        .any(|r| r.endpoint == "create" && r.json()["file"]["path"] == path)
}

#[tokio::test]
async fn a_github_push_reaches_the_receiver_without_waiting_for_the_poll() {
    let world = World::start(TestApp::builder()).await;
    let commit = world.push_file("docs/pushed.md");

    let body = world.github_push("refs/heads/main", &commit);
    let (status, reply) = send(
        &world.app,
        Provider::GitHub,
        "push",
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        &body,
        Signature::Valid,
    )
    .await;
    let hook_id = accepted(status, &reply);

    world
        .receiver
        .wait_for("the pushed file", |r| has_file(r, "docs/pushed.md"))
        .await;
    let row = processed(&world.app, &hook_id).await;
    assert_eq!(row.status, "triggered", "{row:?}");
    assert_eq!(
        row.result.as_deref(),
        Some(format!("scanning {}", world.repository_id).as_str())
    );
    assert_eq!(
        (row.provider.as_str(), row.delivery_id.as_str()),
        ("github", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
}

#[tokio::test]
async fn pings_tags_other_branches_deletions_and_unknown_repositories() {
    let world = World::start(TestApp::builder()).await;
    let app = &world.app;

    // A ping is answered and not stored.
    let ping = serde_json::to_vec(&fixture("github_ping")).expect("JSON");
    let (status, body) = send(
        app,
        Provider::GitHub,
        "ping",
        Some("p-1"),
        &ping,
        Signature::Valid,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pong");
    // Events that never trigger a scan are answered and not stored either.
    let (status, body) = send(
        app,
        Provider::GitHub,
        "issues",
        Some("i-1"),
        b"{}",
        Signature::Valid,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored"))
    );
    assert!(hooks(app).await.is_empty());

    let sha = "a".repeat(40);
    let cases = [
        (world.github_push("refs/tags/v1.0.0", &sha), "tag push"),
        (
            world.github_push("refs/heads/feature", &sha),
            "branch `feature` is not watched",
        ),
        (
            world.github_push("refs/heads/feature", &"0".repeat(40)),
            "branch `feature` is not watched",
        ),
        (
            // The documented payload, untouched: a repository nobody watches.
            serde_json::to_vec(&fixture("github_push")).expect("JSON"),
            "no watched repository matches",
        ),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let (status, reply) = send(
            app,
            Provider::GitHub,
            "push",
            Some(&format!("case-{i}")),
            body,
            Signature::Valid,
        )
        .await;
        let hook_id = accepted(status, &reply);
        let row = processed(app, &hook_id).await;
        assert_eq!(
            (row.status.as_str(), row.result.as_deref()),
            ("ignored", Some(*expected)),
            "case {i}"
        );
    }
    let tag = serde_json::to_vec(&fixture("gitlab_tag_push")).expect("JSON");
    let (status, reply) = send(
        app,
        Provider::GitLab,
        "Tag Push Hook",
        None,
        &tag,
        Signature::Valid,
    )
    .await;
    let row = processed(app, &accepted(status, &reply)).await;
    assert_eq!(row.result.as_deref(), Some("tag push"));

    // The watched branch deleted: scanned at once, so the failure shows now
    // rather than at the next poll.
    crate::gitserver::run_git(&world.served.bare, &["update-ref", "-d", "refs/heads/main"]);
    let body = world.github_push("refs/heads/main", &"0".repeat(40));
    let (status, reply) = send(
        app,
        Provider::GitHub,
        "push",
        Some("deleted"),
        &body,
        Signature::Valid,
    )
    .await;
    let row = processed(app, &accepted(status, &reply)).await;
    assert_eq!(row.status, "triggered");
    assert_eq!(
        row.result,
        Some(format!("branch deleted; scanning {}", world.repository_id))
    );
    world
        .app
        .wait_for(
            &world.client,
            &world.repository_id,
            "the scan's failure",
            |view| !view["last_error"].is_null(),
        )
        .await;
}

#[tokio::test]
async fn gitlab_and_gitea_pushes_trigger_scans() {
    let world = World::start(TestApp::builder()).await;
    let port = world.server.port();

    let commit = world.push_file("from-gitlab.txt");
    let mut gitlab = fixture("gitlab_push");
    gitlab["ref"] = json!("refs/heads/main");
    gitlab["after"] = json!(commit);
    gitlab["checkout_sha"] = json!(commit);
    gitlab["project"]["git_http_url"] = json!(format!("http://127.0.0.1:{port}/widgets.git"));
    gitlab["project"]["git_ssh_url"] = json!("ssh://git@127.0.0.1:2222/widgets.git");
    gitlab["project"]["web_url"] = json!(format!("http://127.0.0.1:{port}/widgets"));
    let body = serde_json::to_vec(&gitlab).expect("JSON");
    let (status, reply) = send(
        &world.app,
        Provider::GitLab,
        "Push Hook",
        Some("0aa6c2f8-35e4-4c9a-8c2e-8d1f2a6f3c01"),
        &body,
        Signature::Valid,
    )
    .await;
    let hook = accepted(status, &reply);
    world
        .receiver
        .wait_for("the file pushed (GitLab)", |r| {
            has_file(r, "from-gitlab.txt")
        })
        .await;
    assert_eq!(processed(&world.app, &hook).await.status, "triggered");

    let commit = world.push_file("from-gitea.txt");
    let mut gitea = fixture("gitea_push");
    gitea["ref"] = json!("refs/heads/main");
    gitea["after"] = json!(commit);
    // Only the ssh URL names the repository: scp-like, upper case, `.git`.
    gitea["repository"]["clone_url"] = json!("http://localhost:3000/gitea/webhooks.git");
    gitea["repository"]["html_url"] = json!("http://localhost:3000/gitea/webhooks");
    gitea["repository"]["ssh_url"] = json!("git@127.0.0.1:WIDGETS.git");
    let body = serde_json::to_vec(&gitea).expect("JSON");
    let (status, reply) = send(
        &world.app,
        Provider::Gitea,
        "push",
        Some("3c1c2f7b-9b0e-4a55-a1f3-7c1f5d2e9a10"),
        &body,
        Signature::Valid,
    )
    .await;
    let hook = accepted(status, &reply);
    world
        .receiver
        .wait_for("the file pushed (Gitea)", |r| has_file(r, "from-gitea.txt"))
        .await;
    assert_eq!(processed(&world.app, &hook).await.status, "triggered");
}

#[tokio::test]
async fn bad_missing_and_oversized_hooks_are_refused_and_nothing_is_stored() {
    let app = TestApp::builder()
        .env("HERALD__INBOUND__GITHUB_SECRET", GITHUB_SECRET)
        .env("HERALD__INBOUND__GITLAB_TOKEN", GITLAB_TOKEN)
        .env("HERALD__INBOUND__MAX_BODY_BYTES", "16384")
        .env("HERALD__RATE_LIMIT__INBOUND_PER_MINUTE", "30")
        .spawn()
        .await;
    let push = serde_json::to_vec(&fixture("github_push")).expect("JSON");
    for (provider, event) in [(Provider::GitHub, "push"), (Provider::GitLab, "Push Hook")] {
        for signature in [Signature::Wrong, Signature::Missing] {
            let (status, body) = send(&app, provider, event, Some("d-1"), &push, signature).await;
            assert_eq!(
                assert_error(status, &body, StatusCode::UNAUTHORIZED),
                "unauthorized",
                "{provider:?} {signature:?}"
            );
        }
    }
    // A GitHub signature over other bytes, and one without its `sha256=` prefix.
    let signed_other = format!("sha256={}", hmac_hex(GITHUB_SECRET, b"{}"));
    let unprefixed = hmac_hex(GITHUB_SECRET, &push);
    for signature in [signed_other, unprefixed] {
        let response = app
            .client
            .post(app.url("/hooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", signature)
            .body(push.clone())
            .send()
            .await
            .expect("herald answers");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // No Gitea secret configured: the endpoint does not exist.
    let (status, body) = send(&app, Provider::Gitea, "push", None, &push, Signature::Valid).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    // Larger than inbound.max_body_bytes, properly signed.
    let mut large = fixture("github_push");
    large["padding"] = json!("x".repeat(20_000));
    let large = serde_json::to_vec(&large).expect("JSON");
    let (status, body) = send(
        &app,
        Provider::GitHub,
        "push",
        Some("big"),
        &large,
        Signature::Valid,
    )
    .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE);

    assert!(hooks(&app).await.is_empty(), "nothing may be stored");

    // The inbound budget (30 a minute per address) runs out.
    let mut limited = None;
    for i in 0..60 {
        let (status, body) = send(
            &app,
            Provider::GitHub,
            "push",
            Some("r"),
            b"{}",
            Signature::Missing,
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, body));
            break;
        }
    }
    let (_, body) = limited.expect("the inbound rate limit applies");
    assert_eq!(body["code"], "rate_limited");
    // The rest of the API has a budget of its own.
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// `herald_inbound_hooks_total` of one provider and outcome.
fn hook_count(metrics: &prometheus_parse::Scrape, provider: &str, outcome: &str) -> f64 {
    crate::telemetry::value(
        metrics,
        "herald_inbound_hooks_total",
        &[("provider", provider), ("outcome", outcome)],
    )
}

/// Scrapes `/metrics` until `done` holds for the provider's hook counts.
async fn hook_metrics(
    app: &TestApp,
    provider: &str,
    done: impl Fn(&dyn Fn(&str) -> f64) -> bool,
) -> prometheus_parse::Scrape {
    crate::telemetry::scrape_until(app, "the inbound hook counts", |metrics| {
        done(&|outcome| hook_count(metrics, provider, outcome))
    })
    .await
}

fn scans(logs: &str) -> usize {
    logs.lines().filter(|l| l.contains("scan finished")).count()
}

/// Waits until at least `count` scans have logged their end, and returns how
/// many have. A scan's end is logged after its events are written, so a
/// webhook can reach the receiver before the line reaches the log.
async fn scans_reach(app: &TestApp, count: usize) -> usize {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = app.logs();
        let seen = scans(&logs);
        if seen >= count {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{seen} of {count} scans finished; logs:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_duplicate_delivery_causes_a_single_scan() {
    let world = World::start(TestApp::builder().env(
        "HERALD__TELEMETRY__LOG_LEVEL",
        "info,actors::repo_watcher=debug",
    ))
    .await;
    let app = &world.app;
    // The initial scan's end may reach the log just after its webhook.
    let before = scans_reach(app, 1).await;

    // The same delivery twice (GitHub redelivers with the same id).
    let head = world.served.rev_parse("refs/heads/main");
    let body = world.github_push("refs/heads/main", &head);
    let (status, first) = send(
        app,
        Provider::GitHub,
        "push",
        Some("same-id"),
        &body,
        Signature::Valid,
    )
    .await;
    let hook = accepted(status, &first);
    let (status, second) = send(
        app,
        Provider::GitHub,
        "push",
        Some("same-id"),
        &body,
        Signature::Valid,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["hook_id"], hook.as_str());
    processed(app, &hook).await;
    scans_reach(app, before + 1).await;

    // Without a delivery id the body's hash is the id: a resend is a duplicate too.
    let commit = world.push_file("after-duplicate.txt");
    let body = world.github_push("refs/heads/main", &commit);
    let (status, first) = send(app, Provider::GitHub, "push", None, &body, Signature::Valid).await;
    let hook = accepted(status, &first);
    let (_, second) = send(app, Provider::GitHub, "push", None, &body, Signature::Valid).await;
    assert_eq!(second["status"], "duplicate");
    world
        .receiver
        .wait_for("the pushed file", |r| has_file(r, "after-duplicate.txt"))
        .await;
    processed(app, &hook).await;

    // Every scan asked for has run by now (the last one delivered the file):
    // one per stored hook, none for the duplicates.
    let after = scans_reach(app, before + 2).await;
    assert_eq!(after, before + 2, "logs:\n{}", app.logs());
    let stored = hooks(app).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored[1].delivery_id.starts_with("sha256:"));

    // Operators see the same in /metrics (a stored hook is counted once
    // processed, just after its row is).
    let metrics = hook_metrics(app, "github", |count| count("accepted") >= 2.0).await;
    let count = |outcome: &str| hook_count(&metrics, "github", outcome);
    assert_eq!(count("accepted"), 2.0);
    assert_eq!(count("duplicate"), 2.0);
}

#[tokio::test]
async fn a_hook_stored_before_a_crash_is_processed_after_the_restart() {
    let world = World::start(TestApp::builder()).await;
    let World {
        app,
        receiver,
        repo,
        served,
        server,
        client,
        repository_id,
    } = world;
    let (dir, database) = app.kill().await;

    // Pushed while Herald was down; the hook got stored just before the crash.
    repo.write("while-down.txt", "stored, not processed\n");
    let commit = repo.commit("while down");
    served.push(&repo, "HEAD:refs/heads/main", false);
    let port = server.port();
    let mut payload = fixture("github_push");
    payload["after"] = json!(commit);
    payload["repository"]["clone_url"] = json!(format!("http://127.0.0.1:{port}/widgets.git"));
    let store = actors::test_support::connect(&database_url(dir.path(), &database)).await;
    let stored = store
        .store_hook(actors::store::inbound::NewHook {
            provider: entity::Provider::GitHub,
            delivery_id: "before-the-crash".to_owned(),
            event_type: "push".to_owned(),
            body: serde_json::to_vec(&payload).expect("JSON"),
        })
        .await
        .expect("stored");
    let actors::store::inbound::Stored::New(hook_id) = stored else {
        panic!("a new hook: {stored:?}");
    };
    store.close().await.ok();

    let app = hook_env(TestApp::builder())
        .data_dir(dir)
        .spawn_with(database)
        .await;
    receiver
        .wait_for("the file pushed while down", |r| {
            has_file(r, "while-down.txt")
        })
        .await;
    let row = processed(&app, hook_id.as_str()).await;
    assert_eq!(row.status, "triggered");
    assert_eq!(row.result, Some(format!("scanning {repository_id}")));
    drop(client);
}
