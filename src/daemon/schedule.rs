//! Schedules: backups the agent starts by itself, from the config's `[[schedule]]` tables and
//! `POST /schedules`. Each run is an ordinary task (DescribeTasks, callbacks, cancel). A
//! phone waits a delay of its own after each cron time (`jitter_secs`, so a fleet does not
//! start at once); a run missed while the agent was stopped runs once at the next start; two
//! runs of one schedule never overlap (a time that comes while the last run still runs is
//! skipped); after a run that succeeded, the schedule's own older backups go by its `keep`
//! policy (`crate::keep`), never after one that failed. Schedules and what they did last live
//! in the journal.
//!
//! It never forgets a backup that another schedule or another phone made: only records that
//! carry this schedule's id and this phone's instance id are counted and deleted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::api::ecp::{self, EcpBackup};
use super::config::Config;
use super::cron::Cron;
use super::journal::Journal;
use super::runner::Runner;
use super::task::{TaskStatus, Work};
use crate::catalog;
use crate::error::{Error, Result};
use crate::keep::Policy;
use crate::manifest;
use crate::store::{self, Location};

/// A schedule as the config's `[[schedule]]` and `POST /schedules` give it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`; recorded in the manifests of its backups.
    pub id: String,
    /// Five fields, UTC (`crate::daemon::cron`).
    pub cron: String,
    /// The most this phone waits after each cron time: a delay of its own in `0..jitter_secs`.
    #[serde(default)]
    pub jitter_secs: u64,
    /// `BackupFile` or `BackupApp`.
    #[serde(default = "backup_file")]
    pub action: String,
    /// The ECP request body the action takes (`AndroidInstanceIdList` may be left out).
    pub body: serde_json::Value,
    /// Retention over this schedule's own backups; empty keeps everything.
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub keep: Policy,
}

fn backup_file() -> String {
    "BackupFile".into()
}

/// A checked schedule: what the scheduler acts on.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub cron: Cron,
    pub app: bool,
    pub body: EcpBackup,
    /// This phone's delay after each cron time.
    pub delay: time::Duration,
}

/// A schedule's record in the journal: its definition and what it did last.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleRecord {
    pub spec: ScheduleSpec,
    /// Defined in the config file: the file decides, the API cannot delete or replace it.
    pub from_config: bool,
    /// The last cron time handled (run, or skipped because the last run still ran), RFC 3339.
    pub last_slot: String,
    pub last_task_id: String,
    /// The last run's retention is still to be done once it succeeds.
    pub retention_due: bool,
}

/// Check a schedule whole, with the same rules as the request its body is; the error names
/// the field (`cron: …`, `body.SourceFilePathList[1]: …`).
pub fn check(spec: &ScheduleSpec, cfg: &Config) -> std::result::Result<Schedule, String> {
    let id_ok = (1..=64).contains(&spec.id.len())
        && !spec.id.starts_with('.')
        && spec.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        return Err(format!("id {:?}: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .)", spec.id));
    }
    let cron = Cron::parse(&spec.cron).map_err(|e| format!("cron: {e}"))?;
    let app = match spec.action.as_str() {
        "BackupFile" => false,
        "BackupApp" => true,
        other => return Err(format!("action {other:?}: use BackupFile or BackupApp")),
    };
    let body = ecp::schedule_body(cfg, app, &spec.body)?;
    let delay = time::Duration::seconds(jitter(&cfg.instance_id, &spec.id, spec.jitter_secs) as i64);
    Ok(Schedule { spec: spec.clone(), cron, app, body, delay })
}

/// This phone's delay for a schedule: the same on every run (a fleet spreads out, each phone
/// keeps its time), in `0..jitter_secs`.
pub fn jitter(instance_id: &str, schedule_id: &str, jitter_secs: u64) -> u64 {
    if jitter_secs == 0 {
        return 0;
    }
    let h = Sha256::new().chain_update(instance_id).chain_update([0]).chain_update(schedule_id).finalize();
    let mut n = [0u8; 8];
    n.copy_from_slice(&h[..8]);
    u64::from_le_bytes(n) % jitter_secs
}

/// The cron time due at `now`: the latest whose delay has passed, if it is later than `last`
/// (the last one handled). However many were missed, one.
pub fn due(
    cron: &Cron,
    delay: time::Duration,
    last: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let slot = cron.latest_at_or_before(now - delay)?;
    last.is_none_or(|l| slot > l).then_some(slot)
}

