//! Photos on the server (SYNC-v1 §14.3), over real HTTP: a reference travels in a household's
//! changes through `/v1/sync` first, then the bytes go by `HEAD`/`PATCH` resumable by offset,
//! and come back by `GET`, to the devices and supervisors of the household's grid only.

use std::io::Write;

use qiaomen_protocol::{
    doc::HouseholdDoc,
    ids::{GridId, HouseholdId, PhotoId},
    photo::{MAX_PHOTO_PIECE_BYTES, MediaType, Photo, PhotoSubject, hash_of},
    schema::{Hazard, HazardKind, Household},
};
use qiaomen_server::access::Role;
use qiaomen_tests::{Phone, TestServer, block_on, now_ms, sample_visit, session, today};

const PIECE_TYPE: &str = "application/offset+octet-stream";

/// What a photo shows, for [`household_with`].
#[derive(Clone, Copy)]
enum Shows {
    Household,
    Visit,
    Hazard,
}

/// A photo to attach: its bytes as the reference names them, its media type and caption.
struct Shot {
    bytes: Vec<u8>,
    media_type: MediaType,
    caption: &'static str,
    shows: Shows,
}

impl Shot {
    fn jpeg_like(bytes: Vec<u8>) -> Shot {
        Shot {
            bytes,
            media_type: MediaType::Jpeg,
            caption: "",
            shows: Shows::Household,
        }
    }
}

/// `n` bytes that pass the server's format check as a JPEG (its signature), the rest
/// pseudo-random from `seed`.
fn jpeg_like(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0];
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push((x >> 33) as u8);
    }
    out.truncate(n);
    out
}

/// A real PNG of `w` × `h` pixels (stored deflate blocks: no compressor needed).
fn png(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // no filter
        for x in 0..w {
            raw.extend_from_slice(&[(x * 7) as u8, (y * 5) as u8, 120]);
        }
    }
    let mut z = vec![0x78, 0x01];
    for (i, block) in raw.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= raw.len();
        z.push(u8::from(last));
        z.extend_from_slice(&(block.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(block.len() as u16)).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A household of `grid` made by `phone`'s user, with a visit (one hazard) and the photo
/// references of `shots`, synced through `/v1/sync` as its changes (the phone's own records
/// are not involved: the bytes stay with the test). Returns its id and the photos' hashes.
fn household_with(
    phone: &Phone,
    url: &str,
    grid: &str,
    shots: &[Shot],
) -> (HouseholdId, Vec<String>) {
    let author = phone.author;
    let now = now_ms();
    let h = Household::new(HouseholdId::new(), GridId::new(grid), "东村", "7");
    let mut doc = HouseholdDoc::create(&h, &author, now).expect("created");
    // The latest visit day (the 15th or the 30th) up to today.
    let mut day = today();
    while !qiaomen_protocol::calendar::is_visit_day(day) {
        day = day.add_days(-1);
    }
    let mut visit = sample_visit(&author, day, "走访");
    visit.hazards = vec![Hazard {
        kind: HazardKind::Electrical,
        detail: "电线下垂".into(),
    }];
    doc.add_visit(&author, now, &visit, &[]).expect("visit");
    let mut hashes = Vec::new();
    for shot in shots {
        let photo = Photo {
            id: PhotoId::new(),
            hash: hash_of(&shot.bytes),
            size: shot.bytes.len() as u64,
            media_type: shot.media_type,
            taken_at_ms: now,
            caption: shot.caption.into(),
            subject: match shot.shows {
                Shows::Household => PhotoSubject::Household,
                Shows::Visit => PhotoSubject::Visit { visit: visit.id },
                Shows::Hazard => PhotoSubject::Hazard {
                    visit: visit.id,
                    item: 0,
                },
            },
            by: author.user,
            device: author.device,
        };
        doc.attach_photo(&author, now, &photo).expect("attached");
        hashes.push(photo.hash);
    }
    let (status, resp) =
        qiaomen_tests::raw_upload(url, &phone.token(), h.id, doc.changes_since(&[]));
    assert_eq!(status, 200, "the records sync");
    let resp = resp.expect("a sync answer");
    assert!(
        resp.rejected.is_empty(),
        "every change is taken: {:?}",
        resp.rejected
    );
    (h.id, hashes)
}

/// An answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn offset(&self) -> u64 {
        self.header("upload-offset")
            .expect("an Upload-Offset")
            .parse()
            .expect("a number")
    }

    fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body).unwrap_or_default()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn send(method: &str, url: &str, token: &str, offset: Option<u64>, body: Option<&[u8]>) -> Answer {
    block_on(async {
        let mut req = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("a method"),
                url,
            )
            .bearer_auth(token);
        if let Some(o) = offset {
            req = req.header("upload-offset", o.to_string());
        }
        if let Some(b) = body {
            req = req.header("content-type", PIECE_TYPE).body(b.to_vec());
        }
        let resp = req.send().await.expect("the server answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("a body").to_vec(),
        }
    })
}

