//! The photo phase of a sync (SYNC-v1 §14.3): after the records, one photo at a time, in
//! pieces, resumable by offset (`HEAD` says how much the server holds, `PATCH` sends the
//! rest), and photos fetched on demand (`GET`).

use std::time::Instant;

use qiaomen_protocol::{ids::HouseholdId, photo::MAX_PHOTO_PIECE_BYTES, wire};

use super::{
    FIRST_UPLOAD_PIECE_BYTES, MIN_UPLOAD_PIECE_BYTES, NetworkFailure, PIECE_SECONDS, StoreAccess,
    SyncClient, SyncError, SyncReport, error_code, jittered, smoothed,
};
use crate::{PhotoUpload, StoreError};

/// How one photo's upload ended.
enum Upload {
    /// The server holds it whole.
    Sent,
    /// The server will never take it (`code`).
    Refused(String),
    /// Not now (`code`); tried again at the next sync.
    Waiting(String),
    /// Not now, and no other photo either (`code`: the day's quota, the request rate): the
    /// phase ends; `retry_after`: the seconds the server asked to wait (`Retry-After`).
    Stop {
        code: String,
        retry_after: Option<u64>,
    },
}

/// The most a `Retry-After` is taken for: a day (the quota's longest wait), whatever a
/// server says.
const MAX_RETRY_AFTER_S: u64 = 86_400;

/// A response header holding a whole number (`Upload-Offset`, `Retry-After` in seconds).
fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    header_u64(resp, "retry-after").map(|secs| secs.min(MAX_RETRY_AFTER_S))
}

/// A photo piece for a link of `rate` bytes a second up: about [`PIECE_SECONDS`] of it (a
/// photo does not compress), within the smallest upload piece and the protocol's largest.
fn photo_piece(rate: u64) -> usize {
    let bytes = if rate == 0 {
        FIRST_UPLOAD_PIECE_BYTES
    } else {
        (rate as f64 * PIECE_SECONDS) as usize
    };
    bytes.clamp(MIN_UPLOAD_PIECE_BYTES, MAX_PHOTO_PIECE_BYTES)
}

fn offset_of(resp: &reqwest::Response) -> Option<u64> {
    header_u64(resp, "upload-offset")
}

