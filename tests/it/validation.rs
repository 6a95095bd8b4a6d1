//! Every bad input gets the documented status, the JSON error shape, and
//! changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gitserver::HttpGitServer;
use crate::helpers::{ADMIN_TOKEN, PUBLIC_BASE_URL, Remotes, TestApp, assert_error};

/// Asserts a 422 whose message names `mentions`; returns the message.
fn assert_invalid(status: StatusCode, reply: &Value, body: &Value, mentions: &str) -> String {
    assert_eq!(
        assert_error(status, reply, StatusCode::UNPROCESSABLE_ENTITY),
        "validation_failed",
        "{body}"
    );
    let message = reply["error"].as_str().expect("message").to_owned();
    assert!(
        message.contains(mentions),
        "{body}: `{message}` mentions {mentions}"
    );
    message
}

fn onboarding(base_url: &str) -> Value {
    json!({"app_name": "acme", "base_url": base_url, "email": "dev@acme.io"})
}

#[tokio::test]
async fn invalid_onboarding_requests_are_refused_and_write_nothing() {
    let app = TestApp::spawn().await;
    let cases: Vec<(Value, &str)> = vec![
        (onboarding("not a url"), "base_url"),
        (onboarding("http://1.1.1.1/hooks"), "https"),
        (onboarding("https://127.0.0.1/hooks"), "private"),
        (
            onboarding("https://169.254.169.254/latest/meta-data"),
            "private",
        ),
        (onboarding("https://[::1]/hooks"), "private"),
        (onboarding("https://localhost/hooks"), "base_url"),
        (onboarding("https://user:pass@1.1.1.1/hooks"), "credentials"),
        (
            json!({"app_name": "ab", "base_url": PUBLIC_BASE_URL, "email": "a@b.co"}),
            "app_name",
        ),
        (
            json!({"app_name": "acme", "base_url": PUBLIC_BASE_URL, "email": "nope"}),
            "email",
        ),
        (
            json!({"app_name": "acme", "base_url": PUBLIC_BASE_URL, "email": "a@b.co", "client_auth_key": "short"}),
            "client_auth_key",
        ),
        (
            json!({"base_url": PUBLIC_BASE_URL, "email": "a@b.co"}),
            "app_name",
        ),
        (
            json!({"app_name": 42, "base_url": PUBLIC_BASE_URL, "email": "a@b.co"}),
            "body",
        ),
    ];
    for (body, mentions) in cases {
        let (status, reply) = app
            .admin(Method::POST, "/admin/api/apps/onboard", Some(body.clone()))
            .await;
        assert_invalid(status, &reply, &body, mentions);
    }
    assert_eq!(app.app_count().await, 0);
}

