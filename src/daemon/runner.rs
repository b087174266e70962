//! Running tasks: the queue, the concurrency limit, progress, cancellation, and the record of
//! every state change (journal first, then an event for the control plane). Tasks run the same
//! functions the command line runs, each on a thread of its own at the task's priority.
//!
//! It never starts a second task for a task id or client token it has seen, never reports a
//! state before the journal holds it, and on start never leaves a task "Processing" that no
//! longer runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::config::Config;
use super::journal::{self, Event, Journal};
use super::report::Reporter;
use super::task::{iso_now, Task, TaskProgress, TaskStatus, Work};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, Status};
use crate::progress::Progress;
use crate::store::{self, Location};
use crate::{backup, catalog, restore};

#[derive(Default)]
pub struct Metrics {
    pub bytes_uploaded: AtomicU64,
    pub bytes_downloaded: AtomicU64,
}

pub struct Runner {
    pub cfg: Config,
    journal: Arc<Journal>,
    pub reporter: Arc<Reporter>,
    tasks: Mutex<BTreeMap<String, Task>>,
    /// Held by every change to a known task, from reading it to putting the journaled
    /// version back (`update`), so two changes never start from the same copy and the
    /// later one never overwrites the earlier (a cancel and the task's own progress or end).
    /// `tasks` itself is only held for a lookup or an insert, so readers never wait on a fsync.
    changing: Mutex<()>,
    live: Mutex<HashMap<String, Progress>>,
    queue: Mutex<VecDeque<String>>,
    wake: tokio::sync::Notify,
    accepting: AtomicBool,
    pub metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock aborts the process (panic = "abort"), so poisoning
    // cannot be observed in the shipped binary; in tests, carry on with the data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runner {
    pub fn new(cfg: Config, journal: Arc<Journal>, reporter: Arc<Reporter>) -> Arc<Runner> {
        Arc::new(Runner {
            cfg,
            journal,
            reporter,
            tasks: Mutex::new(BTreeMap::new()),
            changing: Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            accepting: AtomicBool::new(true),
            metrics: Metrics::default(),
        })
    }

    /// Load the journal and settle what a crash left: running tasks end `Failed` (their
    /// uploads aborted, their manifests marked failed, their staging removed), waiting ones
    /// go back in the queue with the configured SSE-C key, except restores that were handed a
    /// decryption identity, which the journal never held: they end `Failed`, IdentityRequired.
    pub fn recover(&self) -> Result<()> {
        let mut loaded = self.journal.load_tasks()?;
        loaded.sort_by(|a, b| a.created_time.cmp(&b.created_time).then(a.task_id.cmp(&b.task_id)));
        match store::s3::cleanup(&self.cfg.store_options(None)) {
            Ok(c) if !c.aborted.is_empty() => {
                tracing::info!("aborted multipart uploads left by an earlier run: {}", c.aborted.join(", "))
            }
            Ok(c) if !c.failed.is_empty() => tracing::warn!("could not abort: {}", c.failed.join(", ")),
            Ok(_) => {}
            Err(e) => tracing::warn!("cleaning up earlier uploads: {e}"),
        }
        crate::restore::finish_interrupted(&self.cfg.root);
        for mut t in loaded {
            match t.status {
                TaskStatus::Processing => {
                    t.finish_time = iso_now();
                    match settle_manifest(&t) {
                        // Killed after the archive was complete and its manifest said so:
                        // the backup is there, and the task says what it made.
                        Some(m) => {
                            let done = from_manifest(&m);
                            t.status = done.status;
                            t.result = done.result;
                            t.error_msg = done.error_msg;
                            t.progress.percent = 100;
                        }
                        None => {
                            t.status = TaskStatus::Failed;
                            t.error_code = "AgentRestarted".into();
                            t.error_msg = "the agent stopped while this task ran; its upload was aborted and nothing partial was kept".into();
                        }
                    }
                    self.record(&mut t, "status")?;
                }
                TaskStatus::Waiting if t.needs_identity => {
                    t.status = TaskStatus::Failed;
                    t.finish_time = iso_now();
                    t.error_code = "IdentityRequired".into();
                    t.error_msg = "the agent restarted before this restore ran, and a decryption identity is kept \
                                   in memory only: send the request again with its DecryptionIdentity"
                        .into();
                    self.record(&mut t, "status")?;
                }
                TaskStatus::Waiting => {
                    if let Some(work) = t.work.as_mut() {
                        self.cfg.protection.reattach(work);
                    }
                    lock(&self.queue).push_back(t.task_id.clone())
                }
                _ => {}
            }
            lock(&self.tasks).insert(t.task_id.clone(), t);
        }
        self.forget_expired();
        Ok(())
    }

