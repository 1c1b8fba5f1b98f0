//! The rules every incoming change must pass before it is stored, as pure functions.
//!
//! 1. **Identity** ([`check_author`]): the change's Automerge actor begins with the uploading
//!    device's id ([`qiaomen_protocol::doc::actor_for`]) and its author message names that
//!    device and its user. A forged or borrowed actor id is `not_your_device`.
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
//! 4. **Work orders** ([`qiaomen_protocol::workorder::check_steps`]): a demand's history only
//!    grows at its end, each new step is the uploader's, follows from the order's state, is
//!    one their role may take (a team member, who reads no grid, may write only steps of
//!    orders dispatched to their team; only the command centre withdraws), and is dated
//!    neither before the step before it nor more than
//!    [`qiaomen_protocol::workorder::CLOCK_SKEW_MS`] after the server received it. A new
//!    demand's id is held by no other household ([`crate::orders`]), and only a change the
//!    server built itself (the hotline import) gives a demand the `hotline` source, a hotline
//!    number (`external_ref`) or a first-responsible cadre. Else `not_allowed`, or
//!    `stale_order` when the step was made without seeing the order's latest steps.

use automerge::{Change, ChangeHash};
use qiaomen_protocol::{
    doc::{Author, HouseholdDoc, Touched, actor_device},
    ids::{DeviceId, UserId},
    schema::DemandSource,
    wire::RejectCode,
    workorder::{self, Deadlines, StepError},
};

use super::Scope;
use crate::orders::DemandIds;

/// An authenticated device and what its user may do.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: UserId,
    pub device: DeviceId,
    pub scope: Scope,
    /// The change was built by the server itself for this user (the JSON API and pages,
    /// `api::web_change`), not uploaded by a device: only such a change may carry what the
    /// server vouches for (a hotline order's source, number and first-responsible cadre).
    pub server_built: bool,
    /// The server's register of demand ids, which a new demand's id must be free in (`None`
    /// for tools that load trusted data).
    pub demand_ids: Option<std::sync::Arc<DemandIds>>,
    /// Whether the uploading phone's clock agreed with the server's when it sent the changes
    /// (its `Date` header, within [`workorder::CLOCK_SKEW_MS`]); `None`: it did not say. Kept
    /// with each logged change: lateness takes a step's own time only where it did.
    pub clock_ok: Option<bool>,
}

