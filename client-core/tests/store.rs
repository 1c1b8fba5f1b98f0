//! The device store on real SQLite files.

use autosurgeon::Text;
use qiaomen_client_core::{Store, StoreError, StoreOptions};
use qiaomen_protocol::{
    calendar::Day,
    doc::Author,
    ids::*,
    schema::*,
    validate::{Field, FieldError, MAX_NOTE_CHARS, Rule},
};

fn author() -> Author {
    Author {
        user: UserId::new(),
        device: DeviceId::new(),
    }
}

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

fn household(grid: &str, door: &str) -> Household {
    Household::new(HouseholdId::new(), GridId::new(grid), "东村三组", door)
}

fn visit(a: &Author, d: &str) -> Visit {
    Visit {
        id: VisitId::new(),
        visit_day: day(d),
        worker: a.user,
        device: a.device,
        started_at_ms: 1,
        ended_at_ms: None,
        gps: None,
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![],
        disputes: vec![],
        hazards: vec![],
        publicity: vec![Publicity::AntiFraud],
        note: Text::with_value("一切正常"),
        demands_raised: vec![],
    }
}

fn options() -> StoreOptions {
    StoreOptions::default()
}

#[test]
fn edits_persist_and_reopen_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let (id, record, heads) = {
        let mut store = Store::open(&path, me, options()).unwrap();
        let id = store.create_household(&household("g1", "3")).unwrap();
        store
            .record_visit(id, &visit(&me, "2026-11-15"), &[])
            .unwrap();
        store
            .edit_household(id, |h| {
                h.phone = Some(Sensitive::new("13800000000"));
                Ok(())
            })
            .unwrap();
        let heads = store.document(id).unwrap().heads();
        (id, store.household(id).unwrap(), heads)
    };
    let mut store = Store::open(&path, me, options()).unwrap();
    assert_eq!(store.household(id).unwrap(), record);
    assert_eq!(store.document(id).unwrap().heads(), heads);
    assert_eq!(store.pending_change_count().unwrap(), 3);
}

#[test]
fn compaction_folds_changes_without_losing_edits_or_pending_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let opts = StoreOptions {
        compact_after: 4,
        ..options()
    };
    let mut store = Store::open(&path, me, opts.clone()).unwrap();
    let id = store.create_household(&household("g1", "3")).unwrap();
    let days = [
        "2026-01-15",
        "2026-01-30",
        "2026-02-15",
        "2026-02-28",
        "2026-03-15",
        "2026-03-30",
        "2026-04-15",
        "2026-04-30",
        "2026-05-15",
        "2026-05-30",
    ];
    for d in days {
        store.record_visit(id, &visit(&me, d), &[]).unwrap();
    }
    let rows: i64 = store
        .connection_for_tests()
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
        .unwrap();
    assert!(
        rows < 4,
        "changes were folded into the snapshot, {rows} rows left"
    );
    assert_eq!(store.pending_change_count().unwrap(), 11);
    assert_eq!(store.pending_changes(id).unwrap().len(), 11);
    drop(store);
    let mut store = Store::open(&path, me, opts).unwrap();
    assert_eq!(store.household(id).unwrap().visits.len(), 10);
    let pending = store.pending_changes(id).unwrap();
    assert_eq!(pending.len(), 11);
    // Acknowledging some lowers the count, durably.
    let acked: Vec<_> = pending.iter().take(5).map(|(h, _)| *h).collect();
    store.mark_acknowledged(id, &acked).unwrap();
    drop(store);
    let store = Store::open(&path, me, options()).unwrap();
    assert_eq!(store.pending_change_count().unwrap(), 6);
    assert_eq!(store.acknowledged_change_count().unwrap(), 5);
}

