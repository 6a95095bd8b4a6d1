//! TLS under libgit2's `https://` transport, on rustls.
//!
//! libgit2 is built without a TLS library of its own: its https transport
//! asks the stream registry for a `GIT_STREAM_TLS` stream, and Herald
//! registers this one ([`register`], beside its plain socket, `socket.rs`,
//! on which it builds), so git and webhooks share one TLS stack and one
//! configuration (`crate::tls`: rustls on ring, the platform's verifier, which
//! reads `SSL_CERT_FILE` / `SSL_CERT_DIR` on Linux).
//!
//! libgit2 makes a TLS stream in two ways:
//!
//! - `wrap(out, in, host)`: TLS over a stream libgit2 already holds. Every
//!   https operation of Herald's goes through its egress proxy, so this is
//!   the usual way: libgit2 opens Herald's socket to the proxy, sends
//!   `CONNECT`, then wraps the tunnel. The tunnel stays libgit2's: it closes
//!   and frees it itself (as its own OpenSSL and mbedTLS streams assume),
//!   so this stream only reads and writes it.
//! - `init(out, host, port)`: a connection of its own, on one of Herald's
//!   sockets, which this stream then owns (connects, closes and frees).
//!
//! Either way every byte goes through the stream underneath, whose
//! deadline and low-speed rule (`socket.rs`) bound each blocking read and
//! write: a handshake or a read here waits on nothing else, and each wait
//! either moves bytes, ends the stream or fails, so nothing spins.
//!
//! The server's certificate is checked by rustls against the host name
//! libgit2 passes. A refused certificate fails the connection with
//! libgit2's `GIT_ECERTIFICATE` and one of [`CertificateRefusal`]'s
//! messages (Herald's words, never the certificate's contents). libgit2
//! asks the stream for the certificate (`certificate`) only to hand it to a
//! `certificate_check` callback, which Herald does not set; the stream
//! still answers, so one set later sees the server's certificate.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, Once, PoisonError};

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ClientConnection};

use super::socket::{
    GIT_STREAM_TLS, GIT_STREAM_VERSION, RawStream, Registration, git_stream_register, guarded,
    stream_init,
};

#[cfg(test)]
mod tests;

/// Makes this stream the one libgit2 uses for TLS, once per process. Every
/// git network operation calls it before it starts (`Route::begin`).
pub(super) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libgit2_sys::init();
        let mut registration = registration();
        // SAFETY: libgit2 is initialised; it copies the registration.
        let result = unsafe { git_stream_register(GIT_STREAM_TLS, &mut registration) };
        assert_eq!(result, 0, "libgit2 refused Herald's TLS stream");
    });
}

/// libgit2's registration of this stream (for `git_stream_register`).
fn registration() -> Registration {
    Registration {
        version: GIT_STREAM_VERSION,
        init: Some(tls_init),
        wrap: Some(tls_wrap),
    }
}

/// Why a server's certificate was refused, in words safe to show to apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CertificateRefusal {
    UnknownIssuer,
    WrongName,
    OutOfDate,
    Revoked,
    Other,
}

impl CertificateRefusal {
    const ALL: [Self; 5] = [
        Self::UnknownIssuer,
        Self::WrongName,
        Self::OutOfDate,
        Self::Revoked,
        Self::Other,
    ];

    pub(super) fn message(self) -> &'static str {
        match self {
            Self::UnknownIssuer => {
                "the git remote's TLS certificate is not trusted: \
                 it was not issued by a certificate authority this server trusts"
            }
            Self::WrongName => "the git remote's TLS certificate is not valid for its host name",
            Self::OutOfDate => "the git remote's TLS certificate has expired or is not valid yet",
            Self::Revoked => "the git remote's TLS certificate has been revoked",
            Self::Other => "the git remote's TLS certificate was not accepted",
        }
    }

    /// The refusal a libgit2 certificate error reports: the error carries
    /// one of the messages above when this stream made it.
    pub(super) fn of(err: &git2::Error) -> Self {
        Self::ALL
            .into_iter()
            .find(|refusal| refusal.message() == err.message())
            .unwrap_or(Self::Other)
    }

    fn from_rustls(err: &CertificateError) -> Self {
        match err {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Self::WrongName
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Self::OutOfDate,
            CertificateError::Revoked => Self::Revoked,
            _ => Self::Other,
        }
    }
}

