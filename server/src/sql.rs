//! One connection to the server's database, the embedded SQLite file or PostgreSQL, for the
//! stores whose statements are the same on both (the access tables and the task lists).
//!
//! Statements are written once, in the common subset of the two dialects, with numbered
//! parameters `?1`, `?2` …. On PostgreSQL each statement is rewritten in two ways and no
//! other: `?N` becomes `$N`, and `json_each(?N)` (a JSON array of strings used as a set)
//! becomes `json_array_elements_text($N::json)`; both name their column `value`. What really
//! differs (the schemas, their migrations) is written per backend, beside the change log's
//! (`storage::sqlite`, `storage::postgres`). Identifiers that are reserved words in PostgreSQL
//! (`user`) are written quoted (`"user"`), which SQLite reads the same way.
//!
//! Values cross as [`Value`]s: null, integers, floats, text and bytes. On PostgreSQL an integer
//! binds to whatever integer or boolean parameter type the server inferred, and text to text
//! or JSON, so one statement binds the same arguments on both; the PostgreSQL schemas keep
//! integers in `BIGINT`. Rows come back as [`Row`]s of owned values, read by [`Column`].
//!
//! A transaction ([`Db::transaction`]) takes SQLite's write lock when it begins (`BEGIN
//! IMMEDIATE`) and is `SERIALIZABLE` on PostgreSQL, so a transaction that reads, then writes,
//! means the same on both: it happens as if alone. One that lost a race with another writer
//! (SQLite still busy after the busy timeout; PostgreSQL's serialization failure or deadlock)
//! is run again from its start, a few times. Blocking: call it from blocking threads.

use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::storage::postgres::OwnedRuntime;

/// Which SQL the database speaks, for the few statements written per backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Errors of a statement. Messages name what failed, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("column {index} is not {wanted}")]
    Column { index: usize, wanted: &'static str },
    #[error("the statement returned no row")]
    NoRow,
}

/// A SQLite error that says another connection held the lock past the busy timeout.
pub fn sqlite_lost_race(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A PostgreSQL error that says a concurrent transaction won (serialization failure,
/// deadlock).
pub fn postgres_lost_race(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

impl From<deadpool_postgres::PoolError> for SqlError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => SqlError::Postgres(e),
            other => SqlError::Pool(other.to_string()),
        }
    }
}

/// An error that can say its transaction lost a race with another writer, so
/// [`Db::transaction`] runs it again.
pub trait LostRace {
    fn lost_race(&self) -> bool;
}

impl LostRace for SqlError {
    fn lost_race(&self) -> bool {
        match self {
            SqlError::Sqlite(e) => sqlite_lost_race(e),
            SqlError::Postgres(e) => postgres_lost_race(e),
            _ => false,
        }
    }
}

/// A statement's argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What can be bound as an argument.
pub trait Param {
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u8, bool);

impl Param for f64 {
    fn value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}
impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<const N: usize> Param for [u8; N] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef;
        Ok(rusqlite::types::ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                _ => Err(format!("an integer cannot bind to a {ty} parameter").into()),
            },
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(s) => match *ty {
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSON => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                _ => s.to_sql(ty, out),
            },
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A value of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Owned {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl<'a> FromSql<'a> for Owned {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Owned::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Owned::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Owned::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Owned::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Owned::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Owned::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Owned::Blob(raw.to_vec()),
            Type::JSONB => Owned::Text(std::str::from_utf8(raw.get(1..).unwrap_or(&[]))?.into()),
            _ if <&str as FromSql>::accepts(ty) || *ty == Type::JSON => {
                Owned::Text(std::str::from_utf8(raw)?.into())
            }
            _ => return Err(format!("a {ty} column is not read by this layer").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Owned::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Param for Owned {
    fn value(&self) -> Value<'_> {
        match self {
            Owned::Null => Value::Null,
            Owned::Int(i) => Value::Int(*i),
            Owned::Real(f) => Value::Real(*f),
            Owned::Text(s) => Value::Text(s),
            Owned::Blob(b) => Value::Blob(b),
        }
    }
}

impl Column for Owned {
    const WANTED: &'static str = "a value";
    fn read(v: &Owned) -> Option<Self> {
        Some(v.clone())
    }
}

/// One row of a result.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(Vec<Owned>);

impl Row {
    /// Column `index`, read as `T`.
    pub fn get<T: Column>(&self, index: usize) -> Result<T, SqlError> {
        self.0.get(index).and_then(T::read).ok_or(SqlError::Column {
            index,
            wanted: T::WANTED,
        })
    }
}

/// What a column can be read as.
pub trait Column: Sized {
    /// What it is, for the error when it is not.
    const WANTED: &'static str;
    fn read(v: &Owned) -> Option<Self>;
}

macro_rules! int_column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            const WANTED: &'static str = concat!("an integer (", stringify!($t), ")");
            fn read(v: &Owned) -> Option<Self> {
                match v {
                    Owned::Int(i) => <$t>::try_from(*i).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_column!(i64, i32, u32, u64, u16, usize);

impl Column for bool {
    const WANTED: &'static str = "a boolean";
    fn read(v: &Owned) -> Option<Self> {
        match v {
            Owned::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl Column for f64 {
    const WANTED: &'static str = "a number";
    fn read(v: &Owned) -> Option<Self> {
        match v {
            Owned::Real(f) => Some(*f),
            Owned::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl Column for String {
    const WANTED: &'static str = "text";
    fn read(v: &Owned) -> Option<Self> {
        match v {
            Owned::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl Column for Vec<u8> {
    const WANTED: &'static str = "bytes";
    fn read(v: &Owned) -> Option<Self> {
        match v {
            Owned::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: Column> Column for Option<T> {
    const WANTED: &'static str = T::WANTED;
    fn read(v: &Owned) -> Option<Self> {
        match v {
            Owned::Null => Some(None),
            v => T::read(v).map(Some),
        }
    }
}

/// What a whole row can be read as: a [`Column`] (the first), or a tuple of them.
pub trait FromRow: Sized {
    fn from_row(r: &Row) -> Result<Self, SqlError>;
}

impl<T: Column> FromRow for T {
    fn from_row(r: &Row) -> Result<Self, SqlError> {
        r.get(0)
    }
}

macro_rules! tuple_row {
    ($(($($t:ident $i:tt),+)),*) => {$(
        impl<$($t: Column),+> FromRow for ($($t,)+) {
            fn from_row(r: &Row) -> Result<Self, SqlError> {
                Ok(($(r.get::<$t>($i)?,)+))
            }
        }
    )*};
}
tuple_row!(
    (A 0, B 1),
    (A 0, B 1, C 2),
    (A 0, B 1, C 2, D 3),
    (A 0, B 1, C 2, D 3, E 4),
    (A 0, B 1, C 2, D 3, E 4, F 5),
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6)
);

/// `sql` in PostgreSQL's words (see the module's comment): `?N` → `$N`,
/// `json_each(?N)` → `json_array_elements_text($N::json)`. Quoted text is left alone.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    let mut quoted = false;
    while let Some(c) = rest.chars().next() {
        if c == '\'' {
            quoted = !quoted;
        } else if !quoted {
            if let Some(after) = rest.strip_prefix("json_each(?") {
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0 && after[digits..].starts_with(')') {
                    out.push_str("json_array_elements_text($");
                    out.push_str(&after[..digits]);
                    out.push_str("::json)");
                    rest = &after[digits + 1..];
                    continue;
                }
            }
            if c == '?' {
                out.push('$');
                rest = &rest[1..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A PostgreSQL connection as a [`Db`]: statements outside a transaction take a pooled
/// connection each; a transaction holds one until it ends.
struct Pg {
    pool: Pool,
    rt: Arc<OwnedRuntime>,
    tx: Mutex<Option<Object>>,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Pg),
}

/// One connection to the server's database (see the module's comment). Not `Sync`: a store
/// holds one and is used by one thread at a time.
pub struct Db(Inner);

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Db").field(&self.dialect()).finish()
    }
}

/// Times a transaction that lost a race is run in all.
const ATTEMPTS: u32 = 5;

impl Db {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Db(Inner::Sqlite(conn))
    }

    pub(crate) fn postgres(pool: Pool, rt: Arc<OwnedRuntime>) -> Self {
        Db(Inner::Postgres(Pg {
            pool,
            rt,
            tx: Mutex::new(None),
        }))
    }

    pub fn dialect(&self) -> Dialect {
        match self.0 {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection, for what only the embedded store has (its backup).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.0 {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, SqlError> {
        let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
        match &self.0 {
            Inner::Sqlite(c) => {
                let n = c
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(values))?;
                Ok(n as u64)
            }
            Inner::Postgres(pg) => {
                let sql = to_postgres(sql);
                pg.run(async |c: &Object| {
                    let st = c.prepare_cached(&sql).await?;
                    Ok(c.execute(&st, &pg_args(&values)).await?)
                })
            }
        }
    }

    /// Every row of a query, read by `f`.
    pub fn map<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
        let rows = match &self.0 {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(values))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let row = (0..n)
                        .map(|i| sqlite_owned(r.get_ref(i)?, i))
                        .collect::<Result<Vec<_>, SqlError>>()?;
                    out.push(Row(row));
                }
                out
            }
            Inner::Postgres(pg) => {
                let sql = to_postgres(sql);
                pg.run(async |c: &Object| {
                    let st = c.prepare_cached(&sql).await?;
                    let rows = c.query(&st, &pg_args(&values)).await?;
                    rows.iter()
                        .map(|r| {
                            (0..r.len())
                                .map(|i| r.try_get::<_, Owned>(i).map_err(SqlError::from))
                                .collect::<Result<Vec<_>, _>>()
                                .map(Row)
                        })
                        .collect()
                })?
            }
        };
        rows.iter().map(&mut f).collect()
    }

    /// Every row of a query, as `T`.
    pub fn rows<T: FromRow>(&self, sql: &str, params: &[&dyn Param]) -> Result<Vec<T>, SqlError> {
        self.map(sql, params, T::from_row)
    }

    /// The first row of a query, if any.
    pub fn row<T: FromRow>(&self, sql: &str, params: &[&dyn Param]) -> Result<Option<T>, SqlError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    /// The first row of a query, which must exist.
    pub fn one<T: FromRow>(&self, sql: &str, params: &[&dyn Param]) -> Result<T, SqlError> {
        self.row(sql, params)?.ok_or(SqlError::NoRow)
    }

    /// Runs statements separated by `;` with no arguments (a schema).
    pub fn batch(&self, sql: &str) -> Result<(), SqlError> {
        match &self.0 {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(pg) => pg.run(async |c: &Object| Ok(c.batch_execute(sql).await?)),
        }
    }

    /// Whether a transaction is open on this connection.
    fn in_transaction(&self) -> bool {
        match &self.0 {
            Inner::Sqlite(c) => !c.is_autocommit(),
            Inner::Postgres(pg) => pg.slot().is_some(),
        }
    }

    /// Runs `f` in one transaction: its `Ok` commits, its `Err` rolls back. A transaction
    /// that lost a race with another writer is run again from the start (up to 5 times in
    /// all, after a short pause); inside a transaction already, `f` runs in it.
    pub fn transaction<T, E: From<SqlError> + LostRace>(
        &self,
        mut f: impl FnMut(&Db) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.in_transaction() {
            return f(self);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .begin()
                .map_err(E::from)
                .and_then(|()| match self.guarded(&mut f) {
                    Ok(v) => self.end(true).map(|()| v).map_err(E::from),
                    Err(e) => {
                        let _ = self.end(false);
                        Err(e)
                    }
                });
            match result {
                Err(e) if attempt < ATTEMPTS && e.lost_race() => {
                    std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
                }
                other => return other,
            }
        }
    }

    /// Runs `f` holding the lock named `key` for as long as it runs, against every other
    /// server on the database: on PostgreSQL, in a `READ COMMITTED` transaction whose first
    /// statement takes `pg_advisory_xact_lock(key)` (so each later statement sees what the
    /// lock's previous holder committed, and [`Db::transaction`]s inside `f` run in it); the
    /// embedded store has one server, so there `f` runs as it is. `f`'s `Err` rolls back.
    pub fn exclusive<T, E: From<SqlError>>(
        &self,
        key: i64,
        f: impl FnOnce(&Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let Inner::Postgres(pg) = &self.0 else {
            return f(self);
        };
        if self.in_transaction() {
            return f(self);
        }
        pg.rt()
            .block_on(async {
                let c = pg.pool.get().await?;
                c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await?;
                *pg.slot() = Some(c);
                Ok::<_, SqlError>(())
            })
            .map_err(E::from)?;
        let result = self.guarded(|db| {
            db.execute("SELECT pg_advisory_xact_lock(?1)", &[&key])
                .map_err(E::from)
                .and_then(|_| f(db))
        });
        match result {
            Ok(v) => self.end(true).map(|()| v).map_err(E::from),
            Err(e) => {
                let _ = self.end(false);
                Err(e)
            }
        }
    }

    /// Inserts `rows` (each `width` values, in the columns `head` names: `INSERT INTO t (a, b)`)
    /// in multi-row statements: a round trip per [`MANY`] rows, not per row. The statements'
    /// row counts are powers of two, so few shapes are prepared and cached.
    pub fn insert_many(
        &self,
        head: &str,
        width: usize,
        rows: &[Vec<Owned>],
    ) -> Result<(), SqlError> {
        for chunk in pieces(rows) {
            let mut sql = String::with_capacity(head.len() + chunk.len() * width * 6);
            sql.push_str(head);
            sql.push_str(" VALUES ");
            let mut n = 0;
            for (i, row) in chunk.iter().enumerate() {
                debug_assert_eq!(row.len(), width, "a row of {head} has {width} values");
                sql.push_str(if i == 0 { "(" } else { ", (" });
                for j in 0..width {
                    n += 1;
                    if j > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('?');
                    sql.push_str(&n.to_string());
                }
                sql.push(')');
            }
            let params: Vec<&dyn Param> = chunk.iter().flatten().map(|v| v as &dyn Param).collect();
            self.execute(&sql, &params)?;
        }
        Ok(())
    }

    /// The rows of `head` (a query ending in `IN`) for `keys`, in statements of up to
    /// [`MANY`] keys: `SELECT a, b FROM t WHERE k IN` + ` (?1, …)`.
    pub fn rows_in<T: FromRow>(&self, head: &str, keys: &[Owned]) -> Result<Vec<T>, SqlError> {
        let mut out = Vec::new();
        for chunk in pieces(keys) {
            let params: Vec<&dyn Param> = chunk.iter().map(|v| v as &dyn Param).collect();
            out.extend(self.rows(&format!("{head} ({})", list_of(chunk.len())), &params)?);
        }
        Ok(out)
    }

    /// `DELETE FROM table WHERE column IN (keys…)`, in statements of up to [`MANY`] keys.
    pub fn delete_in(&self, table: &str, column: &str, keys: &[Owned]) -> Result<u64, SqlError> {
        let mut deleted = 0;
        for chunk in pieces(keys) {
            let params: Vec<&dyn Param> = chunk.iter().map(|v| v as &dyn Param).collect();
            deleted += self.execute(
                &format!(
                    "DELETE FROM {table} WHERE {column} IN ({})",
                    list_of(chunk.len())
                ),
                &params,
            )?;
        }
        Ok(deleted)
    }

    /// Runs `f` in the open transaction; should `f` panic, the transaction is rolled back as
    /// the panic passes, so the connection holds no transaction afterwards (nor SQLite's
    /// write lock, nor an advisory lock that would stop every other server's projector).
    fn guarded<T>(&self, f: impl FnOnce(&Db) -> T) -> T {
        struct RollbackOnPanic<'a>(&'a Db);
        impl Drop for RollbackOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let _ = self.0.end(false);
                }
            }
        }
        let _rollback = RollbackOnPanic(self);
        f(self)
    }

    fn begin(&self) -> Result<(), SqlError> {
        match &self.0 {
            Inner::Sqlite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            Inner::Postgres(pg) => pg.rt().block_on(async {
                let c = pg.pool.get().await?;
                c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    .await?;
                *pg.slot() = Some(c);
                Ok(())
            }),
        }
    }

    fn end(&self, commit: bool) -> Result<(), SqlError> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        match &self.0 {
            Inner::Sqlite(c) => {
                let result = c.execute_batch(sql);
                if result.is_err() && !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
                Ok(result?)
            }
            Inner::Postgres(pg) => {
                let Some(c) = pg.slot().take() else {
                    return Ok(());
                };
                // A connection whose COMMIT failed goes back to the pool rolled back: a
                // failed transaction's COMMIT rolls it back.
                pg.rt().block_on(async { Ok(c.batch_execute(sql).await?) })
            }
        }
    }
}

impl Pg {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Object>> {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.get()
    }

    /// Runs `f` on the transaction's connection, or else on a pooled one.
    fn run<T>(&self, f: impl AsyncFnOnce(&Object) -> Result<T, SqlError>) -> Result<T, SqlError> {
        let slot = self.slot();
        self.rt().block_on(async {
            match slot.as_ref() {
                Some(c) => f(c).await,
                None => f(&self.pool.get().await?).await,
            }
        })
    }
}

/// Rows a multi-row statement carries at most ([`Db::insert_many`], [`Db::delete_in`]).
pub const MANY: usize = 128;

/// `?1, ?2, … ?n`.
fn list_of(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `items` in runs of [`MANY`], then the rest in runs of decreasing powers of two.
fn pieces<T>(items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let n = if rest.len() >= MANY {
            MANY
        } else {
            1 << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

fn pg_args<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn sqlite_owned(v: rusqlite::types::ValueRef<'_>, index: usize) -> Result<Owned, SqlError> {
    use rusqlite::types::ValueRef;
    Ok(match v {
        ValueRef::Null => Owned::Null,
        ValueRef::Integer(i) => Owned::Int(i),
        ValueRef::Real(f) => Owned::Real(f),
        ValueRef::Text(t) => {
            Owned::Text(String::from_utf8(t.to_vec()).map_err(|_| SqlError::Column {
                index,
                wanted: "UTF-8 text",
            })?)
        }
        ValueRef::Blob(b) => Owned::Blob(b.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_rewritten_for_postgres_outside_quotes_only() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c IN (SELECT value FROM json_each(?12))"),
            "SELECT a FROM t WHERE b = $1 AND c IN (SELECT value FROM json_array_elements_text($12::json))"
        );
        assert_eq!(to_postgres("SELECT '?1', ?2"), "SELECT '?1', $2");
        assert_eq!(to_postgres("SELECT json_each(x)"), "SELECT json_each(x)");
        assert_eq!(to_postgres("SELECT '网格' || ?1"), "SELECT '网格' || $1");
    }

    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(a_transaction_that_panics_is_rolled_back_and_holds_no_lock);

    /// A connection to the store's database (migrated), as a store opens one.
    fn db_of(s: &Store) -> Db {
        match s {
            Store::Sqlite(dir) => {
                crate::storage::SqliteStorage::open(dir.path()).unwrap();
                let c = rusqlite::Connection::open(dir.path().join("qiaomen.db")).unwrap();
                c.busy_timeout(std::time::Duration::from_millis(500))
                    .unwrap();
                Db::sqlite(c)
            }
            Store::Postgres(pg) => crate::storage::conformance::Fixture::handle(pg).db(),
        }
    }

    /// A bug that panics inside a transaction (or inside [`Db::exclusive`]) leaves the
    /// connection with no transaction open: another connection writes at once, nothing of
    /// the panicked transaction is kept, the connection's next transaction commits, and on
    /// PostgreSQL the advisory lock is free.
    fn a_transaction_that_panics_is_rolled_back_and_holds_no_lock(s: &Store) {
        let (one, two) = (db_of(s), db_of(s));
        one.batch("CREATE TABLE t_panic (n BIGINT NOT NULL)")
            .unwrap();
        const KEY: i64 = 0x0070_616e_6963;
        let count = || two.one::<i64>("SELECT count(*) FROM t_panic", &[]).unwrap();
        for (n, in_exclusive) in [(1, false), (2, true)] {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let body = |tx: &Db| -> Result<(), SqlError> {
                    tx.execute("INSERT INTO t_panic VALUES (?1)", &[&n])?;
                    panic!("a bug inside a transaction");
                };
                if in_exclusive {
                    one.exclusive(KEY, |db| db.transaction(body))
                } else {
                    one.transaction(body)
                }
            }));
            assert!(panicked.is_err());
            two.transaction(|tx| tx.execute("INSERT INTO t_panic VALUES (10)", &[]))
                .unwrap();
            assert_eq!(count(), n, "the panicked row is not kept; the other's is");
            if s.sqlite_dir().is_none() {
                let free = two
                    .transaction(|tx| {
                        tx.one::<bool>("SELECT pg_try_advisory_xact_lock(?1)", &[&KEY])
                    })
                    .unwrap();
                assert!(free, "the advisory lock was let go");
            }
        }
        one.transaction(|tx| tx.execute("INSERT INTO t_panic VALUES (3)", &[]))
            .unwrap();
        assert_eq!(count(), 3);
    }

    #[test]
    fn multi_row_statements_come_in_few_shapes_and_cover_every_row() {
        let items: Vec<usize> = (0..300).collect();
        let sizes: Vec<usize> = pieces(&items).iter().map(|p| p.len()).collect();
        assert_eq!(sizes, [128, 128, 32, 8, 4]);
        let flat: Vec<usize> = pieces(&items).concat();
        assert_eq!(flat, items);
        assert!(pieces::<u8>(&[]).is_empty());
        assert_eq!(pieces(&[1]).len(), 1);
    }
}