#[tokio::test]
async fn zero_width_and_bidi_characters_are_refused_in_names() {
    // Each refusal counts against the onboarding budget.
    let app = TestApp::builder()
        .env("HERALD__RATE_LIMIT__ONBOARDING_PER_MINUTE", "1000")
        .spawn()
        .await;
    let invisible = [
        '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}',
        '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        '\u{feff}', '\u{00ad}', '\u{2060}',
    ];
    for c in invisible {
        for (field, body) in [
            (
                "app_name",
                json!({"app_name": format!("acme{c}gpj.exe"), "base_url": PUBLIC_BASE_URL, "email": "dev@acme.io"}),
            ),
            (
                "description",
                json!({"app_name": "acme", "description": format!("the {c}app"), "base_url": PUBLIC_BASE_URL, "email": "dev@acme.io"}),
            ),
            (
                "email",
                json!({"app_name": "acme", "base_url": PUBLIC_BASE_URL, "email": format!("dev{c}@acme.io")}),
            ),
        ] {
            let (status, reply) = app
                .admin(Method::POST, "/admin/api/apps/onboard", Some(body.clone()))
                .await;
            let message = assert_invalid(status, &reply, &body, field);
            assert!(
                message.contains("invisible"),
                "U+{:04X}: {message}",
                u32::from(c)
            );
        }
    }
    assert_eq!(app.app_count().await, 0, "nothing was written");

    // Visible Unicode stays welcome.
    let body =
        json!({"app_name": "Café Ünïcödé 🚀", "base_url": PUBLIC_BASE_URL, "email": "dev@acme.io"});
    let (status, reply) = app
        .admin(Method::POST, "/admin/api/apps/onboard", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
}

#[tokio::test]
async fn malformed_oversized_and_empty_bodies_are_refused() {
    let app = TestApp::spawn().await;
    let post = |body: Vec<u8>| {
        app.client
            .post(app.url("/admin/api/apps/onboard"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (status, reply) =
        crate::helpers::read(post(b"{\"app_name\": ".to_vec()).await.expect("answers")).await;
    assert_eq!(
        assert_error(status, &reply, StatusCode::BAD_REQUEST),
        "malformed_json"
    );
    let (status, reply) =
        crate::helpers::read(post(b"not json".to_vec()).await.expect("answers")).await;
    assert_eq!(
        assert_error(status, &reply, StatusCode::BAD_REQUEST),
        "malformed_json"
    );
    let (status, reply) = crate::helpers::read(post(Vec::new()).await.expect("answers")).await;
    assert_eq!(
        assert_error(status, &reply, StatusCode::BAD_REQUEST),
        "malformed_json"
    );

    let mut huge = onboarding(PUBLIC_BASE_URL);
    huge["description"] = json!("x".repeat(70_000));
    let (status, reply) = crate::helpers::read(
        post(serde_json::to_vec(&huge).expect("json"))
            .await
            .expect("answers"),
    )
    .await;
    assert_eq!(
        assert_error(status, &reply, StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );

    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks = futures::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 4096]))),
    );
    let response = app
        .client
        .post(app.url("/admin/api/apps/onboard"))
        .bearer_auth(ADMIN_TOKEN)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("answers");
    let (status, reply) = crate::helpers::read(response).await;
    assert_eq!(
        assert_error(status, &reply, StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );

    assert_eq!(app.app_count().await, 0);
}

#[tokio::test]
async fn invalid_registrations_are_refused_and_write_nothing() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"github_url": "not a url"}), "github_url"),
        (
            json!({"github_url": "http://1.1.1.1/acme/widgets"}),
            "https",
        ),
        (
            json!({"github_url": "https://127.0.0.1/acme/widgets"}),
            "private",
        ),
        (
            json!({"github_url": "https://169.254.169.254/acme/widgets"}),
            "private",
        ),
        (
            json!({"github_url": "file:///srv/git/widgets"}),
            "git.allow_local_repos",
        ),
        (json!({"url": "/srv/git/widgets"}), "git.allow_local_repos"),
        (json!({"github_url": "https://1.1.1.1/"}), "owner/name"),
        (
            json!({"github_url": "https://x:secret@1.1.1.1/acme/widgets"}),
            "credentials",
        ),
        (
            json!({"github_url": "https://1.1.1.1/acme/widgets", "branch": "bad..branch"}),
            "branch",
        ),
        (
            json!({"github_url": "https://1.1.1.1/acme/widgets", "include": ["a["]}),
            "include",
        ),
        (
            json!({"github_url": "https://1.1.1.1/acme/widgets", "github_token": "has space"}),
            "github_token",
        ),
        (json!({}), "github_url"),
        (json!({"github_url": 7}), "body"),
    ];
    for (body, mentions) in cases {
        let (status, reply) = app.register(&client, body.clone()).await;
        let message = assert_invalid(status, &reply, &body, mentions);
        assert!(
            !message.contains("secret"),
            "no credential echoed: {message}"
        );
    }
    assert!(app.repositories(&client).await.is_empty());
}

#[tokio::test]
async fn local_and_plain_http_remotes_need_their_switches() {
    // Registration proves access: one real repository, reached three ways.
    let remotes = Remotes::serve(&["acme/widgets.git"]);
    let http = HttpGitServer::serve(remotes.served[0].root(), None);
    let app = TestApp::builder()
        .env("HERALD__GIT__ALLOW_LOCAL_REPOS", "true")
        .loopback()
        .spawn()
        .await;
    let client = app
        .onboard_with(onboarding("http://127.0.0.1:9/hooks"))
        .await;
    for url in [
        format!("file://{}", remotes.served[0].bare.display()),
        http.url("acme/widgets.git"),
        remotes.url("acme/widgets"),
    ] {
        let (status, body) = app.register(&client, json!({"url": url})).await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {body}");
    }
    assert_eq!(app.repositories(&client).await.len(), 3);
}

