//! Bad networks, bad input and crashes.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use qiaomen_client_core::sync::Retry;
use qiaomen_protocol::{
    ChangeHash,
    calendar::Day,
    ids::*,
    schema::*,
    wire::{self, CONTENT_TYPE, DocChanges, SyncRequest},
};
use qiaomen_tests::{Phone, TestServer, enrollment_code, sample_visit};

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

fn fast_retry() -> Retry {
    Retry {
        attempts: 8,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..Retry::default()
    }
}

/// What the proxy does to one TCP connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Pass,
    /// Forward this many bytes of the request, then cut both ways.
    CutRequestAfter(usize),
    /// Forward this many bytes of the response, then cut both ways.
    CutResponseAfter(usize),
}

/// A TCP proxy on 127.0.0.1 that applies one planned fault per accepted connection.
fn start_proxy(upstream: std::net::SocketAddr, plan: Vec<Fault>) -> (String, Arc<Mutex<usize>>) {
    let (url, cuts, _) = start_counting_proxy(upstream, plan);
    (url, cuts)
}

/// [`start_proxy`], counting the bytes it forwards to the server.
fn start_counting_proxy(
    upstream: std::net::SocketAddr,
    plan: Vec<Fault>,
) -> (String, Arc<Mutex<usize>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = Arc::new(Mutex::new(0usize));
    let cuts2 = cuts.clone();
    let up = Arc::new(AtomicUsize::new(0));
    let up2 = up.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(client) = conn else { break };
            let fault = plan.get(i).copied().unwrap_or(Fault::Pass);
            let cuts = cuts2.clone();
            let up = up2.clone();
            std::thread::spawn(move || {
                let server = TcpStream::connect(upstream).unwrap();
                let (up_limit, down_limit) = match fault {
                    Fault::Pass => (usize::MAX, usize::MAX),
                    Fault::CutRequestAfter(n) => (n, usize::MAX),
                    Fault::CutResponseAfter(n) => (usize::MAX, n),
                };
                let pump = |mut from: TcpStream,
                            mut to: TcpStream,
                            limit: usize,
                            cuts: Arc<Mutex<usize>>,
                            count: Option<Arc<AtomicUsize>>| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 1024];
                        let mut sent = 0usize;
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let n_ok = n.min(limit - sent);
                            if to.write_all(&buf[..n_ok]).is_err() {
                                break;
                            }
                            if let Some(c) = &count {
                                c.fetch_add(n_ok, Ordering::Relaxed);
                            }
                            sent += n_ok;
                            if sent >= limit {
                                *cuts.lock().unwrap() += 1;
                                let _ = from.shutdown(Shutdown::Both);
                                let _ = to.shutdown(Shutdown::Both);
                                return;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    })
                };
                let a = pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    up_limit,
                    cuts.clone(),
                    Some(up),
                );
                let b = pump(server, client, down_limit, cuts, None);
                let _ = a.join();
                let _ = b.join();
            });
        }
    });
    (format!("http://{addr}"), cuts, up)
}

fn log_seq(url: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let v: serde_json::Value = reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["log_seq"].as_u64().unwrap()
    })
}

#[test]
fn a_connection_cut_mid_request_or_mid_response_retries_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let plan = vec![
        Fault::CutRequestAfter(1_500),
        Fault::CutResponseAfter(40),
        Fault::CutRequestAfter(300),
        Fault::CutResponseAfter(600),
    ];
    let (proxy, cuts) = start_proxy(server.addr, plan);
    let mut phone = phone_through(&server, &dir.path().join("p.db"), &proxy, Some(2 * 1024));
    let visits = households_with_a_visit(&mut phone, 30, |_| "断线重传".into());
    let report = phone.sync().unwrap();
    assert!(report.progress.round_trips > 1, "the upload went in chunks");
    assert!(*cuts.lock().unwrap() >= 4, "the faults happened");
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
    // Exactly once: the server log holds each of the 60 changes once.
    assert_eq!(log_seq(&server.url), 60);
    let mut observer = server.phone(&dir.path().join("o.db"), &[]);
    observer.sync().unwrap();
    for (id, visit) in visits {
        let h = observer.store.household(id).unwrap();
        assert_eq!(h.visits.keys().copied().collect::<Vec<_>>(), vec![visit]);
        assert_eq!(h, phone.store.household(id).unwrap());
    }
}

