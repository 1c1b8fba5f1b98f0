//! Where the server keeps documents: an append-only change log plus per-document snapshots.
//!
//! [`Storage`] is the seam for backends. The embedded SQLite backend ([`SqliteStorage`]) is the
//! default; a PostgreSQL backend implements the same trait. All calls are blocking: the
//! server calls them from its writer thread or from `spawn_blocking`, never on async threads.
//!
//! The log is the source of truth and is never rewritten: each accepted change gets the next
//! sequence number (`seq`), which is what phones' cursors count. Snapshots only make loading a
//! document cheaper; they are a cache of the log.

use std::path::{Path, PathBuf};

use qiaomen_protocol::ids::HouseholdId;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store was written by a newer server (format {0})")]
    TooNew(i64),
    #[error("the stored document of household {0} does not load")]
    Corrupt(HouseholdId),
    #[error("the writer panicked; the group was rolled back")]
    Panicked,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A change accepted for the log.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub doc: HouseholdId,
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
    /// The device that uploaded it (authenticated with the access issue).
    pub device: Option<[u8; 16]>,
}

/// A change read back from the log.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub seq: u64,
    pub doc: HouseholdId,
    pub hash: Vec<u8>,
    pub bytes: Vec<u8>,
}

/// A slice of the log after a cursor.
#[derive(Debug, Clone, Default)]
pub struct LogSlice {
    pub changes: Vec<LoggedChange>,
    /// The cursor a phone holds after storing `changes`.
    pub cursor: u64,
    /// The slice stopped at its byte budget.
    pub more: bool,
}

/// A storage backend.
pub trait Storage: Send + 'static {
    /// The stored bytes of a document (its snapshot followed by the changes logged after it),
    /// or `None` if the document does not exist.
    fn load_doc(&mut self, id: HouseholdId) -> Result<Option<Vec<u8>>>;
    /// Whether the log holds a change.
    fn has_change(&mut self, hash: &[u8; 32]) -> Result<bool>;
    /// Starts a write transaction; the writer thread groups many requests in one.
    fn begin(&mut self) -> Result<()>;
    /// Appends changes of one document to the log inside the open transaction, recording the
    /// document's grid; returns the number of log rows the document has after its snapshot.
    fn append(&mut self, changes: &[NewChange], grid: &str) -> Result<u64>;
    /// Replaces a document's snapshot inside the open transaction.
    fn put_snapshot(&mut self, id: HouseholdId, snapshot: &[u8]) -> Result<()>;
    /// Commits the open transaction durably (fsync).
    fn commit(&mut self) -> Result<()>;
    /// Abandons the open transaction.
    fn rollback(&mut self);
    /// The log after `cursor`, up to about `budget` bytes of changes, of the documents in
    /// `grids` (every document when empty).
    fn log_since(&mut self, cursor: u64, budget: usize, grids: &[String]) -> Result<LogSlice>;
    /// The last sequence number in the log.
    fn max_seq(&mut self) -> Result<u64>;
    /// The hash of the change logged at `seq`.
    fn hash_at(&mut self, seq: u64) -> Result<Option<Vec<u8>>>;
    /// How many documents the store holds.
    fn doc_count(&mut self) -> Result<u64>;
}

const FORMAT: i64 = 1;
const SCHEMA: &str = r#"
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

/// The embedded SQLite backend: one file, WAL, `synchronous=FULL`.
#[derive(Debug)]
pub struct SqliteStorage {
    conn: Connection,
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
            return Err(StorageError::TooNew(version));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", FORMAT)?;
        Ok(Self { conn, path })
    }

    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        Ok(conn)
    }

    /// Another connection to the same file, for readers.
    pub fn reopen(&self) -> Result<Self> {
        Ok(Self {
            conn: Self::connect(&self.path)?,
            path: self.path.clone(),
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Storage for SqliteStorage {
    fn load_doc(&mut self, id: HouseholdId) -> Result<Option<Vec<u8>>> {
        let key = id.as_bytes().as_slice();
        let row: Option<(Option<Vec<u8>>, i64)> = self
            .conn
            .prepare_cached("SELECT snapshot, snapshot_seq FROM docs WHERE id = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((snapshot, after)) = row else {
            return Ok(None);
        };
        let mut bytes = snapshot.unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes FROM changes WHERE doc = ?1 AND seq > ?2 ORDER BY seq")?;
        let mut rows = stmt.query(params![key, after])?;
        while let Some(r) = rows.next()? {
            let b: Vec<u8> = r.get(0)?;
            bytes.extend_from_slice(&b);
        }
        Ok(Some(bytes))
    }

    fn has_change(&mut self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM changes WHERE hash = ?1)")?
            .query_row([hash.as_slice()], |r| r.get(0))?)
    }

    fn begin(&mut self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn append(&mut self, changes: &[NewChange], grid: &str) -> Result<u64> {
        let now = now_ms();
        let mut last_doc = None;
        for c in changes {
            if last_doc != Some(c.doc) {
                self.conn
                    .prepare_cached(
                        "INSERT INTO docs (id, grid, snapshot, snapshot_seq) VALUES (?1, ?2, NULL, 0)
                         ON CONFLICT (id) DO UPDATE SET grid = excluded.grid WHERE docs.grid <> excluded.grid",
                    )?
                    .execute(params![c.doc.as_bytes().as_slice(), grid])?;
            }
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO changes (doc, hash, bytes, device, received_ms, grid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![c.doc.as_bytes().as_slice(), c.hash.as_slice(), c.bytes, c.device.map(|d| d.to_vec()), now, grid])?;
            last_doc = Some(c.doc);
        }
        let Some(doc) = last_doc else { return Ok(0) };
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM changes c JOIN docs d ON d.id = c.doc WHERE c.doc = ?1 AND c.seq > d.snapshot_seq",
            )?
            .query_row([doc.as_bytes().as_slice()], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn put_snapshot(&mut self, id: HouseholdId, snapshot: &[u8]) -> Result<()> {
        let key = id.as_bytes().as_slice();
        let seq: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM changes WHERE doc = ?1")?
            .query_row([key], |r| r.get(0))?;
        self.conn
            .prepare_cached("UPDATE docs SET snapshot = ?2, snapshot_seq = ?3 WHERE id = ?1")?
            .execute(params![key, snapshot, seq])?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn log_since(&mut self, cursor: u64, budget: usize, grids: &[String]) -> Result<LogSlice> {
        let tx = self.conn.transaction()?;
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
            let mut rows = stmt.query(params![cursor as i64, max, grids_json])?;
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
                let Ok(arr) = <[u8; 16]>::try_from(doc.as_slice()) else {
                    continue;
                };
                slice.changes.push(LoggedChange {
                    seq: seq as u64,
                    doc: HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(arr)),
                    hash,
                    bytes,
                });
            }
        }
        tx.commit()?;
        Ok(slice)
    }

    fn max_seq(&mut self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    fn hash_at(&mut self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM changes WHERE seq = ?1")?
            .query_row([seq as i64], |r| r.get(0))
            .optional()?)
    }

    fn doc_count(&mut self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM docs", [], |r| r.get::<_, i64>(0))? as u64)
    }
}
