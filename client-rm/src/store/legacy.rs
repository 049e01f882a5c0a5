//! The file format before the SQLite store: one `client.json` with the whole state and the
//! OpenMLS key store as hex, rewritten on every operation. Read once, to migrate.

use crate::error::ClientError;
use crate::provider::MlsStore;
use crate::state::ClientState;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use zeroize::Zeroizing;

/// Name of the old state file in the client directory.
pub const FILE: &str = "client.json";

#[derive(Serialize, Deserialize)]
struct OnDisk {
    state: ClientState,
    mls: Vec<(String, String)>,
}

/// Reads `dir/client.json`: the state and the OpenMLS entries.
pub fn load(dir: &Path) -> Result<(ClientState, MlsStore), ClientError> {
    let path = dir.join(FILE);
    let text = Zeroizing::new(
        std::fs::read(&path)
            .map_err(|e| ClientError::State(format!("reading {}: {e}", path.display())))?,
    );
    let disk: OnDisk = serde_json::from_slice(&text)
        .map_err(|e| ClientError::State(format!("{}: {e}", path.display())))?;
    let mut mls = HashMap::with_capacity(disk.mls.len());
    for (k, v) in disk.mls {
        mls.insert(crate::state::unhex(&k)?, crate::state::unhex(&v)?);
    }
    Ok((disk.state, mls))
}

/// Writes `dir/client.json` as the old client did: for the migration tests, which need a
/// directory exactly as an old version left it. Nothing else writes this format any more.
#[doc(hidden)]
pub fn write(dir: &Path, state: &ClientState, mls: &MlsStore) -> Result<(), ClientError> {
    let mut entries: Vec<(String, String)> = mls
        .iter()
        .map(|(k, v)| (hex::encode(k), hex::encode(v)))
        .collect();
    entries.sort();
    let disk = OnDisk {
        state: state.clone(),
        mls: entries,
    };
    let text =
        Zeroizing::new(serde_json::to_vec(&disk).map_err(|e| ClientError::State(e.to_string()))?);
    std::fs::create_dir_all(dir).map_err(|e| ClientError::State(e.to_string()))?;
    std::fs::write(dir.join(FILE), &*text).map_err(|e| ClientError::State(e.to_string()))
}
