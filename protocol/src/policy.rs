//! Who may make a change, as pure functions both ends run: the server on every change it is
//! sent, the phone before it commits an edit (SYNC-v1 §6.4), so an edit the server would
//! refuse is refused at once, naming what was refused, instead of dying at sync.
//!
//! 1. **Identity** ([`check_author`]): the change's Automerge actor begins with the uploading
//!    device's id ([`crate::doc::actor_for`]) and its author message names that device and
//!    its user. A forged or borrowed actor id is `not_your_device`.
//! 2. **Scope** ([`check_effect`]): the household's grid in the version the change was made
//!    on is one the user may write — now, or at the time the change was made (work done on a
//!    visit day is accepted when it arrives after the worker moved on, and a visit made
//!    offline before the household moved to another grid travels with it). A move is judged
//!    by the grid it leaves and the grid it enters. Else `out_of_scope`.
//! 3. **Field rules**: only a supervisor of the grid may move a household to another grid,
//!    mark it merged, delete an entry (member, visit), touch a visit whose worker is
//!    someone else, or write a review (signed by themselves); a new visit must name its author
//!    as the worker. A demand is never deleted, by anyone (it is closed, or withdrawn by the
//!    command centre). A review is never of the reviewer's own visit, and once written it is
//!    never changed (a later decision is a new review). Else `not_allowed`.
//! 4. **Work orders** ([`crate::workorder::check_steps`]): a demand's history only grows at
//!    its end, each new step is the uploader's, follows from the order's state, is one their
//!    role may take (a team member, who reads no grid, may write only steps of orders
//!    dispatched to their team; only the command centre withdraws), and is dated neither
//!    before the step before it nor more than [`crate::workorder::CLOCK_SKEW_MS`] after the
//!    server received it. A new demand's id is held by no other household (the server's
//!    [`DemandRegister`]), and only a change the server built itself (the hotline import)
//!    gives a demand the `hotline` source, a hotline number (`external_ref`) or a
//!    first-responsible cadre. Else `not_allowed`, or `stale_order` when the step was made
//!    without seeing the order's latest steps.
//!
//! What the user may do is a [`Rights`]: the server computes it from the user's dated
//! assignments; the phone receives it in the sync response (`u`, SYNC-v1 §5.2) and keeps it.

use std::collections::BTreeSet;

use automerge::{Change, ChangeHash};
use serde::{Deserialize, Serialize};

use crate::{
    doc::{Author, HouseholdDoc, Touched, actor_device},
    ids::{DemandId, DeviceId, HouseholdId, UserId},
    schema::DemandSource,
    wire::RejectCode,
    workorder::{self, Deadlines, Party, StepError},
};

/// What a user does at an org unit (serde names are the stable codes: `grid_worker`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 网格员: visits the households of a grid.
    GridWorker,
    /// 网格长: leads a grid.
    GridHead,
    /// A village or community supervisor (村/社区书记).
    VillageSupervisor,
    /// A town supervisor (乡镇干部).
    TownSupervisor,
    /// The county or town command centre (指挥中心).
    CommandCentre,
    /// Administers the org, users and devices; reads no resident's record.
    Admin,
    /// Works in a department or service team: accepts, bounces and handles the work orders
    /// dispatched to it (reads those orders, not the grids' records).
    TeamMember,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::GridWorker,
        Role::GridHead,
        Role::VillageSupervisor,
        Role::TownSupervisor,
        Role::CommandCentre,
        Role::Admin,
        Role::TeamMember,
    ];

    /// The role's stable code (its serde name), from the vocabulary's table.
    pub fn as_str(self) -> &'static str {
        crate::vocab::Term::code(self)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Supervisors review and correct records below their unit: they may move a household to
    /// another grid, mark it merged, delete entries and correct others' visits.
    pub fn is_supervisor(self) -> bool {
        matches!(
            self,
            Role::VillageSupervisor | Role::TownSupervisor | Role::CommandCentre
        )
    }

    /// Whether the role sees residents' records at all.
    pub fn reads_records(self) -> bool {
        self != Role::Admin
    }
}

/// One grid a user may write, during a period, with the role that grants it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "g")]
    pub grid: String,
    #[serde(rename = "r")]
    pub role: Role,
    /// From when (ms since the epoch).
    #[serde(rename = "f")]
    pub from_ms: i64,
    /// Until when, exclusive (`None`: open).
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

impl Grant {
    pub fn covers(&self, t: i64) -> bool {
        self.from_ms <= t && self.until_ms.is_none_or(|u| t < u)
    }
}

/// Whether one of `grants` on `grid` with a role `role` accepts covers `at_ms` (now) or, for a
/// change made earlier, `change_ms`.
pub fn held(
    grants: &[Grant],
    at_ms: i64,
    grid: &str,
    change_ms: i64,
    role: impl Fn(Role) -> bool,
) -> bool {
    grants
        .iter()
        .filter(|g| g.grid == grid && role(g.role))
        .any(|g| g.covers(at_ms) || g.covers(change_ms.min(at_ms)))
}