fn photo_url(server: &TestServer, hash: &str) -> String {
    format!("{}/v1/photos/{hash}", server.url)
}

fn head(server: &TestServer, token: &str, hash: &str) -> Answer {
    send("HEAD", &photo_url(server, hash), token, None, None)
}

fn patch(server: &TestServer, token: &str, hash: &str, offset: u64, bytes: &[u8]) -> Answer {
    send(
        "PATCH",
        &photo_url(server, hash),
        token,
        Some(offset),
        Some(bytes),
    )
}

fn get(server: &TestServer, token: &str, hash: &str) -> Answer {
    send("GET", &photo_url(server, hash), token, None, None)
}

/// Sends the whole photo in pieces of at most the largest a request takes.
fn upload(server: &TestServer, token: &str, hash: &str, bytes: &[u8]) -> Answer {
    let mut offset = 0;
    loop {
        let end = (offset + MAX_PHOTO_PIECE_BYTES).min(bytes.len());
        let a = patch(server, token, hash, offset as u64, &bytes[offset..end]);
        if a.status != 204 || end == bytes.len() {
            return a;
        }
        offset = end;
    }
}

/// A PATCH cut by the link: its headers announce `announced` bytes, only `sent` of them go,
/// then the connection closes. Returns the bytes written.
fn cut_patch(
    server: &TestServer,
    token: &str,
    hash: &str,
    offset: u64,
    piece: &[u8],
    sent: usize,
) -> usize {
    let mut s = std::net::TcpStream::connect(server.addr).expect("connects");
    let head = format!(
        "PATCH /v1/photos/{hash} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {PIECE_TYPE}\r\nUpload-Offset: {offset}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        piece.len()
    );
    s.write_all(head.as_bytes()).expect("headers go");
    s.write_all(&piece[..sent]).expect("some of the body goes");
    s.flush().expect("flushed");
    drop(s);
    sent
}

