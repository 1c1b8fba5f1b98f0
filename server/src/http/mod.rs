//! The HTTP surface: `POST /v1/sync` (enrolled devices), enrollment, token rotation and
//! login ([`auth`]), the JSON API ([`api`]) and `GET /healthz`.

pub mod admin_pages;
pub mod api;
pub mod auth;
pub mod cards;
pub mod edge;
pub mod import;
pub mod journal;
pub mod ledger;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod phones;
pub mod photos;
pub mod reports;
pub mod tasks;
pub mod workflow;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use qiaomen_protocol::wire::{
    self, CONTENT_TYPE, DocChanges, PROTOCOL_VERSION, SyncResponse, WholePass, WireError, limits,
};
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::{
    access::{AccessDb, AccessError, policy::Principal},
    ingest::{Upload, Writer},
    service,
    storage::{PgStorage, SqliteStorage, Storage, WholeFrom},
};

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub writer: Writer,
    pub readers: Arc<ReaderPool>,
    /// The access tables (one connection; their calls are short).
    pub access_db: Arc<Mutex<AccessDb>>,
    pub limits: Arc<auth::Limits>,
    /// About how many bytes of changes one response carries before it sets `more`.
    pub response_budget: usize,
    /// Whole documents on a first sync (SYNC-v1 §7.3.1).
    pub whole_docs: bool,
    /// Packed changes in responses (SYNC-v1 §4.4.1).
    pub packed_downloads: bool,
    /// The read model for coverage, work orders and statistics.
    pub index: Arc<Mutex<crate::index::Index>>,
    /// Work-order deadlines and the visit rotation (read without the read model's lock).
    pub workflow: Arc<crate::index::Workflow>,
    /// Body limits, timeouts, trusted proxies, TLS ([`edge`]).
    pub edge: Arc<edge::EdgeConfig>,
    /// Which household holds each demand id ([`crate::orders`]).
    pub demand_ids: Arc<crate::orders::DemandIds>,
    /// What `/metrics` exports ([`crate::metrics`]).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Held by a hotline import while it writes ([`crate::service::import::import`]): imports
    /// one at a time.
    pub imports: Arc<tokio::sync::Mutex<()>>,
    /// The photo store ([`crate::blobs`]).
    pub photos: Arc<crate::blobs::Blobs>,
    /// Photo bytes each device may have accepted per UTC day.
    pub photo_quota: u64,
}

/// JSON numbers that must be whole: `15` and `15.0` are the same integer to JSON Schema (and
/// to the OpenAPI document's clients), so both are accepted; `15.5` is not.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
                .map(Some)
                .ok_or_else(|| D::Error::custom("not a whole number")),
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        integral(d)?
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| D::Error::custom("not a whole number in range"))
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        integral(d)
    }
}

impl AppState {
    /// Brings the read model up to the log's end (up to [`crate::index::READ_ROWS`] changes;
    /// a larger backlog is the background refresher's) and runs `f` on it, on a blocking
    /// thread.
    pub async fn index<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::index::Index) -> crate::storage::Result<T> + Send + 'static,
    ) -> crate::service::Result<T> {
        self.read_model(false, f).await
    }

    /// As [`AppState::index`], once the read model has read the whole log as it stands: what
    /// was acknowledged before the call is counted.
    pub async fn index_caught_up<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::index::Index) -> crate::storage::Result<T> + Send + 'static,
    ) -> crate::service::Result<T> {
        self.read_model(true, f).await
    }

    async fn read_model<T: Send + 'static>(
        &self,
        whole_log: bool,
        f: impl FnOnce(&crate::index::Index) -> crate::storage::Result<T> + Send + 'static,
    ) -> crate::service::Result<T> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            // A panic under the lock rolled back its transaction (the read model is its
            // tables): take the lock over rather than fail every later read.
            let mut ix = index
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if whole_log {
                ix.refresh()?;
            } else {
                ix.refresh_batch(crate::index::READ_ROWS)?;
            }
            f(&ix)
        })
        .await
        .map_err(|_| service::Error::internal("index task failed"))?
        .map_err(|e| {
            tracing::error!(error = %e, "read model failed");
            service::Error::Busy
        })
    }

    /// Runs `f` on the access tables, on a blocking thread.
    pub async fn access<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut AccessDb) -> crate::access::Result<T> + Send + 'static,
    ) -> crate::service::Result<T> {
        let db = self.access_db.clone();
        tokio::task::spawn_blocking(move || f(&mut db.lock().expect("access lock")))
            .await
            .map_err(|_| service::Error::internal("access task failed"))?
            .map_err(service::Error::from)
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        service::Error::from(e).into()
    }
}

