//! The second ledger (双台账) for supervisors: the tracked disputes and hazards of a unit's
//! grids, one case with its detail and history and the steps the caller may take, a step (a
//! change of the caller's web device, checked by the writer's policy like a phone's; an
//! escalation writes its work order's demand in the same change), and the ledger as an XLSX or
//! CSV file. Lists come from the read model ([`crate::index`], `idx_cases`); the texts (what
//! the case is, its parties, the steps' comments) are read from the household's document.

use qiaomen_protocol::{
    calendar::Day,
    doc::HouseholdDoc,
    ids::{CaseId, HouseholdId, UserId},
    ledger::{self, Case, CaseAction, CaseState, Ledger, NewStep},
    schema::{DemandSource, NeedCategory},
    vocab::Term,
};
use serde::{Deserialize, Serialize};

use super::{Error, Result, given, households::web_change, parse_day, today, unit_scope};
use crate::{
    access::now_ms,
    http::{AppState, api::ExportFormat, auth::Caller},
    index::CaseRow,
    service::figures::{Cell, write_table},
};

/// Which cases a list holds.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CasesQuery {
    /// An org unit id (default: every grid the caller reads).
    pub unit: Option<String>,
    /// `hazard` or `dispute`; empty: both ledgers.
    #[param(value_type = String, required = false, pattern = "^(|hazard|dispute)$")]
    pub ledger: Option<String>,
    /// Only cases in this state (`open`, `assigned`, `in_hand`, `resolved`, `checked`,
    /// `escalated`); empty: every state.
    #[param(value_type = String, required = false,
        pattern = "^(|open|assigned|in_hand|resolved|checked|escalated)$")]
    pub state: Option<String>,
    /// `true`: only open cases past their deadline.
    #[param(value_type = String, required = false, pattern = "^(|true|false)$")]
    pub overdue: Option<String>,
    /// Only cases raised on or after this day (YYYY-MM-DD), and on or before `to`.
    #[param(value_type = String, required = false, format = Date)]
    pub from: Option<String>,
    #[param(value_type = String, required = false, format = Date)]
    pub to: Option<String>,
}

impl CasesQuery {
    /// The query a page's form sent: its empty dates are not given.
    pub fn from_form(mut self) -> Self {
        self.from = given(&self.from).map(str::to_string);
        self.to = given(&self.to).map(str::to_string);
        self
    }
}

/// One entry of a case's history, for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaseEntry {
    /// Vocabulary `case_action`.
    pub action: String,
    pub by: String,
    pub by_name: Option<String>,
    pub at_ms: i64,
    pub comment: String,
    pub assignee: Option<String>,
    pub assignee_name: Option<String>,
    pub due: Option<String>,
    /// An escalation's work order (a demand id).
    pub order: Option<String>,
    pub visit: Option<String>,
}

/// A case with what it says and its whole history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaseDetail {
    pub case: CaseRow,
    pub address: String,
    /// What it is.
    pub detail: String,
    /// A dispute's parties, a hazard's exact place.
    pub parties: String,
    pub raised_by_name: Option<String>,
    pub history: Vec<CaseEntry>,
    /// The steps the caller may take now (vocabulary `case_action`).
    pub may: Vec<String>,
}

/// A step on a case: `action` (vocabulary `case_action`) and what it needs: an assignee (a
/// user id or login) for `assign`, a result for `resolve`, a reason for `reopen`; `due`
/// (YYYY-MM-DD) an assignment's deadline; `category` an escalation's work-order category
/// (default `other`). `comment` is at most 2000 characters.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseStepRequest {
    #[schema(pattern = "^(assign|start|resolve|check|reopen|escalate|follow_up)$")]
    pub action: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub comment: String,
    #[schema(max_length = 64)]
    pub assignee: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
    pub due: Option<String>,
    #[schema(pattern = "^(|housing|health_care|education|elderly_care|other)$")]
    pub category: Option<String>,
}

fn no_case() -> Error {
    Error::NotFound {
        code: "not_found",
        message: "no such case".into(),
    }
}

/// The grids a list is of: `unit`'s readable grids, or every grid the caller reads.
pub(super) async fn grids_of(
    state: &AppState,
    caller: &Caller,
    unit: Option<&str>,
) -> Result<Vec<String>> {
    Ok(match unit {
        Some(u) => unit_scope(state, caller, Some(u.to_string())).await?.grids,
        None => {
            let user = caller.user();
            let scope = state.access(move |db| db.scope(user, now_ms())).await?;
            scope.read.into_iter().collect()
        }
    })
}