#[test]
fn roster_lists_key_group_households_first_and_marks_visits() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();
    let mut store = Store::open(dir.path().join("p.db"), me, options()).unwrap();
    let plain_a = store.create_household(&household("g1", "01")).unwrap();
    let mut tagged = household("g1", "09");
    tagged.tags.push(TagSpan {
        group: KeyGroup::PoorOrMonitored,
        since: day("2025-01-01"),
        until: None,
    });
    let tagged = store.create_household(&tagged).unwrap();
    // A member's tag counts too; an expired one does not.
    let mut member_tagged = household("g1", "05");
    let m = Member {
        id: MemberId::new(),
        relation: Relation::Head,
        name: "李秀英".into(),
        id_number: None,
        birth_date: None,
        phone: None,
        tags: vec![
            TagSpan {
                group: KeyGroup::ElderlyAlone,
                since: day("2024-01-01"),
                until: None,
            },
            TagSpan {
                group: KeyGroup::Disabled,
                since: day("2020-01-01"),
                until: Some(day("2021-01-01")),
            },
        ],
    };
    member_tagged.members.insert(m.id, m);
    let member_tagged = store.create_household(&member_tagged).unwrap();
    let mut moved = household("g1", "02");
    moved.status = HouseholdStatus::Moved;
    store.create_household(&moved).unwrap();
    store.create_household(&household("g2", "01")).unwrap();

    let roster = store.roster(&GridId::new("g1"), day("2026-11-15")).unwrap();
    let order: Vec<_> = roster.iter().map(|e| e.household.id).collect();
    assert_eq!(order, vec![member_tagged, tagged, plain_a]);
    assert_eq!(roster[0].key_groups, vec![KeyGroup::ElderlyAlone]);
    assert_eq!(roster[1].key_groups, vec![KeyGroup::PoorOrMonitored]);
    assert!(roster[2].key_groups.is_empty());
    assert!(roster.iter().all(|e| !e.visited));

    store
        .record_visit(tagged, &visit(&me, "2026-11-15"), &[])
        .unwrap();
    let open = store
        .not_visited(&GridId::new("g1"), day("2026-11-22"))
        .unwrap();
    assert_eq!(
        open.iter().map(|e| e.household.id).collect::<Vec<_>>(),
        vec![member_tagged, plain_a]
    );
    // The next cycle starts afresh.
    assert_eq!(
        store
            .not_visited(&GridId::new("g1"), day("2026-11-30"))
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store.households_in_grid(&GridId::new("g1")).unwrap().len(),
        4
    );
    assert_eq!(
        store.households_in_grid(&GridId::new("g2")).unwrap().len(),
        1
    );

    // An edit that moves the household away takes it off the roster.
    store
        .edit_household(plain_a, |h| {
            h.status = HouseholdStatus::Moved;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store
            .roster(&GridId::new("g1"), day("2026-11-15"))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_refused_edit_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();
    let mut store = Store::open(dir.path().join("p.db"), me, options()).unwrap();
    let id = store.create_household(&household("g1", "1")).unwrap();
    let before = store.household(id).unwrap();
    let err = store.record_visit(id, &visit(&me, "2026-11-16"), &[]);
    assert!(matches!(
        err,
        Err(StoreError::Document(
            qiaomen_protocol::DocError::InvalidEdit(_)
        ))
    ));
    assert_eq!(store.pending_change_count().unwrap(), 1);
    store.clear_cache();
    assert_eq!(store.household(id).unwrap(), before);
    assert!(matches!(
        store.create_household(&before),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.household(HouseholdId::new()),
        Err(StoreError::NotFound { .. })
    ));
}

fn field_of<T: std::fmt::Debug>(r: Result<T, StoreError>) -> (Field, Rule) {
    match r {
        Err(StoreError::Document(qiaomen_protocol::DocError::Field(FieldError {
            field,
            rule,
        }))) => (field, rule),
        other => panic!("not a field error: {other:?}"),
    }
}

#[test]
fn a_ten_megabyte_note_is_refused_naming_the_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let me = author();
    let mut store = Store::open(&path, me, options()).unwrap();
    let id = store.create_household(&household("g1", "1")).unwrap();
    let huge = "走访记录".repeat(10 * 1024 * 1024 / 12);
    let mut big = visit(&me, "2026-11-15");
    big.note = Text::with_value(huge.as_str());
    assert_eq!(
        field_of(store.record_visit(id, &big, &[])),
        (Field::Note, Rule::TooLong)
    );
    // A note grown past the limit by edits of a visit already recorded.
    let v = visit(&me, "2026-11-15");
    store.record_visit(id, &v, &[]).unwrap();
    assert_eq!(
        field_of(store.replace_note(id, v.id, &huge)),
        (Field::Note, Rule::TooLong)
    );
    assert_eq!(
        field_of(store.splice_note(id, v.id, 0, 0, &"字".repeat(MAX_NOTE_CHARS))),
        (Field::Note, Rule::TooLong)
    );
    // Only the household and the small visit are stored, on disk as in memory.
    assert_eq!(store.pending_change_count().unwrap(), 2);
    drop(store);
    let mut store = Store::open(&path, me, options()).unwrap();
    let h = store.household(id).unwrap();
    assert_eq!(h.visits.keys().collect::<Vec<_>>(), vec![&v.id]);
    assert_eq!(h.visits[&v.id].note.as_str(), "一切正常");
    // A note at the limit is fine.
    store
        .replace_note(id, v.id, &"字".repeat(MAX_NOTE_CHARS))
        .unwrap();
}

