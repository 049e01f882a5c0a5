//! Starting a group: reserving a group id, and creating the group under it from the creator's
//! GroupInfo and one-leaf ratchet tree.

use crate::core::HubError;
use crate::core::ds::accountability::Accountability;
use crate::core::ds::group::LoadedGroup;
use crate::core::ds::observer::{checked_queue_ref, hub_sender_index, parse_group_info};
use crate::core::ds::public_store::PublicStore;
use crate::core::ds::removals::LeafActivity;
use crate::core::ds::state::{self, AtRest};
use crate::core::ds::users::Roster;
use crate::core::ds::{DsContext, DsOutcome, verify};
use crate::core::{GroupError, RequestError};
use crate::store::{Cf, Txn};
use mimi_rm_crypto::hpke_seal;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{decode_exact, encode};
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_rust_crypto::RustCrypto;

/// How long a reserved group id stays reserved.
const RESERVATION_SECS: u64 = 3600;

/// Reserves a fresh group id on this hub for [`RESERVATION_SECS`].
pub(in crate::core::ds) fn reserve_group_id(
    ctx: &DsContext<'_>,
    txn: &mut Txn<'_>,
) -> Result<DsOutcome, HubError> {
    for _ in 0..4 {
        let id = QualifiedGroupId {
            uuid: ctx.ids.id(),
            domain: ctx.domain.as_bytes().to_vec().into(),
        };
        let bytes = encode(&id).map_err(|e| HubError::Bug(e.to_string()))?;
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
    Err(HubError::Bug("could not find a free group id".into()))
}

/// Creates a group under a reserved id: the creator, at leaf 0, is its only member and admin.
pub(in crate::core::ds) fn create_group(
    ctx: &DsContext<'_>,
    txn: &mut Txn<'_>,
    req: &DsRequest,
    signed: &[u8],
    params: &CreateGroup,
    key: AtRest,
) -> Result<DsOutcome, HubError> {
    let gid = req.tbs.group_id.as_slice();
    check_reservation(ctx, txn, gid)?;
    if req.tbs.sender != DsSender::Member(0) {
        return Err(HubError::Request(RequestError::NotAuthorized(
            "the creator signs as leaf 0",
        )));
    }
    let (store, pg) = observe_new_group(ctx, gid, params)?;
    let leaf =
        pg.leaf(LeafNodeIndex::new(0))
            .ok_or(HubError::Group(GroupError::InvalidGroupInfo(
                "no leaf 0".into(),
            )))?;
    verify(leaf.signature_key().as_slice(), signed, &req.signature)?;
    ctx.admit_identity(leaf.signature_key().as_slice())?;
    ctx.replay
        .check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, ctx.now_ms)?;
    checked_queue_ref(leaf, ctx.mode)?;
    let group = LoadedGroup::created(ctx, gid, key, store, pg, params);
    group.save(txn, ctx.now_ms)?;
    txn.delete(Cf::DsReservations, gid.to_vec());
    Ok(DsOutcome {
        response: DsResponse::Accepted(0),
        fanout: Vec::new(),
    })
}

/// Fails unless `gid` is a group id of this hub, not in use, and reserved until now at least.
fn check_reservation(ctx: &DsContext<'_>, txn: &Txn<'_>, gid: &[u8]) -> Result<(), HubError> {
    let qualified: QualifiedGroupId = decode_exact(gid, 1024)
        .map_err(|_| HubError::Group(GroupError::InvalidId("not a qualified group id")))?;
    if qualified.domain.as_slice() != ctx.domain.as_bytes() {
        return Err(HubError::Group(GroupError::InvalidId(
            "group id belongs to another domain",
        )));
    }
    if txn.get(Cf::DsGroups, gid)?.is_some() {
        return Err(HubError::Group(GroupError::Exists));
    }
    let reserved = txn
        .get(Cf::DsReservations, gid)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    match reserved {
        Some(expiry) if expiry >= ctx.now_ms / 1000 => Ok(()),
        _ => Err(HubError::Group(GroupError::InvalidId(
            "group id is not reserved",
        ))),
    }
}

/// The creator's group as the hub observes it, from its GroupInfo and ratchet tree: one member
/// at epoch 0, an Ed25519 ciphersuite, and this hub among the external senders.
fn observe_new_group(
    ctx: &DsContext<'_>,
    gid: &[u8],
    params: &CreateGroup,
) -> Result<(PublicStore, PublicGroup), HubError> {
    let vgi = parse_group_info(params.group_info.as_slice())?;
    if vgi.group_id().as_slice() != gid {
        return Err(HubError::Group(GroupError::InvalidGroupInfo(
            "group id mismatch".into(),
        )));
    }
    if vgi.extensions().external_pub().is_none() {
        return Err(HubError::Group(GroupError::InvalidGroupInfo(
            "missing external_pub".into(),
        )));
    }
    if params.creator_user_auth_key.as_slice().len() != 32 {
        return Err(HubError::Request(RequestError::Invalid(
            "a user auth key is 32 bytes",
        )));
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
    .map_err(|e| HubError::Group(GroupError::InvalidGroupInfo(e.to_string())))?;
    if pg.group_context().epoch().as_u64() != 0 || pg.members().count() != 1 {
        return Err(HubError::Group(GroupError::InvalidGroupInfo(
            "a new group has one member at epoch 0".into(),
        )));
    }
    if pg.ciphersuite().signature_algorithm() != SignatureScheme::ED25519 {
        return Err(HubError::Request(RequestError::Invalid(
            "only Ed25519 ciphersuites are supported",
        )));
    }
    // The hub proposes removals itself, so it must be the group's external sender.
    if hub_sender_index(&pg, ctx).is_none() {
        return Err(HubError::Group(GroupError::InvalidGroupInfo(
            "the group must list this hub as an external sender".into(),
        )));
    }
    Ok((store, pg))
}

impl LoadedGroup {
    /// The state of a just-created group: the creator's leaf, credential, user and activity,
    /// and a fresh tombstone key pair.
    fn created(
        ctx: &DsContext<'_>,
        gid: &[u8],
        key: AtRest,
        store: PublicStore,
        pg: PublicGroup,
        params: &CreateGroup,
    ) -> Self {
        let tombstones = hpke_seal::HpkeKeyPair::generate();
        Self {
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
        }
    }
}
