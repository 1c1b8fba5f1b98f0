//! The second ledger (双台账) over HTTP: the JSON API of [`crate::service::cases`] (the cases
//! of a unit, one case, a step, the ledger's export) and its zh-CN pages (the ledger of a
//! grid, village or town with its filters, one case with a form for the caller's steps).

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
    api::{self, ExportFormat},
    auth::Caller,
    pages::{PageError, PageSession, render_named},
};
use crate::{
    index::CaseRow,
    service::{
        self,
        cases::{self, CaseDetail, CaseStepRequest, CasesQuery},
    },
};

/// `GET /api/v1/cases`: the tracked disputes and hazards of the caller's grids (or of a
/// unit's), filtered by ledger, state, lateness and the day they were raised.
#[utoipa::path(get, path = "/api/v1/cases", tag = "ledger", security(("bearer" = [])),
    params(CasesQuery),
    responses((status = 200, body = Vec<CaseRow>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<CasesQuery>,
) -> Result<Json<Vec<CaseRow>>, ApiError> {
    Ok(Json(cases::case_list(&state, &caller, q).await?))
}

/// `GET /api/v1/cases/{id}`: one case, what it says, its history and the steps the caller
/// may take; audited.
#[utoipa::path(get, path = "/api/v1/cases/{id}", tag = "ledger", security(("bearer" = [])),
    params(("id" = String, Path, description = "case id")),
    responses((status = 200, body = CaseDetail), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CaseDetail>, ApiError> {
    Ok(Json(cases::case_detail(&state, &caller, &id).await?))
}

/// `POST /api/v1/cases/{id}/steps`: take a step; it is written to the household's document
/// (and reaches the grid's phones) and answered with the case as it now stands.
#[utoipa::path(post, path = "/api/v1/cases/{id}/steps", tag = "ledger", security(("bearer" = [])),
    params(("id" = String, Path, description = "case id")), request_body = CaseStepRequest,
    responses((status = 200, body = CaseDetail), (status = 400, description = "not a step, or a field does not read", body = ErrorBody),
              (status = 403, description = "not_allowed: the caller's role may not take this step", body = ErrorBody),
              (status = 404, description = "no such case, or no such user to assign", body = ErrorBody),
              (status = 409, description = "invalid_step: the step does not follow from the case's state or lacks its data; stale_order: the case moved on meanwhile", body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn step(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CaseStepRequest>,
) -> Result<Json<CaseDetail>, ApiError> {
    cases::take_step(&state, &caller, &id, req).await?;
    Ok(Json(cases::case_detail(&state, &caller, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerExportQuery {
    /// An org unit id (default: every grid the caller reads).
    pub unit: Option<String>,
    /// `hazard` or `dispute`; empty: both.
    #[param(value_type = String, required = false, pattern = "^(|hazard|dispute)$")]
    pub ledger: Option<String>,
    #[param(value_type = String, required = false,
        pattern = "^(|open|assigned|in_hand|resolved|checked|escalated)$")]
    pub state: Option<String>,
    #[param(value_type = String, required = false, pattern = "^(|true|false)$")]
    pub overdue: Option<String>,
    /// Cases raised from this day (YYYY-MM-DD) to `to`.
    #[param(value_type = String, required = false, format = Date)]
    pub from: Option<String>,
    #[param(value_type = String, required = false, format = Date)]
    pub to: Option<String>,
    /// `xlsx` or `csv` (UTF-8 with a byte-order mark).
    pub format: ExportFormat,
}

/// `GET /api/v1/cases/export?unit=&ledger=&format=xlsx|csv`: the ledger (台账) of a unit, one
/// row per case with what it says, where it stands and its result, with Chinese headers;
/// audited as an export.
#[utoipa::path(get, path = "/api/v1/cases/export", tag = "ledger", security(("bearer" = [])),
    params(LedgerExportQuery),
    responses((status = 200, description = "the ledger as an XLSX or CSV file",
        content((Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"), (String = "text/csv"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LedgerExportQuery>,
) -> Result<Response, ApiError> {
    let format = q.format;
    let query = CasesQuery {
        unit: q.unit,
        ledger: q.ledger,
        state: q.state,
        overdue: q.overdue,
        from: q.from,
        to: q.to,
    };
    let (file, body) = cases::ledger_export(&state, &caller, query, format).await?;
    Ok(api::attachment(&file, format, body))
}

/// `GET /ledger?unit=&ledger=&state=&overdue=&from=&to=`: the ledger page of a unit (a grid,
/// a village, a town), its counts by ledger and state, and the cases.
pub async fn ledger_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<CasesQuery>,
) -> Result<Response, PageError> {
    let q = q.from_form();
    let filters = context! {
        unit => q.unit.clone().unwrap_or_default(),
        ledger => q.ledger.clone().unwrap_or_default(),
        state => q.state.clone().unwrap_or_default(),
        overdue => q.overdue.as_deref() == Some("true"),
        from => q.from.clone().unwrap_or_default(),
        to => q.to.clone().unwrap_or_default(),
    };
    let export = format!(
        "/api/v1/cases/export?{}",
        serde_urlencoded::to_string(
            [
                ("unit", q.unit.clone().unwrap_or_default()),
                ("ledger", q.ledger.clone().unwrap_or_default()),
                ("state", q.state.clone().unwrap_or_default()),
                ("overdue", q.overdue.clone().unwrap_or_default()),
                ("from", q.from.clone().unwrap_or_default()),
                ("to", q.to.clone().unwrap_or_default()),
                ("format", "xlsx".to_string()),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect::<Vec<_>>()
        )
        .unwrap_or_default()
    );
    let units = service::households::org_units(&state, &caller).await?;
    let rows = cases::case_list(&state, &caller, q).await?;
    let open = rows.iter().filter(|r| is_open(&r.state)).count();
    let overdue = rows.iter().filter(|r| r.overdue).count();
    let all = rows.len();
    render_named(
        &state,
        &caller,
        "ledger.html",
        context! {
            title => "双台账", signed_in => true, rows, filters, export, units,
            counts => context! { all, open, overdue },
        },
    )
    .await
}

fn is_open(state: &str) -> bool {
    qiaomen_protocol::vocab::Term::from_code(state)
        .is_some_and(qiaomen_protocol::ledger::CaseState::is_open)
}

/// `GET /cases/{id}`: one case, what it says, its history, and a form for the caller's steps.
pub async fn case_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    case_view(&state, &caller, &id, None).await
}

async fn case_view(
    state: &AppState,
    caller: &Caller,
    id: &str,
    refused: Option<(&CaseStepForm, &'static str, String)>,
) -> Result<Response, PageError> {
    let c = cases::case_detail(state, caller, id).await?;
    let (typed, problem) = match refused {
        Some((form, field, message)) => (
            Some(context! {
                action => form.action, comment => form.comment, assignee => form.assignee,
                due => form.due, category => form.category,
            }),
            Some(context! { field, message }),
        ),
        None => (None, None),
    };
    let mut page = render_named(
        state,
        caller,
        "case.html",
        context! { title => "台账事项", signed_in => true, c, typed, problem },
    )
    .await?;
    if problem.is_some() {
        *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(page)
}

#[derive(Debug, Default, Deserialize)]
pub struct CaseStepForm {
    pub action: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub assignee: String,
    #[serde(default)]
    pub due: String,
    #[serde(default)]
    pub category: String,
}

impl CaseStepForm {
    /// What the step needs that the form lacks, named by its field, before it is sent.
    fn missing(&self) -> Option<(&'static str, String)> {
        let empty = |v: &str| v.trim().is_empty();
        let need = |field, message: &str| Some((field, message.to_string()));
        match self.action.as_str() {
            "assign" if empty(&self.assignee) => need("assignee", "分派需要填写责任人。"),
            "resolve" if empty(&self.comment) => need("comment", "化解/整改完成需要填写处理结果。"),
            "reopen" if empty(&self.comment) => need("comment", "验收不通过需要填写原因。"),
            _ if self.comment.chars().count() > 2000 => need("comment", "说明最多 2000 字。"),
            _ => None,
        }
    }
}

/// `POST /cases/{id}/step` (form).
pub async fn case_step_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<CaseStepForm>,
) -> Result<Response, PageError> {
    if let Some((field, message)) = form.missing() {
        return case_view(&state, &caller, &id, Some((&form, field, message))).await;
    }
    let opt = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    let req = CaseStepRequest {
        action: form.action.clone(),
        comment: form.comment.clone(),
        assignee: opt(&form.assignee),
        due: opt(&form.due),
        category: opt(&form.category),
    };
    let (field, message) = match cases::take_step(&state, &caller, &id, req).await {
        Ok(()) => return Ok(Redirect::to(&format!("/cases/{id}")).into_response()),
        Err(service::Error::NotFound {
            code: "no_such_user",
            ..
        }) => ("assignee", "没有这个用户，请填写责任人的登录名。"),
        Err(service::Error::Conflict { .. }) => (
            "action",
            "事项的状态已经变化，这一步现在不能办理。请查看办理记录后重新选择。",
        ),
        Err(service::Error::Forbidden { .. }) => ("action", "这一步不归您办理。"),
        Err(service::Error::Invalid { .. }) => ("due", "请检查期限（年-月-日）和说明。"),
        Err(e) => return Err(e.into()),
    };
    case_view(
        &state,
        &caller,
        &id,
        Some((&form, field, message.to_string())),
    )
    .await
}
