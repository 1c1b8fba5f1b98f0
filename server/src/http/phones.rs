//! Phones' health for supervisors: per grid, each worker's phone with its last sync, what it
//! reported still holding, what it runs (library and app versions, the sync request's `agent`)
//! and its worker; and the phones not synced for N days (`stale_days`).

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiQuery, AppState, ErrorBody, auth::Caller, pages::PageSession};
use crate::service::devices;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PhonesQuery {
    /// An org unit id (default: the caller's topmost unit).
    pub unit: Option<String>,
    /// Only the phones whose last sync is at least this many days ago, or that never synced
    /// (0-3650).
    #[param(minimum = 0, maximum = 3650)]
    pub stale_days: Option<u32>,
}

/// A worker's phone, as a supervisor watches it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PhoneRow {
    pub grid: String,
    pub grid_name: String,
    pub device: String,
    /// The phone by name: `张伟的手机，12-01 登记`.
    pub label: String,
    /// The worker's user id and name.
    pub worker: String,
    pub worker_name: String,
    pub enrolled_ms: i64,
    pub last_sync_ms: Option<i64>,
    /// Whole days since its last sync; `None`: it never synced.
    pub days_since_sync: Option<i64>,
    /// What it reported still holding (changes not acknowledged, task reports not sent)
    /// after its last sync; `None`: it never said (an older phone, or never synced).
    pub pending: Option<i64>,
    /// What it runs, as it said: `qiaomen/<library version> <app>/<version>`.
    pub agent: Option<String>,
    /// `active` or `retiring` (device states, `server::vocab`).
    pub status: String,
}

/// `GET /api/v1/phones?unit=&stale_days=`: the workers' phones of the grids the caller
/// supervises below a unit, with last sync, pending work, versions and worker.
#[utoipa::path(get, path = "/api/v1/phones", tag = "workflow", security(("bearer" = [])),
    params(PhonesQuery),
    responses((status = 200, body = Vec<PhoneRow>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn phones(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PhonesQuery>,
) -> Result<Json<Vec<PhoneRow>>, ApiError> {
    Ok(Json(devices::phones_of(&state, &caller, &q).await?))
}

/// `GET /phones?unit=&stale_days=`: the same as a page.
pub async fn phones_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    ApiQuery(q): ApiQuery<PhonesQuery>,
) -> Result<Response, super::pages::PageError> {
    let rows = devices::phones_of(&state, &caller, &q).await?;
    let stale_days = q.stale_days;
    super::pages::render_named(
        &state,
        &caller,
        "phones.html",
        minijinja::context! {
            title => "网格员手机", signed_in => true, rows, stale_days, unit => q.unit,
        },
    )
    .await
    .map(IntoResponse::into_response)
}
