//! Events and work logs on the phone (SYNC-v1 §13.12): written offline, judged by the server's
//! own rules before they are kept, sent in the `j` of the next sync request, and kept after
//! it — stored, or refused with the server's reason (nothing typed is lost).

use qiaomen_protocol::{
    ids::JournalId,
    journal::{self, JournalAck, JournalEntry},
    policy::Subject,
    wire::RejectCode,
};
use rusqlite::params;

use super::Store;
use crate::{Result, StoreError};

/// An event or a work log as the worker writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJournal {
    pub grid: String,
    /// `event` or `work_log`.
    pub kind: String,
    /// An event's kind (`road`, `fire`, ...); `None` for a work log.
    pub event_kind: Option<String>,
    /// The day it is of (`YYYY-MM-DD`); `None`: today.
    pub day: Option<String>,
    pub place: String,
    pub gps: Option<[f64; 2]>,
    pub detail: String,
    /// Its photos; their bytes go once the server has stored the entry (SYNC-v1 §14.3).
    pub photos: Vec<super::NewPhoto>,
}

/// An entry the phone holds, and where it stands: `pending` (not sent yet), `stored` (the
/// server holds it) or `refused` (with the server's code, e.g. `journal_detail:empty`).
#[derive(Clone, Debug, PartialEq)]
pub struct JournalLine {
    pub entry: JournalEntry,
    pub state: String,
    pub code: Option<String>,
}

impl Store {
    /// Records an event or a work log, offline. Refused before anything is kept by the
    /// server's own rules: a field (`journal_detail`, `journal_kind`, ...) as
    /// `Document(Field)`, a grid the user does not hold as `NotAllowed` (`journal`).
    pub fn record_journal(&mut self, new: &NewJournal) -> Result<JournalEntry> {
        let now = self.now_ms();
        let mut refs = Vec::with_capacity(new.photos.len());
        for p in &new.photos {
            let media = qiaomen_protocol::validate::photo_bytes(&p.bytes)
                .map_err(|f| StoreError::Document(qiaomen_protocol::DocError::Field(f)))?;
            refs.push(qiaomen_protocol::photo::ReportPhoto {
                hash: qiaomen_protocol::photo::hash_of(&p.bytes),
                size: p.bytes.len() as u64,
                media_type: media,
                taken_at_ms: p.taken_at_ms,
                caption: p.caption.clone(),
            });
        }
        let entry = JournalEntry {
            id: JournalId::new(),
            grid: new.grid.clone(),
            kind: new.kind.clone(),
            event_kind: new.event_kind.clone(),
            day: new
                .day
                .clone()
                .unwrap_or_else(|| qiaomen_protocol::workorder::day_of(now).to_string()),
            at_ms: now,
            place: new.place.clone(),
            gps: new.gps,
            detail: new.detail.clone(),
            photos: refs,
        };
        journal::check(&entry, now)
            .map_err(|f| StoreError::Document(qiaomen_protocol::DocError::Field(f)))?;
        if let Some(rights) = self.rights()?
            && !rights.may_write(&entry.grid, now)
        {
            return Err(StoreError::NotAllowed {
                what: Subject::Journal,
                code: RejectCode::OutOfScope,
            });
        }
        let json = serde_json::to_vec(&entry).expect("an entry serializes");
        let id = entry.id.as_bytes().to_vec();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO journal_out (id, json, state, at_ms) VALUES (?1, ?2, 'pending', ?3)",
            params![id, json, now],
        )?;
        for (p, r) in new.photos.iter().zip(&entry.photos) {
            super::photos::Row {
                hash: &r.hash,
                bytes: &p.bytes,
                media: r.media_type.mime(),
                owner: super::photos::Owner::Journal { id: &id },
                state: "pending",
            }
            .insert(&tx, now)?;
        }
        tx.commit()?;
        Ok(entry)
    }

    /// The entries this phone wrote, newest first.
    pub fn journal(&self) -> Result<Vec<JournalLine>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT json, state, code FROM journal_out ORDER BY at_ms DESC, rowid DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (json, state, code) = row?;
            if let Ok(entry) = serde_json::from_slice(&json) {
                out.push(JournalLine { entry, state, code });
            }
        }
        Ok(out)
    }

    /// The entries not sent yet, oldest first, at most `n`.
    pub(crate) fn pending_journal(&self, n: usize) -> Result<Vec<JournalEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT json FROM journal_out WHERE state = 'pending' ORDER BY at_ms, rowid LIMIT ?1",
        )?;
        let rows = stmt.query_map([n as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for json in rows {
            if let Ok(e) = serde_json::from_slice(&json?) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Takes the server's answers about entries sent: stored, or refused with its code.
    pub(crate) fn take_journal_acks(&self, acks: &[JournalAck]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for a in acks {
            let state = if a.code.is_some() {
                "refused"
            } else {
                "stored"
            };
            tx.execute(
                "UPDATE journal_out SET state = ?2, code = ?3 WHERE id = ?1 AND state = 'pending'",
                params![a.id.as_bytes().as_slice(), state, a.code],
            )?;
            // A refused entry's photos will never be taken: refused with its code, their
            // bytes kept with the entry's text.
            if let Some(code) = &a.code {
                tx.execute(
                    "UPDATE photos SET state = 'refused', code = ?2
                      WHERE journal = ?1 AND state = 'pending'",
                    params![a.id.as_bytes().as_slice(), code],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
