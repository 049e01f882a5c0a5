//! Waiting for events: over the live socket when the hub offers one, by polling otherwise.

use super::requests::signed_qs;
use super::{Client, Event};
use crate::error::ClientError;
use crate::live::LiveSocket;
use crate::state::unhex;
use crate::transport::envelope;
use mimi_rm_crypto::ratchet::QueueRatchet;
use mimi_rm_protocol::TransactionType;
use mimi_rm_protocol::qs::*;
use std::time::Duration;

/// Longest pause between reconnection attempts (and between polls while disconnected).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a client waits for what arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listening {
    /// Keep a live socket to the QS and fetch when it says the queue grew; poll every
    /// `fallback` while no socket can be opened.
    Live {
        /// Poll interval while the live socket is down.
        fallback: Duration,
    },
    /// Fetch every `every`, no socket.
    Poll {
        /// Poll interval.
        every: Duration,
    },
}

impl Default for Listening {
    fn default() -> Self {
        Self::Live {
            fallback: Duration::from_secs(5),
        }
    }
}

/// What waiting for events did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenStats {
    /// Live sockets opened (the first one and every reconnection).
    pub connects: u64,
    /// Attempts to open one that failed.
    pub connect_failures: u64,
    /// Wake-ups received.
    pub wakes: u64,
    /// Fetches made while waiting (after a wake-up, a (re)connection, or a poll).
    pub fetches: u64,
    /// Fetches made by polling (no socket).
    pub polls: u64,
}

/// The live-socket side of a client.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) socket: Option<LiveSocket>,
    failures: u32,
    pub(super) mode: Listening,
    pub(super) stats: ListenStats,
}

/// Exponential back-off from 100 ms, capped at `cap`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(10));
    Duration::from_millis(ms).min(cap).min(MAX_BACKOFF)
}

impl Client {
    /// How [`Client::next_events`] waits (default: live socket, polling every 5 s while none).
    pub fn set_listening(&mut self, mode: Listening) {
        self.live.mode = mode;
        self.live.socket = None;
    }

    /// What waiting for events did since this client was opened.
    pub fn listen_stats(&self) -> ListenStats {
        self.live.stats
    }

    /// Waits until at least one event is stored, then returns every stored event with its
    /// number (show them, then call [`Client::events_shown`]). Keeps a live socket to the QS:
    /// fetches right after (re)connecting — whatever arrived while away — and after each
    /// wake-up, never on a timer; reconnects with exponential back-off, polling meanwhile. Hub
    /// outages are waited out; only errors that waiting cannot cure are returned.
    pub async fn next_events(&mut self) -> Result<Vec<(u64, Event)>, ClientError> {
        loop {
            let events = self.stored_events()?;
            if !events.is_empty() {
                return Ok(events);
            }
            let mode = match self.live.mode {
                // A socket would show the hub our address next to our queue: with an OHTTP
                // relay we poll through it instead.
                Listening::Live { fallback } if self.transport.ohttp_relay().is_some() => {
                    Listening::Poll { every: fallback }
                }
                mode => mode,
            };
            let fallback = match mode {
                Listening::Poll { every } => {
                    tokio::time::sleep(every).await;
                    self.live.stats.polls += 1;
                    self.fetch_while_waiting().await?;
                    continue;
                }
                Listening::Live { fallback } => fallback,
            };
            let Some(socket) = self.live.socket.as_mut() else {
                match self.open_live().await {
                    Ok(socket) => {
                        self.live.socket = Some(socket);
                        self.live.failures = 0;
                        self.live.stats.connects += 1;
                        tracing::debug!("live socket open");
                    }
                    Err(e) => {
                        self.live.stats.connect_failures += 1;
                        let pause = backoff(self.live.failures, fallback);
                        self.live.failures = self.live.failures.saturating_add(1);
                        tracing::debug!(error = %e, ?pause, "no live socket; polling");
                        if !matches!(e, ClientError::Transport(_) | ClientError::Hub { .. }) {
                            return Err(e);
                        }
                        tokio::time::sleep(pause).await;
                        self.live.stats.polls += 1;
                    }
                }
                self.fetch_while_waiting().await?;
                continue;
            };
            match socket.wake().await {
                Ok(()) => {
                    self.live.stats.wakes += 1;
                    self.fetch_while_waiting().await?;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "live socket lost; reconnecting");
                    self.live.socket = None;
                }
            }
        }
    }

    /// A fetch inside [`Client::next_events`]: a hub that cannot be reached is waited for.
    async fn fetch_while_waiting(&mut self) -> Result<(), ClientError> {
        self.live.stats.fetches += 1;
        match self.fetch().await {
            Ok(()) => Ok(()),
            Err(ClientError::Transport(e) | ClientError::PeerUnavailable(e)) => {
                tracing::debug!(error = %e, "hub unreachable while waiting");
                self.live.socket = None;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the live socket, subscribed by a signed dequeue at our current queue position.
    async fn open_live(&self) -> Result<LiveSocket, ClientError> {
        let ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::Dequeue(Dequeue {
                ack_below: ratchet.next_seq(),
                max: 0,
                release: Vec::new(),
            }),
        )?;
        LiveSocket::open(
            &self.transport,
            envelope(TransactionType::QueueService, &req)?,
        )
        .await
    }

    /// Closes the live socket, if one is open (the next [`Client::next_events`] reopens it).
    pub async fn close_live(&mut self) {
        if let Some(s) = self.live.socket.take() {
            s.close().await;
        }
    }
}

/// A client's events as a stream, for applications that react to what arrives (a chat screen,
/// a bot): each call of [`Events::next`] returns the next event; the one before is marked shown
/// only then, so an event is handed out again after a crash unless the application had asked
/// for the next one. The client stays usable in between ([`Events::client`]), e.g. to answer.
#[derive(Debug)]
pub struct Events {
    client: Client,
    buffer: std::collections::VecDeque<(u64, Event)>,
    /// The number of the event handed out last, not yet marked shown.
    handed_out: Option<u64>,
}

impl Client {
    /// This client's events as an [`Events`] stream.
    pub fn into_events(self) -> Events {
        Events {
            client: self,
            buffer: std::collections::VecDeque::new(),
            handed_out: None,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.state.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// The next event and its number, waiting for one as [`Client::next_events`] does.
    pub async fn next(&mut self) -> Result<(u64, Event), ClientError> {
        if let Some(n) = self.handed_out.take() {
            self.client.events_shown(n)?;
        }
        loop {
            if let Some((n, e)) = self.buffer.pop_front() {
                self.handed_out = Some(n);
                return Ok((n, e));
            }
            let floor = self.handed_out.unwrap_or(0);
            self.buffer = self
                .client
                .next_events()
                .await?
                .into_iter()
                .filter(|(n, _)| *n > floor)
                .collect();
        }
    }

    /// The client, to act between events (send an answer, look at a group).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The client back, with the last event handed out marked shown.
    pub fn into_client(mut self) -> Result<Client, ClientError> {
        if let Some(n) = self.handed_out.take() {
            self.client.events_shown(n)?;
        }
        Ok(self.client)
    }

    /// The same as a [`futures_util::Stream`] of results.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<(u64, Event), ClientError>> + Send {
        futures_util::stream::unfold(self, |mut events| async move {
            let item = events.next().await;
            Some((item, events))
        })
    }
}
