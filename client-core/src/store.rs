//! [`Store`]: the device's SQLite file.
//!
//! Each household document is stored as a **snapshot** (Automerge `save()`) plus the
//! **changes appended** since, one row per change. An edit is one SQLite transaction that
//! appends the change, marks it pending (not yet acknowledged by a server) and updates the
//! query index, so a committed edit survives the process being killed at any moment (WAL, and
//! by default `synchronous=FULL` so it also survives power loss). When a household has
//! gathered [`StoreOptions::compact_after`] changes, its snapshot is rewritten and the rows
//! folded into it; pending bookkeeping is kept by change hash, so compaction never loses it.
//!
//! Documents are loaded lazily and a bounded number stay in memory: opening a store costs
//! the same for 5 households or 500.

use std::{
    collections::HashMap,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use qiaomen_protocol::{
    ActorId, ChangeHash, DocError,
    calendar::{self, Day},
    conflicts::{self, Conflict, FieldValue, Resolution},
    coverage::{self, CoverageInput, CoveragePolicy},
    doc::{Author, HouseholdDoc},
    ids::{DemandId, GridId, HouseholdId, VisitId},
    policy::{self, Actor, Made, Rights},
    schema::{Demand, DemandStatus, Household, HouseholdStatus, KeyGroup, Visit},
    schema::{TagSpan, VisitOutcome},
    vocab::Term,
    wire::{RejectCode, WholePosition},
    workorder::{self, Deadlines, NewStep, StepKind},
};
use rusqlite::{Connection, OptionalExtension, params};

mod cases;
mod journal;
mod photos;

pub use cases::{FollowUp, NewCase};
pub use journal::{JournalLine, NewJournal};
pub use photos::{NewPhoto, PhotoState, PhotoUpload};

use crate::encryption::StoreKey;
use crate::error::{Result, StoreError};

/// The store file's format version (`PRAGMA user_version`).
const STORE_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    -- One row per household: the document snapshot, and the fields the phone's lists query.
    CREATE TABLE docs (
        id          BLOB PRIMARY KEY,
        snapshot    BLOB NOT NULL,
        grid        TEXT NOT NULL,
        door_number TEXT NOT NULL,
        status      TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX docs_grid ON docs (grid, door_number);
    -- Changes appended since the snapshot, in the order they were stored.
    CREATE TABLE changes (
        doc   BLOB NOT NULL,
        seq   INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (doc, seq)
    ) WITHOUT ROWID;
    -- Changes made on this device that no server has acknowledged yet.
    CREATE TABLE pending (
        doc  BLOB NOT NULL,
        hash BLOB NOT NULL,
        seq  INTEGER NOT NULL,
        PRIMARY KEY (doc, hash)
    ) WITHOUT ROWID;
    -- Key-group tag spans of the household and its members, for the roster.
    CREATE TABLE tag_index (
        doc   BLOB NOT NULL,
        grp   TEXT NOT NULL,
        since TEXT NOT NULL,
        until TEXT
    );
    CREATE INDEX tag_index_doc ON tag_index (doc);
    -- The visit days each household has a visit for.
    CREATE TABLE visit_index (
        doc       BLOB NOT NULL,
        visit_day TEXT NOT NULL,
        PRIMARY KEY (doc, visit_day)
    ) WITHOUT ROWID;
    -- Changes of this device a server refused, with the reason, for the worker to see.
    CREATE TABLE rejected (
        doc   BLOB NOT NULL,
        hash  BLOB NOT NULL,
        code  TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (doc, hash)
    ) WITHOUT ROWID;
    "#,
    // 1 -> 2: households with a visit returned for a fix (their open tasks are computed on read).
    r#"
    CREATE TABLE review_index (doc BLOB PRIMARY KEY) WITHOUT ROWID;
    "#,
    // 2 -> 3: every visit's day and outcome, for the visit-day coverage rule; the rows of
    // households stored before are written on the first opening (`reindex` in meta).
    r#"
    CREATE TABLE visit_outcomes (
        doc       BLOB NOT NULL,
        visit     BLOB NOT NULL,
        visit_day TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        PRIMARY KEY (doc, visit)
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) SELECT 'reindex', x'01' WHERE EXISTS (SELECT 1 FROM docs);
    "#,
    // 3 -> 4: the weekly task lists of the device's grids as the server last sent them, and
    // the tasks marked done on this device (sent = 1 once the server stored the report).
    r#"
    CREATE TABLE task_lists (id TEXT PRIMARY KEY, json BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE task_done (
        list     TEXT NOT NULL,
        item     INTEGER NOT NULL,
        grid     TEXT NOT NULL,
        done_ms  INTEGER NOT NULL,
        evidence TEXT NOT NULL,
        sent     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (list, item, grid)
    ) WITHOUT ROWID;
    "#,
    // 4 -> 5: the demands each household holds, so the grid's work orders are read from the
    // households that have any (the rows of households stored before: `reindex`).
    r#"
    CREATE TABLE demand_index (
        doc    BLOB NOT NULL,
        demand BLOB NOT NULL,
        PRIMARY KEY (doc, demand)
    ) WITHOUT ROWID;
    INSERT OR REPLACE INTO meta (key, value) SELECT 'reindex', x'01' WHERE EXISTS (SELECT 1 FROM docs);
    "#,
    // 5 -> 6: what a refused change held (JSON of `qiaomen_protocol::refused::RefusedContent`),
    // kept when its household leaves the phone.
    r#"
    ALTER TABLE rejected ADD COLUMN content TEXT;
    "#,
    // 6 -> 7: the lists' rows hold the vocabulary's stable codes (`met`, `elderly_alone`)
    // instead of the first release's variant names: rebuilt from the documents (`reindex`).
    r#"
    INSERT OR REPLACE INTO meta (key, value) SELECT 'reindex', x'01' WHERE EXISTS (SELECT 1 FROM docs);
    "#,
    // 7 -> 8: photos (SYNC-v1 §14): their bytes by hash, inside the store (so encrypted with
    // it, and written in the transaction of the change that refers to them), the household
    // and change that attached each, and where its upload stands (`store/photos.rs`).
    r#"
    -- Each photo belongs to a household's record (`doc`, and `change`: the change of this
    -- phone that attached it) or to a task report (`task_list`, `task_item`, `task_grid`),
    -- whose references `task_done.photos` holds (JSON, `ReportPhoto`s).
    CREATE TABLE photos (
        hash      TEXT NOT NULL UNIQUE,
        bytes     BLOB,
        media     TEXT NOT NULL,
        size      INTEGER NOT NULL,
        doc       BLOB,
        change    BLOB,
        task_list TEXT,
        task_item INTEGER,
        task_grid TEXT,
        state     TEXT NOT NULL,
        code      TEXT,
        at_ms     INTEGER NOT NULL,
        CHECK ((doc IS NULL) <> (task_list IS NULL))
    );
    ALTER TABLE task_done ADD COLUMN photos BLOB;
    "#,
    // 8 -> 9: the tracked disputes and hazards each household holds (SYNC-v1 §13.10) and whether
    // each is still open, so the grid's follow-ups are read from the households that have
    // any (the rows of households stored before: `reindex`).
    r#"
    CREATE TABLE case_index (
        doc     BLOB NOT NULL,
        case_id BLOB NOT NULL,
        open    INTEGER NOT NULL,
        PRIMARY KEY (doc, case_id)
    ) WITHOUT ROWID;
    INSERT OR REPLACE INTO meta (key, value) SELECT 'reindex', x'01' WHERE EXISTS (SELECT 1 FROM docs);
    "#,
    // 9 -> 10: events and work logs written on the phone (SYNC-v1 §13.12), kept after they
    // are sent: `pending`, `stored` or `refused` with the server's code; their photos.
    r#"
    CREATE TABLE journal_out (
        id    BLOB PRIMARY KEY,
        json  BLOB NOT NULL,
        state TEXT NOT NULL,
        code  TEXT,
        at_ms INTEGER NOT NULL
    );
    -- A photo may now belong to an entry (`journal`, its id) too: exactly one owner each.
    CREATE TABLE photos_next (
        hash      TEXT NOT NULL UNIQUE,
        bytes     BLOB,
        media     TEXT NOT NULL,
        size      INTEGER NOT NULL,
        doc       BLOB,
        change    BLOB,
        task_list TEXT,
        task_item INTEGER,
        task_grid TEXT,
        state     TEXT NOT NULL,
        code      TEXT,
        at_ms     INTEGER NOT NULL,
        journal   BLOB,
        CHECK ((doc IS NOT NULL) + (task_list IS NOT NULL) + (journal IS NOT NULL) = 1)
    );
    INSERT INTO photos_next (hash, bytes, media, size, doc, change, task_list, task_item,
                             task_grid, state, code, at_ms)
        SELECT hash, bytes, media, size, doc, change, task_list, task_item, task_grid, state,
               code, at_ms
          FROM photos ORDER BY rowid;
    DROP TABLE photos;
    ALTER TABLE photos_next RENAME TO photos;
    "#,
];

/// What enrollment gave this device: kept in the store, so the phone syncs after a restart.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub server_url: String,
    pub user: qiaomen_protocol::ids::UserId,
    pub device: qiaomen_protocol::ids::DeviceId,
    /// The device token (secret: never logged).
    pub token: String,
    /// A CA the server's certificate chains to, trusted beside the system's (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_pem: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server_url", &self.server_url)
            .field("user", &self.user)
            .field("device", &self.device)
            .field("token", &"<secret>")
            .finish()
    }
}

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a committed edit survives power loss. The default.
    Full,
    /// `synchronous=NORMAL`: survives the app being killed, may lose the last commits on
    /// power loss. Faster; for tests and bulk imports.
    Normal,
}

