//! Messages our QS stored once for several of its queues (large commits): our queue entry
//! holds only a reference — the stored message's id, its key and our release ticket. We fetch
//! and open the message when we consume the entry, and release the ticket with the dequeue
//! that acknowledges it, so the QS deletes the message once every recipient has read it.

use super::requests::signed_qs;
use super::{Client, MAX_MESSAGE};
use crate::error::ClientError;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::qs::{QsOperation, QsResponse, QsSender, StoredTicket};
use mimi_rm_protocol::queue::{QueueMessage, STORED_EAR_DOMAIN, STORED_ID_LEN, StoredRef};

/// Most releases one dequeue carries (the QS refuses more); the rest go with the next.
const RELEASES_PER_DEQUEUE: usize = 256;

impl Client {
    /// Fetches the message `r` refers to from our QS and opens it. A message the QS no longer
    /// holds, or one that does not open under the reference's key, is an error of this entry
    /// alone; a QS that cannot be reached leaves the entry to be consumed later.
    pub(super) async fn open_stored(&self, r: &StoredRef) -> Result<QueueMessage, ClientError> {
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::FetchStored(vec![r.id]),
        )?;
        let answer = match self.transport.qs(&req).await {
            Ok(a) => a,
            // A hub that is overloaded or failing now may serve the message later: leave the
            // entry unconsumed rather than lose the commit.
            Err(ClientError::Hub { status, response }) if status >= 500 || status == 429 => {
                return Err(ClientError::Transport(format!(
                    "stored message not fetched ({status}): {response}"
                )));
            }
            Err(e) => return Err(e),
        };
        let QsResponse::Stored(found) = answer else {
            return Err(ClientError::Unexpected("expected Stored"));
        };
        let stored = found
            .into_iter()
            .find(|m| m.id == r.id)
            .ok_or_else(|| ClientError::State("the QS no longer holds a stored message".into()))?;
        let key = EarKey::from_bytes(&r.key)?;
        let plain = zeroize::Zeroizing::new(ear::open(
            &key,
            STORED_EAR_DOMAIN,
            &r.id,
            stored.ciphertext.as_slice(),
        )?);
        match decode_exact::<QueueMessage>(&plain, MAX_MESSAGE) {
            Ok(QueueMessage::Stored(_)) => Err(ClientError::State(
                "a stored message refers to another stored message".into(),
            )),
            Ok(m) => Ok(m),
            Err(e) => Err(ClientError::State(e.to_string())),
        }
    }

    /// Notes that the entry referring to `r` is consumed: its ticket goes with the next
    /// dequeue. The caller persists it together with the advanced ratchet.
    pub(super) fn owe_release(&mut self, r: &StoredRef) {
        let mut both = Vec::with_capacity(2 * STORED_ID_LEN);
        both.extend_from_slice(&r.id);
        both.extend_from_slice(&r.ticket);
        self.state.pending_releases.push(hex::encode(both));
    }

    /// The releases the next dequeue carries: the oldest owed, at most what the QS accepts.
    pub(super) fn releases_due(&self) -> Result<Vec<StoredTicket>, ClientError> {
        self.state
            .pending_releases
            .iter()
            .take(RELEASES_PER_DEQUEUE)
            .map(|h| {
                let both = crate::state::unhex(h)?;
                let (id, ticket) = both
                    .split_first_chunk::<STORED_ID_LEN>()
                    .ok_or_else(|| ClientError::State("pending release too short".into()))?;
                Ok(StoredTicket {
                    id: *id,
                    ticket: ticket
                        .try_into()
                        .map_err(|_| ClientError::State("pending release length".into()))?,
                })
            })
            .collect()
    }

    /// Forgets the `sent` oldest releases once a dequeue carrying them was answered (the QS
    /// applied them with that dequeue; a repeat would do nothing).
    pub(super) fn released(&mut self, sent: usize) -> Result<(), ClientError> {
        if sent == 0 {
            return Ok(());
        }
        self.state.pending_releases.drain(..sent);
        self.persist()
    }
}
