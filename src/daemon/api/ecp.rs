//! Alibaba ECP's shapes (`POST /ecp/ACTION`): the request bodies of BackupFile, BackupApp,
//! RecoveryFile, RecoverApp, DescribeBackupFiles, DeleteBackupFile and DescribeTasks with the
//! documented parameter names, their checks, the tasks they become, and the answers as typed
//! structs (PascalCase, as the vendor's documentation writes them).
//!
//! It never submits a task before the whole request was checked, and never answers for
//! another phone than this one (those entries say so in `Data`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{bad, check_location, check_packages, check_paths, check_reachable, parse, submit, ApiError};
use crate::archive::Format;
use crate::catalog::{self, request_id};
use crate::daemon::config::Config;
use crate::daemon::protect::{self, Asked};
use crate::daemon::runner::Runner;
use crate::daemon::task::{new_task_id, Api, Task, TaskProgress, Work};
use crate::manifest::{self, Status};
use crate::secret::Secret;
use crate::spec::{BackupAppSpec, Destination, ExportSpec, ImportSpec, RecoverAppSpec, StoreOptions};
use crate::store::{self, Location};

// ---------------------------------------------------------------- requests

/// BackupFile and BackupApp.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct EcpBackup {
    pub android_instance_id_list: Vec<String>,
    pub backup_file_path: String,
    pub backup_all: bool,
    pub backup_file_name: Option<String>,
    pub description: String,
    pub source_file_path_list: Vec<String>,
    pub exclude_source_file_path_list: Vec<String>,
    pub source_app_list: Vec<String>,
    pub upload_endpoint: Option<String>,
    pub upload_type: Option<String>,
    pub client_token: String,
    pub callback_url: String,
    /// age recipients to seal the archive for, instead of the agent's configured ones.
    pub encryption_recipients: Vec<String>,
    /// `AES256` or `KMS`: the store's encryption, instead of the configured one.
    pub server_side_encryption: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Bytes per second (`20M`), instead of the configured `limit_rate`.
    pub limit_rate: Option<String>,
    /// `tar.zst`, `tar` or `repo` (a snapshot into the folder), instead of the configured one.
    pub format: Option<String>,
}

impl EcpBackup {
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

/// RecoveryFile and RecoverApp.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct EcpRecover {
    android_instance_id_list: Vec<String>,
    backup_file_id: Option<String>,
    backup_file_path: String,
    upload_endpoint: Option<String>,
    upload_type: Option<String>,
    client_token: String,
    callback_url: String,
    /// RecoverApp only: restrict to these packages.
    source_app_list: Vec<String>,
    /// The text of an age identity file that opens a sealed archive. Kept in memory for this
    /// task only: never journaled, logged or sent back.
    #[serde(deserialize_with = "protect::secret_field")]
    decryption_identity: Option<Secret>,
    limit_rate: Option<String>,
    /// RecoveryFile only: restore just these paths (and what is under them); all when empty.
    source_file_path_list: Vec<String>,
}