/// Why an operation on the stream failed.
enum Failure {
    /// The stream underneath failed and already told libgit2 why (a cut, a
    /// refusal, a broken socket).
    Inner,
    Certificate(CertificateRefusal),
    Tls(String),
}

impl Failure {
    fn from_rustls(err: &rustls::Error) -> Self {
        match err {
            rustls::Error::InvalidCertificate(err) => {
                Self::Certificate(CertificateRefusal::from_rustls(err))
            }
            // These name only protocol values, never the peer's data.
            rustls::Error::AlertReceived(_)
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::NoApplicationProtocol => Self::Tls(format!(
                "the TLS connection to the git remote failed: {err}"
            )),
            _ => Self::Tls("the TLS connection to the git remote failed".to_owned()),
        }
    }

    fn from_io(err: &io::Error) -> Self {
        match err.get_ref() {
            Some(inner) if inner.is::<InnerFailed>() => Self::Inner,
            _ => Self::Tls(format!(
                "the TLS connection to the git remote failed: {}",
                err.kind()
            )),
        }
    }
}

/// Hands libgit2 the failure (class `GIT_ERROR_SSL`) and returns its code:
/// `GIT_ECERTIFICATE` for a refused certificate, else -1.
fn fail(failure: Failure) -> c_int {
    let (code, message) = match failure {
        Failure::Inner => return -1,
        Failure::Certificate(refusal) => (
            libgit2_sys::GIT_ECERTIFICATE as c_int,
            refusal.message().to_owned(),
        ),
        Failure::Tls(message) => (-1, message),
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the string is NUL-terminated and libgit2 copies it.
    unsafe {
        libgit2_sys::git_error_set_str(libgit2_sys::GIT_ERROR_SSL as c_int, message.as_ptr());
    }
    code
}

/// The stream underneath failed; libgit2 already has its error.
#[derive(Debug)]
struct InnerFailed;

impl std::fmt::Display for InnerFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream under TLS failed")
    }
}

impl std::error::Error for InnerFailed {}

/// The stream under TLS, driven through its own function pointers.
struct Inner(*mut RawStream);

impl Read for Inner {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `self.0` is a live stream (libgit2's tunnel, alive while
        // the TLS stream on it is, or Herald's socket the TLS stream owns);
        // `buf` is `buf.len()` writable bytes.
        let read = unsafe {
            let read = (*self.0)
                .read
                .ok_or_else(|| io::Error::other(InnerFailed))?;
            read(self.0, buf.as_mut_ptr().cast::<c_void>(), buf.len())
        };
        usize::try_from(read).map_err(|_| io::Error::other(InnerFailed))
    }
}

