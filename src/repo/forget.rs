//! `forget`: which snapshot records a keep policy removes (restic's semantics: per instance
//! id, newest first, a snapshot kept when any rule keeps it: the last N, the newest of each of
//! the last N days, ISO weeks, months that have one). It removes records only; their data
//! stays until `prune` finds it unreferenced past the grace period.
//!
//! It never counts or removes a record that is not complete (a backup in progress, a failed
//! one): only AVAILABLE and PART_BACKUP_FINISHED snapshots take part.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::archive::Format;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::store::Store;

#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub last: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last + self.daily + self.weekly + self.monthly == 0
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Forgotten {
    pub dry_run: bool,
    pub kept: Vec<String>,
    pub removed: Vec<String>,
}

/// Of one instance's snapshots (newest first), the indexes the policy keeps.
pub fn keep(times: &[time::OffsetDateTime], p: &Policy) -> HashSet<usize> {
    let mut kept = HashSet::new();
    kept.extend(0..p.last.min(times.len()));
    let mut bucket = |n: usize, key: &dyn Fn(&time::OffsetDateTime) -> (i32, u32)| {
        let mut last = None;
        let mut taken = 0;
        for (i, t) in times.iter().enumerate() {
            if taken == n {
                break;
            }
            let k = key(t);
            if last != Some(k) {
                kept.insert(i);
                taken += 1;
                last = Some(k);
            }
        }
    };
    bucket(p.daily, &|t| (t.year(), t.ordinal() as u32));
    bucket(p.weekly, &|t| {
        let (y, w, _) = t.to_iso_week_date();
        (y, w as u32)
    });
    bucket(p.monthly, &|t| (t.year(), t.month() as u32));
    kept
}

/// Apply the policy to the snapshots under `prefix` (one instance when `instance` is given).
pub fn forget(store: &dyn Store, prefix: &str, p: &Policy, instance: Option<&str>, dry_run: bool) -> Result<Forgotten> {
    if p.is_empty() {
        return Err(Error::usage(
            "give a policy: --keep-last, --keep-daily, --keep-weekly or --keep-monthly (forget keeps nothing otherwise)",
        ));
    }
    let mut groups: BTreeMap<String, Vec<(time::OffsetDateTime, String, Manifest)>> = BTreeMap::new();
    for (key, m) in crate::catalog::records(store, prefix)? {
        if m.format != Some(Format::Repo) || !m.status.archive_complete() {
            continue;
        }
        if instance.is_some_and(|i| i != m.identity.android_instance_id) {
            continue;
        }
        let Ok(t) = manifest::parse_time(&m.gmt_created) else { continue };
        groups.entry(m.identity.android_instance_id.clone()).or_default().push((t, key, m));
    }
    let mut out = Forgotten { dry_run, ..Default::default() };
    for (_, mut snaps) in groups {
        snaps.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let times: Vec<_> = snaps.iter().map(|s| s.0).collect();
        let kept = keep(&times, p);
        for (i, (_, key, m)) in snaps.into_iter().enumerate() {
            if kept.contains(&i) {
                out.kept.push(m.backup_file_id);
            } else {
                if !dry_run {
                    store.delete(&key)?;
                }
                out.removed.push(m.backup_file_id);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_policy_semantics() {
        let t = |s: &str| manifest::parse_time(s).unwrap();
        // Newest first: two a day for five days, 2024-05-06 .. 2024-05-10.
        let mut times = Vec::new();
        for d in (6..=10).rev() {
            times.push(t(&format!("2024-05-{d:02} 20:00:00")));
            times.push(t(&format!("2024-05-{d:02} 08:00:00")));
        }
        let k = keep(&times, &Policy { last: 3, ..Default::default() });
        assert_eq!(k, [0, 1, 2].into_iter().collect());
        let k = keep(&times, &Policy { daily: 3, ..Default::default() });
        assert_eq!(k, [0, 2, 4].into_iter().collect(), "the newest of each of the last three days");
        // 2024-05-06 is a Monday: one ISO week.
        let k = keep(&times, &Policy { weekly: 5, ..Default::default() });
        assert_eq!(k, [0].into_iter().collect());
        let mut two = times.clone();
        two.push(t("2024-05-05 10:00:00"));
        assert_eq!(keep(&two, &Policy { weekly: 5, ..Default::default() }), [0, 10].into_iter().collect());
        let k = keep(&times, &Policy { monthly: 1, last: 1, ..Default::default() });
        assert_eq!(k, [0].into_iter().collect());
        assert!(keep(&times, &Policy::default()).is_empty());
    }
}
