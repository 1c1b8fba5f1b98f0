//! The org hierarchy (county → town → village/community → grid), users, and role assignments.
//!
//! Units and assignments are dated: a re-division closes a unit (`valid_until`) and opens new
//! ones, and moving a worker ends one assignment and starts another, so history stays
//! answerable ("who was responsible for this grid on the 15th?"). A household belongs to a grid
//! through its record's `grid` field; a grid unit's id is that code.

use std::collections::BTreeSet;

use qiaomen_protocol::{calendar::Day, ids::UserId, policy::Rights};
use serde::Serialize;

use super::{AccessDb, AccessError, Result, now_ms};

/// The kinds of org units, top to bottom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    County,
    Town,
    Village,
    Grid,
    /// A department or service team (职能部门/服务队) that handles dispatched work orders;
    /// under the county or a town.
    Team,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::County => "county",
            UnitKind::Town => "town",
            UnitKind::Village => "village",
            UnitKind::Grid => "grid",
            UnitKind::Team => "team",
        }
    }

    /// Every kind, top to bottom.
    pub const ALL: [UnitKind; 5] = [
        Self::County,
        Self::Town,
        Self::Village,
        Self::Grid,
        Self::Team,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kinds a unit's parent may have (empty: a root).
    fn parents(self) -> &'static [UnitKind] {
        match self {
            UnitKind::County => &[],
            UnitKind::Town => &[UnitKind::County],
            UnitKind::Village => &[UnitKind::Town],
            UnitKind::Grid => &[UnitKind::Village],
            UnitKind::Team => &[UnitKind::County, UnitKind::Town],
        }
    }
}

/// What a user does at an org unit, and one grid a user may write during a period: the
/// protocol's, so phone and server judge by the same types.
pub use qiaomen_protocol::policy::{Grant, Role};

/// What a user may read and write: computed from their assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Every grant, past and present (a change made while the user held a grid is accepted
    /// when it arrives after the user moved on), in a stable order, the teams the user works
    /// in now and when it was computed: what the protocol's rules
    /// ([`qiaomen_protocol::policy`]) and the phone (the sync response's `u`) judge by.
    pub rights: Rights,
    /// The roles the user holds now.
    pub roles: BTreeSet<Role>,
    /// Grids whose households the user may read now.
    pub read: BTreeSet<String>,
}

impl Scope {
    /// What the user may do, as the protocol's rules see it.
    pub fn rights(&self) -> &Rights {
        &self.rights
    }

    /// Whether the user may write a household of `grid` with a change made at `change_ms`
    /// ([`Rights::may_write`]).
    pub fn may_write(&self, grid: &str, change_ms: i64) -> bool {
        self.rights.may_write(grid, change_ms)
    }

    /// Whether the user supervises `grid` (now, or at `change_ms`).
    pub fn supervises(&self, grid: &str, change_ms: i64) -> bool {
        self.rights.supervises(grid, change_ms)
    }

    /// Whether the user held `grid` in a role that records visits in the cycle of
    /// `visit_day` ([`Rights::held_for_cycle`]).
    pub fn held_for_cycle(&self, grid: &str, visit_day: qiaomen_protocol::calendar::Day) -> bool {
        self.rights.held_for_cycle(grid, visit_day)
    }

    pub fn may_read(&self, grid: &str) -> bool {
        self.read.contains(grid)
    }

    /// What the user is to the work orders of `grid`'s households, for a step made at
    /// `change_ms`.
    pub fn party(&self, grid: &str, change_ms: i64) -> qiaomen_protocol::workorder::Party {
        self.rights.party(grid, change_ms)
    }
}

/// An assignment as listed: (login, role, unit, from ms, until ms).
pub type AssignmentRow = (String, String, String, i64, Option<i64>);

/// A phone of a grid's worker, as the supervisors' list of phones shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridPhone {
    pub grid: String,
    pub device: String,
    pub user: String,
    /// The worker's name.
    pub worker: String,
    pub enrolled_ms: i64,
    pub last_sync_ms: Option<i64>,
    /// What it reported still holding after its last sync.
    pub pending: Option<i64>,
    /// What it said it runs (library and app versions).
    pub agent: Option<String>,
    /// An admin retired it: it uploads what it holds, then ends.
    pub retiring: bool,
}

