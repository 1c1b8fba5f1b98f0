//! The service cards over HTTP ([`crate::service::cards`]): a grid's printable sheet of cards
//! and a card's reissue (signed in), and the resident's page of a card (no account: the token
//! in the address is the card).

use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use minijinja::context;
use serde::Deserialize;

use super::{
    AppState,
    auth::ClientAddr,
    pages::{PageError, PageSession, render, render_named},
};
use crate::service::{
    self,
    cards::{self, CardRequest, Refused},
};

/// `GET /grids/{grid}/cards`: the grid's cards, one per household, to print and post.
pub async fn sheet_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(grid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let base = super::admin_pages::server_url(&state, &headers);
    let sheet = cards::card_sheet(&state, &caller, &grid, &base).await?;
    render_named(
        &state,
        &caller,
        "cards.html",
        context! { title => "便民服务卡", signed_in => true, sheet },
    )
    .await
}

/// `POST /households/{id}/card/reissue` (form): a new card for the household; the old one
/// stops working. Back to the grid's sheet.
pub async fn reissue_submit(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let grid = cards::reissue(&state, &caller, &id).await?;
    Ok(Redirect::to(&format!("/grids/{grid}/cards")).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct TrackQuery {
    pub track: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RequestForm {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub callback: String,
}

/// The resident's page, never cached; its address (the card) is never sent to another site
/// as a referrer (`same-origin`: a form of its own still says where it comes from).
fn card_page(status: StatusCode, ctx: minijinja::Value) -> Response {
    let mut page = render("card.html", ctx);
    if page.status() == StatusCode::OK {
        *page.status_mut() = status;
    }
    page.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    page
}

fn gone() -> Response {
    card_page(
        StatusCode::NOT_FOUND,
        context! { gone => true, face => context! { grid_name => "" } },
    )
}

/// `GET /card/{token}?track=`: the card's page, with a request's state when `track` is given.
pub async fn resident_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<TrackQuery>,
) -> Response {
    let face = match cards::card_face(&state, &token).await {
        Ok(f) => f,
        Err(service::Error::NotFound { .. }) => return gone(),
        Err(e) => return PageError::from(e).into_response(),
    };
    let (tracked, problem) = match q.track.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => (None, None),
        Some(t) => match cards::track(&state, &token, t).await {
            Ok(t) => (Some(t), None),
            Err(service::Error::NotFound { .. }) => (
                None,
                Some(
                    context! { field => "track", message => "没有找到这个查询编号，请核对后重试。" },
                ),
            ),
            Err(e) => return PageError::from(e).into_response(),
        },
    };
    let status = if problem.is_some() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    card_page(status, context! { face, token, tracked, problem })
}

/// `POST /card/{token}` (form): leaves a request; answered with its tracking number.
pub async fn resident_submit(
    State(state): State<AppState>,
    Path(token): Path<String>,
    ClientAddr(addr): ClientAddr,
    Form(form): Form<RequestForm>,
) -> Response {
    let req = CardRequest {
        complaint: form.kind == "complaint",
        category: form.category.clone(),
        text: form.text.clone(),
        callback: form.callback.clone(),
    };
    let typed = context! {
        kind => form.kind, category => form.category, text => form.text, callback => form.callback,
    };
    let (status, problem) = match cards::submit(&state, &token, addr, req).await {
        Ok(tracking) => {
            return match cards::card_face(&state, &token).await {
                Ok(face) => card_page(StatusCode::OK, context! { face, token, tracking }),
                Err(e) => PageError::from(e).into_response(),
            };
        }
        Err(Refused::Form(field, message)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            context! { field, message },
        ),
        Err(Refused::Other(service::Error::NotFound { .. })) => return gone(),
        Err(Refused::Other(service::Error::TooMany)) => (
            StatusCode::TOO_MANY_REQUESTS,
            context! { field => "", message => "提交过于频繁，请稍后再试，或直接联系您的网格员。" },
        ),
        Err(Refused::Other(e)) => return PageError::from(e).into_response(),
    };
    match cards::card_face(&state, &token).await {
        Ok(face) => card_page(status, context! { face, token, typed, problem }),
        Err(_) => gone(),
    }
}
