//! Figures supervisors quote — demands received and resolved, on-time rate, return-visit
//! satisfaction, visits done, coverage — computed from the read model ([`crate::index`]),
//! which is computed from the log. Nothing here is typed in.
//!
//! Definitions (a period is a range of days, both ends included, China time):
//! - **received**: work orders raised in the period; **resolved**: those of them done (办结)
//!   at least once by now; **resolution rate** = resolved ÷ received (e.g. 781/799 = 97.8%).
//! - **on time**: resolved orders whose every step up to done ended by its due day
//!   (extensions included); **on-time rate** = on time ÷ resolved.
//! - **satisfaction**: orders of the period with a return visit, by the latest verdict;
//!   **satisfaction rate** = (satisfied + basically) ÷ return-visited.
//! - **visits**: visits recorded for the period's visit days.
//! - **coverage**: the [`Tally`] of every visit day of the period up to today;
//!   **coverage rate** = visited ÷ due.
//! - **overdue**: open orders whose step's due day is before today.
//!
//! - **hazards** and **disputes** (the second ledger, 双台账): **found**: cases raised in the
//!   period; of those, where they stood at the period's end (or now, if it has not ended):
//!   **resolved** (rectified 已整改 / settled 已化解, checked or not), **checked** (验收),
//!   **escalated** (上报转工单); **overdue**: cases raised by the period's end that were still
//!   open at its end past their deadline. A case counts for the grid its household was in the
//!   day it was raised. As of the period's end, so a later step never changes a past period.
//!
//! **Red/black list (红黑榜)** of grids for a period: a grid's *score* is the weighted mean of
//! its coverage rate (40), resolution rate (30), on-time rate (20) and satisfaction rate (10),
//! leaving out the rates it has no data for (weights renormalised). **Red list**: the best 3
//! grids by score with score ≥ 0.90, no missed household and no overdue order. **Black
//! list**: every grid with score < 0.80, a missed household, or an overdue order, worst first.

use qiaomen_protocol::{
    calendar::{self, Day},
    coverage::{self, CoveragePolicy, Tally},
    schema::Satisfaction,
    vocab::Term,
};
use serde::Serialize;

use crate::index::{HouseholdRow, OrderRow};

/// The figures of a set of grids over a period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Figures {
    pub received: u64,
    pub resolved: u64,
    pub resolution_rate: Option<f64>,
    pub on_time: u64,
    pub on_time_rate: Option<f64>,
    pub return_visited: u64,
    pub satisfied: u64,
    pub basically: u64,
    pub dissatisfied: u64,
    pub satisfaction_rate: Option<f64>,
    pub visits: u64,
    #[schema(value_type = Object)]
    pub coverage: Tally,
    pub coverage_rate: Option<f64>,
    pub overdue: u64,
    pub hazards: LedgerFigures,
    pub disputes: LedgerFigures,
    /// Events (事件) and work logs (工作日志) of the period's days that the server had by the
    /// end of its catch-up window (SYNC-v1 §13.12).
    pub events: u64,
    pub work_logs: u64,
}

/// The counts of one ledger (hazards or disputes) over a period (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LedgerFigures {
    pub found: u64,
    pub resolved: u64,
    pub checked: u64,
    pub escalated: u64,
    pub overdue: u64,
}

impl LedgerFigures {
    fn add(&mut self, o: &LedgerFigures) {
        self.found += o.found;
        self.resolved += o.resolved;
        self.checked += o.checked;
        self.escalated += o.escalated;
        self.overdue += o.overdue;
    }
}

/// The moment a period's figures are taken at: the end of its last day (China time), or
/// `now_ms` if that is earlier.
pub fn period_end_ms(to: Day, now_ms: i64) -> i64 {
    (crate::access::org::day_start_ms(to.add_days(1)) - 1).min(now_ms)
}

