//! Authentication at the HTTP edge: the extractors that turn a bearer token into an
//! authenticated device or supervisor session, the enrollment / token / login endpoints, and
//! per-key rate limits.
//!
//! Every 401 carries a code the client acts on: `unauthenticated` (no or unknown token),
//! `device_revoked` and `token_reused` (the phone wipes this user's data and must enroll
//! again), `device_retired` (the device was retired and has ended after uploading everything:
//! the phone wipes what is left), `session_expired` (log in again).
//!
//! Guessing is bounded by failure counts ([`Limits`]): per client address (the reverse proxy's
//! client when it is trusted, [`super::edge::client_addr`]) for logins, enrollments and token
//! rotations, and per login name for logins. A success gives its token back, and so does an
//! answer the server could not give (5xx): only the client's own failures count. A password is
//! checked (argon2, ~tens of ms of CPU) outside the lock on the access tables, at most
//! [`ARGON2_AT_ONCE`] at a time, so logins never hold up a sync.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Json,
    extract::{ConnectInfo, FromRequestParts, State},
    http::{HeaderMap, header, request::Parts},
};
use qiaomen_protocol::ids::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, AppState, ErrorBody};
use crate::access::{
    audit::Event,
    tokens::{DevicePrincipal, EnrollRefusal, TokenRefusal},
};

/// A token bucket per key (a device, an address): `burst` requests at once, refilled at `rate`
/// per second. Hand-written because the keys are known only after authentication (tower's
/// limiters key on the connection).
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: burst as f64,
            rate: per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `false` when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() > 100_000 {
            // Forget full buckets rather than grow without bound.
            let (burst, rate) = (self.burst, self.rate);
            buckets.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Password checks running at once (each is argon2's memory and a core for tens of ms).
pub const ARGON2_AT_ONCE: usize = 2;

/// Failed logins per login name (guessing one person's password from many addresses): 10 at
/// once, one more a minute. Kept in the database ([`crate::access::shared`]), so several
/// servers count them together.
pub const NAME_BURST: f64 = 10.0;
pub const NAME_REFILL: f64 = 1.0 / 60.0;

/// The rate limits of a server.
#[derive(Debug)]
pub struct Limits {
    /// Requests per enrolled device.
    pub device: RateLimiter,
    /// Failed enrollments, logins and token rotations per client address (guessing codes,
    /// passwords or tokens).
    pub failures: RateLimiter,
    /// Token rotations per token.
    pub rotations: RateLimiter,
    /// Bounds the CPU spent on argon2 ([`ARGON2_AT_ONCE`]).
    pub argon2: tokio::sync::Semaphore,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            device: RateLimiter::new(120, 20.0),
            failures: RateLimiter::new(20, 20.0 / 60.0),
            rotations: RateLimiter::new(10, 1.0 / 60.0),
            argon2: tokio::sync::Semaphore::new(ARGON2_AT_ONCE),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The session cookie's name: `__Host-` prefixed over TLS (then the browser keeps it only if
/// it is `Secure`, for this host and path `/`, so no other site or subdomain can plant one).
pub fn session_cookie_name(public_https: bool) -> &'static str {
    if public_https {
        "__Host-qiaomen_session"
    } else {
        "qiaomen_session"
    }
}

fn session_cookie(headers: &HeaderMap, public_https: bool) -> Option<&str> {
    let name = session_cookie_name(public_https);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
}

/// Whether a request carries a session cookie (of either name): a browser may have sent it
/// on its own, so the request must show it comes from this site ([`super::edge::check_origin`]).
pub fn has_session_cookie(headers: &HeaderMap) -> bool {
    session_cookie(headers, false).is_some() || session_cookie(headers, true).is_some()
}

fn unauthorized(refusal: TokenRefusal) -> ApiError {
    let message = match refusal {
        TokenRefusal::Unknown => "sign in or enroll this device first",
        TokenRefusal::Revoked => "this device was revoked; its data must be wiped",
        TokenRefusal::Retired => "this device was retired; its data must be wiped",
        TokenRefusal::Reused => "this token was used twice; the device is revoked",
        TokenRefusal::Expired => "the session expired; sign in again",
    };
    ApiError::Unauthorized {
        code: refusal.code(),
        message: message.into(),
    }
}

/// An enrolled device, authenticated by its `qm_d_` bearer token.
#[derive(Clone, Copy, Debug)]
pub struct DeviceAuth(pub DevicePrincipal);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)
            .filter(|t| t.starts_with("qm_d_"))
            .ok_or_else(|| unauthorized(TokenRefusal::Unknown))?
            .to_string();
        let principal = state
            .access(move |db| db.authenticate_device(&token))
            .await?
            .map_err(unauthorized)?;
        if !state.limits.device.allow(&principal.device.to_string()) {
            return Err(ApiError::TooManyRequests);
        }
        Ok(DeviceAuth(principal))
    }
}

