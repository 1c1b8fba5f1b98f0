//! The store's errors. Messages name the failure and at most a household id, never a
//! resident's data.

use qiaomen_protocol::{DocError, ids::HouseholdId, policy::Subject, wire::RejectCode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file is not a SQLite database, or its pages are damaged (or it is encrypted
    /// and was opened without its key).
    #[error(
        "the store file is corrupt, not a Qiaomen store, or encrypted and opened without its key"
    )]
    CorruptStore,
    /// The key does not open this encrypted store (or the file is not a store). The file is
    /// unchanged.
    #[error("this key does not open the store; the file is unchanged")]
    WrongKey,
    /// A store key must be exactly 32 bytes.
    #[error("a store key is 32 bytes, not {len}")]
    BadKey { len: usize },
    /// The plaintext store is open elsewhere, so it cannot be encrypted now; it is unchanged.
    #[error("the store is open elsewhere; close it before opening it with a key")]
    InUse,
    /// The file system failed (permissions, disk full) around the store file.
    #[error("file system failure: {0}")]
    Io(std::io::Error),
    /// One household's stored document cannot be read; other households are unaffected.
    #[error("the stored document of household {household} is corrupt")]
    CorruptDocument { household: HouseholdId },
    #[error("no household {household} in this store")]
    NotFound { household: HouseholdId },
    #[error("household {household} already exists in this store")]
    AlreadyExists { household: HouseholdId },
    /// The store was written by a newer version of the app.
    #[error("the store has format version {found}; this build reads up to {supported}")]
    TooNew { found: i64, supported: i64 },
    /// The document refused the edit or the input (see [`DocError`]).
    #[error(transparent)]
    Document(#[from] DocError),
    /// The server's rules (SYNC-v1 §6.4) refuse the edit: this user may not make it. `what`
    /// names what was refused (`household`: a grid the user may not write; `grid`: moving the
    /// household; `visits`: a colleague's visit; `demand_step`: a work-order step the role
    /// may not take; ...), `code` is what the server would answer (`out_of_scope`,
    /// `not_allowed`, `stale_order`). Nothing was stored.
    #[error("not allowed: {} ({})", .what.code(), .code.name())]
    NotAllowed { what: Subject, code: RejectCode },
    /// The store is not enrolled with a server yet.
    #[error("this store is not enrolled; enroll with a code first")]
    NotEnrolled,
    /// The store is enrolled already.
    #[error("this store is enrolled already")]
    AlreadyEnrolled,
    /// The store belongs to another user or device.
    #[error("this store belongs to another user or device")]
    WrongUser,
    /// Any other SQLite failure (disk full, I/O error, locked).
    #[error("storage failure: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::CorruptStore,
            _ => StoreError::Sqlite(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
