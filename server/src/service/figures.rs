//! Figures: a visit day's coverage, a period's statistics and the red/black list (红黑榜),
//! the coverage series, the charts, the grid map and the monthly report, all over the same
//! scope checks ([`super::unit_scope`]). Reads come from the read model ([`crate::index`]);
//! the definitions are [`crate::stats`]'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use qiaomen_protocol::{
    calendar::{self, Day},
    coverage::{self, CoveragePolicy, CoverageState, Tally},
    ids::HouseholdId,
    vocab::Term,
};

use super::{Error, Result, UnitScope, given, households, parse_day, today, unit_scope};
use crate::{
    access::org::{Unit, UnitKind},
    charts::{self, CoveragePoint, MapPoint, Mark, MonthPoint},
    http::{
        AppState,
        api::ExportFormat,
        auth::Caller,
        reports::{CoverageSeries, ReportQuery, SeriesDay, SeriesQuery, UnitRef},
        workflow::{
            CoverageQuery, CoverageReport, HouseholdCoverage, PeriodQuery, RankingReport,
            StatsReport, UnitFigures, UnitTally,
        },
    },
    index::{HouseholdRow, OrderRow},
    stats::{self, Figures},
};

fn unit_tally(unit: &Unit, tally: Tally) -> UnitTally {
    UnitTally {
        id: unit.id.clone(),
        name: unit.name.clone(),
        kind: unit.kind,
        rate: tally.rate(),
        tally,
    }
}

/// The households of `rows` due on the visit day `day` (as of `today`) in one of `grids`,
/// each with the grid it was in that day (counted from its registration): what the coverage
/// report, its series and the map count.
pub fn due_on<'a>(
    rows: &'a [HouseholdRow],
    grids: &'a [String],
    day: Day,
    today: Day,
    policy: &'a CoveragePolicy,
) -> impl Iterator<Item = (&'a HouseholdRow, &'a str, coverage::Due)> + 'a {
    rows.iter().filter_map(move |h| {
        // Where the household was that day, counted from its registration.
        let grid = h.grid_on(day);
        if !grids.iter().any(|g| g == grid) {
            return None;
        }
        let due = coverage::coverage(&h.input, day, today, policy)?;
        Some((h, grid, due))
    })
}

/// Visited / due for the visit day whose cycle holds `q.day` (default today's), per child
/// unit, with every due household not met and why, and the catch-up deadline.
pub async fn coverage_for(
    state: &AppState,
    caller: &Caller,
    q: CoverageQuery,
) -> Result<CoverageReport> {
    let today = today();
    let day = match q.day.as_deref() {
        Some(s) => calendar::cycle_of(parse_day(s, "day")?),
        None => calendar::cycle_of(today),
    };
    let us = unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
    let grids = us.grids.clone();
    let (rows, behind) = state
        .index(move |ix| Ok((ix.households(&grids)?, ix.behind()?)))
        .await?;
    let policy = state.workflow.coverage.clone();
    let mut per_grid: BTreeMap<String, Tally> = BTreeMap::new();
    let mut households = Vec::new();
    let is_grid = us.unit.kind == UnitKind::Grid;
    for (h, grid, due) in due_on(&rows, &us.grids, day, today, &policy) {
        per_grid.entry(grid.to_string()).or_default().add(&due);
        if is_grid || due.state != CoverageState::Visited {
            let (state, reason) = match due.state {
                CoverageState::Visited => ("visited", None),
                CoverageState::NotMet(o) => (
                    "not_met",
                    // The latest attempt's outcome, by its code (`nobody_home`).
                    Some(o.code().to_string()),
                ),
                CoverageState::Pending => ("pending", None),
                CoverageState::Missed => ("missed", None),
            };
            households.push(HouseholdCoverage {
                id: h.id.to_string(),
                grid: grid.to_string(),
                door_number: h.door.clone(),
                key_groups: due
                    .key_groups
                    .iter()
                    .map(|g| g.code().to_string())
                    .collect(),
                state: state.into(),
                reason,
                attempts: due.attempts,
                catch_up_by: due.catch_up_by.to_string(),
            });
        }
    }
    households.sort_by(|a, b| {
        (a.key_groups.is_empty(), &a.grid, &a.door_number).cmp(&(
            b.key_groups.is_empty(),
            &b.grid,
            &b.door_number,
        ))
    });
    let sum = |grids: &[String]| {
        let mut t = Tally::default();
        for g in grids {
            if let Some(x) = per_grid.get(g) {
                t.merge(x);
            }
        }
        t
    };
    Ok(CoverageReport {
        unit: unit_tally(&us.unit, sum(&us.grids)),
        visit_day: day.to_string(),
        today: today.to_string(),
        catch_up_by: policy.catch_up_by(day).to_string(),
        children: us
            .children
            .iter()
            .map(|(u, g)| unit_tally(u, sum(g)))
            .collect(),
        households,
        behind,
    })
}

