//! The client: key custody, OpenMLS groups, and every hub operation.

use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::provider::ClientProvider;
use crate::state::{self, ClientState, GroupMeta, PendingKeyPackage, unhex};
use crate::transport::Transport;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{decode_exact, encode};
use openmls::prelude::{tls_codec::Deserialize as _, tls_codec::Serialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod recovery;
#[cfg(feature = "adversary")]
mod tamper;
#[cfg(feature = "adversary")]
pub use tamper::Tamper;

/// The one ciphersuite this client speaks (MLS MTI).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// EAR domain of AddPackages.
const ADD_PACKAGE_DOMAIN: &str = "add package";
/// One-time AddPackages published at registration.
const ADD_PACKAGES: usize = 5;
const MAX_MESSAGE: usize = 16 << 20;

/// A group, by its MLS group id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupHandle(pub Vec<u8>);

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupHandle({})", hex::encode(&self.0))
    }
}

impl std::fmt::Display for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl GroupHandle {
    /// Parses the hex form printed by `Display`.
    pub fn from_hex(s: &str) -> Result<Self, ClientError> {
        hex::decode(s.trim())
            .map(Self)
            .map_err(|_| ClientError::Unexpected("group id must be hex"))
    }
}

/// Something that arrived from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// We were welcomed into a group.
    Joined {
        /// The group.
        group: GroupHandle,
    },
    /// An application message.
    Message {
        /// The group.
        group: GroupHandle,
        /// Sender's leaf index.
        sender: u32,
        /// Decrypted content.
        plaintext: Vec<u8>,
    },
    /// A commit by another member was applied.
    Commit {
        /// The group.
        group: GroupHandle,
        /// New epoch.
        epoch: u64,
    },
    /// A member proposed something (e.g. to leave); committed later by someone.
    Proposal {
        /// The group.
        group: GroupHandle,
    },
    /// We are no longer a member.
    Removed {
        /// The group.
        group: GroupHandle,
    },
    /// We left an epoch we could not follow and re-entered the group by external commit. With
    /// `reported` set, a commit the hub had accepted failed our checks and we reported it;
    /// without, we had fallen behind.
    Resynced {
        /// The group.
        group: GroupHandle,
        /// Our report, if a commit failed.
        reported: Option<CommitRejected>,
        /// The epoch we re-entered at.
        epoch: u64,
    },
    /// A queue entry that could not be processed (logged and skipped).
    Undecryptable {
        /// Queue sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// What processing one MLS message from the queue led to.
enum Processed {
    /// Done; maybe something to report to the user.
    Done(Option<Event>),
    /// A commit at our epoch failed: report it and resync.
    Rejected(GroupHandle, CommitRejected),
    /// A commit for a later epoch: we missed something; resync.
    Behind(GroupHandle),
}

enum Plan {
    Add(Vec<KeyPackage>),
    Remove(Vec<LeafNodeIndex>),
    Update,
    Delete(Vec<LeafNodeIndex>),
}

/// A client with its keys, its groups and a connection to its home hub.
pub struct Client {
    transport: Transport,
    dir: PathBuf,
    state: ClientState,
    provider: ClientProvider,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn caps() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[ExtensionType::Unknown(QUEUE_REF_EXTENSION_TYPE)]),
        None,
        None,
    )
}

fn b32(v: &[u8]) -> Result<[u8; 32], ClientError> {
    v.try_into()
        .map_err(|_| ClientError::State("expected 32 bytes".into()))
}

