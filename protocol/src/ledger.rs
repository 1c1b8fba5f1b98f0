//! The second ledger (双台账, SYNC-v1 §13.10): disputes (矛盾纠纷) and hazards (隐患) as tracked
//! items of a household — a *case* — each followed from the visit that found it to its end,
//! with no IO.
//!
//! A dispute or a hazard noted on a visit is a line of that visit; nothing follows it to the
//! next visit. A case does: it is raised (on a visit, naming the line, or on its own), assigned
//! to someone with a deadline, taken in hand, settled (调解成功) or rectified (整改完成),
//! checked (验收/回访) — or escalated (上报) into a demand's work order, which then carries it.
//! A check that finds the hazard still there sends it back in hand.
//!
//! ```text
//!  open ──assign──▶ assigned ──start──▶ in_hand ──resolve──▶ resolved ──check──▶ checked
//!   │ └──start / resolve ────────────────▲  ▲                    │
//!   │                                       └──────reopen────────┘
//!   └── (open, assigned, in_hand) ──escalate──▶ escalated (a work order carries it)
//! ```
//!
//! Like a work order's history, a case's only grows at its end, each step is its uploader's,
//! follows from the state before it and is one their role may take ([`check_steps`], run by the
//! server on every change and by the phone before it commits one). A follow-up (跟进) notes a
//! later visit's look at the case without changing its state: "check the hazard at 17号".
//!
//! Each case is a key of the document's root of its own, `case:<id>` ([`root_key`]), for the
//! reason photos are (SYNC-v1 §14.2): two phones raising a household's first cases at once
//! would otherwise each make a `cases` map, and Automerge would show one of them.

use autosurgeon::{Hydrate, Reconcile};

use crate::{
    calendar::Day,
    ids::{CaseId, DemandId, DeviceId, UserId, VisitId},
    schema::{DisputeKind, HazardKind},
    workorder::{CLOCK_SKEW_MS, Party},
};

/// The prefix of a case's key at the document's root.
pub const ROOT_PREFIX: &str = "case:";

/// The root key of the case `id`.
pub fn root_key(id: &str) -> String {
    format!("{ROOT_PREFIX}{id}")
}

/// The most steps one case's history may hold.
pub const MAX_CASE_STEPS: usize = 200;

/// What is tracked: a hazard or a dispute, of its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum CaseKind {
    Hazard { kind: HazardKind },
    Dispute { kind: DisputeKind },
}

impl CaseKind {
    /// `hazard` or `dispute`: which ledger the case is in.
    pub fn ledger(self) -> Ledger {
        match self {
            CaseKind::Hazard { .. } => Ledger::Hazard,
            CaseKind::Dispute { .. } => Ledger::Dispute,
        }
    }

    /// The stable code of its kind (`fire`, `neighbours`, ...: the vocabulary's).
    pub fn kind_code(self) -> &'static str {
        use crate::vocab::Term;
        match self {
            CaseKind::Hazard { kind } => kind.code(),
            CaseKind::Dispute { kind } => kind.code(),
        }
    }

    /// What a person reads (`消防隐患`, `邻里纠纷`, ...).
    pub fn label(self) -> &'static str {
        use crate::vocab::Term;
        match self {
            CaseKind::Hazard { kind } => kind.label(),
            CaseKind::Dispute { kind } => kind.label(),
        }
    }
}

/// The two ledgers of 双台账 besides demands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ledger {
    Hazard,
    Dispute,
}

/// Where a case is in its life (the stable codes and labels are in [`crate::vocab`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum CaseState {
    /// Raised, not yet assigned.
    Open,
    /// Assigned to someone, with a deadline.
    Assigned,
    /// In hand: being mediated (调解中) or rectified (整改中).
    InHand,
    /// Settled (dispute) or rectified (hazard), waiting for its check.
    Resolved,
    /// Checked (验收): finished.
    Checked,
    /// Escalated into a demand's work order, which carries it on.
    Escalated,
}

impl CaseState {
    /// Whether the case still needs work of the grid: neither checked, resolved nor escalated.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            CaseState::Open | CaseState::Assigned | CaseState::InHand
        )
    }
}

/// A step of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum CaseAction {
    /// Assigns the case (to `assignee`, by `due`); again to reassign it or move its deadline.
    Assign,
    /// Takes it in hand: mediation or rectification begins.
    Start,
    /// Settled (dispute) or rectified (hazard): the result in the comment.
    Resolve,
    /// Checked and finished.
    Check,
    /// The check found it not done: back in hand.
    Reopen,
    /// Escalated into the work order of a demand of the household (`order`).
    Escalate,
    /// A look at it on a later visit, noted in the comment; the state does not change.
    FollowUp,
}

