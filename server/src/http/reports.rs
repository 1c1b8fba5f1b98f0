//! Pictures and reports of the figures: the coverage of a unit per visit day over the last
//! cycles, demands received and resolved per month, a grid's households and a visit day's
//! visits placed by GPS, the printable monthly report (访情通报) and the statistics as a
//! spreadsheet.
//!
//! Every number is one the coverage report or the statistics already compute, by the same
//! functions over the same scope checks: a visit day's figures are [`workflow::due_on`]
//! summed as `GET /api/v1/coverage` sums them (as of their day, from the read model), a
//! month's demands are [`stats::demands_by_month`] over the order rows `GET /api/v1/stats`
//! reads, and the report's and the export's figures are [`workflow::period_figures`]. The
//! SVG is drawn by [`crate::charts`].

use std::collections::{BTreeSet, HashMap};

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use qiaomen_protocol::{
    calendar::{self, Day},
    coverage::{CoverageState, Tally},
    ids::HouseholdId,
    vocab::Term,
};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, ApiQuery, AppState, ErrorBody,
    api::{self, ExportFormat},
    auth::Caller,
    workflow::{self, UnitScope, bad, due_on, given, parse_day, today},
};
use crate::{
    access::org::UnitKind,
    charts::{self, CoveragePoint, MapPoint, Mark, MonthPoint},
    stats::{self, Figures},
};

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
    fn of(day: Day, t: &Tally) -> Self {
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

/// The `n` visit days ending with the cycle of `last`, oldest first.
pub(crate) fn last_visit_days(last: Day, n: usize) -> Vec<Day> {
    let mut d = calendar::cycle_of(last);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(d);
        d = calendar::cycle_of(d.add_days(-1));
    }
    out.reverse();
    out
}

/// The coverage of `us` on each of `days`: one read of the read model, then each day counted
/// as the coverage report counts it.
async fn series_of(
    state: &AppState,
    us: &UnitScope,
    days: &[Day],
) -> Result<(Vec<SeriesDay>, u64), ApiError> {
    let grids = us.grids.clone();
    let (rows, behind) = state
        .index(move |ix| Ok((ix.households(&grids)?, ix.behind()?)))
        .await?;
    let today = today();
    let policy = state.workflow.coverage.clone();
    let series = days
        .iter()
        .map(|&day| {
            let mut t = Tally::default();
            for (_, _, due) in due_on(&rows, &us.grids, day, today, &policy) {
                t.add(&due);
            }
            SeriesDay::of(day, &t)
        })
        .collect();
    Ok((series, behind))
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
    series_for(&state, &caller, q).await.map(Json)
}

pub(crate) async fn series_for(
    state: &AppState,
    caller: &Caller,
    q: SeriesQuery,
) -> Result<CoverageSeries, ApiError> {
    // An empty `cycles=` is not a number of cycles (the schema's pattern says so too).
    let cycles = match q.cycles.as_deref() {
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=24).contains(n))
            .ok_or_else(|| bad("cycles must be 1 to 24"))?,
        None => 6,
    };
    let today = today();
    // As in the coverage report: an empty `day=` is not a date.
    let last = match q.day.as_deref() {
        Some(s) => parse_day(s, "day")?.min(today),
        None => today,
    };
    let us = workflow::unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
    let (days, behind) = series_of(state, &us, &last_visit_days(last, cycles)).await?;
    Ok(CoverageSeries {
        unit: UnitRef {
            id: us.unit.id.clone(),
            name: us.unit.name.clone(),
            kind: us.unit.kind,
        },
        today: today.to_string(),
        days,
        behind,
    })
}

// ---------------------------------------------------------------- the charts of a unit

/// The two charts of a unit, as SVG text (drawn from escaped text only), with their numbers.
#[derive(Debug, Serialize)]
pub(crate) struct UnitCharts {
    pub coverage_svg: String,
    pub demands_svg: String,
    pub series: Vec<SeriesDay>,
    pub months: Vec<MonthPoint>,
}

