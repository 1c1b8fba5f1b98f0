//! Hostile phones against a real server process on 127.0.0.1 (`cargo bench -p qiaomen-tests
//! --bench hostile`; `QIAOMEN_HOSTILE_REQUESTS` sets how many, default 100,000).
//!
//! Phase 1: enrolled devices send mutated sync requests (bit flips and truncation of the body,
//! CBOR-level edits, Automerge-level forgeries of their own changes: sequence numbers, actors,
//! dependencies, operation ids, operations) while honest phones sync visits. Afterwards every
//! household the server stored must load, on the server and on a fresh phone; honest phones
//! must never have seen a 503; the server's RSS is read before, during and after.
//!
//! Phase 2: 4 devices send the most expensive requests the caps allow (five changes of 19,999
//! operations each, valid, so they are applied and validated) while an honest phone syncs:
//! the honest sync's latency, p50 and p99.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use automerge::{
    AutoCommit, Change, ROOT,
    legacy::{ObjectId, OpId},
    transaction::{CommitOptions, Transactable},
};
use qiaomen_protocol::{
    calendar::Day,
    doc::{HouseholdDoc, actor_for},
    ids::HouseholdId,
    wire::{self, CONTENT_TYPE, FEATURES, SyncRequest},
};
use qiaomen_server::storage::{SqliteStorage, Storage};
use qiaomen_tests::{Phone, enrollment_code, sample_visit, seed_test_org, upload_request};

/// Today, China time.
fn today() -> Day {
    qiaomen_protocol::workorder::day_of(qiaomen_server::access::now_ms())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A number from the process's `/proc/PID/status` (`VmRSS` in KB, `Threads`).
fn status_of(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    status_of(pid, "VmRSS")
}

/// One hostile device: its token, and a mirror of what the server holds of its household.
struct Attacker {
    token: String,
    id: HouseholdId,
    mirror: AutoCommit,
    message: String,
}

impl Attacker {
    fn next_change(&mut self, rng: &mut Rng) -> Change {
        let mut fork = self.mirror.fork();
        fork.set_actor(self.mirror.get_actor().clone());
        fork.put(ROOT, "door_number", format!("{}", rng.next()))
            .unwrap();
        fork.commit_with(
            CommitOptions::default()
                .with_message(self.message.clone())
                .with_time(1_763_000_000_000),
        );
        fork.get_last_local_change().unwrap()
    }
}

fn request(id: HouseholdId, changes: Vec<Vec<u8>>) -> SyncRequest {
    upload_request(id, changes, FEATURES)
}

/// A mutated request body; `Some(change)` when it is the unmutated honest change.
fn mutated(a: &mut Attacker, rng: &mut Rng) -> (Vec<u8>, Option<Change>) {
    let honest = a.next_change(rng);
    let mut e = honest.decode();
    e.hash = None;
    let kind = rng.below(10);
    let forged = |e: automerge::ExpandedChange| -> Vec<u8> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Change::from(e).raw_bytes().to_vec()
        }))
        .unwrap_or_default()
    };
    let change_bytes = match kind {
        0 => {
            return (
                wire::encode(&request(a.id, vec![honest.raw_bytes().to_vec()])),
                Some(honest),
            );
        }
        1 => {
            e.seq += 1 + rng.below(3);
            forged(e)
        }
        2 => {
            e.actor_id = actor_for(qiaomen_protocol::doc::actor_device(&e.actor_id).unwrap());
            forged(e)
        }
        3 => {
            e.start_op = std::num::NonZeroU64::new(1 + rng.below(e.start_op.get())).unwrap();
            forged(e)
        }
        4 => {
            e.deps.clear();
            forged(e)
        }
        5 => {
            let own = e.actor_id.clone();
            let i = rng.below(e.operations.len() as u64) as usize;
            if rng.below(2) == 0 {
                e.operations[i].pred = vec![OpId(1 + rng.below(200), own)].into();
            } else {
                e.operations[i].obj = ObjectId::Id(OpId(1 + rng.below(200), own));
            }
            forged(e)
        }
        _ => honest.raw_bytes().to_vec(),
    };
    let mut body = wire::encode(&request(a.id, vec![change_bytes]));
    match kind {
        6 => {
            // Bit flips in the compressed body.
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(body.len() as u64) as usize;
                body[at] ^= 1 << rng.below(8);
            }
        }
        7 => {
            let keep = rng.below(body.len() as u64) as usize;
            body.truncate(keep);
        }
        8 | 9 => {
            // CBOR level: a node of the message replaced, dropped or duplicated.
            let cbor = zstd::bulk::decompress(&body, 1 << 24).unwrap();
            let mut v: ciborium::Value = ciborium::from_reader(cbor.as_slice()).unwrap();
            mutate_cbor(&mut v, rng, 0);
            let mut out = Vec::new();
            ciborium::into_writer(&v, &mut out).unwrap();
            body = zstd::bulk::compress(&out, 3).unwrap();
        }
        _ => {}
    }
    (body, None)
}

