//! The inherent work of a webhook: what any sender of Herald's webhooks
//! must do for one file, whatever its design, measured alone. It is the
//! floor of the reference bench's "Herald's CPU a webhook while
//! delivering" (BENCHMARKS.md), whose goal is at most twice this.
//!
//! `cargo bench --bench inherent [-- OPTIONS]`
//!
//! The files are those of the reference workload's tip
//! (`support::workload`: `--files` generated files, seed `--seed`), read
//! with `git cat-file` (`verify::contents_of`). For each file, timed one
//! operation at a time over batches of `--batch` files, on this thread:
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
//! CPU is this thread's (`CLOCK_THREAD_CPUTIME_ID`), wall time its
//! `Instant`s; each is summed over the batches and divided by the webhooks
//! sent. A row, not counted in the total, renders the same files as Herald
//! sends them (text escaped as a JSON string, binary files in base64).
//! Besides the workload, a 1 KiB and a 16 KiB text file are sent as many
//! times as the workload has files. Each figure is the median of the
//! rounds' means, after one round of warm-up.
//!
//! Options (defaults in brackets): `--files N` [5000], `--seed N` [1],
//! `--rounds N` [10], `--batch N` [32]. Without `--bench` (as `cargo test
//! --benches` runs it) the sizes shrink to a smoke run. Results are printed
//! as Markdown; see BENCHMARKS.md.

mod support;

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use actors::payload::{self, Chunking, RepositoryRef};
use actors::signing;
use sha2::{Digest, Sha256};
use support::verify;
use support::workload::Workload;
use support::*;

struct Options {
    files: usize,
    seed: u64,
    rounds: usize,
    batch: usize,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = Options {
        files: if args.full { 5_000 } else { 200 },
        seed: 1,
        rounds: if args.full { 10 } else { 1 },
        batch: 32,
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--seed" => options.seed = args.number(&arg) as u64,
            "--rounds" => options.rounds = args.number(&arg),
            "--batch" => options.batch = args.number(&arg).max(1),
            other => panic!("unknown option {other:?} (see benches/inherent.rs)"),
        }
    }
    options
}

/// Herald's default chunking (`delivery.chunk_threshold_bytes`,
/// `delivery.chunk_size_bytes`).
const CHUNKING: Chunking = Chunking {
    threshold_bytes: 1 << 20,
    chunk_chars: 1 << 19,
};

/// An app's signing key as Herald generates one: 64 hex characters.
const KEY: &[u8] = b"6b1f0c5e9a3d47f2b8e04c6a1d9f3b7e2c5a8d0f4e6b9c1a3d7f0e2b5c8a9d4f";

/// The answer of the peer: small, with a body, kept alive.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 11\r\n\r\n{\"ok\":true}";

const APP_ID: &str = "app_01KB0000000000000000000000";

/// One file of a corpus, with the event that announces its creation.
struct File {
    content: Vec<u8>,
    event: entity::event::Model,
    /// The `ce-*` headers of its requests, as Herald writes them.
    cloudevents: String,
}

/// The files sent in a round, and what the table calls them.
struct Corpus {
    name: String,
    files: Vec<File>,
}

/// What one operation cost over a round: nanoseconds of this thread's CPU
/// and of wall time.
#[derive(Clone, Copy, Default)]
struct Spent {
    cpu_ns: u64,
    wall_ns: u64,
}

impl Spent {
    /// Runs `work`, adding its CPU and wall time.
    fn time<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let (cpu, wall) = (thread_cpu_ns(), Instant::now());
        let out = work();
        self.wall_ns += wall.elapsed().as_nanos() as u64;
        self.cpu_ns += thread_cpu_ns() - cpu;
        out
    }
}

/// The operations, in the table's order; the last is not in the total.
const OPERATIONS: [&str; 4] = [
    "two signatures (HMAC-SHA256 of the body, twice)",
    "the body: base64 of the file + Docora's JSON framing",
    "the request: head + body written, `200` read (loopback, kept alive)",
    "— the body as Herald sends text files (JSON-escaped, not base64)",
];
const COUNTED: usize = 3;

/// One round over a corpus: each operation's cost and the webhooks sent.
struct Round {
    spent: [Spent; 4],
    webhooks: usize,
    bytes: usize,
}

