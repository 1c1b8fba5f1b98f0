//! A hostile or broken phone cannot hurt anyone else's records or syncs: forged changes are
//! refused with their code, every household stays loadable (on the server and on a fresh
//! phone), a household that does not load fails only itself, and a request's cost is bounded.
//! Real server on 127.0.0.1, phones on SQLite files.

use std::num::NonZeroU64;

use automerge::{
    ActorId, AutoCommit, Change, ROOT,
    legacy::{ObjectId, OpId},
    transaction::{CommitOptions, Transactable},
};
use qiaomen_protocol::{
    calendar::Day,
    doc::{HouseholdDoc, actor_for},
    ids::HouseholdId,
    wire::{FEATURES, RejectCode, SyncResponse},
};
use qiaomen_server::access::Role;
use qiaomen_tests::{Phone, TestServer, call, raw_upload_with, sample_visit, session};

/// Posts `changes` of household `id` as a client that understands every reject code.
fn upload(server: &TestServer, p: &Phone, id: HouseholdId, changes: Vec<Vec<u8>>) -> SyncResponse {
    let (status, resp) = raw_upload_with(&server.url, &p.token(), id, changes, FEATURES);
    assert_eq!(status, 200);
    resp.expect("a sync answer")
}

/// An honest next change of `phone` on household `id` (its own actor, on the heads it holds),
/// returned expanded for forging.
fn next_change(phone: &mut Phone, id: HouseholdId, door: &str) -> automerge::ExpandedChange {
    let doc = phone.store.document(id).unwrap();
    let actor = doc.actor().clone();
    let bytes = doc.save();
    let mut raw = AutoCommit::load(&bytes).unwrap().with_actor(actor);
    raw.put(ROOT, "door_number", door).unwrap();
    raw.commit_with(
        CommitOptions::default()
            .with_message(phone.author.to_message())
            .with_time(1_763_000_000_000),
    );
    let mut e = raw.get_last_local_change().unwrap().decode();
    e.hash = None;
    e
}

fn encode(e: automerge::ExpandedChange) -> Vec<u8> {
    Change::from(e).raw_bytes().to_vec()
}

/// Every household loads from the server's store as the server loads it.
fn server_loads_all(server: &TestServer, ids: &[HouseholdId]) {
    let storage = server.storage();
    for id in ids {
        let bytes = storage.load_doc(*id).unwrap().expect("stored");
        HouseholdDoc::load(&bytes).expect("the stored household loads");
    }
}

#[test]
fn forged_changes_are_refused_and_every_household_stays_loadable_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let ids = a.create_households("g1", 3);
    let id = ids[0];
    a.store
        .edit_household(id, |h| {
            h.door_number = "1b".into();
            Ok(())
        })
        .unwrap();
    a.sync().unwrap();
    let honest = next_change(&mut a, id, "honest");
    assert!(honest.seq > 1, "the phone's actor made the household");

    let mut forged: Vec<(&str, Vec<u8>)> = Vec::new();
    // Its own change, re-signed with the sequence number bumped.
    let mut e = honest.clone();
    e.seq += 1;
    forged.push(("seq bumped", encode(e)));
    // The same sequence number under a second actor id of the same device.
    let mut e = honest.clone();
    e.actor_id = actor_for(a.author.device);
    forged.push(("second actor", encode(e)));
    // Operation ids reused.
    let mut e = honest.clone();
    e.start_op = NonZeroU64::new(1).unwrap();
    forged.push(("op ids reused", encode(e)));
    // No dependency on the actor's previous change.
    let mut e = honest.clone();
    e.deps.clear();
    forged.push(("own previous dropped", encode(e)));
    // A predecessor that never existed.
    let mut e = honest.clone();
    e.operations[0].pred = vec![OpId(1, ActorId::random())].into();
    forged.push(("ghost predecessor", encode(e)));
    // An object that does not exist yet.
    let mut e = honest.clone();
    let own = e.actor_id.clone();
    e.operations[0].obj = ObjectId::Id(OpId(e.start_op.get() + 50, own));
    forged.push(("future object", encode(e)));
    // A chunk whose checksum does not match its bytes.
    let mut bytes = encode(honest.clone());
    bytes[4] ^= 0x01;
    forged.push(("bad checksum", bytes));

    for (what, bytes) in forged {
        let resp = upload(&server, &a, id, vec![bytes]);
        assert_eq!(resp.accepted, 0, "{what}: stored");
        let codes: Vec<RejectCode> = resp.rejected.iter().map(|r| r.code).collect();
        assert!(
            codes == [RejectCode::BrokenHistory] || codes == [RejectCode::Malformed],
            "{what}: {codes:?}"
        );
        if what != "bad checksum" {
            assert_eq!(codes, [RejectCode::BrokenHistory], "{what}");
        }
    }
    // A phone that does not announce the codes gets the nearest one it knows.
    let mut e = honest.clone();
    e.seq += 1;
    let (_, old) = qiaomen_tests::raw_upload(&server.url, &a.token(), id, vec![encode(e)]);
    assert_eq!(old.unwrap().rejected[0].code, RejectCode::Malformed);

    // The honest change itself is accepted, and the phone keeps working.
    let resp = upload(&server, &a, id, vec![encode(honest)]);
    assert_eq!((resp.accepted, resp.rejected.len()), (1, 0));
    server_loads_all(&server, &ids);
    // A fresh phone of the grid loads every household; the supervisors' API reads them.
    let mut fresh = server.phone(&dir.path().join("fresh.db"), &["g1"]);
    fresh.sync().unwrap();
    for id in &ids {
        fresh
            .store
            .household(*id)
            .expect("the fresh phone loads it");
    }
    assert_eq!(fresh.store.household(id).unwrap().door_number, "honest");
    let cc = session(&server, "cc-hostile", "c", Role::CommandCentre);
    for id in &ids {
        let (status, _) = call(
            "GET",
            &format!("{}/api/v1/households/{id}", server.url),
            &cc,
            None,
        );
        assert_eq!(status, 200);
    }
}

