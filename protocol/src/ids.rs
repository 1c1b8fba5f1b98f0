//! Identifiers. Every entity is named by a UUID made where it is created (usually the phone),
//! so two offline phones never collide. Ids are stored in documents as 16-byte Automerge
//! byte scalars and printed in the hyphenated form.

use std::{fmt, str::FromStr};

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};
pub use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Reconcile,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        // By hand rather than derived: the derive only implements `hydrate`, so an
        // `Option<Id>` (which dispatches on the scalar's type) would not read.
        impl Hydrate for $name {
            fn hydrate_bytes(bytes: &[u8]) -> Result<Self, autosurgeon::HydrateError> {
                Uuid::from_slice(bytes)
                    .map(Self)
                    .map_err(|_| autosurgeon::HydrateError::unexpected("a 16-byte id", "other bytes".into()))
            }
        }

        impl $name {
            /// A fresh id. UUIDv7 keeps ids made on one device roughly time-ordered,
            /// which keeps SQLite's primary-key b-trees compact.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id's 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

id_type!(
    /// A household; also the id of its Automerge document.
    HouseholdId
);
id_type!(
    /// A member of a household.
    MemberId
);
id_type!(
    /// One visit to a household.
    VisitId
);
id_type!(
    /// A resident's demand (诉求).
    DemandId
);
id_type!(
    /// An enrolled phone.
    DeviceId
);
id_type!(
    /// A supervisor's review of a visit (approval or return for a fix).
    ReviewId
);
id_type!(
    /// A photo attached to a record (its reference in the household document; the bytes are
    /// named by their hash, [`crate::photo`]).
    PhotoId
);
id_type!(
    /// A person who uses Qiaomen: a grid worker or a supervisor.
    UserId
);
id_type!(
    /// A tracked dispute or hazard of the second ledger (双台账, [`crate::ledger`]).
    CaseId
);
id_type!(
    /// An event or a day's work log of a grid worker ([`crate::journal`]).
    JournalId
);

/// A grid (网格). Grids are named by the org model's code (e.g. `"dongcun-03"`), not a UUID,
/// because supervisors type and read them.
#[derive(
    Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Reconcile, Hydrate,
)]
#[serde(transparent)]
pub struct GridId(pub String);

impl GridId {
    pub fn new(code: impl Into<String>) -> Self {
        Self(code.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GridId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GridId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GridId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = VisitId::new();
        let back: VisitId = id.to_string().parse().unwrap();
        assert_eq!(id, back);
        assert!("not-a-uuid".parse::<VisitId>().is_err());
    }

    #[test]
    fn ids_made_in_sequence_are_distinct() {
        let a = HouseholdId::new();
        let b = HouseholdId::new();
        assert_ne!(a, b);
    }
}
