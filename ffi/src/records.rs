//! The records apps exchange with the library, and their conversions to and from the
//! protocol's typed records. Enums are the protocol's own, exposed as UniFFI remote types.

use autosurgeon::Text;
use qiaomen_client_core as core;
use qiaomen_protocol::{
    calendar::Day,
    conflicts::Conflict,
    doc::Author,
    ids::{DemandId, GridId, HouseholdId, MemberId, VisitId},
    journal::EventKind,
    schema::{self as s, Sensitive},
};

use crate::error::{QiaomenError, parse};

#[uniffi::remote(Enum)]
pub enum HouseholdStatus {
    Active,
    Moved,
    Merged,
}

#[uniffi::remote(Enum)]
pub enum KeyGroup {
    PoorOrMonitored,
    MinimumIncome,
    Disabled,
    ServicemenOrMartyrFamily,
    Relocated,
    ElderlyAlone,
    LeftBehindChild,
}

#[uniffi::remote(Enum)]
pub enum Relation {
    Head,
    Spouse,
    Child,
    Parent,
    Grandchild,
    Grandparent,
    Sibling,
    ChildInLaw,
    Other,
}

#[uniffi::remote(Enum)]
pub enum VisitOutcome {
    Met,
    NobodyHome,
    Refused,
    Moved,
}

#[uniffi::remote(Enum)]
pub enum NeedCategory {
    Housing,
    HealthCare,
    Education,
    ElderlyCare,
    Other,
}

#[uniffi::remote(Enum)]
pub enum DisputeKind {
    Neighbours,
    Family,
    Land,
    Labour,
    Other,
}

#[uniffi::remote(Enum)]
pub enum HazardKind {
    Fire,
    Building,
    Electrical,
    Flood,
    Gas,
    Other,
}

#[uniffi::remote(Enum)]
pub enum Publicity {
    StrawBurningBan,
    AntiFraud,
    RoadSafety,
    MedicalInsurance,
    FireSafety,
    Other,
}

#[uniffi::remote(Enum)]
pub enum Urgency {
    Normal,
    Urgent,
}

#[uniffi::remote(Enum)]
pub enum DemandStatus {
    Raised,
    Dispatched,
    Accepted,
    Bounced,
    Handling,
    Done,
    FedBack,
    ReturnVisited,
    Closed,
}

#[uniffi::remote(Enum)]
pub enum DemandAction {
    Take,
    Dispatch,
    Accept,
    Bounce,
    Start,
    Finish,
    Feedback,
    ReturnVisit,
    Close,
    Reopen,
    ChaseUp,
    Extend,
    Comment,
    Withdraw,
}

#[uniffi::remote(Enum)]
pub enum Tier {
    Immediate,
    Coordinate,
    LeaderCase,
}

#[uniffi::remote(Enum)]
pub enum Satisfaction {
    Satisfied,
    Basically,
    Dissatisfied,
}

#[uniffi::remote(Enum)]
pub enum StepKind {
    Triage,
    Accept,
    Handle,
    Feedback,
    ReturnVisit,
    Close,
}

/// A step of a demand's work order taken on the phone (a feedback, a return visit, ...).
#[derive(Debug, Clone, uniffi::Record)]
pub struct DemandStepInput {
    pub action: DemandAction,
    pub comment: String,
    /// The resident's verdict, for a return visit.
    pub satisfaction: Option<Satisfaction>,
}

/// An open work order of the grid, as the phone sees it offline.
#[derive(Debug, Clone, uniffi::Record)]
pub struct WorkOrderItem {
    pub household_id: String,
    pub demand_id: String,
    pub door_number: String,
    pub text: String,
    pub status: DemandStatus,
    pub waits_for: StepKind,
    /// The last day (`YYYY-MM-DD`) the step is on time.
    pub due: String,
    pub team: Option<String>,
}

impl From<core::WorkOrderLine> for WorkOrderItem {
    fn from(l: core::WorkOrderLine) -> Self {
        Self {
            household_id: l.household.to_string(),
            demand_id: l.demand.to_string(),
            door_number: l.door_number,
            text: l.text,
            status: l.status,
            waits_for: l.waits_for,
            due: l.due.to_string(),
            team: l.unit,
        }
    }
}

use qiaomen_protocol::ledger::{CaseAction, CaseState};
use qiaomen_protocol::workorder::{DemandAction, StepKind};
use s::{
    DemandStatus, DisputeKind, HazardKind, HouseholdStatus, KeyGroup, NeedCategory, Publicity,
    Relation, Satisfaction, Tier, Urgency, VisitOutcome,
};

/// A key-group tag with its period (`YYYY-MM-DD`; `until` empty while it holds).
#[derive(Debug, Clone, uniffi::Record)]
pub struct Tag {
    pub group: KeyGroup,
    pub since: String,
    pub until: Option<String>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct Gps {
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f64>,
}

/// A household to register.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewHousehold {
    pub grid: String,
    pub address: String,
    pub door_number: String,
    pub phone: Option<String>,
    pub gps: Option<Gps>,
    pub tags: Vec<Tag>,
}

