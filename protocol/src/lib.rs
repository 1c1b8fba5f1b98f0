//! What a Qiaomen phone and the Qiaomen server must agree on, with no IO at all:
//! identifiers ([`ids`]), the visit-day calendar ([`calendar`]), the household document's
//! schema ([`schema`]) and its migrations ([`migrate`]), the typed document itself ([`doc`])
//! and its concurrent values ([`conflicts`]), the field rules and limits both ends
//! enforce ([`validate`]), and who may make a change ([`policy`]), which both ends run too.
//!
//! Nothing here opens a file, a socket or reads a clock: time comes in as arguments
//! (`now_ms`), so tests can run many replicas deterministically in one thread.

pub mod calendar;
pub mod conflicts;
pub mod coverage;
pub mod doc;
pub mod error;
pub mod hostile;
pub mod ids;
pub mod integrity;
pub mod journal;
pub mod ledger;
pub mod migrate;
pub mod pack;
pub mod photo;
pub mod policy;
pub mod present;
pub mod refused;
pub mod review;
pub mod schema;
pub mod validate;
pub mod vocab;
pub mod wire;
pub mod workorder;

pub use automerge::{ActorId, ChangeHash};
pub use error::{DocError, Result};
