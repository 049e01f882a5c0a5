//! Sending application messages, and the group control message that rotates the EAR key.

use super::groups::group_keys;
use super::requests::backoff;
use super::{CONTENT_CONTROL, CONTENT_USER, Client, Event, GroupHandle, TRANSPORT_RETRIES, now_ms};
use crate::error::ClientError;
use crate::identity;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::DsMode;
use mimi_rm_protocol::ds::*;
use openmls::prelude::*;

impl Client {
    /// Encrypts and sends an application message. If the group has moved on too far for the
    /// message, catches up (the events go to the next `receive`) and sends it again.
    pub async fn send(&mut self, group: &GroupHandle, plaintext: &[u8]) -> Result<(), ClientError> {
        let mut framed = vec![CONTENT_USER];
        framed.extend_from_slice(plaintext);
        self.send_framed(group, &framed).await
    }

    /// Encrypts, signs and (where the hub wants tokens) pays for one application message per
    /// entry of `plaintexts`, to be sent later with [`crate::Transport::send_prepared`] within
    /// the hub's freshness window (in any order: recipients decrypt out of order). The message keys are used up here: the state is
    /// persisted once for the whole batch, before any of them can reach the hub. For load
    /// generation and batch senders; an app sends with [`Client::send`], which retries and
    /// catches up.
    pub async fn prepare_messages<'a>(
        &mut self,
        group: &GroupHandle,
        plaintexts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<crate::PreparedRequest>, ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let mut requests = Vec::new();
        for plaintext in plaintexts {
            let mut framed = Vec::with_capacity(plaintext.len() + 1);
            framed.push(CONTENT_USER);
            framed.extend_from_slice(plaintext);
            let msg = mls
                .create_message(&self.provider, &signer, &framed)
                .map_err(ClientError::mls)?
                .to_bytes()
                .map_err(ClientError::mls)?;
            requests.push(self.member_request(
                &mls,
                &ear_key,
                &signer,
                DsOperation::SendMessage(msg.into()),
            )?);
        }
        self.persist()?;
        self.transport.prepare_ds(requests).await
    }

    /// Sends an already framed application message, catching up when the group moved on (a
    /// newer epoch, or a rotated EAR key announced in our queue).
    pub(super) async fn send_framed(
        &mut self,
        group: &GroupHandle,
        framed: &[u8],
    ) -> Result<(), ClientError> {
        for _ in 0..8 {
            match self.send_once(group, framed).await {
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            mimi_rm_protocol::ErrorCode::WrongEpoch
                                | mimi_rm_protocol::ErrorCode::WrongEarKey
                        )
                    ) =>
                {
                    self.catch_up().await?;
                }
                other => return other,
            }
        }
        Err(ClientError::Unexpected("the group keeps moving; try again"))
    }

    /// Encrypts and sends one message, re-sending the same ciphertext while the hub cannot be
    /// reached.
    async fn send_once(
        &mut self,
        group: &GroupHandle,
        plaintext: &[u8],
    ) -> Result<(), ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let msg = mls
            .create_message(&self.provider, &signer, plaintext)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        // Persist first: the message key is used up whether or not the hub got the message.
        self.persist()?;
        let msg: tls_codec::VLBytes = msg.into();
        let mut attempt = 0;
        loop {
            let req = self.member_request(
                &mls,
                &ear_key,
                &signer,
                DsOperation::SendMessage(msg.clone()),
            )?;
            match self.transport.ds(&req).await {
                Ok(_) => {
                    if let Ok(meta) = self.meta_mut(group) {
                        meta.last_request_ms = now_ms();
                    }
                    return Ok(());
                }
                // Unknown outcome: re-send the same ciphertext. If the first copy did arrive,
                // recipients drop the second (that message key is already used).
                Err(ClientError::Transport(e) | ClientError::PeerUnavailable(e))
                    if attempt < TRANSPORT_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "hub unreachable, re-sending");
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Rotates the group's `GroupStateEarKey`: the hub re-encrypts the state under a fresh key,
    /// then the other members get it end to end, inside the group. From then on the old key
    /// opens nothing written afterwards.
    pub async fn rotate_ear_key(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        if self.state.mode == DsMode::Baseline {
            return Err(ClientError::Unexpected(
                "a baseline hub keeps group state in the clear: there is no EAR key to rotate",
            ));
        }
        let (signer, mls, ear_key) = self.member(group)?;
        let (old_ck, old_wk) = group_keys(self.meta(group)?)?;
        let (new_ck, new_wk) = (EarKey::random(), EarKey::random());
        // Every leaf's credential material, re-wrapped under the new credential keys.
        let info = self.external_commit_info(group, &ear_key).await?;
        let mut credentials = Vec::with_capacity(info.credentials.len());
        for entry in &info.credentials {
            let (cc, sek) = identity::unwrap(&entry.info, &old_ck, &old_wk)?;
            credentials.push(LeafCredentialEntry {
                leaf: entry.leaf,
                info: identity::wrap(&cc, &sek, &new_ck, &new_wk)?,
            });
        }
        let new = EarKey::random();
        let rotation = KeyRotation {
            new_ear_key: new.as_bytes().to_vec().into(),
            credentials,
        };
        let req =
            self.member_request(&mls, &ear_key, &signer, DsOperation::RotateEarKey(rotation))?;
        self.transport.ds(&req).await?;
        let meta = self.meta_mut(group)?;
        meta.ear_key = hex::encode(new.as_bytes());
        meta.credential_key = hex::encode(new_ck.as_bytes());
        meta.wrapper_key = hex::encode(new_wk.as_bytes());
        self.persist()?;
        let mut framed = vec![CONTENT_CONTROL];
        framed.extend_from_slice(new.as_bytes());
        framed.extend_from_slice(new_ck.as_bytes());
        framed.extend_from_slice(new_wk.as_bytes());
        self.send_framed(group, &framed).await
    }

    /// Applies a control message from another member.
    pub(super) fn control(
        &mut self,
        group: GroupHandle,
        body: &[u8],
    ) -> Result<Event, ClientError> {
        if body.len() != 96 {
            return Err(ClientError::Unexpected("malformed key rotation"));
        }
        let key = EarKey::from_bytes(&body[..32])?;
        let ck = EarKey::from_bytes(&body[32..64])?;
        let wk = EarKey::from_bytes(&body[64..])?;
        let meta = self.meta_mut(&group)?;
        meta.ear_key = hex::encode(key.as_bytes());
        meta.credential_key = hex::encode(ck.as_bytes());
        meta.wrapper_key = hex::encode(wk.as_bytes());
        tracing::info!(group = %group, "group EAR key rotated by a member");
        Ok(Event::EarKeyRotated { group })
    }
}