/// Changes to a household's own facts; `None` leaves a field as it is.
#[derive(Debug, Clone, uniffi::Record)]
pub struct HouseholdUpdate {
    pub address: Option<String>,
    pub door_number: Option<String>,
    pub phone: Option<String>,
    pub status: Option<HouseholdStatus>,
}

/// A member to add.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewMember {
    pub relation: Relation,
    pub name: String,
    pub id_number: Option<String>,
    pub birth_date: Option<String>,
    pub phone: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct Need {
    pub category: NeedCategory,
    pub detail: String,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct Dispute {
    pub kind: DisputeKind,
    pub detail: String,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct Hazard {
    pub kind: HazardKind,
    pub detail: String,
}

/// A demand raised on a visit.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewDemand {
    pub category: NeedCategory,
    pub text: String,
    pub urgency: Urgency,
}

/// A visit to record. The worker and device are the phone's own.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewVisit {
    /// The visit day it counts for (`YYYY-MM-DD`, a 15th or a 30th).
    pub visit_day: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub gps: Option<Gps>,
    pub outcome: VisitOutcome,
    /// Member ids of the people met.
    pub people_met: Vec<String>,
    pub needs: Vec<Need>,
    pub disputes: Vec<Dispute>,
    pub hazards: Vec<Hazard>,
    pub publicity: Vec<Publicity>,
    pub note: String,
    pub demands: Vec<NewDemand>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct MemberRecord {
    pub id: String,
    pub relation: Relation,
    pub name: String,
    /// Masked (`110***********1234`).
    pub id_number_masked: Option<String>,
    pub birth_date: Option<String>,
    /// Masked (`138****5678`).
    pub phone_masked: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct VisitRecord {
    pub id: String,
    pub visit_day: String,
    pub worker_id: String,
    pub device_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub outcome: VisitOutcome,
    pub people_met: Vec<String>,
    pub needs: Vec<Need>,
    pub disputes: Vec<Dispute>,
    pub hazards: Vec<Hazard>,
    pub publicity: Vec<Publicity>,
    pub note: String,
    pub demand_ids: Vec<String>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct DemandRecord {
    pub id: String,
    pub visit_id: Option<String>,
    pub category: NeedCategory,
    pub text: String,
    pub urgency: Urgency,
    pub status: DemandStatus,
    pub history_len: u32,
}

/// A household's merged record.
#[derive(Debug, Clone, uniffi::Record)]
pub struct HouseholdRecord {
    pub id: String,
    pub grid: String,
    pub address: String,
    pub door_number: String,
    pub phone_masked: Option<String>,
    pub status: HouseholdStatus,
    pub tags: Vec<Tag>,
    pub members: Vec<MemberRecord>,
    /// Oldest visit day first.
    pub visits: Vec<VisitRecord>,
    pub demands: Vec<DemandRecord>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct RosterItem {
    pub household_id: String,
    pub door_number: String,
    pub key_groups: Vec<KeyGroup>,
    pub visited: bool,
}

/// What became of a due household on a visit day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum CoverageStatus {
    /// A visit for the cycle met someone.
    Visited,
    /// Only failed attempts; `reason` says why.
    NotMet,
    /// Not visited yet; the catch-up deadline has not passed.
    Pending,
    /// Not visited, and the catch-up deadline has passed (漏户).
    Missed,
}

/// A due household of a visit day on the phone's roster.
#[derive(Debug, Clone, uniffi::Record)]
pub struct CoverageItem {
    pub household_id: String,
    pub door_number: String,
    pub key_groups: Vec<KeyGroup>,
    pub status: CoverageStatus,
    /// Why not met: the latest failed attempt's outcome.
    pub reason: Option<VisitOutcome>,
    pub attempts: u32,
    /// The last day (`YYYY-MM-DD`) a catch-up visit counts.
    pub catch_up_by: String,
}

impl From<core::CoverageLine> for CoverageItem {
    fn from(l: core::CoverageLine) -> Self {
        use qiaomen_protocol::coverage::CoverageState as C;
        let (status, reason) = match l.due.state {
            C::Visited => (CoverageStatus::Visited, None),
            C::NotMet(o) => (CoverageStatus::NotMet, Some(o)),
            C::Pending => (CoverageStatus::Pending, None),
            C::Missed => (CoverageStatus::Missed, None),
        };
        Self {
            household_id: l.household.id.to_string(),
            door_number: l.household.door_number,
            key_groups: l.due.key_groups,
            status,
            reason,
            attempts: l.due.attempts,
            catch_up_by: l.due.catch_up_by.to_string(),
        }
    }
}

/// One of a conflicting field's values.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ConflictValue {
    /// The value as JSON text.
    pub value_json: String,
    /// Pass to `resolve_conflict` to keep this value.
    pub op: String,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct ConflictRecord {
    pub path: Vec<String>,
    /// The first is the value the record shows.
    pub values: Vec<ConflictValue>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct RejectedChange {
    pub household_id: String,
    pub change_hash: String,
    /// `schema_violation`, `depends_on_rejected`, `forbidden`, ...
    pub code: String,
    /// Why, in Chinese, for the worker.
    pub reason: String,
    pub at_ms: i64,
    /// The change created the household.
    pub creates_household: bool,
    /// The household's own fields it set (`address`, `door_number`, ...).
    pub fields: Vec<String>,
    /// The visits it wrote, with what was typed: the app can show them and offer to record
    /// them again.
    pub visits: Vec<RefusedVisit>,
    pub demands: Vec<RefusedDemand>,
    /// Members added or changed: (id, name).
    pub members: Vec<RefusedMember>,
    /// Entries it deleted, as `collection/id`.
    pub deleted: Vec<String>,
}

/// A visit as a refused change wrote it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct RefusedVisit {
    pub id: String,
    pub visit_day: String,
    pub outcome: VisitOutcome,
    pub started_at_ms: i64,
    pub note: String,
    pub needs: Vec<String>,
    pub disputes: Vec<String>,
    pub hazards: Vec<String>,
}

/// A demand as a refused change wrote it: what was asked, and the comments of the steps it
/// added.
#[derive(Debug, Clone, uniffi::Record)]
pub struct RefusedDemand {
    pub id: String,
    pub text: String,
    pub category: NeedCategory,
    pub urgency: Urgency,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct RefusedMember {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct SyncProgress {
    pub round_trips: u32,
    pub docs_uploaded: u64,
    pub docs_to_upload: u64,
    pub docs_received: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// How syncs treat a weak link. A transfer that keeps moving is never cut; one that brings
/// no byte for `stall_seconds` is abandoned and retried with backoff, and a sync gives up
/// (a `Network` error saying `stalled`, `unreachable`, `cut` or `refused`) after `attempts`
/// tries or `give_up_after_seconds` without an answer from the server. Uploads go in pieces
/// sized to the link (about 8 s of it as measured, halved after a cut), each acknowledged on
/// its own, of at most `upload_piece_bytes`. Defaults: 6 attempts, 25 s, 60 s, 512 KiB.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SyncPolicy {
    pub attempts: u32,
    pub stall_seconds: f64,
    pub give_up_after_seconds: f64,
    pub upload_piece_bytes: u64,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct SyncSummary {
    pub progress: SyncProgress,
    pub accepted: u64,
    pub rejected: u64,
    pub received_changes: u64,
    /// Households whose downloaded history was incomplete and were skipped.
    pub skipped_household_ids: Vec<String>,
    /// Households removed because their grid left this user's scope.
    pub dropped_households: u64,
    /// Task reports of this phone the server stored in this sync.
    pub tasks_sent: u64,
    /// Photos the server now holds whole, sent in this sync (after the records).
    pub photos_sent: u64,
    /// Photos the server refused in this sync (see `photos`: their `code`).
    pub photos_refused: u64,
    /// Photos still to send: the next sync resumes each where it stopped.
    pub photos_waiting: u64,
    /// Events and work logs the server answered about in this sync (stored or refused; see
    /// `journal`).
    pub journal_sent: u64,
}

/// A task done in a grid.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TaskDoneRecord {
    pub grid: String,
    /// The task's position in its list, from 0.
    pub item: u32,
    pub done_ms: i64,
    pub evidence: String,
    /// The report's photos.
    pub photos: Vec<TaskPhotoRecord>,
    /// The server stored it (false: recorded on this phone, not sent yet).
    pub on_server: bool,
}

/// A photo of a task report.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TaskPhotoRecord {
    /// SHA-256 of its bytes (64 hex characters).
    pub hash: String,
    pub size: u64,
    /// `image/jpeg`, `image/png` or `image/webp`.
    pub media_type: String,
    pub taken_at_ms: i64,
    pub caption: String,
    /// Where its bytes are, as `PhotoRecord.state` says it (`remote`: another phone's
    /// report; its bytes are on the server).
    pub state: String,
    /// Why the server refused it (`task_reported`: another report of the task was stored
    /// first; `unknown_task`: the server holds no such task for the grid), or why it waits.
    pub code: Option<String>,
}

/// A photo for a task report, as the app gives it (compressed first: ffi/README.md).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct NewTaskPhoto {
    pub bytes: Vec<u8>,
    pub caption: String,
    pub taken_at_ms: i64,
}

/// A photo's state on this phone by its stable code, and the code the server gave.
pub(crate) fn state_code(state: Option<core::PhotoState>) -> (&'static str, Option<String>) {
    match state {
        None => ("remote", None),
        Some(core::PhotoState::Pending { waiting }) => ("pending", waiting),
        Some(core::PhotoState::Sent) => ("sent", None),
        Some(core::PhotoState::Fetched) => ("fetched", None),
        Some(core::PhotoState::Refused { code }) => ("refused", Some(code)),
    }
}

/// A weekly task list (周清单) pushed to the phone's grids.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TaskListRecord {
    pub id: String,
    pub title: String,
    pub week_start: String,
    pub due: String,
    pub items: Vec<String>,
    pub grids: Vec<String>,
    pub done: Vec<TaskDoneRecord>,
}

impl TaskListRecord {
    /// The list, with where each of its reports' photos stands on this phone (`state`).
    pub(crate) fn new(
        l: core::TaskList,
        state: impl Fn(&str) -> core::Result<Option<core::PhotoState>>,
    ) -> core::Result<Self> {
        let mut done = Vec::with_capacity(l.done.len());
        for d in l.done {
            let mut photos = Vec::with_capacity(d.photos.len());
            for p in d.photos {
                let (state, code) = state_code(state(&p.hash)?);
                photos.push(TaskPhotoRecord {
                    size: p.size,
                    media_type: p.media_type.mime().to_string(),
                    taken_at_ms: p.taken_at_ms,
                    caption: p.caption,
                    state: state.to_string(),
                    code,
                    hash: p.hash,
                });
            }
            done.push(TaskDoneRecord {
                grid: d.grid,
                item: d.item,
                done_ms: d.done_ms,
                evidence: d.evidence,
                photos,
                on_server: d.on_server,
            });
        }
        Ok(Self {
            id: l.id,
            title: l.title,
            week_start: l.week_start,
            due: l.due,
            items: l.items,
            grids: l.grids,
            done,
        })
    }
}

/// A visit a supervisor returned for a fix: a task for the worker until the visit is changed.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FixTask {
    pub household_id: String,
    pub visit_id: String,
    pub review_id: String,
    pub reviewer_id: String,
    /// The supervisor's comment.
    pub comment: String,
    pub at_ms: i64,
}

// ---- conversions --------------------------------------------------------------------------

pub(crate) trait IntoGrid {
    fn into_grid(self) -> GridId;
}

impl IntoGrid for String {
    fn into_grid(self) -> GridId {
        GridId::new(self)
    }
}

fn day(s: &str) -> Result<Day, QiaomenError> {
    parse("date (YYYY-MM-DD)", s)
}

fn tags_in(tags: Vec<Tag>) -> Result<Vec<s::TagSpan>, QiaomenError> {
    tags.into_iter()
        .map(|t| {
            Ok(s::TagSpan {
                group: t.group,
                since: day(&t.since)?,
                until: t.until.as_deref().map(day).transpose()?,
            })
        })
        .collect()
}

fn tags_out(tags: &[s::TagSpan]) -> Vec<Tag> {
    tags.iter()
        .map(|t| Tag {
            group: t.group,
            since: t.since.to_string(),
            until: t.until.map(|d| d.to_string()),
        })
        .collect()
}

fn gps_in(g: Option<Gps>) -> Option<s::Gps> {
    g.map(|g| s::Gps {
        lat: g.lat,
        lon: g.lon,
        accuracy_m: g.accuracy_m,
    })
}

impl NewHousehold {
    pub(crate) fn into_record(self) -> Result<s::Household, QiaomenError> {
        let mut h = s::Household::new(
            HouseholdId::new(),
            GridId::new(self.grid),
            self.address,
            self.door_number,
        );
        h.phone = self.phone.map(Sensitive::new);
        h.gps = gps_in(self.gps);
        h.tags = tags_in(self.tags)?;
        Ok(h)
    }
}

impl HouseholdUpdate {
    pub(crate) fn apply(self, h: &mut s::Household) -> qiaomen_protocol::Result<()> {
        if let Some(v) = self.address {
            h.address = v;
        }
        if let Some(v) = self.door_number {
            h.door_number = v;
        }
        if let Some(v) = self.phone {
            h.phone = Some(Sensitive::new(v));
        }
        if let Some(v) = self.status {
            h.status = v;
        }
        Ok(())
    }
}

impl NewMember {
    pub(crate) fn into_record(self) -> Result<s::Member, QiaomenError> {
        Ok(s::Member {
            id: MemberId::new(),
            relation: self.relation,
            name: self.name,
            id_number: self.id_number.map(Sensitive::new),
            birth_date: self.birth_date.as_deref().map(day).transpose()?,
            phone: self.phone.map(Sensitive::new),
            tags: tags_in(self.tags)?,
        })
    }
}

impl NewVisit {
    pub(crate) fn into_records(
        self,
        author: &Author,
    ) -> Result<(s::Visit, Vec<s::Demand>), QiaomenError> {
        let id = VisitId::new();
        let demands: Vec<s::Demand> = self
            .demands
            .into_iter()
            .map(|d| s::Demand {
                id: DemandId::new(),
                raised_on_visit: Some(id),
                raised_by: author.user,
                raised_at_ms: self.started_at_ms,
                category: d.category,
                text: d.text,
                urgency: d.urgency,
                status: DemandStatus::Raised,
                history: vec![],
                first_responsible: None,
                source: Some(s::DemandSource::Visit),
                external_ref: None,
            })
            .collect();
        let visit = s::Visit {
            id,
            visit_day: day(&self.visit_day)?,
            worker: author.user,
            device: author.device,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            gps: gps_in(self.gps),
            outcome: self.outcome,
            people_met: self
                .people_met
                .iter()
                .map(|m| parse("member id", m))
                .collect::<Result<_, _>>()?,
            needs: self
                .needs
                .into_iter()
                .map(|n| s::Need {
                    category: n.category,
                    detail: n.detail,
                })
                .collect(),
            disputes: self
                .disputes
                .into_iter()
                .map(|d| s::Dispute {
                    kind: d.kind,
                    detail: d.detail,
                })
                .collect(),
            hazards: self
                .hazards
                .into_iter()
                .map(|h| s::Hazard {
                    kind: h.kind,
                    detail: h.detail,
                })
                .collect(),
            publicity: self.publicity,
            note: Text::with_value(self.note),
            demands_raised: demands.iter().map(|d| d.id).collect(),
        };
        Ok((visit, demands))
    }
}

impl From<s::Household> for HouseholdRecord {
    fn from(h: s::Household) -> Self {
        let mut visits: Vec<VisitRecord> = h
            .visits
            .values()
            .map(|v| VisitRecord {
                id: v.id.to_string(),
                visit_day: v.visit_day.to_string(),
                worker_id: v.worker.to_string(),
                device_id: v.device.to_string(),
                started_at_ms: v.started_at_ms,
                ended_at_ms: v.ended_at_ms,
                outcome: v.outcome,
                people_met: v.people_met.iter().map(ToString::to_string).collect(),
                needs: v
                    .needs
                    .iter()
                    .map(|n| Need {
                        category: n.category,
                        detail: n.detail.clone(),
                    })
                    .collect(),
                disputes: v
                    .disputes
                    .iter()
                    .map(|d| Dispute {
                        kind: d.kind,
                        detail: d.detail.clone(),
                    })
                    .collect(),
                hazards: v
                    .hazards
                    .iter()
                    .map(|d| Hazard {
                        kind: d.kind,
                        detail: d.detail.clone(),
                    })
                    .collect(),
                publicity: v.publicity.clone(),
                note: v.note.as_str().to_string(),
                demand_ids: v.demands_raised.iter().map(ToString::to_string).collect(),
            })
            .collect();
        visits.sort_by(|a, b| {
            (&a.visit_day, a.started_at_ms, &a.id).cmp(&(&b.visit_day, b.started_at_ms, &b.id))
        });
        HouseholdRecord {
            id: h.id.to_string(),
            grid: h.grid.to_string(),
            address: h.address,
            door_number: h.door_number,
            phone_masked: h.phone.map(|p| p.masked()),
            status: h.status,
            tags: tags_out(&h.tags),
            members: h
                .members
                .values()
                .map(|m| MemberRecord {
                    id: m.id.to_string(),
                    relation: m.relation,
                    name: m.name.clone(),
                    id_number_masked: m.id_number.as_ref().map(Sensitive::masked),
                    birth_date: m.birth_date.map(|d| d.to_string()),
                    phone_masked: m.phone.as_ref().map(Sensitive::masked),
                    tags: tags_out(&m.tags),
                })
                .collect(),
            visits,
            demands: h
                .demands
                .values()
                .map(|d| DemandRecord {
                    id: d.id.to_string(),
                    visit_id: d.raised_on_visit.map(|v| v.to_string()),
                    category: d.category,
                    text: d.text.clone(),
                    urgency: d.urgency,
                    status: d.status,
                    history_len: d.history.len() as u32,
                })
                .collect(),
        }
    }
}

impl From<core::RosterEntry> for RosterItem {
    fn from(e: core::RosterEntry) -> Self {
        RosterItem {
            household_id: e.household.id.to_string(),
            door_number: e.household.door_number,
            key_groups: e.key_groups,
            visited: e.visited,
        }
    }
}

impl From<Conflict> for ConflictRecord {
    fn from(c: Conflict) -> Self {
        ConflictRecord {
            path: c.path,
            values: c
                .values
                .into_iter()
                .map(|v| ConflictValue {
                    value_json: v.value.to_string(),
                    op: v.op,
                    user_id: v.author.map(|a| a.user.to_string()),
                    device_id: v.author.map(|a| a.device.to_string()),
                    at_ms: v.at_ms,
                })
                .collect(),
        }
    }
}

impl From<core::RejectedChange> for RejectedChange {
    fn from(r: core::RejectedChange) -> Self {
        let c = r.content;
        RejectedChange {
            household_id: r.household.to_string(),
            change_hash: r.hash.to_string(),
            code: r.code,
            reason: r.reason,
            at_ms: r.at_ms,
            creates_household: c.creates_household,
            fields: c.fields,
            visits: c
                .visits
                .into_iter()
                .map(|v| RefusedVisit {
                    id: v.id.to_string(),
                    visit_day: v.visit_day.to_string(),
                    outcome: v.outcome,
                    started_at_ms: v.started_at_ms,
                    note: v.note,
                    needs: v.needs,
                    disputes: v.disputes,
                    hazards: v.hazards,
                })
                .collect(),
            demands: c
                .demands
                .into_iter()
                .map(|d| RefusedDemand {
                    id: d.id.to_string(),
                    text: d.text,
                    category: d.category,
                    urgency: d.urgency,
                    steps: d.steps,
                })
                .collect(),
            members: c
                .members
                .into_iter()
                .map(|m| RefusedMember {
                    id: m.id.to_string(),
                    name: m.name,
                })
                .collect(),
            deleted: c.deleted,
        }
    }
}

impl From<core::SyncProgress> for SyncProgress {
    fn from(p: core::SyncProgress) -> Self {
        SyncProgress {
            round_trips: p.round_trips,
            docs_uploaded: p.docs_uploaded as u64,
            docs_to_upload: p.docs_to_upload as u64,
            docs_received: p.docs_received as u64,
            bytes_up: p.bytes_up,
            bytes_down: p.bytes_down,
        }
    }
}

impl From<core::SyncReport> for SyncSummary {
    fn from(r: core::SyncReport) -> Self {
        SyncSummary {
            progress: r.progress.into(),
            accepted: r.accepted,
            rejected: r.rejected.len() as u64,
            received_changes: r.received_changes,
            skipped_household_ids: r
                .skipped_households
                .iter()
                .map(ToString::to_string)
                .collect(),
            dropped_households: r.dropped_households as u64,
            tasks_sent: r.tasks_sent as u64,
            photos_sent: r.photos_sent as u64,
            photos_refused: r.photos_refused.len() as u64,
            photos_waiting: r.photos_waiting as u64,
            journal_sent: r.journal_sent as u64,
        }
    }
}

impl From<(HouseholdId, qiaomen_protocol::review::FixTask)> for FixTask {
    fn from((household, t): (HouseholdId, qiaomen_protocol::review::FixTask)) -> Self {
        FixTask {
            household_id: household.to_string(),
            visit_id: t.visit.to_string(),
            review_id: t.review.to_string(),
            reviewer_id: t.reviewer.to_string(),
            comment: t.comment,
            at_ms: t.at_ms,
        }
    }
}

/// What a photo shows: the record it is attached to (ids as text; `item`: the hazard's or
/// dispute's place in the visit, from 0; `step`: the work-order step's place in the history).
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum PhotoSubject {
    Household,
    Visit { visit_id: String },
    Hazard { visit_id: String, item: u32 },
    Dispute { visit_id: String, item: u32 },
    DemandStep { demand_id: String, step: u32 },
}

impl PhotoSubject {
    pub(crate) fn into_subject(
        self,
    ) -> Result<qiaomen_protocol::photo::PhotoSubject, QiaomenError> {
        use qiaomen_protocol::photo::PhotoSubject as P;
        let visit = |v: &str| parse::<VisitId>("visit id", v);
        Ok(match self {
            PhotoSubject::Household => P::Household,
            PhotoSubject::Visit { visit_id } => P::Visit {
                visit: visit(&visit_id)?,
            },
            PhotoSubject::Hazard { visit_id, item } => P::Hazard {
                visit: visit(&visit_id)?,
                item,
            },
            PhotoSubject::Dispute { visit_id, item } => P::Dispute {
                visit: visit(&visit_id)?,
                item,
            },
            PhotoSubject::DemandStep { demand_id, step } => P::DemandStep {
                demand: parse::<DemandId>("demand id", &demand_id)?,
                step,
            },
        })
    }
}

impl From<qiaomen_protocol::photo::PhotoSubject> for PhotoSubject {
    fn from(s: qiaomen_protocol::photo::PhotoSubject) -> Self {
        use qiaomen_protocol::photo::PhotoSubject as P;
        match s {
            P::Household => PhotoSubject::Household,
            P::Visit { visit } => PhotoSubject::Visit {
                visit_id: visit.to_string(),
            },
            P::Hazard { visit, item } => PhotoSubject::Hazard {
                visit_id: visit.to_string(),
                item,
            },
            P::Dispute { visit, item } => PhotoSubject::Dispute {
                visit_id: visit.to_string(),
                item,
            },
            P::DemandStep { demand, step } => PhotoSubject::DemandStep {
                demand_id: demand.to_string(),
                step,
            },
        }
    }
}

/// A photo attached to a household's record.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PhotoRecord {
    pub photo_id: String,
    /// SHA-256 of its bytes (64 hex characters): what `photo_bytes` asks for.
    pub hash: String,
    pub size: u64,
    /// `image/jpeg`, `image/png` or `image/webp`.
    pub media_type: String,
    pub taken_at_ms: i64,
    pub caption: String,
    pub subject: PhotoSubject,
    pub by_user_id: String,
    /// Where its bytes are, by a stable code: `pending` (on this phone, to be sent after its
    /// record), `sent` (the server has it), `fetched` (brought from the server), `refused`
    /// (the server will not take it: `refused_code`; the bytes stay here), `remote` (on the
    /// server only: `photo_bytes` fetches it).
    pub state: String,
    /// Why the server refused it (`hash_mismatch`, `media_type`, `too_large`), or why it
    /// waits (`photo_quota`, `unknown_photo`).
    pub code: Option<String>,
}

