//! The delivery service: validates every group operation as a public observer of the group.
//!
//! Flow of one request (sans-I/O: all reads and writes go through the caller's [`Txn`]):
//! decrypt the state with the client's EAR key → authenticate the signer against the tree →
//! let OpenMLS validate the handshake → check the operation's own rules → merge → re-encrypt →
//! return the response and the fan-out items (addressed by sealed `QueueRef`s, never queue ids).

pub mod accountability;
pub mod public_store;
pub mod removals;
pub mod routing;
pub mod state;
pub mod users;
pub mod welcome_split;

use crate::core::HubError;
use crate::core::identity_limit::IdentityLimiter;
use crate::core::replay::ReplayGuard;
use crate::store::{Cf, Txn};
use accountability::Accountability;
use mimi_rm_crypto::{ear::EarKey, hpke_seal, sign::verify_raw_ed25519};
use mimi_rm_protocol::credentials::LeafCredentialInfo;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, decode_exact, encode};
use openmls::ciphersuite::hash_ref::ProposalRef;
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{tls_codec::Deserialize as _, tls_codec::Serialize as _, *};
use openmls_rust_crypto::RustCrypto;
use public_store::PublicStore;
use removals::{LeafActivity, RemovalPolicy};
use routing::{RoutedMember, RoutingRecord};
use state::{AtRest, DsGroupState, GroupRow, PastTree};
use std::collections::HashSet;
use tls_codec::VLBytes;
use users::Roster;
use zeroize::Zeroize;

/// How long a reserved group id stays reserved.
const RESERVATION_SECS: u64 = 3600;
/// How many epochs an application message may lag behind the group. Clients keep 8 past
/// epochs; a recipient processes a message before any commit queued after it, so it is at most
/// this many epochs ahead of the message and can always decrypt it.
pub const MAX_MESSAGE_EPOCH_LAG: u64 = 4;
/// Upper bound for decoding a stored row (sanity, not policy).
const MAX_ROW: usize = 64 << 20;

/// What a DS request needs to know about its environment.
pub struct DsContext<'a> {
    /// The domain this hub serves.
    pub domain: &'a str,
    /// Current time (ms since the Unix epoch).
    pub now_ms: u64,
    /// Replay protection for verified requests.
    pub replay: &'a ReplayGuard,
    /// Most members a group may have.
    pub max_group_size: usize,
    /// How long the tree of a Welcome's epoch is kept for joiners that have not come yet.
    pub welcome_tree_ttl_ms: u64,
    /// RM or baseline: decides how state is kept and which queue addresses are valid.
    pub mode: DsMode,
    /// Baseline mode's per-identity rate limit (`None` in RM mode, which uses tokens).
    pub identity_limit: Option<&'a IdentityLimiter>,
    /// The hub's external-sender key and the inactivity rule.
    pub removal: RemovalPolicy<'a>,
}

/// A message to put into one member's queue, addressed only by its sealed `QueueRef`.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Where to deliver.
    pub queue_ref: QueueRef,
    /// What to deliver. Shared by every recipient of one message: a commit with an UpdatePath
    /// over a tree with blank nodes is O(members) bytes, and one copy per recipient made fan-out
    /// quadratic in the group size (≈ 7 s per commit at 10,000 members).
    pub message: std::sync::Arc<QueueMessage>,
}

/// The result of a DS request.
#[derive(Debug)]
pub struct DsOutcome {
    /// What to answer.
    pub response: DsResponse,
    /// What to enqueue, in the same atomic batch as the state change.
    pub fanout: Vec<Fanout>,
}

/// Processes one decoded DS request.
pub fn process(
    ctx: &DsContext<'_>,
    txn: &mut Txn<'_>,
    mut req: DsRequest,
) -> Result<DsOutcome, HubError> {
    // The signed bytes contain the EAR key: wipe them when the request is done.
    let signed = zeroize::Zeroizing::new(signed_bytes(&req.tbs)?);
    // Take the EAR key out of the request right away so only the zeroizing type holds it.
    let ear_key = match req.tbs.ear_key.as_mut() {
        Some(k) => {
            let key = EarKey::from_bytes(k.as_slice())
                .map_err(|_| HubError::InvalidRequest("EAR key must be 32 bytes"));
            k.zeroize();
            Some(key?)
        }
        None => None,
    };
    match &req.tbs.operation {
        DsOperation::RequestGroupId => reserve_group_id(ctx, txn),
        DsOperation::CreateGroup(params) => {
            let key = at_rest(ctx.mode, ear_key)?;
            create_group(ctx, txn, &req, &signed, params, key)
        }
        op => {
            let key = at_rest(ctx.mode, ear_key)?;
            if let (DsOperation::SendMessage(message), DsSender::Member(leaf)) =
                (op, &req.tbs.sender)
            {
                let gid = req.tbs.group_id.as_slice();
                if let Some(r) = routing::RoutingRecord::load(txn, &key, gid)? {
                    let month_current = r.activity_month == state::month_of(ctx.now_ms);
                    let period = ctx.removal.period(ctx.now_ms);
                    match r.record.settled_member(*leaf) {
                        // A member's first request in an activity period takes the full path,
                        // which records it (and runs the hub's removal checks).
                        Some(m) if month_current && m.active_period == period => {
                            return send_routed(ctx, &req, &signed, gid, &r.record, m, message);
                        }
                        // A joiner's first request, or the first this month: the full path.
                        _ => {}
                    }
                }
            }
            let mut group = LoadedGroup::load(txn, req.tbs.group_id.as_slice(), key, ctx.mode)?;
            let sender = group.authenticate(ctx, &req, &signed)?;
            let outcome = group.apply(ctx, txn, sender, &req.tbs.operation)?;
            match outcome.write {
                // Keep the coarse activity month current (once per month per group), so idle
                // expiry never removes a group that only exchanges messages.
                Write::None if group.activity_month != state::month_of(ctx.now_ms) => {
                    group.save(txn, ctx.now_ms)?
                }
                Write::None => {}
                Write::Save => group.save(txn, ctx.now_ms)?,
                Write::Delete => {
                    txn.delete(Cf::DsRouting, group.group_id.clone());
                    txn.delete(Cf::DsGroups, group.group_id.clone());
                    removals::drop_tombstones(txn, &group.group_id)?;
                }
            }
            Ok(DsOutcome {
                response: outcome.response,
                fanout: outcome.fanout,
            })
        }
    }
}

impl DsContext<'_> {
    /// Baseline mode's per-identity rate limit for a request signed by `signature_key` (in
    /// baseline mode the client's AS-certified key); nothing in RM mode, which uses tokens.
    fn admit_identity(&self, signature_key: &[u8]) -> Result<(), HubError> {
        match self.identity_limit {
            Some(limit) => limit.admit(signature_key, self.now_ms),
            None => Ok(()),
        }
    }
}

/// Records, during fan-out, that the member addressed by `queue_ref` has no queue any more (see
/// [`removals`]); a no-op if the group is gone.
pub fn tombstone_missing_queue(
    txn: &mut Txn<'_>,
    group_id: &[u8],
    queue_ref: &QueueRef,
) -> Result<(), HubError> {
    let Some(raw) = txn.get(Cf::DsGroups, group_id)? else {
        return Ok(());
    };
    let row: GroupRow =
        decode_exact(&raw, MAX_ROW).map_err(|e| HubError::Internal(format!("stored row: {e}")))?;
    removals::write_tombstone(txn, group_id, row.tombstone_key.as_slice(), queue_ref)?;
    // The next message must take the full path, which reads the tombstone.
    txn.delete(Cf::DsRouting, group_id.to_vec());
    Ok(())
}

/// How this hub keeps a group given the request's EAR key: RM mode needs one, baseline mode
/// refuses one (a client configured for RM must not hand its group key to a plaintext DS).
fn at_rest(mode: DsMode, key: Option<EarKey>) -> Result<AtRest, HubError> {
    match (mode, key) {
        (DsMode::Rm, Some(k)) => Ok(AtRest::Ear(k)),
        (DsMode::Rm, None) => Err(HubError::InvalidRequest("missing EAR key")),
        (DsMode::Baseline, None) => Ok(AtRest::Plain),
        (DsMode::Baseline, Some(_)) => Err(HubError::InvalidRequest(
            "this hub runs in baseline mode and takes no EAR key",
        )),
    }
}

