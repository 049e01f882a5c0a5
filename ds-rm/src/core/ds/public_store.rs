//! A one-group `PublicStorageProvider` that serialises to a compact blob.
//!
//! OpenMLS' `PublicGroup` persists itself through this trait. The hub keeps one instance per
//! request, loads it from the decrypted group state, lets OpenMLS read and write it, and then
//! serialises it back into the state blob. The group id argument is ignored: the blob is already
//! keyed by group id.

use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, traits};
use std::cell::RefCell;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Errors of the blob store: only (de)serialisation of OpenMLS entities can fail.
#[derive(Debug, thiserror::Error)]
pub enum PublicStoreError {
    /// postcard failed to encode or decode an entity.
    #[error("entity codec: {0}")]
    Codec(#[from] postcard::Error),
}

/// The serialised form: four optional entity slots and the proposal queue.
#[derive(Debug, Default, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PublicStoreBlob {
    tree: Option<VLBytes>,
    context: Option<VLBytes>,
    interim_transcript_hash: Option<VLBytes>,
    confirmation_tag: Option<VLBytes>,
    proposals: Vec<ProposalEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct ProposalEntry {
    reference: VLBytes,
    proposal: VLBytes,
}

/// Interior-mutable holder of one group's public state (the trait takes `&self`).
#[derive(Debug, Default)]
pub struct PublicStore {
    inner: RefCell<PublicStoreBlob>,
}

impl PublicStore {
    /// Restores a store from its blob.
    pub fn from_blob(blob: PublicStoreBlob) -> Self {
        Self {
            inner: RefCell::new(blob),
        }
    }

    /// The current content, for writing back into the group state.
    pub fn to_blob(&self) -> PublicStoreBlob {
        self.inner.borrow().clone()
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<VLBytes, PublicStoreError> {
    Ok(postcard::to_allocvec(v)?.into())
}

fn dec<T: serde::de::DeserializeOwned>(v: &Option<VLBytes>) -> Result<Option<T>, PublicStoreError> {
    v.as_ref()
        .map(|b| postcard::from_bytes(b.as_slice()))
        .transpose()
        .map_err(PublicStoreError::from)
}

impl PublicStorageProvider<CURRENT_VERSION> for PublicStore {
    type PublicError = PublicStoreError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        tree: &T,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().tree = Some(enc(tree)?);
        Ok(())
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        I: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        hash: &I,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().interim_transcript_hash = Some(enc(hash)?);
        Ok(())
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        ctx: &C,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().context = Some(enc(ctx)?);
        Ok(())
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        tag: &C,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().confirmation_tag = Some(enc(tag)?);
        Ok(())
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        Q: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        reference: &R,
        proposal: &Q,
    ) -> Result<(), Self::PublicError> {
        let reference = enc(reference)?;
        let proposal = enc(proposal)?;
        let mut inner = self.inner.borrow_mut();
        inner.proposals.retain(|p| p.reference != reference);
        inner.proposals.push(ProposalEntry {
            reference,
            proposal,
        });
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        Q: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Vec<(R, Q)>, Self::PublicError> {
        self.inner
            .borrow()
            .proposals
            .iter()
            .map(|p| {
                Ok((
                    postcard::from_bytes(p.reference.as_slice())?,
                    postcard::from_bytes(p.proposal.as_slice())?,
                ))
            })
            .collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, Self::PublicError> {
        dec(&self.inner.borrow().tree)
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<C>, Self::PublicError> {
        dec(&self.inner.borrow().context)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        I: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<I>, Self::PublicError> {
        dec(&self.inner.borrow().interim_transcript_hash)
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<C>, Self::PublicError> {
        dec(&self.inner.borrow().confirmation_tag)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().tree = None;
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().confirmation_tag = None;
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().context = None;
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().interim_transcript_hash = None;
        Ok(())
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        reference: &R,
    ) -> Result<(), Self::PublicError> {
        let reference = enc(reference)?;
        self.inner
            .borrow_mut()
            .proposals
            .retain(|p| p.reference != reference);
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.inner.borrow_mut().proposals.clear();
        Ok(())
    }
}
