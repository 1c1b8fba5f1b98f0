//! The PostgreSQL backend of the change log: several servers on one database.
//!
//! The client is `tokio-postgres` with a `deadpool-postgres` pool, not `sqlx`: sqlx's optional
//! SQLite driver links another `libsqlite3-sys` than rusqlite's and the two cannot share one
//! workspace, and tokio-postgres is the lighter build (`../shared/notes/ffi-toolchain.md`).
//! The trait is blocking, so a handle owns a small runtime of its own and each call blocks on
//! it; callers are writer threads and `spawn_blocking`, as for SQLite.
//!
//! **The log's order is commit order** because every write takes one transaction-scoped
//! advisory lock (the log lock) before it allocates sequence numbers, and holds it until its
//! commit is visible: a reader that sees `seq` n sees every change below n. The alternative, a
//! visibility horizon (`pg_snapshot_xmin`) that readers stop below, lets writers commit in
//! parallel but makes every read compute and carry the horizon; the log's writes are group
//! commits (a few a second per server, each a few milliseconds under the lock), so the lock
//! costs little and keeps readers plain. The same lock makes a write's head checks
//! ([`super::HouseholdWrite::head`]) race-free across servers.

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use qiaomen_protocol::{ids::HouseholdId, wire::WholePass};
use tokio_postgres::{NoTls, Row, types::ToSql};

use super::{
    DocHead, HouseholdWrite, LogSlice, LoggedChange, MAX_REFUSED_PER_DEVICE, NewChange,
    Quarantined, ReadModelLag, RefusedRow, Result, Storage, StorageError, StoredDoc, Timeline,
    WholeFrom, WholePage, WriteBatch, Written, expected_heads, household_of, now_ms, sql_seq,
    written_ids,
};

/// The log lock's key (`pg_advisory_xact_lock`): "qiaomen" in ASCII.
const LOG_LOCK: i64 = 0x71_69_61_6f_6d_65_6e;
/// The migrations' lock (`pg_advisory_lock`): servers starting together migrate one by one.
const MIGRATE_LOCK: i64 = LOG_LOCK + 1;
/// The read model's lock ([`crate::sql::Db::exclusive`]): one projector at a time.
pub(crate) const PROJECTOR_LOCK: i64 = LOG_LOCK + 2;

/// The schema version this server writes (the migrations it knows): a database of a higher
/// `qiaomen_schema.version` was migrated by a newer server and is refused.
#[cfg(test)]
pub(crate) const MIGRATIONS_LEN: usize = MIGRATIONS.len();

/// Schema migrations, in order; `qiaomen_schema.version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc         BYTEA NOT NULL,
    hash        BYTEA NOT NULL UNIQUE,
    bytes       BYTEA NOT NULL,
    device      BYTEA,
    "user"      BYTEA,
    received_ms BIGINT NOT NULL,
    grid        TEXT NOT NULL DEFAULT '',
    clock_ok    BOOLEAN
);
CREATE INDEX changes_doc ON changes (doc, seq);
CREATE INDEX changes_grid ON changes (grid, seq);
CREATE TABLE docs (
    id           BYTEA PRIMARY KEY,
    grid         TEXT NOT NULL DEFAULT '',
    snapshot     BYTEA,
    snapshot_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX docs_grid ON docs (grid, id);
CREATE TABLE doc_moves (
    doc       BYTEA NOT NULL,
    from_grid TEXT NOT NULL,
    to_grid   TEXT NOT NULL,
    seq       BIGINT NOT NULL
);
CREATE INDEX doc_moves_to ON doc_moves (to_grid, seq);
CREATE INDEX doc_moves_doc ON doc_moves (doc, seq);
CREATE TABLE quarantine (
    doc    BYTEA PRIMARY KEY,
    reason TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);
CREATE TABLE refused (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc    BYTEA NOT NULL,
    hash   BYTEA NOT NULL UNIQUE,
    grid   TEXT NOT NULL,
    device BYTEA,
    "user" BYTEA,
    code   TEXT NOT NULL,
    at_ms  BIGINT NOT NULL,
    bytes  BYTEA NOT NULL
);
CREATE INDEX refused_grid ON refused (grid, id);
CREATE INDEX refused_device ON refused (device, id);
-- What of the read model the log's first-sync passes read (SYNC-v1 §7.3.2): a household's
-- key-group tags ([group, since, until]) and its demands' states, written by the read model.
CREATE TABLE idx_households (
    doc  BYTEA PRIMARY KEY,
    tags JSONB NOT NULL DEFAULT '[]'
);
CREATE TABLE idx_orders (
    doc    BYTEA NOT NULL,
    demand TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (doc, demand)
);
"#,
    ACCESS_SCHEMA,
    INDEX_SCHEMA,
    SHARED_SCHEMA,
    BUCKETS_SCHEMA,
    crate::orders::SHARED_REGISTER_SCHEMA,
    PHOTOS_SCHEMA,
    TASK_PHOTOS_SCHEMA,
    CASES_SCHEMA,
    crate::access::cards::CARDS_SCHEMA_PG,
    crate::access::journal::JOURNAL_SCHEMA_PG,
];

