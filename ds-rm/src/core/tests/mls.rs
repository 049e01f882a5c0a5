//! Real OpenMLS clients for the DS tests, built with openmls directly (as the client library
//! and the `ds_core` benchmark do): devices with a queue at the hub's QS, groups created and
//! joined through the hub, commits staged by a member, and DS requests signed as clients sign
//! them.

use super::*;
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkePrivateKey, HpkePublicKey};
use mimi_rm_protocol::credentials::LeafCredentialInfo;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use openmls::prelude::{tls_codec::Deserialize as _, tls_codec::Serialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::Signer as _;
use std::ops::Deref;

/// The ciphersuite every test group uses (the one clients use).
pub(super) const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// A fresh Ed25519 key pair (leaf signer or per-group user auth key).
pub(super) fn keypair() -> SignatureKeyPair {
    SignatureKeyPair::new(SignatureScheme::ED25519).unwrap()
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// Encodes an MLS message for the wire.
pub(super) fn bytes(m: &MlsMessageOut) -> tls_codec::VLBytes {
    m.to_bytes().unwrap().into()
}

/// A signed DS request, as a client builds it (signature over label ‖ encoded tbs).
pub(super) fn ds_request(
    group_id: &[u8],
    ear: Option<&[u8]>,
    ts: u64,
    sender: DsSender,
    operation: DsOperation,
    signer: Option<&SignatureKeyPair>,
) -> DsRequest {
    let tbs = DsRequestTbs {
        group_id: group_id.to_vec().into(),
        ear_key: ear.map(|k| k.to_vec().into()),
        timestamp_ms: ts,
        nonce: rand::random(),
        sender,
        operation,
    };
    let mut signed = DS_REQUEST_SIGNATURE_LABEL.to_vec();
    signed.extend(encode(&tbs).unwrap());
    let signature = signer.map(|s| s.sign(&signed).unwrap()).unwrap_or_default();
    DsRequest {
        tbs,
        signature: signature.into(),
    }
}

/// A group on the hub as its members know it: id and `GroupStateEarKey`.
pub(super) struct Group {
    pub(super) id: Vec<u8>,
    pub(super) ear: [u8; 32],
}

impl Group {
    /// A request for this group at [`NOW`] under its EAR key.
    pub(super) fn request(
        &self,
        sender: DsSender,
        operation: DsOperation,
        signer: Option<&SignatureKeyPair>,
    ) -> DsRequest {
        ds_request(&self.id, Some(&self.ear), NOW, sender, operation, signer)
    }

    /// A request signed by `device`'s leaf.
    pub(super) fn by(&self, device: &Device, operation: DsOperation) -> DsRequest {
        self.request(
            DsSender::Member(device.leaf()),
            operation,
            Some(&device.signer),
        )
    }

    /// A request signed with a user's per-group auth key.
    pub(super) fn by_user(&self, user_key: &SignatureKeyPair, operation: DsOperation) -> DsRequest {
        self.request(
            DsSender::User(user_key.to_public_vec().into()),
            operation,
            Some(user_key),
        )
    }

    /// An unsigned request (only the EAR key authorises it).
    pub(super) fn anon(&self, operation: DsOperation) -> DsRequest {
        self.request(DsSender::Anonymous, operation, None)
    }

    /// The group after a removing commit that `member` merged: under the rotated key.
    pub(super) fn rotated(&self, member: &Device) -> Group {
        self.with_ear(member.rotated_ear())
    }

    /// The same group under another EAR key.
    pub(super) fn with_ear(&self, ear: [u8; 32]) -> Group {
        Group {
            id: self.id.clone(),
            ear,
        }
    }
}

/// What [`Device::commit`] proposes.
pub(super) enum Change {
    /// Add these KeyPackages.
    Add(Vec<KeyPackage>),
    /// Remove these leaves.
    Remove(Vec<u32>),
    /// Only an update path.
    Update,
}

/// One client: its OpenMLS provider and leaf signer, its queue at the hub's QS, and its group
/// once it is in one.
pub(super) struct Device {
    pub(super) provider: OpenMlsRustCrypto,
    pub(super) signer: SignatureKeyPair,
    /// The leaf's BasicCredential identity (a pseudonymous credential in the real client).
    identity: Vec<u8>,
    pub(super) queue: QsClient,
    pub(super) queue_ref: QueueRef,
    /// The credential material this device uploads for its leaf (opaque to the hub).
    pub(super) info: LeafCredentialInfo,
    pub(super) group: Option<MlsGroup>,
}

impl Device {
    /// Its group.
    pub(super) fn mls(&self) -> &MlsGroup {
        self.group.as_ref().expect("the device is in a group")
    }

    /// Its leaf index.
    pub(super) fn leaf(&self) -> u32 {
        self.mls().own_leaf_index().u32()
    }

    /// Its group's epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.mls().epoch().as_u64()
    }

    /// Its leaf credential with its signature key.
    pub(super) fn cwk(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.identity.clone()).into(),
            signature_key: self.signer.to_public_vec().into(),
        }
    }

    /// The leaf extension carrying `queue_ref`.
    pub(super) fn queue_extension(queue_ref: &QueueRef) -> Extensions<LeafNode> {
        Extensions::single(Extension::Unknown(
            QUEUE_REF_EXTENSION_TYPE,
            UnknownExtension(encode(queue_ref).unwrap()),
        ))
        .unwrap()
    }

    /// A KeyPackage whose leaf carries this device's queue.
    pub(super) fn key_package(&self) -> KeyPackageBundle {
        self.key_package_with(Self::queue_extension(&self.queue_ref))
    }

    /// A KeyPackage whose leaf carries `extensions`.
    pub(super) fn key_package_with(&self, extensions: Extensions<LeafNode>) -> KeyPackageBundle {
        KeyPackage::builder()
            .leaf_node_capabilities(leaf_capabilities())
            .leaf_node_extensions(extensions)
            .build(CS, &self.provider, &self.signer, self.cwk())
            .unwrap()
    }

    /// Stages a commit with `aad` as its authenticated data; it stays pending until
    /// [`Self::merge`] or [`Self::discard`].
    pub(super) fn commit(&mut self, change: Change, aad: &CommitAad) -> CommitBundle {
        self.commit_with(change, aad, None)
    }

    /// [`Self::commit`], with new leaf parameters for the committer's update path.
    pub(super) fn commit_with(
        &mut self,
        change: Change,
        aad: &CommitAad,
        leaf: Option<LeafNodeParameters>,
    ) -> CommitBundle {
        let provider = &self.provider;
        let signer = &self.signer;
        let mls = self.group.as_mut().expect("the device is in a group");
        mls.set_aad(encode(aad).unwrap());
        let builder = mls.commit_builder();
        let builder = match change {
            Change::Add(kps) => builder.propose_adds(kps),
            Change::Remove(leaves) => {
                builder.propose_removals(leaves.into_iter().map(LeafNodeIndex::new))
            }
            Change::Update => builder.force_self_update(true),
        };
        let builder = match leaf {
            Some(params) => builder.leaf_node_parameters(params).force_self_update(true),
            None => builder,
        };
        let bundle = builder
            .load_psks(provider.storage())
            .unwrap()
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .unwrap()
            .stage_commit(provider)
            .unwrap();
        let (commit, welcome, group_info) = bundle.into_messages();
        // As the real client does: a commit that removes anyone rotates to the new epoch's
        // exported EAR key, with material for every remaining leaf (random here: the hub
        // cannot tell).
        let pending = mls.pending_commit().expect("staged");
        let removed: Vec<u32> = pending
            .remove_proposals()
            .map(|r| r.remove_proposal().removed().u32())
            .collect();
        let rotation = (!removed.is_empty()).then(|| KeyRotation {
            new_ear_key: pending
                .export_secret(provider.crypto(), ROTATION_LABELS[0], &[], 32)
                .unwrap()
                .into(),
            credentials: leaves_after(
                mls.members().map(|m| m.index.u32()).collect(),
                &removed,
                pending.add_proposals().count(),
            )
            .into_iter()
            .map(|leaf| LeafCredentialEntry {
                leaf,
                info: LeafCredentialInfo {
                    encrypted_client_credential: random_bytes(200).into(),
                    encrypted_signature_ear_key: random_bytes(60).into(),
                },
            })
            .collect(),
        });
        CommitBundle {
            commit: bytes(&commit),
            group_info: bytes(&group_info.unwrap()),
            welcome: welcome.map(|w| bytes(&w)),
            rotation,
        }
    }

    /// The EAR key of the epoch this device is at, as a removing commit rotates to it.
    pub(super) fn rotated_ear(&self) -> [u8; 32] {
        self.mls()
            .export_secret(self.provider.crypto(), ROTATION_LABELS[0], &[], 32)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Merges the pending commit (the hub accepted it).
    pub(super) fn merge(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
    }

    /// Drops the pending commit (it was only built to be refused).
    pub(super) fn discard(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .clear_pending_commit(provider.storage())
            .unwrap();
    }

    /// An application message.
    pub(super) fn message(&mut self, text: &[u8]) -> tls_codec::VLBytes {
        let provider = &self.provider;
        let signer = &self.signer;
        let mls = self.group.as_mut().expect("the device is in a group");
        bytes(&mls.create_message(provider, signer, text).unwrap())
    }

    /// A proposal to remove itself.
    pub(super) fn leave(&mut self) -> tls_codec::VLBytes {
        let provider = &self.provider;
        let signer = &self.signer;
        let mls = self.group.as_mut().expect("the device is in a group");
        bytes(&mls.leave_group(provider, signer).unwrap())
    }

    /// A proposal to remove `leaf` (any member may send one; the hub only takes self-removes).
    pub(super) fn propose_remove(&mut self, leaf: u32) -> tls_codec::VLBytes {
        let provider = &self.provider;
        let signer = &self.signer;
        let mls = self.group.as_mut().expect("the device is in a group");
        let (m, _) = mls
            .propose_remove_member(provider, signer, LeafNodeIndex::new(leaf))
            .unwrap();
        bytes(&m)
    }

    /// Processes one handshake message the hub delivered: a commit is merged, a proposal kept
    /// for the next commit. Application messages are skipped.
    pub(super) fn process(&mut self, message: &[u8]) {
        let protocol = MlsMessageIn::tls_deserialize_exact(message)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        if protocol.wire_format() == WireFormat::PrivateMessage {
            return;
        }
        let provider = &self.provider;
        let mls = self.group.as_mut().expect("the device is in a group");
        let processed = mls.process_message(provider, protocol).unwrap();
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                mls.merge_staged_commit(provider, *staged).unwrap()
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                mls.store_pending_proposal(provider.storage(), *p).unwrap()
            }
            _ => {}
        }
    }

    /// Reads its queue and processes every handshake message in it; returns what it read.
    pub(super) fn catch_up(&mut self, hub: &TestHub) -> Vec<QueueMessage> {
        let read = self.queue.fetch(hub);
        for m in &read {
            if let QueueMessage::Mls(b) = m {
                self.process(b.as_slice());
            }
        }
        read
    }

    /// Forgets its OpenMLS state (a lost device, or one about to resync), keeping its keys.
    pub(super) fn lose_state(&mut self) {
        self.group = None;
        self.provider = OpenMlsRustCrypto::default();
    }
}

