//! Consent-based 1:1 connections (see `mimi_rm_protocol::connection`).
//!
//! Initiator: fetch one of the responder's connection packages from its AS, create a connection
//! group on our hub, and leave a signed offer sealed to the package key in the responder's AS
//! inbox. Nothing reaches the responder's queue: it is not in the group. Responder: read the
//! inbox, verify who asks, then accept (external join of the connection group, returning its
//! contact card under the offer's friendship key) or decline (forget the offer). Both hubs see
//! only pseudonymous group traffic; the responder's AS sees that someone asked, not who.

use super::join::ExternalEntry;
use super::requests::{anonymous_as, signed_as};
use super::{Client, Event, GroupHandle, b32, encoded, now_ms};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::state::{PendingConnection, unhex};
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::connection::*;
use mimi_rm_protocol::credentials::ExpirationData;
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::HpkeCiphertextWire;
use std::collections::BTreeMap;

/// Most connection-package keys a device keeps (current and recently replaced packages).
const MAX_CONNECTION_KEYS: usize = 64;
/// Validity of published connection packages (seconds).
const PACKAGE_LIFETIME_SECS: u64 = 30 * 24 * 60 * 60;

/// A connection request as the responder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingConnection {
    /// Id to accept or decline it with.
    pub id: String,
    /// Who asks: the verified handle (or what it claimed, if rejected).
    pub handle: String,
    /// The asker's provider domain.
    pub domain: String,
    /// Why it was rejected without asking us (a forged or unverifiable credential, not for us).
    pub rejected: Option<String>,
}

impl Client {
    /// Replaces this device's connection packages at our AS with `count` fresh ones.
    pub async fn publish_connection_packages(&mut self, count: usize) -> Result<(), ClientError> {
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let credential = self.client_credential()?;
        let now = now_ms() / 1000;
        let mut packages = Vec::with_capacity(count);
        let mut keys = BTreeMap::new();
        for _ in 0..count.max(1) {
            let kp = HpkeKeyPair::generate();
            let package = ConnectionPackage::sign(
                &client_key,
                ConnectionPackageTbs {
                    encryption_key: kp.public.as_bytes().to_vec().into(),
                    expiration: ExpirationData::starting(now, PACKAGE_LIFETIME_SECS),
                    client_credential: credential.clone(),
                },
            )
            .map_err(|e| ClientError::State(e.to_string()))?;
            let hash = hex::encode(
                package
                    .hash()
                    .map_err(|e| ClientError::State(e.to_string()))?,
            );
            self.state.connection_key_order.push(hash.clone());
            keys.insert(hash, hex::encode(kp.private.as_bytes()));
            packages.push(package);
        }
        let req = signed_as(
            &client_key,
            self.identity()?,
            AsOperation::PublishConnectionPackages(packages),
        )?;
        self.transport.auth(&req).await?;
        // Requests sealed to the packages we replace may still be on their way: keep their keys
        // (the oldest go first beyond a bound).
        self.state.connection_keys.extend(keys);
        while self.state.connection_keys.len() > MAX_CONNECTION_KEYS {
            let Some(oldest) = self.state.connection_key_order.first().cloned() else {
                break;
            };
            self.state.connection_key_order.remove(0);
            self.state.connection_keys.remove(&oldest);
        }
        self.persist()
    }

    /// Asks `handle` at `domain` to connect: creates the connection group and leaves a sealed
    /// offer for the responder. Returns the group; the responder's acceptance arrives as
    /// [`Event::ConnectionAccepted`].
    pub async fn connect(
        &mut self,
        handle: &str,
        domain: &str,
    ) -> Result<GroupHandle, ClientError> {
        let anchors = self.fetch_anchors(domain).await?;
        let op = AsOperation::FetchConnectionPackage(handle.as_bytes().to_vec().into());
        let AsResponse::ConnectionPackage(package) = self
            .transport
            .auth_at(&self.state.domain, domain, &anonymous_as(op))
            .await?
        else {
            return Err(ClientError::Unexpected("expected a connection package"));
        };
        package
            .verify(Some(&anchors), now_ms() / 1000)
            .map_err(crate::identity::IdentityError::from)?;
        if package.tbs.client_credential.tbs.identity.handle.as_slice() != handle.as_bytes() {
            return Err(ClientError::Unexpected(
                "the package belongs to someone else",
            ));
        }
        let group = self.create_group_of(GroupKind::Connection).await?;
        let meta = self.meta(&group)?.clone();
        let friendship_key = EarKey::random();
        let tbs = ConnectionOfferTbs {
            sender: self.client_credential()?,
            recipient_handle: handle.as_bytes().to_vec().into(),
            package_hash: package
                .hash()
                .map_err(|e| ClientError::State(e.to_string()))?,
            group_id: group.0.clone().into(),
            ear_key: b32(&unhex(&meta.ear_key)?)?,
            credential_key: b32(&unhex(&meta.credential_key)?)?,
            wrapper_key: b32(&unhex(&meta.wrapper_key)?)?,
            friendship_key: *friendship_key.as_bytes(),
            sender_card: self.contact_card()?.to_text()?.into_bytes().into(),
        };
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let offer = ConnectionOffer::sign(&client_key, tbs)
            .map_err(|e| ClientError::State(e.to_string()))?;
        let request = seal_offer(&package, &offer)?;
        let op = AsOperation::SendConnectionRequest(SendConnectionRequest {
            handle: handle.as_bytes().to_vec().into(),
            device: package.tbs.client_credential.tbs.identity.device,
            request,
        });
        self.transport
            .auth_at(&self.state.domain, domain, &anonymous_as(op))
            .await?;
        self.state.pending_connections.insert(
            hex::encode(&group.0),
            PendingConnection {
                handle: handle.to_owned(),
                friendship_key: hex::encode(friendship_key.as_bytes()),
            },
        );
        self.persist()?;
        Ok(group)
    }

