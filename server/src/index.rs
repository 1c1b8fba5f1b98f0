//! The read model: tables derived from the change log, for coverage, work orders and
//! statistics. Never typed in, never the source of truth.
//!
//! The log is the truth ([`crate::storage`]). [`Index::refresh`] follows it with a cursor of
//! its own (`idx_cursor`): every household with a change after the cursor is loaded, read
//! through its typed record, and its rows in `idx_households`, `idx_visits` and
//! `idx_orders` are replaced — in one transaction with the cursor, so a crash leaves either the
//! old rows and cursor or the new ones. Reads call `refresh` first (a supervisor sees the
//! visit a phone synced a moment ago); a refresh costs one document load per household that
//! changed since the last one. Dropping the tables and the cursor rebuilds them from the log.
//!
//! What each row says is computed by the protocol crate's pure functions
//! ([`qiaomen_protocol::workorder::replay`], [`qiaomen_protocol::coverage`]) with the
//! server's [`Workflow`] settings, so the phone and the server count the same way.

use std::path::Path;

use qiaomen_protocol::{
    calendar::Day,
    coverage::{CoverageInput, CoveragePolicy},
    doc::HouseholdDoc,
    ids::{DemandId, HouseholdId},
    photo::{Photo, PhotoSubject},
    schema::{Household, HouseholdStatus, KeyGroup, TagSpan, VisitOutcome},
    vocab::Term,
    workorder::{self, Deadlines},
};
use serde::{Deserialize, Serialize};

use crate::sql::{Db, Owned, Row, SqlError};
use crate::storage::{PgStorage, SqliteStorage, Storage, StorageError, Timeline};

/// Log rows one refresh transaction takes in.
pub const BATCH_ROWS: i64 = 2_000;

/// Log rows a read takes in before it answers; a larger backlog (after a visit day's uploads)
/// is the background refresher's, and the read answers from the tables as they are.
pub const READ_ROWS: i64 = 10_000;

/// The workflow settings of a server: work-order deadlines (working days per step, the
/// holiday calendar) and the visit rotation. Read from a JSON file (`--workflow`); every
/// field has a default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workflow {
    pub deadlines: Deadlines,
    pub coverage: CoveragePolicy,
}

/// The name the workflow settings are recorded under in a database several servers share
/// ([`crate::access::shared`]).
pub const WORKFLOW_SETTING: &str = "workflow";

/// The derived tables (migration 3 of the store).
pub const INDEX_SCHEMA: &str = r#"
CREATE TABLE idx_cursor (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL);
INSERT INTO idx_cursor VALUES (1, 0);
CREATE TABLE idx_households (
    doc    BLOB PRIMARY KEY,
    grid   TEXT NOT NULL,
    door   TEXT NOT NULL,
    status TEXT NOT NULL,
    -- JSON [[group, since, until], ...] of the household's and its members' tags.
    tags   TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX idx_households_grid ON idx_households (grid);
CREATE TABLE idx_visits (
    doc        BLOB NOT NULL,
    visit      TEXT NOT NULL,
    grid       TEXT NOT NULL,
    visit_day  TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    worker     TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (doc, visit)
) WITHOUT ROWID;
CREATE INDEX idx_visits_grid ON idx_visits (grid, visit_day);
CREATE TABLE idx_orders (
    doc          BLOB NOT NULL,
    demand       TEXT NOT NULL,
    grid         TEXT NOT NULL,
    door         TEXT NOT NULL,
    status       TEXT NOT NULL,
    tier         TEXT,
    team         TEXT,
    responsible  TEXT NOT NULL,
    source       TEXT,
    category     TEXT NOT NULL,
    urgency      TEXT NOT NULL,
    raised_ms    INTEGER NOT NULL,
    done_ms      INTEGER,
    on_time      INTEGER,
    satisfaction TEXT,
    step         TEXT,
    step_due     TEXT,
    chase_ups    INTEGER NOT NULL,
    bounces      INTEGER NOT NULL,
    reopened     INTEGER NOT NULL,
    external_ref TEXT,
    PRIMARY KEY (doc, demand)
) WITHOUT ROWID;
CREATE INDEX idx_orders_grid ON idx_orders (grid, raised_ms);
CREATE INDEX idx_orders_team ON idx_orders (team, status);
CREATE INDEX idx_orders_ref ON idx_orders (external_ref);
CREATE INDEX idx_orders_demand ON idx_orders (demand);
"#;

/// Registration and moves of every household, for figures as of their day (migration 6 of
/// the store; the read model is rebuilt from the log).
pub const INDEX_SPANS_SCHEMA: &str = r#"
ALTER TABLE idx_households ADD COLUMN registered TEXT;
CREATE TABLE idx_spans (
    doc   BLOB NOT NULL,
    since TEXT NOT NULL,
    grid  TEXT NOT NULL,
    PRIMARY KEY (doc, since)
) WITHOUT ROWID;
CREATE INDEX idx_spans_grid ON idx_spans (grid);
DELETE FROM idx_households;
DELETE FROM idx_visits;
DELETE FROM idx_orders;
UPDATE idx_cursor SET seq = 0;
"#;

/// The read model's values become stable codes (`met`, `closed`: the vocabulary's, see
/// `qiaomen_protocol::vocab`) instead of the first release's variant names (migration 10 of
/// the store; the read model is rebuilt from the log).
pub const INDEX_CODES_SCHEMA: &str = r#"
DELETE FROM idx_households;
DELETE FROM idx_spans;
DELETE FROM idx_visits;
DELETE FROM idx_orders;
UPDATE idx_cursor SET seq = 0;
"#;

/// Photo references (SYNC-v1 §14.2), one row per reference, and the bytes each device had
/// accepted per day (migration 15 of the store, 7 of PostgreSQL; the read model is rebuilt
/// from the log). What a device may upload or fetch is judged on `idx_photos`: a hash that a
/// household in its scope refers to ([`Index::photo_refs`]).
pub const PHOTOS_SCHEMA: &str = r#"
CREATE TABLE idx_photos (
    doc        BLOB NOT NULL,
    photo      TEXT NOT NULL,
    hash       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    subject    TEXT NOT NULL,
    visit      TEXT,
    demand     TEXT,
    item       INTEGER,
    by_user    TEXT NOT NULL,
    taken_ms   INTEGER NOT NULL,
    caption    TEXT NOT NULL,
    PRIMARY KEY (doc, photo)
) WITHOUT ROWID;
CREATE INDEX idx_photos_hash ON idx_photos (hash);
CREATE TABLE photo_quota (
    device TEXT NOT NULL,
    day    TEXT NOT NULL,
    bytes  INTEGER NOT NULL,
    PRIMARY KEY (device, day)
) WITHOUT ROWID;
DELETE FROM idx_households;
DELETE FROM idx_spans;
DELETE FROM idx_visits;
DELETE FROM idx_orders;
UPDATE idx_cursor SET seq = 0;
"#;

/// Tracked disputes and hazards (SYNC-v1 §13.10), one row per case, its steps as JSON without
/// their comments (migration 17 of the store, 9 of PostgreSQL; the read model is rebuilt from
/// the log). `found_grid` is the grid the household was in the day the case was raised (what
/// the ledger's figures count it for); `grid` the household's now (who sees it).
pub const CASES_SCHEMA: &str = r#"
CREATE TABLE idx_cases (
    doc        BLOB NOT NULL,
    case_id    TEXT NOT NULL,
    grid       TEXT NOT NULL,
    found_grid TEXT NOT NULL,
    door       TEXT NOT NULL,
    ledger     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    visit      TEXT,
    raised_by  TEXT NOT NULL,
    raised_ms  INTEGER NOT NULL,
    due        TEXT,
    state      TEXT NOT NULL,
    steps      TEXT NOT NULL,
    PRIMARY KEY (doc, case_id)
) WITHOUT ROWID;
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

/// A tracked case as the read model holds it (no resident's text: the detail, the parties and
/// the steps' comments stay in the document).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CaseRow {
    pub household: String,
    pub case: String,
    /// The household's grid now.
    pub grid: String,
    /// The grid it was in the day the case was raised.
    pub found_grid: String,
    pub door_number: String,
    /// `hazard` or `dispute` (vocabulary `ledger`).
    pub ledger: String,
    /// `fire`, `neighbours`, ... (vocabulary `hazard_kind` or `dispute_kind`).
    pub kind: String,
    /// The visit that found it.
    pub visit: Option<String>,
    pub raised_by: String,
    pub raised_ms: i64,
    /// The deadline set when it was raised.
    pub due: Option<String>,
    /// Its state now (vocabulary `case_state`).
    pub state: String,
    /// Who is to act now (the last assignee, else who raised it), and the deadline in force.
    pub assignee: String,
    pub deadline: Option<String>,
    /// Open past its deadline (as of the answer).
    pub overdue: bool,
    pub steps: Vec<CaseStepRow>,
}