impl EcpRecover {
    fn asked(&self) -> Asked {
        Asked { limit_rate: self.limit_rate.clone(), identity: self.decryption_identity.clone(), ..Default::default() }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DescribeBackupFilesReq {
    backup_file_id: String,
    backup_file_name: String,
    android_instance_id: String,
    android_instance_name: String,
    instance_group_id: String,
    description: String,
    status_list: Vec<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    end_user_id: String,
    backup_all: Option<bool>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DeleteReq {
    backup_file_id_list: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct DescribeTasksReq {
    task_ids: Vec<String>,
    task_status: Option<String>,
    task_statuses: Vec<String>,
    task_type: Option<String>,
    task_types: Vec<String>,
    invoke_id: Option<String>,
    parent_task_id: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

// ---------------------------------------------------------------- answers

/// One entry of `Data` in the answer to BackupFile, BackupApp, RecoveryFile and RecoverApp:
/// this phone's task, or why another phone named in the request is not answered here.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceEntry {
    android_instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_file_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl InstanceEntry {
    fn task(instance_id: &str, t: &Task, backup_file_name: Option<String>) -> InstanceEntry {
        InstanceEntry {
            android_instance_id: instance_id.to_string(),
            backup_file_id: backup_file_name.as_ref().map(|_| t.backup_file_id.clone()),
            backup_file_name,
            task_id: Some(t.task_id.clone()),
            code: None,
            message: None,
        }
    }

    fn not_here(other: &str, instance_id: &str) -> InstanceEntry {
        InstanceEntry {
            android_instance_id: other.to_string(),
            backup_file_id: None,
            backup_file_name: None,
            task_id: None,
            code: Some("InvalidAndroidInstanceId.NotFound".into()),
            message: Some(format!("{other} is not this phone ({instance_id})")),
        }
    }
}

/// The answer to BackupFile, BackupApp, RecoveryFile and RecoverApp: the batch task and one
/// entry per phone named.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Batch {
    request_id: String,
    task_id: String,
    count: usize,
    data: Vec<InstanceEntry>,
}

/// A task as DescribeTasks shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EcpTask {
    task_id: String,
    parent_task_id: String,
    level: u32,
    task_type: &'static str,
    task_status: &'static str,
    instance_id: String,
    resource_id: String,
    invoke_id: String,
    start_time: String,
    finish_time: String,
    result: String,
    error_code: String,
    error_msg: String,
    backup_file_id: String,
    progress: TaskProgress,
}

impl From<&Task> for EcpTask {
    fn from(t: &Task) -> EcpTask {
        EcpTask {
            task_id: t.task_id.clone(),
            parent_task_id: t.parent_task_id.clone(),
            level: 2,
            task_type: t.task_type.as_str(),
            task_status: t.status.as_str(),
            instance_id: t.instance_id.clone(),
            resource_id: t.instance_id.clone(),
            invoke_id: t.request_id.clone(),
            start_time: t.start_time.clone(),
            finish_time: t.finish_time.clone(),
            result: t.result.clone(),
            error_code: t.error_code.clone(),
            error_msg: t.error_msg.clone(),
            backup_file_id: t.backup_file_id.clone(),
            progress: t.progress.clone(),
        }
    }
}

/// `{RequestId, Data: [task]}`: the answer of `GET` and `DELETE /tasks/{id}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tasks {
    request_id: String,
    data: Vec<EcpTask>,
}

impl Tasks {
    pub fn one(t: &Task) -> Tasks {
        Tasks { request_id: request_id(), data: vec![t.into()] }
    }
}

/// DescribeTasks' answer: one page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskPage {
    request_id: String,
    data: Vec<EcpTask>,
    total_count: usize,
    max_results: usize,
    next_token: String,
}

/// DeleteBackupFile's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Deleted {
    request_id: String,
}

// ---------------------------------------------------------------- checks

/// An ECP action's body, parsed and checked: what its handler acts on. For BackupFile /
/// BackupApp and RecoveryFile / RecoverApp, whether the request names this phone (`mine`) and
/// the entries answering for the other phones it names.
pub(super) enum Ecp {
    Backup { app: bool, req: EcpBackup, mine: bool, others: Vec<InstanceEntry> },
    Recover { app: bool, req: EcpRecover, mine: bool, others: Vec<InstanceEntry> },
    DescribeBackupFiles(catalog::Checked),
    DeleteBackupFile(Vec<String>),
    DescribeTasks(DescribeTasksReq, usize),
}

