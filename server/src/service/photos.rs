//! Photos (SYNC-v1 §14.3): how much of one the server holds, an upload's next piece, the
//! photo and its thumbnail, for a device or a supervisor.
//!
//! **The rule**: a photo's bytes are taken in and given out only for a hash that a stored
//! household in the caller's scope refers to (the read model's `idx_photos`, projected from
//! the log before each check, so a reference synced a moment ago counts), or a stored task
//! report or a stored event or work log of a grid in the caller's scope (`task_photos`,
//! `journal_photos`). Records always
//! travel first: a photo whose reference is not stored yet is `unknown_photo`, exactly like
//! one outside the caller's grids (404, never 403, so a hash cannot be probed).
//!
//! Bytes are checked when they reach the reference's size: the SHA-256 must be the hash and
//! [`qiaomen_protocol::validate::photo_bytes`] must find the reference's media type; else the
//! upload is discarded and nothing is stored (`hash_mismatch`, `media_type`). Each device may
//! have `--photo-quota-mib` accepted per UTC day, counted in the database.

use axum::body::Bytes;
use qiaomen_protocol::photo::{self, MAX_PHOTO_PIECE_BYTES, MediaType};

use super::{Error, Result};
use crate::{
    access::{now_ms, tokens::DevicePrincipal},
    blobs::{BlobError, Held},
    http::{AppState, auth::Caller},
    index::PhotoRef,
};

/// How much of a photo the server holds, against its reference's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// `Upload-Offset`: the bytes held (all of them once complete).
    pub offset: u64,
    /// `Upload-Length`: the size the reference gives.
    pub length: u64,
    pub complete: bool,
}

/// Why a piece was not taken in, beyond the domain errors.
#[derive(Debug)]
pub enum UploadError {
    /// Not found, out of scope, a bad hash, a store failure.
    Service(Error),
    /// The piece does not start where the server's bytes end (`offset_mismatch`).
    OffsetMismatch { held: u64 },
    /// The piece is over [`MAX_PHOTO_PIECE_BYTES`], or runs past the photo's size.
    TooLarge { message: String },
    /// The complete bytes are not the photo the reference names: `hash_mismatch` or
    /// `media_type`. Nothing was kept.
    Refused { code: &'static str, message: String },
    /// The device's bytes for today are used up (`photo_quota`); the next UTC day begins
    /// in this many seconds.
    Quota { retry_after_s: u64 },
}

impl From<Error> for UploadError {
    fn from(e: Error) -> Self {
        UploadError::Service(e)
    }
}

fn unknown() -> Error {
    Error::NotFound {
        code: "unknown_photo",
        message: "没有这张照片，或不在您的辖区内".into(),
    }
}

/// The bytes of the complete photo `hash` (`unknown_photo` while it is not complete).
async fn complete(state: &AppState, hash: &str) -> Result<Bytes> {
    state
        .photos
        .photo(hash)
        .await
        .map_err(store_failed)?
        .ok_or_else(unknown)
}

fn store_failed(e: BlobError) -> Error {
    tracing::error!(error = %e, "photo store failed");
    Error::Busy
}

/// A reference to a photo that the caller may read: the photo's size and media type, and
/// what holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referred {
    pub hash: String,
    pub size: u64,
    /// `jpeg`, `png`, `webp`.
    pub media_type: String,
    /// What holds the reference, for the audit log: the household's id, or
    /// `task:<list>/<task>/<grid>` for a task report.
    pub target: String,
}

impl From<PhotoRef> for Referred {
    fn from(r: PhotoRef) -> Self {
        Referred {
            target: r.household.to_string(),
            hash: r.hash,
            size: r.size,
            media_type: r.media_type,
        }
    }
}

