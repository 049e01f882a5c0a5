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

mod group;
mod observer;
mod ops;

use crate::core::HubError;
use crate::core::RequestError;
use crate::core::identity_limit::IdentityLimiter;
use crate::core::replay::ReplayGuard;
use crate::store::{Cf, Txn};
use group::LoadedGroup;
use mimi_rm_crypto::{ear::EarKey, sign::verify_raw_ed25519};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, encode};
use openmls::prelude::LeafNodeIndex;
use ops::{create_group, reserve_group_id, send_routed};
use removals::RemovalPolicy;
use state::{AtRest, GroupRow};
use tls_codec::VLBytes;
use users::UserId;
use zeroize::Zeroize;

/// How many epochs an application message may lag behind the group. Clients keep 8 past
/// epochs; a recipient processes a message before any commit queued after it, so it is at most
/// this many epochs ahead of the message and can always decrypt it.
pub const MAX_MESSAGE_EPOCH_LAG: u64 = 4;
/// Upper bound for decoding a commit's authenticated data (sanity, not policy: the body limit
/// is far lower).
const MAX_COMMIT_AAD: usize = 64 << 20;

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
    /// Fresh ids (group ids at reservation).
    pub ids: &'a dyn crate::core::ids::IdSource,
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
                .map_err(|_| HubError::Request(RequestError::Invalid("EAR key must be 32 bytes")));
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
        _ => {
            let key = at_rest(ctx.mode, ear_key)?;
            if let Some(outcome) = fast_path(ctx, txn, &req, &signed, &key)? {
                return Ok(outcome);
            }
            let mut group = LoadedGroup::load(txn, req.tbs.group_id.as_slice(), key, ctx.mode)?;
            let sender = group.authenticate(ctx, &req, &signed)?;
            let outcome = group.apply(ctx, txn, sender, &req.tbs.operation)?;
            group.persist(txn, ctx.now_ms, outcome.write)?;
            Ok(DsOutcome {
                response: outcome.response,
                fanout: outcome.fanout,
            })
        }
    }
}

/// Answers an application message from the group's routing record alone when it can: a
/// settled member's message in an activity period (and month) already recorded for it.
fn fast_path(
    ctx: &DsContext<'_>,
    txn: &Txn<'_>,
    req: &DsRequest,
    signed: &[u8],
    key: &AtRest,
) -> Result<Option<DsOutcome>, HubError> {
    let (DsOperation::SendMessage(message), DsSender::Member(leaf)) =
        (&req.tbs.operation, &req.tbs.sender)
    else {
        return Ok(None);
    };
    let gid = req.tbs.group_id.as_slice();
    let Some(r) = routing::RoutingRecord::load(txn, key, gid)? else {
        return Ok(None);
    };
    let month_current = r.activity_month == state::month_of(ctx.now_ms);
    let period = ctx.removal.period(ctx.now_ms);
    match r.record.settled_member(*leaf) {
        // A member's first request in an activity period takes the full path,
        // which records it (and runs the hub's removal checks).
        Some(m) if month_current && m.active_period == period => {
            send_routed(ctx, req, signed, gid, &r.record, m, message).map(Some)
        }
        // A joiner's first request, or the first this month: the full path.
        _ => Ok(None),
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
    ids: &dyn crate::core::ids::IdSource,
    group_id: &[u8],
    queue_ref: &QueueRef,
) -> Result<(), HubError> {
    let Some(row) = txn.get_record::<GroupRow>(group_id)? else {
        return Ok(());
    };
    removals::write_tombstone(txn, ids, group_id, row.tombstone_key.as_slice(), queue_ref)?;
    // The next message must take the full path, which reads the tombstone.
    txn.delete(Cf::DsRouting, group_id.to_vec());
    Ok(())
}

/// How this hub keeps a group given the request's EAR key: RM mode needs one, baseline mode
/// refuses one (a client configured for RM must not hand its group key to a plaintext DS).
fn at_rest(mode: DsMode, key: Option<EarKey>) -> Result<AtRest, HubError> {
    match (mode, key) {
        (DsMode::Rm, Some(k)) => Ok(AtRest::Ear(k)),
        (DsMode::Rm, None) => Err(HubError::Request(RequestError::Invalid("missing EAR key"))),
        (DsMode::Baseline, None) => Ok(AtRest::Plain),
        (DsMode::Baseline, Some(_)) => Err(HubError::Request(RequestError::Invalid(
            "this hub runs in baseline mode and takes no EAR key",
        ))),
    }
}

/// The exact bytes a DS request signature covers.
pub fn signed_bytes(tbs: &DsRequestTbs) -> Result<Vec<u8>, HubError> {
    let mut out = DS_REQUEST_SIGNATURE_LABEL.to_vec();
    out.extend(encode(tbs).map_err(|e| HubError::malformed("request", e))?);
    Ok(out)
}

/// Verifies the request signature `signature` over `signed` with the Ed25519 key `key`.
fn verify(key: &[u8], signed: &[u8], signature: &VLBytes) -> Result<(), HubError> {
    verify_raw_ed25519(key, signed, signature.as_slice())
        .map_err(|_| HubError::Request(RequestError::InvalidSignature))
}

/// Who an authenticated request came from.
#[derive(Debug, Clone)]
enum Authenticated {
    Member(LeafNodeIndex),
    /// A Welcome joiner, by its leaf signature key.
    Joiner(Vec<u8>),
    /// Only proved knowledge of the EAR key.
    KeyHolder,
    /// A user, by its per-group auth key (a handle into the roster, stable for the request).
    User(UserId),
}

impl LoadedGroup {
    /// Checks the request's signature against the sender it names (a leaf of the tree, a
    /// Welcome joiner, a user of the roster, or no one for the key-holder reads) and the replay
    /// guard.
    fn authenticate(
        &mut self,
        ctx: &DsContext<'_>,
        req: &DsRequest,
        signed: &[u8],
    ) -> Result<Authenticated, HubError> {
        let who = match (&req.tbs.sender, &req.tbs.operation) {
            (DsSender::Member(i), op) if !matches!(op, DsOperation::WelcomeInfo(_)) => {
                let idx = LeafNodeIndex::new(*i);
                let leaf =
                    self.pg
                        .leaf(idx)
                        .ok_or(HubError::Request(RequestError::NotAuthorized(
                            "no member at that leaf index",
                        )))?;
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
                    .ok_or(HubError::Request(RequestError::NotAuthorized(
                        "no user with that auth key",
                    )))?;
                verify(key.as_slice(), signed, &req.signature)?;
                ctx.admit_identity(key.as_slice())?;
                Authenticated::User(user)
            }
            _ => {
                return Err(HubError::Request(RequestError::NotAuthorized(
                    "sender type not allowed for this operation",
                )));
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
}