impl PhotoRecord {
    pub(crate) fn new(
        p: qiaomen_protocol::photo::Photo,
        state: Option<core::PhotoState>,
    ) -> PhotoRecord {
        let (state, code) = state_code(state);
        PhotoRecord {
            photo_id: p.id.to_string(),
            hash: p.hash,
            size: p.size,
            media_type: p.media_type.mime().to_string(),
            taken_at_ms: p.taken_at_ms,
            caption: p.caption,
            subject: p.subject.into(),
            by_user_id: p.by.to_string(),
            state: state.to_string(),
            code,
        }
    }
}

// ---------------------------------------------------------------- the second ledger

#[uniffi::remote(Enum)]
pub enum CaseState {
    Open,
    Assigned,
    InHand,
    Resolved,
    Checked,
    Escalated,
}

#[uniffi::remote(Enum)]
pub enum CaseAction {
    Assign,
    Start,
    Resolve,
    Check,
    Reopen,
    Escalate,
    FollowUp,
}

/// What a tracked case is: a hazard or a dispute, of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum CaseKindItem {
    Hazard { kind: HazardKind },
    Dispute { kind: DisputeKind },
}

impl From<CaseKindItem> for qiaomen_protocol::ledger::CaseKind {
    fn from(k: CaseKindItem) -> Self {
        match k {
            CaseKindItem::Hazard { kind } => Self::Hazard { kind },
            CaseKindItem::Dispute { kind } => Self::Dispute { kind },
        }
    }
}

