//! Where the server keeps documents: an append-only change log plus per-document snapshots.
//!
//! [`Storage`] is the change log's seam. Two backends implement it: the embedded SQLite store
//! ([`SqliteStorage`], the default: one file, nothing else to install) and PostgreSQL
//! ([`PgStorage`], for several servers on one database). Both pass one conformance suite
//! (`conformance.rs`). Every method takes `&self` (a handle holds its connections inside) and
//! blocks: the server calls them from its writer threads or from `spawn_blocking`, never on
//! async threads.
//!
//! The log is the source of truth and is never rewritten: each accepted change gets the next
//! sequence number (`seq`), which is what phones' cursors count. Snapshots only make loading a
//! document cheaper; they are a cache of the log. The invariants every backend keeps:
//!
//! - **The log's order is commit order.** A reader that sees `seq` n sees every committed
//!   change below n: a cursor never passes a change that commits later. SQLite has one
//!   writer; PostgreSQL takes one transaction-scoped advisory lock per write.
//! - **Each [`Storage::write`] is one atomic commit**, durable when it returns.
//! - **Per-household optimistic concurrency.** A write names, for each household, the last
//!   log row its checks were made against ([`HouseholdWrite::head`]); if another writer (a
//!   thread or another server) appended to the household since, nothing of the write is
//!   stored and [`Written::Moved`] names the households to re-read and re-check. A writer's
//!   cache of documents therefore only ever caches.
//! - **A snapshot is stamped with the log row it holds**, in the transaction that appends
//!   that row, so it never hides a change.

mod sqlite;
pub(crate) use sqlite::size_page_cache;
pub use sqlite::{SqliteStorage, format, set_page_cache_kib};
pub(crate) mod postgres;
pub use postgres::PgStorage;
#[cfg(test)]
pub(crate) mod conformance;

use qiaomen_protocol::{calendar::Day, ids::HouseholdId, wire::WholePass};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("storage: no connection to PostgreSQL: {0}")]
    Pool(String),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the store was written by a newer server (store format {found}; this server reads up to {max}): run that server's version, or restore a backup this version made"
    )]
    TooNew { found: i64, max: i64 },
    #[error("the stored document of household {0} does not load")]
    Corrupt(HouseholdId),
    #[error("the writer panicked; the group was rolled back")]
    Panicked,
    #[error("the households of the group kept moving under the writer; nothing was stored")]
    Contended,
    /// A row that does not read as its statement expects ([`crate::sql`]).
    #[error("storage: {0}")]
    Row(crate::sql::SqlError),
}

impl From<crate::sql::SqlError> for StorageError {
    fn from(e: crate::sql::SqlError) -> Self {
        use crate::sql::SqlError;
        match e {
            SqlError::Sqlite(e) => StorageError::Sqlite(e),
            SqlError::Postgres(e) => StorageError::Postgres(e),
            SqlError::Pool(e) => StorageError::Pool(e),
            other => StorageError::Row(other),
        }
    }
}

