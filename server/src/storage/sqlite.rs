//! The embedded SQLite backend: one file, WAL, `synchronous=FULL`; the default.
//!
//! Its migrations also create the tables of the access store, the read model and the
//! workflow tasks, which live in the same file and are opened by their own modules.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use qiaomen_protocol::{ids::HouseholdId, wire::WholePass};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    DocHead, LogSlice, LoggedChange, MAX_REFUSED_PER_DEVICE, Quarantined, ReadModelLag, RefusedRow,
    Result, Storage, StorageError, StoredDoc, Timeline, WholeFrom, WholePage, WriteBatch, Written,
    expected_heads, household_of, now_ms, sql_seq, written_ids,
};

/// The households most needed on day `?4` (SYNC-v1 §7.3.2), as a condition on a household's
/// read-model row `h` and its `docs` row `d`: a resident in a key group that day (a tag
/// `[group, since, until]` whose span holds it), or a demand not closed.
const NEEDED: &str = "(EXISTS (SELECT 1 FROM json_each(h.tags) t
                       WHERE json_extract(t.value, '$[1]') <= ?4
                         AND coalesce(json_extract(t.value, '$[2]'), ?4) >= ?4)
       OR EXISTS (SELECT 1 FROM idx_orders o WHERE o.doc = d.id AND o.status <> 'closed'))";

/// Schema migrations, in order: the store's `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    LOG_SCHEMA,
    ACCESS_SCHEMA,
    TEAMS_SCHEMA,
    crate::index::INDEX_SCHEMA,
    crate::tasks::TASKS_SCHEMA,
    QUARANTINE_SCHEMA,
    REFUSED_SCHEMA,
    crate::index::INDEX_SPANS_SCHEMA,
    DEVICE_END_SCHEMA,
    CLOCK_SCHEMA,
    crate::index::INDEX_CODES_SCHEMA,
    DEVICE_AGENT_SCHEMA,
    crate::access::shared::SHARED_SCHEMA,
    crate::access::shared::BUCKETS_SCHEMA,
    crate::index::PHOTOS_SCHEMA,
    crate::tasks::TASK_PHOTOS_SCHEMA,
    crate::index::CASES_SCHEMA,
    crate::access::cards::CARDS_SCHEMA,
    crate::access::journal::JOURNAL_SCHEMA,
];
const FORMAT: i64 = MIGRATIONS.len() as i64;

/// The store format this server writes (the migrations it knows): a store of a higher
/// `user_version` was made by a newer server and is refused.
pub fn format() -> i64 {
    FORMAT
}
const LOG_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    doc         BLOB NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    bytes       BLOB NOT NULL,
    device      BLOB,
    received_ms INTEGER NOT NULL,
    -- The household's grid when the change arrived, so a phone's scope is read by index.
    grid        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS changes_doc ON changes (doc, seq);
