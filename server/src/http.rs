//! The HTTP surface: `POST /v1/sync` and `GET /healthz`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{FromRequestParts, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use qiaomen_protocol::{
    ids::DeviceId,
    wire::{self, CONTENT_TYPE, DocChanges, PROTOCOL_VERSION, SyncResponse, WireError, limits},
};
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::{
    ingest::{Upload, Writer},
    storage::{SqliteStorage, Storage},
};

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub writer: Writer,
    pub readers: Arc<ReaderPool>,
    /// About how many bytes of changes one response carries before it sets `more`.
    pub response_budget: usize,
}

/// Read connections, reused across requests.
#[derive(Debug)]
pub struct ReaderPool {
    template: Mutex<SqliteStorage>,
    idle: Mutex<Vec<SqliteStorage>>,
}

impl ReaderPool {
    pub fn new(template: SqliteStorage) -> Self {
        Self {
            template: Mutex::new(template),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a reader connection, on a blocking thread.
    pub async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut SqliteStorage) -> crate::storage::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.idle.lock().expect("pool lock").pop();
            let mut conn = match conn {
                Some(c) => c,
                None => pool.template.lock().expect("pool lock").reopen()?,
            };
            let out = f(&mut conn);
            pool.idle.lock().expect("pool lock").push(conn);
            out
        })
        .await
        .map_err(|_| ApiError::internal("reader task failed"))?
        .map_err(|e| {
            tracing::error!(error = %e, "read failed");
            ApiError::Unavailable
        })
    }
}

/// An error answer: a status and a typed JSON body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest { code: &'static str, message: String },
    PayloadTooLarge { code: &'static str, message: String },
    UnsupportedMediaType,
    Conflict { code: &'static str, message: String },
    Unavailable,
    Internal,
}

impl ApiError {
    fn internal(what: &'static str) -> Self {
        tracing::error!(what, "internal error");
        ApiError::Internal
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            ApiError::PayloadTooLarge { code, message } => {
                (StatusCode::PAYLOAD_TOO_LARGE, code, message)
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("the body must be {CONTENT_TYPE}"),
            ),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server could not store or read; retry".into(),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".into(),
            ),
        };
        (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code, message },
            }),
        )
            .into_response()
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLarge(_) => ApiError::PayloadTooLarge {
                code: "too_large",
                message: e.to_string(),
            },
            WireError::UnsupportedVersion(_) => ApiError::BadRequest {
                code: "unsupported_version",
                message: format!("{e}; this server speaks {PROTOCOL_VERSION}"),
            },
            WireError::NotCompressed | WireError::Malformed => ApiError::BadRequest {
                code: "malformed",
                message: e.to_string(),
            },
        }
    }
}

/// The device making a request. Until enrollment lands (the access issue), a device names
/// itself in `X-Qiaomen-Device`; authentication will replace this extractor, and every
/// handler that takes it gets the authenticated device instead.
#[derive(Debug, Clone, Copy)]
pub struct DeviceIdentity(pub Option<DeviceId>);

