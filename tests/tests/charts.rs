//! Pictures where people would rather look than read (issue 15, item 6), end to end: a grid's
//! households visited over three visit days by a real phone, then the coverage series API
//! checked against the coverage report day by day, the numbers read back out of the SVG of
//! the coverage, statistics and map pages, the printable monthly report, and the statistics
//! as XLSX (a zip whose strings name the units and their kinds in Chinese, never an English
//! enum name) and as CSV.

use std::collections::BTreeMap;

use qiaomen_protocol::{
    calendar::{self, Day},
    coverage::CoveragePolicy,
    ids::*,
    policy::Role,
    schema::*,
};
use qiaomen_server::access::org::UnitKind;
use qiaomen_tests::{
    Phone, TestServer, by_now, call, debug_names, get_raw, noon, now_ms, sample_visit, session,
    today,
};
use serde_json::json;

/// The visit day before `day`'s cycle.
fn previous(day: Day) -> Day {
    calendar::cycle_of(calendar::cycle_of(day).add_days(-1))
}

fn get_page(server: &TestServer, path: &str, token: &str) -> String {
    let (status, _, body) = get_raw(&format!("{}{path}", server.url), token);
    let html = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{path}: {html}");
    html
}

/// The opening tags of the elements whose class is `class`.
fn elements<'a>(html: &'a str, class: &str) -> Vec<&'a str> {
    let key = format!("class=\"{class}\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let start = html[..i].rfind('<').unwrap();
            &html[start..i + html[i..].find('>').unwrap()]
        })
        .collect()
}

fn attr<'a>(el: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let start = el.find(&key).unwrap_or_else(|| panic!("{name} in {el}")) + key.len();
    &el[start..start + el[start..].find('"').unwrap()]
}

/// Records a visit for `day` on `h`, at `gps`, raising `demands`.
fn visit(
    phone: &mut Phone,
    h: HouseholdId,
    day: Day,
    outcome: VisitOutcome,
    gps: Option<(f64, f64)>,
    demands: &[Demand],
) {
    let mut v = sample_visit(&phone.author, day, "");
    v.outcome = outcome;
    v.gps = gps.map(|(lat, lon)| Gps {
        lat,
        lon,
        accuracy_m: Some(10.0),
    });
    v.demands_raised = demands.iter().map(|d| d.id).collect();
    phone.store.record_visit(h, &v, demands).unwrap();
}

fn demand(phone: &Phone, at_ms: i64, text: &str) -> Demand {
    qiaomen_tests::sample_demand(&phone.author, at_ms, text)
}

/// What a visit day's coverage should be: (due, visited, not met, not visited).
type Expect = (u64, u64, u64, u64);

