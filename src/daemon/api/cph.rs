//! Huawei CPH's shapes: `POST /cph/batch-storage` and `/cph/batch-restore` (one job per info),
//! `GET /cph/jobs/{job_id}` and `GET /cph/jobs?request_id=…`, with the snake_case names of the
//! vendor's documentation, their checks, the tasks they become, and the answers as typed
//! structs.
//!
//! It never starts a job of a batch before every info of this phone in it was checked.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{bad, check_location, check_paths, check_reachable, parse, submit, ApiError};
use crate::archive::Format;
use crate::catalog::request_id;
use crate::daemon::config::Config;
use crate::daemon::protect::{self, Asked};
use crate::daemon::runner::Runner;
use crate::daemon::task::{new_task_id, Api, Task, TaskStatus, TaskType, Work};
use crate::manifest;
use crate::secret::Secret;
use crate::spec::{Destination, ExportSpec, ImportSpec};
use crate::store;

// ---------------------------------------------------------------- requests

#[derive(Deserialize)]
struct CphStorage {
    storage_infos: Vec<StorageInfo>,
}

#[derive(Deserialize)]
pub(super) struct StorageInfo {
    phone_id: String,
    include_files: Vec<String>,
    #[serde(default)]
    exclude_files: Vec<String>,
    bucket_name: String,
    object_path: String,
    /// age recipients to seal the archive for, instead of the agent's configured ones.
    #[serde(default)]
    encryption_recipients: Vec<String>,
    /// `AES256` or `KMS`, instead of the configured store encryption.
    #[serde(default)]
    server_side_encryption: Option<String>,
    #[serde(default)]
    sse_kms_key_id: Option<String>,
    /// Bytes per second (`20M`), instead of the configured `limit_rate`.
    #[serde(default)]
    limit_rate: Option<String>,
    /// `tar` (CPH's own), `tar.zst`, or `repo`: a snapshot into `object_path`, a folder.
    #[serde(default)]
    format: Option<String>,
}

impl StorageInfo {
    /// The format asked for, else the object's extension, else the config's `format`, else
    /// CPH's tar. A snapshot needs a folder.
    fn format(&self, cfg: &Config, field: &str) -> Result<Format, ApiError> {
        let format = match self.format.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => match Format::parse(f) {
                Ok(Format::Ab) | Err(_) => {
                    return Err(bad(Api::Cph, format!("{field}.format {f:?}: use tar, tar.zst or repo")))
                }
                Ok(f) => f,
            },
            None => Format::from_name(&self.object_path).or(cfg.protection.format).unwrap_or(Format::Tar),
        };
        if format == Format::Repo && !self.object_path.ends_with('/') {
            return Err(bad(
                Api::Cph,
                format!("{field}.object_path: format repo writes into a folder (the repository): end it with /"),
            ));
        }
        Ok(format)
    }

    fn asked(&self) -> Asked {
        Asked {
            recipients: self.encryption_recipients.clone(),
            sse: self.server_side_encryption.clone(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            limit_rate: self.limit_rate.clone(),
            identity: None,
        }
    }
}

#[derive(Deserialize)]
struct CphRestore {
    restore_infos: Vec<RestoreInfo>,
}

#[derive(Deserialize)]
pub(super) struct RestoreInfo {
    phone_id: String,
    bucket_name: String,
    object_path: String,
    /// The text of an age identity file that opens a sealed archive: in memory for this job
    /// only, never journaled, logged or sent back.
    #[serde(default, deserialize_with = "protect::secret_field")]
    decryption_identity: Option<Secret>,
    #[serde(default)]
    limit_rate: Option<String>,
    /// Restore just these paths (and what is under them); all when empty.
    #[serde(default)]
    include_files: Vec<String>,
}

impl RestoreInfo {
    fn asked(&self) -> Asked {
        Asked { limit_rate: self.limit_rate.clone(), identity: self.decryption_identity.clone(), ..Default::default() }
    }
}

#[derive(Deserialize)]
pub(super) struct JobsQuery {
    request_id: Option<String>,
}

// ---------------------------------------------------------------- answers

/// One entry of `jobs` in a batch's answer: this phone's job, or why another phone's info is
/// not run here.
#[derive(Debug, Serialize)]
struct JobEntry {
    phone_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_msg: Option<String>,
}

