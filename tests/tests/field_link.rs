//! The phone in the field: the FFI `Phone` (as the apps call it) through a link of our own
//! (`qiaomen_tests::link`) that behaves like a village's 2G.

use std::{sync::Arc, time::Duration};

use qiaomen::{NewHousehold, NewVisit, Phone};
use qiaomen_protocol::schema::VisitOutcome;
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

fn visit(day: &str, note: &str) -> NewVisit {
    NewVisit {
        visit_day: day.into(),
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_900_000),
        gps: None,
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![],
        disputes: vec![],
        hazards: vec![],
        publicity: vec![],
        note: note.into(),
        demands: vec![],
    }
}

/// A server on a fresh test org, its data under the returned directory.
fn started() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    (dir, server)
}

/// An FFI phone enrolled for grid `g1` through `url` (a link), its store in `dir`.
fn ffi_phone(
    rt: &tokio::runtime::Runtime,
    server: &TestServer,
    dir: &std::path::Path,
    url: &str,
) -> Arc<Phone> {
    let (_, code) = server.enrollment_code(&["g1"]);
    let path = dir.join("phone.db").to_string_lossy().into_owned();
    rt.block_on(qiaomen::enroll(path, url.to_string(), code, None))
        .expect("enrolled over the link")
}

/// A household of grid `g1` created on `phone`.
fn new_household(phone: &Phone, door: &str) -> String {
    phone
        .create_household(NewHousehold {
            grid: "g1".into(),
            address: "东村".into(),
            door_number: door.into(),
            phone: None,
            gps: None,
            tags: vec![],
        })
        .unwrap()
}

