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
//! On the embedded store the register is memory (one server holds the data folder), loaded
//! at start from the read model once it has caught up with the log (`idx_orders` holds every
//! demand of every household that reads), and grown by every claim since.
//!
//! On PostgreSQL several servers claim at once, so the register is the `demand_owners` table
//! ([`DemandIds::shared`]): seeded from the read model by each server at start (a no-op for
//! the ids already there), claimed by an insert that keeps the first owner, read back. Memory
//! only caches it: an id's owner never changes once recorded. A claim the database could not
//! answer is let through (and logged): the change's own commit, on the same database, is
//! then all but sure to fail and be retried, and ids are random UUIDs, so refusing an honest
//! worker's demand for a database hiccup would be the worse error.

use std::{collections::HashMap, sync::Mutex};

use qiaomen_protocol::ids::{DemandId, HouseholdId, Uuid};

use crate::sql::{Db, SqlError};

/// The shared register's table (migration 6 of PostgreSQL).
pub const SHARED_REGISTER_SCHEMA: &str = r#"
CREATE TABLE demand_owners (
    demand    TEXT PRIMARY KEY,
    household BYTEA NOT NULL
);
"#;

/// Which household holds each demand id.
#[derive(Debug, Default)]
pub struct DemandIds {
    owners: Mutex<HashMap<DemandId, HouseholdId>>,
    /// The database every server of it claims in; `None`: this server's memory is the
    /// register.
    shared: Option<Mutex<Db>>,
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
            shared: None,
        }
    }

    /// The register kept in `db` (PostgreSQL) for every server of it, first given the owners
    /// the read model lists (where the table has none yet for their ids).
    pub fn shared(db: Db) -> Result<Self, SqlError> {
        db.execute(
            "INSERT INTO demand_owners (demand, household)
             SELECT DISTINCT ON (demand) demand, doc FROM idx_orders
              ORDER BY demand, raised_ms, doc
             ON CONFLICT (demand) DO NOTHING",
            &[],
        )?;
        Ok(Self {
            owners: Mutex::default(),
            shared: Some(Mutex::new(db)),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<DemandId, HouseholdId>> {
        // The map is never left half-changed: a poisoned lock is taken over.
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims `demand` for `household`: true if the id was free or is this household's
    /// already, false if another household holds it.
    pub fn claim(&self, demand: DemandId, household: HouseholdId) -> bool {
        if let Some(&owner) = self.memory().get(&demand) {
            return owner == household;
        }
        let owner = match &self.shared {
            None => household,
            Some(db) => match claim_in(&lock(db), demand, household) {
                Ok(owner) => owner,
                Err(e) => {
                    tracing::warn!(error = %e, "a demand id's claim could not be recorded");
                    return true;
                }
            },
        };
        *self.memory().entry(demand).or_insert(owner) == household
    }

    /// The household holding `demand`, if any. Blocks on the database when the register is
    /// shared: call it from a blocking thread.
    pub fn owner(&self, demand: DemandId) -> Option<HouseholdId> {
        if let Some(&owner) = self.memory().get(&demand) {
            return Some(owner);
        }
        let db = self.shared.as_ref()?;
        let owner = owner_in(&lock(db), demand)
            .inspect_err(|e| tracing::warn!(error = %e, "a demand id's owner could not be read"))
            .ok()??;
        Some(*self.memory().entry(demand).or_insert(owner))
    }
}

fn lock(db: &Mutex<Db>) -> std::sync::MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records `household` as `demand`'s owner unless one is recorded; the owner recorded.
fn claim_in(db: &Db, demand: DemandId, household: HouseholdId) -> Result<HouseholdId, SqlError> {
    db.execute(
        "INSERT INTO demand_owners (demand, household) VALUES (?1, ?2)
         ON CONFLICT (demand) DO NOTHING",
        &[&demand.to_string(), &household.as_bytes().as_slice()],
    )?;
    Ok(owner_in(db, demand)?.unwrap_or(household))
}

fn owner_in(db: &Db, demand: DemandId) -> Result<Option<HouseholdId>, SqlError> {
    let bytes: Option<Vec<u8>> = db.row(
        "SELECT household FROM demand_owners WHERE demand = ?1",
        &[&demand.to_string()],
    )?;
    Ok(bytes.and_then(|b| Uuid::from_slice(&b).ok().map(HouseholdId)))
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

    /// Two servers on one PostgreSQL database: an id one of them gave a household is
    /// refused to another household by the other, and an owner the read model lists from
    /// before is everyone's.
    #[test]
    fn servers_of_one_database_share_the_register() {
        use crate::storage::conformance::Fixture;
        let Some(pg) = crate::storage::conformance::postgres() else {
            return;
        };
        let (a, b, c) = (HouseholdId::new(), HouseholdId::new(), HouseholdId::new());
        let (d, e, old) = (DemandId::new(), DemandId::new(), DemandId::new());
        let db = pg.handle().db();
        // Two households held `old` before ids were unique; the earlier raised keeps it.
        for (household, raised) in [(c, 2_000i64), (b, 1_000)] {
            db.execute(
                "INSERT INTO idx_orders (doc, demand, grid, door, status, responsible, category,
                     urgency, raised_ms, chase_ups, bounces, reopened)
                 VALUES (?1, ?2, 'g', '1', 'open', 'r', 'other', 'normal', ?3, 0, 0, 0)",
                &[&household.as_bytes().as_slice(), &old.to_string(), &raised],
            )
            .unwrap();
        }
        let one = DemandIds::shared(pg.handle().db()).unwrap();
        let two = DemandIds::shared(pg.handle().db()).unwrap();
        assert_eq!(one.owner(old), Some(b));
        assert!(
            !two.claim(old, c),
            "the later household of an old id keeps none"
        );

        assert!(one.claim(d, a));
        assert!(!two.claim(d, b), "taken on the other server");
        assert_eq!(two.owner(d), Some(a));
        assert!(two.claim(d, a), "its own household again");
        assert!(two.claim(e, b));
        assert!(!one.claim(e, a));
        assert_eq!(one.owner(DemandId::new()), None);
        // A third server started later finds them all.
        let three = DemandIds::shared(pg.handle().db()).unwrap();
        assert_eq!(
            [three.owner(old), three.owner(d), three.owner(e)],
            [Some(b), Some(a), Some(b)]
        );
    }
}
