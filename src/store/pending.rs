//! Multipart uploads in progress, remembered on disk so that an agent killed mid-upload can
//! abort what it started on its next start. OSS offers no ListMultipartUploads through its S3
//! API, so the agent cannot ask the store what it left behind: it has to remember.
//!
//! Owns the state directory and its records: one JSON file per upload (bucket, key, upload id,
//! endpoint, the process that owns it), written to a temporary name and renamed into place.
//! The uploading process holds an exclusive `flock` on its record for as long as the upload
//! runs: the kernel drops it when the process dies however it dies, so "the lock can be taken"
//! is exactly "the uploader is gone" (no pid reuse, no clocks; it works under qemu-user too).
//! A record must never hold a credential: it says where the upload is, never how to sign for it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::sys;

/// The state directory on a device (the agent's own directory on /data).
pub const DEVICE_STATE_DIR: &str = "/data/cpbackup/state";

/// One multipart upload this agent started and has not yet completed or aborted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// "OSS", "OBS" or "S3".
    pub scheme: String,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    /// The endpoint as it was given (`--endpoint`), to reach the same store again.
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// The process that runs the upload (for people reading the record; liveness is the lock),
    /// and its start time in clock ticks since boot.
    pub pid: u32,
    pub pid_start: u64,
    pub started: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state directory: the one given (`--state-dir`, `CPBACKUP_STATE_DIR`), else
    /// /data/cpbackup/state when this is a device (it has a /data) and it is writable, else a
    /// per-user directory (`$XDG_STATE_HOME/cpbackup`, `~/.local/state/cpbackup`), else one
    /// under the temp dir.
    pub fn resolve(given: Option<&Path>) -> StateDir {
        if let Some(d) = given {
            return StateDir { dir: d.to_path_buf() };
        }
        let mut candidates = Vec::new();
        if Path::new("/data").is_dir() {
            candidates.push(PathBuf::from(DEVICE_STATE_DIR));
        }
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
            candidates.push(PathBuf::from(x).join("cpbackup"));
        }
        if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            candidates.push(PathBuf::from(h).join(".local/state/cpbackup"));
        }
        let (uid, _) = sys::ids();
        let tmp = std::env::temp_dir().join(format!("cpbackup-state-{uid}"));
        for c in &candidates {
            if writable(c) {
                return StateDir { dir: c.clone() };
            }
        }
        StateDir { dir: tmp }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Remember an upload; returns the record's file, to remove once the upload is over.
    pub fn save(&self, rec: &Record) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        // The agent's own: 0700 and 0600, like the daemon's journal.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .ctx(|| format!("creating the state directory {}", self.dir.display()))?;
        let name = format!("upload-{}-{}.json", rec.pid, crate::manifest::random_id(12));
        let fin = self.dir.join(&name);
        let body = serde_json::to_vec_pretty(rec).unwrap_or_default();
        let record = sys::Replacement::create(&fin, 0o600)?;
        // Locked before it is visible under its final name: no other agent can ever see this
        // record unlocked while the upload runs.
        if !record.try_lock().ctx(|| format!("locking the new record {name}"))? {
            return Err(crate::error::Error::internal(format!("the new record {name} was locked by another")));
        }
        let f = record.commit(&body)?;
        held().insert(fin.clone(), f);
        Ok(fin)
    }

    /// Records whose uploader is no longer running: the uploads a killed agent left behind.
    /// Unreadable files are skipped with a warning (and left for a person to look at).
    pub fn stale(&self) -> Vec<(PathBuf, Record)> {
        let Ok(rd) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let path = ent.path();
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with("upload-") || !name.ends_with(".json") {
                continue;
            }
            let rec: Record = match fs::read(&path).map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!("ignoring unreadable upload record {}: {e}", path.display());
                    continue;
                }
                Err(_) => continue,
            };
            if held().contains_key(&path) {
                continue; // ours, running in this process
            }
            // Taking the lock means its owner is gone; keep holding it while the caller aborts
            // the upload, so two cleaners never race on one record.
            let Ok(f) = fs::File::open(&path) else { continue };
            if sys::try_lock(&f).unwrap_or(false) {
                held().insert(path.clone(), f);
                out.push((path, rec));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Forget an upload (it completed, or it was aborted): the record goes, then its lock.
pub fn remove(path: &Path) {
    let lock = held().remove(path);
    let removed = fs::remove_file(path);
    drop(lock);
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("could not remove upload record {}: {e}", path.display());
        }
    }
}

fn writable(dir: &Path) -> bool {
    if fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// This process and its start time, for a new record.
pub fn me() -> (u32, u64) {
    let pid = std::process::id();
    (pid, start_time(pid).unwrap_or(0))
}

/// The record files this process holds locked: its own uploads, and stale ones it is cleaning.
fn held() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, fs::File>> {
    static HELD: Mutex<BTreeMap<PathBuf, fs::File>> = Mutex::new(BTreeMap::new());
    // A poisoned lock still holds valid files; carry on with them.
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3…; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, pid_start: u64) -> Record {
        Record {
            scheme: "S3".into(),
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "garage".into(),
            path_style: true,
            pid,
            pid_start,
            started: "2024-05-20 10:00:00".into(),
        }
    }

    #[test]
    fn records_round_trip_and_only_unlocked_ones_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::resolve(Some(dir.path()));
        let (pid, start) = me();
        assert!(start > 0);
        let mine = s.save(&rec(pid, start)).unwrap();
        // What a killed agent leaves: a record nobody holds locked.
        let dead = dir.path().join("upload-4242-dead.json");
        fs::write(&dead, serde_json::to_vec(&rec(4242, 1)).unwrap()).unwrap();
        // A record another live process holds locked.
        let live = dir.path().join("upload-4343-live.json");
        fs::write(&live, serde_json::to_vec(&rec(4343, 1)).unwrap()).unwrap();
        // `-o`: the lock stays with flock(1) itself, not with the sleep it runs.
        let mut holder = std::process::Command::new("flock")
            .arg("-o")
            .arg(&live)
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1) from util-linux");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::File::open(&live).map(|f| sys::try_lock(&f).unwrap()).unwrap_or(false) {
            // Not held yet (the child is starting); our probe lock went with the file.
            assert!(std::time::Instant::now() < deadline, "flock never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let stale = s.stale();
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].0, dead);
        assert_eq!(stale[0].1, rec(4242, 1));
        // While this process cleans it, nobody else can take it.
        assert!(!sys::try_lock(&fs::File::open(&dead).unwrap()).unwrap());
        remove(&dead);
        remove(&mine);
        // The holder is gone: its record is stale now. (Its child may hold a copy of the
        // locked descriptor a moment longer, between fork and flock(1)'s close before exec,
        // when the machine is loaded: ask again until then. A record `stale` returns stays
        // held by this process, so the first answer with it is the one to check.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stale = loop {
            let stale = s.stale();
            if !stale.is_empty() || std::time::Instant::now() > deadline {
                break stale;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].0, live);
        remove(&live);
        assert!(s.stale().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "no temp files left");
    }
}
