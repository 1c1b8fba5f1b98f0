//! End-to-end tests of Qiaomen live in `tests/`; this library holds what they share.

pub mod link;

use autosurgeon::Text;
use qiaomen_protocol::{calendar::Day, doc::Author, ids::*, schema::*};

/// A plausible visit by `author` for `visit_day`.
pub fn sample_visit(author: &Author, visit_day: Day, note: &str) -> Visit {
    Visit {
        id: VisitId::new(),
        visit_day,
        worker: author.user,
        device: author.device,
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_900_000),
        gps: Some(Gps {
            lat: 34.7466,
            lon: 113.6253,
            accuracy_m: Some(6.0),
        }),
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![Need {
            category: NeedCategory::ElderlyCare,
            detail: "需要助餐服务".into(),
        }],
        disputes: vec![],
        hazards: vec![],
        publicity: vec![Publicity::AntiFraud, Publicity::FireSafety],
        note: Text::with_value(note),
        demands_raised: vec![],
    }
}

/// A resident's demand raised by `author` at `at_ms`, waiting to be taken or dispatched.
pub fn sample_demand(author: &Author, at_ms: i64, text: &str) -> Demand {
    Demand {
        id: DemandId::new(),
        raised_on_visit: None,
        raised_by: author.user,
        raised_at_ms: at_ms,
        category: NeedCategory::Housing,
        text: text.into(),
        urgency: Urgency::Normal,
        status: DemandStatus::Raised,
        history: vec![],
        first_responsible: None,
        source: Some(DemandSource::Visit),
        external_ref: None,
    }
}

use std::path::{Path, PathBuf};

use qiaomen_client_core::{Store, StoreOptions, SyncClient, SyncError, SyncReport};
use qiaomen_server::access::{AccessDb, Role, org::UnitKind};

/// A server in this process on 127.0.0.1:0, with its own runtime, stopped on drop. Its store
/// holds a test org: county `c` → town `t` → village `v` → grids `g`, `g1`, `g2`, `g00`..`g99`.
#[allow(missing_debug_implementations)]
pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub data_dir: PathBuf,
    /// The PostgreSQL database the server runs on (`QIAOMEN_TEST_BACKEND=postgres`), if not
    /// its embedded store.
    database: Option<TestDatabase>,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<qiaomen_server::RunningServer>,
}

/// A test server's own schema of `QIAOMEN_TEST_POSTGRES`.
#[derive(Debug)]
struct TestDatabase {
    base: String,
    schema: String,
    /// Dropped with the server (not when the server is started again on it).
    drop_with_server: bool,
}

impl TestDatabase {
    /// The database for a server on `data_dir`, under `QIAOMEN_TEST_BACKEND=postgres`: a
    /// schema named from the folder, so a server started again on the folder finds its store.
    fn for_data_dir(data_dir: &Path) -> Option<TestDatabase> {
        let (base, schema) = Self::named(data_dir)?;
        psql(&base, &format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
        Some(TestDatabase {
            base,
            schema,
            drop_with_server: true,
        })
    }

    /// The database and the schema of a server on `data_dir` (`None`: the embedded store).
    fn named(data_dir: &Path) -> Option<(String, String)> {
        match std::env::var("QIAOMEN_TEST_BACKEND").as_deref() {
            Ok("postgres") => {}
            Ok("sqlite") | Err(_) => return None,
            Ok(other) => panic!("QIAOMEN_TEST_BACKEND is sqlite or postgres, not {other:?}"),
        }
        let base = std::env::var("QIAOMEN_TEST_POSTGRES")
            .expect("QIAOMEN_TEST_BACKEND=postgres needs QIAOMEN_TEST_POSTGRES");
        use std::hash::{Hash, Hasher};
        let mut hash = std::hash::DefaultHasher::new();
        data_dir.hash(&mut hash);
        let schema = format!("srv_{}_{:016x}", std::process::id(), hash.finish());
        Some((base, schema))
    }

    /// The URL the server connects with: the base URL in the schema.
    fn url(&self) -> String {
        in_schema(&self.base, &self.schema)
    }

    fn store(&self) -> qiaomen_server::storage::PgStorage {
        qiaomen_server::storage::PgStorage::connect(&self.url(), 2).expect("the test database")
    }
}

/// The PostgreSQL URL `base` with `schema` as its search path (a test's or a bench's own).
pub fn in_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Runs `sql` (one statement, or several whose results are not read) on a connection of its
/// own to the PostgreSQL database at `url`.
pub fn psql(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answers");
        let task = tokio::spawn(conn);
        let rows = if sql.contains(';') {
            client.batch_execute(sql).await.expect("statements");
            Vec::new()
        } else {
            client.query(sql, &[]).await.expect("query")
        };
        drop(client);
        let _ = task.await;
        rows
    })
}

