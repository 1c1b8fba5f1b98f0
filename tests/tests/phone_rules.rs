//! One set of rules on both ends (SYNC-v1 §6): the phone runs the server's authorization
//! rules before it commits an edit, so what the server would refuse is refused at once with a
//! typed error and nothing pending — and the same change made past the phone is still refused
//! by the server with the same code.

use qiaomen_client_core::StoreError;
use qiaomen_protocol::{
    calendar::Day,
    doc::HouseholdDoc,
    ids::*,
    policy::Subject,
    schema::*,
    wire::{FEATURES, RejectCode},
    workorder::{Deadlines, DemandAction, NewStep},
};
use qiaomen_server::access::Role;
use qiaomen_tests::{Phone, TestServer, call, raw_upload_with, sample_visit, session};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

fn new_household(grid: &str, door: &str) -> Household {
    Household::new(HouseholdId::new(), GridId::new(grid), "东村", door)
}

/// The phone refused the edit with `NotAllowed` naming `what` and the server's `code`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    what: Subject,
    code: RejectCode,
) {
    match result {
        Err(StoreError::NotAllowed { what: w, code: c }) => assert_eq!((w, c), (what, code)),
        other => panic!("expected NotAllowed {what:?} {code:?}, got {other:?}"),
    }
}

/// Uploads `change` of household `id` as the phone's device, past the phone's checks, and
/// returns the server's codes for it.
fn upload_past_the_phone(
    server: &TestServer,
    phone: &Phone,
    id: HouseholdId,
    change: Vec<u8>,
) -> Vec<RejectCode> {
    let (status, resp) = raw_upload_with(&server.url, &phone.token(), id, vec![change], FEATURES);
    assert_eq!(status, 200);
    let resp = resp.expect("a sync answer");
    resp.rejected.iter().map(|r| r.code).collect()
}

/// The phone's household document as it stands, to make a change on it past the store.
fn copy_of(phone: &mut Phone, id: HouseholdId) -> HouseholdDoc {
    phone.store.document(id).unwrap().clone()
}

#[test]
fn a_household_in_a_grid_the_worker_does_not_have_is_refused_on_the_phone_and_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut w = server.phone(&dir.path().join("w.db"), &["g1"]);
    w.sync().unwrap();
    assert!(
        w.store.rights().unwrap().is_some(),
        "the server sent rights"
    );

    let foreign = new_household("g2", "9");
    assert_refused(
        w.store.create_household(&foreign),
        Subject::Household,
        RejectCode::OutOfScope,
    );
    assert!(!w.store.contains(foreign.id).unwrap());
    assert_eq!(w.store.pending_change_count().unwrap(), 0);
    // Its own grid is fine.
    let own = w.store.create_household(&new_household("g1", "1")).unwrap();
    assert!(w.sync().unwrap().rejected.is_empty());
    assert!(w.store.contains(own).unwrap());

    // The same creation made past the phone: the server refuses it with the same code.
    let mut doc = HouseholdDoc::create(&foreign, &w.author, now_ms()).unwrap();
    let hash = doc.heads()[0];
    let change = doc.change_bytes(&hash).unwrap();
    assert_eq!(
        upload_past_the_phone(&server, &w, foreign.id, change),
        vec![RejectCode::OutOfScope]
    );
}

#[test]
fn a_workers_close_of_a_work_order_is_refused_on_the_phone_and_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut w = server.phone(&dir.path().join("w.db"), &["g1"]);
    let id = w.store.create_household(&new_household("g1", "1")).unwrap();
    let demand = qiaomen_tests::sample_demand(&w.author, now_ms(), "路灯坏了");
    let d = demand.clone();
    w.store
        .edit_household(id, move |h| {
            h.demands.insert(d.id, d);
            Ok(())
        })
        .unwrap();
    w.sync().unwrap();
    // The worker takes the order through to its return visit: all theirs to take.
    let mut satisfied = NewStep::new(DemandAction::ReturnVisit, "已回访");
    satisfied.satisfaction = Some(Satisfaction::Satisfied);
    for step in [
        NewStep::new(DemandAction::Take, ""),
        NewStep::new(DemandAction::Finish, "已修好"),
        NewStep::new(DemandAction::Feedback, "已告知居民"),
        satisfied,
    ] {
        w.store.demand_step(id, demand.id, &step).unwrap();
    }
    assert!(w.sync().unwrap().rejected.is_empty());
    let grid = GridId::new("g1");
    let open = w.store.work_orders(&grid).unwrap().len();
    assert_eq!(open, 1);

    // Closing is a supervisor's step: refused at once, nothing pending, the order still listed.
    let close = NewStep::new(DemandAction::Close, "办结");
    assert_refused(
        w.store.demand_step(id, demand.id, &close),
        Subject::DemandStep,
        RejectCode::NotAllowed,
    );
    assert_eq!(w.store.pending_change_count().unwrap(), 0);
    assert_eq!(w.store.work_orders(&grid).unwrap().len(), open);
    assert_eq!(
        w.store.household(id).unwrap().demands[&demand.id].status,
        DemandStatus::ReturnVisited
    );

    // The same step made past the phone: the server refuses it with the same code.
    let mut doc = copy_of(&mut w, id);
    let hash = doc
        .demand_step(
            &w.author,
            now_ms(),
            demand.id,
            &close,
            &Deadlines::default(),
        )
        .unwrap();
    let change = doc.change_bytes(&hash).unwrap();
    assert_eq!(
        upload_past_the_phone(&server, &w, id, change),
        vec![RejectCode::NotAllowed]
    );
}

