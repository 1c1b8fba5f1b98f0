//! The JSON API for people and devices (`/v1/me`, `/api/v1/...`). Every read of a household is
//! scope-checked and audited; a household outside the caller's scope answers exactly like one
//! that does not exist (404), so ids cannot be probed.

use axum::{
    Json,
    extract::{Path, State},
};
use qiaomen_protocol::{review::ReviewState, schema::ReviewDecision};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, auth::Caller, auth::SessionAuth};
use crate::{
    access::{Role, now_ms},
    service::{self, devices, households},
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user_id: String,
    pub device_id: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    /// Grids whose households the caller may read.
    pub grids: Vec<String>,
}

/// `GET /v1/me`: who the caller is and what they may read.
#[utoipa::path(get, path = "/v1/me", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    Ok(Json(Me {
        user_id: user.to_string(),
        device_id: match &caller {
            Caller::Device(d) => Some(d.device.to_string()),
            Caller::Session(_) => None,
        },
        roles: scope.roles.into_iter().collect(),
        grids: scope.read.into_iter().collect(),
    }))
}

/// A visit whole, as a supervisor reviews it: what was recorded (codes for machines) and
/// the same as lines in words (`lines`, zh-CN, `qiaomen_protocol::present`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VisitView {
    pub id: String,
    pub visit_day: String,
    pub worker: String,
    pub device: String,
    /// `met`, `nobody_home`, `refused`, `moved`.
    pub outcome: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub gps: Option<GpsView>,
    /// Members met, by id and name.
    pub people_met: Vec<PersonRef>,
    /// `{kind: need category code, detail}`.
    pub needs: Vec<ItemView>,
    /// `{kind: dispute kind code, detail}`.
    pub disputes: Vec<ItemView>,
    /// `{kind: hazard kind code, detail}`.
    pub hazards: Vec<ItemView>,
    /// Publicity codes (`anti_fraud`, ...).
    pub publicity: Vec<String>,
    pub note: String,
    /// The demands raised on this visit.
    pub demands: Vec<DemandBrief>,
    /// The visit in words, line by line.
    #[schema(value_type = Vec<Object>)]
    pub lines: Vec<qiaomen_protocol::present::Line>,
    /// Who wrote each of the visit's fields, from which device, when (`field` is the line's
    /// code).
    pub recorded_by: Vec<FieldWriter>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GpsView {
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PersonRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemView {
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DemandBrief {
    pub id: String,
    pub category: String,
    pub text: String,
    pub urgency: String,
    pub status: String,
}

/// Who wrote a visit's field.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldWriter {
    pub field: String,
    pub user: Option<String>,
    pub device: Option<String>,
    pub at_ms: i64,
}

/// A household as a supervisor reads it (the pages of the review issue build on this).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HouseholdView {
    pub id: String,
    pub grid: String,
    pub address: String,
    pub door_number: String,
    pub status: String,
    pub members: usize,
    pub key_groups: Vec<String>,
    /// The people of the household (ID-card and phone numbers masked).
    pub people: Vec<MemberView>,
    pub visits: Vec<VisitView>,
    /// The exact document version read (Automerge heads, hex).
    pub heads: Vec<String>,
    /// For every field: who wrote its current value, from which device, when.
    pub provenance: Vec<FieldProvenance>,
    /// Supervisors' reviews, each with whether it still holds for this version.
    pub reviews: Vec<ReviewView>,
    /// Visits returned for a fix and not fixed yet.
    pub open_tasks: Vec<String>,
    /// Fields holding concurrent values, each value with who wrote it, from which device,
    /// when, and the `op` that picks it in `conflicts/resolve`.
    pub conflicts: Vec<ConflictView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub relation: String,
    pub birth_date: Option<String>,
    /// Its last 4 characters only (`**************1234`): beside the birth date, any more
    /// digits would leave too few to guess (the check digit confirms a guess).
    pub id_number: Option<String>,
    pub key_groups: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConflictView {
    pub path: Vec<String>,
    /// The field by name (`成员 王建国 · 出生日期`).
    pub label: String,
    pub values: Vec<ConflictValue>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConflictValue {
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub op: String,
    pub user: Option<String>,
    pub device: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReviewView {
    pub id: String,
    pub visit: String,
    #[schema(value_type = String, example = "approved")]
    pub decision: ReviewDecision,
    pub comment: String,
    pub reviewer: String,
    pub at_ms: i64,
    pub heads: Vec<String>,
    #[schema(value_type = String, example = "current")]
    pub state: ReviewState,
    /// What changed in the visit between the version reviewed and now, line by line (empty
    /// while the review is current; `None` when the version reviewed is not held).
    #[schema(value_type = Option<Vec<Object>>)]
    pub changes: Option<Vec<qiaomen_protocol::present::Change>>,
}

/// Who wrote a field's current value(s).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldProvenance {
    pub path: Vec<String>,
    /// The field by name (`2026-12-15 的走访 · 走访记录`).
    pub label: String,
    pub writers: Vec<Writer>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Writer {
    pub user: Option<String>,
    pub device: Option<String>,
    pub at_ms: i64,
}

/// `GET /api/v1/households/{id}`: the merged record, for a caller whose scope holds its grid.
#[utoipa::path(get, path = "/api/v1/households/{id}", tag = "households", security(("bearer" = [])),
    params(("id" = String, Path, description = "household id")),
    responses((status = 200, body = HouseholdView), (status = 404, description = "missing or outside the caller's scope", body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn household(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<HouseholdView>, ApiError> {
    Ok(Json(
        households::household_view(&state, &caller, &id).await?,
    ))
}

/// `GET /api/v1/devices` (admin): every enrolled device.
#[utoipa::path(get, path = "/api/v1/devices", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<crate::access::tokens::DeviceRow>), (status = 403, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn devices(
    State(state): State<AppState>,
    session: SessionAuth,
) -> Result<Json<Vec<crate::access::tokens::DeviceRow>>, ApiError> {
    Ok(Json(devices::devices(&state, session.user).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// Revoke even though the device last reported work it has not uploaded (the phone is
    /// lost: that work is lost with it).
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/v1/devices/{id}/revoke?force=` (admin): a lost or stolen phone. Its token is
/// refused at once (`401 device_revoked`) and the phone wipes on its next request, losing what
/// it had not uploaded. Refused `409 device_has_pending` while the device last reported such
/// work (retire it instead if you have the phone), unless `force=true`. `GET /api/v1/devices`
/// shows each device's last sync and pending first.
#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "device id"), RevokeQuery),
    responses((status = 204, description = "revoked"), (status = 400, description = "malformed: the query is not the documented one", body = ErrorBody), (status = 409, description = "device_has_pending: it last reported work it has not uploaded", body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    session: SessionAuth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RevokeQuery>,
) -> Result<axum::http::StatusCode, ApiError> {
    devices::require_admin(&state, session.user).await?;
    let device = devices::device_id(&id)?;
    devices::end_device(&state, session.user, device, Some(q.force)).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `POST /api/v1/devices/{id}/retire` (admin): a handover. The phone goes on syncing: it
/// uploads what it holds, then it ends and wipes, and its token is refused
/// `401 device_retired`.
#[utoipa::path(post, path = "/api/v1/devices/{id}/retire", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 204, description = "retiring"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn retire(
    State(state): State<AppState>,
    session: SessionAuth,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    devices::require_admin(&state, session.user).await?;
    let device = devices::device_id(&id)?;
    devices::end_device(&state, session.user, device, None).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    #[serde(default)]
    pub after: i64,
    pub limit: Option<u32>,
}

/// `GET /api/v1/audit?after=&limit=` (admin): the audit log, oldest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Vec<crate::access::audit::AuditEntry>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    session: SessionAuth,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<crate::access::audit::AuditEntry>>, ApiError> {
    Ok(Json(
        devices::audit_log(&state, session.user, q.after, q.limit).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReviewRequest {
    #[schema(
        pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        example = "0192f4a0-7c3e-7d2a-9b1e-5a6c8d0e1f20"
    )]
    pub visit_id: String,
    pub decision: Decision,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub comment: String,
    /// The document version the supervisor saw (`heads` of the household view).
    #[schema(min_items = 1, max_items = 64, pattern = "^[0-9a-f]{64}$")]
    pub heads: Vec<String>,
}

/// A supervisor's decision (the API's name for `schema::ReviewDecision`).
/// Codes as in `qiaomen_protocol::vocab`; the first release's `Approved`/`Returned` still parse.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    #[serde(alias = "Approved")]
    Approved,
    #[serde(alias = "Returned")]
    Returned,
}

impl From<Decision> for ReviewDecision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Approved => ReviewDecision::Approved,
            Decision::Returned => ReviewDecision::Returned,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReviewCreated {
    pub review_id: String,
}

/// `POST /api/v1/households/{id}/reviews`: a supervisor of the household's grid approves a
/// visit or returns it for a fix, pinned to the version they saw. The review becomes a change
/// of the supervisor's web device, checked and stored like a phone's, and reaches the
/// worker's phone on its next sync.
#[utoipa::path(post, path = "/api/v1/households/{id}/reviews", tag = "households", security(("bearer" = [])),
    params(("id" = String, Path, description = "household id")), request_body = ReviewRequest,
    responses((status = 201, body = ReviewCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "unknown version", body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReviewRequest>,
) -> Result<(axum::http::StatusCode, Json<ReviewCreated>), ApiError> {
    let review_id = households::add_review(&state, &caller, &id, req).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(ReviewCreated {
            review_id: review_id.to_string(),
        }),
    ))
}

/// Settle a conflicting field (a `conflicts[].path` of the household view): keep the value
/// written by `op` (a `conflicts[].values[].op`), or write `value` instead.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ResolveRequest {
    Choose {
        path: Vec<String>,
        op: String,
    },
    Set {
        path: Vec<String>,
        #[schema(value_type = Object)]
        value: serde_json::Value,
    },
}

/// `POST /api/v1/households/{id}/conflicts/resolve`: a supervisor settles a concurrent
/// edit by picking one of the values or writing another; the result is a change of theirs
/// that syncs to the phones.
#[utoipa::path(post, path = "/api/v1/households/{id}/conflicts/resolve", tag = "households", security(("bearer" = [])),
    params(("id" = String, Path, description = "household id")), request_body = ResolveRequest,
    responses((status = 204, description = "resolved"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<axum::http::StatusCode, ApiError> {
    households::resolve_conflict(&state, &caller, &id, req).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The grid the household moves to (its unit id).
    #[schema(min_length = 1, max_length = 64)]
    pub grid: String,
}

/// `POST /api/v1/households/{id}/move`: moves a household to another grid, as a change of the
/// caller's web device. Only a supervisor of both grids may (SYNC-v1 §6 check 6.3, the same
/// rule a phone's change is judged by); work recorded before the move travels with the
/// household, and figures before the move stay with the old grid.
#[utoipa::path(post, path = "/api/v1/households/{id}/move", tag = "households", security(("bearer" = [])),
    params(("id" = String, Path, description = "household id")), request_body = MoveRequest,
    responses((status = 204, description = "moved"), (status = 400, body = ErrorBody), (status = 409, description = "same_grid: the household is in this grid already", body = ErrorBody), (status = 403, description = "not a supervisor of both grids", body = ErrorBody),
              (status = 404, description = "no such household or grid", body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn move_to(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<axum::http::StatusCode, ApiError> {
    households::move_household(&state, &caller, &id, req.grid).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// A household in a grid's list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HouseholdRow {
    pub id: String,
    pub door_number: String,
    pub address: String,
    pub status: String,
    pub key_groups: Vec<String>,
    pub members: usize,
    pub visits: usize,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Matches the door number, the address, a member's name or a key group.
    pub q: Option<String>,
}

/// `GET /api/v1/grids/{grid}/households?q=`: the households of a grid the caller may read,
/// by door number; `q` searches door number, address, members' names and key groups.
#[utoipa::path(get, path = "/api/v1/grids/{grid}/households", tag = "grids", security(("bearer" = [])),
    params(("grid" = String, Path, description = "grid code"), ListQuery),
    responses((status = 200, body = Vec<HouseholdRow>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn grid_households(
    State(state): State<AppState>,
    caller: Caller,
    Path(grid): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<HouseholdRow>>, ApiError> {
    Ok(Json(
        households::list_households(&state, &caller, grid, q.q).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (UTF-8 with a byte-order mark, so spreadsheets read the Chinese text) or `xlsx`.
    pub format: ExportFormat,
    pub q: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Xlsx,
}

impl ExportFormat {
    /// The file's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
        }
    }
}

/// A spreadsheet sent as a download named `file` (a name the server built, ASCII only).
pub fn attachment(file: &str, format: ExportFormat, body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                format.content_type().to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/v1/grids/{grid}/export?format=csv|xlsx&q=`: the grid's household list (the
/// current view, `q` as in the list) as a spreadsheet; audited as an export.
#[utoipa::path(get, path = "/api/v1/grids/{grid}/export", tag = "grids", security(("bearer" = [])),
    params(("grid" = String, Path, description = "grid code"), ExportQuery),
    responses((status = 200, description = "the list as a CSV or XLSX file",
        content((String = "text/csv"), (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn grid_export(
    State(state): State<AppState>,
    caller: Caller,
    Path(grid): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    let body = service::households::grid_export(&state, &caller, &grid, q.q, q.format).await?;
    let ext = match q.format {
        ExportFormat::Csv => "csv",
        ExportFormat::Xlsx => "xlsx",
    };
    let name: String = grid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    Ok(attachment(
        &format!("households-{name}.{ext}"),
        q.format,
        body,
    ))
}

/// One unit of the caller's part of the org, for the drill-down town → village → grid.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgUnit {
    #[serde(flatten)]
    pub unit: crate::access::org::Unit,
    /// Households of the grid (0 for other units).
    pub households: u64,
}

#[utoipa::path(get, path = "/api/v1/org", tag = "grids", security(("bearer" = [])),
    responses((status = 200, body = Vec<OrgUnit>), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
/// `GET /api/v1/org`: the units the caller may see (their assignments and everything below),
/// parents first, with each grid's household count.
pub async fn org(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<OrgUnit>>, ApiError> {
    Ok(Json(households::org_units(&state, &caller).await?))
}
