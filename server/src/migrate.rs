//! `qiaomen-server admin migrate --to postgres://…`: moving up from the embedded store. Copies
//! the store of a data folder (the server stopped: the folder's lock is taken) into an empty
//! PostgreSQL database in one transaction, then verifies the copy: the rows of every table,
//! the log's end, and the heads of every household as each backend loads it.
//!
//! The log keeps its sequence numbers, so a phone's cursor stays valid on the servers of the
//! new database; the read model is not copied, it is rebuilt from the log by the first server
//! that starts (its cursor is 0). Leases are not copied (none is held with the server
//! stopped).

use std::path::Path;

use qiaomen_protocol::{doc::HouseholdDoc, ids::HouseholdId};

use crate::sql::{Db, Owned, Param, SqlError};
use crate::storage::{PgStorage, SqliteStorage, Storage, StorageError};

/// A table copied: its name, its columns (as both schemas name them), and how it is read.
struct Table {
    name: &'static str,
    columns: &'static str,
    /// Read in pages by this key (the first column), or whole in this order.
    order: Order,
    /// Its key is `GENERATED ALWAYS AS IDENTITY` on PostgreSQL: copied as it is, and the
    /// identity moved past it.
    identity: Option<&'static str>,
}

enum Order {
    /// Pages of the table after the last key read, from this first key.
    Paged(Owned),
    /// The whole table, in this order (`ORDER BY …`).
    Whole(&'static str),
}

/// Every table but the read model, the leases and the rate-limit buckets (all three rebuilt
/// or refilled by the servers), a referenced table before those that reference it.
fn tables() -> Vec<Table> {
    let whole = |name, columns, order| Table {
        name,
        columns,
        order: Order::Whole(order),
        identity: None,
    };
    vec![
        whole("users", "id, login, name, password_hash, created_ms", "id"),
        // Parents before their children.
        Table {
            name: "org_units",
            columns: "id, parent, kind, name, valid_from, valid_until",
            order: Order::Whole(
                "(WITH RECURSIVE d(id, depth) AS (
                    SELECT id, 0 FROM org_units WHERE parent IS NULL
                    UNION ALL SELECT o.id, d.depth + 1 FROM org_units o JOIN d ON o.parent = d.id)
                SELECT depth FROM d WHERE d.id = org_units.id), id",
            ),
            identity: None,
        },
        Table {
            name: "assignments",
            columns: "id, \"user\", unit, role, valid_from_ms, valid_until_ms",
            order: Order::Whole("id"),
            identity: Some("id"),
        },
        whole(
            "devices",
            "id, \"user\", install_id, enrolled_ms, revoked_ms, last_seen_ms, retire_ms, retired_ms, last_sync_ms, last_pending, agent",
            "enrolled_ms, id",
        ),
        whole(
            "enrollment_codes",
            "hash, \"user\", created_ms, expires_ms, device, used_ms",
            "hash",
        ),
        whole(
            "device_tokens",
            "hash, device, created_ms, state, successor, used_ms",
            "hash",
        ),
        whole(
            "sessions",
            "hash, \"user\", created_ms, expires_ms, ended_ms",
            "hash",
        ),
        Table {
            name: "audit",
            columns: "seq, at_ms, actor_user, actor_device, action, target, outcome",
            order: Order::Paged(Owned::Int(0)),
            identity: Some("seq"),
        },
        whole(
            "task_lists",
            "id, title, week_start, due, created_by, created_ms",
            "id",
        ),
        whole("task_items", "list, idx, text", "list, idx"),
        whole("task_targets", "list, grid", "list, grid"),
        whole(
            "task_done",
            "list, idx, grid, \"user\", device, done_ms, evidence, received_ms",
            "list, idx, grid",
        ),
        whole(
            "task_photos",
            "list, idx, grid, pos, hash, size, media_type, taken_ms, caption",
            "list, idx, grid, pos",
        ),
        whole("settings", "name, value", "name"),
        Table {
            name: "changes",
            columns: "seq, doc, hash, bytes, device, \"user\", received_ms, grid, clock_ok",
            order: Order::Paged(Owned::Int(0)),
            identity: Some("seq"),
        },
        Table {
            name: "docs",
            columns: "id, grid, snapshot, snapshot_seq",
            order: Order::Paged(Owned::Blob(Vec::new())),
            identity: None,
        },
        whole("doc_moves", "doc, from_grid, to_grid, seq", "seq, doc"),
        whole("quarantine", "doc, reason, at_ms", "doc"),
        Table {
            name: "refused",
            columns: "id, doc, hash, grid, device, \"user\", code, at_ms, bytes",
            order: Order::Paged(Owned::Int(0)),
            identity: Some("id"),
        },
    ]
}

