//! Web Push wake-ups (draft-robert-mimi-delivery-service §8.5): this device's push
//! subscription, sealed under its `PushTokenEarKey` before it leaves the device.
//!
//! The QS stores only the sealed form. The key reaches the QS only inside our sealed queue refs,
//! so it can open the subscription while it enqueues a message for us — to send a fixed-size
//! wake-up with no content — and at no other time; a seized disk holds no endpoint and no keys.

use super::Client;
use super::requests::signed_qs;
use crate::error::ClientError;
use crate::state::unhex;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::push::{MAX_ENDPOINT, PUSH_TOKEN_DOMAIN, PushSubscription};
use mimi_rm_protocol::qs::{QsOperation, QsResponse, QsSender};
use mimi_rm_protocol::{DsMode, encode, paths};

impl Client {
    /// Registers this device's Web Push subscription at its QS (replacing any earlier one):
    /// while no live socket of ours is open, a message for us makes the hub push one wake-up
    /// to it. The subscription is sealed here; the hub cannot read it at rest.
    pub async fn set_push_subscription(
        &mut self,
        subscription: &PushSubscription,
    ) -> Result<(), ClientError> {
        check_subscription(subscription)?;
        if self.state.mode == DsMode::Baseline {
            return Err(ClientError::Unsupported(
                "push subscriptions need reduced-metadata mode (baseline refs are plain)",
            ));
        }
        let key = EarKey::from_bytes(&unhex(&self.state.push_key)?)?;
        let plain = encode(subscription).map_err(|e| ClientError::State(e.to_string()))?;
        let sealed = ear::seal(&key, PUSH_TOKEN_DOMAIN, &self.client_id()?, &plain)?;
        self.send_push_token(sealed).await
    }

    /// Removes this device's push subscription: nothing wakes it any more.
    pub async fn clear_push_subscription(&mut self) -> Result<(), ClientError> {
        self.send_push_token(Vec::new()).await
    }

    async fn send_push_token(&mut self, sealed: Vec<u8>) -> Result<(), ClientError> {
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::SetPushToken(sealed.into()),
        )?;
        match self.transport.qs(&req).await? {
            QsResponse::Ok => Ok(()),
            _ => Err(ClientError::Unexpected("expected Ok")),
        }
    }

    /// Our hub's VAPID public key (uncompressed P-256 point): the application server key to
    /// subscribe to a push service with, so that only our hub can push to the subscription.
    pub async fn push_server_key(&self) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{}", self.transport.base(), paths::QS_PUSH_KEY);
        let http = self.transport.http_for(&crate::connections::Scope::Fresh)?;
        let key = crate::transport::get_bytes(&http, &url, "push key").await?;
        if key.len() != 65 || key[0] != 4 {
            return Err(ClientError::Unexpected(
                "push key is not an uncompressed P-256 point",
            ));
        }
        Ok(key)
    }
}

/// What a subscription must look like to be worth storing (RFC 8291 keys, a bounded https or
/// http URL); the hub checks the endpoint again, under its own rules, before every push.
fn check_subscription(s: &PushSubscription) -> Result<(), ClientError> {
    let endpoint = std::str::from_utf8(s.endpoint.as_slice())
        .map_err(|_| ClientError::InvalidInput("push endpoint is not UTF-8".into()))?;
    if endpoint.len() > MAX_ENDPOINT
        || !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
    {
        return Err(ClientError::InvalidInput(
            "push endpoint must be an http(s) URL of at most 2048 bytes".into(),
        ));
    }
    if s.p256dh.as_slice().len() != 65 || s.p256dh.as_slice()[0] != 4 {
        return Err(ClientError::InvalidInput(
            "p256dh must be an uncompressed P-256 point (65 bytes)".into(),
        ));
    }
    if s.auth.as_slice().len() != 16 {
        return Err(ClientError::InvalidInput("auth must be 16 bytes".into()));
    }
    Ok(())
}
