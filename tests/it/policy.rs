//! The configured network rules apply to what is stored, not only to what
//! is registered: after a restart under a stricter configuration, stored
//! `file://` and `http://` repositories are not fetched and stored
//! `http://` base URLs get no webhook, each visibly. And a git remote's
//! redirect is never followed, at registration as at a fetch.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gitserver::{HttpGitServer, Served, TestRepo, run_git};
use crate::helpers::{TestApp, TestClient, assert_error, onboard, watch};
use crate::receiver::Receiver;

const LOCAL_REFUSED: &str = "local repositories are disabled by this server's configuration \
                             (git.allow_local_repos)";
const HTTP_REFUSED: &str = "http:// and git:// repositories are disabled by this server's \
                            configuration (security.allow_http_targets)";

/// The commit the mirror of `repository_id` holds for `main`.
fn mirrored_head(app: &TestApp, repository_id: &str) -> String {
    let mirror = app
        .data_path()
        .join("mirrors")
        .join(format!("{repository_id}.git"));
    run_git(&mirror, &["rev-parse", "refs/heads/main"])
        .trim()
        .to_owned()
}

/// Herald allowing local and http:// repositories (and, as the tests serve
/// them, http:// base URLs on loopback), with an app whose webhooks go to a
/// receiver at an http:// base URL.
async fn permissive() -> (TestApp, Receiver, TestClient) {
    let app = TestApp::builder()
        .fast()
        .env("HERALD__GIT__ALLOW_LOCAL_REPOS", "true")
        .spawn()
        .await;
    let inbox = Receiver::start().await;
    let client = onboard(&app, &inbox, "acme").await;
    (app, inbox, client)
}

fn file_url(repo: &TestRepo) -> String {
    format!("file://{}", repo.path().display())
}

#[tokio::test]
async fn stored_repositories_the_configuration_now_forbids_are_not_fetched() {
    let local = TestRepo::new("main");
    local.write("a.md", "a\n");
    let local_first = local.commit("first");
    let remote = TestRepo::new("main");
    remote.write("b.md", "b\n");
    let remote_first = remote.commit("first");
    let served = Served::new(&remote, "r.git");
    let server = HttpGitServer::serve(served.root(), None);

    // Registered while local and http:// repositories were allowed.
    let (app, inbox, client) = permissive().await;
    let local_id = watch(&app, &client, &file_url(&local)).await;
    let http_id = watch(&app, &client, &server.url("r.git")).await;
    app.wait_for_commit(&client, &local_id, &local_first).await;
    app.wait_for_commit(&client, &http_id, &remote_first).await;
    inbox.wait_for("both files", |r| r.len() >= 2).await;

    // Both move on while Herald is down; it starts again with both kinds
    // of repository forbidden.
    let (dir, database) = app.stop().await;
    local.write("a.md", "a, changed\n");
    local.commit("second");
    remote.write("b.md", "b, changed\n");
    remote.commit("second");
    served.push(&remote, "main", false);
    let requests = server.requests();
    let delivered = inbox.arrivals();
    let app = TestApp::builder()
        .fast()
        .env("HERALD__GIT__ALLOW_LOCAL_REPOS", "false")
        .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "false")
        .data_dir(dir)
        .spawn_with(database)
        .await;

    // Each subscription fails with the reason, and the breaker is not
    // involved: the remote is not at fault, retrying cannot help.
    for (id, reason, first) in [
        (&local_id, LOCAL_REFUSED, &local_first),
        (&http_id, HTTP_REFUSED, &remote_first),
    ] {
        let view = app
            .wait_for(&client, id, "the refusal", |v| v["status"] == "failed")
            .await;
        assert_eq!(view["last_error"], reason, "{view}");
        assert_eq!(view["last_synced_commit"], first.as_str(), "{view}");
        assert_eq!(view["circuit_breaker"]["consecutive_failures"], 0, "{view}");
    }
    // Scans go on at the pace of the poll (200 ms here) and still fetch
    // nothing: two more of each, every one refused.
    for _ in 0..2 {
        scanned_since(&app, &[&local_id, &http_id], actors::clock::now_ms()).await;
    }
    assert_eq!(server.requests(), requests, "the http:// remote was asked");
    assert_eq!(mirrored_head(&app, &local_id), local_first, "fetched");
    assert_eq!(inbox.arrivals(), delivered, "something was delivered");
    for id in [&local_id, &http_id] {
        assert_eq!(app.repository(&client, id).await["status"], "failed");
    }
}