/// Waits (a bounded number of times) until `ready` holds.
fn eventually(mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

#[test]
fn the_app_records_and_reads_while_a_sync_waits_on_a_stalled_link() {
    let (dir, server) = started();
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let rt = runtime();
    let phone = ffi_phone(&rt, &server, dir.path(), &link.url);
    let household = new_household(&phone, "17");
    assert_eq!(phone.pending_count().unwrap(), 1);

    // A sync starts; once its request is on the link, the link stalls: the sync cannot end.
    let sent_before = link.bytes_up();
    let syncing = {
        let phone = phone.clone();
        rt.spawn(async move { phone.sync(None).await })
    };
    assert!(
        eventually(|| link.bytes_up() > sent_before),
        "the sync sent nothing"
    );
    link.stall(true);

    // Meanwhile the worker records a visit and reads the household: both return while the
    // sync is still in flight (before this change they waited for the whole sync).
    let recorded = {
        let phone = phone.clone();
        let household = household.clone();
        std::thread::spawn(move || {
            let id = phone
                .record_visit(household.clone(), visit("2026-11-15", "老人在家，身体尚可"))
                .expect("recorded");
            let read = phone.household(household).expect("read");
            (id, read.visits.len())
        })
    };
    assert!(
        eventually(|| recorded.is_finished()),
        "record_visit waited for the stalled sync"
    );
    let (visit_id, visits) = recorded.join().unwrap();
    assert_eq!(visits, 1);
    assert!(
        !syncing.is_finished(),
        "the sync ended through a stalled link"
    );

    // The link comes back: this sync ends, having sent what it took before the visit; the
    // visit stays pending and goes with the next sync, exactly once.
    link.stall(false);
    rt.block_on(syncing)
        .unwrap()
        .expect("the sync ends once the link moves");
    assert_eq!(
        phone.pending_count().unwrap(),
        1,
        "the visit is still pending"
    );
    rt.block_on(phone.sync(None)).expect("second sync");
    assert_eq!(phone.pending_count().unwrap(), 0);
    let (_, code) = server.enrollment_code(&["g1"]);
    let on_server = rt
        .block_on(async {
            let other_dir = dir.path().join("other.db").to_string_lossy().into_owned();
            let other = qiaomen::enroll(other_dir, server.url.clone(), code, None).await?;
            other.sync(None).await?;
            other.household(household.clone())
        })
        .expect("a second phone reads the household");
    assert_eq!(on_server.visits.len(), 1);
    assert_eq!(on_server.visits[0].id, visit_id);
}

fn quick_to_give_up() -> qiaomen_client_core::Retry {
    qiaomen_client_core::Retry {
        attempts: 6,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        stall: Duration::from_secs(1),
        give_up_after: Duration::from_secs(3),
    }
}

#[test]
fn a_stalled_link_is_reported_as_stalled_and_the_next_sync_resumes() {
    let (dir, server) = started();
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let mut phone = server.phone_via(&dir.path().join("p.db"), &link.url, &["g1"]);
    phone.client = phone.client.clone().with_retry(quick_to_give_up());
    phone.create_households("g1", 3);

    link.stall(true);
    match phone.sync() {
        Err(qiaomen_client_core::SyncError::Network { failure, .. }) => {
            assert_eq!(failure, qiaomen_client_core::NetworkFailure::Stalled)
        }
        other => panic!("a stalled link gave {other:?}"),
    }
    assert_eq!(phone.store.pending_change_count().unwrap(), 3);

    link.stall(false);
    let report = phone.sync().expect("the next sync resumes");
    assert_eq!(report.accepted, 3);
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
}

#[test]
fn no_server_is_reported_as_unreachable() {
    let (dir, server) = started();
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    phone.create_households("g1", 1);
    // Nothing listens there any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    phone.client = qiaomen_client_core::SyncClient::new(&format!("http://{addr}"))
        .unwrap()
        .with_retry(quick_to_give_up());
    match phone.sync() {
        Err(qiaomen_client_core::SyncError::Network { failure, .. }) => {
            assert_eq!(failure, qiaomen_client_core::NetworkFailure::Unreachable)
        }
        other => panic!("no server gave {other:?}"),
    }
    // The FFI names it by its code.
    let e: qiaomen::QiaomenError = qiaomen_client_core::SyncError::Network {
        failure: qiaomen_client_core::NetworkFailure::Unreachable,
        detail: String::new(),
    }
    .into();
    assert!(
        matches!(e, qiaomen::QiaomenError::Network { failure, .. } if failure == "unreachable")
    );
}

#[test]
fn a_slow_transfer_that_keeps_moving_is_never_cut() {
    let (dir, server) = started();
    // Another worker's grid history: what a new phone downloads.
    let mut first = server.phone(&dir.path().join("first.db"), &["g1"]);
    let ids = first.create_households("g1", 40);
    let day = "2026-11-15".parse().unwrap();
    for id in &ids {
        let v = qiaomen_tests::sample_visit(&first.author, day, &"走访记录，".repeat(40));
        first.store.record_visit(*id, &v, &[]).unwrap();
    }
    first.sync().unwrap();

    // 4 KB/s: the download takes several times the stall time, moving all along.
    let link = Link::start(
        server.addr,
        LinkConfig {
            rate: 4_000,
            ..LinkConfig::village_2g()
        },
    );
    let mut phone = server.phone_via(&dir.path().join("new.db"), &link.url, &["g1"]);
    phone.client = phone.client.clone().with_retry(quick_to_give_up());
    let before = link.bytes_down();
    let started = std::time::Instant::now();
    phone.sync().expect("a slow but moving download completes");
    let took = started.elapsed();
    assert_eq!(phone.store.household_ids().unwrap().len(), 40);
    assert!(
        took > Duration::from_secs(3),
        "the download should outlast the stall time ({took:?}, {} bytes): the link is too fast for this test",
        link.bytes_down() - before
    );
}

#[test]
fn the_app_sets_the_policy_and_learns_that_the_link_stalled() {
    let (dir, server) = started();
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let rt = runtime();
    let phone = ffi_phone(&rt, &server, dir.path(), &link.url);
    phone.set_sync_policy(qiaomen::SyncPolicy {
        attempts: 3,
        stall_seconds: 5.0,
        give_up_after_seconds: 5.0,
        upload_piece_bytes: 16 * 1024,
    });
    link.stall(true);
    match rt.block_on(phone.sync(None)) {
        Err(qiaomen::QiaomenError::Network { failure, .. }) => assert_eq!(failure, "stalled"),
        other => panic!("a stalled link gave {other:?}"),
    }
    link.stall(false);
    rt.block_on(phone.sync(None))
        .expect("the next sync resumes");
}

/// A grid's history from another worker: `n` households with a visit each, on the server.
/// 3 KB/s, cut every 6 s on average (seeded).
fn cut_often(server: &TestServer, seed: u64) -> Link {
    Link::start(
        server.addr,
        LinkConfig {
            rate: 3_000,
            mean_time_between_cuts: Some(Duration::from_secs(6)),
            seed,
            ..LinkConfig::village_2g()
        },
    )
}

/// Retries for a link cut that often: many, quick.
fn patient() -> qiaomen_client_core::Retry {
    qiaomen_client_core::Retry {
        attempts: 30,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        stall: Duration::from_secs(5),
        give_up_after: Duration::from_secs(60),
    }
}

fn history(server: &TestServer, dir: &std::path::Path, n: usize) {
    let mut first = server.phone(&dir.join("first.db"), &["g1"]);
    let ids = first.create_households("g1", n);
    let day = "2026-11-15".parse().unwrap();
    for id in &ids {
        let v = qiaomen_tests::sample_visit(&first.author, day, &"走访记录，".repeat(40));
        first.store.record_visit(*id, &v, &[]).unwrap();
    }
    first.sync().unwrap();
}

#[test]
fn responses_come_in_pieces_sized_to_the_link_and_a_cut_link_still_gets_there() {
    let (dir, server) = started();
    history(&server, dir.path(), 60);

    // On 127.0.0.1 directly: the whole grid in one answer.
    let mut near = server.phone(&dir.path().join("near.db"), &["g1"]);
    let report = near.sync().unwrap();
    assert_eq!(near.store.household_ids().unwrap().len(), 60);
    assert_eq!(
        report.progress.round_trips, 1,
        "a fast link takes it at once"
    );

    // Through 3 KB/s that is cut every 6 s on average: the phone asks for pieces of about
    // 8 s of link once it has measured it (here at most 48 KiB, so that a test-sized grid
    // takes several), stores each on arrival, and gets there.
    let link = cut_often(&server, 7);
    let mut far = server.phone_via(&dir.path().join("far.db"), &link.url, &["g1"]);
    far.client = far.client.clone().with_retry(patient());
    far.client = far.client.clone().with_download_pieces(8 * 1024, 48 * 1024);
    let mut syncs = 0;
    let report = loop {
        syncs += 1;
        assert!(
            syncs <= 20,
            "the first sync never completes through the cut link"
        );
        match far.sync() {
            Ok(r) => break r,
            Err(qiaomen_client_core::SyncError::Network { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(far.store.household_ids().unwrap().len(), 60);
    assert!(
        report.progress.round_trips > 1,
        "the slow link's answers came in pieces"
    );
    assert!(link.stats.cuts.load(std::sync::atomic::Ordering::Relaxed) > 0 || syncs == 1);
}

#[test]
fn uploads_go_in_pieces_sized_to_the_link_and_a_cut_link_still_gets_them_there() {
    let (dir, server) = started();
    // A week in a village without signal: 100 households found and visited offline.
    let offline = |name: &str, grid: &str| {
        let mut phone = server.phone(&dir.path().join(name), &[grid]);
        let ids = phone.create_households(grid, 100);
        let day = "2026-11-15".parse().unwrap();
        for (n, id) in ids.iter().enumerate() {
            let note: String = (0..12)
                .map(|k| qiaomen_tests::SENTENCES[(n * 7 + k * 3) % qiaomen_tests::SENTENCES.len()])
                .collect();
            let v = qiaomen_tests::sample_visit(&phone.author, day, &note);
            phone.store.record_visit(*id, &v, &[]).unwrap();
        }
        phone
    };
    let raw_bytes = |phone: &mut qiaomen_tests::Phone| -> usize {
        let ids = phone.store.pending_households().unwrap();
        ids.into_iter()
            .map(|id| {
                let changes = phone.store.pending_changes(id).unwrap();
                changes.iter().map(|(_, b)| b.len()).sum::<usize>()
            })
            .sum()
    };

    // On 127.0.0.1 directly: one sync, in few pieces (how few depends on this machine's
    // speed: the server's time counts in the rate measured).
    let mut near = offline("near.db", "g2");
    let pending = raw_bytes(&mut near);
    assert!(
        pending > 2 * 64 * 1024,
        "the week's work is larger than the first piece twice over: {pending} bytes"
    );
    let report = near.sync().unwrap();
    assert!(
        report.progress.round_trips >= 2,
        "the first piece is 64 KiB"
    );
    assert_eq!(near.store.pending_households().unwrap().len(), 0);

    // Through 3 KB/s that is cut every 6 s on average: the first piece is 64 KiB, the next
    // about 8 s of the link as measured, halved after each cut; each is acknowledged on its
    // own, and the week's work gets there.
    let link = cut_often(&server, 11);
    drop(offline("far.db", "g1"));
    let mut far = qiaomen_tests::Phone::open(&dir.path().join("far.db"), &link.url);
    far.client = far.client.clone().with_retry(patient());
    // After each answer: how many households are still pending.
    let mut left: Vec<usize> = Vec::new();
    let mut syncs = 0;
    loop {
        syncs += 1;
        assert!(
            syncs <= 20,
            "the upload never completes through the cut link: {left:?}"
        );
        let client = far.client.clone();
        let outcome = qiaomen_tests::block_on(client.sync(&mut far.store, |p| {
            left.push(p.docs_to_upload - p.docs_uploaded);
        }));
        match outcome {
            Ok(_) => break,
            Err(qiaomen_client_core::SyncError::Network { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(far.store.pending_households().unwrap().len(), 0);
    assert!(
        left.len() > 2,
        "the slow link's upload went in pieces: {left:?}"
    );
    assert!(
        left[0] > 0,
        "the first piece carried only part of the week: {left:?}"
    );

    // The server holds every visit of both phones, once.
    let mut reader = server.phone(&dir.path().join("reader.db"), &["g1", "g2"]);
    reader.sync().unwrap();
    let ids = reader.store.household_ids().unwrap();
    assert_eq!(ids.len(), 200);
    for id in ids {
        assert_eq!(reader.store.household(id).unwrap().visits.len(), 1);
    }
}

/// Households arriving, as the app sees them after each round trip.
struct Arrivals {
    phone: std::sync::Mutex<Option<Arc<Phone>>>,
    seen: std::sync::Mutex<Vec<std::collections::BTreeSet<String>>>,
}

impl qiaomen::SyncListener for Arrivals {
    fn on_progress(&self, _: qiaomen::SyncProgress) {
        let phone = self.phone.lock().unwrap().clone().expect("phone");
        let held = phone.household_ids().unwrap().into_iter().collect();
        self.seen.lock().unwrap().push(held);
    }
}

#[test]
fn a_new_phone_gets_the_most_needed_households_first_and_every_household_once() {
    use qiaomen_protocol::{
        ids::{GridId, HouseholdId},
        schema::{Household, KeyGroup, TagSpan},
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    // Small pages, so the grid comes in many.
    let server = TestServer::start_with_budget(&data, "127.0.0.1:0".parse().unwrap(), 4 * 1024);
    // A grid of 40: every tenth from the fourth has a resident living alone, every tenth
    // from the eighth a demand in hand, one a key group that ended in June.
    let mut first = server.phone(&dir.path().join("first.db"), &["g1"]);
    let day = "2026-11-15".parse().unwrap();
    let mut needed = std::collections::BTreeSet::new();
    for n in 0..40 {
        let mut h = Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "东村",
            format!("{n}号"),
        );
        let since = "2026-01-01".parse().unwrap();
        if n % 10 == 3 {
            h.tags.push(TagSpan {
                group: KeyGroup::ElderlyAlone,
                since,
                until: None,
            });
            needed.insert(h.id.to_string());
        }
        if n == 5 {
            let until = Some("2026-06-30".parse().unwrap());
            h.tags.push(TagSpan {
                group: KeyGroup::ElderlyAlone,
                since,
                until,
            });
        }
        let id = first.store.create_household(&h).unwrap();
        let mut v = qiaomen_tests::sample_visit(&first.author, day, &"走访记录，".repeat(40));
        let mut demands = vec![];
        if n % 10 == 7 {
            let d =
                qiaomen_tests::sample_demand(&first.author, qiaomen_tests::now_ms(), "路灯不亮");
            v.demands_raised = vec![d.id];
            demands.push(d);
            needed.insert(id.to_string());
        }
        first.store.record_visit(id, &v, &demands).unwrap();
    }
    // The new phone asks at once: the server's read model, which judges what is most
    // needed, reads what it has not read yet before the first page.
    first.sync().unwrap();

    let rt = runtime();
    let phone = ffi_phone(&rt, &server, dir.path(), &server.url);
    let arrivals = Arc::new(Arrivals {
        phone: std::sync::Mutex::new(Some(phone.clone())),
        seen: Default::default(),
    });
    rt.block_on(phone.sync(Some(arrivals.clone()))).unwrap();
    arrivals.phone.lock().unwrap().take();
    let seen = arrivals.seen.lock().unwrap().clone();
    assert!(
        seen.len() > 4,
        "the grid came in pieces: {} round trips",
        seen.len()
    );
    // Until the most needed are all in, the phone holds only them.
    let all_needed = seen
        .iter()
        .position(|held| held.is_superset(&needed))
        .expect("the most needed arrive");
    for held in &seen[..all_needed] {
        assert!(
            held.is_subset(&needed),
            "another household came before the most needed"
        );
    }
    assert!(
        all_needed > 0 && all_needed + 1 < seen.len(),
        "the most needed came in pieces of their own, before the rest: {all_needed} of {}",
        seen.len()
    );
    // Then the rest: every household, each visit once.
    assert_eq!(phone.household_ids().unwrap().len(), 40);
    for id in phone.household_ids().unwrap() {
        assert_eq!(phone.household(id).unwrap().visits.len(), 1);
    }
}

struct Watch {
    phone: std::sync::Mutex<Option<Arc<Phone>>>,
    seen: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl qiaomen::SyncListener for Watch {
    fn on_progress(&self, p: qiaomen::SyncProgress) {
        // The store is free during a sync: the app may read it from the listener itself.
        let phone = self.phone.lock().unwrap().clone().expect("phone");
        let pending = phone.pending_count().unwrap();
        self.seen
            .lock()
            .unwrap()
            .push((p.round_trips as u64, pending));
    }
}

#[test]
fn an_upload_is_acknowledged_in_the_first_answer_not_behind_the_download() {
    let (dir, server) = started();
    let link = Link::start(
        server.addr,
        LinkConfig {
            rate: 10_000_000,
            one_way_delay: Duration::from_millis(20),
            ..LinkConfig::village_2g()
        },
    );
    let rt = runtime();
    let phone = ffi_phone(&rt, &server, dir.path(), &link.url);
    let household = new_household(&phone, "1");
    rt.block_on(phone.sync(None)).unwrap();
    // While the phone is away, another worker records a lot; the phone records three visits.
    history(&server, dir.path(), 80);
    for note in ["一", "二", "三"] {
        phone
            .record_visit(household.clone(), visit("2026-11-15", note))
            .unwrap();
    }
    assert_eq!(phone.pending_count().unwrap(), 3);
    link.set_rate(20_000);
    let watch = Arc::new(Watch {
        phone: std::sync::Mutex::new(Some(phone.clone())),
        seen: Default::default(),
    });
    let summary = rt.block_on(phone.sync(Some(watch.clone()))).unwrap();
    watch.phone.lock().unwrap().take();
    let seen = watch.seen.lock().unwrap().clone();
    assert!(
        summary.progress.round_trips > 1,
        "the download came in pieces: {seen:?}"
    );
    assert_eq!(
        seen.first(),
        Some(&(1, 0)),
        "the three visits were acknowledged by the first answer"
    );
    assert_eq!(phone.household_ids().unwrap().len(), 81);
}

/// The app cancels a sync (the user leaves the screen: the future is dropped) at several
/// moments of a first sync over 2G, uploads pending; each time the store stays whole and the
/// app keeps working, and the next sync that runs to its end leaves nothing pending and the
/// phone holding the whole grid, each change once.
#[test]
fn a_sync_cancelled_at_any_moment_leaves_the_store_whole_and_the_next_one_completes() {
    let (dir, server) = started();
    // The grid already holds 30 households of another worker.
    let mut other = server.phone(&dir.path().join("other.db"), &["g1"]);
    other.create_households("g1", 30);
    other.sync().unwrap();
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let rt = runtime();
    let phone = ffi_phone(&rt, &server, dir.path(), &link.url);
    let mine: Vec<String> = (0..5)
        .map(|i| new_household(&phone, &format!("{i}号")))
        .collect();
    for h in &mine {
        phone
            .record_visit(h.clone(), visit("2026-11-15", "走访正常"))
            .unwrap();
    }
    let pending = phone.pending_count().unwrap();
    assert_eq!(pending, 10);
    let mut cut_short = 0;
    for wait_ms in [150u64, 700, 1500, 2500] {
        let task = {
            let phone = phone.clone();
            rt.spawn(async move { phone.sync(None).await })
        };
        std::thread::sleep(Duration::from_millis(wait_ms));
        cut_short += usize::from(!task.is_finished());
        task.abort();
        let _ = rt.block_on(task);
        // The app goes on at once: reads, and records.
        assert_eq!(phone.household(mine[0].clone()).unwrap().visits.len(), 1);
        assert!(phone.pending_count().unwrap() <= pending);
    }
    assert!(cut_short >= 2, "the syncs were cancelled while running");
    let extra = phone
        .record_visit(mine[1].clone(), visit("2026-11-30", "第二次走访"))
        .unwrap();
    rt.block_on(phone.sync(None))
        .expect("a sync left to finish");
    assert_eq!(phone.pending_count().unwrap(), 0);
    assert_eq!(phone.household_ids().unwrap().len(), 35);
    // The server holds each of this phone's changes once: a fresh phone reads them.
    let (_, code) = server.enrollment_code(&["g1"]);
    let fresh_path = dir.path().join("fresh.db").to_string_lossy().into_owned();
    let fresh = rt
        .block_on(qiaomen::enroll(fresh_path, server.url.clone(), code, None))
        .unwrap();
    rt.block_on(fresh.sync(None)).unwrap();
    assert_eq!(fresh.household_ids().unwrap().len(), 35);
    let second = fresh.household(mine[1].clone()).unwrap();
    assert_eq!(second.visits.len(), 2);
    assert!(second.visits.iter().any(|v| v.id == extra));
}
