//! Who members are: verifying credential chains against the AS anchors we know, and keeping
//! the member records in step with the group.

use super::commit::decode_aad;
use super::groups::group_keys;
use super::requests::anonymous_as;
use super::revocation::{Revocations, issuer_domain};
use super::{Client, Event, GroupHandle, MemberIdentity, encoded, now_ms};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::identity;
use crate::state::{GroupMeta, MemberRecord, unhex};
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{DsMode, decode_exact};
use openmls::prelude::*;
use std::collections::BTreeMap;

impl Client {
    /// Who each member of `group` is, as far as we could verify.
    pub fn member_identities(
        &self,
        group: &GroupHandle,
    ) -> Result<BTreeMap<u32, MemberIdentity>, ClientError> {
        let meta = self.meta(group)?;
        Ok(self
            .load_group(group)?
            .members()
            .map(|m| {
                let id = match meta.members.get(&m.index.u32()) {
                    Some(MemberRecord {
                        handle: Some(handle),
                        device: Some(device),
                        ..
                    }) => MemberIdentity::Verified {
                        handle: handle.clone(),
                        device: unhex(device)
                            .ok()
                            .and_then(|d| d.try_into().ok())
                            .unwrap_or_default(),
                    },
                    Some(MemberRecord {
                        problem: Some(p), ..
                    }) => MemberIdentity::Unverified { reason: p.clone() },
                    _ => MemberIdentity::Unverified {
                        reason: "no credential material".into(),
                    },
                };
                (m.index.u32(), id)
            })
            .collect())
    }

    /// Refreshes every provider's signed revocation list now (instead of waiting for the
    /// refresh interval of `receive`) and marks each listed member, in every group, as
    /// `Unverified` ("revoked"): a device its user removed stays in groups the remover was not
    /// in (e.g. a connection group), where only the list shows it. Returns how many members of
    /// `group` it newly marked.
    pub async fn check_revocations(&mut self, group: &GroupHandle) -> Result<usize, ClientError> {
        let marked = self.refresh_revocations().await?;
        Ok(marked.iter().filter(|(g, _)| g == group).count())
    }

    /// Every AS we can verify credentials against: our own (pinned at registration) and those
    /// of our contacts' providers.
    pub(super) fn anchors(&self) -> Result<AsCredentials, ClientError> {
        let mut all: AsCredentials = decode_exact(&unhex(&self.state.as_credentials)?, 1 << 20)
            .map_err(|e| ClientError::State(e.to_string()))?;
        for hexed in self.state.peer_anchors.values() {
            let peer: AsCredentials = decode_exact(&unhex(hexed)?, 1 << 20)
                .map_err(|e| ClientError::State(e.to_string()))?;
            all.roots.extend(peer.roots);
            all.intermediates.extend(peer.intermediates);
        }
        Ok(all)
    }

