//! No secret is stored or logged in plaintext: not in any file of the data
//! directory (the database and its write-ahead log read as bytes, the
//! mirrors' git configuration), not in a database row, not in the log.

use std::path::Path;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::json;

use crate::gitserver::{HttpGitServer, Served, TestRepo};
use crate::helpers::{ADMIN_TOKEN, PUBLIC_BASE_URL, TestApp};

const CLIENT_KEY: &str = "known-client-auth-key-4f9a2c";
/// The git host's user; the tokens below are its passwords, each accepted by
/// the private remote, so registration's access check really uses them.
const GIT_USER: &str = "deploy";
const GIT_TOKEN: &str = "ghp_KnownGitToken7d3e1b9c";
const NEW_GIT_TOKEN: &str = "glpat-RotatedToken5a8f2e";
/// A token the remote refuses.
const WRONG_GIT_TOKEN: &str = "ghp_RefusedGitToken2c6a0f";

/// `github_token` as sent: `user:token`.
fn credential(token: &str) -> String {
    format!("{GIT_USER}:{token}")
}

fn files_under(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_never_appear_in_plaintext_on_disk_in_the_database_or_in_logs() {
    // A private repository on loopback that reads only with one of the tokens.
    let repo = TestRepo::new("main");
    repo.write("README.md", "private\n");
    repo.commit("first");
    let served = Served::new(&repo, "acme/private.git");
    let server = HttpGitServer::serve_users(
        served.root(),
        Some(&[(GIT_USER, GIT_TOKEN), (GIT_USER, NEW_GIT_TOKEN)]),
    );
    let url = server.url("acme/private.git");
    let app = TestApp::builder().loopback().spawn().await;
    let client = app
        .onboard_with(json!({
            "app_name": "acme",
            "base_url": PUBLIC_BASE_URL,
            "email": "dev@acme.io",
            "client_auth_key": CLIENT_KEY,
        }))
        .await;
    let (status, created) = app
        .register(
            &client,
            json!({"github_url": url, "github_token": credential(GIT_TOKEN)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["is_private"], true);
    let repository_id = created["repository_id"].as_str().expect("id");
    let token_path = format!("/api/repositories/{repository_id}/token");
    let (status, body) = app
        .call(
            Method::PATCH,
            &token_path,
            Some(&client.token),
            Some(json!({"github_token": credential(NEW_GIT_TOKEN)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Failed requests carrying a secret must not log it either: refused by
    // validation, by the remote (a wrong token), or not found on the remote.
    let failures = [
        (
            json!({"github_url": url, "branch": "bad..branch", "github_token": credential(GIT_TOKEN)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"github_url": url, "github_token": credential(WRONG_GIT_TOKEN)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"github_url": server.url("acme/missing.git"), "github_token": credential(GIT_TOKEN)}),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (body, expected) in failures {
        let (status, reply) = app.register(&client, body.clone()).await;
        assert_eq!(status, expected, "{body}: {reply}");
    }
    let (status, body) = app
        .call(
            Method::PATCH,
            &token_path,
            Some(&client.token),
            Some(json!({"github_token": credential(WRONG_GIT_TOKEN)})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // The tokens really were presented to the remote.
    let presented = |token: &str, authorized: bool| {
        server.request_log().iter().any(|r| {
            r.basic == Some((GIT_USER.to_owned(), token.to_owned())) && r.authorized == authorized
        })
    };
    assert!(presented(GIT_TOKEN, true), "the first token was used");
    assert!(presented(NEW_GIT_TOKEN, true), "the new token was checked");
    assert!(
        presented(WRONG_GIT_TOKEN, false),
        "the wrong one was refused"
    );

    // The app's signing key is rotated: the new key is as secret as the old
    // one, which keeps signing for a grace period.
    let (status, rotated) = app
        .call(
            Method::POST,
            "/api/app/rotate-key",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_key = rotated["client_auth_key"].as_str().expect("the new key");
    let new_secret = rotated["webhook_secret"].as_str().expect("the new secret");
    assert_ne!(new_key, CLIENT_KEY);

    // The repository was scanned with the token: a mirror exists.
    app.wait_for_commit(&client, repository_id, &repo.head())
        .await;
    let mirrors = app.mirror_dirs();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");

    // Each credential as given, and as an HTTP Basic authorization carries
    // it (base64 of `user:token`).
    let basic: Vec<String> = [GIT_TOKEN, NEW_GIT_TOKEN, WRONG_GIT_TOKEN]
        .iter()
        .map(|token| base64::engine::general_purpose::STANDARD.encode(credential(token)))
        .collect();
    let secrets: Vec<&str> = [
        CLIENT_KEY,
        client.webhook_secret.as_str(),
        new_key,
        new_secret,
        GIT_TOKEN,
        NEW_GIT_TOKEN,
        WRONG_GIT_TOKEN,
        client.token.as_str(),
        ADMIN_TOKEN,
    ]
    .into_iter()
    .chain(basic.iter().map(String::as_str))
    .collect();
    // The mirror's git configuration names the remote without credentials.
    for mirror in &mirrors {
        let config = std::fs::read(mirror.join("config")).expect("the mirror's git config");
        assert_holds_none(
            &config,
            &secrets,
            &mirror.join("config").display().to_string(),
        );
    }
    // The data directory while Herald runs (SQLite's write-ahead log and
    // shared memory included), then once it stopped (checkpointed).
    let data_dir = app.data_path();
    let running = assert_no_file_holds(&data_dir, &secrets);
    if app.database.url.is_none() {
        assert!(
            running
                .iter()
                .any(|f| f.to_string_lossy().ends_with("-wal")),
            "the write-ahead log was read: {running:?}"
        );
    }
    let database_url = app.database.url.clone();
    let logs = app.logs();
    let (_dir_guard, _db_guard) = app.stop().await;
    assert!(!assert_no_file_holds(&data_dir, &secrets).is_empty());
    assert_holds_none(logs.as_bytes(), &secrets, "the log");

    // PostgreSQL keeps its data elsewhere: read every row of every table.
    if let Some(url) = database_url {
        let db = Database::connect(&url).await.expect("database");
        let tables = db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            ))
            .await
            .expect("tables");
        assert!(tables.len() > 5, "the schema's tables");
        for table in tables {
            let table: String = table.try_get("", "tablename").expect("a name");
            let rows = db
                .query_all_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT row_to_json(t)::text AS row FROM \"{table}\" t"),
                ))
                .await
                .expect("rows");
            for row in rows {
                let text: String = row.try_get("", "row").expect("text");
                assert_holds_none(text.as_bytes(), &secrets, &format!("table {table}"));
            }
        }
        db.close().await.ok();
    }
}

/// Asserts that no secret is in `bytes` (read from `place`).
fn assert_holds_none(bytes: &[u8], secrets: &[&str], place: &str) {
    for secret in secrets {
        assert!(!contains(bytes, secret), "{secret} found in {place}");
    }
}

/// Asserts that no file under `dir` holds a secret, read as bytes; the files.
fn assert_no_file_holds(dir: &Path, secrets: &[&str]) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    for file in &files {
        // A file can go between the listing and the read (a checkpoint).
        if let Ok(bytes) = std::fs::read(file) {
            assert_holds_none(&bytes, secrets, &file.display().to_string());
        }
    }
    files
}

#[tokio::test]
async fn a_generated_admin_token_stays_out_of_the_log_stream() {
    use std::os::unix::fs::PermissionsExt;

    // Tests read stderr through a pipe, as journald and `docker logs` do.
    let app = TestApp::builder()
        .without_env("HERALD__ADMIN__TOKEN")
        .spawn()
        .await;
    let path = app.data_path().join("admin.token");
    let token = std::fs::read_to_string(&path).expect("the token file exists");
    let token = token.trim();
    assert!(token.len() >= 16, "a real token: {token:?}");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The token works, and the log says where it is without saying what it is.
    let (status, body) = app
        .call(Method::GET, "/admin/api/apps", Some(token), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let logs = app.logs();
    assert!(!logs.contains(token), "the token leaked into the logs");
    assert!(
        logs.contains(&path.display().to_string()),
        "the log names the token file: {logs}"
    );
}
