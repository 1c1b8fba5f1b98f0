//! The grid workflows end to end: a demand's work order going round the loop between the
//! grid's phone, the command centre and two teams (dispatch, bounce, arbitration, chase-up,
//! extension, an offline feedback and return visit, a stale step refused), hotline imports,
//! the coverage report, and statistics recomputed here from the raw records.

use std::collections::BTreeMap;

use qiaomen_protocol::{
    calendar::{self, Day},
    coverage::{self, CoverageInput, CoveragePolicy, CoverageState},
    ids::*,
    schema::*,
    wire::RejectCode,
    workorder::{self, Deadlines, DemandAction, NewStep},
};
use qiaomen_server::access::{Role, org::UnitKind};
use qiaomen_tests::{
    Phone, TestServer, by_now, call, noon, now_ms, post_body, sample_visit, session, today,
};
use serde_json::{Value, json};

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

fn demand(by: UserId, at_ms: i64, text: &str) -> Demand {
    let author = qiaomen_protocol::doc::Author {
        user: by,
        device: DeviceId::new(),
    };
    qiaomen_tests::sample_demand(&author, at_ms, text)
}

/// Records a visit for `day` on `h` raising `demands`.
fn visit_with(
    phone: &mut Phone,
    h: HouseholdId,
    day: Day,
    outcome: VisitOutcome,
    demands: &[Demand],
) {
    let mut v = sample_visit(&phone.author, day, "");
    v.outcome = outcome;
    v.demands_raised = demands.iter().map(|d| d.id).collect();
    phone.store.record_visit(h, &v, demands).unwrap();
}

fn step(server: &TestServer, token: &str, demand: DemandId, body: Value) -> (u16, Value) {
    call(
        "POST",
        &format!("{}/api/v1/orders/{demand}/steps", server.url),
        token,
        Some(body),
    )
}

fn order(server: &TestServer, token: &str, demand: DemandId) -> (u16, Value) {
    call(
        "GET",
        &format!("{}/api/v1/orders/{demand}", server.url),
        token,
        None,
    )
}

/// The status of a GET of `path` with `token`.
fn get_status(server: &TestServer, path: &str, token: &str) -> u16 {
    call("GET", &format!("{}{path}", server.url), token, None).0
}

fn add_team(server: &TestServer, id: &str) {
    server
        .access()
        .add_unit(
            id,
            UnitKind::Team,
            Some("c"),
            id,
            "2026-01-01".parse().unwrap(),
        )
        .unwrap();
}

/// The refusal codes the phone holds for `h`.
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

/// A household of g1 with a demand raised on a visit of the current cycle, offline, synced:
/// where an order's life starts.
fn a_demand_raised_on_a_visit(worker: &mut Phone, text: &str) -> (HouseholdId, Demand) {
    let h = household(worker, "g1", "7");
    let d = demand(worker.author.user, by_now(noon(today())), text);
    visit_with(
        worker,
        h,
        calendar::cycle_of(today()),
        VisitOutcome::Met,
        std::slice::from_ref(&d),
    );
    worker.sync().unwrap();
    (h, d)
}