/// A step of a case as the read model holds it (without its comment).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaseStepRow {
    /// Vocabulary `case_action`.
    pub action: String,
    pub by: String,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

impl CaseRow {
    /// The case as the protocol's ledger reads it, without its texts (`None`: the row does not
    /// read, which the read model never writes).
    pub fn case(&self) -> Option<qiaomen_protocol::ledger::Case> {
        use qiaomen_protocol::{
            ids::{CaseId, DeviceId},
            ledger::{Case, CaseAction, CaseKind, CaseStep},
            schema::{DisputeKind, HazardKind},
        };
        let kind = match self.ledger.as_str() {
            "hazard" => CaseKind::Hazard {
                kind: HazardKind::from_code(&self.kind)?,
            },
            "dispute" => CaseKind::Dispute {
                kind: DisputeKind::from_code(&self.kind)?,
            },
            _ => return None,
        };
        let nobody = DeviceId(qiaomen_protocol::ids::Uuid::nil());
        let history = self
            .steps
            .iter()
            .map(|s| {
                Some(CaseStep {
                    action: CaseAction::from_code(&s.action)?,
                    by: s.by.parse().ok()?,
                    device: nobody,
                    at_ms: s.at_ms,
                    comment: String::new(),
                    assignee: s.assignee.as_deref().and_then(|a| a.parse().ok()),
                    due: s.due.as_deref().and_then(|d| d.parse().ok()),
                    order: s.order.as_deref().and_then(|o| o.parse().ok()),
                    visit: None,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Case {
            id: self.case.parse::<CaseId>().ok()?,
            kind,
            raised_on_visit: None,
            item: None,
            raised_by: self.raised_by.parse().ok()?,
            device: nobody,
            raised_at_ms: self.raised_ms,
            detail: String::new(),
            parties: String::new(),
            due: self.due.as_deref().and_then(|d| d.parse().ok()),
            history,
        })
    }
}

const CASE_SELECT: &str = "SELECT doc, case_id, grid, found_grid, door, ledger, kind, visit,
    raised_by, raised_ms, due, state, steps FROM idx_cases";

fn case_row(r: &Row) -> Result<CaseRow, SqlError> {
    let doc: Vec<u8> = r.get(0)?;
    let household = <[u8; 16]>::try_from(doc.as_slice())
        .map(|b| qiaomen_protocol::ids::Uuid::from_bytes(b).to_string())
        .unwrap_or_default();
    let steps: String = r.get(12)?;
    let mut row = CaseRow {
        household,
        case: r.get(1)?,
        grid: r.get(2)?,
        found_grid: r.get(3)?,
        door_number: r.get(4)?,
        ledger: r.get(5)?,
        kind: r.get(6)?,
        visit: r.get(7)?,
        raised_by: r.get(8)?,
        raised_ms: r.get(9)?,
        due: r.get(10)?,
        state: r.get(11)?,
        assignee: String::new(),
        deadline: None,
        overdue: false,
        steps: serde_json::from_str(&steps).unwrap_or_default(),
    };
    if let Some(s) = row.case().map(|c| qiaomen_protocol::ledger::standing(&c)) {
        row.assignee = s.assignee.to_string();
        row.deadline = s.due.map(|d| d.to_string());
    }
    Ok(row)
}

/// A case's row in `idx_cases`: counted for the grid the household was in the day it was
/// raised.
fn case_db_row(
    raw: &[u8],
    h: &Household,
    grid_then: &str,
    c: &qiaomen_protocol::ledger::Case,
) -> Vec<Owned> {
    let steps: Vec<CaseStepRow> = c
        .history
        .iter()
        .map(|e| CaseStepRow {
            action: e.action.code().to_string(),
            by: e.by.to_string(),
            at_ms: e.at_ms,
            assignee: e.assignee.map(|a| a.to_string()),
            due: e.due.map(|d| d.to_string()),
            order: e.order.map(|o| o.to_string()),
        })
        .collect();
    vec![
        Owned::Blob(raw.to_vec()),
        text(c.id.to_string()),
        text(h.grid.as_str()),
        text(grid_then),
        text(h.door_number.as_str()),
        text(c.kind.ledger().code()),
        text(c.kind.kind_code()),
        opt_text(c.raised_on_visit.map(|v| v.to_string())),
        text(c.raised_by.to_string()),
        int(c.raised_at_ms),
        opt_text(c.due.map(|d| d.to_string())),
        text(qiaomen_protocol::ledger::standing(c).state.code()),
        text(serde_json::to_string(&steps).unwrap_or_else(|_| "[]".into())),
    ]
}

/// A photo reference as the read model holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhotoRef {
    pub household: HouseholdId,
    /// The household's grid now (whom the photo is shown to).
    pub grid: String,
    pub photo: String,
    pub hash: String,
    pub size: u64,
    /// `jpeg`, `png`, `webp`.
    pub media_type: String,
    /// `household`, `visit`, `hazard`, `dispute`, `demand_step` ([`PhotoSubject::code`]).
    pub subject: String,
    pub visit: Option<String>,
    pub demand: Option<String>,
    /// The hazard's, dispute's or step's place.
    pub item: Option<i64>,
    pub by: String,
    pub taken_ms: i64,
    pub caption: String,
}

const PHOTO_COLUMNS: &str = "p.doc, h.grid, p.photo, p.hash, p.size, p.media_type, p.subject,
    p.visit, p.demand, p.item, p.by_user, p.taken_ms, p.caption";

fn photo_ref(r: &Row) -> Result<Option<PhotoRef>, SqlError> {
    let doc: Vec<u8> = r.get(0)?;
    let size: i64 = r.get(4)?;
    let (Ok(bytes), Ok(size)) = (<[u8; 16]>::try_from(doc.as_slice()), u64::try_from(size)) else {
        return Ok(None);
    };
    Ok(Some(PhotoRef {
        household: HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(bytes)),
        grid: r.get(1)?,
        photo: r.get(2)?,
        hash: r.get(3)?,
        size,
        media_type: r.get(5)?,
        subject: r.get(6)?,
        visit: r.get(7)?,
        demand: r.get(8)?,
        item: r.get(9)?,
        by: r.get(10)?,
        taken_ms: r.get(11)?,
        caption: r.get(12)?,
    }))
}

/// A household as the read model holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct HouseholdRow {
    pub id: HouseholdId,
    /// Its grid now.
    pub grid: String,
    pub door: String,
    /// What coverage needs, with the day it was registered.
    pub input: CoverageInput,
    /// The grids it has been in: (from that day on, grid), oldest first.
    pub spans: Vec<(Day, String)>,
}

