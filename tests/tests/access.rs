//! Who may see and change what, against the real server on 127.0.0.1: enrollment, tokens,
//! revocation, scope, per-change authorization, and the role × endpoint × scope matrix.

use automerge::{ROOT, transaction::Transactable};
use qiaomen_client_core::SyncError;
use qiaomen_protocol::{
    calendar::Day,
    doc::{Author, actor_for},
    ids::*,
    schema::*,
    wire::{RejectCode, SyncResponse},
};
use qiaomen_server::access::{Role, org::UnitKind};
use qiaomen_tests::{Phone, TestServer, sample_visit};

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A sync request carrying `changes` of household `id`, posted with `token`.
fn upload(url: &str, token: &str, id: HouseholdId, changes: Vec<Vec<u8>>) -> SyncResponse {
    let (status, resp) = qiaomen_tests::raw_upload(url, token, id, changes);
    assert_eq!(status, 200);
    resp.expect("a sync answer")
}

fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Vec<u8>) {
    block_on(async {
        let client = reqwest::Client::new();
        let mut req = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, b)) = body {
            req = req.header("content-type", ct).body(b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    })
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

fn new_household(grid: &str, door: &str) -> Household {
    Household::new(HouseholdId::new(), GridId::new(grid), "东村", door)
}

#[test]
fn a_code_enrolls_one_phone_and_a_revoked_device_is_wiped_on_its_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let (_, code) = server.enrollment_code(&["g1"]);
    let mut phone = Phone::enroll(&dir.path().join("p.db"), &server.url, &code).unwrap();
    let id = phone
        .store
        .create_household(&new_household("g1", "1"))
        .unwrap();
    phone.sync().unwrap();
    assert_eq!(
        phone.store.sync_scope().unwrap(),
        Some(vec!["g1".to_string()])
    );
    // The same code on another phone: refused, nothing created there.
    match Phone::enroll(&dir.path().join("other.db"), &server.url, &code) {
        Err(SyncError::Unauthorized { code }) => assert_eq!(code, "enrollment_code_used"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match Phone::enroll(&dir.path().join("typo.db"), &server.url, "AAAA-BBBB-CCCC") {
        Err(SyncError::Unauthorized { code }) => assert_eq!(code, "enrollment_code_invalid"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An offline visit, then the admin revokes the phone (lost or stolen).
    phone
        .store
        .record_visit(
            id,
            &sample_visit(&phone.author, day("2026-11-15"), "x"),
            &[],
        )
        .unwrap();
    server.access().revoke_device(phone.author.device).unwrap();
    match phone.sync() {
        Err(SyncError::Revoked) => {}
        other => panic!("expected Revoked, got {other:?}"),
    }
    // The residents' records are gone from the phone, and so are its credentials.
    assert!(phone.store.household_ids().unwrap().is_empty());
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
    assert!(phone.store.credentials().unwrap().is_none());
    drop(phone);
    assert!(matches!(
        qiaomen_client_core::Store::open_enrolled(dir.path().join("p.db"), Default::default()),
        Err(qiaomen_client_core::StoreError::NotEnrolled)
    ));
    let log = server.access().audit_log(0, 100).unwrap();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert!(actions.contains(&("enroll", "ok")));
    assert!(actions.contains(&("enroll", "enrollment_code_used")));
}

#[test]
fn a_rotated_token_replayed_after_its_successor_was_used_revokes_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    let old = phone.token();
    block_on(phone.client.rotate_token(&mut phone.store)).unwrap();
    let new = phone.token();
    assert_ne!(old, new);
    // Until the new token is used, the old one still works (the answer may have been lost).
    let (status, _) = http("GET", &format!("{}/v1/me", server.url), Some(&old), None);
    assert_eq!(status, 200);
    phone.sync().unwrap(); // uses the new token
    // A copy of the old token now shows up: reuse. The device is revoked for everyone.
    let (status, body) = http("GET", &format!("{}/v1/me", server.url), Some(&old), None);
    assert_eq!(
        (status, json(&body)["error"]["code"].as_str()),
        (401, Some("token_reused"))
    );
    match phone.sync() {
        Err(SyncError::Revoked) => {}
        other => panic!("expected Revoked, got {other:?}"),
    }
}

#[test]
fn forged_or_borrowed_actor_ids_and_authors_are_refused_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut b = server.phone(&dir.path().join("b.db"), &["g1"]);
    let id = a.store.create_household(&new_household("g1", "1")).unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    let base = b.store.document(id).unwrap().save();
    let change = |actor: automerge::ActorId, author: &Author, door: &str| {
        let mut raw = automerge::AutoCommit::load(&base).unwrap();
        raw.set_actor(actor);
        raw.put(ROOT, "door_number", door).unwrap();
        raw.commit_with(
            automerge::transaction::CommitOptions::default()
                .with_message(author.to_message())
                .with_time(1_763_000_000_000),
        );
        raw.get_last_local_change().unwrap().raw_bytes().to_vec()
    };
    let changes = vec![
        // B borrows A's actor and author.
        change(actor_for(a.author.device), &a.author, "borrowed"),
        // B's own actor, but claims A wrote it.
        change(actor_for(b.author.device), &a.author, "claimed"),
        // An actor of no device at all, B's author message.
        change(automerge::ActorId::random(), &b.author, "forged"),
        // B's user on another device id.
        change(
            actor_for(b.author.device),
            &Author {
                user: b.author.user,
                device: DeviceId::new(),
            },
            "other device",
        ),
        // The honest change.
        change(actor_for(b.author.device), &b.author, "honest"),
    ];
    let before = json(&http("GET", &format!("{}/healthz", server.url), None, None).1)["log_seq"]
        .as_u64()
        .unwrap();
    let resp = upload(&server.url, &b.token(), id, changes);
    let codes: Vec<_> = resp.rejected.iter().map(|r| (r.n, r.code)).collect();
    assert_eq!(
        codes,
        (0..4)
            .map(|n| (n, RejectCode::NotYourDevice))
            .collect::<Vec<_>>()
    );
    assert_eq!(resp.accepted, 1);
    let after = json(&http("GET", &format!("{}/healthz", server.url), None, None).1)["log_seq"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1, "only the honest change is stored");
    a.sync().unwrap();
    assert_eq!(a.store.household(id).unwrap().door_number, "honest");
}

#[test]
fn field_rules_hold_workers_to_their_grid_their_visits_and_no_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut b = server.phone(&dir.path().join("b.db"), &["g1"]);
    let mut sup = server.phone(&dir.path().join("sup.db"), &[]); // the command centre
    let mut h = new_household("g1", "1");
    let member = MemberId::new();
    h.members.insert(
        member,
        Member {
            id: member,
            relation: Relation::Head,
            name: "张三".into(),
            id_number: None,
            birth_date: None,
            phone: None,
            tags: vec![],
        },
    );
    let id = a.store.create_household(&h).unwrap();
    let visit = sample_visit(&a.author, day("2026-11-15"), "a's visit");
    a.store.record_visit(id, &visit, &[]).unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    sup.sync().unwrap();

    // B rewrites A's visit, deletes a member, moves the household, and creates a household
    // in a grid that is not theirs: each refused with its reason, and the phone goes back to
    // what the server holds. (One per sync: later local changes build on earlier ones.)
    type Edit = Box<dyn FnOnce(&mut Phone) -> Option<HouseholdId>>;
    // An edit of the shared household through the phone's typed API.
    let edit = |f: fn(&mut Household, VisitId)| -> Edit {
        Box::new(move |b: &mut Phone| {
            b.store
                .edit_household(id, |h| {
                    f(h, visit.id);
                    Ok(())
                })
                .unwrap();
            None
        })
    };
    let attempts: Vec<(&str, Edit, RejectCode)> = vec![
        (
            "rewrite another worker's visit",
            edit(|h, v| h.visits.get_mut(&v).unwrap().outcome = VisitOutcome::Refused),
            RejectCode::NotAllowed,
        ),
        (
            "delete a member",
            edit(|h, _| h.members.clear()),
            RejectCode::NotAllowed,
        ),
        (
            "mark the household merged",
            edit(|h, _| h.status = HouseholdStatus::Merged),
            RejectCode::NotAllowed,
        ),
        (
            "move the household to another grid",
            edit(|h, _| h.grid = GridId::new("g2")),
            RejectCode::OutOfScope,
        ),
        (
            "create a household in another grid",
            Box::new(|b: &mut Phone| {
                Some(b.store.create_household(&new_household("g2", "9")).unwrap())
            }),
            RejectCode::OutOfScope,
        ),
    ];
    for (what, edit, want) in attempts {
        // The phone would refuse each at once (tests/tests/phone_rules.rs); as a phone that
        // holds no rights (an older server's), it sends them, and the server refuses them.
        b.store.set_rights(None).unwrap();
        let created = edit(&mut b);
        let report = b.sync().unwrap();
        let codes: Vec<RejectCode> = report.rejected.iter().map(|r| r.2).collect();
        assert_eq!(codes, vec![want], "{what}");
        if let Some(c) = created {
            assert!(
                !b.store.contains(c).unwrap(),
                "a refused creation leaves the phone"
            );
        }
        let on_b = b.store.household(id).unwrap();
        assert_eq!(on_b.visits[&visit.id].outcome, VisitOutcome::Met, "{what}");
        assert_eq!(
            (on_b.members.len(), on_b.grid.as_str()),
            (1, "g1"),
            "{what}"
        );
        assert_eq!(on_b.status, HouseholdStatus::Active, "{what}");
        assert_eq!(b.store.pending_change_count().unwrap(), 0);
    }
    assert_eq!(b.store.rejected_changes().unwrap().len(), 5);
    // An honest edit goes through.
    b.store
        .record_visit(
            id,
            &sample_visit(&b.author, day("2026-11-15"), "b's visit"),
            &[],
        )
        .unwrap();
    assert!(b.sync().unwrap().rejected.is_empty());
    assert_eq!(b.store.household(id).unwrap().visits.len(), 2);

    // Who wrote each field, from which device, is answerable on the server: every field of
    // a's visit by a's device, of b's visit by b's.
    let (status, body) = http(
        "GET",
        &format!("{}/api/v1/households/{id}", server.url),
        Some(&sup.token()),
        None,
    );
    assert_eq!(status, 200);
    let view = json(&body);
    let writers_of = |prefix: &str| -> Vec<String> {
        view["provenance"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"][0] == "visits" && f["path"][1] == prefix)
            .flat_map(|f| f["writers"].as_array().unwrap().clone())
            .map(|w| w["device"].as_str().unwrap().to_string())
            .collect()
    };
    let of_a = writers_of(&visit.id.to_string());
    assert!(of_a.len() >= 5, "a's visit has its fields: {of_a:?}");
    assert!(of_a.iter().all(|d| *d == a.author.device.to_string()));
    let b_visit = b
        .store
        .household(id)
        .unwrap()
        .visits
        .into_keys()
        .find(|v| *v != visit.id)
        .unwrap();
    let of_b = writers_of(&b_visit.to_string());
    assert!(!of_b.is_empty() && of_b.iter().all(|d| *d == b.author.device.to_string()));

    // The supervisor may move it, and after that B's phone no longer holds it.
    sup.sync().unwrap();
    sup.store
        .edit_household(id, |h| {
            h.grid = GridId::new("g2");
            Ok(())
        })
        .unwrap();
    assert!(sup.sync().unwrap().rejected.is_empty());
    let report = b.sync().unwrap();
    assert_eq!(report.dropped_households, 1);
    assert!(!b.store.contains(id).unwrap());
}

#[test]
fn a_worker_moved_to_another_grid_keeps_the_work_done_before_and_holds_only_the_new_grid() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut sup = server.phone(&dir.path().join("sup.db"), &[]);
    let old: Vec<HouseholdId> = (0..3)
        .map(|i| {
            sup.store
                .create_household(&new_household("g1", &format!("{i}")))
                .unwrap()
        })
        .collect();
    let new: Vec<HouseholdId> = (0..4)
        .map(|i| {
            sup.store
                .create_household(&new_household("g2", &format!("{i}")))
                .unwrap()
        })
        .collect();
    sup.sync().unwrap();
    // A visit to a g2 household made before the worker arrives, so the new grid has history.
    sup.store
        .record_visit(
            new[0],
            &sample_visit(&sup.author, day("2026-11-15"), "earlier"),
            &[],
        )
        .unwrap();
    sup.sync().unwrap();

    let (user, code) = server.enrollment_code(&["g1"]);
    let mut w = Phone::enroll(&dir.path().join("w.db"), &server.url, &code).unwrap();
    w.sync().unwrap();
    assert_eq!(w.store.household_ids().unwrap().len(), 3);
    // Visit day: a visit offline in g1. Then the worker is moved to g2 before syncing.
    let v = sample_visit(&w.author, day("2026-11-30"), "last visit in g1");
    w.store.record_visit(old[0], &v, &[]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let db = server.access();
    let now = qiaomen_server::access::now_ms();
    db.unassign(user, "g1", now).unwrap();
    db.assign(user, "g2", Role::GridWorker, now).unwrap();

    let report = w.sync().unwrap();
    assert!(
        report.rejected.is_empty(),
        "work done while assigned is kept: {report:?}"
    );
    let mut held = w.store.household_ids().unwrap();
    held.sort();
    let mut want = new.clone();
    want.sort();
    assert_eq!(held, want, "after one sync: only the new grid's households");
    assert_eq!(
        w.store.household(new[0]).unwrap().visits.len(),
        1,
        "with their history"
    );
    sup.sync().unwrap();
    assert!(
        sup.store
            .household(old[0])
            .unwrap()
            .visits
            .contains_key(&v.id)
    );
    // And a change to the old grid made now is out of scope.
    let mut again = server.phone(&dir.path().join("w2.db"), &["g1"]);
    again.sync().unwrap();
    let base = again.store.document(old[1]).unwrap().save();
    let mut raw = automerge::AutoCommit::load(&base).unwrap();
    raw.set_actor(actor_for(w.author.device));
    raw.put(ROOT, "door_number", "late").unwrap();
    raw.commit_with(
        automerge::transaction::CommitOptions::default()
            .with_message(w.author.to_message())
            .with_time(qiaomen_server::access::now_ms()),
    );
    let bytes = raw.get_last_local_change().unwrap().raw_bytes().to_vec();
    let resp = upload(&server.url, &w.token(), old[1], vec![bytes]);
    assert_eq!(resp.rejected[0].code, RejectCode::OutOfScope);
}

/// Every endpoint × every role × a household in and out of the role's scope: any allow or
/// deny other than the expected one fails the test (all mismatches are listed).
#[test]
fn the_access_matrix_allows_exactly_what_each_role_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let d = day("2026-01-01");
    {
        let db = server.access();
        db.ensure_unit("t9", UnitKind::Town, Some("c"), "另一镇", d)
            .unwrap();
        db.ensure_unit("v9", UnitKind::Village, Some("t9"), "另一村", d)
            .unwrap();
        db.ensure_unit("g9", UnitKind::Grid, Some("v9"), "另一网格", d)
            .unwrap();
    }
    // The households: one in g1 (test village v, town t), one in g9 (elsewhere).
    let mut creator = server.phone(&dir.path().join("creator.db"), &[]);
    let inside = creator
        .store
        .create_household(&new_household("g1", "in"))
        .unwrap();
    let outside = creator
        .store
        .create_household(&new_household("g9", "out"))
        .unwrap();
    // A visit in each, for the review endpoint.
    let mut visits = std::collections::HashMap::new();
    for h in [inside, outside] {
        let v = sample_visit(&creator.author, day("2026-11-15"), "matrix");
        creator.store.record_visit(h, &v, &[]).unwrap();
        visits.insert(h, v.id);
    }
    creator.sync().unwrap();

    let roles = [
        (Role::GridWorker, "g1"),
        (Role::GridHead, "g1"),
        (Role::VillageSupervisor, "v"),
        (Role::TownSupervisor, "t"),
        (Role::CommandCentre, "c"),
        (Role::Admin, "c"),
    ];
    let password = "matrix-password-1";
    let mut failures = Vec::new();
    let mut check = |what: String, got: bool, want: bool| {
        if got != want {
            failures.push(format!(
                "{what}: {} but expected {}",
                if got { "allowed" } else { "denied" },
                if want { "allowed" } else { "denied" }
            ));
        }
    };
    for (n, (role, unit)) in roles.into_iter().enumerate() {
        let db = server.access();
        let login = format!("m{n}");
        let user = db.add_user(&login, "矩阵").unwrap();
        db.assign(user, unit, role, 0).unwrap();
        db.set_password(user, password).unwrap();
        let code = db.issue_enrollment_code(user).unwrap();
        drop(db);
        let mut phone =
            Phone::enroll(&dir.path().join(format!("m{n}.db")), &server.url, &code).unwrap();
        let reads_records = role != Role::Admin;
        let reads_outside = role == Role::CommandCentre;
        let r = role.as_str();

        // Sync, read side: which households reach the phone.
        phone.sync().unwrap();
        check(
            format!("{r} sync receives in-scope"),
            phone.store.contains(inside).unwrap(),
            reads_records,
        );
        check(
            format!("{r} sync receives out-of-scope"),
            phone.store.contains(outside).unwrap(),
            reads_outside,
        );

        // Sync, write side: a visit of the role's own to each household.
        for (target, want) in [(inside, reads_records), (outside, reads_outside)] {
            let base = creator.store.document(target).unwrap().save();
            let mut doc = qiaomen_protocol::doc::HouseholdDoc::load(&base).unwrap();
            doc.set_actor(actor_for(phone.author.device));
            let v = sample_visit(&phone.author, day("2026-11-15"), "matrix");
            let hash = doc
                .add_visit(&phone.author, 1_763_000_000_000, &v, &[])
                .unwrap();
            let bytes = doc.change_bytes(&hash).unwrap();
            let (status, resp) =
                qiaomen_tests::raw_upload(&server.url, &phone.token(), target, vec![bytes]);
            let accepted = status == 200 && resp.is_some_and(|r| r.rejected.is_empty());
            check(
                format!(
                    "{r} sync writes {}",
                    if target == inside {
                        "in-scope"
                    } else {
                        "out-of-scope"
                    }
                ),
                accepted,
                want,
            );
        }

        // The JSON API, with a session from a password login.
        let (status, body) = http(
            "POST",
            &format!("{}/v1/login", server.url),
            None,
            Some((
                "application/json",
                serde_json::to_vec(&serde_json::json!({"login": login, "password": password}))
                    .unwrap(),
            )),
        );
        assert_eq!(status, 200, "{r} logs in");
        let session = json(&body)["token"].as_str().unwrap().to_string();
        for (target, want) in [(inside, reads_records), (outside, reads_outside)] {
            let url = format!("{}/api/v1/households/{target}", server.url);
            let (status, _) = http("GET", &url, Some(&session), None);
            assert!(status == 200 || status == 404, "{r}: {status}");
            check(
                format!(
                    "{r} api reads {}",
                    if target == inside {
                        "in-scope"
                    } else {
                        "out-of-scope"
                    }
                ),
                status == 200,
                want,
            );
            // The device token reads the same way.
            let (status, _) = http("GET", &url, Some(&phone.token()), None);
            check(
                format!(
                    "{r} api (device) reads {}",
                    if target == inside {
                        "in-scope"
                    } else {
                        "out-of-scope"
                    }
                ),
                status == 200,
                want,
            );
        }
        let is_admin = role == Role::Admin;
        let (status, _) = http(
            "GET",
            &format!("{}/api/v1/devices", server.url),
            Some(&session),
            None,
        );
        check(format!("{r} lists devices"), status == 200, is_admin);
        let (status, _) = http(
            "GET",
            &format!("{}/api/v1/audit", server.url),
            Some(&session),
            None,
        );
        check(format!("{r} reads the audit log"), status == 200, is_admin);
        let (status, _) = http(
            "POST",
            &format!(
                "{}/api/v1/devices/{}/retire",
                server.url, creator.author.device
            ),
            Some(&session),
            None,
        );
        check(format!("{r} retires a device"), status == 204, is_admin);
        let (status, _) = http(
            "POST",
            &format!(
                "{}/api/v1/devices/{}/revoke",
                server.url, creator.author.device
            ),
            Some(&session),
            None,
        );
        // Only the admin may; the admin's revocation is undone below for the next roles.
        check(format!("{r} revokes a device"), status == 204, is_admin);
        if status == 204 {
            // Re-enroll the creator for the later rows (its old device is gone for good).
            creator = server.phone(&dir.path().join(format!("creator{n}.db")), &[]);
            creator.sync().unwrap();
        }
        let (status, _) = http(
            "GET",
            &format!("{}/v1/me", server.url),
            Some(&session),
            None,
        );
        check(format!("{r} reads /v1/me"), status == 200, true);
        // Supervisors' endpoints: the grid list (readers), reviews (supervisors of the grid).
        let supervises = matches!(
            role,
            Role::VillageSupervisor | Role::TownSupervisor | Role::CommandCentre
        );
        for (target, grid, reads, sup) in [
            (inside, "g1", reads_records, supervises),
            (outside, "g9", reads_outside, role == Role::CommandCentre),
        ] {
            let (status, _) = http(
                "GET",
                &format!("{}/api/v1/grids/{grid}/households", server.url),
                Some(&session),
                None,
            );
            check(format!("{r} lists grid {grid}"), status == 200, reads);
            let view_url = format!("{}/api/v1/households/{target}", server.url);
            let heads =
                json(&http("GET", &view_url, Some(&creator.token()), None).1)["heads"].clone();
            let body = serde_json::json!({"visit_id": visits[&target].to_string(),
                                          "decision": "Approved", "heads": heads});
            let (status, _) = http(
                "POST",
                &format!("{view_url}/reviews"),
                Some(&session),
                Some(("application/json", serde_json::to_vec(&body).unwrap())),
            );
            check(format!("{r} reviews in grid {grid}"), status == 201, sup);
        }
    }
    // Nobody signed in: every endpoint is 401.
    for (method, path) in [
        ("GET", "/v1/me".to_string()),
        ("GET", format!("/api/v1/households/{inside}")),
        ("GET", "/api/v1/devices".to_string()),
        ("GET", "/api/v1/audit".to_string()),
        (
            "POST",
            format!("/api/v1/devices/{}/revoke", creator.author.device),
        ),
        (
            "POST",
            format!("/api/v1/devices/{}/retire", creator.author.device),
        ),
        ("POST", "/v1/sync".to_string()),
        ("POST", "/v1/token".to_string()),
        ("POST", "/v1/logout".to_string()),
        ("GET", "/api/v1/grids/g1/households".to_string()),
        ("POST", format!("/api/v1/households/{inside}/reviews")),
        (
            "POST",
            format!("/api/v1/households/{inside}/conflicts/resolve"),
        ),
    ] {
        let (status, body) = http(method, &format!("{}{path}", server.url), None, None);
        check(
            format!(
                "anonymous {method} {path} ({})",
                json(&body)["error"]["code"]
            ),
            status != 401,
            false,
        );
    }
    assert!(
        failures.is_empty(),
        "access matrix mismatches:\n{}",
        failures.join("\n")
    );
    // Every household read was audited, allowed or not, without personal data.
    let log = server.access().audit_log(0, 10_000).unwrap();
    let reads = log.iter().filter(|e| e.action == "household_read").count();
    assert_eq!(
        reads,
        6 * (4 + 2),
        "4 reads per role, and 2 by the creator for the heads"
    );
    assert!(
        log.iter()
            .any(|e| e.action == "household_read" && e.outcome == "denied")
    );
    assert!(log.iter().all(|e| !format!("{e:?}").contains("东村")));
}

#[test]
fn guessed_household_ids_answer_exactly_like_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut sup = server.phone(&dir.path().join("sup.db"), &[]);
    let hidden = sup
        .store
        .create_household(&new_household("g2", "x"))
        .unwrap();
    sup.sync().unwrap();
    let w = server.phone(&dir.path().join("w.db"), &["g1"]);
    let a = http(
        "GET",
        &format!("{}/api/v1/households/{hidden}", server.url),
        Some(&w.token()),
        None,
    );
    let b = http(
        "GET",
        &format!("{}/api/v1/households/{}", server.url, HouseholdId::new()),
        Some(&w.token()),
        None,
    );
    assert_eq!(a, b, "an existing out-of-scope household looks missing");
    assert_eq!(a.0, 404);
    // Uploading a change to it by its guessed id is refused and stores nothing.
    let base = sup.store.document(hidden).unwrap().save();
    let mut raw = automerge::AutoCommit::load(&base).unwrap();
    raw.set_actor(actor_for(w.author.device));
    raw.put(ROOT, "address", "guessed").unwrap();
    raw.commit_with(
        automerge::transaction::CommitOptions::default()
            .with_message(w.author.to_message())
            .with_time(1_763_000_000_000),
    );
    let bytes = raw.get_last_local_change().unwrap().raw_bytes().to_vec();
    let resp = upload(&server.url, &w.token(), hidden, vec![bytes]);
    assert_eq!(resp.rejected[0].code, RejectCode::OutOfScope);
    assert!(
        resp.docs.iter().all(|d| d.id != hidden),
        "nothing of it comes back"
    );
}