/// A hub plus its QS encryption key, which devices seal their queue addresses to.
pub(super) struct DsHub {
    hub: TestHub,
    qs_key: HpkePublicKey,
}

impl Deref for DsHub {
    type Target = TestHub;
    fn deref(&self) -> &TestHub {
        &self.hub
    }
}

/// The leaves after a commit: removed ones blanked, then each add in the leftmost blank leaf
/// (RFC 9420, 12.1.1), extending the tree when none is left.
fn leaves_after(mut occupied: Vec<u32>, removed: &[u32], adds: usize) -> Vec<u32> {
    occupied.retain(|l| !removed.contains(l));
    for _ in 0..adds {
        let free = (0u32..).find(|l| !occupied.contains(l)).unwrap();
        occupied.push(free);
    }
    occupied.sort_unstable();
    occupied
}

/// The entries one member's commit carries for the KeyPackages it adds; `users[i]` numbers the
/// user of the i-th.
pub(super) fn added(kps: &[KeyPackage], users: &[u32]) -> Vec<AddedMember> {
    let crypto = OpenMlsRustCrypto::default();
    kps.iter()
        .zip(users)
        .map(|(kp, user)| AddedMember {
            key_package_ref: kp
                .hash_ref(crypto.crypto())
                .unwrap()
                .as_slice()
                .to_vec()
                .into(),
            credential: LeafCredentialInfo {
                encrypted_client_credential: random_bytes(200).into(),
                encrypted_signature_ear_key: random_bytes(60).into(),
            },
            attribution: random_bytes(100).into(),
            user: *user,
        })
        .collect()
}

