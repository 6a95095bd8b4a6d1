//! The one outbound HTTP client for webhooks: HTTP/1.1 over TCP (TLS for
//! `https`, with the platform's roots), connect and total timeouts, no
//! redirects, and the SSRF rule enforced again at connection time: every
//! non-public address a name resolves to is dropped (unless
//! `security.allow_private_targets`), and IP-literal URLs are checked before
//! anything is sent.
//!
//! A request drives its connection in the caller's own task: the lane that
//! sends a webhook polls the connection while its request is in flight, so
//! an exchange wakes only that task (a general-purpose pool runs each
//! connection as a task of its own, and every request then costs wake-ups
//! across two tasks). Connections between requests wait in an idle list
//! keyed by origin, undriven; one is checked before it is used again, and
//! a request that a reused connection could not send goes out on a new one.
//!
//! Connections are hyper-util's (IPv4 and IPv6 raced, TCP keepalive; rustls
//! through `crate::tls` for `https`). A URL is parsed and checked once
//! into an [`Endpoint`], which a lane keeps per endpoint name while its
//! app's base URL stays the same; the dispatcher's tick lets go of idle
//! connections the receiver closed.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use entity::ErrorClass;
use futures::FutureExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use reqwest::header::{self, HeaderMap, HeaderValue};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tower_service::Service as _;

use crate::net::{AddressRule, Refused, caused_by};

pub(crate) mod polled_together;

/// The `User-Agent` of every webhook.
pub const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));
/// The `Accept` of every webhook: what reqwest sent, which some receivers'
/// frameworks want.
pub const ACCEPT: &str = "*/*";
/// How much of a response body is kept for the attempt log.
pub const EXCERPT_BYTES: usize = 1024;

/// A connection unused for longer than this is closed rather than reused
/// (what reqwest's pool does by default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept for one origin.
const MAX_IDLE_PER_ORIGIN: usize = 16;
/// Idle connections are checked for a close by their peer at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub excerpt: String,
    pub latency: Duration,
    /// A broker's acknowledgement (`crate::broker`): `status` is no HTTP
    /// status and is not recorded; `excerpt` holds the broker's words.
    pub from_broker: bool,
}

/// Why a request got no answer.
#[derive(Debug, Clone)]
pub struct NoAnswer {
    /// `Timeout`, `Connect`, `Tls`, `Ssrf`, `Request` or `Policy`.
    pub class: ErrorClass,
    pub message: String,
    pub latency: Duration,
}

impl NoAnswer {
    /// Nothing was sent because the configuration forbids the endpoint's
    /// URL: not the endpoint's failure.
    pub fn refused_by_policy(&self) -> bool {
        self.class == ErrorClass::Policy
    }
}

/// Why a request got no answer, before its latency is known.
#[derive(Clone)]
struct Failure {
    class: ErrorClass,
    message: Cow<'static, str>,
}

const fn failure(class: ErrorClass, message: &'static str) -> Failure {
    Failure {
        class,
        message: Cow::Borrowed(message),
    }
}

const UNREACHABLE: Failure = failure(ErrorClass::Connect, "the endpoint could not be reached");
const TIMED_OUT: Failure = failure(ErrorClass::Timeout, "the endpoint did not answer in time");
const FAILED: Failure = failure(ErrorClass::Request, "the request failed");
/// A request Herald refused to make: the endpoint is fine, the server's
/// configuration forbids it (see [`NoAnswer::refused_by_policy`]).
const HTTP_REFUSED: Failure = failure(
    ErrorClass::Policy,
    "http:// endpoints are disabled by this server's configuration \
     (security.allow_http_targets): the app's base_url must use https",
);

#[derive(Clone)]
pub struct WebhookClient {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    connect_timeout: Duration,
    /// The address rule, from the configuration: an app registered under
    /// a more permissive one keeps its stored base URL, and is judged by
    /// this rule.
    rule: AddressRule,
    connector: HttpConnector<Resolver>,
    tls: tokio_rustls::TlsConnector,
    user_agent: HeaderValue,
    /// Connections between requests, the most recently used last.
    idle: Mutex<Vec<Connection>>,
    /// When the idle connections were last checked.
    pruned_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client that may post to `http://` URLs too (benches, tests, tools).
    pub fn new(timeout: Duration, allow_private_targets: bool) -> Self {
        Self::with_rule(timeout, allow_private_targets, true)
    }

