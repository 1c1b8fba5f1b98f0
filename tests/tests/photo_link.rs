//! Photos from the phone library (the FFI `Phone`) over a link that behaves like a village's
//! 2G: records first, always; a photo cut mid-upload resumes where the server's copy ends.

use std::{sync::Arc, time::Duration};

use qiaomen::{NewHousehold, NewVisit, Phone, PhotoSubject};
use qiaomen_protocol::schema::{HazardKind, VisitOutcome};
use qiaomen_tests::{
    TestServer,
    link::{Link, LinkConfig},
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn visit(note: &str) -> NewVisit {
    NewVisit {
        visit_day: "2026-11-15".into(),
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_900_000),
        gps: None,
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![],
        disputes: vec![],
        hazards: vec![qiaomen::Hazard {
            kind: HazardKind::Electrical,
            detail: "电线下垂".into(),
        }],
        publicity: vec![],
        note: note.into(),
        demands: vec![],
    }
}

/// A JPEG's signature and `n` bytes after it that do not compress.
fn jpeg(n: usize, seed: u64) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    b.extend((0..n).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    b
}

fn phone(
    rt: &tokio::runtime::Runtime,
    server: &TestServer,
    dir: &std::path::Path,
    name: &str,
    url: &str,
) -> Arc<Phone> {
    let (_, code) = server.enrollment_code(&["g1"]);
    let path = dir.join(name).to_string_lossy().into_owned();
    rt.block_on(qiaomen::enroll(path, url.to_string(), code, None))
        .expect("enrolled")
}

fn household(phone: &Phone) -> String {
    phone
        .create_household(NewHousehold {
            grid: "g1".into(),
            address: "东村".into(),
            door_number: "17".into(),
            phone: None,
            gps: None,
            tags: vec![],
        })
        .unwrap()
}

/// Retries for a link that is cut: many, quick.
fn patient() -> qiaomen::SyncPolicy {
    qiaomen::SyncPolicy {
        attempts: 20,
        stall_seconds: 5.0,
        give_up_after_seconds: 60.0,
        upload_piece_bytes: 64 * 1024,
    }
}

/// A visit with a photo of its hazard, synced over a link cut while the photo's bytes go:
/// the visit was acknowledged before the first photo byte left; the cut upload resumes from
/// the server's offset in the same sync, so the link carries the photo less than twice; another
/// phone of the grid gets the reference with the records and the bytes when it asks.
#[test]
fn records_go_first_and_a_photo_cut_mid_upload_resumes_where_the_server_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let link = Arc::new(Link::start(
        server.addr,
        LinkConfig {
            rate: 100_000,
            one_way_delay: Duration::from_millis(50),
            ..LinkConfig::village_2g()
        },
    ));
    let rt = runtime();
    let a = phone(&rt, &server, dir.path(), "a.db", &link.url);
    a.set_sync_policy(patient());
    let hid = household(&a);
    rt.block_on(a.sync(None)).unwrap();
    let vid = a.record_visit(hid.clone(), visit("电线下垂")).unwrap();
    let taken = jpeg(300_000, 7);
    let photo = a
        .attach_photo(
            hid.clone(),
            PhotoSubject::Hazard {
                visit_id: vid,
                item: 0,
            },
            taken.clone(),
            "电线下垂".into(),
            1_763_000_100_000,
        )
        .unwrap();
    assert_eq!(
        (a.pending_count().unwrap(), a.pending_photo_count().unwrap()),
        (2, 1)
    );
    let start = link.bytes_up();
    // Watches the link from another thread: once 100 KB of the photo are on the way, the
    // records must already be acknowledged; then the link is cut, twice.
    let watcher = {
        let (a, link) = (a.clone(), link.clone());
        std::thread::spawn(move || {
            let mut acknowledged_before_photo = None;
            let mut cuts = 0;
            for _ in 0..2000 {
                let up = link.bytes_up() - start;
                if acknowledged_before_photo.is_none() && up > 100_000 {
                    acknowledged_before_photo = Some(a.pending_count().unwrap() == 0);
                }
                if (cuts == 0 && up > 120_000) || (cuts == 1 && up > 240_000) {
                    link.cut();
                    cuts += 1;
                }
                if cuts == 2 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (acknowledged_before_photo, cuts)
        })
    };
    let mut summary = rt.block_on(a.sync(None)).unwrap();
    let (acknowledged_before_photo, cuts) = watcher.join().unwrap();
    // A cut the retries did not cover leaves the photo for the next sync, which resumes it.
    if summary.photos_sent == 0 {
        summary = rt.block_on(a.sync(None)).unwrap();
    }
    assert_eq!(cuts, 2, "the link was cut twice while the photo went");
    assert_eq!(
        acknowledged_before_photo,
        Some(true),
        "the visit was acknowledged before the photo's bytes went"
    );
    assert_eq!(summary.photos_sent, 1);
    assert_eq!(
        (a.pending_count().unwrap(), a.pending_photo_count().unwrap()),
        (0, 0)
    );
    let sent = link.bytes_up() - start;
    assert!(
        sent < 2 * taken.len() as u64,
        "the cut upload resumed where the server's copy ended: {sent} bytes up for {}",
        taken.len()
    );
    // Another phone: the reference with the records, the bytes only when asked.
    let b = phone(&rt, &server, dir.path(), "b.db", &server.url);
    rt.block_on(b.sync(None)).unwrap();
    let seen = b.photos(hid.clone()).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].hash.as_str(), seen[0].state.as_str()),
        (photo.hash.as_str(), "remote")
    );
    let fetched = rt
        .block_on(b.photo_bytes(hid.clone(), photo.hash.clone()))
        .unwrap();
    assert_eq!(fetched, taken);
    assert_eq!(b.photos(hid).unwrap()[0].state, "fetched");
}

