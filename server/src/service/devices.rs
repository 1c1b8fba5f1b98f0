//! Devices: for an admin, the check that the caller is one, the list of enrolled devices, the
//! audit log, and ending a device (revoking a lost phone or retiring one handed over), audited;
//! for a supervisor, the workers' phones of their grids ([`phones_of`]).

use qiaomen_protocol::ids::{DeviceId, UserId};

use super::{Error, Result, unit_scope};
use crate::{
    access::{Role, audit::Event, now_ms},
    http::{
        AppState,
        auth::Caller,
        phones::{PhoneRow, PhonesQuery},
    },
};

/// `forbidden` unless `user` is an admin now.
pub async fn require_admin(state: &AppState, user: UserId) -> Result<()> {
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    if scope.roles.contains(&Role::Admin) {
        Ok(())
    } else {
        Err(Error::Forbidden {
            code: "forbidden",
            message: "only an admin may do this".into(),
        })
    }
}

/// A device id as a path gives it; one that does not parse is a device that does not exist.
pub fn device_id(id: &str) -> Result<DeviceId> {
    id.parse().map_err(|_| Error::not_found("no such device"))
}

/// Every enrolled device, for the admin `user`.
pub async fn devices(
    state: &AppState,
    user: UserId,
) -> Result<Vec<crate::access::tokens::DeviceRow>> {
    require_admin(state, user).await?;
    state.access(|db| db.devices()).await
}

/// The audit log after `after`, oldest first, at most `limit` (100 by default, 1000 at most)
/// entries, for the admin `user`.
pub async fn audit_log(
    state: &AppState,
    user: UserId,
    after: i64,
    limit: Option<u32>,
) -> Result<Vec<crate::access::audit::AuditEntry>> {
    require_admin(state, user).await?;
    let limit = limit.unwrap_or(100).min(1000);
    state.access(move |db| db.audit_log(after, limit)).await
}

/// Revokes (`Some(force)`) or retires (`None`) a device for an admin, audited; the device as it
/// was (`device_has_pending` while a device to revoke without `force` last reported unsent
/// work). The API's and the pages'.
pub async fn end_device(
    state: &AppState,
    user: UserId,
    device: qiaomen_protocol::ids::DeviceId,
    revoke: Option<bool>,
) -> Result<crate::access::tokens::DeviceRow> {
    state
        .access(move |db| {
            let (action, done) = match revoke {
                Some(force) => (
                    "revoke",
                    db.revoke_device_guarded(device, force)?.map_err(|held| held.0),
                ),
                None => ("retire", Ok(db.retire_device(device)?)),
            };
            db.audit(Event {
                user: Some(&user.to_string()),
                device: None,
                action,
                target: Some(&device.to_string()),
                outcome: if done.is_ok() { "ok" } else { "device_has_pending" },
            })?;
            Ok(done)
        })
        .await?
        .map_err(|held| Error::Conflict {
            code: "device_has_pending",
            message: format!(
                "the device last reported {} records it has not uploaded; retire it instead, or revoke with force=true if the phone is lost",
                held.pending.unwrap_or_default()
            ),
        })
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The phones of the grids `caller` supervises below `unit`.
pub async fn phones_of(
    state: &AppState,
    caller: &Caller,
    q: &PhonesQuery,
) -> Result<Vec<PhoneRow>> {
    if q.stale_days.is_some_and(|d| d > 3650) {
        return Err(Error::invalid("stale_days is 0-3650"));
    }
    let us = unit_scope(state, caller, q.unit.clone()).await?;
    let user = caller.user();
    let now = now_ms();
    let grids = us.grids.clone();
    let phones = state
        .access(move |db| {
            let scope = db.scope(user, now)?;
            // Only a supervisor of a grid watches its phones.
            let grids: Vec<String> = grids
                .into_iter()
                .filter(|g| scope.supervises(g, now))
                .collect();
            db.grid_phones(&grids, now)
        })
        .await?;
    let devices: Vec<String> = phones.iter().map(|p| p.device.clone()).collect();
    let labels = state.access(move |db| db.device_labels(&devices)).await?;
    let rows = phones
        .into_iter()
        .map(|p| {
            let days = p.last_sync_ms.map(|t| (now - t).max(0) / DAY_MS);
            PhoneRow {
                grid_name: us.grid_names.get(&p.grid).unwrap_or(&p.grid).clone(),
                label: labels
                    .get(&p.device)
                    .cloned()
                    .unwrap_or_else(|| format!("{}的手机", p.worker)),
                grid: p.grid,
                device: p.device,
                worker: p.user,
                worker_name: p.worker,
                enrolled_ms: p.enrolled_ms,
                last_sync_ms: p.last_sync_ms,
                days_since_sync: days,
                pending: p.pending,
                agent: p.agent,
                status: if p.retiring { "retiring" } else { "active" }.to_string(),
            }
        })
        .filter(|r| match q.stale_days {
            None => true,
            Some(n) => r.days_since_sync.is_none_or(|d| d >= i64::from(n)),
        })
        .collect();
    Ok(rows)
}