/// The one place a domain error becomes an HTTP status (and its stable code and message).
impl From<service::Error> for ApiError {
    fn from(e: service::Error) -> Self {
        match e {
            service::Error::Invalid { code, message } => ApiError::BadRequest { code, message },
            service::Error::Forbidden { code, message } => ApiError::Forbidden { code, message },
            service::Error::NotFound { code, message } => ApiError::NotFound { code, message },
            service::Error::Conflict { code, message } => ApiError::Conflict { code, message },
            service::Error::TooMany => ApiError::TooManyRequests,
            service::Error::Busy => ApiError::Unavailable,
            service::Error::Internal => ApiError::Internal,
        }
    }
}

/// Reader connections kept open between requests.
const IDLE_READERS: usize = 4;

/// The log's readers: SQLite connections reused across requests, or a backend that pools its
/// own (PostgreSQL).
#[derive(Debug)]
pub struct ReaderPool(Readers);

#[derive(Debug)]
enum Readers {
    Sqlite {
        template: Mutex<SqliteStorage>,
        idle: Mutex<Vec<SqliteStorage>>,
    },
    Pooled(PgStorage),
}

impl ReaderPool {
    pub fn new(template: SqliteStorage) -> Self {
        Self(Readers::Sqlite {
            template: Mutex::new(template),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Readers on PostgreSQL: every call takes a connection of the handle's pool.
    pub fn pooled(storage: PgStorage) -> Self {
        Self(Readers::Pooled(storage))
    }

    /// The PostgreSQL handle the readers use, if the server is on PostgreSQL.
    pub fn postgres(&self) -> Option<&PgStorage> {
        match &self.0 {
            Readers::Pooled(storage) => Some(storage),
            Readers::Sqlite { .. } => None,
        }
    }

    /// Runs `f` on a reader, on a blocking thread.
    pub async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Storage) -> crate::storage::Result<T> + Send + 'static,
    ) -> crate::service::Result<T> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || match &pool.0 {
            Readers::Sqlite { template, idle } => {
                let conn = idle.lock().expect("pool lock").pop();
                let conn = match conn {
                    Some(c) => c,
                    None => template.lock().expect("pool lock").reopen()?,
                };
                let out = f(&conn);
                // Each connection holds its own page cache: keep a few for the next requests
                // and close the rest, so a burst of readers does not stay in memory.
                let mut idle = idle.lock().expect("pool lock");
                if idle.len() < IDLE_READERS {
                    idle.push(conn);
                }
                out
            }
            Readers::Pooled(storage) => f(storage),
        })
        .await
        .map_err(|_| service::Error::internal("reader task failed"))?
        .map_err(|e| {
            tracing::error!(error = %e, "read failed");
            service::Error::Busy
        })
    }
}

/// An error answer: a status and a typed JSON body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest {
        code: &'static str,
        message: String,
    },
    PayloadTooLarge {
        code: &'static str,
        message: String,
    },
    UnsupportedMediaType,
    Unauthorized {
        code: &'static str,
        message: String,
    },
    Forbidden {
        code: &'static str,
        message: String,
    },
    NotFound {
        code: &'static str,
        message: String,
    },
    Conflict {
        code: &'static str,
        message: String,
    },
    TooManyRequests,
    /// The client stopped sending its body (`408`; the connection is closed).
    BodyTimeout,
    Unavailable,
    Internal,
}

impl ApiError {
    fn internal(what: &'static str) -> Self {
        tracing::error!(what, "internal error");
        ApiError::Internal
    }
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code to act on (`unauthenticated`, `not_found`, `forbidden`, ...).
    code: &'static str,
    /// For people; never personal data.
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
            ApiError::Unauthorized { code, message } => (StatusCode::UNAUTHORIZED, code, message),
            ApiError::Forbidden { code, message } => (StatusCode::FORBIDDEN, code, message),
            ApiError::NotFound { code, message } => (StatusCode::NOT_FOUND, code, message),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message),
            ApiError::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry later".into(),
            ),
            ApiError::BodyTimeout => {
                let mut resp = (
                    StatusCode::REQUEST_TIMEOUT,
                    Json(ErrorBody {
                        error: ErrorDetail {
                            code: "body_timeout",
                            message: "the body did not arrive in time".into(),
                        },
                    }),
                )
                    .into_response();
                resp.headers_mut().insert(
                    header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
                resp.extensions_mut().insert(ErrorCode("body_timeout"));
                return resp;
            }
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
        error_response(status, code, message)
    }
}

/// An error answer of the API's shape (`{"error":{"code","message"}}`), its code kept on the
/// response for the metrics.
pub(crate) fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut resp = (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response();
    resp.extensions_mut().insert(ErrorCode(code));
    resp
}

/// The code of an error answer, kept on the response for the metrics ([`crate::metrics`]).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

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