#[test]
fn after_a_lost_answer_the_phone_asks_what_the_server_holds_before_sending_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    // 40 households with a visit each (about 50 KB up); the same again through a link that loses
    // the first answer (cut after its first bytes, once the server has stored the upload).
    let upload = |name: &str, plan: Vec<Fault>| {
        let (proxy, cuts, up) = start_counting_proxy(server.addr, plan);
        let mut phone = phone_through(&server, &dir.path().join(name), &proxy, None);
        // A note of its own for each visit (what a worker types does not repeat), so the
        // body is mostly the visits' information.
        households_with_a_visit(&mut phone, 40, |i| {
            (0..400u32)
                .map(|k| char::from_u32(0x4e00 + (k * 7919 + i * 104_729) % 20_000).unwrap())
                .collect()
        });
        let report = phone.sync().unwrap();
        assert_eq!(phone.store.pending_change_count().unwrap(), 0);
        assert_eq!(report.accepted, 80);
        (up.load(Ordering::Relaxed), *cuts.lock().unwrap())
    };
    let (clean, _) = upload("clean.db", vec![]);
    let before = log_seq(&server.url);
    let (lost, cuts) = upload("lost.db", vec![Fault::CutResponseAfter(20)]);
    assert_eq!(cuts, 1, "the first answer was lost");
    assert_eq!(log_seq(&server.url), before + 80, "each change once");
    // The body went once; the retry asked about 80 hashes (~3 KB) instead of sending it again.
    assert!(
        (lost as f64) < 1.25 * clean as f64,
        "bytes up: {lost} after a lost answer, {clean} without"
    );
}

/// A phone enrolled directly (as a new user of g1's test org) that syncs through `proxy`,
/// quick to retry, in chunks of `chunk` bytes if given.
fn phone_through(
    server: &TestServer,
    path: &std::path::Path,
    proxy: &str,
    chunk: Option<usize>,
) -> Phone {
    let mut phone = server.phone(path, &[]);
    let client = qiaomen_client_core::SyncClient::new(proxy)
        .unwrap()
        .with_retry(fast_retry());
    phone.client = match chunk {
        Some(bytes) => client.with_chunk_bytes(bytes),
        None => client,
    };
    phone
}

/// `n` households of g1 made offline, each with a visit of 2026-11-15 noted `note(i)`.
fn households_with_a_visit(
    phone: &mut Phone,
    n: u32,
    note: impl Fn(u32) -> String,
) -> Vec<(HouseholdId, VisitId)> {
    (0..n)
        .map(|i| {
            let h = Household::new(
                HouseholdId::new(),
                GridId::new("g1"),
                "东村",
                format!("{i}"),
            );
            let id = phone.store.create_household(&h).unwrap();
            let v = sample_visit(&phone.author, day("2026-11-15"), &note(i));
            phone.store.record_visit(id, &v, &[]).unwrap();
            (id, v.id)
        })
        .collect()
}

/// Syncs until one completes (a failed one resumes where it was); at most `n` tries.
fn sync_until_done(phone: &mut Phone, n: usize) -> qiaomen_client_core::SyncReport {
    for _ in 0..n {
        match phone.sync() {
            Ok(r) => return r,
            Err(qiaomen_client_core::SyncError::Network { .. }) => continue,
            Err(e) => panic!("sync failed: {e}"),
        }
    }
    panic!("no sync completed in {n} tries");
}