    /// A client under the configured rule: private addresses only with
    /// `security.allow_private_targets`, `http://` URLs only with
    /// `security.allow_http_targets`, whatever the app's stored base URL says.
    pub fn with_rule(
        timeout: Duration,
        allow_private_targets: bool,
        allow_http_targets: bool,
    ) -> Self {
        let mut client = Self::with_tls(
            timeout,
            timeout.min(Duration::from_secs(10)),
            allow_private_targets,
            tls_config(Vec::new()),
        );
        Arc::get_mut(&mut client.shared)
            .expect("a client just built is not shared yet")
            .rule
            .allow_http = allow_http_targets;
        client
    }

    fn with_tls(
        timeout: Duration,
        connect_timeout: Duration,
        allow_private_targets: bool,
        tls: rustls::ClientConfig,
    ) -> Self {
        let rule = AddressRule {
            allow_private: allow_private_targets,
            allow_http: true,
        };
        let mut connector = HttpConnector::new_with_resolver(Resolver { rule });
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_happy_eyeballs_timeout(Some(Duration::from_millis(300)));
        // What reqwest set: idle connections whose peer vanished are noticed.
        connector.set_keepalive(Some(Duration::from_secs(15)));
        connector.set_keepalive_interval(Some(Duration::from_secs(15)));
        connector.set_keepalive_retries(Some(3));
        Self {
            shared: Arc::new(Shared {
                timeout,
                connect_timeout,
                connector,
                rule,
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                user_agent: HeaderValue::from_static(USER_AGENT),
                idle: Mutex::new(Vec::new()),
                pruned_at: Mutex::new(None),
            }),
        }
    }

    /// `url` parsed and checked, for any number of requests: a sender that
    /// posts to the same URLs again and again parses each once.
    pub fn endpoint(&self, url: &str) -> Endpoint {
        Endpoint {
            target: Target::parse(url, self.shared.rule),
        }
    }