/// The access tables of the store of a server on `data_dir`: its embedded store, or under
/// `QIAOMEN_TEST_BACKEND=postgres` its schema of the test database.
pub fn access_at(data_dir: &Path) -> AccessDb {
    match TestDatabase::for_data_dir(data_dir) {
        None => AccessDb::open(data_dir).expect("access db"),
        Some(db) => AccessDb::on_postgres(&db.store()),
    }
}

/// The PostgreSQL URL a server process on `data_dir` runs with (its `--database`), under
/// `QIAOMEN_TEST_BACKEND=postgres`; `None` on the embedded store.
pub fn database_url(data_dir: &Path) -> Option<String> {
    TestDatabase::for_data_dir(data_dir).map(|db| db.url())
}

/// Whether the test servers run on the embedded store (not `QIAOMEN_TEST_BACKEND=postgres`):
/// what a test of the embedded store's own file (its online backup, its format versions, its
/// lock) checks first, since that file does not exist on PostgreSQL.
pub fn on_embedded_store() -> bool {
    TestDatabase::named(Path::new("")).is_none()
}

/// Creates the test org in the store at `data_dir` (idempotent).
pub fn seed_test_org(data_dir: &Path) {
    seed_test_org_in(&mut access_at(data_dir));
}

/// Creates the test org in the access tables of `db` (idempotent).
pub fn seed_test_org_in(db: &mut AccessDb) {
    let d = Day::ymd(2026, 1, 1).expect("day");
    db.in_transaction(|db| {
        db.ensure_unit("c", UnitKind::County, None, "测试县", d)?;
        db.ensure_unit("t", UnitKind::Town, Some("c"), "测试镇", d)?;
        db.ensure_unit("v", UnitKind::Village, Some("t"), "测试村", d)?;
        let mut grids: Vec<String> = vec!["g".into(), "g1".into(), "g2".into()];
        grids.extend((0..100).map(|g| format!("g{g:02}")));
        for g in grids {
            db.ensure_unit(&g, UnitKind::Grid, Some("v"), &g, d)?;
        }
        Ok(())
    })
    .expect("test org");
}

/// Issues an enrollment code for a new user: a grid worker of `grids`, or, with no grids,
/// the command centre of the whole test county (reads and writes every grid, supervises).
/// Grids not in the org yet are added under village `v`.
pub fn enrollment_code(data_dir: &Path, grids: &[&str]) -> (UserId, String) {
    enrollment_code_in(&mut access_at(data_dir), grids)
}

/// As [`enrollment_code`], in the access tables of `db`.
pub fn enrollment_code_in(db: &mut AccessDb, grids: &[&str]) -> (UserId, String) {
    let d = Day::ymd(2026, 1, 1).expect("day");
    db.in_transaction(|db| {
        let login = format!("u-{}", UserId::new());
        let user = db.add_user(&login, "测试")?;
        if grids.is_empty() {
            db.assign(user, "c", Role::CommandCentre, 0)?;
        }
        for g in grids {
            db.ensure_unit(g, UnitKind::Grid, Some("v"), g, d)?;
            db.assign(user, g, Role::GridWorker, 0)?;
        }
        Ok((user, db.issue_enrollment_code(user)?))
    })
    .expect("enrollment code")
}

impl TestServer {
    pub fn start(data_dir: &Path) -> TestServer {
        Self::start_on(data_dir, "127.0.0.1:0".parse().expect("addr"))
    }

    pub fn start_on(data_dir: &Path, listen: std::net::SocketAddr) -> TestServer {
        Self::start_with_budget(
            data_dir,
            listen,
            qiaomen_protocol::wire::limits::RESPONSE_BUDGET_BYTES,
        )
    }

