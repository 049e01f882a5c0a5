//! What the hub checks as a public observer of the group: parsing MLS messages and GroupInfos,
//! letting OpenMLS validate handshakes at the current epoch, and checking a committer's GroupInfo
//! and the fan-out addresses leaves carry.

use super::group::LoadedGroup;
use super::{DsContext, MAX_COMMIT_AAD, MAX_MESSAGE_EPOCH_LAG};
use crate::core::HubError;
use crate::core::{GroupError, RequestError};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, decode_exact};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{tls_codec::Deserialize as _, tls_codec::Serialize as _, *};
use openmls_rust_crypto::RustCrypto;

/// An application message must be a PrivateMessage for this group, at most
/// [`MAX_MESSAGE_EPOCH_LAG`] epochs behind `current` and not ahead of it.
pub(super) fn check_application_message(
    bytes: &[u8],
    group_id: &[u8],
    current: u64,
) -> Result<(), HubError> {
    let pm = parse_protocol_message(bytes)?;
    if pm.wire_format() != WireFormat::PrivateMessage
        || pm.content_type() != ContentType::Application
    {
        return Err(HubError::Group(GroupError::InvalidMls(
            "application messages must be PrivateMessages".into(),
        )));
    }
    if pm.group_id().as_slice() != group_id {
        return Err(HubError::Group(GroupError::InvalidMls(
            "message is for another group".into(),
        )));
    }
    // Members keep a few past epochs' secrets; a message older than this window could reach
    // members who can no longer decrypt it, so the sender must catch up first.
    let epoch = pm.epoch().as_u64();
    if epoch > current || epoch.saturating_add(MAX_MESSAGE_EPOCH_LAG) < current {
        return Err(HubError::Group(GroupError::WrongEpoch { current }));
    }
    Ok(())
}

/// The index of this hub in the group's `external_senders`, if it is listed there with its
/// credential identity and key.
pub(super) fn hub_sender_index(pg: &PublicGroup, ctx: &DsContext<'_>) -> Option<u32> {
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
pub(super) fn commit_aad(bytes: &[u8]) -> Result<CommitAad, HubError> {
    if bytes.is_empty() {
        return Ok(CommitAad::default());
    }
    decode_exact(bytes, MAX_COMMIT_AAD)
        .map_err(|e| HubError::malformed("commit authenticated data", e))
}

/// Decodes a GroupInfo message.
pub(super) fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, HubError> {
    match MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| HubError::malformed("group info", e))?
        .extract()
    {
        MlsMessageBodyIn::GroupInfo(vgi) => Ok(vgi),
        _ => Err(HubError::Group(GroupError::InvalidGroupInfo(
            "not a GroupInfo message".into(),
        ))),
    }
}

/// Decodes an MLS message that must be a protocol (handshake or application) message.
pub(super) fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, HubError> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| HubError::malformed("MLS message", e))?
        .try_into_protocol_message()
        .map_err(|e| HubError::Group(GroupError::InvalidMls(e.to_string())))
}

/// The fan-out address a leaf carries in its extensions.
pub(super) fn queue_ref_of(leaf: &LeafNode) -> Result<QueueRef, HubError> {
    let ext = leaf
        .extensions()
        .unknown(QUEUE_REF_EXTENSION_TYPE)
        .ok_or(HubError::Request(RequestError::Invalid(
            "leaf has no QueueRef extension",
        )))?;
    decode_exact(&ext.0, 4096).map_err(|e| HubError::malformed("QueueRef extension", e))
}

/// A new leaf's fan-out address, which must be of this hub's mode
/// ([`crate::core::qs::check_address_mode`]).
pub(super) fn checked_queue_ref(leaf: &LeafNode, mode: DsMode) -> Result<QueueRef, HubError> {
    let qr = queue_ref_of(leaf)?;
    crate::core::qs::check_address_mode(&qr.address, mode)?;
    Ok(qr)
}

impl LoadedGroup {
    /// Parses a handshake message and lets OpenMLS validate it against the current epoch. Shared by
    /// commits and stored proposals: both must be PublicMessages for this group and this epoch.
    pub(super) fn handshake_at_current_epoch(
        &self,
        crypto: &RustCrypto,
        bytes: &[u8],
    ) -> Result<ProcessedMessage, HubError> {
        let pm = parse_protocol_message(bytes)?;
        if pm.wire_format() != WireFormat::PublicMessage {
            return Err(HubError::Group(GroupError::InvalidMls(
                "handshake messages must be PublicMessages".into(),
            )));
        }
        if pm.group_id().as_slice() != self.group_id.as_slice() {
            return Err(HubError::Group(GroupError::InvalidMls(
                "message is for another group".into(),
            )));
        }
        let current = self.epoch();
        if pm.epoch().as_u64() != current {
            return Err(HubError::Group(GroupError::WrongEpoch { current }));
        }
        self.pg
            .process_message(crypto, pm)
            .map_err(|e| HubError::Group(GroupError::InvalidMls(e.to_string())))
    }

    /// Checks the committer's GroupInfo against the merged state: same context, the commit's
    /// confirmation tag, signed by the committer, with `external_pub` for external joiners.
    pub(super) fn check_group_info(
        &self,
        crypto: &RustCrypto,
        committer: LeafNodeIndex,
        bytes: &[u8],
    ) -> Result<(), HubError> {
        let vgi = parse_group_info(bytes)?;
        if vgi.group_context() != self.pg.group_context() {
            return Err(HubError::Group(GroupError::InvalidGroupInfo(
                "does not match the new epoch".into(),
            )));
        }
        if vgi.extensions().external_pub().is_none() {
            return Err(HubError::Group(GroupError::InvalidGroupInfo(
                "missing external_pub".into(),
            )));
        }
        let payload = vgi
            .unsigned_payload()
            .map_err(|e| HubError::Group(GroupError::InvalidGroupInfo(format!("{e:?}"))))?;
        let tag = self
            .pg
            .confirmation_tag()
            .tls_serialize_detached()
            .map_err(|e| HubError::Bug(format!("{e:?}")))?;
        // GroupInfoTBS ends with `confirmation_tag ‖ uint32 signer`.
        let split = payload
            .len()
            .checked_sub(4)
            .ok_or_else(|| HubError::Group(GroupError::InvalidGroupInfo("truncated".into())))?;
        let (head, signer) = payload.split_at(split);
        let signer = u32::from_be_bytes([signer[0], signer[1], signer[2], signer[3]]);
        if !head.ends_with(&tag) {
            return Err(HubError::Group(GroupError::InvalidGroupInfo(
                "confirmation tag differs from the commit's".into(),
            )));
        }
        if signer != committer.u32() {
            return Err(HubError::Group(GroupError::InvalidGroupInfo(
                "not signed by the committer".into(),
            )));
        }
        let leaf = self.pg.leaf(committer).ok_or_else(|| {
            HubError::Group(GroupError::InvalidGroupInfo(
                "committer left the group".into(),
            ))
        })?;
        let pk = OpenMlsSignaturePublicKey::from_signature_key(
            leaf.signature_key().clone(),
            self.pg.ciphersuite().signature_algorithm(),
        );
        vgi.verify_no_out(crypto, &pk)
            .map_err(|_| HubError::Group(GroupError::InvalidGroupInfo("bad signature".into())))
    }
}
