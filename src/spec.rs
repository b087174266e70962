//! What a user (command line, later the HTTP API and the journal) asks for: the serde types of
//! each operation. Plain data: no I/O, no validation beyond what serde does (the operations
//! check their own input and name what is wrong).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::archive::Format;
use crate::manifest::Identity;

/// How to reach object storage. Secrets are not here: they come from the environment or the
/// SDK's config files, so they can never be journaled or echoed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct StoreOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub parts_in_flight: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { endpoint: None, region: None, path_style: false, parts_in_flight: 4 }
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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportSpec {
    pub from: String,
    pub root: PathBuf,
    pub restore_xattrs: bool,
    pub store: StoreOptions,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifySpec {
    pub from: String,
    pub store: StoreOptions,
}