/// A commit's authenticated data adding `kps`, one user each.
pub(super) fn add_aad(kps: &[KeyPackage]) -> CommitAad {
    let users: Vec<u32> = (0..kps.len() as u32).collect();
    CommitAad {
        added: added(kps, &users),
        ..CommitAad::default()
    }
}

/// The hub as an external sender with `key`, as a creator lists it.
pub(super) fn hub_sender(key: &[u8]) -> ExternalSender {
    ExternalSender::new(
        key.to_vec().into(),
        BasicCredential::new(external_sender_identity(DOMAIN)).into(),
    )
}

/// A creator's group config with `queue` in its leaf (none: no QueueRef extension) and
/// `senders` as external senders (none: no such extension).
pub(super) fn group_config(
    queue: Option<&QueueRef>,
    senders: Vec<ExternalSender>,
    ciphersuite: Ciphersuite,
) -> MlsGroupCreateConfig {
    let mut builder = MlsGroupCreateConfig::builder()
        .ciphersuite(ciphersuite)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .capabilities(leaf_capabilities());
    if let Some(q) = queue {
        builder = builder
            .with_leaf_node_extensions(Device::queue_extension(q))
            .unwrap();
    }
    if !senders.is_empty() {
        builder = builder.with_group_context_extensions(
            Extensions::single(Extension::ExternalSenders(senders)).unwrap(),
        );
    }
    builder.build()
}

