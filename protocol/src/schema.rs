//! The household document, typed. One Automerge document per household holds its facts,
//! members, key-group tags, visits and demands. The types here are read from and written to
//! the document with `autosurgeon` (`Hydrate` / `Reconcile`), never by walking maps by hand.
//!
//! Collections whose entries are made on different phones (members, visits, demands) are
//! maps keyed by the entry's UUID, so two phones adding entries offline never touch the same
//! key and both entries survive a merge.

use std::{collections::BTreeMap, fmt};

use autosurgeon::{Hydrate, HydrateError, Reconcile, Text};
use serde::{Deserialize, Serialize};

use crate::{
    calendar::Day,
    ids::{DemandId, DeviceId, GridId, HouseholdId, MemberId, ReviewId, UserId, VisitId},
};

/// The schema version this build writes. Older documents are upgraded by [`crate::migrate`].
pub const SCHEMA_VERSION: u64 = 2;

/// A string that identifies a person (ID-card number, phone number). Kept in full, but its
/// `Debug` and [`Sensitive::masked`] show only a few characters so it cannot leak into logs
/// or error messages by accident. [`Sensitive::reveal`] is the one explicit way to the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The full value. Call only where the user is entitled to see it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// The value with all but the first three and the last four characters replaced by `*`
    /// (`110105199001011234` → `110***********1234`, `13812345678` → `138****5678`).
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        let n = chars.len();
        if n <= 7 {
            return "*".repeat(n);
        }
        chars
            .iter()
            .enumerate()
            .map(|(i, c)| if i < 3 || i >= n - 4 { *c } else { '*' })
            .collect()
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sensitive({})", self.masked())
    }
}

impl Reconcile for Sensitive {
    type Key<'a> = autosurgeon::reconcile::NoKey;
    fn reconcile<R: autosurgeon::Reconciler>(&self, reconciler: R) -> Result<(), R::Error> {
        self.0.reconcile(reconciler)
    }
}

impl Hydrate for Sensitive {
    fn hydrate_string(s: &'_ str) -> Result<Self, HydrateError> {
        Ok(Self(s.to_string()))
    }
}

/// A GPS fix as the phone reported it.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct Gps {
    pub lat: f64,
    pub lon: f64,
    /// Reported accuracy radius in metres, when the phone gives one.
    pub accuracy_m: Option<f64>,
}

/// Whether a household still lives at its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum HouseholdStatus {
    Active,
    Moved,
    /// Merged into another household (e.g. after a marriage); kept for history.
    Merged,
}

/// Key groups (重点人群): their households are visited first and every cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum KeyGroup {
    /// 脱贫户 / 监测户
    PoorOrMonitored,
    /// 低保
    MinimumIncome,
    /// 残疾人
    Disabled,
    /// 军烈属
    ServicemenOrMartyrFamily,
    /// 易地搬迁户
    Relocated,
    /// 独居老人
    ElderlyAlone,
    /// 留守儿童
    LeftBehindChild,
}

impl KeyGroup {
    pub const ALL: [KeyGroup; 7] = [
        KeyGroup::PoorOrMonitored,
        KeyGroup::MinimumIncome,
        KeyGroup::Disabled,
        KeyGroup::ServicemenOrMartyrFamily,
        KeyGroup::Relocated,
        KeyGroup::ElderlyAlone,
        KeyGroup::LeftBehindChild,
    ];
}

/// A key-group tag held for a period. `until: None` means it still holds.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct TagSpan {
    pub group: KeyGroup,
    pub since: Day,
    pub until: Option<Day>,
}

impl TagSpan {
    /// Whether the tag holds on `day`.
    pub fn holds_on(&self, day: Day) -> bool {
        self.since <= day && self.until.is_none_or(|u| day <= u)
    }
}

/// A member's relation to the head of the household.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
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