CREATE INDEX IF NOT EXISTS changes_grid ON changes (grid, seq);
CREATE TABLE IF NOT EXISTS docs (
    id            BLOB PRIMARY KEY,
    grid          TEXT NOT NULL DEFAULT '',
    snapshot      BLOB,
    snapshot_seq  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"#;

/// Households the server cannot load or check: their uploads are refused `quarantined`
/// until an operator releases them (`qiaomen-server admin quarantine`).
const QUARANTINE_SCHEMA: &str = r#"
CREATE TABLE quarantine (
    doc    BLOB PRIMARY KEY,
    reason TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Refused changes, kept with their bytes and never applied: what a worker typed and the
/// server could not take, for the grid's supervisors (`GET /api/v1/refused`) and the admin's
/// export (`qiaomen-server admin refused export`).
const REFUSED_SCHEMA: &str = r#"
CREATE TABLE refused (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    doc    BLOB NOT NULL,
    hash   BLOB NOT NULL UNIQUE,
    grid   TEXT NOT NULL,
    device BLOB,
    user   BLOB,
    code   TEXT NOT NULL,
    at_ms  INTEGER NOT NULL,
    bytes  BLOB NOT NULL
);
CREATE INDEX refused_grid ON refused (grid, id);
CREATE INDEX refused_device ON refused (device, id);
"#;

/// Two ways a device ends, and what the admin sees first: `retire_ms` (an admin retired it: a
/// handover, it may still upload what it holds), `retired_ms` (it then reported nothing pending
/// and ended: its token is refused `device_retired`), the time of its last sync and what it
/// reported still holding then (`last_pending`: unacknowledged changes and unsent task
/// reports after that sync's acknowledgements; NULL for a phone that does not report it).
const DEVICE_END_SCHEMA: &str = r#"
ALTER TABLE devices ADD COLUMN retire_ms INTEGER;
ALTER TABLE devices ADD COLUMN retired_ms INTEGER;
ALTER TABLE devices ADD COLUMN last_sync_ms INTEGER;
ALTER TABLE devices ADD COLUMN last_pending INTEGER;
"#;

/// Whether the uploading phone's clock agreed with the server's when it sent each change
/// (NULL: it did not say, or the change came before this was kept).
/// What each phone last said it runs (the sync request's `agent`: library and app versions),
/// for the supervisors' list of phones.
const DEVICE_AGENT_SCHEMA: &str = "ALTER TABLE devices ADD COLUMN agent TEXT;";
const CLOCK_SCHEMA: &str = "ALTER TABLE changes ADD COLUMN clock_ok INTEGER;";

/// Teams (departments and service teams that handle dispatched work orders) become a kind of
/// org unit: SQLite cannot change a CHECK constraint, so the table is rebuilt (foreign keys
/// are off on this connection; the rows and their ids are kept).
const TEAMS_SCHEMA: &str = r#"
CREATE TABLE org_units_new (
    id          TEXT PRIMARY KEY,
    parent      TEXT REFERENCES org_units (id),
    kind        TEXT NOT NULL CHECK (kind IN ('county', 'town', 'village', 'grid', 'team')),
    name        TEXT NOT NULL,
    valid_from  TEXT NOT NULL,
    valid_until TEXT
);
INSERT INTO org_units_new (id, parent, kind, name, valid_from, valid_until)
    SELECT id, parent, kind, name, valid_from, valid_until FROM org_units;
DROP TABLE org_units;
ALTER TABLE org_units_new RENAME TO org_units;
CREATE INDEX org_units_parent ON org_units (parent);
"#;

/// The org model, users, devices, tokens, sessions and the audit log (the access issue), and
/// the authenticated user of each logged change.
const ACCESS_SCHEMA: &str = r#"
ALTER TABLE changes ADD COLUMN user BLOB;
-- Households that moved between grids, at the log row of the move: a phone of the new grid
-- receives such a household's whole history.
CREATE TABLE doc_moves (
    doc       BLOB NOT NULL,
    from_grid TEXT NOT NULL,
    to_grid   TEXT NOT NULL,
    seq       INTEGER NOT NULL
);
CREATE INDEX doc_moves_to ON doc_moves (to_grid, seq);
CREATE TABLE org_units (
    id          TEXT PRIMARY KEY,
    parent      TEXT REFERENCES org_units (id),
    kind        TEXT NOT NULL CHECK (kind IN ('county', 'town', 'village', 'grid')),
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
    created_ms    INTEGER NOT NULL
);
CREATE TABLE assignments (
    id             INTEGER PRIMARY KEY,
    user           TEXT NOT NULL REFERENCES users (id),
    unit           TEXT NOT NULL REFERENCES org_units (id),
    role           TEXT NOT NULL,
    valid_from_ms  INTEGER NOT NULL,
    valid_until_ms INTEGER
);
CREATE INDEX assignments_user ON assignments (user);
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    user         TEXT NOT NULL REFERENCES users (id),
    install_id   TEXT NOT NULL,
    enrolled_ms  INTEGER NOT NULL,
    revoked_ms   INTEGER,
    last_seen_ms INTEGER
);
CREATE TABLE enrollment_codes (
    hash       BLOB PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users (id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    device     TEXT,
    used_ms    INTEGER
);
CREATE TABLE device_tokens (
    hash       BLOB PRIMARY KEY,
    device     TEXT NOT NULL REFERENCES devices (id),
    created_ms INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'rotated', 'retired')),
    successor  BLOB,
    used_ms    INTEGER
);
CREATE INDEX device_tokens_device ON device_tokens (device);
CREATE INDEX device_tokens_successor ON device_tokens (successor);
CREATE TABLE sessions (
    hash       BLOB PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users (id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    ended_ms   INTEGER
);
CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms        INTEGER NOT NULL,
    actor_user   TEXT,
    actor_device TEXT,
    action       TEXT NOT NULL,
    target       TEXT,
    outcome      TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#;

/// The page cache of each SQLite connection this process opens, in KiB (`None`: SQLite's
/// default, 2,000 KiB). Set once at start (`--sqlite-cache-kib`): a server holds about ten
/// connections, so this is most of the memory it keeps beyond its documents.
static PAGE_CACHE_KIB: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets [`PAGE_CACHE_KIB`] for the connections opened from now on; the first call wins.
pub fn set_page_cache_kib(kib: u32) {
    let _ = PAGE_CACHE_KIB.set(kib.max(64));
}

/// Applies the process's page cache size to a new connection.
pub(crate) fn size_page_cache(conn: &Connection) -> Result<()> {
    if let Some(kib) = PAGE_CACHE_KIB.get() {
        conn.pragma_update(None, "cache_size", -i64::from(*kib))?;
    }
    Ok(())
}

/// The embedded SQLite backend: one file, WAL, `synchronous=FULL`.
#[derive(Debug)]
pub struct SqliteStorage {
    /// One connection per handle: SQLite takes one writer at a time, and the server opens a
    /// handle per writer thread and per reader ([`SqliteStorage::reopen`]).
    db: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStorage {
    /// Opens (creating if needed) `qiaomen.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("qiaomen.db");
        let conn = Self::connect(&path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > FORMAT {
            return Err(StorageError::TooNew {
                found: version,
                max: FORMAT,
            });
        }
        // A migration may rebuild a table others refer to: foreign keys are checked after
        // each step instead of during it (the pragma cannot change inside a transaction).
        conn.pragma_update(None, "foreign_keys", false)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            // Under the write lock, and only if no other connection applied it meanwhile.
            let tx = rusqlite::Transaction::new_unchecked(
                &conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now > i as i64 {
                continue;
            }
            tx.execute_batch(sql)?;
            let broken: i64 =
                tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?;
            if broken > 0 {
                return Err(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!(
                        "migration {} leaves {broken} broken references",
                        i + 1
                    )),
                )));
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(Self {
            db: Mutex::new(conn),
            path,
        })
    }

    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        size_page_cache(&conn)?;
        Ok(conn)
    }

    /// Another connection to the same file, for readers.
    pub fn reopen(&self) -> Result<Self> {
        Ok(Self {
            db: Mutex::new(Self::connect(&self.path)?),
            path: self.path.clone(),
        })
    }

    /// The handle's connection. A panic while it was held (a bug, caught further up) leaves
    /// no transaction open behind it.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        let conn = self.db.lock().unwrap_or_else(|poisoned| {
            self.db.clear_poison();
            poisoned.into_inner()
        });
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        conn
    }
}

