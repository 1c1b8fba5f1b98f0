//! The grid workflows' API: visit-day coverage, demand work orders (enter, dispatch, accept,
//! bounce, handle, chase up, extend, close; the 12345 hotline import is [`super::import`]),
//! statistics and the red/black list. Reads come from the read model ([`crate::index`]); every step is a
//! change of the caller's web device, checked by the writer's policy like a phone's.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
};
use qiaomen_protocol::{
    calendar::{self, Day},
    coverage::{self, CoveragePolicy, CoverageState, Tally},
    ids::{DemandId, HouseholdId, UserId},
    schema::{Demand, DemandSource, NeedCategory, Satisfaction, Tier, Urgency},
    vocab::Term,
    workorder::{self, DemandAction, NewStep, Step},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, api::web_change, auth::Caller};
use crate::{
    access::{
        Scope, now_ms,
        org::{Unit, UnitKind},
    },
    index::{HouseholdRow, OrderRow},
    stats::{self, Figures, Ranked},
};

pub(crate) fn today() -> Day {
    workorder::day_of(now_ms())
}

pub(crate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code: "invalid",
        message: message.into(),
    }
}

fn no_unit() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such unit".into(),
    }
}

fn no_order() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such work order".into(),
    }
}

/// A query parameter given empty (as a form sends a field left blank) counts as absent.
pub(crate) fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub(crate) fn parse_day(s: &str, what: &str) -> Result<Day, ApiError> {
    s.parse()
        .map_err(|_| bad(format!("{what} is not a date (YYYY-MM-DD)")))
}

/// A unit the caller may see, the grids below it they may read, and its child units with
/// theirs.
pub(crate) struct UnitScope {
    pub unit: Unit,
    pub grids: Vec<String>,
    pub children: Vec<(Unit, Vec<String>)>,
    /// The name of each of `grids`.
    pub grid_names: BTreeMap<String, String>,
}

/// Resolves `unit` (default: the caller's topmost unit) within what the caller may see.
pub(crate) async fn unit_scope(
    state: &AppState,
    caller: &Caller,
    unit: Option<String>,
) -> Result<UnitScope, ApiError> {
    let user = caller.user();
    state
        .access(move |db| {
            let at = now_ms();
            let scope = db.scope(user, at)?;
            let visible: Vec<Unit> = db
                .visible_units(user, at)?
                .into_iter()
                .filter(|u| u.kind != UnitKind::Team)
                .collect();
            let unit = match unit {
                Some(id) => visible.iter().find(|u| u.id == id).cloned(),
                None => visible.first().cloned(),
            };
            let Some(unit) = unit else {
                return Ok(None);
            };
            let readable = |id: &str| -> crate::access::Result<Vec<String>> {
                Ok(db
                    .grids_below(id)?
                    .into_iter()
                    .filter(|g| scope.may_read(g))
                    .collect())
            };
            let grids = readable(&unit.id)?;
            let grid_names = visible
                .iter()
                .filter(|u| grids.contains(&u.id))
                .map(|u| (u.id.clone(), u.name.clone()))
                .collect();
            let mut children = Vec::new();
            for child in visible
                .iter()
                .filter(|u| u.parent.as_deref() == Some(unit.id.as_str()))
            {
                children.push((child.clone(), readable(&child.id)?));
            }
            Ok(Some(UnitScope {
                unit,
                grids,
                children,
                grid_names,
            }))
        })
        .await?
        .ok_or_else(no_unit)
}

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

fn unit_tally(unit: &Unit, tally: Tally) -> UnitTally {
    UnitTally {
        id: unit.id.clone(),
        name: unit.name.clone(),
        kind: unit.kind,
        rate: tally.rate(),
        tally,
    }
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
    coverage_for(&state, &caller, q).await.map(Json)
}

