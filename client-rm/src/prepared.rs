//! Requests built, signed and paid for ahead of sending.
//!
//! A load generator that encrypts, signs and pays for each message at its due time spends more
//! CPU than the hub it measures, so the hub's own limit is never reached. Here the expensive
//! part happens first ([`crate::Client::prepare_messages`]) and sending is one POST
//! ([`Transport::send_prepared`]). A prepared request carries the time it was built: the hub
//! refuses it once that is older than its freshness window, so send it within that window.

use crate::connections::Scope;
use crate::error::ClientError;
use crate::transport::{MAX_RESPONSE, Transport, ds_route, ds_transaction, envelope};
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::ds::{DsRequest, DsResponse};
use mimi_rm_protocol::tokens::PresentedToken;

/// One DS request ready to go: its envelope, endpoint, connection scope and token. Not
/// `Debug`: the token inside is a bearer credential until the hub has seen it.
pub struct PreparedRequest {
    path: &'static str,
    scope: Scope,
    body: Vec<u8>,
    token: Option<PresentedToken>,
    timestamp_ms: u64,
}

impl PreparedRequest {
    /// When the request was signed (its `timestamp_ms`), in ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// Whether a token was attached: the wallet has seen the hub ask for tokens for the
    /// request's rate class (a prepared request is never retried with one).
    pub fn is_paid(&self) -> bool {
        self.token.is_some()
    }
}

impl Transport {
    /// Envelopes `requests` and, when the hub is known to want tokens for their rate class,
    /// takes one token per request from the wallet in a single store write.
    pub(crate) async fn prepare_ds(
        &self,
        requests: Vec<DsRequest>,
    ) -> Result<Vec<PreparedRequest>, ClientError> {
        let mut pays = Vec::with_capacity(requests.len());
        for req in &requests {
            let (_, class, _) = ds_route(req);
            pays.push(match (self.wallet(), class) {
                (Some(w), Some(c)) => w.is_limited(c).await,
                _ => false,
            });
        }
        let paying = pays.iter().filter(|p| **p).count();
        let mut tokens = match self.wallet() {
            Some(wallet) if paying > 0 => wallet
                .take_many(&self.http_for(&Scope::Identity)?, self.base(), paying)
                .await?
                .into_iter(),
            _ => Vec::new().into_iter(),
        };
        let mut out = Vec::with_capacity(requests.len());
        for (req, pays) in requests.into_iter().zip(pays) {
            let (path, _, scope) = ds_route(&req);
            out.push(PreparedRequest {
                path,
                scope,
                body: envelope(ds_transaction(&req), &req)?,
                token: if pays { tokens.next() } else { None },
                timestamp_ms: req.tbs.timestamp_ms,
            });
        }
        Ok(out)
    }

    /// Sends a prepared request once, on its own connection scope. No retry and no token
    /// renewal: a refusal (a stale timestamp, a spent token) is returned as it came, so a
    /// measurement counts it instead of hiding it behind a second attempt.
    pub async fn send_prepared(&self, request: PreparedRequest) -> Result<DsResponse, ClientError> {
        let bytes = self
            .send(
                &request.scope,
                request.path,
                request.body,
                request.token.as_ref(),
            )
            .await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }
}
