//! The JSON API for people and devices (`/v1/me`, `/api/v1/...`). Every read of a household is
//! scope-checked and audited; a household outside the caller's scope answers exactly like one
//! that does not exist (404), so ids cannot be probed.

use axum::{
    Json,
    extract::{Path, State},
};
use qiaomen_protocol::{
    doc::{Author, HouseholdDoc, actor_for},
    ids::{GridId, HouseholdId, ReviewId, UserId, VisitId},
    present,
    review::{ReviewState, heads_hex, known_version, open_tasks, review_state},
    schema::{Household, Review, ReviewDecision, Visit},
    vocab::Term,
    wire::{DocChanges, RejectCode},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, auth::Caller, auth::SessionAuth};
use crate::access::{Role, audit::Event, now_ms};

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

/// Records an audit event (ids and action names only).
pub(crate) async fn record(
    state: &AppState,
    user: UserId,
    device: Option<String>,
    action: &'static str,
    target: String,
    outcome: &'static str,
) -> Result<(), ApiError> {
    state
        .access(move |db| {
            db.audit(Event {
                user: Some(&user.to_string()),
                device: device.as_deref(),
                action,
                target: Some(&target),
                outcome,
            })
        })
        .await
}

/// Only the last 4 characters of an ID number, the rest `*` (as many as there were).
fn last_four(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let keep = chars.len().saturating_sub(4);
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep || chars.len() <= 4 {
                '*'
            } else {
                *c
            }
        })
        .collect()
}

/// A concurrent value as a conflict view shows it: ID numbers with their last 4 characters
/// only, phone numbers masked like everywhere else (`138****5678`); other fields as they are.
fn masked_conflict_value(path: &[String], value: serde_json::Value) -> serde_json::Value {
    let field = path.last().map(String::as_str).unwrap_or("");
    let mask: fn(&str) -> String = match field {
        "id_number" => last_four,
        "phone" => |s| qiaomen_protocol::schema::Sensitive::new(s).masked(),
        _ => return value,
    };
    match value {
        serde_json::Value::String(s) => serde_json::Value::String(mask(&s)),
        serde_json::Value::Null => serde_json::Value::Null,
        // Not a string where a number is kept: nothing of it is shown.
        _ => serde_json::Value::String("****".into()),
    }
}

/// A spreadsheet cell that cannot be read as a formula: a leading `=`, `+`, `-`, `@`, TAB
/// or CR gets a `'` before it.
pub(crate) fn inert_cell(c: &str) -> std::borrow::Cow<'_, str> {
    if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{c}").into()
    } else {
        c.into()
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such household".into(),
    }
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
    household_view(&state, &caller, &id).await.map(Json)
}