#[test]
fn values_the_server_would_refuse_are_refused_on_the_phone_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();
    let mut store = Store::open(dir.path().join("p.db"), me, options()).unwrap();
    assert_eq!(
        field_of(store.create_household(&household("g1", " "))),
        (Field::DoorNumber, Rule::Empty)
    );
    assert_eq!(
        field_of(store.create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "",
            "3"
        ))),
        (Field::Address, Rule::Empty)
    );
    let id = store.create_household(&household("g1", "1")).unwrap();
    let member = |name: &str, id_number: Option<&str>, phone: Option<&str>| {
        let m = MemberId::new();
        Member {
            id: m,
            relation: Relation::Head,
            name: name.into(),
            id_number: id_number.map(Sensitive::new),
            birth_date: None,
            phone: phone.map(Sensitive::new),
            tags: vec![],
        }
    };
    let cases = [
        (member("", None, None), (Field::MemberName, Rule::Empty)),
        (
            member("王建国", Some("12345"), None),
            (Field::MemberIdNumber, Rule::IdFormat),
        ),
        (
            member("王建国", Some("110105194912310021"), None),
            (Field::MemberIdNumber, Rule::IdCheckDigit),
        ),
        (
            member("王建国", Some("110105199002300019"), None),
            (Field::MemberIdNumber, Rule::IdBirthDate),
        ),
        (
            member("王建国", None, Some("010-12345678")),
            (Field::MemberPhone, Rule::PhoneFormat),
        ),
    ];
    for (m, expected) in cases {
        let got = field_of(store.edit_household(id, |h| {
            h.members.insert(m.id, m.clone());
            Ok(())
        }));
        assert_eq!(got, expected);
    }
    assert_eq!(
        field_of(store.edit_household(id, |h| {
            h.door_number.clear();
            Ok(())
        })),
        (Field::DoorNumber, Rule::Empty)
    );
    assert_eq!(store.pending_change_count().unwrap(), 1, "nothing stored");
    store.clear_cache();
    assert!(store.household(id).unwrap().members.is_empty());
    // Valid values go in: a checked ID number (X as its check character), a mobile, and a
    // landline as the household's phone.
    store
        .edit_household(id, |h| {
            let m = member("王建国", Some("11010519491231002X"), Some("13812345678"));
            h.members.insert(m.id, m);
            h.phone = Some(Sensitive::new("0371-65432100"));
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_stored_household_that_breaks_a_later_rule_still_loads_and_takes_other_edits() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();
    let mut store = Store::open(dir.path().join("p.db"), me, options()).unwrap();
    // Made before the rules: no door number, a member with a short ID number.
    let mut old = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "");
    let m = MemberId::new();
    old.members.insert(
        m,
        Member {
            id: m,
            relation: Relation::Head,
            name: "王建国".into(),
            id_number: Some(Sensitive::new("12345")),
            birth_date: None,
            phone: None,
            tags: vec![],
        },
    );
    let mut raw = automerge::AutoCommit::new();
    autosurgeon::reconcile(&mut raw, &old).unwrap();
    raw.commit();
    let id = store.import_document(&raw.save()).unwrap();
    store
        .edit_household(id, |h| {
            h.address = "东村三组".into();
            h.members.get_mut(&m).unwrap().name = "王建民".into();
            Ok(())
        })
        .unwrap();
    store
        .record_visit(id, &visit(&me, "2026-11-15"), &[])
        .unwrap();
    let h = store.household(id).unwrap();
    assert_eq!(
        (h.address.as_str(), h.door_number.as_str()),
        ("东村三组", "")
    );
    // Writing the old value's field judges it.
    assert_eq!(
        field_of(store.edit_household(id, |h| {
            h.members.get_mut(&m).unwrap().id_number = Some(Sensitive::new("123456"));
            Ok(())
        })),
        (Field::MemberIdNumber, Rule::IdFormat)
    );
}

