//! Supervisors read what was recorded, in their own language (issue 15): a visit's content
//! whole in the API and on the household page, a returned visit's fix as a difference, and
//! one vocabulary — no stored or served value is a `Debug` string, no page shows an English
//! enum name or an id where a name exists, and search finds a key group by its Chinese name.

use std::collections::BTreeSet;

use qiaomen_protocol::{
    calendar::{self},
    ids::*,
    policy::Role,
    schema::*,
    vocab::Term,
    workorder::StepKind,
};
use qiaomen_server::access::org::UnitKind;
use qiaomen_tests::{
    Phone, TestServer, block_on, call, debug_names, get_raw, get_text, now_ms, sample_visit,
    session, today, visible,
};
use serde_json::{Value, json};

/// The text cells of a spreadsheet (its shared strings; rust_xlsxwriter writes every text
/// cell there).
fn xlsx_strings(xlsx: Vec<u8>) -> String {
    assert!(xlsx.starts_with(b"PK"), "an XLSX is a zip");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(xlsx)).unwrap();
    let mut strings = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("xl/sharedStrings.xml").unwrap(),
        &mut strings,
    )
    .unwrap();
    visible(&strings)
}

/// Every string in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

struct World {
    server: TestServer,
    worker: Phone,
    supervisor: String,
    centre: String,
    household: HouseholdId,
    other: HouseholdId,
    visit: VisitId,
    demand: DemandId,
    member: String,
    _dir: tempfile::TempDir,
}

/// A grid (东村第一网格, code `dc-1`) with two households: one an elderly person living alone,
/// visited and met, a hazard and a need noted, a demand raised and dispatched to 县水利局;
/// the other visited with nobody home.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let day = "2026-01-01".parse().unwrap();
    let db = server.access();
    db.add_unit("dc-1", UnitKind::Grid, Some("v"), "东村第一网格", day)
        .unwrap();
    db.add_unit("team-water", UnitKind::Team, Some("c"), "县水利局", day)
        .unwrap();
    let supervisor = session(&server, "sv-chen", "v", Role::VillageSupervisor);
    let centre = session(&server, "cc-zhou", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["dc-1"]);

    let visit_day = calendar::cycle_of(today());
    let mut h = Household::new(HouseholdId::new(), GridId::new("dc-1"), "东村", "17号");
    let member = Member {
        id: MemberId::new(),
        relation: Relation::Head,
        name: "王建国".into(),
        id_number: None,
        birth_date: None,
        phone: None,
        tags: vec![TagSpan {
            group: KeyGroup::ElderlyAlone,
            since: "2026-01-01".parse().unwrap(),
            until: None,
        }],
    };
    let member_id = member.id;
    h.members.insert(member.id, member);
    h.tags.push(TagSpan {
        group: KeyGroup::ElderlyAlone,
        since: "2026-01-01".parse().unwrap(),
        until: None,
    });
    let household = worker.store.create_household(&h).unwrap();
    let other = worker
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("dc-1"),
            "东村",
            "18号",
        ))
        .unwrap();

    let mut d = qiaomen_tests::sample_demand(&worker.author, 0, "门前排水沟堵塞，雨天积水");
    d.raised_at_ms = now_ms();
    d.urgency = Urgency::Urgent;
    let mut v = sample_visit(&worker.author, visit_day, "老人独居，身体尚可");
    v.outcome = VisitOutcome::Met;
    v.people_met = vec![member_id];
    v.gps = Some(Gps {
        lat: 31.2301,
        lon: 121.4737,
        accuracy_m: Some(15.0),
    });
    v.needs = vec![Need {
        category: NeedCategory::HealthCare,
        detail: "需要降压药".into(),
    }];
    v.hazards = vec![Hazard {
        kind: HazardKind::Fire,
        detail: "楼道堆放杂物".into(),
    }];
    v.disputes = vec![Dispute {
        kind: DisputeKind::Neighbours,
        detail: "与邻居因排水沟争执".into(),
    }];
    v.publicity = vec![Publicity::AntiFraud];
    v.demands_raised = vec![d.id];
    worker
        .store
        .record_visit(household, &v, std::slice::from_ref(&d))
        .unwrap();
    let mut absent = sample_visit(&worker.author, visit_day, "");
    absent.outcome = VisitOutcome::NobodyHome;
    worker.store.record_visit(other, &absent, &[]).unwrap();
    worker.sync().unwrap();

    let (status, o) = call(
        "POST",
        &format!("{}/api/v1/orders/{}/steps", server.url, d.id),
        &centre,
        Some(json!({"action": "dispatch", "team": "team-water", "tier": "coordinate"})),
    );
    assert_eq!(status, 200, "{o}");
    World {
        server,
        worker,
        supervisor,
        centre,
        household,
        other,
        visit: v.id,
        demand: d.id,
        member: member_id.to_string(),
        _dir: dir,
    }
}