#[test]
fn a_household_that_does_not_load_fails_only_itself_and_is_quarantined_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = TestServer::start(&data);
    let mut x = server.phone(&dir.path().join("x.db"), &["g1"]);
    let ids = x.create_households("g1", 2);
    let (broken, fine) = (ids[0], ids[1]);
    x.sync().unwrap();
    let mut y = server.phone(&dir.path().join("y.db"), &["g2"]);
    let theirs = y.create_households("g2", 1)[0];
    y.sync().unwrap();
    let db = server.db();
    server.stop();

    // The stored snapshot of one household is damaged (a disk fault, a bug of an older
    // server); the server starts again.
    let max: i64 = db.one("SELECT max(seq) FROM changes", &[]).unwrap();
    db.execute(
        "UPDATE docs SET snapshot = ?2, snapshot_seq = ?3 WHERE id = ?1",
        &[
            &broken.as_bytes().as_slice(),
            &vec![0x85u8, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 0, 1, 0],
            &max,
        ],
    )
    .unwrap();
    let server = TestServer::start(&data);
    let mut x = Phone::open(&dir.path().join("x.db"), &server.url);
    let mut y = Phone::open(&dir.path().join("y.db"), &server.url);

    // One phone has work on the broken household and on another; one phone has other work,
    // syncing at the same moment.
    x.store
        .edit_household(broken, |h| {
            h.door_number = "7".into();
            Ok(())
        })
        .unwrap();
    x.store
        .edit_household(fine, |h| {
            h.door_number = "8".into();
            Ok(())
        })
        .unwrap();
    y.store
        .edit_household(theirs, |h| {
            h.door_number = "9".into();
            Ok(())
        })
        .unwrap();
    let ty = std::thread::spawn(move || {
        let r = y.sync();
        (y, r)
    });
    let rx = x.sync().expect("no 503 for the honest phone");
    let (y, ry) = ty.join().unwrap();
    let ry = ry.expect("no 503 for the phone next to it");
    assert_eq!(ry.accepted, 1);
    assert_eq!(
        rx.accepted, 1,
        "the other household's change is acknowledged"
    );
    assert_eq!(
        x.store.pending_changes(broken).unwrap().len(),
        1,
        "the broken household's change waits on the phone"
    );
    assert!(x.store.pending_changes(fine).unwrap().is_empty());
    let storage = server.storage();
    let q = storage.quarantined().unwrap();
    assert_eq!(q.iter().map(|q| q.doc).collect::<Vec<_>>(), vec![broken]);
    assert_eq!(q[0].reason, "does_not_load");
    // The read model and the pages keep answering.
    let cc = session(&server, "cc-quarantine", "c", Role::CommandCentre);
    let (status, _) = call(
        "GET",
        &format!("{}/api/v1/coverage?unit=c", server.url),
        &cc,
        None,
    );
    assert_eq!(status, 200);
    // Again: still refused (temporarily), still nothing else held up.
    let again = x.sync().unwrap();
    assert_eq!(x.store.pending_changes(broken).unwrap().len(), 1);
    assert!(again.rejected.is_empty() || again.accepted == 0);

    // Repaired (the snapshot dropped: the log rebuilds it) and released, the change goes in.
    db.execute(
        "UPDATE docs SET snapshot = NULL, snapshot_seq = 0 WHERE id = ?1",
        &[&broken.as_bytes().as_slice()],
    )
    .unwrap();
    assert!(storage.release(broken).unwrap());
    x.sync().unwrap();
    assert!(x.store.pending_changes(broken).unwrap().is_empty());
    let mut fresh = server.phone(&dir.path().join("fresh.db"), &["g1"]);
    fresh.sync().unwrap();
    assert_eq!(fresh.store.household(broken).unwrap().door_number, "7");
    drop(y);
}

