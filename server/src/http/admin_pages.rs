//! The admin's pages (`/admin`, `/admin/audit`): units, users, assignments and enrollment
//! codes (shown as text and as a QR code for the phone to scan), for an admin who has no
//! command line on the server. Every operation is [`crate::access::admin_ops`]'s, the same the
//! command line runs, so both check and audit alike. The forms pass the cross-site check of
//! every POST ([`super::edge::same_origin`]).

use axum::{
    Form,
    extract::{Path, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
};
use minijinja::context;
use serde::Deserialize;

use super::{
    ApiError, AppState,
    auth::{Caller, SessionAuth},
    pages::{PageError, PageSession, render_named},
};
use crate::{
    access::{
        AccessError,
        admin_ops::{self, By},
    },
    service,
};

/// What the phone scans: the server's address and the code, as a `qiaomen:` URI the app
/// reads (`qiaomen:enroll?server=…&code=…`).
pub fn enrollment_uri(server_url: &str, code: &str) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    format!(
        "qiaomen:enroll?server={}&code={}",
        enc(server_url),
        enc(code)
    )
}

/// The address phones reach this server at, as the admin's browser did.
pub(crate) fn server_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .unwrap_or("127.0.0.1:8080");
    let scheme = if state.edge.public_https || state.edge.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

async fn admin_session(state: &AppState, caller: &Caller) -> Result<SessionAuth, PageError> {
    let Caller::Session(session) = caller else {
        return Err(ApiError::Unauthorized {
            code: "unauthenticated",
            message: "sign in".into(),
        }
        .into());
    };
    service::devices::require_admin(state, session.user).await?;
    Ok(session.clone())
}

/// The page, with what the last operation said (`done`, `error`) and a code just issued.
async fn page(
    state: &AppState,
    caller: &Caller,
    done: Option<String>,
    error: Option<String>,
    issued: Option<(String, String, String)>,
) -> Result<Response, PageError> {
    let (units, assignments) = state
        .access(|db| Ok((db.units()?, db.assignments()?)))
        .await?;
    let unit_kinds = crate::vocab::entries("unit_kind").unwrap_or_default();
    let roles = crate::vocab::entries("role").unwrap_or_default();
    let (code_user, code, server_url) = issued.unwrap_or_default();
    let qr = if code.is_empty() {
        String::new()
    } else {
        qr_svg(&enrollment_uri(&server_url, &code))
    };
    render_named(
        state,
        caller,
        "admin.html",
        context! {
            title => "管理", signed_in => true, units, assignments, unit_kinds, roles,
            done, error, code => (!code.is_empty()).then_some(code), code_user, server_url, qr,
        },
    )
    .await
}

/// An SVG QR code of `text` (medium error correction, for a phone's camera off a screen or
/// a print).
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M) {
        Ok(qr) => qr
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

/// What an operation's failure tells the admin (never personal data: ids and logins only).
fn failure(e: service::Error) -> String {
    match e {
        service::Error::NotFound { .. } => "没有这个用户或单位。".into(),
        service::Error::Conflict { .. } => "已存在，或与现有的记录冲突。".into(),
        service::Error::Invalid { message, .. } => format!("输入有误：{message}"),
        _ => "操作未完成，请稍后重试。".into(),
    }
}

/// `GET /admin`.
pub async fn admin_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
) -> Result<Response, PageError> {
    if !matches!(caller, Caller::Session(_)) {
        return Ok(Redirect::to("/login").into_response());
    }
    admin_session(&state, &caller).await?;
    page(&state, &caller, None, None, None).await
}

/// Runs `op` as the signed-in admin and shows the page again with its outcome.
async fn run_op(
    state: &AppState,
    caller: &Caller,
    done: &str,
    op: impl FnOnce(&mut crate::access::AccessDb, By) -> crate::access::Result<()> + Send + 'static,
) -> Result<Response, PageError> {
    let session = admin_session(state, caller).await?;
    let by = By::Web(session.user);
    match state.access(move |db| op(db, by)).await {
        Ok(()) => page(state, caller, Some(done.to_string()), None, None).await,
        Err(e @ (service::Error::Busy | service::Error::Internal)) => Err(e.into()),
        Err(e) => page(state, caller, None, Some(failure(e)), None).await,
    }
}

