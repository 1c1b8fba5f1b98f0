//! The supervisors' web pages, in Chinese, rendered on the server (minijinja templates in
//! `server/templates/`, HTML-escaped). No JavaScript and no front-end build: the pages work on
//! the old office PCs of a township, and every page is a view of the same service functions
//! the JSON API calls ([`crate::service`]: `households::household_view`,
//! `households::list_households`, `households::add_review`, ...), so scope checks and audit
//! are the API's.
//!
//! A page needs a session (the `qiaomen_session` cookie set by the login form, `Secure` and
//! `__Host-qiaomen_session` over TLS); without one it redirects to `/login`. Forms post back
//! and redirect (post/redirect/get). Another site cannot make a supervisor's browser post
//! here: the cookie is `SameSite=Strict`, and the edge refuses a POST whose `Origin` (or
//! `Referer`) is another site's, or a signed-in POST that names neither
//! ([`super::edge::check_origin`]). Pages are never cached or framed
//! ([`super::edge::security_headers`]).

use std::sync::OnceLock;

use axum::{
    Form,
    extract::{FromRequestParts, Path, Query, State},
    http::{StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Redirect, Response},
};
use minijinja::{Environment, context};
use qiaomen_protocol::{schema::ReviewDecision, vocab::Term};

use crate::{
    charts,
    service::{self, devices, figures, households, orders, tasks},
};
use serde::Deserialize;

use super::{
    ApiError, AppState, api,
    auth::{Caller, ClientAddr, LoginRequest, SessionAuth},
    reports, workflow,
};

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("login.html", include_str!("../../templates/login.html")),
            ("org.html", include_str!("../../templates/org.html")),
            ("grid.html", include_str!("../../templates/grid.html")),
            (
                "household.html",
                include_str!("../../templates/household.html"),
            ),
            ("error.html", include_str!("../../templates/error.html")),
            (
                "coverage.html",
                include_str!("../../templates/coverage.html"),
            ),
            ("orders.html", include_str!("../../templates/orders.html")),
            ("order.html", include_str!("../../templates/order.html")),
            ("photo.html", include_str!("../../templates/photo.html")),
            (
                "task_photo.html",
                include_str!("../../templates/task_photo.html"),
            ),
            ("stats.html", include_str!("../../templates/stats.html")),
            ("tasks.html", include_str!("../../templates/tasks.html")),
            ("devices.html", include_str!("../../templates/devices.html")),
            ("admin.html", include_str!("../../templates/admin.html")),
            ("audit.html", include_str!("../../templates/audit.html")),
            ("refused.html", include_str!("../../templates/refused.html")),
            ("import.html", include_str!("../../templates/import.html")),
            ("phones.html", include_str!("../../templates/phones.html")),
            ("map.html", include_str!("../../templates/map.html")),
            ("report.html", include_str!("../../templates/report.html")),
            ("ledger.html", include_str!("../../templates/ledger.html")),
            ("journal.html", include_str!("../../templates/journal.html")),
            ("case.html", include_str!("../../templates/case.html")),
            ("cards.html", include_str!("../../templates/cards.html")),
            ("card.html", include_str!("../../templates/card.html")),
        ] {
            env.add_template(name, source).expect("templates parse");
        }
        // `{{ code|label("key_group") }}`: the zh-CN label of a code (the code itself if the
        // vocabulary does not know it; empty stays empty, so `or "—"` works);
        // `entries("tier")`: every (code, label) of a vocabulary, for a list to choose from.
        env.add_filter("label", |code: Option<String>, kind: String| -> String {
            match code {
                Some(c) if !c.is_empty() => {
                    crate::vocab::label(&kind, &c).map_or(c.clone(), str::to_string)
                }
                _ => String::new(),
            }
        });
        env.add_function("entries", |kind: String| -> minijinja::Value {
            minijinja::Value::from_serialize(crate::vocab::entries(&kind).unwrap_or_default())
        });
        env.add_filter("pct", |x: Option<f64>| -> String {
            x.map_or("—".to_string(), |x| format!("{:.1}%", x * 100.0))
        });
        // China Standard Time, to the minute: the same words as the phone's (`present`).
        env.add_filter("datetime", qiaomen_protocol::present::datetime);
        env
    })
}