impl Client {
    /// Registers a new client on the hub at `hub_url` and stores its state in `dir`.
    pub async fn register(dir: &Path, hub_url: &str, name: &str) -> Result<Self, ClientError> {
        let transport = Transport::new(hub_url);
        let domain = transport.domain().await?;
        let qs_public = match transport
            .qs(&anonymous_qs(QsOperation::EncryptionKey))
            .await?
        {
            QsResponse::EncryptionKey(k) => k.as_slice().to_vec(),
            _ => return Err(ClientError::Unexpected("expected the QS key")),
        };
        let client_auth = SigningKey::generate();
        let user_auth = SigningKey::generate();
        let token: [u8; 32] = mimi_rm_crypto::ids::random_bytes();
        let add_package_key = EarKey::random();
        let secret = RatchetSecret::random();
        let create = CreateUser {
            user_auth_key: user_auth.verifying_key().as_bytes().to_vec().into(),
            client_auth_key: client_auth.verifying_key().as_bytes().to_vec().into(),
            friendship_token: token.to_vec().into(),
            initial_ratchet_secret: secret.as_bytes().to_vec().into(),
        };
        let req = signed_qs(
            &client_auth,
            QsSender::NewClient,
            QsOperation::CreateUser(create),
        )?;
        let QsResponse::UserCreated(ids) = transport.qs(&req).await? else {
            return Err(ClientError::Unexpected("expected UserCreated"));
        };
        let state = ClientState {
            name: name.to_owned(),
            user_id: hex::encode(ids.user_id),
            client_id: hex::encode(ids.client_id),
            client_auth_key: hex::encode(client_auth.to_bytes()),
            user_auth_key: hex::encode(user_auth.to_bytes()),
            friendship_token: hex::encode(token),
            add_package_key: hex::encode(add_package_key.as_bytes()),
            queue_ratchet: hex::encode(QueueRatchet::new(secret).to_bytes()),
            qs_public_key: hex::encode(qs_public),
            domain,
            groups: BTreeMap::new(),
            key_packages: BTreeMap::new(),
        };
        let mut client = Self {
            transport,
            dir: dir.to_owned(),
            state,
            provider: ClientProvider::default(),
        };
        client.publish_add_packages(ADD_PACKAGES).await?;
        Ok(client)
    }

    /// Loads a client saved in `dir`, talking to `hub_url`.
    pub fn load(dir: &Path, hub_url: &str) -> Result<Self, ClientError> {
        let (state, mls) = state::load(dir)?;
        Ok(Self {
            transport: Transport::new(hub_url),
            dir: dir.to_owned(),
            state,
            provider: ClientProvider::from_snapshot(mls),
        })
    }

    /// Records every request body this client sends (wire log).
    pub fn set_recorder(&mut self, recorder: crate::transport::Recorder) {
        self.transport.set_recorder(recorder);
    }

    /// Our pseudonymous QS client id (the queue id; only our own QS can link it to leaves).
    pub fn client_id_bytes(&self) -> Result<[u8; 16], ClientError> {
        self.client_id()
    }

    /// The credential identities of our leaves in every current group: pseudonyms the hub must
    /// never store in the clear.
    pub fn leaf_identities(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        self.groups()
            .iter()
            .map(|g| {
                let mls = self.load_group(g)?;
                let leaf = mls
                    .own_leaf_node()
                    .ok_or(ClientError::Unexpected("no own leaf"))?;
                Ok(leaf.credential().serialized_content().to_vec())
            })
            .collect()
    }

    /// Local name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The card a contact needs to add us to groups.
    pub fn contact_card(&self) -> Result<ContactCard, ClientError> {
        Ok(ContactCard {
            friendship_token: b32(&unhex(&self.state.friendship_token)?)?,
            add_package_key: b32(&unhex(&self.state.add_package_key)?)?,
        })
    }

    /// Groups we are in.
    pub fn groups(&self) -> Vec<GroupHandle> {
        self.state
            .groups
            .keys()
            .filter_map(|k| GroupHandle::from_hex(k).ok())
            .collect()
    }

    /// Our leaf index in a group.
    pub fn own_leaf(&self, group: &GroupHandle) -> Result<u32, ClientError> {
        Ok(self.load_group(group)?.own_leaf_index().u32())
    }

    /// Current epoch of a group as we see it.
    pub fn epoch(&self, group: &GroupHandle) -> Result<u64, ClientError> {
        Ok(self.load_group(group)?.epoch().as_u64())
    }

    /// Leaf indices of the current members.
    pub fn members(&self, group: &GroupHandle) -> Result<Vec<u32>, ClientError> {
        Ok(self
            .load_group(group)?
            .members()
            .map(|m| m.index.u32())
            .collect())
    }

    /// The EAR key of a group (for tests and diagnostics; never logged).
    pub fn group_ear_key(&self, group: &GroupHandle) -> Result<[u8; 32], ClientError> {
        let meta = self.meta(group)?;
        b32(&unhex(&meta.ear_key)?)
    }

    fn persist(&self) -> Result<(), ClientError> {
        state::save(&self.dir, &self.state, &self.provider.snapshot())
    }

    fn client_auth(&self) -> Result<SigningKey, ClientError> {
        Ok(SigningKey::from_bytes(&unhex(
            &self.state.client_auth_key,
        )?)?)
    }

