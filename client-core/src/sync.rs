//! Syncing a device store with a Qiaomen server over HTTP (protocol v1, see
//! `proto-docs/SYNC-v1.md`).
//!
//! One call of [`SyncClient::sync`] sends every change the server has not acknowledged,
//! batched and compressed, and receives every change in scope the phone lacks, in one round
//! trip for a phone that synced before. Larger uploads go in bounded chunks, each acknowledged
//! on its own, so a weak link makes progress. Changes leave the pending count only when the
//! server says they are durably stored; refused changes come back with a reason and the
//! document returns to what the server accepted.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use qiaomen_protocol::{
    ChangeHash,
    ids::HouseholdId,
    wire::{
        self, CONTENT_TYPE, DocChanges, PROTOCOL_VERSION, RejectCode, SyncRequest, SyncResponse,
        limits,
    },
};
use serde_bytes::ByteBuf;

use crate::{Store, StoreError};

mod photos;

/// Where a sync finds the phone's store. A sync takes it for one short step at a time (read
/// what to send, store what came back) and never while it waits for the network, so the app
/// records and reads while a sync runs on a slow link.
pub trait StoreAccess: Sync {
    /// The store, for one step.
    fn store(&self) -> impl std::ops::DerefMut<Target = Store> + '_;
}

/// A store shared with the app (the FFI's `Phone`). A step that panicked leaves the store as
/// its last committed transaction left it (each edit is one SQLite transaction), so the lock
/// is taken over rather than failing every later call.
impl StoreAccess for std::sync::Mutex<Store> {
    fn store(&self) -> impl std::ops::DerefMut<Target = Store> + '_ {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A store the caller lends for the whole sync ([`SyncClient::sync`]).
struct Lent<'s>(std::sync::Mutex<&'s mut Store>);

struct LentGuard<'a, 's>(std::sync::MutexGuard<'a, &'s mut Store>);

impl std::ops::Deref for LentGuard<'_, '_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0
    }
}

impl std::ops::DerefMut for LentGuard<'_, '_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.0
    }
}

impl StoreAccess for Lent<'_> {
    fn store(&self) -> impl std::ops::DerefMut<Target = Store> + '_ {
        LentGuard(
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Why a sync did not complete. Whatever was acknowledged before the failure stays
/// acknowledged; calling `sync` again resumes.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No answer from the server after the retries: `failure` says which way it failed
    /// (the last attempt's), `detail` the transport's words (no residents' data).
    #[error("network ({}): {detail}", failure.code())]
    Network {
        failure: NetworkFailure,
        detail: String,
    },
    /// The server answered with an error status.
    #[error("the server refused the request: {status} {code}")]
    Server { status: u16, code: String },
    /// The server's answer could not be understood.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The device store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server does not accept this device's credentials (`unauthenticated`, or an
    /// enrollment code that is invalid, used or expired). Nothing was changed.
    #[error("not authorized: {code}")]
    Unauthorized { code: String },
    /// The server revoked this device (`device_revoked`, `token_reused`): this user's data has
    /// been wiped from the phone, which must enroll again.
    #[error("this device was revoked; its data was wiped")]
    Revoked,
    /// An administrator retired this device (a handover). With `wiped`, everything it held is
    /// on the server and this user's data has been wiped from the phone, which must enroll
    /// again. Without, the phone still holds changes or task reports the server has not
    /// acknowledged (refused for now, e.g. `quarantined`) and keeps them: sync again later, or
    /// the administrator revokes the device.
    #[error("this device was retired")]
    Retired { wiped: bool },
    /// The CA certificate given to trust is not one (PEM, `-----BEGIN CERTIFICATE-----`).
    /// Nothing was changed.
    #[error("the trusted CA is not a PEM certificate")]
    BadCertificate,
}

/// How a request failed to reach an answer, so an app can tell a dead link from a slow one.
/// Named to apps by [`NetworkFailure::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkFailure {
    /// No connection could be made (no signal, no route, the server is down).
    Unreachable,
    /// Connected, then nothing arrived for [`Retry::stall`]: the link stopped moving.
    Stalled,
    /// The connection closed in the middle of a request or an answer.
    Cut,
    /// The server answered "busy" (5xx, 429) every time.
    Refused,
    /// The server's certificate is not trusted (not signed by a CA this phone trusts, or
    /// not for this address, or expired). Not retried: it will not heal by itself.
    Untrusted,
}

impl NetworkFailure {
    /// The stable code (`unreachable`, `stalled`, `cut`, `refused`, `untrusted`).
    pub fn code(self) -> &'static str {
        match self {
            NetworkFailure::Unreachable => "unreachable",
            NetworkFailure::Stalled => "stalled",
            NetworkFailure::Cut => "cut",
            NetworkFailure::Refused => "refused",
            NetworkFailure::Untrusted => "untrusted",
        }
    }

    /// A connection that could not be made is unreachable; one that went quiet for the stall
    /// time stalled; any other transport error (reset, closed mid-body) is a cut.
    fn of(e: &reqwest::Error) -> Self {
        if Self::is_untrusted(e) {
            NetworkFailure::Untrusted
        } else if e.is_connect() {
            NetworkFailure::Unreachable
        } else if e.is_timeout() {
            NetworkFailure::Stalled
        } else {
            NetworkFailure::Cut
        }
    }

    /// Whether TLS refused the server's certificate: rustls' error somewhere in the causes
    /// (inside `io::Error`s, whose `source` skips what they wrap: followed by `get_ref`).
    fn is_untrusted(e: &reqwest::Error) -> bool {
        let refused = |err: &(dyn std::error::Error + 'static)| {
            err.downcast_ref::<rustls::Error>().is_some_and(|r| {
                matches!(
                    r,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                )
            })
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cause {
            if refused(err) {
                return true;
            }
            cause = match err.downcast_ref::<std::io::Error>() {
                Some(io) => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
                None => err.source(),
            };
        }
        false
    }
}

