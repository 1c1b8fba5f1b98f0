//! Events and work logs over HTTP: the JSON API of [`crate::service::journal`] (the entries of
//! a unit, an event dispatched as a work order) and its zh-CN page (the entries of a grid,
//! village or town over a period, with a form to dispatch an event to a door of its grid).

use std::collections::BTreeMap;

use axum::{
    Form, Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use minijinja::context;
use serde::Deserialize;

use super::{
    ApiError, ApiJson, ApiQuery, AppState, ErrorBody,
    auth::Caller,
    pages::{PageError, PageSession, render_named},
};
use crate::service::{
    self,
    journal::{
        self, DispatchRequest, Dispatched, JournalList, JournalQuery, TrackRequest, Tracked,
    },
};

/// `GET /api/v1/journal`: the events and work logs of the caller's grids (or of a unit's), of
/// days `from..=to` (default the last 30), newest first.
#[utoipa::path(get, path = "/api/v1/journal", tag = "journal", security(("bearer" = [])),
    params(JournalQuery),
    responses((status = 200, body = JournalList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<JournalQuery>,
) -> Result<Json<JournalList>, ApiError> {
    Ok(Json(journal::journal_list(&state, &caller, q).await?))
}

/// `POST /api/v1/journal/{id}/dispatch`: dispatch an event as a work order of a household of
/// its grid (the door nearest the event); the order reaches the grid's phones at their next
/// sync, the grid's worker first-responsible.
#[utoipa::path(post, path = "/api/v1/journal/{id}/dispatch", tag = "journal", security(("bearer" = [])),
    params(("id" = String, Path, description = "entry id")), request_body = DispatchRequest,
    responses((status = 200, body = Dispatched), (status = 400, description = "not a household id or a category", body = ErrorBody),
              (status = 403, description = "forbidden: only a supervisor of the grid dispatches", body = ErrorBody),
              (status = 404, description = "no such entry or household", body = ErrorBody),
              (status = 409, description = "not_an_event, already_dispatched, or other_grid (the household is not of the event's grid)", body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn dispatch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DispatchRequest>,
) -> Result<Json<Dispatched>, ApiError> {
    Ok(Json(journal::dispatch(&state, &caller, &id, req).await?))
}

/// `POST /api/v1/journal/{id}/case`: track an event in the second ledger (双台账) as a case of
/// a household of its grid (the door nearest it); it is followed, rectified or settled and
/// checked like any case, and reaches the grid's phones at their next sync.
#[utoipa::path(post, path = "/api/v1/journal/{id}/case", tag = "journal", security(("bearer" = [])),
    params(("id" = String, Path, description = "entry id")), request_body = TrackRequest,
    responses((status = 200, body = Tracked), (status = 400, description = "not a household id, a ledger, a kind or a date", body = ErrorBody),
              (status = 403, description = "forbidden: only a supervisor of the grid tracks", body = ErrorBody),
              (status = 404, description = "no such entry or household", body = ErrorBody),
              (status = 409, description = "not_an_event, already_tracked, or other_grid (the household is not of the event's grid)", body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn track(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TrackRequest>,
) -> Result<Json<Tracked>, ApiError> {
    Ok(Json(journal::track(&state, &caller, &id, req).await?))
}

/// `GET /journal?unit=&kind=&from=&to=`: the events and work logs of a unit.
pub async fn journal_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<JournalQuery>,
) -> Result<Response, PageError> {
    journal_view(&state, &caller, q.from_form(), None).await
}

async fn journal_view(
    state: &AppState,
    caller: &Caller,
    q: JournalQuery,
    refused: Option<(&str, &'static str)>,
) -> Result<Response, PageError> {
    let filters = context! {
        unit => q.unit.clone().unwrap_or_default(),
        kind => q.kind.clone().unwrap_or_default(),
    };
    let units = service::households::org_units(state, caller).await?;
    let list = journal::journal_list(state, caller, q).await?;
    let doors = doors_of(state, &list).await?;
    let events = list.entries.iter().filter(|e| e.kind == "event").count();
    let logs = list.entries.len() - events;
    let problem = refused.map(|(entry, message)| context! { entry, message });
    let mut page = render_named(
        state,
        caller,
        "journal.html",
        context! {
            title => "事件与工作日志", signed_in => true, list, filters, units, doors, problem,
            counts => context! { events, logs },
        },
    )
    .await?;
    if refused.is_some() {
        *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(page)
}

/// The door numbers of the grids of the list's events not dispatched or tracked yet, per grid
/// (for the forms' choices).
async fn doors_of(
    state: &AppState,
    list: &JournalList,
) -> Result<BTreeMap<String, Vec<String>>, PageError> {
    let mut grids: Vec<String> = list
        .entries
        .iter()
        .filter(|e| e.kind == "event" && (e.order.is_none() || e.case.is_none()))
        .map(|e| e.grid.clone())
        .collect();
    grids.sort();
    grids.dedup();
    if grids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = state.index(move |ix| ix.households(&grids)).await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.grid).or_default().push(r.door);
    }
    for doors in out.values_mut() {
        doors.sort();
        doors.dedup();
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
pub struct DispatchForm {
    /// The door number of a household of the event's grid.
    #[serde(default)]
    pub door: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub urgent: Option<String>,
}

/// The household at the door typed on a form for event `id`, of the event's grid; `Err`
/// with what to tell the supervisor when the door is empty or the grid has none.
async fn door_household(
    state: &AppState,
    caller: &Caller,
    id: &str,
    door: &str,
) -> Result<Result<String, &'static str>, PageError> {
    let door = door.trim().to_string();
    if door.is_empty() {
        return Ok(Err("请填写事件附近住户的门牌号。"));
    }
    let entry = journal::visible_entry(state, caller, id).await?;
    let grid = vec![entry.grid.clone()];
    let found = state
        .index(move |ix| ix.households(&grid))
        .await?
        .into_iter()
        .find(|h| h.grid == entry.grid && h.door == door)
        .map(|h| h.id.to_string());
    Ok(found.ok_or("本网格没有这个门牌号的住户。"))
}

#[derive(Debug, Default, Deserialize)]
pub struct TrackForm {
    #[serde(default)]
    pub door: String,
    /// `hazard:<kind>` or `dispute:<kind>`.
    #[serde(default)]
    pub kind: String,
}

/// `POST /journal/{id}/case` (form): by door number; to the case's page once written.
pub async fn track_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<TrackForm>,
) -> Result<Response, PageError> {
    let back = JournalQuery::default();
    let household = match door_household(&state, &caller, &id, &form.door).await? {
        Ok(h) => h,
        Err(message) => return journal_view(&state, &caller, back, Some((&id, message))).await,
    };
    let (ledger, kind) = form.kind.split_once(':').unwrap_or(("", ""));
    let req = TrackRequest {
        household,
        ledger: ledger.to_string(),
        kind: kind.to_string(),
        due: None,
    };
    let message = match journal::track(&state, &caller, &id, req).await {
        Ok(t) => return Ok(Redirect::to(&format!("/cases/{}", t.case)).into_response()),
        Err(service::Error::Conflict {
            code: "already_tracked",
            ..
        }) => "这个事件已经登记台账。",
        Err(service::Error::Conflict { .. }) => "只有本网格的事件可以登记为本网格住户的台账事项。",
        Err(service::Error::Forbidden { .. }) => "只有本网格的管理人员可以把事件登记台账。",
        Err(service::Error::Invalid { .. }) => "请选择隐患或纠纷的类别。",
        Err(e) => return Err(e.into()),
    };
    journal_view(&state, &caller, back, Some((&id, message))).await
}

/// `POST /journal/{id}/dispatch` (form): by door number; to the order's page once written.
pub async fn dispatch_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<DispatchForm>,
) -> Result<Response, PageError> {
    let back = JournalQuery::default();
    let household = match door_household(&state, &caller, &id, &form.door).await? {
        Ok(h) => h,
        Err(message) => return journal_view(&state, &caller, back, Some((&id, message))).await,
    };
    let req = DispatchRequest {
        household,
        category: Some(form.category.trim().to_string()).filter(|c| !c.is_empty()),
        urgent: form.urgent.is_some(),
    };
    let message = match journal::dispatch(&state, &caller, &id, req).await {
        Ok(d) => return Ok(Redirect::to(&format!("/orders/{}", d.demand)).into_response()),
        Err(service::Error::Conflict {
            code: "already_dispatched",
            ..
        }) => "这个事件已经转为工单。",
        Err(service::Error::Conflict { .. }) => "只有本网格的事件可以转为本网格住户的工单。",
        Err(service::Error::Forbidden { .. }) => "只有本网格的管理人员可以把事件转为工单。",
        Err(service::Error::Invalid { .. }) => "请从列表中选择类别。",
        Err(e) => return Err(e.into()),
    };
    journal_view(&state, &caller, back, Some((&id, message))).await
}
