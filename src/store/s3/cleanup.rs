//! Cleanup of stale uploads: the multipart uploads that an agent killed mid-upload left open,
//! found through the records of the state directory (`pending`), aborted on the next start of
//! an upload and by `cpbackup cleanup`.
//!
//! It must never forget a record whose upload it could not abort (the next try needs it), and
//! never touch the record of an agent that is still running (`StateDir::stale` hands over only
//! records whose lock it could take).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::runtime::Runtime;

use super::address::scheme_of_kind;
use super::block_on;
use super::bucket::{abort_upload, S3Store};
use crate::error::{Error, Result};
use crate::spec::StoreOptions;
use crate::store::pending::{self, Record, StateDir};

/// What `cleanup` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cleanup {
    pub state_dir: String,
    pub aborted: Vec<String>,
    pub failed: Vec<String>,
}

/// `cpbackup cleanup`: abort every recorded upload whose agent is gone.
pub fn cleanup(opts: &StoreOptions) -> Result<Cleanup> {
    let state = StateDir::resolve(opts.state_dir.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Io { context: "starting the object-store runtime".into(), source: e })?;
    let rt = Arc::new(rt);
    let (aborted, failed) = abort_records(&rt, state.stale(), opts);
    let show = |r: &Record| format!("{}://{}/{} (upload {})", r.scheme.to_lowercase(), r.bucket, r.key, r.upload_id);
    Ok(Cleanup {
        state_dir: state.path().display().to_string(),
        aborted: aborted.iter().map(show).collect(),
        failed: failed.iter().map(show).collect(),
    })
}

/// An upload, as records name it: where its store is, its bucket, key and id.
type UploadRef = (Option<String>, String, String, String);

/// Abort the uploads of stale records (their locks held by this process meanwhile): what was
/// aborted, and what could not be (its record kept for the next try), each upload once.
///
/// Several records may name one upload: an agent killed between its two records of an upload
/// (the one written before CreateMultipartUpload, naming only the key, and the one written
/// once the store answered with the id) leaves both, and the first leads to the id through
/// ListMultipartUploads. An upload is aborted and reported at the first record that leads to
/// it; a later record naming it shares that outcome (removed if it was aborted, kept if not).
pub(super) fn abort_records(
    rt: &Arc<Runtime>,
    stale: Vec<(PathBuf, Record)>,
    opts: &StoreOptions,
) -> (Vec<Record>, Vec<Record>) {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let mut seen: HashMap<UploadRef, bool> = HashMap::new();
    for (path, rec) in stale {
        let o = StoreOptions {
            endpoint: rec.endpoint.clone(),
            region: Some(rec.region.clone()),
            path_style: rec.path_style,
            ..opts.clone()
        };
        let store = match S3Store::with_runtime(rt.clone(), scheme_of_kind(&rec.scheme), &rec.bucket, &o) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot reach the store of a left-over upload ({}): {e}", path.display());
                continue;
            }
        };
        let url = store.shared().url(&rec.key);
        // Killed while asking for an upload id: whatever the store opened under this key
        // (unique to that backup) is that run's. A store that cannot list uploads leaves it to
        // the bucket's lifecycle rule.
        let ids = if rec.upload_id.is_empty() {
            match store.open_uploads(&rec.key) {
                Ok(open) => open.into_iter().filter(|(k, _)| *k == rec.key).map(|(_, id)| id).collect(),
                Err(e) => {
                    tracing::warn!("could not list the uploads of {url} to abort: {e}");
                    Vec::new()
                }
            }
        } else {
            vec![rec.upload_id.clone()]
        };
        let mut all_done = true;
        for id in ids {
            let upload = (rec.endpoint.clone(), rec.bucket.clone(), rec.key.clone(), id.clone());
            if let Some(&aborted) = seen.get(&upload) {
                all_done &= aborted;
                continue;
            }
            let sh = store.shared();
            let aborted = match block_on(rt, async { abort_upload(&sh, &rec.key, &id).await }) {
                Ok(()) => {
                    tracing::info!("aborted the upload {url} left by an earlier run (pid {})", rec.pid);
                    done.push(Record { upload_id: id, ..rec.clone() });
                    true
                }
                Err(e) => {
                    tracing::warn!("could not abort the upload {url} left by an earlier run: {e}");
                    failed.push(Record { upload_id: id, ..rec.clone() });
                    false
                }
            };
            all_done &= aborted;
            seen.insert(upload, aborted);
        }
        if all_done {
            pending::remove(&path);
        }
    }
    (done, failed)
}
