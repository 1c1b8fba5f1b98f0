//! Supervisors' reviews of visits: whether a sign-off still holds, and which returned visits
//! are open tasks for their worker. Pure functions over a household document.

use std::collections::HashSet;

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};

use crate::{
    doc::HouseholdDoc,
    error::Result,
    ids::{ReviewId, UserId, VisitId},
    schema::{Household, Review, ReviewDecision},
};

/// Whether a review still describes the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    /// The document is exactly the version reviewed.
    Current,
    /// Something changed after the review: the sign-off is stale.
    Stale,
}

/// The document heads, as the lower-case hex a review records.
pub fn heads_hex(doc: &mut HouseholdDoc) -> Vec<String> {
    let mut heads: Vec<String> = doc.heads().iter().map(|h| h.to_string()).collect();
    heads.sort();
    heads
}

/// The version a review's `heads` (hex) name, if every hash is well-formed and in the
/// document; `None` for no heads, a malformed one, or a version this replica lacks.
pub fn known_version(doc: &mut HouseholdDoc, heads: &[String]) -> Option<Vec<ChangeHash>> {
    let parsed: Vec<ChangeHash> = heads
        .iter()
        .map(|h| h.parse().ok())
        .collect::<Option<_>>()?;
    (!parsed.is_empty() && parsed.iter().all(|h| doc.has_change(h))).then_some(parsed)
}

/// Whether `review` still holds for the document as it is now (`current` is its record, read
/// once by the caller for all its reviews): the record, reviews aside (the review is itself a
/// change), is what it was in the version reviewed.
pub fn review_state(doc: &mut HouseholdDoc, current: &Household, review: &Review) -> ReviewState {
    let now: HashSet<String> = heads_hex(doc).into_iter().collect();
    let seen: HashSet<String> = review.heads.iter().map(|h| h.to_lowercase()).collect();
    if now == seen {
        return ReviewState::Current;
    }
    let Some(heads) = known_version(doc, &review.heads) else {
        return ReviewState::Stale;
    };
    let Ok(mut then) = doc.household_at(&heads) else {
        return ReviewState::Stale;
    };
    then.reviews = current.reviews.clone();
    if then == *current {
        ReviewState::Current
    } else {
        ReviewState::Stale
    }
}

/// A visit returned for a fix: a task for its worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixTask {
    pub review: ReviewId,
    pub visit: VisitId,
    pub worker: UserId,
    pub reviewer: UserId,
    /// The supervisor's comment (shown to the worker; it may quote the record).
    pub comment: String,
    pub at_ms: i64,
}

