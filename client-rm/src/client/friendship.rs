//! Our friendship keys — what our contact card carries — and their rotation when someone who
//! knew them must stop using them: a removed contact, or a removed device of ours.
//!
//! The keys a registration creates are random. Every rotation derives the next keys from the
//! rotated *user secret*, which already reaches each remaining device of ours sealed to its link
//! key (see `devices`): so a sibling device holds the new keys as soon as it applies the new
//! secret, with no message of its own. The QS moves our user to the new friendship token in
//! one request (`RotateUser`), after which the old token fetches nothing. Each device then
//! republishes its AddPackages under the new `AddPackageEarKey`, and the new card goes to every
//! remaining contact inside a group of just the two users (a connection group), where nobody
//! else — in particular not the removed party — receives it.

use super::requests::signed_qs;
use super::{ADD_PACKAGES, Client, Event, GroupHandle};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::state::unhex;
use mimi_rm_crypto::kdf::expand_label;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::ErrorCode;
use mimi_rm_protocol::qs::{QsOperation, QsSender, RotateUser};
use zeroize::Zeroizing;

/// First byte of an application message carrying the sender's new contact card.
pub(super) const CONTENT_CARD: u8 = 3;

/// The friendship values of one user-secret generation, derived (never random) so every device
/// of the user computes the same ones.
struct FriendshipKeys {
    token: Zeroizing<[u8; 32]>,
    add_package_key: Zeroizing<[u8; 32]>,
    credential_key: Zeroizing<[u8; 32]>,
    wrapper_key: Zeroizing<[u8; 32]>,
    wai_key: Zeroizing<[u8; 32]>,
}

fn derive(secret: &[u8; 32]) -> Result<FriendshipKeys, ClientError> {
    let one = |label: &str| -> Result<Zeroizing<[u8; 32]>, ClientError> {
        let mut out = Zeroizing::new([0u8; 32]);
        expand_label(secret, label, b"", out.as_mut())?;
        Ok(out)
    };
    Ok(FriendshipKeys {
        token: one("friendship token")?,
        add_package_key: one("friendship add package key")?,
        credential_key: one("friendship credential key")?,
        wrapper_key: one("friendship wrapper key")?,
        wai_key: one("friendship attribution key")?,
    })
}

impl Client {
    /// Makes the friendship keys of user secret `secret` ours (in memory; the caller persists),
    /// and notes that this device's AddPackages must be republished under them.
    pub(super) fn install_friendship(&mut self, secret: &[u8; 32]) -> Result<(), ClientError> {
        let keys = derive(secret)?;
        self.state.friendship_token = hex::encode(*keys.token);
        self.state.add_package_key = hex::encode(*keys.add_package_key);
        self.state.credential_key = hex::encode(*keys.credential_key);
        self.state.wrapper_key = hex::encode(*keys.wrapper_key);
        self.state.wai_key = hex::encode(*keys.wai_key);
        self.state.republish_pending = true;
        Ok(())
    }

    /// After our user secret rotated to `secret` (already ours in the state): installs its
    /// friendship keys and notes the three steps that follow — moving our QS user to its
    /// friendship token, republishing our AddPackages, announcing the new card — then runs
    /// them. Each step is recorded when done, and whatever an interruption leaves is retried
    /// after the next receive, so a removal never ends half-rotated.
    pub(super) async fn rotate_friendship(&mut self, secret: &[u8; 32]) -> Result<(), ClientError> {
        self.install_friendship(secret)?;
        self.state.qs_rotation_pending = true;
        self.state.cards_pending = true;
        self.persist()?;
        self.finish_friendship_rotation().await
    }

    /// Moves our QS user to the current friendship token and to the QS user key of our user
    /// secret (`RotateUser`). Idempotent: a retry after the QS applied it is signed with the
    /// key it moved to.
    async fn rotate_qs_user(&mut self) -> Result<(), ClientError> {
        let new_key = super::devices::qs_user_key(&self.user_secret()?)?;
        let user_id: [u8; 16] = unhex(&self.state.user_id)?
            .try_into()
            .map_err(|_| ClientError::State("user id".into()))?;
        let token = unhex(&self.state.friendship_token)?;
        let op = || {
            QsOperation::RotateUser(RotateUser {
                new_user_auth_key: new_key.verifying_key().as_bytes().to_vec().into(),
                new_friendship_token: token.clone().into(),
            })
        };
        let current = SigningKey::from_bytes(&unhex(&self.state.user_auth_key)?)?;
        let req = signed_qs(&current, QsSender::User(user_id), op())?;
        match self.transport.qs(&req).await {
            Ok(_) => {}
            // Applied by an interrupted earlier attempt: the new key signs the retry.
            Err(e) if e.code() == Some(ErrorCode::InvalidSignature) => {
                let retry = signed_qs(&new_key, QsSender::User(user_id), op())?;
                self.transport.qs(&retry).await?;
            }
            Err(e) => return Err(e),
        }
        self.state.user_auth_key = hex::encode(new_key.to_bytes());
        Ok(())
    }