/// Parse and check an ECP action's body: every check that needs nothing but this phone's id,
/// before anything is submitted or a store is touched.
pub(super) fn check(instance_id: &str, action: &str, body: &[u8]) -> Result<Ecp, ApiError> {
    Ok(match action {
        "BackupFile" | "BackupApp" => {
            let req: EcpBackup = parse(body, Api::Ecp)?;
            let app = action == "BackupApp";
            let (mine, others) = check_backup(instance_id, app, &req)?;
            Ecp::Backup { app, req, mine, others }
        }
        "RecoveryFile" | "RecoverApp" => {
            let req: EcpRecover = parse(body, Api::Ecp)?;
            let (mine, others) = check_recover(instance_id, &req)?;
            Ecp::Recover { app: action == "RecoverApp", req, mine, others }
        }
        "DescribeBackupFiles" => Ecp::DescribeBackupFiles(describe_backup_files_query(body)?),
        "DeleteBackupFile" => Ecp::DeleteBackupFile(delete_ids(body)?),
        "DescribeTasks" => {
            let (req, max) = describe_tasks_req(body)?;
            Ecp::DescribeTasks(req, max)
        }
        other => return Err(unknown_action(other)),
    })
}

fn unknown_action(action: &str) -> ApiError {
    ApiError::ecp(
        StatusCode::NOT_FOUND,
        "InvalidAction.NotFound",
        format!("unknown action {action:?}: use BackupFile, RecoveryFile, BackupApp, RecoverApp, DescribeBackupFiles, DeleteBackupFile or DescribeTasks"),
    )
}

/// Whether AndroidInstanceIdList names this phone, and an entry for each other phone it names.
fn split_instances(instance_id: &str, list: &[String]) -> Result<(bool, Vec<InstanceEntry>), ApiError> {
    if list.is_empty() {
        return Err(bad(Api::Ecp, "AndroidInstanceIdList is empty: name this phone's instance id".into()));
    }
    let mine = list.iter().any(|i| *i == instance_id);
    let others = list.iter().filter(|i| **i != instance_id).map(|i| InstanceEntry::not_here(i, instance_id)).collect();
    Ok((mine, others))
}

fn check_upload_type(t: &Option<String>) -> Result<(), ApiError> {
    match t.as_deref() {
        None | Some("") | Some("OSS") | Some("OBS") | Some("S3") | Some("FILE") => Ok(()),
        Some(other) => Err(bad(Api::Ecp, format!("UploadType {other:?} is not supported: use OSS"))),
    }
}

/// BackupFile / BackupApp: the checks that need nothing but this phone's id, the command
/// line's rules among them. Whether the request names this phone, and the entries for the
/// other phones it names.
fn check_backup(instance_id: &str, app: bool, req: &EcpBackup) -> Result<(bool, Vec<InstanceEntry>), ApiError> {
    let (mine, others) = split_instances(instance_id, &req.android_instance_id_list)?;
    if req.backup_file_path.is_empty() {
        return Err(bad(Api::Ecp, "BackupFilePath is required (oss://BUCKET/FOLDER/ or oss://BUCKET/NAME.ab)".into()));
    }
    check_upload_type(&req.upload_type)?;
    let endpoint = req.upload_endpoint.as_deref();
    check_location(Api::Ecp, "BackupFilePath", &req.backup_file_path, endpoint)?;
    if !mine {
        return Ok((mine, others));
    }
    if let Some(name) = req.backup_file_name.as_deref().filter(|_| req.backup_file_path.ends_with('/')) {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(bad(Api::Ecp, format!("BackupFileName {name:?}: give a file name, without '/'")));
        }
        check_location(Api::Ecp, "BackupFileName", &format!("{}{name}", req.backup_file_path), None)?;
    }
    if app {
        if req.source_app_list.is_empty() {
            return Err(bad(Api::Ecp, "SourceAppList is empty: name at least one package".into()));
        }
        check_packages(Api::Ecp, "SourceAppList", &req.source_app_list)?;
    } else {
        if !req.backup_all && req.source_file_path_list.is_empty() {
            return Err(bad(Api::Ecp, "SourceFilePathList is empty and BackupAll is false: nothing to back up".into()));
        }
        if req.backup_all && !req.source_file_path_list.is_empty() {
            return Err(bad(
                Api::Ecp,
                "SourceFilePathList names paths and BackupAll is true: give one or the other (BackupAll takes the whole of /data)".into(),
            ));
        }
        check_paths(Api::Ecp, "SourceFilePathList", &req.source_file_path_list)?;
        check_paths(Api::Ecp, "ExcludeSourceFilePathList", &req.exclude_source_file_path_list)?;
    }
    req.asked().check(&protect::ECP).map_err(|e| bad(Api::Ecp, e.to_string()))?;
    Ok((mine, others))
}

