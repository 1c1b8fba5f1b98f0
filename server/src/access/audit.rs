//! The audit log: who read which household, exported what, logged in, enrolled or revoked a
//! device. Append-only (the database refuses UPDATE and DELETE on it by trigger). Entries
//! hold ids and action names only, never residents' data.

use serde::Serialize;

use super::{AccessDb, Result, now_ms};

/// One audited event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    /// The user acting (absent for a failed login of an unknown name).
    pub user: Option<String>,
    pub device: Option<String>,
    /// `login`, `enroll`, `revoke`, `token_reuse`, `household_read`, `enrollment_code`,
    /// `assign`, ... (a failure is the same action with another `outcome`).
    pub action: String,
    /// The object: a household id, a device id, a login name.
    pub target: Option<String>,
    pub outcome: String,
}

/// An event to record.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub user: Option<&'a str>,
    pub device: Option<&'a str>,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
}

impl AccessDb {
    pub fn audit(&self, e: Event<'_>) -> Result<()> {
        self.db.execute(
            "INSERT INTO audit (at_ms, actor_user, actor_device, action, target, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &[
                &now_ms(),
                &e.user,
                &e.device,
                &e.action,
                &e.target,
                &e.outcome,
            ],
        )?;
        Ok(())
    }

    /// The newest `limit` entries after `after` (oldest first).
    pub fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.audit_rows(
            "SELECT seq, at_ms, actor_user, actor_device, action, target, outcome
               FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            after,
            limit,
        )
    }

    /// The latest `limit` entries, newest first.
    pub fn audit_latest(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        self.audit_rows(
            "SELECT seq, at_ms, actor_user, actor_device, action, target, outcome
               FROM audit WHERE seq > ?1 ORDER BY seq DESC LIMIT ?2",
            0,
            limit,
        )
    }

    fn audit_rows(&self, sql: &str, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(self.db.map(sql, &[&after, &limit], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                user: r.get(2)?,
                device: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                outcome: r.get(6)?,
            })
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(the_log_is_append_only);

    fn the_log_is_append_only(s: &Store) {
        let db = s.open();
        db.audit(Event {
            user: Some("u"),
            device: None,
            action: "login",
            target: None,
            outcome: "ok",
        })
        .unwrap();
        assert!(
            db.db
                .execute("UPDATE audit SET outcome = 'x'", &[])
                .is_err()
        );
        assert!(db.db.execute("DELETE FROM audit", &[]).is_err());
        if db.db.dialect() == crate::sql::Dialect::Postgres {
            assert!(db.db.batch("TRUNCATE audit").is_err());
        }
        let log = db.audit_log(0, 10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].outcome, "ok");
    }
}