/// `HEAD` until the server holds `want` bytes (a cut piece is kept once the server has seen
/// the cut, which may come a moment after the phone's next request), at most 10 s.
fn offset_reaches(server: &TestServer, token: &str, hash: &str, want: u64) -> Answer {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let a = head(server, token, hash);
        if a.offset() >= want || std::time::Instant::now() > until {
            return a;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_upload_cut_at_20_offsets_keeps_what_arrived_and_sends_each_byte_once_but_for_lost_answers() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(&dir.path().join("srv"));
    let phone = server.phone(&dir.path().join("phone.db"), &["g"]);
    let bytes = jpeg_like(300_000, 1);
    let (_, hashes) = household_with(&phone, &server.url, "g", &[Shot::jpeg_like(bytes.clone())]);
    let (hash, token) = (&hashes[0], phone.token());
    let a = head(&server, &token, hash);
    assert_eq!(a.status, 200);
    assert_eq!(
        (
            a.offset(),
            a.header("upload-length"),
            a.header("upload-complete")
        ),
        (0, Some("300000"), None)
    );
    assert_eq!(
        a.header("cache-control"),
        Some("no-store"),
        "an offset is never cached"
    );
    // The pieces end at 20 offsets spread over the photo, then at its end; each of the 20 is
    // cut mid-body once, and every other one's answer is lost too.
    let size = bytes.len();
    let ends: Vec<usize> = (1..=20)
        .map(|i| size * i / 21 + (i * 37) % 500)
        .chain([size])
        .collect();
    // Bytes sent, and of them the pieces sent again because their answer was lost.
    let (mut sent, mut again_sent) = (0, 0);
    let mut offset = 0;
    for (i, &end) in ends.iter().enumerate() {
        if end < size {
            // Cut mid-body: what arrived is kept, and the phone asks where to go on.
            let piece = &bytes[offset..end];
            let half = piece.len() / 2;
            sent += cut_patch(&server, &token, hash, offset as u64, piece, half);
            let kept = (offset + half) as u64;
            let a = offset_reaches(&server, &token, hash, kept);
            assert_eq!((a.status, a.offset()), (200, kept), "cut before {end}");
            offset += half;
        }
        let piece = &bytes[offset..end];
        let a = patch(&server, &token, hash, offset as u64, piece);
        sent += piece.len();
        assert_eq!(a.status, 204, "the piece up to {end}: {}", a.code());
        assert_eq!(a.offset(), end as u64);
        if i % 2 == 1 && end < size {
            // The answer was lost: the phone sends the piece again and is told where it is.
            let again = patch(&server, &token, hash, offset as u64, piece);
            again_sent += piece.len();
            assert_eq!(
                (again.status, again.code()),
                (409, "offset_mismatch".to_string())
            );
            assert_eq!(again.offset(), end as u64);
        }
        let a = head(&server, &token, hash);
        assert_eq!(a.offset(), end as u64, "HEAD after the piece up to {end}");
        offset = end;
    }
    let a = head(&server, &token, hash);
    assert_eq!(
        (
            a.offset(),
            a.header("upload-length"),
            a.header("upload-complete")
        ),
        (size as u64, Some("300000"), Some("?1"))
    );
    // A cut costs nothing sent again; only a lost answer does (its piece, once).
    assert_eq!(sent, size, "bytes sent once for a photo of {size}");
    assert!(again_sent < size / 2, "sent again: {again_sent}");
    // A complete photo taken again is acknowledged as complete (idempotent).
    let a = patch(&server, &token, hash, 0, &bytes[..10]);
    assert_eq!((a.status, a.offset()), (204, size as u64));
    assert_eq!(a.header("upload-complete"), Some("?1"));
    let a = get(&server, &token, hash);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("image/jpeg"));
    assert!(a.body == bytes, "the photo comes back byte for byte");
}

#[test]
fn bytes_that_are_not_the_photo_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(&dir.path().join("srv"));
    let phone = server.phone(&dir.path().join("phone.db"), &["g"]);
    let right = jpeg_like(100_000, 2);
    let png_bytes = png(4, 4);
    let (_, hashes) = household_with(
        &phone,
        &server.url,
        "g",
        &[
            Shot::jpeg_like(right.clone()),
            // The reference says WebP; the bytes are a PNG.
            Shot {
                bytes: png_bytes.clone(),
                media_type: MediaType::Webp,
                caption: "",
                shows: Shows::Household,
            },
        ],
    );
    let token = phone.token();
    let mut wrong = right.clone();
    wrong[50_000] ^= 1;
    let a = upload(&server, &token, &hashes[0], &wrong);
    assert_eq!((a.status, a.code()), (422, "hash_mismatch".to_string()));
    let a = head(&server, &token, &hashes[0]);
    assert_eq!(
        (a.status, a.offset(), a.header("upload-complete")),
        (200, 0, None)
    );
    assert_eq!(get(&server, &token, &hashes[0]).status, 404);
    let a = upload(&server, &token, &hashes[1], &png_bytes);
    assert_eq!((a.status, a.code()), (422, "media_type".to_string()));
    assert_eq!(head(&server, &token, &hashes[1]).offset(), 0);
    // The right bytes are taken after a refusal.
    assert_eq!(upload(&server, &token, &hashes[0], &right).status, 204);
    assert_eq!(get(&server, &token, &hashes[0]).body, right);
}

