//! Photos over a village's 2G (SYNC-v1 §14): `cargo bench -p qiaomen-tests --bench photos`.
//!
//! A visit day of 25 visits, with 5 photos of 300 KB and without, through a link of 50 kbit/s
//! each way, 600 ms round trip, the connection cut every 20 s on average (`tests/src/link.rs`
//! on 127.0.0.1). For each run: when the records were acknowledged (the photos must not delay
//! them), when the last photo was (the target: within 1.3× of the photos' size ÷ the
//! link's rate), the bytes that went up, and how many of them were sent again after cuts.
//! `QIAOMEN_PHOTO_RUNS` (default 2) runs of each, with other seeds of the cuts.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use qiaomen_client_core::{Retry, Store, SyncClient, SyncError};
use qiaomen_protocol::photo::PhotoSubject;
use qiaomen_tests::{
    TestServer,
    link::{Link, LinkConfig},
    sample_visit, seed_test_org,
};

const PHOTOS: usize = 5;
const PHOTO_BYTES: usize = 300_000;
const RATE: u64 = 50_000 / 8;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes that do not compress, behind a JPEG's signature: a photo as far as the link can tell.
fn photo(seed: u64) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    b.extend((0..PHOTO_BYTES - 4).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    b
}

struct Run {
    records: Option<Duration>,
    photos: Option<Duration>,
    bytes_up: u64,
    syncs: u32,
    cuts: u64,
}

fn run(seed: u64, with_photos: bool, limit: Duration) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    seed_test_org(&data);
    let server = TestServer::start(&data);
    let mut worker = server.phone(&dir.path().join("worker.db"), &["g1"]);
    let ids = worker.create_households("g1", 25);
    worker.sync().unwrap();
    let day = qiaomen_protocol::calendar::cycle_of(qiaomen_tests::today());
    for (i, id) in ids.iter().enumerate() {
        let v = sample_visit(&worker.author, day, "老人在家，身体尚可，按时服药。");
        worker.store.record_visit(*id, &v, &[]).unwrap();
        if with_photos && i < PHOTOS {
            worker
                .store
                .attach_photo(
                    *id,
                    PhotoSubject::Visit { visit: v.id },
                    &photo(seed * 100 + i as u64),
                    "现场照片",
                    qiaomen_tests::now_ms(),
                )
                .unwrap();
        }
    }
    let link = Link::start(
        server.addr,
        LinkConfig {
            rate: RATE,
            mean_time_between_cuts: Some(Duration::from_secs(20)),
            seed,
            ..LinkConfig::village_2g()
        },
    );
    let client = SyncClient::new(&link.url).unwrap().with_retry(Retry {
        attempts: 20,
        ..Retry::default()
    });
    let store: Arc<Mutex<Store>> = Arc::new(Mutex::new(worker.store));
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Watches the store from beside the sync, as the app's screen would.
    let watcher = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut records, mut photos) = (None, None);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                {
                    let s = store.lock().unwrap();
                    if records.is_none() && s.pending_change_count().unwrap() == 0 {
                        records = Some(started.elapsed());
                    }
                    if photos.is_none() && s.pending_photo_count().unwrap() == 0 {
                        photos = Some(started.elapsed());
                    }
                }
                if records.is_some() && photos.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // The sync may end between two looks (a visit day without photos ends with its
            // acknowledgement): one last look, at most 50 ms after it ended.
            let s = store.lock().unwrap();
            if records.is_none() && s.pending_change_count().unwrap() == 0 {
                records = Some(started.elapsed());
            }
            if photos.is_none() && s.pending_photo_count().unwrap() == 0 {
                photos = Some(started.elapsed());
            }
            (records, photos)
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut syncs = 0;
    while started.elapsed() < limit {
        syncs += 1;
        match rt.block_on(client.sync_shared(&*store, |_| {})) {
            Ok(report) if report.photos_waiting == 0 => break,
            Ok(_) | Err(SyncError::Network { .. }) => continue,
            Err(e) => panic!("sync failed: {e}"),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (records, photos) = watcher.join().unwrap();
    Run {
        records,
        photos: if with_photos { photos } else { None },
        bytes_up: link.bytes_up(),
        syncs,
        cuts: link.stats.cuts.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn main() {
    let runs = env("QIAOMEN_PHOTO_RUNS", 2);
    let limit = Duration::from_secs(env("QIAOMEN_PHOTO_LIMIT_S", 900));
    let floor = (PHOTOS * PHOTO_BYTES) as f64 / RATE as f64;
    println!(
        "photos over the village link: 25 visits, {PHOTOS} photos of {PHOTO_BYTES} B; 50 kbit/s each way, 600 ms round trip, a cut every 20 s on average (127.0.0.1); size ÷ rate = {floor:.0} s"
    );
    println!();
    println!(
        "| run | records acknowledged | last photo acknowledged | ÷ (size ÷ rate) | bytes up | sent again after cuts | syncs | cuts |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let secs = |d: Option<Duration>| {
        d.map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "—".into())
    };
    let mut without = Vec::new();
    for seed in 1..=runs {
        for with_photos in [false, true] {
            let r = run(seed, with_photos, limit);
            let name = if with_photos {
                "25 visits + 5 photos"
            } else {
                "25 visits, no photo"
            };
            let (ratio, again) = if with_photos {
                let records_up = without.last().copied().unwrap_or(0);
                let again = r
                    .bytes_up
                    .saturating_sub(records_up + (PHOTOS * PHOTO_BYTES) as u64);
                (
                    r.photos
                        .map(|p| format!("{:.2}×", p.as_secs_f64() / floor))
                        .unwrap_or_else(|| "not done".into()),
                    format!("{again} B"),
                )
            } else {
                without.push(r.bytes_up);
                ("—".into(), "—".into())
            };
            println!(
                "| {name} (seed {seed}) | {} | {} | {ratio} | {} | {again} | {} | {} |",
                secs(r.records),
                secs(r.photos),
                r.bytes_up,
                r.syncs,
                r.cuts
            );
        }
    }
    println!();
    println!(
        "sent again: bytes up beyond the photos' bytes and the same visit day's bytes without photos (seed for seed): HTTP headers, HEAD requests and pieces cut."
    );
}
