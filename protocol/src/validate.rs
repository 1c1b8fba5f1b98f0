//! Field rules and limits (SYNC-v1 §13): what a household record's values must be, checked
//! the same way on the phone (before an edit is committed: `client-core`'s `Store`) and on the
//! server (for what an uploaded change touched: [`crate::doc::HouseholdDoc::validate_since`]).
//!
//! A value is judged only where an edit wrote it: a stored household whose old values break a
//! rule made later still loads, syncs and takes other edits (see [`Parts`]). A refused value
//! gives a [`FieldError`] that names the field and the rule by stable codes, never the value
//! (an ID or phone number must not reach a log or an error message).
//!
//! Lengths count characters (Unicode scalar values), as the app's text fields do.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{Deserialize, Serialize};

use crate::{
    calendar::Day,
    schema::{Demand, DemandTransition, Household, Member, Review, Sensitive, Visit},
};

/// A visit's note, in characters.
pub const MAX_NOTE_CHARS: usize = 5_000;
/// Other free text: the detail of a need, dispute or hazard, a demand's text, the comment of
/// a work-order step or of a review.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// A member's name.
pub const MAX_NAME_CHARS: usize = 50;
/// A household's address.
pub const MAX_ADDRESS_CHARS: usize = 200;
/// A household's door number.
pub const MAX_DOOR_NUMBER_CHARS: usize = 32;
/// Members of one household.
pub const MAX_MEMBERS: usize = 50;
/// Visits of one household recorded for one visit day (repeat attempts: nobody home, then
/// met).
pub const MAX_VISITS_PER_DAY: usize = 10;

/// The field a rule refused. Its serde name (`note`, `member_id_number`, ...) is the stable
/// code an app shows a message for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Address,
    DoorNumber,
    /// The household's own phone number.
    HouseholdPhone,
    /// The number of members.
    Members,
    MemberName,
    MemberIdNumber,
    MemberPhone,
    /// The number of visits for one visit day.
    Visits,
    Note,
    NeedDetail,
    DisputeDetail,
    HazardDetail,
    DemandText,
    /// The comment of a work-order step.
    StepComment,
    ReviewComment,
    /// The household document as a whole (its size).
    Document,
    /// The visit day a visit counts for.
    VisitDay,
    /// A photo: its bytes, its size, the photos of its subject or visit (SYNC-v1 §14.2).
    Photo,
    PhotoCaption,
    /// The evidence of a task report (周清单).
    TaskEvidence,
    /// What a tracked dispute or hazard is (SYNC-v1 §13.10).
    CaseDetail,
    /// A tracked dispute's parties or a hazard's place.
    CaseParties,
    /// The comment of a case's step.
    CaseComment,
    /// What an event or a work log says.
    JournalDetail,
    /// Where an event happened.
    JournalPlace,
    /// An entry's kind (an event needs its kind; a work log has none).
    JournalKind,
    /// An entry's day and time.
    JournalDay,
    /// An entry's position.
    JournalGps,
}

impl Field {
    /// The field's stable code (its serde name).
    pub fn code(self) -> &'static str {
        match self {
            Field::Address => "address",
            Field::DoorNumber => "door_number",
            Field::HouseholdPhone => "household_phone",
            Field::Members => "members",
            Field::MemberName => "member_name",
            Field::MemberIdNumber => "member_id_number",
            Field::MemberPhone => "member_phone",
            Field::Visits => "visits",
            Field::Note => "note",
            Field::NeedDetail => "need_detail",
            Field::DisputeDetail => "dispute_detail",
            Field::HazardDetail => "hazard_detail",
            Field::DemandText => "demand_text",
            Field::StepComment => "step_comment",
            Field::ReviewComment => "review_comment",
            Field::Document => "document",
            Field::VisitDay => "visit_day",
            Field::Photo => "photo",
            Field::PhotoCaption => "photo_caption",
            Field::TaskEvidence => "task_evidence",
            Field::CaseDetail => "case_detail",
            Field::CaseParties => "case_parties",
            Field::CaseComment => "case_comment",
            Field::JournalDetail => "journal_detail",
            Field::JournalPlace => "journal_place",
            Field::JournalKind => "journal_kind",
            Field::JournalDay => "journal_day",
            Field::JournalGps => "journal_gps",
        }
    }
}

/// The rule a value broke. Its serde name is a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Required and empty (or only blanks).
    Empty,
    /// Longer than the field's limit.
    TooLong,
    /// More entries than the limit (members, visits for one day).
    TooMany,
    /// The document would exceed its size limit
    /// ([`crate::wire::limits::MAX_DOC_OPS`], `MAX_CHANGE_OPS`, `MAX_CHANGE_BYTES`).
    TooLarge,
    /// Not 17 digits and a check character (an 18-character resident ID number).
    IdFormat,
    /// The check character does not match (GB 11643-1999, ISO 7064 MOD 11-2).
    IdCheckDigit,
    /// The birth date inside the ID number is not a real date from 1900 on.
    IdBirthDate,
    /// Not a mainland mobile number (11 digits starting with 1, then 3-9), nor, for a
    /// household's phone, a landline (0, area code, number).
    PhoneFormat,
    /// A visit for a visit day that has not come yet.
    FutureDay,
    /// A visit for a cycle before its worker held the grid.
    BeforeAssignment,
    /// A visit for a cycle before the household was registered.
    BeforeRegistration,
    /// Not a JPEG, PNG or WebP image (judged from the bytes).
    MediaType,
    /// Not a SHA-256 written as 64 lower-case hex characters (a photo's hash).
    HashFormat,
    /// Not one of the vocabulary's codes (an event's kind).
    UnknownCode,
    /// Outside its range (a latitude, a longitude).
    OutOfRange,
}

