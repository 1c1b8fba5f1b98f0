//! Supervisors sign off on an exact document version, or return a visit for a fix, which
//! reaches the worker's phone as a task and goes away when the visit is fixed.

use qiaomen_protocol::{
    calendar::Day,
    doc::{HouseholdDoc, actor_for},
    ids::*,
    schema::*,
    wire::{self, CONTENT_TYPE, DocChanges, RejectCode, SyncRequest, SyncResponse},
};
use qiaomen_server::access::Role;
use qiaomen_tests::{TestServer, sample_visit};

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    block_on(async {
        let client = reqwest::Client::new();
        let mut req = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        }
        .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    })
}

/// A supervisor (password login) of `unit` with `role`; returns the session token.
fn supervisor(server: &TestServer, login: &str, unit: &str, role: Role) -> String {
    let db = server.access();
    let user = db.add_user(login, "督导").unwrap();
    db.assign(user, unit, role, 0).unwrap();
    db.set_password(user, "review-password-1").unwrap();
    let (status, body) = block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/login", server.url))
            .json(&serde_json::json!({"login": login, "password": "review-password-1"}))
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    });
    assert_eq!(status, 200);
    body["token"].as_str().unwrap().to_string()
}

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
        .find(|r| r["decision"] == "Approved")
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
    let req = SyncRequest {
        scope_digest: None,
        cursor_check: None,
        version: 1,
        cursor: None,
        docs: vec![DocChanges {
            id,
            changes: vec![serde_bytes::ByteBuf::from(doc.change_bytes(&hash).unwrap())],
        }],
        grids: vec![],
    };
    let token = worker.store.credentials().unwrap().unwrap().token;
    let body = block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/sync", server.url))
            .header("content-type", CONTENT_TYPE)
            .bearer_auth(token)
            .body(wire::encode(&req))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let resp: SyncResponse = wire::decode(&body, 1 << 24).unwrap();
    assert_eq!(resp.rejected[0].code, RejectCode::NotAllowed);
    // Reviews are audited.
    let log = server.access().audit_log(0, 1000).unwrap();
    assert_eq!(log.iter().filter(|e| e.action == "review").count(), 2);
}
