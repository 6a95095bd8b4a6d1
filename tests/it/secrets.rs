//! No secret is stored or logged in plaintext.

use std::path::Path;

use reqwest::Method;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::json;

use crate::helpers::{PUBLIC_BASE_URL, TestApp};

const CLIENT_KEY: &str = "known-client-auth-key-4f9a2c";
const GIT_TOKEN: &str = "ghp_KnownGitToken7d3e1b9c";
const NEW_GIT_TOKEN: &str = "glpat-RotatedToken5a8f2e";

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
    let app = TestApp::spawn().await;
    let client = app
        .onboard_with(json!({
            "app_name": "acme",
            "base_url": PUBLIC_BASE_URL,
            "email": "dev@acme.io",
            "client_auth_key": CLIENT_KEY,
        }))
        .await;
    let (_, created) = app
        .register(
            &client,
            json!({"github_url": "https://1.1.1.1/acme/private", "github_token": GIT_TOKEN}),
        )
        .await;
    assert_eq!(created["is_private"], true);
    app.call(
        Method::PATCH,
        &format!(
            "/api/repositories/{}/token",
            created["repository_id"].as_str().expect("id")
        ),
        Some(&client.token),
        Some(json!({"github_token": NEW_GIT_TOKEN})),
    )
    .await;
    // A failed request carrying a secret must not log it either.
    app.register(
        &client,
        json!({"github_url": "https://127.0.0.1/acme/x", "github_token": GIT_TOKEN}),
    )
    .await;

    let database_url = app.database.url.clone();
    let data_dir = app.data_path();
    let logs = app.logs();
    let (_dir_guard, _db_guard) = app.stop().await;

    let mut files = Vec::new();
    files_under(&data_dir, &mut files);
    assert!(!files.is_empty());
    for file in &files {
        let bytes = std::fs::read(file).expect("readable file");
        for secret in [CLIENT_KEY, GIT_TOKEN, NEW_GIT_TOKEN, client.token.as_str()] {
            assert!(
                !contains(&bytes, secret),
                "{secret} found in {}",
                file.display()
            );
        }
    }
    for secret in [CLIENT_KEY, GIT_TOKEN, NEW_GIT_TOKEN, client.token.as_str()] {
        assert!(!logs.contains(secret), "{secret} found in the log");
    }

    // PostgreSQL keeps its data elsewhere: read the rows themselves.
    if let Some(url) = database_url {
        let db = Database::connect(&url).await.expect("database");
        for table in ["apps", "subscriptions"] {
            let rows = db
                .query_all_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT row_to_json(t)::text AS row FROM {table} t"),
                ))
                .await
                .expect("rows");
            assert!(!rows.is_empty());
            for row in rows {
                let text: String = row.try_get("", "row").expect("text");
                for secret in [CLIENT_KEY, GIT_TOKEN, NEW_GIT_TOKEN, client.token.as_str()] {
                    assert!(!text.contains(secret), "{secret} stored in {table}");
                }
            }
        }
        db.close().await.ok();
    }
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
