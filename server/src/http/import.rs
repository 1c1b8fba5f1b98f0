//! The 12345 hotline import over HTTP: `POST /api/v1/orders/import` (JSON, CSV or XLSX; with
//! `?dry_run=true` a preview that writes nothing) and the service the `/orders/import` page
//! calls ([`read_file`], [`import`]). The file is read by [`crate::hotline`] (no IO); here
//! each good row is checked against the records and, unless previewing, written:
//!
//! 1. a row with bad cells is an error, with its column, code and reason;
//! 2. a hotline number imported before is `already_imported` (skipped: imports are idempotent
//!    by it; imports write one at a time — a mutex on one server, a lease in the database
//!    across servers — each after the read model has read what the log holds, so two at once
//!    cannot both create an order);
//! 3. grid + door number must name exactly one household of a grid the caller reads, else
//!    `no_household` (the same answer whether it is missing or out of scope);
//! 4. the demand is added as a server-built change of the caller's web device
//!    (`workflow::add_demand`), first-responsible the grid's worker (首问负责); the writer's
//!    policy may still refuse it (`not_allowed`), which a preview cannot tell.
//!
//! What is logged or audited names rows and ids, never a cell.

use std::collections::HashMap;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, header},
};
use qiaomen_protocol::{ids::HouseholdId, schema::DemandSource};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, ApiQuery, AppState, ErrorBody,
    auth::Caller,
    workflow::{DemandCreated, add_demand, new_demand},
};
use crate::{
    access::now_ms,
    hotline::{self, Column, FileError, Format, Row, RowErrorCode},
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

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        ApiError::BadRequest {
            code: e.code(),
            message: e.reason_zh(),
        }
    }
}

/// Reads an import file off the async threads (an XLSX file is unzipped and parsed).
pub(crate) async fn read_file(format: Format, bytes: Bytes) -> Result<Vec<Row>, ApiError> {
    tokio::task::spawn_blocking(move || hotline::parse(format, &bytes))
        .await
        .map_err(|_| ApiError::BadRequest {
            code: FileError::Xlsx.code(),
            message: FileError::Xlsx.reason_zh(),
        })?
        .map_err(ApiError::from)
}

/// Checks `rows` against the records and, unless `dry_run`, imports the good ones.
pub(crate) async fn import(
    state: &AppState,
    caller: &Caller,
    rows: &[Row],
    dry_run: bool,
) -> Result<ImportReport, ApiError> {
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    // One import writes at a time, and looks at the read model once it has read everything
    // acknowledged before: an order another import (or this file a moment ago) created is
    // seen, however soon after and however many imports run at once.
    if dry_run {
        return checked(state, caller, &scope, rows, true).await;
    }
    // On one server a mutex; across the servers of one database a lease in it.
    let _one_here = state.imports.lock().await;
    let holder = lease_holder();
    let mut waited = std::time::Duration::ZERO;
    while !state
        .access(|db| db.take_lease(IMPORT_LEASE, holder, IMPORT_LEASE_MS))
        .await?
    {
        if waited >= IMPORT_WAIT {
            return Err(ApiError::Unavailable);
        }
        tokio::time::sleep(IMPORT_POLL).await;
        waited += IMPORT_POLL;
    }
    let report = checked(state, caller, &scope, rows, false).await;
    state
        .access(|db| db.release_lease(IMPORT_LEASE, holder))
        .await?;
    report
}

/// The lease an import holds while it writes ([`crate::access::shared`]).
const IMPORT_LEASE: &str = "hotline_import";
/// Longer than an import of the most rows a file may have takes; a server that dies holding
/// it holds up the others' imports no longer.
const IMPORT_LEASE_MS: i64 = 10 * 60 * 1000;
/// How long an import waits for another server's to end before answering 503.
const IMPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const IMPORT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// This process, as a holder of leases.
fn lease_holder() -> &'static str {
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| qiaomen_protocol::ids::Uuid::now_v7().to_string())
}

/// The rows checked against the records and, unless `dry_run`, the good ones written; an
/// import holds the lease around it.
async fn checked(
    state: &AppState,
    caller: &Caller,
    scope: &crate::access::Scope,
    rows: &[Row],
    dry_run: bool,
) -> Result<ImportReport, ApiError> {
    let user = caller.user();
    // One look at the read model for every good row: imported before, and its household.
    let keys: Vec<(String, String, String)> = rows
        .iter()
        .filter_map(|r| r.order.as_ref().ok())
        .map(|o| (o.reference.clone(), o.grid.clone(), o.door_number.clone()))
        .collect();
    let found: Vec<(bool, Option<HouseholdId>)> = state
        .index_caught_up(move |ix| {
            keys.iter()
                .map(|(r, g, d)| Ok((ix.has_external_ref(r)?, ix.household_by_door(g, d)?)))
                .collect()
        })
        .await?;
    let mut found = found.into_iter();
    let mut workers = HashMap::new();
    let mut report = ImportReport {
        dry_run,
        created: Vec::new(),
        would_create: 0,
        skipped: 0,
        errors: Vec::new(),
        rows: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        let row = r.row;
        let fail = |report: &mut ImportReport, code: RowErrorCode| {
            report.errors.push(ImportError {
                row,
                column: None,
                code,
                reason_zh: code.reason_zh(None, None),
            });
            RowStatus::Error
        };
        let status = match &r.order {
            Err(problems) => {
                for p in problems {
                    report.errors.push(ImportError {
                        row,
                        column: Some(p.column),
                        code: p.code,
                        reason_zh: p.reason_zh(),
                    });
                }
                RowStatus::Error
            }
            Ok(o) => {
                let (exists, household) = found.next().ok_or(ApiError::Internal)?;
                match household {
                    _ if exists => {
                        report.skipped += 1;
                        RowStatus::AlreadyImported
                    }
                    Some(h) if scope.may_read(&o.grid) => {
                        if dry_run {
                            report.would_create += 1;
                            RowStatus::WouldCreate
                        } else {
                            let mut d = new_demand(
                                user,
                                o.category,
                                o.text.clone(),
                                o.urgent,
                                DemandSource::Hotline,
                                Some(o.reference.clone()),
                            );
                            // 首问负责: a hotline order is the grid worker's from the start.
                            if !workers.contains_key(&o.grid) {
                                let grid = o.grid.clone();
                                let worker = state
                                    .access(move |db| db.grid_worker(&grid, now_ms()))
                                    .await?;
                                workers.insert(o.grid.clone(), worker);
                            }
                            d.first_responsible = workers[&o.grid];
                            let demand_id = d.id.to_string();
                            match add_demand(state, caller, h, d, "import_order").await {
                                Ok(()) => {
                                    report.created.push(DemandCreated {
                                        demand_id: demand_id.clone(),
                                    });
                                    report.rows.push(ImportRow {
                                        row,
                                        reference: o.reference.clone(),
                                        status: RowStatus::Created,
                                        demand_id: Some(demand_id),
                                    });
                                    continue;
                                }
                                Err(ApiError::NotFound { .. }) => {
                                    fail(&mut report, RowErrorCode::NoHousehold)
                                }
                                Err(ApiError::Forbidden { .. }) => {
                                    fail(&mut report, RowErrorCode::NotAllowed)
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    _ => fail(&mut report, RowErrorCode::NoHousehold),
                }
            }
        };
        report.rows.push(ImportRow {
            row,
            reference: r.cells.get(Column::Ref).to_string(),
            status,
            demand_id: None,
        });
    }
    Ok(report)
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