/// RecoveryFile / RecoverApp: the checks that need nothing but this phone's id.
fn check_recover(instance_id: &str, req: &EcpRecover) -> Result<(bool, Vec<InstanceEntry>), ApiError> {
    let (mine, others) = split_instances(instance_id, &req.android_instance_id_list)?;
    if req.backup_file_path.is_empty() {
        return Err(bad(Api::Ecp, "BackupFilePath is required".into()));
    }
    check_upload_type(&req.upload_type)?;
    check_location(Api::Ecp, "BackupFilePath", &req.backup_file_path, req.upload_endpoint.as_deref())?;
    if req.backup_file_path.ends_with('/') && req.backup_file_id.as_deref().unwrap_or("").is_empty() {
        return Err(bad(Api::Ecp, "BackupFilePath is a folder: give BackupFileId too".into()));
    }
    if mine {
        check_packages(Api::Ecp, "SourceAppList", &req.source_app_list)?;
        check_paths(Api::Ecp, "SourceFilePathList", &req.source_file_path_list)?;
        req.asked().check(&protect::ECP).map_err(|e| bad(Api::Ecp, e.to_string()))?;
    }
    Ok((mine, others))
}

/// DescribeBackupFiles' body as a checked catalogue query.
fn describe_backup_files_query(body: &[u8]) -> Result<catalog::Checked, ApiError> {
    let req: DescribeBackupFilesReq = if body.is_empty() { Default::default() } else { parse(body, Api::Ecp)? };
    let statuses = req
        .status_list
        .iter()
        .map(|s| Status::parse(s))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(|e| bad(Api::Ecp, format!("StatusList: {e}")))?;
    let q = catalog::Query {
        backup_file_id: req.backup_file_id,
        backup_file_name: req.backup_file_name,
        instance_id: req.android_instance_id,
        instance_name: req.android_instance_name,
        instance_group_id: req.instance_group_id,
        description: req.description,
        statuses,
        start_time: req.start_time,
        end_time: req.end_time,
        end_user_id: req.end_user_id,
        backup_all: req.backup_all,
        max_results: req.max_results,
        next_token: req.next_token,
    };
    q.check().map_err(|e| bad(Api::Ecp, e.to_string()))
}

/// DeleteBackupFile's body: the ids to delete, at least one.
fn delete_ids(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let req: DeleteReq = parse(body, Api::Ecp)?;
    if req.backup_file_id_list.is_empty() {
        return Err(bad(Api::Ecp, "BackupFileIdList is empty".into()));
    }
    Ok(req.backup_file_id_list)
}

/// DescribeTasks' body and its page size.
fn describe_tasks_req(body: &[u8]) -> Result<(DescribeTasksReq, usize), ApiError> {
    let req: DescribeTasksReq = if body.is_empty() { Default::default() } else { parse(body, Api::Ecp)? };
    let max = match req.max_results {
        None => 10,
        Some(n) if (1..=100).contains(&n) => n as usize,
        Some(n) => return Err(bad(Api::Ecp, format!("MaxResults {n} is out of range: use 1 to 100"))),
    };
    Ok((req, max))
}