/// A signed-in person (supervisor, admin), by session token (bearer `qm_s_` or the
/// `qiaomen_session` cookie).
#[derive(Clone, Debug)]
pub struct SessionAuth {
    pub user: UserId,
    pub token: String,
}

impl FromRequestParts<AppState> for SessionAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)
            .or_else(|| session_cookie(&parts.headers, state.edge.public_https))
            .filter(|t| t.starts_with("qm_s_"))
            .ok_or_else(|| unauthorized(TokenRefusal::Unknown))?
            .to_string();
        let t = token.clone();
        let user = state
            .access(move |db| db.authenticate_session(&t))
            .await?
            .map_err(unauthorized)?;
        if !state.limits.device.allow(&user.to_string()) {
            return Err(ApiError::TooManyRequests);
        }
        Ok(SessionAuth { user, token })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EnrollRequest {
    /// The one-time code an admin gave the worker (`ABCD-EFGH-JKLM`; case and dashes free).
    #[schema(min_length = 1, max_length = 64)]
    pub code: String,
    /// A random id the phone chose and saved before its first attempt; a retry sends the same.
    #[schema(min_length = 1, max_length = 64)]
    pub install_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    #[schema(value_type = String)]
    pub device_id: DeviceId,
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// The device token: `Authorization: Bearer <token>` on every later request.
    pub token: String,
}

/// The client's address: set by the edge ([`super::edge::client_addr`]: the TCP peer, or the
/// client a trusted proxy names), else the peer, else unspecified (tests that call the router
/// directly).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(addr) = parts.extensions.get::<ClientAddr>() {
            return Ok(*addr);
        }
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ))
    }
}

/// Whether an answer is the server's failure, not the client's: it must not spend the
/// client's failure budget.
fn server_failed(e: &ApiError) -> bool {
    matches!(e, ApiError::Unavailable | ApiError::Internal)
}

/// The same, for a store's answer.
fn store_failed(e: &crate::service::Error) -> bool {
    matches!(
        e,
        crate::service::Error::Busy | crate::service::Error::Internal
    )
}

