//! OpenMLS provider whose storage can be saved to and restored from a file.

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use std::collections::HashMap;

/// RustCrypto plus an in-memory key store that [`snapshot`](Self::snapshot) can persist.
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
    /// Restores from a snapshot.
    pub fn from_snapshot(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: std::sync::RwLock::new(values),
            },
        }
    }

    /// All key-store entries.
    pub fn snapshot(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.storage
            .values
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}
