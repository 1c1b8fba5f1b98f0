//! What a county's IT office runs the server with (issue 19), against the real server on
//! 127.0.0.1: the metrics a scrape reads after a visit day, `/readyz`, and backups taken
//! while phones sync.

use std::collections::BTreeMap;

use qiaomen_protocol::{calendar::cycle_of, wire};
use qiaomen_server::http::ops::MetricsToken;
use qiaomen_tests::{
    TestServer, block_on, get_raw, get_text, post_form, raw_upload, sample_visit, today,
    upload_request,
};

const METRICS_TOKEN: &str = "scrape-token-0123456789";

fn server_with_metrics(dir: &tempfile::TempDir) -> TestServer {
    TestServer::start_with(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
        |config| config.edge.metrics_token = Some(MetricsToken::new(METRICS_TOKEN)),
    )
}

/// The samples of an OpenMetrics text: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let (status, content_type, body) = get_raw(&format!("{}/metrics", server.url), METRICS_TOKEN);
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("# EOF\n"));
    samples(&text)
}

/// A scrape after a visit day shows the counts the run produced: sync requests, their
/// bytes, changes accepted and refused by code, a refused login, phones by last sync; the
/// read model catches up and `/readyz` says so.
#[test]
fn metrics_scraped_after_a_visit_day_show_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_metrics(&dir);
    let day = cycle_of(today());
    let mut requests = 0u64;
    let mut bytes_in = 0u64;
    let mut bytes_out = 0u64;
    let mut accepted = 0u64;
    let mut phones = Vec::new();
    for i in 0..3 {
        let grid = format!("g{i}");
        let mut phone = server.phone(&dir.path().join(format!("p{i}.db")), &[&grid]);
        let ids = phone.create_households(&grid, 4);
        for id in &ids {
            let v = sample_visit(&phone.author, day, "走访正常");
            phone.store.record_visit(*id, &v, &[]).unwrap();
        }
        let report = phone.sync().unwrap();
        assert!(report.rejected.is_empty());
        requests += report.progress.round_trips as u64;
        bytes_in += report.progress.bytes_up;
        bytes_out += report.progress.bytes_down;
        accepted += report.accepted;
        phones.push(phone);
    }
    // One change the server refuses: not an Automerge change at all.
    let junk = vec![b"not a change".to_vec()];
    let id = qiaomen_protocol::ids::HouseholdId::new();
    bytes_in += wire::encode(&upload_request(id, junk.clone(), 0)).len() as u64;
    let (status, answer) = raw_upload(&server.url, &phones[0].token(), id, junk);
    assert_eq!(status, 200);
    let refused = answer.unwrap().rejected;
    assert_eq!(refused.len(), 1);
    let refused_code = refused[0].code.name();
    requests += 1;
    // A wrong password.
    let status = block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/login", server.url))
            .json(&serde_json::json!({"login": "nobody", "password": "wrong-password"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 401);

    let m = scrape(&server);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:?}"))
    };
    assert_eq!(get("qiaomen_syncs_total{outcome=\"ok\"}"), requests as f64);
    assert_eq!(get("qiaomen_sync_duration_seconds_count"), requests as f64);
    assert_eq!(get("qiaomen_sync_received_bytes_total"), bytes_in as f64);
    assert!(get("qiaomen_sync_sent_bytes_total") >= bytes_out as f64);
    assert_eq!(get("qiaomen_changes_accepted_total"), accepted as f64);
    assert_eq!(
        get(&format!(
            "qiaomen_changes_refused_total{{code=\"{refused_code}\"}}"
        )),
        1.0
    );
    assert_eq!(
        get("qiaomen_auth_failures_total{kind=\"login\",code=\"bad_credentials\"}"),
        1.0
    );
    assert_eq!(get("qiaomen_phones{since=\"day\"}"), 3.0);
    assert_eq!(get("qiaomen_phones{since=\"never\"}"), 0.0);
    assert_eq!(get("qiaomen_quarantined_households"), 0.0);
    assert_eq!(get("qiaomen_writer_queue_uploads"), 0.0);
    // Every upload went through a group commit.
    assert!(get("qiaomen_write_group_uploads_count") >= 3.0);

    // The read model catches up within its refresh period; then the server is ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = scrape(&server);
        if m["qiaomen_read_model_behind_changes"] == 0.0 {
            assert_eq!(m["qiaomen_read_model_behind_seconds"], 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the read model never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, body) = get_text(&format!("{}/readyz", server.url), "");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["read_model_behind_changes"], 0);
}

