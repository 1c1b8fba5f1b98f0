//! Households: the view of one (scope-checked, audited), a grid's list and export, a
//! supervisor's review, move and conflict settling, and the org the caller sees. Every edit is
//! a change of the caller's web device, checked by the writer's policy like a phone's
//! (`web_change`). A household outside the caller's scope is `not_found`, exactly like one
//! that does not exist, so ids cannot be probed.

use qiaomen_protocol::{
    doc::{Author, HouseholdDoc, actor_for},
    ids::{GridId, HouseholdId, ReviewId, UserId, VisitId},
    present,
    review::{ReviewState, heads_hex, known_version, open_tasks, review_state},
    schema::{Household, Review, ReviewDecision, Visit},
    vocab::Term,
    wire::{DocChanges, RejectCode},
};

use super::{Error, Result};
use crate::{
    access::{audit::Event, now_ms},
    http::{
        AppState,
        api::{
            ConflictValue, ConflictView, DemandBrief, ExportFormat, FieldProvenance, FieldWriter,
            GpsView, HouseholdRow, HouseholdView, ItemView, MemberView, OrgUnit, PersonRef,
            ResolveRequest, ReviewRequest, ReviewView, VisitView, Writer,
        },
        auth::Caller,
    },
};

/// Records an audit event (ids and action names only).
pub(crate) async fn record(
    state: &AppState,
    user: UserId,
    device: Option<String>,
    action: &'static str,
    target: String,
    outcome: &'static str,
) -> Result<()> {
    state
        .access(move |db| {
            db.audit(Event {
                user: Some(&user.to_string()),
                device: device.as_deref(),
                action,
                target: Some(&target),
                outcome,
            })
        })
        .await
}

/// Only the last 4 characters of an ID number, the rest `*` (as many as there were).
fn last_four(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let keep = chars.len().saturating_sub(4);
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep || chars.len() <= 4 {
                '*'
            } else {
                *c
            }
        })
        .collect()
}

/// A concurrent value as a conflict view shows it: ID numbers with their last 4 characters
/// only, phone numbers masked like everywhere else (`138****5678`); other fields as they are.
fn masked_conflict_value(path: &[String], value: serde_json::Value) -> serde_json::Value {
    let field = path.last().map(String::as_str).unwrap_or("");
    let mask: fn(&str) -> String = match field {
        "id_number" => last_four,
        "phone" => |s| qiaomen_protocol::schema::Sensitive::new(s).masked(),
        _ => return value,
    };
    match value {
        serde_json::Value::String(s) => serde_json::Value::String(mask(&s)),
        serde_json::Value::Null => serde_json::Value::Null,
        // Not a string where a number is kept: nothing of it is shown.
        _ => serde_json::Value::String("****".into()),
    }
}

/// A spreadsheet cell that cannot be read as a formula: a leading `=`, `+`, `-`, `@`, TAB
/// or CR gets a `'` before it.
pub(crate) fn inert_cell(c: &str) -> std::borrow::Cow<'_, str> {
    if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{c}").into()
    } else {
        c.into()
    }
}

/// `not_found` for a household missing or outside the caller's scope (the two look alike).
pub(super) fn not_found() -> Error {
    Error::NotFound {
        code: "not_found",
        message: "no such household".into(),
    }
}

/// The household view for `caller` (scope-checked, audited): the API's and the pages'.
pub async fn household_view(state: &AppState, caller: &Caller, id: &str) -> Result<HouseholdView> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let user = caller.user();
    let device = match &caller {
        Caller::Device(d) => Some(d.device.to_string()),
        Caller::Session(_) => None,
    };
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let stored = state
        .readers
        .with(move |s| Ok((s.doc_grid(id)?, s.load_doc(id)?)))
        .await?;
    let allowed = matches!(&stored, (Some(grid), Some(_)) if scope.may_read(grid));
    record(
        state,
        user,
        device,
        "household_read",
        id.to_string(),
        if allowed { "ok" } else { "denied" },
    )
    .await?;
    let (Some(grid), Some(bytes)) = stored else {
        return Err(not_found());
    };
    if !allowed {
        return Err(not_found());
    }
    let view = tokio::task::spawn_blocking(move || -> Option<HouseholdView> {
        let _named = crate::panics::household(id);
        let mut doc = HouseholdDoc::load(&bytes).ok()?;
        let h = doc.household().ok()?;
        Some(view_of(&mut doc, &h, grid))
    })
    .await
    .map_err(|_| Error::Internal)?
    .ok_or(Error::Internal)?;
    Ok(view)
}

