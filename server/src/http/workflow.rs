//! The grid workflows' API over [`crate::service::figures`] and [`crate::service::orders`]:
//! visit-day coverage, demand work orders (enter, dispatch, accept,
//! bounce, handle, chase up, extend, close; the 12345 hotline import is [`super::import`]),
//! statistics and the red/black list. Reads come from the read model ([`crate::index`]); every step is a
//! change of the caller's web device, checked by the writer's policy like a phone's.

use axum::{
    Json,
    extract::{Path, State},
};
use qiaomen_protocol::{
    calendar::Day,
    coverage::Tally,
    schema::{NeedCategory, Satisfaction, Tier},
    vocab::Term,
    workorder::{DemandAction, Step},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, auth::Caller};
use crate::{
    access::org::UnitKind,
    index::OrderRow,
    service::{figures, orders},
    stats::{Figures, Ranked},
};

// ---------------------------------------------------------------- coverage

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CoverageQuery {
    /// An org unit id (default: the caller's topmost unit).
    pub unit: Option<String>,
    /// A date, YYYY-MM-DD: the report is for the visit day whose cycle holds it (default:
    /// today's).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub day: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnitTally {
    pub id: String,
    pub name: String,
    pub kind: UnitKind,
    #[schema(value_type = Object)]
    pub tally: Tally,
    pub rate: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HouseholdCoverage {
    pub id: String,
    pub grid: String,
    pub door_number: String,
    pub key_groups: Vec<String>,
    /// `visited`, `not_met`, `pending` or `missed`.
    pub state: String,
    /// Why not met: `nobody_home`, `refused`, `moved`.
    pub reason: Option<String>,
    pub attempts: u32,
    pub catch_up_by: String,
}

/// The "no household missed" report of a unit for one visit day.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CoverageReport {
    pub unit: UnitTally,
    pub visit_day: String,
    pub today: String,
    pub catch_up_by: String,
    /// Each child unit (town → villages → grids).
    pub children: Vec<UnitTally>,
    /// Every due household not visited yet (all due households for a grid), key groups
    /// first.
    pub households: Vec<HouseholdCoverage>,
    /// Logged changes not counted yet (0 but right after a large upload, while the read
    /// model catches up).
    pub behind: u64,
}

/// `GET /api/v1/coverage`: visited / due for a visit day, per child unit, with every due
/// household not met and why, and the catch-up deadline.
#[utoipa::path(get, path = "/api/v1/coverage", tag = "workflow", security(("bearer" = [])),
    params(CoverageQuery),
    responses((status = 200, body = CoverageReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn coverage_report(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<CoverageQuery>,
) -> Result<Json<CoverageReport>, ApiError> {
    Ok(Json(figures::coverage_for(&state, &caller, q).await?))
}

// ---------------------------------------------------------------- work orders

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// An org unit id (default: every grid the caller reads, and their teams' orders).
    pub unit: Option<String>,
    /// Only orders in this state, by its code (`raised`, `dispatched`, ..., `closed`; the first
    /// release's `Raised`, ... still parse); empty: every state.
    #[param(value_type = String, required = false,
        pattern = "^(|raised|dispatched|accepted|bounced|handling|done|fed_back|return_visited|closed|Raised|Dispatched|Accepted|Bounced|Handling|Done|FedBack|ReturnVisited|Closed)$")]
    pub status: Option<String>,
    /// `true`: only open orders whose step is past its due day.
    #[param(value_type = String, required = false, pattern = "^(true|false)$")]
    pub overdue: Option<String>,
}

