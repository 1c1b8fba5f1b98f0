//! The second ledger (双台账, SYNC-v1 §15) against the real server on 127.0.0.1: a hazard
//! found on a visit is followed offline, rectified by the worker and checked by a supervisor,
//! with the same rules on the phone and on the server; a dispute is escalated into a work
//! order in one change.

use qiaomen_client_core::{StoreError, store::NewCase};
use qiaomen_protocol::{
    calendar::{self, Day},
    ids::*,
    ledger::{CaseAction, CaseKind, CaseState, NewStep, standing},
    policy::{Role, Subject},
    schema::*,
};
use qiaomen_tests::{Phone, TestServer, call, get_raw, get_text, sample_visit, session};

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

    // The statistics count it, from the log, for the period it was found in, and not for one
    // that ended before.
    let supervisor = session(&server, "sv-ledger", "v", Role::VillageSupervisor);
    let t = today();
    let hazards = |from: Day, to: Day| {
        let (status, stats) = call(
            "GET",
            &format!("{}/api/v1/stats?unit=v&from={from}&to={to}", server.url),
            &supervisor,
            None,
        );
        assert_eq!(status, 200, "{stats}");
        let h = &stats["unit"]["figures"]["hazards"];
        let n = |k: &str| h[k].as_u64().unwrap_or(u64::MAX);
        (
            n("found"),
            n("resolved"),
            n("checked"),
            n("escalated"),
            n("overdue"),
        )
    };
    assert_eq!(hazards(t, t), (1, 1, 1, 0, 0));
    assert_eq!(hazards(t.add_days(-30), t.add_days(-1)), (0, 0, 0, 0, 0));
    // The ledger lists it, and its export holds what it was and what was done.
    let (status, list) = call(
        "GET",
        &format!("{}/api/v1/cases?unit=v&ledger=hazard", server.url),
        &supervisor,
        None,
    );
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["state"], "checked");
    assert_eq!(list[0]["door_number"], "17号");
    let (status, csv) = get_text(
        &format!(
            "{}/api/v1/cases/export?unit=v&ledger=hazard&format=csv",
            server.url
        ),
        &supervisor,
    );
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].contains("处理结果") && lines[0].contains("验收日期"));
    for want in [
        "安全隐患",
        "17号",
        "楼道堆放纸箱，堵塞通道",
        "纸箱已清理，通道畅通",
        "已验收",
    ] {
        assert!(lines[1].contains(want), "{want} in {csv}");
    }
    let (status, _, xlsx) = get_raw(
        &format!(
            "{}/api/v1/cases/export?unit=v&ledger=hazard&format=xlsx",
            server.url
        ),
        &supervisor,
    );
    assert_eq!(status, 200);
    assert!(xlsx.starts_with(b"PK"), "an XLSX file is a zip");
    // The disputes' ledger is empty.
    let (_, csv) = get_text(
        &format!(
            "{}/api/v1/cases/export?unit=v&ledger=dispute&format=csv",
            server.url
        ),
        &supervisor,
    );
    assert_eq!(csv.lines().count(), 1, "{csv}");
}

