//! Who may see and change what: the org hierarchy, users and their roles, enrolled devices and
//! their tokens, supervisors' sessions, the audit log, and the rules a change must pass.
//!
//! - [`org`]: county → town → village → grid units (dated), users, role assignments (dated),
//!   and the scope a user has at a time;
//! - [`tokens`]: one-time enrollment codes, device tokens (opaque, stored hashed, rotated with
//!   reuse detection), password logins (argon2) and sessions;
//! - [`audit`]: the append-only audit log (no personal data);
//! - [`policy`]: the per-change rules, pure functions over what a change touched.
//!
//! [`AccessDb`] keeps all of it in the server's database (the same SQLite file as the change
//! log; tables created by the storage migrations). Every call is blocking.

pub mod admin_ops;
pub mod audit;
pub mod org;
pub mod policy;
pub mod tokens;

use std::path::Path;

use rusqlite::Connection;

pub use org::{Grant, Role, Scope};

/// Errors of the access layer. Messages name kinds, never personal data or secrets.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("password hashing failed")]
    Hash,
}

pub type Result<T, E = AccessError> = std::result::Result<T, E>;

/// The access tables of the server's database, on one connection.
#[derive(Debug)]
pub struct AccessDb {
    pub(crate) conn: Connection,
}

impl AccessDb {
    /// Opens the access tables of the store in `dir` (created by [`crate::storage::SqliteStorage::open`]).
    pub fn open(dir: &Path) -> Result<Self> {
        // Migrations run in the storage's open; run it so a bare `admin` call on an empty
        // data folder works too.
        crate::storage::SqliteStorage::open(dir)
            .map_err(|e| AccessError::Invalid(e.to_string()))?;
        let conn = Connection::open(dir.join("qiaomen.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        )?;
        crate::storage::size_page_cache(&conn).map_err(|e| AccessError::Invalid(e.to_string()))?;
        Ok(Self { conn })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