/// Tracked disputes and hazards in the read model (`crate::index::CASES_SCHEMA` in
/// PostgreSQL's types; the read model is rebuilt).
const CASES_SCHEMA: &str = r#"
CREATE TABLE idx_cases (
    doc        BYTEA NOT NULL,
    case_id    TEXT NOT NULL,
    grid       TEXT NOT NULL,
    found_grid TEXT NOT NULL,
    door       TEXT NOT NULL,
    ledger     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    visit      TEXT,
    raised_by  TEXT NOT NULL,
    raised_ms  BIGINT NOT NULL,
    due        TEXT,
    state      TEXT NOT NULL,
    steps      TEXT NOT NULL,
    PRIMARY KEY (doc, case_id)
);
CREATE INDEX idx_cases_grid ON idx_cases (grid, raised_ms);
CREATE INDEX idx_cases_found ON idx_cases (found_grid, raised_ms);
CREATE INDEX idx_cases_id ON idx_cases (case_id);
DELETE FROM idx_households;
DELETE FROM idx_spans;
DELETE FROM idx_visits;
DELETE FROM idx_orders;
DELETE FROM idx_photos;
UPDATE idx_cursor SET seq = 0;
"#;

/// The photos of task reports (`crate::tasks::TASK_PHOTOS_SCHEMA` in PostgreSQL's types).
const TASK_PHOTOS_SCHEMA: &str = r#"
CREATE TABLE task_photos (
    list       TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    grid       TEXT NOT NULL,
    pos        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    taken_ms   BIGINT NOT NULL,
    caption    TEXT NOT NULL,
    PRIMARY KEY (list, idx, grid, pos),
    FOREIGN KEY (list, idx, grid) REFERENCES task_done (list, idx, grid)
);
CREATE INDEX task_photos_hash ON task_photos (hash);
"#;

/// Photo references in the read model and the bytes each device had accepted per day
/// (`crate::index::PHOTOS_SCHEMA` in PostgreSQL's types; the read model is rebuilt).
const PHOTOS_SCHEMA: &str = r#"
CREATE TABLE idx_photos (
    doc        BYTEA NOT NULL,
    photo      TEXT NOT NULL,
    hash       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    subject    TEXT NOT NULL,
    visit      TEXT,
    demand     TEXT,
    item       BIGINT,
    by_user    TEXT NOT NULL,
    taken_ms   BIGINT NOT NULL,
    caption    TEXT NOT NULL,
    PRIMARY KEY (doc, photo)
);
CREATE INDEX idx_photos_hash ON idx_photos (hash);
CREATE TABLE photo_quota (
    device TEXT NOT NULL,
    day    TEXT NOT NULL,
    bytes  BIGINT NOT NULL,
    PRIMARY KEY (device, day)
);
DELETE FROM idx_households;
DELETE FROM idx_spans;
DELETE FROM idx_visits;
DELETE FROM idx_orders;
UPDATE idx_cursor SET seq = 0;
"#;

/// Token buckets that count across servers ([`crate::access::shared`]).
const BUCKETS_SCHEMA: &str = r#"
CREATE TABLE buckets (
    key    TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    at_ms  BIGINT NOT NULL
);
"#;

/// Leases and settings the servers agree on ([`crate::access::shared`]).
const SHARED_SCHEMA: &str = r#"
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// The read model ([`crate::index`]) beside what the log's first-sync passes read of it
/// (migration 1), as the embedded store's migrations leave it; rebuilt from the log.
const INDEX_SCHEMA: &str = r#"
ALTER TABLE idx_households
    ADD COLUMN grid       TEXT NOT NULL DEFAULT '',
    ADD COLUMN door       TEXT NOT NULL DEFAULT '',
    ADD COLUMN status     TEXT NOT NULL DEFAULT '',
    ADD COLUMN registered TEXT;
CREATE INDEX idx_households_grid ON idx_households (grid);
ALTER TABLE idx_orders
    ADD COLUMN grid         TEXT NOT NULL DEFAULT '',
    ADD COLUMN door         TEXT NOT NULL DEFAULT '',
    ADD COLUMN tier         TEXT,
    ADD COLUMN team         TEXT,
    ADD COLUMN responsible  TEXT NOT NULL DEFAULT '',
    ADD COLUMN source       TEXT,
    ADD COLUMN category     TEXT NOT NULL DEFAULT '',
    ADD COLUMN urgency      TEXT NOT NULL DEFAULT '',
    ADD COLUMN raised_ms    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN done_ms      BIGINT,
    ADD COLUMN on_time      BOOLEAN,
    ADD COLUMN satisfaction TEXT,
    ADD COLUMN step         TEXT,
    ADD COLUMN step_due     TEXT,
    ADD COLUMN chase_ups    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN bounces      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN reopened     BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN external_ref TEXT;
CREATE INDEX idx_orders_grid ON idx_orders (grid, raised_ms);
CREATE INDEX idx_orders_team ON idx_orders (team, status);
CREATE INDEX idx_orders_ref ON idx_orders (external_ref);
CREATE INDEX idx_orders_demand ON idx_orders (demand);
CREATE TABLE idx_cursor (one BIGINT PRIMARY KEY CHECK (one = 1), seq BIGINT NOT NULL);
INSERT INTO idx_cursor VALUES (1, 0);
CREATE TABLE idx_spans (
    doc   BYTEA NOT NULL,
    since TEXT NOT NULL,
    grid  TEXT NOT NULL,
    PRIMARY KEY (doc, since)
);
CREATE INDEX idx_spans_grid ON idx_spans (grid);
CREATE TABLE idx_visits (
    doc        BYTEA NOT NULL,
    visit      TEXT NOT NULL,
    grid       TEXT NOT NULL,
    visit_day  TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    worker     TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    PRIMARY KEY (doc, visit)
);
CREATE INDEX idx_visits_grid ON idx_visits (grid, visit_day);
DELETE FROM idx_households;
DELETE FROM idx_orders;
"#;