    /// POSTs `body` to `url` with `headers`, within the client's timeout.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: impl Into<Bytes>,
    ) -> Result<Answer, NoAnswer> {
        self.post_to(&self.endpoint(url), headers, body).await
    }

    /// POSTs `body` to `endpoint` with `headers`, within the client's
    /// timeout; an invalid or forbidden URL fails here, as it would have
    /// when parsed.
    pub async fn post_to(
        &self,
        endpoint: &Endpoint,
        headers: HeaderMap,
        body: impl Into<Bytes>,
    ) -> Result<Answer, NoAnswer> {
        let started = Instant::now();
        let outcome = match &endpoint.target {
            Ok(target) => tokio::time::timeout(
                self.shared.timeout,
                self.exchange(target, headers, body.into()),
            )
            .await
            .unwrap_or(Err(TIMED_OUT)),
            Err(failed) => Err(failed.clone()),
        };
        outcome
            .map(|(status, retry_after, excerpt)| Answer {
                status,
                retry_after,
                excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
                latency: started.elapsed(),
                from_broker: false,
            })
            .map_err(|failed| NoAnswer {
                class: failed.class,
                message: failed.message.into_owned(),
                latency: started.elapsed(),
            })
    }

    /// Closes idle connections that are stale: closed by the peer, or
    /// unused for too long. The dispatcher calls this on its tick, so
    /// sockets a receiver closed do not linger.
    pub fn prune_idle(&self) {
        {
            let mut pruned_at = self.shared.pruned_at.lock();
            if pruned_at.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *pruned_at = Some(Instant::now());
        }
        // Checked (sockets polled, stale ones closed) outside the lock the
        // lanes take connections under.
        let mut idle = std::mem::take(&mut *self.shared.idle.lock());
        idle.retain_mut(Connection::usable);
        self.shared.idle.lock().extend(idle);
    }

    /// Sends the request on an idle connection to its origin, or on a new
    /// one; a request a reused connection could not send goes out on a new
    /// connection. A connection that can carry another request goes back
    /// to the idle list; if this future is dropped (the timeout), so is
    /// the connection, whose state is then unknown.
    async fn exchange(
        &self,
        target: &Target,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Failure> {
        let request = target.request(headers, body, &self.shared.user_agent)?;
        match self.take_idle(&target.origin) {
            Some(connection) => self.exchange_on(target, request, connection, true).await,
            // Connecting is awaited boxed: a lane makes and copies this
            // future for every webhook, most of them on a kept connection.
            None => {
                let connection = Box::pin(self.connect(&target.origin)).await?;
                self.exchange_on(target, request, connection, false).await
            }
        }
    }

    async fn exchange_on(
        &self,
        target: &Target,
        mut request: hyper::Request<Full<Bytes>>,
        mut connection: Connection,
        mut reused: bool,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Failure> {
        loop {
            match connection.send(request).await {
                Ok(Exchanged {
                    status,
                    retry_after,
                    excerpt,
                    reusable,
                }) => {
                    if reusable {
                        self.keep(connection);
                    }
                    return Ok((status, retry_after, excerpt));
                }
                // The peer closed the idle connection before the request
                // went out on it (the race every keep-alive client meets).
                Err(Some(unsent)) if reused => {
                    request = unsent;
                    connection = Box::pin(self.connect(&target.origin)).await?;
                    reused = false;
                }
                Err(_) => return Err(FAILED),
            }
        }
    }

    fn take_idle(&self, origin: &Origin) -> Option<Connection> {
        let mut idle = self.shared.idle.lock();
        while let Some(at) = idle.iter().rposition(|c| c.origin == *origin) {
            let mut connection = idle.swap_remove(at);
            if connection.usable() {
                return Some(connection);
            }
        }
        None
    }

    fn keep(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = self.shared.idle.lock();
        let same = idle
            .iter()
            .filter(|c| c.origin == connection.origin)
            .count();
        if same < MAX_IDLE_PER_ORIGIN {
            idle.push(connection);
        }
    }

    /// A new connection to `origin`: resolve (public addresses only, unless
    /// private targets are allowed), connect (hyper-util's connector: each
    /// address its share of the time, IPv4 and IPv6 raced, TCP keepalive),
    /// then TLS for `https`, all within the connect timeout.
    async fn connect(&self, origin: &Origin) -> Result<Connection, Failure> {
        let io = tokio::time::timeout(self.shared.connect_timeout, async {
            let tcp = self
                .shared
                .connector
                .clone()
                .call(origin.address.clone())
                .await
                .map_err(|err| connect_failure(&err))?
                .into_inner();
            let io: Box<dyn Io> = if origin.tls {
                let name = match origin.host {
                    Host::Ip(ip) => ServerName::IpAddress(ip.into()),
                    Host::Name(ref name) => {
                        ServerName::try_from(name.clone()).map_err(|_| UNREACHABLE)?
                    }
                };
                Box::new(
                    self.shared
                        .tls
                        .connect(name, tcp)
                        .await
                        .map_err(|err| handshake_failure(&err))?,
                )
            } else {
                Box::new(tcp)
            };
            Ok(io)
        })
        .await
        .unwrap_or(Err(TIMED_OUT))?;
        let (sender, driver) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|_| UNREACHABLE)?;
        Ok(Connection {
            origin: origin.clone(),
            sender,
            driver: Some(Box::pin(driver)),
            idle_since: Instant::now(),
        })
    }
}

/// What a connection attempt's error means: a name with no public address,
/// an address that did not answer in time, or one that refused.
fn connect_failure(err: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current = Some(err);
    while let Some(error) = current {
        if caused_by(error, Refused::NonPublic) {
            return failure(
                ErrorClass::Ssrf,
                "the endpoint resolves to no public address",
            );
        }
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return TIMED_OUT;
        }
        current = error.source();
    }
    UNREACHABLE
}