/// A JSON body; a body that is not JSON of the expected shape is a typed `400 malformed`
/// (axum's own answer is plain text), without echoing the input.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(|e| match edge::body_failure(&e, 0) {
                Some(ApiError::PayloadTooLarge { code, .. }) => ApiError::PayloadTooLarge {
                    code,
                    message: "the body is larger than this endpoint takes".into(),
                },
                Some(failure) => failure,
                None => ApiError::BadRequest {
                    code: "malformed",
                    message:
                        "the body must be JSON (content-type application/json) of the documented shape"
                            .into(),
                },
            })
    }
}

/// Query parameters, with the same typed `400 malformed` when they do not parse.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|_| ApiError::BadRequest {
                code: "malformed",
                message: "the query parameters are not the documented ones".into(),
            })
    }
}

/// The router. Every route takes bodies of at most `edge.body_limit` bytes (64 KiB by
/// default) except sync ([`limits::MAX_BODY_BYTES`]) and the hotline import
/// ([`edge::IMPORT_BODY_LIMIT`], and its page [`edge::IMPORT_PAGE_BODY_LIMIT`]); every POST passes the cross-site check and every answer gets
/// the edge's headers ([`edge`]).
pub fn router(state: AppState) -> Router {
    use axum::middleware::{from_fn, from_fn_with_state};
    let small = state.edge.body_limit;
    let bounded = |limit: usize| from_fn_with_state(limit, edge::limit_body);
    Router::new()
        .route(
            "/v1/sync",
            post(sync).layer(bounded(limits::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/photos/{hash}",
            get(photos::get)
                .head(photos::head)
                .patch(photos::patch)
                .layer(bounded(qiaomen_protocol::photo::MAX_PHOTO_PIECE_BYTES)),
        )
        .route(
            "/api/v1/orders/import",
            post(import::import_orders)
                .layer(axum::extract::DefaultBodyLimit::max(
                    edge::IMPORT_BODY_LIMIT,
                ))
                .layer(bounded(edge::IMPORT_BODY_LIMIT)),
        )
        .route(
            "/orders/import",
            get(pages::import_page)
                .post(pages::import_submit)
                .layer(axum::extract::DefaultBodyLimit::max(
                    edge::IMPORT_PAGE_BODY_LIMIT,
                ))
                .layer(bounded(edge::IMPORT_PAGE_BODY_LIMIT)),
        )
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(ops::readyz))
                .route("/metrics", get(ops::metrics))
                .route("/v1/enroll", post(auth::enroll))
                .route("/v1/token", post(auth::rotate))
                .route("/v1/login", post(auth::login))
                .route("/v1/logout", post(auth::logout))
                .route("/v1/me", get(api::me))
                .route("/api/v1/households/{id}", get(api::household))
                .route("/api/v1/households/{id}/reviews", post(api::review))
                .route("/api/v1/households/{id}/move", post(api::move_to))
                .route("/api/v1/phones", get(phones::phones))
                .route(
                    "/api/v1/households/{id}/conflicts/resolve",
                    post(api::resolve),
                )
                .route("/api/v1/org", get(api::org))
                .route("/api/v1/coverage", get(workflow::coverage_report))
                .route("/api/v1/coverage/series", get(reports::coverage_series))
                .route("/api/v1/orders", get(workflow::orders))
                .route("/api/v1/orders/{demand}", get(workflow::order))
                .route("/api/v1/orders/{demand}/steps", post(workflow::order_step))
                .route(
                    "/api/v1/households/{id}/demands",
                    post(workflow::create_demand),
                )
                .route("/api/v1/cases", get(ledger::list))
                .route("/api/v1/cases/export", get(ledger::export))
                .route("/api/v1/cases/{id}", get(ledger::one))
                .route("/api/v1/cases/{id}/steps", post(ledger::step))
                .route("/api/v1/journal", get(journal::list))
                .route("/api/v1/journal/{id}/dispatch", post(journal::dispatch))
                .route("/api/v1/journal/{id}/case", post(journal::track))
                .route("/api/v1/stats", get(workflow::stats_report))
                .route("/api/v1/stats/export", get(reports::stats_export))
                .route("/api/v1/ranking", get(workflow::ranking))
                .route("/api/v1/refused", get(workflow::refused))
                .route("/api/v1/tasks", get(tasks::lists).post(tasks::push_list))
                .route("/api/v1/tasks/{id}", get(tasks::list))
                .route("/api/v1/tasks/{id}/done", post(tasks::done))
                .route("/api/v1/workflow", get(tasks::workflow))
                .route("/api/v1/grids/{grid}/households", get(api::grid_households))
                .route("/api/v1/grids/{grid}/export", get(api::grid_export))
                .route("/api/v1/devices", get(api::devices))
                .route("/api/v1/devices/{id}/revoke", post(api::revoke))
                .route("/api/v1/devices/{id}/retire", post(api::retire))
                .route("/api/v1/audit", get(api::audit))
                .route("/api/v1/openapi.json", get(openapi::openapi_json))
                .route("/", get(pages::org_page))
                .route("/login", get(pages::login_page).post(pages::login_submit))
                .route("/logout", post(pages::logout))
                .route("/grids/{grid}", get(pages::grid_page))
                .route("/grids/{grid}/map", get(pages::map_page))
                .route("/grids/{grid}/cards", get(cards::sheet_page))
                .route("/households/{id}/card/reissue", post(cards::reissue_submit))
                .route(
                    "/card/{token}",
                    get(cards::resident_page).post(cards::resident_submit),
                )
                .route("/households/{id}", get(pages::household_page))
                .route("/photos/{hash}", get(photos::photo_page))
                .route("/photos/{hash}/thumb", get(photos::thumb_page))
                .route("/households/{id}/review", post(pages::review_submit))
                .route("/households/{id}/resolve", post(pages::resolve_submit))
                .route("/households/{id}/move", post(pages::move_submit))
                .route("/phones", get(phones::phones_page))
                .route("/coverage", get(pages::coverage_page))
                .route("/orders", get(pages::orders_page))
                .route("/refused", get(pages::refused_page))
                .route("/orders/{demand}", get(pages::order_page))
                .route("/orders/{demand}/step", post(pages::order_step_submit))
                .route("/ledger", get(ledger::ledger_page))
                .route("/cases/{id}", get(ledger::case_page))
                .route("/cases/{id}/step", post(ledger::case_step_submit))
                .route("/journal", get(journal::journal_page))
                .route("/journal/{id}/dispatch", post(journal::dispatch_submit))
                .route("/journal/{id}/case", post(journal::track_submit))
                .route("/stats", get(pages::stats_page))
                .route("/report", get(pages::report_page))
                .route("/tasks", get(pages::tasks_page).post(pages::tasks_submit))
                .route("/devices", get(pages::devices_page))
                .route("/admin", get(admin_pages::admin_page))
                .route("/admin/audit", get(admin_pages::audit_page))
                .route("/admin/codes", post(admin_pages::code_submit))
                .route("/admin/units", post(admin_pages::unit_submit))
                .route(
                    "/admin/units/{id}/close",
                    post(admin_pages::unit_close_submit),
                )
                .route("/admin/users", post(admin_pages::user_submit))
                .route("/admin/assign", post(admin_pages::assign_submit))
                .route("/admin/unassign", post(admin_pages::unassign_submit))
                .route("/devices/{id}/retire", post(pages::retire_submit))
                .route("/devices/{id}/revoke", post(pages::revoke_submit))
                .layer(bounded(small)),
        )
        .layer(from_fn(edge::same_origin))
        .layer(from_fn(edge::security_headers))
        .layer(from_fn_with_state(state.metrics.clone(), ops::observe))
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

/// A request body above this size (compressed) waits for one of [`LARGE_DECODES`].
const LARGE_BODY: usize = 64 * 1024;
/// Large bodies decoded at once, in this process (`limits::MAX_CONCURRENT_DECODES`).
static LARGE_DECODES: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(limits::MAX_CONCURRENT_DECODES);

async fn sync(
    State(state): State<AppState>,
    auth::DeviceAuth(device): auth::DeviceAuth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
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
        .map_err(|e| edge::body_error(e, limits::MAX_BODY_BYTES))?;
    let bytes_in = body.len();
    // A large body may inflate to `MAX_DECODED_BYTES`: only a few are decoded at once, so a
    // storm of them costs waiting, not memory.
    let permit = if bytes_in > LARGE_BODY {
        Some(
            LARGE_DECODES
                .acquire()
                .await
                .map_err(|_| ApiError::Unavailable)?,
        )
    } else {
        None
    };
    let mut req =
        tokio::task::spawn_blocking(move || wire::decode_request(&body, limits::MAX_DECODED_BYTES))
            .await
            .map_err(|_| ApiError::internal("decode task failed"))??;
    drop(permit);
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
    // After a lost answer a phone asks which of its changes the log holds (SYNC-v1 §7.4.1).
    if req.held_query.len() > limits::MAX_CHANGES {
        return Err(ApiError::PayloadTooLarge {
            code: "too_many",
            message: format!("at most {} hashes in h", limits::MAX_CHANGES),
        });
    }
    let held_query: Vec<[u8; 32]> = req
        .held_query
        .iter()
        .map(|h| <[u8; 32]>::try_from(h.as_slice()))
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::BadRequest {
            code: "malformed",
            message: "a hash in h is not 32 bytes".into(),
        })?;
    if req.docs.iter().any(|d| d.whole.is_some()) {
        return Err(ApiError::BadRequest {
            code: "malformed",
            message: "a request carries changes, never whole documents".into(),
        });
    }
    let cursor = req.cursor.unwrap_or(0);
    let max_seq = state.readers.with(|s| s.max_seq()).await?;
    // A first sync by whole documents goes on from a log position, like a cursor.
    let position = req.whole.filter(|_| cursor == 0).map_or(cursor, |w| w.seq);
    if position > max_seq {
        state
            .metrics
            .resyncs
            .get_or_create(&crate::metrics::Reason {
                reason: "cursor_ahead",
            })
            .inc();
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
            state
                .metrics
                .resyncs
                .get_or_create(&crate::metrics::Reason {
                    reason: "cursor_diverged",
                })
                .inc();
            return Err(ApiError::Conflict {
                code: "cursor_diverged",
                message: "this server's log differs at the cursor; resync with no cursor and every change".into(),
            });
        }
    }
    // What the device's user may read and write, now (and the grants of earlier periods).
    let user = device.user;
    let (scope, lists) = state
        .access(move |db| {
            let now = crate::access::now_ms();
            let scope = db.scope(user, now)?;
            let lists = db.task_lists(&scope.read, service::tasks::since_default(now))?;
            Ok((scope, lists))
        })
        .await?;
    // What the phone would fetch from the JSON API (settings, task lists): it does so only
    // when this digest differs from the one it holds.
    let extras = wire::fnv1a(&serde_json::to_vec(&(&*state.workflow, &lists)).unwrap_or_default());
    // Whether the phone's clock (its `Date` header) agrees with the server's: then its changes'
    // times are taken at their word for lateness (SYNC-v1 §13.6.1).
    let clock_ok = headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            let phone = d.as_millis() as i64;
            (phone - crate::access::now_ms()).abs() <= qiaomen_protocol::workorder::CLOCK_SKEW_MS
        });
    // Events and work logs (SYNC-v1 §13.12): each judged by the phone's own rules and the
    // user's scope, the good ones stored (once each) before the answer.
    if req.journal.len() > qiaomen_protocol::journal::MAX_ENTRIES {
        return Err(ApiError::PayloadTooLarge {
            code: "too_many",
            message: format!(
                "at most {} journal entries per request",
                qiaomen_protocol::journal::MAX_ENTRIES
            ),
        });
    }
    let journal_acks = if req.journal.is_empty() {
        Vec::new()
    } else {
        let now = crate::access::now_ms();
        let mut acks = Vec::with_capacity(req.journal.len());
        let mut good = Vec::new();
        for e in std::mem::take(&mut req.journal) {
            let code = match qiaomen_protocol::journal::check(&e, now) {
                Err(f) => Some(format!("{}:{}", f.field.code(), f.rule.code())),
                Ok(()) if !scope.may_write(&e.grid, e.at_ms.min(now)) => {
                    Some("out_of_scope".to_string())
                }
                Ok(()) => None,
            };
            acks.push(qiaomen_protocol::journal::JournalAck {
                id: e.id,
                code: code.clone(),
            });
            if code.is_none() {
                good.push(e);
            }
        }
        let (user, dev) = (device.user, device.device);
        state
            .access(move |db| db.store_journal(user, dev, &good))
            .await?;
        acks
    };
    let outcome = if n_changes > 0 {
        let principal = Arc::new(Principal {
            user: device.user,
            device: device.device,
            scope: scope.clone(),
            server_built: false,
            demand_ids: Some(state.demand_ids.clone()),
            clock_ok,
        });
        state
            .writer
            .submit(Upload {
                principal: Some(principal),
                docs: std::mem::take(&mut req.docs),
                packing: (!req.table.is_empty()).then(|| {
                    Arc::new(crate::ingest::Packing {
                        table: std::mem::take(&mut req.table),
                        base_ms: req.base_ms,
                    })
                }),
            })
            .await
            .map_err(|e| match e {
                crate::ingest::WriteFailed::TooManyOps => ApiError::PayloadTooLarge {
                    code: "too_many",
                    message: e.to_string(),
                },
                crate::ingest::WriteFailed::Storage => ApiError::Unavailable,
            })?
    } else {
        Default::default()
    };
    // When the device synced and what it still holds after this request's acknowledgements,
    // as it reported (`p`, counted before them), for an admin to see before taking it away.
    // A retiring device ends on a request with nothing to upload and nothing pending (a phone
    // that does not report `p`: nothing to upload).
    let knows_retire = req.features & wire::FEATURE_RETIRE != 0;
    let pending_after = req
        .pending
        .map(|p| p.saturating_sub(u64::from(outcome.accepted)));
    let end = device.retiring && n_changes == 0 && (!knows_retire || req.pending == Some(0));
    let now = crate::access::now_ms();
    // Idle checks stay read-only but once per grain: only what changed is written.
    let stale = device
        .last_sync_ms
        .is_none_or(|t| t < now - crate::access::tokens::LAST_SYNC_GRAIN_MS);
    let reported = pending_after.map(|p| i64::try_from(p).unwrap_or(i64::MAX));
    // What it runs, when it says (SYNC-v1 §5.1: bounded; an unfit one is not kept).
    let agent = wire::agent_of(&req).map(str::to_string);
    let new_agent = agent
        .as_deref()
        .is_some_and(|a| Some(wire::fnv1a(a.as_bytes())) != device.agent_digest);
    if device.retiring || n_changes > 0 || stale || reported != device.last_pending || new_agent {
        let id = device.device;
        state
            .access(move |db| db.record_sync(id, now, pending_after, end, agent.as_deref()))
            .await?;
    }
    if end {
        tracing::info!(device = %device.device, "retired device ended");
        if !knows_retire {
            // An older phone knows only revocation: it wipes on this, holding nothing
            // unacknowledged (its unsent task reports are lost).
            return Err(ApiError::Unauthorized {
                code: "device_revoked",
                message: "this device was retired; its data must be wiped".into(),
            });
        }
    }
    // The phone receives its scope, narrowed by the grids it asks for (if any).
    let grids: Vec<String> = scope
        .read
        .iter()
        .filter(|g| req.grids.is_empty() || req.grids.contains(g))
        .cloned()
        .collect();
    let scope_out: Vec<String> = scope.read.iter().cloned().collect();
    // A phone that runs the rules itself (feature bit 32) receives what its user may do with
    // its scope, and its scope digest covers both (SYNC-v1 §5.2).
    let rights = (req.features & wire::FEATURE_RIGHTS != 0).then(|| scope.rights().clone());
    let scope_digest = match &rights {
        Some(r) => wire::rights_digest(&scope_out, r),
        None => wire::scope_digest(&scope_out),
    };
    let send_scope = !device.retiring && req.scope_digest != Some(scope_digest);
    // The phone's piece size, within the server's own budget (SYNC-v1 §7.5).
    let budget = req.response_budget.map_or(state.response_budget, |r| {
        (r as usize).clamp(limits::MIN_RESPONSE_BUDGET_BYTES, state.response_budget)
    });
    // A phone with nothing yet takes each household as one whole document (SYNC-v1 §7.3.1).
    let whole_from = (state.whole_docs
        && req.features & wire::FEATURE_WHOLE_DOCS != 0
        && cursor == 0
        && !device.retiring
        && !grids.is_empty())
    .then_some(req.whole);
    let needed_first = req.features & wire::FEATURE_NEEDED_FIRST != 0;
    let page = match whole_from {
        Some(from) => whole_page(&state, grids, from, needed_first, budget).await?,
        None => {
            log_page(
                &state,
                grids,
                cursor,
                budget,
                &outcome.uploaded,
                device.retiring,
                req.cursor_check.clone().map(ByteBuf::into_vec),
            )
            .await?
        }
    };
    let held = if held_query.is_empty() {
        None
    } else {
        Some(
            state
                .readers
                .with(move |s| {
                    let mut held = Vec::new();
                    for (i, h) in held_query.iter().enumerate() {
                        if s.has_change(h)? {
                            held.push(i as u32);
                        }
                    }
                    Ok(held)
                })
                .await?,
        )
    };
    let response = SyncResponse {
        journal: journal_acks,
        features: if req.features & wire::FEATURE_PACKED != 0 {
            wire::FEATURES
        } else {
            0
        },
        extras_digest: (req.extras_digest != Some(extras)).then_some(extras),
        cursor_check: page.check.map(ByteBuf::from),
        version: PROTOCOL_VERSION,
        cursor: page.cursor,
        accepted: outcome.accepted,
        rejected: outcome
            .rejected
            .into_iter()
            .map(|mut r| {
                r.code = r.code.for_features(req.features);
                r
            })
            .collect(),
        docs: page.docs,
        more: page.more,
        // Sent only when the phone's copy differs: an idle check stays tiny. A phone that
        // holds no rights yet sends the digest of its scope alone, so it gets both.
        rights: rights.filter(|_| send_scope),
        scope: send_scope.then_some(scope_out),
        retire: (device.retiring && knows_retire).then_some(if end {
            wire::Retire::Retired
        } else {
            wire::Retire::Retiring
        }),
        whole: page.whole,
        held,
        table: Vec::new(),
        base_ms: 0,
    };
    let n_down = response.docs.len();
    let n_rejected = response.rejected.len();
    let accepted = response.accepted;
    let m = &state.metrics;
    m.changes_accepted.inc_by(u64::from(accepted));
    for r in &response.rejected {
        m.changes_refused
            .get_or_create(&crate::metrics::Code {
                code: r.code.name(),
            })
            .inc();
    }
    let pack_down = state.packed_downloads && req.features & wire::FEATURE_PACKED_DOWN != 0;
    let body = tokio::task::spawn_blocking(move || {
        let mut response = response;
        if pack_down {
            pack_page(&mut response);
        }
        wire::encode_response(&response)
    })
    .await
    .map_err(|_| ApiError::internal("encode task failed"))?;
    m.sync_bytes_in.inc_by(bytes_in as u64);
    m.sync_bytes_out.inc_by(body.len() as u64);
    tracing::info!(
        device = %device.device,
        bytes_in,
        bytes_out = body.len(),
        accepted,
        rejected = n_rejected,
        docs_down = n_down,
        ms = started.elapsed().as_millis() as u64,
        "sync"
    );
    let mut response = ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response();
    if device.rotate {
        response.headers_mut().insert(
            "x-qiaomen-rotate-token",
            axum::http::HeaderValue::from_static("1"),
        );
    }
    Ok(response)
}
/// Packs the changes of a response for a phone that takes them (SYNC-v1 §4.4.1): each change
/// that packs to a form rebuilding the very same hash goes packed, any other as its chunk;
/// the table and base time go with them.
fn pack_page(response: &mut SyncResponse) {
    let mut packer = qiaomen_protocol::pack::Packer::new();
    let mut packed = false;
    for change in response.docs.iter_mut().flat_map(|d| d.changes.iter_mut()) {
        if let Some(p) = packer.pack_bytes(change) {
            *change = ByteBuf::from(p);
            packed = true;
        }
    }
    if packed {
        response.table = packer.wire_table();
        response.base_ms = packer.base_ms();
    }
}

