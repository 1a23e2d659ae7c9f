//! Connections: the accept loop, HTTP/1.1 serving with a header-read timeout, and the register
//! that keeps the process inside its file-descriptor limit.
//!
//! Why a register: a socket is a file descriptor, and a process has a fixed number (this
//! server reads its `RLIMIT_NOFILE`). Without a bound, clients that open connections and send
//! nothing (or headers one byte at a time) fill the table, `accept` fails with `EMFILE`, and
//! nobody is answered. So every connection is registered, and when the register is full — or
//! `accept` reports the table full — the oldest connection that is not serving a request or a
//! device (idle keep-alive, or still sending its headers) is closed to make room. Device
//! connections (SSE, WebSocket) are legitimate long-lived ones: they are never evicted, but
//! they are capped below the limit so that REST calls always find room. A connection whose
//! headers do not arrive within 10 s is closed anyway (hyper's header-read timeout, which also
//! runs while a keep-alive connection waits for its next request).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// How long a request's headers (and, in `rest`, its body) may take to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long data sent to a client may go unread before its connection is dropped, unless
/// configured otherwise (`ServerConfig::unread_timeout`): as long as a WebSocket client may be
/// silent (three pings, 90 s).
pub const UNREAD_TIMEOUT: Duration = Duration::from_secs(90);

/// Descriptors kept out of the connection budget: the journal's files, the listener, the
/// spare, the runtime's own (48), and the webhooks' sockets to the app — the before-send and
/// after-callback calls in flight, the idle ones kept for reuse.
const RESERVED_FDS: usize = 48
    + super::webhook::MAX_BEFORE_SEND_CALLS
    + super::webhook::MAX_AFTER_CALLS
    + super::webhook::IDLE_CALLBACK_CONNECTIONS;
/// Of the connection budget, how many only REST calls may use (device connections may not).
const REST_RESERVE: usize = 64;

/// What a connection's tasks share with the register.
#[derive(Default)]
pub struct ConnFlags {
    /// Requests being answered on it now.
    busy: AtomicUsize,
    /// Of those, how many are still reading their bodies: a connection whose requests all are
    /// may be evicted, or a client trickling bodies (bounded only by the read timeout, and
    /// sent again and again) would make its connection one that is never closed.
    reading: AtomicUsize,
    /// It carries a device (SSE or WebSocket): never evicted.
    device: AtomicBool,
    /// Told to close.
    evict: Notify,
}

/// Every open connection, oldest first.
pub struct Register {
    /// Connections this process may hold at once.
    limit: usize,
    inner: Mutex<RegisterInner>,
}

#[derive(Default)]
struct RegisterInner {
    next_id: u64,
    open: BTreeMap<u64, Arc<ConnFlags>>,
    devices: usize,
}

/// Keeps a connection registered while it lives (the connection task, and after an upgrade the
/// WebSocket task, hold it).
pub struct ConnGuard {
    id: u64,
    flags: Arc<ConnFlags>,
    register: Arc<Register>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut inner = self.register.inner.lock();
        inner.open.remove(&self.id);
        if self.flags.device.load(Ordering::Acquire) {
            inner.devices -= 1;
        }
    }
}

impl ConnGuard {
    /// Marks the connection as a device's; `false` (and unchanged) when device connections are
    /// at their cap.
    pub fn become_device(&self) -> bool {
        let mut inner = self.register.inner.lock();
        if inner.devices >= self.register.device_limit() {
            return false;
        }
        if !self.flags.device.swap(true, Ordering::AcqRel) {
            inner.devices += 1;
        }
        true
    }

    /// Undoes [`become_device`](ConnGuard::become_device): the device's connect failed, and
    /// the connection goes on as any other (it may be evicted, and takes no device's place).
    pub fn not_a_device(&self) {
        let mut inner = self.register.inner.lock();
        if self.flags.device.swap(false, Ordering::AcqRel) {
            inner.devices -= 1;
        }
    }
}

impl Register {
    pub fn new(limit: usize) -> Arc<Register> {
        Arc::new(Register {
            limit: limit.max(REST_RESERVE * 2),
            inner: Mutex::new(RegisterInner::default()),
        })
    }

