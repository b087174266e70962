//! The daemon's memory across crashes and reboots: one JSON file per task and one per
//! undelivered status event, each written to a temporary name, fsynced and renamed into
//! place, so a reader finds the old version or the new, never half of one. Files are 0600.
//!
//! It never deletes a task record, and deletes an event only once it was delivered.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::task::Task;
use crate::error::{Error, IoContext, Result};
use crate::sys;

/// A status change waiting to be delivered to the control plane.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Event {
    /// `TASKID-SEQ`: the same id on every delivery attempt, so receivers can de-duplicate.
    pub event_id: String,
    pub task_id: String,
    pub seq: u64,
    pub time: String,
    /// "status" or "progress".
    pub kind: String,
    pub url: String,
    /// The task as it was when the event was made.
    pub task: serde_json::Value,
}

impl Default for Event {
    fn default() -> Self {
        Event {
            event_id: String::new(),
            task_id: String::new(),
            seq: 0,
            time: String::new(),
            kind: "status".into(),
            url: String::new(),
            task: serde_json::Value::Null,
        }
    }
}

pub struct Journal {
    tasks: PathBuf,
    outbox: PathBuf,
    next: AtomicU64,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Journal> {
        let tasks = dir.join("tasks");
        let outbox = dir.join("outbox");
        for d in [dir, &tasks, &outbox] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .ctx(|| format!("creating the journal directory {}", d.display()))?;
        }
        let last = list(&outbox)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.split('-').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok(Journal { tasks, outbox, next: AtomicU64::new(last + 1) })
    }

    pub fn save_task(&self, t: &Task) -> Result<()> {
        let body = serde_json::to_vec_pretty(t).map_err(|e| Error::usage(format!("task {}: {e}", t.task_id)))?;
        sys::write_atomic(&self.tasks.join(format!("{}.json", t.task_id)), &body, 0o600)
    }

    /// Every task on disk. A file that does not parse is reported and skipped, never deleted.
    pub fn load_tasks(&self) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        for p in list(&self.tasks)? {
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Task>(&b).map_err(|e| e.to_string()))
            {
                Ok(t) => out.push(t),
                Err(e) => tracing::error!("journal: cannot read {}: {e}; left in place", p.display()),
            }
        }
        Ok(out)
    }

    pub fn push_event(&self, ev: &Event) -> Result<()> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::to_vec(ev).map_err(|e| Error::usage(format!("event {}: {e}", ev.event_id)))?;
        sys::write_atomic(&self.outbox.join(format!("{n:020}-{}.json", ev.event_id)), &body, 0o600)
    }

    /// Undelivered events, oldest first.
    pub fn pending(&self) -> Result<Vec<(PathBuf, Event)>> {
        let mut out = Vec::new();
        for p in list(&self.outbox)? {
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Event>(&b).ok()) {
                Some(ev) => out.push((p, ev)),
                None => tracing::error!("journal: cannot read event {}; left in place", p.display()),
            }
        }
        Ok(out)
    }

    pub fn pending_count(&self) -> usize {
        list(&self.outbox).map(|v| v.len()).unwrap_or(0)
    }

    pub fn ack(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).ctx(|| format!("removing delivered event {}", path.display()))
    }
}

/// Sorted entries of a directory, temporary files left out.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::task::{TaskStatus, Work};

    /// A journal written by version 1 of the agent, checked in: every later version must load it.
    #[test]
    fn the_checked_in_v1_journal_always_loads() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1");
        let dir = tempfile::tempdir().unwrap();
        for sub in ["tasks", "outbox"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
            for e in fs::read_dir(src.join(sub)).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
            }
        }
        let j = Journal::open(dir.path()).unwrap();
        let mut tasks = j.load_tasks().unwrap();
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].status, TaskStatus::Finished);
        assert_eq!(tasks[0].backup_file_id, "bf-fixture000000001");
        assert!(matches!(&tasks[0].work, Some(Work::Export { spec }) if spec.includes == ["/data/data/com.example"]));
        assert_eq!(tasks[1].status, TaskStatus::Processing);
        assert!(
            matches!(&tasks[1].work, Some(Work::Import { spec, .. }) if spec.from == "obs://bucket/myimage/v1/x.tar")
        );
        let pending = j.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1.event_id, "t-fixture0000000001-3");
        // New events sort after the old ones.
        j.push_event(&Event { event_id: "t-x-1".into(), ..Default::default() }).unwrap();
        let pending = j.pending().unwrap();
        assert_eq!(pending.last().unwrap().1.event_id, "t-x-1");
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j")).unwrap();
        j.save_task(&Task { task_id: "t-1".into(), ..Default::default() }).unwrap();
        let m = fs::metadata(dir.path().join("j/tasks/t-1.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        let m = fs::metadata(dir.path().join("j/tasks")).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700);
    }
}
