//! The real server on 127.0.0.1 and many phones on their own SQLite files.

use std::collections::BTreeMap;

use qiaomen_protocol::{calendar::Day, ids::*, schema::*};
use qiaomen_tests::{Phone, TestServer, copy_store, sample_visit};

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

#[test]
fn a_visit_day_of_50_phones_and_a_supervisor_converges() {
    const PHONES: usize = 50;
    const HOUSEHOLDS: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));

    // The registry: every household of every grid, created once and synced up.
    let mut registry = server.phone(&dir.path().join("registry.db"), &[]);
    let mut grids: Vec<Vec<HouseholdId>> = Vec::new();
    for g in 0..PHONES {
        let ids = (0..HOUSEHOLDS)
            .map(|i| {
                let h = Household::new(
                    HouseholdId::new(),
                    GridId::new(format!("g{g:02}")),
                    "东村",
                    format!("{i:02}"),
                );
                registry.store.create_household(&h).unwrap()
            })
            .collect();
        grids.push(ids);
    }
    let report = registry.sync().unwrap();
    assert_eq!(report.accepted as usize, PHONES * HOUSEHOLDS);
    assert_eq!(registry.store.pending_change_count().unwrap(), 0);

    // Each worker's phone takes its grid, then goes offline.
    let mut phones: Vec<Phone> = (0..PHONES)
        .map(|g| {
            let grid = format!("g{g:02}");
            let mut p = server.phone(&dir.path().join(format!("phone{g}.db")), &[grid.as_str()]);
            p.sync().unwrap();
            assert_eq!(
                p.store.household_ids().unwrap().len(),
                HOUSEHOLDS,
                "only its own grid"
            );
            p
        })
        .collect();

    // Offline on the 15th: a visit to every household, and a note on a few phones' doors.
    let visit_day = day("2026-11-15");
    let mut expected_visits: BTreeMap<HouseholdId, Vec<VisitId>> = BTreeMap::new();
    for (g, phone) in phones.iter_mut().enumerate() {
        for (i, id) in grids[g].iter().enumerate() {
            let v = sample_visit(&phone.author, visit_day, "入户走访");
            phone.store.record_visit(*id, &v, &[]).unwrap();
            expected_visits.entry(*id).or_default().push(v.id);
            if i == 0 {
                phone
                    .store
                    .edit_household(*id, |h| {
                        h.door_number = format!("{}-worker", h.door_number);
                        Ok(())
                    })
                    .unwrap();
            }
        }
    }
    // Meanwhile a supervisor, on the registry's copy, edits the first household of every
    // tenth grid (the same field the worker edits: a conflict) and adds a visit of their own.
    for g in (0..PHONES).step_by(10) {
        let id = grids[g][0];
        registry
            .store
            .edit_household(id, |h| {
                h.door_number = "supervisor".into();
                Ok(())
            })
            .unwrap();
        let v = sample_visit(&registry.author, visit_day, "督导抽查");
        registry.store.record_visit(id, &v, &[]).unwrap();
        expected_visits.entry(id).or_default().push(v.id);
    }

    // Everyone comes back and syncs, concurrently: the supervisor too.
    let url = server.url.clone();
    let handles: Vec<_> = phones
        .into_iter()
        .map(|mut p| {
            std::thread::spawn(move || {
                let r = p.sync().expect("sync");
                assert_eq!(
                    r.progress.round_trips, 1,
                    "a visit day syncs in one round trip"
                );
                assert!(r.rejected.is_empty());
                p
            })
        })
        .collect();
    registry.sync().unwrap();
    let mut phones: Vec<Phone> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // A second pass brings each phone what others sent after its first sync.
    for p in &mut phones {
        p.sync().unwrap();
        assert_eq!(
            p.store.pending_change_count().unwrap(),
            0,
            "everything acknowledged"
        );
    }
    registry.sync().unwrap();

    // An observer with no state downloads everything: it is the server's merged view.
    let mut observer = server.phone_via(&dir.path().join("observer.db"), &url, &[]);
    observer.sync().unwrap();
    assert_eq!(
        observer.store.household_ids().unwrap().len(),
        PHONES * HOUSEHOLDS
    );
    for (g, phone) in phones.iter_mut().enumerate() {
        for id in &grids[g] {
            let on_phone = phone.store.household(*id).unwrap();
            let on_server = observer.store.household(*id).unwrap();
            assert_eq!(on_phone, on_server);
            assert_eq!(
                phone.store.document(*id).unwrap().heads(),
                observer.store.document(*id).unwrap().heads()
            );
            let mut want = expected_visits[id].clone();
            want.sort();
            assert_eq!(on_server.visits.keys().copied().collect::<Vec<_>>(), want);
            assert_eq!(registry.store.household(*id).unwrap(), on_server);
        }
        // The supervisor's and the worker's door numbers both survive, as a conflict.
        if g % 10 == 0 {
            let c = phone.store.conflicts(grids[g][0]).unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].path, vec!["door_number".to_string()]);
            let authors: Vec<_> = c[0]
                .values
                .iter()
                .map(|v| v.author.unwrap().device)
                .collect();
            assert!(
                authors.contains(&phone.author.device) && authors.contains(&registry.author.device)
            );
        }
    }
    server.stop();
}