/// `GET /api/v1/orders`: work orders of the caller's grids and teams, filtered.
#[utoipa::path(get, path = "/api/v1/orders", tag = "workflow", security(("bearer" = [])),
    params(OrdersQuery),
    responses((status = 200, body = Vec<OrderRow>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn orders(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<OrdersQuery>,
) -> Result<Json<Vec<OrderRow>>, ApiError> {
    Ok(Json(orders::order_list(&state, &caller, q).await?))
}

/// One entry of an order's history, for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub by: String,
    pub by_name: Option<String>,
    pub device: Option<String>,
    pub at_ms: i64,
    pub action: Option<String>,
    pub from: String,
    pub to: String,
    pub comment: String,
    pub tier: Option<String>,
    pub team: Option<String>,
    pub satisfaction: Option<String>,
    pub extend_days: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub kind: String,
    pub started_ms: i64,
    pub due: String,
    pub extended_days: u32,
    pub ended_ms: Option<i64>,
    pub late: bool,
    pub overdue: bool,
}

impl StepView {
    pub(crate) fn of(s: &Step, today: Day) -> Self {
        Self {
            kind: s.kind.code().to_string(),
            started_ms: s.started_ms,
            due: s.due.to_string(),
            extended_days: s.extended_days,
            ended_ms: s.ended_ms,
            late: s.late(),
            overdue: s.overdue_on(today),
        }
    }
}

/// A work order with the resident's request and its whole history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderDetail {
    pub order: OrderRow,
    pub address: String,
    pub text: String,
    pub history: Vec<HistoryEntry>,
    pub steps: Vec<StepView>,
    /// The steps the caller may take now.
    pub may: Vec<String>,
}

/// `GET /api/v1/orders/{demand}`: one work order, its history and deadlines, and the steps
/// the caller may take.
#[utoipa::path(get, path = "/api/v1/orders/{demand}", tag = "workflow", security(("bearer" = [])),
    params(("demand" = String, Path, description = "demand id")),
    responses((status = 200, body = OrderDetail), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn order(
    State(state): State<AppState>,
    caller: Caller,
    Path(demand): Path<String>,
) -> Result<Json<OrderDetail>, ApiError> {
    Ok(Json(orders::order_detail(&state, &caller, &demand).await?))
}

/// A tier, as the API names it.
#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TierName {
    /// 即办
    #[serde(alias = "Immediate")]
    Immediate,
    /// 协调
    #[serde(alias = "Coordinate")]
    Coordinate,
    /// 包案
    #[serde(alias = "LeaderCase")]
    LeaderCase,
}

impl From<TierName> for Tier {
    fn from(t: TierName) -> Tier {
        match t {
            TierName::Immediate => Tier::Immediate,
            TierName::Coordinate => Tier::Coordinate,
            TierName::LeaderCase => Tier::LeaderCase,
        }
    }
}

/// The resident's verdict at a return visit.
#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SatisfactionName {
    /// 满意
    #[serde(alias = "Satisfied")]
    Satisfied,
    /// 基本满意
    #[serde(alias = "Basically")]
    Basically,
    /// 不满意
    #[serde(alias = "Dissatisfied")]
    Dissatisfied,
}

impl From<SatisfactionName> for Satisfaction {
    fn from(s: SatisfactionName) -> Satisfaction {
        match s {
            SatisfactionName::Satisfied => Satisfaction::Satisfied,
            SatisfactionName::Basically => Satisfaction::Basically,
            SatisfactionName::Dissatisfied => Satisfaction::Dissatisfied,
        }
    }
}