impl crate::sql::LostRace for StorageError {
    fn lost_race(&self) -> bool {
        match self {
            StorageError::Sqlite(e) => crate::sql::sqlite_lost_race(e),
            StorageError::Postgres(e) => crate::sql::postgres_lost_race(e),
            _ => false,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A change accepted for the log.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub doc: HouseholdId,
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
    /// The authenticated device that uploaded it, and its user.
    pub device: Option<[u8; 16]>,
    pub user: Option<[u8; 16]>,
    /// Whether the uploader's clock agreed with the server's (`None`: unknown); see
    /// [`crate::access::policy::Principal::clock_ok`].
    pub clock_ok: Option<bool>,
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

#[derive(Debug, Clone, Default)]
pub struct WholePage {
    pub docs: Vec<(HouseholdId, Vec<LoggedChange>)>,
    /// The last household looked at (those without changes up to the page's position
    /// included) and its pass: where the next page starts.
    pub last: Option<(WholePass, HouseholdId)>,
    /// No household is left after these.
    pub done: bool,
}

/// Where a page of a first sync by whole documents starts (SYNC-v1 §7.3.1, §7.3.2).
#[derive(Debug, Clone, Copy)]
pub struct WholeFrom {
    pub pass: WholePass,
    /// The last household sent in this pass (`None`: from the first).
    pub after: Option<HouseholdId>,
    /// The day the most needed are chosen for (the passes that choose).
    pub day: Option<Day>,
}

/// The change log: what every backend implements ([module docs](self)).
pub trait Storage: Send + Sync + 'static {
    /// The stored bytes of a document (its snapshot followed by the changes logged after it),
    /// or `None` if the document does not exist.
    fn load_doc(&self, id: HouseholdId) -> Result<Option<Vec<u8>>>;
    /// Whether the log holds a change.
    fn has_change(&self, hash: &[u8; 32]) -> Result<bool>;
    /// Hashes of the document's logged changes that begin with `prefix`: how a packed change's dependencies are found. At most 16.
    fn hashes_with_prefix(&self, doc: HouseholdId, prefix: &[u8]) -> Result<Vec<[u8; 32]>>;
    /// What a writer needs of a stored household to check changes against it: its bytes, as
    /// [`Storage::load_doc`], and the log row they end at, read together.
    fn load_for_write(&self, id: HouseholdId) -> Result<Option<StoredDoc>>;
    /// Stores a group of writes in one atomic, durable commit: each household's rows appended
    /// to the log (moves recorded, snapshots replaced) and the refused changes kept. Nothing is
    /// stored when a household moved since its [`HouseholdWrite::head`] was read.
    fn write(&self, batch: &WriteBatch) -> Result<Written>;
    /// The log after `cursor`, up to about `budget` bytes of changes, of the documents in
    /// `grids` (every document when empty).
    fn log_since(&self, cursor: u64, budget: usize, grids: &[String]) -> Result<LogSlice>;
    /// The last sequence number in the log.
    fn max_seq(&self) -> Result<u64>;
    /// How far the read model ([`crate::index`]) is behind the log, read from its cursor
    /// without its lock: for `/readyz` and the metrics.
    fn read_model_lag(&self) -> Result<ReadModelLag>;
    /// How many households are quarantined.
    fn quarantined_count(&self) -> Result<u64>;
    /// The hash of the change logged at `seq`.
    fn hash_at(&self, seq: u64) -> Result<Option<Vec<u8>>>;
    /// How many documents the store holds.
    fn doc_count(&self) -> Result<u64>;
    /// The grid a document was last stored under.
    fn doc_grid(&self, id: HouseholdId) -> Result<Option<String>>;
    /// When the household was first stored and how it moved since (`None`: not stored):
    /// what figures "as of their day" are computed from.
    fn doc_timeline(&self, id: HouseholdId) -> Result<Option<Timeline>>;
    /// [`Storage::load_doc`] of each of `ids`, in their order: in one read where the backend
    /// gains by it (PostgreSQL: two statements in all, not two per household).
    fn load_docs(&self, ids: &[HouseholdId]) -> Result<Vec<Option<Vec<u8>>>> {
        ids.iter().map(|id| self.load_doc(*id)).collect()
    }
    /// [`Storage::doc_timeline`] of each of `ids`, in their order, as [`Storage::load_docs`].
    fn doc_timelines(&self, ids: &[HouseholdId]) -> Result<Vec<Option<Timeline>>> {
        ids.iter().map(|id| self.doc_timeline(*id)).collect()
    }
    /// Every grid the household has been in (its moves' grids and its current one); empty
    /// for a household the server does not hold.
    fn doc_grids(&self, id: HouseholdId) -> Result<Vec<String>>;
    /// Documents that moved into one of `grids` after `cursor`, up to the log's end `until`.
    fn moved_into(&self, cursor: u64, until: u64, grids: &[String]) -> Result<Vec<HouseholdId>>;
    /// How many households each grid holds.
    fn grid_counts(&self) -> Result<Vec<(String, u64)>>;
    /// The stored bytes of every document of a grid (for lists and exports).
    fn grid_docs(&self, grid: &str) -> Result<Vec<(HouseholdId, Vec<u8>)>>;
    /// Every logged change of a document, oldest first, up to `until`.
    fn doc_log(&self, id: HouseholdId, until: u64) -> Result<Vec<LoggedChange>>;
    /// A page of a first sync by whole documents (SYNC-v1 §7.3.1): the households now in
    /// `grids` of the pass of `from`, with an id after its `after`, in id order (the most
    /// needed pass then goes on into the rest, §7.3.2), each with its changes logged up to
    /// `until` (a household with none is left out), until about `budget` bytes of changes —
    /// always one household when any is left. One read transaction.
    fn whole_page(
        &self,
        grids: &[String],
        from: WholeFrom,
        until: u64,
        budget: usize,
    ) -> Result<WholePage>;
    /// Puts a household in quarantine (kept if it already is), committed at once, whatever
    /// becomes of the write of the group that found it broken.
    fn quarantine(&self, id: HouseholdId, reason: &str) -> Result<()>;
    /// Whether a household is quarantined.
    fn is_quarantined(&self, id: HouseholdId) -> Result<bool>;
    /// Every quarantined household, oldest first.
    fn quarantined(&self) -> Result<Vec<Quarantined>>;
    /// Takes a household out of quarantine; whether it was in.
    fn release(&self, id: HouseholdId) -> Result<bool>;
    /// Kept refusals, newest first: of `grids` (every grid when `None`), at most `limit`.
    fn refused(&self, grids: Option<&[String]>, limit: usize) -> Result<Vec<RefusedRow>>;
}

/// A household's registration and moves, as the log holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// The creating change's own time (the phone's clock), in ms.
    pub created_ms: i64,
    /// When the server received it, in ms.
    pub arrived_ms: i64,
    /// Each move, oldest first: the grid left, the grid entered, and when the server received
    /// the change that made it (ms).
    pub moves: Vec<(String, String, i64)>,
}

/// Refused changes a device keeps on the server at most: the oldest beyond are dropped, so a
/// broken or hostile phone cannot fill the disk (SYNC-v1 §5.6).
pub const MAX_REFUSED_PER_DEVICE: i64 = 2_000;

/// A change the server refused, kept with its bytes (not applied) for supervisors to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRow {
    pub doc: HouseholdId,
    pub hash: [u8; 32],
    /// The household's grid when it was refused (for a new household, the grid it named).
    pub grid: String,
    pub device: Option<[u8; 16]>,
    pub user: Option<[u8; 16]>,
    /// The reject code's wire name.
    pub code: String,
    pub at_ms: i64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub doc: HouseholdId,
    /// A stable code: `does_not_load`, `panicked`.
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadModelLag {
    /// Logged changes it does not count yet.
    pub behind: u64,
    /// When the oldest of them was received (`None`: none).
    pub oldest_ms: Option<i64>,
}

impl ReadModelLag {
    /// How many whole seconds the oldest uncounted change has waited at `now_ms` (0: none).
    pub fn seconds_behind(&self, now_ms: i64) -> i64 {
        self.oldest_ms.map_or(0, |t| (now_ms - t).max(0) / 1000)
    }
}

/// A stored household as a writer reads it ([`Storage::load_for_write`]).
#[derive(Debug, Clone)]
pub struct StoredDoc {
    /// Its snapshot followed by the changes logged after it.
    pub bytes: Vec<u8>,
    pub head: DocHead,
}

/// Where a household's log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DocHead {
    /// Its last log row (0: not stored).
    pub seq: u64,
    /// Its log rows after its snapshot: when a new snapshot is due.
    pub since_snapshot: u64,
}

