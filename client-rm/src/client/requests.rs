//! Building and signing requests to the AS, the QS and the DS, and retrying unreachable hubs.

use super::{Client, GroupHandle, now_ms};
use crate::error::ClientError;
use crate::state::unhex;
use crate::transport::Transport;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::{DsMode, encode};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;

impl Client {
    /// A DS request for `group` from `sender`, signed by `signer` when given; it carries the
    /// group's EAR key only to an RM hub.
    pub(super) fn ds_request(
        &self,
        group: &[u8],
        ear_key: Option<&EarKey>,
        sender: DsSender,
        operation: DsOperation,
        signer: Option<&SignatureKeyPair>,
    ) -> Result<DsRequest, ClientError> {
        // A baseline hub keeps group state in the clear: the group key never leaves the client.
        let ear_key = ear_key.filter(|_| self.state.mode == DsMode::Rm);
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

    /// What every member request needs: our signer in the group, the group, and its EAR key.
    pub(super) fn member(
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
    pub(super) fn member_request(
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
}

/// Waits a little longer after each failed attempt to reach the hub (20 ms steps, capped).
pub(super) async fn backoff(attempt: u32) {
    let ms = (20 * u64::from(attempt)).min(500);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// An unsigned AS request (registration, AS credentials, connection packages).
pub(super) fn anonymous_as(operation: AsOperation) -> AsRequest {
    AsRequest {
        tbs: AsRequestTbs {
            timestamp_ms: now_ms(),
            nonce: mimi_rm_crypto::ids::random_id(),
            sender: AsSender::Anonymous,
            operation,
        },
        signature: Vec::new().into(),
    }
}

/// An unsigned QS request (the QS key, a contact's AddPackages).
pub(super) fn anonymous_qs(operation: QsOperation) -> QsRequest {
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

/// A QS request signed by `key` (our client or user auth key at the QS).
pub(super) fn signed_qs(
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

/// An AS request signed by our client credential key.
pub(super) fn signed_as(
    key: &SigningKey,
    identity: ClientIdentity,
    operation: AsOperation,
) -> Result<AsRequest, ClientError> {
    let tbs = AsRequestTbs {
        timestamp_ms: now_ms(),
        nonce: mimi_rm_crypto::ids::random_id(),
        sender: AsSender::Client(identity),
        operation,
    };
    let bytes = encode(&tbs).map_err(|e| ClientError::State(e.to_string()))?;
    Ok(AsRequest {
        signature: key.sign(AS_REQUEST_SIGNATURE_LABEL, &bytes).into(),
        tbs,
    })
}

/// The QS's public key, which our queue references are sealed to.
pub(super) async fn qs_encryption_key(transport: &Transport) -> Result<Vec<u8>, ClientError> {
    match transport
        .qs(&anonymous_qs(QsOperation::EncryptionKey))
        .await?
    {
        QsResponse::EncryptionKey(k) => Ok(k.as_slice().to_vec()),
        _ => Err(ClientError::Unexpected("expected the QS key")),
    }
}
