//! The service card (便民服务卡) against the real server on 127.0.0.1: a grid's cards printed,
//! a resident's request left on a card's page with no account, the demand on the grid
//! worker's phone after a sync (source card, the worker first-responsible), its state on the
//! same page; the abuse limits per card and per client address; a reissued card's old token
//! refused.

use qiaomen_protocol::{ids::*, policy::Role, schema::*, vocab::Term};
use qiaomen_tests::{
    Phone, TestServer, block_on, call, form_body, get_text, post_form, session, visible,
};

/// A resident's browser: no token, no cookie.
fn resident_get(url: &str) -> (u16, String) {
    block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    })
}

fn resident_post(url: &str, fields: &[(&str, &str)]) -> (u16, String) {
    block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields))
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    })
}

/// The card pages a grid's sheet links to, by door number.
fn printed_cards(server: &TestServer, token: &str, grid: &str) -> Vec<(String, String)> {
    let (status, page) = get_text(&format!("{}/grids/{grid}/cards", server.url), token);
    assert_eq!(status, 200, "{page}");
    page.split("<section class=\"card\"")
        .skip(1)
        .map(|card| {
            let door = card
                .split("<div class=\"door\">")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .expect("a door number")
                .to_string();
            let url = card
                .split("class=\"card-link noprint\" href=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("a card's address")
                .replace("&#x2f;", "/");
            assert!(card.contains("<svg"), "a QR code on every card");
            (door, url)
        })
        .collect()
}

fn tracking_of(page: &str) -> String {
    page.split("<strong id=\"tracking\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("a tracking number")
        .to_string()
}

struct World {
    _dir: tempfile::TempDir,
    server: TestServer,
    worker: Phone,
    centre: Phone,
    supervisor: String,
    households: Vec<HouseholdId>,
}

fn world(doors: &[&str]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"));
    let mut centre = server.phone(&dir.path().join("centre.db"), &[]);
    let mut worker = server.phone(&dir.path().join("w.db"), &["g1"]);
    let households = doors
        .iter()
        .map(|door| {
            centre
                .store
                .create_household(&Household::new(
                    HouseholdId::new(),
                    GridId::new("g1"),
                    "东村幸福路",
                    *door,
                ))
                .unwrap()
        })
        .collect();
    centre.sync().unwrap();
    worker.sync().unwrap();
    let supervisor = session(&server, "sv-card", "v", Role::VillageSupervisor);
    World {
        _dir: dir,
        server,
        worker,
        centre,
        supervisor,
        households,
    }
}

#[test]
fn a_request_left_on_a_card_reaches_the_workers_phone_and_its_state_the_resident() {
    let mut w = world(&["17号"]);
    let cards = printed_cards(&w.server, &w.supervisor, "g1");
    assert_eq!(cards.len(), 1);
    let (door, url) = &cards[0];
    assert_eq!(door, "17号");
    // The same card is printed again (the token is the household's until reissued).
    assert_eq!(printed_cards(&w.server, &w.supervisor, "g1"), cards);

    // The resident's page: no account, nothing of the household on it.
    let (status, page) = resident_get(url);
    assert_eq!(status, 200, "{page}");
    let text = visible(&page);
    assert!(text.contains("反映诉求") && text.contains("g1"), "{text}");
    assert!(
        !text.contains("17号") && !text.contains("东村幸福路"),
        "{text}"
    );

    // A request with what is wrong with it is refused, named by its field; nothing is stored.
    let (status, page) = resident_post(url, &[("kind", "request"), ("text", "  ")]);
    assert_eq!(status, 422);
    assert!(page.contains("data-field=\"text\""), "{page}");
    let (status, page) = resident_post(url, &[("text", "楼道灯坏了"), ("callback", "call me")]);
    assert_eq!(status, 422);
    assert!(page.contains("data-field=\"callback\""), "{page}");
    assert!(
        page.contains("楼道灯坏了"),
        "what was typed is kept on the page"
    );

    let (status, page) = resident_post(
        url,
        &[
            ("kind", "request"),
            ("category", "housing"),
            ("text", "楼道灯坏了，晚上看不见"),
            ("callback", "138 0013 8000"),
        ],
    );
    assert_eq!(status, 200, "{page}");
    let tracking = tracking_of(&page);
    assert_eq!(tracking.len(), 11, "{tracking}");

    // At the next sync the worker's phone holds it, the worker first-responsible.
    w.worker.sync().unwrap();
    let h = w.worker.store.household(w.households[0]).unwrap();
    let card_demands: Vec<&Demand> = h
        .demands
        .values()
        .filter(|d| d.source == Some(DemandSource::Card))
        .collect();
    assert_eq!(
        card_demands.len(),
        1,
        "exactly one: the refused forms stored nothing"
    );
    let d = card_demands[0];
    assert!(d.text.contains("楼道灯坏了，晚上看不见") && d.text.contains("13800138000"));
    assert_eq!(d.category, NeedCategory::Housing);
    assert_eq!(d.first_responsible, Some(w.worker.author.user));
    assert_ne!(d.raised_by, w.worker.author.user);

    // The resident looks it up with the number, as typed (lower case, no dash too).
    let lookup = |number: &str| resident_get(&format!("{url}?track={number}"));
    let (status, page) = lookup(&tracking.to_lowercase().replace('-', ""));
    assert_eq!(status, 200, "{page}");
    assert!(
        visible(&page).contains(DemandStatus::Raised.label()),
        "{page}"
    );
    let (status, _) = lookup("ZZZZZ-ZZZZZ");
    assert_eq!(status, 404);
    // The order is handled and finished; the resident's page says so.
    for step in [
        serde_json::json!({"action": "take", "comment": "已联系电工"}),
        serde_json::json!({"action": "finish", "comment": "已更换灯泡"}),
    ] {
        let (status, body) = call(
            "POST",
            &format!("{}/api/v1/orders/{}/steps", w.server.url, d.id),
            &w.centre.token(),
            Some(step),
        );
        assert_eq!(status, 200, "{body}");
    }
    let (_, page) = lookup(&tracking);
    let text = visible(&page);
    assert!(
        text.contains(DemandStatus::Done.label()) && text.contains("已办结"),
        "{text}"
    );
    assert!(
        !text.contains("已更换灯泡"),
        "the resident sees the state, not the notes"
    );
}

#[test]
fn a_card_takes_a_few_requests_a_day_a_client_a_few_an_hour_and_a_reissued_card_is_refused() {
    let w = world(&["1号", "2号", "3号", "4号"]);
    let cards = printed_cards(&w.server, &w.supervisor, "g1");
    assert_eq!(cards.len(), 4);
    let ask = |url: &str| resident_post(url, &[("text", "路灯不亮")]).0;
    // Three a day on one card; the fourth is refused, whoever sends it.
    for _ in 0..3 {
        assert_eq!(ask(&cards[0].1), 200);
    }
    assert_eq!(ask(&cards[0].1), 429);
    // Ten an hour from one client address, across cards.
    for _ in 0..3 {
        assert_eq!(ask(&cards[1].1), 200);
    }
    for _ in 0..3 {
        assert_eq!(ask(&cards[2].1), 200);
    }
    assert_eq!(ask(&cards[3].1), 200);
    assert_eq!(ask(&cards[3].1), 429, "the client's eleventh in the hour");

    // A card reissued: the old token is refused at once, the new one works.
    let (door, old) = cards[0].clone();
    let household = w.households[0];
    let (status, _) = post_form(
        &format!("{}/households/{household}/card/reissue", w.server.url),
        &w.supervisor,
        &[],
    );
    assert!(status == 303 || status == 200, "{status}");
    let (status, page) = resident_get(&old);
    assert_eq!(status, 404);
    assert!(visible(&page).contains("此卡已失效"), "{page}");
    assert_eq!(resident_post(&old, &[("text", "还在吗")]).0, 404);
    let again = printed_cards(&w.server, &w.supervisor, "g1");
    let new = &again.iter().find(|(d, _)| *d == door).unwrap().1;
    assert_ne!(new, &old);
    assert_eq!(resident_get(new).0, 200);
    // Reissuing is a supervisor's: the grid's worker may not.
    let worker = session(&w.server, "w-card", "g1", Role::GridWorker);
    let (status, _) = post_form(
        &format!("{}/households/{household}/card/reissue", w.server.url),
        &worker,
        &[],
    );
    assert_eq!(status, 403);
    // A token that was never issued, or is not one at all, is refused alike.
    let base = old.rsplit_once("/card/").unwrap().0;
    for bad in ["0000000000000000000000000A", "x", "%3Cscript%3E"] {
        assert_eq!(resident_get(&format!("{base}/card/{bad}")).0, 404, "{bad}");
    }
}
