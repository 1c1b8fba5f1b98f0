//! Demand work orders: the list of the caller's grids and teams, one order with its history
//! and the steps the caller may take, a step (a change of the caller's web device, checked by
//! the writer's policy like a phone's), a new demand (entered by a supervisor or imported from
//! the 12345 hotline), and the changes the server refused. Reads come from the read model
//! ([`crate::index`]).

use qiaomen_protocol::{
    ids::{DemandId, HouseholdId, UserId},
    schema::{Demand, DemandSource, NeedCategory, Urgency},
    vocab::Term,
    workorder::{self, DemandAction, NewStep},
};

use super::{Error, Result, given, households::web_change, today, unit_scope};
use crate::{
    access::{Scope, now_ms, org::UnitKind},
    http::{
        AppState,
        auth::Caller,
        workflow::{
            HistoryEntry, NewDemandRequest, OrderDetail, OrdersQuery, RefusedQuery, RefusedView,
            StepRequest, StepView,
        },
    },
    index::OrderRow,
};

fn no_order() -> Error {
    Error::NotFound {
        code: "not_found",
        message: "no such work order".into(),
    }
}

/// Finds an order the caller may see: in a grid they read, or dispatched to their team.
async fn visible_order(
    state: &AppState,
    caller: &Caller,
    demand: &str,
) -> Result<(OrderRow, Scope)> {
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

/// The work orders of the caller's grids and teams (or of `q.unit`'s grids), filtered by
/// state and lateness.
pub async fn order_list(
    state: &AppState,
    caller: &Caller,
    q: OrdersQuery,
) -> Result<Vec<OrderRow>> {
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
            return Err(Error::invalid(
                "status is not a work-order state (raised, dispatched, ...)",
            ));
        };
        rows.retain(|r| r.status == status.code());
    }
    match q.overdue.as_deref() {
        None | Some("false") => {}
        Some("true") => rows.retain(|r| r.overdue),
        Some(_) => return Err(Error::invalid("overdue is true or false")),
    }
    Ok(rows)
}

/// One work order the caller may see, its history and deadlines, and the steps the caller may
/// take; audited.
pub async fn order_detail(state: &AppState, caller: &Caller, demand: &str) -> Result<OrderDetail> {
    let (row, scope) = visible_order(state, caller, demand).await?;
    let id: HouseholdId = row.household.parse().map_err(|_| Error::Internal)?;
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
    .map_err(|_| Error::Internal)?
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

/// Takes a step of an order as the caller: a change of their web device, checked by the
/// writer's policy (`invalid_step`, `stale_order`, `not_allowed` when it refuses).
pub async fn take_step(
    state: &AppState,
    caller: &Caller,
    demand: &str,
    req: StepRequest,
) -> Result<()> {
    let (action, comment, tier, team, satisfaction, extend_days) = req.parts();
    if comment.chars().count() > 2000 {
        return Err(Error::invalid("the comment has more than 2000 characters"));
    }
    let (row, _) = visible_order(state, caller, demand).await?;
    if let Some(team) = team.clone() {
        let kind = if team.len() > 64 {
            None
        } else {
            state.access(move |db| db.unit_kind_of(&team)).await?
        };
        if kind != Some(UnitKind::Team) {
            return Err(Error::NotFound {
                code: "no_such_team",
                message: "dispatch needs the id of a team unit".into(),
            });
        }
    }
    let id: HouseholdId = row.household.parse().map_err(|_| Error::Internal)?;
    let demand_id: DemandId = row.demand.parse().map_err(|_| Error::Internal)?;
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
                .map_err(|e| Error::Conflict {
                    code: "invalid_step",
                    message: e.to_string(),
                })
        },
    )
    .await
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
pub async fn add_demand(
    state: &AppState,
    caller: &Caller,
    id: HouseholdId,
    demand: Demand,
    action: &'static str,
) -> Result<()> {
    web_change(
        state,
        caller,
        id,
        action,
        |scope, grid| {
            if scope.may_read(grid) {
                Ok(())
            } else {
                Err(super::households::not_found())
            }
        },
        move |doc, author| {
            doc.edit(author, now_ms(), |h| {
                h.demands.insert(demand.id, demand);
                Ok(())
            })
            .map_err(|_| Error::Internal)?
            .1
            .ok_or(Error::Internal)
        },
    )
    .await
}

/// A new demand, raised now by `by`, not yet in any household.
pub fn new_demand(
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads kept refusals with what they held (each on a copy of its household as stored).
pub fn refused_views(
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

/// The refused changes `caller` may see (the API's and the page's).
pub async fn refused_for(
    state: &AppState,
    caller: &Caller,
    q: RefusedQuery,
) -> Result<Vec<RefusedView>> {
    let limit = match q.limit.as_deref() {
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| Error::invalid("limit must be 1 to 500"))?,
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
    super::households::record(state, user, None, "refused_list", us.unit.id, "ok").await?;
    Ok(views)
}

/// Enters a resident's demand in household `id` as `caller` (a supervisor, or the grid's
/// worker), first-responsible; the new demand's id.
pub async fn enter_demand(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: NewDemandRequest,
) -> Result<DemandId> {
    let id: HouseholdId = id
        .parse()
        .map_err(|_| Error::not_found("no such household"))?;
    let cat = NeedCategory::from(req.category);
    check_text(&req.text).map_err(Error::invalid)?;
    let d = new_demand(
        caller.user(),
        cat,
        req.text.trim().to_string(),
        req.urgent,
        DemandSource::Supervisor,
        None,
    );
    let demand_id = d.id;
    add_demand(state, caller, id, d, "enter_demand").await?;
    Ok(demand_id)
}
