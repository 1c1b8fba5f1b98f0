//! Weekly task lists (周清单): the command centre (or a town supervisor) pushes a list of tasks
//! for a week to grids; each grid's worker marks each task done on the phone — offline, with
//! evidence — and the phone sends it at its next sync. Completion is per grid and per task:
//! the first report wins, a repeat is answered with what is stored (so a retried request is
//! harmless).
//!
//! The lists are org work, not residents' records: they live in the server's own tables
//! (migration 5 of the store), next to the org, and travel over the JSON API (the phone library
//! calls it with its device token after each sync), not in household documents.

use std::collections::BTreeSet;

use qiaomen_protocol::{
    calendar::Day,
    ids::{DeviceId, UserId},
    photo::{MediaType, ReportPhoto},
};
use serde::Serialize;

use crate::access::{AccessDb, AccessError, Result, now_ms};
use crate::sql::{Row, SqlError};

/// The store's tables for task lists.
pub const TASKS_SCHEMA: &str = r#"
CREATE TABLE task_lists (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    week_start TEXT NOT NULL,
    due        TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE task_items (
    list TEXT NOT NULL REFERENCES task_lists (id),
    idx  INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (list, idx)
) WITHOUT ROWID;
CREATE TABLE task_targets (
    list TEXT NOT NULL REFERENCES task_lists (id),
    grid TEXT NOT NULL,
    PRIMARY KEY (list, grid)
) WITHOUT ROWID;
CREATE INDEX task_targets_grid ON task_targets (grid);
CREATE TABLE task_done (
    list        TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    grid        TEXT NOT NULL,
    user        TEXT NOT NULL,
    device      TEXT,
    done_ms     INTEGER NOT NULL,
    evidence    TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (list, idx, grid),
    FOREIGN KEY (list, grid) REFERENCES task_targets (list, grid)
) WITHOUT ROWID;
"#;

/// The photos of task reports (SYNC-v1 §14.2): the references a report brought, stored with
/// it; the photo's bytes are taken in for these hashes (`service::photos::in_scope`).
pub const TASK_PHOTOS_SCHEMA: &str = r#"
CREATE TABLE task_photos (
    list       TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    grid       TEXT NOT NULL,
    pos        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    taken_ms   INTEGER NOT NULL,
    caption    TEXT NOT NULL,
    PRIMARY KEY (list, idx, grid, pos),
    FOREIGN KEY (list, idx, grid) REFERENCES task_done (list, idx, grid)
);
CREATE INDEX task_photos_hash ON task_photos (hash);
"#;

/// A task report's photo found by its hash: the grid it was reported for, and the photo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedPhoto {
    pub list: String,
    pub item: u32,
    pub grid: String,
    pub size: u64,
    /// `jpeg`, `png`, `webp`.
    pub media_type: String,
}

/// A task done in a grid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Done {
    pub grid: String,
    pub item: u32,
    pub user: String,
    pub device: Option<String>,
    pub done_ms: i64,
    /// What the worker recorded as evidence (free text; may name residents: shown, never
    /// logged).
    pub evidence: String,
    /// The report's photos, in the order it gave them (their bytes: `/v1/photos/{hash}`).
    #[schema(value_type = Vec<Object>)]
    pub photos: Vec<ReportPhoto>,
}

/// A task list with what each of its grids has done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TaskList {
    pub id: String,
    pub title: String,
    /// The Monday of the week.
    pub week_start: String,
    /// The last day the tasks are due.
    pub due: String,
    pub items: Vec<String>,
    /// The grids it was pushed to (those the caller may see).
    pub grids: Vec<String>,
    pub done: Vec<Done>,
}

impl TaskList {
    /// Done ÷ (tasks × grids), 1 for an empty list.
    pub fn completion(&self) -> f64 {
        let all = self.items.len() * self.grids.len();
        if all == 0 {
            1.0
        } else {
            self.done.len() as f64 / all as f64
        }
    }
}

/// A task's report: task `item` done in `grid`, by whom, when, with what evidence and photos.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    pub item: u32,
    pub grid: &'a str,
    /// The user, and the device when a phone sent it.
    pub by: (UserId, Option<DeviceId>),
    pub done_ms: i64,
    pub evidence: &'a str,
    pub photos: &'a [ReportPhoto],
}

