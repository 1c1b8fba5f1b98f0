//! What a supervisor's coverage and statistics cost on the server, for a town: the read model
//! (`server/src/index.rs`: rows derived from the log, kept by a cursor) beside the naive way
//! (load and read every household document of the town on each request), in one run on the
//! same data. Also how fast the read model takes in a visit day's uploads.
//!
//! Run: `cargo bench -p qiaomen-tests --bench workflow` (`QIAOMEN_BENCH_QUICK=1` for a small
//! town).

use std::time::{Duration, Instant};

use qiaomen_protocol::{
    calendar::Day,
    coverage::{self, CoverageInput, CoveragePolicy},
    doc::{Author, HouseholdDoc},
    ids::*,
    schema::*,
    wire::DocChanges,
};
use qiaomen_server::{
    index::{Index, Workflow},
    ingest::{Ingestor, Upload},
    stats,
    storage::{SqliteStorage, Storage},
};

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::var_os("QIAOMEN_BENCH_QUICK").is_some();
    let (grids, per_grid) = if quick { (4, 50) } else { (20, 250) };
    let dir = tempfile::tempdir().unwrap();
    let mut ingestor = Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
    let a = Author {
        user: UserId::new(),
        device: DeviceId::new(),
    };
    let grid_ids: Vec<String> = (0..grids).map(|g| format!("g{g:02}")).collect();
    let days = [day("2026-10-30"), day("2026-11-15")];
    // A town: every household created, visited on two visit days (one in eight not met on
    // the second), one in ten raising a demand; uploaded per grid.
    let mut n_changes = 0usize;
    for (g, grid) in grid_ids.iter().enumerate() {
        let mut docs = Vec::new();
        for i in 0..per_grid {
            let id = HouseholdId::new();
            let mut h =
                Household::new(id, GridId::new(grid.as_str()), "柳林镇东村", format!("{i}"));
            if i % 5 == 0 {
                h.tags.push(TagSpan {
                    group: KeyGroup::ElderlyAlone,
                    since: day("2026-01-01"),
                    until: None,
                });
            }
            let mut d = HouseholdDoc::create(&h, &a, 0).unwrap();
            for (k, vd) in days.iter().enumerate() {
                let mut v = qiaomen_tests::sample_visit(&a, *vd, "老人身体还好，已宣传防诈骗。");
                if k == 1 && (i + g) % 8 == 0 {
                    v.outcome = VisitOutcome::NobodyHome;
                }
                let demands = if k == 1 && i % 10 == 0 {
                    let mut d = qiaomen_tests::sample_demand(&a, 1_763_164_800_000, "屋顶漏雨");
                    d.raised_on_visit = Some(v.id);
                    vec![d]
                } else {
                    vec![]
                };
                v.demands_raised = demands.iter().map(|d| d.id).collect();
                d.add_visit(&a, 1 + k as i64, &v, &demands).unwrap();
            }
            let changes = d.changes_since(&[]);
            n_changes += changes.len();
            docs.push(DocChanges {
                id,
                changes: changes
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                whole: None,
            });
        }
        let upload = Upload {
            principal: None,
            docs,
            packing: None,
        };
        let out = ingestor.process_group(&[&upload]).unwrap().remove(0);
        assert!(out.rejected.is_empty());
    }
    let n = grids * per_grid;
    let policy = CoveragePolicy::default();
    let today = day("2026-11-23");

    // The read model taking in the whole log (what it does after a visit day's uploads).
    let mut ix = Index::open(dir.path(), Workflow::default()).unwrap();
    let t = Instant::now();
    // A household whose changes straddle two batches is read twice.
    let reindexed = ix.refresh().unwrap();
    let rebuild = t.elapsed();
    assert!(reindexed >= n, "{reindexed} < {n}");

    // Coverage of the town for one visit day: read model vs every document read.
    let runs = if quick { 5 } else { 3 };
    let mut via_index = Vec::new();
    let mut via_docs = Vec::new();
    let mut due_index = 0;
    let mut due_docs = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let rows = ix.households(&grid_ids).unwrap();
        due_index = rows
            .iter()
            .filter_map(|h| coverage::coverage(&h.input, days[1], today, &policy))
            .count();
        via_index.push(t.elapsed());

        let t = Instant::now();
        let storage = SqliteStorage::open(dir.path()).unwrap();
        due_docs = 0;
        for g in &grid_ids {
            for (_, bytes) in storage.grid_docs(g).unwrap() {
                let h = HouseholdDoc::load(&bytes).unwrap().household().unwrap();
                if coverage::coverage(&CoverageInput::of(&h), days[1], today, &policy).is_some() {
                    due_docs += 1;
                }
            }
        }
        via_docs.push(t.elapsed());
    }
    assert_eq!(due_index, due_docs);

    // The month's statistics of the town (orders, households, visits → figures).
    let mut stats_runs = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let orders = ix.orders(&grid_ids, &[]).unwrap();
        let households = ix.households(&grid_ids).unwrap();
        let visits: u64 = ix
            .visit_counts(&grid_ids, day("2026-11-01"), today)
            .unwrap()
            .values()
            .sum();
        let mut f = stats::Figures::default();
        for g in &grid_ids {
            let of_grid: Vec<_> = orders.iter().filter(|o| &o.grid == g).cloned().collect();
            f.add(&stats::figures(
                g,
                &of_grid,
                &households,
                0,
                (day("2026-11-01"), today),
                today,
                &policy,
            ));
        }
        f.visits = visits;
        let f = f.with_rates();
        assert_eq!(f.coverage.due as usize, n);
        stats_runs.push(t.elapsed());
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "workflow: a town of {n} households in {grids} grids, {n_changes} logged changes (2 visit days, {} demands)",
        n / 10
    );
    println!("| measure | read model | every document read | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| coverage of the town for one visit day (median of {runs}) | {:.1} ms | {:.1} ms | {:.1}x |",
        ms(median(via_index.clone())),
        ms(median(via_docs.clone())),
        median(via_docs).as_secs_f64() / median(via_index).as_secs_f64()
    );
    println!(
        "| the month's statistics of the town (median of {runs}) | {:.1} ms | | |",
        ms(median(stats_runs))
    );
    println!(
        "| read model taking in the whole log | {:.0} ms ({:.0} households/s, {reindexed} reads) | | |",
        ms(rebuild),
        n as f64 / rebuild.as_secs_f64()
    );
}
