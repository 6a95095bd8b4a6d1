//! The address rule for git, applied at connection time.
//!
//! libgit2 resolves host names and opens sockets itself, so a check made
//! before a fetch proves nothing about the connection the fetch makes (the
//! name may resolve elsewhere by then). Every operation over https therefore
//! goes through an [`Egress`]: a proxy on loopback that lives for one
//! operation and admits exactly one host, the registered one.
//! For each tunnel libgit2 asks for (`CONNECT host:port`), the proxy
//!
//! - refuses any other host or port: a redirect to another host fails, and
//!   credentials can only ever reach the registered host;
//! - resolves the host itself, now, and connects only to public addresses
//!   (unless private targets are allowed), exactly as webhooks do;
//! - then relays bytes untouched (TLS runs end to end between libgit2 and the
//!   remote, certificates are checked against the real host name).
//!
//! What was refused and why is kept, so the failed git operation reports
//! "address not allowed" instead of libgit2's view of a proxy error.
//!
//! libgit2 tunnels only https through a proxy (plain http it connects to
//! directly), so the development-only schemes `http` and `git` are checked
//! with [`Destination::resolve`] just before each operation instead.
//!
//! Everything here is blocking: git operations run on blocking workers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use url::Url;

use crate::net::{AddressRule, Refused};

/// The longest request head the proxy reads before deciding.
const MAX_HEAD: usize = 16 * 1024;

/// Why the proxy refused a connection, in words safe to show to apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The connection was for another host than the registered one.
    OtherHost,
    /// The host resolved only to non-public addresses.
    NonPublicAddress,
    /// The host did not resolve.
    Unresolved,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::OtherHost => {
                "the git remote redirected to another host, which Herald does not follow"
            }
            Refusal::NonPublicAddress => {
                "the git remote's host resolves to a non-public address, which is not allowed"
            }
            Refusal::Unresolved => "the git remote's host could not be resolved",
        }
    }
}

/// The one host (and port) an operation may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    host: String,
    port: u16,
}

impl Destination {
    /// The destination of an `http`/`https`/`git` URL; `None` for other
    /// schemes (local paths) or a URL without a host.
    pub fn of(url: &str) -> Option<Self> {
        let url = Url::parse(url).ok()?;
        let port = url.port_or_known_default().or(match url.scheme() {
            "git" => Some(9418),
            _ => None,
        })?;
        let host = match url.host()? {
            url::Host::Domain(domain) => domain.to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        Some(Self { host, port })
    }

    pub(super) fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        port == self.port && host.eq_ignore_ascii_case(&self.host)
    }

    /// Resolves the host now and keeps the addresses the rule admits
    /// ([`AddressRule::resolve_blocking`]).
    pub fn resolve(&self, rule: AddressRule) -> Result<Vec<SocketAddr>, Refusal> {
        rule.resolve_blocking(&self.host, self.port)
            .map_err(|refused| match refused {
                Refused::NonPublic => Refusal::NonPublicAddress,
                _ => Refusal::Unresolved,
            })
    }
}

/// A loopback proxy for one git operation; closed when dropped.
#[derive(Debug)]
pub struct Egress {
    addr: SocketAddr,
    closing: Arc<AtomicBool>,
    refusal: Arc<Mutex<Option<Refusal>>>,
    accept: Option<JoinHandle<()>>,
}

impl Egress {
    /// Opens a proxy that admits only `destination`. `timeout` bounds
    /// connecting to the remote and every read of a relayed connection.
    pub fn open(
        destination: Destination,
        rule: AddressRule,
        timeout: Duration,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let closing = Arc::new(AtomicBool::new(false));
        let refusal = Arc::new(Mutex::new(None));
        let rule = Arc::new(Rule {
            destination,
            address: rule,
            timeout,
            refusal: Arc::clone(&refusal),
        });
        let accept = {
            let closing = Arc::clone(&closing);
            std::thread::Builder::new()
                .name("herald-git-egress".to_owned())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if closing.load(Ordering::Acquire) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let rule = Arc::clone(&rule);
                        let _ = std::thread::Builder::new()
                            .name("herald-git-relay".to_owned())
                            .spawn(move || rule.serve(stream));
                    }
                })?
        };
        Ok(Self {
            addr,
            closing,
            refusal,
            accept: Some(accept),
        })
    }

    /// Where the proxy listens (the only address the operation's sockets
    /// may reach).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy URL to give libgit2.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first connection the proxy refused, if any.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .copied()
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        // Wake the accept loop so it sees `closing`. Should that fail (no
        // descriptor left), the loop is left to end with the process rather
        // than joined: a git operation never hangs on its proxy.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(accept) = self.accept.take().filter(|_| woken) {
            let _ = accept.join();
        }
    }
}

/// What one proxy admits.
struct Rule {
    destination: Destination,
    address: AddressRule,
    timeout: Duration,
    refusal: Arc<Mutex<Option<Refusal>>>,
}

/// Where a `CONNECT` asks to go.
struct Head {
    host: String,
    port: u16,
    /// Bytes the client sent after the head, before the tunnel opened.
    early: Vec<u8>,
}