/// What a sync answer sends down: households' changes (or whole documents), the cursor they
/// bring the phone to with its check, and whether to go on.
struct Page {
    docs: Vec<DocChanges>,
    cursor: u64,
    check: Option<Vec<u8>>,
    more: bool,
    /// A first sync by whole documents goes on from here (SYNC-v1 §7.3.1).
    whole: Option<wire::WholePosition>,
}

/// The log after the phone's cursor in its grids, up to `budget` bytes (SYNC-v1 §7.1, §7.5),
/// with the whole history of households that moved into them; what the phone uploaded in
/// this request left out. A retiring phone gets nothing and keeps its cursor.
async fn log_page(
    state: &AppState,
    grids: Vec<String>,
    cursor: u64,
    budget: usize,
    uploaded: &[qiaomen_protocol::ChangeHash],
    retiring: bool,
    request_check: Option<Vec<u8>>,
) -> Result<Page, ApiError> {
    let uploaded: HashSet<&[u8]> = uploaded.iter().map(|h| h.as_ref()).collect();
    let (slice, check) = state
        .readers
        .with(move |s| {
            let slice = if grids.is_empty() {
                // Nothing in scope: nothing to send, and the cursor moves to the log's end.
                crate::storage::LogSlice {
                    cursor: s.max_seq()?.max(cursor),
                    ..Default::default()
                }
            } else {
                let mut slice = s.log_since(cursor, budget, &grids)?;
                // Households that moved into the phone's grids since its cursor: their whole
                // history (rows logged under their earlier grid included), once.
                let moved = s.moved_into(cursor, slice.cursor, &grids)?;
                if !moved.is_empty() {
                    let have: HashSet<Vec<u8>> =
                        slice.changes.iter().map(|c| c.hash.clone()).collect();
                    let mut extra = Vec::new();
                    for id in moved {
                        extra.extend(
                            s.doc_log(id, slice.cursor)?
                                .into_iter()
                                .filter(|c| !have.contains(&c.hash)),
                        );
                    }
                    extra.extend(std::mem::take(&mut slice.changes));
                    extra.sort_by_key(|c| c.seq);
                    slice.changes = extra;
                }
                slice
            };
            let check = if slice.cursor > 0 {
                s.hash_at(slice.cursor)?
            } else {
                None
            };
            Ok((slice, check))
        })
        .await?;
    // A retiring phone is being handed over: it receives nothing more, and keeps its cursor.
    let (slice, check) = if retiring {
        (
            crate::storage::LogSlice {
                cursor,
                ..Default::default()
            },
            request_check,
        )
    } else {
        (slice, check)
    };
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
            whole: None,
        })
        .collect();
    Ok(Page {
        docs,
        cursor: slice.cursor,
        check,
        more: slice.more,
        whole: None,
    })
}