/// A schedule's body: a BackupFile / BackupApp request for this phone, checked as one (the
/// error names the field, `body.SourceFilePathList[1]: …`). `AndroidInstanceIdList` may be
/// left out; it names this phone.
pub(crate) fn schedule_body(cfg: &Config, app: bool, body: &serde_json::Value) -> Result<EcpBackup, String> {
    let mut req: EcpBackup = serde_json::from_value(body.clone()).map_err(|e| format!("body: {e}"))?;
    if req.android_instance_id_list.is_empty() {
        req.android_instance_id_list = vec![cfg.instance_id.clone()];
    } else if req.android_instance_id_list != [cfg.instance_id.as_str()] {
        return Err(format!(
            "body.AndroidInstanceIdList: a schedule runs on this phone ({}) alone; leave it out",
            cfg.instance_id
        ));
    }
    check_backup(&cfg.instance_id, app, &req).map_err(|e| format!("body.{}", e.message))?;
    check_reachable(Api::Ecp, "BackupFilePath", cfg, &req.backup_file_path, req.upload_endpoint.as_deref())
        .map_err(|e| format!("body.{}", e.message))?;
    Ok(req)
}

// ---------------------------------------------------------------- the tasks a request makes

/// The format a BackupFile writes: the request's `Format`, else the config's `format`, else
/// `tar.zst`; a snapshot (`repo`) needs a folder. BackupApp writes Android's `.ab`.
fn backup_format(cfg: &Config, app: bool, req: &EcpBackup) -> Result<Format, ApiError> {
    let asked = req.format.as_deref().filter(|f| !f.is_empty());
    if app {
        return match asked {
            None | Some("ab") => Ok(Format::Ab),
            Some(other) => {
                Err(bad(Api::Ecp, format!("Format {other:?}: BackupApp writes Android's .ab; leave Format out")))
            }
        };
    }
    let format = match asked {
        Some(f) => match Format::parse(f) {
            Ok(Format::Ab) | Err(_) => {
                return Err(bad(
                    Api::Ecp,
                    format!("Format {f:?}: use tar.zst (the default), tar, or repo (a snapshot)"),
                ))
            }
            Ok(f) => f,
        },
        None => cfg.protection.format.unwrap_or(Format::TarZst),
    };
    if format == Format::Repo && !req.backup_file_path.ends_with('/') {
        return Err(bad(
            Api::Ecp,
            "Format repo: BackupFilePath must be the repository's folder, ending with / (oss://BUCKET/FLEET/)".into(),
        ));
    }
    Ok(format)
}

/// The task a checked BackupFile / BackupApp request makes on this phone (`parent` is the
/// request's batch task), and the name of the archive it will write. The object is named now,
/// so the task knows its manifest's key from the start.
pub(crate) fn backup_task(cfg: &Config, app: bool, req: &EcpBackup, parent: &str) -> Result<(Task, String), ApiError> {
    let task_id = new_task_id();
    let bf = manifest::new_backup_file_id();
    let (sealing, _, store) = cfg
        .protection
        .for_task(cfg.store_options(req.upload_endpoint.as_deref()), &req.asked(), &protect::ECP)
        .map_err(|e| bad(Api::Ecp, e.to_string()))?;
    let format = backup_format(cfg, app, req)?;
    let ext = match (format, sealing.is_some()) {
        (Format::Repo, _) | (_, false) => format.extension().to_string(),
        (_, true) => format!("{}.age", format.extension()),
    };
    let folder = req.backup_file_path.ends_with('/');
    let (to, name) = if folder {
        let now = time::OffsetDateTime::now_utc();
        let name = store::name_in_folder(req.backup_file_name.as_deref(), &cfg.instance_id, now, &ext);
        (format!("{}{name}", req.backup_file_path), name)
    } else {
        let name = req.backup_file_path.rsplit('/').next().unwrap_or_default().to_string();
        (req.backup_file_path.clone(), name)
    };
    let id_key = cfg.protection.id_key_for(Some(format), &sealing);
    let dest = Destination {
        // A snapshot goes into the folder, which is the repository, under its record's name.
        to: if format == Format::Repo { req.backup_file_path.clone() } else { to.clone() },
        name: (format == Format::Repo).then(|| name.clone()),
        description: req.description.clone(),
        root: cfg.root.clone(),
        identity: cfg.identity(&task_id),
        store,
        backup_file_id: Some(bf.clone()),
        sealing,
    };
    let work = if app {
        Work::BackupApp { spec: BackupAppSpec::new(dest, req.source_app_list.clone()) }
    } else {
        let spec = ExportSpec::new(
            dest,
            req.source_file_path_list.clone(),
            req.exclude_source_file_path_list.clone(),
            req.backup_all,
        );
        Work::Export { spec: ExportSpec { format: Some(format), id_key, ..spec } }
    };
    let task = Task {
        task_id,
        parent_task_id: parent.to_string(),
        client_token: req.client_token.clone(),
        task_type: work.task_type(),
        backup_file_id: bf,
        backup_file_path: to,
        instance_id: cfg.instance_id.clone(),
        callback_url: req.callback_url.clone(),
        work: Some(work),
        ..Default::default()
    };
    Ok((task, name))
}