#[test]
fn an_idle_sync_is_one_tiny_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut phone = server.phone(&dir.path().join("p.db"), &[]);
    for i in 0..500 {
        let h = Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "东村",
            format!("{i}"),
        );
        phone.store.create_household(&h).unwrap();
    }
    phone.sync().unwrap();
    let idle = phone.sync().unwrap();
    assert_eq!(idle.progress.round_trips, 1);
    assert!(
        idle.progress.bytes_up <= 200,
        "up {}",
        idle.progress.bytes_up
    );
    assert!(
        idle.progress.bytes_down <= 200,
        "down {}",
        idle.progress.bytes_down
    );
    assert_eq!(idle.received_changes, 0);
}

#[test]
fn a_phone_that_lost_its_state_converges_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &[]);
    let id = a
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "x",
            "1",
        ))
        .unwrap();
    a.store
        .record_visit(id, &sample_visit(&a.author, day("2026-11-15"), "a"), &[])
        .unwrap();
    a.sync().unwrap();
    // Reinstall: a fresh store, no cursor.
    let mut fresh = server.phone(&dir.path().join("fresh.db"), &[]);
    fresh.sync().unwrap();
    assert_eq!(
        fresh.store.household(id).unwrap(),
        a.store.household(id).unwrap()
    );
    // A restored backup: an old copy of the phone's file with a stale cursor and edits made
    // since the backup lost; it gets them back and its new edits go up.
    let backup = dir.path().join("backup.db");
    a.store
        .connection_for_tests()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    std::fs::copy(dir.path().join("a.db"), &backup).unwrap();
    a.store
        .record_visit(
            id,
            &sample_visit(&a.author, day("2026-11-30"), "after backup"),
            &[],
        )
        .unwrap();
    a.sync().unwrap();
    drop(a);
    let mut restored = Phone::open(&backup, &server.url);
    restored
        .store
        .record_visit(
            id,
            &sample_visit(&restored.author, day("2026-11-30"), "restored"),
            &[],
        )
        .unwrap();
    let report = restored.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    fresh.sync().unwrap();
    assert_eq!(restored.store.household(id).unwrap().visits.len(), 3);
    assert_eq!(
        fresh.store.household(id).unwrap(),
        restored.store.household(id).unwrap()
    );
}

#[test]
fn a_refused_change_comes_back_with_its_reason_and_the_rest_is_accepted() {
    use automerge::{ROOT, transaction::Transactable};
    use qiaomen_protocol::wire::RejectCode;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &[]);
    let id = a
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "x",
            "1",
        ))
        .unwrap();
    a.sync().unwrap();
    // A bad change (status set to a number), a good change built on it, and an independent
    // good change: made with raw Automerge, as a misbehaving client would.
    // They carry this device's actor and author message, so only the content is wrong.
    let base = a.store.document(id).unwrap().save();
    let signed = || {
        automerge::transaction::CommitOptions::default()
            .with_message(a.author.to_message())
            .with_time(1_763_000_000_000)
    };
    let mut raw = automerge::AutoCommit::load(&base).unwrap();
    raw.set_actor(qiaomen_protocol::doc::actor_for(a.author.device));
    raw.put(ROOT, "status", 42).unwrap();
    raw.commit_with(signed());
    raw.put(ROOT, "address", "built on the bad one").unwrap();
    raw.commit_with(signed());
    let mut other = automerge::AutoCommit::load(&base).unwrap();
    other.set_actor(qiaomen_protocol::doc::actor_for(a.author.device));
    other.put(ROOT, "door_number", "2").unwrap();
    other.commit_with(signed());
    let mut changes: Vec<Vec<u8>> = raw
        .get_changes(&[])
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    changes.push(other.get_last_local_change().unwrap().raw_bytes().to_vec());
    let token = a.store.credentials().unwrap().unwrap().token;
    let (_, resp) = qiaomen_tests::raw_upload(&server.url, &token, id, changes);
    let resp = resp.expect("a sync answer");
    assert_eq!(resp.accepted, 1);
    let codes: Vec<_> = resp.rejected.iter().map(|r| (r.n, r.code)).collect();
    assert_eq!(
        codes,
        vec![
            (0, RejectCode::SchemaViolation),
            (1, RejectCode::DependsOnRejected)
        ]
    );
    // The accepted change reached everyone; the refused ones reached no one.
    a.sync().unwrap();
    let h = a.store.household(id).unwrap();
    assert_eq!(h.door_number, "2");
    assert_eq!(h.status, HouseholdStatus::Active);
    assert_eq!(h.address, "x");
}

