//! The server's register of demand ids: a work order is addressed by its demand id alone
//! (`/api/v1/orders/{demand}`), so a demand id belongs to one household on the whole server.
//!
//! The first household to hold an id owns it; a change that adds a demand whose id another
//! household owns is refused (`not_allowed`, [`crate::access::policy`] rule 4). Claims are
//! made while a change is checked, so a change refused afterwards (a later rule, the
//! bisection of a batch) may leave its own household owning the id of a demand it does not
//! hold: that only keeps the id for the household whose phone made it (ids are random
//! UUIDs), which is what the rule wants. The writer threads share one register, so two
//! households of different threads cannot both take one id.
//!
//! The register is memory, loaded at start from the read model once it has caught up with
//! the log (`idx_orders` holds every demand of every household that reads), and grown by
//! every claim since.

use std::{collections::HashMap, sync::Mutex};

use qiaomen_protocol::ids::{DemandId, HouseholdId};

/// Which household holds each demand id.
#[derive(Debug, Default)]
pub struct DemandIds {
    owners: Mutex<HashMap<DemandId, HouseholdId>>,
}

impl DemandIds {
    /// A register holding `owners` (as the read model lists them: the first household of
    /// an id that two households hold from before the rule keeps it).
    pub fn new(owners: impl IntoIterator<Item = (DemandId, HouseholdId)>) -> Self {
        let mut map = HashMap::new();
        for (demand, household) in owners {
            map.entry(demand).or_insert(household);
        }
        Self {
            owners: Mutex::new(map),
        }
    }

    /// Claims `demand` for `household`: true if the id was free or is this household's
    /// already, false if another household holds it.
    pub fn claim(&self, demand: DemandId, household: HouseholdId) -> bool {
        // The map is never left half-changed: a poisoned lock is taken over.
        let mut owners = self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *owners.entry(demand).or_insert(household) == household
    }

    /// The household holding `demand`, if any.
    pub fn owner(&self, demand: DemandId) -> Option<HouseholdId> {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&demand)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_household_keeps_a_demand_id() {
        let (a, b) = (HouseholdId::new(), HouseholdId::new());
        let (d, e) = (DemandId::new(), DemandId::new());
        let ids = DemandIds::new([(d, a), (d, b)]);
        assert_eq!(ids.owner(d), Some(a));
        assert!(ids.claim(d, a));
        assert!(!ids.claim(d, b));
        assert!(ids.claim(e, b));
        assert!(!ids.claim(e, a));
    }
}
