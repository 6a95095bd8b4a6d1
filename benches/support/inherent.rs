//! The inherent work of a webhook: what any sender of Herald's webhooks
//! must do for one file, whatever its design, measured alone. It is the
//! floor of the reference bench's "Herald's CPU a webhook while
//! delivering" (BENCHMARKS.md), whose goal is at most twice this;
//! `benches/inherent.rs` prints it operation by operation, and
//! `benches/reference.rs` measures it again after each initial sync, over
//! the files that sync delivered ([`inherent_cpu_us`]).
//!
//! For each file of a [`Corpus`], timed one operation at a time over
//! batches of files, on the calling thread:
//!
//! 1. **The body**: the file's created-file body as Herald renders it
//!    (`actors::payload::render`, then each part), its content in base64:
//!    the base64 encoding and the JSON framing of Docora's body. A binary
//!    file above Herald's default chunk threshold (1 MiB) becomes several
//!    bodies of 512 KiB of base64, each a webhook, as Herald sends it.
//! 2. **The signatures**: both of Herald's (`actors::signing`): Docora's
//!    `x-docora-signature` (HMAC-SHA256 of `{timestamp}.{body}`, hex) and
//!    Standard Webhooks' `webhook-signature` (of `{id}.{timestamp}.{body}`,
//!    base64), with one key.
//! 3. **The request**: one HTTP/1.1 request on a kept-alive loopback TCP
//!    connection: its head (Herald's headers, the signatures included)
//!    formatted, head and body written (`writev`, then `write` for what is
//!    left), a fixed `200` answer read. The peer is a thread of the bench
//!    on `std::net` that reads each request by its `content-length` and
//!    writes the answer: the syscalls are measured, not a server library,
//!    and the peer's CPU is not counted.
//!
//! CPU is the sending thread's (`CLOCK_THREAD_CPUTIME_ID`), wall time its
//! `Instant`s; each is summed over the batches and divided by the webhooks
//! sent. A fourth operation, not counted in the total, renders the same
//! files as Herald sends them (text escaped as a JSON string, binary files
//! in base64).

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Instant;

use actors::payload::{self, Chunking, RepositoryRef};
use actors::signing;
use sha2::{Digest, Sha256};

use super::median;

/// Herald's default chunking (`delivery.chunk_threshold_bytes`,
/// `delivery.chunk_size_bytes`).
pub const CHUNKING: Chunking = Chunking {
    threshold_bytes: 1 << 20,
    chunk_chars: 1 << 19,
};

/// An app's signing key as Herald generates one: 64 hex characters.
pub const KEY: &[u8] = b"6b1f0c5e9a3d47f2b8e04c6a1d9f3b7e2c5a8d0f4e6b9c1a3d7f0e2b5c8a9d4f";

/// The answer of the peer: small, with a body, kept alive.
pub const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 11\r\n\r\n{\"ok\":true}";

pub const APP_ID: &str = "app_01KB0000000000000000000000";

/// One file of a corpus, with the event that announces its creation.
pub struct File {
    pub content: Vec<u8>,
    pub event: entity::event::Model,
    /// The `ce-*` headers of its requests, as Herald writes them.
    pub cloudevents: String,
}

/// The files sent in a round, and what the table calls them.
pub struct Corpus {
    pub name: String,
    pub files: Vec<File>,
}

impl Corpus {
    /// The corpus of `files` (path, content), each announced as created.
    pub fn of_files(name: String, files: &[(String, Vec<u8>)]) -> Self {
        Self {
            name,
            files: files
                .iter()
                .enumerate()
                .map(|(i, (path, content))| file(i, path, content.clone()))
                .collect(),
        }
    }
}

/// What one operation cost over a round: nanoseconds of this thread's CPU
/// and of wall time.
#[derive(Clone, Copy, Default)]
pub struct Spent {
    pub cpu_ns: u64,
    pub wall_ns: u64,
}

impl Spent {
    /// Runs `work`, adding its CPU and wall time.
    pub fn time<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let (cpu, wall) = (thread_cpu_ns(), Instant::now());
        let out = work();
        self.wall_ns += wall.elapsed().as_nanos() as u64;
        self.cpu_ns += thread_cpu_ns() - cpu;
        out
    }
}

/// The operations, in the table's order; the last is not in the total.
pub const OPERATIONS: [&str; 4] = [
    "two signatures (HMAC-SHA256 of the body, twice)",
    "the body: base64 of the file + Docora's JSON framing",
    "the request: head + body written, `200` read (loopback, kept alive)",
    "— the body as Herald sends text files (JSON-escaped, not base64)",
];
/// How many of [`OPERATIONS`] make the inherent work (the first ones).
pub const COUNTED: usize = 3;