/// The visits of the household returned for a fix and not fixed yet (`household` is the
/// document's current record): the latest review of the visit returned it, and the visit is
/// the same as in the version that was reviewed.
pub fn open_tasks(doc: &mut HouseholdDoc, household: &Household) -> Result<Vec<FixTask>> {
    let mut tasks = Vec::new();
    for (visit_id, visit) in &household.visits {
        let Some(latest) = household
            .reviews
            .values()
            .filter(|r| r.visit == *visit_id)
            .max_by_key(|r| (r.at_ms, r.id))
        else {
            continue;
        };
        if latest.decision != ReviewDecision::Returned {
            continue;
        }
        let unchanged = match known_version(doc, &latest.heads) {
            Some(heads) => doc.household_at(&heads)?.visits.get(visit_id) == Some(visit),
            // A version this replica does not have yet: the fix cannot be judged; keep it.
            None => true,
        };
        if unchanged {
            tasks.push(FixTask {
                review: latest.id,
                visit: *visit_id,
                worker: visit.worker,
                reviewer: latest.reviewer,
                comment: latest.comment.clone(),
                at_ms: latest.at_ms,
            });
        }
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{doc::Author, ids::*, schema::*};

    fn visit(a: &Author, note: &str) -> Visit {
        Visit {
            id: VisitId::new(),
            visit_day: "2026-11-15".parse().unwrap(),
            worker: a.user,
            device: a.device,
            started_at_ms: 1,
            ended_at_ms: None,
            gps: None,
            outcome: VisitOutcome::Met,
            people_met: vec![],
            needs: vec![],
            disputes: vec![],
            hazards: vec![],
            publicity: vec![],
            note: autosurgeon::Text::with_value(note),
            demands_raised: vec![],
        }
    }

    fn open_tasks_now(doc: &mut HouseholdDoc) -> Vec<FixTask> {
        let h = doc.household().unwrap();
        open_tasks(doc, &h).unwrap()
    }

    fn state_now(doc: &mut HouseholdDoc, review: &Review) -> ReviewState {
        let h = doc.household().unwrap();
        review_state(doc, &h, review)
    }

    #[test]
    fn a_returned_visit_is_a_task_until_changed_and_a_later_edit_makes_a_sign_off_stale() {
        let worker = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let boss = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let id = HouseholdId::new();
        let mut doc =
            HouseholdDoc::create(&Household::new(id, GridId::new("g"), "x", "1"), &worker, 1)
                .unwrap();
        let visit = visit(&worker, "ok");
        doc.add_visit(&worker, 2, &visit, &[]).unwrap();
        let review = |decision, at_ms, heads: Vec<String>| Review {
            id: ReviewId::new(),
            visit: visit.id,
            decision,
            comment: "缺少照片".into(),
            reviewer: boss.user,
            device: boss.device,
            at_ms,
            heads,
        };
        let returned = review(ReviewDecision::Returned, 3, heads_hex(&mut doc));
        let before = doc.heads();
        doc.add_review(&boss, 3, &returned).unwrap();
        doc.validate_since(&before, id).unwrap();
        let tasks = open_tasks_now(&mut doc);
        assert_eq!(tasks.len(), 1);
        assert_eq!(
            (tasks[0].review, tasks[0].worker),
            (returned.id, worker.user)
        );
        // The worker fixes the visit: the task is gone.
        doc.edit(&worker, 4, |h| {
            h.visits.get_mut(&visit.id).unwrap().outcome = VisitOutcome::NobodyHome;
            Ok(())
        })
        .unwrap();
        assert!(open_tasks_now(&mut doc).is_empty());
        // Approved at this version: current, until anything changes.
        let approved_now = review(ReviewDecision::Approved, 5, heads_hex(&mut doc));
        doc.add_review(&boss, 5, &approved_now).unwrap();
        assert_eq!(
            state_now(&mut doc, &approved_now),
            ReviewState::Current,
            "the review's own change does not make it stale"
        );
        doc.edit(&worker, 7, |h| {
            h.door_number = "1A".into();
            Ok(())
        })
        .unwrap();
        assert_eq!(state_now(&mut doc, &approved_now), ReviewState::Stale);
        // A review that names no valid version is refused by validation.
        let before = doc.heads();
        doc.add_review(
            &boss,
            8,
            &review(ReviewDecision::Approved, 8, vec!["zz".into()]),
        )
        .unwrap();
        assert!(doc.validate_since(&before, id).is_err());
    }

    /// A worker fixes a returned visit by rewriting its note: in any script, after a reload.
    #[test]
    fn a_chinese_note_is_replaced_after_a_reload() {
        let a = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let id = HouseholdId::new();
        let mut doc =
            HouseholdDoc::create(&Household::new(id, GridId::new("g"), "x", "1"), &a, 1).unwrap();
        let v = visit(&a, "第一次走访");
        let snapshot = doc.save();
        let h = doc.add_visit(&a, 2, &v, &[]).unwrap();
        // A store keeps a snapshot and the changes appended after it.
        let mut bytes = snapshot.clone();
        bytes.extend(doc.change_bytes(&h).unwrap());
        let mut reloaded = HouseholdDoc::load(&bytes).unwrap();
        reloaded.replace_note(&a, 3, v.id, "x").unwrap();
        reloaded
            .replace_note(&a, 4, v.id, "第一次走访：已按时服药")
            .unwrap();
        doc.replace_note(&a, 3, v.id, "改").unwrap();
        let mut again = HouseholdDoc::load(&doc.save()).unwrap();
        again
            .replace_note(&a, 4, v.id, "第一次走访：已按时服药")
            .unwrap();
        assert_eq!(
            again.household().unwrap().visits[&v.id].note.as_str(),
            "第一次走访：已按时服药"
        );
    }
}
