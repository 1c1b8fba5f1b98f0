//! The phone in the field, over a link of our own that behaves like a village's 2G (50 kbit/s
//! each way, 600 ms round trip, the connection cut every 20 s on average): `cargo bench -p
//! qiaomen-tests --bench field`. `QIAOMEN_FIELD_HOUSEHOLDS` (default 300) sets the grid's size,
//! 12 visits each (a year); `QIAOMEN_FIELD_LIMIT_S` (default 900) bounds each scenario;
//! `QIAOMEN_FIELD_KBPS` (default 50) the link's rate.
//!
//! 1. A new phone's first sync of the grid (a year of visits): whole documents (SYNC-v1
//!    §7.3.1) beside every change as logged (a second server on a copy of the store, whole
//!    documents off: today's main), pieces sized to the link (the phone measures it and asks
//!    for ~8 s of it, `r`), and whole documents in pieces of the server's budget (2 MiB), in
//!    one run. Time, syncs it took, bytes down.
//! 2. A phone back after 90 days (another worker's six visit days reached the server
//!    meanwhile), beside today's main (changes as chunks): time, bytes on the wire ÷ bytes of
//!    the changes it keeps.
//! 3. A visit day through the same link, cut every 20 s and every 2 s on average: 25 visits
//!    up, a supervisor's 25 down; bytes down ÷ the zstd floor of the visits that came down.
//! 4. `record_visit` through the FFI while a first sync crawls over the link: its latency.

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

