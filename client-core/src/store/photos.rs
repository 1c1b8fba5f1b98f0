//! Photos on the phone (SYNC-v1 §14): attached to a record offline, kept by their hash inside
//! the store, sent after the records.
//!
//! A photo's bytes live in the `photos` table of the store's own SQLite file, not in the
//! household document (which holds only the reference, [`Photo`]) and not as loose files: so
//! they are encrypted with the store (a lost phone's photos of residents' homes are as
//! private as its records), and they are written in the same transaction as the change that
//! refers to them, so a photo and its reference are stored together or not at all.
//!
//! Each row says where the photo stands: `pending` (to upload), `sent` (the server holds it
//! whole), `fetched` (brought from the server on demand), `refused` (the server will never
//! take it, with its code; the bytes stay, as a refused change's content does). A photo is
//! uploaded only once the change that refers to it is acknowledged: the server takes bytes
//! only for a hash a stored record refers to, so records always go first.

use qiaomen_protocol::{
    DocError,
    ids::{HouseholdId, PhotoId},
    photo::{Photo, PhotoSubject, ReportPhoto},
};
use std::collections::{HashMap, HashSet, hash_map::Entry};

use rusqlite::{OptionalExtension, params};

use super::{IndexUpdate, Store};
use crate::error::{Result, StoreError};

/// A photo being attached: what the change's transaction keeps beside it.
pub(super) struct Attached {
    hash: String,
    bytes: Vec<u8>,
    media: &'static str,
}

/// Where a photo of this phone stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhotoState {
    /// Waiting to be sent (after the record that refers to it); `waiting`: why the server
    /// could not take it at the last try (`photo_quota`, `unknown_photo`, `rate_limited`).
    Pending { waiting: Option<String> },
    /// The server holds it whole.
    Sent,
    /// Brought from the server on demand.
    Fetched,
    /// The server will not take it: `code` says why (`hash_mismatch`, `media_type`,
    /// `too_large`). Its bytes stay on the phone.
    Refused { code: String },
}

impl PhotoState {
    fn of(state: &str, code: Option<String>) -> PhotoState {
        match state {
            "sent" => PhotoState::Sent,
            "fetched" => PhotoState::Fetched,
            "refused" => PhotoState::Refused {
                code: code.unwrap_or_default(),
            },
            _ => PhotoState::Pending { waiting: code },
        }
    }
}

/// A photo to send: its hash and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhotoUpload {
    pub hash: String,
    pub size: u64,
}

/// Keeps the bytes of a photo just attached, in the transaction of the change `change` that
/// refers to them. A photo the phone holds already (attached twice) keeps its row.
pub(super) fn keep_attached(
    tx: &rusqlite::Transaction<'_>,
    doc: HouseholdId,
    change: &qiaomen_protocol::ChangeHash,
    photo: &Attached,
    now_ms: i64,
) -> Result<()> {
    let row = Row {
        hash: &photo.hash,
        bytes: &photo.bytes,
        media: photo.media,
        owner: Owner::Household {
            doc,
            change: Some(change.as_ref()),
        },
        state: "pending",
    };
    row.insert(tx, now_ms)
}

/// The record a photo's row belongs to.
pub(super) enum Owner<'a> {
    /// A record of the household `doc`; `change`: the change of this phone that attached it
    /// (`None`: fetched from the server).
    Household {
        doc: HouseholdId,
        change: Option<&'a [u8]>,
    },
    /// A task report of this phone.
    Task {
        list: &'a str,
        item: u32,
        grid: &'a str,
    },
    /// An event or a work log of this phone (its id's bytes).
    Journal { id: &'a [u8] },
}

/// A photo's row, as it is first kept.
pub(super) struct Row<'a> {
    pub(super) hash: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) media: &'a str,
    pub(super) owner: Owner<'a>,
    pub(super) state: &'static str,
}