impl DsHub {
    /// A hub with the test configuration.
    pub(super) fn new() -> Self {
        Self::with(|_| {})
    }

    /// A hub with the test configuration changed by `adjust`.
    pub(super) fn with(adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let hub = TestHub::with(adjust);
        let QsResponse::EncryptionKey(key) = hub.ok(&qs_anon(QsOperation::EncryptionKey)) else {
            panic!("expected the QS key")
        };
        let qs_key = HpkePublicKey::from_bytes(key.as_slice()).unwrap();
        Self { hub, qs_key }
    }

    /// The fan-out address of `client`, sealed to this hub's QS.
    pub(super) fn sealed_queue_ref(&self, client: &ClientId) -> QueueRef {
        let plain = QueueRefPlain { client_id: *client };
        let ct = hpke_seal::seal(
            &self.qs_key,
            QUEUE_REF_HPKE_LABEL,
            DOMAIN.as_bytes(),
            &encode(&plain).unwrap(),
        )
        .unwrap();
        QueueRef {
            domain: DOMAIN.as_bytes().to_vec().into(),
            address: QueueAddress::Sealed(HpkeCiphertextWire {
                kem_output: ct.kem_output.into(),
                ciphertext: ct.ciphertext.into(),
            }),
        }
    }

    /// A new client with its own pseudonymous user and queue here.
    pub(super) fn device(&self) -> Device {
        let queue = QsClient::register(&self.hub);
        let queue_ref = self.sealed_queue_ref(&queue.client_id);
        Device {
            provider: OpenMlsRustCrypto::default(),
            signer: keypair(),
            identity: random_bytes(48),
            queue,
            queue_ref,
            info: LeafCredentialInfo {
                encrypted_client_credential: random_bytes(200).into(),
                encrypted_signature_ear_key: random_bytes(60).into(),
            },
            group: None,
        }
    }

    /// Reserves a group id.
    pub(super) fn reserve(&self) -> ReservedGroup {
        let req = ds_request(
            &[],
            None,
            NOW,
            DsSender::Anonymous,
            DsOperation::RequestGroupId,
            None,
        );
        let DsResponse::GroupId(r) = self.ok(&req) else {
            panic!("expected a group id")
        };
        r
    }