impl Rule {
    /// The rule's stable code (its serde name).
    pub fn code(self) -> &'static str {
        match self {
            Rule::Empty => "empty",
            Rule::TooLong => "too_long",
            Rule::TooMany => "too_many",
            Rule::TooLarge => "too_large",
            Rule::IdFormat => "id_format",
            Rule::IdCheckDigit => "id_check_digit",
            Rule::IdBirthDate => "id_birth_date",
            Rule::PhoneFormat => "phone_format",
            Rule::FutureDay => "future_day",
            Rule::BeforeAssignment => "before_assignment",
            Rule::BeforeRegistration => "before_registration",
            Rule::MediaType => "media_type",
            Rule::HashFormat => "hash_format",
            Rule::UnknownCode => "unknown_code",
            Rule::OutOfRange => "out_of_range",
        }
    }

    fn says(self) -> &'static str {
        match self {
            Rule::Empty => "is empty",
            Rule::TooLong => "is too long",
            Rule::TooMany => "has too many entries",
            Rule::TooLarge => "would grow the household past its size limit",
            Rule::IdFormat => "is not an 18-character ID number",
            Rule::IdCheckDigit => "has a wrong check digit",
            Rule::IdBirthDate => "holds an impossible birth date",
            Rule::PhoneFormat => "is not a valid phone number",
            Rule::FutureDay => "has not come yet",
            Rule::BeforeAssignment => "is before the worker held the grid",
            Rule::BeforeRegistration => "is before the household was registered",
            Rule::MediaType => "is not a JPEG, PNG or WebP image",
            Rule::HashFormat => "is not a SHA-256 in hex",
            Rule::UnknownCode => "is not a known code",
            Rule::OutOfRange => "is out of range",
        }
    }
}

/// A value refused by a field rule: which field, which rule. Never the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub struct FieldError {
    pub field: Field,
    pub rule: Rule,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field.code(), self.rule.says())
    }
}

pub type Result<T = ()> = std::result::Result<T, FieldError>;

fn fail(field: Field, rule: Rule) -> Result {
    Err(FieldError { field, rule })
}

/// A visit's day, as of `now_ms` (the phone's clock when the worker records it, the server's
/// when the visit arrives): never a visit day that has not come yet (allowing
/// [`crate::workorder::CLOCK_SKEW_MS`] of clock difference).
pub fn visit_day(day: Day, now_ms: i64) -> Result {
    if day > crate::workorder::day_of(now_ms.saturating_add(crate::workorder::CLOCK_SKEW_MS)) {
        return fail(Field::VisitDay, Rule::FutureDay);
    }
    Ok(())
}

/// A visit's day for a household registered on `registered` (the day of its creation): not
/// a cycle before that one.
pub fn visit_day_registered(day: Day, registered: Day) -> Result {
    if day < crate::calendar::cycle_of(registered) {
        return fail(Field::VisitDay, Rule::BeforeRegistration);
    }
    Ok(())
}

/// Free text of at most `max` characters.
pub fn text(field: Field, s: &str, max: usize) -> Result {
    // `len` bounds the count from above: most text is judged without counting.
    if s.len() > max && s.chars().count() > max {
        return fail(field, Rule::TooLong);
    }
    Ok(())
}

/// Required text: not empty or blank, at most `max` characters.
pub fn required(field: Field, s: &str, max: usize) -> Result {
    if s.trim().is_empty() {
        return fail(field, Rule::Empty);
    }
    text(field, s, max)
}

/// The weights of the first 17 digits of an ID number (GB 11643-1999: 2^(17-i) mod 11).
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// The check character for each remainder of the weighted sum mod 11.
const ID_CHECK: [u8; 11] = *b"10X98765432";

/// The check character of the first 17 digits of an ID number (ISO 7064 MOD 11-2).
pub fn id_check_char(first17: &[u8; 17]) -> u8 {
    let sum: u32 = first17
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    ID_CHECK[(sum % 11) as usize]
}

/// A resident ID number (GB 11643-1999): 6 digits of region, 8 of birth date (YYYYMMDD, a
/// real date from 1900 on), 3 of sequence, and the check character (a digit or `X`; a
/// lower-case `x` is refused, the app upper-cases it).
pub fn id_number(s: &str) -> std::result::Result<(), Rule> {
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return Err(Rule::IdFormat);
    }
    if !(b[17].is_ascii_digit() || b[17] == b'X') {
        return Err(Rule::IdFormat);
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().expect("digits");
    let (y, m, d) = (num(6..10), num(10..12), num(12..14));
    let date = u8::try_from(m)
        .ok()
        .zip(u8::try_from(d).ok())
        .and_then(|(m, d)| Day::ymd(y as i32, m, d));
    if y < 1900 || date.is_none() {
        return Err(Rule::IdBirthDate);
    }
    let first17: &[u8; 17] = b[..17].try_into().expect("17 bytes");
    if id_check_char(first17) != b[17] {
        return Err(Rule::IdCheckDigit);
    }
    Ok(())
}

/// A mainland mobile number as stored: 11 digits, `1` then `3`-`9` (no `+86`, spaces or
/// dashes; the app strips them).
pub fn mobile(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11 && b.iter().all(u8::is_ascii_digit) && b[0] == b'1' && b[1] >= b'3'
}

/// A mainland landline as stored: `0`, a 2- or 3-digit area code, an optional `-`, and a 7- or
/// 8-digit number (`010-12345678`, `057112345678`); 10 to 12 digits in all.
pub fn landline(s: &str) -> bool {
    let digits: String = match s.split_once('-') {
        Some((area, number)) => {
            if !(3..=4).contains(&area.len()) || !(7..=8).contains(&number.len()) {
                return false;
            }
            format!("{area}{number}")
        }
        None => s.to_string(),
    };
    let b = digits.as_bytes();
    (10..=12).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) && b[0] == b'0'
}