#[test]
fn a_demand_goes_round_the_loop_between_the_phone_the_command_centre_and_the_teams() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    add_team(&server, "team-water");
    add_team(&server, "team-roads");
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let village = session(&server, "sv", "v", Role::VillageSupervisor);
    let water = session(&server, "t-water", "team-water", Role::TeamMember);
    let roads = session(&server, "t-roads", "team-roads", Role::TeamMember);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);

    // Raised on a visit, offline; synced.
    let (h, d) = a_demand_raised_on_a_visit(&mut worker, "门前排水沟堵塞");

    let (status, o) = order(&server, &centre, d.id);
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order"]["status"], "raised");
    assert_eq!(o["order"]["step"], "triage");
    assert_eq!(o["text"], "门前排水沟堵塞");
    assert!(
        o["may"].as_array().unwrap().contains(&json!("dispatch")),
        "{o}"
    );

    // The worker may not dispatch: the phone refuses the step at once; taken offline past
    // it (as by a phone holding no rights), it is refused on sync with its reason, and
    // rolled back on the phone.
    let dispatch = NewStep {
        unit: Some("team-water"),
        ..NewStep::new(DemandAction::Dispatch, "")
    };
    assert!(matches!(
        worker.store.demand_step(h, d.id, &dispatch),
        Err(qiaomen_client_core::StoreError::NotAllowed { .. })
    ));
    worker.store.set_rights(None).unwrap();
    worker.store.demand_step(h, d.id, &dispatch).unwrap();
    worker.sync().unwrap();
    assert_eq!(refusals(&worker, h), ["not_allowed"]);
    assert_eq!(
        worker.store.household(h).unwrap().demands[&d.id].status,
        DemandStatus::Raised
    );

    // Teams see nothing before dispatch.
    assert_eq!(order(&server, &water, d.id).0, 404);
    // The command centre dispatches to the water team; a dispatch to a grid is refused.
    let (status, body) = step(
        &server,
        &centre,
        d.id,
        json!({"action": "dispatch", "team": "g2"}),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_such_team"))
    );
    let (status, o) = step(
        &server,
        &centre,
        d.id,
        json!({"action": "dispatch", "team": "team-water", "tier": "coordinate", "comment": "请水利局处理"}),
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(
        (o["order"]["status"].as_str(), o["order"]["team"].as_str()),
        (Some("dispatched"), Some("team-water"))
    );

    // The roads team can neither see nor accept it; the water team reads the order but not
    // the household record, and lists it among its orders.
    assert_eq!(
        step(&server, &roads, d.id, json!({"action": "accept"})).0,
        404
    );
    let (status, _) = call(
        "GET",
        &format!("{}/api/v1/households/{h}", server.url),
        &water,
        None,
    );
    assert_eq!(status, 404);
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/orders", server.url),
        &water,
        None,
    );
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/orders", server.url),
        &roads,
        None,
    );
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");

    // A bounce needs a reason; with one, the order goes back for arbitration.
    // A bounce needs a reason (the request's schema says so).
    let (status, body) = step(&server, &water, d.id, json!({"action": "bounce"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed")),
        "{body}"
    );
    let (status, o) = step(
        &server,
        &water,
        d.id,
        json!({"action": "bounce", "comment": "属道路养护,非水利"}),
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order"]["status"], "bounced");
    // The team still sees the order it bounced but may not re-dispatch it; the command
    // centre arbitrates to the roads team.
    assert_eq!(
        step(
            &server,
            &water,
            d.id,
            json!({"action": "dispatch", "team": "team-roads"})
        )
        .0,
        403
    );
    let (status, o) = step(
        &server,
        &centre,
        d.id,
        json!({"action": "dispatch", "team": "team-roads"}),
    );
    assert_eq!(status, 200, "{o}");
    // The water team lost it; the roads team accepts, is chased up, gets an extension,
    // starts and finishes.
    assert_eq!(order(&server, &water, d.id).0, 404);
    for (token, body) in [
        (&roads, json!({"action": "accept"})),
        (&centre, json!({"action": "chase_up", "comment": "请加快"})),
        (
            &centre,
            json!({"action": "extend", "extend_days": 3, "comment": "需协调施工队"}),
        ),
        (&roads, json!({"action": "start"})),
        (
            &roads,
            json!({"action": "finish", "comment": "已疏通排水沟"}),
        ),
    ] {
        let (status, o) = step(&server, token, d.id, body.clone());
        assert_eq!(status, 200, "{body}: {o}");
    }
    // The roads team may not close it or do the return visit.
    assert_eq!(
        step(&server, &roads, d.id, json!({"action": "feedback"})).0,
        403
    );
    let (_, o) = order(&server, &centre, d.id);
    assert_eq!(o["order"]["status"], "done");
    assert_eq!(o["order"]["chase_ups"], 1);
    assert_eq!(o["order"]["bounces"], 1);
    let handle = o["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "handle")
        .unwrap()
        .clone();
    assert_eq!(handle["extended_days"], 3, "{o}");

    // The phone gets the history on its next sync and lists the order as waiting for it.
    worker.sync().unwrap();
    let lines = worker.store.work_orders(&GridId::new("g1")).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].waits_for, workorder::StepKind::Feedback);
    let history = &worker.store.household(h).unwrap().demands[&d.id].history;
    // dispatch, bounce, dispatch, accept, chase-up, extend, start, finish
    assert_eq!(history.len(), 8);

    // Stale: the worker tells the resident offline while the village supervisor records the
    // feedback on the server; the worker's step is refused as stale and rolled back.
    worker
        .store
        .demand_step(h, d.id, &NewStep::new(DemandAction::Feedback, "已电话告知"))
        .unwrap();
    let (status, _) = step(
        &server,
        &village,
        d.id,
        json!({"action": "feedback", "comment": "已上门告知"}),
    );
    assert_eq!(status, 200);
    // A client that does not announce the feature bit is told `not_allowed` instead of the
    // code it could not decode; the reference phone announces it and is told `stale_order`.
    let token = worker.store.credentials().unwrap().unwrap().token;
    let stale: Vec<Vec<u8>> = worker
        .store
        .pending_changes(h)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    let (status, answer) = qiaomen_tests::raw_upload(&server.url, &token, h, stale);
    assert_eq!(status, 200);
    let codes: Vec<RejectCode> = answer.unwrap().rejected.iter().map(|r| r.code).collect();
    assert_eq!(codes, [RejectCode::NotAllowed]);
    worker.sync().unwrap();
    assert_eq!(refusals(&worker, h), ["not_allowed", "stale_order"]);
    worker.sync().unwrap();
    assert_eq!(
        worker.store.household(h).unwrap().demands[&d.id].status,
        DemandStatus::FedBack
    );

    // The return visit, offline, syncs back; the worker may not close the order.
    worker
        .store
        .demand_step(
            h,
            d.id,
            &NewStep {
                satisfaction: Some(Satisfaction::Satisfied),
                ..NewStep::new(DemandAction::ReturnVisit, "群众满意")
            },
        )
        .unwrap();
    worker.sync().unwrap();
    let (_, o) = order(&server, &village, d.id);
    assert_eq!(o["order"]["status"], "return_visited", "{o}");
    assert_eq!(o["order"]["satisfaction"], "satisfied");
    assert!(!o["may"].as_array().unwrap().is_empty());
    let close = NewStep::new(DemandAction::Close, "");
    assert!(matches!(
        worker.store.demand_step(h, d.id, &close),
        Err(qiaomen_client_core::StoreError::NotAllowed { .. })
    ));
    worker.store.set_rights(None).unwrap();
    worker.store.demand_step(h, d.id, &close).unwrap();
    worker.sync().unwrap();
    assert_eq!(
        refusals(&worker, h),
        ["not_allowed", "stale_order", "not_allowed"]
    );
    let (status, o) = step(&server, &village, d.id, json!({"action": "close"}));
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order"]["status"], "closed");
    assert_eq!(o["order"]["step"], Value::Null);
    // Every step is in the history with who took it; names for people.
    let who: Vec<(&str, &str)> = o["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["by_name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(who.len(), 11, "{who:?}");
    assert_eq!(who[1], ("bounce", "督导"));
    assert_eq!(who[9].0, "return_visit");
    // A closed order takes no more steps.
    let (status, body) = step(&server, &centre, d.id, json!({"action": "chase_up"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_step")),
        "{body}"
    );
    // The phone converges on the closed order.
    worker.sync().unwrap();
    assert_eq!(
        worker.store.household(h).unwrap().demands[&d.id].status,
        DemandStatus::Closed
    );
    assert!(
        worker
            .store
            .work_orders(&GridId::new("g1"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn hotline_orders_import_from_csv_and_json_once_and_bad_rows_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let h = household(&mut worker, "g1", "12");
    household(&mut worker, "g1", "13");
    worker.sync().unwrap();

    let import = format!("{}/api/v1/orders/import", server.url);
    let post = |content_type: &str, body: &str| post_raw(&import, &centre, content_type, body);
    let csv = "\u{feff}ref,grid,door_number,category,text,urgent\n\
               12345-001,g1,12,住房,房屋漏雨,true\n\
               12345-002,g1,99,住房,门牌不存在,false\n\
               12345-003,g1,13,Flying,未知类别,false\n\
               12345-004,g2,12,其他,别的网格,false\n";
    let (status, report) = post("text/csv", csv);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"].as_array().unwrap().len(), 1, "{report}");
    let errors: Vec<(u64, &str)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            (2, "no_household"),
            (3, "unknown_category"),
            (4, "no_household")
        ]
    );
    // The same CSV again creates nothing; JSON works too.
    let (_, again) = post("text/csv", csv);
    assert_eq!(
        (
            again["created"].as_array().unwrap().len(),
            again["skipped"].as_u64()
        ),
        (0, Some(1))
    );
    let (status, report) = post(
        "application/json",
        &json!([{"ref": "12345-005", "grid": "g1", "door_number": "13", "category": "Education", "text": "孩子入学咨询"}]).to_string(),
    );
    assert_eq!(
        (status, report["created"].as_array().unwrap().len()),
        (200, 1),
        "{report}"
    );
    // Malformed input is a typed 400 / 415 and stores nothing.
    assert_eq!(post("text/csv", "ref,grid\n1,g1\n").0, 400);
    assert_eq!(post("text/plain", "x").0, 415);
    assert_eq!(post("application/json", "{\"ref\": 1}").0, 400);
    // The imported orders reach the grid's phone, marked as hotline orders.
    worker.sync().unwrap();
    let demands = worker.store.household(h).unwrap().demands;
    let d = demands.values().next().unwrap();
    assert_eq!(
        (d.source, d.external_ref.as_deref(), d.urgency),
        (
            Some(DemandSource::Hotline),
            Some("12345-001"),
            Urgency::Urgent
        )
    );
    // The grid's worker is first-responsible (首问负责) for a hotline order from the start.
    assert_eq!(
        (d.raised_by == worker.author.user, d.responsible()),
        (false, worker.author.user)
    );
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/orders?status=Raised", server.url),
        &centre,
        None,
    );
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

/// A blocking POST of `body` with a content type (the helper `call` sends JSON only).
fn post_raw(url: &str, token: &str, content_type: &str, body: &str) -> (u16, Value) {
    post_body(url, token, content_type, body.as_bytes().to_vec())
}

#[test]
fn coverage_lists_every_due_household_not_met_with_its_reason_and_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let town = session(&server, "st", "t", Role::TownSupervisor);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g2"]);
    // A visit day whose catch-up deadline has passed, and households registered before it.
    let day = calendar::cycle_of(today().add_days(-20));
    let registered = noon(day.add_days(-1));
    worker.store.set_clock(move || registered);
    let met = household(&mut worker, "g2", "1");
    let nobody = household(&mut worker, "g2", "2");
    let refused = household(&mut worker, "g2", "3");
    let missed = household(&mut worker, "g2", "4");
    let moved_away = household(&mut worker, "g2", "5");
    worker
        .store
        .edit_household(missed, |h| {
            h.tags.push(TagSpan {
                group: KeyGroup::ElderlyAlone,
                since: "2026-01-01".parse().unwrap(),
                until: None,
            });
            Ok(())
        })
        .unwrap();
    worker
        .store
        .edit_household(moved_away, |h| {
            h.status = HouseholdStatus::Moved;
            Ok(())
        })
        .unwrap();
    worker.store.set_clock(now_ms);
    visit_with(&mut worker, met, day, VisitOutcome::Met, &[]);
    visit_with(&mut worker, nobody, day, VisitOutcome::NobodyHome, &[]);
    visit_with(&mut worker, refused, day, VisitOutcome::NobodyHome, &[]);
    visit_with(&mut worker, refused, day, VisitOutcome::Refused, &[]);
    worker.sync().unwrap();
    // The households count from their registration: as if the phone had synced them before
    // that visit day.
    let server = server.with_log_received_earlier(50);

    let (status, r) = call(
        "GET",
        &format!("{}/api/v1/coverage?unit=g2&day={day}", server.url),
        &town,
        None,
    );
    assert_eq!(status, 200, "{r}");
    let t = &r["unit"]["tally"];
    assert_eq!(
        [
            &t["due"],
            &t["visited"],
            &t["nobody_home"],
            &t["refused"],
            &t["missed"],
            &t["key_due"]
        ],
        [4, 1, 1, 1, 1, 1].map(|n| json!(n)).each_ref(),
        "{r}"
    );
    let rows: BTreeMap<String, (String, Option<String>)> = r["households"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["door_number"].as_str().unwrap().to_string(),
                (
                    h["state"].as_str().unwrap().to_string(),
                    h["reason"].as_str().map(str::to_string),
                ),
            )
        })
        .collect();
    assert_eq!(rows["2"], ("not_met".into(), Some("nobody_home".into())));
    assert_eq!(rows["3"], ("not_met".into(), Some("refused".into())));
    assert_eq!(rows["4"], ("missed".into(), None));
    assert!(
        !rows.contains_key("5"),
        "a household that moved away is not due"
    );
    // The key-group household comes first.
    assert_eq!(r["households"][0]["door_number"], "4");
    assert_eq!(
        r["catch_up_by"],
        CoveragePolicy::default().catch_up_by(day).to_string()
    );
    // Drill-down: the town lists its village with the same counts.
    let (_, town_view) = call(
        "GET",
        &format!("{}/api/v1/coverage?day={day}", server.url),
        &town,
        None,
    );
    assert_eq!(town_view["unit"]["id"], "t");
    let v = town_view["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "v")
        .unwrap();
    assert_eq!(v["tally"], *t);
    // Any date of the cycle gives the cycle's report; a bad date, another unit: typed errors.
    let (_, later) = call(
        "GET",
        &format!(
            "{}/api/v1/coverage?unit=g2&day={}",
            server.url,
            day.add_days(3)
        ),
        &town,
        None,
    );
    assert_eq!(later["visit_day"], day.to_string());
    assert_eq!(later["unit"]["tally"], *t);
    assert_eq!(
        get_status(&server, "/api/v1/coverage?unit=g2&day=2026-02-30", &town),
        400
    );
    assert_eq!(
        get_status(&server, "/api/v1/coverage?unit=nowhere", &town),
        404
    );
    let outsider = session(&server, "other", "g1", Role::GridHead);
    assert_eq!(
        get_status(&server, "/api/v1/coverage?unit=g2", &outsider),
        404
    );
}

/// What the tests count for one grid, from the records alone.
#[derive(Debug, Default, PartialEq)]
struct Recount {
    received: u64,
    resolved: u64,
    on_time: u64,
    satisfied_or_basically: u64,
    return_visited: u64,
    visits: u64,
    due: u64,
    visited: u64,
    missed: u64,
}

#[test]
fn statistics_and_the_red_black_list_are_recomputed_from_the_raw_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let town = session(&server, "st", "t", Role::TownSupervisor);
    let today = today();
    let from = calendar::cycle_of(today.add_days(-40));
    let mut visit_days = vec![from];
    loop {
        let next = calendar::next_visit_day(*visit_days.last().unwrap());
        if next > today {
            break;
        }
        visit_days.push(next);
    }
    // Three grids with different records: the phone's clock is set per step, so deadlines
    // are met or missed for real.
    let mut registered = Vec::new();
    for grid in ["g10", "g11", "g12"] {
        let mut p = server.phone(&dir.path().join(format!("{grid}.db")), &[grid]);
        let at = noon(from.add_days(-1));
        p.store.set_clock(move || at);
        let households: Vec<HouseholdId> = (0..4)
            .map(|n| household(&mut p, grid, &n.to_string()))
            .collect();
        p.store.set_clock(now_ms);
        p.sync().unwrap();
        registered.push((grid, households));
    }
    // The households count from their registration: as if they had reached the server two
    // months ago, before the period (figures as of their day, SYNC-v1 §10).
    let server = server.with_log_received_earlier(60);
    let mut phones = Vec::new();
    for (g, (grid, households)) in registered.into_iter().enumerate() {
        let mut p = Phone::open(&dir.path().join(format!("{grid}.db")), &server.url);
        for (i, day) in visit_days.iter().enumerate() {
            for (n, h) in households.iter().enumerate() {
                // g10 visits everyone; g11 misses one household a cycle; g12 meets half.
                let outcome = match g {
                    0 => Some(VisitOutcome::Met),
                    1 if n == 0 => None,
                    1 => Some(VisitOutcome::Met),
                    _ if n % 2 == 0 => Some(VisitOutcome::NobodyHome),
                    _ => Some(VisitOutcome::Met),
                };
                let raised: Vec<Demand> = if n == 1 && i < 2 {
                    // g10's orders are raised and handled as the test runs, so they reach
                    // the server within the clock-skew allowance and are taken at their
                    // word; the others' are typed with the phone's clock set back.
                    let at = if g == 0 { now_ms() } else { noon(*day) };
                    vec![demand(p.author.user, at, "路灯不亮")]
                } else {
                    vec![]
                };
                if let Some(o) = outcome {
                    let at = noon(*day);
                    p.store.set_clock(move || at);
                    visit_with(&mut p, *h, *day, o, &raised);
                    // Take it at once; g10 finishes on time, g11 late, g12 not at all.
                    for d in &raised {
                        if g == 0 {
                            p.store.set_clock(now_ms);
                        }
                        p.store
                            .demand_step(*h, d.id, &NewStep::new(DemandAction::Take, ""))
                            .unwrap();
                        let finish = match g {
                            0 => Some(now_ms()),
                            1 => Some(noon(day.add_days(9))),
                            _ => None,
                        };
                        if let Some(at) = finish {
                            p.store.set_clock(move || at);
                            p.store
                                .demand_step(
                                    *h,
                                    d.id,
                                    &NewStep::new(DemandAction::Finish, "已修好"),
                                )
                                .unwrap();
                            p.store
                                .demand_step(*h, d.id, &NewStep::new(DemandAction::Feedback, ""))
                                .unwrap();
                            let verdict = if g == 0 {
                                Satisfaction::Satisfied
                            } else {
                                Satisfaction::Dissatisfied
                            };
                            p.store
                                .demand_step(
                                    *h,
                                    d.id,
                                    &NewStep {
                                        satisfaction: Some(verdict),
                                        ..NewStep::new(DemandAction::ReturnVisit, "")
                                    },
                                )
                                .unwrap();
                        }
                    }
                }
            }
        }
        p.store.set_clock(now_ms);
        p.sync().unwrap();
        assert!(p.store.rejected_changes().unwrap().is_empty());
        phones.push((grid, p, now_ms()));
    }

    // The town closes g10's return-visited orders (so none of g10's is open, let alone
    // overdue); the phone fetches that.
    let (_, g10_orders) = call(
        "GET",
        &format!("{}/api/v1/orders?unit=g10", server.url),
        &town,
        None,
    );
    for o in g10_orders.as_array().unwrap() {
        let demand: DemandId = o["demand"].as_str().unwrap().parse().unwrap();
        let (status, body) = step(&server, &town, demand, json!({"action": "close"}));
        assert_eq!(status, 200, "{body}");
    }
    phones[0].1.sync().unwrap();

    // Recount each grid from the households on its phone, with the protocol's rules. The
    // steps were typed with the phone's clock set back weeks (offline work), and each phone's
    // clock was right when it synced: their times are taken at their word (SYNC-v1 §13.6.1).
    let rules = Deadlines::default();
    let policy = CoveragePolicy::default();
    let mut expected: BTreeMap<&str, Recount> = BTreeMap::new();
    for (grid, p, _synced_ms) in phones.iter_mut() {
        let mut r = Recount::default();
        let ids: Vec<HouseholdId> = p
            .store
            .households_in_grid(&GridId::new(*grid))
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        for id in ids {
            let h = p.store.household(id).unwrap();
            r.visits += h
                .visits
                .values()
                .filter(|v| v.visit_day >= from && v.visit_day <= today)
                .count() as u64;
            for d in h.demands.values() {
                let o = workorder::replay(d, &rules);
                let day = workorder::day_of(d.raised_at_ms);
                if day < from || day > today {
                    continue;
                }
                r.received += 1;
                if o.done_ms.is_some() {
                    r.resolved += 1;
                    r.on_time += u64::from(o.resolved_on_time() == Some(true));
                }
                if let Some((s, _)) = o.satisfaction {
                    r.return_visited += 1;
                    r.satisfied_or_basically += u64::from(s != Satisfaction::Dissatisfied);
                }
            }
            for day in &visit_days {
                if let Some(due) = coverage::coverage(&CoverageInput::of(&h), *day, today, &policy)
                {
                    r.due += 1;
                    r.visited += u64::from(due.state == CoverageState::Visited);
                    r.missed += u64::from(due.state == CoverageState::Missed);
                }
            }
        }
        expected.insert(grid, r);
    }
    // Sanity: the scenario gives each grid something different to count.
    assert_eq!(expected["g10"].on_time, 2);
    assert_eq!(expected["g11"].on_time, 0);
    assert_eq!(expected["g12"].resolved, 0);

    let (status, s) = call(
        "GET",
        &format!("{}/api/v1/stats?unit=v&from={from}&to={today}", server.url),
        &town,
        None,
    );
    assert_eq!(status, 200, "{s}");
    let got: BTreeMap<String, Recount> = s["grids"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| expected.contains_key(g["id"].as_str().unwrap()))
        .map(|g| {
            let f = &g["figures"];
            let n = |v: &Value| v.as_u64().unwrap();
            (
                g["id"].as_str().unwrap().to_string(),
                Recount {
                    received: n(&f["received"]),
                    resolved: n(&f["resolved"]),
                    on_time: n(&f["on_time"]),
                    satisfied_or_basically: n(&f["satisfied"]) + n(&f["basically"]),
                    return_visited: n(&f["return_visited"]),
                    visits: n(&f["visits"]),
                    due: n(&f["coverage"]["due"]),
                    visited: n(&f["coverage"]["visited"]),
                    missed: n(&f["coverage"]["missed"]),
                },
            )
        })
        .collect();
    for (grid, want) in &expected {
        assert_eq!(got.get(*grid), Some(want), "{grid}");
    }
    // The village's total is the sum of its grids, and its rates are the ratios of the sums.
    let total = &s["unit"]["figures"];
    let received: u64 = expected.values().map(|r| r.received).sum();
    let resolved: u64 = expected.values().map(|r| r.resolved).sum();
    assert_eq!(
        (total["received"].as_u64(), total["resolved"].as_u64()),
        (Some(received), Some(resolved))
    );
    let rate = total["resolution_rate"].as_f64().unwrap();
    assert!((rate - resolved as f64 / received as f64).abs() < 1e-12);

    // The red/black list by its rule, recomputed: g10 is perfect (red), g11 has missed
    // households and g12 only half its coverage (black).
    let (status, rank) = call(
        "GET",
        &format!(
            "{}/api/v1/ranking?unit=v&from={from}&to={today}",
            server.url
        ),
        &town,
        None,
    );
    assert_eq!(status, 200, "{rank}");
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|r| r["grid"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&rank["red"]), ["g10"], "{rank}");
    let black = names(&rank["black"]);
    assert!(
        black.contains(&"g11".to_string()) && black.contains(&"g12".to_string()),
        "{rank}"
    );
    let g12 = &expected["g12"];
    let g12_score = {
        let coverage = g12.visited as f64 / g12.due as f64;
        // No resolved orders: the coverage and resolution rates (0 of 2) count.
        (coverage * 40.0 + 0.0 * 30.0) / 70.0
    };
    let got_score = rank["black"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["grid"] == "g12")
        .unwrap()["score"]
        .as_f64()
        .unwrap();
    assert!(
        (got_score - g12_score).abs() < 1e-9,
        "{got_score} vs {g12_score}"
    );
    // Bad periods are typed errors.
    assert_eq!(
        get_status(&server, "/api/v1/stats?from=2026-02-30", &town),
        400
    );
    assert_eq!(
        get_status(
            &server,
            "/api/v1/stats?from=2026-11-02&to=2026-11-01",
            &town
        ),
        400
    );
}

#[test]
fn a_weekly_task_list_reaches_the_grids_phones_and_their_offline_reports_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut one = server.phone(&dir.path().join("one.db"), &["g1"]);
    let mut two = server.phone(&dir.path().join("two.db"), &["g2"]);
    let token = |p: &Phone| p.store.credentials().unwrap().unwrap().token;
    let tasks = format!("{}/api/v1/tasks", server.url);

    // Workers may not push lists; bad lists are typed errors.
    let list = json!({"title": "第48周清单", "items": ["排查独居老人用火安全", "张贴防诈骗海报"], "units": ["g1", "g2"]});
    let own = json!({"title": "x", "items": ["y"], "units": ["g1"]});
    assert_eq!(call("POST", &tasks, &token(&one), Some(own)).0, 403);
    assert_eq!(
        call("POST", &tasks, &token(&one), Some(list.clone())).0,
        404,
        "a unit the worker cannot see"
    );
    let empty = json!({"title": "空", "items": [], "units": ["g1"]});
    assert_eq!(call("POST", &tasks, &centre, Some(empty)).0, 400);
    let backwards =
        json!({"title": "x", "items": ["y"], "week_start": "2026-11-23", "due": "2026-11-20"});
    assert_eq!(call("POST", &tasks, &centre, Some(backwards)).0, 400);
    let (status, created) = call("POST", &tasks, &centre, Some(list));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["grids"], json!(["g1", "g2"]));
    let id = created["id"].as_str().unwrap().to_string();

    // Each phone gets the list for its own grid; the first marks a task done offline.
    assert_eq!(one.sync().unwrap().task_lists, 1);
    two.sync().unwrap();
    let lists = one.store.task_lists().unwrap();
    assert_eq!(
        (lists.len(), lists[0].grids.clone()),
        (1, vec!["g1".to_string()])
    );
    assert_eq!(two.store.task_lists().unwrap()[0].grids, ["g2"]);
    assert!(
        one.store.complete_task(&id, 5, "g1", "").is_err(),
        "no such task"
    );
    assert!(
        one.store.complete_task(&id, 0, "g2", "").is_err(),
        "not this phone's grid"
    );
    one.store
        .complete_task(&id, 0, "g1", "走访独居老人 6 户，更换插线板 2 个")
        .unwrap();
    let local = &one.store.task_lists().unwrap()[0].done;
    assert_eq!((local.len(), local[0].on_server), (1, false));
    let report = one.sync().unwrap();
    assert_eq!(report.tasks_sent, 1);
    assert!(one.store.task_lists().unwrap()[0].done[0].on_server);

    // The command centre sees who did what from which device; g2 has done nothing yet.
    let (status, seen) = call("GET", &format!("{tasks}/{id}"), &centre, None);
    assert_eq!(status, 200, "{seen}");
    let done = seen["done"].as_array().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["grid"], "g1");
    assert_eq!(done[0]["user"], one.author.user.to_string());
    assert_eq!(done[0]["device"], one.author.device.to_string());
    // Another grid's worker cannot report for g1; a repeat keeps the first report.
    let again = json!({"grid": "g1", "item": 0, "evidence": "另一份"});
    assert_eq!(
        call(
            "POST",
            &format!("{tasks}/{id}/done"),
            &token(&two),
            Some(again.clone())
        )
        .0,
        404
    );
    let (status, kept) = call(
        "POST",
        &format!("{tasks}/{id}/done"),
        &token(&one),
        Some(again),
    );
    assert_eq!(status, 200);
    assert_eq!(kept["evidence"], "走访独居老人 6 户，更换插线板 2 个");
    // An idle sync does not fetch settings or lists again (the sync answer's `t` says
    // nothing changed: one round trip); a new list is fetched on the next sync.
    let idle = two.sync().unwrap();
    assert_eq!(
        (
            idle.extras_digest,
            idle.task_lists,
            idle.progress.round_trips
        ),
        (None, 0, 1)
    );
    let next = json!({"title": "第49周清单", "items": ["清理河道垃圾"], "units": ["g2"]});
    assert_eq!(call("POST", &tasks, &centre, Some(next)).0, 201);
    let fetched = two.sync().unwrap();
    assert!(fetched.extras_digest.is_some());
    assert_eq!(fetched.task_lists, 2);
    // A worker reads only the lists of their grids.
    let (_, mine) = call("GET", &tasks, &token(&two), None);
    assert_eq!(mine[0]["grids"], json!(["g2"]));
    assert_eq!(mine[0]["done"], json!([]));
}