#[test]
fn charts_show_what_the_coverage_report_and_the_statistics_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let db = server.access();
    let start = "2026-01-01".parse().unwrap();
    db.add_unit("hc-1", UnitKind::Grid, Some("v"), "和村第一网格", start)
        .unwrap();
    db.add_unit("hc-2", UnitKind::Grid, Some("v"), "和村第二网格", start)
        .unwrap();
    drop(db);
    let mut worker = server.phone(&dir.path().join("w.db"), &["hc-1"]);

    // Three visit days: this cycle's and the two before.
    let d0 = calendar::cycle_of(today());
    let d1 = previous(d0);
    let d2 = previous(d1);
    // Five households registered the day before the first, four of them with a position.
    let registered = noon(d2.add_days(-1));
    worker.store.set_clock(move || registered);
    let gps = [
        Some((31.2300, 121.4700)),
        Some((31.2310, 121.4712)),
        Some((31.2295, 121.4725)),
        Some((31.2322, 121.4690)),
        None,
    ];
    let hh: Vec<HouseholdId> = gps
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut h = Household::new(
                HouseholdId::new(),
                GridId::new("hc-1"),
                "和村",
                format!("{}号", i + 1),
            );
            h.gps = g.map(|(lat, lon)| Gps {
                lat,
                lon,
                accuracy_m: None,
            });
            worker.store.create_household(&h).unwrap()
        })
        .collect();
    worker.store.set_clock(now_ms);
    let here = |i: usize| gps[i].map(|(lat, lon)| (lat + 0.0001, lon + 0.0001));

    // d2: 1 and 2 met (1 raises a demand), 3 nobody home, 4 and 5 never visited.
    let a = demand(&worker, by_now(noon(d2)), "路灯不亮");
    visit(
        &mut worker,
        hh[0],
        d2,
        VisitOutcome::Met,
        here(0),
        std::slice::from_ref(&a),
    );
    visit(&mut worker, hh[1], d2, VisitOutcome::Met, here(1), &[]);
    visit(
        &mut worker,
        hh[2],
        d2,
        VisitOutcome::NobodyHome,
        here(2),
        &[],
    );
    // d1: 1-4 met (2 raises two demands), 5 refused.
    let b = demand(&worker, by_now(noon(d1)), "门前排水沟堵塞");
    let c = demand(&worker, by_now(noon(d1)), "申请低保复核");
    for (i, h) in hh.iter().enumerate().take(4) {
        let raised = if i == 1 {
            vec![b.clone(), c.clone()]
        } else {
            vec![]
        };
        visit(&mut worker, *h, d1, VisitOutcome::Met, here(i), &raised);
    }
    visit(&mut worker, hh[4], d1, VisitOutcome::Refused, None, &[]);
    // d0: 1 met (with a position), 2 moved away (visit without a position), 3-5 not yet.
    visit(&mut worker, hh[0], d0, VisitOutcome::Met, here(0), &[]);
    visit(&mut worker, hh[1], d0, VisitOutcome::Moved, None, &[]);
    worker.sync().unwrap();
    // As if the phone had synced the households before d2 (but after the day before it).
    let back = (today().0 - d2.0).whole_days() + 5;
    let server = server.with_log_received_earlier(back);
    let village = session(&server, "sv-he", "v", Role::VillageSupervisor);

    // Two of the three demands resolved (即办, 办结).
    for d in [&a, &b] {
        for body in [
            json!({"action": "take"}),
            json!({"action": "finish", "comment": "已办结"}),
        ] {
            let (status, r) = call(
                "POST",
                &format!("{}/api/v1/orders/{}/steps", server.url, d.id),
                &village,
                Some(body),
            );
            assert_eq!(status, 200, "{r}");
        }
    }

    let policy = CoveragePolicy::default();
    let unvisited = |day: Day| {
        if policy.catch_up_by(day) < today() {
            "missed"
        } else {
            "pending"
        }
    };
    let expected: BTreeMap<Day, Expect> = [
        // Before the households were registered: nobody due that day, whatever came later.
        (previous(d2), (0, 0, 0, 0)),
        (d2, (5, 2, 1, 2)),
        (d1, (5, 4, 1, 0)),
        (d0, (5, 1, 1, 3)),
    ]
    .into_iter()
    .collect();

    // The series: per visit day, as the coverage report counts that day, for the grid and
    // for its village (which holds no other household).
    for unit in ["hc-1", "v"] {
        let (status, s) = call(
            "GET",
            &format!("{}/api/v1/coverage/series?unit={unit}&cycles=4", server.url),
            &village,
            None,
        );
        assert_eq!(status, 200, "{s}");
        assert_eq!(s["unit"]["id"], unit);
        let days = s["days"].as_array().unwrap();
        assert_eq!(days.len(), 4, "{s}");
        for (row, (day, (due, visited, not_met, not_visited))) in days.iter().zip(&expected) {
            assert_eq!(row["visit_day"], day.to_string(), "{s}");
            let (missed, pending) = if unvisited(*day) == "missed" {
                (*not_visited, 0)
            } else {
                (0, *not_visited)
            };
            assert_eq!(
                [
                    &row["due"],
                    &row["visited"],
                    &row["not_met"],
                    &row["pending"],
                    &row["missed"]
                ],
                [*due, *visited, *not_met, pending, missed]
                    .map(|n| json!(n))
                    .each_ref(),
                "{unit} {day}: {row}"
            );
            // The coverage report of that day says the same.
            let (_, r) = call(
                "GET",
                &format!("{}/api/v1/coverage?unit={unit}&day={day}", server.url),
                &village,
                None,
            );
            assert_eq!(r["unit"]["tally"]["due"], row["due"], "{r}");
            assert_eq!(r["unit"]["tally"]["visited"], row["visited"], "{r}");
            assert_eq!(r["unit"]["tally"]["missed"], row["missed"], "{r}");
        }
    }
    // Six cycles by default; a bad count, another's unit: typed errors.
    let (_, s) = call(
        "GET",
        &format!("{}/api/v1/coverage/series?unit=hc-1", server.url),
        &village,
        None,
    );
    assert_eq!(s["days"].as_array().unwrap().len(), 6);
    for bad in ["cycles=0", "cycles=25", "cycles=x", "day=2026-02-30"] {
        let (status, _) = call(
            "GET",
            &format!("{}/api/v1/coverage/series?unit=hc-1&{bad}", server.url),
            &village,
            None,
        );
        assert_eq!(status, 400, "{bad}");
    }
    let outsider = session(&server, "other", "g1", Role::GridHead);
    let (status, _) = call(
        "GET",
        &format!("{}/api/v1/coverage/series?unit=hc-1", server.url),
        &outsider,
        None,
    );
    assert_eq!(status, 404);

    // The coverage page: a bar a visit day, its numbers on it.
    let html = get_page(&server, &format!("/coverage?unit=hc-1&day={d0}"), &village);
    let bars = elements(&html, "bar");
    assert_eq!(bars.len(), 6, "{html}");
    let on_bars: BTreeMap<String, (u64, u64)> = bars
        .iter()
        .map(|b| {
            (
                attr(b, "data-day").to_string(),
                (
                    attr(b, "data-visited").parse().unwrap(),
                    attr(b, "data-due").parse().unwrap(),
                ),
            )
        })
        .collect();
    for (day, (due, visited, _, _)) in &expected {
        assert_eq!(on_bars[&day.to_string()], (*visited, *due), "{day}");
    }
    // Heights in proportion to the rate: d1's (4/5) is four times d0's (1/5).
    let height = |day: Day| -> f64 {
        let b = bars
            .iter()
            .find(|b| attr(b, "data-day") == day.to_string())
            .unwrap();
        attr(b, "height").parse().unwrap()
    };
    assert!((height(d1) - 4.0 * height(d0)).abs() < 0.5, "{html}");
    assert!(html.contains(">80%<") && html.contains(">20%<"));
    assert!(html.contains(&format!("/grids/hc-1/map?day={d0}")));

    // The statistics page: the coverage bars and the demands per month, two bars a month.
    let html = get_page(&server, "/stats?unit=hc-1", &village);
    assert_eq!(elements(&html, "bar").len(), 6);
    let month = |d: Day| format!("{:04}-{:02}", d.year(), d.month());
    let mut per_month: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (d, resolved) in [(d2, 1), (d1, 1), (d1, 0)] {
        let e = per_month.entry(month(d)).or_default();
        e.0 += 1;
        e.1 += resolved;
    }
    let bars_of = |class: &str| -> BTreeMap<String, u64> {
        elements(&html, class)
            .iter()
            .map(|b| {
                (
                    attr(b, "data-month").to_string(),
                    attr(b, "data-value").parse().unwrap(),
                )
            })
            .collect()
    };
    let (received, resolved) = (bars_of("received"), bars_of("resolved"));
    assert_eq!(received.len(), 6, "six months: {html}");
    for (m, (rec, res)) in &per_month {
        assert_eq!((received[m], resolved[m]), (*rec, *res), "{m}");
    }
    assert_eq!(received.values().sum::<u64>(), 3);
    assert!(html.contains("/api/v1/stats/export?unit=hc-1"));
    assert!(html.contains(&format!("/report?unit=hc-1&amp;month={}", month(today()))));

    // The map of d0: marks by what became of each household, the day's visits where they
    // were recorded, and the household without a position counted.
    let html = get_page(&server, &format!("/grids/hc-1/map?day={d0}"), &village);
    assert_eq!(elements(&html, "met").len(), 1, "{html}");
    assert_eq!(elements(&html, "not_met").len(), 1);
    assert_eq!(elements(&html, "not_visited").len(), 2);
    assert_eq!(elements(&html, "visit").len(), 1);
    assert!(html.contains("无定位的住户 1 户"), "{html}");
    assert!(html.contains("当日走访 2 次，其中无定位 1 次"), "{html}");
    assert!(html.contains("和村第一网格") && html.contains("<svg"));
    // d2: two met, one not met, one not visited placed (the fifth has no position).
    let html = get_page(&server, &format!("/grids/hc-1/map?day={d2}"), &village);
    assert_eq!(elements(&html, "met").len(), 2);
    assert_eq!(elements(&html, "not_met").len(), 1);
    assert_eq!(elements(&html, "not_visited").len(), 1);
    assert_eq!(elements(&html, "visit").len(), 3);
    // Scope: another grid's head finds no such grid; a bad day is refused.
    let (status, _, _) = get_raw(&format!("{}/grids/hc-1/map", server.url), &outsider);
    assert_eq!(status, 404);
    let (status, _, _) = get_raw(
        &format!("{}/grids/hc-1/map?day=2026-13-01", server.url),
        &village,
    );
    assert_eq!(status, 400);

    // The monthly report of d1's month: its figures, each visit day, both charts, printable.
    let m1 = month(d1);
    let html = get_page(&server, &format!("/report?unit=v&month={m1}"), &village);
    assert!(html.contains(&format!("测试村 {m1} 访情通报")), "{html}");
    assert!(html.contains("@media print") && html.contains("size: A4"));
    let days_of_month = qiaomen_server::stats::visit_days(
        qiaomen_server::stats::month_span(d1.year(), d1.month())
            .unwrap()
            .0,
        qiaomen_server::stats::month_span(d1.year(), d1.month())
            .unwrap()
            .1,
        today(),
    );
    assert_eq!(
        html.matches("class=\"day-coverage\"").count(),
        days_of_month.len()
    );
    assert!(html.contains(&format!("{d1} 敲门日")));
    assert_eq!(elements(&html, "bar").len(), 6);
    assert_eq!(elements(&html, "received").len(), 6);
    let (rec, res) = per_month[&m1];
    assert!(
        html.contains(&format!(
            "本月受理诉求 <strong>{rec}</strong> 件，办结 <strong>{res}</strong> 件"
        )),
        "{html}"
    );
    for bad in ["2026-13", "2026-1", "x"] {
        let (status, _, _) = get_raw(
            &format!("{}/report?unit=v&month={bad}", server.url),
            &village,
        );
        assert_eq!(status, 400, "{bad}");
    }

    // The statistics as XLSX: a zip whose strings name every unit and kind in Chinese.
    let from = calendar::cycle_of(d2).add_days(-1);
    let url = format!(
        "{}/api/v1/stats/export?unit=v&from={from}&to={}&format=xlsx",
        server.url,
        today()
    );
    let (status, ct, xlsx) = get_raw(&url, &village);
    assert_eq!(status, 200);
    assert!(ct.contains("spreadsheetml"), "{ct}");
    assert!(xlsx.starts_with(b"PK"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(xlsx)).unwrap();
    let mut strings = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("xl/sharedStrings.xml").unwrap(),
        &mut strings,
    )
    .unwrap();
    for s in [
        "单位",
        "受理诉求",
        "走访覆盖率",
        "测试村",
        "和村第一网格",
        "和村第二网格",
        "村/社区",
        "网格",
    ] {
        assert!(strings.contains(s), "{s}: {strings}");
    }
    // The cells' text, not the XML around it.
    let texts: Vec<&str> = strings
        .split("<t")
        .skip(1)
        .filter_map(|s| {
            s.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</t>"))
        })
        .map(|(t, _)| t)
        .collect();
    assert!(!texts.is_empty());
    // And the unit kinds' codes: a spreadsheet for people says 乡镇, not `town`.
    let mut english = debug_names();
    english.extend(UnitKind::ALL.iter().map(|k| k.as_str().to_string()));
    for t in &texts {
        assert!(!english.contains(*t), "an English name in the sheet: {t}");
        assert!(!t.contains("hc-1"), "an id where a name exists: {t}");
    }
    // The CSV has the same rows: the grid's demands and coverage over the period.
    let (status, ct, csv) = get_raw(&url.replace("format=xlsx", "format=csv"), &village);
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/csv"));
    let csv = String::from_utf8(csv).unwrap();
    let row: Vec<&str> = csv
        .lines()
        .find(|l| l.starts_with("\"和村第一网格\""))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(
        &row[..5],
        ["\"和村第一网格\"", "\"网格\"", "\"测试村\"", "3", "2"]
    );
    // Due on d2, d1 and d0: five each; met 2 + 4 + 1.
    assert_eq!(row[14], "15", "{csv}");
    assert_eq!(row[15], "7", "{csv}");
    // One row per unit: the village's grids once.
    assert_eq!(csv.matches("\"和村第一网格\"").count(), 1);
    let (status, _, _) = get_raw(&url.replace("format=xlsx", "format=pdf"), &village);
    assert_eq!(status, 400);
    let (status, _, _) = get_raw(&url.replace("unit=v", "unit=hc-1"), &outsider);
    assert_eq!(status, 404);
    let log = server.access().audit_log(0, 1000).unwrap();
    assert!(log.iter().any(|e| e.action == "export"));
    assert!(log.iter().any(|e| e.action == "grid_map"));
    assert!(log.iter().any(|e| e.action == "report"));
}