    /// Retention: ended tasks older than `task_retention_days`, or beyond the newest
    /// `task_retention_count`, leave memory and the journal (their undelivered events stay
    /// until delivered).
    pub fn forget_expired(&self) {
        let now = time::OffsetDateTime::now_utc();
        let mut tasks = lock(&self.tasks);
        let gone = journal::expired(tasks.values(), now, self.cfg.task_retention_days, self.cfg.task_retention_count);
        for id in &gone {
            match self.journal.remove_task(id) {
                Ok(()) => {
                    tasks.remove(id);
                }
                Err(e) => tracing::warn!("journal: {e}"),
            }
        }
        if !gone.is_empty() {
            tracing::info!("journal: forgot {} ended tasks past their retention", gone.len());
        }
    }

    /// Journal the task, then queue its event. Journal first: an event never reports a state
    /// that a restart could lose.
    fn record(&self, t: &mut Task, kind: &str) -> Result<()> {
        let url = if t.callback_url.is_empty() {
            self.cfg.callback_url.clone().unwrap_or_default()
        } else {
            t.callback_url.clone()
        };
        if !url.is_empty() {
            t.event_seq += 1;
        }
        self.journal.save_task(t)?;
        if url.is_empty() {
            return Ok(());
        }
        let mut shown = t.clone();
        shown.work = None;
        let ev = Event {
            event_id: format!("{}-{}", t.task_id, t.event_seq),
            task_id: t.task_id.clone(),
            seq: t.event_seq,
            time: iso_now(),
            kind: kind.to_string(),
            url,
            task: serde_json::to_value(&shown).unwrap_or_default(),
        };
        self.journal.push_event(&ev)?;
        self.reporter.poke();
        Ok(())
    }

    /// Change a known task: `change` gets the current version and says whether it changed
    /// it (false: leave it as it is); a changed task is journaled, its event queued, and put
    /// back. Returns the task as it now stands.
    fn update(&self, id: &str, kind: &str, change: impl FnOnce(&mut Task) -> bool) -> Option<Task> {
        let _one_at_a_time = lock(&self.changing);
        let mut t = lock(&self.tasks).get(id).cloned()?;
        if !change(&mut t) {
            return Some(t);
        }
        if let Err(e) = self.record(&mut t, kind) {
            tracing::error!("journal: {e}");
        }
        lock(&self.tasks).insert(id.to_string(), t.clone());
        Some(t)
    }

