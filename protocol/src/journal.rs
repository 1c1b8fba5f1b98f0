//! Events and work logs between visit days (SYNC-v1 §13.12), with no IO.
//!
//! A grid worker reports an **event** on any day — a fallen pole on the road, a fire risk at a
//! shop, a quarrel in the square — not tied to one household, and keeps a **work log** of a
//! day's work. Each is written once by its author and never edited (a correction is a new
//! entry), so an entry is not a document to merge but a record: the phone keeps it offline
//! and sends it in the `j` of its next sync request, beside its household changes; the server
//! stores it under its id (a second send of the same entry is the same entry) and answers in
//! the response's `j` which it took and which it refused, and why. The phone judges an entry
//! by [`check`] before it keeps it, the server by the same function before it stores it.

use serde::{Deserialize, Serialize};

use crate::{
    calendar::Day,
    ids::JournalId,
    validate::{self, Field, FieldError, Rule},
};

/// An event (事件) or a day's work log (工作日志).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    Event,
    WorkLog,
}

/// What kind of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Roads, bridges, poles, manholes.
    Road,
    /// Fire risks.
    Fire,
    /// Quarrels and public order.
    Quarrel,
    /// Rubbish, pollution, the village's environment.
    Environment,
    /// Public facilities: water, power, lights.
    Facility,
    Other,
}

/// The longest detail of an entry, in characters.
pub const MAX_DETAIL_CHARS: usize = 2_000;
/// The longest place, in characters.
pub const MAX_PLACE_CHARS: usize = 200;
/// The most entries one sync request carries.
pub const MAX_ENTRIES: usize = 200;
/// How far after the server's clock an entry may be dated.
pub const FUTURE_MS: i64 = crate::workorder::CLOCK_SKEW_MS;

/// An event or a work log as it travels (the `j` of a request, SYNC-v1 §13.12): kinds by
/// their vocabulary codes, so a server that knows a newer kind refuses it by name instead of
/// failing the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    #[serde(rename = "i")]
    pub id: JournalId,
    /// The grid it is of.
    #[serde(rename = "g")]
    pub grid: String,
    /// `event` or `work_log` (vocabulary `journal_kind`).
    #[serde(rename = "k")]
    pub kind: String,
    /// An event's kind (vocabulary `event_kind`); absent for a work log.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub event_kind: Option<String>,
    /// The day it is of (`YYYY-MM-DD`, China time).
    #[serde(rename = "y")]
    pub day: String,
    /// When it was written (ms since the epoch, the phone's clock).
    #[serde(rename = "t")]
    pub at_ms: i64,
    /// Where (an event's place in words); may be empty.
    #[serde(rename = "p", default, skip_serializing_if = "String::is_empty")]
    pub place: String,
    /// Where, as `[latitude, longitude]` (WGS-84 degrees), when the phone had a fix.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<[f64; 2]>,
    /// What happened, or what the day's work was.
    #[serde(rename = "x")]
    pub detail: String,
    /// Its photos' references (SYNC-v1 §14.6's form): their bytes go by `/v1/photos/{hash}`
    /// once the server has stored the entry.
    #[serde(rename = "f", default, skip_serializing_if = "Vec::is_empty")]
    pub photos: Vec<crate::photo::ReportPhoto>,
}

/// The server's answer about one entry (the `j` of a response): `code` absent when it is
/// stored (now or before), else why it never will be (a field rule's field and rule, or
/// `out_of_scope`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalAck {
    #[serde(rename = "i")]
    pub id: JournalId,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl JournalEntry {
    /// The entry's kind, if its code is known.
    pub fn entry_kind(&self) -> Option<EntryKind> {
        use crate::vocab::Term;
        EntryKind::from_code(&self.kind)
    }

    /// The day it is of, if it reads.
    pub fn day(&self) -> Option<Day> {
        self.day.parse().ok()
    }
}

fn fail(field: Field, rule: Rule) -> Result<(), FieldError> {
    Err(FieldError { field, rule })
}

