//! The scan workers' queue: a scan somebody asked for (a push hook, `POST
//! …/scan`) goes ahead of the poll's rescans that were waiting before it,
//! and the poll goes on after it.
//!
//! The remotes of the "busy" repositories sit behind a [`Gate`], a proxy
//! in front of `git daemon` that holds their connections while the test
//! says so: a rescan that reaches one keeps its scan worker until the test
//! lets it through, so the queue behind it stays exactly as the test made
//! it. Nothing here depends on how fast a scan is.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::gitserver::{Served, TestRepo};
use crate::helpers::{Rig, watch as register};
use crate::telemetry::{scrape_until, value};

/// Repositories, one per connection, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// A git:// proxy in front of a `git daemon` that holds each connection to
/// a held repository (read from the request's first line) until released.
struct Gate {
    port: u16,
    held: watch::Sender<HashSet<String>>,
    /// Connections waiting at the gate now, by repository.
    waiting: Log,
    /// Connections let through since the last [`Gate::hold`], in order.
    passed: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(daemon_port: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let (held, _) = watch::channel(HashSet::new());
        let (waiting, passed): (Log, Log) = (Arc::default(), Arc::default());
        let task = tokio::spawn({
            let (held, waiting, passed) = (held.clone(), waiting.clone(), passed.clone());
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((inbound, _)) = listener.accept().await {
                    let (held, waiting, passed) =
                        (held.subscribe(), waiting.clone(), passed.clone());
                    connections.spawn(Self::connection(
                        inbound,
                        daemon_port,
                        held,
                        waiting,
                        passed,
                    ));
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Gate {
            port,
            held,
            waiting,
            passed,
            task,
        }
    }

    async fn connection(
        mut inbound: TcpStream,
        daemon_port: u16,
        mut held: watch::Receiver<HashSet<String>>,
        waiting: Log,
        passed: Log,
    ) {
        // `git-upload-pack /busy-0.git\0host=…\0`, as one pkt-line.
        let mut length = [0u8; 4];
        if inbound.read_exact(&mut length).await.is_err() {
            return;
        }
        let Some(length) = std::str::from_utf8(&length)
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .filter(|n| (4..=65_520).contains(n))
        else {
            return;
        };
        let mut request = vec![0u8; length - 4];
        if inbound.read_exact(&mut request).await.is_err() {
            return;
        }
        let line = String::from_utf8_lossy(&request);
        let repository = line
            .split(['\0', ' '])
            .nth(1)
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        waiting.lock().expect("lock").push(repository.clone());
        let released = held
            .wait_for(|held| !held.contains(&repository))
            .await
            .is_ok();
        {
            let mut waiting = waiting.lock().expect("lock");
            if let Some(at) = waiting.iter().position(|r| *r == repository) {
                waiting.remove(at);
            }
        }
        if !released {
            return;
        }
        passed.lock().expect("lock").push(repository);
        let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", daemon_port)).await else {
            return;
        };
        let mut first = format!("{:04x}", request.len() + 4).into_bytes();
        first.extend_from_slice(&request);
        if outbound.write_all(&first).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
    }

    /// `git://127.0.0.1:PORT/<name>` through the gate.
    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Holds every new or waiting connection to these repositories.
    fn hold(&self, names: &[String]) {
        self.passed.lock().expect("lock").clear();
        self.held.send_replace(names.iter().cloned().collect());
    }

    fn release(&self, name: &str) {
        self.held.send_modify(|held| {
            held.remove(name);
        });
    }

    fn release_all(&self) {
        self.held.send_replace(HashSet::new());
    }

    fn waiting(&self) -> Vec<String> {
        self.waiting.lock().expect("lock").clone()
    }

    fn passed(&self) -> Vec<String> {
        self.passed.lock().expect("lock").clone()
    }

    /// Waits (bounded) until the connections waiting at the gate satisfy
    /// `done`; returns them.
    async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let waiting = self.waiting();
            if done(&waiting) {
                return waiting;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; at the gate: {waiting:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `herald_workers_waiting` of the scan pool in the line of `priority`.
fn waiting_scans(scrape: &prometheus_parse::Scrape, priority: &str) -> usize {
    value(
        scrape,
        "herald_workers_waiting",
        &[("pool", "scans"), ("priority", priority)],
    ) as usize
}

#[tokio::test]
async fn a_requested_scan_goes_ahead_of_the_polls_backlog() {
    const BUSY: usize = 5;
    let repo = TestRepo::new("main");
    repo.write("README.md", "hello\n");
    repo.commit("first");
    let rig = Rig::serve_as(&repo, "pushed.git").await;
    let busy: Vec<String> = (0..BUSY).map(|i| format!("busy-{i}.git")).collect();
    let _siblings: Vec<Served> = busy.iter().map(|n| rig.served.sibling(&repo, n)).collect();
    let gate = Gate::start(rig.daemon.port()).await;
    let receiver = &rig.receiver;
    // One scan worker, and every repository due again soon after its scan:
    // the poll alone keeps the worker busy.
    let (app, client, pushed_id) = rig
        .watched(
            "acme",
            &[
                ("HERALD__GIT__SCAN_WORKERS", "1"),
                ("HERALD__SCHEDULER__RESCAN_INTERVAL", "300ms"),
                ("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0"),
                // A held connection moves no bytes; only the test ends it.
                ("HERALD__GIT__LOW_SPEED_LIMIT", "0"),
            ],
        )
        .await;
    for name in &busy {
        register(&app, &client, &gate.url(name)).await;
    }
    receiver
        .wait_for("every initial snapshot", |r| r.len() == BUSY + 1)
        .await;

    // The next rescan of a busy repository holds the worker at the gate;
    // every other repository's rescan, the pushed one's included, waits
    // in the scheduled line behind it.
    gate.hold(&busy);
    let at_gate = gate
        .wait_until("a rescan at the gate", |w| w.len() == 1)
        .await;
    scrape_until(&app, "the poll's backlog", |s| {
        waiting_scans(s, "scheduled") == BUSY
    })
    .await;

    repo.write("pushed.md", "pushed\n");
    repo.commit("a push");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{pushed_id}/scan"),
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The request moved the pushed repository's waiting rescan to the
    // urgent line.
    scrape_until(&app, "the request in the urgent line", |s| {
        waiting_scans(s, "urgent") == 1 && waiting_scans(s, "scheduled") == BUSY - 1
    })
    .await;

    // The rescan on the worker ends: the worker goes to the request, not to
    // the rescans that waited longer (each of which would hold it at the
    // gate, and the push would never arrive).
    gate.release(&at_gate[0]);
    receiver
        .wait_for("the pushed file", |r| {
            r.iter().any(|x| x.json()["file"]["path"] == "pushed.md")
        })
        .await;
    assert_eq!(gate.passed(), [at_gate[0].clone()], "no rescan went first");

    // The poll goes on after it: the next busy rescan reaches the gate.
    let next = gate
        .wait_until("the poll's next rescan", |w| {
            w.len() == 1 && w[0] != at_gate[0]
        })
        .await;
    assert!(busy.contains(&next[0]), "{next:?}");
    gate.release_all();
    app.stop().await;
}