    /// Fetches new connection requests from our AS (deleting them there), verifies each, keeps
    /// the verified ones for [`Client::accept_connection`] / [`Client::decline_connection`], and
    /// returns all of them, rejected ones with the reason.
    pub async fn fetch_connection_requests(
        &mut self,
    ) -> Result<Vec<IncomingConnection>, ClientError> {
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let req = signed_as(
            &client_key,
            self.identity()?,
            AsOperation::FetchConnectionRequests,
        )?;
        let AsResponse::ConnectionRequests(requests) = self.transport.auth(&req).await? else {
            return Err(ClientError::Unexpected("expected connection requests"));
        };
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let id = hex::encode(
                &mimi_rm_crypto::kdf::labelled_digest("connection request id", &encoded(&r)?)[..8],
            );
            match self.open_request(&r).await {
                Ok(offer) => {
                    let card = offer_card(&offer)?;
                    self.state
                        .connection_requests
                        .insert(id.clone(), hex::encode(encoded(&offer)?));
                    out.push(IncomingConnection {
                        id,
                        handle: card.handle_str(),
                        domain: card.domain_str(),
                        rejected: None,
                    });
                }
                Err((handle, domain, reason)) => {
                    tracing::warn!(handle = %handle, reason = %reason, "rejected a connection request");
                    out.push(IncomingConnection {
                        id,
                        handle,
                        domain,
                        rejected: Some(reason),
                    });
                }
            }
        }
        self.persist()?;
        Ok(out)
    }

    /// Verified requests still waiting for our decision.
    pub fn pending_connection_requests(&self) -> Result<Vec<IncomingConnection>, ClientError> {
        self.state
            .connection_requests
            .iter()
            .map(|(id, hexed)| {
                let card = offer_card(&self.stored_offer(hexed)?)?;
                Ok(IncomingConnection {
                    id: id.clone(),
                    handle: card.handle_str(),
                    domain: card.domain_str(),
                    rejected: None,
                })
            })
            .collect()
    }

    fn stored_offer(&self, hexed: &str) -> Result<ConnectionOffer, ClientError> {
        decode_exact(&unhex(hexed)?, 1 << 20).map_err(|e| ClientError::State(e.to_string()))
    }

    /// Opens and checks one request; the error says who claimed to ask and why we refuse.
    async fn open_request(
        &mut self,
        r: &ConnectionRequest,
    ) -> Result<ConnectionOffer, (String, String, String)> {
        let unknown = || ("?".to_string(), "?".to_string());
        let Some(private) = self.state.connection_keys.get(&hex::encode(r.package_hash)) else {
            let (h, d) = unknown();
            return Err((h, d, "sealed to none of our connection packages".into()));
        };
        let opened = unhex(private)
            .and_then(|k| HpkePrivateKey::from_bytes(&k).map_err(ClientError::from))
            .and_then(|sk| {
                let ct = HpkeCiphertext {
                    kem_output: r.sealed_offer.kem_output.as_slice().to_vec(),
                    ciphertext: r.sealed_offer.ciphertext.as_slice().to_vec(),
                };
                hpke_seal::open(&sk, CONNECTION_HPKE_LABEL, &r.package_hash, &ct)
                    .map_err(ClientError::from)
            });
        let Ok(plain) = opened else {
            let (h, d) = unknown();
            return Err((h, d, "does not decrypt".into()));
        };
        let Ok(offer) = decode_exact::<ConnectionOffer>(&plain, 1 << 20) else {
            let (h, d) = unknown();
            return Err((h, d, "malformed offer".into()));
        };
        let claimed = offer.tbs.sender.tbs.identity.handle_str();
        let Ok(card) = offer_card(&offer) else {
            return Err((claimed, "?".into(), "malformed contact card".into()));
        };
        let domain = card.domain_str();
        let fail = |reason: String| (claimed.clone(), domain.clone(), reason);
        if offer.tbs.recipient_handle.as_slice() != self.state.name.as_bytes()
            || offer.tbs.package_hash != r.package_hash
        {
            return Err(fail("the offer was made for someone else".into()));
        }
        if card.handle != offer.tbs.sender.tbs.identity.handle {
            return Err(fail("the contact card names another user".into()));
        }
        let anchors = self
            .fetch_anchors(&domain)
            .await
            .map_err(|e| fail(format!("cannot fetch the sender's AS credentials: {e}")))?;
        offer
            .verify(&anchors, now_ms() / 1000)
            .map_err(|e| fail(format!("credential does not verify: {e}")))?;
        Ok(offer)
    }

    /// Declines a request: we forget it; nothing is sent, the initiator learns nothing.
    pub fn decline_connection(&mut self, id: &str) -> Result<(), ClientError> {
        self.state
            .connection_requests
            .remove(id)
            .ok_or(ClientError::Unexpected("no such connection request"))?;
        self.persist()
    }

    /// Accepts a request: joins the connection group by external commit, returning our contact
    /// card to the initiator inside it, and takes the initiator as a contact.
    pub async fn accept_connection(&mut self, id: &str) -> Result<GroupHandle, ClientError> {
        let hexed = self
            .state
            .connection_requests
            .get(id)
            .cloned()
            .ok_or(ClientError::Unexpected("no such connection request"))?;
        let offer = self.stored_offer(&hexed)?;
        let card = offer_card(&offer)?;
        let group = GroupHandle(offer.tbs.group_id.as_slice().to_vec());
        let ear_key = EarKey::from_bytes(&offer.tbs.ear_key)?;
        let (ck, wk) = (
            EarKey::from_bytes(&offer.tbs.credential_key)?,
            EarKey::from_bytes(&offer.tbs.wrapper_key)?,
        );
        let info = self.external_commit_info(&group, &ear_key).await?;
        let (signer, cwk, sek) = self.new_leaf_identity()?;
        let credential = self.client_credential()?;
        let friendship = ear::seal(
            &EarKey::from_bytes(&offer.tbs.friendship_key)?,
            FRIENDSHIP_DOMAIN,
            &group.0,
            self.contact_card()?.to_text()?.as_bytes(),
        )?;
        let user_key = self.user_auth_key(&group.0)?;
        let aad = CommitAad {
            added: Vec::new(),
            user_auth_key: Some(user_key.verifying_key().as_bytes().to_vec().into()),
            joiner: Some(JoinData {
                credential: self.leaf_info(&credential, &sek, &ck, &wk)?,
                friendship: friendship.into(),
            }),
            reinit: None,
        };
        let (mls, bundle) =
            self.build_external_join(&group, &info, cwk, &signer, encoded(&aad)?)?;
        let req = self.ds_request(
            &group.0,
            Some(&ear_key),
            DsSender::Anonymous,
            DsOperation::JoinConnectionGroup(bundle),
            None,
        )?;
        let entered = ExternalEntry {
            mls,
            signer,
            sek,
            ear_key,
            keys: (ck, wk),
        };
        self.enter_by_external_commit(&group, &req, entered, &info.credentials)
            .await?;
        self.add_contact(&card)?;
        self.state.connection_requests.remove(id);
        self.persist()?;
        Ok(group)
    }

    /// On the initiator's side: the responder's join carries its contact card. Returns the
    /// event if `group` was a pending connection and the card is for the handle we asked.
    pub(super) fn connection_joined(
        &mut self,
        group: &GroupHandle,
        friendship: &[u8],
    ) -> Result<Option<Event>, ClientError> {
        let key = hex::encode(&group.0);
        let Some(pending) = self.state.pending_connections.get(&key).cloned() else {
            return Ok(None);
        };
        let plain = ear::open(
            &EarKey::from_bytes(&unhex(&pending.friendship_key)?)?,
            FRIENDSHIP_DOMAIN,
            &group.0,
            friendship,
        )?;
        let card = ContactCard::from_text(&String::from_utf8_lossy(&plain))?;
        if card.handle_str() != pending.handle {
            return Err(ClientError::Unexpected(
                "the responder's card names another user",
            ));
        }
        self.add_contact(&card)?;
        self.state.pending_connections.remove(&key);
        tracing::info!(handle = %pending.handle, "connection accepted");
        Ok(Some(Event::ConnectionAccepted {
            group: group.clone(),
            handle: pending.handle.clone(),
        }))
    }
}

/// The initiator's contact card inside an offer.
fn offer_card(offer: &ConnectionOffer) -> Result<ContactCard, ClientError> {
    ContactCard::from_text(&String::from_utf8_lossy(offer.tbs.sender_card.as_slice()))
}

/// Seals an offer to a package's key.
pub fn seal_offer(
    package: &ConnectionPackage,
    offer: &ConnectionOffer,
) -> Result<ConnectionRequest, ClientError> {
    let pk = HpkePublicKey::from_bytes(package.tbs.encryption_key.as_slice())?;
    let hash = package
        .hash()
        .map_err(|e| ClientError::State(e.to_string()))?;
    let ct = hpke_seal::seal(&pk, CONNECTION_HPKE_LABEL, &hash, &encoded(offer)?)?;
    Ok(ConnectionRequest {
        package_hash: hash,
        sealed_offer: HpkeCiphertextWire {
            kem_output: ct.kem_output.into(),
            ciphertext: ct.ciphertext.into(),
        },
    })
}
