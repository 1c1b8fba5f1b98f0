//! The second ledger on the phone (SYNC-v1 §13.10): disputes and hazards raised on a visit (or
//! on their own) and followed offline — the worker's list of cases to look at again on the
//! next visit day ("check the hazard at 17号"), and the steps taken on them.
//!
//! Cases live in the household documents (`case:<id>` keys); `case_index` says which
//! households hold which cases and whether each is still open, so the grid's follow-ups read
//! only the households that have an open case.

use qiaomen_protocol::{
    calendar::Day,
    doc::HouseholdDoc,
    ids::{CaseId, GridId, HouseholdId, VisitId},
    ledger::{self, Case, CaseAction, CaseKind, Standing},
    schema::{DemandSource, NeedCategory},
};
use rusqlite::params;

use super::{IndexUpdate, Store, uuid_from};
use crate::error::Result;

/// A case's row in `case_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CaseRow {
    case: CaseId,
    open: bool,
}

/// The index rows of the cases `doc` holds.
pub(super) fn rows(doc: &HouseholdDoc) -> Vec<CaseRow> {
    doc.cases()
        .iter()
        .map(|c| CaseRow {
            case: c.id,
            open: ledger::standing(c).state.is_open(),
        })
        .collect()
}

pub(super) fn write_row(
    tx: &rusqlite::Transaction<'_>,
    doc: HouseholdId,
    row: &CaseRow,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO case_index (doc, case_id, open) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        doc.as_bytes().as_slice(),
        row.case.as_bytes().as_slice(),
        row.open
    ])?;
    Ok(())
}

/// A dispute or hazard to raise.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCase {
    pub kind: CaseKind,
    /// The visit that found it and its line in the visit's `hazards` / `disputes`.
    pub raised_on_visit: Option<VisitId>,
    pub item: Option<u32>,
    pub detail: String,
    pub parties: String,
    pub due: Option<Day>,
}

/// An open case of the grid, for the worker's follow-up list.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowUp {
    pub household: HouseholdId,
    pub door_number: String,
    pub case: Case,
    pub standing: Standing,
}

impl Store {
    /// Raises a tracked dispute or hazard on the household `id`, as one change, offline.
    /// Refused before anything is stored, by the server's own rules: a detail empty or too
    /// long (`case_detail`), a visit line the household does not hold, a user who may not
    /// raise one in the grid (`NotAllowed`).
    pub fn raise_case(&mut self, id: HouseholdId, new: &NewCase) -> Result<Case> {
        let case = Case {
            id: CaseId::new(),
            kind: new.kind,
            raised_on_visit: new.raised_on_visit,
            item: new.item,
            raised_by: self.author.user,
            device: self.author.device,
            raised_at_ms: self.now_ms(),
            detail: new.detail.clone(),
            parties: new.parties.clone(),
            due: new.due,
            history: vec![],
        };
        let row = CaseRow {
            case: case.id,
            open: true,
        };
        let mut raised = case.clone();
        self.commit_edit(
            id,
            |doc, a, now| {
                raised.raised_at_ms = now;
                doc.raise_case(a, now, &raised).map(|h| (raised, Some(h)))
            },
            IndexUpdate::Case(row, None),
        )
    }

    /// Takes a step of a case, offline: a follow-up on a visit, taking it in hand, resolving
    /// it, escalating it into a work order (a new demand of the household, raised by this
    /// user, in the same change) — or, for a supervisor, assigning, checking or reopening it.
    /// Refused before anything is stored when it does not follow from the case's state, lacks
    /// its data or is not the user's to take (the server's rules, `NotAllowed`).
    pub fn case_step(
        &mut self,
        id: HouseholdId,
        case: CaseId,
        action: CaseAction,
        step: &ledger::NewStep,
    ) -> Result<()> {
        let current = self
            .doc_mut(id)?
            .doc
            .case(&case.to_string())?
            .ok_or_else(|| qiaomen_protocol::DocError::NotFound {
                kind: "case",
                id: case.to_string(),
            })?;
        let mut step = step.clone();
        let now = self.now_ms();
        let demand = (action == CaseAction::Escalate).then(|| {
            let d = ledger::escalation_demand(
                &current,
                self.author.user,
                now,
                DemandSource::Visit,
                NeedCategory::Other,
                step.visit.or(current.raised_on_visit),
            );
            step.order = Some(d.id);
            d
        });
        let mut after = current.clone();
        let open = match step.entry(&current, action, self.author.user, self.author.device, now) {
            Ok(e) => {
                after.history.push(e);
                ledger::standing(&after).state.is_open()
            }
            Err(_) => true, // refused below, by the document's own check
        };
        let row = CaseRow { case, open };
        self.commit_edit(
            id,
            |doc, a, now| {
                doc.case_step(a, now, case, action, &step, demand.as_ref())
                    .map(|h| ((), Some(h)))
            },
            IndexUpdate::Case(row, demand.as_ref().map(|d| d.id)),
        )
    }

    /// The tracked cases of the household, open or not.
    pub fn cases(&mut self, id: HouseholdId) -> Result<Vec<Case>> {
        let mut cases = self.doc_mut(id)?.doc.cases();
        cases.sort_by_key(|c| (c.raised_at_ms, c.id));
        Ok(cases)
    }

    /// The open cases of `grid`'s households, to look at again on the next visit: those
    /// past or nearest their deadline first, then by door number. Works offline.
    pub fn follow_ups(&mut self, grid: &GridId) -> Result<Vec<FollowUp>> {
        let ids: Vec<(HouseholdId, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT d.id, d.door_number FROM docs d JOIN case_index i ON i.doc = d.id
                  WHERE d.grid = ?1 AND i.open = 1 ORDER BY d.id",
            )?;
            stmt.query_map([grid.as_str()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?
            .filter_map(|r| r.ok().and_then(|(b, door)| Some((uuid_from(&b)?, door))))
            .collect()
        };
        let mut out = Vec::new();
        for (id, door_number) in ids {
            for case in self.doc_mut(id)?.doc.cases() {
                let standing = ledger::standing(&case);
                if standing.state.is_open() {
                    out.push(FollowUp {
                        household: id,
                        door_number: door_number.clone(),
                        case,
                        standing,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            // Cases with no deadline last.
            let due = |f: &FollowUp| (f.standing.due.is_none(), f.standing.due);
            (due(a), &a.door_number, a.case.raised_at_ms).cmp(&(
                due(b),
                &b.door_number,
                b.case.raised_at_ms,
            ))
        });
        Ok(out)
    }
}
