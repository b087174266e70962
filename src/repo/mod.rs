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

pub mod blob;
pub mod cache;
pub mod chunker;
pub mod config;
pub mod files;
pub mod id;
pub mod index;
pub mod pack;
pub mod tree;
