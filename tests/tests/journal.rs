//! Events and work logs (SYNC-v1 §13.12) against the real server on 127.0.0.1: written on the
//! phone offline, judged by the same rules on both ends, sent in the same round trip as a
//! visit day's records, listed and counted for supervisors, an event dispatched as a work
//! order that reaches the worker's phone.

use qiaomen_client_core::{
    StoreError,
    store::{JournalLine, NewJournal, NewPhoto},
};
use qiaomen_protocol::{
    DocError,
    calendar::{self, Day},
    ids::*,
    journal::JournalEntry,
    policy::{Role, Subject},
    schema::*,
    validate::{Field, Rule},
    wire,
};
use qiaomen_tests::{
    Phone, TestServer, block_on, call, get_raw, get_text, post_form, sample_visit, session,
    upload_request, visible,
};

fn today() -> Day {
    Day::from_unix_ms(qiaomen_server::access::now_ms(), 8 * 3600).unwrap()
}

fn event(grid: &str) -> NewJournal {
    NewJournal {
        grid: grid.into(),
        kind: "event".into(),
        event_kind: Some("road".into()),
        day: None,
        place: "村口桥头".into(),
        gps: Some([34.75, 113.62]),
        detail: "电线杆倾斜，有倒塌危险".into(),
        photos: vec![],
    }
}

fn work_log(grid: &str) -> NewJournal {
    NewJournal {
        grid: grid.into(),
        kind: "work_log".into(),
        event_kind: None,
        day: None,
        place: String::new(),
        gps: None,
        detail: "走访 12 户，排查隐患 2 处，调解邻里纠纷 1 起".into(),
        photos: vec![],
    }
}

fn states(lines: &[JournalLine]) -> Vec<(&str, Option<&str>)> {
    lines
        .iter()
        .map(|l| (l.state.as_str(), l.code.as_deref()))
        .collect()
}

/// A server, the command centre's phone, a worker of g1, and households at g1 `5号` and at
/// g2 `8号`, on the phones of their grids.
fn a_grid(dir: &std::path::Path) -> (TestServer, Phone, HouseholdId, HouseholdId) {
    let server = TestServer::start(&dir.join("server"));
    let mut centre = server.phone(&dir.join("centre.db"), &[]);
    let mut w = server.phone(&dir.join("w.db"), &["g1"]);
    let mut ids = Vec::new();
    for (grid, door) in [("g1", "5号"), ("g2", "8号")] {
        ids.push(
            centre
                .store
                .create_household(&Household::new(
                    HouseholdId::new(),
                    GridId::new(grid),
                    "东村",
                    door,
                ))
                .unwrap(),
        );
    }
    centre.sync().unwrap();
    w.sync().unwrap();
    (server, w, ids[0], ids[1])
}

