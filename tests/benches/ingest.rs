//! The server's write path alone, in one thread: `Ingestor::process_group` (decode, de-dupe,
//! dependency check, apply to the cached document, validate the touched entries, append to
//! the SQLite log, commit with fsync) for uploads of 25 visits, beside bare Automerge applying
//! the same changes to the same documents in memory.
//!
//! The same on PostgreSQL when `QIAOMEN_BENCH_POSTGRES` (or `QIAOMEN_TEST_POSTGRES`) names a
//! database (`bash .ci/postgres.sh` starts one): one writer, and two writers on handles of
//! their own (as two servers on one database), each on its own households, beside SQLite's one
//! and two writers (two is the server's default), in one run.
//!
//! Then the read model ([`Index::refresh`]) catching up with each backend's log of the
//! one-writer run from nothing: changes and households taken in per second.
//!
//! Run: `cargo bench -p qiaomen-tests --bench ingest`

use std::time::Instant;

use qiaomen_protocol::policy::Rights;
use qiaomen_protocol::{
    doc::{Author, HouseholdDoc},
    ids::*,
    schema::*,
    wire::DocChanges,
};
use qiaomen_server::{
    access::{Grant, Role, Scope, policy::Principal},
    index::{Index, Workflow},
    ingest::{Ingestor, Upload},
    storage::{PgStorage, SqliteStorage, Storage},
};

/// The read model brought up to the log's end from nothing: (changes/s, households/s).
fn catch_up(mut index: Index, log: &dyn Storage) -> (f64, f64) {
    let changes = log.max_seq().unwrap() as f64;
    let t = Instant::now();
    let households = index.refresh().unwrap() as f64;
    let s = t.elapsed().as_secs_f64();
    (changes / s, households / s)
}

/// Visits of `n` households of grid `g`, by one worker: their creations (one upload), the
/// visits in uploads of 25, and bare Automerge documents holding the creations.
struct Work {
    setup: Upload,
    uploads: Vec<Upload>,
    visits: Vec<DocChanges>,
    bare: Vec<automerge::AutoCommit>,
}

fn work(n: u32) -> Work {
    let a = Author {
        user: UserId::new(),
        device: DeviceId::new(),
    };
    let (mut creates, mut visits, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = HouseholdId::new();
        let mut d = HouseholdDoc::create(
            &Household::new(id, GridId::new("g"), "x", format!("{i}")),
            &a,
            0,
        )
        .unwrap();
        let created = d.changes_since(&[]);
        bare.push(automerge::AutoCommit::load(&created.concat()).unwrap());
        creates.push(DocChanges {
            id,
            changes: created
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            whole: None,
        });
        let v = qiaomen_tests::sample_visit(
            &a,
            "2026-11-15".parse().unwrap(),
            "老人独居，身体状况一般，血压偏高，近期按时服药。家中电线有老化迹象。",
        );
        let h = d.add_visit(&a, 1, &v, &[]).unwrap();
        visits.push(DocChanges {
            id,
            changes: vec![serde_bytes::ByteBuf::from(d.change_bytes(&h).unwrap())],
            whole: None,
        });
    }
    // The real access path: an authenticated worker of grid `g`.
    let principal = std::sync::Arc::new(Principal {
        user: a.user,
        device: a.device,
        scope: Scope {
            rights: Rights {
                grants: vec![Grant {
                    grid: "g".into(),
                    role: Role::GridWorker,
                    from_ms: 0,
                    until_ms: None,
                }],
                teams: Default::default(),
                at_ms: i64::MAX / 2,
            },
            roles: [Role::GridWorker].into(),
            read: ["g".to_string()].into(),
        },
        server_built: false,
        demand_ids: Some(Default::default()),
        clock_ok: Some(true),
    });
    let setup = Upload {
        principal: Some(principal.clone()),
        docs: creates,
        packing: None,
    };
    let uploads: Vec<Upload> = visits
        .chunks(25)
        .map(|c| Upload {
            principal: Some(principal.clone()),
            docs: c.to_vec(),
            packing: None,
        })
        .collect();

    Work {
        setup,
        uploads,
        visits,
        bare,
    }
}

