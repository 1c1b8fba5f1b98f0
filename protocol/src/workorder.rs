//! Demand work orders (诉求工单) as a pure state machine: which step may follow which, who may
//! take it, and when each step is due.
//!
//! A demand's **history** is the order's truth: an append-only list of steps (who, when,
//! comment, and the step's data). [`replay`] folds it into an [`Order`] — the state, tier,
//! team, the open step and its deadline, chase-ups, bounces, lateness. The phone replays it
//! offline (the worker sees the return visit due); the server replays it to check every
//! uploaded step ([`check_steps`]) and to compute statistics.
//!
//! **Ordering.** Two devices may append a step to the same order while apart. The server is
//! the serializer: an upload whose new steps are not appended after every step the server
//! already holds, or that do not follow from the state those steps lead to, is refused
//! (`stale_order`); the phone rolls its step back, syncs, and sees the order as it is. So every
//! history the server acknowledges replays step by step without a skipped entry.
//!
//! **Deadlines** count working days ([`WorkCalendar`]: Monday to Friday, minus holidays, plus
//! make-up working days 调休) from the day a step started, in China Standard Time, per
//! [`DeadlinePolicy`]; an extension (延期) adds working days to the open step. A step is *late*
//! when it ended after its due day; an open step is *overdue* once its due day has passed.

use std::collections::BTreeSet;

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::{
    calendar::Day,
    ids::UserId,
    schema::{Demand, DemandStatus, DemandTransition, Satisfaction, Tier},
};

/// China Standard Time, for the day a step happened on.
pub const CST_OFFSET_SECS: i32 = 8 * 3600;

/// A step of a work order.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Reconcile,
    Hydrate,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DemandAction {
    /// The first-responsible cadre handles it at once (即办): collected → handling.
    Take,
    /// The command centre dispatches it to a team (派单), with a tier; also arbitration of a
    /// bounced order (a new dispatch).
    Dispatch,
    /// The team accepts it (接单).
    Accept,
    /// The team bounces it back, with a reason (退单).
    Bounce,
    /// The team starts handling it.
    Start,
    /// Done, with the result (办结).
    Finish,
    /// The result was told to the resident (反馈).
    Feedback,
    /// The return visit (回访), with the resident's satisfaction.
    ReturnVisit,
    /// Closed after the return visit.
    Close,
    /// Reopened: back to collected (e.g. the resident was not satisfied).
    Reopen,
    /// A chase-up (催办): the state does not change.
    ChaseUp,
    /// An extension (延期) of the open step's deadline by some working days.
    Extend,
    /// A comment: the state does not change.
    Comment,
}

impl DemandAction {
    pub const ALL: [DemandAction; 13] = [
        DemandAction::Take,
        DemandAction::Dispatch,
        DemandAction::Accept,
        DemandAction::Bounce,
        DemandAction::Start,
        DemandAction::Finish,
        DemandAction::Feedback,
        DemandAction::ReturnVisit,
        DemandAction::Close,
        DemandAction::Reopen,
        DemandAction::ChaseUp,
        DemandAction::Extend,
        DemandAction::Comment,
    ];

    /// The state the step leads to from `from`, or `None` if it cannot be taken there.
    pub fn next(self, from: DemandStatus) -> Option<DemandStatus> {
        use DemandAction as A;
        use DemandStatus as S;
        Some(match (self, from) {
            (A::Take, S::Raised) => S::Handling,
            (A::Dispatch, S::Raised | S::Bounced) => S::Dispatched,
            (A::Accept, S::Dispatched) => S::Accepted,
            (A::Bounce, S::Dispatched) => S::Bounced,
            (A::Start, S::Accepted) => S::Handling,
            (A::Finish, S::Handling) => S::Done,
            (A::Feedback, S::Done) => S::FedBack,
            (A::ReturnVisit, S::FedBack) => S::ReturnVisited,
            (A::Close, S::ReturnVisited) => S::Closed,
            (A::Reopen, S::ReturnVisited | S::Closed) => S::Raised,
            (A::ChaseUp | A::Extend | A::Comment, s) if s.is_open() => s,
            _ => return None,
        })
    }
}