impl From<qiaomen_protocol::ledger::CaseKind> for CaseKindItem {
    fn from(k: qiaomen_protocol::ledger::CaseKind) -> Self {
        match k {
            qiaomen_protocol::ledger::CaseKind::Hazard { kind } => Self::Hazard { kind },
            qiaomen_protocol::ledger::CaseKind::Dispute { kind } => Self::Dispute { kind },
        }
    }
}

/// A dispute or hazard to track, raised on the phone (on a visit, naming its line in the
/// visit's `hazards` or `disputes`, or on its own).
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewCaseInput {
    pub kind: CaseKindItem,
    pub visit_id: Option<String>,
    pub item: Option<u32>,
    pub detail: String,
    /// A dispute's parties, a hazard's exact place.
    pub parties: String,
    /// The last day (`YYYY-MM-DD`) it may stay open, if set when raised.
    pub due: Option<String>,
}

impl NewCaseInput {
    pub(crate) fn into_core(self) -> Result<core::store::NewCase, QiaomenError> {
        Ok(core::store::NewCase {
            kind: self.kind.into(),
            raised_on_visit: self
                .visit_id
                .as_deref()
                .map(|v| parse("visit id", v))
                .transpose()?,
            item: self.item,
            detail: self.detail,
            parties: self.parties,
            due: self.due.as_deref().map(day).transpose()?,
        })
    }
}