/// The hazards' and the disputes' figures of `cases` (the rows of one grid, by the grid they
/// were found in) over `from..=to`, as they stood at `at_ms` ([`period_end_ms`]).
pub fn ledger_figures<'a>(
    cases: impl IntoIterator<Item = &'a crate::index::CaseRow>,
    (from, to): (Day, Day),
    at_ms: i64,
) -> (LedgerFigures, LedgerFigures) {
    use qiaomen_protocol::ledger::{self, CaseState, Ledger};
    let (mut hazards, mut disputes) = (LedgerFigures::default(), LedgerFigures::default());
    let at_day = qiaomen_protocol::workorder::day_of(at_ms);
    for row in cases {
        let Some(case) = row.case() else { continue };
        if case.raised_at_ms > at_ms {
            continue;
        }
        let f = match case.kind.ledger() {
            Ledger::Hazard => &mut hazards,
            Ledger::Dispute => &mut disputes,
        };
        let s = ledger::standing_until(&case, at_ms);
        f.overdue += u64::from(s.overdue_on(at_day));
        let raised = qiaomen_protocol::workorder::day_of(case.raised_at_ms);
        if raised < from || raised > to {
            continue;
        }
        f.found += 1;
        f.resolved += u64::from(matches!(s.state, CaseState::Resolved | CaseState::Checked));
        f.checked += u64::from(s.state == CaseState::Checked);
        f.escalated += u64::from(s.state == CaseState::Escalated);
    }
    (hazards, disputes)
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// The visit days from `from` to `to` (inclusive) that are not after `today`.
pub fn visit_days(from: Day, to: Day, today: Day) -> Vec<Day> {
    let mut out = Vec::new();
    let mut d = calendar::cycle_of(from);
    if d < from {
        d = calendar::next_visit_day(d);
    }
    while d <= to && d <= today {
        out.push(d);
        d = calendar::next_visit_day(d);
    }
    out
}

/// The coverage of `grid` over `days`, as of `today`: each day, the `households` that were in
/// the grid that day (and registered by it).
pub fn coverage_of(
    grid: &str,
    households: &[HouseholdRow],
    days: &[Day],
    today: Day,
    policy: &CoveragePolicy,
) -> Tally {
    let mut t = Tally::default();
    for day in days {
        for h in households.iter().filter(|h| h.grid_on(*day) == grid) {
            if let Some(due) = coverage::coverage(&h.input, *day, today, policy) {
                t.add(&due);
            }
        }
    }
    t
}

/// Whether `o` was raised in `from..=to` (China days): one of the period's received demands.
fn raised_in(o: &OrderRow, (from, to): (Day, Day)) -> bool {
    let raised = qiaomen_protocol::workorder::day_of(o.raised_ms);
    from <= raised && raised <= to
}

/// A month's first and last day.
pub fn month_span(year: i32, month: u8) -> Option<(Day, Day)> {
    let first = Day::ymd(year, month, 1)?;
    let next = if month == 12 {
        Day::ymd(year + 1, 1, 1)?
    } else {
        Day::ymd(year, month + 1, 1)?
    };
    Some((first, next.add_days(-1)))
}

/// The `n` months ending with the one holding `last`, oldest first, as (year, month).
pub fn months_to(last: Day, n: usize) -> Vec<(i32, u8)> {
    let (mut y, mut m) = (last.year(), last.month());
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((y, m));
        if m == 1 {
            (y, m) = (y - 1, 12);
        } else {
            m -= 1;
        }
    }
    out.reverse();
    out
}

/// Demands received and resolved in each of `months`, by the definitions of [`figures`]
/// (received: raised in the month; resolved: of those, done by now), from the same order
/// rows.
pub fn demands_by_month(orders: &[OrderRow], months: &[(i32, u8)]) -> Vec<(u64, u64)> {
    months
        .iter()
        .map(|&(y, m)| {
            let Some(span) = month_span(y, m) else {
                return (0, 0);
            };
            orders
                .iter()
                .filter(|o| raised_in(o, span))
                .fold((0, 0), |(rec, res), o| {
                    (rec + 1, res + u64::from(o.done_ms.is_some()))
                })
        })
        .collect()
}

