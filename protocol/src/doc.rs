//! [`HouseholdDoc`]: one household's Automerge document, edited through typed records.
//!
//! Every edit is one Automerge change, stamped with who made it ([`Author`]: the user and the
//! device) in the change message and with the time in milliseconds, so that "who changed this
//! field, when, from which phone" can be answered for every value (see [`crate::conflicts`]).
//!
//! ```
//! use qiaomen_protocol::{doc::{Author, HouseholdDoc}, ids::*, schema::*};
//! let author = Author { user: UserId::new(), device: DeviceId::new() };
//! let hh = Household::new(HouseholdId::new(), GridId::new("g1"), "东村 3 组", "12");
//! let mut phone_a = HouseholdDoc::create(&hh, &author, 1_000).unwrap();
//! let mut phone_b = HouseholdDoc::load(&phone_a.save()).unwrap();
//! phone_a.edit(&author, 2_000, |h| { h.door_number = "12A".into(); Ok(()) }).unwrap();
//! phone_b.edit(&author, 2_001, |h| { h.address = "东村 4 组".into(); Ok(()) }).unwrap();
//! phone_a.merge(&mut phone_b).unwrap();
//! let merged = phone_a.household().unwrap();
//! assert_eq!((merged.door_number.as_str(), merged.address.as_str()), ("12A", "东村 4 组"));
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, LoadOptions, OnPartialLoad, ROOT, ReadDoc,
    VerificationMode, transaction::CommitOptions,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{DocError, Result},
    ids::{DemandId, DeviceId, UserId, VisitId},
    migrate,
    schema::{Demand, Household, SCHEMA_VERSION, Visit},
    validate::{self, Parts},
};

/// Who makes a change: the signed-in user and the enrolled device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Author {
    #[serde(rename = "u")]
    pub user: UserId,
    #[serde(rename = "d")]
    pub device: DeviceId,
}

impl Author {
    /// The change message that carries this author: `{"u":"<uuid>","d":"<uuid>"}`.
    pub fn to_message(&self) -> String {
        serde_json::to_string(self).expect("two uuids always serialize")
    }

    /// The author of a change, if its message is one of ours.
    pub fn from_message(message: &str) -> Option<Author> {
        serde_json::from_str(message).ok()
    }
}

/// What a set of changes touched, as found by [`HouseholdDoc::validate_since`]: the input of
/// access rules (who may change which field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Root fields of the record that changed (`grid`, `status`, `address`, ...).
    pub facts: std::collections::BTreeSet<String>,
    /// Entries of `members` / `visits` / `demands` added or changed: (collection, id).
    pub entries: std::collections::BTreeSet<(String, String)>,
    /// Entries of those collections deleted: (collection, id).
    pub deleted: std::collections::BTreeSet<(String, String)>,
}

/// The Automerge actor a device edits with: the device's id (16 bytes) followed by 16 random
/// bytes, fresh for each opening of a store. The server refuses a change whose actor does not
/// begin with the uploading device's id, so an actor cannot be forged or borrowed.
pub fn actor_for(device: DeviceId) -> ActorId {
    let mut bytes = device.as_bytes().to_vec();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    ActorId::from(bytes)
}

/// The device an actor is bound to ([`actor_for`]), if it has that shape.
pub fn actor_device(actor: &ActorId) -> Option<DeviceId> {
    let bytes = actor.to_bytes();
    (bytes.len() == 32).then(|| {
        DeviceId(uuid::Uuid::from_bytes(
            bytes[..16].try_into().expect("16 bytes"),
        ))
    })
}

/// A household's document.
#[derive(Debug, Clone)]
pub struct HouseholdDoc {
    doc: AutoCommit,
}

/// Runs `f`, turning a panic inside Automerge into [`DocError::Poisoned`]. Automerge has open
/// issues where hostile input panics; a phone or a server must never crash on a bad blob.
/// What a diff's patches touched: the root facts, the entries of the collections (with the
/// parts of each that were written), the entries deleted, and whether something outside
/// that shape changed (`whole`: the record is read whole).
pub(crate) struct Classified {
    pub touched: Touched,
    pub entries: std::collections::BTreeMap<(String, String), Parts>,
    pub facts: bool,
    pub whole: bool,
}

/// Sorts `patches` (of a diff from `before`; `from_empty`: from no version) into what they
/// touched: what validation judges and what a refused change is shown as.
pub(crate) fn classify(patches: &[automerge::Patch], from_empty: bool) -> Classified {
    use automerge::Prop;
    let mut out = Classified {
        touched: Touched::default(),
        entries: Default::default(),
        facts: false,
        whole: false,
    };
    for p in patches {
        let root_key = match (p.path.first(), &p.action) {
            (Some((_, Prop::Map(k))), _) => k.clone(),
            (None, automerge::PatchAction::PutMap { key, .. }) => key.clone(),
            (None, automerge::PatchAction::DeleteMap { key }) => key.clone(),
            _ => {
                out.whole = true;
                continue;
            }
        };
        // A photo's reference (`photo:<id>`, SYNC-v1 §14.2) and a tracked case (`case:<id>`,
        // §13.10) are keys of the root of their own.
        if let Some((collection, id)) = root_entry(&root_key) {
            let entry = (collection.to_string(), id.to_string());
            match &p.action {
                automerge::PatchAction::PutMap { .. } if p.path.is_empty() => {
                    out.entries.insert(entry, Parts::All);
                }
                automerge::PatchAction::DeleteMap { .. } if p.path.is_empty() => {
                    out.touched.deleted.insert(entry);
                }
                _ => out
                    .entries
                    .entry(entry)
                    .or_insert_with(Parts::none)
                    .add(&p.path[1..], &p.action),
            }
            continue;
        }
        match root_key.as_str() {
            // The collection itself, put or deleted at the root: made with the household,
            // or (later) replaced, which drops every entry it held.
            // Whatever took its place must still read as a collection (a string there, or
            // nothing, leaves the household unreadable to every phone): read whole.
            "members" | "visits" | "demands" | "reviews" if p.path.is_empty() => {
                if !from_empty {
                    out.touched.deleted.insert((root_key, "*".into()));
                    out.whole = true;
                }
            }
            "members" | "visits" | "demands" | "reviews" => match (p.path.get(1), &p.action) {
                (Some((_, Prop::Map(k))), _) => {
                    out.entries
                        .entry((root_key, k.clone()))
                        .or_insert_with(Parts::none)
                        .add(&p.path[2..], &p.action);
                }
                (None, automerge::PatchAction::PutMap { key, .. }) => {
                    out.entries.insert((root_key, key.clone()), Parts::All);
                }
                (None, automerge::PatchAction::DeleteMap { key }) => {
                    out.touched.deleted.insert((root_key, key.clone()));
                }
                _ => out.whole = true,
            },
            _ => {
                out.facts = true;
                out.touched.facts.insert(root_key);
            }
        }
    }
    out.touched.entries = out.entries.keys().cloned().collect();
    out
}

