//! `config.json`: what every writer of a repository must agree on (format version, chunker
//! parameters, how chunk ids are made). Made on first use and never changed.
//!
//! Two phones may make it at once. Without encryption the config is the same bytes whoever
//! writes it (nothing random in it), so a race ends with one config whatever the order; with
//! encryption (random wrapped keys) a writer re-reads what is there after writing and adopts
//! it. It must never overwrite a config that says something else.

use serde::{Deserialize, Serialize};

use super::chunker::Params;
use crate::error::{Error, Result};
use crate::store::Store;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    pub version: u32,
    /// "sha256", or "hmac-sha256" in an encrypted repository.
    pub ids: String,
    pub chunker: Params,
    pub tree_chunker: Params,
    /// A sealed repository: ids are HMAC-keyed, blobs and index objects sealed (see `seal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Sealed {
    /// A one-way value of the fleet's id key: a wrong key is told from the right one.
    pub id_key_check: String,
}

impl Config {
    /// A plain repository's config, or with `id_key_check` a sealed one's.
    pub fn new(id_key_check: Option<String>) -> Config {
        Config {
            version: VERSION,
            ids: if id_key_check.is_some() { "hmac-sha256" } else { "sha256" }.into(),
            chunker: Params::FILES,
            tree_chunker: Params::TREES,
            sealed: id_key_check.map(|c| Sealed { id_key_check: c }),
        }
    }

    fn check(&self, what: &str) -> Result<()> {
        let bad = |why: String| Error::Manifest { what: what.to_string(), reason: why };
        if self.version != VERSION {
            return Err(bad(format!(
                "is a repository of format version {}; this cpbackup reads version {VERSION}: use a newer cpbackup",
                self.version
            )));
        }
        if self.ids != if self.sealed.is_some() { "hmac-sha256" } else { "sha256" } {
            return Err(bad(format!("makes chunk ids with {:?}, which this cpbackup does not know", self.ids)));
        }
        if !self.chunker.check() || !self.tree_chunker.check() {
            return Err(bad("has chunker parameters out of range".into()));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(None)
    }
}

pub fn key(prefix: &str) -> String {
    format!("{prefix}config.json")
}

/// The repository's config, `None` when the folder holds none.
pub fn read(store: &dyn Store, prefix: &str) -> Result<Option<Config>> {
    let k = key(prefix);
    let Some(bytes) = store.get(&k)? else { return Ok(None) };
    let c: Config = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
        what: store.url(&k),
        reason: format!("is not a cpbackup repository config: {e}"),
    })?;
    c.check(&store.url(&k))?;
    Ok(Some(c))
}

/// The config, made when the folder has none yet.
pub fn open_or_init(store: &dyn Store, prefix: &str, want: &Config) -> Result<Config> {
    if let Some(c) = read(store, prefix)? {
        return Ok(c);
    }
    let c = want.clone();
    let body = serde_json::to_vec_pretty(&c).map_err(|e| Error::internal(format!("config: {e}")))?;
    store.put(&key(prefix), &body)?;
    // Whatever is there now is the repository's config (another writer may have won).
    read(store, prefix)?.ok_or_else(|| Error::Store {
        what: store.url(&key(prefix)),
        reason: "was written and then not found".into(),
        retryable: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    #[test]
    fn made_once_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(d.path());
        assert_eq!(read(&s, "r/").unwrap(), None);
        let c = open_or_init(&s, "r/", &Config::new(None)).unwrap();
        let first = std::fs::read(d.path().join("r/config.json")).unwrap();
        assert_eq!(open_or_init(&s, "r/", &Config::new(None)).unwrap(), c);
        // A racing writer writes the same bytes.
        assert_eq!(serde_json::to_vec_pretty(&Config::new(None)).unwrap(), first);
        s.put("r/config.json", br#"{"Version": 9, "Ids": "sha256", "Chunker": {"Min": 1, "Avg": 2, "Max": 3}, "TreeChunker": {"Min": 1, "Avg": 2, "Max": 3}}"#).unwrap();
        assert!(read(&s, "r/").unwrap_err().to_string().contains("version 9"));
        s.put("r/config.json", b"not json").unwrap();
        assert!(open_or_init(&s, "r/", &Config::new(None)).is_err(), "never overwritten");
    }
}
