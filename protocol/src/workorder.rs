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
//! Urgent demands get their own handling limit ([`DeadlinePolicy::handle_urgent`]). The
//! default calendar ([`WorkCalendar::china`]) is shipped data (`protocol/data/`): the State
//! Council's public holidays and make-up working days; a server's `--workflow` file replaces it.
//!
//! **Times the server vouches for.** A step's `at_ms` is the phone's clock. The server
//! refuses a step that claims a time before the step before it (or before the demand was
//! raised), or more than [`CLOCK_SKEW_MS`] after the server received it ([`check_steps`]).
//! Lateness is judged by the step's time only where it agrees with the step's arrival at
//! the server within that allowance; a step that arrived later is judged by its arrival
//! ([`judged_ms`], [`replay_arrived`]): a time the server did not see cannot make a step on
//! time.

use std::collections::BTreeSet;

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::{
    calendar::Day,
    ids::UserId,
    schema::{Demand, DemandStatus, DemandTransition, Satisfaction, Tier, Urgency},
};

/// China Standard Time, for the day a step happened on.
pub const CST_OFFSET_SECS: i32 = 8 * 3600;

/// The clock-skew allowance (SYNC-v1 §13.6.1): how far a step's time may be after the server
/// received it, and how far before its arrival it may be and still be taken at its word for
/// lateness.
pub const CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;

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
    /// Withdrawn by the command centre (撤销), with a reason: closed without being done. A
    /// demand is never deleted; this is how one that should not have been raised ends.
    Withdraw,
}

impl DemandAction {
    pub const ALL: [DemandAction; 14] = [
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
        DemandAction::Withdraw,
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
            (A::Withdraw, s) if s.is_open() => S::Closed,
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
    /// Handling an urgent demand, whatever its tier (when shorter than the tier's limit).
    pub handle_urgent: u32,
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
            handle_urgent: 1,
            feedback: 2,
            return_visit: 5,
            close: 2,
        }
    }
}

impl DeadlinePolicy {
    /// The working days allowed for `step` of an order of `tier` and `urgency`.
    pub fn limit(&self, step: StepKind, tier: Option<Tier>, urgency: Urgency) -> u32 {
        match step {
            StepKind::Triage => self.triage,
            StepKind::Accept => self.accept,
            StepKind::Handle => {
                let by_tier = match tier {
                    Some(Tier::Immediate) => self.handle_immediate,
                    Some(Tier::LeaderCase) => self.handle_leader_case,
                    Some(Tier::Coordinate) | None => self.handle_coordinate,
                };
                match urgency {
                    Urgency::Urgent => by_tier.min(self.handle_urgent),
                    Urgency::Normal => by_tier,
                }
            }
            StepKind::Feedback => self.feedback,
            StepKind::ReturnVisit => self.return_visit,
            StepKind::Close => self.close,
        }
    }
}

/// Which days are working days: Monday to Friday, except `holidays`, plus the weekend days
/// in `workdays` (调休, make-up working days around the statutory holidays). The default
/// ([`Default`]) has none of either; [`WorkCalendar::china`] is the shipped one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkCalendar {
    /// Where the days come from (free text, not read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub holidays: BTreeSet<Day>,
    pub workdays: BTreeSet<Day>,
}

/// The shipped calendar: `protocol/data/work-calendar-cn.json`.
const CHINA_CALENDAR: &str = include_str!("../data/work-calendar-cn.json");

impl WorkCalendar {
    /// The State Council's public holidays and make-up working days for 2026, and the
    /// statutory days of 2027 (provisional: the 2027 notice could not be confirmed when the
    /// data was written, so 2027 has no make-up days; see the file's notes). The calendar of
    /// [`Deadlines::default`]; a `--workflow` file's `calendar` replaces it whole.
    pub fn china() -> WorkCalendar {
        // The file is part of the crate and read by a test; it cannot fail to parse.
        serde_json::from_str(CHINA_CALENDAR).unwrap_or_default()
    }

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

/// The configuration deadlines are computed with. The default has the default limits and
/// the shipped calendar ([`WorkCalendar::china`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    pub limits: DeadlinePolicy,
    pub calendar: WorkCalendar,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            limits: DeadlinePolicy::default(),
            calendar: WorkCalendar::china(),
        }
    }
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
    pub urgency: Urgency,
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
    #[error("step {0:?} is dated before the step before it (or before the demand was raised)")]
    BeforePrevious(DemandAction),
    #[error("step {0:?} is dated after the server received it (beyond the clock-skew allowance)")]
    InTheFuture(DemandAction),
    #[error("the demand is dated after the server received it (beyond the clock-skew allowance)")]
    RaisedInTheFuture,
}

