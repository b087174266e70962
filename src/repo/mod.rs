//! The repository format: incremental, deduplicated snapshots that a whole fleet of phones
//! writes into one folder of a bucket (or a local folder) without locks.
//!
//! ```text
//! config.json            format version, chunker parameters, id mode (written once, if absent)
//! data/XX/<random>       packs of ~16 MiB: compressed blobs, their own index at the end
//! index/<random>         index objects: blob id -> pack, offset, length
//! keys/<random>, keys/id-…  a sealed repository's data keys and id key, wrapped with age
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
//! - [`seal`]: a sealed repository's keys; blobs and index objects sealed and opened.

//! - [`tree`]: per-directory trees.
//! - [`config`]: the repository's `config.json`.
//! - [`files`]: the metadata cache (unchanged files are not read).
//! - [`marks`]: prune's marks.
//! - [`counted`]: a store that counts requests and bytes.
//! - [`write`]: writing a snapshot; [`read`]: reading one back (restore, ls, verify).
//! - [`ops`]: export, import, ls and verify of snapshots as the command line runs them.
//! - [`forget`] (records by a keep policy) and [`prune`] (unreferenced packs, two phases).

pub mod ahead;
pub mod blob;
mod buffers;
mod build;
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
pub mod seal;
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
    /// A sealed repository's keys for this run.
    pub keys: Option<seal::Keys>,
}

impl<'a> Repo<'a> {
    /// The repository in `prefix`, made when the folder holds none; with `seal` (an id key and
    /// recipients) a sealed one. A sealed export into a plain repository, or the reverse, or
    /// another fleet's id key, is refused before anything is written.
    pub fn open_or_init(
        store: &'a dyn Store,
        prefix: &str,
        seal: Option<(&seal::IdKey, &crate::crypt::Sealing)>,
    ) -> Result<Repo<'a>> {
        let prefix = folder(prefix);
        let want = config::Config::new(seal.map(|(id, _)| id.check_value()));
        let config = config::open_or_init(store, &prefix, &want)?;
        let shown = store.url(&prefix);
        match (&config.sealed, seal) {
            (None, None) => Ok(Repo { store, prefix, config, hasher: id::Hasher::Sha256, keys: None }),
            (Some(_), None) => Err(Error::usage(format!(
                "{shown} is a sealed repository: export to it with --recipient (or --recipients-file) and \
                 --id-key-file, as its other writers do"
            ))),
            (None, Some(_)) => Err(Error::usage(format!(
                "{shown} holds unsealed snapshots: a sealed export needs a repository of its own (another folder)"
            ))),
            (Some(s), Some((id, sealing))) => {
                if s.id_key_check != id.check_value() {
                    return Err(Error::usage(format!(
                        "--id-key-file is not the id key of the repository {shown}: give the fleet's id key"
                    )));
                }
                let keys = seal::Keys::for_writing(store, &prefix, id, sealing)?;
                Ok(Repo { store, prefix, config, hasher: keys.hasher(), keys: Some(keys) })
            }
        }
    }

    /// The repository in `prefix`; an error when there is none. A sealed one is opened with
    /// `opening` (`made_for`: the recipients a record names, for the error when none fits).
    pub fn open(
        store: &'a dyn Store,
        prefix: &str,
        opening: &crate::crypt::Opening,
        made_for: &[String],
    ) -> Result<Repo<'a>> {
        let prefix = folder(prefix);
        let config = config::read(store, &prefix)?.ok_or_else(|| {
            Error::usage(format!(
                "{} is not a cpbackup repository (no config.json): give the folder a snapshot was exported to",
                store.url(&prefix)
            ))
        })?;
        let keys = match &config.sealed {
            None => None,
            Some(_) if opening.is_empty() => {
                return Err(Error::Key {
                    what: store.url(&prefix),
                    reason: format!(
                        "is a sealed repository{}: pass --identity FILE with its secret key",
                        if made_for.is_empty() { String::new() } else { format!(" (for {})", made_for.join(", ")) }
                    ),
                });
            }
            Some(s) => Some(seal::Keys::for_reading(store, &prefix, &s.id_key_check, opening, made_for)?),
        };
        let hasher = keys.as_ref().map_or(id::Hasher::Sha256, seal::Keys::hasher);
        Ok(Repo { store, prefix, config, hasher, keys })
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
