//! cpbackup: the backup agent for Android cloud phones.
//!
//! Two data paths, each a straight line:
//!
//! ```text
//! backup:  select (walk + globs) -> archive (tar / .ab) -> compress (zstd | zlib) -> hash -> store
//!          manifest: BACKUPING first, AVAILABLE last
//! restore: store -> hash -> decompress -> unpack into staging -> verify -> move into place
//! ```
//!
//! - [`select`]: which device paths a backup takes (CPH rules, globs, the walk inside `--root`).
//! - [`archive`]: tar writing and safe unpacking; `.ab` container.
//! - [`compress`]: zstd and zlib codecs.
//! - [`crypt`]: sealing backups for their owner (age; Android's encrypted `.ab`), opening them with keys.
//! - [`digest`]: SHA-256 and byte counts of the stored archive.
//! - [`store`]: where archives live (local files; object stores behind the `Store` trait).
//! - [`pipe`]: bounded bridges between stages on different threads.
//! - [`priority`]: the CPU and I/O priority of a task's threads (a good neighbour on the phone).
//! - [`sys`]: the file-system primitives (atomic replace, flushes, locks, free space, O_DIRECT); the crate's only `unsafe`.
//! - [`manifest`]: the backup-file record beside each archive.
//! - [`catalog`]: `list` and `delete` over the manifests in a bucket or folder (DescribeBackupFiles).
//! - [`keep`]: which backups a retention policy keeps (restic's `forget` semantics).
//! - [`backup`] / [`restore`]: the two data paths.
//! - [`net`]: DNS and TLS roots for a static binary on a phone; the one HTTP client.
//! - [`android`]: the device's command line (getprop, pm, am, restorecon).
//! - [`apps`]: per-package plans of app backups and recoveries (`.ab`, BackupApp / RecoverApp).
//! - [`daemon`]: the agent as an HTTP service: vendor APIs, task queue, journal, callbacks.
//! - [`demo`]: the built-in demo phone root behind `cpbackup demo`.
//! - [`secret`]: secret bytes that never show themselves, and the files they are read from.
//! - [`spec`], [`progress`], [`version`], [`error`]: what is asked, how far it got, what built it, what went wrong.

pub mod android;
pub mod apps;
pub mod archive;
pub mod backup;
pub mod catalog;
pub mod compress;
pub mod crypt;
pub mod daemon;
pub mod demo;
pub mod digest;
pub mod error;
pub mod keep;
pub mod manifest;
pub mod net;
pub mod pipe;
pub mod priority;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod secret;
pub mod select;
pub mod spec;
pub mod store;
pub mod sys;
pub mod version;

pub use error::{Error, Result};