fn mutate_cbor(v: &mut ciborium::Value, rng: &mut Rng, depth: u32) {
    use ciborium::Value;
    let here = depth > 0 && rng.below(3) == 0;
    match v {
        Value::Map(entries) if !entries.is_empty() && !here => {
            let i = rng.below(entries.len() as u64) as usize;
            if rng.below(6) == 0 {
                entries.remove(i);
            } else {
                mutate_cbor(&mut entries[i].1, rng, depth + 1);
            }
        }
        Value::Array(items) if !items.is_empty() && !here => {
            let i = rng.below(items.len() as u64) as usize;
            match rng.below(6) {
                0 => {
                    let dup = items[i].clone();
                    items.push(dup);
                }
                1 => {
                    items.remove(i);
                }
                _ => mutate_cbor(&mut items[i], rng, depth + 1),
            }
        }
        Value::Bytes(b) if !b.is_empty() => match rng.below(3) {
            0 => b.truncate(rng.below(b.len() as u64) as usize),
            1 => {
                let at = rng.below(b.len() as u64) as usize;
                b[at] ^= 1 << rng.below(8);
            }
            _ => *v = Value::Integer((rng.next() as i64).into()),
        },
        _ => {
            *v = match rng.below(4) {
                0 => Value::Integer((rng.next() as i64).into()),
                1 => Value::Bytes(vec![0; rng.below(40) as usize]),
                2 => Value::Text("x".into()),
                _ => Value::Null,
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let total: u64 = std::env::var("QIAOMEN_HOSTILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    seed_test_org(&data);
    // `HOSTILE_SERVER=path`: another build of the server (a baseline, side by side).
    let server_bin = std::env::var("HOSTILE_SERVER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_test_server").to_string());
    let mut child = std::process::Command::new(server_bin)
        .arg(&data)
        .arg("3600")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("server starts");
    let pid = child.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = format!("http://{}", line.trim().strip_prefix("listening ").unwrap());

    // 48 hostile devices (each under its rate limit of 20 requests/s), 4 honest phones.
    const ATTACKERS: usize = 48;
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let grid = format!("g{:02}", i % 12);
        let (_, code) = enrollment_code(&data, &[&grid]);
        let mut p = Phone::enroll(&dir.path().join(format!("a{i}.db")), &url, &code).unwrap();
        let id = p.create_households(&grid, 1)[0];
        p.sync().unwrap();
        let bytes = p.store.document(id).unwrap().save();
        let mirror = AutoCommit::load(&bytes)
            .unwrap()
            .with_actor(actor_for(p.author.device));
        attackers.push(Attacker {
            token: p.token(),
            id,
            mirror,
            message: p.author.to_message(),
        });
    }
    let mut honest = Vec::new();
    for i in 0..4 {
        let grid = format!("g{}", 20 + i);
        let (_, code) = enrollment_code(&data, &[&grid]);
        let mut p = Phone::enroll(&dir.path().join(format!("h{i}.db")), &url, &code).unwrap();
        let ids = p.create_households(&grid, 20);
        p.sync().unwrap();
        honest.push((p, ids));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = rss_kb(pid);

    // Phase 1.
    let stop = Arc::new(AtomicBool::new(false));
    let honest_syncs = Arc::new(AtomicU64::new(0));
    let honest_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut honest_threads = Vec::new();
    for (mut p, ids) in honest {
        let (stop, syncs, failures) = (stop.clone(), honest_syncs.clone(), honest_failures.clone());
        honest_threads.push(std::thread::spawn(move || {
            // One visit of this cycle per household, then its note edited at each sync (a
            // household takes at most `MAX_VISITS_PER_DAY` visits for one day).
            let day = qiaomen_protocol::calendar::cycle_of(today());
            let visits: Vec<_> = ids
                .iter()
                .map(|id| {
                    let visit = sample_visit(&p.author, day, "走访正常");
                    p.store.record_visit(*id, &visit, &[]).unwrap();
                    visit.id
                })
                .collect();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = k % ids.len();
                p.store
                    .replace_note(ids[n], visits[n], &format!("走访正常，第 {k} 次补记"))
                    .unwrap();
                k += 1;
                match p.sync() {
                    Ok(r) if r.rejected.is_empty() => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("refused {:?}", r.rejected)),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                syncs.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            (p, ids)
        }));
    }
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let threads_before = status_of(pid, "Threads");
    let peak_threads = Arc::new(AtomicU64::new(threads_before));
    let sampler = {
        let (stop, peak, peak_threads) = (stop.clone(), peak.clone(), peak_threads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                peak_threads.fetch_max(status_of(pid, "Threads"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_device = total / ATTACKERS as u64;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for (i, mut a) in attackers.into_iter().enumerate() {
            let (client, url, statuses) = (client.clone(), url.clone(), statuses.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001));
                let begun = Instant::now();
                for n in 0..per_device {
                    // 18 requests a second: under the device's rate limit.
                    let due = begun + Duration::from_secs_f64(n as f64 / 18.0);
                    tokio::time::sleep_until(due.into()).await;
                    let (body, honest) = mutated(&mut a, &mut rng);
                    let resp = client
                        .post(format!("{url}/v1/sync"))
                        .header("content-type", CONTENT_TYPE)
                        .bearer_auth(&a.token)
                        .body(body)
                        .send()
                        .await;
                    let status = match resp {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let body = r.bytes().await.unwrap_or_default();
                            if let (Some(c), 200) = (honest, s)
                                && let Ok(resp) = wire::decode::<wire::SyncResponse>(&body, 1 << 26)
                                && resp.rejected.is_empty()
                            {
                                a.mirror.apply_changes([c]).unwrap();
                            }
                            s
                        }
                        Err(_) => 0,
                    };
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let phase1 = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let honest: Vec<(Phone, Vec<HouseholdId>)> = honest_threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    sampler.join().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let rss_after = rss_kb(pid);
    // And once freed memory had time to go back (allocators trim or decay within seconds).
    std::thread::sleep(Duration::from_secs(25));
    let rss_settled = rss_kb(pid);

    // Every stored household loads on the server...
    let storage = SqliteStorage::open(&data).unwrap();
    let db = rusqlite::Connection::open(data.join("qiaomen.db")).unwrap();
    let ids: Vec<HouseholdId> = db
        .prepare("SELECT id FROM docs")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| HouseholdId(uuid_from(&b.unwrap())))
        .collect();
    let broken_server = ids
        .iter()
        .filter(|id| {
            // Loaded and read as a record, as a phone reads it.
            let bytes = storage.load_doc(**id).unwrap().unwrap();
            HouseholdDoc::load(&bytes)
                .and_then(|d| d.household())
                .is_err()
        })
        .count();
    // ... and on a fresh phone that reads the whole county.
    let (_, code) = enrollment_code(&data, &[]);
    let mut fresh = Phone::enroll(&dir.path().join("fresh.db"), &url, &code).unwrap();
    let fresh_report = fresh.sync().unwrap();
    let broken_fresh = ids
        .iter()
        .filter(|id| match fresh.store.household(**id) {
            Ok(_) => false,
            Err(e) => {
                let skipped = fresh_report.skipped_households.contains(id);
                eprintln!(
                    "a fresh phone cannot load a household (skipped by its sync: {skipped}): {e}"
                );
                true
            }
        })
        .count();
    let quarantined = storage.quarantined().unwrap().len();
    let failures = honest_failures.lock().unwrap().clone();

    // Phase 2: the most expensive requests the caps allow, from 4 devices. Each request is
    // applied in full (a household takes at most `MAX_DOC_OPS` operations, so each device
    // moves to its next household after 4 requests of ~100,000 operations).
    const HEAVY_HOUSEHOLDS: usize = 12;
    const REQUESTS_PER_HOUSEHOLD: usize = 4;
    let mut heavy = Vec::new();
    for i in 0..4 {
        let grid = format!("g{}", 30 + i);
        let (_, code) = enrollment_code(&data, &[&grid]);
        let mut p = Phone::enroll(&dir.path().join(format!("x{i}.db")), &url, &code).unwrap();
        let ids = p.create_households(&grid, HEAVY_HOUSEHOLDS);
        p.sync().unwrap();
        let households: Vec<(HouseholdId, AutoCommit)> = ids
            .into_iter()
            .map(|id| {
                let bytes = p.store.document(id).unwrap().save();
                let mirror = AutoCommit::load(&bytes)
                    .unwrap()
                    .with_actor(actor_for(p.author.device));
                (id, mirror)
            })
            .collect();
        heavy.push((p.token(), households, p.author.to_message()));
    }
    let stop2 = Arc::new(AtomicBool::new(false));
    let heavy_requests = Arc::new(AtomicU64::new(0));
    let heavy_applied = Arc::new(AtomicU64::new(0));
    let peak2 = Arc::new(AtomicU64::new(rss_kb(pid)));
    let sampler2 = {
        let (stop2, peak2) = (stop2.clone(), peak2.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                peak2.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let mut heavy_threads = Vec::new();
    for (i, (token, mut households, message)) in heavy.into_iter().enumerate() {
        let (stop2, url, count, applied) = (
            stop2.clone(),
            url.clone(),
            heavy_requests.clone(),
            heavy_applied.clone(),
        );
        heavy_threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = reqwest::Client::new();
            let mut k = 0;
            let mut sent = 0;
            while !stop2.load(Ordering::Relaxed) && sent / REQUESTS_PER_HOUSEHOLD < households.len()
            {
                let (id, mirror) = &mut households[sent / REQUESTS_PER_HOUSEHOLD];
                let mut changes = Vec::new();
                for _ in 0..5 {
                    let text = mirror
                        .put_object(ROOT, format!("bulk{i}-{k}"), automerge::ObjType::Text)
                        .unwrap();
                    k += 1;
                    mirror
                        .splice_text(&text, 0, 0, &"字".repeat(19_998))
                        .unwrap();
                    mirror.commit_with(
                        CommitOptions::default()
                            .with_message(message.clone())
                            .with_time(1_763_000_000_000),
                    );
                    changes.push(mirror.get_last_local_change().unwrap().raw_bytes().to_vec());
                }
                let body = wire::encode(&request(*id, changes));
                let answer = rt.block_on(async {
                    let r = client
                        .post(format!("{url}/v1/sync"))
                        .header("content-type", CONTENT_TYPE)
                        .bearer_auth(&token)
                        .body(body)
                        .send()
                        .await
                        .ok()?;
                    let body = r.bytes().await.ok()?;
                    wire::decode::<wire::SyncResponse>(&body, 1 << 26).ok()
                });
                if answer.is_some_and(|a| a.rejected.is_empty()) {
                    applied.fetch_add(1, Ordering::Relaxed);
                }
                count.fetch_add(1, Ordering::Relaxed);
                sent += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (mut p, hids) = honest.into_iter().next().unwrap();
    let hid = hids[0];
    let mut latencies = Vec::new();
    let mut heavy_failures = 0;
    let visit = sample_visit(
        &p.author,
        qiaomen_protocol::calendar::cycle_of(today()),
        "走访",
    );
    p.store.record_visit(hid, &visit, &[]).unwrap();
    for k in 0..40 {
        p.store
            .replace_note(hid, visit.id, &format!("走访正常 {k}"))
            .unwrap();
        let t = Instant::now();
        if p.sync().is_err() {
            heavy_failures += 1;
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(250));
    }
    stop2.store(true, Ordering::Relaxed);
    for t in heavy_threads {
        t.join().unwrap();
    }
    sampler2.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    let _ = child.kill();
    let _ = child.wait();

    let statuses = statuses.lock().unwrap().clone();
    let sent: u64 = statuses.values().sum();
    println!(
        "hostile phones against a real server process (127.0.0.1, {} cores)",
        num_cpus()
    );
    println!();
    println!("| phase 1: mutated sync requests | value |");
    println!("|---|---|");
    println!(
        "| requests from {ATTACKERS} hostile devices | {sent} in {:.0} s |",
        phase1.as_secs_f64()
    );
    for (s, n) in &statuses {
        println!(
            "| answered {} | {n} |",
            if *s == 0 {
                "nothing (connection closed)".to_string()
            } else {
                s.to_string()
            }
        );
    }
    println!("| households stored | {} |", ids.len());
    println!("| stored households that do not load on the server | {broken_server} |");
    println!("| stored households a fresh phone cannot load | {broken_fresh} |");
    println!("| quarantined households | {quarantined} |");
    println!(
        "| honest syncs (4 phones, a visit each) | {} |",
        honest_syncs.load(Ordering::Relaxed)
    );
    println!(
        "| honest syncs that failed (503 or refused) | {} |",
        failures.len()
    );
    println!(
        "| server RSS before / peak / 5 s after / 30 s after | {} / {} / {} / {} MB |",
        rss_before / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        rss_after / 1024,
        rss_settled / 1024
    );
    println!(
        "| server threads before / peak | {threads_before} / {} |",
        peak_threads.load(Ordering::Relaxed)
    );
    println!();
    println!("| phase 2: 4 devices sending 5 x 19,999-operation changes per request | value |");
    println!("|---|---|");
    println!(
        "| heavy requests sent / applied in full | {} / {} |",
        heavy_requests.load(Ordering::Relaxed),
        heavy_applied.load(Ordering::Relaxed)
    );
    println!(
        "| server RSS peak during phase 2 | {} MB |",
        peak2.load(Ordering::Relaxed) / 1024
    );
    println!(
        "| honest sync p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    println!("| honest syncs that failed | {heavy_failures} |");
    for f in failures.iter().take(5) {
        println!("honest failure: {f}");
    }
}

fn uuid_from(b: &[u8]) -> qiaomen_protocol::ids::Uuid {
    qiaomen_protocol::ids::Uuid::from_bytes(b.try_into().unwrap())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