/// The household view of a loaded document: the record, each visit whole, reviews with
/// what changed since, conflicts and who wrote each field, fields named in words.
fn view_of(doc: &mut HouseholdDoc, h: &Household, grid: String) -> HouseholdView {
    let origins = qiaomen_protocol::conflicts::field_origins(doc).unwrap_or_default();
    let reviews = h
        .reviews
        .values()
        .map(|r| {
            let state = review_state(doc, h, r);
            let changes = if state == ReviewState::Current {
                Some(Vec::new())
            } else {
                known_version(doc, &r.heads)
                    .and_then(|heads| doc.household_at(&heads).ok())
                    .map(|then| {
                        present::visit_changes(
                            then.visits.get(&r.visit).map(|v| (v, &then)),
                            h.visits.get(&r.visit).map(|v| (v, h)),
                        )
                    })
            };
            ReviewView {
                id: r.id.to_string(),
                visit: r.visit.to_string(),
                decision: r.decision,
                comment: r.comment.clone(),
                reviewer: r.reviewer.to_string(),
                at_ms: r.at_ms,
                heads: r.heads.clone(),
                state,
                changes,
            }
        })
        .collect();
    let conflicts = qiaomen_protocol::conflicts::conflicts(doc)
        .unwrap_or_default()
        .into_iter()
        .map(|c| ConflictView {
            label: present::field_label(&c.path, h),
            values: c
                .values
                .into_iter()
                .map(|v| ConflictValue {
                    value: masked_conflict_value(&c.path, v.value),
                    op: v.op,
                    user: v.author.map(|a| a.user.to_string()),
                    device: v.author.map(|a| a.device.to_string()),
                    at_ms: v.at_ms,
                })
                .collect(),
            path: c.path,
        })
        .collect();
    let open_tasks = open_tasks(doc, h)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.visit.to_string())
        .collect();
    HouseholdView {
        id: h.id.to_string(),
        grid,
        address: h.address.clone(),
        door_number: h.door_number.clone(),
        status: h.status.code().to_string(),
        members: h.members.len(),
        key_groups: h.tags.iter().map(|t| t.group.code().to_string()).collect(),
        people: h
            .members
            .values()
            .map(|m| MemberView {
                id: m.id.to_string(),
                name: m.name.clone(),
                relation: m.relation.code().to_string(),
                birth_date: m.birth_date.map(|d| d.to_string()),
                id_number: m.id_number.as_ref().map(|n| last_four(n.reveal())),
                key_groups: m.tags.iter().map(|t| t.group.code().to_string()).collect(),
            })
            .collect(),
        visits: h
            .visits
            .values()
            .map(|v| visit_view(v, h, &origins))
            .collect(),
        heads: heads_hex(doc),
        reviews,
        open_tasks,
        conflicts,
        provenance: origins
            .into_iter()
            .map(|o| FieldProvenance {
                label: present::field_label(&o.path, h),
                path: o.path,
                writers: o
                    .writers
                    .into_iter()
                    .map(|(author, at_ms)| Writer {
                        user: author.map(|a| a.user.to_string()),
                        device: author.map(|a| a.device.to_string()),
                        at_ms,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn visit_view(
    v: &Visit,
    h: &Household,
    origins: &[qiaomen_protocol::conflicts::FieldOrigin],
) -> VisitView {
    let id = v.id.to_string();
    let item = |kind: &str, detail: &str| ItemView {
        kind: kind.to_string(),
        detail: detail.to_string(),
    };
    // The writers of the visit's fields: the first path element under the visit is the
    // line's field (`needs/0/detail` is `needs`).
    let mut recorded_by: Vec<FieldWriter> = Vec::new();
    for o in origins {
        let [top, vid, field, ..] = o.path.as_slice() else {
            continue;
        };
        if top != "visits" || *vid != id {
            continue;
        }
        for (author, at_ms) in &o.writers {
            let w = FieldWriter {
                field: field.clone(),
                user: author.map(|a| a.user.to_string()),
                device: author.map(|a| a.device.to_string()),
                at_ms: *at_ms,
            };
            let seen = recorded_by
                .iter()
                .any(|x| x.field == w.field && x.user == w.user && x.device == w.device);
            if !seen {
                recorded_by.push(w);
            }
        }
    }
    VisitView {
        id,
        visit_day: v.visit_day.to_string(),
        worker: v.worker.to_string(),
        device: v.device.to_string(),
        outcome: v.outcome.code().to_string(),
        started_at_ms: v.started_at_ms,
        ended_at_ms: v.ended_at_ms,
        gps: v.gps.as_ref().map(|g| GpsView {
            lat: g.lat,
            lon: g.lon,
            accuracy_m: g.accuracy_m,
        }),
        people_met: v
            .people_met
            .iter()
            .map(|m| PersonRef {
                id: m.to_string(),
                name: h
                    .members
                    .get(m)
                    .map_or_else(|| "已删除的成员".to_string(), |x| x.name.clone()),
            })
            .collect(),
        needs: v
            .needs
            .iter()
            .map(|n| item(n.category.code(), &n.detail))
            .collect(),
        disputes: v
            .disputes
            .iter()
            .map(|d| item(d.kind.code(), &d.detail))
            .collect(),
        hazards: v
            .hazards
            .iter()
            .map(|d| item(d.kind.code(), &d.detail))
            .collect(),
        publicity: v.publicity.iter().map(|p| p.code().to_string()).collect(),
        note: v.note.as_str().to_string(),
        demands: v
            .demands_raised
            .iter()
            .filter_map(|d| h.demands.get(d))
            .map(|d| DemandBrief {
                id: d.id.to_string(),
                category: d.category.code().to_string(),
                text: d.text.clone(),
                urgency: d.urgency.code().to_string(),
                status: d.status.code().to_string(),
            })
            .collect(),
        lines: present::visit_lines(v, h),
        recorded_by,
    }
}

/// Stores a supervisor's review (the API's and the pages').
pub async fn add_review(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: ReviewRequest,
) -> Result<ReviewId> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let bad = |message: &str| Error::Invalid {
        code: "invalid",
        message: message.into(),
    };
    let visit: VisitId = req
        .visit_id
        .parse()
        .map_err(|_| bad("visit_id is not an id"))?;
    // The field rule of SYNC-v1 §13.8 (`review_comment`), told before the change is made.
    if req.comment.chars().count() > qiaomen_protocol::validate::MAX_TEXT_CHARS {
        return Err(bad("the comment has more than 2000 characters"));
    }
    let heads = req.heads;
    let (comment, decision) = (req.comment, ReviewDecision::from(req.decision));
    let review_id = ReviewId::new();
    supervisor_change(state, caller, id, "review", move |doc, author| {
        let household = doc.household().map_err(|_| Error::Internal)?;
        if !household.visits.contains_key(&visit) {
            return Err(Error::NotFound {
                code: "not_found",
                message: "no such visit in this household".into(),
            });
        }
        if known_version(doc, &heads).is_none() {
            return Err(Error::Conflict {
                code: "unknown_version",
                message: "heads must name a version of this household the server has".into(),
            });
        }
        let review = Review {
            id: review_id,
            visit,
            decision,
            comment,
            reviewer: author.user,
            device: author.device,
            at_ms: now_ms(),
            heads,
        };
        doc.add_review(author, now_ms(), &review)
            .map_err(|_| Error::Internal)
    })
    .await?;
    Ok(review_id)
}

/// Writes a supervisor's edit of a household as a change of their web device.
async fn supervisor_change(
    state: &AppState,
    caller: &Caller,
    id: HouseholdId,
    action: &'static str,
    build: impl FnOnce(&mut HouseholdDoc, &Author) -> Result<qiaomen_protocol::ChangeHash>
    + Send
    + 'static,
) -> Result<()> {
    web_change(
        state,
        caller,
        id,
        action,
        |scope, grid| {
            if !scope.may_read(grid) {
                return Err(not_found());
            }
            if !scope.supervises(grid, now_ms()) {
                return Err(Error::Forbidden {
                    code: "forbidden",
                    message: "only a supervisor of this grid may do this".into(),
                });
            }
            Ok(())
        },
        build,
    )
    .await
}

/// Writes an edit made on a web page or through the API as a change of the caller's web
/// device, checked by the same writer and policy as a phone's. `allowed` sees the caller's
/// scope and the household's grid first (404 for what they may not see).
pub(crate) async fn web_change(
    state: &AppState,
    caller: &Caller,
    id: HouseholdId,
    action: &'static str,
    allowed: impl FnOnce(&crate::access::Scope, &str) -> Result<()>,
    build: impl FnOnce(&mut HouseholdDoc, &Author) -> Result<qiaomen_protocol::ChangeHash>
    + Send
    + 'static,
) -> Result<()> {
    let user = caller.user();
    let (scope, device) = state
        .access(move |db| Ok((db.scope(user, now_ms())?, db.web_device(user)?)))
        .await?;
    write_built(
        state,
        Author { user, device },
        scope,
        id,
        action,
        allowed,
        build,
    )
    .await
}

/// Writes a change the server builds as `author` (a person's web device, or a service such
/// as the service cards', [`super::cards`]), judged by the writer and policy like a phone's
/// with `scope` as the author's rights; recorded in the audit log as `action`.
pub(crate) async fn write_built(
    state: &AppState,
    author: Author,
    scope: crate::access::Scope,
    id: HouseholdId,
    action: &'static str,
    allowed: impl FnOnce(&crate::access::Scope, &str) -> Result<()>,
    build: impl FnOnce(&mut HouseholdDoc, &Author) -> Result<qiaomen_protocol::ChangeHash>
    + Send
    + 'static,
) -> Result<()> {
    let Author { user, device } = author;
    let (grid, bytes) = match state
        .readers
        .with(move |s| Ok((s.doc_grid(id)?, s.load_doc(id)?)))
        .await?
    {
        (Some(g), Some(b)) => (g, b),
        _ => return Err(not_found()),
    };
    allowed(&scope, &grid)?;
    let change = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut doc = HouseholdDoc::load(&bytes).map_err(|_| Error::Internal)?;
        doc.set_actor(actor_for(author.device));
        let hash = build(&mut doc, &author)?;
        doc.change_bytes(&hash).ok_or(Error::Internal)
    })
    .await
    .map_err(|_| Error::Internal)??;
    let principal = std::sync::Arc::new(crate::access::policy::Principal {
        user,
        device,
        scope,
        server_built: true,
        demand_ids: Some(state.demand_ids.clone()),
        // Built here, stamped with the server's clock.
        clock_ok: Some(true),
    });
    let outcome = state
        .writer
        .submit(crate::ingest::Upload {
            principal: Some(principal),
            docs: vec![DocChanges {
                id,
                changes: vec![serde_bytes::ByteBuf::from(change)],
                whole: None,
            }],
            packing: None,
        })
        .await
        .map_err(|_| Error::Busy)?;
    let refused = outcome.rejected.first().map(|r| r.code);
    record(
        state,
        user,
        Some(device.to_string()),
        action,
        id.to_string(),
        if refused.is_some() { "refused" } else { "ok" },
    )
    .await?;
    if let Some(code) = refused {
        return Err(match code {
            RejectCode::StaleOrder => Error::Conflict {
                code: "stale_order",
                message: "the work order moved on meanwhile; read it again".into(),
            },
            RejectCode::NotAllowed | RejectCode::OutOfScope => Error::Forbidden {
                code: "not_allowed",
                message: "the caller's role may not do this".into(),
            },
            RejectCode::Quarantined => Error::Busy,
            code => Error::Forbidden {
                code: "refused",
                message: format!("the change was refused: {}", code.name()),
            },
        });
    }
    Ok(())
}

/// Moves a household to `to` as the caller (the API's and the pages').
pub async fn move_household(state: &AppState, caller: &Caller, id: &str, to: String) -> Result<()> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let target = to.clone();
    let kind = if to.len() > 64 {
        None
    } else {
        state.access(move |db| db.unit_kind_of(&target)).await?
    };
    if kind != Some(crate::access::org::UnitKind::Grid) {
        return Err(Error::NotFound {
            code: "no_such_grid",
            message: "no such grid to move to".into(),
        });
    }
    let now = now_ms();
    let target = GridId::new(&to);
    web_change(
        state,
        caller,
        id,
        "household_move",
        move |scope, grid| {
            if !scope.may_read(grid) {
                Err(not_found())
            } else if grid == to {
                Err(Error::Conflict {
                    code: "same_grid",
                    message: "the household is in this grid already".into(),
                })
            } else if !(scope.supervises(grid, now) && scope.supervises(&to, now)) {
                Err(Error::Forbidden {
                    code: "not_allowed",
                    message: "only a supervisor of both grids may move a household".into(),
                })
            } else {
                Ok(())
            }
        },
        move |doc, author| {
            doc.edit(author, now, |h| {
                h.grid = target;
                Ok(())
            })
            .map_err(|_| Error::Internal)?
            .1
            .ok_or(Error::Internal)
        },
    )
    .await
}

/// Settles a conflict as the caller (the API's and the pages').
pub async fn resolve_conflict(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: ResolveRequest,
) -> Result<()> {
    let Ok(id) = id.parse::<HouseholdId>() else {
        return Err(not_found());
    };
    let (path, resolution) = match req {
        ResolveRequest::Choose { path, op } => {
            (path, qiaomen_protocol::conflicts::Resolution::Choose(op))
        }
        ResolveRequest::Set { path, value } => {
            (path, qiaomen_protocol::conflicts::Resolution::Set(value))
        }
    };
    supervisor_change(state, caller, id, "resolve_conflict", move |doc, author| {
        qiaomen_protocol::conflicts::resolve(doc, author, now_ms(), &path, resolution).map_err(
            |e| match e {
                qiaomen_protocol::DocError::NotFound { .. } => Error::NotFound {
                    code: "not_found",
                    message: "no such field or value".into(),
                },
                _ => Error::Invalid {
                    code: "invalid",
                    message: "the value does not fit the record".into(),
                },
            },
        )
    })
    .await?;
    Ok(())
}

/// The households among `docs` that `needle` (lower-case; empty: all) matches by door
/// number, address, a member's name or a key group, by door number.
pub(crate) fn matching_households(
    docs: Vec<(HouseholdId, Vec<u8>)>,
    needle: &str,
) -> Vec<qiaomen_protocol::schema::Household> {
    let mut found: Vec<_> = docs
        .into_iter()
        .filter_map(|(_, bytes)| HouseholdDoc::load(&bytes).ok()?.household().ok())
        .filter(|h| {
            needle.is_empty()
                || h.door_number.to_lowercase().contains(needle)
                || h.address.to_lowercase().contains(needle)
                || h.members
                    .values()
                    .any(|m| m.name.to_lowercase().contains(needle))
                // A key group by its label (独居) or its code (elderly_alone).
                || h.tags.iter().any(|t| {
                    t.group.label().contains(needle) || t.group.code().contains(needle)
                })
        })
        .collect();
    found.sort_by(|a, b| a.door_number.cmp(&b.door_number).then(a.id.cmp(&b.id)));
    found
}

fn key_groups(h: &qiaomen_protocol::schema::Household) -> Vec<String> {
    h.tags.iter().map(|t| t.group.code().to_string()).collect()
}

/// The stored documents of a grid the caller may read (else the same 404 as a missing grid).
pub(crate) async fn grid_documents(
    state: &AppState,
    caller: &Caller,
    grid: &str,
) -> Result<Vec<(HouseholdId, Vec<u8>)>> {
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    if !scope.may_read(grid) {
        return Err(Error::NotFound {
            code: "not_found",
            message: "no such grid".into(),
        });
    }
    let g = grid.to_string();
    state.readers.with(move |s| s.grid_docs(&g)).await
}

/// A grid's households matching `q`, for `caller` (scope-checked, audited).
pub async fn list_households(
    state: &AppState,
    caller: &Caller,
    grid: String,
    q: Option<String>,
) -> Result<Vec<HouseholdRow>> {
    let user = caller.user();
    let docs = grid_documents(state, caller, &grid).await?;
    let needle = q.unwrap_or_default().trim().to_lowercase();
    let rows = tokio::task::spawn_blocking(move || {
        matching_households(docs, &needle)
            .into_iter()
            .map(|h| HouseholdRow {
                id: h.id.to_string(),
                key_groups: key_groups(&h),
                door_number: h.door_number,
                address: h.address,
                status: h.status.code().to_string(),
                members: h.members.len(),
                visits: h.visits.len(),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| Error::Internal)?;
    record(state, user, None, "grid_list", grid, "ok").await?;
    Ok(rows)
}

/// The units `caller` may see, parents first, with household counts.
pub async fn org_units(state: &AppState, caller: &Caller) -> Result<Vec<OrgUnit>> {
    let user = caller.user();
    let units = state
        .access(move |db| db.visible_units(user, now_ms()))
        .await?;
    let counts: std::collections::HashMap<String, u64> = state
        .readers
        .with(|s| s.grid_counts())
        .await?
        .into_iter()
        .collect();
    Ok(units
        .into_iter()
        .map(|unit| OrgUnit {
            households: if unit.kind == crate::access::org::UnitKind::Grid {
                counts.get(&unit.id).copied().unwrap_or(0)
            } else {
                0
            },
            unit,
        })
        .collect())
}

const EXPORT_HEADER: [&str; 9] = [
    "户编号",
    "门牌号",
    "地址",
    "状态",
    "重点人群",
    "成员数",
    "走访次数",
    "最近走访日",
    // Links to the photos (relative: the server's public address is not known to it).
    "照片",
];

/// A grid's household list (`q` as in [`list_households`]) as a CSV (UTF-8 with a byte-order
/// mark) or XLSX file, for `caller` (scope-checked, audited as an export).
pub async fn grid_export(
    state: &AppState,
    caller: &Caller,
    grid: &str,
    q: Option<String>,
    format: ExportFormat,
) -> Result<Vec<u8>> {
    let user = caller.user();
    let docs = grid_documents(state, caller, grid).await?;
    let of_grid = grid.to_string();
    let mut photos: std::collections::HashMap<HouseholdId, Vec<String>> = Default::default();
    for p in state.index(move |ix| ix.grid_photos(&of_grid)).await? {
        photos
            .entry(p.household)
            .or_default()
            .push(format!("/photos/{}", p.hash));
    }
    let needle = q.unwrap_or_default().trim().to_lowercase();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Error> {
        let rows: Vec<[String; 9]> = matching_households(docs, &needle)
            .into_iter()
            .map(|h| {
                [
                    h.id.to_string(),
                    h.door_number.clone(),
                    h.address.clone(),
                    h.status.label().to_string(),
                    h.tags
                        .iter()
                        .map(|t| t.group.label())
                        .collect::<Vec<_>>()
                        .join("、"),
                    h.members.len().to_string(),
                    h.visits.len().to_string(),
                    h.visits
                        .values()
                        .map(|v| v.visit_day.to_string())
                        .max()
                        .unwrap_or_default(),
                    photos.get(&h.id).map(|p| p.join("\n")).unwrap_or_default(),
                ]
            })
            .collect();
        if format == ExportFormat::Csv {
            let mut out = "\u{feff}".to_string();
            for row in std::iter::once(EXPORT_HEADER.map(String::from)).chain(rows) {
                let cells: Vec<String> = row
                    .iter()
                    .map(|c| {
                        // Quote every cell; a leading =,+,-,@,TAB,CR would be a formula in
                        // a spreadsheet.
                        format!("\"{}\"", inert_cell(c).replace('"', "\"\""))
                    })
                    .collect();
                out.push_str(&cells.join(","));
                out.push_str("\r\n");
            }
            Ok(out.into_bytes())
        } else {
            let mut book = rust_xlsxwriter::Workbook::new();
            let sheet = book.add_worksheet();
            let xl = |_| Error::Internal;
            for (c, h) in EXPORT_HEADER.iter().enumerate() {
                sheet.write_string(0, c as u16, *h).map_err(xl)?;
            }
            for (r, row) in rows.iter().enumerate() {
                for (c, cell) in row.iter().enumerate() {
                    sheet
                        .write_string(r as u32 + 1, c as u16, cell.as_str())
                        .map_err(xl)?;
                }
            }
            book.save_to_buffer().map_err(xl)
        }
    })
    .await
    .map_err(|_| Error::Internal)??;
    let ext = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Xlsx => "xlsx",
    };
    record(state, user, None, "export", format!("{grid}.{ext}"), "ok").await?;
    Ok(body)
}
