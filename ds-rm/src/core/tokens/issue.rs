//! Token issuance: authenticate the device, count its allowance, sign blindly.
//!
//! The device's identity is used for exactly two checks (is it a current device of ours, has it
//! used up this epoch's allowance) and then dropped: the per-device counters live in memory,
//! keyed by a hash of the device key, and are cleared when the epoch rolls. Nothing about an
//! issuance is written to disk or logged, so no stored record links it to a redemption.

use super::Tokens;
use crate::core::HubError;
use crate::core::replay::ReplayGuard;
use crate::core::{IdentityError, RequestError, TokenError};
use crate::store::Store;
use mimi_rm_crypto::sign::VerifyingKey;
use mimi_rm_protocol::credentials::AsCredentials;
use mimi_rm_protocol::tokens::{
    BATCH_REQUEST_CONTENT_TYPE, BATCH_RESPONSE_CONTENT_TYPE, ISSUANCE_AUTH_LABEL, IssuanceAuth,
    MAX_BATCH, TOKEN_REQUEST_CONTENT_TYPE, TOKEN_RESPONSE_CONTENT_TYPE, TYPE_AMORTIZED,
    TYPE_PUBLIC, decode_b64url,
};
use mimi_rm_protocol::{ErrorCode, decode_exact};
use privacypass::amortized_tokens::AmortizedBatchTokenRequest;
use privacypass::amortized_tokens::server::Server as AmortizedServer;
use privacypass::common::store::PrivateKeyStore;
use privacypass::{TruncatedTokenKeyId, VoprfServer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use voprf::Ristretto255;

/// Length of a type 2 `TokenRequest`: type, truncated key id, 256-byte blinded message.
const PUBLIC_REQUEST_LEN: usize = 2 + 1 + 256;

/// Per-device issuance counts for the current key epoch, in memory only.
#[derive(Default)]
pub struct Allowance {
    counts: Mutex<(u64, HashMap<[u8; 32], u32>)>,
}

impl Allowance {
    /// Reserves `n` tokens for `device` in `epoch`, or refuses with `AllowanceExhausted`.
    fn take(&self, epoch: u64, device: [u8; 32], n: u32, limit: u32) -> Result<(), HubError> {
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (current, counts) = &mut *guard;
        if *current != epoch {
            *current = epoch;
            counts.clear();
        }
        let used = counts.entry(device).or_insert(0);
        if used.saturating_add(n) > limit {
            return Err(HubError::Token(TokenError::AllowanceExhausted {
                used: *used,
                limit,
            }));
        }
        *used += n;
        Ok(())
    }

    /// Returns a reservation whose issuance failed.
    fn give_back(&self, epoch: u64, device: [u8; 32], n: u32) {
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (current, counts) = &mut *guard;
        if *current == epoch
            && let Some(used) = counts.get_mut(&device)
        {
            *used = used.saturating_sub(n);
        }
    }
}

/// What issuance needs besides the request.
pub struct IssueContext<'a> {
    /// The store (AS records, issuer keys).
    pub store: &'a dyn Store,
    /// This provider's AS roots and intermediates.
    pub anchors: &'a AsCredentials,
    /// Freshness and replay of the issuance signature.
    pub replay: &'a ReplayGuard,
    /// Now.
    pub now_ms: u64,
}

/// An issuance response body and its content type.
#[derive(Debug)]
pub struct Issued {
    /// The encoded `TokenResponse` / amortized batch response.
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: &'static str,
    /// Tokens issued.
    pub count: u32,
}

/// The one key the amortized issuer may use, shaped as privacypass's key store.
struct OneKey(VoprfServer<Ristretto255>, TruncatedTokenKeyId);

#[async_trait::async_trait]
impl PrivateKeyStore for OneKey {
    type CS = Ristretto255;
    async fn insert(&self, _: TruncatedTokenKeyId, _: VoprfServer<Ristretto255>) -> bool {
        false
    }
    async fn get(&self, id: &TruncatedTokenKeyId) -> Option<VoprfServer<Ristretto255>> {
        (*id == self.1).then(|| self.0.clone())
    }
    async fn remove(&self, _: &TruncatedTokenKeyId) -> bool {
        false
    }
}