/// Whether `grants` give a role that records visits on `grid` in the cycle of `visit_day`
/// ([`Rights::held_for_cycle`]).
pub fn held_for_cycle(grants: &[Grant], grid: &str, visit_day: crate::calendar::Day) -> bool {
    use crate::{calendar::cycle_of, workorder::day_of};
    grants
        .iter()
        .filter(|g| g.grid == grid && g.role.reads_records())
        .any(|g| {
            cycle_of(day_of(g.from_ms)) <= visit_day
                && g.until_ms.is_none_or(|u| day_of(u) >= visit_day)
        })
}

/// What `grants` and `teams` make a user to the work orders of `grid`'s households, for a
/// step made at `change_ms`.
pub fn party_of(
    grants: &[Grant],
    teams: &BTreeSet<String>,
    at_ms: i64,
    grid: &str,
    change_ms: i64,
) -> Party {
    let holds = |role: fn(Role) -> bool| held(grants, at_ms, grid, change_ms, role);
    Party {
        grid_member: holds(|r| matches!(r, Role::GridWorker | Role::GridHead)),
        supervisor: holds(Role::is_supervisor),
        dispatcher: holds(|r| matches!(r, Role::CommandCentre | Role::TownSupervisor)),
        command_centre: holds(|r| r == Role::CommandCentre),
        teams: teams.clone(),
    }
}

/// What a user may do: every grant, past and present (a change made while the user held a
/// grid is accepted when it arrives after the user moved on), and the teams they work in
/// now. The phone receives it as the sync response's `u` (SYNC-v1 §5.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    #[serde(rename = "g", default)]
    pub grants: Vec<Grant>,
    #[serde(rename = "t", default, skip_serializing_if = "BTreeSet::is_empty")]
    pub teams: BTreeSet<String>,
    /// When they were computed (ms since the epoch; on the server, when the request arrived).
    /// Not part of the digest ([`crate::wire::rights_digest`]).
    #[serde(rename = "n", default, skip_serializing_if = "is_zero")]
    pub at_ms: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Rights {
    /// Whether the user held `grid` in a role that records visits in the cycle of
    /// `visit_day`: assigned on or before it (from any moment of the cycle it falls in) and
    /// not ended before it began (SYNC-v1 §13.2).
    pub fn held_for_cycle(&self, grid: &str, visit_day: crate::calendar::Day) -> bool {
        held_for_cycle(&self.grants, grid, visit_day)
    }

    /// Whether any role the user holds now supervises grids.
    pub fn is_supervisor_now(&self) -> bool {
        self.grants.iter().any(|g| {
            g.role.is_supervisor()
                && g.from_ms <= self.at_ms
                && g.until_ms.is_none_or(|u| self.at_ms < u)
        })
    }

    /// Whether the user may write a household of `grid` with a change made at `change_ms`:
    /// a grant covers the grid now, or covered it at the time the change claims.
    pub fn may_write(&self, grid: &str, change_ms: i64) -> bool {
        held(
            &self.grants,
            self.at_ms,
            grid,
            change_ms,
            Role::reads_records,
        )
    }

    /// Whether the user supervises `grid` (now, or at `change_ms`).
    pub fn supervises(&self, grid: &str, change_ms: i64) -> bool {
        held(
            &self.grants,
            self.at_ms,
            grid,
            change_ms,
            Role::is_supervisor,
        )
    }

    /// What the user is to the work orders of `grid`'s households, for a step made at
    /// `change_ms`.
    pub fn party(&self, grid: &str, change_ms: i64) -> Party {
        party_of(&self.grants, &self.teams, self.at_ms, grid, change_ms)
    }
}

/// The server's register of demand ids (a new demand's id must be free in it).
pub trait DemandRegister {
    /// Claims `demand` for `household`: true if the id was free or is this household's
    /// already, false if another household holds it.
    fn claim(&self, demand: DemandId, household: HouseholdId) -> bool;
}

/// Who made a batch of changes, and what they may do.
#[derive(Clone, Copy)]
pub struct Actor<'a> {
    pub user: UserId,
    pub rights: &'a Rights,
    /// The change was built by the server itself for this user (the JSON API and pages), not
    /// uploaded by a device: only such a change may carry what the server vouches for (a
    /// hotline order's source, number and first-responsible cadre). Always false on a phone.
    pub server_built: bool,
    /// The register a new demand's id must be free in (`None` on a phone, and for tools that
    /// load trusted data).
    pub demand_ids: Option<&'a dyn DemandRegister>,
}

impl std::fmt::Debug for Actor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("user", &self.user)
            .field("server_built", &self.server_built)
            .finish_non_exhaustive()
    }
}