#[test]
fn a_phone_offline_for_months_catches_up_page_by_page_in_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    // Small pages, so months of other phones' work spans many responses.
    let server = TestServer::start_with_budget(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
        8 * 1024,
    );
    let mut busy = server.phone(&dir.path().join("busy.db"), &["g1"]);
    let mut away = server.phone(&dir.path().join("away.db"), &["g1"]);
    // Registered before the months of visits (a visit never counts for a cycle before its
    // household was created, SYNC-v1 §13.8).
    busy.store.set_clock(|| 1_767_225_600_000); // 2026-01-01 China time
    let ids = busy.create_households("g1", 10);
    busy.store.set_clock(qiaomen_server::access::now_ms);
    busy.sync().unwrap();
    away.sync().unwrap();
    // Six months of visit days on the busy phone, synced as they go; the away phone makes its
    // own edits offline all that time.
    let days: Vec<Day> = (1..=6u8)
        .flat_map(|m| qiaomen_protocol::calendar::visit_days_of_month(2026, m).unwrap())
        .collect();
    for d in &days {
        for id in &ids {
            busy.store
                .record_visit(*id, &sample_visit(&busy.author, *d, "每月走访"), &[])
                .unwrap();
        }
        busy.sync().unwrap();
    }
    for id in ids.iter().take(3) {
        away.store
            .record_visit(
                *id,
                &sample_visit(&away.author, day("2026-01-15"), "离线补录"),
                &[],
            )
            .unwrap();
    }
    let report = away.sync().unwrap();
    assert!(
        report.progress.round_trips > 3,
        "paged: {} round trips",
        report.progress.round_trips
    );
    assert_eq!(report.received_changes as usize, days.len() * ids.len());
    assert!(report.rejected.is_empty());
    busy.sync().unwrap();
    for id in &ids {
        let h = away.store.household(*id).unwrap();
        assert_eq!(h, busy.store.household(*id).unwrap());
        assert!(h.visits.len() >= days.len());
    }
    assert_eq!(away.store.pending_change_count().unwrap(), 0);
}

#[test]
fn a_server_restored_from_an_older_backup_gets_back_what_phones_had_sent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start(&data);
    let mut p = server.phone(&dir.path().join("p.db"), &[]);
    let h1 = p
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "x",
            "1",
        ))
        .unwrap();
    p.sync().unwrap();
    server.stop();
    copy_store(&data, &dir.path().join("backup")); // last night's backup

    // The phone goes on: a visit and a new household, acknowledged by the server.
    let server = TestServer::start_on(&data, any);
    p.client = qiaomen_client_core::SyncClient::new(&server.url).unwrap();
    let v = sample_visit(&p.author, day("2026-11-15"), "after the backup");
    p.store.record_visit(h1, &v, &[]).unwrap();
    let h2 = p
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "x",
            "2",
        ))
        .unwrap();
    p.sync().unwrap();
    assert_eq!(p.store.pending_change_count().unwrap(), 0);
    server.stop();

    // The disk is lost; the backup is restored, and other phones push its log past the
    // phone's cursor with other changes.
    std::fs::remove_dir_all(&data).unwrap();
    copy_store(&dir.path().join("backup"), &data);
    let server = TestServer::start_on(&data, any);
    let mut q = server.phone(&dir.path().join("q.db"), &[]);
    for i in 0..5 {
        q.store
            .create_household(&Household::new(
                HouseholdId::new(),
                GridId::new("g1"),
                "y",
                format!("{i}"),
            ))
            .unwrap();
    }
    q.sync().unwrap();

    // The phone notices the log differs at its cursor and sends everything again.
    p.client = qiaomen_client_core::SyncClient::new(&server.url).unwrap();
    p.sync().unwrap();
    let mut observer = server.phone(&dir.path().join("o.db"), &[]);
    observer.sync().unwrap();
    assert_eq!(
        observer.store.household_ids().unwrap().len(),
        7,
        "h1, h2 and q's five"
    );
    assert!(
        observer
            .store
            .household(h1)
            .unwrap()
            .visits
            .contains_key(&v.id)
    );
    assert_eq!(
        observer.store.household(h2).unwrap(),
        p.store.household(h2).unwrap()
    );
    assert_eq!(
        p.store.household_ids().unwrap().len(),
        7,
        "and the phone got q's households"
    );
}