    /// A server whose responses carry about `response_budget` bytes of changes each.
    pub fn start_with_budget(
        data_dir: &Path,
        listen: std::net::SocketAddr,
        response_budget: usize,
    ) -> TestServer {
        Self::start_with(data_dir, listen, |config| {
            config.response_budget = response_budget
        })
    }

    /// A server whose configuration `configure` adjusts.
    pub fn start_with(
        data_dir: &Path,
        listen: std::net::SocketAddr,
        configure: impl FnOnce(&mut qiaomen_server::Config),
    ) -> TestServer {
        let database = TestDatabase::for_data_dir(data_dir);
        match &database {
            None => seed_test_org(data_dir),
            Some(db) => seed_test_org_in(&mut AccessDb::on_postgres(&db.store())),
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = qiaomen_server::Config::new(listen, data_dir);
        config.database = database.as_ref().map(TestDatabase::url);
        configure(&mut config);
        let server = runtime
            .block_on(qiaomen_server::start(config, std::future::pending()))
            .expect("server starts");
        let addr = server.addr;
        TestServer {
            url: format!("http://{addr}"),
            addr,
            data_dir: data_dir.to_path_buf(),
            database,
            runtime: Some(runtime),
            server: Some(server),
        }
    }

    /// A phone enrolled with this server as a new user (see [`enrollment_code`]).
    pub fn phone(&self, path: &Path, grids: &[&str]) -> Phone {
        self.phone_via(path, &self.url, grids)
    }

    /// A phone enrolled as a new user, talking to the server through `url` (a proxy, say).
    pub fn phone_via(&self, path: &Path, url: &str, grids: &[&str]) -> Phone {
        let (_, code) = enrollment_code_in(&mut self.access(), grids);
        Phone::enroll(path, url, &code).expect("enrolls")
    }

    /// The server's access tables (org, users, devices, audit).
    pub fn access(&self) -> AccessDb {
        match &self.database {
            None => AccessDb::open(&self.data_dir).expect("access db"),
            Some(db) => AccessDb::on_postgres(&db.store()),
        }
    }

    /// An enrollment code for a new user of this server's store (see [`enrollment_code`]).
    pub fn enrollment_code(&self, grids: &[&str]) -> (UserId, String) {
        enrollment_code_in(&mut self.access(), grids)
    }

    /// A connection to the server's database from outside, as an operator's would be,
    /// speaking the server's own SQL layer (statements in the two backends' common dialect,
    /// `?N` parameters; see `qiaomen_server::sql`).
    pub fn db(&self) -> qiaomen_server::sql::Db {
        match &self.database {
            None => {
                let conn =
                    rusqlite::Connection::open(self.data_dir.join("qiaomen.db")).expect("store");
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .expect("busy timeout");
                qiaomen_server::sql::Db::sqlite(conn)
            }
            Some(db) => db.store().db(),
        }
    }

    /// The server's change log, opened from outside.
    pub fn storage(&self) -> Box<dyn qiaomen_server::storage::Storage> {
        match &self.database {
            None => Box::new(
                qiaomen_server::storage::SqliteStorage::open(&self.data_dir).expect("store"),
            ),
            Some(db) => Box::new(db.store()),
        }
    }

    /// Runs an admin command on the server's store, as `qiaomen-server admin` would.
    pub fn admin(
        &self,
        command: qiaomen_server::admin::AdminCommand,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let url = self.database.as_ref().map(TestDatabase::url);
        let target = match &url {
            None => qiaomen_server::admin::Target::Embedded(&self.data_dir),
            Some(url) => qiaomen_server::admin::Target::Postgres(url),
        };
        qiaomen_server::admin::run_on(target, command)
    }

    /// Stops the server, makes everything in its log look received `days` days earlier (as
    /// if the phones had synced then: figures count a household from its arrival, within the
    /// catch-up window), drops the read model so it is rebuilt from the log, and starts it
    /// again on the same store (at a new address).
    pub fn with_log_received_earlier(mut self, days: i64) -> TestServer {
        self.stop_inner();
        let backdate = format!(
            "UPDATE changes SET received_ms = received_ms - {}",
            days * 86_400_000
        );
        let drop_read_model = "DELETE FROM idx_households; DELETE FROM idx_visits;
             DELETE FROM idx_orders; DELETE FROM idx_spans; UPDATE idx_cursor SET seq = 0;";
        match &mut self.database {
            None => {
                let conn =
                    rusqlite::Connection::open(self.data_dir.join("qiaomen.db")).expect("store");
                conn.execute(&backdate, []).expect("backdated");
                conn.execute_batch(drop_read_model)
                    .expect("read model dropped");
            }
            Some(db) => {
                psql(&db.url(), &format!("{backdate}; {drop_read_model}"));
                // The server started again keeps the schema.
                db.drop_with_server = false;
            }
        }
        TestServer::start(&self.data_dir)
    }

    /// Graceful stop: in-flight syncs finish.
    pub fn stop(mut self) {
        self.stop_inner();
        // A server may be started again on the store.
        if let Some(db) = &mut self.database {
            db.drop_with_server = false;
        }
    }

    fn stop_inner(&mut self) {
        if let (Some(rt), Some(server)) = (self.runtime.as_ref(), self.server.take()) {
            rt.block_on(server.shutdown()).expect("clean shutdown");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_inner();
        if let Some(db) = self.database.take().filter(|db| db.drop_with_server) {
            psql(
                &db.base,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", db.schema),
            );
        }
    }
}

/// A simulated phone: an enrolled device store on a temp SQLite file and a sync client.
#[derive(Debug)]
pub struct Phone {
    pub store: Store,
    pub client: SyncClient,
    pub author: Author,
}

/// Copies the files of folder `from` into `to` (a server's data folder, stopped: the store
/// and its journals as they are on disk).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("folder");
    for entry in std::fs::read_dir(from).expect("folder read") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copied");
        }
    }
}