/// The figures of `grid` over `from..=to`, as of `today`, from its `orders` and `visits`
/// and the `households` that have been in it.
pub fn figures(
    grid: &str,
    orders: &[OrderRow],
    households: &[HouseholdRow],
    visits: u64,
    (from, to): (Day, Day),
    today: Day,
    policy: &CoveragePolicy,
) -> Figures {
    let mut f = Figures {
        visits,
        ..Figures::default()
    };
    let today_s = today.to_string();
    for o in orders {
        if o.step_due
            .as_deref()
            .is_some_and(|due| due < today_s.as_str())
        {
            f.overdue += 1;
        }
        if !raised_in(o, (from, to)) {
            continue;
        }
        f.received += 1;
        if o.done_ms.is_some() {
            f.resolved += 1;
            f.on_time += u64::from(o.on_time == Some(true));
        }
        match o.satisfaction.as_deref().and_then(Satisfaction::from_code) {
            Some(Satisfaction::Satisfied) => f.satisfied += 1,
            Some(Satisfaction::Basically) => f.basically += 1,
            Some(Satisfaction::Dissatisfied) => f.dissatisfied += 1,
            None => continue,
        }
        f.return_visited += 1;
    }
    f.coverage = coverage_of(
        grid,
        households,
        &visit_days(from, to, today),
        today,
        policy,
    );
    f.with_rates()
}

impl Figures {
    /// Adds another set's counts (rates are left for [`Figures::with_rates`]).
    pub fn add(&mut self, o: &Figures) {
        self.received += o.received;
        self.resolved += o.resolved;
        self.on_time += o.on_time;
        self.return_visited += o.return_visited;
        self.satisfied += o.satisfied;
        self.basically += o.basically;
        self.dissatisfied += o.dissatisfied;
        self.visits += o.visits;
        self.overdue += o.overdue;
        self.coverage.merge(&o.coverage);
        self.hazards.add(&o.hazards);
        self.disputes.add(&o.disputes);
        self.events += o.events;
        self.work_logs += o.work_logs;
    }

    /// The rates, from the counts (a sum's rates are the ratios of its sums, never an average
    /// of rates).
    pub fn with_rates(mut self) -> Figures {
        self.resolution_rate = ratio(self.resolved, self.received);
        self.on_time_rate = ratio(self.on_time, self.resolved);
        self.satisfaction_rate = ratio(self.satisfied + self.basically, self.return_visited);
        self.coverage_rate = ratio(self.coverage.visited, self.coverage.due);
        self
    }
}

/// A grid's place on the red/black list.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Ranked {
    pub grid: String,
    pub score: Option<f64>,
    pub figures: Figures,
    /// Why a grid is on the black list (empty on the red list).
    pub reasons: Vec<String>,
}

/// The rule, as text for the API and the page.
pub const RANKING_RULE: &str = "score = weighted mean of coverage rate (40), resolution rate (30), on-time rate (20), satisfaction rate (10) over the rates with data; red list: best 3 with score >= 0.90, no missed household, no overdue order; black list: score < 0.80, a missed household or an overdue order, worst first";

/// The score of a grid's figures (see the module docs); `None` with no data at all.
pub fn score(f: &Figures) -> Option<f64> {
    let parts = [
        (f.coverage_rate, 40.0),
        (f.resolution_rate, 30.0),
        (f.on_time_rate, 20.0),
        (f.satisfaction_rate, 10.0),
    ];
    let (sum, weight) = parts
        .iter()
        .filter_map(|(r, w)| r.map(|r| (r * w, *w)))
        .fold((0.0, 0.0), |(s, ws), (x, w)| (s + x, ws + w));
    (weight > 0.0).then(|| sum / weight)
}