/// The task a checked RecoveryFile / RecoverApp request makes on this phone.
fn recover_task(cfg: &Config, app: bool, req: &EcpRecover, parent: &str) -> Result<Task, ApiError> {
    let (_, opening, store) = cfg
        .protection
        .for_task(cfg.store_options(req.upload_endpoint.as_deref()), &req.asked(), &protect::ECP)
        .map_err(|e| bad(Api::Ecp, e.to_string()))?;
    let needs_identity = !opening.is_empty();
    let from = req.backup_file_path.clone();
    let backup_file_id = req.backup_file_id.clone();
    let work = if app {
        let spec = RecoverAppSpec {
            from,
            apps: req.source_app_list.clone(),
            root: cfg.root.clone(),
            store,
            opening,
            ..Default::default()
        };
        Work::RecoverApp { spec, backup_file_id }
    } else {
        let includes = req.source_file_path_list.clone();
        let spec = ImportSpec { from, root: cfg.root.clone(), store, opening, includes, ..Default::default() };
        Work::Import { spec, backup_file_id }
    };
    Ok(Task {
        task_id: new_task_id(),
        parent_task_id: parent.to_string(),
        client_token: req.client_token.clone(),
        task_type: work.task_type(),
        backup_file_id: req.backup_file_id.clone().unwrap_or_default(),
        backup_file_path: req.backup_file_path.clone(),
        instance_id: cfg.instance_id.clone(),
        callback_url: req.callback_url.clone(),
        needs_identity,
        work: Some(work),
        ..Default::default()
    })
}

// ---------------------------------------------------------------- handlers

pub(super) async fn action(
    State(r): State<Arc<Runner>>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(match check(&r.cfg.instance_id, &action, &body)? {
        Ecp::Backup { app, req, mine, mut others } => {
            let batch = new_task_id();
            if mine {
                let endpoint = req.upload_endpoint.as_deref();
                check_reachable(Api::Ecp, "BackupFilePath", &r.cfg, &req.backup_file_path, endpoint)?;
                let (t, name) = backup_task(&r.cfg, app, &req, &batch)?;
                let t = submit(&r, t)?;
                others.insert(0, InstanceEntry::task(&r.cfg.instance_id, &t, Some(name)));
            }
            batch_answer(batch, others)
        }
        Ecp::Recover { app, req, mine, mut others } => {
            let batch = new_task_id();
            if mine {
                let endpoint = req.upload_endpoint.as_deref();
                check_reachable(Api::Ecp, "BackupFilePath", &r.cfg, &req.backup_file_path, endpoint)?;
                let t = submit(&r, recover_task(&r.cfg, app, &req, &batch)?)?;
                others.insert(0, InstanceEntry::task(&r.cfg.instance_id, &t, None));
            }
            batch_answer(batch, others)
        }
        Ecp::DescribeBackupFiles(query) => Json(describe_backup_files(&r, query).await?).into_response(),
        Ecp::DeleteBackupFile(ids) => {
            delete_backup_files(&r, ids).await?;
            Json(Deleted { request_id: request_id() }).into_response()
        }
        Ecp::DescribeTasks(req, max) => Json(describe_tasks(&r, req, max)?).into_response(),
    })
}

