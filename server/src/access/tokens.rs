//! Enrollment codes, device tokens, passwords and sessions.
//!
//! - An **enrollment code** (`ABCD-EFGH-JKLM`, 60 random bits, valid 30 days, one use) is issued
//!   by an admin for one user. A phone enrolls once with it and an `install_id` it chose and
//!   saved first; it gets a device id and a device token. A retry of the same enrollment (same
//!   code, same install id, the token never used) answers again with a fresh token, so a lost
//!   response does not burn the code.
//! - A **device token** (`qm_d_…`, 256 random bits) is opaque and stored as its SHA-256 hash.
//!   Rotation issues a successor; the old token stays valid until the successor is first used
//!   (the answer may have been lost), then it is retired. A retired token presented again means
//!   two parties hold it: the device is revoked and must enroll again (reuse detection).
//! - A **session** (`qm_s_…`) follows a password login (argon2id); it lasts 12 hours.
//! - A device is taken away in one of two ways. **Retire** (a handover, the phone is in the
//!   admin's hands): its syncs go on being accepted and stored, each answer says `retiring`, and
//!   when the phone reports nothing left to upload (a request with no changes and `p = 0`) the
//!   device ends (`retired`): the phone wipes, its token is refused `device_retired`.
//!   **Revoke** (lost or stolen): its tokens are refused `device_revoked` at once and the phone
//!   wipes on its next request, losing what it had not uploaded. Each sync records when it
//!   happened and what the phone still held after it ([`AccessDb::record_sync`]), so an admin
//!   sees both before choosing; [`AccessDb::revoke_device_guarded`] refuses to revoke a device
//!   that last reported pending work unless forced.

use crate::sql::{Row, SqlError};
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::Engine;
use qiaomen_protocol::ids::{DeviceId, UserId};
use sha2::{Digest, Sha256};

use super::{AccessDb, AccessError, Result, now_ms};

/// How long an enrollment code can be used.
pub const CODE_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long a session lasts.
pub const SESSION_LIFETIME_MS: i64 = 12 * 3600 * 1000;
/// How precisely a device's `last_seen` is kept (a write at most this often per device).
pub const LAST_SEEN_GRAIN_MS: i64 = 3600 * 1000;
/// How precisely a device's last sync is kept for idle checks: a sync that uploaded, changed
/// what the phone reports pending, or came from a retiring device is always recorded; an idle
/// check at most this often per device (idle checks stay read-only, see
/// [`AccessDb::authenticate_device`]).
pub const LAST_SYNC_GRAIN_MS: i64 = 10 * 60 * 1000;
/// A device token older than this is rotated after the next sync.
pub const ROTATE_AFTER_MS: i64 = 7 * 24 * 3600 * 1000;

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

fn salt() -> SaltString {
    SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes make a valid salt")
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn new_token(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

/// An enrollment code as typed: case, spaces and dashes do not matter.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// A device as the server knows it after authenticating its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePrincipal {
    pub device: DeviceId,
    pub user: UserId,
    /// The token should be rotated ([`AccessDb::rotate`]) after this request.
    pub rotate: bool,
    /// An admin retired the device: it may upload what it holds, then it ends.
    pub retiring: bool,
    /// When its last sync was recorded, and what it reported pending then.
    pub last_sync_ms: Option<i64>,
    pub last_pending: Option<i64>,
    /// The digest ([`qiaomen_protocol::wire::fnv1a`]) of the agent it last reported.
    pub agent_digest: Option<u64>,
}

/// Why a token was not accepted; each is a 401 with its own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a token this server issued (or a session that ended).
    Unknown,
    /// The device was revoked: the phone must wipe this user's data.
    Revoked,
    /// The device was retired and has ended (it had uploaded everything): the phone wipes
    /// this user's data (if it still holds some, it keeps what is unacknowledged).
    Retired,
    /// A retired token came back: it was copied. The device is revoked.
    Reused,
    /// The session expired.
    Expired,
}

impl TokenRefusal {
    pub fn code(self) -> &'static str {
        match self {
            TokenRefusal::Unknown => "unauthenticated",
            TokenRefusal::Revoked => "device_revoked",
            TokenRefusal::Retired => "device_retired",
            TokenRefusal::Reused => "token_reused",
            TokenRefusal::Expired => "session_expired",
        }
    }
}

/// What an enrollment gives the phone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub device: DeviceId,
    pub user: UserId,
    pub token: String,
}

/// Why an enrollment failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollRefusal {
    /// No such code (mistyped, or never issued).
    Invalid,
    /// The code was used by another install.
    Used,
    Expired,
}

