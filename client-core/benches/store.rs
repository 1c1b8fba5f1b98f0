//! Device-store benchmark: what a phone pays to record a visit durably, open its store, load
//! a long-lived household and compute a roster, with bare Automerge beside each so the
//! store's overhead shows as a ratio.
//!
//! Run: `cargo bench -p qiaomen-client-core --bench store` (prints a Markdown table).
//! `QIAOMEN_BENCH_QUICK=1` shrinks the sample counts for a smoke run.

use std::time::{Duration, Instant};

use automerge::{AutoCommit, ROOT, ReadDoc, transaction::CommitOptions};
use autosurgeon::Text;
use qiaomen_client_core::{Durability, Store, StoreKey, StoreOptions};
use qiaomen_protocol::{
    calendar::{Day, visit_days_of_month},
    doc::{Author, HouseholdDoc},
    ids::*,
    schema::*,
};

const NOTE: &str = "老人独居，身体状况一般，血压偏高，近期按时服药。家中电线有老化迹象，已提醒注意用电安全并联系村电工上门检查。\
老人反映冬季取暖困难，希望申请取暖补贴；子女在外务工，每周电话联系一次。已宣传防诈骗知识和医保缴费政策，老人表示理解。\
下次走访时需核实补贴申请进度。";

fn author() -> Author {
    Author {
        user: UserId::new(),
        device: DeviceId::new(),
    }
}

fn visit_days(n: usize) -> Vec<Day> {
    (2022..2040)
        .flat_map(|y| (1..=12u8).flat_map(move |m| visit_days_of_month(y, m).unwrap()))
        .take(n)
        .collect()
}

fn visit(a: &Author, day: Day) -> (Visit, Vec<Demand>) {
    let demand = Demand {
        id: DemandId::new(),
        raised_on_visit: None,
        raised_by: a.user,
        raised_at_ms: 1_763_000_000_000,
        category: NeedCategory::ElderlyCare,
        text: "申请冬季取暖补贴".into(),
        urgency: Urgency::Normal,
        status: DemandStatus::Raised,
        history: vec![],
        first_responsible: None,
        source: None,
        external_ref: None,
    };
    let mut v = Visit {
        id: VisitId::new(),
        visit_day: day,
        worker: a.user,
        device: a.device,
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_900_000),
        gps: Some(Gps {
            lat: 34.7466,
            lon: 113.6253,
            accuracy_m: Some(6.0),
        }),
        outcome: VisitOutcome::Met,
        people_met: vec![MemberId::new()],
        needs: vec![
            Need {
                category: NeedCategory::HealthCare,
                detail: "血压药".into(),
            },
            Need {
                category: NeedCategory::Housing,
                detail: "取暖".into(),
            },
        ],
        disputes: vec![],
        hazards: vec![Hazard {
            kind: HazardKind::Electrical,
            detail: "电线老化".into(),
        }],
        publicity: vec![Publicity::AntiFraud, Publicity::MedicalInsurance],
        note: Text::with_value(NOTE),
        demands_raised: vec![demand.id],
    };
    let mut d = demand;
    d.raised_on_visit = Some(v.id);
    v.demands_raised = vec![d.id];
    (v, vec![d])
}

fn household(grid: &str, i: usize) -> Household {
    let mut h = Household::new(
        HouseholdId::new(),
        GridId::new(grid),
        "河南省某县东村三组",
        format!("{i:03}"),
    );
    if i.is_multiple_of(4) {
        h.tags.push(TagSpan {
            group: KeyGroup::ElderlyAlone,
            since: "2024-01-01".parse().unwrap(),
            until: None,
        });
    }
    for rel in [Relation::Head, Relation::Spouse, Relation::Child] {
        let m = Member {
            id: MemberId::new(),
            relation: rel,
            name: "张某某".into(),
            id_number: Some(Sensitive::new("410108195001011234")),
            birth_date: Some("1950-01-01".parse().unwrap()),
            phone: Some(Sensitive::new("13812345678")),
            tags: vec![],
        };
        h.members.insert(m.id, m);
    }
    h
}