    /// Accept a task. A client token or task id seen before returns that task instead.
    pub fn submit(&self, mut t: Task) -> Result<Task> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(Error::usage("the agent is shutting down and takes no new tasks"));
        }
        // Under `changing`, so two requests with one client token make one task.
        let _one_at_a_time = lock(&self.changing);
        {
            let tasks = lock(&self.tasks);
            if let Some(existing) = tasks.get(&t.task_id) {
                return Ok(existing.clone());
            }
            if !t.client_token.is_empty() {
                if let Some(existing) =
                    tasks.values().find(|x| x.client_token == t.client_token && x.task_type == t.task_type)
                {
                    return Ok(existing.clone());
                }
            }
        }
        t.status = TaskStatus::Waiting;
        t.created_time = iso_now();
        self.record(&mut t, "status")?;
        lock(&self.tasks).insert(t.task_id.clone(), t.clone());
        lock(&self.queue).push_back(t.task_id.clone());
        self.wake.notify_one();
        Ok(t)
    }

    pub fn get(&self, id: &str) -> Option<Task> {
        let mut t = lock(&self.tasks).get(id).cloned()?;
        self.refresh_progress(&mut t);
        Some(t)
    }

    pub fn all(&self) -> Vec<Task> {
        let mut v: Vec<Task> = lock(&self.tasks).values().cloned().collect();
        for t in &mut v {
            self.refresh_progress(t);
        }
        v.sort_by(|a, b| a.created_time.cmp(&b.created_time).then(a.task_id.cmp(&b.task_id)));
        v
    }

    fn refresh_progress(&self, t: &mut Task) {
        if let Some(p) = lock(&self.live).get(&t.task_id) {
            t.progress = progress_of(p);
        }
    }

    /// Cancel a task: a waiting one ends at once, a running one stops at its next entry (its
    /// upload is aborted, its staging removed) and ends `Failed` with code `Cancelled`.
    pub fn cancel(&self, id: &str) -> Option<Task> {
        self.update(id, "status", |t| {
            if t.status.is_final() {
                return false;
            }
            t.cancel_requested = true;
            if let Some(p) = lock(&self.live).get(id) {
                p.counters.cancel.store(true, Ordering::SeqCst);
            } else if t.status == TaskStatus::Waiting {
                lock(&self.queue).retain(|q| q != id);
                t.status = TaskStatus::Failed;
                t.error_code = "Cancelled".into();
                t.error_msg = "cancelled before it started".into();
                t.finish_time = iso_now();
            }
            true
        })
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m: BTreeMap<&'static str, usize> =
            ["Waiting", "Processing", "Finished", "PartFinished", "Failed"].into_iter().map(|s| (s, 0)).collect();
        for t in lock(&self.tasks).values() {
            *m.entry(t.status.as_str()).or_default() += 1;
        }
        m
    }

    pub fn live_transfer(&self) -> (u64, u64) {
        let live = lock(&self.live);
        let tasks = lock(&self.tasks);
        let (mut up, mut down) = (0, 0);
        for (id, p) in live.iter() {
            let n = p.counters.transferred.load(Ordering::Relaxed);
            match tasks.get(id).and_then(|t| t.work.as_ref()) {
                Some(Work::Export { .. } | Work::BackupApp { .. }) => up += n,
                _ => down += n,
            }
        }
        (up, down)
    }

    /// The workers: `max_concurrent` loops taking tasks off the queue.
    pub fn start(self: &Arc<Self>) {
        for _ in 0..self.cfg.max_concurrent {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let next = lock(&me.queue).pop_front();
                    match next {
                        Some(id) => me.run_one(&id).await,
                        None => me.wake.notified().await,
                    }
                }
            });
        }
    }

    async fn run_one(self: &Arc<Self>, id: &str) {
        let progress = Progress::hidden();
        let mut work = None;
        let started = self.update(id, "status", |t| {
            if t.status != TaskStatus::Waiting {
                return false;
            }
            work = t.work.clone();
            if work.is_none() {
                return false;
            }
            lock(&self.live).insert(id.to_string(), progress.clone());
            t.status = TaskStatus::Processing;
            t.start_time = iso_now();
            true
        });
        let (Some(t), Some(work)) = (started, work) else { return };

        // Progress events at most every `progress_interval_secs`.
        let ticker = {
            let me = self.clone();
            let id = id.to_string();
            let p = progress.clone();
            let every = Duration::from_secs(self.cfg.progress_interval_secs.max(1));
            tokio::spawn(async move {
                let mut last = TaskProgress::default();
                loop {
                    tokio::time::sleep(every).await;
                    let now = progress_of(&p);
                    if now == last {
                        continue;
                    }
                    last = now.clone();
                    let running = me.update(&id, "progress", |t| {
                        t.status == TaskStatus::Processing && {
                            t.progress = now;
                            true
                        }
                    });
                    if running.is_none_or(|t| t.status != TaskStatus::Processing) {
                        return;
                    }
                }
            })
        };

        // A thread of its own at the task's priority: the threads it starts inherit it, and
        // the HTTP server's threads never take it (though they share the session's autogroup,
        // lowered while any task runs: `crate::priority`).
        let p2 = progress.clone();
        let priority = self.cfg.priority().unwrap_or_default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name(format!("task {id}")).spawn(move || {
            priority.apply_to_this_thread();
            let _session = priority.lower_session();
            let _ = tx.send(execute(&work, &p2));
        });
        let outcome = match spawned {
            Ok(_) => rx.await.map_err(|_| "its thread ended without an answer".to_string()),
            Err(e) => Err(format!("no thread for it: {e}")),
        };
        ticker.abort();
        let transferred = progress.counters.transferred.load(Ordering::Relaxed);
        let uploads = matches!(t.work, Some(Work::Export { .. } | Work::BackupApp { .. }));
        let counter = if uploads { &self.metrics.bytes_uploaded } else { &self.metrics.bytes_downloaded };
        counter.fetch_add(transferred, Ordering::Relaxed);
        lock(&self.live).remove(id);

        self.update(id, "status", |t| {
            t.progress = progress_of(&progress);
            t.finish_time = iso_now();
            match outcome {
                Ok(Ok(done)) => {
                    t.status = done.status;
                    t.result = done.result;
                    if !done.error_msg.is_empty() {
                        t.error_code = "PartFailed".into();
                        t.error_msg = done.error_msg;
                    }
                    t.progress.percent = 100;
                }
                Ok(Err(e)) => {
                    t.status = TaskStatus::Failed;
                    t.error_code = e.code().to_string();
                    t.error_msg = e.to_string();
                }
                Err(why) => {
                    let e = Error::internal(format!("the task stopped unexpectedly: {why}"));
                    t.status = TaskStatus::Failed;
                    t.error_code = e.code().to_string();
                    t.error_msg = e.to_string();
                }
            }
            true
        });
        self.forget_expired();
    }

    /// Stop taking tasks; let running ones finish within `deadline`, then cancel them (their
    /// uploads are aborted and they end `Failed`, journaled).
    pub async fn shutdown(&self, deadline: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        let start = std::time::Instant::now();
        while !lock(&self.live).is_empty() && start.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in lock(&self.live).values() {
            p.counters.cancel.store(true, Ordering::SeqCst);
        }
        let grace = std::time::Instant::now();
        while !lock(&self.live).is_empty() && grace.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.reporter.stop();
    }

    /// Status events not yet delivered.
    pub fn reporter_backlog(&self) -> usize {
        self.journal.pending_count()
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }
}