/// Coverage on the `cycles` visit days up to `last`, and demands in the `months` months up to
/// `last`'s, of `us`.
pub(crate) async fn unit_charts(
    state: &AppState,
    us: &UnitScope,
    last: Day,
    cycles: usize,
    months: usize,
) -> Result<UnitCharts, ApiError> {
    let last = last.min(today());
    let (series, _) = series_of(state, us, &last_visit_days(last, cycles)).await?;
    let grids = us.grids.clone();
    let orders = state.index(move |ix| ix.orders(&grids, &[])).await?;
    let span = stats::months_to(last, months);
    let months: Vec<MonthPoint> = span
        .iter()
        .zip(stats::demands_by_month(&orders, &span))
        .map(|(&(y, m), (received, resolved))| MonthPoint {
            month: format!("{y:04}-{m:02}"),
            received,
            resolved,
        })
        .collect();
    let points: Vec<CoveragePoint> = series
        .iter()
        .map(|d| CoveragePoint {
            day: d.visit_day.clone(),
            due: d.due,
            visited: d.visited,
        })
        .collect();
    Ok(UnitCharts {
        coverage_svg: charts::coverage_bars(&points),
        demands_svg: charts::demand_bars(&months),
        series,
        months,
    })
}

// ---------------------------------------------------------------- a grid's map

/// A grid's households and a visit day's visits placed by GPS.
#[derive(Debug, Serialize)]
pub(crate) struct GridMap {
    pub grid: String,
    pub visit_day: String,
    pub today: String,
    /// Due households by what became of them (as the coverage report says).
    pub met: u64,
    pub not_met: u64,
    pub not_visited: u64,
    /// Due households without a position (or no longer in the grid's records).
    pub without_gps: u64,
    /// The day's visits, and those recorded without a position.
    pub visits: u64,
    pub visits_without_gps: u64,
    pub svg: String,
}

