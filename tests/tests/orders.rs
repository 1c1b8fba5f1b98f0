//! Work orders and reviews whose times and roles are the server's to vouch for: what only
//! the hotline import may set, demand ids unique on the server, step times checked against
//! the step before and the arrival (and lateness judged by arrival), reviews never of one's
//! own visit nor rewritten, demands withdrawn (never deleted), and deadlines per urgency on
//! the shipped work calendar. Real server in-process, phones on SQLite files.

use qiaomen_protocol::{
    calendar::Day,
    doc::actor_for,
    ids::*,
    schema::*,
    wire::RejectCode,
    workorder::{self, CLOCK_SKEW_MS, Deadlines, DemandAction, NewStep},
};
use qiaomen_server::access::Role;
use qiaomen_tests::{Phone, TestServer, call, raw_upload, sample_demand, sample_visit, session};
use serde_json::json;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A door number and what a modified app sets on the demand raised there.
type Forgery = (&'static str, Box<dyn Fn(&mut Demand)>);

fn today() -> Day {
    workorder::day_of(now_ms())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn household(phone: &mut Phone, grid: &str, door: &str) -> HouseholdId {
    phone
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new(grid),
            "测试村",
            door,
        ))
        .unwrap()
}

/// Adds `demand` to `h` on the phone, offline (as a visit's demand would be).
fn raise(phone: &mut Phone, h: HouseholdId, demand: &Demand) {
    let d = demand.clone();
    phone
        .store
        .edit_household(h, move |hh| {
            hh.demands.insert(d.id, d);
            Ok(())
        })
        .unwrap();
}

fn refusals(phone: &Phone, h: HouseholdId) -> Vec<String> {
    phone
        .store
        .rejected_changes()
        .unwrap()
        .into_iter()
        .filter(|r| r.household == h)
        .map(|r| r.code)
        .collect()
}

fn order(server: &TestServer, token: &str, demand: DemandId) -> (u16, serde_json::Value) {
    call(
        "GET",
        &format!("{}/api/v1/orders/{demand}", server.url),
        token,
        None,
    )
}

fn step(
    server: &TestServer,
    token: &str,
    demand: DemandId,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    call(
        "POST",
        &format!("{}/api/v1/orders/{demand}/steps", server.url),
        token,
        Some(body),
    )
}

/// Uploads one hand-made change of `h` from `phone`'s device, as a modified app would.
fn forge(
    server: &TestServer,
    phone: &mut Phone,
    h: HouseholdId,
    edit: impl FnOnce(&mut Household),
) -> Vec<RejectCode> {
    let base = phone.store.document(h).unwrap().save();
    let mut doc = qiaomen_protocol::doc::HouseholdDoc::load(&base).unwrap();
    doc.set_actor(actor_for(phone.author.device));
    let (_, hash) = doc
        .edit(&phone.author, now_ms(), |hh| {
            edit(hh);
            Ok(())
        })
        .unwrap();
    let hash = hash.expect("the edit changed something");
    let (status, resp) = raw_upload(
        &server.url,
        &phone.token(),
        h,
        vec![doc.change_bytes(&hash).unwrap()],
    );
    assert_eq!(status, 200);
    resp.expect("a sync answer")
        .rejected
        .iter()
        .map(|r| r.code)
        .collect()
}

#[test]
fn a_phone_cannot_give_a_demand_a_vouched_source_number_or_first_responsible_cadre() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let colleague = UserId::new();
    let cases: [Forgery; 4] = [
        ("21", Box::new(|d| d.source = Some(DemandSource::Hotline))),
        ("25", Box::new(|d| d.source = Some(DemandSource::Card))),
        (
            "22",
            Box::new(|d| d.external_ref = Some("12345-777".into())),
        ),
        (
            "23",
            Box::new(move |d| d.first_responsible = Some(colleague)),
        ),
    ];
    let mut forged = Vec::new();
    for (door, set) in &cases {
        let h = household(&mut worker, "g1", door);
        worker.sync().unwrap();
        let mut d = sample_demand(&worker.author, now_ms(), "路灯不亮");
        set(&mut d);
        // The phone refuses it at once, as the server would.
        let copy = d.clone();
        let refused = worker.store.edit_household(h, move |hh| {
            hh.demands.insert(copy.id, copy);
            Ok(())
        });
        assert!(
            matches!(
                refused,
                Err(qiaomen_client_core::StoreError::NotAllowed {
                    what: qiaomen_protocol::policy::Subject::Demands,
                    code: RejectCode::NotAllowed
                })
            ),
            "{refused:?}"
        );
        // Past the phone (as one that holds no rights): the server refuses it.
        worker.store.set_rights(None).unwrap();
        raise(&mut worker, h, &d);
        forged.push((h, d.id));
    }
    let plain_h = household(&mut worker, "g1", "24");
    let plain = sample_demand(&worker.author, now_ms(), "路灯不亮");
    raise(&mut worker, plain_h, &plain);
    worker.sync().unwrap();
    for (h, d) in &forged {
        assert_eq!(refusals(&worker, *h), ["not_allowed"]);
        assert!(!worker.store.household(*h).unwrap().demands.contains_key(d));
        assert_eq!(order(&server, &centre, *d).0, 404);
    }
    assert!(refusals(&worker, plain_h).is_empty());
    assert_eq!(order(&server, &centre, plain.id).0, 200);

    // The real 12345 order with the number the phone tried to take is imported, not skipped.
    let (status, report) = call(
        "POST",
        &format!("{}/api/v1/orders/import", server.url),
        &centre,
        Some(
            json!([{"ref": "12345-777", "grid": "g1", "door_number": "22",
                     "category": "其他", "text": "路灯不亮"}]),
        ),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["skipped"], 0);
    let id: DemandId = report["created"][0]["demand_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, o) = order(&server, &centre, id);
    assert_eq!(
        (
            o["order"]["source"].as_str(),
            o["order"]["external_ref"].as_str()
        ),
        (Some("hotline"), Some("12345-777"))
    );
}

