//! Weekly task lists over the JSON API ([`crate::tasks`]): pushed by the command centre or a
//! town supervisor to the grids below a unit, read and marked done by the grids' phones (with
//! their device token) and by supervisors.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, auth::Caller};
use crate::{
    service::tasks,
    tasks::{Done, TaskList},
};

/// A new weekly task list.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTaskList {
    /// 1-200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// The tasks, 1-50, each 1-500 characters.
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<String>,
    /// The units whose grids get the list (default: the caller's topmost unit), at most
    /// [`MAX_UNITS`]. Only grids the caller dispatches for (command centre, town supervisor)
    /// are included.
    #[serde(default)]
    #[schema(max_items = 500)]
    pub units: Vec<String>,
    /// The Monday of the week, YYYY-MM-DD (default: this week's).
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub week_start: Option<String>,
    /// The last day, YYYY-MM-DD, not before `week_start` (default: the week's Sunday).
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub due: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TaskListCreated {
    pub id: String,
    pub grids: Vec<String>,
}

/// Units named in one pushed list (each is looked up; a county has a few hundred grids).
pub const MAX_UNITS: usize = 500;

/// `POST /api/v1/tasks`: the command centre or a town supervisor pushes a weekly task list to
/// the grids below some units; it reaches the grids' phones at their next sync.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = [])),
    request_body = NewTaskList,
    responses((status = 201, body = TaskListCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn push_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<NewTaskList>,
) -> Result<(axum::http::StatusCode, Json<TaskListCreated>), ApiError> {
    let created = tasks::push_list(&state, &caller, req).await?;
    Ok((axum::http::StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListsQuery {
    /// Lists due on or after this day, YYYY-MM-DD (default: 30 days ago).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub since: Option<String>,
}

/// `GET /api/v1/tasks`: the task lists of the caller's grids (a phone: its user's grids), with
/// what each grid has done.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = [])),
    params(ListsQuery),
    responses((status = 200, body = Vec<TaskList>), (status = 400, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn lists(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListsQuery>,
) -> Result<Json<Vec<TaskList>>, ApiError> {
    Ok(Json(tasks::task_lists(&state, &caller, q).await?))
}

/// `GET /api/v1/tasks/{id}`: one list, with its grids the caller may read.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task list id")),
    responses((status = 200, body = TaskList), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, ApiError> {
    Ok(Json(tasks::task_list(&state, &caller, id).await?))
}

/// A task done in a grid.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoneRequest {
    pub grid: String,
    /// The task's position in the list, from 0.
    #[serde(deserialize_with = "super::whole::u32")]
    pub item: u32,
    /// When it was done (ms since the epoch; default now; a future time counts as now).
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    pub done_ms: Option<i64>,
    /// What was done, as evidence; at most 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub evidence: String,
    /// The report's photos, at most 10 (SYNC-v1 §14.2): each `{"hash", "size", "media_type"
    /// (`jpeg`, `png`, `webp`), "taken_at_ms", "caption"}`. Their bytes are sent after the
    /// report is stored, to `/v1/photos/{hash}`.
    #[serde(default)]
    #[schema(value_type = Vec<Object>, max_items = 10)]
    pub photos: Vec<qiaomen_protocol::photo::ReportPhoto>,
}

/// `POST /api/v1/tasks/{id}/done`: a grid's worker (or a supervisor of the grid) records that a
/// task was done there. The first report wins; a repeat answers with the stored one.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/done", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "task list id")), request_body = DoneRequest,
    responses((status = 200, body = Done), (status = 400, body = ErrorBody), (status = 404, description = "no such list, task or grid for the caller", body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn done(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DoneRequest>,
) -> Result<Json<Done>, ApiError> {
    Ok(Json(tasks::mark_done(&state, &caller, id, req).await?))
}

/// The server's workflow settings, for phones: work-order time limits in working days, the
/// holiday calendar, the visit rotation and catch-up days.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WorkflowSettings {
    /// `{"limits": {"triage", "accept", "handle_immediate", "handle_coordinate",
    /// "handle_leader_case", "feedback", "return_visit", "close"}, "calendar": {"holidays",
    /// "workdays"}}`.
    #[schema(value_type = Object)]
    pub deadlines: qiaomen_protocol::workorder::Deadlines,
    /// `{"rotation", "catch_up_days"}`.
    #[schema(value_type = Object)]
    pub coverage: qiaomen_protocol::coverage::CoveragePolicy,
}

/// `GET /api/v1/workflow`: the settings deadlines and coverage are computed with, so that a
/// phone shows the same due days as the supervisors' pages.
#[utoipa::path(get, path = "/api/v1/workflow", tag = "tasks", security(("bearer" = [])),
    responses((status = 200, body = WorkflowSettings),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn workflow(State(state): State<AppState>, _caller: Caller) -> Json<WorkflowSettings> {
    Json(WorkflowSettings {
        deadlines: state.workflow.deadlines.clone(),
        coverage: state.workflow.coverage.clone(),
    })
}