/// The reference to `hash` that `caller` may read: one of a household in a grid they read
/// (the first, by household and photo id), one of an order dispatched to their team, or one
/// of a task report of a grid they read.
pub async fn in_scope(state: &AppState, caller: &Caller, hash: &str) -> Result<Referred> {
    if !photo::is_hash(hash) {
        return Err(Error::Invalid {
            code: "bad_hash",
            message: "照片的标识应为 64 位小写十六进制 (SHA-256)".into(),
        });
    }
    let user = caller.user();
    let scope = state.access(move |db| db.scope(user, now_ms())).await?;
    let wanted = hash.to_string();
    let teams = scope.rights.teams.clone();
    let (refs, of_teams) = state
        .index(move |ix| {
            let refs = ix.photo_refs(&wanted)?;
            // A team member reads no grid, but the photos of an order dispatched to their
            // team are the order's (its steps', as its page shows them).
            let mut of_teams = Vec::new();
            if !teams.is_empty() {
                for (i, r) in refs.iter().enumerate() {
                    let Some(demand) = &r.demand else { continue };
                    let household = r.household.to_string();
                    let dispatched = ix.orders_with_id(demand)?.into_iter().any(|o| {
                        o.household == household && o.team.is_some_and(|t| teams.contains(&t))
                    });
                    if dispatched {
                        of_teams.push(i);
                    }
                }
            }
            Ok((refs, of_teams))
        })
        .await?;
    let readable = refs
        .iter()
        .position(|r| scope.may_read(&r.grid))
        .or(of_teams.first().copied());
    if let Some(i) = readable {
        return Ok(refs[i].clone().into());
    }
    let wanted = hash.to_string();
    let (reported, journal) = state
        .access(move |db| Ok((db.reported_photos(&wanted)?, db.journal_photos(&wanted)?)))
        .await?;
    let of_report = reported
        .into_iter()
        .find(|r| scope.may_read(&r.grid))
        .map(|r| Referred {
            target: format!("task:{}/{}/{}", r.list, r.item, r.grid),
            hash: hash.to_string(),
            size: r.size,
            media_type: r.media_type,
        });
    // An event's or a work log's photo: of a stored entry of a grid the caller reads.
    let of_entry = || {
        journal
            .into_iter()
            .find(|j| scope.may_read(&j.grid))
            .map(|j| Referred {
                target: format!("journal:{}", j.entry),
                hash: hash.to_string(),
                size: j.size,
                media_type: j.media_type,
            })
    };
    of_report.or_else(of_entry).ok_or_else(unknown)
}

async fn status_of(state: &AppState, r: &Referred) -> Result<Status> {
    Ok(
        match state.photos.held(&r.hash).await.map_err(store_failed)? {
            Held::Complete(n) => Status {
                offset: n,
                length: n,
                complete: true,
            },
            Held::Partial(n) => Status {
                offset: n,
                length: r.size,
                complete: false,
            },
        },
    )
}

/// `HEAD /v1/photos/{hash}`: how much the server holds.
pub async fn status(state: &AppState, caller: &Caller, hash: &str) -> Result<Status> {
    let r = in_scope(state, caller, hash).await?;
    status_of(state, &r).await
}

/// `PATCH /v1/photos/{hash}`: the bytes of the photo from `offset` on.
pub async fn upload(
    state: &AppState,
    device: &DevicePrincipal,
    hash: &str,
    offset: u64,
    body: Bytes,
) -> Result<Status, UploadError> {
    let r = in_scope(state, &Caller::Device(*device), hash).await?;
    if body.len() > MAX_PHOTO_PIECE_BYTES {
        return Err(UploadError::TooLarge {
            message: format!("每次最多上传 {MAX_PHOTO_PIECE_BYTES} 字节"),
        });
    }
    let now = status_of(state, &r).await?;
    if now.complete {
        // Idempotent: the photo is here already.
        return Ok(now);
    }
    if offset != now.offset {
        return Err(UploadError::OffsetMismatch { held: now.offset });
    }
    let end = offset + body.len() as u64;
    if end > r.size {
        return Err(UploadError::TooLarge {
            message: "超出照片的大小".into(),
        });
    }
    if body.is_empty() {
        return Ok(now);
    }
    let (device_id, n, limit) = (
        device.device.to_string(),
        body.len() as u64,
        state.photo_quota,
    );
    let at = now_ms();
    let day = utc_day(at);
    if !state
        .access(move |db| db.take_photo_bytes(&device_id, &day, n, limit))
        .await?
    {
        return Err(UploadError::Quota {
            retry_after_s: (86_400 - at.div_euclid(1000).rem_euclid(86_400)) as u64,
        });
    }
    state
        .photos
        .put_piece(hash, offset, body)
        .await
        .map_err(store_failed)?;
    if end < r.size {
        return Ok(Status {
            offset: end,
            length: r.size,
            complete: false,
        });
    }
    let bytes = state.photos.assembled(hash).await.map_err(store_failed)?;
    if bytes.len() as u64 != r.size {
        // A piece was rewritten under us (another server, a cut piece kept at once): not
        // whole after all, and not to be judged; the phone resumes from what is held.
        return Ok(status_of(state, &r).await?);
    }
    let expected = r.media_type.clone();
    let checked = tokio::task::spawn_blocking(move || {
        if photo::hash_of(&bytes) != r.hash {
            return Err(("hash_mismatch", "照片内容与其标识 (SHA-256) 不符"));
        }
        match qiaomen_protocol::validate::photo_bytes(&bytes) {
            Ok(m) if m.code() == expected => Ok(bytes),
            _ => Err(("media_type", "照片不是记录所说的格式 (JPEG、PNG、WebP)")),
        }
    })
    .await
    .map_err(|_| Error::internal("photo check failed"))?;
    match checked {
        Ok(bytes) => {
            let size = bytes.len() as u64;
            state
                .photos
                .complete(hash, bytes)
                .await
                .map_err(store_failed)?;
            tracing::info!(photo = hash, size, "photo complete");
            Ok(Status {
                offset: size,
                length: size,
                complete: true,
            })
        }
        Err((code, message)) => {
            state.photos.discard(hash).await.map_err(store_failed)?;
            tracing::info!(photo = hash, code, "photo refused");
            Err(UploadError::Refused {
                code,
                message: message.into(),
            })
        }
    }
}

