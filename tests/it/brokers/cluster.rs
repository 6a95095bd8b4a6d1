//! Two instances on one PostgreSQL database sharing one broker app: both
//! take work (the subscriptions' delivery leases), every event lands in
//! the JetStream stream once by id, each subscription's order is kept, and
//! when one instance is killed mid-way the other finishes its work once
//! the lease passes on. SQLite is single-instance: the test needs
//! `TEST_DATABASE_URL`.

use std::time::Duration;

use crate::cluster::{delivered, tree_of_repository, working_member};
use crate::delivery::tree_of;
use crate::faults::Flow;
use crate::helpers::{TestDatabase, watch};

use super::kills::{assert_every_event_arrived_once_by_id, drained};
use super::{Consumer, onboard_broker, published_twice};

/// Repositories the one app watches, and files in each.
const REPOSITORIES: usize = 3;
const FILES: usize = 25;
/// Versions at most before b is killed, and versions after.
const MAX_VERSIONS: usize = 30;
const AFTER_KILL: usize = 2;

#[tokio::test]
async fn two_instances_share_a_broker_app_and_the_survivor_finishes_a_killed_ones_work() {
    let database = TestDatabase::create().await;
    if !database.is_shared_server() {
        // Several instances need PostgreSQL; SQLite is single-instance.
        return;
    }
    let a = working_member(database.shared(), "4s", "300ms").await;
    let b = working_member(database.shared(), "4s", "300ms").await;

    let consumer = Consumer::new("nats").await;
    let client = onboard_broker(&a, "acme", "nats", consumer.destination(), 1).await;
    let mut flows: Vec<Flow> = (0..REPOSITORIES).map(|_| Flow::new(FILES)).collect();
    let mut repositories = Vec::new();
    for (i, flow) in flows.iter().enumerate() {
        // Registered through either instance.
        let via = if i % 2 == 0 { &a } else { &b };
        repositories.push(watch(via, &client, &flow.url()).await);
    }

    // Versions flow until both instances have published and b holds a
    // subscription with events still to send: b is killed then, and a few
    // more versions follow.
    let holding = format!(
        "delivery_lease_owner LIKE '{}/%' AND EXISTS (SELECT 1 FROM events e \
         WHERE e.subscription_id = subscriptions.id AND e.status = 'pending')",
        b.instance_id()
    );
    let mut versions = 0;
    let a_before_kill = 'flowing: loop {
        assert!(versions < MAX_VERSIONS, "b never held work when looked at");
        versions += 1;
        for flow in &mut flows {
            flow.next();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            let (a_done, b_done) = (delivered(&a).await, delivered(&b).await);
            if a_done > 0.0
                && b_done > 0.0
                && a.stored_rows_where("subscriptions", &holding).await > 0
            {
                println!("killed after v{versions}: a published {a_done}, b {b_done}");
                break 'flowing a_done;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = b.kill().await;
    for _ in 0..AFTER_KILL {
        for flow in &mut flows {
            flow.next();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for (flow, repository) in flows.iter().zip(&repositories) {
        let head = flow.repo.head().trim().to_owned();
        a.wait_for_commit(&client, repository, &head).await;
    }
    drained(&a).await;
    let messages = consumer.all().await;
    for (flow, repository) in flows.iter().zip(&repositories) {
        assert!(
            tree_of_repository(&messages, repository) == tree_of(&flow.repo),
            "{repository}: the consumer holds the last tree"
        );
    }
    let repeats = assert_every_event_arrived_once_by_id(
        &a,
        &consumer,
        &messages,
        &client,
        &repositories,
        true,
    )
    .await;
    assert_eq!(repeats, 0, "the stream dedupes by Nats-Msg-Id");
    assert_eq!(published_twice(&consumer, &messages), Vec::<String>::new());
    let a_after = delivered(&a).await;
    assert!(
        a_after > a_before_kill,
        "the survivor published after the kill"
    );
    println!("{} messages; a published {a_after} in all", messages.len());
    consumer.remove().await;
}
