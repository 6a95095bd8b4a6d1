//! What real git hosts send beyond a JSON push: GitHub's and Gitea's form
//! content type, GitLab system hooks' `repository_update`, Gitea/Forgejo
//! branch deletions, Bitbucket Cloud, GitHub-sized payloads; invalid hooks
//! as operators see them; and scans asked for through the API, for hosts
//! without hooks. Payloads follow the hosts' documented examples
//! (tests/it/fixtures/hooks) and are signed here as each host signs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{
    BITBUCKET_SECRET, GITEA_SECRET, GITHUB_SECRET, GITLAB_TOKEN, Provider, World, accepted,
    deliver, fixture, has_file, hmac_hex, hook_count, hook_metrics, hooks, post, processed,
};
use crate::helpers::{TestApp, assert_error};

/// `payload=<JSON>`, form-encoded as GitHub and Gitea send it.
fn form(json: &[u8]) -> Vec<u8> {
    let json = std::str::from_utf8(json).expect("UTF-8 JSON");
    serde_urlencoded::to_string([("payload", json)])
        .expect("encodes")
        .into_bytes()
}

const FORM: &str = "application/x-www-form-urlencoded";

impl World {
    /// Gitea's (and Forgejo's) `repository` object for the served repository.
    fn gitea_repository(&self, payload: &mut Value) {
        let (clone, ssh, web) = self.urls();
        payload["repository"]["clone_url"] = json!(clone);
        payload["repository"]["ssh_url"] = json!(ssh);
        payload["repository"]["html_url"] = json!(web);
        payload["repository"]["default_branch"] = json!("main");
    }

    fn gitea_push(&self, commit: &str) -> Vec<u8> {
        let mut push = fixture("gitea_push");
        push["ref"] = json!("refs/heads/main");
        push["after"] = json!(commit);
        self.gitea_repository(&mut push);
        serde_json::to_vec(&push).expect("JSON")
    }

    fn bitbucket_push(&self, commit: &str) -> Vec<u8> {
        let port = self.server.port();
        let mut push = fixture("bitbucket_push");
        push["repository"]["full_name"] = json!("widgets");
        push["repository"]["links"]["html"]["href"] =
            json!(format!("http://127.0.0.1:{port}/widgets"));
        let change = &mut push["push"]["changes"][0];
        change["new"]["name"] = json!("main");
        change["new"]["target"]["hash"] = json!(commit);
        change["old"]["name"] = json!("main");
        serde_json::to_vec(&push).expect("JSON")
    }

    async fn view(&self) -> Value {
        self.app.repository(&self.client, &self.repository_id).await
    }
}

async fn bitbucket(app: &TestApp, uuid: &str, secret: &str, body: &[u8]) -> (StatusCode, Value) {
    let headers = [
        ("X-Event-Key", "repo:push".to_owned()),
        ("X-Request-UUID", uuid.to_owned()),
        (
            "X-Hook-UUID",
            "cb0d2c7e-5c52-4b8a-8a0f-1b6e0c1c0a11".to_owned(),
        ),
        (
            "X-Hub-Signature",
            format!("sha256={}", hmac_hex(secret, body)),
        ),
    ];
    post(app, "/hooks/bitbucket", &headers, body.to_vec()).await
}

#[tokio::test]
async fn a_form_encoded_github_push_is_verified_over_the_form_and_scanned() {
    let world = World::start(TestApp::builder()).await;
    let commit = world.push_file("docs/form.md");
    let body = form(&world.github_push("refs/heads/main", &commit));
    // GitHub signs the form body exactly as it sends it.
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &body));
    let headers = |signature: String| {
        [
            ("content-type", FORM.to_owned()),
            ("X-GitHub-Event", "push".to_owned()),
            ("X-GitHub-Delivery", "d2a3b0c0-form-0001".to_owned()),
            ("X-Hub-Signature-256", signature),
        ]
    };

    // A signature over the JSON inside is not GitHub's: refused.
    let (_, json) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .expect("a form")
        .remove(0);
    let over_json = format!("sha256={}", hmac_hex(GITHUB_SECRET, json.as_bytes()));
    let (status, reply) = post(
        &world.app,
        "/hooks/github",
        &headers(over_json),
        body.clone(),
    )
    .await;
    assert_error(status, &reply, StatusCode::UNAUTHORIZED);

    let (status, reply) = post(&world.app, "/hooks/github", &headers(signature), body).await;
    let hook = accepted(status, &reply);
    world
        .receiver
        .wait_for("the file pushed (form content type)", |r| {
            has_file(r, "docs/form.md")
        })
        .await;
    let row = processed(&world.app, &hook).await;
    assert_eq!(
        (row.status.as_str(), row.result),
        (
            "triggered",
            Some(format!("scanning {}", world.repository_id))
        )
    );

    // A ping in the form content type is answered too.
    let ping = form(&serde_json::to_vec(&fixture("github_ping")).expect("JSON"));
    let ping_headers = [
        ("content-type", FORM.to_owned()),
        ("X-GitHub-Event", "ping".to_owned()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(GITHUB_SECRET, &ping)),
        ),
    ];
    let (status, reply) = post(&world.app, "/hooks/github", &ping_headers, ping).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::OK, Some("pong"))
    );
}