fn doc_with_visits(n: usize) -> HouseholdDoc {
    let a = author();
    let mut doc = HouseholdDoc::create(&household("g1", 0), &a, 0).unwrap();
    for (i, d) in visit_days(n).into_iter().enumerate() {
        let (v, ds) = visit(&a, d);
        doc.add_visit(&a, i as i64, &v, &ds).unwrap();
    }
    doc
}

struct Stats {
    median: Duration,
    p90: Duration,
    n: usize,
}

fn measure(n: usize, mut f: impl FnMut()) -> Stats {
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    Stats {
        median: samples[n / 2],
        p90: samples[(n * 9 / 10).min(n - 1)],
        n,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn row(what: &str, ours: &Stats, base: Option<(&str, &Stats)>) {
    let (bname, bmed, ratio) = match base {
        Some((name, b)) => (
            name.to_string(),
            ms(b.median),
            format!(
                "{:.1}×",
                ours.median.as_secs_f64() / b.median.as_secs_f64().max(1e-9)
            ),
        ),
        None => ("—".into(), "—".into(), "—".into()),
    };
    println!(
        "| {what} | {} | {} | {} | {bname} | {bmed} | {ratio} |",
        ms(ours.median),
        ms(ours.p90),
        ours.n
    );
}

fn main() {
    let quick = std::env::var_os("QIAOMEN_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 10).max(3) } else { n };
    let dir = tempfile::tempdir().unwrap();

    println!("| operation | median ms | p90 ms | n | bare Automerge | its median ms | ratio |");
    println!("|---|---|---|---|---|---|---|");

    // 1. Record a visit durably: commit + SQLite write (WAL, synchronous=FULL / NORMAL).
    let a = author();
    let days = visit_days(24);
    let key = StoreKey::new(&[0x5a; StoreKey::LEN]).unwrap();
    let mut plaintext_full = None;
    for (durability, key) in [
        (Durability::Full, None),
        (Durability::Normal, None),
        (Durability::Full, Some(key)),
    ] {
        let encrypted = key.is_some();
        let path = dir.path().join(format!(
            "record-{}-{encrypted}.db",
            durability == Durability::Full
        ));
        let mut store = Store::open(
            &path,
            a,
            StoreOptions {
                durability,
                key,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let ids: Vec<_> = (0..25)
            .map(|i| store.create_household(&household("g1", i)).unwrap())
            .collect();
        let mut i = 0;
        let prepared: Vec<_> = (0..scale(500))
            .map(|k| visit(&a, days[k % days.len()]))
            .collect();
        let stats = measure(prepared.len(), || {
            let (v, ds) = &prepared[i];
            store.record_visit(ids[i % ids.len()], v, ds).unwrap();
            i += 1;
        });
        // Bare Automerge: the same visit reconciled into a resident document and committed,
        // no storage at all.
        let mut bare: Vec<AutoCommit> = (0..25)
            .map(|k| {
                let mut d = AutoCommit::new();
                autosurgeon::reconcile(&mut d, household("g1", k)).unwrap();
                d.commit();
                d
            })
            .collect();
        let mut j = 0;
        let bare_stats = measure(prepared.len(), || {
            let (v, ds) = &prepared[j];
            let doc = &mut bare[j % 25];
            let visits = doc.get(ROOT, "visits").unwrap().unwrap().1;
            autosurgeon::reconcile_prop(doc, &visits, v.id.to_string().as_str(), v).unwrap();
            let demands = doc.get(ROOT, "demands").unwrap().unwrap().1;
            autosurgeon::reconcile_prop(doc, &demands, ds[0].id.to_string().as_str(), &ds[0])
                .unwrap();
            doc.commit_with(CommitOptions::default().with_message("m").with_time(0));
            j += 1;
        });
        match (durability, encrypted) {
            (Durability::Full, false) => {
                row(
                    "record a visit durably (synchronous=FULL)",
                    &stats,
                    Some(("bare commit", &bare_stats)),
                );
                plaintext_full = Some(stats);
            }
            (Durability::Normal, _) => row(
                "record a visit (synchronous=NORMAL)",
                &stats,
                Some(("bare commit", &bare_stats)),
            ),
            (Durability::Full, true) => row(
                "record a visit durably, encrypted (SQLCipher, FULL)",
                &stats,
                plaintext_full.as_ref().map(|p| ("plaintext, FULL", p)),
            ),
        }
    }

    // 2. Open a store of 500 households (each with 12 visits), and load all of them.
    let path = dir.path().join("500.db");
    let mut snapshots = Vec::new();
    {
        let mut store = Store::open(
            &path,
            a,
            StoreOptions {
                durability: Durability::Normal,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let twelve = visit_days(12);
        for i in 0..500 {
            let mut doc = HouseholdDoc::create(&household("g1", i), &a, 0).unwrap();
            for d in &twelve {
                let (v, ds) = visit(&a, *d);
                doc.add_visit(&a, 1, &v, &ds).unwrap();
            }
            let bytes = doc.save();
            store.import_document(&bytes).unwrap();
            snapshots.push(bytes);
        }
    }
    let open = measure(scale(30), || {
        let store = Store::open(&path, a, StoreOptions::default()).unwrap();
        std::hint::black_box(store.pending_change_count().unwrap());
    });
    let bare_load_all = measure(scale(5), || {
        for s in &snapshots {
            std::hint::black_box(AutoCommit::load(s).unwrap());
        }
    });
    row(
        "open a store of 500 households",
        &open,
        Some(("load all 500 docs", &bare_load_all)),
    );
    let load_all = measure(scale(5), || {
        let mut store = Store::open(
            &path,
            a,
            StoreOptions {
                cache_capacity: 1000,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        for id in store.household_ids().unwrap() {
            std::hint::black_box(store.household(id).unwrap());
        }
    });
    row(
        "open + read all 500 records",
        &load_all,
        Some(("load all 500 docs", &bare_load_all)),
    );

    // 3. Roster over 500 households.
    let store = Store::open(&path, a, StoreOptions::default()).unwrap();
    let day: Day = "2026-11-15".parse().unwrap();
    let roster = measure(scale(200), || {
        let r = store.roster(&GridId::new("g1"), day).unwrap();
        assert_eq!(r.len(), 500);
    });
    row("roster query over 500 households", &roster, None);
    let not_visited = measure(scale(200), || {
        std::hint::black_box(store.not_visited(&GridId::new("g1"), day).unwrap());
    });
    row("not-visited-this-cycle over 500", &not_visited, None);
    drop(store);

    // 4. Load a household with 120 visits (five years of visit days).
    let mut big = doc_with_visits(120);
    let big_bytes = big.save();
    let path = dir.path().join("big.db");
    let mut store = Store::open(&path, a, StoreOptions::default()).unwrap();
    let id = store.import_document(&big_bytes).unwrap();
    let load = measure(scale(30), || {
        store.clear_cache();
        std::hint::black_box(store.household(id).unwrap());
    });
    let bare_load = measure(scale(30), || {
        std::hint::black_box(AutoCommit::load(&big_bytes).unwrap());
    });
    row(
        "load a 120-visit household (read + load + typed record)",
        &load,
        Some(("bare load", &bare_load)),
    );
    let record_big = {
        let mut i = 0;
        // Spread over 24 visit days: at most 10 visits a household a day (validate.rs).
        let prepared: Vec<_> = (0..scale(100))
            .map(|k| visit(&a, days[k % days.len()]))
            .collect();
        measure(prepared.len(), || {
            let (v, ds) = &prepared[i];
            store.record_visit(id, v, ds).unwrap();
            i += 1;
        })
    };
    row(
        "record a visit into the 120-visit household (FULL)",
        &record_big,
        None,
    );
    println!();
    println!(
        "saved size of the 120-visit household: {} bytes",
        big_bytes.len()
    );
}