/// Which part of the loop an open state waits for, each with its own time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Waiting to be taken or dispatched (also after a bounce).
    Triage,
    /// Dispatched, waiting for the team to accept.
    Accept,
    /// Accepted or taken, being handled.
    Handle,
    /// Done, waiting for the feedback to the resident.
    Feedback,
    /// Fed back, waiting for the return visit.
    ReturnVisit,
    /// Return-visited, waiting to be closed or reopened.
    Close,
}

impl StepKind {
    fn of(status: DemandStatus) -> Option<StepKind> {
        use DemandStatus as S;
        Some(match status {
            S::Raised | S::Bounced => StepKind::Triage,
            S::Dispatched => StepKind::Accept,
            S::Accepted | S::Handling => StepKind::Handle,
            S::Done => StepKind::Feedback,
            S::FedBack => StepKind::ReturnVisit,
            S::ReturnVisited => StepKind::Close,
            S::Closed => return None,
        })
    }
}

/// Time limits per step, in working days (configurable per server; the phone uses the
/// defaults). E.g. ordinary matters are handled within 7 working days.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadlinePolicy {
    pub triage: u32,
    pub accept: u32,
    /// Handling a demand taken at once (即办).
    pub handle_immediate: u32,
    /// Handling a coordinated demand (协调) or one without a tier.
    pub handle_coordinate: u32,
    /// Handling a leader case (包案).
    pub handle_leader_case: u32,
    pub feedback: u32,
    pub return_visit: u32,
    pub close: u32,
}

impl Default for DeadlinePolicy {
    fn default() -> Self {
        Self {
            triage: 1,
            accept: 1,
            handle_immediate: 2,
            handle_coordinate: 7,
            handle_leader_case: 15,
            feedback: 2,
            return_visit: 5,
            close: 2,
        }
    }
}

impl DeadlinePolicy {
    /// The working days allowed for `step` of an order of `tier`.
    pub fn limit(&self, step: StepKind, tier: Option<Tier>) -> u32 {
        match step {
            StepKind::Triage => self.triage,
            StepKind::Accept => self.accept,
            StepKind::Handle => match tier {
                Some(Tier::Immediate) => self.handle_immediate,
                Some(Tier::LeaderCase) => self.handle_leader_case,
                Some(Tier::Coordinate) | None => self.handle_coordinate,
            },
            StepKind::Feedback => self.feedback,
            StepKind::ReturnVisit => self.return_visit,
            StepKind::Close => self.close,
        }
    }
}

/// Which days are working days: Monday to Friday, except `holidays`, plus the weekend days
/// in `workdays` (调休, make-up working days around the statutory holidays).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkCalendar {
    pub holidays: BTreeSet<Day>,
    pub workdays: BTreeSet<Day>,
}

impl WorkCalendar {
    pub fn is_working_day(&self, day: Day) -> bool {
        if self.workdays.contains(&day) {
            return true;
        }
        if self.holidays.contains(&day) {
            return false;
        }
        !matches!(
            day.0.weekday(),
            time::Weekday::Saturday | time::Weekday::Sunday
        )
    }

    /// The day by the end of which something started on `start` and allowed `n` working days
    /// is due: the `n`-th working day after `start` (`start` itself when `n` is 0).
    pub fn add_working_days(&self, start: Day, n: u32) -> Day {
        let mut day = start;
        let mut left = n;
        while left > 0 {
            day = day.add_days(1);
            if self.is_working_day(day) {
                left -= 1;
            }
        }
        day
    }
}

/// The configuration deadlines are computed with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    pub limits: DeadlinePolicy,
    pub calendar: WorkCalendar,
}

/// A step of the loop as it happened (or is happening): when it started, when it is due and
/// when it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub kind: StepKind,
    pub started_ms: i64,
    /// The last day (China time) on which the step is on time, extensions included.
    pub due: Day,
    pub extended_days: u32,
    pub ended_ms: Option<i64>,
}

impl Step {
    /// Ended after its due day.
    pub fn late(&self) -> bool {
        self.ended_ms.is_some_and(|t| day_of(t) > self.due)
    }

    /// Still open on `today`, after its due day.
    pub fn overdue_on(&self, today: Day) -> bool {
        self.ended_ms.is_none() && today > self.due
    }
}