/// The application-message fast path: authenticate the sender and fan out using only the
/// group's routing record, never the tree.
fn send_routed(
    ctx: &DsContext<'_>,
    req: &DsRequest,
    signed: &[u8],
    group_id: &[u8],
    record: &RoutingRecord,
    sender: &RoutedMember,
    message: &VLBytes,
) -> Result<DsOutcome, HubError> {
    verify(sender.signature_key.as_slice(), signed, &req.signature)?;
    ctx.admit_identity(sender.signature_key.as_slice())?;
    ctx.replay
        .check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, ctx.now_ms)?;
    check_application_message(message.as_slice(), group_id, record.epoch)?;
    let shared = std::sync::Arc::new(QueueMessage::Mls(message.clone()));
    let fanout = record
        .members
        .iter()
        .filter(|m| m.leaf != sender.leaf)
        .map(|m| Fanout {
            queue_ref: m.queue_ref.clone(),
            message: shared.clone(),
        })
        .collect();
    Ok(DsOutcome {
        response: DsResponse::Accepted(record.epoch),
        fanout,
    })
}

/// An application message must be a PrivateMessage for this group, at most
/// [`MAX_MESSAGE_EPOCH_LAG`] epochs behind `current` and not ahead of it.
fn check_application_message(bytes: &[u8], group_id: &[u8], current: u64) -> Result<(), HubError> {
    let pm = parse_protocol_message(bytes)?;
    if pm.wire_format() != WireFormat::PrivateMessage
        || pm.content_type() != ContentType::Application
    {
        return Err(HubError::InvalidMls(
            "application messages must be PrivateMessages".into(),
        ));
    }
    if pm.group_id().as_slice() != group_id {
        return Err(HubError::InvalidMls("message is for another group".into()));
    }
    // Members keep a few past epochs' secrets; a message older than this window could reach
    // members who can no longer decrypt it, so the sender must catch up first.
    let epoch = pm.epoch().as_u64();
    if epoch > current || epoch.saturating_add(MAX_MESSAGE_EPOCH_LAG) < current {
        return Err(HubError::WrongEpoch { current });
    }
    Ok(())
}

/// The exact bytes a DS request signature covers.
pub fn signed_bytes(tbs: &DsRequestTbs) -> Result<Vec<u8>, HubError> {
    let mut out = DS_REQUEST_SIGNATURE_LABEL.to_vec();
    out.extend(encode(tbs).map_err(|e| HubError::malformed("request", e))?);
    Ok(out)
}

fn verify(key: &[u8], signed: &[u8], signature: &VLBytes) -> Result<(), HubError> {
    verify_raw_ed25519(key, signed, signature.as_slice()).map_err(|_| HubError::InvalidSignature)
}

fn reserve_group_id(ctx: &DsContext<'_>, txn: &mut Txn<'_>) -> Result<DsOutcome, HubError> {
    for _ in 0..4 {
        let id = QualifiedGroupId {
            uuid: mimi_rm_crypto::ids::random_id(),
            domain: ctx.domain.as_bytes().to_vec().into(),
        };
        let bytes = encode(&id).map_err(|e| HubError::Internal(e.to_string()))?;
        if txn.get(Cf::DsGroups, &bytes)?.is_none()
            && txn.get(Cf::DsReservations, &bytes)?.is_none()
        {
            let expiry = ctx.now_ms / 1000 + RESERVATION_SECS;
            txn.put(
                Cf::DsReservations,
                bytes.clone(),
                expiry.to_be_bytes().to_vec(),
            );
            return Ok(DsOutcome {
                response: DsResponse::GroupId(ReservedGroup {
                    group_id: bytes.into(),
                    external_sender_key: ctx.removal.signer.public().to_vec().into(),
                }),
                fanout: Vec::new(),
            });
        }
    }
    Err(HubError::Internal("could not find a free group id".into()))
}

fn create_group(
    ctx: &DsContext<'_>,
    txn: &mut Txn<'_>,
    req: &DsRequest,
    signed: &[u8],
    params: &CreateGroup,
    key: AtRest,
) -> Result<DsOutcome, HubError> {
    let gid = req.tbs.group_id.as_slice();
    let qualified: QualifiedGroupId = decode_exact(gid, 1024)
        .map_err(|_| HubError::InvalidGroupId("not a qualified group id"))?;
    if qualified.domain.as_slice() != ctx.domain.as_bytes() {
        return Err(HubError::InvalidGroupId(
            "group id belongs to another domain",
        ));
    }
    if txn.get(Cf::DsGroups, gid)?.is_some() {
        return Err(HubError::GroupExists);
    }
    let reserved = txn
        .get(Cf::DsReservations, gid)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    match reserved {
        Some(expiry) if expiry >= ctx.now_ms / 1000 => {}
        _ => return Err(HubError::InvalidGroupId("group id is not reserved")),
    }
    if req.tbs.sender != DsSender::Member(0) {
        return Err(HubError::NotAuthorized("the creator signs as leaf 0"));
    }
    let vgi = parse_group_info(params.group_info.as_slice())?;
    if vgi.group_id().as_slice() != gid {
        return Err(HubError::InvalidGroupInfo("group id mismatch".into()));
    }
    if vgi.extensions().external_pub().is_none() {
        return Err(HubError::InvalidGroupInfo("missing external_pub".into()));
    }
    if params.creator_user_auth_key.as_slice().len() != 32 {
        return Err(HubError::InvalidRequest("a user auth key is 32 bytes"));
    }
    let tree = RatchetTreeIn::tls_deserialize_exact(params.ratchet_tree.as_slice())
        .map_err(|e| HubError::malformed("ratchet tree", e))?;
    let store = PublicStore::default();
    let (pg, _) = PublicGroup::from_external(
        &RustCrypto::default(),
        &store,
        tree,
        vgi,
        ProposalStore::new(),
    )
    .map_err(|e| HubError::InvalidGroupInfo(e.to_string()))?;
    if pg.group_context().epoch().as_u64() != 0 || pg.members().count() != 1 {
        return Err(HubError::InvalidGroupInfo(
            "a new group has one member at epoch 0".into(),
        ));
    }
    if pg.ciphersuite().signature_algorithm() != SignatureScheme::ED25519 {
        return Err(HubError::InvalidRequest(
            "only Ed25519 ciphersuites are supported",
        ));
    }
    // The hub proposes removals itself, so it must be the group's external sender.
    if hub_sender_index(&pg, ctx).is_none() {
        return Err(HubError::InvalidGroupInfo(
            "the group must list this hub as an external sender".into(),
        ));
    }
    let leaf = pg
        .leaf(LeafNodeIndex::new(0))
        .ok_or(HubError::InvalidGroupInfo("no leaf 0".into()))?;
    verify(leaf.signature_key().as_slice(), signed, &req.signature)?;
    ctx.admit_identity(leaf.signature_key().as_slice())?;
    ctx.replay
        .check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, ctx.now_ms)?;
    checked_queue_ref(leaf, ctx.mode)?;
    let tombstones = hpke_seal::HpkeKeyPair::generate();
    let group = LoadedGroup {
        group_id: gid.to_vec(),
        key,
        mode: ctx.mode,
        store,
        pg,
        group_info: params.group_info.clone(),
        past_trees: Vec::new(),
        acct: Accountability::default(),
        credentials: vec![LeafCredentialEntry {
            leaf: 0,
            info: params.creator.clone(),
        }],
        activity_month: state::month_of(ctx.now_ms),
        roster: Roster::with_creator(params.creator_user_auth_key.clone()),
        kind: params.kind,
        activity: vec![LeafActivity {
            leaf: 0,
            period: ctx.removal.period(ctx.now_ms),
        }],
        tombstone_key: tombstones.public.as_bytes().to_vec().into(),
        tombstone_secret: tombstones.private.as_bytes().to_vec().into(),
        doomed: Vec::new(),
        reinit: None,
    };
    group.save(txn, ctx.now_ms)?;
    txn.delete(Cf::DsReservations, gid.to_vec());
    Ok(DsOutcome {
        response: DsResponse::Accepted(0),
        fanout: Vec::new(),
    })
}

