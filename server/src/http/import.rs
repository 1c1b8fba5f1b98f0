//! The 12345 hotline import over HTTP: `POST /api/v1/orders/import` (JSON, CSV or XLSX; with
//! `?dry_run=true` a preview that writes nothing) and its report; the `/orders/import` page
//! calls the same service ([`crate::service::import`]). The file is read by [`crate::hotline`]
//! (no IO); then each good row is checked against the records and, unless previewing, written:
//!
//! 1. a row with bad cells is an error, with its column, code and reason;
//! 2. a hotline number imported before is `already_imported` (skipped: imports are idempotent
//!    by it; imports write one at a time — a mutex on one server, a lease in the database
//!    across servers — each after the read model has read what the log holds, so two at once
//!    cannot both create an order);
//! 3. grid + door number must name exactly one household of a grid the caller reads, else
//!    `no_household` (the same answer whether it is missing or out of scope);
//! 4. the demand is added as a server-built change of the caller's web device
//!    ([`service::orders::add_demand`]), first-responsible the grid's worker (首问负责); the writer's
//!    policy may still refuse it (`not_allowed`), which a preview cannot tell.
//!
//! What is logged or audited names rows and ids, never a cell.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, header},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiQuery, AppState, ErrorBody, auth::Caller, workflow::DemandCreated};
use crate::{
    hotline::{self, Column, Format, RowErrorCode},
    service::import::{import, read_file},
};

/// What became of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Imported now.
    Created,
    /// A preview: the row is good and would be imported.
    WouldCreate,
    /// Its hotline number was imported before; skipped.
    AlreadyImported,
    /// Not imported: see the report's `errors` for this row.
    Error,
}

/// One row of the file and what became of it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportRow {
    /// 1-based, counted from the first row after the header (JSON: the array's index + 1).
    pub row: usize,
    /// The row's hotline number, as given (may be empty).
    #[serde(rename = "ref")]
    pub reference: String,
    pub status: RowStatus,
    /// The demand created (`created` only).
    pub demand_id: Option<String>,
}

/// One problem of one row (a row may have several).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportError {
    /// 1-based, counted from the first row after the header (JSON: the array's index + 1).
    pub row: usize,
    /// The column at fault, if one is.
    pub column: Option<Column>,
    pub code: RowErrorCode,
    /// For people, in Chinese; never quotes the cell.
    pub reason_zh: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// A preview (`?dry_run=true`): nothing was written.
    pub dry_run: bool,
    /// The demands created (none in a preview).
    pub created: Vec<DemandCreated>,
    /// Rows a preview found good (0 when not a preview).
    pub would_create: usize,
    /// Rows whose number was imported before.
    pub skipped: usize,
    /// Every problem, row by row.
    pub errors: Vec<ImportError>,
    /// Every data row, in the file's order.
    pub rows: Vec<ImportRow>,
}

impl ImportReport {
    /// The rows not imported for a problem, each with its problems.
    pub fn bad_rows(&self) -> Vec<(usize, Vec<&ImportError>)> {
        let mut out: Vec<(usize, Vec<&ImportError>)> = Vec::new();
        for e in &self.errors {
            match out.last_mut() {
                Some((row, list)) if *row == e.row => list.push(e),
                _ => out.push((e.row, vec![e])),
            }
        }
        out
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Check every row and report what an import would do, writing nothing.
    pub dry_run: Option<bool>,
}

/// `POST /api/v1/orders/import[?dry_run=true]`: imports 12345 hotline work orders as demands
/// of the households they name (grid + door number). The body is JSON (an array), CSV
/// (`text/csv`: UTF-8 with or without BOM, or GBK/GB18030) or XLSX (its content type, or any
/// body that starts as a zip file; the first sheet), at most 1000 rows. CSV and XLSX take a
/// header row, in English (`ref,grid,door_number,category,text,urgent`) or Chinese (工单编号,
/// 网格, 门牌号, 类别, 诉求内容, 紧急), in any order, other columns ignored; `urgent` may be
/// left out or empty. Idempotent by `ref`; each bad row is reported (`errors`: row, column,
/// `code`, `reason_zh`) and the rest imported. A missing column, an unreadable file or too many
/// rows is a 400 for the whole file.
#[utoipa::path(post, path = "/api/v1/orders/import", tag = "workflow", security(("bearer" = [])),
    params(ImportQuery),
    request_body(content = Vec<HotlineOrder>, description = "JSON array; or CSV (text/csv) or XLSX (application/vnd.openxmlformats-officedocument.spreadsheetml.sheet) with a header row"),
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn import_orders(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::detect(content_type, &body).ok_or(ApiError::UnsupportedMediaType)?;
    let rows = read_file(format, body).await?;
    Ok(Json(
        import(&state, &caller, &rows, q.dry_run.unwrap_or(false)).await?,
    ))
}

pub use hotline::HotlineOrder;
