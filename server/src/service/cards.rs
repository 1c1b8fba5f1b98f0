//! The service card (便民服务卡, 一键直达): each household's card carries a QR code of its page,
//! `/card/{token}` ([`crate::access::cards`]). A resident who scans it, with no account, leaves
//! a request or a complaint (and, if they like, a number to call back); it is written to the
//! household's document as a demand (source `card`, the grid's worker first-responsible) by
//! the card service — a change the server builds, judged by the same writer and policy as a
//! phone's — and reaches the worker's phone at its next sync. The resident gets a tracking
//! number and looks up its state on the same page. The page shows no personal data: the grid's
//! name and its worker's, never the household's.
//!
//! Abuse limits: [`PER_CARD`] requests a day per card, [`PER_CLIENT`] an hour per client
//! address; a reissued card's old token is refused.

use std::net::IpAddr;

use qiaomen_protocol::{
    doc::Author,
    ids::{DemandId, HouseholdId},
    policy::{Grant, Role},
    schema::{Demand, DemandSource, DemandStatus, NeedCategory, Urgency},
    vocab::Term,
};
use serde::Serialize;

use super::{Error, Result, households::write_built};
use crate::{
    access::{
        cards::{tracking_of, tracking_shown},
        now_ms,
    },
    http::{AppState, auth::Caller},
};

/// Requests one card may leave per day.
pub const PER_CARD: f64 = 3.0;
/// Requests one client address may leave per hour (a village's shared connection included).
pub const PER_CLIENT: f64 = 10.0;
/// The longest request, in characters.
pub const MAX_REQUEST_CHARS: usize = 500;

/// A household's card, as printed.
#[derive(Debug, Serialize)]
pub struct PrintedCard {
    pub household: String,
    pub door_number: String,
    /// The page the QR code opens.
    pub url: String,
    /// The QR code, as SVG markup.
    pub qr: String,
}

/// A grid's sheet of cards.
#[derive(Debug, Serialize)]
pub struct CardSheet {
    pub grid: String,
    pub grid_name: String,
    pub worker_name: Option<String>,
    pub cards: Vec<PrintedCard>,
}

fn no_card() -> Error {
    Error::NotFound {
        code: "no_such_card",
        message: "this card does not exist or was reissued".into(),
    }
}