/// A work order as its history tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Order {
    pub status: DemandStatus,
    pub tier: Option<Tier>,
    /// The team it was last dispatched to.
    pub unit: Option<String>,
    /// The first-responsible cadre.
    pub responsible: UserId,
    pub raised_ms: i64,
    /// Every step in order, the open one last (none once closed).
    pub steps: Vec<Step>,
    pub chase_ups: u32,
    pub bounces: u32,
    pub reopened: u32,
    /// When it was last done (办结), if it was.
    pub done_ms: Option<i64>,
    /// The latest return visit's verdict and time.
    pub satisfaction: Option<(Satisfaction, i64)>,
    /// History entries written before work orders that did not follow from the state before
    /// them (possible only in old documents; they are skipped).
    pub skipped: u32,
}

impl Order {
    /// The open step, if the order is not closed.
    pub fn open_step(&self) -> Option<&Step> {
        self.steps.last().filter(|s| s.ended_ms.is_none())
    }

    pub fn overdue_on(&self, today: Day) -> bool {
        self.open_step().is_some_and(|s| s.overdue_on(today))
    }

    /// Resolved (done at least once) with every step up to the last `Done` on time.
    pub fn resolved_on_time(&self) -> Option<bool> {
        let done = self.done_ms?;
        Some(
            !self
                .steps
                .iter()
                .any(|s| s.ended_ms.is_some_and(|e| e <= done) && s.late()),
        )
    }
}

/// The day (China time) of a Unix time in milliseconds.
pub fn day_of(ms: i64) -> Day {
    Day::from_unix_ms(ms, CST_OFFSET_SECS).unwrap_or(Day(time::Date::MIN))
}

/// Why a step cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("a work order cannot take step {action:?} while {status:?}")]
    NotFromHere {
        action: DemandAction,
        status: DemandStatus,
    },
    #[error("step {0:?} needs {1}")]
    Missing(DemandAction, &'static str),
    #[error("the entry's states do not follow the history (from {from:?} to {to:?})")]
    WrongStates {
        from: DemandStatus,
        to: DemandStatus,
    },
    #[error("the user may not take step {0:?} on this order")]
    NotPermitted(DemandAction),
    #[error("the history was rewritten, or new steps were not appended after the latest")]
    Stale,
    #[error("the demand's stored status does not match its history")]
    StatusMismatch,
}

/// Folds a demand's history into its order. Old entries (no action) that do not follow from
/// the state before them are skipped and counted; new entries were checked on the server
/// ([`check_steps`]), so in an acknowledged history every step follows.
pub fn replay(demand: &Demand, rules: &Deadlines) -> Order {
    let mut order = Order {
        status: DemandStatus::Raised,
        tier: None,
        unit: None,
        responsible: demand.responsible(),
        raised_ms: demand.raised_at_ms,
        steps: Vec::new(),
        chase_ups: 0,
        bounces: 0,
        reopened: 0,
        done_ms: None,
        satisfaction: None,
        skipped: 0,
    };
    open_step(&mut order, demand.raised_at_ms, rules);
    for entry in &demand.history {
        if step(&mut order, entry, rules).is_err() {
            order.skipped += 1;
        }
    }
    order
}

fn open_step(order: &mut Order, at_ms: i64, rules: &Deadlines) {
    if let Some(kind) = StepKind::of(order.status) {
        let days = rules.limits.limit(kind, order.tier);
        order.steps.push(Step {
            kind,
            started_ms: at_ms,
            due: rules.calendar.add_working_days(day_of(at_ms), days),
            extended_days: 0,
            ended_ms: None,
        });
    }
}