impl EnrollRefusal {
    pub fn code(self) -> &'static str {
        match self {
            EnrollRefusal::Invalid => "enrollment_code_invalid",
            EnrollRefusal::Used => "enrollment_code_used",
            EnrollRefusal::Expired => "enrollment_code_expired",
        }
    }
}

/// Where a device stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Active,
    /// Retired by an admin; it may still upload what it holds, then it ends.
    Retiring,
    /// Retired, and it ended after uploading everything: its data is off the phone.
    Retired,
    /// Revoked: refused at once; whatever it had not uploaded is lost.
    Revoked,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Retiring => "retiring",
            DeviceStatus::Retired => "retired",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

/// A device as listed for an admin.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceRow {
    pub device: String,
    pub login: String,
    pub status: DeviceStatus,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    /// When an admin retired it.
    pub retire_ms: Option<i64>,
    /// When it ended after its retirement (it had uploaded everything).
    pub retired_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// When it last synced (exact for a sync that uploaded; within
    /// [`LAST_SYNC_GRAIN_MS`] for idle checks).
    pub last_sync_ms: Option<i64>,
    /// What it reported still holding after its last sync: changes the server has not
    /// acknowledged and task reports not yet sent. `None`: it never reported (a phone older
    /// than `FEATURE_RETIRE`, or one that never synced). What it recorded since is not known.
    pub pending: Option<i64>,
    /// What it last said it runs: `qiaomen/<library version>` and the app's name and version.
    pub agent: Option<String>,
}

/// A revocation refused: the device last reported work it has not uploaded (retire it, or
/// revoke it with force if the phone is lost).
#[derive(Clone, Debug)]
pub struct HoldsPending(pub DeviceRow);

const DEVICE_COLUMNS: &str = "d.id, u.login, d.enrolled_ms, d.revoked_ms, d.retire_ms, d.retired_ms, d.last_seen_ms, d.last_sync_ms, d.last_pending, d.agent";

fn device_row(r: &Row) -> std::result::Result<DeviceRow, SqlError> {
    let revoked_ms: Option<i64> = r.get(3)?;
    let retire_ms: Option<i64> = r.get(4)?;
    let retired_ms: Option<i64> = r.get(5)?;
    Ok(DeviceRow {
        device: r.get(0)?,
        login: r.get(1)?,
        status: match (revoked_ms, retired_ms, retire_ms) {
            (Some(_), ..) => DeviceStatus::Revoked,
            (None, Some(_), _) => DeviceStatus::Retired,
            (None, None, Some(_)) => DeviceStatus::Retiring,
            (None, None, None) => DeviceStatus::Active,
        },
        enrolled_ms: r.get(2)?,
        revoked_ms,
        retire_ms,
        retired_ms,
        last_seen_ms: r.get(6)?,
        last_sync_ms: r.get(7)?,
        pending: r.get(8)?,
        agent: r.get(9)?,
    })
}