impl CaseAction {
    /// The state after this step from `from`; `None` when it does not follow.
    pub fn next(self, from: CaseState) -> Option<CaseState> {
        use CaseAction as A;
        use CaseState as S;
        match (self, from) {
            (A::Assign, S::Open | S::Assigned | S::InHand) => Some(S::Assigned),
            (A::Start, S::Open | S::Assigned) => Some(S::InHand),
            (A::Resolve, S::Open | S::Assigned | S::InHand) => Some(S::Resolved),
            (A::Check, S::Resolved) => Some(S::Checked),
            (A::Reopen, S::Resolved) => Some(S::InHand),
            (A::Escalate, S::Open | S::Assigned | S::InHand) => Some(S::Escalated),
            (A::FollowUp, s) if s.is_open() => Some(s),
            _ => None,
        }
    }

    /// Whether `party` may take this step. Assigning, checking and reopening are the
    /// supervisors' (the one who checks is not the one who did the work); the grid's workers
    /// and heads take cases in hand, resolve them, follow them up and escalate them.
    pub fn may(self, party: &Party) -> bool {
        use CaseAction as A;
        match self {
            A::Assign | A::Check | A::Reopen => party.supervisor,
            A::Start | A::Resolve | A::Escalate | A::FollowUp => {
                party.grid_member || party.supervisor
            }
        }
    }
}

/// One entry of a case's append-only history.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct CaseStep {
    pub action: CaseAction,
    pub by: UserId,
    pub device: DeviceId,
    pub at_ms: i64,
    /// What was done or found; the result of a resolve, the reason of a reopen.
    pub comment: String,
    /// An assignment's assignee.
    pub assignee: Option<UserId>,
    /// An assignment's deadline (the last day the case may stay open).
    pub due: Option<Day>,
    /// An escalation's demand (a demand of the same household).
    pub order: Option<DemandId>,
    /// The visit a follow-up (or any step) was taken on, if any.
    pub visit: Option<VisitId>,
}

/// A dispute or hazard followed from its finding to its end.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Case {
    pub id: CaseId,
    pub kind: CaseKind,
    /// The visit that found it, and its line in that visit's `hazards` or `disputes`.
    pub raised_on_visit: Option<VisitId>,
    pub item: Option<u32>,
    pub raised_by: UserId,
    pub device: DeviceId,
    pub raised_at_ms: i64,
    /// What it is.
    pub detail: String,
    /// A dispute's parties, a hazard's exact place (the household's is its address).
    pub parties: String,
    /// The deadline set when it was raised, if any (an assignment may set another).
    pub due: Option<Day>,
    /// Append-only: entries are only ever added at the end.
    pub history: Vec<CaseStep>,
}

/// A case's history folded: where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub state: CaseState,
    /// Who is to act: the last assignee, else who raised it.
    pub assignee: UserId,
    /// The deadline in force: the last assignment's, else the case's own.
    pub due: Option<Day>,
    /// When it was last resolved, checked, escalated (ms), if it was.
    pub resolved_ms: Option<i64>,
    pub checked_ms: Option<i64>,
    pub escalated_ms: Option<i64>,
    /// The demand it was escalated into.
    pub order: Option<DemandId>,
    /// The time of its last step (or of its raising).
    pub last_ms: i64,
}

impl Standing {
    /// Still open on `day` (the end of that day, China time) past its deadline.
    pub fn overdue_on(&self, day: Day) -> bool {
        self.state.is_open() && self.due.is_some_and(|d| d < day)
    }
}

/// Why a step cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("a case cannot take step {action:?} while {state:?}")]
    NotFromHere {
        action: CaseAction,
        state: CaseState,
    },
    #[error("step {0:?} needs {1}")]
    Missing(CaseAction, &'static str),
    #[error("the user may not take step {0:?} on this case")]
    NotPermitted(CaseAction),
    #[error("the history was rewritten, or new steps were not appended after the latest")]
    Stale,
    #[error("step {0:?} is dated before the step before it (or before the case was raised)")]
    BeforePrevious(CaseAction),
    #[error("a step or the case is dated after the server received it")]
    InTheFuture,
    #[error("a case holds at most {MAX_CASE_STEPS} steps")]
    TooMany,
}

