//! The sockets under every git network operation, so that a slow or
//! dripping remote cannot hold a scan worker.
//!
//! libgit2 bounds each socket read and write by its server timeout, which a
//! remote sending one byte every few seconds never trips: a scan could then
//! run for as long as the remote cared to drip. So Herald registers its own
//! plain socket with libgit2 (`git_stream_register`): every connection
//! libgit2 opens for `http://`, `git://` and (through the egress proxy, under
//! TLS) `https://` remotes is one of these. Each carries the limits of the
//! operation that opened it ([`Operation::begin`], taken from the operation's
//! thread when libgit2 creates the socket, as libgit2 works on the caller's
//! thread):
//!
//! - **the deadline** (`git.fetch_timeout`): connecting, every read and every
//!   write end when the whole operation's time is up, whatever arrives;
//! - **the low-speed rule** (git's `http.lowSpeedLimit` / `lowSpeedTime`): a
//!   connection that moves fewer than `limit` bytes a second, both ways
//!   counted, over any `time` of its life is cut.
//!
//! - **the address rule** ([`Gate`]): an https operation's sockets may only
//!   reach its egress proxy; an `http://` or `git://` operation's only the
//!   registered host and port, resolved when the socket connects and
//!   connected to at public addresses only (unless private targets are
//!   allowed). A redirect to another host or port, or a name that now
//!   resolves to a private address, fails at connection time.
//!
//! A cut or a refusal is remembered by the operation, so the failure is
//! reported with its reason (a timeout, an address not allowed) rather than
//! as libgit2's view of a broken socket.
//!
//! Everything here blocks: git operations run on blocking workers.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::arriving::Tap;

use super::egress::{Destination, Refusal};
use crate::net::AddressRule;

/// git's `http.lowSpeedLimit` and `http.lowSpeedTime`, for every transport:
/// a connection slower than `limit` bytes a second over `time` is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowSpeed {
    /// Bytes a second, both ways counted; 0 turns the rule off.
    pub limit: u64,
    /// How long the connection may stay under the limit.
    pub time: Duration,
}

impl Default for LowSpeed {
    fn default() -> Self {
        Self {
            limit: 1024,
            time: Duration::from_secs(30),
        }
    }
}

/// Why a connection was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The operation's time (`git.fetch_timeout`) was up.
    Deadline,
    /// The connection stayed under the low-speed limit for its time.
    TooSlow(LowSpeed),
}

impl Cut {
    /// A summary for logs, errors and `sync_failed` webhooks (no remote
    /// text, nothing secret).
    pub fn message(self) -> String {
        match self {
            Cut::Deadline => "the git remote did not answer in time".to_owned(),
            Cut::TooSlow(rule) => format!(
                "the git remote timed out: it sent less than {} bytes a second for {}",
                rule.limit,
                humanize(rule.time),
            ),
        }
    }
}

fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{secs:.1}s")
    }
}

/// Where an operation's sockets may connect.
#[derive(Debug, Clone)]
pub enum Gate {
    /// Anywhere (a local repository opens no socket).
    Open,
    /// Only the operation's egress proxy (https: the proxy applies the rule).
    Proxy(SocketAddr),
    /// Only the registered host and port, at the addresses the rule admits
    /// when the socket connects.
    Remote {
        destination: Destination,
        rule: AddressRule,
    },
}

/// The limits of the operation running on this thread.
#[derive(Debug, Clone)]
struct Limits {
    deadline: Instant,
    low_speed: LowSpeed,
    gate: Gate,
}

thread_local! {
    /// The operation running on this thread, if any: what a socket libgit2
    /// opens now obeys.
    static CURRENT: RefCell<Option<Limits>> = const { RefCell::new(None) };
    /// The first cut one of the operation's sockets made.
    static CUT: Cell<Option<Cut>> = const { Cell::new(None) };
    /// The first connection the address rule refused.
    static REFUSED: Cell<Option<Refusal>> = const { Cell::new(None) };
    /// The error message libgit2 is handed (kept alive until the next one).
    static MESSAGE: RefCell<CString> = RefCell::new(CString::default());
    /// Where the bytes this thread's sockets read also go, if anywhere
    /// ([`tapped`]).
    static TAP: RefCell<Option<Tap>> = const { RefCell::new(None) };
}

