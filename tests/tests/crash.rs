//! A committed edit survives the process being killed at any moment.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use qiaomen_client_core::{Store, StoreOptions};
use qiaomen_protocol::{doc::Author, ids::*};

#[test]
fn every_committed_visit_survives_sigkill_mid_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let author = Author {
        user: UserId::new(),
        device: DeviceId::new(),
    };
    let mut committed: Vec<(HouseholdId, VisitId)> = Vec::new();
    // Kill after different delays so the kill lands in different phases of a write
    // (change append, index update, snapshot compaction, WAL commit).
    for (round, delay_ms) in [150u64, 230, 310, 470, 90, 620].into_iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
            .arg(&path)
            .arg(author.user.to_string())
            .arg(author.device.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first commit so the child is past its setup, then let it run.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child commits");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let lines: Vec<String> = std::iter::once(first).chain(rx.try_iter()).collect();
        let before = committed.len();
        for line in lines {
            let (hh, visit) = line.split_once(' ').expect("two ids");
            committed.push((hh.parse().unwrap(), visit.parse().unwrap()));
        }
        assert!(
            committed.len() > before,
            "round {round}: the child committed something"
        );

        // Reopen after the crash: every visit the child saw committed is there.
        let mut store = Store::open(&path, author, StoreOptions::default()).unwrap();
        let mut records = std::collections::HashMap::new();
        for (hh, visit) in &committed {
            let record = records
                .entry(*hh)
                .or_insert_with(|| store.household(*hh).unwrap());
            assert!(
                record.visits.contains_key(visit),
                "round {round}: committed visit {visit} lost"
            );
        }
        // And the store is whole: every household reads, pending covers every commit.
        for id in store.household_ids().unwrap() {
            store.household(id).unwrap();
        }
        assert!(store.pending_change_count().unwrap() as usize >= committed.len());
    }
}
