//! The HTTP API: the routes, bearer-token authentication, size limits, errors in each vendor's
//! shape naming the parameter at fault, and the routes every vendor shares (one task, cancel,
//! metrics). The vendors' own request and response shapes live in `ecp` (Alibaba ECP's JSON
//! actions) and `cph` (Huawei CPH's batch-storage / batch-restore / jobs).
//!
//! It never runs an operation itself (the runner does) and never echoes a token or secret.

pub mod cph;
pub mod ecp;
mod schedules;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::config::Config;
use super::listen::ClientCert;
use super::runner::Runner;
use super::schedule::Scheduler;
use super::task::{Api, Task};
use crate::android::pm;
use crate::catalog::request_id;
use crate::select;
use crate::store::Location;

/// What the handlers reach: the runner (tasks) and the scheduler.
#[derive(Clone)]
pub struct AppState {
    pub runner: Arc<Runner>,
    pub schedules: Arc<Scheduler>,
}

impl FromRef<AppState> for Arc<Runner> {
    fn from_ref(s: &AppState) -> Arc<Runner> {
        s.runner.clone()
    }
}

impl FromRef<AppState> for Arc<Scheduler> {
    fn from_ref(s: &AppState) -> Arc<Scheduler> {
        s.schedules.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.runner.cfg.body_limit;
    let protected = Router::new()
        .route("/ecp/{action}", post(ecp::action))
        .route("/cph/batch-storage", post(cph::storage))
        .route("/cph/batch-restore", post(cph::restore))
        .route("/cph/jobs/{job_id}", get(cph::job))
        .route("/cph/jobs", get(cph::jobs))
        .route("/tasks/{id}", delete(cancel_task).get(get_task))
        .route("/schedules", post(schedules::put).get(schedules::list))
        .route("/schedules/{id}", delete(schedules::delete))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.runner.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An error in the shape of the API it answers: ECP `{RequestId, Code, Message}`, CPH
/// `{request_id, error_code, error_msg}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    api: Api,
    code: String,
    pub(crate) message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EcpErrorBody {
    request_id: String,
    code: String,
    message: String,
}

#[derive(Serialize)]
struct CphErrorBody {
    request_id: String,
    error_code: String,
    error_msg: String,
}

impl ApiError {
    fn ecp(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, api: Api::Ecp, code: code.into(), message: message.into() }
    }
    fn cph(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, api: Api::Cph, code: code.into(), message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.api == Api::Cph {
            let body = CphErrorBody { request_id: request_id(), error_code: self.code, error_msg: self.message };
            (self.status, Json(body)).into_response()
        } else {
            let body = EcpErrorBody { request_id: request_id(), code: self.code, message: self.message };
            (self.status, Json(body)).into_response()
        }
    }
}

/// What `auth` asks of every request but /healthz: the bearer token (when one is configured),
/// a client certificate from `client_ca_file` (checked in the TLS handshake), or both.
async fn auth(State(r): State<Arc<Runner>>, req: Request, next: Next) -> Response {
    let mode = r.cfg.auth;
    let cert = req.extensions().get::<ClientCert>().is_some_and(|c| c.0);
    let refusal = if mode.needs_certificate() && !cert {
        Some("a client certificate from the agent's client_ca_file is required")
    } else if mode.needs_token() && !token_matches(r.cfg.token.as_deref(), req.headers()) {
        Some("missing or wrong Authorization: Bearer token")
    } else {
        None
    };
    if let Some(why) = refusal {
        let e = if req.uri().path().starts_with("/cph") {
            ApiError::cph(StatusCode::UNAUTHORIZED, "CPS.0001", why)
        } else {
            ApiError::ecp(StatusCode::UNAUTHORIZED, "InvalidToken", why)
        };
        return e.into_response();
    }
    next.run(req).await
}

/// Whether the request carries the configured token (any request does when none is).
fn token_matches(token: Option<&str>, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time: the comparison must not tell how much of a guess was right.
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Parse a JSON body, naming the field at fault.
fn parse<T: DeserializeOwned>(body: &[u8], api: Api) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(api, format!("malformed request body: {e}")))
}