impl AccessDb {
    /// Issues a one-time enrollment code for one of `user`'s devices. Only its hash is stored.
    pub fn issue_enrollment_code(&self, user: UserId) -> Result<String> {
        let exists: bool = self.db.one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)",
            &[&user.to_string()],
        )?;
        if !exists {
            return Err(AccessError::NotFound("user"));
        }
        let raw: String = random_bytes::<12>()
            .iter()
            .map(|b| CODE_ALPHABET[(*b as usize) % CODE_ALPHABET.len()] as char)
            .collect();
        let now = now_ms();
        self.db.execute(
            "INSERT INTO enrollment_codes (hash, \"user\", created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            &[&sha256(&raw), &user.to_string(), &now, &(now + CODE_LIFETIME_MS)],
        )?;
        Ok(format!("{}-{}-{}", &raw[..4], &raw[4..8], &raw[8..]))
    }

    /// Enrolls a device with a code. Idempotent for the same `install_id` until the device's
    /// token is first used.
    pub fn enroll(
        &mut self,
        code: &str,
        install_id: &str,
    ) -> Result<std::result::Result<Enrolled, EnrollRefusal>> {
        let hash = sha256(&normalize_code(code));
        self.db.transaction(|tx| {
            let row: Option<(String, i64, Option<String>)> = tx.row(
                "SELECT \"user\", expires_ms, device FROM enrollment_codes WHERE hash = ?1",
                &[&hash],
            )?;
            let Some((user, expires_ms, device)) = row else {
                return Ok(Err(EnrollRefusal::Invalid));
            };
            let now = now_ms();
            let device = match device {
                None => {
                    if now >= expires_ms {
                        return Ok(Err(EnrollRefusal::Expired));
                    }
                    let device = DeviceId::new();
                    tx.execute(
                        "INSERT INTO devices (id, \"user\", install_id, enrolled_ms) VALUES (?1, ?2, ?3, ?4)",
                        &[&device.to_string(), &user, &install_id, &now],
                    )?;
                    tx.execute(
                        "UPDATE enrollment_codes SET device = ?2, used_ms = ?3 WHERE hash = ?1",
                        &[&hash, &device.to_string(), &now],
                    )?;
                    device
                }
                Some(device) => {
                    // A retry after a lost answer: the same install, its token never used.
                    let same: Option<(String, Option<i64>)> = tx.row(
                        "SELECT install_id, revoked_ms FROM devices WHERE id = ?1",
                        &[&device],
                    )?;
                    let used: bool = tx.one(
                        "SELECT EXISTS (SELECT 1 FROM device_tokens WHERE device = ?1 AND used_ms IS NOT NULL)",
                        &[&device],
                    )?;
                    match same {
                        Some((install, None)) if install == install_id && !used => {
                            tx.execute("DELETE FROM device_tokens WHERE device = ?1", &[&device])?;
                            device
                                .parse()
                                .map_err(|_| AccessError::NotFound("device"))?
                        }
                        _ => return Ok(Err(EnrollRefusal::Used)),
                    }
                }
            };
            let token = new_token("qm_d_");
            tx.execute(
                "INSERT INTO device_tokens (hash, device, created_ms, state) VALUES (?1, ?2, ?3, 'active')",
                &[&sha256(&token), &device.to_string(), &now],
            )?;
            Ok(Ok(Enrolled {
                device,
                user: user.parse().map_err(|_| AccessError::NotFound("user"))?,
                token,
            }))
        })
    }

    /// Authenticates a device token.
    pub fn authenticate_device(
        &mut self,
        token: &str,
    ) -> Result<std::result::Result<DevicePrincipal, TokenRefusal>> {
        let hash = sha256(token);
        // Read-only in the steady state: a sync must not queue behind the log's writers for
        // SQLite's write lock and an fsync (measured: 16 concurrent syncs each writing
        // `last_seen` cut ingest from 2,278 to 1,504 visits/s). Writes happen on a token's
        // first use, on reuse, and at most once an hour for `last_seen`.
        struct Found {
            device: String,
            user: String,
            created_ms: i64,
            used_ms: Option<i64>,
            state: String,
            revoked_ms: Option<i64>,
            last_seen: Option<i64>,
            retire_ms: Option<i64>,
            retired_ms: Option<i64>,
            last_sync_ms: Option<i64>,
            last_pending: Option<i64>,
            agent: Option<String>,
        }
        let row: Option<Found> = self
            .db
            .map(
                "SELECT t.device, d.\"user\", t.created_ms, t.used_ms, t.state, d.revoked_ms,
                        d.last_seen_ms, d.retire_ms, d.retired_ms, d.last_sync_ms, d.last_pending,
                        d.agent
                   FROM device_tokens t JOIN devices d ON d.id = t.device WHERE t.hash = ?1",
                &[&hash],
                |r| {
                    Ok(Found {
                        device: r.get(0)?,
                        user: r.get(1)?,
                        created_ms: r.get(2)?,
                        used_ms: r.get(3)?,
                        state: r.get(4)?,
                        revoked_ms: r.get(5)?,
                        last_seen: r.get(6)?,
                        retire_ms: r.get(7)?,
                        retired_ms: r.get(8)?,
                        last_sync_ms: r.get(9)?,
                        last_pending: r.get(10)?,
                        agent: r.get(11)?,
                    })
                },
            )?
            .into_iter()
            .next();
        let Some(Found {
            device,
            user,
            created_ms,
            used_ms,
            state,
            revoked_ms,
            last_seen,
            retire_ms,
            retired_ms,
            last_sync_ms,
            last_pending,
            agent,
        }) = row
        else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if revoked_ms.is_some() {
            return Ok(Err(TokenRefusal::Revoked));
        }
        if retired_ms.is_some() {
            return Ok(Err(TokenRefusal::Retired));
        }
        let now = now_ms();
        if state == "retired" {
            // Two parties hold this token: revoke the device.
            self.db.transaction(|tx| {
                tx.execute(
                    "UPDATE devices SET revoked_ms = ?2 WHERE id = ?1",
                    &[&device, &now],
                )?;
                tx.execute(
                    "INSERT INTO audit (at_ms, actor_device, action, target, outcome) VALUES (?1, ?2, 'token_reuse', ?2, 'device_revoked')",
                    &[&now, &device],
                )?;
                Ok::<_, AccessError>(())
            })?;
            return Ok(Err(TokenRefusal::Reused));
        }
        let stale = last_seen.is_none_or(|t| t < now - LAST_SEEN_GRAIN_MS);
        if used_ms.is_none() || stale {
            self.db.transaction(|tx| {
                if used_ms.is_none() {
                    tx.execute(
                        "UPDATE device_tokens SET used_ms = ?2 WHERE hash = ?1",
                        &[&hash, &now],
                    )?;
                    // The successor is in use: its predecessor retires.
                    tx.execute(
                        "UPDATE device_tokens SET state = 'retired' WHERE successor = ?1",
                        &[&hash],
                    )?;
                }
                tx.execute(
                    "UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1",
                    &[&device, &now],
                )?;
                Ok::<_, AccessError>(())
            })?;
        }
        Ok(Ok(DevicePrincipal {
            device: device
                .parse()
                .map_err(|_| AccessError::NotFound("device"))?,
            user: user.parse().map_err(|_| AccessError::NotFound("user"))?,
            // Also while a successor waits unused: the answer that carried it may have been
            // lost, or a copy of this token asked for it. Rotating again replaces it.
            rotate: (state == "active" && now - created_ms > ROTATE_AFTER_MS) || state == "rotated",
            retiring: retire_ms.is_some(),
            last_sync_ms,
            last_pending,
            agent_digest: agent.map(|a| qiaomen_protocol::wire::fnv1a(a.as_bytes())),
        }))
    }

    /// Rotates a device token: returns its successor. Presenting the old token again before
    /// the successor is used gives a new successor (the earlier answer was lost).
    pub fn rotate(&mut self, token: &str) -> Result<std::result::Result<String, TokenRefusal>> {
        let principal = match self.authenticate_device(token)? {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let hash = sha256(token);
        self.db.transaction(|tx| {
            let successor: Option<Vec<u8>> = tx
                .row::<Option<Vec<u8>>>(
                    "SELECT successor FROM device_tokens WHERE hash = ?1",
                    &[&hash],
                )?
                .flatten();
            if let Some(old) = successor {
                tx.execute(
                    "DELETE FROM device_tokens WHERE hash = ?1 AND used_ms IS NULL",
                    &[&old],
                )?;
            }
            let next = new_token("qm_d_");
            let next_hash = sha256(&next);
            tx.execute(
                "INSERT INTO device_tokens (hash, device, created_ms, state) VALUES (?1, ?2, ?3, 'active')",
                &[&next_hash, &principal.device.to_string(), &now_ms()],
            )?;
            tx.execute(
                "UPDATE device_tokens SET state = 'rotated', successor = ?2 WHERE hash = ?1",
                &[&hash, &next_hash],
            )?;
            Ok(Ok(next))
        })
    }

    /// Records a sync of `device` at `at_ms` and what it reported still holding after it
    /// (`None`: a phone that does not report it). With `end`, a retiring device ends now (it
    /// reported nothing left): its token is refused `device_retired` from here on, and the
    /// end is audited. Returns whether it ended.
    pub fn record_sync(
        &mut self,
        device: DeviceId,
        at_ms: i64,
        pending: Option<u64>,
        end: bool,
        agent: Option<&str>,
    ) -> Result<bool> {
        let device = device.to_string();
        let pending = pending.map(|p| i64::try_from(p).unwrap_or(i64::MAX));
        self.db.transaction(|tx| {
            tx.execute(
                "UPDATE devices SET last_sync_ms = ?2, last_pending = ?3, agent = COALESCE(?4, agent)
                  WHERE id = ?1",
                &[&device, &at_ms, &pending, &agent],
            )?;
            if !end {
                return Ok(false);
            }
            let n = tx.execute(
                "UPDATE devices SET retired_ms = ?2
                  WHERE id = ?1 AND retire_ms IS NOT NULL AND retired_ms IS NULL AND revoked_ms IS NULL",
                &[&device, &at_ms],
            )?;
            if n > 0 {
                tx.execute(
                    "INSERT INTO audit (at_ms, actor_device, action, target, outcome) VALUES (?1, ?2, 'retired', ?2, 'ok')",
                    &[&at_ms, &device],
                )?;
            }
            Ok(n > 0)
        })
    }

    /// One device as listed for an admin.
    pub fn device(&self, device: DeviceId) -> Result<DeviceRow> {
        self.db
            .map(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d JOIN users u ON u.id = d.\"user\" WHERE d.id = ?1"
                ),
                &[&device.to_string()],
                device_row,
            )?
            .into_iter()
            .next()
            .ok_or(AccessError::NotFound("device"))
    }

    /// Retires a device (a handover): it goes on syncing, uploads what it holds, and ends when
    /// it reports nothing left (then the phone wipes). Returns the device as it was (its last
    /// sync and pending). Retiring a retiring device again changes nothing.
    pub fn retire_device(&self, device: DeviceId) -> Result<DeviceRow> {
        let before = self.device(device)?;
        let n = self.db.execute(
            "UPDATE devices SET retire_ms = coalesce(retire_ms, ?2)
              WHERE id = ?1 AND revoked_ms IS NULL AND retired_ms IS NULL",
            &[&device.to_string(), &now_ms()],
        )?;
        if n == 0 {
            return Err(AccessError::NotFound(
                "device that is not revoked or retired",
            ));
        }
        Ok(before)
    }

    /// Revokes a device as an admin asks (lost or stolen): refused while it last reported
    /// work it has not uploaded, unless `force` (the phone is gone: its work is lost anyway).
    /// Returns the device as it was.
    pub fn revoke_device_guarded(
        &self,
        device: DeviceId,
        force: bool,
    ) -> Result<std::result::Result<DeviceRow, HoldsPending>> {
        let before = self.device(device)?;
        if !force && before.pending.is_some_and(|p| p > 0) {
            return Ok(Err(HoldsPending(before)));
        }
        self.revoke_device(device)?;
        Ok(Ok(before))
    }

    /// Revokes a device: its tokens stop working at once.
    pub fn revoke_device(&self, device: DeviceId) -> Result<()> {
        let n = self.db.execute(
            "UPDATE devices SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            &[&device.to_string(), &now_ms()],
        )?;
        if n == 0 {
            return Err(AccessError::NotFound("device that is not revoked"));
        }
        Ok(())
    }

    /// Every device, oldest enrollment first.
    pub fn devices(&self) -> Result<Vec<DeviceRow>> {
        Ok(self.db.map(
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d JOIN users u ON u.id = d.\"user\"
                  ORDER BY d.enrolled_ms, d.id"
            ),
            &[],
            device_row,
        )?)
    }

    /// The device that stands for `user`'s web sessions: edits made in the supervisors' pages
    /// and API (reviews, resolved conflicts) are changes of this device, with an actor bound
    /// to it, checked like a phone's. Created on first use; a revoked one is replaced.
    pub fn web_device(&self, user: UserId) -> Result<DeviceId> {
        let user = user.to_string();
        let find = |db: &crate::sql::Db| -> Result<Option<DeviceId>> {
            let found: Option<String> = db.row(
                "SELECT id FROM devices WHERE \"user\" = ?1 AND install_id = 'web' AND revoked_ms IS NULL
                  ORDER BY enrolled_ms, id",
                &[&user],
            )?;
            Ok(found.and_then(|d| d.parse().ok()))
        };
        if let Some(id) = find(&self.db)? {
            return Ok(id);
        }
        // Created once, however many servers see the user's first edit at the same moment.
        self.db.transaction(|tx| {
            if let Some(id) = find(tx)? {
                return Ok(id);
            }
            let device = DeviceId::new();
            tx.execute(
                "INSERT INTO devices (id, \"user\", install_id, enrolled_ms) VALUES (?1, ?2, 'web', ?3)",
                &[&device.to_string(), &user, &now_ms()],
            )?;
            Ok(device)
        })
    }

    /// The user a device belongs to.
    pub fn device_user(&self, device: DeviceId) -> Result<Option<UserId>> {
        let user: Option<String> = self.db.row(
            "SELECT \"user\" FROM devices WHERE id = ?1",
            &[&device.to_string()],
        )?;
        Ok(user.and_then(|u| u.parse().ok()))
    }

    /// Sets a user's password (argon2id, random salt).
    pub fn set_password(&self, user: UserId, password: &str) -> Result<()> {
        if password.chars().count() < 10 {
            return Err(AccessError::Invalid(
                "a password has at least 10 characters".into(),
            ));
        }
        let salt = salt();
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|_| AccessError::Hash)?
            .to_string();
        let n = self.db.execute(
            "UPDATE users SET password_hash = ?2 WHERE id = ?1",
            &[&user.to_string(), &hash],
        )?;
        if n == 0 {
            return Err(AccessError::NotFound("user"));
        }
        Ok(())
    }

    /// Checks a login and password; on success opens a session and returns its token. The
    /// server does the three steps itself ([`Self::password_hash`], [`verify_password`],
    /// [`Self::open_session`]) so that argon2 runs without holding the access tables.
    pub fn login(&self, login: &str, password: &str) -> Result<Option<(UserId, String, i64)>> {
        let stored = self.password_hash(login)?;
        let hash = stored.as_ref().and_then(|(_, h)| h.as_deref());
        match stored {
            Some((user, Some(_))) if verify_password(hash, password) => {
                Ok(Some(self.open_session(user)?))
            }
            _ => Ok(None),
        }
    }

    /// The user of `login` and their stored password hash (none if no password was set).
    pub fn password_hash(&self, login: &str) -> Result<Option<(UserId, Option<String>)>> {
        let row: Option<(String, Option<String>)> = self.db.row(
            "SELECT id, password_hash FROM users WHERE login = ?1",
            &[&login],
        )?;
        row.map(|(user, hash)| {
            Ok((
                user.parse().map_err(|_| AccessError::NotFound("user"))?,
                hash,
            ))
        })
        .transpose()
    }

    /// Opens a session for `user` (whose password was verified): its token and end.
    pub fn open_session(&self, user: UserId) -> Result<(UserId, String, i64)> {
        let token = new_token("qm_s_");
        let now = now_ms();
        let expires = now + SESSION_LIFETIME_MS;
        self.db.execute(
            "INSERT INTO sessions (hash, \"user\", created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            &[&sha256(&token), &user.to_string(), &now, &expires],
        )?;
        Ok((user, token, expires))
    }

    /// The user of a live session.
    pub fn authenticate_session(
        &self,
        token: &str,
    ) -> Result<std::result::Result<UserId, TokenRefusal>> {
        let row: Option<(String, i64, Option<i64>)> = self.db.row(
            "SELECT \"user\", expires_ms, ended_ms FROM sessions WHERE hash = ?1",
            &[&sha256(token)],
        )?;
        Ok(match row {
            None | Some((_, _, Some(_))) => Err(TokenRefusal::Unknown),
            Some((_, expires, None)) if now_ms() >= expires => Err(TokenRefusal::Expired),
            Some((user, _, None)) => Ok(user.parse().map_err(|_| AccessError::NotFound("user"))?),
        })
    }

    pub fn logout(&self, token: &str) -> Result<()> {
        self.db.execute(
            "UPDATE sessions SET ended_ms = ?2 WHERE hash = ?1 AND ended_ms IS NULL",
            &[&sha256(token), &now_ms()],
        )?;
        Ok(())
    }
}