/// What a refused change did that its author may not do: a stable code (its serde name) the
/// app shows the worker a message for. Never a resident's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The household: its grid is not one the user may write (`out_of_scope`).
    Household,
    /// Moving the household to another grid.
    Grid,
    /// Marking the household merged.
    Status,
    /// Deleting or rewriting a member.
    Members,
    /// Deleting a visit, or touching one whose worker is someone else.
    Visits,
    /// Raising or rewriting a demand, or deleting one.
    Demands,
    /// A step of a demand's work order (the role may not take it, or it does not follow).
    DemandStep,
    /// Writing or rewriting a review.
    Reviews,
    /// Attaching a photo, rewriting another's caption or removing one.
    Photos,
    /// Raising a tracked dispute or hazard as someone else, rewriting or deleting one.
    Cases,
    /// A step of a case (the role may not take it, or it does not follow).
    CaseStep,
    /// An event or a work log of a grid the user does not hold ([`crate::journal`]).
    Journal,
}

impl Subject {
    /// The stable code (`household`, `demand_step`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Subject::Household => "household",
            Subject::Grid => "grid",
            Subject::Status => "status",
            Subject::Members => "members",
            Subject::Visits => "visits",
            Subject::Demands => "demands",
            Subject::DemandStep => "demand_step",
            Subject::Reviews => "reviews",
            Subject::Photos => "photos",
            Subject::Cases => "cases",
            Subject::CaseStep => "case_step",
            Subject::Journal => "journal",
        }
    }

    fn of_collection(collection: &str) -> Subject {
        match collection {
            "members" => Subject::Members,
            "visits" => Subject::Visits,
            "demands" => Subject::Demands,
            "reviews" => Subject::Reviews,
            "photos" => Subject::Photos,
            "cases" => Subject::Cases,
            _ => Subject::Household,
        }
    }
}

/// A change the rules refuse: the reject code the server answers, and what was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} refused: {}", .what.code(), .code.name())]
pub struct Refusal {
    pub code: RejectCode,
    pub what: Subject,
}

fn refuse(code: RejectCode, what: Subject) -> Refusal {
    Refusal { code, what }
}

/// The change is made by `device` and its `user`.
pub fn check_author(user: UserId, device: DeviceId, change: &Change) -> Result<(), RejectCode> {
    if actor_device(change.actor_id()) != Some(device) {
        return Err(RejectCode::NotYourDevice);
    }
    let author = change.message().and_then(Author::from_message);
    match author {
        Some(a) if a.device == device && a.user == user => Ok(()),
        _ => Err(RejectCode::NotYourDevice),
    }
}

/// One change of a batch as the rules judge it: when it was made, and the household's grid
/// in the version it was made on (its dependencies; `None` for the change that creates the
/// household).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub at_ms: i64,
    pub seen_grid: Option<String>,
}