    /// Fetches (through our provider) the AS credentials of every contact's provider we do not
    /// know yet. A provider's roots must name that provider's domain.
    pub(super) async fn ensure_contact_anchors(&mut self) -> Result<(), ClientError> {
        let mut missing = Vec::new();
        for text in self.state.contacts.values() {
            let card = ContactCard::from_text(text)?;
            let domain = card.domain_str();
            if domain != self.state.domain
                && !self.state.peer_anchors.contains_key(&domain)
                && !missing.contains(&domain)
            {
                missing.push(domain);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        for domain in missing {
            self.fetch_anchors(&domain).await?;
        }
        Ok(())
    }

    /// The AS credentials of `domain`: our own, already known ones, or fetched (through our
    /// provider) and remembered. A provider's roots must name that provider's domain.
    pub(super) async fn fetch_anchors(
        &mut self,
        domain: &str,
    ) -> Result<AsCredentials, ClientError> {
        let known = if domain == self.state.domain {
            Some(&self.state.as_credentials)
        } else {
            self.state.peer_anchors.get(domain)
        };
        if let Some(hexed) = known {
            return decode_exact(&unhex(hexed)?, 1 << 20)
                .map_err(|e| ClientError::State(e.to_string()));
        }
        let AsResponse::AsCredentials(anchors) = self
            .transport
            .auth_at(
                &self.state.domain,
                domain,
                &anonymous_as(AsOperation::AsCredentials),
            )
            .await?
        else {
            return Err(ClientError::Unexpected("expected AS credentials"));
        };
        if anchors
            .roots
            .iter()
            .any(|r| r.tbs.as_domain.as_slice() != domain.as_bytes())
        {
            return Err(ClientError::Unexpected(
                "a provider's AS root names another domain",
            ));
        }
        self.state
            .peer_anchors
            .insert(domain.to_owned(), hex::encode(encoded(&anchors)?));
        self.persist()?;
        Ok(anchors)
    }

    /// After a commit: members keep their records across leaf moves (by signature key), departed
    /// ones are dropped, and every added member is verified from the commit's authenticated data.
    pub(super) fn track_members(
        &mut self,
        group: &GroupHandle,
        mls: &MlsGroup,
        adds: &[KeyPackage],
        aad: &[u8],
        committer: Option<String>,
    ) -> Result<Vec<Event>, ClientError> {
        let current: BTreeMap<String, u32> = mls
            .members()
            .map(|m| (hex::encode(&m.signature_key), m.index.u32()))
            .collect();
        let anchors = self.anchors()?;
        let revocations = self.revocations()?;
        let (ck, wk) = group_keys(self.meta(group)?)?;
        let aad = decode_aad(aad)?;
        let mut fresh = Vec::new();
        if let Some(joiner) = &aad.joiner {
            let keys = (&ck, &wk);
            let checks = (&anchors, &revocations);
            fresh.extend(self.joiner_records(group, mls, adds, joiner, keys, checks)?);
        }
        for kp in adds {
            let kp_ref = kp
                .hash_ref(self.provider.crypto())
                .map_err(ClientError::mls)?;
            let leaf = kp.leaf_node();
            let Some(&index) = current.get(&hex::encode(leaf.signature_key().as_slice())) else {
                continue;
            };
            let added = aad
                .added
                .iter()
                .find(|a| a.key_package_ref.as_slice() == kp_ref.as_slice());
            let checks = (&anchors, &revocations);
            let record = self.added_record(leaf, added, committer.as_deref(), (&ck, &wk), checks);
            fresh.push((index, record));
        }
        let meta = self.meta_mut(group)?;
        let old = std::mem::take(&mut meta.members);
        for (_, record) in old {
            if let Some(&index) = current.get(&record.signature_key) {
                meta.members.insert(index, record);
            }
        }
        Ok(insert_records(group, meta, fresh))
    }

    /// The records of an external joiner (a new device, a connection responder): the one member
    /// neither known before nor added by KeyPackage; its material is in the commit's `joiner`.
    fn joiner_records(
        &self,
        group: &GroupHandle,
        mls: &MlsGroup,
        adds: &[KeyPackage],
        joiner: &JoinData,
        (ck, wk): (&EarKey, &EarKey),
        (anchors, revocations): (&AsCredentials, &Revocations),
    ) -> Result<Vec<(u32, MemberRecord)>, ClientError> {
        let known: std::collections::BTreeSet<&str> = self
            .meta(group)?
            .members
            .values()
            .map(|r| r.signature_key.as_str())
            .collect();
        let added: std::collections::BTreeSet<String> = adds
            .iter()
            .map(|kp| hex::encode(kp.leaf_node().signature_key().as_slice()))
            .collect();
        let mut fresh = Vec::new();
        for m in mls.members() {
            let key = hex::encode(&m.signature_key);
            if !known.contains(key.as_str()) && !added.contains(&key) {
                fresh.push((
                    m.index.u32(),
                    check_leaf(
                        self.state.mode,
                        m.credential.serialized_content(),
                        &m.signature_key,
                        &joiner.credential,
                        (ck, wk),
                        anchors,
                        revocations,
                    ),
                ));
            }
        }
        Ok(fresh)
    }

    /// The record of a client added by KeyPackage, verified from the material the commit
    /// carries for it (`added`).
    fn added_record(
        &self,
        leaf: &LeafNode,
        added: Option<&AddedMember>,
        committer: Option<&str>,
        (ck, wk): (&EarKey, &EarKey),
        (anchors, revocations): (&AsCredentials, &Revocations),
    ) -> MemberRecord {
        match added {
            Some(a) => {
                let record = check_leaf(
                    self.state.mode,
                    leaf.credential().serialized_content(),
                    leaf.signature_key().as_slice(),
                    &a.credential,
                    (ck, wk),
                    anchors,
                    revocations,
                );
                // A client added as the committer's own device must be the committer's.
                if a.user == OWN_CLIENT
                    && record.handle.is_some()
                    && record.handle.as_deref() != committer
                {
                    unverified_record(
                        leaf.signature_key().as_slice(),
                        "added as the committer's own device, but belongs to another user",
                    )
                } else {
                    record
                }
            }
            None => unverified_record(
                leaf.signature_key().as_slice(),
                "the commit carries no credential material for this member",
            ),
        }
    }

    /// Files our own leaf in `group` as verified: after an external join the hub's material
    /// (fetched before the join) has no entry for it yet.
    pub(super) fn record_self(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        let mls = self.load_group(group)?;
        let leaf = mls.own_leaf_index().u32();
        let key = mls
            .own_leaf_node()
            .ok_or(ClientError::Unexpected("no own leaf"))?
            .signature_key()
            .as_slice()
            .to_vec();
        let record = verified_record(&key, &self.client_credential()?, &self.state.domain);
        self.meta_mut(group)?.members.insert(leaf, record);
        Ok(())
    }

    /// Verifies every current member from the hub's stored material (on join and resync).
    pub(super) fn verify_all(
        &mut self,
        group: &GroupHandle,
        mls: &MlsGroup,
        entries: &[LeafCredentialEntry],
    ) -> Result<Vec<Event>, ClientError> {
        let anchors = self.anchors()?;
        let revocations = self.revocations()?;
        let (ck, wk) = group_keys(self.meta(group)?)?;
        let fresh: Vec<(u32, MemberRecord)> = mls
            .members()
            .map(|m| {
                let record = match entries.iter().find(|e| e.leaf == m.index.u32()) {
                    Some(e) => check_leaf(
                        self.state.mode,
                        m.credential.serialized_content(),
                        &m.signature_key,
                        &e.info,
                        (&ck, &wk),
                        &anchors,
                        &revocations,
                    ),
                    None => unverified_record(&m.signature_key, "the hub has no material for it"),
                };
                (m.index.u32(), record)
            })
            .collect();
        let meta = self.meta_mut(group)?;
        meta.members.clear();
        Ok(insert_records(group, meta, fresh))
    }
}

/// Verifies one leaf into a member record (a failure becomes an unverified record).
pub(super) fn check_leaf(
    mode: DsMode,
    leaf_identity: &[u8],
    signature_key: &[u8],
    info: &LeafCredentialInfo,
    (ck, wk): (&EarKey, &EarKey),
    anchors: &AsCredentials,
    revocations: &Revocations,
) -> MemberRecord {
    let now = now_ms() / 1000;
    let verified = match mode {
        DsMode::Rm => {
            identity::verify_leaf(leaf_identity, signature_key, info, ck, wk, anchors, now)
        }
        DsMode::Baseline => identity::verify_plain_leaf(leaf_identity, signature_key, anchors, now),
    };
    match verified {
        Ok(credential) => {
            // The issuer's list only: another provider cannot revoke this one's users.
            let domain = issuer_domain(&credential, anchors).unwrap_or_default();
            if revocations.lists(&domain, &credential.tbs.identity) {
                unverified_record(
                    signature_key,
                    &Revocations::problem(&credential.tbs.identity),
                )
            } else {
                verified_record(signature_key, &credential, &domain)
            }
        }
        Err(e) => unverified_record(signature_key, &e.to_string()),
    }
}

/// A member record for a leaf that did not verify, with the reason.
fn unverified_record(signature_key: &[u8], problem: &str) -> MemberRecord {
    MemberRecord {
        domain: None,
        signature_key: hex::encode(signature_key),
        handle: None,
        device: None,
        problem: Some(problem.to_owned()),
    }
}

/// Stores fresh records and reports each one that did not verify.
fn insert_records(
    group: &GroupHandle,
    meta: &mut GroupMeta,
    fresh: Vec<(u32, MemberRecord)>,
) -> Vec<Event> {
    let mut events = Vec::new();
    for (leaf, record) in fresh {
        if let Some(reason) = &record.problem {
            tracing::warn!(group = %group, leaf, reason = %reason, "member does not verify");
            events.push(Event::UnverifiedMember {
                group: group.clone(),
                leaf,
                reason: reason.clone(),
            });
        }
        meta.members.insert(leaf, record);
    }
    events
}

/// A member record for a verified credential.
pub(super) fn verified_record(
    signature_key: &[u8],
    credential: &ClientCredential,
    domain: &str,
) -> MemberRecord {
    MemberRecord {
        domain: Some(domain.to_owned()),
        signature_key: hex::encode(signature_key),
        handle: Some(credential.tbs.identity.handle_str()),
        device: Some(hex::encode(credential.tbs.identity.device)),
        problem: None,
    }
}
