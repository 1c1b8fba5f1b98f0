//! Events and work logs (SYNC-v1 §13.12) for supervisors: the entries of a unit's grids over a
//! period, an event tracked as a case of the second ledger, and an event dispatched as a work order — a demand of a household of the event's
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

impl JournalQuery {
    /// The query a page's form sent: its empty dates are not given.
    pub fn from_form(mut self) -> Self {
        self.from = given(&self.from).map(str::to_string);
        self.to = given(&self.to).map(str::to_string);
        self
    }
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
    /// A demand category (`housing`, `health_care`, ...); default `other`.
    #[serde(default)]
    #[schema(pattern = "^(|housing|health_care|education|elderly_care|other)$")]
    pub category: Option<String>,
    #[serde(default)]
    pub urgent: bool,
}

/// An event tracked in the second ledger (双台账) as a case of a household of its grid.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct TrackRequest {
    /// The household of the event's grid the case is of (the door nearest the event).
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub household: String,
    /// `hazard` or `dispute`.
    #[schema(pattern = "^(hazard|dispute)$")]
    pub ledger: String,
    /// A hazard's kind (vocabulary `hazard_kind`) or a dispute's (`dispute_kind`).
    #[schema(
        pattern = "^(fire|building|electrical|flood|gas|other|neighbours|family|land|labour)$"
    )]
    pub kind: String,
    /// The last day (YYYY-MM-DD) it may stay open.
    #[serde(default)]
    #[schema(format = Date)]
    pub due: Option<String>,
}

/// The case an event became.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Tracked {
    pub case: String,
    pub household: String,
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
    let to = match q.to.as_deref() {
        Some(t) => parse_day(t, "to")?,
        None => today(),
    };
    let from = match q.from.as_deref() {
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

/// The household a request names.
fn household_id(id: &str) -> Result<HouseholdId> {
    id.trim()
        .parse()
        .map_err(|_| Error::invalid("household is a household id"))
}

/// The event `id` the caller reads (a work log is `not_an_event`).
async fn visible_event(state: &AppState, caller: &Caller, id: &str) -> Result<JournalRow> {
    let entry = visible_entry(state, caller, id).await?;
    if entry.kind != EntryKind::Event.code() {
        return Err(Error::Conflict {
            code: "not_an_event",
            message: "only an event can be dispatched or tracked".into(),
        });
    }
    Ok(entry)
}

/// Whether a supervisor may write to a household of `household_grid` for an event of `grid`.
fn of_the_events_grid(
    scope: &crate::access::Scope,
    household_grid: &str,
    grid: &str,
) -> Result<()> {
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
            message: "only a supervisor of this grid may dispatch or track its events".into(),
        });
    }
    Ok(())
}

/// Tracks event `id` as a case of the second ledger, of `req.household` (of the event's
/// grid), raised by the supervisor: what it is is the event's detail, its parties or place the
/// event's place. Only a supervisor of the grid may, once per event.
pub async fn track(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: TrackRequest,
) -> Result<Tracked> {
    use qiaomen_protocol::{
        ids::CaseId,
        ledger::{Case, CaseKind},
        schema::{DisputeKind, HazardKind},
    };
    let kind = match req.ledger.trim() {
        "hazard" => CaseKind::Hazard {
            kind: HazardKind::from_code(req.kind.trim())
                .ok_or_else(|| Error::invalid("kind is a hazard kind (fire, electrical, ...)"))?,
        },
        "dispute" => CaseKind::Dispute {
            kind: DisputeKind::from_code(req.kind.trim())
                .ok_or_else(|| Error::invalid("kind is a dispute kind (neighbours, land, ...)"))?,
        },
        _ => return Err(Error::invalid("ledger is hazard or dispute")),
    };
    let due = given(&req.due).map(|d| parse_day(d, "due")).transpose()?;
    let household = household_id(&req.household)?;
    let entry = visible_event(state, caller, id).await?;
    if entry.case.is_some() {
        return Err(Error::Conflict {
            code: "already_tracked",
            message: "this event is in the ledger already".into(),
        });
    }
    let case_id = CaseId::new();
    let grid = entry.grid.clone();
    let (detail, parties) = (entry.detail.clone(), entry.place.clone());
    web_change(
        state,
        caller,
        household,
        "track_event",
        move |scope, household_grid| of_the_events_grid(scope, household_grid, &grid),
        move |doc, author| {
            let at = now_ms();
            let case = Case {
                id: case_id,
                kind,
                raised_on_visit: None,
                item: None,
                raised_by: author.user,
                device: author.device,
                raised_at_ms: at,
                detail,
                parties,
                due,
                history: vec![],
            };
            doc.raise_case(author, at, &case)
                .map_err(|e| Error::Conflict {
                    code: "invalid_case",
                    message: e.to_string(),
                })
        },
    )
    .await?;
    let (key, c, h) = (id.to_string(), case_id.to_string(), household.to_string());
    if !state
        .access(move |db| db.set_journal_case(&key, &c, &h))
        .await?
    {
        tracing::warn!("an event was tracked twice at once");
    }
    Ok(Tracked {
        case: case_id.to_string(),
        household: household.to_string(),
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
    let household = household_id(&req.household)?;
    let entry = visible_event(state, caller, id).await?;
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
        move |scope, household_grid| of_the_events_grid(scope, household_grid, &grid),
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