impl SyncClient {
    /// Sends this phone's pending photos whose records the server holds, one at a time.
    /// A photo refused, or one that must wait, never stops the others; a failed link ends the
    /// phase (the next sync resumes where each photo stopped), and so does a spent quota.
    pub(super) async fn sync_photos(
        &self,
        store: &impl StoreAccess,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        // A server that does not announce photos would answer every one 404: they wait.
        let photos_here = store.store().server_features()? & wire::FEATURE_PHOTOS != 0;
        let uploads = store.store().photos_to_upload()?;
        // The server asked to wait (its `Retry-After` on a `429`): nothing is sent before.
        let waiting = {
            let s = store.store();
            s.photos_not_before_ms()?.is_some_and(|at| s.now_ms() < at)
        };
        if uploads.is_empty() || !photos_here || waiting {
            report.photos_waiting = store.store().pending_photo_count()? as usize;
            return Ok(());
        }
        let token = store
            .store()
            .credentials()?
            .ok_or(StoreError::NotEnrolled)?
            .token;
        for up in &uploads {
            match self.upload_photo(store, &token, up).await {
                Ok(Upload::Sent) => {
                    store.store().mark_photo_sent(&up.hash)?;
                    report.photos_sent += 1;
                }
                Ok(Upload::Refused(code)) => {
                    tracing::warn!(code = %code, "a photo was refused");
                    store.store().mark_photo_refused(&up.hash, &code)?;
                    report.photos_refused.push((up.hash.clone(), code));
                }
                Ok(Upload::Waiting(code)) => store.store().note_photo_waiting(&up.hash, &code)?,
                Ok(Upload::Stop { code, retry_after }) => {
                    let s = store.store();
                    s.note_photo_waiting(&up.hash, &code)?;
                    if let Some(secs) = retry_after {
                        s.set_photos_not_before_ms(s.now_ms() + secs as i64 * 1000)?;
                    }
                    break;
                }
                Err(SyncError::Network { failure, .. }) => {
                    report.photo_failure = Some(failure);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let mut s = store.store();
        s.free_photos()?;
        report.photos_waiting = s.pending_photo_count()? as usize;
        Ok(())
    }

    /// Sends one photo from where the server's copy ends. A piece the link lost is asked
    /// after (`HEAD`) before the rest is sent, so a cut costs at most one piece.
    async fn upload_photo(
        &self,
        store: &impl StoreAccess,
        token: &str,
        up: &PhotoUpload,
    ) -> Result<Upload, SyncError> {
        let url = self.endpoint(&format!("/v1/photos/{}", up.hash));
        let mut backoff = self.retry.first_backoff;
        let mut failures = 0;
        let mut last = (NetworkFailure::Unreachable, String::new());
        // `None`: ask the server how much it holds.
        let mut offset: Option<u64> = None;
        loop {
            if failures > self.retry.attempts {
                return Err(SyncError::Network {
                    failure: last.0,
                    detail: last.1,
                });
            }
            if failures > 0 {
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
            }
            let at = match offset {
                Some(at) => at,
                None => match self.http.head(&url).bearer_auth(token).send().await {
                    Err(e) => {
                        last = (NetworkFailure::of(&e), e.to_string());
                        failures += 1;
                        continue;
                    }
                    Ok(resp) => match resp.status().as_u16() {
                        200 | 204 => match offset_of(&resp) {
                            Some(at) => at,
                            None => return Err(SyncError::Protocol("photo offset".into())),
                        },
                        401 => {
                            return Err(SyncError::Unauthorized {
                                code: error_code(resp).await,
                            });
                        }
                        // HEAD has no body: the status says it (a HEAD is never over
                        // the quota, only over the request rate).
                        404 => return Ok(Upload::Waiting("unknown_photo".into())),
                        429 => {
                            return Ok(Upload::Stop {
                                code: "rate_limited".into(),
                                retry_after: retry_after(&resp),
                            });
                        }
                        s => {
                            last = (NetworkFailure::Refused, format!("status {s}"));
                            failures += 1;
                            continue;
                        }
                    },
                },
            };
            if at >= up.size {
                return Ok(Upload::Sent);
            }
            let len = photo_piece(self.up_rate.load(std::sync::atomic::Ordering::Relaxed));
            let Some(piece) = store.store().photo_piece(&up.hash, at, len)? else {
                return Ok(Upload::Waiting("photo_missing".into()));
            };
            let sent = piece.len() as u64;
            let started = Instant::now();
            let resp = self
                .http
                .patch(&url)
                .bearer_auth(token)
                .header("upload-offset", at)
                .header("content-type", "application/offset+octet-stream")
                .body(piece)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last = (NetworkFailure::of(&e), e.to_string());
                    failures += 1;
                    offset = None;
                    continue;
                }
            };
            match resp.status().as_u16() {
                200 | 204 => {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let rate = (sent as f64 / secs) as u64;
                    let before = self.up_rate.load(std::sync::atomic::Ordering::Relaxed);
                    self.up_rate
                        .store(smoothed(before, rate), std::sync::atomic::Ordering::Relaxed);
                    offset = offset_of(&resp).or(Some(at + sent));
                    failures = 0;
                    backoff = self.retry.first_backoff;
                }
                // The server holds another length: resume from it.
                409 => offset = offset_of(&resp),
                401 => {
                    return Err(SyncError::Unauthorized {
                        code: error_code(resp).await,
                    });
                }
                404 => return Ok(Upload::Waiting(error_code(resp).await)),
                413 | 415 | 422 => return Ok(Upload::Refused(error_code(resp).await)),
                429 => {
                    let retry_after = retry_after(&resp);
                    return Ok(Upload::Stop {
                        code: error_code(resp).await,
                        retry_after,
                    });
                }
                s => {
                    last = (NetworkFailure::Refused, format!("status {s}"));
                    failures += 1;
                    offset = None;
                }
            }
        }
    }

    /// The bytes of the photo `hash` of the household `id`: from the phone if it holds them,
    /// else fetched from the server (only when asked: a phone never downloads its grid's
    /// photos on its own) and kept, after checking they are the photo's.
    pub async fn fetch_photo(
        &self,
        store: &impl StoreAccess,
        id: HouseholdId,
        hash: &str,
    ) -> Result<Vec<u8>, SyncError> {
        if let Some(bytes) = store.store().photo_bytes(hash)? {
            return Ok(bytes);
        }
        let token = store
            .store()
            .credentials()?
            .ok_or(StoreError::NotEnrolled)?
            .token;
        let url = self.endpoint(&format!("/v1/photos/{hash}"));
        let reply = self.send(|http| http.get(&url).bearer_auth(&token)).await?;
        store.store().keep_fetched_photo(id, hash, &reply.body)?;
        Ok(reply.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_piece_is_about_eight_seconds_of_the_link_within_the_bounds() {
        assert_eq!(photo_piece(0), FIRST_UPLOAD_PIECE_BYTES);
        // 50 kbit/s: ~6 KB/s → 50 KB a piece.
        assert_eq!(photo_piece(6_250), 50_000);
        assert_eq!(photo_piece(1), MIN_UPLOAD_PIECE_BYTES);
        assert_eq!(photo_piece(10_000_000), MAX_PHOTO_PIECE_BYTES);
    }
}
