//! The 12345 hotline import: a file read by [`crate::hotline`] (no IO) into rows, then each
//! good row checked against the records and, unless previewing, written (the rules are
//! [`crate::http::import`]'s module doc). The API and the `/orders/import` page call it.
//!
//! What is logged or audited names rows and ids, never a cell.

use std::collections::HashMap;

use qiaomen_protocol::{ids::HouseholdId, schema::DemandSource};

use super::{
    Error, Result,
    orders::{add_demand, new_demand},
};
use crate::{
    access::now_ms,
    hotline::{self, Column, FileError, Format, Row, RowErrorCode},
    http::{
        AppState,
        auth::Caller,
        import::{ImportError, ImportReport, ImportRow, RowStatus},
        workflow::DemandCreated,
    },
};

/// A file the import cannot read at all: `400` with the file's code, in Chinese.
fn file_error(e: FileError) -> Error {
    Error::Invalid {
        code: e.code(),
        message: e.reason_zh(),
    }
}

/// Reads an import file off the async threads (an XLSX file is unzipped and parsed).
pub async fn read_file(
    format: Format,
    bytes: impl AsRef<[u8]> + Send + 'static,
) -> Result<Vec<Row>> {
    tokio::task::spawn_blocking(move || hotline::parse(format, bytes.as_ref()))
        .await
        .map_err(|_| file_error(FileError::Xlsx))?
        .map_err(file_error)
}

/// Checks `rows` against the records and, unless `dry_run`, imports the good ones.
pub async fn import(
    state: &AppState,
    caller: &Caller,
    rows: &[Row],
    dry_run: bool,
) -> Result<ImportReport> {
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
            return Err(Error::Busy);
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
) -> Result<ImportReport> {
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
                let (exists, household) = found.next().ok_or(Error::Internal)?;
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
                                Err(Error::NotFound { .. }) => {
                                    fail(&mut report, RowErrorCode::NoHousehold)
                                }
                                Err(Error::Forbidden { .. }) => {
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
