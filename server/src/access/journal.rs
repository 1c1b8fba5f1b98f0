//! Events and work logs (SYNC-v1 §13.12) as the server keeps them: one row per entry, stored
//! once under its id (a second send is the same entry), never edited. What a supervisor sees
//! and counts of them comes from here.

use qiaomen_protocol::{
    ids::{DeviceId, UserId},
    journal::JournalEntry,
};
use serde::Serialize;

use super::{AccessDb, Result, now_ms};

/// The journal (migration 19 of the embedded store).
pub const JOURNAL_SCHEMA: &str = r#"
CREATE TABLE journal (
    id          TEXT PRIMARY KEY,
    grid        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    event_kind  TEXT,
    day         TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    by_user     TEXT NOT NULL,
    device      TEXT NOT NULL,
    place       TEXT NOT NULL,
    lat         REAL,
    lon         REAL,
    detail      TEXT NOT NULL,
    order_id    TEXT,
    order_household TEXT,
    dispatched_by TEXT,
    dispatched_ms INTEGER,
    case_id     TEXT,
    case_household TEXT
);
CREATE INDEX journal_grid ON journal (grid, day);
CREATE TABLE journal_photos (
    entry      TEXT NOT NULL REFERENCES journal (id),
    pos        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    taken_ms   INTEGER NOT NULL,
    caption    TEXT NOT NULL,
    PRIMARY KEY (entry, pos)
);
CREATE INDEX journal_photos_hash ON journal_photos (hash);
"#;

/// [`JOURNAL_SCHEMA`] in PostgreSQL's types (migration 11 of PostgreSQL).
pub const JOURNAL_SCHEMA_PG: &str = r#"
CREATE TABLE journal (
    id          TEXT PRIMARY KEY,
    grid        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    event_kind  TEXT,
    day         TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    by_user     TEXT NOT NULL,
    device      TEXT NOT NULL,
    place       TEXT NOT NULL,
    lat         DOUBLE PRECISION,
    lon         DOUBLE PRECISION,
    detail      TEXT NOT NULL,
    order_id    TEXT,
    order_household TEXT,
    dispatched_by TEXT,
    dispatched_ms BIGINT,
    case_id     TEXT,
    case_household TEXT
);
CREATE INDEX journal_grid ON journal (grid, day);
CREATE TABLE journal_photos (
    entry      TEXT NOT NULL REFERENCES journal (id),
    pos        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    taken_ms   BIGINT NOT NULL,
    caption    TEXT NOT NULL,
    PRIMARY KEY (entry, pos)
);
CREATE INDEX journal_photos_hash ON journal_photos (hash);
"#;

/// An entry as the server holds it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JournalRow {
    pub id: String,
    pub grid: String,
    /// `event` or `work_log` (vocabulary `journal_kind`).
    pub kind: String,
    /// An event's kind (vocabulary `event_kind`).
    pub event_kind: Option<String>,
    pub day: String,
    pub at_ms: i64,
    pub received_ms: i64,
    pub by: String,
    pub place: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub detail: String,
    /// The work order an event was dispatched as: its demand id and household.
    pub order: Option<String>,
    pub order_household: Option<String>,
    /// The ledger case an event is tracked as: its id and household.
    pub case: Option<String>,
    pub case_household: Option<String>,
    /// Its photos' hashes, in the order taken (`/v1/photos/{hash}`).
    pub photos: Vec<String>,
}

/// A photo an entry refers to: the entry, its grid, the photo's size and media type code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalPhoto {
    pub entry: String,
    pub grid: String,
    pub size: u64,
    pub media_type: String,
}

/// The columns of a [`JournalRow`], in its order.
const ROW: &str = "id, grid, kind, event_kind, day, at_ms, received_ms, by_user, place, lat, lon,
    detail, order_id, order_household, case_id, case_household";

fn journal_row(r: &crate::sql::Row) -> std::result::Result<JournalRow, crate::sql::SqlError> {
    Ok(JournalRow {
        id: r.get(0)?,
        grid: r.get(1)?,
        kind: r.get(2)?,
        event_kind: r.get(3)?,
        day: r.get(4)?,
        at_ms: r.get(5)?,
        received_ms: r.get(6)?,
        by: r.get(7)?,
        place: r.get(8)?,
        lat: r.get(9)?,
        lon: r.get(10)?,
        detail: r.get(11)?,
        order: r.get(12)?,
        order_household: r.get(13)?,
        case: r.get(14)?,
        case_household: r.get(15)?,
        photos: Vec::new(),
    })
}

