//! A real webhook receiver for the tests: an HTTP server on loopback that
//! records every request and answers as scripted. Signatures are verified
//! here from docs/webhooks.md, independently of Herald's own signer.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use warp::Filter;
use warp::http::StatusCode;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub endpoint: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
    /// When the request arrived and when it was answered.
    pub arrived: std::time::Instant,
    pub answered: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// A request as a [`Receiver::answer_by`] rule sees it.
pub struct Incoming<'a> {
    pub endpoint: &'a str,
    pub body: &'a [u8],
    /// Requests in flight at the receiver, this one included.
    pub in_flight: usize,
}

type Rule = Arc<dyn Fn(&Incoming<'_>) -> Reply + Send + Sync>;

#[derive(Default)]
struct Script {
    queue: VecDeque<Reply>,
    /// Answers after the queue runs out, before the fallback.
    rule: Option<Rule>,
    /// Answer after the queue runs out (default 200).
    fallback: Option<Reply>,
    /// The body of every answer (default `ok`).
    body: Option<String>,
}

pub struct Receiver {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests that arrived, answered or not yet (a delayed reply).
    arrivals: Arc<std::sync::atomic::AtomicUsize>,
    script: Arc<Mutex<Script>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// The port the receiver listens on (plain HTTP).
    pub fn port(&self) -> u16 {
        url::Url::parse(&self.base_url)
            .ok()
            .and_then(|url| url.port())
            .expect("the receiver's URL names its port")
    }

    pub async fn start() -> Receiver {
        Self::start_on(0).await
    }

    /// A receiver on a given port (e.g. one that refused connections until now).
    pub async fn start_on(port: u16) -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script::default()));
        let (record, plan) = (received.clone(), script.clone());
        let arrivals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let arrived = arrivals.clone();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let route = warp::post()
            .and(warp::path::tail())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .and_then(
                move |tail: warp::path::Tail,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    let (record, plan, in_flight) =
                        (record.clone(), plan.clone(), in_flight.clone());
                    arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let now_in_flight =
                        in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let arrived_at = std::time::Instant::now();
                    async move {
                        let endpoint = tail
                            .as_str()
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let (reply, answer) = {
                            let mut plan = plan.lock().expect("script lock");
                            let answer = plan.body.clone().unwrap_or_else(|| "ok".to_owned());
                            let incoming = Incoming {
                                endpoint: &endpoint,
                                body: &body,
                                in_flight: now_in_flight,
                            };
                            let reply = plan
                                .queue
                                .pop_front()
                                .or_else(|| plan.rule.as_ref().map(|rule| rule(&incoming)))
                                .or_else(|| plan.fallback.clone())
                                .unwrap_or(Reply::status(200));
                            (reply, answer)
                        };
                        if !reply.delay.is_zero() {
                            tokio::time::sleep(reply.delay).await;
                        }
                        in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        record.lock().expect("record lock").push(Received {
                            endpoint,
                            headers: headers
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_owned(),
                                        v.to_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect(),
                            body: body.to_vec(),
                            status: reply.status,
                            arrived: arrived_at,
                            answered: std::time::Instant::now(),
                        });
                        let mut response = warp::reply::with_status(
                            answer,
                            StatusCode::from_u16(reply.status).expect("a valid status"),
                        )
                        .into_response();
                        if let Some(seconds) = reply.retry_after {
                            response.headers_mut().insert(
                                "retry-after",
                                seconds.to_string().parse().expect("digits"),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("a port");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        Receiver {
            base_url: format!("http://{addr}/hooks"),
            received,
            arrivals,
            script,
            shutdown: Some(tx),
        }
    }

    /// Answers with this body from now on (`None`: `ok`).
    pub fn answer_body(&self, body: Option<&str>) {
        self.script.lock().expect("script lock").body = body.map(str::to_owned);
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script
            .lock()
            .expect("script lock")
            .queue
            .extend(replies);
    }

    /// Answers by `rule` once the script is used up: per request, from its
    /// body or the load.
    pub fn answer_by(&self, rule: impl Fn(&Incoming<'_>) -> Reply + Send + Sync + 'static) {
        self.script.lock().expect("script lock").rule = Some(Arc::new(rule));
    }

    /// Answers with `reply` once the script is used up (`None`: 200): an
    /// endpoint that is down, or back.
    pub fn fallback(&self, reply: Option<Reply>) {
        self.script.lock().expect("script lock").fallback = reply;
    }

    /// How many requests arrived, including those whose (delayed) answer is
    /// still pending.
    pub fn arrivals(&self) -> usize {
        self.arrivals.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("record lock").clone()
    }

    /// The requests answered 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits (bounded) until `done` holds for the accepted requests.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_for_within(what, Duration::from_secs(60), done)
            .await
    }

    /// [`Self::wait_for`] with a bound of its own (a big transfer on a busy
    /// machine).
    pub async fn wait_for_within(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let accepted = self.accepted();
            if done(&accepted) {
                return accepted;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; received: {:#?}",
                self.received()
                    .iter()
                    .map(|r| (&r.endpoint, r.status, r.header("webhook-id").to_owned()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

use warp::Reply as _;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Checks both signatures of a request as docs/webhooks.md, Signatures,
/// defines them.
pub fn verify(request: &Received, client_auth_key: &str, webhook_secret: &str) {
    let timestamp = request.header("x-docora-timestamp");
    let mut signed = timestamp.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&request.body);
    let expected = format!(
        "sha256={}",
        hex_string(&hmac(client_auth_key.as_bytes(), &signed))
    );
    assert_eq!(
        request.header("x-docora-signature"),
        expected,
        "Docora signature"
    );

    let expected = standard_signature(request, webhook_secret);
    assert!(
        request
            .header("webhook-signature")
            .split(' ')
            .any(|s| s == expected),
        "Standard Webhooks signature"
    );
}

/// The `v1,…` signature `webhook_secret` gives the request
/// (docs/webhooks.md, Signatures).
pub fn standard_signature(request: &Received, webhook_secret: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(webhook_secret.trim_start_matches("whsec_"))
        .expect("whsec_ + base64");
    let id = request.header("webhook-id");
    let ts = request.header("webhook-timestamp");
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&request.body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac(&key, &signed))
    )
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