/// The collection and id of an entry kept as a key of the document's root of its own
/// (`photo:<id>` → `photos`, `case:<id>` → `cases`).
fn root_entry(root_key: &str) -> Option<(&'static str, &str)> {
    if let Some(id) = root_key.strip_prefix(crate::photo::ROOT_PREFIX) {
        Some(("photos", id))
    } else {
        root_key
            .strip_prefix(crate::ledger::ROOT_PREFIX)
            .map(|id| ("cases", id))
    }
}

/// The root key of the entry `key` of a collection kept at the root ([`root_entry`]).
fn rooted_key(collection: &str, key: &str) -> Option<String> {
    match collection {
        "photos" => Some(crate::photo::root_key(key)),
        "cases" => Some(crate::ledger::root_key(key)),
        _ => None,
    }
}

pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(DocError::Poisoned))
}

impl HouseholdDoc {
    /// A new document holding `household`, as one change by `author` (with an actor bound to
    /// the author's device, [`actor_for`]). Refused with [`DocError::Field`] if a value breaks
    /// a field rule ([`crate::validate`]).
    pub fn create(household: &Household, author: &Author, now_ms: i64) -> Result<Self> {
        crate::validate::household(household)?;
        let mut doc = AutoCommit::new().with_actor(actor_for(author.device));
        autosurgeon::reconcile(&mut doc, household)?;
        doc.commit_with(commit_options(author, now_ms));
        Ok(Self { doc })
    }

    /// Loads a document from `save()` output (or a snapshot followed by incremental changes),
    /// checking every change hash. Corrupt or truncated bytes give [`DocError::Corrupt`],
    /// never a panic. The document is upgraded to the current schema in memory if needed
    /// (see [`HouseholdDoc::upgrade`] to persist that).
    pub fn load(bytes: &[u8]) -> Result<Self> {
        // Documents and changes only: never the experimental bundles (see `decode_changes`).
        let known = [CHUNK_DOCUMENT, CHUNK_CHANGE, CHUNK_COMPRESSED_CHANGE];
        if !chunk_types(bytes).is_some_and(|t| t.iter().all(|c| known.contains(c))) {
            return Err(DocError::Corrupt);
        }
        let doc = guarded(|| {
            AutoCommit::load_with_options(
                bytes,
                LoadOptions::new()
                    .on_partial_load(OnPartialLoad::Error)
                    .verification_mode(VerificationMode::Check),
            )
            .map_err(|_| DocError::Corrupt)
        })?;
        let this = Self { doc };
        // An empty or foreign document loads as valid Automerge; it must at least carry a
        // household id to be one of ours.
        match this.doc.get(ROOT, "id")? {
            Some((automerge::Value::Scalar(s), _)) if matches!(s.as_ref(), automerge::ScalarValue::Bytes(b) if b.len() == 16) =>
                {}
            _ => return Err(DocError::Corrupt),
        }
        let version = this.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(DocError::TooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(this)
    }

    /// Use `actor` for this replica's future changes. Each install of the app has its own
    /// actor; two replicas must never share one.
    pub fn set_actor(&mut self, actor: ActorId) {
        self.doc.set_actor(actor);
    }

    pub fn actor(&self) -> &ActorId {
        self.doc.get_actor()
    }

    /// The schema version recorded in the document (1 for documents written before the field
    /// existed).
    pub fn schema_version(&self) -> Result<u64> {
        match self.doc.get(ROOT, "schema_version")? {
            None => Ok(1),
            Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                automerge::ScalarValue::Uint(v) => Ok(*v),
                automerge::ScalarValue::Int(v) if *v >= 0 => Ok(*v as u64),
                _ => Err(DocError::Schema("schema_version is not a number".into())),
            },
            Some(_) => Err(DocError::Schema("schema_version is not a number".into())),
        }
    }

    /// Brings a document of an older schema to the current one, as a change by `author`.
    /// Returns whether anything changed.
    pub fn upgrade(&mut self, author: &Author, now_ms: i64) -> Result<bool> {
        let from = self.schema_version()?;
        if from >= SCHEMA_VERSION {
            return Ok(false);
        }
        migrate::upgrade(&mut self.doc, from)?;
        self.doc.commit_with(commit_options(author, now_ms));
        Ok(true)
    }

    /// The household record. Documents of an older schema are upgraded on a copy first, so
    /// the record is always in the current shape.
    pub fn household(&self) -> Result<Household> {
        if self.schema_version()? < SCHEMA_VERSION {
            let mut copy = self.doc.clone();
            migrate::upgrade(&mut copy, self.schema_version()?)?;
            return Ok(autosurgeon::hydrate(&copy)?);
        }
        Ok(autosurgeon::hydrate(&self.doc)?)
    }

    /// The household record as it was at `heads` (an exact earlier version).
    pub fn household_at(&self, heads: &[ChangeHash]) -> Result<Household> {
        let mut copy = self.doc.clone();
        let mut old = copy.fork_at(heads).map_err(|_| DocError::NotFound {
            kind: "version",
            id: "heads".into(),
        })?;
        let version = Self { doc: old.fork() }.schema_version()?;
        if version < SCHEMA_VERSION {
            migrate::upgrade(&mut old, version)?;
        }
        Ok(autosurgeon::hydrate(&old)?)
    }

    /// Edits the household through its typed record: `f` changes the record, and only the
    /// differences are written, as one change by `author`. If `f` fails, or the edited record
    /// is refused (a value it changed breaks a field rule: [`DocError::Field`]), nothing is
    /// written. Returns `f`'s value and the change's hash (`None` when
    /// nothing changed).
    pub fn edit<T>(
        &mut self,
        author: &Author,
        now_ms: i64,
        f: impl FnOnce(&mut Household) -> Result<T>,
    ) -> Result<(T, Option<ChangeHash>)> {
        let mut household = self.household()?;
        let before = household.clone();
        let out = f(&mut household)?;
        if household.id != before.id {
            return Err(DocError::InvalidEdit(
                "a household's id cannot change".into(),
            ));
        }
        crate::validate::edit(Some(&before), &household)?;
        if let Err(e) = autosurgeon::reconcile(&mut self.doc, &household) {
            self.doc.rollback();
            return Err(e.into());
        }
        Ok((out, self.doc.commit_with(commit_options(author, now_ms))))
    }