/// The households of `rows` due on the visit day `day` (as of `today`) in one of `grids`,
/// each with the grid it was in that day (counted from its registration): what the coverage
/// report, its series and the map count.
pub(crate) fn due_on<'a>(
    rows: &'a [HouseholdRow],
    grids: &'a [String],
    day: Day,
    today: Day,
    policy: &'a CoveragePolicy,
) -> impl Iterator<Item = (&'a HouseholdRow, &'a str, coverage::Due)> + 'a {
    rows.iter().filter_map(move |h| {
        // Where the household was that day, counted from its registration.
        let grid = h.grid_on(day);
        if !grids.iter().any(|g| g == grid) {
            return None;
        }
        let due = coverage::coverage(&h.input, day, today, policy)?;
        Some((h, grid, due))
    })
}

pub(crate) async fn coverage_for(
    state: &AppState,
    caller: &Caller,
    q: CoverageQuery,
) -> Result<CoverageReport, ApiError> {
    let today = today();
    let day = match q.day.as_deref() {
        Some(s) => calendar::cycle_of(parse_day(s, "day")?),
        None => calendar::cycle_of(today),
    };
    let us = unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
    let grids = us.grids.clone();
    let (rows, behind) = state
        .index(move |ix| Ok((ix.households(&grids)?, ix.behind()?)))
        .await?;
    let policy = state.workflow.coverage.clone();
    let mut per_grid: BTreeMap<String, Tally> = BTreeMap::new();
    let mut households = Vec::new();
    let is_grid = us.unit.kind == UnitKind::Grid;
    for (h, grid, due) in due_on(&rows, &us.grids, day, today, &policy) {
        per_grid.entry(grid.to_string()).or_default().add(&due);
        if is_grid || due.state != CoverageState::Visited {
            let (state, reason) = match due.state {
                CoverageState::Visited => ("visited", None),
                CoverageState::NotMet(o) => (
                    "not_met",
                    // The latest attempt's outcome, by its code (`nobody_home`).
                    Some(o.code().to_string()),
                ),
                CoverageState::Pending => ("pending", None),
                CoverageState::Missed => ("missed", None),
            };
            households.push(HouseholdCoverage {
                id: h.id.to_string(),
                grid: grid.to_string(),
                door_number: h.door.clone(),
                key_groups: due
                    .key_groups
                    .iter()
                    .map(|g| g.code().to_string())
                    .collect(),
                state: state.into(),
                reason,
                attempts: due.attempts,
                catch_up_by: due.catch_up_by.to_string(),
            });
        }
    }
    households.sort_by(|a, b| {
        (a.key_groups.is_empty(), &a.grid, &a.door_number).cmp(&(
            b.key_groups.is_empty(),
            &b.grid,
            &b.door_number,
        ))
    });
    let sum = |grids: &[String]| {
        let mut t = Tally::default();
        for g in grids {
            if let Some(x) = per_grid.get(g) {
                t.merge(x);
            }
        }
        t
    };
    Ok(CoverageReport {
        unit: unit_tally(&us.unit, sum(&us.grids)),
        visit_day: day.to_string(),
        today: today.to_string(),
        catch_up_by: policy.catch_up_by(day).to_string(),
        children: us
            .children
            .iter()
            .map(|(u, g)| unit_tally(u, sum(g)))
            .collect(),
        households,
        behind,
    })
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
    order_list(&state, &caller, q).await.map(Json)
}