impl Rule {
    fn serve(&self, mut client: TcpStream) {
        let _ = client.set_read_timeout(Some(self.timeout));
        let _ = client.set_write_timeout(Some(self.timeout));
        let head = match read_head(&mut client) {
            Ok(head) => head,
            Err(_) => {
                let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
                return;
            }
        };
        if !self.destination.matches(&head.host, head.port) {
            tracing::warn!(
                host = %head.host,
                port = head.port,
                "git connection to another host than the registered one refused"
            );
            return self.refuse(client, Refusal::OtherHost);
        }
        let addresses = match self.destination.resolve(self.address) {
            Ok(addresses) => addresses,
            Err(refusal) => {
                tracing::warn!(host = %head.host, ?refusal, "git connection refused");
                return self.refuse(client, refusal);
            }
        };
        let Some(mut upstream) = addresses
            .iter()
            .find_map(|addr| TcpStream::connect_timeout(addr, self.timeout).ok())
        else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n");
            return;
        };
        let _ = upstream.set_read_timeout(Some(self.timeout));
        let _ = upstream.set_write_timeout(Some(self.timeout));
        let opened = client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .and_then(|()| upstream.write_all(&head.early));
        if opened.is_ok() {
            relay(client, upstream);
        }
    }

    fn refuse(&self, mut client: TcpStream, refusal: Refusal) {
        self.refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(refusal);
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n");
    }
}

/// Reads a `CONNECT` request head and finds where it goes.
fn read_head(client: &mut TcpStream) -> io::Result<Head> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the request head"));
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&bytes) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = request.method.ok_or_else(|| bad("no method"))?;
                if !method.eq_ignore_ascii_case("CONNECT") {
                    return Err(bad("only tunnels are relayed"));
                }
                let target = request.path.ok_or_else(|| bad("no target"))?;
                let (host, port) = target.rsplit_once(':').ok_or_else(|| bad("no port"))?;
                let port = port.parse().map_err(|_| bad("bad port"))?;
                return Ok(Head {
                    host: host.to_owned(),
                    port,
                    early: bytes[head_len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => {}
            _ => return Err(bad("malformed request head")),
        }
    }
}

/// Copies both ways until either side closes (or a read times out).
fn relay(client: TcpStream, upstream: TcpStream) {
    let (Ok(client_read), Ok(upstream_read)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .name("herald-git-relay".to_owned())
        .spawn(move || pipe(client_read, upstream));
    pipe(upstream_read, client);
    if let Ok(up) = up {
        let _ = up.join();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: AddressRule = AddressRule {
        allow_private: false,
        allow_http: false,
    };
    const PRIVATE: AddressRule = AddressRule {
        allow_private: true,
        allow_http: false,
    };

    #[test]
    fn destinations_come_from_the_url_with_default_ports() {
        let https = Destination::of("https://Git.Example.com/o/r").expect("has a host");
        assert_eq!((https.host.as_str(), https.port), ("git.example.com", 443));
        assert!(https.matches("git.example.com", 443));
        assert!(https.matches("GIT.example.com", 443));
        assert!(!https.matches("git.example.com", 8443));
        assert!(!https.matches("evil.example.com", 443));
        let git = Destination::of("git://127.0.0.1/r").expect("has a host");
        assert_eq!(git.port, 9418);
        let v6 = Destination::of("https://[::1]:8443/r").expect("has a host");
        assert!(v6.matches("[::1]", 8443));
        assert!(Destination::of("file:///srv/r").is_none());
    }

    #[test]
    fn loopback_is_refused_unless_private_targets_are_allowed() {
        let local = Destination::of("http://localhost:9/r").expect("has a host");
        assert_eq!(local.resolve(STRICT), Err(Refusal::NonPublicAddress));
        assert!(local.resolve(PRIVATE).is_ok());
    }

    fn request(proxy: &Egress, head: &str) -> String {
        let mut stream = TcpStream::connect(proxy.addr).expect("the proxy listens");
        stream.write_all(head.as_bytes()).expect("written");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn the_proxy_admits_only_its_host_and_tunnels_to_it() {
        let origin = TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = origin.local_addr().expect("bound").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = origin.accept().expect("one connection");
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).expect("the tunnelled bytes");
            conn.write_all(b"pong").expect("answered");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let destination = Destination::of(&format!("https://127.0.0.1:{port}/r")).expect("host");
        let allowed = Egress::open(destination.clone(), PRIVATE, Duration::from_secs(5))
            .expect("the proxy opens");

        let other = request(
            &allowed,
            "CONNECT 127.0.0.2:443 HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n",
        );
        assert!(other.starts_with("HTTP/1.1 403"), "{other}");
        assert_eq!(allowed.refusal(), Some(Refusal::OtherHost));
        let plain = request(&allowed, "GET http://127.0.0.1/ HTTP/1.1\r\n\r\n");
        assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");

        let mut tunnel = TcpStream::connect(allowed.addr).expect("the proxy listens");
        tunnel
            .write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nping").as_bytes())
            .expect("written");
        let mut answer = String::new();
        let _ = tunnel.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("pong"), "{answer}");
        assert_eq!(server.join().expect("the origin ran"), "ping");

        let strict = Egress::open(destination, STRICT, Duration::from_secs(5)).expect("opens");
        let refused = request(
            &strict,
            &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        );
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
        assert_eq!(strict.refusal(), Some(Refusal::NonPublicAddress));
    }
}