    /// What a friendship rotation leaves to do, when anything: move our QS user (the device
    /// that rotated), republish our AddPackages under the new key (every device), send the new
    /// card to each contact (the device that rotated). Runs after each receive until done.
    pub(super) async fn finish_friendship_rotation(&mut self) -> Result<(), ClientError> {
        if self.state.qs_rotation_pending {
            self.rotate_qs_user().await?;
            self.state.qs_rotation_pending = false;
            self.persist()?;
        }
        if self.state.republish_pending {
            // The old packages' private keys stay: a Welcome for a package fetched before the
            // rotation may still arrive.
            self.publish_add_packages(ADD_PACKAGES).await?;
            self.state.republish_pending = false;
            self.persist()?;
        }
        if self.state.cards_pending {
            let sent = self.send_card_to_contacts().await?;
            tracing::info!(contacts = sent, "sent our new contact card");
            self.state.cards_pending = false;
            self.persist()?;
        }
        Ok(())
    }

    /// Sends our card to each contact in a group whose verified members are only that contact
    /// and us (every member verified: an unverified one could be anyone). A contact we share
    /// no such group with keeps the old card, which fetches nothing any more: it has to connect
    /// again. Returns how many contacts it reached.
    async fn send_card_to_contacts(&mut self) -> Result<usize, ClientError> {
        let mut framed = vec![CONTENT_CARD];
        framed.extend(self.contact_card()?.to_text()?.as_bytes());
        let contacts: Vec<String> = self.state.contacts.keys().cloned().collect();
        let mut reached = 0;
        for contact in contacts {
            let Some(group) = self.group_of_two(&contact)? else {
                tracing::warn!(contact = %contact, "no group of two with this contact: it keeps the old card");
                continue;
            };
            self.send_framed(&group, &framed).await?;
            reached += 1;
        }
        Ok(reached)
    }

    /// A group whose members are all verified, include `contact`, and are otherwise ours.
    fn group_of_two(&self, contact: &str) -> Result<Option<GroupHandle>, ClientError> {
        for group in self.groups() {
            if self.is_group_of_two(&group, contact)? {
                return Ok(Some(group));
            }
        }
        Ok(None)
    }

    /// Whether every member of `group` is verified and is `contact` or us (and `contact` is
    /// among them).
    fn is_group_of_two(&self, group: &GroupHandle, contact: &str) -> Result<bool, ClientError> {
        let members = &self.meta(group)?.members;
        let mut has_contact = false;
        let only_us = members.values().all(|r| match r.handle.as_deref() {
            Some(h) if h == contact => {
                has_contact = true;
                true
            }
            Some(h) => h == self.state.name,
            None => false,
        });
        Ok(only_us && has_contact)
    }

    /// A contact's new card, sent by that contact (its verified handle) in `group`. Anything
    /// else — a card from a non-contact, for another handle or provider, from our own user —
    /// is ignored.
    pub(super) fn apply_card_update(
        &mut self,
        group: &GroupHandle,
        sender: u32,
        body: &[u8],
    ) -> Result<Option<Event>, ClientError> {
        let Some(handle) = self
            .meta(group)?
            .members
            .get(&sender)
            .and_then(|r| r.handle.clone())
        else {
            tracing::warn!(group = %group, "a card update from an unverified member: ignored");
            return Ok(None);
        };
        // Only where nobody but the contact and we are members (its connection group): a
        // card arriving anywhere else could come from a device of the contact's that its user
        // already removed, or from a same-named user elsewhere.
        if !self.is_group_of_two(group, &handle)? {
            tracing::warn!(contact = %handle, "a card update outside a group of two: ignored");
            return Ok(None);
        }
        let Some(old) = self.state.contacts.get(&handle) else {
            return Ok(None);
        };
        let old = ContactCard::from_text(old)?;
        let card = ContactCard::from_text(&String::from_utf8_lossy(body))?;
        if card.handle != old.handle || card.domain != old.domain {
            tracing::warn!(contact = %handle, "a card update for another user: ignored");
            return Ok(None);
        }
        self.state.contacts.insert(handle.clone(), card.to_text()?);
        tracing::info!(contact = %handle, "a contact rotated its card");
        Ok(Some(Event::ContactUpdated { handle }))
    }

    /// Stops treating `handle` as a contact and rotates everything its card let it do: our
    /// friendship token (it fetches none of our AddPackages any more) and keys (it reads none
    /// we publish later), through a user-secret rotation in every group — one commit per group,
    /// as removing a device costs. Our remaining contacts receive the new card. Groups we share
    /// with the former contact are not changed.
    pub async fn remove_contact(&mut self, handle: &str) -> Result<(), ClientError> {
        if !self.state.contacts.contains_key(handle) {
            return Err(ClientError::InvalidInput(format!(
                "{handle} is not a contact"
            )));
        }
        let secret = self.rotate_user_secret(None).await?;
        // Gone in the same write that records the rotation's remaining steps: an interruption
        // before it leaves the contact in place for a retry; after it, the steps resume after
        // the next receive. Never announced to the former contact.
        self.state.contacts.remove(handle);
        self.rotate_friendship(&secret).await
    }
}
