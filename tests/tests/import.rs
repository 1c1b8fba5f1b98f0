//! The 12345 hotline import end to end: a GBK CSV with Chinese headers, as the hotline system
//! and Excel export it, previewed (nothing written), imported (good rows become orders, bad
//! rows are listed), imported again (skipped), and an XLSX workbook.

use qiaomen_protocol::{ids::*, schema::*};
use qiaomen_server::access::Role;
use qiaomen_tests::{Phone, TestServer, block_on, call, post_body, session};
use serde_json::Value;

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

fn household(phone: &mut Phone, grid: &str, door: &str) -> HouseholdId {
    phone
        .store
        .create_household(&Household::new(
            HouseholdId::new(),
            GridId::new(grid),
            "测试村",
            door,
        ))
        .unwrap()
}

fn post(url: &str, token: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    post_body(url, token, content_type, body)
}

/// (row, column, code) of each error of a report.
fn errors(report: &Value) -> Vec<(u64, Value, String)> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(!e["reason_zh"].as_str().unwrap().is_empty());
            (
                e["row"].as_u64().unwrap(),
                e["column"].clone(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn statuses(report: &Value) -> Vec<String> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

/// The hotline numbers of the caller's orders, sorted.
fn order_refs(server: &TestServer, token: &str) -> Vec<String> {
    let (status, list) = call("GET", &format!("{}/api/v1/orders", server.url), token, None);
    assert_eq!(status, 200, "{list}");
    let mut refs: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["external_ref"].as_str().map(str::to_string))
        .collect();
    refs.sort();
    refs
}

#[test]
fn a_gbk_hotline_csv_imports_its_good_rows_lists_the_bad_ones_and_imports_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let leaky = household(&mut worker, "g1", "12");
    household(&mut worker, "g1", "13");
    household(&mut worker, "g1", "14");
    worker.sync().unwrap();
    let import = format!("{}/api/v1/orders/import", server.url);

    // What the hotline system exports: GBK, Chinese headers in its own order, an extra
    // column, an empty `urgent`, CRLF.
    let text = "工单号,诉求类别,网格编号,门牌号,诉求内容,是否紧急,来电时间\r\n\
                H-001,住房,g1,12,房屋漏雨,是,2026-11-30 09:12\r\n\
                H-002,养老,g1,13,老人需要助餐,,2026-11-30 10:01\r\n\
                H-003,交通,g1,14,类别不对,否,2026-11-30 10:30\r\n\
                H-004,医疗,g1,99,门牌不存在,否,2026-11-30 11:00\r\n\
                H-005,教育,g1,14,孩子入学咨询,一般,2026-11-30 11:20\r\n";
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(text);
    assert!(!unmappable && std::str::from_utf8(&gbk).is_err());
    let gbk = gbk.into_owned();
    let bad = vec![
        (3, Value::from("category"), "unknown_category".to_string()),
        (4, Value::Null, "no_household".to_string()),
    ];

    // The preview checks every row against the records and writes nothing.
    let (status, preview) = post(
        &format!("{import}?dry_run=true"),
        &centre,
        "text/csv",
        gbk.clone(),
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["dry_run"], true);
    assert_eq!(
        (
            preview["would_create"].as_u64(),
            preview["created"].as_array().unwrap().len()
        ),
        (Some(3), 0)
    );
    assert_eq!(errors(&preview), bad);
    assert_eq!(
        statuses(&preview),
        [
            "would_create",
            "would_create",
            "error",
            "error",
            "would_create"
        ]
    );
    assert!(
        order_refs(&server, &centre).is_empty(),
        "a preview writes nothing"
    );

    // The import: the three good rows become orders, the two bad ones are listed.
    let (status, report) = post(&import, &centre, "text/csv", gbk.clone());
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(errors(&report), bad);
    assert_eq!(
        statuses(&report),
        ["created", "created", "error", "error", "created"]
    );
    assert_eq!(order_refs(&server, &centre), ["H-001", "H-002", "H-005"]);
    worker.sync().unwrap();
    let d = worker.store.household(leaky).unwrap().demands;
    let d = d.values().next().unwrap();
    assert_eq!(
        (
            d.category,
            d.urgency,
            d.text.as_str(),
            d.source,
            d.external_ref.as_deref()
        ),
        (
            NeedCategory::Housing,
            Urgency::Urgent,
            "房屋漏雨",
            Some(DemandSource::Hotline),
            Some("H-001")
        )
    );

    // Again: nothing new; the imported rows are skipped, the bad ones listed again.
    let (status, again) = post(&import, &centre, "text/csv", gbk.clone());
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (
            again["created"].as_array().unwrap().len(),
            again["skipped"].as_u64()
        ),
        (0, Some(3))
    );
    assert_eq!(errors(&again), bad);
    let (_, preview) = post(
        &format!("{import}?dry_run=true"),
        &centre,
        "text/csv",
        gbk.clone(),
    );
    assert_eq!(
        statuses(&preview),
        [
            "already_imported",
            "already_imported",
            "error",
            "error",
            "already_imported"
        ]
    );
    assert_eq!(order_refs(&server, &centre).len(), 3);

    // Out of the caller's scope, a household is not found, in a preview too.
    let other = session(&server, "w-g2", "g2", Role::GridWorker);
    let fresh = "工单编号,网格,门牌号,类别,内容\nH-100,g1,13,其他,别的网格\n";
    let (status, preview) = post(
        &format!("{import}?dry_run=true"),
        &other,
        "text/csv",
        fresh.as_bytes().to_vec(),
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        errors(&preview),
        [(1, Value::Null, "no_household".to_string())]
    );

    // A file without a required column fails whole, with a code and a reason in Chinese.
    let (status, body) = post(
        &import,
        &centre,
        "text/csv",
        "工单编号,网格\nH-9,g1\n".into(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "missing_columns");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("门牌号")
    );
}