/// One round over a corpus: each operation's cost and the webhooks sent.
pub struct Round {
    pub spent: [Spent; 4],
    pub webhooks: usize,
    pub bytes: usize,
}

impl Round {
    /// The inherent work of a webhook in this round: the CPU of the
    /// [`COUNTED`] operations a webhook, µs.
    pub fn cpu_us(&self) -> f64 {
        self.spent[..COUNTED].iter().map(|s| s.cpu_ns).sum::<u64>() as f64
            / 1e3
            / self.webhooks as f64
    }
}

/// A kept-alive loopback connection to the [`peer`], a thread of its own.
pub struct Loopback {
    pub stream: TcpStream,
    /// The peer's address, the requests' `host`.
    pub host: String,
    peer: JoinHandle<()>,
}

impl Loopback {
    /// Starts the peer on a loopback port and connects to it.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let peer = std::thread::Builder::new()
            .name("peer".into())
            .spawn(move || peer(&listener))
            .expect("the peer thread");
        let stream = TcpStream::connect(addr).expect("the peer accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self {
            stream,
            host: addr.to_string(),
            peer,
        }
    }

    /// [`send_round`] on this connection.
    pub fn send_round(&mut self, corpus: &Corpus, batch: usize) -> Round {
        send_round(corpus, &mut self.stream, &self.host, batch)
    }

    /// Closes the connection and waits for the peer to end.
    pub fn finish(self) {
        let Self { stream, peer, .. } = self;
        drop(stream);
        peer.join().expect("the peer ends");
    }
}

/// The inherent work of a webhook over `files` (path, content), CPU µs: one
/// round of warm-up, then the median of `rounds` rounds of the [`COUNTED`]
/// operations' CPU a webhook, over batches of `batch` files, on this thread
/// and a peer thread on loopback.
pub fn inherent_cpu_us(files: &[(String, Vec<u8>)], rounds: usize, batch: usize) -> f64 {
    let corpus = Corpus::of_files(format!("workload ({} files)", files.len()), files);
    let mut loopback = Loopback::start();
    let mut kept = Vec::with_capacity(rounds);
    for round in 0..=rounds {
        let result = loopback.send_round(&corpus, batch.max(1));
        if round > 0 {
            kept.push(result.cpu_us());
        }
    }
    loopback.finish();
    median(&kept)
}

/// Sends every file of `corpus` once, timing each operation over batches
/// of `batch` files.
pub fn send_round(corpus: &Corpus, stream: &mut TcpStream, host: &str, batch: usize) -> Round {
    let mut spent = [Spent::default(); 4];
    let repository = repository();
    let (mut webhooks, mut bytes) = (0, 0);
    for files in corpus.files.chunks(batch) {
        // Each body with the file it is about.
        let bodies: Vec<(&File, String, bytes::Bytes)> = spent[1].time(|| {
            let mut bodies = Vec::with_capacity(files.len());
            for file in files {
                let rendered =
                    payload::render(&file.event, &repository, Some(&file.content), CHUNKING)
                        .expect("the body renders");
                for index in 0..rendered.len() {
                    let (id, body) = rendered.part(&file.event.id, index);
                    bodies.push((file, id, body));
                }
            }
            bodies
        });
        let signed: Vec<(i64, String, String)> = spent[0].time(|| {
            bodies
                .iter()
                .map(|(_, id, body)| {
                    let timestamp = actors::clock::now_ms() / 1000;
                    (
                        timestamp,
                        signing::docora(KEY, timestamp, body),
                        signing::standard(&[KEY], id, timestamp, body),
                    )
                })
                .collect()
        });
        spent[2].time(|| {
            for ((file, id, body), (timestamp, docora, standard)) in bodies.iter().zip(&signed) {
                let head = format!(
                    "POST /webhooks/create HTTP/1.1\r\nhost: {host}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\
                     user-agent: {}\r\naccept: */*\r\nx-docora-app-id: {APP_ID}\r\n\
                     x-docora-timestamp: {timestamp}\r\nx-docora-signature: {docora}\r\n\
                     webhook-id: {id}\r\nwebhook-timestamp: {timestamp}\r\n\
                     webhook-signature: {standard}\r\n{}\r\n",
                    body.len(),
                    actors::webhook_client::USER_AGENT,
                    file.cloudevents,
                );
                request(stream, head.as_bytes(), body);
            }
        });
        webhooks += bodies.len();
        bytes += bodies.iter().map(|(_, _, body)| body.len()).sum::<usize>();
        drop(bodies);
        spent[3].time(|| {
            for file in files {
                let mut event = file.event.clone();
                event.binary = actors::changes::binary::is_binary(
                    &file.content[..file.content.len().min(actors::changes::binary::HEAD_BYTES)],
                );
                let rendered = payload::render(&event, &repository, Some(&file.content), CHUNKING)
                    .expect("the body renders");
                for index in 0..rendered.len() {
                    std::hint::black_box(rendered.part(&event.id, index));
                }
            }
        });
    }
    Round {
        spent,
        webhooks,
        bytes,
    }
}