/// How many events and work logs a grid counts over a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalCounts {
    pub events: u64,
    pub work_logs: u64,
}

impl AccessDb {
    /// Stores `entries` (already judged) as `user`'s on `device`, in one transaction; an entry
    /// whose id is stored already is left as it was.
    pub fn store_journal(
        &self,
        user: UserId,
        device: DeviceId,
        entries: &[JournalEntry],
    ) -> Result<()> {
        let (user, device, now) = (user.to_string(), device.to_string(), now_ms());
        self.db.transaction(|tx| {
            for e in entries {
                let (lat, lon) = (e.gps.map(|g| g[0]), e.gps.map(|g| g[1]));
                let kept = tx.execute(
                    "INSERT INTO journal (id, grid, kind, event_kind, day, at_ms, received_ms,
                        by_user, device, place, lat, lon, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &e.id.to_string(),
                        &e.grid,
                        &e.kind,
                        &e.event_kind,
                        &e.day,
                        &e.at_ms,
                        &now,
                        &user,
                        &device,
                        &e.place,
                        &lat,
                        &lon,
                        &e.detail,
                    ],
                )?;
                // An entry's photos are stored with it, once: a resend changes nothing.
                if kept == 1 {
                    for (pos, p) in e.photos.iter().enumerate() {
                        tx.execute(
                            "INSERT INTO journal_photos (entry, pos, hash, size, media_type,
                                taken_ms, caption) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            &[
                                &e.id.to_string(),
                                &(pos as i64),
                                &p.hash,
                                &(p.size as i64),
                                &p.media_type.code(),
                                &p.taken_at_ms,
                                &p.caption,
                            ],
                        )?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The entries of `grids` of days `from..=to` (`YYYY-MM-DD`), newest first.
    pub fn journal(&self, grids: &[String], from: &str, to: &str) -> Result<Vec<JournalRow>> {
        let grids = serde_json::to_string(grids).expect("strings serialize");
        let mut rows = self.db.map(
            &format!(
                "SELECT {ROW} FROM journal WHERE grid IN (SELECT value FROM json_each(?1))
                    AND day >= ?2 AND day <= ?3
                  ORDER BY day DESC, at_ms DESC, id"
            ),
            &[&grids, &from, &to],
            journal_row,
        )?;
        let photos: Vec<(String, String)> = self.db.rows(
            "SELECT p.entry, p.hash FROM journal_photos p JOIN journal j ON j.id = p.entry
              WHERE j.grid IN (SELECT value FROM json_each(?1)) AND j.day >= ?2 AND j.day <= ?3
              ORDER BY p.entry, p.pos",
            &[&grids, &from, &to],
        )?;
        let mut by_entry: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (entry, hash) in photos {
            by_entry.entry(entry).or_default().push(hash);
        }
        for r in &mut rows {
            r.photos = by_entry.remove(&r.id).unwrap_or_default();
        }
        Ok(rows)
    }

    /// The entries that refer to photo `hash`.
    pub fn journal_photos(&self, hash: &str) -> Result<Vec<JournalPhoto>> {
        let rows: Vec<(String, String, i64, String)> = self.db.rows(
            "SELECT p.entry, j.grid, p.size, p.media_type FROM journal_photos p
               JOIN journal j ON j.id = p.entry WHERE p.hash = ?1 ORDER BY p.entry",
            &[&hash],
        )?;
        Ok(rows
            .into_iter()
            .map(|(entry, grid, size, media_type)| JournalPhoto {
                entry,
                grid,
                size: size as u64,
                media_type,
            })
            .collect())
    }

    /// One entry.
    pub fn journal_entry(&self, id: &str) -> Result<Option<JournalRow>> {
        Ok(self
            .db
            .map(
                &format!("SELECT {ROW} FROM journal WHERE id = ?1"),
                &[&id],
                journal_row,
            )?
            .pop())
    }

    /// Notes that event `id` was dispatched as demand `order` of `household` by `by`; false
    /// (and nothing changed) if it was dispatched already.
    pub fn set_journal_order(
        &self,
        id: &str,
        order: &str,
        household: &str,
        by: UserId,
    ) -> Result<bool> {
        let (by, now) = (by.to_string(), now_ms());
        Ok(self.db.execute(
            "UPDATE journal SET order_id = ?2, order_household = ?3, dispatched_by = ?4,
                    dispatched_ms = ?5
              WHERE id = ?1 AND order_id IS NULL",
            &[&id, &order, &household, &by, &now],
        )? == 1)
    }

    /// Notes that event `id` is tracked as case `case` of `household`; false (and nothing
    /// changed) if it was already.
    pub fn set_journal_case(&self, id: &str, case: &str, household: &str) -> Result<bool> {
        Ok(self.db.execute(
            "UPDATE journal SET case_id = ?2, case_household = ?3 WHERE id = ?1 AND case_id IS NULL",
            &[&id, &case, &household],
        )? == 1)
    }

    /// Per grid of `grids`, the events and work logs of days `from..=to` that the server had
    /// received by `received_by_ms` (so an entry sent after the period's catch-up window never
    /// changes its figures).
    pub fn journal_counts(
        &self,
        grids: &[String],
        (from, to): (&str, &str),
        received_by_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, JournalCounts>> {
        let grids = serde_json::to_string(grids).expect("strings serialize");
        let rows: Vec<(String, String, i64)> = self.db.rows(
            "SELECT grid, kind, COUNT(*) FROM journal
              WHERE grid IN (SELECT value FROM json_each(?1)) AND day >= ?2 AND day <= ?3
                AND received_ms <= ?4
              GROUP BY grid, kind",
            &[&grids, &from, &to, &received_by_ms],
        )?;
        let mut out = std::collections::BTreeMap::<String, JournalCounts>::new();
        for (grid, kind, n) in rows {
            let c = out.entry(grid).or_default();
            let n = u64::try_from(n).unwrap_or(0);
            match kind.as_str() {
                "event" => c.events += n,
                "work_log" => c.work_logs += n,
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use qiaomen_protocol::ids::JournalId;

    use super::*;
    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(entries_are_stored_once_counted_by_day_and_arrival_and_dispatched_once);

    fn entry(grid: &str, kind: &str, day: &str) -> JournalEntry {
        JournalEntry {
            id: JournalId::new(),
            grid: grid.into(),
            kind: kind.into(),
            event_kind: (kind == "event").then(|| "road".to_string()),
            day: day.into(),
            at_ms: 1,
            place: String::new(),
            gps: None,
            detail: "路灯不亮".into(),
            photos: vec![],
        }
    }

    fn entries_are_stored_once_counted_by_day_and_arrival_and_dispatched_once(s: &Store) {
        let db = s.open();
        let (user, device) = (UserId::new(), DeviceId::new());
        let first = entry("g1", "event", "2026-12-01");
        let batch = vec![
            first.clone(),
            entry("g1", "work_log", "2026-12-01"),
            entry("g1", "event", "2026-12-02"),
            entry("g2", "event", "2026-12-01"),
        ];
        db.store_journal(user, device, &batch).unwrap();
        // A resend changes nothing, even with another text under the same id.
        let altered = JournalEntry {
            detail: "改过的".into(),
            ..first.clone()
        };
        db.store_journal(user, device, &[altered]).unwrap();
        let stored = db.journal_entry(&first.id.to_string()).unwrap().unwrap();
        assert_eq!(stored.detail, "路灯不亮");
        let grids = vec!["g1".to_string()];
        let listed = db.journal(&grids, "2026-12-01", "2026-12-01").unwrap();
        assert_eq!(listed.len(), 2);
        let counts = |from, to, by| db.journal_counts(&grids, (from, to), by).unwrap();
        let now = now_ms() + 1;
        assert_eq!(
            counts("2026-12-01", "2026-12-01", now).get("g1").copied(),
            Some(JournalCounts {
                events: 1,
                work_logs: 1
            })
        );
        assert_eq!(
            counts("2026-12-01", "2026-12-02", now)["g1"],
            JournalCounts {
                events: 2,
                work_logs: 1
            }
        );
        // Nothing had arrived by a moment before they were stored.
        assert!(counts("2026-12-01", "2026-12-02", stored.received_ms - 1).is_empty());
        // Dispatched once; the second attempt changes nothing.
        let id = first.id.to_string();
        assert!(db.set_journal_order(&id, "d1", "h1", user).unwrap());
        assert!(!db.set_journal_order(&id, "d2", "h2", user).unwrap());
        let e = db.journal_entry(&id).unwrap().unwrap();
        assert_eq!(
            (e.order.as_deref(), e.order_household.as_deref()),
            (Some("d1"), Some("h1"))
        );
    }
}