impl Write for Inner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: as in `read`; `buf` is `buf.len()` readable bytes.
        let written = unsafe {
            let write = (*self.0)
                .write
                .ok_or_else(|| io::Error::other(InnerFailed))?;
            write(self.0, buf.as_ptr().cast::<c_char>(), buf.len(), 0)
        };
        match usize::try_from(written) {
            Ok(0) if !buf.is_empty() => Err(io::Error::other(InnerFailed)),
            Ok(n) => Ok(n),
            Err(_) => Err(io::Error::other(InnerFailed)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client configuration: built once (loading the platform's roots),
/// or for each connection while a test adds roots on its thread.
fn config() -> Result<Arc<ClientConfig>, Failure> {
    #[cfg(test)]
    if let Some(roots) = tests::EXTRA_ROOTS.with(|roots| roots.borrow().clone()) {
        return crate::tls::client_config(roots)
            .map(Arc::new)
            .map_err(|_| Failure::Tls("the test's roots are refused".to_owned()));
    }
    static CONFIG: Mutex<Option<Arc<ClientConfig>>> = Mutex::new(None);
    let mut config = CONFIG.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(config) = config.as_ref() {
        return Ok(Arc::clone(config));
    }
    let built = crate::tls::client_config(Vec::new()).map_err(|err| {
        tracing::warn!(error = %err, "the certificate authorities for git over https could not be loaded");
        Failure::Tls("this server could not load its trusted certificate authorities".to_owned())
    })?;
    Ok(Arc::clone(config.insert(Arc::new(built))))
}

/// One TLS connection: libgit2 holds it as a `*mut RawStream`, the first
/// field.
#[repr(C)]
struct TlsStream {
    raw: RawStream,
    inner: *mut RawStream,
    /// Whether `inner` is ours to connect, close and free (`init`), or
    /// libgit2's (`wrap`).
    owned: bool,
    tls: ClientConnection,
    /// Set once anything failed: the connection is not used again, not
    /// even to say goodbye (which could wait on a stuck peer).
    broken: bool,
    /// Why the handshake refused the certificate, for `certificate`.
    refusal: Option<CertificateRefusal>,
    /// The server's certificate as libgit2 reads it (`certificate`), and
    /// the bytes it points at.
    cert: libgit2_sys::git_cert_x509,
    cert_der: Vec<u8>,
}

impl TlsStream {
    fn new(inner: *mut RawStream, owned: bool, host: &str) -> Result<Box<Self>, Failure> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            Failure::Tls("the git remote's host name cannot be checked by TLS".to_owned())
        })?;
        let tls =
            ClientConnection::new(config()?, name).map_err(|err| Failure::from_rustls(&err))?;
        Ok(Box::new(Self {
            raw: RawStream {
                version: GIT_STREAM_VERSION,
                // `encrypted`, no `proxy_support` (the egress proxy is
                // spoken to by libgit2 over a plain socket, then wrapped).
                flags: 1,
                timeout: 0,
                connect_timeout: 0,
                connect: Some(tls_connect),
                certificate: Some(tls_certificate),
                set_proxy: None,
                read: Some(tls_read),
                write: Some(tls_write),
                close: Some(tls_close),
                free: Some(tls_free),
            },
            inner,
            owned,
            tls,
            broken: false,
            refusal: None,
            cert: libgit2_sys::git_cert_x509 {
                parent: libgit2_sys::git_cert {
                    cert_type: libgit2_sys::GIT_CERT_X509,
                },
                data: std::ptr::null_mut(),
                len: 0,
            },
            cert_der: Vec::new(),
        }))
    }

    /// Runs `step`, remembering a failure (the connection is then done).
    fn guard<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        if self.broken {
            return Err(Failure::Tls(
                "the TLS connection to the git remote failed earlier".to_owned(),
            ));
        }
        let result = step(self);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Sends what rustls has queued (handshake messages, records, alerts).
    fn send_queued(&mut self) -> Result<(), Failure> {
        let mut inner = Inner(self.inner);
        while self.tls.wants_write() {
            self.tls
                .write_tls(&mut inner)
                .map_err(|err| Failure::from_io(&err))?;
        }
        Ok(())
    }

    /// Reads what the server sent next (blocking on the stream underneath)
    /// and processes it; false at the end of the stream.
    fn receive(&mut self) -> Result<bool, Failure> {
        let read = self
            .tls
            .read_tls(&mut Inner(self.inner))
            .map_err(|err| Failure::from_io(&err))?;
        if let Err(err) = self.tls.process_new_packets() {
            // Tell the server why (rustls queued an alert), as far as it
            // still listens; the refusal is the error either way.
            let _ = self.send_queued();
            let failure = Failure::from_rustls(&err);
            if let Failure::Certificate(refusal) = failure {
                self.refusal = Some(refusal);
            }
            return Err(failure);
        }
        // Whatever processing queued (a key update's answer).
        self.send_queued()?;
        Ok(read > 0)
    }

    fn connect(&mut self) -> Result<(), Failure> {
        if self.owned {
            // SAFETY: `inner` is Herald's socket, owned by this stream.
            let connected = unsafe {
                let connect = (*self.inner).connect.ok_or(Failure::Inner)?;
                connect(self.inner)
            };
            if connected < 0 {
                return Err(Failure::Inner);
            }
        }
        while self.tls.is_handshaking() {
            self.send_queued()?;
            if !self.tls.is_handshaking() {
                break;
            }
            if !self.receive()? {
                return Err(Failure::Tls(
                    "the git remote closed the connection during the TLS handshake".to_owned(),
                ));
            }
        }
        // The client's last handshake message.
        self.send_queued()
    }

    fn read(&mut self, buffer: &mut [u8]) -> Result<usize, Failure> {
        loop {
            match self.tls.reader().read(buffer) {
                Ok(read) => return Ok(read),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // The server closed without TLS's close_notify, as many do
                // after their last answer. libgit2 knows from the HTTP
                // framing (and git from the pack's checksum) whether the
                // answer was whole, so this is the end of the stream.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) => return Err(Failure::from_io(&err)),
            }
            // Nothing decrypted yet: wait for more. After the end of the
            // stream, the reader answers above instead of `WouldBlock`.
            self.receive()?;
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<usize, Failure> {
        let written = self
            .tls
            .writer()
            .write(data)
            .map_err(|err| Failure::from_io(&err))?;
        self.send_queued()?;
        Ok(written)
    }

    fn close(&mut self) -> c_int {
        if !self.broken && !self.tls.is_handshaking() {
            self.tls.send_close_notify();
            let _ = self.send_queued();
        }
        self.broken = true;
        if !self.owned {
            return 0;
        }
        // SAFETY: `inner` is Herald's socket, owned by this stream.
        unsafe {
            match (*self.inner).close {
                Some(close) => close(self.inner),
                None => 0,
            }
        }
    }

    /// The server's certificate for libgit2's `certificate_check`.
    fn certificate(&mut self) -> Result<*mut libgit2_sys::git_cert, Failure> {
        if let Some(refusal) = self.refusal {
            return Err(Failure::Certificate(refusal));
        }
        let der = self
            .tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| Failure::Tls("the git remote presented no certificate".to_owned()))?;
        self.cert_der = der.to_vec();
        self.cert.data = self.cert_der.as_mut_ptr().cast::<c_void>();
        self.cert.len = self.cert_der.len();
        Ok(&raw mut self.cert.parent)
    }
}

/// # Safety
/// `stream` is a stream made by [`tls_init`] or [`tls_wrap`].
unsafe fn tls<'a>(stream: *mut RawStream) -> &'a mut TlsStream {
    // SAFETY: `raw` is the first field of the `repr(C)` `TlsStream`.
    unsafe { &mut *stream.cast::<TlsStream>() }
}

/// # Safety
/// `host` is a NUL-terminated string.
unsafe fn host_of(host: *const c_char) -> String {
    // SAFETY: per the contract.
    unsafe { CStr::from_ptr(host) }
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C" fn tls_wrap(
    out: *mut *mut RawStream,
    inner: *mut RawStream,
    host: *const c_char,
) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes a NUL-terminated host name.
        let host = unsafe { host_of(host) };
        match TlsStream::new(inner, false, &host) {
            // SAFETY: `out` is libgit2's out-pointer; it owns the stream
            // from now on and gives it back to `tls_free`.
            Ok(stream) => unsafe {
                *out = Box::into_raw(stream).cast::<RawStream>();
                0
            },
            Err(failure) => fail(failure),
        }
    })
}