/// Runs `body` (a fetch) with every byte its sockets read also handed to
/// `tap` ([`super::arriving`]).
pub(super) fn tapped<T>(tap: &Tap, body: impl FnOnce() -> T) -> T {
    /// Puts the previous tap back, however `body` ends.
    struct Restore(Option<Tap>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TAP.with(|current| *current.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(TAP.with(|current| current.replace(Some(tap.clone()))));
    body()
}

/// One git network operation on this thread (a head check, a fetch): the
/// sockets libgit2 opens until it is dropped obey its limits.
#[derive(Debug)]
pub struct Operation {
    previous: Option<Limits>,
}

impl Operation {
    /// Starts an operation that must end within `timeout`, keep above
    /// `low_speed` and connect only where `gate` lets it. Registers Herald's
    /// socket with libgit2 on first use.
    pub fn begin(timeout: Duration, low_speed: LowSpeed, gate: Gate) -> Self {
        register();
        let limits = Limits {
            deadline: Instant::now() + timeout,
            low_speed,
            gate,
        };
        CUT.with(|cut| cut.set(None));
        REFUSED.with(|refused| refused.set(None));
        Self {
            previous: CURRENT.with(|current| current.replace(Some(limits))),
        }
    }

    /// Whether (and why) one of the operation's sockets was cut.
    pub fn cut(&self) -> Option<Cut> {
        CUT.with(Cell::get)
    }

    /// Whether (and why) the address rule refused one of its connections.
    pub fn refusal(&self) -> Option<Refusal> {
        REFUSED.with(Cell::get)
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = self.previous.take());
    }
}

/// `git_stream` of libgit2 1.9 (`git2/sys/stream.h`), field for field.
#[repr(C)]
pub(super) struct RawStream {
    pub(super) version: c_int,
    /// The bit fields `encrypted : 1, proxy_support : 1` (the first the
    /// lowest bit): both 0 for a plain socket.
    pub(super) flags: std::ffi::c_uint,
    pub(super) timeout: c_int,
    pub(super) connect_timeout: c_int,
    pub(super) connect: Option<unsafe extern "C" fn(*mut RawStream) -> c_int>,
    pub(super) certificate:
        Option<unsafe extern "C" fn(*mut *mut libgit2_sys::git_cert, *mut RawStream) -> c_int>,
    pub(super) set_proxy: Option<
        unsafe extern "C" fn(*mut RawStream, *const libgit2_sys::git_proxy_options) -> c_int,
    >,
    pub(super) read: Option<unsafe extern "C" fn(*mut RawStream, *mut c_void, usize) -> isize>,
    pub(super) write:
        Option<unsafe extern "C" fn(*mut RawStream, *const c_char, usize, c_int) -> isize>,
    pub(super) close: Option<unsafe extern "C" fn(*mut RawStream) -> c_int>,
    pub(super) free: Option<unsafe extern "C" fn(*mut RawStream)>,
}

/// `git_stream_registration`.
#[repr(C)]
pub(super) struct Registration {
    pub(super) version: c_int,
    pub(super) init:
        Option<unsafe extern "C" fn(*mut *mut RawStream, *const c_char, *const c_char) -> c_int>,
    pub(super) wrap:
        Option<unsafe extern "C" fn(*mut *mut RawStream, *mut RawStream, *const c_char) -> c_int>,
}

pub(super) const GIT_STREAM_VERSION: c_int = 1;
/// `git_stream_t`: a plain socket, and a TLS one.
const GIT_STREAM_STANDARD: c_int = 1;
pub(super) const GIT_STREAM_TLS: c_int = 2;

unsafe extern "C" {
    pub(super) fn git_stream_register(kind: c_int, registration: *mut Registration) -> c_int;
}

/// Makes Herald's socket the one libgit2 uses for every plain connection
/// (Herald's TLS stream, `tls.rs`, registers itself and builds on it).
fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libgit2_sys::init();
        let mut registration = Registration {
            version: GIT_STREAM_VERSION,
            init: Some(stream_init),
            wrap: None,
        };
        // SAFETY: libgit2 is initialised; it copies the registration.
        let result = unsafe { git_stream_register(GIT_STREAM_STANDARD, &mut registration) };
        assert_eq!(result, 0, "libgit2 refused Herald's socket stream");
    });
}

