//! The HTTP API: the vendors' request and response shapes (Alibaba ECP's JSON actions, Huawei
//! CPH's batch-storage / batch-restore / jobs), bearer-token authentication, size limits, and
//! errors in each vendor's shape naming the parameter at fault.
//!
//! It never runs an operation itself (the runner does) and never echoes a token or secret.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::runner::Runner;
use super::task::{new_task_id, Task, TaskStatus, Work};
use crate::catalog;
use crate::manifest::{self, Identity, Status};
use crate::spec::{BackupAppSpec, ExportSpec, ImportSpec, RecoverAppSpec, StoreOptions};
use crate::store::{self, Location};

pub fn router(runner: Arc<Runner>) -> Router {
    let limit = runner.cfg.body_limit;
    let protected = Router::new()
        .route("/ecp/{action}", post(ecp))
        .route("/cph/batch-storage", post(cph_storage))
        .route("/cph/batch-restore", post(cph_restore))
        .route("/cph/jobs/{job_id}", get(cph_job))
        .route("/cph/jobs", get(cph_jobs))
        .route("/tasks/{id}", delete(cancel_task).get(get_task))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(runner.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(runner)
}

fn request_id() -> String {
    catalog::request_id()
}

/// An error in the shape of the API it answers: ECP `{RequestId, Code, Message}`, CPH
/// `{request_id, error_code, error_msg}`.
struct ApiError {
    status: StatusCode,
    cph: bool,
    code: String,
    message: String,
}

impl ApiError {
    fn ecp(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, cph: false, code: code.into(), message: message.into() }
    }
    fn cph(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, cph: true, code: code.into(), message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.cph {
            json!({"request_id": request_id(), "error_code": self.code, "error_msg": self.message})
        } else {
            json!({"RequestId": request_id(), "Code": self.code, "Message": self.message})
        };
        (self.status, Json(body)).into_response()
    }
}

async fn auth(State(r): State<Arc<Runner>>, req: Request, next: Next) -> Response {
    let Some(token) = r.cfg.token.as_deref() else { return next.run(req).await };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time: the comparison must not tell how much of a guess was right.
    let ok = given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()));
    if !ok {
        let cph = req.uri().path().starts_with("/cph");
        let e = if cph {
            ApiError::cph(StatusCode::UNAUTHORIZED, "CPS.0001", "missing or wrong Authorization: Bearer token")
        } else {
            ApiError::ecp(StatusCode::UNAUTHORIZED, "InvalidToken", "missing or wrong Authorization: Bearer token")
        };
        return e.into_response();
    }
    next.run(req).await
}

/// Parse a JSON body, naming the field at fault.
fn parse<T: DeserializeOwned>(body: &[u8], cph: bool) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = format!("malformed request body: {e}");
        if cph {
            ApiError::cph(StatusCode::BAD_REQUEST, "CPS.0002", msg)
        } else {
            ApiError::ecp(StatusCode::BAD_REQUEST, "InvalidParameter", msg)
        }
    })
}

fn bad(cph: bool, msg: String) -> ApiError {
    if cph {
        ApiError::cph(StatusCode::BAD_REQUEST, "CPS.0002", msg)
    } else {
        ApiError::ecp(StatusCode::BAD_REQUEST, "InvalidParameter", msg)
    }
}

fn submit_err(cph: bool, e: crate::Error) -> ApiError {
    let status = if e.is_input() { StatusCode::BAD_REQUEST } else { StatusCode::SERVICE_UNAVAILABLE };
    if cph {
        ApiError::cph(status, "CPS.0005", e.to_string())
    } else {
        ApiError::ecp(status, e.code(), e.to_string())
    }
}

