//! One vocabulary: for every enum a person reads (key groups, outcomes, need, dispute and
//! hazard kinds, demand states, steps and actions, roles, review decisions and states), its
//! stable machine code and its zh-CN label, in one table each.
//!
//! The code is the serde name, snake_case (`elderly_alone`), and is what the API answers, the
//! read model stores and the pages' forms post; the label is what a page, an export or a
//! search shows (`独居老人`). Nothing a machine or a person reads is `Debug` output.
//!
//! The household document is a different thing: Automerge holds these enums by their variant
//! names (`ElderlyAlone`, the autosurgeon derive), which the document format (SYNC-v1 §13)
//! fixes. That is why [`Term::from_code`] also accepts the variant name: an API client of the
//! first release, or a read model built by it, still parses.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{
    journal::{EntryKind, EventKind},
    ledger::{CaseAction, CaseState, Ledger},
    policy::Role,
    review::ReviewState,
    schema::{
        DemandSource, DemandStatus, DisputeKind, HazardKind, HouseholdStatus, KeyGroup,
        NeedCategory, Publicity, Relation, ReviewDecision, Satisfaction, Tier, Urgency,
        VisitOutcome,
    },
    workorder::{DemandAction, StepKind},
};

/// An enum with a stable code and a zh-CN label for each value.
pub trait Term: Copy + Eq + 'static {
    /// The vocabulary's name, as a page or the API names it (`key_group`).
    const KIND: &'static str;
    /// Every value, in the order a list shows them.
    const ALL: &'static [Self];
    /// The stable code: the serde name.
    fn code(self) -> &'static str;
    /// What a person reads.
    fn label(self) -> &'static str;
    /// The value of a code, or of the variant name the first release used.
    fn from_code(code: &str) -> Option<Self>;
    /// The value whose code or label is `text` (a spreadsheet cell, a form field).
    fn from_text(text: &str) -> Option<Self> {
        let text = text.trim();
        Self::from_code(text).or_else(|| Self::ALL.iter().copied().find(|t| t.label() == text))
    }
}

macro_rules! terms {
    ($ty:ty, $kind:literal { $($variant:ident => $code:literal, $label:literal;)+ }) => {
        impl Term for $ty {
            const KIND: &'static str = $kind;
            const ALL: &'static [Self] = &[$(<$ty>::$variant),+];
            fn code(self) -> &'static str {
                match self { $(<$ty>::$variant => $code),+ }
            }
            fn label(self) -> &'static str {
                match self { $(<$ty>::$variant => $label),+ }
            }
            fn from_code(code: &str) -> Option<Self> {
                match code {
                    $($code | stringify!($variant) => Some(<$ty>::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

/// Serialize and deserialize by [`Term::code`] (deserializing also takes the variant name).
macro_rules! serde_by_code {
    ($($ty:ty),+ $(,)?) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.code())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(CodeVisitor::<$ty>(std::marker::PhantomData))
            }
        }
    )+};
}

struct CodeVisitor<T>(std::marker::PhantomData<T>);

impl<T: Term> de::Visitor<'_> for CodeVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} code", T::KIND)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_code(v).ok_or_else(|| E::custom(format_args!("not a {} code", T::KIND)))
    }
}