fn main() {
    let options = parse_options();
    let dir = tempfile::tempdir().expect("a temp dir");
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).expect("the served directory");
    let started = Instant::now();
    let workload = Workload::generate(&served, options.files, options.seed, &[]);
    let files = verify::contents_of(&workload.served, workload.tip());
    eprintln!(
        "generated {}: {} files ({} binary), {:.1} MB, in {:.1} s",
        workload.name,
        files.len(),
        workload.tally.binary,
        files.iter().map(|(_, c)| c.len()).sum::<usize>() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let corpora = [
        Corpus {
            name: format!("workload ({} files)", files.len()),
            files: files
                .iter()
                .enumerate()
                .map(|(i, (path, content))| file(i, path, content.clone()))
                .collect(),
        },
        repeated("1 KiB", 1024, files.len()),
        repeated("16 KiB", 16 * 1024, files.len()),
    ];

    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let peer = std::thread::Builder::new()
        .name("peer".into())
        .spawn(move || peer(&listener))
        .expect("the peer thread");
    let mut stream = TcpStream::connect(addr).expect("the peer accepts");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let host = addr.to_string();

    let mut rounds: Vec<Vec<Round>> = corpora.iter().map(|_| Vec::new()).collect();
    for round in 0..=options.rounds {
        for (corpus, kept) in corpora.iter().zip(&mut rounds) {
            let result = send_round(corpus, &mut stream, &host, options.batch);
            if round > 0 {
                kept.push(result);
            }
        }
        let total = |r: &Round| {
            r.spent[..COUNTED].iter().map(|s| s.cpu_ns).sum::<u64>() as f64
                / 1e3
                / r.webhooks as f64
        };
        match round {
            0 => eprintln!("warm-up round done"),
            _ => eprintln!(
                "round {round}: total CPU a webhook {}",
                rounds
                    .iter()
                    .zip(&corpora)
                    .map(|(r, c)| format!("{} {:.2} µs", c.name, total(&r[round - 1])))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    drop(stream);
    peer.join().expect("the peer ends");

    print_table(&corpora, &rounds, options.rounds);
    println!("load average at the end: {}", load_average());
}

/// Sends every file of `corpus` once, timing each operation over batches
/// of `batch` files.
fn send_round(corpus: &Corpus, stream: &mut TcpStream, host: &str, batch: usize) -> Round {
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
fn request(stream: &mut TcpStream, head: &[u8], body: &[u8]) {
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
fn peer(listener: &TcpListener) {
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
fn thread_cpu_ns() -> u64 {
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

/// A corpus of `count` files of `size` bytes of text, all alike.
fn repeated(name: &str, size: usize, count: usize) -> Corpus {
    const LINE: &str = "alpha beta gamma delta kernel module packet stream commit branch\n";
    let content: Vec<u8> = LINE.bytes().cycle().take(size).collect();
    Corpus {
        name: name.to_owned(),
        files: (0..count)
            .map(|i| file(i, &format!("docs/page-{i}.md"), content.clone()))
            .collect(),
    }
}

/// File `i` of a corpus: `content` at `path`, announced as created.
fn file(i: usize, path: &str, content: Vec<u8>) -> File {
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
    let cloudevents = actors::cloudevents::CloudEvent::of_event(&event, "create")
        .headers(&id)
        .into_iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    File {
        content,
        event,
        cloudevents,
    }
}

fn repository() -> RepositoryRef {
    RepositoryRef {
        repository_id: "repo_01KB0000000000000000000000".into(),
        github_url: "git://127.0.0.1/r5000s1.git".into(),
        owner: "bench".into(),
        name: "r5000s1".into(),
    }
}

/// The table: for each operation and corpus, the median of the rounds'
/// means a webhook, CPU (with the rounds' range) then wall time.
fn print_table(corpora: &[Corpus], rounds: &[Vec<Round>], count: usize) {
    let mut header = format!("| µs a webhook, median of {count} rounds |");
    let mut rule = String::from("|---|");
    let mut sizes = Vec::new();
    for (corpus, kept) in corpora.iter().zip(rounds) {
        let first = &kept[0];
        sizes.push(format!(
            "{}: {} webhooks, {:.1} KiB a body",
            corpus.name,
            first.webhooks,
            first.bytes as f64 / first.webhooks as f64 / 1024.0
        ));
        header.push_str(&format!(" {}, CPU | wall |", corpus.name));
        rule.push_str("---|---|");
    }
    println!("{}\n\n{header}\n{rule}", sizes.join("; "));
    for (op, name) in OPERATIONS.iter().enumerate() {
        if op == COUNTED {
            let cpu = |r: &Round| r.spent[..COUNTED].iter().map(|s| s.cpu_ns).sum();
            let wall = |r: &Round| r.spent[..COUNTED].iter().map(|s| s.wall_ns).sum();
            println!(
                "{}",
                row("**the inherent work of a webhook**", rounds, &cpu, &wall)
            );
        }
        let cpu = |r: &Round| r.spent[op].cpu_ns;
        let wall = |r: &Round| r.spent[op].wall_ns;
        println!("{}", row(name, rounds, &cpu, &wall));
    }
}

/// A row of the table: `cpu` and `wall` (nanoseconds in a round) a
/// webhook, for each corpus.
fn row(
    name: &str,
    rounds: &[Vec<Round>],
    cpu: &dyn Fn(&Round) -> u64,
    wall: &dyn Fn(&Round) -> u64,
) -> String {
    let per_webhook = |kept: &[Round], pick: &dyn Fn(&Round) -> u64| -> Vec<f64> {
        kept.iter()
            .map(|r| pick(r) as f64 / 1e3 / r.webhooks as f64)
            .collect()
    };
    let mut row = format!("| {name} |");
    for kept in rounds {
        let cpu = per_webhook(kept, cpu);
        row.push_str(&format!(
            " {:.2} ({:.2}–{:.2}) | {:.2} |",
            median(&cpu),
            percentile(&cpu, 0.0),
            percentile(&cpu, 100.0),
            median(&per_webhook(kept, wall))
        ));
    }
    row
}
