//! Privacy Pass issuer and origin (RFC 9576–9578), sans-I/O.
//!
//! Rate limits without identities: a client proves once per batch that it is a current device
//! of this provider and receives blindly signed tokens; each rate-limited request then carries
//! one token that the hub can verify but cannot link to the issuance. The hub keeps:
//! - issuer keys per key epoch ([`keys`], column family `pp_keys`);
//! - the nonces of spent tokens, written in the same batch as the request's effects and
//!   deleted when their key epoch expires (`pp_spent`);
//! - per-device issuance counts for the current epoch, in memory only ([`issue`]).

pub mod issue;
pub mod keys;
#[cfg(test)]
mod vectors;

use crate::core::HubError;
use crate::core::TokenError;
use crate::store::{Cf, Store, Txn};
use keys::{IssuerKeys, KeyLookup, KeySchedule, KeyTags};
use mimi_rm_protocol::tokens::{
    DirectoryKey, GREASE_TYPES, ISSUER_REQUEST_PATH, IssuerDirectory, PresentedToken,
    REGISTRATION_REQUEST_PATH, RateClass, TYPE_AMORTIZED, TYPE_PUBLIC, challenge, challenge_digest,
    encode_b64url, grease_www_authenticate, registration_challenge_digest, www_authenticate,
};
use std::collections::BTreeSet;
use subtle::ConstantTimeEq as _;

/// Operator settings for Privacy Pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Request classes that need a token.
    pub rate_limited: BTreeSet<RateClass>,
    /// Key epochs and their overlap.
    pub schedule: KeySchedule,
    /// Tokens one device may obtain per key epoch.
    pub allowance_per_epoch: u32,
    /// Registration tokens one device may obtain per key epoch, to hand to someone it vouches
    /// for (a friend, a new account of its own).
    pub registration_allowance_per_epoch: u32,
    /// Registration tokens obtainable per client address per key epoch without an invitation
    /// or a device (open registration only; counted in memory, never stored).
    pub registrations_per_address_per_epoch: u32,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            rate_limited: RateClass::ALL.into_iter().collect(),
            schedule: KeySchedule {
                epoch_secs: 24 * 60 * 60,
                overlap_secs: 60 * 60,
            },
            allowance_per_epoch: 10_000,
            registration_allowance_per_epoch: 1,
            registrations_per_address_per_epoch: 5,
        }
    }
}

/// A token whose signature verified against a key that redeems now; not yet known to be
/// unspent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Key epoch of the key that verified it (the spent-nonce partition).
    pub epoch: u64,
    /// Token type.
    pub token_type: u16,
    /// Its nonce.
    pub nonce: [u8; 32],
    /// What it pays for: the issuer key that verified it decides.
    pub purpose: Purpose,
}

/// What a token pays for: its issuer key, told apart by the challenge it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A rate-limited request.
    Request,
    /// One registration (`RegisterUser`).
    Registration,
}

impl VerifiedToken {
    fn spent_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + 2 + 32);
        k.extend_from_slice(&self.epoch.to_be_bytes());
        k.extend_from_slice(&self.token_type.to_be_bytes());
        k.extend_from_slice(&self.nonce);
        k
    }
}

/// How a request reached the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// From a client over HTTP, with the token its `Authorization` header carried (verified by
    /// the HTTP layer), if any.
    Client(Option<VerifiedToken>),
    /// Forwarded by a federation peer: the peer's provider rate-limited its own client already.
    Peer,
}

/// The hub's issuer and origin.
pub struct Tokens {
    domain: String,
    policy: TokenPolicy,
    keys: IssuerKeys,
    digests: [[u8; 32]; 2],
    allowance: issue::Allowance,
    /// The registration issuer: its own keys and challenge.
    registration: IssuerKeys,
    registration_digest: [u8; 32],
    /// Registration tokens per vouching device, and per address (open registration).
    registration_allowance: issue::Allowance,
    address_allowance: issue::Allowance,
}

fn secs(now_ms: u64) -> u64 {
    now_ms / 1000
}