/// Runs a future that never waits (privacypass's async key-store calls over [`OneKey`]).
fn run_ready<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn truncated(id: &[u8; 32]) -> u8 {
    id[31]
}

/// An issuance refusal.
#[derive(Debug)]
pub struct Refused {
    /// What went wrong.
    pub error: HubError,
    /// Whether it is the token request itself that is wrong — its type, key id, length or
    /// content — which RFC 9578 (§5.2, §6.2) answers with 422, rather than the device's
    /// authentication or allowance, which keep their own status.
    pub unprocessable: bool,
}

impl Tokens {
    /// Authenticates the device behind `auth_header` and answers a token request.
    pub fn issue(
        &self,
        ctx: &IssueContext<'_>,
        content_type: Option<&str>,
        auth_header: Option<&str>,
        body: &[u8],
    ) -> Result<Issued, Refused> {
        let device = self
            .authenticate(ctx, auth_header, body)
            .map_err(|error| Refused {
                error,
                unprocessable: false,
            })?;
        self.issue_to(ctx.store, device, content_type, body, ctx.now_ms)
            .map_err(|error| Refused {
                // The allowance and server faults keep their own status.
                unprocessable: !matches!(
                    error.code(),
                    ErrorCode::AllowanceExhausted | ErrorCode::Internal
                ),
                error,
            })
    }

    /// Answers a token request for an already authenticated `device` (its allowance key):
    /// checks the request, charges the allowance and signs. Split out so the signing cost can
    /// be measured on its own.
    pub fn issue_to(
        &self,
        store: &dyn Store,
        device: [u8; 32],
        content_type: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Issued, HubError> {
        let tt = body
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| HubError::malformed("token request", "truncated"))?;
        let expected_ct = match tt {
            TYPE_PUBLIC => TOKEN_REQUEST_CONTENT_TYPE,
            TYPE_AMORTIZED => BATCH_REQUEST_CONTENT_TYPE,
            other => return Err(HubError::Token(TokenError::WrongType(other))),
        };
        if content_type.map(str::trim) != Some(expected_ct) {
            return Err(HubError::Request(RequestError::Invalid(
                "wrong content type for this token type",
            )));
        }
        let keys = self.keys.current(store, now_ms / 1000)?;
        let limit = self.policy.allowance_per_epoch;
        if tt == TYPE_PUBLIC {
            if body.len() != PUBLIC_REQUEST_LEN {
                return Err(HubError::malformed("token request", "wrong length"));
            }
            self.check_issuing_key(body[2], truncated(&keys.rsa_key_id), now_ms)?;
            self.allowance.take(keys.epoch, device, 1, limit)?;
            let signed = keys.rsa.sk.blind_sign(&body[3..]).map_err(|e| {
                self.allowance.give_back(keys.epoch, device, 1);
                HubError::malformed("blinded message", e)
            })?;
            return Ok(Issued {
                body: signed.0,
                content_type: TOKEN_RESPONSE_CONTENT_TYPE,
                count: 1,
            });
        }
        let request: AmortizedBatchTokenRequest<Ristretto255> = <AmortizedBatchTokenRequest<
            Ristretto255,
        > as privacypass::Deserialize>::tls_deserialize_exact(
            body
        )
        .map_err(|e| HubError::malformed("batch token request", e))?;
        let n = request.nr();
        if n == 0 || n > MAX_BATCH {
            return Err(HubError::Request(RequestError::LimitExceeded(
                "batch size must be 1..=100",
            )));
        }
        let own = truncated(&keys.voprf_key_id);
        self.check_issuing_key(request.truncated_token_key_id(), own, now_ms)?;
        let n = n as u32;
        self.allowance.take(keys.epoch, device, n, limit)?;
        let server = AmortizedServer::<Ristretto255>::with_max_batch_size(MAX_BATCH);
        let store = OneKey(keys.voprf.clone(), own);
        let response = run_ready(server.issue_token_response(&store, request))
            .ok_or_else(|| HubError::Bug("issuer future pending".into()))
            .and_then(|r| r.map_err(|e| HubError::malformed("blinded elements", e)))
            .and_then(|r| {
                privacypass::Serialize::tls_serialize_detached(&r)
                    .map_err(|e| HubError::Bug(e.to_string()))
            });
        match response {
            Ok(body) => Ok(Issued {
                body,
                content_type: BATCH_RESPONSE_CONTENT_TYPE,
                count: n,
            }),
            Err(e) => {
                self.allowance.give_back(keys.epoch, device, n);
                Err(e)
            }
        }
    }