/// An org unit as listed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Unit {
    pub id: String,
    pub parent: Option<String>,
    pub kind: UnitKind,
    pub name: String,
    pub valid_from: String,
    pub valid_until: Option<String>,
}

/// Milliseconds at 00:00 China Standard Time (UTC+8) of `day`.
pub fn day_start_ms(day: Day) -> i64 {
    let midnight = day.0.midnight().assume_utc().unix_timestamp();
    (midnight - 8 * 3600) * 1000
}

impl AccessDb {
    /// The kind of a unit, if it exists.
    fn unit_kind(&self, id: &str) -> Result<Option<UnitKind>> {
        let kind: Option<String> = self
            .db
            .row("SELECT kind FROM org_units WHERE id = ?1", &[&id])?;
        Ok(kind.as_deref().and_then(UnitKind::parse))
    }

    /// The kind of a unit, if it exists.
    pub fn unit_kind_of(&self, id: &str) -> Result<Option<UnitKind>> {
        self.unit_kind(id)
    }

    /// Creates an org unit under `parent` (a grid under a village, a village under a town, a
    /// town under the county).
    pub fn add_unit(
        &self,
        id: &str,
        kind: UnitKind,
        parent: Option<&str>,
        name: &str,
        valid_from: Day,
    ) -> Result<()> {
        if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_whitespace()) {
            return Err(AccessError::Invalid(
                "a unit id is 1-64 characters without spaces".into(),
            ));
        }
        let wanted = kind.parents();
        match (wanted.is_empty(), parent) {
            (true, None) => {}
            (true, Some(_)) => return Err(AccessError::Invalid("a county has no parent".into())),
            (false, None) => {
                return Err(AccessError::Invalid(format!(
                    "a {} needs a parent unit",
                    kind.as_str()
                )));
            }
            (false, Some(p)) => match self.unit_kind(p)? {
                Some(k) if wanted.contains(&k) => {}
                Some(_) => {
                    let names: Vec<&str> = wanted.iter().map(|k| k.as_str()).collect();
                    return Err(AccessError::Invalid(format!(
                        "the parent of a {} must be a {}",
                        kind.as_str(),
                        names.join(" or ")
                    )));
                }
                None => return Err(AccessError::NotFound("parent unit")),
            },
        }
        if self.unit_kind(id)?.is_some() {
            return Err(AccessError::Invalid(format!("unit {id} exists already")));
        }
        self.db.execute(
            "INSERT INTO org_units (id, parent, kind, name, valid_from) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[&id, &parent, &kind.as_str(), &name, &valid_from.to_string()],
        )?;
        Ok(())
    }

    /// Creates the unit unless a unit of that id and kind exists already (for imports that
    /// may run twice).
    pub fn ensure_unit(
        &self,
        id: &str,
        kind: UnitKind,
        parent: Option<&str>,
        name: &str,
        valid_from: Day,
    ) -> Result<()> {
        match self.unit_kind(id)? {
            Some(k) if k == kind => Ok(()),
            Some(_) => Err(AccessError::Invalid(format!(
                "unit {id} exists with another kind"
            ))),
            None => self.add_unit(id, kind, parent, name, valid_from),
        }
    }

    /// Closes a unit on `day` (a re-division); its history and households stay.
    pub fn close_unit(&self, id: &str, day: Day) -> Result<()> {
        let n = self.db.execute(
            "UPDATE org_units SET valid_until = ?2 WHERE id = ?1 AND valid_until IS NULL",
            &[&id, &day.to_string()],
        )?;
        if n == 0 {
            return Err(AccessError::NotFound("open unit"));
        }
        Ok(())
    }

    pub fn units(&self) -> Result<Vec<Unit>> {
        Ok(self.db.map(
            "SELECT id, parent, kind, name, valid_from, valid_until FROM org_units ORDER BY id",
            &[],
            unit_row,
        )?)
    }

    /// The units a user may see now: every unit at or below the units of their current
    /// assignments that grant reading records, parents before children.
    pub fn visible_units(&self, user: UserId, at_ms: i64) -> Result<Vec<Unit>> {
        Ok(self.db.map(
            "WITH RECURSIVE sub(id, depth) AS (
                SELECT unit, 0 FROM assignments
                 WHERE \"user\" = ?1 AND role <> 'admin' AND valid_from_ms <= ?2
                   AND (valid_until_ms IS NULL OR ?2 < valid_until_ms)
                UNION SELECT o.id, sub.depth + 1 FROM org_units o JOIN sub ON o.parent = sub.id)
             SELECT o.id, o.parent, o.kind, o.name, o.valid_from, o.valid_until, min(sub.depth)
               FROM sub JOIN org_units o ON o.id = sub.id
              GROUP BY o.id ORDER BY min(sub.depth), o.id",
            &[&user.to_string(), &at_ms],
            unit_row,
        )?)
    }

    /// The grids at or below `unit`.
    pub fn grids_below(&self, unit: &str) -> Result<Vec<String>> {
        Ok(self.db.rows(
            "WITH RECURSIVE sub(id, kind) AS (
                SELECT id, kind FROM org_units WHERE id = ?1
                UNION SELECT o.id, o.kind FROM org_units o JOIN sub ON o.parent = sub.id)
             SELECT id FROM sub WHERE kind = 'grid' ORDER BY id",
            &[&unit],
        )?)
    }

    /// Creates a user. `login` is what a supervisor types to sign in.
    pub fn add_user(&self, login: &str, name: &str) -> Result<UserId> {
        if login.is_empty() || login.len() > 64 || login.chars().any(|c| c.is_whitespace()) {
            return Err(AccessError::Invalid(
                "a login is 1-64 characters without spaces".into(),
            ));
        }
        let id = UserId::new();
        let inserted = self.db.execute(
            "INSERT INTO users (id, login, name, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            &[&id.to_string(), &login, &name, &now_ms()],
        )?;
        if inserted == 0 {
            return Err(AccessError::Invalid(format!("login {login} is taken")));
        }
        Ok(id)
    }

    /// The display names of users (staff, not residents), by id; unknown ids are left out.
    pub fn user_names(&self, ids: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
        let mut out = std::collections::BTreeMap::new();
        for id in ids {
            if let Some(name) = self
                .db
                .row::<String>("SELECT name FROM users WHERE id = ?1", &[id])?
            {
                out.insert(id.clone(), name);
            }
        }
        Ok(out)
    }

    /// Devices as a person names them: `张伟的手机，12-01 登记` (a web session's device:
    /// `张伟（网页）`). Unknown ids are left out.
    pub fn device_labels(
        &self,
        ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let mut out = std::collections::BTreeMap::new();
        for id in ids {
            let row: Option<(String, String, i64)> = self.db.row(
                "SELECT u.name, d.install_id, d.enrolled_ms FROM devices d
                   JOIN users u ON u.id = d.\"user\" WHERE d.id = ?1",
                &[id],
            )?;
            if let Some((name, install, enrolled_ms)) = row {
                let label = if install == "web" {
                    format!("{name}（网页）")
                } else {
                    // `2026-12-01 09:30` → `12-01`.
                    let day = qiaomen_protocol::present::datetime(enrolled_ms);
                    let md = day.get(5..10).unwrap_or("");
                    format!("{name}的手机，{md} 登记")
                };
                out.insert(id.clone(), label);
            }
        }
        Ok(out)
    }

    /// When each phone in service (not revoked nor retired, web sessions left out) last
    /// synced (`None`: never), for the metrics.
    pub fn active_device_syncs(&self) -> Result<Vec<Option<i64>>> {
        Ok(self.db.rows(
            "SELECT last_sync_ms FROM devices
              WHERE install_id <> 'web' AND revoked_ms IS NULL AND retired_ms IS NULL",
            &[],
        )?)
    }

    /// The phones of the workers of `grids` at `at_ms` (grid workers and grid heads, devices
    /// not revoked nor retired, web sessions' devices left out), by grid and worker.
    pub fn grid_phones(&self, grids: &[String], at_ms: i64) -> Result<Vec<GridPhone>> {
        let mut out: Vec<GridPhone> = Vec::new();
        for grid in grids {
            let rows = self.db.map(
                "SELECT d.id, d.\"user\", u.name, d.enrolled_ms, d.last_sync_ms, d.last_pending,
                        d.agent, d.retire_ms IS NOT NULL
                   FROM assignments a JOIN users u ON u.id = a.\"user\"
                   JOIN devices d ON d.\"user\" = a.\"user\"
                  WHERE a.unit = ?1 AND a.role IN ('grid_worker', 'grid_head')
                    AND a.valid_from_ms <= ?2 AND (a.valid_until_ms IS NULL OR a.valid_until_ms > ?2)
                    AND d.install_id <> 'web' AND d.revoked_ms IS NULL AND d.retired_ms IS NULL
                  ORDER BY u.name, d.enrolled_ms",
                &[grid, &at_ms],
                |r| {
                Ok(GridPhone {
                    grid: grid.clone(),
                    device: r.get(0)?,
                    user: r.get(1)?,
                    worker: r.get(2)?,
                    enrolled_ms: r.get(3)?,
                    last_sync_ms: r.get(4)?,
                    pending: r.get(5)?,
                    agent: r.get(6)?,
                    retiring: r.get(7)?,
                })
            },
            )?;
            for row in rows {
                // A grid head who is also its worker holds one phone once.
                if !out
                    .iter()
                    .any(|p| p.grid == row.grid && p.device == row.device)
                {
                    out.push(row);
                }
            }
        }
        Ok(out)
    }

    pub fn user_by_login(&self, login: &str) -> Result<UserId> {
        let id: Option<String> = self
            .db
            .row("SELECT id FROM users WHERE login = ?1", &[&login])?;
        id.and_then(|s| s.parse().ok())
            .ok_or(AccessError::NotFound("user"))
    }

    /// The user with this id or this login, if there is one.
    pub fn user_by_id_or_login(&self, id_or_login: &str) -> Result<Option<UserId>> {
        let id: Option<String> = self.db.row(
            "SELECT id FROM users WHERE id = ?1 OR login = ?1 ORDER BY (id = ?1) DESC LIMIT 1",
            &[&id_or_login],
        )?;
        Ok(id.and_then(|s| s.parse().ok()))
    }

    /// Assigns `user` to `unit` with `role` from `from_ms` on.
    pub fn assign(&self, user: UserId, unit: &str, role: Role, from_ms: i64) -> Result<()> {
        let kind = self.unit_kind(unit)?.ok_or(AccessError::NotFound("unit"))?;
        if matches!(role, Role::GridWorker | Role::GridHead) && kind != UnitKind::Grid {
            return Err(AccessError::Invalid(format!(
                "a {} is assigned to a grid",
                role.as_str()
            )));
        }
        if (role == Role::TeamMember) != (kind == UnitKind::Team) {
            return Err(AccessError::Invalid(
                "team members, and only they, are assigned to a team".into(),
            ));
        }
        self.db.execute(
            "INSERT INTO assignments (\"user\", unit, role, valid_from_ms) VALUES (?1, ?2, ?3, ?4)",
            &[&user.to_string(), &unit, &role.as_str(), &from_ms],
        )?;
        Ok(())
    }

    /// Ends `user`'s open assignments at `unit` at `until_ms`.
    pub fn unassign(&self, user: UserId, unit: &str, until_ms: i64) -> Result<()> {
        let n = self.db.execute(
            "UPDATE assignments SET valid_until_ms = ?3
              WHERE \"user\" = ?1 AND unit = ?2 AND valid_until_ms IS NULL",
            &[&user.to_string(), &unit, &until_ms],
        )?;
        if n == 0 {
            return Err(AccessError::NotFound("open assignment"));
        }
        Ok(())
    }

    /// What `user` may read and write at `at_ms`.
    pub fn scope(&self, user: UserId, at_ms: i64) -> Result<Scope> {
        let rows: Vec<(String, String, i64, Option<i64>)> = self.db.rows(
            "SELECT unit, role, valid_from_ms, valid_until_ms FROM assignments
              WHERE \"user\" = ?1 ORDER BY id",
            &[&user.to_string()],
        )?;
        let mut scope = Scope::default();
        scope.rights.at_ms = at_ms;
        for (unit, role, from_ms, until_ms) in rows {
            let Some(role) = Role::parse(&role) else {
                continue;
            };
            let grant_now = from_ms <= at_ms && until_ms.is_none_or(|u| at_ms < u);
            if grant_now {
                scope.roles.insert(role);
                if role == Role::TeamMember {
                    scope.rights.teams.insert(unit.clone());
                }
            }
            for grid in self.grids_below(&unit)? {
                if grant_now && role.reads_records() {
                    scope.read.insert(grid.clone());
                }
                scope.rights.grants.push(Grant {
                    grid,
                    role,
                    from_ms,
                    until_ms,
                });
            }
        }
        scope.rights.grants.sort();
        scope.rights.grants.dedup();
        Ok(scope)
    }

    /// The grid worker of `grid` at `at_ms` (the longest-assigned if several), if any.
    pub fn grid_worker(&self, grid: &str, at_ms: i64) -> Result<Option<UserId>> {
        let id: Option<String> = self.db.row(
            "SELECT \"user\" FROM assignments
              WHERE unit = ?1 AND role = 'grid_worker' AND valid_from_ms <= ?2
                AND (valid_until_ms IS NULL OR ?2 < valid_until_ms)
              ORDER BY valid_from_ms, id LIMIT 1",
            &[&grid, &at_ms],
        )?;
        Ok(id.and_then(|s| s.parse().ok()))
    }

    /// Every assignment, for the CLI.
    pub fn assignments(&self) -> Result<Vec<AssignmentRow>> {
        Ok(self.db.rows(
            "SELECT u.login, a.role, a.unit, a.valid_from_ms, a.valid_until_ms
               FROM assignments a JOIN users u ON u.id = a.\"user\"
              ORDER BY u.login, a.valid_from_ms, a.id",
            &[],
        )?)
    }
}

