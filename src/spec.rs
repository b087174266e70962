//! What a user (command line, later the HTTP API and the journal) asks for: the serde types of
//! each operation. Plain data: no I/O, no validation beyond what serde does (the operations
//! check their own input and name what is wrong).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::Format;
use crate::crypt::{Opening, Sealing};
use crate::manifest::Identity;
use crate::store::sse::Sse;

/// How to reach object storage. Credentials are not here: they come from the environment or
/// the SDK's config files, so they can never be journaled or echoed. The one secret here, an
/// SSE-C key, is never serialized and never shown by `Debug` (see `store::sse`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct StoreOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub parts_in_flight: usize,
    /// Where in-progress multipart uploads are recorded (`--state-dir`); `None`: the default.
    pub state_dir: Option<PathBuf>,
    /// Server-side encryption of the archive (`--sse`, `--sse-kms-key-id`, `--sse-c-key-file`).
    pub sse: Sse,
    /// `--limit-rate`: bytes per second for the archive's transfer, all its parts or ranges
    /// in flight together; `None`: as fast as it goes.
    pub limit_rate: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            endpoint: None,
            region: None,
            path_style: false,
            parts_in_flight: 4,
            state_dir: None,
            sse: Sse::default(),
            limit_rate: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportSpec {
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// ECP's BackupAll: the whole of /data but the agent's own and transient files.
    pub all: bool,
    pub to: String,
    pub format: Option<Format>,
    pub root: PathBuf,
    /// ECP's BackupFileName, used when `to` is a folder.
    pub name: Option<String>,
    pub description: String,
    pub identity: Identity,
    pub store: StoreOptions,
    /// The BackupFileId to record (the daemon answers with it before the backup starts);
    /// a new one when absent.
    pub backup_file_id: Option<String>,
    /// A snapshot reads every file, whatever the metadata cache says.
    pub rehash: bool,
    /// Who the archive is sealed for (nobody: stored plain).
    pub sealing: Sealing,
    /// A sealed repository's id key (`--id-key-file`): in memory only, never journaled.
    #[serde(skip)]
    pub id_key: Option<crate::repo::seal::IdKey>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportSpec {
    pub from: String,
    pub root: PathBuf,
    pub restore_xattrs: bool,
    pub store: StoreOptions,
    /// Only these device paths (and what is under them); all when empty.
    pub includes: Vec<String>,
    /// The snapshot (or archive) by its BackupFileId, when `from` is a folder.
    pub backup_file_id: Option<String>,
    /// Keys that open a sealed archive: in memory only, never journaled.
    #[serde(skip)]
    pub opening: Opening,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifySpec {
    pub from: String,
    pub store: StoreOptions,
    pub backup_file_id: Option<String>,
    /// A snapshot's chunks are downloaded and hashed, not only found.
    pub read_data: bool,
    #[serde(skip)]
    pub opening: Opening,
}

/// `ls`: the entries of a snapshot or an archive.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LsSpec {
    pub from: String,
    pub store: StoreOptions,
    pub backup_file_id: Option<String>,
    pub includes: Vec<String>,
    /// Keys that open a sealed archive.
    #[serde(skip)]
    pub opening: Opening,
}

/// ECP BackupApp: chosen apps (APKs, data, cache) into one `.ab`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupAppSpec {
    /// Package names (ECP SourceAppList).
    pub apps: Vec<String>,
    pub to: String,
    pub root: PathBuf,
    pub name: Option<String>,
    pub description: String,
    /// Leave the apps running (no `am force-stop`).
    pub no_stop: bool,
    /// Leave `cache` out.
    pub no_cache: bool,
    /// The Android user whose apps are backed up (0, the owner, by default).
    pub user: u32,
    pub identity: Identity,
    pub store: StoreOptions,
    /// The BackupFileId to record (the daemon answers with it before the backup starts);
    /// a new one when absent.
    pub backup_file_id: Option<String>,
    /// Who the `.ab` is sealed for: age recipients (`x.ab.age`), or a passphrase (Android's
    /// own AES-256 encryption, which `adb restore` opens).
    pub sealing: Sealing,
}

/// ECP RecoverApp: reinstall apps and their data from an `.ab`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecoverAppSpec {
    pub from: String,
    /// Only these packages (all in the archive when empty).
    pub apps: Vec<String>,
    /// Install even onto an older Android or a phone without the app's ABI.
    pub force: bool,
    /// The Android user the apps are recovered into (0, the owner, by default).
    pub user: u32,
    pub root: PathBuf,
    pub store: StoreOptions,
    #[serde(skip)]
    pub opening: Opening,
}

/// Where a backup goes and what its record says: the part every backup request shares,
/// whoever makes it (the command line, an ECP or CPH request, a schedule). Each backup spec is
/// built from it in one place (`ExportSpec::new`, `BackupAppSpec::new`).
#[derive(Debug, Clone, Default)]
pub struct Destination {
    pub to: String,
    /// The archive's name when `to` is a folder.
    pub name: Option<String>,
    pub description: String,
    pub root: PathBuf,
    pub identity: Identity,
    pub store: StoreOptions,
    /// The BackupFileId to record; a new one when absent.
    pub backup_file_id: Option<String>,
    /// Whom the archive is sealed for (none: not sealed).
    pub sealing: Sealing,
}

impl ExportSpec {
    pub fn new(dest: Destination, includes: Vec<String>, excludes: Vec<String>, all: bool) -> ExportSpec {
        let Destination { to, name, description, root, identity, store, backup_file_id, sealing } = dest;
        ExportSpec {
            includes,
            excludes,
            all,
            to,
            root,
            name,
            description,
            identity,
            store,
            backup_file_id,
            sealing,
            ..Default::default()
        }
    }
}

impl BackupAppSpec {
    pub fn new(dest: Destination, apps: Vec<String>) -> BackupAppSpec {
        let Destination { to, name, description, root, identity, store, backup_file_id, sealing } = dest;
        BackupAppSpec {
            apps,
            to,
            root,
            name,
            description,
            identity,
            store,
            backup_file_id,
            sealing,
            ..Default::default()
        }
    }
}
/// `root()` for the specs that name one (`--root`).
macro_rules! with_root {
    ($($spec:ty),*) => {$(
        impl $spec {
            /// The directory that stands for the phone's `/` (`/` itself when none was given).
            pub fn root(&self) -> &Path {
                if self.root.as_os_str().is_empty() {
                    Path::new("/")
                } else {
                    &self.root
                }
            }
        }
    )*};
}

with_root!(ExportSpec, ImportSpec, BackupAppSpec, RecoverAppSpec);