fn view(w: &World) -> Value {
    let (status, v) = call(
        "GET",
        &format!("{}/api/v1/households/{}", w.server.url, w.household),
        &w.supervisor,
        None,
    );
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn a_visit_reads_whole_and_a_fix_reads_as_its_difference() {
    let mut w = world();
    let v = view(&w);
    let visit = &v["visits"][0];
    assert_eq!(visit["id"], w.visit.to_string());
    assert_eq!(visit["outcome"], "met");
    assert_eq!(visit["note"], "老人独居，身体尚可");
    assert_eq!(
        visit["hazards"],
        json!([{"kind": "fire", "detail": "楼道堆放杂物"}])
    );
    assert_eq!(
        visit["needs"],
        json!([{"kind": "health_care", "detail": "需要降压药"}])
    );
    assert_eq!(visit["disputes"][0]["kind"], "neighbours");
    assert_eq!(visit["publicity"], json!(["anti_fraud"]));
    assert_eq!(visit["gps"]["lat"], 31.2301);
    assert_eq!(
        visit["people_met"],
        json!([{"id": w.member, "name": "王建国"}])
    );
    assert_eq!(visit["demands"][0]["id"], w.demand.to_string());
    assert_eq!(visit["demands"][0]["text"], "门前排水沟堵塞，雨天积水");
    assert_eq!(visit["demands"][0]["urgency"], "urgent");
    assert_eq!(visit["demands"][0]["status"], "dispatched");
    let line = |field: &str| -> String {
        visit["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["field"] == field)
            .unwrap_or_else(|| panic!("a {field} line"))["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(line("hazards"), "消防隐患：楼道堆放杂物");
    assert_eq!(line("outcome"), "见到住户");
    assert_eq!(line("people_met"), "王建国");
    let writers: Vec<&Value> = visit["recorded_by"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["field"] == "note")
        .collect();
    assert_eq!(writers.len(), 1, "{visit}");
    assert_eq!(writers[0]["user"], w.worker.author.user.to_string());
    assert_eq!(writers[0]["device"], w.worker.author.device.to_string());

    // Returned with a comment; the worker fixes the note on the phone.
    let heads = v["heads"].clone();
    let (status, r) = call(
        "POST",
        &format!("{}/api/v1/households/{}/reviews", w.server.url, w.household),
        &w.supervisor,
        Some(
            json!({"visit_id": w.visit.to_string(), "decision": "returned",
                    "comment": "请补充用药情况", "heads": heads}),
        ),
    );
    assert_eq!(status, 201, "{r}");
    let v = view(&w);
    assert_eq!(v["reviews"][0]["decision"], "returned");
    assert_eq!(v["reviews"][0]["state"], "current");
    assert_eq!(v["reviews"][0]["changes"], json!([]));
    w.worker.sync().unwrap();
    w.worker
        .store
        .replace_note(
            w.household,
            w.visit,
            "老人独居，身体尚可；每日服用降压药一次",
        )
        .unwrap();
    w.worker.sync().unwrap();

    let v = view(&w);
    let review = &v["reviews"][0];
    assert_eq!(review["state"], "stale");
    assert_eq!(
        review["changes"],
        json!([{"field": "note", "label": "走访记录",
                "before": "老人独居，身体尚可",
                "after": "老人独居，身体尚可；每日服用降压药一次"}]),
        "the fix, line by line, and nothing else"
    );
    // Fields by name: provenance and the page never show a path of ids.
    let labels: Vec<&str> = v["provenance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"成员 王建国 · 姓名"), "{labels:?}");
    let visit_day = v["visits"][0]["visit_day"].as_str().unwrap().to_string();
    assert!(
        labels.contains(&format!("{visit_day} 的走访 · 走访记录").as_str()),
        "{labels:?}"
    );
    assert!(labels.iter().all(|l| !l.contains(&w.member)));

    let (status, page) = get_text(
        &format!("{}/households/{}", w.server.url, w.household),
        &w.supervisor,
    );
    assert_eq!(status, 200);
    let text = visible(&page);
    for seen in [
        "楼道堆放杂物",
        "需要降压药",
        "与邻居因排水沟争执",
        "防范电信诈骗",
        "门前排水沟堵塞",
        "审核之后的修改",
        "每日服用降压药一次",
        "东村第一网格",
        "测试的手机",
    ] {
        assert!(text.contains(seen), "the household page shows {seen}");
    }
}

#[test]
fn nothing_stored_or_served_is_a_debug_name_and_pages_name_things() {
    let w = world();
    let debug = debug_names();
    let url = &w.server.url;
    let day = calendar::cycle_of(today());

    // The API: every string of every answer a supervisor or the centre reads.
    let mut served = Vec::new();
    for (path, token) in [
        (format!("/api/v1/households/{}", w.household), &w.supervisor),
        (format!("/api/v1/households/{}", w.other), &w.supervisor),
        ("/api/v1/grids/dc-1/households".to_string(), &w.supervisor),
        ("/api/v1/orders".to_string(), &w.centre),
        (format!("/api/v1/orders/{}", w.demand), &w.centre),
        (format!("/api/v1/coverage?unit=v&day={day}"), &w.supervisor),
        (
            format!("/api/v1/coverage?unit=dc-1&day={day}"),
            &w.supervisor,
        ),
        ("/api/v1/stats?unit=v".to_string(), &w.supervisor),
        ("/v1/me".to_string(), &w.supervisor),
    ] {
        let (status, body) = call("GET", &format!("{url}{path}"), token, None);
        assert_eq!(status, 200, "{path}: {body}");
        strings(&body, &mut served);
    }
    assert!(served.len() > 100, "the answers hold the data set");
    let bad: Vec<&String> = served.iter().filter(|s| debug.contains(*s)).collect();
    assert!(bad.is_empty(), "Debug names served: {bad:?}");
    for code in [
        "met",
        "nobody_home",
        "elderly_alone",
        "dispatched",
        "coordinate",
    ] {
        assert!(served.iter().any(|s| s == code), "{code} is served");
    }

    // Search by a key group's Chinese name, or its code.
    for q in ["独居", "elderly_alone"] {
        let (_, rows) = call(
            "GET",
            &format!("{url}/api/v1/grids/dc-1/households?q={q}"),
            &w.supervisor,
            None,
        );
        assert_eq!(
            rows.as_array().unwrap().len(),
            1,
            "{q} finds the household: {rows}"
        );
    }

    // The pages and the export: no English enum name, no id where a name exists.
    let ids = [
        w.worker.author.user.to_string(),
        w.worker.author.device.to_string(),
        "dc-1".to_string(),
        "team-water".to_string(),
    ];
    for (path, token) in [
        (format!("/households/{}", w.household), &w.supervisor),
        (format!("/households/{}", w.other), &w.supervisor),
        ("/grids/dc-1".to_string(), &w.supervisor),
        ("/orders".to_string(), &w.centre),
        (format!("/orders/{}", w.demand), &w.centre),
        (format!("/coverage?unit=dc-1&day={day}"), &w.supervisor),
        ("/stats?unit=v".to_string(), &w.supervisor),
        (format!("/grids/dc-1/map?day={day}"), &w.supervisor),
        ("/report?unit=v".to_string(), &w.supervisor),
        (
            "/api/v1/grids/dc-1/export?format=csv".to_string(),
            &w.supervisor,
        ),
        (
            "/api/v1/stats/export?unit=v&format=csv".to_string(),
            &w.supervisor,
        ),
        (
            "/api/v1/grids/dc-1/export?format=xlsx".to_string(),
            &w.supervisor,
        ),
        (
            "/api/v1/stats/export?unit=v&format=xlsx".to_string(),
            &w.supervisor,
        ),
    ] {
        let (status, _, body) = get_raw(&format!("{url}{path}"), token);
        assert_eq!(status, 200, "{path}");
        let text = if path.contains("format=xlsx") {
            xlsx_strings(body)
        } else if path.contains("export") {
            String::from_utf8(body).unwrap()
        } else {
            visible(&String::from_utf8(body).unwrap())
        };
        if path.contains("grids/dc-1/export") {
            assert!(
                text.contains("独居老人") && text.contains("在住"),
                "{path} says it in words"
            );
        }
        let found: Vec<String> = words(&text).intersection(&debug).cloned().collect();
        assert!(found.is_empty(), "{path} shows {found:?}");
        for id in &ids {
            assert!(!text.contains(id.as_str()), "{path} shows the id {id}");
        }
    }
    let (_, grid_page) = get_text(&format!("{url}/grids/dc-1"), &w.supervisor);
    assert!(visible(&grid_page).contains("独居老人") && grid_page.contains("东村第一网格"));
    let (_, order_page) = get_text(&format!("{url}/orders/{}", w.demand), &w.centre);
    let order_text = visible(&order_page);
    assert!(order_text.contains("县水利局") && order_text.contains("协调办理"));
    assert!(
        order_page.contains(r#"<option value="team-water">县水利局</option>"#),
        "dispatch picks a team by name"
    );

    // The read model holds codes.
    let db = w.server.db();
    let column = |sql: &str| -> Vec<String> {
        db.rows::<Option<String>>(sql, &[])
            .unwrap()
            .into_iter()
            .flatten()
            .collect()
    };
    let statuses = column("SELECT status FROM idx_households");
    assert_eq!(statuses, ["active", "active"]);
    let outcomes: BTreeSet<String> = column("SELECT outcome FROM idx_visits")
        .into_iter()
        .collect();
    assert_eq!(
        outcomes,
        ["met", "nobody_home"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    for (sql, parses) in [
        (
            "SELECT status FROM idx_orders",
            (|s: &str| DemandStatus::from_code(s).map(Term::code)) as fn(&str) -> Option<&str>,
        ),
        ("SELECT tier FROM idx_orders", |s| {
            Tier::from_code(s).map(Term::code)
        }),
        ("SELECT source FROM idx_orders", |s| {
            DemandSource::from_code(s).map(Term::code)
        }),
        ("SELECT category FROM idx_orders", |s| {
            NeedCategory::from_code(s).map(Term::code)
        }),
        ("SELECT urgency FROM idx_orders", |s| {
            Urgency::from_code(s).map(Term::code)
        }),
        ("SELECT step FROM idx_orders", |s| {
            StepKind::from_code(s).map(Term::code)
        }),
    ] {
        let values = column(sql);
        assert!(!values.is_empty(), "{sql}");
        for v in values {
            assert_eq!(parses(&v), Some(v.as_str()), "{sql}: {v} is a code");
        }
    }
    let tags = column("SELECT tags FROM idx_households");
    assert!(
        tags.iter().any(|t| t.contains("\"elderly_alone\"")),
        "{tags:?}"
    );
    assert!(tags.iter().all(|t| !t.contains("ElderlyAlone")), "{tags:?}");
}

/// Posts a page's form as a browser would (same-site `Origin`), returning the status and the
/// page (a redirect is not followed: its status says the form was taken).
fn post_form(server: &TestServer, path: &str, token: &str, form: &[(&str, &str)]) -> (u16, String) {
    block_on(async {
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}{path}", server.url))
            .bearer_auth(token)
            .header("Origin", &server.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(urlencoded(form))
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    })
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
fn urlencoded(form: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The links of a page's menu.
fn menu(page: &str) -> Vec<String> {
    let nav = page
        .split("<nav id=\"nav\">")
        .nth(1)
        .and_then(|rest| rest.split("</nav>").next())
        .unwrap_or("");
    nav.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|href| href.replace("&#x2f;", "/"))
        .collect()
}

#[test]
fn menus_link_only_to_what_a_role_can_open() {
    let w = world();
    let url = &w.server.url;
    let team = session(&w.server, "t-water", "team-water", Role::TeamMember);
    let admin = session(&w.server, "admin-1", "c", Role::Admin);
    for (token, landing, expect) in [
        (&team, "/orders", vec!["/orders"]),
        (&admin, "/devices", vec!["/devices", "/admin"]),
        (
            &w.supervisor,
            "/",
            vec![
                "/",
                "/coverage",
                "/orders",
                "/ledger",
                "/journal",
                "/tasks",
                "/stats",
                "/refused",
                "/phones",
            ],
        ),
    ] {
        let (status, page) = get_text(&format!("{url}{landing}"), token);
        assert_eq!(status, 200, "{landing}");
        let links = menu(&page);
        assert_eq!(links, expect, "the menu of {landing}");
        for link in links {
            let (status, _) = get_text(&format!("{url}{link}"), token);
            assert_eq!(status, 200, "{link} opens for whoever the menu shows it to");
        }
    }
}

#[test]
fn a_refused_step_keeps_what_was_typed_and_names_the_field() {
    let w = world();
    let team = session(&w.server, "t-water", "team-water", Role::TeamMember);
    let path = format!("/orders/{}/step", w.demand);
    // An extension of 99 working days: refused, the comment kept, the field named.
    let (status, page) = post_form(
        &w.server,
        &path,
        &team,
        &[
            ("action", "extend"),
            ("comment", "等待配件到货"),
            ("extend_days", "99"),
        ],
    );
    assert_eq!(status, 422);
    assert!(
        page.contains(r#"data-field="extend_days""#),
        "names the field"
    );
    assert!(page.contains("1 到 30 个工作日"), "says why");
    assert!(
        page.contains(r#"value="等待配件到货""#),
        "keeps what was typed"
    );
    // A bounce without its reason.
    let (status, page) = post_form(&w.server, &path, &team, &[("action", "bounce")]);
    assert_eq!(status, 422);
    assert!(page.contains(r#"data-field="comment""#) && page.contains("退单理由"));
    assert!(
        page.contains(r#"<option value="bounce" selected>"#),
        "the step chosen stays chosen"
    );
    // A step this member may not take (the order waits for the team to accept it; a
    // feedback is the grid's) is refused in words, with the form kept.
    let (status, page) = post_form(
        &w.server,
        &path,
        &team,
        &[("action", "feedback"), ("comment", "已告知群众")],
    );
    assert_eq!(status, 422, "{}", visible(&page));
    assert!(page.contains(r#"id="step-problem""#) && page.contains(r#"value="已告知群众""#));
    // Nothing of these was written; a complete bounce is.
    let (_, o) = call(
        "GET",
        &format!("{}/api/v1/orders/{}", w.server.url, w.demand),
        &w.centre,
        None,
    );
    assert_eq!(o["order"]["status"], "dispatched");
    let (status, _) = post_form(
        &w.server,
        &path,
        &team,
        &[("action", "bounce"), ("comment", "不属于本单位职责")],
    );
    assert_eq!(status, 303);
    let (_, o) = call(
        "GET",
        &format!("{}/api/v1/orders/{}", w.server.url, w.demand),
        &w.centre,
        None,
    );
    assert_eq!(o["order"]["status"], "bounced");
}

#[test]
fn a_supervisor_of_both_grids_moves_a_household_on_its_page() {
    let w = world();
    let url = &w.server.url;
    // 陈 supervises the village (every grid of it); 李 only grid g1.
    let li = session(&w.server, "sv-li", "g1", Role::VillageSupervisor);
    let (_, page) = get_text(&format!("{url}/households/{}", w.household), &w.supervisor);
    assert!(
        page.contains(r#"id="move-form""#),
        "the village's supervisor may move it"
    );
    assert!(page.contains(r#"<option value="g1">g1</option>"#));
    let (status, _) = post_form(
        &w.server,
        &format!("/households/{}/move", w.household),
        &w.supervisor,
        &[("grid", "g1")],
    );
    assert_eq!(status, 303);
    let v = view(&w);
    assert_eq!(v["grid"], "g1");
    assert_eq!(
        v["visits"].as_array().unwrap().len(),
        1,
        "its visit travels with it"
    );

    // 李 reads it now, but does not supervise 东村第一网格: no form, and the API refuses.
    let (status, page) = get_text(&format!("{url}/households/{}", w.household), &li);
    assert_eq!(status, 200);
    assert!(!page.contains(r#"id="move-form""#));
    let (status, body) = call(
        "POST",
        &format!("{url}/api/v1/households/{}/move", w.household),
        &li,
        Some(json!({"grid": "dc-1"})),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _) = call(
        "POST",
        &format!("{url}/api/v1/households/{}/move", w.household),
        &w.supervisor,
        Some(json!({"grid": "nowhere"})),
    );
    assert_eq!(status, 404);
    assert_eq!(view(&w)["grid"], "g1", "a refused move changes nothing");
}

#[test]
fn supervisors_see_each_phone_its_last_sync_what_it_holds_and_what_it_runs() {
    let mut w = world();
    let url = w.server.url.clone();
    // The worker's app names itself; a second phone of the grid never synced.
    w.worker.client = w.worker.client.clone().with_app("gridapp/2.3.1");
    w.worker.sync().unwrap();
    let _idle = w.server.phone(&w._dir.path().join("idle.db"), &["dc-1"]);
    let phones = |q: &str| -> Vec<Value> {
        let (status, rows) = call(
            "GET",
            &format!("{url}/api/v1/phones{q}"),
            &w.supervisor,
            None,
        );
        assert_eq!(status, 200, "{rows}");
        rows.as_array().unwrap().clone()
    };
    let all = phones("?unit=v");
    assert_eq!(all.len(), 2, "{all:?}");
    let mine = all
        .iter()
        .find(|p| p["device"] == w.worker.author.device.to_string())
        .expect("the worker's phone");
    assert_eq!(mine["grid_name"], "东村第一网格");
    assert_eq!(mine["worker_name"], "测试");
    assert_eq!(mine["days_since_sync"], 0);
    assert_eq!(mine["pending"], 0, "it holds nothing unsent");
    assert_eq!(
        mine["agent"],
        format!("{} gridapp/2.3.1", qiaomen_client_core::sync::LIBRARY_AGENT)
    );
    assert!(mine["label"].as_str().unwrap().starts_with("测试的手机，"));
    let never = all.iter().find(|p| p != &mine).unwrap();
    assert_eq!(never["last_sync_ms"], Value::Null);

    // Five days without a sync: listed among the phones not synced for 3 days, not for 7.
    w.server
        .db()
        .execute(
            "UPDATE devices SET last_sync_ms = last_sync_ms - 5 * 86400000 WHERE id = ?1",
            &[&w.worker.author.device.to_string()],
        )
        .unwrap();
    let stale: Vec<Value> = phones("?unit=v&stale_days=3");
    assert_eq!(stale.len(), 2);
    assert!(stale.iter().any(|p| p["days_since_sync"] == 5));
    let stale: Vec<Value> = phones("?unit=v&stale_days=7");
    assert_eq!(stale, vec![never.clone()], "only the one that never synced");
    let (status, _) = call(
        "GET",
        &format!("{url}/api/v1/phones?stale_days=99999"),
        &w.supervisor,
        None,
    );
    assert_eq!(status, 400);

    let (status, page) = get_text(&format!("{url}/phones?stale_days=3"), &w.supervisor);
    assert_eq!(status, 200);
    let text = visible(&page);
    assert!(text.contains("5 天前") && text.contains("从未同步") && text.contains("gridapp/2.3.1"));
    assert!(text.contains("东村第一网格") && !text.contains("dc-1"));
    // A grid worker watches no one's phone (it reads the grid, it does not supervise it); a
    // team member has no grid at all.
    let (status, rows) = call(
        "GET",
        &format!("{url}/api/v1/phones"),
        &w.worker.token(),
        None,
    );
    assert_eq!((status, rows), (200, json!([])));
    let team = session(&w.server, "t-water", "team-water", Role::TeamMember);
    assert_eq!(
        call("GET", &format!("{url}/api/v1/phones"), &team, None).0,
        404
    );
}
