//! Two ways to take a phone away, against the real server on 127.0.0.1 with phones on SQLite
//! files: `retire` (a handover: the phone uploads what it holds, then it is wiped) and
//! `revoke` (lost or stolen: wiped at once), and what the admin sees before either.

use qiaomen_client_core::{SyncClient, SyncError};
use qiaomen_protocol::{
    calendar::Day,
    ids::HouseholdId,
    wire::{self, Retire},
};
use qiaomen_server::{
    access::tokens::{DeviceRow, DeviceStatus},
    admin::AdminCommand,
};
use qiaomen_tests::{Phone, TestServer, block_on, call, raw_upload_with, sample_visit};

fn visit_day() -> Day {
    "2026-11-15".parse().unwrap()
}

fn row(server: &TestServer, phone: &Phone) -> DeviceRow {
    server.access().device(phone.author.device).unwrap()
}

/// The notes of the visits the server holds for `ids`, as a fresh phone of the grid receives
/// them.
fn notes_on_server(server: &TestServer, dir: &std::path::Path, ids: &[HouseholdId]) -> Vec<String> {
    let mut colleague = server.phone(&dir.join("colleague.db"), &["g1"]);
    colleague.sync().unwrap();
    let mut notes: Vec<String> = ids
        .iter()
        .flat_map(|id| colleague.store.household(*id).unwrap().visits.into_values())
        .map(|v| v.note.as_str().to_string())
        .collect();
    notes.sort();
    notes
}

fn audited(server: &TestServer, action: &str, outcome: &str) -> bool {
    server
        .access()
        .audit_log(0, 1000)
        .unwrap()
        .iter()
        .any(|e| e.action == action && e.outcome == outcome)
}

#[test]
fn a_retired_phone_uploads_its_two_unsynced_visits_then_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    let ids = phone.create_households("g1", 2);
    phone.sync().unwrap();
    let synced = row(&server, &phone);
    assert_eq!(synced.status, DeviceStatus::Active);
    assert_eq!(synced.pending, Some(0), "the phone reported nothing left");
    assert!(synced.last_sync_ms.is_some());
    // Two visits of the day, offline; then the worker hands the phone in.
    for (n, id) in ids.iter().enumerate() {
        phone
            .store
            .record_visit(
                *id,
                &sample_visit(&phone.author, visit_day(), &format!("visit {n}")),
                &[],
            )
            .unwrap();
    }
    let token = phone.token();
    server
        .admin(AdminCommand::Retire {
            device: phone.author.device,
        })
        .unwrap();
    assert_eq!(row(&server, &phone).status, DeviceStatus::Retiring);
    match phone.sync() {
        Err(SyncError::Retired { wiped: true }) => {}
        other => panic!("expected Retired and wiped, got {other:?}"),
    }
    // Wiped: no household, nothing pending, no credentials.
    assert!(phone.store.household_ids().unwrap().is_empty());
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
    assert!(phone.store.credentials().unwrap().is_none());
    // ... and both visits are on the server.
    assert_eq!(
        notes_on_server(&server, dir.path(), &ids),
        ["visit 0", "visit 1"]
    );
    let ended = row(&server, &phone);
    assert_eq!(ended.status, DeviceStatus::Retired);
    assert_eq!(ended.pending, Some(0));
    // The token is refused from now on, with its own code.
    let (status, body) = call("GET", &format!("{}/v1/me", server.url), &token, None);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "device_retired");
    assert!(audited(&server, "retire", "ok:cli") && audited(&server, "retired", "ok"));
}

#[test]
fn a_revoked_phone_is_wiped_at_once_and_the_admin_saw_its_pending_count_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    let ids = phone.create_households("g1", 3);
    phone.sync().unwrap();
    for (n, id) in ids.iter().enumerate() {
        phone
            .store
            .record_visit(
                *id,
                &sample_visit(&phone.author, visit_day(), &format!("visit {n}")),
                &[],
            )
            .unwrap();
    }
    // A weak link: one change a request. After the first round trip the admin looks, and
    // the phone is lost.
    phone.client = SyncClient::new(&server.url).unwrap().with_chunk_bytes(1);
    let device = phone.author.device;
    let mut seen: Option<DeviceRow> = None;
    let result = block_on(phone.client.sync(&mut phone.store, |p| {
        if p.round_trips != 1 {
            return;
        }
        // The admin works from elsewhere (a thread of its own: not on the sync's runtime).
        let before = std::thread::scope(|s| {
            s.spawn(|| {
                let before = server.access().device(device).unwrap();
                // The CLI refuses while the device reported work it has not uploaded ...
                let refused = server.admin(AdminCommand::Revoke {
                    device,
                    force: false,
                });
                assert!(refused.is_err());
                assert_eq!(
                    server.access().device(device).unwrap().status,
                    DeviceStatus::Active
                );
                // ... and revokes with --force.
                server
                    .admin(AdminCommand::Revoke {
                        device,
                        force: true,
                    })
                    .unwrap();
                before
            })
            .join()
            .expect("the admin's thread")
        });
        seen = Some(before);
    }));
    match result {
        Err(SyncError::Revoked) => {}
        other => panic!("expected Revoked, got {other:?}"),
    }
    let before = seen.expect("the admin looked after the first round trip");
    assert_eq!(before.pending, Some(2), "two visits not yet uploaded");
    assert!(before.last_sync_ms.is_some());
    assert_eq!(before.status, DeviceStatus::Active);
    // Wiped at once, the two visits with it; the one that was uploaded is on the server.
    assert!(phone.store.household_ids().unwrap().is_empty());
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
    assert!(phone.store.credentials().unwrap().is_none());
    assert_eq!(notes_on_server(&server, dir.path(), &ids), ["visit 0"]);
    assert_eq!(
        server.access().device(device).unwrap().status,
        DeviceStatus::Revoked
    );
    assert!(
        audited(&server, "revoke", "device_has_pending") && audited(&server, "revoke", "ok:cli")
    );
}

