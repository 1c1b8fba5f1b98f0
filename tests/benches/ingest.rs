//! The server's write path alone, in one thread: `Ingestor::process_group` (decode, de-dupe,
//! dependency check, apply to the cached document, validate the touched entries, append to
//! the SQLite log, commit with fsync) for uploads of 25 visits, beside bare Automerge applying
//! the same changes to the same documents in memory.
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
    ingest::{Ingestor, Upload},
    storage::SqliteStorage,
};

fn main() {
    let quick = std::env::var_os("QIAOMEN_BENCH_QUICK").is_some();
    let n: u32 = if quick { 100 } else { 2000 };
    let dir = tempfile::tempdir().unwrap();
    let mut ingestor = Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
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
    ingestor.process_group(&[&setup]).unwrap();
    let uploads: Vec<Upload> = visits
        .chunks(25)
        .map(|c| Upload {
            principal: Some(principal.clone()),
            docs: c.to_vec(),
            packing: None,
        })
        .collect();

    let t = Instant::now();
    for u in &uploads {
        let outcome = ingestor.process_group(&[u]).unwrap();
        assert_eq!(outcome[0].accepted as usize, u.docs.len());
    }
    let ours = t.elapsed() / n;

    let t = Instant::now();
    for (doc, v) in bare.iter_mut().zip(&visits) {
        let c = automerge::Change::try_from(v.changes[0].as_slice()).unwrap();
        doc.apply_changes([c]).unwrap();
    }
    let base = t.elapsed() / n;

    println!("| write path, {n} visits in uploads of 25 | µs per visit | visits/s (one thread) |");
    println!("|---|---|---|");
    println!(
        "| Ingestor (checked, applied, logged, fsync per upload) | {} | {:.0} |",
        ours.as_micros(),
        1e6 / ours.as_micros().max(1) as f64
    );
    println!(
        "| bare Automerge apply, in memory | {} | {:.0} |",
        base.as_micros(),
        1e6 / base.as_micros().max(1) as f64
    );
    println!(
        "| ratio | {:.1}× | |",
        ours.as_secs_f64() / base.as_secs_f64()
    );
}