    /// A register sized to this process's descriptor limit — its soft limit, first raised to
    /// the hard one (as Go's runtime does at start): a server started from a shell or by
    /// systemd gets a soft limit of 1024 under a hard one of hundreds of thousands, and would
    /// otherwise refuse its 869th device for want of descriptors it may have for the asking.
    pub fn for_this_process() -> Arc<Register> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                // SAFETY: setrlimit reads the struct we pass. Raising the soft limit up to the
                // hard one needs no privilege; on failure the soft limit stands.
                if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        let register = Register::new(soft.saturating_sub(RESERVED_FDS));
        tracing::info!(
            descriptors = soft,
            devices = register.device_limit(),
            "connection limits"
        );
        register
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().open.len()
    }

    fn device_limit(&self) -> usize {
        self.limit - REST_RESERVE
    }

    fn admit(self: &Arc<Self>) -> ConnGuard {
        let flags = Arc::new(ConnFlags::default());
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, flags.clone());
        let over = inner.open.len().saturating_sub(self.limit);
        drop(inner);
        if over > 0 {
            self.evict(over);
        }
        ConnGuard {
            id,
            flags,
            register: self.clone(),
        }
    }

    /// Closes up to `n` of the oldest connections that serve no request and no device;
    /// returns how many it told to close.
    fn evict(&self, n: usize) -> usize {
        let inner = self.inner.lock();
        let mut told = 0;
        for flags in inner.open.values() {
            if told == n {
                break;
            }
            let busy = flags.busy.load(Ordering::Acquire);
            let reading = flags.reading.load(Ordering::Acquire);
            if busy <= reading && !flags.device.load(Ordering::Acquire) {
                flags.evict.notify_one();
                told += 1;
            }
        }
        told
    }
}

/// Accepts connections until `shutdown` turns true, serving each on its own task.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    router: Router,
    register: Arc<Register>,
    mut shutdown: watch::Receiver<bool>,
    tasks: tokio::sync::mpsc::Sender<()>,
    unread_timeout: Duration,
) {
    // A descriptor held in reserve: when the table is full, releasing it lets one pending
    // connection be accepted and told so, instead of waiting in the backlog.
    let mut spare = std::fs::File::open("/dev/null").ok();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let guard = register.admit();
                let (router, shutdown, done) = (router.clone(), shutdown.clone(), tasks.clone());
                tokio::spawn(async move {
                    serve(socket, peer, router, guard, shutdown, unread_timeout).await;
                    drop(done);
                });
            }
            Err(e) if is_fd_exhaustion(&e) => {
                tracing::warn!(error = %e, "file descriptors exhausted; closing idle connections");
                if register.evict(16) == 0 {
                    // Nothing to close: answer one waiting client with a refusal.
                    spare.take();
                    // Bounded: the client that was waiting may have gone, and shutdown waits
                    // for this loop.
                    let waiting = tokio::time::timeout(Duration::from_secs(1), listener.accept());
                    if let Ok(Ok((socket, _))) = waiting.await {
                        refuse(socket).await;
                    }
                    spare = std::fs::File::open("/dev/null").ok();
                }
                // Let the evicted connections close before accepting again.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
            }
        }
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Answers a connection the server has no room for, and closes it.
async fn refuse(mut socket: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"ActionStatus":"FAIL","ErrorInfo":"the server is at its connection limit; retry","ErrorCode":91000}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(reply.as_bytes())).await;
}