/// The org, users, devices, tokens, sessions, the audit log and the task lists: the tables of
/// [`crate::access::AccessDb`] as the embedded store's migrations leave them
/// (`storage::sqlite`), in PostgreSQL's types. Integers are `BIGINT` ([`crate::sql`]).
const ACCESS_SCHEMA: &str = r#"
CREATE TABLE org_units (
    id          TEXT PRIMARY KEY,
    parent      TEXT REFERENCES org_units (id),
    kind        TEXT NOT NULL CHECK (kind IN ('county', 'town', 'village', 'grid', 'team')),
    name        TEXT NOT NULL,
    valid_from  TEXT NOT NULL,
    valid_until TEXT
);
CREATE INDEX org_units_parent ON org_units (parent);
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    login         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT,
    created_ms    BIGINT NOT NULL
);
CREATE TABLE assignments (
    id             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "user"         TEXT NOT NULL REFERENCES users (id),
    unit           TEXT NOT NULL REFERENCES org_units (id),
    role           TEXT NOT NULL,
    valid_from_ms  BIGINT NOT NULL,
    valid_until_ms BIGINT
);
CREATE INDEX assignments_user ON assignments ("user");
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    "user"       TEXT NOT NULL REFERENCES users (id),
    install_id   TEXT NOT NULL,
    enrolled_ms  BIGINT NOT NULL,
    revoked_ms   BIGINT,
    last_seen_ms BIGINT,
    retire_ms    BIGINT,
    retired_ms   BIGINT,
    last_sync_ms BIGINT,
    last_pending BIGINT,
    agent        TEXT
);
CREATE TABLE enrollment_codes (
    hash       BYTEA PRIMARY KEY,
    "user"     TEXT NOT NULL REFERENCES users (id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    device     TEXT,
    used_ms    BIGINT
);
CREATE TABLE device_tokens (
    hash       BYTEA PRIMARY KEY,
    device     TEXT NOT NULL REFERENCES devices (id),
    created_ms BIGINT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'rotated', 'retired')),
    successor  BYTEA,
    used_ms    BIGINT
);
CREATE INDEX device_tokens_device ON device_tokens (device);
CREATE INDEX device_tokens_successor ON device_tokens (successor);
CREATE TABLE sessions (
    hash       BYTEA PRIMARY KEY,
    "user"     TEXT NOT NULL REFERENCES users (id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    ended_ms   BIGINT
);
CREATE TABLE audit (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    actor_user   TEXT,
    actor_device TEXT,
    action       TEXT NOT NULL,
    target       TEXT,
    outcome      TEXT NOT NULL
);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TABLE task_lists (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    week_start TEXT NOT NULL,
    due        TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE task_items (
    list TEXT NOT NULL REFERENCES task_lists (id),
    idx  BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (list, idx)
);
CREATE TABLE task_targets (
    list TEXT NOT NULL REFERENCES task_lists (id),
    grid TEXT NOT NULL,
    PRIMARY KEY (list, grid)
);
CREATE INDEX task_targets_grid ON task_targets (grid);
CREATE TABLE task_done (
    list        TEXT NOT NULL,
    idx         BIGINT NOT NULL,
    grid        TEXT NOT NULL,
    "user"      TEXT NOT NULL,
    device      TEXT,
    done_ms     BIGINT NOT NULL,
    evidence    TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (list, idx, grid),
    FOREIGN KEY (list, grid) REFERENCES task_targets (list, grid)
);
"#;

/// The households most needed on day `$4` (as [`super::sqlite`]'s, in PostgreSQL's dialect).
const NEEDED: &str = "(EXISTS (SELECT 1 FROM jsonb_array_elements(h.tags) t
                       WHERE t->>1 <= $4 AND coalesce(t->>2, $4) >= $4)
       OR EXISTS (SELECT 1 FROM idx_orders o WHERE o.doc = d.id AND o.status <> 'closed'))";

/// A runtime of the handle's own; shut down without waiting, so the last handle may be
/// dropped anywhere (an async task included).
#[derive(Debug)]
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    pub(crate) fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime lives until the handle is dropped")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The PostgreSQL backend. Cloning shares the pool: every writer thread and reader of a
/// server holds a clone.
#[derive(Clone)]
pub struct PgStorage {
    pool: Pool,
    rt: Arc<OwnedRuntime>,
}

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage")
            .field("pool", &self.pool.status().size)
            .finish_non_exhaustive()
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StorageError::Postgres(e),
        other => StorageError::Pool(other.to_string()),
    }
}

