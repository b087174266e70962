//! Prune's marks (`marks/<random>`): packs that no snapshot reached when prune looked, and
//! when it looked. Writers read them first and treat every blob in a marked pack as absent
//! (they store it again), so a writer that starts after a mark never comes to depend on a
//! marked pack; prune deletes a marked pack only at a later run, after the grace period, if
//! no snapshot reaches it then.
//!
//! It must never be read after the index (see `write`: marks first, then the index listing,
//! so a pack deleted after the listing is always still marked).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::id::Name;
use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mark {
    /// When prune found these packs unreferenced (seconds since the epoch, UTC).
    pub time: i64,
    pub packs: Vec<String>,
}

pub fn key(prefix: &str, name: &Name) -> String {
    format!("{prefix}marks/{}", name.hex())
}

/// Every mark, with its key.
pub fn read_all(store: &dyn Store, prefix: &str) -> Result<Vec<(String, Mark)>> {
    let mut out = Vec::new();
    for o in store.list(&format!("{prefix}marks/"))? {
        let Some(bytes) = store.get(&o.key)? else { continue };
        let m: Mark = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
            what: store.url(&o.key),
            reason: format!("is not a prune mark: {e}; remove it by hand if it is not cpbackup's"),
        })?;
        out.push((o.key, m));
    }
    Ok(out)
}

/// The packs marked, whatever the time.
pub fn marked(store: &dyn Store, prefix: &str) -> Result<HashSet<Name>> {
    let mut set = HashSet::new();
    for (_, m) in read_all(store, prefix)? {
        set.extend(m.packs.iter().filter_map(|p| Name::parse(p)));
    }
    Ok(set)
}

pub fn write(store: &dyn Store, prefix: &str, mark: &Mark) -> Result<String> {
    let k = key(prefix, &Name::random());
    let body = serde_json::to_vec(mark).map_err(|e| Error::internal(format!("mark: {e}")))?;
    store.put(&k, &body)?;
    Ok(k)
}