#[tokio::test]
async fn a_gitlab_system_hook_repository_update_scans_the_watched_branch() {
    let world = World::start(TestApp::builder()).await;
    let commit = world.push_file("from-system-hook.txt");
    let (clone, ssh, web) = world.urls();
    let mut update = fixture("gitlab_repository_update");
    update["project"]["git_http_url"] = json!(clone);
    update["project"]["git_ssh_url"] = json!(ssh);
    update["project"]["web_url"] = json!(web);
    update["project"]["path_with_namespace"] = json!("widgets");
    update["project"]["default_branch"] = json!("main");
    let before = update["changes"][0]["before"].clone();
    update["changes"] = json!([
        {"before": "0".repeat(40), "after": "5".repeat(40), "ref": "refs/heads/feature"},
        {"before": before, "after": commit, "ref": "refs/heads/main"},
        {"before": "0".repeat(40), "after": "6".repeat(40), "ref": "refs/tags/v1"},
    ]);
    update["refs"] = json!(["refs/heads/feature", "refs/heads/main", "refs/tags/v1"]);
    let body = serde_json::to_vec(&update).expect("JSON");

    let row = deliver(
        &world.app,
        Provider::GitLab,
        "System Hook",
        "4b4b5f0e-1c9a-4f43-8a7e-system-0001",
        &body,
    )
    .await;
    world
        .receiver
        .wait_for("the file pushed (system hook)", |r| {
            has_file(r, "from-system-hook.txt")
        })
        .await;
    assert_eq!(
        (row.status.as_str(), row.result),
        (
            "triggered",
            Some(format!("scanning {}", world.repository_id))
        )
    );

    // Only other branches and tags changed: recorded and ignored.
    update["changes"] = json!([
        {"before": "0".repeat(40), "after": "7".repeat(40), "ref": "refs/heads/feature"},
        {"before": "0".repeat(40), "after": "8".repeat(40), "ref": "refs/heads/other"},
    ]);
    let body = serde_json::to_vec(&update).expect("JSON");
    let row = deliver(
        &world.app,
        Provider::GitLab,
        "System Hook",
        "4b4b5f0e-1c9a-4f43-8a7e-system-0002",
        &body,
    )
    .await;
    assert_eq!(
        (row.status.as_str(), row.result.as_deref()),
        (
            "ignored",
            Some("branches `feature`, `other` are not watched")
        )
    );
}