/// One connection: libgit2 holds it as a `*mut RawStream`, the first field.
#[repr(C)]
struct Socket {
    raw: RawStream,
    host: String,
    port: String,
    tcp: Option<TcpStream>,
    limits: Option<Limits>,
    /// The low-speed rule's current window: when it began, bytes moved since.
    window: (Instant, u64),
}

impl Socket {
    /// How long the next wait on the socket may be: up to the deadline or
    /// the end of the low-speed window, whichever is first; or the cut.
    fn next_wait(&mut self) -> Result<Option<Duration>, Cut> {
        let Some(limits) = &self.limits else {
            return Ok(None);
        };
        let now = Instant::now();
        if now >= limits.deadline {
            return Err(Cut::Deadline);
        }
        let mut wait = limits.deadline - now;
        let rule = limits.low_speed;
        if rule.limit > 0 && !rule.time.is_zero() {
            let (start, bytes) = self.window;
            let elapsed = now.duration_since(start);
            if elapsed >= rule.time {
                let needed = rule.limit as f64 * elapsed.as_secs_f64();
                if (bytes as f64) < needed {
                    return Err(Cut::TooSlow(rule));
                }
                self.window = (now, 0);
                wait = wait.min(rule.time);
            } else {
                wait = wait.min(rule.time - elapsed);
            }
        }
        // A zero timeout means "none" to the socket.
        Ok(Some(wait.max(Duration::from_millis(1))))
    }

    fn moved(&mut self, bytes: usize) {
        self.window.1 = self.window.1.saturating_add(bytes as u64);
    }

    /// The addresses this socket may connect to, under its gate.
    fn admitted(&self, port: u16) -> Result<Vec<SocketAddr>, Failure> {
        let gate = self.limits.as_ref().map_or(&Gate::Open, |l| &l.gate);
        match gate {
            Gate::Open => Ok((self.host.as_str(), port)
                .to_socket_addrs()
                .map_err(|_| Failure::Io(format!("failed to resolve address for {}", self.host)))?
                .collect()),
            Gate::Proxy(proxy) => {
                let host = self.host.trim_start_matches('[').trim_end_matches(']');
                match host.parse::<std::net::IpAddr>() {
                    Ok(ip) if SocketAddr::new(ip, port) == *proxy => Ok(vec![*proxy]),
                    _ => Err(Failure::Refused(Refusal::OtherHost)),
                }
            }
            Gate::Remote { destination, rule } => {
                if !destination.matches(&self.host, port) {
                    return Err(Failure::Refused(Refusal::OtherHost));
                }
                destination.resolve(*rule).map_err(Failure::Refused)
            }
        }
    }

    fn connect(&mut self) -> Result<(), Failure> {
        let port: u16 = self
            .port
            .parse()
            .map_err(|_| Failure::Io(format!("invalid port `{}`", self.port)))?;
        let addresses = self.admitted(port)?;
        let mut last = Failure::Io(format!("failed to resolve address for {}", self.host));
        for address in addresses {
            let attempt = match self.next_wait().map_err(Failure::Cut)? {
                Some(wait) => TcpStream::connect_timeout(&address, wait),
                None => TcpStream::connect(address),
            };
            match attempt {
                Ok(tcp) => {
                    self.tcp = Some(tcp);
                    self.window = (Instant::now(), 0);
                    return Ok(());
                }
                Err(err) if is_wait_over(&err) => {
                    last = match self.next_wait() {
                        Err(cut) => return Err(Failure::Cut(cut)),
                        Ok(_) => Failure::Io(format!("failed to connect to {}", self.host)),
                    }
                }
                Err(_) => last = Failure::Io(format!("failed to connect to {}", self.host)),
            }
        }
        Err(last)
    }