/// What one page of a first sync by whole documents answers (SYNC-v1 §7.3.1): the
/// households of the page, each as one whole document at the page's log position; the
/// cursor (that position) and its check on the last page, or the position to go on from.
async fn whole_page(
    state: &AppState,
    grids: Vec<String>,
    from: Option<wire::WholePosition>,
    needed_first: bool,
    budget: usize,
) -> Result<Page, ApiError> {
    if from.is_none() && needed_first {
        // The most needed are judged on the read model, so it first reads what the log
        // holds (a batch at most; its background task reads every 500 ms). If it cannot,
        // the grid goes in id order.
        let _ = state.index(|_| Ok(())).await;
    }
    let (page, at, check, behind, day) = state
        .readers
        .with(move |s| {
            let (at, start) = match from {
                Some(w) => (
                    w.seq,
                    WholeFrom {
                        pass: w.pass,
                        after: Some(w.after).filter(|a| !a.0.is_nil()),
                        day: w.day,
                    },
                ),
                None => {
                    // Judged on the read model only once it has read the whole log: a
                    // household whose log ends by then is judged alike in both passes.
                    let needed = needed_first && s.read_model_lag()?.behind == 0;
                    let start = WholeFrom {
                        pass: if needed {
                            WholePass::Needed
                        } else {
                            WholePass::All
                        },
                        after: None,
                        day: needed.then(service::today),
                    };
                    (s.max_seq()?, start)
                }
            };
            let page = s.whole_page(&grids, start, at, budget)?;
            let check = if page.done && at > 0 {
                s.hash_at(at)?
            } else {
                None
            };
            Ok((page, at, check, s.max_seq()? > at, start.day))
        })
        .await?;
    let next = page
        .last
        .filter(|_| !page.done)
        .map(|(pass, after)| wire::WholePosition {
            seq: at,
            after,
            pass,
            day: day.filter(|_| pass != WholePass::All),
        });
    let docs = tokio::task::spawn_blocking(move || {
        page.docs
            .into_iter()
            .map(|(id, changes)| whole_doc(id, changes))
            .collect()
    })
    .await
    .map_err(|_| ApiError::internal("whole documents task failed"))?;
    Ok(match next {
        // More households to come: no cursor yet.
        Some(next) => Page {
            docs,
            cursor: 0,
            check: None,
            more: true,
            whole: Some(next),
        },
        // The last page: the cursor is the position the documents were taken at, and what
        // the log holds after it comes by the ordinary sync from there.
        None => Page {
            docs,
            cursor: at,
            check,
            more: behind,
            whole: None,
        },
    })
}