/// The cases of the caller's grids (or of `q.unit`'s), oldest raised first, filtered; a case
/// is listed for the grid its household is in now and for the one it was found in.
pub async fn case_list(state: &AppState, caller: &Caller, q: CasesQuery) -> Result<Vec<CaseRow>> {
    let ledger_code = match given(&q.ledger) {
        None => None,
        Some(l) => Some(
            Ledger::from_code(l)
                .ok_or_else(|| Error::invalid("ledger is hazard or dispute"))?
                .code(),
        ),
    };
    let state_code = match given(&q.state) {
        None => None,
        Some(s) => Some(
            CaseState::from_code(s)
                .ok_or_else(|| {
                    Error::invalid("state is a case state (open, assigned, in_hand, ...)")
                })?
                .code(),
        ),
    };
    let overdue = match given(&q.overdue) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid("overdue is true or false")),
    };
    // Dates are exact on the API (an empty one is not a date); a page's empty inputs are
    // dropped before they get here (`CasesQuery::from_form`).
    let from = q
        .from
        .as_deref()
        .map(|s| parse_day(s, "from"))
        .transpose()?;
    let to = q.to.as_deref().map(|s| parse_day(s, "to")).transpose()?;
    let grids = grids_of(state, caller, given(&q.unit)).await?;
    let mut rows = state.index(move |ix| ix.cases(&grids)).await?;
    let today = today();
    for r in &mut rows {
        r.overdue = overdue_on(r, today);
    }
    rows.retain(|r| {
        let raised = qiaomen_protocol::workorder::day_of(r.raised_ms);
        ledger_code.is_none_or(|l| r.ledger == l)
            && state_code.is_none_or(|s| r.state == s)
            && (!overdue || r.overdue)
            && from.is_none_or(|f| raised >= f)
            && to.is_none_or(|t| raised <= t)
    });
    Ok(rows)
}

fn overdue_on(r: &CaseRow, today: Day) -> bool {
    r.case()
        .is_some_and(|c| ledger::standing(&c).overdue_on(today))
}

