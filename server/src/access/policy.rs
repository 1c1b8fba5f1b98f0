//! The rules every incoming change must pass before it is stored. They are the protocol's
//! ([`qiaomen_protocol::policy`], numbered there and tied to their reject codes), so the phone
//! runs the same ones before it commits an edit; here they are applied to an authenticated
//! device and its user's [`Scope`], with the server's register of demand ids.

use automerge::{Change, ChangeHash};
use qiaomen_protocol::{
    doc::{HouseholdDoc, Touched},
    ids::{DemandId, DeviceId, HouseholdId, UserId},
    policy::{self, Actor, DemandRegister},
    wire::RejectCode,
};

pub use qiaomen_protocol::policy::Made;

use super::Scope;
use crate::orders::DemandIds;

/// An authenticated device and what its user may do.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: UserId,
    pub device: DeviceId,
    pub scope: Scope,
    /// The change was built by the server itself for this user (the JSON API and pages,
    /// `api::web_change`), not uploaded by a device: only such a change may carry what the
    /// server vouches for (a hotline order's source, number and first-responsible cadre).
    pub server_built: bool,
    /// The server's register of demand ids, which a new demand's id must be free in (`None`
    /// for tools that load trusted data).
    pub demand_ids: Option<std::sync::Arc<DemandIds>>,
    /// Whether the uploading phone's clock agreed with the server's when it sent the changes
    /// (its `Date` header, within [`workorder::CLOCK_SKEW_MS`]); `None`: it did not say. Kept
    /// with each logged change: lateness takes a step's own time only where it did.
    pub clock_ok: Option<bool>,
}

impl DemandRegister for DemandIds {
    fn claim(&self, demand: DemandId, household: HouseholdId) -> bool {
        DemandIds::claim(self, demand, household)
    }
}

/// The change is made by this device and its user (rule 1).
pub fn check_author(p: &Principal, change: &Change) -> Result<(), RejectCode> {
    policy::check_author(p.user, p.device, change)
}

/// What the changes did to `doc` (applied on top of `before`; empty for a new household) is
/// within the principal's rights (rules 2-4, [`policy::check_effect`]).
pub fn check_effect(
    p: &Principal,
    doc: &HouseholdDoc,
    before: &[ChangeHash],
    touched: &Touched,
    made: &[Made],
) -> Result<(), RejectCode> {
    let actor = Actor {
        user: p.user,
        rights: p.scope.rights(),
        server_built: p.server_built,
        demand_ids: p.demand_ids.as_deref().map(|d| d as &dyn DemandRegister),
    };
    policy::check_effect(&actor, doc, before, touched, made).map_err(|r| r.code)
}