/// The answer to batch-storage and batch-restore.
#[derive(Debug, Serialize)]
pub(super) struct Batch {
    request_id: String,
    jobs: Vec<JobEntry>,
}

/// A job as `GET /cph/jobs` shows it.
#[derive(Debug, Serialize)]
pub(super) struct Job {
    job_id: String,
    request_id: String,
    phone_id: String,
    server_id: String,
    /// 1 running, 2 success, -1 failed.
    status: i32,
    begin_time: String,
    end_time: String,
    error_code: String,
    error_msg: String,
    execute_msg: String,
}

impl From<&Task> for Job {
    fn from(t: &Task) -> Job {
        let failed = t.status == TaskStatus::Failed;
        let execute_msg: String = if failed {
            t.error_msg.chars().take(1024).collect()
        } else {
            format!("{}% ({} bytes)", t.progress.percent, t.progress.bytes)
        };
        Job {
            job_id: t.task_id.clone(),
            request_id: t.request_id.clone(),
            phone_id: t.instance_id.clone(),
            server_id: String::new(),
            status: t.status.cph_status(),
            begin_time: t.start_time.clone(),
            end_time: t.finish_time.clone(),
            error_code: if failed { t.error_code.clone() } else { String::new() },
            error_msg: if failed { t.error_msg.clone() } else { String::new() },
            execute_msg,
        }
    }
}

/// The answer to `GET /cph/jobs?request_id=…`.
#[derive(Debug, Serialize)]
pub(super) struct Jobs {
    request_id: String,
    jobs: Vec<Job>,
}

// ---------------------------------------------------------------- checks

/// What batch-storage's and batch-restore's infos have in common: the phone and the object,
/// and the checks of their own fields.
pub(super) trait Info {
    /// The request's list of them.
    const WHAT: &'static str;
    fn phone_id(&self) -> &str;
    /// `obs://BUCKET/OBJECT_PATH`
    fn object(&self) -> String;
    /// The command line's rules over the info's other fields; `field` names the info in the
    /// request (`storage_infos[1]`).
    fn check(&self, field: &str) -> Result<(), ApiError>;
}

impl Info for StorageInfo {
    const WHAT: &'static str = "storage_infos";
    fn phone_id(&self) -> &str {
        &self.phone_id
    }
    fn object(&self) -> String {
        format!("obs://{}/{}", self.bucket_name, self.object_path)
    }
    fn check(&self, field: &str) -> Result<(), ApiError> {
        if self.include_files.is_empty() {
            return Err(bad(Api::Cph, format!("{field}.include_files is empty: name at least one path")));
        }
        check_paths(Api::Cph, &format!("{field}.include_files"), &self.include_files)?;
        check_paths(Api::Cph, &format!("{field}.exclude_files"), &self.exclude_files)?;
        if let Some(f) = self
            .format
            .as_deref()
            .filter(|f| !matches!(Format::parse(f), Ok(Format::Tar | Format::TarZst | Format::Repo)))
        {
            return Err(bad(Api::Cph, format!("{field}.format {f:?}: use tar, tar.zst or repo")));
        }
        self.asked().check(&protect::CPH).map_err(|e| bad(Api::Cph, format!("{field}.{e}")))
    }
}

impl Info for RestoreInfo {
    const WHAT: &'static str = "restore_infos";
    fn phone_id(&self) -> &str {
        &self.phone_id
    }
    fn object(&self) -> String {
        format!("obs://{}/{}", self.bucket_name, self.object_path)
    }
    fn check(&self, field: &str) -> Result<(), ApiError> {
        check_paths(Api::Cph, &format!("{field}.include_files"), &self.include_files)?;
        self.asked().check(&protect::CPH).map_err(|e| bad(Api::Cph, format!("{field}.{e}")))
    }
}

/// A batch's infos, all checked before any job is submitted: each of this phone's with the
/// object it names, any other phone's with `None` (answered with `CPS.0004` in its entry).
fn check_infos<I: Info>(instance_id: &str, infos: Vec<I>) -> Result<Vec<(I, Option<String>)>, ApiError> {
    let what = I::WHAT;
    if infos.is_empty() {
        return Err(ApiError::cph(StatusCode::BAD_REQUEST, "CPS.0009", format!("{what} is empty")));
    }
    let mut checked = Vec::with_capacity(infos.len());
    for (i, info) in infos.into_iter().enumerate() {
        let object = if info.phone_id() == instance_id {
            let field = format!("{what}[{i}]");
            let object = info.object();
            check_location(Api::Cph, &field, &object, None)?;
            info.check(&field)?;
            Some(object)
        } else {
            None
        };
        checked.push((info, object));
    }
    Ok(checked)
}

