//! Our queue at the QS: fetching, decrypting and acknowledging entries, the queue ratchet
//! rekey, and keepalive updates.

use super::requests::signed_qs;
use super::{Client, Event, GroupHandle, MAX_MESSAGE, REKEY_EVERY, b32, now_ms};
use crate::error::ClientError;
use crate::state::unhex;
use mimi_rm_crypto::ratchet::QueueRatchet;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::queue::*;

impl Client {
    /// Processes everything queued for us inside another call; the events are stored for the
    /// next `receive` (or [`Client::stored_events`]).
    pub(super) async fn catch_up(&mut self) -> Result<(), ClientError> {
        // As in `receive`: an invitation from a contact elsewhere needs that provider's roots.
        if let Err(e) = self.ensure_contact_anchors().await {
            tracing::warn!(error = %e, "could not fetch a contact provider's AS credentials");
        }
        self.receive_into().await
    }

    /// Fetches, decrypts and processes everything queued for us, then acknowledges it; returns
    /// every event not yet taken (those found by other calls or before a crash included).
    pub async fn receive(&mut self) -> Result<Vec<Event>, ClientError> {
        self.fetch().await?;
        self.take_events()
    }

    /// Like [`Client::receive`], leaving the events stored: for applications that show them and
    /// then call [`Client::events_shown`], so that a crash in between loses none.
    pub async fn fetch(&mut self) -> Result<(), ClientError> {
        // Members from our contacts' providers must be verifiable before we process joins; a
        // provider that is down must not stop us from receiving, so this is best effort.
        if let Err(e) = self.ensure_contact_anchors().await {
            tracing::warn!(error = %e, "could not fetch a contact provider's AS credentials");
        }
        // Members verified below are checked against lists at most one interval old.
        self.refresh_revocations_if_due().await;
        match self.receive_into().await {
            Ok(()) => {
                if self.state.received_since_rekey >= REKEY_EVERY
                    && let Err(e) = self.rekey_queue().await
                {
                    tracing::warn!(error = %e, "queue rekey failed; will retry");
                }
                self.keep_alive().await;
                if let Err(e) = self.finish_friendship_rotation().await {
                    tracing::warn!(error = %e, "could not finish a friendship rotation; will retry");
                }
                // Keepalive updates may have caught up inside.
                self.persist()
            }
            // What was processed is stored and must reach the caller; the rest (and the
            // acknowledgement) follows with the next call.
            Err(e) if self.waiting_events()? > 0 => {
                tracing::warn!(error = %e, "receive interrupted; returning what arrived");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes this device's queue (and AddPackages) at our QS: whatever is sent to it
    /// afterwards is dropped, and the hub proposes removing this device from its groups.
    pub async fn delete_queue(&mut self) -> Result<(), ClientError> {
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::DeleteClient,
        )?;
        self.transport.qs(&req).await?;
        Ok(())
    }

    /// Updates in every group where we have been silent for the keepalive period (see
    /// [`Client::set_keepalive`]); failures are logged and retried at the next `receive`.
    async fn keep_alive(&mut self) {
        let due = now_ms().saturating_sub(self.keepalive_ms);
        let quiet: Vec<GroupHandle> = self
            .groups()
            .into_iter()
            .filter(|g| self.meta(g).is_ok_and(|m| m.last_request_ms < due))
            .collect();
        for group in quiet {
            if let Err(e) = self.update(&group).await {
                tracing::debug!(group = %group, error = %e, "keepalive update failed");
            }
        }
    }

    /// Mixes fresh randomness into our queue ratchet at the QS and here (post-compromise
    /// security: whoever copied the QS's ratchet state before cannot read what comes after).
    /// Safe to repeat after a failure: the same randomness is re-sent until confirmed.
    pub async fn rekey_queue(&mut self) -> Result<(), ClientError> {
        let fresh: [u8; 32] = match &self.state.in_flight_rekey {
            Some(h) => b32(&unhex(h)?)?,
            None => {
                let r = mimi_rm_crypto::ids::random_bytes();
                self.state.in_flight_rekey = Some(hex::encode(r));
                self.persist()?;
                r
            }
        };
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::RekeyQueue(fresh.to_vec().into()),
        )?;
        let QsResponse::Rekeyed(seq) = self.transport.qs(&req).await? else {
            return Err(ClientError::Unexpected("expected Rekeyed"));
        };
        self.state.pending_mixes.push((seq, hex::encode(fresh)));
        self.state.in_flight_rekey = None;
        self.state.received_since_rekey = 0;
        let mut ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
        self.apply_due_mixes(&mut ratchet)?;
        self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
        self.persist()
    }

    /// Applies the confirmed rekeys that take effect at the ratchet's current position; the
    /// caller saves the ratchet right after, keeping the saved state and the pending list in
    /// step.
    fn apply_due_mixes(&mut self, ratchet: &mut QueueRatchet) -> Result<(), ClientError> {
        while let Some(pos) = self
            .state
            .pending_mixes
            .iter()
            .position(|(s, _)| *s == ratchet.next_seq())
        {
            let (_, fresh) = self.state.pending_mixes.remove(pos);
            ratchet.mix(&b32(&unhex(&fresh)?)?);
        }
        Ok(())
    }

    /// Reads our whole queue: decrypts and processes every entry (storing its events with the
    /// state it changed), then acknowledges what was consumed.
    async fn receive_into(&mut self) -> Result<(), ClientError> {
        if self.state.in_flight_rekey.is_some() {
            // A rekey whose answer we never saw may be in force at the QS: learn where.
            self.rekey_queue().await?;
        }
        let auth = self.client_auth()?;
        let id = self.client_id()?;
        loop {
            let mut ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
            let release = self.releases_due()?;
            let released = release.len();
            let op = QsOperation::Dequeue(Dequeue {
                ack_below: ratchet.next_seq(),
                max: 100,
                release,
            });
            let QsResponse::Messages(batch) = self
                .transport
                .qs(&signed_qs(&auth, QsSender::Client(id), op)?)
                .await?
            else {
                return Err(ClientError::Unexpected("expected Messages"));
            };
            self.released(released)?;
            if batch.messages.is_empty() {
                break;
            }
            // Invariant: the saved ratchet has every confirmed rekey at its position applied, so
            // nothing is mixed before a message is decrypted, only right after it advanced.
            for m in batch.messages {
                if m.seq > ratchet.next_seq() {
                    self.skip_expired(&mut ratchet, m.seq)?;
                }
                self.consume(&mut ratchet, m).await?;
            }
            if batch.remaining == 0 {
                break;
            }
        }
        self.acknowledge(&auth, id).await
    }

    /// The QS expired messages we never fetched, up to `seq`: steps the ratchet over them
    /// (applying any rekey on the way) and saves that before going on.
    fn skip_expired(&mut self, ratchet: &mut QueueRatchet, seq: u64) -> Result<(), ClientError> {
        tracing::warn!(
            missing = seq - ratchet.next_seq(),
            "queued messages expired before we fetched them"
        );
        while ratchet.next_seq() < seq {
            ratchet.skip()?;
            self.apply_due_mixes(ratchet)?;
        }
        self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
        self.persist()
    }

    /// Decrypts and processes the next queue entry, then commits the advanced ratchet with the
    /// entry's events and the state they changed, in one transaction, before anything is
    /// acknowledged: a crash at any point either re-reads the entry or has its events stored.
    /// An entry that cannot be processed becomes [`Event::Undecryptable`]; one that failed
    /// because the hub went away stays unconsumed.
    async fn consume(
        &mut self,
        ratchet: &mut QueueRatchet,
        m: QueuedCiphertext,
    ) -> Result<(), ClientError> {
        let plain = match ratchet.decrypt_next(m.seq, m.ciphertext.as_slice()) {
            Ok(p) => p,
            Err(e) => {
                // Without this key no later message can be read either: stop here.
                return Err(ClientError::Crypto(e));
            }
        };
        let mut stored = None;
        let event = match decode_exact::<QueueMessage>(&plain, MAX_MESSAGE) {
            Ok(QueueMessage::Stored(r)) => {
                let opened = self.open_stored(&r).await;
                stored = Some(r);
                match opened {
                    Ok(msg) => self.handle(msg).await,
                    Err(e) => Err(e),
                }
            }
            Ok(msg) => self.handle(msg).await,
            Err(e) => Err(ClientError::State(e.to_string())),
        };
        match event {
            Ok(evs) => self.record(evs),
            // The hub went away while we handled this entry (e.g. fetching a Welcome's
            // tree): leave it queued and unconsumed, and try again next time.
            Err(e @ ClientError::Transport(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(seq = m.seq, error = %e, "skipping queue entry");
                self.record([Event::Undecryptable {
                    seq: m.seq,
                    reason: e.to_string(),
                }]);
            }
        }
        // Consumed, whatever became of it: the stored message it referred to is released.
        if let Some(r) = &stored {
            self.owe_release(r);
        }
        self.apply_due_mixes(ratchet)?;
        self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
        self.state.received_since_rekey += 1;
        self.persist()
    }

    /// Acknowledges everything consumed so the QS deletes it.
    async fn acknowledge(&mut self, auth: &SigningKey, id: [u8; 16]) -> Result<(), ClientError> {
        let ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
        let release = self.releases_due()?;
        let released = release.len();
        let op = QsOperation::Dequeue(Dequeue {
            ack_below: ratchet.next_seq(),
            max: 0,
            release,
        });
        self.transport
            .qs(&signed_qs(auth, QsSender::Client(id), op)?)
            .await?;
        self.released(released)?;
        // Everything queued before our commits so far is read.
        if self.state.committed_since_receive {
            self.state.committed_since_receive = false;
            self.persist()?;
        }
        Ok(())
    }
}