/// Copies the store of a stopped server on `from` to be the store of a server on `to`,
/// replacing what `to` held: the folder's files on the embedded store ([`copy_dir`]), on
/// PostgreSQL its schema, through `pg_dump` and `psql` (the backup and restore the README
/// gives for PostgreSQL). A backup taken, or a second server on the same log.
pub fn copy_store(from: &Path, to: &Path) {
    let Some((base, source)) = TestDatabase::named(from) else {
        return copy_dir(from, to);
    };
    let (_, target) = TestDatabase::named(to).expect("the same backend");
    let dump = std::process::Command::new("pg_dump")
        .args(["--no-owner", "--schema", &source, "--dbname", &base])
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // The schema's name is unique (`srv_<pid>_<hash>`), so it is renamed as text.
    let sql = String::from_utf8(dump.stdout)
        .expect("a dump is text")
        .replace(&source, &target);
    psql(&base, &format!("DROP SCHEMA IF EXISTS {target} CASCADE"));
    let mut restore = std::process::Command::new("psql")
        .args(["--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", &base])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql runs");
    use std::io::Write;
    restore
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("restored");
    assert!(
        restore.wait().expect("psql ends").success(),
        "psql restores"
    );
    std::fs::create_dir_all(to).expect("folder");
}

/// Runs `f` to completion on a private single-threaded runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl Phone {
    /// Enrolls the store at `path` with the server at `url` using `code`.
    pub fn enroll(path: &Path, url: &str, code: &str) -> Result<Phone, SyncError> {
        let store = block_on(qiaomen_client_core::enroll(
            path,
            url,
            code,
            StoreOptions::default(),
        ))?;
        Ok(Phone {
            author: *store.author(),
            store,
            client: SyncClient::new(url)?,
        })
    }

    /// Opens an enrolled store again (after a restart), syncing through `url`.
    pub fn open(path: &Path, url: &str) -> Phone {
        let store = Store::open_enrolled(path, StoreOptions::default()).expect("enrolled store");
        Phone {
            author: *store.author(),
            store,
            client: SyncClient::new(url).expect("client"),
        }
    }

    /// Creates `n` households in `grid` (door numbers 0, 1, …), offline.
    pub fn create_households(&mut self, grid: &str, n: usize) -> Vec<HouseholdId> {
        (0..n)
            .map(|i| {
                let h = qiaomen_protocol::schema::Household::new(
                    HouseholdId::new(),
                    qiaomen_protocol::ids::GridId::new(grid),
                    "东村",
                    format!("{i}"),
                );
                self.store.create_household(&h).expect("created")
            })
            .collect()
    }

    /// The device token the phone syncs with.
    pub fn token(&self) -> String {
        self.store
            .credentials()
            .expect("credentials read")
            .expect("an enrolled phone")
            .token
    }

    /// Runs one sync to completion on a private single-threaded runtime.
    pub fn sync(&mut self) -> Result<SyncReport, SyncError> {
        block_on(self.client.sync(&mut self.store, |_| {}))
    }
}