#[test]
fn a_demand_id_belongs_to_one_household_on_the_server_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = TestServer::start(&data);
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut b = server.phone(&dir.path().join("b.db"), &["g2"]);
    let real_h = household(&mut a, "g1", "1");
    let real = sample_demand(&a.author, now_ms(), "屋顶漏雨");
    raise(&mut a, real_h, &real);
    a.sync().unwrap();

    // A copy under another household (same id) is refused, and the order stays the real one.
    let copy_h = household(&mut b, "g2", "1");
    let copy = Demand {
        raised_by: b.author.user,
        text: "复制".into(),
        ..real.clone()
    };
    raise(&mut b, copy_h, &copy);
    b.sync().unwrap();
    assert_eq!(refusals(&b, copy_h), ["not_allowed"]);
    let (status, o) = order(&server, &centre, real.id);
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order"]["household"], real_h.to_string());
    assert_eq!(o["text"], "屋顶漏雨");

    // After a restart the register is rebuilt from the log: still refused.
    server.stop();
    let server = TestServer::start(&data);
    let mut b = Phone::open(&dir.path().join("b.db"), &server.url);
    let again_h = household(&mut b, "g2", "2");
    raise(&mut b, again_h, &copy);
    b.sync().unwrap();
    assert_eq!(refusals(&b, again_h), ["not_allowed"]);
    // A fresh id is fine.
    let fresh = sample_demand(&b.author, now_ms(), "新诉求");
    raise(&mut b, again_h, &fresh);
    b.sync().unwrap();
    assert!(
        b.store
            .household(again_h)
            .unwrap()
            .demands
            .contains_key(&fresh.id)
    );
    assert_eq!(refusals(&b, again_h), ["not_allowed"]);
}

#[test]
fn a_step_dated_before_the_last_one_or_after_its_arrival_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let h = household(&mut worker, "g1", "5");
    let now = now_ms();
    let d = sample_demand(&worker.author, now, "水管破裂");
    raise(&mut worker, h, &d);
    worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Take, ""))
        .unwrap();
    worker.sync().unwrap();
    let taken_at = worker.store.household(h).unwrap().demands[&d.id].history[0].at_ms;

    // The phone refuses a step its clock puts before the last one, with a typed error.
    worker.store.set_clock(move || taken_at - DAY_MS);
    let err = worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Finish, "已修好"))
        .unwrap_err();
    assert!(
        err.to_string().contains("before the step before it"),
        "{err}"
    );

    // A modified app backdating the finish is refused by the server.
    let mut e = worker.store.household(h).unwrap().demands[&d.id].history[0].clone();
    e.action = Some(DemandAction::Finish);
    e.from = DemandStatus::Handling;
    e.to = DemandStatus::Done;
    e.comment = "已修好".into();
    e.at_ms = taken_at - DAY_MS;
    let backdated = e.clone();
    let codes = forge(&server, &mut worker, h, move |hh| {
        let dm = hh.demands.get_mut(&d.id).unwrap();
        dm.history.push(backdated);
        dm.status = DemandStatus::Done;
    });
    assert_eq!(codes, [RejectCode::NotAllowed]);

    // A finish dated a day ahead (a phone clock running fast) is refused at sync and rolled
    // back on the phone; within the allowance it is accepted.
    worker.store.set_clock(move || now_ms() + DAY_MS);
    worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Finish, "已修好"))
        .unwrap();
    worker.sync().unwrap();
    assert_eq!(refusals(&worker, h), ["not_allowed"]);
    let held = worker.store.household(h).unwrap().demands[&d.id].clone();
    assert_eq!(
        (held.status, held.history.len()),
        (DemandStatus::Handling, 1)
    );
    worker.store.set_clock(move || now_ms() + CLOCK_SKEW_MS / 2);
    worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Finish, "已修好"))
        .unwrap();
    worker.sync().unwrap();
    assert_eq!(refusals(&worker, h), ["not_allowed"]);
    assert_eq!(
        worker.store.household(h).unwrap().demands[&d.id].status,
        DemandStatus::Done
    );
}