/// Applies one history entry to `order`, or says why it does not follow.
fn step(order: &mut Order, e: &DemandTransition, rules: &Deadlines) -> Result<(), StepError> {
    let Some(action) = e.action else {
        // A bare status step from before work orders.
        if e.from != order.status || !e.from.may_become(e.to) {
            return Err(StepError::WrongStates {
                from: e.from,
                to: e.to,
            });
        }
        move_to(order, e.to, e.at_ms, rules);
        if e.to == DemandStatus::Done {
            order.done_ms = Some(e.at_ms);
        }
        return Ok(());
    };
    let to = action.next(order.status).ok_or(StepError::NotFromHere {
        action,
        status: order.status,
    })?;
    if e.from != order.status || e.to != to {
        return Err(StepError::WrongStates {
            from: e.from,
            to: e.to,
        });
    }
    match action {
        DemandAction::Dispatch => {
            let unit = e
                .unit
                .as_ref()
                .filter(|u| !u.trim().is_empty())
                .ok_or(StepError::Missing(action, "a team to dispatch to"))?;
            order.unit = Some(unit.clone());
            order.tier = Some(e.tier.unwrap_or(Tier::Coordinate));
        }
        DemandAction::Take => order.tier = Some(e.tier.unwrap_or(Tier::Immediate)),
        DemandAction::Bounce => {
            if e.comment.trim().is_empty() {
                return Err(StepError::Missing(action, "a reason"));
            }
            order.bounces += 1;
        }
        DemandAction::Finish if e.comment.trim().is_empty() => {
            return Err(StepError::Missing(action, "the result"));
        }
        DemandAction::Finish => order.done_ms = Some(e.at_ms),
        DemandAction::ReturnVisit => {
            let s = e
                .satisfaction
                .ok_or(StepError::Missing(action, "the resident's satisfaction"))?;
            order.satisfaction = Some((s, e.at_ms));
        }
        DemandAction::Reopen => {
            order.reopened += 1;
            order.unit = None;
            order.tier = None;
        }
        DemandAction::ChaseUp => order.chase_ups += 1,
        DemandAction::Extend => {
            let days = e
                .extend_days
                .filter(|d| (1..=60).contains(d))
                .ok_or(StepError::Missing(action, "1 to 60 working days"))?;
            if let Some(s) = order.steps.last_mut().filter(|s| s.ended_ms.is_none()) {
                s.extended_days += days;
                s.due = rules.calendar.add_working_days(s.due, days);
            }
        }
        _ => {}
    }
    if to != order.status {
        move_to(order, to, e.at_ms, rules);
    }
    Ok(())
}

fn move_to(order: &mut Order, to: DemandStatus, at_ms: i64, rules: &Deadlines) {
    let before = StepKind::of(order.status);
    let after = StepKind::of(to);
    order.status = to;
    // Accepted → handling is one step (the handling clock starts at acceptance).
    if before == after {
        return;
    }
    if let Some(s) = order.steps.last_mut().filter(|s| s.ended_ms.is_none()) {
        s.ended_ms = Some(at_ms);
    }
    open_step(order, at_ms, rules);
}

/// What a user is to a work order, as the server knows from their assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Party {
    /// A grid worker or grid head of the household's grid.
    pub grid_member: bool,
    /// A supervisor of the household's grid (village, town, command centre).
    pub supervisor: bool,
    /// Dispatches orders to teams: the command centre or a town supervisor.
    pub dispatcher: bool,
    /// The teams (org unit ids) the user works in.
    pub teams: BTreeSet<String>,
}

impl Party {
    /// Whether this party may take `action` on `order` (as it stands before the step).
    pub fn may(&self, action: DemandAction, order: &Order) -> bool {
        use DemandAction as A;
        let of_grid = self.grid_member || self.supervisor;
        let of_team = order.unit.as_ref().is_some_and(|u| self.teams.contains(u));
        match action {
            A::Take | A::Feedback | A::ReturnVisit => of_grid,
            A::Dispatch => self.dispatcher,
            A::Accept | A::Bounce | A::Start => of_team,
            // A dispatched order is finished by its team; one taken at once by the grid.
            A::Finish => {
                if order.unit.is_some() {
                    of_team
                } else {
                    of_grid
                }
            }
            A::Close | A::Reopen => self.supervisor,
            A::ChaseUp | A::Extend => self.supervisor || self.dispatcher,
            A::Comment => of_grid || of_team || self.dispatcher,
        }
    }
}