    /// The config a creator builds its group with: plaintext handshakes, no tree in messages,
    /// its queue in its leaf, and the hub (`external_sender_key`) as external sender.
    pub(super) fn create_config(
        creator: &Device,
        external_sender_key: &[u8],
        ciphersuite: Ciphersuite,
    ) -> MlsGroupCreateConfig {
        group_config(
            Some(&creator.queue_ref),
            vec![hub_sender(external_sender_key)],
            ciphersuite,
        )
    }

    /// `creator`'s new MLS group under `reserved` built from `cfg`, and the `CreateGroup`
    /// carrying its epoch-0 state with `user_key` as the creator's user auth key.
    pub(super) fn new_group(
        creator: &mut Device,
        reserved: &ReservedGroup,
        cfg: &MlsGroupCreateConfig,
        user_key: &SignatureKeyPair,
        kind: GroupKind,
    ) -> CreateGroup {
        let mls = MlsGroup::new_with_group_id(
            &creator.provider,
            &creator.signer,
            cfg,
            GroupId::from_slice(reserved.group_id.as_slice()),
            creator.cwk(),
        )
        .unwrap();
        let create = CreateGroup {
            group_info: bytes(
                &mls.export_group_info(creator.provider.crypto(), &creator.signer, false)
                    .unwrap(),
            ),
            ratchet_tree: mls
                .export_ratchet_tree()
                .tls_serialize_detached()
                .unwrap()
                .into(),
            creator: creator.info.clone(),
            creator_user_auth_key: user_key.to_public_vec().into(),
            kind,
        };
        creator.group = Some(mls);
        create
    }

    /// Reserves an id and creates a group of `kind` with `creator` at leaf 0 (its user, with
    /// auth key `user_key`, is the admin).
    pub(super) fn create_group_of(
        &self,
        creator: &mut Device,
        user_key: &SignatureKeyPair,
        kind: GroupKind,
    ) -> Group {
        let reserved = self.reserve();
        let cfg = Self::create_config(creator, reserved.external_sender_key.as_slice(), CS);
        let create = Self::new_group(creator, &reserved, &cfg, user_key, kind);
        let group = Group {
            id: reserved.group_id.as_slice().to_vec(),
            ear: random32(),
        };
        let req = group.request(
            DsSender::Member(0),
            DsOperation::CreateGroup(create),
            Some(&creator.signer),
        );
        assert_eq!(self.ok(&req), DsResponse::Accepted(0));
        group
    }

    /// A regular group of `members[0]` (whose user auth key is `user_key`) with every other
    /// device added as a user of its own, and every joiner joined from its Welcome.
    pub(super) fn group_of(
        &self,
        user_key: &SignatureKeyPair,
        members: &mut [&mut Device],
    ) -> Group {
        let (creator, joiners) = members.split_first_mut().unwrap();
        let group = self.create_group_of(creator, user_key, GroupKind::Regular);
        if joiners.is_empty() {
            return group;
        }
        let kps: Vec<KeyPackageBundle> = joiners.iter().map(|j| j.key_package()).collect();
        let plain: Vec<KeyPackage> = kps.iter().map(|k| k.key_package().clone()).collect();
        let bundle = creator.commit(Change::Add(plain.clone()), &add_aad(&plain));
        let resp = self.ok(&group.by(creator, DsOperation::AddMembers(bundle)));
        assert_eq!(resp, DsResponse::Accepted(1));
        creator.merge();
        for (joiner, kp) in joiners.iter_mut().zip(&kps) {
            self.join(joiner, &group, kp);
        }
        group
    }

