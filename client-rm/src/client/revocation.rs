//! Revoked devices: every member we verify is checked against its provider's signed
//! revocation list ([`mimi_rm_protocol::revocation`]).
//!
//! A device its user removed keeps a credential that chains to the AS and has not expired; only
//! the AS's list tells it apart. We fetch each provider's whole list (never a question about one
//! member), through our own provider, at most once per [`Client::set_revocation_refresh`]
//! interval while receiving, and always before inviting a contact. A list is kept only if the
//! provider's AS signed it and it is not older than one we already hold, so a hub replaying an
//! old list cannot bring a revoked device back. Each refresh also sweeps every group: a listed
//! member becomes `Unverified` ("revoked") wherever it still is.

use super::requests::anonymous_as;
use super::{Client, Event, GroupHandle, encoded, now_ms};
use crate::error::ClientError;
use crate::state::unhex;
use mimi_rm_protocol::auth::{AsOperation, AsResponse};
use mimi_rm_protocol::credentials::{AsCredentials, ClientCredential, ClientIdentity};
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::revocation::RevocationList;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The provider whose AS issued `credential`: the domain its chain's root names, among
/// `anchors`.
pub(crate) fn issuer_domain(
    credential: &ClientCredential,
    anchors: &AsCredentials,
) -> Option<String> {
    let intermediate = anchors.intermediate(&credential.tbs.signer_fingerprint)?;
    anchors
        .root_of(intermediate)
        .map(|r| String::from_utf8_lossy(r.tbs.as_domain.as_slice()).into_owned())
}

/// A list older than this is refused: the hub that relays it must not freeze it.
const MAX_LIST_AGE_SECS: u64 = 60 * 60;
/// How often `receive` refreshes the lists by default.
pub(super) const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
/// Largest encoded list accepted.
const MAX_LIST_BYTES: usize = 4 << 20;

/// The newest verified revocation list of each provider we hold one of.
#[derive(Debug, Default)]
pub(crate) struct Revocations(BTreeMap<String, RevocationList>);

impl Revocations {
    /// Whether `domain`'s list names the device `identity` (a device of `domain`'s AS: no
    /// other provider's list can revoke it).
    pub(crate) fn lists(&self, domain: &str, identity: &ClientIdentity) -> bool {
        self.0.get(domain).is_some_and(|l| l.lists(identity))
    }

    /// The problem recorded for a listed member.
    pub(crate) fn problem(identity: &ClientIdentity) -> String {
        format!(
            "revoked: {}'s provider lists this device as removed",
            identity.handle_str()
        )
    }
}

impl Client {
    /// Sets how often [`Client::receive`] refreshes the providers' revocation lists (and
    /// sweeps every group with them); zero refreshes on every receive. Invitations always
    /// fetch the invitee's provider's list first.
    pub fn set_revocation_refresh(&mut self, every: Duration) {
        self.revocation_refresh = every;
    }

    /// The revocation lists we hold.
    pub(crate) fn revocations(&self) -> Result<Revocations, ClientError> {
        let mut lists = BTreeMap::new();
        for (domain, hexed) in &self.state.revocation_lists {
            let list: RevocationList = decode_exact(&unhex(hexed)?, MAX_LIST_BYTES)
                .map_err(|e| ClientError::State(e.to_string()))?;
            lists.insert(domain.clone(), list);
        }
        Ok(Revocations(lists))
    }

    /// The providers whose members we verify: ours and each contact's.
    fn member_domains(&self) -> Result<BTreeSet<String>, ClientError> {
        let mut domains = BTreeSet::from([self.state.domain.clone()]);
        for text in self.state.contacts.values() {
            domains.insert(crate::contact::ContactCard::from_text(text)?.domain_str());
        }
        domains.extend(self.state.peer_anchors.keys().cloned());
        Ok(domains)
    }

