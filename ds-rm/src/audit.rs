//! The seized-disk view: every stored record, with what it is, readable by a person.

use crate::store::{Cf, Store, StoreError};
use std::fmt::Write as _;

/// Renders every column family of `store` as text: key, value size and a short value preview.
pub fn render(store: &dyn Store) -> Result<String, StoreError> {
    let mut out = String::new();
    let dump = store.dump()?;
    for cf in Cf::ALL {
        let rows: Vec<_> = dump.iter().filter(|(c, _, _)| *c == cf).collect();
        let _ = writeln!(out, "== {} ({} records)", cf.name(), rows.len());
        for (_, k, v) in rows {
            let preview: String = hex::encode(&v[..v.len().min(16)]);
            let _ = writeln!(
                out,
                "  key {}  value {} bytes  {}…",
                hex::encode(k),
                v.len(),
                preview
            );
        }
    }
    Ok(out)
}
