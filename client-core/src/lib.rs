//! The phone's library: one Automerge document per household, edited fully offline and kept
//! durably in a SQLite file.
//!
//! ```
//! use qiaomen_client_core::{Store, StoreOptions};
//! use qiaomen_protocol::{doc::Author, ids::*, schema::Household};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let me = Author { user: UserId::new(), device: DeviceId::new() };
//! let mut store = Store::open(dir.path().join("phone.db"), me, StoreOptions::default()).unwrap();
//! let id = store
//!     .create_household(&Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "3"))
//!     .unwrap();
//! assert_eq!(store.household(id).unwrap().door_number, "3");
//! assert_eq!(store.pending_change_count().unwrap(), 1); // not yet on a server
//! ```

pub mod encryption;
pub mod error;
pub mod store;
pub mod sync;

pub use encryption::StoreKey;
pub use error::{Result, StoreError};
pub use store::{
    CoverageLine, Credentials, Durability, HouseholdSummary, NewPhoto, PhotoState, PhotoUpload,
    RejectedChange, RosterEntry, Store, StoreOptions, TaskDone, TaskList, TaskReport,
    WorkOrderLine,
};
pub use sync::{
    NetworkFailure, Retry, StoreAccess, SyncClient, SyncError, SyncProgress, SyncReport, enroll,
    enroll_trusting,
};