/// Tuning of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Rewrite a household's snapshot once this many changes are appended to it.
    pub compact_after: usize,
    /// How many household documents to keep loaded in memory.
    pub cache_capacity: usize,
    /// The device's UTC offset in seconds (China: +8 h), for "today".
    pub utc_offset_secs: i32,
    /// The key the file is encrypted with (SQLCipher); `None`: a plaintext file. A plaintext
    /// store opened with a key is encrypted on that opening.
    pub key: Option<StoreKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            compact_after: 64,
            cache_capacity: 64,
            utc_offset_secs: 8 * 3600,
            key: None,
        }
    }
}

/// A household in a list, from the store's index (no document is loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HouseholdSummary {
    pub id: HouseholdId,
    pub grid: GridId,
    pub door_number: String,
    pub status: HouseholdStatus,
}

/// One line of a visit-day roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterEntry {
    pub household: HouseholdSummary,
    /// Key groups holding on the visit day; non-empty entries come first in a roster.
    pub key_groups: Vec<KeyGroup>,
    /// Whether a visit is recorded for this visit day.
    pub visited: bool,
}

/// An open work order of a household, for the phone's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkOrderLine {
    pub household: HouseholdId,
    pub demand: DemandId,
    pub door_number: String,
    /// The resident's request (personal: show, never log).
    pub text: String,
    pub status: DemandStatus,
    /// The step the order waits for; `Feedback` and `ReturnVisit` are the grid worker's.
    pub waits_for: StepKind,
    /// The last day the step is on time.
    pub due: Day,
    /// The team it was dispatched to.
    pub unit: Option<String>,
}

/// A task done in a grid, as the server stored it or as this device recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskDone {
    pub grid: String,
    pub item: u32,
    /// Who reported it (the server's record); `None` for a report not sent yet.
    #[serde(default)]
    pub user: Option<String>,
    pub done_ms: i64,
    pub evidence: String,
    /// The report's photos (their bytes by hash: [`Store::photo_bytes`]).
    #[serde(default)]
    pub photos: Vec<qiaomen_protocol::photo::ReportPhoto>,
    /// Stored on the server.
    #[serde(default = "yes")]
    pub on_server: bool,
}

fn yes() -> bool {
    true
}

/// A weekly task list (周清单) of the device's grids.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskList {
    pub id: String,
    pub title: String,
    pub week_start: String,
    pub due: String,
    pub items: Vec<String>,
    pub grids: Vec<String>,
    pub done: Vec<TaskDone>,
}

/// A task report waiting to be sent: (list, item, grid, done ms, evidence).
pub type TaskReport = (String, u32, String, i64, String);

/// A due household of a visit day, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoverageLine {
    pub household: HouseholdSummary,
    pub due: coverage::Due,
}

/// A change of this device that a server refused, with what it held: kept until the app
/// clears it ([`Store::clear_rejected`]), also when the household leaves the phone.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedChange {
    pub household: HouseholdId,
    pub hash: ChangeHash,
    /// The protocol's reason code (`schema_violation`, `forbidden`, `depends_on_rejected`, ...).
    pub code: String,
    /// Why, in words the worker reads ([`RejectCode::reason_zh`]).
    pub reason: String,
    pub at_ms: i64,
    /// Which visit, demand, member or field the change wrote, with what was typed; empty for
    /// refusals recorded before the phone kept content.
    pub content: qiaomen_protocol::refused::RefusedContent,
}

struct Cached {
    doc: HouseholdDoc,
    /// Change rows appended since the snapshot.
    appended: usize,
    last_used: u64,
}

/// The device's store of household documents. See the module docs.
pub struct Store {
    conn: Connection,
    author: Author,
    actor: ActorId,
    options: StoreOptions,
    cache: HashMap<HouseholdId, Cached>,
    tick: u64,
    clock: Box<dyn Fn() -> i64 + Send>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("author", &self.author)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn status_text(s: HouseholdStatus) -> &'static str {
    match s {
        HouseholdStatus::Active => "Active",
        HouseholdStatus::Moved => "Moved",
        HouseholdStatus::Merged => "Merged",
    }
}

fn status_from(s: &str) -> HouseholdStatus {
    match s {
        "Moved" => HouseholdStatus::Moved,
        "Merged" => HouseholdStatus::Merged,
        _ => HouseholdStatus::Active,
    }
}

/// The stable code a list's row holds (`qiaomen_protocol::vocab`); reading also takes the
/// first release's variant names.
fn outcome_text(o: VisitOutcome) -> &'static str {
    o.code()
}

fn outcome_from(s: &str) -> Option<VisitOutcome> {
    VisitOutcome::from_code(s)
}

fn group_text(g: KeyGroup) -> &'static str {
    g.code()
}

fn group_from(s: &str) -> Option<KeyGroup> {
    KeyGroup::from_code(s)
}

/// A JSON value kept in the `meta` table (`None` if absent or unreadable).
fn meta_json<T: serde::de::DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>> {
    let v: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The tables holding a household's own rows by `doc` (its changes and its indexes): what
/// leaves the phone with a household. A new index table belongs here.
const HOUSEHOLD_TABLES: [&str; 7] = [
    "changes",
    "tag_index",
    "visit_index",
    "visit_outcomes",
    "demand_index",
    "review_index",
    "case_index",
];

fn set_meta_json<T: serde::Serialize>(conn: &Connection, key: &str, value: &T) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![
            key,
            serde_json::to_vec(value).expect("plain data serializes")
        ],
    )?;
    Ok(())
}

fn hash_from(bytes: &[u8]) -> Option<ChangeHash> {
    ChangeHash::try_from(bytes).ok()
}