#[test]
fn a_corrupt_document_gives_a_typed_error_and_other_households_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();
    let mut store = Store::open(dir.path().join("p.db"), me, options()).unwrap();
    let good = store.create_household(&household("g1", "1")).unwrap();
    let bad = store.create_household(&household("g1", "2")).unwrap();
    let truncated = store.create_household(&household("g1", "3")).unwrap();
    store
        .record_visit(truncated, &visit(&me, "2026-11-15"), &[])
        .unwrap();
    let conn = store.connection_for_tests();
    conn.execute(
        "UPDATE docs SET snapshot = X'00FF00FF' WHERE id = ?1",
        [bad.as_bytes().as_slice()],
    )
    .unwrap();
    conn.execute(
        "UPDATE changes SET bytes = substr(bytes, 1, length(bytes) / 2) WHERE doc = ?1",
        [truncated.as_bytes().as_slice()],
    )
    .unwrap();
    store.clear_cache();
    for id in [bad, truncated] {
        match store.household(id) {
            Err(StoreError::CorruptDocument { household }) => assert_eq!(household, id),
            other => panic!("expected CorruptDocument, got {other:?}"),
        }
    }
    assert_eq!(store.household(good).unwrap().door_number, "1");
    assert_eq!(
        store
            .roster(&GridId::new("g1"), day("2026-11-15"))
            .unwrap()
            .len(),
        3
    );
    // The error message names no resident data.
    let msg = store.household(bad).unwrap_err().to_string();
    assert!(!msg.contains("东村"), "{msg}");
}

#[test]
fn a_file_that_is_not_a_store_gives_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    assert!(matches!(
        Store::open(&garbage, author(), options()),
        Err(StoreError::CorruptStore)
    ));

    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(
        Store::open(&foreign, author(), options()),
        Err(StoreError::CorruptStore)
    ));

    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    assert!(matches!(
        Store::open(&newer, author(), options()),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[test]
fn a_store_file_damaged_in_the_middle_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let me = author();
    {
        let mut store = Store::open(
            &path,
            me,
            StoreOptions {
                compact_after: 2,
                ..options()
            },
        )
        .unwrap();
        for i in 0..40 {
            let id = store
                .create_household(&household("g1", &format!("{i:02}")))
                .unwrap();
            store
                .record_visit(id, &visit(&me, "2026-11-15"), &[])
                .unwrap();
        }
        store
            .connection_for_tests()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let clean = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(clean.len() > 4 * page);
    for target in [page + 100, clean.len() / 2, clean.len() - page + 10] {
        let mut bytes = clean.clone();
        for b in &mut bytes[target..target + 512] {
            *b ^= 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = std::fs::remove_file(dir.path().join("p.db-wal"));
        // Open, list and read everything: each step may fail with a typed error, never panic.
        if let Ok(mut store) = Store::open(&path, me, options()) {
            if let Ok(ids) = store.household_ids() {
                for id in ids {
                    match store.household(id) {
                        Ok(_)
                        | Err(StoreError::CorruptDocument { .. } | StoreError::CorruptStore) => {}
                        Err(other) => panic!("unexpected error kind: {other}"),
                    }
                }
            }
            let _ = store.roster(&GridId::new("g1"), day("2026-11-15"));
        }
    }
}

#[test]
fn two_phones_exchange_changes_through_their_stores_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (author(), author());
    let mut pa = Store::open(dir.path().join("a.db"), a, options()).unwrap();
    let mut pb = Store::open(dir.path().join("b.db"), b, options()).unwrap();
    let id = pa.create_household(&household("g1", "1")).unwrap();
    let bytes = pa.document(id).unwrap().save();
    pb.import_document(&bytes).unwrap();
    pa.record_visit(id, &visit(&a, "2026-11-15"), &[]).unwrap();
    pb.record_visit(id, &visit(&b, "2026-11-15"), &[]).unwrap();
    let from_a: Vec<_> = pa
        .pending_changes(id)
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let from_b: Vec<_> = pb
        .pending_changes(id)
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        pb.apply_remote_changes(id, &from_a).unwrap(),
        1,
        "the creation is already there"
    );
    pa.apply_remote_changes(id, &from_b).unwrap();
    // Duplicates are harmless.
    assert_eq!(pa.apply_remote_changes(id, &from_b).unwrap(), 0);
    // Received changes are not this phone's to send.
    assert_eq!(pb.pending_change_count().unwrap(), 1);
    assert_eq!(pa.household(id).unwrap(), pb.household(id).unwrap());
    assert_eq!(pa.household(id).unwrap().visits.len(), 2);
    // After reopening both, still equal.
    drop((pa, pb));
    let mut pa = Store::open(dir.path().join("a.db"), a, options()).unwrap();
    let mut pb = Store::open(dir.path().join("b.db"), b, options()).unwrap();
    assert_eq!(
        pa.document(id).unwrap().heads(),
        pb.document(id).unwrap().heads()
    );
    assert!(pa.roster(&GridId::new("g1"), day("2026-11-15")).unwrap()[0].visited);
}

#[test]
fn bad_remote_changes_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let a = author();
    let mut pa = Store::open(dir.path().join("a.db"), a, options()).unwrap();
    let id = pa.create_household(&household("g1", "1")).unwrap();
    let heads = pa.document(id).unwrap().heads();
    for bad in [
        vec![],
        vec![1, 2, 3],
        vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 9],
    ] {
        assert!(pa.apply_remote_changes(id, &[bad]).is_err());
    }
    pa.clear_cache();
    assert_eq!(pa.document(id).unwrap().heads(), heads);
    assert!(pa.import_document(&[1, 2, 3]).is_err());
    assert_eq!(pa.household_ids().unwrap(), vec![id]);
}