impl<S: Send + Sync> FromRequestParts<S> for DeviceIdentity {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("x-qiaomen-device") {
            None => Ok(DeviceIdentity(None)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .map(|d| DeviceIdentity(Some(d)))
                .ok_or(ApiError::BadRequest {
                    code: "bad_device",
                    message: "X-Qiaomen-Device is not a UUID".into(),
                }),
        }
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/sync", post(sync))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (seq, docs) = state
        .readers
        .with(|s| Ok((s.max_seq()?, s.doc_count()?)))
        .await?;
    Ok(Json(
        serde_json::json!({ "status": "ok", "log_seq": seq, "documents": docs }),
    ))
}

async fn sync(
    State(state): State<AppState>,
    device: DeviceIdentity,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Media types compare case-insensitively (RFC 9110 §8.3.1).
    if !ct.trim().eq_ignore_ascii_case(CONTENT_TYPE) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: Bytes = axum::body::to_bytes(body, limits::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            code: "too_large",
            message: format!("the body exceeds {} bytes", limits::MAX_BODY_BYTES),
        })?;
    let bytes_in = body.len();
    let mut req =
        tokio::task::spawn_blocking(move || wire::decode_request(&body, limits::MAX_DECODED_BYTES))
            .await
            .map_err(|_| ApiError::internal("decode task failed"))??;
    let n_changes: usize = req.docs.iter().map(|d| d.changes.len()).sum();
    if req.docs.len() > limits::MAX_DOCS || n_changes > limits::MAX_CHANGES {
        return Err(ApiError::PayloadTooLarge {
            code: "too_many",
            message: format!(
                "at most {} documents and {} changes per request",
                limits::MAX_DOCS,
                limits::MAX_CHANGES
            ),
        });
    }
    let mut seen = HashSet::new();
    if !req.docs.iter().all(|d| seen.insert(d.id)) {
        return Err(ApiError::BadRequest {
            code: "malformed",
            message: "a household appears more than once in the request".into(),
        });
    }
    if req.grids.len() > 1_000 {
        return Err(ApiError::PayloadTooLarge {
            code: "too_many",
            message: "at most 1000 grids".into(),
        });
    }
    let cursor = req.cursor.unwrap_or(0);
    let max_seq = state.readers.with(|s| s.max_seq()).await?;
    if cursor > max_seq {
        return Err(ApiError::Conflict {
            code: "cursor_ahead",
            message: "the cursor is past the end of this server's log; resync with no cursor and every change".into(),
        });
    }
    // The cursor must point at the same log entry it did when the phone got it: a server
    // restored from an older backup may have grown past the cursor with other changes.
    if cursor > 0
        && let Some(check) = req.cursor_check.clone()
    {
        let at = state.readers.with(move |s| s.hash_at(cursor)).await?;
        if at.as_deref() != Some(check.as_slice()) {
            return Err(ApiError::Conflict {
                code: "cursor_diverged",
                message: "this server's log differs at the cursor; resync with no cursor and every change".into(),
            });
        }
    }
    let outcome = if n_changes > 0 {
        state
            .writer
            .submit(Upload {
                device: device.0,
                docs: std::mem::take(&mut req.docs),
            })
            .await
            .map_err(|_| ApiError::Unavailable)?
    } else {
        Default::default()
    };
    let grids = req.grids;
    let budget = state.response_budget;
    let uploaded: HashSet<&[u8]> = outcome.uploaded.iter().map(|h| h.as_ref()).collect();
    let (slice, check) = state
        .readers
        .with(move |s| {
            let slice = s.log_since(cursor, budget, &grids)?;
            let check = if slice.cursor > 0 {
                s.hash_at(slice.cursor)?
            } else {
                None
            };
            Ok((slice, check))
        })
        .await?;
    let mut order = Vec::new();
    let mut by_doc: HashMap<_, Vec<ByteBuf>> = HashMap::new();
    for c in slice.changes {
        // What this phone uploads it has: not sent back.
        if uploaded.contains(c.hash.as_slice()) {
            continue;
        }
        by_doc
            .entry(c.doc)
            .or_insert_with(|| {
                order.push(c.doc);
                Vec::new()
            })
            .push(ByteBuf::from(c.bytes));
    }
    let docs: Vec<DocChanges> = order
        .into_iter()
        .map(|id| DocChanges {
            id,
            changes: by_doc.remove(&id).unwrap_or_default(),
        })
        .collect();
    let response = SyncResponse {
        cursor_check: check.map(ByteBuf::from),
        version: PROTOCOL_VERSION,
        cursor: slice.cursor,
        accepted: outcome.accepted,
        rejected: outcome.rejected,
        docs,
        more: slice.more,
    };
    let n_down = response.docs.len();
    let n_rejected = response.rejected.len();
    let accepted = response.accepted;
    let body = tokio::task::spawn_blocking(move || wire::encode(&response))
        .await
        .map_err(|_| ApiError::internal("encode task failed"))?;
    tracing::info!(
        device = ?device.0,
        bytes_in,
        bytes_out = body.len(),
        accepted,
        rejected = n_rejected,
        docs_down = n_down,
        "sync"
    );
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}