impl Store {
    /// Opens (or creates) the store at `path` for `author` (the signed-in user on this
    /// device). A file that is not a Qiaomen store gives [`StoreError::CorruptStore`].
    pub fn open(path: impl AsRef<Path>, author: Author, options: StoreOptions) -> Result<Store> {
        let conn = crate::encryption::connect(path.as_ref(), options.key.as_ref())?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::CorruptStore);
        }
        conn.execute_batch(match options.durability {
            Durability::Full => "PRAGMA synchronous=FULL;",
            Durability::Normal => "PRAGMA synchronous=NORMAL;",
        })?;
        Self::migrate(&conn)?;
        if let Some(c) = Self::read_credentials(&conn)?
            && (c.user != author.user || c.device != author.device)
        {
            // The file belongs to another enrolled user or device: never mix their edits.
            return Err(StoreError::WrongUser);
        }
        let actor = Self::load_or_make_actor(&conn, author.device)?;
        let mut store = Store {
            conn,
            author,
            actor,
            options,
            cache: HashMap::new(),
            tick: 0,
            clock: Box::new(system_now_ms),
        };
        store.reindex_if_asked()?;
        Ok(store)
    }

    fn migrate(conn: &Connection) -> Result<()> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > STORE_VERSION {
            return Err(StoreError::TooNew {
                found: version,
                supported: STORE_VERSION,
            });
        }
        if version == 0 {
            // A file with tables but no version is not ours.
            let tables: i64 =
                conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables > 0 {
                return Err(StoreError::CorruptStore);
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// A fresh Automerge actor for each opening of the store. A store restored from a backup,
    /// or a document rebuilt after a refusal, can then never reuse a sequence number that an
    /// earlier change of the same actor already used elsewhere. The actors this device used
    /// are remembered, so the server can bind them to the device.
    fn load_or_make_actor(
        conn: &Connection,
        device: qiaomen_protocol::ids::DeviceId,
    ) -> Result<ActorId> {
        let actor = qiaomen_protocol::doc::actor_for(device);
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            params![format!("actor:{actor}"), actor.to_bytes()],
        )?;
        Ok(actor)
    }

    /// Replaces the clock (milliseconds since the Unix epoch). For tests and replays.
    pub fn set_clock(&mut self, clock: impl Fn() -> i64 + Send + 'static) {
        self.clock = Box::new(clock);
    }

    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Today on the device's calendar.
    pub fn today(&self) -> Day {
        Day::from_unix_ms(self.now_ms(), self.options.utc_offset_secs)
            .expect("the clock gives a representable date")
    }

    /// Who edits through this store.
    pub fn author(&self) -> &Author {
        &self.author
    }

    /// This install's Automerge actor.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    // ---- documents in and out of SQLite -------------------------------------------------

    fn read_doc(&self, id: HouseholdId) -> Result<(HouseholdDoc, usize)> {
        let snapshot: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT snapshot FROM docs WHERE id = ?1",
                [id.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        let mut bytes = snapshot.ok_or(StoreError::NotFound { household: id })?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes FROM changes WHERE doc = ?1 ORDER BY seq")?;
        let mut rows = stmt.query([id.as_bytes().as_slice()])?;
        let mut appended = 0;
        while let Some(row) = rows.next()? {
            let change: Vec<u8> = row.get(0)?;
            bytes.extend_from_slice(&change);
            appended += 1;
        }
        let mut doc = HouseholdDoc::load(&bytes).map_err(|e| match e {
            qiaomen_protocol::DocError::Corrupt | qiaomen_protocol::DocError::Poisoned => {
                StoreError::CorruptDocument { household: id }
            }
            other => StoreError::Document(other),
        })?;
        doc.set_actor(self.actor.clone());
        Ok((doc, appended))
    }

    /// The loaded document of `id`, from the cache or from SQLite.
    fn doc_mut(&mut self, id: HouseholdId) -> Result<&mut Cached> {
        self.tick += 1;
        let tick = self.tick;
        if !self.cache.contains_key(&id) {
            let (doc, appended) = self.read_doc(id)?;
            if self.cache.len() >= self.options.cache_capacity.max(1)
                && let Some(oldest) = self
                    .cache
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| *k)
            {
                self.cache.remove(&oldest);
            }
            self.cache.insert(
                id,
                Cached {
                    doc,
                    appended,
                    last_used: tick,
                },
            );
        }
        let cached = self.cache.get_mut(&id).expect("inserted above");
        cached.last_used = tick;
        Ok(cached)
    }

    fn write_outcome(
        tx: &rusqlite::Transaction<'_>,
        doc: HouseholdId,
        visit: VisitId,
        day: Day,
        outcome: VisitOutcome,
    ) -> Result<()> {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO visit_outcomes (doc, visit, visit_day, outcome) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            doc.as_bytes().as_slice(),
            visit.as_bytes().as_slice(),
            day.to_string(),
            outcome_text(outcome)
        ])?;
        Ok(())
    }

    fn write_demand(
        tx: &rusqlite::Transaction<'_>,
        doc: HouseholdId,
        demand: DemandId,
    ) -> Result<()> {
        tx.prepare_cached("INSERT OR IGNORE INTO demand_index (doc, demand) VALUES (?1, ?2)")?
            .execute(params![
                doc.as_bytes().as_slice(),
                demand.as_bytes().as_slice()
            ])?;
        Ok(())
    }

    /// Writes the index rows of every household, once, after a migration asked for it.
    fn reindex_if_asked(&mut self) -> Result<()> {
        let asked = self
            .conn
            .query_row("SELECT 1 FROM meta WHERE key = 'reindex'", [], |_| Ok(()))
            .optional()?
            .is_some();
        if !asked {
            return Ok(());
        }
        let ids: Vec<HouseholdId> = {
            let mut stmt = self.conn.prepare("SELECT id FROM docs")?;
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|r| r.ok().and_then(|b| uuid_from(&b)))
                .collect()
        };
        let tx = self.conn.unchecked_transaction()?;
        for id in ids {
            // A document that does not read keeps its old rows; reading it reports the error.
            if let Ok((h, cases)) = self
                .read_doc(id)
                .and_then(|(d, _)| Ok((d.household()?, cases::rows(&d))))
            {
                Self::write_index(&tx, &h, &cases)?;
            }
        }
        tx.execute("DELETE FROM meta WHERE key = 'reindex'", [])?;
        tx.commit()?;
        Ok(())
    }

    /// Writes the index rows of `household` (inside the caller's transaction).
    fn write_index(
        tx: &rusqlite::Transaction<'_>,
        h: &Household,
        cases: &[cases::CaseRow],
    ) -> Result<()> {
        let id = h.id.as_bytes().as_slice();
        tx.execute(
            "UPDATE docs SET grid = ?2, door_number = ?3, status = ?4 WHERE id = ?1",
            params![id, h.grid.as_str(), h.door_number, status_text(h.status)],
        )?;
        tx.execute("DELETE FROM tag_index WHERE doc = ?1", [id])?;
        tx.execute("DELETE FROM visit_index WHERE doc = ?1", [id])?;
        let mut tag = tx.prepare_cached(
            "INSERT INTO tag_index (doc, grp, since, until) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for t in h
            .tags
            .iter()
            .chain(h.members.values().flat_map(|m| m.tags.iter()))
        {
            tag.execute(params![
                id,
                group_text(t.group),
                t.since.to_string(),
                t.until.map(|u| u.to_string())
            ])?;
        }
        tx.execute("DELETE FROM visit_outcomes WHERE doc = ?1", [id])?;
        let mut visit = tx
            .prepare_cached("INSERT OR IGNORE INTO visit_index (doc, visit_day) VALUES (?1, ?2)")?;
        for v in h.visits.values() {
            visit.execute(params![id, v.visit_day.to_string()])?;
            Self::write_outcome(tx, h.id, v.id, v.visit_day, v.outcome)?;
        }
        tx.execute("DELETE FROM demand_index WHERE doc = ?1", [id])?;
        for d in h.demands.keys() {
            Self::write_demand(tx, h.id, *d)?;
        }
        tx.execute("DELETE FROM review_index WHERE doc = ?1", [id])?;
        if h.reviews
            .values()
            .any(|r| r.decision == qiaomen_protocol::schema::ReviewDecision::Returned)
        {
            tx.execute("INSERT INTO review_index (doc) VALUES (?1)", [id])?;
        }
        tx.execute("DELETE FROM case_index WHERE doc = ?1", [id])?;
        for row in cases {
            cases::write_row(tx, h.id, row)?;
        }
        Ok(())
    }

    /// Visits of this phone's user returned by a supervisor for a fix and not fixed yet, on
    /// every household of this phone: the worker's task list (a colleague's returned visit is
    /// the colleague's task, not this phone's). A task disappears once the visit is changed
    /// (or reviewed again).
    pub fn fix_tasks(&mut self) -> Result<Vec<(HouseholdId, qiaomen_protocol::review::FixTask)>> {
        let ids: Vec<HouseholdId> = {
            let mut stmt = self.conn.prepare_cached("SELECT doc FROM review_index")?;
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|b| b.ok().and_then(|b| uuid_from(&b)))
                .collect()
        };
        let user = self.author.user;
        let mut out = Vec::new();
        for id in ids {
            let doc = &mut self.doc_mut(id)?.doc;
            let household = doc.household()?;
            for task in qiaomen_protocol::review::open_tasks(doc, &household)? {
                if task.worker == user {
                    out.push((id, task));
                }
            }
        }
        out.sort_by_key(|(_, t)| t.at_ms);
        Ok(out)
    }

    /// Appends `change` (made here when `local`) to the household's rows.
    fn append_change(
        tx: &rusqlite::Transaction<'_>,
        id: HouseholdId,
        hash: &ChangeHash,
        bytes: &[u8],
        local: bool,
    ) -> Result<()> {
        let key = id.as_bytes().as_slice();
        let seq: i64 = tx.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM changes WHERE doc = ?1",
            [key],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO changes (doc, seq, bytes) VALUES (?1, ?2, ?3)",
            params![key, seq, bytes],
        )?;
        if local {
            Self::insert_pending(tx, key, hash.as_ref())?;
        }
        Ok(())
    }

    /// Marks a change of this device pending (not yet acknowledged), in upload order.
    fn insert_pending(tx: &rusqlite::Transaction<'_>, doc: &[u8], hash: &[u8]) -> Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO pending (doc, hash, seq)
             VALUES (?1, ?2, (SELECT coalesce(max(seq), 0) + 1 FROM pending))",
            params![doc, hash],
        )?;
        Ok(())
    }

    /// Runs `edit` on the household's document and stores the change it makes, durably,
    /// together with the index update `index` asks for. On any failure the cached document is
    /// dropped, so memory never runs ahead of the disk.
    fn commit_edit<T>(
        &mut self,
        id: HouseholdId,
        edit: impl FnOnce(
            &mut HouseholdDoc,
            &Author,
            i64,
        ) -> qiaomen_protocol::Result<(T, Option<ChangeHash>)>,
        index: IndexUpdate,
    ) -> Result<T> {
        let now = self.now_ms();
        let author = self.author;
        let compact_after = self.options.compact_after;
        let rights = self.rights()?;
        let cached = self.doc_mut(id)?;
        let before = cached.doc.heads();
        // What the edit writes is recorded as it is written, so the checks below read the
        // change itself rather than a diff of the whole household before and after it.
        cached.doc.record_edits();
        let edited = edit(&mut cached.doc, &author, now);
        let Ok((out, Some(hash))) = edited else {
            cached.doc.stop_recording();
            return Ok(edited?.0);
        };
        // The server's own checks of what the change wrote (field rules, §13.8), of its size
        // (§12) and of who may make it (§6.4), before anything is stored: an edit the server
        // would refuse fails here.
        let checked = cached
            .doc
            .validate_since(&before, id)
            .and_then(|touched| cached.doc.check_size(&hash).map(|bytes| (touched, bytes)))
            .map_err(StoreError::from)
            .and_then(|(touched, bytes)| {
                Self::check_rights(
                    rights.as_ref(),
                    author.user,
                    &cached.doc,
                    &before,
                    &touched,
                    now,
                )
                .map(|()| bytes)
            });
        cached.doc.stop_recording();
        let bytes = match checked {
            Ok(bytes) => bytes.expect("the change was just made"),
            Err(e) => {
                self.cache.remove(&id);
                return Err(e);
            }
        };
        let household = match &index {
            IndexUpdate::Full => match cached.doc.household() {
                Ok(h) => Some((h, cases::rows(&cached.doc))),
                Err(e) => {
                    // The change is in memory only: forget it rather than build on it.
                    self.cache.remove(&id);
                    return Err(e.into());
                }
            },
            _ => None,
        };
        let compact = cached.appended + 1 >= compact_after;
        let snapshot = compact.then(|| cached.doc.save());
        let result = (|| -> Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            Self::append_change(&tx, id, &hash, &bytes, true)?;
            match (&index, &household) {
                (IndexUpdate::Full, Some((h, cases))) => Self::write_index(&tx, h, cases)?,
                (IndexUpdate::Case(row, demand), _) => {
                    cases::write_row(&tx, id, row)?;
                    if let Some(d) = demand {
                        Self::write_demand(&tx, id, *d)?;
                    }
                }
                (IndexUpdate::Photo(photo), _) => {
                    photos::keep_attached(&tx, id, &hash, photo, now)?;
                }
                (IndexUpdate::Visit(visit, day, outcome, demands), _) => {
                    tx.execute(
                        "INSERT OR IGNORE INTO visit_index (doc, visit_day) VALUES (?1, ?2)",
                        params![id.as_bytes().as_slice(), day.to_string()],
                    )?;
                    Self::write_outcome(&tx, id, *visit, *day, *outcome)?;
                    for d in demands {
                        Self::write_demand(&tx, id, *d)?;
                    }
                }
                _ => {}
            }
            if let Some(snapshot) = &snapshot {
                Self::write_snapshot(&tx, id, snapshot)?;
            }
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                let cached = self.cache.get_mut(&id).expect("still cached");
                cached.appended = if compact { 0 } else { cached.appended + 1 };
                Ok(out)
            }
            Err(e) => {
                self.cache.remove(&id);
                Err(e)
            }
        }
    }

    fn write_snapshot(
        tx: &rusqlite::Transaction<'_>,
        id: HouseholdId,
        snapshot: &[u8],
    ) -> Result<()> {
        let key = id.as_bytes().as_slice();
        tx.execute(
            "UPDATE docs SET snapshot = ?2 WHERE id = ?1",
            params![key, snapshot],
        )?;
        tx.execute("DELETE FROM changes WHERE doc = ?1", [key])?;
        Ok(())
    }

    // ---- edits ----------------------------------------------------------------------------

    /// Creates a household (its document's first change) and returns its id.
    pub fn create_household(&mut self, household: &Household) -> Result<HouseholdId> {
        let id = household.id;
        if self.contains(id)? {
            return Err(StoreError::AlreadyExists { household: id });
        }
        let mut h = household.clone();
        h.schema_version = qiaomen_protocol::schema::SCHEMA_VERSION;
        let now = self.now_ms();
        let mut doc = HouseholdDoc::create(&h, &self.author, now)?;
        // A household only in a grid its user may write (the server's rule, §6.4).
        let touched = doc.validate_since(&[], id)?;
        Self::check_rights(
            self.rights()?.as_ref(),
            self.author.user,
            &doc,
            &[],
            &touched,
            now,
        )?;
        doc.set_actor(self.actor.clone());
        let hash = doc.heads()[0];
        let snapshot = doc.save();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO docs (id, snapshot, grid, door_number, status) VALUES (?1, ?2, '', '', '')",
            params![id.as_bytes().as_slice(), snapshot],
        )?;
        Self::insert_pending(&tx, id.as_bytes().as_slice(), hash.as_ref())?;
        Self::write_index(&tx, &h, &cases::rows(&doc))?;
        tx.commit()?;
        Ok(id)
    }

    /// Edits the household's record: `f` changes it, and only the differences are stored, as
    /// one change. Returns whether anything changed.
    pub fn edit_household(
        &mut self,
        id: HouseholdId,
        f: impl FnOnce(&mut Household) -> qiaomen_protocol::Result<()>,
    ) -> Result<bool> {
        self.commit_edit(
            id,
            |doc, a, now| doc.edit(a, now, f).map(|((), h)| (h.is_some(), h)),
            IndexUpdate::Full,
        )
    }

    /// Records a visit and the demands raised on it, as one change.
    pub fn record_visit(
        &mut self,
        id: HouseholdId,
        visit: &Visit,
        demands: &[Demand],
    ) -> Result<()> {
        // A visit day that has not come yet, or (with the rights the server sent) of a cycle
        // before the worker held the grid, is refused here as on the server (§13.2).
        use qiaomen_protocol::validate::{Field, FieldError, Rule};
        qiaomen_protocol::validate::visit_day(visit.visit_day, self.now_ms())
            .map_err(|e| StoreError::from(DocError::Field(e)))?;
        if visit.worker == self.author.user
            && let Some(rights) = self.rights()?
            && !rights.is_supervisor_now()
        {
            let grid = self.doc_mut(id)?.doc.grid();
            if !rights.held_for_cycle(&grid, visit.visit_day) {
                return Err(StoreError::from(DocError::Field(FieldError {
                    field: Field::VisitDay,
                    rule: Rule::BeforeAssignment,
                })));
            }
        }
        self.commit_edit(
            id,
            |doc, a, now| doc.add_visit(a, now, visit, demands).map(|h| ((), Some(h))),
            IndexUpdate::Visit(
                visit.id,
                visit.visit_day,
                visit.outcome,
                demands.iter().map(|d| d.id).collect(),
            ),
        )
    }

    /// Edits a visit's note as text (see [`HouseholdDoc::splice_note`]).
    pub fn splice_note(
        &mut self,
        id: HouseholdId,
        visit: VisitId,
        pos: usize,
        delete: usize,
        insert: &str,
    ) -> Result<()> {
        self.commit_edit(
            id,
            |doc, a, now| {
                doc.splice_note(a, now, visit, pos, delete, insert)
                    .map(|h| ((), Some(h)))
            },
            IndexUpdate::None,
        )
    }

    /// Replaces a visit's whole note (how a worker fixes a visit returned for a fix).
    pub fn replace_note(&mut self, id: HouseholdId, visit: VisitId, text: &str) -> Result<()> {
        self.commit_edit(
            id,
            |doc, a, now| doc.replace_note(a, now, visit, text).map(|h| ((), Some(h))),
            IndexUpdate::None,
        )
    }

    /// Takes a step of a demand's work order (a return visit, a feedback, ...), appending it
    /// to the history. Refused here if it does not follow from the order's state, and, once
    /// the server has sent this user's rights, if it is not one their role may take
    /// ([`workorder::check_steps`] with the user's [`workorder::Party`] for the household's
    /// grid, as the server judges it): [`StoreError::NotAllowed`] naming `demand_step`.
    pub fn demand_step(
        &mut self,
        id: HouseholdId,
        demand: DemandId,
        step: &NewStep<'_>,
    ) -> Result<()> {
        let (rules, _) = self.workflow()?;
        self.commit_edit(
            id,
            |doc, a, now| {
                doc.demand_step(a, now, demand, step, &rules)
                    .map(|h| ((), Some(h)))
            },
            IndexUpdate::None,
        )
    }

    /// The open work orders of the households of `grid`, with the step each waits for and its
    /// due day, those waiting for the grid (feedback, return visit) first, then by due day.
    /// Works offline: the orders are replayed from the households' histories.
    pub fn work_orders(&mut self, grid: &GridId) -> Result<Vec<WorkOrderLine>> {
        let (rules, _) = self.workflow()?;
        // Only the households that hold a demand are read.
        let ids: Vec<HouseholdId> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT d.id FROM docs d JOIN demand_index i ON i.doc = d.id
                  WHERE d.grid = ?1 ORDER BY d.id",
            )?;
            stmt.query_map([grid.as_str()], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|r| r.ok().and_then(|b| uuid_from(&b)))
                .collect()
        };
        let mut lines = Vec::new();
        for id in ids {
            let h = self.household(id)?;
            for d in h.demands.values() {
                let order = workorder::replay(d, &rules);
                let Some(step) = order.open_step() else {
                    continue;
                };
                lines.push(WorkOrderLine {
                    household: id,
                    demand: d.id,
                    door_number: h.door_number.clone(),
                    text: d.text.clone(),
                    status: order.status,
                    waits_for: step.kind,
                    due: step.due,
                    unit: order.unit.clone(),
                });
            }
        }
        let for_grid =
            |l: &WorkOrderLine| !matches!(l.waits_for, StepKind::Feedback | StepKind::ReturnVisit);
        lines.sort_by_key(|l| (for_grid(l), l.due, l.demand));
        Ok(lines)
    }

    /// Settles a conflicting field (see [`conflicts::resolve`]).
    pub fn resolve_conflict(
        &mut self,
        id: HouseholdId,
        path: &[String],
        resolution: Resolution,
    ) -> Result<()> {
        self.commit_edit(
            id,
            |doc, a, now| conflicts::resolve(doc, a, now, path, resolution).map(|h| ((), Some(h))),
            IndexUpdate::Full,
        )
    }

    // ---- reads ----------------------------------------------------------------------------

    /// The household's current record.
    pub fn household(&mut self, id: HouseholdId) -> Result<Household> {
        Ok(self.doc_mut(id)?.doc.household()?)
    }

    /// The household's document (for sync and for version-pinned reads).
    pub fn document(&mut self, id: HouseholdId) -> Result<&mut HouseholdDoc> {
        Ok(&mut self.doc_mut(id)?.doc)
    }

    /// Fields of the household holding concurrent values.
    pub fn conflicts(&mut self, id: HouseholdId) -> Result<Vec<Conflict>> {
        Ok(conflicts::conflicts(&mut self.doc_mut(id)?.doc)?)
    }

    /// Who set a field, when, from which device.
    pub fn provenance(&mut self, id: HouseholdId, path: &[String]) -> Result<Vec<FieldValue>> {
        Ok(conflicts::provenance(&mut self.doc_mut(id)?.doc, path)?)
    }

    /// Every household id in the store.
    pub fn household_ids(&self) -> Result<Vec<HouseholdId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM docs ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|b| b.ok().and_then(|b| uuid_from(&b)))
            .collect();
        Ok(ids)
    }

    /// Households of a grid, by door number.
    pub fn households_in_grid(&self, grid: &GridId) -> Result<Vec<HouseholdSummary>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, grid, door_number, status FROM docs WHERE grid = ?1 ORDER BY door_number, id")?;
        let rows = stmt.query_map([grid.as_str()], summary_row)?;
        rows.map(|r| r.map_err(StoreError::from))
            .filter_map(|r| r.transpose())
            .collect()
    }

    /// The roster of `grid` for `visit_day`: its active households, key-group households
    /// first (then by door number), each with the key groups holding that day and whether it
    /// has been visited for that visit day.
    pub fn roster(&self, grid: &GridId, visit_day: Day) -> Result<Vec<RosterEntry>> {
        let day = visit_day.to_string();
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.id, d.grid, d.door_number, d.status,
                    (SELECT group_concat(DISTINCT t.grp) FROM tag_index t
                      WHERE t.doc = d.id AND t.since <= ?2 AND (t.until IS NULL OR t.until >= ?2)) AS groups,
                    EXISTS (SELECT 1 FROM visit_index v WHERE v.doc = d.id AND v.visit_day = ?2) AS visited
               FROM docs d
              WHERE d.grid = ?1 AND d.status = 'Active'
              ORDER BY groups IS NULL, d.door_number, d.id",
        )?;
        let rows = stmt.query_map(params![grid.as_str(), day], |r| {
            let summary = summary_row(r)?;
            let groups: Option<String> = r.get(4)?;
            let visited: bool = r.get(5)?;
            Ok(summary.map(|household| {
                let mut key_groups: Vec<KeyGroup> = groups
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(group_from)
                    .collect();
                key_groups.sort();
                RosterEntry {
                    household,
                    key_groups,
                    visited,
                }
            }))
        })?;
        rows.map(|r| r.map_err(StoreError::from))
            .filter_map(|r| r.transpose())
            .collect()
    }

    /// The roster entries of the current cycle (the one containing `today`) that have no visit
    /// yet, key-group households first.
    pub fn not_visited(&self, grid: &GridId, today: Day) -> Result<Vec<RosterEntry>> {
        Ok(self
            .roster(grid, calendar::cycle_of(today))?
            .into_iter()
            .filter(|e| !e.visited)
            .collect())
    }

    /// The visit-day coverage of `grid` for the cycle of `visit_day`, as of `today`, by the
    /// same rule as the server's report ([`coverage::coverage`]): every due household with
    /// its state (visited / not met and why / pending / missed) and catch-up deadline,
    /// key-group households first, then those still to visit. From the index: no document
    /// is loaded.
    pub fn coverage(
        &self,
        grid: &GridId,
        visit_day: Day,
        today: Day,
        policy: &CoveragePolicy,
    ) -> Result<Vec<CoverageLine>> {
        let day = calendar::cycle_of(visit_day);
        let households = self.households_in_grid(grid)?;
        let mut tags = self
            .conn
            .prepare_cached("SELECT grp, since, until FROM tag_index WHERE doc = ?1")?;
        let mut visits = self
            .conn
            .prepare_cached("SELECT visit_day, outcome FROM visit_outcomes WHERE doc = ?1")?;
        let mut lines = Vec::new();
        for h in households {
            let key = h.id.as_bytes().as_slice();
            let input = CoverageInput {
                status: h.status,
                tags: tags
                    .query_map([key], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    })?
                    .filter_map(|r| r.ok())
                    .filter_map(|(g, since, until)| {
                        Some(TagSpan {
                            group: group_from(&g)?,
                            since: since.parse().ok()?,
                            until: match until {
                                Some(u) => Some(u.parse().ok()?),
                                None => None,
                            },
                        })
                    })
                    .collect(),
                visits: visits
                    .query_map([key], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })?
                    .filter_map(|r| r.ok())
                    .filter_map(|(d, o)| Some((d.parse().ok()?, outcome_from(&o)?)))
                    .collect(),
                // The phone lists every household it holds; the server's figures count a
                // household from its registration (SYNC-v1 §10).
                registered: None,
            };
            if let Some(due) = coverage::coverage(&input, day, today, policy) {
                lines.push(CoverageLine { household: h, due });
            }
        }
        lines.sort_by(|a, b| {
            let key = |l: &CoverageLine| {
                (
                    l.due.key_groups.is_empty(),
                    l.due.state == coverage::CoverageState::Visited,
                    l.household.door_number.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(lines)
    }

    /// The server's workflow settings as of the last sync (the defaults before the first):
    /// what deadlines and the visit-day coverage are computed with on the phone.
    pub fn workflow(&self) -> Result<(Deadlines, CoveragePolicy)> {
        Ok(meta_json(&self.conn, "workflow")?.unwrap_or_default())
    }

    pub fn set_workflow(&self, deadlines: &Deadlines, coverage: &CoveragePolicy) -> Result<()> {
        set_meta_json(&self.conn, "workflow", &(deadlines, coverage))
    }

    /// The server's digest (`t`) of the settings and task lists this store holds.
    pub fn extras_digest(&self) -> Result<Option<u64>> {
        meta_json(&self.conn, "extras_digest")
    }

    pub fn set_extras_digest(&self, digest: u64) -> Result<()> {
        set_meta_json(&self.conn, "extras_digest", &digest)
    }

    /// The feature bits (`f`) of the server's last answer: the phone packs its uploads only
    /// when they include [`qiaomen_protocol::wire::FEATURE_PACKED`].
    pub fn server_features(&self) -> Result<u32> {
        Ok(meta_json(&self.conn, "server_features")?.unwrap_or(0))
    }

    pub fn set_server_features(&self, features: u32) -> Result<()> {
        set_meta_json(&self.conn, "server_features", &features)
    }

    /// The weekly task lists of the device's grids as of the last sync, with the tasks done
    /// (the server's reports, and this device's not sent yet). Works offline.
    pub fn task_lists(&self) -> Result<Vec<TaskList>> {
        let mut lists: Vec<TaskList> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT json FROM task_lists ORDER BY id DESC")?;
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|r| r.ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        };
        for (list, item, grid, done_ms, evidence) in self.task_reports(false)? {
            if let Some(l) = lists.iter_mut().find(|l| l.id == list)
                && !l.done.iter().any(|d| d.item == item && d.grid == grid)
            {
                let photos = self.task_report_photos(&list, item, &grid)?;
                l.done.push(TaskDone {
                    grid,
                    item,
                    user: None,
                    done_ms,
                    evidence,
                    photos,
                    on_server: false,
                });
            }
        }
        lists.sort_by(|a, b| (&b.week_start, &b.id).cmp(&(&a.week_start, &a.id)));
        Ok(lists)
    }

    /// Marks task `item` of list `list` done in `grid`, with `evidence`, offline; sent at the
    /// next sync. Marking it again keeps the first report.
    pub fn complete_task(
        &mut self,
        list: &str,
        item: u32,
        grid: &str,
        evidence: &str,
    ) -> Result<()> {
        self.complete_task_with_photos(list, item, grid, evidence, &[])
    }

    /// Whether the phone's task lists hold task `item` of `list` for `grid`.
    fn task_known(&self, list: &str, item: u32, grid: &str) -> Result<()> {
        let known = self.task_lists()?.into_iter().any(|l| {
            l.id == list && (item as usize) < l.items.len() && l.grids.iter().any(|g| g == grid)
        });
        if !known {
            return Err(StoreError::Document(DocError::InvalidEdit(
                "no such task for this grid on the phone".into(),
            )));
        }
        Ok(())
    }

    /// Task reports of this device: those not sent yet (`sent` false) or sent.
    pub fn task_reports(&self, sent: bool) -> Result<Vec<TaskReport>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT list, item, grid, done_ms, evidence FROM task_done WHERE sent = ?1 ORDER BY done_ms",
        )?;
        Ok(stmt
            .query_map([sent], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The server stored (or will never store) this report: stop sending it.
    pub fn mark_task_report_sent(&self, list: &str, item: u32, grid: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE task_done SET sent = 1 WHERE list = ?1 AND item = ?2 AND grid = ?3",
            params![list, item, grid],
        )?;
        Ok(())
    }

    /// Replaces the cached task lists with the server's.
    pub fn set_task_lists(&self, lists: &[TaskList]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM task_lists", [])?;
        for l in lists {
            tx.execute(
                "INSERT INTO task_lists (id, json) VALUES (?1, ?2)",
                params![
                    l.id,
                    serde_json::to_vec(l).map_err(|_| StoreError::CorruptStore)?
                ],
            )?;
        }
        // Sent reports the server's lists no longer mention are history.
        tx.execute(
            "DELETE FROM task_done WHERE sent = 1 AND list NOT IN (SELECT id FROM task_lists)",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// How many changes made on this device no server has acknowledged yet.
    pub fn pending_change_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM pending", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    // ---- changes from elsewhere -----------------------------------------------------------

    /// Stores changes of an existing household received from a server or another replica.
    /// They are checked first; bad bytes are refused and nothing is stored. Returns how many
    /// were new.
    ///
    /// What came from the server comes again if it is lost, so these commits do not wait for
    /// the disk (`synchronous=NORMAL`, for this call): the sync's next commit that does (the
    /// cursor's, after the page) makes them durable with it, as the log is one file synced
    /// in order. A page of a first sync over 2G is hundreds of such commits; the app's own
    /// edits, taking turns with them, then wait for none of their fsyncs.
    pub fn apply_remote_changes(&mut self, id: HouseholdId, changes: &[Vec<u8>]) -> Result<usize> {
        self.without_waiting_for_disk(|s| s.apply_remote_changes_now(id, changes))
    }

    /// Runs `f` with `synchronous=NORMAL`: for what came from a server, which comes again if
    /// it is lost (see [`Store::apply_remote_changes`]).
    fn without_waiting_for_disk<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let relax = self.options.durability == Durability::Full;
        if relax {
            self.conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        }
        let out = f(self);
        if relax {
            self.conn.execute_batch("PRAGMA synchronous=FULL;")?;
        }
        out
    }

    /// The changes of household `id` in a response as Automerge chunks: each packed one
    /// (SYNC-v1 §4.4.1; `table` and `base_ms` are the response's) rebuilt, every dependency
    /// found by its prefix among the changes before it in `changes`, then among the
    /// household's heads here, then its whole history. `None` when one does not rebuild
    /// exactly (then the phone asks for the page again without packed changes); nothing is
    /// stored.
    pub fn rebuild_packed<T: AsRef<[u8]>>(
        &mut self,
        id: HouseholdId,
        changes: Vec<Vec<u8>>,
        table: &[T],
        base_ms: i64,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        use qiaomen_protocol::pack;
        let held = self.contains(id)?;
        let mut earlier: Vec<ChangeHash> = Vec::new();
        let mut out = Vec::with_capacity(changes.len());
        for bytes in changes {
            if bytes.first() != Some(&pack::PACKED_FORMAT) {
                // A chunk: what a later packed change may build on. One that does not read
                // is refused with the rest when the changes are applied.
                if let Ok(mut c) = qiaomen_protocol::doc::decode_changes([bytes.as_slice()]) {
                    earlier.extend(c.pop().map(|c| c.hash()));
                }
                out.push(bytes);
                continue;
            }
            let Ok(unpacked) = pack::unpack(&bytes, table, base_ms) else {
                return Ok(None);
            };
            let mut rebuilt = None;
            for history in [false, true] {
                let mut options = Vec::new();
                for prefix in unpacked.dep_prefixes() {
                    let mut found: Vec<ChangeHash> = earlier
                        .iter()
                        .filter(|h| h.as_ref().starts_with(prefix))
                        .copied()
                        .collect();
                    if held {
                        for h in self.doc_mut(id)?.doc.hashes_with_prefix(prefix, history) {
                            if !found.contains(&h) {
                                found.push(h);
                            }
                        }
                    }
                    options.push(found);
                }
                if let Ok(change) = unpacked.clone().build_among(&options) {
                    rebuilt = Some(change);
                    break;
                }
                if !held {
                    break;
                }
            }
            let Some(change) = rebuilt else {
                return Ok(None);
            };
            earlier.push(change.hash());
            out.push(change.raw_bytes().to_vec());
        }
        Ok(Some(out))
    }

    fn apply_remote_changes_now(&mut self, id: HouseholdId, changes: &[Vec<u8>]) -> Result<usize> {
        let decoded = qiaomen_protocol::doc::decode_changes(changes.iter().map(|c| c.as_slice()))?;
        if !self.contains(id)? {
            // A household new to this device: its changes arrive from its first one.
            let bytes: Vec<u8> = changes.concat();
            let imported = self.import_document(&bytes)?;
            if imported != id {
                return Err(StoreError::Document(
                    qiaomen_protocol::DocError::InvalidEdit(
                        "the changes belong to another household".into(),
                    ),
                ));
            }
            return Ok(changes.len());
        }
        let cached = self.doc_mut(id)?;
        let fresh: Vec<usize> = (0..changes.len())
            .filter(|i| !cached.doc.has_change(&decoded[*i].hash()))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let applied = cached
            .doc
            .apply_changes(fresh.iter().map(|i| changes[*i].as_slice()));
        let household = applied.and_then(|_| cached.doc.household());
        let case_rows = cases::rows(&cached.doc);
        let household = match household {
            Ok(h) => h,
            Err(e) => {
                self.cache.remove(&id);
                return Err(e.into());
            }
        };
        let result = (|| -> Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            for i in &fresh {
                Self::append_change(&tx, id, &decoded[*i].hash(), &changes[*i], false)?;
            }
            Self::write_index(&tx, &household, &case_rows)?;
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                let cached = self.cache.get_mut(&id).expect("still cached");
                cached.appended += fresh.len();
                Ok(fresh.len())
            }
            Err(e) => {
                self.cache.remove(&id);
                Err(e)
            }
        }
    }

    /// Whether the store holds household `id`.
    pub fn contains(&self, id: HouseholdId) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM docs WHERE id = ?1)",
            [id.as_bytes().as_slice()],
            |r| r.get(0),
        )?)
    }

    /// Stores a whole household document received from elsewhere (new to this device), or
    /// merges it into the copy already here.
    pub fn import_document(&mut self, bytes: &[u8]) -> Result<HouseholdId> {
        self.import(bytes, None).map(|(id, _)| id)
    }

    /// Stores household `id` received whole from a server (a first sync, SYNC-v1 §7.3.1):
    /// new to this device, or merged into the copy here. Checked first: a document that does
    /// not load, or is another household, is refused and nothing is stored. Like
    /// [`Store::apply_remote_changes`], it does not wait for the disk. Returns how many
    /// changes were new.
    pub fn apply_remote_document(&mut self, id: HouseholdId, bytes: &[u8]) -> Result<usize> {
        let read = ReadDocument::read(bytes, Some(id))?;
        self.apply_read_document(read)
    }

    /// [`Store::apply_remote_document`] for a document read beforehand
    /// ([`ReadDocument::read`], which needs no store): a sync reads each household of a
    /// first sync before it takes the store, so the app waits only for the writing.
    pub fn apply_read_document(&mut self, read: ReadDocument) -> Result<usize> {
        self.without_waiting_for_disk(|s| s.import_read(read).map(|(_, n)| n))
    }

    /// [`Store::import_document`], refusing a document of another household than `expect`;
    /// with how many of its changes were new here.
    fn import(
        &mut self,
        bytes: &[u8],
        expect: Option<HouseholdId>,
    ) -> Result<(HouseholdId, usize)> {
        let read = ReadDocument::read(bytes, expect)?;
        self.import_read(read)
    }

    fn import_read(&mut self, read: ReadDocument) -> Result<(HouseholdId, usize)> {
        let ReadDocument {
            mut doc,
            household,
            snapshot,
        } = read;
        let id = household.id;
        if self.contains(id)? {
            let changes = doc.changes_since(&[]);
            let fresh = self.apply_remote_changes(id, &changes)?;
            return Ok((id, fresh));
        }
        let count = doc.change_count();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO docs (id, snapshot, grid, door_number, status) VALUES (?1, ?2, '', '', '')",
            params![id.as_bytes().as_slice(), snapshot],
        )?;
        Self::write_index(&tx, &household, &cases::rows(&doc))?;
        tx.commit()?;
        Ok((id, count))
    }

    /// The changes of `id` made here that no server has acknowledged, oldest first.
    pub fn pending_changes(&mut self, id: HouseholdId) -> Result<Vec<(ChangeHash, Vec<u8>)>> {
        let hashes: Vec<ChangeHash> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT hash FROM pending WHERE doc = ?1 ORDER BY seq")?;
            stmt.query_map([id.as_bytes().as_slice()], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|b| b.ok().and_then(|b| hash_from(&b)))
                .collect()
        };
        let doc = &mut self.doc_mut(id)?.doc;
        Ok(hashes
            .into_iter()
            .filter_map(|h| doc.change_bytes(&h).map(|b| (h, b)))
            .collect())
    }

    /// Records that a server has durably stored these changes: they are no longer pending.
    pub fn mark_acknowledged(&mut self, id: HouseholdId, hashes: &[ChangeHash]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM pending WHERE doc = ?1 AND hash = ?2")?;
            let mut acked = 0u64;
            for h in hashes {
                acked += stmt.execute(params![id.as_bytes().as_slice(), h.as_ref()])? as u64;
            }
            let total = Self::acknowledged_in(&tx)? + acked;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('acknowledged', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [total.to_be_bytes().to_vec()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn acknowledged_in(conn: &Connection) -> Result<u64> {
        let v: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'acknowledged'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// How many changes made on this device servers have acknowledged as durably stored,
    /// over the store's life.
    pub fn acknowledged_change_count(&self) -> Result<u64> {
        Self::acknowledged_in(&self.conn)
    }

    /// Folds every household's appended changes into its snapshot.
    pub fn compact_all(&mut self) -> Result<()> {
        for id in self.household_ids()? {
            let snapshot = self.doc_mut(id)?.doc.save();
            let tx = self.conn.unchecked_transaction()?;
            Self::write_snapshot(&tx, id, &snapshot)?;
            tx.commit()?;
            if let Some(c) = self.cache.get_mut(&id) {
                c.appended = 0;
            }
        }
        Ok(())
    }

    // ---- sync bookkeeping -----------------------------------------------------------------

    /// The server log position this device has received everything up to.
    pub fn sync_cursor(&self) -> Result<Option<u64>> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Stores the cursor (after the changes it covers are stored).
    pub fn set_sync_cursor(&self, cursor: Option<u64>) -> Result<()> {
        match cursor {
            Some(c) => self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('cursor', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [c.to_be_bytes().to_vec()],
            )?,
            None => self.conn.execute("DELETE FROM meta WHERE key = 'cursor'", [])?,
        };
        Ok(())
    }

    /// The check value of the cursor (the hash of the server's log entry at it).
    pub fn sync_cursor_check(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'cursor_check'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Where a first sync by whole documents stands (SYNC-v1 §7.3.1), while it goes on.
    pub fn whole_position(&self) -> Result<Option<WholePosition>> {
        meta_json(&self.conn, "whole")
    }

    /// Keeps where a first sync by whole documents stands (after the page's households are
    /// stored): the phone has no cursor until the last page gives one.
    pub fn set_whole_position(&self, position: &WholePosition) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM meta WHERE key IN ('cursor', 'cursor_check')",
            [],
        )?;
        set_meta_json(&tx, "whole", position)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores the cursor and its check value together (after the changes they cover). A
    /// first sync by whole documents under way ends here (a cursor, or none to start over).
    pub fn set_sync_position(&self, cursor: Option<u64>, check: Option<&[u8]>) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM meta WHERE key = 'whole'", [])?;
        match check {
            Some(k) => tx.execute(
                "INSERT INTO meta (key, value) VALUES ('cursor_check', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [k],
            )?,
            None => tx.execute("DELETE FROM meta WHERE key = 'cursor_check'", [])?,
        };
        match cursor {
            Some(c) => tx.execute(
                "INSERT INTO meta (key, value) VALUES ('cursor', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [c.to_be_bytes().to_vec()],
            )?,
            None => tx.execute("DELETE FROM meta WHERE key = 'cursor'", [])?,
        };
        tx.commit()?;
        Ok(())
    }

    /// The enrollment of this store: the server, the user and device, and the device token.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        Self::read_credentials(&self.conn)
    }

    fn read_credentials(conn: &Connection) -> Result<Option<Credentials>> {
        meta_json(conn, "credentials")
    }

    /// Stores the enrollment (or a rotated token).
    pub fn set_credentials(&self, credentials: &Credentials) -> Result<()> {
        if credentials.user != self.author.user || credentials.device != self.author.device {
            return Err(StoreError::WrongUser);
        }
        set_meta_json(&self.conn, "credentials", credentials)
    }

    /// Opens a store that was enrolled ([`crate::sync::enroll`]), as its user and device.
    pub fn open_enrolled(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref();
        let credentials = {
            let conn = crate::encryption::connect(path, options.key.as_ref())?;
            Self::migrate(&conn)?;
            Self::read_credentials(&conn)?
        };
        let c = credentials.ok_or(StoreError::NotEnrolled)?;
        Self::open(
            path,
            Author {
                user: c.user,
                device: c.device,
            },
            options,
        )
    }

    /// The random id of this install, made once and kept: an enrollment retried after a lost
    /// answer names the same install, so the code is not spent twice.
    pub fn install_id_at(path: impl AsRef<Path>, key: Option<&StoreKey>) -> Result<String> {
        let conn = crate::encryption::connect(path.as_ref(), key)?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        Self::migrate(&conn)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('install_id', ?1)",
            [qiaomen_protocol::ids::DeviceId::new()
                .to_string()
                .into_bytes()],
        )?;
        let v: Vec<u8> =
            conn.query_row("SELECT value FROM meta WHERE key = 'install_id'", [], |r| {
                r.get(0)
            })?;
        String::from_utf8(v).map_err(|_| StoreError::CorruptStore)
    }

    /// The grids the server last said this device may read.
    pub fn sync_scope(&self) -> Result<Option<Vec<String>>> {
        meta_json(&self.conn, "scope")
    }

    pub fn set_sync_scope(&self, grids: &[String]) -> Result<()> {
        set_meta_json(&self.conn, "scope", &grids)
    }

    /// What the server last said this device's user may do (the sync response's `u`), if it
    /// said: the store runs the server's rules with it before it commits an edit. `None`
    /// (an older server, or no sync yet): the phone refuses nothing the rules would.
    pub fn rights(&self) -> Result<Option<Rights>> {
        meta_json(&self.conn, "rights")
    }

    /// Keeps `rights` (`None`: forgets them; the server sends none).
    pub fn set_rights(&self, rights: Option<&Rights>) -> Result<()> {
        match rights {
            Some(r) => set_meta_json(&self.conn, "rights", r),
            None => {
                self.conn
                    .execute("DELETE FROM meta WHERE key = 'rights'", [])?;
                Ok(())
            }
        }
    }

    /// The server's rules (SYNC-v1 §6.4, [`policy::check_effect`]) on what the change just
    /// made on `doc` on top of `before` touched, with the rights the server last sent. Nothing
    /// is refused while the phone holds no rights.
    fn check_rights(
        rights: Option<&Rights>,
        user: qiaomen_protocol::ids::UserId,
        doc: &HouseholdDoc,
        before: &[ChangeHash],
        touched: &qiaomen_protocol::doc::Touched,
        now: i64,
    ) -> Result<()> {
        let Some(rights) = rights else {
            return Ok(());
        };
        // Judged as the server will when the change arrives: no earlier than when the server
        // computed the rights (a phone's clock a little behind does not lose a fresh grant).
        let rights = Rights {
            at_ms: rights.at_ms.max(now),
            ..rights.clone()
        };
        let actor = Actor {
            user,
            rights: &rights,
            server_built: false,
            demand_ids: None,
        };
        let made = Made {
            at_ms: now,
            seen_grid: (!before.is_empty())
                .then(|| doc.root_text("grid", Some(before)))
                .flatten(),
        };
        policy::check_effect(&actor, doc, before, touched, &[made]).map_err(|r| {
            StoreError::NotAllowed {
                what: r.what,
                code: r.code,
            }
        })
    }

    /// Removes the households of grids outside `grids` that hold nothing unacknowledged: the
    /// worker moved on, and residents' records leave the phone. Returns how many left.
    pub fn drop_households_outside(&mut self, grids: &[String]) -> Result<usize> {
        let json = serde_json::to_string(grids).expect("strings serialize");
        let ids: Vec<Vec<u8>> = {
            let mut stmt = self.conn.prepare(
                "SELECT id FROM docs
                  WHERE grid NOT IN (SELECT value FROM json_each(?1))
                    AND id NOT IN (SELECT doc FROM pending)
                    AND id NOT IN (SELECT doc FROM photos
                                    WHERE doc IS NOT NULL AND state IN ('pending', 'refused'))",
            )?;
            stmt.query_map([json], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let tx = self.conn.unchecked_transaction()?;
        for key in &ids {
            // Its refusals stay: what the worker typed is not lost with the household.
            for table in HOUSEHOLD_TABLES {
                tx.execute(&format!("DELETE FROM {table} WHERE doc = ?1"), [key])?;
            }
            tx.execute("DELETE FROM photos WHERE doc = ?1", [key])?;
            tx.execute("DELETE FROM docs WHERE id = ?1", [key])?;
        }
        tx.commit()?;
        for key in &ids {
            if let Some(id) = uuid_from(key) {
                self.cache.remove(&id);
            }
        }
        Ok(ids.len())
    }

    /// Erases every record, pending change, refusal, the sync position and the credentials:
    /// what a phone does when the server says its device was revoked. The file stays a valid,
    /// empty, unenrolled store.
    pub fn wipe(&mut self) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let others = [
            "docs",
            "pending",
            "rejected",
            "task_lists",
            "task_done",
            "photos",
        ];
        for table in HOUSEHOLD_TABLES.iter().chain(&others) {
            tx.execute(&format!("DELETE FROM {table}"), [])?;
        }
        tx.execute(
            "DELETE FROM meta WHERE key IN ('credentials', 'cursor', 'cursor_check', 'scope', 'rights', 'extras_digest', 'photos_not_before')",
            [],
        )?;
        tx.commit()?;
        self.cache.clear();
        // Freed pages are overwritten, not left readable in the file.
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
        Ok(())
    }

    /// Households with changes no server has acknowledged, in the order they were made.
    pub fn pending_households(&self) -> Result<Vec<HouseholdId>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT doc, min(seq) AS first FROM pending GROUP BY doc ORDER BY first",
        )?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|b| b.ok().and_then(|b| uuid_from(&b)))
            .collect();
        Ok(ids)
    }

    /// Marks every change of every household pending again: for a full resync with a server
    /// that lost its state (it answers `cursor_ahead`).
    pub fn mark_everything_pending(&mut self) -> Result<()> {
        let me = self.author.device;
        for id in self.household_ids()? {
            let hashes: Vec<ChangeHash> = {
                let doc = &mut self.doc_mut(id)?.doc;
                let all = doc.changes_since(&[]);
                // Only this device's own changes: a phone never uploads others' changes.
                qiaomen_protocol::doc::decode_changes(all.iter().map(|c| c.as_slice()))?
                    .into_iter()
                    .filter(|c| {
                        c.message()
                            .and_then(Author::from_message)
                            .is_some_and(|a| a.device == me)
                    })
                    .map(|c| c.hash())
                    .collect()
            };
            let tx = self.conn.unchecked_transaction()?;
            for h in hashes {
                Self::insert_pending(&tx, id.as_bytes().as_slice(), h.as_ref())?;
            }
            tx.commit()?;
        }
        self.set_sync_position(None, None)
    }

    /// Takes the server's refusal of `refused` changes of household `id`: the document goes
    /// back to a history without them (and without anything built on them, which is recorded
    /// as refused too), so the phone agrees with the server again and keeps working. The
    /// refusals are kept for the worker to see ([`Store::rejected_changes`]).
    pub fn apply_rejections(
        &mut self,
        id: HouseholdId,
        refused: &[(ChangeHash, String)],
    ) -> Result<()> {
        if refused.is_empty() {
            return Ok(());
        }
        let now = self.now_ms();
        let fresh_actor = qiaomen_protocol::doc::actor_for(self.author.device);
        let hashes: Vec<ChangeHash> = refused.iter().map(|(h, _)| *h).collect();
        let cached = self.doc_mut(id)?;
        let (rebuilt, left_out) = cached.doc.without_changes(&hashes)?;
        // What each change held, read before the document forgets it.
        let contents: Vec<Option<String>> = left_out
            .iter()
            .map(|h| {
                cached
                    .doc
                    .refused_content(h)
                    .ok()
                    .map(|c| serde_json::to_string(&c).expect("content serializes"))
            })
            .collect();
        // Nothing left: the household's creation itself was refused; it leaves this device.
        let rebuilt = match rebuilt {
            Some(mut doc) => {
                doc.set_actor(fresh_actor.clone());
                let household = doc.household()?;
                let snapshot = doc.save();
                Some((doc, household, snapshot))
            }
            None => None,
        };
        let result = (|| -> Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![format!("actor:{fresh_actor}"), fresh_actor.to_bytes()],
            )?;
            match &rebuilt {
                Some((doc, household, snapshot)) => {
                    Self::write_snapshot(&tx, id, snapshot)?;
                    Self::write_index(&tx, household, &cases::rows(doc))?;
                }
                None => {
                    let key = id.as_bytes().as_slice();
                    for table in HOUSEHOLD_TABLES {
                        tx.execute(&format!("DELETE FROM {table} WHERE doc = ?1"), [key])?;
                    }
                    tx.execute("DELETE FROM docs WHERE id = ?1", [key])?;
                }
            }
            for (h, content) in left_out.iter().zip(&contents) {
                let code = refused
                    .iter()
                    .find(|(r, _)| r == h)
                    .map(|(_, c)| c.as_str())
                    .unwrap_or("depends_on_rejected");
                tx.execute(
                    "DELETE FROM pending WHERE doc = ?1 AND hash = ?2",
                    params![id.as_bytes().as_slice(), h.as_ref()],
                )?;
                tx.execute(
                    "INSERT OR REPLACE INTO rejected (doc, hash, code, at_ms, content)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id.as_bytes().as_slice(), h.as_ref(), code, now, content],
                )?;
            }
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.actor = fresh_actor;
                match rebuilt {
                    Some((doc, _, _)) => {
                        let c = self.cache.get_mut(&id).expect("cached");
                        c.doc = doc;
                        c.appended = 0;
                    }
                    None => {
                        self.cache.remove(&id);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.cache.remove(&id);
                Err(e)
            }
        }
    }

    /// Changes of this device that a server refused, oldest first, with the reason and what
    /// each held.
    pub fn rejected_changes(&self) -> Result<Vec<RejectedChange>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT doc, hash, code, at_ms, content FROM rejected ORDER BY at_ms, doc, hash",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, hash, code, at_ms, content) = row?;
            if let (Some(household), Some(hash)) = (uuid_from(&doc), hash_from(&hash)) {
                let reason =
                    serde_json::from_value::<RejectCode>(serde_json::Value::String(code.clone()))
                        .map_or("服务器未接收这条修改。", RejectCode::reason_zh)
                        .to_string();
                out.push(RejectedChange {
                    household,
                    hash,
                    code,
                    reason,
                    at_ms,
                    content: content
                        .and_then(|c| serde_json::from_str(&c).ok())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    /// Forgets a refusal the worker has seen (and, where it mattered, entered again).
    /// Returns whether there was one.
    pub fn clear_rejected(&mut self, household: HouseholdId, hash: ChangeHash) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM rejected WHERE doc = ?1 AND hash = ?2",
            params![household.as_bytes().as_slice(), hash.as_ref()],
        )?;
        Ok(n > 0)
    }

    /// The raw connection, for tests that need to damage the file on purpose.
    #[doc(hidden)]
    pub fn connection_for_tests(&self) -> &Connection {
        &self.conn
    }

    /// Drops every loaded document, so the next read comes from disk.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }
}

