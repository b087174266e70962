//! The daemon's memory across crashes and reboots: one JSON file per task, per schedule and
//! per undelivered status event, each written to a temporary name, fsynced and renamed into
//! place, so a reader finds the old version or the new, never half of one. Files are 0600.
//!
//! It deletes a task record only when retention says so (an ended task older than
//! `task_retention_days`, or beyond the newest `task_retention_count`; never one waiting or
//! running), and an event only once it was delivered.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::schedule::ScheduleRecord;
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
    schedules: PathBuf,
    outbox: PathBuf,
    next: AtomicU64,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Journal> {
        let tasks = dir.join("tasks");
        let outbox = dir.join("outbox");
        let schedules = dir.join("schedules");
        for d in [dir, &tasks, &outbox, &schedules] {
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
        Ok(Journal { tasks, schedules, outbox, next: AtomicU64::new(last + 1) })
    }

    pub fn save_task(&self, t: &Task) -> Result<()> {
        let body =
            serde_json::to_vec_pretty(t).map_err(|e| Error::internal(format!("journaling task {}: {e}", t.task_id)))?;
        sys::write_atomic(&self.tasks.join(format!("{}.json", t.task_id)), &body, 0o600)
    }

    /// Every task on disk. A file that does not parse is reported and skipped, never deleted.
    pub fn load_tasks(&self) -> Result<Vec<Task>> {
        Ok(read_records(&self.tasks)?.into_iter().map(|(_, t)| t).collect())
    }

    /// Forget a task's record (retention).
    pub fn remove_task(&self, task_id: &str) -> Result<()> {
        let p = self.tasks.join(format!("{task_id}.json"));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { context: format!("removing {}", p.display()), source: e })
            }
            _ => Ok(()),
        }
    }

    pub fn push_event(&self, ev: &Event) -> Result<()> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let body =
            serde_json::to_vec(ev).map_err(|e| Error::internal(format!("journaling event {}: {e}", ev.event_id)))?;
        sys::write_atomic(&self.outbox.join(format!("{n:020}-{}.json", ev.event_id)), &body, 0o600)
    }

    /// Undelivered events, oldest first.
    pub fn pending(&self) -> Result<Vec<(PathBuf, Event)>> {
        read_records(&self.outbox)
    }

    pub fn pending_count(&self) -> usize {
        list(&self.outbox).map(|v| v.len()).unwrap_or(0)
    }

    pub fn ack(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).ctx(|| format!("removing delivered event {}", path.display()))
    }

    pub fn save_schedule(&self, s: &ScheduleRecord) -> Result<()> {
        let body = serde_json::to_vec_pretty(s)
            .map_err(|e| Error::internal(format!("journaling schedule {}: {e}", s.spec.id)))?;
        sys::write_atomic(&self.schedules.join(format!("{}.json", s.spec.id)), &body, 0o600)
    }

    /// Every schedule on disk; one that does not parse is reported and skipped.
    pub fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(read_records(&self.schedules)?.into_iter().map(|(_, s)| s).collect())
    }

    pub fn remove_schedule(&self, id: &str) -> Result<()> {
        let p = self.schedules.join(format!("{id}.json"));
        fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))
    }
}

/// The records of a journal directory, in name order. A file that does not parse is reported
/// and skipped, never deleted.
fn read_records<T: DeserializeOwned>(dir: &Path) -> Result<Vec<(PathBuf, T)>> {
    let mut out = Vec::new();
    for p in list(dir)? {
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
        {
            Ok(t) => out.push((p, t)),
            Err(e) => tracing::error!("journal: cannot read {}: {e}; left in place", p.display()),
        }
    }
    Ok(out)
}

/// The tasks retention forgets: ended ones that ended more than `days` before `now`, and the
/// ended ones beyond the newest `count`. A task that is waiting or running is never among them.
pub fn expired<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    now: time::OffsetDateTime,
    days: u64,
    count: usize,
) -> Vec<String> {
    let oldest = now - time::Duration::days(days.min(1 << 20) as i64);
    let mut ended: Vec<(Option<time::OffsetDateTime>, &Task)> =
        tasks.filter(|t| t.status.is_final()).map(|t| (ended_at(t), t)).collect();
    // Newest first; a task whose end cannot be read counts as the oldest.
    ended.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.task_id.cmp(&a.1.task_id)));
    ended
        .into_iter()
        .enumerate()
        .filter(|(i, (at, _))| *i >= count || at.is_some_and(|at| at < oldest))
        .map(|(_, (_, t))| t.task_id.clone())
        .collect()
}

/// When a task ended: its finish time, else its creation (a task cancelled while waiting).
fn ended_at(t: &Task) -> Option<time::OffsetDateTime> {
    let parse = |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    parse(&t.finish_time).or_else(|| parse(&t.created_time))
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
    use crate::daemon::task::{Api, TaskStatus, TaskType, Work};

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
        assert_eq!((tasks[0].api, tasks[0].task_type), (Api::Ecp, TaskType::BackupFile));
        assert_eq!((tasks[1].api, tasks[1].task_type), (Api::Cph, TaskType::RecoverFile));
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

    /// The enums are written as the strings version 1 wrote.
    #[test]
    fn task_records_keep_their_strings() {
        let t = Task { api: Api::Cph, task_type: TaskType::RecoverApp, ..Default::default() };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!((v["Api"].as_str(), v["TaskType"].as_str()), (Some("cph"), Some("RecoverApp")));
        let v = serde_json::to_value(Task::default()).unwrap();
        assert_eq!((v["Api"].as_str(), v["TaskType"].as_str()), (Some("ecp"), Some("BackupFile")));
        for ty in [TaskType::BackupFile, TaskType::RecoverFile, TaskType::BackupApp, TaskType::RecoverApp] {
            assert_eq!(serde_json::to_value(ty).unwrap(), ty.as_str());
        }
    }

    #[test]
    fn retention_forgets_old_and_surplus_ended_tasks_only() {
        let now = time::OffsetDateTime::now_utc();
        let at = |hours_ago: i64| {
            let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
            (now - time::Duration::hours(hours_ago)).format(&f).unwrap()
        };
        let task = |id: &str, status, hours_ago| Task {
            task_id: id.into(),
            status,
            created_time: at(hours_ago + 1),
            finish_time: if status == TaskStatus::Waiting { String::new() } else { at(hours_ago) },
            ..Default::default()
        };
        let tasks = [
            task("t-new", TaskStatus::Finished, 1),
            task("t-mid", TaskStatus::Failed, 2),
            task("t-old", TaskStatus::PartFinished, 31 * 24),
            task("t-waiting", TaskStatus::Waiting, 40 * 24),
            task("t-running", TaskStatus::Processing, 40 * 24),
        ];
        let mut cancelled = task("t-cancelled", TaskStatus::Failed, 32 * 24);
        cancelled.finish_time.clear();
        let all = || tasks.iter().chain(std::iter::once(&cancelled));
        let mut gone = expired(all(), now, 30, 10);
        gone.sort();
        assert_eq!(gone, ["t-cancelled", "t-old"]);
        assert_eq!(expired(all(), now, 30, 1), ["t-mid", "t-old", "t-cancelled"]);
        assert!(expired(all(), now, 365, 0).len() == 4, "the count bound alone");
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
