//! Nothing a worker records is lost without a trace, against the real server on 127.0.0.1:
//! a visit made offline on a household that was moved meanwhile travels with it; a refused
//! change keeps its content on the phone (also after its household left the phone) and on
//! the server, for the grid's supervisors.

use qiaomen_protocol::{
    calendar::{self, Day},
    ids::*,
    schema::*,
};
use qiaomen_server::access::Role;
use qiaomen_tests::{Phone, TestServer, call, sample_demand, sample_visit};

fn today() -> Day {
    Day::from_unix_ms(qiaomen_server::access::now_ms(), 8 * 3600).unwrap()
}

fn new_household(grid: &str, door: &str) -> Household {
    Household::new(HouseholdId::new(), GridId::new(grid), "东村", door)
}

#[test]
fn an_offline_visit_to_a_household_moved_meanwhile_is_kept_and_travels_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    // The command centre (supervises every grid), a worker of g1 and one of g2.
    let mut centre = server.phone(&dir.path().join("centre.db"), &[]);
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut b = server.phone(&dir.path().join("b.db"), &["g2"]);
    let id = centre
        .store
        .create_household(&new_household("g1", "7"))
        .unwrap();
    centre.sync().unwrap();
    a.sync().unwrap();
    assert!(a.store.contains(id).unwrap());

    // Offline, a visits the household and raises a demand on it ...
    let mut visit = sample_visit(&a.author, calendar::cycle_of(today()), "屋顶漏雨，老人独居");
    let demand = sample_demand(&a.author, qiaomen_server::access::now_ms(), "请修屋顶");
    visit.demands_raised = vec![demand.id];
    a.store
        .record_visit(id, &visit, std::slice::from_ref(&demand))
        .unwrap();
    // ... while the town moves it to g2.
    centre
        .store
        .edit_household(id, |h| {
            h.grid = GridId::new("g2");
            Ok(())
        })
        .unwrap();
    assert!(centre.sync().unwrap().rejected.is_empty());

    // a's work was made on the version a saw (in g1): accepted, then the household leaves a.
    let report = a.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(a.store.pending_change_count().unwrap(), 0);
    assert!(a.store.rejected_changes().unwrap().is_empty());
    assert!(
        !a.store.contains(id).unwrap(),
        "g2's household leaves a's phone"
    );
    // It travels with the household: g2's worker has the visit and the demand.
    b.sync().unwrap();
    let h = b.store.household(id).unwrap();
    assert_eq!(h.grid, GridId::new("g2"));
    assert_eq!(h.visits[&visit.id].note.as_str(), "屋顶漏雨，老人独居");
    assert_eq!(h.demands[&demand.id].text, "请修屋顶");
    // And the server's record of the order finds it.
    let (status, order) = call(
        "GET",
        &format!("{}/api/v1/orders/{}", server.url, demand.id),
        &centre.token(),
        None,
    );
    assert_eq!(status, 200, "{order}");
}