#[tokio::test]
async fn a_gitea_branch_deletion_is_handled_at_once_as_a_poll_would() {
    // One failure opens the git breaker, so the subscriber's `sync_failed`
    // follows the first scan that finds the branch gone.
    let world = World::start(TestApp::builder().env("HERALD__BREAKER__GIT__THRESHOLD", "1")).await;
    crate::gitserver::run_git(&world.served.bare, &["update-ref", "-d", "refs/heads/main"]);

    let mut delete = fixture("gitea_delete");
    delete["ref"] = json!("main");
    world.gitea_repository(&mut delete);
    let body = serde_json::to_vec(&delete).expect("JSON");
    let row = deliver(
        &world.app,
        Provider::Gitea,
        "delete",
        "9f0b7c1e-delete-0001",
        &body,
    )
    .await;
    assert_eq!(
        (row.status.as_str(), row.result),
        (
            "triggered",
            Some(format!("branch deleted; scanning {}", world.repository_id))
        )
    );

    // What a poll would find: the branch is gone, the subscriber is told.
    let received = world
        .receiver
        .wait_for("the sync_failed", |r| {
            r.iter().any(|r| r.endpoint == "sync_failed")
        })
        .await;
    let failed = received
        .iter()
        .find(|r| r.endpoint == "sync_failed")
        .expect("a sync_failed")
        .json();
    assert_eq!(
        failed["repository"]["repository_id"],
        world.repository_id.as_str()
    );
    assert_eq!(failed["error"]["type"], "not_found", "{failed}");
    let view = world.view().await;
    assert!(!view["last_error"].is_null(), "{view}");

    // A deleted tag (or another branch) changes nothing.
    delete["ref"] = json!("v1.0.0");
    delete["ref_type"] = json!("tag");
    let body = serde_json::to_vec(&delete).expect("JSON");
    let row = deliver(
        &world.app,
        Provider::Gitea,
        "delete",
        "9f0b7c1e-delete-0002",
        &body,
    )
    .await;
    assert_eq!(
        (row.status.as_str(), row.result.as_deref()),
        ("ignored", Some("tag deleted"))
    );
}

#[tokio::test]
async fn gitea_and_forgejo_form_pushes_are_verified_over_their_json() {
    let world = World::start(TestApp::builder()).await;
    let commit = world.push_file("from-gitea-form.txt");
    let json = world.gitea_push(&commit);
    let body = form(&json);
    let headers = |signature: String| {
        [
            ("content-type", FORM.to_owned()),
            ("X-Gitea-Event", "push".to_owned()),
            ("X-Gitea-Delivery", "5e1d0a3c-gitea-form-0001".to_owned()),
            ("X-Gitea-Signature", signature),
        ]
    };
    // A signature over the form body is not Gitea's: refused.
    let (status, reply) = post(
        &world.app,
        "/hooks/gitea",
        &headers(hmac_hex(GITEA_SECRET, &body)),
        body.clone(),
    )
    .await;
    assert_error(status, &reply, StatusCode::UNAUTHORIZED);
    // Gitea signs the JSON payload, also in the form content type.
    let (status, reply) = post(
        &world.app,
        "/hooks/gitea",
        &headers(hmac_hex(GITEA_SECRET, &json)),
        body,
    )
    .await;
    let hook = accepted(status, &reply);
    world
        .receiver
        .wait_for("the file pushed (Gitea form)", |r| {
            has_file(r, "from-gitea-form.txt")
        })
        .await;
    assert_eq!(processed(&world.app, &hook).await.status, "triggered");

    // Forgejo, with its own headers only.
    let commit = world.push_file("from-forgejo.txt");
    let json = world.gitea_push(&commit);
    let forgejo = [
        ("X-Forgejo-Event", "push".to_owned()),
        ("X-Forgejo-Delivery", "5e1d0a3c-forgejo-0002".to_owned()),
        ("X-Forgejo-Signature", hmac_hex(GITEA_SECRET, &json)),
    ];
    let (status, reply) = post(&world.app, "/hooks/gitea", &forgejo, json).await;
    let hook = accepted(status, &reply);
    world
        .receiver
        .wait_for("the file pushed (Forgejo)", |r| {
            has_file(r, "from-forgejo.txt")
        })
        .await;
    let row = processed(&world.app, &hook).await;
    assert_eq!(
        (row.delivery_id.as_str(), row.status.as_str()),
        ("5e1d0a3c-forgejo-0002", "triggered")
    );
}