/// A household's address.
pub fn address(s: &str) -> Result {
    required(Field::Address, s, MAX_ADDRESS_CHARS)
}

/// A household's door number.
pub fn door_number(s: &str) -> Result {
    required(Field::DoorNumber, s, MAX_DOOR_NUMBER_CHARS)
}

/// A household's phone: a mobile or a landline (the house's fixed line).
pub fn household_phone(phone: Option<&Sensitive>) -> Result {
    match phone {
        Some(p) if !(mobile(p.reveal()) || landline(p.reveal())) => {
            fail(Field::HouseholdPhone, Rule::PhoneFormat)
        }
        _ => Ok(()),
    }
}

/// Which fields of an entry (a member, visit, demand or review) an edit wrote, so that only
/// those are judged. List fields may be narrowed to the items written (a work-order step
/// appended to a demand's history is judged, the steps before it are not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Parts {
    /// The whole entry (it is new, or was written as a whole).
    #[default]
    All,
    /// These fields; for each, `None` for all of it, else the list items written.
    Fields(BTreeMap<String, Option<BTreeSet<usize>>>),
}

impl Parts {
    /// No field yet.
    pub fn none() -> Parts {
        Parts::Fields(BTreeMap::new())
    }

    /// Marks the whole field `name` written.
    pub fn field(&mut self, name: &str) {
        if let Parts::Fields(f) = self {
            f.insert(name.to_string(), None);
        }
    }

    /// Marks items of the list field `name` written.
    pub fn items(&mut self, name: &str, items: impl IntoIterator<Item = usize>) {
        if let Parts::Fields(f) = self
            && let Some(set) = f
                .entry(name.to_string())
                .or_insert_with(|| Some(BTreeSet::new()))
        {
            set.extend(items);
        }
    }

    /// Adds what one patch of Automerge's diff wrote, at `path` under the entry.
    pub(crate) fn add(
        &mut self,
        path: &[(automerge::ObjId, automerge::Prop)],
        action: &automerge::PatchAction,
    ) {
        use automerge::{PatchAction as A, Prop};
        match (path.first(), path.get(1), action) {
            // On the entry itself: a field put or deleted.
            (None, _, A::PutMap { key, .. } | A::DeleteMap { key }) => self.field(key),
            (None, _, _) => *self = Parts::All,
            // On a list field: items inserted, set or deleted.
            (Some((_, Prop::Map(f))), None, A::Insert { index, values }) => {
                self.items(f, *index..*index + values.len())
            }
            (Some((_, Prop::Map(f))), None, A::PutSeq { index, .. }) => self.items(f, [*index]),
            (Some((_, Prop::Map(f))), None, A::DeleteSeq { .. }) => self.items(f, []),
            // Inside an item of a list field.
            (Some((_, Prop::Map(f))), Some((_, Prop::Seq(i))), _) => self.items(f, [*i]),
            // Text spliced, or anything else under a field.
            (Some((_, Prop::Map(f))), _, _) => self.field(f),
            _ => *self = Parts::All,
        }
    }

    /// Whether `name` was written (any of it).
    pub fn has(&self, name: &str) -> bool {
        match self {
            Parts::All => true,
            Parts::Fields(f) => f.contains_key(name),
        }
    }

    /// Whether item `i` of the list field `name` was written.
    pub fn item(&self, name: &str, i: usize) -> bool {
        match self {
            Parts::All => true,
            Parts::Fields(f) => match f.get(name) {
                Some(None) => true,
                Some(Some(set)) => set.contains(&i),
                None => false,
            },
        }
    }

    /// The parts of `after` that differ from `before` (`None`: the entry is new), for a
    /// typed edit; `fields` lists the field names and how to compare them.
    fn diff<T>(before: Option<&T>, after: &T, fields: &[(&str, FieldDiff<T>)]) -> Parts {
        let Some(before) = before else {
            return Parts::All;
        };
        let mut parts = Parts::none();
        for (name, diff) in fields {
            match diff {
                FieldDiff::Value(differs) => {
                    if differs(before, after) {
                        parts.field(name);
                    }
                }
                FieldDiff::List(changed) => {
                    let items = changed(before, after);
                    if !items.is_empty() {
                        parts.items(name, items);
                    }
                }
            }
        }
        parts
    }
}

enum FieldDiff<T> {
    Value(fn(&T, &T) -> bool),
    List(fn(&T, &T) -> Vec<usize>),
}

/// The items of `after` that are new or differ from `before`'s at the same place.
fn changed_items<X: PartialEq>(before: &[X], after: &[X]) -> Vec<usize> {
    (0..after.len())
        .filter(|&i| before.get(i) != after.get(i))
        .collect()
}

/// A member, the fields in `parts`.
pub fn member(m: &Member, parts: &Parts) -> Result {
    if parts.has("name") {
        required(Field::MemberName, &m.name, MAX_NAME_CHARS)?;
    }
    if parts.has("id_number")
        && let Some(n) = &m.id_number
    {
        id_number(n.reveal()).map_err(|rule| FieldError {
            field: Field::MemberIdNumber,
            rule,
        })?;
    }
    if parts.has("phone")
        && let Some(p) = &m.phone
        && !mobile(p.reveal())
    {
        return fail(Field::MemberPhone, Rule::PhoneFormat);
    }
    Ok(())
}

/// A visit's note, as a whole.
pub fn note(s: &str) -> Result {
    text(Field::Note, s, MAX_NOTE_CHARS)
}