#[test]
fn a_household_moved_between_grids_arrives_whole_on_the_new_grid_and_leaves_the_old() {
    // The move is logged under the grid it leaves (its phones learn it left) and recorded, so
    // the phones of the new grid receive the household's whole history, not only what follows.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut admin = server.phone(&dir.path().join("admin.db"), &[]);
    let mut g1 = server.phone(&dir.path().join("g1.db"), &["g1"]);
    let mut g2 = server.phone(&dir.path().join("g2.db"), &["g2"]);
    let moved = admin
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "x",
            "1",
        ))
        .unwrap();
    admin.sync().unwrap();
    g1.sync().unwrap();
    let v = sample_visit(&g1.author, day("2026-11-15"), "before the move");
    g1.store.record_visit(moved, &v, &[]).unwrap();
    g1.sync().unwrap();
    g2.sync().unwrap();
    assert!(!g2.store.contains(moved).unwrap());
    admin.sync().unwrap();
    admin
        .store
        .edit_household(moved, |h| {
            h.grid = GridId::new("g2");
            Ok(())
        })
        .unwrap();
    admin.sync().unwrap();
    let report = g2.sync().unwrap();
    assert!(report.skipped_households.is_empty(), "{report:?}");
    assert_eq!(
        g2.store.household(moved).unwrap(),
        admin.store.household(moved).unwrap()
    );
    assert!(
        g2.store
            .household(moved)
            .unwrap()
            .visits
            .contains_key(&v.id)
    );
    let report = g1.sync().unwrap();
    assert_eq!(report.dropped_households, 1);
    assert!(!g1.store.contains(moved).unwrap());
    // A fresh phone of g2 gets it whole too, and later edits flow as usual.
    let mut fresh = server.phone(&dir.path().join("fresh.db"), &["g2"]);
    fresh.sync().unwrap();
    assert_eq!(
        fresh.store.household(moved).unwrap(),
        admin.store.household(moved).unwrap()
    );
    g2.store
        .record_visit(
            moved,
            &sample_visit(&g2.author, day("2026-11-30"), "after"),
            &[],
        )
        .unwrap();
    assert!(g2.sync().unwrap().rejected.is_empty());
    fresh.sync().unwrap();
    assert_eq!(fresh.store.household(moved).unwrap().visits.len(), 2);
}