/// Splits grids' figures into the red list and the black list.
pub fn red_black(grids: Vec<(String, Figures)>) -> (Vec<Ranked>, Vec<Ranked>) {
    let mut ranked: Vec<Ranked> = grids
        .into_iter()
        .map(|(grid, figures)| {
            let mut reasons = Vec::new();
            let score = score(&figures);
            if score.is_some_and(|s| s < 0.80) {
                reasons.push("score_below_0.80".to_string());
            }
            if figures.coverage.missed > 0 {
                reasons.push("missed_households".to_string());
            }
            if figures.overdue > 0 {
                reasons.push("overdue_orders".to_string());
            }
            Ranked {
                grid,
                score,
                figures,
                reasons,
            }
        })
        .collect();
    let key = |r: &Ranked| r.score.unwrap_or(0.0);
    ranked.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.grid.cmp(&b.grid)));
    let red: Vec<Ranked> = ranked
        .iter()
        .filter(|r| r.reasons.is_empty() && r.score.is_some_and(|s| s >= 0.90))
        .take(3)
        .cloned()
        .collect();
    let mut black: Vec<Ranked> = ranked
        .into_iter()
        .filter(|r| !r.reasons.is_empty())
        .collect();
    black.reverse();
    (red, black)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        s.parse().unwrap()
    }

    #[test]
    fn visit_days_of_a_period_stop_at_today() {
        assert_eq!(
            visit_days(d("2026-02-01"), d("2026-03-31"), d("2026-03-20")),
            vec![d("2026-02-15"), d("2026-02-28"), d("2026-03-15")]
        );
        assert_eq!(
            visit_days(d("2026-11-15"), d("2026-11-15"), d("2026-12-01")),
            vec![d("2026-11-15")]
        );
        assert!(visit_days(d("2026-11-16"), d("2026-11-29"), d("2026-12-01")).is_empty());
    }

    #[test]
    fn demands_per_month_add_up_to_the_periods_figures() {
        let at = |s: &str| {
            let day = d(s);
            (day.0.midnight().assume_utc().unix_timestamp() + 4 * 3600) * 1000
        };
        let order = |raised: &str, done: bool| OrderRow {
            household: "h".into(),
            demand: "d".into(),
            grid: "g".into(),
            door_number: "1".into(),
            status: "raised".into(),
            tier: None,
            team: None,
            responsible: "u".into(),
            source: None,
            category: "other".into(),
            urgency: "normal".into(),
            raised_ms: at(raised),
            done_ms: done.then_some(at(raised)),
            on_time: None,
            satisfaction: None,
            step: None,
            step_due: None,
            chase_ups: 0,
            bounces: 0,
            reopened: 0,
            external_ref: None,
            overdue: false,
        };
        let orders = [
            order("2025-12-31", true),
            order("2026-01-01", true),
            order("2026-01-31", false),
            order("2026-02-28", true),
            order("2026-03-01", false),
        ];
        let months = months_to(d("2026-02-10"), 3);
        assert_eq!(months, [(2025, 12), (2026, 1), (2026, 2)]);
        let per_month = demands_by_month(&orders, &months);
        assert_eq!(per_month, [(1, 1), (2, 1), (1, 1)]);
        let f = figures(
            "g",
            &orders,
            &[],
            0,
            (d("2025-12-01"), d("2026-02-28")),
            d("2026-03-02"),
            &CoveragePolicy::default(),
        );
        let sum = per_month
            .iter()
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        assert_eq!((f.received, f.resolved), sum);
        assert_eq!(
            month_span(2024, 2),
            Some((d("2024-02-01"), d("2024-02-29")))
        );
    }

    #[test]
    fn scores_and_the_red_black_rule() {
        let good = Figures {
            coverage_rate: Some(1.0),
            resolution_rate: Some(1.0),
            on_time_rate: Some(0.9),
            ..Figures::default()
        };
        // (40 + 30 + 18) / 90
        assert!((score(&good).unwrap() - 88.0 / 90.0).abs() < 1e-9);
        assert_eq!(score(&Figures::default()), None);
        let mut missed = good.clone();
        missed.coverage.missed = 1;
        let poor = Figures {
            coverage_rate: Some(0.5),
            ..Figures::default()
        };
        let (red, black) = red_black(vec![
            ("a".into(), good.clone()),
            ("b".into(), missed),
            ("c".into(), poor),
            ("d".into(), good),
        ]);
        assert_eq!(
            red.iter().map(|r| r.grid.as_str()).collect::<Vec<_>>(),
            ["a", "d"]
        );
        assert_eq!(
            black.iter().map(|r| r.grid.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        assert_eq!(black[1].reasons, ["missed_households"]);
    }

    #[test]
    fn a_periods_ledger_figures_are_where_its_cases_stood_at_its_end() {
        use crate::index::{CaseRow, CaseStepRow};
        let at = |s: &str| {
            let day = d(s);
            (day.0.midnight().assume_utc().unix_timestamp() + 4 * 3600) * 1000
        };
        let user = qiaomen_protocol::ids::UserId::new().to_string();
        let step = |action: &str, day: &str, due: Option<&str>| CaseStepRow {
            action: action.into(),
            by: user.clone(),
            at_ms: at(day),
            assignee: (action == "assign").then(|| user.clone()),
            due: due.map(str::to_string),
            order: None,
        };
        let case = |ledger: &str, kind: &str, raised: &str, steps: Vec<CaseStepRow>| CaseRow {
            household: "h".into(),
            case: qiaomen_protocol::ids::CaseId::new().to_string(),
            grid: "g".into(),
            found_grid: "g".into(),
            door_number: "1".into(),
            ledger: ledger.into(),
            kind: kind.into(),
            visit: None,
            raised_by: user.clone(),
            raised_ms: at(raised),
            due: None,
            state: "open".into(),
            assignee: String::new(),
            deadline: None,
            overdue: false,
            steps,
        };
        let cases = vec![
            // Found on the 1st, due the 3rd, rectified the 5th, checked the 10th.
            case(
                "hazard",
                "fire",
                "2026-03-01",
                vec![
                    step("assign", "2026-03-01", Some("2026-03-03")),
                    step("resolve", "2026-03-05", None),
                    step("check", "2026-03-10", None),
                ],
            ),
            // A dispute found the 2nd, escalated the 4th.
            case(
                "dispute",
                "land",
                "2026-03-02",
                vec![step("escalate", "2026-03-04", None)],
            ),
            // Found in February, still open, no deadline.
            case("hazard", "gas", "2026-02-20", vec![]),
        ];
        let march = |to: &str| {
            ledger_figures(
                &cases,
                (d("2026-03-01"), d(to)),
                period_end_ms(d(to), at("2026-12-01")),
            )
        };
        let lf = |found, resolved, checked, escalated, overdue| LedgerFigures {
            found,
            resolved,
            checked,
            escalated,
            overdue,
        };
        // At the end of the 4th the hazard was past its deadline, the dispute escalated.
        assert_eq!(march("2026-03-04"), (lf(1, 0, 0, 0, 1), lf(1, 0, 0, 1, 0)));
        // At the end of the 7th it was rectified, not yet checked: no longer overdue.
        assert_eq!(march("2026-03-07"), (lf(1, 1, 0, 0, 0), lf(1, 0, 0, 1, 0)));
        assert_eq!(march("2026-03-31"), (lf(1, 1, 1, 0, 0), lf(1, 0, 0, 1, 0)));
        // A period that ended before its steps never sees them; February found one hazard.
        let feb = ledger_figures(
            &cases,
            (d("2026-02-01"), d("2026-02-28")),
            period_end_ms(d("2026-02-28"), at("2026-12-01")),
        );
        assert_eq!(feb, (lf(1, 0, 0, 0, 0), lf(0, 0, 0, 0, 0)));
        // A period not over yet is taken now.
        assert_eq!(
            period_end_ms(d("2026-03-31"), at("2026-03-05")),
            at("2026-03-05")
        );
    }
}