fn batch_answer(task_id: String, data: Vec<InstanceEntry>) -> Response {
    Json(Batch { request_id: request_id(), task_id, count: data.len(), data }).into_response()
}

/// Folders whose manifests make up this phone's catalogue: the configured one and the folders
/// of every backup this agent made.
fn catalogue_prefixes(r: &Runner) -> Vec<(String, StoreOptions)> {
    let mut v: Vec<(String, StoreOptions)> = Vec::new();
    for t in r.all() {
        let opts = match &t.work {
            Some(Work::Export { spec }) => spec.store.clone(),
            Some(Work::BackupApp { spec }) => spec.store.clone(),
            _ => continue,
        };
        if let Some((folder, _)) = t.backup_file_path.rsplit_once('/') {
            let folder = format!("{folder}/");
            if !v.iter().any(|(f, _)| *f == folder) {
                v.push((folder, opts));
            }
        }
    }
    v
}

/// Run blocking store work off the async threads; a store's failure is 502 with its code.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::ecp(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?
        .map_err(|e| ApiError::ecp(StatusCode::BAD_GATEWAY, e.code(), e.to_string()))
}

async fn describe_backup_files(r: &Arc<Runner>, checked: catalog::Checked) -> Result<catalog::Page, ApiError> {
    let prefixes = catalogue_prefixes(r);
    blocking(move || {
        let mut all = Vec::new();
        for (folder, opts) in prefixes {
            let (store, prefix, _) = store::open(&Location::parse(&folder)?, &opts)?;
            for (key, m) in catalog::records(store.as_ref(), &prefix)? {
                all.push((format!("{folder}{key}"), m));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(checked.page(all))
    })
    .await
}

async fn delete_backup_files(r: &Arc<Runner>, ids: Vec<String>) -> Result<(), ApiError> {
    let prefixes = catalogue_prefixes(r);
    let missing = blocking(move || {
        let mut missing = Vec::new();
        for id in &ids {
            let mut found = false;
            for (folder, opts) in &prefixes {
                let (store, prefix, _) = store::open(&Location::parse(folder)?, opts)?;
                if catalog::delete(store.as_ref(), &prefix, id).is_ok() {
                    found = true;
                    break;
                }
            }
            if !found {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    })
    .await?;
    if !missing.is_empty() {
        return Err(ApiError::ecp(
            StatusCode::NOT_FOUND,
            "InvalidBackupFileId.NotFound",
            format!("BackupFileIdList: not found: {}", missing.join(", ")),
        ));
    }
    Ok(())
}

fn describe_tasks(r: &Runner, req: DescribeTasksReq, max: usize) -> Result<TaskPage, ApiError> {
    let mut statuses = req.task_statuses.clone();
    statuses.extend(req.task_status.clone());
    let mut types = req.task_types.clone();
    types.extend(req.task_type.clone());
    let all: Vec<Task> = r
        .all()
        .into_iter()
        .filter(|t| {
            req.task_ids.is_empty() || req.task_ids.contains(&t.task_id) || req.task_ids.contains(&t.parent_task_id)
        })
        .filter(|t| statuses.is_empty() || statuses.iter().any(|s| s == t.status.as_str()))
        .filter(|t| types.is_empty() || types.iter().any(|s| s == t.task_type.as_str()))
        .filter(|t| req.invoke_id.as_ref().is_none_or(|i| *i == t.request_id))
        .filter(|t| req.parent_task_id.as_ref().is_none_or(|p| *p == t.parent_task_id))
        .collect();
    let start = match req.next_token.as_deref().filter(|s| !s.is_empty()) {
        Some(tok) => all
            .iter()
            .position(|t| t.task_id == tok)
            .ok_or_else(|| bad(Api::Ecp, format!("NextToken {tok:?} is not valid")))?,
        None => 0,
    };
    Ok(TaskPage {
        request_id: request_id(),
        data: all.iter().skip(start).take(max).map(EcpTask::from).collect(),
        total_count: all.len(),
        max_results: max,
        next_token: all.get(start + max).map(|t| t.task_id.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::daemon::task::{TaskStatus, TaskType};
    use serde_json::{json, Value};

    /// A task with every field the answers show set.
    pub(crate) fn full_task() -> Task {
        Task {
            task_id: "t-1".into(),
            parent_task_id: "t-0".into(),
            request_id: "r-1".into(),
            client_token: "c".into(),
            task_type: TaskType::BackupFile,
            status: TaskStatus::Failed,
            error_code: "E".into(),
            error_msg: "boom".into(),
            created_time: "c0".into(),
            start_time: "s0".into(),
            finish_time: "f0".into(),
            result: "{}".into(),
            progress: TaskProgress { bytes: 1, total_bytes: 2, entries: 3, transferred_bytes: 4, percent: 50 },
            backup_file_id: "bf-1".into(),
            backup_file_path: "oss://b/k".into(),
            instance_id: "acp-1".into(),
            ..Default::default()
        }
    }

    /// The answers are what the `json!` literals of the first version wrote, value for value
    /// (these strings are that version's output for the same task).
    #[test]
    fn answers_keep_their_shapes() {
        let golden = r#"{"BackupFileId":"bf-1","ErrorCode":"E","ErrorMsg":"boom","FinishTime":"f0","InstanceId":"acp-1","InvokeId":"r-1","Level":2,"ParentTaskId":"t-0","Progress":{"Bytes":1,"Entries":3,"Percent":50,"TotalBytes":2,"TransferredBytes":4},"ResourceId":"acp-1","Result":"{}","StartTime":"s0","TaskId":"t-1","TaskStatus":"Failed","TaskType":"BackupFile"}"#;
        let t = full_task();
        assert_eq!(serde_json::to_value(EcpTask::from(&t)).unwrap(), serde_json::from_str::<Value>(golden).unwrap());
        let (_, others) = split_instances("me", &["me".into(), "x".into()]).unwrap();
        assert_eq!(
            serde_json::to_value(&others).unwrap(),
            json!([{"AndroidInstanceId": "x", "Code": "InvalidAndroidInstanceId.NotFound", "Message": "x is not this phone (me)"}])
        );
        let mine = InstanceEntry::task("me", &t, Some("n.tar.zst".into()));
        assert_eq!(
            serde_json::to_value(&mine).unwrap(),
            json!({"AndroidInstanceId": "me", "BackupFileId": "bf-1", "BackupFileName": "n.tar.zst", "TaskId": "t-1"})
        );
        let mine = InstanceEntry::task("me", &t, None);
        assert_eq!(serde_json::to_value(&mine).unwrap(), json!({"AndroidInstanceId": "me", "TaskId": "t-1"}));
        let b = Batch { request_id: "r".into(), task_id: "t-b".into(), count: 1, data: vec![mine] };
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"RequestId": "r", "TaskId": "t-b", "Count": 1, "Data": [{"AndroidInstanceId": "me", "TaskId": "t-1"}]})
        );
        let one = serde_json::to_value(Tasks::one(&t)).unwrap();
        assert_eq!(one["Data"], json!([serde_json::from_str::<Value>(golden).unwrap()]));
    }
}