    /// Fetches and verifies `domain`'s revocation list (through our provider) and keeps it
    /// unless we hold a newer one.
    pub(super) async fn fetch_revocations(&mut self, domain: &str) -> Result<(), ClientError> {
        let anchors = self.fetch_anchors(domain).await?;
        let AsResponse::RevocationList(list) = self
            .transport
            .auth_at(
                &self.state.domain,
                domain,
                &anonymous_as(AsOperation::RevocationList),
            )
            .await?
        else {
            return Err(ClientError::Unexpected("expected a revocation list"));
        };
        let now = now_ms() / 1000;
        list.verify(&anchors, domain, now)
            .map_err(crate::identity::IdentityError::Chain)?;
        if list.tbs.issued_at.saturating_add(MAX_LIST_AGE_SECS) < now {
            return Err(ClientError::Unexpected("a stale revocation list"));
        }
        if let Some(held) = self.revocations()?.0.get(domain)
            && held.tbs.issued_at > list.tbs.issued_at
        {
            return Err(ClientError::Unexpected(
                "a revocation list older than one already held",
            ));
        }
        self.state
            .revocation_lists
            .insert(domain.to_owned(), hex::encode(encoded(&list)?));
        Ok(())
    }

    /// Refreshes every provider's list, then marks each listed member of every group as
    /// unverified ("revoked"). Returns the members newly marked, by group.
    /// A provider that cannot be reached does not hold up the others: the sweep runs with
    /// every list obtained, and the first failure is returned after it.
    pub async fn refresh_revocations(&mut self) -> Result<Vec<(GroupHandle, u32)>, ClientError> {
        self.last_revocation_refresh = Some(std::time::Instant::now());
        let mut failed = None;
        for domain in self.member_domains()? {
            if let Err(e) = self.fetch_revocations(&domain).await {
                tracing::warn!(domain = %domain, error = %e, "no revocation list from this provider");
                failed.get_or_insert(e);
            }
        }
        let marked = self.sweep_revoked()?;
        self.persist()?;
        match failed {
            Some(e) => Err(e),
            None => Ok(marked),
        }
    }

    /// [`Client::refresh_revocations`] when the refresh interval has passed; a provider that
    /// cannot be reached is logged and retried next time, never in the way of receiving.
    pub(super) async fn refresh_revocations_if_due(&mut self) {
        let due = self
            .last_revocation_refresh
            .is_none_or(|t| t.elapsed() >= self.revocation_refresh);
        if !due {
            return;
        }
        if let Err(e) = self.refresh_revocations().await {
            tracing::warn!(error = %e, "could not refresh the revocation lists");
        }
    }

    /// Marks every verified member that a held list names, in every group; each one marked is
    /// also reported as an [`Event::UnverifiedMember`].
    fn sweep_revoked(&mut self) -> Result<Vec<(GroupHandle, u32)>, ClientError> {
        let revocations = self.revocations()?;
        let own = self.state.domain.clone();
        let mut marked = Vec::new();
        for group in self.groups() {
            let meta = self.meta_mut(&group)?;
            for (leaf, record) in meta.members.iter_mut() {
                // Records from before domains were kept: ours (the common case).
                let domain = record.domain.clone().unwrap_or_else(|| own.clone());
                let (Some(handle), Some(device)) = (&record.handle, &record.device) else {
                    continue;
                };
                let Some(device) = unhex(device)
                    .ok()
                    .and_then(|d| <[u8; 16]>::try_from(d).ok())
                else {
                    continue;
                };
                let identity = ClientIdentity {
                    handle: handle.as_bytes().to_vec().into(),
                    device,
                };
                if revocations.lists(&domain, &identity) {
                    let problem = Revocations::problem(&identity);
                    tracing::warn!(group = %group, leaf, "a member's device was revoked");
                    record.problem = Some(problem);
                    record.handle = None;
                    record.device = None;
                    marked.push((group.clone(), *leaf));
                }
            }
        }
        for (group, leaf) in &marked {
            let reason = self.meta(group)?.members[leaf].problem.clone();
            self.unsaved.push(Event::UnverifiedMember {
                group: group.clone(),
                leaf: *leaf,
                reason: reason.unwrap_or_default(),
            });
        }
        Ok(marked)
    }
}