impl Row<'_> {
    /// Keeps the row; a photo held already keeps its row (its bytes, if it had lost them).
    pub(super) fn insert(&self, conn: &rusqlite::Connection, now_ms: i64) -> Result<()> {
        let (doc, change, task_list, task_item, task_grid, journal) = match &self.owner {
            Owner::Household { doc, change } => (
                Some(doc.as_bytes().to_vec()),
                *change,
                None,
                None,
                None,
                None,
            ),
            Owner::Task { list, item, grid } => {
                (None, None, Some(*list), Some(*item), Some(*grid), None)
            }
            Owner::Journal { id } => (None, None, None, None, None, Some(*id)),
        };
        conn.execute(
            "INSERT INTO photos (hash, bytes, media, size, doc, change, task_list, task_item,
                                 task_grid, state, at_ms, journal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (hash) DO UPDATE SET bytes = coalesce(photos.bytes, excluded.bytes)",
            params![
                self.hash,
                self.bytes,
                self.media,
                self.bytes.len() as i64,
                doc,
                change,
                task_list,
                task_item,
                task_grid,
                self.state,
                now_ms,
                journal
            ],
        )?;
        Ok(())
    }
}

/// A photo for a task report, as the app gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPhoto {
    pub bytes: Vec<u8>,
    pub caption: String,
    pub taken_at_ms: i64,
}

impl Store {
    /// Attaches a photo to a record of the household `id` (a visit, one of its hazards or
    /// disputes, a work-order step, the household itself), as one change: the reference in
    /// the document, the bytes in the store. Refused before anything is stored, with the
    /// server's own rules: bytes that are not a JPEG, PNG or WebP image, a photo over
    /// [`qiaomen_protocol::photo::MAX_PHOTO_BYTES`] (the app compresses first), a caption too
    /// long, a subject the household does not hold, too many photos of one subject or too
    /// many bytes on one visit ([`DocError::Field`] naming `photo` or `photo_caption`).
    pub fn attach_photo(
        &mut self,
        id: HouseholdId,
        subject: PhotoSubject,
        bytes: &[u8],
        caption: &str,
        taken_at_ms: i64,
    ) -> Result<Photo> {
        let media = qiaomen_protocol::validate::photo_bytes(bytes)
            .map_err(|e| StoreError::from(DocError::Field(e)))?;
        let photo = Photo {
            id: PhotoId::new(),
            hash: qiaomen_protocol::photo::hash_of(bytes),
            size: bytes.len() as u64,
            media_type: media,
            taken_at_ms,
            caption: caption.to_string(),
            subject,
            by: self.author.user,
            device: self.author.device,
        };
        let attached = Attached {
            hash: photo.hash.clone(),
            bytes: bytes.to_vec(),
            media: media.mime(),
        };
        self.commit_edit(
            id,
            |doc, a, now| doc.attach_photo(a, now, &photo).map(|h| ((), Some(h))),
            IndexUpdate::Photo(attached),
        )?;
        Ok(photo)
    }

    /// The photos attached to the household's records.
    pub fn photos(&mut self, id: HouseholdId) -> Result<Vec<Photo>> {
        Ok(self.doc_mut(id)?.doc.photos())
    }