/// Checks the steps an upload appended to a demand's history, for the server: the history
/// held before (`before`, `None` for a new demand) must be a prefix of the one after, every
/// new step must be the uploader's (`by`), follow from the state before it, carry its data,
/// and be one `party` may take; and the stored status must be the one the history leads to.
pub fn check_steps(
    before: Option<&Demand>,
    after: &Demand,
    by: UserId,
    party: &Party,
    rules: &Deadlines,
) -> Result<(), StepError> {
    let held = before.map_or(&[][..], |d| d.history.as_slice());
    if after.history.len() < held.len() || after.history[..held.len()] != *held {
        return Err(StepError::Stale);
    }
    let mut order = replay(
        &Demand {
            history: held.to_vec(),
            ..after.clone()
        },
        rules,
    );
    for e in &after.history[held.len()..] {
        let action = e.action.ok_or(StepError::Missing(
            DemandAction::Comment,
            "a step (entries without one are from before work orders)",
        ))?;
        if e.by != by {
            return Err(StepError::NotPermitted(action));
        }
        if !party.may(action, &order) {
            return Err(StepError::NotPermitted(action));
        }
        step(&mut order, e, rules).map_err(|err| match err {
            StepError::NotFromHere { .. } | StepError::WrongStates { .. } => StepError::Stale,
            other => other,
        })?;
    }
    if after.status != order.status {
        return Err(StepError::StatusMismatch);
    }
    Ok(())
}

/// A step a user takes on a work order, with its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStep<'a> {
    pub action: DemandAction,
    pub comment: &'a str,
    pub tier: Option<Tier>,
    pub unit: Option<&'a str>,
    pub satisfaction: Option<Satisfaction>,
    pub extend_days: Option<u32>,
}

impl<'a> NewStep<'a> {
    /// A step with no data beyond a comment.
    pub fn new(action: DemandAction, comment: &'a str) -> Self {
        Self {
            action,
            comment,
            tier: None,
            unit: None,
            satisfaction: None,
            extend_days: None,
        }
    }