/// A server configured with its own time limits and catch-up days: after a sync the phone
/// shows the same due days as the supervisors' pages.
#[test]
fn the_servers_workflow_settings_reach_the_phone() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
        |config| {
            config.workflow.deadlines.limits.triage = 4;
            config.workflow.coverage.catch_up_days = 2;
        },
    );
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let h = household(&mut worker, "g1", "1");
    let d = demand(worker.author.user, by_now(noon(today())), "路灯不亮");
    let day = calendar::cycle_of(today());
    visit_with(
        &mut worker,
        h,
        day,
        VisitOutcome::NobodyHome,
        std::slice::from_ref(&d),
    );
    // Before the first sync the phone counts with the defaults.
    let policy = |w: &Phone| w.store.workflow().unwrap().1;
    assert_eq!(policy(&worker), CoveragePolicy::default());
    worker.sync().unwrap();
    assert_eq!(policy(&worker).catch_up_days, 2);
    let (_, o) = order(&server, &centre, d.id);
    let lines = worker.store.work_orders(&GridId::new("g1")).unwrap();
    assert_eq!(
        lines[0].due.to_string(),
        o["order"]["step_due"].as_str().unwrap()
    );
    assert_eq!(
        lines[0].due,
        Deadlines::default().calendar.add_working_days(today(), 4)
    );
    let (_, cov) = call(
        "GET",
        &format!("{}/api/v1/coverage?unit=g1&day={day}", server.url),
        &centre,
        None,
    );
    let cover_policy = policy(&worker);
    let phone_line = &worker
        .store
        .coverage(&GridId::new("g1"), day, today(), &cover_policy)
        .unwrap()[0];
    assert_eq!(cov["catch_up_by"], phone_line.due.catch_up_by.to_string());
    assert_eq!(phone_line.due.catch_up_by, cover_policy.catch_up_by(day));
}