#[test]
fn a_visit_day_goes_up_packed_and_the_server_holds_the_phones_very_changes() {
    use qiaomen_protocol::wire::{self, DocChanges, SyncRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut worker = server.phone(&dir.path().join("w.db"), &[]);
    let mut other = server.phone(&dir.path().join("o.db"), &[]);
    let ids = worker.create_households("g1", 10);
    // The first sync goes as chunks and learns that the server takes packed changes.
    assert_eq!(worker.store.server_features().unwrap(), 0);
    worker.sync().unwrap();
    assert_ne!(
        worker.store.server_features().unwrap() & wire::FEATURE_PACKED,
        0
    );
    other.sync().unwrap();
    // Another device visits half of the households meanwhile, so the worker's changes build
    // on changes that are no longer the server's heads.
    for id in &ids[..5] {
        let v = sample_visit(&other.author, day("2026-11-15"), "另一台设备的走访");
        other.store.record_visit(*id, &v, &[]).unwrap();
    }
    other.sync().unwrap();
    // The worker's visit day, offline: a visit to each household, and a second edit of the
    // first one, which builds on the visit in the same upload.
    for id in &ids {
        let v = sample_visit(
            &worker.author,
            day("2026-11-15"),
            "老人独居，身体状况一般。",
        );
        worker.store.record_visit(*id, &v, &[]).unwrap();
    }
    worker
        .store
        .edit_household(ids[0], |h| {
            h.door_number = "1A".into();
            Ok(())
        })
        .unwrap();
    // What the same upload costs as Automerge chunks.
    let docs = worker
        .store
        .pending_households()
        .unwrap()
        .into_iter()
        .map(|id| DocChanges {
            id,
            changes: worker
                .store
                .pending_changes(id)
                .unwrap()
                .into_iter()
                .map(|(_, b)| serde_bytes::ByteBuf::from(b))
                .collect(),
            whole: None,
        })
        .collect();
    let as_chunks = wire::encode_request(&SyncRequest {
        response_budget: None,
        agent: None,
        table: vec![],
        base_ms: 0,
        pending: None,
        features: wire::FEATURES,
        extras_digest: worker.store.extras_digest().unwrap(),
        scope_digest: None,
        cursor_check: None,
        version: 1,
        cursor: worker.store.sync_cursor().unwrap(),
        docs,
        grids: vec![],
        whole: None,
        journal: vec![],
        held_query: vec![],
    })
    .len() as u64;
    let report = worker.sync().unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(report.progress.round_trips, 1);
    assert_eq!(report.accepted, 11);
    assert_eq!(worker.store.pending_change_count().unwrap(), 0);
    assert!(
        report.progress.bytes_up * 10 < as_chunks * 9,
        "packed {} B, as chunks {as_chunks} B",
        report.progress.bytes_up
    );
    // The server rebuilt the phone's very changes: a fresh phone gets the same hashes.
    let mut fresh = server.phone(&dir.path().join("f.db"), &[]);
    fresh.sync().unwrap();
    other.sync().unwrap();
    worker.sync().unwrap();
    for id in &ids {
        let heads = worker.store.document(*id).unwrap().heads();
        assert_eq!(fresh.store.document(*id).unwrap().heads(), heads);
        assert_eq!(other.store.document(*id).unwrap().heads(), heads);
        assert_eq!(
            worker.store.household(*id).unwrap().visits.len(),
            if ids[..5].contains(id) { 2 } else { 1 }
        );
    }
    assert_eq!(fresh.store.household(ids[0]).unwrap().door_number, "1A");
}

/// A change of household `id` made with raw Automerge on the phone's copy (past the phone's
/// own checks), as a phone with other rules would make it.
fn crafted(
    phone: &mut Phone,
    id: HouseholdId,
    edit: impl FnOnce(&mut automerge::AutoCommit),
) -> Vec<u8> {
    use automerge::transaction::CommitOptions;
    let bytes = phone.store.document(id).unwrap().save();
    let mut raw = automerge::AutoCommit::load(&bytes)
        .unwrap()
        .with_actor(qiaomen_protocol::doc::actor_for(phone.author.device));
    edit(&mut raw);
    raw.commit_with(
        CommitOptions::default()
            .with_message(phone.author.to_message())
            .with_time(phone.store.now_ms()),
    );
    raw.get_last_local_change().unwrap().raw_bytes().to_vec()
}

#[test]
fn a_value_crafted_past_the_phones_rules_is_refused_invalid_field_and_nothing_is_stored() {
    use automerge::{ROOT, ReadDoc, transaction::Transactable};
    use qiaomen_protocol::{
        validate::MAX_NOTE_CHARS,
        wire::{FEATURE_INTEGRITY, FEATURES, RejectCode},
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let mut h = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "3");
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
    a.sync().unwrap();
    let author = a.author;
    let visit = |note: String| {
        move |d: &mut automerge::AutoCommit| {
            let v = sample_visit(&author, day("2026-11-15"), &note);
            let (_, visits) = d.get(ROOT, "visits").unwrap().unwrap();
            autosurgeon::reconcile_prop(d, &visits, v.id.to_string().as_str(), &v).unwrap();
        }
    };
    let member_field = |field: &'static str, value: &'static str| {
        move |d: &mut automerge::AutoCommit| {
            let (_, members) = d.get(ROOT, "members").unwrap().unwrap();
            let (_, member) = d.get(&members, m.to_string()).unwrap().unwrap();
            d.put(&member, field, value).unwrap();
        }
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "an empty door number",
            crafted(&mut a, id, |d| d.put(ROOT, "door_number", "").unwrap()),
        ),
        (
            "an ID number of five digits",
            crafted(&mut a, id, member_field("id_number", "12345")),
        ),
        (
            "an empty member name",
            crafted(&mut a, id, member_field("name", " ")),
        ),
        (
            "a mobile number of the wrong length",
            crafted(&mut a, id, member_field("phone", "1381234567")),
        ),
        (
            "a note over the limit",
            crafted(&mut a, id, visit("字".repeat(MAX_NOTE_CHARS + 1))),
        ),
    ];
    for (what, change) in &bad {
        let (status, resp) = qiaomen_tests::raw_upload_with(
            &server.url,
            &a.token(),
            id,
            vec![change.clone()],
            FEATURES,
        );
        assert_eq!(status, 200, "{what}");
        let codes: Vec<RejectCode> = resp.unwrap().rejected.iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![RejectCode::InvalidField], "{what}");
        // A phone that does not know the code is told `schema_violation`.
        let (_, resp) = qiaomen_tests::raw_upload_with(
            &server.url,
            &a.token(),
            id,
            vec![change.clone()],
            FEATURE_INTEGRITY,
        );
        let codes: Vec<RejectCode> = resp.unwrap().rejected.iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![RejectCode::SchemaViolation], "{what}");
    }
    // The same craft with good values is taken: the refusals were the rules'.
    let good = crafted(&mut a, id, |d| {
        d.put(ROOT, "door_number", "3A").unwrap();
        visit("见到户主".into())(d);
    });
    let (_, resp) =
        qiaomen_tests::raw_upload_with(&server.url, &a.token(), id, vec![good], FEATURES);
    let resp = resp.unwrap();
    assert_eq!((resp.accepted, resp.rejected.len()), (1, 0));
    // Nothing refused is on the server: a fresh phone gets the household as accepted.
    let mut fresh = server.phone(&dir.path().join("fresh.db"), &["g1"]);
    fresh.sync().unwrap();
    let got = fresh.store.household(id).unwrap();
    assert_eq!(got.door_number, "3A");
    assert_eq!(got.visits.len(), 1);
    assert_eq!(got.members[&m].id_number, None);
    assert_eq!(got.members[&m].name, "王建国");
    // And the honest phone's own edit of the same kind fails before it is stored.
    let err = a.store.edit_household(id, |h| {
        h.door_number = String::new();
        Ok(())
    });
    assert!(
        matches!(
            err,
            Err(qiaomen_client_core::StoreError::Document(
                qiaomen_protocol::DocError::Field(_)
            ))
        ),
        "{err:?}"
    );
    assert_eq!(a.store.pending_change_count().unwrap(), 0);
}