    /// The entry `by` (on `device`) appends at `at_ms`, checked against the order's history.
    pub fn entry(
        &self,
        demand: &Demand,
        by: UserId,
        device: Option<crate::ids::DeviceId>,
        at_ms: i64,
        rules: &Deadlines,
    ) -> Result<(DemandTransition, DemandStatus), StepError> {
        let mut order = replay(demand, rules);
        let from = order.status;
        let to = self.action.next(from).ok_or(StepError::NotFromHere {
            action: self.action,
            status: from,
        })?;
        let entry = DemandTransition {
            by,
            device,
            at_ms,
            from,
            to,
            comment: self.comment.to_string(),
            action: Some(self.action),
            tier: self.tier,
            unit: self.unit.map(str::to_string),
            satisfaction: self.satisfaction,
            extend_days: self.extend_days,
        };
        step(&mut order, &entry, rules)?;
        Ok((entry, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ids::{DemandId, DeviceId},
        schema::{NeedCategory, Urgency},
    };
    use DemandAction as A;
    use DemandStatus as S;

    fn d(s: &str) -> Day {
        s.parse().unwrap()
    }

    /// Noon, China time, of a day.
    fn noon(day: &str) -> i64 {
        let date = d(day).0;
        date.with_hms(4, 0, 0)
            .unwrap()
            .assume_utc()
            .unix_timestamp()
            * 1000
    }

    fn demand(raised: &str) -> Demand {
        Demand {
            id: DemandId::new(),
            raised_on_visit: None,
            raised_by: UserId::new(),
            raised_at_ms: noon(raised),
            category: NeedCategory::Housing,
            text: "屋顶漏雨".into(),
            urgency: Urgency::Normal,
            status: S::Raised,
            history: Vec::new(),
            first_responsible: None,
            source: None,
            external_ref: None,
        }
    }

    fn step_of(action: DemandAction) -> NewStep<'static> {
        NewStep {
            action,
            comment: "说明",
            tier: None,
            unit: Some("dept-water"),
            satisfaction: Some(Satisfaction::Satisfied),
            extend_days: Some(3),
        }
    }

    fn take(dm: &mut Demand, action: DemandAction, day: &str) -> Result<(), StepError> {
        let (e, to) =
            step_of(action).entry(dm, dm.raised_by, None, noon(day), &Deadlines::default())?;
        dm.history.push(e);
        dm.status = to;
        Ok(())
    }

    /// Every (state, step) pair: the allowed ones lead where the table says, the rest are
    /// refused, and an order reaches each state by some path.
    #[test]
    fn every_transition_is_allowed_or_refused_as_the_table_says() {
        let table: &[(DemandStatus, DemandAction, DemandStatus)] = &[
            (S::Raised, A::Take, S::Handling),
            (S::Raised, A::Dispatch, S::Dispatched),
            (S::Bounced, A::Dispatch, S::Dispatched),
            (S::Dispatched, A::Accept, S::Accepted),
            (S::Dispatched, A::Bounce, S::Bounced),
            (S::Accepted, A::Start, S::Handling),
            (S::Handling, A::Finish, S::Done),
            (S::Done, A::Feedback, S::FedBack),
            (S::FedBack, A::ReturnVisit, S::ReturnVisited),
            (S::ReturnVisited, A::Close, S::Closed),
            (S::ReturnVisited, A::Reopen, S::Raised),
            (S::Closed, A::Reopen, S::Raised),
        ];
        let states = [
            S::Raised,
            S::Dispatched,
            S::Accepted,
            S::Bounced,
            S::Handling,
            S::Done,
            S::FedBack,
            S::ReturnVisited,
            S::Closed,
        ];
        // A path to each state, so the check runs on real histories.
        let paths: &[(DemandStatus, &[DemandAction])] = &[
            (S::Raised, &[]),
            (S::Dispatched, &[A::Dispatch]),
            (S::Accepted, &[A::Dispatch, A::Accept]),
            (S::Bounced, &[A::Dispatch, A::Bounce]),
            (S::Handling, &[A::Take]),
            (S::Done, &[A::Take, A::Finish]),
            (S::FedBack, &[A::Take, A::Finish, A::Feedback]),
            (
                S::ReturnVisited,
                &[A::Take, A::Finish, A::Feedback, A::ReturnVisit],
            ),
            (
                S::Closed,
                &[A::Take, A::Finish, A::Feedback, A::ReturnVisit, A::Close],
            ),
        ];
        let mut checked = 0;
        for (state, path) in paths {
            for action in DemandAction::ALL {
                let mut dm = demand("2026-11-02");
                for a in path.iter() {
                    take(&mut dm, *a, "2026-11-02").unwrap();
                }
                assert_eq!(dm.status, *state);
                let expected = table
                    .iter()
                    .find(|(f, a, _)| f == state && *a == action)
                    .map(|(_, _, t)| *t)
                    .or_else(|| {
                        let neutral = matches!(action, A::ChaseUp | A::Extend | A::Comment);
                        (neutral && *state != S::Closed).then_some(*state)
                    });
                let got = take(&mut dm, action, "2026-11-03");
                match expected {
                    Some(to) => {
                        got.unwrap_or_else(|e| panic!("{state:?} {action:?}: {e}"));
                        assert_eq!(dm.status, to, "{state:?} {action:?}");
                        assert_eq!(replay(&dm, &Deadlines::default()).skipped, 0);
                    }
                    None => assert!(
                        matches!(got, Err(StepError::NotFromHere { .. })),
                        "{state:?} {action:?} should be refused: {got:?}"
                    ),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, states.len() * DemandAction::ALL.len());
    }

    #[test]
    fn steps_need_their_data() {
        let mut dm = demand("2026-11-02");
        let rules = Deadlines::default();
        let by = dm.raised_by;
        let no_unit = NewStep {
            unit: None,
            ..step_of(A::Dispatch)
        };
        assert!(matches!(
            no_unit.entry(&dm, by, None, noon("2026-11-02"), &rules),
            Err(StepError::Missing(A::Dispatch, _))
        ));
        take(&mut dm, A::Dispatch, "2026-11-02").unwrap();
        let no_reason = NewStep {
            comment: "  ",
            ..step_of(A::Bounce)
        };
        assert!(no_reason.entry(&dm, by, None, 0, &rules).is_err());
        let too_long = NewStep {
            extend_days: Some(61),
            ..step_of(A::Extend)
        };
        assert!(too_long.entry(&dm, by, None, 0, &rules).is_err());
        take(&mut dm, A::Accept, "2026-11-02").unwrap();
        take(&mut dm, A::Start, "2026-11-02").unwrap();
        let no_result = NewStep {
            comment: "",
            ..step_of(A::Finish)
        };
        assert!(no_result.entry(&dm, by, None, 0, &rules).is_err());
        take(&mut dm, A::Finish, "2026-11-03").unwrap();
        take(&mut dm, A::Feedback, "2026-11-03").unwrap();
        let no_verdict = NewStep {
            satisfaction: None,
            ..step_of(A::ReturnVisit)
        };
        assert!(no_verdict.entry(&dm, by, None, 0, &rules).is_err());
    }

    #[test]
    fn working_days_skip_weekends_and_holidays_across_month_ends_and_february() {
        let cal = WorkCalendar::default();
        // Friday 2026-02-27 + 1 working day: Monday 2 March (February has 28 days).
        assert_eq!(cal.add_working_days(d("2026-02-27"), 1), d("2026-03-02"));
        // Leap year: Friday 2028-02-25 + 2 → Tuesday 29 Feb.
        assert_eq!(cal.add_working_days(d("2028-02-25"), 2), d("2028-02-29"));
        assert_eq!(cal.add_working_days(d("2028-02-25"), 3), d("2028-03-01"));
        // 7 working days from Monday 2026-11-23: Wednesday 2 December (crossing month end).
        assert_eq!(cal.add_working_days(d("2026-11-23"), 7), d("2026-12-02"));
        // From a Saturday, the first working day is Monday.
        assert_eq!(cal.add_working_days(d("2026-11-28"), 1), d("2026-11-30"));
        assert_eq!(cal.add_working_days(d("2026-11-28"), 0), d("2026-11-28"));
        // Year end: Thursday 2026-12-31 + 2 → Monday 2027-01-04.
        assert_eq!(cal.add_working_days(d("2026-12-31"), 2), d("2027-01-04"));
        // Spring Festival 2026 (16-23 Feb off; Sat 14 and Sat 28 Feb are make-up days).
        let cal = WorkCalendar {
            holidays: (16..=23).map(|n| d(&format!("2026-02-{n:02}"))).collect(),
            workdays: [d("2026-02-14"), d("2026-02-28")].into(),
        };
        assert!(cal.is_working_day(d("2026-02-14")));
        assert!(!cal.is_working_day(d("2026-02-16")));
        // Friday 13 Feb + 1 → Saturday 14 (make-up day); + 2 → Tuesday 24.
        assert_eq!(cal.add_working_days(d("2026-02-13"), 1), d("2026-02-14"));
        assert_eq!(cal.add_working_days(d("2026-02-13"), 2), d("2026-02-24"));
        // Friday 27 Feb + 1 → Saturday 28 Feb (make-up), + 2 → Monday 2 March.
        assert_eq!(cal.add_working_days(d("2026-02-27"), 2), d("2026-03-02"));
    }

    #[test]
    fn deadlines_follow_steps_extensions_and_lateness() {
        let rules = Deadlines::default();
        let mut dm = demand("2026-02-26"); // Thursday
        let o = replay(&dm, &rules);
        assert_eq!(o.open_step().unwrap().kind, StepKind::Triage);
        assert_eq!(o.open_step().unwrap().due, d("2026-02-27"));
        assert!(!o.overdue_on(d("2026-02-27")));
        assert!(o.overdue_on(d("2026-03-02")));
        take(&mut dm, A::Dispatch, "2026-02-27").unwrap();
        take(&mut dm, A::Accept, "2026-03-02").unwrap(); // due 2 March: on time
        take(&mut dm, A::Start, "2026-03-03").unwrap();
        let o = replay(&dm, &rules);
        // Handling (coordinate: 7 working days) runs from acceptance on Monday 2 March.
        let handle = o.open_step().unwrap();
        assert_eq!(
            (handle.kind, handle.due),
            (StepKind::Handle, d("2026-03-11"))
        );
        take(&mut dm, A::Extend, "2026-03-10").unwrap(); // + 3 working days
        let o = replay(&dm, &rules);
        assert_eq!(o.open_step().unwrap().due, d("2026-03-16"));
        assert_eq!(o.open_step().unwrap().extended_days, 3);
        take(&mut dm, A::Finish, "2026-03-17").unwrap(); // a day late
        let o = replay(&dm, &rules);
        assert!(o.steps[2].late());
        assert_eq!(o.resolved_on_time(), Some(false));
        assert_eq!(o.done_ms, Some(noon("2026-03-17")));
        assert_eq!(o.steps.len(), 4);
        assert_eq!(o.open_step().unwrap().kind, StepKind::Feedback);
    }

    #[test]
    fn the_server_refuses_rewritten_stale_foreign_and_unpermitted_steps() {
        let rules = Deadlines::default();
        let worker = Party {
            grid_member: true,
            ..Party::default()
        };
        let centre = Party {
            dispatcher: true,
            ..Party::default()
        };
        let team = Party {
            teams: ["dept-water".to_string()].into(),
            ..Party::default()
        };
        let base = demand("2026-11-02");
        let by = base.raised_by;
        // A new demand with no steps is fine; with a bad status it is not.
        assert_eq!(check_steps(None, &base, by, &worker, &rules), Ok(()));
        let wrong_status = Demand {
            status: S::Done,
            ..base.clone()
        };
        assert_eq!(
            check_steps(None, &wrong_status, by, &worker, &rules),
            Err(StepError::StatusMismatch)
        );
        // The worker may not dispatch; the command centre may.
        let mut dispatched = base.clone();
        take(&mut dispatched, A::Dispatch, "2026-11-02").unwrap();
        assert_eq!(
            check_steps(Some(&base), &dispatched, by, &worker, &rules),
            Err(StepError::NotPermitted(A::Dispatch))
        );
        assert_eq!(
            check_steps(Some(&base), &dispatched, by, &centre, &rules),
            Ok(())
        );
        // Steps signed by someone else are refused.
        assert_eq!(
            check_steps(Some(&base), &dispatched, UserId::new(), &centre, &rules),
            Err(StepError::NotPermitted(A::Dispatch))
        );
        // Only the team it went to accepts it.
        let mut accepted = dispatched.clone();
        take(&mut accepted, A::Accept, "2026-11-03").unwrap();
        assert_eq!(
            check_steps(Some(&dispatched), &accepted, by, &team, &rules),
            Ok(())
        );
        let other_team = Party {
            teams: ["dept-roads".to_string()].into(),
            ..Party::default()
        };
        assert!(check_steps(Some(&dispatched), &accepted, by, &other_team, &rules).is_err());
        // A step made without seeing the server's latest (inserted before it) is stale.
        let mut bounced = dispatched.clone();
        take(&mut bounced, A::Bounce, "2026-11-03").unwrap();
        let mut interleaved = accepted.clone();
        interleaved.history.insert(1, bounced.history[1].clone());
        assert_eq!(
            check_steps(Some(&accepted), &interleaved, by, &team, &rules),
            Err(StepError::Stale)
        );
        // ... and one appended after it that no longer follows is stale too.
        let mut late_bounce = accepted.clone();
        late_bounce.history.push(bounced.history[1].clone());
        assert_eq!(
            check_steps(Some(&accepted), &late_bounce, by, &team, &rules),
            Err(StepError::Stale)
        );
        // Rewriting a held entry is refused.
        let mut rewritten = accepted.clone();
        rewritten.history[0].comment = "改过".into();
        assert_eq!(
            check_steps(Some(&accepted), &rewritten, by, &team, &rules),
            Err(StepError::Stale)
        );
        // A chase-up by the command centre after the accept is fine.
        let mut chased = accepted.clone();
        take(&mut chased, A::ChaseUp, "2026-11-05").unwrap();
        assert_eq!(
            check_steps(Some(&accepted), &chased, by, &centre, &rules),
            Ok(())
        );
        assert_eq!(replay(&chased, &rules).chase_ups, 1);
    }

    #[test]
    fn old_histories_replay_and_skip_what_does_not_follow() {
        let mut dm = demand("2026-11-02");
        let bare = |from, to, at| DemandTransition {
            by: dm.raised_by,
            device: Some(DeviceId::new()),
            at_ms: at,
            from,
            to,
            comment: String::new(),
            action: None,
            tier: None,
            unit: None,
            satisfaction: None,
            extend_days: None,
        };
        dm.history = vec![
            bare(S::Raised, S::Handling, 1),
            bare(S::Raised, S::Handling, 2), // concurrent duplicate: skipped
            bare(S::Handling, S::Done, 3),
        ];
        let o = replay(&dm, &Deadlines::default());
        assert_eq!(o.status, S::Done);
        assert_eq!(o.skipped, 1);
        assert_eq!(o.done_ms, Some(3));
    }
}