/// A person living in the household.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Member {
    pub id: MemberId,
    pub relation: Relation,
    pub name: String,
    /// The ID-card number (身份证号). Masked by `Debug`; see [`Sensitive`].
    pub id_number: Option<Sensitive>,
    pub birth_date: Option<Day>,
    pub phone: Option<Sensitive>,
    pub tags: Vec<TagSpan>,
}

/// What a visit found: whether anyone was met. Ordered by how final a failed attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum VisitOutcome {
    Met,
    NobodyHome,
    Refused,
    Moved,
}

/// Categories of needs and demands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum NeedCategory {
    Housing,
    HealthCare,
    Education,
    ElderlyCare,
    Other,
}

/// A need the worker noted on the visit.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Need {
    pub category: NeedCategory,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum DisputeKind {
    Neighbours,
    Family,
    Land,
    Labour,
    Other,
}

/// A dispute (矛盾纠纷) observed on a visit.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Dispute {
    pub kind: DisputeKind,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum HazardKind {
    Fire,
    Building,
    Electrical,
    Flood,
    Gas,
    Other,
}

/// A hazard (隐患) observed on a visit.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Hazard {
    pub kind: HazardKind,
    pub detail: String,
}

/// Publicity done on the doorstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum Publicity {
    StrawBurningBan,
    AntiFraud,
    RoadSafety,
    MedicalInsurance,
    FireSafety,
    Other,
}

/// One visit to the household.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Visit {
    pub id: VisitId,
    /// The visit day this visit counts for (a 15th or a 30th; see [`crate::calendar`]).
    pub visit_day: Day,
    pub worker: UserId,
    pub device: DeviceId,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub gps: Option<Gps>,
    pub outcome: VisitOutcome,
    pub people_met: Vec<MemberId>,
    pub needs: Vec<Need>,
    pub disputes: Vec<Dispute>,
    pub hazards: Vec<Hazard>,
    pub publicity: Vec<Publicity>,
    /// Free text, an Automerge Text so that concurrent edits merge character by character.
    pub note: Text,
    pub demands_raised: Vec<DemandId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum Urgency {
    Normal,
    Urgent,
}

/// Where a demand's work order (诉求工单) is in its life: collect → dispatch → accept (or
/// bounce back) → handle → done → feedback to the resident → return visit → closed, or
/// reopened. The steps, who may take them and their deadlines are in [`crate::workorder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum DemandStatus {
    /// Collected (收集): raised, not yet taken or dispatched. A reopened order is back here.
    Raised,
    /// Dispatched (派单) to a department or service team, waiting for it to accept.
    Dispatched,
    /// Accepted (接单) by the team it was dispatched to.
    Accepted,
    /// Bounced back (退单) by the team, with a reason; waits for arbitration (a new dispatch).
    Bounced,
    /// Being handled (办理).
    Handling,
    /// Done, with the result (办结).
    Done,
    /// The result was told to the resident (反馈).
    FedBack,
    /// The return visit (回访) recorded the resident's satisfaction.
    ReturnVisited,
    /// Closed (办结归档).
    Closed,
}

impl DemandStatus {
    /// Whether a demand may move from `self` to `to` by a bare status step. This is the rule of
    /// history entries written before work orders (entries without an action); new entries
    /// follow [`crate::workorder::DemandAction`].
    pub fn may_become(self, to: DemandStatus) -> bool {
        use DemandStatus::*;
        matches!(
            (self, to),
            (Raised, Handling)
                | (Raised, Done)
                | (Handling, Done)
                | (Done, Closed)
                | (Done, Handling)
                | (Closed, Handling)
        )
    }

    /// Whether the order is finished with (closed) — every other state is open.
    pub fn is_open(self) -> bool {
        self != DemandStatus::Closed
    }
}

/// How a demand is handled (分级): done at once by whoever took it, coordinated across
/// departments ("the town blows the whistle, departments report", 吹哨报到), or assigned as a
/// case to a leader (包案).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum Tier {
    /// 即办
    Immediate,
    /// 协调
    Coordinate,
    /// 包案
    LeaderCase,
}