#[test]
fn cuts_at_twenty_byte_offsets_of_requests_and_responses_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    // Ten cuts into requests and ten into responses, at offsets from the first bytes of the
    // headers to deep into the bodies (a connection's bytes count across the requests it
    // carries), one connection each; then the link behaves.
    let mut plan = Vec::new();
    for k in 0..10 {
        plan.push(Fault::CutRequestAfter(37 + k * 517));
        plan.push(Fault::CutResponseAfter(11 + k * 263));
    }
    let (proxy, cuts) = start_proxy(server.addr, plan);
    let mut phone = phone_through(&server, &dir.path().join("p.db"), &proxy, Some(2 * 1024));
    let visits = households_with_a_visit(&mut phone, 30, |_| "断线重传二十次".into());
    sync_until_done(&mut phone, 10);
    // The rest of the faults fall on a new phone's first sync (whole documents, in pieces).
    let mut observer = server.phone(&dir.path().join("o.db"), &[]);
    observer.client = qiaomen_client_core::SyncClient::new(&proxy)
        .unwrap()
        .with_retry(fast_retry())
        .with_download_pieces(4 * 1024, 4 * 1024);
    sync_until_done(&mut observer, 10);
    // Idle syncs of both phones use up what is left of the plan on the connections each
    // holds open (bounded). A connection the client opened and then left idle in its pool
    // may keep its planned cut: at least 18 of the 20 happen.
    for _ in 0..100 {
        if *cuts.lock().unwrap() >= 20 {
            break;
        }
        sync_until_done(&mut phone, 10);
        sync_until_done(&mut observer, 10);
    }
    let happened = *cuts.lock().unwrap();
    assert!(happened >= 18, "{happened} of the 20 planned cuts happened");
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
    // Exactly once: the server log holds each of the 60 changes once.
    assert_eq!(log_seq(&server.url), 60);
    sync_until_done(&mut observer, 10);
    assert_eq!(observer.store.household_ids().unwrap().len(), 30);
    for (id, visit) in visits {
        let h = observer.store.household(id).unwrap();
        assert_eq!(h.visits.keys().copied().collect::<Vec<_>>(), vec![visit]);
        assert_eq!(h, phone.store.household(id).unwrap());
    }
}

fn post(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{url}/v1/sync"))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    })
}

#[test]
fn malformed_truncated_oversized_and_random_bodies_get_a_typed_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut phone = server.phone(&dir.path().join("p.db"), &[]);
    let id = phone
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new("g1"),
            "x",
            "1",
        ))
        .unwrap();
    phone
        .store
        .record_visit(
            id,
            &sample_visit(&phone.author, day("2026-11-15"), "x"),
            &[],
        )
        .unwrap();
    phone.sync().unwrap();
    let seq = log_seq(&server.url);
    let heads = phone.store.document(id).unwrap().heads();

    let good = wire::encode(&SyncRequest {
        response_budget: None,
        agent: None,
        table: vec![],
        base_ms: 0,
        pending: None,
        features: 0,
        extras_digest: None,
        scope_digest: None,
        cursor_check: None,
        version: 1,
        cursor: Some(0),
        docs: vec![],
        grids: vec![],
        whole: None,
        journal: vec![],
        held_query: vec![],
    });
    let mut cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong media type",
            "application/json",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("empty", CONTENT_TYPE, vec![], 400, "malformed"),
        (
            "not zstd",
            CONTENT_TYPE,
            b"hello".to_vec(),
            400,
            "malformed",
        ),
        (
            "truncated",
            CONTENT_TYPE,
            good[..good.len() - 3].to_vec(),
            400,
            "malformed",
        ),
        (
            "zstd of garbage",
            CONTENT_TYPE,
            zstd::bulk::compress(b"\xff\x00garbage", 3).unwrap(),
            400,
            "malformed",
        ),
        (
            "future version",
            CONTENT_TYPE,
            wire::encode(&SyncRequest {
                response_budget: None,
                agent: None,
                table: vec![],
                base_ms: 0,
                pending: None,
                features: 0,
                extras_digest: None,
                scope_digest: None,
                cursor_check: None,
                version: 2,
                cursor: None,
                docs: vec![],
                grids: vec![],
                whole: None,
                journal: vec![],
                held_query: vec![],
            }),
            400,
            "unsupported_version",
        ),
        (
            "decompression bomb",
            CONTENT_TYPE,
            zstd::bulk::compress(&vec![0u8; 64 * 1024 * 1024], 19).unwrap(),
            413,
            "too_large",
        ),
        (
            "oversized",
            CONTENT_TYPE,
            vec![7u8; wire::limits::MAX_BODY_BYTES + 1],
            413,
            "too_large",
        ),
        (
            "cursor past the log",
            CONTENT_TYPE,
            wire::encode(&SyncRequest {
                response_budget: None,
                agent: None,
                table: vec![],
                base_ms: 0,
                pending: None,
                features: 0,
                extras_digest: None,
                scope_digest: None,
                cursor_check: None,
                version: 1,
                cursor: Some(seq + 1000),
                docs: vec![],
                grids: vec![],
                whole: None,
                journal: vec![],
                held_query: vec![],
            }),
            409,
            "cursor_ahead",
        ),
    ];
    // Random bodies, with and without the zstd magic number.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..40 {
        let len = (next() % 3000) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && body.len() > 4 {
            body[..4].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        }
        cases.push(("random", CONTENT_TYPE, body, 0, ""));
    }
    let token = phone.store.credentials().unwrap().unwrap().token;
    // Without a token, or with a made-up one: 401 before the body is read.
    for bad_token in [None, Some("qm_d_madeup")] {
        let (status, json) = post(&server.url, bad_token, CONTENT_TYPE, good.clone());
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (401, Some("unauthenticated"))
        );
    }
    for (what, ct, body, want_status, want_code) in cases {
        let (status, json) = post(&server.url, Some(&token), ct, body);
        assert!((400..500).contains(&status), "{what}: status {status}");
        let code = json["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: typed error body, got {json}"));
        if want_status != 0 {
            assert_eq!((status, code), (want_status, want_code), "{what}");
        }
    }
    // Well-formed requests carrying bad changes: refused per change, nothing stored.
    let bad = SyncRequest {
        response_budget: None,
        agent: None,
        table: vec![],
        base_ms: 0,
        pending: None,
        features: 0,
        extras_digest: None,
        scope_digest: None,
        cursor_check: None,
        version: 1,
        cursor: Some(seq),
        docs: vec![
            DocChanges {
                id,
                changes: vec![serde_bytes::ByteBuf::from(vec![1, 2, 3])],
                whole: None,
            },
            DocChanges {
                id: HouseholdId::new(),
                changes: vec![serde_bytes::ByteBuf::from(vec![
                    0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0,
                ])],
                whole: None,
            },
        ],
        grids: vec![],
        whole: None,
        journal: vec![],
        held_query: vec![],
    };
    let (status, _) = post(&server.url, Some(&token), CONTENT_TYPE, wire::encode(&bad));
    assert_eq!(status, 200);

    // The server is up, and nothing stored changed.
    assert_eq!(log_seq(&server.url), seq);
    let mut observer = server.phone(&dir.path().join("o.db"), &[]);
    observer.sync().unwrap();
    assert_eq!(observer.store.household_ids().unwrap(), vec![id]);
    assert_eq!(observer.store.document(id).unwrap().heads(), heads);
}

