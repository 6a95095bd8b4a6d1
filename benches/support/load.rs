//! The floor's load client: every file of a commit as a signed `create`
//! webhook like Herald's (binary files above 1 MiB in 512 KiB pieces of
//! base64, one request each), all built before the clock starts, then sent
//! over `concurrency` keep-alive connections, each request written whole
//! after the answer to the one before on its connection. With one
//! connection, what a strictly ordered sender can get the receiver to
//! absorb, with as little of the sender's own cost as the loopback allows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::verify::{create_body, each_blob, file_json, files_of, signature_headers};

/// Binary files above this size go in pieces…
pub const CHUNK_THRESHOLD: usize = 1 << 20;
/// …of this many characters of base64.
pub const CHUNK_SIZE: usize = 512 * 1024;

/// One request, ready to be written to the socket.
pub struct Request {
    /// The HTTP/1.1 request: head and body.
    wire: Vec<u8>,
    /// Where the body starts in `wire`.
    head: usize,
    /// The headers beyond `Host` and `Content-Length`, for other senders.
    pub headers: Vec<(&'static str, String)>,
}

impl Request {
    pub fn body(&self) -> &[u8] {
        &self.wire[self.head..]
    }

    pub fn header_map(&self) -> reqwest::header::HeaderMap {
        self.headers
            .iter()
            .map(|(name, value)| {
                (
                    reqwest::header::HeaderName::from_static(name),
                    value.parse().expect("a header value"),
                )
            })
            .collect()
    }
}

/// What one pass over the requests did.
#[derive(Debug, Clone)]
pub struct Sent {
    pub requests: usize,
    /// Bytes written, heads included.
    pub bytes: usize,
    /// From the first write to the last answer.
    pub seconds: f64,
    /// Requests per second.
    pub rate: f64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
}

impl Sent {
    pub fn all_ok(&self) -> bool {
        self.statuses
            .keys()
            .all(|status| (200..300).contains(status))
    }
}

/// The requests for one tree, to one URL.
pub struct Load {
    /// `{base_url}/create`.
    pub url: String,
    pub requests: Vec<Request>,
}

impl Load {
    /// Every file of `commit` in the repository at `repo`, in git's order,
    /// as `create` webhooks to `{base_url}/create` from app `app`, signed
    /// with `key`.
    pub fn of_commit(repo: &Path, commit: &str, base_url: &str, app: &str, key: &str) -> Load {
        let url = format!("{base_url}/create");
        let parsed = url::Url::parse(&url).expect("an http:// URL");
        let host = format!(
            "{}:{}",
            parsed.host_str().expect("a host"),
            parsed.port_or_known_default().expect("a port")
        );
        let entries = files_of(repo, commit);
        let mut requests = Vec::with_capacity(entries.len());
        each_blob(
            repo,
            entries.iter().map(|(_, blob)| blob.as_str()),
            |i, content| {
                for file in pieces(file_json(&entries[i].0, content.to_vec()), i) {
                    let id = format!("evt_load_{}", requests.len());
                    let body = create_body(file, commit, &id);
                    let mut headers = vec![
                        ("content-type", "application/json".to_owned()),
                        ("x-docora-app-id", app.to_owned()),
                    ];
                    headers.extend(signature_headers(key, &id, &body));
                    let mut wire = format!(
                        "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n",
                        parsed.path(),
                        body.len()
                    );
                    for (name, value) in &headers {
                        wire.push_str(&format!("{name}: {value}\r\n"));
                    }
                    wire.push_str("\r\n");
                    let head = wire.len();
                    let mut wire = wire.into_bytes();
                    wire.extend_from_slice(&body);
                    requests.push(Request {
                        wire,
                        head,
                        headers,
                    });
                }
            },
        );
        Load { url, requests }
    }

    /// Sends every request once over `concurrency` connections.
    pub async fn send(&self, concurrency: usize) -> Sent {
        let addr = {
            let url = url::Url::parse(&self.url).expect("an http:// URL");
            format!(
                "{}:{}",
                url.host_str().expect("a host"),
                url.port_or_known_default().expect("a port")
            )
        };
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        let answers = futures::future::join_all(
            (0..concurrency.max(1)).map(|_| self.connection(&addr, &next)),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let mut statuses = BTreeMap::new();
        for answer in answers.into_iter().flatten() {
            *statuses.entry(answer).or_default() += 1;
        }
        Sent {
            requests: self.requests.len(),
            bytes: self.requests.iter().map(|r| r.wire.len()).sum(),
            seconds,
            rate: self.requests.len() as f64 / seconds,
            statuses,
        }
    }

    /// One keep-alive connection taking the next request until none is
    /// left; the status of each answer.
    async fn connection(&self, addr: &str, next: &AtomicUsize) -> Vec<u16> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the receiver accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::with_capacity(1 << 16, read);
        let mut statuses = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(request) = self.requests.get(i) else {
                return statuses;
            };
            write
                .write_all(&request.wire)
                .await
                .expect("the receiver reads");
            statuses.push(answer(&mut read).await);
        }
    }
}

/// Reads one answer (its body by `Content-Length`); gives its status.
async fn answer(read: &mut (impl AsyncBufRead + Unpin)) -> u16 {
    let mut line = String::new();
    read.read_line(&mut line).await.expect("an answer");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        read.read_line(&mut line).await.expect("a header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.expect("the answer's body");
    status
}

/// A file's webhook bodies' `file`: itself, or, for a binary file above
/// [`CHUNK_THRESHOLD`], its pieces of base64 in order (`i`: the file's
/// number, which names the transfer).
fn pieces(file: Value, i: usize) -> Vec<Value> {
    let base64 = file["content_encoding"] == "base64";
    let size = file["size"].as_u64().unwrap_or_default() as usize;
    if !base64 || size <= CHUNK_THRESHOLD {
        return vec![file];
    }
    let content = file["content"].as_str().expect("content").to_owned();
    let parts: Vec<&[u8]> = content.as_bytes().chunks(CHUNK_SIZE).collect();
    parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let mut piece = file.clone();
            piece["content"] = json!(std::str::from_utf8(part).expect("base64 is ASCII"));
            piece["chunk"] =
                json!({"id": format!("load_{i}"), "index": index, "total": parts.len()});
            piece
        })
        .collect()
}
