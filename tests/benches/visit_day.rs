//! `visit-day`: N workers × H households against a real server process over loopback.
//!
//! Reports, per worker: round trips, bytes up and down, against the zstd information floor of
//! the visits and against raw Automerge per-document sync on the same documents and the same
//! edits (both measured in this run); and for the server: visits ingested per second with all
//! phones syncing at once, p50/p99 sync latency while 320 visits/s are offered, and peak
//! memory (VmHWM) of the server process.
//!
//! Run: `cargo bench -p qiaomen-tests --bench visit_day` (`QIAOMEN_BENCH_QUICK=1` for a
//! smaller smoke run). With `QIAOMEN_BENCH_DATABASE` (a PostgreSQL URL; the bench makes a
//! schema of its own there) the servers keep everything in PostgreSQL, and
//! `QIAOMEN_BENCH_SERVERS=2` runs two of them on it, the phones spread over both.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use automerge::{AutoCommit, sync::SyncDoc};
use qiaomen_client_core::{Durability, Store, StoreOptions, SyncClient};
use qiaomen_protocol::{calendar::Day, doc::Author, ids::*, schema::*, wire::to_cbor};
use qiaomen_tests::sample_visit;

struct Worker {
    store: Store,
    client: SyncClient,
    author: Author,
    households: Vec<HouseholdId>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sync(w: &mut Worker) -> qiaomen_client_core::SyncReport {
    rt().block_on(w.client.sync(&mut w.store, |_| {}))
        .expect("sync")
}

use qiaomen_tests::SENTENCES;

/// A visit with realistic variety: notes, needs, hazards, GPS and times differ per visit.
fn varied_visit(author: &Author, day: Day, seed: u64) -> Visit {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |n: usize| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        (x % n as u64) as usize
    };
    let note: String = (0..4 + next(4))
        .map(|_| SENTENCES[next(SENTENCES.len())])
        .collect();
    let mut v = sample_visit(author, day, &note);
    v.started_at_ms = 1_763_164_800_000 + next(36_000_000) as i64;
    v.ended_at_ms = Some(v.started_at_ms + 300_000 + next(1_200_000) as i64);
    v.gps = Some(Gps {
        lat: 34.70 + next(10_000) as f64 / 1e5,
        lon: 113.60 + next(10_000) as f64 / 1e5,
        accuracy_m: Some(3.0 + next(20) as f64),
    });
    v.people_met = (0..1 + next(3)).map(|_| MemberId::new()).collect();
    let cats = [
        NeedCategory::Housing,
        NeedCategory::HealthCare,
        NeedCategory::Education,
        NeedCategory::ElderlyCare,
        NeedCategory::Other,
    ];
    v.needs = (0..next(3))
        .map(|_| Need {
            category: cats[next(5)],
            detail: SENTENCES[next(SENTENCES.len())].into(),
        })
        .collect();
    v.hazards = (0..next(2))
        .map(|_| Hazard {
            kind: HazardKind::Electrical,
            detail: SENTENCES[next(SENTENCES.len())].into(),
        })
        .collect();
    v.outcome = if next(10) == 0 {
        VisitOutcome::NobodyHome
    } else {
        VisitOutcome::Met
    };
    v
}

/// A worker's whole pending upload as one sync request, its changes packed (SYNC-v1 §4.4)
/// as the phone packs them, or sent as Automerge chunks.
/// A response carrying `docs`, their changes packed as a server packs them for a phone
/// announcing bit 128 (SYNC-v1 §4.4.1), or as they are.
fn download_response(
    mut docs: Vec<qiaomen_protocol::wire::DocChanges>,
    packed: bool,
) -> qiaomen_protocol::wire::SyncResponse {
    let mut packer = qiaomen_protocol::pack::Packer::new();
    if packed {
        for c in docs.iter_mut().flat_map(|d| d.changes.iter_mut()) {
            if let Some(p) = packer.pack_bytes(c) {
                *c = serde_bytes::ByteBuf::from(p);
            }
        }
    }
    qiaomen_protocol::wire::SyncResponse {
        version: 1,
        cursor: 1 << 20,
        accepted: 25,
        rejected: vec![],
        docs,
        more: false,
        cursor_check: Some(serde_bytes::ByteBuf::from(vec![0x5a; 32])),
        scope: None,
        features: qiaomen_protocol::wire::FEATURES,
        extras_digest: None,
        retire: None,
        rights: None,
        whole: None,
        journal: vec![],
        held: None,
        table: packer.wire_table(),
        base_ms: packer.base_ms(),
    }
}