/// `POST /v1/enroll`: a phone becomes an enrolled device of the code's user.
#[utoipa::path(post, path = "/v1/enroll", tag = "session", request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), (status = 400, body = ErrorBody),
              (status = 401, description = "invalid, used or expired code", body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let ip = ip.to_string();
    let chars = |s: &str| s.chars().count();
    if !(1..=64).contains(&chars(&req.install_id)) || !(1..=64).contains(&chars(&req.code)) {
        return Err(ApiError::BadRequest {
            code: "malformed",
            message: "code and install_id are required (at most 64 characters)".into(),
        });
    }
    // Guessing codes: the failures of an address are limited.
    if !state.limits.failures.allow(&format!("probe:{ip}")) {
        return Err(ApiError::TooManyRequests);
    }
    let result = state
        .access(move |db| {
            let r = db.enroll(&req.code, &req.install_id)?;
            match &r {
                Ok(e) => db.audit(Event {
                    user: Some(&e.user.to_string()),
                    device: Some(&e.device.to_string()),
                    action: "enroll",
                    target: None,
                    outcome: "ok",
                })?,
                Err(refusal) => db.audit(Event {
                    user: None,
                    device: None,
                    action: "enroll",
                    target: None,
                    outcome: refusal.code(),
                })?,
            }
            Ok(r)
        })
        .await
        .inspect_err(|e| {
            if store_failed(e) {
                state.limits.failures.refund(&format!("probe:{ip}"));
            }
        })?;
    match result {
        Ok(e) => {
            state.limits.failures.refund(&format!("probe:{ip}"));
            Ok(Json(EnrollResponse {
                device_id: e.device,
                user_id: e.user,
                token: e.token,
            }))
        }
        Err(refusal) => Err(ApiError::Unauthorized {
            code: refusal.code(),
            message: match refusal {
                EnrollRefusal::Invalid => "no such enrollment code; check it or ask for a new one",
                EnrollRefusal::Used => "this code was used by another phone; ask for a new one",
                EnrollRefusal::Expired => "this code expired; ask for a new one",
            }
            .into(),
        }),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

/// `POST /v1/token`: rotates the device token in `Authorization`.
#[utoipa::path(post, path = "/v1/token", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = TokenResponse), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
) -> Result<Json<TokenResponse>, ApiError> {
    let token = bearer(&headers)
        .filter(|t| t.starts_with("qm_d_"))
        .ok_or_else(|| unauthorized(TokenRefusal::Unknown))?
        .to_string();
    // Per token (a phone rotates once a week, and again after a lost answer), keyed by a
    // digest so the limiter holds no secret; unknown tokens spend the address's failures.
    let token_key = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(token.as_bytes());
        format!(
            "rot:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, &d[..12])
        )
    };
    let ip_key = format!("probe:{ip}");
    if !state.limits.failures.allow(&ip_key) {
        return Err(ApiError::TooManyRequests);
    }
    if !state.limits.rotations.allow(&token_key) {
        state.limits.failures.refund(&ip_key);
        return Err(ApiError::TooManyRequests);
    }
    let next = state
        .access(move |db| db.rotate(&token))
        .await
        .inspect_err(|e| {
            if store_failed(e) {
                state.limits.failures.refund(&ip_key);
                state.limits.rotations.refund(&token_key);
            }
        })?
        .map_err(unauthorized)?;
    state.limits.failures.refund(&ip_key);
    Ok(Json(TokenResponse { token: next }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    #[schema(max_length = 64)]
    pub login: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// The session token: `Authorization: Bearer <token>` or the `qiaomen_session` cookie.
    pub token: String,
    pub expires_ms: i64,
}

/// `POST /v1/login`: a supervisor signs in with a password.
#[utoipa::path(post, path = "/v1/login", tag = "session", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody),
              (status = 401, description = "wrong login or password", body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<([(header::HeaderName, String); 1], Json<LoginResponse>), ApiError> {
    let (user_id, token, expires_ms) = sign_in(&state, ip, req).await?;
    Ok((
        [(
            header::SET_COOKIE,
            session_cookie_for(&token, state.edge.public_https),
        )],
        Json(LoginResponse {
            user_id,
            token,
            expires_ms,
        }),
    ))
}

/// The `Set-Cookie` value that carries a session to the pages (`Secure` and `__Host-` when
/// the server is reached over TLS).
pub fn session_cookie_for(token: &str, public_https: bool) -> String {
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session_cookie_name(public_https),
        crate::access::tokens::SESSION_LIFETIME_MS / 1000,
        if public_https { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn session_cookie_cleared(public_https: bool) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        session_cookie_name(public_https),
        if public_https { "; Secure" } else { "" }
    )
}

/// Checks a password login (limited per client address and per login name, audited) and
/// opens a session: the API's and the pages'. The password is verified outside the access
/// lock, at most [`ARGON2_AT_ONCE`] at a time.
pub async fn sign_in(
    state: &AppState,
    ip: IpAddr,
    req: LoginRequest,
) -> Result<(UserId, String, i64), ApiError> {
    if req.login.chars().count() > 64 || req.password.chars().count() > 1024 {
        return Err(ApiError::BadRequest {
            code: "malformed",
            message: "login or password too long".into(),
        });
    }
    let ip_key = format!("probe:{ip}");
    let name_key = format!("login:{}", req.login);
    if !state.limits.failures.allow(&ip_key) {
        return Err(ApiError::TooManyRequests);
    }
    // Counted in the database, so every server of it counts the same guesses.
    let key = name_key.clone();
    if !state
        .access(move |db| db.take_token(&key, NAME_BURST, NAME_REFILL))
        .await?
    {
        // The name is being guessed from elsewhere; this address did nothing wrong yet.
        state.limits.failures.refund(&ip_key);
        return Err(ApiError::TooManyRequests);
    }
    let result = check_password(state, req).await;
    let harmless = match &result {
        Ok(Some(_)) => true,
        Err(e) => server_failed(e),
        Ok(None) => false,
    };
    if harmless {
        state.limits.failures.refund(&ip_key);
        state
            .access(move |db| db.refund_token(&name_key, NAME_BURST))
            .await?;
    }
    result?.ok_or_else(|| ApiError::Unauthorized {
        code: "bad_credentials",
        message: "wrong login or password".into(),
    })
}

/// Reads the stored hash under the access lock, verifies outside it, and opens a session
/// (or records the failure) under it again.
async fn check_password(
    state: &AppState,
    req: LoginRequest,
) -> Result<Option<(UserId, String, i64)>, ApiError> {
    let login = req.login.clone();
    let stored = state.access(move |db| db.password_hash(&login)).await?;
    let verified = {
        let _permit = state
            .limits
            .argon2
            .acquire()
            .await
            .map_err(|_| ApiError::Internal)?;
        let hash = stored.as_ref().and_then(|(_, h)| h.clone());
        let password = req.password;
        tokio::task::spawn_blocking(move || {
            crate::access::tokens::verify_password(hash.as_deref(), &password)
        })
        .await
        .map_err(|_| ApiError::Internal)?
    };
    let user = stored.map(|(u, _)| u);
    let login = req.login;
    state
        .access(move |db| {
            let session = match user {
                Some(u) if verified => Some(db.open_session(u)?),
                _ => None,
            };
            // The login name is recorded only if it is one: a password typed into the login
            // box by mistake must not end up in the audit log.
            db.audit(Event {
                user: session.as_ref().map(|(u, _, _)| u.to_string()).as_deref(),
                device: None,
                action: "login",
                target: user.is_some().then_some(login.as_str()),
                outcome: if session.is_some() {
                    "ok"
                } else {
                    "bad_credentials"
                },
            })?;
            Ok(session)
        })
        .await
        .map_err(ApiError::from)
}

/// `POST /v1/logout`: ends the session.
#[utoipa::path(post, path = "/v1/logout", tag = "session", security(("bearer" = [])),
    responses((status = 204, description = "signed out"), (status = 401, description = "not signed in, or the token was revoked or reused", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    session: SessionAuth,
) -> Result<axum::http::StatusCode, ApiError> {
    state.access(move |db| db.logout(&session.token)).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Either kind of caller.
#[derive(Clone, Debug)]
pub enum Caller {
    Device(DevicePrincipal),
    Session(SessionAuth),
}

impl Caller {
    pub fn user(&self) -> UserId {
        match self {
            Caller::Device(d) => d.user,
            Caller::Session(s) => s.user,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer(&parts.headers).is_some_and(|t| t.starts_with("qm_d_")) {
            DeviceAuth::from_request_parts(parts, state)
                .await
                .map(|d| Caller::Device(d.0))
        } else {
            SessionAuth::from_request_parts(parts, state)
                .await
                .map(Caller::Session)
        }
    }
}

impl RateLimiter {
    /// Gives back a token taken for a request that turned out fine (only failures count).
    pub fn refund(&self, key: &str) {
        if let Some((tokens, _)) = self.buckets.lock().expect("limiter lock").get_mut(key) {
            *tokens = (*tokens + 1.0).min(self.burst);
        }
    }
}

/// Shared for the router.
pub type SharedLimits = Arc<Limits>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_and_refunds() {
        let limiter = RateLimiter::new(3, 1000.0);
        assert!((0..3).all(|_| limiter.allow("d")));
        assert!(!limiter.allow("d"), "the burst is spent");
        assert!(limiter.allow("other"), "buckets are per key");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limiter.allow("d"), "refilled at the rate");
        let slow = RateLimiter::new(1, 0.0001);
        assert!(slow.allow("k"));
        assert!(!slow.allow("k"));
        slow.refund("k");
        assert!(slow.allow("k"), "a refund gives the token back");
    }

    #[test]
    fn bearer_and_cookie_tokens_are_read() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer qm_d_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("qm_d_abc"));
        h.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(
            header::COOKIE,
            "a=1; qiaomen_session=qm_s_x".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h, false), Some("qm_s_x"));
        assert_eq!(
            session_cookie(&h, true),
            None,
            "over TLS only the __Host- cookie counts"
        );
        h.insert(
            header::COOKIE,
            "__Host-qiaomen_session=qm_s_y; qiaomen_session_x=z"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_cookie(&h, true), Some("qm_s_y"));
        assert_eq!(session_cookie(&h, false), None);
        assert!(has_session_cookie(&h));
        assert!(session_cookie_for("t", true).ends_with("; Secure"));
    }
}