    /// `joiner` takes its Welcome from its queue, opens the `JoinerInfo` the hub sealed to its
    /// KeyPackage, fetches the tree of the Welcome's epoch from the hub and joins. Returns what
    /// the hub told it and the Welcome it delivered.
    pub(super) fn join(
        &self,
        joiner: &mut Device,
        group: &Group,
        kp: &KeyPackageBundle,
    ) -> (JoinerInfo, WelcomeBundle) {
        let welcome = joiner
            .queue
            .fetch(self)
            .into_iter()
            .find_map(|m| match m {
                QueueMessage::Welcome(w) => Some(w),
                QueueMessage::Mls(_) | QueueMessage::Stored(_) => None,
            })
            .expect("a Welcome in the joiner's queue");
        let kp_ref = kp.key_package().hash_ref(joiner.provider.crypto()).unwrap();
        let info = hpke_seal::open(
            &HpkePrivateKey::from_bytes(kp.init_private_key()).unwrap(),
            JOINER_INFO_HPKE_LABEL,
            kp_ref.as_slice(),
            &HpkeCiphertext {
                kem_output: welcome.joiner_info.kem_output.as_slice().to_vec(),
                ciphertext: welcome.joiner_info.ciphertext.as_slice().to_vec(),
            },
        )
        .unwrap();
        let info: JoinerInfo = decode_exact(&info, usize::MAX).unwrap();
        assert_eq!(info.group_id.as_slice(), group.id.as_slice());
        assert_eq!(info.ear_key.as_slice(), group.ear.as_slice());
        let req = group.request(
            DsSender::Joiner(joiner.signer.to_public_vec().into()),
            DsOperation::WelcomeInfo(info.epoch),
            Some(&joiner.signer),
        );
        let DsResponse::WelcomeInfo(tree) = self.ok(&req) else {
            panic!("expected WelcomeInfo")
        };
        let MlsMessageBodyIn::Welcome(w) =
            MlsMessageIn::tls_deserialize_exact(welcome.welcome.as_slice())
                .unwrap()
                .extract()
        else {
            panic!("not a Welcome")
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(tree.ratchet_tree.as_slice()).unwrap();
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build();
        let mls = StagedWelcome::new_from_welcome(&joiner.provider, &config, w, Some(tree))
            .unwrap()
            .into_group(&joiner.provider)
            .unwrap();
        assert_eq!(mls.epoch().as_u64(), info.epoch);
        joiner.group = Some(mls);
        (info, welcome)
    }

    /// What an external joiner fetches.
    pub(super) fn external_commit_info(&self, group: &Group) -> ExternalCommitInfo {
        let DsResponse::ExternalCommitInfo(info) =
            self.ok(&group.anon(DsOperation::ExternalCommitInfo))
        else {
            panic!("expected ExternalCommitInfo")
        };
        info
    }

    /// An external commit into `group` by `joiner` from the hub's current public state, with
    /// `aad`. A joiner whose signature key is a member's replaces that member's leaf. Returns the
    /// joiner's new group state (to keep once the hub accepted the commit) and the commit.
    pub(super) fn external_commit(
        &self,
        joiner: &mut Device,
        group: &Group,
        aad: &CommitAad,
    ) -> (MlsGroup, CommitBundle) {
        // An external joiner builds the group afresh (any old state of it is dropped).
        joiner.lose_state();
        let info = self.external_commit_info(group);
        let MlsMessageBodyIn::GroupInfo(vgi) =
            MlsMessageIn::tls_deserialize_exact(info.group_info.as_slice())
                .unwrap()
                .extract()
        else {
            panic!("not a GroupInfo")
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(info.ratchet_tree.as_slice()).unwrap();
        let params = LeafNodeParameters::builder()
            .with_capabilities(leaf_capabilities())
            .with_extensions(Device::queue_extension(&joiner.queue_ref))
            .build();
        let (mls, bundle) = MlsGroup::external_commit_builder()
            .with_config(
                MlsGroupJoinConfig::builder()
                    .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
                    .use_ratchet_tree_extension(false)
                    .build(),
            )
            .with_aad(encode(aad).unwrap())
            .with_ratchet_tree(tree)
            .build_group(&joiner.provider, vgi, joiner.cwk())
            .unwrap()
            .leaf_node_parameters(params)
            .load_psks(joiner.provider.storage())
            .unwrap()
            .create_group_info(true)
            .build(
                joiner.provider.rand(),
                joiner.provider.crypto(),
                &joiner.signer,
                |_| true,
            )
            .unwrap()
            .finalize(&joiner.provider)
            .unwrap();
        let (commit, _, group_info) = bundle.into_messages();
        let bundle = CommitBundle {
            commit: bytes(&commit),
            group_info: bytes(&group_info.unwrap()),
            welcome: None,
            rotation: None,
        };
        (mls, bundle)
    }
}
