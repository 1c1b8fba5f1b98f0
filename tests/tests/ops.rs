//! What a county's IT office runs the server with (issue 19), against the real server on
//! 127.0.0.1: the metrics a scrape reads after a visit day, `/readyz`, and backups taken
//! while phones sync.

use std::collections::BTreeMap;

use qiaomen_protocol::{calendar::cycle_of, wire};
use qiaomen_server::http::ops::MetricsToken;
use qiaomen_tests::{
    TestServer, block_on, get_raw, get_text, raw_upload, sample_visit, today, upload_request,
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
