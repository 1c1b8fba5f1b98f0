//! The API of the pictures and reports of the figures ([`crate::service::figures`] computes
//! them): the coverage of a unit per visit day over the last
//! cycles, demands received and resolved per month, a grid's households and a visit day's
//! visits placed by GPS, the printable monthly report (访情通报) and the statistics as a
//! spreadsheet.
//!
//! Every number is one the coverage report or the statistics already compute, by the same
//! functions over the same scope checks: a visit day's figures are [`figures::due_on`]
//! summed as `GET /api/v1/coverage` sums them (as of their day, from the read model), a
//! month's demands are [`crate::stats::demands_by_month`] over the order rows `GET /api/v1/stats`
//! reads, and the report's and the export's figures are [`figures::period_figures`]. The
//! SVG is drawn by [`crate::charts`].

use axum::{Json, extract::State, response::Response};
use qiaomen_protocol::{calendar::Day, coverage::Tally};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, ApiQuery, AppState, ErrorBody,
    api::{self, ExportFormat},
    auth::Caller,
    workflow::PeriodQuery,
};
use crate::{access::org::UnitKind, service::figures};

// ---------------------------------------------------------------- coverage per visit day

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// An org unit id (default: the caller's topmost unit).
    pub unit: Option<String>,
    /// How many visit days, 1-24 (default 6).
    #[param(value_type = String, required = false, pattern = "^([1-9]|1[0-9]|2[0-4])$")]
    pub cycles: Option<String>,
    /// The series ends with the visit day whose cycle holds this date (default: today; a
    /// later date counts as today).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub day: Option<String>,
}

/// One visit day's coverage, as `GET /api/v1/coverage` counts it for that day.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeriesDay {
    pub visit_day: String,
    pub due: u64,
    /// Met.
    pub visited: u64,
    /// Visited and nobody met (nobody home, refused, moved away).
    pub not_met: u64,
    /// Not visited yet, its catch-up window still open.
    pub pending: u64,
    /// Not visited, the catch-up window closed.
    pub missed: u64,
    /// visited ÷ due; `null` when nobody was due.
    pub rate: Option<f64>,
}

impl SeriesDay {
    pub(crate) fn of(day: Day, t: &Tally) -> Self {
        SeriesDay {
            visit_day: day.to_string(),
            due: t.due,
            visited: t.visited,
            not_met: t.nobody_home + t.refused + t.moved,
            pending: t.pending,
            missed: t.missed,
            rate: (t.due > 0).then(|| t.visited as f64 / t.due as f64),
        }
    }
}

/// A unit, by id, name and kind.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnitRef {
    pub id: String,
    pub name: String,
    pub kind: UnitKind,
}

/// The coverage of a unit on each of its last visit days.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CoverageSeries {
    pub unit: UnitRef,
    pub today: String,
    /// Oldest first.
    pub days: Vec<SeriesDay>,
    /// Logged changes not counted yet (0 but right after a large upload).
    pub behind: u64,
}

/// `GET /api/v1/coverage/series?unit=&cycles=6&day=`: the coverage of a unit on each of its
/// last visit days (due, visited, not met, pending, missed), each as `GET /api/v1/coverage`
/// reports that day — as of its day: later registrations and moves do not change it.
#[utoipa::path(get, path = "/api/v1/coverage/series", tag = "workflow", security(("bearer" = [])),
    params(SeriesQuery),
    responses((status = 200, body = CoverageSeries), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn coverage_series(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> Result<Json<CoverageSeries>, ApiError> {
    Ok(Json(figures::series_for(&state, &caller, q).await?))
}

// ---------------------------------------------------------------- the charts of a unit

// ---------------------------------------------------------------- a grid's map

// ---------------------------------------------------------------- the monthly report

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    pub unit: Option<String>,
    /// `YYYY-MM` (default: this month).
    pub month: Option<String>,
}

// ---------------------------------------------------------------- the statistics as a spreadsheet

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsExportQuery {
    /// An org unit id (default: the caller's topmost unit).
    pub unit: Option<String>,
    /// First day, YYYY-MM-DD (default: the first of this month).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (default: today).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
    /// `xlsx` or `csv` (UTF-8 with a byte-order mark).
    pub format: ExportFormat,
}

/// `GET /api/v1/stats/export?unit=&from=&to=&format=xlsx|csv`: the statistics of a unit, of
/// each unit below it and of each of its grids for a period (the figures of
/// `GET /api/v1/stats`), one row each, by name, with Chinese headers and unit kinds; audited
/// as an export.
#[utoipa::path(get, path = "/api/v1/stats/export", tag = "workflow", security(("bearer" = [])),
    params(StatsExportQuery),
    responses((status = 200, description = "the statistics as an XLSX or CSV file",
        content((Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"), (String = "text/csv"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn stats_export(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<StatsExportQuery>,
) -> Result<Response, ApiError> {
    let format = q.format;
    let period = PeriodQuery {
        unit: q.unit,
        from: q.from,
        to: q.to,
    };
    let (file, body) = figures::stats_export(&state, &caller, period, format).await?;
    Ok(api::attachment(&file, format, body))
}