/// Waits (bounded) until each of `repositories` was scanned after `since`
/// (unix ms).
async fn scanned_since(app: &TestApp, repositories: &[&String], since: i64) {
    let ids: Vec<String> = repositories.iter().map(|id| format!("'{id}'")).collect();
    let scanned = format!("id IN ({}) AND last_scanned_at > {since}", ids.join(", "));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.stored_rows_where("repositories", &scanned).await < ids.len() as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scan since {since}; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stored_http_base_url_gets_no_webhook_under_a_stricter_configuration() {
    let local = TestRepo::new("main");
    local.write("a.md", "a\n");
    let first = local.commit("first");
    // The app's base URL is http://, allowed at onboarding.
    let (app, inbox, client) = permissive().await;
    let id = watch(&app, &client, &file_url(&local)).await;
    app.wait_for_commit(&client, &id, &first).await;
    inbox.wait_for("the first file", |r| r.len() == 1).await;

    let (dir, database) = app.stop().await;
    local.write("b.md", "b\n");
    let second = local.commit("second");
    let app = TestApp::builder()
        .fast()
        .env("HERALD__GIT__ALLOW_LOCAL_REPOS", "true")
        .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "false")
        .data_dir(dir)
        .spawn_with(database)
        .await;

    // The repository is scanned (file:// is still allowed), but its event
    // waits, unsent and not counted as an attempt, with the reason.
    let refusal = "http:// endpoints are disabled by this server's configuration \
                   (security.allow_http_targets): the app's base_url must use https";
    app.wait_for_commit(&client, &id, &second).await;
    let events = app
        .wait_for_events(
            &client,
            &format!("repository_id={id}"),
            "the held event",
            |events| events.iter().any(|e| e["last_error"] == refusal),
        )
        .await;
    let held: Vec<&Value> = events.iter().filter(|e| e["path"] == "b.md").collect();
    assert_eq!(held.len(), 1, "{events:?}");
    assert_eq!(held[0]["status"], "pending", "{events:?}");
    assert_eq!(held[0]["attempt_count"], 0, "{events:?}");
    // Held for a minute (not the 100 ms of a retry): the refusal is looked
    // at again then, not sent meanwhile.
    let next = held[0]["next_attempt_at"]
        .as_str()
        .expect("a pending event's next attempt");
    let next = time::OffsetDateTime::parse(next, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let held_for = next - time::OffsetDateTime::now_utc();
    assert!(
        held_for > time::Duration::seconds(30),
        "held only until {next}"
    );
    assert_eq!(
        inbox.arrivals(),
        1,
        "a webhook went to the http:// base URL"
    );
    let (status, body) = app
        .call(reqwest::Method::GET, "/api/app", Some(&client.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "active", "the app is not at fault: {body}");
}

/// An HTTP server that answers every request with a redirect to `location`
/// followed by the request's path; counts the requests.
async fn redirecting(location: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("bound").port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let location = location.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = socket.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}{path}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_git_remote_that_redirects_is_refused_at_registration() {
    registering_a_redirect_is_refused("localhost").await;
}

#[tokio::test]
async fn a_redirect_to_another_port_of_the_same_host_is_refused_too() {
    // libgit2's own rule compares host names only: Herald's socket admits
    // the registered port alone.
    registering_a_redirect_is_refused("127.0.0.1").await;
}

/// Registers `http://{host}:{port}/r.git`, a remote that redirects to a
/// git server on 127.0.0.1 (another port) holding a repository Herald could
/// read: refused, nothing fetched.
async fn registering_a_redirect_is_refused(host: &str) {
    let repo = TestRepo::new("main");
    repo.write("secret.md", "internal\n");
    repo.commit("first");
    let served = Served::new(&repo, "r.git");
    let server = HttpGitServer::serve(served.root(), None);
    let (port, redirects) = redirecting(format!("http://127.0.0.1:{}", server.port())).await;
    let app = TestApp::builder().fast().spawn().await;
    let inbox = Receiver::start().await;
    let client = onboard(&app, &inbox, "acme").await;

    let (status, body) = app
        .register(
            &client,
            json!({"url": format!("http://{host}:{port}/r.git")}),
        )
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.contains("redirect")),
        "{body}"
    );
    assert!(
        redirects.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the remote was asked"
    );
    assert_eq!(server.requests(), 0, "the redirect was followed");
    assert!(app.repositories(&client).await.is_empty());
    assert!(app.mirror_dirs().is_empty(), "{:?}", app.mirror_dirs());
    assert_eq!(inbox.arrivals(), 0);
}