/// Writes one request (`writev` of head and body, then whatever is left)
/// and reads the peer's whole answer.
pub fn request(stream: &mut TcpStream, head: &[u8], body: &[u8]) {
    let total = head.len() + body.len();
    let mut written = 0;
    while written < total {
        let n = if written < head.len() {
            stream.write_vectored(&[IoSlice::new(&head[written..]), IoSlice::new(body)])
        } else {
            stream.write(&body[written - head.len()..])
        }
        .expect("the peer reads");
        assert!(n > 0, "the peer closed the connection");
        written += n;
    }
    let mut answer = [0u8; 128];
    let mut read = 0;
    while read < ANSWER.len() {
        let n = stream.read(&mut answer[read..]).expect("the peer answers");
        assert!(n > 0, "the peer closed the connection");
        read += n;
    }
    assert_eq!(&answer[..read], ANSWER, "the peer's answer");
}

/// The peer: on one connection, reads each request by its
/// `content-length` and writes [`ANSWER`], until the connection closes.
pub fn peer(listener: &TcpListener) {
    let (mut stream, _) = listener.accept().expect("the sender connects");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        // The head, and whatever of the body came with it.
        let mut have = 0;
        let head_end = loop {
            if let Some(at) = buffer[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(have < buffer.len(), "a head under 256 KiB");
            match stream.read(&mut buffer[have..]).expect("the sender writes") {
                0 => return,
                n => have += n,
            }
        };
        let head = std::str::from_utf8(&buffer[..head_end]).expect("an ASCII head");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.trim().parse().ok())
            .expect("a content-length");
        let mut left = length
            .checked_sub(have - head_end)
            .expect("one request at a time");
        while left > 0 {
            let n = stream
                .read(&mut buffer[..left.min(256 * 1024)])
                .expect("the body");
            assert!(n > 0, "the sender closed mid-body");
            left -= n;
        }
        stream.write_all(ANSWER).expect("the sender reads");
    }
}

/// This thread's CPU time, in nanoseconds.
#[allow(unsafe_code)]
pub fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` into `now`, which
    // outlives the call.
    let answer = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(answer, 0, "CLOCK_THREAD_CPUTIME_ID is readable");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// File `i` of a corpus: `content` at `path`, announced as created.
pub fn file(i: usize, path: &str, content: Vec<u8>) -> File {
    let created_at = 1_767_225_600_000 + i as i64;
    let id = format!("evt_01KB{i:022}");
    let event = entity::event::Model {
        id: id.clone(),
        subscription_id: "sub_01KB0000000000000000000000".into(),
        app_id: APP_ID.into(),
        repository_id: repository().repository_id,
        snapshot_id: Some("snp_01KB0000000000000000000000".into()),
        seq: i as i64 + 1,
        kind: entity::EventKind::Created,
        path: Some(path.to_owned()),
        sha256: Some(hex::encode(Sha256::digest(&content))),
        previous_sha256: None,
        size: Some(content.len() as i64),
        blob_id: Some("0".repeat(40)),
        // Base64, whatever the file holds: see `OPERATIONS`.
        binary: true,
        lfs: false,
        renamed_from: None,
        commit_sha: Some("c".repeat(40)),
        payload: None,
        status: entity::EventStatus::Pending,
        attempts: 0,
        next_attempt_at: created_at,
        last_error: None,
        created_at,
        delivered_at: None,
        trace_parent: None,
        stream_pos: None,
        replay_id: None,
    };
    let mut cloudevents = String::new();
    actors::cloudevents::CloudEvent::of_event(&event, "create").headers(&id, |name, value| {
        cloudevents.push_str(&format!("{name}: {value}\r\n"));
    });
    File {
        content,
        event,
        cloudevents,
    }
}

/// The repository the events are about.
pub fn repository() -> RepositoryRef {
    RepositoryRef {
        repository_id: "repo_01KB0000000000000000000000".into(),
        github_url: "git://127.0.0.1/r5000s1.git".into(),
        owner: "bench".into(),
        name: "r5000s1".into(),
    }
}
