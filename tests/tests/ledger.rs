//! The second ledger (双台账, SYNC-v1 §15) against the real server on 127.0.0.1: a hazard
//! found on a visit is followed offline, rectified by the worker and checked by a supervisor,
//! with the same rules on the phone and on the server; a dispute is escalated into a work
//! order in one change.

use qiaomen_client_core::{StoreError, store::NewCase};
use qiaomen_protocol::{
    calendar::{self, Day},
    ids::*,
    ledger::{CaseAction, CaseKind, CaseState, NewStep, standing},
    policy::Subject,
    schema::*,
};
use qiaomen_tests::{Phone, TestServer, call, sample_visit};

fn today() -> Day {
    Day::from_unix_ms(qiaomen_server::access::now_ms(), 8 * 3600).unwrap()
}

/// A server, the command centre's phone, a worker of g1 and a household of g1 at `door`, on
/// both phones.
fn a_household_of_g1(dir: &std::path::Path, door: &str) -> (TestServer, Phone, Phone, HouseholdId) {
    let server = TestServer::start(&dir.join("server"));
    let mut centre = server.phone(&dir.join("centre.db"), &[]);
    let mut w = server.phone(&dir.join("w.db"), &["g1"]);
    let id = centre
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "东村",
            door,
        ))
        .unwrap();
    centre.sync().unwrap();
    w.sync().unwrap();
    (server, centre, w, id)
}

#[test]
fn a_hazard_found_on_a_visit_is_followed_up_offline_rectified_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut centre, mut w, id) = a_household_of_g1(dir.path(), "17号");

    // On the visit day, the worker notes a fire hazard and tracks it.
    let day = calendar::cycle_of(today());
    let mut visit = sample_visit(&w.author, day, "楼道堆放杂物");
    visit.hazards.push(Hazard {
        kind: HazardKind::Fire,
        detail: "楼道堆放纸箱".into(),
    });
    w.store.record_visit(id, &visit, &[]).unwrap();
    let raised = NewCase {
        kind: CaseKind::Hazard {
            kind: HazardKind::Fire,
        },
        raised_on_visit: Some(visit.id),
        item: Some(0),
        detail: "楼道堆放纸箱，堵塞通道".into(),
        parties: "17号楼道".into(),
        due: None,
    };
    // A line the visit does not hold is refused on the phone, nothing stored.
    let pending = w.store.pending_change_count().unwrap();
    let bad = NewCase {
        item: Some(3),
        ..raised.clone()
    };
    assert!(w.store.raise_case(id, &bad).is_err());
    assert_eq!(w.store.pending_change_count().unwrap(), pending);
    let case = w.store.raise_case(id, &raised).unwrap();
    let report = w.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");

    // The supervisor assigns it back to the worker, with a deadline.
    centre.sync().unwrap();
    let due: Day = today().add_days(7);
    centre
        .store
        .case_step(
            id,
            case.id,
            CaseAction::Assign,
            &NewStep {
                assignee: Some(w.author.user),
                due: Some(due),
                ..NewStep::default()
            },
        )
        .unwrap();
    assert!(centre.sync().unwrap().rejected.is_empty());

    // Offline, the worker's follow-up list names it; they look again, and it is rectified.
    w.sync().unwrap();
    let follow = w.store.follow_ups(&GridId::new("g1")).unwrap();
    assert_eq!(follow.len(), 1);
    assert_eq!(follow[0].door_number, "17号");
    assert_eq!(follow[0].standing.state, CaseState::Assigned);
    assert_eq!(follow[0].standing.due, Some(due));
    let again = sample_visit(&w.author, day, "复查隐患");
    w.store.record_visit(id, &again, &[]).unwrap();
    let on_visit = NewStep {
        visit: Some(again.id),
        ..NewStep::default()
    };
    w.store
        .case_step(id, case.id, CaseAction::FollowUp, &on_visit)
        .unwrap();
    let rectified = NewStep {
        comment: "纸箱已清理，通道畅通".into(),
        visit: Some(again.id),
        ..NewStep::default()
    };
    w.store
        .case_step(id, case.id, CaseAction::Resolve, &rectified)
        .unwrap();
    // The worker may not check their own work: refused on the phone, with the server's rule.
    let pending = w.store.pending_change_count().unwrap();
    match w
        .store
        .case_step(id, case.id, CaseAction::Check, &NewStep::default())
    {
        Err(StoreError::NotAllowed { what, .. }) => assert_eq!(what, Subject::CaseStep),
        other => panic!("a worker's check: {other:?}"),
    }
    assert_eq!(w.store.pending_change_count().unwrap(), pending);
    // The visit and the steps go in one sync, and the server takes every one.
    let report = w.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(w.store.pending_change_count().unwrap(), 0);
    assert!(w.store.follow_ups(&GridId::new("g1")).unwrap().is_empty());

    // The supervisor checks it; the worker's phone sees it finished.
    centre.sync().unwrap();
    centre
        .store
        .case_step(id, case.id, CaseAction::Check, &NewStep::default())
        .unwrap();
    assert!(centre.sync().unwrap().rejected.is_empty());
    w.sync().unwrap();
    let cases = w.store.cases(id).unwrap();
    assert_eq!(cases.len(), 1);
    let s = standing(&cases[0]);
    assert_eq!(s.state, CaseState::Checked);
    assert!(s.resolved_ms.is_some() && s.checked_ms.is_some());
    let actions: Vec<CaseAction> = cases[0].history.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            CaseAction::Assign,
            CaseAction::FollowUp,
            CaseAction::Resolve,
            CaseAction::Check
        ]
    );
    // A fresh phone of the grid loads the household, case and all, from the server.
    let mut fresh = server.phone(&dir.path().join("fresh.db"), &["g1"]);
    fresh.sync().unwrap();
    assert_eq!(fresh.store.cases(id).unwrap(), cases);
}

#[test]
fn a_dispute_escalated_becomes_a_work_order_in_the_same_change() {
    let dir = tempfile::tempdir().unwrap();
    let (server, centre, mut w, id) = a_household_of_g1(dir.path(), "5号");
    let case = w
        .store
        .raise_case(
            id,
            &NewCase {
                kind: CaseKind::Dispute {
                    kind: DisputeKind::Land,
                },
                raised_on_visit: None,
                item: None,
                detail: "宅基地边界争议，调解未果".into(),
                parties: "5号与6号".into(),
                due: None,
            },
        )
        .unwrap();
    w.store
        .case_step(id, case.id, CaseAction::Start, &NewStep::default())
        .unwrap();
    w.store
        .case_step(id, case.id, CaseAction::Escalate, &NewStep::default())
        .unwrap();
    let report = w.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let cases = w.store.cases(id).unwrap();
    let s = standing(&cases[0]);
    assert_eq!(s.state, CaseState::Escalated);
    let order = s.order.expect("the demand it became");
    // The demand is the household's, and the server's work orders hold it.
    let h = w.store.household(id).unwrap();
    assert!(h.demands[&order].text.contains("宅基地边界争议"));
    let (status, body) = call(
        "GET",
        &format!("{}/api/v1/orders/{order}", server.url),
        &centre.token(),
        None,
    );
    assert_eq!(status, 200, "{body}");
    // An escalated case takes no more steps.
    assert!(
        w.store
            .case_step(id, case.id, CaseAction::FollowUp, &NewStep::default())
            .is_err()
    );
}