#[test]
fn conflicts_are_visible_and_resolvable_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (author(), author());
    let mut pa = Store::open(dir.path().join("a.db"), a, options()).unwrap();
    let mut pb = Store::open(dir.path().join("b.db"), b, options()).unwrap();
    let id = pa.create_household(&household("g1", "1")).unwrap();
    pb.import_document(&pa.document(id).unwrap().save())
        .unwrap();
    pa.edit_household(id, |h| {
        h.door_number = "1A".into();
        Ok(())
    })
    .unwrap();
    pb.edit_household(id, |h| {
        h.door_number = "1B".into();
        Ok(())
    })
    .unwrap();
    let from_b: Vec<_> = pb
        .pending_changes(id)
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    pa.apply_remote_changes(id, &from_b).unwrap();
    let c = pa.conflicts(id).unwrap();
    assert_eq!(c.len(), 1);
    pa.resolve_conflict(
        id,
        &c[0].path,
        qiaomen_protocol::conflicts::Resolution::Set(serde_json::json!("1C")),
    )
    .unwrap();
    assert!(pa.conflicts(id).unwrap().is_empty());
    // The index follows the resolution.
    assert_eq!(
        pa.households_in_grid(&GridId::new("g1")).unwrap()[0].door_number,
        "1C"
    );
    let prov = pa.provenance(id, &["door_number".into()]).unwrap();
    assert_eq!(prov[0].author, Some(a));
}

#[test]
fn a_refused_change_and_what_was_built_on_it_are_rolled_back_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();
    let path = dir.path().join("p.db");
    let mut store = Store::open(&path, me, options()).unwrap();
    let id = store.create_household(&household("g1", "1")).unwrap();
    let v = visit(&me, "2026-11-15");
    store.record_visit(id, &v, &[]).unwrap();
    let pending = store.pending_changes(id).unwrap();
    let (visit_change, _) = pending[1];
    store.splice_note(id, v.id, 0, 0, "补充:").unwrap(); // built on the visit
    let other = store.create_household(&household("g1", "2")).unwrap();
    store
        .apply_rejections(id, &[(visit_change, "schema_violation".into())])
        .unwrap();

    let h = store.household(id).unwrap();
    assert!(h.visits.is_empty(), "the refused visit is gone");
    let rejected = store.rejected_changes().unwrap();
    let codes: Vec<_> = rejected.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(rejected.len(), 2);
    assert!(codes.contains(&"schema_violation") && codes.contains(&"depends_on_rejected"));
    // Only the creations remain pending; the phone keeps working.
    assert_eq!(store.pending_change_count().unwrap(), 2);
    store
        .record_visit(id, &visit(&me, "2026-11-30"), &[])
        .unwrap();
    drop(store);
    let mut store = Store::open(&path, me, options()).unwrap();
    assert_eq!(store.household(id).unwrap().visits.len(), 1);
    assert_eq!(store.rejected_changes().unwrap().len(), 2);

    // A refused creation takes the household off the device.
    let creation = store.pending_changes(other).unwrap()[0].0;
    store
        .apply_rejections(other, &[(creation, "forbidden".into())])
        .unwrap();
    assert!(matches!(
        store.household(other),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.households_in_grid(&GridId::new("g1")).unwrap().len(),
        1
    );
}