/// How far a sync has come, reported after each round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    pub round_trips: u32,
    /// Households whose uploads are acknowledged so far / in total.
    pub docs_uploaded: usize,
    pub docs_to_upload: usize,
    /// Households received so far.
    pub docs_received: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// The outcome of a sync.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    pub progress: SyncProgress,
    /// Events and work logs the server answered about in this sync (stored or refused).
    pub journal_sent: usize,
    /// Changes the server acknowledged as durably stored.
    pub accepted: u64,
    /// Changes the server refused, each with its household and reason.
    pub rejected: Vec<(HouseholdId, ChangeHash, RejectCode)>,
    /// Changes received from the server that were new to this phone.
    pub received_changes: u64,
    /// Households whose downloaded changes could not be applied (their history is incomplete
    /// on this page) and were skipped.
    pub skipped_households: Vec<HouseholdId>,
    /// Households removed from the phone because their grid left the device's scope.
    pub dropped_households: usize,
    /// Task reports of this device the server stored in this sync.
    pub tasks_sent: usize,
    /// Weekly task lists of the device's grids now on the phone (when they were fetched).
    pub task_lists: usize,
    /// The server's digest of the settings and task lists, when it changed (`t`).
    pub extras_digest: Option<u64>,
    /// The server's last word on this device's retirement (`x`), if it was retired.
    pub retire: Option<wire::Retire>,
    /// Photos the server now holds whole, sent in this sync.
    pub photos_sent: usize,
    /// Photos the server refused in this sync (hash, code); their bytes stay on the phone.
    pub photos_refused: Vec<(String, String)>,
    /// Photos still to send (the link failed, the day's quota is spent, or the server does
    /// not know their record yet): the next sync sends them, resuming where they stopped.
    pub photos_waiting: usize,
    /// How the link failed while photos were sent, if it did (the records were not affected).
    pub photo_failure: Option<NetworkFailure>,
}

/// Enrolls the store at `path` with the server at `server_url` using a one-time `code`, and
/// opens it as the enrolled user and device. Safe to retry after a lost answer: the store keeps
/// an install id that the server recognises.
pub async fn enroll(
    path: impl AsRef<std::path::Path>,
    server_url: &str,
    code: &str,
    options: crate::StoreOptions,
) -> Result<Store, SyncError> {
    enroll_trusting(path, server_url, code, options, None).await
}

/// [`enroll`] with a server whose certificate chains to `trusted_ca_pem` (a county's own
/// CA, PEM): kept with the credentials, trusted by every later sync of this store.
pub async fn enroll_trusting(
    path: impl AsRef<std::path::Path>,
    server_url: &str,
    code: &str,
    options: crate::StoreOptions,
    trusted_ca_pem: Option<&str>,
) -> Result<Store, SyncError> {
    let path = path.as_ref();
    if let Some(pem) = trusted_ca_pem {
        parse_ca(pem)?;
    }
    if Store::open_enrolled(path, options.clone()).is_ok() {
        return Err(SyncError::Store(StoreError::AlreadyEnrolled));
    }
    let install_id = Store::install_id_at(path, options.key.as_ref())?;
    let client = match trusted_ca_pem {
        Some(pem) => SyncClient::new(server_url)?.with_trusted_ca(pem)?,
        None => SyncClient::new(server_url)?,
    };
    let body = serde_json::json!({ "code": code, "install_id": install_id });
    let reply = client
        .send(|http| http.post(client.endpoint("/v1/enroll")).json(&body))
        .await?;
    #[derive(serde::Deserialize)]
    struct Enrolled {
        device_id: qiaomen_protocol::ids::DeviceId,
        user_id: qiaomen_protocol::ids::UserId,
        token: String,
    }
    let e: Enrolled = serde_json::from_slice(&reply.body)
        .map_err(|_| SyncError::Protocol("enrollment answer".into()))?;
    let store = Store::open(
        path,
        qiaomen_protocol::doc::Author {
            user: e.user_id,
            device: e.device_id,
        },
        options,
    )?;
    store.set_credentials(&crate::Credentials {
        server_url: server_url.trim_end_matches('/').to_string(),
        user: e.user_id,
        device: e.device_id,
        token: e.token,
        trusted_ca_pem: trusted_ca_pem.map(str::to_string),
    })?;
    Ok(store)
}

/// A CA certificate from PEM (one certificate).
fn parse_ca(pem: &str) -> Result<reqwest::Certificate, SyncError> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(SyncError::BadCertificate);
    }
    reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|_| SyncError::BadCertificate)
}

/// A successful answer.
struct Reply {
    body: Vec<u8>,
    /// The server asks for the device token to be rotated.
    rotate: bool,
}

/// One request's uploads: households with their pending changes (hash, bytes), in order.
type Chunk = Vec<(HouseholdId, Vec<(ChangeHash, Vec<u8>)>)>;

/// Retry policy for one request. Time is judged by progress, not by the clock: a transfer
/// that keeps moving is never cut, however long it takes; one that brings no byte for `stall`
/// is abandoned and retried (after a backoff with jitter), and the retries end after
/// `attempts`, or once `give_up_after` has passed without the server answering, whichever
/// comes first, so the app learns within about that time that there is no network.
#[derive(Clone, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// No byte for this long: the link stalled.
    pub stall: Duration,
    /// No answer from the server for this long: stop retrying, report the failure.
    pub give_up_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            stall: Duration::from_secs(25),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// Connecting takes at most this long (a 2G link's handshake is a few round trips).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// `backoff` scaled by a random factor in [0.5, 1.5), so phones that lost the same link do
/// not all come back at the same moment.
fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    backoff.mul_f64(0.5 + (random >> 11) as f64 / (1u64 << 53) as f64)
}

/// A connection to a Qiaomen server.
#[derive(Clone, Debug)]
pub struct SyncClient {
    http: reqwest::Client,
    base: String,
    retry: Retry,
    chunk_bytes: usize,
    grids: Vec<String>,
    /// What the request's `agent` says: this library's version and the app's, if it said.
    agent: String,
    /// The link's measured speed, in bytes a second down (0: not measured yet), shared by
    /// this client's clones: what the next response's piece is sized to.
    down_rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The same up, from the uploads' round trips: what the next upload piece is sized to.
    up_rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The bounds of the response pieces asked for (raw change bytes).
    pieces: (usize, usize),
    /// A CA the server's certificate may chain to, beside the system's (a county's own).
    trusted_ca: Option<reqwest::Certificate>,
}

/// A response piece takes about this long on the link as measured: short beside the time
/// between cuts of a village's 2G (~20 s), so a cut loses little.
const PIECE_SECONDS: f64 = 8.0;
/// Raw change bytes per byte on the wire (responses are compressed; about 3× for records).
const RAW_PER_WIRE: f64 = 3.0;
/// The piece asked for before the link is measured.
const FIRST_PIECE_BYTES: usize = 256 * 1024;
/// The smallest piece asked for.
const MIN_PIECE_BYTES: usize = 16 * 1024;
/// The most asked for with an upload: its acknowledgements never wait behind a large
/// download (a visit day's download is ~25 KiB raw, so it still comes in the same answer).
const UPLOAD_PIECE_BYTES: usize = 64 * 1024;