#[test]
fn a_new_phone_gets_each_household_whole_in_pieces_and_then_follows_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start(&data);
    let mut busy = server.phone(&dir.path().join("busy.db"), &["g1"]);
    busy.store.set_clock(|| 1_767_225_600_000); // 2026-01-01 China time
    let ids = busy.create_households("g1", 24);
    busy.store.set_clock(qiaomen_server::access::now_ms);
    let days: Vec<Day> = (1..=4u8)
        .flat_map(|m| qiaomen_protocol::calendar::visit_days_of_month(2026, m).unwrap())
        .collect();
    for d in &days {
        for id in &ids {
            busy.store
                .record_visit(
                    *id,
                    &sample_visit(&busy.author, *d, "每月走访，一切正常"),
                    &[],
                )
                .unwrap();
        }
    }
    busy.sync().unwrap();
    // A household of another grid, which the new phone must never get.
    let mut elsewhere = server.phone(&dir.path().join("g2.db"), &["g2"]);
    let foreign = elsewhere.create_households("g2", 1)[0];
    elsewhere.sync().unwrap();
    server.stop();
    // The same log on a second server that sends every change as it was logged.
    copy_store(&data, &dir.path().join("changes"));
    let whole = TestServer::start_with(&data, addr, |c| c.response_budget = 8 * 1024);
    let changes = TestServer::start_with(&dir.path().join("changes"), addr, |c| {
        c.response_budget = 8 * 1024;
        c.whole_docs = false;
    });

    let mut fresh = whole.phone(&dir.path().join("fresh.db"), &["g1"]);
    let report = fresh.sync().unwrap();
    assert!(
        report.progress.round_trips > 3,
        "in pieces: {} round trips",
        report.progress.round_trips
    );
    // Every change once: the households' creation and each visit.
    assert_eq!(
        report.received_changes as usize,
        ids.len() * (1 + days.len())
    );
    let mut held = fresh.store.household_ids().unwrap();
    held.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(held, expected, "the grid's households, and no other");
    assert!(!held.contains(&foreign));
    for id in &ids {
        assert_eq!(
            fresh.store.household(*id).unwrap(),
            busy.store.household(*id).unwrap()
        );
    }
    assert!(fresh.store.whole_position().unwrap().is_none());
    assert!(fresh.store.sync_cursor().unwrap().is_some());

    // The same first sync with every change as logged costs more bytes down.
    let mut by_changes = changes.phone(&dir.path().join("by-changes.db"), &["g1"]);
    let baseline = by_changes.sync().unwrap();
    assert_eq!(by_changes.store.household_ids().unwrap().len(), ids.len());
    assert!(
        report.progress.bytes_down < baseline.progress.bytes_down,
        "whole documents {} bytes, changes {} bytes",
        report.progress.bytes_down,
        baseline.progress.bytes_down
    );

    // Afterwards the phone follows the log from the cursor it was given: a new visit
    // arrives as one change.
    busy.client = qiaomen_client_core::SyncClient::new(&whole.url).unwrap();
    busy.store
        .record_visit(ids[0], &sample_visit(&busy.author, days[0], "补记"), &[])
        .unwrap();
    busy.sync().unwrap();
    let next = fresh.sync().unwrap();
    assert_eq!(next.received_changes, 1);
    assert_eq!(
        fresh.store.household(ids[0]).unwrap(),
        busy.store.household(ids[0]).unwrap()
    );
}