fn progress_of(p: &Progress) -> TaskProgress {
    let c = &p.counters;
    let bytes = c.bytes.load(Ordering::Relaxed);
    let total = c.total.load(Ordering::Relaxed);
    TaskProgress {
        bytes,
        total_bytes: total,
        entries: c.entries.load(Ordering::Relaxed),
        transferred_bytes: c.transferred.load(Ordering::Relaxed),
        percent: if total > 0 { ((bytes.min(total) * 100) / total) as u32 } else { 0 },
    }
}

/// What a finished piece of work reports.
struct Done {
    status: TaskStatus,
    result: String,
    error_msg: String,
}

fn from_manifest(m: &Manifest) -> Done {
    let status = match m.status {
        Status::PartBackupFinished => TaskStatus::PartFinished,
        _ => TaskStatus::Finished,
    };
    let error_msg = if status == TaskStatus::PartFinished { m.warnings.join("; ") } else { String::new() };
    Done { status, result: String::from_utf8_lossy(&m.to_json()).into_owned(), error_msg }
}

/// Run one piece of work with the command line's own functions.
fn execute(work: &Work, progress: &Progress) -> Result<Done> {
    match work {
        Work::Export { spec } => backup::export(spec, progress).map(|m| from_manifest(&m)),
        Work::BackupApp { spec } => backup::backup_app(spec, progress).map(|m| from_manifest(&m)),
        Work::Import { spec, backup_file_id } => {
            let mut spec = spec.clone();
            spec.from = locate(&spec.from, backup_file_id.as_deref(), &spec.store)?;
            spec.backup_file_id = backup_file_id.clone();
            let r = restore::import(&spec, progress)?;
            Ok(Done {
                status: TaskStatus::Finished,
                result: serde_json::to_string(&r).unwrap_or_default(),
                error_msg: String::new(),
            })
        }
        Work::RecoverApp { spec, backup_file_id } => {
            let mut spec = spec.clone();
            spec.from = locate(&spec.from, backup_file_id.as_deref(), &spec.store)?;
            let r = restore::recover_app(&spec, progress)?;
            let failed: Vec<String> =
                r.apps.iter().filter(|a| !a.ok()).map(|a| format!("{}: {}", a.package, a.error)).collect();
            let status = if failed.is_empty() {
                TaskStatus::Finished
            } else if failed.len() == r.apps.len() {
                return Err(Error::Device { command: "recover-app".into(), output: failed.join("; ") });
            } else {
                TaskStatus::PartFinished
            };
            Ok(Done { status, result: serde_json::to_string(&r).unwrap_or_default(), error_msg: failed.join("; ") })
        }
    }
}

