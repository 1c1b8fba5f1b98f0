//! The HTTP edge against the real server on 127.0.0.1, as slow, oversized and hostile clients
//! and browsers meet it: read timeouts, body limits, connections per peer, the client address
//! behind a trusted proxy and the failure counts keyed on it, the cross-site check, the
//! headers of pages and exports, and what personal data a supervisor's view shows.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use qiaomen_protocol::{ids::*, schema::*};
use qiaomen_server::access::Role;
use qiaomen_tests::{TestServer, block_on, call, form_body, session};

const PASSWORD: &str = "edge-password-1";

/// A server whose edge `configure` adjusts (short timeouts, a trusted proxy, ...).
fn server_with(
    dir: &tempfile::TempDir,
    configure: impl FnOnce(&mut qiaomen_server::http::edge::EdgeConfig),
) -> TestServer {
    TestServer::start_with(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
        |config| configure(&mut config.edge),
    )
}

/// A connection that gives up reading after `limit`: a server that holds it open longer
/// fails the test.
fn connect(server: &TestServer, limit: Duration) -> TcpStream {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream
}

/// Everything the server sends until it closes the connection; `Err` if it is still open
/// when the read timeout passes.
fn read_to_close(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // The server closed while data we sent was unread: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            Err(e) => return Err(e),
        }
    }
}

fn status_of(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

/// A user of `unit` with `role` and [`PASSWORD`].
fn user_with_password(server: &TestServer, login: &str, unit: &str, role: Role) {
    let db = server.access();
    let user = db.add_user(login, "督导").unwrap();
    db.assign(user, unit, role, 0).unwrap();
    db.set_password(user, PASSWORD).unwrap();
}

/// `POST /v1/login` as JSON, from `forwarded_for` (an `X-Forwarded-For`) if given.
fn login(server: &TestServer, name: &str, password: &str, forwarded_for: Option<&str>) -> u16 {
    block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1/login", server.url))
            .json(&serde_json::json!({"login": name, "password": password}));
        if let Some(xff) = forwarded_for {
            req = req.header("x-forwarded-for", xff);
        }
        req.send().await.unwrap().status().as_u16()
    })
}