/// The index of this hub in the group's `external_senders`, if it is listed there with its
/// credential identity and key.
fn hub_sender_index(pg: &PublicGroup, ctx: &DsContext<'_>) -> Option<u32> {
    let expected = ExternalSender::new(
        ctx.removal.signer.public().to_vec().into(),
        BasicCredential::new(external_sender_identity(ctx.domain)).into(),
    );
    pg.group_context()
        .extensions()
        .external_senders()?
        .iter()
        .position(|s| *s == expected)
        .and_then(|i| u32::try_from(i).ok())
}

/// Decodes a commit's authenticated data; empty bytes mean "nothing added".
fn commit_aad(bytes: &[u8]) -> Result<CommitAad, HubError> {
    if bytes.is_empty() {
        return Ok(CommitAad::default());
    }
    decode_exact(bytes, MAX_ROW).map_err(|e| HubError::malformed("commit authenticated data", e))
}

/// Puts the commit's `added` entries in the order of its Add proposals: exactly one per added
/// KeyPackage, so every joiner gets its credential material and attribution, and nothing else
/// rides along.
fn match_added(
    crypto: &RustCrypto,
    adds: &[KeyPackage],
    aad: CommitAad,
) -> Result<Vec<AddedMember>, HubError> {
    if aad.added.len() != adds.len() {
        return Err(HubError::WrongOperation(
            "the commit must carry one credential entry per added member",
        ));
    }
    let mut pool = aad.added;
    let mut out = Vec::with_capacity(adds.len());
    for kp in adds {
        let kp_ref = kp
            .hash_ref(crypto)
            .map_err(|e| HubError::Internal(e.to_string()))?;
        let pos = pool
            .iter()
            .position(|m| m.key_package_ref.as_slice() == kp_ref.as_slice())
            .ok_or(HubError::WrongOperation(
                "a credential entry names no added KeyPackage",
            ))?;
        out.push(pool.swap_remove(pos));
    }
    Ok(out)
}

fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, HubError> {
    match MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| HubError::malformed("group info", e))?
        .extract()
    {
        MlsMessageBodyIn::GroupInfo(vgi) => Ok(vgi),
        _ => Err(HubError::InvalidGroupInfo("not a GroupInfo message".into())),
    }
}

fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, HubError> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| HubError::malformed("MLS message", e))?
        .try_into_protocol_message()
        .map_err(|e| HubError::InvalidMls(e.to_string()))
}

/// The fan-out address a leaf carries in its extensions.
fn queue_ref_of(leaf: &LeafNode) -> Result<QueueRef, HubError> {
    let ext = leaf
        .extensions()
        .unknown(QUEUE_REF_EXTENSION_TYPE)
        .ok_or(HubError::InvalidRequest("leaf has no QueueRef extension"))?;
    decode_exact(&ext.0, 4096).map_err(|e| HubError::malformed("QueueRef extension", e))
}

/// A new leaf's fan-out address, which must be of this hub's mode
/// ([`crate::core::qs::check_address_mode`]).
fn checked_queue_ref(leaf: &LeafNode, mode: DsMode) -> Result<QueueRef, HubError> {
    let qr = queue_ref_of(leaf)?;
    crate::core::qs::check_address_mode(&qr.address, mode)?;
    Ok(qr)
}

/// Who an authenticated request came from.
#[derive(Debug, Clone)]
enum Authenticated {
    Member(LeafNodeIndex),
    /// A Welcome joiner, by its leaf signature key.
    Joiner(Vec<u8>),
    /// Only proved knowledge of the EAR key.
    KeyHolder,
    /// A user, by its per-group auth key (index into the roster).
    User(usize),
}

enum Write {
    None,
    Save,
    Delete,
}

struct Applied {
    response: DsResponse,
    fanout: Vec<Fanout>,
    write: Write,
}

/// A decrypted group for the duration of one request; the EAR key is zeroized on drop.
struct LoadedGroup {
    group_id: Vec<u8>,
    key: AtRest,
    mode: DsMode,
    store: PublicStore,
    pg: PublicGroup,
    group_info: VLBytes,
    past_trees: Vec<PastTree>,
    acct: Accountability,
    credentials: Vec<LeafCredentialEntry>,
    /// The stored row's activity month.
    activity_month: u32,
    roster: Roster,
    kind: GroupKind,
    activity: Vec<LeafActivity>,
    tombstone_key: VLBytes,
    tombstone_secret: VLBytes,
    doomed: Vec<VLBytes>,
    reinit: Option<VLBytes>,
}

/// What a member commit is for; decides which proposals it may carry and who may send it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CommitKind {
    /// Add users (admin only).
    Add,
    /// Remove whole users (admin only).
    Remove,
    Update,
    /// Remove everyone else, then delete the group (admin only).
    Delete,
    /// Add clients of the signing user.
    AddClients(usize),
    /// Remove other clients of the signing user, rotating its auth key.
    RemoveClients(usize),
    /// Re-initialise into another group (admin only).
    ReInit,
}

/// Who enters a group by external commit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ExternalKind {
    /// A member re-entering with its own signature key (signed by its old leaf).
    Resync(LeafNodeIndex),
    /// A client of an existing user: a new device, or one that lost its state.
    Device(usize),
    /// The responder of a connection group.
    Connection,
}

impl LoadedGroup {
    fn load(txn: &Txn<'_>, group_id: &[u8], key: AtRest, mode: DsMode) -> Result<Self, HubError> {
        let raw = txn
            .get(Cf::DsGroups, group_id)?
            .ok_or(HubError::UnknownGroup)?;
        let row: GroupRow = decode_exact(&raw, MAX_ROW)
            .map_err(|e| HubError::Internal(format!("stored row: {e}")))?;
        let state = DsGroupState::open(&row, &key, group_id)?;
        let store = PublicStore::from_blob(state.public_group);
        let pg = PublicGroup::load(&store, &GroupId::from_slice(group_id))
            .map_err(|e| HubError::Internal(format!("load public group: {e}")))?
            .ok_or_else(|| HubError::Internal("state without public group".into()))?;
        Ok(Self {
            group_id: group_id.to_vec(),
            key,
            mode,
            store,
            pg,
            group_info: state.group_info,
            past_trees: state.past_trees,
            acct: Accountability {
                recent: state.recent_commits,
                tallies: state.tallies,
            },
            credentials: state.credentials,
            activity_month: row.activity_month,
            roster: Roster { users: state.users },
            kind: state.kind,
            activity: {
                let mut a = state.activity;
                a.sort_by_key(|x| x.leaf);
                a
            },
            tombstone_key: row.tombstone_key,
            tombstone_secret: state.tombstone_secret,
            doomed: state.doomed,
            reinit: state.reinit,
        })
    }

    fn save(&self, txn: &mut Txn<'_>, now_ms: u64) -> Result<(), HubError> {
        let state = DsGroupState {
            public_group: self.store.to_blob(),
            group_info: self.group_info.clone(),
            past_trees: self.past_trees.clone(),
            recent_commits: self.acct.recent.clone(),
            tallies: self.acct.tallies.clone(),
            credentials: self.credentials.clone(),
            users: self.roster.users.clone(),
            kind: self.kind,
            activity: self.activity.clone(),
            tombstone_secret: self.tombstone_secret.clone(),
            doomed: self.doomed.clone(),
            reinit: self.reinit.clone(),
        };
        let row = state.seal(
            &self.key,
            &self.group_id,
            now_ms,
            self.tombstone_key.clone(),
        )?;
        let bytes = encode(&row).map_err(|e| HubError::Internal(e.to_string()))?;
        txn.put(Cf::DsGroups, self.group_id.clone(), bytes);
        if self.reinit.is_some() {
            // A re-initialised group takes no messages: no fast path.
            txn.delete(Cf::DsRouting, self.group_id.clone());
            return Ok(());
        }
        self.routing().save(txn, &self.key, &self.group_id, now_ms)
    }