    /// A request must name the issuing key; an older one that still redeems is "expired" (the
    /// client should refresh the directory), anything else unknown.
    fn check_issuing_key(&self, requested: u8, issuing: u8, now_ms: u64) -> Result<(), HubError> {
        check_issuing_key(&self.keys, requested, issuing, now_ms)
    }

    /// Answers a registration token request (type 2, one token, from the registration key),
    /// paid as `payment` says. An invitation code is used up in the same batch that the
    /// signature is released with; the hub sees the code here and the unblinded token only at
    /// registration, and cannot link the two.
    pub fn issue_registration(
        &self,
        ctx: &IssueContext<'_>,
        payment: RegistrationPayment<'_>,
        invite_only: bool,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Issued, Refused> {
        let unprocessable = |error: HubError| Refused {
            error,
            unprocessable: true,
        };
        let refused = |error: HubError| Refused {
            error,
            unprocessable: false,
        };
        let tt = body
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| unprocessable(HubError::malformed("token request", "truncated")))?;
        if tt != TYPE_PUBLIC {
            return Err(unprocessable(HubError::Token(TokenError::WrongType(tt))));
        }
        if content_type.map(str::trim) != Some(TOKEN_REQUEST_CONTENT_TYPE) {
            return Err(unprocessable(HubError::Request(RequestError::Invalid(
                "wrong content type for this token type",
            ))));
        }
        if body.len() != PUBLIC_REQUEST_LEN {
            return Err(unprocessable(HubError::malformed(
                "token request",
                "wrong length",
            )));
        }
        let keys = self
            .registration
            .current(ctx.store, ctx.now_ms / 1000)
            .map_err(refused)?;
        check_issuing_key(
            &self.registration,
            body[2],
            truncated(&keys.rsa_key_id),
            ctx.now_ms,
        )
        .map_err(unprocessable)?;
        // The payment: checked (and counted) before signing, released if signing fails.
        let mut invite = None;
        let mut charged = None;
        match payment {
            RegistrationPayment::Invite(code) => {
                let mut txn = crate::store::Txn::new(ctx.store);
                crate::core::auth::use_invite(&mut txn, code.trim().as_bytes()).map_err(refused)?;
                invite = Some(txn);
            }
            RegistrationPayment::Device(auth) => {
                let device = self.authenticate(ctx, Some(auth), body).map_err(refused)?;
                let limit = self.policy.registration_allowance_per_epoch;
                self.registration_allowance
                    .take(keys.epoch, device, 1, limit)
                    .map_err(refused)?;
                charged = Some((&self.registration_allowance, device));
            }
            RegistrationPayment::Address(_) if invite_only => {
                return Err(refused(HubError::Request(RequestError::NotAuthorized(
                    "this provider registers by invitation only",
                ))));
            }
            RegistrationPayment::Address(ip) => {
                let key: [u8; 32] = Sha256::digest(address_prefix(ip)).into();
                let limit = self.policy.registrations_per_address_per_epoch;
                self.address_allowance
                    .take(keys.epoch, key, 1, limit)
                    .map_err(refused)?;
                charged = Some((&self.address_allowance, key));
            }
        }
        let signed = match keys.rsa.sk.blind_sign(&body[3..]) {
            Ok(signed) => signed,
            Err(e) => {
                if let Some((allowance, key)) = charged {
                    allowance.give_back(keys.epoch, key, 1);
                }
                return Err(unprocessable(HubError::malformed("blinded message", e)));
            }
        };
        if let Some(txn) = invite {
            txn.commit().map_err(|e| refused(e.into()))?;
        }
        Ok(Issued {
            body: signed.0,
            content_type: TOKEN_RESPONSE_CONTENT_TYPE,
            count: 1,
        })
    }
}

