//! What a user hands to a contact out of band so the contact can add them to groups.

use crate::error::ClientError;

const PREFIX: &str = "mimi-contact:";

/// The friendship token (authorises AddPackage fetch at the QS) and the key the AddPackages are
/// encrypted under. Whoever holds a card can add its owner to groups; the QS sees neither who
/// fetched nor (beyond its pseudonymous user id) whose packages they were.
#[derive(Clone, PartialEq, Eq)]
pub struct ContactCard {
    /// 32-byte bearer token.
    pub friendship_token: [u8; 32],
    /// 32-byte `AddPackageEarKey`.
    pub add_package_key: [u8; 32],
}

impl std::fmt::Debug for ContactCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContactCard([redacted])")
    }
}

impl ContactCard {
    /// `mimi-contact:<hex>` text form, for copy and paste.
    pub fn to_text(&self) -> String {
        let mut b = self.friendship_token.to_vec();
        b.extend_from_slice(&self.add_package_key);
        format!("{PREFIX}{}", hex::encode(b))
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
        if b.len() != 64 {
            return Err(ClientError::Unexpected("contact card has the wrong length"));
        }
        let mut t = [0u8; 32];
        let mut k = [0u8; 32];
        t.copy_from_slice(&b[..32]);
        k.copy_from_slice(&b[32..]);
        Ok(Self {
            friendship_token: t,
            add_package_key: k,
        })
    }
}
