//! `POST /schedules` (create or replace), `GET /schedules`, `DELETE /schedules/{id}`: the
//! schedules a control plane manages (`crate::daemon::schedule`), in the config's own names
//! (`id`, `cron`, `jitter_secs`, `action`, `body`, `keep`); errors in ECP's shape.
//!
//! It never changes a schedule the config file defines: that file decides.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::{bad, parse, ApiError};
use crate::catalog::request_id;
use crate::daemon::schedule::{Refusal, ScheduleSpec, ScheduleView, Scheduler};
use crate::daemon::task::Api;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Schedules {
    request_id: String,
    schedules: Vec<ScheduleView>,
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Invalid(msg) => bad(Api::Ecp, msg),
        Refusal::FromConfig(id) => ApiError::ecp(
            StatusCode::CONFLICT,
            "ScheduleFromConfig",
            format!("schedule {id:?} is defined in the agent's config file: change it there"),
        ),
        Refusal::NotFound(id) => {
            ApiError::ecp(StatusCode::NOT_FOUND, "InvalidScheduleId.NotFound", format!("schedule {id:?} not found"))
        }
        Refusal::Internal(e) => ApiError::ecp(StatusCode::INTERNAL_SERVER_ERROR, e.code(), e.to_string()),
    }
}

pub(super) async fn put(State(s): State<Arc<Scheduler>>, body: Bytes) -> Result<Json<Schedules>, ApiError> {
    let spec: ScheduleSpec = parse(&body, Api::Ecp)?;
    let view = s.put(spec).map_err(refused)?;
    Ok(Json(Schedules { request_id: request_id(), schedules: vec![view] }))
}

pub(super) async fn list(State(s): State<Arc<Scheduler>>) -> Json<Schedules> {
    Json(Schedules { request_id: request_id(), schedules: s.list() })
}

pub(super) async fn delete(
    State(s): State<Arc<Scheduler>>,
    Path(id): Path<String>,
) -> Result<Json<Schedules>, ApiError> {
    s.delete(&id).map_err(refused)?;
    Ok(Json(Schedules { request_id: request_id(), schedules: Vec::new() }))
}