/// A source given as a folder plus a BackupFileId: find the archive through the manifests (a
/// snapshot's source stays the folder, its repository).
fn locate(from: &str, backup_file_id: Option<&str>, opts: &crate::spec::StoreOptions) -> Result<String> {
    let Some(id) = backup_file_id.filter(|s| !s.is_empty()) else { return Ok(from.to_string()) };
    if !from.ends_with('/') {
        return Ok(from.to_string());
    }
    let (store, prefix, _) = store::open(&Location::parse(from)?, opts)?;
    let found = catalog::records(store.as_ref(), &prefix)?
        .into_iter()
        .find(|(_, m)| m.backup_file_id == id)
        .ok_or_else(|| Error::usage(format!("BackupFileId {id} was not found under {from}")))?;
    // A snapshot is found again by the import, in its repository (the folder) by its id.
    if found.1.format == Some(crate::archive::Format::Repo) {
        return Ok(from.to_string());
    }
    Ok(found.1.backup_file_path)
}

/// After a crash during a backup: its manifest must not keep saying BACKUPING. Returns the
/// manifest when this task's archive was complete (the crash came after it said so).
fn settle_manifest(t: &Task) -> Option<Manifest> {
    let opts = match &t.work {
        Some(Work::Export { spec }) => &spec.store,
        Some(Work::BackupApp { spec }) => &spec.store,
        _ => return None,
    };
    if t.backup_file_path.is_empty() {
        return None;
    }
    let loc = Location::parse(&t.backup_file_path).ok()?;
    let (store, key, _) = store::open(&loc, opts).ok()?;
    let mkey = manifest::key_for(&key);
    let bytes = store.get(&mkey).ok()??;
    let mut m = Manifest::from_json(&mkey, &bytes).ok()?;
    if m.status.archive_complete() && m.backup_file_id == t.backup_file_id {
        return Some(m);
    }
    if m.status == Status::Backuping {
        m.status = Status::BackupFailed;
        m.error_code = "AgentRestarted".into();
        m.failure_reason = "the agent stopped while the archive was written".into();
        m.gmt_modified = manifest::format_time(time::OffsetDateTime::now_utc());
        if let Err(e) = store.put(&mkey, &m.to_json()) {
            tracing::warn!("could not mark {} failed: {e}", t.backup_file_path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::task::TaskType;
    use crate::spec::{Destination, ExportSpec};

    fn dir_size(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    /// A phone that ran a backup every hour for a year: its journal, as the tasks would have
    /// left it without retention, is cut to the retention on start, stays under a few MiB, and
    /// loads in well under a second.
    #[test]
    fn a_year_of_hourly_backups_keeps_a_small_journal_that_loads_fast() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: dir.path().join("state"),
            root: dir.path().join("root"),
            instance_id: "acp-year".into(),
            ..Default::default()
        };
        std::fs::create_dir_all(&cfg.root).unwrap();
        let tasks_dir = cfg.state_dir.join("journal/tasks");
        std::fs::create_dir_all(&tasks_dir).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let stamp = |t: time::OffsetDateTime| {
            let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
            t.format(&f).unwrap()
        };
        const HOURS: i64 = 365 * 24;
        for i in 0..HOURS {
            let start = now - time::Duration::hours(HOURS - i);
            let task_id = format!("t-year{i:011}");
            let to = format!("oss://fleet-backups/phones/acp-year/acp-year_{i:08}.tar.zst");
            let dest = Destination {
                to: to.clone(),
                root: "/".into(),
                identity: cfg.identity(&task_id),
                store: cfg.store_options(Some("oss-cn-shanghai-internal.aliyuncs.com")),
                backup_file_id: Some(format!("bf-year{i:012}")),
                ..Default::default()
            };
            let spec = ExportSpec::new(dest, vec!["/data/data".into(), "/data/media/0".into()], vec![], false);
            let m = Manifest {
                backup_file_id: format!("bf-year{i:012}"),
                backup_file_path: to.clone(),
                identity: spec.identity.clone(),
                status: Status::Available,
                source_file_path_list: spec.includes.clone(),
                sha256: "ab".repeat(32),
                ..Default::default()
            };
            let t = Task {
                task_id,
                parent_task_id: format!("t-batch{i:010}"),
                task_type: TaskType::BackupFile,
                status: TaskStatus::Finished,
                created_time: stamp(start),
                start_time: stamp(start),
                finish_time: stamp(start + time::Duration::minutes(4)),
                result: String::from_utf8(m.to_json()).unwrap(),
                backup_file_id: m.backup_file_id.clone(),
                backup_file_path: to,
                instance_id: cfg.instance_id.clone(),
                work: Some(Work::Export { spec }),
                ..Default::default()
            };
            std::fs::write(tasks_dir.join(format!("{}.json", t.task_id)), serde_json::to_vec_pretty(&t).unwrap())
                .unwrap();
        }
        let before = dir_size(&tasks_dir);
        assert!(before > 20 << 20, "a year of records is big without retention: {before} bytes");

        let start = |cfg: &Config| {
            let journal = Arc::new(Journal::open(&cfg.state_dir.join("journal")).unwrap());
            let reporter = Reporter::new(journal.clone(), Vec::new(), super::super::report::http_agent());
            let r = Runner::new(cfg.clone(), journal, reporter);
            r.recover().unwrap();
            r
        };
        let r = start(&cfg);
        let kept = r.all().len();
        assert!((30 * 24 - 1..=30 * 24 + 1).contains(&kept), "30 days of hourly tasks kept: {kept}");
        let after = dir_size(&tasks_dir);
        assert!(after < 4 << 20, "the journal of a year: {after} bytes");
        assert_eq!(std::fs::read_dir(&tasks_dir).unwrap().count(), kept);
        drop(r);

        // The load of a start: open, read every record, settle, forget what expired.
        let t0 = std::time::Instant::now();
        let r = start(&cfg);
        let took = t0.elapsed();
        assert_eq!(r.all().len(), kept);
        assert!(took < Duration::from_secs(1), "loading the journal took {took:?}");
        eprintln!("journal of a year of hourly backups: {before} bytes before retention, {after} after ({kept} tasks); loaded in {took:?}");

        // The count bound, whatever the age.
        let r = start(&Config { task_retention_count: 100, ..cfg.clone() });
        assert_eq!(r.all().len(), 100);
        assert_eq!(std::fs::read_dir(&tasks_dir).unwrap().count(), 100);
    }
}
