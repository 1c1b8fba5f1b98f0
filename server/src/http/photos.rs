//! Photos over HTTP (SYNC-v1 §14.3, after the IETF resumable-upload draft): `HEAD`, `PATCH`
//! and `GET /v1/photos/{hash}` for the phones, and the supervisors' `GET /photos/{hash}` and
//! `/photos/{hash}/thumb` behind their session. Thin over [`crate::service::photos`], which
//! holds the scope rule (a hash a stored record in the caller's scope refers to, else 404).

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use qiaomen_protocol::photo::MAX_PHOTO_PIECE_BYTES;

use super::{
    ApiError,
    AppState,
    ErrorBody,
    auth::{Caller, DeviceAuth},
    // An error answer with a status [`ApiError`] has no variant for.
    error_response as error,
    pages::{PageError, PageSession},
};
use crate::service::photos::{self, Status, UploadError};

/// The media type of a `PATCH` body (the resumable-upload draft's).
pub const PIECE_CONTENT_TYPE: &str = "application/offset+octet-stream";

/// The path of the photo routes, for the OpenAPI document.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct PhotoPath {
    /// The photo's SHA-256, 64 lower-case hex characters (else `400 bad_hash`).
    #[param(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)]
    hash: String,
}

const UPLOAD_OFFSET: &str = "upload-offset";
const UPLOAD_LENGTH: &str = "upload-length";
const UPLOAD_COMPLETE: &str = "upload-complete";

fn with_status(mut resp: Response, s: Status) -> Response {
    let h = resp.headers_mut();
    h.insert(UPLOAD_OFFSET, HeaderValue::from(s.offset));
    h.insert(UPLOAD_LENGTH, HeaderValue::from(s.length));
    if s.complete {
        h.insert(UPLOAD_COMPLETE, HeaderValue::from_static("?1"));
    }
    resp
}