/// A TLS handshake that failed: class `tls` with the reason when the
/// endpoint's certificate or its TLS was refused ("the endpoint's TLS
/// certificate is not trusted: …"), a connection that broke otherwise.
fn handshake_failure(err: &std::io::Error) -> Failure {
    crate::tls::rustls_error_in(err).map_or(UNREACHABLE, |refused| Failure {
        class: ErrorClass::Tls,
        message: Cow::Owned(crate::tls::handshake_refusal(refused, "the endpoint")),
    })
}

/// The connector's resolver: the address rule's ([`AddressRule::resolve`]).
#[derive(Clone)]
struct Resolver {
    rule: AddressRule,
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let rule = self.rule;
        Box::pin(async move {
            match rule.resolve(name.as_str(), 0).await {
                Ok(addresses) => Ok(addresses.into_iter()),
                Err(refused) => Err(Box::new(refused) as BoxError),
            }
        })
    }
}

/// What the TLS of an `https` endpoint is checked with: the platform's
/// roots (and `extra_roots`, for tests), HTTP/1.1 by ALPN.
fn tls_config(
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> rustls::ClientConfig {
    crate::tls::client_config(extra_roots).expect("the platform's certificate verifier starts")
}

/// The byte stream under a connection: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The future that runs a connection: hyper's `Connection`, polled by the
/// task whose request is in flight.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Where connections go: requests to the same origin share them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    tls: bool,
    host: Host,
    /// What the connector connects to: scheme, host and port.
    address: hyper::Uri,
}

/// A webhook URL as [`WebhookClient::endpoint`] found it: parsed and
/// checked, or why it cannot be posted to.
pub struct Endpoint {
    target: Result<Target, Failure>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("valid", &self.target.is_ok())
            .finish_non_exhaustive()
    }
}

/// A webhook URL, parsed and checked.
struct Target {
    origin: Origin,
    /// The `Host` header: the URL's host, and its port unless the default.
    authority: HeaderValue,
    /// The request target: path and query.
    path: hyper::Uri,
}

impl Target {
    fn parse(url: &str, rule: AddressRule) -> Result<Self, Failure> {
        const INVALID: Failure = failure(ErrorClass::Request, "the endpoint URL is invalid");
        let url = url::Url::parse(url).map_err(|_| INVALID)?;
        // git's `git://` passes the scheme rule; a webhook is not posted to it.
        let tls = match (rule.url(&url), url.scheme()) {
            (Ok(()), "https") => true,
            (Ok(()), "http") => false,
            (Err(Refused::PlainText), "http") => return Err(HTTP_REFUSED),
            (Err(Refused::NonPublic), _) => {
                return Err(failure(
                    ErrorClass::Ssrf,
                    "the endpoint is not a public address",
                ));
            }
            _ => return Err(INVALID),
        };
        let host = match url.host() {
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => Host::Name(name.to_owned()),
            None => return Err(INVALID),
        };
        let port = url.port_or_known_default().ok_or(INVALID)?;
        let (authority, address) = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => (format!("{host}:{port}"), format!("{host}:{port}")),
            (Some(host), None) => (host.to_owned(), format!("{host}:{port}")),
            (None, _) => return Err(INVALID),
        };
        let address = format!("{}://{address}", url.scheme())
            .parse()
            .map_err(|_| INVALID)?;
        Ok(Self {
            origin: Origin { tls, host, address },
            authority: HeaderValue::from_str(&authority).map_err(|_| INVALID)?,
            path: url[url::Position::BeforePath..url::Position::AfterQuery]
                .parse()
                .map_err(|_| INVALID)?,
        })
    }

    fn request(
        &self,
        headers: HeaderMap,
        body: Bytes,
        user_agent: &HeaderValue,
    ) -> Result<hyper::Request<Full<Bytes>>, Failure> {
        let mut request = hyper::Request::post(self.path.clone())
            .body(Full::new(body))
            .map_err(|_| FAILED)?;
        let fields = request.headers_mut();
        *fields = headers;
        fields.insert(header::HOST, self.authority.clone());
        fields
            .entry(header::USER_AGENT)
            .or_insert_with(|| user_agent.clone());
        fields
            .entry(header::ACCEPT)
            .or_insert_with(|| HeaderValue::from_static(ACCEPT));
        Ok(request)
    }
}