    /// Reads or writes under the limits: waits in slices up to the next
    /// check, and gives up on a cut.
    fn transfer(
        &mut self,
        mut step: impl FnMut(&mut TcpStream, Option<Duration>) -> io::Result<usize>,
    ) -> Result<usize, Failure> {
        loop {
            let wait = self.next_wait().map_err(Failure::Cut)?;
            let tcp = self
                .tcp
                .as_mut()
                .ok_or_else(|| Failure::Io("the socket is not connected".to_owned()))?;
            match step(tcp, wait) {
                Ok(n) => {
                    self.moved(n);
                    return Ok(n);
                }
                Err(err) if is_wait_over(&err) || err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(Failure::Io(format!("socket error: {err}"))),
            }
        }
    }
}

/// A socket timeout: the slice of waiting is over (the limits decide).
fn is_wait_over(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

enum Failure {
    Cut(Cut),
    Refused(Refusal),
    Io(String),
}

/// Hands libgit2 an error (class `GIT_ERROR_NET`) and returns -1.
fn fail(failure: Failure) -> c_int {
    let message = match failure {
        Failure::Cut(cut) => {
            CUT.with(|current| {
                if current.get().is_none() {
                    current.set(Some(cut));
                }
            });
            cut.message()
        }
        Failure::Refused(refusal) => {
            REFUSED.with(|current| {
                if current.get().is_none() {
                    current.set(Some(refusal));
                }
            });
            refusal.message().to_owned()
        }
        Failure::Io(message) => message,
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    MESSAGE.with(|kept| {
        let mut kept = kept.borrow_mut();
        *kept = message;
        // SAFETY: the string is NUL-terminated and libgit2 copies it.
        unsafe {
            libgit2_sys::git_error_set_str(libgit2_sys::GIT_ERROR_NET as c_int, kept.as_ptr());
        }
    });
    -1
}

/// Runs `body` without letting a panic cross into C.
pub(super) fn guarded<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// # Safety
/// `stream` is a socket made by [`stream_init`].
unsafe fn socket<'a>(stream: *mut RawStream) -> &'a mut Socket {
    // SAFETY: `raw` is the first field of the `repr(C)` `Socket`.
    unsafe { &mut *stream.cast::<Socket>() }
}

/// Makes one of Herald's sockets (`init` of libgit2's registration; also
/// the socket under Herald's TLS stream).
pub(super) unsafe extern "C" fn stream_init(
    out: *mut *mut RawStream,
    host: *const c_char,
    port: *const c_char,
) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes NUL-terminated strings.
        let (host, port) = unsafe {
            (
                CStr::from_ptr(host).to_string_lossy().into_owned(),
                CStr::from_ptr(port).to_string_lossy().into_owned(),
            )
        };
        let socket = Box::new(Socket {
            raw: RawStream {
                version: GIT_STREAM_VERSION,
                flags: 0,
                timeout: 0,
                connect_timeout: 0,
                connect: Some(stream_connect),
                certificate: None,
                set_proxy: None,
                read: Some(stream_read),
                write: Some(stream_write),
                close: Some(stream_close),
                free: Some(stream_free),
            },
            host,
            port,
            tcp: None,
            limits: CURRENT.with(|current| current.borrow().clone()),
            window: (Instant::now(), 0),
        });
        // SAFETY: `out` is libgit2's out-pointer; it owns the socket from
        // now on and gives it back to `stream_free`.
        unsafe { *out = Box::into_raw(socket).cast::<RawStream>() };
        0
    })
}

unsafe extern "C" fn stream_connect(stream: *mut RawStream) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes back the stream `stream_init` made.
        let socket = unsafe { socket(stream) };
        match socket.connect() {
            Ok(()) => 0,
            Err(failure) => fail(failure),
        }
    })
}

