//! Weekly task lists over the JSON API ([`crate::tasks`]): pushed by the command centre or a
//! town supervisor to the grids below a unit, read and marked done by the grids' phones (with
//! their device token) and by supervisors.

use axum::{
    Json,
    extract::{Path, State},
};
use qiaomen_protocol::calendar::Day;
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, auth::Caller, workflow::unit_scope};
use crate::{
    access::{audit::Event, now_ms},
    tasks::{Done, NewList, TaskList},
};

/// Lists are shown until 30 days after they were due.
pub(crate) fn since_default(now_ms: i64) -> Day {
    qiaomen_protocol::workorder::day_of(now_ms).add_days(-30)
}

fn today() -> Day {
    qiaomen_protocol::workorder::day_of(now_ms())
}

fn bad(message: &str) -> ApiError {
    ApiError::BadRequest {
        code: "invalid",
        message: message.into(),
    }
}

fn no_list() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such task list".into(),
    }
}

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

fn day(s: &str, what: &str) -> Result<Day, ApiError> {
    s.parse()
        .map_err(|_| bad(&format!("{what} is not a date (YYYY-MM-DD)")))
}

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
    if req.units.len() > MAX_UNITS {
        return Err(ApiError::BadRequest {
            code: "too_many_units",
            message: format!("at most {MAX_UNITS} units per task list"),
        });
    }
    let today = today();
    let monday = today.add_days(-i64::from(today.0.weekday().number_days_from_monday()));
    let week_start = match &req.week_start {
        Some(s) => day(s, "week_start")?,
        None => monday,
    };
    let due = match &req.due {
        Some(s) => day(s, "due")?,
        None => week_start.add_days(6),
    };
    let units = if req.units.is_empty() {
        vec![None]
    } else {
        let mut units = req.units.clone();
        units.sort();
        units.dedup();
        units.into_iter().map(Some).collect()
    };
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let mut grids = Vec::new();
    for unit in units {
        for g in unit_scope(&state, &caller, unit).await?.grids {
            if scope.party(&g, now_ms()).dispatcher && !grids.contains(&g) {
                grids.push(g);
            }
        }
    }
    if grids.is_empty() {
        return Err(ApiError::Forbidden {
            code: "forbidden",
            message: "only the command centre or a town supervisor pushes task lists".into(),
        });
    }
    let (title, items, by) = (req.title, req.items, caller.user());
    let targets = grids.clone();
    let id = state
        .access(move |db| {
            let id = db.push_task_list(&NewList {
                title: &title,
                week_start,
                due,
                items: &items,
                grids: &targets,
                by,
            })?;
            db.audit(Event {
                user: Some(&by.to_string()),
                device: None,
                action: "push_task_list",
                target: Some(&id),
                outcome: "ok",
            })?;
            Ok(id)
        })
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(TaskListCreated { id, grids }),
    ))
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
    task_lists(&state, &caller, q).await.map(Json)
}

pub(crate) async fn task_lists(
    state: &AppState,
    caller: &Caller,
    q: ListsQuery,
) -> Result<Vec<TaskList>, ApiError> {
    let since = match q.since.as_deref() {
        Some(s) => day(s, "since")?,
        None => since_default(now_ms()),
    };
    let user = caller.user();
    state
        .access(move |db| db.task_lists(&db.scope(user, now_ms())?.read, since))
        .await
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
    let user = caller.user();
    state
        .access(move |db| db.task_list(&id, &db.scope(user, now_ms())?.read))
        .await?
        .map(Json)
        .ok_or_else(no_list)
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
    let user = caller.user();
    let device = match &caller {
        Caller::Device(d) => Some(d.device),
        Caller::Session(_) => None,
    };
    if req.evidence.chars().count() > 2000 {
        return Err(bad("evidence has at most 2000 characters"));
    }
    state
        .access(move |db| {
            let now = now_ms();
            if !db.scope(user, now)?.may_write(&req.grid, now) {
                return Err(crate::access::AccessError::NotFound("task of this grid"));
            }
            let done = db.complete_task(
                &id,
                req.item,
                &req.grid,
                (user, device),
                req.done_ms.unwrap_or(now),
                &req.evidence,
            )?;
            db.audit(Event {
                user: Some(&user.to_string()),
                device: device.map(|d| d.to_string()).as_deref(),
                action: "task_done",
                target: Some(&id),
                outcome: "ok",
            })?;
            Ok(done)
        })
        .await
        .map(Json)
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
