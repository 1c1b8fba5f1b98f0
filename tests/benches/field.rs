//! The phone in the field, over a link of our own that behaves like a village's 2G (50 kbit/s
//! each way, 600 ms round trip, the connection cut every 20 s on average): `cargo bench -p
//! qiaomen-tests --bench field`. `QIAOMEN_FIELD_HOUSEHOLDS` (default 300) sets the grid's size,
//! 12 visits each (a year); `QIAOMEN_FIELD_LIMIT_S` (default 900) bounds each scenario.
//!
//! 1. A new phone's first sync of the grid: pieces sized to the link (the phone measures it
//!    and asks for ~8 s of it, `r`) beside pieces of the server's budget (2 MiB, what a phone
//!    got before `r`), in one run. Time, syncs it took, bytes down.
//! 2. A visit day through the same link: 25 visits up, others' work down.
//! 3. `record_visit` through the FFI while a first sync crawls over the link: its latency.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use qiaomen_client_core::{Retry, SyncError};
use qiaomen_protocol::calendar::Day;
use qiaomen_tests::{
    Phone, TestServer, enrollment_code,
    link::{Link, LinkConfig},
    sample_visit, seed_test_org,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn village(seed: u64) -> LinkConfig {
    LinkConfig {
        mean_time_between_cuts: Some(Duration::from_secs(20)),
        seed,
        ..LinkConfig::village_2g()
    }
}

/// Syncs until a sync completes (each failed one resumes where it was), or `limit` passes.
fn sync_through(phone: &mut Phone, limit: Duration) -> (Option<Duration>, u32) {
    let started = Instant::now();
    let mut syncs = 0;
    while started.elapsed() < limit {
        syncs += 1;
        match phone.sync() {
            Ok(_) => return (Some(started.elapsed()), syncs),
            Err(SyncError::Network { .. }) => continue,
            Err(e) => panic!("sync failed: {e}"),
        }
    }
    (None, syncs)
}

fn main() {
    let households = env("QIAOMEN_FIELD_HOUSEHOLDS", 300) as usize;
    let limit = Duration::from_secs(env("QIAOMEN_FIELD_LIMIT_S", 900));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    seed_test_org(&data);
    let server = TestServer::start(&data);
    let mut worker = server.phone(&dir.path().join("worker.db"), &["g1"]);
    let ids = worker.create_households("g1", households);

    // The grid's history: a visit to every household and 11 later corrections of its note,
    // 12 changes a household, about a year of visits in size. (The server takes visits only
    // for days since the household and the worker's grant existed, both created by this
    // bench today, so a year of real visit days cannot be made here.)
    let visit_on = |author: &qiaomen_protocol::doc::Author, day: Day| {
        let mut v = sample_visit(author, day, "老人在家，身体尚可，按时服药。");
        v.started_at_ms = qiaomen_tests::now_ms();
        v.ended_at_ms = Some(v.started_at_ms + 15 * 60_000);
        v
    };
    let today = qiaomen_tests::today();
    let day = qiaomen_protocol::calendar::cycle_of(today);
    for id in &ids {
        let v = visit_on(&worker.author, day);
        worker.store.record_visit(*id, &v, &[]).unwrap();
        for k in 1..12 {
            worker
                .store
                .replace_note(
                    *id,
                    v.id,
                    &format!("老人在家，身体尚可，按时服药。第{k}次补记：血压正常。"),
                )
                .unwrap();
        }
    }
    let report = worker.sync().unwrap();
    assert!(
        report.rejected.is_empty(),
        "the grid's history was refused: {:?}",
        report
            .rejected
            .iter()
            .map(|r| r.2.name())
            .collect::<std::collections::BTreeSet<_>>()
    );
    let changes = worker.store.acknowledged_change_count().unwrap();

    let retry = Retry {
        attempts: 6,
        ..Retry::default()
    };
    println!(
        "the phone in the field: {households} households, {changes} changes; link 50 kbit/s each way, 600 ms round trip, a cut every 20 s on average (127.0.0.1)"
    );
    println!();
    println!("| new phone, first sync of the grid | time | syncs | bytes down | connections |");
    println!("|---|---|---|---|---|");
    for (name, pieces) in [
        ("pieces sized to the link (r)", None::<(usize, usize)>),
        (
            "pieces of the server's budget (2 MiB, as before r)",
            Some((2 << 20, 2 << 20)),
        ),
    ] {
        let link = Link::start(server.addr, village(11));
        let (_, code) = enrollment_code(&data, &["g1"]);
        let path = dir.path().join(format!("new-{}.db", pieces.is_some()));
        let mut phone = Phone::enroll(&path, &link.url, &code).unwrap();
        let mut client = phone.client.clone().with_retry(retry.clone());
        if let Some((min, max)) = pieces {
            client = client.with_download_pieces(min, max);
        }
        phone.client = client;
        let before = link.bytes_down();
        let (took, syncs) = sync_through(&mut phone, limit);
        let held = phone.store.household_ids().unwrap().len();
        println!(
            "| {name} | {} | {syncs} | {} KB | {} |",
            match took {
                Some(t) => format!("{:.0} s", t.as_secs_f64()),
                None => format!(
                    "not done in {} s ({held} of {households} households)",
                    limit.as_secs()
                ),
            },
            (link.bytes_down() - before) / 1024,
            link.stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }

    // 2. A visit day: the worker's 25 visits up, a supervisor's 25 down.
    println!();
    println!("| a visit day through the link (25 visits up) | value |");
    println!("|---|---|");
    let link = Link::start(server.addr, village(12));
    let (_, code) = enrollment_code(&data, &["g1"]);
    let mut phone = Phone::enroll(&dir.path().join("day.db"), &link.url, &code).unwrap();
    phone.client = phone.client.clone().with_retry(retry.clone());
    sync_through(&mut phone, limit);
    for id in ids.iter().take(25) {
        phone
            .store
            .record_visit(*id, &visit_on(&phone.author, day), &[])
            .unwrap();
    }
    let (up, down) = (link.bytes_up(), link.bytes_down());
    let (took, syncs) = sync_through(&mut phone, limit);
    println!(
        "| time / syncs | {} / {syncs} |",
        took.map(|t| format!("{:.1} s", t.as_secs_f64()))
            .unwrap_or_else(|| "not done".into())
    );
    println!(
        "| bytes up / down | {} / {} |",
        link.bytes_up() - up,
        link.bytes_down() - down
    );

    // 3. The app while a first sync crawls over the link.
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let (_, code) = enrollment_code(&data, &["g1"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = dir.path().join("ffi.db").to_string_lossy().into_owned();
    let ffi: Arc<qiaomen::Phone> = rt
        .block_on(qiaomen::enroll(path, link.url.clone(), code))
        .unwrap();
    // Households of its own to visit while the sync runs (created first: they travel with it).
    let mine: Vec<String> = (0..200)
        .map(|i| {
            ffi.create_household(qiaomen::NewHousehold {
                grid: "g1".into(),
                address: "东村".into(),
                door_number: format!("甲{i}"),
                phone: None,
                gps: None,
                tags: vec![],
            })
            .unwrap()
        })
        .collect();
    let syncing = {
        let ffi = ffi.clone();
        rt.spawn(async move { ffi.sync(None).await })
    };
    let mut latencies = Vec::new();
    for household in &mine {
        if syncing.is_finished() {
            break;
        }
        let t = Instant::now();
        ffi.record(household);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = latencies.len();
    syncing.abort();
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!();
    println!("| the app during a first sync over the link (FFI) | value |");
    println!("|---|---|");
    println!("| visits recorded while the sync ran | {during} |");
    if !latencies.is_empty() {
        println!(
            "| record_visit p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
            p(0.5),
            p(0.99),
            latencies.last().unwrap()
        );
    }
}

/// What the bench does with the app's hands: a visit recorded, as the app records one.
trait Hands {
    fn record(&self, household: &str);
}

impl Hands for qiaomen::Phone {
    fn record(&self, household: &str) {
        let day = qiaomen_protocol::calendar::cycle_of(qiaomen_tests::today());
        self.record_visit(
            household.to_string(),
            qiaomen::NewVisit {
                visit_day: day.to_string(),
                started_at_ms: qiaomen_tests::now_ms(),
                ended_at_ms: None,
                gps: None,
                outcome: qiaomen_protocol::schema::VisitOutcome::Met,
                people_met: vec![],
                needs: vec![],
                disputes: vec![],
                hazards: vec![],
                publicity: vec![],
                note: "入户走访".into(),
                demands: vec![],
            },
        )
        .expect("recorded");
    }
}
