//! The repository format: incremental, deduplicated snapshots that a whole fleet of phones
//! writes into one folder of a bucket (or a local folder) without locks.
//!
//! ```text
//! config.json            format version, chunker parameters, id mode (written once, if absent)
//! data/XX/<random>       packs of ~16 MiB: compressed blobs, their own index at the end
//! index/<random>         index objects: blob id -> pack, offset, length
//! marks/<random>         prune's marks: packs no snapshot reached, and when
//! NAME.manifest.json     snapshot records (Format "repo"), beside archive manifests
//! ```
//!
//! Everything stored is immutable; packs and indexes get random names, so two writers never
//! write the same key. A snapshot's record is written last: it is the commit point, and readers
//! trust only what a record reaches. See the README's "Snapshots" section for the prune rule.
//!
//! - [`id`]: chunk ids (SHA-256, or HMAC when encrypted) and random names.
//! - [`chunker`]: content-defined cuts (FastCDC).
//! - [`blob`]: one chunk compressed or stored.
//! - [`pack`]: the pack layout and the writer that fills one.
//! - [`index`]: index objects.
//! - [`cache`]: the local index cache (sorted runs in the state directory).

//! - [`tree`]: per-directory trees.
//! - [`config`]: the repository's `config.json`.
//! - [`files`]: the metadata cache (unchanged files are not read).
//! - [`marks`]: prune's marks.
//! - [`counted`]: a store that counts requests and bytes.
//! - [`write`]: writing a snapshot; [`read`]: reading one back (restore, ls, verify).
//! - [`ops`]: export, import, ls and verify of snapshots as the command line runs them.
//! - [`forget`] (records by a keep policy) and [`prune`] (unreferenced packs, two phases).

pub mod blob;
pub mod cache;
pub mod chunker;
pub mod config;
pub mod counted;
pub mod files;
pub mod forget;
pub mod id;
pub mod index;
pub mod marks;
pub mod ops;
pub mod pack;
pub mod prune;
pub mod read;
pub mod tree;
pub mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::Store;

/// An open repository: where it is and what its config says.
pub struct Repo<'a> {
    pub store: &'a dyn Store,
    /// The folder's key prefix: empty or ending in `/`.
    pub prefix: String,
    pub config: config::Config,
    pub hasher: id::Hasher,
}

impl<'a> Repo<'a> {
    /// The repository in `prefix`, made when the folder holds none.
    pub fn open_or_init(store: &'a dyn Store, prefix: &str) -> Result<Repo<'a>> {
        let prefix = folder(prefix);
        let config = config::open_or_init(store, &prefix)?;
        Ok(Repo { store, prefix, config, hasher: id::Hasher::Sha256 })
    }

    /// The repository in `prefix`; an error when there is none.
    pub fn open(store: &'a dyn Store, prefix: &str) -> Result<Repo<'a>> {
        let prefix = folder(prefix);
        let config = config::read(store, &prefix)?.ok_or_else(|| {
            Error::usage(format!(
                "{} is not a cpbackup repository (no config.json): give the folder a snapshot was exported to",
                store.url(&prefix)
            ))
        })?;
        Ok(Repo { store, prefix, config, hasher: id::Hasher::Sha256 })
    }
}

/// A folder key: empty, or ending in `/`.
pub fn folder(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// This repository's directory in the state dir: named from its address, so every run on
/// this phone against the same folder shares it.
pub fn cache_dir(state: &Path, store: &dyn Store, prefix: &str) -> PathBuf {
    let h = Sha256::digest(store.url(&folder(prefix)).as_bytes());
    state.join("repo").join(hex::encode(&h[..12]))
}