fn period(q: &PeriodQuery) -> Result<(Day, Day)> {
    let today = today();
    let from = match q.from.as_deref() {
        Some(s) => parse_day(s, "from")?,
        None => Day::ymd(today.year(), today.month(), 1).ok_or(Error::Internal)?,
    };
    let to = match q.to.as_deref() {
        Some(s) => parse_day(s, "to")?,
        None => today,
    };
    if from > to {
        return Err(Error::invalid("from is after to"));
    }
    if to.0 - from.0 > time::Duration::days(3 * 366) {
        return Err(Error::invalid("a period is at most three years"));
    }
    Ok((from, to))
}

/// Figures per grid of a unit, for a period.
async fn grid_figures(
    state: &AppState,
    us: &UnitScope,
    (from, to): (Day, Day),
) -> Result<(BTreeMap<String, Figures>, u64)> {
    let grids = us.grids.clone();
    // Entries sent after the period's catch-up window never change its figures.
    let catch_up = i64::from(state.workflow.coverage.catch_up_days);
    let received_by = crate::access::org::day_start_ms(to.add_days(1 + catch_up)) - 1;
    let (g, f, t) = (grids.clone(), from.to_string(), to.to_string());
    let journal = state
        .access(move |db| db.journal_counts(&g, (&f, &t), received_by))
        .await?;
    let teams: Vec<String> = Vec::new();
    let (orders, households, visits, cases, behind) = state
        .index(move |ix| {
            Ok((
                ix.orders(&grids, &teams)?,
                ix.households(&grids)?,
                ix.visit_counts(&grids, from, to)?,
                ix.cases(&grids)?,
                ix.behind()?,
            ))
        })
        .await?;
    let at_ms = stats::period_end_ms(to, crate::access::now_ms());
    let policy = state.workflow.coverage.clone();
    let today = today();
    let mut cases_by_grid: BTreeMap<&str, Vec<&crate::index::CaseRow>> = BTreeMap::new();
    for c in &cases {
        cases_by_grid
            .entry(c.found_grid.as_str())
            .or_default()
            .push(c);
    }
    let mut out = BTreeMap::new();
    for g in &us.grids {
        let o: Vec<OrderRow> = orders.iter().filter(|r| &r.grid == g).cloned().collect();
        let v = visits.get(g).copied().unwrap_or(0);
        let mut f = stats::figures(g, &o, &households, v, (from, to), today, &policy);
        let found_here = cases_by_grid.get(g.as_str()).into_iter().flatten().copied();
        (f.hazards, f.disputes) = stats::ledger_figures(found_here, (from, to), at_ms);
        let j = journal.get(g).copied().unwrap_or_default();
        (f.events, f.work_logs) = (j.events, j.work_logs);
        out.insert(g.clone(), f);
    }
    Ok((out, behind))
}

/// Adds up grids' figures (counts add; rates are recomputed from the sums).
fn total(per_grid: &BTreeMap<String, Figures>, grids: &[String]) -> Figures {
    let mut f = Figures::default();
    for x in grids.iter().filter_map(|g| per_grid.get(g)) {
        f.add(x);
    }
    f.with_rates()
}

/// A unit's grids' figures for a period: what the statistics and the ranking are made of.
#[derive(Debug)]
pub struct PeriodFigures {
    pub from: Day,
    pub to: Day,
    pub us: UnitScope,
    pub per_grid: BTreeMap<String, Figures>,
    pub behind: u64,
}

/// The figures of each grid of `q.unit` for the period `q.from`..=`q.to` (default: this month
/// so far; at most three years).
pub async fn period_figures(
    state: &AppState,
    caller: &Caller,
    q: PeriodQuery,
) -> Result<PeriodFigures> {
    let (from, to) = period(&q)?;
    let us = unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
    let (per_grid, behind) = grid_figures(state, &us, (from, to)).await?;
    Ok(PeriodFigures {
        from,
        to,
        us,
        per_grid,
        behind,
    })
}

/// The statistics of a unit, of each unit and grid below it, for a period.
pub async fn stats_for(state: &AppState, caller: &Caller, q: PeriodQuery) -> Result<StatsReport> {
    Ok(stats_of(&period_figures(state, caller, q).await?))
}