#[test]
fn a_refused_visit_keeps_its_content_on_the_phone_and_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut centre = server.phone(&dir.path().join("centre.db"), &[]);
    let id = centre
        .store
        .create_household(&new_household("g1", "9"))
        .unwrap();
    centre.sync().unwrap();
    let (user, code) = server.enrollment_code(&["g1"]);
    let mut w = Phone::enroll(&dir.path().join("w.db"), &server.url, &code).unwrap();
    w.sync().unwrap();
    // The worker is taken off g1; the phone does not know yet and records a visit after
    // that: nobody could accept it (the worker holds g1 neither now nor when they made it).
    let db = server.access();
    db.unassign(user, "g1", qiaomen_server::access::now_ms())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let visit = sample_visit(
        &w.author,
        calendar::cycle_of(today()),
        "张大爷说腿疼，想申请轮椅",
    );
    w.store.record_visit(id, &visit, &[]).unwrap();
    let report = w.sync().unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(
        !w.store.contains(id).unwrap(),
        "the household left the phone"
    );

    // On the phone: the refusal, why in Chinese, and what was typed — after the household left.
    let refused = w.store.rejected_changes().unwrap();
    assert_eq!(refused.len(), 1);
    let r = &refused[0];
    assert_eq!((r.household, r.code.as_str()), (id, "out_of_scope"));
    assert!(r.reason.contains("网格"), "{}", r.reason);
    assert_eq!(r.content.visits.len(), 1);
    assert_eq!(r.content.visits[0].id, visit.id);
    assert_eq!(r.content.visits[0].note, "张大爷说腿疼，想申请轮椅");
    assert_eq!(r.content.visits[0].visit_day, visit.visit_day);
    // The app clears it once seen.
    assert!(w.store.clear_rejected(id, r.hash).unwrap());
    assert!(w.store.rejected_changes().unwrap().is_empty());

    // On the server: kept, not applied, for the grid's supervisors.
    let village = qiaomen_tests::session(&server, "sup-v", "v", Role::VillageSupervisor);
    let (status, list) = call(
        "GET",
        &format!("{}/api/v1/refused?unit=v", server.url),
        &village,
        None,
    );
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["household"], id.to_string());
    assert_eq!(list[0]["grid"], "g1");
    assert_eq!(list[0]["code"], "out_of_scope");
    assert_eq!(list[0]["user"], user.to_string());
    assert_eq!(
        list[0]["content"]["visits"][0]["note"],
        "张大爷说腿疼，想申请轮椅"
    );
    // The admin exports them, one JSON object a line.
    let export = dir.path().join("refused.jsonl");
    server
        .admin(qiaomen_server::admin::AdminCommand::Refused(
            qiaomen_server::admin::RefusedCommand::Export {
                grid: Some("g1".into()),
                to: Some(export.clone()),
            },
        ))
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["content"]["visits"][0]["note"],
        "张大爷说腿疼，想申请轮椅"
    );
    assert_eq!(lines[0]["code"], "out_of_scope");
    // The page shows the same, in Chinese.
    let page = qiaomen_tests::block_on(async {
        reqwest::Client::new()
            .get(format!("{}/refused", server.url))
            .header("cookie", format!("qiaomen_session={village}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(page.contains("未接收的修改"), "page: {page:?}");
    assert!(page.contains("张大爷说腿疼，想申请轮椅"), "{page}");
    assert!(page.contains("不在你负责的网格"), "{page}");
    let stored = centre.store.household(id).unwrap();
    centre.sync().unwrap();
    assert_eq!(centre.store.household(id).unwrap().visits, stored.visits);
    assert!(
        !centre
            .store
            .household(id)
            .unwrap()
            .visits
            .contains_key(&visit.id),
        "refused: kept, never applied"
    );
    // A grid worker is no supervisor: they see none of it.
    let mut other = server.phone(&dir.path().join("o.db"), &["g1"]);
    other.sync().unwrap();
    let (status, list) = call(
        "GET",
        &format!("{}/api/v1/refused", server.url),
        &other.token(),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list:?}");
}

#[test]
fn visits_for_a_day_to_come_or_a_cycle_before_the_assignment_are_refused_on_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut centre = server.phone(&dir.path().join("centre.db"), &[]);
    let id = centre
        .store
        .create_household(&new_household("g1", "3"))
        .unwrap();
    centre.sync().unwrap();
    // A worker assigned to g1 just now (not since the org began).
    let (user, code) = {
        let db = server.access();
        let user = db.add_user("w-new", "新网格员").unwrap();
        db.assign(
            user,
            "g1",
            Role::GridWorker,
            qiaomen_server::access::now_ms(),
        )
        .unwrap();
        (user, db.issue_enrollment_code(user).unwrap())
    };
    let mut w = Phone::enroll(&dir.path().join("w.db"), &server.url, &code).unwrap();
    assert_eq!(w.author.user, user);
    w.sync().unwrap();
    let this_cycle = calendar::cycle_of(today());
    let next_cycle = calendar::next_visit_day(this_cycle);
    let last_cycle = calendar::cycle_of(this_cycle.add_days(-1));

    // The phone refuses a visit day to come at once, naming the field; nothing is pending.
    let early = sample_visit(&w.author, next_cycle, "提前记录");
    let err = w.store.record_visit(id, &early, &[]).unwrap_err();
    assert!(format!("{err}").contains("visit_day"), "{err}");
    assert_eq!(w.store.pending_change_count().unwrap(), 0);
    // A phone whose clock runs a month ahead takes it; the server, by its own clock, does not.
    let ahead = qiaomen_server::access::now_ms() + 31 * 86_400_000;
    w.store.set_clock(move || ahead);
    let early = sample_visit(&w.author, next_cycle, "提前记录");
    w.store.record_visit(id, &early, &[]).unwrap();
    w.store.set_clock(qiaomen_server::access::now_ms);
    let report = w.sync().unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].2.name(), "invalid_field");

    // A visit for the cycle before the worker's assignment: the phone refuses it at once ...
    let before = sample_visit(&w.author, last_cycle, "接手前的走访");
    let err = w.store.record_visit(id, &before, &[]).unwrap_err();
    assert!(format!("{err}").contains("visit_day"), "{err}");
    assert_eq!(w.store.pending_change_count().unwrap(), 0);
    // ... and the server, when it comes past the phone (one holding no rights): refused, and
    // kept on the phone with what it held.
    let rights = w.store.rights().unwrap();
    w.store.set_rights(None).unwrap();
    w.store.record_visit(id, &before, &[]).unwrap();
    w.store.set_rights(rights.as_ref()).unwrap();
    let report = w.sync().unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let refused = w.store.rejected_changes().unwrap();
    assert!(
        refused
            .iter()
            .any(|r| r.content.visits.iter().any(|v| v.note == "接手前的走访")),
        "{refused:?}"
    );
    // This cycle's visit is the worker's to record.
    let now_visit = sample_visit(&w.author, this_cycle, "本期走访");
    w.store.record_visit(id, &now_visit, &[]).unwrap();
    assert!(w.sync().unwrap().rejected.is_empty());
    centre.sync().unwrap();
    let visits = centre.store.household(id).unwrap().visits;
    assert!(visits.contains_key(&now_visit.id));
    assert!(!visits.contains_key(&before.id) && !visits.contains_key(&early.id));
}

