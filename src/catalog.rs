//! The backup-file catalogue: `list` and `delete` over the manifests (`*.manifest.json`) under
//! a prefix, with the semantics of Alibaba ECP's DescribeBackupFiles and DeleteBackupFile.
//! Owns the filters, the paging (an opaque NextToken that stays valid while records come and
//! go) and the order of a delete.
//!
//! The filtering and paging functions are pure; the I/O is two functions over any `Store`.
//! It must never delete a manifest before its archive (a record without an archive can be
//! listed and deleted again; an archive without a record is lost from view), and never fail a
//! whole listing because one manifest is unreadable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::Engine;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, Status};
use crate::store::Store;

pub const DEFAULT_MAX_RESULTS: usize = 10;
pub const MAX_MAX_RESULTS: usize = 100;

/// DescribeBackupFiles' request parameters. Empty strings and `None` mean "any".
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub backup_file_id: String,
    /// Substring of BackupFileName.
    pub backup_file_name: String,
    pub instance_id: String,
    /// Substring of AndroidInstanceName.
    pub instance_name: String,
    pub instance_group_id: String,
    /// Substring of Description.
    pub description: String,
    pub statuses: Vec<Status>,
    /// Records created at or after this time (`YYYY-MM-DD HH:MM:SS`, UTC).
    pub start_time: Option<String>,
    /// Records created at or before this time.
    pub end_time: Option<String>,
    pub end_user_id: String,
    pub backup_all: Option<bool>,
    /// 1 to 100; `None` is the default, 10.
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

/// One page of records: DescribeBackupFiles' answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Page {
    pub request_id: String,
    pub data: Vec<Manifest>,
    /// Empty on the last page.
    pub next_token: String,
    pub max_results: usize,
    pub total_count: usize,
}

/// A query checked and with its times parsed.
#[derive(Debug, Clone)]
pub struct Checked {
    q: Query,
    start: Option<time::OffsetDateTime>,
    end: Option<time::OffsetDateTime>,
    max_results: usize,
    after: Option<String>,
}

impl Query {
    /// Check the parameters, naming the one that is wrong and the rule it breaks.
    pub fn check(&self) -> Result<Checked> {
        let max_results = match self.max_results {
            None => DEFAULT_MAX_RESULTS,
            Some(n) if (1..=MAX_MAX_RESULTS as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(Error::usage(format!(
                    "--max-results {n}: must be from 1 to {MAX_MAX_RESULTS} (default {DEFAULT_MAX_RESULTS})"
                )))
            }
        };
        let time = |flag: &str, v: &Option<String>| -> Result<Option<time::OffsetDateTime>> {
            v.as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    manifest::parse_time(s)
                        .map_err(|_| Error::usage(format!("{flag} {s:?}: use the form YYYY-MM-DD HH:MM:SS (UTC)")))
                })
                .transpose()
        };
        let start = time("--start-time", &self.start_time)?;
        let end = time("--end-time", &self.end_time)?;
        let after = match self.next_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => Some(decode_token(t)?),
            None => None,
        };
        Ok(Checked { q: self.clone(), start, end, max_results, after })
    }
}

impl Checked {
    /// Whether a record passes every filter.
    pub fn matches(&self, m: &Manifest) -> bool {
        let q = &self.q;
        let eq = |want: &str, have: &str| want.is_empty() || want == have;
        let contains = |want: &str, have: &str| want.is_empty() || have.contains(want);
        if !eq(&q.backup_file_id, &m.backup_file_id)
            || !contains(&q.backup_file_name, &m.backup_file_name)
            || !eq(&q.instance_id, &m.identity.android_instance_id)
            || !contains(&q.instance_name, &m.identity.android_instance_name)
            || !eq(&q.instance_group_id, &m.identity.instance_group_id)
            || !contains(&q.description, &m.description)
            || !eq(&q.end_user_id, &m.identity.end_user_id)
        {
            return false;
        }
        if !q.statuses.is_empty() && !q.statuses.contains(&m.status) {
            return false;
        }
        if q.backup_all.is_some_and(|b| b != m.backup_all) {
            return false;
        }
        if self.start.is_some() || self.end.is_some() {
            // A record whose creation time cannot be read matches no time range.
            let Ok(created) = manifest::parse_time(&m.gmt_created) else { return false };
            if self.start.is_some_and(|s| created < s) || self.end.is_some_and(|e| created > e) {
                return false;
            }
        }
        true
    }