/// The statistics of `pf`: grids' figures summed into units (rates recomputed from the sums).
pub fn stats_of(pf: &PeriodFigures) -> StatsReport {
    let figures_of = |u: &Unit, grids: &[String]| UnitFigures {
        id: u.id.clone(),
        name: u.name.clone(),
        kind: u.kind,
        figures: total(&pf.per_grid, grids),
    };
    StatsReport {
        from: pf.from.to_string(),
        to: pf.to.to_string(),
        today: today().to_string(),
        unit: figures_of(&pf.us.unit, &pf.us.grids),
        children: pf
            .us
            .children
            .iter()
            .map(|(u, g)| figures_of(u, g))
            .collect(),
        grids: pf
            .per_grid
            .iter()
            .map(|(g, f)| UnitFigures {
                id: g.clone(),
                name: pf.us.grid_names.get(g).unwrap_or(g).clone(),
                kind: UnitKind::Grid,
                figures: f.clone(),
            })
            .collect(),
        behind: pf.behind,
    }
}

/// The red/black list (红黑榜) of the grids below a unit, for a period.
pub async fn ranking_for(
    state: &AppState,
    caller: &Caller,
    q: PeriodQuery,
) -> Result<RankingReport> {
    Ok(ranking_of(&period_figures(state, caller, q).await?))
}

/// The red/black list of `pf`'s grids, by the documented rule.
pub fn ranking_of(pf: &PeriodFigures) -> RankingReport {
    let (red, black) = stats::red_black(
        pf.per_grid
            .iter()
            .map(|(g, f)| (g.clone(), f.clone()))
            .collect(),
    );
    RankingReport {
        from: pf.from.to_string(),
        to: pf.to.to_string(),
        rule: stats::RANKING_RULE.into(),
        red,
        black,
    }
}

/// The `n` visit days ending with the cycle of `last`, oldest first.
pub fn last_visit_days(last: Day, n: usize) -> Vec<Day> {
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
) -> Result<(Vec<SeriesDay>, u64)> {
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

/// The coverage of a unit on each of its last `q.cycles` (default 6, at most 24) visit days
/// up to `q.day` (default today).
pub async fn series_for(
    state: &AppState,
    caller: &Caller,
    q: SeriesQuery,
) -> Result<CoverageSeries> {
    // An empty `cycles=` is not a number of cycles (the schema's pattern says so too).
    let cycles = match q.cycles.as_deref() {
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=24).contains(n))
            .ok_or_else(|| Error::invalid("cycles must be 1 to 24"))?,
        None => 6,
    };
    let today = today();
    // As in the coverage report: an empty `day=` is not a date.
    let last = match q.day.as_deref() {
        Some(s) => parse_day(s, "day")?.min(today),
        None => today,
    };
    let us = unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
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

/// The two charts of a unit, as SVG text (drawn from escaped text only), with their numbers.
#[derive(Debug, serde::Serialize)]
pub struct UnitCharts {
    pub coverage_svg: String,
    pub demands_svg: String,
    pub series: Vec<SeriesDay>,
    pub months: Vec<MonthPoint>,
}

