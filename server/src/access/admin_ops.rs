//! The admin's operations on the org, users, assignments and enrollment codes, one function
//! each with its audit entry: `qiaomen-server admin …` ([`crate::admin`]) and the admin
//! pages (`/admin`, [`crate::http::admin_pages`]) call these and nothing else, so both do
//! the same checks and leave the same trace.

use super::{AccessDb, AccessError, Result, Role, audit::Event, org::UnitKind};
use qiaomen_protocol::{calendar::Day, ids::UserId};

/// Who does it: an admin signed in on the web (their user), or the command line on the
/// server machine.
#[derive(Debug, Clone, Copy)]
pub enum By {
    Cli,
    Web(UserId),
}

impl By {
    fn record(self, db: &AccessDb, action: &str, target: &str) -> Result<()> {
        let user = match self {
            By::Cli => None,
            By::Web(u) => Some(u.to_string()),
        };
        db.audit(Event {
            user: user.as_deref(),
            device: None,
            action,
            target: Some(target),
            outcome: match self {
                By::Cli => "ok:cli",
                By::Web(_) => "ok:web",
            },
        })
    }
}

/// A new unit of `kind` (`county`, `town`, `village`, `grid`, `team`) under `parent`, from
/// `from` on.
pub fn add_unit(
    db: &mut AccessDb,
    by: By,
    id: &str,
    kind: &str,
    parent: Option<&str>,
    name: &str,
    from: Day,
) -> Result<()> {
    let kind = UnitKind::parse(kind).ok_or_else(|| {
        AccessError::Invalid("类别须为 county、town、village、grid 或 team".into())
    })?;
    let id = id.trim();
    let name = name.trim();
    if id.is_empty() || name.is_empty() {
        return Err(AccessError::Invalid("单位需要编号和名称".into()));
    }
    db.in_transaction(|db| {
        db.add_unit(id, kind, parent.filter(|p| !p.is_empty()), name, from)?;
        by.record(db, "add_unit", id)
    })
}

/// Closes unit `id` on `on` (its history stays; nothing is assigned to it afterwards).
pub fn close_unit(db: &mut AccessDb, by: By, id: &str, on: Day) -> Result<()> {
    db.in_transaction(|db| {
        db.close_unit(id, on)?;
        by.record(db, "close_unit", id)
    })
}

/// A new user who signs in as `login`, named `name`.
pub fn add_user(db: &mut AccessDb, by: By, login: &str, name: &str) -> Result<UserId> {
    let (login, name) = (login.trim(), name.trim());
    if login.is_empty() || name.is_empty() {
        return Err(AccessError::Invalid("用户需要登录名和姓名".into()));
    }
    db.in_transaction(|db| {
        let id = db.add_user(login, name)?;
        by.record(db, "add_user", login)?;
        Ok(id)
    })
}

/// `login` takes `role` at `unit` from `from_ms` on.
pub fn assign(
    db: &mut AccessDb,
    by: By,
    login: &str,
    unit: &str,
    role: &str,
    from_ms: i64,
) -> Result<Role> {
    let role = Role::parse(role).ok_or_else(|| {
        AccessError::Invalid(format!(
            "角色须为 {} 之一",
            Role::ALL.map(|r| r.as_str()).join(", ")
        ))
    })?;
    db.in_transaction(|db| {
        db.assign(db.user_by_login(login)?, unit, role, from_ms)?;
        by.record(db, "assign", login)?;
        Ok(role)
    })
}

/// `login`'s assignments at `unit` end at `until_ms`.
pub fn unassign(db: &mut AccessDb, by: By, login: &str, unit: &str, until_ms: i64) -> Result<()> {
    db.in_transaction(|db| {
        db.unassign(db.user_by_login(login)?, unit, until_ms)?;
        by.record(db, "unassign", login)
    })
}

/// A one-time enrollment code for `login`'s next phone (valid 30 days).
pub fn issue_code(db: &mut AccessDb, by: By, login: &str) -> Result<String> {
    db.in_transaction(|db| {
        let code = db.issue_enrollment_code(db.user_by_login(login)?)?;
        by.record(db, "enrollment_code", login)?;
        Ok(code)
    })
}