/// A step of a case taken on the phone: a follow-up on a visit, taking it in hand, resolving
/// it (the result in `comment`), escalating it; a supervisor's assign (`assignee_id`, `due`),
/// check or reopen (the reason in `comment`).
#[derive(Debug, Clone, uniffi::Record)]
pub struct CaseStepInput {
    pub action: CaseAction,
    pub comment: String,
    pub assignee_id: Option<String>,
    pub due: Option<String>,
    /// The visit the step is taken on, if any.
    pub visit_id: Option<String>,
}

impl CaseStepInput {
    pub(crate) fn into_core(self) -> Result<qiaomen_protocol::ledger::NewStep, QiaomenError> {
        Ok(qiaomen_protocol::ledger::NewStep {
            comment: self.comment,
            assignee: self
                .assignee_id
                .as_deref()
                .map(|a| parse("user id", a))
                .transpose()?,
            due: self.due.as_deref().map(day).transpose()?,
            order: None,
            visit: self
                .visit_id
                .as_deref()
                .map(|v| parse("visit id", v))
                .transpose()?,
        })
    }
}

/// One entry of a case's history.
#[derive(Debug, Clone, uniffi::Record)]
pub struct CaseStepItem {
    pub action: CaseAction,
    pub by: String,
    pub at_ms: i64,
    pub comment: String,
    pub assignee_id: Option<String>,
    pub due: Option<String>,
    /// An escalation's work order (a demand id of the household).
    pub order_id: Option<String>,
    pub visit_id: Option<String>,
}

