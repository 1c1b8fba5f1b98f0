//! Supervisors sign off on an exact document version, or return a visit for a fix, which
//! reaches the worker's phone as a task and goes away when the visit is fixed.

use qiaomen_protocol::{
    calendar::Day,
    doc::{HouseholdDoc, actor_for},
    ids::*,
    schema::*,
    wire::RejectCode,
};
use qiaomen_server::access::Role;
use qiaomen_tests::{TestServer, block_on, call, sample_visit, session as supervisor};

#[test]
fn a_sign_off_pins_a_version_and_a_returned_visit_is_a_task_on_the_phone_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let id = worker
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "东村",
            "3",
        ))
        .unwrap();
    let day: Day = "2026-11-15".parse().unwrap();
    let first = sample_visit(&worker.author, day, "第一次走访");
    let second = sample_visit(&worker.author, day, "第二次走访");
    worker.store.record_visit(id, &first, &[]).unwrap();
    worker.store.record_visit(id, &second, &[]).unwrap();
    worker.sync().unwrap();

    let boss = supervisor(&server, "s-village", "v", Role::VillageSupervisor);
    let url = format!("{}/api/v1/households/{id}", server.url);
    let (status, view) = call("GET", &url, &boss, None);
    let me = call("GET", &format!("{}/v1/me", server.url), &boss, None);
    assert_eq!(status, 200, "{view} {me:?}");
    let heads = view["heads"].clone();

    // Approve the first visit at the version seen; return the second with a comment.
    let review_url = format!("{url}/reviews");
    let (status, _) = call(
        "POST",
        &review_url,
        &boss,
        Some(
            serde_json::json!({"visit_id": first.id.to_string(), "decision": "Approved", "heads": heads}),
        ),
    );
    assert_eq!(status, 201);
    let (status, _) = call(
        "POST",
        &review_url,
        &boss,
        Some(
            serde_json::json!({"visit_id": second.id.to_string(), "decision": "Returned",
                                "comment": "请补充老人用药情况", "heads": heads}),
        ),
    );
    assert_eq!(status, 201);
    let (_, view) = call("GET", &url, &boss, None);
    let states: Vec<&str> = view["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["current", "current"], "{view}");
    assert_eq!(
        view["open_tasks"],
        serde_json::json!([second.id.to_string()])
    );

    // The worker's phone gets the return as a task on its next sync.
    worker.sync().unwrap();
    let tasks = worker.store.fix_tasks().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].0, id);
    assert_eq!(tasks[0].1.visit, second.id);
    assert_eq!(tasks[0].1.comment, "请补充老人用药情况");
    // A colleague of the same grid holds the household and the review, but the returned
    // visit is not their task.
    let mut colleague = server.phone(&dir.path().join("c.db"), &["g1"]);
    colleague.sync().unwrap();
    assert_eq!(colleague.store.household(id).unwrap().reviews.len(), 2);
    assert_eq!(colleague.store.fix_tasks().unwrap(), vec![]);
    // The worker fixes the visit: the task is gone on the phone, then on the server, and
    // the sign-off of the same version is now stale.
    worker
        .store
        .replace_note(id, second.id, "第二次走访：已按时服降压药")
        .unwrap();
    assert!(worker.store.fix_tasks().unwrap().is_empty());
    assert!(worker.sync().unwrap().rejected.is_empty());
    let (_, view) = call("GET", &url, &boss, None);
    assert_eq!(view["open_tasks"], serde_json::json!([]));
    let approved = view["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["decision"] == "approved")
        .unwrap();
    assert_eq!(
        approved["state"], "stale",
        "a later edit makes the sign-off stale"
    );
    assert_eq!(approved["heads"], heads, "it keeps the version it signed");

    // Bad requests: an unknown version, a visit not in the household, and a reviewer who
    // does not supervise the grid.
    let (status, body) = call(
        "POST",
        &review_url,
        &boss,
        Some(
            serde_json::json!({"visit_id": first.id.to_string(), "decision": "Approved",
                                "heads": ["00".repeat(32)]}),
        ),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("unknown_version"))
    );
    let (status, _) = call(
        "POST",
        &review_url,
        &boss,
        Some(
            serde_json::json!({"visit_id": VisitId::new().to_string(), "decision": "Approved",
                                "heads": heads}),
        ),
    );
    assert_eq!(status, 404);
    let head = supervisor(&server, "s-grid-head", "g1", Role::GridHead);
    let (status, _) = call(
        "POST",
        &review_url,
        &head,
        Some(
            serde_json::json!({"visit_id": first.id.to_string(), "decision": "Approved",
                                "heads": heads}),
        ),
    );
    assert_eq!(status, 403, "a grid head reads but does not sign off");

    // A worker cannot slip a review in through sync.
    let base = worker.store.document(id).unwrap().save();
    let mut doc = HouseholdDoc::load(&base).unwrap();
    doc.set_actor(actor_for(worker.author.device));
    let forged = Review {
        id: ReviewId::new(),
        visit: first.id,
        decision: ReviewDecision::Approved,
        comment: String::new(),
        reviewer: worker.author.user,
        device: worker.author.device,
        at_ms: 1,
        heads: vec![doc.heads()[0].to_string()],
    };
    let hash = doc.add_review(&worker.author, 1, &forged).unwrap();
    let token = worker.store.credentials().unwrap().unwrap().token;
    let (_, resp) = qiaomen_tests::raw_upload(
        &server.url,
        &token,
        id,
        vec![doc.change_bytes(&hash).unwrap()],
    );
    let resp = resp.expect("a sync answer");
    assert_eq!(resp.rejected[0].code, RejectCode::NotAllowed);
    // Reviews are audited.
    let log = server.access().audit_log(0, 1000).unwrap();
    assert_eq!(log.iter().filter(|e| e.action == "review").count(), 2);
}

