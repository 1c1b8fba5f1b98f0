//! One conformance suite for every backend of the change log (the pattern of
//! matrix-rust-sdk's `statestore_integration_tests!`): each test is written once against the
//! [`Storage`] trait and run on the embedded SQLite store and on a real PostgreSQL server.
//!
//! PostgreSQL is found through `QIAOMEN_TEST_POSTGRES` (a `postgres://` URL of a database the
//! tests may create schemas in; `.ci/run` starts one). Each test gets a schema of its own.
//! Without the variable the PostgreSQL tests say so and pass on a developer's machine, and
//! fail under CI (`CI` set), so CI never skips them.

use std::collections::HashSet;

use qiaomen_protocol::ids::HouseholdId;
use qiaomen_protocol::wire::WholePass;

use super::{
    HouseholdWrite, MAX_REFUSED_PER_DEVICE, NewChange, PgStorage, RefusedRow, SqliteStorage,
    Storage, WholeFrom, WriteBatch, Written,
};

/// A store under test: every handle opened on it sees the same data, as two writer threads
/// of one server or two servers on one database do.
pub(crate) trait Fixture {
    type S: Storage;
    fn handle(&self) -> Self::S;
}

pub(crate) struct Sqlite(tempfile::TempDir);

impl Fixture for Sqlite {
    type S = SqliteStorage;
    fn handle(&self) -> SqliteStorage {
        SqliteStorage::open(self.0.path()).unwrap()
    }
}

pub(crate) struct Postgres {
    url: String,
    schema: String,
}

impl Fixture for Postgres {
    type S = PgStorage;
    fn handle(&self) -> PgStorage {
        PgStorage::connect_in(&self.url, &self.schema).unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = admin(&self.url, &format!("DROP SCHEMA {} CASCADE", self.schema));
    }
}

/// Runs `sql` on its own connection.
fn admin(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let result = client.batch_execute(sql).await;
        drop(client);
        let _ = task.await;
        result
    })
}

fn sqlite() -> Option<Sqlite> {
    Some(Sqlite(tempfile::tempdir().unwrap()))
}

pub(crate) fn postgres() -> Option<Postgres> {
    let Ok(url) = std::env::var("QIAOMEN_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the PostgreSQL conformance suite: set QIAOMEN_TEST_POSTGRES"
        );
        eprintln!("QIAOMEN_TEST_POSTGRES is not set: the PostgreSQL backend is not tested here");
        return None;
    };
    let schema: String = HouseholdId::new()
        .as_bytes()
        .iter()
        .fold("t_".to_string(), |s, b| s + &format!("{b:02x}"));
    admin(&url, &format!("CREATE SCHEMA {schema}")).expect("PostgreSQL for the tests answers");
    Some(Postgres { url, schema })
}

macro_rules! conformance {
    ($fixture:ident: $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                if let Some(f) = super::$fixture() {
                    super::$test(&f);
                }
            }
        )*
    };
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            conformance!(sqlite: $($test),*);
        }
        mod postgres {
            conformance!(postgres: $($test),*);
        }
    };
}

suite!(
    a_write_is_read_back_by_every_handle,
    the_log_is_read_by_scope_within_a_budget,
    a_household_moved_since_it_was_read_is_not_written,
    a_snapshot_holds_the_log_through_its_row,
    a_move_is_recorded_at_its_row,
    refused_changes_are_kept_once_and_bounded_per_device,
    a_quarantine_lasts_until_released,
    whole_pages_go_through_a_grid_once_at_one_position,
    concurrent_writers_keep_the_log_in_commit_order,
    two_writers_on_one_household_keep_both_edits,
    documents_read_together_are_those_read_one_by_one,
);

fn change(doc: HouseholdId, n: u8) -> NewChange {
    NewChange {
        doc,
        hash: [n; 32],
        bytes: vec![n; 100],
        device: Some([7; 16]),
        user: Some([8; 16]),
        clock_ok: Some(true),
    }
}

fn write_of(id: HouseholdId, head: u64, rows: Vec<NewChange>, grid: &str) -> HouseholdWrite {
    HouseholdWrite {
        id,
        head,
        rows,
        log_grid: grid.into(),
        grid: grid.into(),
        moved_from: None,
        snapshot: None,
    }
}

fn head(s: &impl Storage, id: HouseholdId) -> u64 {
    s.load_for_write(id).unwrap().map_or(0, |d| d.head.seq)
}

