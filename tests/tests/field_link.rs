//! The phone in the field: the FFI `Phone` (as the apps call it) through a link of our own
//! (`qiaomen_tests::link`) that behaves like a village's 2G.

use std::{sync::Arc, time::Duration};

use qiaomen::{NewHousehold, NewVisit, Phone};
use qiaomen_protocol::schema::VisitOutcome;
use qiaomen_tests::{
    TestServer, enrollment_code,
    link::{Link, LinkConfig},
    seed_test_org,
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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    seed_test_org(&data);
    let server = TestServer::start(&data);
    let link = Link::start(server.addr, LinkConfig::village_2g());
    let (_, code) = enrollment_code(&data, &["g1"]);
    let rt = runtime();
    let path = dir.path().join("phone.db").to_string_lossy().into_owned();
    let phone: Arc<Phone> = rt
        .block_on(qiaomen::enroll(path, link.url.clone(), code))
        .expect("enrolled over the link");
    let household = phone
        .create_household(NewHousehold {
            grid: "g1".into(),
            address: "东村".into(),
            door_number: "17".into(),
            phone: None,
            gps: None,
            tags: vec![],
        })
        .unwrap();
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
    let on_server = rt
        .block_on(async {
            let other_dir = dir.path().join("other.db").to_string_lossy().into_owned();
            let (_, code) = enrollment_code(&data, &["g1"]);
            let other = qiaomen::enroll(other_dir, server.url.clone(), code).await?;
            other.sync(None).await?;
            other.household(household.clone())
        })
        .expect("a second phone reads the household");
    assert_eq!(on_server.visits.len(), 1);
    assert_eq!(on_server.visits[0].id, visit_id);
}
