//! The endpoint breaker is an actor of its own, the single owner of its
//! state: however many subscriptions wait on a down endpoint, it lets one
//! probe through per cooldown, the cooldown growing with each failed probe.

use std::time::{Duration, Instant};

use reqwest::Method;

use crate::helpers::{Remotes, engine_with, onboard, watch};
use crate::receiver::{Receiver, Reply};

const COOLDOWN: Duration = Duration::from_millis(500);

#[tokio::test]
async fn a_down_endpoint_gets_one_probe_per_cooldown_however_many_subscriptions_wait() {
    let names: Vec<String> = (0..8).map(|i| format!("acme/r{i}.git")).collect();
    let remotes = Remotes::serve(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let receiver = Receiver::start().await;
    // Down, and slow to say so: two requests at once would overlap.
    receiver.fallback(Some(Reply {
        status: 500,
        retry_after: None,
        delay: Duration::from_millis(200),
    }));
    let app = engine_with(&[
        ("HERALD__BREAKER__DELIVERY__THRESHOLD", "2"),
        ("HERALD__BREAKER__DELIVERY__COOLDOWN", "500ms"),
    ])
    .await;
    let client = onboard(&app, &receiver, "acme").await;
    for name in &names {
        watch(&app, &client, &remotes.url(name)).await;
    }

    // Wait (bounded) for the breaker to open.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, overview) = app.admin(Method::GET, "/admin/api/overview", None).await;
        if overview["data"]["breakers_open"]["delivery"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened: {overview}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = Instant::now();

    // Three probes: after 0.5 s, then 1 s, then 2 s.
    let after_opening = |received: &[crate::receiver::Received]| {
        let mut probes: Vec<_> = received
            .iter()
            .filter(|r| r.arrived > opened)
            .cloned()
            .collect();
        probes.sort_by_key(|r| r.arrived);
        probes
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let probes = loop {
        let probes = after_opening(&receiver.received());
        if probes.len() >= 3 {
            break probes;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for three probes ({} so far); logs:\n{}",
            probes.len(),
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for pair in probes.windows(2) {
        assert!(
            pair[1].arrived >= pair[0].answered,
            "two requests were in flight at once while the breaker was open"
        );
        assert!(
            pair[1].arrived - pair[0].arrived >= COOLDOWN,
            "a second request within one cooldown: {:?}",
            pair[1].arrived - pair[0].arrived
        );
    }
    assert!(
        probes[2].arrived - probes[1].arrived > probes[1].arrived - probes[0].arrived,
        "the cooldown grows with each failed probe"
    );

    // The endpoint is back: the next probe closes the breaker and every
    // subscription gets its file.
    receiver.fallback(None);
    receiver
        .wait_for("every subscription's file", |r| {
            r.iter()
                .filter(|r| r.status == 200 && r.endpoint == "create")
                .count()
                == names.len()
        })
        .await;
}