impl PgStorage {
    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of up to `connections`
    /// and applies the migrations this server knows; a database migrated by a newer server is
    /// refused ([`StorageError::TooNew`]).
    pub fn connect(url: &str, connections: usize) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse()?;
        Self::with_config(config, connections)
    }

    /// As [`PgStorage::connect`], every connection in `schema` (the tests' isolation).
    #[cfg(test)]
    pub(crate) fn connect_in(url: &str, schema: &str) -> Result<Self> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.options(format!("-c search_path={schema}"));
        Self::with_config(config, 4)
    }

    fn with_config(config: tokio_postgres::Config, connections: usize) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qiaomen-postgres")
            .enable_all()
            .build()?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _entered = rt.enter();
            Pool::builder(manager)
                .max_size(connections.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StorageError::Pool(e.to_string()))?
        };
        let storage = Self {
            pool,
            rt: Arc::new(OwnedRuntime(Some(rt))),
        };
        storage.migrate()?;
        Ok(storage)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.get().block_on(f)
    }

    /// A connection for the stores whose statements both backends share ([`crate::sql`]), on
    /// this handle's pool.
    pub fn db(&self) -> crate::sql::Db {
        crate::sql::Db::postgres(self.pool.clone(), self.rt.clone())
    }

    fn migrate(&self) -> Result<()> {
        self.block_on(async {
            let mut client = self.pool.get().await.map_err(pool_err)?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
                .await?;
            let result = async {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS qiaomen_schema (version INTEGER NOT NULL);
                         INSERT INTO qiaomen_schema SELECT 0
                          WHERE NOT EXISTS (SELECT 1 FROM qiaomen_schema);",
                    )
                    .await?;
                let version: i32 = client
                    .query_one("SELECT version FROM qiaomen_schema", &[])
                    .await?
                    .get(0);
                if version as usize > MIGRATIONS.len() {
                    return Err(StorageError::TooNew {
                        found: i64::from(version),
                        max: MIGRATIONS.len() as i64,
                    });
                }
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                    let tx = client.transaction().await?;
                    tx.batch_execute(sql).await?;
                    tx.execute("UPDATE qiaomen_schema SET version = $1", &[&(i as i32 + 1)])
                        .await?;
                    tx.commit().await?;
                }
                Ok(())
            }
            .await;
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
                .await?;
            result
        })
    }

    /// Runs `f` on a pooled connection.
    fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T>,
    ) -> Result<T> {
        self.block_on(async {
            let mut client = self.pool.get().await.map_err(pool_err)?;
            f(&mut client).await
        })
    }

    /// One row of `sql`, if any.
    fn opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        self.with(async |c| {
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.query_opt(&stmt, params).await?)
        })
    }

    /// Every row of `sql`.
    fn all(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.with(async |c| {
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.query(&stmt, params).await?)
        })
    }
}

/// A read-only transaction that sees the database at one moment.
async fn snapshot(c: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>> {
    Ok(c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The household's snapshot and the changes logged after it.
async fn load_doc_in(c: &impl GenericClient, id: HouseholdId) -> Result<Option<Vec<u8>>> {
    let key = id.as_bytes().as_slice();
    let Some(row) = c
        .query_opt(
            "SELECT snapshot, snapshot_seq FROM docs WHERE id = $1",
            &[&key],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut bytes: Vec<u8> = row.get::<_, Option<Vec<u8>>>(0).unwrap_or_default();
    let after: i64 = row.get(1);
    for r in c
        .query(
            "SELECT bytes FROM changes WHERE doc = $1 AND seq > $2 ORDER BY seq",
            &[&key, &after],
        )
        .await?
    {
        bytes.extend_from_slice(r.get::<_, &[u8]>(0));
    }
    Ok(Some(bytes))
}

async fn head_of(c: &impl GenericClient, id: HouseholdId) -> Result<DocHead> {
    let row = c
        .query_one(
            "SELECT coalesce(max(c.seq), 0), count(c.seq) FILTER (WHERE c.seq > d.snapshot_seq)
               FROM docs d LEFT JOIN changes c ON c.doc = d.id WHERE d.id = $1
              GROUP BY d.id
             UNION ALL SELECT 0, 0 LIMIT 1",
            &[&id.as_bytes().as_slice()],
        )
        .await?;
    Ok(DocHead {
        seq: row.get::<_, i64>(0) as u64,
        since_snapshot: row.get::<_, i64>(1) as u64,
    })
}

async fn doc_log_in(
    c: &impl GenericClient,
    id: HouseholdId,
    until: u64,
) -> Result<Vec<LoggedChange>> {
    Ok(c.query(
        "SELECT seq, bytes, hash FROM changes WHERE doc = $1 AND seq <= $2 ORDER BY seq",
        &[&id.as_bytes().as_slice(), &sql_seq(until)],
    )
    .await?
    .into_iter()
    .map(|r| LoggedChange {
        seq: r.get::<_, i64>(0) as u64,
        doc: id,
        bytes: r.get(1),
        hash: r.get(2),
    })
    .collect())
}

/// Rows of the log per statement: 8 parameters each, under PostgreSQL's 65,535.
const INSERT_ROWS: usize = 1_000;

/// Appends `rows` to the log in their order.
async fn insert_changes(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(&HouseholdWrite, &NewChange)],
    now: i64,
) -> Result<()> {
    for part in rows.chunks(INSERT_ROWS) {
        let mut sql = String::from(
            "INSERT INTO changes (doc, hash, bytes, device, \"user\", received_ms, grid, clock_ok) VALUES ",
        );
        let mut params: Vec<Box<dyn ToSql + Sync + Send + '_>> = Vec::with_capacity(part.len() * 8);
        for (i, (w, r)) in part.iter().enumerate() {
            let n = i * 8;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7,
                n + 8
            ));
            params.push(Box::new(w.id.as_bytes().as_slice()));
            params.push(Box::new(r.hash.as_slice()));
            params.push(Box::new(r.bytes.as_slice()));
            params.push(Box::new(r.device.as_ref().map(|d| d.as_slice())));
            params.push(Box::new(r.user.as_ref().map(|u| u.as_slice())));
            params.push(Box::new(now));
            params.push(Box::new(w.log_grid.as_str()));
            params.push(Box::new(r.clock_ok));
        }
        sql.push_str(" ON CONFLICT (hash) DO NOTHING");
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        tx.execute(&sql, &refs).await?;
    }
    Ok(())
}

/// Keeps refused changes: a change refused again is kept once; a device keeps its latest
/// [`MAX_REFUSED_PER_DEVICE`].
async fn keep_refused(
    tx: &deadpool_postgres::Transaction<'_>,
    refused: &[RefusedRow],
) -> Result<()> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO refused (doc, hash, grid, device, \"user\", code, at_ms, bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (hash) DO NOTHING",
        )
        .await?;
    for r in refused {
        tx.execute(
            &insert,
            &[
                &r.doc.as_bytes().as_slice(),
                &r.hash.as_slice(),
                &r.grid,
                &r.device.as_ref().map(|d| d.as_slice()),
                &r.user.as_ref().map(|u| u.as_slice()),
                &r.code,
                &r.at_ms,
                &r.bytes,
            ],
        )
        .await?;
    }
    let devices: std::collections::BTreeSet<_> = refused.iter().filter_map(|r| r.device).collect();
    for d in devices {
        tx.execute(
            "DELETE FROM refused WHERE device = $1 AND id <= (
                SELECT id FROM refused WHERE device = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&d.as_slice(), &MAX_REFUSED_PER_DEVICE],
        )
        .await?;
    }
    Ok(())
}