/// Folds the steps of `case` up to `until_ms` (inclusive; `i64::MAX`: all of them). Steps that
/// do not follow are skipped (the server never stores one: [`check_steps`]).
pub fn standing_until(case: &Case, until_ms: i64) -> Standing {
    let mut s = Standing {
        state: CaseState::Open,
        assignee: case.raised_by,
        due: case.due,
        resolved_ms: None,
        checked_ms: None,
        escalated_ms: None,
        order: None,
        last_ms: case.raised_at_ms,
    };
    for e in case.history.iter().take_while(|e| e.at_ms <= until_ms) {
        let _ = fold(&mut s, e);
    }
    s
}

/// Folds the whole history of `case`.
pub fn standing(case: &Case) -> Standing {
    standing_until(case, i64::MAX)
}

/// Takes the step `e` on `s`, checking that it follows and carries its data.
fn step(s: &mut Standing, e: &CaseStep) -> Result<(), StepError> {
    let missing = |what| Err(StepError::Missing(e.action, what));
    match e.action {
        CaseAction::Assign if e.assignee.is_none() => return missing("an assignee"),
        CaseAction::Escalate if e.order.is_none() => return missing("the demand it becomes"),
        CaseAction::Resolve if e.comment.trim().is_empty() => return missing("the result"),
        CaseAction::Reopen if e.comment.trim().is_empty() => return missing("the reason"),
        _ => {}
    }
    fold(s, e)
}

/// Takes the step `e` on `s` if it follows from the state (its data was checked when it was
/// stored: [`check_steps`]); the read model folds the steps it keeps without their comments.
fn fold(s: &mut Standing, e: &CaseStep) -> Result<(), StepError> {
    let to = e.action.next(s.state).ok_or(StepError::NotFromHere {
        action: e.action,
        state: s.state,
    })?;
    match e.action {
        CaseAction::Assign => {
            if let Some(assignee) = e.assignee {
                s.assignee = assignee;
            }
            if e.due.is_some() {
                s.due = e.due;
            }
        }
        CaseAction::Escalate => {
            s.order = e.order;
            s.escalated_ms = Some(e.at_ms);
        }
        CaseAction::Resolve => s.resolved_ms = Some(e.at_ms),
        CaseAction::Reopen => s.resolved_ms = None,
        CaseAction::Check => s.checked_ms = Some(e.at_ms),
        CaseAction::Start | CaseAction::FollowUp => {}
    }
    s.state = to;
    s.last_ms = e.at_ms;
    Ok(())
}

/// Checks the steps an upload appended to a case's history, for the server (and for the phone
/// before it commits a step, with its own clock as `arrival_ms`): the history held before
/// (`before`, `None` for a new case) must be a prefix of the one after; every new step must be
/// the uploader's (`by`), follow from the state before it, carry its data, be one `party` may
/// take, and be dated neither before the step before it (nor before the case was raised) nor
/// more than [`CLOCK_SKEW_MS`] after `arrival_ms`. A new step dated before the last step the
/// server held is [`StepError::Stale`]: it was made without seeing it.
pub fn check_steps(
    before: Option<&Case>,
    after: &Case,
    by: UserId,
    party: &Party,
    arrival_ms: i64,
) -> Result<(), StepError> {
    let held = before.map_or(&[][..], |c| c.history.as_slice());
    if after.history.len() < held.len() || after.history[..held.len()] != *held {
        return Err(StepError::Stale);
    }
    if after.history.len() > MAX_CASE_STEPS {
        return Err(StepError::TooMany);
    }
    let latest = arrival_ms.saturating_add(CLOCK_SKEW_MS);
    if before.is_none() && after.raised_at_ms > latest {
        return Err(StepError::InTheFuture);
    }
    let mut s = standing(&Case {
        history: held.to_vec(),
        ..after.clone()
    });
    let mut previous_ms = held.last().map_or(after.raised_at_ms, |e| e.at_ms);
    let mut previous_is_held = !held.is_empty();
    for e in &after.history[held.len()..] {
        if e.by != by || !e.action.may(party) {
            return Err(StepError::NotPermitted(e.action));
        }
        if e.at_ms < previous_ms {
            return Err(if previous_is_held {
                StepError::Stale
            } else {
                StepError::BeforePrevious(e.action)
            });
        }
        if e.at_ms > latest {
            return Err(StepError::InTheFuture);
        }
        previous_ms = e.at_ms;
        previous_is_held = false;
        step(&mut s, e).map_err(|err| match err {
            // Made on a case that moved on meanwhile (another took a step first).
            StepError::NotFromHere { .. } if !held.is_empty() => StepError::Stale,
            other => other,
        })?;
    }
    Ok(())
}