    /// Adds a visit (and the demands raised on it) as one change. Only the new entries are
    /// written: the cost does not grow with the household's history.
    pub fn add_visit(
        &mut self,
        author: &Author,
        now_ms: i64,
        visit: &Visit,
        demands: &[Demand],
    ) -> Result<ChangeHash> {
        if !crate::calendar::is_visit_day(visit.visit_day) {
            return Err(DocError::InvalidEdit(
                "a visit must be recorded for a visit day (the 15th or 30th)".into(),
            ));
        }
        for d in demands {
            if !visit.demands_raised.contains(&d.id) {
                return Err(DocError::InvalidEdit(
                    "every demand must be listed in the visit's demands_raised".into(),
                ));
            }
        }
        let all = crate::validate::Parts::All;
        crate::validate::visit(visit, &all)?;
        for d in demands {
            crate::validate::demand(d, &all)?;
        }
        let visits = self.map_obj("visits")?;
        if self.doc.get(&visits, visit.id.to_string())?.is_some() {
            return Err(DocError::InvalidEdit(
                "a visit with this id already exists".into(),
            ));
        }
        if self.visits_on(&visits, &visit.visit_day.to_string())
            >= crate::validate::MAX_VISITS_PER_DAY
        {
            return Err(crate::validate::FieldError {
                field: crate::validate::Field::Visits,
                rule: crate::validate::Rule::TooMany,
            }
            .into());
        }
        let demand_map = self.map_obj("demands")?;
        let result = (|| {
            autosurgeon::reconcile_prop(
                &mut self.doc,
                &visits,
                visit.id.to_string().as_str(),
                visit,
            )?;
            for d in demands {
                autosurgeon::reconcile_prop(
                    &mut self.doc,
                    &demand_map,
                    d.id.to_string().as_str(),
                    d,
                )?;
            }
            Ok::<_, DocError>(())
        })();
        if let Err(e) = result {
            self.doc.rollback();
            return Err(e);
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty visit change".into()))
    }

    /// Takes a step of a demand's work order, appending it to the history. Refused if the
    /// step does not follow from the order's state or lacks its data (who may take it is the
    /// server's check: [`crate::workorder::check_steps`]).
    pub fn demand_step(
        &mut self,
        author: &Author,
        now_ms: i64,
        demand: DemandId,
        step: &crate::workorder::NewStep<'_>,
        rules: &crate::workorder::Deadlines,
    ) -> Result<ChangeHash> {
        let demands = self.map_obj("demands")?;
        let key = demand.to_string();
        let mut d: Demand = match autosurgeon::hydrate_prop(&self.doc, &demands, key.as_str()) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(DocError::NotFound {
                    kind: "demand",
                    id: key,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let (entry, to) = step
            .entry(&d, author.user, Some(author.device), now_ms, rules)
            .map_err(|e| DocError::InvalidEdit(e.to_string()))?;
        crate::validate::step(&entry)?;
        d.history.push(entry);
        d.status = to;
        if let Err(e) = autosurgeon::reconcile_prop(&mut self.doc, &demands, key.as_str(), &d) {
            self.doc.rollback();
            return Err(e.into());
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty change".into()))
    }

    /// Edits a visit's note as text: deletes `delete` characters at `pos` and inserts `insert`.
    /// Concurrent edits of the same note on two phones merge character by character.
    pub fn splice_note(
        &mut self,
        author: &Author,
        now_ms: i64,
        visit: VisitId,
        pos: usize,
        delete: usize,
        insert: &str,
    ) -> Result<ChangeHash> {
        let visits = self.map_obj("visits")?;
        let visit_obj = match self.doc.get(&visits, visit.to_string())? {
            Some((automerge::Value::Object(automerge::ObjType::Map), id)) => id,
            _ => {
                return Err(DocError::NotFound {
                    kind: "visit",
                    id: visit.to_string(),
                });
            }
        };
        let note = match self.doc.get(&visit_obj, "note")? {
            Some((automerge::Value::Object(automerge::ObjType::Text), id)) => id,
            _ => return Err(DocError::Schema("a visit's note is not text".into())),
        };
        // Positions count characters (Unicode scalar values), like Automerge's splice; its
        // `length` of a text counts UTF-8 bytes, so a note in Chinese would be misjudged.
        crate::validate::note(insert)?;
        let len = self.doc.text(&note)?.chars().count();
        if pos > len || pos + delete > len {
            return Err(DocError::InvalidEdit(
                "the note edit lies outside the note".into(),
            ));
        }
        if len - delete + insert.chars().count() > crate::validate::MAX_NOTE_CHARS {
            return Err(crate::validate::FieldError {
                field: crate::validate::Field::Note,
                rule: crate::validate::Rule::TooLong,
            }
            .into());
        }
        use automerge::transaction::Transactable;
        if let Err(e) = self.doc.splice_text(&note, pos, delete as isize, insert) {
            self.doc.rollback();
            return Err(e.into());
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty change".into()))
    }

    /// Replaces a visit's whole note, as one change (Automerge's own text diff: unchanged
    /// characters keep their identity, so concurrent edits of the rest still merge).
    pub fn replace_note(
        &mut self,
        author: &Author,
        now_ms: i64,
        visit: VisitId,
        text: &str,
    ) -> Result<ChangeHash> {
        use automerge::transaction::Transactable;
        crate::validate::note(text)?;
        let visits = self.map_obj("visits")?;
        let note = match self.doc.get(&visits, visit.to_string())? {
            Some((automerge::Value::Object(automerge::ObjType::Map), v)) => {
                match self.doc.get(&v, "note")? {
                    Some((automerge::Value::Object(automerge::ObjType::Text), n)) => n,
                    _ => return Err(DocError::Schema("a visit's note is not text".into())),
                }
            }
            _ => {
                return Err(DocError::NotFound {
                    kind: "visit",
                    id: visit.to_string(),
                });
            }
        };
        if let Err(e) = self.doc.update_text(&note, text) {
            self.doc.rollback();
            return Err(e.into());
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::InvalidEdit("the note is unchanged".into()))
    }

    /// How many visits of the map `visits` are for the visit day `day` (as stored: the
    /// date's text). Reads one field a visit.
    fn visits_on(&self, visits: &automerge::ObjId, day: &str) -> usize {
        self.doc
            .keys(visits)
            .filter(|k| {
                let Ok(Some((_, visit))) = self.doc.get(visits, k.as_str()) else {
                    return false;
                };
                matches!(
                    self.doc.get(&visit, "visit_day"),
                    Ok(Some((automerge::Value::Scalar(v), _))) if v.as_str() == Some(day)
                )
            })
            .count()
    }

    /// Checks the size of the change `hash` just made, and of the document with it, against
    /// the limits a server applies ([`crate::wire::limits`]: `MAX_CHANGE_BYTES`,
    /// `MAX_CHANGE_OPS`, `MAX_DOC_OPS`), so that a phone refuses an edit the server would
    /// refuse `over_limit` ([`crate::validate::Field::Document`], `too_large`). Returns the
    /// change's bytes (read once for the check and the caller; `None`: no such change).
    pub fn check_size(&mut self, hash: &ChangeHash) -> Result<Option<Vec<u8>>> {
        use crate::wire::limits;
        let too_large = || {
            Err(crate::validate::FieldError {
                field: crate::validate::Field::Document,
                rule: crate::validate::Rule::TooLarge,
            }
            .into())
        };
        let Some((bytes, change_ops)) = self
            .doc
            .get_change_by_hash(hash)
            .map(|c| (c.raw_bytes().to_vec(), c.len()))
        else {
            return Ok(None);
        };
        if bytes.len() > limits::MAX_CHANGE_BYTES || change_ops > limits::MAX_CHANGE_OPS {
            return too_large();
        }
        let ops: u64 = self
            .doc
            .get_changes_meta(&[])
            .iter()
            .map(|m| (m.max_op + 1).saturating_sub(m.start_op))
            .sum();
        if ops > limits::MAX_DOC_OPS {
            return too_large();
        }
        Ok(Some(bytes))
    }

    fn map_obj(&self, key: &str) -> Result<automerge::ObjId> {
        match self.doc.get(ROOT, key)? {
            Some((automerge::Value::Object(automerge::ObjType::Map), id)) => Ok(id),
            _ => Err(DocError::Schema(format!("{key} is not a map"))),
        }
    }

    /// The household's grid, read directly (cheap at any history length); empty if absent.
    pub fn grid(&self) -> String {
        match self.doc.get(ROOT, "grid") {
            Ok(Some((automerge::Value::Scalar(s), _))) => {
                s.as_str().unwrap_or_default().to_string()
            }
            _ => String::new(),
        }
    }

    /// The whole document in Automerge's compressed format.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes made since the last `save()` or `save_incremental()`, as bytes to append to
    /// a saved document.
    /// How many changes the document holds.
    pub fn change_count(&mut self) -> usize {
        self.doc.get_changes_meta(&[]).len()
    }

    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }

    /// The current heads: the exact version of the document.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Records what the next edits write, from the heads of now, so that
    /// [`Self::validate_since`] from those heads reads the edits from the record (cost as the
    /// change) instead of comparing two versions of the whole document (cost as its history).
    /// [`Self::stop_recording`] ends it; the outcome of the check is the same either way.
    pub fn record_edits(&mut self) {
        self.doc.update_diff_cursor();
    }

    /// Ends [`Self::record_edits`].
    pub fn stop_recording(&mut self) {
        self.doc.reset_diff_cursor();
    }

    /// The raw bytes of every change not reachable from `have`.
    pub fn changes_since(&mut self, have: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.doc
            .get_changes(have)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// The raw bytes of one change.
    pub fn change_bytes(&mut self, hash: &ChangeHash) -> Option<Vec<u8>> {
        self.doc
            .get_change_by_hash(hash)
            .map(|c| c.raw_bytes().to_vec())
    }

    /// Whether the document holds the change `hash`.
    pub fn has_change(&mut self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// The hashes of the document's changes that start with `prefix` (a packed change's
    /// dependency, [`crate::pack`]): among its heads only (what a change from elsewhere
    /// builds on, as a rule), or among its whole history.
    pub fn hashes_with_prefix(&mut self, prefix: &[u8], history: bool) -> Vec<ChangeHash> {
        let starts = |h: &ChangeHash| h.as_ref().starts_with(prefix);
        if !history {
            return self.doc.get_heads().into_iter().filter(starts).collect();
        }
        self.doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.hash)
            .filter(starts)
            .collect()
    }

    /// Applies changes received from elsewhere. Each change's bytes and hash are checked
    /// first; a bad one rejects the whole call with [`DocError::Corrupt`] and nothing is
    /// applied. Changes whose dependencies are missing wait inside the document until they
    /// arrive. Duplicates are ignored. Returns the hashes of the decoded changes.
    pub fn apply_changes<'a>(
        &mut self,
        changes: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ChangeHash>> {
        let decoded = decode_changes(changes)?;
        let hashes = decoded.iter().map(|c| c.hash()).collect();
        self.apply_decoded(decoded)?;
        Ok(hashes)
    }

    /// Checks that what changed since `before` still forms a valid household record of the
    /// same id: the household's facts, and each member, visit and demand that was touched,
    /// are read back through their types (only the touched entries, so the cost follows the
    /// change, not the household's history). Visits must be on visit days and entries must sit
    /// under their own id.
    pub fn validate_since(
        &mut self,
        before: &[ChangeHash],
        expected_id: crate::ids::HouseholdId,
    ) -> Result<Touched> {
        let after = self.doc.get_heads();
        let patches = guarded(|| Ok(self.doc.diff(before, &after)))?;
        let Classified {
            touched,
            entries,
            facts,
            whole,
        } = classify(&patches, before.is_empty());
        if self.schema_version()? < SCHEMA_VERSION {
            // A change that writes an old version (none would: migrations only raise it) would
            // take the household out of the field rules below.
            if !before.is_empty() && touched.facts.contains("schema_version") {
                return Err(DocError::InvalidEdit(
                    "schema_version cannot be lowered".into(),
                ));
            }
            // Old documents are checked whole, through the migration.
            let h = self.household()?;
            return if h.id == expected_id {
                Ok(touched)
            } else {
                Err(DocError::InvalidEdit("the household id changed".into()))
            };
        }
        if whole {
            self.household()?;
        }
        if facts || whole || patches.is_empty() {
            let f: crate::schema::HouseholdFacts = autosurgeon::hydrate(&self.doc)?;
            // Field rules judge the facts this change wrote (all of them for a new household).
            let wrote = |k: &str| before.is_empty() || touched.facts.contains(k);
            if wrote("address") {
                validate::address(&f.address)?;
            }
            if wrote("door_number") {
                validate::door_number(&f.door_number)?;
            }
            if wrote("phone") {
                validate::household_phone(f.phone.as_ref())?;
            }
            if f.schema_version > SCHEMA_VERSION {
                return Err(DocError::TooNew {
                    found: f.schema_version,
                    supported: SCHEMA_VERSION,
                });
            }
            if f.id != expected_id {
                return Err(DocError::InvalidEdit("the household id changed".into()));
            }
        }
        let mut added: std::collections::BTreeSet<&str> = Default::default();
        for ((collection, key), parts) in &entries {
            if collection == "photos" {
                self.check_photo(key, parts)?;
                continue;
            }
            if collection == "cases" {
                self.check_case(key, parts)?;
                continue;
            }
            let (collection, key) = (collection.clone(), key.clone());
            let obj = self.map_obj(&collection)?;
            if self.doc.get(&obj, key.as_str())?.is_none() {
                continue; // deleted
            }
            // An entry written whole is new (or replaced): judged with the counts below.
            let new = *parts == Parts::All;
            let bad_key = || {
                DocError::InvalidEdit(format!("an entry of {collection} is not under its own id"))
            };
            match collection.as_str() {
                "visits" => {
                    let v: Visit = autosurgeon::hydrate_prop(&self.doc, &obj, key.as_str())?;
                    if v.id.to_string() != key {
                        return Err(bad_key());
                    }
                    if !crate::calendar::is_visit_day(v.visit_day) {
                        return Err(DocError::InvalidEdit(
                            "a visit is not on a visit day".into(),
                        ));
                    }
                    validate::visit(&v, parts)?;
                    if new
                        && self.visits_on(&obj, &v.visit_day.to_string())
                            > validate::MAX_VISITS_PER_DAY
                    {
                        return Err(validate::FieldError {
                            field: validate::Field::Visits,
                            rule: validate::Rule::TooMany,
                        }
                        .into());
                    }
                }
                "reviews" => {
                    let r: crate::schema::Review =
                        autosurgeon::hydrate_prop(&self.doc, &obj, key.as_str())?;
                    if r.id.to_string() != key {
                        return Err(bad_key());
                    }
                    if r.heads.is_empty()
                        || r.heads.iter().any(|h| h.parse::<ChangeHash>().is_err())
                    {
                        return Err(DocError::InvalidEdit(
                            "a review must name the document version it saw".into(),
                        ));
                    }
                    validate::review(&r, parts)?;
                }
                "members" => {
                    let m: crate::schema::Member =
                        autosurgeon::hydrate_prop(&self.doc, &obj, key.as_str())?;
                    if m.id.to_string() != key {
                        return Err(bad_key());
                    }
                    validate::member(&m, parts)?;
                    if new {
                        added.insert("members");
                    }
                }
                _ => {
                    let d: Demand = autosurgeon::hydrate_prop(&self.doc, &obj, key.as_str())?;
                    if d.id.to_string() != key {
                        return Err(bad_key());
                    }
                    validate::demand(&d, parts)?;
                }
            }
        }
        if added.contains("members")
            && self.doc.length(&self.map_obj("members")?) > validate::MAX_MEMBERS
        {
            return Err(validate::FieldError {
                field: validate::Field::Members,
                rule: validate::Rule::TooMany,
            }
            .into());
        }
        Ok(touched)
    }

    /// The user recorded as a visit's worker, at `heads` (`None`: now); `None` when the visit
    /// is not there or has no readable worker.
    pub fn visit_worker(&self, visit: &str, heads: Option<&[ChangeHash]>) -> Option<UserId> {
        self.entry_user("visits", visit, "worker", heads)
    }

    /// A user id held in `field` of the entry `key` of the map `collection` (`visits`,
    /// `reviews`, ...), at `heads` (`None`: now).
    pub fn entry_user(
        &self,
        collection: &str,
        key: &str,
        field: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Option<UserId> {
        self.entry_uuid(collection, key, field, heads).map(UserId)
    }

    /// An id (a user, a visit, ...) held in `field` of the entry `key` of the map
    /// `collection`, at `heads` (`None`: now).
    pub fn entry_uuid(
        &self,
        collection: &str,
        key: &str,
        field: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Option<uuid::Uuid> {
        let read = |obj: &automerge::ObjId, key: &str| match heads {
            Some(h) => self.doc.get_at(obj, key, h),
            None => self.doc.get(obj, key),
        };
        let (_, entry) = if let Some(rooted) = rooted_key(collection, key) {
            read(&ROOT, &rooted).ok()??
        } else {
            let (_, map) = read(&ROOT, collection).ok()??;
            read(&map, key).ok()??
        };
        let (value, _) = read(&entry, field).ok()??;
        match value.as_scalar()? {
            automerge::ScalarValue::Bytes(b) => uuid::Uuid::from_slice(b).ok(),
            automerge::ScalarValue::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The household's id, as its document holds it.
    pub fn household_id(&self) -> Option<crate::ids::HouseholdId> {
        match self.doc.get(ROOT, "id").ok()?? {
            (automerge::Value::Scalar(s), _) => match s.as_ref() {
                automerge::ScalarValue::Bytes(b) => {
                    uuid::Uuid::from_slice(b).ok().map(crate::ids::HouseholdId)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Adds a supervisor's review as one change (only the new entry is written). The
    /// `reviews` map is created if the document predates reviews.
    pub fn add_review(
        &mut self,
        author: &Author,
        now_ms: i64,
        review: &crate::schema::Review,
    ) -> Result<ChangeHash> {
        use automerge::transaction::Transactable;
        crate::validate::review(review, &crate::validate::Parts::All)?;
        let result = (|| {
            let reviews = match self.doc.get(ROOT, "reviews")? {
                Some((automerge::Value::Object(automerge::ObjType::Map), id)) => id,
                _ => self
                    .doc
                    .put_object(ROOT, "reviews", automerge::ObjType::Map)?,
            };
            if self.doc.get(&reviews, review.id.to_string())?.is_some() {
                return Err(DocError::InvalidEdit(
                    "a review with this id already exists".into(),
                ));
            }
            autosurgeon::reconcile_prop(
                &mut self.doc,
                &reviews,
                review.id.to_string().as_str(),
                review,
            )?;
            Ok(())
        })();
        if let Err(e) = result {
            self.doc.rollback();
            return Err(e);
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty review change".into()))
    }

    /// Attaches a photo to a record of the household as one change (SYNC-v1 §14.2): a new
    /// reference under its own root key. Refused before writing if the reference breaks a
    /// rule: its size and caption ([`crate::validate::photo`]), a subject the household does
    /// not hold, more than [`crate::photo::MAX_SUBJECT_PHOTOS`] photos of one subject, more
    /// than [`crate::photo::MAX_VISIT_PHOTO_BYTES`] of photos on one visit.
    pub fn attach_photo(
        &mut self,
        author: &Author,
        now_ms: i64,
        photo: &crate::photo::Photo,
    ) -> Result<ChangeHash> {
        let key = crate::photo::root_key(&photo.id.to_string());
        if self.doc.get(ROOT, key.as_str())?.is_some() {
            return Err(DocError::InvalidEdit(
                "a photo with this id already exists".into(),
            ));
        }
        self.photo_rules(photo, &crate::validate::Parts::All, None)?;
        if let Err(e) = autosurgeon::reconcile_prop(&mut self.doc, ROOT, key.as_str(), photo) {
            self.doc.rollback();
            return Err(e.into());
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty photo change".into()))
    }

    /// Raises a tracked dispute or hazard (SYNC-v1 §13.10) as one change: a new case under its
    /// own root key. Refused before writing if it breaks a field rule
    /// ([`crate::validate::case`]), names a visit line the household does not hold, or comes
    /// with steps that do not follow ([`crate::ledger::check_steps`] but the role).
    pub fn raise_case(
        &mut self,
        author: &Author,
        now_ms: i64,
        case: &crate::ledger::Case,
    ) -> Result<ChangeHash> {
        let key = crate::ledger::root_key(&case.id.to_string());
        if self.doc.get(ROOT, key.as_str())?.is_some() {
            return Err(DocError::InvalidEdit(
                "a case with this id already exists".into(),
            ));
        }
        self.case_rules(case, &crate::validate::Parts::All)?;
        if let Err(e) = autosurgeon::reconcile_prop(&mut self.doc, ROOT, key.as_str(), case) {
            self.doc.rollback();
            return Err(e.into());
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty case change".into()))
    }

    /// Takes a step of a case, appending it to the history, as one change (with `demand`,
    /// the demand an escalation becomes, written in the same change). Refused if the step
    /// does not follow from the case's state or lacks its data (who may take it is the
    /// policy's: [`crate::ledger::CaseAction::may`]).
    pub fn case_step(
        &mut self,
        author: &Author,
        now_ms: i64,
        case: crate::ids::CaseId,
        action: crate::ledger::CaseAction,
        step: &crate::ledger::NewStep,
        demand: Option<&Demand>,
    ) -> Result<ChangeHash> {
        let key = crate::ledger::root_key(&case.to_string());
        let Some(mut c) = self.case(&case.to_string())? else {
            return Err(DocError::NotFound {
                kind: "case",
                id: case.to_string(),
            });
        };
        let entry = step
            .entry(&c, action, author.user, author.device, now_ms)
            .map_err(|e| DocError::InvalidEdit(e.to_string()))?;
        crate::validate::text(
            crate::validate::Field::CaseComment,
            &entry.comment,
            crate::validate::MAX_TEXT_CHARS,
        )?;
        let escalates = action == crate::ledger::CaseAction::Escalate;
        if (escalates && demand.map(|d| d.id) != entry.order) || (!escalates && demand.is_some()) {
            return Err(DocError::InvalidEdit(
                "an escalation is written with the demand it becomes".into(),
            ));
        }
        if let Some(d) = demand {
            crate::validate::demand(d, &crate::validate::Parts::All)?;
        }
        c.history.push(entry);
        // Only the new entry is written: autosurgeon appends it to the case's history.
        if let Err(e) = autosurgeon::reconcile_prop(&mut self.doc, ROOT, key.as_str(), &c) {
            self.doc.rollback();
            return Err(e.into());
        }
        if let Some(d) = demand {
            let demands = self.map_obj("demands")?;
            if self.doc.get(&demands, d.id.to_string())?.is_some() {
                self.doc.rollback();
                return Err(DocError::InvalidEdit(
                    "a demand with this id already exists".into(),
                ));
            }
            if let Err(e) =
                autosurgeon::reconcile_prop(&mut self.doc, &demands, d.id.to_string().as_str(), d)
            {
                self.doc.rollback();
                return Err(e.into());
            }
        }
        self.doc
            .commit_with(commit_options(author, now_ms))
            .ok_or_else(|| DocError::Automerge("empty case change".into()))
    }

    /// Every tracked case the household holds. A case that does not read as one is left out
    /// (the server never stores such a change: [`Self::validate_since`]).
    pub fn cases(&self) -> Vec<crate::ledger::Case> {
        self.rooted(crate::ledger::ROOT_PREFIX)
    }

    /// Every entry kept at a root key beginning with `prefix` (`photo:`, `case:`) that reads
    /// as a `T`; the others are left out.
    fn rooted<T: autosurgeon::Hydrate>(&self, prefix: &str) -> Vec<T> {
        let keys: Vec<String> = self
            .doc
            .keys(ROOT)
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.iter()
            .filter_map(|k| {
                autosurgeon::hydrate_prop::<_, Option<T>, _, _>(&self.doc, ROOT, k.as_str())
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// The case `id` (its id as text), if the household holds it.
    pub fn case(&self, id: &str) -> Result<Option<crate::ledger::Case>> {
        self.case_at(id, None)
    }

    /// The case `id` at `heads` (`None`: now), if the household held it then.
    pub fn case_at(
        &self,
        id: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Result<Option<crate::ledger::Case>> {
        let key = crate::ledger::root_key(id);
        match heads {
            None => {
                if self.doc.get(ROOT, key.as_str())?.is_none() {
                    return Ok(None);
                }
                Ok(Some(autosurgeon::hydrate_prop(
                    &self.doc,
                    ROOT,
                    key.as_str(),
                )?))
            }
            Some(h) => {
                if self.doc.get_at(ROOT, key.as_str(), h)?.is_none() {
                    return Ok(None);
                }
                let mut copy = self.doc.clone();
                let old = copy.fork_at(h).map_err(|_| DocError::NotFound {
                    kind: "version",
                    id: "heads".into(),
                })?;
                Ok(Some(autosurgeon::hydrate_prop(&old, ROOT, key.as_str())?))
            }
        }
    }

    /// A case a change wrote (`parts`: what it wrote), as the server judges it: under its own
    /// id, its fields within their rules, and what it names held by the household.
    fn check_case(&self, key: &str, parts: &crate::validate::Parts) -> Result<()> {
        let Some(case) = self.case(key)? else {
            return Ok(()); // deleted: the policy refuses it
        };
        if case.id.to_string() != key {
            return Err(DocError::InvalidEdit(
                "a case is not under its own id".into(),
            ));
        }
        self.case_rules(&case, parts)
    }

    /// What a case names must be the household's: the visit line it was raised on, the
    /// demand an escalation became.
    fn case_rules(&self, case: &crate::ledger::Case, parts: &crate::validate::Parts) -> Result<()> {
        crate::validate::case(case, parts)?;
        if let Some(visit) = case.raised_on_visit {
            let visits = self.map_obj("visits")?;
            let v: Option<Visit> =
                autosurgeon::hydrate_prop(&self.doc, &visits, visit.to_string().as_str())?;
            let Some(v) = v else {
                return Err(DocError::InvalidEdit(
                    "a case's visit is not in the household".into(),
                ));
            };
            let lines = match case.kind {
                crate::ledger::CaseKind::Hazard { .. } => v.hazards.len(),
                crate::ledger::CaseKind::Dispute { .. } => v.disputes.len(),
            };
            if case.item.is_some_and(|i| i as usize >= lines) {
                return Err(DocError::InvalidEdit(
                    "a case names a line its visit does not hold".into(),
                ));
            }
        } else if case.item.is_some() {
            return Err(DocError::InvalidEdit(
                "a case names a visit line without its visit".into(),
            ));
        }
        if case.history.len() > crate::ledger::MAX_CASE_STEPS {
            return Err(DocError::InvalidEdit("a case holds too many steps".into()));
        }
        let orders: Vec<_> = case.history.iter().filter_map(|e| e.order).collect();
        if !orders.is_empty() {
            let demands = self.map_obj("demands")?;
            for order in orders {
                if self.doc.get(&demands, order.to_string())?.is_none() {
                    return Err(DocError::InvalidEdit(
                        "a case is escalated into a demand the household does not hold".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every photo reference the household holds, by id. A reference that does not read as
    /// one is left out (the server never stores such a change: [`Self::validate_since`]).
    pub fn photos(&self) -> Vec<crate::photo::Photo> {
        self.rooted(crate::photo::ROOT_PREFIX)
    }

    /// The photo reference `id` (its id as text), if the household holds it.
    pub fn photo(&self, id: &str) -> Result<Option<crate::photo::Photo>> {
        let key = crate::photo::root_key(id);
        if self.doc.get(ROOT, key.as_str())?.is_none() {
            return Ok(None);
        }
        Ok(Some(autosurgeon::hydrate_prop(
            &self.doc,
            ROOT,
            key.as_str(),
        )?))
    }

    /// A photo reference a change wrote (`parts`: what it wrote), as the server judges it.
    fn check_photo(&self, key: &str, parts: &crate::validate::Parts) -> Result<()> {
        let Some(photo) = self.photo(key)? else {
            return Ok(()); // deleted
        };
        if photo.id.to_string() != key {
            return Err(DocError::InvalidEdit(
                "a photo is not under its own id".into(),
            ));
        }
        let new = *parts == crate::validate::Parts::All;
        // A reference names its bytes once: only its caption may change afterwards.
        let fixed = [
            "id",
            "hash",
            "size",
            "media_type",
            "taken_at_ms",
            "subject",
            "by",
            "device",
        ];
        if !new && fixed.iter().any(|f| parts.has(f)) {
            return Err(DocError::InvalidEdit(
                "only a photo's caption can change".into(),
            ));
        }
        self.photo_rules(&photo, parts, new.then_some(key))
    }

    /// The rules of a photo reference: its fields, and for a new one (`new`: its own id when it
    /// is already in the document) its subject and the counts it joins.
    fn photo_rules(
        &self,
        photo: &crate::photo::Photo,
        parts: &crate::validate::Parts,
        new: Option<&str>,
    ) -> Result<()> {
        use crate::photo::{MAX_SUBJECT_PHOTOS, MAX_VISIT_PHOTO_BYTES, PhotoSubject};
        use crate::validate::{Field, FieldError, Rule};
        if !crate::photo::is_hash(&photo.hash) {
            return Err(DocError::InvalidEdit(
                "a photo's hash is not 64 lower-case hex characters".into(),
            ));
        }
        crate::validate::photo(photo, parts)?;
        if *parts != crate::validate::Parts::All {
            return Ok(());
        }
        let missing = || DocError::InvalidEdit("a photo's subject is not in the household".into());
        match &photo.subject {
            PhotoSubject::Household => {}
            PhotoSubject::Visit { visit } => {
                self.visit(&visit.to_string())?.ok_or_else(missing)?;
            }
            PhotoSubject::Hazard { visit, item } => {
                let v = self.visit(&visit.to_string())?.ok_or_else(missing)?;
                if *item as usize >= v.hazards.len() {
                    return Err(missing());
                }
            }
            PhotoSubject::Dispute { visit, item } => {
                let v = self.visit(&visit.to_string())?.ok_or_else(missing)?;
                if *item as usize >= v.disputes.len() {
                    return Err(missing());
                }
            }
            PhotoSubject::DemandStep { demand, step } => {
                let key = demand.to_string();
                let held = self
                    .map_obj("demands")
                    .ok()
                    .and_then(|m| self.doc.get(&m, key.as_str()).ok().flatten());
                if held.is_none() {
                    return Err(missing());
                }
                let d = self.demand_at(&key, None)?.ok_or_else(missing)?;
                if *step as usize >= d.history.len() {
                    return Err(missing());
                }
            }
        }
        let others: Vec<_> = self
            .photos()
            .into_iter()
            .filter(|p| Some(p.id.to_string().as_str()) != new)
            .collect();
        let too = |rule| {
            Err(DocError::from(FieldError {
                field: Field::Photo,
                rule,
            }))
        };
        if others.iter().filter(|p| p.subject == photo.subject).count() >= MAX_SUBJECT_PHOTOS {
            return too(Rule::TooMany);
        }
        if let Some(visit) = photo.subject.visit() {
            let bytes: u64 = others
                .iter()
                .filter(|p| p.subject.visit() == Some(visit))
                .map(|p| p.size)
                .sum();
            if bytes + photo.size > MAX_VISIT_PHOTO_BYTES {
                return too(Rule::TooLarge);
            }
        }
        Ok(())
    }

    /// A demand as it is now, or as it was at `heads`; `None` when it is not there. Reading an
    /// earlier version copies the document, so callers ask only for demands that changed.
    /// The own time (ms) of the change that created the household: when it was registered,
    /// by the clock of the phone that did. Reads the whole history: call it only when needed.
    pub fn created_ms(&mut self) -> Option<i64> {
        guarded(|| Ok(self.doc.get_changes(&[]).first().map(|c| c.timestamp())))
            .ok()
            .flatten()
    }

    /// A visit's day as the document holds it now, read as one scalar (`None`: no such visit,
    /// or no readable day).
    pub fn visit_day_of(&self, visit: &str) -> Option<crate::calendar::Day> {
        let (_, visits) = self.doc.get(ROOT, "visits").ok()??;
        let (_, v) = self.doc.get(&visits, visit).ok()??;
        match self.doc.get(&v, "visit_day").ok()?? {
            (automerge::Value::Scalar(s), _) => s.as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// One visit as the document holds it now (`None`: not there).
    pub fn visit(&self, visit: &str) -> Result<Option<Visit>> {
        let Some((_, visits)) = self.doc.get(ROOT, "visits")? else {
            return Ok(None);
        };
        if self.doc.get(&visits, visit)?.is_none() {
            return Ok(None);
        }
        Ok(Some(autosurgeon::hydrate_prop(&self.doc, &visits, visit)?))
    }

    pub fn demand_at(&self, demand: &str, heads: Option<&[ChangeHash]>) -> Result<Option<Demand>> {
        let Some((_, demands)) = self.doc.get(ROOT, "demands")? else {
            return Ok(None);
        };
        match heads {
            None => Ok(autosurgeon::hydrate_prop(&self.doc, &demands, demand)?),
            Some(h) => {
                if self.doc.get_at(&demands, demand, h)?.is_none() {
                    return Ok(None);
                }
                let mut copy = self.doc.clone();
                let old = copy.fork_at(h).map_err(|_| DocError::NotFound {
                    kind: "version",
                    id: "heads".into(),
                })?;
                Ok(autosurgeon::hydrate_prop(&old, &demands, demand)?)
            }
        }
    }

    /// For each demand (by key), the change that appended each entry of its history, in
    /// order (`None` where it cannot be told): what the server's read model dates each step's
    /// arrival by. Reads every change's metadata once.
    pub fn history_changes(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, Vec<Option<ChangeHash>>>> {
        let mut ops: std::collections::BTreeMap<String, Vec<Option<(ActorId, u64)>>> =
            Default::default();
        let Some((_, demands)) = self.doc.get(ROOT, "demands")? else {
            return Ok(Default::default());
        };
        for key in self.doc.keys(&demands).collect::<Vec<_>>() {
            let Some((_, demand)) = self.doc.get(&demands, key.as_str())? else {
                continue;
            };
            let Some((_, history)) = self.doc.get(&demand, "history")? else {
                continue;
            };
            let mut entries = Vec::new();
            for i in 0..self.doc.length(&history) {
                // An entry is a map: its id is the operation that made it.
                entries.push(match self.doc.get(&history, i)? {
                    Some((_, automerge::ObjId::Id(counter, actor, _))) => Some((actor, counter)),
                    _ => None,
                });
            }
            ops.insert(key, entries);
        }
        let mut by_actor: std::collections::HashMap<ActorId, Vec<(u64, u64, ChangeHash)>> =
            Default::default();
        if !ops.is_empty() {
            for m in self.doc.get_changes_meta(&[]) {
                by_actor
                    .entry(m.actor.into_owned())
                    .or_default()
                    .push((m.start_op, m.max_op, m.hash));
            }
        }
        Ok(ops
            .into_iter()
            .map(|(key, entries)| {
                let hashes = entries
                    .into_iter()
                    .map(|op| {
                        let (actor, counter) = op?;
                        by_actor.get(&actor)?.iter().find_map(|(start, max, hash)| {
                            (*start <= counter && counter <= *max).then_some(*hash)
                        })
                    })
                    .collect();
                (key, hashes)
            })
            .collect())
    }

    /// A root field's value as text (strings and enum names), at `heads` (`None`: now).
    pub fn root_text(&self, key: &str, heads: Option<&[ChangeHash]>) -> Option<String> {
        let got = match heads {
            Some(h) => self.doc.get_at(ROOT, key, h),
            None => self.doc.get(ROOT, key),
        };
        got.ok()?.and_then(|(v, _)| v.into_string().ok())
    }

    /// A document built from the changes of this one, less `drop` and every change that
    /// depends on one of them (directly or not). Returns the new document and the hashes it
    /// left out. Used when a server refuses a change: the phone goes back to a history the
    /// server accepts and keeps working.
    /// The document is `None` when nothing is left (the household's creation was refused).
    pub fn without_changes(
        &mut self,
        drop: &[ChangeHash],
    ) -> Result<(Option<HouseholdDoc>, Vec<ChangeHash>)> {
        let mut dropped: std::collections::HashSet<ChangeHash> = drop.iter().copied().collect();
        let mut bytes = Vec::new();
        let mut left_out = Vec::new();
        for change in self.doc.get_changes(&[]) {
            if dropped.contains(&change.hash()) || change.deps().iter().any(|d| dropped.contains(d))
            {
                dropped.insert(change.hash());
                left_out.push(change.hash());
            } else {
                bytes.extend_from_slice(change.raw_bytes());
            }
        }
        if bytes.is_empty() {
            return Ok((None, left_out));
        }
        let mut doc = HouseholdDoc::load(&bytes)?;
        doc.set_actor(self.doc.get_actor().clone());
        Ok((Some(doc), left_out))
    }

    /// Applies changes already decoded (and hash-checked) with [`decode_changes`].
    pub fn apply_decoded(&mut self, changes: Vec<Change>) -> Result<()> {
        let applied = guarded(|| self.doc.apply_changes(changes).map_err(DocError::from));
        self.forget_patches();
        applied
    }

    /// Takes every change of `other` that this document lacks.
    pub fn merge(&mut self, other: &mut HouseholdDoc) -> Result<()> {
        let merged = guarded(|| {
            self.doc
                .merge(&mut other.doc)
                .map(|_| ())
                .map_err(DocError::from)
        });
        self.forget_patches();
        merged
    }

    /// Drops the patches Automerge recorded while applying others' changes. Nothing here
    /// reads them (diffs are taken between heads), but automerge 0.12 records a text
    /// insertion's patch even in an inactive patch log, one event per character, and keeps
    /// it as long as the document lives: about 200 bytes an applied operation, which a server
    /// holding documents in memory (or a phone) never got back.
    fn forget_patches(&mut self) {
        self.doc.reset_diff_cursor();
    }

    /// Hashes of changes this document is waiting for (named as dependencies of changes it
    /// holds back).
    pub fn missing_deps(&mut self) -> Vec<ChangeHash> {
        self.doc.get_missing_deps(&[])
    }

    /// The per-actor state of the history, for checking changes before they are applied
    /// ([`crate::integrity`]).
    pub fn lineage(&mut self) -> crate::integrity::Lineage {
        crate::integrity::Lineage::of(self.doc.document())
    }

    /// Checks `change` against Automerge's own rules for this document
    /// ([`crate::integrity::Lineage::check`]).
    pub fn check_change(
        &mut self,
        lineage: &crate::integrity::Lineage,
        change: &Change,
    ) -> std::result::Result<(), crate::integrity::Fault> {
        lineage.check(self.doc.document(), change)
    }

    /// Whether the document, with `change` applied, gives it back byte for byte
    /// ([`crate::integrity::Lineage::round_trips`]).
    pub fn round_trips(
        &mut self,
        change: &Change,
    ) -> std::result::Result<(), crate::integrity::Fault> {
        crate::integrity::Lineage::round_trips(self.doc.document(), change)
    }

    /// The underlying Automerge document, read-only.
    pub fn automerge(&self) -> &AutoCommit {
        &self.doc
    }

    pub(crate) fn automerge_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    pub(crate) fn commit(&mut self, author: &Author, now_ms: i64) -> Option<ChangeHash> {
        self.doc.commit_with(commit_options(author, now_ms))
    }
}

/// Decodes and verifies change bytes without touching any document. Each must be exactly one
/// uncompressed change chunk: compressed chunks (a DEFLATE bomb in 1 MB) and bundles (which
/// make Automerge 0.12 allocate gigabytes on a few hundred hostile bytes, found by fuzzing)
/// are refused before Automerge parses them.
pub fn decode_changes<'a>(changes: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<Change>> {
    changes
        .into_iter()
        .map(|bytes| {
            if chunk_types(bytes).as_deref() != Some(&[CHUNK_CHANGE]) {
                return Err(DocError::Corrupt);
            }
            guarded(|| Change::try_from(bytes).map_err(|_| DocError::Corrupt))
        })
        .collect()
}

const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// The chunk types of Automerge's storage format in `bytes`, in order, or `None` if the bytes
/// are not a sequence of whole chunks (magic, checksum, type, uLEB128 length, contents).
pub fn chunk_types(mut bytes: &[u8]) -> Option<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut types = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 9 || bytes[..4] != MAGIC {
            return None;
        }
        let (mut len, mut shift, mut at) = (0u64, 0u32, 9usize);
        loop {
            let b = *bytes.get(at)?;
            at += 1;
            if shift > 63 {
                return None;
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        if end > bytes.len() {
            return None;
        }
        types.push(bytes[8]);
        bytes = &bytes[end..];
    }
    Some(types)
}

pub(crate) fn commit_options(author: &Author, now_ms: i64) -> CommitOptions {
    CommitOptions::default()
        .with_message(author.to_message())
        .with_time(now_ms)
}