    /// The bytes of the photo `hash`, if this phone holds them (taken here, or fetched).
    pub fn photo_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT bytes FROM photos WHERE hash = ?1 AND bytes IS NOT NULL",
                [hash],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Where the photo `hash` stands on this phone; `None` if it holds no row for it.
    pub fn photo_state(&self, hash: &str) -> Result<Option<PhotoState>> {
        Ok(self
            .conn
            .query_row(
                "SELECT state, code FROM photos WHERE hash = ?1",
                [hash],
                |r| Ok(PhotoState::of(&r.get::<_, String>(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Photos of this phone waiting to be sent, oldest first.
    pub fn pending_photo_count(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM photos WHERE state = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// The photos to send now: pending, and the change or task report that refers to each
    /// acknowledged (the server takes a photo's bytes only once it holds a record that refers
    /// to them).
    pub fn photos_to_upload(&self) -> Result<Vec<PhotoUpload>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT hash, size FROM photos
              WHERE state = 'pending' AND bytes IS NOT NULL
                AND CASE WHEN doc IS NOT NULL
                    THEN NOT EXISTS (SELECT 1 FROM pending p
                                      WHERE p.doc = photos.doc AND p.hash = photos.change)
                    WHEN journal IS NOT NULL
                    THEN EXISTS (SELECT 1 FROM journal_out j
                                  WHERE j.id = photos.journal AND j.state = 'stored')
                    ELSE EXISTS (SELECT 1 FROM task_done t
                                  WHERE t.list = photos.task_list AND t.item = photos.task_item
                                    AND t.grid = photos.task_grid AND t.sent = 1)
                    END
              ORDER BY at_ms, rowid",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PhotoUpload {
                    hash: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The photo's part from `offset` on, at most `len` bytes: the next piece to send.
    pub fn photo_piece(&self, hash: &str, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT substr(bytes, ?2 + 1, ?3) FROM photos WHERE hash = ?1 AND bytes IS NOT NULL",
                params![hash, offset as i64, len as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The server holds the photo whole.
    pub fn mark_photo_sent(&self, hash: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE photos SET state = 'sent', code = NULL WHERE hash = ?1 AND state = 'pending'",
            [hash],
        )?;
        Ok(())
    }

    /// The server will never take the photo, for `code`; its bytes stay.
    pub fn mark_photo_refused(&self, hash: &str, code: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE photos SET state = 'refused', code = ?2 WHERE hash = ?1",
            params![hash, code],
        )?;
        Ok(())
    }

    /// The server could not take the photo this time (`code`); it stays pending and is
    /// tried again at the next sync.
    pub fn note_photo_waiting(&self, hash: &str, code: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE photos SET code = ?2 WHERE hash = ?1 AND state = 'pending'",
            params![hash, code],
        )?;
        Ok(())
    }

    /// Photos the server refused, with the code it gave: for the worker to see.
    pub fn refused_photos(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT hash, coalesce(code, '') FROM photos WHERE state = 'refused' ORDER BY at_ms",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Keeps a photo of the household `id` brought from the server. Refused unless the bytes
    /// are the photo's (their hash), and unless the household refers to it.
    pub fn keep_fetched_photo(&mut self, id: HouseholdId, hash: &str, bytes: &[u8]) -> Result<()> {
        if qiaomen_protocol::photo::hash_of(bytes) != hash {
            return Err(
                DocError::InvalidEdit("the photo's bytes do not match its hash".into()).into(),
            );
        }
        let Some(photo) = self.photos(id)?.into_iter().find(|p| p.hash == hash) else {
            return Err(DocError::NotFound {
                kind: "photo",
                id: hash.to_string(),
            }
            .into());
        };
        let row = Row {
            hash,
            bytes,
            media: photo.media_type.mime(),
            owner: Owner::Household {
                doc: id,
                change: None,
            },
            state: "fetched",
        };
        row.insert(&self.conn, self.now_ms())?;
        Ok(())
    }

    /// Frees the bytes of photos the server holds (sent or fetched) that no record of the
    /// household that held them refers to any more (the record was deleted, or the household
    /// left the phone), or whose task report (or event, or work log) the phone no longer
    /// holds. Returns how many were freed. Pending and refused photos are never freed.
    pub fn free_photos(&mut self) -> Result<usize> {
        // A task report's photo is referred to while the phone holds the report (a sent
        // report leaves with its list, `set_task_lists`); an event's or a work log's while the
        // phone holds the entry (it keeps what it wrote).
        let rows: Vec<(String, Option<Vec<u8>>, bool)> = {
            let mut stmt = self.conn.prepare(
                "SELECT hash, doc, EXISTS (SELECT 1 FROM task_done t
                                            WHERE t.list = photos.task_list
                                              AND t.item = photos.task_item
                                              AND t.grid = photos.task_grid)
                                   OR EXISTS (SELECT 1 FROM journal_out j
                                               WHERE j.id = photos.journal)
                   FROM photos WHERE state IN ('sent', 'fetched') AND bytes IS NOT NULL",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        // The hashes each household refers to, read once per household however many of its
        // photos the phone holds (`None`: the household left the phone).
        let mut referred_by: HashMap<HouseholdId, Option<HashSet<String>>> = HashMap::new();
        let mut freed = 0;
        for (hash, doc, of_report) in rows {
            let referred = match doc.as_deref().map(super::uuid_from) {
                Some(Some(id)) => {
                    let hashes = match referred_by.entry(id) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(if self.contains(id)? {
                            Some(self.photos(id)?.into_iter().map(|p| p.hash).collect())
                        } else {
                            None
                        }),
                    };
                    hashes.as_ref().is_some_and(|h| h.contains(&hash))
                }
                Some(None) => false,
                None => of_report,
            };
            if !referred {
                self.conn
                    .execute("DELETE FROM photos WHERE hash = ?1", [&hash])?;
                freed += 1;
            }
        }
        Ok(freed)
    }

    /// Marks task `item` of list `list` done in `grid`, with `evidence` and photos, offline;
    /// the report is sent at the next sync, its photos after it (SYNC-v1 §14.3). Refused
    /// before anything is kept, by the server's own rules
    /// ([`qiaomen_protocol::validate::task_report`]): evidence too long, bytes that are not a
    /// JPEG, PNG or WebP image, too many photos or too many bytes ([`DocError::Field`]).
    /// Marking a task again keeps the first report; a second report that brings photos is
    /// refused, as the first report's photos cannot change.
    pub fn complete_task_with_photos(
        &mut self,
        list: &str,
        item: u32,
        grid: &str,
        evidence: &str,
        photos: &[NewPhoto],
    ) -> Result<()> {
        self.task_known(list, item, grid)?;
        let evidence = evidence.trim();
        let mut refs = Vec::with_capacity(photos.len());
        for p in photos {
            let media = qiaomen_protocol::validate::photo_bytes(&p.bytes)
                .map_err(|e| StoreError::from(DocError::Field(e)))?;
            refs.push(ReportPhoto {
                hash: qiaomen_protocol::photo::hash_of(&p.bytes),
                size: p.bytes.len() as u64,
                media_type: media,
                taken_at_ms: p.taken_at_ms,
                caption: p.caption.clone(),
            });
        }
        qiaomen_protocol::validate::task_report(evidence, &refs)
            .map_err(|e| StoreError::from(DocError::Field(e)))?;
        let json = (!refs.is_empty())
            .then(|| serde_json::to_vec(&refs).map_err(|_| StoreError::CorruptStore))
            .transpose()?;
        let now = self.now_ms();
        let tx = self.conn.unchecked_transaction()?;
        let kept = tx.execute(
            "INSERT OR IGNORE INTO task_done (list, item, grid, done_ms, evidence, photos)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![list, item, grid, now, evidence, json],
        )?;
        if kept == 0 {
            if refs.is_empty() {
                return Ok(());
            }
            return Err(StoreError::Document(DocError::InvalidEdit(
                "the task was reported already; its report's photos cannot change".into(),
            )));
        }
        for (p, r) in photos.iter().zip(&refs) {
            let row = Row {
                hash: &r.hash,
                bytes: &p.bytes,
                media: r.media_type.mime(),
                owner: Owner::Task { list, item, grid },
                state: "pending",
            };
            row.insert(&tx, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The photos of this phone's report of task `item` of `list` in `grid`.
    pub fn task_report_photos(
        &self,
        list: &str,
        item: u32,
        grid: &str,
    ) -> Result<Vec<ReportPhoto>> {
        let json: Option<Option<Vec<u8>>> = self
            .conn
            .query_row(
                "SELECT photos FROM task_done WHERE list = ?1 AND item = ?2 AND grid = ?3",
                params![list, item, grid],
                |r| r.get(0),
            )
            .optional()?;
        match json.flatten() {
            None => Ok(Vec::new()),
            Some(b) => serde_json::from_slice(&b).map_err(|_| StoreError::CorruptStore),
        }
    }

    /// The server will never take the report of task `item` of `list` in `grid` (it holds
    /// no such task for the grid): its pending photos are refused with `code`, their bytes
    /// kept, like a refused change's content.
    pub fn refuse_task_report_photos(
        &self,
        list: &str,
        item: u32,
        grid: &str,
        code: &str,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE photos SET state = 'refused', code = ?4
              WHERE task_list = ?1 AND task_item = ?2 AND task_grid = ?3 AND state = 'pending'",
            params![list, item, grid, code],
        )?;
        Ok(())
    }

    /// Until when (ms since the epoch, by this phone's clock) the server asked that no photo
    /// be sent: its `Retry-After` on a `429` (the day's photo quota, the request rate). The
    /// photo phase does not start before then, so no piece goes only to be refused.
    pub fn photos_not_before_ms(&self) -> Result<Option<i64>> {
        super::meta_json(&self.conn, "photos_not_before")
    }

    pub fn set_photos_not_before_ms(&self, at_ms: i64) -> Result<()> {
        super::set_meta_json(&self.conn, "photos_not_before", &at_ms)
    }
}