/// A visit, the fields in `parts`.
pub fn visit(v: &Visit, parts: &Parts) -> Result {
    if parts.has("note") {
        note(v.note.as_str())?;
    }
    for (i, n) in v.needs.iter().enumerate() {
        if parts.item("needs", i) {
            text(Field::NeedDetail, &n.detail, MAX_TEXT_CHARS)?;
        }
    }
    for (i, d) in v.disputes.iter().enumerate() {
        if parts.item("disputes", i) {
            text(Field::DisputeDetail, &d.detail, MAX_TEXT_CHARS)?;
        }
    }
    for (i, h) in v.hazards.iter().enumerate() {
        if parts.item("hazards", i) {
            text(Field::HazardDetail, &h.detail, MAX_TEXT_CHARS)?;
        }
    }
    Ok(())
}

/// A work-order step's comment.
pub fn step(t: &DemandTransition) -> Result {
    text(Field::StepComment, &t.comment, MAX_TEXT_CHARS)
}

/// A demand, the fields in `parts`.
pub fn demand(d: &Demand, parts: &Parts) -> Result {
    if parts.has("text") {
        text(Field::DemandText, &d.text, MAX_TEXT_CHARS)?;
    }
    for (i, t) in d.history.iter().enumerate() {
        if parts.item("history", i) {
            step(t)?;
        }
    }
    Ok(())
}

/// A tracked case (SYNC-v1 §13.10), the fields in `parts`: its detail required, detail, parties
/// and step comments at most [`MAX_TEXT_CHARS`].
pub fn case(c: &crate::ledger::Case, parts: &Parts) -> Result {
    if parts.has("detail") {
        required(Field::CaseDetail, &c.detail, MAX_TEXT_CHARS)?;
    }
    if parts.has("parties") {
        text(Field::CaseParties, &c.parties, MAX_TEXT_CHARS)?;
    }
    for (i, s) in c.history.iter().enumerate() {
        if parts.item("history", i) {
            text(Field::CaseComment, &s.comment, MAX_TEXT_CHARS)?;
        }
    }
    Ok(())
}

/// A review, the fields in `parts`.
pub fn review(r: &Review, parts: &Parts) -> Result {
    if parts.has("comment") {
        text(Field::ReviewComment, &r.comment, MAX_TEXT_CHARS)?;
    }
    Ok(())
}

/// A photo reference (SYNC-v1 §14.2): not empty, at most [`crate::photo::MAX_PHOTO_BYTES`],
/// a caption within its length. How many a subject holds is the document's rule
/// ([`crate::doc::HouseholdDoc::attach_photo`]).
pub fn photo(p: &crate::photo::Photo, parts: &Parts) -> Result {
    if parts.has("size") {
        if p.size == 0 {
            return fail(Field::Photo, Rule::Empty);
        }
        if p.size > crate::photo::MAX_PHOTO_BYTES {
            return fail(Field::Photo, Rule::TooLarge);
        }
    }
    if parts.has("caption") {
        text(
            Field::PhotoCaption,
            &p.caption,
            crate::photo::MAX_CAPTION_CHARS,
        )?;
    }
    Ok(())
}

/// A task report (周清单): its evidence, at most [`MAX_TEXT_CHARS`], and its photos: at most
/// [`crate::photo::MAX_SUBJECT_PHOTOS`], each a hash, not empty and at most
/// [`crate::photo::MAX_PHOTO_BYTES`], a caption within its length, and together at most
/// [`crate::photo::MAX_VISIT_PHOTO_BYTES`] (SYNC-v1 §14.2). The phone checks a report before
/// it keeps it, the server before it stores it.
pub fn task_report(evidence: &str, photos: &[crate::photo::ReportPhoto]) -> Result {
    use crate::photo::{
        MAX_CAPTION_CHARS, MAX_PHOTO_BYTES, MAX_SUBJECT_PHOTOS, MAX_VISIT_PHOTO_BYTES,
    };
    text(Field::TaskEvidence, evidence, MAX_TEXT_CHARS)?;
    if photos.len() > MAX_SUBJECT_PHOTOS {
        return fail(Field::Photo, Rule::TooMany);
    }
    let mut total: u64 = 0;
    for p in photos {
        if !crate::photo::is_hash(&p.hash) {
            return fail(Field::Photo, Rule::HashFormat);
        }
        if p.size == 0 {
            return fail(Field::Photo, Rule::Empty);
        }
        if p.size > MAX_PHOTO_BYTES {
            return fail(Field::Photo, Rule::TooLarge);
        }
        text(Field::PhotoCaption, &p.caption, MAX_CAPTION_CHARS)?;
        total = total.saturating_add(p.size);
    }
    if total > MAX_VISIT_PHOTO_BYTES {
        return fail(Field::Photo, Rule::TooLarge);
    }
    Ok(())
}

/// A photo's bytes before they are attached or taken in: a JPEG, PNG or WebP image of at
/// most [`crate::photo::MAX_PHOTO_BYTES`].
pub fn photo_bytes(bytes: &[u8]) -> std::result::Result<crate::photo::MediaType, FieldError> {
    if bytes.is_empty() {
        return Err(FieldError {
            field: Field::Photo,
            rule: Rule::Empty,
        });
    }
    if bytes.len() as u64 > crate::photo::MAX_PHOTO_BYTES {
        return Err(FieldError {
            field: Field::Photo,
            rule: Rule::TooLarge,
        });
    }
    crate::photo::MediaType::of_bytes(bytes).ok_or(FieldError {
        field: Field::Photo,
        rule: Rule::MediaType,
    })
}

/// A new household record, every field and entry.
pub fn household(h: &Household) -> Result {
    edit(None, h)
}