#[test]
fn half_sent_headers_and_a_stalled_body_are_closed_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |edge| {
        edge.header_read_timeout = Duration::from_millis(500);
        edge.body_read_timeout = Duration::from_millis(500);
    });
    // Half the headers, then nothing: closed, without an answer to a request never made.
    let mut half = connect(&server, Duration::from_secs(10));
    half.write_all(b"POST /v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        .unwrap();
    read_to_close(&mut half).expect("half-sent headers are closed");

    // An idle connection is closed as well.
    let mut idle = connect(&server, Duration::from_secs(10));
    read_to_close(&mut idle).expect("an idle connection is closed");

    // 60 KB promised (under the limit), one byte sent: 408 and closed.
    for path in ["/v1/login", "/v1/sync"] {
        let mut stalled = connect(&server, Duration::from_secs(10));
        write!(
            stalled,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 60000\r\n\r\n{{"
        )
        .unwrap();
        let response = read_to_close(&mut stalled).expect("a stalled body is closed");
        // The sync route authenticates before it reads: an unknown device is 401 at once.
        let expected = if path == "/v1/sync" { 401 } else { 408 };
        assert_eq!(status_of(&response), Some(expected), "{path}: {response}");
    }

    // A device's stalled sync body is 408 too.
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    phone.sync().unwrap();
    let token = phone.store.credentials().unwrap().unwrap().token;
    let mut stalled = connect(&server, Duration::from_secs(10));
    write!(
        stalled,
        "POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {}\r\nContent-Length: 100000\r\n\r\nx",
        qiaomen_protocol::wire::CONTENT_TYPE
    )
    .unwrap();
    let response = read_to_close(&mut stalled).expect("a stalled sync is closed");
    assert_eq!(status_of(&response), Some(408), "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    // The server is fine.
    phone.sync().unwrap();
}

#[test]
fn a_400_mb_login_body_is_refused_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    // The default timeouts: an answer within seconds proves the body was never waited for.
    let server = server_with(&dir, |_| {});
    let mut big = connect(&server, Duration::from_secs(5));
    big.write_all(
        b"POST /v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 400000000\r\n\r\n{\"login\":\"",
    )
    .unwrap();
    let response = read_to_close(&mut big).expect("refused at once, and closed");
    assert_eq!(status_of(&response), Some(413), "{response}");
    assert!(response.contains("too_large"), "{response}");

    // Chunked, no length said: cut at the limit while it streams.
    let mut chunked = connect(&server, Duration::from_secs(10));
    chunked
        .write_all(
            b"POST /v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
    let mut writer = chunked.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 16 * 1024];
        let mut sent = 0usize;
        while sent < 400_000_000 {
            let ok = write!(writer, "{:x}\r\n", chunk.len()).is_ok()
                && writer.write_all(&chunk).is_ok()
                && writer.write_all(b"\r\n").is_ok();
            if !ok {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let response = read_to_close(&mut chunked).expect("a chunked flood is cut and closed");
    assert_eq!(status_of(&response), Some(413), "{response}");
    let sent = sender.join().unwrap();
    assert!(
        sent < 400_000_000,
        "the server stopped reading: {sent} bytes went out"
    );
    // Logins still work.
    user_with_password(&server, "s-after", "t", Role::TownSupervisor);
    assert_eq!(login(&server, "s-after", PASSWORD, None), 200);
}

#[test]
fn login_failures_count_per_client_and_per_name_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |edge| {
        edge.trust_proxy = vec![qiaomen_server::http::edge::parse_cidr("127.0.0.1").unwrap()];
    });
    for name in ["s-honest", "s-victim"] {
        user_with_password(&server, name, "t", Role::TownSupervisor);
    }
    // One client behind the proxy guesses many names: after its 20 failures it is turned
    // away, whatever name it tries. The bucket refills one failure every 3 s, so a slow
    // machine's guesses may earn one more try each 3 s they take, never more.
    let started = std::time::Instant::now();
    let mut statuses: Vec<u16> = Vec::new();
    while statuses.len() < 40 && statuses.last() != Some(&429) {
        let i = statuses.len();
        statuses.push(login(
            &server,
            &format!("guess-{i}"),
            "wrong-password",
            Some("203.0.113.7"),
        ));
    }
    let refilled = (started.elapsed().as_secs_f64() / 3.0).ceil() as usize;
    let failures = statuses.len() - 1;
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses[..failures].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    assert!(
        (20..=20 + refilled).contains(&failures),
        "{failures} failures let through, {refilled} refilled"
    );
    // A client spoofing a forwarded address of its own is read right-most: still the same.
    assert_eq!(
        login(
            &server,
            "s-honest",
            PASSWORD,
            Some("198.51.100.1, 203.0.113.7")
        ),
        429
    );
    // Every other client behind the same proxy signs in.
    assert_eq!(
        login(&server, "s-honest", PASSWORD, Some("203.0.113.8")),
        200
    );

    // Many clients guess one person's password: the name is turned away after 10.
    let statuses: Vec<u16> = (0..11)
        .map(|i| {
            login(
                &server,
                "s-victim",
                "wrong-password",
                Some(&format!("198.51.100.{i}")),
            )
        })
        .collect();
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10], 429);
    // ... and only that name: the addresses that tried it may sign in as someone else.
    assert_eq!(
        login(&server, "s-honest", PASSWORD, Some("198.51.100.3")),
        200
    );
}

#[test]
fn a_forwarded_address_from_an_untrusted_peer_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    // The peer's bucket holds 20 failures and gains one every 3 s: on a loaded machine a few
    // more pass before it runs dry, but it does. Had each claimed address its own bucket, no
    // attempt of the 60 would be refused.
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let spoofed = format!("198.51.100.{i}");
        let status = login(
            &server,
            &format!("guess-{i}"),
            "wrong-password",
            Some(&spoofed),
        );
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    let refilled = (started.elapsed().as_secs_f64() / 3.0).ceil() as usize;
    let failed = statuses.iter().take_while(|s| **s == 401).count();
    assert_eq!(
        statuses.last(),
        Some(&429),
        "one peer, one bucket, whatever it claims: {statuses:?}"
    );
    assert!(
        (20..=20 + refilled).contains(&failed),
        "{failed} failures before the refusal, {refilled} refilled"
    );
}

#[test]
fn an_answer_the_server_could_not_give_is_not_counted_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    user_with_password(&server, "s-chen", "t", Role::TownSupervisor);
    // The audit log cannot be written: every login fails on the server's side (503).
    let db = operator_sql(&server);
    db("ALTER TABLE audit RENAME TO audit_away");
    let statuses: Vec<u16> = (0..25)
        .map(|i| login(&server, &format!("guess-{i}"), "wrong-password", None))
        .collect();
    assert_eq!(statuses, [503; 25], "5xx, never 429");
    db("ALTER TABLE audit_away RENAME TO audit");
    assert_eq!(login(&server, "s-chen", PASSWORD, None), 200);
}