pub(crate) fn render(name: &str, ctx: minijinja::Value) -> Response {
    match templates().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "page did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Renders a page with `unit_names` (every org unit's id → name) beside `ctx`, so that a page
/// names grids, villages and teams, never shows their codes.
/// The caller's menu shows only the pages their roles can open ([`Menu`]).
pub(crate) async fn render_named(
    state: &AppState,
    caller: &Caller,
    name: &str,
    ctx: minijinja::Value,
) -> Result<Response, PageError> {
    let user = caller.user();
    let (units, scope) = state
        .access(move |db| Ok((db.units()?, db.scope(user, crate::access::now_ms())?)))
        .await?;
    let unit_names: std::collections::BTreeMap<String, String> =
        units.into_iter().map(|u| (u.id, u.name)).collect();
    let menu = menu_of(&scope);
    Ok(render(name, context! { unit_names, menu, ..ctx }))
}

/// Which pages a signed-in person's menu links to: those their roles can open, so a team
/// member or an admin never follows a link to "未找到". Each entry is `(id, href, label)`.
pub fn menu_of(
    scope: &crate::access::org::Scope,
) -> Vec<(&'static str, &'static str, &'static str)> {
    // The records of some grid: 辖区, 走访覆盖, 周清单, 统计, 未接收.
    let grids = !scope.read.is_empty();
    // A grid's orders, or a team's.
    let orders = grids || !scope.rights.teams.is_empty();
    let admin = scope.roles.contains(&crate::access::Role::Admin);
    // Supervisors watch their grids' phones.
    let supervises = grids
        && scope.roles.iter().any(|r| {
            matches!(
                r,
                crate::access::Role::GridHead
                    | crate::access::Role::VillageSupervisor
                    | crate::access::Role::TownSupervisor
                    | crate::access::Role::CommandCentre
            )
        });
    [
        (grids, ("nav-org", "/", "辖区")),
        (grids, ("nav-coverage", "/coverage", "走访覆盖")),
        (orders, ("nav-orders", "/orders", "诉求工单")),
        (grids, ("nav-ledger", "/ledger", "双台账")),
        (grids, ("nav-journal", "/journal", "事件与日志")),
        (grids, ("nav-tasks", "/tasks", "周清单")),
        (grids, ("nav-stats", "/stats", "统计")),
        (grids, ("nav-refused", "/refused", "未接收")),
        (supervises, ("nav-phones", "/phones", "手机")),
        (admin, ("nav-devices", "/devices", "设备")),
        (admin, ("nav-admin", "/admin", "管理")),
    ]
    .into_iter()
    .filter_map(|(shown, entry)| shown.then_some(entry))
    .collect()
}

/// An API error shown as a page, with the API's status.
#[derive(Debug)]
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<service::Error> for PageError {
    fn from(e: service::Error) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.into_response().status();
        let (title, message) = match status.as_u16() {
            404 => ("未找到", "没有这户，或不在您的辖区内。"),
            403 => ("无权操作", "只有该网格的督导可以这样做。"),
            409 => ("版本已变", "记录已被修改，请刷新后再审核。"),
            400 => ("输入有误", "请检查填写的内容。"),
            429 => ("操作过于频繁", "请稍后再试。"),
            _ => ("出错了", "服务器暂时无法完成，请稍后重试。"),
        };
        let mut page = render("error.html", context! { title, message, signed_in => true });
        *page.status_mut() = status;
        page
    }
}

/// The page a refused cross-site form post gets ([`super::edge::same_origin`]).
pub fn cross_site_refused() -> Response {
    let mut page = render(
        "error.html",
        context! {
            title => "请求被拒绝",
            message => "这个表单不是从本系统的页面提交的。请回到本系统的页面重新操作。",
            signed_in => false,
        },
    );
    *page.status_mut() = StatusCode::FORBIDDEN;
    page
}

/// A signed-in person for the pages; without a session, a redirect to the login page.
#[derive(Debug)]
pub struct PageSession(pub(crate) Caller);

impl FromRequestParts<AppState> for PageSession {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        SessionAuth::from_request_parts(parts, state)
            .await
            .map(|s| PageSession(Caller::Session(s)))
            .map_err(|_| Redirect::to("/login").into_response())
    }
}

/// `GET /login`.
pub async fn login_page() -> Response {
    render(
        "login.html",
        context! { title => "登录", signed_in => false },
    )
}