terms!(HouseholdStatus, "household_status" {
    Active => "active", "在住";
    Moved => "moved", "已迁出";
    Merged => "merged", "已合户";
});
terms!(KeyGroup, "key_group" {
    PoorOrMonitored => "poor_or_monitored", "脱贫户/监测户";
    MinimumIncome => "minimum_income", "低保户";
    Disabled => "disabled", "残疾人";
    ServicemenOrMartyrFamily => "servicemen_or_martyr_family", "军烈属";
    Relocated => "relocated", "易地搬迁户";
    ElderlyAlone => "elderly_alone", "独居老人";
    LeftBehindChild => "left_behind_child", "留守儿童";
});
terms!(Relation, "relation" {
    Head => "head", "户主";
    Spouse => "spouse", "配偶";
    Child => "child", "子女";
    Parent => "parent", "父母";
    Grandchild => "grandchild", "孙辈";
    Grandparent => "grandparent", "祖父母";
    Sibling => "sibling", "兄弟姐妹";
    ChildInLaw => "child_in_law", "儿媳/女婿";
    Other => "other", "其他";
});
terms!(VisitOutcome, "outcome" {
    Met => "met", "见到住户";
    NobodyHome => "nobody_home", "无人在家";
    Refused => "refused", "拒访";
    Moved => "moved", "已搬离";
});
terms!(NeedCategory, "need_category" {
    Housing => "housing", "住房";
    HealthCare => "health_care", "医疗";
    Education => "education", "教育";
    ElderlyCare => "elderly_care", "养老";
    Other => "other", "其他";
});
terms!(DisputeKind, "dispute_kind" {
    Neighbours => "neighbours", "邻里纠纷";
    Family => "family", "家庭纠纷";
    Land => "land", "土地纠纷";
    Labour => "labour", "劳资纠纷";
    Other => "other", "其他纠纷";
});
terms!(HazardKind, "hazard_kind" {
    Fire => "fire", "消防隐患";
    Building => "building", "房屋安全隐患";
    Electrical => "electrical", "用电隐患";
    Flood => "flood", "防汛隐患";
    Gas => "gas", "燃气隐患";
    Other => "other", "其他隐患";
});
terms!(Publicity, "publicity" {
    StrawBurningBan => "straw_burning_ban", "秸秆禁烧";
    AntiFraud => "anti_fraud", "防范电信诈骗";
    RoadSafety => "road_safety", "交通安全";
    MedicalInsurance => "medical_insurance", "医保缴费";
    FireSafety => "fire_safety", "消防安全";
    Other => "other", "其他宣传";
});
terms!(Urgency, "urgency" {
    Normal => "normal", "一般";
    Urgent => "urgent", "紧急";
});
terms!(DemandStatus, "demand_status" {
    Raised => "raised", "待分派";
    Dispatched => "dispatched", "已派单";
    Accepted => "accepted", "已接单";
    Bounced => "bounced", "已退单";
    Handling => "handling", "办理中";
    Done => "done", "已办结";
    FedBack => "fed_back", "已反馈";
    ReturnVisited => "return_visited", "已回访";
    Closed => "closed", "已归档";
});
terms!(Tier, "tier" {
    Immediate => "immediate", "即办";
    Coordinate => "coordinate", "协调办理";
    LeaderCase => "leader_case", "领导包案";
});
terms!(Satisfaction, "satisfaction" {
    Satisfied => "satisfied", "满意";
    Basically => "basically", "基本满意";
    Dissatisfied => "dissatisfied", "不满意";
});
terms!(DemandSource, "demand_source" {
    Visit => "visit", "走访";
    Supervisor => "supervisor", "督导录入";
    Hotline => "hotline", "12345热线";
    Card => "card", "便民服务卡";
});
terms!(ReviewDecision, "review_decision" {
    Approved => "approved", "通过";
    Returned => "returned", "退回整改";
});
terms!(ReviewState, "review_state" {
    Current => "current", "有效";
    Stale => "stale", "已过期（其后有修改）";
});
terms!(DemandAction, "demand_action" {
    Take => "take", "即办受理";
    Dispatch => "dispatch", "派单";
    Accept => "accept", "接单";
    Bounce => "bounce", "退单";
    Start => "start", "开始办理";
    Finish => "finish", "办结";
    Feedback => "feedback", "反馈群众";
    ReturnVisit => "return_visit", "回访";
    Close => "close", "归档";
    Reopen => "reopen", "重新办理";
    ChaseUp => "chase_up", "催办";
    Extend => "extend", "延期";
    Comment => "comment", "备注";
    Withdraw => "withdraw", "撤销";
});
terms!(StepKind, "step" {
    Triage => "triage", "分派";
    Accept => "accept", "接单";
    Handle => "handle", "办理";
    Feedback => "feedback", "反馈";
    ReturnVisit => "return_visit", "回访";
    Close => "close", "归档";
});
terms!(Ledger, "ledger" {
    Hazard => "hazard", "安全隐患";
    Dispute => "dispute", "矛盾纠纷";
});
terms!(CaseState, "case_state" {
    Open => "open", "待分派";
    Assigned => "assigned", "已分派";
    InHand => "in_hand", "调处/整改中";
    Resolved => "resolved", "已化解/已整改（待验收）";
    Checked => "checked", "已验收";
    Escalated => "escalated", "已上报转工单";
});
terms!(CaseAction, "case_action" {
    Assign => "assign", "分派";
    Start => "start", "开始调处/整改";
    Resolve => "resolve", "化解/整改完成";
    Check => "check", "验收";
    Reopen => "reopen", "验收不通过";
    Escalate => "escalate", "上报转工单";
    FollowUp => "follow_up", "走访跟进";
});
terms!(EntryKind, "journal_kind" {
    Event => "event", "事件";
    WorkLog => "work_log", "工作日志";
});
terms!(EventKind, "event_kind" {
    Road => "road", "道路设施";
    Fire => "fire", "消防安全";
    Quarrel => "quarrel", "矛盾纠纷";
    Environment => "environment", "环境卫生";
    Facility => "facility", "公共设施";
    Other => "other", "其他事件";
});
terms!(Role, "role" {
    GridWorker => "grid_worker", "网格员";
    GridHead => "grid_head", "网格长";
    VillageSupervisor => "village_supervisor", "村（社区）督导";
    TownSupervisor => "town_supervisor", "乡镇督导";
    CommandCentre => "command_centre", "指挥中心";
    Admin => "admin", "系统管理员";
    TeamMember => "team_member", "承办单位人员";
});