/// The resident's verdict at the return visit (回访).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Reconcile, Hydrate)]
pub enum Satisfaction {
    /// 满意
    Satisfied,
    /// 基本满意
    Basically,
    /// 不满意
    Dissatisfied,
}

/// Where a demand came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum DemandSource {
    /// Raised on a household visit.
    Visit,
    /// Entered by a supervisor.
    Supervisor,
    /// Imported from a 12345 hotline work order.
    Hotline,
    /// Left by a resident on the page of their household's service card (便民服务卡): only the
    /// server writes it (SYNC-v1 §13.11).
    Card,
}

/// One entry of a demand's append-only history: a step of the work order (`action`), or,
/// in entries written before work orders, a bare status step.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct DemandTransition {
    pub by: UserId,
    pub device: Option<DeviceId>,
    pub at_ms: i64,
    pub from: DemandStatus,
    pub to: DemandStatus,
    /// The comment; the reason of a bounce, the result of a finish, what a chase-up asks.
    pub comment: String,
    /// The step taken; `None` in entries written before work orders.
    pub action: Option<crate::workorder::DemandAction>,
    /// The tier set by a take or a dispatch.
    pub tier: Option<Tier>,
    /// The department or team (an org unit id) a dispatch sends the order to.
    pub unit: Option<String>,
    /// The resident's verdict, on a return visit.
    pub satisfaction: Option<Satisfaction>,
    /// Working days added to the current step's deadline, on an extension.
    pub extend_days: Option<u32>,
}

/// A resident's request (诉求), raised on a visit or entered later: a work order.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Demand {
    pub id: DemandId,
    pub raised_on_visit: Option<VisitId>,
    /// Who raised it: the first-responsible cadre (首问负责) unless `first_responsible` says
    /// otherwise.
    pub raised_by: UserId,
    pub raised_at_ms: i64,
    pub category: NeedCategory,
    pub text: String,
    pub urgency: Urgency,
    /// The state the history leads to (kept in the record for readers; the history decides:
    /// see [`crate::workorder::replay`]).
    pub status: DemandStatus,
    /// Append-only: entries are only ever added at the end.
    pub history: Vec<DemandTransition>,
    /// The cadre responsible from first contact to closing (首问负责), when it is not the one
    /// who entered the demand (a hotline order assigned to the grid's worker).
    pub first_responsible: Option<UserId>,
    /// Where the demand came from; `None` in demands written before work orders.
    pub source: Option<DemandSource>,
    /// The hotline's own work-order number, for an imported 12345 order.
    pub external_ref: Option<String>,
}

impl Demand {
    /// The cadre responsible for the demand from first contact to closing.
    pub fn responsible(&self) -> UserId {
        self.first_responsible.unwrap_or(self.raised_by)
    }
}

/// A supervisor's decision on a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum ReviewDecision {
    /// Signed off.
    Approved,
    /// Returned to the worker for a fix, with a comment: a task on the worker's phone until
    /// the visit is changed or reviewed again.
    Returned,
}

/// A supervisor's sign-off or return of one visit, pinned to the exact document version the
/// supervisor saw.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Review {
    pub id: ReviewId,
    pub visit: VisitId,
    pub decision: ReviewDecision,
    pub comment: String,
    pub reviewer: UserId,
    pub device: DeviceId,
    pub at_ms: i64,
    /// The document version reviewed: its Automerge heads, as lower-case hex.
    pub heads: Vec<String>,
}