#[test]
fn a_visit_note_in_chinese_is_replaced_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = author();
    let mut store = Store::open(dir.path().join("p.db"), a, options()).unwrap();
    let mut hh = household("g1", "1");
    hh.phone = Some(Sensitive::new("13812345678"));
    let id = store.create_household(&hh).unwrap();
    let mut v = visit(&a, "2026-11-15");
    v.publicity = vec![];
    v.note = Text::with_value("第一次走访");
    store.record_visit(id, &v, &[]).unwrap();
    store.replace_note(id, v.id, "x").unwrap();
    store
        .replace_note(id, v.id, "第一次走访：已按时服药")
        .unwrap();
    assert_eq!(
        store.household(id).unwrap().visits[&v.id].note.as_str(),
        "第一次走访：已按时服药"
    );
}

/// The phone's coverage follows the shared rule offline: key groups first, failed attempts
/// with their reason, pending until the catch-up deadline, missed after it, moved households
/// not due; and a store written before the outcome index gets it on its first opening.
#[test]
fn coverage_on_the_phone_follows_the_shared_rule_and_survives_an_upgrade() {
    use qiaomen_protocol::coverage::{CoveragePolicy, CoverageState};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let policy = CoveragePolicy::default();
    let vd = day("2026-11-15");
    let states = |store: &Store, today: &str| -> Vec<(String, CoverageState)> {
        store
            .coverage(&GridId::new("g1"), vd, day(today), &policy)
            .unwrap()
            .into_iter()
            .map(|l| (l.household.door_number, l.due.state))
            .collect()
    };
    {
        let mut store = Store::open(&path, me, options()).unwrap();
        let met = store.create_household(&household("g1", "1")).unwrap();
        let away = store.create_household(&household("g1", "2")).unwrap();
        store.create_household(&household("g1", "3")).unwrap();
        let mut elder = household("g1", "4");
        elder.tags.push(TagSpan {
            group: KeyGroup::ElderlyAlone,
            since: day("2026-01-01"),
            until: None,
        });
        let elder = store.create_household(&elder).unwrap();
        let gone = store.create_household(&household("g1", "5")).unwrap();
        store
            .edit_household(gone, |h| {
                h.status = HouseholdStatus::Moved;
                Ok(())
            })
            .unwrap();
        let mut nobody = visit(&me, "2026-11-15");
        nobody.outcome = VisitOutcome::NobodyHome;
        let demand = Demand {
            id: DemandId::new(),
            raised_on_visit: Some(nobody.id),
            raised_by: me.user,
            raised_at_ms: 1,
            category: NeedCategory::Housing,
            text: "门口路灯坏了".into(),
            urgency: Urgency::Normal,
            status: DemandStatus::Raised,
            history: vec![],
            first_responsible: None,
            source: Some(DemandSource::Visit),
            external_ref: None,
        };
        let mut raising = nobody.clone();
        raising.demands_raised = vec![demand.id];
        store.record_visit(away, &raising, &[demand]).unwrap();
        assert_eq!(store.work_orders(&GridId::new("g1")).unwrap().len(), 1);
        store.record_visit(met, &nobody, &[]).unwrap();
        let mut second = visit(&me, "2026-11-15");
        second.id = VisitId::new();
        store.record_visit(met, &second, &[]).unwrap();
        store
            .record_visit(elder, &visit(&me, "2026-10-30"), &[])
            .unwrap();
        let expected = vec![
            ("4".to_string(), CoverageState::Pending),
            (
                "2".to_string(),
                CoverageState::NotMet(VisitOutcome::NobodyHome),
            ),
            ("3".to_string(), CoverageState::Pending),
            ("1".to_string(), CoverageState::Visited),
        ];
        assert_eq!(states(&store, "2026-11-18"), expected);
        // Any day of the cycle names it; after the catch-up deadline the unvisited are missed.
        let late = store
            .coverage(
                &GridId::new("g1"),
                day("2026-11-22"),
                day("2026-11-22"),
                &policy,
            )
            .unwrap();
        assert_eq!(late[0].due.state, CoverageState::Missed);
        assert_eq!(late[0].due.catch_up_by, day("2026-11-20"));
    }
    // Make the file look like one written before the outcome index, then reopen it.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE case_index; DROP TABLE journal_out; DROP TABLE photos; DROP TABLE visit_outcomes; DROP TABLE task_lists; DROP TABLE task_done; DROP TABLE demand_index;
             ALTER TABLE rejected DROP COLUMN content;
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let mut store = Store::open(&path, me, options()).unwrap();
    assert_eq!(states(&store, "2026-11-18").len(), 4);
    // The demand index was rebuilt too: the grid's open order is still listed.
    assert_eq!(store.work_orders(&GridId::new("g1")).unwrap().len(), 1);
    assert_eq!(
        states(&store, "2026-11-18")[1].1,
        CoverageState::NotMet(VisitOutcome::NobodyHome)
    );
}

