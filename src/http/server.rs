//! Serving the routes over HTTP/1.1 with read deadlines. `warp::serve` gives
//! no way to set hyper's header read timeout, so connections are accepted
//! here and each is served by hyper's HTTP/1 connection with a timer: a client
//! that does not finish its request head within `server.header_read_timeout`
//! (half-open, trickling, or idle between keep-alive requests) is closed, and
//! slow clients cannot hold every descriptor. Body deadlines are applied
//! where bodies are read ([`super::filters::read_limited`]).
//!
//! Open connections are capped ([`ConnectionLimits`]): an address over
//! `server.max_connections_per_ip` is closed as soon as it is accepted;
//! past `server.max_connections` (itself kept within half the open-files
//! limit), a small reserve of connections is still served, one request
//! each with a short head deadline, and only for `/health`, `/ready` and
//! `/metrics` (anything else is a 503 with `Retry-After`), so probes and
//! scrapes get through a flood from many addresses. One address holds at
//! most [`RESERVED_PER_IP`] of the reserve: a client reconnecting as fast as
//! it is cut cannot keep the rest from the probes. Every answer carries
//! `X-Content-Type-Options: nosniff`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::Response;

use super::error::ApiError;

/// The peer address of a request's connection, as a request extension (warp's
/// own is only set by `warp::serve`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// How long to wait before accepting again after an accept error other than
/// a client's (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections served over the global cap, for probes and scrapes only.
pub const RESERVED_CONNECTIONS: usize = 32;
/// The reserve's places one address may hold.
pub const RESERVED_PER_IP: usize = 4;
/// The paths a reserved connection may ask for.
const RESERVED_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];
/// A reserved connection's deadline for its request head: a probe sends it
/// at once, and a flood must not keep the reserve.
const RESERVED_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a request refused on a reserved connection.
const RESERVED_RETRY_AFTER_SECS: u64 = 1;

/// The caps on open connections, shared by the accept loop and the
/// connections it spawns (each gives its place back when it ends).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// A place for each connection served normally (`server.max_connections`).
    open: Arc<Semaphore>,
    /// The places past the global cap, for health, readiness and metrics.
    reserve: Arc<Semaphore>,
    /// `server.max_connections_per_ip`: one address cannot take every place.
    per_ip: usize,
    /// Open connections by client address (an address with none is absent).
    by_ip: Arc<Mutex<HashMap<IpAddr, Held>>>,
    /// The global cap in effect, for the log.
    max_connections: usize,
}

/// The connections one address holds, and how many of them are in the
/// reserve.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    all: usize,
    reserved: usize,
}

/// An accepted connection's place, given back when dropped.
struct Place {
    /// A place in the reserve: health, readiness and metrics only.
    reserved: bool,
    _permit: OwnedSemaphorePermit,
    _slot: IpSlot,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds `server.max_connections_per_ip` already.
    PerIp,
    /// Every place, the reserve's too, is taken, or the address holds its
    /// share of the reserve.
    Full,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::Full => "max_connections",
        }
    }
}

impl ConnectionLimits {
    /// The caps, the global one lowered to fit half of `open_files` (the
    /// soft `RLIMIT_NOFILE`) with the reserve: the other half is for the
    /// database, the mirrors and outgoing webhooks.
    pub fn new(max_connections: usize, per_ip: usize, open_files: u64) -> Self {
        let fd_share = usize::try_from(open_files / 2)
            .unwrap_or(usize::MAX)
            .saturating_sub(RESERVED_CONNECTIONS)
            .max(1);
        let max_connections = max_connections.min(fd_share).min(Semaphore::MAX_PERMITS);
        Self {
            open: Arc::new(Semaphore::new(max_connections)),
            reserve: Arc::new(Semaphore::new(RESERVED_CONNECTIONS)),
            per_ip,
            by_ip: Arc::default(),
            max_connections,
        }
    }