/// 400 in the vendor's shape: `InvalidParameter` (ECP) or `CPS.0002` (CPH).
fn bad(api: Api, msg: String) -> ApiError {
    match api {
        Api::Cph => ApiError::cph(StatusCode::BAD_REQUEST, "CPS.0002", msg),
        Api::Ecp => ApiError::ecp(StatusCode::BAD_REQUEST, "InvalidParameter", msg),
    }
}

// ---------------------------------------------------------------- the command line's rules

/// Each path by the CPH path rules, the command line's own check (`select::check_path_rule`):
/// the first that breaks one is a 400 naming the field, the entry and the rule.
fn check_paths(api: Api, field: &str, paths: &[String]) -> Result<(), ApiError> {
    for (i, p) in paths.iter().enumerate() {
        select::check_path_rule(p).map_err(|e| bad(api, format!("{field}[{i}]: {e}")))?;
    }
    Ok(())
}

/// Each name by Android's package-name rule, the command line's own check.
fn check_packages(api: Api, field: &str, names: &[String]) -> Result<(), ApiError> {
    for (i, n) in names.iter().enumerate() {
        pm::check_package_name(n).map_err(|e| bad(api, format!("{field}[{i}]: {e}")))?;
    }
    Ok(())
}

/// Where a task writes or reads, as `field` of the request gives it: a location by the
/// command line's rules (bucket and object names), never the daemon's own stdin or stdout
/// (`-`). `endpoint`, when the request names one, must be one the store can be reached at.
fn check_location(api: Api, field: &str, at: &str, endpoint: Option<&str>) -> Result<Location, ApiError> {
    let loc = Location::parse(at).map_err(|e| bad(api, format!("{field}: {e}")))?;
    match &loc {
        Location::Stdio => {
            return Err(bad(
                api,
                format!("{field}: \"-\" (standard input or output) is for the command line; name a bucket or folder"),
            ))
        }
        Location::Object { scheme, bucket, .. } => {
            if let Some(ep) = endpoint.filter(|e| !e.is_empty()) {
                crate::store::s3::address(*scheme, bucket, Some(ep), None, None, false)
                    .map_err(|e| bad(api, format!("UploadEndpoint: {e}")))?;
            }
        }
        Location::File { .. } => {}
    }
    Ok(loc)
}

/// Whether the store a checked location names can be addressed with the options this daemon
/// gives its task (the request's endpoint, else the configured endpoint and region): what
/// the command line finds out when it opens the store, before anything starts.
fn check_reachable(api: Api, field: &str, cfg: &Config, at: &str, endpoint: Option<&str>) -> Result<(), ApiError> {
    let Ok(Location::Object { scheme, bucket, .. }) = Location::parse(at) else { return Ok(()) };
    let opts = cfg.store_options(endpoint);
    let env_region = std::env::var("AWS_REGION").ok();
    crate::store::s3::address(
        scheme,
        &bucket,
        opts.endpoint.as_deref(),
        opts.region.as_deref(),
        env_region.as_deref(),
        opts.path_style,
    )
    .map(drop)
    .map_err(|e| {
        bad(api, format!("{field}: {e} (UploadEndpoint in the request, or endpoint or region in the agent's config)"))
    })
}

/// Hand a checked task to the runner; an error in the shape of the task's API. Refused while
/// shutting down (503), or when the journal cannot hold it (503: the agent's own failure,
/// never the request's).
fn submit(r: &Runner, t: Task) -> Result<Task, ApiError> {
    let api = t.api;
    r.submit(t).map_err(|e| {
        let (status, code) = if !r.accepting() {
            (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
        } else if e.is_input() {
            (StatusCode::BAD_REQUEST, e.code())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, e.code())
        };
        match api {
            Api::Cph => ApiError::cph(status, "CPS.0005", e.to_string()),
            Api::Ecp => ApiError::ecp(status, code, e.to_string()),
        }
    })
}