#[test]
fn a_supervisor_resolves_a_conflict_and_searches_a_grid_and_the_phones_follow() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut b = server.phone(&dir.path().join("b.db"), &["g1"]);
    let mut h = Household::new(HouseholdId::new(), GridId::new("g1"), "东村三组", "17");
    let m = MemberId::new();
    h.members.insert(
        m,
        Member {
            id: m,
            relation: Relation::Head,
            name: "王建国".into(),
            id_number: None,
            birth_date: None,
            phone: None,
            tags: vec![],
        },
    );
    let id = a.store.create_household(&h).unwrap();
    a.store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "西头",
            "2",
        ))
        .unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    a.store
        .edit_household(id, |h| {
            h.door_number = "17A".into();
            Ok(())
        })
        .unwrap();
    b.store
        .edit_household(id, |h| {
            h.door_number = "17-1".into();
            Ok(())
        })
        .unwrap();
    a.sync().unwrap();
    b.sync().unwrap();

    let boss = supervisor(&server, "s-town", "t", Role::TownSupervisor);
    // Search the grid: by a member's name, by door number; nothing for a stranger's name.
    let list = |q: &str| {
        let (status, rows) = call(
            "GET",
            &format!("{}/api/v1/grids/g1/households?q={q}", server.url),
            &boss,
            None,
        );
        assert_eq!(status, 200);
        rows.as_array().unwrap().len()
    };
    assert_eq!(list(""), 2);
    // The drill-down: the town's units, parents first, with the grid's household count.
    let (status, org) = call("GET", &format!("{}/api/v1/org", server.url), &boss, None);
    assert_eq!(status, 200);
    let units = org.as_array().unwrap();
    assert_eq!(units[0]["id"], "t");
    assert_eq!(units[1]["id"], "v");
    let g1 = units.iter().find(|u| u["id"] == "g1").unwrap();
    assert_eq!(
        (g1["kind"].as_str(), g1["households"].as_u64()),
        (Some("grid"), Some(2))
    );
    assert!(
        units.iter().all(|u| u["id"] != "c"),
        "nothing above the town"
    );
    assert_eq!(list("%E7%8E%8B%E5%BB%BA%E5%9B%BD"), 1, "by name 王建国");
    assert_eq!(list("17"), 1);
    assert_eq!(list("nobody"), 0);
    let (status, _) = call(
        "GET",
        &format!("{}/api/v1/grids/g9/households", server.url),
        &boss,
        None,
    );
    assert_eq!(status, 404, "a grid outside the scope looks missing");

    // The conflict, side by side with author and time; the supervisor picks b's value.
    let url = format!("{}/api/v1/households/{id}", server.url);
    let (_, view) = call("GET", &url, &boss, None);
    let conflict = &view["conflicts"][0];
    assert_eq!(conflict["path"], serde_json::json!(["door_number"]));
    let pick = conflict["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "17-1")
        .unwrap();
    assert_eq!(pick["device"], b.author.device.to_string());
    let (status, _) = call(
        "POST",
        &format!("{url}/conflicts/resolve"),
        &boss,
        Some(serde_json::json!({"path": ["door_number"], "op": pick["op"]})),
    );
    assert_eq!(status, 204);
    let (_, view) = call("GET", &url, &boss, None);
    assert_eq!(view["conflicts"], serde_json::json!([]));
    // The supervisor's change reaches both phones.
    for p in [&mut a, &mut b] {
        p.sync().unwrap();
        assert_eq!(p.store.household(id).unwrap().door_number, "17-1");
        assert!(p.store.conflicts(id).unwrap().is_empty());
    }
    // A worker's session cannot resolve; a bad value is refused and nothing changes.
    let worker_session = supervisor(&server, "w-session", "g1", Role::GridWorker);
    let (status, _) = call(
        "POST",
        &format!("{url}/conflicts/resolve"),
        &worker_session,
        Some(serde_json::json!({"path": ["door_number"], "value": "x"})),
    );
    assert_eq!(status, 403);
    let (status, _) = call(
        "POST",
        &format!("{url}/conflicts/resolve"),
        &boss,
        Some(serde_json::json!({"path": ["status"], "value": 42})),
    );
    assert_eq!(status, 400);
    let (_, view) = call("GET", &url, &boss, None);
    assert_eq!(view["status"], "active");

    // Exports of the grid's list: CSV with a byte-order mark and quoted cells, and XLSX; both
    // carry the Chinese text, and both are audited.
    let export = |format: &str| {
        block_on(async {
            let resp = reqwest::Client::new()
                .get(format!(
                    "{}/api/v1/grids/g1/export?format={format}",
                    server.url
                ))
                .bearer_auth(&boss)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp.bytes().await.unwrap().to_vec()
        })
    };
    let csv = String::from_utf8(export("csv")).unwrap();
    assert!(csv.starts_with('\u{feff}'));
    let lines: Vec<&str> = csv.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(lines.len(), 3, "a header and two households");
    assert!(lines[0].starts_with("\"户编号\",\"门牌号\",\"地址\""));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"17-1\"") && l.contains("\"东村三组\""))
    );
    let xlsx = export("xlsx");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(xlsx)).unwrap();
    let mut strings = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("xl/sharedStrings.xml").unwrap(),
        &mut strings,
    )
    .unwrap();
    assert!(strings.contains("门牌号") && strings.contains("东村三组") && strings.contains("17-1"));
    let (status, _) = call(
        "GET",
        &format!("{}/api/v1/grids/g1/export?format=pdf", server.url),
        &boss,
        None,
    );
    assert_eq!(status, 400);
    let log = server.access().audit_log(0, 1000).unwrap();
    let exports: Vec<_> = log
        .iter()
        .filter(|e| e.action == "export")
        .map(|e| e.target.clone().unwrap_or_default())
        .collect();
    assert_eq!(exports, vec!["g1.csv", "g1.xlsx"]);
}