/// µs per visit of `writers` writers, each on its own handle and its own households, all at
/// once (the households are created first, untimed), and what the visits added to the store
/// (`size`: its bytes on disk), in bytes per visit.
fn ingest<S: Storage>(
    n: u32,
    writers: usize,
    open: impl Fn() -> S,
    size: impl Fn() -> u64,
) -> (f64, f64) {
    let works: Vec<Work> = (0..writers).map(|_| work(n / writers as u32)).collect();
    let mut ingestors: Vec<Ingestor<S>> = (0..writers)
        .map(|_| Ingestor::new(open(), Default::default()))
        .collect();
    for (i, w) in ingestors.iter_mut().zip(&works) {
        i.process_group(&[&w.setup]).unwrap();
    }
    let before = size();
    let t = Instant::now();
    std::thread::scope(|scope| {
        for (mut ingestor, w) in ingestors.into_iter().zip(&works) {
            scope.spawn(move || {
                for u in &w.uploads {
                    let outcome = ingestor.process_group(&[u]).unwrap();
                    assert_eq!(outcome[0].accepted as usize, u.docs.len());
                }
            });
        }
    });
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let grown = size().saturating_sub(before) as f64 / f64::from(n);
    (us, grown)
}

/// The bytes of an SQLite store, its write-ahead log folded in first.
fn sqlite_bytes(dir: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(dir.join("qiaomen.db")).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    conn.query_row(
        "SELECT (page_count - freelist_count) * page_size
           FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// The bytes of the tables (with their indexes and TOAST) of `schema`.
fn postgres_bytes(url: &str, schema: &str) -> u64 {
    let schema = schema.to_string();
    with_postgres(url, async move |client| {
        let row = client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[&schema],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) as u64
    })
}

/// Runs `f` on a connection of its own to the database at `url`.
fn with_postgres<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let out = f(&client).await;
        drop(client);
        let _ = task.await;
        out
    })
}

fn main() {
    let quick = std::env::var_os("QIAOMEN_BENCH_QUICK").is_some();
    let n: u32 = if quick { 100 } else { 2000 };
    let postgres = std::env::var("QIAOMEN_BENCH_POSTGRES")
        .or_else(|_| std::env::var("QIAOMEN_TEST_POSTGRES"))
        .ok();
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let mut catch_ups: Vec<(&str, (f64, f64))> = Vec::new();
    for writers in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (us, bytes) = ingest(
            n,
            writers,
            || SqliteStorage::open(dir.path()).unwrap(),
            || sqlite_bytes(dir.path()),
        );
        rows.push((
            format!("SQLite, {writers} writer(s) of one server"),
            us,
            bytes,
        ));
        if writers == 1 {
            let log = SqliteStorage::open(dir.path()).unwrap();
            let index = Index::open(dir.path(), Workflow::default()).unwrap();
            catch_ups.push(("SQLite", catch_up(index, &log)));
        }
    }
    if let Some(url) = &postgres {
        for writers in [1, 2] {
            // The bench's own schema, empty.
            let schema = format!("bench_{}", std::process::id());
            reset_schema(url, &schema);
            let with_path = qiaomen_tests::in_schema(url, &schema);
            let label = if writers == 1 {
                "PostgreSQL, 1 writer".to_string()
            } else {
                format!(
                    "PostgreSQL, {writers} writers on handles of their own (as {writers} servers)"
                )
            };
            let (us, bytes) = ingest(
                n,
                writers,
                || PgStorage::connect(&with_path, 2).unwrap(),
                || postgres_bytes(url, &schema),
            );
            rows.push((label, us, bytes));
            if writers == 1 {
                let log = PgStorage::connect(&with_path, 2).unwrap();
                let index = Index::on_postgres(&log, Workflow::default());
                catch_ups.push(("PostgreSQL", catch_up(index, &log)));
            }
            reset_schema(url, &schema);
        }
    } else {
        eprintln!("QIAOMEN_BENCH_POSTGRES is not set: SQLite only");
    }

    let Work {
        visits, mut bare, ..
    } = work(n);
    let t = Instant::now();
    for (doc, v) in bare.iter_mut().zip(&visits) {
        let c = automerge::Change::try_from(v.changes[0].as_slice()).unwrap();
        doc.apply_changes([c]).unwrap();
    }
    let base = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);

    println!(
        "| write path, {n} visits in uploads of 25 (checked, applied, logged, durable commit per upload) | µs per visit | visits/s | store bytes per visit |"
    );
    println!("|---|---|---|---|");
    for (label, us, bytes) in &rows {
        println!("| {label} | {us:.0} | {:.0} | {bytes:.0} |", 1e6 / us);
    }
    println!(
        "| bare Automerge apply, in memory, one thread | {base:.0} | {:.0} | |",
        1e6 / base
    );
    println!();
    println!(
        "| read model catching up with the one-writer log from nothing ({n} households, {} changes) | changes/s | household re-reads/s |",
        2 * n
    );
    println!("|---|---|---|");
    for (label, (changes, households)) in &catch_ups {
        println!("| {label} | {changes:.0} | {households:.0} |");
    }
}

/// Drops and creates `schema` in the database at `url`.
fn reset_schema(url: &str, schema: &str) {
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};");
    with_postgres(url, async move |client| {
        client.batch_execute(&sql).await.unwrap()
    });
}