fn upload_request(
    w: &mut Worker,
    cursor: Option<u64>,
    grids: Vec<String>,
    packed: bool,
) -> qiaomen_protocol::wire::SyncRequest {
    let mut packer = qiaomen_protocol::pack::Packer::new();
    let docs = w
        .households
        .clone()
        .into_iter()
        .map(|id| qiaomen_protocol::wire::DocChanges {
            id,
            changes: w
                .store
                .pending_changes(id)
                .unwrap()
                .into_iter()
                .map(|(_, b)| {
                    let p = if packed { packer.pack_bytes(&b) } else { None };
                    serde_bytes::ByteBuf::from(p.unwrap_or(b))
                })
                .collect(),
            whole: None,
        })
        .collect();
    qiaomen_protocol::wire::SyncRequest {
        response_budget: None,
        agent: None,
        table: packer.wire_table(),
        base_ms: if packed { packer.base_ms() } else { 0 },
        pending: None,
        features: qiaomen_protocol::wire::FEATURES,
        extras_digest: None,
        scope_digest: None,
        version: 1,
        cursor,
        docs,
        grids,
        cursor_check: None,
        whole: None,
        journal: vec![],
        held_query: vec![],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A store enrolled with the server as a new worker of `grids`.
/// Where the servers keep their store: the embedded one in a data folder, or PostgreSQL.
enum Backend {
    Embedded(std::path::PathBuf),
    Postgres(String),
}

impl Backend {
    fn access(&self) -> qiaomen_server::access::AccessDb {
        match self {
            Backend::Embedded(dir) => qiaomen_server::access::AccessDb::open(dir).unwrap(),
            Backend::Postgres(url) => qiaomen_server::access::AccessDb::on_postgres(
                &qiaomen_server::storage::PgStorage::connect(url, 1).unwrap(),
            ),
        }
    }
}

/// Runs `sql` on its own connection to `url`.
fn enrolled(
    backend: &Backend,
    path: &std::path::Path,
    url: &str,
    grids: &[&str],
    options: StoreOptions,
) -> Store {
    let (_, code) = qiaomen_tests::enrollment_code_in(&mut backend.access(), grids);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(qiaomen_client_core::enroll(path, url, &code, options))
        .unwrap()
}

fn main() {
    let quick = std::env::var_os("QIAOMEN_BENCH_QUICK").is_some();
    let (n_workers, h) = if quick { (8, 25) } else { (64, 25) };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let schema = format!("bench_visit_day_{}", std::process::id());
    let backend = match std::env::var("QIAOMEN_BENCH_DATABASE") {
        Ok(base) => {
            qiaomen_tests::psql(
                &base,
                &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"),
            );
            Backend::Postgres(qiaomen_tests::in_schema(&base, &schema))
        }
        Err(_) => Backend::Embedded(data.clone()),
    };
    let n_servers: usize = match backend {
        Backend::Postgres(_) => std::env::var("QIAOMEN_BENCH_SERVERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1),
        Backend::Embedded(_) => 1,
    };
    qiaomen_tests::seed_test_org_in(&mut backend.access());
    let mut servers: Vec<std::process::Child> = (0..n_servers)
        .map(|i| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_test_server"));
            command.arg(if i == 0 {
                data.clone()
            } else {
                dir.path().join(format!("server{i}"))
            });
            if let Backend::Postgres(url) = &backend {
                command.env("QIAOMEN_DATABASE", url);
            }
            command
                .stdout(Stdio::piped())
                .stderr(match std::env::var_os("QIAOMEN_BENCH_SERVER_LOG") {
                    Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                    None => Stdio::null(),
                })
                .spawn()
                .unwrap()
        })
        .collect();
    let urls: Vec<String> = servers
        .iter_mut()
        .map(|server| {
            let mut line = String::new();
            BufReader::new(server.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            format!("http://{}", line.trim().strip_prefix("listening ").unwrap())
        })
        .collect();
    let url = urls[0].clone();
    let day: Day = "2026-11-15".parse().unwrap();

    // Setup: a registry creates every household; each worker's phone takes its grid.
    let fast = StoreOptions {
        durability: Durability::Normal,
        ..StoreOptions::default()
    };
    let grid_names: Vec<String> = (0..n_workers).map(|g| format!("g{g:03}")).collect();
    let all: Vec<&str> = grid_names.iter().map(String::as_str).collect();
    let store = enrolled(
        &backend,
        &dir.path().join("registry.db"),
        &url,
        &all,
        fast.clone(),
    );
    let mut registry = Worker {
        author: *store.author(),
        store,
        client: SyncClient::new(&url).unwrap(),
        households: vec![],
    };
    let mut grids = Vec::new();
    for g in 0..n_workers {
        let ids: Vec<_> = (0..h)
            .map(|i| {
                let mut hh = Household::new(
                    HouseholdId::new(),
                    GridId::new(format!("g{g:03}")),
                    "河南省某县东村三组",
                    format!("{i:03}"),
                );
                if i % 4 == 0 {
                    hh.tags.push(TagSpan {
                        group: KeyGroup::ElderlyAlone,
                        since: "2024-01-01".parse().unwrap(),
                        until: None,
                    });
                }
                registry.store.create_household(&hh).unwrap()
            })
            .collect();
        grids.push(ids);
    }
    sync(&mut registry);
    let mut workers: Vec<Worker> = (0..n_workers)
        .map(|g| {
            // The workers spread over the servers.
            let url = &urls[g % urls.len()];
            let store = enrolled(
                &backend,
                &dir.path().join(format!("w{g}.db")),
                url,
                &[grid_names[g].as_str()],
                StoreOptions::default(),
            );
            let mut w = Worker {
                author: *store.author(),
                store,
                client: SyncClient::new(url).unwrap(),
                households: grids[g].clone(),
            };
            sync(&mut w);
            w
        })
        .collect();

    // Baseline documents for worker 0, captured before the visit day: server and phone copies
    // in sync, with Automerge sync states that have already converged once.
    let mut base_pairs: Vec<(
        AutoCommit,
        AutoCommit,
        automerge::sync::State,
        automerge::sync::State,
    )> = workers[0]
        .households
        .clone()
        .iter()
        .map(|id| {
            let bytes = workers[0].store.document(*id).unwrap().save();
            let mut server_doc = AutoCommit::load(&bytes).unwrap();
            let mut phone_doc = AutoCommit::load(&bytes).unwrap();
            let (mut ss, mut ps) = (automerge::sync::State::new(), automerge::sync::State::new());
            for _ in 0..10 {
                let a = phone_doc.sync().generate_sync_message(&mut ps);
                let b = server_doc.sync().generate_sync_message(&mut ss);
                if a.is_none() && b.is_none() {
                    break;
                }
                if let Some(m) = a {
                    server_doc.sync().receive_sync_message(&mut ss, m).unwrap();
                }
                if let Some(m) = b {
                    phone_doc.sync().receive_sync_message(&mut ps, m).unwrap();
                }
            }
            (server_doc, phone_doc, ss, ps)
        })
        .collect();

    // The visit day. The supervisor adds a visit to every household (one visit each side).
    let mut supervisor0_visits = Vec::new();
    for ids in &grids {
        for id in ids {
            let v = varied_visit(
                &registry.author,
                day,
                id.as_bytes()[14] as u64 * 7919 + id.as_bytes()[15] as u64,
            );
            registry.store.record_visit(*id, &v, &[]).unwrap();
            if workers[0].households.contains(id) {
                supervisor0_visits.push(v);
            }
        }
    }
    sync(&mut registry);
    // What worker 0 will download: the supervisor's visits to its households, as Automerge
    // chunks (how v1 sent them before SYNC-v1 §4.4.1) and packed, in a response's CBOR.
    let down_docs: Vec<qiaomen_protocol::wire::DocChanges> = workers[0]
        .households
        .clone()
        .into_iter()
        .map(|id| {
            let have = workers[0].store.document(id).unwrap().heads();
            qiaomen_protocol::wire::DocChanges {
                id,
                changes: registry
                    .store
                    .document(id)
                    .unwrap()
                    .changes_since(&have)
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                whole: None,
            }
        })
        .collect();
    let down_chunks_cbor = to_cbor(&download_response(down_docs.clone(), false));
    let down_packed_cbor = to_cbor(&download_response(down_docs.clone(), true));
    // What packing and compressing that answer costs the server (median of 20).
    let server_ms = |packed: bool| {
        let mut t: Vec<Duration> = (0..20)
            .map(|_| {
                let started = Instant::now();
                let body = qiaomen_protocol::wire::encode_response(&download_response(
                    down_docs.clone(),
                    packed,
                ));
                std::hint::black_box(body);
                started.elapsed()
            })
            .collect();
        t.sort();
        t[t.len() / 2].as_secs_f64() * 1000.0
    };
    let (pack_ms, chunks_ms) = (server_ms(true), server_ms(false));
    // Each worker records a visit to each of its households, offline.
    let mut worker0_visits = Vec::new();
    for (g, w) in workers.iter_mut().enumerate() {
        for id in w.households.clone() {
            let seed = (g * 1000 + w.store.household_ids().map(|v| v.len()).unwrap_or(0)) as u64
                ^ u64::from_le_bytes(id.as_bytes()[8..16].try_into().unwrap());
            let v = varied_visit(&w.author, day, seed);
            w.store.record_visit(id, &v, &[]).unwrap();
            if g == 0 {
                worker0_visits.push(v);
            }
        }
    }

    // Baseline, same documents and the same edits: apply worker 0's visit changes and the
    // supervisor's to the copies, then run Automerge's sync protocol per document, batching
    // every document's message into one request per round.
    let (json_bytes, floor) = qiaomen_tests::visit_json_floor(&worker0_visits);
    let (down_json_bytes, down_floor) = qiaomen_tests::visit_json_floor(&supervisor0_visits);
    let mut base_rounds = 0;
    let (mut base_up, mut base_down) = (0usize, 0usize);
    {
        for (i, id) in workers[0].households.clone().iter().enumerate() {
            let mine: Vec<Vec<u8>> = workers[0]
                .store
                .pending_changes(*id)
                .unwrap()
                .into_iter()
                .map(|(_, b)| b)
                .collect();
            let theirs: Vec<Vec<u8>> = {
                let doc = registry.store.document(*id).unwrap();
                let phone_heads = base_pairs[i].1.get_heads();
                doc.changes_since(&phone_heads)
            };
            let (server_doc, phone_doc, _, _) = &mut base_pairs[i];
            phone_doc
                .apply_changes(
                    mine.iter()
                        .map(|b| automerge::Change::try_from(b.as_slice()).unwrap()),
                )
                .unwrap();
            server_doc
                .apply_changes(
                    theirs
                        .iter()
                        .map(|b| automerge::Change::try_from(b.as_slice()).unwrap()),
                )
                .unwrap();
        }
        loop {
            let mut up = 0;
            let mut down = 0;
            let mut any = false;
            for (server_doc, phone_doc, ss, ps) in base_pairs.iter_mut() {
                if let Some(m) = phone_doc.sync().generate_sync_message(ps) {
                    any = true;
                    let bytes = m.encode();
                    up += bytes.len();
                    server_doc
                        .sync()
                        .receive_sync_message(ss, automerge::sync::Message::decode(&bytes).unwrap())
                        .unwrap();
                }
                if let Some(m) = server_doc.sync().generate_sync_message(ss) {
                    any = true;
                    let bytes = m.encode();
                    down += bytes.len();
                    phone_doc
                        .sync()
                        .receive_sync_message(ps, automerge::sync::Message::decode(&bytes).unwrap())
                        .unwrap();
                }
            }
            if !any {
                break;
            }
            base_rounds += 1;
            base_up += up;
            base_down += down;
            assert!(base_rounds < 10);
        }
        for (server_doc, phone_doc, _, _) in base_pairs.iter_mut() {
            assert_eq!(server_doc.get_heads(), phone_doc.get_heads());
        }
    }

    // Worker 0's upload, as chunks (how v1 sent it before packing) and packed, at zstd levels.
    let chunks_cbor = to_cbor(&upload_request(&mut workers[0], Some(0), vec![], false));
    let packed_cbor = to_cbor(&upload_request(&mut workers[0], Some(0), vec![], true));
    let levels: Vec<(&str, i32, usize)> = [
        ("Automerge chunks", &chunks_cbor, 3),
        ("Automerge chunks", &chunks_cbor, 19),
        ("packed", &packed_cbor, 3),
        ("packed", &packed_cbor, 19),
    ]
    .iter()
    .map(|(form, body, l)| (*form, *l, zstd::bulk::compress(body, *l).unwrap().len()))
    .collect();
    // A protocol-v2 candidate: a zstd dictionary trained on other workers' packed changes
    // (never worker 0's), shipped with both ends.
    let samples: Vec<Vec<u8>> = workers
        .iter_mut()
        .skip(1)
        .flat_map(|w| {
            let ids = w.households.clone();
            let mut packer = qiaomen_protocol::pack::Packer::new();
            ids.into_iter()
                .flat_map(|id| {
                    w.store
                        .pending_changes(id)
                        .unwrap()
                        .into_iter()
                        .filter_map(|(_, b)| packer.pack_bytes(&b))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let dict_size = if samples.len() >= 50 {
        let dict = zstd::dict::from_samples(&samples, 32 * 1024).unwrap();
        let mut c = zstd::bulk::Compressor::with_dictionary(19, &dict).unwrap();
        Some((
            dict.len(),
            samples.len(),
            c.compress(&packed_cbor).unwrap().len(),
        ))
    } else {
        None
    };

    // Groups: A (a quarter, with worker 0) syncs at once as whole phones; R (a quarter) sends
    // pre-encoded uploads at once, so the server's own ingest rate shows without the phones'
    // work on the same cores; B (the other half) syncs paced at 320 visits/s.
    let quarter = (n_workers / 4).max(1);
    let mut rest: Vec<Worker> = workers.split_off(quarter);
    let mut phase_b: Vec<Worker> = rest.split_off(quarter.min(rest.len()));
    let raw_group = rest;

    // Phase R: server ingest alone.
    let bodies: Vec<(Vec<u8>, String)> = raw_group
        .into_iter()
        .map(|mut w| {
            let cursor = w.store.sync_cursor().unwrap();
            let token = w.store.credentials().unwrap().unwrap().token;
            let req = upload_request(&mut w, cursor, vec!["g-none".into()], true);
            (qiaomen_protocol::wire::encode_request(&req), token)
        })
        .collect();
    let raw_visits = bodies.len() * h;
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let raw_started = Instant::now();
    multi.block_on(async {
        let tasks: Vec<_> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, (body, token))| {
                let (http, url) = (http.clone(), urls[i % urls.len()].clone());
                tokio::spawn(async move {
                    let r = http
                        .post(format!("{url}/v1/sync"))
                        .header("content-type", qiaomen_protocol::wire::CONTENT_TYPE)
                        .bearer_auth(token)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let raw_time = raw_started.elapsed();

    // Phase A: whole phones at once (closed loop).
    let burst_visits = workers.len() * h;
    let half = workers.len();
    let started = Instant::now();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = sync(&mut w);
                (w, r, t.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let burst = started.elapsed();
    let w0 = &results[0].1;

    // Phase B: the other half syncs paced so that 320 visits/s are offered (open loop).
    let interval = Duration::from_secs_f64(h as f64 / 320.0);
    let paced_start = Instant::now();
    let mut handles = Vec::new();
    for (i, mut w) in phase_b.drain(..).enumerate() {
        let due = paced_start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        handles.push(std::thread::spawn(move || {
            let t = Instant::now();
            sync(&mut w);
            t.elapsed()
        }));
    }
    let mut lat: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    lat.sort();
    let mut burst_lat: Vec<Duration> = results.iter().map(|r| r.2).collect();
    burst_lat.sort();

    let status =
        std::fs::read_to_string(format!("/proc/{}/status", servers[0].id())).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ? kB")
        .to_string();
    for server in &mut servers {
        server.kill().ok();
        server.wait().ok();
    }
    if let (Ok(base), Backend::Postgres(_)) = (std::env::var("QIAOMEN_BENCH_DATABASE"), &backend) {
        qiaomen_tests::psql(&base, &format!("DROP SCHEMA {schema} CASCADE;"));
    }

    println!(
        "## visit-day: {n_workers} workers × {h} households, one visit each side per household\n"
    );
    println!("| per worker (worker 0) | Qiaomen v1 | Automerge sync, per document | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| round trips | {} | {} | {:.2}× |",
        w0.progress.round_trips,
        base_rounds,
        w0.progress.round_trips as f64 / base_rounds as f64
    );
    println!(
        "| bytes up | {} | {} | {:.2}× |",
        w0.progress.bytes_up,
        base_up,
        w0.progress.bytes_up as f64 / base_up as f64
    );
    println!(
        "| bytes down | {} | {} | {:.2}× |",
        w0.progress.bytes_down,
        base_down,
        w0.progress.bytes_down as f64 / base_down as f64
    );
    println!(
        "| bytes up ÷ zstd information floor ({floor} B; JSON {json_bytes} B) | {:.2}× | {:.2}× | |",
        w0.progress.bytes_up as f64 / floor as f64,
        base_up as f64 / floor as f64
    );
    println!(
        "| bytes down ÷ zstd information floor of the supervisor's visits ({down_floor} B; JSON {down_json_bytes} B) | {:.2}× | {:.2}× | |",
        w0.progress.bytes_down as f64 / down_floor as f64,
        base_down as f64 / down_floor as f64
    );
    println!();
    println!(
        "| worker 0's download body (CBOR: {} B as chunks, {} B packed) | bytes | ÷ floor |",
        down_chunks_cbor.len(),
        down_packed_cbor.len()
    );
    println!("|---|---|---|");
    println!(
        "| the server's time for that answer (median of 20): packed + encoded / chunks encoded | {pack_ms:.2} / {chunks_ms:.2} ms | |"
    );
    for (form, body) in [
        ("Automerge chunks", &down_chunks_cbor),
        ("packed", &down_packed_cbor),
    ] {
        for l in [3, 9, 19] {
            let n = zstd::bulk::compress(body, l).unwrap().len();
            println!(
                "| {form}, zstd level {l} | {n} | {:.2}× |",
                n as f64 / down_floor as f64
            );
        }
    }
    println!();
    println!(
        "| worker 0's upload body (CBOR: {} B as chunks, {} B packed) | bytes | ÷ floor |",
        chunks_cbor.len(),
        packed_cbor.len()
    );
    println!("|---|---|---|");
    for (form, l, n) in &levels {
        println!(
            "| {form}, zstd level {l} | {n} | {:.2}× |",
            *n as f64 / floor as f64
        );
    }
    if let Some((dict_len, n_samples, n)) = dict_size {
        println!(
            "| packed, zstd level 19 + a {dict_len} B dictionary trained on {n_samples} other workers' packed changes (not in the protocol) | {n} | {:.2}× |",
            n as f64 / floor as f64
        );
    }
    println!();
    println!("| server | value |");
    println!("|---|---|");
    println!(
        "| store | {} |",
        match backend {
            Backend::Embedded(_) => "embedded SQLite, one server".to_string(),
            Backend::Postgres(_) =>
                format!("PostgreSQL, {n_servers} server(s), phones spread over them"),
        }
    );
    println!(
        "| server ingest alone: {raw_visits} visits in {} pre-encoded uploads sent at once | {:.0} visits/s ({:.0} ms) |",
        raw_visits / h,
        raw_visits as f64 / raw_time.as_secs_f64(),
        raw_time.as_secs_f64() * 1000.0
    );
    println!(
        "| visits ingested durably, {half} whole phones at once | {:.0} visits/s ({burst_visits} visits in {:.0} ms) |",
        burst_visits as f64 / burst.as_secs_f64(),
        burst.as_secs_f64() * 1000.0
    );
    println!(
        "| sync latency, all at once: p50 / p99 | {:.0} / {:.0} ms |",
        percentile(&burst_lat, 0.5).as_secs_f64() * 1e3,
        percentile(&burst_lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| sync latency at 320 visits/s offered ({} syncs of {h} visits): p50 / p99 | {:.0} / {:.0} ms |",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| server peak memory | {} |",
        hwm.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
}