impl Tokens {
    /// Loads (or creates) the issuer keys.
    pub fn open(
        store: &dyn Store,
        domain: &str,
        policy: TokenPolicy,
        now_ms: u64,
    ) -> Result<Self, HubError> {
        let keys = IssuerKeys::open(store, KeyTags::REQUESTS, policy.schedule, secs(now_ms))?;
        let registration =
            IssuerKeys::open(store, KeyTags::REGISTRATION, policy.schedule, secs(now_ms))?;
        let digest = |t| challenge_digest(domain, t).map_err(|e| HubError::Bug(e.to_string()));
        Ok(Self {
            domain: domain.to_owned(),
            digests: [digest(TYPE_PUBLIC)?, digest(TYPE_AMORTIZED)?],
            registration_digest: registration_challenge_digest(domain)
                .map_err(|e| HubError::Bug(e.to_string()))?,
            policy,
            keys,
            allowance: issue::Allowance::default(),
            registration,
            registration_allowance: issue::Allowance::default(),
            address_allowance: issue::Allowance::default(),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// Brings keys up to date (called periodically and before issuing).
    pub fn rotate(&self, store: &dyn Store, now_ms: u64) -> Result<(), HubError> {
        self.keys.rotate(store, secs(now_ms))?;
        self.registration.rotate(store, secs(now_ms))
    }

    /// Checks a presented token's challenge, key and signature. Cheap enough (one RSA verify or
    /// one VOPRF evaluation) to run before anything else about the request.
    pub fn verify(&self, token: &PresentedToken, now_ms: u64) -> Result<VerifiedToken, HubError> {
        if token.token_type == TYPE_PUBLIC && token.challenge_digest == self.registration_digest {
            return self.check_authenticator(token, now_ms, Purpose::Registration);
        }
        let expected = match token.token_type {
            TYPE_PUBLIC => &self.digests[0],
            TYPE_AMORTIZED => &self.digests[1],
            other => return Err(HubError::Token(TokenError::WrongType(other))),
        };
        if token.challenge_digest != *expected {
            return Err(HubError::Token(TokenError::Invalid(
                "bound to another challenge",
            )));
        }
        self.check_authenticator(token, now_ms, Purpose::Request)
    }

    /// The key and signature part of [`Tokens::verify`], against the keys of `purpose`.
    fn check_authenticator(
        &self,
        token: &PresentedToken,
        now_ms: u64,
        purpose: Purpose,
    ) -> Result<VerifiedToken, HubError> {
        let issuer = match purpose {
            Purpose::Request => &self.keys,
            Purpose::Registration => &self.registration,
        };
        let keys = match issuer.lookup(&token.token_key_id, secs(now_ms)) {
            KeyLookup::Active(k) => k,
            KeyLookup::Expired => return Err(HubError::Token(TokenError::ExpiredKey)),
            KeyLookup::Unknown => return Err(HubError::Token(TokenError::UnknownKey)),
        };
        let input = token.token_input();
        let valid = match token.token_type {
            TYPE_PUBLIC => {
                token.token_key_id == keys.rsa_key_id
                    && keys
                        .rsa
                        .pk
                        .verify(
                            &blind_rsa_signatures::Signature(token.authenticator.clone()),
                            None,
                            &input,
                        )
                        .is_ok()
            }
            _ => {
                token.token_key_id == keys.voprf_key_id
                    && keys
                        .voprf
                        .evaluate(&input)
                        .is_ok_and(|out| bool::from(out.as_slice().ct_eq(&token.authenticator)))
            }
        };
        if !valid {
            return Err(HubError::Token(TokenError::Invalid(
                "authenticator does not verify",
            )));
        }
        Ok(VerifiedToken {
            epoch: keys.epoch,
            token_type: token.token_type,
            nonce: token.nonce,
            purpose,
        })
    }

    /// Decides whether a request of `class` may proceed, and which token it spends.
    pub fn admit(
        &self,
        class: Option<RateClass>,
        admission: &Admission,
    ) -> Result<Option<VerifiedToken>, HubError> {
        let required = class.is_some_and(|c| self.policy.rate_limited.contains(&c));
        let registration = class == Some(RateClass::Registration);
        match admission {
            Admission::Peer => Ok(None),
            // A registration that presents a registration token spends it even where
            // registration is free: at an invitation-only provider that is its admission.
            Admission::Client(Some(t)) if registration || required => {
                if (t.purpose == Purpose::Registration) != registration {
                    return Err(HubError::Token(TokenError::Invalid(if registration {
                        "a registration needs a registration token"
                    } else {
                        "a registration token pays for a registration only"
                    })));
                }
                Ok(Some(t.clone()))
            }
            Admission::Client(_) if !required => Ok(None),
            Admission::Client(_) => Err(HubError::Token(TokenError::Required)),
        }
    }

    /// Records `token` as spent inside `txn`, refusing one that already is. The caller holds
    /// the token's nonce lock, so two requests with one token cannot both pass.
    pub fn spend(txn: &mut Txn<'_>, token: &VerifiedToken) -> Result<(), HubError> {
        let key = token.spent_key();
        if txn.get(Cf::PpSpent, &key)?.is_some() {
            return Err(HubError::Token(TokenError::Spent));
        }
        txn.put(Cf::PpSpent, key, Vec::new());
        Ok(())
    }

    /// Spends `token` on its own, for a request that was refused after admission: a refused
    /// request costs its token, so one token cannot buy unlimited expensive validations.
    pub fn burn(store: &dyn Store, token: &VerifiedToken) -> Result<(), HubError> {
        let mut txn = Txn::new(store);
        txn.put(Cf::PpSpent, token.spent_key(), Vec::new());
        txn.commit()?;
        Ok(())
    }

    /// `WWW-Authenticate` challenges for the issuing keys (one per token type).
    pub fn challenges(&self, now_ms: u64) -> Vec<String> {
        let Some(k) = self.keys.redeeming(secs(now_ms)).into_iter().next() else {
            return Vec::new();
        };
        // The standard type (2, publicly verifiable) first, then ours, then one grease
        // challenge of a reserved type (RFC 9577), so clients must skip what they do not know.
        let mut out: Vec<String> = [
            (TYPE_PUBLIC, &k.rsa_spki),
            (TYPE_AMORTIZED, &k.voprf_public),
        ]
        .into_iter()
        .filter_map(|(t, key)| {
            let ch = challenge(&self.domain, t).ok()?;
            www_authenticate(&ch, key).ok()
        })
        .collect();
        let mut random = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        let grease = GREASE_TYPES[usize::from(random[0]) % GREASE_TYPES.len()];
        out.push(grease_www_authenticate(grease, &random));
        out
    }

    /// The registration issuer's directory: its type 2 keys that redeem now, newest first.
    pub fn registration_directory(
        &self,
        store: &dyn Store,
        now_ms: u64,
    ) -> Result<IssuerDirectory, HubError> {
        self.registration.current(store, secs(now_ms))?;
        let schedule = self.registration.schedule();
        let token_keys = self
            .registration
            .redeeming(secs(now_ms))
            .into_iter()
            .map(|k| DirectoryKey {
                token_type: TYPE_PUBLIC,
                token_key: encode_b64url(&k.rsa_spki),
                not_before: schedule.start_of(k.epoch),
            })
            .collect();
        Ok(IssuerDirectory {
            issuer_request_uri: REGISTRATION_REQUEST_PATH.to_owned(),
            token_keys,
        })
    }

    /// The issuer directory: every key that redeems now, newest (the issuing one) first.
    pub fn directory(&self, store: &dyn Store, now_ms: u64) -> Result<IssuerDirectory, HubError> {
        self.keys.current(store, secs(now_ms))?;
        let schedule = self.keys.schedule();
        let mut token_keys = Vec::new();
        for k in self.keys.redeeming(secs(now_ms)) {
            let not_before = schedule.start_of(k.epoch);
            token_keys.push(DirectoryKey {
                token_type: TYPE_AMORTIZED,
                token_key: encode_b64url(&k.voprf_public),
                not_before,
            });
            token_keys.push(DirectoryKey {
                token_type: TYPE_PUBLIC,
                token_key: encode_b64url(&k.rsa_spki),
                not_before,
            });
        }
        Ok(IssuerDirectory {
            issuer_request_uri: ISSUER_REQUEST_PATH.to_owned(),
            token_keys,
        })
    }
}
