//! Weekly task lists ([`crate::tasks`]): pushed by the command centre or a town supervisor to
//! the grids below some units, read and marked done by the grids' phones and by supervisors.

use qiaomen_protocol::calendar::Day;

use super::{Error, Result, parse_day, today, unit_scope};
use crate::{
    access::{audit::Event, now_ms},
    http::{
        AppState,
        auth::Caller,
        tasks::{DoneRequest, ListsQuery, MAX_UNITS, NewTaskList, TaskListCreated},
    },
    tasks::{Done, NewList, TaskList},
};

/// Lists are shown until 30 days after they were due.
pub fn since_default(now_ms: i64) -> Day {
    qiaomen_protocol::workorder::day_of(now_ms).add_days(-30)
}

/// Pushes a list as `caller` to the grids below `req.units` they dispatch for (`forbidden`
/// when there is none); it reaches the grids' phones at their next sync. Audited.
pub async fn push_list(
    state: &AppState,
    caller: &Caller,
    req: NewTaskList,
) -> Result<TaskListCreated> {
    if req.units.len() > MAX_UNITS {
        return Err(Error::Invalid {
            code: "too_many_units",
            message: format!("at most {MAX_UNITS} units per task list"),
        });
    }
    let today = today();
    let monday = today.add_days(-i64::from(today.0.weekday().number_days_from_monday()));
    let week_start = match &req.week_start {
        Some(s) => parse_day(s, "week_start")?,
        None => monday,
    };
    let due = match &req.due {
        Some(s) => parse_day(s, "due")?,
        None => week_start.add_days(6),
    };
    let units = if req.units.is_empty() {
        vec![None]
    } else {
        let mut units = req.units.clone();
        units.sort();
        units.dedup();
        units.into_iter().map(Some).collect()
    };
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let mut grids = Vec::new();
    for unit in units {
        for g in unit_scope(state, caller, unit).await?.grids {
            if scope.party(&g, now_ms()).dispatcher && !grids.contains(&g) {
                grids.push(g);
            }
        }
    }
    if grids.is_empty() {
        return Err(Error::Forbidden {
            code: "forbidden",
            message: "only the command centre or a town supervisor pushes task lists".into(),
        });
    }
    let (title, items, by) = (req.title, req.items, caller.user());
    let targets = grids.clone();
    let id = state
        .access(move |db| {
            let id = db.push_task_list(&NewList {
                title: &title,
                week_start,
                due,
                items: &items,
                grids: &targets,
                by,
            })?;
            db.audit(Event {
                user: Some(&by.to_string()),
                device: None,
                action: "push_task_list",
                target: Some(&id),
                outcome: "ok",
            })?;
            Ok(id)
        })
        .await?;
    Ok(TaskListCreated { id, grids })
}

/// Whether `caller` may push lists (the command centre or a town supervisor).
pub async fn may_push(state: &AppState, caller: &Caller) -> Result<bool> {
    let user = caller.user();
    state
        .access(move |db| {
            let roles = db.scope(user, now_ms())?.roles;
            Ok(roles.contains(&crate::access::Role::CommandCentre)
                || roles.contains(&crate::access::Role::TownSupervisor))
        })
        .await
}

/// The task lists of the caller's grids (a phone: its user's grids), with what each grid has
/// done.
pub async fn task_lists(state: &AppState, caller: &Caller, q: ListsQuery) -> Result<Vec<TaskList>> {
    let since = match q.since.as_deref() {
        Some(s) => parse_day(s, "since")?,
        None => since_default(now_ms()),
    };
    let user = caller.user();
    state
        .access(move |db| db.task_lists(&db.scope(user, now_ms())?.read, since))
        .await
}

/// One list, with its grids the caller may read.
pub async fn task_list(state: &AppState, caller: &Caller, id: String) -> Result<TaskList> {
    let user = caller.user();
    state
        .access(move |db| db.task_list(&id, &db.scope(user, now_ms())?.read))
        .await?
        .ok_or_else(|| Error::not_found("no such task list"))
}

/// Records that a task of list `id` was done in a grid the caller writes; the first report
/// wins, a repeat answers with the stored one. Audited.
pub async fn mark_done(
    state: &AppState,
    caller: &Caller,
    id: String,
    req: DoneRequest,
) -> Result<Done> {
    let user = caller.user();
    let device = match &caller {
        Caller::Device(d) => Some(d.device),
        Caller::Session(_) => None,
    };
    // The phone checked the report by the same rule before keeping it.
    if let Err(e) = qiaomen_protocol::validate::task_report(&req.evidence, &req.photos) {
        return Err(Error::Invalid {
            code: "invalid_report",
            message: format!("任务报告不符合规则 ({} {})", e.field.code(), e.rule.code()),
        });
    }
    state
        .access(move |db| {
            let now = now_ms();
            if !db.scope(user, now)?.may_write(&req.grid, now) {
                return Err(crate::access::AccessError::NotFound("task of this grid"));
            }
            let done = db.complete_task(
                &id,
                &crate::tasks::Report {
                    item: req.item,
                    grid: &req.grid,
                    by: (user, device),
                    done_ms: req.done_ms.unwrap_or(now),
                    evidence: &req.evidence,
                    photos: &req.photos,
                },
            )?;
            db.audit(Event {
                user: Some(&user.to_string()),
                device: device.map(|d| d.to_string()).as_deref(),
                action: "task_done",
                target: Some(&id),
                outcome: "ok",
            })?;
            Ok(done)
        })
        .await
}