/// The upload piece sent before the link is measured: a few seconds of a village's 2G.
const FIRST_UPLOAD_PIECE_BYTES: usize = 64 * 1024;
/// The smallest upload piece (always at least one change, however large).
const MIN_UPLOAD_PIECE_BYTES: usize = 8 * 1024;

/// A measured rate folded into the smoothed one (`0`: none yet).
fn smoothed(before: u64, now: u64) -> u64 {
    if before == 0 { now } else { (before + now) / 2 }.max(1)
}

/// A piece (raw change bytes) for a link of `rate` bytes a second that way: about
/// [`PIECE_SECONDS`] of it, `first` before it is measured, within `(min, max)`.
fn piece_for(rate: u64, first: usize, (min, max): (usize, usize)) -> usize {
    let bytes = if rate == 0 {
        first
    } else {
        (rate as f64 * PIECE_SECONDS * RAW_PER_WIRE) as usize
    };
    bytes.clamp(min, max.max(min))
}

/// This library as a request's `agent` names it.
pub const LIBRARY_AGENT: &str = concat!("qiaomen/", env!("CARGO_PKG_VERSION"));

impl SyncClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, SyncError> {
        let retry = Retry::default();
        Ok(Self {
            http: Self::http(&retry, None)?,
            base: base_url.trim_end_matches('/').to_string(),
            retry,
            chunk_bytes: limits::CLIENT_CHUNK_BYTES,
            agent: LIBRARY_AGENT.to_string(),
            grids: Vec::new(),
            down_rate: Default::default(),
            up_rate: Default::default(),
            pieces: (MIN_PIECE_BYTES, limits::RESPONSE_BUDGET_BYTES),
            trusted_ca: None,
        })
    }

    /// A client for the server an enrolled store names, trusting the CA it was enrolled
    /// with (if any).
    pub fn for_credentials(credentials: &crate::Credentials) -> Result<Self, SyncError> {
        let client = Self::new(&credentials.server_url)?;
        match &credentials.trusted_ca_pem {
            Some(pem) => client.with_trusted_ca(pem),
            None => Ok(client),
        }
    }

    /// Trusts `pem` (a CA certificate) for the server's certificate, beside the system's
    /// roots: a county that runs its server with a certificate of its own CA.
    pub fn with_trusted_ca(mut self, pem: &str) -> Result<Self, SyncError> {
        let ca = parse_ca(pem)?;
        self.http = Self::http(&self.retry, Some(&ca))?;
        self.trusted_ca = Some(ca);
        Ok(self)
    }

    /// The HTTP client for a retry policy: no overall deadline, a stall timeout on reads.
    fn http(
        retry: &Retry,
        ca: Option<&reqwest::Certificate>,
    ) -> Result<reqwest::Client, SyncError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(retry.stall);
        if let Some(ca) = ca {
            builder = builder.add_root_certificate(ca.clone());
        }
        builder
            .build()
            .map_err(|e| SyncError::Protocol(format!("the HTTP client could not be built: {e}")))
    }

    pub fn with_retry(mut self, retry: Retry) -> Self {
        if let Ok(http) = Self::http(&retry, self.trusted_ca.as_ref()) {
            self.http = http;
        }
        self.retry = retry;
        self
    }

    /// Names the app and its version in the requests' `agent` (`qiaomen/0.1.0 gridapp/2.3`),
    /// for the supervisors' list of phones. Kept within the protocol's bound
    /// (`limits::MAX_AGENT_BYTES`); control characters are dropped.
    pub fn with_app(mut self, app: &str) -> Self {
        let app: String = app.chars().filter(|c| !c.is_control()).collect();
        let mut agent = format!("{LIBRARY_AGENT} {}", app.trim());
        while agent.len() > limits::MAX_AGENT_BYTES {
            agent.pop();
        }
        self.agent = agent.trim_end().to_string();
        self
    }

    /// Keep only the households of these grids (a worker's grids). Changing them later needs
    /// one sync with no cursor ([`Store::set_sync_cursor`]`(None)`).
    pub fn with_grids(mut self, grids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.grids = grids.into_iter().map(Into::into).collect();
        self
    }

    /// Bounds of the response pieces this client asks for, in raw change bytes (by default
    /// 16 KiB to the server's budget; within them, about 8 s of the link as measured).
    pub fn with_download_pieces(mut self, min: usize, max: usize) -> Self {
        self.pieces = (
            min.max(limits::MIN_RESPONSE_BUDGET_BYTES),
            max.max(limits::MIN_RESPONSE_BUDGET_BYTES),
        );
        self
    }

    /// The most raw change bytes one upload request carries (by default
    /// `limits::CLIENT_CHUNK_BYTES`); within it, each piece is about 8 s of the link as
    /// measured, 64 KiB before it is.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Syncs `store` (enrolled) with the server. `progress` is called after each round trip.
    pub async fn sync(
        &self,
        store: &mut Store,
        progress: impl FnMut(&SyncProgress),
    ) -> Result<SyncReport, SyncError> {
        self.sync_shared(&Lent(std::sync::Mutex::new(store)), progress)
            .await
    }

    /// Syncs a store the app keeps using meanwhile: it is taken for short steps only
    /// ([`StoreAccess`]). Edits made during the sync stay pending and go with the next one.
    pub async fn sync_shared(
        &self,
        store: &impl StoreAccess,
        mut progress: impl FnMut(&SyncProgress),
    ) -> Result<SyncReport, SyncError> {
        let result = match self.sync_once(store, &mut progress).await {
            Err(SyncError::Server { status: 409, code })
                if code == "cursor_ahead" || code == "cursor_diverged" =>
            {
                // The server lost state this phone had seen: send it everything again.
                tracing::warn!("server log is behind this device; full resync");
                store.store().mark_everything_pending()?;
                self.sync_once(store, &mut progress).await
            }
            other => other,
        };
        let result = match result {
            // Settings and task lists travel only when the server says they changed, or to
            // send this device's reports: an idle check stays one round trip.
            Ok(mut report)
                if report.extras_digest.is_some()
                    || !store.store().task_reports(false)?.is_empty() =>
            {
                match self.sync_tasks(store, &mut report).await {
                    Ok(()) => {
                        if let Some(t) = report.extras_digest {
                            store.store().set_extras_digest(t)?;
                        }
                        Ok(report)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        // Photos after the records, always (SYNC-v1 §14.3): the records are acknowledged
        // before any photo byte goes, and a photo that cannot go now never holds them back.
        let result = match result {
            Ok(mut report) => match self.sync_photos(store, &mut report).await {
                Ok(()) => Ok(report),
                Err(e) => Err(e),
            },
            other => other,
        };
        // A retired device: once the server holds everything, say so; the device then ends
        // and the phone wipes (SYNC-v1 §3.5.6).
        let result = match result {
            Ok(report) if report.retire == Some(wire::Retire::Retiring) => {
                let holds_nothing = Self::holds_nothing(&store.store())?;
                if holds_nothing {
                    self.sync_once(store, &mut progress).await
                } else {
                    Err(SyncError::Retired { wiped: false })
                }
            }
            other => other,
        };
        match result {
            Ok(report) if report.retire.is_some() => Err(Self::end_retired(
                store,
                report.retire == Some(wire::Retire::Retired),
            )?),
            Err(SyncError::Unauthorized { code }) if code == "device_retired" => {
                Err(Self::end_retired(store, true)?)
            }
            Err(SyncError::Unauthorized { code })
                if code == "device_revoked" || code == "token_reused" =>
            {
                // The device may no longer hold this user's residents' records.
                tracing::warn!("device revoked; wiping the store");
                store.store().wipe()?;
                Err(SyncError::Revoked)
            }
            other => other,
        }
    }

    /// Whether the phone holds nothing the server has not acknowledged: no pending change,
    /// no unsent task report.
    fn holds_nothing(store: &Store) -> Result<bool, SyncError> {
        Ok(store.pending_change_count()? == 0
            && store.task_reports(false)?.is_empty()
            && store.pending_photo_count()? == 0)
    }

    /// What the phone holds unacknowledged, as a request reports it (`p`).
    fn pending_count(store: &Store) -> Result<u64, SyncError> {
        Ok(store.pending_change_count()? + store.task_reports(false)?.len() as u64)
    }

    /// A retired device has `ended` (the server said so): the phone wipes, unless it still
    /// holds something unacknowledged, which it keeps (never destroyed without a revocation).
    fn end_retired(store: &impl StoreAccess, ended: bool) -> Result<SyncError, SyncError> {
        let mut store = store.store();
        if ended && Self::holds_nothing(&store)? {
            tracing::warn!("device retired; wiping the store");
            store.wipe()?;
            Ok(SyncError::Retired { wiped: true })
        } else {
            Ok(SyncError::Retired { wiped: false })
        }
    }

    /// Sends the tasks marked done on this device, fetches the server's workflow settings and
    /// the weekly task lists of its grids (the JSON API, `/api/v1/workflow` and
    /// `/api/v1/tasks`; each report is idempotent on the server).
    async fn sync_tasks(
        &self,
        store: &impl StoreAccess,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let token = store
            .store()
            .credentials()?
            .ok_or(StoreError::NotEnrolled)?
            .token;
        let reports = store.store().task_reports(false)?;
        for (list, item, grid, done_ms, evidence) in reports {
            let photos = store.store().task_report_photos(&list, item, &grid)?;
            let body = serde_json::json!({
                "grid": grid, "item": item, "done_ms": done_ms, "evidence": evidence,
                "photos": photos,
            });
            let url = self.endpoint(&format!("/api/v1/tasks/{list}/done"));
            match self
                .send(|http| http.post(&url).bearer_auth(&token).json(&body))
                .await
            {
                Ok(reply) => {
                    let s = store.store();
                    s.mark_task_report_sent(&list, item, &grid)?;
                    report.tasks_sent += 1;
                    // The first report of a task wins: when another phone's was stored first,
                    // the server holds no reference to this report's photos, and never will.
                    #[derive(serde::Deserialize)]
                    struct Stored {
                        #[serde(default)]
                        photos: Vec<qiaomen_protocol::photo::ReportPhoto>,
                    }
                    let stored: Stored = serde_json::from_slice(&reply.body)
                        .map_err(|_| SyncError::Protocol("task report".into()))?;
                    if photos
                        .iter()
                        .any(|p| !stored.photos.iter().any(|q| q.hash == p.hash))
                    {
                        tracing::warn!("another report of the task was stored first");
                        s.refuse_task_report_photos(&list, item, &grid, "task_reported")?;
                    }
                }
                // The list or the grid is no longer this device's: it can never be stored.
                Err(SyncError::Server { status: 404, .. }) => {
                    tracing::warn!("a task report was refused: no such task for the grid");
                    let s = store.store();
                    s.mark_task_report_sent(&list, item, &grid)?;
                    s.refuse_task_report_photos(&list, item, &grid, "unknown_task")?;
                }
                Err(e) => return Err(e),
            }
        }
        #[derive(serde::Deserialize)]
        struct Settings {
            deadlines: qiaomen_protocol::workorder::Deadlines,
            coverage: qiaomen_protocol::coverage::CoveragePolicy,
        }
        let url = self.endpoint("/api/v1/workflow");
        let reply = self.send(|http| http.get(&url).bearer_auth(&token)).await?;
        let settings: Settings = serde_json::from_slice(&reply.body)
            .map_err(|_| SyncError::Protocol("workflow settings".into()))?;
        store
            .store()
            .set_workflow(&settings.deadlines, &settings.coverage)?;
        let url = self.endpoint("/api/v1/tasks");
        let reply = self.send(|http| http.get(&url).bearer_auth(&token)).await?;
        let lists: Vec<crate::TaskList> = serde_json::from_slice(&reply.body)
            .map_err(|_| SyncError::Protocol("task lists".into()))?;
        store.store().set_task_lists(&lists)?;
        report.task_lists = lists.len();
        Ok(())
    }

    /// Replaces the device token with a fresh one from the server. The old token keeps working
    /// until the new one is first used, so a lost answer costs nothing.
    pub async fn rotate_token(&self, store: &mut Store) -> Result<(), SyncError> {
        self.rotate_token_shared(&Lent(std::sync::Mutex::new(store)))
            .await
    }

    async fn rotate_token_shared(&self, store: &impl StoreAccess) -> Result<(), SyncError> {
        let mut credentials = store
            .store()
            .credentials()?
            .ok_or(StoreError::NotEnrolled)?;
        let token = credentials.token.clone();
        let reply = self
            .send(|http| http.post(self.endpoint("/v1/token")).bearer_auth(&token))
            .await?;
        #[derive(serde::Deserialize)]
        struct Rotated {
            token: String,
        }
        let r: Rotated = serde_json::from_slice(&reply.body)
            .map_err(|_| SyncError::Protocol("token answer".into()))?;
        credentials.token = r.token;
        store.store().set_credentials(&credentials)?;
        Ok(())
    }

    async fn sync_once(
        &self,
        store: &impl StoreAccess,
        progress: &mut impl FnMut(&SyncProgress),
    ) -> Result<SyncReport, SyncError> {
        let mut report = SyncReport::default();
        // Gather what the server has not acknowledged, in chunks.
        let households = store.store().pending_households()?;
        report.progress.docs_to_upload = households.len();
        let mut pending = Vec::with_capacity(households.len());
        for id in households {
            pending.push((id, store.store().pending_changes(id)?));
        }
        let mut chunks: std::collections::VecDeque<Chunk> =
            plan_chunks(pending, self.chunk_bytes, change_ops).into();
        // Households whose changes go as they are: the server could not rebuild one packed.
        let mut send_raw: std::collections::HashSet<HouseholdId> = Default::default();
        let mut uploaded_docs = std::collections::HashSet::new();
        let mut received_docs = std::collections::HashSet::new();
        let mut rotate = false;
        let mut scope: Option<(Vec<String>, Option<qiaomen_protocol::policy::Rights>)> = None;
        let mut caught_up_scope = false;
        // An upload whose answer was lost: the next request asks which of its changes the
        // server holds before any body goes again (SYNC-v1 §7.4.1).
        let mut lost: Option<Chunk> = None;
        let mut lost_in_a_row = 0u32;
        // The most an upload piece may carry now: halved by each upload the link lost,
        // doubled back by each that got through.
        let mut upload_cap = self.chunk_bytes;
        // A packed change of a response that did not rebuild here: the rest of this sync asks
        // for changes as Automerge's chunks (SYNC-v1 §4.4.1).
        let mut chunks_down = false;
        // Events and work logs go in the first request (SYNC-v1 §13.12), to a server that
        // takes them; what it does not answer stays pending for the next sync.
        let mut journal_due = true;
        loop {
            let asking = lost.take();
            let chunk = match asking {
                Some(_) => Chunk::default(),
                None => next_piece(
                    &mut chunks,
                    piece_for(
                        self.up_rate.load(Relaxed),
                        FIRST_UPLOAD_PIECE_BYTES,
                        (MIN_UPLOAD_PIECE_BYTES.min(upload_cap), upload_cap),
                    ),
                ),
            };
            let uploading = !chunk.is_empty() || asking.is_some();
            let piece = piece_for(self.down_rate.load(Relaxed), FIRST_PIECE_BYTES, self.pieces);
            // Packed (SYNC-v1 §4.4) once the server has said it takes packed changes.
            let mut packer = (store.store().server_features()? & wire::FEATURE_PACKED != 0)
                .then(qiaomen_protocol::pack::Packer::new);
            let mut packed: std::collections::HashSet<(HouseholdId, usize)> = Default::default();
            let docs: Vec<DocChanges> = chunk
                .iter()
                .map(|(id, changes)| DocChanges {
                    id: *id,
                    changes: changes
                        .iter()
                        .enumerate()
                        .map(|(n, (_, b))| {
                            let as_packed = packer
                                .as_mut()
                                .filter(|_| !send_raw.contains(id))
                                .and_then(|p| p.pack_bytes(b));
                            match as_packed {
                                Some(p) => {
                                    packed.insert((*id, n));
                                    ByteBuf::from(p)
                                }
                                None => ByteBuf::from(b.clone()),
                            }
                        })
                        .collect(),
                    whole: None,
                })
                .collect();
            let (table, base_ms) = match &packer {
                Some(p) if !packed.is_empty() => (p.wire_table(), p.base_ms()),
                _ => (Vec::new(), 0),
            };
            // One step on the store: what the request says about the phone.
            let (request, token, now_ms) = {
                let s = store.store();
                let cursor = s.sync_cursor()?;
                let request = SyncRequest {
                    response_budget: Some(if uploading {
                        // Acknowledgements first: a small answer while uploads remain.
                        piece.min(UPLOAD_PIECE_BYTES)
                    } else {
                        piece
                    } as u32),
                    agent: Some(self.agent.clone()),
                    table,
                    base_ms,
                    pending: Some(Self::pending_count(&s)?),
                    features: if chunks_down {
                        wire::FEATURES & !wire::FEATURE_PACKED_DOWN
                    } else {
                        wire::FEATURES
                    },
                    extras_digest: s.extras_digest()?,
                    scope_digest: Self::scope_digest(&s)?,
                    cursor_check: s.sync_cursor_check()?.map(ByteBuf::from),
                    version: PROTOCOL_VERSION,
                    whole: match cursor {
                        None => s.whole_position()?,
                        Some(_) => None,
                    },
                    cursor,
                    grids: self.grids.clone(),
                    docs,
                    journal: if std::mem::take(&mut journal_due)
                        && s.server_features()? & wire::FEATURE_JOURNAL != 0
                    {
                        s.pending_journal(qiaomen_protocol::journal::MAX_ENTRIES)?
                    } else {
                        Vec::new()
                    },
                    held_query: asking
                        .iter()
                        .flatten()
                        .flat_map(|(_, changes)| changes.iter())
                        .map(|(h, _)| ByteBuf::from(h.as_ref().to_vec()))
                        .collect(),
                };
                let token = s.credentials()?.ok_or(StoreError::NotEnrolled)?.token;
                (request, token, s.now_ms())
            };
            let body = wire::encode_request(&request);
            report.progress.bytes_up += body.len() as u64;
            // The phone's clock, so the server knows whether to take its changes' times at
            // their word (SYNC-v1 §13.6.1).
            let clock =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms.max(0) as u64);
            let date = httpdate::fmt_http_date(clock);
            let asked = std::time::Instant::now();
            let build = |http: &reqwest::Client| {
                http.post(self.endpoint("/v1/sync"))
                    .header(reqwest::header::DATE, &date)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .bearer_auth(&token)
                    .body(body.clone())
            };
            let reply = if chunk.is_empty() {
                self.send(build).await?
            } else {
                // An upload is sent once: if its answer does not come, the server may hold
                // its changes already, so the retry is a question, not the body again.
                match self.send_tries(build, 1).await {
                    Ok(reply) => {
                        lost_in_a_row = 0;
                        upload_cap = upload_cap.saturating_mul(2).min(self.chunk_bytes);
                        reply
                    }
                    Err(e @ SyncError::Network { .. }) => {
                        lost_in_a_row += 1;
                        upload_cap = (chunk_bytes(&chunk) / 2).clamp(
                            MIN_UPLOAD_PIECE_BYTES.min(self.chunk_bytes),
                            self.chunk_bytes,
                        );
                        if lost_in_a_row >= self.retry.attempts.max(1) {
                            return Err(e);
                        }
                        tokio::time::sleep(jittered(self.retry.first_backoff)).await;
                        lost = Some(chunk);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            rotate |= reply.rotate;
            report.progress.bytes_down += reply.body.len() as u64;
            // The link's speed down, from this answer (round trip and server time included,
            // so an underestimate), smoothed: what the next piece is sized to. Small answers
            // say more about the round trip than the rate and are not counted.
            let secs = asked.elapsed().as_secs_f64().max(0.001);
            let down_before = self.down_rate.load(Relaxed);
            if reply.body.len() >= 8 * 1024 {
                let now = (reply.body.len() as f64 / secs) as u64;
                self.down_rate.store(smoothed(down_before, now), Relaxed);
            }
            // The same up, from an upload's round trip less the time its answer took down
            // (as measured before it). Uploads compress well, so smaller ones count too.
            if body.len() >= 4 * 1024 {
                let answer = match down_before {
                    0 => 0.0,
                    rate => reply.body.len() as f64 / rate as f64,
                };
                let up_secs = (secs - answer).max(secs / 4.0);
                let now = (body.len() as f64 / up_secs) as u64;
                self.up_rate
                    .store(smoothed(self.up_rate.load(Relaxed), now), Relaxed);
            }
            report.progress.round_trips += 1;
            let mut response: SyncResponse = wire::decode(&reply.body, 256 * 1024 * 1024)
                .map_err(|e| SyncError::Protocol(e.to_string()))?;
            // A server that answers without the packing bit takes changes only as they are.
            if store.store().server_features()? != response.features {
                store.store().set_server_features(response.features)?;
            }
            if !response.journal.is_empty() {
                store.store().take_journal_acks(&response.journal)?;
                report.journal_sent += response.journal.len();
            }
            // A packed change the server could not read (`send_raw`, or `malformed` from a
            // server that does not pack) is not refused: it goes again, as it is, in this sync.
            let mut again = Vec::new();
            for r in response.rejected.iter_mut() {
                if packed.contains(&(r.doc, r.n as usize))
                    && matches!(r.code, RejectCode::SendRaw | RejectCode::Malformed)
                {
                    r.code = RejectCode::SendRaw;
                    if send_raw.insert(r.doc) {
                        again.push(r.doc);
                    }
                }
            }
            if response.extras_digest.is_some() {
                report.extras_digest = response.extras_digest;
            }
            if let Some(s) = &response.scope {
                // With the scope, what the user may do (absent: the server sends no rights).
                scope = Some((s.clone(), response.rights.clone()));
            }
            let complete = self.take_response(store, &chunk, response.clone(), &mut report)?;
            if !complete {
                if chunks_down {
                    // Asked for chunks, sent packed changes again: not a server to follow.
                    return Err(SyncError::Protocol(
                        "packed changes after asking for chunks".into(),
                    ));
                }
                tracing::warn!("a packed change of the answer did not rebuild; asking for chunks");
                chunks_down = true;
            }
            if let Some(asked) = asking {
                // What the server holds of the lost upload is acknowledged; the rest goes again.
                let rest = Self::take_held(store, asked, response.held.as_deref(), &mut report)?;
                if !rest.is_empty() {
                    chunks.push_front(rest);
                }
            }
            if let Some(x) = response.retire {
                // A retiring device receives nothing; a retired one has ended.
                report.retire = Some(x);
                if x == wire::Retire::Retired {
                    return Ok(report);
                }
            }
            for (id, _) in &chunk {
                uploaded_docs.insert(*id);
            }
            if !again.is_empty() {
                let mut raw = Vec::new();
                for id in again {
                    raw.push((id, store.store().pending_changes(id)?));
                }
                chunks.extend(plan_chunks(raw, self.chunk_bytes, change_ops));
            }
            for d in &response.docs {
                received_docs.insert(d.id);
            }
            report.progress.docs_uploaded = uploaded_docs.len();
            report.progress.docs_received = received_docs.len();
            progress(&report.progress);
            if chunks.is_empty() && !response.more && complete {
                // Grids new to this device's scope: their households' earlier history is before
                // the cursor, so fetch the whole scope once more from no cursor (what the phone
                // has is skipped by hash; only the missing history lands).
                if let Some((now, rights)) = &scope {
                    let known = store.store().sync_scope()?;
                    let grew = known
                        .as_ref()
                        .is_some_and(|k| now.iter().any(|g| !k.contains(g)));
                    store.store().set_sync_scope(now)?;
                    store.store().set_rights(rights.as_ref())?;
                    if grew && !caught_up_scope {
                        caught_up_scope = true;
                        store.store().set_sync_position(None, None)?;
                        continue;
                    }
                }
                break;
            }
        }
        // Households whose grid is outside the scope leave the phone: the scope shrank, or a
        // household moved to a grid this device does not hold.
        let held_scope = store.store().sync_scope()?;
        if let Some(now) = scope.map(|(s, _)| s).or(held_scope) {
            report.dropped_households = store.store().drop_households_outside(&now)?;
        }
        if rotate {
            // Housekeeping after the sync; a failure here is retried on the next sync.
            if let Err(e) = self.rotate_token_shared(store).await {
                tracing::warn!(error = %e, "token rotation failed; will retry");
            }
        }
        Ok(report)
    }

    /// The `s` of a request: the digest of the scope the phone holds, and of the rights with
    /// it once the server sent some (SYNC-v1 §5.1).
    fn scope_digest(store: &Store) -> Result<Option<u64>, SyncError> {
        let Some(grids) = store.sync_scope()? else {
            return Ok(None);
        };
        Ok(Some(match store.rights()? {
            Some(r) => wire::rights_digest(&grids, &r),
            None => wire::scope_digest(&grids),
        }))
    }

    /// After a lost answer (SYNC-v1 §7.4.1): acknowledges the changes of `asked` the server
    /// says it holds (`held`: their positions in the request's `h`), and returns what is left
    /// to send again (all of it when the server did not say).
    fn take_held(
        store: &impl StoreAccess,
        asked: Chunk,
        held: Option<&[u32]>,
        report: &mut SyncReport,
    ) -> Result<Chunk, SyncError> {
        let Some(held) = held else { return Ok(asked) };
        let held: std::collections::HashSet<u32> = held.iter().copied().collect();
        // Positions in the request's `h`: the asked changes in order.
        let mut position = 0u32;
        let mut rest = Chunk::default();
        for (id, changes) in asked {
            let mut hashes = Vec::new();
            let mut again = Vec::new();
            for change in changes {
                if held.contains(&position) {
                    hashes.push(change.0);
                } else {
                    again.push(change);
                }
                position += 1;
            }
            if !hashes.is_empty() {
                store.store().mark_acknowledged(id, &hashes)?;
                report.accepted += hashes.len() as u64;
            }
            if !again.is_empty() {
                rest.push((id, again));
            }
        }
        Ok(rest)
    }

    /// Stores what a response says: acknowledgements, refusals, new changes, then the cursor.
    /// `false` when a packed change of it did not rebuild: the cursor stays, for the page to
    /// come again as chunks.
    fn take_response(
        &self,
        store: &impl StoreAccess,
        chunk: &Chunk,
        response: SyncResponse,
        report: &mut SyncReport,
    ) -> Result<bool, SyncError> {
        // 1. Acknowledgements: every uploaded change not refused is durably on the server.
        for (id, changes) in chunk {
            let refused: Vec<(ChangeHash, String)> = response
                .rejected
                .iter()
                .filter(|r| r.doc == *id)
                .filter_map(|r| changes.get(r.n as usize).map(|(h, _)| (*h, r.code.name())))
                .collect();
            let acked: Vec<ChangeHash> = changes
                .iter()
                .map(|(h, _)| *h)
                .filter(|h| !refused.iter().any(|(r, _)| r == h))
                .collect();
            store.store().mark_acknowledged(*id, &acked)?;
            report.accepted += acked.len() as u64;
            for r in response
                .rejected
                .iter()
                .filter(|r| r.doc == *id && r.code != RejectCode::SendRaw)
            {
                if let Some((h, _)) = changes.get(r.n as usize) {
                    report.rejected.push((*id, *h, r.code));
                }
            }
            // `missing_dependencies`, `unknown_document` and `quarantined` can pass (what the change builds on
            // may reach the server later, e.g. after a server restore): such a household's
            // refused changes stay pending, to be offered again, and nothing is rolled back.
            // Every other code is final: the document goes back to what the server accepted.
            let temporary = response.rejected.iter().filter(|r| r.doc == *id).any(|r| {
                matches!(
                    r.code,
                    RejectCode::MissingDependencies
                        | RejectCode::UnknownDocument
                        | RejectCode::SendRaw
                        | RejectCode::Quarantined
                )
            });
            if !temporary {
                store.store().apply_rejections(*id, &refused)?;
            }
        }
        // 2. Changes from elsewhere: for each household, in one step on the store, its whole
        // document on a first sync (SYNC-v1 §7.3.1), then its changes, the packed ones rebuilt
        // (§4.4.1).
        let mut complete = true;
        for doc in response.docs {
            let changes: Vec<Vec<u8>> = doc.changes.into_iter().map(|b| b.into_vec()).collect();
            let packed = changes
                .iter()
                .any(|c| c.first() == Some(&qiaomen_protocol::pack::PACKED_FORMAT));
            // A whole document is read before the store is taken: the app waits only for
            // the writing.
            let read = doc
                .whole
                .as_ref()
                .map(|whole| crate::store::ReadDocument::read(whole, Some(doc.id)));
            let mut s = store.store();
            // Counted as new only: on a paged catch-up a later page may carry this phone's own
            // changes from the first request back; they are already here.
            let whole = match read {
                Some(read) => read.and_then(|r| s.apply_read_document(r)),
                None => Ok(0),
            };
            let applied = match whole {
                Ok(n) if !changes.is_empty() => {
                    let changes = if packed {
                        s.rebuild_packed(doc.id, changes, &response.table, response.base_ms)
                    } else {
                        Ok(Some(changes))
                    };
                    match changes {
                        Ok(Some(changes)) => s
                            .apply_remote_changes(doc.id, &changes)
                            .map(|more| n + more),
                        Ok(None) => {
                            complete = false;
                            continue;
                        }
                        // A household here that does not load: as below.
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            drop(s);
            match applied {
                Ok(n) => report.received_changes += n as u64,
                // A household whose history this page cannot complete (it moved into this
                // phone's grids after the phone's cursor: SYNC-v1.md §16.2) is skipped rather
                // than stopping every later sync at this page.
                Err(StoreError::Document(_) | StoreError::CorruptDocument { .. }) => {
                    tracing::warn!(household = %doc.id, "downloaded changes do not complete the household; skipped");
                    report.skipped_households.push(doc.id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !complete {
            return Ok(false);
        }
        // 3. Only now the cursor (or, during a first sync by whole documents, where it
        // stands): a crash before this line re-downloads, harmlessly.
        match &response.whole {
            Some(position) => store.store().set_whole_position(position)?,
            None => store.store().set_sync_position(
                Some(response.cursor),
                response.cursor_check.as_deref().map(|k| k.as_slice()),
            )?,
        }
        Ok(true)
    }

    /// Sends a request, retrying with exponential backoff on network failures and 5xx/429.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Reply, SyncError> {
        self.send_tries(build, self.retry.attempts).await
    }

    /// [`Self::send`] with at most `attempts` tries.
    async fn send_tries(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        attempts: u32,
    ) -> Result<Reply, SyncError> {
        let mut backoff = self.retry.first_backoff;
        let mut last = (NetworkFailure::Unreachable, String::new());
        // Extended whenever the server answers: only time without an answer counts.
        let mut deadline = tokio::time::Instant::now() + self.retry.give_up_after;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                let pause = jittered(backoff);
                if tokio::time::Instant::now() + pause > deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
            }
            let resp = match build(&self.http).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = (NetworkFailure::of(&e), e.to_string());
                    if last.0 == NetworkFailure::Untrusted {
                        break;
                    }
                    continue;
                }
            };
            deadline = tokio::time::Instant::now() + self.retry.give_up_after;
            let status = resp.status();
            if status.is_server_error() || status.as_u16() == 429 {
                last = (NetworkFailure::Refused, format!("status {status}"));
                continue;
            }
            if !status.is_success() {
                let code = error_code(resp).await;
                if status.as_u16() == 401 {
                    return Err(SyncError::Unauthorized { code });
                }
                return Err(SyncError::Server {
                    status: status.as_u16(),
                    code,
                });
            }
            let rotate = resp.headers().contains_key("x-qiaomen-rotate-token");
            match resp.bytes().await {
                Ok(b) => {
                    return Ok(Reply {
                        body: b.to_vec(),
                        rotate,
                    });
                }
                Err(e) => last = (NetworkFailure::of(&e), e.to_string()),
            }
        }
        Err(SyncError::Network {
            failure: last.0,
            detail: last.1,
        })
    }
}

/// The stable code of an error answer (`{"error":{"code":…}}`, SYNC-v1 §5.6); empty when the
/// body says none.
async fn error_code(resp: reqwest::Response) -> String {
    resp.json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Splits uploads into requests of about `chunk_bytes` raw change bytes, within the protocol's
/// per-request limits (changes, households, and the operations the server will expand them to,
/// counted by `ops`), keeping every change's order. A household appears at most once in a
/// request (its changes may continue in the next), because refusals name a change by its
/// household and position.
fn plan_chunks(docs: Chunk, chunk_bytes: usize, ops: impl Fn(&[u8]) -> usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current: Chunk = Vec::new();
    let (mut bytes, mut changes, mut n_ops) = (0usize, 0usize, 0usize);
    for (id, list) in docs {
        for (hash, change) in list {
            let new_doc = current.last().map(|(d, _)| *d) != Some(id);
            let change_ops = ops(&change);
            let full = !current.is_empty()
                && (bytes + change.len() > chunk_bytes
                    || changes + 1 > limits::MAX_CHANGES
                    || n_ops + change_ops > limits::MAX_REQUEST_OPS
                    || (new_doc && current.len() + 1 > limits::MAX_DOCS));
            if full {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
                changes = 0;
                n_ops = 0;
            }
            bytes += change.len();
            changes += 1;
            n_ops += change_ops;
            match current.last_mut() {
                Some((d, v)) if *d == id => v.push((hash, change)),
                _ => current.push((id, vec![(hash, change)])),
            }
        }
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The raw change bytes of a request's upload.
fn chunk_bytes(chunk: &Chunk) -> usize {
    chunk
        .iter()
        .flat_map(|(_, l)| l.iter().map(|(_, b)| b.len()))
        .sum()
}

/// The next upload request: about `target` raw change bytes from the front of `queue` (the
/// upload planned at the largest piece), the rest put back in order. A household's changes
/// stay in order and in one entry.
fn next_piece(queue: &mut std::collections::VecDeque<Chunk>, target: usize) -> Chunk {
    let mut taken: Chunk = Vec::new();
    let mut bytes = 0usize;
    while bytes < target {
        let Some(chunk) = queue.pop_front() else {
            break;
        };
        bytes += chunk_bytes(&chunk);
        for (id, list) in chunk {
            match taken.iter_mut().find(|(d, _)| *d == id) {
                Some((_, v)) => v.extend(list),
                None => taken.push((id, list)),
            }
        }
    }
    let mut pieces = plan_chunks(taken, target, change_ops).into_iter();
    let first = pieces.next().unwrap_or_default();
    for rest in pieces.rev() {
        queue.push_front(rest);
    }
    first
}

/// The operations a change holds (what the server counts against `MAX_REQUEST_OPS`).
fn change_ops(bytes: &[u8]) -> usize {
    qiaomen_protocol::doc::decode_changes([bytes])
        .map(|c| c.iter().map(|c| c.len()).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An upload of households whose changes have these sizes, and its changes in order
    /// (household, size).
    fn uploads_of(sizes: &[Vec<usize>]) -> (Chunk, Vec<(HouseholdId, usize)>) {
        let docs: Chunk = sizes
            .iter()
            .map(|list| {
                let id = HouseholdId::new();
                (
                    id,
                    list.iter()
                        .map(|n| (ChangeHash([0; 32]), vec![0u8; *n]))
                        .collect(),
                )
            })
            .collect();
        let flat = docs
            .iter()
            .flat_map(|(id, l)| l.iter().map(move |(_, b)| (*id, b.len())))
            .collect();
        (docs, flat)
    }

    proptest! {
        #[test]
        fn chunks_keep_order_bounds_and_one_entry_per_household(
            sizes in proptest::collection::vec(proptest::collection::vec(1usize..3000, 1..12), 0..20),
            chunk in 1usize..8000,
        ) {
            let (docs, flat) = uploads_of(&sizes);
            // Operations grow with bytes here, so the operation limit splits requests too.
            let ops = |b: &[u8]| b.len() * 40;
            let chunks = plan_chunks(docs, chunk, ops);
            let mut again = Vec::new();
            for c in &chunks {
                let ids: std::collections::HashSet<_> = c.iter().map(|(id, _)| *id).collect();
                prop_assert_eq!(ids.len(), c.len(), "a household twice in one request");
                let total: usize = c.iter().flat_map(|(_, l)| l.iter().map(|(_, b)| b.len())).sum();
                let n: usize = c.iter().map(|(_, l)| l.len()).sum();
                prop_assert!(total <= chunk || n == 1, "over budget with {} changes", n);
                let total_ops: usize = c.iter().flat_map(|(_, l)| l.iter().map(|(_, b)| ops(b))).sum();
                prop_assert!(total_ops <= limits::MAX_REQUEST_OPS || n == 1, "over the operation limit with {} changes", n);
                again.extend(c.iter().flat_map(|(id, l)| l.iter().map(move |(_, b)| (*id, b.len()))));
            }
            prop_assert_eq!(again, flat);
        }

        #[test]
        fn pieces_sized_as_they_go_keep_order_bounds_and_one_entry_per_household(
            sizes in proptest::collection::vec(proptest::collection::vec(1usize..3000, 1..12), 0..20),
            planned in 1usize..20_000,
            targets in proptest::collection::vec(1usize..9000, 1..40),
        ) {
            let (docs, flat) = uploads_of(&sizes);
            let mut queue: std::collections::VecDeque<Chunk> =
                plan_chunks(docs, planned, |_| 0).into();
            let mut sent = Vec::new();
            for target in targets.iter().cycle().take(flat.len() + 1) {
                let piece = next_piece(&mut queue, *target);
                let ids: std::collections::HashSet<_> = piece.iter().map(|(id, _)| *id).collect();
                prop_assert_eq!(ids.len(), piece.len(), "a household twice in one request");
                let total: usize = piece.iter().flat_map(|(_, l)| l.iter().map(|(_, b)| b.len())).sum();
                let n: usize = piece.iter().map(|(_, l)| l.len()).sum();
                prop_assert!(total <= *target || n == 1, "{} bytes over {} in {} changes", total, target, n);
                prop_assert!(n > 0 || queue.iter().all(|c| c.is_empty()), "an empty piece while changes remain");
                sent.extend(piece.iter().flat_map(|(id, l)| l.iter().map(move |(_, b)| (*id, b.len()))));
            }
            prop_assert_eq!(sent, flat);
        }
    }
}
