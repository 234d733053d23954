//! What one client can hold of the listeners: connections per peer address, the time a
//! connection may take to send its first complete request, and how often its refusals are
//! logged. Both listeners (gRPC and HTTP) accept through [`incoming`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::Stream;

/// A connection that has not sent a complete request (gRPC: its first request's headers;
/// HTTP/1: each request's headers) within this is closed: a client that trickles a request in
/// must not hold a connection, a task and its buffers for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once from one IP address, by default (`--max-connections-per-peer`);
/// further ones are closed as they are accepted.
pub const CONNECTIONS_PER_PEER: usize = 64;

/// Streams one gRPC connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// At most one log line per peer address and this interval for refused calls, webhooks and
/// connections; the next line says how many were not logged.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Peers remembered for rate-limited logging; beyond it, refusals of peers not yet remembered
/// share one entry, so that many addresses cannot grow the table.
const REMEMBERED_PEERS: usize = 1024;

/// What limits the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections per peer IP address.
    pub per_peer: usize,
    /// How long a connection may take to send its first complete request; `None` when the
    /// protocol layer times out request headers itself (hyper's HTTP/1 server).
    pub first_request: Option<Duration>,
}

/// Accepts from `listener`, closing at once a connection from a peer that has
/// `limits.per_peer` open already.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    refusals: Arc<RefusalLog>,
) -> impl Stream<Item = io::Result<Connection>> + Send + 'static {
    let open = Arc::new(Mutex::new(HashMap::new()));
    futures::stream::unfold(listener, move |listener| {
        let (open, refusals) = (open.clone(), refusals.clone());
        async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => return Some((Err(error), listener)),
                };
                let Some(slot) = PeerSlot::take(&open, addr.ip(), limits.per_peer) else {
                    if let Some(suppressed) = refusals.admit(Some(addr.ip()), Instant::now()) {
                        tracing::warn!(
                            peer = %addr.ip(),
                            limit = limits.per_peer,
                            suppressed,
                            "refused a connection: the peer has the most connections allowed open"
                        );
                    }
                    drop(stream);
                    continue;
                };
                // An answer goes out in several writes (HTTP/2 headers, data, trailers); with
                // Nagle's algorithm the later ones wait for the client's delayed ACK, 40 ms on
                // Linux, on every call. tonic's own listener sets this; ours must too.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, peer = %addr, "could not set TCP_NODELAY");
                }
                let connection = Connection {
                    stream,
                    peer: Peer {
                        addr,
                        requested: Arc::new(AtomicBool::new(false)),
                    },
                    deadline: limits
                        .first_request
                        .map(|within| Box::pin(tokio::time::sleep(within))),
                    _slot: slot,
                };
                return Some((Ok(connection), listener));
            }
        }
    })
}

/// Holds one of a peer's connection slots until the connection is dropped.
struct PeerSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(open: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut counts = open
            .lock()
            .expect("the connection table is never held across a panic");
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Self {
            open: open.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .open
            .lock()
            .expect("the connection table is never held across a panic");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Who is at the other end of a connection; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    requested: Arc<AtomicBool>,
}

impl Peer {
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection delivered a complete request: its first-request deadline no longer
    /// applies.
    pub fn requested(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }
}

/// An accepted TCP connection that holds its peer's slot and fails its reads once its
/// first-request deadline passes without a complete request.
pub struct Connection {
    stream: TcpStream,
    peer: Peer,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: PeerSlot,
}

impl Connection {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if this.peer.requested.load(Ordering::Relaxed) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                // The error ends the connection: hyper (or the TLS handshake) gives up on it.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request within the header timeout",
                )));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Decides which refusals are logged: at most one line per peer address and
/// [`REFUSAL_LOG_INTERVAL`], so that a client hammering with bad tokens cannot fill the log.
#[derive(Default)]
pub struct RefusalLog {
    peers: Mutex<HashMap<IpAddr, Logged>>,
}

#[derive(Clone, Copy)]
struct Logged {
    at: Instant,
    suppressed: u64,
}

impl RefusalLog {
    /// `Some(n)` when a refusal by `peer` at `now` is to be logged, `n` being how many of its
    /// refusals were not logged since its last line; `None` to stay silent.
    pub fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut peers = self
            .peers
            .lock()
            .expect("the refusal table is never held across a panic");
        let mut key = peer.unwrap_or(unknown);
        if !peers.contains_key(&key) && peers.len() >= REMEMBERED_PEERS {
            peers.retain(|_, logged| now.duration_since(logged.at) < REFUSAL_LOG_INTERVAL);
            if peers.len() >= REMEMBERED_PEERS {
                key = unknown;
            }
        }
        match peers.get_mut(&key) {
            Some(logged) if now.duration_since(logged.at) < REFUSAL_LOG_INTERVAL => {
                logged.suppressed += 1;
                None
            }
            Some(logged) => {
                let suppressed = logged.suppressed;
                *logged = Logged {
                    at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                peers.insert(
                    key,
                    Logged {
                        at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_logged_once_per_interval_with_the_count_it_was_silenced() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let a = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let b = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(log.admit(a, start), Some(0));
        for i in 1..=5 {
            assert_eq!(log.admit(a, start + Duration::from_secs(i)), None);
        }
        assert_eq!(log.admit(b, start), Some(0), "peers are counted apart");
        assert_eq!(
            log.admit(a, start + REFUSAL_LOG_INTERVAL),
            Some(5),
            "the next line counts what was silenced"
        );
        assert_eq!(log.admit(a, start + REFUSAL_LOG_INTERVAL), None);
    }

    #[test]
    fn many_peers_do_not_grow_the_refusal_table_past_its_bound() {
        let log = RefusalLog::default();
        let now = Instant::now();
        for i in 0..(REMEMBERED_PEERS as u32 * 4) {
            log.admit(Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))), now);
        }
        let remembered = log.peers.lock().expect("not poisoned").len();
        assert!(
            remembered <= REMEMBERED_PEERS + 1,
            "{remembered} peers remembered"
        );
    }

    #[tokio::test]
    async fn an_accepted_connection_sends_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let limits = ConnectionLimits {
            per_peer: 4,
            first_request: None,
        };
        let mut accepted = Box::pin(incoming(listener, limits, Arc::default()));
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let connection = futures::StreamExt::next(&mut accepted)
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(
            connection.stream.nodelay().expect("readable option"),
            "Nagle's algorithm holds the second write of an answer for the client's delayed ACK"
        );
    }
}