/// Raises a demand at `raised` by the phone's clock, takes it an hour later and finishes it
/// the next day, all offline: on time by its own times.
fn offline_order(worker: &mut Phone, door: &str, raised: i64) -> (HouseholdId, Demand) {
    let h = household(worker, "g1", door);
    let d = sample_demand(&worker.author, raised, "井盖缺失");
    worker.store.set_clock(move || raised);
    raise(worker, h, &d);
    worker.store.set_clock(move || raised + 3600 * 1000);
    worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Take, ""))
        .unwrap();
    worker.store.set_clock(move || raised + DAY_MS);
    worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Finish, "已补装"))
        .unwrap();
    let record = worker.store.household(h).unwrap().demands[&d.id].clone();
    let claimed = workorder::replay(&record, &Deadlines::default());
    assert_eq!(claimed.resolved_on_time(), Some(true));
    (h, d)
}

#[test]
fn lateness_is_judged_by_arrival_when_the_phones_clock_disagrees_and_offline_work_keeps_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let raised = now_ms() - 10 * DAY_MS;
    // Worked offline ten days ago, synced now with a right clock: taken at its word.
    let mut honest = server.phone(&dir.path().join("honest.db"), &["g1"]);
    let (h1, offline) = offline_order(&mut honest, "8", raised);
    honest.store.set_clock(now_ms);
    honest.sync().unwrap();
    assert!(refusals(&honest, h1).is_empty());
    // The same times from a phone whose clock is still ten days behind when it syncs (its
    // `Date` header disagrees with the server's): judged by when the steps arrived.
    let mut skewed = server.phone(&dir.path().join("skewed.db"), &["g1"]);
    let (h2, backdated) = offline_order(&mut skewed, "9", raised);
    skewed.sync().unwrap();
    assert!(refusals(&skewed, h2).is_empty());

    let (_, o) = order(&server, &centre, offline.id);
    assert_eq!(o["order"]["on_time"], true, "{o}");
    let (_, o) = order(&server, &centre, backdated.id);
    assert_eq!(o["order"]["on_time"], false, "{o}");
}