    fn client_id(&self) -> Result<[u8; 16], ClientError> {
        unhex(&self.state.client_id)?
            .try_into()
            .map_err(|_| ClientError::State("client id".into()))
    }

    fn meta(&self, group: &GroupHandle) -> Result<&GroupMeta, ClientError> {
        self.state
            .groups
            .get(&hex::encode(&group.0))
            .ok_or(ClientError::UnknownGroup)
    }

    fn load_group(&self, group: &GroupHandle) -> Result<MlsGroup, ClientError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&group.0))
            .map_err(ClientError::mls)?
            .ok_or(ClientError::UnknownGroup)
    }

    fn signer(&self, public_hex: &str) -> Result<SignatureKeyPair, ClientError> {
        SignatureKeyPair::read(
            self.provider.storage(),
            &unhex(public_hex)?,
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or_else(|| ClientError::State("missing signature key".into()))
    }

    /// A fresh `QueueRef` for one leaf: our client id sealed to our QS (fresh randomness each
    /// time, so two leaves of ours cannot be linked by it).
    fn sealed_queue_ref(&self) -> Result<Extension, ClientError> {
        let pk = HpkePublicKey::from_bytes(&unhex(&self.state.qs_public_key)?)?;
        let plain = encode(&QueueRefPlain {
            client_id: self.client_id()?,
        })
        .map_err(|e| ClientError::State(e.to_string()))?;
        let sealed = hpke_seal::seal(
            &pk,
            QUEUE_REF_HPKE_LABEL,
            self.state.domain.as_bytes(),
            &plain,
        )?;
        let qr = QueueRef {
            domain: self.state.domain.as_bytes().to_vec().into(),
            sealed: HpkeCiphertextWire {
                kem_output: sealed.kem_output.into(),
                ciphertext: sealed.ciphertext.into(),
            },
        };
        let bytes = encode(&qr).map_err(|e| ClientError::State(e.to_string()))?;
        Ok(Extension::Unknown(
            QUEUE_REF_EXTENSION_TYPE,
            UnknownExtension(bytes),
        ))
    }

    /// A fresh pseudonymous leaf identity and signature key.
    fn new_leaf_identity(&self) -> Result<(SignatureKeyPair, CredentialWithKey), ClientError> {
        let signer =
            SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(ClientError::mls)?;
        signer
            .store(self.provider.storage())
            .map_err(ClientError::mls)?;
        let credential = BasicCredential::new(mimi_rm_crypto::ids::random_id().to_vec()).into();
        let cwk = CredentialWithKey {
            credential,
            signature_key: signer.to_public_vec().into(),
        };
        Ok((signer, cwk))
    }

    /// Replaces our published AddPackages with `count` one-time ones plus a last-resort one.
    pub async fn publish_add_packages(&mut self, count: usize) -> Result<(), ClientError> {
        let key = EarKey::from_bytes(&unhex(&self.state.add_package_key)?)?;
        let mut packages = Vec::with_capacity(count);
        let mut last_resort = Vec::new();
        for i in 0..=count {
            let is_last_resort = i == count;
            let (signer, cwk) = self.new_leaf_identity()?;
            let mut builder = KeyPackage::builder()
                .leaf_node_capabilities(caps())
                .leaf_node_extensions(
                    Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
                );
            if is_last_resort {
                builder = builder.mark_as_last_resort();
            }
            let kpb = builder
                .build(CIPHERSUITE, &self.provider, &signer, cwk)
                .map_err(ClientError::mls)?;
            let kp_ref = kpb
                .key_package()
                .hash_ref(self.provider.crypto())
                .map_err(ClientError::mls)?;
            self.state.key_packages.insert(
                hex::encode(kp_ref.as_slice()),
                PendingKeyPackage {
                    init_private: hex::encode(&**kpb.init_private_key()),
                    signer_public: hex::encode(signer.public()),
                },
            );
            let bytes = kpb
                .key_package()
                .tls_serialize_detached()
                .map_err(ClientError::mls)?;
            let sealed = ear::seal(&key, ADD_PACKAGE_DOMAIN, b"", &bytes)?;
            if is_last_resort {
                last_resort = sealed;
            } else {
                packages.push(sealed.into());
            }
        }
        let op = QsOperation::PublishAddPackages(PublishAddPackages {
            packages,
            last_resort: last_resort.into(),
        });
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            op,
        )?;
        self.transport.qs(&req).await?;
        self.persist()
    }

    fn ds_request(
        &self,
        group: &[u8],
        ear_key: Option<&EarKey>,
        sender: DsSender,
        operation: DsOperation,
        signer: Option<&SignatureKeyPair>,
    ) -> Result<DsRequest, ClientError> {
        let tbs = DsRequestTbs {
            group_id: group.to_vec().into(),
            ear_key: ear_key.map(|k| k.as_bytes().to_vec().into()),
            timestamp_ms: now_ms(),
            nonce: mimi_rm_crypto::ids::random_id(),
            sender,
            operation,
        };
        let signature = match signer {
            Some(s) => {
                let mut signed = DS_REQUEST_SIGNATURE_LABEL.to_vec();
                signed.extend(encode(&tbs).map_err(|e| ClientError::State(e.to_string()))?);
                s.sign(&signed)
                    .map_err(|e| ClientError::Mls(format!("sign: {e:?}")))?
            }
            None => Vec::new(),
        };
        Ok(DsRequest {
            tbs,
            signature: signature.into(),
        })
    }

    /// Creates a group on the hub with us as its only member.
    pub async fn create_group(&mut self) -> Result<GroupHandle, ClientError> {
        let req = self.ds_request(
            &[],
            None,
            DsSender::Anonymous,
            DsOperation::RequestGroupId,
            None,
        )?;
        let DsResponse::GroupId(gid) = self.transport.ds(&req).await? else {
            return Err(ClientError::Unexpected("expected a group id"));
        };
        let gid = gid.as_slice().to_vec();
        let (signer, cwk) = self.new_leaf_identity()?;
        let cfg = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .capabilities(caps())
            .with_leaf_node_extensions(
                Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
            )
            .map_err(ClientError::mls)?
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &signer,
            &cfg,
            GroupId::from_slice(&gid),
            cwk,
        )
        .map_err(ClientError::mls)?;
        let group_info = group
            .export_group_info(self.provider.crypto(), &signer, false)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        let ratchet_tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(ClientError::mls)?;
        let ear_key = EarKey::random();
        let op = DsOperation::CreateGroup(CreateGroup {
            group_info: group_info.into(),
            ratchet_tree: ratchet_tree.into(),
        });
        let req = self.ds_request(&gid, Some(&ear_key), DsSender::Member(0), op, Some(&signer))?;
        self.transport.ds(&req).await?;
        self.state.groups.insert(
            hex::encode(&gid),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: hex::encode(signer.public()),
            },
        );
        self.persist()?;
        Ok(GroupHandle(gid))
    }

    /// Fetches the contact's AddPackages with its card and adds all its clients to the group.
    pub async fn invite(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
    ) -> Result<u64, ClientError> {
        let op = QsOperation::FetchAddPackages(contact.friendship_token.to_vec().into());
        let QsResponse::AddPackages(pkgs) = self.transport.qs(&anonymous_qs(op)).await? else {
            return Err(ClientError::Unexpected("expected AddPackages"));
        };
        let key = EarKey::from_bytes(&contact.add_package_key)?;
        let mut kps = Vec::new();
        for p in pkgs {
            let bytes = ear::open(&key, ADD_PACKAGE_DOMAIN, b"", p.as_slice())?;
            let kp_in = KeyPackageIn::tls_deserialize_exact(&bytes).map_err(ClientError::mls)?;
            let kp = kp_in
                .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                .map_err(ClientError::mls)?;
            kps.push(kp);
        }
        if kps.is_empty() {
            return Err(ClientError::NoAddPackage);
        }
        self.commit(group, Plan::Add(kps)).await
    }

    /// Removes members by leaf index.
    pub async fn remove(
        &mut self,
        group: &GroupHandle,
        leaves: &[u32],
    ) -> Result<u64, ClientError> {
        let plan = Plan::Remove(leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect());
        self.commit(group, plan).await
    }

    /// Commits a fresh UpdatePath (post-compromise security), including pending proposals.
    pub async fn update(&mut self, group: &GroupHandle) -> Result<u64, ClientError> {
        self.commit(group, Plan::Update).await
    }

    /// Removes everyone else and deletes the group on the hub.
    pub async fn delete_group(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        let mls = self.load_group(group)?;
        let own = mls.own_leaf_index();
        let others = mls
            .members()
            .map(|m| m.index)
            .filter(|i| *i != own)
            .collect();
        self.commit(group, Plan::Delete(others)).await?;
        let mut mls = self.load_group(group)?;
        mls.delete(self.provider.storage())
            .map_err(ClientError::mls)?;
        self.state.groups.remove(&hex::encode(&group.0));
        self.persist()
    }

    /// What every member request needs: our signer in the group, the group, and its EAR key.
    fn member(
        &self,
        group: &GroupHandle,
    ) -> Result<(SignatureKeyPair, MlsGroup, EarKey), ClientError> {
        let meta = self.meta(group)?;
        Ok((
            self.signer(&meta.signer_public)?,
            self.load_group(group)?,
            EarKey::from_bytes(&unhex(&meta.ear_key)?)?,
        ))
    }

    /// A DS request signed by our leaf in `mls`.
    fn member_request(
        &self,
        mls: &MlsGroup,
        ear_key: &EarKey,
        signer: &SignatureKeyPair,
        operation: DsOperation,
    ) -> Result<DsRequest, ClientError> {
        let sender = DsSender::Member(mls.own_leaf_index().u32());
        self.ds_request(
            mls.group_id().as_slice(),
            Some(ear_key),
            sender,
            operation,
            Some(signer),
        )
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

    /// Encrypts and sends an application message.
    pub async fn send(&mut self, group: &GroupHandle, plaintext: &[u8]) -> Result<(), ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let msg = mls
            .create_message(&self.provider, &signer, plaintext)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        let req = self.member_request(
            &mls,
            &ear_key,
            &signer,
            DsOperation::SendMessage(msg.into()),
        )?;
        self.transport.ds(&req).await?;
        self.persist()
    }

    async fn commit(&mut self, group: &GroupHandle, plan: Plan) -> Result<u64, ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let op = self.build_commit(&mut mls, &signer, plan, self.provider.crypto())?;
        self.send_commit(mls, &ear_key, &signer, op).await
    }

    /// Stages a commit for `plan` and wraps it as the matching DS operation. `crypto` is the
    /// provider's own, except for the test adversary.
    fn build_commit(
        &self,
        mls: &mut MlsGroup,
        signer: &SignatureKeyPair,
        plan: Plan,
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
    ) -> Result<DsOperation, ClientError> {
        let builder = mls.commit_builder();
        let builder = match &plan {
            Plan::Add(kps) => builder.propose_adds(kps.iter().cloned()),
            Plan::Remove(l) | Plan::Delete(l) => builder.propose_removals(l.iter().copied()),
            Plan::Update => builder.force_self_update(true),
        };
        let bundle = builder
            .load_psks(self.provider.storage())
            .map_err(ClientError::mls)?
            .create_group_info(true)
            .build(self.provider.rand(), crypto, signer, |_| true)
            .map_err(ClientError::mls)?
            .stage_commit(&self.provider)
            .map_err(ClientError::mls)?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let cb = CommitBundle {
            commit: commit.to_bytes().map_err(ClientError::mls)?.into(),
            group_info: group_info
                .ok_or(ClientError::Unexpected("commit without GroupInfo"))?
                .to_bytes()
                .map_err(ClientError::mls)?
                .into(),
            welcome: welcome
                .map(|w| w.to_bytes().map(Into::into))
                .transpose()
                .map_err(ClientError::mls)?,
        };
        Ok(match plan {
            Plan::Add(_) => DsOperation::AddMembers(cb),
            Plan::Remove(_) => DsOperation::RemoveMembers(cb),
            Plan::Update => DsOperation::Update(cb),
            Plan::Delete(_) => DsOperation::DeleteGroup(cb),
        })
    }

    /// Sends a staged commit; merges it only once the hub has accepted it (the hub orders
    /// commits), and drops it otherwise.
    async fn send_commit(
        &mut self,
        mut mls: MlsGroup,
        ear_key: &EarKey,
        signer: &SignatureKeyPair,
        op: DsOperation,
    ) -> Result<u64, ClientError> {
        let req = self.member_request(&mls, ear_key, signer, op)?;
        match self.transport.ds(&req).await {
            Ok(_) => {
                mls.merge_pending_commit(&self.provider)
                    .map_err(ClientError::mls)?;
                self.persist()?;
                Ok(mls.epoch().as_u64())
            }
            Err(e) => {
                mls.clear_pending_commit(self.provider.storage())
                    .map_err(ClientError::mls)?;
                self.persist()?;
                Err(e)
            }
        }
    }

    /// Fetches, decrypts and processes everything queued for us, then acknowledges it.
    pub async fn receive(&mut self) -> Result<Vec<Event>, ClientError> {
        let auth = self.client_auth()?;
        let id = self.client_id()?;
        let mut events = Vec::new();
        loop {
            let mut ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
            let op = QsOperation::Dequeue(Dequeue {
                ack_below: ratchet.next_seq(),
                max: 100,
            });
            let QsResponse::Messages(batch) = self
                .transport
                .qs(&signed_qs(&auth, QsSender::Client(id), op)?)
                .await?
            else {
                return Err(ClientError::Unexpected("expected Messages"));
            };
            if batch.messages.is_empty() {
                break;
            }
            for m in batch.messages {
                let plain = match ratchet.decrypt_next(m.seq, m.ciphertext.as_slice()) {
                    Ok(p) => p,
                    Err(e) => {
                        // Without this key no later message can be read either: stop here.
                        return Err(ClientError::Crypto(e));
                    }
                };
                let event = match decode_exact::<QueueMessage>(&plain, MAX_MESSAGE) {
                    Ok(msg) => self.handle(msg).await,
                    Err(e) => Err(ClientError::State(e.to_string())),
                };
                match event {
                    Ok(Some(ev)) => events.push(ev),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(seq = m.seq, error = %e, "skipping queue entry");
                        events.push(Event::Undecryptable {
                            seq: m.seq,
                            reason: e.to_string(),
                        });
                    }
                }
                self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
                self.persist()?;
            }
            if batch.remaining == 0 {
                break;
            }
        }
        // Acknowledge everything consumed so the QS deletes it.
        let ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
        let op = QsOperation::Dequeue(Dequeue {
            ack_below: ratchet.next_seq(),
            max: 0,
        });
        self.transport
            .qs(&signed_qs(&auth, QsSender::Client(id), op)?)
            .await?;
        Ok(events)
    }

    async fn handle(&mut self, msg: QueueMessage) -> Result<Option<Event>, ClientError> {
        match msg {
            QueueMessage::Welcome(bundle) => self.join(bundle).await.map(Some),
            QueueMessage::Mls(bytes) => match self.process_mls(bytes.as_slice())? {
                Processed::Done(event) => Ok(event),
                Processed::Rejected(group, report) => self.recover(group, Some(report)).await,
                Processed::Behind(group) => self.recover(group, None).await,
            },
        }
    }

    fn process_mls(&mut self, bytes: &[u8]) -> Result<Processed, ClientError> {
        let pm = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(ClientError::mls)?
            .try_into_protocol_message()
            .map_err(ClientError::mls)?;
        let group = GroupHandle(pm.group_id().as_slice().to_vec());
        let mut mls = self.load_group(&group)?;
        let (msg_epoch, ours) = (pm.epoch().as_u64(), mls.epoch().as_u64());
        let is_commit = pm.content_type() == ContentType::Commit;
        if is_commit && msg_epoch < ours {
            // Superseded, e.g. another member's resync that lost to ours.
            tracing::debug!(group = %group, msg_epoch, ours, "ignoring an old commit");
            return Ok(Processed::Done(None));
        }
        if is_commit && msg_epoch > ours {
            return Ok(Processed::Behind(group));
        }
        let processed = match mls.process_message(&self.provider, pm) {
            Ok(p) => p,
            // The hub fans out only commits it accepted, so this one moved the hub to an
            // epoch we cannot enter: report it and resync.
            Err(e) if is_commit => {
                tracing::warn!(group = %group, epoch = msg_epoch, error = %e,
                    "a commit the hub accepted fails our checks");
                let report = CommitRejected {
                    epoch: msg_epoch,
                    commit_ref: commit_ref(bytes),
                    reason: recovery::reason_of(&e),
                };
                return Ok(Processed::Rejected(group, report));
            }
            Err(e) => return Err(ClientError::mls(e)),
        };
        let sender = match processed.sender() {
            Sender::Member(i) => i.u32(),
            _ => u32::MAX,
        };
        let event = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Event::Message {
                group,
                sender,
                plaintext: m.into_bytes(),
            },
            ProcessedMessageContent::ProposalMessage(p) => {
                mls.store_pending_proposal(self.provider.storage(), *p)
                    .map_err(ClientError::mls)?;
                Event::Proposal { group }
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                mls.merge_staged_commit(&self.provider, *sc)
                    .map_err(ClientError::mls)?;
                if mls.is_active() {
                    Event::Commit {
                        group,
                        epoch: mls.epoch().as_u64(),
                    }
                } else {
                    self.state.groups.remove(&hex::encode(&group.0));
                    Event::Removed { group }
                }
            }
            _ => return Ok(Processed::Done(None)),
        };
        Ok(Processed::Done(Some(event)))
    }

    async fn join(&mut self, bundle: WelcomeBundle) -> Result<Event, ClientError> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(bundle.welcome.as_slice())
                .map_err(ClientError::mls)?
                .extract()
        else {
            return Err(ClientError::Unexpected("not a Welcome"));
        };
        let (kp_ref, pending) = welcome
            .secrets()
            .iter()
            .find_map(|s| {
                let r = hex::encode(s.new_member().as_slice());
                self.state
                    .key_packages
                    .get(&r)
                    .map(|p| (s.new_member(), p.clone()))
            })
            .ok_or(ClientError::Unexpected(
                "Welcome for none of our KeyPackages",
            ))?;
        let init = HpkePrivateKey::from_bytes(&unhex(&pending.init_private)?)?;
        let ct = HpkeCiphertext {
            kem_output: bundle.joiner_info.kem_output.as_slice().to_vec(),
            ciphertext: bundle.joiner_info.ciphertext.as_slice().to_vec(),
        };
        let info: JoinerInfo = decode_exact(
            &hpke_seal::open(&init, JOINER_INFO_HPKE_LABEL, kp_ref.as_slice(), &ct)?,
            4096,
        )
        .map_err(|e| ClientError::State(e.to_string()))?;
        let ear_key = EarKey::from_bytes(info.ear_key.as_slice())?;
        let signer = self.signer(&pending.signer_public)?;
        // Fetch the tree before touching the Welcome: a failed join consumes the KeyPackage.
        let req = self.ds_request(
            info.group_id.as_slice(),
            Some(&ear_key),
            DsSender::Joiner(signer.public().to_vec().into()),
            DsOperation::WelcomeInfo(info.epoch),
            Some(&signer),
        )?;
        let DsResponse::WelcomeInfo(wi) = self.transport.ds(&req).await? else {
            return Err(ClientError::Unexpected("expected WelcomeInfo"));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(wi.ratchet_tree.as_slice())
            .map_err(ClientError::mls)?;
        let group =
            StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, Some(tree))
                .map_err(ClientError::mls)?
                .into_group(&self.provider)
                .map_err(ClientError::mls)?;
        let handle = GroupHandle(group.group_id().as_slice().to_vec());
        if handle.0 != info.group_id.as_slice() {
            return Err(ClientError::Unexpected(
                "Welcome and joiner info name different groups",
            ));
        }
        self.state.groups.insert(
            hex::encode(&handle.0),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: pending.signer_public.clone(),
            },
        );
        self.state
            .key_packages
            .remove(&hex::encode(kp_ref.as_slice()));
        self.persist()?;
        Ok(Event::Joined { group: handle })
    }
}

/// How we join groups: plaintext handshakes (the hub validates them), no tree in messages.
fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .build()
}

fn anonymous_qs(operation: QsOperation) -> QsRequest {
    QsRequest {
        tbs: QsRequestTbs {
            timestamp_ms: now_ms(),
            nonce: mimi_rm_crypto::ids::random_id(),
            sender: QsSender::Anonymous,
            operation,
        },
        signature: Vec::new().into(),
    }
}

fn signed_qs(
    key: &SigningKey,
    sender: QsSender,
    operation: QsOperation,
) -> Result<QsRequest, ClientError> {
    let tbs = QsRequestTbs {
        timestamp_ms: now_ms(),
        nonce: mimi_rm_crypto::ids::random_id(),
        sender,
        operation,
    };
    let bytes = encode(&tbs).map_err(|e| ClientError::State(e.to_string()))?;
    let signature = key.sign(QS_REQUEST_SIGNATURE_LABEL, &bytes);
    Ok(QsRequest {
        tbs,
        signature: signature.into(),
    })
}