/// A request being answered on a connection, until its answer is written or dropped.
struct Answering(Arc<ConnFlags>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection until it closes, is evicted, or the server shuts down (then it
/// finishes the request in progress, for at most a few seconds).
async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    guard: ConnGuard,
    mut shutdown: watch::Receiver<bool>,
    unread_timeout: Duration,
) {
    let _ = socket.set_nodelay(true);
    set_unread_timeout(&socket, unread_timeout);
    let flags = guard.flags.clone();
    let guard = Arc::new(guard);
    let service = {
        let flags = flags.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let (router, flags, guard) = (router.clone(), flags.clone(), guard.clone());
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(ConnHandle(guard));
            async move {
                flags.busy.fetch_add(1, Ordering::AcqRel);
                let answering = Answering(flags);
                let response = router.oneshot(req.map(axum::body::Body::new)).await;
                // Busy until the answer is written, not only made: a connection evicted
                // between the two would lose an answer to an operation that took effect.
                // The guard goes with the body, dropped once hyper has sent it (or with the
                // connection).
                response.map(|r| {
                    r.map(|body| {
                        use http_body_util::BodyExt;
                        axum::body::Body::new(body.map_frame(move |frame| {
                            let _ = &answering;
                            frame
                        }))
                    })
                })
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = flags.evict.notified() => return,
        _ = shutdown.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(3), conn).await;
}

/// Has the kernel end `socket`'s connection once data sent on it has gone unread for
/// `timeout` — unacknowledged, or held behind the client's zero window (`TCP_USER_TIMEOUT`,
/// Linux). Why: a client that stops reading (an SSE client above all, which has no ping to
/// answer) leaves the server's writes pending, and a body hyper cannot write is never polled
/// again: without this its connection, device slot and session stayed for good. The write
/// then fails and the connection ends like any other. A client that reads, or a connection
/// with nothing in flight, is never affected. Elsewhere the option does not exist; WebSocket
/// writes keep their own deadline (`devices::WRITE_TIMEOUT`).
fn set_unread_timeout(socket: &TcpStream, timeout: Duration) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: a socket this process owns, and an option value of the size the kernel
        // reads for TCP_USER_TIMEOUT (an unsigned int).
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&raw const ms).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_USER_TIMEOUT not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, timeout);
}

/// The connection a request arrived on, for handlers that take it over (devices).
#[derive(Clone)]
pub struct ConnHandle(pub Arc<ConnGuard>);

impl ConnHandle {
    /// Runs `read` (a request body's reading) with the connection evictable meanwhile, as an
    /// idle one: under a full descriptor table, a client sending its body slowly is closed
    /// rather than let it hold its connection beyond eviction.
    pub async fn reading_body<T>(&self, read: impl Future<Output = T>) -> T {
        /// Counts the read until it ends, also when its future is dropped half way.
        struct Reading<'a>(&'a ConnFlags);
        impl Drop for Reading<'_> {
            fn drop(&mut self) {
                self.0.reading.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let flags = &*self.0.flags;
        flags.reading.fetch_add(1, Ordering::AcqRel);
        let _reading = Reading(flags);
        read.await
    }

    /// Takes a device's place for this connection while the returned value lives: `None`
    /// when device connections are at their cap. Held by a device's stream, so that the
    /// place is given back when the stream ends — an SSE stream ends (superseded, its session
    /// gone) and leaves an HTTP connection that may serve other requests, and must then be
    /// an ordinary one again: evictable, and taking no device's place.
    pub fn device_place(&self) -> Option<DevicePlace> {
        self.0.become_device().then(|| DevicePlace(self.clone()))
    }
}

/// A device's place on a connection ([`ConnHandle::device_place`]); given back on drop.
pub struct DevicePlace(ConnHandle);

impl Drop for DevicePlace {
    fn drop(&mut self) {
        (self.0).0.not_a_device();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose device failed to connect is an ordinary connection again: it takes
    /// no device's place, may be evicted, and closing it counts right.
    #[test]
    fn a_failed_device_connect_gives_its_place_back() {
        let register = Register::new(REST_RESERVE * 2);
        let places = register.device_limit();
        let devices: Vec<ConnGuard> = (0..places)
            .map(|_| {
                let g = register.admit();
                assert!(g.become_device());
                g
            })
            .collect();
        let extra = register.admit();
        assert!(!extra.become_device(), "every device place is taken");
        assert_eq!(
            register.evict(places + 1),
            1,
            "only the extra may be evicted"
        );
        devices[0].not_a_device();
        assert!(
            extra.become_device(),
            "the failed device's place is given back"
        );
        assert_eq!(
            register.evict(places + 1),
            1,
            "and it may be evicted like any other"
        );
        drop(devices);
        drop(extra);
        assert_eq!(register.inner.lock().devices, 0);
        assert_eq!(register.open(), 0);
    }
}