/// A tracked case and where it stands.
#[derive(Debug, Clone, uniffi::Record)]
pub struct CaseItem {
    pub case_id: String,
    pub household_id: String,
    pub kind: CaseKindItem,
    pub visit_id: Option<String>,
    pub detail: String,
    pub parties: String,
    pub raised_by: String,
    pub raised_at_ms: i64,
    pub state: CaseState,
    /// Who is to act: the last assignee, else who raised it.
    pub assignee_id: String,
    /// The deadline in force (`YYYY-MM-DD`).
    pub due: Option<String>,
    /// The work order it was escalated into.
    pub order_id: Option<String>,
    pub history: Vec<CaseStepItem>,
}

impl CaseItem {
    pub(crate) fn of(household: HouseholdId, c: qiaomen_protocol::ledger::Case) -> Self {
        let s = qiaomen_protocol::ledger::standing(&c);
        Self {
            case_id: c.id.to_string(),
            household_id: household.to_string(),
            kind: c.kind.into(),
            visit_id: c.raised_on_visit.map(|v| v.to_string()),
            raised_by: c.raised_by.to_string(),
            raised_at_ms: c.raised_at_ms,
            state: s.state,
            assignee_id: s.assignee.to_string(),
            due: s.due.map(|d| d.to_string()),
            order_id: s.order.map(|o| o.to_string()),
            history: c
                .history
                .into_iter()
                .map(|e| CaseStepItem {
                    action: e.action,
                    by: e.by.to_string(),
                    at_ms: e.at_ms,
                    comment: e.comment,
                    assignee_id: e.assignee.map(|a| a.to_string()),
                    due: e.due.map(|d| d.to_string()),
                    order_id: e.order.map(|o| o.to_string()),
                    visit_id: e.visit.map(|v| v.to_string()),
                })
                .collect(),
            detail: c.detail,
            parties: c.parties,
        }
    }
}