/// Parse and check a request body as the handler of the POST `route` (`/ecp/ACTION`,
/// `/cph/batch-storage`, `/cph/batch-restore`) does: the step each handler starts with,
/// stopped before anything is submitted or a store is touched. `instance_id` is this phone's.
/// The error is the answer's status, code and message. For the fuzz targets (`fuzz/`) and tests.
pub fn check_request(instance_id: &str, route: &str, body: &[u8]) -> Result<(), (u16, String, String)> {
    let checked = match (route, route.strip_prefix("/ecp/")) {
        (_, Some(action)) => ecp::check(instance_id, action, body).map(drop),
        ("/cph/batch-storage", _) => cph::storage_infos(instance_id, body).map(drop),
        ("/cph/batch-restore", _) => cph::restore_infos(instance_id, body).map(drop),
        (other, _) => Err(ApiError::cph(StatusCode::NOT_FOUND, "CPS.0404", format!("no POST route {other:?}"))),
    };
    checked.map_err(|e| (e.status.as_u16(), e.code, e.message))
}

// ---------------------------------------------------------------- one task, metrics

fn task_not_found(id: &str) -> ApiError {
    ApiError::ecp(StatusCode::NOT_FOUND, "InvalidTaskId.NotFound", format!("task {id} not found"))
}

async fn cancel_task(State(r): State<Arc<Runner>>, Path(id): Path<String>) -> Result<Json<ecp::Tasks>, ApiError> {
    let t = r.cancel(&id).ok_or_else(|| task_not_found(&id))?;
    Ok(Json(ecp::Tasks::one(&t)))
}