/// The OpenAPI document describes the JSON API the server serves: every documented operation
/// exists (it answers 401 without a token, or a typed 4xx, never 404/405), and a real answer
/// has every field its schema requires.
#[test]
fn the_openapi_document_matches_the_served_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let (status, doc) = block_on(async {
        let resp = reqwest::get(format!("{}/api/v1/openapi.json", server.url))
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    });
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let want = [
        "GET /api/v1/audit",
        "GET /api/v1/cases",
        "GET /api/v1/cases/export",
        "GET /api/v1/cases/{id}",
        "GET /api/v1/coverage",
        "GET /api/v1/coverage/series",
        "GET /api/v1/devices",
        "GET /api/v1/grids/{grid}/export",
        "GET /api/v1/grids/{grid}/households",
        "GET /api/v1/households/{id}",
        "GET /api/v1/journal",
        "GET /api/v1/orders",
        "GET /api/v1/orders/{demand}",
        "GET /api/v1/org",
        "GET /api/v1/phones",
        "GET /api/v1/ranking",
        "GET /api/v1/refused",
        "GET /api/v1/stats",
        "GET /api/v1/stats/export",
        "GET /api/v1/tasks",
        "GET /api/v1/tasks/{id}",
        "GET /api/v1/workflow",
        "GET /v1/me",
        "GET /v1/photos/{hash}",
        "HEAD /v1/photos/{hash}",
        "PATCH /v1/photos/{hash}",
        "POST /api/v1/cases/{id}/steps",
        "POST /api/v1/devices/{id}/retire",
        "POST /api/v1/devices/{id}/revoke",
        "POST /api/v1/households/{id}/conflicts/resolve",
        "POST /api/v1/households/{id}/demands",
        "POST /api/v1/households/{id}/move",
        "POST /api/v1/households/{id}/reviews",
        "POST /api/v1/journal/{id}/case",
        "POST /api/v1/journal/{id}/dispatch",
        "POST /api/v1/orders/import",
        "POST /api/v1/orders/{demand}/steps",
        "POST /api/v1/tasks",
        "POST /api/v1/tasks/{id}/done",
        "POST /v1/enroll",
        "POST /v1/login",
        "POST /v1/logout",
        "POST /v1/token",
    ];
    assert_eq!(documented, want);
    for op in want {
        let (method, path) = op.split_once(' ').unwrap();
        let url = format!(
            "{}{}",
            server.url,
            path.replace("{id}", &HouseholdId::new().to_string())
                .replace("{grid}", "g1")
                .replace("{demand}", &DemandId::new().to_string())
                .replace("{hash}", &"ab".repeat(32))
        );
        let (status, body) = block_on(async {
            let client = reqwest::Client::new();
            let req = client.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            );
            let resp = req
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        });
        assert!(
            (400..500).contains(&status) && status != 404 && status != 405,
            "{op}: {status}"
        );
        // A HEAD answer has no body: its status is the answer.
        if method != "HEAD" {
            assert!(body["error"]["code"].is_string(), "{op}: typed error body");
        }
    }
    // A real answer carries what its schema requires.
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let id = worker
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "东村",
            "1",
        ))
        .unwrap();
    worker.sync().unwrap();
    let boss = supervisor(&server, "s-openapi", "v", Role::VillageSupervisor);
    let (_, view) = call(
        "GET",
        &format!("{}/api/v1/households/{id}", server.url),
        &boss,
        None,
    );
    let required = doc["components"]["schemas"]["HouseholdView"]["required"]
        .as_array()
        .unwrap();
    assert!(required.len() >= 10);
    for field in required {
        assert!(
            view.get(field.as_str().unwrap()).is_some(),
            "HouseholdView.{field} is in the answer"
        );
    }
    // Bad JSON gets a typed error, not axum's plain text.
    let (status, body) = call(
        "POST",
        &format!("{}/api/v1/households/{id}/reviews", server.url),
        &boss,
        Some(serde_json::json!({"visit": 1})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed"))
    );
}

#[test]
fn failed_logins_are_audited_without_recording_what_is_not_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    supervisor(&server, "s-audit", "v", Role::VillageSupervisor);
    for (login, password) in [("s-audit", "wrong password!"), ("my secret pass", "x")] {
        let status = block_on(async {
            reqwest::Client::new()
                .post(format!("{}/v1/login", server.url))
                .json(&serde_json::json!({"login": login, "password": password}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(status, 401);
    }
    let failed: Vec<Option<String>> = server
        .access()
        .audit_log(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "login" && e.outcome == "bad_credentials")
        .map(|e| e.target)
        .collect();
    assert_eq!(failed, vec![Some("s-audit".to_string()), None]);
}