pub(crate) async fn order_list(
    state: &AppState,
    caller: &Caller,
    q: OrdersQuery,
) -> Result<Vec<OrderRow>, ApiError> {
    let (grids, teams) = match given(&q.unit).map(str::to_string) {
        Some(u) => {
            let us = unit_scope(state, caller, Some(u)).await?;
            (us.grids, Vec::new())
        }
        None => {
            let user = caller.user();
            let scope = state.access(move |db| db.scope(user, now_ms())).await?;
            (
                scope.read.into_iter().collect::<Vec<_>>(),
                scope.rights.teams.into_iter().collect(),
            )
        }
    };
    let today = today().to_string();
    let mut rows = state.index(move |ix| ix.orders(&grids, &teams)).await?;
    for r in &mut rows {
        r.overdue = r.step_due.as_deref().is_some_and(|d| d < today.as_str());
    }
    if let Some(s) = given(&q.status) {
        let Some(status) = qiaomen_protocol::schema::DemandStatus::from_code(s) else {
            return Err(bad(
                "status is not a work-order state (raised, dispatched, ...)",
            ));
        };
        rows.retain(|r| r.status == status.code());
    }
    match q.overdue.as_deref() {
        None | Some("false") => {}
        Some("true") => rows.retain(|r| r.overdue),
        Some(_) => return Err(bad("overdue is true or false")),
    }
    Ok(rows)
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
    fn of(s: &Step, today: Day) -> Self {
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

/// Finds an order the caller may see: in a grid they read, or dispatched to their team.
async fn visible_order(
    state: &AppState,
    caller: &Caller,
    demand: &str,
) -> Result<(OrderRow, Scope), ApiError> {
    let id = demand.parse::<DemandId>().map_err(|_| no_order())?;
    let demand = id.to_string();
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    // A demand id is one household's (`crate::orders`); should two hold it from before that
    // rule, the order is the registered owner's, never whichever row comes first. The owner
    // is read on the read model's blocking thread: on PostgreSQL it may come from the database.
    let ids = state.demand_ids.clone();
    let (rows, owner) = state
        .index(move |ix| Ok((ix.orders_with_id(&demand)?, ids.owner(id))))
        .await?;
    let owner = owner.map(|h| h.to_string());
    let mut row = match owner {
        Some(h) => rows.into_iter().find(|r| r.household == h),
        None => rows.into_iter().next(),
    }
    .ok_or_else(no_order)?;
    row.overdue = row
        .step_due
        .as_deref()
        .is_some_and(|d| d < today().to_string().as_str());
    let of_team = row
        .team
        .as_ref()
        .is_some_and(|t| scope.rights.teams.contains(t));
    if !scope.may_read(&row.grid) && !of_team {
        return Err(no_order());
    }
    Ok((row, scope))
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
    order_detail(&state, &caller, &demand).await.map(Json)
}

pub(crate) async fn order_detail(
    state: &AppState,
    caller: &Caller,
    demand: &str,
) -> Result<OrderDetail, ApiError> {
    let (row, scope) = visible_order(state, caller, demand).await?;
    let id: HouseholdId = row.household.parse().map_err(|_| ApiError::Internal)?;
    let bytes = state
        .readers
        .with(move |s| s.load_doc(id))
        .await?
        .ok_or_else(no_order)?;
    let key = row.demand.clone();
    let rules = state.workflow.deadlines.clone();
    let (address, d) = tokio::task::spawn_blocking(move || {
        // The one demand and the address, not the whole record.
        let doc = qiaomen_protocol::doc::HouseholdDoc::load(&bytes).ok()?;
        let d = doc.demand_at(&key, None).ok()??;
        Some((doc.root_text("address", None).unwrap_or_default(), d))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .ok_or_else(no_order)?;
    let names = {
        let ids: Vec<String> = d.history.iter().map(|e| e.by.to_string()).collect();
        state.access(move |db| db.user_names(&ids)).await?
    };
    let order = workorder::replay(&d, &rules);
    let party = scope.party(&row.grid, now_ms());
    let today = today();
    let may = DemandAction::ALL
        .iter()
        .filter(|a| a.next(order.status).is_some() && party.may(**a, &order))
        .map(|a| a.code().to_string())
        .collect();
    let user = caller.user();
    let target = row.household.clone();
    state
        .access(move |db| {
            db.audit(crate::access::audit::Event {
                user: Some(&user.to_string()),
                device: None,
                action: "read_order",
                target: Some(&target),
                outcome: "ok",
            })
        })
        .await?;
    Ok(OrderDetail {
        history: d
            .history
            .iter()
            .map(|e| HistoryEntry {
                by: e.by.to_string(),
                by_name: names.get(&e.by.to_string()).cloned(),
                device: e.device.map(|d| d.to_string()),
                at_ms: e.at_ms,
                action: e.action.map(|a| a.code().to_string()),
                from: e.from.code().to_string(),
                to: e.to.code().to_string(),
                comment: e.comment.clone(),
                tier: e.tier.map(|t| t.code().to_string()),
                team: e.unit.clone(),
                satisfaction: e.satisfaction.map(|s| s.code().to_string()),
                extend_days: e.extend_days,
            })
            .collect(),
        steps: order.steps.iter().map(|s| StepView::of(s, today)).collect(),
        may,
        address,
        text: d.text,
        order: row,
    })
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
    fn parts(self) -> StepParts {
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
    take_step(&state, &caller, &demand, req).await?;
    order_detail(&state, &caller, &demand).await.map(Json)
}

pub(crate) async fn take_step(
    state: &AppState,
    caller: &Caller,
    demand: &str,
    req: StepRequest,
) -> Result<(), ApiError> {
    let (action, comment, tier, team, satisfaction, extend_days) = req.parts();
    if comment.chars().count() > 2000 {
        return Err(bad("the comment has more than 2000 characters"));
    }
    let (row, _) = visible_order(state, caller, demand).await?;
    if let Some(team) = team.clone() {
        let kind = if team.len() > 64 {
            None
        } else {
            state.access(move |db| db.unit_kind_of(&team)).await?
        };
        if kind != Some(UnitKind::Team) {
            return Err(ApiError::NotFound {
                code: "no_such_team",
                message: "dispatch needs the id of a team unit".into(),
            });
        }
    }
    let id: HouseholdId = row.household.parse().map_err(|_| ApiError::Internal)?;
    let demand_id: DemandId = row.demand.parse().map_err(|_| ApiError::Internal)?;
    let rules = state.workflow.deadlines.clone();
    let team_of_order = row.team.clone();
    web_change(
        state,
        caller,
        id,
        "order_step",
        move |scope, grid| {
            let of_team = team_of_order
                .as_ref()
                .is_some_and(|t| scope.rights.teams.contains(t));
            if scope.may_read(grid) || of_team {
                Ok(())
            } else {
                Err(no_order())
            }
        },
        move |doc, author| {
            let step = NewStep {
                action,
                comment: &comment,
                tier,
                unit: team.as_deref(),
                satisfaction,
                extend_days,
            };
            // The request's shape is the schema's; what is left is the order's state.
            doc.demand_step(author, now_ms(), demand_id, &step, &rules)
                .map_err(|e| ApiError::Conflict {
                    code: "invalid_step",
                    message: e.to_string(),
                })
        },
    )
    .await
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

fn check_text(text: &str) -> Result<(), String> {
    let n = text.trim().chars().count();
    // `MAX_TEXT_CHARS` (SYNC-v1 §13.8, `demand_text`), told before the change is made.
    if n == 0 || n > qiaomen_protocol::validate::MAX_TEXT_CHARS {
        return Err("the text must have 1-2000 characters".into());
    }
    Ok(())
}

/// Adds a demand to a household as a change of the caller's web device.
pub(crate) async fn add_demand(
    state: &AppState,
    caller: &Caller,
    id: HouseholdId,
    demand: Demand,
    action: &'static str,
) -> Result<(), ApiError> {
    web_change(
        state,
        caller,
        id,
        action,
        |scope, grid| {
            if scope.may_read(grid) {
                Ok(())
            } else {
                Err(ApiError::NotFound {
                    code: "not_found",
                    message: "no such household".into(),
                })
            }
        },
        move |doc, author| {
            doc.edit(author, now_ms(), |h| {
                h.demands.insert(demand.id, demand);
                Ok(())
            })
            .map_err(|_| ApiError::Internal)?
            .1
            .ok_or(ApiError::Internal)
        },
    )
    .await
}

pub(crate) fn new_demand(
    by: UserId,
    category: NeedCategory,
    text: String,
    urgent: bool,
    source: DemandSource,
    external_ref: Option<String>,
) -> Demand {
    Demand {
        id: DemandId::new(),
        raised_on_visit: None,
        raised_by: by,
        raised_at_ms: now_ms(),
        category,
        text,
        urgency: if urgent {
            Urgency::Urgent
        } else {
            Urgency::Normal
        },
        status: qiaomen_protocol::schema::DemandStatus::Raised,
        history: Vec::new(),
        first_responsible: None,
        source: Some(source),
        external_ref,
    }
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
    let id: HouseholdId = id.parse().map_err(|_| ApiError::NotFound {
        code: "not_found",
        message: "no such household".into(),
    })?;
    let cat = NeedCategory::from(req.category);
    check_text(&req.text).map_err(bad)?;
    let d = new_demand(
        caller.user(),
        cat,
        req.text.trim().to_string(),
        req.urgent,
        DemandSource::Supervisor,
        None,
    );
    let demand_id = d.id;
    add_demand(&state, &caller, id, d, "enter_demand").await?;
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

fn period(q: &PeriodQuery) -> Result<(Day, Day), ApiError> {
    let today = today();
    let from = match q.from.as_deref() {
        Some(s) => parse_day(s, "from")?,
        None => Day::ymd(today.year(), today.month(), 1).ok_or(ApiError::Internal)?,
    };
    let to = match q.to.as_deref() {
        Some(s) => parse_day(s, "to")?,
        None => today,
    };
    if from > to {
        return Err(bad("from is after to"));
    }
    if to.0 - from.0 > time::Duration::days(3 * 366) {
        return Err(bad("a period is at most three years"));
    }
    Ok((from, to))
}

/// Figures per grid of a unit, for a period.
async fn grid_figures(
    state: &AppState,
    us: &UnitScope,
    (from, to): (Day, Day),
) -> Result<(BTreeMap<String, Figures>, u64), ApiError> {
    let grids = us.grids.clone();
    let teams: Vec<String> = Vec::new();
    let (orders, households, visits, behind) = state
        .index(move |ix| {
            Ok((
                ix.orders(&grids, &teams)?,
                ix.households(&grids)?,
                ix.visit_counts(&grids, from, to)?,
                ix.behind()?,
            ))
        })
        .await?;
    let policy = state.workflow.coverage.clone();
    let today = today();
    let mut out = BTreeMap::new();
    for g in &us.grids {
        let o: Vec<OrderRow> = orders.iter().filter(|r| &r.grid == g).cloned().collect();
        let v = visits.get(g).copied().unwrap_or(0);
        out.insert(
            g.clone(),
            stats::figures(g, &o, &households, v, (from, to), today, &policy),
        );
    }
    Ok((out, behind))
}

/// Adds up grids' figures (counts add; rates are recomputed from the sums).
fn total(per_grid: &BTreeMap<String, Figures>, grids: &[String]) -> Figures {
    let mut f = Figures::default();
    for x in grids.iter().filter_map(|g| per_grid.get(g)) {
        f.add(x);
    }
    f.with_rates()
}

/// A unit's grids' figures for a period: what the statistics and the ranking are made of.
pub(crate) struct PeriodFigures {
    pub from: Day,
    pub to: Day,
    pub us: UnitScope,
    pub per_grid: BTreeMap<String, Figures>,
    pub behind: u64,
}

pub(crate) async fn period_figures(
    state: &AppState,
    caller: &Caller,
    q: PeriodQuery,
) -> Result<PeriodFigures, ApiError> {
    let (from, to) = period(&q)?;
    let us = unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
    let (per_grid, behind) = grid_figures(state, &us, (from, to)).await?;
    Ok(PeriodFigures {
        from,
        to,
        us,
        per_grid,
        behind,
    })
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
    stats_for(&state, &caller, q).await.map(Json)
}

pub(crate) async fn stats_for(
    state: &AppState,
    caller: &Caller,
    q: PeriodQuery,
) -> Result<StatsReport, ApiError> {
    Ok(stats_of(&period_figures(state, caller, q).await?))
}

pub(crate) fn stats_of(pf: &PeriodFigures) -> StatsReport {
    let figures_of = |u: &Unit, grids: &[String]| UnitFigures {
        id: u.id.clone(),
        name: u.name.clone(),
        kind: u.kind,
        figures: total(&pf.per_grid, grids),
    };
    StatsReport {
        from: pf.from.to_string(),
        to: pf.to.to_string(),
        today: today().to_string(),
        unit: figures_of(&pf.us.unit, &pf.us.grids),
        children: pf
            .us
            .children
            .iter()
            .map(|(u, g)| figures_of(u, g))
            .collect(),
        grids: pf
            .per_grid
            .iter()
            .map(|(g, f)| UnitFigures {
                id: g.clone(),
                name: pf.us.grid_names.get(g).unwrap_or(g).clone(),
                kind: UnitKind::Grid,
                figures: f.clone(),
            })
            .collect(),
        behind: pf.behind,
    }
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
    ranking_for(&state, &caller, q).await.map(Json)
}

pub(crate) async fn ranking_for(
    state: &AppState,
    caller: &Caller,
    q: PeriodQuery,
) -> Result<RankingReport, ApiError> {
    Ok(ranking_of(&period_figures(state, caller, q).await?))
}

pub(crate) fn ranking_of(pf: &PeriodFigures) -> RankingReport {
    let (red, black) = stats::red_black(
        pf.per_grid
            .iter()
            .map(|(g, f)| (g.clone(), f.clone()))
            .collect(),
    );
    RankingReport {
        from: pf.from.to_string(),
        to: pf.to.to_string(),
        rule: stats::RANKING_RULE.into(),
        red,
        black,
    }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads kept refusals with what they held (each on a copy of its household as stored).
pub(crate) fn refused_views(
    storage: &(impl crate::storage::Storage + ?Sized),
    rows: Vec<crate::storage::RefusedRow>,
) -> Result<Vec<RefusedView>, crate::storage::StorageError> {
    let mut households: std::collections::HashMap<HouseholdId, Option<Vec<u8>>> =
        Default::default();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let stored = match households.get(&r.doc) {
            Some(s) => s.clone(),
            None => {
                let s = storage.load_doc(r.doc)?;
                households.insert(r.doc, s.clone());
                s
            }
        };
        let content = qiaomen_protocol::refused::content_of(stored.as_deref(), &r.bytes).ok();
        let code: Option<qiaomen_protocol::wire::RejectCode> =
            serde_json::from_value(serde_json::Value::String(r.code.clone())).ok();
        out.push(RefusedView {
            household: r.doc.to_string(),
            grid: r.grid,
            change: hex(&r.hash),
            device: r
                .device
                .map(|d| qiaomen_protocol::ids::Uuid::from_bytes(d).to_string()),
            user: r
                .user
                .map(|u| qiaomen_protocol::ids::Uuid::from_bytes(u).to_string()),
            reason: code
                .map_or("服务器未接收这条修改。", |c| c.reason_zh())
                .to_string(),
            code: r.code,
            at_ms: r.at_ms,
            content,
        });
    }
    Ok(out)
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
    refused_for(&state, &caller, q).await.map(Json)
}

/// The refused changes `caller` may see (the API's and the page's).
pub(crate) async fn refused_for(
    state: &AppState,
    caller: &Caller,
    q: RefusedQuery,
) -> Result<Vec<RefusedView>, ApiError> {
    let limit = match q.limit.as_deref() {
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| bad("limit must be 1 to 500"))?,
        None => 100,
    };
    let us = unit_scope(state, caller, given(&q.unit).map(str::to_string)).await?;
    let user = caller.user();
    let scope: Scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let admin = scope.roles.contains(&crate::access::org::Role::Admin);
    let at = now_ms();
    let grids: Vec<String> = us
        .grids
        .into_iter()
        .filter(|g| admin || scope.supervises(g, at))
        .collect();
    let views = state
        .readers
        .with(move |s| {
            let rows = crate::storage::Storage::refused(s, Some(&grids), limit)?;
            refused_views(s, rows)
        })
        .await?;
    super::api::record(state, user, None, "refused_list", us.unit.id, "ok").await?;
    Ok(views)
}