/// A document's snapshot followed by the changes logged after it ([`Storage::load_doc`]).
fn load_doc_in(conn: &Connection, id: HouseholdId) -> Result<Option<Vec<u8>>> {
    let key = id.as_bytes().as_slice();
    let row: Option<(Option<Vec<u8>>, i64)> = conn
        .prepare_cached("SELECT snapshot, snapshot_seq FROM docs WHERE id = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((snapshot, after)) = row else {
        return Ok(None);
    };
    let mut bytes = snapshot.unwrap_or_default();
    let mut stmt =
        conn.prepare_cached("SELECT bytes FROM changes WHERE doc = ?1 AND seq > ?2 ORDER BY seq")?;
    let mut rows = stmt.query(params![key, after])?;
    while let Some(r) = rows.next()? {
        let b: Vec<u8> = r.get(0)?;
        bytes.extend_from_slice(&b);
    }
    Ok(Some(bytes))
}

/// The household's last log row (0: none).
fn last_seq(conn: &Connection, id: HouseholdId) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM changes WHERE doc = ?1")?
        .query_row([id.as_bytes().as_slice()], |r| r.get::<_, i64>(0))? as u64)
}

/// Where the household's log stands.
fn head_of(conn: &Connection, id: HouseholdId) -> Result<DocHead> {
    let (seq, since): (i64, i64) = conn
        .prepare_cached(
            "SELECT coalesce(max(c.seq), 0), count(c.seq) FILTER (WHERE c.seq > d.snapshot_seq)
               FROM docs d LEFT JOIN changes c ON c.doc = d.id WHERE d.id = ?1",
        )?
        .query_row([id.as_bytes().as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(DocHead {
        seq: seq as u64,
        since_snapshot: since as u64,
    })
}

/// Keeps refused changes: a change refused again is kept once; a device keeps its latest
/// [`MAX_REFUSED_PER_DEVICE`].
fn keep_refused(conn: &Connection, rows: &[RefusedRow]) -> Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO refused (doc, hash, grid, device, user, code, at_ms, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (hash) DO NOTHING",
    )?;
    for r in rows {
        insert.execute(params![
            r.doc.as_bytes().as_slice(),
            r.hash.as_slice(),
            r.grid,
            r.device.as_ref().map(|d| d.as_slice()),
            r.user.as_ref().map(|u| u.as_slice()),
            r.code,
            r.at_ms,
            r.bytes,
        ])?;
    }
    drop(insert);
    let devices: std::collections::BTreeSet<_> = rows.iter().filter_map(|r| r.device).collect();
    let mut trim = conn.prepare_cached(
        "DELETE FROM refused WHERE device = ?1 AND id <= (
            SELECT id FROM refused WHERE device = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?;
    for d in devices {
        trim.execute(params![d.as_slice(), MAX_REFUSED_PER_DEVICE])?;
    }
    Ok(())
}

/// Every logged change of a document up to `until`, oldest first ([`Storage::doc_log`]).
fn doc_log_of(conn: &Connection, id: HouseholdId, until: u64) -> Result<Vec<LoggedChange>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, bytes, hash FROM changes WHERE doc = ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![id.as_bytes().as_slice(), sql_seq(until)], |r| {
        Ok(LoggedChange {
            seq: r.get::<_, i64>(0)? as u64,
            doc: id,
            bytes: r.get(1)?,
            hash: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Storage for SqliteStorage {
    fn load_doc(&self, id: HouseholdId) -> Result<Option<Vec<u8>>> {
        load_doc_in(&self.conn(), id)
    }

    fn has_change(&self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM changes WHERE hash = ?1)")?
            .query_row([hash.as_slice()], |r| r.get(0))?)
    }

    fn hashes_with_prefix(&self, doc: HouseholdId, prefix: &[u8]) -> Result<Vec<[u8; 32]>> {
        // A range of the unique index on `hash`: every hash from prefix·00… to prefix·ff….
        let prefix = &prefix[..prefix.len().min(32)];
        let mut low = prefix.to_vec();
        low.resize(32, 0x00);
        let mut high = prefix.to_vec();
        high.resize(32, 0xff);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT hash FROM changes WHERE hash >= ?1 AND hash <= ?2 AND doc = ?3 LIMIT 16",
        )?;
        let rows = stmt.query_map(params![low, high, doc.as_bytes().as_slice()], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(hash) = <[u8; 32]>::try_from(row?.as_slice()) {
                out.push(hash);
            }
        }
        Ok(out)
    }

    fn load_for_write(&self, id: HouseholdId) -> Result<Option<StoredDoc>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(bytes) = load_doc_in(&tx, id)? else {
            return Ok(None);
        };
        let head = head_of(&tx, id)?;
        tx.commit()?;
        Ok(Some(StoredDoc { bytes, head }))
    }

    fn write(&self, batch: &WriteBatch) -> Result<Written> {
        let mut conn = self.conn();
        // The write lock at once: the heads checked are the heads written on.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut moved = Vec::new();
        for (id, head) in expected_heads(batch) {
            if last_seq(&tx, id)? != head {
                moved.push(id);
            }
        }
        if !moved.is_empty() {
            return Ok(Written::Moved(moved));
        }
        keep_refused(&tx, &batch.refused)?;
        let now = now_ms();
        for w in &batch.households {
            let key = w.id.as_bytes().as_slice();
            tx.prepare_cached(
                "INSERT INTO docs (id, grid, snapshot, snapshot_seq) VALUES (?1, ?2, NULL, 0)
                 ON CONFLICT (id) DO UPDATE SET grid = excluded.grid WHERE docs.grid <> excluded.grid",
            )?
            .execute(params![key, w.log_grid])?;
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO changes (doc, hash, bytes, device, user, received_ms, grid, clock_ok)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for c in &w.rows {
                insert.execute(params![
                    key,
                    c.hash.as_slice(),
                    c.bytes,
                    c.device.map(|d| d.to_vec()),
                    c.user.map(|u| u.to_vec()),
                    now,
                    w.log_grid,
                    c.clock_ok
                ])?;
            }
            if let Some(from) = &w.moved_from {
                tx.prepare_cached(
                    "INSERT INTO doc_moves (doc, from_grid, to_grid, seq)
                     SELECT ?1, ?2, ?3, max(seq) FROM changes WHERE doc = ?1",
                )?
                .execute(params![key, from, w.grid])?;
            }
            if w.grid != w.log_grid {
                tx.prepare_cached("UPDATE docs SET grid = ?2 WHERE id = ?1")?
                    .execute(params![key, w.grid])?;
            }
            if let Some(snapshot) = &w.snapshot {
                // Stamped with the household's last row, which this transaction just wrote:
                // the snapshot holds exactly the log through it.
                tx.prepare_cached(
                    "UPDATE docs SET snapshot = ?2,
                            snapshot_seq = (SELECT coalesce(max(seq), 0) FROM changes WHERE doc = ?1)
                      WHERE id = ?1",
                )?
                .execute(params![key, snapshot])?;
            }
        }
        let heads = written_ids(batch)
            .into_iter()
            .map(|id| Ok((id, head_of(&tx, id)?)))
            .collect::<Result<_>>()?;
        tx.commit()?;
        Ok(Written::Committed(heads))
    }

    fn log_since(&self, cursor: u64, budget: usize, grids: &[String]) -> Result<LogSlice> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let max: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
            r.get(0)
        })?;
        let mut slice = LogSlice {
            cursor: cursor.max(max as u64),
            ..Default::default()
        };
        if max as u64 <= cursor {
            slice.cursor = cursor;
            return Ok(slice);
        }
        let mut used = 0usize;
        {
            // Grids travel as one JSON array parameter, so the statement stays cacheable; with
            // grids, the (grid, seq) index reads only the phone's scope.
            let mut stmt = if grids.is_empty() {
                tx.prepare_cached(
                    "SELECT seq, doc, bytes, hash FROM changes
                      WHERE seq > ?1 AND seq <= ?2 AND ?3 = '[]' ORDER BY seq",
                )?
            } else {
                tx.prepare_cached(
                    "SELECT seq, doc, bytes, hash FROM changes
                      WHERE grid IN (SELECT value FROM json_each(?3)) AND seq > ?1 AND seq <= ?2
                      ORDER BY seq",
                )?
            };
            let grids_json = serde_json::to_string(grids).expect("strings serialize");
            let mut rows = stmt.query(params![sql_seq(cursor), max, grids_json])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                let doc: Vec<u8> = r.get(1)?;
                let bytes: Vec<u8> = r.get(2)?;
                let hash: Vec<u8> = r.get(3)?;
                if used > 0 && used + bytes.len() > budget {
                    slice.more = true;
                    slice.cursor = slice.changes.last().map(|c| c.seq).unwrap_or(cursor);
                    break;
                }
                used += bytes.len();
                let Some(doc) = household_of(&doc) else {
                    continue;
                };
                slice.changes.push(LoggedChange {
                    seq: seq as u64,
                    doc,
                    hash,
                    bytes,
                });
            }
        }
        tx.commit()?;
        Ok(slice)
    }

    fn read_model_lag(&self) -> Result<ReadModelLag> {
        let (cursor, end): (i64, i64) = self.conn().query_row(
            "SELECT (SELECT seq FROM idx_cursor), (SELECT coalesce(max(seq), 0) FROM changes)",
            [],
            |r| Ok((r.get::<_, Option<i64>>(0)?.unwrap_or(0), r.get(1)?)),
        )?;
        let oldest_ms = if end > cursor {
            self.conn()
                .prepare_cached(
                    "SELECT received_ms FROM changes WHERE seq > ?1 ORDER BY seq LIMIT 1",
                )?
                .query_row([cursor], |r| r.get(0))
                .optional()?
        } else {
            None
        };
        Ok(ReadModelLag {
            behind: end.saturating_sub(cursor).max(0) as u64,
            oldest_ms,
        })
    }

    fn quarantined_count(&self) -> Result<u64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM quarantine", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    fn max_seq(&self) -> Result<u64> {
        Ok(self
            .conn()
            .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    fn hash_at(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT hash FROM changes WHERE seq = ?1")?
            .query_row([sql_seq(seq)], |r| r.get(0))
            .optional()?)
    }

    fn doc_grid(&self, id: HouseholdId) -> Result<Option<String>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT grid FROM docs WHERE id = ?1")?
            .query_row([id.as_bytes().as_slice()], |r| r.get(0))
            .optional()?)
    }

    fn doc_timeline(&self, id: HouseholdId) -> Result<Option<Timeline>> {
        let key = id.as_bytes().as_slice();
        let first: Option<(Vec<u8>, i64)> = self
            .conn()
            .prepare_cached(
                "SELECT bytes, received_ms FROM changes WHERE doc = ?1 ORDER BY seq LIMIT 1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((bytes, arrived_ms)) = first else {
            return Ok(None);
        };
        let created_ms =
            automerge::Change::try_from(bytes.as_slice()).map_or(arrived_ms, |c| c.timestamp());
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT m.from_grid, m.to_grid, c.received_ms FROM doc_moves m
               JOIN changes c ON c.seq = m.seq
              WHERE m.doc = ?1 ORDER BY m.seq",
        )?;
        let moves = stmt
            .query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(Timeline {
            created_ms,
            arrived_ms,
            moves,
        }))
    }

    fn doc_grids(&self, id: HouseholdId) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT grid FROM docs WHERE id = ?1
             UNION SELECT from_grid FROM doc_moves WHERE doc = ?1
             UNION SELECT to_grid FROM doc_moves WHERE doc = ?1",
        )?;
        let rows = stmt.query_map([id.as_bytes().as_slice()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn moved_into(&self, cursor: u64, until: u64, grids: &[String]) -> Result<Vec<HouseholdId>> {
        let grids_json = serde_json::to_string(grids).expect("strings serialize");
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT doc FROM doc_moves
              WHERE seq > ?1 AND seq <= ?2 AND to_grid IN (SELECT value FROM json_each(?3))",
        )?;
        let rows = stmt.query_map(params![sql_seq(cursor), sql_seq(until), grids_json], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.extend(household_of(&r?));
        }
        Ok(out)
    }

    fn grid_counts(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT grid, count(*) FROM docs GROUP BY grid")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn grid_docs(&self, grid: &str) -> Result<Vec<(HouseholdId, Vec<u8>)>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<Vec<u8>> = tx
            .prepare_cached("SELECT id FROM docs WHERE grid = ?1")?
            .query_map([grid], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().filter_map(|b| household_of(b)) {
            if let Some(bytes) = load_doc_in(&tx, id)? {
                out.push((id, bytes));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn doc_log(&self, id: HouseholdId, until: u64) -> Result<Vec<LoggedChange>> {
        doc_log_of(&self.conn(), id, until)
    }

    fn whole_page(
        &self,
        grids: &[String],
        from: WholeFrom,
        until: u64,
        budget: usize,
    ) -> Result<WholePage> {
        const BATCH: i64 = 64;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let grids_json = serde_json::to_string(grids).expect("strings serialize");
        let day = from.day.map(|d| d.to_string()).unwrap_or_default();
        let mut page = WholePage::default();
        let mut used = 0usize;
        let mut pass = from.pass;
        let mut last: Vec<u8> = from
            .after
            .map(|a| a.as_bytes().to_vec())
            .unwrap_or_default();
        'pages: loop {
            let ids: Vec<Vec<u8>> = match pass {
                WholePass::All => tx
                    .prepare_cached(
                        "SELECT id FROM docs WHERE grid IN (SELECT value FROM json_each(?1))
                           AND id > ?2 ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![grids_json, last, BATCH], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
                WholePass::Needed => tx
                    .prepare_cached(&format!(
                        "SELECT d.id FROM docs d JOIN idx_households h ON h.doc = d.id
                          WHERE d.grid IN (SELECT value FROM json_each(?1)) AND d.id > ?2
                            AND {NEEDED} ORDER BY d.id LIMIT ?3"
                    ))?
                    .query_map(params![grids_json, last, BATCH, day], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
                WholePass::Rest => tx
                    .prepare_cached(&format!(
                        "SELECT d.id FROM docs d LEFT JOIN idx_households h ON h.doc = d.id
                          WHERE d.grid IN (SELECT value FROM json_each(?1)) AND d.id > ?2
                            AND NOT (h.doc IS NOT NULL AND {NEEDED}
                                     AND (SELECT MAX(seq) FROM changes c WHERE c.doc = d.id) <= ?5)
                          ORDER BY d.id LIMIT ?3"
                    ))?
                    .query_map(params![grids_json, last, BATCH, day, sql_seq(until)], |r| {
                        r.get(0)
                    })?
                    .collect::<rusqlite::Result<_>>()?,
            };
            if ids.is_empty() {
                if pass == WholePass::Needed {
                    // The most needed are all sent: the rest, from the first.
                    pass = WholePass::Rest;
                    last = Vec::new();
                    page.last = Some((pass, HouseholdId(qiaomen_protocol::ids::Uuid::nil())));
                    continue;
                }
                page.done = true;
                break;
            }
            for id in ids {
                if used >= budget && !page.docs.is_empty() {
                    break 'pages;
                }
                last = id.clone();
                let Some(doc) = household_of(&id) else {
                    continue;
                };
                page.last = Some((pass, doc));
                let changes = doc_log_of(&tx, doc, until)?;
                if changes.is_empty() {
                    continue;
                }
                used += changes.iter().map(|c| c.bytes.len()).sum::<usize>();
                page.docs.push((doc, changes));
            }
        }
        tx.commit()?;
        Ok(page)
    }

    fn quarantine(&self, id: HouseholdId, reason: &str) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO quarantine (doc, reason, at_ms) VALUES (?1, ?2, ?3) ON CONFLICT (doc) DO NOTHING",
            )?
            .execute(params![id.as_bytes().as_slice(), reason, now_ms()])?;
        Ok(())
    }

    fn is_quarantined(&self, id: HouseholdId) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM quarantine WHERE doc = ?1)")?
            .query_row([id.as_bytes().as_slice()], |r| r.get(0))?)
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT doc, reason, at_ms FROM quarantine ORDER BY at_ms, doc")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, reason, at_ms) = row?;
            if let Some(doc) = household_of(&doc) {
                out.push(Quarantined { doc, reason, at_ms });
            }
        }
        Ok(out)
    }

    fn release(&self, id: HouseholdId) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("DELETE FROM quarantine WHERE doc = ?1")?
            .execute([id.as_bytes().as_slice()])?
            > 0)
    }

    fn refused(&self, grids: Option<&[String]>, limit: usize) -> Result<Vec<RefusedRow>> {
        let grids_json = grids.map(|g| serde_json::to_string(g).expect("strings serialize"));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT doc, hash, grid, device, user, code, at_ms, bytes FROM refused
              WHERE ?1 IS NULL OR grid IN (SELECT value FROM json_each(?1))
              ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![grids_json, limit as i64], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Vec<u8>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, hash, grid, device, user, code, at_ms, bytes) = row?;
            let (Some(doc), Ok(hash)) = (household_of(&doc), hash.try_into()) else {
                continue;
            };
            out.push(RefusedRow {
                doc,
                hash,
                grid,
                device: device.and_then(|d| d.try_into().ok()),
                user: user.and_then(|u| u.try_into().ok()),
                code,
                at_ms,
                bytes,
            });
        }
        Ok(out)
    }

    fn doc_count(&self) -> Result<u64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM docs", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{HouseholdWrite, NewChange};

    /// Appends rows of one household in a commit of their own.
    fn append(s: &SqliteStorage, rows: &[NewChange], grid: &str) {
        let id = rows[0].doc;
        let head = s.load_for_write(id).unwrap().map_or(0, |d| d.head.seq);
        let batch = WriteBatch {
            households: vec![HouseholdWrite {
                id,
                head,
                rows: rows.to_vec(),
                log_grid: grid.into(),
                grid: grid.into(),
                moved_from: None,
                snapshot: None,
            }],
            refused: Vec::new(),
        };
        assert!(matches!(s.write(&batch).unwrap(), Written::Committed(_)));
    }

    fn change(doc: HouseholdId, n: u8) -> NewChange {
        NewChange {
            doc,
            hash: [n; 32],
            bytes: vec![n; 100],
            device: None,
            user: None,
            clock_ok: None,
        }
    }

    /// Pages of a first sync by whole documents: the grid's households in id order, each with
    /// its changes up to the position, about `budget` bytes a page, and `done` at the end.
    #[test]
    fn whole_pages_go_through_a_grids_households_at_one_position() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        let mut ids: Vec<HouseholdId> = (0..3).map(|_| HouseholdId::new()).collect();
        ids.sort();
        let (elsewhere, later) = (HouseholdId::new(), HouseholdId::new());
        append(&s, &[change(ids[0], 1), change(ids[0], 2)], "g1");
        append(&s, &[change(ids[1], 3)], "g1");
        append(&s, &[change(elsewhere, 4)], "g2");
        append(&s, &[change(ids[2], 5)], "g1");
        let at = s.max_seq().unwrap();
        // Logged after the position: not in these pages (it comes by the log).
        append(&s, &[change(later, 6)], "g1");
        append(&s, &[change(ids[0], 7)], "g1");

        let grids = vec!["g1".to_string()];
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let from = WholeFrom {
                pass: WholePass::All,
                after,
                day: None,
            };
            let page = s.whole_page(&grids, from, at, 150).unwrap();
            pages += 1;
            for (id, changes) in &page.docs {
                assert!(changes.iter().all(|c| c.seq <= at));
                seen.push((*id, changes.len()));
            }
            if page.done {
                break;
            }
            after = page.last.map(|(_, a)| a);
            assert!(pages < 10, "the pages end");
        }
        let mut expected = vec![(ids[0], 2), (ids[1], 1), (ids[2], 1)];
        expected.sort();
        assert_eq!(seen, expected, "g1's households, once each, in id order");
        assert!(pages >= 3, "about 150 bytes a page: {pages} pages");
        // A page always holds one household, however small the budget.
        let all = WholeFrom {
            pass: WholePass::All,
            after: None,
            day: None,
        };
        let one = s.whole_page(&grids, all, at, 0).unwrap();
        assert_eq!(one.docs.len(), 1);
    }

    /// The most needed first (SYNC-v1 §7.3.2): the households with a key-group tag that day
    /// or a demand not closed, then the rest without those whose log ends by the position;
    /// a household changed after the position comes in both, and every household at least
    /// once, one household a page.
    #[test]
    fn whole_pages_send_the_most_needed_first_and_every_household_once_it_is_judged_alike() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        let mut ids: Vec<HouseholdId> = (0..8).map(|_| HouseholdId::new()).collect();
        ids.sort();
        for (n, id) in ids.iter().enumerate() {
            append(&s, &[change(*id, n as u8 + 1)], "g1");
        }
        let at = s.max_seq().unwrap();
        // Household 6 changes after the position.
        append(&s, &[change(ids[6], 20)], "g1");
        // The read model: 1 and 6 a key group now, 3 one that ended in June; 4 a demand in
        // hand, 5 a closed one; 7 not read yet.
        let household = |id: HouseholdId, tags: &str| {
            s.conn()
                .execute(
                    "INSERT INTO idx_households (doc, grid, door, status, tags, registered)
                     VALUES (?1, 'g1', '1', 'active', ?2, '2026-01-01')",
                    params![id.as_bytes().as_slice(), tags],
                )
                .unwrap();
        };
        let current = r#"[["elderly_alone","2026-01-01",null]]"#;
        for n in [0, 2, 4, 5] {
            household(ids[n], "[]");
        }
        household(ids[1], current);
        household(ids[6], current);
        household(ids[3], r#"[["elderly_alone","2026-01-01","2026-06-30"]]"#);
        let order = |id: HouseholdId, status: &str| {
            s.conn()
                .execute(
                    "INSERT INTO idx_orders (doc, demand, grid, door, status, responsible, category,
                                             urgency, raised_ms, chase_ups, bounces, reopened)
                     VALUES (?1, ?2, 'g1', '1', ?3, 'w', 'other', 'normal', 0, 0, 0, 0)",
                    params![id.as_bytes().as_slice(), status, status],
                )
                .unwrap();
        };
        order(ids[4], "handling");
        order(ids[5], "closed");

        let grids = vec!["g1".to_string()];
        let day = Some("2026-11-30".parse().unwrap());
        let mut from = WholeFrom {
            pass: WholePass::Needed,
            after: None,
            day,
        };
        let mut seen = Vec::new();
        for pages in 0.. {
            assert!(pages < 20, "the pages end");
            let page = s.whole_page(&grids, from, at, 0).unwrap();
            for (id, changes) in &page.docs {
                assert!(changes.iter().all(|c| c.seq <= at));
                // One household a page: of the pass the page started in.
                seen.push((from.pass, ids.iter().position(|i| i == id).unwrap()));
            }
            if page.done {
                break;
            }
            let (pass, after) = page.last.unwrap();
            from = WholeFrom {
                pass,
                after: Some(after).filter(|a| !a.0.is_nil()),
                day,
            };
        }
        use WholePass::{Needed, Rest};
        assert_eq!(
            seen,
            [
                (Needed, 1),
                (Needed, 4),
                (Needed, 6),
                (Rest, 0),
                (Rest, 2),
                (Rest, 3),
                (Rest, 5),
                (Rest, 6),
                (Rest, 7)
            ]
        );
    }

    /// A store written before teams existed (format 2) keeps its org units and assignments
    /// through the table rebuild, and takes teams afterwards.
    #[test]
    fn an_older_store_keeps_its_org_when_teams_arrive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("qiaomen.db")).unwrap();
            conn.execute_batch(LOG_SCHEMA).unwrap();
            conn.execute_batch(ACCESS_SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO org_units (id, parent, kind, name, valid_from)
                     VALUES ('c', NULL, 'county', '县', '2026-01-01'),
                            ('t', 'c', 'town', '镇', '2026-01-01');
                 INSERT INTO users (id, login, name, created_ms) VALUES ('u', 'u', '人', 0);
                 INSERT INTO assignments (user, unit, role, valid_from_ms) VALUES ('u', 't', 'town_supervisor', 0);",
            )
            .unwrap();
        }
        SqliteStorage::open(dir.path()).unwrap();
        let db = crate::access::AccessDb::open(dir.path()).unwrap();
        let units: Vec<(String, String)> = db
            .units()
            .unwrap()
            .into_iter()
            .map(|u| (u.id, u.kind.as_str().to_string()))
            .collect();
        assert_eq!(
            units,
            [("c".into(), "county".into()), ("t".into(), "town".into())]
        );
        db.add_unit(
            "water",
            crate::access::org::UnitKind::Team,
            Some("t"),
            "水利站",
            "2026-01-01".parse().unwrap(),
        )
        .unwrap();
        let fk: i64 = db
            .db
            .one("SELECT count(*) FROM pragma_foreign_key_check", &[])
            .unwrap();
        assert_eq!(fk, 0, "every reference still resolves");
        assert_eq!(db.assignments().unwrap().len(), 1);
    }
}