impl HouseholdRow {
    /// The grid the household belonged to on `day` (at the start of it).
    pub fn grid_on(&self, day: Day) -> &str {
        grid_in(&self.spans, day).unwrap_or(&self.grid)
    }
}

/// When a household counts, and where, as the log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsOf {
    pub registered: Day,
    /// (from that day on, grid), oldest first.
    pub spans: Vec<(Day, String)>,
}

impl AsOf {
    /// The grid the household began `day` in (its first grid for a day before its
    /// registration); `None` with no spans.
    pub fn grid_on(&self, day: Day) -> Option<&str> {
        grid_in(&self.spans, day)
    }
}

/// The grid of `spans` ((from that day on, grid), oldest first) on `day`: the last span begun
/// by then, or the first one for a day before all of them; `None` with no spans.
fn grid_in(spans: &[(Day, String)], day: Day) -> Option<&str> {
    spans
        .iter()
        .rev()
        .find(|(since, _)| *since <= day)
        .or(spans.first())
        .map(|(_, g)| g.as_str())
}

/// A household's registration day and grids over time, from its timeline. It is registered
/// on the day its creation was made (the phone's clock), but never after the server received
/// it nor earlier than `catch_up_days` before that: a household arriving after a visit day's
/// catch-up window closed does not change that day's figures. A move counts from the day
/// after the server received it, so the grid on a visit day is the one it began the day in.
pub fn as_of(t: &Timeline, grid_now: &str, catch_up_days: u32) -> AsOf {
    let arrived = workorder::day_of(t.arrived_ms);
    let registered = workorder::day_of(t.created_ms.min(t.arrived_ms))
        .max(arrived.add_days(-i64::from(catch_up_days)));
    let first = t
        .moves
        .first()
        .map_or(grid_now, |(from, _, _)| from.as_str());
    let mut spans = vec![(registered, first.to_string())];
    for (_, to, at) in &t.moves {
        let since = workorder::day_of(*at).add_days(1).max(registered);
        match spans.last_mut() {
            Some(last) if last.0 == since => last.1 = to.clone(),
            _ => spans.push((since, to.clone())),
        }
    }
    AsOf { registered, spans }
}

/// A work order as the read model holds it (no resident's text: that stays in the document).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OrderRow {
    pub household: String,
    pub demand: String,
    pub grid: String,
    pub door_number: String,
    pub status: String,
    pub tier: Option<String>,
    pub team: Option<String>,
    /// The first-responsible cadre's user id.
    pub responsible: String,
    pub source: Option<String>,
    pub category: String,
    pub urgency: String,
    pub raised_ms: i64,
    pub done_ms: Option<i64>,
    /// Resolved with every step on time; `None` until done.
    pub on_time: Option<bool>,
    pub satisfaction: Option<String>,
    /// The step the order waits for, and its due day; `None` once closed.
    pub step: Option<String>,
    pub step_due: Option<String>,
    pub chase_ups: u32,
    pub bounces: u32,
    pub reopened: u32,
    pub external_ref: Option<String>,
    /// Open, and its step's due day has passed (as of the answer).
    pub overdue: bool,
}

/// The read model on its own connection, plus a handle on the log to load documents.
pub struct Index {
    db: Db,
    storage: Box<dyn Storage>,
    pub workflow: Workflow,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").finish_non_exhaustive()
    }
}