/// Judges an entry (the phone before it keeps one, the server before it stores one, with its
/// own clock as `now_ms`): a known kind, an event's kind for an event and none for a work log,
/// a detail of 1-2000 characters, a place of at most 200, a day that reads and is not after
/// the day of `now_ms` (nor its time more than [`FUTURE_MS`] after it), a position on Earth,
/// photos as a task report's (`validate::task_report`: how many, their sizes and captions).
pub fn check(e: &JournalEntry, now_ms: i64) -> Result<(), FieldError> {
    use crate::vocab::Term;
    match (e.entry_kind(), e.event_kind.as_deref()) {
        (None, _) => return fail(Field::JournalKind, Rule::UnknownCode),
        (Some(EntryKind::Event), None) => return fail(Field::JournalKind, Rule::Empty),
        (Some(EntryKind::Event), Some(k)) if EventKind::from_code(k).is_none() => {
            return fail(Field::JournalKind, Rule::UnknownCode);
        }
        (Some(EntryKind::WorkLog), Some(_)) => return fail(Field::JournalKind, Rule::TooMany),
        _ => {}
    }
    validate::required(Field::JournalDetail, &e.detail, MAX_DETAIL_CHARS)?;
    validate::text(Field::JournalPlace, &e.place, MAX_PLACE_CHARS)?;
    let Some(day) = e.day() else {
        return fail(Field::JournalDay, Rule::Empty);
    };
    if e.at_ms > now_ms.saturating_add(FUTURE_MS) || day > crate::workorder::day_of(now_ms) {
        return fail(Field::JournalDay, Rule::FutureDay);
    }
    if let Some([lat, lon]) = e.gps
        && !(lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon))
    {
        return fail(Field::JournalGps, Rule::OutOfRange);
    }
    validate::task_report("", &e.photos)?;
    if e.grid.is_empty() || e.grid.len() > 64 {
        return fail(Field::JournalKind, Rule::Empty);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> JournalEntry {
        JournalEntry {
            id: JournalId::new(),
            grid: "g1".into(),
            kind: "event".into(),
            event_kind: Some("road".into()),
            day: "2026-12-01".into(),
            at_ms: 1_796_097_600_000,
            place: "村口桥头".into(),
            gps: Some([34.75, 113.62]),
            detail: "电线杆倾斜，有倒塌危险".into(),
            photos: vec![],
        }
    }

    #[test]
    fn entries_are_judged_by_their_fields_and_named_by_them() {
        let now = 1_796_097_600_000 + 60_000;
        assert_eq!(check(&event(), now), Ok(()));
        let log = JournalEntry {
            kind: "work_log".into(),
            event_kind: None,
            place: String::new(),
            gps: None,
            detail: "走访 12 户，排查隐患 2 处".into(),
            ..event()
        };
        assert_eq!(check(&log, now), Ok(()));
        let field = |e: JournalEntry| check(&e, now).unwrap_err();
        let f = |field, rule| FieldError { field, rule };
        assert_eq!(
            field(JournalEntry {
                kind: "gossip".into(),
                ..event()
            }),
            f(Field::JournalKind, Rule::UnknownCode)
        );
        assert_eq!(
            field(JournalEntry {
                event_kind: None,
                ..event()
            }),
            f(Field::JournalKind, Rule::Empty)
        );
        assert_eq!(
            field(JournalEntry {
                event_kind: Some("ufo".into()),
                ..event()
            }),
            f(Field::JournalKind, Rule::UnknownCode)
        );
        assert_eq!(
            field(JournalEntry {
                detail: " ".into(),
                ..event()
            }),
            f(Field::JournalDetail, Rule::Empty)
        );
        assert_eq!(
            field(JournalEntry {
                place: "路".repeat(201),
                ..event()
            }),
            f(Field::JournalPlace, Rule::TooLong)
        );
        assert_eq!(
            field(JournalEntry {
                day: "2026-12-02".into(),
                ..event()
            }),
            f(Field::JournalDay, Rule::FutureDay)
        );
        assert_eq!(
            field(JournalEntry {
                gps: Some([91.0, 0.0]),
                ..event()
            }),
            f(Field::JournalGps, Rule::OutOfRange)
        );
        let shot = crate::photo::ReportPhoto {
            hash: "ab".repeat(32),
            size: 1000,
            media_type: crate::photo::MediaType::Jpeg,
            taken_at_ms: 0,
            caption: String::new(),
        };
        assert_eq!(
            check(
                &JournalEntry {
                    photos: vec![shot.clone()],
                    ..event()
                },
                now
            ),
            Ok(())
        );
        assert_eq!(
            field(JournalEntry {
                photos: vec![shot.clone(); crate::photo::MAX_SUBJECT_PHOTOS + 1],
                ..event()
            }),
            f(Field::Photo, Rule::TooMany)
        );
        assert_eq!(
            field(JournalEntry {
                photos: vec![crate::photo::ReportPhoto {
                    hash: "not a hash".into(),
                    ..shot
                }],
                ..event()
            }),
            f(Field::Photo, Rule::HashFormat)
        );
        assert_eq!(
            field(JournalEntry {
                gps: Some([f64::NAN, 0.0]),
                ..event()
            }),
            f(Field::JournalGps, Rule::OutOfRange)
        );
    }

    #[test]
    fn the_vector_is_the_entry_it_describes() {
        // proto-docs/vectors/journal-entry.json: the entry as JSON, and its CBOR in hex.
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../../proto-docs/vectors/journal-entry.json"))
                .unwrap();
        let j = &vector["entry"];
        let e = JournalEntry {
            id: j["i"].as_str().unwrap().parse().unwrap(),
            grid: j["g"].as_str().unwrap().into(),
            kind: j["k"].as_str().unwrap().into(),
            event_kind: j["e"].as_str().map(str::to_string),
            day: j["y"].as_str().unwrap().into(),
            at_ms: j["t"].as_i64().unwrap(),
            place: j["p"].as_str().unwrap().into(),
            gps: Some([j["l"][0].as_f64().unwrap(), j["l"][1].as_f64().unwrap()]),
            detail: j["x"].as_str().unwrap().into(),
            photos: vec![],
        };
        assert_eq!(check(&e, e.at_ms), Ok(()));
        let mut bytes = Vec::new();
        ciborium::into_writer(&e, &mut bytes).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            vector["cbor_hex"].as_str().unwrap(),
            hex,
            "the vector's bytes"
        );
        let back: JournalEntry = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, e);
    }
}