fn day_or_today(s: &str) -> Result<qiaomen_protocol::calendar::Day, AccessError> {
    if s.trim().is_empty() {
        return Ok(qiaomen_protocol::workorder::day_of(crate::access::now_ms()));
    }
    s.trim()
        .parse()
        .map_err(|_| AccessError::Invalid("日期须为 YYYY-MM-DD".into()))
}

#[derive(Debug, Deserialize)]
pub struct CodeForm {
    pub login: String,
}

/// `POST /admin/codes`: a one-time enrollment code, shown once (never put in a URL).
pub async fn code_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Result<Response, PageError> {
    let session = admin_session(&state, &caller).await?;
    let login = form.login.trim().to_string();
    let who = login.clone();
    match state
        .access(move |db| admin_ops::issue_code(db, By::Web(session.user), &who))
        .await
    {
        Ok(code) => {
            let url = server_url(&state, &headers);
            page(&state, &caller, None, None, Some((login, code, url))).await
        }
        Err(e @ (service::Error::Busy | service::Error::Internal)) => Err(e.into()),
        Err(e) => page(&state, &caller, None, Some(failure(e)), None).await,
    }
}

#[derive(Debug, Deserialize)]
pub struct UnitForm {
    pub id: String,
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub from: String,
}

/// `POST /admin/units`.
pub async fn unit_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Form(f): Form<UnitForm>,
) -> Result<Response, PageError> {
    run_op(&state, &caller, "已新增单位。", move |db, by| {
        let from = day_or_today(&f.from)?;
        let parent = Some(f.parent.as_str()).filter(|p| !p.is_empty());
        admin_ops::add_unit(db, by, &f.id, &f.kind, parent, &f.name, from)
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct CloseForm {
    pub on: String,
}

/// `POST /admin/units/{id}/close`.
pub async fn unit_close_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
    Form(f): Form<CloseForm>,
) -> Result<Response, PageError> {
    run_op(&state, &caller, "已撤销单位。", move |db, by| {
        let on = day_or_today(&f.on)?;
        admin_ops::close_unit(db, by, &id, on)
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct UserForm {
    pub login: String,
    pub name: String,
}

/// `POST /admin/users`.
pub async fn user_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Form(f): Form<UserForm>,
) -> Result<Response, PageError> {
    run_op(&state, &caller, "已新增用户。", move |db, by| {
        admin_ops::add_user(db, by, &f.login, &f.name).map(|_| ())
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct AssignForm {
    pub login: String,
    pub unit: String,
    pub role: String,
    #[serde(default)]
    pub from: String,
}

/// `POST /admin/assign`.
pub async fn assign_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Form(f): Form<AssignForm>,
) -> Result<Response, PageError> {
    run_op(&state, &caller, "已任职。", move |db, by| {
        let from_ms = if f.from.trim().is_empty() {
            crate::access::now_ms()
        } else {
            crate::access::org::day_start_ms(day_or_today(&f.from)?)
        };
        admin_ops::assign(db, by, &f.login, &f.unit, &f.role, from_ms).map(|_| ())
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct UnassignForm {
    pub login: String,
    pub unit: String,
}

/// `POST /admin/unassign`: the assignment ends now.
pub async fn unassign_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Form(f): Form<UnassignForm>,
) -> Result<Response, PageError> {
    run_op(&state, &caller, "已卸任。", move |db, by| {
        admin_ops::unassign(db, by, &f.login, &f.unit, crate::access::now_ms())
    })
    .await
}

/// `GET /admin/audit`: the latest 500 entries of the audit log, newest first.
pub async fn audit_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
) -> Result<Response, PageError> {
    admin_session(&state, &caller).await?;
    let (entries, user_names) = state
        .access(|db| {
            let entries = db.audit_latest(500)?;
            let ids: Vec<String> = entries.iter().filter_map(|e| e.user.clone()).collect();
            let names = db.user_names(&ids)?;
            Ok((entries, names))
        })
        .await?;
    render_named(
        &state,
        &caller,
        "audit.html",
        context! { title => "操作记录", signed_in => true, entries, user_names },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enrollment_uri_carries_the_server_and_the_code_escaped() {
        assert_eq!(
            enrollment_uri("https://qm.example.gov.cn:8443", "HNFG-ZC4H-CX7D"),
            "qiaomen:enroll?server=https%3A%2F%2Fqm.example.gov.cn%3A8443&code=HNFG-ZC4H-CX7D"
        );
        assert!(qr_svg("qiaomen:enroll?server=x&code=y").starts_with("<?xml"));
    }
}