impl Index {
    /// Opens the read model of the store in `dir` (the store's migrations made its tables).
    pub fn open(dir: &Path, workflow: Workflow) -> Result<Self, StorageError> {
        let storage = SqliteStorage::open(dir)?;
        let conn = rusqlite::Connection::open(dir.join("qiaomen.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
        crate::storage::size_page_cache(&conn)?;
        Ok(Self {
            db: Db::sqlite(conn),
            storage: Box::new(storage),
            workflow,
        })
    }

    /// The read model of a PostgreSQL database (migrated by [`PgStorage`]).
    pub fn on_postgres(log: &PgStorage, workflow: Workflow) -> Self {
        Self {
            db: log.db(),
            storage: Box::new(log.clone()),
            workflow,
        }
    }

    /// Brings the tables up to the log's end; returns how many households were re-read.
    pub fn refresh(&mut self) -> Result<usize, StorageError> {
        let mut total = 0;
        loop {
            let (n, caught_up) = self.refresh_batch(BATCH_ROWS)?;
            total += n;
            if caught_up {
                return Ok(total);
            }
        }
    }

    /// The tables' cursor and the log's end.
    fn positions(&self) -> Result<(i64, i64), StorageError> {
        let cursor: i64 = self.db.one("SELECT seq FROM idx_cursor", &[])?;
        let end: i64 = self
            .db
            .one("SELECT coalesce(max(seq), 0) FROM changes", &[])?;
        Ok((cursor, end))
    }

    /// How many logged changes the tables do not reflect yet.
    pub fn behind(&self) -> Result<u64, StorageError> {
        let (cursor, end) = self.positions()?;
        Ok(end.saturating_sub(cursor) as u64)
    }

    /// Takes in at most `max_rows` logged changes past the cursor (one transaction): returns
    /// how many households were re-read and whether the tables reached the log's end.
    ///
    /// One projector at a time: on a database several servers share, the batch is read and
    /// written holding the read model's lock ([`Db::exclusive`]), so a second server's
    /// projector waits for the first's batch and then reads on from the cursor it left,
    /// instead of reading the same households again. The cursor moves in the batch's
    /// transaction only from where this projector read it (a compare-and-set); should it have
    /// moved (the lock is not held: a projector of an older server), nothing is written (its
    /// documents may be older than what the other wrote) and the call reports not caught up,
    /// so the caller reads on. The cursor only moves forward, and the rows of a household are
    /// those of the last batch that read it.
    pub fn refresh_batch(&mut self, max_rows: i64) -> Result<(usize, bool), StorageError> {
        let me = &*self;
        me.db
            .exclusive(crate::storage::postgres::PROJECTOR_LOCK, |_| {
                let Some(batch) = me.read_batch(max_rows)? else {
                    return Ok((0, true));
                };
                let (n, caught_up) = (batch.rows.len(), batch.end == batch.log_end);
                if !me.write_batch(&batch)? {
                    return Ok((0, false));
                }
                Ok((n, caught_up))
            })
    }

    /// The first step of [`Index::refresh_batch`]: the documents changed in the batch past
    /// the cursor, read through their records (`None`: caught up).
    fn read_batch(&self, max_rows: i64) -> Result<Option<Batch>, StorageError> {
        let (cursor, log_end) = self.positions()?;
        if log_end <= cursor {
            return Ok(None);
        }
        let end = log_end.min(cursor.saturating_add(max_rows.max(1)));
        let docs: Vec<Vec<u8>> = self.db.rows(
            "SELECT DISTINCT doc FROM changes WHERE seq > ?1 AND seq <= ?2",
            &[&cursor, &end],
        )?;
        let ids: Vec<(Vec<u8>, HouseholdId)> = docs
            .into_iter()
            .filter_map(|raw| {
                let bytes = <[u8; 16]>::try_from(raw.as_slice()).ok()?;
                Some((
                    raw,
                    HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(bytes)),
                ))
            })
            .collect();
        let mut rows = Vec::with_capacity(ids.len());
        // The documents are loaded a piece at a time (a few round trips per piece on
        // PostgreSQL, not a few per household), so at most a piece's stored bytes are held at once.
        for piece in ids.chunks(crate::sql::MANY) {
            let only: Vec<HouseholdId> = piece.iter().map(|(_, id)| *id).collect();
            let stored = self.storage.load_docs(&only)?;
            let timelines = self.storage.doc_timelines(&only)?;
            for (((raw, id), stored), timeline) in piece.iter().zip(stored).zip(timelines) {
                let Some(stored) = stored else {
                    continue;
                };
                // A document that does not load or read (or makes a reader panic) is left out
                // of the read model, with a warning: it is still in the log, and one household
                // must never stop the figures of every other. The server does not store such a
                // document (`qiaomen_protocol::integrity`), so this is defence in depth.
                let household = std::panic::catch_unwind(|| {
                    let _named = crate::panics::household(*id);
                    let mut doc = HouseholdDoc::load(&stored)?;
                    let h = doc.household()?;
                    let photos = doc.photos();
                    let cases = doc.cases();
                    Ok::<_, qiaomen_protocol::error::DocError>((
                        h,
                        doc.history_changes()?,
                        photos,
                        cases,
                    ))
                });
                match household {
                    Ok(Ok((h, steps, photos, cases))) => {
                        let arrivals = self.arrivals(steps)?;
                        let when = as_of(
                            &timeline.unwrap_or_default(),
                            h.grid.as_str(),
                            self.workflow.coverage.catch_up_days,
                        );
                        rows.push((raw.clone(), Some((h, when, arrivals, photos, cases))));
                    }
                    Ok(Err(_)) | Err(_) => {
                        tracing::warn!(household = %id, "a stored document does not read; not indexed");
                        rows.push((raw.clone(), None));
                    }
                }
            }
        }
        Ok(Some(Batch {
            cursor,
            end,
            log_end,
            rows,
        }))
    }

    /// The second step: the batch's rows and the cursor at its end, in one transaction, if
    /// the cursor is still where the batch began; returns whether it was. A handful of
    /// multi-row statements per table whatever the batch holds ([`Db::insert_many`]).
    fn write_batch(&self, batch: &Batch) -> Result<bool, StorageError> {
        let deadlines = &self.workflow.deadlines;
        let mut rows = Rows::default();
        for (raw, household) in &batch.rows {
            let Some((h, when, arrivals, photos, cases)) = household else {
                continue;
            };
            // Rows are derived by the protocol's pure functions; should one panic on a
            // household, that household's rows are left out, not the batch.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut one = rows_of(raw, h, when, arrivals, deadlines);
                one.photos = photos.iter().map(|p| photo_row(raw, p)).collect();
                one.cases = cases
                    .iter()
                    .map(|c| {
                        let day = workorder::day_of(c.raised_at_ms);
                        case_db_row(raw, h, when.grid_on(day).unwrap_or(h.grid.as_str()), c)
                    })
                    .collect();
                one
            })) {
                Ok(one) => rows.extend(one),
                Err(_) => {
                    tracing::warn!("a household's rows could not be derived; not indexed");
                }
            }
        }
        let keys: Vec<Owned> = batch
            .rows
            .iter()
            .map(|(raw, _)| Owned::Blob(raw.clone()))
            .collect();
        self.db.transaction(|tx| {
            if tx.execute(
                "UPDATE idx_cursor SET seq = ?2 WHERE seq = ?1",
                &[&batch.cursor, &batch.end],
            )? == 0
            {
                return Ok::<_, StorageError>(false);
            }
            for table in TABLES {
                tx.delete_in(table, "doc", &keys)?;
            }
            tx.insert_many(
                "INSERT INTO idx_households (doc, grid, door, status, tags, registered)",
                6,
                &rows.households,
            )?;
            tx.insert_many("INSERT INTO idx_spans (doc, since, grid)", 3, &rows.spans)?;
            tx.insert_many(
                "INSERT INTO idx_visits (doc, visit, grid, visit_day, outcome, worker, started_ms)",
                7,
                &rows.visits,
            )?;
            tx.insert_many(
                "INSERT INTO idx_orders (doc, demand, grid, door, status, tier, team, responsible,
                    source, category, urgency, raised_ms, done_ms, on_time, satisfaction, step,
                    step_due, chase_ups, bounces, reopened, external_ref)",
                21,
                &rows.orders,
            )?;
            tx.insert_many(
                "INSERT INTO idx_photos (doc, photo, hash, size, media_type, subject, visit,
                    demand, item, by_user, taken_ms, caption)",
                12,
                &rows.photos,
            )?;
            tx.insert_many(
                "INSERT INTO idx_cases (doc, case_id, grid, found_grid, door, ledger, kind,
                    visit, raised_by, raised_ms, due, state, steps)",
                13,
                &rows.cases,
            )?;
            Ok(true)
        })
    }

    /// When the server received the change that appended each step of each demand (by
    /// demand key), from the log: what lateness is judged by where a step's own time is
    /// earlier ([`workorder::replay_arrived`]).
    fn arrivals(
        &self,
        steps: std::collections::BTreeMap<String, Vec<Option<qiaomen_protocol::ChangeHash>>>,
    ) -> Result<Arrivals, StorageError> {
        let wanted: std::collections::BTreeSet<&qiaomen_protocol::ChangeHash> =
            steps.values().flatten().flatten().collect();
        let keys: Vec<Owned> = wanted
            .iter()
            .map(|h| Owned::Blob(h.as_ref().to_vec()))
            .collect();
        // A step from a phone whose clock agreed with the server's is taken at its word (made
        // offline, it is still on time): only the others have an arrival.
        let known: std::collections::HashMap<Vec<u8>, Option<i64>> = self
            .db
            .rows_in::<(Vec<u8>, i64, Option<bool>)>(
                "SELECT hash, received_ms, clock_ok FROM changes WHERE hash IN",
                &keys,
            )?
            .into_iter()
            .map(|(hash, at, ok)| (hash, (ok != Some(true)).then_some(at)))
            .collect();
        Ok(steps
            .into_iter()
            .map(|(key, hashes)| {
                let times = hashes
                    .iter()
                    .map(|h| {
                        h.as_ref()
                            .and_then(|h| known.get(h.as_ref()).copied().flatten())
                    })
                    .collect();
                (key, times)
            })
            .collect())
    }

    /// The households that are or have been in `grids` (each once), with what coverage needs
    /// and where they were when: a figure for a day counts a household in the grid it was in
    /// that day ([`HouseholdRow::grid_on`]).
    pub fn households(&self, grids: &[String]) -> Result<Vec<HouseholdRow>, StorageError> {
        let grids_json = serde_json::to_string(grids).expect("strings serialize");
        const OF_GRIDS: &str =
            "(SELECT doc FROM idx_spans WHERE grid IN (SELECT value FROM json_each(?1))
            UNION SELECT doc FROM idx_households WHERE grid IN (SELECT value FROM json_each(?1)))";
        let mut visits: std::collections::HashMap<Vec<u8>, Vec<(Day, VisitOutcome)>> =
            Default::default();
        let rows: Vec<(Vec<u8>, String, String)> = self.db.rows(
            &format!("SELECT doc, visit_day, outcome FROM idx_visits WHERE doc IN {OF_GRIDS}"),
            &[&grids_json],
        )?;
        for (doc, day, outcome) in rows {
            if let (Ok(day), Some(o)) = (day.parse(), outcome_from(&outcome)) {
                visits.entry(doc).or_default().push((day, o));
            }
        }
        let mut spans: std::collections::HashMap<Vec<u8>, Vec<(Day, String)>> = Default::default();
        let rows: Vec<(Vec<u8>, String, String)> = self.db.rows(
            &format!(
                "SELECT doc, since, grid FROM idx_spans WHERE doc IN {OF_GRIDS} ORDER BY doc, since"
            ),
            &[&grids_json],
        )?;
        for (doc, since, grid) in rows {
            if let Ok(since) = since.parse() {
                spans.entry(doc).or_default().push((since, grid));
            }
        }
        let rows: Vec<HouseholdDbRow> = self.db.rows(
            "SELECT doc, grid, door, status, tags, registered FROM idx_households
              WHERE doc IN (SELECT doc FROM idx_spans WHERE grid IN (SELECT value FROM json_each(?1)))
                 OR grid IN (SELECT value FROM json_each(?1))
              ORDER BY grid, door, doc",
            &[&grids_json],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (doc, grid, door, status, tags, registered) in rows {
            let Ok(bytes) = <[u8; 16]>::try_from(doc.as_slice()) else {
                continue;
            };
            let tags: Vec<(KeyGroup, Day, Option<Day>)> =
                serde_json::from_str(&tags).unwrap_or_default();
            let spans = spans.remove(&doc).unwrap_or_default();
            let visits = visits.remove(&doc).unwrap_or_default();
            out.push(HouseholdRow {
                id: HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(bytes)),
                grid,
                door,
                input: CoverageInput {
                    status: status_from(&status),
                    tags: tags
                        .into_iter()
                        .map(|(group, since, until)| TagSpan {
                            group,
                            since,
                            until,
                        })
                        .collect(),
                    visits,
                    registered: registered.and_then(|d| d.parse().ok()),
                },
                spans,
            });
        }
        Ok(out)
    }

    /// Every reference to photo `hash`, with the referring household's grid now.
    pub fn photo_refs(&self, hash: &str) -> Result<Vec<PhotoRef>, StorageError> {
        self.photos_where("p.hash = ?1 ORDER BY p.doc, p.photo", &hash)
    }

    /// The photo references of household `id`, oldest first.
    pub fn household_photos(&self, id: HouseholdId) -> Result<Vec<PhotoRef>, StorageError> {
        self.photos_where(
            "p.doc = ?1 ORDER BY p.taken_ms, p.photo",
            &id.0.as_bytes().to_vec(),
        )
    }

    /// The photo references of the households now in `grid`, oldest first.
    pub fn grid_photos(&self, grid: &str) -> Result<Vec<PhotoRef>, StorageError> {
        self.photos_where("h.grid = ?1 ORDER BY p.taken_ms, p.photo", &grid)
    }

    /// The photo references (with their household's grid) that `filter` (a `WHERE` clause
    /// and its order, over `p` the reference and `h` its household, one parameter) selects.
    fn photos_where(
        &self,
        filter: &str,
        param: &dyn crate::sql::Param,
    ) -> Result<Vec<PhotoRef>, StorageError> {
        let rows = self.db.map(
            &format!(
                "SELECT {PHOTO_COLUMNS} FROM idx_photos p JOIN idx_households h ON h.doc = p.doc
                  WHERE {filter}"
            ),
            &[param],
            photo_ref,
        )?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Visits of `grids` recorded for visit days in `from..=to`, per grid.
    pub fn visit_counts(
        &self,
        grids: &[String],
        from: Day,
        to: Day,
    ) -> Result<std::collections::BTreeMap<String, u64>, StorageError> {
        let mut out = std::collections::BTreeMap::new();
        for g in grids {
            let n: u64 = self.db.one(
                "SELECT count(*) FROM idx_visits WHERE grid = ?1 AND visit_day >= ?2 AND visit_day <= ?3",
                &[g, &from.to_string(), &to.to_string()],
            )?;
            out.insert(g.clone(), n);
        }
        Ok(out)
    }

    /// The work orders of `grids` (and, for team members, of `teams`).
    pub fn orders(
        &self,
        grids: &[String],
        teams: &[String],
    ) -> Result<Vec<OrderRow>, StorageError> {
        let mut out = Vec::new();
        for g in grids {
            out.extend(
                self.db
                    .map(&format!("{ORDER_SELECT} WHERE grid = ?1"), &[g], order_row)?,
            );
        }
        for t in teams {
            for row in self
                .db
                .map(&format!("{ORDER_SELECT} WHERE team = ?1"), &[t], order_row)?
            {
                if !grids.contains(&row.grid) {
                    out.push(row);
                }
            }
        }
        out.sort_by(|a, b| (a.raised_ms, &a.demand).cmp(&(b.raised_ms, &b.demand)));
        Ok(out)
    }

    /// The tracked cases of the households now in `grids` or found in them, oldest raised
    /// first (each once).
    pub fn cases(&self, grids: &[String]) -> Result<Vec<CaseRow>, StorageError> {
        let grids_json = serde_json::to_string(grids).expect("strings serialize");
        Ok(self.db.map(
            &format!(
                "{CASE_SELECT} WHERE grid IN (SELECT value FROM json_each(?1))
                    OR found_grid IN (SELECT value FROM json_each(?1))
                  ORDER BY raised_ms, case_id"
            ),
            &[&grids_json],
            case_row,
        )?)
    }

    /// The case with this id (one: case ids are fresh UUIDs; should two households hold the
    /// same, the first by household).
    pub fn case_with_id(&self, case: &str) -> Result<Option<CaseRow>, StorageError> {
        Ok(self
            .db
            .map(
                &format!("{CASE_SELECT} WHERE case_id = ?1 ORDER BY doc"),
                &[&case],
                case_row,
            )?
            .into_iter()
            .next())
    }

    /// Every demand id with the household holding it, oldest raised first (for the register
    /// of demand ids, [`crate::orders`]).
    pub fn demand_owners(&self) -> Result<Vec<(DemandId, HouseholdId)>, StorageError> {
        let rows: Vec<(String, Vec<u8>)> = self.db.rows(
            "SELECT demand, doc FROM idx_orders ORDER BY raised_ms, doc",
            &[],
        )?;
        let mut out = Vec::new();
        for (demand, doc) in rows {
            if let (Ok(d), Ok(bytes)) = (demand.parse(), <[u8; 16]>::try_from(doc.as_slice())) {
                out.push((
                    d,
                    HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(bytes)),
                ));
            }
        }
        Ok(out)
    }

    /// Every order with this demand id: one, but for two households that held the same id
    /// before ids were unique on the server.
    pub fn orders_with_id(&self, demand: &str) -> Result<Vec<OrderRow>, StorageError> {
        Ok(self.db.map(
            &format!("{ORDER_SELECT} WHERE demand = ?1 ORDER BY doc"),
            &[&demand],
            order_row,
        )?)
    }

    /// Whether an imported hotline order with this number exists already.
    pub fn has_external_ref(&self, reference: &str) -> Result<bool, StorageError> {
        Ok(self
            .db
            .row::<i64>(
                "SELECT 1 FROM idx_orders WHERE external_ref = ?1",
                &[&reference],
            )?
            .is_some())
    }

    /// The household of `grid` with this door number, if exactly one.
    pub fn household_by_door(
        &self,
        grid: &str,
        door: &str,
    ) -> Result<Option<HouseholdId>, StorageError> {
        let found: Vec<Vec<u8>> = self.db.rows(
            "SELECT doc FROM idx_households WHERE grid = ?1 AND door = ?2",
            &[&grid, &door],
        )?;
        Ok(match found.as_slice() {
            [one] => <[u8; 16]>::try_from(one.as_slice())
                .ok()
                .map(|b| HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(b))),
            _ => None,
        })
    }
}