unsafe extern "C" fn tls_init(
    out: *mut *mut RawStream,
    host: *const c_char,
    port: *const c_char,
) -> c_int {
    guarded(-1, || {
        let mut socket: *mut RawStream = std::ptr::null_mut();
        // SAFETY: libgit2's NUL-terminated host and port, passed on to
        // Herald's socket, which writes the new socket into `socket`.
        let made = unsafe { stream_init(&mut socket, host, port) };
        if made < 0 {
            return made;
        }
        // SAFETY: libgit2 passes a NUL-terminated host name.
        let host = unsafe { host_of(host) };
        match TlsStream::new(socket, true, &host) {
            // SAFETY: as in `tls_wrap`; the stream owns the socket.
            Ok(stream) => unsafe {
                *out = Box::into_raw(stream).cast::<RawStream>();
                0
            },
            Err(failure) => {
                // SAFETY: the socket was just made, unconnected, and is
                // nobody else's: it is freed here, once.
                unsafe {
                    if let Some(free) = (*socket).free {
                        free(socket);
                    }
                }
                fail(failure)
            }
        }
    })
}

unsafe extern "C" fn tls_connect(stream: *mut RawStream) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes back a stream this module made.
        let stream = unsafe { tls(stream) };
        match stream.guard(TlsStream::connect) {
            Ok(()) => 0,
            Err(failure) => fail(failure),
        }
    })
}