#[test]
fn an_xlsx_workbook_imports_by_its_content_type_or_its_zip_signature() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    household(&mut worker, "g1", "12");
    household(&mut worker, "g1", "13");
    worker.sync().unwrap();
    let import = format!("{}/api/v1/orders/import", server.url);

    let workbook = |rows: &[[&str; 6]]| {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        for (c, h) in ["ref", "grid", "door_number", "category", "text", "urgent"]
            .iter()
            .enumerate()
        {
            sheet.write_string(0, c as u16, *h).unwrap();
        }
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                // Door numbers typed as numbers, as Excel keeps them.
                match cell.parse::<f64>() {
                    Ok(n) => sheet.write_number(r as u32 + 1, c as u16, n),
                    Err(_) => sheet.write_string(r as u32 + 1, c as u16, *cell),
                }
                .unwrap();
            }
        }
        book.save_to_buffer().unwrap()
    };
    let first = workbook(&[
        ["X-1", "g1", "12", "医疗", "需要上门体检", "是"],
        ["X-2", "g1", "12", "住房", "", ""],
    ]);
    let (status, report) = post(&import, &centre, XLSX, first);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(
        errors(&report),
        [(2, Value::from("text"), "empty".to_string())]
    );

    // A browser that does not know the type: the zip signature tells.
    let second = workbook(&[
        ["X-1", "g1", "12", "医疗", "需要上门体检", "是"],
        ["X-3", "g1", "13", "Other", "路灯不亮", "0"],
    ]);
    let (status, report) = post(&import, &centre, "application/octet-stream", second);
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            report["created"].as_array().unwrap().len(),
            report["skipped"].as_u64()
        ),
        (1, Some(1)),
        "{report}"
    );
    let mut refs: Vec<String> = call(
        "GET",
        &format!("{}/api/v1/orders", server.url),
        &centre,
        None,
    )
    .1
    .as_array()
    .unwrap()
    .iter()
    .filter_map(|o| o["external_ref"].as_str().map(str::to_string))
    .collect();
    refs.sort();
    assert_eq!(refs, ["X-1", "X-3"]);
    // Not a workbook after all: one error for the file.
    let (status, body) = post(&import, &centre, XLSX, b"PK\x03\x04not a zip".to_vec());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unreadable_xlsx"))
    );
}