#[test]
fn a_visit_day_comes_down_packed_and_the_phone_holds_the_servers_very_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = TestServer::start(&data);
    let mut supervisor = server.phone(&dir.path().join("s.db"), &[]);
    let ids = supervisor.create_households("g1", 12);
    supervisor.sync().unwrap();
    let mut packed = server.phone(&dir.path().join("packed.db"), &["g1"]);
    let mut chunks = server.phone(&dir.path().join("chunks.db"), &["g1"]);
    packed.sync().unwrap();
    chunks.sync().unwrap();
    // The supervisor's visit day: a visit to each household, and two edits of the first one
    // after it, each building on the one before in the same answer.
    for id in &ids {
        let v = sample_visit(
            &supervisor.author,
            day("2026-11-15"),
            "老人独居，身体状况一般。",
        );
        supervisor.store.record_visit(*id, &v, &[]).unwrap();
    }
    for door in ["1A", "1B"] {
        supervisor
            .store
            .edit_household(ids[0], |h| {
                h.door_number = door.into();
                Ok(())
            })
            .unwrap();
    }
    supervisor.sync().unwrap();
    server.stop();
    // The same log on a second server that sends every change as its chunk.
    copy_store(&data, &dir.path().join("as-chunks"));
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_with(&data, addr, |_| {});
    let plain = TestServer::start_with(&dir.path().join("as-chunks"), addr, |c| {
        c.packed_downloads = false;
    });
    packed.client = qiaomen_client_core::SyncClient::new(&server.url).unwrap();
    chunks.client = qiaomen_client_core::SyncClient::new(&plain.url).unwrap();
    let got = packed.sync().unwrap();
    let baseline = chunks.sync().unwrap();
    assert_eq!(got.received_changes, 14);
    assert_eq!(baseline.received_changes, 14);
    assert_eq!(got.progress.round_trips, 1);
    assert!(
        got.progress.bytes_down * 10 < baseline.progress.bytes_down * 8,
        "packed {} B, as chunks {} B",
        got.progress.bytes_down,
        baseline.progress.bytes_down
    );
    // The phone rebuilt the server's very changes.
    for id in &ids {
        let heads = supervisor.store.document(*id).unwrap().heads();
        assert_eq!(packed.store.document(*id).unwrap().heads(), heads);
        assert_eq!(chunks.store.document(*id).unwrap().heads(), heads);
        assert_eq!(
            packed.store.household(*id).unwrap(),
            supervisor.store.household(*id).unwrap()
        );
    }
    assert_eq!(packed.store.household(ids[0]).unwrap().door_number, "1B");
}