unsafe extern "C" fn tls_certificate(
    out: *mut *mut libgit2_sys::git_cert,
    stream: *mut RawStream,
) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes back a stream this module made.
        let stream = unsafe { tls(stream) };
        match stream.certificate() {
            // SAFETY: `out` is libgit2's out-pointer; the certificate lives
            // in the stream, which outlives libgit2's look at it.
            Ok(cert) => unsafe {
                *out = cert;
                0
            },
            Err(failure) => fail(failure),
        }
    })
}

unsafe extern "C" fn tls_read(stream: *mut RawStream, data: *mut c_void, len: usize) -> isize {
    guarded(-1, || {
        // SAFETY: libgit2 passes back a stream this module made, and a
        // buffer of `len` writable bytes.
        let (stream, buffer) = unsafe {
            (
                tls(stream),
                std::slice::from_raw_parts_mut(data.cast::<u8>(), len),
            )
        };
        match stream.guard(|stream| stream.read(buffer)) {
            Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
            Err(failure) => fail(failure) as isize,
        }
    })
}

unsafe extern "C" fn tls_write(
    stream: *mut RawStream,
    data: *const c_char,
    len: usize,
    _flags: c_int,
) -> isize {
    guarded(-1, || {
        // SAFETY: libgit2 passes back a stream this module made, and `len`
        // readable bytes.
        let (stream, buffer) = unsafe {
            (
                tls(stream),
                std::slice::from_raw_parts(data.cast::<u8>(), len),
            )
        };
        match stream.guard(|stream| stream.write(buffer)) {
            Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
            Err(failure) => fail(failure) as isize,
        }
    })
}

unsafe extern "C" fn tls_close(stream: *mut RawStream) -> c_int {
    guarded(-1, || {
        // SAFETY: libgit2 passes back a stream this module made.
        unsafe { tls(stream) }.close()
    })
}

unsafe extern "C" fn tls_free(stream: *mut RawStream) {
    guarded((), || {
        // SAFETY: made by `Box::into_raw` in `tls_init` or `tls_wrap`;
        // libgit2 frees each stream once.
        let stream = unsafe { Box::from_raw(stream.cast::<TlsStream>()) };
        if stream.owned {
            // SAFETY: the socket is this stream's alone, freed once, here.
            unsafe {
                if let Some(free) = (*stream.inner).free {
                    free(stream.inner);
                }
            }
        }
    });
}
