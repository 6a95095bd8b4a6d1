//! Remotes that answer too slowly to be useful, as a hostile or broken git
//! host does: a real `git daemon` behind a relay that, once told to, passes
//! the daemon's answers on one byte every two seconds. Herald must cut such
//! a remote at `git.fetch_timeout` or at the low-speed rule, and one tenant's
//! dripping remotes must never hold the scan workers another tenant's push
//! needs.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::gitserver::TestRepo;
use crate::helpers::{Remotes, Rig, TestApp, engine_with, onboard, watch};
use crate::receiver::{Received, Receiver};

/// How far apart a dripping relay sends each byte.
const DRIP: Duration = Duration::from_secs(2);

/// A TCP relay in front of a git daemon: transparent until [`Self::drip`],
/// then the daemon's answers trickle out one byte every [`DRIP`].
struct DripRelay {
    port: u16,
    dripping: Arc<AtomicBool>,
    /// Connections that have sent at least one byte slowly.
    trickled: Arc<AtomicUsize>,
}

impl DripRelay {
    fn start(upstream: u16) -> DripRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("address").port();
        let dripping = Arc::new(AtomicBool::new(false));
        let trickled = Arc::new(AtomicUsize::new(0));
        let (drip, counted) = (dripping.clone(), trickled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (drip, counted) = (drip.clone(), counted.clone());
                std::thread::spawn(move || relay(client, upstream, &drip, &counted));
            }
        });
        DripRelay {
            port,
            dripping,
            trickled,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    fn drip(&self) {
        self.dripping.store(true, Ordering::SeqCst);
    }

    fn trickled(&self) -> usize {
        self.trickled.load(Ordering::SeqCst)
    }
}

fn relay(mut client: TcpStream, upstream: u16, dripping: &AtomicBool, trickled: &AtomicUsize) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let mut buffer = [0u8; 16 * 1024];
    let mut counted = false;
    loop {
        let n = match server.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !dripping.load(Ordering::SeqCst) {
            if client.write_all(&buffer[..n]).is_err() {
                return;
            }
            continue;
        }
        if !counted {
            counted = true;
            trickled.fetch_add(1, Ordering::SeqCst);
        }
        for byte in &buffer[..n] {
            if client.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(DRIP);
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// A repository with one file, served as `repo.git` by its own daemon, and
/// a receiver.
async fn remote(file: &str) -> (TestRepo, Rig) {
    let repo = TestRepo::new("main");
    repo.write(file, "first\n");
    repo.commit("first");
    let rig = Rig::serve_as(&repo, "repo.git").await;
    (repo, rig)
}

fn paths(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter_map(|r| r.json()["file"]["path"].as_str().map(str::to_owned))
        .collect()
}

/// Registers the relayed repository, lets its first snapshot arrive, then
/// turns the relay to dripping and pushes a second commit; returns the
/// error the stuck scan ended with.
async fn cut_while_dripping(app: &TestApp, what: &str) -> String {
    let (repo, rig) = remote("a.md").await;
    let relay = DripRelay::start(rig.daemon.port());
    let inbox = &rig.receiver;
    let client = onboard(app, inbox, "acme").await;
    let id = watch(app, &client, &relay.url("repo.git")).await;
    inbox
        .wait_for("the first snapshot", |r| paths(r) == ["a.md"])
        .await;
    relay.drip();
    repo.write("b.md", "second\n");
    repo.commit("second");
    rig.served.push(&repo, "main", false);
    let view = app
        .wait_for(&client, &id, what, |v| v["last_error"].as_str().is_some())
        .await;
    assert!(relay.trickled() > 0, "the relay dripped");
    assert_eq!(
        paths(&inbox.received()),
        ["a.md"],
        "nothing of the dripped commit was delivered"
    );
    view["last_error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_dripping_remote_is_cut_when_the_fetch_timeout_is_up() {
    let app = engine_with(&[
        ("HERALD__GIT__FETCH_TIMEOUT", "3s"),
        ("HERALD__GIT__LOW_SPEED_LIMIT", "0"),
    ])
    .await;
    let error = cut_while_dripping(&app, "the scan to time out").await;
    assert!(error.contains("did not answer in time"), "{error}");
}

#[tokio::test]
async fn a_trickling_remote_is_cut_at_the_low_speed_limit() {
    let app = engine_with(&[
        ("HERALD__GIT__FETCH_TIMEOUT", "10m"),
        ("HERALD__GIT__LOW_SPEED_LIMIT", "1000"),
        ("HERALD__GIT__LOW_SPEED_TIME", "3s"),
    ])
    .await;
    let error = cut_while_dripping(&app, "the slow transfer to be cut").await;
    assert!(
        error.contains("less than 1000 bytes a second for 3s"),
        "{error}"
    );
}

#[tokio::test]
async fn one_tenants_dripping_remotes_leave_scan_workers_for_the_others() {
    // Neither limit cuts the drips here: only the fair share keeps the
    // other tenant's push flowing.
    let app = engine_with(&[
        ("HERALD__GIT__SCAN_WORKERS", "4"),
        ("HERALD__GIT__SCAN_WORKERS_PER_APP", "2"),
        ("HERALD__GIT__FETCH_TIMEOUT", "10m"),
        ("HERALD__GIT__LOW_SPEED_LIMIT", "0"),
    ])
    .await;

    // Tenant one watches four repositories whose host starts dripping.
    let slow_inbox = Receiver::start().await;
    let slow = onboard(&app, &slow_inbox, "slow").await;
    let slow_repo = TestRepo::new("main");
    slow_repo.write("a.md", "first\n");
    slow_repo.commit("first");
    let names = ["one.git", "two.git", "three.git", "four.git"];
    let slow_remotes = Remotes::serve_repo(slow_repo, &names);
    let relay = DripRelay::start(slow_remotes.daemon.port());
    for name in names {
        watch(&app, &slow, &relay.url(name)).await;
    }
    slow_inbox
        .wait_for("the four first snapshots", |r| r.len() == 4)
        .await;

    // Tenant two watches a healthy repository.
    let (repo, rig) = remote("a.md").await;
    let inbox = &rig.receiver;
    rig.subscribe(&app, inbox, "healthy").await;
    inbox
        .wait_for("the healthy first snapshot", |r| paths(r) == ["a.md"])
        .await;

    // The slow host drips, and the slow tenant's rescans all get stuck.
    relay.drip();
    slow_remotes.repo.write("b.md", "second\n");
    slow_remotes.repo.commit("second");
    for served in &slow_remotes.served {
        served.push(&slow_remotes.repo, "main", false);
    }
    let stuck = tokio::time::Instant::now() + Duration::from_secs(30);
    while relay.trickled() < 2 {
        assert!(
            tokio::time::Instant::now() < stuck,
            "the slow tenant's scans never reached the dripping host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The healthy tenant's push is delivered within 15 s all the same.
    repo.write("b.md", "second\n");
    repo.commit("second");
    rig.served.push(&repo, "main", false);
    inbox
        .wait_for_within("the healthy push", Duration::from_secs(15), |r| {
            paths(r).contains(&"b.md".to_owned())
        })
        .await;
    assert!(
        paths(&slow_inbox.received()).iter().all(|p| p == "a.md"),
        "nothing came through the dripping host"
    );
}