/// What the changes did to `doc` (applied on top of `before`; empty for a new household) is
/// within the actor's rights.
///
/// A change is judged by what its author could see and edit when they made it: the grid of
/// the version it was made on (SYNC-v1 §6.4). A worker's visit made offline on a household
/// of their grid is theirs to make even when a supervisor moved the household to another grid
/// meanwhile: it is accepted and travels with the household. Moving a household is judged by
/// the grid it leaves as the server holds it and the grid it enters.
pub fn check_effect(
    p: &Actor<'_>,
    doc: &HouseholdDoc,
    before: &[ChangeHash],
    touched: &Touched,
    made: &[Made],
) -> Result<(), Refusal> {
    let rights = p.rights;
    let prior = (!before.is_empty()).then_some(before);
    let grid_before = prior.and_then(|h| doc.root_text("grid", Some(h)));
    let grid_after = doc.root_text("grid", None).unwrap_or_default();
    let times: Vec<i64> = made.iter().map(|m| m.at_ms).collect();
    let writable = |grid: &str| times.iter().all(|t| rights.may_write(grid, *t));
    let supervised = |grid: &str| times.iter().all(|t| rights.supervises(grid, *t));
    // Each change in the grid it was made in (the household's creation: the grid it creates).
    let seen = |m: &Made| m.seen_grid.clone().unwrap_or_else(|| grid_after.clone());
    let writable_seen = made.iter().all(|m| rights.may_write(&seen(m), m.at_ms));
    let supervised_seen = made.iter().all(|m| rights.supervises(&seen(m), m.at_ms));
    let moves = grid_before.as_deref().is_some_and(|g| g != grid_after);
    // The grid whose rules the batch is judged by: where its changes were made, when they
    // agree (a batch from one phone does), else where the household is.
    let judged = match made.first().map(seen) {
        Some(g) if !moves && made.iter().all(|m| seen(m) == g) => g,
        _ => grid_after.clone(),
    };
    // A team member touches nothing but the steps of orders dispatched to their team.
    let demands_only = touched.facts.is_empty()
        && touched.deleted.is_empty()
        && !touched.entries.is_empty()
        && touched.entries.iter().all(|(c, _)| c == "demands");
    let team_work = demands_only && !rights.teams.is_empty();
    let in_scope = if moves {
        grid_before.as_deref().is_some_and(writable) && writable(&grid_after) && writable_seen
    } else {
        writable_seen
    };
    if !in_scope && !team_work {
        let what = if moves {
            Subject::Grid
        } else {
            Subject::Household
        };
        return Err(refuse(RejectCode::OutOfScope, what));
    }
    check_demands(p, doc, prior, touched, &times, &judged)?;
    check_cases(p, doc, prior, touched, &times, &judged)?;
    // What needs a supervisor of the grid, if anything (the first such thing found).
    let mut needs_supervisor: Option<Subject> = None;
    if moves {
        // Moving a household between grids: a supervisor of both.
        if !grid_before.as_deref().is_some_and(supervised) || !supervised(&grid_after) {
            return Err(refuse(RejectCode::NotAllowed, Subject::Grid));
        }
    }
    if touched.facts.contains("status")
        && doc.root_text("status", None).as_deref() == Some("Merged")
        && prior
            .and_then(|h| doc.root_text("status", Some(h)))
            .as_deref()
            != Some("Merged")
    {
        needs_supervisor = Some(Subject::Status);
    }
    if let Some((collection, _)) = touched.deleted.iter().next() {
        // A demand is closed or withdrawn, never deleted: its history is the order's record.
        if touched.deleted.iter().any(|(c, _)| c == "demands") {
            return Err(refuse(RejectCode::NotAllowed, Subject::Demands));
        }
        // Nor is a case: it is checked, or escalated.
        if touched.deleted.iter().any(|(c, _)| c == "cases") {
            return Err(refuse(RejectCode::NotAllowed, Subject::Cases));
        }
        needs_supervisor.get_or_insert(Subject::of_collection(collection));
    }
    for (collection, key) in &touched.entries {
        let field = match collection.as_str() {
            "visits" => "worker",
            "photos" => "by",
            "reviews" => {
                // Reviews are supervisors' only, signed by their reviewer, never of the
                // reviewer's own visit, and never rewritten: a new decision is a new review.
                let refused = Err(refuse(RejectCode::NotAllowed, Subject::Reviews));
                needs_supervisor.get_or_insert(Subject::Reviews);
                if doc.entry_user("reviews", key, "reviewer", None) != Some(p.user) {
                    return refused;
                }
                let existed = prior.is_some_and(|h| {
                    doc.entry_user("reviews", key, "reviewer", Some(h))
                        .is_some()
                });
                if existed {
                    return refused;
                }
                let visit = doc.entry_uuid("reviews", key, "visit", None);
                let own = visit.is_some_and(|v| {
                    doc.visit_worker(&v.to_string(), None) == Some(p.user)
                        || prior.is_some_and(|h| {
                            doc.visit_worker(&v.to_string(), Some(h)) == Some(p.user)
                        })
                });
                if own {
                    return refused;
                }
                "reviewer"
            }
            _ => continue,
        };
        let earlier = prior.and_then(|h| doc.entry_user(collection, key, field, Some(h)));
        let now = doc.entry_user(collection, key, field, None);
        if earlier.is_some_and(|w| w != p.user) || now.is_some_and(|w| w != p.user) {
            needs_supervisor.get_or_insert(Subject::of_collection(collection));
        }
    }
    match needs_supervisor {
        Some(what) if !supervised_seen => Err(refuse(RejectCode::NotAllowed, what)),
        _ => Ok(()),
    }
}