/// Hashes of this phone's changes that are no longer pending: acknowledged by the server.
fn acked(phone: &mut Phone, before: &HashSet<ChangeHash>) -> HashSet<ChangeHash> {
    let mut still = HashSet::new();
    for id in phone.store.pending_households().unwrap() {
        for (h, _) in phone.store.pending_changes(id).unwrap() {
            still.insert(h);
        }
    }
    before.difference(&still).copied().collect()
}

fn pending_set(phone: &mut Phone) -> HashSet<ChangeHash> {
    let mut all = HashSet::new();
    for id in phone.store.pending_households().unwrap() {
        for (h, _) in phone.store.pending_changes(id).unwrap() {
            all.insert(h);
        }
    }
    all
}

fn spawn_server(data: &std::path::Path) -> (std::process::Child, String) {
    qiaomen_tests::seed_test_org(data);
    let mut command = Command::new(env!("CARGO_BIN_EXE_test_server"));
    if let Some(url) = qiaomen_tests::database_url(data) {
        command.env("QIAOMEN_DATABASE", url);
    }
    let mut child = command
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening line")
        .to_string();
    (child, format!("http://{addr}"))
}

#[test]
fn every_change_a_phone_saw_acknowledged_survives_a_server_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (mut server, url) = spawn_server(&data);
    const PHONES: usize = 6;
    let acked_all = Arc::new(Mutex::new(HashSet::<ChangeHash>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..PHONES)
        .map(|p| {
            let (dir, url, acked_all, stop) = (
                dir.path().to_path_buf(),
                url.clone(),
                acked_all.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let (_, code) = enrollment_code(&dir.join("server"), &[]);
                let mut phone = Phone::enroll(&dir.join(format!("p{p}.db")), &url, &code).unwrap();
                phone.client = phone.client.clone().with_retry(Retry {
                    attempts: 1,
                    first_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(1),
                    ..Retry::default()
                });
                let mut ids = Vec::new();
                for round in 0..200 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let h = Household::new(
                        HouseholdId::new(),
                        GridId::new("g1"),
                        "x",
                        format!("{p}-{round}"),
                    );
                    ids.push(phone.store.create_household(&h).unwrap());
                    for id in ids.iter().rev().take(3) {
                        phone
                            .store
                            .record_visit(
                                *id,
                                &sample_visit(&phone.author, day("2026-11-30"), "kill"),
                                &[],
                            )
                            .unwrap();
                    }
                    let before = pending_set(&mut phone);
                    let _ = phone.sync(); // fails once the server is gone
                    let got = acked(&mut phone, &before);
                    acked_all.lock().unwrap().extend(got);
                }
                phone
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill().unwrap(); // SIGKILL, mid-sync
    server.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut phones: Vec<Phone> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let acked_all = acked_all.lock().unwrap().clone();
    assert!(
        acked_all.len() > 20,
        "the phones synced before the kill ({} acked)",
        acked_all.len()
    );

    // Restart on the same data: every acknowledged change is there.
    let (mut server, url) = spawn_server(&data);
    let (_, code) = enrollment_code(&data, &[]);
    let mut observer = Phone::enroll(&dir.path().join("observer.db"), &url, &code).unwrap();
    observer.sync().unwrap();
    let mut on_server = HashSet::new();
    for id in observer.store.household_ids().unwrap() {
        let doc = observer.store.document(id).unwrap();
        for bytes in doc.changes_since(&[]) {
            on_server.insert(
                automerge::Change::try_from(bytes.as_slice())
                    .unwrap()
                    .hash(),
            );
        }
    }
    let lost: Vec<_> = acked_all.difference(&on_server).collect();
    assert!(lost.is_empty(), "{} acknowledged changes lost", lost.len());
    // And the phones finish their sync against the restarted server and converge.
    for p in &mut phones {
        p.client = qiaomen_client_core::SyncClient::new(&url).unwrap();
        p.sync().unwrap();
        assert_eq!(p.store.pending_change_count().unwrap(), 0);
    }
    observer.sync().unwrap();
    for p in &mut phones {
        p.sync().unwrap();
        for id in observer.store.household_ids().unwrap() {
            assert_eq!(
                p.store.household(id).unwrap(),
                observer.store.household(id).unwrap()
            );
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Which messages a spoiling proxy spoils.
#[derive(Clone, Copy, PartialEq)]
enum Spoil {
    Requests,
    Responses,
}

/// What a spoiling proxy saw: how many packed changes it spoiled, and the `f` of each sync
/// request it forwarded.
#[derive(Default)]
struct Spoiled {
    changes: usize,
    request_features: Vec<u32>,
}

/// A proxy in front of the server that spoils the checksum of every packed change in the
/// sync requests (or the responses) it forwards, as an end whose Automerge encoded changes
/// differently would see them; everything else passes untouched. One request per connection.
fn start_spoiling_proxy(
    upstream: std::net::SocketAddr,
    spoil: Spoil,
) -> (String, Arc<Mutex<Spoiled>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spoiled = Arc::new(Mutex::new(Spoiled::default()));
    let seen = spoiled.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { break };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = spoil_one(&mut client, upstream, spoil, &seen);
            });
        }
    });
    (url, spoiled)
}