    /// One page of `records` (manifest key, record), which must be sorted by key. The page
    /// starts after the key the NextToken names, so records added or removed elsewhere do not
    /// shift it.
    pub fn page(&self, records: Vec<(String, Manifest)>) -> Page {
        let matching: Vec<(String, Manifest)> = records.into_iter().filter(|(_, m)| self.matches(m)).collect();
        let total_count = matching.len();
        let rest = matching.into_iter().filter(|(k, _)| self.after.as_ref().is_none_or(|a| k > a));
        let mut data = Vec::new();
        let mut last = None;
        let mut more = false;
        for (k, m) in rest {
            if data.len() == self.max_results {
                more = true;
                break;
            }
            last = Some(k);
            data.push(m);
        }
        let next_token = match (more, last) {
            (true, Some(k)) => encode_token(&k),
            _ => String::new(),
        };
        Page { request_id: request_id(), data, next_token, max_results: self.max_results, total_count }
    }
}

/// NextToken: the last manifest key of the page, base64url. Opaque to the caller, stable across pages.
pub fn encode_token(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub fn decode_token(token: &str) -> Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::usage(format!("--next-token {token:?} is not a token this command returned")))
}

/// A request id like the vendors': 8-4-4-4-12 upper-case hex.
pub fn request_id() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode_upper(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Every record under `prefix`, sorted by manifest key. Manifests are fetched concurrently,
/// a bounded number at a time; an unreadable one is skipped with a warning.
pub fn records(store: &dyn Store, prefix: &str) -> Result<Vec<(String, Manifest)>> {
    let keys: Vec<String> =
        store.list_top(prefix)?.into_iter().map(|o| o.key).filter(|k| k.ends_with(manifest::SUFFIX)).collect();
    let next = AtomicUsize::new(0);
    let found: Mutex<Vec<(usize, Manifest)>> = Mutex::new(Vec::with_capacity(keys.len()));
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let workers = crate::store::s3::LIST_CONCURRENCY.min(keys.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                match store.get(key) {
                    Ok(Some(bytes)) => match Manifest::from_json(key, &bytes) {
                        Ok(m) => found.lock().unwrap_or_else(|p| p.into_inner()).push((i, m)),
                        Err(e) => tracing::warn!("skipping {}: {e}", store.url(key)),
                    },
                    // Deleted between the listing and now.
                    Ok(None) => {}
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().map(|(i, m)| (keys[i].clone(), m)).collect())
}

/// `cpbackup list`.
pub fn list(store: &dyn Store, prefix: &str, q: &Query) -> Result<Page> {
    let checked = q.check()?;
    Ok(checked.page(records(store, prefix)?))
}

/// What `delete` removed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Deleted {
    pub request_id: String,
    pub backup_file_id: String,
    pub backup_file_path: String,
    pub manifest: String,
}

/// `cpbackup delete`: mark the record DELETING, remove the archive, then the record.
pub fn delete(store: &dyn Store, prefix: &str, backup_file_id: &str) -> Result<Deleted> {
    if backup_file_id.is_empty() {
        return Err(Error::usage("--backup-file-id is empty"));
    }
    let found = records(store, prefix)?.into_iter().find(|(_, m)| m.backup_file_id == backup_file_id);
    let Some((mkey, mut m)) = found else {
        return Err(Error::usage(format!("no backup file {backup_file_id:?} under {}", store.url(prefix))));
    };
    let archive = mkey.strip_suffix(manifest::SUFFIX).unwrap_or(&mkey).to_string();
    m.status = Status::Deleting;
    m.gmt_modified = manifest::format_time(time::OffsetDateTime::now_utc());
    store.put(&mkey, &m.to_json())?;
    store.delete(&archive)?;
    store.delete(&mkey)?;
    Ok(Deleted {
        request_id: request_id(),
        backup_file_id: backup_file_id.to_string(),
        backup_file_path: store.url(&archive),
        manifest: store.url(&mkey),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Identity;

    fn rec(i: usize) -> (String, Manifest) {
        let m = Manifest {
            backup_file_id: format!("bf-{i:04}"),
            backup_file_name: format!("acp-{}_{i:04}.tar.zst", i % 3),
            identity: Identity {
                android_instance_id: format!("acp-{}", i % 3),
                android_instance_name: format!("phone number {}", i % 3),
                instance_group_id: "ag-1".into(),
                end_user_id: if i % 2 == 0 { "alice".into() } else { "bob".into() },
                ..Default::default()
            },
            status: if i % 5 == 0 { Status::BackupFailed } else { Status::Available },
            description: if i % 4 == 0 { "weekly full".into() } else { "daily".into() },
            backup_all: i % 4 == 0,
            gmt_created: format!("2024-05-{:02} 10:00:00", 1 + i % 28),
            ..Default::default()
        };
        (format!("b/{i:04}.tar.zst.manifest.json"), m)
    }

    fn all(n: usize) -> Vec<(String, Manifest)> {
        (0..n).map(rec).collect()
    }

    #[test]
    fn filters() {
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query { max_results: Some(100), ..Default::default() };
            f(&mut q);
            q.check().unwrap().page(all(60))
        };
        assert_eq!(q(&|_| {}).total_count, 60);
        assert_eq!(q(&|q| q.backup_file_id = "bf-0007".into()).data[0].backup_file_id, "bf-0007");
        assert_eq!(q(&|q| q.backup_file_id = "bf-00".into()).total_count, 0, "ids match exactly");
        assert_eq!(q(&|q| q.backup_file_name = "_001".into()).total_count, 10, "names match as substrings");
        assert_eq!(q(&|q| q.instance_id = "acp-1".into()).total_count, 20);
        assert_eq!(q(&|q| q.instance_name = "number 2".into()).total_count, 20);
        assert_eq!(q(&|q| q.description = "week".into()).total_count, 15);
        assert_eq!(q(&|q| q.end_user_id = "bob".into()).total_count, 30);
        assert_eq!(q(&|q| q.backup_all = Some(true)).total_count, 15);
        assert_eq!(q(&|q| q.statuses = vec![Status::BackupFailed]).total_count, 12);
        assert_eq!(q(&|q| q.statuses = vec![Status::BackupFailed, Status::Available]).total_count, 60);
        let r = q(&|q| {
            q.start_time = Some("2024-05-02 00:00:00".into());
            q.end_time = Some("2024-05-03 10:00:00".into());
        });
        // Days 2 and 3: i % 28 in {1, 2}.
        assert_eq!(r.total_count, 6);
        let r = q(&|q| {
            q.instance_id = "acp-0".into();
            q.end_user_id = "alice".into();
            q.statuses = vec![Status::Available];
        });
        assert!(r.data.iter().all(|m| m.identity.android_instance_id == "acp-0" && m.status == Status::Available));
    }

    #[test]
    fn paging_is_stable_and_complete() {
        let records = all(250);
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let q = Query { max_results: Some(100), next_token: token.clone(), ..Default::default() };
            let p = q.check().unwrap().page(records.clone());
            assert_eq!(p.total_count, 250);
            assert_eq!(p.max_results, 100);
            seen.extend(p.data.iter().map(|m| m.backup_file_id.clone()));
            if p.next_token.is_empty() {
                break;
            }
            token = Some(p.next_token);
        }
        let want: Vec<String> = (0..250).map(|i| format!("bf-{i:04}")).collect();
        assert_eq!(seen, want);

        // A token stays valid when records before it go away.
        let q = Query { max_results: Some(10), ..Default::default() };
        let first = q.check().unwrap().page(records.clone());
        assert_eq!(first.data.len(), 10);
        let fewer: Vec<_> = records.iter().skip(3).cloned().collect();
        let q = Query { max_results: Some(10), next_token: Some(first.next_token), ..Default::default() };
        let second = q.check().unwrap().page(fewer);
        assert_eq!(second.data[0].backup_file_id, "bf-0010");

        // Exactly one page: no token.
        let q = Query::default();
        assert!(q.check().unwrap().page(all(10)).next_token.is_empty());
        assert_eq!(q.check().unwrap().page(all(11)).next_token, encode_token("b/0009.tar.zst.manifest.json"));
    }

    #[test]
    fn bad_parameters_are_named() {
        for n in [0, 101, -1] {
            let e = Query { max_results: Some(n), ..Default::default() }.check().unwrap_err();
            assert!(e.is_input() && e.to_string().contains("--max-results"), "{e}");
        }
        let e = Query { start_time: Some("2024-05-20T10:00:00Z".into()), ..Default::default() }.check().unwrap_err();
        assert!(e.to_string().contains("--start-time"), "{e}");
        let e = Query { next_token: Some("!!!".into()), ..Default::default() }.check().unwrap_err();
        assert!(e.to_string().contains("--next-token"), "{e}");
        assert_eq!(decode_token(&encode_token("a/b.manifest.json")).unwrap(), "a/b.manifest.json");
        let id = request_id();
        assert_eq!(id.len(), 36);
    }
}
