//! OpenMLS provider whose key store lives in memory and is committed to the client store.
//!
//! OpenMLS writes its entries into a [`MemoryStorage`] while it processes; after each operation
//! the client store writes the entries that changed in the operation's transaction
//! ([`crate::store::ClientStore::commit`]). The in-memory entries hold private keys: they are
//! wiped when the provider is dropped.

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use std::collections::HashMap;

/// OpenMLS key-store entries (key → value).
pub type MlsStore = HashMap<Vec<u8>, Vec<u8>>;

/// RustCrypto plus an in-memory key store the client store persists.
#[derive(Default)]
pub struct ClientProvider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for ClientProvider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

impl ClientProvider {
    /// Restores from the entries the client store loaded.
    pub fn from_entries(values: MlsStore) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: std::sync::RwLock::new(values),
            },
        }
    }

    /// Runs `f` on the key-store entries (read-locked, not copied).
    pub fn with_entries<T>(&self, f: impl FnOnce(&MlsStore) -> T) -> T {
        match self.storage.values.read() {
            Ok(v) => f(&v),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// A copy of every entry, to roll back to when an attempt that writes into the key store
    /// fails (see recovery).
    pub fn snapshot(&self) -> MlsStore {
        self.with_entries(Clone::clone)
    }
}

impl Drop for ClientProvider {
    fn drop(&mut self) {
        let values = match self.storage.values.get_mut() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        for v in values.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}
