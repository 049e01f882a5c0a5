//! mimi-client-rm: the client side of the reduced-metadata MIMI hub.
//!
//! A [`Client`] holds every key the hub must not have — MLS secrets, group EAR keys, the queue
//! ratchet, AddPackage keys — persists them in its own directory so it can restart and carry on,
//! and drives the hub over HTTP: QS records, AddPackages, groups, messages.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
pub mod connections;
mod contact;
mod error;
mod identity;
mod live;
mod prepared;
mod provider;
mod state;
mod store;
pub mod tokens;
mod transport;

#[cfg(feature = "adversary")]
pub use client::Tamper;
pub use client::{
    ADD_PACKAGE_DOMAIN, Client, Event, Events, GroupHandle, IncomingConnection, ListenStats,
    Listening, MAX_PAST_EPOCHS, MemberIdentity, PendingDevice, RegisterOptions, seal_offer,
};
pub use connections::{ConnectionOptions, ConnectionPolicy, DEFAULT_REQUEST_TIMEOUT, Scope};
pub use contact::ContactCard;
pub use error::ClientError;
pub use prepared::PreparedRequest;
pub use store::seal::KdfParams;
pub use store::{StoreOptions, WriteStats};
pub use tokens::Wallet;
pub use transport::{Recorder, Transport, TransportOptions, envelope};