/// An `org_units` row selected as (id, parent, kind, name, valid_from, valid_until).
fn unit_row(r: &crate::sql::Row) -> std::result::Result<Unit, crate::sql::SqlError> {
    Ok(Unit {
        id: r.get(0)?,
        parent: r.get(1)?,
        kind: UnitKind::parse(&r.get::<String>(2)?).unwrap_or(UnitKind::Grid),
        name: r.get(3)?,
        valid_from: r.get(4)?,
        valid_until: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(units_nest_by_kind_and_scope_follows_assignments_over_time);

    fn day(s: &str) -> Day {
        s.parse().unwrap()
    }

    fn units_nest_by_kind_and_scope_follows_assignments_over_time(s: &Store) {
        let db = s.open();
        let d0 = day("2026-01-01");
        db.add_unit("c", UnitKind::County, None, "县", d0).unwrap();
        db.add_unit("t", UnitKind::Town, Some("c"), "镇", d0)
            .unwrap();
        db.add_unit("v", UnitKind::Village, Some("t"), "村", d0)
            .unwrap();
        db.add_unit("g1", UnitKind::Grid, Some("v"), "一", d0)
            .unwrap();
        db.add_unit("g2", UnitKind::Grid, Some("v"), "二", d0)
            .unwrap();
        assert!(matches!(
            db.add_unit("x", UnitKind::Grid, Some("t"), "bad", d0),
            Err(AccessError::Invalid(_))
        ));
        assert!(
            db.add_unit("g1", UnitKind::Grid, Some("v"), "dup", d0)
                .is_err()
        );
        let w = db.add_user("w", "王").unwrap();
        assert!(
            db.assign(w, "v", Role::GridWorker, 0).is_err(),
            "a worker works a grid"
        );
        db.assign(w, "g1", Role::GridWorker, 1_000).unwrap();
        db.unassign(w, "g1", 5_000).unwrap();
        db.assign(w, "g2", Role::GridWorker, 5_000).unwrap();
        let s = db.scope(w, 6_000).unwrap();
        assert_eq!(s.read, BTreeSet::from(["g2".to_string()]));
        assert!(s.may_write("g2", 6_000));
        assert!(
            s.may_write("g1", 2_000),
            "work done while assigned is accepted later"
        );
        assert!(!s.may_write("g1", 5_500));
        assert!(!s.supervises("g2", 6_000));
        let sup = db.add_user("s", "李").unwrap();
        db.assign(sup, "t", Role::TownSupervisor, 0).unwrap();
        let s = db.scope(sup, 1).unwrap();
        assert_eq!(s.read.len(), 2);
        assert!(s.supervises("g1", 1));
        let admin = db.add_user("a", "管理员").unwrap();
        db.assign(admin, "c", Role::Admin, 0).unwrap();
        let s = db.scope(admin, 1).unwrap();
        assert!(s.read.is_empty(), "an admin reads no records");
        assert!(!s.may_write("g1", 1));
    }
}