#[tokio::test]
async fn a_signed_bitbucket_push_is_scanned_and_a_wrongly_signed_one_changes_nothing() {
    let world = World::start(TestApp::builder()).await;
    let synced = world.view().await["last_synced_commit"].clone();
    let commit = world.push_file("from-bitbucket.txt");
    let body = world.bitbucket_push(&commit);

    let (status, reply) = bitbucket(
        &world.app,
        "{b8c3f4e2-0000-4000-8000-000000000001}",
        "not-the-configured-secret",
        &body,
    )
    .await;
    assert_eq!(
        assert_error(status, &reply, StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    assert!(hooks(&world.app).await.is_empty(), "nothing stored");
    assert_eq!(world.view().await["last_synced_commit"], synced);

    let uuid = "{b8c3f4e2-0000-4000-8000-000000000002}";
    let (status, reply) = bitbucket(&world.app, uuid, BITBUCKET_SECRET, &body).await;
    let hook = accepted(status, &reply);
    world
        .receiver
        .wait_for("the file pushed (Bitbucket)", |r| {
            has_file(r, "from-bitbucket.txt")
        })
        .await;
    let row = processed(&world.app, &hook).await;
    assert_eq!(
        (row.provider.as_str(), row.delivery_id.as_str()),
        ("bitbucket", uuid)
    );
    assert_eq!(
        (row.status.as_str(), row.result),
        (
            "triggered",
            Some(format!("scanning {}", world.repository_id))
        )
    );
    let metrics = hook_metrics(&world.app, "bitbucket", |count| count("accepted") >= 1.0).await;
    assert_eq!(hook_count(&metrics, "bitbucket", "unauthorized"), 1.0);
    assert_eq!(hook_count(&metrics, "bitbucket", "accepted"), 1.0);

    // Other events are answered and ignored, like the other hosts'.
    let headers = [
        ("X-Event-Key", "pullrequest:created".to_owned()),
        (
            "X-Request-UUID",
            "{b8c3f4e2-0000-4000-8000-000000000003}".to_owned(),
        ),
        (
            "X-Hub-Signature",
            format!("sha256={}", hmac_hex(BITBUCKET_SECRET, b"{}")),
        ),
    ];
    let (status, reply) = post(&world.app, "/hooks/bitbucket", &headers, b"{}".to_vec()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored"))
    );
    documented(
        &world.app,
        "post",
        "/hooks/bitbucket",
        &["202", "401", "404", "413"],
    )
    .await;
    let logs = world.app.logs();
    assert!(!logs.contains(BITBUCKET_SECRET), "the secret in the logs");
}

#[tokio::test]
async fn a_github_push_of_several_megabytes_is_accepted_by_default() {
    let world = World::start(TestApp::builder()).await;
    let commit = world.push_file("big-push.txt");
    let mut push: Value =
        serde_json::from_slice(&world.github_push("refs/heads/main", &commit)).expect("JSON");
    // 7 commits touching 5,000 paths each, as GitHub lists them.
    let template = push["commits"][0].clone();
    let commits: Vec<Value> = (0..7)
        .map(|c| {
            let mut commit = template.clone();
            commit["id"] = json!(format!("{c:040x}"));
            commit["added"] = json!(
                (0..5_000)
                    .map(|p| format!("services/module-{c}/src/components/file-{p:05}.rs"))
                    .collect::<Vec<_>>()
            );
            commit["modified"] = json!(
                (0..2_500)
                    .map(|p| format!("services/module-{c}/tests/fixtures/case-{p:05}.json"))
                    .collect::<Vec<_>>()
            );
            commit
        })
        .collect();
    push["commits"] = json!(commits);
    let body = serde_json::to_vec(&push).expect("JSON");
    assert!(body.len() > 2_500_000, "{} bytes", body.len());

    let row = deliver(&world.app, Provider::GitHub, "push", "big-push", &body).await;
    world
        .receiver
        .wait_for("the file pushed (large payload)", |r| {
            has_file(r, "big-push.txt")
        })
        .await;
    assert_eq!(row.status, "triggered");
}

#[tokio::test]
async fn an_invalid_hook_is_listed_with_its_reason_logged_and_counted_as_invalid() {
    let world = World::start(TestApp::builder()).await;
    let app = &world.app;

    // First a valid hook (a tag push: ignored), then one GitHub signed
    // properly whose payload lacks the repository.
    let tag = world.github_push("refs/tags/v1", &"a".repeat(40));
    let valid = deliver(app, Provider::GitHub, "push", "valid-1", &tag)
        .await
        .id;
    let mut broken = fixture("github_push");
    broken
        .as_object_mut()
        .expect("an object")
        .remove("repository");
    let broken = serde_json::to_vec(&broken).expect("JSON");
    let row = deliver(app, Provider::GitHub, "push", "invalid-1", &broken).await;
    let invalid = row.id.clone();
    assert_eq!(row.status, "invalid");

    // Listed, newest first, with the reason.
    let (status, body) = app.admin(Method::GET, "/admin/api/hooks", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body["data"]["data"].as_array().expect("a list");
    let ids: Vec<&str> = listed
        .iter()
        .map(|h| h["hook_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [invalid.as_str(), valid.as_str()]);
    let first = &listed[0];
    assert_eq!(first["provider"], "github");
    assert_eq!(first["delivery_id"], "invalid-1");
    assert_eq!(first["event_type"], "push");
    assert_eq!(first["result"], "invalid");
    let reason = first["reason"].as_str().expect("a reason");
    assert!(reason.contains("missing field `repository`"), "{reason}");
    assert!(first["received_at"].is_string() && first["processed_at"].is_string());
    assert_eq!(listed[1]["result"], "ignored");
    assert_eq!(listed[1]["reason"], "tag push");
    assert_eq!(body["data"]["pagination"]["total"], 2);

    let (status, body) = app
        .admin(
            Method::GET,
            "/admin/api/hooks?result=invalid&provider=github&limit=1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["data"]["data"][0]["hook_id"], invalid.as_str());
    let (_, body) = app
        .admin(Method::GET, "/admin/api/hooks?page=2&limit=1", None)
        .await;
    assert_eq!(body["data"]["data"][0]["hook_id"], valid.as_str());
    assert_eq!(body["data"]["pagination"]["total_pages"], 2);
    for bad in [
        "/admin/api/hooks?result=exploded",
        "/admin/api/hooks?provider=svn",
        "/admin/api/hooks?page=x",
        "/admin/api/hooks?limit=-1",
    ] {
        let (status, body) = app.admin(Method::GET, bad, None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let (status, body) = app
        .admin(Method::GET, "/admin/api/hooks?limit=101", None)
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = app
        .call(
            Method::GET,
            "/admin/api/hooks",
            Some(&world.client.token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED);

    // Counted as invalid, not as accepted.
    let metrics = hook_metrics(app, "github", |count| {
        count("invalid") >= 1.0 && count("accepted") >= 1.0
    })
    .await;
    assert_eq!(hook_count(&metrics, "github", "invalid"), 1.0);
    assert_eq!(hook_count(&metrics, "github", "accepted"), 1.0);

    // Logged at WARN with its reason, never with the secret.
    let logs = app.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("inbound hook accepted but invalid") && l.contains(&invalid))
        .unwrap_or_else(|| panic!("no WARN line for {invalid}; logs:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("missing field"), "{line}");
    for secret in [GITHUB_SECRET, GITLAB_TOKEN, GITEA_SECRET, BITBUCKET_SECRET] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
    documented(
        app,
        "get",
        "/admin/api/hooks",
        &["200", "400", "401", "422"],
    )
    .await;
}

#[tokio::test]
async fn a_scan_request_delivers_the_change_without_waiting_for_the_poll() {
    // Asked for right after the registration's scan: no cooldown here.
    let world =
        World::start(TestApp::builder().env("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0")).await;
    let app = &world.app;
    let path = format!("/api/repositories/{}/scan", world.repository_id);
    world.push_file("ci/scanned.txt");

    let (status, body) = app
        .call(Method::POST, &path, Some(&world.client.token), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["message"], "Scan queued");
    world
        .receiver
        .wait_for("the file pushed (scan requested)", |r| {
            has_file(r, "ci/scanned.txt")
        })
        .await;

    // Only for the repository's own subscribers.
    let stranger = app.onboard("stranger").await;
    let (status, body) = app
        .call(Method::POST, &path, Some(&stranger.token), None)
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    for unknown in [
        "/api/repositories/repo_nope/scan",
        "/api/repositories/x/scan",
    ] {
        let (status, body) = app
            .call(Method::POST, unknown, Some(&world.client.token), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
    }
    let (status, body) = app.call(Method::POST, &path, None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED);

    // Documented, with every answer.
    documented(
        app,
        "post",
        "/api/repositories/{id}/scan",
        &["202", "401", "404"],
    )
    .await;
}

/// Asserts the OpenAPI document describes the operation with these answers.
async fn documented(app: &TestApp, method: &str, path: &str, statuses: &[&str]) {
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let responses = &doc["paths"][path][method]["responses"];
    for status in statuses {
        assert!(
            responses[*status].is_object(),
            "{method} {path} documents {status}: {responses}"
        );
    }
}