/// The cards of the households now in `grid`, issuing those not issued yet, each with its
/// page's address under `base_url` and its QR code; audited. For whoever reads the grid.
pub async fn card_sheet(
    state: &AppState,
    caller: &Caller,
    grid: &str,
    base_url: &str,
) -> Result<CardSheet> {
    let user = caller.user();
    let g = grid.to_string();
    let (scope, grid_name, worker_name) = state
        .access(move |db| {
            let name = db.units()?.into_iter().find(|u| u.id == g).map(|u| u.name);
            let worker = db.grid_worker(&g, now_ms())?;
            let worker_name = match worker {
                Some(w) => db.user_names(&[w.to_string()])?.into_values().next(),
                None => None,
            };
            Ok((db.scope(user, now_ms())?, name, worker_name))
        })
        .await?;
    let (Some(grid_name), true) = (grid_name, scope.may_read(grid)) else {
        return Err(Error::not_found("no such grid"));
    };
    let grids = vec![grid.to_string()];
    let mut rows = state.index(move |ix| ix.households(&grids)).await?;
    rows.retain(|h| h.grid == grid);
    let ids: Vec<HouseholdId> = rows.iter().map(|h| h.id).collect();
    let tokens = state
        .access(move |db| {
            ids.iter()
                .map(|h| db.card_of(*h))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let cards = rows
        .iter()
        .zip(tokens)
        .map(|(h, token)| {
            let url = format!("{base_url}/card/{token}");
            PrintedCard {
                household: h.id.to_string(),
                door_number: h.door.clone(),
                qr: crate::http::admin_pages::qr_svg(&url),
                url,
            }
        })
        .collect();
    super::households::record(state, user, None, "print_cards", grid.to_string(), "ok").await?;
    Ok(CardSheet {
        grid: grid.to_string(),
        grid_name,
        worker_name,
        cards,
    })
}

/// Reissues household `id`'s card (its old token stops working); for a supervisor of its
/// grid. Returns the household's grid.
pub async fn reissue(state: &AppState, caller: &Caller, id: &str) -> Result<String> {
    let id: HouseholdId = id.parse().map_err(|_| super::households::not_found())?;
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let grid = state
        .readers
        .with(move |s| s.doc_grid(id))
        .await?
        .ok_or_else(super::households::not_found)?;
    if !scope.may_read(&grid) {
        return Err(super::households::not_found());
    }
    if !scope.supervises(&grid, now_ms()) {
        return Err(Error::Forbidden {
            code: "forbidden",
            message: "only a supervisor of this grid may reissue its cards".into(),
        });
    }
    state.access(move |db| db.reissue_card(id)).await?;
    super::households::record(state, user, None, "reissue_card", id.to_string(), "ok").await?;
    Ok(grid)
}

/// What the resident's page shows of a card: its grid's name and worker, nothing of the
/// household.
#[derive(Debug, Serialize)]
pub struct CardFace {
    pub grid_name: String,
    pub worker_name: Option<String>,
}

/// The card in force with this token: its household and grid, and what its page shows.
async fn card_in_force(state: &AppState, token: &str) -> Result<(HouseholdId, String, CardFace)> {
    let t = token.to_string();
    let household = state
        .access(move |db| db.card_household(&t))
        .await?
        .ok_or_else(no_card)?;
    let grid = state
        .readers
        .with(move |s| s.doc_grid(household))
        .await?
        .ok_or_else(no_card)?;
    let g = grid.clone();
    let face = state
        .access(move |db| {
            let grid_name = db
                .units()?
                .into_iter()
                .find(|u| u.id == g)
                .map_or_else(|| g.clone(), |u| u.name);
            let worker_name = match db.grid_worker(&g, now_ms())? {
                Some(w) => db.user_names(&[w.to_string()])?.into_values().next(),
                None => None,
            };
            Ok(CardFace {
                grid_name,
                worker_name,
            })
        })
        .await?;
    Ok((household, grid, face))
}

/// The page of the card `token` (`no_such_card` for a token not in force).
pub async fn card_face(state: &AppState, token: &str) -> Result<CardFace> {
    Ok(card_in_force(state, token).await?.2)
}

/// A request left on a card's page.
#[derive(Debug, Default)]
pub struct CardRequest {
    /// A complaint (投诉) rather than a request (求助/诉求).
    pub complaint: bool,
    /// A demand category's code or label; empty: `other`.
    pub category: String,
    pub text: String,
    /// A number to call back, if the resident leaves one.
    pub callback: String,
}

/// What is wrong with a request, for the field it names (`text`, `callback`, `category`).
fn check_request(
    r: &CardRequest,
) -> Result<(NeedCategory, Option<String>), (&'static str, String)> {
    let n = r.text.trim().chars().count();
    if n == 0 {
        return Err(("text", "请写下您的诉求。".into()));
    }
    if n > MAX_REQUEST_CHARS {
        return Err(("text", format!("诉求最多 {MAX_REQUEST_CHARS} 字。")));
    }
    let category = match r.category.trim() {
        "" => NeedCategory::Other,
        c => NeedCategory::from_text(c).ok_or(("category", "请从列表中选择类别。".into()))?,
    };
    let digits: String = r
        .callback
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let callback = match digits.as_str() {
        "" => None,
        d if (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) => {
            Some(d.to_string())
        }
        _ => return Err(("callback", "回电号码应为 7 到 15 位数字。".into())),
    };
    Ok((category, callback))
}

/// Why a request was not taken.
#[derive(Debug)]
pub enum Refused {
    /// The form: the field and why, in words.
    Form(&'static str, String),
    /// Anything else (no such card, too many requests, the store).
    Other(Error),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Other(e)
    }
}

/// Leaves `req` through card `token` from client `addr`: a demand of the card's household,
/// raised by the card service with the grid's worker first-responsible. Returns the tracking
/// number, as a person reads it.
pub async fn submit(
    state: &AppState,
    token: &str,
    addr: IpAddr,
    req: CardRequest,
) -> Result<String, Refused> {
    let (category, callback) = check_request(&req).map_err(|(f, m)| Refused::Form(f, m))?;
    let (household, grid, _) = card_in_force(state, token).await?;
    let (t, client) = (format!("card:{token}"), format!("card-client:{addr}"));
    let allowed = state
        .access(move |db| {
            Ok(db.take_token(&t, PER_CARD, PER_CARD / 86_400.0)?
                && db.take_token(&client, PER_CLIENT, PER_CLIENT / 3_600.0)?)
        })
        .await?;
    if !allowed {
        return Err(Error::TooMany.into());
    }
    let g = grid.clone();
    let (service, device, worker) = state
        .access(move |db| {
            let service = db.card_service_user()?;
            Ok((
                service,
                db.web_device(service)?,
                db.grid_worker(&g, now_ms())?,
            ))
        })
        .await?;
    let kind = if req.complaint { "投诉" } else { "诉求" };
    let mut text = format!("【便民服务卡·{kind}】{}", req.text.trim());
    if let Some(n) = &callback {
        text.push_str(&format!("（回电号码：{n}）"));
    }
    let at = now_ms();
    let demand = Demand {
        id: DemandId::new(),
        raised_on_visit: None,
        raised_by: service,
        raised_at_ms: at,
        category,
        text,
        urgency: Urgency::Normal,
        status: DemandStatus::Raised,
        history: vec![],
        first_responsible: worker,
        source: Some(DemandSource::Card),
        external_ref: None,
    };
    let demand_id = demand.id;
    // The card service raises demands of this grid's households, and nothing else.
    let mut scope = crate::access::Scope::default();
    scope.rights.at_ms = at;
    scope.rights.grants.push(Grant {
        grid: grid.clone(),
        role: Role::GridWorker,
        from_ms: 0,
        until_ms: None,
    });
    scope.read.insert(grid);
    write_built(
        state,
        Author {
            user: service,
            device,
        },
        scope,
        household,
        "card_request",
        |_, _| Ok(()),
        move |doc, author| {
            doc.edit(author, at, |h| {
                h.demands.insert(demand.id, demand);
                Ok(())
            })
            .map_err(|_| Error::Internal)?
            .1
            .ok_or(Error::Internal)
        },
    )
    .await?;
    let t = token.to_string();
    let tracking = state
        .access(move |db| db.record_card_request(&t, household, demand_id))
        .await?;
    Ok(tracking_shown(&tracking))
}

/// Where a request left through a card stands, for the resident.
#[derive(Debug, Serialize)]
pub struct Tracked {
    pub tracking: String,
    /// The day it was left.
    pub day: String,
    /// Its work order's state (vocabulary `demand_status`), and whether it is finished.
    pub status: String,
    pub finished: bool,
}

/// The state of the request `tracking` left through a card of the same household as `token`.
pub async fn track(state: &AppState, token: &str, tracking: &str) -> Result<Tracked> {
    let not_found = || Error::NotFound {
        code: "no_such_request",
        message: "no request with this tracking number on this card".into(),
    };
    let number = tracking_of(tracking).ok_or_else(not_found)?;
    let (household, _, _) = card_in_force(state, token).await?;
    let n = number.clone();
    let (demand, at) = state
        .access(move |db| db.card_request(household, &n))
        .await?
        .ok_or_else(not_found)?;
    let key = demand.to_string();
    let rows = state.index(move |ix| ix.orders_with_id(&key)).await?;
    let household_s = household.to_string();
    // Just written and not read yet into the read model: received.
    let status = rows
        .into_iter()
        .find(|r| r.household == household_s)
        .map_or_else(|| DemandStatus::Raised.code().to_string(), |r| r.status);
    let finished = matches!(
        DemandStatus::from_code(&status),
        Some(
            DemandStatus::Closed
                | DemandStatus::Done
                | DemandStatus::FedBack
                | DemandStatus::ReturnVisited
        )
    );
    Ok(Tracked {
        tracking: tracking_shown(&number),
        day: qiaomen_protocol::workorder::day_of(at).to_string(),
        status,
        finished,
    })
}