    /// The global cap in effect.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A place for a connection from `ip`, or why it has none.
    fn admit(&self, ip: IpAddr) -> Result<Place, Refusal> {
        let mut by_ip = self
            .by_ip
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let held = by_ip.entry(ip).or_default();
        let admitted = if held.all >= self.per_ip {
            Err(Refusal::PerIp)
        } else if let Ok(permit) = Arc::clone(&self.open).try_acquire_owned() {
            Ok((false, permit))
        } else if held.reserved >= RESERVED_PER_IP {
            Err(Refusal::Full)
        } else {
            Arc::clone(&self.reserve)
                .try_acquire_owned()
                .map(|permit| (true, permit))
                .map_err(|_| Refusal::Full)
        };
        let (reserved, permit) = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                if held.all == 0 {
                    by_ip.remove(&ip);
                }
                return Err(refusal);
            }
        };
        held.all += 1;
        held.reserved += usize::from(reserved);
        Ok(Place {
            reserved,
            _permit: permit,
            _slot: IpSlot {
                ip,
                reserved,
                by_ip: Arc::clone(&self.by_ip),
            },
        })
    }
}

/// A connection's count in its address's totals, given back when dropped.
struct IpSlot {
    ip: IpAddr,
    reserved: bool,
    by_ip: Arc<Mutex<HashMap<IpAddr, Held>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .by_ip
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(held) = by_ip.get_mut(&self.ip) {
            held.all -= 1;
            held.reserved -= usize::from(self.reserved);
            if held.all == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves; then stops
/// accepting, closes idle connections and resolves once the in-flight
/// requests are answered (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    header_read_timeout: Duration,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                tracing::error!(error = %err, "accepting a connection failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let place = match limits.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                // Closed before anything is read: it costs no more than the
                // accept.
                drop(stream);
                tracing::debug!(%peer, reason = refusal.as_str(), "connection refused");
                metrics::counter!("herald_connections_refused_total", "reason" => refusal.as_str())
                    .increment(1);
                continue;
            }
        };
        let filter = warp::service(routes.clone());
        let reserved = place.reserved;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let refused = reserved && !RESERVED_PATHS.contains(&request.uri().path());
            request.extensions_mut().insert(ClientAddr(peer));
            let answer = (!refused).then(|| filter.clone().call(request));
            async move {
                let mut response = match answer {
                    Some(answer) => answer.await?,
                    None => ApiError::Busy {
                        retry_after_secs: RESERVED_RETRY_AFTER_SECS,
                    }
                    .into_response(),
                };
                // No answer is to be read as another type than it says.
                response.headers_mut().insert(
                    "x-content-type-options",
                    HeaderValue::from_static("nosniff"),
                );
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new());
        if reserved {
            builder
                .header_read_timeout(header_read_timeout.min(RESERVED_HEAD_TIMEOUT))
                .keep_alive(false);
        } else {
            builder.header_read_timeout(header_read_timeout);
        }
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                // Timeouts and clients going away are routine.
                tracing::debug!(error = %err, %peer, "connection closed with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one incoming connection, reported by `accept`: the listener is
/// fine.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_the_reserve() {
        // Two normal places, a generous per-address cap.
        let limits = ConnectionLimits::new(2, 1000, 1 << 20);
        let flood: Vec<Place> = (0..2 + RESERVED_PER_IP)
            .map(|_| limits.admit(ip(3)).expect("a place"))
            .collect();
        assert_eq!(
            flood.iter().filter(|place| place.reserved).count(),
            RESERVED_PER_IP
        );
        assert_eq!(limits.admit(ip(3)).err(), Some(Refusal::Full));
        // Other addresses still get the rest of the reserve, and then it is
        // full.
        let others: Vec<Place> = (0..RESERVED_CONNECTIONS - RESERVED_PER_IP)
            .map(|n| limits.admit(ip(10 + n as u8)).expect("a reserved place"))
            .collect();
        assert!(others.iter().all(|place| place.reserved));
        assert_eq!(limits.admit(ip(2)).err(), Some(Refusal::Full));
        // A reserved place given back can be taken again by its address.
        drop(flood);
        assert!(limits.admit(ip(3)).is_ok());
        drop(others);
        let by_ip = limits.by_ip.lock().expect("the map");
        assert!(by_ip.is_empty(), "every place was given back: {by_ip:?}");
    }
}