/// A photo the server cannot take now never holds back the records: a quota of 0 leaves the
/// photo waiting while the visit is acknowledged, and the phone keeps it for the next sync.
/// A photo over the day's quota waits, and never holds back the records; the phone then sends
/// no piece before the server's `Retry-After` has passed (a piece would only be refused).
#[test]
fn a_photo_that_must_wait_never_holds_back_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
        |config| config.photo_quota_bytes = 0,
    );
    // A fast link, only to count what the phone sends.
    let link = Link::start(
        server.addr,
        LinkConfig {
            rate: 100_000_000,
            one_way_delay: Duration::ZERO,
            ..LinkConfig::village_2g()
        },
    );
    let rt = runtime();
    let a = phone(&rt, &server, dir.path(), "a.db", &link.url);
    let hid = household(&a);
    let vid = a.record_visit(hid.clone(), visit("走访")).unwrap();
    a.attach_photo(
        hid.clone(),
        PhotoSubject::Visit { visit_id: vid },
        jpeg(10_000, 1),
        String::new(),
        0,
    )
    .unwrap();
    let before = link.bytes_up();
    let summary = rt.block_on(a.sync(None)).unwrap();
    assert_eq!(summary.accepted, 3);
    assert_eq!((summary.photos_sent, summary.photos_waiting), (0, 1));
    assert_eq!(
        (a.pending_count().unwrap(), a.pending_photo_count().unwrap()),
        (0, 1)
    );
    assert!(
        link.bytes_up() - before > 10_000,
        "the first sync tried the photo's piece"
    );
    let [photo] = &a.photos(hid.clone()).unwrap()[..] else {
        panic!("one photo")
    };
    assert_eq!(
        (photo.state.as_str(), photo.code.as_deref()),
        ("pending", Some("photo_quota"))
    );
    // The next sync, the same day: the records' round trip only, no photo byte.
    let before = link.bytes_up();
    let summary = rt.block_on(a.sync(None)).unwrap();
    assert_eq!((summary.photos_sent, summary.photos_waiting), (0, 1));
    let sent = link.bytes_up() - before;
    assert!(sent < 5_000, "no piece before Retry-After: {sent} bytes up");
}