/// One HTTP/1.1 connection and the future that runs it.
struct Connection {
    origin: Origin,
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended (never polled again).
    driver: Option<Driver>,
    idle_since: Instant,
}

/// An answer read off a connection.
struct Exchanged {
    status: u16,
    retry_after: Option<Duration>,
    excerpt: Vec<u8>,
    /// Whether the connection can carry another request: the response was
    /// read to its end and the connection is still open.
    reusable: bool,
}

impl Connection {
    /// Whether it can carry another request: open, and not idle for too
    /// long. Polls the connection once without waiting, which reads a close
    /// the peer sent while it was idle.
    fn usable(&mut self) -> bool {
        if self.idle_since.elapsed() > IDLE_TIMEOUT {
            return false;
        }
        let Some(driver) = self.driver.as_mut() else {
            return false;
        };
        if driver.now_or_never().is_some() {
            self.driver = None;
            return false;
        }
        // Ready: hyper has finished the last exchange (a body the receiver
        // answered before reading may still be going out) and waits for
        // the next request.
        self.sender.is_ready()
    }

    /// Sends `request` and reads the answer (status, `Retry-After`, the
    /// first [`EXCERPT_BYTES`] of the body), polling the connection in this
    /// task meanwhile. `Err` carries the request back when it was not sent.
    async fn send(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<Exchanged, Option<hyper::Request<Full<Bytes>>>> {
        let outcome = {
            let sender = &mut self.sender;
            let exchange = async move {
                if sender.ready().await.is_err() {
                    return Err(Some(request));
                }
                let response = sender
                    .try_send_request(request)
                    .await
                    .map_err(|mut err| err.take_message())?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut body = response.into_body();
                let mut excerpt = Vec::new();
                let mut ended = false;
                while excerpt.len() < EXCERPT_BYTES {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                let room = EXCERPT_BYTES - excerpt.len();
                                excerpt.extend_from_slice(&data[..data.len().min(room)]);
                            }
                        }
                        Some(Err(_)) => break,
                        None => {
                            ended = true;
                            break;
                        }
                    }
                }
                Ok((status, retry_after, excerpt, ended || body.is_end_stream()))
            };
            let mut exchange = std::pin::pin!(exchange);
            let answered = match self.driver.as_mut() {
                Some(driver) => polled_together::drive(exchange.as_mut(), driver.as_mut()).await,
                None => None,
            };
            match answered {
                Some(outcome) => outcome,
                None => {
                    // The connection ended (or had ended): hyper has answered
                    // every request it held, so the exchange ends at once.
                    self.driver = None;
                    exchange.await
                }
            }
        };
        let (status, retry_after, excerpt, ended) = outcome?;
        self.idle_since = Instant::now();
        Ok(Exchanged {
            status,
            retry_after,
            excerpt,
            // Polled once more, the connection reaches its idle state, or
            // shows it cannot carry another request.
            reusable: ended && self.usable(),
        })
    }
}

