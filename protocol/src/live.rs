//! Live delivery over a WebSocket at [`crate::paths::QS_LIVE`].
//!
//! The client's first frame is a signed QS request: a `Dequeue` by its client (queue) key, as
//! it would `POST` to `/qs/request`; the hub validates it exactly so (signature, freshness,
//! replay) and answers with a [`READY`] frame carrying the response. From then on the hub sends
//! a one-byte [`WAKE`] frame whenever the client's queue grows — never the messages themselves:
//! the client dequeues and acknowledges over HTTPS as always, so delivery stays at-least-once
//! with the same acknowledgement. A refused first frame gets an [`ERROR`] frame (the
//! TLS-encoded `ErrorResponse`) and a close. Every frame is binary; the first byte is its kind.

/// The subscription is in force; the rest is the TLS-encoded `QsResponse` of the first frame.
pub const READY: u8 = 0;
/// The queue grew since the last wake-up: dequeue.
pub const WAKE: u8 = 1;
/// The first frame was refused; the rest is the TLS-encoded `ErrorResponse`.
pub const ERROR: u8 = 2;
/// Longest frame either side accepts (a signed dequeue is ~150 bytes).
pub const MAX_FRAME: usize = 4096;
/// Seconds within which the first frame must arrive.
pub const AUTH_TIMEOUT_SECS: u64 = 10;
/// The hub pings every this many seconds and closes a WebSocket that did not answer the
/// previous ping.
pub const PING_SECS: u64 = 20;