/// Keeps the read model close to the log's end, so that reads rarely wait: every half second
/// (at once while behind) one batch of [`BATCH_ROWS`] changes, on a blocking thread, holding
/// the lock only for that batch. Runs until the runtime stops.
pub async fn refresh_in_background(index: std::sync::Arc<std::sync::Mutex<Index>>) {
    loop {
        let ix = index.clone();
        let caught_up = tokio::task::spawn_blocking(move || {
            // The read model's state is its tables, changed only in transactions: a panic
            // while the lock was held rolled its transaction back, so the lock is taken over.
            let mut ix = ix.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match ix.refresh_batch(BATCH_ROWS) {
                Ok((_, caught_up)) => caught_up,
                Err(e) => {
                    tracing::warn!(error = %e, "read model refresh failed; retrying");
                    true
                }
            }
        })
        .await
        .unwrap_or(true);
        if caught_up {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

const ORDER_SELECT: &str =
    "SELECT doc, demand, grid, door, status, tier, team, responsible, source,
    category, urgency, raised_ms, done_ms, on_time, satisfaction, step, step_due, chase_ups,
    bounces, reopened, external_ref FROM idx_orders";

fn order_row(r: &Row) -> Result<OrderRow, SqlError> {
    let doc: Vec<u8> = r.get(0)?;
    let household = <[u8; 16]>::try_from(doc.as_slice())
        .map(|b| qiaomen_protocol::ids::Uuid::from_bytes(b).to_string())
        .unwrap_or_default();
    Ok(OrderRow {
        household,
        demand: r.get(1)?,
        grid: r.get(2)?,
        door_number: r.get(3)?,
        status: r.get(4)?,
        tier: r.get(5)?,
        team: r.get(6)?,
        responsible: r.get(7)?,
        source: r.get(8)?,
        category: r.get(9)?,
        urgency: r.get(10)?,
        raised_ms: r.get(11)?,
        done_ms: r.get(12)?,
        on_time: r.get(13)?,
        satisfaction: r.get(14)?,
        step: r.get(15)?,
        step_due: r.get(16)?,
        chase_ups: r.get(17)?,
        bounces: r.get(18)?,
        reopened: r.get(19)?,
        external_ref: r.get(20)?,
        overdue: false,
    })
}

/// The read model's tables of household rows, each keyed by `doc`.
const TABLES: [&str; 6] = [
    "idx_households",
    "idx_visits",
    "idx_orders",
    "idx_spans",
    "idx_photos",
    "idx_cases",
];

/// An `idx_households` row: doc, grid, door, status, tags, registered.
type HouseholdDbRow = (Vec<u8>, String, String, String, String, Option<String>);

/// A batch of the log read for the read model: the cursor it began at, the row it ends at,
/// the log's end then, and each household changed in it with what its rows are made of
/// (`None`: it does not read, its rows are removed).
struct Batch {
    cursor: i64,
    end: i64,
    log_end: i64,
    rows: Vec<(Vec<u8>, Option<Read>)>,
}

/// A household as read for its rows: its record, its registration and grids over time,
/// when its demands' steps arrived, its photo references and its tracked cases.
type Read = (
    Household,
    AsOf,
    Arrivals,
    Vec<Photo>,
    Vec<qiaomen_protocol::ledger::Case>,
);

/// For each demand (by key), when the server received each step of its history.
type Arrivals = std::collections::BTreeMap<String, Vec<Option<i64>>>;

/// The rows of a batch, table by table, as values ([`Db::insert_many`]).
#[derive(Default)]
struct Rows {
    households: Vec<Vec<Owned>>,
    spans: Vec<Vec<Owned>>,
    visits: Vec<Vec<Owned>>,
    orders: Vec<Vec<Owned>>,
    photos: Vec<Vec<Owned>>,
    cases: Vec<Vec<Owned>>,
}

impl Rows {
    fn extend(&mut self, other: Rows) {
        self.households.extend(other.households);
        self.spans.extend(other.spans);
        self.visits.extend(other.visits);
        self.orders.extend(other.orders);
        self.photos.extend(other.photos);
        self.cases.extend(other.cases);
    }
}

/// A photo reference's row in `idx_photos`.
fn photo_row(raw: &[u8], p: &Photo) -> Vec<Owned> {
    let (visit, demand, item) = match &p.subject {
        PhotoSubject::Household => (None, None, None),
        PhotoSubject::Visit { visit } => (Some(visit.to_string()), None, None),
        PhotoSubject::Hazard { visit, item } | PhotoSubject::Dispute { visit, item } => {
            (Some(visit.to_string()), None, Some(i64::from(*item)))
        }
        PhotoSubject::DemandStep { demand, step } => {
            (None, Some(demand.to_string()), Some(i64::from(*step)))
        }
    };
    vec![
        Owned::Blob(raw.to_vec()),
        text(p.id.to_string()),
        text(p.hash.as_str()),
        int(i64::try_from(p.size).unwrap_or(i64::MAX)),
        text(p.media_type.code()),
        text(p.subject.code()),
        opt_text(visit),
        opt_text(demand),
        opt_int(item),
        text(p.by.to_string()),
        int(p.taken_at_ms),
        text(p.caption.as_str()),
    ]
}

fn text(s: impl Into<String>) -> Owned {
    Owned::Text(s.into())
}

fn opt_text(s: Option<impl Into<String>>) -> Owned {
    s.map_or(Owned::Null, text)
}

fn int(i: impl Into<i64>) -> Owned {
    Owned::Int(i.into())
}

fn opt_int(i: Option<impl Into<i64>>) -> Owned {
    i.map_or(Owned::Null, int)
}

/// A household's rows in every table (pure: derived by the protocol's functions).
fn rows_of(raw: &[u8], h: &Household, when: &AsOf, arrivals: &Arrivals, rules: &Deadlines) -> Rows {
    let doc = || Owned::Blob(raw.to_vec());
    let grid = h.grid.as_str();
    let input = CoverageInput::of(h);
    let tags: Vec<(KeyGroup, Day, Option<Day>)> = input
        .tags
        .iter()
        .map(|t| (t.group, t.since, t.until))
        .collect();
    let mut out = Rows::default();
    out.households.push(vec![
        doc(),
        text(grid),
        text(h.door_number.as_str()),
        text(h.status.code()),
        text(serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into())),
        text(when.registered.to_string()),
    ]);
    for (since, g) in &when.spans {
        out.spans
            .push(vec![doc(), text(since.to_string()), text(g.as_str())]);
    }
    let row = HouseholdRow {
        id: h.id,
        grid: grid.to_string(),
        door: String::new(),
        input: CoverageInput {
            registered: Some(when.registered),
            ..input
        },
        spans: when.spans.clone(),
    };
    for v in h.visits.values() {
        // Counted for the grid the household was in on the visit's day.
        out.visits.push(vec![
            doc(),
            text(v.id.to_string()),
            text(row.grid_on(v.visit_day)),
            text(v.visit_day.to_string()),
            text(v.outcome.code()),
            text(v.worker.to_string()),
            int(v.started_at_ms),
        ]);
    }
    for d in h.demands.values() {
        let arrived = arrivals
            .get(&d.id.to_string())
            .map_or(&[][..], Vec::as_slice);
        let o = workorder::replay_arrived(d, rules, arrived);
        let open = o.open_step();
        out.orders.push(vec![
            doc(),
            text(d.id.to_string()),
            text(grid),
            text(h.door_number.as_str()),
            text(o.status.code()),
            opt_text(o.tier.map(|t| t.code())),
            opt_text(o.unit.clone()),
            text(o.responsible.to_string()),
            opt_text(d.source.map(|s| s.code())),
            text(d.category.code()),
            text(d.urgency.code()),
            int(o.raised_ms),
            opt_int(o.done_ms),
            opt_int(o.resolved_on_time()),
            opt_text(o.satisfaction.map(|(s, _)| s.code())),
            opt_text(open.map(|s| s.kind.code())),
            opt_text(open.map(|s| s.due.to_string())),
            int(o.chase_ups),
            int(o.bounces),
            int(o.reopened),
            opt_text(d.external_ref.clone()),
        ]);
    }
    out
}

fn outcome_from(s: &str) -> Option<VisitOutcome> {
    VisitOutcome::from_code(s)
}

fn status_from(s: &str) -> HouseholdStatus {
    HouseholdStatus::from_code(s).unwrap_or(HouseholdStatus::Active)
}

#[cfg(test)]
mod tests {
    use qiaomen_protocol::{
        doc::Author,
        ids::{DeviceId, GridId, UserId},
        wire::DocChanges,
    };

    use super::*;
    use crate::access::testing::{Store, on_both_backends};
    use crate::ingest::{Ingestor, tests::upload};
    use crate::storage::conformance::Fixture;

    on_both_backends!(
        batches_catch_up_with_the_log_and_a_rebuild_gives_the_same_rows,
        a_projector_that_lost_its_batch_to_another_writes_nothing,
        two_projectors_at_once_reach_the_end_and_on_postgres_read_each_household_once,
    );

    impl Store {
        /// A read model on the store.
        fn index(&self) -> Index {
            match self {
                Store::Sqlite(dir) => Index::open(dir.path(), Workflow::default()).unwrap(),
                Store::Postgres(pg) => Index::on_postgres(&pg.handle(), Workflow::default()),
            }
        }
    }

    /// Runs `body` with a writer of the store's log.
    macro_rules! with_ingestor {
        ($s:expr, |$ingestor:ident| $body:expr) => {
            match $s {
                Store::Sqlite(dir) => {
                    let mut $ingestor =
                        Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
                    $body
                }
                Store::Postgres(pg) => {
                    let mut $ingestor = Ingestor::new(pg.handle(), Default::default());
                    $body
                }
            }
        };
    }

    fn author() -> Author {
        Author {
            user: UserId::new(),
            device: DeviceId::new(),
        }
    }

    fn created(i: usize, a: &Author) -> (HouseholdDoc, DocChanges) {
        let id = HouseholdId::new();
        let h = Household::new(id, GridId::new("g"), "村", format!("{i}"));
        let mut d = HouseholdDoc::create(&h, a, 0).unwrap();
        let changes = DocChanges {
            id,
            changes: d
                .changes_since(&[])
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            whole: None,
        };
        (d, changes)
    }

    /// The read model takes the log in batches, reports how far behind it is, and a rebuilt
    /// model (tables dropped) equals the incrementally kept one.
    fn batches_catch_up_with_the_log_and_a_rebuild_gives_the_same_rows(s: &Store) {
        let a = author();
        let docs: Vec<DocChanges> = (0..3).map(|i| created(i, &a).1).collect();
        let upload = crate::ingest::Upload {
            principal: None,
            docs,
            packing: None,
        };
        with_ingestor!(s, |ingestor| {
            let outcome = ingestor.process_group(&[&upload]).unwrap().remove(0);
            assert_eq!(outcome.accepted, 3);
        });
        let mut ix = s.index();
        assert_eq!(ix.behind().unwrap(), 3);
        assert_eq!(ix.refresh_batch(1).unwrap(), (1, false));
        assert_eq!(ix.behind().unwrap(), 2);
        assert_eq!(ix.households(&["g".into()]).unwrap().len(), 1);
        assert_eq!(ix.refresh().unwrap(), 2);
        assert_eq!(ix.behind().unwrap(), 0);
        let kept = ix.households(&["g".into()]).unwrap();
        assert_eq!(kept.len(), 3);
        ix.db
            .batch(
                "DELETE FROM idx_households; DELETE FROM idx_visits; DELETE FROM idx_orders;
                 UPDATE idx_cursor SET seq = 0;",
            )
            .unwrap();
        assert_eq!(ix.refresh().unwrap(), 3);
        assert_eq!(ix.households(&["g".into()]).unwrap(), kept);
    }

    /// Two projectors on one database (two servers): one reads a batch, the other takes the
    /// log further and writes first; the first then writes nothing, so neither the rows of
    /// the household nor the cursor go back to what it had read.
    fn a_projector_that_lost_its_batch_to_another_writes_nothing(s: &Store) {
        let a = author();
        let (mut doc, creation) = created(0, &a);
        let id = creation.id;
        let (_, edit) = doc
            .edit(&a, 10, |h| {
                h.door_number = "2".into();
                Ok(())
            })
            .unwrap();
        let edit = doc.change_bytes(&edit.unwrap()).unwrap();
        let (mut first, mut second) = (s.index(), s.index());
        with_ingestor!(s, |ingestor| {
            let stored = ingestor
                .process_group(&[&upload(
                    id,
                    creation.changes.iter().map(|c| c.to_vec()).collect(),
                )])
                .unwrap();
            assert_eq!(stored[0].accepted, 1);
            let late = first.read_batch(BATCH_ROWS).unwrap().expect("behind");
            assert_eq!(
                ingestor
                    .process_group(&[&upload(id, vec![edit.clone()])])
                    .unwrap()[0]
                    .accepted,
                1
            );
            assert_eq!(second.refresh().unwrap(), 1);
            assert!(!first.write_batch(&late).unwrap(), "the batch was taken");
        });
        let doors: Vec<String> = first
            .households(&["g".into()])
            .unwrap()
            .into_iter()
            .map(|h| h.door)
            .collect();
        assert_eq!(doors, ["2"], "the rows are the later projector's");
        assert_eq!(first.behind().unwrap(), 0, "the cursor did not go back");
        assert_eq!(first.refresh().unwrap(), 0);
        assert_eq!(second.refresh_batch(BATCH_ROWS).unwrap(), (0, true));
    }

    /// Two projectors refreshing at once in small batches (two servers on one database):
    /// both reach the log's end and the rows are every household's. On PostgreSQL the read
    /// model's lock makes them take turns (a projector waits while another holds it), so no
    /// household is read twice; on the embedded store (one server) a second projector may
    /// lose a batch and read it again.
    fn two_projectors_at_once_reach_the_end_and_on_postgres_read_each_household_once(s: &Store) {
        let a = author();
        let docs: Vec<DocChanges> = (0..40).map(|i| created(i, &a).1).collect();
        let upload = crate::ingest::Upload {
            principal: None,
            docs,
            packing: None,
        };
        with_ingestor!(s, |ingestor| {
            assert_eq!(ingestor.process_group(&[&upload]).unwrap()[0].accepted, 40);
        });
        if matches!(s, Store::Postgres(_)) {
            // While another server holds the read model's lock, a projector waits: the log
            // stays unread until the holder lets go, then the waiting one takes it all.
            let (holder, observer) = (s.index(), s.index());
            let (held, is_held) = std::sync::mpsc::channel();
            let (release, released) = std::sync::mpsc::channel::<()>();
            std::thread::scope(|sc| {
                sc.spawn(move || {
                    holder
                        .db
                        .exclusive(crate::storage::postgres::PROJECTOR_LOCK, |_| {
                            held.send(()).unwrap();
                            let _ = released.recv_timeout(std::time::Duration::from_secs(10));
                            Ok::<_, SqlError>(())
                        })
                        .unwrap()
                });
                is_held.recv().unwrap();
                let waiting = sc.spawn(|| s.index().refresh().unwrap());
                std::thread::sleep(std::time::Duration::from_millis(300));
                assert_eq!(
                    observer.behind().unwrap(),
                    40,
                    "nothing projected past the lock"
                );
                release.send(()).unwrap();
                assert_eq!(waiting.join().unwrap(), 40);
            });
            s.index()
                .db
                .batch(
                    "DELETE FROM idx_households; DELETE FROM idx_visits; DELETE FROM idx_orders;
                     DELETE FROM idx_spans; UPDATE idx_cursor SET seq = 0;",
                )
                .unwrap();
        }
        let (mut first, mut second) = (s.index(), s.index());
        let start = std::sync::Barrier::new(2);
        let until_caught_up = |ix: &mut Index| {
            start.wait();
            let mut read = 0;
            loop {
                let (n, caught_up) = ix.refresh_batch(3).unwrap();
                read += n;
                if caught_up {
                    return read;
                }
            }
        };
        let (one, two) = std::thread::scope(|sc| {
            let one = sc.spawn(|| until_caught_up(&mut first));
            let two = sc.spawn(|| until_caught_up(&mut second));
            (one.join().unwrap(), two.join().unwrap())
        });
        assert_eq!(first.behind().unwrap(), 0);
        assert_eq!(first.households(&["g".into()]).unwrap().len(), 40);
        if matches!(s, Store::Postgres(_)) {
            assert_eq!(one + two, 40, "each household read once: {one} + {two}");
        } else {
            assert!(one + two >= 40, "{one} + {two}");
        }
    }
}