/// Appends rows of one household in a commit of their own.
fn append(s: &impl Storage, rows: Vec<NewChange>, grid: &str) {
    let id = rows[0].doc;
    let batch = WriteBatch {
        households: vec![write_of(id, head(s, id), rows, grid)],
        refused: Vec::new(),
    };
    assert!(matches!(s.write(&batch).unwrap(), Written::Committed(_)));
}

fn refusal(doc: HouseholdId, n: u16, device: u8, grid: &str) -> RefusedRow {
    let mut hash = [0xee; 32];
    hash[..2].copy_from_slice(&n.to_be_bytes());
    hash[2] = device;
    RefusedRow {
        doc,
        hash,
        grid: grid.into(),
        device: Some([device; 16]),
        user: Some([device; 16]),
        code: "schema_violation".into(),
        at_ms: i64::from(n),
        bytes: vec![1, 2, 3],
    }
}

fn a_write_is_read_back_by_every_handle(f: &impl Fixture) {
    let s = f.handle();
    let (a, b) = (HouseholdId::new(), HouseholdId::new());
    assert_eq!(s.load_doc(a).unwrap(), None);
    assert!(s.load_for_write(a).unwrap().is_none());
    assert_eq!(s.max_seq().unwrap(), 0);
    let written = s
        .write(&WriteBatch {
            households: vec![
                write_of(a, 0, vec![change(a, 1), change(a, 2)], "g1"),
                write_of(b, 0, vec![change(b, 3)], "g2"),
            ],
            refused: Vec::new(),
        })
        .unwrap();
    let Written::Committed(heads) = written else {
        panic!("two new households are written: {written:?}");
    };
    assert_eq!(heads.len(), 2);
    assert_eq!(
        (heads[0].0, heads[0].1.seq, heads[0].1.since_snapshot),
        (a, 2, 2)
    );
    assert_eq!((heads[1].0, heads[1].1.seq), (b, 3));

    // Another handle (another writer, another server) reads what one wrote.
    let r = f.handle();
    let mut both = vec![1u8; 100];
    both.extend([2u8; 100]);
    assert_eq!(r.load_doc(a).unwrap(), Some(both.clone()));
    let stored = r.load_for_write(a).unwrap().unwrap();
    assert_eq!((stored.bytes, stored.head.seq), (both, 2));
    assert!(r.has_change(&[2; 32]).unwrap());
    assert!(!r.has_change(&[9; 32]).unwrap());
    assert_eq!(r.hashes_with_prefix(a, &[2, 2]).unwrap(), vec![[2; 32]]);
    assert!(
        r.hashes_with_prefix(b, &[2, 2]).unwrap().is_empty(),
        "of its household only"
    );
    assert_eq!(r.max_seq().unwrap(), 3);
    assert_eq!(r.hash_at(1).unwrap(), Some(vec![1; 32]));
    assert_eq!(r.hash_at(4).unwrap(), None);
    assert_eq!(r.doc_count().unwrap(), 2);
    assert_eq!(r.doc_grid(b).unwrap().as_deref(), Some("g2"));
    assert_eq!(r.doc_grids(a).unwrap(), vec!["g1".to_string()]);
    let log: Vec<(u64, Vec<u8>)> = r
        .doc_log(a, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|c| (c.seq, c.hash))
        .collect();
    assert_eq!(log, vec![(1, vec![1; 32]), (2, vec![2; 32])]);
    assert_eq!(r.doc_log(a, 1).unwrap().len(), 1, "up to a position");
    let mut counts = r.grid_counts().unwrap();
    counts.sort();
    assert_eq!(counts, vec![("g1".into(), 1), ("g2".into(), 1)]);
    let docs = r.grid_docs("g2").unwrap();
    assert_eq!(docs, vec![(b, vec![3; 100])]);
    let timeline = r.doc_timeline(a).unwrap().unwrap();
    assert!(timeline.moves.is_empty());
    assert!(timeline.arrived_ms > 0);
    assert_eq!(
        timeline.created_ms, timeline.arrived_ms,
        "not a change: arrival stands in"
    );
    assert!(r.doc_timeline(HouseholdId::new()).unwrap().is_none());
}