/// The case `id` in a grid the caller reads (now), with the household's document.
async fn visible_case(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(CaseRow, crate::access::Scope, Vec<u8>)> {
    let id = id.parse::<CaseId>().map_err(|_| no_case())?.to_string();
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let mut row = state
        .index(move |ix| ix.case_with_id(&id))
        .await?
        .ok_or_else(no_case)?;
    if !scope.may_read(&row.grid) {
        return Err(no_case());
    }
    row.overdue = overdue_on(&row, today());
    let household: HouseholdId = row.household.parse().map_err(|_| Error::Internal)?;
    let bytes = state
        .readers
        .with(move |s| s.load_doc(household))
        .await?
        .ok_or_else(no_case)?;
    Ok((row, scope, bytes))
}

/// The case and the household's address, read from its document.
fn read_case(bytes: &[u8], id: &str) -> Option<(String, Case)> {
    let doc = HouseholdDoc::load(bytes).ok()?;
    let case = doc.case(id).ok()??;
    Some((doc.root_text("address", None).unwrap_or_default(), case))
}

/// One case the caller may see, what it says, its history and the steps the caller may take;
/// audited.
pub async fn case_detail(state: &AppState, caller: &Caller, id: &str) -> Result<CaseDetail> {
    let (row, scope, bytes) = visible_case(state, caller, id).await?;
    let key = row.case.clone();
    let (address, case) = tokio::task::spawn_blocking(move || read_case(&bytes, &key))
        .await
        .map_err(|_| Error::Internal)?
        .ok_or_else(no_case)?;
    let names = {
        let mut ids: Vec<String> = vec![case.raised_by.to_string()];
        for e in &case.history {
            ids.push(e.by.to_string());
            ids.extend(e.assignee.map(|a| a.to_string()));
        }
        state.access(move |db| db.user_names(&ids)).await?
    };
    let party = scope.party(&row.grid, now_ms());
    let standing = ledger::standing(&case);
    let may = [
        CaseAction::Assign,
        CaseAction::Start,
        CaseAction::Resolve,
        CaseAction::Check,
        CaseAction::Reopen,
        CaseAction::Escalate,
        CaseAction::FollowUp,
    ]
    .into_iter()
    .filter(|a| a.next(standing.state).is_some() && a.may(&party))
    .map(|a| a.code().to_string())
    .collect();
    super::households::record(
        state,
        caller.user(),
        None,
        "read_case",
        row.household.clone(),
        "ok",
    )
    .await?;
    let name = |u: &UserId| names.get(&u.to_string()).cloned();
    Ok(CaseDetail {
        address,
        detail: case.detail.clone(),
        parties: case.parties.clone(),
        raised_by_name: name(&case.raised_by),
        history: case
            .history
            .iter()
            .map(|e| CaseEntry {
                action: e.action.code().to_string(),
                by: e.by.to_string(),
                by_name: name(&e.by),
                at_ms: e.at_ms,
                comment: e.comment.clone(),
                assignee: e.assignee.map(|a| a.to_string()),
                assignee_name: e.assignee.as_ref().and_then(name),
                due: e.due.map(|d| d.to_string()),
                order: e.order.map(|o| o.to_string()),
                visit: e.visit.map(|v| v.to_string()),
            })
            .collect(),
        may,
        case: row,
    })
}

/// Takes a step of a case as the caller: a change of their web device, checked by the
/// writer's policy (`invalid_step` when it does not follow or lacks its data, `stale_order`
/// when the case moved on meanwhile, `not_allowed` when the caller's role may not take it).
/// An escalation becomes a new demand of the household (source: supervisor), in the change.
pub async fn take_step(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: CaseStepRequest,
) -> Result<()> {
    let action = CaseAction::from_code(req.action.trim())
        .ok_or_else(|| Error::invalid("action is a case step (assign, start, resolve, ...)"))?;
    if req.comment.chars().count() > qiaomen_protocol::validate::MAX_TEXT_CHARS {
        return Err(Error::invalid("the comment has more than 2000 characters"));
    }
    let due = given(&req.due).map(|d| parse_day(d, "due")).transpose()?;
    let category = match given(&req.category) {
        None => NeedCategory::Other,
        Some(c) => NeedCategory::from_text(c)
            .ok_or_else(|| Error::invalid("category is a demand category (housing, ...)"))?,
    };
    let assignee = match given(&req.assignee).map(str::to_string) {
        None => None,
        Some(a) => Some(
            state
                .access(move |db| db.user_by_id_or_login(&a))
                .await?
                .ok_or_else(|| Error::NotFound {
                    code: "no_such_user",
                    message: "no user with this id or login".into(),
                })?,
        ),
    };
    let (row, _, _) = visible_case(state, caller, id).await?;
    let household: HouseholdId = row.household.parse().map_err(|_| Error::Internal)?;
    let case_id: CaseId = row.case.parse().map_err(|_| Error::Internal)?;
    let comment = req.comment.trim().to_string();
    web_change(
        state,
        caller,
        household,
        "case_step",
        |scope, grid| {
            if scope.may_read(grid) {
                Ok(())
            } else {
                Err(no_case())
            }
        },
        move |doc, author| {
            let invalid = |e: String| Error::Conflict {
                code: "invalid_step",
                message: e,
            };
            let current = doc
                .case(&case_id.to_string())
                .map_err(|_| Error::Internal)?
                .ok_or_else(no_case)?;
            let at = now_ms();
            let mut step = NewStep {
                comment,
                assignee,
                due,
                ..NewStep::default()
            };
            let demand = (action == CaseAction::Escalate).then(|| {
                let d = ledger::escalation_demand(
                    &current,
                    author.user,
                    at,
                    DemandSource::Supervisor,
                    category,
                    None,
                );
                step.order = Some(d.id);
                d
            });
            doc.case_step(author, at, case_id, action, &step, demand.as_ref())
                .map_err(|e| invalid(e.to_string()))
        },
    )
    .await
}

/// The ledger header of the export.
const LEDGER_HEADER: [&str; 15] = [
    "台账",
    "类别",
    "网格",
    "门牌号",
    "地址",
    "内容",
    "当事人/具体位置",
    "发现日期",
    "状态",
    "责任人",
    "期限",
    "超期",
    "处理结果",
    "验收日期",
    "转办工单",
];

/// The ledger of a unit (the cases of [`case_list`] for `q`) as an XLSX or CSV file, one row
/// per case with what it says and where it stands, by name, with Chinese headers; audited as
/// an export. The file's name and its bytes.
pub async fn ledger_export(
    state: &AppState,
    caller: &Caller,
    q: CasesQuery,
    format: ExportFormat,
) -> Result<(String, Vec<u8>)> {
    let label = match given(&q.ledger) {
        Some("hazard") => "hazards",
        Some("dispute") => "disputes",
        _ => "cases",
    };
    let unit = given(&q.unit).map(str::to_string);
    let rows = case_list(state, caller, q).await?;
    let households: Vec<HouseholdId> = {
        let mut ids: Vec<HouseholdId> = rows
            .iter()
            .filter_map(|r| r.household.parse().ok())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    // What each case says, from its household's document, a piece of households at a time.
    let wanted: std::collections::BTreeMap<String, Vec<String>> =
        rows.iter().fold(Default::default(), |mut m, r| {
            m.entry(r.household.clone())
                .or_default()
                .push(r.case.clone());
            m
        });
    let mut texts: std::collections::HashMap<String, (String, Case)> = Default::default();
    for piece in households.chunks(crate::sql::MANY) {
        let only = piece.to_vec();
        let loaded = state.readers.with(move |s| s.load_docs(&only)).await?;
        let keys: Vec<(HouseholdId, Vec<String>)> = piece
            .iter()
            .map(|h| (*h, wanted.get(&h.to_string()).cloned().unwrap_or_default()))
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for ((_, cases), bytes) in keys.iter().zip(loaded) {
                for c in cases {
                    if let Some(found) = bytes.as_deref().and_then(|b| read_case(b, c)) {
                        out.push((c.clone(), found));
                    }
                }
            }
            out
        })
        .await
        .map_err(|_| Error::Internal)?;
        texts.extend(read);
    }
    let (units, names) = {
        let ids: Vec<String> = rows.iter().map(|r| r.assignee.clone()).collect();
        state
            .access(move |db| Ok((db.units()?, db.user_names(&ids)?)))
            .await?
    };
    let unit_name = |id: &str| {
        units
            .iter()
            .find(|u| u.id == id)
            .map_or(id.to_string(), |u| u.name.clone())
    };
    let mut table = Vec::with_capacity(rows.len());
    for r in &rows {
        let (address, case) = match texts.get(&r.case) {
            Some((a, c)) => (a.clone(), Some(c)),
            None => (String::new(), None),
        };
        let standing = case.map(ledger::standing);
        let result = case
            .and_then(|c| {
                c.history
                    .iter()
                    .rev()
                    .find(|e| e.action == CaseAction::Resolve)
            })
            .map(|e| e.comment.clone())
            .unwrap_or_default();
        let kind_label = crate::vocab::label(
            if r.ledger == "hazard" {
                "hazard_kind"
            } else {
                "dispute_kind"
            },
            &r.kind,
        )
        .unwrap_or(&r.kind)
        .to_string();
        table.push(vec![
            Cell::Text(
                crate::vocab::label("ledger", &r.ledger)
                    .unwrap_or("")
                    .to_string(),
            ),
            Cell::Text(kind_label),
            Cell::Text(unit_name(&r.grid)),
            Cell::Text(r.door_number.clone()),
            Cell::Text(address),
            Cell::Text(case.map(|c| c.detail.clone()).unwrap_or_default()),
            Cell::Text(case.map(|c| c.parties.clone()).unwrap_or_default()),
            Cell::Text(qiaomen_protocol::workorder::day_of(r.raised_ms).to_string()),
            Cell::Text(
                crate::vocab::label("case_state", &r.state)
                    .unwrap_or("")
                    .to_string(),
            ),
            Cell::Text(names.get(&r.assignee).cloned().unwrap_or_default()),
            Cell::Text(r.deadline.clone().unwrap_or_default()),
            Cell::Text(if r.overdue { "是" } else { "" }.to_string()),
            Cell::Text(result),
            Cell::Text(
                standing
                    .as_ref()
                    .and_then(|s| s.checked_ms)
                    .map(|ms| qiaomen_protocol::workorder::day_of(ms).to_string())
                    .unwrap_or_default(),
            ),
            Cell::Text(
                standing
                    .as_ref()
                    .and_then(|s| s.order)
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
            ),
        ]);
    }
    let body =
        tokio::task::spawn_blocking(move || write_table(format, "台账", &LEDGER_HEADER, &table))
            .await
            .map_err(|_| Error::Internal)??;
    let ext = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Xlsx => "xlsx",
    };
    let scope_name: String = unit
        .unwrap_or_else(|| "mine".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let file = format!("ledger-{label}-{scope_name}-{}.{ext}", today());
    super::households::record(state, caller.user(), None, "export", file.clone(), "ok").await?;
    Ok((file, body))
}