enum IndexUpdate {
    None,
    Full,
    /// A new visit: its id, day, outcome and the demands raised on it.
    Visit(VisitId, Day, VisitOutcome, Vec<DemandId>),
    /// A photo attached: its bytes, kept with the change.
    Photo(photos::Attached),
    /// A case raised or moved on, and the demand an escalation made.
    Case(cases::CaseRow, Option<DemandId>),
}

fn uuid_from(bytes: &[u8]) -> Option<HouseholdId> {
    bytes
        .try_into()
        .ok()
        .map(|b: [u8; 16]| HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(b)))
}

/// A summary row, or `None` for a row whose id is not a UUID (skipped, never a panic).
fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<HouseholdSummary>> {
    let id: Vec<u8> = r.get(0)?;
    let grid: String = r.get(1)?;
    let door_number: String = r.get(2)?;
    let status: String = r.get(3)?;
    Ok(uuid_from(&id).map(|id| HouseholdSummary {
        id,
        grid: GridId::new(grid),
        door_number,
        status: status_from(&status),
    }))
}

/// A whole household document read and checked, ready to be stored
/// ([`Store::apply_read_document`]): loaded, read through its types, and saved as the
/// snapshot the store keeps. Reading needs no store, so a sync does it without holding one.
pub struct ReadDocument {
    doc: HouseholdDoc,
    household: Household,
    snapshot: Vec<u8>,
}

impl ReadDocument {
    /// Reads `bytes` (Automerge's saved form), refusing a document that does not load or
    /// read, or is another household than `expect`.
    pub fn read(bytes: &[u8], expect: Option<HouseholdId>) -> Result<ReadDocument> {
        let mut doc = HouseholdDoc::load(bytes)?;
        let household = doc.household()?;
        if expect.is_some_and(|e| e != household.id) {
            return Err(StoreError::Document(DocError::InvalidEdit(
                "the document is another household".into(),
            )));
        }
        let snapshot = doc.save();
        Ok(ReadDocument {
            doc,
            household,
            snapshot,
        })
    }
}

/// Names the household only: what it holds about residents is never printed.
impl std::fmt::Debug for ReadDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadDocument")
            .field("id", &self.household.id)
            .finish_non_exhaustive()
    }
}