pub(super) fn storage_infos(instance_id: &str, body: &[u8]) -> Result<Vec<(StorageInfo, Option<String>)>, ApiError> {
    let req: CphStorage = parse(body, Api::Cph)?;
    check_infos(instance_id, req.storage_infos)
}

pub(super) fn restore_infos(instance_id: &str, body: &[u8]) -> Result<Vec<(RestoreInfo, Option<String>)>, ApiError> {
    let req: CphRestore = parse(body, Api::Cph)?;
    check_infos(instance_id, req.restore_infos)
}

// ---------------------------------------------------------------- the tasks a request makes

/// The export a checked storage info makes, writing to `to`.
fn storage_task(cfg: &Config, info: StorageInfo, to: String) -> Result<Task, ApiError> {
    let task_id = new_task_id();
    let bf = manifest::new_backup_file_id();
    let format = info.format(cfg, StorageInfo::WHAT)?;
    let (sealing, _, store) = cfg
        .protection
        .for_task(cfg.store_options(None), &info.asked(), &protect::CPH)
        .map_err(|e| bad(Api::Cph, e.to_string()))?;
    // A snapshot goes into the folder (the repository) under a record name made now, so the
    // job knows its record from the start.
    let name = (format == Format::Repo)
        .then(|| store::name_in_folder(None, &cfg.instance_id, time::OffsetDateTime::now_utc(), format.extension()));
    let backup_file_path = match &name {
        Some(n) => format!("{to}{n}"),
        None => to.clone(),
    };
    let id_key = cfg.protection.id_key_for(Some(format), &sealing);
    let dest = Destination {
        to,
        name,
        root: cfg.root.clone(),
        identity: cfg.identity(&task_id),
        store,
        backup_file_id: Some(bf.clone()),
        sealing,
        ..Default::default()
    };
    let spec = ExportSpec::new(dest, info.include_files, info.exclude_files, false);
    Ok(Task {
        task_id,
        task_type: TaskType::BackupFile,
        backup_file_id: bf,
        backup_file_path,
        work: Some(Work::Export { spec: ExportSpec { format: Some(format), id_key, ..spec } }),
        ..Default::default()
    })
}

/// The import a checked restore info makes, reading `from`.
fn restore_task(cfg: &Config, info: RestoreInfo, from: String) -> Result<Task, ApiError> {
    let (_, opening, store) = cfg
        .protection
        .for_task(cfg.store_options(None), &info.asked(), &protect::CPH)
        .map_err(|e| bad(Api::Cph, e.to_string()))?;
    let needs_identity = !opening.is_empty();
    let includes = info.include_files;
    let spec =
        ImportSpec { from: from.clone(), root: cfg.root.clone(), store, opening, includes, ..Default::default() };
    Ok(Task {
        task_id: new_task_id(),
        task_type: TaskType::RecoverFile,
        backup_file_path: from,
        needs_identity,
        work: Some(Work::Import { spec, backup_file_id: None }),
        ..Default::default()
    })
}

// ---------------------------------------------------------------- handlers

/// One job per info: this phone's become tasks (`task` gets the info and its checked object),
/// any other phone gets `CPS.0004` in its entry.
fn batch<I: Info>(
    r: &Runner,
    headers: &HeaderMap,
    infos: Vec<(I, Option<String>)>,
    task: impl Fn(I, String) -> Result<Task, ApiError>,
) -> Result<Json<Batch>, ApiError> {
    for (i, (_, object)) in infos.iter().enumerate() {
        if let Some(object) = object {
            check_reachable(Api::Cph, &format!("{}[{i}]", I::WHAT), &r.cfg, object, None)?;
        }
    }
    let request_id = request_id();
    let token = client_token(headers);
    // Every job made before any is submitted: a batch starts whole or not at all.
    let mut made = Vec::with_capacity(infos.len());
    for (i, (info, object)) in infos.into_iter().enumerate() {
        let phone_id = info.phone_id().to_string();
        let t = object.map(|object| task(info, object)).transpose()?;
        made.push((i, phone_id, t));
    }
    let mut jobs = Vec::new();
    for (i, phone_id, t) in made {
        let Some(mut t) = t else {
            let error_msg = format!("Invalid phone id: {phone_id} is not this phone");
            jobs.push(JobEntry {
                phone_id,
                job_id: None,
                error_code: Some("CPS.0004".into()),
                error_msg: Some(error_msg),
            });
            continue;
        };
        t.request_id = request_id.clone();
        t.client_token = token.as_ref().map(|t| format!("{t}-{i}")).unwrap_or_default();
        t.api = Api::Cph;
        t.instance_id = r.cfg.instance_id.clone();
        let t = submit(r, t)?;
        jobs.push(JobEntry { phone_id, job_id: Some(t.task_id), error_code: None, error_msg: None });
    }
    Ok(Json(Batch { request_id, jobs }))
}

