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
    schema::{Household, HouseholdStatus, KeyGroup, TagSpan, VisitOutcome},
    vocab::Term,
    workorder::{self, Deadlines},
};
use serde::{Deserialize, Serialize};

use crate::sql::{Db, Row, SqlError};
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
        self.spans
            .iter()
            .rev()
            .find(|(since, _)| *since <= day)
            .or(self.spans.first())
            .map_or(self.grid.as_str(), |(_, g)| g.as_str())
    }
}

/// When a household counts, and where, as the log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsOf {
    pub registered: Day,
    /// (from that day on, grid), oldest first.
    pub spans: Vec<(Day, String)>,
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
    /// Several projectors may run at once (one per server on one database): the batch's
    /// transaction first moves the cursor from where this projector read it to the batch's
    /// end, and finds nothing to move if another projector took the batch meanwhile; then it
    /// writes nothing (its documents may be older than what the other wrote) and reports
    /// not caught up, so the caller reads on from the new cursor. The cursor only moves
    /// forward, and the rows of a household are those of the last batch that read it.
    pub fn refresh_batch(&mut self, max_rows: i64) -> Result<(usize, bool), StorageError> {
        let Some(batch) = self.read_batch(max_rows)? else {
            return Ok((0, true));
        };
        let (n, caught_up) = (batch.rows.len(), batch.end == batch.log_end);
        if !self.write_batch(&batch)? {
            return Ok((0, false));
        }
        Ok((n, caught_up))
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
        let mut rows = Vec::with_capacity(docs.len());
        for raw in &docs {
            let Ok(bytes) = <[u8; 16]>::try_from(raw.as_slice()) else {
                continue;
            };
            let id = HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(bytes));
            let Some(stored) = self.storage.load_doc(id)? else {
                continue;
            };
            // A document that does not load or read (or makes a reader panic) is left out of
            // the read model, with a warning: it is still in the log, and one household must
            // never stop the figures of every other. The server does not store such a
            // document (`qiaomen_protocol::integrity`), so this is defence in depth.
            let household = std::panic::catch_unwind(|| {
                let _named = crate::panics::household(id);
                let mut doc = HouseholdDoc::load(&stored)?;
                let h = doc.household()?;
                Ok::<_, qiaomen_protocol::error::DocError>((h, doc.history_changes()?))
            });
            match household {
                Ok(Ok((h, steps))) => {
                    let arrivals = self.arrivals(steps)?;
                    let timeline = self.storage.doc_timeline(id)?.unwrap_or_default();
                    let when = as_of(
                        &timeline,
                        h.grid.as_str(),
                        self.workflow.coverage.catch_up_days,
                    );
                    rows.push((raw.clone(), Some((h, when, arrivals))));
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(household = %id, "a stored document does not read; not indexed");
                    rows.push((raw.clone(), None));
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
    /// the cursor is still where the batch began; returns whether it was.
    fn write_batch(&self, batch: &Batch) -> Result<bool, StorageError> {
        let deadlines = &self.workflow.deadlines;
        self.db.transaction(|tx| {
            if tx.execute(
                "UPDATE idx_cursor SET seq = ?2 WHERE seq = ?1",
                &[&batch.cursor, &batch.end],
            )? == 0
            {
                return Ok::<_, StorageError>(false);
            }
            for (raw, household) in &batch.rows {
                clear_rows(tx, raw)?;
                if let Some((h, when, arrivals)) = household {
                    // Rows are derived by the protocol's pure functions; should one panic on
                    // a household, that household's rows are left out, not the batch.
                    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_rows(tx, raw, h, when, arrivals, deadlines)
                    }));
                    match written {
                        Ok(r) => r?,
                        Err(_) => {
                            tracing::warn!("a household's rows could not be derived; not indexed");
                            clear_rows(tx, raw)?;
                        }
                    }
                }
            }
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
        let mut known: std::collections::HashMap<qiaomen_protocol::ChangeHash, Option<i64>> =
            Default::default();
        let mut out = Arrivals::new();
        for (key, hashes) in steps {
            let mut times = Vec::with_capacity(hashes.len());
            for hash in hashes {
                times.push(match hash {
                    Some(h) => match known.get(&h) {
                        Some(t) => *t,
                        None => {
                            // A step from a phone whose clock agreed with the server's is
                            // taken at its word (made offline, it is still on time).
                            let t = self
                                .db
                                .row::<(i64, Option<bool>)>(
                                    "SELECT received_ms, clock_ok FROM changes WHERE hash = ?1",
                                    &[&h.as_ref()],
                                )?
                                .and_then(|(at, ok)| (ok != Some(true)).then_some(at));
                            known.insert(h, t);
                            t
                        }
                    },
                    None => None,
                });
            }
            out.insert(key, times);
        }
        Ok(out)
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

/// Removes a household's rows from every table of the read model.
fn clear_rows(tx: &Db, raw: &[u8]) -> Result<(), SqlError> {
    for table in ["idx_households", "idx_visits", "idx_orders", "idx_spans"] {
        tx.execute(&format!("DELETE FROM {table} WHERE doc = ?1"), &[&raw])?;
    }
    Ok(())
}

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

/// A household as read for its rows: its record, its registration and grids over time, and
/// when its demands' steps arrived.
type Read = (Household, AsOf, Arrivals);

/// For each demand (by key), when the server received each step of its history.
type Arrivals = std::collections::BTreeMap<String, Vec<Option<i64>>>;

fn write_rows(
    tx: &Db,
    raw: &[u8],
    h: &Household,
    when: &AsOf,
    arrivals: &Arrivals,
    rules: &Deadlines,
) -> Result<(), SqlError> {
    let grid = h.grid.as_str();
    let input = CoverageInput::of(h);
    let tags: Vec<(KeyGroup, Day, Option<Day>)> = input
        .tags
        .iter()
        .map(|t| (t.group, t.since, t.until))
        .collect();
    tx.execute(
        "INSERT INTO idx_households (doc, grid, door, status, tags, registered)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            &raw,
            &grid,
            &h.door_number,
            &h.status.code(),
            &serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into()),
            &when.registered.to_string(),
        ],
    )?;
    for (since, g) in &when.spans {
        tx.execute(
            "INSERT INTO idx_spans (doc, since, grid) VALUES (?1, ?2, ?3)",
            &[&raw, &since.to_string(), g],
        )?;
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
        tx.execute(
            "INSERT INTO idx_visits (doc, visit, grid, visit_day, outcome, worker, started_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &[
                &raw,
                &v.id.to_string(),
                &row.grid_on(v.visit_day),
                &v.visit_day.to_string(),
                &v.outcome.code(),
                &v.worker.to_string(),
                &v.started_at_ms,
            ],
        )?;
    }
    for d in h.demands.values() {
        let arrived = arrivals
            .get(&d.id.to_string())
            .map_or(&[][..], Vec::as_slice);
        let o = workorder::replay_arrived(d, rules, arrived);
        let open = o.open_step();
        tx.execute(
            "INSERT INTO idx_orders (doc, demand, grid, door, status, tier, team, responsible, source,
                category, urgency, raised_ms, done_ms, on_time, satisfaction, step, step_due,
                chase_ups, bounces, reopened, external_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                ?19, ?20, ?21)",
            &[
                &raw,
                &d.id.to_string(),
                &grid,
                &h.door_number,
                &o.status.code(),
                &o.tier.map(|t| t.code()),
                &o.unit,
                &o.responsible.to_string(),
                &d.source.map(|s| s.code()),
                &d.category.code(),
                &d.urgency.code(),
                &o.raised_ms,
                &o.done_ms,
                &o.resolved_on_time(),
                &o.satisfaction.map(|(s, _)| s.code()),
                &open.map(|s| s.kind.code()),
                &open.map(|s| s.due.to_string()),
                &o.chase_ups,
                &o.bounces,
                &o.reopened,
                &d.external_ref,
            ],
        )?;
    }
    Ok(())
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
}