/// Posts a hand-made sync request carrying `changes` of household `id` with the device token
/// `token`, as a misbehaving client would, and decodes the answer (`None` if it is not a 200).
pub fn raw_upload(
    url: &str,
    token: &str,
    id: HouseholdId,
    changes: Vec<Vec<u8>>,
) -> (u16, Option<qiaomen_protocol::wire::SyncResponse>) {
    raw_upload_with(url, token, id, changes, 0)
}

/// [`raw_upload`] from a client announcing `features` (`wire::FEATURE_*` bits).
pub fn raw_upload_with(
    url: &str,
    token: &str,
    id: HouseholdId,
    changes: Vec<Vec<u8>>,
    features: u32,
) -> (u16, Option<qiaomen_protocol::wire::SyncResponse>) {
    use qiaomen_protocol::wire::{self, CONTENT_TYPE};
    let req = upload_request(id, changes, features);
    block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/sync"))
            .header("content-type", CONTENT_TYPE)
            .bearer_auth(token)
            .body(wire::encode(&req))
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("a body");
        (status, wire::decode(&body, 1 << 24).ok())
    })
}

/// A sync request from no cursor carrying `changes` of household `id`, from a client
/// announcing `features`.
pub fn upload_request(
    id: HouseholdId,
    changes: Vec<Vec<u8>>,
    features: u32,
) -> qiaomen_protocol::wire::SyncRequest {
    use qiaomen_protocol::wire::{DocChanges, SyncRequest};
    SyncRequest {
        response_budget: None,
        agent: None,
        table: vec![],
        base_ms: 0,
        pending: None,
        features,
        extras_digest: None,
        scope_digest: None,
        cursor_check: None,
        version: 1,
        cursor: None,
        docs: vec![DocChanges {
            id,
            changes: changes
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            whole: None,
        }],
        grids: vec![],
        whole: None,
        journal: vec![],
        held_query: vec![],
    }
}

/// Calls the JSON API with a bearer token; returns the status and the body (`Null` if the
/// body is not JSON).
pub fn call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    block_on(async {
        let client = reqwest::Client::new();
        let mut req = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        }
        .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    })
}

/// A new user of `unit` with `role` who signs in with a password; returns the session token.
pub fn session(server: &TestServer, login: &str, unit: &str, role: Role) -> String {
    let db = server.access();
    let user = db.add_user(login, "督导").expect("user");
    db.assign(user, unit, role, 0).expect("assignment");
    db.set_password(user, "review-password-1")
        .expect("password");
    let (status, body) = block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/login", server.url))
            .json(&serde_json::json!({"login": login, "password": "review-password-1"}))
            .send()
            .await
            .expect("the server answers");
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.expect("a JSON body"),
        )
    });
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("a token").to_string()
}

/// Now, in ms since the epoch (the machine's clock: servers and phones in tests use it too).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// Today in China.
pub fn today() -> Day {
    qiaomen_protocol::workorder::day_of(now_ms())
}

/// Noon (China time) of a day, in ms.
pub fn noon(day: Day) -> i64 {
    (day.0.midnight().assume_utc().unix_timestamp() + 4 * 3600) * 1000
}

/// `ms`, or a minute ago if that is earlier: a time a phone may have recorded by now. (Noon of
/// today in China is still to come between midnight and noon there, and a step dated after
/// its arrival is refused.)
pub fn by_now(ms: i64) -> i64 {
    ms.min(now_ms() - 60_000)
}

/// A GET with a bearer token (a device's or a session's): the status, the content type and
/// the raw body (a page, an export).
pub fn get_raw(url: &str, token: &str) -> (u16, String, Vec<u8>) {
    block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ct, resp.bytes().await.expect("a body").to_vec())
    })
}