/// A team member reads no grid, but the photos of an order dispatched to their team are the
/// order's: they open them from the order's page; another team gets 404, as for any photo.
#[test]
fn a_team_sees_the_photos_of_the_orders_dispatched_to_it_and_no_other_team_does() {
    use qiaomen_protocol::photo::{PhotoSubject, hash_of};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    add_team(&server, "team-water");
    add_team(&server, "team-roads");
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let water = session(&server, "t-water", "team-water", Role::TeamMember);
    let roads = session(&server, "t-roads", "team-roads", Role::TeamMember);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let (h, d) = a_demand_raised_on_a_visit(&mut worker, "门前排水沟堵塞");
    let (status, o) = step(
        &server,
        &centre,
        d.id,
        json!({"action": "dispatch", "team": "team-water"}),
    );
    assert_eq!(status, 200, "{o}");
    // The worker photographs the drain for the dispatch step, offline; the sync sends it.
    worker.sync().unwrap();
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpeg.extend((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    worker
        .store
        .attach_photo(
            h,
            PhotoSubject::DemandStep {
                demand: d.id,
                step: 0,
            },
            &jpeg,
            "排水沟",
            now_ms(),
        )
        .unwrap();
    let report = worker.sync().unwrap();
    assert_eq!((report.photos_sent, report.photos_waiting), (1, 0));
    let hash = hash_of(&jpeg);

    let photo = format!("{}/photos/{hash}", server.url);
    let (status, ct, bytes) = qiaomen_tests::get_raw(&photo, &water);
    assert_eq!((status, ct.as_str()), (200, "image/jpeg"));
    assert!(bytes == jpeg, "the photo, byte for byte");
    let (status, page) =
        qiaomen_tests::get_text(&format!("{}/orders/{}", server.url, d.id), &water);
    assert_eq!(status, 200);
    assert!(page.contains(&format!("/photos/{hash}/thumb")), "{page}");
    assert_eq!(qiaomen_tests::get_raw(&photo, &roads).0, 404);
    // The water team still reads nothing else of the household.
    let (status, _) = call(
        "GET",
        &format!("{}/api/v1/households/{h}", server.url),
        &water,
        None,
    );
    assert_eq!(status, 404);
}

/// A task report's photos (a 防诈 poster put up), taken offline: the report is stored first,
/// then the photos go; the grid's supervisors and phones fetch them, the tasks page shows
/// them, and another grid's phone or supervisor gets 404. A second phone's report of the same
/// task, stored after, keeps its photos with a reason instead of sending them forever.
#[test]
fn a_task_reports_photos_go_after_the_report_and_only_to_the_grids_people() {
    use qiaomen_client_core::{NewPhoto, PhotoState};
    use qiaomen_protocol::{photo::hash_of, validate};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let g1_lead = session(&server, "s1", "g1", Role::GridHead);
    let g2_lead = session(&server, "s2", "g2", Role::GridHead);
    let mut one = server.phone(&dir.path().join("one.db"), &["g1"]);
    let mut other = server.phone(&dir.path().join("other.db"), &["g1"]);
    let mut two = server.phone(&dir.path().join("two.db"), &["g2"]);
    let list = json!({"title": "第49周清单", "items": ["张贴防诈骗海报"], "units": ["g1", "g2"]});
    let (status, created) = call(
        "POST",
        &format!("{}/api/v1/tasks", server.url),
        &centre,
        Some(list),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    for p in [&mut one, &mut other, &mut two] {
        p.sync().unwrap();
    }
    let jpeg = |seed: u32, n: u32| {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
        b.extend((0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed as u8));
        b
    };
    let shot = |bytes: Vec<u8>, caption: &str| NewPhoto {
        bytes,
        caption: caption.into(),
        taken_at_ms: now_ms(),
    };
    // What the server would refuse is refused on the phone, and nothing is kept.
    let field = |e: qiaomen_client_core::StoreError| match e {
        qiaomen_client_core::StoreError::Document(qiaomen_protocol::DocError::Field(f)) => Some(f),
        _ => None,
    };
    let gif = one
        .store
        .complete_task_with_photos(&id, 0, "g1", "", &[shot(b"GIF89a...".to_vec(), "")])
        .unwrap_err();
    assert_eq!(
        field(gif).map(|f| (f.field, f.rule)),
        Some((validate::Field::Photo, validate::Rule::MediaType))
    );
    let many: Vec<NewPhoto> = (0..11).map(|i| shot(jpeg(i, 100), "")).collect();
    let e = one
        .store
        .complete_task_with_photos(&id, 0, "g1", "", &many)
        .unwrap_err();
    assert_eq!(
        field(e).map(|f| (f.field, f.rule)),
        Some((validate::Field::Photo, validate::Rule::TooMany))
    );
    assert!(one.store.task_reports(false).unwrap().is_empty());
    assert_eq!(one.store.pending_photo_count().unwrap(), 0);

    // Two photos with the report, offline; the sync stores the report, then the photos.
    let (door, hall) = (jpeg(1, 30_000), jpeg(2, 20_000));
    one.store
        .complete_task_with_photos(
            &id,
            0,
            "g1",
            "东村 3 处已张贴",
            &[shot(door.clone(), "村委会门口"), shot(hall.clone(), "")],
        )
        .unwrap();
    assert!(
        one.store
            .complete_task_with_photos(&id, 0, "g1", "再来", &[shot(jpeg(3, 100), "")])
            .is_err(),
        "a report's photos cannot change"
    );
    let local = &one.store.task_lists().unwrap()[0].done[0];
    assert_eq!((local.on_server, local.photos.len()), (false, 2));
    assert_eq!(local.photos[0].caption, "村委会门口");
    let report = one.sync().unwrap();
    assert_eq!(
        (report.tasks_sent, report.photos_sent, report.photos_waiting),
        (1, 2, 0)
    );
    let (hd, hh) = (hash_of(&door), hash_of(&hall));
    assert_eq!(one.store.photo_state(&hd).unwrap(), Some(PhotoState::Sent));

    // The grid's supervisor sees the report's photos, in the API and on the tasks page.
    let (status, seen) = call(
        "GET",
        &format!("{}/api/v1/tasks/{id}", server.url),
        &g1_lead,
        None,
    );
    assert_eq!(status, 200, "{seen}");
    let photos = seen["done"][0]["photos"].as_array().unwrap();
    assert_eq!(
        photos
            .iter()
            .map(|p| p["hash"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [hd.as_str(), hh.as_str()]
    );
    assert_eq!(photos[0]["media_type"], "jpeg");
    let photo = |h: &str| format!("{}/photos/{h}", server.url);
    let (status, ct, bytes) = qiaomen_tests::get_raw(&photo(&hd), &g1_lead);
    assert_eq!((status, ct.as_str()), (200, "image/jpeg"));
    assert!(bytes == door, "the photo, byte for byte");
    let (status, page) = qiaomen_tests::get_text(&format!("{}/tasks", server.url), &g1_lead);
    assert_eq!(status, 200);
    assert!(page.contains(&format!("/photos/{hh}/thumb")), "{page}");
    assert!(page.contains("村委会门口"));
    // Another grid's supervisor and phone: 404, as for a photo that does not exist.
    assert_eq!(qiaomen_tests::get_raw(&photo(&hd), &g2_lead).0, 404);
    let two_token = two.store.credentials().unwrap().unwrap().token;
    assert_eq!(
        qiaomen_tests::get_raw(&format!("{}/v1/photos/{hd}", server.url), &two_token).0,
        404
    );
    let other_token = other.store.credentials().unwrap().unwrap().token;
    assert_eq!(
        qiaomen_tests::get_raw(&format!("{}/v1/photos/{hd}", server.url), &other_token).0,
        200,
        "a phone of the grid fetches it"
    );

    // The other phone of g1 reported the same task offline, with a photo of its own: the
    // first report is kept, so that photo can never be stored; it stays on the phone,
    // refused with a reason, and is not sent again.
    let late = jpeg(4, 10_000);
    other
        .store
        .complete_task_with_photos(&id, 0, "g1", "也贴了", &[shot(late.clone(), "")])
        .unwrap();
    let report = other.sync().unwrap();
    assert_eq!((report.tasks_sent, report.photos_sent), (1, 0));
    assert_eq!(
        other.store.photo_state(&hash_of(&late)).unwrap(),
        Some(PhotoState::Refused {
            code: "task_reported".into()
        })
    );
    assert_eq!(
        other.store.photo_bytes(&hash_of(&late)).unwrap(),
        Some(late)
    );
    assert_eq!(other.store.pending_photo_count().unwrap(), 0);
    // A report that breaks the rule is refused by the server too (a client other than ours).
    let bad = json!({"grid": "g2", "item": 0, "photos": [
        {"hash": "A".repeat(64), "size": 10, "media_type": "jpeg", "taken_at_ms": 1}]});
    let (status, body) = call(
        "POST",
        &format!("{}/api/v1/tasks/{id}/done", server.url),
        &two_token,
        Some(bad),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_report"))
    );
}