/// Rows read and written at a time (a page of the large tables, a statement's rows; a few
/// in the tests, so they go through many pages).
const PAGE: usize = if cfg!(test) { 7 } else { 500 };

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Rows of each table, in both.
    pub rows: Vec<(&'static str, u64)>,
    /// Households whose heads were compared.
    pub households: u64,
    /// The log's end, in both.
    pub log_seq: u64,
}

/// Why a migration did not happen; nothing was written to the target.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("another qiaomen-server is serving {0}: stop it first, so the copy is of one moment")]
    Serving(String),
    #[error(
        "the target database already holds a store ({0} changes, {1} users): migrate into an empty database"
    )]
    NotEmpty(u64, u64),
    #[error("the copy differs from the store: {0}")]
    Differs(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<SqlError> for MigrateError {
    fn from(e: SqlError) -> Self {
        MigrateError::Storage(e.into())
    }
}

impl crate::sql::LostRace for MigrateError {
    fn lost_race(&self) -> bool {
        matches!(self, MigrateError::Storage(e) if e.lost_race())
    }
}

/// Copies the embedded store of `data_dir` into the empty database at `to` and verifies it.
pub fn migrate(data_dir: &Path, to: &str) -> Result<Migrated, MigrateError> {
    let _lock = crate::backup::DataLock::try_take(data_dir)?
        .ok_or_else(|| MigrateError::Serving(data_dir.display().to_string()))?;
    let source_log = SqliteStorage::open(data_dir)?;
    let source = Db::sqlite(
        rusqlite::Connection::open(data_dir.join("qiaomen.db")).map_err(StorageError::from)?,
    );
    let target_log = PgStorage::connect(to, 2)?;
    migrate_between(&source_log, &source, &target_log)
}

/// [`migrate`] between open handles.
pub(crate) fn migrate_between(
    source_log: &SqliteStorage,
    source: &Db,
    target_log: &PgStorage,
) -> Result<Migrated, MigrateError> {
    let target = target_log.db();
    let (changes, users): (u64, u64) = target.one(
        "SELECT (SELECT count(*) FROM changes), (SELECT count(*) FROM users)",
        &[],
    )?;
    if changes > 0 || users > 0 {
        return Err(MigrateError::NotEmpty(changes, users));
    }
    let tables = tables();
    target.transaction(|tx| {
        for t in &tables {
            copy(source, tx, t)?;
        }
        Ok::<_, MigrateError>(())
    })?;
    verify(source_log, source, target_log, &target, &tables)
}

/// Copies one table, page by page or whole.
fn copy(source: &Db, target: &Db, t: &Table) -> Result<(), MigrateError> {
    let n = t.columns.split(',').count();
    let overriding = if t.identity.is_some() {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let insert = |rows: &[Vec<Owned>]| -> Result<(), MigrateError> {
        for chunk in rows.chunks(PAGE) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let row: Vec<String> = (1..=n).map(|c| format!("?{}", r * n + c)).collect();
                    format!("({})", row.join(", "))
                })
                .collect();
            let params: Vec<&dyn Param> = chunk
                .iter()
                .flat_map(|r| r.iter().map(|v| v as &dyn Param))
                .collect();
            target.execute(
                &format!(
                    "INSERT INTO {} ({}){overriding} VALUES {}",
                    t.name,
                    t.columns,
                    values.join(", ")
                ),
                &params,
            )?;
        }
        Ok(())
    };
    let read = |sql: &str, params: &[&dyn Param]| {
        source.map(sql, params, |r| (0..n).map(|i| r.get::<Owned>(i)).collect())
    };
    match &t.order {
        Order::Whole(order) => {
            let rows = read(
                &format!("SELECT {} FROM {} ORDER BY {order}", t.columns, t.name),
                &[],
            )?;
            insert(&rows)?;
        }
        Order::Paged(first) => {
            let key = t.columns.split(',').next().unwrap_or_default().trim();
            let mut after = first.clone();
            loop {
                let rows = read(
                    &format!(
                        "SELECT {} FROM {} WHERE {key} > ?1 ORDER BY {key} LIMIT {PAGE}",
                        t.columns, t.name
                    ),
                    &[&after],
                )?;
                let Some(last) = rows.last() else { break };
                after = last[0].clone();
                insert(&rows)?;
                if rows.len() < PAGE {
                    break;
                }
            }
        }
    }
    if let Some(column) = t.identity {
        target.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{0}', '{column}'), max({column})) FROM {0}
                  HAVING count(*) > 0",
                t.name
            ),
            &[],
        )?;
    }
    Ok(())
}