/// `POST /login` (form): a session cookie, then the org page.
pub async fn login_submit(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Form(form): Form<LoginRequest>,
) -> Response {
    match super::auth::sign_in(&state, ip, form).await {
        Ok((_, token, _)) => (
            [(
                header::SET_COOKIE,
                super::auth::session_cookie_for(&token, state.edge.public_https),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Err(e) => {
            let status = e.into_response().status();
            let error = if status == StatusCode::TOO_MANY_REQUESTS {
                "尝试次数过多，请稍后再试。"
            } else {
                "账号或密码不正确。"
            };
            let mut page = render(
                "login.html",
                context! { title => "登录", signed_in => false, error },
            );
            *page.status_mut() = status;
            page
        }
    }
}

/// `POST /logout`.
pub async fn logout(State(state): State<AppState>, session: SessionAuth) -> Response {
    let token = session.token.clone();
    let _ = state.access(move |db| db.logout(&token)).await;
    (
        [(
            header::SET_COOKIE,
            super::auth::session_cookie_cleared(state.edge.public_https),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

/// `GET /`: the supervisor's units, town → village → grid.
pub async fn org_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
) -> Result<Response, PageError> {
    let units = households::org_units(&state, &caller).await?;
    let mut depth: std::collections::HashMap<String, usize> = Default::default();
    let rows: Vec<minijinja::Value> = units
        .iter()
        .map(|u| {
            let d = u
                .unit
                .parent
                .as_ref()
                .and_then(|p| depth.get(p))
                .map_or(0, |d| d + 1);
            depth.insert(u.unit.id.clone(), d);
            context! {
                id => u.unit.id, name => u.unit.name, kind => u.unit.kind,
                households => u.households, depth => d,
            }
        })
        .collect();
    render_named(
        &state,
        &caller,
        "org.html",
        context! { title => "辖区", signed_in => true, units => rows },
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    pub q: Option<String>,
}

/// `GET /grids/{grid}?q=`: the grid's households, searchable, with exports.
pub async fn grid_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(grid): Path<String>,
    Query(q): Query<SearchQuery>,
) -> Result<Response, PageError> {
    let rows = households::list_households(&state, &caller, grid.clone(), q.q.clone()).await?;
    render_named(
        &state,
        &caller,
        "grid.html",
        context! {
            title => "网格住户", signed_in => true, grid, rows,
            q => q.q.unwrap_or_default(),
        },
    )
    .await
}

/// `GET /households/{id}`: the record, conflicts, visits with review buttons, reviews and
/// who changed each field.
pub async fn household_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    household_view_page(&state, &caller, &id, None, StatusCode::OK).await
}

/// The household page, with a notice (a refused move) and its status.
async fn household_view_page(
    state: &AppState,
    caller: &Caller,
    id: &str,
    notice: Option<&str>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let h = households::household_view(state, caller, id).await?;
    // Who did what, by name: workers and supervisors (staff), never residents.
    let mut ids: Vec<String> = h.visits.iter().map(|v| v.worker.clone()).collect();
    ids.extend(h.reviews.iter().map(|r| r.reviewer.clone()));
    ids.extend(
        h.conflicts
            .iter()
            .flat_map(|c| c.values.iter().filter_map(|v| v.user.clone())),
    );
    ids.extend(
        h.provenance
            .iter()
            .flat_map(|f| f.writers.iter().filter_map(|w| w.user.clone())),
    );
    ids.sort();
    ids.dedup();
    // Which phone, by its owner and enrolment day.
    let mut devices: Vec<String> = h.visits.iter().map(|v| v.device.clone()).collect();
    devices.extend(
        h.provenance
            .iter()
            .flat_map(|f| f.writers.iter().filter_map(|w| w.device.clone())),
    );
    devices.extend(
        h.conflicts
            .iter()
            .flat_map(|c| c.values.iter().filter_map(|v| v.device.clone())),
    );
    devices.sort();
    devices.dedup();
    let user = caller.user();
    let (names, device_names, scope) = state
        .access(move |db| {
            Ok((
                db.user_names(&ids)?,
                db.device_labels(&devices)?,
                db.scope(user, crate::access::now_ms())?,
            ))
        })
        .await?;
    // Where a supervisor of this grid may move the household: the other grids they supervise.
    let now = crate::access::now_ms();
    let move_to: Vec<&String> = if scope.supervises(&h.grid, now) {
        scope
            .read
            .iter()
            .filter(|g| **g != h.grid && scope.supervises(g, now))
            .collect()
    } else {
        Vec::new()
    };
    // The visits newest first, as a supervisor reads them.
    let mut h = h;
    h.visits.sort_by(|a, b| {
        b.visit_day
            .cmp(&a.visit_day)
            .then(b.started_at_ms.cmp(&a.started_at_ms))
    });
    let photos = match h.id.parse() {
        Ok(id) => service::photos::household_photos(state, id, None).await?,
        Err(_) => Vec::new(),
    };
    let mut page = render_named(
        state,
        caller,
        "household.html",
        context! {
            title => format!("{} {}", h.address, h.door_number), signed_in => true,
            devices => device_names, move_to, notice,
            h, names, photos,
        },
    )
    .await?;
    *page.status_mut() = status;
    Ok(page)
}

#[derive(Debug, Deserialize)]
pub struct MoveForm {
    pub grid: String,
}

/// `POST /households/{id}/move` (form): moves the household to another grid the supervisor
/// also supervises; a refusal is said on the household page.
pub async fn move_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<MoveForm>,
) -> Result<Response, PageError> {
    let notice = match households::move_household(&state, &caller, &id, form.grid.clone()).await {
        Ok(()) => return Ok(Redirect::to(&format!("/households/{id}?moved=1")).into_response()),
        Err(service::Error::Forbidden { .. }) => "只有两个网格的督导都是您时，才能迁移这户。",
        Err(service::Error::Conflict { .. }) => "这户已经在这个网格。",
        Err(service::Error::NotFound {
            code: "no_such_grid",
            ..
        }) => "没有这个网格，请从列表中选择。",
        Err(e) => return Err(e.into()),
    };
    household_view_page(
        &state,
        &caller,
        &id,
        Some(notice),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct ReviewForm {
    pub visit_id: String,
    pub decision: String,
    #[serde(default)]
    pub comment: String,
    /// Comma-separated heads, as shown on the page.
    pub heads: String,
}

/// `POST /households/{id}/review` (form).
pub async fn review_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Result<Response, PageError> {
    let decision = match ReviewDecision::from_code(&form.decision) {
        Some(ReviewDecision::Approved) => api::Decision::Approved,
        Some(ReviewDecision::Returned) => api::Decision::Returned,
        _ => {
            return Err(PageError(ApiError::BadRequest {
                code: "invalid",
                message: "decision".into(),
            }));
        }
    };
    let req = api::ReviewRequest {
        visit_id: form.visit_id,
        decision,
        comment: form.comment,
        heads: form
            .heads
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect(),
    };
    households::add_review(&state, &caller, &id, req).await?;
    Ok(Redirect::to(&format!("/households/{id}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ResolveForm {
    /// The field's path joined with `/`.
    pub path: String,
    /// Keep the value this operation wrote ...
    pub op: Option<String>,
    /// ... or write this text instead.
    pub value: Option<String>,
}

/// `POST /households/{id}/resolve` (form): keep the chosen value.
pub async fn resolve_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Result<Response, PageError> {
    let path: Vec<String> = form.path.split('/').map(str::to_string).collect();
    let req = match (form.op, form.value) {
        (Some(op), _) => api::ResolveRequest::Choose { path, op },
        (None, Some(v)) if !v.trim().is_empty() => api::ResolveRequest::Set {
            path,
            value: serde_json::Value::String(v.trim().to_string()),
        },
        _ => {
            return Err(PageError(ApiError::BadRequest {
                code: "invalid",
                message: "value".into(),
            }));
        }
    };
    households::resolve_conflict(&state, &caller, &id, req).await?;
    Ok(Redirect::to(&format!("/households/{id}")).into_response())
}

/// `GET /coverage?unit=&day=`: the "no household missed" report, with drill-down.
pub async fn coverage_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<workflow::CoverageQuery>,
) -> Result<Response, PageError> {
    let series_q = reports::SeriesQuery {
        unit: q.unit.clone(),
        cycles: None,
        day: q.day.clone(),
    };
    let r = figures::coverage_for(&state, &caller, q).await?;
    // The last six visit days up to the one shown, counted as this report counts each.
    let series = figures::series_for(&state, &caller, series_q).await?;
    let chart = svg(charts::coverage_bars(&points_of(&series.days)));
    render_named(
        &state,
        &caller,
        "coverage.html",
        context! {
            title => "走访覆盖", signed_in => true, r, chart,
        },
    )
    .await
}

/// `GET /orders?status=&overdue=`: the caller's work orders.
pub async fn orders_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<workflow::OrdersQuery>,
) -> Result<Response, PageError> {
    let status = q.status.clone().unwrap_or_default();
    let overdue = q.overdue.as_deref() == Some("true");
    let rows = orders::order_list(&state, &caller, q).await?;
    render_named(
        &state,
        &caller,
        "orders.html",
        context! {
            title => "诉求工单", signed_in => true, rows, status, overdue,
        },
    )
    .await
}

/// `GET /refused`: what the server refused from the phones of the caller's grids, with why
/// and what was typed (kept, never applied).
pub async fn refused_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<workflow::RefusedQuery>,
) -> Result<Response, PageError> {
    let rows = orders::refused_for(&state, &caller, q).await?;
    render_named(
        &state,
        &caller,
        "refused.html",
        context! {
            title => "未接收的修改", signed_in => true, rows,
            fields => context! {
                address => "地址", door_number => "门牌号", grid => "网格", status => "状态",
                phone => "电话", gps => "位置", tags => "重点人群",
            },
        },
    )
    .await
}

/// `GET /orders/{demand}`: one work order, its deadlines and history, and a form for the
/// steps the caller may take.
pub async fn order_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(demand): Path<String>,
) -> Result<Response, PageError> {
    order_view(&state, &caller, &demand, None).await
}

/// The order page, with a refused step's form as it was typed and what was wrong with it.
async fn order_view(
    state: &AppState,
    caller: &Caller,
    demand: &str,
    refused: Option<(&StepForm, StepProblem)>,
) -> Result<Response, PageError> {
    let o = orders::order_detail(state, caller, demand).await?;
    let photos = match o.order.household.parse() {
        Ok(id) => {
            service::photos::household_photos(state, id, Some(o.order.demand.clone())).await?
        }
        Err(_) => Vec::new(),
    };
    // Dispatch picks a team from the open teams, by name.
    let teams: Vec<minijinja::Value> = state
        .access(|db| db.units())
        .await?
        .into_iter()
        .filter(|u| u.kind == crate::access::org::UnitKind::Team && u.valid_until.is_none())
        .map(|u| context! { id => u.id, name => u.name })
        .collect();
    let (typed, problem) = match refused {
        Some((form, p)) => (
            Some(context! {
                action => form.action, comment => form.comment, tier => form.tier,
                team => form.team, satisfaction => form.satisfaction,
                extend_days => form.extend_days,
            }),
            Some(context! { field => p.field, message => p.message }),
        ),
        None => (None, None),
    };
    let mut page = render_named(
        state,
        caller,
        "order.html",
        context! { title => "工单", signed_in => true, o, teams, typed, problem, photos },
    )
    .await?;
    if problem.is_some() {
        *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(page)
}

/// What was wrong with a step's form: the field (the form's input id) and why, in words.
#[derive(Debug)]
pub struct StepProblem {
    pub field: &'static str,
    pub message: String,
}

impl StepForm {
    /// What the step needs that the form lacks, before it is sent (the step's own rules are
    /// the work order's; this names the field).
    fn missing(&self) -> Option<StepProblem> {
        let need = |field: &'static str, message: &str| {
            Some(StepProblem {
                field,
                message: message.to_string(),
            })
        };
        let empty = |v: &str| v.trim().is_empty();
        match self.action.as_str() {
            "dispatch" if empty(&self.team) => need("team", "派单需要选择承办单位。"),
            "bounce" if empty(&self.comment) => need("comment", "退单需要填写退单理由。"),
            "finish" if empty(&self.comment) => need("comment", "办结需要填写办理结果。"),
            "withdraw" if empty(&self.comment) => need("comment", "撤销需要填写撤销原因。"),
            "return_visit" if empty(&self.satisfaction) => {
                need("satisfaction", "回访需要选择回访结果。")
            }
            "extend" => match self.extend_days.trim().parse::<u32>() {
                Ok(1..=30) => None,
                _ => need("extend_days", "延期需要填写 1 到 30 个工作日。"),
            },
            _ if self.comment.chars().count() > 2000 => need("comment", "说明最多 2000 字。"),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StepForm {
    pub action: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub tier: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub satisfaction: String,
    #[serde(default)]
    pub extend_days: String,
}

/// `POST /orders/{demand}/step` (form).
pub async fn order_step_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(demand): Path<String>,
    Form(form): Form<StepForm>,
) -> Result<Response, PageError> {
    if let Some(problem) = form.missing() {
        return order_view(&state, &caller, &demand, Some((&form, problem))).await;
    }
    let problem = |field: &'static str, message: &str| StepProblem {
        field,
        message: message.to_string(),
    };
    // The form's empty fields are left out; the step's own data decide what it needs.
    let mut req = serde_json::Map::new();
    req.insert("action".into(), form.action.clone().into());
    for (key, value) in [
        ("comment", &form.comment),
        ("tier", &form.tier),
        ("team", &form.team),
        ("satisfaction", &form.satisfaction),
    ] {
        if !value.trim().is_empty() {
            req.insert(key.into(), value.trim().into());
        }
    }
    if let Ok(days) = form.extend_days.trim().parse::<u32>() {
        req.insert("extend_days".into(), days.into());
    }
    let Ok(req) = serde_json::from_value::<workflow::StepRequest>(serde_json::Value::Object(req))
    else {
        let p = problem("action", "请选择要办理的步骤，并填写它需要的内容。");
        return order_view(&state, &caller, &demand, Some((&form, p))).await;
    };
    let refused = match orders::take_step(&state, &caller, &demand, req).await {
        Ok(()) => return Ok(Redirect::to(&format!("/orders/{demand}")).into_response()),
        Err(service::Error::NotFound {
            code: "no_such_team",
            ..
        }) => problem("team", "没有这个承办单位，请从列表中选择。"),
        Err(service::Error::Conflict {
            code: "invalid_step",
            ..
        }) => problem(
            "action",
            "工单的状态已经变化，这一步现在不能办理。请查看办理记录后重新选择。",
        ),
        Err(service::Error::Forbidden { .. }) => problem("action", "这一步不归您办理。"),
        Err(service::Error::Invalid { .. }) => problem("comment", "说明最多 2000 字。"),
        Err(e) => return Err(e.into()),
    };
    order_view(&state, &caller, &demand, Some((&form, refused))).await
}

/// `GET /orders/import`: the 12345 hotline import's upload form.
pub async fn import_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
) -> Result<Response, PageError> {
    render_named(
        &state,
        &caller,
        "import.html",
        context! { title => "导入12345工单", signed_in => true },
    )
    .await
}

/// The import page's form: an uploaded `file`, or (`confirm`) the same file sent back in
/// base64 (`data`) with its `format` and `name`. (No `Debug`: it holds residents' records.)
#[derive(Default)]
struct ImportForm {
    file: Option<(String, axum::body::Bytes)>,
    data: Option<String>,
    format: Option<String>,
    name: String,
    confirm: bool,
}

async fn read_import_form(mut form: axum::extract::Multipart) -> Option<ImportForm> {
    let mut out = ImportForm::default();
    while let Some(field) = form.next_field().await.ok()? {
        match field.name().unwrap_or("") {
            "file" => {
                let content_type = field.content_type().unwrap_or("").to_string();
                if let Some(name) = field.file_name() {
                    out.name = name.chars().take(100).collect();
                }
                let bytes = field.bytes().await.ok()?;
                if !bytes.is_empty() {
                    out.file = Some((content_type, bytes));
                }
            }
            "data" => out.data = Some(field.text().await.ok()?),
            "format" => out.format = Some(field.text().await.ok()?),
            "name" => out.name = field.text().await.ok()?.chars().take(100).collect(),
            "confirm" => out.confirm = true,
            _ => {}
        }
    }
    Some(out)
}

/// `POST /orders/import` (multipart form): an uploaded file is checked row by row and shown
/// (a preview: nothing written) with a button that posts it back to be imported; that post
/// imports the good rows and shows how many were created, skipped as imported before, and the
/// bad rows with their reasons. Cells are shown on the page, never logged.
pub async fn import_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, PageError> {
    use crate::hotline::{Column, Format};
    use base64::Engine;
    let title = "导入12345工单";
    let failed = |error: String| {
        let mut page = render("import.html", context! { title, signed_in => true, error });
        *page.status_mut() = StatusCode::BAD_REQUEST;
        page
    };
    let Some(form) = (match form {
        Ok(f) => read_import_form(f).await,
        Err(_) => None,
    }) else {
        return Ok(failed("上传没有完成，请重新选择文件。".into()));
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (format, bytes, confirm) = match (form.file, form.data) {
        (Some((content_type, bytes)), _) => (
            Format::detect(&content_type, &bytes).unwrap_or(Format::Csv),
            bytes,
            false,
        ),
        (None, Some(data)) if form.confirm => {
            let Ok(bytes) = b64.decode(data.trim()) else {
                return Ok(failed("上传没有完成，请重新选择文件。".into()));
            };
            let format = match form.format.as_deref() {
                Some("xlsx") => Format::Xlsx,
                Some("json") => Format::Json,
                _ => Format::Csv,
            };
            (format, axum::body::Bytes::from(bytes), true)
        }
        _ => return Ok(failed("请选择要导入的文件（CSV 或 Excel）。".into())),
    };
    if bytes.len() > super::edge::IMPORT_BODY_LIMIT {
        return Ok(failed("文件太大：一次最多 4 MB、1000 行。".into()));
    }
    let data = (!confirm).then(|| b64.encode(&bytes));
    let rows = match service::import::read_file(format, bytes).await {
        Ok(rows) => rows,
        Err(service::Error::Invalid { message, .. }) => return Ok(failed(message)),
        Err(e) => return Err(e.into()),
    };
    let report = service::import::import(&state, &caller, &rows, !confirm).await?;
    let shown: Vec<minijinja::Value> = rows
        .iter()
        .zip(&report.rows)
        .map(|(r, outcome)| {
            let text = r.cells.get(Column::Text);
            let short: String = text.chars().take(30).collect();
            let reasons: Vec<&str> = report
                .errors
                .iter()
                .filter(|e| e.row == r.row)
                .map(|e| e.reason_zh.as_str())
                .collect();
            context! {
                row => r.row, reference => r.cells.get(Column::Ref), grid => r.cells.get(Column::Grid),
                door => r.cells.get(Column::DoorNumber), category => r.cells.get(Column::Category),
                urgent => r.cells.get(Column::Urgent),
                text => if short.len() < text.len() { format!("{short}…") } else { short },
                status => outcome.status, reasons,
            }
        })
        .collect();
    let bad: Vec<minijinja::Value> = report
        .bad_rows()
        .into_iter()
        .map(|(row, errors)| {
            let reference = rows
                .iter()
                .find(|r| r.row == row)
                .map_or("", |r| r.cells.get(Column::Ref));
            let reasons: Vec<&str> = errors.iter().map(|e| e.reason_zh.as_str()).collect();
            context! { row, reference, reasons }
        })
        .collect();
    render_named(
        &state,
        &caller,
        "import.html",
        context! {
            title, signed_in => true, rows => shown, bad, data, name => form.name,
            format => format, preview => !confirm,
            created => report.created.len(), would_create => report.would_create,
            skipped => report.skipped,
        },
    )
    .await
}

/// `GET /stats?unit=&from=&to=`: the figures and the red/black list.
pub async fn stats_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<workflow::PeriodQuery>,
) -> Result<Response, PageError> {
    // One computation of the figures for both tables.
    let pf = figures::period_figures(&state, &caller, q).await?;
    let (s, rank) = (figures::stats_of(&pf), figures::ranking_of(&pf));
    let grids: Vec<_> = if s.unit.kind == crate::access::org::UnitKind::Grid {
        Vec::new()
    } else {
        s.grids.iter().collect()
    };
    // Six visit days and six months up to the period's end (twelve months for a longer one).
    let months = if pf.to.0 - pf.from.0 > time::Duration::days(183) {
        12
    } else {
        6
    };
    let c = figures::unit_charts(&state, &pf.us, pf.to, 6, months).await?;
    let report_month = format!("{:04}-{:02}", pf.to.year(), pf.to.month());
    render_named(
        &state,
        &caller,
        "stats.html",
        context! {
            title => "统计", signed_in => true, grids, s, rank, report_month,
            coverage_chart => svg(c.coverage_svg), demand_chart => svg(c.demands_svg),
        },
    )
    .await
}

/// An SVG drawn by [`crate::charts`] (every text in it escaped there), put in a page as it is.
fn svg(markup: String) -> minijinja::Value {
    minijinja::Value::from_safe_string(markup)
}

fn points_of(days: &[reports::SeriesDay]) -> Vec<charts::CoveragePoint> {
    days.iter()
        .map(|d| charts::CoveragePoint {
            day: d.visit_day.clone(),
            due: d.due,
            visited: d.visited,
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct MapQuery {
    pub day: Option<String>,
}

/// `GET /grids/{grid}/map?day=`: the grid's due households and the visit day's visits placed
/// by GPS (met / not met / not visited), and how many have no position.
pub async fn map_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(grid): Path<String>,
    Query(q): Query<MapQuery>,
) -> Result<Response, PageError> {
    let mut m = figures::grid_map(&state, &caller, grid, q.day).await?;
    let chart = svg(std::mem::take(&mut m.svg));
    render_named(
        &state,
        &caller,
        "map.html",
        context! { title => "走访分布图", signed_in => true, m, chart },
    )
    .await
}

/// `GET /report?unit=&month=YYYY-MM`: the printable monthly report (访情通报) of a unit.
pub async fn report_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<reports::ReportQuery>,
) -> Result<Response, PageError> {
    let mut r = figures::monthly_report(&state, &caller, q).await?;
    let coverage_chart = svg(std::mem::take(&mut r.charts.coverage_svg));
    let demand_chart = svg(std::mem::take(&mut r.charts.demands_svg));
    let grids: Vec<_> = if r.s.unit.kind == crate::access::org::UnitKind::Grid {
        Vec::new()
    } else {
        r.s.grids.iter().collect()
    };
    render_named(
        &state,
        &caller,
        "report.html",
        context! {
            title => format!("{} {} 访情通报", r.s.unit.name, r.month), signed_in => true,
            grids, r, coverage_chart, demand_chart,
        },
    )
    .await
}

/// `GET /tasks`: the weekly task lists of the caller's grids, task by grid, and a form to push
/// one (for the command centre and town supervisors).
pub async fn tasks_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
) -> Result<Response, PageError> {
    let lists =
        tasks::task_lists(&state, &caller, super::tasks::ListsQuery { since: None }).await?;
    let may_push = tasks::may_push(&state, &caller).await?;
    // The reports' photos, by list: thumbnails under the list's table.
    let hashes = lists
        .iter()
        .flat_map(|l| &l.done)
        .flat_map(|d| d.photos.iter().map(|p| p.hash.clone()))
        .collect();
    let held = crate::service::photos::uploaded(&state, hashes).await?;
    let task_photos: Vec<minijinja::Value> = lists
        .iter()
        .flat_map(|l| l.done.iter().map(move |d| (l, d)))
        .flat_map(|(l, d)| {
            let held = &held;
            d.photos.iter().map(move |p| {
                let view = crate::service::photos::PhotoView {
                    hash: p.hash.clone(),
                    caption: p.caption.clone(),
                    label: "任务照片",
                    subject: "task".into(),
                    visit: None,
                    demand: None,
                    item: Some(i64::from(d.item)),
                    taken_ms: p.taken_at_ms,
                    uploaded: held.contains(&p.hash),
                };
                context! { list => l.id.clone(), grid => d.grid.clone(), p => view }
            })
        })
        .collect();
    render_named(
        &state,
        &caller,
        "tasks.html",
        context! { title => "周清单", signed_in => true, lists, may_push, task_photos },
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct PushForm {
    pub title: String,
    /// One task per line.
    pub items: String,
    /// Unit ids, comma-separated; empty: the caller's topmost unit.
    #[serde(default)]
    pub units: String,
}

/// `POST /tasks` (form): push a list, then back to the lists.
pub async fn tasks_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Form(form): Form<PushForm>,
) -> Result<Response, PageError> {
    let req = super::tasks::NewTaskList {
        title: form.title,
        items: form
            .items
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        units: form
            .units
            .split([',', '，'])
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect(),
        week_start: None,
        due: None,
    };
    tasks::push_list(&state, &caller, req).await?;
    Ok(Redirect::to("/tasks").into_response())
}

#[derive(Debug, Deserialize)]
pub struct DevicesQuery {
    /// A device whose revocation was just refused (it reported work not yet uploaded).
    pub held: Option<String>,
}

/// `GET /devices` (admin): every device with its status, last sync and what it last reported
/// pending, and the two ways to take a phone away (retire: a handover; revoke: lost).
pub async fn devices_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Query(q): Query<DevicesQuery>,
) -> Result<Response, PageError> {
    let Caller::Session(session) = &caller else {
        return Ok(Redirect::to("/login").into_response());
    };
    let devices = devices::devices(&state, session.user).await?;
    let held = q
        .held
        .and_then(|id| devices.iter().find(|d| d.device == id).cloned());
    render_named(
        &state,
        &caller,
        "devices.html",
        context! {
            title => "设备", signed_in => true, devices, held,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    pub force: Option<String>,
}

/// `POST /devices/{id}/retire` (form): a handover, then back to the devices.
pub async fn retire_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let Caller::Session(session) = &caller else {
        return Ok(Redirect::to("/login").into_response());
    };
    devices::require_admin(&state, session.user).await?;
    let device = devices::device_id(&id)?;
    devices::end_device(&state, session.user, device, None).await?;
    Ok(Redirect::to("/devices").into_response())
}

/// `POST /devices/{id}/revoke` (form, `force` to revoke a device holding unsent work): then
/// back to the devices, which say why when it was refused.
pub async fn revoke_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, PageError> {
    let Caller::Session(session) = &caller else {
        return Ok(Redirect::to("/login").into_response());
    };
    devices::require_admin(&state, session.user).await?;
    let device = devices::device_id(&id)?;
    let force = form.force.is_some_and(|f| f == "true" || f == "on");
    match devices::end_device(&state, session.user, device, Some(force)).await {
        Ok(_) => Ok(Redirect::to("/devices").into_response()),
        Err(service::Error::Conflict {
            code: "device_has_pending",
            ..
        }) => Ok(Redirect::to(&format!("/devices?held={device}")).into_response()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_renders_escaped() {
        let html = templates()
            .get_template("login.html")
            .unwrap()
            .render(context! { title => "登录", signed_in => false, error => "<b>x</b>" })
            .unwrap();
        assert!(html.contains("督导登录") && html.contains("&lt;b&gt;x") && !html.contains("<b>"));
        for name in [
            "org.html",
            "grid.html",
            "household.html",
            "error.html",
            "coverage.html",
            "orders.html",
            "order.html",
            "stats.html",
            "tasks.html",
            "devices.html",
            "refused.html",
            "import.html",
            "map.html",
            "report.html",
        ] {
            assert!(templates().get_template(name).is_ok(), "{name}");
        }
    }
}