/// One household's part of a [`WriteBatch`].
#[derive(Debug, Clone)]
pub struct HouseholdWrite {
    pub id: HouseholdId,
    /// The household's last log row when the document these rows were checked against was
    /// read (0: it was not stored). Checked on the household's first write of a batch.
    pub head: u64,
    /// Changes to append, in order.
    pub rows: Vec<NewChange>,
    /// The grid the rows are logged under: the grid a move leaves (so its phones learn the
    /// household left), else the household's grid.
    pub log_grid: String,
    /// The household's grid after these rows.
    pub grid: String,
    /// The grid left, when these rows move the household: the move is recorded at the last
    /// row, and phones of the new grid receive its whole history.
    pub moved_from: Option<String>,
    /// A new snapshot, holding exactly the household's log through these rows.
    pub snapshot: Option<Vec<u8>>,
}

/// What one commit stores ([`Storage::write`]).
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub households: Vec<HouseholdWrite>,
    /// Refused changes to keep: a change refused again is kept once; a device keeps its
    /// latest [`MAX_REFUSED_PER_DEVICE`].
    pub refused: Vec<RefusedRow>,
}

/// How a [`Storage::write`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Stored: each written household's head after the commit.
    Committed(Vec<(HouseholdId, DocHead)>),
    /// Nothing stored: these households moved since their heads were read.
    Moved(Vec<HouseholdId>),
}

/// The households a batch checks the heads of: each one's first write.
pub(crate) fn expected_heads(batch: &WriteBatch) -> Vec<(HouseholdId, u64)> {
    let mut seen = std::collections::HashSet::new();
    batch
        .households
        .iter()
        .filter(|w| seen.insert(w.id))
        .map(|w| (w.id, w.head))
        .collect()
}

/// Every household a batch wrote, once, in the order of their last writes.
pub(crate) fn written_ids(batch: &WriteBatch) -> Vec<HouseholdId> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<HouseholdId> = batch
        .households
        .iter()
        .rev()
        .filter(|w| seen.insert(w.id))
        .map(|w| w.id)
        .collect();
    out.reverse();
    out
}

/// A log position as SQL takes it: positions past the last (`u64::MAX`: "all") stay past it.
pub(crate) fn sql_seq(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A household id from stored bytes (`None`: not 16 bytes).
pub(crate) fn household_of(bytes: &[u8]) -> Option<HouseholdId> {
    let arr = <[u8; 16]>::try_from(bytes).ok()?;
    Some(HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(arr)))
}