/// One HTTP message read whole: its head and its body (by its content length).
fn read_message(from: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = from.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = from.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(Some((head, buf[head_end..head_end + length].to_vec())))
}

/// `head` with `body`'s length and `connection: close`.
fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&str> = head
        .trim_end()
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("content-length") && !l.starts_with("connection")
        })
        .collect();
    let length = format!("content-length: {}", body.len());
    lines.push(&length);
    lines.push("connection: close");
    let mut out = format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Spoils the checksum of each packed change of `docs`, counting them.
fn spoil_docs(docs: &mut [wire::DocChanges], seen: &Mutex<Spoiled>) {
    for d in docs {
        for ch in d.changes.iter_mut() {
            if ch.first() == Some(&qiaomen_protocol::pack::PACKED_FORMAT) {
                ch[1] ^= 0xff;
                seen.lock().unwrap().changes += 1;
            }
        }
    }
}

fn spoil_one(
    client: &mut TcpStream,
    upstream: std::net::SocketAddr,
    spoil: Spoil,
    seen: &Mutex<Spoiled>,
) -> std::io::Result<()> {
    let Some((head, mut body)) = read_message(client)? else {
        return Ok(());
    };
    let sync = head.starts_with("POST /v1/sync");
    if sync && let Ok(mut req) = wire::decode_request(&body, wire::limits::MAX_DECODED_BYTES) {
        seen.lock().unwrap().request_features.push(req.features);
        if spoil == Spoil::Requests {
            spoil_docs(&mut req.docs, seen);
            body = wire::encode(&req);
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&with_body(&head, &body))?;
    let Some((head, mut body)) = read_message(&mut up)? else {
        return Ok(());
    };
    if sync
        && spoil == Spoil::Responses
        && let Ok(mut res) = wire::decode::<wire::SyncResponse>(&body, 64 << 20)
    {
        spoil_docs(&mut res.docs, seen);
        body = wire::encode(&res);
    }
    client.write_all(&with_body(&head, &body))?;
    client.shutdown(Shutdown::Both)
}

#[test]
fn packed_changes_the_server_cannot_rebuild_go_again_as_chunks_in_the_same_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let (proxy, spoiled) = start_spoiling_proxy(server.addr, Spoil::Requests);
    let mut phone = server.phone(&dir.path().join("p.db"), &[]);
    phone.client = qiaomen_client_core::SyncClient::new(&proxy)
        .unwrap()
        .with_retry(fast_retry());
    let ids = phone.create_households("g1", 3);
    phone.sync().unwrap();
    assert_eq!(
        spoiled.lock().unwrap().changes,
        0,
        "the first sync sends chunks"
    );
    for id in &ids {
        let v = sample_visit(&phone.author, day("2026-11-15"), "已宣传防诈骗知识。");
        phone.store.record_visit(*id, &v, &[]).unwrap();
    }
    let report = phone.sync().unwrap();
    assert_eq!(
        spoiled.lock().unwrap().changes,
        3,
        "the visits went packed, and were spoiled"
    );
    // Refused `send_raw`, sent again as chunks: nothing refused, nothing rolled back.
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(report.progress.round_trips, 2);
    assert_eq!(phone.store.pending_change_count().unwrap(), 0);
    assert!(phone.store.rejected_changes().unwrap().is_empty());
    let mut other = server.phone(&dir.path().join("o.db"), &[]);
    other.sync().unwrap();
    for id in &ids {
        assert_eq!(
            other.store.document(*id).unwrap().heads(),
            phone.store.document(*id).unwrap().heads()
        );
        assert_eq!(other.store.household(*id).unwrap().visits.len(), 1);
    }
}