/// The change is made by this device and its user.
pub fn check_author(p: &Principal, change: &Change) -> Result<(), RejectCode> {
    if actor_device(change.actor_id()) != Some(p.device) {
        return Err(RejectCode::NotYourDevice);
    }
    let author = change.message().and_then(Author::from_message);
    match author {
        Some(a) if a.device == p.device && a.user == p.user => Ok(()),
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
/// within the principal's rights.
///
/// A change is judged by what its author could see and edit when they made it: the grid of
/// the version it was made on (SYNC-v1 §6.4). A worker's visit made offline on a household
/// of their grid is theirs to make even when a supervisor moved the household to another grid
/// meanwhile: it is accepted and travels with the household. Moving a household is judged by
/// the grid it leaves as the server holds it and the grid it enters.
pub fn check_effect(
    p: &Principal,
    doc: &HouseholdDoc,
    before: &[ChangeHash],
    touched: &Touched,
    made: &[Made],
) -> Result<(), RejectCode> {
    let prior = (!before.is_empty()).then_some(before);
    let grid_before = prior.and_then(|h| doc.root_text("grid", Some(h)));
    let grid_after = doc.root_text("grid", None).unwrap_or_default();
    let times: Vec<i64> = made.iter().map(|m| m.at_ms).collect();
    let writable = |grid: &str| times.iter().all(|t| p.scope.may_write(grid, *t));
    let supervised = |grid: &str| times.iter().all(|t| p.scope.supervises(grid, *t));
    // Each change in the grid it was made in (the household's creation: the grid it creates).
    let seen = |m: &Made| m.seen_grid.clone().unwrap_or_else(|| grid_after.clone());
    let writable_seen = made.iter().all(|m| p.scope.may_write(&seen(m), m.at_ms));
    let supervised_seen = made.iter().all(|m| p.scope.supervises(&seen(m), m.at_ms));
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
    let team_work = demands_only && !p.scope.teams.is_empty();
    let in_scope = if moves {
        grid_before.as_deref().is_some_and(writable) && writable(&grid_after) && writable_seen
    } else {
        writable_seen
    };
    if !in_scope && !team_work {
        return Err(RejectCode::OutOfScope);
    }
    check_demands(p, doc, prior, touched, &times, &judged)?;
    let mut needs_supervisor = false;
    if moves {
        // Moving a household between grids: a supervisor of both.
        if !grid_before.as_deref().is_some_and(supervised) || !supervised(&grid_after) {
            return Err(RejectCode::NotAllowed);
        }
    }
    if touched.facts.contains("status")
        && doc.root_text("status", None).as_deref() == Some("Merged")
        && prior
            .and_then(|h| doc.root_text("status", Some(h)))
            .as_deref()
            != Some("Merged")
    {
        needs_supervisor = true;
    }
    if !touched.deleted.is_empty() {
        // A demand is closed or withdrawn, never deleted: its history is the order's record.
        if touched.deleted.iter().any(|(c, _)| c == "demands") {
            return Err(RejectCode::NotAllowed);
        }
        needs_supervisor = true;
    }
    for (collection, key) in &touched.entries {
        let field = match collection.as_str() {
            "visits" => "worker",
            "reviews" => {
                // Reviews are supervisors' only, signed by their reviewer, never of the
                // reviewer's own visit, and never rewritten: a new decision is a new review.
                needs_supervisor = true;
                if doc.entry_user("reviews", key, "reviewer", None) != Some(p.user) {
                    return Err(RejectCode::NotAllowed);
                }
                let existed = prior.is_some_and(|h| {
                    doc.entry_user("reviews", key, "reviewer", Some(h))
                        .is_some()
                });
                if existed {
                    return Err(RejectCode::NotAllowed);
                }
                let visit = doc.entry_uuid("reviews", key, "visit", None);
                let own = visit.is_some_and(|v| {
                    doc.visit_worker(&v.to_string(), None) == Some(p.user)
                        || prior.is_some_and(|h| {
                            doc.visit_worker(&v.to_string(), Some(h)) == Some(p.user)
                        })
                });
                if own {
                    return Err(RejectCode::NotAllowed);
                }
                "reviewer"
            }
            _ => continue,
        };
        let earlier = prior.and_then(|h| doc.entry_user(collection, key, field, Some(h)));
        let now = doc.entry_user(collection, key, field, None);
        if earlier.is_some_and(|w| w != p.user) || now.is_some_and(|w| w != p.user) {
            needs_supervisor = true;
        }
    }
    if needs_supervisor && !supervised_seen {
        return Err(RejectCode::NotAllowed);
    }
    Ok(())
}

/// Every touched demand's new steps are the principal's to take (see the module docs, 4).
fn check_demands(
    p: &Principal,
    doc: &HouseholdDoc,
    prior: Option<&[ChangeHash]>,
    touched: &Touched,
    times: &[i64],
    grid: &str,
) -> Result<(), RejectCode> {
    if !touched.entries.iter().any(|(c, _)| c == "demands") {
        return Ok(());
    }
    let at = times.iter().copied().min().unwrap_or(p.scope.at_ms);
    let party = p.scope.party(grid, at);
    let rules = Deadlines::default();
    // When the server received the change: its scope is computed as the request arrives.
    let arrival_ms = p.scope.at_ms;
    let household = doc.household_id();
    for (_, key) in touched.entries.iter().filter(|(c, _)| c == "demands") {
        let before = match prior {
            Some(h) => doc
                .demand_at(key, Some(h))
                .map_err(|_| RejectCode::SchemaViolation)?,
            None => None,
        };
        let Some(after) = doc
            .demand_at(key, None)
            .map_err(|_| RejectCode::SchemaViolation)?
        else {
            continue; // deleted: the supervisor rule covers it
        };
        if before.is_none() {
            // A new demand: raised by the uploader, on the grid's side or by a dispatcher,
            // with what only the server vouches for set only by the server, under an id no
            // other household holds.
            let raises = party.grid_member || party.supervisor || party.dispatcher;
            if !raises || after.raised_by != p.user {
                return Err(RejectCode::NotAllowed);
            }
            let vouched = after.source == Some(DemandSource::Hotline)
                || after.external_ref.is_some()
                || after.first_responsible.is_some();
            if vouched && !p.server_built {
                return Err(RejectCode::NotAllowed);
            }
            if let (Some(ids), Some(h)) = (&p.demand_ids, household)
                && !ids.claim(after.id, h)
            {
                return Err(RejectCode::NotAllowed);
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
                return Err(RejectCode::NotAllowed);
            }
        }
        workorder::check_steps(before.as_ref(), &after, p.user, &party, &rules, arrival_ms)
            .map_err(|e| match e {
                StepError::Stale => RejectCode::StaleOrder,
                _ => RejectCode::NotAllowed,
            })?;
    }
    Ok(())
}
