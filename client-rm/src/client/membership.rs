//! Membership changes: inviting contacts (fetching and checking their AddPackages), roles,
//! removing members, updating and leaving.

use super::commit::Plan;
use super::groups::group_keys;
use super::requests::anonymous_qs;
use super::verify::{check_leaf, verified_record};
use super::{ADD_PACKAGE_DOMAIN, Client, GroupHandle, MAX_MESSAGE, encoded, now_ms};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::identity;
use crate::state::{MemberRecord, unhex};
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::{DsMode, decode_exact};
use openmls::prelude::{tls_codec::Deserialize as _, *};

/// How carefully `invite_with` works.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum InviteMode {
    /// Verify every AddPackage's credential chain first (the only honest mode).
    Checked,
    /// Add without checking (a colluding member, for tests).
    #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
    Unchecked,
    /// Add without sending credential material (a broken client, for tests).
    #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
    WithoutMaterial,
}

/// What preparing a contact's AddPackages for one of our groups needs, read once per fetch.
struct InviteKeys {
    /// Opens the contact's sealed AddPackages.
    add_package_key: EarKey,
    /// The contact's credential key and wrapper key (its friendship keys).
    friend: (EarKey, EarKey),
    /// Seals our attribution to the invitee.
    wai_key: EarKey,
    /// The group's credential key and wrapper key.
    group: (EarKey, EarKey),
    /// The AS credentials the invitees' chains must verify against.
    anchors: AsCredentials,
    /// Signs our attribution.
    client_key: SigningKey,
    /// Our client credential, named in the attribution.
    own: ClientCredential,
    /// The time credentials are checked at (seconds).
    now: u64,
}

/// One opened AddPackage.
struct OpenedPackage {
    /// The validated KeyPackage.
    kp: KeyPackage,
    /// Its credential material under the contact's friendship keys.
    friend_info: LeafCredentialInfo,
    /// The client credential inside that material.
    credential: ClientCredential,
    /// The leaf's `SignatureEarKey`.
    sek: EarKey,
}

impl Client {
    /// Fetches the contact's AddPackages with its card and adds all its clients to the group.
    pub async fn invite(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
    ) -> Result<u64, ClientError> {
        self.invite_with(group, contact, InviteMode::Checked).await
    }

    /// `invite`; only the test adversary uses the other modes.
    pub(super) async fn invite_with(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
        mode: InviteMode,
    ) -> Result<u64, ClientError> {
        self.add_contact(contact)?;
        self.ensure_contact_anchors().await?;
        self.catch_up_before_commit().await?;
        let (kps, mut added, records) = self
            .fetch_add_packages_of(group, contact, None, mode)
            .await?;
        if kps.is_empty() {
            return Err(ClientError::NoAddPackage);
        }
        if mode == InviteMode::WithoutMaterial {
            added.clear();
        }
        let aad = CommitAad {
            added,
            user_auth_key: None,
            joiner: None,
            reinit: None,
        };
        let epoch = self.commit(group, Plan::Add(kps, aad)).await?;
        self.insert_added_records(group, records)?;
        Ok(epoch)
    }

    /// Files the member records of clients we just added under their new leaves.
    pub(super) fn insert_added_records(
        &mut self,
        group: &GroupHandle,
        records: Vec<MemberRecord>,
    ) -> Result<(), ClientError> {
        let mls = self.load_group(group)?;
        let meta = self.meta_mut(group)?;
        for record in records {
            if let Some(m) = mls
                .members()
                .find(|m| hex::encode(&m.signature_key) == record.signature_key)
            {
                meta.members.insert(m.index.u32(), record);
            }
        }
        self.persist()
    }