/// Folds a demand's history into its order. Old entries (no action) that do not follow from
/// the state before them are skipped and counted; new entries were checked on the server
/// ([`check_steps`]), so in an acknowledged history every step follows.
pub fn replay(demand: &Demand, rules: &Deadlines) -> Order {
    let mut order = Order {
        status: DemandStatus::Raised,
        tier: None,
        urgency: demand.urgency,
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
        let days = rules.limits.limit(kind, order.tier, order.urgency);
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
        DemandAction::Withdraw if e.comment.trim().is_empty() => {
            return Err(StepError::Missing(action, "a reason"));
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
    /// The command centre (指挥中心) of the household's grid: the only one who withdraws an
    /// order.
    pub command_centre: bool,
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
            A::Withdraw => self.command_centre,
        }
    }
}

/// Checks the steps an upload appended to a demand's history, for the server (and for the
/// phone before it commits a step, with its own clock as `arrival_ms`): the history held
/// before (`before`, `None` for a new demand) must be a prefix of the one after, every new
/// step must be the uploader's (`by`), follow from the state before it, carry its data, be
/// one `party` may take, and be dated neither before the step before it (nor before the
/// demand was raised) nor more than [`CLOCK_SKEW_MS`] after `arrival_ms`, the time the server
/// received it; and the stored status must be the one the history leads to. A new step dated
/// before the last step the server held is [`StepError::Stale`]: it was made without seeing
/// that step (or backdated).
pub fn check_steps(
    before: Option<&Demand>,
    after: &Demand,
    by: UserId,
    party: &Party,
    rules: &Deadlines,
    arrival_ms: i64,
) -> Result<(), StepError> {
    let held = before.map_or(&[][..], |d| d.history.as_slice());
    if after.history.len() < held.len() || after.history[..held.len()] != *held {
        return Err(StepError::Stale);
    }
    let latest = arrival_ms.saturating_add(CLOCK_SKEW_MS);
    if before.is_none() && after.raised_at_ms > latest {
        return Err(StepError::RaisedInTheFuture);
    }
    let mut order = replay(
        &Demand {
            history: held.to_vec(),
            ..after.clone()
        },
        rules,
    );
    let mut previous_ms = held.last().map_or(after.raised_at_ms, |e| e.at_ms);
    let mut previous_is_held = !held.is_empty();
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
        if e.at_ms < previous_ms {
            // Dated before a step the server holds: made without seeing it (or backdated):
            // stale, so the phone rolls it back and sees the order as it is. Before its own
            // earlier step or before the demand was raised: refused.
            return Err(if previous_is_held {
                StepError::Stale
            } else {
                StepError::BeforePrevious(action)
            });
        }
        if e.at_ms > latest {
            return Err(StepError::InTheFuture(action));
        }
        previous_ms = e.at_ms;
        previous_is_held = false;
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

/// The time a step is judged by for lateness: its own (`at_ms`, the phone's clock) where it
/// is within [`CLOCK_SKEW_MS`] of its arrival at the server, else its arrival.
pub fn judged_ms(at_ms: i64, arrival_ms: i64) -> i64 {
    if arrival_ms.saturating_sub(at_ms) > CLOCK_SKEW_MS {
        arrival_ms
    } else {
        at_ms
    }
}

/// [`replay`], with each history entry's time judged against its arrival at the server
/// (`arrivals[i]` for `history[i]`; `None`, or a missing entry, takes the step at its word):
/// what the server's figures count. Judged times never go backwards.
pub fn replay_arrived(demand: &Demand, rules: &Deadlines, arrivals: &[Option<i64>]) -> Order {
    let mut judged = demand.clone();
    let mut floor = i64::MIN;
    for (e, arrival) in judged.history.iter_mut().zip(arrivals) {
        if let Some(a) = arrival {
            e.at_ms = judged_ms(e.at_ms, *a).max(floor);
        }
        floor = floor.max(e.at_ms);
    }
    replay(&judged, rules)
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
        let previous_ms = demand
            .history
            .last()
            .map_or(demand.raised_at_ms, |e| e.at_ms);
        if at_ms < previous_ms {
            // The device's clock is behind the order's last step: the server would refuse it.
            return Err(StepError::BeforePrevious(self.action));
        }
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
                        if action == A::Withdraw {
                            return (*state != S::Closed).then_some(S::Closed);
                        }
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
            ..WorkCalendar::default()
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
        assert_eq!(
            check_steps(None, &base, by, &worker, &rules, noon("2026-11-30")),
            Ok(())
        );
        let wrong_status = Demand {
            status: S::Done,
            ..base.clone()
        };
        assert_eq!(
            check_steps(None, &wrong_status, by, &worker, &rules, noon("2026-11-30")),
            Err(StepError::StatusMismatch)
        );
        // The worker may not dispatch; the command centre may.
        let mut dispatched = base.clone();
        take(&mut dispatched, A::Dispatch, "2026-11-02").unwrap();
        assert_eq!(
            check_steps(
                Some(&base),
                &dispatched,
                by,
                &worker,
                &rules,
                noon("2026-11-30")
            ),
            Err(StepError::NotPermitted(A::Dispatch))
        );
        assert_eq!(
            check_steps(
                Some(&base),
                &dispatched,
                by,
                &centre,
                &rules,
                noon("2026-11-30")
            ),
            Ok(())
        );
        // Steps signed by someone else are refused.
        assert_eq!(
            check_steps(
                Some(&base),
                &dispatched,
                UserId::new(),
                &centre,
                &rules,
                noon("2026-11-30")
            ),
            Err(StepError::NotPermitted(A::Dispatch))
        );
        // Only the team it went to accepts it.
        let mut accepted = dispatched.clone();
        take(&mut accepted, A::Accept, "2026-11-03").unwrap();
        assert_eq!(
            check_steps(
                Some(&dispatched),
                &accepted,
                by,
                &team,
                &rules,
                noon("2026-11-30")
            ),
            Ok(())
        );
        let other_team = Party {
            teams: ["dept-roads".to_string()].into(),
            ..Party::default()
        };
        assert!(
            check_steps(
                Some(&dispatched),
                &accepted,
                by,
                &other_team,
                &rules,
                noon("2026-11-30")
            )
            .is_err()
        );
        // A step made without seeing the server's latest (inserted before it) is stale.
        let mut bounced = dispatched.clone();
        take(&mut bounced, A::Bounce, "2026-11-03").unwrap();
        let mut interleaved = accepted.clone();
        interleaved.history.insert(1, bounced.history[1].clone());
        assert_eq!(
            check_steps(
                Some(&accepted),
                &interleaved,
                by,
                &team,
                &rules,
                noon("2026-11-30")
            ),
            Err(StepError::Stale)
        );
        // ... and one appended after it that no longer follows is stale too.
        let mut late_bounce = accepted.clone();
        late_bounce.history.push(bounced.history[1].clone());
        assert_eq!(
            check_steps(
                Some(&accepted),
                &late_bounce,
                by,
                &team,
                &rules,
                noon("2026-11-30")
            ),
            Err(StepError::Stale)
        );
        // Rewriting a held entry is refused.
        let mut rewritten = accepted.clone();
        rewritten.history[0].comment = "改过".into();
        assert_eq!(
            check_steps(
                Some(&accepted),
                &rewritten,
                by,
                &team,
                &rules,
                noon("2026-11-30")
            ),
            Err(StepError::Stale)
        );
        // A chase-up by the command centre after the accept is fine.
        let mut chased = accepted.clone();
        take(&mut chased, A::ChaseUp, "2026-11-05").unwrap();
        assert_eq!(
            check_steps(
                Some(&accepted),
                &chased,
                by,
                &centre,
                &rules,
                noon("2026-11-30")
            ),
            Ok(())
        );
        assert_eq!(replay(&chased, &rules).chase_ups, 1);
    }

    #[test]
    fn the_shipped_calendar_has_the_state_councils_2026_days_and_2027s_statutory_days() {
        let cal = WorkCalendar::china();
        // 2026 in full, as the notice has it.
        for day in [
            "2026-01-02",
            "2026-02-16",
            "2026-02-23",
            "2026-04-06",
            "2026-05-05",
        ] {
            assert!(!cal.is_working_day(d(day)), "{day}");
        }
        for day in ["2026-06-19", "2026-09-25", "2026-10-01", "2026-10-07"] {
            assert!(!cal.is_working_day(d(day)), "{day}");
        }
        for day in [
            "2026-01-04",
            "2026-02-14",
            "2026-02-28",
            "2026-05-09",
            "2026-09-20",
        ] {
            assert!(cal.is_working_day(d(day)), "{day}");
        }
        assert!(cal.is_working_day(d("2026-10-10")));
        // National Day: Wednesday 30 September + 1 working day is Thursday 8 October.
        assert_eq!(cal.add_working_days(d("2026-09-30"), 1), d("2026-10-08"));
        // A due date never lands on New Year's Day 2027.
        assert_eq!(cal.add_working_days(d("2026-12-31"), 1), d("2027-01-04"));
        // Spring Festival 2027 (statutory days only: provisional).
        assert_eq!(cal.add_working_days(d("2027-02-04"), 1), d("2027-02-09"));
        // The default deadlines use it; a `--workflow` calendar replaces it whole.
        assert_eq!(Deadlines::default().calendar, cal);
        let replaced: Deadlines =
            serde_json::from_str(r#"{"calendar": {"holidays": ["2026-12-01"]}}"#).unwrap();
        assert!(replaced.calendar.is_working_day(d("2026-10-01")));
        assert!(!replaced.calendar.is_working_day(d("2026-12-01")));
        assert_eq!(replaced.limits, DeadlinePolicy::default());
    }

    #[test]
    fn an_urgent_demand_is_handled_within_its_own_limit() {
        let rules = Deadlines::default();
        let mut ordinary = demand("2026-11-02"); // Monday
        take(&mut ordinary, A::Dispatch, "2026-11-02").unwrap();
        take(&mut ordinary, A::Accept, "2026-11-02").unwrap();
        let mut urgent = ordinary.clone();
        urgent.urgency = Urgency::Urgent;
        let due = |dm: &Demand| replay(dm, &rules).open_step().unwrap().due;
        assert_eq!(due(&ordinary), d("2026-11-11"));
        assert_eq!(due(&urgent), d("2026-11-03"));
        let slower = Deadlines {
            limits: DeadlinePolicy {
                handle_urgent: 3,
                ..DeadlinePolicy::default()
            },
            ..Deadlines::default()
        };
        assert_eq!(
            replay(&urgent, &slower).open_step().unwrap().due,
            d("2026-11-05")
        );
    }

    #[test]
    fn steps_dated_before_the_last_one_or_after_their_arrival_are_refused() {
        let rules = Deadlines::default();
        let worker = Party {
            grid_member: true,
            ..Party::default()
        };
        let mut taken = demand("2026-11-02");
        take(&mut taken, A::Take, "2026-11-05").unwrap();
        let by = taken.raised_by;
        let arrival = noon("2026-11-10");
        let with = |at_ms: i64| {
            let mut after = taken.clone();
            let (mut e, to) = NewStep::new(A::Finish, "修好了")
                .entry(&taken, by, None, noon("2026-11-09"), &rules)
                .unwrap();
            e.at_ms = at_ms;
            after.history.push(e);
            after.status = to;
            after
        };
        let check = |after: &Demand| check_steps(Some(&taken), after, by, &worker, &rules, arrival);
        assert_eq!(check(&with(noon("2026-11-09"))), Ok(()));
        // Backdated before the take the server holds: stale (made without seeing it, or a lie).
        assert_eq!(check(&with(noon("2026-11-04"))), Err(StepError::Stale));
        // Before the upload's own earlier step: refused.
        let mut two = with(noon("2026-11-09"));
        let (mut fb, to) = NewStep::new(A::Feedback, "")
            .entry(&two, by, None, noon("2026-11-09"), &rules)
            .unwrap();
        fb.at_ms = noon("2026-11-08");
        two.history.push(fb);
        two.status = to;
        assert_eq!(check(&two), Err(StepError::BeforePrevious(A::Feedback)));
        // Within the allowance after its arrival: fine; beyond it: refused.
        assert_eq!(check(&with(arrival + CLOCK_SKEW_MS)), Ok(()));
        assert_eq!(
            check(&with(arrival + CLOCK_SKEW_MS + 1)),
            Err(StepError::InTheFuture(A::Finish))
        );
        // A new demand dated in the future is refused too.
        let future = demand("2026-11-20");
        assert_eq!(
            check_steps(None, &future, by, &worker, &rules, arrival),
            Err(StepError::RaisedInTheFuture)
        );
        // The phone refuses to make a step its clock puts before the last one.
        assert_eq!(
            NewStep::new(A::Finish, "修好了").entry(&taken, by, None, noon("2026-11-04"), &rules),
            Err(StepError::BeforePrevious(A::Finish))
        );
    }

    #[test]
    fn lateness_is_judged_by_arrival_when_the_step_claims_an_earlier_time() {
        let rules = Deadlines::default();
        let mut dm = demand("2026-11-02"); // Monday
        take(&mut dm, A::Take, "2026-11-02").unwrap(); // handle (immediate): due Wednesday 4th
        take(&mut dm, A::Finish, "2026-11-04").unwrap(); // claims the due day
        let claimed = replay(&dm, &rules);
        assert!(!claimed.steps[1].late());
        // It arrived on Friday: judged by its arrival, it was late.
        let arrivals = [Some(noon("2026-11-02")), Some(noon("2026-11-06"))];
        let judged = replay_arrived(&dm, &rules, &arrivals);
        assert!(judged.steps[1].late());
        assert_eq!(judged.resolved_on_time(), Some(false));
        // Arriving within the allowance, it is taken at its word.
        let prompt = [None, Some(noon("2026-11-04") + CLOCK_SKEW_MS)];
        assert!(!replay_arrived(&dm, &rules, &prompt).steps[1].late());
        assert_eq!(judged_ms(5, 5 + CLOCK_SKEW_MS + 1), 5 + CLOCK_SKEW_MS + 1);
    }

    #[test]
    fn only_the_command_centre_withdraws_an_order_and_with_a_reason() {
        let rules = Deadlines::default();
        let supervisor = Party {
            supervisor: true,
            dispatcher: true,
            ..Party::default()
        };
        let centre = Party {
            command_centre: true,
            ..supervisor.clone()
        };
        let base = demand("2026-11-02");
        let by = base.raised_by;
        let at = noon("2026-11-03");
        assert!(matches!(
            NewStep::new(A::Withdraw, " ").entry(&base, by, None, at, &rules),
            Err(StepError::Missing(A::Withdraw, _))
        ));
        let (e, to) = NewStep::new(A::Withdraw, "重复诉求")
            .entry(&base, by, None, at, &rules)
            .unwrap();
        assert_eq!(to, S::Closed);
        let mut withdrawn = base.clone();
        withdrawn.history.push(e);
        withdrawn.status = to;
        let arrival = noon("2026-11-03");
        assert_eq!(
            check_steps(Some(&base), &withdrawn, by, &supervisor, &rules, arrival),
            Err(StepError::NotPermitted(A::Withdraw))
        );
        assert_eq!(
            check_steps(Some(&base), &withdrawn, by, &centre, &rules, arrival),
            Ok(())
        );
        let o = replay(&withdrawn, &rules);
        assert_eq!((o.status, o.open_step()), (S::Closed, None));
        assert_eq!(withdrawn.history[0].comment, "重复诉求");
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