/// Noon (China time) of `day`, in ms.
fn noon(day: Day) -> i64 {
    let base = Day::ymd(1970, 1, 1).unwrap();
    (day.0 - base.0).whole_days() * 86_400_000 + 4 * 3_600_000
}

/// The unit's tally and its grids' tallies from a coverage answer.
fn tallies(report: &serde_json::Value) -> serde_json::Value {
    serde_json::json!([report["unit"]["tally"], report["households"]])
}

#[test]
fn past_figures_stay_put_when_households_are_registered_and_moved_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let town = qiaomen_tests::session(&server, "st", "t", Role::TownSupervisor);
    // A visit day whose catch-up window has closed.
    let past = calendar::cycle_of(today().add_days(-20));
    let mut centre = server.phone(&dir.path().join("centre.db"), &[]);
    let before = noon(past.add_days(-1));
    centre.store.set_clock(move || before);
    let g1: Vec<HouseholdId> = (0..4)
        .map(|i| {
            centre
                .store
                .create_household(&new_household("g1", &format!("1-{i}")))
                .unwrap()
        })
        .collect();
    let g2: Vec<HouseholdId> = (0..3)
        .map(|i| {
            centre
                .store
                .create_household(&new_household("g2", &format!("2-{i}")))
                .unwrap()
        })
        .collect();
    centre.store.set_clock(qiaomen_server::access::now_ms);
    centre.sync().unwrap();
    let mut w1 = server.phone(&dir.path().join("w1.db"), &["g1"]);
    let mut w2 = server.phone(&dir.path().join("w2.db"), &["g2"]);
    w1.sync().unwrap();
    w2.sync().unwrap();
    for id in &g1[..3] {
        let v = sample_visit(&w1.author, past, "走访");
        w1.store.record_visit(*id, &v, &[]).unwrap();
    }
    let v = sample_visit(&w2.author, past, "走访");
    w2.store.record_visit(g2[0], &v, &[]).unwrap();
    assert!(w1.sync().unwrap().rejected.is_empty());
    assert!(w2.sync().unwrap().rejected.is_empty());
    // As if all that had reached the server in its time.
    let server = server.with_log_received_earlier(40);

    let read = |server: &TestServer| {
        let get = |path: String| {
            let (status, body) = call("GET", &format!("{}{path}", server.url), &town, None);
            assert_eq!(status, 200, "{path}: {body}");
            body
        };
        let c1 = tallies(&get(format!("/api/v1/coverage?unit=g1&day={past}")));
        let c2 = tallies(&get(format!("/api/v1/coverage?unit=g2&day={past}")));
        let mut stats = get(format!("/api/v1/stats?unit=v&from={past}&to={past}"));
        stats["today"] = serde_json::Value::Null;
        stats["behind"] = serde_json::Value::Null;
        let ranking = get(format!("/api/v1/ranking?unit=v&from={past}&to={past}"));
        (c1, c2, stats, ranking)
    };
    let then = read(&server);
    // Recounted from the raw records: g1 had 4 households, 3 visited; g2 had 3, 1 visited.
    assert_eq!(then.0[0]["due"], 4, "{}", then.0);
    assert_eq!(then.0[0]["visited"], 3);
    assert_eq!(then.0[0]["missed"], 1);
    assert_eq!(then.1[0]["due"], 3, "{}", then.1);
    assert_eq!(then.1[0]["visited"], 1);
    assert_eq!(then.1[0]["missed"], 2);

    // Now: five households are registered in g1, a visited household of g1 moves to g2 and
    // a missed one of g2 moves to g1.
    let mut centre = Phone::open(&dir.path().join("centre.db"), &server.url);
    let new: Vec<HouseholdId> = (0..5)
        .map(|i| {
            centre
                .store
                .create_household(&new_household("g1", &format!("new-{i}")))
                .unwrap()
        })
        .collect();
    centre.sync().unwrap();
    for (id, to) in [(g1[0], "g2"), (g2[2], "g1")] {
        centre
            .store
            .edit_household(id, |h| {
                h.grid = GridId::new(to);
                Ok(())
            })
            .unwrap();
    }
    assert!(centre.sync().unwrap().rejected.is_empty());

    let now = read(&server);
    assert_eq!(now.0, then.0, "g1's past coverage is unchanged");
    assert_eq!(now.1, then.1, "g2's past coverage is unchanged");
    assert_eq!(now.2, then.2, "the past period's statistics are unchanged");
    assert_eq!(
        now.3, then.3,
        "the past period's red/black list is unchanged"
    );

    // From the next visit day, the households count where they are now.
    let next = calendar::next_visit_day(calendar::cycle_of(today()));
    let (_, c) = call(
        "GET",
        &format!("{}/api/v1/coverage?unit=g1&day={next}", server.url),
        &town,
        None,
    );
    let doors: Vec<&str> = c["households"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["door_number"].as_str().unwrap())
        .collect();
    assert_eq!(c["unit"]["tally"]["due"], 4 - 1 + 1 + new.len(), "{c}");
    assert!(
        doors.contains(&"2-2") && !doors.contains(&"1-0"),
        "{doors:?}"
    );
}