fn worker_rights(grid: &str) -> qiaomen_protocol::policy::Rights {
    use qiaomen_protocol::policy::{Grant, Rights, Role};
    Rights {
        grants: vec![Grant {
            grid: grid.into(),
            role: Role::GridWorker,
            from_ms: 0,
            until_ms: None,
        }],
        teams: Default::default(),
        at_ms: 0,
    }
}

fn not_allowed<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
) -> (&'static str, qiaomen_protocol::wire::RejectCode) {
    match r {
        Err(StoreError::NotAllowed { what, code }) => (what.code(), code),
        other => panic!("expected NotAllowed, got {other:?}"),
    }
}

#[test]
fn with_the_servers_rights_the_store_refuses_what_the_server_would_and_stores_nothing() {
    use qiaomen_protocol::wire::RejectCode;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (author(), author());
    let mut sa = Store::open(dir.path().join("a.db"), a, options()).unwrap();
    let mut sb = Store::open(dir.path().join("b.db"), b, options()).unwrap();
    // Without rights (no sync with a server that sends them): nothing refused.
    let foreign = sb.create_household(&household("g2", "1")).unwrap();
    assert!(sb.contains(foreign).unwrap());
    sb.set_rights(Some(&worker_rights("g1"))).unwrap();
    sa.set_rights(Some(&worker_rights("g1"))).unwrap();
    assert_eq!(sb.rights().unwrap(), Some(worker_rights("g1")));

    // A household in a grid not theirs.
    let h = household("g2", "2");
    assert_eq!(
        not_allowed(sb.create_household(&h)),
        ("household", RejectCode::OutOfScope)
    );
    assert!(!sb.contains(h.id).unwrap());

    // A's visit on B's phone: B may add their own, not touch A's, delete none, move nothing.
    let id = sa.create_household(&household("g1", "3")).unwrap();
    let v = visit(&a, "2026-11-15");
    sa.record_visit(id, &v, &[]).unwrap();
    let bytes = sa.document(id).unwrap().save();
    sb.import_document(&bytes).unwrap();
    let pending_b = sb.pending_change_count().unwrap();
    assert_eq!(
        not_allowed(sb.replace_note(id, v.id, "改别人的")),
        ("visits", RejectCode::NotAllowed)
    );
    assert_eq!(
        not_allowed(sb.edit_household(id, |h| {
            h.visits.clear();
            Ok(())
        })),
        ("visits", RejectCode::NotAllowed)
    );
    assert_eq!(
        not_allowed(sb.edit_household(id, |h| {
            h.grid = GridId::new("g2");
            Ok(())
        })),
        ("grid", RejectCode::OutOfScope)
    );
    assert_eq!(sb.pending_change_count().unwrap(), pending_b);
    assert_eq!(
        sb.household(id).unwrap().visits[&v.id].note.as_str(),
        "一切正常"
    );
    sb.record_visit(id, &visit(&b, "2026-11-15"), &[]).unwrap();
    assert_eq!(sb.household(id).unwrap().visits.len(), 2);
    // A fixes their own.
    sa.replace_note(id, v.id, "补记").unwrap();

    // Rights forgotten (an older server): today's behaviour again.
    sb.set_rights(None).unwrap();
    sb.replace_note(id, v.id, "改别人的").unwrap();
}