/// How a registration token is paid for.
#[derive(Debug, Clone, Copy)]
pub enum RegistrationPayment<'a> {
    /// A single-use invitation code from `ds-rm invite` (the `mimi-invite` header).
    Invite(&'a str),
    /// A current device's issuance authentication (the `mimi-issuance-auth` header): it vouches
    /// for someone, from its registration allowance.
    Device(&'a str),
    /// Nothing but the client's address (open registration): a few per address per epoch.
    Address(std::net::IpAddr),
}

/// What the open-registration allowance counts by: an IPv4 address, or the /64 an IPv6
/// address is in (one subscriber gets a whole /64, so counting addresses would not bind).
fn address_prefix(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

/// [`Tokens::check_issuing_key`] against the keys of `issuer`.
fn check_issuing_key(
    issuer: &super::keys::IssuerKeys,
    requested: u8,
    issuing: u8,
    now_ms: u64,
) -> Result<(), HubError> {
    if requested == issuing {
        return Ok(());
    }
    let older = issuer
        .redeeming(now_ms / 1000)
        .iter()
        .any(|k| truncated(&k.rsa_key_id) == requested || truncated(&k.voprf_key_id) == requested);
    Err(if older {
        HubError::Token(TokenError::ExpiredKey)
    } else {
        HubError::Token(TokenError::UnknownKey)
    })
}

impl Tokens {
    /// Verifies the issuance signature and that its credential is a current device of this
    /// provider; returns the in-memory allowance key for the device.
    fn authenticate(
        &self,
        ctx: &IssueContext<'_>,
        auth_header: Option<&str>,
        body: &[u8],
    ) -> Result<[u8; 32], HubError> {
        let encoded = auth_header.ok_or(HubError::Request(RequestError::NotAuthorized(
            "token issuance needs a client credential",
        )))?;
        let bytes = decode_b64url(encoded.trim())
            .ok_or_else(|| HubError::malformed("issuance auth", "not base64url"))?;
        let auth: IssuanceAuth =
            decode_exact(&bytes, 64 * 1024).map_err(|e| HubError::malformed("issuance auth", e))?;
        ctx.replay.check_fresh(auth.timestamp_ms, ctx.now_ms)?;
        let cred = &auth.credential;
        cred.verify_chain(ctx.anchors, ctx.now_ms / 1000)
            .map_err(|e| match e {
                mimi_rm_protocol::credentials::CredentialError::Expired(_) => {
                    HubError::Identity(IdentityError::ExpiredCredential)
                }
                _ => HubError::Request(RequestError::NotAuthorized(
                    "credential not issued by this provider",
                )),
            })?;
        let key = VerifyingKey::from_bytes(cred.tbs.public_key.as_slice()).map_err(|_| {
            HubError::Request(RequestError::NotAuthorized("credential key unusable"))
        })?;
        let signed = IssuanceAuth::signed_bytes(&self.domain, auth.timestamp_ms, body);
        key.verify(ISSUANCE_AUTH_LABEL, &signed, auth.signature.as_slice())
            .map_err(|_| HubError::Request(RequestError::InvalidSignature))?;
        if !crate::core::auth::is_current_client(ctx.store, cred)? {
            return Err(HubError::Request(RequestError::NotAuthorized(
                "not a current device",
            )));
        }
        ctx.replay
            .check_and_record(auth.signature.as_slice(), auth.timestamp_ms, ctx.now_ms)?;
        Ok(Sha256::digest(cred.tbs.public_key.as_slice()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_registration_counts_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_prefix(a), address_prefix(b));
        assert_ne!(address_prefix(a), address_prefix(c));
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_prefix(v4), address_prefix(mapped));
    }

    #[test]
    fn allowance_counts_per_device_and_resets_per_epoch() {
        let a = Allowance::default();
        a.take(1, [1; 32], 3, 4).unwrap();
        assert!(matches!(
            a.take(1, [1; 32], 2, 4),
            Err(HubError::Token(TokenError::AllowanceExhausted {
                used: 3,
                limit: 4
            }))
        ));
        a.take(1, [2; 32], 4, 4).unwrap();
        a.give_back(1, [1; 32], 3);
        a.take(1, [1; 32], 4, 4).unwrap();
        a.take(2, [1; 32], 4, 4).unwrap();
    }
}