#[test]
fn a_review_is_never_of_the_reviewers_own_visit_and_never_rewrites_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    // A village supervisor who also visits in g1, on a phone.
    let mut boss = server.phone(&dir.path().join("s.db"), &["g1"]);
    server
        .access()
        .assign(boss.author.user, "v", Role::VillageSupervisor, 0)
        .unwrap();
    let h = household(&mut worker, "g1", "3");
    let day = qiaomen_protocol::calendar::cycle_of(today());
    let theirs = sample_visit(&worker.author, day, "走访");
    worker.store.record_visit(h, &theirs, &[]).unwrap();
    worker.sync().unwrap();
    boss.sync().unwrap();
    let own = sample_visit(&boss.author, day, "督导亲自走访");
    boss.store.record_visit(h, &own, &[]).unwrap();
    boss.sync().unwrap();
    assert!(refusals(&boss, h).is_empty());

    let review = |by: &Phone, visit: VisitId, heads: Vec<String>| Review {
        id: ReviewId::new(),
        visit,
        decision: ReviewDecision::Approved,
        comment: String::new(),
        reviewer: by.author.user,
        device: by.author.device,
        at_ms: now_ms(),
        heads,
    };
    let heads = qiaomen_protocol::review::heads_hex(boss.store.document(h).unwrap());
    // Signing off one's own visit is refused.
    let mine = review(&boss, own.id, heads.clone());
    let codes = forge(&server, &mut boss, h, move |hh| {
        hh.reviews.insert(mine.id, mine);
    });
    assert_eq!(codes, [RejectCode::NotAllowed]);
    // Another supervisor signs off the worker's visit through the API.
    let other = session(&server, "s-town", "t", Role::TownSupervisor);
    let (status, body) = call(
        "POST",
        &format!("{}/api/v1/households/{h}/reviews", server.url),
        &other,
        Some(
            json!({"visit_id": theirs.id.to_string(), "decision": "Returned",
                    "comment": "缺照片", "heads": heads}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    boss.sync().unwrap();
    let first = boss
        .store
        .household(h)
        .unwrap()
        .reviews
        .into_values()
        .next()
        .unwrap();
    // Rewriting it as one's own approval is refused; a new review beside it is accepted.
    let rewritten = first.id;
    let me = boss.author;
    let codes = forge(&server, &mut boss, h, move |hh| {
        let r = hh.reviews.get_mut(&rewritten).unwrap();
        r.decision = ReviewDecision::Approved;
        r.reviewer = me.user;
        r.device = me.device;
    });
    assert_eq!(codes, [RejectCode::NotAllowed]);
    let heads = qiaomen_protocol::review::heads_hex(boss.store.document(h).unwrap());
    let second = review(&boss, theirs.id, heads);
    let codes = forge(&server, &mut boss, h, move |hh| {
        hh.reviews.insert(second.id, second);
    });
    assert!(codes.is_empty(), "{codes:?}");
    worker.sync().unwrap();
    let reviews = worker.store.household(h).unwrap().reviews;
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[&first.id].decision, ReviewDecision::Returned);
}

#[test]
fn a_demand_is_never_deleted_and_only_the_command_centre_withdraws_it_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let village = session(&server, "sv", "v", Role::VillageSupervisor);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let mut boss = server.phone(&dir.path().join("s.db"), &["g1"]);
    server
        .access()
        .assign(boss.author.user, "v", Role::VillageSupervisor, 0)
        .unwrap();
    let h = household(&mut worker, "g1", "4");
    let d = sample_demand(&worker.author, now_ms(), "重复登记的诉求");
    raise(&mut worker, h, &d);
    worker.sync().unwrap();
    boss.sync().unwrap();

    // A supervisor's device deleting the demand is refused.
    let codes = forge(&server, &mut boss, h, move |hh| {
        hh.demands.remove(&d.id);
    });
    assert_eq!(codes, [RejectCode::NotAllowed]);
    // A village supervisor may not withdraw it; the command centre needs a reason.
    let (status, body) = step(
        &server,
        &village,
        d.id,
        json!({"action": "withdraw", "comment": "重复"}),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_allowed")),
        "{body}"
    );
    let (status, body) = step(&server, &centre, d.id, json!({"action": "withdraw"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed")),
        "{body}"
    );
    let (status, o) = step(
        &server,
        &centre,
        d.id,
        json!({"action": "withdraw", "comment": "与另一工单重复"}),
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order"]["status"], "closed");
    assert_eq!(o["order"]["step"], serde_json::Value::Null);
    let last = o["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["action"].as_str(), last["comment"].as_str()),
        (Some("withdraw"), Some("与另一工单重复"))
    );
    // The phone keeps the demand, closed, with the reason in its history.
    worker.sync().unwrap();
    let held = worker.store.household(h).unwrap().demands[&d.id].clone();
    assert_eq!(held.status, DemandStatus::Closed);
    assert_eq!(
        held.history.last().unwrap().action,
        Some(DemandAction::Withdraw)
    );
}

#[test]
fn urgent_orders_have_their_own_limit_on_the_shipped_work_calendar() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let h = household(&mut worker, "g1", "6");
    worker.sync().unwrap();
    let cal = Deadlines::default().calendar;
    let mut due = Vec::new();
    for urgent in [false, true] {
        let (status, body) = call(
            "POST",
            &format!("{}/api/v1/households/{h}/demands", server.url),
            &centre,
            Some(json!({"category": "Housing", "text": "危房", "urgent": urgent})),
        );
        assert_eq!(status, 201, "{body}");
        let id: DemandId = body["demand_id"].as_str().unwrap().parse().unwrap();
        let (status, o) = step(&server, &centre, id, json!({"action": "take"}));
        assert_eq!(status, 200, "{o}");
        due.push(o["order"]["step_due"].as_str().unwrap().to_string());
    }
    // Taken at once: ordinary handling has 2 working days, urgent 1 — on the calendar with
    // the public holidays and make-up days.
    let start = today();
    assert_eq!(due[0], cal.add_working_days(start, 2).to_string());
    assert_eq!(due[1], cal.add_working_days(start, 1).to_string());
    // The phone receives the same calendar with the server's settings.
    worker.sync().unwrap();
    let (deadlines, _) = worker.store.workflow().unwrap();
    assert!(
        !deadlines
            .calendar
            .is_working_day("2026-10-01".parse().unwrap())
    );
    assert!(
        deadlines
            .calendar
            .is_working_day("2026-10-10".parse().unwrap())
    );
    assert!(
        !deadlines
            .calendar
            .is_working_day("2027-01-01".parse().unwrap())
    );
}