/// A POST of a raw body with its content type and a bearer token: the status and the JSON
/// answer (`Null` if it is not JSON).
pub fn post_body(
    url: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    })
}

/// An `application/x-www-form-urlencoded` body, as a browser sends a form.
pub fn form_body(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A POST of a form with a bearer token (a session's): the status and the page.
pub fn post_form(url: &str, token: &str, fields: &[(&str, &str)]) -> (u16, String) {
    block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields))
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("a body"))
    })
}

/// A GET of a page or a text export: the status and the body as text.
pub fn get_text(url: &str, token: &str) -> (u16, String) {
    let (status, _, body) = get_raw(url, token);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What a person reads on a page: the text between the tags (attributes, links and hidden
/// form fields are for the browser), with the entities the templates' escaping writes decoded.
pub fn visible(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Every vocabulary value's first-release name (its `Debug` form) and the org unit kinds'
/// Rust names: none may be stored, served or shown.
pub fn debug_names() -> std::collections::BTreeSet<String> {
    use qiaomen_protocol::{
        policy::Role,
        review::ReviewState,
        vocab::Term,
        workorder::{DemandAction, StepKind},
    };
    fn names<T: Term + std::fmt::Debug>() -> Vec<String> {
        T::ALL.iter().map(|t| format!("{t:?}")).collect()
    }
    let mut all: std::collections::BTreeSet<String> = [
        names::<HouseholdStatus>(),
        names::<KeyGroup>(),
        names::<Relation>(),
        names::<VisitOutcome>(),
        names::<NeedCategory>(),
        names::<DisputeKind>(),
        names::<HazardKind>(),
        names::<Publicity>(),
        names::<Urgency>(),
        names::<DemandStatus>(),
        names::<Tier>(),
        names::<Satisfaction>(),
        names::<DemandSource>(),
        names::<ReviewDecision>(),
        names::<ReviewState>(),
        names::<DemandAction>(),
        names::<StepKind>(),
        names::<Role>(),
    ]
    .concat()
    .into_iter()
    .collect();
    for k in UnitKind::ALL {
        all.insert(format!("{k:?}"));
    }
    all
}

/// The information in `visits`: their JSON, compact, and the zstd (level 3) of it, all
/// together: the floor a batched sync of them can aim at (BENCHMARKS.md).
pub fn visit_json_floor(visits: &[Visit]) -> (usize, usize) {
    let mut all = Vec::new();
    for v in visits {
        let mut d = automerge::AutoCommit::new();
        autosurgeon::reconcile_prop(&mut d, automerge::ROOT, "v", v).expect("a visit reconciles");
        let json = serde_json::to_vec(&automerge::AutoSerde::from(&d)).expect("JSON");
        all.extend_from_slice(&json);
    }
    (
        all.len(),
        zstd::bulk::compress(&all, 3).expect("zstd").len(),
    )
}

/// Sentences a grid worker writes in visit notes, for benches whose visits must differ as
/// real ones do (a note repeated compresses to nothing).
pub const SENTENCES: &[&str] = &[
    "老人独居，身体状况一般。",
    "血压偏高，近期按时服药。",
    "家中电线有老化迹象，已提醒注意用电安全。",
    "反映冬季取暖困难，希望申请取暖补贴。",
    "子女在外务工，每周电话联系一次。",
    "已宣传防诈骗知识。",
    "已宣传医保缴费政策，户主表示年底前缴纳。",
    "孙子上小学三年级，学习情况良好。",
    "院墙有裂缝，建议尽快修缮。",
    "邻里因排水沟堵塞有矛盾，已联系村委协调。",
    "申请低保材料已提交乡镇。",
    "残疾证年审需下月办理。",
    "厨房燃气软管老化，已建议更换。",
    "希望村里安排助餐服务。",
    "家庭医生上周已上门随访。",
    "种植大棚蔬菜，收入稳定。",
    "户主腿脚不便，需要代办社保认证。",
    "房屋为危房改造户，已入住新房。",
    "秸秆已全部还田，未发现焚烧。",
    "道路交通安全宣传资料已发放。",
];
