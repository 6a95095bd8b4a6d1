//! Webhook endpoints over https: the real binary posts to a receiver behind
//! TLS (tokio-rustls in front of the test receiver), trusting a private
//! authority the way an operator would (`SSL_CERT_FILE`). An endpoint whose
//! certificate it refuses fails each attempt with class `tls` and the
//! reason in the attempt log, and the events wait, unspent, until the app's
//! base URL names an endpoint it trusts.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use actors::test_support::tls::Issued;

use crate::gitserver::TestRepo;
use crate::helpers::{Rig, watch};
use crate::https_git::{herald_trusting, tls_front};
use crate::receiver::Receiver;

#[tokio::test]
async fn an_endpoint_certificate_herald_refuses_holds_the_events_with_class_tls() {
    let trusted = Issued::for_names(&["localhost"]);
    let stranger = Issued::for_names(&["localhost"]);
    let receiver = Receiver::start().await;
    let backend = receiver.port();
    let (trusted_port, handshakes) = tls_front(
        tokio_rustls::TlsAcceptor::from(trusted.server_config()),
        backend,
    )
    .await;
    let (stranger_port, _) = tls_front(
        tokio_rustls::TlsAcceptor::from(stranger.server_config()),
        backend,
    )
    .await;
    // The breaker opens on the second refusal and probes every second: the
    // event keeps attempts in hand until the endpoint is changed.
    let (app, _bundle) = herald_trusting(&trusted.authority).await;
    let client = app
        .onboard_with(json!({
            "app_name": "acme",
            "base_url": format!("https://localhost:{stranger_port}/hooks"),
            "email": "dev@example.com",
        }))
        .await;
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    watch(&app, &client, &rig.url()).await;

    let refused = |events: &[Value]| {
        events.iter().any(|e| {
            e["last_error"]
                .as_str()
                .is_some_and(|error| error.contains("is not trusted"))
        })
    };
    let events = app
        .wait_for_events(&client, "limit=10", "the refusal on record", refused)
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["status"], "pending",
        "held, not spent: {events:?}"
    );
    let detail = app
        .event(&client, events[0]["event_id"].as_str().expect("an id"))
        .await;
    let attempt = &detail["attempts"][0];
    assert_eq!(attempt["error_class"], "tls", "{detail}");
    let excerpt = attempt["response_excerpt"].as_str().unwrap_or_default();
    assert!(
        excerpt.contains("the endpoint's TLS certificate is not trusted"),
        "the attempt log says why: {detail}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing went past the refused handshake"
    );

    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(json!({"base_url": format!("https://localhost:{trusted_port}/hooks")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = receiver
        .wait_for("the file, over TLS", |received| !received.is_empty())
        .await;
    assert_eq!(received[0].json()["file"]["path"], "a.md");
    assert!(handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    app.wait_for_events(&client, "limit=10", "the event delivered", |events| {
        events.len() == 1 && events[0]["status"] == "delivered"
    })
    .await;
    assert_eq!(receiver.received().len(), 1, "delivered once");
}
