//! The service layer: the operations the JSON API, the pages and the hotline import share,
//! between the HTTP edge ([`crate::http`]) and the stores (the log's readers, the read model,
//! the access tables, the writer). Each operation takes the state, the caller and a typed
//! request and returns a [`Result`] with a domain [`Error`]; it never sees axum types.
//! `From<Error> for ApiError` (in [`crate::http`]) is the one place an error becomes a status.
//!
//! - [`households`]: the household view, a grid's list and export, reviews, moves, conflicts,
//!   the org; every supervisor's edit is a change of their web device (`households::web_change`);
//! - [`orders`]: demand work orders (list, detail, steps, new demands) and the refused changes;
//! - [`import`]: the 12345 hotline import (a file's rows checked, then written);
//! - [`cards`]: the service cards on the doors: the printed sheet, reissue, and the
//!   resident's page (a request written as a demand of the household, its tracking number);
//! - [`cases`]: the second ledger's tracked disputes and hazards (list, detail, steps, export);
//! - [`figures`]: coverage, statistics, ranking, the series, charts, map and monthly report;
//! - [`tasks`]: the weekly task lists;
//! - [`devices`]: the admin check, revoking and retiring devices, the workers' phones;
//! - [`photos`]: photos' uploads by offset, the photo and its thumbnail, scope-checked.

pub mod cards;
pub mod cases;
pub mod devices;
pub mod figures;
pub mod households;
pub mod import;
pub mod journal;
pub mod orders;
pub mod photos;
pub mod tasks;

use std::collections::BTreeMap;

use qiaomen_protocol::{calendar::Day, workorder};

use crate::{
    access::{
        AccessError, now_ms,
        org::{Unit, UnitKind},
    },
    http::{AppState, auth::Caller},
};

/// What went wrong in an operation. The `code` strings are the API's stable codes; the
/// messages are for people and never hold personal data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not make sense (a malformed date, a text too long...).
    #[error("{code}: {message}")]
    Invalid { code: &'static str, message: String },
    /// The caller may not do this.
    #[error("{code}: {message}")]
    Forbidden { code: &'static str, message: String },
    /// No such thing, or one outside the caller's scope (the two look alike).
    #[error("{code}: {message}")]
    NotFound { code: &'static str, message: String },
    /// The state has moved on, or the thing exists already.
    #[error("{code}: {message}")]
    Conflict { code: &'static str, message: String },
    /// Too many attempts from this client or on this card; try later.
    #[error("too many requests")]
    TooMany,
    /// A store could not read or write (logged where it failed); retry.
    #[error("the server could not store or read")]
    Busy,
    /// What should not happen (logged where it did).
    #[error("internal error")]
    Internal,
}

/// The result of an operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `invalid`: the request does not make sense.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid {
            code: "invalid",
            message: message.into(),
        }
    }

    /// `not_found`, with what is missing (`"no such unit"`).
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound {
            code: "not_found",
            message: message.into(),
        }
    }

    /// An internal failure, logged by what failed (never data).
    pub(crate) fn internal(what: &'static str) -> Self {
        tracing::error!(what, "internal error");
        Error::Internal
    }
}

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Invalid(message) => Error::Invalid {
                code: "invalid",
                message,
            },
            AccessError::NotFound(what) => Error::not_found(format!("no such {what}")),
            AccessError::Sql(e) => {
                tracing::error!(error = %e, "access storage failed");
                Error::Busy
            }
            AccessError::Hash => Error::internal("password hashing failed"),
        }
    }
}

/// A date given as YYYY-MM-DD; `what` names the field in the message.
pub fn parse_day(s: &str, what: &str) -> Result<Day> {
    s.parse()
        .map_err(|_| Error::invalid(format!("{what} is not a date (YYYY-MM-DD)")))
}

/// Today, by the server's clock, in the calendar of the work orders.
pub fn today() -> Day {
    workorder::day_of(now_ms())
}

/// A query parameter given empty (as a form sends a field left blank) counts as absent.
pub fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A unit the caller may see, the grids below it they may read, and its child units with
/// theirs.
#[derive(Debug)]
pub struct UnitScope {
    pub unit: Unit,
    pub grids: Vec<String>,
    pub children: Vec<(Unit, Vec<String>)>,
    /// The name of each of `grids`.
    pub grid_names: BTreeMap<String, String>,
}

/// Resolves `unit` (default: the caller's topmost unit) within what the caller may see.
pub async fn unit_scope(
    state: &AppState,
    caller: &Caller,
    unit: Option<String>,
) -> Result<UnitScope> {
    let user = caller.user();
    state
        .access(move |db| {
            let at = now_ms();
            let scope = db.scope(user, at)?;
            let visible: Vec<Unit> = db
                .visible_units(user, at)?
                .into_iter()
                .filter(|u| u.kind != UnitKind::Team)
                .collect();
            let unit = match unit {
                Some(id) => visible.iter().find(|u| u.id == id).cloned(),
                None => visible.first().cloned(),
            };
            let Some(unit) = unit else {
                return Ok(None);
            };
            let readable = |id: &str| -> crate::access::Result<Vec<String>> {
                Ok(db
                    .grids_below(id)?
                    .into_iter()
                    .filter(|g| scope.may_read(g))
                    .collect())
            };
            let grids = readable(&unit.id)?;
            let grid_names = visible
                .iter()
                .filter(|u| grids.contains(&u.id))
                .map(|u| (u.id.clone(), u.name.clone()))
                .collect();
            let mut children = Vec::new();
            for child in visible
                .iter()
                .filter(|u| u.parent.as_deref() == Some(unit.id.as_str()))
            {
                children.push((child.clone(), readable(&child.id)?));
            }
            Ok(Some(UnitScope {
                unit,
                grids,
                children,
                grid_names,
            }))
        })
        .await?
        .ok_or_else(no_unit)
}

fn no_unit() -> Error {
    Error::not_found("no such unit")
}