#[test]
fn an_event_and_a_work_log_written_offline_go_with_the_visit_day_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut w, home, other) = a_grid(dir.path());

    // Offline on the visit day: a visit, an event on the road and the day's work log.
    let day = calendar::cycle_of(today());
    let visit = sample_visit(&w.author, day, "家中一切正常");
    w.store.record_visit(home, &visit, &[]).unwrap();
    let ev = w.store.record_journal(&event("g1")).unwrap();
    let log = w.store.record_journal(&work_log("g1")).unwrap();
    // What the server would refuse is refused here first, by the same rules, nothing kept.
    let mut refused = |new: NewJournal| w.store.record_journal(&new).map(|_| ()).unwrap_err();
    let field = |e: StoreError| match e {
        StoreError::Document(DocError::Field(f)) => (f.field, f.rule),
        other => panic!("not a field error: {other}"),
    };
    assert_eq!(
        field(refused(NewJournal {
            detail: "  ".into(),
            ..event("g1")
        })),
        (Field::JournalDetail, Rule::Empty)
    );
    assert_eq!(
        field(refused(NewJournal {
            event_kind: None,
            ..event("g1")
        })),
        (Field::JournalKind, Rule::Empty)
    );
    assert_eq!(
        field(refused(NewJournal {
            day: Some(today().add_days(1).to_string()),
            ..work_log("g1")
        })),
        (Field::JournalDay, Rule::FutureDay)
    );
    assert!(matches!(
        refused(event("g2")),
        StoreError::NotAllowed {
            what: Subject::Journal,
            ..
        }
    ));
    let lines = w.store.journal().unwrap();
    assert_eq!(states(&lines), [("pending", None), ("pending", None)]);

    // One sync: the visit and both entries in one round trip.
    let report = w.sync().unwrap();
    assert_eq!(report.progress.round_trips, 1, "{report:?}");
    assert_eq!(report.journal_sent, 2);
    assert!(
        report.accepted >= 1 && report.rejected.is_empty(),
        "{report:?}"
    );
    let lines = w.store.journal().unwrap();
    assert_eq!(states(&lines), [("stored", None), ("stored", None)]);
    assert_eq!(
        w.store.household(home).unwrap().visits.len(),
        1,
        "the visit is still there"
    );
    // Nothing goes again in the next sync.
    assert_eq!(w.sync().unwrap().journal_sent, 0);

    // Supervisors list them, by kind.
    let supervisor = session(&server, "sv-journal", "v", Role::VillageSupervisor);
    let url = |path: &str| format!("{}{path}", server.url);
    let (status, list) = call("GET", &url("/api/v1/journal?unit=v"), &supervisor, None);
    assert_eq!(status, 200, "{list}");
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{list}");
    let (status, events) = call(
        "GET",
        &url("/api/v1/journal?unit=v&kind=event"),
        &supervisor,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(events["entries"].as_array().map(Vec::len), Some(1));
    let e = &events["entries"][0];
    assert_eq!(e["id"], ev.id.to_string());
    assert_eq!(e["event_kind"], "road");
    assert_eq!(e["detail"], "电线杆倾斜，有倒塌危险");
    assert_eq!(e["place"], "村口桥头");
    assert_eq!(e["lat"], 34.75);
    assert_eq!(e["by"], w.author.user.to_string());
    let (status, body) = call(
        "GET",
        &url("/api/v1/journal?kind=gossip"),
        &supervisor,
        None,
    );
    assert_eq!(status, 400, "{body}");
    // An empty date is not a date on the API; a page's empty inputs are simply not given.
    let (status, body) = call("GET", &url("/api/v1/journal?to="), &supervisor, None);
    assert_eq!(status, 400, "{body}");
    let (status, _) = get_text(&url("/journal?from=&to=&kind="), &supervisor);
    assert_eq!(status, 200);
    // Another grid's worker sees none of them.
    let other_worker = session(&server, "w-journal-g2", "g2", Role::GridWorker);
    let (status, none) = call("GET", &url("/api/v1/journal"), &other_worker, None);
    assert_eq!(status, 200);
    assert_eq!(none["entries"].as_array().map(Vec::len), Some(0), "{none}");

    // The statistics count them for the days they are of, not for the month before.
    let counts = |from: Day, to: Day| {
        let (status, stats) = call(
            "GET",
            &url(&format!("/api/v1/stats?unit=v&from={from}&to={to}")),
            &supervisor,
            None,
        );
        assert_eq!(status, 200, "{stats}");
        let f = &stats["unit"]["figures"];
        (f["events"].as_u64(), f["work_logs"].as_u64())
    };
    let t = today();
    assert_eq!(counts(t, t), (Some(1), Some(1)));
    assert_eq!(counts(t.add_days(-30), t.add_days(-1)), (Some(0), Some(0)));
    let (status, csv) = get_text(
        &url(&format!(
            "/api/v1/stats/export?unit=v&from={t}&to={t}&format=csv"
        )),
        &supervisor,
    );
    assert_eq!(status, 200);
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(r#""上报事件","工作日志""#), "{header}");
    assert!(csv.lines().nth(1).unwrap().ends_with(",1,1"), "{csv}");

    // The event dispatched as a work order of the door nearest it: only by a supervisor of
    // the grid, only an event, only to a household of its grid, only once.
    let dispatch = |token: &str, entry: &JournalEntry, household: HouseholdId| {
        call(
            "POST",
            &url(&format!("/api/v1/journal/{}/dispatch", entry.id)),
            token,
            Some(serde_json::json!({
                "household": household.to_string(), "category": "other", "urgent": true,
            })),
        )
    };
    let web_worker = session(&server, "w-journal", "g1", Role::GridWorker);
    assert_eq!(dispatch(&web_worker, &ev, home).0, 403);
    let (status, body) = dispatch(&supervisor, &log, home);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_an_event"))
    );
    let (status, body) = dispatch(&supervisor, &ev, other);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("other_grid"))
    );
    assert_eq!(dispatch(&other_worker, &ev, home).0, 404);
    let (status, done) = dispatch(&supervisor, &ev, home);
    assert_eq!(status, 200, "{done}");
    let demand = done["demand"].as_str().unwrap().to_string();
    let (status, body) = dispatch(&supervisor, &ev, home);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_dispatched"))
    );
    let (_, events) = call(
        "GET",
        &url("/api/v1/journal?unit=v&kind=event"),
        &supervisor,
        None,
    );
    assert_eq!(events["entries"][0]["order"], demand.as_str());

    // The order is on the worker's phone after a sync, the worker first-responsible.
    w.sync().unwrap();
    let h = w.store.household(home).unwrap();
    let d = h
        .demands
        .values()
        .find(|d| d.id.to_string() == demand)
        .expect("the dispatched order is on the phone");
    assert_eq!(d.source, Some(DemandSource::Supervisor));
    assert_eq!(d.first_responsible, Some(w.author.user));
    assert_eq!(d.urgency, Urgency::Urgent);
    assert!(d.text.contains("电线杆倾斜"), "{}", d.text);
    assert!(
        d.text.starts_with("【道路设施·事件转工单】村口桥头"),
        "{}",
        d.text
    );

    // The event tracked in the second ledger as a hazard of the same door: by a supervisor
    // of the grid, of an event, once; the case is on the worker's phone to follow up.
    let track = |token: &str, entry: &JournalEntry, body: serde_json::Value| {
        call(
            "POST",
            &url(&format!("/api/v1/journal/{}/case", entry.id)),
            token,
            Some(body),
        )
    };
    let hazard = serde_json::json!({
        "household": home.to_string(), "ledger": "hazard", "kind": "electrical",
    });
    assert_eq!(track(&web_worker, &ev, hazard.clone()).0, 403);
    let (status, body) = track(&supervisor, &log, hazard.clone());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_an_event"))
    );
    let (status, body) = track(
        &supervisor,
        &ev,
        serde_json::json!({"household": home.to_string(), "ledger": "hazard", "kind": "ufo"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, tracked) = track(&supervisor, &ev, hazard.clone());
    assert_eq!(status, 200, "{tracked}");
    let case = tracked["case"].as_str().unwrap().to_string();
    let (status, body) = track(&supervisor, &ev, hazard);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_tracked"))
    );
    let (_, cases) = call("GET", &url("/api/v1/cases?unit=v"), &supervisor, None);
    let row = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == case.as_str())
        .expect("the case is in the ledger");
    assert_eq!(
        (&row["ledger"], &row["state"]),
        (&serde_json::json!("hazard"), &serde_json::json!("open"))
    );
    w.sync().unwrap();
    let on_phone = w.store.cases(home).unwrap();
    let c = on_phone
        .iter()
        .find(|c| c.id.to_string() == case)
        .expect("the case is on the worker's phone");
    assert_eq!(
        (c.detail.as_str(), c.parties.as_str()),
        ("电线杆倾斜，有倒塌危险", "村口桥头")
    );

    // The page lists both, the event with its order, the log as it was written.
    let (status, page) = get_text(&url("/journal?unit=v"), &supervisor);
    assert_eq!(status, 200);
    let text = visible(&page);
    assert!(text.contains("事件 1 件，工作日志 1 篇"), "{text}");
    assert!(
        text.contains("道路设施") && text.contains("已转工单"),
        "{text}"
    );
    assert!(text.contains("走访 12 户"), "{text}");
    assert!(page.contains(&format!("/orders/{demand}")));

    // An event with a photo: a photo that is not an image is refused on the phone, nothing
    // kept; the entry goes first, its photo after it in the same sync, and supervisors of
    // the grid (only) fetch it.
    let mut shot = vec![0xFF, 0xD8, 0xFF, 0xE0];
    shot.extend((0..3000u32).map(|i| (i * 7 % 251) as u8));
    let photo = |bytes: &[u8]| NewPhoto {
        bytes: bytes.to_vec(),
        caption: "楼道".into(),
        taken_at_ms: qiaomen_server::access::now_ms(),
    };
    let before = w.store.journal().unwrap().len();
    let not_an_image = w.store.record_journal(&NewJournal {
        photos: vec![photo(b"GIF89a not a photo")],
        ..event("g1")
    });
    assert!(
        matches!(
            not_an_image,
            Err(StoreError::Document(DocError::Field(f))) if f.field == Field::Photo
        ),
        "{not_an_image:?}"
    );
    assert_eq!(w.store.journal().unwrap().len(), before);
    let fire = w
        .store
        .record_journal(&NewJournal {
            event_kind: Some("fire".into()),
            place: "5号门前".into(),
            detail: "电动车在楼道充电".into(),
            photos: vec![photo(&shot)],
            ..event("g1")
        })
        .unwrap();
    let report = w.sync().unwrap();
    assert_eq!(
        (report.journal_sent, report.photos_sent),
        (1, 1),
        "{report:?}"
    );
    let hash = qiaomen_protocol::photo::hash_of(&shot);
    let (_, list) = call("GET", &url("/api/v1/journal?kind=event"), &supervisor, None);
    assert_eq!(list["entries"][0]["photos"], serde_json::json!([hash]));
    let (status, _, bytes) = get_raw(&url(&format!("/v1/photos/{hash}")), &supervisor);
    assert_eq!((status, bytes == shot), (200, true));
    let (status, _, _) = get_raw(&url(&format!("/v1/photos/{hash}")), &other_worker);
    assert_eq!(status, 404, "not another grid's to see");
    let (_, page) = get_text(&url("/journal?kind=event"), &supervisor);
    assert!(
        page.contains(&format!(r#"href="/photos/{hash}""#)),
        "{page}"
    );

    // From the page, by door number: a door the grid lacks is named, nothing written; the
    // right one leads to the order's page.
    let form = url(&format!("/journal/{}/dispatch", fire.id));
    let (status, page) = post_form(
        &form,
        &supervisor,
        &[("door", "99号"), ("category", "other")],
    );
    assert_eq!(status, 422);
    assert!(
        visible(&page).contains("本网格没有这个门牌号的住户"),
        "{page}"
    );
    let (_, list) = call("GET", &url("/api/v1/journal?kind=event"), &supervisor, None);
    let first = &list["entries"][0];
    assert_eq!(
        (&first["id"], &first["order"]),
        (
            &serde_json::json!(fire.id.to_string()),
            &serde_json::Value::Null
        )
    );
    let (status, order_page) = post_form(
        &form,
        &supervisor,
        &[("door", "5号"), ("category", "other")],
    );
    assert_eq!(status, 200, "{order_page}");
    assert!(visible(&order_page).contains("电动车在楼道充电"));
    let (_, list) = call("GET", &url("/api/v1/journal?kind=event"), &supervisor, None);
    assert!(list["entries"][0]["order"].is_string(), "{list}");
}

#[test]
fn the_server_judges_each_entry_by_the_phones_rules_and_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut w, _, _) = a_grid(dir.path());
    let now = qiaomen_server::access::now_ms();
    let entry = |grid: &str, detail: &str, day: Day| JournalEntry {
        id: JournalId::new(),
        grid: grid.into(),
        kind: "event".into(),
        event_kind: Some("fire".into()),
        day: day.to_string(),
        at_ms: now,
        place: "菜市场".into(),
        gps: None,
        detail: detail.into(),
        photos: vec![],
    };
    let good = entry("g1", "商铺门口堆放液化气罐", today());
    let sent = vec![
        good.clone(),
        entry("g1", &"长".repeat(2001), today()),
        entry("g2", "不是本网格的", today()),
        entry("g1", "明天的事", today().add_days(2)),
        JournalEntry {
            kind: "rumour".into(),
            ..entry("g1", "未知类型", today())
        },
        JournalEntry {
            gps: Some([f64::INFINITY, 0.0]),
            ..entry("g1", "坐标不对", today())
        },
        good.clone(),
    ];
    let token = w.token();
    let send = |journal: Vec<JournalEntry>| {
        let mut req = upload_request(HouseholdId::new(), vec![], wire::FEATURES);
        req.docs.clear();
        req.journal = journal;
        block_on(async {
            let resp = reqwest::Client::new()
                .post(format!("{}/v1/sync", server.url))
                .header("content-type", wire::CONTENT_TYPE)
                .bearer_auth(&token)
                .body(wire::encode(&req))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            (
                status,
                wire::decode::<wire::SyncResponse>(&body, 1 << 24).ok(),
            )
        })
    };
    let (status, resp) = send(sent.clone());
    assert_eq!(status, 200);
    let resp = resp.unwrap();
    assert_ne!(resp.features & wire::FEATURE_JOURNAL, 0);
    let codes: Vec<(JournalId, Option<&str>)> = resp
        .journal
        .iter()
        .map(|a| (a.id, a.code.as_deref()))
        .collect();
    let ids: Vec<JournalId> = sent.iter().map(|e| e.id).collect();
    assert_eq!(
        codes,
        [
            (ids[0], None),
            (ids[1], Some("journal_detail:too_long")),
            (ids[2], Some("out_of_scope")),
            (ids[3], Some("journal_day:future_day")),
            (ids[4], Some("journal_kind:unknown_code")),
            (ids[5], Some("journal_gps:out_of_range")),
            (ids[6], None),
        ]
    );
    // Sent again (a lost answer): the same entry, stored once.
    let (status, again) = send(vec![good.clone()]);
    assert_eq!(status, 200);
    assert_eq!(again.unwrap().journal[0].code, None);
    let supervisor = session(&server, "sv-journal-2", "v", Role::VillageSupervisor);
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/journal?unit=v", server.url),
        &supervisor,
        None,
    );
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["detail"], "商铺门口堆放液化气罐");
    // A phone whose clock runs two days ahead dates an event after the server's today: its
    // own check passes, the server refuses it, and the phone keeps the entry and its photo
    // (bytes and all) refused with the server's code; the photo is never sent.
    let ahead = now + 2 * 86_400_000;
    w.store.set_clock(move || ahead);
    let mut shot = vec![0xFF, 0xD8, 0xFF, 0xE0];
    shot.extend((0..500u32).map(|i| (i * 13 % 251) as u8));
    let late = w
        .store
        .record_journal(&qiaomen_client_core::store::NewJournal {
            grid: "g1".into(),
            kind: "event".into(),
            event_kind: Some("facility".into()),
            day: None,
            place: String::new(),
            gps: None,
            detail: "路灯不亮".into(),
            photos: vec![qiaomen_client_core::store::NewPhoto {
                bytes: shot.clone(),
                caption: String::new(),
                taken_at_ms: ahead,
            }],
        })
        .unwrap();
    w.store.set_clock(qiaomen_server::access::now_ms);
    let report = w.sync().unwrap();
    assert_eq!(
        (report.journal_sent, report.photos_sent),
        (1, 0),
        "{report:?}"
    );
    let [line] = &w.store.journal().unwrap()[..] else {
        panic!("one entry on the phone")
    };
    assert_eq!(line.entry.id, late.id);
    assert_eq!(
        (line.state.as_str(), line.code.as_deref()),
        ("refused", Some("journal_day:future_day"))
    );
    assert_eq!(line.entry.detail, "路灯不亮");
    let hash = qiaomen_protocol::photo::hash_of(&shot);
    assert_eq!(
        w.store.photo_state(&hash).unwrap(),
        Some(qiaomen_client_core::store::PhotoState::Refused {
            code: "journal_day:future_day".into()
        })
    );
    assert_eq!(w.store.photo_bytes(&hash).unwrap(), Some(shot));

    // More than a request may carry is refused whole, nothing stored.
    let many: Vec<JournalEntry> = (0..=qiaomen_protocol::journal::MAX_ENTRIES)
        .map(|i| entry("g1", &format!("第 {i} 件"), today()))
        .collect();
    assert_eq!(send(many).0, 413);
    let (_, list) = call(
        "GET",
        &format!("{}/api/v1/journal?unit=v", server.url),
        &supervisor,
        None,
    );
    assert_eq!(list["entries"].as_array().map(Vec::len), Some(1));
}