/// A step on a work order: `action` says which, and the step's own data come with it (a
/// team for a dispatch, a reason for a bounce, the result for a finish, the verdict for a
/// return visit, working days for an extension). `comment` is at most 2000 characters.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepRequest {
    /// 即办: handle it at once.
    Take {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
        tier: Option<TierName>,
    },
    /// 派单 to a team (also arbitration of a bounced order).
    Dispatch {
        /// The team's org unit id.
        #[schema(min_length = 1, max_length = 64)]
        team: String,
        tier: Option<TierName>,
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 接单.
    Accept {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 退单, with the reason.
    Bounce {
        #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
        comment: String,
    },
    Start {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 办结, with the result.
    Finish {
        #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
        comment: String,
    },
    /// 反馈: the result was told to the resident.
    Feedback {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 回访, with the resident's verdict.
    ReturnVisit {
        satisfaction: SatisfactionName,
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    Close {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    Reopen {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 催办.
    ChaseUp {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 延期 of the open step.
    Extend {
        #[schema(minimum = 1, maximum = 60)]
        #[serde(deserialize_with = "super::whole::u32")]
        extend_days: u32,
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    Comment {
        #[serde(default)]
        #[schema(max_length = 2000)]
        comment: String,
    },
    /// 撤销: the command centre withdraws the order, with the reason (kept in its history; a
    /// demand is never deleted).
    Withdraw {
        #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
        comment: String,
    },
}

/// A step's parts: action, comment, tier, team, satisfaction, working days.
type StepParts = (
    DemandAction,
    String,
    Option<Tier>,
    Option<String>,
    Option<Satisfaction>,
    Option<u32>,
);

impl StepRequest {
    pub(crate) fn parts(self) -> StepParts {
        use DemandAction as A;
        match self {
            StepRequest::Take { comment, tier } => {
                (A::Take, comment, tier.map(Into::into), None, None, None)
            }
            StepRequest::Dispatch {
                team,
                tier,
                comment,
            } => (
                A::Dispatch,
                comment,
                tier.map(Into::into),
                Some(team),
                None,
                None,
            ),
            StepRequest::Accept { comment } => (A::Accept, comment, None, None, None, None),
            StepRequest::Bounce { comment } => (A::Bounce, comment, None, None, None, None),
            StepRequest::Start { comment } => (A::Start, comment, None, None, None, None),
            StepRequest::Finish { comment } => (A::Finish, comment, None, None, None, None),
            StepRequest::Feedback { comment } => (A::Feedback, comment, None, None, None, None),
            StepRequest::ReturnVisit {
                satisfaction,
                comment,
            } => (
                A::ReturnVisit,
                comment,
                None,
                None,
                Some(satisfaction.into()),
                None,
            ),
            StepRequest::Close { comment } => (A::Close, comment, None, None, None, None),
            StepRequest::Reopen { comment } => (A::Reopen, comment, None, None, None, None),
            StepRequest::ChaseUp { comment } => (A::ChaseUp, comment, None, None, None, None),
            StepRequest::Extend {
                extend_days,
                comment,
            } => (A::Extend, comment, None, None, None, Some(extend_days)),
            StepRequest::Comment { comment } => (A::Comment, comment, None, None, None, None),
            StepRequest::Withdraw { comment } => (A::Withdraw, comment, None, None, None, None),
        }
    }
}

/// `POST /api/v1/orders/{demand}/steps`: take a step; it is written to the household's
/// document (and reaches the grid's phones) and answered with the order as it now stands.
#[utoipa::path(post, path = "/api/v1/orders/{demand}/steps", tag = "workflow", security(("bearer" = [])),
    params(("demand" = String, Path, description = "demand id")), request_body = StepRequest,
    responses((status = 200, body = OrderDetail), (status = 400, description = "the step does not follow or lacks its data", body = ErrorBody),
              (status = 403, description = "not the caller's step to take", body = ErrorBody), (status = 404, description = "no such order, or no such team to dispatch to", body = ErrorBody),
              (status = 409, description = "invalid_step: the step does not follow from the order's state; stale_order: the order moved on meanwhile", body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn order_step(
    State(state): State<AppState>,
    caller: Caller,
    Path(demand): Path<String>,
    ApiJson(req): ApiJson<StepRequest>,
) -> Result<Json<OrderDetail>, ApiError> {
    orders::take_step(&state, &caller, &demand, req).await?;
    Ok(Json(orders::order_detail(&state, &caller, &demand).await?))
}

/// A demand's category.
#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CategoryName {
    /// 住房
    #[serde(alias = "住房")]
    #[serde(alias = "Housing")]
    Housing,
    /// 医疗
    #[serde(alias = "医疗")]
    #[serde(alias = "HealthCare")]
    HealthCare,
    /// 教育
    #[serde(alias = "教育")]
    #[serde(alias = "Education")]
    Education,
    /// 养老
    #[serde(alias = "养老")]
    #[serde(alias = "ElderlyCare")]
    ElderlyCare,
    /// 其他
    #[serde(alias = "其他")]
    #[serde(alias = "Other")]
    Other,
}

impl From<CategoryName> for NeedCategory {
    fn from(c: CategoryName) -> NeedCategory {
        match c {
            CategoryName::Housing => NeedCategory::Housing,
            CategoryName::HealthCare => NeedCategory::HealthCare,
            CategoryName::Education => NeedCategory::Education,
            CategoryName::ElderlyCare => NeedCategory::ElderlyCare,
            CategoryName::Other => NeedCategory::Other,
        }
    }
}

/// A demand entered by a supervisor.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDemandRequest {
    pub category: CategoryName,
    /// The resident's request, 1-2000 characters, not only spaces.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub text: String,
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DemandCreated {
    pub demand_id: String,
}

/// `POST /api/v1/households/{id}/demands`: a supervisor (or the grid's worker) enters a
/// resident's demand; it becomes a work order, collected, with the caller first-responsible.
#[utoipa::path(post, path = "/api/v1/households/{id}/demands", tag = "workflow", security(("bearer" = [])),
    params(("id" = String, Path, description = "household id")), request_body = NewDemandRequest,
    responses((status = 201, body = DemandCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn create_demand(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewDemandRequest>,
) -> Result<(axum::http::StatusCode, Json<DemandCreated>), ApiError> {
    let demand_id = orders::enter_demand(&state, &caller, &id, req).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(DemandCreated {
            demand_id: demand_id.to_string(),
        }),
    ))
}

// ---------------------------------------------------------------- statistics

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// An org unit id (default: the caller's topmost unit).
    pub unit: Option<String>,
    /// First day, YYYY-MM-DD (default: the first of this month).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD, not before `from`, at most three years after it (default: today).
    #[param(value_type = String, required = false, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnitFigures {
    pub id: String,
    pub name: String,
    pub kind: UnitKind,
    pub figures: Figures,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsReport {
    pub from: String,
    pub to: String,
    pub today: String,
    pub unit: UnitFigures,
    pub children: Vec<UnitFigures>,
    /// Each grid below the unit.
    pub grids: Vec<UnitFigures>,
    /// Logged changes not counted yet (0 but right after a large upload).
    pub behind: u64,
}

/// `GET /api/v1/stats`: demands received and resolved, on-time and satisfaction rates,
/// visits and coverage of a unit and of each unit and grid below it, for a period — computed
/// from the records (definitions in `server/src/stats.rs`).
#[utoipa::path(get, path = "/api/v1/stats", tag = "workflow", security(("bearer" = [])),
    params(PeriodQuery),
    responses((status = 200, body = StatsReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn stats_report(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<StatsReport>, ApiError> {
    Ok(Json(figures::stats_for(&state, &caller, q).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RankingReport {
    pub from: String,
    pub to: String,
    pub rule: String,
    pub red: Vec<Ranked>,
    pub black: Vec<Ranked>,
}

/// `GET /api/v1/ranking`: the red/black list (红黑榜) of the grids below a unit for a
/// period, by the documented rule.
#[utoipa::path(get, path = "/api/v1/ranking", tag = "workflow", security(("bearer" = [])),
    params(PeriodQuery),
    responses((status = 200, body = RankingReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn ranking(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<RankingReport>, ApiError> {
    Ok(Json(figures::ranking_for(&state, &caller, q).await?))
}

// ---------------------------------------------------------------- refused changes

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RefusedQuery {
    /// An org unit id (default: the caller's topmost unit). Only grids the caller supervises
    /// (every grid, for an admin) are listed.
    pub unit: Option<String>,
    /// At most this many, newest first (default 100, at most 500).
    #[param(value_type = String, required = false, pattern = "^([1-9][0-9]?|[1-4][0-9]{2}|500)$")]
    pub limit: Option<String>,
}

/// A change the server refused, kept (not applied) with what it held.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefusedView {
    pub household: String,
    /// The household's grid when the change was refused.
    pub grid: String,
    /// The change's hash (hex).
    pub change: String,
    /// The device and user that made it.
    pub device: Option<String>,
    pub user: Option<String>,
    /// The reject code (SYNC-v1 §5.5).
    pub code: String,
    /// Why, in Chinese.
    pub reason: String,
    pub at_ms: i64,
    /// Which visits, demands, members and fields it wrote, with what was typed
    /// (`qiaomen_protocol::refused::RefusedContent`); `null` when it cannot be read.
    #[schema(value_type = Object)]
    pub content: Option<qiaomen_protocol::refused::RefusedContent>,
}

/// `GET /api/v1/refused`: changes the server refused in the grids the caller supervises,
/// newest first, with their reason and what they held — nothing a worker typed is lost
/// without a trace (SYNC-v1 §5.6). Audited.
#[utoipa::path(get, path = "/api/v1/refused", tag = "workflow", security(("bearer" = [])),
    params(RefusedQuery),
    responses((status = 200, body = Vec<RefusedView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn refused(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RefusedQuery>,
) -> Result<Json<Vec<RefusedView>>, ApiError> {
    Ok(Json(orders::refused_for(&state, &caller, q).await?))
}