/// Every touched demand's new steps are the actor's to take (see the module docs, 4).
fn check_demands(
    p: &Actor<'_>,
    doc: &HouseholdDoc,
    prior: Option<&[ChangeHash]>,
    touched: &Touched,
    times: &[i64],
    grid: &str,
) -> Result<(), Refusal> {
    if !touched.entries.iter().any(|(c, _)| c == "demands") {
        return Ok(());
    }
    let not_allowed = |what| refuse(RejectCode::NotAllowed, what);
    let schema = refuse(RejectCode::SchemaViolation, Subject::Demands);
    let at = times.iter().copied().min().unwrap_or(p.rights.at_ms);
    let party = p.rights.party(grid, at);
    let rules = Deadlines::default();
    // When the server received the change: its rights are computed as the request arrives.
    let arrival_ms = p.rights.at_ms;
    let household = doc.household_id();
    for (_, key) in touched.entries.iter().filter(|(c, _)| c == "demands") {
        let before = match prior {
            Some(h) => doc.demand_at(key, Some(h)).map_err(|_| schema)?,
            None => None,
        };
        let Some(after) = doc.demand_at(key, None).map_err(|_| schema)? else {
            continue; // deleted: the supervisor rule covers it
        };
        if before.is_none() {
            // A new demand: raised by the uploader, on the grid's side or by a dispatcher,
            // with what only the server vouches for set only by the server, under an id no
            // other household holds.
            let raises = party.grid_member || party.supervisor || party.dispatcher;
            if !raises || after.raised_by != p.user {
                return Err(not_allowed(Subject::Demands));
            }
            let vouched = matches!(
                after.source,
                Some(DemandSource::Hotline | DemandSource::Card)
            ) || after.external_ref.is_some()
                || after.first_responsible.is_some();
            if vouched && !p.server_built {
                return Err(not_allowed(Subject::Demands));
            }
            if let (Some(ids), Some(h)) = (p.demand_ids, household)
                && !ids.claim(after.id, h)
            {
                return Err(not_allowed(Subject::Demands));
            }
        } else if let Some(b) = &before {
            // What the demand says stays as raised; only its history grows.
            let same = b.id == after.id
                && b.raised_by == after.raised_by
                && b.raised_at_ms == after.raised_at_ms
                && b.raised_on_visit == after.raised_on_visit
                && b.first_responsible == after.first_responsible
                && b.source == after.source
                && b.external_ref == after.external_ref;
            let edits_text =
                b.text != after.text || b.category != after.category || b.urgency != after.urgency;
            if !same || (edits_text && !party.supervisor) {
                return Err(not_allowed(Subject::Demands));
            }
        }
        workorder::check_steps(before.as_ref(), &after, p.user, &party, &rules, arrival_ms)
            .map_err(|e| match e {
                StepError::Stale => refuse(RejectCode::StaleOrder, Subject::DemandStep),
                _ => not_allowed(Subject::DemandStep),
            })?;
    }
    Ok(())
}