/// A part of a multipart form: its name, its file name and content type if a file, its value.
type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A multipart form: its content type and body.
fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "----qiaomen-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, file, value) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((file_name, content_type)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n\
                     Content-Type: {content_type}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A page POST with the session cookie; returns the status and the page.
fn page_post(
    server: &TestServer,
    token: &str,
    origin: &str,
    form: (String, Vec<u8>),
) -> (u16, String) {
    let url = format!("{}/orders/import", server.url);
    let (cookie, origin) = (format!("qiaomen_session={token}"), origin.to_string());
    block_on(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .header("cookie", cookie)
            .header("origin", origin)
            .header("content-type", form.0)
            .body(form.1)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn the_import_page_previews_then_imports_and_refuses_a_cross_site_post() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    household(&mut worker, "g1", "12");
    worker.sync().unwrap();
    let (gbk, _, _) = encoding_rs::GBK.encode(
        "工单编号,网格,门牌号,类别,诉求内容,紧急\r\nP-1,g1,12,住房,房屋漏雨,是\r\nP-2,g1,12,交通,修路,否\r\n",
    );
    // Windows names a .csv file this way.
    let upload = || {
        multipart(&[(
            "file",
            Some(("工单.csv", "application/vnd.ms-excel")),
            gbk.as_ref(),
        )])
    };

    let (status, _) = page_post(&server, &centre, "http://evil.example", upload());
    assert_eq!(status, 403);
    let (status, page) = page_post(&server, &centre, &server.url, upload());
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"<b id="would-create">1</b>"#), "{page}");
    assert!(page.contains("“类别”应为"), "{page}");
    assert!(
        order_refs(&server, &centre).is_empty(),
        "a preview writes nothing"
    );

    // The confirmation posts the file back as the page carries it.
    let data = page
        .split(r#"name="data" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the preview carries the file")
        .to_string();
    let confirm = multipart(&[
        ("data", None, data.as_bytes()),
        ("format", None, b"csv"),
        ("confirm", None, b"true"),
    ]);
    let (status, page) = page_post(&server, &centre, &server.url, confirm);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"<b id="created">1</b>"#), "{page}");
    assert!(
        page.contains(r#"<tr class="bad-row"><td>2</td><td>P-2</td>"#),
        "{page}"
    );
    assert_eq!(order_refs(&server, &centre), ["P-1"]);
}

/// Imports of one file at the same time, and again at once (before the read model has read
/// the first), create each order once: the import's idempotency does not rest on timing.
#[test]
fn imports_of_one_file_at_the_same_time_create_each_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let centre = session(&server, "cc", "c", Role::CommandCentre);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    for door in ["1", "2", "3"] {
        household(&mut worker, "g1", door);
    }
    worker.sync().unwrap();
    let import = format!("{}/api/v1/orders/import", server.url);
    let body = serde_json::to_vec(&serde_json::json!([
        {"ref": "R-1", "grid": "g1", "door_number": "1", "category": "住房", "text": "屋顶漏雨"},
        {"ref": "R-2", "grid": "g1", "door_number": "2", "category": "养老", "text": "老人需要助餐"},
        {"ref": "R-3", "grid": "g1", "door_number": "3", "category": "医疗", "text": "需要上门体检"},
    ]))
    .unwrap();
    let created: Vec<u64> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let (status, report) = post(&import, &centre, "application/json", body.clone());
                    assert_eq!(status, 200, "{report}");
                    report["created"].as_array().unwrap().len() as u64
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        created.iter().sum::<u64>(),
        3,
        "each row created once: {created:?}"
    );
    let (status, again) = post(&import, &centre, "application/json", body);
    assert_eq!(status, 200, "{again}");
    assert_eq!(statuses(&again), ["already_imported"; 3]);
    assert_eq!(order_refs(&server, &centre), ["R-1", "R-2", "R-3"]);
}