#[test]
fn a_request_costs_a_bounded_number_of_operations() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    let id = a.create_households("g1", 1)[0];
    a.sync().unwrap();
    let base = a.store.document(id).unwrap().save();
    let actor = actor_for(a.author.device);
    let mut raw = AutoCommit::load(&base).unwrap().with_actor(actor);
    let mut chain = Vec::new();
    for i in 0..6 {
        let text = raw
            .put_object(ROOT, format!("bulk{i}"), automerge::ObjType::Text)
            .unwrap();
        raw.splice_text(&text, 0, 0, &"字".repeat(19_000)).unwrap();
        raw.commit_with(
            CommitOptions::default()
                .with_message(a.author.to_message())
                .with_time(1_763_000_000_000),
        );
        chain.push(raw.get_last_local_change().unwrap().raw_bytes().to_vec());
    }
    // Six changes of 19,000 operations: over the request's limit, refused whole (413) before
    // a writer sees them.
    let (status, _) = raw_upload_with(&server.url, &a.token(), id, chain.clone(), FEATURES);
    assert_eq!(status, 413);
    // One change over the per-change limit: refused `over_limit`.
    let mut big = AutoCommit::load(&base)
        .unwrap()
        .with_actor(actor_for(a.author.device));
    let text = big
        .put_object(ROOT, "bulk", automerge::ObjType::Text)
        .unwrap();
    big.splice_text(&text, 0, 0, &"字".repeat(25_000)).unwrap();
    big.commit_with(
        CommitOptions::default()
            .with_message(a.author.to_message())
            .with_time(1_763_000_000_000),
    );
    let bytes = big.get_last_local_change().unwrap().raw_bytes().to_vec();
    let resp = upload(&server, &a, id, vec![bytes]);
    assert_eq!(resp.rejected[0].code, RejectCode::OverLimit);
    // The honest phone is unaffected.
    a.store
        .edit_household(id, |h| {
            h.door_number = "2".into();
            Ok(())
        })
        .unwrap();
    let report = a.sync().unwrap();
    assert_eq!((report.accepted, report.rejected.len()), (1, 0));
    server_loads_all(&server, &[id]);
}

#[test]
fn the_phone_splits_an_upload_to_stay_under_the_request_operation_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut a = server.phone(&dir.path().join("a.db"), &["g1"]);
    // 30 households, each visited with a note of 4,000 characters: 120,000 operations, over
    // the request limit of 100,000, in 120 KB (well under the byte budget of a request).
    let ids = a.create_households("g1", 30);
    a.sync().unwrap();
    let day = Day::ymd(2026, 11, 15).unwrap();
    for id in &ids {
        let visit = sample_visit(&a.author, day, &"a".repeat(4_000));
        a.store.record_visit(*id, &visit, &[]).unwrap();
    }
    let report = a.sync().unwrap();
    assert_eq!(report.rejected, vec![]);
    assert_eq!(report.accepted, 30);
    assert!(report.progress.round_trips >= 2, "split into requests");
    server_loads_all(&server, &ids);
}