/// An open case of the grid to look at on the next visit ("check the hazard at 17号").
#[derive(Debug, Clone, uniffi::Record)]
pub struct FollowUpItem {
    pub door_number: String,
    pub case_item: CaseItem,
}

#[uniffi::remote(Enum)]
pub enum EventKind {
    Road,
    Fire,
    Quarrel,
    Environment,
    Facility,
    Other,
}

/// An event (事件) seen on any day, not tied to one household: a fallen pole, a fire risk at
/// a shop, a quarrel in the square.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewEventInput {
    pub grid: String,
    pub kind: EventKind,
    /// The day it is of (`YYYY-MM-DD`); `None`: today.
    pub day: Option<String>,
    /// Where, in words.
    pub place: String,
    /// Where, when the phone has a fix (WGS-84 degrees); both or neither.
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub detail: String,
    /// Photos of it (JPEG, PNG or WebP bytes); sent after the entry is stored.
    pub photos: Vec<NewTaskPhoto>,
}

/// A day's work log (工作日志).
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewWorkLogInput {
    pub grid: String,
    /// The day it is of (`YYYY-MM-DD`); `None`: today.
    pub day: Option<String>,
    pub detail: String,
}

/// An event or a work log this phone wrote, and where it stands: `pending` (not sent yet),
/// `stored` (the server holds it) or `refused` (`refused_code` says why, e.g.
/// `journal_detail:too_long` or `out_of_scope`; the text stays here).
#[derive(Debug, Clone, uniffi::Record)]
pub struct JournalItem {
    pub id: String,
    pub grid: String,
    /// `None` for a work log.
    pub event_kind: Option<EventKind>,
    /// 事件 or 工作日志, and the event's kind in words.
    pub label: String,
    pub day: String,
    pub at_ms: i64,
    pub place: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub detail: String,
    /// Its photos' hashes (`held_photo_bytes` while the phone holds them).
    pub photo_hashes: Vec<String>,
    pub state: String,
    pub refused_code: Option<String>,
}