#[test]
fn an_edit_of_a_visit_returned_to_a_colleague_is_refused_on_the_phone_and_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut b = server.phone(&dir.path().join("b.db"), &["g1"]);
    let id = a.store.create_household(&new_household("g1", "1")).unwrap();
    let visit = sample_visit(&a.author, day("2026-11-15"), "第一次走访");
    a.store.record_visit(id, &visit, &[]).unwrap();
    a.sync().unwrap();

    // A supervisor returns A's visit for a fix.
    let boss = session(&server, "s-village", "v", Role::VillageSupervisor);
    let url = format!("{}/api/v1/households/{id}", server.url);
    let (_, view) = call("GET", &url, &boss, None);
    let (status, body) = call(
        "POST",
        &format!("{url}/reviews"),
        &boss,
        Some(
            serde_json::json!({"visit_id": visit.id.to_string(), "decision": "Returned",
                                "comment": "请补充用药情况", "heads": view["heads"]}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    b.sync().unwrap();
    assert!(b.store.fix_tasks().unwrap().is_empty(), "A's task, not B's");

    // B edits A's returned visit: refused at once, nothing pending, the note as it was.
    assert_refused(
        b.store.replace_note(id, visit.id, "B 改的"),
        Subject::Visits,
        RejectCode::NotAllowed,
    );
    assert_eq!(b.store.pending_change_count().unwrap(), 0);
    assert_eq!(
        b.store.household(id).unwrap().visits[&visit.id]
            .note
            .as_str(),
        "第一次走访"
    );

    // The same edit made past the phone: the server refuses it with the same code.
    let mut doc = copy_of(&mut b, id);
    let hash = doc
        .replace_note(&b.author, now_ms(), visit.id, "B 改的")
        .unwrap();
    let change = doc.change_bytes(&hash).unwrap();
    assert_eq!(
        upload_past_the_phone(&server, &b, id, change),
        vec![RejectCode::NotAllowed]
    );

    // A fixes their own visit: accepted, and the task closes.
    a.sync().unwrap();
    assert_eq!(a.store.fix_tasks().unwrap().len(), 1);
    a.store
        .replace_note(id, visit.id, "已补充用药情况")
        .unwrap();
    assert!(a.sync().unwrap().rejected.is_empty());
    assert!(a.store.fix_tasks().unwrap().is_empty());
}

#[test]
fn a_phone_without_rights_from_its_server_refuses_nothing_the_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut w = server.phone(&dir.path().join("w.db"), &["g1"]);
    w.sync().unwrap();
    // As after a sync with an older server: no rights held.
    w.store.set_rights(None).unwrap();
    let foreign = w.store.create_household(&new_household("g2", "9")).unwrap();
    assert_eq!(w.store.pending_change_count().unwrap(), 1);
    let report = w.sync().unwrap();
    let codes: Vec<RejectCode> = report.rejected.iter().map(|r| r.2).collect();
    assert_eq!(
        codes,
        vec![RejectCode::OutOfScope],
        "the server still refuses it"
    );
    assert!(!w.store.contains(foreign).unwrap());
    assert!(
        w.store.rights().unwrap().is_some(),
        "and sends the rights again"
    );
}

#[test]
fn a_new_role_reaches_the_phone_and_its_rules_follow() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let (user, code) = server.enrollment_code(&["g1"]);
    let mut w = Phone::enroll(&dir.path().join("w.db"), &server.url, &code).unwrap();
    let id = w.store.create_household(&new_household("g1", "1")).unwrap();
    w.sync().unwrap();
    let merge = |h: &mut Household| {
        h.status = HouseholdStatus::Merged;
        Ok(())
    };
    assert_refused(
        w.store.edit_household(id, merge),
        Subject::Status,
        RejectCode::NotAllowed,
    );
    // The worker becomes the grid's village supervisor too: same grids, new rights.
    server
        .access()
        .assign(user, "v", Role::VillageSupervisor, 0)
        .unwrap();
    w.sync().unwrap();
    assert!(w.store.edit_household(id, merge).unwrap());
    assert!(w.sync().unwrap().rejected.is_empty());
}
