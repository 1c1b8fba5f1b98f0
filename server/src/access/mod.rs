//! Who may see and change what: the org hierarchy, users and their roles, enrolled devices and
//! their tokens, supervisors' sessions, the audit log, and the rules a change must pass.
//!
//! - [`org`]: county → town → village → grid units (dated), users, role assignments (dated),
//!   and the scope a user has at a time;
//! - [`tokens`]: one-time enrollment codes, device tokens (opaque, stored hashed, rotated with
//!   reuse detection), password logins (argon2) and sessions;
//! - [`audit`]: the append-only audit log (no personal data);
//! - [`policy`]: the per-change rules, pure functions over what a change touched;
//! - [`shared`]: what the servers of one database agree on (leases, settings).
//!
//! [`AccessDb`] keeps all of it in the server's database: the same SQLite file as the change
//! log, or the same PostgreSQL database, through one connection ([`crate::sql::Db`]: the
//! statements are the same on both; the tables are created by each backend's migrations).
//! Every call is blocking.

pub mod admin_ops;
pub mod audit;
pub mod cards;
pub mod journal;
pub mod org;
pub mod policy;
pub mod shared;
pub mod tokens;

use std::path::Path;

use rusqlite::Connection;

use crate::sql::{Db, LostRace, SqlError};

pub use org::{Grant, Role, Scope};

/// Errors of the access layer. Messages name kinds, never personal data or secrets.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("storage: {0}")]
    Sql(#[from] SqlError),
    #[error("{0}")]
    Invalid(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("password hashing failed")]
    Hash,
}

impl From<rusqlite::Error> for AccessError {
    fn from(e: rusqlite::Error) -> Self {
        AccessError::Sql(SqlError::Sqlite(e))
    }
}

impl LostRace for AccessError {
    fn lost_race(&self) -> bool {
        matches!(self, AccessError::Sql(e) if e.lost_race())
    }
}

pub type Result<T, E = AccessError> = std::result::Result<T, E>;

/// The access tables of the server's database, on one connection.
#[derive(Debug)]
pub struct AccessDb {
    pub(crate) db: Db,
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
        Ok(Self {
            db: Db::sqlite(conn),
        })
    }

    /// The access tables of a PostgreSQL database (migrated by [`crate::storage::PgStorage`]).
    pub fn on_postgres(log: &crate::storage::PgStorage) -> Self {
        Self { db: log.db() }
    }

    /// Runs `f` in one transaction (one disk sync for many small writes; see
    /// [`Db::transaction`]: run again from its start if it lost a race).
    pub fn in_transaction<T>(&mut self, mut f: impl FnMut(&Self) -> Result<T>) -> Result<T> {
        let this = &*self;
        this.db.transaction(|_| f(this))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The access store on each backend, for tests written once (as the change log's
/// `storage::conformance`): `on_both_backends!(test_a, test_b)` runs each `fn test_a(s:
/// &Store)` on a fresh SQLite folder and on a fresh PostgreSQL schema
/// (`QIAOMEN_TEST_POSTGRES`; required under CI).
#[cfg(test)]
pub(crate) mod testing {
    use super::AccessDb;
    use crate::storage::conformance::{Fixture, Postgres};

    pub(crate) enum Store {
        Sqlite(tempfile::TempDir),
        Postgres(Postgres),
    }

    impl Store {
        /// A new handle on the store: two are two servers on one database.
        pub(crate) fn open(&self) -> AccessDb {
            match self {
                Store::Sqlite(dir) => AccessDb::open(dir.path()).unwrap(),
                Store::Postgres(pg) => AccessDb::on_postgres(&pg.handle()),
            }
        }

        /// The SQLite folder, for tests of what only the embedded store has.
        pub(crate) fn sqlite_dir(&self) -> Option<&std::path::Path> {
            match self {
                Store::Sqlite(dir) => Some(dir.path()),
                Store::Postgres(_) => None,
            }
        }
    }

    pub(crate) fn sqlite() -> Option<Store> {
        Some(Store::Sqlite(tempfile::tempdir().unwrap()))
    }

    pub(crate) fn postgres() -> Option<Store> {
        crate::storage::conformance::postgres().map(Store::Postgres)
    }

    macro_rules! on_both_backends {
        ($($test:ident),* $(,)?) => {
            mod sqlite {
                $(
                    #[test]
                    fn $test() {
                        if let Some(s) = $crate::access::testing::sqlite() {
                            super::$test(&s);
                        }
                    }
                )*
            }
            mod postgres {
                $(
                    #[test]
                    fn $test() {
                        if let Some(s) = $crate::access::testing::postgres() {
                            super::$test(&s);
                        }
                    }
                )*
            }
        };
    }
    pub(crate) use on_both_backends;
}