#[tokio::test]
async fn invalid_token_updates_change_nothing() {
    // Registration proves access: a real repository on loopback.
    let remotes = Remotes::serve(&["acme/widgets.git"]);
    let app = TestApp::builder().loopback().spawn().await;
    let client = app.onboard("acme").await;
    let (status, created) = app
        .register(
            &client,
            json!({"github_url": remotes.url("acme/widgets.git")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let path = format!(
        "/api/repositories/{}/token",
        created["repository_id"].as_str().expect("id")
    );
    for (body, expected) in [
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"github_token": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"github_token": 12}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, reply) = app
            .call(Method::PATCH, &path, Some(&client.token), Some(body))
            .await;
        assert_error(status, &reply, expected);
    }
    let repositories = app.repositories(&client).await;
    assert_eq!(repositories[0]["is_private"], false);
}

#[tokio::test]
async fn malformed_query_strings_are_400_on_every_list() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    for path in [
        "/admin/api/apps?limit=-1",
        "/admin/api/apps?page=abc",
        "/admin/api/apps?page=99999999999999999999999",
        "/admin/api/notifications/failed?limit=-1",
        "/admin/api/notifications/failed?page=x",
    ] {
        let (status, reply) = app.admin(Method::GET, path, None).await;
        assert_eq!(
            assert_error(status, &reply, StatusCode::BAD_REQUEST),
            "bad_request",
            "{path}"
        );
    }
    for path in [
        "/api/repositories?limit=-1",
        "/api/repositories?limit=many",
        "/api/events?limit=-1",
        "/api/events?limit=1.5",
    ] {
        let (status, reply) = app.call(Method::GET, path, Some(&client.token), None).await;
        assert_eq!(
            assert_error(status, &reply, StatusCode::BAD_REQUEST),
            "bad_request",
            "{path}"
        );
    }
}

#[tokio::test]
async fn page_numbers_are_bounded_rather_than_overflowing() {
    let app = TestApp::spawn().await;
    app.onboard("acme").await;
    for path in [
        "/admin/api/apps?page=9223372036854775808",
        "/admin/api/apps?page=18446744073709551615&limit=100",
        "/admin/api/apps?page=1000001",
        "/admin/api/notifications/failed?page=9223372036854775808",
    ] {
        let (status, reply) = app.admin(Method::GET, path, None).await;
        let code = assert_error(status, &reply, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code, "validation_failed", "{path}: {reply}");
        assert!(
            reply["error"].as_str().expect("message").contains("page"),
            "{path}: {reply}"
        );
    }
    // The highest page accepted is simply empty; the server is still there.
    let (status, reply) = app
        .admin(Method::GET, "/admin/api/apps?page=1000000&limit=100", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["data"], json!([]));
    assert_eq!(reply["data"]["pagination"]["total"], 1);
}

#[tokio::test]
async fn authorization_headers_that_are_not_ascii_are_401() {
    let app = TestApp::spawn().await;
    let raw = reqwest::header::HeaderValue::from_bytes("Bearer jeton-\u{e9}t\u{e9}".as_bytes())
        .expect("header values may hold opaque bytes");
    for path in ["/admin/api/apps", "/api/repositories", "/api/events"] {
        let response = app
            .client
            .get(app.url(path))
            .header("authorization", raw.clone())
            .send()
            .await
            .expect("answers");
        let (status, reply) = crate::helpers::read(response).await;
        assert_eq!(
            assert_error(status, &reply, StatusCode::UNAUTHORIZED),
            "unauthorized",
            "{path}"
        );
    }
}

#[tokio::test]
async fn ipv6_forms_of_private_addresses_are_refused() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let hosts = ["[::127.0.0.1]", "[::ffff:0:7f00:1]", "[fec0::1]"];
    for host in hosts {
        let body = onboarding(&format!("https://{host}/hooks"));
        let (status, reply) = app
            .admin(Method::POST, "/admin/api/apps/onboard", Some(body.clone()))
            .await;
        assert_invalid(status, &reply, &body, "private");

        let body = json!({"github_url": format!("https://{host}/acme/widgets")});
        let (status, reply) = app.register(&client, body.clone()).await;
        assert_invalid(status, &reply, &body, "private");
    }
    assert_eq!(app.app_count().await, 1);
    assert!(app.repositories(&client).await.is_empty());
}