fn the_log_is_read_by_scope_within_a_budget(f: &impl Fixture) {
    let s = f.handle();
    let (a, b) = (HouseholdId::new(), HouseholdId::new());
    for n in 1..=6 {
        append(
            &s,
            vec![change(if n % 2 == 0 { a } else { b }, n)],
            if n % 2 == 0 { "g1" } else { "g2" },
        );
    }
    let all = s.log_since(0, usize::MAX, &[]).unwrap();
    assert_eq!(all.changes.len(), 6);
    assert_eq!((all.cursor, all.more), (6, false));
    let g1 = ["g1".to_string()];
    let mine = s.log_since(0, usize::MAX, &g1).unwrap();
    assert_eq!(
        mine.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
    assert!(mine.changes.iter().all(|c| c.doc == a));
    assert_eq!(mine.cursor, 6, "the cursor passes other grids' rows too");
    // 250 bytes: two changes of 100 bytes, then the rest from where it stopped.
    let first = s.log_since(0, 250, &[]).unwrap();
    assert_eq!(first.changes.len(), 2);
    assert!(first.more);
    assert_eq!(first.cursor, 2);
    let rest = s.log_since(first.cursor, usize::MAX, &[]).unwrap();
    assert_eq!(
        rest.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    // Always one change, however small the budget.
    assert_eq!(s.log_since(0, 0, &[]).unwrap().changes.len(), 1);
    let none = s.log_since(6, usize::MAX, &[]).unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.cursor, 6);
}

fn a_household_moved_since_it_was_read_is_not_written(f: &impl Fixture) {
    let (one, two) = (f.handle(), f.handle());
    let (h, other, fresh) = (HouseholdId::new(), HouseholdId::new(), HouseholdId::new());
    append(&one, vec![change(h, 1)], "g1");
    // Both read the household at its first row; the first to commit wins.
    let (seen_one, seen_two) = (head(&one, h), head(&two, h));
    assert_eq!((seen_one, seen_two), (1, 1));
    let won = one
        .write(&WriteBatch {
            households: vec![write_of(h, seen_one, vec![change(h, 2)], "g1")],
            refused: Vec::new(),
        })
        .unwrap();
    assert!(matches!(won, Written::Committed(_)));
    let lost = two
        .write(&WriteBatch {
            households: vec![
                write_of(other, 0, vec![change(other, 4)], "g1"),
                write_of(h, seen_two, vec![change(h, 3)], "g1"),
            ],
            refused: vec![refusal(h, 1, 5, "g1")],
        })
        .unwrap();
    assert_eq!(lost, Written::Moved(vec![h]));
    // Nothing of the losing write is stored: not its other household, not its refusals.
    assert!(!one.has_change(&[3; 32]).unwrap());
    assert!(!one.has_change(&[4; 32]).unwrap());
    assert!(one.refused(None, 10).unwrap().is_empty());
    assert_eq!(one.max_seq().unwrap(), 2);
    // Read again, it goes through.
    let again = two
        .write(&WriteBatch {
            households: vec![write_of(h, head(&two, h), vec![change(h, 3)], "g1")],
            refused: Vec::new(),
        })
        .unwrap();
    assert!(matches!(again, Written::Committed(_)));
    // Two writers creating one household: the second finds it created.
    let first = one
        .write(&WriteBatch {
            households: vec![write_of(fresh, 0, vec![change(fresh, 5)], "g1")],
            refused: Vec::new(),
        })
        .unwrap();
    assert!(matches!(first, Written::Committed(_)));
    let second = two
        .write(&WriteBatch {
            households: vec![write_of(fresh, 0, vec![change(fresh, 6)], "g1")],
            refused: Vec::new(),
        })
        .unwrap();
    assert_eq!(second, Written::Moved(vec![fresh]));
    // A household's later writes in one batch build on its first: only the first is checked.
    let h_now = head(&one, h);
    let chained = one
        .write(&WriteBatch {
            households: vec![
                write_of(h, h_now, vec![change(h, 7)], "g1"),
                write_of(h, h_now, vec![change(h, 8)], "g1"),
            ],
            refused: Vec::new(),
        })
        .unwrap();
    let Written::Committed(heads) = chained else {
        panic!("one household twice in a batch: {chained:?}");
    };
    assert_eq!(heads.len(), 1, "each household's head once");
    assert_eq!(heads[0].1.seq, one.max_seq().unwrap());
}

fn a_snapshot_holds_the_log_through_its_row(f: &impl Fixture) {
    let s = f.handle();
    let h = HouseholdId::new();
    append(&s, vec![change(h, 1)], "g1");
    let mut w = write_of(h, 1, vec![change(h, 2), change(h, 3)], "g1");
    w.snapshot = Some(b"SNAPSHOT".to_vec());
    let Written::Committed(heads) = s
        .write(&WriteBatch {
            households: vec![w],
            refused: Vec::new(),
        })
        .unwrap()
    else {
        panic!("written");
    };
    assert_eq!((heads[0].1.seq, heads[0].1.since_snapshot), (3, 0));
    assert_eq!(s.load_doc(h).unwrap(), Some(b"SNAPSHOT".to_vec()));
    append(&s, vec![change(h, 4)], "g1");
    let mut after = b"SNAPSHOT".to_vec();
    after.extend([4u8; 100]);
    let stored = f.handle().load_for_write(h).unwrap().unwrap();
    assert_eq!(
        stored.bytes, after,
        "the snapshot, then what was logged after it"
    );
    assert_eq!((stored.head.seq, stored.head.since_snapshot), (4, 1));
    // The log itself is whole.
    assert_eq!(s.doc_log(h, u64::MAX).unwrap().len(), 4);
}

fn a_move_is_recorded_at_its_row(f: &impl Fixture) {
    let s = f.handle();
    let h = HouseholdId::new();
    append(&s, vec![change(h, 1)], "g1");
    let before = s.max_seq().unwrap();
    let w = HouseholdWrite {
        id: h,
        head: head(&s, h),
        rows: vec![change(h, 2)],
        log_grid: "g1".into(),
        grid: "g2".into(),
        moved_from: Some("g1".into()),
        snapshot: None,
    };
    assert!(matches!(
        s.write(&WriteBatch {
            households: vec![w],
            refused: Vec::new(),
        })
        .unwrap(),
        Written::Committed(_)
    ));
    let end = s.max_seq().unwrap();
    assert_eq!(s.doc_grid(h).unwrap().as_deref(), Some("g2"));
    let mut grids = s.doc_grids(h).unwrap();
    grids.sort();
    assert_eq!(grids, vec!["g1".to_string(), "g2".to_string()]);
    let g2 = ["g2".to_string()];
    assert_eq!(s.moved_into(before, end, &g2).unwrap(), vec![h]);
    assert!(
        s.moved_into(end, end, &g2).unwrap().is_empty(),
        "after the move"
    );
    assert!(
        s.moved_into(before, end, &["g1".to_string()])
            .unwrap()
            .is_empty()
    );
    // The moving row is logged under the grid it leaves, so that grid's phones learn of it.
    let left = s
        .log_since(before, usize::MAX, &["g1".to_string()])
        .unwrap();
    assert_eq!(left.changes.len(), 1);
    let timeline = s.doc_timeline(h).unwrap().unwrap();
    assert_eq!(timeline.moves.len(), 1);
    assert_eq!(
        (timeline.moves[0].0.as_str(), timeline.moves[0].1.as_str()),
        ("g1", "g2")
    );
    assert_eq!(s.grid_counts().unwrap(), vec![("g2".to_string(), 1)]);
}

fn refused_changes_are_kept_once_and_bounded_per_device(f: &impl Fixture) {
    let s = f.handle();
    let h = HouseholdId::new();
    let keep = |rows: Vec<RefusedRow>| {
        assert!(matches!(
            s.write(&WriteBatch {
                households: Vec::new(),
                refused: rows,
            })
            .unwrap(),
            Written::Committed(_)
        ));
    };
    keep(vec![refusal(h, 1, 1, "g1"), refusal(h, 2, 2, "g2")]);
    keep(vec![refusal(h, 1, 1, "g1")]);
    let all = s.refused(None, 10).unwrap();
    assert_eq!(all.len(), 2, "a change refused again is kept once");
    assert_eq!(all[0], refusal(h, 2, 2, "g2"), "newest first, as stored");
    let g1 = s.refused(Some(&["g1".to_string()]), 10).unwrap();
    assert_eq!(g1, vec![refusal(h, 1, 1, "g1")]);
    assert_eq!(s.refused(None, 1).unwrap().len(), 1);
    // One device beyond its bound: its oldest go, another device's stay.
    let n = MAX_REFUSED_PER_DEVICE as u16;
    keep((10..n + 15).map(|i| refusal(h, i, 3, "g1")).collect());
    let of_three: Vec<RefusedRow> = s
        .refused(None, 10_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.device == Some([3; 16]))
        .collect();
    assert_eq!(of_three.len(), MAX_REFUSED_PER_DEVICE as usize);
    assert_eq!(of_three.last().unwrap().at_ms, 15, "the oldest five went");
    assert_eq!(s.refused(Some(&["g2".to_string()]), 10).unwrap().len(), 1);
}

fn a_quarantine_lasts_until_released(f: &impl Fixture) {
    let (s, r) = (f.handle(), f.handle());
    let (a, b) = (HouseholdId::new(), HouseholdId::new());
    assert!(!r.is_quarantined(a).unwrap());
    s.quarantine(a, "does_not_load").unwrap();
    s.quarantine(a, "panicked").unwrap();
    s.quarantine(b, "panicked").unwrap();
    assert!(r.is_quarantined(a).unwrap());
    let q = r.quarantined().unwrap();
    assert_eq!(q.len(), 2);
    let reason_of_a = q.iter().find(|x| x.doc == a).unwrap().reason.clone();
    assert_eq!(reason_of_a, "does_not_load", "the first reason is kept");
    assert!(r.release(a).unwrap());
    assert!(!r.release(a).unwrap());
    assert!(!s.is_quarantined(a).unwrap());
    assert!(s.is_quarantined(b).unwrap());
}

fn whole_pages_go_through_a_grid_once_at_one_position(f: &impl Fixture) {
    let s = f.handle();
    let mut ids: Vec<HouseholdId> = (0..3).map(|_| HouseholdId::new()).collect();
    ids.sort();
    let (elsewhere, later) = (HouseholdId::new(), HouseholdId::new());
    append(&s, vec![change(ids[0], 1), change(ids[0], 2)], "g1");
    append(&s, vec![change(ids[1], 3)], "g1");
    append(&s, vec![change(elsewhere, 4)], "g2");
    append(&s, vec![change(ids[2], 5)], "g1");
    let at = s.max_seq().unwrap();
    append(&s, vec![change(later, 6)], "g1");
    append(&s, vec![change(ids[0], 7)], "g1");
    let grids = vec!["g1".to_string()];
    for pass in [WholePass::All, WholePass::Rest, WholePass::Needed] {
        let mut seen = Vec::new();
        let mut from = WholeFrom {
            pass,
            after: None,
            day: Some("2026-11-30".parse().unwrap()),
        };
        for pages in 0.. {
            assert!(pages < 10, "the pages end");
            let page = s.whole_page(&grids, from, at, 150).unwrap();
            for (id, changes) in &page.docs {
                assert!(changes.iter().all(|c| c.seq <= at));
                seen.push((*id, changes.len()));
            }
            if page.done {
                break;
            }
            let (pass, after) = page.last.unwrap();
            from.pass = pass;
            from.after = Some(after).filter(|a| !a.0.is_nil());
        }
        let mut expected = vec![(ids[0], 2), (ids[1], 1), (ids[2], 1)];
        expected.sort();
        // None is most needed (the read model holds nothing): every pass sends all, once.
        assert_eq!(
            seen, expected,
            "g1's households, once each, in id order ({pass:?})"
        );
    }
}

fn concurrent_writers_keep_the_log_in_commit_order(f: &(impl Fixture + Sync)) {
    const WRITERS: usize = 4;
    const BATCHES: usize = 30;
    let total = WRITERS * BATCHES * 2;
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let done = &done;
        // A phone tailing the log while they write: its cursor must never pass a change that
        // commits later.
        let reader = scope.spawn(move || {
            let r = f.handle();
            let g1 = ["g1".to_string()];
            let mut cursor = 0;
            let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
            loop {
                // Whether the writers had all finished before this read began.
                let last = done.load(std::sync::atomic::Ordering::Acquire);
                let slice = r.log_since(cursor, 1_000, &g1).unwrap();
                let more = slice.more;
                seen.extend(slice.changes.into_iter().map(|c| (c.seq, c.hash)));
                cursor = slice.cursor;
                if last && !more {
                    return seen;
                }
            }
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                scope.spawn(move || {
                    let s = f.handle();
                    for b in 0..BATCHES {
                        let id = HouseholdId::new();
                        let mut rows = vec![change(id, 0), change(id, 0)];
                        for (k, r) in rows.iter_mut().enumerate() {
                            r.hash[0] = w as u8;
                            r.hash[1] = b as u8;
                            r.hash[2] = k as u8;
                        }
                        let batch = WriteBatch {
                            households: vec![write_of(id, 0, rows, "g1")],
                            refused: Vec::new(),
                        };
                        assert!(matches!(s.write(&batch).unwrap(), Written::Committed(_)));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        reader.join().unwrap()
    });
    let hashes: HashSet<&Vec<u8>> = seen.iter().map(|(_, h)| h).collect();
    assert_eq!(hashes.len(), total, "every change read, none missed");
    assert_eq!(seen.len(), total, "and none twice");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in log order");
}

fn two_writers_on_one_household_keep_both_edits(f: &impl Fixture) {
    use crate::ingest::{IngestOptions, Ingestor, tests::upload};
    use qiaomen_protocol::{
        doc::{Author, HouseholdDoc},
        ids::{DeviceId, GridId, UserId},
        schema::Household,
    };
    let author = || Author {
        user: UserId::new(),
        device: DeviceId::new(),
    };
    // Snapshots after every row: a stale cache would write a snapshot that hides a change.
    let options = IngestOptions {
        snapshot_after: 1,
        ..Default::default()
    };
    let mut one = Ingestor::new(f.handle(), options.clone());
    let mut two = Ingestor::new(f.handle(), options);
    let id = HouseholdId::new();
    let mut phone = HouseholdDoc::create(
        &Household::new(id, GridId::new("g7"), "x", "1"),
        &author(),
        1,
    )
    .unwrap();
    let creation = phone.changes_since(&[]).remove(0);
    assert_eq!(
        one.process_group(&[&upload(id, vec![creation.clone()])])
            .unwrap()[0]
            .accepted,
        1
    );
    // The second writer reads (and caches) the household: the creation again is a duplicate.
    assert_eq!(
        two.process_group(&[&upload(id, vec![creation])]).unwrap()[0].accepted,
        1
    );
    // Two phones edit it apart (each with its own actor); each edit reaches another writer.
    let mut other = HouseholdDoc::load(&phone.save()).unwrap();
    phone.set_actor(qiaomen_protocol::doc::actor_for(DeviceId::new()));
    other.set_actor(qiaomen_protocol::doc::actor_for(DeviceId::new()));
    let edit = |doc: &mut HouseholdDoc, door: &str, t: i64| {
        let (_, hash) = doc
            .edit(&author(), t, |h| {
                h.door_number = door.into();
                Ok(())
            })
            .unwrap();
        doc.change_bytes(&hash.unwrap()).unwrap()
    };
    let first = edit(&mut phone, "2", 10);
    let second = edit(&mut other, "3", 20);
    let a = one
        .process_group(&[&upload(id, vec![first.clone()])])
        .unwrap();
    assert_eq!((a[0].accepted, a[0].rejected.len()), (1, 0));
    // The second writer's cache does not hold the first edit: its write finds the household
    // moved, reads it again, checks again, and stores its edit on top.
    let b = two
        .process_group(&[&upload(id, vec![second.clone()])])
        .unwrap();
    assert_eq!(
        (b[0].accepted, b[0].rejected.len()),
        (1, 0),
        "{:?}",
        b[0].rejected
    );
    let mut stored = HouseholdDoc::load(&f.handle().load_doc(id).unwrap().unwrap()).unwrap();
    for bytes in [&first, &second] {
        let hash = automerge::Change::try_from(bytes.as_slice())
            .unwrap()
            .hash();
        assert!(
            stored.has_change(&hash),
            "both edits are in the stored household"
        );
    }
    assert_eq!(f.handle().doc_log(id, u64::MAX).unwrap().len(), 3);
    // The first phone, which holds its own edit, builds on it; the first writer logs that,
    // and a third phone's edit on top of it reaches the second writer, whose cached document
    // lacks it: the writer finds it in the log and checks on the household read anew (not
    // `missing_dependencies`).
    let third = edit(&mut phone, "4", 30);
    let c = one
        .process_group(&[&upload(id, vec![third.clone()])])
        .unwrap();
    assert_eq!((c[0].accepted, c[0].rejected.len()), (1, 0));
    let mut later = HouseholdDoc::load(&phone.save()).unwrap();
    later.set_actor(qiaomen_protocol::doc::actor_for(DeviceId::new()));
    let fourth = edit(&mut later, "5", 40);
    let d = two.process_group(&[&upload(id, vec![fourth])]).unwrap();
    assert_eq!(
        (d[0].accepted, d[0].rejected.len()),
        (1, 0),
        "a change built on what another writer logged is taken: {:?}",
        d[0].rejected.iter().map(|r| r.code).collect::<Vec<_>>()
    );
    assert_eq!(f.handle().doc_log(id, u64::MAX).unwrap().len(), 5);
}

/// [`Storage::load_docs`] and [`Storage::doc_timelines`] give, in the order asked, what
/// `load_doc` and `doc_timeline` give for each: a snapshot and the rows after it, a moved
/// household's moves, and `None` for a household not stored.
fn documents_read_together_are_those_read_one_by_one(f: &impl Fixture) {
    let s = f.handle();
    let (plain, snapshotted, moved, absent) = (
        HouseholdId::new(),
        HouseholdId::new(),
        HouseholdId::new(),
        HouseholdId::new(),
    );
    append(&s, vec![change(plain, 1), change(plain, 2)], "g1");
    append(&s, vec![change(snapshotted, 3)], "g1");
    let mut w = write_of(
        snapshotted,
        head(&s, snapshotted),
        vec![change(snapshotted, 4)],
        "g1",
    );
    w.snapshot = Some(b"SNAPSHOT".to_vec());
    assert!(matches!(
        s.write(&WriteBatch {
            households: vec![w],
            refused: Vec::new(),
        })
        .unwrap(),
        Written::Committed(_)
    ));
    append(&s, vec![change(snapshotted, 5)], "g1");
    append(&s, vec![change(moved, 6)], "g1");
    let mut w = write_of(moved, head(&s, moved), vec![change(moved, 7)], "g2");
    w.log_grid = "g1".into();
    w.moved_from = Some("g1".into());
    assert!(matches!(
        s.write(&WriteBatch {
            households: vec![w],
            refused: Vec::new(),
        })
        .unwrap(),
        Written::Committed(_)
    ));
    let ids = [moved, absent, snapshotted, plain];
    let one_by_one: Vec<_> = ids.iter().map(|id| s.load_doc(*id).unwrap()).collect();
    assert_eq!(f.handle().load_docs(&ids).unwrap(), one_by_one);
    assert_eq!(one_by_one[1], None);
    assert!(one_by_one[2].as_ref().unwrap().starts_with(b"SNAPSHOT"));
    let timelines: Vec<_> = ids.iter().map(|id| s.doc_timeline(*id).unwrap()).collect();
    assert_eq!(f.handle().doc_timelines(&ids).unwrap(), timelines);
    assert_eq!(timelines[0].as_ref().unwrap().moves.len(), 1);
    assert!(f.handle().load_docs(&[]).unwrap().is_empty());
}

/// A PostgreSQL database migrated by a newer server is refused when a server opens it, with
/// the formats named, and left as it was (the embedded store's counterpart is
/// `tests/tests/ops.rs::a_store_of_a_newer_format_is_refused_at_start`).
#[test]
fn a_postgresql_schema_of_a_newer_server_is_refused_and_left_as_it_was() {
    let Some(f) = postgres() else { return };
    drop(f.handle());
    let max = super::postgres::MIGRATIONS_LEN;
    admin(
        &f.url,
        &format!(
            "UPDATE {s}.qiaomen_schema SET version = version + 1;
             CREATE TABLE {s}.from_a_newer_server (x INTEGER);",
            s = f.schema
        ),
    )
    .unwrap();
    match PgStorage::connect_in(&f.url, &f.schema) {
        Err(e @ super::StorageError::TooNew { .. }) => {
            let message = e.to_string();
            assert!(message.contains("newer server"), "{message}");
            assert!(
                message.contains(&format!("store format {}", max + 1)),
                "{message}"
            );
            assert!(message.contains(&format!("reads up to {max}")), "{message}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    // Nothing was migrated or dropped: the newer server's table and version stand.
    admin(
        &f.url,
        &format!(
            "DO $$ BEGIN
               IF (SELECT version FROM {s}.qiaomen_schema) <> {v} THEN
                 RAISE EXCEPTION 'the version moved';
               END IF;
             END $$;
             SELECT x FROM {s}.from_a_newer_server;",
            s = f.schema,
            v = max + 1
        ),
    )
    .expect("the newer schema is as it was");
}