#[test]
fn a_supervisor_assigns_reopens_and_escalates_a_case_over_the_api_with_the_phones_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _centre, mut w, id) = a_household_of_g1(dir.path(), "9号");
    let case = w
        .store
        .raise_case(
            id,
            &NewCase {
                kind: CaseKind::Hazard {
                    kind: HazardKind::Electrical,
                },
                raised_on_visit: None,
                item: None,
                detail: "私拉电线给电动车充电".into(),
                parties: "9号门前".into(),
                due: None,
            },
        )
        .unwrap();
    assert!(w.sync().unwrap().rejected.is_empty());
    let supervisor = session(&server, "sv-case", "v", Role::VillageSupervisor);
    let web_worker = session(&server, "w-case", "g1", Role::GridWorker);
    let other_grid = session(&server, "w-other", "g2", Role::GridWorker);
    let url = |path: &str| format!("{}{path}", server.url);
    let step = |token: &str, body: serde_json::Value| {
        call(
            "POST",
            &url(&format!("/api/v1/cases/{}/steps", case.id)),
            token,
            Some(body),
        )
    };

    let (status, detail) = call(
        "GET",
        &url(&format!("/api/v1/cases/{}", case.id)),
        &supervisor,
        None,
    );
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["detail"], "私拉电线给电动车充电");
    assert_eq!(detail["case"]["state"], "open");
    let may: Vec<&str> = detail["may"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        may.contains(&"assign") && !may.contains(&"check"),
        "{may:?}"
    );
    // Not another grid's to see; not a worker's to assign.
    let (status, _) = call(
        "GET",
        &url(&format!("/api/v1/cases/{}", case.id)),
        &other_grid,
        None,
    );
    assert_eq!(status, 404);
    let yesterday = today().add_days(-1);
    let assign = serde_json::json!({
        "action": "assign", "assignee": w.author.user.to_string(), "due": yesterday.to_string(),
    });
    let (status, body) = step(&web_worker, assign.clone());
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "not_allowed");
    // A step that does not follow, or a step's missing data, is refused with its code.
    let (status, body) = step(&supervisor, serde_json::json!({"action": "check"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "invalid_step");
    let (status, body) = step(&supervisor, serde_json::json!({"action": "assign"}));
    assert_eq!(status, 409, "{body}");
    let (status, body) = step(&supervisor, serde_json::json!({"action": "fly"}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = step(&supervisor, assign);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["case"]["state"], "assigned");
    assert_eq!(body["case"]["assignee"], w.author.user.to_string());
    // Its deadline passed: the ledger and the statistics show it overdue.
    let (_, late) = call(
        "GET",
        &url("/api/v1/cases?unit=v&overdue=true"),
        &supervisor,
        None,
    );
    assert_eq!(late.as_array().map(Vec::len), Some(1), "{late}");
    let t = today();
    let (_, stats) = call(
        "GET",
        &url(&format!("/api/v1/stats?unit=v&from={t}&to={t}")),
        &supervisor,
        None,
    );
    assert_eq!(stats["unit"]["figures"]["hazards"]["overdue"], 1, "{stats}");

    // The pages show the same: the ledger of the village, the case with what it says.
    let (status, page) = get_text(&url("/ledger?unit=v&overdue=true"), &supervisor);
    assert_eq!(status, 200);
    let text = qiaomen_tests::visible(&page);
    assert!(
        text.contains("9号") && text.contains("用电隐患") && text.contains("超期"),
        "{text}"
    );
    let (status, page) = get_text(&url(&format!("/cases/{}", case.id)), &supervisor);
    assert_eq!(status, 200);
    let text = qiaomen_tests::visible(&page);
    assert!(
        text.contains("私拉电线给电动车充电") && text.contains("已分派"),
        "{text}"
    );
    let (status, page) = get_text(&url(&format!("/stats?unit=v&from={t}&to={t}")), &supervisor);
    assert_eq!(status, 200);
    assert!(page.contains("ledger-figures") && page.contains("/ledger?unit=v&amp;ledger=hazard"));

    // The worker's phone gets the assignment; they rectify it offline and sync.
    w.sync().unwrap();
    let cases = w.store.cases(id).unwrap();
    assert_eq!(standing(&cases[0]).state, CaseState::Assigned);
    w.store
        .case_step(
            id,
            case.id,
            CaseAction::Resolve,
            &NewStep {
                comment: "已拆除私拉电线".into(),
                ..NewStep::default()
            },
        )
        .unwrap();
    assert!(w.sync().unwrap().rejected.is_empty());
    // The supervisor's check finds it not done: a reopen needs its reason.
    let (status, _) = step(&supervisor, serde_json::json!({"action": "reopen"}));
    assert_eq!(status, 409);
    let (status, body) = step(
        &supervisor,
        serde_json::json!({"action": "reopen", "comment": "电线仍在，需彻底整改"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["case"]["state"], "in_hand");
    // It is escalated into a work order of the household, which the orders API serves.
    let (status, body) = step(
        &supervisor,
        serde_json::json!({"action": "escalate", "category": "housing"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["case"]["state"], "escalated");
    let order = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["order"].as_str())
        .expect("the escalation names its order")
        .to_string();
    let (status, o) = call(
        "GET",
        &url(&format!("/api/v1/orders/{order}")),
        &supervisor,
        None,
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order"]["source"], "supervisor");
    assert_eq!(o["order"]["category"], "housing");
    assert!(o["text"].as_str().unwrap().contains("私拉电线"), "{o}");
    // The worker's phone has it all after a sync.
    w.sync().unwrap();
    let h = w.store.household(id).unwrap();
    assert!(h.demands.contains_key(&order.parse().unwrap()));
    let actions: Vec<CaseAction> = w.store.cases(id).unwrap()[0]
        .history
        .iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            CaseAction::Assign,
            CaseAction::Resolve,
            CaseAction::Reopen,
            CaseAction::Escalate
        ]
    );
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
