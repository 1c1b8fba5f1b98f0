//! Authentication at the HTTP edge: the extractors that turn a bearer token into an
//! authenticated device or supervisor session, the enrollment / token / login endpoints, and
//! per-key rate limits.
//!
//! Every 401 carries a code the client acts on: `unauthenticated` (no or unknown token),
//! `device_revoked` and `token_reused` (the phone wipes this user's data and must enroll
//! again), `session_expired` (log in again).

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

/// The rate limits of a server.
#[derive(Debug)]
pub struct Limits {
    /// Requests per enrolled device.
    pub device: RateLimiter,
    /// Failed enrollments and logins per client address (guessing codes or passwords).
    pub failures: RateLimiter,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            device: RateLimiter::new(120, 20.0),
            failures: RateLimiter::new(20, 20.0 / 60.0),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("qiaomen_session="))
}

fn unauthorized(refusal: TokenRefusal) -> ApiError {
    let message = match refusal {
        TokenRefusal::Unknown => "sign in or enroll this device first",
        TokenRefusal::Revoked => "this device was revoked; its data must be wiped",
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
            .or_else(|| session_cookie(&parts.headers))
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

/// The client's address (unspecified when the server runs without connection info, as in
/// tests that call the router directly).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ))
    }
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
        .await?;
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
    headers: HeaderMap,
) -> Result<Json<TokenResponse>, ApiError> {
    let token = bearer(&headers)
        .filter(|t| t.starts_with("qm_d_"))
        .ok_or_else(|| unauthorized(TokenRefusal::Unknown))?
        .to_string();
    let next = state
        .access(move |db| db.rotate(&token))
        .await?
        .map_err(unauthorized)?;
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
        [(header::SET_COOKIE, session_cookie_for(&token))],
        Json(LoginResponse {
            user_id,
            token,
            expires_ms,
        }),
    ))
}

/// The `Set-Cookie` value that carries a session to the pages.
pub fn session_cookie_for(token: &str) -> String {
    format!(
        "qiaomen_session={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        crate::access::tokens::SESSION_LIFETIME_MS / 1000
    )
}

/// Checks a password login (limited per address, audited) and opens a session: the API's and
/// the pages'.
pub async fn sign_in(
    state: &AppState,
    ip: IpAddr,
    req: LoginRequest,
) -> Result<(UserId, String, i64), ApiError> {
    let ip = ip.to_string();
    if req.login.chars().count() > 64 || req.password.chars().count() > 1024 {
        return Err(ApiError::BadRequest {
            code: "malformed",
            message: "login or password too long".into(),
        });
    }
    if !state.limits.failures.allow(&format!("probe:{ip}")) {
        return Err(ApiError::TooManyRequests);
    }
    let login = req.login.clone();
    let result = state
        .access(move |db| {
            let r = db.login(&req.login, &req.password)?;
            // The login name is recorded only if it is one: a password typed into the login
            // box by mistake must not end up in the audit log.
            let known = r.is_some() || db.user_by_login(&login).is_ok();
            db.audit(Event {
                user: r.as_ref().map(|(u, _, _)| u.to_string()).as_deref(),
                device: None,
                action: "login",
                target: known.then_some(login.as_str()),
                outcome: if r.is_some() { "ok" } else { "bad_credentials" },
            })?;
            Ok(r)
        })
        .await?;
    match result {
        Some(session) => {
            state.limits.failures.refund(&format!("probe:{ip}"));
            Ok(session)
        }
        None => Err(ApiError::Unauthorized {
            code: "bad_credentials",
            message: "wrong login or password".into(),
        }),
    }
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
        assert_eq!(session_cookie(&h), Some("qm_s_x"));
    }
}