/// Runs SQL on the server's database from outside, as an operator would.
fn operator_sql(server: &TestServer) -> impl Fn(&str) + use<> {
    let db = server.db();
    move |sql: &str| db.batch(sql).unwrap()
}

#[test]
fn connections_from_one_peer_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |edge| edge.max_connections_per_peer = 4);
    let open: Vec<TcpStream> = (0..4)
        .map(|_| connect(&server, Duration::from_secs(5)))
        .collect();
    // The accept loop counts them as it takes them: wait until the cap is reached.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let mut extra = connect(&server, Duration::from_secs(5));
        extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .ok();
        let mut buf = [0u8; 512];
        let n = extra.read(&mut buf).unwrap_or(0);
        let response = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status_of(&response) == Some(429) || std::time::Instant::now() > deadline {
            break response;
        }
        // Answered (the cap was not reached yet): this one closes, try again.
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status_of(&refused), Some(429), "{refused}");
    assert!(refused.contains("too_many_connections"));
    // One closes: another may open.
    drop(open);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = block_on(async {
            let r = reqwest::get(format!("{}/healthz", server.url))
                .await
                .unwrap();
            (r.status().as_u16(), ())
        });
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still refused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A browser-like client: no redirects followed, cookies by hand.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the login form (same origin); returns the session cookie.
fn form_login(server: &TestServer, name: &str) -> String {
    block_on(async {
        let resp = browser()
            .post(format!("{}/login", server.url))
            .header("origin", &server.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("login", name), ("password", PASSWORD)]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303);
        let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"), "plain HTTP: no Secure flag");
        cookie.split(';').next().unwrap().to_string()
    })
}

/// A form POST with `cookie` and the given origin headers; returns the status.
fn form_post(server: &TestServer, path: &str, cookie: &str, headers: &[(&str, &str)]) -> u16 {
    block_on(async {
        let mut req = browser()
            .post(format!("{}{path}", server.url))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("title", "本周清单"),
                ("items", "走访独居老人"),
                ("units", "g1"),
            ]));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap().status().as_u16()
    })
}