/// The metrics are not for the world: without the token 401, and a server with no token
/// configured has no metrics route.
#[test]
fn metrics_need_the_token_and_exist_only_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_metrics(&dir);
    let url = format!("{}/metrics", server.url);
    assert_eq!(get_raw(&url, "").0, 401);
    assert_eq!(get_raw(&url, "scrape-token-012345678").0, 401);
    assert_eq!(get_raw(&url, METRICS_TOKEN).0, 200);
    let other = tempfile::tempdir().unwrap();
    let plain = TestServer::start(&other.path().join("server"));
    assert_eq!(
        get_raw(&format!("{}/metrics", plain.url), METRICS_TOKEN).0,
        404
    );
    // Readiness needs no token: a load balancer asks.
    assert_eq!(get_text(&format!("{}/readyz", plain.url), "").0, 200);
}

/// A backup taken while phones sync holds every change acknowledged before it began; the
/// server restored from it (stopped, restored, started) gets back from the phones what they
/// had sent since, through the `cursor_diverged` / `cursor_ahead` path.
#[test]
fn a_backup_taken_during_syncs_restores_everything_acknowledged_before_it() {
    if !qiaomen_tests::on_embedded_store() {
        return; // the embedded store's own file; PostgreSQL's backups are pg_dump's
    }
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = TestServer::start(&data);
    let day = cycle_of(today());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..3 {
        let grid = format!("g{i}");
        let mut phone = server.phone(&dir.path().join(format!("p{i}.db")), &[&grid]);
        let ids = phone.create_households(&grid, 3);
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let visits: Vec<_> = ids
                .iter()
                .map(|id| {
                    let v = sample_visit(&phone.author, day, "走访正常");
                    phone.store.record_visit(*id, &v, &[]).unwrap();
                    v.id
                })
                .collect();
            // (when the phone learned it, every head of its households) after each sync
            // that left nothing pending.
            let mut acknowledged: Vec<(Instant, Vec<qiaomen_protocol::ChangeHash>)> = Vec::new();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = k % ids.len();
                phone
                    .store
                    .replace_note(ids[n], visits[n], &format!("第 {k} 次补记"))
                    .unwrap();
                k += 1;
                phone.sync().unwrap();
                if phone.store.pending_change_count().unwrap() == 0 {
                    let mut heads = Vec::new();
                    for id in &ids {
                        heads.extend(phone.store.document(*id).unwrap().heads());
                    }
                    acknowledged.push((Instant::now(), heads));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (phone, acknowledged)
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let backup_file = dir.path().join("backup.db");
    let began = Instant::now();
    let summary = qiaomen_server::backup::backup(&data, &backup_file).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let phones: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    // Everything acknowledged before the backup began is in it.
    let copy = rusqlite::Connection::open(&backup_file).unwrap();
    let has = |h: &qiaomen_protocol::ChangeHash| -> bool {
        copy.query_row(
            "SELECT EXISTS (SELECT 1 FROM changes WHERE hash = ?1)",
            [h.0.as_slice()],
            |r| r.get(0),
        )
        .unwrap()
    };
    let mut checked = 0;
    for (_, acknowledged) in &phones {
        let before: Vec<_> = acknowledged.iter().filter(|(t, _)| *t < began).collect();
        assert!(!before.is_empty(), "a phone synced before the backup");
        let (_, heads) = before.last().unwrap();
        for h in heads {
            assert!(has(h), "an acknowledged change is missing from the backup");
            checked += 1;
        }
        // The phones went on after it: the backup is older than the store.
        assert!(acknowledged.iter().any(|(t, _)| *t > began));
    }
    assert!(checked >= 9);
    let seq_at_stop: i64 = rusqlite::Connection::open(data.join("qiaomen.db"))
        .unwrap()
        .query_row("SELECT max(seq) FROM changes", [], |r| r.get(0))
        .unwrap();
    assert!(summary.log_seq < seq_at_stop as u64);
    drop(copy);

    // A restore refuses a serving store, then (stopped) puts the backup in place.
    assert!(matches!(
        qiaomen_server::backup::restore(&data, &backup_file),
        Err(qiaomen_server::backup::BackupError::Serving(_))
    ));
    server.stop();
    let (restored, aside) = qiaomen_server::backup::restore(&data, &backup_file).unwrap();
    assert_eq!(restored.log_seq, summary.log_seq);
    assert!(aside.unwrap().join("qiaomen.db").exists());
    let server = TestServer::start(&data);
    // Each phone syncs: its cursor is past the restored log (or the log differs at it), so it
    // sends everything it authored again; then a fresh phone sees every phone's last version.
    let mut finals = Vec::new();
    for (mut phone, _) in phones {
        phone.client = qiaomen_client_core::SyncClient::new(&server.url).unwrap();
        phone.sync().unwrap();
        assert_eq!(phone.store.pending_change_count().unwrap(), 0);
        for id in phone.store.household_ids().unwrap() {
            finals.push((id, phone.store.household(id).unwrap()));
        }
    }
    let mut observer = server.phone(&dir.path().join("o.db"), &[]);
    observer.sync().unwrap();
    assert_eq!(finals.len(), 9);
    for (id, household) in finals {
        assert_eq!(observer.store.household(id).unwrap(), household);
    }
}

/// One server per data folder: a second one on the same store is refused with the reason
/// (two processes would each take their document cache for the truth).
#[test]
fn a_second_server_on_the_same_store_is_refused() {
    if !qiaomen_tests::on_embedded_store() {
        return; // the embedded store's own file; PostgreSQL's backups are pg_dump's
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _server = TestServer::start(&data);
    let config = qiaomen_server::Config::new("127.0.0.1:0".parse().unwrap(), &data);
    let err = block_on(qiaomen_server::start(config, std::future::pending())).unwrap_err();
    assert!(
        err.to_string()
            .contains("another qiaomen-server is serving"),
        "{err}"
    );
}

/// A store of the first release's format (12, `admin seed-demo`'s county, kept in
/// `tests/fixtures/`) opens with today's server: migrated, every household readable, the org
/// and its users there, served. When a migration is added, this file stays as it is.
#[test]
fn a_store_of_the_previous_format_opens_migrated_and_serves() {
    if !qiaomen_tests::on_embedded_store() {
        return; // the embedded store's own file; PostgreSQL's backups are pg_dump's
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-format-12.db");
    std::fs::copy(&fixture, data.join("qiaomen.db")).unwrap();
    let server = TestServer::start(&data);
    let db = server.access();
    let names: Vec<String> = db.units().unwrap().into_iter().map(|u| u.name).collect();
    assert!(names.contains(&"清河县".to_string()) && names.contains(&"东村".to_string()));
    let storage = qiaomen_server::storage::SqliteStorage::open(&data).unwrap();
    use qiaomen_server::storage::Storage;
    let ids: Vec<Vec<u8>> = rusqlite::Connection::open(data.join("qiaomen.db"))
        .unwrap()
        .prepare("SELECT id FROM docs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids.len(), 24);
    for raw in ids {
        let id = qiaomen_protocol::ids::HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(
            raw.as_slice().try_into().unwrap(),
        ));
        let bytes = storage.load_doc(id).unwrap().unwrap();
        let household = qiaomen_protocol::doc::HouseholdDoc::load(&bytes)
            .and_then(|d| d.household())
            .unwrap();
        assert_eq!(household.id, id);
    }
    // A phone of the demo county's command centre receives them all.
    let user = db.add_user("cc-upgrade", "指挥中心").unwrap();
    db.assign(
        user,
        "qinghe",
        qiaomen_server::access::Role::CommandCentre,
        0,
    )
    .unwrap();
    let code = db.issue_enrollment_code(user).unwrap();
    let mut phone =
        qiaomen_tests::Phone::enroll(&dir.path().join("p.db"), &server.url, &code).unwrap();
    phone.sync().unwrap();
    assert_eq!(phone.store.household_ids().unwrap().len(), 24);
}

/// A store written by a newer server is refused at start, naming both versions; nothing in
/// it is touched.
#[test]
fn a_store_of_a_newer_format_is_refused_at_start() {
    if !qiaomen_tests::on_embedded_store() {
        return; // the embedded store's own file; PostgreSQL's backups are pg_dump's
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    qiaomen_server::storage::SqliteStorage::open(&data).unwrap();
    let newer = qiaomen_server::storage::format() + 1;
    rusqlite::Connection::open(data.join("qiaomen.db"))
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let before = std::fs::read(data.join("qiaomen.db")).unwrap();
    let config = qiaomen_server::Config::new("127.0.0.1:0".parse().unwrap(), &data);
    let err = block_on(qiaomen_server::start(config, std::future::pending())).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("newer server"), "{message}");
    assert!(
        message.contains(&format!("store format {newer}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("reads up to {}", newer - 1)),
        "{message}"
    );
    assert_eq!(std::fs::read(data.join("qiaomen.db")).unwrap(), before);
}

/// A county's own CA (self-signed) and a certificate for 127.0.0.1 it signed, as PEM files
/// in `dir`: (the CA's PEM, the certificate's path, the key's path).
fn county_ca(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "清河县信息中心 CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "qiaomen.qinghe");
    let cert = params.signed_by(&key, &ca).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}

/// The server serves HTTPS with a certificate of the county's own CA; a phone enrolled
/// through the FFI with that CA syncs, and keeps trusting it after a restart; a phone
/// without it is told `untrusted` at once (not after a minute of retries), and a CA that is
/// not a certificate is refused as bad input.
#[test]
fn tls_with_a_countys_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = county_ca(dir.path());
    let tls = qiaomen_server::http::edge::tls_config(&cert, &key).unwrap();
    let server = TestServer::start_with(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
        |config| config.edge.tls = Some(tls),
    );
    let https = format!("https://{}", server.addr);
    let (_, code) = qiaomen_tests::enrollment_code(&server.data_dir, &["g1"]);
    let path = dir.path().join("p.db").to_string_lossy().into_owned();
    let phone = block_on(qiaomen::enroll_with_ca(
        path.clone(),
        https.clone(),
        code,
        ca_pem.clone(),
        None,
    ))
    .unwrap();
    let summary = block_on(phone.sync(None)).unwrap();
    assert!(summary.progress.round_trips >= 1);
    drop(phone);
    // After a restart of the app, from the store alone.
    let phone = qiaomen::Phone::open(path, None).unwrap();
    block_on(phone.sync(None)).unwrap();
    // Plain HTTP to a TLS port is no answer.
    assert!(get_text_result(&format!("http://{}/healthz", server.addr)).is_err());

    // Without the county's CA: refused at once, named.
    let (_, code) = qiaomen_tests::enrollment_code(&server.data_dir, &["g1"]);
    let started = std::time::Instant::now();
    let err = block_on(qiaomen::enroll(
        dir.path().join("q.db").to_string_lossy().into_owned(),
        https.clone(),
        code.clone(),
        None,
    ))
    .err()
    .unwrap(); // an untrusted certificate is refused
    match err {
        qiaomen::QiaomenError::Network { failure, .. } => assert_eq!(failure, "untrusted"),
        other => panic!("not a network error: {other}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Not a certificate: bad input, nothing enrolled; the code still works afterwards.
    let err = block_on(qiaomen::enroll_with_ca(
        dir.path().join("r.db").to_string_lossy().into_owned(),
        https.clone(),
        code.clone(),
        "not a certificate".into(),
        None,
    ))
    .err()
    .unwrap();
    assert!(
        matches!(err, qiaomen::QiaomenError::InvalidInput { .. }),
        "{err}"
    );
    block_on(qiaomen::enroll_with_ca(
        dir.path().join("r.db").to_string_lossy().into_owned(),
        https,
        code,
        ca_pem,
        None,
    ))
    .unwrap();
}

fn get_text_result(url: &str) -> Result<u16, String> {
    block_on(async {
        reqwest::Client::new()
            .get(url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
}

/// Reads the QR code of the admin page's SVG back, as a phone's camera would: the SVG's
/// dark rectangles (`M{x} {y}h{w}v{h}H{x}V{y}`) drawn on a grey image, decoded by `rqrr`.
fn read_qr(svg: &str) -> String {
    let number = |s: &str, at: &str| -> u32 {
        let i = s.find(at).unwrap() + at.len();
        s[i..].split('"').next().unwrap().parse().unwrap()
    };
    let (w, h) = (number(svg, "width=\""), number(svg, "height=\""));
    let mut dark = vec![false; (w * h) as usize];
    let d = svg
        .rsplit(" d=\"")
        .next()
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    for rect in d.split('M').filter(|r| !r.is_empty()) {
        let nums: Vec<u32> = rect
            .split(|c: char| c.is_ascii_alphabetic() || c == ' ')
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().unwrap())
            .collect();
        let (x, y, rw, rh) = (nums[0], nums[1], nums[2], nums[3]);
        for yy in y..(y + rh).min(h) {
            for xx in x..(x + rw).min(w) {
                dark[(yy * w + xx) as usize] = true;
            }
        }
    }
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w as usize, h as usize, |x, y| {
        if dark[y * w as usize + x] { 0 } else { 255 }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the page");
    grids[0].decode().unwrap().1
}

/// An admin with no command line: adds a grid, a worker and the worker's assignment on the
/// admin page, issues an enrollment code and reads its QR code; a phone enrolls with what
/// the code encodes and receives that grid. The audit page names each step; a supervisor
/// cannot open the page.
#[test]
fn an_admin_sets_up_a_worker_on_the_web_and_the_phone_enrolls_from_the_qr_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let admin = qiaomen_tests::session(
        &server,
        "admin-web",
        "c",
        qiaomen_server::access::Role::Admin,
    );
    let url = |p: &str| format!("{}{p}", server.url);
    let (status, html) = get_text(&url("/admin"), &admin);
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("测试县"));

    let (status, html) = post_form(
        &url("/admin/units"),
        &admin,
        &[
            ("id", "g-web"),
            ("name", "新村一网格"),
            ("kind", "grid"),
            ("parent", "v"),
            ("from", ""),
        ],
    );
    assert_eq!(status, 200);
    assert!(
        html.contains("已新增单位") && html.contains("新村一网格"),
        "{html}"
    );
    // The same id again: refused with a reason, nothing changed.
    let (_, html) = post_form(
        &url("/admin/units"),
        &admin,
        &[
            ("id", "g-web"),
            ("name", "重复"),
            ("kind", "grid"),
            ("parent", "v"),
        ],
    );
    assert!(html.contains("id=\"error\""), "{html}");
    assert!(!html.contains("重复"));
    let (_, html) = post_form(
        &url("/admin/users"),
        &admin,
        &[("login", "w-web"), ("name", "王小网")],
    );
    assert!(html.contains("已新增用户"), "{html}");
    let (_, html) = post_form(
        &url("/admin/assign"),
        &admin,
        &[
            ("login", "w-web"),
            ("unit", "g-web"),
            ("role", "grid_worker"),
            ("from", ""),
        ],
    );
    assert!(html.contains("已任职"), "{html}");
    assert!(html.contains("网格员") && html.contains("新村一网格"));

    let (status, html) = post_form(&url("/admin/codes"), &admin, &[("login", "w-web")]);
    assert_eq!(status, 200);
    let svg_start = html.find("<svg").expect("a QR code");
    let svg = &html[svg_start..svg_start + html[svg_start..].find("</svg>").unwrap() + 6];
    let scanned = read_qr(svg);
    let query = scanned
        .strip_prefix("qiaomen:enroll?")
        .expect("an enrollment URI");
    let field = |k: &str| -> String {
        let v = query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap();
        let mut out = Vec::new();
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    let (server_url, code) = (field("server"), field("code"));
    assert_eq!(server_url, server.url);
    assert!(html.contains(&code), "the code is also shown as text");
    let mut phone =
        qiaomen_tests::Phone::enroll(&dir.path().join("w.db"), &server_url, &code).unwrap();
    phone.sync().unwrap();
    assert_eq!(
        phone.store.sync_scope().unwrap(),
        Some(vec!["g-web".to_string()])
    );

    let (status, html) = get_text(&url("/admin/audit"), &admin);
    assert_eq!(status, 200);
    for step in ["新增单位", "新增用户", "任职", "生成登记码", "手机登记"] {
        assert!(html.contains(step), "{step} in the audit log");
    }
    // Unassigned on the page: the assignment ends.
    let (_, html) = post_form(
        &url("/admin/unassign"),
        &admin,
        &[("login", "w-web"), ("unit", "g-web")],
    );
    assert!(html.contains("已卸任"), "{html}");

    let supervisor = qiaomen_tests::session(
        &server,
        "sup-web",
        "v",
        qiaomen_server::access::Role::VillageSupervisor,
    );
    assert_eq!(get_text(&url("/admin"), &supervisor).0, 403);
    assert_eq!(
        post_form(
            &url("/admin/users"),
            &supervisor,
            &[("login", "x"), ("name", "x")]
        )
        .0,
        403
    );
}