/// `HEAD /v1/photos/{hash}`: how much of the photo the server holds.
#[utoipa::path(head, path = "/v1/photos/{hash}", tag = "photos", security(("bearer" = [])),
    params(PhotoPath),
    responses(
        (status = 200, description = "held: `Upload-Offset` bytes of `Upload-Length`; `Upload-Complete: ?1` once complete",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64), ("Upload-Complete" = String))),
        (status = 400, description = "not a photo hash (`bad_hash`)"),
        (status = 401, description = "not signed in, or the token was revoked or reused"),
        (status = 404, description = "no stored record in the caller's scope refers to this hash (`unknown_photo`)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "the photo store could not answer")))]
pub async fn head(
    State(state): State<AppState>,
    caller: Caller,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let s = photos::status(&state, &caller, &hash).await?;
    // An offset is true only now (the resumable-upload draft): never from a cache.
    let mut resp = with_status(StatusCode::OK.into_response(), s);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `PATCH /v1/photos/{hash}`: the photo's bytes from `Upload-Offset` on.
#[utoipa::path(patch, path = "/v1/photos/{hash}", tag = "photos", security(("bearer" = [])),
    params(
        PhotoPath,
        ("Upload-Offset" = u64, Header, description = "where the body begins in the photo: the offset the server holds"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream",
        description = "the photo's bytes from Upload-Offset on, at most 256 KiB"),
    responses(
        (status = 204, description = "taken in: `Upload-Offset` is the new offset; `Upload-Complete: ?1` once complete (also for a photo complete before)",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64), ("Upload-Complete" = String))),
        (status = 400, description = "not a photo hash (`bad_hash`) or no offset (`bad_offset`)", body = ErrorBody),
        (status = 401, description = "not a device's token, or it was revoked or reused", body = ErrorBody),
        (status = 404, description = "no stored record in the device's scope refers to this hash (`unknown_photo`)", body = ErrorBody),
        (status = 409, description = "the offset is not the server's (`offset_mismatch`; resume from `Upload-Offset`)", body = ErrorBody,
            headers(("Upload-Offset" = u64))),
        (status = 413, description = "over 256 KiB, or past the photo's size (`too_large`)", body = ErrorBody),
        (status = 415, description = "the body is not application/offset+octet-stream", body = ErrorBody),
        (status = 422, description = "the complete bytes are not the photo (`hash_mismatch`, `media_type`); nothing is kept", body = ErrorBody),
        (status = 429, description = "rate limited, or the device's photo bytes for today are used up (`photo_quota`, with Retry-After)", body = ErrorBody),
        (status = 503, description = "a store could not answer", body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.trim().eq_ignore_ascii_case(PIECE_CONTENT_TYPE) {
        return Ok(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be {PIECE_CONTENT_TYPE}"),
        ));
    }
    let Some(offset) = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return Err(ApiError::BadRequest {
            code: "bad_offset",
            message: "Upload-Offset 应为非负整数".into(),
        });
    };
    let (body, cut) = read_piece(body).await?;
    if let Some(cut) = cut {
        // The link broke (or stalled) mid-piece: what arrived is kept, so the phone's `HEAD`
        // resumes after it and a cut costs the bytes in flight, not the piece. The answer
        // goes nowhere on a broken link; it is the body's error all the same.
        if !body.is_empty() {
            let kept = body.len();
            match photos::upload(&state, &device, &hash, offset, body).await {
                Ok(_) => tracing::debug!(photo = %hash, kept, "kept a cut piece"),
                Err(_) => tracing::debug!(photo = %hash, "a cut piece was not kept"),
            }
        }
        return Err(cut);
    }
    Ok(
        match photos::upload(&state, &device, &hash, offset, body).await {
            Ok(s) => with_status(StatusCode::NO_CONTENT.into_response(), s),
            Err(UploadError::Service(e)) => return Err(e.into()),
            Err(UploadError::OffsetMismatch { held }) => {
                let mut resp = error(
                    StatusCode::CONFLICT,
                    "offset_mismatch",
                    format!("服务器已有 {held} 字节，请从这里继续"),
                );
                resp.headers_mut()
                    .insert(UPLOAD_OFFSET, HeaderValue::from(held));
                resp
            }
            Err(UploadError::TooLarge { message }) => {
                error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            Err(UploadError::Refused { code, message }) => {
                error(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            Err(UploadError::Quota { retry_after_s }) => {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "photo_quota",
                    "这台手机今天上传的照片已达上限，明天再传".into(),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                resp
            }
        },
    )
}

/// Reads a piece, at most [`MAX_PHOTO_PIECE_BYTES`]: the bytes and, when the body ended in an
/// error (a cut link, the body timeout), that error with the bytes that came before it. A body
/// over the limit is refused whole (`413`), never kept in part.
async fn read_piece(body: Body) -> Result<(bytes::Bytes, Option<ApiError>), ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut got = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if got.len() + data.len() > MAX_PHOTO_PIECE_BYTES {
                    return Err(super::edge::too_large(MAX_PHOTO_PIECE_BYTES));
                }
                got.extend_from_slice(&data);
            }
            Err(e) => {
                let err = super::edge::body_error(e, MAX_PHOTO_PIECE_BYTES);
                if matches!(err, ApiError::PayloadTooLarge { .. }) {
                    return Err(err);
                }
                return Ok((got.freeze(), Some(err)));
            }
        }
    }
    Ok((got.freeze(), None))
}

/// `GET /v1/photos/{hash}`: a complete photo of the caller's grids.
#[utoipa::path(get, path = "/v1/photos/{hash}", tag = "photos", security(("bearer" = [])),
    params(PhotoPath),
    responses(
        (status = 200, description = "the photo", content((Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/webp"))),
        (status = 400, description = "not a photo hash (`bad_hash`)", body = ErrorBody),
        (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody),
        (status = 404, description = "not complete, or no stored record in the caller's scope refers to it (`unknown_photo`)", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody),
        (status = 503, description = "the photo store could not answer", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let (mime, bytes, _) = photos::fetch(&state, &caller, &hash).await?;
    Ok(image(mime, bytes))
}

fn image(mime: &'static str, bytes: axum::body::Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "private, no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /photos/{hash}`: a supervisor opens the full photo (audited).
pub async fn photo_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(hash): Path<String>,
) -> Result<Response, PageError> {
    let (mime, bytes) = photos::open(&state, &caller, &hash).await?;
    Ok(image(mime, bytes))
}

/// `GET /photos/{hash}/thumb`: its thumbnail, for the pages.
pub async fn thumb_page(
    State(state): State<AppState>,
    PageSession(caller): PageSession,
    Path(hash): Path<String>,
) -> Result<Response, PageError> {
    let jpeg = photos::thumbnail(&state, &caller, &hash).await?;
    Ok(image("image/jpeg", jpeg))
}