// The record's enums are read and written by their codes; the others derive serde with
// `rename_all = "snake_case"`, and a test holds both to the tables above.
serde_by_code!(
    HouseholdStatus,
    KeyGroup,
    Relation,
    VisitOutcome,
    NeedCategory,
    DisputeKind,
    HazardKind,
    Publicity,
    Urgency,
    DemandStatus,
    Tier,
    Satisfaction,
    DemandSource,
    ReviewDecision,
    Ledger,
    CaseState,
    CaseAction,
    EntryKind,
    EventKind,
);

macro_rules! registry {
    ($($ty:ty),+ $(,)?) => {
        /// Every vocabulary's name.
        pub const KINDS: &[&str] = &[$(<$ty as Term>::KIND),+];

        /// The label of `code` in the vocabulary `kind`.
        pub fn label(kind: &str, code: &str) -> Option<&'static str> {
            $(if kind == <$ty as Term>::KIND {
                return <$ty as Term>::from_code(code).map(Term::label);
            })+
            None
        }

        /// Every `(code, label)` of the vocabulary `kind`, in its order.
        pub fn entries(kind: &str) -> Option<Vec<(&'static str, &'static str)>> {
            $(if kind == <$ty as Term>::KIND {
                return Some(<$ty as Term>::ALL.iter().map(|t| (t.code(), t.label())).collect());
            })+
            None
        }
    };
}

registry!(
    HouseholdStatus,
    KeyGroup,
    Relation,
    VisitOutcome,
    NeedCategory,
    DisputeKind,
    HazardKind,
    Publicity,
    Urgency,
    DemandStatus,
    Tier,
    Satisfaction,
    DemandSource,
    ReviewDecision,
    ReviewState,
    DemandAction,
    StepKind,
    Role,
    Ledger,
    CaseState,
    CaseAction,
    EntryKind,
    EventKind,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn holds<T: Term + Serialize + for<'de> Deserialize<'de> + fmt::Debug>() {
        let mut codes = std::collections::BTreeSet::new();
        let mut labels = std::collections::BTreeSet::new();
        for &t in T::ALL {
            let code = t.code();
            assert!(
                !code.is_empty()
                    && code
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}: {code} is not snake_case",
                T::KIND
            );
            assert_eq!(serde_json::to_value(t).unwrap(), code, "{}", T::KIND);
            assert_eq!(serde_json::from_value::<T>(code.into()).unwrap(), t);
            assert_eq!(T::from_code(code), Some(t));
            assert_eq!(T::from_text(t.label()), Some(t));
            assert_eq!(label(T::KIND, code), Some(t.label()));
            // The first release's names (the document's) still parse.
            let variant = format!("{t:?}");
            assert_eq!(T::from_code(&variant), Some(t), "{}", T::KIND);
            assert!(codes.insert(code), "{}: {code} twice", T::KIND);
            assert!(labels.insert(t.label()), "{}: {} twice", T::KIND, t.label());
            assert!(!t.label().is_ascii() || t.label().starts_with("12345"));
        }
        assert_eq!(
            entries(T::KIND).unwrap().len(),
            T::ALL.len(),
            "{} has every value listed",
            T::KIND
        );
        assert!(serde_json::from_value::<T>("nonsense".into()).is_err());
    }

    #[test]
    fn every_vocabulary_has_one_code_and_one_label_per_value_and_serde_says_the_code() {
        holds::<HouseholdStatus>();
        holds::<KeyGroup>();
        holds::<Relation>();
        holds::<VisitOutcome>();
        holds::<NeedCategory>();
        holds::<DisputeKind>();
        holds::<HazardKind>();
        holds::<Publicity>();
        holds::<Urgency>();
        holds::<DemandStatus>();
        holds::<Tier>();
        holds::<Satisfaction>();
        holds::<DemandSource>();
        holds::<ReviewDecision>();
        holds::<ReviewState>();
        holds::<DemandAction>();
        holds::<StepKind>();
        holds::<Role>();
        holds::<Ledger>();
        holds::<EntryKind>();
        holds::<EventKind>();
        holds::<CaseState>();
        holds::<CaseAction>();
        assert_eq!(KINDS.len(), 23);
        let mut kinds = KINDS.to_vec();
        kinds.dedup();
        assert_eq!(kinds.len(), KINDS.len());
    }

    #[test]
    fn the_all_lists_match_the_enums() {
        // A variant added to an enum but not to its table does not compile (the matches are
        // exhaustive); one missing from ALL would not show in a list.
        assert_eq!(KeyGroup::ALL.len(), <KeyGroup as Term>::ALL.len());
        assert_eq!(DemandAction::ALL.len(), <DemandAction as Term>::ALL.len());
        assert_eq!(Role::ALL.len(), <Role as Term>::ALL.len());
    }
}
