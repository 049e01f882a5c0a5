//! A TCP load balancer for the multi-process tests: each connection goes to a backend chosen
//! at random among those that accept it, so clients behind one address fail over when a hub
//! process dies, as behind an operator's balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};

/// A running balancer; stops when dropped.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    per_backend: Arc<Vec<AtomicU64>>,
}

impl Balancer {
    /// Balances connections to `backends` (must be called inside a tokio runtime).
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind balancer");
        let addr = listener.local_addr().expect("balancer addr");
        let per_backend = Arc::new(
            backends
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>(),
        );
        let counts = per_backend.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backends = backends.clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let first = rand::random::<usize>() % backends.len();
                    for i in 0..backends.len() {
                        let which = (first + i) % backends.len();
                        if let Ok(mut outbound) = TcpStream::connect(backends[which]).await {
                            counts[which].fetch_add(1, Ordering::Relaxed);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            task,
            per_backend,
        }
    }

    /// The balancer's URL (plain HTTP).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections each backend got so far.
    pub fn connections(&self) -> Vec<u64> {
        self.per_backend
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