#[test]
fn a_device_outside_the_grid_and_a_photo_whose_record_is_not_stored_are_404() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(&dir.path().join("srv"));
    let phone = server.phone(&dir.path().join("phone.db"), &["g"]);
    let outsider = server.phone(&dir.path().join("outsider.db"), &["g2"]);
    let bytes = jpeg_like(20_000, 3);
    let (_, hashes) = household_with(&phone, &server.url, "g", &[Shot::jpeg_like(bytes.clone())]);
    let hash = &hashes[0];
    assert_eq!(upload(&server, &phone.token(), hash, &bytes).status, 204);
    let other = outsider.token();
    for a in [
        head(&server, &other, hash),
        patch(&server, &other, hash, 0, &bytes[..100]),
        get(&server, &other, hash),
    ] {
        assert_eq!(a.status, 404);
    }
    assert_eq!(
        patch(&server, &other, hash, 0, &bytes[..100]).code(),
        "unknown_photo"
    );
    // Records first: bytes for a hash no stored record refers to are not taken.
    let unsynced = jpeg_like(5_000, 4);
    let a = patch(&server, &phone.token(), &hash_of(&unsynced), 0, &unsynced);
    assert_eq!((a.status, a.code()), (404, "unknown_photo".to_string()));
    let a = head(&server, &phone.token(), "ABC");
    assert_eq!(a.status, 400);
    assert_eq!(
        patch(
            &server,
            &phone.token(),
            &hash.to_uppercase(),
            0,
            &bytes[..10]
        )
        .code(),
        "bad_hash"
    );
    // Over a piece's size, or past the photo's end.
    let big = vec![0; MAX_PHOTO_PIECE_BYTES + 1];
    assert_eq!(patch(&server, &phone.token(), hash, 0, &big).status, 413);
}

#[test]
fn a_device_over_its_daily_photo_bytes_gets_429_until_the_next_day() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start_with(
        &dir.path().join("srv"),
        "127.0.0.1:0".parse().unwrap(),
        |c| c.photo_quota_bytes = 150_000,
    );
    let phone = server.phone(&dir.path().join("phone.db"), &["g"]);
    let bytes = jpeg_like(200_000, 5);
    let (_, hashes) = household_with(&phone, &server.url, "g", &[Shot::jpeg_like(bytes.clone())]);
    let token = phone.token();
    assert_eq!(
        patch(&server, &token, &hashes[0], 0, &bytes[..100_000]).status,
        204
    );
    let a = patch(&server, &token, &hashes[0], 100_000, &bytes[100_000..]);
    assert_eq!((a.status, a.code()), (429, "photo_quota".to_string()));
    let retry: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    assert_eq!(
        head(&server, &token, &hashes[0]).offset(),
        100_000,
        "nothing of it kept"
    );
}

#[test]
fn a_supervisor_of_the_grid_sees_the_thumbnails_and_opening_a_photo_is_audited() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(&dir.path().join("srv"));
    let phone = server.phone(&dir.path().join("phone.db"), &["g"]);
    let picture = png(640, 480);
    let (id, hashes) = household_with(
        &phone,
        &server.url,
        "g",
        &[
            Shot {
                bytes: picture.clone(),
                media_type: MediaType::Png,
                caption: "配电箱电线下垂",
                shows: Shows::Hazard,
            },
            Shot {
                bytes: jpeg_like(30_000, 6),
                media_type: MediaType::Jpeg,
                caption: "门牌",
                shows: Shows::Visit,
            },
        ],
    );
    assert_eq!(
        upload(&server, &phone.token(), &hashes[0], &picture).status,
        204
    );
    let head_of_grid = session(&server, "zhang", "g", Role::GridHead);
    let outsider = session(&server, "li", "g2", Role::GridHead);

    let (status, page) =
        qiaomen_tests::get_text(&format!("{}/households/{id}", server.url), &head_of_grid);
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("/photos/{}/thumb", hashes[0])),
        "{page}"
    );
    assert!(page.contains(&format!("href=\"/photos/{}\"", hashes[0])));
    assert!(page.contains("隐患照片") && page.contains("配电箱电线下垂"));
    assert!(
        page.contains("照片未上传"),
        "the photo not uploaded yet says so"
    );
    assert!(!page.contains(&format!("/photos/{}/thumb", hashes[1])));

    let (status, ct, thumb) = qiaomen_tests::get_raw(
        &format!("{}/photos/{}/thumb", server.url, hashes[0]),
        &head_of_grid,
    );
    assert_eq!((status, ct.as_str()), (200, "image/jpeg"));
    assert!(thumb.starts_with(&[0xFF, 0xD8, 0xFF]) && thumb.len() < picture.len());
    let (status, ct, full) = qiaomen_tests::get_raw(
        &format!("{}/photos/{}", server.url, hashes[0]),
        &head_of_grid,
    );
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert!(full == picture);
    let audit = server.access().audit_log(0, 10_000).expect("audit");
    assert!(
        audit.iter().any(|e| e.action == "photo_opened"
            && e.outcome == "ok"
            && e.target.as_deref() == Some(&format!("{id}:{}", hashes[0]))),
        "the opening is audited"
    );

    for path in [
        format!("/photos/{}", hashes[0]),
        format!("/photos/{}/thumb", hashes[0]),
    ] {
        let (status, _, _) = qiaomen_tests::get_raw(&format!("{}{path}", server.url), &outsider);
        assert_eq!(status, 404, "{path} outside the supervisor's grids");
    }
    assert!(
        server
            .access()
            .audit_log(0, 10_000)
            .unwrap()
            .iter()
            .any(|e| e.action == "photo_opened" && e.outcome == "denied")
    );

    // The grid's export lists the photos as links.
    let (status, _, csv) = qiaomen_tests::get_raw(
        &format!("{}/api/v1/grids/g/export?format=csv", server.url),
        &head_of_grid,
    );
    assert_eq!(status, 200);
    let csv = String::from_utf8(csv).expect("utf-8");
    assert!(csv.lines().next().unwrap().contains("照片"));
    assert!(csv.contains(&format!("/photos/{}", hashes[0])));
}