fn parse_slot(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn format_slot(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A schedule as `GET /schedules` shows it.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    pub from_config: bool,
    pub last_run: String,
    pub last_task_id: String,
    pub next_run: String,
}

/// Why a change to the schedules was refused.
pub enum Refusal {
    /// The request is wrong (400).
    Invalid(String),
    /// Defined in the config file (409).
    FromConfig(String),
    NotFound(String),
    /// The journal could not be written (500).
    Internal(Error),
}

struct Entry {
    sched: Schedule,
    rec: ScheduleRecord,
}

pub struct Scheduler {
    runner: Arc<Runner>,
    journal: Arc<Journal>,
    entries: Mutex<BTreeMap<String, Entry>>,
    wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler {
    /// The journal's schedules and the config's: the config's replace journal records of the
    /// same id (keeping what they did last when unchanged) and the journal's config records
    /// that the config no longer holds are dropped. A bad schedule in the config is an error
    /// naming it; a bad one in the journal is logged and left out.
    pub fn load(runner: Arc<Runner>, journal: Arc<Journal>) -> Result<Arc<Scheduler>> {
        let cfg = &runner.cfg;
        let now = OffsetDateTime::now_utc();
        let mut entries = BTreeMap::new();
        let stored: BTreeMap<String, ScheduleRecord> =
            journal.load_schedules()?.into_iter().map(|r| (r.spec.id.clone(), r)).collect();
        for spec in &cfg.schedule {
            let sched =
                check(spec, cfg).map_err(|e| Error::usage(format!("schedule {:?} in the config: {e}", spec.id)))?;
            let rec = match stored.get(&spec.id) {
                Some(r) if r.spec == *spec => ScheduleRecord { from_config: true, ..r.clone() },
                _ => fresh(&sched, true, now),
            };
            journal.save_schedule(&rec)?;
            entries.insert(spec.id.clone(), Entry { sched, rec });
        }
        for (id, rec) in stored {
            if entries.contains_key(&id) {
                continue;
            }
            if rec.from_config {
                journal.remove_schedule(&id)?;
                continue;
            }
            match check(&rec.spec, cfg) {
                Ok(sched) => {
                    entries.insert(id, Entry { sched, rec });
                }
                Err(e) => tracing::error!("schedule {id:?} in the journal no longer checks: {e}; not run"),
            }
        }
        Ok(Arc::new(Scheduler { runner, journal, entries: Mutex::new(entries), wake: tokio::sync::Notify::new() }))
    }

    /// Create or replace a schedule made through the API.
    pub fn put(&self, spec: ScheduleSpec) -> std::result::Result<ScheduleView, Refusal> {
        let sched = check(&spec, &self.runner.cfg).map_err(Refusal::Invalid)?;
        let mut entries = lock(&self.entries);
        let rec = match entries.get(&spec.id) {
            Some(e) if e.rec.from_config => return Err(Refusal::FromConfig(spec.id)),
            Some(e) if e.rec.spec == spec => e.rec.clone(),
            _ => fresh(&sched, false, OffsetDateTime::now_utc()),
        };
        self.journal.save_schedule(&rec).map_err(Refusal::Internal)?;
        let entry = Entry { sched, rec };
        let view = view(&entry);
        entries.insert(spec.id.clone(), entry);
        drop(entries);
        self.wake.notify_one();
        Ok(view)
    }

    pub fn delete(&self, id: &str) -> std::result::Result<(), Refusal> {
        let mut entries = lock(&self.entries);
        match entries.get(id) {
            None => return Err(Refusal::NotFound(id.to_string())),
            Some(e) if e.rec.from_config => return Err(Refusal::FromConfig(id.to_string())),
            Some(_) => {}
        }
        self.journal.remove_schedule(id).map_err(Refusal::Internal)?;
        entries.remove(id);
        Ok(())
    }

    pub fn list(&self) -> Vec<ScheduleView> {
        lock(&self.entries).values().map(view).collect()
    }

    /// Start what is due, settle retention of runs that ended, until the runner stops taking
    /// tasks. Wakes at the next time a schedule names (at least once a minute).
    pub async fn run(self: Arc<Self>) {
        while self.runner.accepting() {
            let now = OffsetDateTime::now_utc();
            for (id, forget) in self.tick(now) {
                let me = self.clone();
                // Retention talks to the store with blocking calls.
                let done = tokio::task::spawn_blocking(move || me.forget(&forget)).await;
                match done {
                    Ok(Ok(gone)) if !gone.is_empty() => {
                        tracing::info!("schedule {id}: retention deleted {}", gone.join(", "))
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("schedule {id}: retention: {e}"),
                    Err(e) => tracing::error!("schedule {id}: retention stopped: {e}"),
                }
            }
            let wait = self.next_wake(OffsetDateTime::now_utc());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One pass at `now`: start the runs that are due; the schedules whose last run ended
    /// successfully and whose retention is due come back (retention runs off this thread).
    fn tick(&self, now: OffsetDateTime) -> Vec<(String, Schedule)> {
        let mut forget = Vec::new();
        let mut entries = lock(&self.entries);
        for (id, e) in entries.iter_mut() {
            let last = self.runner.get(&e.rec.last_task_id);
            let running = last.as_ref().is_some_and(|t| !t.status.is_final());
            let mut changed = false;
            if e.rec.retention_due && !running {
                e.rec.retention_due = false;
                changed = true;
                if last.as_ref().is_some_and(|t| t.status == TaskStatus::Finished) {
                    forget.push((id.clone(), e.sched.clone()));
                }
            }
            if let Some(slot) = due(&e.sched.cron, e.sched.delay, parse_slot(&e.rec.last_slot), now) {
                e.rec.last_slot = format_slot(slot);
                changed = true;
                if running {
                    tracing::warn!(
                        "schedule {id}: the run of {} still runs; the run due at {slot} is skipped",
                        e.rec.last_task_id
                    );
                } else {
                    match self.start(&e.sched, slot) {
                        Ok(task_id) => {
                            tracing::info!("schedule {id}: started {task_id} for {slot}");
                            e.rec.last_task_id = task_id;
                            e.rec.retention_due = !e.sched.spec.keep.is_empty();
                        }
                        Err(err) => tracing::error!("schedule {id}: could not start the run due at {slot}: {err}"),
                    }
                }
            }
            if changed {
                if let Err(err) = self.journal.save_schedule(&e.rec) {
                    tracing::error!("schedule {id}: {err}");
                }
            }
        }
        forget
    }

    /// Submit the run for `slot`. Its client token names the schedule and the time, so a
    /// restart between the submission and the schedule's record returns the same task.
    fn start(&self, s: &Schedule, slot: OffsetDateTime) -> Result<String> {
        let cfg = &self.runner.cfg;
        let mut body = s.body.clone();
        body.client_token = format!("schedule:{}:{}", s.spec.id, format_slot(slot));
        let (mut t, _) =
            ecp::backup_task(cfg, s.app, &body, "").map_err(|e| Error::usage(format!("body.{}", e.message)))?;
        t.schedule_id = s.spec.id.clone();
        match t.work.as_mut() {
            Some(Work::Export { spec }) => spec.identity.schedule_id = s.spec.id.clone(),
            Some(Work::BackupApp { spec }) => spec.identity.schedule_id = s.spec.id.clone(),
            _ => {}
        }
        Ok(self.runner.submit(t)?.task_id)
    }

    fn next_wake(&self, now: OffsetDateTime) -> Duration {
        let entries = lock(&self.entries);
        let soonest = entries
            .values()
            .filter_map(|e| {
                let from = parse_slot(&e.rec.last_slot).unwrap_or(now - e.sched.delay).max(now - e.sched.delay);
                Some(e.sched.cron.next_after(from)? + e.sched.delay)
            })
            .min();
        let wait = soonest.map(|t| (t - now).whole_milliseconds().max(0) as u64).unwrap_or(60_000);
        // A little after the minute, and at least once a minute (retention of ended runs).
        Duration::from_millis(wait.min(60_000) + 200)
    }

    /// Retention after a successful run: this phone's backups of this schedule in its folder,
    /// the ones the policy does not keep deleted (archive, then record). Backups whose archive
    /// is not complete (failed, still running) are neither counted nor deleted.
    fn forget(&self, s: &Schedule) -> Result<Vec<String>> {
        let cfg = &self.runner.cfg;
        let folder = &s.body.backup_file_path;
        if !folder.ends_with('/') || s.body.backup_file_name.is_some() {
            // Every run writes the same object: there is one backup, nothing to forget.
            return Ok(Vec::new());
        }
        let opts = cfg.store_options(s.body.upload_endpoint.as_deref());
        let (store, prefix, _) = store::open(&Location::parse(folder)?, &opts)?;
        // This phone's backups in the folder are named INSTANCE_TIME.EXT (`store::name_in_folder`).
        let prefix = format!("{prefix}{}_", store::name_stem(&cfg.instance_id));
        let mine: Vec<(String, OffsetDateTime)> = catalog::records(store.as_ref(), &prefix)?
            .into_iter()
            .filter(|(_, m)| {
                m.identity.schedule_id == s.spec.id
                    && m.identity.android_instance_id == cfg.instance_id
                    && m.status.archive_complete()
            })
            .filter_map(|(_, m)| Some((m.backup_file_id.clone(), manifest::parse_time(&m.gmt_created).ok()?)))
            .collect();
        let times: Vec<OffsetDateTime> = mine.iter().map(|(_, t)| *t).collect();
        let mut gone = Vec::new();
        for ((id, _), keep) in mine.iter().zip(s.spec.keep.keeps(&times)) {
            if !keep {
                catalog::delete(store.as_ref(), &prefix, id)?;
                gone.push(id.clone());
            }
        }
        Ok(gone)
    }
}

/// A new schedule's record: the cron time due now counts as handled, so it first runs at the
/// next one.
fn fresh(s: &Schedule, from_config: bool, now: OffsetDateTime) -> ScheduleRecord {
    ScheduleRecord {
        spec: s.spec.clone(),
        from_config,
        last_slot: s.cron.latest_at_or_before(now - s.delay).map(format_slot).unwrap_or_default(),
        ..Default::default()
    }
}

fn view(e: &Entry) -> ScheduleView {
    let now = OffsetDateTime::now_utc();
    let from = parse_slot(&e.rec.last_slot).unwrap_or(now - e.sched.delay);
    let next = e.sched.cron.next_after(from).map(|t| format_slot(t + e.sched.delay)).unwrap_or_default();
    ScheduleView {
        spec: e.rec.spec.clone(),
        from_config: e.rec.from_config,
        last_run: if e.rec.last_task_id.is_empty() { String::new() } else { e.rec.last_slot.clone() },
        last_task_id: e.rec.last_task_id.clone(),
        next_run: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn cfg() -> Config {
        Config { instance_id: "acp-1".into(), endpoint: Some("http://127.0.0.1:3900".into()), ..Default::default() }
    }

    fn spec(v: serde_json::Value) -> ScheduleSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn one_run_however_many_times_were_missed_and_none_twice() {
        let cron = Cron::parse("0 * * * *").unwrap();
        let none = time::Duration::ZERO;
        let last = Some(datetime!(2026-03-01 02:00 UTC));
        // Stopped from 02:30 to 05:10: the 03:00, 04:00 and 05:00 runs were missed: one run.
        assert_eq!(due(&cron, none, last, datetime!(2026-03-01 05:10 UTC)), Some(datetime!(2026-03-01 05:00 UTC)));
        assert_eq!(due(&cron, none, Some(datetime!(2026-03-01 05:00 UTC)), datetime!(2026-03-01 05:59 UTC)), None);
        assert_eq!(due(&cron, none, last, datetime!(2026-03-01 02:59 UTC)), None);
        // With this phone's delay of 10 minutes, 03:00's run is due from 03:10.
        let ten = time::Duration::minutes(10);
        assert_eq!(due(&cron, ten, last, datetime!(2026-03-01 03:09 UTC)), None);
        assert_eq!(due(&cron, ten, last, datetime!(2026-03-01 03:10 UTC)), Some(datetime!(2026-03-01 03:00 UTC)));
    }

    #[test]
    fn each_phone_keeps_a_delay_of_its_own() {
        let delays: Vec<u64> = (0..50).map(|i| jitter(&format!("acp-{i}"), "nightly", 3600)).collect();
        assert!(delays.iter().all(|d| *d < 3600));
        assert_eq!(delays[7], jitter("acp-7", "nightly", 3600), "the same on every run");
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 40, "a fleet spreads out: {delays:?}");
        assert_eq!(jitter("acp-1", "nightly", 0), 0);
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let good = json!({"id": "nightly", "cron": "0 3 * * *", "body": {"BackupFilePath": "oss://bkt/p/", "SourceFilePathList": ["/data/media/0"]}, "keep": {"last": 3}});
        let s = check(&spec(good.clone()), &cfg()).unwrap();
        assert_eq!(s.body.android_instance_id_list, ["acp-1"]);
        assert!(!s.app);
        for (change, says) in [
            (json!({"id": "a/b"}), "id \"a/b\""),
            (json!({"cron": "0 3 * *"}), "cron: "),
            (json!({"cron": "0 25 * * *"}), "cron: hour \"25\""),
            (json!({"action": "RecoverApp"}), "action \"RecoverApp\""),
            (
                json!({"body": {"BackupFilePath": "oss://bkt/p/", "SourceFilePathList": ["/etc"]}}),
                "body.SourceFilePathList[0]: ",
            ),
            (json!({"body": {"BackupFilePath": "oss://bkt/p/"}}), "body.SourceFilePathList is empty"),
            (json!({"body": {"SourceFilePathList": 3}}), "body: invalid type"),
            (
                json!({"body": {"BackupFilePath": "oss://bkt/p/", "SourceFilePathList": ["/data"], "AndroidInstanceIdList": ["acp-2"]}}),
                "body.AndroidInstanceIdList",
            ),
            (json!({"action": "BackupApp"}), "body.SourceAppList is empty"),
        ] {
            let mut v = good.clone();
            v.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
            let e = check(&spec(v), &cfg()).unwrap_err();
            assert!(e.starts_with(says), "{says}: {e}");
        }
        let e = serde_json::from_value::<ScheduleSpec>(
            json!({"id": "x", "cron": "* * * * *", "body": {}, "keep": {"dayly": 1}}),
        );
        assert!(e.unwrap_err().to_string().contains("dayly"));
    }
}