/// The household view for `caller` (scope-checked, audited): the API's and the pages'.
pub async fn household_view(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<HouseholdView, ApiError> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let user = caller.user();
    let device = match &caller {
        Caller::Device(d) => Some(d.device.to_string()),
        Caller::Session(_) => None,
    };
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let stored = state
        .readers
        .with(move |s| Ok((s.doc_grid(id)?, s.load_doc(id)?)))
        .await?;
    let allowed = matches!(&stored, (Some(grid), Some(_)) if scope.may_read(grid));
    record(
        state,
        user,
        device,
        "household_read",
        id.to_string(),
        if allowed { "ok" } else { "denied" },
    )
    .await?;
    let (Some(grid), Some(bytes)) = stored else {
        return Err(not_found());
    };
    if !allowed {
        return Err(not_found());
    }
    let view = tokio::task::spawn_blocking(move || -> Option<HouseholdView> {
        let _named = crate::panics::household(id);
        let mut doc = HouseholdDoc::load(&bytes).ok()?;
        let h = doc.household().ok()?;
        Some(view_of(&mut doc, &h, grid))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .ok_or(ApiError::Internal)?;
    Ok(view)
}

/// The household view of a loaded document: the record, each visit whole, reviews with
/// what changed since, conflicts and who wrote each field, fields named in words.
fn view_of(doc: &mut HouseholdDoc, h: &Household, grid: String) -> HouseholdView {
    let origins = qiaomen_protocol::conflicts::field_origins(doc).unwrap_or_default();
    let reviews = h
        .reviews
        .values()
        .map(|r| {
            let state = review_state(doc, h, r);
            let changes = if state == ReviewState::Current {
                Some(Vec::new())
            } else {
                known_version(doc, &r.heads)
                    .and_then(|heads| doc.household_at(&heads).ok())
                    .map(|then| {
                        present::visit_changes(
                            then.visits.get(&r.visit).map(|v| (v, &then)),
                            h.visits.get(&r.visit).map(|v| (v, h)),
                        )
                    })
            };
            ReviewView {
                id: r.id.to_string(),
                visit: r.visit.to_string(),
                decision: r.decision,
                comment: r.comment.clone(),
                reviewer: r.reviewer.to_string(),
                at_ms: r.at_ms,
                heads: r.heads.clone(),
                state,
                changes,
            }
        })
        .collect();
    let conflicts = qiaomen_protocol::conflicts::conflicts(doc)
        .unwrap_or_default()
        .into_iter()
        .map(|c| ConflictView {
            label: present::field_label(&c.path, h),
            values: c
                .values
                .into_iter()
                .map(|v| ConflictValue {
                    value: masked_conflict_value(&c.path, v.value),
                    op: v.op,
                    user: v.author.map(|a| a.user.to_string()),
                    device: v.author.map(|a| a.device.to_string()),
                    at_ms: v.at_ms,
                })
                .collect(),
            path: c.path,
        })
        .collect();
    let open_tasks = open_tasks(doc, h)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.visit.to_string())
        .collect();
    HouseholdView {
        id: h.id.to_string(),
        grid,
        address: h.address.clone(),
        door_number: h.door_number.clone(),
        status: h.status.code().to_string(),
        members: h.members.len(),
        key_groups: h.tags.iter().map(|t| t.group.code().to_string()).collect(),
        people: h
            .members
            .values()
            .map(|m| MemberView {
                id: m.id.to_string(),
                name: m.name.clone(),
                relation: m.relation.code().to_string(),
                birth_date: m.birth_date.map(|d| d.to_string()),
                id_number: m.id_number.as_ref().map(|n| last_four(n.reveal())),
                key_groups: m.tags.iter().map(|t| t.group.code().to_string()).collect(),
            })
            .collect(),
        visits: h
            .visits
            .values()
            .map(|v| visit_view(v, h, &origins))
            .collect(),
        heads: heads_hex(doc),
        reviews,
        open_tasks,
        conflicts,
        provenance: origins
            .into_iter()
            .map(|o| FieldProvenance {
                label: present::field_label(&o.path, h),
                path: o.path,
                writers: o
                    .writers
                    .into_iter()
                    .map(|(author, at_ms)| Writer {
                        user: author.map(|a| a.user.to_string()),
                        device: author.map(|a| a.device.to_string()),
                        at_ms,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn visit_view(
    v: &Visit,
    h: &Household,
    origins: &[qiaomen_protocol::conflicts::FieldOrigin],
) -> VisitView {
    let id = v.id.to_string();
    let item = |kind: &str, detail: &str| ItemView {
        kind: kind.to_string(),
        detail: detail.to_string(),
    };
    // The writers of the visit's fields: the first path element under the visit is the
    // line's field (`needs/0/detail` is `needs`).
    let mut recorded_by: Vec<FieldWriter> = Vec::new();
    for o in origins {
        let [top, vid, field, ..] = o.path.as_slice() else {
            continue;
        };
        if top != "visits" || *vid != id {
            continue;
        }
        for (author, at_ms) in &o.writers {
            let w = FieldWriter {
                field: field.clone(),
                user: author.map(|a| a.user.to_string()),
                device: author.map(|a| a.device.to_string()),
                at_ms: *at_ms,
            };
            let seen = recorded_by
                .iter()
                .any(|x| x.field == w.field && x.user == w.user && x.device == w.device);
            if !seen {
                recorded_by.push(w);
            }
        }
    }
    VisitView {
        id,
        visit_day: v.visit_day.to_string(),
        worker: v.worker.to_string(),
        device: v.device.to_string(),
        outcome: v.outcome.code().to_string(),
        started_at_ms: v.started_at_ms,
        ended_at_ms: v.ended_at_ms,
        gps: v.gps.as_ref().map(|g| GpsView {
            lat: g.lat,
            lon: g.lon,
            accuracy_m: g.accuracy_m,
        }),
        people_met: v
            .people_met
            .iter()
            .map(|m| PersonRef {
                id: m.to_string(),
                name: h
                    .members
                    .get(m)
                    .map_or_else(|| "已删除的成员".to_string(), |x| x.name.clone()),
            })
            .collect(),
        needs: v
            .needs
            .iter()
            .map(|n| item(n.category.code(), &n.detail))
            .collect(),
        disputes: v
            .disputes
            .iter()
            .map(|d| item(d.kind.code(), &d.detail))
            .collect(),
        hazards: v
            .hazards
            .iter()
            .map(|d| item(d.kind.code(), &d.detail))
            .collect(),
        publicity: v.publicity.iter().map(|p| p.code().to_string()).collect(),
        note: v.note.as_str().to_string(),
        demands: v
            .demands_raised
            .iter()
            .filter_map(|d| h.demands.get(d))
            .map(|d| DemandBrief {
                id: d.id.to_string(),
                category: d.category.code().to_string(),
                text: d.text.clone(),
                urgency: d.urgency.code().to_string(),
                status: d.status.code().to_string(),
            })
            .collect(),
        lines: present::visit_lines(v, h),
        recorded_by,
    }
}

pub(super) async fn require_admin(state: &AppState, session: &SessionAuth) -> Result<(), ApiError> {
    let user = session.user;
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    if scope.roles.contains(&Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            code: "forbidden",
            message: "only an admin may do this".into(),
        })
    }
}

/// `GET /api/v1/devices` (admin): every enrolled device.
#[utoipa::path(get, path = "/api/v1/devices", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<crate::access::tokens::DeviceRow>), (status = 403, body = ErrorBody), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn devices(
    State(state): State<AppState>,
    session: SessionAuth,
) -> Result<Json<Vec<crate::access::tokens::DeviceRow>>, ApiError> {
    require_admin(&state, &session).await?;
    Ok(Json(state.access(|db| db.devices()).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// Revoke even though the device last reported work it has not uploaded (the phone is
    /// lost: that work is lost with it).
    #[serde(default)]
    pub force: bool,
}

fn device_id(id: &str) -> Result<qiaomen_protocol::ids::DeviceId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound {
        code: "not_found",
        message: "no such device".into(),
    })
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
    require_admin(&state, &session).await?;
    end_device(&state, session.user, device_id(&id)?, Some(q.force)).await?;
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
    require_admin(&state, &session).await?;
    end_device(&state, session.user, device_id(&id)?, None).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Revokes (`Some(force)`) or retires (`None`) a device for an admin, audited; the device as it
/// was. The pages call it too.
pub async fn end_device(
    state: &AppState,
    user: UserId,
    device: qiaomen_protocol::ids::DeviceId,
    revoke: Option<bool>,
) -> Result<crate::access::tokens::DeviceRow, ApiError> {
    state
        .access(move |db| {
            let (action, done) = match revoke {
                Some(force) => (
                    "revoke",
                    db.revoke_device_guarded(device, force)?.map_err(|held| held.0),
                ),
                None => ("retire", Ok(db.retire_device(device)?)),
            };
            db.audit(Event {
                user: Some(&user.to_string()),
                device: None,
                action,
                target: Some(&device.to_string()),
                outcome: if done.is_ok() { "ok" } else { "device_has_pending" },
            })?;
            Ok(done)
        })
        .await?
        .map_err(|held| ApiError::Conflict {
            code: "device_has_pending",
            message: format!(
                "the device last reported {} records it has not uploaded; retire it instead, or revoke with force=true if the phone is lost",
                held.pending.unwrap_or_default()
            ),
        })
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
    require_admin(&state, &session).await?;
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(
        state.access(move |db| db.audit_log(q.after, limit)).await?,
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
    let review_id = add_review(&state, &caller, &id, req).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(ReviewCreated {
            review_id: review_id.to_string(),
        }),
    ))
}

/// Stores a supervisor's review (the API's and the pages').
pub async fn add_review(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: ReviewRequest,
) -> Result<ReviewId, ApiError> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let bad = |message: &str| ApiError::BadRequest {
        code: "invalid",
        message: message.into(),
    };
    let visit: VisitId = req
        .visit_id
        .parse()
        .map_err(|_| bad("visit_id is not an id"))?;
    // The field rule of SYNC-v1 §13.8 (`review_comment`), told before the change is made.
    if req.comment.chars().count() > qiaomen_protocol::validate::MAX_TEXT_CHARS {
        return Err(bad("the comment has more than 2000 characters"));
    }
    let heads = req.heads;
    let (comment, decision) = (req.comment, ReviewDecision::from(req.decision));
    let review_id = ReviewId::new();
    supervisor_change(state, caller, id, "review", move |doc, author| {
        let household = doc.household().map_err(|_| ApiError::Internal)?;
        if !household.visits.contains_key(&visit) {
            return Err(ApiError::NotFound {
                code: "not_found",
                message: "no such visit in this household".into(),
            });
        }
        if known_version(doc, &heads).is_none() {
            return Err(ApiError::Conflict {
                code: "unknown_version",
                message: "heads must name a version of this household the server has".into(),
            });
        }
        let review = Review {
            id: review_id,
            visit,
            decision,
            comment,
            reviewer: author.user,
            device: author.device,
            at_ms: now_ms(),
            heads,
        };
        doc.add_review(author, now_ms(), &review)
            .map_err(|_| ApiError::Internal)
    })
    .await?;
    Ok(review_id)
}

/// Writes a supervisor's edit of a household as a change of their web device.
async fn supervisor_change(
    state: &AppState,
    caller: &Caller,
    id: HouseholdId,
    action: &'static str,
    build: impl FnOnce(&mut HouseholdDoc, &Author) -> Result<qiaomen_protocol::ChangeHash, ApiError>
    + Send
    + 'static,
) -> Result<(), ApiError> {
    web_change(
        state,
        caller,
        id,
        action,
        |scope, grid| {
            if !scope.may_read(grid) {
                return Err(not_found());
            }
            if !scope.supervises(grid, now_ms()) {
                return Err(ApiError::Forbidden {
                    code: "forbidden",
                    message: "only a supervisor of this grid may do this".into(),
                });
            }
            Ok(())
        },
        build,
    )
    .await
}

/// Writes an edit made on a web page or through the API as a change of the caller's web
/// device, checked by the same writer and policy as a phone's. `allowed` sees the caller's
/// scope and the household's grid first (404 for what they may not see).
pub(crate) async fn web_change(
    state: &AppState,
    caller: &Caller,
    id: HouseholdId,
    action: &'static str,
    allowed: impl FnOnce(&crate::access::Scope, &str) -> Result<(), ApiError>,
    build: impl FnOnce(&mut HouseholdDoc, &Author) -> Result<qiaomen_protocol::ChangeHash, ApiError>
    + Send
    + 'static,
) -> Result<(), ApiError> {
    let user = caller.user();
    let (scope, device) = state
        .access(move |db| Ok((db.scope(user, now_ms())?, db.web_device(user)?)))
        .await?;
    let (grid, bytes) = match state
        .readers
        .with(move |s| Ok((s.doc_grid(id)?, s.load_doc(id)?)))
        .await?
    {
        (Some(g), Some(b)) => (g, b),
        _ => return Err(not_found()),
    };
    allowed(&scope, &grid)?;
    let author = Author { user, device };
    let change = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let mut doc = HouseholdDoc::load(&bytes).map_err(|_| ApiError::Internal)?;
        doc.set_actor(actor_for(author.device));
        let hash = build(&mut doc, &author)?;
        doc.change_bytes(&hash).ok_or(ApiError::Internal)
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    let principal = std::sync::Arc::new(crate::access::policy::Principal {
        user,
        device,
        scope,
        server_built: true,
        demand_ids: Some(state.demand_ids.clone()),
        // Built here, stamped with the server's clock.
        clock_ok: Some(true),
    });
    let outcome = state
        .writer
        .submit(crate::ingest::Upload {
            principal: Some(principal),
            docs: vec![DocChanges {
                id,
                changes: vec![serde_bytes::ByteBuf::from(change)],
                whole: None,
            }],
            packing: None,
        })
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let refused = outcome.rejected.first().map(|r| r.code);
    record(
        state,
        user,
        Some(device.to_string()),
        action,
        id.to_string(),
        if refused.is_some() { "refused" } else { "ok" },
    )
    .await?;
    if let Some(code) = refused {
        return Err(match code {
            RejectCode::StaleOrder => ApiError::Conflict {
                code: "stale_order",
                message: "the work order moved on meanwhile; read it again".into(),
            },
            RejectCode::NotAllowed | RejectCode::OutOfScope => ApiError::Forbidden {
                code: "not_allowed",
                message: "the caller's role may not do this".into(),
            },
            RejectCode::Quarantined => ApiError::Unavailable,
            code => ApiError::Forbidden {
                code: "refused",
                message: format!("the change was refused: {}", code.name()),
            },
        });
    }
    Ok(())
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
    resolve_conflict(&state, &caller, &id, req).await?;
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
    move_household(&state, &caller, &id, req.grid).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Moves a household to `to` as the caller (the API's and the pages').
pub async fn move_household(
    state: &AppState,
    caller: &Caller,
    id: &str,
    to: String,
) -> Result<(), ApiError> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let target = to.clone();
    let kind = if to.len() > 64 {
        None
    } else {
        state.access(move |db| db.unit_kind_of(&target)).await?
    };
    if kind != Some(crate::access::org::UnitKind::Grid) {
        return Err(ApiError::NotFound {
            code: "no_such_grid",
            message: "no such grid to move to".into(),
        });
    }
    let now = now_ms();
    let target = GridId::new(&to);
    web_change(
        state,
        caller,
        id,
        "household_move",
        move |scope, grid| {
            if !scope.may_read(grid) {
                Err(not_found())
            } else if grid == to {
                Err(ApiError::Conflict {
                    code: "same_grid",
                    message: "the household is in this grid already".into(),
                })
            } else if !(scope.supervises(grid, now) && scope.supervises(&to, now)) {
                Err(ApiError::Forbidden {
                    code: "not_allowed",
                    message: "only a supervisor of both grids may move a household".into(),
                })
            } else {
                Ok(())
            }
        },
        move |doc, author| {
            doc.edit(author, now, |h| {
                h.grid = target;
                Ok(())
            })
            .map_err(|_| ApiError::Internal)?
            .1
            .ok_or(ApiError::Internal)
        },
    )
    .await
}

/// Settles a conflict as the caller (the API's and the pages').
pub async fn resolve_conflict(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: ResolveRequest,
) -> Result<(), ApiError> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let (path, resolution) = match req {
        ResolveRequest::Choose { path, op } => {
            (path, qiaomen_protocol::conflicts::Resolution::Choose(op))
        }
        ResolveRequest::Set { path, value } => {
            (path, qiaomen_protocol::conflicts::Resolution::Set(value))
        }
    };
    supervisor_change(state, caller, id, "resolve_conflict", move |doc, author| {
        qiaomen_protocol::conflicts::resolve(doc, author, now_ms(), &path, resolution).map_err(
            |e| match e {
                qiaomen_protocol::DocError::NotFound { .. } => ApiError::NotFound {
                    code: "not_found",
                    message: "no such field or value".into(),
                },
                _ => ApiError::BadRequest {
                    code: "invalid",
                    message: "the value does not fit the record".into(),
                },
            },
        )
    })
    .await?;
    Ok(())
}

/// The households among `docs` that `needle` (lower-case; empty: all) matches by door
/// number, address, a member's name or a key group, by door number.
pub(crate) fn matching_households(
    docs: Vec<(HouseholdId, Vec<u8>)>,
    needle: &str,
) -> Vec<qiaomen_protocol::schema::Household> {
    let mut found: Vec<_> = docs
        .into_iter()
        .filter_map(|(_, bytes)| HouseholdDoc::load(&bytes).ok()?.household().ok())
        .filter(|h| {
            needle.is_empty()
                || h.door_number.to_lowercase().contains(needle)
                || h.address.to_lowercase().contains(needle)
                || h.members
                    .values()
                    .any(|m| m.name.to_lowercase().contains(needle))
                // A key group by its label (独居) or its code (elderly_alone).
                || h.tags.iter().any(|t| {
                    t.group.label().contains(needle) || t.group.code().contains(needle)
                })
        })
        .collect();
    found.sort_by(|a, b| a.door_number.cmp(&b.door_number).then(a.id.cmp(&b.id)));
    found
}

fn key_groups(h: &qiaomen_protocol::schema::Household) -> Vec<String> {
    h.tags.iter().map(|t| t.group.code().to_string()).collect()
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
    list_households(&state, &caller, grid, q.q).await.map(Json)
}

/// The stored documents of a grid the caller may read (else the same 404 as a missing grid).
pub(crate) async fn grid_documents(
    state: &AppState,
    caller: &Caller,
    grid: &str,
) -> Result<Vec<(HouseholdId, Vec<u8>)>, ApiError> {
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    if !scope.may_read(grid) {
        return Err(ApiError::NotFound {
            code: "not_found",
            message: "no such grid".into(),
        });
    }
    let g = grid.to_string();
    state.readers.with(move |s| s.grid_docs(&g)).await
}

/// A grid's households matching `q`, for `caller` (scope-checked, audited).
pub async fn list_households(
    state: &AppState,
    caller: &Caller,
    grid: String,
    q: Option<String>,
) -> Result<Vec<HouseholdRow>, ApiError> {
    let user = caller.user();
    let docs = grid_documents(state, caller, &grid).await?;
    let needle = q.unwrap_or_default().trim().to_lowercase();
    let rows = tokio::task::spawn_blocking(move || {
        matching_households(docs, &needle)
            .into_iter()
            .map(|h| HouseholdRow {
                id: h.id.to_string(),
                key_groups: key_groups(&h),
                door_number: h.door_number,
                address: h.address,
                status: h.status.code().to_string(),
                members: h.members.len(),
                visits: h.visits.len(),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    record(state, user, None, "grid_list", grid, "ok").await?;
    Ok(rows)
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

const EXPORT_HEADER: [&str; 8] = [
    "户编号",
    "门牌号",
    "地址",
    "状态",
    "重点人群",
    "成员数",
    "走访次数",
    "最近走访日",
];

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
    use axum::response::IntoResponse;
    let user = caller.user();
    let docs = grid_documents(&state, &caller, &grid).await?;
    let needle = q.q.unwrap_or_default().trim().to_lowercase();
    let format = q.format;
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let rows: Vec<[String; 8]> = matching_households(docs, &needle)
            .into_iter()
            .map(|h| {
                [
                    h.id.to_string(),
                    h.door_number.clone(),
                    h.address.clone(),
                    h.status.label().to_string(),
                    h.tags
                        .iter()
                        .map(|t| t.group.label())
                        .collect::<Vec<_>>()
                        .join("、"),
                    h.members.len().to_string(),
                    h.visits.len().to_string(),
                    h.visits
                        .values()
                        .map(|v| v.visit_day.to_string())
                        .max()
                        .unwrap_or_default(),
                ]
            })
            .collect();
        if format == ExportFormat::Csv {
            let mut out = "\u{feff}".to_string();
            for row in std::iter::once(EXPORT_HEADER.map(String::from)).chain(rows) {
                let cells: Vec<String> = row
                    .iter()
                    .map(|c| {
                        // Quote every cell; a leading =,+,-,@,TAB,CR would be a formula in
                        // a spreadsheet.
                        format!("\"{}\"", inert_cell(c).replace('"', "\"\""))
                    })
                    .collect();
                out.push_str(&cells.join(","));
                out.push_str("\r\n");
            }
            Ok(out.into_bytes())
        } else {
            let mut book = rust_xlsxwriter::Workbook::new();
            let sheet = book.add_worksheet();
            let xl = |_| ApiError::Internal;
            for (c, h) in EXPORT_HEADER.iter().enumerate() {
                sheet.write_string(0, c as u16, *h).map_err(xl)?;
            }
            for (r, row) in rows.iter().enumerate() {
                for (c, cell) in row.iter().enumerate() {
                    sheet
                        .write_string(r as u32 + 1, c as u16, cell.as_str())
                        .map_err(xl)?;
                }
            }
            book.save_to_buffer().map_err(xl)
        }
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    let ext = match q.format {
        ExportFormat::Csv => "csv",
        ExportFormat::Xlsx => "xlsx",
    };
    record(&state, user, None, "export", format!("{grid}.{ext}"), "ok").await?;
    let ct = match q.format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, ct.to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"households-{}.{ext}\"",
                    grid.chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                        .collect::<String>()
                ),
            ),
        ],
        body,
    )
        .into_response())
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
    org_units(&state, &caller).await.map(Json)
}

/// The units `caller` may see, parents first, with household counts.
pub async fn org_units(state: &AppState, caller: &Caller) -> Result<Vec<OrgUnit>, ApiError> {
    let user = caller.user();
    let units = state
        .access(move |db| db.visible_units(user, now_ms()))
        .await?;
    let counts: std::collections::HashMap<String, u64> = state
        .readers
        .with(|s| s.grid_counts())
        .await?
        .into_iter()
        .collect();
    Ok(units
        .into_iter()
        .map(|unit| OrgUnit {
            households: if unit.kind == crate::access::org::UnitKind::Grid {
                counts.get(&unit.id).copied().unwrap_or(0)
            } else {
                0
            },
            unit,
        })
        .collect())
}