/// A new list.
#[derive(Clone, Debug)]
pub struct NewList<'a> {
    pub title: &'a str,
    pub week_start: Day,
    pub due: Day,
    pub items: &'a [String],
    pub grids: &'a [String],
    pub by: UserId,
}

/// A `task_done` row selected as (grid, idx, user, device, done_ms, evidence).
fn done_row(r: &Row) -> std::result::Result<Done, SqlError> {
    Ok(Done {
        grid: r.get(0)?,
        item: r.get(1)?,
        user: r.get(2)?,
        device: r.get(3)?,
        done_ms: r.get(4)?,
        evidence: r.get(5)?,
        photos: Vec::new(),
    })
}

/// A `task_photos` row selected as (idx, grid, hash, size, media_type, taken_ms, caption).
fn photo_row(r: &Row) -> std::result::Result<(u32, String, ReportPhoto), SqlError> {
    let media: String = r.get(4)?;
    let media_type = MediaType::from_code(&media).unwrap_or(MediaType::Jpeg);
    Ok((
        r.get(0)?,
        r.get(1)?,
        ReportPhoto {
            hash: r.get(2)?,
            size: r.get::<i64>(3)? as u64,
            media_type,
            taken_at_ms: r.get(5)?,
            caption: r.get(6)?,
        },
    ))
}

fn invalid(message: &str) -> AccessError {
    AccessError::Invalid(message.into())
}