impl From<core::store::JournalLine> for JournalItem {
    fn from(l: core::store::JournalLine) -> Self {
        use qiaomen_protocol::{journal::EntryKind, vocab::Term};
        let e = l.entry;
        let event_kind = e.event_kind.as_deref().and_then(EventKind::from_code);
        let label = match (EntryKind::from_code(&e.kind), event_kind) {
            (Some(EntryKind::Event), Some(k)) => format!("事件 · {}", k.label()),
            (Some(k), _) => k.label().to_string(),
            (None, _) => e.kind.clone(),
        };
        JournalItem {
            id: e.id.to_string(),
            grid: e.grid,
            event_kind,
            label,
            day: e.day,
            at_ms: e.at_ms,
            place: e.place,
            latitude: e.gps.map(|g| g[0]),
            longitude: e.gps.map(|g| g[1]),
            detail: e.detail,
            photo_hashes: e.photos.into_iter().map(|p| p.hash).collect(),
            state: l.state,
            refused_code: l.code,
        }
    }
}

impl NewEventInput {
    pub(crate) fn into_core(self) -> Result<core::store::NewJournal, QiaomenError> {
        use qiaomen_protocol::vocab::Term;
        let gps = match (self.latitude, self.longitude) {
            (Some(lat), Some(lon)) => Some([lat, lon]),
            (None, None) => None,
            _ => {
                return Err(QiaomenError::InvalidInput {
                    reason: "latitude and longitude go together".into(),
                    invalid_field: Some("journal_gps".into()),
                    rule: Some("out_of_range".into()),
                });
            }
        };
        Ok(core::store::NewJournal {
            grid: self.grid,
            kind: "event".into(),
            event_kind: Some(self.kind.code().to_string()),
            day: self.day,
            place: self.place,
            gps,
            detail: self.detail,
            photos: self
                .photos
                .into_iter()
                .map(|p| core::NewPhoto {
                    bytes: p.bytes,
                    caption: p.caption,
                    taken_at_ms: p.taken_at_ms,
                })
                .collect(),
        })
    }
}

impl NewWorkLogInput {
    pub(crate) fn into_core(self) -> core::store::NewJournal {
        core::store::NewJournal {
            grid: self.grid,
            kind: "work_log".into(),
            event_kind: None,
            day: self.day,
            place: String::new(),
            gps: None,
            detail: self.detail,
            photos: vec![],
        }
    }
}