async fn get_task(State(r): State<Arc<Runner>>, Path(id): Path<String>) -> Result<Json<ecp::Tasks>, ApiError> {
    let t = r.get(&id).ok_or_else(|| task_not_found(&id))?;
    Ok(Json(ecp::Tasks::one(&t)))
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
    use serde_json::{json, Value};

    pub(super) const ME: &str = "acp-test0001";

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

    /// Every rule the command line checks before it starts is checked on the request: 400,
    /// naming the field, the entry and the rule.
    #[test]
    fn the_command_lines_rules_are_checked_on_the_request() {
        let ecp = |action: &str, extra: Value| {
            let mut body = json!({"AndroidInstanceIdList": [ME], "BackupFilePath": "oss://bkt/x/"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            check(&format!("/ecp/{action}"), body)
        };
        let refused = |r: Result<(), (u16, String, String)>, field: &str, rule: &str| {
            let (status, code, msg) = r.expect_err(field);
            assert_eq!(status, 400, "{msg}");
            assert!(code == "InvalidParameter" || code == "CPS.0002", "{code}");
            assert!(msg.starts_with(field), "{field}: {msg}");
            assert!(msg.contains(rule), "{rule}: {msg}");
        };
        let files = |paths: Value| json!({"SourceFilePathList": paths});
        refused(
            ecp("BackupFile", files(json!(["/data/data", "/etc/passwd"]))),
            "SourceFilePathList[1]",
            "only paths under /data",
        );
        refused(ecp("BackupFile", files(json!(["data/data"]))), "SourceFilePathList[0]", "must be absolute");
        refused(ecp("BackupFile", files(json!(["/data/**/x"]))), "SourceFilePathList[0]", "** is not supported");
        refused(ecp("BackupFile", files(json!(["/data/a b"]))), "SourceFilePathList[0]", "not allowed");
        refused(ecp("BackupFile", files(json!(["/data/../etc"]))), "SourceFilePathList[0]", ".. components");
        refused(
            ecp(
                "BackupFile",
                json!({"SourceFilePathList": ["/data"], "ExcludeSourceFilePathList": ["/data/x", "/system/x"]}),
            ),
            "ExcludeSourceFilePathList[1]",
            "only paths under /data",
        );
        refused(
            ecp("BackupFile", json!({"SourceFilePathList": ["/data/media"], "BackupAll": true})),
            "SourceFilePathList names paths and BackupAll is true",
            "one or the other",
        );
        assert_eq!(ecp("BackupFile", json!({"BackupAll": true, "ExcludeSourceFilePathList": ["/data/media"]})), Ok(()));
        refused(
            ecp("BackupFile", json!({"SourceFilePathList": ["/data"], "BackupFileName": "a b.tar"})),
            "BackupFileName",
            "not a valid object path",
        );
        refused(
            ecp("BackupFile", json!({"SourceFilePathList": ["/data"], "BackupFileName": "../x.tar"})),
            "BackupFileName",
            "without '/'",
        );
        refused(
            ecp("BackupFile", json!({"SourceFilePathList": ["/data"], "BackupFilePath": "-"})),
            "BackupFilePath",
            "for the command line",
        );
        refused(
            ecp("BackupFile", json!({"SourceFilePathList": ["/data"], "UploadEndpoint": "ftp://oss.example"})),
            "UploadEndpoint",
            "only http:// and https://",
        );
        refused(ecp("BackupApp", json!({"SourceAppList": ["com.ok", "1bad"]})), "SourceAppList[1]", "package name");
        refused(
            ecp("RecoverApp", json!({"BackupFilePath": "oss://bkt/a.ab", "SourceAppList": ["com.ok", "a..b"]})),
            "SourceAppList[1]",
            "package name",
        );
        refused(ecp("RecoveryFile", json!({"BackupFilePath": "-"})), "BackupFilePath", "for the command line");
        // Another phone's request is that phone's to check.
        assert_eq!(
            check(
                "/ecp/BackupFile",
                json!({"AndroidInstanceIdList": ["other"], "BackupFilePath": "oss://bkt/x/", "SourceFilePathList": ["/etc"]})
            ),
            Ok(())
        );

        let storage = |info: Value| check("/cph/batch-storage", json!({"storage_infos": [info]}));
        let info = |include: Value, exclude: Value| json!({"phone_id": ME, "include_files": include, "exclude_files": exclude, "bucket_name": "bkt", "object_path": "p.tar"});
        refused(
            storage(info(json!(["/data", "/system"]), json!([]))),
            "storage_infos[0].include_files[1]",
            "only paths under /data",
        );
        refused(storage(info(json!(["/data"]), json!(["x"]))), "storage_infos[0].exclude_files[0]", "absolute");
        refused(storage(info(json!([]), json!([]))), "storage_infos[0].include_files is empty", "at least one path");
        assert_eq!(storage(info(json!(["/data/app", "/data/media"]), json!(["/data/app/com.xx.xx-*"]))), Ok(()));
    }

    /// The error bodies, as the `json!` literals of the first version wrote them.
    #[test]
    fn error_bodies_keep_their_shapes() {
        let body = |e: ApiError| {
            let status = e.status;
            let r = e.into_response();
            assert_eq!(r.status(), status);
            let b = futures_body(r);
            let mut v: Value = serde_json::from_slice(&b).unwrap();
            let key = if v.get("RequestId").is_some() { "RequestId" } else { "request_id" };
            let id = v.as_object_mut().unwrap().remove(key);
            assert_eq!(id.unwrap().as_str().unwrap().len(), 36);
            v
        };
        assert_eq!(body(ApiError::ecp(StatusCode::BAD_REQUEST, "C", "M")), json!({"Code": "C", "Message": "M"}));
        assert_eq!(
            body(ApiError::cph(StatusCode::NOT_FOUND, "CPS.0010", "m")),
            json!({"error_code": "CPS.0010", "error_msg": "m"})
        );
    }

    fn futures_body(r: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async { axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap().to_vec() })
    }
}