    /// The routing record matching the current state (see [`routing`]).
    fn routing(&self) -> RoutingRecord {
        let joiner_keys: HashSet<&[u8]> = self
            .past_trees
            .iter()
            .flat_map(|t| t.joiners.iter().map(|j| j.as_slice()))
            .collect();
        let mut joining = Vec::new();
        let mut members: Vec<RoutedMember> = self
            .pg
            .members()
            // A member whose queue is gone is left out: nothing is fanned out to it, and its own
            // requests take the full path.
            .filter(|m| !self.is_doomed(&m.signature_key))
            .filter_map(|m| {
                if joiner_keys.contains(m.signature_key.as_slice()) {
                    joining.push(m.index.u32());
                }
                let queue_ref = self.pg.leaf(m.index).and_then(|l| queue_ref_of(l).ok())?;
                Some(RoutedMember {
                    leaf: m.index.u32(),
                    signature_key: m.signature_key.into(),
                    queue_ref,
                    active_period: self.period_of(m.index.u32()),
                })
            })
            .collect();
        members.sort_by_key(|m| m.leaf);
        RoutingRecord {
            epoch: self.epoch(),
            members,
            joining,
        }
    }

    fn epoch(&self) -> u64 {
        self.pg.group_context().epoch().as_u64()
    }

    fn authenticate(
        &mut self,
        ctx: &DsContext<'_>,
        req: &DsRequest,
        signed: &[u8],
    ) -> Result<Authenticated, HubError> {
        let who = match (&req.tbs.sender, &req.tbs.operation) {
            (DsSender::Member(i), op) if !matches!(op, DsOperation::WelcomeInfo(_)) => {
                let idx = LeafNodeIndex::new(*i);
                let leaf = self
                    .pg
                    .leaf(idx)
                    .ok_or(HubError::NotAuthorized("no member at that leaf index"))?;
                verify(leaf.signature_key().as_slice(), signed, &req.signature)?;
                ctx.admit_identity(leaf.signature_key().as_slice())?;
                Authenticated::Member(idx)
            }
            (DsSender::Joiner(key), DsOperation::WelcomeInfo(_)) => {
                verify(key.as_slice(), signed, &req.signature)?;
                ctx.admit_identity(key.as_slice())?;
                Authenticated::Joiner(key.as_slice().to_vec())
            }
            (
                DsSender::Anonymous,
                DsOperation::ExternalCommitInfo | DsOperation::JoinConnectionGroup(_),
            ) => Authenticated::KeyHolder,
            (DsSender::User(key), _) => {
                let user = self
                    .roster
                    .user_by_key(key.as_slice())
                    .ok_or(HubError::NotAuthorized("no user with that auth key"))?;
                verify(key.as_slice(), signed, &req.signature)?;
                ctx.admit_identity(key.as_slice())?;
                Authenticated::User(user)
            }
            _ => {
                return Err(HubError::NotAuthorized(
                    "sender type not allowed for this operation",
                ));
            }
        };
        if !matches!(who, Authenticated::KeyHolder) {
            ctx.replay.check_and_record(
                req.signature.as_slice(),
                req.tbs.timestamp_ms,
                ctx.now_ms,
            )?;
        }
        Ok(who)
    }

    fn apply(
        &mut self,
        ctx: &DsContext<'_>,
        txn: &mut Txn<'_>,
        who: Authenticated,
        op: &DsOperation,
    ) -> Result<Applied, HubError> {
        if self.reinit.is_some() && !matches!(op, DsOperation::ExternalCommitInfo) {
            return Err(HubError::WrongOperation(
                "the group was re-initialised into another group",
            ));
        }
        // A member signing a request proves it has joined: its Welcome tree is no longer needed.
        // Trees whose joiners never came go when they expire.
        let trees_before = self.past_trees.len();
        self.past_trees.retain(|t| t.expires_ms > ctx.now_ms);
        let mut changed = self.past_trees.len() != trees_before;
        if let Authenticated::Member(idx) = &who {
            let idx = *idx;
            changed |= self.forget_joiner(idx);
            changed |= self.record_activity(idx.u32(), ctx.removal.period(ctx.now_ms));
        }
        // The hub's own removal proposals come first: a commit must include them.
        let proposals = self.propose_removals(ctx, txn)?;
        let proposal_fanout = proposals
            .iter()
            .flat_map(|p| Self::fan(self.recipients(None), p))
            .collect::<Vec<_>>();
        if !proposals.is_empty() && op.is_member_commit() {
            return Ok(Applied {
                response: DsResponse::ProposalsPending(self.epoch()),
                fanout: proposal_fanout,
                write: Write::Save,
            });
        }
        let mut applied = match (op, who) {
            (DsOperation::AddMembers(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Add, b)?
            }
            (DsOperation::RemoveMembers(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Remove, b)?
            }
            (DsOperation::Update(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Update, b)?
            }
            (DsOperation::DeleteGroup(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::Delete, b)?
            }
            (DsOperation::ReInit(b), Authenticated::Member(s)) => {
                self.commit(ctx, s, CommitKind::ReInit, b)?
            }
            (DsOperation::AddClients(b), Authenticated::User(u)) => {
                let s = self.committer_of_user(b, u)?;
                self.commit(ctx, s, CommitKind::AddClients(u), b)?
            }
            (DsOperation::RemoveClients(b), Authenticated::User(u)) => {
                let s = self.committer_of_user(b, u)?;
                self.commit(ctx, s, CommitKind::RemoveClients(u), b)?
            }
            (DsOperation::ExternalJoin(b), Authenticated::User(u)) => {
                self.external_commit(ctx, ExternalKind::Device(u), b)?
            }
            (DsOperation::JoinConnectionGroup(b), Authenticated::KeyHolder) => {
                self.external_commit(ctx, ExternalKind::Connection, b)?
            }
            (DsOperation::Resync(b), Authenticated::Member(s)) => {
                self.external_commit(ctx, ExternalKind::Resync(s), b)?
            }
            (DsOperation::SetRole(r), Authenticated::Member(s)) => self.set_role(s, r)?,
            (DsOperation::SelfRemove(p), Authenticated::Member(s)) => self.self_remove(s, p)?,
            (DsOperation::RotateEarKey(r), Authenticated::Member(_)) => self.rotate(r)?,
            (DsOperation::ReportCommit(r), Authenticated::Member(s)) => self.report(s, r)?,
            (DsOperation::SendMessage(m), Authenticated::Member(s)) => self.send(s, m)?,
            (DsOperation::WelcomeInfo(epoch), Authenticated::Joiner(key)) => {
                self.welcome_info(*epoch, &key)?
            }
            (DsOperation::ExternalCommitInfo, _) => Applied {
                response: DsResponse::ExternalCommitInfo(ExternalCommitInfo {
                    group_info: self.group_info.clone(),
                    ratchet_tree: self.tree_bytes()?.into(),
                    reports: self.acct.tallies.clone(),
                    credentials: self.credentials.clone(),
                    users: self.roster.public_view(),
                    reinit: self.reinit.clone(),
                }),
                fanout: Vec::new(),
                write: Write::None,
            },
            _ => {
                return Err(HubError::NotAuthorized(
                    "operation not allowed for this sender",
                ));
            }
        };
        if !proposals.is_empty() {
            // Members learn of the proposals before whatever this request fans out.
            let mut fanout = proposal_fanout;
            fanout.append(&mut applied.fanout);
            applied.fanout = fanout;
            changed = true;
        }
        if changed && matches!(applied.write, Write::None) {
            applied.write = Write::Save;
        }
        Ok(applied)
    }