/// Counts every table on both sides, the log's end, and the heads of every household as
/// each backend loads it.
fn verify(
    source_log: &SqliteStorage,
    source: &Db,
    target_log: &PgStorage,
    target: &Db,
    tables: &[Table],
) -> Result<Migrated, MigrateError> {
    let mut rows = Vec::with_capacity(tables.len());
    for t in tables {
        let sql = format!("SELECT count(*) FROM {}", t.name);
        let (a, b): (u64, u64) = (source.one(&sql, &[])?, target.one(&sql, &[])?);
        if a != b {
            return Err(MigrateError::Differs(format!(
                "{} has {a} rows in the store and {b} in the copy",
                t.name
            )));
        }
        rows.push((t.name, a));
    }
    let log_seq = source_log.max_seq()?;
    if target_log.max_seq()? != log_seq {
        return Err(MigrateError::Differs("the log ends elsewhere".into()));
    }
    let ids: Vec<Vec<u8>> = source.rows("SELECT id FROM docs ORDER BY id", &[])?;
    let heads = |log: &dyn Storage, id: HouseholdId| -> Result<Option<Vec<_>>, MigrateError> {
        Ok(log
            .load_doc(id)?
            .and_then(|bytes| HouseholdDoc::load(&bytes).ok())
            .map(|mut doc| {
                let mut h = doc.heads();
                h.sort();
                h
            }))
    };
    for raw in &ids {
        let Ok(bytes) = <[u8; 16]>::try_from(raw.as_slice()) else {
            continue;
        };
        let id = HouseholdId(qiaomen_protocol::ids::Uuid::from_bytes(bytes));
        if heads(source_log, id)? != heads(target_log, id)? {
            return Err(MigrateError::Differs(format!(
                "household {id} loads to other heads"
            )));
        }
    }
    Ok(Migrated {
        rows,
        households: ids.len() as u64,
        log_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessDb, tokens::EnrollRefusal};
    use crate::index::{Index, Workflow};
    use crate::storage::conformance::Fixture;

    /// The demo county, moved up: every row, the log with its sequence numbers, the
    /// households as they load, and what the access tables hold (an enrollment code issued
    /// before the move enrolls a phone after it, once); a second move into the same database
    /// is refused and changes nothing.
    #[test]
    fn the_demo_county_moves_up_whole_and_once() {
        let Some(pg) = crate::storage::conformance::postgres() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let demo = crate::admin::seed_demo(dir.path()).unwrap();
        let store = AccessDb::open(dir.path()).unwrap();
        store
            .audit(crate::access::audit::Event {
                user: None,
                device: None,
                action: "test",
                target: None,
                outcome: "ok",
            })
            .unwrap();
        let source_log = SqliteStorage::open(dir.path()).unwrap();
        let source = Db::sqlite(rusqlite::Connection::open(dir.path().join("qiaomen.db")).unwrap());
        let target = pg.handle();
        let migrated = migrate_between(&source_log, &source, &target).unwrap();
        assert_eq!(migrated.households, demo.households.len() as u64);
        assert!(migrated.log_seq > 0);
        let count = |name: &str| migrated.rows.iter().find(|(t, _)| *t == name).unwrap().1;
        assert_eq!(count("changes"), migrated.log_seq);
        assert!(count("users") > 0 && count("org_units") > 0 && count("audit") > 0);

        let mut moved = AccessDb::on_postgres(&target);
        let (login, _, code) = &demo.codes[0];
        let user = moved.user_by_login(login).unwrap();
        assert_eq!(
            moved.scope(user, crate::access::now_ms()).unwrap().read,
            store.scope(user, crate::access::now_ms()).unwrap().read
        );
        assert!(moved.enroll(code, "after-the-move").unwrap().is_ok());
        assert_eq!(
            moved.enroll(code, "another").unwrap(),
            Err(EnrollRefusal::Used)
        );
        // New rows take identities after the copied ones.
        moved
            .audit(crate::access::audit::Event {
                user: None,
                device: None,
                action: "after",
                target: None,
                outcome: "ok",
            })
            .unwrap();
        assert_eq!(
            moved.audit_latest(1).unwrap()[0].seq,
            count("audit") as i64 + 1
        );
        // The read model is rebuilt from the copied log.
        let mut ix = Index::on_postgres(&target, Workflow::default());
        ix.refresh().unwrap();
        let grids: Vec<String> = demo.households.iter().map(|(g, _)| g.clone()).collect();
        assert_eq!(ix.households(&grids).unwrap().len(), demo.households.len());

        assert!(matches!(
            migrate_between(&source_log, &source, &target),
            Err(MigrateError::NotEmpty(..))
        ));
        assert_eq!(target.max_seq().unwrap(), migrated.log_seq);
    }
}