/// A household as one whole document built from its logged changes (Automerge's saved form,
/// columns uncompressed: the response's zstd does better over them than DEFLATE under it).
/// A history the server cannot load (a quarantined household) goes as its changes, as the
/// log holds them, so it fails only itself, on the phone as it would have before.
fn whole_doc(
    id: qiaomen_protocol::ids::HouseholdId,
    changes: Vec<crate::storage::LoggedChange>,
) -> DocChanges {
    let bytes: Vec<u8> = changes
        .iter()
        .flat_map(|c| c.bytes.iter().copied())
        .collect();
    let saved = std::panic::catch_unwind(|| {
        automerge::Automerge::load(&bytes).map(|doc| doc.save_nocompress())
    });
    match saved {
        Ok(Ok(whole)) => DocChanges {
            id,
            changes: vec![],
            whole: Some(ByteBuf::from(whole)),
        },
        _ => DocChanges {
            id,
            changes: changes
                .into_iter()
                .map(|c| ByteBuf::from(c.bytes))
                .collect(),
            whole: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status and body an error answers with.
    async fn answer(e: impl Into<ApiError>) -> (u16, serde_json::Value) {
        let resp = e.into().into_response();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_domain_error_answers_with_its_status_code_and_message() {
        let cases = [
            (
                service::Error::invalid("bad day"),
                400,
                "invalid",
                "bad day",
            ),
            (
                service::Error::Forbidden {
                    code: "not_allowed",
                    message: "no".into(),
                },
                403,
                "not_allowed",
                "no",
            ),
            (
                service::Error::not_found("no such unit"),
                404,
                "not_found",
                "no such unit",
            ),
            (
                service::Error::Conflict {
                    code: "stale_order",
                    message: "moved on".into(),
                },
                409,
                "stale_order",
                "moved on",
            ),
            (
                service::Error::Busy,
                503,
                "unavailable",
                "the server could not store or read; retry",
            ),
            (service::Error::Internal, 500, "internal", "internal error"),
        ];
        for (e, status, code, message) in cases {
            assert_eq!(
                answer(e).await,
                (
                    status,
                    serde_json::json!({ "error": { "code": code, "message": message } })
                )
            );
        }
    }

    #[tokio::test]
    async fn an_access_error_answers_as_before_through_the_domain_error() {
        assert_eq!(
            answer(AccessError::NotFound("user")).await,
            (
                404,
                serde_json::json!({ "error": { "code": "not_found", "message": "no such user" } })
            )
        );
        assert_eq!(answer(AccessError::Invalid("x".into())).await.0, 400);
        assert_eq!(answer(AccessError::Hash).await.0, 500);
    }
}
