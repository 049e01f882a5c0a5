//! The accept loop of `ds-rm serve`, for plain HTTP and HTTPS alike.
//!
//! A hub faces the internet, so a connection that sends nothing, sends its header a byte at a
//! time, or stays open after its last request must not keep a file descriptor for long, and no
//! crowd of them may starve the clients that talk. Every connection therefore gets
//! - a header-read timeout, which hyper also applies while a kept-alive connection waits for
//!   its next request (so it is the idle limit too);
//! - a slot under a global limit, kept below the process's open-file limit so that `accept`
//!   itself never fails for want of descriptors, and under a per-address limit, so one address
//!   cannot take every slot. A connection over either limit is closed at once, with a log line
//!   (at most one per second per limit).
//!
//! A connection upgraded to a WebSocket (live delivery) keeps its slot until the WebSocket
//! closes.
//!
//! Graceful shutdown: stop accepting, let in-flight requests finish, then close.

use crate::config::Config;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors kept back from the connection limit for the store, outgoing federation
/// requests and the process itself.
const RESERVED_DESCRIPTORS: usize = 64;

/// The connection limits in force, from the configuration and the process's open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_per_address: usize,
    /// Longest wait for a request header (also the idle limit of a kept-alive connection).
    pub header_read_timeout: Duration,
}

impl Limits {
    /// The configured limits, the global one lowered to fit `open_files` descriptors (the soft
    /// `RLIMIT_NOFILE`, when known) less a reserve, the per-address one to half the global.
    pub fn new(cfg: &Config, open_files: Option<usize>) -> Self {
        let fits = open_files.map_or(usize::MAX, |n| n.saturating_sub(RESERVED_DESCRIPTORS));
        let max_connections = cfg.max_connections.min(fits).max(1);
        Self {
            max_connections,
            // One address never holds more than half of all slots.
            max_per_address: cfg
                .max_connections_per_address
                .min(max_connections / 2)
                .max(1),
            header_read_timeout: Duration::from_secs(cfg.header_read_timeout_secs.max(1)),
        }
    }
}

/// The soft open-file limit of this process, read from `/proc/self/limits` (Linux); `None`
/// where that file does not exist or says "unlimited".
pub fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Who holds a connection slot: counts per address and in total.
#[derive(Debug)]
struct Slots {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    last_warning: Mutex<Option<Instant>>,
}

/// A held slot; dropping it frees the slot.
struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    Address,
}

impl Slots {
    fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new((0, HashMap::new())),
            last_warning: Mutex::new(None),
        })
    }

    fn take(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *open;
        if *total >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        let mine = per.entry(address).or_insert(0);
        if *mine >= self.limits.max_per_address {
            return Err(Refusal::Address);
        }
        *mine += 1;
        *total += 1;
        Ok(Slot {
            slots: self.clone(),
            address,
        })
    }

    /// Logs a refusal, at most once a second, with the numbers an operator needs.
    fn warn(&self, refusal: Refusal, peer: SocketAddr) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        match refusal {
            Refusal::Total => tracing::warn!(
                limit = self.limits.max_connections,
                "connection limit reached: closing new connections until some end \
                 (max_connections, capped by the open-file limit)"
            ),
            Refusal::Address => tracing::warn!(
                address = %peer.ip(),
                limit = self.limits.max_per_address,
                "per-address connection limit reached: closing this address's new connections \
                 (max_connections_per_address)"
            ),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.address);
            }
        }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`, else plain HTTP/1.1) until `shutdown`
/// resolves, under `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    tracing::info!(
        max_connections = limits.max_connections,
        max_per_address = limits.max_per_address,
        header_read_timeout_secs = limits.header_read_timeout.as_secs(),
        "connection limits"
    );
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Slots::new(limits);
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match slots.take(peer.ip()) {
                    Ok(slot) => {
                        connections.spawn(connection(
                            acceptor.clone(),
                            tcp,
                            peer,
                            router.clone(),
                            limits.header_read_timeout,
                            stop_rx.clone(),
                            slot,
                        ));
                    }
                    Err(refusal) => {
                        slots.warn(refusal, peer);
                        drop(tcp);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Wakes every connection task; each lets its current request finish, then closes.
    drop(stop_tx);
    while connections.join_next().await.is_some() {}
}

/// A stream that holds its connection slot: the slot is freed when the stream is dropped, which
/// for a connection upgraded to a WebSocket is when the WebSocket closes, not when HTTP ends.
struct Slotted<IO> {
    io: IO,
    _slot: Slot,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Slotted<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Slotted<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One connection: TLS handshake if configured, then HTTP/1.1 until the peer closes, a timeout
/// fires or shutdown begins. The slot is held for the connection's whole life, a WebSocket's
/// included.
async fn connection(
    acceptor: Option<TlsAcceptor>,
    tcp: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<()>,
    slot: Slot,
) {
    let Some(acceptor) = acceptor else {
        let io = Slotted {
            io: tcp,
            _slot: slot,
        };
        return http(io, peer, router, header_read_timeout, stop).await;
    };
    let tls = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => {
            match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
        _ = stop.changed() => return,
    };
    let io = Slotted {
        io: tls,
        _slot: slot,
    };
    http(io, peer, router, header_read_timeout, stop).await;
}

/// HTTP/1.1 over one stream, with hyper's timer on so its header-read timeout fires.
async fn http(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    router: axum::Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<()>,
) {
    // The peer's address, for the one handler that counts by it (open registration tokens).
    let router = router.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        // A live-delivery WebSocket takes the connection over (see `live.rs`).
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> Limits {
        Limits {
            max_connections: total,
            max_per_address: per,
            header_read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn slots_are_bounded_in_total_and_per_address_and_freed_on_drop() {
        let slots = Slots::new(limits(3, 2));
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(Refusal::Address));
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some(Refusal::Total));
        drop(a1);
        assert!(slots.take(b).is_ok());
    }

    #[test]
    fn the_global_limit_fits_the_open_file_limit() {
        let cfg = Config::default();
        let tight = Limits::new(&cfg, Some(256));
        assert_eq!(tight.max_connections, 256 - 64);
        assert_eq!(tight.max_per_address, (256 - 64) / 2);
        assert_eq!(Limits::new(&cfg, None).max_connections, cfg.max_connections);
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