// ---------------------------------------------------------------- ECP

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct EcpBackup {
    android_instance_id_list: Vec<String>,
    backup_file_path: String,
    backup_all: bool,
    backup_file_name: Option<String>,
    description: String,
    source_file_path_list: Vec<String>,
    exclude_source_file_path_list: Vec<String>,
    source_app_list: Vec<String>,
    upload_endpoint: Option<String>,
    upload_type: Option<String>,
    client_token: String,
    callback_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct EcpRecover {
    android_instance_id_list: Vec<String>,
    backup_file_id: Option<String>,
    backup_file_path: String,
    upload_endpoint: Option<String>,
    upload_type: Option<String>,
    client_token: String,
    callback_url: String,
    /// RecoverApp only: restrict to these packages.
    source_app_list: Vec<String>,
}

/// An ECP action's body, parsed and checked: what its handler acts on. For BackupFile /
/// BackupApp and RecoveryFile / RecoverApp, whether the request names this phone (`mine`) and
/// the entries answering for the other phones it names.
enum Ecp {
    Backup { app: bool, req: EcpBackup, mine: bool, others: Vec<Value> },
    Recover { app: bool, req: EcpRecover, mine: bool, others: Vec<Value> },
    DescribeBackupFiles(catalog::Checked),
    DeleteBackupFile(Vec<String>),
    DescribeTasks(DescribeTasksReq, usize),
}

/// Parse and check an ECP action's body: every check that needs nothing but this phone's id,
/// before anything is submitted or a store is touched.
fn check_ecp(instance_id: &str, action: &str, body: &[u8]) -> Result<Ecp, ApiError> {
    Ok(match action {
        "BackupFile" | "BackupApp" => {
            let req: EcpBackup = parse(body, false)?;
            let (mine, others) = check_ecp_backup(instance_id, action, &req)?;
            Ecp::Backup { app: action == "BackupApp", req, mine, others }
        }
        "RecoveryFile" | "RecoverApp" => {
            let req: EcpRecover = parse(body, false)?;
            let (mine, others) = check_ecp_recover(instance_id, &req)?;
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

async fn ecp(State(r): State<Arc<Runner>>, Path(action): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    match check_ecp(&r.cfg.instance_id, &action, &body)? {
        Ecp::Backup { app, req, mine, others } => ecp_backup(&r, app, req, mine, others),
        Ecp::Recover { app, req, mine, others } => ecp_recover(&r, app, req, mine, others),
        Ecp::DescribeBackupFiles(query) => describe_backup_files(&r, query).await,
        Ecp::DeleteBackupFile(ids) => delete_backup_files(&r, ids).await,
        Ecp::DescribeTasks(req, max) => describe_tasks(&r, req, max),
    }
}

fn unknown_action(action: &str) -> ApiError {
    ApiError::ecp(
        StatusCode::NOT_FOUND,
        "InvalidAction.NotFound",
        format!("unknown action {action:?}: use BackupFile, RecoveryFile, BackupApp, RecoverApp, DescribeBackupFiles, DeleteBackupFile or DescribeTasks"),
    )
}

/// Parse and check a request body as the handler of the POST `route` (`/ecp/ACTION`,
/// `/cph/batch-storage`, `/cph/batch-restore`) does: the step each handler starts with
/// (`check_ecp`, `storage_infos`, `restore_infos`), stopped before anything is submitted or a
/// store is touched. `instance_id` is this phone's. The error is the answer's status, code and
/// message. For the fuzz targets (`fuzz/`) and tests.
pub fn check_request(instance_id: &str, route: &str, body: &[u8]) -> Result<(), (u16, String, String)> {
    let checked = match (route, route.strip_prefix("/ecp/")) {
        (_, Some(action)) => check_ecp(instance_id, action, body).map(drop),
        ("/cph/batch-storage", _) => storage_infos(instance_id, body).map(drop),
        ("/cph/batch-restore", _) => restore_infos(instance_id, body).map(drop),
        (other, _) => Err(ApiError::cph(StatusCode::NOT_FOUND, "CPS.0404", format!("no POST route {other:?}"))),
    };
    checked.map_err(|e| (e.status.as_u16(), e.code, e.message))
}

fn store_opts(r: &Runner, endpoint: Option<String>) -> StoreOptions {
    StoreOptions {
        endpoint: endpoint.filter(|e| !e.is_empty()).or_else(|| r.cfg.endpoint.clone()),
        region: r.cfg.region.clone(),
        path_style: r.cfg.path_style,
        parts_in_flight: r.cfg.parts_in_flight,
        state_dir: Some(r.cfg.state_dir.join("uploads")),
        ..Default::default()
    }
}

fn identity(r: &Runner, task_id: &str) -> Identity {
    Identity {
        android_instance_id: r.cfg.instance_id.clone(),
        android_instance_name: r.cfg.instance_name.clone(),
        instance_group_id: r.cfg.instance_group_id.clone(),
        region_id: r.cfg.region_id.clone(),
        task_id: task_id.to_string(),
        ..Default::default()
    }
}

/// Entries of AndroidInstanceIdList that are not this phone, as per-instance errors.
fn split_instances(instance_id: &str, list: &[String]) -> Result<(bool, Vec<Value>), ApiError> {
    if list.is_empty() {
        return Err(bad(false, "AndroidInstanceIdList is empty: name this phone's instance id".into()));
    }
    let mine = list.iter().any(|i| *i == instance_id);
    let others = list
        .iter()
        .filter(|i| **i != instance_id)
        .map(|i| json!({"AndroidInstanceId": i, "Code": "InvalidAndroidInstanceId.NotFound", "Message": format!("{i} is not this phone ({instance_id})")}))
        .collect();
    Ok((mine, others))
}

fn check_upload_type(t: &Option<String>) -> Result<(), ApiError> {
    match t.as_deref() {
        None | Some("") | Some("OSS") | Some("OBS") | Some("S3") | Some("FILE") => Ok(()),
        Some(other) => Err(bad(false, format!("UploadType {other:?} is not supported: use OSS"))),
    }
}

/// BackupFile / BackupApp: the checks that need nothing but this phone's id. Whether the
/// request names this phone, and the entries for the other phones it names.
fn check_ecp_backup(instance_id: &str, action: &str, req: &EcpBackup) -> Result<(bool, Vec<Value>), ApiError> {
    let (mine, data) = split_instances(instance_id, &req.android_instance_id_list)?;
    if req.backup_file_path.is_empty() {
        return Err(bad(false, "BackupFilePath is required (oss://BUCKET/FOLDER/ or oss://BUCKET/NAME.ab)".into()));
    }
    check_upload_type(&req.upload_type)?;
    Location::parse(&req.backup_file_path).map_err(|e| bad(false, format!("BackupFilePath: {e}")))?;
    if mine {
        let app = action == "BackupApp";
        if app && req.source_app_list.is_empty() {
            return Err(bad(false, "SourceAppList is empty: name at least one package".into()));
        }
        if !app && !req.backup_all && req.source_file_path_list.is_empty() {
            return Err(bad(false, "SourceFilePathList is empty and BackupAll is false: nothing to back up".into()));
        }
    }
    Ok((mine, data))
}

fn ecp_backup(
    r: &Runner,
    app: bool,
    req: EcpBackup,
    mine: bool,
    mut data: Vec<Value>,
) -> Result<Json<Value>, ApiError> {
    let batch = new_task_id();
    if mine {
        let task_id = new_task_id();
        let bf = manifest::new_backup_file_id();
        let ext = if app { "ab" } else { "tar.zst" };
        // Name the object now, so the task knows its manifest's key from the start.
        let (to, name) = if req.backup_file_path.ends_with('/') {
            let name = store::name_in_folder(
                req.backup_file_name.as_deref(),
                &r.cfg.instance_id,
                time::OffsetDateTime::now_utc(),
                ext,
            );
            (format!("{}{name}", req.backup_file_path), name)
        } else {
            let name = req.backup_file_path.rsplit('/').next().unwrap_or_default().to_string();
            (req.backup_file_path.clone(), name)
        };
        let store_opts = store_opts(r, req.upload_endpoint.clone());
        let work = if app {
            Work::BackupApp {
                spec: BackupAppSpec {
                    apps: req.source_app_list.clone(),
                    to: to.clone(),
                    root: r.cfg.root.clone(),
                    description: req.description.clone(),
                    identity: identity(r, &task_id),
                    store: store_opts,
                    backup_file_id: Some(bf.clone()),
                    ..Default::default()
                },
            }
        } else {
            Work::Export {
                spec: ExportSpec {
                    includes: req.source_file_path_list.clone(),
                    excludes: req.exclude_source_file_path_list.clone(),
                    all: req.backup_all,
                    to: to.clone(),
                    root: r.cfg.root.clone(),
                    description: req.description.clone(),
                    identity: identity(r, &task_id),
                    store: store_opts,
                    backup_file_id: Some(bf.clone()),
                    ..Default::default()
                },
            }
        };
        let t = r
            .submit(Task {
                task_id,
                parent_task_id: batch.clone(),
                client_token: req.client_token.clone(),
                task_type: work.task_type().into(),
                backup_file_id: bf,
                backup_file_path: to,
                instance_id: r.cfg.instance_id.clone(),
                callback_url: req.callback_url.clone(),
                work: Some(work),
                ..Default::default()
            })
            .map_err(|e| submit_err(false, e))?;
        data.insert(
            0,
            json!({"AndroidInstanceId": r.cfg.instance_id, "BackupFileId": t.backup_file_id, "BackupFileName": name, "TaskId": t.task_id}),
        );
    }
    Ok(Json(json!({"RequestId": request_id(), "TaskId": batch, "Count": data.len(), "Data": data})))
}

/// RecoveryFile / RecoverApp: the checks that need nothing but this phone's id.
fn check_ecp_recover(instance_id: &str, req: &EcpRecover) -> Result<(bool, Vec<Value>), ApiError> {
    let (mine, data) = split_instances(instance_id, &req.android_instance_id_list)?;
    if req.backup_file_path.is_empty() {
        return Err(bad(false, "BackupFilePath is required".into()));
    }
    check_upload_type(&req.upload_type)?;
    Location::parse(&req.backup_file_path).map_err(|e| bad(false, format!("BackupFilePath: {e}")))?;
    if req.backup_file_path.ends_with('/') && req.backup_file_id.as_deref().unwrap_or("").is_empty() {
        return Err(bad(false, "BackupFilePath is a folder: give BackupFileId too".into()));
    }
    Ok((mine, data))
}

fn ecp_recover(
    r: &Runner,
    app: bool,
    req: EcpRecover,
    mine: bool,
    mut data: Vec<Value>,
) -> Result<Json<Value>, ApiError> {
    let batch = new_task_id();
    if mine {
        let task_id = new_task_id();
        let store = store_opts(r, req.upload_endpoint.clone());
        let work = if app {
            Work::RecoverApp {
                spec: RecoverAppSpec {
                    from: req.backup_file_path.clone(),
                    apps: req.source_app_list.clone(),
                    root: r.cfg.root.clone(),
                    store,
                    ..Default::default()
                },
                backup_file_id: req.backup_file_id.clone(),
            }
        } else {
            Work::Import {
                spec: ImportSpec {
                    from: req.backup_file_path.clone(),
                    root: r.cfg.root.clone(),
                    store,
                    ..Default::default()
                },
                backup_file_id: req.backup_file_id.clone(),
            }
        };
        let t = r
            .submit(Task {
                task_id,
                parent_task_id: batch.clone(),
                client_token: req.client_token.clone(),
                task_type: work.task_type().into(),
                backup_file_id: req.backup_file_id.clone().unwrap_or_default(),
                backup_file_path: req.backup_file_path.clone(),
                instance_id: r.cfg.instance_id.clone(),
                callback_url: req.callback_url.clone(),
                work: Some(work),
                ..Default::default()
            })
            .map_err(|e| submit_err(false, e))?;
        data.insert(0, json!({"AndroidInstanceId": r.cfg.instance_id, "TaskId": t.task_id}));
    }
    Ok(Json(json!({"RequestId": request_id(), "TaskId": batch, "Count": data.len(), "Data": data})))
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

/// DescribeBackupFiles' body as a checked catalogue query.
fn describe_backup_files_query(body: &[u8]) -> Result<catalog::Checked, ApiError> {
    let req: DescribeBackupFilesReq = if body.is_empty() { Default::default() } else { parse(body, false)? };
    let statuses = req
        .status_list
        .iter()
        .map(|s| Status::parse(s))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(|e| bad(false, format!("StatusList: {e}")))?;
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
    q.check().map_err(|e| bad(false, e.to_string()))
}

async fn describe_backup_files(r: &Arc<Runner>, checked: catalog::Checked) -> Result<Json<Value>, ApiError> {
    let prefixes = catalogue_prefixes(r);
    let page = tokio::task::spawn_blocking(move || -> crate::Result<catalog::Page> {
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
    .map_err(|e| ApiError::ecp(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?
    .map_err(|e| ApiError::ecp(StatusCode::BAD_GATEWAY, e.code(), e.to_string()))?;
    serde_json::to_value(page)
        .map(Json)
        .map_err(|e| ApiError::ecp(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DeleteReq {
    backup_file_id_list: Vec<String>,
}

/// DeleteBackupFile's body: the ids to delete, at least one.
fn delete_ids(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let req: DeleteReq = parse(body, false)?;
    if req.backup_file_id_list.is_empty() {
        return Err(bad(false, "BackupFileIdList is empty".into()));
    }
    Ok(req.backup_file_id_list)
}

async fn delete_backup_files(r: &Arc<Runner>, ids: Vec<String>) -> Result<Json<Value>, ApiError> {
    let prefixes = catalogue_prefixes(r);
    let result = tokio::task::spawn_blocking(move || -> crate::Result<Vec<String>> {
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
    .await
    .map_err(|e| ApiError::ecp(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?
    .map_err(|e| ApiError::ecp(StatusCode::BAD_GATEWAY, e.code(), e.to_string()))?;
    if !result.is_empty() {
        return Err(ApiError::ecp(
            StatusCode::NOT_FOUND,
            "InvalidBackupFileId.NotFound",
            format!("BackupFileIdList: not found: {}", result.join(", ")),
        ));
    }
    Ok(Json(json!({"RequestId": request_id()})))
}

fn ecp_task(t: &Task) -> Value {
    json!({
        "TaskId": t.task_id,
        "ParentTaskId": t.parent_task_id,
        "Level": 2,
        "TaskType": t.task_type,
        "TaskStatus": t.status.as_str(),
        "InstanceId": t.instance_id,
        "ResourceId": t.instance_id,
        "InvokeId": t.request_id,
        "StartTime": t.start_time,
        "FinishTime": t.finish_time,
        "Result": t.result,
        "ErrorCode": t.error_code,
        "ErrorMsg": t.error_msg,
        "BackupFileId": t.backup_file_id,
        "Progress": t.progress,
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DescribeTasksReq {
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

/// DescribeTasks' body and its page size.
fn describe_tasks_req(body: &[u8]) -> Result<(DescribeTasksReq, usize), ApiError> {
    let req: DescribeTasksReq = if body.is_empty() { Default::default() } else { parse(body, false)? };
    let max = match req.max_results {
        None => 10,
        Some(n) if (1..=100).contains(&n) => n as usize,
        Some(n) => return Err(bad(false, format!("MaxResults {n} is out of range: use 1 to 100"))),
    };
    Ok((req, max))
}

fn describe_tasks(r: &Runner, req: DescribeTasksReq, max: usize) -> Result<Json<Value>, ApiError> {
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
        .filter(|t| types.is_empty() || types.contains(&t.task_type))
        .filter(|t| req.invoke_id.as_ref().is_none_or(|i| *i == t.request_id))
        .filter(|t| req.parent_task_id.as_ref().is_none_or(|p| *p == t.parent_task_id))
        .collect();
    let start = match req.next_token.as_deref().filter(|s| !s.is_empty()) {
        Some(tok) => all
            .iter()
            .position(|t| t.task_id == tok)
            .ok_or_else(|| bad(false, format!("NextToken {tok:?} is not valid")))?,
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(max).map(ecp_task).collect();
    let next = all.get(start + max).map(|t| t.task_id.clone()).unwrap_or_default();
    Ok(Json(
        json!({"RequestId": request_id(), "Data": page, "TotalCount": all.len(), "MaxResults": max, "NextToken": next}),
    ))
}

// ---------------------------------------------------------------- CPH

#[derive(Deserialize)]
struct CphStorage {
    storage_infos: Vec<StorageInfo>,
}

#[derive(Deserialize)]
struct StorageInfo {
    phone_id: String,
    include_files: Vec<String>,
    #[serde(default)]
    exclude_files: Vec<String>,
    bucket_name: String,
    object_path: String,
}

#[derive(Deserialize)]
struct CphRestore {
    restore_infos: Vec<RestoreInfo>,
}

#[derive(Deserialize)]
struct RestoreInfo {
    phone_id: String,
    bucket_name: String,
    object_path: String,
}

fn cph_job_entry(phone: &str, job: Option<&Task>, err: Option<(&str, String)>) -> Value {
    match (job, err) {
        (Some(t), _) => json!({"phone_id": phone, "job_id": t.task_id}),
        (None, Some((code, msg))) => json!({"phone_id": phone, "error_code": code, "error_msg": msg}),
        (None, None) => json!({"phone_id": phone}),
    }
}

/// A batch's infos, all checked before any job is submitted: each of this phone's with the
/// object it names (`obs://BUCKET/OBJECT_PATH`), any other phone's with `None` (answered with
/// `CPS.0004` in its entry).
fn check_infos<I>(
    instance_id: &str,
    what: &str,
    infos: Vec<I>,
    fields: impl Fn(&I) -> (&str, &str, &str),
) -> Result<Vec<(I, Option<String>)>, ApiError> {
    if infos.is_empty() {
        return Err(ApiError::cph(StatusCode::BAD_REQUEST, "CPS.0009", format!("{what} is empty")));
    }
    let mut checked = Vec::with_capacity(infos.len());
    for (i, info) in infos.into_iter().enumerate() {
        let (phone, bucket, object_path) = fields(&info);
        let at = if phone == instance_id {
            let at = format!("obs://{bucket}/{object_path}");
            Location::parse(&at).map_err(|e| bad(true, format!("{what}[{i}]: {e}")))?;
            Some(at)
        } else {
            None
        };
        checked.push((info, at));
    }
    Ok(checked)
}

fn storage_infos(instance_id: &str, body: &[u8]) -> Result<Vec<(StorageInfo, Option<String>)>, ApiError> {
    let req: CphStorage = parse(body, true)?;
    check_infos(instance_id, "storage_infos", req.storage_infos, |i| (&i.phone_id, &i.bucket_name, &i.object_path))
}

fn restore_infos(instance_id: &str, body: &[u8]) -> Result<Vec<(RestoreInfo, Option<String>)>, ApiError> {
    let req: CphRestore = parse(body, true)?;
    check_infos(instance_id, "restore_infos", req.restore_infos, |i| (&i.phone_id, &i.bucket_name, &i.object_path))
}

/// One job per info: this phone's become tasks (`task` gets the info and its checked object),
/// any other phone gets `CPS.0004` in its entry.
fn cph_batch<I>(
    r: &Runner,
    headers: &HeaderMap,
    infos: Vec<(I, Option<String>)>,
    phone: impl Fn(&I) -> &str,
    task: impl Fn(I, String) -> Task,
) -> Result<Json<Value>, ApiError> {
    let request_id = request_id();
    let token = client_token(headers);
    let mut jobs = Vec::new();
    for (i, (info, at)) in infos.into_iter().enumerate() {
        let phone_id = phone(&info).to_string();
        let Some(at) = at else {
            let msg = format!("Invalid phone id: {phone_id} is not this phone");
            jobs.push(cph_job_entry(&phone_id, None, Some(("CPS.0004", msg))));
            continue;
        };
        let mut t = task(info, at);
        t.request_id = request_id.clone();
        t.client_token = token.as_ref().map(|t| format!("{t}-{i}")).unwrap_or_default();
        t.api = "cph".into();
        t.instance_id = r.cfg.instance_id.clone();
        let t = r.submit(t).map_err(|e| submit_err(true, e))?;
        jobs.push(cph_job_entry(&phone_id, Some(&t), None));
    }
    Ok(Json(json!({"request_id": request_id, "jobs": jobs})))
}

async fn cph_storage(State(r): State<Arc<Runner>>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let infos = storage_infos(&r.cfg.instance_id, &body)?;
    cph_batch(
        &r,
        &headers,
        infos,
        |i| &i.phone_id,
        |info, to| {
            let task_id = new_task_id();
            let bf = manifest::new_backup_file_id();
            let spec = ExportSpec {
                includes: info.include_files,
                excludes: info.exclude_files,
                to: to.clone(),
                // CPH's exports are tar objects; a name with another extension picks that format.
                format: crate::archive::Format::from_name(&info.object_path).or(Some(crate::archive::Format::Tar)),
                root: r.cfg.root.clone(),
                identity: identity(&r, &task_id),
                store: store_opts(&r, None),
                backup_file_id: Some(bf.clone()),
                ..Default::default()
            };
            Task {
                task_id,
                task_type: "BackupFile".into(),
                backup_file_id: bf,
                backup_file_path: to,
                work: Some(Work::Export { spec }),
                ..Default::default()
            }
        },
    )
}

async fn cph_restore(State(r): State<Arc<Runner>>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let infos = restore_infos(&r.cfg.instance_id, &body)?;
    cph_batch(
        &r,
        &headers,
        infos,
        |i| &i.phone_id,
        |_, from| {
            let spec = ImportSpec {
                from: from.clone(),
                root: r.cfg.root.clone(),
                store: store_opts(&r, None),
                ..Default::default()
            };
            Task {
                task_id: new_task_id(),
                task_type: "RecoverFile".into(),
                backup_file_path: from,
                work: Some(Work::Import { spec, backup_file_id: None }),
                ..Default::default()
            }
        },
    )
}

/// An idempotency key from the request headers (`X-Client-Token`, or `X-Request-Id`).
fn client_token(h: &HeaderMap) -> Option<String> {
    ["x-client-token", "x-request-id"]
        .iter()
        .find_map(|k| h.get(*k).and_then(|v| v.to_str().ok()).map(str::to_string))
        .filter(|s| !s.is_empty())
}

fn cph_job_json(t: &Task) -> Value {
    let execute_msg: String = match t.status {
        TaskStatus::Failed => t.error_msg.chars().take(1024).collect(),
        _ => format!("{}% ({} bytes)", t.progress.percent, t.progress.bytes),
    };
    json!({
        "job_id": t.task_id,
        "request_id": t.request_id,
        "phone_id": t.instance_id,
        "server_id": "",
        "status": t.status.cph_status(),
        "begin_time": t.start_time,
        "end_time": t.finish_time,
        "error_code": if t.status == TaskStatus::Failed { t.error_code.as_str() } else { "" },
        "error_msg": if t.status == TaskStatus::Failed { t.error_msg.as_str() } else { "" },
        "execute_msg": execute_msg,
    })
}

async fn cph_job(State(r): State<Arc<Runner>>, Path(job_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = r
        .get(&job_id)
        .ok_or_else(|| ApiError::cph(StatusCode::NOT_FOUND, "CPS.0010", format!("job {job_id} not found")))?;
    let mut v = cph_job_json(&t);
    v["request_id"] = json!(t.request_id);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct JobsQuery {
    request_id: Option<String>,
}

async fn cph_jobs(State(r): State<Arc<Runner>>, Query(q): Query<JobsQuery>) -> Result<Json<Value>, ApiError> {
    let rid = q.request_id.filter(|s| !s.is_empty()).ok_or_else(|| bad(true, "request_id is required".into()))?;
    let jobs: Vec<Value> = r.all().iter().filter(|t| t.request_id == rid).map(cph_job_json).collect();
    Ok(Json(json!({"request_id": rid, "jobs": jobs})))
}

// ---------------------------------------------------------------- tasks, metrics

async fn cancel_task(State(r): State<Arc<Runner>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = r.cancel(&id).ok_or_else(|| {
        ApiError::ecp(StatusCode::NOT_FOUND, "InvalidTaskId.NotFound", format!("task {id} not found"))
    })?;
    Ok(Json(json!({"RequestId": request_id(), "Data": [ecp_task(&t)]})))
}

async fn get_task(State(r): State<Arc<Runner>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = r.get(&id).ok_or_else(|| {
        ApiError::ecp(StatusCode::NOT_FOUND, "InvalidTaskId.NotFound", format!("task {id} not found"))
    })?;
    Ok(Json(json!({"RequestId": request_id(), "Data": [ecp_task(&t)]})))
}

async fn metrics(State(r): State<Arc<Runner>>) -> impl IntoResponse {
    use std::fmt::Write;
    use std::sync::atomic::Ordering;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP cpbackup_tasks Tasks by state.\n# TYPE cpbackup_tasks gauge");
    for (state, n) in r.counts() {
        let _ = writeln!(out, "cpbackup_tasks{{state=\"{state}\"}} {n}");
    }
    let (up_live, down_live) = r.live_transfer();
    let up = r.metrics.bytes_uploaded.load(Ordering::Relaxed) + up_live;
    let down = r.metrics.bytes_downloaded.load(Ordering::Relaxed) + down_live;
    let _ = writeln!(out, "# HELP cpbackup_bytes_uploaded_total Archive bytes sent to storage.\n# TYPE cpbackup_bytes_uploaded_total counter\ncpbackup_bytes_uploaded_total {up}");
    let _ = writeln!(out, "# HELP cpbackup_bytes_downloaded_total Archive bytes read from storage.\n# TYPE cpbackup_bytes_downloaded_total counter\ncpbackup_bytes_downloaded_total {down}");
    let _ = writeln!(
        out,
        "# HELP cpbackup_part_retries_total Upload and download requests retried.\n# TYPE cpbackup_part_retries_total counter\ncpbackup_part_retries_total {}",
        crate::store::retry::RETRIES.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP cpbackup_callback_backlog Status events not yet delivered.\n# TYPE cpbackup_callback_backlog gauge\ncpbackup_callback_backlog {}",
        r.reporter_backlog()
    );
    let _ = writeln!(
        out,
        "# HELP cpbackup_callback_failures_total Callback deliveries that failed and will be retried.\n# TYPE cpbackup_callback_failures_total counter\ncpbackup_callback_failures_total {}",
        r.reporter.failures.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "acp-test0001";

    fn check(route: &str, body: Value) -> Result<(), (u16, String, String)> {
        check_request(ME, route, body.to_string().as_bytes())
    }

    #[test]
    fn request_bodies_are_checked_as_the_handlers_do() {
        let backup = json!({"AndroidInstanceIdList": [ME], "BackupFilePath": "oss://bkt/x/", "SourceFilePathList": ["/data/data"]});
        assert_eq!(check("/ecp/BackupFile", backup), Ok(()));
        let (status, code, msg) = check("/ecp/BackupFile", json!({"AndroidInstanceIdList": [ME]})).unwrap_err();
        assert_eq!((status, code.as_str()), (400, "InvalidParameter"));
        assert!(msg.contains("BackupFilePath is required"), "{msg}");
        // Another phone's request needs no source list: that phone answers for it.
        assert_eq!(
            check("/ecp/BackupApp", json!({"AndroidInstanceIdList": ["other"], "BackupFilePath": "oss://bkt/"})),
            Ok(())
        );
        let e = check("/ecp/BackupApp", json!({"AndroidInstanceIdList": [ME], "BackupFilePath": "oss://bkt/"}))
            .unwrap_err();
        assert!(e.2.contains("SourceAppList is empty"), "{e:?}");
        let e = check("/ecp/RecoveryFile", json!({"AndroidInstanceIdList": [ME], "BackupFilePath": "oss://bkt/f/"}));
        assert!(e.unwrap_err().2.contains("give BackupFileId too"));
        let e = check("/ecp/DescribeTasks", json!({"MaxResults": 101})).unwrap_err();
        assert_eq!(e.0, 400);
        assert_eq!(check_request(ME, "/ecp/DescribeTasks", b""), Ok(()));
        let e = check("/ecp/DescribeBackupFiles", json!({"StatusList": ["GONE"]})).unwrap_err();
        assert!(e.2.starts_with("StatusList: unknown status"), "{e:?}");
        assert!(check("/ecp/DeleteBackupFile", json!({"BackupFileIdList": []})).is_err());
        assert_eq!(check("/ecp/BackupEverything", json!({})).unwrap_err().0, 404);
        let e = check_request(ME, "/ecp/BackupFile", b"{\"AndroidInstanceIdList\": \"acp\"}").unwrap_err();
        assert!(e.2.starts_with("malformed request body"), "{e:?}");

        let info =
            json!({"phone_id": ME, "include_files": ["/data/data"], "bucket_name": "bkt", "object_path": "p.tar"});
        assert_eq!(check("/cph/batch-storage", json!({"storage_infos": [info]})), Ok(()));
        // Every info of this phone is checked before any job starts: a bad second one fails
        // the request, another phone's is not this phone's to check.
        let no_bucket =
            json!({"phone_id": ME, "include_files": ["/data/data"], "bucket_name": "", "object_path": "p.tar"});
        let e = check("/cph/batch-storage", json!({"storage_infos": [info, no_bucket]})).unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "CPS.0002"));
        assert!(e.2.starts_with("storage_infos[1]: "), "{e:?}");
        let elsewhere = json!({"phone_id": "other", "include_files": [], "bucket_name": "", "object_path": ""});
        assert_eq!(check("/cph/batch-storage", json!({"storage_infos": [info, elsewhere]})), Ok(()));
        let e = check("/cph/batch-restore", json!({"restore_infos": []})).unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "CPS.0009"));
        let e = check_request(ME, "/cph/batch-restore", b"[]").unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "CPS.0002"));
    }
}