#[test]
fn the_api_refuses_to_revoke_a_device_with_pending_work_unless_forced_and_retires() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let admin = qiaomen_tests::session(&server, "admin1", "c", qiaomen_server::access::Role::Admin);
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    phone.sync().unwrap();
    // A phone reports two records it still holds (as after a cut sync).
    let mut req = qiaomen_tests::upload_request(HouseholdId::new(), vec![], wire::FEATURES);
    req.pending = Some(2);
    let status = block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/sync", server.url))
            .header("content-type", wire::CONTENT_TYPE)
            .bearer_auth(phone.token())
            .body(wire::encode(&req))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    let (status, list) = call(
        "GET",
        &format!("{}/api/v1/devices", server.url),
        &admin,
        None,
    );
    assert_eq!(status, 200);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == phone.author.device.to_string())
        .unwrap()
        .clone();
    assert_eq!(listed["pending"], 2);
    assert_eq!(listed["status"], "active");
    assert!(listed["last_sync_ms"].is_i64());
    // The devices page shows the same, and its revoke form is refused without force.
    let device = phone.author.device.to_string();
    let (status, html) = page(&server, &admin, "/devices", None);
    assert_eq!(status, 200);
    let line = html
        .split("<tr ")
        .find(|r| r.contains(&format!("id=\"device-{device}\"")))
        .expect("the device's row");
    assert!(line.contains("在用") && line.contains("<td class=\"pending\">2</td>"));
    assert!(!line.contains("从未"), "last sync shown");
    let (status, _) = page(
        &server,
        &admin,
        &format!("/devices/{device}/revoke"),
        Some(""),
    );
    assert_eq!(status, 303);
    let (_, page_held) = page(&server, &admin, &format!("/devices?held={device}"), None);
    assert!(page_held.contains("id=\"held\""));
    let revoke = format!(
        "{}/api/v1/devices/{}/revoke",
        server.url, phone.author.device
    );
    let (status, body) = call("POST", &revoke, &admin, None);
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "device_has_pending");
    // Retire instead; then a revoke (the phone turned out lost) needs force.
    let (status, _) = call(
        "POST",
        &format!(
            "{}/api/v1/devices/{}/retire",
            server.url, phone.author.device
        ),
        &admin,
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = call("POST", &format!("{revoke}?force=true"), &admin, None);
    assert_eq!(status, 204);
    match phone.sync() {
        Err(SyncError::Revoked) => {}
        other => panic!("expected Revoked, got {other:?}"),
    }
}

/// A page request (a form post with `form`) with the admin's session as bearer (no cookie, so no origin check);
/// redirects are not followed.
fn page(server: &TestServer, session: &str, path: &str, form: Option<&str>) -> (u16, String) {
    block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let url = format!("{}{path}", server.url);
        let req = match form {
            None => client.get(url),
            Some(body) => client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_string()),
        };
        let resp = req.bearer_auth(session).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn a_retiring_device_still_uploads_receives_nothing_and_an_old_phone_is_told_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    let mut other = server.phone(&dir.path().join("o.db"), &["g1"]);
    other.create_households("g1", 1);
    other.sync().unwrap();
    let token = phone.token();
    server.access().retire_device(phone.author.device).unwrap();
    // A new phone's upload is stored and answered `retiring`, with nothing sent down.
    let hid = phone.create_households("g1", 1)[0];
    let changes: Vec<Vec<u8>> = phone
        .store
        .pending_changes(hid)
        .unwrap()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let (status, resp) = raw_upload_with(&server.url, &token, hid, changes, wire::FEATURES);
    assert_eq!(status, 200);
    let resp = resp.unwrap();
    assert_eq!((resp.accepted, resp.retire), (1, Some(Retire::Retiring)));
    assert!(resp.docs.is_empty() && resp.scope.is_none());
    // A phone that does not know retirement, with nothing to upload: told `device_revoked`
    // (it wipes), and the device has ended.
    let (status, _) = raw_upload_with(&server.url, &token, HouseholdId::new(), vec![], 0);
    assert_eq!(status, 401);
    assert_eq!(
        server.access().device(phone.author.device).unwrap().status,
        DeviceStatus::Retired
    );
    let (status, body) = call("GET", &format!("{}/v1/me", server.url), &token, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("device_retired"))
    );
}