#[test]
fn a_cross_site_post_is_refused_and_a_same_origin_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    user_with_password(&server, "s-town", "t", Role::TownSupervisor);
    let cookie = form_login(&server, "s-town");
    let origin = server.url.as_str();
    let referer = format!("{}/tasks", server.url);
    assert_eq!(
        form_post(
            &server,
            "/tasks",
            &cookie,
            &[("origin", "http://evil.example")]
        ),
        403
    );
    assert_eq!(
        form_post(&server, "/tasks", &cookie, &[("origin", "null")]),
        403
    );
    assert_eq!(
        form_post(
            &server,
            "/tasks",
            &cookie,
            &[("referer", "http://evil.example/x")]
        ),
        403
    );
    assert_eq!(
        form_post(&server, "/tasks", &cookie, &[]),
        403,
        "signed in, says nothing"
    );
    // The JSON API answers with its typed body, the pages with a page.
    let (api, page) = block_on(async {
        let api = browser()
            .post(format!("{}/api/v1/tasks", server.url))
            .header("cookie", &cookie)
            .header("origin", "http://evil.example")
            .header("content-type", "application/json")
            .body(r#"{"title":"x","items":["y"]}"#)
            .send()
            .await
            .unwrap();
        let api = (api.status().as_u16(), api.text().await.unwrap());
        let page = browser()
            .post(format!("{}/logout", server.url))
            .header("cookie", &cookie)
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        (api, (page.status().as_u16(), page.text().await.unwrap()))
    });
    assert_eq!(api.0, 403);
    assert!(api.1.contains("\"cross_origin\""), "{}", api.1);
    assert_eq!(page.0, 403);
    assert!(page.1.contains("请求被拒绝"), "{}", page.1);
    // A cross-site login form (login CSRF) is refused as well.
    let status = block_on(async {
        browser()
            .post(format!("{}/login", server.url))
            .header("origin", "http://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("login", "s-town"), ("password", PASSWORD)]))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 403);
    let (_, lists) = call(
        "GET",
        &format!("{}/api/v1/tasks", server.url),
        &bearer(&server),
        None,
    );
    assert_eq!(
        lists.as_array().map(Vec::len),
        Some(0),
        "nothing was pushed"
    );
    // The same site, by Origin or by Referer: pushed, redirected back.
    assert_eq!(
        form_post(&server, "/tasks", &cookie, &[("origin", origin)]),
        303
    );
    assert_eq!(
        form_post(&server, "/tasks", &cookie, &[("referer", &referer)]),
        303
    );
    let (_, lists) = call(
        "GET",
        &format!("{}/api/v1/tasks", server.url),
        &bearer(&server),
        None,
    );
    assert_eq!(lists.as_array().map(Vec::len), Some(2));
    // A bearer token is not a browser's: no origin needed.
    let (status, _) = call(
        "POST",
        &format!("{}/v1/logout", server.url),
        &bearer(&server),
        None,
    );
    assert_eq!(status, 204);
}

/// A fresh session of a command-centre user, by bearer token.
fn bearer(server: &TestServer) -> String {
    session(
        server,
        &format!("cc-{}", UserId::new()),
        "c",
        Role::CommandCentre,
    )
}

#[test]
fn with_public_https_the_session_cookie_is_secure_and_host_prefixed() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |edge| edge.public_https = true);
    user_with_password(&server, "s-tls", "t", Role::TownSupervisor);
    let (cookie, me) = block_on(async {
        let resp = browser()
            .post(format!("{}/login", server.url))
            .header("origin", &server.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("login", "s-tls"), ("password", PASSWORD)]))
            .send()
            .await
            .unwrap();
        let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        let pair = cookie.split(';').next().unwrap().to_string();
        let me = browser()
            .get(format!("{}/v1/me", server.url))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        (cookie, me)
    });
    assert!(cookie.starts_with("__Host-qiaomen_session="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(!cookie.contains("Domain"), "{cookie}");
    assert_eq!(me, 200, "the prefixed cookie signs in");
}

/// A household of grid `g1` with a member whose ID number and birth date are known, synced.
fn household_with_member(
    server: &TestServer,
    dir: &tempfile::TempDir,
) -> (qiaomen_tests::Phone, HouseholdId, MemberId) {
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    let mut h = Household::new(
        HouseholdId::new(),
        GridId::new("g1"),
        "东村",
        "\t=cmd|'/c calc'",
    );
    h.address = "\r=1+1".into();
    let m = MemberId::new();
    h.members.insert(
        m,
        Member {
            id: m,
            relation: Relation::Head,
            name: "王建国".into(),
            id_number: Some(Sensitive::new("110105199001011232")),
            birth_date: Some("1990-01-01".parse().unwrap()),
            phone: Some(Sensitive::new("13812345678")),
            tags: vec![],
        },
    );
    let id = phone.store.create_household(&h).unwrap();
    phone.sync().unwrap();
    (phone, id, m)
}

#[test]
fn pages_exports_and_the_api_are_not_cached_or_framed_and_csv_cells_stay_inert() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    let (_phone, id, _) = household_with_member(&server, &dir);
    user_with_password(&server, "s-town", "t", Role::TownSupervisor);
    let cookie = form_login(&server, "s-town");
    let get = |path: &str| {
        block_on(async {
            let resp = browser()
                .get(format!("{}{path}", server.url))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            let headers = resp.headers().clone();
            (resp.status().as_u16(), headers, resp.text().await.unwrap())
        })
    };
    for path in [
        "/login".to_string(),
        "/".to_string(),
        format!("/households/{id}"),
        "/api/v1/grids/g1/export?format=csv".to_string(),
        "/api/v1/grids/g1/export?format=xlsx".to_string(),
        format!("/api/v1/households/{id}"),
        "/v1/me".to_string(),
    ] {
        let (status, headers, _) = get(&path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(
            headers["content-security-policy"], "frame-ancestors 'none'",
            "{path}"
        );
    }
    let (_, _, csv) = get("/api/v1/grids/g1/export?format=csv");
    assert!(csv.contains("\"'\t=cmd|'/c calc'\""), "{csv:?}");
    assert!(csv.contains("\"'\r=1+1\""), "{csv:?}");
    assert!(!csv.contains(",\"\t") && !csv.contains(",\"\r"), "{csv:?}");
}

#[test]
fn an_id_number_shows_only_its_last_four_digits_and_conflicting_ones_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    let (mut a, id, m) = household_with_member(&server, &dir);
    let mut b = server.phone(&dir.path().join("b.db"), &["g1"]);
    b.sync().unwrap();
    // Two phones correct the ID and phone numbers differently, offline.
    for (phone, id_number, mobile) in [
        (&mut a, "110105199001015671", "13900001111"),
        (&mut b, "110105199001019998", "13700002222"),
    ] {
        phone
            .store
            .edit_household(id, |h| {
                let member = h.members.get_mut(&m).unwrap();
                member.id_number = Some(Sensitive::new(id_number));
                member.phone = Some(Sensitive::new(mobile));
                Ok(())
            })
            .unwrap();
    }
    a.sync().unwrap();
    b.sync().unwrap();
    let token = bearer(&server);
    let (status, view) = call(
        "GET",
        &format!("{}/api/v1/households/{id}", server.url),
        &token,
        None,
    );
    assert_eq!(status, 200);
    let shown = view["people"][0]["id_number"].as_str().unwrap();
    assert_eq!(shown.chars().count(), 18);
    assert!(shown.starts_with("**************"), "{shown}");
    assert_eq!(view["people"][0]["birth_date"], "1990-01-01");
    let conflicts = view["conflicts"].as_array().unwrap();
    let fields: Vec<&str> = conflicts
        .iter()
        .map(|c| {
            c["path"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(
        fields.contains(&"id_number") && fields.contains(&"phone"),
        "{fields:?}"
    );
    for c in conflicts {
        for v in c["values"].as_array().unwrap() {
            let value = v["value"].as_str().unwrap();
            assert!(
                value.starts_with("**************") || value.contains("****"),
                "{value}"
            );
        }
    }
    let text = view.to_string();
    for secret in ["1101051990", "13900001111", "13700002222", "0000", "110105"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // The page shows what the API shows.
    user_with_password(&server, "s-town", "t", Role::TownSupervisor);
    let cookie = form_login(&server, "s-town");
    let page = block_on(async {
        browser()
            .get(format!("{}/households/{id}", server.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(page.contains("1990-01-01"));
    for secret in ["110105", "13900001111", "13700002222"] {
        assert!(!page.contains(secret), "{secret} on the page");
    }
}

#[test]
fn twenty_wrong_logins_at_once_do_not_hold_up_an_unrelated_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    let mut phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    phone.create_households("g1", 3);
    let logins: Vec<_> = (0..20)
        .map(|i| {
            let url = server.url.clone();
            std::thread::spawn(move || {
                block_on(async {
                    reqwest::Client::new()
                        .post(format!("{url}/v1/login"))
                        .json(&serde_json::json!({"login": format!("nobody-{i}"), "password": "wrong-password"}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
        })
        .collect();
    let report = phone.sync().expect("the sync completes");
    assert_eq!(report.accepted, 3, "{report:?}");
    let statuses: Vec<u16> = logins.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, [401; 20], "every login completes");
}

#[test]
fn a_task_list_for_too_many_units_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    let token = bearer(&server);
    let units: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    let (status, body) = call(
        "POST",
        &format!("{}/api/v1/tasks", server.url),
        &token,
        Some(serde_json::json!({"title": "清单", "items": ["走访"], "units": units})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("too_many_units"))
    );
    let (status, _) = call(
        "POST",
        &format!("{}/api/v1/tasks", server.url),
        &token,
        Some(serde_json::json!({"title": "清单", "items": ["走访"], "units": ["g1"]})),
    );
    assert_eq!(status, 201);
}

#[test]
fn token_rotation_is_rate_limited_per_token_and_guessed_tokens_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    let phone = server.phone(&dir.path().join("p.db"), &["g1"]);
    let token = phone.store.credentials().unwrap().unwrap().token;
    let rotate = |token: &str| {
        block_on(async {
            reqwest::Client::new()
                .post(format!("{}/v1/token", server.url))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // A lost answer is retried with the same token: a few times, not without end.
    let statuses: Vec<u16> = (0..11).map(|_| rotate(&token)).collect();
    assert_eq!(statuses[..10], [200; 10]);
    assert_eq!(statuses[10], 429);
    // Guessing tokens spends the address's failures.
    let guesses: Vec<u16> = (0..21).map(|i| rotate(&format!("qm_d_guess{i}"))).collect();
    assert_eq!(guesses[..20], [401; 20]);
    assert_eq!(guesses[20], 429);
}

#[test]
fn phones_enroll_while_others_sync_without_database_locked_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir, |_| {});
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four phones keep the writers busy.
    let syncing: Vec<_> = (0..4)
        .map(|i| {
            let mut phone = server.phone(&dir.path().join(format!("s{i}.db")), &["g1"]);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    phone.create_households("g1", 5);
                    phone.sync().expect("a busy phone syncs");
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    // Twelve phones enroll meanwhile, three at a time.
    let codes: Vec<String> = (0..12).map(|_| server.enrollment_code(&["g2"]).1).collect();
    for batch in codes.chunks(3) {
        let enrolling: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, code)| {
                let path = dir.path().join(format!("e-{code}-{i}.db"));
                let (url, code) = (server.url.clone(), code.clone());
                std::thread::spawn(move || {
                    qiaomen_tests::Phone::enroll(&path, &url, &code).map(|_| ())
                })
            })
            .collect();
        for e in enrolling {
            e.join().unwrap().expect("enrolls during syncs");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in syncing {
        assert!(s.join().unwrap() > 0);
    }
}