/// Whether `password` matches the stored argon2 hash. With no hash (an unknown login, or no
/// password set) the same work is spent on a dummy, so timing does not tell which exist.
/// Pure CPU (tens of ms): call it off the async threads and outside the access lock.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    let argon = Argon2::default();
    match stored.map(PasswordHash::new) {
        Some(Ok(h)) => argon.verify_password(password.as_bytes(), &h).is_ok(),
        Some(Err(_)) => false,
        None => {
            if let Ok(h) = PasswordHash::new(dummy_hash()) {
                let _ = argon.verify_password(password.as_bytes(), &h);
            }
            false
        }
    }
}

/// An argon2id hash of a random password, verified against when a login is unknown.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = salt();
        Argon2::default()
            .hash_password(&random_bytes::<16>(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::testing::{Store, on_both_backends};

    on_both_backends!(
        a_code_enrolls_once_and_a_retry_of_the_same_install_still_works,
        rotation_keeps_the_old_token_until_the_new_one_is_used_then_reuse_revokes,
        a_retired_device_syncs_until_it_reports_nothing_left_then_its_token_is_refused,
        a_revocation_waits_for_force_while_the_device_reported_pending_work,
        passwords_and_sessions,
        one_code_enrolls_one_device_when_two_servers_take_it_at_once,
        a_user_has_one_web_device_however_many_servers_ask_at_once,
    );

    fn setup(s: &Store) -> (AccessDb, UserId) {
        let db = s.open();
        let user = db.add_user("w1", "王").unwrap();
        (db, user)
    }

    fn a_code_enrolls_once_and_a_retry_of_the_same_install_still_works(s: &Store) {
        let (mut db, user) = setup(s);
        let code = db.issue_enrollment_code(user).unwrap();
        assert_eq!(code.len(), 14);
        let first = db.enroll(&code, "install-a").unwrap().unwrap();
        assert_eq!(first.user, user);
        // The answer was lost: the phone retries with the same code and install id.
        let again = db
            .enroll(&code.to_lowercase().replace('-', " "), "install-a")
            .unwrap()
            .unwrap();
        assert_eq!(again.device, first.device);
        assert_ne!(again.token, first.token);
        assert_eq!(
            db.authenticate_device(&first.token).unwrap(),
            Err(TokenRefusal::Unknown),
            "the lost token is void"
        );
        assert!(db.authenticate_device(&again.token).unwrap().is_ok());
        // Once the token is used, the code is spent, even for the same install.
        assert_eq!(
            db.enroll(&code, "install-a").unwrap(),
            Err(EnrollRefusal::Used)
        );
        assert_eq!(
            db.enroll(&code, "install-b").unwrap(),
            Err(EnrollRefusal::Used)
        );
        assert_eq!(
            db.enroll("AAAA-BBBB-CCCC", "x").unwrap(),
            Err(EnrollRefusal::Invalid)
        );
    }

    fn rotation_keeps_the_old_token_until_the_new_one_is_used_then_reuse_revokes(s: &Store) {
        let (mut db, user) = setup(s);
        let code = db.issue_enrollment_code(user).unwrap();
        let e = db.enroll(&code, "i").unwrap().unwrap();
        let t1 = e.token;
        let t2 = db.rotate(&t1).unwrap().unwrap();
        // The rotation's answer was lost: the phone still has t1, which still works and is
        // asked to rotate again; the second rotation replaces the unused t2.
        assert!(db.authenticate_device(&t1).unwrap().unwrap().rotate);
        let t2b = db.rotate(&t1).unwrap().unwrap();
        assert_eq!(
            db.authenticate_device(&t2).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        assert!(db.authenticate_device(&t2b).unwrap().is_ok());
        // t2b is in use, so t1 is retired: presenting it again is reuse, and revokes.
        assert_eq!(
            db.authenticate_device(&t1).unwrap(),
            Err(TokenRefusal::Reused)
        );
        assert_eq!(
            db.authenticate_device(&t2b).unwrap(),
            Err(TokenRefusal::Revoked)
        );
    }

    fn a_retired_device_syncs_until_it_reports_nothing_left_then_its_token_is_refused(s: &Store) {
        let (mut db, user) = setup(s);
        let code = db.issue_enrollment_code(user).unwrap();
        let e = db.enroll(&code, "i").unwrap().unwrap();
        let p = db.authenticate_device(&e.token).unwrap().unwrap();
        assert!(!p.retiring && p.last_sync_ms.is_none());
        db.record_sync(e.device, 1_000, Some(2), false, None)
            .unwrap();
        let before = db.retire_device(e.device).unwrap();
        assert_eq!(
            (before.status, before.last_sync_ms, before.pending),
            (DeviceStatus::Active, Some(1_000), Some(2))
        );
        // Retiring again changes nothing; it still authenticates, as retiring.
        db.retire_device(e.device).unwrap();
        let p = db.authenticate_device(&e.token).unwrap().unwrap();
        assert!(p.retiring && p.last_pending == Some(2));
        assert_eq!(db.device(e.device).unwrap().status, DeviceStatus::Retiring);
        // Not ended while it reports work; ended once it reports nothing left.
        assert!(
            !db.record_sync(e.device, 2_000, Some(0), false, None)
                .unwrap()
        );
        assert!(
            db.record_sync(e.device, 3_000, Some(0), true, None)
                .unwrap()
        );
        assert!(
            !db.record_sync(e.device, 3_001, Some(0), true, None)
                .unwrap(),
            "once"
        );
        assert_eq!(
            db.authenticate_device(&e.token).unwrap(),
            Err(TokenRefusal::Retired)
        );
        assert_eq!(TokenRefusal::Retired.code(), "device_retired");
        assert_eq!(db.device(e.device).unwrap().status, DeviceStatus::Retired);
        assert!(db.retire_device(e.device).is_err());
        // A revocation still applies (a phone that kept unacknowledged work is wiped by it).
        db.revoke_device(e.device).unwrap();
        assert_eq!(
            db.authenticate_device(&e.token).unwrap(),
            Err(TokenRefusal::Revoked)
        );
    }

    fn a_revocation_waits_for_force_while_the_device_reported_pending_work(s: &Store) {
        let (mut db, user) = setup(s);
        let code = db.issue_enrollment_code(user).unwrap();
        let e = db.enroll(&code, "i").unwrap().unwrap();
        db.record_sync(e.device, 1_000, Some(3), false, None)
            .unwrap();
        let held = db
            .revoke_device_guarded(e.device, false)
            .unwrap()
            .unwrap_err();
        assert_eq!(held.0.pending, Some(3));
        assert!(
            db.authenticate_device(&e.token).unwrap().is_ok(),
            "not revoked"
        );
        let before = db.revoke_device_guarded(e.device, true).unwrap().unwrap();
        assert_eq!(before.status, DeviceStatus::Active);
        assert_eq!(
            db.authenticate_device(&e.token).unwrap(),
            Err(TokenRefusal::Revoked)
        );
        // A device that never reported (an older phone) is revoked without force.
        let code = db.issue_enrollment_code(user).unwrap();
        let old = db.enroll(&code, "j").unwrap().unwrap();
        assert!(db.revoke_device_guarded(old.device, false).unwrap().is_ok());
    }

    /// Two servers (two handles on one database) take one code at the same moment, for two
    /// installs: one enrolls, the other is told the code is used; never two devices.
    fn one_code_enrolls_one_device_when_two_servers_take_it_at_once(s: &Store) {
        let (db, user) = setup(s);
        for round in 0..8 {
            let code = db.issue_enrollment_code(user).unwrap();
            let barrier = std::sync::Barrier::new(2);
            let results: Vec<_> = std::thread::scope(|scope| {
                let threads: Vec<_> = ["a", "b"]
                    .map(|install| {
                        let (code, barrier) = (&code, &barrier);
                        let mut db = s.open();
                        scope.spawn(move || {
                            barrier.wait();
                            db.enroll(code, &format!("{install}{round}")).unwrap()
                        })
                    })
                    .into_iter()
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let enrolled = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(enrolled, 1, "round {round}: one of two enrolls");
            assert!(
                results.contains(&Err(EnrollRefusal::Used)),
                "round {round}: the other is told the code is used"
            );
        }
        assert_eq!(db.devices().unwrap().len(), 8, "one device a code");
    }

    fn a_user_has_one_web_device_however_many_servers_ask_at_once(s: &Store) {
        let (db, user) = setup(s);
        let devices: Vec<DeviceId> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let db = s.open();
                    scope.spawn(move || db.web_device(user).unwrap())
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(
            devices.iter().all(|d| *d == devices[0]),
            "one device: {devices:?}"
        );
        assert_eq!(db.web_device(user).unwrap(), devices[0]);
        assert_eq!(db.devices().unwrap().len(), 1);
    }

    #[test]
    fn enrollment_and_rotation_wait_for_a_writer_instead_of_failing_on_a_stale_read() {
        let store = crate::access::testing::sqlite().unwrap();
        let dir = store.sqlite_dir().unwrap();
        let (mut db, user) = setup(&store);
        let code = db.issue_enrollment_code(user).unwrap();
        // Another connection (a writer thread of the log) holds the write lock for a moment.
        let hold = |dir: &std::path::Path| {
            let other = rusqlite::Connection::open(dir.join("qiaomen.db")).unwrap();
            other
                .execute_batch("BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS scratch (x);")
                .unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                other
                    .execute_batch("INSERT INTO scratch VALUES (1); COMMIT;")
                    .unwrap();
            })
        };
        // A transaction that read first would find its snapshot stale once it may write
        // (SQLITE_BUSY, "database is locked"); one that takes the lock first just waits.
        let writer = hold(dir);
        let enrolled = db.enroll(&code, "i").unwrap().unwrap();
        writer.join().unwrap();
        let writer = hold(dir);
        assert!(db.rotate(&enrolled.token).unwrap().is_ok());
        writer.join().unwrap();
    }

    fn passwords_and_sessions(s: &Store) {
        let (db, user) = setup(s);
        assert!(db.set_password(user, "short").is_err());
        db.set_password(user, "correct horse battery").unwrap();
        assert!(db.login("w1", "wrong password!").unwrap().is_none());
        assert!(
            db.login("nobody", "correct horse battery")
                .unwrap()
                .is_none()
        );
        let (u, token, _) = db.login("w1", "correct horse battery").unwrap().unwrap();
        assert_eq!(u, user);
        assert_eq!(db.authenticate_session(&token).unwrap(), Ok(user));
        db.logout(&token).unwrap();
        assert_eq!(
            db.authenticate_session(&token).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        let stored: String = db.db.one("SELECT password_hash FROM users", &[]).unwrap();
        assert!(stored.starts_with("$argon2id$"), "stored hashed");
    }
}