/// The whole household record, as held in its document.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Household {
    pub schema_version: u64,
    pub id: HouseholdId,
    pub grid: GridId,
    pub address: String,
    pub door_number: String,
    pub gps: Option<Gps>,
    pub phone: Option<Sensitive>,
    pub status: HouseholdStatus,
    pub tags: Vec<TagSpan>,
    #[autosurgeon(with = "autosurgeon::map_with_parseable_keys")]
    pub members: BTreeMap<MemberId, Member>,
    #[autosurgeon(with = "autosurgeon::map_with_parseable_keys")]
    pub visits: BTreeMap<VisitId, Visit>,
    #[autosurgeon(with = "autosurgeon::map_with_parseable_keys")]
    pub demands: BTreeMap<DemandId, Demand>,
    /// Supervisors' reviews of visits. Absent in documents made before reviews existed.
    #[autosurgeon(
        with = "autosurgeon::map_with_parseable_keys",
        missing = "BTreeMap::new"
    )]
    pub reviews: BTreeMap<ReviewId, Review>,
}

/// The household's own facts: the record without its members, visits and demands. Reading
/// it costs the same however long the household's history is.
#[derive(Clone, Debug, PartialEq, Hydrate)]
pub struct HouseholdFacts {
    pub schema_version: u64,
    pub id: HouseholdId,
    pub grid: GridId,
    pub address: String,
    pub door_number: String,
    pub gps: Option<Gps>,
    pub phone: Option<Sensitive>,
    pub status: HouseholdStatus,
    pub tags: Vec<TagSpan>,
}

impl Household {
    /// A new, empty household record in the current schema.
    pub fn new(
        id: HouseholdId,
        grid: GridId,
        address: impl Into<String>,
        door_number: impl Into<String>,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            id,
            grid,
            address: address.into(),
            door_number: door_number.into(),
            gps: None,
            phone: None,
            status: HouseholdStatus::Active,
            tags: Vec::new(),
            members: BTreeMap::new(),
            visits: BTreeMap::new(),
            demands: BTreeMap::new(),
            reviews: BTreeMap::new(),
        }
    }

    /// The key groups the household or any of its members belongs to on `day`.
    pub fn key_groups_on(&self, day: Day) -> Vec<KeyGroup> {
        let mut groups: Vec<KeyGroup> = self
            .tags
            .iter()
            .chain(self.members.values().flat_map(|m| m.tags.iter()))
            .filter(|t| t.holds_on(day))
            .map(|t| t.group)
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// The latest visit day for which a visit is recorded.
    pub fn last_visit_day(&self) -> Option<Day> {
        self.visits.values().map(|v| v.visit_day).max()
    }

    /// Whether a visit is recorded for the cycle of `visit_day`.
    pub fn visited_for(&self, visit_day: Day) -> bool {
        self.visits.values().any(|v| v.visit_day == visit_day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_values_are_masked_by_default() {
        let id = Sensitive::new("110105199001011234");
        assert_eq!(id.masked(), "110***********1234");
        assert_eq!(format!("{id:?}"), "Sensitive(110***********1234)");
        assert_eq!(id.reveal(), "110105199001011234");
        assert_eq!(Sensitive::new("13812345678").masked(), "138****5678");
        assert_eq!(Sensitive::new("12345").masked(), "*****");
        // Non-ASCII is masked per character, never split inside one.
        assert_eq!(
            Sensitive::new("张三李四王五赵六").masked(),
            "张三李*王五赵六"
        );
    }

    #[test]
    fn tags_hold_within_their_period() {
        let t = TagSpan {
            group: KeyGroup::ElderlyAlone,
            since: "2026-01-01".parse().unwrap(),
            until: Some("2026-06-30".parse().unwrap()),
        };
        assert!(t.holds_on("2026-01-01".parse().unwrap()));
        assert!(t.holds_on("2026-06-30".parse().unwrap()));
        assert!(!t.holds_on("2026-07-01".parse().unwrap()));
        assert!(!t.holds_on("2025-12-31".parse().unwrap()));
    }

    #[test]
    fn demand_transitions_follow_the_loop() {
        use DemandStatus::*;
        assert!(Raised.may_become(Handling));
        assert!(Done.may_become(Closed));
        assert!(!Raised.may_become(Closed));
        assert!(!Closed.may_become(Raised));
    }
}