/// The day of `at_ms` in UTC, `YYYY-MM-DD` (the quota's day).
fn utc_day(at_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

/// A complete photo `caller` may read: its media type and bytes, and the reference it was
/// found by.
pub async fn fetch(
    state: &AppState,
    caller: &Caller,
    hash: &str,
) -> Result<(&'static str, Bytes, Referred)> {
    let r = in_scope(state, caller, hash).await?;
    let bytes = complete(state, hash).await?;
    let mime = MediaType::of_bytes(&bytes).map_or("application/octet-stream", MediaType::mime);
    Ok((mime, bytes, r))
}

/// A supervisor opens a photo: [`fetch`], audited (`photo_opened`, the household and the
/// hash; `denied` when it is not theirs to see).
pub async fn open(state: &AppState, caller: &Caller, hash: &str) -> Result<(&'static str, Bytes)> {
    let found = fetch(state, caller, hash).await;
    let (target, outcome) = match &found {
        Ok((_, _, r)) => (format!("{}:{hash}", r.target), "ok"),
        Err(_) if photo::is_hash(hash) => (hash.to_string(), "denied"),
        Err(_) => ("-".to_string(), "denied"),
    };
    super::households::record(state, caller.user(), None, "photo_opened", target, outcome).await?;
    found.map(|(mime, bytes, _)| (mime, bytes))
}

/// The thumbnail of a complete photo `caller` may read (a JPEG, [`crate::thumbs`]), made on
/// the first request and kept in the photo store.
pub async fn thumbnail(state: &AppState, caller: &Caller, hash: &str) -> Result<Bytes> {
    in_scope(state, caller, hash).await?;
    if let Some(thumb) = state.photos.thumb(hash).await.map_err(store_failed)? {
        return Ok(thumb);
    }
    let bytes = complete(state, hash).await?;
    let thumb = tokio::task::spawn_blocking(move || crate::thumbs::thumbnail(&bytes))
        .await
        .map_err(|_| Error::internal("thumbnail task failed"))?
        .map_err(|e| {
            tracing::warn!(photo = hash, error = %e, "no thumbnail");
            Error::NotFound {
                code: "no_thumbnail",
                message: "这张照片无法生成缩略图".into(),
            }
        })?;
    state
        .photos
        .put_thumb(hash, thumb.clone())
        .await
        .map_err(store_failed)?;
    Ok(thumb.into())
}

/// What a photo shows, in words (`隐患照片`, ...), by its subject's code.
pub fn subject_label(code: &str) -> &'static str {
    match code {
        "household" => "住户照片",
        "visit" => "走访照片",
        "hazard" => "隐患照片",
        "dispute" => "矛盾纠纷照片",
        "demand_step" => "工单办理照片",
        _ => "照片",
    }
}

/// A photo as a page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhotoView {
    pub hash: String,
    pub caption: String,
    /// What it shows, in words ([`subject_label`]).
    pub label: &'static str,
    pub subject: String,
    pub visit: Option<String>,
    pub demand: Option<String>,
    pub item: Option<i64>,
    pub taken_ms: i64,
    /// Whether the server holds it complete (else the page says 照片未上传).
    pub uploaded: bool,
}

/// The photos of household `id` (the caller was checked for it), oldest first; only those
/// of `demand` if given.
pub async fn household_photos(
    state: &AppState,
    id: qiaomen_protocol::ids::HouseholdId,
    demand: Option<String>,
) -> Result<Vec<PhotoView>> {
    let refs: Vec<PhotoRef> = state
        .index(move |ix| ix.household_photos(id))
        .await?
        .into_iter()
        .filter(|r| demand.is_none() || r.demand == demand)
        .collect();
    let hashes: Vec<String> = refs.iter().map(|r| r.hash.clone()).collect();
    let held = uploaded(state, hashes).await?;
    Ok(refs
        .into_iter()
        .map(|r| PhotoView {
            uploaded: held.contains(&r.hash),
            label: subject_label(&r.subject),
            hash: r.hash,
            caption: r.caption,
            subject: r.subject,
            visit: r.visit,
            demand: r.demand,
            item: r.item,
            taken_ms: r.taken_ms,
        })
        .collect())
}

/// Which of `hashes` the photo store holds complete (for the pages' "照片未上传").
pub async fn uploaded(
    state: &AppState,
    hashes: Vec<String>,
) -> Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for h in hashes {
        if state.photos.is_complete(&h).await.map_err(store_failed)? {
            out.insert(h);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_quota_day_is_the_utc_day() {
        assert_eq!(super::utc_day(0), "1970-01-01");
        assert_eq!(super::utc_day(86_400_000 - 1), "1970-01-01");
        assert_eq!(super::utc_day(86_400_000), "1970-01-02");
    }
}