/// A header value from a string Herald built (ids, timestamps, signatures).
pub fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("Herald's header values are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_targets_are_refused_at_connection_time() {
        let client = WebhookClient::new(Duration::from_secs(2), false);
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]:9/hook",
            "http://169.254.169.254/latest",
            "http://localhost:9/hook",
        ] {
            let refused = client
                .post(url, HeaderMap::new(), Vec::new())
                .await
                .expect_err("a private target gets no request");
            assert_eq!(
                refused.class,
                ErrorClass::Ssrf,
                "{url}: {}",
                refused.message
            );
        }
    }

    #[tokio::test]
    async fn http_endpoints_are_refused_when_the_rule_forbids_them() {
        let (addr, connections) = listening(|socket| async move {
            answer_raw(socket, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        })
        .await;
        let url = format!("http://{addr}/hook");
        let strict = WebhookClient::with_rule(Duration::from_secs(2), true, false);
        let refused = strict
            .post_to(&strict.endpoint(&url), HeaderMap::new(), Vec::new())
            .await
            .expect_err("no request to an http:// endpoint");
        assert!(refused.refused_by_policy(), "{}", refused.message);
        assert!(refused.message.contains("security.allow_http_targets"));
        assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing connected");
        let permissive = WebhookClient::with_rule(Duration::from_secs(2), true, true);
        let answer = permissive
            .post(&url, HeaderMap::new(), Vec::new())
            .await
            .expect("allowed: sent");
        assert_eq!(answer.status, 204);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (addr, _) = listening(|socket| async move {
            answer_raw(socket, b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n").await;
        })
        .await;
        let client = WebhookClient::new(Duration::from_secs(2), true);
        let answer = client
            .post(
                &format!("http://{addr}/hook"),
                HeaderMap::new(),
                b"{}".to_vec(),
            )
            .await
            .expect("an answer");
        assert_eq!(
            answer.status, 302,
            "the redirect is the answer, not followed"
        );
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use tokio::net::TcpStream;

    type Reply = hyper::Response<Full<Bytes>>;

    /// An HTTP/1.1 receiver on loopback (TLS when `tls` is given) that
    /// answers every request with `answer(method, headers, body)` and
    /// counts the connections it accepted.
    async fn receiver(
        tls: Option<tokio_rustls::TlsAcceptor>,
        answer: fn(&hyper::http::request::Parts, Bytes) -> Reply,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        listening(move |socket| {
            let tls = tls.clone();
            async move {
                let service = service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.expect("a body").to_bytes();
                        Ok::<_, std::convert::Infallible>(answer(&parts, body))
                    },
                );
                let io: Box<dyn Io> = match tls {
                    Some(tls) => match tls.accept(socket).await {
                        Ok(stream) => Box::new(stream),
                        Err(_) => return,
                    },
                    None => Box::new(socket),
                };
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            }
        })
        .await
    }

    /// A listener on loopback that hands each connection to `serve` (on a
    /// task of its own) and counts them.
    async fn listening<F, Serving>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Serving + Send + 'static,
        Serving: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket));
            }
        });
        (addr, connections)
    }

    /// Reads what a request sends first, then answers `raw`.
    async fn answer_raw(mut socket: TcpStream, raw: &'static [u8]) -> TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0u8; 4096];
        let _ = socket.read(&mut buffer).await;
        let _ = socket.write_all(raw).await;
        socket
    }

    fn echo(parts: &hyper::http::request::Parts, body: Bytes) -> Reply {
        let seen = format!(
            "{} {} host={} agent={} accept={} length={} signature={} body={}",
            parts.method,
            parts.uri,
            parts.headers[header::HOST].to_str().expect("ASCII"),
            parts.headers[header::USER_AGENT].to_str().expect("ASCII"),
            parts.headers[header::ACCEPT].to_str().expect("ASCII"),
            parts.headers[header::CONTENT_LENGTH]
                .to_str()
                .expect("ASCII"),
            parts.headers["x-signature"].to_str().expect("ASCII"),
            String::from_utf8_lossy(&body),
        );
        hyper::Response::new(Full::new(Bytes::from(seen)))
    }

    fn reply(status: u16, body: Bytes, name: header::HeaderName, value: &'static str) -> Reply {
        let mut reply = hyper::Response::new(Full::new(body));
        *reply.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
        reply
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
        reply
    }

    /// A signed `{}` POSTed to `http://{addr}/hook`.
    async fn hook(client: &WebhookClient, addr: SocketAddr) -> Result<Answer, NoAnswer> {
        client
            .post(&format!("http://{addr}/hook"), signed(), b"{}".to_vec())
            .await
    }

    fn signed() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-signature", header("v1,abc"));
        headers
    }

    #[tokio::test]
    async fn requests_share_one_connection_and_arrive_intact() {
        let (addr, connections) = receiver(None, echo).await;
        let client = WebhookClient::new(Duration::from_secs(5), true);
        for round in 0..3 {
            let answer = client
                .post(
                    &format!("http://{addr}/hooks/create"),
                    signed(),
                    format!("{{\"round\":{round}}}").into_bytes(),
                )
                .await
                .expect("an answer");
            assert_eq!(answer.status, 200);
            assert_eq!(
                answer.excerpt,
                format!(
                    "POST /hooks/create host={addr} agent=Herald/{} accept=*/* length=11 signature=v1,abc body={{\"round\":{round}}}",
                    env!("CARGO_PKG_VERSION")
                )
            );
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the three requests went over one kept-alive connection"
        );
    }

    #[tokio::test]
    async fn a_connection_the_receiver_closed_is_replaced() {
        fn closing(_: &hyper::http::request::Parts, _: Bytes) -> Reply {
            reply(200, Bytes::from_static(b"ok"), header::CONNECTION, "close")
        }
        let (addr, connections) = receiver(None, closing).await;
        let client = WebhookClient::new(Duration::from_secs(5), true);
        for _ in 0..3 {
            let answer = hook(&client, addr)
                .await
                .expect("an answer on a new connection");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.excerpt, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        client.prune_idle();
        assert!(
            client.shared.idle.lock().is_empty(),
            "nothing closed is kept"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_receiver_is_not_used_again() {
        // Answers one request per connection, then closes it without
        // saying so: the client learns of it only from the closed socket.
        let (closed, mut closes) = tokio::sync::mpsc::unbounded_channel();
        let (addr, connections) = listening(move |socket| {
            let closed = closed.clone();
            async move {
                let socket = answer_raw(socket, b"HTTP/1.1 204 No Content\r\n\r\n").await;
                // Closed once the client has put the connection aside.
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(socket);
                let _ = closed.send(());
            }
        })
        .await;
        // The receiver's close reaches the client while it is idle.
        let mut closing = async || {
            closes.recv().await.expect("the receiver closes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client = WebhookClient::new(Duration::from_secs(5), true);
        for _ in 0..3 {
            let answer = hook(&client, addr).await.expect("an answer");
            assert_eq!(answer.status, 204);
            closing().await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);

        // Without that check, a request on the closed connection comes back
        // unsent, and goes out on a new connection.
        let target = Target::parse(
            &format!("http://{addr}/hook"),
            AddressRule {
                allow_private: true,
                allow_http: true,
            },
        )
        .ok()
        .expect("a URL");
        let request = || {
            target
                .request(
                    signed(),
                    Bytes::from_static(b"{}"),
                    &client.shared.user_agent,
                )
                .ok()
                .expect("a request")
        };
        let mut connection = client
            .connect(&target.origin)
            .await
            .ok()
            .expect("a connection");
        assert!(connection.send(request()).await.is_ok());
        closing().await;
        let (status, _, _) = client
            .exchange_on(&target, request(), connection, true)
            .await
            .ok()
            .expect("an answer on a new connection");
        assert_eq!(status, 204);
        assert_eq!(connections.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn the_excerpt_is_the_start_of_a_long_answer_and_retry_after_is_read() {
        // The body comes in two parts: the client has its excerpt before
        // the end arrives, and does not wait for it.
        let (addr, connections) = listening(|socket| async move {
            use tokio::io::AsyncWriteExt;
            let mut socket = answer_raw(
                socket,
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After:  120 \r\nContent-Length: 10000\r\n\r\n",
            )
            .await;
            let _ = socket.write_all(&[b'x'; 5000]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = socket.write_all(&[b'x'; 5000]).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let client = WebhookClient::new(Duration::from_secs(5), true);
        for _ in 0..2 {
            let answer = hook(&client, addr).await.expect("an answer");
            assert_eq!(answer.status, 503);
            assert_eq!(answer.retry_after, Some(Duration::from_secs(120)));
            assert_eq!(answer.excerpt, "x".repeat(EXCERPT_BYTES));
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "a connection with an unread answer is not used again"
        );
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out_and_a_closed_port_is_unreachable() {
        let (silent, _) = listening(|socket| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        })
        .await;
        let client = WebhookClient::new(Duration::from_millis(300), true);
        let failed = client
            .post(&format!("http://{silent}/hook"), signed(), b"{}".to_vec())
            .await
            .expect_err("no answer");
        assert_eq!(failed.class, ErrorClass::Timeout, "{}", failed.message);
        assert!(failed.latency >= Duration::from_millis(300));

        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
            listener.local_addr().expect("address")
        };
        let failed = client
            .post(&format!("http://{closed}/hook"), signed(), b"{}".to_vec())
            .await
            .expect_err("no answer");
        assert_eq!(failed.class, ErrorClass::Connect, "{}", failed.message);
        for bad in ["ftp://example.com/hook", "not a url"] {
            let failed = client
                .post(bad, signed(), b"{}".to_vec())
                .await
                .expect_err("no request");
            assert_eq!(failed.class, ErrorClass::Request, "{bad}");
        }
    }

    #[tokio::test]
    async fn https_endpoints_are_verified_against_trusted_roots() {
        let (root, config) = crate::test_support::tls::authority_and_localhost();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (addr, connections) = receiver(Some(acceptor), echo).await;
        let url = format!("https://localhost:{}/hook", addr.port());

        let trusting = WebhookClient::with_tls(
            Duration::from_secs(5),
            Duration::from_secs(5),
            true,
            tls_config(vec![root]),
        );
        for _ in 0..2 {
            let answer = trusting
                .post(&url, signed(), b"{}".to_vec())
                .await
                .expect("an answer over TLS");
            assert_eq!(answer.status, 200);
            assert!(answer.excerpt.starts_with("POST /hook host=localhost:"));
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "TLS connections are reused too"
        );

        // A certificate from an authority the client does not trust, and
        // the right certificate for the wrong name: no request is sent.
        let platform = WebhookClient::new(Duration::from_secs(5), true);
        let failed = platform
            .post(&url, signed(), b"{}".to_vec())
            .await
            .expect_err("an untrusted certificate");
        assert_eq!(failed.class, ErrorClass::Tls, "{}", failed.message);
        assert_eq!(
            failed.message,
            "the endpoint's TLS certificate is not trusted: it was not issued by a \
             certificate authority this server trusts"
        );
        let failed = trusting
            .post(&format!("https://{addr}/hook"), signed(), b"{}".to_vec())
            .await
            .expect_err("a certificate for another name");
        assert_eq!(failed.class, ErrorClass::Tls, "{}", failed.message);
        assert_eq!(
            failed.message,
            "the endpoint's TLS certificate is not valid for its host name"
        );
    }

    #[tokio::test]
    async fn a_connect_that_hangs_is_a_timeout() {
        // A listener whose backlog is full: the kernel drops further SYNs.
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("a port");
        let listener = socket.listen(1).expect("listening");
        let addr = listener.local_addr().expect("address");
        let mut filling = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => filling.push(stream),
                _ => break,
            }
        }
        let client = WebhookClient::with_tls(
            Duration::from_secs(10),
            Duration::from_millis(300),
            true,
            tls_config(Vec::new()),
        );
        let failed = hook(&client, addr).await.expect_err("no connection");
        assert_eq!(failed.class, ErrorClass::Timeout, "{}", failed.message);
        assert!(
            failed.latency < Duration::from_secs(5),
            "the connect timeout, not the request's: {:?}",
            failed.latency
        );
        drop(listener);
    }

    #[tokio::test]
    async fn an_answer_before_the_body_was_read_leaves_its_connection() {
        // Answers 413 as soon as the head arrives and never reads the body:
        // the connection still has a body to send, so it is not used again.
        let (addr, connections) = listening(|socket| async move {
            let socket = answer_raw(
                socket,
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
            )
            .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        })
        .await;
        let client = WebhookClient::new(Duration::from_secs(5), true);
        for _ in 0..2 {
            let answer = client
                .post(
                    &format!("http://{addr}/hook"),
                    signed(),
                    vec![b'x'; 16 << 20],
                )
                .await
                .expect("an answer");
            assert_eq!(answer.status, 413);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }
}