/// The photo store on an S3-compatible server (`QIAOMEN_TEST_S3`, the moto server `.ci/run`
/// starts): a cut upload resumed, the photo fetched, a wrong one refused.
#[test]
fn photos_are_kept_in_an_s3_bucket() {
    let Ok(endpoint) = std::env::var("QIAOMEN_TEST_S3") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the S3 test: QIAOMEN_TEST_S3 must be set"
        );
        println!("note: QIAOMEN_TEST_S3 is not set; the S3 photo store was not tested");
        return;
    };
    let bucket = format!("qiaomen-test-{}", qiaomen_protocol::ids::PhotoId::new())
        .to_lowercase()
        .replace('_', "-");
    // moto takes a bucket made by an unsigned PUT.
    let made = block_on(async {
        reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("the S3 server answers")
            .status()
    });
    assert!(made.is_success(), "bucket made: {made}");
    let dir = tempfile::tempdir().expect("dir");
    let s3 = qiaomen_server::blobs::S3Settings {
        url: format!("s3://{bucket}/county"),
        endpoint: Some(endpoint.clone()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        region: Some("us-east-1".into()),
    };
    let server = TestServer::start_with(
        &dir.path().join("srv"),
        "127.0.0.1:0".parse().unwrap(),
        |c| c.photos = Some(s3),
    );
    let phone = server.phone(&dir.path().join("phone.db"), &["g"]);
    let bytes = jpeg_like(400_000, 7);
    let wrong = jpeg_like(50_000, 8);
    let (_, hashes) = household_with(
        &phone,
        &server.url,
        "g",
        &[
            Shot::jpeg_like(bytes.clone()),
            Shot::jpeg_like(wrong.clone()),
        ],
    );
    let token = phone.token();
    assert_eq!(
        patch(&server, &token, &hashes[0], 0, &bytes[..150_000]).status,
        204
    );
    cut_patch(
        &server,
        &token,
        &hashes[0],
        150_000,
        &bytes[150_000..300_000],
        10_000,
    );
    // What came before the cut is kept in the bucket too.
    assert_eq!(
        offset_reaches(&server, &token, &hashes[0], 160_000).offset(),
        160_000
    );
    assert_eq!(
        patch(&server, &token, &hashes[0], 160_000, &bytes[160_000..]).status,
        204
    );
    let a = head(&server, &token, &hashes[0]);
    assert_eq!(
        (a.offset(), a.header("upload-complete")),
        (400_000, Some("?1"))
    );
    assert!(get(&server, &token, &hashes[0]).body == bytes);
    let mut bad = wrong.clone();
    bad[100] ^= 1;
    assert_eq!(upload(&server, &token, &hashes[1], &bad).status, 422);
    assert_eq!(head(&server, &token, &hashes[1]).offset(), 0);
    // The objects are where the keys say, under the prefix.
    let listing = block_on(async {
        reqwest::Client::new()
            .get(format!("{endpoint}/{bucket}?list-type=2&prefix=county/"))
            .send()
            .await
            .expect("listed")
            .text()
            .await
            .expect("text")
    });
    assert!(
        listing.contains(&format!("county/photos/{}", hashes[0])),
        "{listing}"
    );
    assert!(
        !listing.contains("county/partial/"),
        "no piece is left: {listing}"
    );
}