pub(super) async fn storage(
    State(r): State<Arc<Runner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Batch>, ApiError> {
    let infos = storage_infos(&r.cfg.instance_id, &body)?;
    batch(&r, &headers, infos, |info, to| storage_task(&r.cfg, info, to))
}

pub(super) async fn restore(
    State(r): State<Arc<Runner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Batch>, ApiError> {
    let infos = restore_infos(&r.cfg.instance_id, &body)?;
    batch(&r, &headers, infos, |info, from| restore_task(&r.cfg, info, from))
}

/// An idempotency key from the request headers (`X-Client-Token`, or `X-Request-Id`).
fn client_token(h: &HeaderMap) -> Option<String> {
    ["x-client-token", "x-request-id"]
        .iter()
        .find_map(|k| h.get(*k).and_then(|v| v.to_str().ok()).map(str::to_string))
        .filter(|s| !s.is_empty())
}

pub(super) async fn job(State(r): State<Arc<Runner>>, Path(job_id): Path<String>) -> Result<Json<Job>, ApiError> {
    let t = r
        .get(&job_id)
        .ok_or_else(|| ApiError::cph(StatusCode::NOT_FOUND, "CPS.0010", format!("job {job_id} not found")))?;
    Ok(Json(Job::from(&t)))
}

pub(super) async fn jobs(State(r): State<Arc<Runner>>, Query(q): Query<JobsQuery>) -> Result<Json<Jobs>, ApiError> {
    let rid = q.request_id.filter(|s| !s.is_empty()).ok_or_else(|| bad(Api::Cph, "request_id is required".into()))?;
    let jobs = r.all().iter().filter(|t| t.request_id == rid).map(Job::from).collect();
    Ok(Json(Jobs { request_id: rid, jobs }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The answers are what the `json!` literals of the first version wrote, value for value
    /// (these strings are that version's output for the same task).
    #[test]
    fn answers_keep_their_shapes() {
        let mut t = crate::daemon::api::ecp::tests::full_task();
        let golden = r#"{"begin_time":"s0","end_time":"f0","error_code":"E","error_msg":"boom","execute_msg":"boom","job_id":"t-1","phone_id":"acp-1","request_id":"r-1","server_id":"","status":-1}"#;
        assert_eq!(serde_json::to_value(Job::from(&t)).unwrap(), serde_json::from_str::<Value>(golden).unwrap());
        t.status = TaskStatus::Processing;
        let golden = r#"{"begin_time":"s0","end_time":"f0","error_code":"","error_msg":"","execute_msg":"50% (1 bytes)","job_id":"t-1","phone_id":"acp-1","request_id":"r-1","server_id":"","status":1}"#;
        assert_eq!(serde_json::to_value(Job::from(&t)).unwrap(), serde_json::from_str::<Value>(golden).unwrap());
        let entries = vec![
            JobEntry { phone_id: "p".into(), job_id: Some("t-1".into()), error_code: None, error_msg: None },
            JobEntry {
                phone_id: "p".into(),
                job_id: None,
                error_code: Some("CPS.0004".into()),
                error_msg: Some("m".into()),
            },
        ];
        assert_eq!(
            serde_json::to_value(Batch { request_id: "r".into(), jobs: entries }).unwrap(),
            json!({"request_id": "r", "jobs": [{"job_id": "t-1", "phone_id": "p"}, {"error_code": "CPS.0004", "error_msg": "m", "phone_id": "p"}]})
        );
    }
}
