//! `forget`: which snapshot records a keep policy removes, per instance id, by `crate::keep`
//! (restic's semantics, shared with the daemon's schedules). It removes records only; their data
//! stays until `prune` finds it unreferenced past the grace period.
//!
//! It never counts or removes a record that is not complete (a backup in progress, a failed
//! one): only AVAILABLE and PART_BACKUP_FINISHED snapshots take part.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::archive::Format;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::store::Store;

pub use crate::keep::Policy;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Forgotten {
    pub dry_run: bool,
    pub kept: Vec<String>,
    pub removed: Vec<String>,
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
        let kept = p.keeps(&times);
        for ((_, key, m), kept) in snaps.into_iter().zip(kept) {
            if kept {
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