/// The village's link: 2G (`QIAOMEN_FIELD_KBPS` kbit/s each way, default 50), cut every 20 s
/// on average.
fn village(seed: u64) -> LinkConfig {
    LinkConfig {
        rate: env("QIAOMEN_FIELD_KBPS", 50) * 1000 / 8,
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
    // The grid's history, a year of it: households registered a year ago (the phone's clock
    // set back while it creates them: a visit never counts for a day before its household
    // existed), then a visit on the 15th of each of the last 12 months and two corrections
    // of the last note, 15 changes a household, as in the grid.
    let today = qiaomen_tests::today();
    let a_year_ago = today.add_days(-366);
    let back = qiaomen_tests::now_ms() - 366 * 86_400_000;
    worker.store.set_clock(move || back);
    let ids = worker.create_households("g1", households);
    worker.store.set_clock(qiaomen_tests::now_ms);
    let days: Vec<Day> = (a_year_ago.year()..=today.year())
        .flat_map(|y| (1..=12u8).map(move |m| (y, m)))
        .filter_map(|(y, m)| qiaomen_protocol::calendar::visit_days_of_month(y, m))
        .map(|[fifteenth, _]| fifteenth)
        .filter(|d| *d > a_year_ago && *d <= today)
        .collect();
    let day = qiaomen_protocol::calendar::cycle_of(today);
    let visit_on = |author: &qiaomen_protocol::doc::Author, day: Day| {
        let mut v = sample_visit(author, day, "老人在家，身体尚可，按时服药。");
        v.started_at_ms = qiaomen_tests::now_ms();
        v.ended_at_ms = Some(v.started_at_ms + 15 * 60_000);
        v
    };
    // Visits whose notes differ (two of twelve sentences, by `seed`), so that what goes over
    // the link compresses like real visits, not like one visit repeated.
    let varied = |author: &qiaomen_protocol::doc::Author, day: Day, seed: usize| {
        const NOTES: [usize; 12] = [0, 1, 2, 3, 4, 5, 7, 8, 10, 12, 14, 16];
        let mut v = visit_on(author, day);
        v.note = format!(
            "{}{}",
            qiaomen_tests::SENTENCES[NOTES[seed % 12]],
            qiaomen_tests::SENTENCES[NOTES[(seed / 12 + seed * 7 + 5) % 12]]
        )
        .as_str()
        .into();
        v
    };
    for id in &ids {
        let mut last = None;
        for d in &days {
            let v = visit_on(&worker.author, *d);
            worker.store.record_visit(*id, &v, &[]).unwrap();
            last = Some(v.id);
        }
        for k in 1..3 {
            worker
                .store
                .replace_note(
                    *id,
                    last.unwrap(),
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
    // The same store behind a second server that sends every change as it was logged (today's
    // main before whole documents), for the first sync side by side.
    server.stop();
    let logged = dir.path().join("as-logged");
    qiaomen_tests::copy_dir(&data, &logged);
    let server = TestServer::start(&data);
    let as_logged = TestServer::start_with(&logged, "127.0.0.1:0".parse().unwrap(), |c| {
        c.whole_docs = false;
        c.packed_downloads = false;
    });
    worker.client = qiaomen_client_core::SyncClient::new(&server.url).unwrap();
    let changes = worker.store.acknowledged_change_count().unwrap();

    let retry = Retry {
        attempts: 6,
        ..Retry::default()
    };
    println!(
        "the phone in the field: {households} households, {changes} changes; link {} kbit/s each way, 600 ms round trip, a cut every 20 s on average (127.0.0.1)",
        env("QIAOMEN_FIELD_KBPS", 50)
    );
    println!();
    println!(
        "| new phone, first sync of the grid | time | syncs | bytes down | cuts | connections |"
    );
    println!("|---|---|---|---|---|---|");
    for (n, (name, pieces, whole)) in [
        (
            "whole documents, pieces sized to the link (r)",
            None::<(usize, usize)>,
            true,
        ),
        (
            "changes as logged, pieces sized to the link (today's main)",
            None,
            false,
        ),
        (
            "whole documents, pieces of the server's budget (2 MiB)",
            Some((2 << 20, 2 << 20)),
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (to, folder) = if whole {
            (&server, &data)
        } else {
            (&as_logged, &logged)
        };
        let link = Link::start(to.addr, village(11));
        let (_, code) = enrollment_code(folder, &["g1"]);
        let path = dir.path().join(format!("new-{n}.db"));
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
            "| {name} | {} | {syncs} | {} KB | {} | {} |",
            match took {
                Some(t) => format!("{:.0} s", t.as_secs_f64()),
                None => format!(
                    "not done in {} s ({held} of {households} households)",
                    limit.as_secs()
                ),
            },
            (link.bytes_down() - before) / 1024,
            link.cuts(),
            link.stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }

    // 2. A phone back after 90 days: in step with the grid when it left; meanwhile another
    // worker's six visit days (a visit to every household on each) reached the server.
    let recent: Vec<Day> = {
        let mut d: Vec<Day> = (today.year() - 1..=today.year())
            .flat_map(|y| (1..=12u8).map(move |m| (y, m)))
            .filter_map(|(y, m)| qiaomen_protocol::calendar::visit_days_of_month(y, m))
            .flatten()
            .filter(|d| *d <= today)
            .collect();
        d.sort();
        d.split_off(d.len().saturating_sub(6))
    };
    println!();
    println!(
        "| a phone back after 90 days ({} visit days of another worker, {} visits) | time | syncs | cuts | bytes on the wire | bytes kept | wire ÷ kept |",
        recent.len(),
        recent.len() * ids.len()
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, (name, to, folder)) in [
        ("packed changes, pieces sized to the link", &server, &data),
        ("changes as chunks (today's main)", &as_logged, &logged),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, code) = enrollment_code(folder, &["g1"]);
        let mut back =
            Phone::enroll(&dir.path().join(format!("back-{n}.db")), &to.url, &code).unwrap();
        back.sync().unwrap();
        let (_, code) = enrollment_code(folder, &["g1"]);
        let mut other =
            Phone::enroll(&dir.path().join(format!("other-{n}.db")), &to.url, &code).unwrap();
        other.sync().unwrap();
        for (k, d) in recent.iter().enumerate() {
            for (i, id) in ids.iter().enumerate() {
                other
                    .store
                    .record_visit(*id, &varied(&other.author, *d, k * 1000 + i), &[])
                    .unwrap();
            }
        }
        let kept: usize = other
            .store
            .pending_households()
            .unwrap()
            .into_iter()
            .flat_map(|id| other.store.pending_changes(id).unwrap())
            .map(|(_, bytes)| bytes.len())
            .sum();
        other.sync().unwrap();
        let link = Link::start(to.addr, village(13));
        back.client = qiaomen_client_core::SyncClient::new(&link.url)
            .unwrap()
            .with_retry(retry.clone());
        let (took, syncs) = sync_through(&mut back, limit);
        let wire = link.bytes_down() + link.bytes_up();
        println!(
            "| {name} | {} | {syncs} | {} | {} KB | {} KB | {:.2}× |",
            took.map(|t| format!("{:.0} s", t.as_secs_f64()))
                .unwrap_or_else(|| "not done".into()),
            link.cuts(),
            wire / 1024,
            kept / 1024,
            wire as f64 / kept as f64
        );
    }

    // 3. A visit day: the phone's 25 visits up, a supervisor's 25 visits to the same
    // households down, with a cut every 20 s and every 2 s on average.
    println!();
    println!(
        "| a visit day through the link (25 visits up, 25 down) | cut every | time | syncs | bytes up / down | down ÷ floor of the visits down |"
    );
    println!("|---|---|---|---|---|---|");
    let mut row = 0;
    for (name, to, folder) in [
        ("packed both ways", &server, &data),
        ("packed up, chunks down (today's main)", &as_logged, &logged),
    ] {
        for cut in [20, 2] {
            let mine: Vec<_> = ids
                .iter()
                .cycle()
                .skip(25 * row)
                .take(25)
                .copied()
                .collect();
            row += 1;
            let (_, code) = enrollment_code(folder, &["g1"]);
            let mut phone =
                Phone::enroll(&dir.path().join(format!("day-{row}.db")), &to.url, &code).unwrap();
            sync_through(&mut phone, limit);
            let mut supervisor = to.phone(&dir.path().join(format!("supervisor-{row}.db")), &[]);
            supervisor.sync().unwrap();
            let mut down = Vec::new();
            for (i, id) in mine.iter().enumerate() {
                phone
                    .store
                    .record_visit(*id, &varied(&phone.author, day, i), &[])
                    .unwrap();
                let v = varied(&supervisor.author, day, 500 + i);
                supervisor.store.record_visit(*id, &v, &[]).unwrap();
                down.push(v);
            }
            supervisor.sync().unwrap();
            let (_, floor) = qiaomen_tests::visit_json_floor(&down);
            let link = Link::start(
                to.addr,
                LinkConfig {
                    mean_time_between_cuts: Some(Duration::from_secs(cut)),
                    ..village(14 + row as u64)
                },
            );
            phone.client = qiaomen_client_core::SyncClient::new(&link.url)
                .unwrap()
                .with_retry(retry.clone());
            let (took, syncs) = sync_through(&mut phone, limit);
            println!(
                "| {name} | {cut} s | {} | {syncs} | {} / {} | {:.2}× |",
                took.map(|t| format!("{:.1} s", t.as_secs_f64()))
                    .unwrap_or_else(|| "not done".into()),
                link.bytes_up(),
                link.bytes_down(),
                link.bytes_down() as f64 / floor as f64
            );
        }
    }

    // 4. The app while a first sync crawls over the link.
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let (_, code) = enrollment_code(&data, &["g1"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = dir.path().join("ffi.db").to_string_lossy().into_owned();
    let ffi: Arc<qiaomen::Phone> = rt
        .block_on(qiaomen::enroll(path, link.url.clone(), code, None))
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
