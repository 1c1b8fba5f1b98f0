//! What the servers of one database agree on through it: **leases** (one holder at a time of
//! a named piece of work, such as a hotline import, across every server), the **settings**
//! every server must run with (the workflow: deadlines, holidays, the visit rotation), and
//! **token buckets** that must count across servers (failed logins per login name: a
//! password guessed through several servers is still guessed once per bucket).
//!
//! A lease ends when its holder releases it or when its time runs out, so a server that dies
//! holding one stops no one for longer than the lease. Settings are recorded by the first
//! server that starts on the database; a server started with other settings refuses to start
//! (`admin workflow set` replaces them, for servers started after).

use super::{AccessDb, Result, now_ms};

/// The token buckets (migration 14 of the embedded store).
pub const BUCKETS_SCHEMA: &str = r#"
CREATE TABLE buckets (
    key    TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    at_ms  INTEGER NOT NULL
);
"#;

/// The SQLite tables (migration 13 of the embedded store; PostgreSQL's are in its own
/// migrations).
pub const SHARED_SCHEMA: &str = r#"
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

impl AccessDb {
    /// Takes lease `name` for `holder` for `ttl_ms` unless someone else holds it now;
    /// returns whether `holder` holds it. Taking a lease one holds already extends it.
    pub fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let now = now_ms();
        let n = self.db.execute(
            "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
              WHERE leases.until_ms <= ?4 OR leases.holder = excluded.holder",
            &[&name, &holder, &(now + ttl_ms), &now],
        )?;
        Ok(n > 0)
    }

    /// Gives lease `name` back, if `holder` holds it.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.db.execute(
            "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
            &[&name, &holder],
        )?;
        Ok(())
    }

    /// The settings recorded as `name`, recording `value` if there are none yet: what every
    /// server on this database must run with.
    pub fn agreed_setting(&self, name: &str, value: &str) -> Result<String> {
        self.db.execute(
            "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            &[&name, &value],
        )?;
        Ok(self
            .db
            .one("SELECT value FROM settings WHERE name = ?1", &[&name])?)
    }

    /// Takes one token of bucket `key` (`burst` tokens at most, refilled at `per_second`);
    /// `false` when it is empty. An empty bucket is answered by a read alone, so a flood of
    /// refused attempts writes nothing.
    pub fn take_token(&self, key: &str, burst: f64, per_second: f64) -> Result<bool> {
        let now = now_ms();
        let level = |stored: Option<(f64, i64)>| {
            stored.map_or(burst, |(tokens, at)| {
                (tokens + (now - at).max(0) as f64 / 1000.0 * per_second).min(burst)
            })
        };
        let read = "SELECT tokens, at_ms FROM buckets WHERE key = ?1";
        if level(self.db.row(read, &[&key])?) < 1.0 {
            return Ok(false);
        }
        self.db.transaction(|tx| {
            let tokens = level(tx.row(read, &[&key])?);
            if tokens < 1.0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO buckets (key, tokens, at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
                &[&key, &(tokens - 1.0), &now],
            )?;
            Ok(true)
        })
    }

    /// Counts `bytes` of photos accepted from `device` on `day` (UTC, `YYYY-MM-DD`) if the
    /// day's count stays within `limit`; `false` (nothing counted) otherwise. One statement,
    /// so servers sharing the database count against one budget.
    pub fn take_photo_bytes(
        &self,
        device: &str,
        day: &str,
        bytes: u64,
        limit: u64,
    ) -> Result<bool> {
        if bytes > limit {
            return Ok(false);
        }
        let (bytes, limit) = (bytes as i64, i64::try_from(limit).unwrap_or(i64::MAX));
        let n = self.db.execute(
            "INSERT INTO photo_quota (device, day, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (device, day) DO UPDATE SET bytes = photo_quota.bytes + excluded.bytes
              WHERE photo_quota.bytes + excluded.bytes <= ?4",
            &[&device, &day, &bytes, &limit],
        )?;
        Ok(n > 0)
    }

    /// Gives back a token taken from bucket `key` (the attempt turned out harmless).
    pub fn refund_token(&self, key: &str, burst: f64) -> Result<()> {
        self.db.execute(
            "UPDATE buckets SET tokens = CASE WHEN tokens + 1 < ?2 THEN tokens + 1 ELSE ?2 END
              WHERE key = ?1",
            &[&key, &burst],
        )?;
        Ok(())
    }

    /// The settings recorded as `name`, if any.
    pub fn agreed_setting_if_any(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .row("SELECT value FROM settings WHERE name = ?1", &[&name])?)
    }

    /// Replaces the settings recorded as `name` (for servers started from now on).
    pub fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO settings (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(
        a_lease_has_one_holder_until_released_or_over,
        the_first_settings_recorded_are_everyones,
        a_bucket_counts_across_servers,
    );

    fn a_bucket_counts_across_servers(s: &Store) {
        let (a, b) = (s.open(), s.open());
        // Three tokens, refilled too slowly to matter here; two servers take them in turn.
        let rate = 1.0 / 3600.0;
        assert!(a.take_token("login:w", 3.0, rate).unwrap());
        assert!(b.take_token("login:w", 3.0, rate).unwrap());
        assert!(a.take_token("login:w", 3.0, rate).unwrap());
        assert!(
            !b.take_token("login:w", 3.0, rate).unwrap(),
            "empty on every server"
        );
        assert!(
            b.take_token("login:other", 3.0, rate).unwrap(),
            "one bucket a key"
        );
        b.refund_token("login:w", 3.0).unwrap();
        assert!(a.take_token("login:w", 3.0, rate).unwrap(), "refunded");
        assert!(!a.take_token("login:w", 3.0, rate).unwrap());
        // A fast refill fills it again.
        assert!(a.take_token("fast", 1.0, 1e6).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(b.take_token("fast", 1.0, 1e6).unwrap());
    }

    fn a_lease_has_one_holder_until_released_or_over(s: &Store) {
        let (a, b) = (s.open(), s.open());
        assert!(a.take_lease("import", "server-a", 60_000).unwrap());
        assert!(!b.take_lease("import", "server-b", 60_000).unwrap(), "held");
        assert!(
            a.take_lease("import", "server-a", 60_000).unwrap(),
            "extended"
        );
        b.release_lease("import", "server-b").unwrap();
        assert!(
            !b.take_lease("import", "server-b", 60_000).unwrap(),
            "not b's to release"
        );
        a.release_lease("import", "server-a").unwrap();
        assert!(b.take_lease("import", "server-b", 0).unwrap(), "released");
        // b's lease of no time is over at once: a dead holder stops no one.
        assert!(
            a.take_lease("import", "server-a", 60_000).unwrap(),
            "ran out"
        );
        // Servers racing for a free lease: one wins.
        a.release_lease("import", "server-a").unwrap();
        let won: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let db = s.open();
                    scope.spawn(move || db.take_lease("race", &format!("s{i}"), 60_000).unwrap())
                })
                .collect();
            threads
                .into_iter()
                .map(|t| usize::from(t.join().unwrap()))
                .sum()
        });
        assert_eq!(won, 1);
    }

    fn the_first_settings_recorded_are_everyones(s: &Store) {
        let (a, b) = (s.open(), s.open());
        assert_eq!(
            a.agreed_setting("workflow", "{\"x\":1}").unwrap(),
            "{\"x\":1}"
        );
        assert_eq!(
            b.agreed_setting("workflow", "{\"x\":2}").unwrap(),
            "{\"x\":1}"
        );
        b.set_setting("workflow", "{\"x\":2}").unwrap();
        assert_eq!(
            a.agreed_setting("workflow", "{\"x\":1}").unwrap(),
            "{\"x\":2}"
        );
    }
}
