//! Onboarding and app management through the admin API.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PUBLIC_BASE_URL, Remotes, TestApp, assert_error};

#[tokio::test]
async fn onboarding_needs_the_admin_token() {
    let app = TestApp::spawn().await;
    let body = json!({"app_name": "acme", "base_url": PUBLIC_BASE_URL, "email": "dev@acme.io"});
    for token in [None, Some("wrong-admin-token-0123456789")] {
        let (status, reply) = app
            .call(
                Method::POST,
                "/admin/api/apps/onboard",
                token,
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            assert_error(status, &reply, StatusCode::UNAUTHORIZED),
            "unauthorized"
        );
    }
    // An app token is not an admin token.
    let client = app.onboard("acme").await;
    let (status, reply) = app
        .call(Method::GET, "/admin/api/apps", Some(&client.token), None)
        .await;
    assert_error(status, &reply, StatusCode::UNAUTHORIZED);
    assert_eq!(app.app_count().await, 1);
}

#[tokio::test]
async fn onboarding_keeps_a_given_key_and_returns_secrets_once() {
    let app = TestApp::spawn().await;
    let key = "my-own-signing-key-0123456789";
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/api/apps/onboard",
            Some(json!({
                "app_name": "acme",
                "base_url": PUBLIC_BASE_URL,
                "email": "dev@acme.io",
                "website": "https://acme.io",
                "description": "docs mirror",
                "client_auth_key": key,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let data = &body["data"];
    assert!(data["app_id"].as_str().expect("id").starts_with("app_"));
    assert!(
        data["token"]
            .as_str()
            .expect("token")
            .starts_with("herald_")
    );
    assert_eq!(data["client_auth_key"], key);
    let expected_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
    );
    assert_eq!(data["webhook_secret"], expected_secret.as_str());
    assert!(data["created_at"].as_str().expect("time").ends_with('Z'));

    let id = data["app_id"].as_str().expect("id");
    let (status, detail) = app
        .admin(Method::GET, &format!("/admin/api/apps/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["data"]["app_name"], "acme");
    assert_eq!(detail["data"]["status"], "active");
    let shown = detail.to_string();
    assert!(!shown.contains(key), "the key is shown once only");
    assert!(!shown.contains(data["token"].as_str().expect("token")));
}

#[tokio::test]
async fn onboarding_generates_a_key_when_none_is_given() {
    let app = TestApp::spawn().await;
    let first = app.onboard("one").await;
    let second = app.onboard("two").await;
    for client in [&first, &second] {
        assert_eq!(client.client_auth_key.len(), 64);
        assert!(
            client
                .client_auth_key
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
    }
    assert_ne!(first.client_auth_key, second.client_auth_key);
    assert_ne!(first.token, second.token);
}

#[tokio::test]
async fn apps_are_listed_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    for name in ["one", "two", "three"] {
        app.onboard(name).await;
    }
    let (status, body) = app
        .admin(Method::GET, "/admin/api/apps?page=2&limit=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"]["pagination"],
        json!({"page": 2, "limit": 2, "total": 3, "total_pages": 2})
    );
    let names: Vec<&str> = body["data"]["data"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["app_name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["three"]);
    let (status, body) = app
        .admin(Method::GET, "/admin/api/apps?limit=1000", None)
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn deleting_an_app_cascades_and_cleans_orphaned_repositories() {
    // Registration proves access: real repositories on loopback.
    let remotes = Remotes::serve(&["acme/shared.git", "acme/own.git"]);
    let app = TestApp::builder().loopback().spawn().await;
    let leaving = app.onboard("leaving").await;
    let staying = app.onboard("staying").await;
    let shared_url = remotes.url("acme/shared.git");
    let (status, shared) = app
        .register(&leaving, json!({"github_url": shared_url}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{shared}");
    let (status, body) = app
        .register(&staying, json!({"github_url": shared_url}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, own) = app
        .register(&leaving, json!({"github_url": remotes.url("acme/own.git")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{own}");

    let (status, body) = app
        .admin(
            Method::DELETE,
            &format!("/admin/api/apps/{}", leaving.app_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"deleted": true, "repositories_unlinked": 2, "orphaned_repositories_cleaned": 1})
    );

    let (status, body) = app
        .admin(
            Method::GET,
            &format!("/admin/api/apps/{}", leaving.app_id),
            None,
        )
        .await;
    assert_eq!(
        assert_error(status, &body, StatusCode::NOT_FOUND),
        "not_found"
    );
    let (status, _) = app
        .call(Method::GET, "/api/repositories", Some(&leaving.token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted app's token is dead"
    );

    let remaining = app.repositories(&staying).await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0]["repository_id"], shared["repository_id"]);
    assert_ne!(remaining[0]["repository_id"], own["repository_id"]);

    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/admin/api/apps/{}", leaving.app_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