/// Every touched case is the actor's to raise and its new steps theirs to take (SYNC-v1
/// §13.10): a new case is raised by the uploader, of the grid's side; what a case says stays
/// as raised; its history only grows at its end, by [`crate::ledger::check_steps`].
fn check_cases(
    p: &Actor<'_>,
    doc: &HouseholdDoc,
    prior: Option<&[ChangeHash]>,
    touched: &Touched,
    times: &[i64],
    grid: &str,
) -> Result<(), Refusal> {
    use crate::ledger::StepError;
    if !touched.entries.iter().any(|(c, _)| c == "cases") {
        return Ok(());
    }
    let not_allowed = |what| refuse(RejectCode::NotAllowed, what);
    let schema = refuse(RejectCode::SchemaViolation, Subject::Cases);
    let at = times.iter().copied().min().unwrap_or(p.rights.at_ms);
    let party = p.rights.party(grid, at);
    let arrival_ms = p.rights.at_ms;
    for (_, key) in touched.entries.iter().filter(|(c, _)| c == "cases") {
        let before = match prior {
            Some(h) => doc.case_at(key, Some(h)).map_err(|_| schema)?,
            None => None,
        };
        let Some(after) = doc.case(key).map_err(|_| schema)? else {
            return Err(not_allowed(Subject::Cases));
        };
        match &before {
            None => {
                if !(party.grid_member || party.supervisor) || after.raised_by != p.user {
                    return Err(not_allowed(Subject::Cases));
                }
            }
            Some(b) => {
                let same = b.id == after.id
                    && b.kind == after.kind
                    && b.raised_on_visit == after.raised_on_visit
                    && b.item == after.item
                    && b.raised_by == after.raised_by
                    && b.device == after.device
                    && b.raised_at_ms == after.raised_at_ms
                    && b.detail == after.detail
                    && b.parties == after.parties
                    && b.due == after.due;
                if !same {
                    return Err(not_allowed(Subject::Cases));
                }
            }
        }
        crate::ledger::check_steps(before.as_ref(), &after, p.user, &party, arrival_ms).map_err(
            |e| match e {
                StepError::Stale => refuse(RejectCode::StaleOrder, Subject::CaseStep),
                _ => not_allowed(Subject::CaseStep),
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use autosurgeon::Text;

    use super::*;
    use crate::{
        calendar::Day,
        ids::{GridId, VisitId},
        schema::VisitOutcome,
        schema::{Demand, DemandStatus, Household, NeedCategory, Satisfaction, Urgency, Visit},
        workorder::{DemandAction, NewStep},
    };

    /// 2026-11-15, 18:00 in China: a visit day.
    const NOW: i64 = 1_794_736_800_000;

    fn author() -> Author {
        Author {
            user: UserId::new(),
            device: DeviceId::new(),
        }
    }

    fn rights(grants: &[(&str, Role)]) -> Rights {
        Rights {
            grants: grants
                .iter()
                .map(|(g, r)| Grant {
                    grid: (*g).into(),
                    role: *r,
                    from_ms: 0,
                    until_ms: None,
                })
                .collect(),
            teams: BTreeSet::new(),
            at_ms: NOW,
        }
    }

    /// What the rules say of the change(s) made on `doc` since `before`, by `user`.
    fn judge(
        rights: &Rights,
        user: UserId,
        doc: &mut HouseholdDoc,
        before: &[ChangeHash],
    ) -> Result<(), Refusal> {
        let id = doc.household_id().expect("a household");
        let touched = doc.validate_since(before, id).expect("valid");
        let made = Made {
            at_ms: NOW,
            seen_grid: (!before.is_empty())
                .then(|| doc.root_text("grid", Some(before)))
                .flatten(),
        };
        let actor = Actor {
            user,
            rights,
            server_built: false,
            demand_ids: None,
        };
        check_effect(&actor, doc, before, &touched, &[made])
    }

    fn household(grid: &str, by: &Author) -> HouseholdDoc {
        let h = Household::new(HouseholdId::new(), GridId::new(grid), "东村", "3号");
        HouseholdDoc::create(&h, by, NOW).expect("created")
    }

    fn visit(by: &Author) -> Visit {
        Visit {
            id: VisitId::new(),
            visit_day: Day::ymd(2026, 11, 15).expect("day"),
            worker: by.user,
            device: by.device,
            started_at_ms: NOW - 3_600_000,
            ended_at_ms: Some(NOW - 3_000_000),
            gps: None,
            outcome: VisitOutcome::Met,
            people_met: vec![],
            needs: vec![],
            disputes: vec![],
            hazards: vec![],
            publicity: vec![],
            note: Text::with_value("走访"),
            demands_raised: vec![],
        }
    }

    fn not_allowed(what: Subject) -> Result<(), Refusal> {
        Err(Refusal {
            code: RejectCode::NotAllowed,
            what,
        })
    }

    #[test]
    fn a_household_is_created_only_in_a_grid_its_user_may_write() {
        let w = author();
        let mine = rights(&[("g1", Role::GridWorker)]);
        assert_eq!(judge(&mine, w.user, &mut household("g1", &w), &[]), Ok(()));
        assert_eq!(
            judge(&mine, w.user, &mut household("g2", &w), &[]),
            Err(Refusal {
                code: RejectCode::OutOfScope,
                what: Subject::Household
            })
        );
        // An administrator reads no records, so writes none.
        let admin = rights(&[("g1", Role::Admin)]);
        assert!(judge(&admin, w.user, &mut household("g1", &w), &[]).is_err());
    }

    #[test]
    fn a_hazard_found_on_a_visit_is_followed_by_the_grid_and_checked_by_a_supervisor() {
        use crate::{
            ids::CaseId,
            ledger::{Case, CaseAction, CaseKind, NewStep},
            schema::{Hazard, HazardKind},
        };
        let (w, other, boss) = (author(), author(), author());
        let workers = rights(&[("g1", Role::GridWorker)]);
        let supervisor = rights(&[("g1", Role::VillageSupervisor)]);
        let mut doc = household("g1", &w);
        let mut v = visit(&w);
        v.hazards.push(Hazard {
            kind: HazardKind::Fire,
            detail: "楼道堆放杂物".into(),
        });
        doc.add_visit(&w, NOW, &v, &[]).expect("visit");
        let case = Case {
            id: CaseId::new(),
            kind: CaseKind::Hazard {
                kind: HazardKind::Fire,
            },
            raised_on_visit: Some(v.id),
            item: Some(0),
            raised_by: w.user,
            device: w.device,
            raised_at_ms: NOW,
            detail: "楼道堆放杂物".into(),
            parties: "3号楼道".into(),
            due: None,
            history: vec![],
        };
        // A line the visit does not hold is refused before anything is written.
        let bad = Case {
            id: CaseId::new(),
            item: Some(1),
            ..case.clone()
        };
        assert!(doc.raise_case(&w, NOW, &bad).is_err());
        let before = doc.heads();
        doc.raise_case(&w, NOW, &case).expect("raised");
        assert_eq!(judge(&workers, w.user, &mut doc, &before), Ok(()));
        // Raised in another's name: refused.
        let mut forged_doc = doc.clone();
        let before = forged_doc.heads();
        let forged = Case {
            id: CaseId::new(),
            ..case.clone()
        };
        forged_doc
            .raise_case(&other, NOW, &forged)
            .expect("written");
        assert_eq!(
            judge(&workers, other.user, &mut forged_doc, &before),
            not_allowed(Subject::Cases)
        );
        // The worker resolves it; only a supervisor checks it.
        let before = doc.heads();
        let done = NewStep {
            comment: "杂物已清理".into(),
            ..NewStep::default()
        };
        doc.case_step(&w, NOW + 1, case.id, CaseAction::Resolve, &done, None)
            .expect("resolved");
        assert_eq!(judge(&workers, w.user, &mut doc, &before), Ok(()));
        let mut by_worker = doc.clone();
        let before = by_worker.heads();
        by_worker
            .case_step(
                &w,
                NOW + 2,
                case.id,
                CaseAction::Check,
                &NewStep::default(),
                None,
            )
            .expect("written");
        assert_eq!(
            judge(&workers, w.user, &mut by_worker, &before),
            not_allowed(Subject::CaseStep)
        );
        let before = doc.heads();
        doc.case_step(
            &boss,
            NOW + 2,
            case.id,
            CaseAction::Check,
            &NewStep::default(),
            None,
        )
        .expect("checked");
        assert_eq!(judge(&supervisor, boss.user, &mut doc, &before), Ok(()));
        assert_eq!(
            crate::ledger::standing(&doc.case(&case.id.to_string()).unwrap().unwrap()).state,
            crate::ledger::CaseState::Checked
        );
        // A case is never deleted, nor its detail rewritten.
        for rewrite in [true, false] {
            use automerge::transaction::Transactable;
            let mut copy = doc.clone();
            let before = copy.heads();
            let key = crate::ledger::root_key(&case.id.to_string());
            let am = copy.automerge_mut();
            if rewrite {
                let (_, obj) = automerge::ReadDoc::get(am, automerge::ROOT, key.as_str())
                    .unwrap()
                    .unwrap();
                am.put(&obj, "detail", "改了").unwrap();
            } else {
                am.delete(automerge::ROOT, key.as_str()).unwrap();
            }
            am.commit_with(crate::doc::commit_options(&boss, NOW + 3));
            assert_eq!(
                judge(&supervisor, boss.user, &mut copy, &before),
                not_allowed(Subject::Cases)
            );
        }
    }

    #[test]
    fn a_worker_may_not_touch_a_colleagues_visit_but_a_supervisor_may() {
        let (a, b, s) = (author(), author(), author());
        let mut doc = household("g1", &a);
        let v = visit(&a);
        doc.add_visit(&a, NOW, &v, &[]).expect("visit");
        let workers = rights(&[("g1", Role::GridWorker)]);
        let before = doc.heads();
        doc.replace_note(&a, NOW, v.id, "补记").expect("own fix");
        assert_eq!(judge(&workers, a.user, &mut doc, &before), Ok(()));
        let before = doc.heads();
        doc.replace_note(&b, NOW, v.id, "改别人的").expect("edit");
        assert_eq!(
            judge(&workers, b.user, &mut doc, &before),
            not_allowed(Subject::Visits)
        );
        let supervisor = rights(&[("g1", Role::VillageSupervisor)]);
        assert_eq!(judge(&supervisor, s.user, &mut doc, &before), Ok(()));
    }

    #[test]
    fn a_worker_attaches_photos_but_rewrites_or_removes_only_with_a_supervisor() {
        use automerge::{ROOT, ReadDoc, transaction::Transactable};

        use crate::photo::{MediaType, Photo, PhotoSubject, hash_of, root_key};
        let (a, b, s) = (author(), author(), author());
        let mut doc = household("g1", &a);
        let v = visit(&a);
        doc.add_visit(&a, NOW, &v, &[]).expect("visit");
        let workers = rights(&[("g1", Role::GridWorker)]);
        let p = Photo {
            id: crate::ids::PhotoId::new(),
            hash: hash_of(b"jpeg"),
            size: 4,
            media_type: MediaType::Jpeg,
            taken_at_ms: NOW,
            caption: String::new(),
            subject: PhotoSubject::Visit { visit: v.id },
            by: a.user,
            device: a.device,
        };
        let before = doc.heads();
        doc.attach_photo(&a, NOW, &p).expect("attached");
        assert_eq!(judge(&workers, a.user, &mut doc, &before), Ok(()));
        // Out of the grid: refused.
        let elsewhere = rights(&[("g2", Role::GridWorker)]);
        assert!(judge(&elsewhere, a.user, &mut doc, &before).is_err());
        // A colleague rewrites the caption: a supervisor's to do.
        let before = doc.heads();
        let key = root_key(&p.id.to_string());
        let (_, entry) = doc.automerge().get(ROOT, key.as_str()).unwrap().unwrap();
        doc.automerge_mut()
            .put(&entry, "caption", "别人改")
            .unwrap();
        doc.commit(&b, NOW);
        assert_eq!(
            judge(&workers, b.user, &mut doc, &before),
            not_allowed(Subject::Photos)
        );
        let supervisor = rights(&[("g1", Role::VillageSupervisor)]);
        assert_eq!(judge(&supervisor, s.user, &mut doc, &before), Ok(()));
        // Removing one, even one's own.
        let before = doc.heads();
        doc.automerge_mut().delete(ROOT, key.as_str()).unwrap();
        doc.commit(&a, NOW);
        assert_eq!(
            judge(&workers, a.user, &mut doc, &before),
            not_allowed(Subject::Photos)
        );
    }

    #[test]
    fn only_a_supervisor_of_both_grids_moves_a_household_or_deletes_an_entry() {
        let w = author();
        let mut doc = household("g1", &w);
        doc.add_visit(&w, NOW, &visit(&w), &[]).expect("visit");
        let before = doc.heads();
        doc.edit(&w, NOW, |h| {
            h.grid = GridId::new("g2");
            Ok(())
        })
        .expect("moved");
        let both = rights(&[("g1", Role::GridWorker), ("g2", Role::GridWorker)]);
        assert_eq!(
            judge(&both, w.user, &mut doc, &before),
            not_allowed(Subject::Grid)
        );
        let one = rights(&[("g1", Role::TownSupervisor)]);
        assert_eq!(
            judge(&one, w.user, &mut doc, &before).map_err(|r| r.code),
            Err(RejectCode::OutOfScope)
        );
        let sup = rights(&[("g1", Role::TownSupervisor), ("g2", Role::TownSupervisor)]);
        assert_eq!(judge(&sup, w.user, &mut doc, &before), Ok(()));

        let mut doc = household("g1", &w);
        doc.add_visit(&w, NOW, &visit(&w), &[]).expect("visit");
        let before = doc.heads();
        doc.edit(&w, NOW, |h| {
            h.visits.clear();
            Ok(())
        })
        .expect("deleted");
        let worker = rights(&[("g1", Role::GridWorker)]);
        assert_eq!(
            judge(&worker, w.user, &mut doc, &before),
            not_allowed(Subject::Visits)
        );
    }

    #[test]
    fn a_worker_takes_an_order_to_its_return_visit_but_only_a_supervisor_closes_it() {
        let w = author();
        let worker = rights(&[("g1", Role::GridWorker)]);
        let mut doc = household("g1", &w);
        let d = Demand {
            id: DemandId::new(),
            raised_on_visit: None,
            raised_by: w.user,
            raised_at_ms: NOW,
            category: NeedCategory::Housing,
            text: "屋顶漏水".into(),
            urgency: Urgency::Normal,
            status: DemandStatus::Raised,
            history: vec![],
            first_responsible: None,
            source: Some(crate::schema::DemandSource::Visit),
            external_ref: None,
        };
        let mut v = visit(&w);
        v.demands_raised.push(d.id);
        let d = Demand {
            raised_on_visit: Some(v.id),
            ..d
        };
        let before = doc.heads();
        doc.add_visit(&w, NOW, &v, std::slice::from_ref(&d))
            .expect("raised");
        assert_eq!(judge(&worker, w.user, &mut doc, &before), Ok(()));
        let rules = Deadlines::default();
        let mut satisfied = NewStep::new(DemandAction::ReturnVisit, "已回访");
        satisfied.satisfaction = Some(Satisfaction::Satisfied);
        let steps = [
            NewStep::new(DemandAction::Take, "我来办"),
            NewStep::new(DemandAction::Finish, "已修好"),
            NewStep::new(DemandAction::Feedback, "已告知"),
            satisfied,
        ];
        for (n, step) in steps.iter().enumerate() {
            let before = doc.heads();
            doc.demand_step(&w, NOW + n as i64 + 1, d.id, step, &rules)
                .expect("step");
            assert_eq!(judge(&worker, w.user, &mut doc, &before), Ok(()), "{n}");
        }
        let before = doc.heads();
        doc.demand_step(
            &w,
            NOW + 10,
            d.id,
            &NewStep::new(DemandAction::Close, "办结"),
            &rules,
        )
        .expect("the state allows it");
        assert_eq!(
            judge(&worker, w.user, &mut doc, &before),
            not_allowed(Subject::DemandStep)
        );
        let both = rights(&[("g1", Role::GridWorker), ("g1", Role::VillageSupervisor)]);
        assert_eq!(judge(&both, w.user, &mut doc, &before), Ok(()));
    }

    #[test]
    fn a_grant_that_ended_covers_only_changes_made_while_it_held() {
        let r = Rights {
            grants: vec![Grant {
                grid: "g1".into(),
                role: Role::GridWorker,
                from_ms: 1_000,
                until_ms: Some(5_000),
            }],
            teams: BTreeSet::new(),
            at_ms: 9_000,
        };
        assert!(r.may_write("g1", 2_000), "made while assigned");
        assert!(!r.may_write("g1", 6_000));
        assert!(!r.may_write("g1", 500));
        assert!(!r.may_write("g2", 2_000));
        assert!(!r.supervises("g1", 2_000));
        let p = r.party("g1", 2_000);
        assert!(p.grid_member && !p.supervisor && !p.dispatcher);
    }

    #[test]
    fn rights_travel_as_short_keys_and_their_digest_ignores_when_they_were_computed() {
        let mut r = rights(&[("g1", Role::GridWorker)]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"g": [{"g": "g1", "r": "grid_worker", "f": 0}], "n": NOW})
        );
        let d = crate::wire::rights_digest(&["g1"], &r);
        assert_ne!(d, crate::wire::scope_digest(&["g1"]));
        r.at_ms += 1;
        assert_eq!(crate::wire::rights_digest(&["g1"], &r), d);
        r.teams.insert("t1".into());
        assert_ne!(crate::wire::rights_digest(&["g1"], &r), d);
    }
}