#[test]
fn packed_changes_of_an_answer_that_do_not_rebuild_come_again_as_chunks_in_the_same_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let (proxy, spoiled) = start_spoiling_proxy(server.addr, Spoil::Responses);
    let mut phone = server.phone(&dir.path().join("p.db"), &[]);
    phone.client = qiaomen_client_core::SyncClient::new(&proxy)
        .unwrap()
        .with_retry(fast_retry());
    let mut other = server.phone(&dir.path().join("o.db"), &[]);
    let ids = other.create_households("g1", 3);
    other.sync().unwrap();
    phone.sync().unwrap();
    // Another device's visit day, then the phone's sync: the visits come down packed, the
    // proxy spoils them, and the phone asks for the page again as chunks.
    for id in &ids {
        let v = sample_visit(&other.author, day("2026-11-15"), "已宣传防诈骗知识。");
        other.store.record_visit(*id, &v, &[]).unwrap();
    }
    other.sync().unwrap();
    let cursor = phone.store.sync_cursor().unwrap();
    let asked = spoiled.lock().unwrap().request_features.len();
    let report = phone.sync().unwrap();
    let seen = spoiled.lock().unwrap();
    assert_eq!(seen.changes, 3, "the visits came packed, and were spoiled");
    assert_eq!(report.progress.round_trips, 2);
    let features = &seen.request_features[asked..];
    assert_eq!(features.len(), 2);
    assert_ne!(features[0] & wire::FEATURE_PACKED_DOWN, 0);
    assert_eq!(
        features[1] & wire::FEATURE_PACKED_DOWN,
        0,
        "then asked for chunks"
    );
    assert!(phone.store.sync_cursor().unwrap() > cursor);
    assert_eq!(report.received_changes, 3, "each visit once");
    assert!(report.skipped_households.is_empty());
    for id in &ids {
        assert_eq!(
            phone.store.document(*id).unwrap().heads(),
            other.store.document(*id).unwrap().heads()
        );
        assert_eq!(phone.store.household(*id).unwrap().visits.len(), 1);
    }
}