/// The map of `grid` for the cycle of `day` (default today's), for `caller` (scope-checked as
/// the grid's household list, audited).
pub(crate) async fn grid_map(
    state: &AppState,
    caller: &Caller,
    grid: String,
    day: Option<String>,
) -> Result<GridMap, ApiError> {
    let today = today();
    let day = match given(&day) {
        Some(s) => calendar::cycle_of(parse_day(s, "day")?),
        None => calendar::cycle_of(today),
    };
    let docs = api::grid_documents(state, caller, &grid).await?;
    let grids = vec![grid.clone()];
    let rows = state.index(move |ix| ix.households(&grids)).await?;
    let policy = state.workflow.coverage.clone();
    let grids = [grid.clone()];
    let due: HashMap<HouseholdId, Mark> = due_on(&rows, &grids, day, today, &policy)
        .map(|(h, _, d)| {
            let mark = match d.state {
                CoverageState::Visited => Mark::Met,
                CoverageState::NotMet(_) => Mark::NotMet,
                CoverageState::Pending | CoverageState::Missed => Mark::NotVisited,
            };
            (h.id, mark)
        })
        .collect();
    let mut map = tokio::task::spawn_blocking(move || {
        let households = api::matching_households(docs, "");
        let mut map = GridMap {
            grid: String::new(),
            visit_day: day.to_string(),
            today: today.to_string(),
            met: 0,
            not_met: 0,
            not_visited: 0,
            without_gps: 0,
            visits: 0,
            visits_without_gps: 0,
            svg: String::new(),
        };
        for mark in due.values() {
            match mark {
                Mark::Met => map.met += 1,
                Mark::NotMet => map.not_met += 1,
                _ => map.not_visited += 1,
            }
        }
        let mut placed: BTreeSet<HouseholdId> = BTreeSet::new();
        let mut points = Vec::new();
        for h in &households {
            if let (Some(&mark), Some(g)) = (due.get(&h.id), &h.gps) {
                placed.insert(h.id);
                points.push(MapPoint {
                    lat: g.lat,
                    lon: g.lon,
                    mark,
                    label: format!("{} {}", h.door_number, h.address),
                });
            }
            for v in h.visits.values().filter(|v| v.visit_day == day) {
                map.visits += 1;
                match &v.gps {
                    Some(g) => points.push(MapPoint {
                        lat: g.lat,
                        lon: g.lon,
                        mark: Mark::Visit,
                        label: format!("{} {}", h.door_number, v.outcome.label()),
                    }),
                    None => map.visits_without_gps += 1,
                }
            }
        }
        map.without_gps = due.len() as u64 - placed.len() as u64;
        map.svg = charts::scatter(&points);
        map
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    api::record(state, caller.user(), None, "grid_map", grid.clone(), "ok").await?;
    map.grid = grid;
    Ok(map)
}

// ---------------------------------------------------------------- the monthly report

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    pub unit: Option<String>,
    /// `YYYY-MM` (default: this month).
    pub month: Option<String>,
}

/// 访情通报: a unit's figures for a month, the coverage of the month's visit days, the
/// red/black list and the two charts.
#[derive(Debug, Serialize)]
pub(crate) struct MonthlyReport {
    pub month: String,
    pub s: workflow::StatsReport,
    pub rank: workflow::RankingReport,
    /// The coverage report of each of the month's visit days up to today.
    pub days: Vec<workflow::CoverageReport>,
    pub charts: UnitCharts,
}

fn parse_month(s: &str) -> Option<(i32, u8)> {
    let (y, m) = s.split_once('-')?;
    let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
    ((2000..=2100).contains(&y) && (1..=12).contains(&m) && s.len() == 7).then_some((y, m))
}

pub(crate) async fn monthly_report(
    state: &AppState,
    caller: &Caller,
    q: ReportQuery,
) -> Result<MonthlyReport, ApiError> {
    let today = today();
    let (y, m) = match given(&q.month) {
        Some(s) => parse_month(s).ok_or_else(|| bad("month is YYYY-MM"))?,
        None => (today.year(), today.month()),
    };
    let (from, to) = stats::month_span(y, m).ok_or(ApiError::Internal)?;
    let unit = given(&q.unit).map(str::to_string);
    let pf = workflow::period_figures(
        state,
        caller,
        workflow::PeriodQuery {
            unit: unit.clone(),
            from: Some(from.to_string()),
            to: Some(to.to_string()),
        },
    )
    .await?;
    let unit_id = pf.us.unit.id.clone();
    let mut days = Vec::new();
    for d in stats::visit_days(from, to, today) {
        days.push(
            workflow::coverage_for(
                state,
                caller,
                workflow::CoverageQuery {
                    unit: Some(unit_id.clone()),
                    day: Some(d.to_string()),
                },
            )
            .await?,
        );
    }
    let charts = unit_charts(state, &pf.us, to, 6, 6).await?;
    api::record(
        state,
        caller.user(),
        None,
        "report",
        format!("{unit_id}/{y:04}-{m:02}"),
        "ok",
    )
    .await?;
    Ok(MonthlyReport {
        month: format!("{y:04}-{m:02}"),
        s: workflow::stats_of(&pf),
        rank: workflow::ranking_of(&pf),
        days,
        charts,
    })
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

const STATS_HEADER: [&str; 19] = [
    "单位",
    "类别",
    "上级单位",
    "受理诉求",
    "办结",
    "办结率",
    "按时办结",
    "按时办结率",
    "回访",
    "满意",
    "基本满意",
    "不满意",
    "回访满意率",
    "走访次数",
    "应访户次",
    "已见面",
    "走访覆盖率",
    "漏访",
    "超期工单",
];

/// A cell of the statistics sheet.
enum Cell {
    Text(String),
    Count(u64),
    Rate(Option<f64>),
}

fn stats_row(name: &str, kind: UnitKind, parent: &str, f: &Figures) -> Vec<Cell> {
    use Cell::*;
    vec![
        Text(name.to_string()),
        Text(
            crate::vocab::label("unit_kind", kind.as_str())
                .unwrap_or("")
                .to_string(),
        ),
        Text(parent.to_string()),
        Count(f.received),
        Count(f.resolved),
        Rate(f.resolution_rate),
        Count(f.on_time),
        Rate(f.on_time_rate),
        Count(f.return_visited),
        Count(f.satisfied),
        Count(f.basically),
        Count(f.dissatisfied),
        Rate(f.satisfaction_rate),
        Count(f.visits),
        Count(f.coverage.due),
        Count(f.coverage.visited),
        Rate(f.coverage_rate),
        Count(f.coverage.missed),
        Count(f.overdue),
    ]
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
    let pf = workflow::period_figures(
        &state,
        &caller,
        workflow::PeriodQuery {
            unit: q.unit,
            from: q.from,
            to: q.to,
        },
    )
    .await?;
    let s = workflow::stats_of(&pf);
    // The unit, the units below it, then its grids not listed yet (a village's children are
    // its grids).
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    seen.insert(s.unit.id.clone());
    rows.push(stats_row(&s.unit.name, s.unit.kind, "", &s.unit.figures));
    for c in &s.children {
        if seen.insert(c.id.clone()) {
            rows.push(stats_row(&c.name, c.kind, &s.unit.name, &c.figures));
        }
    }
    for g in &s.grids {
        if seen.insert(g.id.clone()) {
            // A grid's parent among the listed units, else the unit's.
            let parent = pf
                .us
                .children
                .iter()
                .find(|(_, grids)| grids.contains(&g.id))
                .map_or(s.unit.name.as_str(), |(u, _)| u.name.as_str());
            rows.push(stats_row(&g.name, g.kind, parent, &g.figures));
        }
    }
    let format = q.format;
    let body = tokio::task::spawn_blocking(move || write_sheet(format, &rows))
        .await
        .map_err(|_| ApiError::Internal)??;
    let ext = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Xlsx => "xlsx",
    };
    let file = format!("stats-{}-{}-{}.{ext}", safe_name(&s.unit.id), s.from, s.to);
    api::record(&state, caller.user(), None, "export", file.clone(), "ok").await?;
    let ct = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, ct.to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}

fn safe_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

fn write_sheet(format: ExportFormat, rows: &[Vec<Cell>]) -> Result<Vec<u8>, ApiError> {
    if format == ExportFormat::Csv {
        let mut out = "\u{feff}".to_string();
        let quoted = |c: &str| format!("\"{}\"", api::inert_cell(c).replace('"', "\"\""));
        out.push_str(&STATS_HEADER.map(quoted).join(","));
        out.push_str("\r\n");
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| match c {
                    Cell::Text(t) => quoted(t),
                    Cell::Count(n) => n.to_string(),
                    Cell::Rate(r) => r.map_or(String::new(), |r| format!("{:.1}%", r * 100.0)),
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        return Ok(out.into_bytes());
    }
    let xl = |_| ApiError::Internal;
    let mut book = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    let pct = rust_xlsxwriter::Format::new().set_num_format("0.0%");
    let sheet = book.add_worksheet();
    sheet.set_name("统计").map_err(xl)?;
    for (c, h) in STATS_HEADER.iter().enumerate() {
        sheet
            .write_string_with_format(0, c as u16, *h, &bold)
            .map_err(xl)?;
    }
    for (r, row) in rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(t) => sheet.write_string(r, c, api::inert_cell(t)).map(|_| ()),
                Cell::Count(n) => sheet.write_number(r, c, *n as f64).map(|_| ()),
                Cell::Rate(Some(x)) => sheet.write_number_with_format(r, c, *x, &pct).map(|_| ()),
                Cell::Rate(None) => sheet.write_string(r, c, "—").map(|_| ()),
            }
            .map_err(xl)?;
        }
    }
    sheet.set_column_width(0, 18).map_err(xl)?;
    sheet.set_column_width(2, 14).map_err(xl)?;
    book.save_to_buffer().map_err(xl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_visit_days_run_back_through_the_calendar() {
        let d = |s: &str| -> Day { s.parse().unwrap() };
        assert_eq!(
            last_visit_days(d("2026-03-20"), 4),
            [
                d("2026-01-30"),
                d("2026-02-15"),
                d("2026-02-28"),
                d("2026-03-15")
            ]
        );
        assert_eq!(last_visit_days(d("2026-03-14"), 1), [d("2026-02-28")]);
    }

    #[test]
    fn a_month_is_yyyy_mm() {
        assert_eq!(parse_month("2026-03"), Some((2026, 3)));
        for bad in ["2026-13", "2026-3", "26-03", "2026-03-01", "", "x-y"] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_sheets_text_cells_cannot_be_formulas() {
        let rows = vec![stats_row(
            "=HYPERLINK(\"x\")",
            UnitKind::Grid,
            "+1",
            &Figures::default(),
        )];
        let csv = String::from_utf8(write_sheet(ExportFormat::Csv, &rows).unwrap()).unwrap();
        assert!(csv.contains("\"'=HYPERLINK(\"\"x\"\")\"") && csv.contains("\"'+1\""));
        assert!(csv.contains("\"网格\"") && csv.starts_with("\u{feff}\"单位\""));
        let xlsx = write_sheet(ExportFormat::Xlsx, &rows).unwrap();
        assert!(xlsx.starts_with(b"PK"));
    }
}