    /// Replaces the state's EAR key (and, optionally, every leaf's credential material). Any
    /// member may rotate: every member holds the keys anyway. The state is written under the new
    /// key; the old one no longer opens it.
    fn rotate(&mut self, r: &KeyRotation) -> Result<Applied, HubError> {
        if matches!(self.key, AtRest::Plain) {
            return Err(HubError::WrongOperation(
                "a baseline group has no EAR key to rotate",
            ));
        }
        let key = EarKey::from_bytes(r.new_ear_key.as_slice())
            .map_err(|_| HubError::InvalidRequest("EAR key must be 32 bytes"))?;
        if !r.credentials.is_empty() {
            let leaves: Vec<u32> = r.credentials.iter().map(|c| c.leaf).collect();
            let current: Vec<u32> = self.credentials.iter().map(|c| c.leaf).collect();
            if leaves != current {
                return Err(HubError::WrongOperation(
                    "re-wrapped credentials must cover exactly the current leaves",
                ));
            }
            self.credentials = r.credentials.clone();
        }
        self.key = AtRest::Ear(key);
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout: Vec::new(),
            write: Write::Save,
        })
    }

    /// An admin sets the role of the user owning `r.leaf` (all its clients share it). The last
    /// admin cannot step down: a group without admins could never add or remove anyone again.
    fn set_role(&mut self, sender: LeafNodeIndex, r: &SetRole) -> Result<Applied, HubError> {
        self.roster.require_admin(sender.u32())?;
        let user = self
            .roster
            .user_of(r.leaf)
            .ok_or(HubError::InvalidRequest("no member at that leaf index"))?;
        let admins = self
            .roster
            .users
            .iter()
            .filter(|u| u.role == Role::Admin)
            .count();
        if r.role == Role::Member && self.roster.users[user].role == Role::Admin && admins == 1 {
            return Err(HubError::WrongOperation("a group keeps at least one admin"));
        }
        self.roster.users[user].role = r.role;
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout: Vec::new(),
            write: Write::Save,
        })
    }

    /// The MLS sender of a user-authenticated commit: it must be one of that user's clients.
    fn committer_of_user(
        &self,
        bundle: &CommitBundle,
        user: usize,
    ) -> Result<LeafNodeIndex, HubError> {
        let ProtocolMessage::PublicMessage(pm) = parse_protocol_message(bundle.commit.as_slice())?
        else {
            return Err(HubError::InvalidMls(
                "handshake messages must be PublicMessages".into(),
            ));
        };
        let Sender::Member(leaf) = pm.sender() else {
            return Err(HubError::WrongOperation("a member commit is needed"));
        };
        if !self.roster.users[user].leaves.contains(&leaf.u32()) {
            return Err(HubError::NotAuthorized(
                "the commit must come from a client of the signing user",
            ));
        }
        Ok(*leaf)
    }

    /// Whether the member with this signature key lost its queue.
    fn is_doomed(&self, signature_key: &[u8]) -> bool {
        self.doomed.iter().any(|d| d.as_slice() == signature_key)
    }

    /// Notes that `leaf` was active in `period`; whether that changed anything. `activity` is
    /// kept sorted by leaf, so lookups stay O(log n) in groups of thousands.
    fn record_activity(&mut self, leaf: u32, period: u32) -> bool {
        match self.activity.binary_search_by_key(&leaf, |a| a.leaf) {
            Ok(i) if self.activity[i].period >= period => false,
            Ok(i) => {
                self.activity[i].period = period;
                true
            }
            Err(i) => {
                self.activity.insert(i, LeafActivity { leaf, period });
                true
            }
        }
    }

    /// The activity recorded for `leaf`, if any.
    fn activity_of(&self, leaf: u32) -> Option<&LeafActivity> {
        self.activity
            .binary_search_by_key(&leaf, |a| a.leaf)
            .ok()
            .map(|i| &self.activity[i])
    }

    /// The activity period recorded for `leaf` (0 if none).
    fn period_of(&self, leaf: u32) -> u32 {
        self.activity_of(leaf).map_or(0, |a| a.period)
    }

    /// Proposes removal of inactive clients and of clients whose queue is gone, unless already
    /// proposed; returns the new proposal messages (already in the hub's proposal store).
    fn propose_removals(
        &mut self,
        ctx: &DsContext<'_>,
        txn: &mut Txn<'_>,
    ) -> Result<Vec<VLBytes>, HubError> {
        let Some(sender_index) = hub_sender_index(&self.pg, ctx) else {
            return Ok(Vec::new());
        };
        for gone in
            removals::take_tombstones(txn, &self.group_id, self.tombstone_secret.as_slice())?
        {
            for m in self.pg.members() {
                let matches = self
                    .pg
                    .leaf(m.index)
                    .and_then(|l| queue_ref_of(l).ok())
                    .and_then(|q| encode(&q).ok())
                    .is_some_and(|q| q == gone);
                if matches && !self.doomed.iter().any(|d| d.as_slice() == m.signature_key) {
                    self.doomed.push(m.signature_key.clone().into());
                }
            }
        }
        // The common case — nobody idle, no queue gone — must not walk the tree: the activity
        // list alone (sorted by leaf) says who is idle.
        let mut candidates: Vec<LeafNodeIndex> = self
            .activity
            .iter()
            .filter(|a| ctx.removal.is_inactive(a.period, ctx.now_ms))
            .map(|a| LeafNodeIndex::new(a.leaf))
            .collect();
        if !self.doomed.is_empty() {
            let present: HashSet<Vec<u8>> =
                self.pg.members().map(|m| m.signature_key.clone()).collect();
            self.doomed.retain(|d| present.contains(d.as_slice()));
            candidates.extend(
                self.pg
                    .members()
                    .filter(|m| self.is_doomed(&m.signature_key))
                    .map(|m| m.index),
            );
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let proposed: HashSet<u32> = self
            .pg
            .queued_proposals(&self.store)
            .map_err(|e| HubError::Internal(e.to_string()))?
            .into_iter()
            .filter_map(|(_, qp)| match qp.proposal() {
                Proposal::Remove(r) => Some(r.removed().u32()),
                _ => None,
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|l| self.pg.leaf(*l).is_some() && !proposed.contains(&l.u32()));
        let crypto = RustCrypto::default();
        let mut out = Vec::with_capacity(candidates.len());
        for leaf in candidates {
            let message = ExternalProposal::new_remove::<openmls_rust_crypto::OpenMlsRustCrypto>(
                leaf,
                GroupId::from_slice(&self.group_id),
                self.pg.group_context().epoch(),
                ctx.removal.signer,
                SenderExtensionIndex::new(sender_index),
            )
            .map_err(|e| HubError::Internal(format!("hub proposal: {e}")))?;
            let bytes = message
                .to_bytes()
                .map_err(|e| HubError::Internal(format!("hub proposal: {e}")))?;
            let processed = self.handshake_at_current_epoch(&crypto, &bytes)?;
            let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
                return Err(HubError::Internal("hub proposal is not a proposal".into()));
            };
            self.pg
                .add_proposal(&self.store, *qp)
                .map_err(|e| HubError::Internal(e.to_string()))?;
            tracing::info!(leaf = leaf.u32(), "hub proposed a removal");
            out.push(bytes.into());
        }
        Ok(out)
    }

    fn forget_joiner(&mut self, idx: LeafNodeIndex) -> bool {
        let Some(key) = self
            .pg
            .leaf(idx)
            .map(|l| l.signature_key().as_slice().to_vec())
        else {
            return false;
        };
        let before: usize = self.past_trees.iter().map(|t| t.joiners.len()).sum();
        for t in &mut self.past_trees {
            t.joiners.retain(|j| j.as_slice() != key.as_slice());
        }
        self.past_trees.retain(|t| !t.joiners.is_empty());
        before
            != self
                .past_trees
                .iter()
                .map(|t| t.joiners.len())
                .sum::<usize>()
    }

    /// The current leaf holding `signature_key`.
    fn leaf_of(&self, signature_key: &[u8]) -> Result<LeafNodeIndex, HubError> {
        self.pg
            .members()
            .find(|m| m.signature_key == signature_key)
            .map(|m| m.index)
            .ok_or_else(|| HubError::Internal("leaf missing after merge".into()))
    }

    /// Stores `info` for `leaf`, keeping the list sorted by leaf.
    fn set_credential(&mut self, leaf: LeafNodeIndex, info: LeafCredentialInfo) {
        let leaf = leaf.u32();
        self.credentials.retain(|c| c.leaf != leaf);
        let pos = self.credentials.partition_point(|c| c.leaf < leaf);
        self.credentials
            .insert(pos, LeafCredentialEntry { leaf, info });
    }

    fn tree_bytes(&self) -> Result<Vec<u8>, HubError> {
        self.pg
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| HubError::Internal(format!("encode tree: {e:?}")))
    }

    /// Every member except `except`, with its fan-out address.
    /// Members whose queue is known to be gone get nothing (their removal is proposed).
    fn recipients(&self, except: Option<LeafNodeIndex>) -> Vec<QueueRef> {
        self.pg
            .members()
            .filter(|m| Some(m.index) != except)
            .filter(|m| !self.is_doomed(&m.signature_key))
            .filter_map(|m| self.pg.leaf(m.index).and_then(|l| queue_ref_of(l).ok()))
            .collect()
    }

    fn fan(recipients: Vec<QueueRef>, bytes: &VLBytes) -> Vec<Fanout> {
        let shared = std::sync::Arc::new(QueueMessage::Mls(bytes.clone()));
        recipients
            .into_iter()
            .map(|queue_ref| Fanout {
                queue_ref,
                message: shared.clone(),
            })
            .collect()
    }

    /// Parses a handshake message and lets OpenMLS validate it against the current epoch. Shared by
    /// commits and stored proposals: both must be PublicMessages for this group and this epoch.
    fn handshake_at_current_epoch(
        &self,
        crypto: &RustCrypto,
        bytes: &[u8],
    ) -> Result<ProcessedMessage, HubError> {
        let pm = parse_protocol_message(bytes)?;
        if pm.wire_format() != WireFormat::PublicMessage {
            return Err(HubError::InvalidMls(
                "handshake messages must be PublicMessages".into(),
            ));
        }
        if pm.group_id().as_slice() != self.group_id.as_slice() {
            return Err(HubError::InvalidMls("message is for another group".into()));
        }
        let current = self.epoch();
        if pm.epoch().as_u64() != current {
            return Err(HubError::WrongEpoch { current });
        }
        self.pg
            .process_message(crypto, pm)
            .map_err(|e| HubError::InvalidMls(e.to_string()))
    }

    fn commit(
        &mut self,
        ctx: &DsContext<'_>,
        sender: LeafNodeIndex,
        kind: CommitKind,
        bundle: &CommitBundle,
    ) -> Result<Applied, HubError> {
        if matches!(
            kind,
            CommitKind::Add | CommitKind::Remove | CommitKind::Delete | CommitKind::ReInit
        ) {
            self.roster.require_admin(sender.u32())?;
        }
        let crypto = RustCrypto::default();
        let processed = self.handshake_at_current_epoch(&crypto, bundle.commit.as_slice())?;
        if !matches!(processed.sender(), Sender::Member(i) if *i == sender) {
            return Err(HubError::NotAuthorized(
                "commit not sent by the signing member",
            ));
        }
        let aad = commit_aad(processed.aad())?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(HubError::WrongOperation("not a commit"));
        };
        let staged = *staged;

        // Pending proposals (self-removes, the hub's removals) must be committed by whatever
        // commit comes next.
        let pending: HashSet<ProposalRef> = self
            .pg
            .queued_proposals(&self.store)
            .map_err(|e| HubError::Internal(e.to_string()))?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let mut covered = 0usize;
        let (mut adds, mut removed, mut all_removed) = (Vec::new(), Vec::new(), Vec::new());
        for qp in staged.queued_proposals() {
            let is_pending = pending.contains(qp.proposal_reference_ref());
            covered += usize::from(is_pending);
            match qp.proposal() {
                Proposal::Add(a) => adds.push(a.key_package().clone()),
                Proposal::Remove(r) => {
                    all_removed.push(r.removed().u32());
                    if !is_pending {
                        removed.push(r.removed());
                    }
                }
                _ => {
                    return Err(HubError::WrongOperation(
                        "only add and remove proposals are supported",
                    ));
                }
            }
        }
        if covered != pending.len() {
            return Err(HubError::WrongOperation(
                "commit must include every pending proposal",
            ));
        }
        let has_path = staged.update_path_leaf_node().is_some();
        let removed_u32: Vec<u32> = removed.iter().map(|l| l.u32()).collect();
        let ok = match kind {
            CommitKind::Add | CommitKind::AddClients(_) => !adds.is_empty() && removed.is_empty(),
            CommitKind::Remove => {
                !removed.is_empty()
                    && adds.is_empty()
                    && self.roster.removes_whole_users(&removed_u32)
                    && self.roster.user_of(sender.u32()).is_some_and(|own| {
                        removed_u32
                            .iter()
                            .all(|l| !self.roster.users[own].leaves.contains(l))
                    })
            }
            CommitKind::RemoveClients(user) => {
                !removed.is_empty()
                    && adds.is_empty()
                    && !removed.contains(&sender)
                    && removed_u32
                        .iter()
                        .all(|l| self.roster.users[user].leaves.contains(l))
            }
            CommitKind::Update => has_path && adds.is_empty() && removed.is_empty(),
            CommitKind::Delete => {
                let others: HashSet<LeafNodeIndex> = self
                    .pg
                    .members()
                    .map(|m| m.index)
                    .filter(|i| *i != sender)
                    .collect();
                adds.is_empty() && others == removed.iter().copied().collect()
            }
            CommitKind::ReInit => {
                has_path && adds.is_empty() && removed.is_empty() && aad.reinit.is_some()
            }
        };
        if !ok {
            return Err(HubError::WrongOperation(match kind {
                CommitKind::Add => "add_members needs add proposals only",
                CommitKind::AddClients(_) => "add_clients needs add proposals only",
                CommitKind::Remove => {
                    "remove_members removes every client of other users, and nothing else"
                }
                CommitKind::RemoveClients(_) => {
                    "remove_clients removes other clients of the signing user only"
                }
                CommitKind::Update => "update needs an update path and no adds or removes",
                CommitKind::Delete => "delete_group must remove every other member",
                CommitKind::ReInit => "reinit is an update naming the new group, nothing else",
            }));
        }
        if let CommitKind::RemoveClients(user) = kind {
            let rotated = aad.user_auth_key.as_ref().is_some_and(|k| {
                self.roster.users[user]
                    .auth_key
                    .as_ref()
                    .is_none_or(|old| old != k)
            });
            if !rotated {
                return Err(HubError::WrongOperation(
                    "removing own clients rotates the user auth key",
                ));
            }
        }
        if kind != CommitKind::ReInit && aad.reinit.is_some() {
            return Err(HubError::WrongOperation(
                "only a reinit operation may name a new group",
            ));
        }
        let reinit = aad.reinit.clone().map(|g| g.as_slice().to_vec());
        if let Some(new_group) = &reinit {
            let target: QualifiedGroupId = decode_exact(new_group, 1024)
                .map_err(|_| HubError::InvalidGroupId("reinit target is not a group id"))?;
            if target.domain.as_slice() != ctx.domain.as_bytes() || *new_group == self.group_id {
                return Err(HubError::InvalidGroupId(
                    "reinit must name another group on this hub",
                ));
            }
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            checked_queue_ref(leaf, self.mode)?;
        }
        for kp in &adds {
            checked_queue_ref(kp.leaf_node(), self.mode)?;
        }
        let own_clients = aad.added.iter().filter(|a| a.user == OWN_CLIENT).count();
        let marked_right = match kind {
            CommitKind::AddClients(_) => own_clients == aad.added.len(),
            _ => own_clients == 0,
        };
        if !marked_right {
            return Err(HubError::WrongOperation(
                "clients added by add_clients, and only they, are marked as the committer's own",
            ));
        }
        let new_key = aad.user_auth_key.clone();
        let added = match_added(&crypto, &adds, aad)?;
        if self.pg.members().count() + adds.len() > ctx.max_group_size {
            return Err(HubError::LimitExceeded("group size"));
        }
        // Fan out with the roster from before the commit: removed members learn of it too.
        let fanout = Self::fan(self.recipients(Some(sender)), &bundle.commit);
        if kind == CommitKind::Delete {
            return Ok(Applied {
                response: DsResponse::Deleted,
                fanout,
                write: Write::Delete,
            });
        }
        let epoch_before = self.epoch();
        self.pg
            .merge_commit(&self.store, staged)
            .map_err(|e| HubError::Internal(format!("merge: {e}")))?;
        self.forget_removed(&all_removed);
        let period = ctx.removal.period(ctx.now_ms);
        let mut new_users: Vec<(u32, Vec<u32>)> = Vec::new();
        for (kp, member) in adds.iter().zip(&added) {
            let leaf = self.leaf_of(kp.leaf_node().signature_key().as_slice())?;
            self.set_credential(leaf, member.credential.clone());
            self.record_activity(leaf.u32(), period);
            match kind {
                CommitKind::AddClients(user) => self.roster.add_leaf(user, leaf.u32())?,
                _ => match new_users.iter_mut().find(|(u, _)| *u == member.user) {
                    Some((_, leaves)) => leaves.push(leaf.u32()),
                    None => new_users.push((member.user, vec![leaf.u32()])),
                },
            }
        }
        for (_, leaves) in new_users {
            self.roster.add_user(leaves, Role::Member, None);
        }
        if let Some(key) = new_key {
            let user = self
                .roster
                .user_of(sender.u32())
                .ok_or_else(|| HubError::Internal("committer without user".into()))?;
            self.roster.set_key(user, key)?;
        }
        if let Some(target) = reinit {
            self.reinit = Some(target.into());
        }
        self.after_merge(&crypto, epoch_before, sender, bundle)?;
        let mut fanout = fanout;
        if matches!(kind, CommitKind::Add | CommitKind::AddClients(_)) {
            fanout.extend(self.welcomes(ctx, &crypto, &adds, &added, bundle.welcome.as_ref())?);
        }
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout,
            write: Write::Save,
        })
    }

    /// Drops everything the hub keeps per leaf for leaves a commit removed.
    fn forget_removed(&mut self, removed: &[u32]) {
        self.acct.forget_leaves(removed);
        self.credentials.retain(|c| !removed.contains(&c.leaf));
        self.roster.remove_leaves(removed);
        self.activity.retain(|a| !removed.contains(&a.leaf));
    }

    /// What every merged commit needs: the committer's GroupInfo checked and kept, the commit
    /// remembered for reports, and trees of joiners that were removed again dropped.
    fn after_merge(
        &mut self,
        crypto: &RustCrypto,
        epoch_before: u64,
        committer: LeafNodeIndex,
        bundle: &CommitBundle,
    ) -> Result<(), HubError> {
        self.check_group_info(crypto, committer, bundle.group_info.as_slice())?;
        self.group_info = bundle.group_info.clone();
        self.acct.record_commit(
            epoch_before,
            commit_ref(bundle.commit.as_slice()),
            committer.u32(),
        );
        let present: HashSet<Vec<u8>> =
            self.pg.members().map(|m| m.signature_key.clone()).collect();
        for t in &mut self.past_trees {
            t.joiners.retain(|j| present.contains(j.as_slice()));
        }
        self.past_trees.retain(|t| !t.joiners.is_empty());
        Ok(())
    }

    /// An external commit: a member re-entering with its own signature key after an epoch it
    /// could not follow (signed by its old leaf), a client of an existing user (a new device,
    /// or one that lost its state and removes its old leaf), or a connection group's responder.
    /// Nothing else may ride along, so an external commit never changes the roster beyond the
    /// joiner's own user.
    fn external_commit(
        &mut self,
        ctx: &DsContext<'_>,
        kind: ExternalKind,
        bundle: &CommitBundle,
    ) -> Result<Applied, HubError> {
        if kind == ExternalKind::Connection && self.kind != GroupKind::Connection {
            return Err(HubError::WrongOperation(
                "only a connection group waiting for its responder can be joined this way",
            ));
        }
        let crypto = RustCrypto::default();
        let processed = self.handshake_at_current_epoch(&crypto, bundle.commit.as_slice())?;
        if !matches!(processed.sender(), Sender::NewMemberCommit) {
            return Err(HubError::WrongOperation("an external commit is needed"));
        }
        let aad = commit_aad(processed.aad())?;
        if !aad.added.is_empty() {
            return Err(HubError::WrongOperation(
                "an external commit adds no one else",
            ));
        }
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(HubError::WrongOperation("not a commit"));
        };
        let staged = *staged;
        let mut removed = Vec::new();
        for qp in staged.queued_proposals() {
            match qp.proposal() {
                Proposal::ExternalInit(_) => {}
                Proposal::Remove(r) => removed.push(r.removed()),
                _ => {
                    return Err(HubError::WrongOperation(
                        "an external commit may only remove the joiner's own old leaf",
                    ));
                }
            }
        }
        let removed_u32: Vec<u32> = removed.iter().map(|l| l.u32()).collect();
        let allowed = match kind {
            ExternalKind::Resync(old) => removed == [old],
            ExternalKind::Device(user) => removed_u32
                .iter()
                .all(|l| self.roster.users[user].leaves.contains(l)),
            ExternalKind::Connection => removed.is_empty(),
        };
        if !allowed {
            return Err(HubError::WrongOperation(match kind {
                ExternalKind::Resync(_) => "a resync must remove the member's old leaf, only",
                ExternalKind::Device(_) => "a device may only remove its own user's leaves",
                ExternalKind::Connection => "joining a connection group removes no one",
            }));
        }
        let leaf = staged
            .update_path_leaf_node()
            .ok_or(HubError::WrongOperation("an external commit needs a path"))?;
        let new_key = leaf.signature_key().as_slice().to_vec();
        let joiner = match kind {
            ExternalKind::Resync(old) => {
                let old_key = self
                    .pg
                    .leaf(old)
                    .map(|l| l.signature_key().as_slice().to_vec())
                    .ok_or(HubError::NotAuthorized("no member at that leaf index"))?;
                if new_key != old_key {
                    return Err(HubError::NotAuthorized(
                        "a resync must keep the member's signature key",
                    ));
                }
                None
            }
            _ => Some(aad.joiner.clone().ok_or(HubError::WrongOperation(
                "an external joiner must bring its credential material",
            ))?),
        };
        if kind == ExternalKind::Connection {
            let key = aad.user_auth_key.as_ref().ok_or(HubError::WrongOperation(
                "a connection responder brings its user auth key",
            ))?;
            if key.as_slice().len() != 32 || self.roster.user_by_key(key.as_slice()).is_some() {
                return Err(HubError::InvalidRequest("unusable user auth key"));
            }
        }
        checked_queue_ref(leaf, self.mode)?;
        let except = match kind {
            ExternalKind::Resync(old) => Some(old),
            _ => None,
        };
        let fanout = Self::fan(self.recipients(except), &bundle.commit);
        let epoch_before = self.epoch();
        self.pg
            .merge_commit(&self.store, staged)
            .map_err(|e| HubError::Internal(format!("merge: {e}")))?;
        let new = self.leaf_of(&new_key)?;
        let period = ctx.removal.period(ctx.now_ms);
        match kind {
            ExternalKind::Resync(old) => {
                self.acct.move_leaf(old.u32(), new.u32());
                // The member keeps its credential and its user: both move with it.
                if let Some(pos) = self.credentials.iter().position(|c| c.leaf == old.u32()) {
                    let entry = self.credentials.remove(pos);
                    self.set_credential(new, entry.info);
                }
                self.roster.move_leaf(old.u32(), new.u32());
                self.activity.retain(|a| a.leaf != old.u32());
            }
            ExternalKind::Device(user) => {
                let role = self.roster.users[user].role;
                let auth_key = self.roster.users[user].auth_key.clone();
                self.forget_removed(&removed_u32);
                // The user may have lost its only other leaf just now; it stays the same user.
                match self
                    .roster
                    .user_by_key(auth_key.as_ref().map_or(&[][..], |k| k.as_slice()))
                {
                    Some(u) => self.roster.add_leaf(u, new.u32())?,
                    None => {
                        self.roster.add_user(vec![new.u32()], role, auth_key);
                    }
                }
            }
            ExternalKind::Connection => {
                // Both ends of a 1:1 connection are admins of it.
                self.roster
                    .add_user(vec![new.u32()], Role::Admin, aad.user_auth_key.clone());
                self.kind = GroupKind::Regular;
            }
        }
        if let Some(j) = joiner {
            self.set_credential(new, j.credential);
        }
        self.record_activity(new.u32(), period);
        self.after_merge(&crypto, epoch_before, new, bundle)?;
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout,
            write: Write::Save,
        })
    }

    /// Counts a member's report about a commit it could not process. The hub cannot check the
    /// claim; it only keeps bounded, deduplicated evidence that members read via external
    /// commit info.
    fn report(
        &mut self,
        reporter: LeafNodeIndex,
        report: &CommitRejected,
    ) -> Result<Applied, HubError> {
        let changed = self.acct.report(reporter.u32(), report)?;
        Ok(Applied {
            response: DsResponse::Accepted(self.epoch()),
            fanout: Vec::new(),
            write: if changed { Write::Save } else { Write::None },
        })
    }

    /// Checks the committer's GroupInfo against the merged state: same context, the commit's
    /// confirmation tag, signed by the committer, with `external_pub` for external joiners.
    fn check_group_info(
        &self,
        crypto: &RustCrypto,
        committer: LeafNodeIndex,
        bytes: &[u8],
    ) -> Result<(), HubError> {
        let vgi = parse_group_info(bytes)?;
        if vgi.group_context() != self.pg.group_context() {
            return Err(HubError::InvalidGroupInfo(
                "does not match the new epoch".into(),
            ));
        }
        if vgi.extensions().external_pub().is_none() {
            return Err(HubError::InvalidGroupInfo("missing external_pub".into()));
        }
        let payload = vgi
            .unsigned_payload()
            .map_err(|e| HubError::InvalidGroupInfo(format!("{e:?}")))?;
        let tag = self
            .pg
            .confirmation_tag()
            .tls_serialize_detached()
            .map_err(|e| HubError::Internal(format!("{e:?}")))?;
        // GroupInfoTBS ends with `confirmation_tag ‖ uint32 signer`.
        let split = payload
            .len()
            .checked_sub(4)
            .ok_or_else(|| HubError::InvalidGroupInfo("truncated".into()))?;
        let (head, signer) = payload.split_at(split);
        let signer = u32::from_be_bytes([signer[0], signer[1], signer[2], signer[3]]);
        if !head.ends_with(&tag) {
            return Err(HubError::InvalidGroupInfo(
                "confirmation tag differs from the commit's".into(),
            ));
        }
        if signer != committer.u32() {
            return Err(HubError::InvalidGroupInfo(
                "not signed by the committer".into(),
            ));
        }
        let leaf = self
            .pg
            .leaf(committer)
            .ok_or_else(|| HubError::InvalidGroupInfo("committer left the group".into()))?;
        let pk = OpenMlsSignaturePublicKey::from_signature_key(
            leaf.signature_key().clone(),
            self.pg.ciphersuite().signature_algorithm(),
        );
        vgi.verify_no_out(crypto, &pk)
            .map_err(|_| HubError::InvalidGroupInfo("bad signature".into()))
    }

    /// Builds one WelcomeBundle per joiner and remembers this epoch's tree for them.
    fn welcomes(
        &mut self,
        ctx: &DsContext<'_>,
        crypto: &RustCrypto,
        adds: &[KeyPackage],
        added: &[AddedMember],
        welcome: Option<&VLBytes>,
    ) -> Result<Vec<Fanout>, HubError> {
        let welcome_bytes =
            welcome.ok_or(HubError::WrongOperation("add_members needs a Welcome"))?;
        let MlsMessageBodyIn::Welcome(_) =
            MlsMessageIn::tls_deserialize_exact(welcome_bytes.as_slice())
                .map_err(|e| HubError::malformed("welcome", e))?
                .extract()
        else {
            return Err(HubError::malformed("welcome", "not a Welcome message"));
        };
        // OpenMLS has validated the structure; cut it into one Welcome per joiner.
        let split = welcome_split::SplitWelcome::parse(welcome_bytes.as_slice())?;
        let epoch = self.epoch();
        let mut out = Vec::with_capacity(adds.len());
        let mut joiners = Vec::with_capacity(adds.len());
        for (kp, member) in adds.iter().zip(added) {
            let kp_ref = kp
                .hash_ref(crypto)
                .map_err(|e| HubError::Internal(e.to_string()))?;
            let Some(own_welcome) = split.for_joiner(kp_ref.as_slice())? else {
                return Err(HubError::WrongOperation(
                    "the Welcome does not cover every added member",
                ));
            };
            let info = JoinerInfo {
                group_id: self.group_id.clone().into(),
                ear_key: self.key.joiner_key().into(),
                epoch,
                hub_domain: ctx.domain.as_bytes().to_vec().into(),
            };
            let mut plain = encode(&info).map_err(|e| HubError::Internal(e.to_string()))?;
            let pk = hpke_seal::HpkePublicKey::from_bytes(kp.hpke_init_key().as_slice())
                .map_err(|_| HubError::InvalidRequest("unsupported KeyPackage init key"))?;
            let sealed = hpke_seal::seal(&pk, JOINER_INFO_HPKE_LABEL, kp_ref.as_slice(), &plain);
            plain.zeroize();
            let sealed = sealed.map_err(|e| HubError::Internal(e.to_string()))?;
            out.push(Fanout {
                queue_ref: queue_ref_of(kp.leaf_node())?,
                message: std::sync::Arc::new(QueueMessage::Welcome(WelcomeBundle {
                    welcome: own_welcome.into(),
                    joiner_info: HpkeCiphertextWire {
                        kem_output: sealed.kem_output.into(),
                        ciphertext: sealed.ciphertext.into(),
                    },
                    attribution: member.attribution.clone(),
                })),
            });
            joiners.push(kp.leaf_node().signature_key().as_slice().to_vec().into());
        }
        self.past_trees.push(PastTree {
            epoch,
            expires_ms: ctx.now_ms.saturating_add(ctx.welcome_tree_ttl_ms),
            ratchet_tree: self.tree_bytes()?.into(),
            joiners,
            credentials: self.credentials.clone(),
        });
        Ok(out)
    }

    fn self_remove(&mut self, sender: LeafNodeIndex, bytes: &VLBytes) -> Result<Applied, HubError> {
        let current = self.epoch();
        let processed =
            self.handshake_at_current_epoch(&RustCrypto::default(), bytes.as_slice())?;
        let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
            return Err(HubError::WrongOperation("self_remove needs a proposal"));
        };
        let own = matches!(qp.sender(), Sender::Member(i) if *i == sender)
            && matches!(qp.proposal(), Proposal::Remove(r) if r.removed() == sender);
        if !own {
            return Err(HubError::WrongOperation(
                "self_remove must remove the sender itself",
            ));
        }
        self.pg
            .add_proposal(&self.store, *qp)
            .map_err(|e| HubError::Internal(e.to_string()))?;
        Ok(Applied {
            response: DsResponse::Accepted(current),
            fanout: Self::fan(self.recipients(Some(sender)), bytes),
            write: Write::Save,
        })
    }

    fn send(&self, sender: LeafNodeIndex, bytes: &VLBytes) -> Result<Applied, HubError> {
        let current = self.epoch();
        check_application_message(bytes.as_slice(), &self.group_id, current)?;
        Ok(Applied {
            response: DsResponse::Accepted(current),
            fanout: Self::fan(self.recipients(Some(sender)), bytes),
            write: Write::None,
        })
    }

    fn welcome_info(&self, epoch: u64, joiner: &[u8]) -> Result<Applied, HubError> {
        // Only a joiner of that epoch's Welcome may read the tree (it proved key possession).
        let tree = self
            .past_trees
            .iter()
            .find(|t| t.epoch == epoch && t.joiners.iter().any(|j| j.as_slice() == joiner))
            .ok_or(HubError::UnknownEpoch)?;
        Ok(Applied {
            response: DsResponse::WelcomeInfo(WelcomeInfo {
                ratchet_tree: tree.ratchet_tree.clone(),
                credentials: tree.credentials.clone(),
            }),
            fanout: Vec::new(),
            write: Write::None,
        })
    }
}