/// A step a user takes on a case, with its data.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NewStep {
    pub comment: String,
    pub assignee: Option<UserId>,
    pub due: Option<Day>,
    pub order: Option<DemandId>,
    pub visit: Option<VisitId>,
}

impl NewStep {
    /// The entry `by` (on `device`) appends at `at_ms`, checked against the case's history
    /// (the rules of [`check_steps`] but the role, which the policy judges).
    pub fn entry(
        &self,
        case: &Case,
        action: CaseAction,
        by: UserId,
        device: DeviceId,
        at_ms: i64,
    ) -> Result<CaseStep, StepError> {
        let e = CaseStep {
            action,
            by,
            device,
            at_ms,
            comment: self.comment.clone(),
            assignee: self.assignee,
            due: self.due,
            order: self.order,
            visit: self.visit,
        };
        let mut s = standing(case);
        if at_ms < s.last_ms {
            return Err(StepError::BeforePrevious(action));
        }
        if case.history.len() >= MAX_CASE_STEPS {
            return Err(StepError::TooMany);
        }
        step(&mut s, &e)?;
        Ok(e)
    }
}

/// The demand an escalation of `case` becomes (SYNC-v1 §13.10): a new demand of the same
/// household, raised by `by` at `at_ms` with the case's detail as its text, written in the
/// change of the escalation step that names it.
pub fn escalation_demand(
    case: &Case,
    by: UserId,
    at_ms: i64,
    source: crate::schema::DemandSource,
    category: crate::schema::NeedCategory,
    on_visit: Option<VisitId>,
) -> crate::schema::Demand {
    let text = format!("【{}上报】{}", case.kind.label(), case.detail);
    crate::schema::Demand {
        id: DemandId::new(),
        raised_on_visit: on_visit,
        raised_by: by,
        raised_at_ms: at_ms,
        category,
        text: text.chars().take(crate::validate::MAX_TEXT_CHARS).collect(),
        urgency: crate::schema::Urgency::Normal,
        status: crate::schema::DemandStatus::Raised,
        history: vec![],
        first_responsible: None,
        source: Some(source),
        external_ref: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> Case {
        Case {
            id: CaseId::new(),
            kind: CaseKind::Hazard {
                kind: HazardKind::Fire,
            },
            raised_on_visit: None,
            item: None,
            raised_by: UserId::new(),
            device: DeviceId::new(),
            raised_at_ms: 1_000,
            detail: "楼道堆放杂物".into(),
            parties: String::new(),
            due: None,
            history: vec![],
        }
    }

    fn worker() -> Party {
        Party {
            grid_member: true,
            ..Party::default()
        }
    }

    fn supervisor() -> Party {
        Party {
            supervisor: true,
            ..Party::default()
        }
    }

    fn add(c: &mut Case, action: CaseAction, by: UserId, at_ms: i64, s: NewStep) {
        let e = s.entry(c, action, by, DeviceId::new(), at_ms).unwrap();
        c.history.push(e);
    }

    #[test]
    fn a_hazard_goes_from_found_to_checked() {
        let mut c = case();
        let (w, boss) = (c.raised_by, UserId::new());
        let due: Day = "2027-01-10".parse().unwrap();
        let before = c.clone();
        add(
            &mut c,
            CaseAction::Assign,
            boss,
            2_000,
            NewStep {
                assignee: Some(w),
                due: Some(due),
                ..NewStep::default()
            },
        );
        check_steps(Some(&before), &c, boss, &supervisor(), 2_000).unwrap();
        assert_eq!(standing(&c).state, CaseState::Assigned);
        assert_eq!(standing(&c).due, Some(due));
        assert!(standing(&c).overdue_on("2027-01-11".parse().unwrap()));
        assert!(!standing(&c).overdue_on(due));

        let before = c.clone();
        add(&mut c, CaseAction::FollowUp, w, 3_000, NewStep::default());
        let rectified = NewStep {
            comment: "杂物已清理".into(),
            ..NewStep::default()
        };
        add(&mut c, CaseAction::Resolve, w, 4_000, rectified);
        check_steps(Some(&before), &c, w, &worker(), 4_000).unwrap();
        // The worker may not check their own work.
        let mut checked = c.clone();
        add(
            &mut checked,
            CaseAction::Check,
            w,
            5_000,
            NewStep::default(),
        );
        assert_eq!(
            check_steps(Some(&c), &checked, w, &worker(), 5_000),
            Err(StepError::NotPermitted(CaseAction::Check))
        );
        let mut checked = c.clone();
        add(
            &mut checked,
            CaseAction::Check,
            boss,
            5_000,
            NewStep::default(),
        );
        check_steps(Some(&c), &checked, boss, &supervisor(), 5_000).unwrap();
        let s = standing(&checked);
        assert_eq!(s.state, CaseState::Checked);
        assert_eq!((s.resolved_ms, s.checked_ms), (Some(4_000), Some(5_000)));
        // As of before the resolve, it was assigned and open.
        assert_eq!(standing_until(&checked, 3_500).state, CaseState::Assigned);
    }

    #[test]
    fn steps_that_do_not_follow_or_rewrite_history_are_refused() {
        let mut c = case();
        let w = c.raised_by;
        // A check before anything was resolved.
        assert!(matches!(
            NewStep::default().entry(&c, CaseAction::Check, w, DeviceId::new(), 2_000),
            Err(StepError::NotFromHere { .. })
        ));
        // A resolve says what was done.
        assert_eq!(
            NewStep::default().entry(&c, CaseAction::Resolve, w, DeviceId::new(), 2_000),
            Err(StepError::Missing(CaseAction::Resolve, "the result"))
        );
        // An escalation names its demand.
        assert!(matches!(
            NewStep::default().entry(&c, CaseAction::Escalate, w, DeviceId::new(), 2_000),
            Err(StepError::Missing(CaseAction::Escalate, _))
        ));
        add(&mut c, CaseAction::Start, w, 2_000, NewStep::default());
        let held = c.clone();
        // Dropping a held step.
        let mut rewritten = held.clone();
        rewritten.history.clear();
        assert_eq!(
            check_steps(Some(&held), &rewritten, w, &worker(), 3_000),
            Err(StepError::Stale)
        );
        // A step made before one the server holds: made without seeing it.
        let mut late = held.clone();
        late.history.push(CaseStep {
            at_ms: 1_500,
            ..held.history[0].clone()
        });
        assert_eq!(
            check_steps(Some(&held), &late, w, &worker(), 3_000),
            Err(StepError::Stale)
        );
        // Someone else's step.
        let mut forged = held.clone();
        add(
            &mut forged,
            CaseAction::FollowUp,
            UserId::new(),
            3_000,
            NewStep::default(),
        );
        assert_eq!(
            check_steps(Some(&held), &forged, w, &worker(), 3_000),
            Err(StepError::NotPermitted(CaseAction::FollowUp))
        );
        // Dated in the future.
        let mut future = held.clone();
        add(
            &mut future,
            CaseAction::FollowUp,
            w,
            3_000 + CLOCK_SKEW_MS + 1,
            NewStep::default(),
        );
        assert_eq!(
            check_steps(Some(&held), &future, w, &worker(), 3_000),
            Err(StepError::InTheFuture)
        );
    }

    #[test]
    fn an_escalated_or_checked_case_takes_no_more_steps() {
        let mut c = case();
        let w = c.raised_by;
        add(
            &mut c,
            CaseAction::Escalate,
            w,
            2_000,
            NewStep {
                order: Some(DemandId::new()),
                ..NewStep::default()
            },
        );
        let s = standing(&c);
        assert_eq!(s.state, CaseState::Escalated);
        assert!(!s.state.is_open() && s.escalated_ms == Some(2_000) && s.order.is_some());
        for a in [CaseAction::FollowUp, CaseAction::Resolve, CaseAction::Start] {
            assert!(
                NewStep::default()
                    .entry(&c, a, w, DeviceId::new(), 3_000)
                    .is_err()
            );
        }
        // A check that finds the hazard still there puts it back in hand.
        let mut c = case();
        let boss = UserId::new();
        let done = NewStep {
            comment: "已整改".into(),
            ..NewStep::default()
        };
        add(&mut c, CaseAction::Resolve, w, 2_000, done);
        let reopen = NewStep {
            comment: "复查仍有隐患".into(),
            ..NewStep::default()
        };
        add(&mut c, CaseAction::Reopen, boss, 3_000, reopen);
        assert_eq!(standing(&c).state, CaseState::InHand);
        assert_eq!(standing(&c).resolved_ms, None);
    }
}
