//! Events and work logs (SYNC-v1 §13.12) for supervisors: the entries of a unit's grids over a
//! period, and an event dispatched as a work order — a demand of a household of the event's
//! grid (the door nearest to it, chosen by the supervisor), written as a change of the
//! supervisor's web device under the phones' policy; the entry keeps the order's id. Entries
//! are stored by the sync handler ([`crate::access::journal`]); nothing here edits one.

use qiaomen_protocol::{
    ids::{DemandId, HouseholdId},
    journal::{EntryKind, EventKind},
    schema::{Demand, DemandSource, DemandStatus, NeedCategory, Urgency},
    vocab::Term,
};
use serde::{Deserialize, Serialize};

use super::{Error, Result, given, households::web_change, parse_day, today};
use crate::{
    access::{journal::JournalRow, now_ms},
    http::{AppState, auth::Caller},
};

/// Which entries a list holds.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JournalQuery {
    /// An org unit id (default: every grid the caller reads).
    pub unit: Option<String>,
    /// `event` or `work_log`; empty: both.
    #[param(value_type = String, required = false, pattern = "^(|event|work_log)$")]
    pub kind: Option<String>,
    /// Entries of days from `from` to `to` (YYYY-MM-DD); default the last 30 days.
    #[param(value_type = String, required = false, format = Date)]
    pub from: Option<String>,
    #[param(value_type = String, required = false, format = Date)]
    pub to: Option<String>,
}

/// The entries of a unit's grids, newest first, and the period they are of.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JournalList {
    pub from: String,
    pub to: String,
    pub entries: Vec<JournalRow>,
}

/// An event dispatched as a work order.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct DispatchRequest {
    /// The household of the event's grid the order is of (the door nearest the event).
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub household: String,
    /// A demand category (`housing`, `public_order`, ... or its Chinese label); default
    /// `other`.
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub urgent: bool,
}

/// The work order an event became.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Dispatched {
    pub demand: String,
    pub household: String,
}

/// The entries of the caller's grids (or of `q.unit`'s), filtered by kind and day.
pub async fn journal_list(
    state: &AppState,
    caller: &Caller,
    q: JournalQuery,
) -> Result<JournalList> {
    let kind = match given(&q.kind) {
        None => None,
        Some(k) => Some(
            EntryKind::from_code(k)
                .ok_or_else(|| Error::invalid("kind is event or work_log"))?
                .code(),
        ),
    };
    let to = match given(&q.to) {
        Some(t) => parse_day(t, "to")?,
        None => today(),
    };
    let from = match given(&q.from) {
        Some(f) => parse_day(f, "from")?,
        None => to.add_days(-29),
    };
    if from > to {
        return Err(Error::invalid("from is after to"));
    }
    let grids = super::cases::grids_of(state, caller, given(&q.unit)).await?;
    let (f, t) = (from.to_string(), to.to_string());
    let mut entries = state.access(move |db| db.journal(&grids, &f, &t)).await?;
    entries.retain(|e| kind.is_none_or(|k| e.kind == k));
    Ok(JournalList {
        from: from.to_string(),
        to: to.to_string(),
        entries,
    })
}

/// The entry `id` if the caller reads its grid (404 otherwise, as for one that is not).
pub async fn visible_entry(state: &AppState, caller: &Caller, id: &str) -> Result<JournalRow> {
    let user = caller.user();
    let key = id.to_string();
    let (entry, scope) = state
        .access(move |db| Ok((db.journal_entry(&key)?, db.scope(user, now_ms())?)))
        .await?;
    entry
        .filter(|e| scope.may_read(&e.grid))
        .ok_or_else(|| Error::NotFound {
            code: "no_such_entry",
            message: "no such event or work log".into(),
        })
}

/// Dispatches event `id` as a work order of `req.household` (of the event's grid), source
/// supervisor, the grid's worker first-responsible; only a supervisor of the grid may, and
/// only once per event.
pub async fn dispatch(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: DispatchRequest,
) -> Result<Dispatched> {
    let category = match given(&req.category) {
        None => NeedCategory::Other,
        Some(c) => NeedCategory::from_text(c)
            .ok_or_else(|| Error::invalid("category is a demand category (housing, ...)"))?,
    };
    let household: HouseholdId = req
        .household
        .trim()
        .parse()
        .map_err(|_| Error::invalid("household is a household id"))?;
    let entry = visible_entry(state, caller, id).await?;
    if entry.kind != EntryKind::Event.code() {
        return Err(Error::Conflict {
            code: "not_an_event",
            message: "only an event can be dispatched as a work order".into(),
        });
    }
    if entry.order.is_some() {
        return Err(Error::Conflict {
            code: "already_dispatched",
            message: "this event was dispatched already".into(),
        });
    }
    let g = entry.grid.clone();
    let worker = state.access(move |db| db.grid_worker(&g, now_ms())).await?;
    let label = entry
        .event_kind
        .as_deref()
        .and_then(EventKind::from_code)
        .map_or("事件", |k| k.label());
    let mut text = format!("【{label}·事件转工单】");
    if !entry.place.is_empty() {
        text.push_str(&entry.place);
        text.push('：');
    }
    text.push_str(&entry.detail);
    let demand = Demand {
        id: DemandId::new(),
        raised_on_visit: None,
        raised_by: caller.user(),
        raised_at_ms: now_ms(),
        category,
        text: text
            .chars()
            .take(qiaomen_protocol::validate::MAX_TEXT_CHARS)
            .collect(),
        urgency: if req.urgent {
            Urgency::Urgent
        } else {
            Urgency::Normal
        },
        status: DemandStatus::Raised,
        history: vec![],
        first_responsible: worker,
        source: Some(DemandSource::Supervisor),
        external_ref: None,
    };
    let demand_id = demand.id;
    let grid = entry.grid.clone();
    web_change(
        state,
        caller,
        household,
        "dispatch_event",
        move |scope, household_grid| {
            if !scope.may_read(household_grid) {
                return Err(Error::not_found("no such household"));
            }
            if household_grid != grid {
                return Err(Error::Conflict {
                    code: "other_grid",
                    message: "the household is not of the event's grid".into(),
                });
            }
            if !scope.supervises(household_grid, now_ms()) {
                return Err(Error::Forbidden {
                    code: "forbidden",
                    message: "only a supervisor of this grid may dispatch its events".into(),
                });
            }
            Ok(())
        },
        move |doc, author| {
            doc.edit(author, demand.raised_at_ms, |h| {
                h.demands.insert(demand.id, demand);
                Ok(())
            })
            .map_err(|_| Error::Internal)?
            .1
            .ok_or(Error::Internal)
        },
    )
    .await?;
    let (key, d, h, by) = (
        id.to_string(),
        demand_id.to_string(),
        household.to_string(),
        caller.user(),
    );
    if !state
        .access(move |db| db.set_journal_order(&key, &d, &h, by))
        .await?
    {
        // Two supervisors at once: the other's order stands; this one is written and kept
        // (nothing is lost), the entry names the first.
        tracing::warn!("an event was dispatched twice at once");
    }
    Ok(Dispatched {
        demand: demand_id.to_string(),
        household: household.to_string(),
    })
}
