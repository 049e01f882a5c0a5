//! The client's end of the live-delivery WebSocket (`mimi_rm_protocol::live`).
//!
//! One socket to the home QS, opened with a signed dequeue of our queue; the hub then says
//! "your queue grew" and the client dequeues over HTTPS as always. wss runs over our own
//! tokio-rustls connector (the ring provider, the web roots plus the transport's extra CA), so
//! the client has one TLS stack.

use crate::error::ClientError;
use crate::transport::Transport;
use futures_util::{SinkExt as _, StreamExt as _};
use mimi_rm_protocol::live::{ERROR, MAX_FRAME, READY, WAKE};
use mimi_rm_protocol::{ErrorResponse, decode_exact, paths};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long connecting (TCP, TLS, upgrade, subscription) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A socket silent for this long is taken as dead (the hub pings every 20 s).
const SILENCE: Duration = Duration::from_secs(60);

/// TCP, or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open, subscribed live socket.
pub struct LiveSocket {
    ws: WebSocketStream<Stream>,
}

impl std::fmt::Debug for LiveSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSocket")
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(format!("live socket: {what}: {e}"))
}

/// The TLS connector for the hub: the web's roots plus the transport's extra ones.
fn connector(extra_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| failed("root CA certificate", e))?;
            roots
                .add(cert)
                .map_err(|e| failed("root CA certificate", e))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| failed("TLS configuration", e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl LiveSocket {
    /// Connects to the hub of `transport` and subscribes with `first_frame` (a signed dequeue,
    /// enveloped as for `/qs/request`). A refusal comes back as the hub's error.
    pub async fn open(transport: &Transport, first_frame: Vec<u8>) -> Result<Self, ClientError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open_inner(transport, first_frame))
            .await
            .map_err(|_| transport_err("timed out"))?
    }

    async fn open_inner(transport: &Transport, first_frame: Vec<u8>) -> Result<Self, ClientError> {
        let base = reqwest::Url::parse(transport.base()).map_err(transport_err)?;
        let host = base
            .host_str()
            .ok_or_else(|| transport_err("hub URL has no host"))?
            .to_owned();
        let port = base
            .port_or_known_default()
            .ok_or_else(|| transport_err("hub URL has no port"))?;
        let tcp = connect(&host, port, transport.local_address()).await?;
        tcp.set_nodelay(true).map_err(|e| failed("connecting", e))?;
        let (stream, scheme) = match base.scheme() {
            "https" => {
                let name =
                    ServerName::try_from(host.clone()).map_err(|e| failed("server name", e))?;
                let tls = connector(transport.root_ca_pem())?
                    .connect(name, tcp)
                    .await
                    .map_err(|e| failed("TLS", e))?;
                (Stream::Tls(Box::new(tls)), "wss")
            }
            "http" => (Stream::Plain(tcp), "ws"),
            other => return Err(failed("scheme", other)),
        };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("{scheme}://{bracketed}:{port}{}", paths::QS_LIVE);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| failed("upgrade", e))?;
        ws.send(Message::Binary(first_frame.into()))
            .await
            .map_err(|e| failed("subscribing", e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => match b.split_first() {
                    Some((&READY, _)) => return Ok(Self { ws }),
                    Some((&ERROR, rest)) => {
                        let response: ErrorResponse =
                            decode_exact(rest, MAX_FRAME).map_err(|e| failed("refusal", e))?;
                        return Err(ClientError::Hub {
                            status: response.code.http_status(),
                            response,
                        });
                    }
                    _ => return Err(transport_err("unexpected frame")),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(_)) | None => return Err(transport_err("closed while subscribing")),
                Some(Err(e)) => return Err(failed("subscribing", e)),
            }
        }
    }

    /// Waits for the next wake-up: the queue grew. An error means the socket is gone.
    pub async fn wake(&mut self) -> Result<(), ClientError> {
        loop {
            let next = tokio::time::timeout(SILENCE, self.ws.next())
                .await
                .map_err(|_| transport_err("silent too long"))?;
            match next {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&WAKE) => return Ok(()),
                // Pings are answered by the library as it reads.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Err(transport_err("closed")),
                Some(Ok(_)) => return Err(transport_err("unexpected frame")),
                Some(Err(e)) => return Err(failed("reading", e)),
            }
        }
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn transport_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(format!("live socket: {e}"))
}

/// A TCP connection to `host:port`, from `local` when the transport binds to a local address
/// (as its HTTP connections do), to an address of the same family.
async fn connect(host: &str, port: u16, local: Option<IpAddr>) -> Result<TcpStream, ClientError> {
    let Some(local) = local else {
        return TcpStream::connect((host, port))
            .await
            .map_err(|e| failed("connecting", e));
    };
    let remote = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| failed("resolving", e))?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| failed("resolving", "no address of the local address's family"))?;
    let socket = match local {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| failed("connecting", e))?;
    socket
        .bind(std::net::SocketAddr::new(local, 0))
        .map_err(|e| failed("binding the local address", e))?;
    socket
        .connect(remote)
        .await
        .map_err(|e| failed("connecting", e))
}