    /// Fetches `contact`'s AddPackages (every device of that user, or only `only_devices`),
    /// verifies each (in `Checked` mode) and prepares its credential material for `group`.
    pub(super) async fn fetch_add_packages_of(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
        only_devices: Option<&[[u8; 16]]>,
        mode: InviteMode,
    ) -> Result<(Vec<KeyPackage>, Vec<AddedMember>, Vec<MemberRecord>), ClientError> {
        let op = QsOperation::FetchAddPackages(contact.friendship_token.to_vec().into());
        let QsResponse::AddPackages(pkgs) = self
            .transport
            .qs_at(&self.state.domain, &contact.domain_str(), &anonymous_qs(op))
            .await?
        else {
            return Err(ClientError::Unexpected("expected AddPackages"));
        };
        // The contact's provider's newest revocation list: a device its user revoked may
        // still have AddPackages published (a stolen device publishing under a new pseudonymous
        // user), but is never added again.
        let revocations = match mode {
            InviteMode::Checked => {
                self.fetch_revocations(&contact.domain_str()).await?;
                self.persist()?;
                Some(self.revocations()?)
            }
            _ => None,
        };
        let keys = self.invite_keys(group, contact)?;
        let (mut kps, mut added, mut records) = (Vec::new(), Vec::new(), Vec::new());
        let mut revoked = 0;
        for p in pkgs {
            // A device of the contact that has not yet republished after a friendship rotation
            // still offers a package under the old key: skipped, the others are added.
            let opened = match self.open_add_package(&keys, p.as_slice()) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an AddPackage that does not open");
                    continue;
                }
            };
            if only_devices.is_some_and(|d| !d.contains(&opened.credential.tbs.identity.device)) {
                continue;
            }
            // By device, not by credential: a renewed credential is the same device.
            let identity = &opened.credential.tbs.identity;
            if revocations
                .as_ref()
                .is_some_and(|r| r.lists(&contact.domain_str(), identity))
            {
                tracing::warn!("skipping an AddPackage of a revoked device of the contact");
                revoked += 1;
                continue;
            }
            let record = self.add_package_record(&keys, &opened, contact, mode)?;
            added.push(self.added_member(&keys, group, &opened)?);
            records.push(record);
            kps.push(opened.kp);
        }
        if kps.is_empty() && revoked > 0 {
            return Err(ClientError::Revoked);
        }
        Ok((kps, added, records))
    }

    /// The keys and context for preparing `contact`'s AddPackages for `group`.
    fn invite_keys(
        &self,
        group: &GroupHandle,
        contact: &ContactCard,
    ) -> Result<InviteKeys, ClientError> {
        let add_package_key = EarKey::from_bytes(&contact.add_package_key)?;
        let friend = (
            EarKey::from_bytes(&contact.credential_key)?,
            EarKey::from_bytes(&contact.wrapper_key)?,
        );
        let wai_key = EarKey::from_bytes(&contact.wai_key)?;
        let meta = self.meta(group)?.clone();
        let group_pair = group_keys(&meta)?;
        let anchors = self.anchors()?;
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let own = self.client_credential()?;
        let now = now_ms() / 1000;
        Ok(InviteKeys {
            add_package_key,
            friend,
            wai_key,
            group: group_pair,
            anchors,
            client_key,
            own,
            now,
        })
    }

    /// Opens one of a contact's sealed AddPackages: its validated KeyPackage and the
    /// credential material the contact sealed under its friendship keys.
    fn open_add_package(
        &self,
        keys: &InviteKeys,
        sealed: &[u8],
    ) -> Result<OpenedPackage, ClientError> {
        let bytes = ear::open(&keys.add_package_key, ADD_PACKAGE_DOMAIN, b"", sealed)?;
        let package: AddPackage =
            decode_exact(&bytes, MAX_MESSAGE).map_err(|e| ClientError::State(e.to_string()))?;
        let kp_in = KeyPackageIn::tls_deserialize_exact(package.key_package.as_slice())
            .map_err(ClientError::mls)?;
        let kp = kp_in
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(ClientError::mls)?;
        // Verify before adding: the leaf is signed by a client credential of this contact.
        let friend_info = LeafCredentialInfo {
            encrypted_client_credential: package.encrypted_client_credential,
            encrypted_signature_ear_key: package.encrypted_signature_ear_key,
        };
        let (friend_ck, friend_wk) = &keys.friend;
        let (credential, sek) = identity::unwrap(&friend_info, friend_ck, friend_wk)?;
        Ok(OpenedPackage {
            kp,
            friend_info,
            credential,
            sek,
        })
    }

    /// The member record of an opened AddPackage: in `Checked` mode its leaf must verify and
    /// belong to `contact` (or the invitation fails); otherwise whatever the check finds.
    fn add_package_record(
        &self,
        keys: &InviteKeys,
        opened: &OpenedPackage,
        contact: &ContactCard,
        mode: InviteMode,
    ) -> Result<MemberRecord, ClientError> {
        let leaf = opened.kp.leaf_node();
        let (friend_ck, friend_wk) = &keys.friend;
        let (anchors, now) = (&keys.anchors, keys.now);
        let record = if mode == InviteMode::Checked {
            match self.state.mode {
                DsMode::Rm => identity::verify_leaf(
                    leaf.credential().serialized_content(),
                    leaf.signature_key().as_slice(),
                    &opened.friend_info,
                    friend_ck,
                    friend_wk,
                    anchors,
                    now,
                )?,
                DsMode::Baseline => identity::verify_plain_leaf(
                    leaf.credential().serialized_content(),
                    leaf.signature_key().as_slice(),
                    anchors,
                    now,
                )?,
            };
            if opened.credential.tbs.identity.handle != contact.handle {
                return Err(ClientError::Unexpected(
                    "an AddPackage belongs to someone other than the contact",
                ));
            }
            verified_record(
                leaf.signature_key().as_slice(),
                &opened.credential,
                &contact.domain_str(),
            )
        } else {
            check_leaf(
                self.state.mode,
                leaf.credential().serialized_content(),
                leaf.signature_key().as_slice(),
                &opened.friend_info,
                (friend_ck, friend_wk),
                anchors,
                &self.revocations()?,
            )
        };
        Ok(record)
    }

    /// What our commit tells the hub and the invitee about one added client: its credential
    /// material under the group's keys, and our signed attribution sealed to the invitee.
    fn added_member(
        &self,
        keys: &InviteKeys,
        group: &GroupHandle,
        opened: &OpenedPackage,
    ) -> Result<AddedMember, ClientError> {
        let (group_ck, group_wk) = &keys.group;
        let kp_ref = opened
            .kp
            .hash_ref(self.provider.crypto())
            .map_err(ClientError::mls)?;
        let attribution = WelcomeAttributionInfo::sign(
            &keys.client_key,
            WelcomeAttributionTbs {
                sender: keys.own.clone(),
                group_id: group.0.clone().into(),
                key_package_ref: kp_ref.as_slice().to_vec().into(),
                credential_key: *group_ck.as_bytes(),
                wrapper_key: *group_wk.as_bytes(),
            },
        )
        .map_err(|e| ClientError::State(e.to_string()))?;
        Ok(AddedMember {
            key_package_ref: kp_ref.as_slice().to_vec().into(),
            credential: self.leaf_info(&opened.credential, &opened.sek, group_ck, group_wk)?,
            user: 0,
            attribution: ear::seal(
                &keys.wai_key,
                identity::ATTRIBUTION_DOMAIN,
                kp_ref.as_slice(),
                &encoded(&attribution)?,
            )?
            .into(),
        })
    }

    /// Sets the role of the user owning `leaf` (admins only; all its devices share the role).
    pub async fn set_role(
        &mut self,
        group: &GroupHandle,
        leaf: u32,
        role: Role,
    ) -> Result<(), ClientError> {
        let (signer, mls, ear_key) = self.member(group)?;
        let req = self.member_request(
            &mls,
            &ear_key,
            &signer,
            DsOperation::SetRole(SetRole { leaf, role }),
        )?;
        self.transport.ds(&req).await?;
        Ok(())
    }

    /// The group's users as the hub enforces them: each user's leaves and role.
    pub async fn roles(&self, group: &GroupHandle) -> Result<Vec<GroupUser>, ClientError> {
        let ear_key = EarKey::from_bytes(&unhex(&self.meta(group)?.ear_key)?)?;
        Ok(self.external_commit_info(group, &ear_key).await?.users)
    }

    /// Removes members by leaf index. Like every commit of ours, it first reads our queue if we
    /// committed since the last `receive` (the events follow with the next `receive`); if that
    /// puts other members on the chosen leaves, it sends nothing and fails with
    /// [`ClientError::MembersChanged`].
    pub async fn remove(
        &mut self,
        group: &GroupHandle,
        leaves: &[u32],
    ) -> Result<u64, ClientError> {
        // The caller chose the leaves in the epoch we are in; if catching up moves another
        // member onto one of them, removing it would hit someone else.
        let chosen = self.leaf_keys(group, leaves)?;
        self.catch_up_before_commit().await?;
        if self.leaf_keys(group, leaves)? != chosen {
            return Err(ClientError::MembersChanged);
        }
        let plan = Plan::Remove(leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect());
        self.commit(group, plan).await
    }

    /// The signature key at each of `leaves` (none for a blank leaf).
    fn leaf_keys(
        &self,
        group: &GroupHandle,
        leaves: &[u32],
    ) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let mls = self.load_group(group)?;
        Ok(leaves
            .iter()
            .map(|l| {
                mls.members()
                    .find(|m| m.index.u32() == *l)
                    .map(|m| m.signature_key)
            })
            .collect())
    }

    /// Commits a fresh UpdatePath (post-compromise security), including pending proposals.
    pub async fn update(&mut self, group: &GroupHandle) -> Result<u64, ClientError> {
        self.catch_up_before_commit().await?;
        self.commit(group, Plan::Update).await
    }

    /// Proposes our own removal; another member commits it.
    pub async fn leave(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let proposal = mls
            .leave_group(&self.provider, &signer)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        let req = self.member_request(
            &mls,
            &ear_key,
            &signer,
            DsOperation::SelfRemove(proposal.into()),
        )?;
        self.transport.ds(&req).await?;
        self.persist()
    }
}
