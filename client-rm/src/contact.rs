//! What a user hands to a contact out of band: the friendship keys.

use crate::error::ClientError;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

const PREFIX: &str = "mimi-contact:";
const MAX_CARD: usize = 4096;

/// A user's friendship keys. Whoever holds the card can fetch the user's AddPackages (token +
/// AddPackage key), read the credentials inside them (credential + wrapper key), and tell the
/// user who invited it (attribution key). The hub sees none of these in a form it can use to
/// link the user to a group.
#[derive(Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ContactCard {
    /// The owner's handle; the invitee checks invitations against its contacts' handles.
    pub handle: VLBytes,
    /// The owner's provider domain (where its AddPackages and AS credentials live).
    pub domain: VLBytes,
    /// Bearer token for AddPackage fetch at the QS.
    pub friendship_token: [u8; 32],
    /// `AddPackageEarKey`: the QS-side encryption of the AddPackages.
    pub add_package_key: [u8; 32],
    /// Friendship `ClientCredentialEarKey`.
    pub credential_key: [u8; 32],
    /// Friendship `SignatureEarKeyWrapperKey`.
    pub wrapper_key: [u8; 32],
    /// `WelcomeAttributionInfoEarKey`.
    pub wai_key: [u8; 32],
}

impl std::fmt::Debug for ContactCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContactCard({}, [keys redacted])", self.handle_str())
    }
}

impl ContactCard {
    /// The handle as text (lossy).
    pub fn handle_str(&self) -> String {
        String::from_utf8_lossy(self.handle.as_slice()).into_owned()
    }

    /// The provider domain as text (lossy).
    pub fn domain_str(&self) -> String {
        String::from_utf8_lossy(self.domain.as_slice()).into_owned()
    }

    /// `mimi-contact:<hex>` text form, for copy and paste.
    pub fn to_text(&self) -> Result<String, ClientError> {
        let bytes =
            mimi_rm_protocol::encode(self).map_err(|e| ClientError::State(e.to_string()))?;
        Ok(format!("{PREFIX}{}", hex::encode(bytes)))
    }

    /// Parses the text form.
    pub fn from_text(s: &str) -> Result<Self, ClientError> {
        let hexpart = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(ClientError::Unexpected(
                "contact card must start with mimi-contact:",
            ))?;
        let b =
            hex::decode(hexpart).map_err(|_| ClientError::Unexpected("contact card is not hex"))?;
        mimi_rm_protocol::decode_exact(&b, MAX_CARD)
            .map_err(|_| ClientError::Unexpected("contact card does not decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_rejects_garbage() {
        let card = ContactCard {
            handle: b"alice".to_vec().into(),
            domain: b"a.test".to_vec().into(),
            friendship_token: [1; 32],
            add_package_key: [2; 32],
            credential_key: [3; 32],
            wrapper_key: [4; 32],
            wai_key: [5; 32],
        };
        let text = card.to_text().unwrap();
        assert_eq!(ContactCard::from_text(&text).unwrap(), card);
        assert!(ContactCard::from_text(&text[..text.len() - 2]).is_err());
        assert!(ContactCard::from_text("mimi-contact:zz").is_err());
        assert!(!format!("{card:?}").contains("0101"));
    }
}
