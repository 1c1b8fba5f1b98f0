//! A child process for the crash test: records visits into a store as fast as it can and
//! prints `<household> <visit>` after each commit returns, until it is killed (or, so it
//! always stops by itself, after 30 s).

use std::{
    io::Write,
    time::{Duration, Instant},
};

use qiaomen_client_core::{Store, StoreOptions};
use qiaomen_protocol::{calendar::Day, doc::Author, ids::*, schema::Household};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("store path");
    let author = Author {
        user: args.next().expect("user").parse().expect("uuid"),
        device: args.next().expect("device").parse().expect("uuid"),
    };
    let mut store = Store::open(
        &path,
        author,
        StoreOptions {
            compact_after: 8,
            ..StoreOptions::default()
        },
    )
    .expect("open store");
    let mut ids = store.household_ids().expect("ids");
    while ids.len() < 5 {
        let h = Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "crash",
            format!("{}", ids.len()),
        );
        ids.push(store.create_household(&h).expect("create"));
    }
    // A household takes at most `MAX_VISITS_PER_DAY` visits for one visit day: every round
    // of that many visits per household goes one cycle further back.
    // A run after a kill goes on before the earliest day the store holds.
    let earliest = ids
        .iter()
        .filter_map(|id| {
            store
                .household(*id)
                .expect("read")
                .visits
                .values()
                .map(|v| v.visit_day)
                .min()
        })
        .min();
    let mut day: Day = match earliest {
        Some(d) => qiaomen_protocol::calendar::cycle_of(d.add_days(-1)),
        None => "2026-11-15".parse().expect("date"),
    };
    let per_day = ids.len() * qiaomen_protocol::validate::MAX_VISITS_PER_DAY;
    let out = std::io::stdout();
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(30) {
        if i > 0 && i.is_multiple_of(per_day) {
            day = qiaomen_protocol::calendar::cycle_of(day.add_days(-1));
        }
        let hh = ids[i % ids.len()];
        let visit = qiaomen_tests::sample_visit(&author, day, "崩溃测试");
        store.record_visit(hh, &visit, &[]).expect("record");
        let mut lock = out.lock();
        writeln!(lock, "{hh} {}", visit.id).expect("stdout");
        lock.flush().expect("flush");
        i += 1;
    }
}