impl AccessDb {
    /// Stores a new task list for `grids`; returns its id.
    pub fn push_task_list(&mut self, new: &NewList<'_>) -> Result<String> {
        let title = new.title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(invalid("a title has 1-200 characters"));
        }
        if new.items.is_empty() || new.items.len() > 50 {
            return Err(invalid("a list has 1-50 tasks"));
        }
        if new
            .items
            .iter()
            .any(|t| t.trim().is_empty() || t.chars().count() > 500)
        {
            return Err(invalid("a task has 1-500 characters"));
        }
        if new.grids.is_empty() {
            return Err(invalid("the list goes to no grid the caller supervises"));
        }
        if new.due < new.week_start {
            return Err(invalid("due is before the week starts"));
        }
        let id = qiaomen_protocol::ids::Uuid::now_v7().to_string();
        self.in_transaction(|db| {
            db.db.execute(
                "INSERT INTO task_lists (id, title, week_start, due, created_by, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[
                    &id,
                    &title,
                    &new.week_start.to_string(),
                    &new.due.to_string(),
                    &new.by.to_string(),
                    &now_ms(),
                ],
            )?;
            for (i, text) in new.items.iter().enumerate() {
                db.db.execute(
                    "INSERT INTO task_items (list, idx, text) VALUES (?1, ?2, ?3)",
                    &[&id, &(i as i64), &text.trim()],
                )?;
            }
            for g in new.grids {
                db.db.execute(
                    "INSERT INTO task_targets (list, grid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    &[&id, g],
                )?;
            }
            Ok(())
        })?;
        Ok(id)
    }

    /// The lists pushed to any of `grids` whose week is not over before `since`, newest
    /// first, with only those grids and their completions. One query finds the lists however
    /// many grids there are (a command centre's device reads a county's; this runs on every
    /// sync, for the extras digest).
    pub fn task_lists(&self, grids: &BTreeSet<String>, since: Day) -> Result<Vec<TaskList>> {
        let codes = serde_json::to_string(grids).map_err(|e| invalid(&e.to_string()))?;
        let ids: Vec<String> = self.db.rows(
            "SELECT DISTINCT l.id FROM task_lists l JOIN task_targets t ON t.list = l.id
              WHERE t.grid IN (SELECT value FROM json_each(?1)) AND l.due >= ?2",
            &[&codes, &since.to_string()],
        )?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(l) = self.task_list(&id, grids)? {
                out.push(l);
            }
        }
        out.sort_by(|a, b| (&b.week_start, &b.id).cmp(&(&a.week_start, &a.id)));
        Ok(out)
    }

    /// One list, limited to the targets among `grids`; `None` if it reaches none of them.
    pub fn task_list(&self, id: &str, grids: &BTreeSet<String>) -> Result<Option<TaskList>> {
        let head: Option<(String, String, String)> = self.db.row(
            "SELECT title, week_start, due FROM task_lists WHERE id = ?1",
            &[&id],
        )?;
        let Some((title, week_start, due)) = head else {
            return Ok(None);
        };
        let targets: Vec<String> = self
            .db
            .rows::<String>(
                "SELECT grid FROM task_targets WHERE list = ?1 ORDER BY grid",
                &[&id],
            )?
            .into_iter()
            .filter(|g| grids.contains(g))
            .collect();
        if targets.is_empty() {
            return Ok(None);
        }
        let items: Vec<String> = self.db.rows(
            "SELECT text FROM task_items WHERE list = ?1 ORDER BY idx",
            &[&id],
        )?;
        let mut done: Vec<Done> = self
            .db
            .map(
                "SELECT grid, idx, \"user\", device, done_ms, evidence FROM task_done
                  WHERE list = ?1 ORDER BY grid, idx",
                &[&id],
                done_row,
            )?
            .into_iter()
            .filter(|d| targets.contains(&d.grid))
            .collect();
        let photos = self.db.map(
            "SELECT idx, grid, hash, size, media_type, taken_ms, caption FROM task_photos
              WHERE list = ?1 ORDER BY grid, idx, pos",
            &[&id],
            photo_row,
        )?;
        for (item, grid, photo) in photos {
            if let Some(d) = done.iter_mut().find(|d| d.item == item && d.grid == grid) {
                d.photos.push(photo);
            }
        }
        Ok(Some(TaskList {
            id: id.to_string(),
            title,
            week_start,
            due,
            items,
            grids: targets,
            done,
        }))
    }

    /// Records `report` of a task of list `id`, with its photos' references (checked by the
    /// caller: [`qiaomen_protocol::validate::task_report`]). The first report wins: a repeat
    /// (a retried request, or a second phone of the grid) returns what is stored, its photos
    /// included.
    pub fn complete_task(&mut self, id: &str, report: &Report<'_>) -> Result<Done> {
        if report.evidence.chars().count() > 2000 {
            return Err(invalid("evidence has at most 2000 characters"));
        }
        self.in_transaction(|db| db.complete_task_in(id, report))
    }

    fn complete_task_in(&self, id: &str, report: &Report<'_>) -> Result<Done> {
        let Report {
            item,
            grid,
            by: (user, device),
            done_ms,
            evidence,
            photos,
        } = *report;
        let targeted = self
            .db
            .row::<i64>(
                "SELECT 1 FROM task_targets t JOIN task_items i ON i.list = t.list
                  WHERE t.list = ?1 AND t.grid = ?2 AND i.idx = ?3",
                &[&id, &grid, &item],
            )?
            .is_some();
        if !targeted {
            return Err(AccessError::NotFound("task of this grid"));
        }
        // A time in the future counts as now.
        let done_ms = done_ms.min(now_ms());
        let kept = self.db.execute(
            "INSERT INTO task_done (list, idx, grid, \"user\", device, done_ms, evidence, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            &[
                &id,
                &item,
                &grid,
                &user.to_string(),
                &device.map(|d| d.to_string()),
                &done_ms,
                &evidence.trim(),
                &now_ms(),
            ],
        )?;
        if kept == 1 {
            for (pos, p) in photos.iter().enumerate() {
                self.db.execute(
                    "INSERT INTO task_photos (list, idx, grid, pos, hash, size, media_type, taken_ms, caption)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    &[
                        &id,
                        &item,
                        &grid,
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
        let mut done = self
            .db
            .map(
                "SELECT grid, idx, \"user\", device, done_ms, evidence FROM task_done
                  WHERE list = ?1 AND idx = ?2 AND grid = ?3",
                &[&id, &item, &grid],
                done_row,
            )?
            .into_iter()
            .next()
            .ok_or(AccessError::Sql(SqlError::NoRow))?;
        done.photos = self
            .db
            .map(
                "SELECT idx, grid, hash, size, media_type, taken_ms, caption FROM task_photos
                  WHERE list = ?1 AND idx = ?2 AND grid = ?3 ORDER BY pos",
                &[&id, &item, &grid],
                photo_row,
            )?
            .into_iter()
            .map(|(_, _, p)| p)
            .collect();
        Ok(done)
    }

    /// The task reports that hold the photo `hash`, by list, task and grid.
    pub fn reported_photos(&self, hash: &str) -> Result<Vec<ReportedPhoto>> {
        let rows: Vec<(String, u32, String, i64, String)> = self.db.rows(
            "SELECT list, idx, grid, size, media_type FROM task_photos WHERE hash = ?1
              ORDER BY list, idx, grid",
            &[&hash],
        )?;
        Ok(rows
            .into_iter()
            .map(|(list, item, grid, size, media_type)| ReportedPhoto {
                list,
                item,
                grid,
                size: size as u64,
                media_type,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(a_list_reaches_its_grids_and_the_first_report_of_a_task_wins);

    /// A report of task `item` in `grid` by `by`'s phone-less session, at 1 s after the epoch.
    fn report<'a>(
        by: UserId,
        item: u32,
        grid: &'a str,
        evidence: &'a str,
        photos: &'a [ReportPhoto],
    ) -> Report<'a> {
        Report {
            item,
            grid,
            by: (by, None),
            done_ms: 1_000,
            evidence,
            photos,
        }
    }

    fn a_list_reaches_its_grids_and_the_first_report_of_a_task_wins(s: &Store) {
        let mut db = s.open();
        let by = db.add_user("sup", "李").unwrap();
        let worker = db.add_user("w", "王").unwrap();
        let day = |d: &str| d.parse::<Day>().unwrap();
        let grids = ["g1".to_string(), "g2".to_string()];
        let id = db
            .push_task_list(&NewList {
                title: "防诈宣传",
                week_start: day("2026-11-30"),
                due: day("2026-12-06"),
                items: &["张贴海报".to_string(), "入户讲解".to_string()],
                grids: &grids,
                by,
            })
            .unwrap();
        let g1 = BTreeSet::from(["g1".to_string()]);
        let lists = db.task_lists(&g1, day("2026-12-01")).unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(
            lists[0].grids,
            vec!["g1".to_string()],
            "only the caller's grids"
        );
        assert_eq!(lists[0].items.len(), 2);
        assert!(
            db.task_lists(&g1, day("2026-12-07")).unwrap().is_empty(),
            "a week over is not listed"
        );
        assert!(
            db.task_lists(&BTreeSet::from(["g3".to_string()]), day("2026-12-01"))
                .unwrap()
                .is_empty()
        );
        // Two servers take the same report at once, with different evidence and photos: one
        // is kept, its photos with it, and both answers show it.
        let shot = |i: u8, caption: &str| ReportPhoto {
            hash: qiaomen_protocol::photo::hash_of(&[i]),
            size: 1_000 + u64::from(i),
            media_type: MediaType::Png,
            taken_at_ms: 900,
            caption: caption.into(),
        };
        let reports = [
            ("海报已贴", vec![shot(1, "门口"), shot(2, "楼道")]),
            ("贴好了", vec![shot(3, "")]),
        ];
        let answers: Vec<Done> = std::thread::scope(|scope| {
            let threads: Vec<_> = reports
                .iter()
                .map(|(evidence, photos)| {
                    let (mut db, id) = (s.open(), &id);
                    scope.spawn(move || {
                        db.complete_task(id, &report(worker, 0, "g1", evidence, photos))
                            .unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(answers[0], answers[1], "the first report wins on both");
        let winner = reports
            .iter()
            .find(|(e, _)| *e == answers[0].evidence)
            .expect("one of the two");
        assert_eq!(answers[0].photos, winner.1, "with its photos, in order");
        for (_, photos) in &reports {
            let found = db.reported_photos(&photos[0].hash).unwrap();
            if photos == &winner.1 {
                assert_eq!(
                    found,
                    vec![ReportedPhoto {
                        list: id.clone(),
                        item: 0,
                        grid: "g1".into(),
                        size: photos[0].size,
                        media_type: "png".into(),
                    }]
                );
            } else {
                assert!(found.is_empty(), "the losing report's photos are not held");
            }
        }
        let again = db
            .complete_task(&id, &report(worker, 0, "g1", "又一次", &[shot(9, "")]))
            .unwrap();
        assert_eq!(
            again, answers[0],
            "a repeat is answered with what is stored"
        );
        assert!(matches!(
            db.complete_task(&id, &report(worker, 0, "g3", "", &[])),
            Err(AccessError::NotFound(_))
        ));
        assert!(matches!(
            db.complete_task(&id, &report(worker, 9, "g1", "", &[])),
            Err(AccessError::NotFound(_))
        ));
        let list = db
            .task_list(&id, &BTreeSet::from(grids.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(list.done.len(), 1);
        assert_eq!(
            list.done[0].photos, winner.1,
            "the list shows the report's photos"
        );
        assert_eq!(list.completion(), 0.25);
    }
}