/// A household record as a typed edit left it (`before`: as it was; `None` for a new one):
/// the facts and entries that differ are judged, and the counts when entries were added.
pub fn edit(before: Option<&Household>, after: &Household) -> Result {
    let fact = |differs: &dyn Fn(&Household) -> bool| before.is_none_or(differs);
    if fact(&|b| b.address != after.address) {
        address(&after.address)?;
    }
    if fact(&|b| b.door_number != after.door_number) {
        door_number(&after.door_number)?;
    }
    if fact(&|b| b.phone != after.phone) {
        household_phone(after.phone.as_ref())?;
    }
    let old = |k| before.and_then(|b| b.members.get(k));
    for (k, m) in &after.members {
        let parts = Parts::diff(
            old(k),
            m,
            &[
                ("name", FieldDiff::Value(|a, b| a.name != b.name)),
                (
                    "id_number",
                    FieldDiff::Value(|a, b| a.id_number != b.id_number),
                ),
                ("phone", FieldDiff::Value(|a, b| a.phone != b.phone)),
            ],
        );
        member(m, &parts)?;
    }
    let before_members = before.map_or(0, |b| b.members.len());
    if after.members.len() > MAX_MEMBERS && after.members.len() > before_members {
        return fail(Field::Members, Rule::TooMany);
    }
    for (k, v) in &after.visits {
        let old = before.and_then(|b| b.visits.get(k));
        let parts = Parts::diff(
            old,
            v,
            &[
                (
                    "note",
                    FieldDiff::Value(|a, b| a.note.as_str() != b.note.as_str()),
                ),
                (
                    "needs",
                    FieldDiff::List(|a, b| changed_items(&a.needs, &b.needs)),
                ),
                (
                    "disputes",
                    FieldDiff::List(|a, b| changed_items(&a.disputes, &b.disputes)),
                ),
                (
                    "hazards",
                    FieldDiff::List(|a, b| changed_items(&a.hazards, &b.hazards)),
                ),
            ],
        );
        visit(v, &parts)?;
        if old.is_none() {
            let same_day = after
                .visits
                .values()
                .filter(|o| o.visit_day == v.visit_day)
                .count();
            let before_same_day = before.map_or(0, |b| {
                b.visits
                    .values()
                    .filter(|o| o.visit_day == v.visit_day)
                    .count()
            });
            if same_day > MAX_VISITS_PER_DAY && same_day > before_same_day {
                return fail(Field::Visits, Rule::TooMany);
            }
        }
    }
    for (k, d) in &after.demands {
        let parts = Parts::diff(
            before.and_then(|b| b.demands.get(k)),
            d,
            &[
                ("text", FieldDiff::Value(|a, b| a.text != b.text)),
                (
                    "history",
                    FieldDiff::List(|a, b| changed_items(&a.history, &b.history)),
                ),
            ],
        );
        demand(d, &parts)?;
    }
    for (k, r) in &after.reviews {
        let parts = Parts::diff(
            before.and_then(|b| b.reviews.get(k)),
            r,
            &[("comment", FieldDiff::Value(|a, b| a.comment != b.comment))],
        );
        review(r, &parts)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An ID number with its check character computed.
    fn with_check(first17: &str) -> String {
        let b: &[u8; 17] = first17.as_bytes().try_into().unwrap();
        format!("{first17}{}", id_check_char(b) as char)
    }

    #[test]
    fn a_task_report_holds_bounded_evidence_and_bounded_photos() {
        use crate::photo::{
            MAX_CAPTION_CHARS, MAX_PHOTO_BYTES, MAX_SUBJECT_PHOTOS, MediaType, ReportPhoto,
        };
        let shot = |i: u8, size: u64| ReportPhoto {
            hash: crate::photo::hash_of(&[i]),
            size,
            media_type: MediaType::Jpeg,
            taken_at_ms: 1,
            caption: "海报".into(),
        };
        let refused = |field, rule| Err(FieldError { field, rule });
        assert_eq!(task_report("张贴防诈海报", &[shot(1, 300_000)]), Ok(()));
        assert_eq!(task_report("", &[]), Ok(()));
        assert_eq!(
            task_report(&"字".repeat(MAX_TEXT_CHARS + 1), &[]),
            refused(Field::TaskEvidence, Rule::TooLong)
        );
        let many: Vec<_> = (0..=MAX_SUBJECT_PHOTOS as u8)
            .map(|i| shot(i, 10))
            .collect();
        assert_eq!(task_report("", &many), refused(Field::Photo, Rule::TooMany));
        assert_eq!(task_report("", &many[..MAX_SUBJECT_PHOTOS]), Ok(()));
        assert_eq!(
            task_report("", &[shot(1, 0)]),
            refused(Field::Photo, Rule::Empty)
        );
        assert_eq!(
            task_report("", &[shot(1, MAX_PHOTO_BYTES + 1)]),
            refused(Field::Photo, Rule::TooLarge)
        );
        // Five of the largest are over the bytes one report (as one visit) may hold.
        let big: Vec<_> = (0..5).map(|i| shot(i, MAX_PHOTO_BYTES)).collect();
        assert_eq!(task_report("", &big), refused(Field::Photo, Rule::TooLarge));
        let mut bad = shot(1, 10);
        bad.hash = bad.hash.to_uppercase();
        assert_eq!(
            task_report("", &[bad]),
            refused(Field::Photo, Rule::HashFormat)
        );
        let mut long = shot(1, 10);
        long.caption = "字".repeat(MAX_CAPTION_CHARS + 1);
        assert_eq!(
            task_report("", &[long]),
            refused(Field::PhotoCaption, Rule::TooLong)
        );
    }

    #[test]
    fn a_visit_day_is_not_in_the_future_nor_before_the_household() {
        let d = |s: &str| -> Day { s.parse().unwrap() };
        // Noon on 2026-12-15, China time.
        let noon = 1_797_307_200_000;
        assert_eq!(crate::workorder::day_of(noon), d("2026-12-15"));
        assert!(visit_day(d("2026-12-15"), noon).is_ok());
        assert!(visit_day(d("2026-11-30"), noon).is_ok());
        assert_eq!(
            visit_day(d("2027-01-15"), noon),
            Err(FieldError {
                field: Field::VisitDay,
                rule: Rule::FutureDay
            })
        );
        assert!(visit_day(d("2026-12-30"), noon).is_err());
        // Registered on the 16th: the 15th's cycle still counts (a catch-up), the one before
        // does not.
        assert!(visit_day_registered(d("2026-12-15"), d("2026-12-16")).is_ok());
        assert_eq!(
            visit_day_registered(d("2026-11-30"), d("2026-12-16")).map_err(|e| e.rule),
            Err(Rule::BeforeRegistration)
        );
    }

    #[test]
    fn id_numbers_follow_gb_11643() {
        // Valid: the standard's own example, one with X, and a leap day.
        for ok in [
            "11010519491231002X",
            "410105195001011235",
            "110105200002290013",
        ] {
            assert_eq!(id_number(ok), Ok(()), "{ok}");
        }
        for (bad, rule) in [
            ("12345", Rule::IdFormat),
            ("", Rule::IdFormat),
            ("41010519500101123", Rule::IdFormat),
            ("4101051950010112345", Rule::IdFormat),
            ("11010519491231002x", Rule::IdFormat),
            ("1101051949123100XX", Rule::IdFormat),
            ("１１０１０５１９４９１２３１００２X", Rule::IdFormat),
            ("410105195001011234", Rule::IdCheckDigit),
            ("110105194912310021", Rule::IdCheckDigit),
            ("110105190002290019", Rule::IdBirthDate), // 1900 was no leap year
            ("110105199013010016", Rule::IdBirthDate),
            ("110105199001320016", Rule::IdBirthDate),
            ("110105189912310016", Rule::IdBirthDate),
        ] {
            // Birth-date cases carry a right check digit, so the date is what fails.
            let bad = if rule == Rule::IdBirthDate {
                with_check(&bad[..17])
            } else {
                bad.to_string()
            };
            assert_eq!(id_number(&bad), Err(rule), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn an_id_number_with_its_check_digit_is_valid_and_any_other_is_not(
            region in 110_000u32..=659_999,
            day in 0i64..50_000,
            seq in 0u32..1000,
            other in 0usize..11,
        ) {
            let birth = Day::ymd(1900, 1, 1).unwrap().add_days(day);
            let first17 = format!(
                "{region}{:04}{:02}{:02}{seq:03}",
                birth.year(),
                birth.month(),
                birth.day()
            );
            let good = with_check(&first17);
            prop_assert_eq!(id_number(&good), Ok(()));
            let wrong = ID_CHECK[other] as char;
            prop_assume!(good.as_bytes()[17] != wrong as u8);
            prop_assert_eq!(id_number(&format!("{first17}{wrong}")), Err(Rule::IdCheckDigit));
        }

        #[test]
        fn one_changed_digit_breaks_the_check(
            region in 110_000u32..=659_999,
            day in 0i64..50_000,
            seq in 0u32..1000,
            at in 0usize..17,
            plus in 1u8..10,
        ) {
            let birth = Day::ymd(1900, 1, 1).unwrap().add_days(day);
            let first17 = format!(
                "{region}{:04}{:02}{:02}{seq:03}",
                birth.year(),
                birth.month(),
                birth.day()
            );
            let mut bytes = with_check(&first17).into_bytes();
            bytes[at] = b'0' + (bytes[at] - b'0' + plus) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            // A changed date digit may make an impossible date; any other change is caught
            // by the check character (MOD 11-2 detects every single-digit error).
            prop_assert!(id_number(&changed).is_err());
        }
    }

    #[test]
    fn phone_numbers_are_mainland_mobiles_or_for_a_household_landlines() {
        for ok in ["13812345678", "19912345678", "16600001111"] {
            assert!(mobile(ok), "{ok}");
        }
        for bad in [
            "12345678901",
            "1381234567",
            "138123456789",
            "+8613812345678",
            "138 1234 5678",
            "23812345678",
            "",
        ] {
            assert!(!mobile(bad), "{bad}");
        }
        for ok in [
            "010-12345678",
            "0571-1234567",
            "01012345678",
            "057112345678",
        ] {
            assert!(landline(ok), "{ok}");
        }
        for bad in [
            "12345678",
            "010-123456",
            "10-12345678",
            "010-123456789",
            "0101234567890",
        ] {
            assert!(!landline(bad), "{bad}");
        }
        let p = |s: &str| Some(Sensitive::new(s));
        assert_eq!(household_phone(p("0571-1234567").as_ref()), Ok(()));
        assert_eq!(household_phone(None), Ok(()));
        assert_eq!(
            household_phone(p("12345").as_ref()),
            fail(Field::HouseholdPhone, Rule::PhoneFormat)
        );
    }

    #[test]
    fn required_text_is_not_blank_and_lengths_count_characters() {
        assert_eq!(address("  "), fail(Field::Address, Rule::Empty));
        assert_eq!(door_number(""), fail(Field::DoorNumber, Rule::Empty));
        assert_eq!(door_number("12-3"), Ok(()));
        // 5,000 Chinese characters are 15,000 bytes: within the note's limit.
        assert_eq!(note(&"字".repeat(MAX_NOTE_CHARS)), Ok(()));
        assert_eq!(
            note(&"字".repeat(MAX_NOTE_CHARS + 1)),
            fail(Field::Note, Rule::TooLong)
        );
        assert_eq!(
            address(&"a".repeat(MAX_ADDRESS_CHARS + 1)),
            fail(Field::Address, Rule::TooLong)
        );
    }

    #[test]
    fn an_edit_is_judged_on_what_it_changed() {
        use crate::ids::*;
        use crate::schema::Relation;
        let mut old = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "");
        let m = MemberId::new();
        old.members.insert(
            m,
            Member {
                id: m,
                relation: Relation::Head,
                name: "王建国".into(),
                id_number: Some(Sensitive::new("12345")),
                birth_date: None,
                phone: None,
                tags: vec![],
            },
        );
        assert_eq!(household(&old), fail(Field::DoorNumber, Rule::Empty));
        // A stored record with an empty door number and a bad ID number takes an edit of
        // its address, and of the member's name.
        let mut new = old.clone();
        new.address = "西村".into();
        new.members.get_mut(&m).unwrap().name = "王建民".into();
        assert_eq!(edit(Some(&old), &new), Ok(()));
        // An edit writing the bad values is refused, naming the field.
        new.members.get_mut(&m).unwrap().name = " ".into();
        assert_eq!(edit(Some(&old), &new), fail(Field::MemberName, Rule::Empty));
        let mut new = old.clone();
        new.members.get_mut(&m).unwrap().id_number = Some(Sensitive::new("410105195001011234"));
        assert_eq!(
            edit(Some(&old), &new),
            fail(Field::MemberIdNumber, Rule::IdCheckDigit)
        );
        // Too many members, only when one is added.
        let mut crowd = old.clone();
        for _ in 0..MAX_MEMBERS {
            let id = MemberId::new();
            let mut x = crowd.members[&m].clone();
            x.id = id;
            x.id_number = None;
            crowd.members.insert(id, x);
        }
        assert_eq!(
            edit(Some(&old), &crowd),
            fail(Field::Members, Rule::TooMany)
        );
    }

    fn sample_visit(a: &crate::doc::Author, note: &str) -> Visit {
        use crate::ids::*;
        use crate::schema::*;
        Visit {
            id: VisitId::new(),
            visit_day: "2026-11-15".parse().unwrap(),
            worker: a.user,
            device: a.device,
            started_at_ms: 1,
            ended_at_ms: None,
            gps: None,
            outcome: VisitOutcome::Met,
            people_met: vec![],
            needs: vec![],
            disputes: vec![],
            hazards: vec![],
            publicity: vec![],
            note: autosurgeon::Text::with_value(note),
            demands_raised: vec![],
        }
    }

    fn field_error(e: crate::DocError) -> FieldError {
        match e {
            crate::DocError::Field(f) => f,
            other => panic!("not a field error: {other}"),
        }
    }

    /// A server judges what an uploaded change wrote: changes made with raw Automerge (past
    /// the typed edits) on a stored household that breaks later rules.
    #[test]
    fn validate_since_judges_only_what_a_change_wrote() {
        use automerge::{ROOT, ReadDoc, transaction::Transactable};

        use crate::{doc::*, ids::*, schema::*};
        let a = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let id = HouseholdId::new();
        // A household stored before the rules: no door number, a member with a bad ID number,
        // a demand whose first step has a comment over today's limit.
        let mut old = Household::new(id, GridId::new("g1"), "东村", "");
        let m = MemberId::new();
        old.members.insert(
            m,
            Member {
                id: m,
                relation: Relation::Head,
                name: "王建国".into(),
                id_number: Some(Sensitive::new("12345")),
                birth_date: None,
                phone: None,
                tags: vec![],
            },
        );
        let mut raw = automerge::AutoCommit::new().with_actor(actor_for(a.device));
        autosurgeon::reconcile(&mut raw, &old).unwrap();
        raw.commit();
        let mut doc = HouseholdDoc::load(&raw.save()).unwrap();
        // Judged whole, as a new household: refused.
        assert_eq!(
            field_error(doc.validate_since(&[], id).unwrap_err()),
            FieldError {
                field: Field::DoorNumber,
                rule: Rule::Empty
            }
        );
        // Each case: a change made on the stored household, and the verdict.
        type Case = (
            &'static str,
            Box<dyn Fn(&mut automerge::AutoCommit)>,
            Option<FieldError>,
        );
        let cases: Vec<Case> = vec![
            (
                "another fact",
                Box::new(|d| d.put(ROOT, "address", "西村").unwrap()),
                None,
            ),
            (
                "the empty door number written",
                Box::new(|d| d.put(ROOT, "door_number", " ").unwrap()),
                Some(FieldError {
                    field: Field::DoorNumber,
                    rule: Rule::Empty,
                }),
            ),
            (
                "the member's name",
                Box::new(move |d| {
                    let (_, ms) = d.get(ROOT, "members").unwrap().unwrap();
                    let (_, e) = d.get(&ms, m.to_string()).unwrap().unwrap();
                    d.put(&e, "name", "王建民").unwrap();
                }),
                None,
            ),
            (
                "an empty name",
                Box::new(move |d| {
                    let (_, ms) = d.get(ROOT, "members").unwrap().unwrap();
                    let (_, e) = d.get(&ms, m.to_string()).unwrap().unwrap();
                    d.put(&e, "name", "").unwrap();
                }),
                Some(FieldError {
                    field: Field::MemberName,
                    rule: Rule::Empty,
                }),
            ),
            (
                "a bad ID number written",
                Box::new(move |d| {
                    let (_, ms) = d.get(ROOT, "members").unwrap().unwrap();
                    let (_, e) = d.get(&ms, m.to_string()).unwrap().unwrap();
                    d.put(&e, "id_number", "110105194912310021").unwrap();
                }),
                Some(FieldError {
                    field: Field::MemberIdNumber,
                    rule: Rule::IdCheckDigit,
                }),
            ),
            (
                "a visit with an oversized note",
                Box::new(move |d| {
                    let v = sample_visit(&a, &"字".repeat(MAX_NOTE_CHARS + 1));
                    let (_, vs) = d.get(ROOT, "visits").unwrap().unwrap();
                    autosurgeon::reconcile_prop(d, &vs, v.id.to_string().as_str(), &v).unwrap();
                }),
                Some(FieldError {
                    field: Field::Note,
                    rule: Rule::TooLong,
                }),
            ),
        ];
        for (what, change, verdict) in cases {
            let mut copy = doc.clone();
            let before = copy.heads();
            change(copy.automerge_mut());
            copy.commit(&a, 2);
            let got = copy.validate_since(&before, id).err().map(field_error);
            assert_eq!(got, verdict, "{what}");
        }
        // A collection replaced by something that is not one, or deleted: every phone would
        // fail to read the household. Replaced by an empty map, it reads.
        type Replaced = (&'static str, Box<dyn Fn(&mut automerge::AutoCommit)>, bool);
        let replaced: [Replaced; 4] = [
            (
                "visits as a string",
                Box::new(|d| d.put(ROOT, "visits", "x").unwrap()),
                false,
            ),
            (
                "members deleted",
                Box::new(|d| d.delete(ROOT, "members").unwrap()),
                false,
            ),
            (
                "demands as a list",
                Box::new(|d| {
                    d.put_object(ROOT, "demands", automerge::ObjType::List)
                        .unwrap();
                }),
                false,
            ),
            (
                "visits as an empty map",
                Box::new(|d| {
                    d.put_object(ROOT, "visits", automerge::ObjType::Map)
                        .unwrap();
                }),
                true,
            ),
        ];
        for (what, change, reads) in replaced {
            let mut copy = doc.clone();
            let before = copy.heads();
            change(copy.automerge_mut());
            copy.commit(&a, 2);
            assert_eq!(copy.validate_since(&before, id).is_ok(), reads, "{what}");
            assert_eq!(copy.household().is_ok(), reads, "{what}");
        }
        // A change lowering the schema version to slip past the field rules.
        let mut copy = doc.clone();
        let before = copy.heads();
        copy.automerge_mut()
            .put(ROOT, "schema_version", 1u64)
            .unwrap();
        copy.automerge_mut().put(ROOT, "door_number", "").unwrap();
        copy.commit(&a, 2);
        assert!(matches!(
            copy.validate_since(&before, id),
            Err(crate::DocError::InvalidEdit(_))
        ));
        // A note grown past its limit by splicing, in a later change.
        let v = sample_visit(&a, "见到户主");
        doc.add_visit(&a, 3, &v, &[]).unwrap();
        let before = doc.heads();
        {
            let d = doc.automerge_mut();
            let (_, vs) = d.get(ROOT, "visits").unwrap().unwrap();
            let (_, e) = d.get(&vs, v.id.to_string()).unwrap().unwrap();
            let (_, note) = d.get(&e, "note").unwrap().unwrap();
            d.splice_text(&note, 0, 0, &"字".repeat(MAX_NOTE_CHARS))
                .unwrap();
        }
        doc.commit(&a, 4);
        assert_eq!(
            doc.validate_since(&before, id).err().map(field_error),
            Some(FieldError {
                field: Field::Note,
                rule: Rule::TooLong
            })
        );
        assert!(
            doc.automerge().get(ROOT, "visits").unwrap().is_some(),
            "the document itself is untouched by validation"
        );
    }

    /// The typed edits refuse before anything is written.
    #[test]
    fn the_typed_edits_refuse_before_writing() {
        use crate::{doc::*, ids::*, schema::*};
        let a = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let id = HouseholdId::new();
        let bad = Household::new(id, GridId::new("g1"), "", "3");
        assert_eq!(
            field_error(HouseholdDoc::create(&bad, &a, 1).unwrap_err()).field,
            Field::Address
        );
        let mut doc =
            HouseholdDoc::create(&Household::new(id, GridId::new("g1"), "东村", "3"), &a, 1)
                .unwrap();
        let heads = doc.heads();
        let big = sample_visit(&a, &"x".repeat(10 * 1024 * 1024));
        assert_eq!(
            field_error(doc.add_visit(&a, 2, &big, &[]).unwrap_err()).field,
            Field::Note
        );
        let v = sample_visit(&a, "ok");
        doc.add_visit(&a, 2, &v, &[]).unwrap();
        let after_visit = doc.heads();
        assert_ne!(after_visit, heads);
        let e = doc
            .splice_note(&a, 3, v.id, 0, 0, &"x".repeat(MAX_NOTE_CHARS - 1))
            .unwrap_err();
        assert_eq!(field_error(e).field, Field::Note);
        let e = doc
            .replace_note(&a, 3, v.id, &"x".repeat(MAX_NOTE_CHARS + 1))
            .unwrap_err();
        assert_eq!(field_error(e).field, Field::Note);
        let e = doc
            .edit(&a, 3, |h| {
                h.phone = Some(Sensitive::new("12345"));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(field_error(e).field, Field::HouseholdPhone);
        // Ten visits for one day, not eleven.
        for i in 1..MAX_VISITS_PER_DAY {
            doc.add_visit(&a, 4 + i as i64, &sample_visit(&a, "again"), &[])
                .unwrap();
        }
        let e = doc
            .add_visit(&a, 20, &sample_visit(&a, "once more"), &[])
            .unwrap_err();
        assert_eq!(
            field_error(e),
            FieldError {
                field: Field::Visits,
                rule: Rule::TooMany
            }
        );
        assert_eq!(doc.household().unwrap().visits.len(), MAX_VISITS_PER_DAY);
    }

    #[test]
    fn errors_name_the_field_never_the_value() {
        let e = FieldError {
            field: Field::MemberIdNumber,
            rule: Rule::IdCheckDigit,
        };
        assert_eq!(e.to_string(), "member_id_number has a wrong check digit");
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            serde_json::json!({"field": "member_id_number", "rule": "id_check_digit"})
        );
        // The codes are the serde names.
        for f in [Field::Note, Field::HouseholdPhone, Field::Document] {
            assert_eq!(serde_json::to_value(f).unwrap(), f.code());
        }
        for r in [Rule::IdBirthDate, Rule::TooMany, Rule::PhoneFormat] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }
}