impl Storage for PgStorage {
    fn load_doc(&self, id: HouseholdId) -> Result<Option<Vec<u8>>> {
        self.with(async |c| {
            let tx = c.build_transaction().read_only(true).start().await?;
            let bytes = load_doc_in(&tx, id).await?;
            tx.commit().await?;
            Ok(bytes)
        })
    }

    fn has_change(&self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self
            .opt("SELECT 1 FROM changes WHERE hash = $1", &[&hash.as_slice()])?
            .is_some())
    }

    fn hashes_with_prefix(&self, doc: HouseholdId, prefix: &[u8]) -> Result<Vec<[u8; 32]>> {
        let prefix = &prefix[..prefix.len().min(32)];
        let mut low = prefix.to_vec();
        low.resize(32, 0x00);
        let mut high = prefix.to_vec();
        high.resize(32, 0xff);
        Ok(self
            .all(
                "SELECT hash FROM changes WHERE hash >= $1 AND hash <= $2 AND doc = $3 LIMIT 16",
                &[&low, &high, &doc.as_bytes().as_slice()],
            )?
            .iter()
            .filter_map(|r| <[u8; 32]>::try_from(r.get::<_, &[u8]>(0)).ok())
            .collect())
    }

    fn load_for_write(&self, id: HouseholdId) -> Result<Option<StoredDoc>> {
        self.with(async |c| {
            let tx = snapshot(c).await?;
            let Some(bytes) = load_doc_in(&tx, id).await? else {
                return Ok(None);
            };
            let head = head_of(&tx, id).await?;
            tx.commit().await?;
            Ok(Some(StoredDoc { bytes, head }))
        })
    }

    fn write(&self, batch: &WriteBatch) -> Result<Written> {
        // A handful of statements whatever the group's size: each is a round trip held under
        // the log lock.
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])
                .await?;
            let expected = expected_heads(batch);
            let keys: Vec<&[u8]> = expected.iter().map(|(id, _)| id.as_bytes().as_slice()).collect();
            let now_heads: std::collections::HashMap<Vec<u8>, i64> = tx
                .query(
                    "SELECT d, coalesce((SELECT max(seq) FROM changes WHERE doc = d), 0)
                       FROM unnest($1::bytea[]) d",
                    &[&keys],
                )
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let moved: Vec<HouseholdId> = expected
                .iter()
                .filter(|(id, head)| {
                    now_heads.get(id.as_bytes().as_slice()).copied().unwrap_or(0) as u64 != *head
                })
                .map(|(id, _)| *id)
                .collect();
            if !moved.is_empty() {
                tx.rollback().await?;
                return Ok(Written::Moved(moved));
            }
            if !batch.refused.is_empty() {
                keep_refused(&tx, &batch.refused).await?;
            }
            // Each household's row once, with its grid after the batch: the batch's moves are
            // recorded from the log rows below, not from this column.
            let ids = written_ids(batch);
            let last_grid: std::collections::HashMap<HouseholdId, &str> = batch
                .households
                .iter()
                .map(|w| (w.id, w.grid.as_str()))
                .collect();
            let (doc_keys, doc_grids): (Vec<&[u8]>, Vec<&str>) = ids
                .iter()
                .map(|id| (id.as_bytes().as_slice(), last_grid[id]))
                .unzip();
            tx.execute(
                "INSERT INTO docs (id, grid) SELECT * FROM unnest($1::bytea[], $2::text[])
                 ON CONFLICT (id) DO UPDATE SET grid = excluded.grid
                  WHERE docs.grid <> excluded.grid",
                &[&doc_keys, &doc_grids],
            )
            .await?;
            let now = now_ms();
            // The rows in the batch's order, which is the log's: a multi-row VALUES list is
            // inserted (and numbered) in its order. A move is recorded after its own rows.
            let mut rows: Vec<(&HouseholdWrite, &NewChange)> = Vec::new();
            for (i, w) in batch.households.iter().enumerate() {
                rows.extend(w.rows.iter().map(|r| (w, r)));
                let last = i + 1 == batch.households.len();
                if w.moved_from.is_some() || w.snapshot.is_some() || last {
                    insert_changes(&tx, &rows, now).await?;
                    rows.clear();
                }
                if let Some(from) = &w.moved_from {
                    tx.execute(
                        "INSERT INTO doc_moves (doc, from_grid, to_grid, seq)
                         SELECT $1, $2, $3, max(seq) FROM changes WHERE doc = $1",
                        &[&w.id.as_bytes().as_slice(), from, &w.grid],
                    )
                    .await?;
                }
                if let Some(snapshot) = &w.snapshot {
                    tx.execute(
                        "UPDATE docs SET snapshot = $2,
                                snapshot_seq = (SELECT coalesce(max(seq), 0) FROM changes WHERE doc = $1)
                          WHERE id = $1",
                        &[&w.id.as_bytes().as_slice(), snapshot],
                    )
                    .await?;
                }
            }
            let keys: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes().as_slice()).collect();
            let mut heads: std::collections::HashMap<Vec<u8>, DocHead> = tx
                .query(
                    "SELECT d.id, coalesce(max(c.seq), 0),
                            count(c.seq) FILTER (WHERE c.seq > d.snapshot_seq)
                       FROM docs d LEFT JOIN changes c ON c.doc = d.id
                      WHERE d.id = ANY($1) GROUP BY d.id",
                    &[&keys],
                )
                .await?
                .into_iter()
                .map(|r| {
                    let head = DocHead {
                        seq: r.get::<_, i64>(1) as u64,
                        since_snapshot: r.get::<_, i64>(2) as u64,
                    };
                    (r.get(0), head)
                })
                .collect();
            tx.commit().await?;
            Ok(Written::Committed(
                ids.into_iter()
                    .map(|id| {
                        let head = heads.remove(id.as_bytes().as_slice()).unwrap_or_default();
                        (id, head)
                    })
                    .collect(),
            ))
        })
    }

    fn log_since(&self, cursor: u64, budget: usize, grids: &[String]) -> Result<LogSlice> {
        self.with(async |c| {
            let tx = snapshot(c).await?;
            let max: i64 = tx
                .query_one("SELECT coalesce(max(seq), 0) FROM changes", &[])
                .await?
                .get(0);
            let mut slice = LogSlice {
                cursor: cursor.max(max as u64),
                ..Default::default()
            };
            if max as u64 <= cursor {
                slice.cursor = cursor;
                return Ok(slice);
            }
            let sql = if grids.is_empty() {
                "SELECT seq, doc, bytes, hash FROM changes
                  WHERE seq > $1 AND seq <= $2 AND cardinality($3::text[]) = 0 ORDER BY seq"
            } else {
                "SELECT seq, doc, bytes, hash FROM changes
                  WHERE grid = ANY($3) AND seq > $1 AND seq <= $2 ORDER BY seq"
            };
            let stmt = tx.prepare_cached(sql).await?;
            // A portal read in batches: the slice stops at its budget without the rows after.
            let cursor_i = sql_seq(cursor);
            let portal = tx.bind(&stmt, &[&cursor_i, &max, &grids]).await?;
            let mut used = 0usize;
            'rows: loop {
                let rows = tx.query_portal(&portal, 256).await?;
                if rows.is_empty() {
                    break;
                }
                for r in rows {
                    let bytes: Vec<u8> = r.get(2);
                    if used > 0 && used + bytes.len() > budget {
                        slice.more = true;
                        slice.cursor = slice.changes.last().map_or(cursor, |c| c.seq);
                        break 'rows;
                    }
                    used += bytes.len();
                    let Some(doc) = household_of(r.get::<_, &[u8]>(1)) else {
                        continue;
                    };
                    slice.changes.push(LoggedChange {
                        seq: r.get::<_, i64>(0) as u64,
                        doc,
                        hash: r.get(3),
                        bytes,
                    });
                }
            }
            tx.commit().await?;
            Ok(slice)
        })
    }

    fn quarantined_count(&self) -> Result<u64> {
        Ok(self
            .opt("SELECT count(*) FROM quarantine", &[])?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn read_model_lag(&self) -> Result<ReadModelLag> {
        let row = self.opt(
            "SELECT (SELECT seq FROM idx_cursor), (SELECT coalesce(max(seq), 0) FROM changes)",
            &[],
        )?;
        let (cursor, end) = row.map_or((0, 0), |r| {
            (r.get::<_, Option<i64>>(0).unwrap_or(0), r.get::<_, i64>(1))
        });
        let oldest_ms = if end > cursor {
            self.opt(
                "SELECT received_ms FROM changes WHERE seq > $1 ORDER BY seq LIMIT 1",
                &[&cursor],
            )?
            .map(|r| r.get::<_, i64>(0))
        } else {
            None
        };
        Ok(ReadModelLag {
            behind: end.saturating_sub(cursor).max(0) as u64,
            oldest_ms,
        })
    }

    fn max_seq(&self) -> Result<u64> {
        Ok(self
            .opt("SELECT coalesce(max(seq), 0) FROM changes", &[])?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn hash_at(&self, at: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .opt("SELECT hash FROM changes WHERE seq = $1", &[&sql_seq(at)])?
            .map(|r| r.get(0)))
    }

    fn doc_count(&self) -> Result<u64> {
        Ok(self
            .opt("SELECT count(*) FROM docs", &[])?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn doc_grid(&self, id: HouseholdId) -> Result<Option<String>> {
        Ok(self
            .opt(
                "SELECT grid FROM docs WHERE id = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .map(|r| r.get(0)))
    }

    fn doc_timeline(&self, id: HouseholdId) -> Result<Option<Timeline>> {
        let key = id.as_bytes().as_slice();
        let Some(first) = self.opt(
            "SELECT bytes, received_ms FROM changes WHERE doc = $1 ORDER BY seq LIMIT 1",
            &[&key],
        )?
        else {
            return Ok(None);
        };
        let arrived_ms: i64 = first.get(1);
        let created_ms = automerge::Change::try_from(first.get::<_, &[u8]>(0))
            .map_or(arrived_ms, |c| c.timestamp());
        let moves = self
            .all(
                "SELECT m.from_grid, m.to_grid, c.received_ms FROM doc_moves m
                   JOIN changes c ON c.seq = m.seq
                  WHERE m.doc = $1 ORDER BY m.seq",
                &[&key],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        Ok(Some(Timeline {
            created_ms,
            arrived_ms,
            moves,
        }))
    }

    fn load_docs(&self, ids: &[HouseholdId]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes().as_slice()).collect();
        self.with(async |c| {
            let tx = snapshot(c).await?;
            let mut docs: std::collections::HashMap<Vec<u8>, Vec<u8>> = tx
                .query("SELECT id, snapshot FROM docs WHERE id = ANY($1)", &[&keys])
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get::<_, Option<Vec<u8>>>(1).unwrap_or_default()))
                .collect();
            for r in tx
                .query(
                    "SELECT c.doc, c.bytes FROM changes c JOIN docs d ON d.id = c.doc
                      WHERE c.doc = ANY($1) AND c.seq > d.snapshot_seq ORDER BY c.doc, c.seq",
                    &[&keys],
                )
                .await?
            {
                if let Some(bytes) = docs.get_mut(r.get::<_, &[u8]>(0)) {
                    bytes.extend_from_slice(r.get::<_, &[u8]>(1));
                }
            }
            tx.commit().await?;
            Ok(keys.iter().map(|k| docs.get(*k).cloned()).collect())
        })
    }

    fn doc_timelines(&self, ids: &[HouseholdId]) -> Result<Vec<Option<Timeline>>> {
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes().as_slice()).collect();
        self.with(async |c| {
            let tx = snapshot(c).await?;
            let mut timelines: std::collections::HashMap<Vec<u8>, Timeline> = tx
                .query(
                    "SELECT d, f.bytes, f.received_ms FROM unnest($1::bytea[]) d,
                       LATERAL (SELECT bytes, received_ms FROM changes WHERE doc = d
                                 ORDER BY seq LIMIT 1) f",
                    &[&keys],
                )
                .await?
                .into_iter()
                .map(|r| {
                    let arrived_ms: i64 = r.get(2);
                    let created_ms = automerge::Change::try_from(r.get::<_, &[u8]>(1))
                        .map_or(arrived_ms, |c| c.timestamp());
                    let timeline = Timeline {
                        created_ms,
                        arrived_ms,
                        moves: Vec::new(),
                    };
                    (r.get(0), timeline)
                })
                .collect();
            for r in tx
                .query(
                    "SELECT m.doc, m.from_grid, m.to_grid, c.received_ms FROM doc_moves m
                       JOIN changes c ON c.seq = m.seq
                      WHERE m.doc = ANY($1) ORDER BY m.doc, m.seq",
                    &[&keys],
                )
                .await?
            {
                if let Some(t) = timelines.get_mut(r.get::<_, &[u8]>(0)) {
                    t.moves.push((r.get(1), r.get(2), r.get(3)));
                }
            }
            tx.commit().await?;
            Ok(keys.iter().map(|k| timelines.get(*k).cloned()).collect())
        })
    }

    fn doc_grids(&self, id: HouseholdId) -> Result<Vec<String>> {
        Ok(self
            .all(
                "SELECT grid FROM docs WHERE id = $1
                 UNION SELECT from_grid FROM doc_moves WHERE doc = $1
                 UNION SELECT to_grid FROM doc_moves WHERE doc = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn moved_into(&self, cursor: u64, until: u64, grids: &[String]) -> Result<Vec<HouseholdId>> {
        Ok(self
            .all(
                "SELECT DISTINCT doc FROM doc_moves
                  WHERE seq > $1 AND seq <= $2 AND to_grid = ANY($3)",
                &[&sql_seq(cursor), &sql_seq(until), &grids],
            )?
            .iter()
            .filter_map(|r| household_of(r.get::<_, &[u8]>(0)))
            .collect())
    }

    fn grid_counts(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .all("SELECT grid, count(*) FROM docs GROUP BY grid", &[])?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn grid_docs(&self, grid: &str) -> Result<Vec<(HouseholdId, Vec<u8>)>> {
        self.with(async |c| {
            let tx = snapshot(c).await?;
            let ids: Vec<HouseholdId> = tx
                .query("SELECT id FROM docs WHERE grid = $1", &[&grid])
                .await?
                .iter()
                .filter_map(|r| household_of(r.get::<_, &[u8]>(0)))
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(bytes) = load_doc_in(&tx, id).await? {
                    out.push((id, bytes));
                }
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    fn doc_log(&self, id: HouseholdId, until: u64) -> Result<Vec<LoggedChange>> {
        self.with(async |c| doc_log_in(&*c, id, until).await)
    }

    fn whole_page(
        &self,
        grids: &[String],
        from: WholeFrom,
        until: u64,
        budget: usize,
    ) -> Result<WholePage> {
        const BATCH: i64 = 64;
        let day = from.day.map(|d| d.to_string()).unwrap_or_default();
        self.with(async |c| {
            let tx = snapshot(c).await?;
            let mut page = WholePage::default();
            let mut used = 0usize;
            let mut pass = from.pass;
            let mut last: Vec<u8> = from
                .after
                .map(|a| a.as_bytes().to_vec())
                .unwrap_or_default();
            let until_i = sql_seq(until);
            'pages: loop {
                let rows = match pass {
                    WholePass::All => {
                        tx.query(
                            "SELECT id FROM docs WHERE grid = ANY($1) AND id > $2
                              ORDER BY id LIMIT $3",
                            &[&grids, &last, &BATCH],
                        )
                        .await?
                    }
                    WholePass::Needed => {
                        tx.query(
                            &format!(
                                "SELECT d.id FROM docs d JOIN idx_households h ON h.doc = d.id
                                  WHERE d.grid = ANY($1) AND d.id > $2 AND {NEEDED}
                                  ORDER BY d.id LIMIT $3"
                            ),
                            &[&grids, &last, &BATCH, &day],
                        )
                        .await?
                    }
                    WholePass::Rest => {
                        tx.query(
                            &format!(
                                "SELECT d.id FROM docs d LEFT JOIN idx_households h ON h.doc = d.id
                                  WHERE d.grid = ANY($1) AND d.id > $2
                                    AND NOT (h.doc IS NOT NULL AND {NEEDED}
                                             AND (SELECT max(seq) FROM changes c WHERE c.doc = d.id) <= $5)
                                  ORDER BY d.id LIMIT $3"
                            ),
                            &[&grids, &last, &BATCH, &day, &until_i],
                        )
                        .await?
                    }
                };
                if rows.is_empty() {
                    if pass == WholePass::Needed {
                        // The most needed are all sent: the rest, from the first.
                        pass = WholePass::Rest;
                        last = Vec::new();
                        page.last =
                            Some((pass, HouseholdId(qiaomen_protocol::ids::Uuid::nil())));
                        continue;
                    }
                    page.done = true;
                    break;
                }
                for r in rows {
                    if used >= budget && !page.docs.is_empty() {
                        break 'pages;
                    }
                    let id: Vec<u8> = r.get(0);
                    let Some(doc) = household_of(&id) else {
                        continue;
                    };
                    last = id;
                    page.last = Some((pass, doc));
                    let changes = doc_log_in(&tx, doc, until).await?;
                    if changes.is_empty() {
                        continue;
                    }
                    used += changes.iter().map(|c| c.bytes.len()).sum::<usize>();
                    page.docs.push((doc, changes));
                }
            }
            tx.commit().await?;
            Ok(page)
        })
    }

    fn quarantine(&self, id: HouseholdId, reason: &str) -> Result<()> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO quarantine (doc, reason, at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (doc) DO NOTHING",
                &[&id.as_bytes().as_slice(), &reason, &now_ms()],
            )
            .await?;
            Ok(())
        })
    }

    fn is_quarantined(&self, id: HouseholdId) -> Result<bool> {
        Ok(self
            .opt(
                "SELECT 1 FROM quarantine WHERE doc = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .is_some())
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>> {
        Ok(self
            .all(
                "SELECT doc, reason, at_ms FROM quarantine ORDER BY at_ms, doc",
                &[],
            )?
            .iter()
            .filter_map(|r| {
                Some(Quarantined {
                    doc: household_of(r.get::<_, &[u8]>(0))?,
                    reason: r.get(1),
                    at_ms: r.get(2),
                })
            })
            .collect())
    }

    fn release(&self, id: HouseholdId) -> Result<bool> {
        self.with(async |c| {
            Ok(c.execute(
                "DELETE FROM quarantine WHERE doc = $1",
                &[&id.as_bytes().as_slice()],
            )
            .await?
                > 0)
        })
    }

    fn refused(&self, grids: Option<&[String]>, limit: usize) -> Result<Vec<RefusedRow>> {
        let all = grids.is_none();
        let grids = grids.unwrap_or_default();
        Ok(self
            .all(
                "SELECT doc, hash, grid, device, \"user\", code, at_ms, bytes FROM refused
                  WHERE $1 OR grid = ANY($2) ORDER BY id DESC LIMIT $3",
                &[&all, &grids, &(limit.min(i64::MAX as usize) as i64)],
            )?
            .iter()
            .filter_map(|r| {
                Some(RefusedRow {
                    doc: household_of(r.get::<_, &[u8]>(0))?,
                    hash: r.get::<_, &[u8]>(1).try_into().ok()?,
                    grid: r.get(2),
                    device: r.get::<_, Option<&[u8]>>(3).and_then(|d| d.try_into().ok()),
                    user: r.get::<_, Option<&[u8]>>(4).and_then(|u| u.try_into().ok()),
                    code: r.get(5),
                    at_ms: r.get(6),
                    bytes: r.get(7),
                })
            })
            .collect())
    }
}