/// The month played as one scenario: two grids, a closed visit day, registrations and moves
/// after it, a retired and a revoked phone, an oversized note, a backdated step. Every visit
/// typed on a phone ends on the server or, with its content, in the refusals of the phone and
/// of the server; a closed day's figures stay put.
#[test]
fn a_month_in_two_grids_loses_no_visit_and_keeps_the_closed_days_figures() {
    use qiaomen_client_core::SyncError;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let town = qiaomen_tests::session(&server, "st", "t", Role::TownSupervisor);
    let past = calendar::cycle_of(today().add_days(-20));
    let this = calendar::cycle_of(today());
    let path = |name: &str| dir.path().join(format!("{name}.db"));
    // Registered before the closed day: three households in each grid.
    let mut centre = server.phone(&path("centre"), &[]);
    let before = noon(past.add_days(-1));
    centre.store.set_clock(move || before);
    let mut grid = |g: &str| -> Vec<HouseholdId> {
        (0..3)
            .map(|i| {
                centre
                    .store
                    .create_household(&new_household(g, &format!("{g}-{i}")))
                    .unwrap()
            })
            .collect()
    };
    let (h1, h2) = (grid("g1"), grid("g2"));
    centre.store.set_clock(qiaomen_server::access::now_ms);
    centre.sync().unwrap();
    for name in ["w1", "w3"] {
        let _ = server.phone(&path(name), &["g1"]);
    }
    for name in ["w2", "w4"] {
        let _ = server.phone(&path(name), &["g2"]);
    }
    // Every visit typed, with its note: it must end on the server or among the refusals.
    type Typed = Vec<(String, VisitId, String)>;
    let mut typed: Typed = Vec::new();
    fn visit(typed: &mut Typed, p: &mut Phone, who: &str, id: HouseholdId, day: Day, note: &str) {
        let v = sample_visit(&p.author, day, note);
        p.store.record_visit(id, &v, &[]).unwrap();
        typed.push((who.to_string(), v.id, note.to_string()));
    }
    // The closed visit day.
    let mut w1 = Phone::open(&path("w1"), &server.url);
    let mut w2 = Phone::open(&path("w2"), &server.url);
    w1.sync().unwrap();
    w2.sync().unwrap();
    visit(&mut typed, &mut w1, "w1", h1[0], past, "上期走访一");
    visit(&mut typed, &mut w1, "w1", h1[1], past, "上期走访二");
    visit(&mut typed, &mut w2, "w2", h2[0], past, "上期走访三");
    w1.sync().unwrap();
    w2.sync().unwrap();
    let server = server.with_log_received_earlier(40);
    let read_past = |server: &TestServer| {
        let get = |unit: &str| {
            let (status, body) = call(
                "GET",
                &format!("{}/api/v1/coverage?unit={unit}&day={past}", server.url),
                &town,
                None,
            );
            assert_eq!(status, 200, "{body}");
            tallies(&body)
        };
        let (_, stats) = call(
            "GET",
            &format!("{}/api/v1/ranking?unit=v&from={past}&to={past}", server.url),
            &town,
            None,
        );
        (get("g1"), get("g2"), stats)
    };
    let closed = read_past(&server);
    assert_eq!(
        (
            closed.0[0]["visited"].clone(),
            closed.1[0]["visited"].clone()
        ),
        (serde_json::json!(2), serde_json::json!(1))
    );

    // This visit day.
    let open = |name: &str| Phone::open(&path(name), &server.url);
    let (mut centre, mut w1, mut w2, mut w3, mut w4) = (
        open("centre"),
        open("w1"),
        open("w2"),
        open("w3"),
        open("w4"),
    );
    for p in [&mut centre, &mut w1, &mut w2, &mut w3, &mut w4] {
        p.sync().unwrap();
    }
    // w1 visits offline a household the town moves to g2 meanwhile: kept, it travels.
    visit(
        &mut typed,
        &mut w1,
        "w1",
        h1[2],
        this,
        "本期走访，户已调整网格",
    );
    centre
        .store
        .edit_household(h1[2], |h| {
            h.grid = GridId::new("g2");
            Ok(())
        })
        .unwrap();
    assert!(centre.sync().unwrap().rejected.is_empty());
    assert!(w1.sync().unwrap().rejected.is_empty());
    // An oversized note is refused on the phone, before anything is stored.
    let mut big = sample_visit(&w1.author, this, "");
    big.note = autosurgeon::Text::with_value("字".repeat(10_000));
    let err = w1.store.record_visit(h1[0], &big, &[]).unwrap_err();
    assert!(format!("{err}").contains("note"), "{err}");
    // A step backdated before the one before it is refused on the phone too.
    let demand = sample_demand(&w2.author, qiaomen_server::access::now_ms(), "路灯不亮");
    let mut raised = sample_visit(&w2.author, this, "本期走访，提诉求");
    raised.demands_raised = vec![demand.id];
    w2.store
        .record_visit(h2[1], &raised, std::slice::from_ref(&demand))
        .unwrap();
    typed.push(("w2".into(), raised.id, "本期走访，提诉求".into()));
    w2.store
        .demand_step(
            h2[1],
            demand.id,
            &qiaomen_protocol::workorder::NewStep::new(
                qiaomen_protocol::workorder::DemandAction::Take,
                "",
            ),
        )
        .unwrap();
    let earlier = qiaomen_server::access::now_ms() - 86_400_000;
    w2.store.set_clock(move || earlier);
    assert!(
        w2.store
            .demand_step(
                h2[1],
                demand.id,
                &qiaomen_protocol::workorder::NewStep::new(
                    qiaomen_protocol::workorder::DemandAction::Finish,
                    "已修好",
                ),
            )
            .is_err()
    );
    w2.store.set_clock(qiaomen_server::access::now_ms);
    assert!(w2.sync().unwrap().rejected.is_empty());
    // w3's phone is handed in with two visits not yet synced: uploaded, then wiped.
    visit(&mut typed, &mut w3, "w3", h1[0], this, "交接前走访一");
    visit(&mut typed, &mut w3, "w3", h1[1], this, "交接前走访二");
    server.access().retire_device(w3.author.device).unwrap();
    assert!(matches!(w3.sync(), Err(SyncError::Retired { wiped: true })));
    // w4's phone is lost after it synced a visit: the admin sees it reported nothing left,
    // revokes it, and it is wiped at once. (What a lost phone typed after its last sync is
    // lost with it; the admin saw what it last reported.)
    visit(&mut typed, &mut w4, "w4", h2[2], this, "挂失前已同步");
    w4.sync().unwrap();
    let row = server
        .access()
        .devices()
        .unwrap()
        .into_iter()
        .find(|d| d.device == w4.author.device.to_string())
        .unwrap();
    assert_eq!(row.pending, Some(0));
    assert!(row.last_sync_ms.is_some());
    server.access().revoke_device(w4.author.device).unwrap();
    assert!(matches!(w4.sync(), Err(SyncError::Revoked)));
    // A worker taken off g2 who did not know yet: the visit is refused and kept.
    let (user, code) = server.enrollment_code(&["g2"]);
    let mut w5 = Phone::enroll(&path("w5"), &server.url, &code).unwrap();
    w5.sync().unwrap();
    server
        .access()
        .unassign(user, "g2", qiaomen_server::access::now_ms())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    visit(&mut typed, &mut w5, "w5", h2[0], this, "调离后补录");
    assert_eq!(w5.sync().unwrap().rejected.len(), 1);
    // After the closed day: new households in g1, a household of g2 moved to g1.
    for i in 0..3 {
        centre
            .store
            .create_household(&new_household("g1", &format!("new-{i}")))
            .unwrap();
    }
    centre
        .store
        .edit_household(h2[0], |h| {
            h.grid = GridId::new("g1");
            Ok(())
        })
        .unwrap();
    assert!(centre.sync().unwrap().rejected.is_empty());

    // Every visit typed is on the server, or refused with its content on the phone and on
    // the server.
    let (status, refused) = call(
        "GET",
        &format!("{}/api/v1/refused?unit=t", server.url),
        &town,
        None,
    );
    assert_eq!(status, 200, "{refused}");
    let refused_notes: Vec<&str> = refused
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["content"]["visits"].as_array().unwrap())
        .map(|v| v["note"].as_str().unwrap())
        .collect();
    let on_phone = w5.store.rejected_changes().unwrap();
    let mut held: std::collections::HashMap<VisitId, String> = Default::default();
    for id in h1.iter().chain(&h2) {
        for (vid, v) in centre.store.household(*id).unwrap().visits {
            held.insert(vid, v.note.as_str().to_string());
        }
    }
    for (who, id, note) in &typed {
        match held.get(id) {
            Some(n) => assert_eq!(n, note, "{who}"),
            None => {
                assert!(refused_notes.contains(&note.as_str()), "{who}: {note} lost");
                assert!(
                    on_phone.iter().any(|r| r
                        .content
                        .visits
                        .iter()
                        .any(|v| v.id == *id && v.note == *note)),
                    "{who}: {note} not listed on the phone"
                );
            }
        }
    }
    assert_eq!(typed.len(), 9);
    assert_eq!(held.len(), 8, "all but the refused one");
    // The closed day's figures stay put.
    assert_eq!(read_past(&server), closed);
}