unsafe extern "C" fn stream_read(stream: *mut RawStream, data: *mut c_void, len: usize) -> isize {
    guarded(-1, || {
        // SAFETY: libgit2 passes back the stream `stream_init` made, and a
        // buffer of `len` writable bytes.
        let (socket, buffer) = unsafe {
            (
                socket(stream),
                std::slice::from_raw_parts_mut(data.cast::<u8>(), len),
            )
        };
        match socket.transfer(|tcp, wait| {
            tcp.set_read_timeout(wait)?;
            tcp.read(buffer)
        }) {
            Ok(n) => {
                TAP.with(|tap| {
                    if let Some(tap) = tap.borrow().as_ref() {
                        tap.push(&buffer[..n]);
                    }
                });
                isize::try_from(n).unwrap_or(isize::MAX)
            }
            Err(failure) => fail(failure) as isize,
        }
    })
}

unsafe extern "C" fn stream_write(
    stream: *mut RawStream,
    data: *const c_char,
    len: usize,
    _flags: c_int,
) -> isize {
    guarded(-1, || {
        // SAFETY: libgit2 passes back the stream `stream_init` made, and
        // `len` readable bytes.
        let (socket, buffer) = unsafe {
            (
                socket(stream),
                std::slice::from_raw_parts(data.cast::<u8>(), len),
            )
        };
        match socket.transfer(|tcp, wait| {
            tcp.set_write_timeout(wait)?;
            tcp.write(buffer)
        }) {
            Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
            Err(failure) => fail(failure) as isize,
        }
    })
}

unsafe extern "C" fn stream_close(stream: *mut RawStream) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes back the stream `stream_init` made.
        let socket = unsafe { socket(stream) };
        if let Some(tcp) = socket.tcp.take() {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        0
    })
}

unsafe extern "C" fn stream_free(stream: *mut RawStream) {
    guarded((), || {
        // SAFETY: made by `Box::into_raw` in `stream_init`; libgit2 frees
        // each stream once.
        drop(unsafe { Box::from_raw(stream.cast::<Socket>()) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A remote that accepts and then sends one byte every `every`: the
    /// start of a long pkt-line, never finished.
    fn dripping(every: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    for byte in b"0fff".iter().chain(std::iter::repeat(&b'a')) {
                        if conn.write_all(&[*byte]).is_err() {
                            break;
                        }
                        std::thread::sleep(every);
                    }
                });
            }
        });
        address
    }

    fn probe(address: SocketAddr, timeout: Duration, low_speed: LowSpeed) -> (git2::Error, Cut) {
        let operation = Operation::begin(timeout, low_speed, Gate::Open);
        let url = format!("git://{address}/repo.git");
        let mut remote = git2::Remote::create_detached(url.as_str()).expect("remote");
        let err = remote
            .connect(git2::Direction::Fetch)
            .and_then(|()| remote.list().map(|_| ()))
            .expect_err("a dripping remote never answers in full");
        let cut = operation.cut().expect("the socket was cut");
        (err, cut)
    }

    #[test]
    fn the_deadline_bounds_the_whole_operation_whatever_arrives() {
        let address = dripping(Duration::from_millis(100));
        let started = Instant::now();
        let (err, cut) = probe(
            address,
            Duration::from_millis(800),
            LowSpeed {
                limit: 0,
                time: Duration::ZERO,
            },
        );
        assert_eq!(cut, Cut::Deadline);
        assert!(err.message().contains("did not answer in time"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_connection_under_the_low_speed_limit_is_cut() {
        let address = dripping(Duration::from_millis(200));
        let rule = LowSpeed {
            limit: 100,
            time: Duration::from_millis(600),
        };
        let (err, cut) = probe(address, Duration::from_secs(120), rule);
        assert_eq!(cut, Cut::TooSlow(rule));
        assert!(
            err.message().contains("less than 100 bytes a second"),
            "{err}"
        );
    }

    #[test]
    fn an_operation_restores_the_one_it_interrupted() {
        let outer = Operation::begin(Duration::from_secs(60), LowSpeed::default(), Gate::Open);
        {
            let _inner = Operation::begin(Duration::from_secs(1), LowSpeed::default(), Gate::Open);
        }
        let deadline = CURRENT.with(|current| current.borrow().as_ref().map(|l| l.deadline));
        assert!(deadline.expect("the outer operation") > Instant::now() + Duration::from_secs(30));
        drop(outer);
        assert!(CURRENT.with(|current| current.borrow().is_none()));
    }
}