/// Coverage on the `cycles` visit days up to `last`, and demands in the `months` months up to
/// `last`'s, of `us`.
pub async fn unit_charts(
    state: &AppState,
    us: &UnitScope,
    last: Day,
    cycles: usize,
    months: usize,
) -> Result<UnitCharts> {
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

/// A grid's households and a visit day's visits placed by GPS.
#[derive(Debug, serde::Serialize)]
pub struct GridMap {
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
pub async fn grid_map(
    state: &AppState,
    caller: &Caller,
    grid: String,
    day: Option<String>,
) -> Result<GridMap> {
    let today = today();
    let day = match given(&day) {
        Some(s) => calendar::cycle_of(parse_day(s, "day")?),
        None => calendar::cycle_of(today),
    };
    let docs = households::grid_documents(state, caller, &grid).await?;
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
        let households = households::matching_households(docs, "");
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
    .map_err(|_| Error::Internal)?;
    households::record(state, caller.user(), None, "grid_map", grid.clone(), "ok").await?;
    map.grid = grid;
    Ok(map)
}

/// 访情通报: a unit's figures for a month, the coverage of the month's visit days, the
/// red/black list and the two charts.
#[derive(Debug, serde::Serialize)]
pub struct MonthlyReport {
    pub month: String,
    pub s: StatsReport,
    pub rank: RankingReport,
    /// The coverage report of each of the month's visit days up to today.
    pub days: Vec<CoverageReport>,
    pub charts: UnitCharts,
}

fn parse_month(s: &str) -> Option<(i32, u8)> {
    let (y, m) = s.split_once('-')?;
    let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
    ((2000..=2100).contains(&y) && (1..=12).contains(&m) && s.len() == 7).then_some((y, m))
}

/// 访情通报 of a unit for `q.month` (default this month), audited.
pub async fn monthly_report(
    state: &AppState,
    caller: &Caller,
    q: ReportQuery,
) -> Result<MonthlyReport> {
    let today = today();
    let (y, m) = match given(&q.month) {
        Some(s) => parse_month(s).ok_or_else(|| Error::invalid("month is YYYY-MM"))?,
        None => (today.year(), today.month()),
    };
    let (from, to) = stats::month_span(y, m).ok_or(Error::Internal)?;
    let unit = given(&q.unit).map(str::to_string);
    let pf = period_figures(
        state,
        caller,
        PeriodQuery {
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
            coverage_for(
                state,
                caller,
                CoverageQuery {
                    unit: Some(unit_id.clone()),
                    day: Some(d.to_string()),
                },
            )
            .await?,
        );
    }
    let charts = unit_charts(state, &pf.us, to, 6, 6).await?;
    households::record(
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
        s: stats_of(&pf),
        rank: ranking_of(&pf),
        days,
        charts,
    })
}

const STATS_HEADER: [&str; 31] = [
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
    "发现隐患",
    "隐患已整改",
    "隐患已验收",
    "隐患上报转工单",
    "隐患超期未整改",
    "排查纠纷",
    "纠纷已化解",
    "纠纷已验收",
    "纠纷上报转工单",
    "纠纷超期未化解",
    "上报事件",
    "工作日志",
];

/// A cell of an exported sheet.
pub(crate) enum Cell {
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
        Count(f.hazards.found),
        Count(f.hazards.resolved),
        Count(f.hazards.checked),
        Count(f.hazards.escalated),
        Count(f.hazards.overdue),
        Count(f.disputes.found),
        Count(f.disputes.resolved),
        Count(f.disputes.checked),
        Count(f.disputes.escalated),
        Count(f.disputes.overdue),
        Count(f.events),
        Count(f.work_logs),
    ]
}

fn safe_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

fn write_sheet(format: ExportFormat, rows: &[Vec<Cell>]) -> Result<Vec<u8>> {
    write_table(format, "统计", &STATS_HEADER, rows)
}

/// A table with a header row as CSV (UTF-8 with a BOM, for Excel) or as an XLSX sheet named
/// `name`; text cells are made inert (never formulas).
pub(crate) fn write_table(
    format: ExportFormat,
    name: &str,
    header: &[&str],
    rows: &[Vec<Cell>],
) -> Result<Vec<u8>> {
    if format == ExportFormat::Csv {
        let mut out = "\u{feff}".to_string();
        let quoted = |c: &str| format!("\"{}\"", households::inert_cell(c).replace('"', "\"\""));
        out.push_str(
            &header
                .iter()
                .map(|h| quoted(h))
                .collect::<Vec<_>>()
                .join(","),
        );
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
    let xl = |_| Error::Internal;
    let mut book = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    let pct = rust_xlsxwriter::Format::new().set_num_format("0.0%");
    let sheet = book.add_worksheet();
    sheet.set_name(name).map_err(xl)?;
    for (c, h) in header.iter().enumerate() {
        sheet
            .write_string_with_format(0, c as u16, *h, &bold)
            .map_err(xl)?;
    }
    for (r, row) in rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(t) => sheet
                    .write_string(r, c, households::inert_cell(t))
                    .map(|_| ()),
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

/// The statistics of a unit, of each unit below it and of each of its grids for a period
/// (the figures of [`stats_for`]), one row each, by name, with Chinese headers and unit kinds,
/// as an XLSX or CSV file; audited as an export. The file's name and its bytes.
pub async fn stats_export(
    state: &AppState,
    caller: &Caller,
    q: PeriodQuery,
    format: ExportFormat,
) -> Result<(String, Vec<u8>)> {
    let pf = period_figures(state, caller, q).await?;
    let s = stats_of(&pf);
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
    let body = tokio::task::spawn_blocking(move || write_sheet(format, &rows))
        .await
        .map_err(|_| Error::Internal)??;
    let ext = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Xlsx => "xlsx",
    };
    let file = format!("stats-{}-{}-{}.{ext}", safe_name(&s.unit.id), s.from, s.to);
    households::record(state, caller.user(), None, "export", file.clone(), "ok").await?;
    Ok((file, body))
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
